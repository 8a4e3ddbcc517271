//! Cross-entropy of each row of logits against its target, forward and backward each one
//! pass over the logits on all CPU cores.
//!
//! As tensor ops the loss is `log_softmax` then a gather: under burn's autodiff that is the
//! row's max, a subtraction, `exp`, a sum, `log` and another subtraction, each a [N, V]
//! tensor, most on one thread on burn's Flex backend, several kept for the backward (and the
//! gather's backward a scatter into zeros). With a GPT-2 vocabulary that is 50 257 columns a
//! row: at batch 12 x 256 positions each [N, V] tensor is 617 MB. Here the forward reads each
//! row once for its log-sum-exp and writes one number per row; the backward recomputes the
//! row's log-sum-exp (the row is in cache) and writes `g (softmax - onehot)`; only the logits
//! are kept. Row by row, so any split over threads gives the same bits. The results differ
//! from the tensor ops by rounding (sums in another order).
//!
//! CPU only: the GPU backends keep the tensor ops (`model::Gpt::loss` routes by device).

use crate::gelu::exp_nonpositive;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Int, Tensor, TensorData};

// The specification: one row of `V` logits and its target.

/// `log sum_j exp(x[j]) = m + ln s` as its two parts: `m` the row's largest and
/// `ln s = ln(sum_j exp(x[j] - m))` (at least 0), which cannot overflow; the sum in eight
/// interleaved lanes, then the lanes in order. Kept apart so that `x - m` is taken first, as
/// burn's log-softmax does: `m + ln s` would round away `ln s`'s low bits when `m` is large.
#[inline(always)]
pub fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut lanes = [0.0f32; 8];
    for (i, v) in x.iter().enumerate() {
        lanes[i % 8] += exp_nonpositive(v - m);
    }
    (m, lanes.iter().sum::<f32>().ln())
}

/// `-log softmax(x)[target] = (m - x[target]) + ln s`.
#[inline(always)]
pub fn cross_entropy_row(x: &[f32], target: usize) -> f32 {
    let (m, ln_s) = log_sum_exp(x);
    (m - x[target]) + ln_s
}

/// The row's gradient given the loss's `g`: `g (softmax(x)[j] - [j = target])`, with
/// `softmax(x)[j] = exp((x[j] - m) - ln s)`.
#[inline(always)]
pub fn cross_entropy_row_backward(x: &[f32], target: usize, g: f32, dx: &mut [f32]) {
    let (m, ln_s) = log_sum_exp(x);
    for (dx, x) in dx.iter_mut().zip(x) {
        *dx = g * exp_nonpositive((x - m) - ln_s);
    }
    dx[target] -= g;
}

with_simd!(cross_entropy_rows, cross_entropy_rows_loop, (x: &[f32], targets: &[usize], losses: &mut [f32]));
with_simd!(
    cross_entropy_rows_backward,
    cross_entropy_rows_backward_loop,
    (x: &[f32], targets: &[usize], g: &[f32], dx: &mut [f32])
);

#[inline(always)]
fn cross_entropy_rows_loop(x: &[f32], targets: &[usize], losses: &mut [f32]) {
    let v = x.len() / losses.len().max(1);
    for ((loss, x), target) in losses.iter_mut().zip(x.chunks_exact(v)).zip(targets) {
        *loss = cross_entropy_row(x, *target);
    }
}

#[inline(always)]
fn cross_entropy_rows_backward_loop(x: &[f32], targets: &[usize], g: &[f32], dx: &mut [f32]) {
    let v = x.len() / g.len().max(1);
    for (((dx, x), target), g) in dx.chunks_exact_mut(v).zip(x.chunks_exact(v)).zip(targets).zip(g) {
        cross_entropy_row_backward(x, *target, *g, dx);
    }
}

// The op.

/// Each row's cross-entropy: logits [N, V] and targets [N] (each in `0..V`) -> losses [N].
#[backend_extension(Flex, Autodiff)]
pub trait CrossEntropyOps: Backend {
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self>;

    /// The logits' gradient, given the losses' gradient `grad` [N].
    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// `-log softmax(logits)[target]` of each row, [N, V] and [N] -> [N], differentiable. On
/// burn's Flex (CPU) backend only: the caller keeps the tensor ops for other devices.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let ([n, _], [n_targets]) = (logits.dims(), targets.dims());
    assert_eq!(n, n_targets, "cross-entropy: {n} rows of logits but {n_targets} targets");
    Tensor::from_dispatch(Dispatch::cross_entropy(logits.into_dispatch(), targets.into_dispatch()))
}

