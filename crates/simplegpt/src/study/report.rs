//! A study's report: markdown with its tables, the SVG plots it links, and the same numbers
//! as JSON (`summary.json`) for programs: the tests and the page read those, not the
//! markdown.

use std::fmt::Write;
use std::path::Path;

use crate::config::{Config, NormKind};
use crate::error::Result;
use crate::files::write_atomic;
use crate::record::StepRecord;
use crate::study::plot::{Figure, Series, svg_plot};
use crate::study::stats::{
    Summary, WelchTest, attn_logit_max, block_rms, grouped_grad_norms, linear_rms_by_kind, lr_sensitivity,
    lr_stability, mean_curve, spread_curve,
};
use crate::study::variants::{group_by, variant_of};

/// A study's report, written into the study's directory beside its runs.
pub struct Report {
    pub markdown: String,
    /// (file name, SVG) of each plot the markdown links.
    pub plots: Vec<(String, String)>,
    /// The report's numbers: each run's and each variant's `Summary`, a sweep's stability.
    pub summary: serde_json::Value,
}

impl Report {
    pub const FILE: &str = "report.md";
    pub const SUMMARY_FILE: &str = "summary.json";

    /// Writes the plots, summary.json and report.md (last, so that a report names only
    /// files already written) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        for (name, svg) in &self.plots {
            write_atomic(&dir.join(name), svg.as_bytes())?;
        }
        let summary = serde_json::to_string_pretty(&self.summary).expect("serialisable");
        write_atomic(&dir.join(Report::SUMMARY_FILE), summary.as_bytes())?;
        write_atomic(&dir.join(Report::FILE), self.markdown.as_bytes())
    }
}

/// A loss as a table cell: four decimals, or a dash where there is none.
fn cell(v: Option<f64>) -> String {
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
            cell(m.final_loss),
            cell(m.best_loss),
            cell(m.final_val),
            cell(m.best_val),
            m.diverged_at.map_or("–".into(), |d| d.to_string()),
            m.tokens_per_sec.map_or("–".into(), |t| format!("{t:.0}")),
        );
    }
    s
}

fn mean_sd(mean: Option<f64>, sd: Option<f64>) -> String {
    match (mean, sd) {
        (Some(m), Some(sd)) => format!("{m:.4} ± {sd:.4}"),
        (m, _) => cell(m),
    }
}

/// The p-value below which a difference counts as real: modded-nanogpt's bar for a record.
pub const SIGNIFICANCE: f64 = 0.01;

/// Each variant after the first against the first: Welch's t-test of their seeds' final
/// losses (`Summary::end_loss`: validation where there is one), diverged seeds left out.
fn welch_against_first<'a>(
    summaries: &[Summary],
    groups: &'a [(&str, Vec<usize>)],
) -> Vec<(&'a str, Option<WelchTest>)> {
    // A non-finite end that was not flagged as diverged stays in: WelchTest::of then says nothing.
    let ends = |idx: &[usize]| -> Vec<f64> {
        idx.iter().map(|&i| &summaries[i]).filter(|s| s.diverged_at.is_none()).filter_map(|s| s.end_loss()).collect()
    };
    let Some((_, first)) = groups.first() else { return Vec::new() };
    groups[1..].iter().map(|(v, idx)| (*v, WelchTest::of(&ends(idx), &ends(first)))).collect()
}

