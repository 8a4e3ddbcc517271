//! Causal self-attention as one op, flash-style: `y = dropout(softmax(scale q k^T, causal)) v`
//! without the [B, nh, T, T] weights ever kept.
//!
//! As tensor ops (simplegpt's `model::Attention` with `fused = false`) the attention keeps
//! the scores, the probabilities, the dropout mask and the dropped probabilities, four
//! tensors of B nh T^2 elements a layer (at nanoGPT's shakespeare_char size 25 M elements
//! each; at context 1024, 16 times that). Here the forward keeps only `y` and two numbers per
//! query row (its largest scaled score and its sum of exponentials), and the backward
//! recomputes the probabilities from them. What is kept grows with T, not T^2.
//!
//! Dropout happens inside: the probability of query `i` for key `j` in head `h` of sequence
//! `b` is dropped by the same keyed hash of its index in the [B, nh, T, T] weights as
//! `dropout` draws (`dropout::feistel30`), so the fused and unfused paths, and every backend,
//! drop the same weights.
//!
//! On the CPU each (sequence, head) is one task, the tasks spread over all cores; its blocks of `QUERY_BLOCK`
//! query rows take `gemm` products only over the keys they see (the causal half, rounded up
//! to a block), and the backward adds each block's share of the keys' gradients in block
//! order: the same bits for any number of threads, and a scratch of two [QUERY_BLOCK, T]
//! matrices per task.
//!
//! On the GPU backends (CubeCL kernels: WGSL for wgpu and WebGPU, CUDA) each unit of a cube
//! of 32 has one query row (the forward, the queries' gradient) or one key row (the keys' and
//! values' gradients) in registers, and the cube brings the other side through shared memory
//! a tile of rows at a time; each unit goes through its keys (or queries) in order, so every
//! run gives the same bits, with no atomics. The forward is flash attention's online softmax.
//! Not under burn's fusion (the `fusion` feature), where `model::Attention` keeps the tensor
//! ops.

use crate::dropout::{MASK_MAX_ELEMENTS, feistel30, round_keys};
use crate::gelu::exp_nonpositive;
use crate::lanes;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::{CubeCount, CubeDim, SequenceArg};

/// Dropout of the attention's weights: `key` and `prob` as `dropout` takes them.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDropout {
    pub key: u64,
    pub prob: f64,
}

/// The hash's threshold and the kept weights' scale, as `dropout` computes them; no dropout is
/// threshold 0 (every hash is at or above it) and scale 1.
fn threshold_and_scale(dropout: Option<AttentionDropout>) -> (u64, u32, f32) {
    match dropout {
        Some(AttentionDropout { key, prob }) if prob > 0.0 => {
            (key, crate::dropout::keep_threshold(prob), (1.0 / (1.0 - prob)) as f32)
        }
        _ => (0, 0, 1.0),
    }
}

#[backend_extension(Cube: cfg(not(feature = "fusion")), Flex, Autodiff)]
pub trait CausalAttentionOps: Backend {
    /// `y` [B, nh, T, hs] from `q`, `k`, `v` [B, nh, T, hs], and each query row's statistics
    /// [B, nh, T, 2]: its largest scaled score and its sum of exponentials. The weights are
    /// dropped where `feistel30(index, round_keys(key)) < threshold` and the rest times
    /// `keep_scale`.
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        key: u64,
        threshold: u32,
        keep_scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of `q`, `k` and `v` given the forward's output `y`, its statistics and
    /// `y`'s gradient.
    #[allow(clippy::too_many_arguments)]
    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        y: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
        key: u64,
        threshold: u32,
        keep_scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `dropout(softmax(scale q k^T), with the future masked) v` for `q`, `k`, `v` [B, nh, T, hs]
/// (any strides), differentiable: the attention of `model::Attention` as one op.
pub fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    dropout: Option<AttentionDropout>,
) -> Tensor<4> {
    let [b, nh, t, hs] = q.dims();
    assert!(
        k.dims() == [b, nh, t, hs] && v.dims() == [b, nh, t, hs],
        "attention of q, k, v of one shape [B, nh, T, hs]"
    );
    let (key, threshold, keep_scale) = threshold_and_scale(dropout);
    // The hash permutes 30-bit indices (config validation keeps the weights within that).
    let weights = [b, nh, t, t].iter().fold(1usize, |n, d| n.saturating_mul(*d));
    assert!(threshold == 0 || weights <= MASK_MAX_ELEMENTS, "attention weights over 2^30 elements");
    let (y, _stats) = Dispatch::causal_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale as f32,
        key,
        threshold,
        keep_scale,
    );
    Tensor::from_dispatch(y)
}

// The CPU.

/// Query rows per block: the scratch of a task is two [QUERY_BLOCK, T] matrices.
const QUERY_BLOCK: usize = 64;

/// Where a matrix's element [0, 0] is, and its row and column strides (elements).
#[derive(Clone, Copy)]
struct Matrix {
    at: *const f32,
    rows: isize,
    cols: isize,
}

impl Matrix {
    /// The matrix from row `i` on.
    fn from_row(self, i: usize) -> Matrix {
        // SAFETY (of the offset): callers ask for rows of the matrix.
        Matrix { at: unsafe { self.at.offset(i as isize * self.rows) }, ..self }
    }

    fn transposed(self) -> Matrix {
        Matrix { at: self.at, rows: self.cols, cols: self.rows }
    }

    /// Element [i, c]. SAFETY: the caller reads within the matrix.
    unsafe fn get(self, i: usize, c: usize) -> f32 {
        unsafe { *self.at.offset(i as isize * self.rows + c as isize * self.cols) }
    }
}

/// The [hs] rows of one (sequence, head) of a [B, nh, T, hs] tensor, any strides.
struct Heads<'a> {
    data: &'a [f32],
    first: usize,
    strides: [isize; 4],
    n_head: usize,
}

