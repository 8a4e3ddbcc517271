//! The GPT, in one file that reads in the order the data flows (as nanoGPT's model.py):
//! `Norm`, `Attention`, `Mlp`, `Block`, `Gpt`. Every normalisation variant of the study is a
//! few visible lines in `Block::forward` (pre-, post-, peri- and output norms, DeepNorm's
//! scaled residual, nGPT's steps on the unit sphere) and in the `*_norm` and `*_scale`
//! fields of `Attention` and `Mlp` (SimpleNorm's norm after each linear, QK-norm, nGPT's
//! scales).
//!
//! Shapes: B batch, T time (context), C channels (n_embd), nh heads, hs head size (C / nh),
//! V vocabulary. Linear weights are stored [in, out] (burn's layout; torch's is [out, in]).
//!
//! Weights are drawn on the CPU from the seed (`rng::Stream`) and then moved to the device,
//! so every backend starts from bit-identical weights.

use burn::module::{Module, Param};
use burn::nn::{Linear, RotaryEncoding, RotaryEncodingConfig};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData, activation};

use crate::config::{MlpKind, ModelConfig, NormKind, PosKind};
use crate::params::{self, PathMapper};
use crate::rng::{self, Stream};
use simplegpt_shaders::AttentionDropout;

const NORM_EPS: f64 = 1e-5;

/// LayerNorm (`rms = false`) or RMSNorm (`rms = true`), each with a learnable gain.
/// `fused`: one kernel forward and one backward (`simplegpt_shaders::norm`, on the CPU and
/// the GPU backends) rather than the tensor ops below (config key `fused`); not under burn's
/// fusion (the `fusion` feature), where the tensor ops run on the GPU.
#[derive(Module, Debug)]
pub struct Norm {
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub rms: bool,
    pub fused: bool,
}

impl Norm {
    fn new(d: usize, rms: bool, bias: bool, fused: bool, device: &Device) -> Self {
        Norm {
            weight: Param::from_data(TensorData::new(vec![1.0f32; d], [d]), device),
            bias: (bias && !rms).then(|| Param::from_data(TensorData::new(vec![0.0f32; d], [d]), device)),
            rms,
            fused,
        }
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let kernel = x.device().inner() == Device::flex() || !cfg!(feature = "fusion");
        let x = if self.fused && kernel {
            simplegpt_shaders::norm(x, self.weight.val(), self.rms, NORM_EPS)
        } else {
            self.unfused(x)
        };
        match &self.bias {
            Some(b) => x + b.val().unsqueeze(),
            None => x,
        }
    }

    /// The norm and its gain as tensor ops.
    fn unfused<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = if self.rms {
            let rms = (x.clone().square().mean_dim(D - 1) + NORM_EPS).sqrt();
            x / rms
        } else {
            let x = x.clone() - x.mean_dim(D - 1);
            let std = (x.clone().square().mean_dim(D - 1) + NORM_EPS).sqrt();
            x / std
        };
        x * self.weight.val().unsqueeze()
    }
}

/// nGPT's normalisation: `x / ||x||` over the last dimension, onto the unit sphere; no gain
/// (nGPT's learned scales are `Scale`s of their own) and no eps, as the paper's.
fn unit<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let length = x.clone().square().sum_dim(D - 1).sqrt();
    x / length
}

/// A learned vector of nGPT's (alpha, s_qk, s_u, s_nu, s_z), in the paper's parametrisation:
/// stored at its `scale` and used times init / scale, so that it starts at `init` and Adam
/// moves it in steps relative to `scale`. (s_nu's constant sqrt(C) is folded into `factor`.)
#[derive(Module, Debug)]
pub struct Scale {
    pub weight: Param<Tensor<1>>,
    /// What the stored values are multiplied by when used.
    pub factor: f64,
}

impl Scale {
    fn new(d: usize, init: f64, scale: f64, device: &Device) -> Self {
        Scale { weight: Param::from_data(TensorData::new(vec![scale as f32; d], [d]), device), factor: init / scale }
    }

    /// `x` times the vector, over its last dimension.
    fn times<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        x * (self.weight.val() * self.factor).unsqueeze()
    }
}

/// `x` scaled where the variant has the scale (nGPT), else unchanged.
fn scale_opt<const D: usize>(scale: &Option<Scale>, x: Tensor<D>) -> Tensor<D> {
    match scale {
        Some(s) => s.times(x),
        None => x,
    }
}

/// The norm where the variant has one, else `x` unchanged.
fn norm_opt<const D: usize>(norm: &Option<Norm>, x: Tensor<D>) -> Tensor<D> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

