//! One AdamW step of one parameter as one op: the moments and the parameter updated in one
//! pass over its elements.
//!
//! Written as tensor ops the step is about 16 element-wise kernels a parameter (scale the
//! gradient, two moments, weight decay, two bias corrections, the square root, the division,
//! ...), each a pass over the parameter: at nanoGPT's shakespeare_char size, 51 parameters,
//! about 800 launches of a step's 2 165 on the H200 (BENCHMARKS.md), and on WebGPU each
//! launch has its cost. Here it is one kernel a parameter on the GPU backends (the moments
//! written over in place) and one loop on all cores on the CPU. The arithmetic is the tensor
//! ops', in f32, in their order and with their f32 constants, so on the CPU the op gives
//! their bits (tested in the simplegpt crate's optimizer).

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;

// The specification.

/// The constants of one step, each rounded to f32 once, as the tensor ops round a scalar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `1 - lr * weight_decay`: decoupled weight decay.
    pub decay: f32,
    /// `1 - beta1^t` and `1 - beta2^t`: the bias corrections at step `t` (from 1).
    pub bias_correction1: f32,
    pub bias_correction2: f32,
    pub eps: f32,
    pub lr: f32,
}

impl AdamWScalars {
    /// The constants of step `t` (counted from 1), computed in f64.
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, t: u64) -> Self {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        AdamWScalars {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            bias_correction1: (1.0 - beta1.powi(t)) as f32,
            bias_correction2: (1.0 - beta2.powi(t)) as f32,
            eps: eps as f32,
            lr: lr as f32,
        }
    }
}

/// One element's step: parameter `p`, gradient `g` times `grad_scale`, moments `m` and `v`
/// -> the new `(p, m, v)`. Every backend computes this, in this order.
#[inline(always)]
pub fn adamw_f32(p: f32, g: f32, m: f32, v: f32, grad_scale: f32, s: &AdamWScalars) -> (f32, f32, f32) {
    let g = g * grad_scale;
    let m = m * s.beta1 + g * s.one_minus_beta1;
    let v = v * s.beta2 + (g * g) * s.one_minus_beta2;
    let m_hat = m / s.bias_correction1;
    let v_hat = v / s.bias_correction2;
    let p = p * s.decay - m_hat / (v_hat.sqrt() + s.eps) * s.lr;
    (p, m, v)
}

// The op.

/// `(param, grad, m, v, grad_scale [1])` -> the new `(param, m, v)`, all flat and of one
/// length. `m` and `v` are written over where nothing else holds them.
#[backend_extension(Cube: cfg(not(feature = "fusion")), Flex, Autodiff)]
pub trait AdamWOps: Backend {
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad_scale: FloatTensor<Self>,
        scalars: AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// One AdamW step of a flattened parameter: the new `(param, m, v)`. `grad_scale` (one value,
/// on the device) multiplies the gradient first: how clipping costs no read-back. On the CPU
/// and the GPU backends, not under burn's fusion: there the caller keeps the tensor ops.
pub fn adamw_step(
    param: Tensor<1>,
    grad: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    grad_scale: Tensor<1>,
    scalars: AdamWScalars,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let n = param.dims()[0];
    assert!(
        grad.dims() == [n] && m.dims() == [n] && v.dims() == [n] && grad_scale.dims() == [1],
        "adamw_step of a parameter [{n}], its gradient and moments [{n}] and one scale: got {:?}, {:?}, {:?}, {:?}",
        grad.dims(),
        m.dims(),
        v.dims(),
        grad_scale.dims()
    );
    let (p, m, v) = Dispatch::adamw_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        grad_scale.into_dispatch(),
        scalars,
    );
    (Tensor::from_dispatch(p), Tensor::from_dispatch(m), Tensor::from_dispatch(v))
}

// The CPU.

/// Elements per task: large enough that a task outweighs handing it to a thread.
#[cfg(not(target_family = "wasm"))]
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn adamw_loop(p_out: &mut [f32], m: &mut [f32], v: &mut [f32], p: &[f32], g: &[f32], scale: f32, s: &AdamWScalars) {
    for ((((out, m), v), &p), &g) in p_out.iter_mut().zip(m).zip(v).zip(p).zip(g) {
        (*out, *m, *v) = adamw_f32(p, g, *m, *v, scale, s);
    }
}

with_simd!(
    adamw_slice,
    adamw_loop,
    (p_out: &mut [f32], m: &mut [f32], v: &mut [f32], p: &[f32], g: &[f32], scale: f32, s: &AdamWScalars)
);

/// The step's operands, as the loop and the kernel read them unchecked: all f32, the
/// gradient and the moments as long as the parameter (the first), and one scale (the last).
fn check_operands<T: TensorMetadata>([param, grad, m, v, grad_scale]: [&T; 5]) {
    for t in [param, grad, m, v, grad_scale] {
        assert!(t.dtype() == DType::F32, "the fused AdamW step computes in f32");
    }
    let n = param.shape().num_elements();
    assert!(
        [grad, m, v].iter().all(|t| t.shape().num_elements() == n) && grad_scale.shape().num_elements() == 1,
        "adamw_step: a gradient and moments as long as the parameter, and one scale"
    );
}

