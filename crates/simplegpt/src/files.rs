//! Files written whole or not at all: what every writer of a report, a checkpoint or an
//! export goes through, so that no reader ever sees a half-written file.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result, io};

/// Writes `bytes` to `path` atomically: a temp file beside it (`path` + `.tmp`), synced to
/// the disk, then a rename, then the directory synced. Without the first sync a power cut
/// can leave the rename on the disk but not the data (an empty file under the real name);
/// without the second, it can lose the rename. When writing or renaming fails, the temp
/// file is removed and `path` is as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Input(format!("{} is a directory; give a file name", path.display())));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        return Err(Error::Input(format!(
            "cannot write {}: the directory {} does not exist; create it first",
            path.display(),
            dir.display()
        )));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(io("cannot write", path))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io("cannot move the new file into place at", path)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_parent(path).map_err(io("cannot sync the directory of", path))
}

/// Syncs the directory holding `path`, so that a rename into it is on the disk.
#[cfg(unix)]
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Windows cannot open a directory to sync it, and the browser has no file system.
#[cfg(not(unix))]
fn sync_parent(_: &Path) -> std::io::Result<()> {
    Ok(())
}