/// `layer` on [B, T, in] -> [B, T, out], as one 2-D product [B*T, in] x [in, out] (llm.c's
/// `matmul_forward`). burn 0.22's Linear on a 3-D input is a matmul against the weight
/// broadcast over the batch when T is a multiple of 32 (otherwise burn folds the batch into
/// the rows itself), whose gradient is then one [in, out] matrix per batch element,
/// [B, in, out], summed afterwards: a tensor B times the weight's size, each step. On
/// [B*T, in] the weight's gradient is one product, [in, B*T] x [B*T, out]. The reshapes
/// are views. The product is `simplegpt_shaders::matmul`: burn's, without its extra passes
/// over each output on the CPU.
fn linear(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, t, d_in] = x.dims();
    let y = simplegpt_shaders::matmul(x.reshape([b * t, d_in]), layer.weight.val()); // [B*T, out]
    let y = match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    };
    let d_out = y.dims()[1];
    y.reshape([b, t, d_out])
}

/// What a diagnostic step measures inside the forward pass, each a detached scalar tensor,
/// read back together with the step's loss: the instability signals the norms are about.
#[derive(Default)]
pub struct Probes {
    /// RMS of the activations leaving each block.
    pub block_rms: Vec<Tensor<1>>,
    /// The largest attention logit (q.k / sqrt(hs), over the causal entries) of each layer:
    /// what QK-norm was invented to bound.
    pub attn_logit_max: Vec<Tensor<1>>,
    /// RMS of each linear map's output, before any norm that follows it, by the linear's
    /// path (`blocks.0.attn.q`, `lm_head`): the scale SimpleNorm takes away.
    pub linear_rms: Vec<(String, Tensor<1>)>,
    /// The block being run, for the paths.
    layer: usize,
}

impl Probes {
    /// `y` unchanged, its RMS noted under `name` (e.g. `attn.q`) of the current block.
    fn linear<const D: usize>(probes: &mut Option<&mut Probes>, name: &str, y: Tensor<D>) -> Tensor<D> {
        if let Some(p) = probes.as_deref_mut() {
            p.linear_rms.push((format!("blocks.{}.{name}", p.layer), rms(y.clone())));
        }
        y
    }
}

/// The root mean square of all of `x`'s elements, detached.
fn rms<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    params::mean_all(x.detach().square()).sqrt()
}

/// Dropout whose mask every backend draws identically: a hash of each element's index keyed
/// by (seed, batch, site) (`rng::feistel30`, computed by `simplegpt_shaders::dropout`), instead of the
/// backend's RNG. `forward` drops only when given the batch's key (`Some` while training,
/// `None` when evaluating).
#[derive(Module, Debug)]
pub struct Dropout {
    pub prob: f64,
    /// Which dropout of the model this is, so that no two share a mask.
    pub site: u64,
}

impl Dropout {
    pub fn forward<const D: usize>(&self, x: Tensor<D>, key: Option<DropoutKey>) -> Tensor<D> {
        match self.mask(key) {
            Some(mask) => simplegpt_shaders::dropout(x, mask.key, mask.prob),
            None => x,
        }
    }

    /// The mask's key and probability, when this batch drops anything here.
    fn mask(&self, key: Option<DropoutKey>) -> Option<AttentionDropout> {
        let key = key.filter(|_| self.prob > 0.0)?;
        Some(AttentionDropout { key: rng::dropout_key(key.seed, key.batch, self.site), prob: self.prob })
    }
}

/// What a training forward pass keys its dropout masks with: the run's seed and the index of
/// the batch (step * grad_accum + micro-step), so a resumed run redraws the same masks.
#[derive(Debug, Clone, Copy)]
pub struct DropoutKey {
    pub seed: u64,
    pub batch: u64,
}

/// Causal multi-head self-attention. `q_norm`/`k_norm` are QK-norm (the `qk_norm` key, and
/// pre_rms_qk, simple and olmo2 by definition) over the whole width before RoPE;
/// `v_norm`/`o_norm` complete SimpleNorm's "norm after every linear"; `qk_scale` is nGPT's
/// s_qk, on q and k made unit per head after RoPE.
#[derive(Module, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub v_norm: Option<Norm>,
    pub o_norm: Option<Norm>,
    pub qk_scale: Option<Scale>,
    pub attn_dropout: Dropout,
    pub resid_dropout: Dropout,
    pub n_head: usize,
    /// The attention as one op (`simplegpt_shaders::causal_attention`, on the CPU and the GPU
    /// backends, not under burn's fusion) rather than tensor ops (config key `fused`).
    pub fused: bool,
}

