//! Weights in PyTorch's names and layout, for replaying a run in another framework.
//!
//! Names are the model's field paths with `.weight` on embeddings and the head:
//! `wte.weight` [V, C], `wpe.weight` [T, C], `blocks.{i}.ln_{1,2}.weight`,
//! `blocks.{i}.{attn,mlp}_out_norm.weight` (the sublayers' output norms of Peri-LN and OLMo 2),
//! nGPT's learned vectors as stored (before their factor init / scale):
//! `blocks.{i}.{attn,mlp}_alpha.weight`, `blocks.{i}.attn.qk_scale.weight`,
//! `blocks.{i}.mlp.{fc,gate}_scale.weight` (s_nu, s_u), `logit_scale.weight` (s_z),
//! `blocks.{i}.attn.{q,k,v,o}.weight` [out, in], `blocks.{i}.attn.{q,k,v,o}_norm.weight`,
//! `blocks.{i}.mlp.{fc,gate,proj}.weight` [out, in], `blocks.{i}.mlp.{fc,gate,proj}_norm.weight`,
//! `ln_f.weight`, `lm_head.weight` [V, C] (absent when tied to `wte`); `.bias` beside each
//! weight when `bias = true`. Linear weights are stored [out, in] as `torch.nn.Linear`'s
//! (burn's are [in, out]), so `y = x @ W.T`.
//!
//! An export may also hold the training batches of the first steps, `batches.x` and
//! `batches.y` (i32, [N, B, T]), and carries the config (TOML), the vocabulary (JSON) and
//! a checksum of every tensor (`params::CHECKSUMS`) in its metadata. Batch i is training
//! batch i (step * grad_accum + micro-step); with dropout, its masks are `rng::feistel30`
//! (see `simplegpt_shaders::dropout`) keyed by `rng::dropout_key(seed, i, site)`.

use std::collections::HashMap;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::config::Config;
use crate::data::{Dataset, Tokenizer};
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::params::{self, PathMapper, f32_bytes, f32_values, read_f32, safetensors_bytes};

const FORMAT: &str = "simplegpt-weights-1";

/// The PyTorch name of a parameter at `path`, and whether its layout is transposed there.
fn torch_name(path: &str, rank: usize) -> (String, bool) {
    match path {
        "wte" | "wpe" => (format!("{path}.weight"), false),
        "lm_head" => ("lm_head.weight".into(), true),
        _ => (path.to_string(), rank == 2),
    }
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Serialises `model`'s weights (PyTorch names and layout), and the first `n_batches`
/// training batches of `data` when given, as safetensors bytes.
pub async fn export(
    model: &Gpt,
    config: &Config,
    tokenizer: &Tokenizer,
    batches: Option<(&Dataset, usize)>,
) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (path, t, shape) in params::named(model) {
        let values = read_f32(t).await?;
        let (name, transposed) = torch_name(&path, shape.len());
        let (shape, values) = if transposed {
            (vec![shape[1], shape[0]], transpose(&values, shape[0], shape[1]))
        } else {
            (shape, values)
        };
        tensors.push((name, Dtype::F32, shape, f32_bytes(&values)));
    }
    if let Some((data, n)) = batches {
        let (t, cfg) = (config.model.block_size, &config.train);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for i in 0..n {
            let b = data.train_batch(config, i as u64);
            xs.extend(b.x.iter().flat_map(|&v| (v as i32).to_le_bytes()));
            ys.extend(b.y.iter().flat_map(|&v| (v as i32).to_le_bytes()));
        }
        let shape = vec![n, cfg.batch_size, t];
        tensors.push(("batches.x".into(), Dtype::I32, shape.clone(), xs));
        tensors.push(("batches.y".into(), Dtype::I32, shape, ys));
    }
    let metadata: HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("config".to_string(), config.to_toml()),
        ("tokenizer".to_string(), serde_json::to_string(tokenizer).expect("serialisable")),
        ("layout".to_string(), "pytorch: linear weights [out, in]".to_string()),
    ]
    .into_iter()
    .collect();
    safetensors_bytes(&tensors, metadata)
}

/// Replaces every weight of `model` with the one of the same PyTorch name in `bytes`
/// (a file written by `export`, or by any framework that follows the names above). When
/// the file has tensor checksums (`export` writes them), every tensor must match its own.
/// When it names its vocabulary (`export` does), it must be `tokenizer`, the data's:
/// otherwise each embedding row would belong to another character.
pub fn import(model: Gpt, bytes: &[u8], origin: &str, tokenizer: &Tokenizer, device: &Device) -> Result<Gpt> {
    let bad = |why: String| Error::Input(format!("{origin}: {why}"));
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").is_some_and(|f| crate::checkpoint::is_checkpoint_format(f)) {
        return Err(bad(
            "this is a training checkpoint, not weights; write them with `simplegpt export --from RUN_DIR --out FILE`"
                .into(),
        ));
    }
    // Files from other tools have no checksums; ours have one for every tensor.
    if let Some(checksums) = meta.get(params::CHECKSUMS) {
        params::check_checksums(&st, checksums).map_err(|why| {
            Error::Input(format!("{origin} is corrupted: {why}; export it again or restore the file"))
        })?;
    }
    if let Some(vocab) = meta.get("tokenizer").and_then(|t| serde_json::from_str::<Tokenizer>(t).ok())
        && vocab != *tokenizer
    {
        return Err(bad(
            "its vocabulary differs from the data's characters: train with the --data it was exported with".into(),
        ));
    }
    let mut mapper = Import { st: &st, device, error: None, origin };
    let model = params::map(model, &mut mapper);
    match mapper.error {
        Some(e) => Err(e),
        None => Ok(model),
    }
}

struct Import<'a> {
    st: &'a SafeTensors<'a>,
    device: &'a Device,
    error: Option<Error>,
    origin: &'a str,
}

impl PathMapper for Import<'_> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dims = param.val().dims().to_vec();
        let (name, transposed) = torch_name(path, D);
        let expected: Vec<usize> = if transposed { vec![dims[1], dims[0]] } else { dims.clone() };
        let found = self.st.tensor(&name).ok();
        let Some(view) = found.as_ref().filter(|v| v.dtype() == Dtype::F32 && v.shape() == expected.as_slice()) else {
            let has = match &found {
                Some(v) => format!("it has {:?} {:?}", v.dtype(), v.shape()),
                None => "it has none".to_string(),
            };
            self.error.get_or_insert_with(|| {
                Error::Input(format!(
                    "{}: this config needs an f32 tensor {name} of shape {expected:?}, and {has}: export with the same config",
                    self.origin
                ))
            });
            return param;
        };
        let values = f32_values(view.data());
        let values = if transposed { transpose(&values, expected[0], expected[1]) } else { values };
        params::replaced(param, Tensor::from_data(TensorData::new(values, dims), self.device))
    }
}
