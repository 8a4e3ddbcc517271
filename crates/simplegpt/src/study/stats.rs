//! What a study's runs say, read off their records: each run's `Summary`, the mean and
//! spread of several seeds, a learning-rate sweep's `LrStability`, and the curves the
//! plots draw (mean losses, gradient norms by parameter group, activation RMS by block).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::params::param_group;
use crate::record::StepRecord;
use crate::study::variants::group_by;

/// What a report says about one run, read off its records; or about several runs that
/// differ only in their seed (`Summary::over_seeds`), as means with their spread.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

    /// A group of runs that differ only in their seed, named `name`: one run as it is,
    /// several as `over_seeds`.
    pub fn of_group(name: &str, runs: &[Summary]) -> Summary {
        match runs {
            [one] => Summary { name: name.to_string(), ..one.clone() },
            _ => Summary::over_seeds(name, runs),
        }
    }

    /// What a sweep ranks runs by: the final validation loss (a mean over `eval_iters`
    /// batches), or without an evaluation the final training batch's loss.
    pub fn end_loss(&self) -> Option<f64> {
        self.final_val.or(self.final_loss)
    }

    /// Trained: did not diverge, and ended below where it started (over seeds: none
    /// diverged, and the mean final loss is below the mean first).
    pub fn trained(&self) -> bool {
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

/// What a learning-rate sweep says about one variant.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LrStability {
    /// Largest LR that trained at all: no divergence, final loss below the first.
    pub largest_trained: Option<f64>,
    /// Largest LR whose `end_loss` is within `near` of the variant's best: the
    /// top of the range where it still trains about as well as it can. A run that stalls
    /// near the character-frequency loss without diverging counts for the first, not this.
    pub largest_near_best: Option<f64>,
    /// The LR with the lowest `end_loss`, and that loss.
    pub best: Option<(f64, f64)>,
    /// Wortsman et al.'s `lr_sensitivity` over the whole sweep.
    pub sensitivity: Option<f64>,
}

/// Per variant (by name): its `LrStability`, with `near` in nats.
pub fn lr_stability(runs: &[(String, Summary)], near: f64) -> BTreeMap<String, LrStability> {
    let mut out: BTreeMap<String, LrStability> = BTreeMap::new();
    let trained = |s: &Summary| if s.trained() { s.end_loss().map(|l| (s.lr, l)) } else { None };
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

/// Wortsman et al.'s learning-rate sensitivity (arXiv 2309.14322) of one variant's sweep:
/// the mean over the swept LRs of min(final loss, initial loss), minus the best of those.
/// A run that diverged or ended above where it began counts as its initial loss, so a
/// variant that trains well over the whole range scores near 0 and one that fails at most
/// LRs scores near its initial loss minus its best. Lower is more tolerant.
///
/// `runs`: (learning rate, the run's summary), any number of seeds per LR; each LR's value
/// is the mean over its seeds. None unless some run trained (did not diverge and ended below
/// its initial loss): a variant that failed at every LR is not "insensitive".
pub fn lr_sensitivity(runs: &[(f64, &Summary)]) -> Option<f64> {
    if !runs.iter().any(|(_, s)| s.trained()) {
        return None;
    }
    let capped = |s: &Summary| -> Option<f64> {
        let initial = s.first_loss?;
        match s.end_loss() {
            Some(end) if s.diverged_at.is_none() && end.is_finite() => Some(end.min(initial)),
            _ => Some(initial),
        }
    };
    let per_lr: Vec<f64> = group_by(runs.iter().map(|(lr, _)| lr.to_bits()))
        .into_iter()
        .filter_map(|(_, idx)| mean(&idx.iter().filter_map(|&i| capped(runs[i].1)).collect::<Vec<_>>()))
        .collect();
    let best = per_lr.iter().copied().reduce(f64::min)?;
    Some(mean(&per_lr)? - best)
}

/// Welch's two-sample t-test (unequal variances) of `a` against `b`: is the difference of
/// their means real, or within what their seeds' spread explains?
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WelchTest {
    /// mean(a) - mean(b).
    pub difference: f64,
    pub t: f64,
    /// The Welch-Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided: the chance of a |t| at least this large if the means were equal.
    pub p: f64,
}

impl WelchTest {
    /// None unless each side has two values or more, all finite, and some spread (a
    /// standard error above rounding's, relative to the means).
    pub fn of(a: &[f64], b: &[f64]) -> Option<WelchTest> {
        if !a.iter().chain(b).all(|v| v.is_finite()) {
            return None;
        }
        let (va, vb) = (sample_sd(a)?.powi(2) / a.len() as f64, sample_sd(b)?.powi(2) / b.len() as f64);
        let se2 = va + vb;
        let (ma, mb) = (mean(a)?, mean(b)?);
        let difference = ma - mb;
        if se2.sqrt() <= 1e-12 * ma.abs().max(mb.abs()).max(f64::MIN_POSITIVE) {
            return None;
        }
        let t = difference / se2.sqrt();
        let df = se2 * se2 / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64);
        Some(WelchTest { difference, t, df, p: student_t_two_sided_p(t, df) })
    }
}

