//! How much memory a training run needs, worked out from its config before anything is
//! allocated, and the check that refuses a run that cannot fit (`Trainer::new` calls it, so
//! every front end gets it). Without it such a run aborts inside the allocator ("memory
//! allocation of N bytes failed") or the GPU runtime, with no word on what to lower.
//!
//! Every tensor is f32. The activations follow what burn 0.22's autodiff keeps for the
//! backward pass with gradient checkpointing off (its default): each op keeps what the
//! gradients of its trained inputs need (a matmul both operands; a product both factors,
//! but only the other one when one is a constant such as a dropout mask; `exp`, `square`,
//! `sigmoid` and GELU their input), and a tensor several ops keep is counted once. With
//! `fused`, the default, the attention is one op that keeps no [B, nh, T, T] tensor (its
//! output and two numbers a query row; its scratch is a block of query rows per thread),
//! counted so; with `fused = false`, or under burn's fusion (`--features fusion`), where the
//! GPU runs the tensor ops, the scores, probabilities and masks are counted. (The fused norms
//! keep only their input, and the cross-entropy only the logits: less than counted
//! here, so there the estimate is high, the more so with a large vocabulary.)
//!
//! Checked against the peak resident memory of `simplegpt bench --device cpu` (less the
//! 21 MiB the process holds before it trains) over 23 configs (every norm, SwiGLU, RoPE,
//! dropout, grad_accum, widths 64 to 2048, batches 1 to 64, 23 MiB to 5.5 GiB): the estimate
//! was 0.92 to 1.16 times what was measured, below 1 only for `tiny` (by 2 MiB).

use burn::backend::DispatchDevice;
use burn::tensor::Device;

use crate::config::{Config, MlpKind, ModelConfig, NormKind, PosKind};
use crate::error::{Error, Result};

const F32_BYTES: u128 = 4;

/// `Config::validate`'s cap on every size. Sizes above it are counted at it: such a config
/// is refused there anyway, its figure stays far above any machine, and no product of
/// capped sizes overflows a u128.
const MAX_DIM: usize = 1 << 24;

/// Bytes a training step needs at its peak, the start of the backward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    /// The parameters.
    pub weights: u128,
    /// Their gradients; twice that with grad_accum > 1, where the running sum and the
    /// micro-batch's gradients live at once.
    pub gradients: u128,
    /// AdamW's two moments.
    pub optimizer: u128,
    /// What one micro-batch's forward pass keeps for its backward, plus the working set that
    /// comes and goes on top of it (see `estimate`).
    pub activations: u128,
}

impl MemoryEstimate {
    pub fn total(&self) -> u128 {
        self.weights + self.gradients + self.optimizer + self.activations
    }
}

/// What a device can hold, where that is known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceMemory {
    /// Bytes a run may use in all: the memory available on the CPU, a GPU's memory where its
    /// runtime states it.
    pub total: Option<u128>,
    pub gpu: bool,
}

