//! The model on the CPU: shapes of every variant, SimpleNorm's structure and its defining
//! property, and a finite-difference check of the gradients.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use simplegpt::Config;
use simplegpt::config::{MlpKind, NormKind, PosKind};
use simplegpt::model::Gpt;

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
        if D == 2 && self.1.first().is_some_and(|s| s == "blocks") {
            p.map(|t| t * self.0)
        } else {
            p
        }
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
        a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
    };
    assert!(diff(NormKind::Simple) < 1e-3, "simple: {}", diff(NormKind::Simple));
    assert!(diff(NormKind::PreLn) > 1e-1, "pre_ln: {}", diff(NormKind::PreLn));
}

#[test]
fn gradients_match_finite_differences() {
    let device = Device::flex().autodiff();
    for norm in [NormKind::PreLn, NormKind::Simple, NormKind::PostLn] {
        let c = small(norm);
        let model = c.model.init(5, &device);
        let x = tokens(2, 8, 11, &device);
        let y = pattern(2, 8, 11, 5, &device);
        let plain = device.clone().inner();
        let (x_plain, y_plain) = (tokens(2, 8, 11, &plain), pattern(2, 8, 11, 5, &plain));
        let loss = Gpt::loss(model.forward(x.clone()), y.clone());
        let grads = loss.backward();
        // The first attention's q weight: check its largest-gradient entries.
        let w = model.blocks[0].attn.q.weight.val();
        let g: Vec<f32> = w.grad(&grads).unwrap().into_data().convert::<f32>().try_into_vec().unwrap();
        let w0: Vec<f32> = w.clone().inner().into_data().convert::<f32>().try_into_vec().unwrap();
        let shape = w.dims();
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        let loss_with = |i: usize, delta: f32| {
            let mut w1 = w0.clone();
            w1[i] += delta;
            let mut m = model.valid();
            m.blocks[0].attn.q.weight = Param::from_data(TensorData::new(w1, shape), &plain);
            let l = Gpt::loss(m.forward(x_plain.clone()), y_plain.clone());
            l.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[0] as f64
        };
        for &i in order.iter().take(5) {
            let h = 1e-2f32;
            let numeric = (loss_with(i, h) - loss_with(i, -h)) / (2.0 * h as f64);
            let analytic = g[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 0.05 * analytic.abs() + 1e-4,
                "{norm:?} entry {i}: analytic {analytic}, finite difference {numeric}"
            );
        }
    }
}