impl Attention {
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&RotaryEncoding>,
        key: Option<DropoutKey>,
        mut probes: Option<&mut Probes>,
    ) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let (nh, hs) = (self.n_head, c / self.n_head);
        let mut probe = |name, y| Probes::linear(&mut probes, name, y);
        // q, k, v: [B, T, C] -> [B, T, C], each through one [B*T, C] x [C, C] product.
        let q = norm_opt(&self.q_norm, probe("attn.q", linear(&self.q, x.clone())));
        let k = norm_opt(&self.k_norm, probe("attn.k", linear(&self.k, x.clone())));
        let v = norm_opt(&self.v_norm, probe("attn.v", linear(&self.v, x)));
        // [B, T, C] -> [B, nh, T, hs]
        let heads = |y: Tensor<3>| y.reshape([b, t, nh, hs]).swap_dims(1, 2);
        let (mut q, mut k, v) = (heads(q), heads(k), heads(v));
        if let Some(rope) = rope {
            q = rope.forward(q);
            k = rope.forward(k);
        }
        // nGPT: q and k unit per head, times s_qk, so that q.k is a cosine (times s_qk^2),
        // which the softmax takes times sqrt(hs) rather than over it.
        let score_scale = match &self.qk_scale {
            Some(s_qk) => {
                let s_qk = (s_qk.weight.val() * s_qk.factor).reshape([1, nh, 1, hs]);
                (q, k) = (unit(q) * s_qk.clone(), unit(k) * s_qk);
                (hs as f64).sqrt()
            }
            None => 1.0 / (hs as f64).sqrt(),
        };
        // Each position attends to itself and the past only: [B, nh, T, T] scores.
        let masked = |scores: Tensor<4>| {
            let future = Tensor::<2, Bool>::tril_mask([t, t], 0, &scores.device());
            scores.mask_fill(future.unsqueeze::<4>().expand([b, nh, t, t]), f32::NEG_INFINITY)
        };
        if let Some(p) = probes.as_deref_mut() {
            let scores = q.clone().detach().matmul(k.clone().detach().swap_dims(2, 3));
            p.attn_logit_max.push(masked(scores * score_scale).max());
        }
        let kernel = q.device().inner() == Device::flex() || !cfg!(feature = "fusion");
        // [B, nh, T, hs]: softmax(q k^T) v, dropped weights and all.
        let y = if self.fused && kernel {
            // One op, flash-style: no [B, nh, T, T] tensor kept for the backward.
            simplegpt_shaders::causal_attention(q, k, v, score_scale, self.attn_dropout.mask(key))
        } else {
            let scores = simplegpt_shaders::matmul(q, k.swap_dims(2, 3));
            let att = activation::softmax(masked(scores * score_scale), 3);
            simplegpt_shaders::matmul(self.attn_dropout.forward(att, key), v)
        };
        // [B, nh, T, hs] -> [B, T, C]: the heads side by side.
        let y = y.swap_dims(1, 2).reshape([b, t, c]);
        let o = Probes::linear(&mut probes, "attn.o", linear(&self.o, y));
        self.resid_dropout.forward(norm_opt(&self.o_norm, o), key)
    }
}

/// The feed-forward sublayer: GELU (`fc -> gelu -> proj`) or SwiGLU
/// (`proj(silu(fc x) * gate x)`). Under SimpleNorm each linear's output is normalised,
/// the norm sitting before the activation as in the reference. nGPT scales the SiLU's
/// input by s_nu sqrt(C) (`fc_scale`) and the gate by s_u (`gate_scale`). GELU is the exact
/// (erf) form, one op each way (`simplegpt_shaders::gelu`, config key `fused`): on the CPU
/// vectorised and on all cores rather than burn's scalar loop on one, on the GPU one kernel
/// rather than burn's chain, whose gradient is the tanh approximation's.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc: Linear,
    pub gate: Option<Linear>,
    pub proj: Linear,
    pub fc_norm: Option<Norm>,
    pub gate_norm: Option<Norm>,
    pub proj_norm: Option<Norm>,
    pub fc_scale: Option<Scale>,
    pub gate_scale: Option<Scale>,
    pub dropout: Dropout,
    pub fused: bool,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>, key: Option<DropoutKey>, mut probes: Option<&mut Probes>) -> Tensor<3> {
        let mut probe = |name, y| Probes::linear(&mut probes, name, y);
        // [B, T, C] -> [B, T, hidden] -> [B, T, C]
        let h = scale_opt(&self.fc_scale, norm_opt(&self.fc_norm, probe("mlp.fc", linear(&self.fc, x.clone()))));
        let h = match &self.gate {
            None if self.fused => simplegpt_shaders::gelu(h),
            None => activation::gelu(h),
            Some(gate) => {
                activation::silu(h)
                    * scale_opt(&self.gate_scale, norm_opt(&self.gate_norm, probe("mlp.gate", linear(gate, x))))
            }
        };
        self.dropout.forward(norm_opt(&self.proj_norm, probe("mlp.proj", linear(&self.proj, h))), key)
    }
}

