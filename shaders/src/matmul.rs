//! The matrix products of the model (its linears' [m, k] x [k, n], the attention's batched
//! [B, nh, T, hs] x [B, nh, hs, T] and [B, nh, T, T] x [B, nh, T, hs]), forward and backward.
//!
//! On the CPU it is the same `gemm` call as burn-flex's matmul (the same crate, operands,
//! strides and threading rule, so the same bits), into a fresh buffer that `gemm` writes
//! whole. burn-flex 0.22.1 first allocates every product's output zeroed as bytes
//! (`FlexTensor::empty`), then copies it into a 16-byte-aligned buffer (cubecl's
//! `Bytes::from_bytes_vec`), then lets `gemm` overwrite it: two passes over each output
//! before the product, 5-6% of the CPU step's samples at nanoGPT's CPU example size, on the
//! thread that waits for the product. The backward is the two products of any matmul,
//! `dA = dC B^T` and `dB = A^T dC`, with the transposes as views (`gemm` takes strides).
//! On the GPU the op is burn's matmul.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use burn_cubecl::CubeBackend;

/// The matrix product. The default body is the backend's own matmul (burn's GPU kernels);
/// Flex and Autodiff implement it below.
#[backend_extension(Cube, Flex, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait MatmulOps: Backend {
    #[fusion(default)]
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as FloatTensorOps<Self>>::float_matmul(lhs, rhs)
    }
}

/// `lhs [.., m, k] x rhs [.., k, n] -> [.., m, n]` over the same batch dimensions,
/// differentiable; either operand may be a strided view (a transpose, heads split off).
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    // The backward below has no broadcasting (no sum over a batch dimension of size 1).
    let (l, r) = (lhs.dims(), rhs.dims());
    assert!(
        D >= 2 && l[..D - 2] == r[..D - 2] && l[D - 1] == r[D - 2],
        "matmul of {l:?} and {r:?}: the same batch dimensions and [.., m, k] x [.., k, n] wanted"
    );
    Tensor::from_dispatch(Dispatch::matmul(lhs.into_dispatch(), rhs.into_dispatch()))
}

impl MatmulOps for CubeBackend {}

/// burn-flex's threading rule, so that the split, and with it the bits, are burn's: a product
/// of at least `PARALLEL` multiply-adds is split over the cores by `gemm`, unless a batch of
/// at least 4 with `BATCH_PARALLEL` in all is split by matrices instead; a batch of smaller
/// products with `BATCH_PARALLEL` in all is split by matrices.
#[cfg(not(target_family = "wasm"))]
const PARALLEL: usize = 192 * 192 * 192;
#[cfg(not(target_family = "wasm"))]
const BATCH_PARALLEL: usize = 128 * 128 * 128;

