//! GELU, the exact erf form, vectorised and on all CPU cores.
//!
//! burn's Flex backend computes GELU and its gradient one element after another on one
//! thread, with a scalar `erff` per element (and an `expf` in the gradient): in profiles of
//! the CPU step that `erff` alone took 8-10% of the samples. Here the CPU twin evaluates erf
//! as PyTorch's vectorised CPU GELU does (Abramowitz and Stegun 7.1.26: a polynomial in
//! `t = 1 / (1 + p z)` times `exp(-z^2)`, at most 1.5e-7 from erf) with a branch-free `exp`,
//! so that the compiler turns each loop into SIMD code (16 lanes with AVX-512, 8 with AVX2,
//! checked at run time; 4 with SSE2 otherwise, and 4 with wasm's SIMD), split over all
//! cores. The gradient shares the forward's `exp(-x^2 / 2)`: one exponential per element for
//! both erf and the density. The loops use no fused multiply-add (Rust never contracts
//! `a * b + c`), so every path, AVX-512, AVX2 or not, gives the same bits: those of
//! `gelu_f32` and `gelu_backward_f32`, the specification. On the GPU backends the same arithmetic is one CubeCL kernel each way
//! (with the GPU's own `exp`, so within a few ulp of those bits) where burn's GELU takes five
//! element-wise kernels forward and about twenty backward, and its backward is the
//! derivative of GELU's tanh approximation (up to 8.7e-4 from the exact one); under burn's
//! fusion the op is burn's own, which its fusion can fuse. The model calls burn's GELU
//! instead under `fused = false`.

use std::mem::MaybeUninit;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;

// The specification.

/// `exp(a)` for `a <= 0`, within 2 ulp of the true value, and 0 below -87 (where the true
/// value nears f32's smallest normal: so that even `f32::MAX` times it is 0); NaN for NaN.
/// Also the causal softmax's exponential (its arguments are never positive). Cody and Waite's reduction to
/// `a = n ln 2 + r` with `|r| <= ln 2 / 2`, then Cephes' `expf` polynomial for `e^r`, then
/// `2^n` written into the exponent's bits: no branch and no table, so that it vectorises.
#[inline(always)]
pub(crate) fn exp_nonpositive(a: f32) -> f32 {
    // Round a / ln 2 to the nearest integer by adding and removing 1.5 * 2^23: the sum's
    // last mantissa bits are then the integer n itself.
    const ROUND: f32 = 12_582_912.0;
    let underflows = a < -87.0;
    // A select rather than `f32::max`, which would be a scalar call per lane in wasm (whose
    // `max` propagates NaN); a NaN stays NaN through it and out of the function.
    let a = if underflows { -87.0 } else { a };
    let shifted = a * core::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // ln 2 in two parts; n times the first part is exact.
    let r = a - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n for n in [-126, 0]: the biased exponent n + 127 in the float's exponent bits.
    let n_bits = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let e = e_r * f32::from_bits(((n_bits + 127) << 23) as u32);
    if underflows { 0.0 } else { e }
}

/// `Phi(x) = 0.5 (1 + erf(x / sqrt 2))`, the normal CDF, and `exp(-x^2 / 2)`.
/// `1 - erf(z) ~= t (a1 + a2 t + ... + a5 t^4) exp(-z^2)`, `t = 1 / (1 + p z)`, for z >= 0
/// (Abramowitz and Stegun 7.1.26), and erf is odd: for x < 0 the CDF is half that term,
/// which keeps its small values relative rather than a difference from 1.
#[inline(always)]
fn normal_cdf_and_gaussian(x: f32) -> (f32, f32) {
    let z = x.abs() * core::f32::consts::FRAC_1_SQRT_2;
    let gaussian = exp_nonpositive(-(z * z));
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = 1.061_405_4;
    let poly = poly * t - 1.453_152_1;
    let poly = poly * t + 1.421_413_8;
    let poly = poly * t - 0.284_496_72;
    let poly = poly * t + 0.254_829_6;
    let half_erfc = 0.5 * (poly * t * gaussian);
    let cdf = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    (cdf, gaussian)
}

