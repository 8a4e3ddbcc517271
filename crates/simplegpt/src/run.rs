//! A run directory on disk: the resolved `config.toml`, the run header `run.json` and
//! `metrics.jsonl` (see `record`) and `ckpt.safetensors`, one writer at a time, and the
//! loop that fills it. Native only: the browser keeps its records in memory and exports
//! them in the same JSON format.

use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::error::{Error, Result, io};
use crate::files::write_atomic;
use crate::record::{self, HEADER_FILE, METRICS_FILE, RunHeader, StepRecord};
use crate::train::Trainer;

pub const CONFIG_FILE: &str = "config.toml";
pub const CHECKPOINT_FILE: &str = "ckpt.safetensors";
/// Held locked by the one process writing the directory; says which process that is.
pub const LOCK_FILE: &str = "lock";

/// An exclusive lock on a directory (a run's, or a study's) for as long as this value
/// lives, so that a second process cannot interleave its files with the first's. The
/// operating system releases it when the process ends, however it ends.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if need be and locks it, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Input(format!("cannot create output directory {}: {e}; choose another with --out", dir.display()))
        })?;
        let path = dir.join(LOCK_FILE);
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(
                |e| {
                    Error::Input(format!(
                        "output directory {} is not writable: {e}; choose another with --out",
                        dir.display()
                    ))
                },
            )?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // Empty while the holder is starting; unreadable where the lock also bars
                // reading (Windows).
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "pid not known".to_string(),
                    h => h.to_string(),
                };
                return Err(Error::Input(format!(
                    "{} is being written by another process ({holder}); wait for it to end, or choose another --out",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::Io(format!("cannot lock {} (a file system without locks?)", path.display()), e));
            }
        }
        let holder = format!("pid {}: {}", std::process::id(), command_line());
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{holder}\n").as_bytes()))
            .map_err(io("cannot write", &path))?;
        Ok(DirLock { _file: file })
    }
}

/// The command line of this process as typed (`simplegpt train --out ...`), to say who
/// holds a lock and what made a report.
pub fn command_line() -> String {
    std::env::args().skip(1).fold("simplegpt".to_string(), |acc, a| format!("{acc} {a}"))
}

/// A run directory, locked by this process for as long as the value lives.
pub struct RunDir {
    pub path: PathBuf,
    _lock: DirLock,
}

impl RunDir {
    /// The files a run writes into `dir`: no input of the run may be one of them.
    pub fn files(dir: &Path) -> [PathBuf; 4] {
        [CONFIG_FILE, HEADER_FILE, METRICS_FILE, CHECKPOINT_FILE].map(|f| dir.join(f))
    }

    /// Creates (or reuses) `path` and locks it; the lock file proves that it is writable.
    pub fn create(path: &Path) -> Result<RunDir> {
        Ok(RunDir { path: path.to_path_buf(), _lock: DirLock::acquire(path)? })
    }

    /// A directory for a new run: `create`, refusing one that already holds a run unless
    /// `overwrite` (checked under the lock, so two processes cannot both pass).
    pub fn create_new(path: &Path, overwrite: bool) -> Result<RunDir> {
        let dir = RunDir::create(path)?;
        if dir.holds_run() && !overwrite {
            let what_to_do = if dir.checkpoint_path().is_file() {
                format!("continue it with --resume {}, ", path.display())
            } else {
                // Killed before its first checkpoint, or trained with checkpoint=false.
                "it has no checkpoint to continue from; ".to_string()
            };
            return Err(Error::Input(format!(
                "{} already holds a run; {what_to_do}choose another --out, or pass --overwrite to replace it",
                path.display()
            )));
        }
        Ok(dir)
    }

    /// Whether the directory holds a run's header, i.e. a run was started in it.
    pub fn holds_run(&self) -> bool {
        self.path.join(HEADER_FILE).exists()
    }

    /// An existing run directory, to resume: the directory, or its checkpoint file.
    pub fn open(path: &Path) -> Result<RunDir> {
        let path = match path.parent() {
            Some(parent) if path.is_file() && path.file_name() == Some(CHECKPOINT_FILE.as_ref()) => parent,
            _ => path,
        };
        let no_run = |why: &str| {
            Error::Input(format!(
                "{} holds no run to resume ({why}); give the --out directory of a run trained with checkpoint=true",
                path.display()
            ))
        };
        if !path.is_dir() {
            return Err(no_run("no such directory"));
        }
        let dir = RunDir::create(path)?;
        if !dir.checkpoint_path().is_file() {
            if dir.holds_run() {
                return Err(Error::Input(format!(
                    "{} holds a run without a checkpoint (stopped before its first evaluation, or trained with \
                     checkpoint=false), so it cannot be resumed; start it again with --out {} --overwrite",
                    path.display(),
                    path.display()
                )));
            }
            return Err(no_run(&format!("no {CHECKPOINT_FILE}")));
        }
        Ok(dir)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.path.join(CHECKPOINT_FILE)
    }