impl<'a> Heads<'a> {
    fn of(t: &'a FloatTensor<Flex>) -> Heads<'a> {
        let s = t.layout().strides();
        Heads {
            data: t.storage(),
            first: t.layout().start_offset(),
            strides: [s[0], s[1], s[2], s[3]],
            n_head: t.shape()[1],
        }
    }

    /// The [T, hs] matrix of sequence `bh / nh`, head `bh % nh`.
    fn matrix(&self, bh: usize) -> Matrix {
        let (b, h) = (bh / self.n_head, bh % self.n_head);
        let offset = self.first as isize + b as isize * self.strides[0] + h as isize * self.strides[1];
        assert!(offset >= 0 && (offset as usize) < self.data.len().max(1), "a head within its buffer");
        // SAFETY: burn's layouts keep a view within its buffer.
        Matrix { at: unsafe { self.data.as_ptr().offset(offset) }, rows: self.strides[2], cols: self.strides[3] }
    }
}

/// `dst [m, n]` (rows `dst_rows` apart, columns adjacent) `= a [m, k] b [k, n]`, plus what
/// `dst` held when `accumulate`; on this thread.
///
/// SAFETY: `a`, `b` and `dst` are matrices of those sizes within their buffers, and `dst`
/// overlaps neither.
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rows: usize,
    accumulate: bool,
    a: Matrix,
    b: Matrix,
) {
    if m == 0 || n == 0 {
        return;
    }
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rows as isize,
            accumulate,
            a.at,
            a.cols,
            a.rows,
            b.at,
            b.cols,
            b.rows,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The index in the [B, nh, T, T] weights of head `bh`'s query `i`, key 0, modulo 2^32:
/// the dropout's hash reads it only when the weights are within 2^30 elements (a tensor too
/// large wraps harmlessly where nothing is dropped).
fn weight_index(bh: usize, i: usize, t: usize) -> u32 {
    let t = t as u32;
    (bh as u32).wrapping_mul(t).wrapping_add(i as u32).wrapping_mul(t)
}

/// What a task needs to know of the dropout: the round keys, the threshold, the scale.
#[derive(Clone, Copy)]
struct Mask {
    keys: [u32; 5],
    threshold: u32,
    scale: f32,
}

impl Mask {
    /// The kept weight's factor for element `index` of the [B, nh, T, T] weights: the scale,
    /// or 0 where it is dropped.
    #[inline(always)]
    fn factor(&self, index: u32) -> f32 {
        if feistel30(index, &self.keys) >= self.threshold { self.scale } else { 0.0 }
    }
}

/// Sums in eight interleaved lanes, then the lanes in order: the rows of a matrix of any
/// strides (`lanes::sum` takes slices).
fn strided_sum(xs: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0.0f32; 8];
    for (i, x) in xs.enumerate() {
        lanes[i % 8] += x;
    }
    lanes.iter().sum()
}

/// Row `i`'s probabilities over its scores `s[..=i]`, written over them (the future, up to
/// the block's last key, set to 0), and the two numbers that recompute them: the largest
/// scaled score and the sum of exponentials. The exponential is GELU's branch-free one (its
/// arguments here are never positive), so the loop vectorises.
#[inline(always)]
fn probabilities(s: &mut [f32], i: usize, scale: f32) -> [f32; 2] {
    let (past, future) = s.split_at_mut(i + 1);
    let m = lanes::max(past, |v| v * scale);
    past.iter_mut().for_each(|x| *x = exp_nonpositive(*x * scale - m));
    let sum = lanes::sum([past], |[p]| p);
    past.iter_mut().for_each(|p| *p /= sum);
    future.fill(0.0);
    [m, sum]
}

/// The forward's work on one block's [rows, n] scores (query rows `i0..`, keys `0..n`):
/// probabilities, then dropped, in place; each row's statistics into `stats`. `base` is the
/// index of the block's first weight in the [B, nh, T, T] weights, `t` T.
#[inline(always)]
fn forward_rows(s: &mut [f32], n: usize, i0: usize, scale: f32, stats: &mut [f32], drop: Mask, base: u32, t: usize) {
    for (r, (row, stats)) in s.chunks_exact_mut(n).zip(stats.chunks_exact_mut(2)).enumerate() {
        let i = i0 + r;
        stats.copy_from_slice(&probabilities(row, i, scale));
        if drop.threshold > 0 {
            let first = base.wrapping_add((r * t) as u32);
            for (j, p) in row[..=i].iter_mut().enumerate() {
                *p *= drop.factor(first.wrapping_add(j as u32));
            }
        }
    }
}

with_simd!(
    forward_rows_simd,
    forward_rows,
    (s: &mut [f32], n: usize, i0: usize, scale: f32, stats: &mut [f32], drop: Mask, base: u32, t: usize)
);

/// The backward's work on one block: from the scores `s` and the dropped weights' gradient
/// `dp` (`dy v^T`), both [rows, n], writes over `s` the dropped weights and over `dp` the
/// scores' gradient `scale p (dp m - dot)`, `m` the dropout factor and `dot` the row's
/// `dy . y`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    s: &mut [f32],
    dp: &mut [f32],
    n: usize,
    i0: usize,
    scale: f32,
    stats: &[f32],
    dots: &[f32],
    drop: Mask,
    base: u32,
    t: usize,
) {
    let rows = s.chunks_exact_mut(n).zip(dp.chunks_exact_mut(n));
    for (r, ((s, dp), (stats, dot))) in rows.zip(stats.chunks_exact(2).zip(dots)).enumerate() {
        let (i, m, sum) = (i0 + r, stats[0], stats[1]);
        let first = base.wrapping_add((r * t) as u32);
        for (j, (s, dp)) in s[..=i].iter_mut().zip(&mut dp[..=i]).enumerate() {
            let p = exp_nonpositive(*s * scale - m) / sum;
            let factor = if drop.threshold > 0 { drop.factor(first.wrapping_add(j as u32)) } else { 1.0 };
            *s = p * factor;
            *dp = scale * p * (*dp * factor - dot);
        }
        s[i + 1..].fill(0.0);
        dp[i + 1..].fill(0.0);
    }
}

with_simd!(
    backward_rows_simd,
    backward_rows,
    (s: &mut [f32], dp: &mut [f32], n: usize, i0: usize, scale: f32, stats: &[f32], dots: &[f32], drop: Mask, base: u32, t: usize)
);

/// Runs `task(bh, outputs...)` for every (sequence, head) `bh`, each with its own [T, width]
/// part of each output, on all cores natively.
fn for_each_head<const N: usize>(outputs: [&mut [f32]; N], heads: usize, task: impl Fn(usize, [&mut [f32]; N]) + Sync) {
    if heads == 0 || outputs.iter().any(|o| o.is_empty()) {
        return;
    }
    let mut parts = outputs.map(|o| {
        let per_head = o.len() / heads;
        o.chunks_mut(per_head)
    });
    let parts: Vec<[&mut [f32]; N]> =
        (0..heads).map(|_| std::array::from_fn(|o| parts[o].next().expect("a part per head"))).collect();
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        parts.into_par_iter().enumerate().for_each(|(bh, parts)| task(bh, parts));
    }
    #[cfg(target_family = "wasm")]
    parts.into_iter().enumerate().for_each(|(bh, parts)| task(bh, parts));
}