/// `0.5 x (1 + erf(x / sqrt 2))`, as PyTorch's default GELU, within 1.5e-7 |x| of it.
#[inline(always)]
pub fn gelu_f32(x: f32) -> f32 {
    x * normal_cdf_and_gaussian(x).0
}

/// The gradient `g (Phi(x) + x phi(x))`, with `Phi` and `phi` the normal CDF and density.
#[inline(always)]
pub fn gelu_backward_f32(x: f32, g: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let (cdf, gaussian) = normal_cdf_and_gaussian(x);
    g * (cdf + x * (INV_SQRT_2PI * gaussian))
}

// The loops, compiled for the SIMD the machine has (`with_simd!`).

/// Writes every element of `y` (as long as `x`).
#[inline(always)]
fn gelu_loop(y: &mut [MaybeUninit<f32>], x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| {
        y.write(gelu_f32(*x));
    });
}
with_simd!(gelu_slice, gelu_loop, (y: &mut [MaybeUninit<f32>], x: &[f32]));

#[inline(always)]
fn gelu_backward_loop(grad: &mut [f32], x: &[f32]) {
    grad.iter_mut().zip(x).for_each(|(g, x)| *g = gelu_backward_f32(*x, *g));
}
with_simd!(gelu_backward_slice, gelu_backward_loop, (grad: &mut [f32], x: &[f32]));

// The op.

/// GELU and its gradient as one op each. The default bodies are the backend's own (burn's
/// kernels, under its fusion); the GPU backends, Flex and Autodiff implement them below.
#[backend_extension(Cube, Flex, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait GeluOps: Backend {
    #[fusion(default)]
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu(x)
    }

    #[fusion(default)]
    fn gelu_erf_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu_backward(x, grad)
    }
}

/// GELU (`0.5 x (1 + erf(x / sqrt 2))`, as torch's default), differentiable: on the CPU
/// `gelu_f32` on all cores, on the GPU one kernel each way (burn's under its fusion).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::gelu_erf(x.into_dispatch()))
}

mod cube_kernel {
    use cubecl::prelude::*;

    /// `normal_cdf_and_gaussian`, with the GPU's `exp`.
    #[cube]
    fn cdf_and_gaussian(x: f32) -> (f32, f32) {
        let z = f32::abs(x) * 0.707_106_77; // 1 / sqrt 2
        let gaussian = f32::exp(-(z * z));
        let t = 1.0f32 / (1.0f32 + 0.327_591_1 * z);
        let mut poly = 1.061_405_4f32;
        poly = poly * t - 1.453_152_1;
        poly = poly * t + 1.421_413_8;
        poly = poly * t - 0.284_496_72;
        poly = poly * t + 0.254_829_6;
        let half_erfc = 0.5f32 * (poly * t * gaussian);
        (select(x >= 0.0, 1.0f32 - half_erfc, half_erfc), gaussian)
    }

    #[cube(launch_unchecked)]
    pub fn gelu_kernel(x: &Tensor<f32>, y: &mut Tensor<f32>) {
        if ABSOLUTE_POS >= y.len() {
            terminate!();
        }
        let v = x[ABSOLUTE_POS];
        let (cdf, _gaussian) = cdf_and_gaussian(v);
        y[ABSOLUTE_POS] = v * cdf;
    }

    #[cube(launch_unchecked)]
    pub fn gelu_backward_kernel(x: &Tensor<f32>, grad: &Tensor<f32>, dx: &mut Tensor<f32>) {
        if ABSOLUTE_POS >= dx.len() {
            terminate!();
        }
        let v = x[ABSOLUTE_POS];
        let (cdf, gaussian) = cdf_and_gaussian(v);
        dx[ABSOLUTE_POS] = grad[ABSOLUTE_POS] * (cdf + v * (0.398_942_3f32 * gaussian)); // 1 / sqrt(2 pi)
    }
}

