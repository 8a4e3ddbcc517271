//! simplegpt: GPT training with SimpleNorm and its baselines, one model and one trainer for
//! every device (CPU, Vulkan/Metal/DX12 through wgpu, CUDA, WebGPU in the browser).
//!
//! Where things are: `model` (the GPT and every norm variant), `train` (the loop), `optim`
//! (AdamW, clipping, schedule), `data` (splits, batches, the embedded corpus), `tokenizer`
//! (characters or GPT-2's BPE), `shards` (token files, memory-mapped), `prepare` (text into
//! shards), `config` (the config, its presets and overrides), `memory` (what a run needs,
//! checked before it allocates), `checkpoint`, `record` (a run's header and metrics, and
//! how two runs compare), `run` (a run directory and its one writer), `study` (compare and
//! sweep: their runs, statistics, reports and plots), `hessian` (its extreme eigenvalues),
//! `interop` (weights in PyTorch names), `sample`, `bench`, `device`, `threads` (the CPU
//! backend's threads); below them `files`
//! (files written whole or not at all), `params` (parameters by path, the read-back from
//! the device, a run-to-run repeatable sum), `rng` (the portable random streams) and
//! `error`. Our own kernels (the dropout mask) are a crate of their own,
//! `simplegpt_shaders` (the repository's `shaders/`).

#[cfg(not(target_family = "wasm"))]
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod files;
pub mod hessian;
pub mod interop;
pub mod memory;
pub mod model;
pub mod optim;
pub mod params;
#[cfg(not(target_family = "wasm"))]
pub mod prepare;
pub mod record;
pub mod rng;
#[cfg(not(target_family = "wasm"))]
pub mod run;
pub mod sample;
#[cfg(not(target_family = "wasm"))]
pub mod shards;
pub mod study;
#[cfg(not(target_family = "wasm"))]
pub mod threads;
pub mod tokenizer;
pub mod train;

pub use config::Config;
pub use error::{Error, Result};