impl AdamWOps for Flex {
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad_scale: FloatTensor<Self>,
        scalars: AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        check_operands([&param, &grad, &m, &v, &grad_scale]);
        let shape = param.shape();
        // The parameter and the gradient are read where they lie (the model still holds the
        // parameter); the moments are written over.
        let (p, g, scale) =
            (crate::contiguous_f32(param), crate::contiguous_f32(grad), crate::contiguous_f32(grad_scale));
        let (p, g): (&[f32], &[f32]) = (p.as_slice().expect("contiguous"), g.as_slice().expect("contiguous"));
        let scale = scale.as_slice::<f32>().expect("contiguous")[0];
        let (mut m, mut v) = (crate::writable_f32(m), crate::writable_f32(v));
        let mut p_out = vec![0.0f32; p.len()];
        {
            let m: &mut [f32] = m.try_storage_mut().expect("a buffer of its own");
            let v: &mut [f32] = v.try_storage_mut().expect("a buffer of its own");
            #[cfg(not(target_family = "wasm"))]
            {
                use rayon::prelude::*;
                p_out
                    .par_chunks_mut(CHUNK)
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .zip(p.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                    .for_each(|(((out, m), v), (p, g))| adamw_slice(out, m, v, p, g, scale, &scalars));
            }
            #[cfg(target_family = "wasm")]
            adamw_slice(&mut p_out, m, v, p, g, scale, &scalars);
        }
        (FloatTensor::<Flex>::from_data(TensorData::new(p_out, shape)), m, v)
    }
}

// The GPU.

mod cube_kernel {
    use cubecl::prelude::*;

    /// One element per unit: `adamw_f32`, written out (CubeCL kernels call `#[cube]`
    /// functions only), the moments written over in place.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_kernel(
        param: &Tensor<f32>,
        grad: &Tensor<f32>,
        grad_scale: &Tensor<f32>,
        m: &mut Tensor<f32>,
        v: &mut Tensor<f32>,
        out: &mut Tensor<f32>,
        beta1: f32,
        one_minus_beta1: f32,
        beta2: f32,
        one_minus_beta2: f32,
        decay: f32,
        bias_correction1: f32,
        bias_correction2: f32,
        eps: f32,
        lr: f32,
    ) {
        if ABSOLUTE_POS >= out.len() {
            terminate!();
        }
        let i = ABSOLUTE_POS;
        let g = grad[i] * grad_scale[0];
        let m_new = m[i] * beta1 + g * one_minus_beta1;
        let v_new = v[i] * beta2 + (g * g) * one_minus_beta2;
        let m_hat = m_new / bias_correction1;
        let v_hat = v_new / bias_correction2;
        out[i] = param[i] * decay - m_hat / (f32::sqrt(v_hat) + eps) * lr;
        m[i] = m_new;
        v[i] = v_new;
    }
}

impl AdamWOps for CubeBackend {
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad_scale: FloatTensor<Self>,
        scalars: AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        check_operands([&param, &grad, &m, &v, &grad_scale]);
        let (p, g, scale) = (into_contiguous(param), into_contiguous(grad), into_contiguous(grad_scale));
        // The moments are written over: each a buffer of its own, contiguous.
        let own = |t: FloatTensor<Self>| {
            let t = into_contiguous(t);
            if t.can_mut() { t } else { t.copy() }
        };
        let (m, v) = (own(m), own(v));
        let out = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            p.client.clone(),
            p.device.clone(),
            p.shape(),
            DType::F32,
        );
        let s = scalars;
        crate::launch_per_element(&out, |count, dim| {
            // SAFETY: the kernel checks its bounds (ABSOLUTE_POS < len) before it reads or
            // writes; every tensor holds as many elements as `out` (grad_scale one, read at 0),
            // contiguous (checked above).
            unsafe {
                cube_kernel::adamw_kernel::launch_unchecked(
                    &out.client,
                    count,
                    dim,
                    p.into_tensor_arg(),
                    g.into_tensor_arg(),
                    scale.into_tensor_arg(),
                    m.clone().into_tensor_arg(),
                    v.clone().into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    s.beta1,
                    s.one_minus_beta1,
                    s.beta2,
                    s.one_minus_beta2,
                    s.decay,
                    s.bias_correction1,
                    s.bias_correction2,
                    s.eps,
                    s.lr,
                )
            }
        });
        (out, m, v)
    }
}

