//! The `simplegpt` command: a thin shell over the core crate, laid out as candle's
//! examples are. This file is the command tree and the dispatch; each subcommand's options
//! and body are in the file named for it (`compare` and `sweep` in study.rs), the options
//! every command shares in args.rs, the data they read in data.rs. All the work is in
//! `simplegpt`; results format themselves and the shell prints them.

mod args;
mod bench;
mod data;
mod devices;
mod export;
mod hessian;
mod outputs;
mod prepare;
mod progress;
mod repro;
mod sample;
mod study;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use simplegpt::Result;

#[derive(Parser)]
#[command(
    name = "simplegpt",
    version,
    about = "Train GPTs with SimpleNorm and its baselines on CPU, Vulkan, Metal, CUDA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenise text files into GPT-2 token shards (llm.c's or nanoGPT's format) for train --data.
    Prepare(prepare::PrepareArgs),
    /// Train a model (the embedded corpus and the tiny preset unless told otherwise). Exits
    /// with 0 when the run trained to its end, 3 when it diverged (recorded in its
    /// directory), 1 on an error.
    Train(train::TrainArgs),
    /// Write weights in PyTorch names and layout (safetensors), with the first training
    /// batches, to replay a run in another framework.
    Export(export::ExportArgs),
    /// Generate text from a checkpoint.
    Sample(sample::SampleArgs),
    /// List the backends and GPU adapters available here.
    Devices,
    /// Compare two run records (run directories or exported JSON), or run one config on
    /// several backends here (--backends cpu,wgpu) and compare them.
    Repro(repro::ReproArgs),
    /// Train several variants on the same data and seed; write a report (report.md,
    /// summary.json, SVG plots) and every run's directory.
    Compare(study::CompareArgs),
    /// Learning-rate stability sweep: each variant at log-spaced learning rates; reports the
    /// final loss vs LR and the largest LR at which each trained.
    Sweep(study::SweepArgs),
    /// Estimate the largest Hessian eigenvalue of the training loss (power iteration on
    /// finite-difference Hessian-vector products), at initialisation or at a checkpoint.
    Hessian(hessian::HessianArgs),
    /// Measure training speed (ms/step, tokens/s, model TFLOP/s; MFU with --peak-tflops) for a config on a device.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    end_quietly_on_closed_pipe();
    // Vulkan and EGL loaders print errors to stderr when this is unset (headless servers).
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: nothing else runs yet; no other thread can be reading the environment.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    // A panic is a bug in simplegpt or a backend: say so in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error ({info}); please report it");
    }));
    // The first thread to start: the CPU backend's parallel ops now start where they are
    // called (simplegpt::threads).
    simplegpt::threads::join_the_pool();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: not errors.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line_usage_error(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// clap's message for a bad command line in one line, as every other error: the problem
/// and its tip, without the usage block (`--help` has it).
fn one_line_usage_error(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    format!("{}; see --help", parts.join("; "))
}

fn dispatch(command: Command) -> Result<ExitCode> {
    let done = match command {
        Command::Train(args) => return train::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::Export(args) => export::run(args),
        Command::Sample(args) => sample::run(args),
        Command::Devices => devices::run(),
        Command::Repro(args) => repro::run(args),
        Command::Compare(args) => study::compare(args),
        Command::Sweep(args) => study::sweep(args),
        Command::Hessian(args) => hessian::run(args),
        Command::Bench(args) => bench::run(args),
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// `simplegpt devices | head -1`: once the reader has gone, end as Unix tools do (killed by
/// SIGPIPE, silently) rather than panic in `println!` (Rust ignores SIGPIPE, so the write
/// fails) and report an internal error.
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn signal(signum: std::ffi::c_int, handler: usize) -> usize;
        }
        const SIGPIPE: std::ffi::c_int = 13; // on Linux and macOS alike
        const SIG_DFL: usize = 0;
        // SAFETY: restores the default action of one signal before any thread starts.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

/// Tells glibc's malloc to keep the memory that is freed, for the next allocation, rather
/// than give it back to the kernel. By default each allocation over a threshold (128 KiB,
/// rising to 32 MiB at most) is a fresh `mmap`, unmapped when freed: the CPU backend's large
/// activations and gradients (100 MB each at nanoGPT's size) have every page faulted in and
/// zeroed by the kernel again at every step: 10.6 M page faults and a tenth of the CPU time
/// of a 3-step nanoGPT-size bench (BENCHMARKS.md, "CPU step: memory and linears"). `M_MMAP_MAX` 0 serves them from the heap, and
/// `M_TRIM_THRESHOLD` -1 never shrinks it, so the process keeps its peak footprint, which
/// it reaches at every step anyway. Both are documented settings (mallopt(3)); other libcs
/// are left as they are.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_MAX: std::ffi::c_int = -4;
        // SAFETY: mallopt only sets malloc's parameters; nothing has been allocated by
        // another thread yet (there is none).
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, -1);
        }
    }
}
