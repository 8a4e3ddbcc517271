//! Checkpoints: one safetensors file with the weights (`model.<path>`), AdamW's moments
//! (`optim.m.<path>`, `optim.v.<path>`) and, in its metadata, the config, the tokenizer and
//! the run's progress: everything a resumed run needs to continue bit for bit, readable by
//! any safetensors reader. Every tensor's checksum is in the metadata too (see
//! `params::CHECKSUMS`), and reading checks them all. Written to a temp file, synced to the
//! disk and renamed, so neither a crash nor a power cut leaves half a checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::config::Config;
use crate::data::{Dataset, Tokenizer};
use crate::error::{Error, Result, io};
use crate::model::Gpt;
use crate::optim::AdamW;
use crate::params::{self, PathMapper, f32_bytes, f32_values, read_f32, safetensors_bytes};
use crate::train::{Progress, Trainer};

/// The format written now: every tensor has a checksum, and one missing is corruption.
const FORMAT: &str = "simplegpt-checkpoint-2";
/// The format of checkpoints written before tensors had checksums (simplegpt 0.2.0 and
/// earlier). Still read, unchecked, so that the runs of those versions resume and sample;
/// a run's next checkpoint is written in `FORMAT`.
const FORMAT_UNCHECKED: &str = "simplegpt-checkpoint-1";

/// Whether a safetensors file's `format` metadata is a checkpoint's, of any version.
pub(crate) fn is_checkpoint_format(format: &str) -> bool {
    format == FORMAT || format == FORMAT_UNCHECKED
}

/// A checkpoint read from disk, before it is put on a device.
pub struct Checkpoint {
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub progress: Progress,
    pub optimizer_step: u64,
    /// name -> (shape, values)
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

/// Serialises the trainer's state as safetensors bytes.
pub async fn to_bytes(trainer: &Trainer) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (path, t, shape) in params::named(&trainer.model) {
        tensors.push((format!("model.{path}"), Dtype::F32, shape, f32_bytes(&read_f32(t).await?)));
    }
    for (prefix, moments) in [("optim.m", &trainer.optimizer.m), ("optim.v", &trainer.optimizer.v)] {
        for (path, t) in moments {
            let values = read_f32(t.clone()).await?;
            tensors.push((format!("{prefix}.{path}"), Dtype::F32, vec![values.len()], f32_bytes(&values)));
        }
    }
    let metadata: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("config", trainer.config.to_toml()),
        ("tokenizer", serde_json::to_string(&trainer.data.tokenizer).expect("serialisable")),
        ("progress", serde_json::to_string(&trainer.progress).expect("serialisable")),
        ("optimizer_step", trainer.optimizer.step.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    safetensors_bytes(&tensors, metadata)
}

impl Checkpoint {
    /// Checks that `data` has the vocabulary this checkpoint was trained with: other text
    /// would be encoded into the wrong token ids.
    pub fn check_data(&self, data: &Dataset) -> Result<()> {
        data.check_block_size(self.config.model.block_size)?;
        if data.tokenizer != self.tokenizer {
            return Err(Error::Input(
                "the data's characters differ from the checkpoint's vocabulary: pass the --data the run was trained on"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(io("cannot read checkpoint", path))?;
        let corrupt = |why: String| {
            Error::Input(format!("checkpoint {} is corrupted or not a simplegpt checkpoint ({why})", path.display()))
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).ok_or_else(|| corrupt(format!("no '{k}' in its metadata")));
        match meta.get("format").map(String::as_str) {
            Some(FORMAT) => params::check_checksums(&st, field(params::CHECKSUMS)?).map_err(|why| {
                Error::Input(format!("checkpoint {} is corrupted: {why}; retrain or restore the file", path.display()))
            })?,
            Some(FORMAT_UNCHECKED) => {}
            _ => return Err(corrupt(format!("its format is not {FORMAT}"))),
        }
        let base = Config::preset("tiny").expect("preset exists");
        let config = Config::from_toml(field("config")?, base, "checkpoint config")?;
        let tokenizer: Tokenizer = serde_json::from_str(field("tokenizer")?).map_err(|e| corrupt(e.to_string()))?;
        let progress: Progress = serde_json::from_str(field("progress")?).map_err(|e| corrupt(e.to_string()))?;
        let optimizer_step = field("optimizer_step")?.parse().map_err(|_| corrupt("bad optimizer_step".into()))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(corrupt(format!("tensor {name} is not f32")));
            }
            tensors.insert(name, (view.shape().to_vec(), f32_values(view.data())));
        }
        Ok(Checkpoint { config, tokenizer, progress, optimizer_step, tensors })
    }

    /// The model with the checkpoint's weights, on `device`.
    pub fn model(&self, device: &Device) -> Result<Gpt> {
        // Build the module for its structure, then overwrite every parameter by path.
        let model = self.config.model.init(0, device);
        let mut mapper = Load { ckpt: self, device, error: None };
        let model = params::map(model, &mut mapper);
        match mapper.error {
            Some(e) => Err(e),
            None => Ok(model),
        }
    }

    /// AdamW's state on `device`: each moment as long as the weight it belongs to (a
    /// checkpoint from before checksums may have been edited by hand).
    pub fn optimizer(&self, device: &Device) -> Result<AdamW> {
        let mut opt = AdamW { step: self.optimizer_step, m: BTreeMap::new(), v: BTreeMap::new() };
        for (name, (shape, values)) in &self.tensors {
            let (target, path) = if let Some(p) = name.strip_prefix("optim.m.") {
                (&mut opt.m, p)
            } else if let Some(p) = name.strip_prefix("optim.v.") {
                (&mut opt.v, p)
            } else {
                continue;
            };
            let weight = self.tensors.get(&format!("model.{path}")).map(|(_, w)| w.len());
            if weight != Some(values.len()) {
                return Err(Error::Input(format!(
                    "checkpoint does not match its config: {name} holds {} values where model.{path} {}; retrain or restore the file",
                    values.len(),
                    weight.map_or("is missing".to_string(), |n| format!("has {n}"))
                )));
            }
            target.insert(path.to_string(), Tensor::from_data(TensorData::new(values.clone(), shape.clone()), device));
        }
        Ok(opt)
    }
}

struct Load<'a> {
    ckpt: &'a Checkpoint,
    device: &'a Device,
    error: Option<Error>,
}

impl PathMapper for Load<'_> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = format!("model.{path}");
        let expected = param.val().dims().to_vec();
        match self.ckpt.tensors.get(&name) {
            Some((shape, values)) if *shape == expected => {
                params::replaced(param, Tensor::from_data(TensorData::new(values.clone(), shape.clone()), self.device))
            }
            found => {
                self.error.get_or_insert_with(|| {
                    Error::Input(format!(
                        "checkpoint does not match its config: {name} is {} where the model needs {expected:?}",
                        found.map_or("missing".to_string(), |(s, _)| format!("{s:?}"))
                    ))
                });
                param
            }
        }
    }
}

