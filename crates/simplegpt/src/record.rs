//! Run records: a header that pins down everything a run's numbers depend on (config, seed,
//! the initial weights, the data and the first batches, as checksums; backend, adapter,
//! precision, versions, target), followed by the per-step metrics. Native runs write the
//! header as `run.json` beside `metrics.jsonl`; the browser exports header and steps as one
//! JSON object of the same shape. `repro` compares any two.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Config;
use crate::data::{Dataset, TokenizerKind, Tokens};
use crate::error::{Error, Result, io};
use crate::model::Gpt;
use crate::params::{self, f32_bytes, read_f32};
use crate::rng::{fnv1a, hex};

pub const FORMAT: &str = "simplegpt-run-1";
/// A run directory's header, beside its metrics.
pub const HEADER_FILE: &str = "run.json";
/// A run directory's logged steps, one `StepRecord` per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The burn version this build is pinned to (Cargo.toml says `=0.22.1`).
const BURN_VERSION: &str = "0.22.1";
/// `RunHeader::data_source` of a run on the embedded corpus.
pub const EMBEDDED_DATA: &str = "embedded";
/// How many training batches `batches_checksum` covers.
const CHECKSUM_BATCHES: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    pub format: String,
    pub config: Config,
    /// FNV-1a 64 of the config's TOML.
    pub config_hash: String,
    pub seed: u64,
    /// FNV-1a 64 over every initial weight (path, then its f32 bytes), read back from the device.
    pub init_checksum: String,
    /// FNV-1a 64 over the vocabulary and the token ids of both splits.
    pub data_checksum: String,
    /// FNV-1a 64 over the token ids of the first training batches.
    pub batches_checksum: String,
    pub backend: String,
    pub adapter: String,
    pub precision: String,
    pub simplegpt_version: String,
    pub burn_version: String,
    /// e.g. "x86_64-linux", "wasm32-unknown".
    pub target: String,
    /// Where the data came from (`embedded`, `tinyshakespeare` or a file's path), so that
    /// `--resume` finds it again. Not part of the run's identity: `data_checksum` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<String>,
}

/// One line of `metrics.jsonl`: what happened at one logged step. Fields that were not
/// measured at this step are absent; a number that was measured and not finite (a loss
/// gone NaN) is null, as JSON has no NaN, and reads back as NaN (`not_finite`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub lr: f64,
    /// Training loss of this step's batch (mean over its micro-batches): the cross-entropy.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::number")]
    pub loss: Option<f64>,
    /// With the config's `z_loss` > 0, the z-loss term the step minimised on top of `loss`
    /// (`z_loss` x the mean of log(Z)^2), mean over its micro-batches.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::number")]
    pub z_loss: Option<f64>,
    /// Estimated over `eval_iters` batches of each split, at evaluation steps.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::number")]
    pub train_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::number")]
    pub val_loss: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::number")]
    pub grad_norm: Option<f64>,
    /// Gradient norm of each parameter, by path (diagnostic steps).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::by_path")]
    pub grad_norms: Option<BTreeMap<String, f64>>,
    /// RMS of the activations leaving each block (diagnostic steps).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::list")]
    pub act_rms: Option<Vec<f64>>,
    /// The largest attention logit of each layer (diagnostic steps).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::list")]
    pub attn_logit_max: Option<Vec<f64>>,
    /// RMS of each linear map's output before any norm, by the linear's path (diagnostic steps).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::by_path")]
    pub linear_rms: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "not_finite::number")]
    pub tokens_per_sec: Option<f64>,
    /// Set on the record at which the run was found to diverge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
}

/// Reading `StepRecord`'s numbers back from JSON, where serde_json wrote each non-finite one
/// as null: a null that is there reads as NaN, so that a record read back (a resumed run's,
/// the browser's) says what the one in memory said. An absent field stays None.
mod not_finite {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    fn nan(v: Option<f64>) -> f64 {
        v.unwrap_or(f64::NAN)
    }

