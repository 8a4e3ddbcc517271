//! What runs a study trains: variants given as `key=value` overrides, each with several
//! seeds or over a grid of learning rates, and the names of their run directories.

use crate::config::Config;
use crate::error::{Error, Result};

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

/// A sweep's runs: each variant at `points` learning rates log-spaced from `lr_min` to
/// `lr_max`, named `VARIANT/lr-X` (X to two significant digits), with min_lr a tenth of the
/// lr (as nanoGPT's schedule; `refuse_swept_keys` refuses a user's own lr or min_lr, which
/// this would overwrite). Every config is checked before the first run trains.
pub fn sweep_jobs(
    variants: &[Variant],
    base: &Config,
    lr_min: f64,
    lr_max: f64,
    points: usize,
) -> Result<Vec<(String, Config)>> {
    if !(lr_min > 0.0 && lr_max >= lr_min && lr_max.is_finite()) {
        return Err(Error::Input("need 0 < --lr-min <= --lr-max (finite)".into()));
    }
    let grid = log_grid(lr_min, lr_max, points);
    let names: Vec<String> = grid.iter().map(|lr| format!("lr-{lr:.1e}")).collect();
    if (1..names.len()).any(|i| names[i] == names[i - 1]) {
        return Err(Error::Input(format!(
            "{points} points from {lr_min} to {lr_max} give learning rates that agree to two digits; use fewer --points or a wider range"
        )));
    }
    let mut jobs = Vec::new();
    for v in variants {
        for (lr, dir) in grid.iter().zip(&names) {
            let mut c = v.apply(base)?;
            c.train.lr = *lr;
            c.train.min_lr = lr / 10.0;
            c.validate()?;
            jobs.push((format!("{}/{dir}", v.name), c));
        }
    }
    Ok(jobs)
}

/// Refuses a sweep given lr or min_lr (in the --config file's text `toml`, the base's
/// `sets`, or a variant): the sweep sets both for each run, and would overwrite them.
pub fn refuse_swept_keys(toml: Option<&str>, sets: &[String], variants: &[Variant]) -> Result<()> {
    for key in ["lr", "min_lr"] {
        let in_a_variant = variants.iter().any(|v| Config::gives_key(None, &v.sets, key));
        if Config::gives_key(toml, sets, key) || in_a_variant {
            return Err(Error::Input(
                "sweep sets lr and min_lr itself; drop them from the --config file, --set and --variant, \
                 and give the range with --lr-min and --lr-max"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// `n` learning rates log-spaced from `lo` to `hi` inclusive.
pub fn log_grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![lo];
    }
    (0..n).map(|i| lo * (hi / lo).powf(i as f64 / (n - 1) as f64)).collect()
}

/// Run names `variant/seed-S` (or `variant/lr-X/seed-S`) belong to `variant`; a name
/// without a '/' is a variant of its own.
pub fn variant_of(run: &str) -> &str {
    run.split('/').next().unwrap_or(run)
}

/// The indices of `keys` grouped by equal key, groups in order of first appearance: the
/// seeds of one variant (key: the variant), or of one variant at one learning rate.
pub fn group_by<K: PartialEq>(keys: impl IntoIterator<Item = K>) -> Vec<(K, Vec<usize>)> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    groups
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
    fn a_sweep_sets_each_runs_lr_and_refuses_the_users_own() {
        let base = Config::preset("tiny").unwrap();
        let variants = Variant::parse_all(&["a:norm=simple".into(), "b:norm=pre_ln".into()]).unwrap();
        let jobs = sweep_jobs(&variants, &base, 1e-3, 1.0, 4).unwrap();
        let names: Vec<&str> = jobs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "a/lr-1.0e-3",
                "a/lr-1.0e-2",
                "a/lr-1.0e-1",
                "a/lr-1.0e0",
                "b/lr-1.0e-3",
                "b/lr-1.0e-2",
                "b/lr-1.0e-1",
                "b/lr-1.0e0"
            ]
        );
        let (_, c) = &jobs[2];
        assert!((c.train.lr - 0.1).abs() < 1e-15 && (c.train.min_lr - 0.01).abs() < 1e-15, "{:?}", c.train);
        assert!(
            sweep_jobs(&variants, &base, 1e-3, 1.04e-3, 3).unwrap_err().to_string().contains("agree to two digits")
        );
        assert!(sweep_jobs(&variants, &base, 0.0, 1.0, 3).is_err());
        let with_lr = Variant::parse_all(&["c:norm=simple,min_lr=1e-4".into()]).unwrap();
        assert!(refuse_swept_keys(None, &[], &variants).is_ok());
        assert!(refuse_swept_keys(None, &[], &with_lr).is_err());
        assert!(refuse_swept_keys(None, &["lr=0.5".into()], &variants).is_err());
        assert!(refuse_swept_keys(Some("[train]\nmin_lr = 0.5\n"), &[], &variants).is_err());
    }
}
