//! `simplegpt bench`: the speed of training steps for a config on a device, measured after
//! warm-up (shader compilation, allocator growth) with no read-back inside the timed steps.

use serde::Serialize;
use web_time::Instant;

use crate::config::Config;
use crate::data::Dataset;
use crate::device::Opened;
use crate::error::{Error, Result};
use crate::train::Trainer;

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub steps: usize,
    pub ms_per_step: f64,
    /// Of which drawing the step's batches from the data on the CPU (copying the rows out
    /// of memory or memory-mapped shards), timed apart after the steps: the steps draw
    /// their batches synchronously, so this is time the device may wait.
    pub data_ms_per_step: f64,
    pub tokens_per_sec: f64,
    /// Model FLOPs per second (nanoGPT's `estimate_mfu` before it divides by a peak).
    pub flops_per_sec: f64,
    pub params: usize,
    /// Bytes the device's allocator holds after the timed steps: its pools only grow, so
    /// this is the peak of the run. `None` where the backend does not report it (the CPU).
    pub device_memory: Option<u64>,
    /// What was measured, as `device::Opened::adapter` says it.
    pub device: String,
    /// The device's peak FLOP/s in TFLOP/s, when the user gives it: then MFU is reported.
    pub peak_tflops: Option<f64>,
}

/// One line: the device, the speed, MFU against the given peak (only the user knows the
/// peak of the device measured), and the memory held.
impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let memory =
            self.device_memory.map_or("n/a".to_string(), |b| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64));
        let tflops = self.flops_per_sec / 1e12;
        let mfu = self
            .peak_tflops
            .map_or(String::new(), |peak| format!(" | MFU {:.2}% (of {peak} TFLOP/s)", tflops / peak * 100.0));
        write!(
            f,
            "device {} | params {:.2}M | {:.2} ms/step | data {:.3} ms/step | {:.0} tokens/s | {tflops:.3} TFLOP/s{mfu} | peak device memory {memory}",
            self.device,
            self.params as f64 / 1e6,
            self.ms_per_step,
            self.data_ms_per_step,
            self.tokens_per_sec,
        )
    }
}

/// nanoGPT's FLOPs per token for a forward and backward pass (`estimate_mfu`): 6N plus the
/// attention products, 12 L H Q T (PaLM appendix B), with N its `get_num_params()`, which
/// leaves out the position embedding (a lookup, not a matmul).
pub fn flops_per_token(config: &Config) -> f64 {
    let m = &config.model;
    let wpe = if m.pos == crate::config::PosKind::Learned { m.block_size * m.n_embd } else { 0 };
    let n = (m.num_params() - wpe) as f64;
    let (l, h, q, t) = (m.n_layer as f64, m.n_head as f64, (m.n_embd / m.n_head) as f64, m.block_size as f64);
    6.0 * n + 12.0 * l * h * q * t
}

/// The `max_steps` a bench of `warmup` + `steps` steps runs to; an error for a count it
/// cannot run (no timed step, or more steps than a usize holds).
pub fn max_steps(warmup: usize, steps: usize) -> Result<usize> {
    if steps == 0 {
        return Err(Error::Input("--steps must be at least 1".into()));
    }
    warmup
        .checked_add(steps)
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| Error::Input(format!("--warmup {warmup} plus --steps {steps} is too many steps")))
}

/// Times `steps` training steps of `config` on `device` after `warmup` untimed ones.
pub fn bench(mut config: Config, data: Dataset, device: &Opened, warmup: usize, steps: usize) -> Result<BenchResult> {
    // Only training steps: no evaluation, no logging, no checkpoint inside the window.
    config.train.max_steps = max_steps(warmup, steps)?;
    config.train.eval_interval = usize::MAX;
    config.train.log_interval = usize::MAX;
    config.train.diag_interval = usize::MAX;
    config.train.checkpoint = false;
    let mut trainer = Trainer::new(config, data, &device.device)?;
    trainer.progress.step = 1; // step 0 would evaluate and log
    let sync = |t: &Trainer| t.device.sync().map_err(|e| Error::Backend(format!("device failed: {e:?}")));
    for _ in 0..warmup {
        pollster::block_on(trainer.step())?;
    }
    sync(&trainer)?;
    let start = Instant::now();
    for _ in 0..steps {
        pollster::block_on(trainer.step())?;
    }
    sync(&trainer)?;
    let secs = start.elapsed().as_secs_f64();
    // The same batches again, alone: what drawing them costs.
    let first = (1 + warmup) * trainer.config.train.grad_accum;
    let drawn = Instant::now();
    for i in first..first + steps * trainer.config.train.grad_accum {
        std::hint::black_box(trainer.data.train_batch(&trainer.config, i as u64));
    }
    let data_secs = drawn.elapsed().as_secs_f64();
    let device_memory = trainer.device.memory_pool_usage().map(|u| u.bytes_reserved);
    let tokens = (steps * trainer.tokens_per_step()) as f64;
    Ok(BenchResult {
        steps,
        ms_per_step: secs * 1e3 / steps as f64,
        data_ms_per_step: data_secs * 1e3 / steps as f64,
        tokens_per_sec: tokens / secs,
        flops_per_sec: flops_per_token(&trainer.config) * tokens / secs,
        params: trainer.config.model.num_params(),
        device_memory,
        device: device.adapter.clone(),
        peak_tflops: None,
    })
}