/// The estimate for `config`, whose `vocab_size` must be resolved (`Trainer::new` takes it
/// from the data first): at 0 the embedding, the head and the logits would count as empty.
pub fn estimate(config: &Config) -> MemoryEstimate {
    let m = capped(&config.model);
    let t = &config.train;
    let b = t.batch_size.min(MAX_DIM) as u128;
    let (tt, c, nh, layers, v) =
        (m.block_size as u128, m.n_embd as u128, m.n_head as u128, m.n_layer as u128, m.vocab_size as u128);
    let hidden_width = m.mlp_hidden() as u128;
    let yes = |on: bool| on as u128;
    let (dropout, simple, swiglu) =
        (yes(m.dropout > 0.0), yes(m.norm == NormKind::Simple), yes(m.mlp == MlpKind::Swiglu));

    // The activation shapes, in elements.
    let width = b * tt * c; // [B, T, C]
    let hidden = b * tt * hidden_width; // [B, T, hidden]
    let scores = b * nh * tt * tt; // [B, nh, T, T]
    let logits = b * tt * v; // [B, T, V]

    // One block. Each norm keeps two tensors of its width: its (centred) input, which `square`
    // and the division by the RMS read, and the normalised value its gain multiplies. Norms
    // of width C: ln_1 and ln_2 (pre-, peri- and post-norm variants), the sublayers' output
    // norms (Peri-LN, OLMo 2), QK-norm's two, and SimpleNorm's on v, o and the MLP's output;
    // of the hidden width: SimpleNorm's on fc (and the gate).
    // nGPT's six unit norms (q, k, each sublayer's output, the state after each) count as
    // norms too.
    let ngpt = yes(m.norm == NormKind::Ngpt);
    let c_norms =
        2 * yes(m.norm.block_norms()) + 2 * yes(m.norm.out_norms()) + 2 * yes(m.has_qk_norm()) + 3 * simple + 6 * ngpt;
    let hidden_norms = simple * (1 + swiglu);
    // The inputs of the three linear steps (q/k/v, o, the MLP's first), and q, k and v as
    // the attention products read them.
    let linear_inputs_and_qkv = 3 + 3;
    // RoPE on q and k: each is copied into pairs (read by the rotation's matmul) and rotated
    // into twice its size (read by the product with the frequencies).
    let rope = 6 * yes(m.pos == PosKind::Rope);
    // The dropouts after o and after the MLP keep their masks.
    let residual_dropout = 2 * dropout;
    // GELU: its input and output. SwiGLU: fc's output, its sigmoid, the SiLU, the gate's
    // output and the product the projection reads.
    let mlp = if swiglu == 1 { 5 } else { 2 };
    // Unfused, the softmax keeps the shifted scores (`exp`'s input), `exp`'s output (the
    // division's numerator) and the probabilities (read by the product with v); dropout on
    // them keeps its mask and the dropped probabilities in place of the probabilities.
    // Fused, none of these: the op keeps its output (the heads, before they are put side by
    // side for o) and a [B, nh, T, 2] of statistics, under a width.
    let attention_op = m.fused && !cfg!(feature = "fusion");
    let (attention_scores, attention_width) = if attention_op { (0, 1) } else { (3 + dropout, 0) };
    let block = width * (2 * c_norms + linear_inputs_and_qkv + rope + residual_dropout + attention_width)
        + hidden * (2 * hidden_norms + mlp)
        + scores * attention_scores;

    // Around the blocks: the embedding's dropout mask, the final norm, the head's input; the
    // shifted logits the log-softmax keeps, and their gradient.
    let outside = width * (dropout + 2 * yes(m.norm.final_norm()) + 1) + logits * 2;

    let params = m.num_params_u128();
    let largest_weight = (v * c).max(c * hidden_width).max(tt * c);
    // On top of what is kept, the backward pass works through one op at a time with a few
    // tensors the size of the largest activation alive (the incoming gradient, the one it
    // makes, its temporaries); AdamW's update of the largest weight matrix needs about four
    // of its size. These never overlap, so the largest counts. (Each Linear runs on
    // [B*T, in] (`model::linear`), so its weight gradient is one [in, out] product, never
    // one per batch element.)
    // (The scores count here even when fused: a step that measures the attention's largest
    // logit, `Probes`, computes them.)
    let working = (3 * scores.max(hidden).max(width).max(logits)).max(4 * largest_weight);

    MemoryEstimate {
        weights: params * F32_BYTES,
        gradients: params * F32_BYTES * if t.grad_accum > 1 { 2 } else { 1 },
        optimizer: 2 * params * F32_BYTES,
        activations: (layers * block + outside + working) * F32_BYTES,
    }
}

/// The model config with every size at most `MAX_DIM`, so its parameter count cannot overflow.
fn capped(model: &ModelConfig) -> ModelConfig {
    let mut m = model.clone();
    for size in [&mut m.vocab_size, &mut m.block_size, &mut m.n_layer, &mut m.n_head, &mut m.n_embd] {
        *size = (*size).min(MAX_DIM);
    }
    m
}

/// Refuses `config` when its estimate cannot fit on `device`; the error gives the figures
/// and what to lower. Allocates nothing.
pub fn check(config: &Config, device: &Device) -> Result<()> {
    fits(&estimate(config), &device_memory(device))
}

/// Compares an estimate with what a device can hold. A limit that is not known is not checked.
pub fn fits(estimate: &MemoryEstimate, memory: &DeviceMemory) -> Result<()> {
    if let Some(total) = memory.total
        && estimate.total() > total
    {
        let model = estimate.weights + estimate.gradients + estimate.optimizer;
        let lower = if model > total {
            "n_embd or n_layer (the weights, their gradients and AdamW's state alone do not fit)"
        } else {
            "batch_size (raising grad_accum keeps the tokens per step), block_size, n_embd or n_layer"
        };
        let available = if memory.gpu {
            format!("the GPU has {}", bytes(total))
        } else {
            format!("{} of memory is available", bytes(total))
        };
        return Err(Error::Input(format!(
            "this config needs about {} (weights {}, gradients {}, AdamW state {}, activations of one micro-batch {}) but {available}; lower {lower}",
            bytes(estimate.total()),
            bytes(estimate.weights),
            bytes(estimate.gradients),
            bytes(estimate.optimizer),
            bytes(estimate.activations),
        )));
    }
    Ok(())
}

