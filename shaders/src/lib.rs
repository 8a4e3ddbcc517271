//! simplegpt's own kernels, for where one kernel beats a chain of tensor ops (or, on the
//! CPU, one loop on all cores beats burn's on one).
//!
//! The rule: each op is one file, holding a CubeCL `#[cube]` kernel for the GPU backends
//! (compiled to WGSL for wgpu and WebGPU, and to CUDA) where burn's own is not enough, and its
//! CPU twin (a loop on burn's Flex backend); the file's tests check both against the op's
//! specification (the same bits where the op is exact, as the dropout mask; within rounding
//! where it sums or calls `exp`). This crate depends on burn only, never on the simplegpt
//! crate, which calls it.
//!
//! - `adamw`: one AdamW step of one parameter (the moments and the parameter in one pass), one
//!   kernel on the GPU (not under burn's fusion), one loop on all cores on the CPU.
//! - `attention`: causal self-attention, flash-style (no [B, nh, T, T] tensor kept), dropout
//!   inside: on the CPU blocks of query rows through `gemm` on all cores, on the GPU one
//!   query (or key) row per unit with tiles of keys (or queries) in shared memory (not under
//!   burn's fusion).
//! - `cross_entropy`: each row's cross-entropy against its target and the logits' gradient,
//!   one pass each on all cores on the CPU, one cube per row on the GPU (not under burn's
//!   fusion), keeping only the logits.
//! - `dropout`: the dropout mask, a keyed hash of each element's index (`dropout::feistel30`).
//! - `gelu`: GELU and its gradient, vectorised and on all cores on the CPU (burn's is a
//!   scalar `erff` on one); on the GPU one kernel each way (burn's is a chain, its gradient
//!   the tanh approximation's); under burn's fusion, burn's own, which its fusion fuses.
//! - `matmul`: the model's matrix products on the CPU, burn-flex's `gemm` calls without its
//!   two passes over each output before the product (the same bits); on the GPU, burn's.
//! - `norm`: LayerNorm and RMSNorm with a gain, forward and backward, one pass each on all
//!   cores on the CPU, one cube per row on the GPU (not under burn's fusion).

/// `with_simd!(name, body, (args))` defines `fn name(args)` that runs `body` (an
/// `#[inline(always)]` loop) compiled for the SIMD the machine has: on x86-64 AVX-512 or
/// AVX2, chosen at run time, else the baseline SSE2; in wasm its 128-bit SIMD. The same bits
/// either way (no fused multiply-add: Rust never contracts `a * b + c`).
macro_rules! with_simd {
    ($name:ident, $baseline:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $baseline($($arg),*)
                }
                // SAFETY: the CPU has AVX-512 (checked just above).
                return unsafe { avx512($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $baseline($($arg),*)
                }
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { avx2($($arg),*) };
            }
            #[cfg(target_arch = "wasm32")]
            {
                #[target_feature(enable = "simd128")]
                unsafe fn simd128($($arg: $ty),*) {
                    $baseline($($arg),*)
                }
                // SAFETY: wasm cannot ask, but the module already holds SIMD code (burn-flex's
                // `gemm` kernels), so a browser that loaded it has SIMD.
                return unsafe { simd128($($arg),*) };
            }
            #[allow(unreachable_code)]
            $baseline($($arg),*)
        }
    };
}

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod gelu;
mod lanes;
pub mod matmul;
pub mod norm;

pub use adamw::{AdamWOps, AdamWScalars, adamw_step};
pub use attention::{AttentionDropout, CausalAttentionOps, causal_attention};
pub use cross_entropy::{CrossEntropyOps, cross_entropy};
pub use dropout::{DropoutMaskOps, dropout};
pub use gelu::{GeluOps, gelu};
pub use matmul::{MatmulOps, matmul};
pub use norm::{NormOps, norm};

use std::mem::MaybeUninit;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::TensorData;
use burn_cubecl::CubeBackend;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::{CubeCount, CubeDim};

/// Launches `launch(cube_count, cube_dim)` with one unit per element of `out`, if it has any:
/// how the element-wise kernels (dropout mask, GELU, AdamW) are launched.
pub(crate) fn launch_per_element(out: &FloatTensor<CubeBackend>, launch: impl FnOnce(CubeCount, CubeDim)) {
    let n = out.shape().num_elements();
    if n > 0 {
        let dim = CubeDim::new(&out.client, n);
        launch(calculate_cube_count_elemwise(&out.client, n, dim), dim);
    }
}