/// Under autodiff (a parameter's tensor is tracked): the inner backend's step, tracked by
/// nothing (an update is not differentiated).
impl<B: AdamWOps, C: CheckpointStrategy> AdamWOps for Autodiff<B, C> {
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad_scale: FloatTensor<Self>,
        scalars: AdamWScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (p, m, v) = B::adamw_step(
            Self::inner(param),
            Self::inner(grad),
            Self::inner(m),
            Self::inner(v),
            Self::inner(grad_scale),
            scalars,
        );
        (Self::from_inner(p), Self::from_inner(m), Self::from_inner(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn flat(values: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
    }

    fn read(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// n values spread over [-scale, scale], differing from element to element.
    fn spread(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = crate::dropout::feistel30(i, &crate::dropout::round_keys(seed as u64));
                (h as f32 / (1u32 << 29) as f32 - 1.0) * scale
            })
            .collect()
    }

    /// Three steps on each backend: every element of the parameter and both moments against
    /// `adamw_f32` one element at a time (the same bits on the CPU; within rounding on the GPU,
    /// whose compiler may contract a multiply and an add), a length over several CPU tasks and
    /// not a multiple of a cube.
    fn check(device: &Device, exact: bool) {
        let n = 3 * (1 << 14) + 77;
        let (mut p, mut m, mut v) = (spread(n, 1, 2.0), vec![0.0f32; n], vec![0.0f32; n]);
        let (mut pt, mut mt, mut vt) = (flat(&p, device), flat(&m, device), flat(&v, device));
        for t in 1..=3u64 {
            let g = spread(n, 10 + t as u32, 0.5);
            let scale = 0.25 * t as f32;
            let s = AdamWScalars::new(3e-3, 0.9, 0.95, 1e-8, 0.1, t);
            (pt, mt, vt) = adamw_step(pt, flat(&g, device), mt, vt, flat(&[scale], device), s);
            for i in 0..n {
                (p[i], m[i], v[i]) = adamw_f32(p[i], g[i], m[i], v[i], scale, &s);
            }
            for (what, got, want) in
                [("param", read(pt.clone()), &p), ("m", read(mt.clone()), &m), ("v", read(vt.clone()), &v)]
            {
                for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                    // The GPU's division and square root may be off by a few ulp (WGSL allows 2.5):
                    // relative to the value, with a floor for values near 0 that the update
                    // (about lr = 3e-3) moved.
                    let close = if exact { g == w } else { (g - w).abs() <= 1e-6 * w.abs() + 1e-8 };
                    assert!(close, "step {t}, {what}[{i}] of {n}: {g} where the specification gives {w}");
                }
            }
        }
    }

    #[test]
    fn the_cpu_step_is_the_specified_arithmetic_bit_for_bit() {
        check(&Device::flex(), true);
    }

    #[test]
    fn the_gpu_kernel_step_is_the_specified_arithmetic() {
        check(&crate::tests::wgpu(), false);
    }

    /// The formula itself, on two elements worked by hand (the simplegpt crate's optimizer
    /// test works two whole steps).
    #[test]
    fn one_step_worked_by_hand() {
        // Step 1 from zero moments: m = 0.1 g, v = 0.01 g^2 (beta2 0.99); m^ = g, v^ = g^2,
        // so p moves by lr sign(g) after decaying by 1 - lr wd = 1 - 0.1 * 0.5.
        let s = AdamWScalars::new(0.1, 0.9, 0.99, 0.0, 0.5, 1);
        for device in [Device::flex(), crate::tests::wgpu()] {
            let (p, m, v) = adamw_step(
                flat(&[1.0, -2.0], &device),
                flat(&[0.4, -0.2], &device),
                flat(&[0.0, 0.0], &device),
                flat(&[0.0, 0.0], &device),
                flat(&[0.5], &device),
                s,
            );
            let close = |got: Vec<f32>, want: [f32; 2]| {
                assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6), "{got:?}, want {want:?}");
            };
            close(read(p), [0.85, -1.8]);
            close(read(m), [0.02, -0.01]);
            close(read(v), [0.0004, 0.0001]);
        }
    }

    /// Moments held elsewhere too (a checkpoint being written) are left as they were.
    #[test]
    fn moments_held_elsewhere_are_not_written_over() {
        for device in [Device::flex(), crate::tests::wgpu()] {
            let m = flat(&[0.5, 0.5, 0.5], &device);
            let v = flat(&[0.25, 0.25, 0.25], &device);
            let s = AdamWScalars::new(0.1, 0.9, 0.99, 1e-8, 0.0, 2);
            let ones = flat(&[1.0, 1.0, 1.0], &device);
            let (p_new, m_new, v_new) = adamw_step(ones.clone(), ones, m.clone(), v.clone(), flat(&[1.0], &device), s);
            assert_eq!(read(m), vec![0.5; 3]);
            assert_eq!(read(v), vec![0.25; 3]);
            // The new moments are the step's: m = 0.9 * 0.5 + 0.1 = 0.55, v = 0.99 * 0.25 + 0.01
            // = 0.2575, and p = 1 - 0.1 (0.55 / 0.19) / (sqrt(0.2575 / 0.0199) + 1e-8).
            let p_want = 1.0 - 0.1 * (0.55 / 0.19) / ((0.2575f64 / 0.0199).sqrt() + 1e-8);
            for (got, want) in [(read(m_new), 0.55), (read(v_new), 0.2575), (read(p_new), p_want)] {
                assert!(got.iter().all(|g| (*g as f64 - want).abs() < 1e-6), "{got:?}, want {want}");
            }
        }
    }
}
