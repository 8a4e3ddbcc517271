//! The model on the CPU: shapes of every variant, SimpleNorm's structure and its defining
//! property, and a finite-difference check of the gradients.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use simplegpt::Config;
use simplegpt::config::{MlpKind, NormKind, PosKind};
use simplegpt::model::{Gpt, Probes};
use simplegpt::optim::GradSum;
use simplegpt::params::{self, PathMapper};
use simplegpt::rng::Stream;

const NORMS: [NormKind; 6] =
    [NormKind::PreLn, NormKind::PreRms, NormKind::PreRmsQk, NormKind::PostLn, NormKind::Simple, NormKind::None];

fn small(norm: NormKind) -> Config {
    let mut c = Config::preset("tiny").unwrap();
    c.model.vocab_size = 11;
    c.model.block_size = 8;
    c.model.n_layer = 2;
    c.model.n_embd = 16;
    c.model.n_head = 2;
    c.model.norm = norm;
    c
}

fn tokens(b: usize, t: usize, vocab: usize, device: &Device) -> Tensor<2, Int> {
    pattern(b, t, vocab, 7, device)
}

fn pattern(b: usize, t: usize, vocab: usize, stride: usize, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i32> = (0..b * t).map(|i| ((i * stride + 3) % vocab) as i32).collect();
    Tensor::from_data(TensorData::new(ids, [b, t]), device)
}

fn values(t: Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

#[test]
fn every_variant_gives_logits_of_the_right_shape_and_param_count() {
    let device = Device::flex();
    for norm in NORMS {
        for residual in [true, false] {
            for mlp in [MlpKind::Gelu, MlpKind::Swiglu] {
                for pos in [PosKind::Learned, PosKind::Rope] {
                    for (bias, tie) in [(false, true), (true, false)] {
                        let mut c = small(norm);
                        c.model.residual = residual;
                        c.model.mlp = mlp;
                        c.model.pos = pos;
                        c.model.bias = bias;
                        c.model.tie_weights = tie;
                        let model = c.model.init(1, &device);
                        let logits = model.forward(tokens(3, 5, 11, &device));
                        assert_eq!(logits.dims(), [3, 5, 11], "{:?}", c.model);
                        assert!(values(logits).iter().all(|v| v.is_finite()), "{:?}", c.model);
                        assert_eq!(model.num_params(), c.model.num_params(), "{:?}", c.model);
                    }
                }
            }
        }
    }
}

#[test]
fn simplenorm_puts_a_norm_after_every_linear_and_no_pre_norm() {
    let device = Device::flex();
    for mlp in [MlpKind::Gelu, MlpKind::Swiglu] {
        let mut c = small(NormKind::Simple);
        c.model.mlp = mlp;
        let model = c.model.init(1, &device);
        for block in &model.blocks {
            assert!(block.ln_1.is_none() && block.ln_2.is_none(), "no pre-norm on the block input");
            let a = &block.attn;
            for n in [&a.q_norm, &a.k_norm, &a.v_norm, &a.o_norm] {
                assert!(n.as_ref().is_some_and(|n| n.rms), "q, k, v and o are each followed by an RMSNorm");
            }
            let m = &block.mlp;
            assert!(m.fc_norm.is_some() && m.proj_norm.is_some());
            assert_eq!(m.gate.is_some(), m.gate_norm.is_some());
        }
        assert!(model.ln_f.as_ref().is_some_and(|n| n.rms), "a final RMSNorm before the head");
    }
    let pre = small(NormKind::PreLn).model.init(1, &device);
    assert!(pre.blocks[0].ln_1.is_some() && pre.blocks[0].attn.v_norm.is_none());
}

/// Multiplies every linear weight inside the blocks by `factor`.
struct ScaleLinears(f64, Vec<String>);
impl ModuleMapper for ScaleLinears {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.1.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.1.pop();
    }
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if D == 2 && self.1.first().is_some_and(|s| s == "blocks") { p.map(|t| t * self.0) } else { p }
    }
}

#[test]
fn simplenorm_output_does_not_depend_on_the_scale_of_the_linear_weights() {
    // Norm(a W x) = Norm(W x) for a > 0: the property that gives SimpleGPT its stable
    // activations. Compared at x10 and x100 so that RMSNorm's eps (1e-5, negligible next to
    // the mean square of either) does not blur it. Pre-LN has no such invariance.
    let device = Device::flex();
    let x = || tokens(2, 8, 11, &device);
    let diff = |norm| {
        let model: Gpt = small(norm).model.init(3, &device);
        let a = values(model.clone().map(&mut ScaleLinears(10.0, Vec::new())).forward(x()));
        let b = values(model.map(&mut ScaleLinears(100.0, Vec::new())).forward(x()));
        // Relative to the largest logit, so that the bound does not depend on their size.
        let largest = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / largest
    };
    assert!(diff(NormKind::Simple) < 1e-3, "simple: {}", diff(NormKind::Simple));
    assert!(diff(NormKind::PreLn) > 1e-2, "pre_ln: {}", diff(NormKind::PreLn));
}

