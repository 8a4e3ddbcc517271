//! simplegpt's own kernels, for where one kernel beats a chain of tensor ops (or, on the
//! CPU, one loop on all cores beats burn's on one).
//!
//! The rule: each op is one file, holding a CubeCL `#[cube]` kernel for the GPU backends
//! (compiled to WGSL for wgpu and WebGPU, and to CUDA) and its CPU twin (a loop on burn's
//! Flex backend), which compute the same bits; the file's tests check both against the op's
//! specification. This crate depends on burn only, never on the simplegpt crate, which calls
//! it.
//!
//! - `dropout`: the dropout mask, a keyed hash of each element's index (`dropout::feistel30`).
//! - `gelu`: GELU and its gradient, on all cores on the CPU (burn's run on one) with the
//!   same bits as burn's; on the GPU no kernel of ours: burn's own, which its fusion fuses.
//! - `norm`: LayerNorm and RMSNorm with a gain, forward and backward, one pass each on all
//!   cores on the CPU, one cube per row on the GPU (not under burn's fusion).
//! - `softmax`: the attention's causal softmax (scale, mask, softmax) and its gradient, one
//!   pass each on all cores; CPU only, as `norm`.

pub mod dropout;
pub mod gelu;
pub mod norm;
pub mod softmax;

pub use dropout::{DropoutMaskOps, dropout};
pub use gelu::{GeluOps, gelu};
pub use norm::{NormOps, norm};
pub use softmax::{CausalSoftmaxOps, causal_softmax};

#[cfg(test)]
mod tests {
    use burn::tensor::Device;
    use std::sync::OnceLock;

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