/// The markdown that says, for each variant against the first, whether the difference in
/// final loss is larger than the seeds' spread explains.
fn significance_section(
    summaries: &[Summary],
    groups: &[(&str, Vec<usize>)],
    tests: &[(&str, Option<WelchTest>)],
) -> String {
    let Some((baseline, baseline_runs)) = groups.first() else { return String::new() };
    let metric = if summaries.iter().any(|s| s.final_val.is_some()) { "final val loss" } else { "final loss" };
    // Seeds that did not diverge, of all: a test over survivors says nothing of the others.
    let kept = |idx: &[usize]| {
        let n = idx.iter().filter(|&&i| summaries[i].diverged_at.is_none()).count();
        format!("{n} of {}", idx.len())
    };
    let mut md = format!(
        "Is the difference real? Each variant's {metric} against {baseline}'s, by Welch's t-test over the seeds that did not diverge (two-sided; significant when p < {SIGNIFICANCE}; each variant tested alone, with no correction for testing several).\n\n| variant | seeds kept | difference | t | df | p | p < {SIGNIFICANCE} |\n|---|---:|---:|---:|---:|---:|---|\n"
    );
    let mut sentences = String::new();
    for ((v, test), (_, idx)) in tests.iter().zip(&groups[1..]) {
        let seeds = format!("{} vs {}", kept(idx), kept(baseline_runs));
        match test {
            Some(w) => {
                let significant = w.p < SIGNIFICANCE;
                let _ = writeln!(
                    md,
                    "| {v} | {seeds} | {:+.4} | {:.2} | {:.1} | {} | {} |",
                    w.difference,
                    w.t,
                    w.df,
                    p_value(w.p),
                    if significant { "yes" } else { "no" }
                );
                let direction = if w.difference < 0.0 { "lower" } else { "higher" };
                let _ = writeln!(
                    sentences,
                    "- {v} ends {:.4} {direction} than {baseline}: {} (p = {}).",
                    w.difference.abs(),
                    if significant {
                        format!("significant at p < {SIGNIFICANCE}")
                    } else {
                        "not significant; the seeds' spread explains a difference this large".to_string()
                    },
                    p_value(w.p)
                );
            }
            None => {
                let _ = writeln!(md, "| {v} | {seeds} | – | – | – | – | – |");
                let _ = writeln!(
                    sentences,
                    "- {v}: no test; it needs two seeds or more on each side that did not diverge, finite losses, and some spread."
                );
            }
        }
    }
    format!("{md}\n{sentences}\n")
}

/// A p-value to two significant digits, however small.
fn p_value(p: f64) -> String {
    if p >= 0.01 { format!("{p:.2}") } else { format!("{p:.1e}") }
}

/// A comparison's report, from each run's records. Runs named `variant/seed-S` are several
/// seeds of one variant: the report then adds their means and spread, and plots the mean
/// curves.
pub fn comparison_report(title: &str, command: &str, runs: &[(String, Config, Vec<StepRecord>)]) -> Report {
    let summaries: Vec<Summary> = runs.iter().map(|(n, c, r)| Summary::of(n, c, r)).collect();
    let groups = group_by(runs.iter().map(|(n, _, _)| variant_of(n)));
    let seeds = groups.iter().map(|(_, runs)| runs.len()).max().unwrap_or(1);
    let variants: Vec<Summary> = groups
        .iter()
        .map(|(v, idx)| Summary::of_group(v, &idx.iter().map(|&i| summaries[i].clone()).collect::<Vec<_>>()))
        .collect();
    // Each variant's mean curve, with the seeds' spread around it where it has several.
    let curve = |pick: fn(&StepRecord) -> Option<f64>| -> Vec<Series> {
        groups
            .iter()
            .map(|(v, idx)| {
                let records: Vec<&[StepRecord]> = idx.iter().map(|&i| runs[i].2.as_slice()).collect();
                let band = if records.len() > 1 { spread_curve(&records, pick) } else { Vec::new() };
                Series { name: v.to_string(), points: mean_curve(&records, pick), band }
            })
            .collect()
    };
    let welch_tests = welch_against_first(&summaries, &groups);
    let over = if seeds > 1 { format!(" (mean over {seeds} seeds)") } else { String::new() };
    let caption = format!("Lines: the mean over {seeds} seeds; shaded: from the lowest seed to the highest.");
    let loss_plot = |title: &str, pick| {
        let fig = Figure {
            title,
            x_label: "step",
            y_label: "loss",
            skip_start: true,
            caption: (seeds > 1).then_some(caption.as_str()),
            ..Default::default()
        };
        svg_plot(&fig, &curve(pick))
    };
    let mut svgs = vec![
        ("loss.svg".to_string(), loss_plot(&format!("training loss{over}"), |r| r.loss)),
        ("val_loss.svg".to_string(), loss_plot(&format!("validation loss{over}"), |r| r.val_loss)),
    ];
    let mut md = format!("# {title}\n\nCommand: `{command}`\n\n{}\n", comparison_table(&summaries));
    if seeds > 1 {
        md.push_str("Across seeds: the mean ± the sample standard deviation over the runs that did not diverge.\n\n| variant | seeds | best val | final val | diverged |\n|---|---:|---:|---:|---:|\n");
        for s in &variants {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} of {} |",
                s.name,
                s.runs,
                mean_sd(s.best_val, s.best_val_sd),
                mean_sd(s.final_val, s.final_val_sd),
                s.diverged_runs,
                s.runs
            );
        }
        md.push('\n');
        md.push_str(&significance_section(&summaries, &groups, &welch_tests));
    }
    md.push_str("![training loss](loss.svg)\n\n![validation loss](val_loss.svg)\n\n");
    for (name, _, records) in runs {
        let file = name.replace('/', "-");
        let (g, a) = (format!("grad_norms-{file}.svg"), format!("act_rms-{file}.svg"));
        let log_y = |title: &str, y_label, curves: Vec<(String, Vec<(f64, f64)>)>| {
            let fig = Figure { title, x_label: "step", y_label, log_y: true, ..Default::default() };
            svg_plot(&fig, &curves.into_iter().map(|(n, p)| Series::line(n, p)).collect::<Vec<_>>())
        };
        svgs.push((
            g.clone(),
            log_y(&format!("{name}: gradient norm per parameter group"), "norm", grouped_grad_norms(records)),
        ));
        svgs.push((a.clone(), log_y(&format!("{name}: activation RMS per block"), "RMS", block_rms(records))));
        let (q, l) = (format!("attn_logit_max-{file}.svg"), format!("linear_rms-{file}.svg"));
        let fig = Figure {
            title: &format!("{name}: largest attention logit per layer"),
            x_label: "step",
            y_label: "logit",
            ..Default::default()
        };
        let layers: Vec<Series> = attn_logit_max(records).into_iter().map(|(n, p)| Series::line(n, p)).collect();
        svgs.push((q.clone(), svg_plot(&fig, &layers)));
        svgs.push((
            l.clone(),
            log_y(
                &format!("{name}: RMS of each linear's output (largest over layers)"),
                "RMS",
                linear_rms_by_kind(records),
            ),
        ));
        let _ = write!(
            md,
            "## {name}\n\n![gradient norms]({g})\n\n![activation RMS]({a})\n\n![largest attention logit]({q})\n\n![linear output RMS]({l})\n\nRun directory: `{name}/`\n\n"
        );
    }
    let summary = serde_json::json!({
        "title": title,
        "command": command,
        "runs": summaries,
        "variants": variants,
        "welch_tests": welch_tests.iter().map(|(v, w)| serde_json::json!({
            "variant": v,
            "against": groups[0].0,
            "test": w,
            "significant": w.map(|w| w.p < SIGNIFICANCE),
        })).collect::<Vec<_>>(),
    });
    Report { markdown: md, plots: svgs, summary }
}

