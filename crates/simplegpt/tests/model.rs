//! The model on the CPU: shapes of every variant, each norm placement's structure and its
//! defining property, DeepNorm's init and scaled residual, the z-loss and the logit soft cap,
//! our fused ops against burn's tensor ops, and a finite-difference check of the gradients.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use simplegpt::Config;
use simplegpt::config::{MlpKind, NormKind, PosKind};
use simplegpt::model::{DropoutKey, Gpt, Probes};
use simplegpt::optim::GradSum;
use simplegpt::params::{self, PathMapper};
use simplegpt::rng::Stream;

fn small(norm: NormKind) -> Config {
    let mut c = Config::preset("tiny").unwrap();
    c.model.vocab_size = 11;
    c.model.block_size = 8;
    c.model.n_layer = 2;
    c.model.n_embd = 16;
    c.model.n_head = 2;
    c.model.norm = norm;
    // Of two blocks, Mix-LN's default quarter would make none post-LN: here one of each.
    c.model.mix_ln_fraction = 0.5;
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
    for norm in NormKind::ALL {
        for residual in [true, false] {
            for mlp in [MlpKind::Gelu, MlpKind::Swiglu] {
                for pos in [PosKind::Learned, PosKind::Rope] {
                    for (bias, tie, qk_norm) in [(false, true, false), (true, false, true), (false, false, false)] {
                        let mut c = small(norm);
                        c.model.residual = residual;
                        c.model.mlp = mlp;
                        c.model.pos = pos;
                        c.model.bias = bias;
                        c.model.tie_weights = tie;
                        c.model.qk_norm = qk_norm;
                        if c.validate().is_err() {
                            continue; // nGPT is defined with SwiGLU, RoPE, an untied head, no biases only
                        }
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

/// Whether a norm is there, and which: `Some(true)` an RMSNorm, `Some(false)` a LayerNorm.
fn kind(norm: &Option<simplegpt::model::Norm>) -> Option<bool> {
    norm.as_ref().map(|n| n.rms)
}

#[test]
fn each_placement_has_its_norms_where_its_paper_puts_them() {
    let device = Device::flex();
    let (rms, ln) = (Some(true), Some(false));
    let model = |norm, n_layer: usize| {
        let mut c = small(norm);
        (c.model.n_layer, c.model.mix_ln_fraction) = (n_layer, 0.25);
        c.model.init(1, &device)
    };
    // Per block: ln_1, ln_2, the output norms, QK-norm, post-norm; then the final norm.
    let norms = |b: &simplegpt::model::Block| {
        (
            kind(&b.ln_1),
            kind(&b.ln_2),
            kind(&b.attn_out_norm),
            kind(&b.mlp_out_norm),
            kind(&b.attn.q_norm).zip(kind(&b.attn.k_norm)),
            b.post_norm,
        )
    };
    // Peri-LN: RMSNorm around each sublayer, on its input and on its output.
    let peri = model(NormKind::PeriLn, 2);
    for b in &peri.blocks {
        assert_eq!(norms(b), (rms, rms, rms, rms, None, false), "peri_ln");
    }
    assert_eq!(kind(&peri.ln_f), rms);
    // OLMo 2: RMSNorm on each sublayer's output only, and QK-norm.
    let olmo = model(NormKind::Olmo2, 2);
    for b in &olmo.blocks {
        assert_eq!(norms(b), (None, None, rms, rms, Some((true, true)), false), "olmo2");
        assert!(b.attn.v_norm.is_none() && b.mlp.fc_norm.is_none(), "no SimpleNorm inside the sublayers");
    }
    assert_eq!(kind(&olmo.ln_f), rms);
    // Mix-LN: LayerNorm, post-LN in the first floor(L / 4) blocks, pre-LN in the rest.
    for (layers, post) in [(4, 1), (8, 2), (3, 0)] {
        let mix = model(NormKind::MixLn, layers);
        let posts: Vec<bool> = mix.blocks.iter().map(|b| b.post_norm).collect();
        assert_eq!(posts, (0..layers).map(|l| l < post).collect::<Vec<_>>(), "mix_ln, {layers} layers");
        for b in &mix.blocks {
            assert_eq!(norms(b), (ln, ln, None, None, None, b.post_norm), "mix_ln's norms are LayerNorms");
        }
        assert_eq!(kind(&mix.ln_f), ln, "its last blocks are pre-LN: a final norm");
    }
    // DeepNorm: post-LN (LayerNorm) everywhere, the last block's norm feeding the head.
    let deep = model(NormKind::DeepNorm, 3);
    for b in &deep.blocks {
        assert_eq!(norms(b), (ln, ln, None, None, None, true), "deepnorm");
        assert_eq!(b.residual_scale, 6f64.powf(0.25), "alpha = (2 L)^(1/4)");
    }
    assert!(deep.ln_f.is_none());
    // The QK-norm switch on a placement without it: RMSNorm on q and k, nothing else moves.
    let mut c = small(NormKind::PreLn);
    c.model.qk_norm = true;
    let pre_qk = c.model.init(1, &device);
    assert_eq!(norms(&pre_qk.blocks[0]), (ln, ln, None, None, Some((true, true)), false));
    assert_eq!(small(NormKind::PreLn).model.init(1, &device).blocks[0].residual_scale, 1.0);
}

/// The length of each vector of the matrix `t` [rows, cols] along dimension `dim`.
fn lengths(t: Tensor<1>, shape: &[usize], dim: usize) -> Vec<f64> {
    let v: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().unwrap();
    let (rows, cols) = (shape[0], shape[1]);
    let at = |r: usize, k: usize| v[r * cols + k] as f64;
    match dim {
        0 => (0..cols).map(|k| (0..rows).map(|r| at(r, k).powi(2)).sum::<f64>().sqrt()).collect(),
        _ => (0..rows).map(|r| (0..cols).map(|k| at(r, k).powi(2)).sum::<f64>().sqrt()).collect(),
    }
}

/// nGPT's config for these tests: the parts it is defined with.
fn ngpt() -> Config {
    let mut c = small(NormKind::Ngpt);
    (c.model.mlp, c.model.pos, c.model.tie_weights) = (MlpKind::Swiglu, PosKind::Rope, false);
    c
}

#[test]
fn ngpt_has_no_norm_layers_its_learned_scales_and_unit_vectors_everywhere() {
    let device = Device::flex();
    let model = ngpt().model.init(1, &device);
    let c = 16f64;
    let value = |s: &Option<simplegpt::model::Scale>| {
        let s = s.as_ref().expect("nGPT has this scale");
        let v: Vec<f32> = (s.weight.val() * s.factor).into_data().convert::<f32>().try_into_vec().unwrap();
        assert!(v.iter().all(|x| *x == v[0]), "one value at init");
        v[0] as f64
    };
    assert!(model.ln_f.is_none());
    assert!((value(&model.logit_scale) - 1.0).abs() < 1e-6, "s_z starts at 1");
    for b in &model.blocks {
        let no_norms = [&b.ln_1, &b.ln_2, &b.attn_out_norm, &b.mlp_out_norm, &b.attn.q_norm, &b.attn.v_norm];
        assert!(no_norms.iter().all(|n| n.is_none()), "no norm layers");
        assert!((value(&b.attn_alpha) - 0.05).abs() < 1e-6 && (value(&b.mlp_alpha) - 0.05).abs() < 1e-6);
        assert!((value(&b.attn.qk_scale) - 1.0).abs() < 1e-6, "s_qk starts at 1");
        assert!((value(&b.mlp.gate_scale) - 1.0).abs() < 1e-6, "s_u starts at 1");
        assert!((value(&b.mlp.fc_scale) - c.sqrt()).abs() < 1e-5, "s_nu sqrt(C) starts at sqrt(C)");
        // Stored at the paper's scales: alpha and s_qk at C^-1/2, s_u and s_nu at 1.
        let stored = |s: &Option<simplegpt::model::Scale>| {
            s.as_ref().unwrap().weight.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[0] as f64
        };
        assert!((stored(&b.attn_alpha) - c.powf(-0.5)).abs() < 1e-6 && (stored(&b.mlp.fc_scale) - 1.0).abs() < 1e-6);
    }
    // Every matrix's vectors along the width are unit (stored [in, out]; the embedding [V, C]).
    for (path, t, shape) in params::named(&model) {
        if shape.len() != 2 {
            continue;
        }
        let writes_width = path == "wte" || path.ends_with("attn.o.weight") || path.ends_with("mlp.proj.weight");
        let dim = if writes_width { 1 } else { 0 };
        let l = lengths(t, &shape, dim);
        assert!(l.iter().all(|l| (l - 1.0).abs() < 1e-5), "{path}: lengths {l:?}");
    }
    // And the state leaving every block is on the unit sphere: RMS C^-1/2.
    let mut probes = Probes::default();
    model.forward_train(tokens(2, 8, 11, &device), None, Some(&mut probes));
    assert_eq!(probes.block_rms.len(), model.blocks.len());
    for r in probes.block_rms {
        let r = r.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[0] as f64;
        assert!((r - c.powf(-0.5)).abs() < 1e-5, "block output RMS {r}");
    }
}

#[test]
fn pre_rms_qk_is_pre_rms_with_the_qk_norm_switch_on() {
    let device = Device::flex();
    let mut switched = small(NormKind::PreRms);
    switched.model.qk_norm = true;
    let named = small(NormKind::PreRmsQk).model.init(4, &device);
    let switched = switched.model.init(4, &device);
    let paths = |m: &Gpt| params::named(m).into_iter().map(|(p, _, _)| p).collect::<Vec<_>>();
    assert_eq!(paths(&named), paths(&switched));
    let x = || tokens(2, 8, 11, &device);
    assert_eq!(values(named.forward(x())), values(switched.forward(x())), "the same weights and logits");
}

/// The mean and variance of each position's channels of `x` [B, T, C].
fn position_moments(x: Tensor<3>) -> Vec<(f64, f64)> {
    let c = x.dims()[2];
    let v = values(x);
    v.chunks(c)
        .map(|row| {
            let mean = row.iter().map(|&a| a as f64).sum::<f64>() / c as f64;
            (mean, row.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / c as f64)
        })
        .collect()
}

#[test]
fn post_ln_blocks_end_normalised_and_deepnorm_scales_the_residual_by_alpha() {
    let device = Device::flex();
    // A block's input: an embedded batch, scaled up so that a norm's effect is plain.
    let input = |model: &Gpt| {
        let [_, c] = model.wte.val().dims();
        model.wte.val().select(0, tokens(1, 8, 11, &device).reshape([8])).reshape([1, 8, c]) * 30.0
    };
    // A post-LN block's output is a LayerNorm's (gains 1, no bias): each position has mean 0
    // and variance 1 (less LayerNorm's eps); a pre-LN block's is the residual stream.
    let normalised = |x: Tensor<3>| position_moments(x).iter().all(|(m, v)| m.abs() < 1e-4 && (v - 1.0).abs() < 1e-3);
    let mut c = small(NormKind::MixLn);
    (c.model.n_layer, c.model.mix_ln_fraction) = (4, 0.25);
    let mix = c.model.init(1, &device);
    let x = input(&mix);
    let blocks: Vec<bool> = mix.blocks.iter().map(|b| normalised(b.forward(x.clone(), None, None, None))).collect();
    assert_eq!(blocks, [true, false, false, false], "mix_ln: only the first quarter is post-LN");

    // DeepNorm: norm(alpha x + f(x)) with alpha = (2 L)^(1/4), from the block's own parts; at
    // random weights, where f(x) is as large as x (at init it is small beside x, and the
    // LayerNorm would hide how x is scaled).
    let mut c = small(NormKind::DeepNorm);
    c.model.n_layer = 4;
    let deep = params::map(c.model.init(1, &device), &mut Randomize(0.3));
    let alpha = 8f64.powf(0.25);
    let b = &deep.blocks[0];
    let x = input(&deep);
    let h = b.ln_1.as_ref().unwrap().forward(x.clone() * alpha + b.attn.forward(x.clone(), None, None, None));
    let expected = b.ln_2.as_ref().unwrap().forward(h.clone() * alpha + b.mlp.forward(h, None, None));
    let out = b.forward(x.clone(), None, None, None);
    assert_eq!(b.residual_scale, alpha);
    let largest = values(out.clone()).iter().zip(values(expected)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(largest < 1e-5, "deepnorm block vs norm(alpha x + f(x)): {largest}");
    // And alpha matters: with it at 1 the block gives another output.
    let h1 = b.ln_1.as_ref().unwrap().forward(x.clone() + b.attn.forward(x, None, None, None));
    let alpha_one = b.ln_2.as_ref().unwrap().forward(h1.clone() + b.mlp.forward(h1, None, None));
    let moved = values(out).iter().zip(values(alpha_one)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-2, "{moved}");
}

/// The standard deviation of the entries of the parameter at `path`.
fn std_of(model: &Gpt, path: &str) -> f64 {
    let (_, t, _) = params::named(model).into_iter().find(|(p, _, _)| p == path).unwrap_or_else(|| panic!("{path}"));
    let v: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().unwrap();
    let mean = v.iter().map(|&a| a as f64).sum::<f64>() / v.len() as f64;
    (v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn deepnorm_and_olmo2_draw_the_weights_at_their_papers_scales() {
    let device = Device::flex();
    let config = |norm, mlp| {
        let mut c = small(norm);
        (c.model.n_layer, c.model.n_embd, c.model.n_head, c.model.mlp) = (6, 128, 4, mlp);
        c.model
    };
    // Each std is measured over >= 16384 draws, within 2% of its value (~4 standard errors).
    let close = |measured: f64, expected: f64, what: &str| {
        assert!((measured / expected - 1.0).abs() < 0.02, "{what}: std {measured}, expected {expected}");
    };
    let beta = 48f64.powf(-0.25); // (8 L)^(-1/4), L = 6
    let deep = config(NormKind::DeepNorm, MlpKind::Swiglu).init(1, &device);
    for layer in [0, 5] {
        let p = |name: &str| format!("blocks.{layer}.{name}.weight");
        close(std_of(&deep, &p("attn.q")), 0.02, "deepnorm q");
        close(std_of(&deep, &p("attn.k")), 0.02, "deepnorm k");
        for name in ["attn.v", "attn.o", "mlp.fc", "mlp.gate", "mlp.proj"] {
            close(std_of(&deep, &p(name)), 0.02 * beta, &format!("deepnorm {name}: 0.02 beta"));
        }
    }
    // OLMo 2: every weight N(0, 0.02), the output projections too; pre-LN scales those down.
    let olmo = config(NormKind::Olmo2, MlpKind::Gelu).init(1, &device);
    let pre = config(NormKind::PreLn, MlpKind::Gelu).init(1, &device);
    for name in ["wte", "blocks.3.attn.v.weight", "blocks.3.attn.o.weight", "blocks.3.mlp.proj.weight"] {
        close(std_of(&olmo, name), 0.02, &format!("olmo2 {name}"));
    }
    close(std_of(&pre, "blocks.3.attn.o.weight"), 0.02 / 12f64.sqrt(), "pre_ln o: 0.02 / sqrt(2 L)");
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

/// Multiplies the parameters whose paths end in one of `.0` by `.1`.
struct ScaleParams(&'static [&'static str], f32);
impl PathMapper for ScaleParams {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.0.iter().any(|end| path.ends_with(end)) {
            let t = param.val().inner();
            params::replaced(param, Tensor::from_inner(t * self.1))
        } else {
            param
        }
    }
}

/// The output projections of both sublayers.
const OUTPUTS: &[&str] = &["attn.o.weight", "mlp.proj.weight"];

#[test]
fn a_norm_on_a_sublayers_output_makes_the_model_blind_to_the_scale_of_its_last_linear() {
    // Peri-LN and OLMo 2 add norm(W y) to the residual: scaling W by a > 0 changes nothing.
    // Pre-norm adds W y itself, so it changes. At random weights of std 0.3, where W y is of
    // order 1: at init it can be so small that RMSNorm's eps (1e-5) outweighs its mean square,
    // and the norm is then nearly linear.
    let device = Device::flex();
    let x = || tokens(2, 8, 11, &device);
    let diff = |norm| {
        let model: Gpt = params::map(small(norm).model.init(3, &device), &mut Randomize(0.3));
        let a = values(params::map(model.clone(), &mut ScaleParams(OUTPUTS, 10.0)).forward(x()));
        let b = values(params::map(model, &mut ScaleParams(OUTPUTS, 100.0)).forward(x()));
        let largest = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / largest
    };
    for norm in [NormKind::PeriLn, NormKind::Olmo2] {
        assert!(diff(norm) < 1e-3, "{norm}: {}", diff(norm));
    }
    for norm in [NormKind::PreLn, NormKind::PreRms, NormKind::MixLn] {
        assert!(diff(norm) > 1e-2, "{norm}: {}", diff(norm));
    }
}

#[test]
fn the_soft_cap_bounds_the_logits_smoothly_and_the_z_loss_is_the_mean_square_of_log_z() {
    let device = Device::flex();
    let mut c = small(NormKind::PreLn);
    c.model.tie_weights = false;
    // At random weights of std 0.3 the logits reach a few units, where a cap of 1 bends them.
    let model = params::map(c.model.init(2, &device), &mut Randomize(0.3));
    let raw = values(model.forward(tokens(2, 8, 11, &device)));
    let mut capped = model.clone();
    capped.logit_softcap = 1.0;
    let logits = capped.forward(tokens(2, 8, 11, &device));
    let got = values(logits.clone());
    assert!(raw.iter().any(|v| v.abs() > 2.0), "some logits well past the cap: {raw:?}");
    for (r, g) in raw.iter().zip(&got) {
        let expected = (*r as f64).tanh();
        assert!((expected - *g as f64).abs() < 1e-6 && g.abs() < 1.0, "{r} capped to {g}, want {expected}");
    }
    // log Z per position, in f64 from the logits, against the library's mean of its square.
    let v = 11;
    let by_hand = got
        .chunks(v)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a)) as f64;
            (max + row.iter().map(|&a| (a as f64 - max).exp()).sum::<f64>().ln()).powi(2)
        })
        .sum::<f64>()
        / (got.len() / v) as f64;
    let z = Gpt::z_loss(logits.clone()).into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[0] as f64;
    assert!((z - by_hand).abs() < 1e-5 * by_hand, "z_loss {z}, by hand {by_hand}");
    // The objective is the cross-entropy plus the coefficient times it; at 0 it is the cross-entropy.
    let y = || pattern(2, 8, 11, 5, &device);
    let scalar = |t: Tensor<1>| t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[0] as f64;
    let ce = scalar(capped.loss(logits.clone(), y()));
    assert!((scalar(capped.objective(logits.clone(), y(), 1e-2)) - (ce + 1e-2 * z)).abs() < 1e-5);
    assert_eq!(scalar(capped.objective(logits, y(), 0.0)), ce);
}

/// Replaces every weight with a random one: matrices N(0, std^2), biases N(0, std^2), norm
/// gains (and nGPT's scales) their init times 1 + N(0, std^2), so that each stays near its
/// own size (1 for a gain, 0.05 for nGPT's alpha).
struct Randomize(f64);
impl PathMapper for Randomize {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let t = param.val();
        let (shape, device) = (t.shape(), t.device());
        let noise = Stream::new(7, path, 0).normal_vec(shape.num_elements(), self.0, false);
        let values: Vec<f32> = if D == 1 && path.ends_with(".weight") {
            let init: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().unwrap();
            init.iter().zip(noise).map(|(w, n)| w * (1.0 + n)).collect()
        } else {
            noise
        };
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
fn fused_and_unfused_ops_give_the_same_objective_and_gradients_up_to_rounding() {
    // `fused = false` (burn's tensor ops for the norms, the attention, GELU and the
    // cross-entropy) against our kernels, on the CPU, at the same random weights: with
    // dropout (the attention's inside its op) and with RoPE.
    let device = Device::flex().autodiff();
    for (norm, pos) in
        [(NormKind::PreLn, PosKind::Learned), (NormKind::Simple, PosKind::Learned), (NormKind::PreLn, PosKind::Rope)]
    {
        let mut c = small(norm);
        c.train.z_loss = 0.05;
        c.model.pos = pos;
        c.model.dropout = 0.3;
        let run = |fused: bool| {
            let mut c = c.clone();
            c.model.fused = fused;
            let model = params::map(c.model.init(5, &device), &mut Randomize(0.3));
            let (x, y) = (tokens(2, 8, 11, &device), pattern(2, 8, 11, 5, &device));
            let key = DropoutKey { seed: 3, batch: 1 };
            let objective = model.objective(model.forward_train(x, Some(key), None), y, c.train.z_loss);
            let mut grads = GradSum::default();
            grads.add(&model, &objective.clone().backward());
            let grads: std::collections::BTreeMap<String, Vec<f32>> = grads
                .by_path
                .into_iter()
                .map(|(path, g)| (path, g.into_data().convert::<f32>().try_into_vec().unwrap()))
                .collect();
            (objective.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[0], grads)
        };
        let ((fused, fused_grads), (ops, ops_grads)) = (run(true), run(false));
        assert!(
            (fused - ops).abs() < 1e-5 * ops.abs(),
            "{norm:?} {pos:?}: objective {fused} fused, {ops} as tensor ops"
        );
        assert!(fused_grads.keys().eq(ops_grads.keys()), "{norm:?} {pos:?}: the same parameters get gradients");
        for (path, g) in &fused_grads {
            let want = &ops_grads[path];
            let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let diff = g.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-4 * scale, "{norm:?} {pos:?} {path}: gradients differ by {diff} (largest {scale})");
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let device = Device::flex().autodiff();
    let plain = device.clone().inner();
    // Every parameter kind: tied and untied heads, biases, LayerNorm and RMSNorm gains,
    // QK-norm (its own switch too), SimpleNorm's norms, the output norms of Peri-LN and
    // OLMo 2, Mix-LN's post- and pre-LN blocks, DeepNorm's scaled residual, GELU and SwiGLU
    // MLPs, learned positions and RoPE; and the logit soft cap and the z-loss.
    let mut cases = Vec::new();
    for (norm, mlp, pos, bias, tie) in [
        (NormKind::PreLn, MlpKind::Gelu, PosKind::Learned, true, true),
        (NormKind::Simple, MlpKind::Swiglu, PosKind::Learned, false, false),
        (NormKind::PostLn, MlpKind::Gelu, PosKind::Rope, false, true),
        (NormKind::PreRmsQk, MlpKind::Swiglu, PosKind::Rope, false, false),
        (NormKind::PeriLn, MlpKind::Gelu, PosKind::Learned, false, true),
        (NormKind::MixLn, MlpKind::Swiglu, PosKind::Learned, true, false),
        (NormKind::Olmo2, MlpKind::Swiglu, PosKind::Rope, false, false),
        (NormKind::DeepNorm, MlpKind::Gelu, PosKind::Learned, false, true),
    ] {
        let mut c = small(norm);
        (c.model.mlp, c.model.pos, c.model.bias, c.model.tie_weights) = (mlp, pos, bias, tie);
        cases.push(c);
    }
    cases.push(ngpt());
    let mut qk_capped = small(NormKind::PreRms);
    (qk_capped.model.qk_norm, qk_capped.model.logit_softcap, qk_capped.train.z_loss) = (true, 3.0, 0.05);
    cases.push(qk_capped);
    for c in cases {
        let what = format!(
            "{:?} {:?} {:?} bias {} tied {} qk_norm {} softcap {} z_loss {}",
            c.model.norm,
            c.model.mlp,
            c.model.pos,
            c.model.bias,
            c.model.tie_weights,
            c.model.qk_norm,
            c.model.logit_softcap,
            c.train.z_loss
        );
        let z_loss = c.train.z_loss;
        // Not at init: there most weights are ~0.02, attention is almost uniform, and many
        // gradients are ~1e-5, at the resolution of differences of an f32 loss (its ulp / 2h).
        // At random weights of std 0.3 every gradient is measurable.
        let model = params::map(c.model.init(5, &device), &mut Randomize(0.3));
        // nGPT's steps alpha start at 0.05, which leaves its blocks' gradients ~1e-3: at 0.5
        // each sublayer moves the state by half its way, and they are measurable.
        let model = params::map(model, &mut ScaleParams(&["attn_alpha.weight", "mlp_alpha.weight"], 10.0));
        let (x, y) = (tokens(2, 8, 11, &device), pattern(2, 8, 11, 5, &device));
        let (x_plain, y_plain) = (tokens(2, 8, 11, &plain), pattern(2, 8, 11, 5, &plain));
        let mut grads = GradSum::default();
        grads.add(&model, &model.objective(model.forward(x), y, z_loss).backward());
        let named: std::collections::BTreeSet<String> = params::named(&model).into_iter().map(|(p, _, _)| p).collect();
        assert!(grads.by_path.keys().eq(named.iter()), "{what}: a gradient for every parameter of {named:?}");
        let loss_with = |path: &str, index: usize, delta: f32| {
            let m = params::map(model.valid(), &mut Nudge { path, index, delta });
            let l = m.objective(m.forward(x_plain.clone()), y_plain.clone(), z_loss);
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
