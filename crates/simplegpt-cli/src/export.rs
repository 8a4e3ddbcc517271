//! `simplegpt export`: weights in PyTorch's names and layout (safetensors), with the first
//! training batches, to replay a run in another framework.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::Device;
use clap::Args;
use simplegpt::{Error, Result, interop};

use crate::args::{RunOptions, checkpoint_file, count};
use crate::outputs::{refuse_overwriting_a_run, refuse_overwriting_inputs};

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    options: RunOptions,
    /// A run directory or checkpoint to export; without it, the initial weights of the
    /// config and seed.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Also write the token ids of the first N training batches.
    #[arg(long, default_value_t = 0, value_parser = count(0, 1_000_000))]
    batches: usize,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
}

/// The most token ids `export --batches` writes per tensor (x and y): 256 MiB as i32.
const MAX_EXPORTED_IDS: u128 = 1 << 26;

pub fn run(args: ExportArgs) -> Result<()> {
    let ExportArgs { options, from, batches, out } = args;
    let mut inputs = options.input_files();
    let checkpoint = from.as_deref().map(checkpoint_file);
    inputs.extend(checkpoint.as_deref().map(|c| ("--from", c)));
    refuse_overwriting_inputs(std::slice::from_ref(&out), &inputs)?;
    refuse_overwriting_a_run(&out)?;
    let m = options.model(from.as_deref(), &Device::flex())?;
    let ids = batches as u128 * (m.config.train.batch_size * m.config.model.block_size) as u128;
    if ids > MAX_EXPORTED_IDS {
        return Err(Error::Input(format!(
            "--batches {batches} would write {ids} token ids per tensor, more than {MAX_EXPORTED_IDS}; export fewer batches"
        )));
    }
    let batches = (batches > 0).then_some((&m.data, batches));
    let bytes = pollster::block_on(interop::export(&m.model.valid(), &m.config, &m.data.tokenizer, batches))?;
    simplegpt::files::write_atomic(&out, &bytes)?;
    println!("wrote {}", out.display());
    Ok(())
}