/// Replaces every weight with a random one: matrices N(0, std^2), norm gains 1 + N(0, std^2),
/// biases N(0, std^2).
struct Randomize(f64);
impl PathMapper for Randomize {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let t = param.val();
        let (shape, device) = (t.shape(), t.device());
        let gain = if D == 1 && path.ends_with(".weight") { 1.0 } else { 0.0 };
        let values: Vec<f32> = Stream::new(7, path, 0)
            .normal_vec(shape.num_elements(), self.0, false)
            .into_iter()
            .map(|v| v + gain)
            .collect();
        params::replaced(param, Tensor::from_data(TensorData::new(values, shape), &device))
    }
}

/// Moves one entry (row-major) of the parameter at `path` by `delta`.
struct Nudge<'a> {
    path: &'a str,
    index: usize,
    delta: f32,
}

impl PathMapper for Nudge<'_> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if path != self.path {
            return param;
        }
        let t = param.val();
        let (shape, device) = (t.shape(), t.device());
        let mut v: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().unwrap();
        v[self.index] += self.delta;
        params::replaced(param, Tensor::from_data(TensorData::new(v, shape), &device))
    }
}

#[test]
fn gradients_match_finite_differences() {
    let device = Device::flex().autodiff();
    let plain = device.clone().inner();
    // Every parameter kind: tied and untied heads, biases, LayerNorm and RMSNorm gains,
    // QK-norm, SimpleNorm's norms, GELU and SwiGLU MLPs, learned positions and RoPE.
    let mut cases = Vec::new();
    for (norm, mlp, pos, bias, tie) in [
        (NormKind::PreLn, MlpKind::Gelu, PosKind::Learned, true, true),
        (NormKind::Simple, MlpKind::Swiglu, PosKind::Learned, false, false),
        (NormKind::PostLn, MlpKind::Gelu, PosKind::Rope, false, true),
        (NormKind::PreRmsQk, MlpKind::Swiglu, PosKind::Rope, false, false),
    ] {
        let mut c = small(norm);
        (c.model.mlp, c.model.pos, c.model.bias, c.model.tie_weights) = (mlp, pos, bias, tie);
        cases.push(c);
    }
    for c in cases {
        let what = format!(
            "{:?} {:?} {:?} bias {} tied {}",
            c.model.norm, c.model.mlp, c.model.pos, c.model.bias, c.model.tie_weights
        );
        // Not at init: there most weights are ~0.02, attention is almost uniform, and many
        // gradients are ~1e-5, at the resolution of differences of an f32 loss (its ulp / 2h).
        // At random weights of std 0.3 every gradient is measurable.
        let model = params::map(c.model.init(5, &device), &mut Randomize(0.3));
        let (x, y) = (tokens(2, 8, 11, &device), pattern(2, 8, 11, 5, &device));
        let (x_plain, y_plain) = (tokens(2, 8, 11, &plain), pattern(2, 8, 11, 5, &plain));
        let mut grads = GradSum::default();
        grads.add(&model, &Gpt::loss(model.forward(x), y).backward());
        let named: std::collections::BTreeSet<String> = params::named(&model).into_iter().map(|(p, _, _)| p).collect();
        assert!(grads.by_path.keys().eq(named.iter()), "{what}: a gradient for every parameter of {named:?}");
        let loss_with = |path: &str, index: usize, delta: f32| {
            let m = params::map(model.valid(), &mut Nudge { path, index, delta });
            let l = Gpt::loss(m.forward(x_plain.clone()), y_plain.clone());
            l.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[0] as f64
        };
        let values = |path: &str| -> Vec<f32> {
            grads.by_path[path].clone().into_data().convert::<f32>().try_into_vec().unwrap()
        };
        for path in grads.by_path.keys() {
            let g = values(path);
            // The two entries of largest gradient: far from 0 (~100 times the resolution), so
            // that a gradient that is wrongly zero everywhere fails.
            let mut order: Vec<usize> = (0..g.len()).collect();
            order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
            if path.ends_with("attn.k.bias") {
                // With learned positions and no QK-norm (the only case with biases here),
                // q.(k + b) - q.k is the same for every key of a query, and softmax ignores
                // a shift shared by all its inputs: the key bias gets no gradient. In floats
                // it gets the rounding residue of sums as large as the key weights' gradient
                // (how large depends on the CPU's kernels), so it is bounded relative to that.
                let k_weight = values(&path.replace("k.bias", "k.weight"));
                let scale = k_weight.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(
                    g[order[0]].abs() <= 1e-5 * scale,
                    "{what} {path}: largest |gradient| {}, against {scale} for the key weights",
                    g[order[0]]
                );
                continue;
            }
            assert!(g[order[0]].abs() > 5e-3, "{what} {path}: largest |gradient| {}", g[order[0]]);
            for &i in order.iter().take(2) {
                let h = 1e-2f32;
                let numeric = (loss_with(path, i, h) - loss_with(path, i, -h)) / (2.0 * h as f64);
                let analytic = g[i] as f64;
                assert!(
                    (numeric - analytic).abs() <= 0.01 * analytic.abs() + 1e-5,
                    "{what} {path} entry {i}: analytic {analytic}, finite difference {numeric}"
                );
            }
        }
    }
}

