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
//! On the GPU backends the same op is CubeCL kernels, as `norm`'s: one cube of 32 units per
//! row, the row's largest logit and its sum of exponentials as fixed trees in shared memory
//! (the same bits on every run), forward and backward; not under burn's fusion (the `fusion`
//! feature), where `model::Gpt::loss` keeps the tensor ops.

use crate::gelu::exp_nonpositive;
use crate::lanes;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::IntTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Int, IntDType, Tensor, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::prelude::CubeDim;

// The specification: one row of `V` logits and its target.

/// `log sum_j exp(x[j]) = m + ln s` as its two parts: `m` the row's largest and
/// `ln s = ln(sum_j exp(x[j] - m))` (at least 0), which cannot overflow; the maximum and the
/// sum in lanes (`lanes`). Kept apart so that `x - m` is taken first, as burn's log-softmax
/// does: `m + ln s` would round away `ln s`'s low bits when `m` is large.
#[inline(always)]
pub fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let m = lanes::max(x, |v| v);
    (m, lanes::sum([x], |[v]| exp_nonpositive(v - m)).ln())
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
#[backend_extension(Cube: cfg(not(feature = "fusion")), Flex, Autodiff)]
pub trait CrossEntropyOps: Backend {
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self>;

    /// The logits' gradient, given the losses' gradient `grad` [N].
    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// `-log softmax(logits)[target]` of each row, [N, V] and [N] -> [N], differentiable. On the
/// CPU and the GPU backends, not under burn's fusion: there the caller keeps the tensor ops.
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
            crate::for_each_chunk(&mut losses, rows_per_task(v), |r, losses| {
                let rows = r..r + losses.len();
                cross_entropy_rows(&x[rows.start * v..rows.end * v], &targets[rows], losses)
            });
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
            crate::for_each_chunk(&mut dx, rows_per_task(v) * v, |start, dx| {
                let rows = start / v..(start + dx.len()) / v;
                cross_entropy_rows_backward(&x[start..start + dx.len()], &targets[rows.clone()], &g[rows], dx)
            });
        }
        FloatTensor::<Flex>::from_data(TensorData::new(dx, logits.shape()))
    }
}

mod cube_kernel {
    use crate::norm::cube_kernel::{UNITS, cube_max, cube_sum};
    use cubecl::prelude::*;

    /// The row's largest logit and `ln` of its sum of exponentials, as `log_sum_exp`.
    #[cube]
    fn row_log_sum_exp(x: &Tensor<f32>, start: usize, v: usize, shared: &mut Shared<[f32]>) -> (f32, f32) {
        // Column 0 is in every row: a start for the largest.
        let mut m = x[start];
        let mut j = UNIT_POS_X as usize;
        while j < v {
            m = f32::max(m, x[start + j]);
            j += UNITS;
        }
        let m = cube_max(m, shared);
        let mut sum = 0.0f32;
        let mut j = UNIT_POS_X as usize;
        while j < v {
            sum += f32::exp(x[start + j] - m);
            j += UNITS;
        }
        (m, f32::ln(cube_sum(sum, shared)))
    }

    /// The row's target, and whether it is a column of the row: a target outside `0..V` (the
    /// data pipeline checks them; this is the GPU's only defence) reads column 0 and makes
    /// the row's loss and gradient infinite rather than read outside the logits.
    #[cube]
    fn target_of(targets: &Tensor<i32>, row: usize, v: usize) -> (usize, bool) {
        let target = targets[row];
        let valid = target >= 0 && (target as usize) < v;
        (select(valid, target as usize, 0), valid)
    }

    /// One row's `(m - x[target]) + ln s` per cube. A cube past the last row computes row 0
    /// and writes nothing (every unit must reach the barriers).
    #[cube(launch_unchecked)]
    pub fn cross_entropy_kernel(x: &Tensor<f32>, targets: &Tensor<i32>, losses: &mut Tensor<f32>, rows: u32, v: u32) {
        let mut shared = Shared::<[f32]>::new_slice(UNITS);
        let (v, row) = (v as usize, CUBE_POS);
        let active = row < rows as usize;
        let row = select(active, row, 0);
        let start = row * v;
        let (m, ln_s) = row_log_sum_exp(x, start, v, &mut shared);
        let (target, valid) = target_of(targets, row, v);
        if active && UNIT_POS_X == 0 {
            losses[row] = ((m - x[start + target]) + ln_s) / select(valid, 1.0f32, 0.0f32);
        }
    }

    /// One row's gradient per cube: `g (exp((x - m) - ln s) - [j = target])`.
    #[cube(launch_unchecked)]
    pub fn cross_entropy_backward_kernel(
        x: &Tensor<f32>,
        targets: &Tensor<i32>,
        g: &Tensor<f32>,
        dx: &mut Tensor<f32>,
        rows: u32,
        v: u32,
    ) {
        let mut shared = Shared::<[f32]>::new_slice(UNITS);
        let (v, row) = (v as usize, CUBE_POS);
        let active = row < rows as usize;
        let row = select(active, row, 0);
        let start = row * v;
        let (m, ln_s) = row_log_sum_exp(x, start, v, &mut shared);
        let (target, valid) = target_of(targets, row, v);
        let g_row = g[row] / select(valid, 1.0f32, 0.0f32);
        let mut j = UNIT_POS_X as usize;
        while active && j < v {
            dx[start + j] = g_row * f32::exp((x[start + j] - m) - ln_s) - select(j == target, g_row, 0.0f32);
            j += UNITS;
        }
    }
}

