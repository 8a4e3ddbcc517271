//! Dropout: the mask, one kernel where tensor ops would take a chain of them.
//!
//! The mask keeps or drops each element by a keyed hash of its index (`feistel30`, specified
//! below), not by a backend's RNG (whose bits differ between backends and between reseeds),
//! so every backend, browser included, draws the same masks. Written as integer tensor ops
//! the hash takes ~35 of them, each a full pass over a tensor the size of the activations (at
//! nanoGPT's size the attention weights are 25 M elements per layer), and burn's fusion (its
//! `fusion` feature, without autotune) moves that chain into the loads of the next matmul,
//! recomputing it there (BENCHMARKS.md, "Dropout"). Here the hash is one kernel that writes
//! the mask: a CubeCL kernel on the GPU backends (compiled to WGSL for wgpu and WebGPU, and to
//! CUDA; a `#[cube]` kernel rather than a WGSL file so that CUDA gets it too) and a loop on
//! the CPU. Both compute `feistel30` bit for bit. `tests/reference_gpt.py` implements the
//! same hash in numpy.

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::prelude::SequenceArg;

// The specification: what every backend computes.

/// Rounds of the Feistel hash below. Three leave visible correlations between elements 2^15
/// apart; five pass the statistics in simplegpt's `rng` tests (on the keys training uses).
const ROUNDS: usize = 5;
/// Multiplier of the round function: odd and below 2^15, so `(r ^ k) * MUL < 2^30`.
pub const MUL: u32 = 0x5D2B;
/// The hash permutes 30-bit indices: a tensor may hold up to 2^30 elements.
pub const MASK_MAX_ELEMENTS: usize = 1 << 30;

/// SplitMix64's finaliser: a stable 64-bit mixer for deriving keys (the round keys here, and
/// simplegpt's `rng::dropout_key`).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

/// The 15-bit round keys of the hash for one key (simplegpt's `rng::dropout_key`).
pub fn round_keys(key: u64) -> [u32; ROUNDS] {
    std::array::from_fn(|r| (splitmix64(key.wrapping_add(r as u64)) & 0x7FFF) as u32)
}

/// The hash of one index: the specification every backend's dropout kernel computes, and
/// `tests/reference_gpt.py` too. A 5-round Feistel network on 15-bit halves whose every
/// intermediate stays below 2^31, so 32-bit integer arithmetic (GPU kernels, WebGPU) and any
/// wider one give the same bits.
#[inline(always)]
pub fn feistel30(index: u32, keys: &[u32; ROUNDS]) -> u32 {
    let (mut l, mut r) = (index >> 15, index & 0x7FFF);
    for k in keys {
        let t = (r ^ k) * MUL;
        (l, r) = (r, l ^ (((t >> 15) ^ t) & 0x7FFF));
    }
    (l << 15) | r
}

/// Elements with a hash at or above this are kept: a fraction `1 - prob`.
pub fn keep_threshold(prob: f64) -> u32 {
    (prob * (1u64 << 30) as f64).round() as u32
}

/// The mask's values of elements `start..start + chunk.len()`, every one written: `scale`
/// where kept, 0 where dropped. In SIMD lanes (`with_simd!`: AVX2 and AVX-512 multiply 32-bit
/// integers lane by lane, which the baseline SSE2 cannot).
#[inline(always)]
fn mask_values(start: u32, chunk: &mut [MaybeUninit<f32>], keys: &[u32; ROUNDS], threshold: u32, scale: f32) {
    for (i, v) in (start..).zip(chunk) {
        v.write(if feistel30(i, keys) >= threshold { scale } else { 0.0 });
    }
}

with_simd!(
    mask_values_simd,
    mask_values,
    (start: u32, chunk: &mut [MaybeUninit<f32>], keys: &[u32; ROUNDS], threshold: u32, scale: f32)
);

// The op.

/// The dropout mask of a tensor shaped like `like`: `scale` where an element is kept, 0 where
/// it is dropped, so that dropout is one multiplication. Element `i` (row-major) is kept when
/// `feistel30(i, &round_keys(key)) >= threshold`.
#[backend_extension(Cube, Flex, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait DropoutMaskOps: Backend {
    /// Under fusion an opaque operation: nothing is fused into it or it into a matmul.
    #[fusion(dtype = like, shape = like)]
    fn dropout_mask(like: FloatTensor<Self>, key: u64, threshold: u32, scale: f32) -> FloatTensor<Self>;
}

/// `x * mask`, with the mask of `key` at drop probability `prob` (kept elements scaled by
/// 1 / (1 - prob), as torch's dropout).
pub fn dropout<const D: usize>(x: Tensor<D>, key: u64, prob: f64) -> Tensor<D> {
    // The hash permutes 30-bit indices; config validation keeps dropout tensors within that.
    assert!(x.shape().num_elements() <= MASK_MAX_ELEMENTS, "dropout tensor over 2^30 elements");
    let threshold = keep_threshold(prob);
    let scale = (1.0 / (1.0 - prob)) as f32;
    let mask = Dispatch::dropout_mask(x.clone().into_dispatch(), key, threshold, scale);
    x * Tensor::from_dispatch(mask)
}

pub(crate) mod cube_kernel {
    use cubecl::prelude::*;