    pub fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Some(nan(Option::deserialize(d)?)))
    }

    pub fn by_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, f64>>, D::Error> {
        let map = BTreeMap::<String, Option<f64>>::deserialize(d)?;
        Ok(Some(map.into_iter().map(|(k, v)| (k, nan(v))).collect()))
    }

    pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
        Ok(Some(Vec::<Option<f64>>::deserialize(d)?.into_iter().map(nan).collect()))
    }
}

/// A whole run: its header and its logged steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub header: RunHeader,
    pub steps: Vec<StepRecord>,
}

fn hash_ids(ids: &[u32]) -> u64 {
    fnv1a(&ids.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>())
}

/// `hash_ids` of every id of `tokens`, a block at a time (shards are never copied whole).
fn hash_tokens(tokens: &Tokens) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    tokens.for_each_block(|ids| {
        for id in ids {
            for b in id.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100000001b3);
            }
        }
    });
    h
}

/// The checksum of a dataset: its vocabulary (a character tokenizer's characters, or
/// `tokenizer=gpt2`) and both splits' token ids.
pub fn data_checksum(data: &Dataset) -> String {
    let vocab: String = match data.tokenizer.kind {
        TokenizerKind::Char => data.tokenizer.chars.iter().collect(),
        kind => format!("tokenizer={kind}"),
    };
    let (train, val) = (hash_tokens(&data.train), hash_tokens(&data.val));
    hex(fnv1a(&[vocab.as_bytes(), &train.to_le_bytes(), &val.to_le_bytes()].concat()))
}

impl RunHeader {
    /// The header of a run about to start (its trainer's config, initial model and data),
    /// taken before its first step: the weights are read back from the device, so the
    /// checksum is of what the device really holds.
    pub async fn new(config: &Config, model: &Gpt, data: &Dataset, backend: &str, adapter: &str) -> Result<RunHeader> {
        let mut bytes = Vec::new();
        for (path, t, _) in params::named(model) {
            bytes.extend_from_slice(path.as_bytes());
            bytes.extend(f32_bytes(&read_f32(t).await?));
        }
        let mut batch_ids = Vec::new();
        for i in 0..CHECKSUM_BATCHES {
            let b = data.train_batch(config, i as u64);
            batch_ids.extend(b.x);
            batch_ids.extend(b.y);
        }
        let target = format!(
            "{}-{}",
            std::env::consts::ARCH,
            if cfg!(target_family = "wasm") { "unknown" } else { std::env::consts::OS }
        );
        Ok(RunHeader {
            format: FORMAT.into(),
            config: config.clone(),
            config_hash: hex(fnv1a(config.to_toml().as_bytes())),
            seed: config.train.seed,
            init_checksum: hex(fnv1a(&bytes)),
            data_checksum: data_checksum(data),
            batches_checksum: hex(hash_ids(&batch_ids)),
            backend: backend.into(),
            adapter: adapter.into(),
            precision: "f32".into(),
            simplegpt_version: env!("CARGO_PKG_VERSION").into(),
            burn_version: BURN_VERSION.into(),
            target,
            data_source: None,
        })
    }

    /// Checks that `data` is the data this run started with (the checksum), so that a resumed
    /// run continues on the same text; the message says which data that was.
    pub fn check_same_data(&self, data: &Dataset) -> Result<()> {
        let now = data_checksum(data);
        if self.data_checksum != now {
            let what_to_do = match self.data_source.as_deref() {
                Some(EMBEDDED_DATA) => "it started on the embedded corpus: resume without --data".to_string(),
                Some(s) => format!("it recorded --data {s}: resume with that text"),
                None => "resume with the --data it was started with".to_string(),
            };
            return Err(Error::Input(format!(
                "the data differs from the data this run started with (checksum {now}, the run's {}); {what_to_do}",
                self.data_checksum
            )));
        }
        Ok(())
    }

    /// Whether `other` is the header of this very run: everything but `data_source` (one
    /// text may be named several ways; the checksum says whether it is the same).
    pub fn same_run(&self, other: &RunHeader) -> bool {
        RunHeader { data_source: other.data_source.clone(), ..self.clone() } == *other
    }
}