/// One transformer block. `ln_1`/`ln_2` exist for the pre-, peri- and post-norm variants;
/// `attn_out_norm`/`mlp_out_norm`, on the sublayers' outputs, for Peri-LN and OLMo 2;
/// `attn_alpha`/`mlp_alpha`, nGPT's steps towards each sublayer's output, for nGPT.
#[derive(Module, Debug)]
pub struct Block {
    pub ln_1: Option<Norm>,
    pub attn: Attention,
    pub attn_out_norm: Option<Norm>,
    pub ln_2: Option<Norm>,
    pub mlp: Mlp,
    pub mlp_out_norm: Option<Norm>,
    pub attn_alpha: Option<Scale>,
    pub mlp_alpha: Option<Scale>,
    pub post_norm: bool,
    pub residual: bool,
    /// What the residual is multiplied by before the add: DeepNorm's alpha, else 1.
    pub residual_scale: f64,
}

impl Block {
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&RotaryEncoding>,
        key: Option<DropoutKey>,
        mut probes: Option<&mut Probes>,
    ) -> Tensor<3> {
        // Residual (`x + f(x)`) or not (`f(x)`), the blog's ablation. DeepNorm scales the
        // residual up (`alpha x + f(x)`), so that a sublayer's update moves the sum less.
        let add = |x: Tensor<3>, fx: Tensor<3>| match self.residual {
            false => fx,
            true if self.residual_scale == 1.0 => x + fx,
            true => x * self.residual_scale + fx,
        };
        if let (Some(attn_alpha), Some(mlp_alpha)) = (&self.attn_alpha, &self.mlp_alpha) {
            // nGPT: the state stays on the unit sphere, each sublayer moving it towards its
            // own normalised output by a learned step per channel: h + alpha (norm(f(h)) - h).
            let towards = |h: Tensor<3>, fh: Tensor<3>, alpha: &Scale| unit(h.clone() + alpha.times(unit(fh) - h));
            let h = towards(x.clone(), self.attn.forward(x, rope, key, probes.as_deref_mut()), attn_alpha);
            towards(h.clone(), self.mlp.forward(h, key, probes), mlp_alpha)
        } else if self.post_norm {
            // Post-LN (original Transformer; DeepNorm; Mix-LN's first blocks): normalise
            // after the residual add.
            let h = norm_opt(&self.ln_1, add(x.clone(), self.attn.forward(x, rope, key, probes.as_deref_mut())));
            norm_opt(&self.ln_2, add(h.clone(), self.mlp.forward(h, key, probes)))
        } else {
            // Pre-norm (GPT-2, LLaMA): normalise each sublayer's input (ln_1, ln_2). Peri-LN
            // normalises its output too, OLMo 2 its output only (`*_out_norm`, after the
            // sublayer's dropout). SimpleNorm and `none` have neither: x + attn(x), h + mlp(h).
            let attn = self.attn.forward(norm_opt(&self.ln_1, x.clone()), rope, key, probes.as_deref_mut());
            let h = add(x, norm_opt(&self.attn_out_norm, attn));
            let mlp = self.mlp.forward(norm_opt(&self.ln_2, h.clone()), key, probes);
            add(h, norm_opt(&self.mlp_out_norm, mlp))
        }
    }
}

/// The GPT: token (+ position) embedding, the blocks, the final norm, the LM head.
#[derive(Module, Debug)]
pub struct Gpt {
    /// Token embedding [V, C]; with tied weights it is also the LM head.
    pub wte: Param<Tensor<2>>,
    /// Learned position embedding [block_size, C] (None with RoPE).
    pub wpe: Option<Param<Tensor<2>>>,
    pub drop: Dropout,
    pub blocks: Vec<Block>,
    pub ln_f: Option<Norm>,
    /// Untied LM head [C, V]; None when tied to `wte`.
    pub lm_head: Option<Param<Tensor<2>>>,
    pub rope: Option<RotaryEncoding>,
    /// nGPT's s_z [V], which scales the logits (cosines, from unit vectors).
    pub logit_scale: Option<Scale>,
    /// Gemma 2's soft cap c of the logits, `c tanh(logits / c)`; 0: none.
    pub logit_softcap: f64,
    /// The cross-entropy as one op each way (`simplegpt_shaders::cross_entropy`, on the CPU and
    /// the GPU backends, not under burn's fusion) rather than log-softmax and a gather (config
    /// key `fused`).
    pub fused: bool,
}

