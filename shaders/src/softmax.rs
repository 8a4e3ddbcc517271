//! Causal softmax of attention scores, forward and backward each one pass on all CPU cores.
//!
//! As tensor ops the attention's probabilities are seven passes over the [B, nh, T, T]
//! scores (scale, mask the future, and burn's softmax under autodiff: max, subtract, exp,
//! sum, divide), most on one thread on burn's Flex backend, each keeping its own tensor for
//! the backward, which takes as many again. At nanoGPT's size the scores are 25 M elements a
//! layer. Here the forward writes each row's probabilities from its scores in one pass (the
//! future left 0, its exponentials never computed), and the backward is
//! `scale y (g - sum(g y))` per row, written over the incoming gradient; only the
//! probabilities are kept. Row by row, so no sum crosses a row and any split over threads
//! gives the same bits.
//!
//! On the GPU backends the same op is CubeCL kernels, as `norm`'s: one cube of 32 units per
//! row, each row's largest score and sums taken as fixed trees in shared memory (the same
//! bits on every run), forward and backward; not under burn's fusion (the `fusion` feature),
//! where `model::Attention` keeps the tensor ops. The results differ from the tensor ops by
//! rounding (sums in another order).

use crate::gelu::exp_nonpositive;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::prelude::CubeDim;

// The specification: one row, the scores of query position `t` against every key position.

/// Sums in eight interleaved lanes, then the lanes in order (as `norm`'s).
fn lane_sum(xs: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0.0f32; 8];
    for (i, x) in xs.enumerate() {
        lanes[i % 8] += x;
    }
    lanes.iter().sum()
}

/// `y[j] = exp(scale x[j] - m) / sum_{k <= t} exp(scale x[k] - m)` for `j <= t` (`m` the
/// largest `scale x[k]`, `k <= t`), 0 for the future `j > t`. The exponential is GELU's
/// branch-free one (its arguments here are never positive), so the loop vectorises.
#[inline(always)]
pub fn causal_softmax_row(x: &[f32], t: usize, scale: f32, y: &mut [f32]) {
    let (past, future) = y.split_at_mut(t + 1);
    let m = x[..=t].iter().fold(f32::NEG_INFINITY, |m, v| m.max(v * scale));
    for (y, x) in past.iter_mut().zip(x) {
        *y = exp_nonpositive(x * scale - m);
    }
    let sum = lane_sum(past.iter().copied());
    past.iter_mut().for_each(|y| *y /= sum);
    future.fill(0.0);
}

/// The scores' gradient for one row, over `g` (the probabilities' gradient):
/// `scale y[j] (g[j] - sum_k g[k] y[k])`, 0 for the future (where `y` is 0).
pub fn causal_softmax_row_backward(y: &[f32], t: usize, scale: f32, g: &mut [f32]) {
    let dot = lane_sum(g[..=t].iter().zip(y).map(|(g, y)| g * y));
    for (g, y) in g[..=t].iter_mut().zip(y) {
        *g = scale * y * (*g - dot);
    }
    g[t + 1..].fill(0.0);
}

with_simd!(causal_softmax_row_simd, causal_softmax_row, (x: &[f32], t: usize, scale: f32, y: &mut [f32]));

// The op.

/// The causal softmax of scores [..., T, T] (row `t` of each [T, T] matrix sees columns
/// `0..=t`), scaled by `scale` first.
#[backend_extension(Cube: cfg(not(feature = "fusion")), Flex, Autodiff)]
pub trait CausalSoftmaxOps: Backend {
    fn causal_softmax(scores: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;

    /// The scores' gradient, given the output (`probs`) and the output's gradient.
    fn causal_softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;
}

/// `softmax(scores * scale)` over the last dimension with the future (column > row) masked
/// out, differentiable. On the CPU and on the GPU backends, not under burn's fusion: there
/// the caller keeps the tensor ops.
pub fn causal_softmax<const D: usize>(scores: Tensor<D>, scale: f64) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::causal_softmax(scores.into_dispatch(), scale as f32))
}

/// Rows per task: about 2^14 elements (as `norm`).
fn rows_per_task(t: usize) -> usize {
    ((1 << 14) / t.max(1)).max(1)
}