/// P(|T| >= |t|) for Student's t with `df` degrees of freedom (any real df > 0):
/// I_x(df/2, 1/2) at x = df / (df + t^2), the regularised incomplete beta function.
pub fn student_t_two_sided_p(t: f64, df: f64) -> f64 {
    regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
}

/// I_x(a, b), by the continued fraction of Numerical Recipes (`betai`/`betacf`, evaluated
/// with the modified Lentz method), on the side of x where it converges fast.
fn regularized_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let nonzero = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (mut c, mut d) = (1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0)));
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        // The even step, then the odd one, of the fraction's terms.
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / nonzero(1.0 + even * d);
        c = nonzero(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / nonzero(1.0 + odd * d);
        c = nonzero(1.0 + odd / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0, Lanczos's approximation (g = 7, nine terms; relative error ~1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // The reflection formula: Γ(x) Γ(1 - x) = π / sin(π x).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let sum = G[1..].iter().enumerate().fold(G[0], |s, (i, g)| s + g / (x + i as f64 + 1.0));
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// One metric of several runs, at the steps where every run has it (so a curve ends where
/// its first seed diverged): (step, each run's value).
fn at_common_steps(runs: &[&[StepRecord]], pick: fn(&StepRecord) -> Option<f64>) -> Vec<(f64, Vec<f64>)> {
    let per_run: Vec<BTreeMap<usize, f64>> =
        runs.iter().map(|r| r.iter().filter_map(|x| pick(x).map(|v| (x.step, v))).collect()).collect();
    let Some(first) = per_run.first() else { return Vec::new() };
    first
        .keys()
        .filter_map(|step| {
            let values: Vec<f64> = per_run.iter().filter_map(|m| m.get(step).copied()).collect();
            (values.len() == per_run.len()).then_some((*step as f64, values))
        })
        .collect()
}

/// The mean over several runs of one metric, at the steps where every run has it.
pub fn mean_curve(runs: &[&[StepRecord]], pick: fn(&StepRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    at_common_steps(runs, pick).into_iter().filter_map(|(x, values)| mean(&values).map(|m| (x, m))).collect()
}

/// The spread of several runs of one metric, as (step, lowest, highest) over the runs, at
/// the same steps as `mean_curve`. Where a run's value is not finite the spread is not
/// either (NaN, NaN), so a band breaks there as the mean's line does.
pub fn spread_curve(runs: &[&[StepRecord]], pick: fn(&StepRecord) -> Option<f64>) -> Vec<(f64, f64, f64)> {
    at_common_steps(runs, pick)
        .into_iter()
        .map(|(x, values)| {
            if values.iter().any(|v| !v.is_finite()) {
                return (x, f64::NAN, f64::NAN);
            }
            (x, values.iter().copied().fold(f64::MAX, f64::min), values.iter().copied().fold(f64::MIN, f64::max))
        })
        .collect()
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
    per_layer(records, "block", |r| r.act_rms.as_deref())
}

/// The largest attention logit of each layer at each diagnostic step.
pub fn attn_logit_max(records: &[StepRecord]) -> Vec<(String, Vec<(f64, f64)>)> {
    per_layer(records, "layer", |r| r.attn_logit_max.as_deref())
}

/// One curve per layer ("{what} {i}") of a per-layer diagnostic.
fn per_layer(
    records: &[StepRecord],
    what: &str,
    pick: fn(&StepRecord) -> Option<&[f64]>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut layers: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        for (i, v) in pick(r).into_iter().flatten().enumerate() {
            layers.entry(i).or_default().push((r.step as f64, *v));
        }
    }
    layers.into_iter().map(|(i, p)| (format!("{what} {i}"), p)).collect()
}

/// The RMS of each kind of linear's output (`attn.q`, `mlp.fc`, ..., `lm_head`) at each
/// diagnostic step: the largest over the layers, where growth shows first.
pub fn linear_rms_by_kind(records: &[StepRecord]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut kinds: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        let Some(rms) = &r.linear_rms else { continue };
        let mut largest: BTreeMap<&str, f64> = BTreeMap::new();
        for (path, v) in rms {
            // `blocks.3.attn.q` -> `attn.q`; a NaN stays NaN (f64::max would drop it).
            let kind = path.strip_prefix("blocks.").and_then(|p| p.split_once('.')).map_or(path.as_str(), |(_, k)| k);
            let m = largest.entry(kind).or_insert(f64::NEG_INFINITY);
            *m = if v.is_nan() || m.is_nan() { f64::NAN } else { m.max(*v) };
        }
        for (kind, v) in largest {
            kinds.entry(kind.to_string()).or_default().push((r.step as f64, v));
        }
    }
    kinds.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::study::variants::log_grid;

    #[test]
    fn grid_is_log_spaced_and_stability_needs_training() {
        let g = log_grid(1e-4, 1e-1, 4);
        assert!((g[1] - 1e-3).abs() < 1e-12 && (g[3] - 1e-1).abs() < 1e-12);
        let rec = |step, loss: f64| StepRecord { step, loss: Some(loss), ..Default::default() };
        let c = Config::preset("tiny").unwrap();
        let trained = Summary::of("a", &c, &[rec(0, 4.0), rec(1, 3.0)]);
        let stuck = Summary::of("a", &c, &[rec(0, 4.0), rec(1, 4.5)]);
        assert!(trained.trained() && !stuck.trained());
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
    fn student_t_tail_matches_closed_forms_and_tables() {
        for t in [0.0, 0.3, 1.0, 2.5, 12.706, 100.0] {
            // df = 1 (Cauchy): P(|T| >= t) = 1 - (2/π) atan t; df = 2: 1 - t / sqrt(2 + t²).
            let cauchy = 1.0 - 2.0 / std::f64::consts::PI * f64::atan(t);
            assert!((student_t_two_sided_p(t, 1.0) - cauchy).abs() < 1e-12, "df 1, t {t}");
            let two = 1.0 - t / (2.0 + t * t).sqrt();
            assert!((student_t_two_sided_p(-t, 2.0) - two).abs() < 1e-12, "df 2, t -{t}");
        }
        // Printed critical values: two-sided 5% at df 4 is 2.7764, 1% at df 10 is 3.1693.
        assert!((student_t_two_sided_p(2.7764, 4.0) - 0.05).abs() < 1e-5);
        assert!((student_t_two_sided_p(3.1693, 10.0) - 0.01).abs() < 1e-5);
        // ln Γ at integers and at 1/2: ln 4! and ln sqrt(π).
        assert!(
            (ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13
                && (ln_gamma(0.5) - 0.5 * std::f64::consts::PI.ln()).abs() < 1e-13
        );
    }

    #[test]
    fn welch_test_worked_by_hand() {
        // a: mean 2, variance 1; b: mean 5.5, variance 5/3. se² = 1/3 + (5/3)/4 = 0.75,
        // t = -3.5 / sqrt 0.75, df = 0.75² / ((1/3)²/2 + (5/12)²/3) = 0.5625 / (1/18 + 25/432).
        let w = WelchTest::of(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0, 7.0]).unwrap();
        assert!((w.difference + 3.5).abs() < 1e-12);
        assert!((w.t + 3.5 / 0.75f64.sqrt()).abs() < 1e-12);
        assert!((w.df - 0.5625 / (1.0 / 18.0 + 25.0 / 432.0)).abs() < 1e-12);
        assert!((w.p - student_t_two_sided_p(w.t, w.df)).abs() == 0.0 && w.p > 0.005 && w.p < 0.02, "{w:?}");
        // Swapping the sides flips the sign only.
        let back = WelchTest::of(&[4.0, 5.0, 6.0, 7.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!(back.t == -w.t && back.p == w.p);
        // One seed, no spread (beyond the rounding of a mean of 2.1s), or a value that is
        // not finite, says nothing.
        assert!(WelchTest::of(&[1.0], &[2.0, 3.0]).is_none() && WelchTest::of(&[1.0, 1.0], &[2.0, 2.0]).is_none());
        assert!(WelchTest::of(&[2.1; 3], &[2.2; 3]).is_none());
        assert!(WelchTest::of(&[1.0, f64::INFINITY], &[2.0, 3.0]).is_none());
    }

    #[test]
    fn lr_sensitivity_worked_by_hand() {
        let c = Config::preset("tiny").unwrap();
        let run = |end: f64, diverged: bool| {
            let rec =
                |step, loss: f64| StepRecord { step, loss: Some(loss), val_loss: Some(loss), ..Default::default() };
            let mut last = rec(10, end);
            last.diverged = diverged.then(|| "NaN".to_string());
            Summary::of("v", &c, &[StepRecord { val_loss: None, ..rec(0, 4.0) }, last])
        };
        // Four LRs: 2.0, 2.4, ended above its start (counts as 4.0), diverged (4.0). The best
        // is 2.0, the mean of min(final, initial) is (2.0 + 2.4 + 4.0 + 4.0) / 4 = 3.1.
        let (a, b, up, nan) = (run(2.0, false), run(2.4, false), run(4.5, false), run(f64::NAN, true));
        let s = lr_sensitivity(&[(1e-3, &a), (1e-2, &b), (1e-1, &up), (1.0, &nan)]).unwrap();
        assert!((s - 1.1).abs() < 1e-12, "{s}");
        // Seeds are averaged at each LR first: 1e-3's seeds end at 2.0 and 2.4 (mean 2.2).
        let s = lr_sensitivity(&[(1e-3, &a), (1e-3, &b), (1e-2, &b)]).unwrap();
        assert!((s - 0.1).abs() < 1e-12, "{s}");
        assert_eq!(lr_sensitivity(&[(1e-3, &a)]), Some(0.0), "one LR: nothing to be sensitive to");
        // Failing everywhere is not tolerance: no figure.
        assert_eq!(lr_sensitivity(&[(1e-1, &up), (1.0, &nan)]), None);
    }

    #[test]
    fn linear_rms_is_the_largest_over_layers_for_each_kind() {
        let rec = |step, rms: &[(&str, f64)]| StepRecord {
            step,
            linear_rms: Some(rms.iter().map(|(p, v)| (p.to_string(), *v)).collect()),
            attn_logit_max: Some(vec![step as f64, 2.0 * step as f64]),
            ..Default::default()
        };
        let records = [
            rec(0, &[("blocks.0.attn.q", 1.0), ("blocks.1.attn.q", 3.0), ("blocks.10.attn.q", 2.0), ("lm_head", 5.0)]),
            rec(10, &[("blocks.0.attn.q", f64::NAN), ("blocks.1.attn.q", 3.0), ("lm_head", 6.0)]),
        ];
        let kinds = linear_rms_by_kind(&records);
        assert_eq!(kinds[0].0, "attn.q");
        assert_eq!(kinds[0].1[0], (0.0, 3.0));
        assert!(kinds[0].1[1].1.is_nan(), "a layer that blew up shows");
        assert_eq!(kinds[1], ("lm_head".to_string(), vec![(0.0, 5.0), (10.0, 6.0)]));
        let layers = attn_logit_max(&records);
        assert_eq!(layers[1], ("layer 1".to_string(), vec![(0.0, 0.0), (10.0, 20.0)]));
    }

    #[test]
    fn the_spread_of_a_curve_is_its_lowest_and_highest_run() {
        let rec = |step, loss: f64| StepRecord { step, loss: Some(loss), ..Default::default() };
        let a = [rec(0, 4.0), rec(10, 2.0), rec(20, 1.8), rec(30, 1.7)];
        let b = [rec(0, 4.2), rec(10, 2.4), rec(20, f64::INFINITY)];
        let c = [rec(0, 4.1), rec(10, 2.2), rec(20, 1.9)];
        let spread = spread_curve(&[&a, &b, &c], |r| r.loss);
        assert_eq!(spread[..2], [(0.0, 4.0, 4.2), (10.0, 2.0, 2.4)]);
        // Step 20: one run is not finite, so neither is the spread; step 30: not every run has it.
        assert!(spread.len() == 3 && spread[2].0 == 20.0 && spread[2].1.is_nan() && spread[2].2.is_nan());
        assert_eq!(spread.iter().map(|p| p.0).collect::<Vec<_>>(), [0.0, 10.0, 20.0]);
        assert_eq!(mean_curve(&[&a, &b, &c], |r| r.loss).len(), spread.len(), "the same steps as the mean");
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
        assert!(s.trained() && s.diverged_at.is_none() && s.runs == 2);
        // A diverged seed makes the group diverged but does not enter the means.
        let s = Summary::over_seeds("a", &[a, b, diverged]);
        assert_eq!((s.diverged_at, s.diverged_runs, s.runs), (Some(5), 1, 3));
        assert!((s.best_val.unwrap() - 2.2).abs() < 1e-12 && !s.trained());
    }
}