impl Gpt {
    /// idx [B, T] token ids -> logits [B, T, V], without dropout (evaluation, sampling).
    pub fn forward(&self, idx: Tensor<2, Int>) -> Tensor<3> {
        self.forward_train(idx, None, None)
    }

    /// As `forward`, with dropout keyed by `key` when given, and the diagnostics noted in
    /// `probes` when given.
    pub fn forward_train(
        &self,
        idx: Tensor<2, Int>,
        key: Option<DropoutKey>,
        mut probes: Option<&mut Probes>,
    ) -> Tensor<3> {
        let [b, t] = idx.dims();
        let [v, c] = self.wte.val().dims();
        // [B, T] -> [B*T, C] by row selection (the embedding lookup), then [B, T, C].
        let mut x: Tensor<3> = self.wte.val().select(0, idx.reshape([b * t])).reshape([b, t, c]);
        if let Some(wpe) = &self.wpe {
            x = x + wpe.val().slice([0..t]).unsqueeze::<3>();
        }
        x = self.drop.forward(x, key);
        for (layer, block) in self.blocks.iter().enumerate() {
            if let Some(p) = probes.as_deref_mut() {
                p.layer = layer;
            }
            x = block.forward(x, self.rope.as_ref(), key, probes.as_deref_mut());
            if let Some(p) = probes.as_deref_mut() {
                p.block_rms.push(rms(x.clone()));
            }
        }
        let x = norm_opt(&self.ln_f, x);
        let head = match &self.lm_head {
            Some(w) => w.val(),
            None => self.wte.val().transpose(),
        };
        let logits = simplegpt_shaders::matmul(x.reshape([b * t, c]), head).reshape([b, t, v]);
        if let Some(p) = probes {
            p.linear_rms.push(("lm_head".to_string(), rms(logits.clone())));
        }
        let logits = scale_opt(&self.logit_scale, logits);
        if self.logit_softcap > 0.0 {
            // Smooth, so the logits stay within (-c, c) with their gradient kept.
            (logits / self.logit_softcap).tanh() * self.logit_softcap
        } else {
            logits
        }
    }

    /// nGPT's weights, every matrix's vectors along the width at unit norm: the embedding's
    /// rows and the head's columns (each token's vector), q, k, v and the MLP's input linears
    /// over their input, o and the MLP's output over their output. Applied after every
    /// optimizer step (at init, `ModelConfig::init` does the same on the host).
    pub fn with_unit_vectors(self) -> Gpt {
        params::map(self, &mut UnitVectors)
    }

    /// Mean cross-entropy of logits [B, T, V] against targets [B, T].
    pub fn loss(&self, logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
        let [b, t, v] = logits.dims();
        let (logits, targets) = (logits.reshape([b * t, v]), targets.reshape([b * t]));
        if self.fused && (logits.device().inner() == Device::flex() || !cfg!(feature = "fusion")) {
            return params::mean_all(simplegpt_shaders::cross_entropy(logits, targets));
        }
        let logp = activation::log_softmax(logits, 1);
        params::mean_all(logp.gather(1, targets.reshape([b * t, 1]))).neg()
    }

    /// PaLM's z-loss: the mean over positions of (log Z)^2, Z = sum(exp(logits)) the softmax's
    /// normaliser. A small multiple of it in the objective keeps log Z near 0, so that the
    /// logits cannot drift up together (the cross-entropy does not see such a shift).
    pub fn z_loss(logits: Tensor<3>) -> Tensor<1> {
        let [b, t, v] = logits.dims();
        let logits = logits.reshape([b * t, v]);
        // log Z = max + log sum exp(logits - max), which cannot overflow; the max is a
        // constant for the gradient, as it cancels out of log Z.
        let max = logits.clone().max_dim(1).detach();
        let log_z = (logits - max.clone()).exp().sum_dim(1).log() + max; // [B*T, 1]
        params::mean_all(log_z.square())
    }

