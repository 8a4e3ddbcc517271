//! LayerNorm and RMSNorm with a gain, forward and backward each one pass on all CPU cores.
//!
//! As tensor ops a norm is about eight element-wise passes over its input (square, mean,
//! add, sqrt, divide, multiply by the gain; the mean subtracted too for LayerNorm), each
//! allocating a tensor, on one thread on burn's Flex backend, and its gradient as many again.
//! SimpleNorm has six norms a block, three of them over the MLP's 4C width. Here the forward
//! reads each row once for its statistics and once to write it; the backward recomputes the
//! row's statistics (the row is in cache) and writes the input's gradient over the incoming
//! one, and the gain's gradient is summed per fixed block of rows, then over the blocks in
//! order: no atomics, and the same bits whatever the number of threads.
//!
//! On the GPU backends the same op is CubeCL kernels: one cube of 32 units per row, forward
//! and backward, each row's sums taken as a fixed tree in shared memory, and the gain's
//! gradient summed per fixed block of 64 rows, then over the blocks in order (no atomics,
//! the same bits on every run). Not under burn's fusion (the `fusion` feature), whose lazy
//! tensors this op does not take part in: there `model::Norm` keeps the tensor ops. The
//! results differ from the tensor ops by rounding (`x * (1 / s)` here, `x / s` there, and sums
//! taken in another order): simplegpt's `fused = false` runs the tensor ops, to compare.

use std::mem::MaybeUninit;

use crate::lanes;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, FloatDType, Shape, Tensor, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::{CubeCount, CubeDim};

// The specification: one row of `d` elements.

