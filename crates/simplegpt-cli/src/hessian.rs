//! `simplegpt hessian`: the extreme eigenvalues of the training loss's Hessian, at a
//! config's initial weights or at a checkpoint.

use std::path::PathBuf;

use clap::Args;
use simplegpt::hessian::{Estimate, fixed_batches, hessian_extremes};
use simplegpt::{Error, Result, device};

use crate::args::{RunOptions, count};

#[derive(Args)]
pub struct HessianArgs {
    #[command(flatten)]
    options: RunOptions,
    /// A run directory or checkpoint; without it, the initial weights of the config.
    #[arg(long)]
    from: Option<PathBuf>,
    /// At most this many power iterations (each stops earlier once it has converged).
    #[arg(long, default_value_t = 200, value_parser = count(1, 100_000))]
    iters: usize,
    /// Finite-difference step along the unit direction.
    #[arg(long, default_value_t = 1e-3)]
    eps: f64,
    /// Training batches the loss is averaged over.
    #[arg(long, default_value_t = 4, value_parser = count(1, 1000))]
    batches: usize,
}

pub fn run(args: HessianArgs) -> Result<()> {
    let HessianArgs { options, from, iters, eps, batches } = args;
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::Input(format!("--eps must be a finite step > 0, got {eps}")));
    }
    let opened = device::open(&options.device)?;
    let m = options.model(from.as_deref(), &opened.device)?;
    if let (Some(why), Some(from)) = (&m.broken, &from) {
        return Err(Error::Input(format!("{}: {why}; a Hessian needs finite weights and loss", from.display())));
    }
    // The Hessian's loss is `Gpt::forward`'s, which has no dropout: a fixed function of the
    // weights.
    let t = &m.config.train;
    let fixed = fixed_batches(&m.data, &m.config, batches, &opened.device.clone().autodiff());
    let extremes = pollster::block_on(hessian_extremes(&m.model, &fixed, t.z_loss, iters, eps, t.seed))?;
    let estimate = Estimate { extremes, eps, batches, batch_size: t.batch_size, z_loss: t.z_loss };
    estimate.check_finite()?;
    println!("{estimate}");
    Ok(())
}
