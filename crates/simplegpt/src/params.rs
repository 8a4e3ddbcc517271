//! Parameters addressed by their path in the model (`blocks.0.attn.q.weight`): the key of
//! the optimizer's state, checkpoints, exported weights and Hessian directions. burn's
//! visitors see a parameter without its path; `visit` and `map` here track it for them.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use safetensors::{Dtype, tensor::TensorView};
use std::collections::HashMap;

use crate::error::{Error, Result};

/// Sees every float parameter with its path.
pub trait PathVisitor {
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>);
}

/// Rewrites every float parameter, knowing its path.
pub trait PathMapper {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>>;
}

pub fn visit<M: Module, V: PathVisitor>(module: &M, visitor: &mut V) {
    module.visit(&mut Tracked { path: Vec::new(), inner: visitor });
}

pub fn map<M: Module, P: PathMapper>(module: M, mapper: &mut P) -> M {
    module.map(&mut Tracked { path: Vec::new(), inner: mapper })
}

struct Tracked<'a, T> {
    path: Vec<String>,
    inner: &'a mut T,
}

impl<V: PathVisitor> ModuleVisitor for Tracked<'_, V> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.inner.visit(&self.path.join("."), param);
    }
}

impl<P: PathMapper> ModuleMapper for Tracked<'_, P> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.inner.map(&self.path.join("."), param)
    }
}

/// `param` with a new value (same id), trainable again when the value is on an autodiff
/// device.
pub fn replaced<const D: usize>(param: Param<Tensor<D>>, value: Tensor<D>) -> Param<Tensor<D>> {
    let (id, _, mapper) = param.consume();
    let value = if value.is_autodiff() { value.require_grad() } else { value };
    Param::from_mapped_value(id, value, mapper)
}

/// Every float parameter of `module` with its path, flattened, and its shape.
pub fn named<M: Module>(module: &M) -> Vec<(String, Tensor<1>, Vec<usize>)> {
    struct Collect(Vec<(String, Tensor<1>, Vec<usize>)>);
    impl PathVisitor for Collect {
        fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
            let t = param.val().inner();
            let shape = t.dims().to_vec();
            self.0.push((path.to_string(), t.reshape([-1]), shape));
        }
    }
    let mut c = Collect(Vec::new());
    visit(module, &mut c);
    c.0
}

/// Little-endian bytes of f32 values, as safetensors stores them.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// f32 values from little-endian bytes.
pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// A safetensors file from (name, dtype, shape, little-endian bytes) and metadata.
pub fn safetensors_bytes(
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, b)| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), b).expect("consistent shape"))
        })
        .collect();
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Backend(format!("serialising safetensors: {e}")))
}

/// Reads a flat tensor back to the host: the one read-back from the device, async because
/// the browser can only wait for one that way.
pub async fn read_f32(t: Tensor<1>) -> Result<Vec<f32>> {
    let data =
        t.into_data_async().await.map_err(|e| Error::Backend(format!("reading from the device failed: {e:?}")))?;
    data.convert::<f32>().try_into_vec().map_err(|e| Error::Backend(format!("unexpected data from the device: {e:?}")))
}

/// The sum of every element of `x`, the same to the last bit on every run. burn's `sum()`
/// on the GPU backends adds partial sums with float atomics, in an order that changes from
/// run to run; a reduction along one dimension at a time has a fixed order. Losses, gradient
/// norms (and so clipping) and activation RMS all go through it.
pub fn sum_all<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let n = x.shape().num_elements();
    // Fold the last dimension into rows of at most 4096 where it divides, so that no stage is
    // one long serial sum; then reduce the last dimension, and the next, to one element.
    let mut x = x.reshape([n]);
    let row = (1..=4096).rev().find(|r| n % r == 0).unwrap_or(1);
    let x2: Tensor<2> = x.reshape([n / row, row]);
    x = x2.sum_dim(1).reshape([n / row]);
    x.sum_dim(0)
}

/// The mean of every element of `x`, as `sum_all`.
pub fn mean_all<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let n = x.shape().num_elements();
    sum_all(x) / n as f64
}
