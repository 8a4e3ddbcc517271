//! `simplegpt compare` and `simplegpt sweep`: several runs trained into one directory, and
//! the report (`simplegpt::study`) of their records.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar};
use simplegpt::data::Dataset;
use simplegpt::record::StepRecord;
use simplegpt::run::{DirLock, RunDir, command_line};
use simplegpt::study::{self, Report, Summary, Variant};
use simplegpt::train::Trainer;
use simplegpt::{Config, Error, Result, device, record};

use crate::args::{MAX_SEEDS, RunOptions, count};
use crate::outputs::refuse_overwriting_inputs;
use crate::progress;

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    options: RunOptions,
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
}

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    options: RunOptions,
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
}

pub fn compare(args: CompareArgs) -> Result<()> {
    let CompareArgs { options, variants, seeds, interleave, out, overwrite } = args;
    let variants = Variant::parse_all(&variants)?;
    let base = options.config()?;
    let jobs = variants.iter().map(|v| Ok((v.name.clone(), v.apply(&base)?))).collect::<Result<Vec<_>>>()?;
    let study = Study { options: &options, out: &out, overwrite };
    let runs = study.train(study::with_seeds(jobs, seeds)?, interleave)?;
    print(&out, &study::report::comparison_report("Comparison", &command_line(), &runs))
}

pub fn sweep(args: SweepArgs) -> Result<()> {
    let SweepArgs { options, variants, lr_min, lr_max, points, near, seeds, out, overwrite } = args;
    if !(near >= 0.0) {
        return Err(Error::Input(format!("--near must be a number of nats >= 0, got {near}")));
    }
    let variants = if variants.is_empty() {
        vec!["pre_ln:norm=pre_ln".to_string(), "simple:norm=simple".to_string()]
    } else {
        variants
    };
    let variants = Variant::parse_all(&variants)?;
    let base = options.config()?;
    let toml = options.config_text()?;
    study::variants::refuse_swept_keys(toml.as_ref().map(|(t, _)| t.as_str()), &options.set, &variants)?;
    let jobs = study::sweep_jobs(&variants, &base, lr_min, lr_max, points)?;
    let study = Study { options: &options, out: &out, overwrite };
    let runs = study.train(study::with_seeds(jobs, seeds)?, false)?;
    let unigram = options.data(&base)?.unigram_loss();
    print(&out, &study::report::sweep_report(&command_line(), &runs, near, unigram))
}

/// Writes a study's report into `out` and prints it.
fn print(out: &Path, report: &Report) -> Result<()> {
    report.write(out)?;
    println!("{}", report.markdown);
    println!("report: {}", out.join(Report::FILE).display());
    Ok(())
}

/// A study being trained into `out`.
struct Study<'a> {
    options: &'a RunOptions,
    out: &'a Path,
    /// Replace runs of another study under the same names.
    overwrite: bool,
}

/// A run of a study being trained: its directory, trainer and progress bar.
struct LiveRun {
    index: usize,
    name: String,
    dir: RunDir,
    trainer: Trainer,
    records: Vec<StepRecord>,
    bar: ProgressBar,
}

impl Study<'_> {
    /// Trains each (name, config) into `out/name` and returns each run's records (those it
    /// logged to its metrics.jsonl, or read from there for a run reused). One run after
    /// another, or with `interleave` all at once, one step of each in turn, so that their
    /// curves grow side by side: the report is then rewritten at every evaluation, to be
    /// watched while the study trains.
    fn train(&self, jobs: Vec<(String, Config)>, interleave: bool) -> Result<Vec<(String, Config, Vec<StepRecord>)>> {
        let out = self.out;
        let mut outputs: Vec<PathBuf> = jobs.iter().flat_map(|(name, _)| RunDir::files(&out.join(name))).collect();
        outputs.extend([Report::FILE, Report::SUMMARY_FILE].map(|f| out.join(f)));
        refuse_overwriting_inputs(&outputs, &self.options.input_files())?;
        let opened = device::open(&self.options.device)?;
        // Every run trains on the same text: read and tokenised once (by the config's
        // tokenizer; a variant of another tokenizer is refused when its trainer is built).
        let data = self.options.data(&self.options.config()?)?;
        let _study_lock = DirLock::acquire(out)?;
        if !self.overwrite {
            self.refuse_replacing_runs(&jobs, &data, &opened)?;
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
        let study = bars.add(progress::bar(jobs.iter().map(|(_, c)| c.train.max_steps as u64).sum(), "study"));
        study.set_message("steps");
        let mut finished: Vec<Option<(String, Config, Vec<StepRecord>)>> = vec![None; total];
        let mut jobs = jobs.into_iter().enumerate().peekable();
        while jobs.peek().is_some() {
            let mut live = Vec::new();
            while let Some((index, (name, config))) = jobs.next_if(|_| interleave || live.is_empty()) {
                let dir = RunDir::create(&out.join(&name))?;
                let trainer = Trainer::new(config, data.clone(), &opened.device)?;
                let header = self.options.run_header(&trainer, &opened)?;
                let max_steps = trainer.config.train.max_steps;
                if let Some(records) = dir.ended_run(&header, max_steps) {
                    bars.suspend(|| {
                        eprintln!("[{}/{total}] {name}: already finished in {}, reused", index + 1, dir.path.display())
                    });
                    study.inc(max_steps as u64);
                    finished[index] = Some((name, trainer.config, records));
                    continue;
                }
                dir.start(&trainer, &header)?;
                let bar = bars.add(progress::bar(max_steps as u64, &format!("{}/{total} {name}", index + 1)));
                live.push(LiveRun { index, name, dir, trainer, records: Vec::new(), bar });
            }
            while !live.is_empty() {
                let mut evaluated = false;
                for run in &mut live {
                    let before = updates_done(&run.trainer);
                    let record = run.dir.step(&mut run.trainer)?;
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
                    let summary = Summary::of(&run.name, &run.trainer.config, &run.records);
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
                    study::report::comparison_report(&title(done), &command_line(), &sofar).write(out)?;
                }
            }
        }
        study.finish_and_clear();
        Ok(finished.into_iter().flatten().collect())
    }

    /// Refuses a study whose `out` already holds, under one of its runs' names, a different
    /// run (another config, data or device): the study would replace it. Names every such run.
    fn refuse_replacing_runs(&self, jobs: &[(String, Config)], data: &Dataset, opened: &device::Opened) -> Result<()> {
        let mut replaced = Vec::new();
        for (name, config) in jobs {
            let dir = self.out.join(name);
            if !dir.join(record::HEADER_FILE).exists() {
                continue;
            }
            let trainer = Trainer::new(config.clone(), data.clone(), &opened.device)?;
            let header = self.options.run_header(&trainer, opened)?;
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
            self.out.display(),
            replaced.join(", ")
        )))
    }
}

/// The optimizer updates a run has made (its last step, `max_steps`, only evaluates).
fn updates_done(trainer: &Trainer) -> usize {
    trainer.progress.step.min(trainer.config.train.max_steps)
}
