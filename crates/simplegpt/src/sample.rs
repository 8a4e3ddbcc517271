//! Text generation from a trained model: temperature and top-k sampling (nanoGPT's
//! `generate`), with the token draws from a seeded CPU stream.

use burn::tensor::{Int, Tensor, TensorData};

use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::rng::Stream;

/// nanoGPT's `sample.py` defaults, which the CLI and the page share.
pub const DEFAULT_TEMPERATURE: f64 = 0.8;
pub const DEFAULT_TOP_K: usize = 200;

pub struct SampleOptions {
    pub prompt: String,
    pub max_new_tokens: usize,
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    pub seed: u64,
}

/// Continues `prompt`; returns prompt + continuation. The model must not be on an autodiff
/// device (use `model.valid()`).
pub async fn generate(model: &Gpt, tokenizer: &Tokenizer, block_size: usize, opts: &SampleOptions) -> Result<String> {
    if !(opts.temperature > 0.0 && opts.temperature.is_finite()) {
        return Err(Error::Input(format!("temperature must be > 0, got {}", opts.temperature)));
    }
    let mut ids = if opts.prompt.is_empty() {
        // nanoGPT starts from "\n"; fall back to the first character when there is none.
        vec![tokenizer.encode("\n").map(|v| v[0]).unwrap_or(0)]
    } else {
        tokenizer.encode(&opts.prompt)?
    };
    let prompt_len = if opts.prompt.is_empty() { 0 } else { ids.len() };
    let device = model.wte.val().device();
    let mut rng = Stream::new(opts.seed, "sample", 0);
    for _ in 0..opts.max_new_tokens {
        // The context is cropped to the last block_size tokens.
        let context = &ids[ids.len().saturating_sub(block_size)..];
        let t = context.len();
        let x = Tensor::<2, Int>::from_data(
            TensorData::new(context.iter().map(|&i| i as i32).collect::<Vec<_>>(), [1, t]),
            &device,
        );
        let logits = model
            .forward(x)
            .slice([0..1, t - 1..t])
            .reshape([-1])
            .into_data_async()
            .await
            .map_err(|e| Error::Backend(format!("reading logits failed: {e:?}")))?
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::Backend(format!("unexpected logits: {e:?}")))?;
        // Only the tokenizer's characters: a vocab_size padded past them has ids that
        // decode to nothing.
        let probs = softmax(&logits[..tokenizer.vocab_size()], opts.temperature);
        ids.push(draw(&probs, opts.top_k, &mut rng) as u32);
    }
    let start = if prompt_len == 0 { 1 } else { 0 };
    Ok(tokenizer.decode(&ids[start..]))
}

/// softmax(logits / temperature) in f64, from the largest logit down: no overflow even at
/// a tiny temperature, where it becomes the argmax.
fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / temperature).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| e / total).collect()
}

/// Draws an index from `probs`, restricted to the `top_k` largest (0: all).
fn draw(probs: &[f64], top_k: usize, rng: &mut Stream) -> usize {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let total: f64 = order.iter().map(|&i| probs[i]).sum();
    let mut u = rng.uniform() * total;
    for &i in &order {
        u -= probs[i];
        if u <= 0.0 {
            return i;
        }
    }
    *order.last().expect("vocabulary is not empty")
}
