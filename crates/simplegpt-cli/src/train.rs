//! `simplegpt train`: a new run into `--out`, or `--resume` of one, with a progress bar.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use simplegpt::checkpoint::Checkpoint;
use simplegpt::run::RunDir;
use simplegpt::train::Trainer;
use simplegpt::{Error, Result, device, interop, record};

use crate::args::RunOptions;
use crate::outputs::refuse_overwriting_inputs;
use crate::{data, progress};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    options: RunOptions,
    /// Output directory: config.toml, run.json, metrics.jsonl, ckpt.safetensors.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Replace the run that --out already holds.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Continue the run in this directory from its checkpoint, on the data and backend it
    /// recorded (--data and --device may name them again, not change them).
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Start from these weights (a safetensors file in the names `export` writes)
    /// instead of the seeded initialisation.
    #[arg(long, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
}

/// The exit code of a `train` whose run diverged: a result, recorded like any other, but one
/// a script must be able to tell from a run that trained (0) and from an error (1).
const DIVERGED: u8 = 3;

/// A run ready to train: its trainer, its directory (locked) and its device.
struct Started {
    trainer: Trainer,
    dir: RunDir,
    opened: device::Opened,
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let started = match &args.resume {
        Some(path) => match resume(&args.options, path)? {
            Resumed::Continues(started) => started,
            Resumed::Ended(how) => return Ok(how),
        },
        None => start(&args)?,
    };
    let Started { mut trainer, dir, opened } = started;
    let m = &trainer.config.model;
    eprintln!(
        "training {:.2}M parameters ({} layers, d {}, {} heads, norm {}, residual {}) on {} -> {}",
        m.num_params() as f64 / 1e6,
        m.n_layer,
        m.n_embd,
        m.n_head,
        m.norm,
        m.residual,
        opened.adapter,
        dir.path.display()
    );
    if let Some(hint) = crate::devices::speed_hint(&opened) {
        eprintln!("{hint}");
    }
    let bar = progress::bar(trainer.config.train.max_steps as u64, "");
    bar.set_position(trainer.progress.step as u64);
    let mut last_loss = String::new();
    dir.train(&mut trainer, |r| {
        bar.set_position(r.step as u64);
        if let Some(loss) = r.loss {
            last_loss = format!("loss {loss:.4}");
        }
        let tps = r.tokens_per_sec.map(|v| format!(" | {:.0} tok/s", v)).unwrap_or_default();
        bar.set_message(format!("{last_loss}{tps}"));
        // Evaluations and divergence get a line of their own, above the bar.
        let line = match (&r.diverged, r.train_loss, r.val_loss) {
            (Some(why), _, _) => Some(format!("step {}: diverged ({why}); stopping", r.step)),
            (None, Some(tl), Some(vl)) => Some(format!("step {}: train loss {tl:.4}, val loss {vl:.4}", r.step)),
            _ => None,
        };
        match line {
            Some(line) if bar.is_hidden() => eprintln!("{line}"),
            Some(line) => bar.println(line),
            None => {}
        }
    })?;
    bar.finish_and_clear();
    let p = &trainer.progress;
    match p.diverged_at {
        Some(s) => {
            println!("diverged at step {s}; records in {}", dir.path.display());
            Ok(ExitCode::from(DIVERGED))
        }
        None => {
            println!(
                "done: {} steps, best val loss {}; run in {}",
                trainer.config.train.max_steps,
                p.best_val_loss.map_or("n/a".into(), |v| format!("{v:.4}")),
                dir.path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A new run in `--out`: everything it needs is resolved before its directory is touched,
/// so that bad input leaves no directory behind.
fn start(args: &TrainArgs) -> Result<Started> {
    let options = &args.options;
    let mut inputs = options.input_files();
    inputs.extend(args.init_from.as_deref().map(|p| ("--init-from", p)));
    refuse_overwriting_inputs(&RunDir::files(&args.out), &inputs)?;
    let config = options.config()?;
    let data = options.data(&config)?;
    let opened = device::open(&options.device)?;
    let mut trainer = Trainer::new(config, data, &opened.device)?;
    if let Some(path) = &args.init_from {
        let bytes = std::fs::read(path).map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        trainer.model = interop::import(
            trainer.model,
            &bytes,
            &path.display().to_string(),
            &trainer.data.tokenizer,
            &trainer.device,
        )?;
    }
    let dir = RunDir::create_new(&args.out, args.overwrite)?;
    dir.start(&trainer, &options.run_header(&trainer, &opened)?)?;
    Ok(Started { trainer, dir, opened })
}

/// What `--resume` finds: a run to continue, or one that has already ended (and the exit
/// code that says how).
enum Resumed {
    Continues(Started),
    Ended(ExitCode),
}

/// The run in `path`, continued from its checkpoint on the data and backend it recorded.
fn resume(options: &RunOptions, path: &std::path::Path) -> Result<Resumed> {
    let dir = RunDir::open(path)?;
    let path = &dir.path;
    let ckpt = Checkpoint::read(&dir.checkpoint_path())?;
    if options.explicit_config() {
        let asked = options.config()?;
        let mut stored = ckpt.config.clone();
        stored.model.vocab_size = asked.model.vocab_size;
        if asked != stored {
            return Err(Error::Input(format!(
                "the checkpoint in {} is from another config; resume without --preset/--config/--set \
                 (the run's own config.toml is used)",
                path.display()
            )));
        }
    }
    let header = record::read_header(path)?;
    // Without --data, the data the run started with; then the same check either way.
    // Text is tokenised as the run's was; shards of another tokenizer are refused.
    let tokenizer = ckpt.config.model.tokenizer;
    let data = match &options.data {
        Some(given) => data::load(Some(given), tokenizer)?,
        None => data::recorded(path, header.data_source.as_deref(), tokenizer)?,
    };
    header.check_same_data(&data)?;
    // One run, one backend: its header (and so `repro`) names the device it ran on.
    let device = if options.device == "auto" { header.backend.as_str() } else { options.device.as_str() };
    let opened = device::open(device)?;
    if opened.backend != header.backend {
        return Err(Error::Input(format!(
            "{} was trained on {}; resume it there (--device {}), since a run's record names one backend",
            path.display(),
            header.backend,
            header.backend
        )));
    }
    let trainer = ckpt.resume(data, &opened.device)?;
    if let Some(step) = trainer.progress.diverged_at {
        println!("{} diverged at step {step}; nothing to resume", path.display());
        return Ok(Resumed::Ended(ExitCode::from(DIVERGED)));
    }
    if trainer.finished() {
        println!(
            "{} has already finished ({} steps); nothing to resume",
            path.display(),
            trainer.config.train.max_steps
        );
        return Ok(Resumed::Ended(ExitCode::SUCCESS));
    }
    dir.truncate_metrics(trainer.progress.step)?;
    eprintln!("resuming {} at step {}", path.display(), trainer.progress.step);
    Ok(Resumed::Continues(Started { trainer, dir, opened }))
}