/// Rows per task: about 2^14 logits (as `norm`'s).
fn rows_per_task(v: usize) -> usize {
    ((1 << 14) / v.max(1)).max(1)
}

/// The logits as a contiguous [N, V] slice's owner, and the targets as indices, checked.
fn rows(logits: FloatTensor<Flex>, targets: IntTensor<Flex>) -> (FloatTensor<Flex>, Vec<usize>, usize) {
    assert!(logits.dtype() == DType::F32, "the fused cross-entropy computes in f32");
    let shape = logits.shape();
    assert_eq!(shape.num_dims(), 2, "cross-entropy of [N, V] logits, got {shape:?}");
    let v = shape[1];
    let logits = crate::contiguous_f32(logits);
    let targets: Vec<i64> = targets.into_data().convert::<i64>().try_into_vec().expect("integer targets");
    assert_eq!(targets.len(), shape[0], "one target per row");
    let targets = targets
        .into_iter()
        .map(|t| usize::try_from(t).ok().filter(|&t| t < v).unwrap_or_else(|| panic!("target {t} is outside 0..{v}")))
        .collect();
    (logits, targets, v)
}

impl CrossEntropyOps for Flex {
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        let (logits, targets, v) = rows(logits, targets);
        let x: &[f32] = logits.as_slice().expect("contiguous");
        let mut losses = vec![0.0f32; targets.len()];
        if v > 0 {
            let n = rows_per_task(v);
            let task =
                |((losses, x), targets): ((&mut [f32], &[f32]), &[usize])| cross_entropy_rows(x, targets, losses);
            #[cfg(not(target_family = "wasm"))]
            {
                use rayon::prelude::*;
                losses.par_chunks_mut(n).zip(x.par_chunks(n * v)).zip(targets.par_chunks(n)).for_each(task);
            }
            #[cfg(target_family = "wasm")]
            losses.chunks_mut(n).zip(x.chunks(n * v)).zip(targets.chunks(n)).for_each(task);
        }
        let n = losses.len();
        FloatTensor::<Flex>::from_data(TensorData::new(losses, [n]))
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (logits, targets, v) = rows(logits, targets);
        let x: &[f32] = logits.as_slice().expect("contiguous");
        let grad = crate::contiguous_f32(grad);
        let g: &[f32] = grad.as_slice().expect("contiguous");
        assert_eq!(g.len(), targets.len(), "one loss gradient per row");
        let mut dx = vec![0.0f32; x.len()];
        if v > 0 {
            let n = rows_per_task(v);
            let task = |(((dx, x), targets), g): (((&mut [f32], &[f32]), &[usize]), &[f32])| {
                cross_entropy_rows_backward(x, targets, g, dx)
            };
            #[cfg(not(target_family = "wasm"))]
            {
                use rayon::prelude::*;
                dx.par_chunks_mut(n * v)
                    .zip(x.par_chunks(n * v))
                    .zip(targets.par_chunks(n))
                    .zip(g.par_chunks(n))
                    .for_each(task);
            }
            #[cfg(target_family = "wasm")]
            dx.chunks_mut(n * v).zip(x.chunks(n * v)).zip(targets.chunks(n)).zip(g.chunks(n)).for_each(task);
        }
        FloatTensor::<Flex>::from_data(TensorData::new(dx, logits.shape()))
    }
}

/// Under autodiff: the inner backend's `cross_entropy`, keeping the logits (and the targets)
/// for `cross_entropy_backward`.
impl<B: CrossEntropyOps, C: CheckpointStrategy> CrossEntropyOps for Autodiff<B, C> {
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct CrossEntropyBackward;

