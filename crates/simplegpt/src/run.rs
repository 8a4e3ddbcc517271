//! A run directory on disk: the resolved `config.toml`, the run header `run.json` (see
//! `record`), `metrics.jsonl` (one JSON object per logged step) and `ckpt.safetensors`,
//! and the loop that fills it. Native only: the browser keeps its records in memory and
//! exports them in the same JSON format.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::checkpoint::{self, Checkpoint};
use crate::data::Dataset;
use crate::error::{Error, Result, io};
use crate::record::RunHeader;
use crate::train::{StepRecord, Trainer};

pub const CONFIG_FILE: &str = "config.toml";
pub const HEADER_FILE: &str = "run.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINT_FILE: &str = "ckpt.safetensors";

pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates (or reuses) `path` and checks that it is writable by writing the config.
    pub fn create(path: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(path).map_err(|e| {
            Error::Input(format!("cannot create output directory {}: {e}; choose another with --out", path.display()))
        })?;
        let probe = path.join(".write-test");
        std::fs::write(&probe, b"").map_err(|e| {
            Error::Input(format!("output directory {} is not writable: {e}; choose another with --out", path.display()))
        })?;
        let _ = std::fs::remove_file(probe);
        Ok(RunDir { path: path.to_path_buf() })
    }

    /// An existing run directory, to resume.
    pub fn open(path: &Path) -> Result<RunDir> {
        if !path.join(CHECKPOINT_FILE).is_file() {
            return Err(Error::Input(format!(
                "{} holds no run to resume (no {CHECKPOINT_FILE}); give the --out directory of a run trained with checkpoint=true",
                path.display()
            )));
        }
        RunDir::create(path)
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
        checkpoint::write_atomic(&self.path.join(CONFIG_FILE), trainer.config.to_toml().as_bytes())?;
        let header = serde_json::to_string_pretty(header).expect("serialisable");
        checkpoint::write_atomic(&self.path.join(HEADER_FILE), header.as_bytes())?;
        checkpoint::write_atomic(&self.path.join(METRICS_FILE), b"")
    }

    /// A resumed run: drops the records the interrupted run logged after its checkpoint,
    /// so metrics.jsonl reads as one uninterrupted run.
    pub fn truncate_metrics(&self, next_step: usize) -> Result<()> {
        let path = self.path.join(METRICS_FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // A run killed mid-write may have left a torn last line: it is past the checkpoint.
        let kept: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<StepRecord>(l).ok())
            .filter(|r| r.step < next_step)
            .map(|r| serde_json::to_string(&r).expect("serialisable"))
            .collect();
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        checkpoint::write_atomic(&path, text.as_bytes())
    }

    pub fn append(&self, record: &StepRecord) -> Result<()> {
        let path = self.path.join(METRICS_FILE);
        let mut f =
            std::fs::OpenOptions::new().append(true).create(true).open(&path).map_err(io("cannot open", &path))?;
        // One write per record, so a killed run leaves whole lines.
        let line = serde_json::to_string(record).expect("serialisable") + "\n";
        f.write_all(line.as_bytes()).map_err(io("cannot write", &path))
    }

    pub fn save_checkpoint(&self, trainer: &Trainer) -> Result<()> {
        let bytes = pollster::block_on(checkpoint::to_bytes(trainer))?;
        checkpoint::write_atomic(&self.checkpoint_path(), &bytes)
    }
}

/// Reads a metrics.jsonl file.
pub fn read_metrics(path: &Path) -> Result<Vec<StepRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io(format!("cannot read {}", path.display()), e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::Input(format!("{} line {}: not a metrics record ({e})", path.display(), i + 1)))
        })
        .collect()
}

impl Trainer {
    /// Continues the run saved in `ckpt` on `device`. The data must be the data it was
    /// trained on (same characters).
    pub fn resume(ckpt: &Checkpoint, data: Dataset, device: &Device) -> Result<Trainer> {
        ckpt.check_vocabulary(&data)?;
        let mut trainer = Trainer::new(ckpt.config.clone(), data, device)?;
        trainer.model = ckpt.model(&trainer.device)?;
        trainer.optimizer = ckpt.optimizer(&trainer.device.clone().inner());
        trainer.progress = ckpt.progress.clone();
        Ok(trainer)
    }

    /// Runs one step (see `Trainer::step`), logging its record to `dir` and checkpointing
    /// at every evaluation and at the end.
    pub fn step_to_dir(&mut self, dir: &RunDir) -> Result<Option<StepRecord>> {
        let Some(record) = pollster::block_on(self.step())? else { return Ok(None) };
        dir.append(&record)?;
        if self.config.train.checkpoint && (record.val_loss.is_some() || self.finished()) {
            dir.save_checkpoint(self)?;
        }
        Ok(Some(record))
    }

    /// Trains to the end (or divergence) with `step_to_dir`. `on_record` sees each logged
    /// record (progress display).
    pub fn run_to_dir(&mut self, dir: &RunDir, mut on_record: impl FnMut(&StepRecord)) -> Result<()> {
        while !self.finished() {
            if let Some(record) = self.step_to_dir(dir)? {
                on_record(&record);
            }
        }
        Ok(())
    }
}