fn f32_tensor(values: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FloatTensor<Flex> {
    FloatTensor::<Flex>::from_data(TensorData::new(values, shape.into()))
}

impl CausalAttentionOps for Flex {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        key: u64,
        threshold: u32,
        keep_scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        assert!([&q, &k, &v].iter().all(|x| x.dtype() == DType::F32), "the fused attention computes in f32");
        let [b, nh, t, hs] = q.shape().dims::<4>();
        let drop = Mask { keys: round_keys(key), threshold, scale: keep_scale };
        let (qs, ks, vs) = (Heads::of(&q), Heads::of(&k), Heads::of(&v));
        let mut y = vec![0.0f32; b * nh * t * hs];
        let mut stats = vec![0.0f32; b * nh * t * 2];
        for_each_head([&mut y, &mut stats], b * nh, |bh, [y, stats]| {
            let (q, k, v) = (qs.matrix(bh), ks.matrix(bh), vs.matrix(bh));
            let mut s = vec![0.0f32; QUERY_BLOCK.min(t) * t];
            for i0 in (0..t).step_by(QUERY_BLOCK) {
                // Rows i0..i0 + rows see keys 0..n.
                let (rows, n) = (QUERY_BLOCK.min(t - i0), (i0 + QUERY_BLOCK).min(t));
                let s = &mut s[..rows * n];
                // SAFETY: q, k, v are [T, hs] within their buffers; s is [rows, n], y's part
                // [T, hs]: rows i0..i0 + rows of it.
                unsafe { product(rows, n, hs, s.as_mut_ptr(), n, false, q.from_row(i0), k.transposed()) };
                let base = weight_index(bh, i0, t);
                forward_rows_simd(s, n, i0, scale, &mut stats[2 * i0..2 * (i0 + rows)], drop, base, t);
                let y = y[i0 * hs..].as_mut_ptr();
                let p = Matrix { at: s.as_ptr(), rows: n as isize, cols: 1 };
                unsafe { product(rows, hs, n, y, hs, false, p, v) };
            }
        });
        (f32_tensor(y, [b, nh, t, hs]), f32_tensor(stats, [b, nh, t, 2]))
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        y: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
        key: u64,
        threshold: u32,
        keep_scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [b, nh, t, hs] = q.shape().dims::<4>();
        let drop = Mask { keys: round_keys(key), threshold, scale: keep_scale };
        let (y, stats) = (crate::contiguous_f32(y), crate::contiguous_f32(stats));
        let (ys, all_stats): (&[f32], &[f32]) =
            (y.as_slice().expect("contiguous"), stats.as_slice().expect("contiguous"));
        let (qs, ks, vs, gs) = (Heads::of(&q), Heads::of(&k), Heads::of(&v), Heads::of(&grad));
        let (mut dq, mut dk, mut dv) =
            (vec![0.0f32; b * nh * t * hs], vec![0.0f32; b * nh * t * hs], vec![0.0f32; b * nh * t * hs]);
        for_each_head([&mut dq, &mut dk, &mut dv], b * nh, |bh, [dq, dk, dv]| {
            let (q, k, v, g) = (qs.matrix(bh), ks.matrix(bh), vs.matrix(bh), gs.matrix(bh));
            let y = &ys[bh * t * hs..(bh + 1) * t * hs];
            let stats = &all_stats[bh * t * 2..(bh + 1) * t * 2];
            // Each row's dy . y: the sum over keys of p dp (dropped weights times their
            // gradient), which the softmax's backward subtracts.
            // SAFETY: g is [T, hs] within its buffer.
            let dots: Vec<f32> =
                (0..t).map(|i| strided_sum((0..hs).map(|c| unsafe { g.get(i, c) } * y[i * hs + c]))).collect();
            let mut s = vec![0.0f32; QUERY_BLOCK.min(t) * t];
            let mut dp = vec![0.0f32; QUERY_BLOCK.min(t) * t];
            for i0 in (0..t).step_by(QUERY_BLOCK) {
                let (rows, n) = (QUERY_BLOCK.min(t - i0), (i0 + QUERY_BLOCK).min(t));
                let (s, dp) = (&mut s[..rows * n], &mut dp[..rows * n]);
                // SAFETY: as the forward's; dq, dk, dv are this head's [T, hs].
                unsafe {
                    product(rows, n, hs, s.as_mut_ptr(), n, false, q.from_row(i0), k.transposed());
                    product(rows, n, hs, dp.as_mut_ptr(), n, false, g.from_row(i0), v.transposed());
                }
                let base = weight_index(bh, i0, t);
                let block = i0..i0 + rows;
                backward_rows_simd(s, dp, n, i0, scale, &stats[2 * i0..2 * block.end], &dots[block], drop, base, t);
                let (p, ds) = (
                    Matrix { at: s.as_ptr(), rows: n as isize, cols: 1 },
                    Matrix { at: dp.as_ptr(), rows: n as isize, cols: 1 },
                );
                unsafe {
                    // dv[0..n] += p^T dy, dq[block] = ds k[0..n], dk[0..n] += ds^T q[block].
                    product(n, hs, rows, dv.as_mut_ptr(), hs, true, p.transposed(), g.from_row(i0));
                    product(rows, hs, n, dq[i0 * hs..].as_mut_ptr(), hs, false, ds, k);
                    product(n, hs, rows, dk.as_mut_ptr(), hs, true, ds.transposed(), q.from_row(i0));
                }
            }
        });
        let shape = [b, nh, t, hs];
        (f32_tensor(dq, shape), f32_tensor(dk, shape), f32_tensor(dv, shape))
    }
}

mod cube_kernel {
    use crate::dropout::cube_kernel::keep_factor;
    use cubecl::prelude::*;

    /// Rows of queries (forward, the queries' gradient) or of keys (the keys' gradient) per
    /// cube: one per unit.
    pub const UNITS: usize = 32;