        impl<B: CrossEntropyOps> Backward<B, 1> for CrossEntropyBackward {
            type State = (NodeId, IntTensor<B>);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let (logits, targets) = ops.state;
                let logits = checkpointer.retrieve_node_output(logits);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::cross_entropy_backward(logits, targets, grad));
            }
        }

        match CrossEntropyBackward.prepare::<C>([logits.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&logits), targets.clone());
                prep.finish(state, B::cross_entropy(logits.into_primitive(), targets))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::cross_entropy(logits.into_primitive(), targets)),
        }
    }

    fn cross_entropy_backward(
        _logits: FloatTensor<Self>,
        _targets: IntTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        panic!("the cross-entropy's backward is not differentiable (no second derivatives)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, activation};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The tensor ops it replaces (simplegpt's `Gpt::loss` unfused), per row.
    fn unfused(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
        let n = targets.dims()[0];
        activation::log_softmax(logits, 1).gather(1, targets.reshape([n, 1])).reshape([n]).neg()
    }

    /// [300, 77] logits (77 columns: not a multiple of the 8 lanes; 300 rows: two tasks of
    /// `rows_per_task(77)` = 212, the second partial) of the given spread, and targets.
    fn inputs(spread: f32, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let xs: Vec<f32> = (0..300 * 77).map(|i| (i as f32 * 0.613).sin() * spread + (i % 13) as f32 * 0.05).collect();
        let targets: Vec<i64> = (0..300).map(|i| (i * 31 % 77) as i64).collect();
        (
            Tensor::<1>::from_floats(xs.as_slice(), device).reshape([300, 77]),
            Tensor::<1, Int>::from_ints(targets.as_slice(), device),
        )
    }

    /// Each row's loss and the logits' gradient under a weighted sum of the losses.
    fn run(spread: f32, fused: bool) -> (Vec<f32>, Vec<f32>) {
        let device = Device::flex().autodiff();
        let (logits, targets) = inputs(spread, &device);
        let logits = logits.require_grad();
        let losses = if fused { cross_entropy(logits.clone(), targets) } else { unfused(logits.clone(), targets) };
        let weights =
            Tensor::<1>::from_floats((0..300).map(|i| 1.0 + (i % 5) as f32).collect::<Vec<_>>().as_slice(), &device);
        let grads = (losses.clone() * weights).sum().backward();
        (values(losses), values(logits.grad(&grads).unwrap()))
    }

    /// The largest difference, relative to the largest magnitude of `want`.
    fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
        got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    }

    #[test]
    fn losses_and_gradients_are_the_tensor_ops_up_to_rounding() {
        for spread in [1.0, 20.0] {
            let (fused, ops) = (run(spread, true), run(spread, false));
            // A few ulp of the largest loss (up to ~40 here) and of the largest gradient.
            assert!(rel_diff(&fused.0, &ops.0) < 1e-6, "spread {spread}: losses {}", rel_diff(&fused.0, &ops.0));
            assert!(rel_diff(&fused.1, &ops.1) < 1e-6, "spread {spread}: gradient {}", rel_diff(&fused.1, &ops.1));
        }
    }

    #[test]
    fn a_row_is_its_specification_and_its_gradient_sums_to_zero() {
        let (losses, _) = run(1.0, true);
        let (logits, _) = inputs(1.0, &Device::flex());
        let x = values(logits);
        // Row 5: target 5 * 31 mod 77 = 1.
        let row = &x[5 * 77..6 * 77];
        assert_eq!(losses[5], cross_entropy_row(row, 1));
        let mut dx = vec![0.0f32; 77];
        cross_entropy_row_backward(row, 1, 1.0, &mut dx);
        assert!(
            dx.iter().sum::<f32>().abs() < 1e-6
                && dx[1] < 0.0
                && dx.iter().enumerate().all(|(j, d)| j == 1 || *d > 0.0)
        );
        // A row of equal logits: the loss is ln V, however large the logits.
        for level in [0.3, 1e30] {
            assert!((cross_entropy_row(&[level; 77], 4) - 77f32.ln()).abs() < 1e-6, "logits {level}");
            cross_entropy_row_backward(&[level; 77], 4, 1.0, &mut dx);
            assert!((dx[0] - 1.0 / 77.0).abs() < 1e-7 && (dx[4] - (1.0 / 77.0 - 1.0)).abs() < 1e-6, "logits {level}");
        }
    }

    #[test]
    fn the_same_bits_on_one_thread_as_on_all() {
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(one.install(|| run(3.0, true)), run(3.0, true));
    }

    #[test]
    fn extreme_logits_give_no_nan_and_a_nan_logit_gives_nan() {
        for spread in [1e4, 1e30] {
            let (losses, grad) = run(spread, true);
            assert!(losses.iter().chain(&grad).all(|v| v.is_finite()), "spread {spread}");
        }
        let mut row = [0.5f32; 9];
        row[3] = f32::NAN;
        assert!(cross_entropy_row(&row, 0).is_nan());
    }

    #[test]
    #[should_panic(expected = "outside 0..77")]
    fn a_target_outside_the_vocabulary_is_refused() {
        let device = Device::flex();
        let (logits, _) = inputs(1.0, &device);
        cross_entropy(logits, Tensor::<1, Int>::from_ints([77i64; 300].as_slice(), &device));
    }
}
