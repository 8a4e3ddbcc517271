//! The GPT, in one file that reads in the order the data flows (as nanoGPT's model.py):
//! `Norm`, `Attention`, `Mlp`, `Block`, `Gpt`. Every normalisation variant of the study is a
//! few visible lines in `Block::forward` (pre/post norms) and in the `*_norm` fields of
//! `Attention` and `Mlp` (SimpleNorm's norm after each linear, QK-norm).
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
use crate::params;
use crate::rng::{self, Stream};

const NORM_EPS: f64 = 1e-5;

/// LayerNorm (`rms = false`) or RMSNorm (`rms = true`), each with a learnable gain.
/// `fused`: on the CPU, one kernel forward and one backward (`simplegpt_shaders::norm`)
/// rather than the tensor ops below (config key `fused`).
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
        let x = if self.fused && x.device().inner() == Device::flex() {
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
/// are views.
fn linear(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, t, d_in] = x.dims();
    let y = layer.forward(x.reshape([b * t, d_in])); // [B*T, out]
    let d_out = y.dims()[1];
    y.reshape([b, t, d_out])
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
        let Some(key) = key.filter(|_| self.prob > 0.0) else { return x };
        simplegpt_shaders::dropout(x, rng::dropout_key(key.seed, key.batch, self.site), self.prob)
    }
}

/// What a training forward pass keys its dropout masks with: the run's seed and the index of
/// the batch (step * grad_accum + micro-step), so a resumed run redraws the same masks.
#[derive(Debug, Clone, Copy)]
pub struct DropoutKey {
    pub seed: u64,
    pub batch: u64,
}

/// Causal multi-head self-attention. `q_norm`/`k_norm` are QK-norm (pre_rms_qk, simple) over
/// the whole width before RoPE; `v_norm`/`o_norm` complete SimpleNorm's "norm after every
/// linear".
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
    pub attn_dropout: Dropout,
    pub resid_dropout: Dropout,
    pub n_head: usize,
    /// On the CPU, the causal softmax as one kernel each way (`simplegpt_shaders::causal_softmax`)
    /// rather than tensor ops (config key `fused`).
    pub fused: bool,
}

impl Attention {
    pub fn forward(&self, x: Tensor<3>, rope: Option<&RotaryEncoding>, key: Option<DropoutKey>) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let (nh, hs) = (self.n_head, c / self.n_head);
        // q, k, v: [B, T, C] -> [B, T, C], each through one [B*T, C] x [C, C] product.
        let q = norm_opt(&self.q_norm, linear(&self.q, x.clone()));
        let k = norm_opt(&self.k_norm, linear(&self.k, x.clone()));
        let v = norm_opt(&self.v_norm, linear(&self.v, x));
        // [B, T, C] -> [B, nh, T, hs]
        let heads = |y: Tensor<3>| y.reshape([b, t, nh, hs]).swap_dims(1, 2);
        let (mut q, mut k, v) = (heads(q), heads(k), heads(v));
        if let Some(rope) = rope {
            q = rope.forward(q);
            k = rope.forward(k);
        }
        // [B, nh, T, T]: each position attends to itself and the past only.
        let (att, scale) = (q.matmul(k.swap_dims(2, 3)), 1.0 / (hs as f64).sqrt());
        let att = if self.fused && att.device().inner() == Device::flex() {
            simplegpt_shaders::causal_softmax(att, scale)
        } else {
            let att = att * scale;
            let future = Tensor::<2, Bool>::tril_mask([t, t], 0, &att.device());
            activation::softmax(att.mask_fill(future.unsqueeze::<4>().expand([b, nh, t, t]), f32::NEG_INFINITY), 3)
        };
        let att = self.attn_dropout.forward(att, key);
        // [B, nh, T, T] x [B, nh, T, hs] -> [B, nh, T, hs] -> [B, T, C]: the heads side by side.
        let y = att.matmul(v).swap_dims(1, 2).reshape([b, t, c]);
        self.resid_dropout.forward(norm_opt(&self.o_norm, linear(&self.o, y)), key)
    }
}