    /// Rows `first..` (at most `tile`, those below `end`) of a [rows, width] row-major
    /// tensor into `shared`, all units together.
    #[cube]
    fn load_rows(
        src: &Tensor<f32>,
        first: usize,
        end: usize,
        shared: &mut Shared<[f32]>,
        #[comptime] tile: usize,
        #[comptime] width: usize,
    ) {
        let rows = select(end - first < tile, end - first, tile);
        let mut n = UNIT_POS_X as usize;
        while n < rows * width {
            shared[n] = src[first * width + n];
            n += UNITS;
        }
    }

    /// Row `row` of a [rows, hs] tensor into registers.
    #[cube]
    fn load_row(src: &Tensor<f32>, row: usize, #[comptime] hs: usize) -> Array<f32> {
        let mut out = Array::<f32>::new(hs);
        #[unroll]
        for c in 0..hs {
            out[c] = src[row * hs + c];
        }
        out
    }

    /// `a . shared[u hs..(u + 1) hs]`, in order.
    #[cube]
    fn dot(a: &Array<f32>, shared: &Shared<[f32]>, u: usize, #[comptime] hs: usize) -> f32 {
        let mut sum = 0.0f32;
        #[unroll]
        for c in 0..hs {
            sum += a[c] * shared[u * hs + c];
        }
        sum
    }

    /// Which rows a cube has: cube `h blocks + b` holds rows `b UNITS..` of head `h` (of
    /// `heads`, each T rows); `None` past the last head (the launch's cube count rounds up).
    /// Returns (the head's first row, the block's first position, this unit's position,
    /// whether that position is below T, its row clamped into the head).
    #[cube]
    fn place(t: usize, heads: usize) -> (usize, usize, usize, bool, usize) {
        let blocks = (t + UNITS - 1) / UNITS;
        if CUBE_POS >= heads * blocks {
            terminate!();
        }
        let (first, start) = ((CUBE_POS / blocks) * t, (CUBE_POS % blocks) * UNITS);
        let position = start + UNIT_POS_X as usize;
        let active = position < t;
        (first, start, position, active, first + select(active, position, t - 1))
    }

    /// One query row per unit, UNITS rows of one head per cube. The keys come through shared
    /// memory `tile` rows at a time, each unit taking them in order: the running largest
    /// score `m`, the sum of exponentials `l` and `acc = sum exp(s - m) factor v`, rescaled
    /// when `m` grows (flash attention's online softmax); `y = acc / l`.
    #[cube(launch_unchecked)]
    pub fn attention_forward_kernel(
        q: &Tensor<f32>,
        k: &Tensor<f32>,
        v: &Tensor<f32>,
        y: &mut Tensor<f32>,
        stats: &mut Tensor<f32>,
        t: u32,
        heads: u32,
        scale: f32,
        keys: Sequence<u32>,
        threshold: u32,
        keep_scale: f32,
        #[comptime] hs: usize,
        #[comptime] tile: usize,
    ) {
        let mut k_tile = Shared::<[f32]>::new_slice(comptime!(tile * hs));
        let mut v_tile = Shared::<[f32]>::new_slice(comptime!(tile * hs));
        let t = t as usize;
        let (first, start, i, active, row) = place(t, heads as usize);
        // The block's last query sees keys up to `end - 1`.
        let end = select(start + UNITS < t, start + UNITS, t);
        let qi = load_row(q, row, hs);
        let mut acc = Array::<f32>::new(hs);
        #[unroll]
        for c in 0..hs {
            acc[c] = 0.0;
        }
        let mut m = f32::new(-3.4028235e38);
        let mut l = 0.0f32;
        let mut j0 = 0usize;
        while j0 < end {
            load_rows(k, first + j0, first + end, &mut k_tile, tile, hs);
            load_rows(v, first + j0, first + end, &mut v_tile, tile, hs);
            sync_cube();
            let n = select(end - j0 < tile, end - j0, tile);
            for u in 0..n {
                let j = j0 + u;
                if active && j <= i {
                    let s = scale * dot(&qi, &k_tile, u, hs);
                    if s > m {
                        let shrink = f32::exp(m - s);
                        l *= shrink;
                        #[unroll]
                        for c in 0..hs {
                            acc[c] *= shrink;
                        }
                        m = s;
                    }
                    let p = f32::exp(s - m);
                    l += p;
                    let mut kept = p;
                    if threshold > 0 {
                        kept = p * keep_factor(u32::cast_from(row * t + j), &keys, threshold, keep_scale);
                    }
                    #[unroll]
                    for c in 0..hs {
                        acc[c] += kept * v_tile[u * hs + c];
                    }
                }
            }
            sync_cube();
            j0 += tile;
        }
        if active {
            #[unroll]
            for c in 0..hs {
                y[row * hs + c] = acc[c] / l;
            }
            stats[2 * row] = m;
            stats[2 * row + 1] = l;
        }
    }

    /// Each row's statistics and `dy . y` side by side, [rows, 3], for the two kernels below
    /// (which, with their other tensors, may bind no more than WebGPU's 8 storage buffers).
    #[cube(launch_unchecked)]
    pub fn attention_row_terms_kernel(
        y: &Tensor<f32>,
        g: &Tensor<f32>,
        stats: &Tensor<f32>,
        terms: &mut Tensor<f32>,
        rows: u32,
        #[comptime] hs: usize,
    ) {
        let row = ABSOLUTE_POS;
        if row >= rows as usize {
            terminate!();
        }
        let mut dot_gy = 0.0f32;
        #[unroll]
        for c in 0..hs {
            dot_gy += g[row * hs + c] * y[row * hs + c];
        }
        terms[3 * row] = stats[2 * row];
        terms[3 * row + 1] = stats[2 * row + 1];
        terms[3 * row + 2] = dot_gy;
    }

