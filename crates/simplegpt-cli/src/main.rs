//! The `simplegpt` command: a thin shell over the core crate. Parses arguments, resolves
//! the config, data and device, and prints; all the work is in `simplegpt`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::module::Module;
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use simplegpt::checkpoint::Checkpoint;
use simplegpt::data::Dataset;
use simplegpt::record::{self, RunHeader, RunRecord};
use simplegpt::run::{DirLock, RunDir};
use simplegpt::sample::SampleOptions;
use simplegpt::study::{self, Variant};
use simplegpt::train::{StepRecord, Trainer};
use simplegpt::{Config, Error, Result, device, interop};

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
    /// Train a model (the embedded corpus and the tiny preset unless told otherwise). Exits
    /// with 0 when the run trained to its end, 3 when it diverged (recorded in its
    /// directory), 1 on an error.
    Train {
        #[command(flatten)]
        run: RunArgs,
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
    },
    /// Write weights in PyTorch names and layout (safetensors), with the first training
    /// batches, to replay a run in another framework.
    Export {
        #[command(flatten)]
        run: RunArgs,
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
    },
    /// Generate text from a checkpoint.
    Sample {
        /// A run directory or a checkpoint file.
        #[arg(long, default_value = "out")]
        from: PathBuf,
        /// Text to continue (its characters must be in the checkpoint's vocabulary).
        #[arg(long, default_value = "")]
        prompt: String,
        /// Number of characters to generate.
        #[arg(long, default_value_t = 500, value_parser = count(0, 1_000_000))]
        tokens: usize,
        /// Divides the logits: below 1 sharper, above 1 flatter; near 0 the most likely.
        #[arg(long, default_value_t = simplegpt::sample::DEFAULT_TEMPERATURE)]
        temperature: f64,
        /// Sample from the k most likely characters only (0: all).
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
    },
    /// List the backends and GPU adapters available here.
    Devices,
    /// Compare two run records (run directories or exported JSON), or run one config on
    /// several backends here (--backends cpu,wgpu) and compare them.
    Repro {
        /// Two run records: A (the reference) and B.
        records: Vec<PathBuf>,
        /// Run the config on each of these devices and compare them with the first.
        #[arg(long, value_delimiter = ',')]
        backends: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
        /// Steps to train with --backends (default 50; sets max_steps, and every step is logged).
        #[arg(long, value_parser = count(1, 1_000_000))]
        steps: Option<usize>,
        /// The largest relative loss difference |a - b| / max(|a|, |b|) that still passes.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f64,
    },
    /// Train several variants on the same data and seed; write a report (report.md, SVG
    /// plots) and every run's directory.
    Compare {
        #[command(flatten)]
        run: RunArgs,
        /// A variant: [NAME:]KEY=VALUE[,KEY=VALUE...], e.g. --variant simple:norm=simple.
        #[arg(long = "variant", required = true)]
        variants: Vec<String>,
        /// Train each variant with this many seeds (the config's seed and the ones after
        /// it, in VARIANT/seed-S); the report adds their means and spread.
        #[arg(long, default_value_t = 1, value_parser = count(1, MAX_SEEDS))]
        seeds: usize,
        /// Train all runs at once, one step of each in turn (all models in memory), and
        /// rewrite the report at every evaluation so that it can be watched.
        #[arg(long)]
        interleave: bool,
        /// Report directory, holding each run's directory.
        #[arg(long, default_value = "study")]
        out: PathBuf,
        /// Replace the runs of another study that --out holds under the same names.
        #[arg(long)]
        overwrite: bool,
    },
    /// Learning-rate stability sweep: each variant at log-spaced learning rates; reports the
    /// final loss vs LR and the largest LR at which each trained.
    Sweep {
        #[command(flatten)]
        run: RunArgs,
        /// Variants as for compare (default: pre_ln:norm=pre_ln and simple:norm=simple).
        #[arg(long = "variant")]
        variants: Vec<String>,
        /// Smallest learning rate of the grid.
        #[arg(long, default_value_t = 1e-4)]
        lr_min: f64,
        /// Largest learning rate of the grid.
        #[arg(long, default_value_t = 1e-1)]
        lr_max: f64,
        /// Number of learning rates in the grid.
        #[arg(long, default_value_t = 7, value_parser = count(1, 100))]
        points: usize,
        /// The report also gives each variant's largest LR whose final loss is within this
        /// many nats of its best final loss.
        #[arg(long, default_value_t = 0.1)]
        near: f64,
        /// Run each variant and LR with this many seeds; the report gives their means, and an
        /// LR counts as diverged if any seed diverged.
        #[arg(long, default_value_t = 1, value_parser = count(1, MAX_SEEDS))]
        seeds: usize,
        /// Report directory, holding each run's directory.
        #[arg(long, default_value = "sweep")]
        out: PathBuf,
        /// Replace the runs of another sweep that --out holds under the same names.
        #[arg(long)]
        overwrite: bool,
    },
    /// Estimate the largest Hessian eigenvalue of the training loss (power iteration on
    /// finite-difference Hessian-vector products), at initialisation or at a checkpoint.
    Hessian {
        #[command(flatten)]
        run: RunArgs,
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
    },
    /// Measure training speed (ms/step, tokens/s, model TFLOP/s; MFU with --peak-tflops) for a config on a device.
    Bench {
        #[command(flatten)]
        run: RunArgs,
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
    },
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, help = preset_help())]
    preset: Option<String>,
    /// A TOML file with [model] and [train] keys over the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one key, e.g. --set norm=simple --set lr=3e-3.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// auto, cpu, wgpu, vulkan, metal, dx12 or cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    /// A UTF-8 text file, `tinyshakespeare` (downloaded once and cached), or `embedded` (the
    /// corpus built in, as with no --data).
    #[arg(long)]
    data: Option<String>,
}