    /// What training minimises: the cross-entropy, and the z-loss term `z_loss` x `z_loss(..)`
    /// when `z_loss` > 0. Reported apart; their sum is the objective.
    pub fn loss_terms(
        &self,
        logits: Tensor<3>,
        targets: Tensor<2, Int>,
        z_loss: f64,
    ) -> (Tensor<1>, Option<Tensor<1>>) {
        if z_loss > 0.0 {
            (self.loss(logits.clone(), targets), Some(Gpt::z_loss(logits) * z_loss))
        } else {
            (self.loss(logits, targets), None)
        }
    }

    /// The sum of `loss_terms`: what the gradient of a training step is taken of.
    pub fn objective(&self, logits: Tensor<3>, targets: Tensor<2, Int>, z_loss: f64) -> Tensor<1> {
        match self.loss_terms(logits, targets, z_loss) {
            (loss, Some(z)) => loss + z,
            (loss, None) => loss,
        }
    }
}

/// Puts each matrix of `Gpt::with_unit_vectors` on the unit sphere along the width C.
struct UnitVectors;

impl PathMapper for UnitVectors {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if D != 2 {
            return param;
        }
        // Stored [in, out] (the embedding [V, C]): C runs along dim 1 of the embedding and of
        // the matrices that write into the width, along dim 0 of the others.
        let writes_width = path == "wte" || path.ends_with("attn.o.weight") || path.ends_with("mlp.proj.weight");
        let dim = if writes_width { 1 } else { 0 };
        // On the values alone (as an optimizer step), outside any autodiff graph.
        let w = param.val().inner();
        let length = w.clone().square().sum_dim(dim).sqrt();
        params::replaced(param, Tensor::from_inner(w / length))
    }
}

/// Draws each weight tensor from its own seeded stream, numbered in creation order.
struct Initializer<'a> {
    seed: u64,
    count: u64,
    bias: bool,
    /// nGPT: each matrix's vectors along the width put at unit norm, here on the host in a
    /// fixed order (f64), so that the initial weights are the same bits on every backend and
    /// CPU (a device's sum rounds in its own order).
    unit_vectors: bool,
    device: &'a Device,
}

impl Initializer<'_> {
    /// A matrix drawn from N(0, std) (truncated at 2 std where `truncate`); `width_dim` is the
    /// dimension that runs along the model's width, which nGPT's unit vectors lie along.
    fn normal(&mut self, shape: [usize; 2], std: f64, truncate: bool, width_dim: usize) -> Param<Tensor<2>> {
        self.count += 1;
        let mut data = Stream::new(self.seed, "init", self.count).normal_vec(shape[0] * shape[1], std, truncate);
        if self.unit_vectors {
            unit_vectors_along(&mut data, shape, width_dim);
        }
        Param::from_data(TensorData::new(data, shape), self.device)
    }

    /// A linear [d_in, d_out]; `width_dim` as for `normal` (0 for one that reads the width, 1 for
    /// one that writes it).
    fn linear(&mut self, d_in: usize, d_out: usize, std: f64, width_dim: usize) -> Linear {
        Linear {
            weight: self.normal([d_in, d_out], std, false, width_dim),
            bias: self.bias.then(|| Param::from_data(TensorData::new(vec![0.0f32; d_out], [d_out]), self.device)),
        }
    }
}

/// Divides each vector of a row-major [rows, cols] matrix along `dim` by its length.
fn unit_vectors_along(data: &mut [f32], [rows, cols]: [usize; 2], dim: usize) {
    let (count, len, stride, step) = if dim == 1 { (rows, cols, cols, 1) } else { (cols, rows, 1, cols) };
    for vector in 0..count {
        let at = |i: usize| vector * stride + i * step;
        let length = (0..len).map(|i| (data[at(i)] as f64).powi(2)).sum::<f64>().sqrt();
        for i in 0..len {
            data[at(i)] = (data[at(i)] as f64 / length) as f32;
        }
    }
}

impl ModelConfig {
    /// Hidden width of the MLP: 4C for GELU; for SwiGLU 2/3 of that (rounded up to a
    /// multiple of 8), which keeps the parameter count equal with its third matrix.
    pub fn mlp_hidden(&self) -> usize {
        match self.mlp {
            MlpKind::Gelu => 4 * self.n_embd,
            MlpKind::Swiglu => (8 * self.n_embd / 3).div_ceil(8) * 8,
        }
    }

