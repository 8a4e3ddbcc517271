//! Parameters addressed by their path in the model (`blocks.0.attn.q.weight`): the key of
//! the optimizer's state, checkpoints, exported weights and Hessian directions. burn's
//! visitors see a parameter without its path; `visit` and `map` here track it for them.
//! `param_group` sorts the paths into the groups that reports and the page plot.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::rng::{fnv1a, hex};

/// The metadata key of a file's tensor checksums: a JSON object, tensor name -> FNV-1a 64 of
/// its bytes in hex. `safetensors_bytes` writes it; `check_checksums` reads it.
pub const CHECKSUMS: &str = "checksums";

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

/// A safetensors file from (name, dtype, shape, little-endian bytes) and metadata, with every
/// tensor's checksum added to the metadata under `CHECKSUMS`: safetensors itself checks
/// offsets and shapes, not the values, so flipped bits would otherwise load silently.
pub fn safetensors_bytes(
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    mut metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let checksums: BTreeMap<&str, String> =
        tensors.iter().map(|(name, .., b)| (name.as_str(), hex(fnv1a(b)))).collect();
    metadata.insert(CHECKSUMS.to_string(), serde_json::to_string(&checksums).expect("serialisable"));
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, b)| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), b).expect("consistent shape"))
        })
        .collect();
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Backend(format!("serialising safetensors: {e}")))
}

/// Checks every tensor of `st` against `checksums` (the `CHECKSUMS` metadata): each tensor
/// must have one and match it, and each checksum must have its tensor. The error says what
/// is wrong, for the caller to prefix with the file's name.
pub fn check_checksums(st: &SafeTensors, checksums: &str) -> std::result::Result<(), String> {
    let mut expected: HashMap<String, String> =
        serde_json::from_str(checksums).map_err(|e| format!("its tensor checksums are unreadable ({e})"))?;
    let mut tensors: Vec<_> = st.iter().collect();
    // Sorted, so that of several damaged tensors the same one is named every time.
    tensors.sort_by_key(|(name, _)| *name);
    for (name, view) in tensors {
        match expected.remove(name) {
            None => return Err(format!("tensor {name} has no checksum")),
            Some(sum) if sum != hex(fnv1a(view.data())) => {
                return Err(format!("tensor {name}'s data does not match its checksum"));
            }
            Some(_) => {}
        }
    }
    match expected.keys().min() {
        Some(name) => Err(format!("tensor {name} has a checksum but is missing")),
        None => Ok(()),
    }
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
    const ROW: usize = 4096;
    let n = x.shape().num_elements();
    if n == 0 {
        return Tensor::zeros([1], &x.device());
    }
    let x: Tensor<1> = x.reshape([n]);
    if n <= ROW {
        return x.sum_dim(0);
    }
    // Rows of ROW elements (zero-padded: adding zeros is exact), each summed, then the rows:
    // two stages, neither one long serial sum.
    let rows = n.div_ceil(ROW);
    let x = if rows * ROW == n {
        x
    } else {
        let zeros = Tensor::zeros([rows * ROW - n], &x.device());
        Tensor::cat(vec![x, zeros], 0)
    };
    let partial: Tensor<2> = x.reshape([rows, ROW]).sum_dim(1);
    partial.reshape([rows]).sum_dim(0)
}

/// The mean of every element of `x`, as `sum_all`.
pub fn mean_all<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let n = x.shape().num_elements();
    sum_all(x) / n as f64
}

/// The parameter group of a parameter path, for grouped gradient norms.
pub fn param_group(path: &str) -> &'static str {
    if path.contains(".attn.") {
        if path.contains("_norm") { "attention norms" } else { "attention" }
    } else if path.contains(".mlp.") {
        if path.contains("_norm") { "mlp norms" } else { "mlp" }
    } else if path.starts_with("wte") || path.starts_with("wpe") || path.starts_with("lm_head") {
        "embeddings and head"
    } else {
        "block and final norms"
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};
    use safetensors::{Dtype, SafeTensors};
    use std::collections::HashMap;

    /// Two tensors written by `safetensors_bytes`, and their checksums as written.
    fn written() -> (Vec<u8>, serde_json::Map<String, serde_json::Value>) {
        let tensors = [
            ("a".to_string(), Dtype::F32, vec![2], super::f32_bytes(&[1.0, 2.0])),
            ("b".to_string(), Dtype::I32, vec![1], 7i32.to_le_bytes().to_vec()),
        ];
        let bytes = super::safetensors_bytes(&tensors, HashMap::new()).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let checksums = serde_json::from_str(&header.metadata().as_ref().unwrap()[super::CHECKSUMS]).unwrap();
        (bytes, checksums)
    }

    fn check(bytes: &[u8], checksums: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
        let st = SafeTensors::deserialize(bytes).unwrap();
        super::check_checksums(&st, &serde_json::to_string(checksums).unwrap())
    }

    #[test]
    fn every_tensor_must_have_its_checksum_and_every_checksum_its_tensor() {
        let (bytes, checksums) = written();
        assert_eq!(checksums.len(), 2, "{checksums:?}");
        check(&bytes, &checksums).unwrap();

        let mut missing = checksums.clone();
        missing.remove("b");
        assert_eq!(check(&bytes, &missing).unwrap_err(), "tensor b has no checksum");
        let mut extra = checksums.clone();
        extra.insert("c".into(), "0000000000000000".into());
        assert_eq!(check(&bytes, &extra).unwrap_err(), "tensor c has a checksum but is missing");
        // A's checksum given to b: the right set of names, the wrong data.
        let mut swapped = checksums.clone();
        swapped["b"] = checksums["a"].clone();
        assert_eq!(check(&bytes, &swapped).unwrap_err(), "tensor b's data does not match its checksum");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert!(super::check_checksums(&st, "not json").unwrap_err().contains("checksums are unreadable"));
    }

    #[test]
    fn sum_all_adds_every_element_at_any_size() {
        let device = Device::flex();
        // Empty, one, one row, exact rows, and a prime above a row (padded).
        for n in [0usize, 1, 4096, 3 * 4096, 10007] {
            let values: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 7.0).collect();
            let x: Tensor<2> = Tensor::from_data(TensorData::new(values.clone(), [1, n]), &device);
            let sum = super::sum_all(x).into_data().try_to_vec::<f32>().unwrap();
            let exact: f64 = values.iter().map(|&v| v as f64).sum();
            assert_eq!(sum.len(), 1, "n = {n}");
            assert!((sum[0] as f64 - exact).abs() <= 1e-6 * (1.0 + n as f64), "n = {n}: {} vs {exact}", sum[0]);
        }
    }
}
