//! Studies: several runs that differ in a few config keys (`compare`) or in the learning
//! rate (`sweep`), summarised as a markdown report with SVG plots. The summaries are computed
//! from the runs' own records, so the report says exactly what the run directories hold.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::train::StepRecord;

/// One variant of a study: a name and its `key=value` overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub sets: Vec<String>,
}

impl Variant {
    /// `name:key=v,key=v` or `key=v,key=v`. Without a name, each assignment names itself by
    /// its value when that is a word (`norm=simple`: `simple`), else by key and value
    /// (`residual=false`: `residual-false`, `lr=3e-3`: `lr-3e-3`), joined by `-`.
    pub fn parse(spec: &str) -> Result<Variant> {
        let (name, body) = match spec.split_once(':') {
            Some((n, b)) if !n.contains('=') => (Some(n.trim().to_string()), b),
            _ => (None, spec),
        };
        let sets: Vec<String> = body.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if sets.is_empty() || sets.iter().any(|s| !s.contains('=')) {
            return Err(Error::Input(format!(
                "variant '{spec}': expected key=value[,key=value...], optionally after 'name:', e.g. --variant simple:norm=simple"
            )));
        }
        let word = |v: &str| v.parse::<f64>().is_err() && v != "true" && v != "false";
        let name = name.unwrap_or_else(|| {
            let part = |s: &String| {
                let (key, value) = s.split_once('=').expect("checked above");
                let key = key.trim().trim_start_matches("model.").trim_start_matches("train.");
                if word(value.trim()) { value.trim().to_string() } else { format!("{key}-{}", value.trim()) }
            };
            sets.iter().map(part).collect::<Vec<_>>().join("-")
        });
        let safe = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        // The name is a directory beside the report's own files.
        if name.is_empty()
            || !name.chars().all(safe)
            || name.starts_with('.')
            || name.ends_with(".md")
            || name.ends_with(".svg")
        {
            return Err(Error::Input(format!(
                "variant name '{name}' must be letters, digits, '-', '_' or '.', not start with '.' nor end in .md or .svg (it names a directory)"
            )));
        }
        Ok(Variant { name, sets })
    }

    /// Several variants; their names must differ, as each names a run directory.
    pub fn parse_all(specs: &[String]) -> Result<Vec<Variant>> {
        let variants = specs.iter().map(|s| Variant::parse(s)).collect::<Result<Vec<_>>>()?;
        for (i, v) in variants.iter().enumerate() {
            if variants[..i].iter().any(|w| w.name == v.name) {
                return Err(Error::Input(format!(
                    "two variants are named '{}'; give each its own name (NAME:key=value)",
                    v.name
                )));
            }
        }
        Ok(variants)
    }

    pub fn apply(&self, base: &Config) -> Result<Config> {
        let mut c = base.clone();
        let in_variant = |e: Error| Error::Input(format!("variant '{}': {e}", self.name));
        for s in &self.sets {
            c.set(s).map_err(in_variant)?;
        }
        c.validate().map_err(in_variant)?;
        Ok(c)
    }
}

/// What a report says about one run, read off its records; or about several runs that
/// differ only in their seed (`Summary::over_seeds`), as means with their spread.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub name: String,
    pub params: usize,
    pub lr: f64,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub best_loss: Option<f64>,
    pub final_val: Option<f64>,
    pub best_val: Option<f64>,
    pub diverged_at: Option<usize>,
    pub tokens_per_sec: Option<f64>,
    /// How many runs this summarises (1: a single run) and how many of them diverged.
    pub runs: usize,
    pub diverged_runs: usize,
    /// Sample standard deviations across seeds (None for a single run).
    pub best_val_sd: Option<f64>,
    pub final_val_sd: Option<f64>,
}

