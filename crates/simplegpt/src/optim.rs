//! AdamW with decoupled weight decay, global gradient-norm clipping and gradient
//! accumulation, written out (about as long as torch's docs for it) because burn's built-in
//! clipping is per tensor and its AdamW decays every parameter.
//!
//! Everything is keyed by the parameter's path in the model (`blocks.0.attn.q.weight`), so
//! optimizer state survives a checkpoint and names match the exported weights.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::{Device, Gradients, Tensor};
use simplegpt_shaders::AdamWScalars;

use crate::config::TrainConfig;
use crate::params::{self, PathMapper, PathVisitor};

/// Gradients summed over the micro-steps of one optimizer step, flattened, by path.
#[derive(Default)]
pub struct GradSum {
    pub by_path: BTreeMap<String, Tensor<1>>,
}

impl GradSum {
    /// Adds the gradients of one backward pass.
    pub fn add<M: Module>(&mut self, model: &M, grads: &Gradients) {
        params::visit(model, &mut AddGrads { grads, sum: self });
    }

    /// The L2 norm of each parameter's gradient, by path (tensors on the device).
    pub fn norms(&self) -> Vec<(String, Tensor<1>)> {
        self.by_path.iter().map(|(p, g)| (p.clone(), params::sum_all(g.clone().square()).sqrt())).collect()
    }

    /// One norm over all parameters, as torch's `clip_grad_norm_` computes it.
    pub fn global_norm(&self) -> Tensor<1> {
        let squares: Vec<Tensor<1>> = self.by_path.values().map(|g| params::sum_all(g.clone().square())).collect();
        params::sum_all(Tensor::cat(squares, 0)).sqrt()
    }
}

struct AddGrads<'a> {
    grads: &'a Gradients,
    sum: &'a mut GradSum,
}

impl PathVisitor for AddGrads<'_> {
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let g = g.reshape([-1]);
            let sum = match self.sum.by_path.remove(path) {
                Some(prev) => prev + g,
                None => g,
            };
            self.sum.by_path.insert(path.to_string(), sum);
        }
    }
}

/// AdamW's moments, by parameter path, flattened; `step` counts updates for the bias
/// correction.
#[derive(Default)]
pub struct AdamW {
    pub step: u64,
    pub m: BTreeMap<String, Tensor<1>>,
    pub v: BTreeMap<String, Tensor<1>>,
}

impl AdamW {
    /// One update of every parameter that has a gradient. `grad_scale` (a scalar on the
    /// device) multiplies every gradient: 1/accumulation steps times the clip coefficient,
    /// so clipping costs no read-back. `fused`: each parameter's step as one op
    /// (`simplegpt_shaders::adamw_step`, on the CPU and the GPU backends, not under burn's
    /// fusion) rather than the tensor ops below (config key `fused`).
    pub fn update<M: Module>(
        &mut self,
        model: M,
        grads: GradSum,
        grad_scale: Tensor<1>,
        lr: f64,
        cfg: &TrainConfig,
        fused: bool,
    ) -> M {
        self.step += 1;
        params::map(model, &mut Update { opt: self, grads, grad_scale, lr, cfg, fused })
    }
}

struct Update<'a> {
    opt: &'a mut AdamW,
    grads: GradSum,
    grad_scale: Tensor<1>,
    lr: f64,
    cfg: &'a TrainConfig,
    fused: bool,
}

impl PathMapper for Update<'_> {
    fn map<const D: usize>(&mut self, key: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(g) = self.grads.by_path.remove(key) else {
            return param;
        };
        let tensor = param.val();
        let shape = tensor.shape();
        let p = tensor.inner().reshape([-1]);
        let (b1, b2, t) = (self.cfg.beta1, self.cfg.beta2, self.opt.step as i32);
        // Decoupled weight decay (Loshchilov & Hutter), on weights of rank >= 2 only unless
        // `decay_all`: biases, norm gains are left alone, as nanoGPT's parameter groups.
        let decay = if D >= 2 || self.cfg.decay_all { self.cfg.weight_decay } else { 0.0 };
        let (m, v) = (self.opt.m.remove(key), self.opt.v.remove(key));
        let kernel = p.device().inner() == Device::flex() || !cfg!(feature = "fusion");
        let (p, m, v) = if self.fused && kernel {
            let scalars = AdamWScalars::new(self.lr, b1, b2, self.cfg.eps, decay, self.opt.step);
            // Moments start at -0 rather than 0: -0 + x is x, bit for bit (0 + -0 is 0), so
            // that the first step too gives the tensor ops' bits.
            let m = m.unwrap_or_else(|| g.full_like(-0.0));
            let v = v.unwrap_or_else(|| g.full_like(-0.0));
            simplegpt_shaders::adamw_step(p, g, m, v, self.grad_scale.clone(), scalars)
        } else {
            let g = g * self.grad_scale.clone();
            let m = match m {
                Some(m) => m * b1 + g.clone() * (1.0 - b1),
                None => g.clone() * (1.0 - b1),
            };
            let v = match v {
                Some(v) => v * b2 + g.square() * (1.0 - b2),
                None => g.square() * (1.0 - b2),
            };
            let p = p * (1.0 - self.lr * decay);
            let m_hat = m.clone() / (1.0 - b1.powi(t));
            let v_hat = v.clone() / (1.0 - b2.powi(t));
            (p - m_hat / (v_hat.sqrt() + self.cfg.eps) * self.lr, m, v)
        };
        self.opt.m.insert(key.to_string(), m);
        self.opt.v.insert(key.to_string(), v);
        params::replaced(param, Tensor::from_inner(p.reshape(shape)))
    }
}

