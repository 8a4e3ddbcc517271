//! `simplegpt repro`: two run records compared, or one config run on several backends here
//! and each compared with the first.

use std::path::PathBuf;

use clap::Args;
use simplegpt::record::{self, LossTable, RunRecord};
use simplegpt::train::Trainer;
use simplegpt::{Error, Result, device};

use crate::args::{RunOptions, count};

#[derive(Args)]
pub struct ReproArgs {
    /// Two run records: A (the reference) and B.
    records: Vec<PathBuf>,
    /// Run the config on each of these devices and compare them with the first.
    #[arg(long, value_delimiter = ',')]
    backends: Vec<String>,
    #[command(flatten)]
    options: RunOptions,
    /// Steps to train with --backends (default 50; sets max_steps, and every step is logged).
    #[arg(long, value_parser = count(1, 1_000_000))]
    steps: Option<usize>,
    /// The largest relative loss difference |a - b| / max(|a|, |b|) that still passes.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
}

pub fn run(args: ReproArgs) -> Result<()> {
    let ReproArgs { records, backends, options, steps, tolerance } = args;
    if !(tolerance >= 0.0 && tolerance.is_finite()) {
        return Err(Error::Input(format!("--tolerance must be a relative difference >= 0, got {tolerance}")));
    }
    let runs: Vec<(String, RunRecord)> = match (records.len(), backends.len()) {
        (2, 0) => {
            // Two records are compared as they are: options that shape a run would be ignored.
            if options.explicit_config() || options.data.is_some() || options.device != "auto" || steps.is_some() {
                return Err(Error::Input(
                    "repro RUN_A RUN_B compares two finished runs; --preset, --config, --set, --data and --steps \
                     are for repro --backends, and --device for neither"
                        .into(),
                ));
            }
            records.iter().map(|p| Ok((p.display().to_string(), record::read(p)?))).collect::<Result<_>>()?
        }
        (0, n) if n >= 2 => {
            let runs = run_on_each(&options, &backends, steps.unwrap_or(50))?;
            let records: Vec<RunRecord> = runs.iter().map(|(_, r)| r.clone()).collect();
            println!("{}", LossTable(&records));
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

/// The config trained `steps` steps on each backend (every step logged), on data loaded once.
fn run_on_each(options: &RunOptions, backends: &[String], steps: usize) -> Result<Vec<(String, RunRecord)>> {
    if options.device != "auto" {
        return Err(Error::Input("--backends names the devices to run on; drop --device".into()));
    }
    if let Some(bad) = backends.iter().find(|b| !device::NAMES.contains(&b.as_str())) {
        return Err(Error::Input(format!(
            "unknown device '{bad}' in --backends; choose from: {}",
            device::NAMES.join(", ")
        )));
    }
    let mut config = options.config()?;
    config.train.max_steps = steps;
    config.train.log_interval = 1;
    config.train.eval_interval = steps;
    config.train.checkpoint = false;
    let data = options.data(&config)?;
    let mut runs = Vec::new();
    for name in backends {
        let opened = device::open(name)?;
        eprintln!("running {steps} steps on {}", opened.adapter);
        let mut trainer = Trainer::new(config.clone(), data.clone(), &opened.device)?;
        let header = options.run_header(&trainer, &opened)?;
        let mut steps = Vec::new();
        while !trainer.finished() {
            steps.extend(pollster::block_on(trainer.step())?);
        }
        runs.push((opened.adapter.clone(), RunRecord { header, steps }));
    }
    Ok(runs)
}