    /// A fresh run: writes config.toml and the run header, and starts metrics.jsonl empty.
    /// A checkpoint left by an earlier run in this directory is removed: it is not this
    /// run's, and `sample` or `--resume` would take it for this run's.
    pub fn start(&self, trainer: &Trainer, header: &RunHeader) -> Result<()> {
        match std::fs::remove_file(self.checkpoint_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io(
                    format!("cannot remove the old {CHECKPOINT_FILE} in {}", self.path.display()),
                    e,
                ));
            }
            _ => {}
        }
        write_atomic(&self.path.join(CONFIG_FILE), trainer.config.to_toml().as_bytes())?;
        let header = serde_json::to_string_pretty(header).expect("serialisable");
        write_atomic(&self.path.join(HEADER_FILE), header.as_bytes())?;
        write_atomic(&self.path.join(METRICS_FILE), b"")
    }

    /// A resumed run: drops the records the interrupted run logged after its checkpoint
    /// (and a torn last line), so metrics.jsonl reads as one uninterrupted run.
    pub fn truncate_metrics(&self, next_step: usize) -> Result<()> {
        let path = self.path.join(METRICS_FILE);
        let records = if path.exists() { record::read_metrics(&path)? } else { Vec::new() };
        let kept: String = records
            .iter()
            .filter(|r| r.step < next_step)
            .map(|r| serde_json::to_string(r).expect("serialisable") + "\n")
            .collect();
        write_atomic(&path, kept.as_bytes())
    }

    /// Appends one record as one line. A write that fails part-way (a full disk) is cut
    /// off again, so the file holds whole lines only.
    pub fn append(&self, record: &StepRecord) -> Result<()> {
        let path = self.path.join(METRICS_FILE);
        let mut f =
            std::fs::OpenOptions::new().append(true).create(true).open(&path).map_err(io("cannot open", &path))?;
        let whole = f.metadata().map_err(io("cannot read", &path))?.len();
        let line = serde_json::to_string(record).expect("serialisable") + "\n";
        f.write_all(line.as_bytes()).map_err(|e| {
            let _ = f.set_len(whole);
            Error::Io(format!("cannot write {}", path.display()), e)
        })
    }

    pub fn save_checkpoint(&self, trainer: &Trainer) -> Result<()> {
        let bytes = pollster::block_on(checkpoint::to_bytes(trainer))?;
        write_atomic(&self.checkpoint_path(), &bytes)
    }
}

impl RunDir {
    /// The records of this very run (`header`) if the directory holds it already ended
    /// (trained to `max_steps`, or diverged): a study run again keeps such runs rather
    /// than train them twice.
    pub fn ended_run(&self, header: &RunHeader, max_steps: usize) -> Option<Vec<StepRecord>> {
        let done = record::read(&self.path).ok()?;
        let ended =
            done.steps.iter().any(|r| r.diverged.is_some()) || done.steps.last().is_some_and(|r| r.step >= max_steps);
        (ended && done.header.same_run(header)).then_some(done.steps)
    }

    /// Runs one step of `trainer` (see `Trainer::step`), logging its record here and
    /// checkpointing at every evaluation and at the end.
    pub fn step(&self, trainer: &mut Trainer) -> Result<Option<StepRecord>> {
        let Some(record) = pollster::block_on(trainer.step())? else { return Ok(None) };
        self.append(&record)?;
        if trainer.config.train.checkpoint && (record.val_loss.is_some() || trainer.finished()) {
            self.save_checkpoint(trainer)?;
        }
        Ok(Some(record))
    }

    /// Trains to the end (or divergence) with `step`. `on_record` sees each logged record
    /// (progress display).
    pub fn train(&self, trainer: &mut Trainer, mut on_record: impl FnMut(&StepRecord)) -> Result<()> {
        while !trainer.finished() {
            if let Some(record) = self.step(trainer)? {
                on_record(&record);
            }
        }
        Ok(())
    }
}