/// Applies `row(input row, query position, output row)` to every row, on all cores.
fn for_each_row(out: &mut [f32], input: &[f32], t: usize, row: impl Fn(&[f32], usize, &mut [f32]) + Sync) {
    let n = rows_per_task(t) * t;
    let task = |(c, (out, input)): (usize, (&mut [f32], &[f32]))| {
        // A task starts on a whole row, `c * rows_per_task` rows in.
        let first = c * rows_per_task(t);
        for (i, (out, input)) in out.chunks_exact_mut(t).zip(input.chunks_exact(t)).enumerate() {
            row(input, (first + i) % t, out);
        }
    };
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(n).zip(input.par_chunks(n)).enumerate().for_each(task);
    }
    #[cfg(target_family = "wasm")]
    out.chunks_mut(n).zip(input.chunks(n)).enumerate().for_each(task);
}

/// The last dimension's size, checked to be the one before it (square [T, T] matrices).
fn square_side(shape: &burn::tensor::Shape) -> usize {
    let d = shape.num_dims();
    assert!(d >= 2 && shape[d - 1] == shape[d - 2], "causal softmax of [..., T, T] scores, got {shape:?}");
    shape[d - 1]
}

impl CausalSoftmaxOps for Flex {
    fn causal_softmax(scores: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        assert!(scores.dtype() == DType::F32, "the fused softmax computes in f32");
        let shape = scores.shape();
        let t = square_side(&shape);
        let scores = crate::contiguous_f32(scores);
        let x: &[f32] = scores.as_slice().expect("contiguous");
        let mut y = vec![0.0f32; x.len()];
        for_each_row(&mut y, x, t, |x, row, y| causal_softmax_row_simd(x, row, scale, y));
        FloatTensor::<Flex>::from_data(TensorData::new(y, shape))
    }

    fn causal_softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let shape = grad.shape();
        let t = square_side(&shape);
        let probs = crate::contiguous_f32(probs);
        let y: &[f32] = probs.as_slice().expect("contiguous");
        // Written over the incoming gradient (its buffer when nothing else holds it).
        let mut grad = crate::writable_f32(grad);
        let g: &mut [f32] = grad.try_storage_mut().expect("a buffer of its own");
        assert_eq!(g.len(), y.len(), "the gradient has the probabilities' shape");
        for_each_row(g, y, t, |y, row, g| causal_softmax_row_backward(y, row, scale, g));
        grad
    }
}

mod cube_kernel {
    use crate::norm::cube_kernel::{UNITS, cube_sum};
    use cubecl::prelude::*;

    /// The largest of every unit's `value`, as a fixed tree in `shared` (as `cube_sum`).
    #[cube]
    fn cube_max(value: f32, shared: &mut Shared<[f32]>) -> f32 {
        let unit = UNIT_POS_X as usize;
        shared[unit] = value;
        sync_cube();
        let mut stride = CUBE_DIM_X as usize / 2;
        while stride > 0 {
            if unit < stride {
                shared[unit] = f32::max(shared[unit], shared[unit + stride]);
            }
            sync_cube();
            stride = stride / 2;
        }
        let max = shared[0];
        sync_cube();
        max
    }

    /// One row of `causal_softmax_row` per cube: row `r` of the [rows, t] scores is query
    /// position `r mod t`. A cube past the last row computes row 0 and writes nothing.
    #[cube(launch_unchecked)]
    pub fn causal_softmax_kernel(x: &Tensor<f32>, y: &mut Tensor<f32>, rows: u32, t: u32, scale: f32) {
        let mut shared = Shared::<[f32]>::new_slice(UNITS);
        let (t, row) = (t as usize, CUBE_POS);
        let active = row < rows as usize;
        let row = select(active, row, 0);
        let (start, seen) = (row * t, row % t + 1);
        // Column 0 is in every row's past: a start for the largest score.
        let mut m = x[start] * scale;
        let mut j = UNIT_POS_X as usize;
        while j < seen {
            m = f32::max(m, x[start + j] * scale);
            j += UNITS;
        }
        let m = cube_max(m, &mut shared);
        let mut sum = 0.0f32;
        let mut j = UNIT_POS_X as usize;
        while j < seen {
            sum += f32::exp(x[start + j] * scale - m);
            j += UNITS;
        }
        let sum = cube_sum(sum, &mut shared);
        let mut j = UNIT_POS_X as usize;
        while active && j < t {
            y[start + j] = select(j < seen, f32::exp(x[start + j] * scale - m) / sum, 0.0);
            j += UNITS;
        }
    }