/// The row's mean (0 for RMSNorm) and `1 / sqrt(var + eps)` (`var`: the mean square of the
/// row less its mean).
#[inline(always)]
fn row_stats(x: &[f32], rms: bool, eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = if rms { 0.0 } else { lanes::sum([x], |[x]| x) / d };
    let var = lanes::sum([x], |[x]| (x - mean) * (x - mean)) / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `y = (x - mean) / sqrt(var + eps) * gain` for one row (LayerNorm; RMSNorm without the
/// mean), every element of `y` written.
#[inline(always)]
pub(crate) fn norm_row(x: &[f32], gain: &[f32], rms: bool, eps: f32, y: &mut [MaybeUninit<f32>]) {
    let (mean, rstd) = row_stats(x, rms, eps);
    for ((y, x), w) in y.iter_mut().zip(x).zip(gain) {
        y.write((x - mean) * rstd * w);
    }
}

/// The gradient of one row, given `g` (the output's gradient, overwritten with the input's)
/// and `gain_grad` (`g * xhat` is added to it). With `xhat = (x - mean) rstd` and
/// `gx = g * gain`: `rstd (gx - mean(gx) - xhat mean(gx xhat))` for LayerNorm,
/// `rstd (gx - xhat mean(gx xhat))` for RMSNorm; `mean(gx xhat)` taken as
/// `rstd mean(gx (x - mean))`.
#[inline(always)]
pub fn norm_row_backward(x: &[f32], gain: &[f32], rms: bool, eps: f32, g: &mut [f32], gain_grad: &mut [f32]) {
    let n = x.len();
    let (gain, g, gain_grad) = (&gain[..n], &mut g[..n], &mut gain_grad[..n]);
    let d = n as f32;
    let (mean, rstd) = row_stats(x, rms, eps);
    let gx_mean = if rms { 0.0 } else { lanes::sum([g, gain], |[g, w]| g * w) / d };
    let gx_xhat_mean = rstd * lanes::sum([x, g, gain], |[x, g, w]| g * w * (x - mean)) / d;
    for (((g, gain_grad), x), w) in g.iter_mut().zip(gain_grad.iter_mut()).zip(x).zip(gain) {
        let xh = (x - mean) * rstd;
        *gain_grad += *g * xh;
        *g = rstd * (*g * w - gx_mean - xh * gx_xhat_mean);
    }
}

/// `norm_row` on each row of `x` (rows of `gain.len()`): every element of `y` (as long as `x`)
/// written.
#[inline(always)]
fn norm_rows(x: &[f32], gain: &[f32], rms: bool, eps: f32, y: &mut [MaybeUninit<f32>]) {
    for (y, x) in y.chunks_exact_mut(gain.len()).zip(x.chunks_exact(gain.len())) {
        norm_row(x, gain, rms, eps, y);
    }
}

with_simd!(norm_rows_simd, norm_rows, (x: &[f32], gain: &[f32], rms: bool, eps: f32, y: &mut [MaybeUninit<f32>]));

/// `norm_row_backward` on each row of `x` (rows of `gain.len()`).
#[inline(always)]
fn norm_rows_backward(x: &[f32], gain: &[f32], rms: bool, eps: f32, g: &mut [f32], gain_grad: &mut [f32]) {
    for (g, x) in g.chunks_exact_mut(gain.len()).zip(x.chunks_exact(gain.len())) {
        norm_row_backward(x, gain, rms, eps, g, gain_grad);
    }
}

with_simd!(
    norm_rows_backward_simd,
    norm_rows_backward,
    (x: &[f32], gain: &[f32], rms: bool, eps: f32, g: &mut [f32], gain_grad: &mut [f32])
);

// The op.

/// A norm over the last dimension, with a gain of that size. `rms`: RMSNorm, else LayerNorm.
// Not on the GPU under burn's fusion (there `Cube` is `Fusion<CubeBackend>`, whose lazy
// tensors this op does not take part in: the model keeps the tensor ops there).
#[backend_extension(Cube: cfg(not(feature = "fusion")), Flex, Autodiff)]
pub trait NormOps: Backend {
    fn norm_forward(x: FloatTensor<Self>, gain: FloatTensor<Self>, rms: bool, eps: f32) -> FloatTensor<Self>;

    /// The gradients of `x` and of `gain`, given the output's.
    fn norm_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: bool,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// LayerNorm (`rms = false`) or RMSNorm (`rms = true`) of `x` over its last dimension, times
/// `gain`, differentiable. On burn's Flex (CPU) and CubeCL (wgpu, WebGPU, CUDA) backends, not
/// under burn's fusion: the caller keeps the tensor ops there.
pub fn norm<const D: usize>(x: Tensor<D>, gain: Tensor<1>, rms: bool, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::norm_forward(x.into_dispatch(), gain.into_dispatch(), rms, eps as f32))
}

/// Rows per task: about 2^14 elements, so that a task outweighs handing it to a thread. A
/// function of the row's width only, so that the gain's gradient is summed in the same
/// blocks on any machine.
fn rows_per_task(d: usize) -> usize {
    ((1 << 14) / d.max(1)).max(1)
}

impl NormOps for Flex {
    fn norm_forward(x: FloatTensor<Self>, gain: FloatTensor<Self>, rms: bool, eps: f32) -> FloatTensor<Self> {
        assert!(x.dtype() == DType::F32 && gain.dtype() == DType::F32, "the fused norm computes in f32");
        let shape = x.shape();
        let d = shape[shape.num_dims() - 1];
        let (x, gain) = (crate::contiguous_f32(x), crate::contiguous_f32(gain));
        let (x, gain): (&[f32], &[f32]) = (x.as_slice().expect("contiguous"), gain.as_slice().expect("contiguous"));
        assert_eq!(gain.len(), d, "the gain has the size of the normalised dimension");
        assert!(d > 0 && x.len() % d == 0, "whole rows of {d}");
        // SAFETY: each task writes all of its chunk (whole rows, as long as its rows of x).
        let y = unsafe {
            crate::written(x.len(), |y| {
                crate::for_each_chunk(y, rows_per_task(d) * d, |start, y| {
                    norm_rows_simd(&x[start..start + y.len()], gain, rms, eps, y)
                })
            })
        };
        FloatTensor::<Flex>::from_data(TensorData::new(y, shape))
    }

    fn norm_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: bool,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = grad.shape();
        let d = shape[shape.num_dims() - 1];
        let (x, gain) = (crate::contiguous_f32(x), crate::contiguous_f32(gain));
        let (x, gain): (&[f32], &[f32]) = (x.as_slice().expect("contiguous"), gain.as_slice().expect("contiguous"));
        // The input's gradient is written over the incoming one (its buffer when nothing else
        // holds it).
        let mut grad = crate::writable_f32(grad);
        let g: &mut [f32] = grad.try_storage_mut().expect("a buffer of its own");
        assert_eq!(g.len(), x.len(), "the gradient has the input's shape");
        let task = |(g, x): (&mut [f32], &[f32])| {
            let mut gain_grad = vec![0.0f32; d];
            norm_rows_backward_simd(x, gain, rms, eps, g, &mut gain_grad);
            gain_grad
        };
        let n = rows_per_task(d) * d;
        #[cfg(not(target_family = "wasm"))]
        let partials: Vec<Vec<f32>> = {
            use rayon::prelude::*;
            g.par_chunks_mut(n).zip(x.par_chunks(n)).map(task).collect()
        };
        #[cfg(target_family = "wasm")]
        let partials: Vec<Vec<f32>> = g.chunks_mut(n).zip(x.chunks(n)).map(task).collect();
        // The blocks' sums, added in block order.
        let mut gain_grad = vec![0.0f32; d];
        for partial in &partials {
            gain_grad.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
        }
        (grad, FloatTensor::<Flex>::from_data(TensorData::new(gain_grad, [d])))
    }
}

pub(crate) mod cube_kernel {
    use cubecl::prelude::*;

    /// Units per cube: each row's sums are trees of this many leaves. A warp's worth: on
    /// lavapipe 32 units made SimpleNorm's step faster than 64 or 256 did, where idle units
    /// still cost their barriers.
    pub const UNITS: usize = 32;
    /// Rows whose `g * xhat` one unit sums for the gain's gradient, before the blocks' sums
    /// are added in order: fixed, so that every run on a GPU gives the same bits.
    pub const ROWS_PER_BLOCK: usize = 64;

    /// The sum of every unit's `value`, as a fixed tree in `shared`; every unit gets it. Called
    /// by all units of the cube (it synchronises them).
    #[cube]
    pub fn cube_sum(value: f32, shared: &mut Shared<[f32]>) -> f32 {
        let unit = UNIT_POS_X as usize;
        shared[unit] = value;
        sync_cube();
        // The cube's size (UNITS: the launches' CubeDim) as a variable, which the loop halves
        // (a constant cannot be assigned in a loop).
        let mut stride = CUBE_DIM_X as usize / 2;
        while stride > 0 {
            if unit < stride {
                let other = shared[unit + stride];
                shared[unit] = shared[unit] + other;
            }
            sync_cube();
            stride = stride / 2;
        }
        let sum = shared[0];
        // Before the next sum writes over it.
        sync_cube();
        sum
    }

    /// The largest of every unit's `value`, as a fixed tree in `shared` (as `cube_sum`).
    #[cube]
    pub fn cube_max(value: f32, shared: &mut Shared<[f32]>) -> f32 {
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

    /// The row's mean (0 for RMSNorm) and `1 / sqrt(var + eps)`, as `row_stats`.
    #[cube]
    fn row_stats(
        x: &Tensor<f32>,
        start: usize,
        d: usize,
        eps: f32,
        shared: &mut Shared<[f32]>,
        #[comptime] rms: bool,
    ) -> (f32, f32) {
        let n = f32::cast_from(d);
        let mut mean = 0.0f32;
        if !rms {
            let mut sum = 0.0f32;
            let mut i = UNIT_POS_X as usize;
            while i < d {
                sum += x[start + i];
                i += UNITS;
            }
            mean = cube_sum(sum, shared) / n;
        }
        let mut squares = 0.0f32;
        let mut i = UNIT_POS_X as usize;
        while i < d {
            let c = x[start + i] - mean;
            squares += c * c;
            i += UNITS;
        }
        let var = cube_sum(squares, shared) / n;
        (mean, 1.0f32 / f32::sqrt(var + eps))
    }

    /// `y = (x - mean) rstd gain`, one cube per row. A cube past the last row computes row 0
    /// and writes nothing (rather than return early: every unit must reach the barriers).
    #[cube(launch_unchecked)]
    pub fn norm_forward_kernel(
        x: &Tensor<f32>,
        gain: &Tensor<f32>,
        y: &mut Tensor<f32>,
        rows: u32,
        d: u32,
        eps: f32,
        #[comptime] rms: bool,
    ) {
        let mut shared = Shared::<[f32]>::new_slice(UNITS);
        let (d, row) = (d as usize, CUBE_POS);
        let active = row < rows as usize;
        let start = select(active, row, 0) * d;
        let (mean, rstd) = row_stats(x, start, d, eps, &mut shared, rms);
        let mut i = UNIT_POS_X as usize;
        while active && i < d {
            y[start + i] = (x[start + i] - mean) * rstd * gain[i];
            i += UNITS;
        }
    }

    /// The input's gradient of one row per cube (as `norm_row_backward`), and the row's mean
    /// and rstd into `stats` for the gain's gradient.
    #[cube(launch_unchecked)]
    pub fn norm_backward_kernel(
        x: &Tensor<f32>,
        gain: &Tensor<f32>,
        g: &Tensor<f32>,
        dx: &mut Tensor<f32>,
        stats: &mut Tensor<f32>,
        rows: u32,
        d: u32,
        eps: f32,
        #[comptime] rms: bool,
    ) {
        let mut shared = Shared::<[f32]>::new_slice(UNITS);
        let (d, row) = (d as usize, CUBE_POS);
        let active = row < rows as usize;
        let start = select(active, row, 0) * d;
        let n = f32::cast_from(d);
        let (mean, rstd) = row_stats(x, start, d, eps, &mut shared, rms);
        let mut gx_mean = 0.0f32;
        if !rms {
            let mut sum = 0.0f32;
            let mut i = UNIT_POS_X as usize;
            while i < d {
                sum += g[start + i] * gain[i];
                i += UNITS;
            }
            gx_mean = cube_sum(sum, &mut shared) / n;
        }
        let mut sum = 0.0f32;
        let mut i = UNIT_POS_X as usize;
        while i < d {
            sum += g[start + i] * gain[i] * ((x[start + i] - mean) * rstd);
            i += UNITS;
        }
        let gx_xhat_mean = cube_sum(sum, &mut shared) / n;
        let mut i = UNIT_POS_X as usize;
        while active && i < d {
            let xhat = (x[start + i] - mean) * rstd;
            dx[start + i] = rstd * (g[start + i] * gain[i] - gx_mean - xhat * gx_xhat_mean);
            i += UNITS;
        }
        if active && UNIT_POS_X == 0 {
            stats[2 * row] = mean;
            stats[2 * row + 1] = rstd;
        }
    }

    /// `partial[block, j]`: the sum of `g * xhat` over the block's rows of column `j`, in row
    /// order; one unit per (column, block), the block in `CUBE_POS_Y`.
    #[cube(launch_unchecked)]
    pub fn gain_grad_blocks_kernel(
        x: &Tensor<f32>,
        g: &Tensor<f32>,
        stats: &Tensor<f32>,
        partial: &mut Tensor<f32>,
        rows: u32,
        d: u32,
    ) {
        let (d, j, block) = (d as usize, ABSOLUTE_POS_X as usize, CUBE_POS_Y as usize);
        if j >= d {
            terminate!();
        }
        let first = block * ROWS_PER_BLOCK;
        let rows = rows as usize;
        let end = select(first + ROWS_PER_BLOCK < rows, first + ROWS_PER_BLOCK, rows);
        let mut sum = 0.0f32;
        let mut row = first;
        while row < end {
            sum += g[row * d + j] * ((x[row * d + j] - stats[2 * row]) * stats[2 * row + 1]);
            row += 1;
        }
        partial[block * d + j] = sum;
    }

    /// The gain's gradient: the blocks' sums of each column, added in block order.
    #[cube(launch_unchecked)]
    pub fn sum_blocks_kernel(partial: &Tensor<f32>, gain_grad: &mut Tensor<f32>, blocks: u32, d: u32) {
        let (d, j) = (d as usize, ABSOLUTE_POS);
        if j >= d {
            terminate!();
        }
        let mut sum = 0.0f32;
        for block in 0..blocks as usize {
            sum += partial[block * d + j];
        }
        gain_grad[j] = sum;
    }
}

/// One cube per row: as many cubes as rows, laid out in two dimensions (one dimension of a
/// launch is limited to 65535 cubes).
pub(crate) fn cube_per_row(rows: usize) -> CubeCount {
    let x = rows.clamp(1, 32768);
    CubeCount::Static(x as u32, rows.div_ceil(x).max(1) as u32, 1)
}

/// The rows (all dimensions but the last) and the row's length.
fn rows_and_width(shape: &Shape) -> (usize, usize) {
    let d = shape[shape.num_dims() - 1];
    (shape.num_elements() / d.max(1), d)
}

fn empty_like(t: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(t.client.clone(), t.device.clone(), shape, DType::F32)
}

impl NormOps for CubeBackend {
    fn norm_forward(x: FloatTensor<Self>, gain: FloatTensor<Self>, rms: bool, eps: f32) -> FloatTensor<Self> {
        assert!(x.dtype == DType::F32 && gain.dtype == DType::F32, "the fused norm computes in f32");
        let (x, gain) = (into_contiguous(x), into_contiguous(gain));
        let shape = x.shape();
        let (rows, d) = rows_and_width(&shape);
        assert_eq!(gain.shape().num_elements(), d, "the gain has the size of the normalised dimension");
        let y = empty_like(&x, shape);
        if rows * d == 0 {
            return y;
        }
        // SAFETY: every index the kernel reads or writes is below rows * d (or d, for the gain).
        unsafe {
            cube_kernel::norm_forward_kernel::launch_unchecked(
                &x.client,
                cube_per_row(rows),
                CubeDim::new_1d(cube_kernel::UNITS as u32),
                x.clone().into_tensor_arg(),
                gain.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                rows as u32,
                d as u32,
                eps,
                rms,
            );
        }
        y
    }

    fn norm_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: bool,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        assert!(x.dtype == DType::F32 && grad.dtype == DType::F32, "the fused norm computes in f32");
        let (x, gain, grad) = (into_contiguous(x), into_contiguous(gain), into_contiguous(grad));
        let shape = x.shape();
        let (rows, d) = rows_and_width(&shape);
        if rows * d == 0 {
            let device = x.device.clone();
            return (empty_like(&x, shape), Self::float_zeros(Shape::new([d]), &device, FloatDType::F32));
        }
        let client = x.client.clone();
        let dx = empty_like(&x, shape);
        let stats = empty_like(&x, Shape::new([rows, 2]));
        let blocks = rows.div_ceil(cube_kernel::ROWS_PER_BLOCK);
        // One launch dimension holds at most 65535 cubes: 4 million rows of one norm.
        assert!(
            blocks <= 65535,
            "the fused norm's backward takes at most {} rows",
            65535 * cube_kernel::ROWS_PER_BLOCK
        );
        let partial = empty_like(&x, Shape::new([blocks, d]));
        let gain_grad = empty_like(&x, Shape::new([d]));
        let columns = CubeDim::new_1d(cube_kernel::UNITS as u32);
        let column_cubes = d.div_ceil(cube_kernel::UNITS) as u32;
        // SAFETY: as the forward's; the column kernels check j < d before they touch memory.
        unsafe {
            cube_kernel::norm_backward_kernel::launch_unchecked(
                &client,
                cube_per_row(rows),
                columns,
                x.clone().into_tensor_arg(),
                gain.into_tensor_arg(),
                grad.clone().into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                stats.clone().into_tensor_arg(),
                rows as u32,
                d as u32,
                eps,
                rms,
            );
            cube_kernel::gain_grad_blocks_kernel::launch_unchecked(
                &client,
                CubeCount::Static(column_cubes, blocks as u32, 1),
                columns,
                x.into_tensor_arg(),
                grad.into_tensor_arg(),
                stats.into_tensor_arg(),
                partial.clone().into_tensor_arg(),
                rows as u32,
                d as u32,
            );
            cube_kernel::sum_blocks_kernel::launch_unchecked(
                &client,
                calculate_cube_count_elemwise(&client, d, columns),
                columns,
                partial.into_tensor_arg(),
                gain_grad.clone().into_tensor_arg(),
                blocks as u32,
                d as u32,
            );
        }
        (dx, gain_grad)
    }
}

/// Under autodiff: the inner backend's `norm_forward`, and its `norm_backward` for the
/// gradients of the input and the gain.
impl<B: NormOps, C: CheckpointStrategy> NormOps for Autodiff<B, C> {
    fn norm_forward(x: FloatTensor<Self>, gain: FloatTensor<Self>, rms: bool, eps: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct NormBackward;

        impl<B: NormOps> Backward<B, 2> for NormBackward {
            type State = (NodeId, NodeId, bool, f32);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x, node_gain] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gain, rms, eps) = ops.state;
                let x = checkpointer.retrieve_node_output(x);
                let gain = checkpointer.retrieve_node_output(gain);
                let (x_grad, gain_grad) = B::norm_backward(x, gain, grad, rms, eps);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, x_grad);
                }
                if let Some(node) = node_gain {
                    grads.register::<B>(node.id, gain_grad);
                }
            }
        }

        match NormBackward.prepare::<C>([x.node(), gain.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gain), rms, eps);
                prep.finish(state, B::norm_forward(x.into_primitive(), gain.into_primitive(), rms, eps))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::norm_forward(x.into_primitive(), gain.into_primitive(), rms, eps))
            }
        }
    }

    fn norm_backward(
        _x: FloatTensor<Self>,
        _gain: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _rms: bool,
        _eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        panic!("the norm's backward is not differentiable (no second derivatives)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    const EPS: f64 = 1e-5;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The same norm as tensor ops (simplegpt's `model::Norm` unfused).
    fn unfused<const D: usize>(x: Tensor<D>, gain: Tensor<1>, rms: bool) -> Tensor<D> {
        let x = if rms {
            let rms = (x.clone().square().mean_dim(D - 1) + EPS).sqrt();
            x / rms
        } else {
            let x = x.clone() - x.mean_dim(D - 1);
            let std = (x.clone().square().mean_dim(D - 1) + EPS).sqrt();
            x / std
        };
        x * gain.unsqueeze()
    }

    /// [5, 300, 45]: rows of 45 (not a multiple of the 16 lanes), 1500 rows, so several tasks
    /// of `rows_per_task(45)` = 364 rows, the last one partial. Values of several scales and
    /// a nonzero mean.
    fn input(device: &Device) -> Tensor<3> {
        let xs: Vec<f32> = (0..5 * 300 * 45).map(|i| (i as f32 * 0.37).sin() * (1.0 + (i % 7) as f32) + 0.3).collect();
        Tensor::<1>::from_floats(xs.as_slice(), device).reshape([5, 300, 45])
    }

    fn gain(device: &Device) -> Tensor<1> {
        let g: Vec<f32> = (0..45).map(|i| 0.5 + (i as f32 * 0.11).cos()).collect();
        Tensor::from_floats(g.as_slice(), device)
    }

    /// The largest difference, relative to the largest magnitude of `want`.
    fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    }

    /// A norm's values, and the gradients of its input and its gain.
    type Outputs = (Vec<f32>, Vec<f32>, Vec<f32>);

    /// Values, and the gradients of the input and the gain under a weighted sum.
    fn run(x: Tensor<3>, g: Tensor<1>, rms: bool, fused: bool) -> Outputs {
        let (x, g) = (x.require_grad(), g.require_grad());
        let y = if fused { norm(x.clone(), g.clone(), rms, EPS) } else { unfused(x.clone(), g.clone(), rms) };
        let weights = input(&x.device()).cos();
        let grads = (y.clone() * weights).sum().backward();
        (values(y), values(x.grad(&grads).unwrap()), values(g.grad(&grads).unwrap()))
    }

    #[test]
    fn values_and_gradients_are_the_tensor_ops_up_to_rounding() {
        for device in [Device::flex().autodiff(), crate::tests::wgpu().autodiff()] {
            values_and_gradients_match(&device);
        }
    }

    fn values_and_gradients_match(device: &Device) {
        for rms in [false, true] {
            let fused = run(input(device), gain(device), rms, true);
            let ops = run(input(device), gain(device), rms, false);
            assert_within_rounding(&fused, &ops, rms);
        }
    }

    /// The fused op's values and gradients against the tensor ops': equal up to rounding.
    fn assert_within_rounding(fused: &Outputs, ops: &Outputs, rms: bool) {
        assert!(rel_diff(&fused.0, &ops.0) < 1e-6, "rms {rms}: values {}", rel_diff(&fused.0, &ops.0));
        assert!(rel_diff(&fused.1, &ops.1) < 1e-5, "rms {rms}: input's gradient {}", rel_diff(&fused.1, &ops.1));
        assert!(rel_diff(&fused.2, &ops.2) < 1e-5, "rms {rms}: gain's gradient {}", rel_diff(&fused.2, &ops.2));
    }

    /// `run` on `xs` as rows of `g.len()`, with the gain `g` and the weights `cos(x)`.
    fn run_rows(xs: &[f32], g: &[f32], device: &Device, rms: bool, fused: bool) -> Outputs {
        let x = Tensor::<1>::from_floats(xs, device).reshape([xs.len() / g.len(), g.len()]).require_grad();
        let gain = Tensor::<1>::from_floats(g, device).require_grad();
        let y = if fused { norm(x.clone(), gain.clone(), rms, EPS) } else { unfused(x.clone(), gain.clone(), rms) };
        let grads = (y.clone() * x.clone().detach().cos()).sum().backward();
        (values(y), values(x.grad(&grads).unwrap()), values(gain.grad(&grads).unwrap()))
    }

    #[test]
    fn the_same_bits_on_one_thread_as_on_all() {
        let device = Device::flex().autodiff();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for rms in [false, true] {
            let all = run(input(&device), gain(&device), rms, true);
            assert_eq!(one.install(|| run(input(&device), gain(&device), rms, true)), all, "rms {rms}");
        }
    }

    /// The row loops compiled for the machine's SIMD (AVX-512 or AVX2 where it has them) give
    /// the bits of the baseline build of the same loops: rows of 45 (lanes and a tail) and of
    /// 384 (lanes only).
    #[test]
    fn the_simd_loops_give_the_baseline_bits() {
        for d in [45, 384] {
            let x: Vec<f32> = (0..7 * d).map(|i| (i as f32 * 0.37).sin() * (1.0 + (i % 7) as f32) + 0.3).collect();
            let gain: Vec<f32> = (0..d).map(|i| 0.5 + (i as f32 * 0.11).cos()).collect();
            let g: Vec<f32> = x.iter().map(|v| (v * 3.0).cos()).collect();
            for rms in [false, true] {
                // SAFETY: norm_rows writes all of y.
                let y_simd = unsafe { crate::written(x.len(), |y| norm_rows_simd(&x, &gain, rms, 1e-5, y)) };
                let y_base = unsafe { crate::written(x.len(), |y| norm_rows(&x, &gain, rms, 1e-5, y)) };
                let (mut g_simd, mut g_base) = (g.clone(), g.clone());
                let (mut gain_simd, mut gain_base) = (vec![0.0; d], vec![0.0; d]);
                norm_rows_backward_simd(&x, &gain, rms, 1e-5, &mut g_simd, &mut gain_simd);
                norm_rows_backward(&x, &gain, rms, 1e-5, &mut g_base, &mut gain_base);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y_simd), bits(&y_base), "d {d}, rms {rms}: values");
                assert_eq!(bits(&g_simd), bits(&g_base), "d {d}, rms {rms}: input's gradient");
                assert_eq!(bits(&gain_simd), bits(&gain_base), "d {d}, rms {rms}: gain's gradient");
            }
        }
    }

    /// The GPU kernels: the same bits on every run (fixed trees, no atomics), and rows wider
    /// than a cube's units (several elements per unit) and more rows than one block.
    #[test]
    fn the_gpu_kernels_give_the_same_bits_twice_and_take_wide_rows() {
        let device = crate::tests::wgpu().autodiff();
        // [150, 700]: rows of 700 (about 22 per unit), 150 rows (three blocks of 64, the last
        // partial).
        let xs: Vec<f32> = (0..150 * 700).map(|i| (i as f32 * 0.013).sin() * 2.0 - 0.4).collect();
        let g: Vec<f32> = (0..700).map(|i| 1.0 + (i as f32 * 0.07).cos() * 0.5).collect();
        for rms in [false, true] {
            assert_eq!(
                run(input(&device), gain(&device), rms, true),
                run(input(&device), gain(&device), rms, true),
                "rms {rms}"
            );
            let (fused, ops) = (run_rows(&xs, &g, &device, rms, true), run_rows(&xs, &g, &device, rms, false));
            assert_within_rounding(&fused, &ops, rms);
        }
    }

    /// 40 000 rows of 8: more rows than one launch dimension's cubes (the second dimension and
    /// the cubes past the last row), rows narrower than a cube.
    #[test]
    fn the_gpu_kernels_take_many_narrow_rows() {
        let device = crate::tests::wgpu().autodiff();
        let xs: Vec<f32> = (0..40_000 * 8).map(|i| (i as f32 * 0.31).sin() + (i % 5) as f32 * 0.2).collect();
        let g: Vec<f32> = (0..8).map(|i| 0.5 + i as f32 * 0.1).collect();
        for rms in [false, true] {
            let (fused, ops) = (run_rows(&xs, &g, &device, rms, true), run_rows(&xs, &g, &device, rms, false));
            assert_within_rounding(&fused, &ops, rms);
        }
    }

    #[test]
    fn a_strided_input_gives_the_same_values_and_gradients() {
        for device in [Device::flex().autodiff(), crate::tests::wgpu().autodiff()] {
            strided_input_matches(device);
        }
    }

    fn strided_input_matches(device: Device) {
        for rms in [false, true] {
            let contiguous = run(input(&device), gain(&device), rms, true);
            // The same values stored [5, 45, 300], read through a transposed view.
            let stored = Tensor::<3>::from_data(input(&device).swap_dims(1, 2).into_data(), &device).require_grad();
            let y = norm(stored.clone().swap_dims(1, 2), gain(&device), rms, EPS);
            let grads = (y.clone() * input(&device).cos()).sum().backward();
            assert_eq!(values(y), contiguous.0, "rms {rms}");
            assert_eq!(values(stored.grad(&grads).unwrap().swap_dims(1, 2)), contiguous.1, "rms {rms}");
        }
    }

    #[test]
    fn constant_and_huge_rows_stay_finite_where_the_tensor_ops_do() {
        for device in [Device::flex().autodiff(), crate::tests::wgpu().autodiff()] {
            rows_stay_finite(device);
        }
    }

    fn rows_stay_finite(device: Device) {
        // Row 0 constant (variance 0), row 1 around 1e15, row 2 tiny values.
        let mut xs = vec![3.0f32; 45];
        xs.extend((0..45).map(|i| 1e15 * (1.0 + i as f32 * 0.01)));
        xs.extend((0..45).map(|i| 1e-20 * i as f32));
        let x = || Tensor::<1>::from_floats(xs.as_slice(), &device).reshape([1, 3, 45]);
        for rms in [false, true] {
            for fused in [true, false] {
                let (x, g) = (x().require_grad(), gain(&device).require_grad());
                let y = if fused { norm(x.clone(), g.clone(), rms, EPS) } else { unfused(x.clone(), g.clone(), rms) };
                let grads = y.clone().sum().backward();
                let all = [values(y), values(x.grad(&grads).unwrap()), values(g.grad(&grads).unwrap())];
                assert!(all.iter().flatten().all(|v| v.is_finite()), "rms {rms}, fused {fused}: {all:?}");
            }
        }
    }
}