/// The targets as the kernels read them: i32, contiguous.
fn i32_targets(targets: IntTensor<CubeBackend>) -> IntTensor<CubeBackend> {
    let targets = match targets.dtype {
        DType::I32 => targets,
        _ => <CubeBackend as IntTensorOps<CubeBackend>>::int_cast(targets, IntDType::I32),
    };
    into_contiguous(targets)
}

impl CrossEntropyOps for CubeBackend {
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        assert!(logits.dtype == DType::F32, "the fused cross-entropy computes in f32");
        let (x, targets) = (into_contiguous(logits), i32_targets(targets));
        let [n, v] = x.shape().dims::<2>();
        let losses = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), [n].into(), DType::F32);
        if n == 0 || v == 0 {
            return losses;
        }
        // SAFETY: every index the kernel reads or writes is below n * v (x), n (targets,
        // losses), a target outside 0..v read as column 0. (Its strides and shared memory are
        // for cubes of UNITS units, as launched here.)
        unsafe {
            cube_kernel::cross_entropy_kernel::launch_unchecked(
                &x.client,
                crate::norm::cube_per_row(n),
                CubeDim::new_1d(crate::norm::cube_kernel::UNITS as u32),
                x.clone().into_tensor_arg(),
                targets.into_tensor_arg(),
                losses.clone().into_tensor_arg(),
                n as u32,
                v as u32,
            );
        }
        losses
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (x, targets, g) = (into_contiguous(logits), i32_targets(targets), into_contiguous(grad));
        let [n, v] = x.shape().dims::<2>();
        let dx = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), [n, v].into(), DType::F32);
        if n == 0 || v == 0 {
            return dx;
        }
        // SAFETY: as the forward's; g has one value per row.
        unsafe {
            cube_kernel::cross_entropy_backward_kernel::launch_unchecked(
                &x.client,
                crate::norm::cube_per_row(n),
                CubeDim::new_1d(crate::norm::cube_kernel::UNITS as u32),
                x.clone().into_tensor_arg(),
                targets.into_tensor_arg(),
                g.into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                n as u32,
                v as u32,
            );
        }
        dx
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

    /// [300, 77] logits (77 columns: not a multiple of the 16 lanes; 300 rows: two tasks of
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
        run_on(&Device::flex().autodiff(), spread, fused)
    }

    fn run_on(device: &Device, spread: f32, fused: bool) -> (Vec<f32>, Vec<f32>) {
        let device = device.clone();
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

    /// The row loops compiled for the machine's SIMD (AVX-512 or AVX2 where it has them)
    /// give the bits of the baseline build of the same loops: rows of 77 (lanes and a tail).
    #[test]
    fn the_simd_loops_give_the_baseline_bits() {
        let x: Vec<f32> = (0..5 * 77).map(|i| (i as f32 * 0.61).sin() * 9.0).collect();
        let (targets, g) = ([0, 76, 3, 40, 16], [1.0, 0.5, -0.25, 2.0, 0.125]);
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let (mut simd, mut base) = ([0.0; 5], [0.0; 5]);
        cross_entropy_rows(&x, &targets, &mut simd);
        cross_entropy_rows_loop(&x, &targets, &mut base);
        assert_eq!(bits(&simd), bits(&base), "losses");
        let (mut simd, mut base) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        cross_entropy_rows_backward(&x, &targets, &g, &mut simd);
        cross_entropy_rows_backward_loop(&x, &targets, &g, &mut base);
        assert_eq!(bits(&simd), bits(&base), "gradients");
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

    #[test]
    fn on_the_gpu_losses_and_gradients_are_the_tensor_ops_up_to_rounding() {
        // lavapipe where there is no GPU; rows of 77: longer than a cube's 32 units, no
        // multiple of it.
        let device = crate::tests::wgpu().autodiff();
        for spread in [1.0, 20.0, 1e4] {
            let (fused, ops) = (run_on(&device, spread, true), run_on(&device, spread, false));
            assert!(rel_diff(&fused.0, &ops.0) < 1e-6, "spread {spread}: losses {}", rel_diff(&fused.0, &ops.0));
            assert!(rel_diff(&fused.1, &ops.1) < 1e-6, "spread {spread}: gradient {}", rel_diff(&fused.1, &ops.1));
            assert!(fused.0.iter().chain(&fused.1).all(|v| v.is_finite()), "spread {spread}");
        }
        // The same bits on every run, and the CPU's op up to rounding.
        assert_eq!(run_on(&device, 3.0, true), run_on(&device, 3.0, true));
        let (gpu, cpu) = (run_on(&device, 3.0, true), run(3.0, true));
        assert!(rel_diff(&gpu.0, &cpu.0) < 1e-6 && rel_diff(&gpu.1, &cpu.1) < 1e-6, "GPU against CPU");
    }

    #[test]
    fn on_the_gpu_a_target_outside_the_vocabulary_gives_an_infinite_loss() {
        let device = crate::tests::wgpu();
        let (logits, _) = inputs(1.0, &device);
        let mut targets = vec![3i64; 300];
        (targets[7], targets[8]) = (77, -1);
        let losses = values(cross_entropy(logits, Tensor::<1, Int>::from_ints(targets.as_slice(), &device)));
        assert!(losses[7].is_infinite() && losses[8].is_infinite(), "{:?}", &losses[6..9]);
        assert!(losses[6].is_finite() && losses[9].is_finite());
    }
}