/// The feed-forward sublayer: GELU (`fc -> gelu -> proj`) or SwiGLU
/// (`proj(silu(fc x) * gate x)`). Under SimpleNorm each linear's output is normalised,
/// the norm sitting before the activation as in the reference. GELU is burn's, computed on
/// all cores on the CPU (`simplegpt_shaders::gelu`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc: Linear,
    pub gate: Option<Linear>,
    pub proj: Linear,
    pub fc_norm: Option<Norm>,
    pub gate_norm: Option<Norm>,
    pub proj_norm: Option<Norm>,
    pub dropout: Dropout,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>, key: Option<DropoutKey>) -> Tensor<3> {
        // [B, T, C] -> [B, T, hidden] -> [B, T, C]
        let h = norm_opt(&self.fc_norm, linear(&self.fc, x.clone()));
        let h = match &self.gate {
            None => simplegpt_shaders::gelu(h),
            Some(gate) => activation::silu(h) * norm_opt(&self.gate_norm, linear(gate, x)),
        };
        self.dropout.forward(norm_opt(&self.proj_norm, linear(&self.proj, h)), key)
    }
}

/// One transformer block. `ln_1`/`ln_2` exist for the pre- and post-norm variants only.
#[derive(Module, Debug)]
pub struct Block {
    pub ln_1: Option<Norm>,
    pub attn: Attention,
    pub ln_2: Option<Norm>,
    pub mlp: Mlp,
    pub post_norm: bool,
    pub residual: bool,
}

impl Block {
    pub fn forward(&self, x: Tensor<3>, rope: Option<&RotaryEncoding>, key: Option<DropoutKey>) -> Tensor<3> {
        // Residual (`x + f(x)`) or not (`f(x)`), the blog's ablation.
        let add = |x: Tensor<3>, fx: Tensor<3>| if self.residual { x + fx } else { fx };
        if self.post_norm {
            // Post-LN (original Transformer): normalise after the residual add.
            let h = norm_opt(&self.ln_1, add(x.clone(), self.attn.forward(x, rope, key)));
            norm_opt(&self.ln_2, add(h.clone(), self.mlp.forward(h, key)))
        } else {
            // Pre-norm (GPT-2, LLaMA): normalise each sublayer's input. SimpleNorm and `none`
            // have no ln_1/ln_2, so this is also their block: x + attn(x), h + mlp(h).
            let h = add(x.clone(), self.attn.forward(norm_opt(&self.ln_1, x), rope, key));
            add(h.clone(), self.mlp.forward(norm_opt(&self.ln_2, h), key))
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
}

impl Gpt {
    /// idx [B, T] token ids -> logits [B, T, V], without dropout (evaluation, sampling).
    pub fn forward(&self, idx: Tensor<2, Int>) -> Tensor<3> {
        self.forward_train(idx, None, None)
    }

    /// As `forward`, with dropout keyed by `key` when given, and pushing the RMS of each
    /// block's output into `block_rms` (detached, one scalar tensor per block) when given.
    pub fn forward_train(
        &self,
        idx: Tensor<2, Int>,
        key: Option<DropoutKey>,
        mut block_rms: Option<&mut Vec<Tensor<1>>>,
    ) -> Tensor<3> {
        let [b, t] = idx.dims();
        let [v, c] = self.wte.val().dims();
        // [B, T] -> [B*T, C] by row selection (the embedding lookup), then [B, T, C].
        let mut x: Tensor<3> = self.wte.val().select(0, idx.reshape([b * t])).reshape([b, t, c]);
        if let Some(wpe) = &self.wpe {
            x = x + wpe.val().slice([0..t]).unsqueeze::<3>();
        }
        x = self.drop.forward(x, key);
        for block in &self.blocks {
            x = block.forward(x, self.rope.as_ref(), key);
            if let Some(rms) = block_rms.as_deref_mut() {
                rms.push(params::mean_all(x.clone().detach().square()).sqrt());
            }
        }
        let x = norm_opt(&self.ln_f, x);
        let head = match &self.lm_head {
            Some(w) => w.val(),
            None => self.wte.val().transpose(),
        };
        x.reshape([b * t, c]).matmul(head).reshape([b, t, v])
    }

    /// Mean cross-entropy of logits [B, T, V] against targets [B, T].
    pub fn loss(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
        let [b, t, v] = logits.dims();
        let logp = activation::log_softmax(logits.reshape([b * t, v]), 1);
        params::mean_all(logp.gather(1, targets.reshape([b * t, 1]))).neg()
    }
}

/// Draws each weight tensor from its own seeded stream, numbered in creation order.
struct Initializer<'a> {
    seed: u64,
    count: u64,
    bias: bool,
    device: &'a Device,
}

impl Initializer<'_> {
    fn normal(&mut self, shape: [usize; 2], std: f64, truncate: bool) -> Param<Tensor<2>> {
        self.count += 1;
        let data = Stream::new(self.seed, "init", self.count).normal_vec(shape[0] * shape[1], std, truncate);
        Param::from_data(TensorData::new(data, shape), self.device)
    }