/// How two runs compare.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// (what, value in A, value in B) for everything that must be identical.
    pub identity: Vec<(&'static str, String, String)>,
    pub steps_compared: usize,
    pub max_abs: f64,
    pub max_abs_step: Option<usize>,
    pub max_rel: f64,
    /// The first step whose relative loss difference exceeds the tolerance.
    pub first_past_tolerance: Option<usize>,
    pub tolerance: f64,
    /// The step each run diverged at (A, B), if it did.
    pub diverged: (Option<usize>, Option<usize>),
}

impl Comparison {
    pub fn identity_ok(&self) -> bool {
        self.identity.iter().all(|(_, a, b)| a == b)
    }

    pub fn passed(&self) -> bool {
        self.identity_ok() && self.first_past_tolerance.is_none() && self.steps_compared > 0
    }

    pub fn bitwise(&self) -> bool {
        self.passed() && self.max_abs == 0.0
    }
}

/// Compares B against A: identity fields, then the loss at every step both logged.
/// `tolerance` bounds the relative difference |a - b| / max(|a|, |b|).
pub fn compare(a: &RunRecord, b: &RunRecord, tolerance: f64) -> Comparison {
    let (ha, hb) = (&a.header, &b.header);
    let identity = vec![
        ("config", ha.config_hash.clone(), hb.config_hash.clone()),
        ("seed", ha.seed.to_string(), hb.seed.to_string()),
        ("initial weights", ha.init_checksum.clone(), hb.init_checksum.clone()),
        ("data", ha.data_checksum.clone(), hb.data_checksum.clone()),
        ("first batches", ha.batches_checksum.clone(), hb.batches_checksum.clone()),
    ];
    let steps_b: BTreeMap<usize, &StepRecord> = b.steps.iter().map(|r| (r.step, r)).collect();
    let diverged = |x: &RunRecord| x.steps.iter().find(|r| r.diverged.is_some()).map(|r| r.step);
    let mut c = Comparison {
        identity,
        steps_compared: 0,
        max_abs: 0.0,
        max_abs_step: None,
        max_rel: 0.0,
        first_past_tolerance: None,
        tolerance,
        diverged: (diverged(a), diverged(b)),
    };
    let differ = |c: &mut Comparison, step: usize, abs: f64, rel: f64| {
        if abs > c.max_abs {
            c.max_abs = abs;
            c.max_abs_step = Some(step);
        }
        c.max_rel = c.max_rel.max(rel);
        if rel > tolerance && c.first_past_tolerance.is_none_or(|f| step < f) {
            c.first_past_tolerance = Some(step);
        }
    };
    // A step's training loss: None where none was measured (an evaluation-only step),
    // Some(None) where it was not finite (NaN in memory, null in JSON, which has no NaN).
    let loss = |r: &StepRecord| match r.loss {
        Some(l) if l.is_finite() => Some(Some(l)),
        Some(_) => Some(None),
        None if r.diverged.is_some() => Some(None),
        None => None,
    };
    for r in &a.steps {
        let Some(rb) = steps_b.get(&r.step) else { continue };
        // Non-finite on both sides is the same; on one side only, an infinite difference.
        let (abs, rel) = match (loss(r), loss(rb)) {
            (None, _) | (_, None) | (Some(None), Some(None)) => continue,
            (Some(Some(la)), Some(Some(lb))) if la == lb => (0.0, 0.0),
            (Some(Some(la)), Some(Some(lb))) => ((la - lb).abs(), (la - lb).abs() / la.abs().max(lb.abs())),
            _ => (f64::INFINITY, f64::INFINITY),
        };
        c.steps_compared += 1;
        differ(&mut c, r.step, abs, rel);
    }
    // One run diverging where the other does not is a parting of ways, even where the
    // shorter run has no step left to compare.
    let (da, db) = c.diverged;
    if da != db {
        let step = da.into_iter().chain(db).min().expect("one of them diverged");
        differ(&mut c, step, f64::INFINITY, f64::INFINITY);
    }
    c
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, a, b) in &self.identity {
            let verdict = if a == b { "same" } else { "DIFFERENT" };
            writeln!(f, "  {what:<16} {a:<18} {b:<18} {verdict}")?;
        }
        writeln!(f, "  steps compared   {}", self.steps_compared)?;
        if self.diverged != (None, None) {
            let at = |d: Option<usize>| d.map_or("never".to_string(), |s| format!("step {s}"));
            writeln!(f, "  diverged at      A: {}, B: {}", at(self.diverged.0), at(self.diverged.1))?;
        }
        let at = self.max_abs_step.map_or(String::new(), |s| format!(" (step {s})"));
        writeln!(f, "  max |loss diff|  {:.2e}{at}, max relative {:.2e}", self.max_abs, self.max_rel)?;
        match self.first_past_tolerance {
            Some(s) => writeln!(f, "  first step past tolerance {:.0e}: {s}", self.tolerance)?,
            None => writeln!(f, "  no step past tolerance {:.0e}", self.tolerance)?,
        }
        let verdict = if !self.identity_ok() {
            "FAIL: the runs differ in what must be identical"
        } else if self.steps_compared == 0 {
            "FAIL: no logged step in common"
        } else if self.first_past_tolerance.is_some() {
            "FAIL: the losses part ways"
        } else if self.bitwise() {
            "PASS: bitwise identical losses"
        } else {
            "PASS: within tolerance"
        };
        write!(f, "verdict: {verdict}")
    }
}

