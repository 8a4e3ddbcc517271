//! Checkpoints: one safetensors file with the weights (`model.<path>`), AdamW's moments
//! (`optim.m.<path>`, `optim.v.<path>`) and, in its metadata, the config, the tokenizer and
//! the run's progress: everything a resumed run needs to continue bit for bit, readable by
//! any safetensors reader. Written to a temp file and renamed, so a crash never leaves half
//! a checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::config::Config;
use crate::data::Tokenizer;
use crate::error::{Error, Result, io};
use crate::model::Gpt;
use crate::optim::AdamW;
use crate::train::{Progress, Trainer};

const FORMAT: &str = "simplegpt-checkpoint-1";

/// A checkpoint read from disk, before it is put on a device.
pub struct Checkpoint {
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub progress: Progress,
    pub optimizer_step: u64,
    /// name -> (shape, values)
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

/// Every float parameter of `model` with its path, flattened.
pub fn named_params<M: Module>(model: &M) -> Vec<(String, Tensor<1>, Vec<usize>)> {
    struct Collect(Vec<String>, Vec<(String, Tensor<1>, Vec<usize>)>);
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val().inner();
            let shape = t.dims().to_vec();
            self.1.push((self.0.join("."), t.reshape([-1]), shape));
        }
    }
    let mut c = Collect(Vec::new(), Vec::new());
    model.visit(&mut c);
    c.1
}

/// Reads a flat tensor back to the host.
pub async fn read_f32(t: Tensor<1>) -> Result<Vec<f32>> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::Backend(format!("reading weights from the device failed: {e:?}")))?;
    data.convert::<f32>()
        .try_into_vec()
        .map_err(|e| Error::Backend(format!("unexpected weight data: {e:?}")))
}

/// Serialises the trainer's state as safetensors bytes.
pub async fn to_bytes(trainer: &Trainer) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (path, t, shape) in named_params(&trainer.model) {
        tensors.push((format!("model.{path}"), shape, read_f32(t).await?));
    }
    for (prefix, moments) in [("optim.m", &trainer.optimizer.m), ("optim.v", &trainer.optimizer.v)] {
        for (path, t) in moments {
            let values = read_f32(t.clone()).await?;
            tensors.push((format!("{prefix}.{path}"), vec![values.len()], values));
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
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| (name, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, shape, b)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), b).expect("consistent shape")))
        .collect();
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Backend(format!("serialising checkpoint: {e}")))
}

/// Writes `bytes` to `path` atomically: a temp file beside it, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot move the new file into place at", path))
}

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(io("cannot read checkpoint", path))?;
        let corrupt = |why: String| {
            Error::Input(format!("checkpoint {} is corrupted or not a simplegpt checkpoint ({why})", path.display()))
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(corrupt(format!("its format is not {FORMAT}")));
        }
        let field = |k: &str| meta.get(k).ok_or_else(|| corrupt(format!("no '{k}' in its metadata")));
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
            let values = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Checkpoint { config, tokenizer, progress, optimizer_step, tensors })
    }

    /// The model with the checkpoint's weights, on `device`.
    pub fn model(&self, device: &Device) -> Result<Gpt> {
        // Build the module for its structure, then overwrite every parameter by path.
        let model = self.config.model.init(0, device);
        let mut mapper = Load { path: Vec::new(), ckpt: self, device, error: None };
        let model = model.map(&mut mapper);
        match mapper.error {
            Some(e) => Err(e),
            None => Ok(model),
        }
    }

    /// AdamW's state on `device`.
    pub fn optimizer(&self, device: &Device) -> AdamW {
        let mut opt = AdamW { step: self.optimizer_step, m: BTreeMap::new(), v: BTreeMap::new() };
        for (name, (shape, values)) in &self.tensors {
            let (target, path) = if let Some(p) = name.strip_prefix("optim.m.") {
                (&mut opt.m, p)
            } else if let Some(p) = name.strip_prefix("optim.v.") {
                (&mut opt.v, p)
            } else {
                continue;
            };
            target.insert(path.to_string(), Tensor::from_data(TensorData::new(values.clone(), shape.clone()), device));
        }
        opt
    }
}

struct Load<'a> {
    path: Vec<String>,
    ckpt: &'a Checkpoint,
    device: &'a Device,
    error: Option<Error>,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = format!("model.{}", self.path.join("."));
        let expected = param.val().dims().to_vec();
        match self.ckpt.tensors.get(&name) {
            Some((shape, values)) if *shape == expected => {
                let (id, _, mapper) = param.consume();
                let t = Tensor::<D>::from_data(TensorData::new(values.clone(), shape.clone()), self.device);
                let t = if self.device.is_autodiff() { t.require_grad() } else { t };
                Param::from_mapped_value(id, t, mapper)
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