impl MatmulOps for Flex {
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (ls, rs) = (lhs.shape(), rhs.shape());
        let d = ls.num_dims();
        let same_batch = d >= 2 && rs.num_dims() == d && ls[..d - 2] == rs[..d - 2];
        let (m, k, n) = (ls[d - 2], ls[d - 1], rs[d - 1]);
        if lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 || !same_batch || m == 0 || n == 0 || k == 0 {
            return <Flex as FloatTensorOps<Flex>>::float_matmul(lhs, rhs);
        }
        assert_eq!(rs[d - 2], k, "matmul: [.., {m}, {k}] x [.., {}, {n}]: the inner dimensions differ", rs[d - 2]);
        let batch_shape = &ls[..d - 2];
        let batch: usize = batch_shape.iter().product();
        let (l_strides, r_strides) = (lhs.layout().strides(), rhs.layout().strides());
        // Where matrix `b` (in row-major order over the batch dimensions) starts.
        let start = |strides: &[isize], first: usize, b: usize| {
            let (mut offset, mut rest) = (first as isize, b);
            for (dim, stride) in batch_shape.iter().zip(strides).rev() {
                offset += (rest % dim) as isize * stride;
                rest /= dim;
            }
            offset
        };
        let (lhs_data, rhs_data): (&[f32], &[f32]) = (lhs.storage(), rhs.storage());
        let (lhs_first, rhs_first) = (lhs.layout().start_offset(), rhs.layout().start_offset());
        let product = |b: usize, out: *mut f32, parallelism: gemm::Parallelism| {
            // SAFETY: the operands' views lie within their buffers (burn's layouts), and `out`
            // has room for one [m, n] row-major matrix; with `read_dst` false `gemm` writes
            // every element of it (`dst = 1 * lhs rhs`) without reading any.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    out,
                    1,
                    n as isize,
                    false,
                    lhs_data.as_ptr().offset(start(l_strides, lhs_first, b)),
                    l_strides[d - 1],
                    l_strides[d - 2],
                    rhs_data.as_ptr().offset(start(r_strides, rhs_first, b)),
                    r_strides[d - 1],
                    r_strides[d - 2],
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                )
            }
        };
        let mut out: Vec<f32> = Vec::with_capacity(batch * m * n);
        let matrices = &mut out.spare_capacity_mut()[..batch * m * n];
        #[cfg(not(target_family = "wasm"))]
        {
            use rayon::prelude::*;
            let per_matrix = m.saturating_mul(n).saturating_mul(k);
            let total = batch.saturating_mul(per_matrix);
            let by_matrices = total >= BATCH_PARALLEL && batch > 1;
            if per_matrix >= PARALLEL && !(by_matrices && batch >= 4) {
                let each = |(b, o): (usize, &mut [std::mem::MaybeUninit<f32>])| {
                    product(b, o.as_mut_ptr().cast(), gemm::Parallelism::Rayon(0))
                };
                matrices.chunks_mut(m * n).enumerate().for_each(each);
            } else {
                let each = |(b, o): (usize, &mut [std::mem::MaybeUninit<f32>])| {
                    product(b, o.as_mut_ptr().cast(), gemm::Parallelism::None)
                };
                if by_matrices {
                    matrices.par_chunks_mut(m * n).enumerate().for_each(each);
                } else {
                    matrices.chunks_mut(m * n).enumerate().for_each(each);
                }
            }
        }
        #[cfg(target_family = "wasm")]
        matrices
            .chunks_mut(m * n)
            .enumerate()
            .for_each(|(b, o)| product(b, o.as_mut_ptr().cast(), gemm::Parallelism::None));
        // SAFETY: every matrix was written whole above.
        unsafe { out.set_len(batch * m * n) };
        let mut shape = ls.clone();
        shape[d - 1] = n;
        FloatTensor::<Flex>::from_data(TensorData::new(out, shape))
    }
}

/// Under autodiff: `dA = dC B^T` and `dB = A^T dC`, each only where its operand is tracked.
impl<B: MatmulOps, C: CheckpointStrategy> MatmulOps for Autodiff<B, C> {
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatmulBackward;