    fn linear(&mut self, d_in: usize, d_out: usize, std: f64) -> Linear {
        Linear {
            weight: self.normal([d_in, d_out], std, false),
            bias: self.bias.then(|| Param::from_data(TensorData::new(vec![0.0f32; d_out], [d_out]), self.device)),
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
    /// biases 0) for every variant but `simple`, which uses the SimpleGPT reference's
    /// (embedding N(0, 1); q, k, v and the MLP's input linears 0.02; o and the MLP's output
    /// 0.02/sqrt(2 (layer+1)); head truncated normal with std C^-0.5).
    pub fn init(&self, seed: u64, device: &Device) -> Gpt {
        assert!(self.vocab_size > 0, "vocab_size is resolved from the data before init");
        let (c, v, hidden) = (self.n_embd, self.vocab_size, self.mlp_hidden());
        let simple = self.norm == NormKind::Simple;
        let mut init = Initializer { seed, count: 0, bias: self.bias, device };
        // The variant's own norm (LayerNorm or RMSNorm) over the width, where `on`.
        let norm = |on: bool| on.then(|| Norm::new(c, !self.norm.layer_norm(), self.bias, self.fused, device));
        // SimpleNorm's and QK-norm's RMSNorms have no bias, as the reference's.
        let rms_norm = |on: bool, d: usize| on.then(|| Norm::new(d, true, false, self.fused, device));
        let dropout = |site: usize| Dropout { prob: self.dropout, site: site as u64 };

        let wte_std = if !simple {
            0.02
        } else if self.tie_weights {
            // Tied under SimpleNorm: the matrix is also the head, so it takes the head's scale.
            (c as f64).powf(-0.5)
        } else {
            1.0
        };
        let wte = init.normal([v, c], wte_std, simple && self.tie_weights);
        let wpe = (self.pos == PosKind::Learned).then(|| init.normal([self.block_size, c], 0.02, false));
        let blocks = (0..self.n_layer)
            .map(|layer| {
                let out_std = if simple {
                    0.02 / (2.0 * (layer + 1) as f64).sqrt()
                } else {
                    0.02 / (2.0 * self.n_layer as f64).sqrt()
                };
                let swiglu = self.mlp == MlpKind::Swiglu;
                Block {
                    ln_1: norm(self.norm.block_norms()),
                    attn: Attention {
                        q: init.linear(c, c, 0.02),
                        k: init.linear(c, c, 0.02),
                        v: init.linear(c, c, 0.02),
                        o: init.linear(c, c, out_std),
                        q_norm: rms_norm(self.norm.qk_norm(), c),
                        k_norm: rms_norm(self.norm.qk_norm(), c),
                        v_norm: rms_norm(simple, c),
                        o_norm: rms_norm(simple, c),
                        attn_dropout: dropout(1 + 3 * layer),
                        resid_dropout: dropout(2 + 3 * layer),
                        n_head: self.n_head,
                        fused: self.fused,
                    },
                    ln_2: norm(self.norm.block_norms()),
                    mlp: Mlp {
                        fc: init.linear(c, hidden, 0.02),
                        gate: swiglu.then(|| init.linear(c, hidden, 0.02)),
                        proj: init.linear(hidden, c, out_std),
                        fc_norm: rms_norm(simple, hidden),
                        gate_norm: rms_norm(simple && swiglu, hidden),
                        proj_norm: rms_norm(simple, c),
                        dropout: dropout(3 + 3 * layer),
                    },
                    post_norm: self.norm == NormKind::PostLn,
                    residual: self.residual,
                }
            })
            .collect();
        let ln_f = norm(self.norm.final_norm());
        let lm_head = (!self.tie_weights).then(|| {
            let std = if simple { (c as f64).powf(-0.5) } else { 0.02 };
            init.normal([c, v], std, simple)
        });
        let rope = (self.pos == PosKind::Rope)
            .then(|| RotaryEncodingConfig::new(self.block_size, c / self.n_head).init(device));
        Gpt { wte, wpe, drop: dropout(0), blocks, ln_f, lm_head, rope }
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
        let attention = 4 * lin(c, c) + if self.norm.qk_norm() { 2 * c } else { 0 } + if simple { 2 * c } else { 0 };
        let mlp = n_fc * lin(c, h) + lin(h, c) + if simple { n_fc * h + c } else { 0 };
        let block = attention + mlp + 2 * norm(self.norm.block_norms());
        v * c
            + if self.pos == PosKind::Learned { self.block_size as u128 * c } else { 0 }
            + self.n_layer as u128 * block
            + norm(self.norm.final_norm())
            + if self.tie_weights { 0 } else { c * v }
    }
}