    /// Builds the model with its initial weights drawn from `seed` on the CPU.
    ///
    /// Init: nanoGPT's (all weights N(0, 0.02), output projections N(0, 0.02/sqrt(2 n_layer)),
    /// biases 0, norm gains 1) for every variant but these, which follow their papers:
    /// - `simple`, the SimpleGPT reference's: embedding N(0, 1); q, k, v and the MLP's input
    ///   linears 0.02; o and the MLP's output 0.02/sqrt(2 (layer+1)); head truncated normal
    ///   with std C^-0.5.
    /// - `olmo2`, OLMo 2's: every weight N(0, 0.02), output projections included.
    /// - `deepnorm`, DeepNet's relative scales on our base: q and k 0.02; v, o and the MLP's
    ///   linears 0.02 beta, beta = (8 n_layer)^(-1/4), in place of GPT-2's 1/sqrt(2 n_layer) on
    ///   o and the MLP's output. DeepNet draws these from Xavier normal with gain beta (std
    ///   beta sqrt(2 / (fan_in + fan_out)), C^-1/2 beta for a C x C matrix); the base std here
    ///   stays 0.02 for every shape, as for the other variants, so only the factor beta and
    ///   which matrices take it are DeepNet's.
    /// - `ngpt`: drawn as nanoGPT's, then every matrix's vectors put at unit norm (where
    ///   `Gpt::with_unit_vectors` puts them after each step), which keeps only their
    ///   directions, as nGPT's init does.
    pub fn init(&self, seed: u64, device: &Device) -> Gpt {
        assert!(self.vocab_size > 0, "vocab_size is resolved from the data before init");
        let (c, v, hidden) = (self.n_embd, self.vocab_size, self.mlp_hidden());
        let simple = self.norm == NormKind::Simple;
        let ngpt = self.norm == NormKind::Ngpt;
        let (deepnorm_alpha, deepnorm_beta) = self.deepnorm_scales();
        let mut init = Initializer { seed, count: 0, bias: self.bias, unit_vectors: ngpt, device };
        // The variant's own norm (LayerNorm or RMSNorm) over the width, where `on`.
        let norm = |on: bool| on.then(|| Norm::new(c, !self.norm.layer_norm(), self.bias, self.fused, device));
        // SimpleNorm's and QK-norm's RMSNorms have no bias, as the reference's.
        let rms_norm = |on: bool, d: usize| on.then(|| Norm::new(d, true, false, self.fused, device));
        let dropout = |site: usize| Dropout { prob: self.dropout, site: site as u64 };
        // nGPT's learned vectors, (init, scale) as the paper's: alpha (0.05, C^-1/2), s_qk and
        // s_z (1, C^-1/2), s_u (1, 1), s_nu (1, 1) with the constant sqrt(C) folded in.
        let root_c = (c as f64).sqrt();
        let ngpt_scale = |d: usize, init: f64, scale: f64| ngpt.then(|| Scale::new(d, init, scale, device));

        let wte_std = if !simple {
            0.02
        } else if self.tie_weights {
            // Tied under SimpleNorm: the matrix is also the head, so it takes the head's scale.
            (c as f64).powf(-0.5)
        } else {
            1.0
        };
        let wte = init.normal([v, c], wte_std, simple && self.tie_weights, 1);
        let wpe = (self.pos == PosKind::Learned).then(|| init.normal([self.block_size, c], 0.02, false, 0));
        let blocks = (0..self.n_layer)
            .map(|layer| {
                // The std of v and the MLP's input linears, and of o and the MLP's output.
                let (in_std, out_std) = match self.norm {
                    NormKind::Simple => (0.02, 0.02 / (2.0 * (layer + 1) as f64).sqrt()),
                    NormKind::Olmo2 => (0.02, 0.02),
                    NormKind::DeepNorm => (0.02 * deepnorm_beta, 0.02 * deepnorm_beta),
                    _ => (0.02, 0.02 / (2.0 * self.n_layer as f64).sqrt()),
                };
                let swiglu = self.mlp == MlpKind::Swiglu;
                Block {
                    ln_1: norm(self.norm.block_norms()),
                    attn: Attention {
                        q: init.linear(c, c, 0.02, 0),
                        k: init.linear(c, c, 0.02, 0),
                        v: init.linear(c, c, in_std, 0),
                        o: init.linear(c, c, out_std, 1),
                        q_norm: rms_norm(self.has_qk_norm(), c),
                        k_norm: rms_norm(self.has_qk_norm(), c),
                        v_norm: rms_norm(simple, c),
                        o_norm: rms_norm(simple, c),
                        qk_scale: ngpt_scale(c, 1.0, 1.0 / root_c),
                        attn_dropout: dropout(1 + 3 * layer),
                        resid_dropout: dropout(2 + 3 * layer),
                        n_head: self.n_head,
                        fused: self.fused,
                    },
                    attn_out_norm: norm(self.norm.out_norms()),
                    ln_2: norm(self.norm.block_norms()),
                    mlp: Mlp {
                        fc: init.linear(c, hidden, in_std, 0),
                        gate: swiglu.then(|| init.linear(c, hidden, in_std, 0)),
                        proj: init.linear(hidden, c, out_std, 1),
                        fc_norm: rms_norm(simple, hidden),
                        gate_norm: rms_norm(simple && swiglu, hidden),
                        proj_norm: rms_norm(simple, c),
                        fc_scale: ngpt_scale(hidden, root_c, 1.0),
                        gate_scale: ngpt_scale(hidden, 1.0, 1.0),
                        dropout: dropout(3 + 3 * layer),
                        fused: self.fused,
                    },
                    mlp_out_norm: norm(self.norm.out_norms()),
                    attn_alpha: ngpt_scale(c, 0.05, 1.0 / root_c),
                    mlp_alpha: ngpt_scale(c, 0.05, 1.0 / root_c),
                    post_norm: layer < self.post_norm_blocks(),
                    residual: self.residual,
                    residual_scale: deepnorm_alpha,
                }
            })
            .collect();
        let ln_f = norm(self.norm.final_norm());
        let lm_head = (!self.tie_weights).then(|| {
            let std = if simple { (c as f64).powf(-0.5) } else { 0.02 };
            init.normal([c, v], std, simple, 0)
        });
        let rope = (self.pos == PosKind::Rope)
            .then(|| RotaryEncodingConfig::new(self.block_size, c / self.n_head).init(device));
        let logit_scale = ngpt_scale(v, 1.0, 1.0 / root_c);
        let gpt = Gpt {
            wte,
            wpe,
            drop: dropout(0),
            blocks,
            ln_f,
            lm_head,
            rope,
            logit_scale,
            logit_softcap: self.logit_softcap,
            fused: self.fused,
        };
        gpt
    }