/// What `device` can hold, as far as its backend says: the memory available on the CPU (Flex);
/// on a GPU (cubecl) its memory where the runtime states it (CUDA; Vulkan only in a build with
/// the `vulkan` feature, wgpu's SPIR-V compiler: otherwise wgpu and WebGPU are not checked).
/// Opens the device.
///
/// A GPU's largest buffer (cubecl's `max_page_size`, the smaller of the adapter's largest
/// buffer and largest storage binding) is not checked against the largest tensor: it is not a
/// limit on one tensor in practice. On lavapipe it is 128 MiB, and a run whose attention scores
/// are one 256 MiB tensor (tiny with block_size 1024, batch_size 32) trains.
pub fn device_memory(device: &Device) -> DeviceMemory {
    dispatch_memory(device.as_dispatch())
}

fn dispatch_memory(device: &DispatchDevice) -> DeviceMemory {
    match device {
        DispatchDevice::Autodiff(inner) => dispatch_memory(inner),
        DispatchDevice::Flex(_) => DeviceMemory { total: cpu_memory(), gpu: false },
        DispatchDevice::Cube(cube) => {
            DeviceMemory { total: cube.client().properties().memory.max_memory().map(u128::from), gpu: true }
        }
    }
}

/// The memory a run on the CPU may use: Linux's MemAvailable (what can be allocated without
/// swapping), and at most the 4 GiB a 32-bit process (the browser's wasm) can address.
/// `None` where neither is known: other systems are not checked.
fn cpu_memory() -> Option<u128> {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| mem_available(&text));
    let address_space = cfg!(target_pointer_width = "32").then_some(1u128 << 32);
    match (available, address_space) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `MemAvailable:` line of /proc/meminfo, in bytes.