        impl<B: MatmulOps> Backward<B, 2> for MatmulBackward {
            /// Each operand is kept only for the other's gradient (as burn's matmul).
            type State = (Option<NodeId>, Option<NodeId>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_lhs, node_rhs] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (lhs, rhs) = ops.state;
                let transpose = |t: FloatTensor<B>| {
                    let d = t.shape().num_dims();
                    B::float_swap_dims(t, d - 2, d - 1)
                };
                if let (Some(node), Some(rhs)) = (node_lhs, rhs) {
                    let rhs = checkpointer.retrieve_node_output(rhs);
                    grads.register::<B>(node.id, B::matmul(grad.clone(), transpose(rhs)));
                }
                if let (Some(node), Some(lhs)) = (node_rhs, lhs) {
                    let lhs = checkpointer.retrieve_node_output(lhs);
                    grads.register::<B>(node.id, B::matmul(transpose(lhs), grad));
                }
            }
        }

        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        match MatmulBackward.prepare::<C>([lhs.node(), rhs.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (rhs_tracked.then(|| prep.checkpoint(&lhs)), lhs_tracked.then(|| prep.checkpoint(&rhs)));
                prep.finish(state, B::matmul(lhs.into_primitive(), rhs.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::matmul(lhs.into_primitive(), rhs.into_primitive())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        t.into_data().try_to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    fn matrix(rows: usize, cols: usize, salt: f32, device: &Device) -> Tensor<2> {
        let xs: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.61 + salt).sin() * (1.0 + (i % 5) as f32)).collect();
        Tensor::<1>::from_floats(xs.as_slice(), device).reshape([rows, cols])
    }

    /// The product and both gradients, as ours and as burn's matmul: the same bits.
    fn same_as_burns<const D: usize>(a: impl Fn() -> Tensor<D>, b: impl Fn() -> Tensor<D>, what: &str) {
        let (a1, b1, a2, b2) = (a().require_grad(), b().require_grad(), a().require_grad(), b().require_grad());
        let (ours, burns) = (matmul(a1.clone(), b1.clone()), a2.clone().matmul(b2.clone()));
        // A gradient that is not all ones, so that the backward's products are checked too.
        let weights = ours.clone().detach().cos();
        let g1 = (ours.clone() * weights.clone()).sum().backward();
        let g2 = (burns.clone() * weights).sum().backward();
        assert_eq!(values(ours), values(burns), "{what}: product");
        assert_eq!(values(a1.grad(&g1).unwrap()), values(a2.grad(&g2).unwrap()), "{what}: lhs's gradient");
        assert_eq!(values(b1.grad(&g1).unwrap()), values(b2.grad(&g2).unwrap()), "{what}: rhs's gradient");
    }

    /// [m, k] x [k, n], as they are or as transposed views of [k, m] and [n, k].
    fn check_2d(device: &Device, m: usize, k: usize, n: usize, transposed: bool) {
        let a = || if transposed { matrix(k, m, 0.3, device).transpose() } else { matrix(m, k, 0.3, device) };
        let b = || if transposed { matrix(n, k, 1.7, device).transpose() } else { matrix(k, n, 1.7, device) };
        same_as_burns(a, b, &format!("[{m}, {k}] x [{k}, {n}], transposed {transposed}"));
    }

    /// The attention's products: q [B, nh, T, hs] x k^T, with q and k heads split off a
    /// [B, T, nh, hs] tensor (views), then the probabilities [B, nh, T, T] x v.
    fn check_attention(device: &Device, b: usize, nh: usize, t: usize, hs: usize) {
        let heads = |salt| move || matrix(b * t, nh * hs, salt, device).reshape([b, t, nh, hs]).swap_dims(1, 2);
        let what = format!("attention, B {b}, nh {nh}, T {t}, hs {hs}");
        same_as_burns(heads(0.4), || heads(2.2)().swap_dims(2, 3), &format!("{what}: q k^T"));
        let probs = || matrix(b * nh * t, t, 0.8, device).reshape([b, nh, t, t]);
        same_as_burns(probs, heads(1.1), &format!("{what}: att v"));
    }

    #[test]
    fn on_the_cpu_the_products_and_their_gradients_are_burns_bit_for_bit() {
        let device = Device::flex().autodiff();
        check_2d(&device, 37, 19, 23, false); // one thread, no dimension a multiple of gemm's blocks
        check_2d(&device, 37, 19, 23, true); // transposed views of both operands
        check_2d(&device, 512, 200, 96, false); // over the threshold: split over the cores
        check_2d(&device, 300, 64, 257, true);
        check_attention(&device, 2, 3, 13, 5); // small: one matrix after another
        check_attention(&device, 4, 4, 64, 32); // split by matrices
        check_attention(&device, 2, 1, 200, 200); // each product split over the cores
    }

    #[test]
    fn on_the_gpu_the_backward_gives_burns_gradients() {
        // The forward is burn's matmul there; the backward is ours (lavapipe where no GPU).
        let device = crate::tests::wgpu().autodiff();
        check_2d(&device, 37, 19, 23, true);
        check_2d(&device, 130, 64, 70, false);
        check_attention(&device, 2, 3, 13, 5);
    }

    #[test]
    #[should_panic(expected = "the same batch dimensions")]
    fn batch_dimensions_that_would_broadcast_are_refused() {
        let device = Device::flex();
        let a = Tensor::<3>::zeros([2, 3, 4], &device);
        matmul(a, Tensor::<3>::zeros([1, 4, 5], &device));
    }

    #[test]
    fn a_view_into_a_larger_tensor_is_read_where_it_lies() {
        let device = Device::flex();
        let big = matrix(20, 30, 0.1, &device);
        let (a, b) = (big.clone().slice([3..13, 5..22]), matrix(17, 9, 0.2, &device));
        let copy = Tensor::<2>::from_data(a.clone().into_data(), &device);
        assert_eq!(values(matmul(a, b.clone())), values(copy.matmul(b)));
    }

    #[test]
    fn untracked_operands_get_no_gradient_and_empty_products_work() {
        let device = Device::flex().autodiff();
        let (a, b) = (matrix(8, 4, 0.5, &device).require_grad(), matrix(4, 6, 0.9, &device));
        let grads = matmul(a.clone(), b.clone()).sum().backward();
        assert!(b.grad(&grads).is_none());
        assert_eq!(a.grad(&grads).unwrap().dims(), [8, 4]);
        let empty = matmul(Tensor::<2>::zeros([3, 0], &device), Tensor::<2>::zeros([0, 5], &device));
        assert_eq!((empty.dims(), values(empty)), ([3, 5], vec![0; 15]));
    }
}