/// One element per unit; inputs of another type than f32 get burn's ops.
impl GeluOps for CubeBackend {
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype != DType::F32 {
            return <Self as ActivationOps<Self>>::gelu(x);
        }
        let x = into_contiguous(x);
        let y = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), x.shape(), DType::F32);
        crate::launch_per_element(&y, |count, dim| {
            // SAFETY: the kernel checks its bounds (ABSOLUTE_POS < len); x and y hold the same
            // number of elements, contiguous.
            unsafe {
                cube_kernel::gelu_kernel::launch_unchecked(
                    &y.client,
                    count,
                    dim,
                    x.clone().into_tensor_arg(),
                    y.clone().into_tensor_arg(),
                )
            }
        });
        y
    }

    fn gelu_erf_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype != DType::F32 || grad.dtype != DType::F32 || x.shape() != grad.shape() {
            return <Self as ActivationOps<Self>>::gelu_backward(x, grad);
        }
        let (x, grad) = (into_contiguous(x), into_contiguous(grad));
        let dx = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), x.shape(), DType::F32);
        crate::launch_per_element(&dx, |count, dim| {
            // SAFETY: as the forward's; grad holds as many elements as x and dx.
            unsafe {
                cube_kernel::gelu_backward_kernel::launch_unchecked(
                    &dx.client,
                    count,
                    dim,
                    x.clone().into_tensor_arg(),
                    grad.clone().into_tensor_arg(),
                    dx.clone().into_tensor_arg(),
                )
            }
        });
        dx
    }
}

/// Elements per task: large enough that a task outweighs handing it to a thread.
const CHUNK: usize = 1 << 14;

impl GeluOps for Flex {
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return <Flex as ActivationOps<Flex>>::gelu(x);
        }
        let shape = x.shape();
        // Read where it lies: autodiff keeps the input for the backward, so taking its buffer
        // would copy it (burn-flex's `into_data` copies a shared buffer, twice).
        let x = crate::contiguous_f32(x);
        let x: &[f32] = x.as_slice().expect("a contiguous tensor");
        // SAFETY: gelu_slice writes all of each chunk (as long as its part of x).
        let y = unsafe {
            crate::written(x.len(), |y| {
                crate::for_each_chunk(y, CHUNK, |start, y| gelu_slice(y, &x[start..start + y.len()]))
            })
        };
        FloatTensor::<Flex>::from_data(TensorData::new(y, shape))
    }

    fn gelu_erf_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.shape() != grad.shape() {
            return <Flex as ActivationOps<Flex>>::gelu_backward(x, grad);
        }
        // The input is read where it lies (autodiff keeps it: taking it would copy it).
        let x = crate::contiguous_f32(x);
        let x: &[f32] = x.as_slice().expect("a contiguous tensor");
        // The gradient is written over the incoming one.
        let mut grad = crate::writable_f32(grad);
        let values: &mut [f32] = grad.try_storage_mut().expect("a buffer of its own");
        crate::for_each_chunk(values, CHUNK, |start, g| gelu_backward_slice(g, &x[start..start + g.len()]));
        grad
    }
}

/// Under autodiff: the inner backend's `gelu_erf`, and its `gelu_erf_backward` for the
/// gradient (what burn's own autodiff GELU does with the backend's `gelu`/`gelu_backward`).
impl<B: GeluOps, C: CheckpointStrategy> GeluOps for Autodiff<B, C> {
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward;