/// The most seeds a study trains each run with.
const MAX_SEEDS: usize = 100;

/// A parser for a count from `min` to `max`: every number a user gives is bounded where it
/// is parsed, before anything is allocated or run for it.
fn count(min: usize, max: usize) -> impl Fn(&str) -> std::result::Result<usize, String> + Clone + Send + Sync {
    move |text| match text.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

/// The `--preset` help, from the presets' own descriptions.
fn preset_help() -> String {
    let presets: Vec<String> =
        simplegpt::config::PRESETS.iter().map(|(name, what)| format!("{name}: {what}")).collect();
    format!("A preset; tiny when none is given. {}", presets.join("; "))
}

impl RunArgs {
    /// The files these options read, by the flag that names them.
    fn input_files(&self) -> Vec<(&'static str, &Path)> {
        let data = self.data.as_deref().filter(|d| ![record::EMBEDDED_DATA, "tinyshakespeare"].contains(d));
        let config = self.config.as_deref().map(|p| ("--config", p));
        config.into_iter().chain(data.map(|d| ("--data", Path::new(d)))).collect()
    }

    fn explicit_config(&self) -> bool {
        self.preset.is_some() || self.config.is_some() || !self.set.is_empty()
    }

    /// The --config file's text, and its name for messages.
    fn config_text(&self) -> Result<Option<(String, String)>> {
        let Some(path) = &self.config else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read config file {}: {e}", path.display())))?;
        Ok(Some((text, path.display().to_string())))
    }

    fn config(&self) -> Result<Config> {
        let toml = self.config_text()?;
        Config::resolve(
            self.preset.as_deref().unwrap_or("tiny"),
            toml.as_ref().map(|(t, o)| (t.as_str(), o.as_str())),
            &self.set,
        )
    }

    fn data(&self, block_size: usize) -> Result<Dataset> {
        load_data(self.data.as_deref(), block_size)
    }

    /// `--data` as a run header records it: a path made absolute, so that `--resume` finds
    /// the file from any directory.
    fn data_source(&self) -> String {
        match self.data.as_deref() {
            None | Some(record::EMBEDDED_DATA) => record::EMBEDDED_DATA.to_string(),
            Some("tinyshakespeare") => "tinyshakespeare".to_string(),
            Some(path) => std::path::absolute(path).map_or(path.to_string(), |p| p.display().to_string()),
        }
    }
}

/// The data a run directory recorded (its header's `data_source`; the embedded corpus for a
/// run from before it was recorded), for a command given no --data.
fn recorded_data(dir: &Path, source: Option<&str>, block_size: usize) -> Result<Dataset> {
    load_data(source, block_size).map_err(|e| match source {
        Some(s) if s != record::EMBEDDED_DATA => Error::Input(format!(
            "{} was trained on --data {s}, which cannot be used now ({e}); pass --data with its new location",
            dir.display()
        )),
        _ => e,
    })
}

/// The data named by `--data` (or a header's `data_source`): a file, `tinyshakespeare`, or
/// the embedded corpus when none or `embedded`.
fn load_data(source: Option<&str>, block_size: usize) -> Result<Dataset> {
    match source {
        None | Some(record::EMBEDDED_DATA) => {
            Dataset::from_text(&simplegpt::data::default_corpus(), "the embedded corpus", block_size)
        }
        Some("tinyshakespeare") => Dataset::from_file(&tinyshakespeare()?, block_size),
        Some(path) => Dataset::from_file(Path::new(path), block_size),
    }
}

const TINYSHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

/// The tiny Shakespeare file, downloaded (with curl) on first use and cached.
fn tinyshakespeare() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let cache = home.join(".cache/simplegpt/tinyshakespeare.txt");
    if cache.exists() {
        return Ok(cache);
    }
    std::fs::create_dir_all(cache.parent().expect("has a parent"))
        .map_err(|e| Error::Input(format!("cannot create the cache directory for tiny Shakespeare: {e}")))?;
    eprintln!("downloading tiny Shakespeare from {TINYSHAKESPEARE_URL}");
    let tmp = cache.with_extension("part");
    let status = std::process::Command::new("curl")
        .args(["-fsSL", "--max-time", "60", "-o"])
        .arg(&tmp)
        .arg(TINYSHAKESPEARE_URL)
        .status();
    match status {
        Ok(s) if s.success() => {
            std::fs::rename(&tmp, &cache).map_err(|e| Error::Input(format!("cannot cache tiny Shakespeare: {e}")))?;
            Ok(cache)
        }
        _ => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::Input(format!(
                "could not download tiny Shakespeare (offline, or curl missing); download \
                 {TINYSHAKESPEARE_URL} yourself and pass --data PATH"
            )))
        }
    }
}

