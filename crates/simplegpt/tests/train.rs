//! The trainer on real devices: it learns, it is deterministic, a resumed run equals the
//! uninterrupted one, damaged checkpoints and exports are refused, and the wgpu backend
//! (lavapipe's Vulkan in CI) agrees with the CPU.

use burn::tensor::Device;
use simplegpt::Config;
use simplegpt::checkpoint::{self, Checkpoint};
use simplegpt::config::NormKind;
use simplegpt::data::Dataset;
use simplegpt::interop;
use simplegpt::record::StepRecord;
use simplegpt::train::Trainer;

const TEXT: &str = "To be, or not to be, that is the question:\n\
Whether 'tis nobler in the mind to suffer\n\
The slings and arrows of outrageous fortune,\n\
Or to take arms against a sea of troubles\n\
And by opposing end them. To die: to sleep;\n";

/// CPU vs wgpu: the largest relative loss difference allowed over the 40 steps below. Both
/// run f32; they differ only in the order of floating-point reductions (seen on lavapipe:
/// 1.2e-6 absolute, about 10 f32 ulps of a loss near 2), with two orders of magnitude to spare.
const CROSS_BACKEND_TOLERANCE: f64 = 1e-4;

fn config(steps: usize) -> Config {
    let mut c = Config::preset("tiny").unwrap();
    c.model.block_size = 16;
    c.model.n_embd = 32;
    c.model.n_head = 2;
    c.train.batch_size = 8;
    c.train.max_steps = steps;
    c.train.lr_decay_steps = steps;
    c.train.warmup_steps = 5;
    c.train.lr = 3e-3;
    c.train.log_interval = 1;
    c.train.eval_interval = 10;
    c.train.eval_iters = 2;
    c.train.diag_interval = 5;
    c
}

fn data() -> Dataset {
    Dataset::from_text(&TEXT.repeat(4), "test text").unwrap()
}

fn run(c: &Config, device: &Device) -> Vec<StepRecord> {
    let mut t = Trainer::new(c.clone(), data(), device).unwrap();
    let mut records = Vec::new();
    while !t.finished() {
        if let Some(r) = pollster::block_on(t.step()).unwrap() {
            records.push(r);
        }
    }
    records
}

fn losses(records: &[StepRecord]) -> Vec<f64> {
    records.iter().filter_map(|r| r.loss).collect()
}

#[test]
fn the_z_loss_moves_training_and_every_loss_reported_stays_the_cross_entropy() {
    let plain = config(3);
    let mut with_z = plain.clone();
    with_z.train.z_loss = 1e-2;
    let (a, b) = (run(&plain, &Device::flex()), run(&with_z, &Device::flex()));
    // Step 0: the same weights and batches, so the same cross-entropy, evaluated and trained;
    // the z-loss's term is logged beside it, and only where it is on.
    assert_eq!((a[0].loss, a[0].train_loss, a[0].val_loss), (b[0].loss, b[0].train_loss, b[0].val_loss));
    assert!(a.iter().all(|r| r.z_loss.is_none()));
    // The term is z_loss x mean((log Z)^2); at init the logits are near 0 (std ~0.2 here), so
    // log Z is near ln(V), V the vocabulary: above it by about their variance / 2.
    let v = data().tokenizer.vocab_size() as f64;
    let z = b[0].z_loss.unwrap();
    assert!((z / (1e-2 * v.ln().powi(2)) - 1.0).abs() < 0.03, "z-loss term {z}, vocabulary {v}");
    assert!(b.iter().filter(|r| r.loss.is_some()).all(|r| r.z_loss.is_some_and(|z| z > 0.0)));
    // The update took the term's gradient: step 1's cross-entropy differs.
    assert_ne!(a[1].loss, b[1].loss, "the z-loss changes the update");
}

