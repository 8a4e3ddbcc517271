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
    /// `name:key=v,key=v` or `key=v,key=v` (then the name is the values joined by `-`).
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
        let name = name.unwrap_or_else(|| sets.iter().map(|s| s.split_once('=').unwrap().1).collect::<Vec<_>>().join("-"));
        let safe = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if name.is_empty() || !name.chars().all(safe) {
            return Err(Error::Input(format!("variant name '{name}' must be letters, digits, '-', '_' or '.' (it names a directory)")));
        }
        Ok(Variant { name, sets })
    }

    pub fn apply(&self, base: &Config) -> Result<Config> {
        let mut c = base.clone();
        for s in &self.sets {
            c.set(s)?;
        }
        c.validate()?;
        Ok(c)
    }
}

/// What a report says about one run, read off its records.
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
            tokens_per_sec: (!tps.is_empty()).then(|| tps.iter().sum::<f64>() / tps.len() as f64),
        }
    }

    /// What a sweep ranks runs by: the final validation loss (a mean over `eval_iters`
    /// batches), or without an evaluation the final training batch's loss.
    pub fn end_loss(&self) -> Option<f64> {
        self.final_val.or(self.final_loss)
    }

    /// Trained: did not diverge, and ended below where it started.
    pub fn stable(&self) -> bool {
        self.diverged_at.is_none() && matches!((self.first_loss, self.final_loss), (Some(a), Some(b)) if b < a)
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

/// The markdown table of a comparison.
pub fn comparison_table(summaries: &[Summary]) -> String {
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
pub fn lr_stability(runs: &[(String, Summary)], near: f64) -> BTreeMap<String, LrStability> {
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
pub fn svg_plot(title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)], log_x: bool, log_y: bool) -> String {
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
    let (mut x0, mut x1, mut y0, mut y1) = pts.iter().fold((f64::MAX, f64::MIN, f64::MAX, f64::MIN), |(a, b, c, d), &(x, y)| {
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
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", px(fx), h - b + 16.0, label(fx, log_x, x1 - x0));
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", l - 6.0, py(fy) + 4.0, label(fy, log_y, y1 - y0));
    }
    let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", l + (w - l - r) / 2.0, h - 8.0, escape(x_label));
    let _ = writeln!(svg, "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>", h / 2.0, h / 2.0, escape(y_label));
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
        for &(x, y) in points.iter().filter(|(x, y)| tx(*x).is_finite() && ty(*y).is_finite()).take(if points.len() <= 12 { 12 } else { 0 }) {
            let _ = writeln!(svg, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>", px(tx(x)), py(ty(y)));
        }
        let ly = t + 14.0 + 16.0 * i as f64;
        let _ = writeln!(svg, "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"3\" fill=\"{color}\"/>", w - r + 12.0, ly - 4.0);
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{ly}\">{}</text>", w - r + 30.0, escape(name));
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A comparison's report: markdown and the SVG files it links, from each run's records.
pub fn comparison_report(title: &str, command: &str, runs: &[(String, Config, Vec<StepRecord>)]) -> (String, Vec<(String, String)>) {
    let summaries: Vec<Summary> = runs.iter().map(|(n, c, r)| Summary::of(n, c, r)).collect();
    let curve = |pick: fn(&StepRecord) -> Option<f64>| -> Vec<(String, Vec<(f64, f64)>)> {
        runs.iter().map(|(n, _, r)| (n.clone(), r.iter().filter_map(|x| pick(x).map(|v| (x.step as f64, v))).collect())).collect()
    };
    let mut svgs = vec![
        ("loss.svg".to_string(), svg_plot("training loss", "step", "loss", &curve(|r| r.loss), false, false)),
        ("val_loss.svg".to_string(), svg_plot("validation loss", "step", "loss", &curve(|r| r.val_loss), false, false)),
    ];
    let mut md = format!("# {title}\n\nCommand: `{command}`\n\n{}\n![training loss](loss.svg)\n\n![validation loss](val_loss.svg)\n\n", comparison_table(&summaries));
    for (name, _, records) in runs {
        let (g, a) = (format!("grad_norms-{name}.svg"), format!("act_rms-{name}.svg"));
        svgs.push((g.clone(), svg_plot(&format!("{name}: gradient norm per parameter group"), "step", "norm", &grouped_grad_norms(records), false, true)));
        svgs.push((a.clone(), svg_plot(&format!("{name}: activation RMS per block"), "step", "RMS", &block_rms(records), false, true)));
        let _ = write!(md, "## {name}\n\n![gradient norms]({g})\n\n![activation RMS]({a})\n\nRun directory: `{name}/`\n\n");
    }
    (md, svgs)
}

/// An LR sweep's report: a table of final losses, the loss-vs-LR plot, each variant's
/// `LrStability` (`near` in nats) and, when both are present, SimpleNorm's over pre-LN's.
/// `unigram` (the data's `Dataset::unigram_loss`) is quoted as the level a run that learns
/// no context stalls at.
pub fn sweep_report(command: &str, runs: &[(String, Config, Vec<StepRecord>)], near: f64, unigram: f64) -> (String, Vec<(String, String)>) {
    let summaries: Vec<(String, Summary)> = runs.iter().map(|(v, c, r)| (v.clone(), Summary::of(v, c, r))).collect();
    let mut variants: Vec<String> = Vec::new();
    for (v, _) in &summaries {
        if !variants.contains(v) {
            variants.push(v.clone());
        }
    }
    let mut lrs: Vec<f64> = summaries.iter().map(|(_, s)| s.lr).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    let mut md = format!("# Learning-rate sweep\n\nCommand: `{command}`\n\nFinal validation loss at each learning rate (the final training batch's loss where a run has no evaluation; `diverged@N`: divergence detected at step N; `*`: did not train, final training loss not below the first). For scale: a model that knows only how often each character occurs has a validation loss of {unigram:.4} on this data, so a run that ends near it has learned the alphabet, not the text.\n\n| variant |");
    for lr in &lrs {
        let _ = write!(md, " {lr:.1e} |");
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(lrs.len()));
    md.push('\n');
    for v in &variants {
        let _ = write!(md, "| {v} |");
        for lr in &lrs {
            let cell = summaries.iter().find(|(n, s)| n == v && s.lr == *lr).map_or("–".to_string(), |(_, s)| match s.diverged_at {
                Some(d) => format!("diverged@{d}"),
                None => format!("{}{}", fmt(s.end_loss()), if s.stable() { "" } else { "*" }),
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
        let (best_lr, best_loss) = s.best.map_or(("none".into(), "–".into()), |(l, loss)| (format!("{l:.1e}"), format!("{loss:.4}")));
        let _ = writeln!(md, "| {v} | {} | {} | {best_lr} | {best_loss} |", lr(s.largest_trained), lr(s.largest_near_best));
    }
    let _ = write!(
        md,
        "\n\"Trained\": did not diverge and its training loss ended below its first. \"Within {near}\": its final validation loss is at most {near} nats above the variant's best in this sweep.\n"
    );
    let norm_of = |v: &String| runs.iter().find(|(n, _, _)| n == v).map(|(_, c, _)| c.model.norm);
    let find = |norm| variants.iter().find(|v| norm_of(v) == Some(norm)).map(|v| &stability[v]);
    if let (Some(simple), Some(pre)) = (find(crate::config::NormKind::Simple), find(crate::config::NormKind::PreLn)) {
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or("n/a".to_string(), |(a, b)| format!("{:.1}x", a / b));
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
            let pts = summaries.iter().filter(|(n, _)| n == v).map(|(_, s)| (s.lr, if s.diverged_at.is_some() { f64::NAN } else { s.end_loss().unwrap_or(f64::NAN) })).collect();
            (v.clone(), pts)
        })
        .collect();
    (md, vec![("final_loss_vs_lr.svg".into(), svg_plot("final validation loss vs learning rate (gaps: diverged)", "learning rate", "final val loss", &series, true, false))])
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
pub fn grouped_grad_norms(records: &[StepRecord]) -> Vec<(String, Vec<(f64, f64)>)> {
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
pub fn block_rms(records: &[StepRecord]) -> Vec<(String, Vec<(f64, f64)>)> {
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
        assert_eq!(Variant::parse("norm=post_ln,residual=false").unwrap().name, "post_ln-false");
        assert!(Variant::parse("simple").is_err());
        assert!(Variant::parse("a/b:norm=simple").is_err());
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
    fn svg_has_a_path_per_series_and_survives_nan() {
        let s = svg_plot("t", "x", "y", &[("a".into(), vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5)]), ("b".into(), vec![])], false, true);
        assert_eq!(s.matches("<path").count(), 1 + 2, "axes + one per series");
        assert!(s.contains(">a</text>") && s.contains(">b</text>"));
    }
}