/// Multiplies the one parameter at `path` by a factor.
struct ScaleOne(&'static str, f64);
impl PathMapper for ScaleOne {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if path == self.0 { param.map(|t| t * self.1) } else { param }
    }
}

#[test]
fn the_diagnostics_measure_each_linears_output_and_each_layers_largest_attention_logit() {
    let device = Device::flex();
    let scalar = |t: Tensor<1>| t.into_data().convert::<f64>().try_into_vec::<f64>().unwrap()[0];
    // (logits, max attention logit per layer, linear RMS by path).
    let probe = |model: &Gpt| {
        let mut probes = Probes::default();
        let logits = model.forward_train(tokens(2, 8, 11, &device), None, Some(&mut probes));
        assert_eq!(probes.block_rms.len(), 2);
        let rms: Vec<(String, f64)> = probes.linear_rms.into_iter().map(|(p, r)| (p, scalar(r))).collect();
        (values(logits), probes.attn_logit_max.into_iter().map(scalar).collect::<Vec<_>>(), rms)
    };
    let rms_of = |rms: &[(String, f64)], path: &str| rms.iter().find(|(p, _)| p == path).unwrap().1;
    let close = |a: f64, b: f64, rel: f64| (a - b).abs() <= rel * b.abs();

    let pre = small(NormKind::PreLn).model.init(1, &device);
    let (logits, max_logit, rms) = probe(&pre);
    let paths: Vec<&str> = rms.iter().map(|(p, _)| p.as_str()).collect();
    let per_block = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj"];
    let want: Vec<String> =
        (0..2).flat_map(|l| per_block.map(|n| format!("blocks.{l}.{n}"))).chain(["lm_head".to_string()]).collect();
    assert_eq!(paths, want);
    assert_eq!(max_logit.len(), 2);
    // The head's output is the logits themselves.
    let logits_rms = (logits.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / logits.len() as f64).sqrt();
    assert!(close(rms_of(&rms, "lm_head"), logits_rms, 1e-5), "{} vs {logits_rms}", rms_of(&rms, "lm_head"));

    // Three times layer 0's W_q: its output's RMS triples, and with it every attention logit
    // of layer 0 (q.k), so their largest; k is untouched.
    let (_, max3, rms3) = probe(&params::map(pre, &mut ScaleOne("blocks.0.attn.q.weight", 3.0)));
    assert!(close(rms_of(&rms3, "blocks.0.attn.q"), 3.0 * rms_of(&rms, "blocks.0.attn.q"), 1e-5));
    assert!(close(rms_of(&rms3, "blocks.0.attn.k"), rms_of(&rms, "blocks.0.attn.k"), 1e-6));
    assert!(max_logit[0] > 0.0 && close(max3[0], 3.0 * max_logit[0], 1e-4), "{max3:?} vs {max_logit:?}");

    // Under QK-norm q is normalised before the product: the logits barely move (RMSNorm's
    // eps only), though q's own output triples as before.
    let qk = small(NormKind::PreRmsQk).model.init(1, &device);
    let (_, max_logit, rms) = probe(&qk);
    let (_, max3, rms3) = probe(&params::map(qk, &mut ScaleOne("blocks.0.attn.q.weight", 3.0)));
    assert!(close(rms_of(&rms3, "blocks.0.attn.q"), 3.0 * rms_of(&rms, "blocks.0.attn.q"), 1e-5));
    assert!(close(max3[0], max_logit[0], 1e-2), "{max3:?} vs {max_logit:?}");
}