fn main() -> ExitCode {
    // Vulkan and EGL loaders print errors to stderr when this is unset (headless servers).
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: nothing else runs yet; no other thread can be reading the environment.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    // A panic is a bug in simplegpt or a backend: say so in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error ({info}); please report it");
    }));
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
    match run(cli) {
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

/// The exit code of a `train` whose run diverged: a result, recorded like any other, but one
/// a script must be able to tell from a run that trained (0) and from an error (1).
const DIVERGED: u8 = 3;

fn run(cli: Cli) -> Result<ExitCode> {
    let done: Result<()> = match cli.command {
        Command::Train { run, out, resume, init_from, overwrite } => {
            return train(run, out, resume, init_from, overwrite);
        }
        Command::Export { run, from, batches, out } => {
            let mut inputs = run.input_files();
            let checkpoint = from.as_deref().map(checkpoint_file);
            inputs.extend(checkpoint.as_deref().map(|c| ("--from", c)));
            refuse_overwriting_inputs(std::slice::from_ref(&out), &inputs)?;
            refuse_overwriting_a_run(&out)?;
            let (config, model, tokenizer, data) = match from {
                Some(from) => {
                    let (ckpt, data) = checkpoint_and_data(&from, &run)?;
                    (ckpt.config.clone(), ckpt.model(&Device::flex())?, ckpt.tokenizer.clone(), data)
                }
                None => {
                    let config = run.config()?;
                    let data = run.data(config.model.block_size)?;
                    let trainer = Trainer::new(config, data, &Device::flex())?;
                    let model = trainer.model.valid();
                    (trainer.config, model, trainer.data.tokenizer.clone(), trainer.data)
                }
            };
            let ids = batches as u128 * (config.train.batch_size * config.model.block_size) as u128;
            if ids > MAX_EXPORTED_IDS {
                return Err(Error::Input(format!(
                    "--batches {batches} would write {ids} token ids per tensor, more than {MAX_EXPORTED_IDS}; export fewer batches"
                )));
            }
            let batches = (batches > 0).then_some((&data, batches));
            let bytes = pollster::block_on(interop::export(&model, &config, &tokenizer, batches))?;
            simplegpt::checkpoint::write_atomic(&out, &bytes)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Sample { from, prompt, tokens, temperature, top_k, seed, device, force } => {
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
            let text = pollster::block_on(simplegpt::sample::generate(
                &model,
                &ckpt.tokenizer,
                ckpt.config.model.block_size,
                &opts,
            ))?;
            println!("{text}");
            Ok(())
        }
        Command::Devices => {
            println!(
                "backends in this build: cpu (burn flex), wgpu (vulkan, metal, dx12){}",
                if cfg!(feature = "cuda") { ", cuda" } else { " (cuda: rebuild with --features cuda)" }
            );
            let adapters = device::list_adapters();
            if adapters.is_empty() {
                println!("no wgpu adapters found (no Vulkan/Metal/DX12 driver); --device cpu works everywhere");
            }
            for a in adapters {
                println!("  {a}");
            }
            match device::open("auto") {
                Ok(d) => println!("--device auto picks: {}", d.description),
                Err(e) => println!("--device auto: {e}"),
            }
            Ok(())
        }
        Command::Compare { run, variants, seeds, interleave, out, overwrite } => {
            let variants = Variant::parse_all(&variants)?;
            let base = run.config()?;
            let jobs = variants.iter().map(|v| Ok((v.name.clone(), v.apply(&base)?))).collect::<Result<Vec<_>>>()?;
            let runs = run_study(&run, &out, study::with_seeds(jobs, seeds)?, interleave, overwrite)?;
            let (md, svgs) = study::comparison_report("Comparison", &command_line(), &runs);
            write_report(&out, &md, &svgs)
        }
        Command::Sweep { run, variants, lr_min, lr_max, points, near, seeds, out, overwrite } => {
            if !(lr_min > 0.0 && lr_max >= lr_min && lr_max.is_finite()) {
                return Err(Error::Input("need 0 < --lr-min <= --lr-max (finite)".into()));
            }
            if !(near >= 0.0) {
                return Err(Error::Input(format!("--near must be a number of nats >= 0, got {near}")));
            }
            let variants = if variants.is_empty() {
                vec!["pre_ln:norm=pre_ln".to_string(), "simple:norm=simple".to_string()]
            } else {
                variants
            };
            let variants = Variant::parse_all(&variants)?;
            let base = run.config()?;
            // The grid sets each run's lr (and min_lr to a tenth of it): one given by --set, a
            // --variant or the --config file, whatever its value, would be overwritten.
            let toml = run.config_text()?;
            for key in ["lr", "min_lr"] {
                let given = |sets: &[String]| Config::gives_key(toml.as_ref().map(|(t, _)| t.as_str()), sets, key);
                if given(&run.set) || variants.iter().any(|v| given(&v.sets)) {
                    return Err(Error::Input(
                        "sweep sets lr and min_lr itself; drop them from the --config file, --set and --variant, \
                         and give the range with --lr-min and --lr-max"
                            .into(),
                    ));
                }
            }
            let grid = study::log_grid(lr_min, lr_max, points);
            // Each LR names a directory and a column (two significant digits).
            let names: Vec<String> = grid.iter().map(|lr| format!("lr-{lr:.1e}")).collect();
            if (1..names.len()).any(|i| names[i] == names[i - 1]) {
                return Err(Error::Input(format!(
                    "{points} points from {lr_min} to {lr_max} give learning rates that agree to two digits; use fewer --points or a wider range"
                )));
            }
            let mut jobs = Vec::new();
            for v in &variants {
                for (lr, dir) in grid.iter().zip(&names) {
                    let mut c = v.apply(&base)?;
                    c.train.lr = *lr;
                    c.train.min_lr = lr / 10.0;
                    // Every run's config is checked before the first one trains.
                    c.validate()?;
                    jobs.push((format!("{}/{dir}", v.name), c));
                }
            }
            let runs = run_study(&run, &out, study::with_seeds(jobs, seeds)?, false, overwrite)?;
            // Group the runs by variant (the part of the directory before "/lr-").
            let runs: Vec<_> = runs.into_iter().map(|(n, c, r)| (study::variant_of(&n).to_string(), c, r)).collect();
            let unigram = run.data(base.model.block_size)?.unigram_loss();
            let (md, svgs) = study::sweep_report(&command_line(), &runs, near, unigram);
            write_report(&out, &md, &svgs)
        }
        Command::Hessian { run, from, iters, eps, batches } => {
            if !(eps > 0.0 && eps.is_finite()) {
                return Err(Error::Input(format!("--eps must be a finite step > 0, got {eps}")));
            }
            let opened = device::open(&run.device)?;
            let device = opened.device.clone().autodiff();
            // The Hessian's loss is `Gpt::forward`'s, which has no dropout: a fixed function
            // of the weights.
            let (config, model, data) = match from {
                Some(from) => {
                    let (ckpt, data) = checkpoint_and_data(&from, &run)?;
                    if let Some(why) = ckpt.broken() {
                        return Err(Error::Input(format!(
                            "{}: {why}; a Hessian needs finite weights and loss",
                            from.display()
                        )));
                    }
                    (ckpt.config.clone(), ckpt.model(&device)?, data)
                }
                None => {
                    let config = run.config()?;
                    let data = run.data(config.model.block_size)?;
                    let trainer = Trainer::new(config, data, &opened.device)?;
                    (trainer.config.clone(), trainer.model, trainer.data)
                }
            };
            let t = &config.train;
            let fixed = simplegpt::hessian::fixed_batches(&data, &config, batches, &device);
            let e = pollster::block_on(simplegpt::hessian::hessian_extremes(&model, &fixed, iters, eps, t.seed))?;
            let top_params = |top: &simplegpt::hessian::TopEigen| {
                top.share.iter().take(3).map(|(p, s)| format!("{p} {:.0}%", s * 100.0)).collect::<Vec<_>>().join(", ")
            };
            let last = |top: &simplegpt::hessian::TopEigen| *top.estimates.last().unwrap_or(&f64::NAN);
            let (spectral, largest) = (last(&e.spectral), last(&e.largest));
            if !(spectral.is_finite() && largest.is_finite()) {
                return Err(Error::Input(
                    "the loss or its gradients are not finite at these weights, so no eigenvalue can be estimated; \
                     lower --eps, or use weights from a run that did not diverge"
                        .into(),
                ));
            }
            for (i, v) in e.spectral.estimates.iter().enumerate() {
                println!("iteration {:>3}: lambda of largest magnitude ~ {v:.6}", i + 1);
            }
            if spectral < 0.0 {
                for (i, v) in e.largest.estimates.iter().enumerate() {
                    println!(
                        "iteration {:>3}: largest lambda ~ {v:.6} (power iteration on H + {:.4} I)",
                        i + 1,
                        -spectral
                    );
                }
            }
            let convergence = |top: &simplegpt::hessian::TopEigen| {
                let n = top.estimates.len();
                if top.converged {
                    format!("converged after {n} iterations")
                } else {
                    format!("NOT converged after {n} iterations: raise --iters")
                }
            };
            println!(
                "method: power iteration (stopped when the estimate changes by < {:e} relative), Hessian-vector products by central differences of gradients with eps {eps:e}, {batches} batches of {}",
                simplegpt::hessian::CONVERGED,
                t.batch_size
            );
            println!(
                "lambda of largest magnitude {spectral:.6} (||H||_2 = {:.6}; {}); its eigenvector lies in: {}",
                spectral.abs(),
                convergence(&e.spectral),
                top_params(&e.spectral)
            );
            println!(
                "largest lambda {largest:.6} ({}); its eigenvector lies in: {}",
                convergence(&e.largest),
                top_params(&e.largest)
            );
            println!("lambda_max {largest:.6} | 2 / lambda_max {:.3e}", 2.0 / largest);
            Ok(())
        }
        Command::Repro { records, backends, run, steps, tolerance } => repro(records, backends, run, steps, tolerance),
        Command::Bench { run, warmup, steps, peak_tflops } => {
            if let Some(peak) = peak_tflops
                && !(peak > 0.0 && peak.is_finite())
            {
                return Err(Error::Input(format!("--peak-tflops must be > 0, got {peak}")));
            }
            simplegpt::bench::max_steps(warmup, steps)?;
            let config = run.config()?;
            let data = run.data(config.model.block_size)?;
            let opened = device::open(&run.device)?;
            eprintln!("bench on {}: {} warm-up + {steps} timed steps", opened.description, warmup);
            let r = simplegpt::bench::bench(config, data, &opened.device, warmup, steps)?;
            let memory =
                r.device_memory.map_or("n/a".to_string(), |b| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64));
            let tflops = r.flops_per_sec / 1e12;
            // MFU only against the peak of the device measured, which only the user knows.
            let mfu = peak_tflops
                .map_or(String::new(), |peak| format!(" | MFU {:.2}% (of {peak} TFLOP/s)", tflops / peak * 100.0));
            println!(
                "device {} | params {:.2}M | {:.2} ms/step | {:.0} tokens/s | {tflops:.3} TFLOP/s{mfu} | peak device memory {memory}",
                opened.description,
                r.params as f64 / 1e6,
                r.ms_per_step,
                r.tokens_per_sec,
            );
            Ok(())
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

fn train(
    args: RunArgs,
    out: PathBuf,
    resume: Option<PathBuf>,
    init_from: Option<PathBuf>,
    overwrite: bool,
) -> Result<ExitCode> {
    let (mut trainer, dir, opened) = match &resume {
        Some(dir_path) => {
            let dir = RunDir::open(dir_path)?;
            let dir_path = &dir.path;
            let ckpt = Checkpoint::read(&dir.checkpoint_path())?;
            if args.explicit_config() {
                let asked = args.config()?;
                let mut stored = ckpt.config.clone();
                stored.model.vocab_size = asked.model.vocab_size;
                if asked != stored {
                    return Err(Error::Input(format!(
                        "the checkpoint in {} is from another config; resume without --preset/--config/--set \
                         (the run's own config.toml is used)",
                        dir_path.display()
                    )));
                }
            }
            let header = record::read_header(&dir.path)?;
            // Without --data, the data the run started with; then the same check either way.
            let data = match &args.data {
                Some(given) => load_data(Some(given), ckpt.config.model.block_size)?,
                None => recorded_data(dir_path, header.data_source.as_deref(), ckpt.config.model.block_size)?,
            };
            header.check_same_data(&data)?;
            // One run, one backend: its header (and so `repro`) names the device it ran on.
            let device = if args.device == "auto" { header.backend.as_str() } else { args.device.as_str() };
            let opened = device::open(device)?;
            if opened.backend != header.backend {
                return Err(Error::Input(format!(
                    "{} was trained on {}; resume it there (--device {}), since a run's record names one backend",
                    dir_path.display(),
                    header.backend,
                    header.backend
                )));
            }
            let trainer = Trainer::resume(&ckpt, data, &opened.device)?;
            if let Some(step) = trainer.progress.diverged_at {
                println!("{} diverged at step {step}; nothing to resume", dir_path.display());
                return Ok(ExitCode::from(DIVERGED));
            }
            if trainer.finished() {
                println!(
                    "{} has already finished ({} steps); nothing to resume",
                    dir_path.display(),
                    trainer.config.train.max_steps
                );
                return Ok(ExitCode::SUCCESS);
            }
            dir.truncate_metrics(trainer.progress.step)?;
            eprintln!("resuming {} at step {}", dir_path.display(), trainer.progress.step);
            (trainer, dir, opened)
        }
        None => {
            let mut inputs = args.input_files();
            inputs.extend(init_from.as_deref().map(|p| ("--init-from", p)));
            refuse_overwriting_inputs(&RunDir::files(&out), &inputs)?;
            let config = args.config()?;
            let data = args.data(config.model.block_size)?;
            let opened = device::open(&args.device)?;
            let mut trainer = Trainer::new(config, data, &opened.device)?;
            if let Some(path) = &init_from {
                let bytes =
                    std::fs::read(path).map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
                trainer.model = interop::import(
                    trainer.model,
                    &bytes,
                    &path.display().to_string(),
                    &trainer.data.tokenizer,
                    &trainer.device,
                )?;
            }
            // Only now, with everything the run needs in hand: bad input leaves no directory.
            let dir = RunDir::create_new(&out, overwrite)?;
            let mut header = pollster::block_on(RunHeader::new(&trainer, &opened.backend, &opened.description))?;
            header.data_source = Some(args.data_source());
            dir.start(&trainer, &header)?;
            (trainer, dir, opened)
        }
    };
    let m = &trainer.config.model;
    eprintln!(
        "training {:.2}M parameters ({} layers, d {}, {} heads, norm {}, residual {}) on {} -> {}",
        m.num_params() as f64 / 1e6,
        m.n_layer,
        m.n_embd,
        m.n_head,
        m.norm,
        m.residual,
        opened.description,
        dir.path.display()
    );
    let bar = ProgressBar::new(trainer.config.train.max_steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]").expect("valid template"),
    );
    bar.set_position(trainer.progress.step as u64);
    let mut last_loss = String::new();
    trainer.run_to_dir(&dir, |r| {
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

fn repro(
    records: Vec<PathBuf>,
    backends: Vec<String>,
    args: RunArgs,
    steps: Option<usize>,
    tolerance: f64,
) -> Result<()> {
    if !(tolerance >= 0.0 && tolerance.is_finite()) {
        return Err(Error::Input(format!("--tolerance must be a relative difference >= 0, got {tolerance}")));
    }
    let runs: Vec<(String, RunRecord)> = match (records.len(), backends.len()) {
        (2, 0) => {
            // Two records are compared as they are: options that shape a run would be ignored.
            if args.explicit_config() || args.data.is_some() || args.device != "auto" || steps.is_some() {
                return Err(Error::Input(
                    "repro RUN_A RUN_B compares two finished runs; --preset, --config, --set, --data and --steps \
                     are for repro --backends, and --device for neither"
                        .into(),
                ));
            }
            records.iter().map(|p| Ok((p.display().to_string(), record::read(p)?))).collect::<Result<_>>()?
        }
        (0, n) if n >= 2 => {
            if args.device != "auto" {
                return Err(Error::Input("--backends names the devices to run on; drop --device".into()));
            }
            if let Some(bad) = backends.iter().find(|b| !device::NAMES.contains(&b.as_str())) {
                return Err(Error::Input(format!(
                    "unknown device '{bad}' in --backends; choose from: {}",
                    device::NAMES.join(", ")
                )));
            }
            let steps = steps.unwrap_or(50);
            let mut config = args.config()?;
            config.train.max_steps = steps;
            config.train.log_interval = 1;
            config.train.eval_interval = steps;
            config.train.checkpoint = false;
            let mut runs = Vec::new();
            for name in &backends {
                let opened = device::open(name)?;
                eprintln!("running {steps} steps on {}", opened.description);
                let data = args.data(config.model.block_size)?;
                let mut trainer = Trainer::new(config.clone(), data, &opened.device)?;
                let header = pollster::block_on(RunHeader::new(&trainer, &opened.backend, &opened.description))?;
                let mut steps = Vec::new();
                while !trainer.finished() {
                    steps.extend(pollster::block_on(trainer.step())?);
                }
                runs.push((opened.description.clone(), RunRecord { header, steps }));
            }
            print_loss_table(&runs);
            runs
        }
        _ => {
            return Err(Error::Input(
                "give two run records (simplegpt repro RUN_A RUN_B) or at least two backends \
                 (simplegpt repro --backends cpu,wgpu --preset tiny --steps 50)"
                    .into(),
            ));
        }
    };
    let (name_a, a) = &runs[0];
    let mut all_passed = true;
    for (name_b, b) in &runs[1..] {
        let c = record::compare(a, b, tolerance);
        println!(
            "A: {name_a} ({}, {})\nB: {name_b} ({}, {})",
            a.header.backend, a.header.target, b.header.backend, b.header.target
        );
        println!("{c}");
        all_passed &= c.passed();
    }
    if all_passed { Ok(()) } else { Err(Error::Input("the runs do not reproduce each other (see above)".into())) }
}

/// Loss per backend at a few steps, the first backend's column first.
fn print_loss_table(runs: &[(String, RunRecord)]) {
    let header: Vec<String> = runs.iter().map(|(_, r)| format!("{:>14}", r.header.backend)).collect();
    println!("{:>6} {}", "step", header.join(" "));
    let steps: Vec<usize> = runs[0].1.steps.iter().filter(|r| r.loss.is_some()).map(|r| r.step).collect();
    let shown: Vec<usize> = steps.iter().copied().filter(|s| s % 10 == 0 || Some(s) == steps.last()).collect();
    for step in shown {
        let cells: Vec<String> = runs
            .iter()
            .map(|(_, r)| {
                r.steps
                    .iter()
                    .find(|x| x.step == step)
                    .and_then(|x| x.loss)
                    .map_or(format!("{:>14}", "-"), |l| format!("{l:>14.8}"))
            })
            .collect();
        println!("{step:>6} {}", cells.join(" "));
    }
}

/// The checkpoint file `--from` names: the file, or a run directory's checkpoint.
fn checkpoint_file(from: &Path) -> PathBuf {
    if from.is_dir() { from.join(simplegpt::run::CHECKPOINT_FILE) } else { from.to_path_buf() }
}

/// Refuses to write over one of a run directory's own files (its checkpoint above all: the
/// run could no longer be resumed or sampled).
fn refuse_overwriting_a_run(out: &Path) -> Result<()> {
    let dir = resolved(out).parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join(simplegpt::run::HEADER_FILE).exists() && RunDir::files(&dir).contains(&resolved(out)) {
        return Err(Error::Input(format!(
            "--out {} is a file of the run in {}; write to another file",
            out.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// A checkpoint from a run directory or a checkpoint file.
fn read_checkpoint(from: &Path) -> Result<Checkpoint> {
    let path = checkpoint_file(from);
    if !from.is_dir() {
        return Checkpoint::read(&path);
    }
    if !path.exists() && from.join(simplegpt::run::HEADER_FILE).exists() {
        return Err(Error::Input(format!(
            "{} holds a run without a checkpoint (trained with checkpoint=false, or stopped before its first evaluation)",
            from.display()
        )));
    }
    Checkpoint::read(&path)
}

/// The checkpoint of `--from` and the data it was trained on: `--data`, or else the data
/// its run directory recorded. A checkpoint brings its own config, so a --preset, --config
/// or --set beside --from would be silently ignored; they are refused instead.
fn checkpoint_and_data(from: &Path, args: &RunArgs) -> Result<(Checkpoint, Dataset)> {
    if args.explicit_config() {
        return Err(Error::Input("--from uses the checkpoint's own config; drop --preset, --config and --set".into()));
    }
    let ckpt = read_checkpoint(from)?;
    let recorded = if from.is_dir() { record::read_header(from).ok().and_then(|h| h.data_source) } else { None };
    let block_size = ckpt.config.model.block_size;
    let data = match &args.data {
        Some(given) => load_data(Some(given), block_size)?,
        None => recorded_data(from, recorded.as_deref(), block_size)?,
    };
    ckpt.check_vocabulary(&data)?;
    Ok((ckpt, data))
}

/// Refuses a command that would write one of `outputs` over a file it reads (`inputs`, by
/// the flag that names them): the input would be lost, or read back half-replaced.
fn refuse_overwriting_inputs(outputs: &[PathBuf], inputs: &[(&str, &Path)]) -> Result<()> {
    for (flag, input) in inputs {
        let input_at = resolved(input);
        if let Some(out) = outputs.iter().find(|o| resolved(o) == input_at) {
            return Err(Error::Input(format!(
                "{flag} {} is a file this command writes ({}); copy it elsewhere first, or choose another --out",
                input.display(),
                out.display()
            )));
        }
    }
    Ok(())
}

/// `path` with links and `..` resolved, also when the file does not exist yet, so that two
/// names of one file compare equal.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }), path.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).map_or_else(|_| path.to_path_buf(), |d| d.join(name)),
        _ => path.to_path_buf(),
    }
}

/// The most token ids `export --batches` writes per tensor (x and y): 256 MiB as i32.
const MAX_EXPORTED_IDS: u128 = 1 << 26;

fn command_line() -> String {
    std::env::args().skip(1).fold("simplegpt".to_string(), |acc, a| format!("{acc} {a}"))
}

/// A study's report, beside its runs' directories and its SVG plots.
const REPORT_FILE: &str = "report.md";

/// A run of a study being trained: its directory, trainer and progress bar.
struct LiveRun {
    index: usize,
    name: String,
    dir: RunDir,
    trainer: Trainer,
    records: Vec<StepRecord>,
    bar: ProgressBar,
}

/// Trains each (name, config) into `out/name` and returns each run's records (those it logged
/// to its metrics.jsonl, or read from there for a run reused). One run after another, or with `interleave` all at once, one
/// step of each in turn, so that their curves grow side by side: the report is then
/// rewritten at every evaluation, to be watched while the study trains.
fn run_study(
    args: &RunArgs,
    out: &Path,
    jobs: Vec<(String, Config)>,
    interleave: bool,
    overwrite: bool,
) -> Result<Vec<(String, Config, Vec<StepRecord>)>> {
    let mut outputs: Vec<PathBuf> = jobs.iter().flat_map(|(name, _)| RunDir::files(&out.join(name))).collect();
    outputs.push(out.join(REPORT_FILE));
    refuse_overwriting_inputs(&outputs, &args.input_files())?;
    let opened = device::open(&args.device)?;
    let _study_lock = DirLock::acquire(out)?;
    if !overwrite {
        refuse_replacing_runs(args, out, &jobs, &opened)?;
    }
    let total = jobs.len();
    let title = |done: usize| {
        if done == total {
            "Comparison".to_string()
        } else {
            format!("Comparison (in progress: {done} of {total} runs finished)")
        }
    };
    // The whole study's bar (steps of every run, with its ETA), and one bar per run trained.
    let bars = MultiProgress::new();
    let study = bars.add(ProgressBar::new(jobs.iter().map(|(_, c)| c.train.max_steps as u64).sum()));
    study.set_style(
        ProgressStyle::with_template("[study] {bar:30} {pos}/{len} steps [{elapsed} < {eta}]").expect("valid template"),
    );
    let mut finished: Vec<Option<(String, Config, Vec<StepRecord>)>> = vec![None; total];
    let mut jobs = jobs.into_iter().enumerate().peekable();
    while jobs.peek().is_some() {
        let mut live = Vec::new();
        while let Some((index, (name, config))) = jobs.next_if(|_| interleave || live.is_empty()) {
            let data = args.data(config.model.block_size)?;
            let dir = RunDir::create(&out.join(&name))?;
            let trainer = Trainer::new(config, data, &opened.device)?;
            let mut header = pollster::block_on(RunHeader::new(&trainer, &opened.backend, &opened.description))?;
            header.data_source = Some(args.data_source());
            // A study run again (after an interruption, or to redo its report) keeps the runs
            // that already finished with this very header: same config, data, weights, device.
            if let Ok(done) = record::read(&dir.path) {
                let max_steps = trainer.config.train.max_steps;
                let ended = done.steps.iter().any(|r| r.diverged.is_some())
                    || done.steps.last().is_some_and(|r| r.step >= max_steps);
                if done.header.same_run(&header) && ended {
                    bars.suspend(|| {
                        eprintln!("[{}/{total}] {name}: already finished in {}, reused", index + 1, dir.path.display())
                    });
                    study.inc(max_steps as u64);
                    finished[index] = Some((name, trainer.config.clone(), done.steps));
                    continue;
                }
            }
            dir.start(&trainer, &header)?;
            let bar = bars.add(ProgressBar::new(trainer.config.train.max_steps as u64));
            bar.set_style(
                ProgressStyle::with_template("[{prefix}] {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
                    .expect("valid template"),
            );
            bar.set_prefix(format!("{}/{total} {name}", index + 1));
            live.push(LiveRun { index, name, dir, trainer, records: Vec::new(), bar });
        }
        while !live.is_empty() {
            let mut evaluated = false;
            for run in &mut live {
                let before = updates_done(&run.trainer);
                let record = run.trainer.step_to_dir(&run.dir)?;
                study.inc((updates_done(&run.trainer) - before) as u64);
                let Some(record) = record else { continue };
                run.bar.set_position(record.step as u64);
                if let Some(loss) = record.loss {
                    run.bar.set_message(format!("loss {loss:.4}"));
                }
                evaluated |= record.val_loss.is_some();
                run.records.push(record);
            }
            // A run that has ended (or diverged) leaves the study here, with its line.
            let (ended, going): (Vec<LiveRun>, Vec<LiveRun>) = live.into_iter().partition(|r| r.trainer.finished());
            live = going;
            for run in ended {
                run.bar.finish_and_clear();
                // A diverged run ends early: the study bar counts its remaining steps as done.
                study.inc((run.trainer.config.train.max_steps - updates_done(&run.trainer)) as u64);
                let summary = study::Summary::of(&run.name, &run.trainer.config, &run.records);
                bars.suspend(|| {
                    eprintln!(
                        "[{}/{total}] {}: final loss {}{}",
                        run.index + 1,
                        run.name,
                        summary.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
                        summary.diverged_at.map_or(String::new(), |d| format!(", diverged at step {d}"))
                    )
                });
                finished[run.index] = Some((run.name, run.trainer.config, run.records));
            }
            if interleave && evaluated {
                let done = finished.iter().flatten().count();
                let sofar: Vec<_> = (0..total)
                    .filter_map(|i| {
                        finished[i].clone().or_else(|| {
                            live.iter()
                                .find(|r| r.index == i)
                                .map(|r| (r.name.clone(), r.trainer.config.clone(), r.records.clone()))
                        })
                    })
                    .collect();
                let (md, svgs) = study::comparison_report(&title(done), &command_line(), &sofar);
                write_report_files(out, &md, &svgs)?;
            }
        }
    }
    study.finish_and_clear();
    Ok(finished.into_iter().flatten().collect())
}

/// Refuses a study whose `out` already holds, under one of its runs' names, a different run
/// (another config, data or device): the study would replace it. Names every such run.
fn refuse_replacing_runs(args: &RunArgs, out: &Path, jobs: &[(String, Config)], opened: &device::Opened) -> Result<()> {
    let mut replaced = Vec::new();
    for (name, config) in jobs {
        let dir = out.join(name);
        if !dir.join(simplegpt::run::HEADER_FILE).exists() {
            continue;
        }
        let trainer = Trainer::new(config.clone(), args.data(config.model.block_size)?, &opened.device)?;
        let header = pollster::block_on(RunHeader::new(&trainer, &opened.backend, &opened.description))?;
        if !record::read_header(&dir).is_ok_and(|h| h.same_run(&header)) {
            replaced.push(dir.display().to_string());
        }
    }
    if replaced.is_empty() {
        return Ok(());
    }
    Err(Error::Input(format!(
        "{} already holds other runs under these names, which this study would replace: {}; choose another --out, \
         or pass --overwrite to replace them",
        out.display(),
        replaced.join(", ")
    )))
}

/// The optimizer updates a run has made (its last step, `max_steps`, only evaluates).
fn updates_done(trainer: &Trainer) -> usize {
    trainer.progress.step.min(trainer.config.train.max_steps)
}

/// Writes the SVG plots and report.md of a study into `out`.
fn write_report_files(out: &Path, md: &str, svgs: &[(String, String)]) -> Result<()> {
    for (name, svg) in svgs {
        simplegpt::checkpoint::write_atomic(&out.join(name), svg.as_bytes())?;
    }
    simplegpt::checkpoint::write_atomic(&out.join(REPORT_FILE), md.as_bytes())
}

fn write_report(out: &Path, md: &str, svgs: &[(String, String)]) -> Result<()> {
    write_report_files(out, md, svgs)?;
    println!("{md}");
    println!("report: {}", out.join(REPORT_FILE).display());
    Ok(())
}
