//! `simplegpt sample`: text generated from a checkpoint.

use std::path::PathBuf;

use clap::Args;
use simplegpt::sample::SampleOptions;
use simplegpt::{Error, Result, device};

use crate::args::{count, read_checkpoint};

#[derive(Args)]
pub struct SampleArgs {
    /// A run directory or a checkpoint file.
    #[arg(long, default_value = "out")]
    from: PathBuf,
    /// Text to continue (encoded by the checkpoint's tokenizer: with `char`, its characters
    /// must be in the vocabulary).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Number of tokens to generate (characters with the `char` tokenizer).
    #[arg(long, default_value_t = 500, value_parser = count(0, 1_000_000))]
    tokens: usize,
    /// Divides the logits: below 1 sharper, above 1 flatter; near 0 the most likely.
    #[arg(long, default_value_t = simplegpt::sample::DEFAULT_TEMPERATURE)]
    temperature: f64,
    /// Sample from the k most likely tokens only (0: all).
    #[arg(long, default_value_t = simplegpt::sample::DEFAULT_TOP_K, value_parser = count(0, 1 << 24))]
    top_k: usize,
    /// Seed of the draws: the same seed, the same text.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Device to run the model on (the CPU is quick enough for one sequence).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Sample even from a run that diverged or whose weights are not finite.
    #[arg(long)]
    force: bool,
}

pub fn run(args: SampleArgs) -> Result<()> {
    let SampleArgs { from, prompt, tokens, temperature, top_k, seed, device, force } = args;
    let ckpt = read_checkpoint(&from)?;
    if let Some(why) = ckpt.broken()
        && !force
    {
        return Err(Error::Input(format!(
            "{}: {why}, so its text would be noise; pass --force to sample it anyway",
            from.display()
        )));
    }
    let opened = device::open(&device)?;
    let model = ckpt.model(&opened.device)?;
    let opts = SampleOptions { prompt, max_new_tokens: tokens, temperature, top_k, seed };
    let text =
        pollster::block_on(simplegpt::sample::generate(&model, &ckpt.tokenizer, ckpt.config.model.block_size, &opts))?;
    println!("{text}");
    Ok(())
}