#[test]
fn ngpt_learns_with_its_matrices_kept_on_the_unit_sphere() {
    let mut c = config(40);
    c.set("norm=ngpt").unwrap();
    for set in ["mlp=swiglu", "pos=rope", "tie_weights=false", "weight_decay=0", "lr=1e-2"] {
        c.set(set).unwrap();
    }
    let mut t = Trainer::new(c, data(), &Device::flex()).unwrap();
    let mut records = Vec::new();
    while !t.finished() {
        records.extend(pollster::block_on(t.step()).unwrap());
    }
    let l = losses(&records);
    assert!(l.iter().all(|l| l.is_finite()) && *l.last().unwrap() < 0.8 * l[0], "{l:?}");
    // After 40 updates every matrix's vectors along the width are still unit: each update
    // was projected back (stored [in, out]; the embedding [V, C]).
    for (path, w, shape) in simplegpt::params::named(&t.model) {
        if shape.len() != 2 {
            continue;
        }
        let w: Vec<f32> = w.into_data().convert::<f32>().try_into_vec().unwrap();
        let (rows, cols) = (shape[0], shape[1]);
        let writes_width = path == "wte" || path.ends_with("attn.o.weight") || path.ends_with("mlp.proj.weight");
        let length = |i: usize| -> f64 {
            let at = |j: usize| if writes_width { w[i * cols + j] } else { w[j * cols + i] } as f64;
            (0..if writes_width { cols } else { rows }).map(|j| at(j).powi(2)).sum::<f64>().sqrt()
        };
        let n = if writes_width { rows } else { cols };
        assert!((0..n).all(|i| (length(i) - 1.0).abs() < 1e-5), "{path}: {:?}", (0..n).map(length).collect::<Vec<_>>());
    }
}

#[test]
fn a_tiny_model_learns_a_short_text() {
    let c = config(300);
    let records = run(&c, &Device::flex());
    let l = losses(&records);
    let (first, last) = (l[0], *l.last().unwrap());
    // Uniform over the vocabulary is ln(V) ~ 3.4; memorising this text goes far below.
    assert!(first > 3.0, "first loss {first}");
    assert!(last < 0.5 * first, "loss went from {first} to {last}");
    let last_val = records.iter().rev().find_map(|r| r.val_loss).unwrap();
    assert!(last_val < 0.6 * first, "val loss {last_val}");
    // Diagnostics are logged at their interval: a norm per parameter, an RMS per block.
    let diag = records.iter().find(|r| r.step == 5).unwrap();
    let norms = diag.grad_norms.as_ref().unwrap();
    assert!(norms.contains_key("blocks.0.attn.q.weight") && norms.contains_key("wte"), "{norms:?}");
    // The per-parameter norms make up the global one: sqrt(sum of squares).
    let global = norms.values().map(|n| n * n).sum::<f64>().sqrt();
    let grad_norm = diag.grad_norm.unwrap();
    assert!(grad_norm > 0.0 && (global - grad_norm).abs() <= 1e-5 * grad_norm, "{global} vs grad_norm {grad_norm}");
    let rms = diag.act_rms.as_ref().unwrap();
    assert_eq!(rms.len(), c.model.n_layer);
    assert!(rms.iter().all(|r| r.is_finite() && *r > 0.0), "{rms:?}");
    // And each layer's largest attention logit, and the RMS of each linear's output.
    let max_logit = diag.attn_logit_max.as_ref().unwrap();
    assert!(max_logit.len() == c.model.n_layer && max_logit.iter().all(|m| m.is_finite()), "{max_logit:?}");
    let linear = diag.linear_rms.as_ref().unwrap();
    assert_eq!(linear.len(), 6 * c.model.n_layer + 1, "q, k, v, o, fc, proj per block and the head: {linear:?}");
    assert!(linear.values().all(|r| r.is_finite() && *r > 0.0) && linear.contains_key("blocks.0.mlp.fc"));
    assert!(
        records.iter().filter(|r| r.grad_norms.is_some()).map(|r| r.step).eq((0..300).step_by(5)),
        "every 5th step"
    );
}