impl Summary {
    pub fn of(name: &str, config: &Config, records: &[StepRecord]) -> Summary {
        let losses: Vec<f64> = records.iter().filter_map(|r| r.loss).collect();
        let vals: Vec<f64> = records.iter().filter_map(|r| r.val_loss).collect();
        let finite_min = |v: &[f64]| v.iter().copied().filter(|x| x.is_finite()).reduce(f64::min);
        let tps: Vec<f64> = records.iter().filter_map(|r| r.tokens_per_sec).collect();
        Summary {
            name: name.to_string(),
            params: config.model.num_params(),
            lr: config.train.lr,
            first_loss: losses.first().copied(),
            final_loss: losses.last().copied(),
            best_loss: finite_min(&losses),
            final_val: vals.last().copied(),
            best_val: finite_min(&vals),
            diverged_at: records.iter().find(|r| r.diverged.is_some()).map(|r| r.step),
            tokens_per_sec: mean(&tps),
            runs: 1,
            diverged_runs: records.iter().any(|r| r.diverged.is_some()) as usize,
            best_val_sd: None,
            final_val_sd: None,
        }
    }

    /// Runs of one config that differ only in their seed. The losses are means over the
    /// runs that did not diverge (a diverged run's losses are not comparable); the divergence
    /// step is the earliest, so a learning rate counts as unstable if any seed diverged.
    pub fn over_seeds(name: &str, runs: &[Summary]) -> Summary {
        let kept: Vec<&Summary> = runs.iter().filter(|s| s.diverged_at.is_none()).collect();
        let field = |f: fn(&Summary) -> Option<f64>| kept.iter().filter_map(|s| f(s)).collect::<Vec<f64>>();
        let (best_val, final_val) = (field(|s| s.best_val), field(|s| s.final_val));
        Summary {
            name: name.to_string(),
            params: runs.first().map_or(0, |s| s.params),
            lr: runs.first().map_or(f64::NAN, |s| s.lr),
            first_loss: mean(&field(|s| s.first_loss)),
            final_loss: mean(&field(|s| s.final_loss)),
            best_loss: mean(&field(|s| s.best_loss)),
            final_val: mean(&final_val),
            best_val: mean(&best_val),
            diverged_at: runs.iter().filter_map(|s| s.diverged_at).min(),
            tokens_per_sec: mean(&runs.iter().filter_map(|s| s.tokens_per_sec).collect::<Vec<_>>()),
            runs: runs.len(),
            diverged_runs: runs.iter().filter(|s| s.diverged_at.is_some()).count(),
            best_val_sd: sample_sd(&best_val),
            final_val_sd: sample_sd(&final_val),
        }
    }

    /// What a sweep ranks runs by: the final validation loss (a mean over `eval_iters`
    /// batches), or without an evaluation the final training batch's loss.
    pub fn end_loss(&self) -> Option<f64> {
        self.final_val.or(self.final_loss)
    }

