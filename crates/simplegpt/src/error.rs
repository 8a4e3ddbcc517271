//! One error type for the library: every failure a user can cause is an `Input` with a
//! message that names the problem and what to do, so the CLI can print one line.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Bad input from the user: config, data, paths, devices, checkpoints.
    Input(String),
    /// An I/O failure, with what we were doing.
    Io(String, std::io::Error),
    /// The backend failed while running (a device lost, an out-of-memory).
    Backend(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Input(msg) | Error::Backend(msg) => write!(f, "{msg}"),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// `fs::read(path).map_err(io("reading data file", path))`
pub fn io(what: &str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error {
    let what = format!("{what} {}", path.display());
    move |e| Error::Io(what, e)
}