    /// `scale` where `feistel30(index) >= threshold`, else 0: the mask's value at `index`.
    /// feistel30 on u32: every intermediate stays below 2^31.
    #[cube]
    pub fn keep_factor(index: u32, keys: &Sequence<u32>, threshold: u32, scale: f32) -> f32 {
        let mut l = index >> 15;
        let mut r = index & 0x7FFF;
        #[unroll]
        for i in 0..keys.len() {
            let t = (r ^ *keys.index(i)) * 0x5D2B; // MUL
            let f = ((t >> 15) ^ t) & 0x7FFF;
            let next_r = l ^ f;
            l = r;
            r = next_r;
        }
        select(((l << 15) | r) >= threshold, scale, 0.0)
    }

    #[cube(launch_unchecked)]
    pub fn dropout_mask_kernel(output: &mut Tensor<f32>, keys: Sequence<u32>, threshold: u32, scale: f32) {
        if ABSOLUTE_POS >= output.len() {
            terminate!();
        }
        output[ABSOLUTE_POS] = keep_factor(u32::cast_from(ABSOLUTE_POS), &keys, threshold, scale);
    }
}

impl DropoutMaskOps for CubeBackend {
    fn dropout_mask(like: FloatTensor<Self>, key: u64, threshold: u32, scale: f32) -> FloatTensor<Self> {
        let output = empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), like.shape(), DType::F32);
        let mut keys = SequenceArg::new();
        for k in round_keys(key) {
            keys.push(k);
        }
        crate::launch_per_element(&output, |count, dim| {
            // SAFETY: the kernel checks its bounds (ABSOLUTE_POS < len) before it writes.
            unsafe {
                cube_kernel::dropout_mask_kernel::launch_unchecked(
                    &output.client,
                    count,
                    dim,
                    output.clone().into_tensor_arg(),
                    keys,
                    threshold,
                    scale,
                )
            }
        });
        match like.dtype {
            DType::F32 => output,
            other => CubeBackend::float_cast(output, other.into()),
        }
    }
}

impl DropoutMaskOps for Flex {
    fn dropout_mask(like: FloatTensor<Self>, key: u64, threshold: u32, scale: f32) -> FloatTensor<Self> {
        let (shape, keys) = (like.shape(), round_keys(key));
        // SAFETY: `mask_values` writes every element of its chunk.
        let values = unsafe {
            crate::written(shape.num_elements(), |values| {
                crate::for_each_chunk(values, 1 << 16, |start, chunk| {
                    mask_values_simd(start as u32, chunk, &keys, threshold, scale)
                })
            })
        };
        let data = TensorData::new(values, shape).convert_dtype(like.dtype());
        Flex::float_from_data(data, &like.device())
    }
}

/// Under autodiff the mask is a constant of `like`'s shape: no gradient flows into it, and
/// none through it into `like`.
impl<B: DropoutMaskOps, C: CheckpointStrategy> DropoutMaskOps for Autodiff<B, C> {
    fn dropout_mask(like: FloatTensor<Self>, key: u64, threshold: u32, scale: f32) -> FloatTensor<Self> {
        Self::from_inner(B::dropout_mask(Self::inner(like), key, threshold, scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// The mask each backend's kernel writes, read back, against the specification.
    fn check_mask(device: &Device) {
        // 300 000 elements: over 2^15, so that both halves of the index take part, and over
        // 2^18, so that the CPU loop runs in several chunks (of 2^16), the last one partial.
        let (dims, key, prob) = ([4, 5, 100, 150], splitmix64(9), 0.3);
        let n = dims.iter().product::<usize>();
        let x = Tensor::<4>::ones(dims, device);
        let dropped: Vec<f32> = dropout(x, key, prob).into_data().try_to_vec::<f32>().unwrap();
        let (keys, threshold, scale) = (round_keys(key), keep_threshold(prob), (1.0 / (1.0 - prob)) as f32);
        assert_eq!(dropped.len(), n);
        // The specification, one index at a time.
        for (i, got) in dropped.iter().enumerate() {
            let want = if feistel30(i as u32, &keys) >= threshold { scale } else { 0.0 };
            assert_eq!(*got, want, "element {i} of {n}");
        }
    }

    #[test]
    fn the_cpu_mask_is_the_specified_hash() {
        check_mask(&Device::flex());
    }

    #[test]
    fn the_gpu_kernel_mask_is_the_specified_hash() {
        check_mask(&crate::tests::wgpu());
    }

    #[test]
    fn the_gradient_of_dropout_is_the_mask() {
        for device in [Device::flex().autodiff(), crate::tests::wgpu().autodiff()] {
            let x = Tensor::<2>::from_floats([[1.0, -2.0, 3.0, 4.0], [5.0, 6.0, -7.0, 8.0]], &device).require_grad();
            let key = splitmix64(3);
            let y = dropout(x.clone(), key, 0.5);
            let grads = y.clone().sum().backward();
            let grad: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let (y, x): (Vec<f32>, Vec<f32>) =
                (y.into_data().try_to_vec::<f32>().unwrap(), x.into_data().try_to_vec::<f32>().unwrap());
            for i in 0..8 {
                // Kept: y = 2x and dy/dx = 2; dropped: both 0.
                assert_eq!(
                    grad[i],
                    if feistel30(i as u32, &round_keys(key)) >= keep_threshold(0.5) { 2.0 } else { 0.0 }
                );
                assert_eq!(y[i], grad[i] * x[i]);
            }
            assert!(grad.contains(&0.0) && grad.contains(&2.0), "some kept, some dropped: {grad:?}");
        }
    }
}