fn mem_available(meminfo: &str) -> Option<u128> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u128 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Bytes in binary units with one decimal: "20.4 MiB", "41.2 GiB".
fn bytes(n: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u128 = 1 << 30;

    /// A preset with the embedded corpus's vocabulary size resolved, as `Trainer::new` does.
    fn preset(name: &str) -> Config {
        let mut c = Config::preset(name).unwrap();
        c.model.vocab_size = 65;
        c
    }

    #[test]
    fn weights_gradients_and_adamw_state_are_the_parameters_worked_by_hand() {
        // tiny, V 65: C 64, one block, 4C MLP, pre-LN without biases, tied head, learned
        // positions. wte 65 x 64 = 4160; wpe 64 x 64 = 4096; the block: q, k, v, o 4 x 64 x 64
        // = 16384, fc 64 x 256 + proj 256 x 64 = 32768, ln_1 and ln_2 gains 2 x 64 = 128, so
        // 49280; ln_f's gain 64. In all 4160 + 4096 + 49280 + 64 = 57600 parameters.
        let c = preset("tiny");
        assert_eq!(c.model.num_params(), 57_600);
        let e = estimate(&c);
        assert_eq!(e.weights, 57_600 * 4);
        assert_eq!(e.gradients, 57_600 * 4);
        assert_eq!(e.optimizer, 2 * 57_600 * 4, "AdamW's m and v");

        // Accumulating: the running sum of the gradients and the micro-batch's.
        let mut accum = c.clone();
        accum.train.grad_accum = 4;
        assert_eq!(estimate(&accum).gradients, 2 * 57_600 * 4);

        // Every variant: the weights are the model's own count.
        for norm in NormKind::ALL {
            for (mlp, pos, tie) in [(MlpKind::Gelu, PosKind::Learned, true), (MlpKind::Swiglu, PosKind::Rope, false)] {
                let mut v = preset("nanogpt-shakespeare-char");
                (v.model.norm, v.model.mlp, v.model.pos, v.model.tie_weights, v.model.bias) =
                    (norm, mlp, pos, tie, true);
                assert_eq!(estimate(&v).weights, v.model.num_params() as u128 * 4, "{norm:?} {mlp:?}");
            }
        }
    }

    #[test]
    fn activations_grow_with_the_batch_and_the_weights_do_not() {
        for name in ["tiny", "nanogpt-shakespeare-char", "simplegpt-shakespeare-char"] {
            let c = preset(name);
            let mut doubled = c.clone();
            doubled.train.batch_size *= 2;
            let (one, two) = (estimate(&c), estimate(&doubled));
            assert!(two.activations > one.activations, "{name}: {} vs {}", two.activations, one.activations);
            assert_eq!((two.weights, two.gradients, two.optimizer), (one.weights, one.gradients, one.optimizer));
            // More layers, a longer context, RoPE and SwiGLU keep more activations too.
            for set in ["n_layer=12", "block_size=512", "pos=rope", "mlp=swiglu"] {
                let mut bigger = c.clone();
                bigger.set(set).unwrap();
                assert!(estimate(&bigger).activations > one.activations, "{name} with {set}");
            }
            // And dropout: its masks and the dropped tensors.
            let (mut without, mut with) = (c.clone(), c.clone());
            (without.model.dropout, with.model.dropout) = (0.0, 0.1);
            assert!(estimate(&with).activations > estimate(&without).activations, "{name}");
        }
    }

    #[test]
    fn tinys_activations_worked_by_hand() {
        // With the attention's tensor ops (`fused = false`).
        // B 32, T 64, C 64, 2 heads, hidden 256, V 65, no dropout. [B, T, C] is 131072
        // elements, [B, T, 256] 524288, [B, 2, T, T] 262144, [B, T, V] 133120.
        // The block: ln_1 and ln_2 two each, the three linear inputs, q, k, v: 10 x 131072 =
        // 1310720; GELU's input and output 2 x 524288 = 1048576; the softmax's three
        // 3 x 262144 = 786432; in all 3145728.
        // Around it: ln_f's two and the head's input 3 x 131072 = 393216, the logits twice
        // 266240: 659456.
        // The working set: three [B, T, 256], 1572864 (AdamW's four copies of fc's weight,
        // 65536, are less).
        // (3145728 + 659456 + 1572864) x 4 bytes = 21512192.
        let mut unfused = preset("tiny");
        unfused.model.fused = false;
        let e = estimate(&unfused);
        assert_eq!(e.activations, 21_512_192);
        assert_eq!(bytes(e.total()), "21.4 MiB");
        // Fused (the default, without burn's fusion): not the softmax's three but the
        // attention's output, 11 x 131072 + 1048576 = 2490368 a block; with the same
        // 659456 around it and working set, 4722688 elements.
        if !cfg!(feature = "fusion") {
            assert_eq!(estimate(&preset("tiny")).activations, 4_722_688 * 4);
        }
    }

    #[test]
    fn the_presets_need_a_few_gib_at_most() {
        let tiny = estimate(&preset("tiny"));
        assert!(tiny.total() < 64 << 20, "tiny: {}", bytes(tiny.total()));
        for name in ["nanogpt-shakespeare-char", "simplegpt-shakespeare-char"] {
            let e = estimate(&preset(name));
            // (Measured for nanogpt-shakespeare-char: 5.5 GiB resident at its peak.)
            assert!(e.total() < 8 * GIB, "{name}: {}", bytes(e.total()));
        }
    }

    #[test]
    fn absurd_sizes_do_not_overflow() {
        let mut c = preset("tiny");
        (c.model.n_layer, c.model.n_embd, c.model.block_size, c.train.batch_size) =
            (usize::MAX, usize::MAX, usize::MAX, usize::MAX);
        assert!(estimate(&c).total() > 1 << 100);
    }

    #[test]
    fn a_run_that_does_not_fit_is_refused_with_its_figures_and_what_to_lower() {
        let e = estimate(&preset("nanogpt-shakespeare-char"));
        let cpu = |total| DeviceMemory { total: Some(total), gpu: false };
        assert!(fits(&e, &cpu(e.total())).is_ok());
        assert!(fits(&e, &DeviceMemory::default()).is_ok(), "nothing known, nothing checked");

        let err = fits(&e, &cpu(e.total() - 1)).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("this config needs about {} (weights {}", bytes(e.total()), bytes(e.weights))),
            "{err}"
        );
        assert!(err.contains("of memory is available; lower batch_size"), "{err}");
        assert!(!err.contains('\n'));

        // When the model alone does not fit, a smaller batch cannot help.
        let err = fits(&e, &cpu(e.weights)).unwrap_err().to_string();
        assert!(
            err.ends_with("lower n_embd or n_layer (the weights, their gradients and AdamW's state alone do not fit)"),
            "{err}"
        );

        let gpu = DeviceMemory { total: Some(e.total() - 1), gpu: true };
        assert!(fits(&e, &gpu).unwrap_err().to_string().contains("but the GPU has"));
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24683656 kB\nMemFree:        23236416 kB\nMemAvailable:   23639152 kB\n";
        assert_eq!(mem_available(meminfo), Some(23_639_152 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(512), "512.0 bytes");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(bytes(41 * GIB + GIB / 5), "41.2 GiB");
    }
}