    /// The gradient of `q`, one query row per unit (placed as the forward's): over the keys
    /// `j <= i`, through shared memory as the forward's, `ds = scale p (dp factor - dy . y)`
    /// and `dq += ds k_j`.
    #[cube(launch_unchecked)]
    pub fn attention_backward_query_kernel(
        q: &Tensor<f32>,
        k: &Tensor<f32>,
        v: &Tensor<f32>,
        terms: &Tensor<f32>,
        g: &Tensor<f32>,
        dq: &mut Tensor<f32>,
        t: u32,
        heads: u32,
        scale: f32,
        keys: Sequence<u32>,
        threshold: u32,
        keep_scale: f32,
        #[comptime] hs: usize,
        #[comptime] tile: usize,
    ) {
        let mut k_tile = Shared::<[f32]>::new_slice(comptime!(tile * hs));
        let mut v_tile = Shared::<[f32]>::new_slice(comptime!(tile * hs));
        let t = t as usize;
        let (first, start, i, active, row) = place(t, heads as usize);
        let end = select(start + UNITS < t, start + UNITS, t);
        let (qi, gi) = (load_row(q, row, hs), load_row(g, row, hs));
        let mut acc = Array::<f32>::new(hs);
        #[unroll]
        for c in 0..hs {
            acc[c] = 0.0;
        }
        let (m, l, dot_gy) = (terms[3 * row], terms[3 * row + 1], terms[3 * row + 2]);
        let mut j0 = 0usize;
        while j0 < end {
            load_rows(k, first + j0, first + end, &mut k_tile, tile, hs);
            load_rows(v, first + j0, first + end, &mut v_tile, tile, hs);
            sync_cube();
            let n = select(end - j0 < tile, end - j0, tile);
            for u in 0..n {
                let j = j0 + u;
                if active && j <= i {
                    let p = f32::exp(scale * dot(&qi, &k_tile, u, hs) - m) / l;
                    let mut factor = 1.0f32;
                    if threshold > 0 {
                        factor = keep_factor(u32::cast_from(row * t + j), &keys, threshold, keep_scale);
                    }
                    let ds = scale * p * (dot(&gi, &v_tile, u, hs) * factor - dot_gy);
                    #[unroll]
                    for c in 0..hs {
                        acc[c] += ds * k_tile[u * hs + c];
                    }
                }
            }
            sync_cube();
            j0 += tile;
        }
        if active {
            #[unroll]
            for c in 0..hs {
                dq[row * hs + c] = acc[c];
            }
        }
    }

    /// The gradients of `k` and `v`, one key row per unit (UNITS keys of one head per cube),
    /// over the queries `i >= j` through shared memory `tile` at a time (their rows of `q`
    /// and `dy`, and their terms): `dk += ds q_i`, `dv += p factor dy_i`.
    #[cube(launch_unchecked)]
    pub fn attention_backward_key_kernel(
        q: &Tensor<f32>,
        k: &Tensor<f32>,
        v: &Tensor<f32>,
        terms: &Tensor<f32>,
        g: &Tensor<f32>,
        dk: &mut Tensor<f32>,
        dv: &mut Tensor<f32>,
        t: u32,
        heads: u32,
        scale: f32,
        keys: Sequence<u32>,
        threshold: u32,
        keep_scale: f32,
        #[comptime] hs: usize,
        #[comptime] tile: usize,
    ) {
        let mut q_tile = Shared::<[f32]>::new_slice(comptime!(tile * hs));
        let mut g_tile = Shared::<[f32]>::new_slice(comptime!(tile * hs));
        let mut terms_tile = Shared::<[f32]>::new_slice(comptime!(tile * 3));
        let t = t as usize;
        let (first, start, j, active, row) = place(t, heads as usize);
        let (kj, vj) = (load_row(k, row, hs), load_row(v, row, hs));
        let mut dk_acc = Array::<f32>::new(hs);
        let mut dv_acc = Array::<f32>::new(hs);
        #[unroll]
        for c in 0..hs {
            dk_acc[c] = 0.0;
            dv_acc[c] = 0.0;
        }
        // Queries before the block's first key see none of its keys.
        let mut i0 = start;
        while i0 < t {
            load_rows(q, first + i0, first + t, &mut q_tile, tile, hs);
            load_rows(g, first + i0, first + t, &mut g_tile, tile, hs);
            load_rows(terms, first + i0, first + t, &mut terms_tile, tile, 3usize);
            sync_cube();
            let n = select(t - i0 < tile, t - i0, tile);
            for u in 0..n {
                let i = i0 + u;
                if active && i >= j {
                    let s = scale * dot(&kj, &q_tile, u, hs);
                    let p = f32::exp(s - terms_tile[3 * u]) / terms_tile[3 * u + 1];
                    let mut factor = 1.0f32;
                    if threshold > 0 {
                        factor = keep_factor(u32::cast_from((first + i) * t + j), &keys, threshold, keep_scale);
                    }
                    let ds = scale * p * (dot(&vj, &g_tile, u, hs) * factor - terms_tile[3 * u + 2]);
                    let kept = p * factor;
                    #[unroll]
                    for c in 0..hs {
                        dk_acc[c] += ds * q_tile[u * hs + c];
                        dv_acc[c] += kept * g_tile[u * hs + c];
                    }
                }
            }
            sync_cube();
            i0 += tile;
        }
        if active {
            #[unroll]
            for c in 0..hs {
                dk[row * hs + c] = dk_acc[c];
                dv[row * hs + c] = dv_acc[c];
            }
        }
    }
}

/// The round keys as a kernel argument.
fn key_sequence(key: u64) -> SequenceArg<u32> {
    let mut keys = SequenceArg::new();
    for k in round_keys(key) {
        keys.push(k);
    }
    keys
}

/// Rows of keys or queries a cube holds in shared memory at a time, so that two tiles of
/// [tile, hs] and their row terms fit in the 16 KiB of workgroup memory that every WebGPU
/// device has; at most 32.
fn tile_rows(hs: usize) -> usize {
    let tile = (4000 / (2 * hs.max(1))).clamp(1, 32);
    assert!(tile * (2 * hs + 3) <= 4096, "the GPU attention holds heads of at most 2000 (got {hs}): use fused = false");
    tile
}

/// The launch's cubes: `ceil(T / UNITS)` blocks of each of `heads` heads.
fn cubes(t: usize, heads: usize) -> (CubeCount, CubeDim) {
    let blocks = heads * t.div_ceil(cube_kernel::UNITS);
    (crate::norm::cube_per_row(blocks), CubeDim::new_1d(cube_kernel::UNITS as u32))
}

