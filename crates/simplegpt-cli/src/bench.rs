//! `simplegpt bench`: the speed of training steps for a config on a device.

use clap::Args;
use simplegpt::bench::{BenchResult, bench, max_steps};
use simplegpt::{Error, Result, device};

use crate::args::{RunOptions, count};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    options: RunOptions,
    /// Untimed steps first (kernel compilation, autotuning, allocator warm-up).
    #[arg(long, default_value_t = 10, value_parser = count(0, 100_000))]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 50, value_parser = count(1, 100_000))]
    steps: usize,
    /// Peak FLOP/s of the device in TFLOP/s, to print MFU against it (nanoGPT uses the
    /// A100's bf16 peak, 312); without it, no MFU is printed.
    #[arg(long)]
    peak_tflops: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let BenchArgs { options, warmup, steps, peak_tflops } = args;
    if let Some(peak) = peak_tflops
        && !(peak > 0.0 && peak.is_finite())
    {
        return Err(Error::Input(format!("--peak-tflops must be > 0, got {peak}")));
    }
    max_steps(warmup, steps)?;
    let config = options.config()?;
    let data = options.data(&config)?;
    let opened = device::open(&options.device)?;
    eprintln!("bench on {}: {warmup} warm-up + {steps} timed steps", opened.adapter);
    if let Some(hint) = crate::devices::speed_hint(&opened) {
        eprintln!("{hint}");
    }
    let result = BenchResult { peak_tflops, ..bench(config, data, &opened, warmup, steps)? };
    println!("{result}");
    Ok(())
}
