//! What a command may write: never over a file it reads, nor over a run's own files.

use std::path::{Path, PathBuf};

use simplegpt::run::RunDir;
use simplegpt::{Error, Result, record};

/// Refuses a command that would write one of `outputs` over a file it reads (`inputs`, by
/// the flag that names them): the input would be lost, or read back half-replaced.
pub fn refuse_overwriting_inputs(outputs: &[PathBuf], inputs: &[(&str, &Path)]) -> Result<()> {
    for (flag, input) in inputs {
        let input_at = resolved(input);
        if let Some(out) = outputs.iter().find(|o| resolved(o) == input_at) {
            return Err(Error::Input(format!(
                "{flag} {} is a file this command writes ({}); copy it elsewhere first, or choose another --out",
                input.display(),
                out.display()
            )));
        }
    }
    Ok(())
}

/// Refuses to write over one of a run directory's own files (its checkpoint above all: the
/// run could no longer be resumed or sampled).
pub fn refuse_overwriting_a_run(out: &Path) -> Result<()> {
    let dir = resolved(out).parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join(record::HEADER_FILE).exists() && RunDir::files(&dir).contains(&resolved(out)) {
        return Err(Error::Input(format!(
            "--out {} is a file of the run in {}; write to another file",
            out.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// `path` with links and `..` resolved, also when the file does not exist yet, so that two
/// names of one file compare equal.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }), path.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).map_or_else(|_| path.to_path_buf(), |d| d.join(name)),
        _ => path.to_path_buf(),
    }
}