    /// Trained: did not diverge, and ended below where it started (over seeds: none
    /// diverged, and the mean final loss is below the mean first).
    pub fn stable(&self) -> bool {
        self.diverged_at.is_none() && matches!((self.first_loss, self.final_loss), (Some(a), Some(b)) if b < a)
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The sample standard deviation (n - 1 in the denominator); None below two values.
fn sample_sd(v: &[f64]) -> Option<f64> {
    let m = mean(v)?;
    (v.len() >= 2).then(|| (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

/// The markdown table of a comparison.
fn comparison_table(summaries: &[Summary]) -> String {
    let mut s = String::from(
        "| variant | params | final loss | best loss | final val | best val | diverged at | tokens/s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in summaries {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            m.name,
            m.params,
            fmt(m.final_loss),
            fmt(m.best_loss),
            fmt(m.final_val),
            fmt(m.best_val),
            m.diverged_at.map_or("–".into(), |d| d.to_string()),
            m.tokens_per_sec.map_or("–".into(), |t| format!("{t:.0}")),
        );
    }
    s
}

/// What a learning-rate sweep says about one variant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LrStability {
    /// Largest LR that trained at all: no divergence, final loss below the first.
    pub largest_trained: Option<f64>,
    /// Largest LR whose `end_loss` is within `near` of the variant's best: the
    /// top of the range where it still trains about as well as it can. A run that stalls
    /// near the character-frequency loss without diverging counts for the first, not this.
    pub largest_near_best: Option<f64>,
    /// The LR with the lowest `end_loss`, and that loss.
    pub best: Option<(f64, f64)>,
}

/// Per variant (by name): its `LrStability`, with `near` in nats.
fn lr_stability(runs: &[(String, Summary)], near: f64) -> BTreeMap<String, LrStability> {
    let mut out: BTreeMap<String, LrStability> = BTreeMap::new();
    let trained = |s: &Summary| if s.stable() { s.end_loss().map(|l| (s.lr, l)) } else { None };
    for (variant, s) in runs {
        let entry = out.entry(variant.clone()).or_default();
        if let Some((lr, loss)) = trained(s) {
            entry.largest_trained = Some(entry.largest_trained.map_or(lr, |b| b.max(lr)));
            if entry.best.is_none_or(|(_, b)| loss < b) {
                entry.best = Some((lr, loss));
            }
        }
    }
    for (variant, s) in runs {
        let entry = out.get_mut(variant).expect("every variant has an entry");
        if let (Some((lr, loss)), Some((_, best))) = (trained(s), entry.best) {
            if loss <= best + near {
                entry.largest_near_best = Some(entry.largest_near_best.map_or(lr, |b| b.max(lr)));
            }
        }
    }
    out
}

/// Each job once per seed, seeds counting up from the config's own: named `name/seed-S`.
/// With one seed, the jobs as they are.
pub fn with_seeds(jobs: Vec<(String, Config)>, seeds: usize) -> Result<Vec<(String, Config)>> {
    if seeds == 0 {
        return Err(Error::Input("--seeds must be at least 1".into()));
    }
    if seeds == 1 {
        return Ok(jobs);
    }
    let mut out = Vec::new();
    for (name, config) in jobs {
        for i in 0..seeds as u64 {
            let mut c = config.clone();
            c.train.seed =
                config.train.seed.checked_add(i).ok_or_else(|| Error::Input("seed + --seeds overflows".into()))?;
            out.push((format!("{name}/seed-{}", c.train.seed), c));
        }
    }
    Ok(out)
}

/// `n` learning rates log-spaced from `lo` to `hi` inclusive.
pub fn log_grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![lo];
    }
    (0..n).map(|i| lo * (hi / lo).powf(i as f64 / (n - 1) as f64)).collect()
}

const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

/// A line plot as a standalone SVG. Non-finite points break a line; `log_x`/`log_y` plot
/// log10 of the values.
pub fn svg_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
    log_y: bool,
) -> String {
    let (w, h, l, r, t, b) = (720.0, 420.0, 70.0, 180.0, 36.0, 48.0);
    let tx = |x: f64| if log_x { x.log10() } else { x };
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, y)| (tx(x), ty(y))))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        w / 2.0,
        escape(title)
    );
    if pts.is_empty() {
        svg.push_str("<text x=\"50%\" y=\"50%\" text-anchor=\"middle\">no finite data</text>\n</svg>\n");
        return svg;
    }
    let (mut x0, mut x1, mut y0, mut y1) =
        pts.iter().fold((f64::MAX, f64::MIN, f64::MAX, f64::MIN), |(a, b, c, d), &(x, y)| {
            (a.min(x), b.max(x), c.min(y), d.max(y))
        });
    if x1 - x0 < 1e-12 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| t + (1.0 - (y - y0) / (y1 - y0)) * (h - t - b);
    let _ = writeln!(svg, "<path d=\"M{l} {t} V{} H{}\" stroke=\"#888\" fill=\"none\"/>", h - b, w - r);
    for i in 0..=4 {
        let (fx, fy) = (x0 + (x1 - x0) * i as f64 / 4.0, y0 + (y1 - y0) * i as f64 / 4.0);
        let label = |v: f64, log: bool, span: f64| match (log, span >= 10.0) {
            (true, _) => format!("{:.0e}", 10f64.powf(v)),
            (false, true) => format!("{v:.0}"),
            (false, false) => format!("{v:.3}"),
        };
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(fx),
            h - b + 16.0,
            label(fx, log_x, x1 - x0)
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            l - 6.0,
            py(fy) + 4.0,
            label(fy, log_y, y1 - y0)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        l + (w - l - r) / 2.0,
        h - 8.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>",
        h / 2.0,
        h / 2.0,
        escape(y_label)
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut d = String::new();
        let mut pen_down = false;
        for &(x, y) in points {
            let (x, y) = (tx(x), ty(y));
            if !(x.is_finite() && y.is_finite()) {
                pen_down = false;
                continue;
            }
            let _ = write!(d, "{}{:.1} {:.1} ", if pen_down { "L" } else { "M" }, px(x), py(y));
            pen_down = true;
        }
        let _ = writeln!(svg, "<path d=\"{d}\" stroke=\"{color}\" stroke-width=\"1.5\" fill=\"none\"/>");
        for &(x, y) in points
            .iter()
            .filter(|(x, y)| tx(*x).is_finite() && ty(*y).is_finite())
            .take(if points.len() <= 12 { 12 } else { 0 })
        {
            let _ =
                writeln!(svg, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>", px(tx(x)), py(ty(y)));
        }
        let ly = t + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"3\" fill=\"{color}\"/>",
            w - r + 12.0,
            ly - 4.0
        );
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{ly}\">{}</text>", w - r + 30.0, escape(name));
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Run names `variant/seed-S` (or `variant/lr-X/seed-S`) belong to `variant`; a name
/// without a '/' is a variant of its own.
pub fn variant_of(run: &str) -> &str {
    run.split('/').next().unwrap_or(run)
}