        impl<B: GeluOps> Backward<B, 1> for GeluBackward {
            type State = NodeId;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let input = checkpointer.retrieve_node_output(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::gelu_erf_backward(input, grad));
            }
        }

        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::gelu_erf(x.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_erf(x.into_primitive())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, activation};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// 70 000 inputs in [-10.85, 10.85), with 0 and both signs: several CPU chunks, every
    /// range of the polynomial, and past where the Gaussian underflows to f32's smallest.
    fn xs() -> Vec<f32> {
        (0..70_000).map(|i| (i as f32 - 35_000.0) * 3.1e-4).collect()
    }

    fn inputs(device: &Device) -> Tensor<2> {
        Tensor::<1>::from_floats(xs().as_slice(), device).reshape([7, 10_000])
    }

    /// GELU and its gradient in f64 from libm's erf, for the accuracy checks.
    fn exact(x: f32) -> (f64, f64) {
        let x = x as f64;
        let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        (x * cdf, cdf + x * pdf)
    }

    #[test]
    fn the_specification_is_within_a_few_1e_7_of_exact_gelu() {
        let (mut worst_value, mut worst_grad) = (0f64, 0f64);
        for x in xs().into_iter().chain([1e-30, -1e-30, 30.0, -30.0, 1e30, -1e30, f32::MAX, f32::MIN]) {
            let (value, grad) = exact(x);
            // Relative to |x| for the value (GELU is x times the CDF), absolute for the gradient.
            worst_value = worst_value.max((gelu_f32(x) as f64 - value).abs() / x.abs().max(1.0) as f64);
            worst_grad = worst_grad.max((gelu_backward_f32(x, 1.0) as f64 - grad).abs());
        }
        // A&S 7.1.26 is within 1.5e-7 of erf, so the CDF within 0.75e-7, plus f32 rounding
        // (1.7e-7 and 2.5e-7 measured; the bits are the same on every machine).
        assert!(worst_value < 3e-7, "GELU {worst_value:e} from exact");
        assert!(worst_grad < 5e-7, "gradient {worst_grad:e} from exact");
    }

    #[test]
    fn the_exponential_is_within_2_ulp_and_0_past_its_floor() {
        for i in 0..87_000 {
            let a = -(i as f32) * 1e-3;
            let (got, want) = (exp_nonpositive(a) as f64, (a as f64).exp());
            assert!((got - want).abs() <= 2.0 * f32::EPSILON as f64 * want, "exp({a}) = {got}, not {want}");
        }
        for a in [-87.5, -1e3, -1e30, f32::NEG_INFINITY] {
            assert_eq!(exp_nonpositive(a), 0.0, "exp({a})");
        }
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn the_simd_loops_give_the_specifications_bits() {
        let x = xs();
        // SAFETY: gelu_slice writes all of its output.
        let forward = unsafe { crate::written(x.len(), |y| gelu_slice(y, &x)) };
        let mut backward: Vec<f32> = x.iter().map(|x| x.cos()).collect();
        let g = backward.clone();
        gelu_backward_slice(&mut backward, &x);
        for i in 0..x.len() {
            assert_eq!(forward[i].to_bits(), gelu_f32(x[i]).to_bits(), "GELU({})", x[i]);
            assert_eq!(backward[i].to_bits(), gelu_backward_f32(x[i], g[i]).to_bits(), "gradient at {}", x[i]);
        }
    }

    #[test]
    fn on_the_cpu_the_op_is_the_specification_and_within_a_few_ulp_of_burns() {
        let device = Device::flex().autodiff();
        let (x1, x2) = (inputs(&device).require_grad(), inputs(&device).require_grad());
        // A gradient that is not all ones, so that the product with it is checked too.
        let weights = inputs(&device).cos();
        let (ours, burns) = (gelu(x1.clone()), activation::gelu(x2.clone()));
        let g1 = (ours.clone() * weights.clone()).sum().backward();
        let g2 = (burns.clone() * weights.clone()).sum().backward();
        let (ours, burns) = (values(ours), values(burns));
        let (our_grad, burns_grad) = (values(x1.grad(&g1).unwrap()), values(x2.grad(&g2).unwrap()));
        let weights = values(weights);
        for (i, x) in xs().into_iter().enumerate() {
            assert_eq!(ours[i], gelu_f32(x), "GELU({x})");
            assert_eq!(our_grad[i], gelu_backward_f32(x, weights[i]), "gradient at {x}");
            // burn's (libm's erff) is the other side of the check: an independent erf, within
            // about an ulp of exact, and ours within the bounds above.
            assert!(
                (ours[i] - burns[i]).abs() <= 3e-7 * x.abs().max(1.0),
                "GELU({x}): {} vs burn's {}",
                ours[i],
                burns[i]
            );
            assert!(
                (our_grad[i] - burns_grad[i]).abs() <= 4e-7,
                "gradient at {x}: {} vs burn's {}",
                our_grad[i],
                burns_grad[i]
            );
        }
    }

    /// On the GPU code path (lavapipe where no GPU): the kernels against the specification
    /// and against exact GELU, values and gradients, for inputs read through a transposed view.
    /// (burn's GPU gradient, the tanh approximation's derivative, is up to 8.7e-4 from exact.)
    #[test]
    fn on_the_gpu_the_kernels_are_the_specification_within_a_few_ulp() {
        let device = crate::tests::wgpu().autodiff();
        let x = inputs(&device).transpose().require_grad();
        let weights = inputs(&device).cos().transpose();
        let y = gelu(x.clone());
        let grads = (y.clone() * weights.clone()).sum().backward();
        let (y, grad) = (values(y.transpose()), values(x.grad(&grads).unwrap().transpose()));
        let weights = values(weights.transpose());
        // The worst distance of each kind: values relative to |x| (GELU is x times the CDF),
        // gradients absolute (the weights are at most 1).
        let (mut value_spec, mut value_exact, mut grad_spec, mut grad_exact) = (0f64, 0f64, 0f64, 0f64);
        for (i, x) in xs().into_iter().enumerate() {
            let (value, slope) = exact(x);
            let scale = x.abs().max(1.0) as f64;
            value_spec = value_spec.max((y[i] - gelu_f32(x)).abs() as f64 / scale);
            value_exact = value_exact.max((y[i] as f64 - value).abs() / scale);
            grad_spec = grad_spec.max((grad[i] - gelu_backward_f32(x, weights[i])).abs() as f64);
            grad_exact = grad_exact.max((grad[i] as f64 - slope * weights[i] as f64).abs());
        }
        // The GPU's exp is within a few ulp (lavapipe's, and WGSL allows more), and its
        // compiler may fuse a multiply-add (lavapipe: 1.2e-7 and 3.6e-7 from the specification,
        // 1.7e-7 and 2.6e-7 from exact); burn's GPU gradient is 4.6e-4 from exact here.
        assert!(
            value_spec <= 5e-7 && grad_spec <= 8e-7,
            "from the specification: GELU {value_spec:e}, gradient {grad_spec:e}"
        );
        assert!(value_exact <= 6e-7 && grad_exact <= 8e-7, "from exact GELU: {value_exact:e}, gradient {grad_exact:e}");
        // Past where the Gaussian underflows the values are exact (x or 0, slopes 1 or 0),
        // however the GPU rounds; 0 is among the inputs above.
        let extremes = [f32::MAX, f32::MIN, 1e30, -1e30, 88.0, -88.0, f32::NAN];
        let x = Tensor::<1>::from_floats(extremes, &device).require_grad();
        let y = gelu(x.clone());
        let grad = values(x.grad(&y.clone().sum().backward()).unwrap());
        let y = values(y);
        for (i, x) in extremes.into_iter().enumerate() {
            if x.is_nan() {
                assert!(y[i].is_nan() && grad[i].is_nan(), "NaN stays NaN");
            } else {
                assert_eq!((y[i], grad[i]), (gelu_f32(x), gelu_backward_f32(x, 1.0)), "GELU and its gradient at {x}");
            }
        }
    }

    #[test]
    fn extreme_inputs_give_finite_values_and_nan_stays_nan() {
        let extremes = [f32::MAX, f32::MIN, 1e30, -1e30, 88.0, -88.0, 0.0, -0.0];
        for x in extremes {
            assert!(gelu_f32(x).is_finite() && gelu_backward_f32(x, 1.0).is_finite(), "x = {x}");
        }
        assert_eq!((gelu_f32(f32::MAX), gelu_f32(-1e30)), (f32::MAX, 0.0));
        assert_eq!((gelu_backward_f32(1e30, 1.0), gelu_backward_f32(-1e30, 1.0)), (1.0, 0.0));
        assert!(gelu_f32(f32::NAN).is_nan() && gelu_backward_f32(f32::NAN, 1.0).is_nan());
    }

    #[test]
    fn a_strided_input_gives_the_same_values_and_gradients() {
        let device = Device::flex().autodiff();
        let x = inputs(&device);
        assert_eq!(values(gelu(x.clone().transpose()).transpose()), values(gelu(x)));
        // The gradient's input is then a transposed view as well.
        let (x1, x2) = (inputs(&device).require_grad(), inputs(&device).require_grad());
        let weights = inputs(&device).cos();
        let g1 = (gelu(x1.clone().transpose()) * weights.clone().transpose()).sum().backward();
        let g2 = (gelu(x2.clone()) * weights).sum().backward();
        assert_eq!(values(x1.grad(&g1).unwrap()), values(x2.grad(&g2).unwrap()));
    }
}