    /// One row of `causal_softmax_row_backward` per cube: `scale y (g - sum(g y))`.
    #[cube(launch_unchecked)]
    pub fn causal_softmax_backward_kernel(
        y: &Tensor<f32>,
        g: &Tensor<f32>,
        dx: &mut Tensor<f32>,
        rows: u32,
        t: u32,
        scale: f32,
    ) {
        let mut shared = Shared::<[f32]>::new_slice(UNITS);
        let (t, row) = (t as usize, CUBE_POS);
        let active = row < rows as usize;
        let row = select(active, row, 0);
        let (start, seen) = (row * t, row % t + 1);
        let mut dot = 0.0f32;
        let mut j = UNIT_POS_X as usize;
        while j < seen {
            dot += g[start + j] * y[start + j];
            j += UNITS;
        }
        let dot = cube_sum(dot, &mut shared);
        let mut j = UNIT_POS_X as usize;
        while active && j < t {
            dx[start + j] = select(j < seen, scale * y[start + j] * (g[start + j] - dot), 0.0);
            j += UNITS;
        }
    }
}

impl CausalSoftmaxOps for CubeBackend {
    fn causal_softmax(scores: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        assert!(scores.dtype == DType::F32, "the fused softmax computes in f32");
        let x = into_contiguous(scores);
        let shape = x.shape();
        let t = square_side(&shape);
        let rows = shape.num_elements() / t.max(1);
        let y = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, DType::F32);
        if rows == 0 {
            return y;
        }
        // SAFETY: every index the kernel reads or writes is below rows * t. (The kernels'
        // strides and shared memory are for cubes of UNITS units, as launched here.)
        unsafe {
            cube_kernel::causal_softmax_kernel::launch_unchecked(
                &x.client,
                crate::norm::cube_per_row(rows),
                CubeDim::new_1d(crate::norm::cube_kernel::UNITS as u32),
                x.clone().into_tensor_arg(),
                y.clone().into_tensor_arg(),
                rows as u32,
                t as u32,
                scale,
            );
        }
        y
    }

    fn causal_softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        assert!(probs.dtype == DType::F32 && grad.dtype == DType::F32, "the fused softmax computes in f32");
        let (y, g) = (into_contiguous(probs), into_contiguous(grad));
        let shape = y.shape();
        assert_eq!(g.shape(), shape, "the gradient has the probabilities' shape");
        let t = square_side(&shape);
        let rows = shape.num_elements() / t.max(1);
        let dx = empty_device_contiguous_dtype(y.client.clone(), y.device.clone(), shape, DType::F32);
        if rows == 0 {
            return dx;
        }
        // SAFETY: as the forward's.
        unsafe {
            cube_kernel::causal_softmax_backward_kernel::launch_unchecked(
                &y.client,
                crate::norm::cube_per_row(rows),
                CubeDim::new_1d(crate::norm::cube_kernel::UNITS as u32),
                y.clone().into_tensor_arg(),
                g.into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                rows as u32,
                t as u32,
                scale,
            );
        }
        dx
    }
}