/// `task(start, part)` for each part of `out` of `chunk` elements (the last one shorter),
/// `start` the index of its first element: on all cores natively, one after another in wasm
/// (no threads there). How the CPU twins split an output over the cores.
pub(crate) fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, task: impl Fn(usize, &mut [T]) + Sync + Send) {
    let chunk = chunk.max(1);
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, part)| task(i * chunk, part));
    }
    #[cfg(target_family = "wasm")]
    out.chunks_mut(chunk).enumerate().for_each(|(i, part)| task(i * chunk, part));
}

/// `len` f32 that `write` computes, handed the buffer not yet initialised: a CPU twin's
/// output without the pass over memory that zeroing it first (`vec![0.0; len]`) would cost,
/// as long as the op's own write.
///
/// # Safety
/// `write` writes every element of the slice it is given.
pub(crate) unsafe fn written(len: usize, write: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    // In the tests (debug builds) an element left unwritten reads as NaN, which they catch,
    // rather than as the 0 of a fresh page.
    #[cfg(debug_assertions)]
    values.spare_capacity_mut()[..len].fill(MaybeUninit::new(f32::NAN));
    write(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: the first `len` elements were written (the caller's promise).
    unsafe { values.set_len(len) };
    values
}

/// `t` itself when its elements lie in order in its buffer (a slice of it reads them), else a
/// contiguous copy: how the CPU twins read their inputs.
pub(crate) fn contiguous_f32(t: FloatTensor<Flex>) -> FloatTensor<Flex> {
    if t.as_slice::<f32>().is_some() { t } else { t.to_contiguous() }
}

/// `t`'s f32 elements in a tensor that a CPU twin may write its result over: `t` itself when
/// nothing else holds its buffer and the buffer is exactly its elements in order (a backward's
/// incoming gradient, usually), else one contiguous copy (burn-flex's `into_data` copies a
/// shared buffer twice: out of the `Arc`, then into an aligned allocation).
pub(crate) fn writable_f32(t: FloatTensor<Flex>) -> FloatTensor<Flex> {
    let whole = t.is_unique()
        && t.layout().is_contiguous()
        && t.layout().start_offset() == 0
        && t.storage::<f32>().len() == t.layout().num_elements();
    if whole {
        return t;
    }
    let t = contiguous_f32(t);
    let values = t.as_slice::<f32>().expect("a contiguous tensor").to_vec();
    FloatTensor::<Flex>::from_data(TensorData::new(values, t.shape()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use std::sync::OnceLock;

    #[test]
    fn a_buffer_is_written_over_only_when_nothing_else_holds_it() {
        let tensor =
            |values: &[f32], shape: [usize; 2]| FloatTensor::<Flex>::from_data(TensorData::new(values.to_vec(), shape));
        let address = |t: &FloatTensor<Flex>| t.storage::<f32>().as_ptr();
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        // Held by nothing else: the same buffer.
        let unique = tensor(&values, [3, 4]);
        let at = address(&unique);
        assert_eq!(address(&writable_f32(unique)), at);
        // Shared: a copy, and writing it leaves the other holder's values as they were.
        let shared = tensor(&values, [3, 4]);
        let mut copy = writable_f32(shared.clone());
        assert_ne!(address(&copy), address(&shared));
        copy.try_storage_mut::<f32>().unwrap()[0] = 99.0;
        assert_eq!(shared.as_slice::<f32>().unwrap(), values.as_slice());
        // A transposed view: its elements in its own order.
        let mut transposed = writable_f32(tensor(&values, [3, 4]).transpose(0, 1));
        assert_eq!(transposed.shape().dims::<2>(), [4, 3]);
        assert_eq!(&transposed.try_storage_mut::<f32>().unwrap()[..4], &[0.0, 4.0, 8.0, 1.0]);
        // Part of a larger buffer: only its elements.
        let row = writable_f32(tensor(&values, [3, 4]).narrow(0, 1, 1));
        assert_eq!(row.as_slice::<f32>().unwrap(), &values[4..8]);
        assert_eq!(row.storage::<f32>().len(), 4);
    }

    /// The wgpu device, opened once per process (wgpu allows one runtime per adapter and API).
    pub fn wgpu() -> Device {
        static DEVICE: OnceLock<Device> = OnceLock::new();
        DEVICE
            .get_or_init(|| {
                Device::wgpu_options().init().unwrap_or_else(|e| {
                    panic!("no wgpu adapter ({e}); these tests run the real kernels on lavapipe where there is no GPU: apt-get install mesa-vulkan-drivers")
                })
            })
            .clone()
    }
}
