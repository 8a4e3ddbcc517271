//! AdamW with decoupled weight decay, global gradient-norm clipping and gradient
//! accumulation, written out (about as long as torch's docs for it) because burn's built-in
//! clipping is per tensor and its AdamW decays every parameter.
//!
//! Everything is keyed by the parameter's path in the model (`blocks.0.attn.q.weight`), so
//! optimizer state survives a checkpoint and names match the exported weights.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::{Gradients, Tensor};

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
        self.by_path.iter().map(|(p, g)| (p.clone(), g.clone().square().sum().sqrt())).collect()
    }

    /// One norm over all parameters, as torch's `clip_grad_norm_` computes it.
    pub fn global_norm(&self) -> Tensor<1> {
        let squares: Vec<Tensor<1>> = self.by_path.values().map(|g| g.clone().square().sum()).collect();
        Tensor::cat(squares, 0).sum().sqrt()
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
    /// so clipping costs no read-back.
    pub fn update<M: Module>(&mut self, model: M, grads: GradSum, grad_scale: Tensor<1>, lr: f64, cfg: &TrainConfig) -> M {
        self.step += 1;
        params::map(model, &mut Update { opt: self, grads, grad_scale, lr, cfg })
    }
}

struct Update<'a> {
    opt: &'a mut AdamW,
    grads: GradSum,
    grad_scale: Tensor<1>,
    lr: f64,
    cfg: &'a TrainConfig,
}

impl PathMapper for Update<'_> {
    fn map<const D: usize>(&mut self, key: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(g) = self.grads.by_path.remove(key) else {
            return param;
        };
        let tensor = param.val();
        let shape = tensor.shape();
        let p = tensor.inner().reshape([-1]);
        let g = g * self.grad_scale.clone();
        let (b1, b2, t) = (self.cfg.beta1, self.cfg.beta2, self.opt.step as i32);
        let m = match self.opt.m.remove(key) {
            Some(m) => m * b1 + g.clone() * (1.0 - b1),
            None => g.clone() * (1.0 - b1),
        };
        let v = match self.opt.v.remove(key) {
            Some(v) => v * b2 + g.square() * (1.0 - b2),
            None => g.square() * (1.0 - b2),
        };
        // Decoupled weight decay (Loshchilov & Hutter), on weights of rank >= 2 only unless
        // `decay_all`: biases, norm gains are left alone, as nanoGPT's parameter groups.
        let decay = if D >= 2 || self.cfg.decay_all { self.cfg.weight_decay } else { 0.0 };
        let p = p * (1.0 - self.lr * decay);
        let m_hat = m.clone() / (1.0 - b1.powi(t));
        let v_hat = v.clone() / (1.0 - b2.powi(t));
        let p = p - m_hat / (v_hat.sqrt() + self.cfg.eps) * self.lr;
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
