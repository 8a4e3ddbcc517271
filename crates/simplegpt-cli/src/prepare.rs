//! `simplegpt prepare`: text files into GPT-2 token shards (nanoGPT's or llm.c's format),
//! streaming, on every core, with a progress bar.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use simplegpt::prepare::{self, PrepareOptions};
use simplegpt::shards::Format;
use simplegpt::tokenizer::Tokenizer;
use simplegpt::{Error, Result};

use crate::progress;

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// Headerless uint16: train.bin and val.bin (nanoGPT).
    Nanogpt,
    /// A 256-int32 header, then uint16: NAME_train_NNNNNN.bin, NAME_val_NNNNNN.bin (llm.c).
    Llmc,
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Text files, or directories of them (read recursively, in sorted order).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The directory to write the shards into.
    #[arg(long)]
    out: PathBuf,
    /// The tokenizer (shards hold GPT-2 token ids).
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    #[arg(long, value_enum, default_value = "llmc")]
    format: FormatArg,
    /// Documents are separated by this string in a file (e.g. "<|endoftext|>"; \n is a
    /// newline); without it, each file is one document.
    #[arg(long)]
    delimiter: Option<String>,
    /// The fraction of the tokens that validates: from the first document that starts at
    /// or after (1 - fraction) of them.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// llm.c format: the most tokens in one shard (llm.c's fineweb.py writes 100M).
    #[arg(long, default_value_t = 100_000_000, value_parser = crate::args::count(1, i32::MAX as usize))]
    shard_tokens: usize,
    /// llm.c format: shard names start with this.
    #[arg(long, default_value = "data")]
    name: String,
    /// Replace the .bin files --out already holds.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: PrepareArgs) -> Result<()> {
    let tokenizer = match args.tokenizer.as_str() {
        "gpt2" => Tokenizer::gpt2(),
        "char" => {
            return Err(Error::Input(
                "prepare writes GPT-2 token shards; character-level text needs no preparing: pass the text \
                 file to train --data"
                    .into(),
            ));
        }
        other => return Err(Error::Input(format!("unknown tokenizer '{other}'; prepare takes gpt2"))),
    };
    let files = prepare::input_files(&args.inputs)?;
    if let Ok(entries) = std::fs::read_dir(&args.out) {
        let existing: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .collect();
        if !existing.is_empty() && !args.overwrite {
            return Err(Error::Input(format!(
                "{} already holds token shards ({}); pass --overwrite to replace them, or another --out",
                args.out.display(),
                existing[0].display()
            )));
        }
        if files.iter().any(|f| f.parent() == Some(args.out.as_path())) {
            return Err(Error::Input(format!("--out {} holds an input file; write elsewhere", args.out.display())));
        }
        for p in existing {
            std::fs::remove_file(&p).map_err(|e| Error::Input(format!("cannot remove {}: {e}", p.display())))?;
        }
    }
    let total: u64 = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    let bar = progress::bytes_bar(total);
    let opts = PrepareOptions {
        format: match args.format {
            FormatArg::Nanogpt => Format::NanoGpt,
            FormatArg::Llmc => Format::LlmC,
        },
        delimiter: args.delimiter.map(|d| d.replace("\\n", "\n")),
        val_fraction: args.val_fraction,
        shard_tokens: args.shard_tokens,
        name: args.name,
    };
    let started = std::time::Instant::now();
    let prepared = prepare::prepare(&files, &args.out, &tokenizer, &opts, &|done| bar.set_position(done))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{} documents, {:.1} MB of text -> {} train + {} val tokens in {} files in {} ({:.1} MB/s on {} threads)",
        prepared.documents,
        prepared.bytes as f64 / 1e6,
        prepared.train_tokens,
        prepared.val_tokens,
        prepared.files.len(),
        args.out.display(),
        prepared.bytes as f64 / 1e6 / secs,
        rayon_threads()
    );
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