#[test]
fn the_same_seed_gives_identical_losses_and_another_seed_does_not() {
    let mut c = config(20);
    c.model.dropout = 0.1; // dropout masks are seeded too
    let a = losses(&run(&c, &Device::flex()));
    let b = losses(&run(&c, &Device::flex()));
    assert_eq!(a, b, "bitwise identical on the same backend");
    c.train.seed += 1;
    assert_ne!(a, losses(&run(&c, &Device::flex())));
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_run() {
    let mut c = config(30);
    c.model.dropout = 0.1;
    let device = Device::flex();
    let full = run(&c, &device);

    let mut first = Trainer::new(c.clone(), data(), &device).unwrap();
    let mut records = Vec::new();
    while first.progress.step < 13 {
        records.extend(pollster::block_on(first.step()).unwrap());
    }
    let bytes = pollster::block_on(checkpoint::to_bytes(&first)).unwrap();
    let dir = std::env::temp_dir().join(format!("simplegpt-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    simplegpt::files::write_atomic(&path, &bytes).unwrap();
    drop(first);

    let ckpt = Checkpoint::read(&path).unwrap();
    let mut second = ckpt.resume(data(), &device).unwrap();
    while !second.finished() {
        records.extend(pollster::block_on(second.step()).unwrap());
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(losses(&records), losses(&full));
    let vals = |r: &[StepRecord]| r.iter().filter_map(|r| r.val_loss).collect::<Vec<_>>();
    assert_eq!(vals(&records), vals(&full));
}

#[test]
fn an_absurd_learning_rate_is_recorded_as_divergence_not_a_crash() {
    let mut c = config(60);
    c.model.norm = NormKind::None;
    c.train.lr = 50.0;
    c.train.warmup_steps = 0;
    c.train.grad_clip = 0.0;
    let records = run(&c, &Device::flex());
    let last = records.last().unwrap();
    assert!(last.diverged.is_some(), "last record {last:?}");
    assert!(last.step < 60);
}

/// A config that passes validation but needs terabytes (1000 layers of width 256 at context
/// 2048 and batch 64: about 3 GiB of activations a layer) is refused before anything is
/// allocated, instead of the allocator aborting the process mid-step.
#[cfg(target_os = "linux")] // where the CPU's available memory is known (/proc/meminfo)
#[test]
fn a_run_that_needs_more_memory_than_the_machine_has_is_refused_before_it_allocates() {
    let mut c = Config::preset("tiny").unwrap();
    (c.model.n_layer, c.model.n_embd, c.model.block_size, c.train.batch_size) = (1000, 256, 2048, 64);
    c.validate().unwrap();
    let data = Dataset::from_text(&simplegpt::data::default_corpus(), "embedded").unwrap();
    let err = Trainer::new(c, data, &Device::flex()).err().expect("refused").to_string();
    assert!(err.starts_with("this config needs about ") && err.contains(" TiB (weights "), "{err}");
    assert!(err.contains("of memory is available; lower batch_size"), "{err}");
    // The default preset (some MiB) is not refused.
    let c = Config::preset("tiny").unwrap();
    let data = Dataset::from_text(&simplegpt::data::default_corpus(), "embedded").unwrap();
    assert!(Trainer::new(c, data, &Device::flex()).is_ok());
}

#[test]
fn cpu_and_wgpu_agree_within_tolerance() {
    let device = match simplegpt::device::open("wgpu") {
        Ok(d) => d,
        Err(e) => panic!(
            "no wgpu adapter ({e}); this test runs the real GPU code path, on lavapipe where \
             there is no GPU: apt-get install mesa-vulkan-drivers"
        ),
    };
    eprintln!("wgpu adapter: {}", device.adapter);
    let mut c = config(40);
    c.model.dropout = 0.1; // the masks are the same on both
    let cpu = losses(&run(&c, &Device::flex()));
    let gpu = losses(&run(&c, &device.device));
    assert_eq!(cpu.len(), gpu.len());
    assert_eq!(gpu, losses(&run(&c, &device.device)), "wgpu twice: bitwise identical");
    // Relative, as `repro` measures it: the bound holds whatever the size of the loss.
    let max_diff = cpu.iter().zip(&gpu).map(|(a, b)| (a - b).abs() / a.abs().max(b.abs())).fold(0.0, f64::max);
    eprintln!("max |loss_cpu - loss_wgpu| / max(|loss_cpu|, |loss_wgpu|) over {} steps: {max_diff:e}", cpu.len());
    assert!(max_diff <= CROSS_BACKEND_TOLERANCE, "max difference {max_diff}");
    assert!(cpu.last().unwrap() < &(cpu[0] - 0.5), "and both learned: {cpu:?}");
}

/// Every placement's initial weights are the same bits on the CPU and on wgpu, as `repro`
/// requires: nGPT's unit vectors included, which a device's own sum would round in its own
/// order.
#[test]
fn initial_weights_are_the_same_bits_on_the_cpu_and_on_wgpu() {
    let gpu = simplegpt::device::open("wgpu").expect("a wgpu adapter (lavapipe in CI)").device;
    for norm in NormKind::ALL {
        let mut c = config(1);
        c.model.norm = norm;
        for set in norm.defined_with() {
            c.set(set).unwrap();
        }
        let checksum = |device: &Device| {
            let t = Trainer::new(c.clone(), data(), device).unwrap();
            let header = simplegpt::record::RunHeader::new(&c, &t.model, &t.data, "any", "any");
            pollster::block_on(header).unwrap().init_checksum
        };
        assert_eq!(checksum(&Device::flex()), checksum(&gpu), "{norm:?}: initial weights differ");
    }
}

#[test]
fn a_sum_over_a_whole_tensor_is_the_same_on_every_run_on_wgpu() {
    use burn::tensor::{Tensor, TensorData};
    let device = simplegpt::device::open("wgpu").expect("a wgpu adapter (lavapipe in CI)").device;
    // 2^20 values of mixed signs and magnitudes, where the order of additions shows.
    let n = 1 << 20;
    let values: Vec<f32> =
        (0..n as u64).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3 * (1.0 + (i % 13) as f32)).collect();
    let x: Tensor<1> = Tensor::from_data(TensorData::new(values.clone(), [n]), &device);
    let sum = |x: Tensor<1>| simplegpt::params::sum_all(x).into_data().try_to_vec::<f32>().unwrap()[0];
    let first = sum(x.clone());
    for _ in 0..30 {
        assert_eq!(sum(x.clone()).to_bits(), first.to_bits(), "sum_all changed between runs");
    }
    let exact: f64 = values.iter().map(|&v| v as f64).sum();
    assert!(
        (first as f64 - exact).abs() <= 1e-5 * values.iter().map(|v| v.abs() as f64).sum::<f64>(),
        "{first} vs {exact}"
    );
}

#[test]
fn tokens_per_second_leaves_out_evaluations_but_is_still_measured_at_them() {
    // Every logged step is also an evaluation: the figure must still be there, from the
    // second logged step on.
    let mut c = config(15);
    c.train.log_interval = 5;
    c.train.eval_interval = 5;
    let records = run(&c, &Device::flex());
    let timed: Vec<usize> =
        records.iter().filter(|r| r.tokens_per_sec.is_some_and(|t| t > 0.0)).map(|r| r.step).collect();
    assert_eq!(timed, vec![5, 10], "{records:?}");
}

/// A safetensors file's header: an 8-byte little-endian length, then that much JSON (each
/// tensor's `data_offsets` into the data that follows, and `__metadata__`).
fn header(bytes: &[u8]) -> (usize, serde_json::Map<String, serde_json::Value>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (n, serde_json::from_slice(&bytes[8..8 + n]).unwrap())
}

/// `bytes` with one byte flipped in the middle of tensor `name`'s data.
fn flip_byte_in(bytes: &[u8], name: &str) -> Vec<u8> {
    let (n, header) = header(bytes);
    let offsets = &header[name]["data_offsets"];
    let (start, end) = (offsets[0].as_u64().unwrap() as usize, offsets[1].as_u64().unwrap() as usize);
    assert!(end - start >= 8, "{name} is too small to hit inside");
    let mut flipped = bytes.to_vec();
    flipped[8 + n + (start + end) / 2] ^= 0xff;
    flipped
}

/// `bytes` with its metadata rewritten by `edit`, the tensors' data untouched.
fn with_metadata(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Vec<u8> {
    let (n, mut header) = header(bytes);
    edit(header["__metadata__"].as_object_mut().unwrap());
    let json = serde_json::to_vec(&header).unwrap();
    [&(json.len() as u64).to_le_bytes()[..], &json, &bytes[8 + n..]].concat()
}

/// A trainer one step in, so that AdamW's moments exist.
fn trained_one_step(device: &Device) -> Trainer {
    let c = config(2);
    let mut t = Trainer::new(c.clone(), data(), device).unwrap();
    pollster::block_on(t.step()).unwrap();
    t
}

#[test]
fn a_checkpoint_with_a_flipped_byte_is_refused_naming_the_tensor() {
    let device = Device::flex();
    let t = trained_one_step(&device);
    let bytes = pollster::block_on(checkpoint::to_bytes(&t)).unwrap();
    let dir = std::env::temp_dir().join(format!("simplegpt-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    simplegpt::files::write_atomic(&path, &bytes).unwrap();
    assert!(!dir.join("ckpt.safetensors.tmp").exists(), "no temp file left behind");
    let intact = Checkpoint::read(&path).unwrap();
    intact.model(&device).unwrap();

    let moment = header(&bytes).1.keys().find(|k| k.starts_with("optim.v.")).cloned().expect("AdamW's moments");
    for name in ["model.wte", moment.as_str()] {
        simplegpt::files::write_atomic(&path, &flip_byte_in(&bytes, name)).unwrap();
        let err = Checkpoint::read(&path).err().expect("a flipped byte is refused").to_string();
        let expected = format!("checkpoint {} is corrupted: tensor {name}'s data does not match", path.display());
        assert!(err.starts_with(&expected), "{err}");
    }

    // A checkpoint without checksums is damaged, unless it is from before they were written.
    let without_checksums = with_metadata(&bytes, |m| {
        m.remove("checksums");
    });
    simplegpt::files::write_atomic(&path, &without_checksums).unwrap();
    let err = Checkpoint::read(&path).err().expect("refused").to_string();
    assert!(err.contains("corrupted") && err.contains("checksums"), "{err}");
    let old = with_metadata(&bytes, |m| {
        m.remove("checksums");
        m["format"] = "simplegpt-checkpoint-1".into();
    });
    simplegpt::files::write_atomic(&path, &old).unwrap();
    Checkpoint::read(&path).unwrap().model(&device).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_export_with_a_flipped_byte_is_refused_naming_the_tensor() {
    let device = Device::flex();
    let t = trained_one_step(&device);
    let bytes =
        pollster::block_on(interop::export(&t.model, &t.config, &t.data.tokenizer, Some((&t.data, 1)))).unwrap();
    let import = |bytes: &[u8]| interop::import(t.model.clone(), bytes, "w.safetensors", &t.data.tokenizer, &t.device);
    import(&bytes).unwrap();
    for name in ["wte.weight", "batches.x"] {
        let err = import(&flip_byte_in(&bytes, name)).err().expect("a flipped byte is refused").to_string();
        assert!(err.starts_with(&format!("w.safetensors is corrupted: tensor {name}'s data does not match")), "{err}");
    }
    // Other tools' files (PyTorch's safetensors writer) have no checksums, and are taken as they are.
    let from_another_tool = with_metadata(&bytes, |m| {
        m.remove("checksums");
    });
    import(&from_another_tool).unwrap();
}

/// Makes the parameter at one path NaN.
struct Poison(&'static str);

impl simplegpt::params::PathMapper for Poison {
    fn map<const D: usize>(
        &mut self,
        path: &str,
        param: burn::module::Param<burn::tensor::Tensor<D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<D>> {
        if path != self.0 {
            return param;
        }
        let t = param.val();
        let nan = burn::tensor::Tensor::full(t.shape(), f32::NAN, &t.device());
        simplegpt::params::replaced(param, nan)
    }
}

#[test]
fn a_checkpoint_says_when_its_model_is_broken() {
    let device = Device::flex();
    let read_back = |t: &Trainer| {
        let dir = std::env::temp_dir().join(format!("simplegpt-broken-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ckpt.safetensors");
        simplegpt::files::write_atomic(&path, &pollster::block_on(checkpoint::to_bytes(t)).unwrap()).unwrap();
        Checkpoint::read(&path).unwrap()
    };
    let mut t = trained_one_step(&device);
    assert_eq!(read_back(&t).broken(), None, "a trained model is whole");
    t.progress.diverged_at = Some(7);
    assert_eq!(read_back(&t).broken().unwrap(), "its run diverged at step 7");
    t.progress.diverged_at = None;
    t.model = simplegpt::params::map(t.model, &mut Poison("blocks.0.attn.q.weight"));
    let why = read_back(&t).broken().unwrap();
    assert!(why.contains("not finite") && why.contains("blocks.0.attn.q.weight"), "{why}");
}