impl CausalAttentionOps for CubeBackend {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        key: u64,
        threshold: u32,
        keep_scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        assert!([&q, &k, &v].iter().all(|x| x.dtype == DType::F32), "the fused attention computes in f32");
        let [q, k, v] = [q, k, v].map(into_contiguous);
        let [b, nh, t, hs] = q.shape().dims::<4>();
        let empty = |shape: [usize; 4]| {
            empty_device_contiguous_dtype(q.client.clone(), q.device.clone(), shape.into(), DType::F32)
        };
        let (y, stats) = (empty([b, nh, t, hs]), empty([b, nh, t, 2]));
        if b * nh * t * hs == 0 {
            return (y, stats);
        }
        let (count, dim) = cubes(t, b * nh);
        // SAFETY: every index the kernel reads or writes is within rows x hs (q, k, v, y) or
        // rows x 2 (stats), rows = B nh T: a cube's rows and keys lie in its head's T rows.
        // (Its strides and shared memory are for cubes of UNITS units, as launched here.)
        unsafe {
            cube_kernel::attention_forward_kernel::launch_unchecked(
                &q.client,
                count,
                dim,
                q.clone().into_tensor_arg(),
                k.into_tensor_arg(),
                v.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                stats.clone().into_tensor_arg(),
                t as u32,
                (b * nh) as u32,
                scale,
                key_sequence(key),
                threshold,
                keep_scale,
                hs,
                tile_rows(hs),
            );
        }
        (y, stats)
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        y: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
        key: u64,
        threshold: u32,
        keep_scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [q, k, v, y, stats, g] = [q, k, v, y, stats, grad].map(into_contiguous);
        let [b, nh, t, hs] = q.shape().dims::<4>();
        let empty = |shape: Vec<usize>| {
            empty_device_contiguous_dtype(q.client.clone(), q.device.clone(), shape.into(), DType::F32)
        };
        let (dq, dk, dv) = (empty(vec![b, nh, t, hs]), empty(vec![b, nh, t, hs]), empty(vec![b, nh, t, hs]));
        if b * nh * t * hs == 0 {
            return (dq, dk, dv);
        }
        let rows = b * nh * t;
        let terms = empty(vec![rows, 3]);
        let (count, dim) = cubes(t, b * nh);
        let row_dim = CubeDim::new(&q.client, rows);
        // SAFETY: as the forward's; `terms` has three values per row, which the first kernel
        // writes before the other two (launched after it, on the same stream) read them.
        unsafe {
            cube_kernel::attention_row_terms_kernel::launch_unchecked(
                &q.client,
                calculate_cube_count_elemwise(&q.client, rows, row_dim),
                row_dim,
                y.into_tensor_arg(),
                g.clone().into_tensor_arg(),
                stats.into_tensor_arg(),
                terms.clone().into_tensor_arg(),
                rows as u32,
                hs,
            );
            cube_kernel::attention_backward_query_kernel::launch_unchecked(
                &q.client,
                count.clone(),
                dim,
                q.clone().into_tensor_arg(),
                k.clone().into_tensor_arg(),
                v.clone().into_tensor_arg(),
                terms.clone().into_tensor_arg(),
                g.clone().into_tensor_arg(),
                dq.clone().into_tensor_arg(),
                t as u32,
                (b * nh) as u32,
                scale,
                key_sequence(key),
                threshold,
                keep_scale,
                hs,
                tile_rows(hs),
            );
            cube_kernel::attention_backward_key_kernel::launch_unchecked(
                &q.client,
                count,
                dim,
                q.clone().into_tensor_arg(),
                k.into_tensor_arg(),
                v.into_tensor_arg(),
                terms.into_tensor_arg(),
                g.into_tensor_arg(),
                dk.clone().into_tensor_arg(),
                dv.clone().into_tensor_arg(),
                t as u32,
                (b * nh) as u32,
                scale,
                key_sequence(key),
                threshold,
                keep_scale,
                hs,
                tile_rows(hs),
            );
        }
        (dq, dk, dv)
    }
}

/// Under autodiff: the inner backend's forward, keeping `q`, `k`, `v` (which the graph holds
/// anyway), `y` and the statistics for the backward.
impl<B: CausalAttentionOps, C: CheckpointStrategy> CausalAttentionOps for Autodiff<B, C> {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        key: u64,
        threshold: u32,
        keep_scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct AttentionBackward;

        type Kept<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