/// Indices of the runs of each variant, variants in order of first appearance.
fn group_by_variant<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, name) in names.enumerate() {
        match groups.iter_mut().find(|(v, _)| v == variant_of(name)) {
            Some((_, runs)) => runs.push(i),
            None => groups.push((variant_of(name).to_string(), vec![i])),
        }
    }
    groups
}

/// The mean over several runs of one metric, at the steps where every run has it (so a
/// curve ends where its first seed diverged).
fn mean_curve(runs: &[&[StepRecord]], pick: fn(&StepRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    let per_run: Vec<BTreeMap<usize, f64>> =
        runs.iter().map(|r| r.iter().filter_map(|x| pick(x).map(|v| (x.step, v))).collect()).collect();
    let Some(first) = per_run.first() else { return Vec::new() };
    first
        .keys()
        .filter_map(|step| {
            let values: Vec<f64> = per_run.iter().filter_map(|m| m.get(step).copied()).collect();
            if values.len() == per_run.len() { mean(&values).map(|m| (*step as f64, m)) } else { None }
        })
        .collect()
}

fn mean_sd(mean: Option<f64>, sd: Option<f64>) -> String {
    match (mean, sd) {
        (Some(m), Some(sd)) => format!("{m:.4} ± {sd:.4}"),
        (m, _) => fmt(m),
    }
}

/// A comparison's report: markdown and the SVG files it links, from each run's records.
/// Runs named `variant/seed-S` are several seeds of one variant: the report then adds
/// their means and spread, and plots the mean curves.
pub fn comparison_report(
    title: &str,
    command: &str,
    runs: &[(String, Config, Vec<StepRecord>)],
) -> (String, Vec<(String, String)>) {
    let summaries: Vec<Summary> = runs.iter().map(|(n, c, r)| Summary::of(n, c, r)).collect();
    let groups = group_by_variant(runs.iter().map(|(n, _, _)| n.as_str()));
    let seeds = groups.iter().map(|(_, runs)| runs.len()).max().unwrap_or(1);
    let curve = |pick: fn(&StepRecord) -> Option<f64>| -> Vec<(String, Vec<(f64, f64)>)> {
        groups
            .iter()
            .map(|(v, idx)| {
                (v.clone(), mean_curve(&idx.iter().map(|&i| runs[i].2.as_slice()).collect::<Vec<_>>(), pick))
            })
            .collect()
    };
    let over = if seeds > 1 { format!(" (mean over {seeds} seeds)") } else { String::new() };
    let mut svgs = vec![
        (
            "loss.svg".to_string(),
            svg_plot(&format!("training loss{over}"), "step", "loss", &curve(|r| r.loss), false, false),
        ),
        (
            "val_loss.svg".to_string(),
            svg_plot(&format!("validation loss{over}"), "step", "loss", &curve(|r| r.val_loss), false, false),
        ),
    ];
    let mut md = format!("# {title}\n\nCommand: `{command}`\n\n{}\n", comparison_table(&summaries));
    if seeds > 1 {
        md.push_str("Across seeds: the mean ± the sample standard deviation over the runs that did not diverge.\n\n| variant | seeds | best val | final val | diverged |\n|---|---:|---:|---:|---:|\n");
        for (v, idx) in &groups {
            let s = Summary::over_seeds(v, &idx.iter().map(|&i| summaries[i].clone()).collect::<Vec<_>>());
            let _ = writeln!(
                md,
                "| {v} | {} | {} | {} | {} of {} |",
                s.runs,
                mean_sd(s.best_val, s.best_val_sd),
                mean_sd(s.final_val, s.final_val_sd),
                s.diverged_runs,
                s.runs
            );
        }
        md.push('\n');
    }
    md.push_str("![training loss](loss.svg)\n\n![validation loss](val_loss.svg)\n\n");
    for (name, _, records) in runs {
        let file = name.replace('/', "-");
        let (g, a) = (format!("grad_norms-{file}.svg"), format!("act_rms-{file}.svg"));
        svgs.push((
            g.clone(),
            svg_plot(
                &format!("{name}: gradient norm per parameter group"),
                "step",
                "norm",
                &grouped_grad_norms(records),
                false,
                true,
            ),
        ));
        svgs.push((
            a.clone(),
            svg_plot(&format!("{name}: activation RMS per block"), "step", "RMS", &block_rms(records), false, true),
        ));
        let _ =
            write!(md, "## {name}\n\n![gradient norms]({g})\n\n![activation RMS]({a})\n\nRun directory: `{name}/`\n\n");
    }
    (md, svgs)
}

/// An LR sweep's report: a table of final losses, the loss-vs-LR plot, each variant's
/// `LrStability` (`near` in nats) and, when both are present, SimpleNorm's over pre-LN's.
/// `unigram` (the data's `Dataset::unigram_loss`) is quoted as the level a run that learns
/// no context stalls at.
pub fn sweep_report(
    command: &str,
    runs: &[(String, Config, Vec<StepRecord>)],
    near: f64,
    unigram: f64,
) -> (String, Vec<(String, String)>) {
    let per_run: Vec<(String, Summary)> = runs.iter().map(|(v, c, r)| (v.clone(), Summary::of(v, c, r))).collect();
    // Several seeds of one variant at one LR are summarised together.
    let mut summaries: Vec<(String, Summary)> = Vec::new();
    for (v, s) in &per_run {
        if summaries.iter().any(|(n, x)| n == v && x.lr == s.lr) {
            continue;
        }
        let seeds: Vec<Summary> =
            per_run.iter().filter(|(n, x)| n == v && x.lr == s.lr).map(|(_, x)| x.clone()).collect();
        summaries.push((v.clone(), if seeds.len() == 1 { seeds[0].clone() } else { Summary::over_seeds(v, &seeds) }));
    }
    let seeds = summaries.iter().map(|(_, s)| s.runs).max().unwrap_or(1);
    let mut variants: Vec<String> = Vec::new();
    for (v, _) in &summaries {
        if !variants.contains(v) {
            variants.push(v.clone());
        }
    }
    let mut lrs: Vec<f64> = summaries.iter().map(|(_, s)| s.lr).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    let mut md = format!(
        "# Learning-rate sweep\n\nCommand: `{command}`\n\nFinal validation loss at each learning rate (the final training batch's loss where a run has no evaluation; `diverged@N`: divergence detected at step N; `*`: did not train, final training loss not below the first). For scale: a model that knows only how often each character occurs has a validation loss of {unigram:.4} on this data, so a run that ends near it has learned the alphabet, not the text."
    );
    if seeds > 1 {
        let _ = write!(
            md,
            " Each cell is the mean over {seeds} seeds ± their sample standard deviation; a learning rate counts as diverged if any seed diverged there."
        );
    }
    md.push_str("\n\n| variant |");
    for lr in &lrs {
        let _ = write!(md, " {lr:.1e} |");
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(lrs.len()));
    md.push('\n');
    for v in &variants {
        let _ = write!(md, "| {v} |");
        for lr in &lrs {
            let cell = summaries.iter().find(|(n, s)| n == v && s.lr == *lr).map_or("–".to_string(), |(_, s)| match s
                .diverged_at
            {
                Some(d) if s.runs > 1 => format!("diverged@{d} ({} of {} seeds)", s.diverged_runs, s.runs),
                Some(d) => format!("diverged@{d}"),
                None => format!("{}{}", mean_sd(s.end_loss(), s.final_val_sd), if s.stable() { "" } else { "*" }),
            });
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    let stability = lr_stability(&summaries, near);
    let _ = write!(
        md,
        "\n| variant | largest LR that trained | largest LR within {near} of its best | best LR | its final val loss |\n|---|---:|---:|---:|---:|\n"
    );
    let lr = |v: Option<f64>| v.map_or("none".to_string(), |lr| format!("{lr:.1e}"));
    for v in &variants {
        let s = &stability[v];
        let (best_lr, best_loss) =
            s.best.map_or(("none".into(), "–".into()), |(l, loss)| (format!("{l:.1e}"), format!("{loss:.4}")));
        let _ =
            writeln!(md, "| {v} | {} | {} | {best_lr} | {best_loss} |", lr(s.largest_trained), lr(s.largest_near_best));
    }
    let _ = write!(
        md,
        "\n\"Trained\": did not diverge and its training loss ended below its first{}. \"Within {near}\": its final validation loss is at most {near} nats above the variant's best in this sweep.\n",
        if seeds > 1 {
            " (over seeds: no seed diverged, and the mean final training loss is below the mean first)"
        } else {
            ""
        }
    );
    let norm_of = |v: &String| runs.iter().find(|(n, _, _)| n == v).map(|(_, c, _)| c.model.norm);
    let find = |norm| variants.iter().find(|v| norm_of(v) == Some(norm)).map(|v| &stability[v]);
    if let (Some(simple), Some(pre)) = (find(crate::config::NormKind::Simple), find(crate::config::NormKind::PreLn)) {
        // Two significant digits below 1 too: a ratio of 0.018 is not "0.0x".
        let ratio = |a: Option<f64>, b: Option<f64>| {
            a.zip(b).map_or("n/a".to_string(), |(a, b)| {
                let r = a / b;
                let decimals = if r >= 1.0 { 1 } else { (1.0 - r.log10().floor()) as usize };
                format!("{r:.decimals$}x")
            })
        };
        let _ = writeln!(
            md,
            "\nSimpleNorm / pre-LN (the paper claims 3-10x): largest LR that trained **{}**, largest LR within {near} of its best **{}**.",
            ratio(simple.largest_trained, pre.largest_trained),
            ratio(simple.largest_near_best, pre.largest_near_best)
        );
    }
    md.push_str("\n![final validation loss vs learning rate](final_loss_vs_lr.svg)\n");
    let series: Vec<(String, Vec<(f64, f64)>)> = variants
        .iter()
        .map(|v| {
            let pts = summaries
                .iter()
                .filter(|(n, _)| n == v)
                .map(|(_, s)| (s.lr, if s.diverged_at.is_some() { f64::NAN } else { s.end_loss().unwrap_or(f64::NAN) }))
                .collect();
            (v.clone(), pts)
        })
        .collect();
    (
        md,
        vec![(
            "final_loss_vs_lr.svg".into(),
            svg_plot(
                "final validation loss vs learning rate (gaps: diverged)",
                "learning rate",
                "final val loss",
                &series,
                true,
                false,
            ),
        )],
    )
}

/// The parameter group of a parameter path, for grouped gradient norms.
pub fn param_group(path: &str) -> &'static str {
    if path.contains(".attn.") {
        if path.contains("_norm") { "attention norms" } else { "attention" }
    } else if path.contains(".mlp.") {
        if path.contains("_norm") { "mlp norms" } else { "mlp" }
    } else if path.starts_with("wte") || path.starts_with("wpe") || path.starts_with("lm_head") {
        "embeddings and head"
    } else {
        "block and final norms"
    }
}

/// Gradient norm per parameter group (the root of the summed squares) at each diagnostic step.
fn grouped_grad_norms(records: &[StepRecord]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut groups: BTreeMap<&'static str, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        let Some(norms) = &r.grad_norms else { continue };
        let mut sums: BTreeMap<&'static str, f64> = BTreeMap::new();
        for (path, n) in norms {
            *sums.entry(param_group(path)).or_default() += n * n;
        }
        for (g, s) in sums {
            groups.entry(g).or_default().push((r.step as f64, s.sqrt()));
        }
    }
    groups.into_iter().map(|(g, p)| (g.to_string(), p)).collect()
}

/// Activation RMS of each block at each diagnostic step.
fn block_rms(records: &[StepRecord]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut blocks: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        for (i, v) in r.act_rms.iter().flatten().enumerate() {
            blocks.entry(i).or_default().push((r.step as f64, *v));
        }
    }
    blocks.into_iter().map(|(i, p)| (format!("block {i}"), p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_with_and_without_names() {
        let v = Variant::parse("simple:norm=simple,lr=3e-3").unwrap();
        assert_eq!((v.name.as_str(), v.sets.len()), ("simple", 2));
        assert_eq!(Variant::parse("norm=post_ln,residual=false").unwrap().name, "post_ln-residual-false");
        assert_eq!(Variant::parse("train.lr=3e-3,mlp=swiglu").unwrap().name, "lr-3e-3-swiglu");
        assert!(Variant::parse("simple").is_err());
        assert!(Variant::parse("a/b:norm=simple").is_err());
        for name in [".", "..", "report.md", "loss.svg"] {
            assert!(Variant::parse(&format!("{name}:norm=simple")).is_err(), "{name}");
        }
    }

    #[test]
    fn grid_is_log_spaced_and_stability_needs_training() {
        let g = log_grid(1e-4, 1e-1, 4);
        assert!((g[1] - 1e-3).abs() < 1e-12 && (g[3] - 1e-1).abs() < 1e-12);
        let rec = |step, loss: f64| StepRecord { step, loss: Some(loss), ..Default::default() };
        let c = Config::preset("tiny").unwrap();
        let trained = Summary::of("a", &c, &[rec(0, 4.0), rec(1, 3.0)]);
        let stuck = Summary::of("a", &c, &[rec(0, 4.0), rec(1, 4.5)]);
        assert!(trained.stable() && !stuck.stable());
        // A sweep: 1e-3 trains, 1e-2 trains best, 1e-1 stalls high without diverging, 1 stalls.
        let run = |lr: f64, last: f64| {
            let mut s = Summary::of("a", &c, &[rec(0, 4.0), rec(1, last)]);
            s.lr = lr;
            ("a".to_string(), s)
        };
        let s = &lr_stability(&[run(1e-3, 2.05), run(1e-2, 2.0), run(1e-1, 3.3), run(1.0, 4.5)], 0.1)["a"];
        assert_eq!(s.largest_trained, Some(1e-1));
        assert_eq!(s.largest_near_best, Some(1e-2));
        assert_eq!(s.best, Some((1e-2, 2.0)));
    }

    #[test]
    fn seeds_are_summarised_by_their_mean_and_spread() {
        let c = Config::preset("tiny").unwrap();
        let rec =
            |step, loss: f64| StepRecord { step, loss: Some(loss), val_loss: Some(loss + 0.1), ..Default::default() };
        let a = Summary::of("a/seed-1", &c, &[rec(0, 4.0), rec(10, 2.0)]);
        let b = Summary::of("a/seed-2", &c, &[rec(0, 4.0), rec(10, 2.2)]);
        let diverged = Summary::of(
            "a/seed-3",
            &c,
            &[
                rec(0, 4.0),
                StepRecord { step: 5, loss: Some(f64::NAN), diverged: Some("NaN".into()), ..Default::default() },
            ],
        );
        let s = Summary::over_seeds("a", &[a.clone(), b.clone()]);
        assert!((s.best_val.unwrap() - 2.2).abs() < 1e-12 && (s.final_loss.unwrap() - 2.1).abs() < 1e-12);
        assert!((s.best_val_sd.unwrap() - 0.02f64.sqrt()).abs() < 1e-12, "sample sd of 2.1 and 2.3");
        assert!(s.stable() && s.diverged_at.is_none() && s.runs == 2);
        // A diverged seed makes the group diverged but does not enter the means.
        let s = Summary::over_seeds("a", &[a, b, diverged]);
        assert_eq!((s.diverged_at, s.diverged_runs, s.runs), (Some(5), 1, 3));
        assert!((s.best_val.unwrap() - 2.2).abs() < 1e-12 && !s.stable());
    }

    #[test]
    fn seeded_jobs_and_their_report() {
        let c = Config::preset("tiny").unwrap();
        let jobs = with_seeds(vec![("x".into(), c.clone()), ("y".into(), c.clone())], 2).unwrap();
        let names: Vec<&str> = jobs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x/seed-1337", "x/seed-1338", "y/seed-1337", "y/seed-1338"]);
        assert_eq!(jobs[1].1.train.seed, 1338);
        assert!(with_seeds(jobs.clone(), 0).is_err());
        assert!(Variant::parse_all(&["a:norm=simple".into(), "a:norm=pre_ln".into()]).is_err());
        // x's seeds end at val 2.1 and 2.3, y's both at 3.1; one val point each at step 10.
        let rec = |step, loss: f64| StepRecord {
            step,
            loss: Some(loss),
            val_loss: (step == 10).then_some(loss + 0.1),
            ..Default::default()
        };
        let runs: Vec<_> = jobs
            .iter()
            .zip([2.0, 2.2, 3.0, 3.0])
            .map(|((n, c), end)| (n.clone(), c.clone(), vec![rec(0, 4.0), rec(10, end)]))
            .collect();
        let (md, svgs) = comparison_report("t", "cmd", &runs);
        assert!(md.contains("| x | 2 | 2.2000 ± 0.1414 | 2.2000 ± 0.1414 | 0 of 2 |"), "{md}");
        assert!(md.contains("| y | 2 | 3.1000 ± 0.0000 |"), "{md}");
        assert!(svgs.iter().any(|(f, _)| f == "grad_norms-x-seed-1338.svg"), "no '/' in file names");
        assert_eq!(
            mean_curve(&[runs[0].2.as_slice(), runs[1].2.as_slice()], |r| r.loss),
            vec![(0.0, 4.0), (10.0, 2.1)]
        );
    }

    #[test]
    fn a_sweep_with_seeds_averages_each_learning_rate() {
        let rec = |step, loss: f64| StepRecord { step, loss: Some(loss), val_loss: Some(loss), ..Default::default() };
        let blown =
            StepRecord { step: 5, loss: Some(f64::INFINITY), diverged: Some("inf".into()), ..Default::default() };
        let at = |lr: f64, records: Vec<StepRecord>| {
            let mut c = Config::preset("tiny").unwrap();
            c.train.lr = lr;
            ("v".to_string(), c, records)
        };
        let runs = [
            at(1e-3, vec![rec(0, 4.0), rec(10, 2.0)]),
            at(1e-3, vec![rec(0, 4.0), rec(10, 2.2)]),
            at(1.0, vec![rec(0, 4.0), rec(10, 3.0)]),
            at(1.0, vec![rec(0, 4.0), blown]),
        ];
        let (md, _) = sweep_report("cmd", &runs, 0.1, 3.3);
        assert!(md.contains("| v | 2.1000 ± 0.1414 | diverged@5 (1 of 2 seeds) |"), "{md}");
        assert!(md.contains("| v | 1.0e-3 | 1.0e-3 | 1.0e-3 | 2.1000 |"), "{md}");
    }

    #[test]
    fn svg_has_a_path_per_series_and_survives_nan() {
        let s = svg_plot(
            "t",
            "x",
            "y",
            &[
                ("a".into(), vec![(0.0, 1.0), (1.0, 0.8), (2.0, f64::NAN), (3.0, 0.5), (4.0, 0.4)]),
                ("b".into(), vec![]),
            ],
            false,
            true,
        );
        assert_eq!(s.matches("<path").count(), 1 + 2, "axes + one per series");
        assert!(s.contains(">a</text>") && s.contains(">b</text>"));
        assert!(!s.contains("NaN") && !s.contains("inf"), "no non-finite coordinate written: {s}");
        // Series a's line breaks at its NaN: two pieces of two points, each a move and a line.
        let d = |color: &str| {
            let at = s.find(&format!("stroke=\"{color}\" stroke-width")).unwrap();
            let start = s[..at].rfind("d=\"").unwrap() + 3;
            s[start..at].trim_end().trim_end_matches('"').trim().to_string()
        };
        let a = d(COLORS[0]);
        assert_eq!((a.matches('M').count(), a.matches('L').count()), (2, 2), "{a}");
        assert!(a.starts_with('M') && a.find('L') < a.rfind('M'), "{a}");
        assert_eq!(d(COLORS[1]), "", "series b has no points");
    }
}
