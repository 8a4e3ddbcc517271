//! The data a command trains on, by the name `--data` (or a run header's `data_source`)
//! gives: a text file, token shards (a directory, or a `.bin` file), `tinyshakespeare`
//! (downloaded once and cached), or the embedded corpus; text is tokenised by the config's
//! tokenizer.

use std::path::{Path, PathBuf};

use simplegpt::data::{Dataset, TokenizerKind};
use simplegpt::record::EMBEDDED_DATA;
use simplegpt::{Error, Result};

/// The names `--data` takes that are not files.
pub const NAMED: [&str; 2] = [EMBEDDED_DATA, TINYSHAKESPEARE];

const TINYSHAKESPEARE: &str = "tinyshakespeare";

const TINYSHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

/// The data `source` names: a text file, token shards, `tinyshakespeare`, or the embedded
/// corpus when none or `embedded`; text tokenised by a `tokenizer`.
pub fn load(source: Option<&str>, tokenizer: TokenizerKind) -> Result<Dataset> {
    match source {
        None | Some(EMBEDDED_DATA) => {
            Dataset::from_text_with(&simplegpt::data::default_corpus(), "the embedded corpus", tokenizer)
        }
        Some(TINYSHAKESPEARE) => Dataset::from_file_with(&tinyshakespeare()?, tokenizer),
        Some(path) if simplegpt::shards::is_shards(Path::new(path)) => {
            let tokenizer = match tokenizer {
                TokenizerKind::Char => simplegpt::data::Tokenizer::from_text(""),
                TokenizerKind::Gpt2 => simplegpt::data::Tokenizer::gpt2(),
            };
            simplegpt::shards::open(Path::new(path), &tokenizer)
        }
        Some(path) => Dataset::from_file_with(Path::new(path), tokenizer),
    }
}

/// The data a run directory recorded (its header's `data_source`; the embedded corpus for a
/// run that recorded none), for a command given no --data.
pub fn recorded(dir: &Path, source: Option<&str>, tokenizer: TokenizerKind) -> Result<Dataset> {
    load(source, tokenizer).map_err(|e| match source {
        Some(s) if s != EMBEDDED_DATA => Error::Input(format!(
            "{} was trained on --data {s}, which cannot be used now ({e}); pass --data with its new location",
            dir.display()
        )),
        _ => e,
    })
}

/// The tiny Shakespeare file, downloaded (with curl) on first use and cached.
fn tinyshakespeare() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let cache = home.join(".cache/simplegpt/tinyshakespeare.txt");
    if cache.exists() {
        return Ok(cache);
    }
    std::fs::create_dir_all(cache.parent().expect("has a parent"))
        .map_err(|e| Error::Input(format!("cannot create the cache directory for tiny Shakespeare: {e}")))?;
    eprintln!("downloading tiny Shakespeare from {TINYSHAKESPEARE_URL}");
    let tmp = cache.with_extension("part");
    let status = std::process::Command::new("curl")
        .args(["-fsSL", "--max-time", "60", "-o"])
        .arg(&tmp)
        .arg(TINYSHAKESPEARE_URL)
        .status();
    match status {
        Ok(s) if s.success() => {
            std::fs::rename(&tmp, &cache).map_err(|e| Error::Input(format!("cannot cache tiny Shakespeare: {e}")))?;
            Ok(cache)
        }
        _ => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::Input(format!(
                "could not download tiny Shakespeare (offline, or curl missing); download \
                 {TINYSHAKESPEARE_URL} yourself and pass --data PATH"
            )))
        }
    }
}