        impl<B: CausalAttentionOps> Backward<B, 3> for AttentionBackward {
            type State = (Kept<B>, f32, u64, u32, f32);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let ((q, k, v, y, stats), scale, key, threshold, keep_scale) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let (dq, dk, dv) =
                    B::causal_attention_backward(q, k, v, y, stats, grad, scale, key, threshold, keep_scale);
                for (parent, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, grad);
                    }
                }
            }
        }

        let nodes = [q.node(), k.node(), v.node()];
        let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
        match AttentionBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, stats) =
                    B::causal_attention(q.clone(), k.clone(), v.clone(), scale, key, threshold, keep_scale);
                let state = ((q, k, v, y.clone(), stats.clone()), scale, key, threshold, keep_scale);
                (prep.finish(state, y), Self::from_inner(stats))
            }
            OpsKind::UnTracked(prep) => {
                let (y, stats) = B::causal_attention(q, k, v, scale, key, threshold, keep_scale);
                (prep.finish(y), Self::from_inner(stats))
            }
        }
    }

    fn causal_attention_backward(
        _q: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _y: FloatTensor<Self>,
        _stats: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _scale: f32,
        _key: u64,
        _threshold: u32,
        _keep_scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        panic!("the attention's backward is not differentiable (no second derivatives)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Bool, Device, activation};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The tensor ops it replaces (`model::Attention` with `fused = false`).
    fn unfused(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, dropout: Option<AttentionDropout>) -> Tensor<4> {
        let [b, nh, t, _] = q.dims();
        let scores = q.matmul(k.swap_dims(2, 3)) * scale;
        let future = Tensor::<2, Bool>::tril_mask([t, t], 0, &scores.device());
        let att =
            activation::softmax(scores.mask_fill(future.unsqueeze::<4>().expand([b, nh, t, t]), f32::NEG_INFINITY), 3);
        let att = match dropout {
            Some(d) => crate::dropout(att, d.key, d.prob),
            None => att,
        };
        att.matmul(v)
    }

    /// [2, heads, t, 8] inputs of the given spread, different for q, k and v (`salt`).
    fn input(heads: usize, t: usize, spread: f32, salt: f32, device: &Device) -> Tensor<4> {
        input_of_width(heads, t, 8, spread, salt, device)
    }

    fn input_of_width(heads: usize, t: usize, hs: usize, spread: f32, salt: f32, device: &Device) -> Tensor<4> {
        let n = 2 * heads * t * hs;
        let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731 + salt).sin() * spread + (i % 11) as f32 * 0.05).collect();
        Tensor::<1>::from_floats(xs.as_slice(), device).reshape([2, heads, t, hs])
    }

    fn largest(xs: &[f32]) -> f32 {
        xs.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()))
    }

    /// The largest difference, over `scale`.
    fn diff(got: &[f32], want: &[f32], scale: f32) -> f32 {
        assert_eq!(got.len(), want.len());
        got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    }

    type Run = (Vec<f32>, [Vec<f32>; 3]);

    /// The output and the gradients of q, k, v under a weighted sum of the output.
    fn run(qkv: [Tensor<4>; 3], scale: f64, dropout: Option<AttentionDropout>, fused: bool) -> Run {
        let [q, k, v] = qkv.map(|x| x.require_grad());
        let y = if fused {
            causal_attention(q.clone(), k.clone(), v.clone(), scale, dropout)
        } else {
            unfused(q.clone(), k.clone(), v.clone(), scale, dropout)
        };
        let weights = (y.clone().detach() * 1.7 + 0.3).cos();
        let grads = (y.clone() * weights).sum().backward();
        (values(y), [&q, &k, &v].map(|x| values(x.grad(&grads).unwrap())))
    }

    fn qkv(heads: usize, t: usize, spread: f32, device: &Device) -> [Tensor<4>; 3] {
        [0.0, 1.0, 2.0].map(|salt| input(heads, t, spread, salt, device))
    }

    /// Values within 1e-5 of the largest value, gradients within 1e-4 of the largest gradient
    /// of the three (at T = 1 q's and k's are 0 up to rounding: the weight is 1 whatever they are).
    fn assert_close(fused: &Run, ops: &Run, what: &str) {
        let values = diff(&fused.0, &ops.0, largest(&ops.0));
        assert!(values < 1e-5, "{what}: values {values}");
        let scale = ops.1.iter().map(|g| largest(g)).fold(0.0, f32::max);
        for (name, (f, o)) in ["q", "k", "v"].iter().zip(fused.1.iter().zip(&ops.1)) {
            assert!(diff(f, o, scale) < 1e-4, "{what}: {name}'s gradient {}", diff(f, o, scale));
        }
    }

    #[test]
    fn values_and_gradients_are_the_tensor_ops_up_to_rounding() {
        // T = 37: one block, not a multiple of the SIMD lanes; 70 and 150: two and three
        // blocks of 64 query rows, the last partial; T = 1: only the diagonal.
        let device = Device::flex().autodiff();
        let dropout = AttentionDropout { key: crate::dropout::splitmix64(5), prob: 0.3 };
        for (heads, t) in [(1, 37), (3, 70), (2, 150), (2, 1)] {
            for spread in [1.0, 4.0] {
                for drop in [None, Some(dropout)] {
                    let what = format!("{heads} heads, T {t}, spread {spread}, dropout {drop:?}");
                    let fused = run(qkv(heads, t, spread, &device), 0.35, drop, true);
                    let ops = run(qkv(heads, t, spread, &device), 0.35, drop, false);
                    assert_close(&fused, &ops, &what);
                }
            }
        }
        // Heads of 64 (nanoGPT's) and 13 (no multiple of a SIMD width), T = 65: a last block of
        // one query row that sees every key.
        for hs in [64, 13] {
            let qkv = || [0.0, 1.0, 2.0].map(|salt| input_of_width(3, 65, hs, 0.5, salt, &device));
            let what = format!("heads of {hs}, T 65");
            assert_close(&run(qkv(), 0.2, Some(dropout), true), &run(qkv(), 0.2, Some(dropout), false), &what);
        }
    }

    #[test]
    fn dropout_drops_the_weights_that_the_dropout_op_drops() {
        // v the identity's rows (T = hs = 8, one head): y is then the dropped weights
        // themselves, which must be exactly where `dropout`'s mask is 0.
        // Two sequences of three heads: each (sequence, head) has its own part of the mask.
        let (t, prob) = (8, 0.5);
        let key = crate::dropout::splitmix64(11);
        for device in [Device::flex(), crate::tests::wgpu()] {
            let eye: Vec<f32> = (0..t * t).map(|i| if i / t == i % t { 1.0 } else { 0.0 }).collect();
            let v = Tensor::<1>::from_floats(eye.as_slice(), &device)
                .reshape([1, 1, t, t])
                .repeat_dim(0, 2)
                .repeat_dim(1, 3);
            let q = input(3, t, 1.0, 0.0, &device);
            let k = input(3, t, 1.0, 1.0, &device);
            let weights = values(causal_attention(q, k, v, 0.5, Some(AttentionDropout { key, prob })));
            let mask = values(crate::dropout(Tensor::<4>::ones([2, 3, t, t], &device), key, prob));
            let (mut kept, mut dropped) = (0, 0);
            for (w, m) in weights.chunks(t * t).zip(mask.chunks(t * t)) {
                for i in 0..t {
                    for j in 0..=i {
                        let (w, m) = (w[i * t + j], m[i * t + j]);
                        assert_eq!(w == 0.0, m == 0.0, "{device:?}: weight [{i}, {j}] = {w}, mask {m}");
                        if m == 0.0 { dropped += 1 } else { kept += 1 }
                    }
                    assert!(w[i * t + i + 1..(i + 1) * t].iter().all(|w| *w == 0.0), "{device:?}: row {i}'s future");
                }
            }
            assert!(kept > 50 && dropped > 50, "{device:?}: kept {kept}, dropped {dropped}");
        }
    }

    /// The softmax's row loops compiled for the machine's SIMD (AVX-512 or AVX2 where it has
    /// them) give the bits of the baseline build of the same loops: a block of the last 6
    /// query rows of 70 keys (lanes and a tail), with dropout.
    #[test]
    fn the_simd_loops_give_the_baseline_bits() {
        let (rows, t) = (6, 70);
        let i0 = t - rows;
        let scores: Vec<f32> = (0..rows * t).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        let dp: Vec<f32> = (0..rows * t).map(|i| (i as f32 * 0.11).cos()).collect();
        let dots: Vec<f32> = (0..rows).map(|r| r as f32 * 0.1 - 0.2).collect();
        let drop = Mask { keys: round_keys(7), threshold: 1 << 28, scale: 1.25 };
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let (mut s_simd, mut s_base) = (scores.clone(), scores.clone());
        let (mut stats_simd, mut stats_base) = (vec![0.0; 2 * rows], vec![0.0; 2 * rows]);
        forward_rows_simd(&mut s_simd, t, i0, 0.3, &mut stats_simd, drop, 5, t);
        forward_rows(&mut s_base, t, i0, 0.3, &mut stats_base, drop, 5, t);
        assert_eq!(bits(&s_simd), bits(&s_base), "weights");
        assert_eq!(bits(&stats_simd), bits(&stats_base), "row statistics");
        let (mut s_simd, mut s_base, mut dp_simd, mut dp_base) = (scores.clone(), scores, dp.clone(), dp);
        backward_rows_simd(&mut s_simd, &mut dp_simd, t, i0, 0.3, &stats_base, &dots, drop, 5, t);
        backward_rows(&mut s_base, &mut dp_base, t, i0, 0.3, &stats_base, &dots, drop, 5, t);
        assert_eq!(bits(&s_simd), bits(&s_base), "weights, recomputed");
        assert_eq!(bits(&dp_simd), bits(&dp_base), "scores' gradient");
    }

    #[test]
    fn the_same_bits_on_one_thread_as_on_all() {
        let device = Device::flex().autodiff();
        let dropout = Some(AttentionDropout { key: 7, prob: 0.2 });
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let all = run(qkv(3, 70, 2.0, &device), 0.35, dropout, true);
        assert_eq!(one.install(|| run(qkv(3, 70, 2.0, &device), 0.35, dropout, true)), all);
    }

    #[test]
    fn strided_inputs_give_the_same_values_and_gradients() {
        // q, k, v as the model makes them: [B, T, nh, hs] buffers seen as [B, nh, T, hs].
        let device = Device::flex().autodiff();
        let contiguous = run(qkv(3, 70, 2.0, &device), 0.35, None, true);
        let stored = qkv(3, 70, 2.0, &device)
            .map(|x| Tensor::<4>::from_data(x.swap_dims(1, 2).into_data(), &device).require_grad());
        let [q, k, v] = stored.clone().map(|x| x.swap_dims(1, 2));
        let y = causal_attention(q, k, v, 0.35, None);
        let grads = (y.clone() * (y.clone().detach() * 1.7 + 0.3).cos()).sum().backward();
        assert_eq!(values(y), contiguous.0);
        for (x, want) in stored.iter().zip(&contiguous.1) {
            assert_eq!(&values(x.grad(&grads).unwrap().swap_dims(1, 2)), want);
        }
    }

    #[test]
    fn extreme_scores_give_no_nan_and_a_nan_stays_visible() {
        // Scores 1e4 apart: a wrong shift by the row's largest overflows or underflows.
        let device = Device::flex().autodiff();
        let fused = run(qkv(1, 70, 100.0, &device), 1.0, None, true);
        let ops = run(qkv(1, 70, 100.0, &device), 1.0, None, false);
        assert!(fused.0.iter().chain(fused.1.iter().flatten()).all(|v| v.is_finite()));
        assert_close(&fused, &ops, "scores 1e4 apart");
        // A NaN in one key: every query that sees it comes out NaN, the earlier ones not.
        let [q, mut k, v] = qkv(1, 70, 1.0, &Device::flex());
        k = k.slice_assign([0..1, 0..1, 40..41, 0..1], Tensor::<4>::from_floats([[[[f32::NAN]]]], &Device::flex()));
        let y = values(causal_attention(q, k, v, 0.35, None));
        assert!(y[..40 * 8].iter().all(|v| v.is_finite()) && y[40 * 8..70 * 8].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn on_the_gpu_values_and_gradients_are_the_tensor_ops_up_to_rounding() {
        // lavapipe where there is no GPU. T = 37 and 70: rows of keys shorter and longer than a
        // cube's 32 units, neither a multiple of it; T = 1: only the diagonal.
        let device = crate::tests::wgpu().autodiff();
        let dropout = AttentionDropout { key: crate::dropout::splitmix64(5), prob: 0.3 };
        for (heads, t) in [(1, 37), (3, 70), (2, 1)] {
            for spread in [1.0, 4.0] {
                for drop in [None, Some(dropout)] {
                    let what = format!("GPU: {heads} heads, T {t}, spread {spread}, dropout {drop:?}");
                    let fused = run(qkv(heads, t, spread, &device), 0.35, drop, true);
                    let ops = run(qkv(heads, t, spread, &device), 0.35, drop, false);
                    assert_close(&fused, &ops, &what);
                }
            }
        }
        // Heads of 160: 12 rows of keys in shared memory at a time (`tile_rows`), tiles that
        // end inside a block of 32 queries.
        let wide = || [0.0, 1.0, 2.0].map(|salt| input_of_width(1, 45, 160, 0.3, salt, &device));
        let dropout = Some(dropout);
        assert_close(&run(wide(), 0.1, dropout, true), &run(wide(), 0.1, dropout, false), "GPU: heads of 160");
        // Scores 1e4 apart, as on the CPU.
        let fused = run(qkv(1, 70, 100.0, &device), 1.0, None, true);
        assert!(fused.0.iter().chain(fused.1.iter().flatten()).all(|v| v.is_finite()));
        assert_close(&fused, &run(qkv(1, 70, 100.0, &device), 1.0, None, false), "GPU: scores 1e4 apart");
    }

    #[test]
    fn on_the_gpu_the_same_bits_every_run_and_strided_inputs_are_read_right() {
        let device = crate::tests::wgpu().autodiff();
        let dropout = Some(AttentionDropout { key: 7, prob: 0.2 });
        let first = run(qkv(3, 70, 2.0, &device), 0.35, dropout, true);
        assert_eq!(run(qkv(3, 70, 2.0, &device), 0.35, dropout, true), first);
        let stored = qkv(3, 70, 2.0, &device)
            .map(|x| Tensor::<4>::from_data(x.swap_dims(1, 2).into_data(), &device).require_grad());
        let [q, k, v] = stored.clone().map(|x| x.swap_dims(1, 2));
        let y = causal_attention(q, k, v, 0.35, dropout);
        let grads = (y.clone() * (y.clone().detach() * 1.7 + 0.3).cos()).sum().backward();
        assert_eq!(values(y), first.0);
        for (x, want) in stored.iter().zip(&first.1) {
            assert_eq!(&values(x.grad(&grads).unwrap().swap_dims(1, 2)), want);
        }
        // The CPU's op, the same up to rounding, dropout included.
        let cpu = run(qkv(3, 70, 2.0, &Device::flex().autodiff()), 0.35, dropout, true);
        assert_close(&first, &cpu, "GPU against CPU");
    }
}