impl Checkpoint {
    /// A trainer that continues the run saved here, on `device`. The data must be the data
    /// it was trained on (same characters).
    pub fn resume(&self, data: Dataset, device: &Device) -> Result<Trainer> {
        self.check_data(&data)?;
        let mut trainer = Trainer::new(self.config.clone(), data, device)?;
        trainer.model = self.model(&trainer.device)?;
        trainer.optimizer = self.optimizer(&trainer.device.clone().inner())?;
        trainer.progress = self.progress.clone();
        Ok(trainer)
    }

    /// Why this checkpoint's model is broken, if it is: its run diverged, or a weight is not
    /// finite. Text sampled from it, or a Hessian measured on it, would mean nothing.
    pub fn broken(&self) -> Option<String> {
        if let Some(step) = self.progress.diverged_at {
            return Some(format!("its run diverged at step {step}"));
        }
        let mut weights: Vec<(&String, &(Vec<usize>, Vec<f32>))> =
            self.tensors.iter().filter(|(name, _)| name.starts_with("model.")).collect();
        weights.sort_by_key(|(name, _)| *name);
        let (name, _) = weights.into_iter().find(|(_, (_, values))| values.iter().any(|v| !v.is_finite()))?;
        Some(format!("its weights are not finite ({} holds NaN or infinity)", name.trim_start_matches("model.")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A moment of another length than its weight is refused with a one-line error, before
    /// AdamW's step would meet it.
    #[test]
    fn a_moment_that_does_not_fit_its_weight_is_refused() {
        let device = Device::flex();
        let mut config = Config::preset("tiny").unwrap();
        (config.model.n_layer, config.model.n_embd, config.model.n_head, config.model.block_size) = (1, 16, 2, 8);
        config.train.batch_size = 2;
        let data = Dataset::from_text(&"to be or not to be ".repeat(20), "test text").unwrap();
        let mut trainer = Trainer::new(config, data.clone(), &device).unwrap();
        pollster::block_on(trainer.step()).unwrap();
        let path = std::env::temp_dir().join(format!("simplegpt-moment-{}.safetensors", std::process::id()));
        crate::files::write_atomic(&path, &pollster::block_on(to_bytes(&trainer)).unwrap()).unwrap();
        let mut ckpt = Checkpoint::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        ckpt.resume(data.clone(), &device).expect("the checkpoint as written resumes");

        let (_, values) = ckpt.tensors.get_mut("optim.m.wte").expect("the embedding's first moment");
        let n = values.len();
        values.pop();
        let err = ckpt.resume(data, &device).err().expect("refused").to_string();
        assert_eq!(
            err,
            format!(
                "checkpoint does not match its config: optim.m.wte holds {} values where model.wte has {n}; retrain or restore the file",
                n - 1
            )
        );
    }
}
