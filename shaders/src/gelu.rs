//! GELU, the exact erf form, on all CPU cores.
//!
//! burn's Flex backend computes GELU and its gradient one element after another on one
//! thread (a scalar `erff` per element, and an `expf` in the gradient): at nanoGPT's size
//! 25 M elements per layer, while the other cores wait. Here the CPU twin is the same
//! per-element formula as burn's, the same functions in the same order (so the same bits),
//! split over all cores; element-wise, so how the work is split changes nothing. The GPU
//! backends keep burn's own GELU (the trait's default bodies), which their fusion can fuse.

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

// The specification: burn-flex 0.22.1's f32 GELU and its gradient, term for term.

const SQRT_2: f32 = core::f32::consts::SQRT_2;

/// `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / SQRT_2))
}

/// The gradient `g (Phi(x) + x phi(x))`, with `Phi` and `phi` the normal CDF and density.
pub fn gelu_backward_f32(x: f32, g: f32) -> f32 {
    let inv_sqrt_2pi: f32 = 1.0 / (2.0 * core::f32::consts::PI).sqrt();
    let cdf = 0.5 * (1.0 + libm::erff(x / SQRT_2));
    let pdf = inv_sqrt_2pi * (-0.5 * x * x).exp();
    g * (cdf + x * pdf)
}

// The op.

/// GELU and its gradient as one op each. The default bodies are the backend's own (burn's
/// GPU kernels); Flex and Autodiff implement them below.
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

/// GELU (`0.5 x (1 + erf(x / sqrt 2))`, as torch's default), differentiable.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::gelu_erf(x.into_dispatch()))
}

impl GeluOps for CubeBackend {}

/// Elements per task: large enough that a task outweighs handing it to a thread.
#[cfg(not(target_family = "wasm"))]
const CHUNK: usize = 1 << 14;

impl GeluOps for Flex {
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return <Flex as ActivationOps<Flex>>::gelu(x);
        }
        let shape = x.shape();
        // The input's own buffer when nothing else holds it (as burn's GELU), else a copy.
        let mut values: Vec<f32> = x.into_data().try_into_vec().expect("f32 data");
        let apply = |chunk: &mut [f32]| chunk.iter_mut().for_each(|v| *v = gelu_f32(*v));
        #[cfg(not(target_family = "wasm"))]
        {
            use rayon::prelude::*;
            values.par_chunks_mut(CHUNK).for_each(apply);
        }
        #[cfg(target_family = "wasm")]
        apply(values.as_mut_slice());
        FloatTensor::<Flex>::from_data(TensorData::new(values, shape))
    }

    fn gelu_erf_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.shape() != grad.shape() {
            return <Flex as ActivationOps<Flex>>::gelu_backward(x, grad);
        }
        let shape = grad.shape();
        // The input is read where it lies (autodiff keeps it: taking it would copy it).
        let x = if x.as_slice::<f32>().is_some() { x } else { x.to_contiguous() };
        let x: &[f32] = x.as_slice().expect("a contiguous tensor");
        // The gradient is written over the incoming one.
        let mut values: Vec<f32> = grad.into_data().try_into_vec().expect("f32 data");
        let apply =
            |(g, x): (&mut [f32], &[f32])| g.iter_mut().zip(x).for_each(|(g, x)| *g = gelu_backward_f32(*x, *g));
        #[cfg(not(target_family = "wasm"))]
        {
            use rayon::prelude::*;
            values.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(apply);
        }
        #[cfg(target_family = "wasm")]
        apply((values.as_mut_slice(), x));
        FloatTensor::<Flex>::from_data(TensorData::new(values, shape))
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

    /// Inputs over erf's ranges (its polynomial pieces change at |x| / sqrt 2 = 0.84375,
    /// 1.25, 1/0.35 and 6), with 0 and both signs; 70 000 elements, so several CPU chunks.
    fn inputs(device: &Device) -> Tensor<2> {
        let xs: Vec<f32> = (0..70_000).map(|i| (i as f32 - 35_000.0) * 3.1e-4).collect();
        Tensor::<1>::from_floats(xs.as_slice(), device).reshape([7, 10_000])
    }

    #[test]
    fn on_the_cpu_gelu_and_its_gradient_are_burns_bit_for_bit() {
        let device = Device::flex().autodiff();
        let (x1, x2) = (inputs(&device).require_grad(), inputs(&device).require_grad());
        // A gradient that is not all ones, so that the product with it is checked too.
        let weights = inputs(&device).cos();
        let (ours, burns) = (gelu(x1.clone()), activation::gelu(x2.clone()));
        let g1 = (ours.clone() * weights.clone()).sum().backward();
        let g2 = (burns.clone() * weights).sum().backward();
        assert_eq!(values(ours), values(burns));
        assert_eq!(values(x1.grad(&g1).unwrap()), values(x2.grad(&g2).unwrap()));
    }

    #[test]
    fn on_the_cpu_gelu_is_the_specified_formula() {
        let device = Device::flex();
        let x = inputs(&device);
        let got = values(gelu(x.clone()));
        for (x, got) in values(x).into_iter().zip(got) {
            assert_eq!(got, gelu_f32(x), "x = {x}");
        }
    }

    #[test]
    fn a_strided_input_gives_the_same_values_and_gradients() {
        let device = Device::flex().autodiff();
        let x = inputs(&device);
        assert_eq!(values(gelu(x.clone().transpose()).transpose()), values(gelu(x)));
        // The gradient's input is then a transposed view as well.
        let (x1, x2) = (inputs(&device).require_grad(), inputs(&device).require_grad());
        let weights = inputs(&device).cos().transpose();
        let g1 = (gelu(x1.clone().transpose()) * weights.clone()).sum().backward();
        let g2 = (activation::gelu(x2.clone().transpose()) * weights).sum().backward();
        assert_eq!(values(x1.grad(&g1).unwrap()), values(x2.grad(&g2).unwrap()));
    }
}