/// nanoGPT's schedule: linear warmup to `lr`, cosine decay to `min_lr` at `lr_decay_steps`,
/// then `min_lr`.
pub fn learning_rate(step: usize, cfg: &TrainConfig) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / (cfg.warmup_steps + 1) as f64;
    }
    if step >= cfg.lr_decay_steps {
        return cfg.min_lr;
    }
    let progress = (step - cfg.warmup_steps) as f64 / (cfg.lr_decay_steps - cfg.warmup_steps).max(1) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::Linear;
    use burn::tensor::{Device, TensorData};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{what}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn the_learning_rate_warms_up_linearly_then_decays_on_a_cosine_to_min_lr() {
        let mut cfg = crate::Config::preset("tiny").unwrap().train;
        (cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.lr_decay_steps) = (1e-3, 1e-4, 10, 110);
        // nanoGPT's get_lr: lr (it + 1) / (warmup + 1) during warmup; then min_lr +
        // 0.5 (1 + cos(pi r)) (lr - min_lr) with r = (it - warmup) / (decay - warmup);
        // min_lr from lr_decay_steps on.
        for (step, want) in [
            (0, 1e-3 / 11.0),
            (9, 1e-3 * 10.0 / 11.0),
            (10, 1e-3),                          // r = 0
            (35, 1e-4 + 0.853_553_390_6 * 9e-4), // r = 1/4: 0.5 (1 + cos(pi/4))
            (60, 5.5e-4),                        // r = 1/2: half way between lr and min_lr
            (85, 1e-4 + 0.146_446_609_4 * 9e-4), // r = 3/4: 0.5 (1 - cos(pi/4))
            (110, 1e-4),
            (1000, 1e-4),
        ] {
            let got = learning_rate(step, &cfg);
            assert!((got - want).abs() < 1e-12, "step {step}: {got}, want {want}");
        }
    }

    /// A 1x2 weight (rank 2: decayed) and a bias of 2 (rank 1: not decayed), two AdamW steps:
    /// the tensor ops and the fused step, on the CPU and on the GPU code path (lavapipe in CI;
    /// under `--features fusion` the GPU's fused step is the tensor ops, see `Update`).
    #[test]
    fn two_adamw_steps_match_the_formula_worked_by_hand() {
        for device in [Device::flex(), crate::device::open("wgpu").expect("a wgpu adapter (lavapipe in CI)").device] {
            for fused in [false, true] {
                two_adamw_steps(device.clone().autodiff(), fused);
            }
        }
    }

    /// On the CPU the fused step does the tensor ops' f32 arithmetic in their order: the same
    /// bits of every parameter and moment, over three steps with a clip scale, a decayed
    /// weight and an undecayed bias, and gradients of +0 and -0 among them.
    #[test]
    fn on_the_cpu_the_fused_step_gives_the_tensor_ops_bits() {
        let device = Device::flex().autodiff();
        let cfg = crate::Config::preset("tiny").unwrap().train;
        let (rows, cols) = (40, 30);
        let noise = |n: usize, salt: f32| -> Vec<f32> {
            (0..n)
                .map(|i| match i % 7 {
                    0 => 0.0,
                    1 => -0.0,
                    _ => ((i as f32 * 0.37 + salt).sin() * 3.0).powi(3),
                })
                .collect()
        };
        let run = |fused: bool| {
            let mut model = Linear {
                weight: Param::from_data(TensorData::new(noise(rows * cols, 0.1), [rows, cols]), &device),
                bias: Some(Param::from_data(TensorData::new(noise(cols, 0.2), [cols]), &device)),
            };
            let inner = device.clone().inner();
            let flat = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &inner);
            let mut opt = AdamW::default();
            for step in 0..3 {
                let grads = GradSum {
                    by_path: [
                        ("weight".to_string(), flat(noise(rows * cols, 1.0 + step as f32))),
                        ("bias".to_string(), flat(noise(cols, 2.0 + step as f32))),
                    ]
                    .into(),
                };
                let scale = flat(vec![0.3 + step as f32]);
                model = opt.update(model, grads, scale, 1e-3 * (step + 1) as f64, &cfg, fused);
            }
            let bits = |t: Tensor<1>| -> Vec<u32> {
                t.into_data().try_to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
            };
            let mut all = vec![bits(model.weight.val().reshape([-1])), bits(model.bias.unwrap().val())];
            for path in ["weight", "bias"] {
                all.push(bits(opt.m[path].clone()));
                all.push(bits(opt.v[path].clone()));
            }
            all
        };
        let (unfused, fused) = (run(false), run(true));
        for (what, (u, f)) in ["weight", "bias", "weight's m", "weight's v", "bias's m", "bias's v"]
            .iter()
            .zip(unfused.iter().zip(&fused))
        {
            let first = u.iter().zip(f).position(|(u, f)| u != f);
            assert!(first.is_none(), "{what}: element {first:?} differs: {:?}", first.map(|i| (u[i], f[i])));
        }
        assert!(unfused[2].iter().any(|&b| b == (-0.0f32).to_bits()), "a moment of -0 is among those compared");
    }

    fn two_adamw_steps(device: Device, fused: bool) {
        let mut cfg = crate::Config::preset("tiny").unwrap().train;
        (cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, cfg.decay_all) = (0.9, 0.99, 1e-8, 0.5, false);
        let lr = 0.1;
        let mut model = Linear {
            weight: Param::from_data(TensorData::new(vec![1.0f32, -2.0], [1, 2]), &device),
            bias: Some(Param::from_data(TensorData::new(vec![0.3f32, -0.1], [2]), &device)),
        };
        let inner = device.clone().inner();
        let flat = |v: [f32; 2]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [2]), &inner);
        let grads = |w: [f32; 2], b: [f32; 2]| GradSum {
            by_path: [("weight".to_string(), flat(w)), ("bias".to_string(), flat(b))].into(),
        };
        let mut opt = AdamW::default();

        // Step 1, gradients scaled by 0.5: weight g = (0.2, -0.1), bias g = (0.01, 0.05).
        // m^ = g and v^ = g^2 (bias-corrected), so each moves by lr sign(g); the weight first
        // shrinks by 1 - lr wd = 0.95: (0.95 - 0.1, -1.9 + 0.1); the bias: (0.3 - 0.1, -0.1 - 0.1).
        let half = Tensor::<1>::from_data(TensorData::new(vec![0.5f32], [1]), &inner);
        model = opt.update(model, grads([0.4, -0.2], [0.02, 0.1]), half, lr, &cfg, fused);
        assert_close(&values(model.weight.val()), &[0.85, -1.8], "weight after step 1");
        assert_close(&values(model.bias.as_ref().unwrap().val()), &[0.2, -0.2], "bias after step 1");

        // Step 2, weight g = (-0.2, 0.6): m = 0.9 m1 + 0.1 g = (-0.002, 0.051), v = 0.99 v1 +
        // 0.01 g^2 = (0.000796, 0.003699); m^ = m / 0.19, v^ = v / 0.0199. Element 0:
        // m^ = -0.0105263, sqrt(v^) = 0.2: 0.85 * 0.95 + 0.1 * 0.0105263 / 0.2 = 0.8127632.
        // Element 1: m^ = 0.2684211, sqrt(v^) = 0.4311373: -1.8 * 0.95 - 0.1 * 0.6225884 = -1.7722588.
        // Bias, g = (0.1, 0.1): m^ = (0.0573684, 0.0763158), v^ = (0.0050749, 0.0062688).
        let one = Tensor::<1>::from_data(TensorData::new(vec![1.0f32], [1]), &inner);
        model = opt.update(model, grads([-0.2, 0.6], [0.1, 0.1]), one, lr, &cfg, fused);
        assert_close(&values(model.weight.val()), &[0.812_763_16, -1.772_258_84], "weight after step 2");
        assert_close(&values(model.bias.as_ref().unwrap().val()), &[0.119_469_64, -0.296_387_46], "bias after step 2");
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn the_global_gradient_norm_is_over_all_parameters() {
        let device = Device::flex();
        let flat = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &device);
        let sum = GradSum {
            by_path: [("a".to_string(), flat(vec![3.0, 0.0])), ("b".to_string(), flat(vec![0.0, 4.0, 12.0]))].into(),
        };
        assert_close(&values(sum.global_norm()), &[13.0], "sqrt(9 + 16 + 144)");
        let norms = sum.norms();
        assert_eq!(norms.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_close(&values(norms[0].1.clone()), &[3.0], "a");
        assert_close(&values(norms[1].1.clone()), &[160f64.sqrt()], "b: sqrt(16 + 144)");
    }
}
