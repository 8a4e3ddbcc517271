//! The options every training-shaped command shares (what to train, on what data, on which
//! device), and what they resolve to: a config, a dataset, a run header, or the model that
//! a command inspects (a checkpoint's, or a config's initial one).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use clap::Args;
use simplegpt::checkpoint::Checkpoint;
use simplegpt::data::Dataset;
use simplegpt::model::Gpt;
use simplegpt::record::{self, RunHeader};
use simplegpt::train::Trainer;
use simplegpt::{Config, Error, Result, device};

use crate::data;

#[derive(Args)]
pub struct RunOptions {
    #[arg(long, help = preset_help())]
    pub preset: Option<String>,
    /// A TOML file with [model] and [train] keys over the preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE", help = set_help())]
    pub set: Vec<String>,
    /// auto, cpu, wgpu, vulkan, metal, dx12 or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// A UTF-8 text file (tokenised by the config's tokenizer), token shards (a directory or
    /// a .bin file, as `prepare` writes them; tokenizer = "gpt2"), `tinyshakespeare`
    /// (downloaded once and cached), or `embedded` (the corpus built in, as with no --data).
    #[arg(long)]
    pub data: Option<String>,
}

/// The most seeds a study trains each run with.
pub const MAX_SEEDS: usize = 100;

/// A parser for a count from `min` to `max`: every number a user gives is bounded where it
/// is parsed, before anything is allocated or run for it.
pub fn count(min: usize, max: usize) -> impl Fn(&str) -> std::result::Result<usize, String> + Clone + Send + Sync {
    move |text| match text.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

/// The `--set` help, with the norm placements as a config names them.
fn set_help() -> String {
    let norms: Vec<String> = simplegpt::config::NormKind::ALL.iter().map(|n| n.to_string()).collect();
    format!(
        "Override one key, e.g. --set norm=simple --set lr=3e-3. norm is one of {}; qk_norm=true adds QK-norm to any",
        norms.join(", ")
    )
}

/// The `--preset` help, from the presets' own descriptions.
fn preset_help() -> String {
    let presets: Vec<String> = simplegpt::config::PRESETS.iter().map(|p| format!("{}: {}", p.name, p.about)).collect();
    format!("A preset; tiny when none is given. {}", presets.join("; "))
}

impl RunOptions {
    /// The files these options read, by the flag that names them.
    pub fn input_files(&self) -> Vec<(&'static str, &Path)> {
        let data = self.data.as_deref().filter(|d| !data::NAMED.contains(d));
        let config = self.config.as_deref().map(|p| ("--config", p));
        config.into_iter().chain(data.map(|d| ("--data", Path::new(d)))).collect()
    }

    /// Whether a config was asked for (a preset, a file or an override).
    pub fn explicit_config(&self) -> bool {
        self.preset.is_some() || self.config.is_some() || !self.set.is_empty()
    }

    /// The --config file's text, and its name for messages.
    pub fn config_text(&self) -> Result<Option<(String, String)>> {
        let Some(path) = &self.config else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read config file {}: {e}", path.display())))?;
        Ok(Some((text, path.display().to_string())))
    }

    pub fn config(&self) -> Result<Config> {
        let toml = self.config_text()?;
        Config::resolve(
            self.preset.as_deref().unwrap_or("tiny"),
            toml.as_ref().map(|(t, o)| (t.as_str(), o.as_str())),
            &self.set,
        )
    }

    /// The data, tokenised by `config`'s tokenizer.
    pub fn data(&self, config: &Config) -> Result<Dataset> {
        data::load(self.data.as_deref(), config.model.tokenizer)
    }

    /// `--data` as a run header records it: a path made absolute, so that `--resume` finds
    /// the file from any directory.
    pub fn data_source(&self) -> String {
        match self.data.as_deref() {
            None => record::EMBEDDED_DATA.to_string(),
            Some(named) if data::NAMED.contains(&named) => named.to_string(),
            Some(path) => std::path::absolute(path).map_or(path.to_string(), |p| p.display().to_string()),
        }
    }

    /// The header of the run `trainer` is about to train on `opened`, naming its data as
    /// these options gave it.
    pub fn run_header(&self, trainer: &Trainer, opened: &device::Opened) -> Result<RunHeader> {
        let t = trainer;
        let mut header =
            pollster::block_on(RunHeader::new(&t.config, &t.model, &t.data, &opened.backend, &opened.adapter))?;
        header.data_source = Some(self.data_source());
        Ok(header)
    }

    /// The model a command inspects: the weights of `from` (a run directory or checkpoint,
    /// on the data it was trained on) or, without it, the config's initial weights; as an
    /// autodiff model on `device`.
    pub fn model(&self, from: Option<&Path>, device: &Device) -> Result<Inspected> {
        match from {
            Some(from) => {
                let (ckpt, data) = checkpoint_and_data(from, self)?;
                let model = ckpt.model(&device.clone().autodiff())?;
                Ok(Inspected { broken: ckpt.broken(), config: ckpt.config, model, data })
            }
            None => {
                let config = self.config()?;
                let data = self.data(&config)?;
                let trainer = Trainer::new(config, data, device)?;
                Ok(Inspected { config: trainer.config, model: trainer.model, data: trainer.data, broken: None })
            }
        }
    }
}

/// A model with its config and data, as `RunOptions::model` resolves it.
pub struct Inspected {
    pub config: Config,
    pub model: Gpt,
    pub data: Dataset,
    /// Why the checkpoint's model is broken (see `Checkpoint::broken`), if it is.
    pub broken: Option<String>,
}

/// The checkpoint file `--from` names: the file, or a run directory's checkpoint.
pub fn checkpoint_file(from: &Path) -> PathBuf {
    if from.is_dir() { from.join(simplegpt::run::CHECKPOINT_FILE) } else { from.to_path_buf() }
}

/// A checkpoint from a run directory or a checkpoint file.
pub fn read_checkpoint(from: &Path) -> Result<Checkpoint> {
    let path = checkpoint_file(from);
    if !from.is_dir() {
        return Checkpoint::read(&path);
    }
    if !path.exists() && from.join(record::HEADER_FILE).exists() {
        return Err(Error::Input(format!(
            "{} holds a run without a checkpoint (trained with checkpoint=false, or stopped before its first evaluation)",
            from.display()
        )));
    }
    Checkpoint::read(&path)
}

/// The checkpoint of `--from` and the data it was trained on: `--data`, or else the data
/// its run directory recorded. A checkpoint brings its own config, so a --preset, --config
/// or --set beside --from would be silently ignored; they are refused instead.
fn checkpoint_and_data(from: &Path, options: &RunOptions) -> Result<(Checkpoint, Dataset)> {
    if options.explicit_config() {
        return Err(Error::Input("--from uses the checkpoint's own config; drop --preset, --config and --set".into()));
    }
    let ckpt = read_checkpoint(from)?;
    let recorded = if from.is_dir() { record::read_header(from).ok().and_then(|h| h.data_source) } else { None };
    let tokenizer = ckpt.config.model.tokenizer;
    let data = match &options.data {
        Some(given) => data::load(Some(given), tokenizer)?,
        None => data::recorded(from, recorded.as_deref(), tokenizer)?,
    };
    ckpt.check_data(&data)?;
    Ok((ckpt, data))
}