/// The losses of several runs side by side, at every tenth logged step and the last, the
/// first run's column first: what `repro --backends` prints before comparing.
pub struct LossTable<'a>(pub &'a [RunRecord]);

impl std::fmt::Display for LossTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let runs = self.0;
        let header: Vec<String> = runs.iter().map(|r| format!("{:>14}", r.header.backend)).collect();
        write!(f, "{:>6} {}", "step", header.join(" "))?;
        let Some(first) = runs.first() else { return Ok(()) };
        let steps: Vec<usize> = first.steps.iter().filter(|r| r.loss.is_some()).map(|r| r.step).collect();
        for &step in steps.iter().filter(|&&s| s % 10 == 0 || Some(&s) == steps.last()) {
            let cells: Vec<String> = runs
                .iter()
                .map(|r| {
                    r.steps
                        .iter()
                        .find(|x| x.step == step)
                        .and_then(|x| x.loss)
                        .map_or(format!("{:>14}", "-"), |l| format!("{l:>14.8}"))
                })
                .collect();
            write!(f, "\n{step:>6} {}", cells.join(" "))?;
        }
        Ok(())
    }
}

/// Reads a run record: a run directory (run.json + metrics.jsonl) or one JSON file (the
/// browser's export).
pub fn read(path: &Path) -> Result<RunRecord> {
    if path.is_dir() {
        return Ok(RunRecord { header: read_header(path)?, steps: read_metrics(&path.join(METRICS_FILE))? });
    }
    let text = std::fs::read_to_string(path).map_err(io("cannot read run record", path))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Input(format!(
            "{} is not a simplegpt run record (a run directory or an exported JSON) ({e})",
            path.display()
        ))
    })
}

/// The header (run.json) of a run directory, without its metrics: a run killed mid-write
/// may have left a torn last metrics line, which resuming drops.
pub fn read_header(dir: &Path) -> Result<RunHeader> {
    let path = dir.join(HEADER_FILE);
    let text = std::fs::read_to_string(&path).map_err(io("cannot read run header", &path))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Input(format!("{} is not a simplegpt run header ({e})", path.display())))
}