    /// DeepNet's (alpha, beta) for a decoder-only model of n_layer blocks, (2 n_layer)^(1/4)
    /// and (8 n_layer)^(-1/4); (1, 1) for every other variant.
    pub fn deepnorm_scales(&self) -> (f64, f64) {
        if self.norm != NormKind::DeepNorm {
            return (1.0, 1.0);
        }
        let layers = self.n_layer as f64;
        ((2.0 * layers).powf(0.25), (8.0 * layers).powf(-0.25))
    }

    /// Parameter count (tied weights once), as nanoGPT's `get_num_params(non_embedding=False)`.
    pub fn num_params(&self) -> usize {
        self.num_params_u128() as usize
    }

    /// The same in 128 bits, where `Config::validate` checks it: any config's count fits
    /// there, not always a usize (32 bits in the browser).
    pub fn num_params_u128(&self) -> u128 {
        let (c, v, h) = (self.n_embd as u128, self.vocab_size as u128, self.mlp_hidden() as u128);
        let lin = |i: u128, o: u128| i * o + if self.bias { o } else { 0 };
        // The variant's own norm has a gain, and a bias when it is a LayerNorm with bias.
        let norm = |on: bool| {
            if !on {
                0
            } else if self.bias && self.norm.layer_norm() {
                2 * c
            } else {
                c
            }
        };
        let n_fc = if self.mlp == MlpKind::Swiglu { 2 } else { 1 }; // fc, and the gate
        let simple = self.norm == NormKind::Simple;
        let attention = 4 * lin(c, c) + if self.has_qk_norm() { 2 * c } else { 0 } + if simple { 2 * c } else { 0 };
        let mlp = n_fc * lin(c, h) + lin(h, c) + if simple { n_fc * h + c } else { 0 };
        let block = attention + mlp + 2 * norm(self.norm.block_norms()) + 2 * norm(self.norm.out_norms());
        // nGPT's learned vectors: alpha for each sublayer and s_qk (C each), s_u and s_nu
        // (hidden each), per block; s_z (V).
        let ngpt = self.norm == NormKind::Ngpt;
        let (block, logit_scale) = if ngpt { (block + 3 * c + 2 * h, v) } else { (block, 0) };
        logit_scale
            + v * c
            + if self.pos == PosKind::Learned { self.block_size as u128 * c } else { 0 }
            + self.n_layer as u128 * block
            + norm(self.norm.final_norm())
            + if self.tie_weights { 0 } else { c * v }
    }
}