/// An LR sweep's report: a table of final losses, the loss-vs-LR plot, each variant's
/// `LrStability` (`near` in nats) and, when both are present, SimpleNorm's over pre-LN's.
/// Runs are named `VARIANT/lr-X[/seed-S]`. `unigram` (the data's `Dataset::unigram_loss`)
/// is quoted as the level a run that learns no context stalls at.
pub fn sweep_report(command: &str, runs: &[(String, Config, Vec<StepRecord>)], near: f64, unigram: f64) -> Report {
    // Several seeds of one variant at one LR are summarised together.
    let per_run: Vec<Summary> = runs.iter().map(|(n, c, r)| Summary::of(variant_of(n), c, r)).collect();
    let summaries: Vec<(String, Summary)> = group_by(per_run.iter().map(|s| (s.name.clone(), s.lr)))
        .into_iter()
        .map(|((v, _), idx)| {
            let seeds: Vec<Summary> = idx.iter().map(|&i| per_run[i].clone()).collect();
            (v.clone(), Summary::of_group(&v, &seeds))
        })
        .collect();
    let seeds = summaries.iter().map(|(_, s)| s.runs).max().unwrap_or(1);
    let variants: Vec<String> =
        group_by(summaries.iter().map(|(v, _)| v.clone())).into_iter().map(|(v, _)| v).collect();
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
                None => format!("{}{}", mean_sd(s.end_loss(), s.final_val_sd), if s.trained() { "" } else { "*" }),
            });
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    let mut stability = lr_stability(&summaries, near);
    for (v, entry) in stability.iter_mut() {
        let runs: Vec<(f64, &Summary)> = per_run.iter().filter(|s| &s.name == v).map(|s| (s.lr, s)).collect();
        entry.sensitivity = lr_sensitivity(&runs);
    }
    let _ = write!(
        md,
        "\n| variant | largest LR that trained | largest LR within {near} of its best | best LR | its final val loss | LR sensitivity |\n|---|---:|---:|---:|---:|---:|\n"
    );
    let lr = |v: Option<f64>| v.map_or("none".to_string(), |lr| format!("{lr:.1e}"));
    for v in &variants {
        let s = &stability[v];
        let (best_lr, best_loss) =
            s.best.map_or(("none".into(), "–".into()), |(l, loss)| (format!("{l:.1e}"), format!("{loss:.4}")));
        let _ = writeln!(
            md,
            "| {v} | {} | {} | {best_lr} | {best_loss} | {} |",
            lr(s.largest_trained),
            lr(s.largest_near_best),
            cell(s.sensitivity)
        );
    }
    let _ = write!(
        md,
        "\n\"Trained\": did not diverge and its training loss ended below its first{}. \"Within {near}\": its final validation loss is at most {near} nats above the variant's best in this sweep. \"LR sensitivity\" (Wortsman et al., arXiv 2309.14322): the mean over the swept learning rates of min(final loss, initial loss), minus the variant's best final loss, with a diverged run counted at its initial loss; lower is more tolerant of the learning rate.\n",
        if seeds > 1 {
            " (over seeds: no seed diverged, and the mean final training loss is below the mean first)"
        } else {
            ""
        }
    );
    let norm_of = |v: &String| runs.iter().find(|(n, _, _)| variant_of(n) == v).map(|(_, c, _)| c.model.norm);
    let find = |norm| variants.iter().find(|v| norm_of(v) == Some(norm)).map(|v| &stability[v]);
    let mut simple_over_pre_ln = None;
    if let (Some(simple), Some(pre)) = (find(NormKind::Simple), find(NormKind::PreLn)) {
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let ratios = (
            ratio(simple.largest_trained, pre.largest_trained),
            ratio(simple.largest_near_best, pre.largest_near_best),
        );
        // Two significant digits below 1 too: a ratio of 0.018 is not "0.0x".
        let shown = |r: Option<f64>| {
            r.map_or("n/a".to_string(), |r| {
                let decimals = if r >= 1.0 { 1 } else { (1.0 - r.log10().floor()) as usize };
                format!("{r:.decimals$}x")
            })
        };
        let _ = writeln!(
            md,
            "\nSimpleNorm / pre-LN (the paper claims 3-10x): largest LR that trained **{}**, largest LR within {near} of its best **{}**.",
            shown(ratios.0),
            shown(ratios.1)
        );
        simple_over_pre_ln = Some(serde_json::json!({ "largest_trained": ratios.0, "largest_near_best": ratios.1 }));
    }
    md.push_str("\n![final validation loss vs learning rate](final_loss_vs_lr.svg)\n");
    let series: Vec<Series> = variants
        .iter()
        .map(|v| {
            let mut pts: Vec<(f64, f64)> = summaries
                .iter()
                .filter(|(n, _)| n == v)
                .map(|(_, s)| (s.lr, if s.diverged_at.is_some() { f64::NAN } else { s.end_loss().unwrap_or(f64::NAN) }))
                .collect();
            // In LR order, whatever order the runs came in: the line joins neighbours.
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::line(v, pts)
        })
        .collect();
    // Every finite point in range (no `skip_start`): a learning rate's loss is the result.
    let fig = Figure {
        title: "final validation loss vs learning rate (gaps: diverged)",
        x_label: "learning rate",
        y_label: "final val loss",
        log_x: true,
        ..Default::default()
    };
    let plot = svg_plot(&fig, &series);
    let summary = serde_json::json!({
        "command": command,
        "near": near,
        "unigram_loss": unigram,
        "learning_rates": lrs,
        "cells": summaries.iter().map(|(_, s)| s).collect::<Vec<_>>(),
        "stability": stability,
        "simple_over_pre_ln": simple_over_pre_ln,
    });
    Report { markdown: md, plots: vec![("final_loss_vs_lr.svg".into(), plot)], summary }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::study::variants::{Variant, with_seeds};

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
        let report = comparison_report("t", "cmd", &runs);
        let (md, svgs) = (&report.markdown, &report.plots);
        assert!(md.contains("| x | 2 | 2.2000 ± 0.1414 | 2.2000 ± 0.1414 | 0 of 2 |"), "{md}");
        assert!(md.contains("| y | 2 | 3.1000 ± 0.0000 |"), "{md}");
        assert!(svgs.iter().any(|(f, _)| f == "grad_norms-x-seed-1338.svg"), "no '/' in file names");
        assert_eq!(
            mean_curve(&[runs[0].2.as_slice(), runs[1].2.as_slice()], |r| r.loss),
            vec![(0.0, 4.0), (10.0, 2.1)]
        );
    }

    #[test]
    fn a_comparison_with_seeds_says_which_differences_are_real() {
        let c = Config::preset("tiny").unwrap();
        let rec = |step, val: f64| StepRecord {
            step,
            loss: Some(4.0 - step as f64 / 10.0),
            val_loss: Some(val),
            ..Default::default()
        };
        // a and b differ by 0.1 with a spread of 0.01: real. c is 0.04 above a, its seeds
        // spread over 0.1: not real at p < 0.01. d has two seeds that diverged, one left: no test.
        let ends = [
            ("a", [2.00, 2.01, 2.02]),
            ("b", [2.10, 2.11, 2.12]),
            ("c", [2.00, 2.05, 2.10]),
            ("d", [2.0, f64::NAN, f64::NAN]),
        ];
        let runs: Vec<_> = ends
            .iter()
            .flat_map(|(v, vals)| vals.iter().enumerate().map(move |(s, &end)| (v, s, end)))
            .map(|(v, s, end)| {
                let mut last = rec(10, end);
                if end.is_nan() {
                    last.diverged = Some("NaN".into());
                }
                (format!("{v}/seed-{s}"), c.clone(), vec![rec(0, 4.2), last])
            })
            .collect();
        let report = comparison_report("t", "cmd", &runs);
        let tests = report.summary["welch_tests"].as_array().unwrap();
        let of = |v: &str| tests.iter().find(|t| t["variant"] == v).unwrap();
        assert_eq!(tests.len(), 3);
        assert!(tests.iter().all(|t| t["against"] == "a"));
        assert_eq!(of("b")["significant"], true);
        assert!((of("b")["test"]["difference"].as_f64().unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(of("c")["significant"], false);
        assert!(of("c")["test"]["p"].as_f64().unwrap() > 0.01);
        assert!(of("d")["test"].is_null() && of("d")["significant"].is_null());
        let md = &report.markdown;
        assert!(md.contains("- b ends 0.1000 higher than a: significant at p < 0.01"), "{md}");
        assert!(md.contains("- c ends 0.0400 higher than a: not significant"), "{md}");
        assert!(md.contains("- d: no test"), "{md}");
    }

    /// Synthetic loss curves like a short run's: from ln(65) ≈ 4.17 down to `end` over 1000
    /// steps, with a little seed-dependent noise; validation every 100 steps.
    fn synthetic(end: f64, seed: u64) -> Vec<StepRecord> {
        (0..=1000)
            .step_by(10)
            .map(|step| {
                let t = step as f64;
                let noise = 0.03 * ((t * 0.37 + seed as f64 * 1.7).sin() + (t * 0.11 + seed as f64).cos());
                let loss = end + (4.17 - end) * (-t / 120.0).exp() + noise * (1.0 - (-t / 50.0).exp());
                let diagnostic = step % 100 == 0;
                let val_loss = diagnostic.then_some(loss + 0.05 + 0.01 * seed as f64);
                let grad = |path: &str, scale: f64| (path.to_string(), scale * (0.1 + 3.0 * (-t / 150.0).exp()));
                let grad_norms =
                    [grad("wte.weight", 1.0), grad("h.0.attn.c_attn.weight", 0.5), grad("h.0.mlp.c_fc.weight", 0.2)];
                let act_rms = (0..4).map(|b| 1.0 + (b as f64 + 1.0) * t / 200.0).collect();
                StepRecord {
                    step,
                    loss: Some(loss),
                    val_loss,
                    grad_norms: diagnostic.then(|| grad_norms.into_iter().collect()),
                    act_rms: diagnostic.then_some(act_rms),
                    ..Default::default()
                }
            })
            .collect()
    }

    #[test]
    fn the_seeds_spread_is_a_band_only_when_there_are_several() {
        let c = Config::preset("tiny").unwrap();
        let named = |names: &[(&str, f64)], seeds: u64| -> Vec<(String, Config, Vec<StepRecord>)> {
            let runs = names.iter().flat_map(|&(n, end)| (0..seeds).map(move |s| (n, end, s)));
            let name = |n: &str, s| if seeds > 1 { format!("{n}/seed-{s}") } else { n.to_string() };
            runs.map(|(n, end, s)| (name(n, s), c.clone(), synthetic(end, s))).collect()
        };
        let three = comparison_report("t", "cmd", &named(&[("pre_ln", 2.1), ("simple", 2.0)], 3));
        let one = comparison_report("t", "cmd", &named(&[("pre_ln", 2.1), ("simple", 2.0)], 1));
        let plot = |r: &Report, f: &str| r.plots.iter().find(|(n, _)| n == f).unwrap().1.clone();
        for f in ["loss.svg", "val_loss.svg"] {
            let (banded, plain) = (plot(&three, f), plot(&one, f));
            assert_eq!(banded.matches("<polygon").count(), 2, "one band per variant: {banded}");
            assert!(banded.contains("from the lowest seed to the highest"), "the caption says what the band is");
            assert!(!plain.contains("<polygon") && !plain.contains("lowest seed"), "{plain}");
            assert_eq!(banded.matches("<path").count(), 1 + 2, "axes + one line per variant");
            // The untrained start (4.17) is cut off: the curves end near 2, and differ there.
            assert!(banded.contains("y-axis cut at") && plain.contains("they reach 4."), "{plain}");
        }
    }

    /// Not a check: writes example figures to look at (`cargo test -p simplegpt --lib
    /// example_figures -- --ignored`, then open $TMPDIR/simplegpt-example-figures/).
    #[test]
    #[ignore]
    fn example_figures() {
        let dir = std::env::temp_dir().join("simplegpt-example-figures");
        std::fs::create_dir_all(&dir).unwrap();
        let c = Config::preset("tiny").unwrap();
        let variants = [("pre_ln", 2.12), ("simple_norm", 2.02), ("rms_norm", 2.07)];
        let runs: Vec<_> = variants
            .iter()
            .flat_map(|&(n, end)| (0..3).map(move |s| (format!("{n}/seed-{s}"), end, s)))
            .map(|(n, end, s)| (n, c.clone(), synthetic(end, s)))
            .collect();
        comparison_report("example", "cmd", &runs).write(&dir).unwrap();
        // A sweep: each variant's final loss is a bowl in log LR around its best; the largest
        // learning rates diverge at step 200.
        let at = |name: &str, lr: f64, end: f64, blown: bool| {
            let mut c = c.clone();
            c.train.lr = lr;
            let mut records = synthetic(end, 0);
            if blown {
                records.truncate(20);
                let nan =
                    StepRecord { step: 200, loss: Some(f64::NAN), diverged: Some("NaN".into()), ..Default::default() };
                records.push(nan);
            }
            (name.to_string(), c, records)
        };
        let mut sweep = Vec::new();
        for (i, lr) in crate::study::log_grid(1e-4, 3e-1, 8).into_iter().enumerate() {
            let bowl = |best: f64| 2.0 + 0.25 * (lr.log10() - best).powi(2);
            sweep.push(at("pre_ln", lr, bowl(-2.5), i >= 6));
            sweep.push(at("simple_norm", lr, bowl(-2.0) - 0.03, i >= 7));
        }
        let sweep_dir = dir.join("sweep");
        std::fs::create_dir_all(&sweep_dir).unwrap();
        sweep_report("cmd", &sweep, 0.1, 3.3).write(&sweep_dir).unwrap();
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
        let report = sweep_report("cmd", &runs, 0.1, 3.3);
        let md = &report.markdown;
        assert!(md.contains("| v | 2.1000 ± 0.1414 | diverged@5 (1 of 2 seeds) |"), "{md}");
        // LR sensitivity: 1e-3's seeds give 2.0 and 2.2 (mean 2.1), 1.0's give 3.0 and the
        // diverged seed's initial 4.0 (mean 3.5); the mean 2.8 minus the best 2.1 is 0.7.
        assert!(md.contains("| v | 1.0e-3 | 1.0e-3 | 1.0e-3 | 2.1000 | 0.7000 |"), "{md}");
        assert!((report.summary["stability"]["v"]["sensitivity"].as_f64().unwrap() - 0.7).abs() < 1e-12);
    }
}