/// Reads a metrics.jsonl file: every whole line. A last line without its newline is a
/// record whose writing was cut off (a kill, a full disk): it is not a record, and is left
/// out, so that no reader sees a torn one.
pub fn read_metrics(path: &Path) -> Result<Vec<StepRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Input(format!(
                "{} is missing: the run logged no step (or the file was removed)",
                path.display()
            )));
        }
        Err(e) => return Err(Error::Io(format!("cannot read {}", path.display()), e)),
    };
    text.split_inclusive('\n')
        .enumerate()
        .filter(|(_, l)| l.ends_with('\n') && !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::Input(format!("{} line {}: not a metrics record ({e})", path.display(), i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(losses: &[Option<f64>], diverged_at: Option<usize>) -> RunRecord {
        let s = String::new;
        let header = RunHeader {
            format: FORMAT.into(),
            config: Config::preset("tiny").unwrap(),
            config_hash: s(),
            seed: 1,
            init_checksum: s(),
            data_checksum: s(),
            batches_checksum: s(),
            backend: s(),
            adapter: s(),
            precision: s(),
            simplegpt_version: s(),
            burn_version: s(),
            target: s(),
            data_source: None,
        };
        let steps = losses
            .iter()
            .enumerate()
            .map(|(step, &loss)| StepRecord {
                step,
                loss,
                diverged: (Some(step) == diverged_at).then(|| "loss is NaN".into()),
                ..Default::default()
            })
            .collect();
        RunRecord { header, steps }
    }

    #[test]
    fn a_shorter_runs_evaluation_only_last_step_is_no_difference() {
        let long = record(&[Some(4.0), Some(3.5), Some(3.0)], None);
        // A 1-step run ends with step 1 evaluated only: no training loss, and no divergence.
        let short = record(&[Some(4.0), None], None);
        let c = compare(&long, &short, 0.0);
        assert_eq!((c.steps_compared, c.max_abs, c.first_past_tolerance), (1, 0.0, None));
        assert!(c.passed());
    }

    #[test]
    fn runs_that_diverge_differently_do_not_reproduce() {
        let finite = record(&[Some(4.0), Some(3.5), Some(3.0)], None);
        assert!(compare(&finite, &finite, 0.0).bitwise());
        // B's loss went NaN (recorded as null) at step 1 and it stopped there: steps 0 agree.
        let blown = record(&[Some(4.0), None], Some(1));
        for (a, b) in [(&finite, &blown), (&blown, &finite)] {
            let c = compare(a, b, 1e-3);
            assert!(!c.passed(), "{c}");
            assert_eq!(c.first_past_tolerance, Some(1));
            assert!(c.to_string().contains("diverged at"), "{c}");
        }
        // Both diverged at the same step: the same run.
        assert!(compare(&blown, &blown, 0.0).passed());
        // A is slightly off at step 2 only.
        let off = record(&[Some(4.0), Some(3.5), Some(3.01)], None);
        let c = compare(&finite, &off, 1e-3);
        assert_eq!((c.first_past_tolerance, c.max_abs_step, c.steps_compared), (Some(2), Some(2), 3));
    }

    #[test]
    fn a_loss_table_shows_every_tenth_step_and_the_last_for_each_run() {
        let losses: Vec<Option<f64>> = (0..13).map(|i| Some(4.0 - i as f64 * 0.125)).collect();
        let (mut a, mut b) = (record(&losses, None), record(&losses[..12], None));
        a.header.backend = "cpu".into();
        b.header.backend = "wgpu".into();
        let table = LossTable(&[a, b]).to_string();
        let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["step", "cpu", "wgpu"]);
        assert_eq!(rows[1], ["0", "4.00000000", "4.00000000"]);
        assert_eq!(rows[2], ["10", "2.75000000", "2.75000000"]);
        assert_eq!(rows[3], ["12", "2.50000000", "-"], "the first run's last step; the second has none");
        assert_eq!(rows.len(), 4);
    }

    #[test]
    fn a_not_finite_number_reads_back_as_nan_and_an_absent_one_as_none() {
        let r = StepRecord {
            step: 3,
            loss: Some(f64::NAN),
            grad_norms: Some([("a".to_string(), f64::INFINITY), ("b".to_string(), 1.5)].into()),
            act_rms: Some(vec![f64::NAN, 2.0]),
            diverged: Some("loss is NaN".into()),
            ..Default::default()
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""loss":null"#) && !json.contains("val_loss"), "{json}");
        let back: StepRecord = serde_json::from_str(&json).unwrap();
        assert!(back.loss.is_some_and(f64::is_nan) && back.val_loss.is_none() && back.tokens_per_sec.is_none());
        let norms = back.grad_norms.unwrap();
        assert!(norms["a"].is_nan() && norms["b"] == 1.5);
        let rms = back.act_rms.unwrap();
        assert!(rms[0].is_nan() && rms[1] == 2.0);
    }
}