/// Under autodiff: the inner backend's `causal_softmax`, keeping its output for
/// `causal_softmax_backward`.
impl<B: CausalSoftmaxOps, C: CheckpointStrategy> CausalSoftmaxOps for Autodiff<B, C> {
    fn causal_softmax(scores: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct CausalSoftmaxBackward;

        impl<B: CausalSoftmaxOps> Backward<B, 1> for CausalSoftmaxBackward {
            type State = (FloatTensor<B>, f32);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (probs, scale) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::causal_softmax_backward(probs, grad, scale));
            }
        }

        match CausalSoftmaxBackward.prepare::<C>([scores.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let probs = B::causal_softmax(scores.into_primitive(), scale);
                prep.finish((probs.clone(), scale), probs)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::causal_softmax(scores.into_primitive(), scale)),
        }
    }

    fn causal_softmax_backward(_probs: FloatTensor<Self>, _grad: FloatTensor<Self>, _scale: f32) -> FloatTensor<Self> {
        panic!("the causal softmax's backward is not differentiable (no second derivatives)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Bool, Device, activation};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The tensor ops it replaces (simplegpt's `model::Attention` unfused).
    fn unfused(scores: Tensor<4>, scale: f64) -> Tensor<4> {
        let [b, nh, t, _] = scores.dims();
        let att = scores * scale;
        let future = Tensor::<2, Bool>::tril_mask([t, t], 0, &att.device());
        activation::softmax(att.mask_fill(future.unsqueeze::<4>().expand([b, nh, t, t]), f32::NEG_INFINITY), 3)
    }

    /// [4, heads, 37, 37] scores: T = 37, not a multiple of the 8 lanes; with 5 heads 740
    /// rows, two tasks of `rows_per_task(37)` = 442 rows, the second starting mid-matrix.
    fn scores(heads: usize, spread: f32, device: &Device) -> Tensor<4> {
        let n = 4 * heads * 37 * 37;
        let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * spread + (i % 11) as f32 * 0.1).collect();
        Tensor::<1>::from_floats(xs.as_slice(), device).reshape([4, heads, 37, 37])
    }

    fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
        // (An all-zero `want`, T = 1's gradient, then asks for exact zeros.)
        let scale = want.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
        got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    }

    /// Values and the scores' gradient under a weighted sum.
    fn run(x: Tensor<4>, scale: f64, fused: bool) -> (Vec<f32>, Vec<f32>) {
        let x = x.require_grad();
        let y = if fused { causal_softmax(x.clone(), scale) } else { unfused(x.clone(), scale) };
        let weights = (x.clone().detach() * 1.7).cos();
        let grads = (y.clone() * weights).sum().backward();
        (values(y), values(x.grad(&grads).unwrap()))
    }

    #[test]
    fn values_and_gradients_are_the_tensor_ops_up_to_rounding() {
        let device = Device::flex().autodiff();
        for heads in [1, 5] {
            for spread in [1.0, 30.0] {
                let (fused, ops) = (
                    run(scores(heads, spread, &device), 0.125, true),
                    run(scores(heads, spread, &device), 0.125, false),
                );
                assert!(rel_diff(&fused.0, &ops.0) < 1e-6, "values {}", rel_diff(&fused.0, &ops.0));
                assert!(rel_diff(&fused.1, &ops.1) < 1e-5, "gradient {}", rel_diff(&fused.1, &ops.1));
                // The future is exactly 0, and so is its gradient.
                let t = 37;
                for (i, (y, g)) in fused.0.iter().zip(&fused.1).enumerate() {
                    if i % t > (i / t) % t {
                        assert_eq!((*y, *g), (0.0, 0.0), "element {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_same_bits_on_one_thread_as_on_all() {
        let device = Device::flex().autodiff();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let all = run(scores(5, 3.0, &device), 0.3, true);
        assert_eq!(one.install(|| run(scores(5, 3.0, &device), 0.3, true)), all);
    }

    #[test]
    fn a_strided_input_gives_the_same_values_and_gradients() {
        let device = Device::flex().autodiff();
        let contiguous = run(scores(5, 3.0, &device), 0.3, true);
        let stored =
            Tensor::<4>::from_data(scores(5, 3.0, &device).swap_dims(1, 2).into_data(), &device).require_grad();
        let y = causal_softmax(stored.clone().swap_dims(1, 2), 0.3);
        let grads = (y.clone() * (scores(5, 3.0, &device) * 1.7).cos()).sum().backward();
        assert_eq!(values(y), contiguous.0);
        assert_eq!(values(stored.grad(&grads).unwrap().swap_dims(1, 2)), contiguous.1);
    }

    /// [2, heads, t, t] scores of the given spread.
    fn square(heads: usize, t: usize, spread: f32, device: &Device) -> Tensor<4> {
        let n = 2 * heads * t * t;
        let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.531).sin() * spread + (i % 7) as f32 * 0.2).collect();
        Tensor::<1>::from_floats(xs.as_slice(), device).reshape([2, heads, t, t])
    }

    #[test]
    fn on_the_gpu_values_and_gradients_are_the_tensor_ops_up_to_rounding() {
        // lavapipe where there is no GPU. T = 37 and 70: rows shorter and longer than a cube
        // of 32 units, neither a multiple of it; T = 1: every row is the diagonal.
        let device = crate::tests::wgpu().autodiff();
        for (heads, t) in [(1, 37), (5, 37), (3, 70), (2, 1)] {
            for spread in [1.0, 30.0] {
                let (fused, ops) = (
                    run(square(heads, t, spread, &device), 0.125, true),
                    run(square(heads, t, spread, &device), 0.125, false),
                );
                let what = format!("{heads} heads, T {t}, spread {spread}");
                assert!(rel_diff(&fused.0, &ops.0) < 1e-6, "{what}: values {}", rel_diff(&fused.0, &ops.0));
                assert!(rel_diff(&fused.1, &ops.1) < 1e-5, "{what}: gradient {}", rel_diff(&fused.1, &ops.1));
                for (i, (y, g)) in fused.0.iter().zip(&fused.1).enumerate() {
                    if i % t > (i / t) % t {
                        assert_eq!((*y, *g), (0.0, 0.0), "{what}: element {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn on_the_gpu_the_same_bits_every_run_and_a_strided_input_is_read_right() {
        let device = crate::tests::wgpu().autodiff();
        let first = run(square(3, 70, 3.0, &device), 0.3, true);
        assert_eq!(run(square(3, 70, 3.0, &device), 0.3, true), first);
        let stored =
            Tensor::<4>::from_data(square(3, 70, 3.0, &device).swap_dims(1, 2).into_data(), &device).require_grad();
        let y = causal_softmax(stored.clone().swap_dims(1, 2), 0.3);
        let grads = (y.clone() * (square(3, 70, 3.0, &device) * 1.7).cos()).sum().backward();
        assert_eq!(values(y), first.0);
        assert_eq!(values(stored.grad(&grads).unwrap().swap_dims(1, 2)), first.1);
        // Rows past one launch dimension's 32 768 cubes: 40 000 rows of T = 8.
        let many = Tensor::<1>::from_floats(
            (0..5000 * 64).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>().as_slice(),
            &device,
        )
        .reshape([5000, 1, 8, 8]);
        let cpu = Device::flex().autodiff();
        let many_cpu = Tensor::<4>::from_data(many.clone().into_data(), &cpu);
        let (gpu, cpu) = (run(many, 0.5, true), run(many_cpu, 0.5, true));
        assert!(rel_diff(&gpu.0, &cpu.0) < 1e-6 && rel_diff(&gpu.1, &cpu.1) < 1e-5, "40 000 rows: GPU vs CPU");
    }

    #[test]
    fn a_nan_score_in_a_rows_past_makes_that_row_nan() {
        // A diverged run must stay visible as NaN, not come out as ordinary probabilities.
        let mut x = vec![0.5f32; 3 * 3];
        x[3] = f32::NAN; // row 1, column 0
        let mut y = vec![0.0f32; 3];
        causal_softmax_row_simd(&x[3..6], 1, 1.0, &mut y);
        assert!(y[..2].iter().all(|v| v.is_nan()), "{y:?}");
        causal_softmax_row_simd(&x[0..3], 0, 1.0, &mut y);
        assert_eq!(y, [1.0, 0.0, 0.0]);
    }

    #[test]
    fn extreme_scores_give_no_nan() {
        let device = Device::flex().autodiff();
        for device in [device, crate::tests::wgpu().autodiff()] {
            for spread in [1e4, 1e30] {
                for fused in [true, false] {
                    let (y, g) = run(scores(1, spread, &device), 0.125, fused);
                    assert!(y.iter().chain(&g).all(|v| v.is_finite()), "spread {spread}, fused {fused}, {device:?}");
                }
            }
            // Scores this far apart make the shift by the row's largest matter: a wrong maximum
            // overflows or underflows where the tensor ops do not.
            let (fused, ops) = (run(scores(1, 1e4, &device), 0.125, true), run(scores(1, 1e4, &device), 0.125, false));
            assert!(rel_diff(&fused.0, &ops.0) < 1e-6, "spread 1e4, {device:?}: values {}", rel_diff(&fused.0, &ops.0));
        }
    }
}
