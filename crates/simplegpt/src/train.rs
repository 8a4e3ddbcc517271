//! The training loop: one `Trainer` for every device, native and browser. `step()` is
//! async because every read-back from the device is (`into_data_async`): the browser
//! awaits it between steps, the CLI drives it with a blocking executor. Nothing is read
//! back on a step that is not logged, so the device is never stalled to print a number.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use web_time::Instant;

use crate::config::{Config, NormKind};
use crate::data::{Batch, Dataset, Split};
use crate::error::{Error, Result};
use crate::memory;
use crate::model::{DropoutKey, Gpt, Probes};
use crate::optim::{AdamW, GradSum, learning_rate};
use crate::params::{mean_all, read_f32};
use crate::record::StepRecord;

/// The state a checkpoint must restore for a resumed run to continue bit for bit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The next step to run.
    pub step: usize,
    pub first_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub diverged_at: Option<usize>,
}

pub struct Trainer {
    pub config: Config,
    pub data: Dataset,
    /// The autodiff device the model trains on.
    pub device: Device,
    pub model: Gpt,
    pub optimizer: AdamW,
    pub progress: Progress,
    last_log: Option<(Instant, usize)>,
    /// The next training batch (its index, the batch), drawn while the last one trained.
    next_batch: Option<(u64, Batch)>,
}

impl Trainer {
    /// A fresh run: weights drawn from the seed. `config.model.vocab_size` is resolved from
    /// the data here when it is 0.
    pub fn new(mut config: Config, data: Dataset, device: &Device) -> Result<Trainer> {
        data.check_block_size(config.model.block_size)?;
        let vocab = data.tokenizer.vocab_size();
        if data.tokenizer.kind != config.model.tokenizer {
            return Err(Error::Input(format!(
                "{} is tokenised by {}, and the config's tokenizer is {}; set tokenizer = \"{}\" or give other data",
                data.name, data.tokenizer.kind, config.model.tokenizer, data.tokenizer.kind
            )));
        }
        if config.model.vocab_size == 0 {
            config.model.vocab_size = vocab;
        } else if config.model.vocab_size < vocab {
            return Err(Error::Input(format!(
                "vocab_size {} is smaller than the data's {vocab} {}; \
                 leave vocab_size at 0 to take it from the data",
                config.model.vocab_size,
                if data.tokenizer.kind == crate::data::TokenizerKind::Char { "distinct characters" } else { "tokens" }
            )));
        }
        config.validate()?;
        // Before any tensor exists: a run that cannot fit is refused here, not aborted by
        // the allocator later.
        memory::check(&config, device)?;
        let device = device.clone().autodiff();
        let model = config.model.init(config.train.seed, &device);
        Ok(Trainer {
            config,
            data,
            device,
            model,
            optimizer: AdamW::default(),
            progress: Progress::default(),
            last_log: None,
            next_batch: None,
        })
    }

    pub fn finished(&self) -> bool {
        self.progress.step > self.config.train.max_steps || self.progress.diverged_at.is_some()
    }

    pub fn tokens_per_step(&self) -> usize {
        let t = &self.config.train;
        t.batch_size * t.grad_accum * self.config.model.block_size
    }

    /// Runs step `progress.step`: evaluation if due, then (unless this is the step after
    /// the last) one optimizer update over `grad_accum` micro-batches. Returns the record
    /// when the step is logged.
    pub async fn step(&mut self) -> Result<Option<StepRecord>> {
        if self.finished() {
            return Ok(None);
        }
        // The CPU's other threads wait for this step's ops awake (`threads`).
        #[cfg(not(target_family = "wasm"))]
        if crate::device::is_cpu(&self.device) {
            crate::threads::keep_awake();
        }
        let cfg = self.config.train.clone();
        let step = self.progress.step;
        let last = step == cfg.max_steps;
        let lr = learning_rate(step, &cfg);
        let mut record = StepRecord { step, lr, ..Default::default() };
        let mut logged = false;

        if step % cfg.eval_interval == 0 || last {
            let started = Instant::now();
            let (train_loss, val_loss) = self.estimate_loss(step).await?;
            record.train_loss = Some(train_loss);
            record.val_loss = Some(val_loss);
            if val_loss.is_finite() && self.progress.best_val_loss.is_none_or(|b| val_loss < b) {
                self.progress.best_val_loss = Some(val_loss);
            }
            // Time spent evaluating is not training: the clock of the next tokens/s is moved
            // on by it. (On a GPU its read-back also waits for training work still queued,
            // which this then leaves out: the figure after an evaluation errs high, not low.)
            if let Some((since, _)) = &mut self.last_log {
                *since += started.elapsed();
            }
            logged = true;
        }
        if last {
            self.progress.step += 1;
            self.check_divergence(&mut record);
            return Ok(Some(record));
        }

        let log = step % cfg.log_interval == 0;
        let diag = step % cfg.diag_interval == 0;

        let mut grads = GradSum::default();
        let mut losses = Vec::new();
        let mut z_terms = Vec::new();
        let mut probes = Probes::default();
        for micro in 0..cfg.grad_accum {
            let index = (step * cfg.grad_accum + micro) as u64;
            let batch = match self.next_batch.take() {
                Some((i, batch)) if i == index => batch,
                _ => self.data.train_batch(&self.config, index),
            };
            let (x, y) = batch.tensors(&self.device);
            let key = DropoutKey { seed: cfg.seed, batch: index };
            // The next batch is drawn from the data (from disk, for shards that are not in
            // the page cache) while this one trains, so that a step never waits on it.
            let (next, ()) = alongside(
                || self.data.train_batch(&self.config, index + 1),
                || {
                    let logits = self.model.forward_train(x, Some(key), (diag && micro == 0).then_some(&mut probes));
                    // The gradient of the objective; the z-loss's term is logged apart from the loss.
                    let (loss, z_term) = self.model.loss_terms(logits, y, cfg.z_loss);
                    let g = match &z_term {
                        Some(z) => (loss.clone() + z.clone()).backward(),
                        None => loss.backward(),
                    };
                    z_terms.extend(z_term.map(|z| z.detach().inner()));
                    grads.add(&self.model, &g);
                    losses.push(loss.detach().inner());
                },
            );
            self.next_batch = Some((index + 1, next));
        }
        let loss = mean_all(Tensor::cat(losses, 0));
        let z_term = (!z_terms.is_empty()).then(|| mean_all(Tensor::cat(z_terms, 0)));

        // The mean gradient over micro-steps, then clipped to one global norm.
        let accum = 1.0 / cfg.grad_accum as f64;
        let grad_norm = grads.global_norm() * accum;
        let scale = if cfg.grad_clip > 0.0 {
            (grad_norm.clone().recip() * cfg.grad_clip).clamp_max(1.0) * accum
        } else {
            grad_norm.ones_like() * accum
        };
        let norms = diag.then(|| grads.norms());
        self.model = self.optimizer.update(self.model.clone(), grads, scale, lr, &cfg, self.config.model.fused);
        if self.config.model.norm == NormKind::Ngpt {
            // nGPT's matrices live on the unit sphere: each update is projected back onto it.
            self.model = self.model.clone().with_unit_vectors();
        }
        self.progress.step += 1;

        if log || diag {
            // One read-back for all of them, taken off in the order they were put in.
            let mut scalars = vec![loss, grad_norm];
            scalars.extend(z_term.clone());
            scalars.extend(norms.iter().flatten().map(|(_, n)| n.clone() * accum));
            scalars.extend(probes.block_rms.iter().map(|r| r.clone().inner()));
            scalars.extend(probes.attn_logit_max.iter().map(|m| m.clone().inner()));
            scalars.extend(probes.linear_rms.iter().map(|(_, r)| r.clone().inner()));
            let mut values = read_scalars(scalars).await?.into_iter();
            record.loss = values.next();
            record.grad_norm = values.next();
            record.z_loss = z_term.and_then(|_| values.next());
            record.grad_norms = norms.map(|n| n.into_iter().map(|(path, _)| path).zip(values.by_ref()).collect());
            let mut next = |n: usize| values.by_ref().take(n).collect::<Vec<f64>>();
            let Probes { block_rms, attn_logit_max, linear_rms, .. } = probes;
            record.act_rms = (!block_rms.is_empty()).then(|| next(block_rms.len()));
            record.attn_logit_max = (!attn_logit_max.is_empty()).then(|| next(attn_logit_max.len()));
            record.linear_rms = (!linear_rms.is_empty())
                .then(|| linear_rms.into_iter().map(|(path, _)| path).zip(next(usize::MAX)).collect());
            if self.progress.first_loss.is_none() {
                self.progress.first_loss = record.loss;
            }
            let now = Instant::now();
            if let Some((then, then_step)) = self.last_log {
                let secs = now.duration_since(then).as_secs_f64();
                if secs > 0.0 {
                    record.tokens_per_sec = Some((step - then_step) as f64 * self.tokens_per_step() as f64 / secs);
                }
            }
            self.last_log = Some((now, step));
            logged = true;
        }
        // A loss is only known on a logged step, so divergence is only found on one.
        self.check_divergence(&mut record);
        Ok(logged.then_some(record))
    }

    /// Marks the run diverged (once) when the record's training or validation loss is NaN/inf
    /// or far above the first logged loss.
    fn check_divergence(&mut self, record: &mut StepRecord) {
        let (first, factor) = (self.progress.first_loss, self.config.train.diverge_factor);
        for loss in [record.loss, record.val_loss].into_iter().flatten() {
            let why = if !loss.is_finite() {
                format!("loss is {loss}")
            } else if let Some(first) = first.filter(|f| loss > f * factor) {
                format!("loss {loss:.4} is above {factor} x the first loss {first:.4}")
            } else {
                continue;
            };
            if self.progress.diverged_at.is_none() {
                self.progress.diverged_at = Some(record.step);
                record.diverged = Some(why);
            }
            return;
        }
    }

    /// Mean loss over `eval_iters` batches of each split, with dropout off: the
    /// cross-entropy alone (without z_loss's term, so that it compares across runs). The
    /// batches depend on (seed, step) only.
    async fn estimate_loss(&self, step: usize) -> Result<(f64, f64)> {
        let model = self.model.valid();
        let device = self.device.clone().inner();
        let (t, b) = (self.config.model.block_size, self.config.train.batch_size);
        let mut means = Vec::new();
        for (split, purpose) in [(Split::Train, "eval-train"), (Split::Val, "eval-val")] {
            let mut losses = Vec::new();
            for i in 0..self.config.train.eval_iters {
                let index = (step * self.config.train.eval_iters + i) as u64;
                let (x, y) = self.data.batch(split, purpose, self.config.train.seed, index, b, t).tensors(&device);
                losses.push(model.loss(model.forward(x), y));
            }
            means.push(mean_all(Tensor::cat(losses, 0)));
        }
        let v = read_scalars(means).await?;
        Ok((v[0], v[1]))
    }
}

/// Reads scalar tensors back with one transfer.
pub async fn read_scalars(scalars: Vec<Tensor<1>>) -> Result<Vec<f64>> {
    Ok(read_f32(Tensor::cat(scalars, 0)).await?.into_iter().map(f64::from).collect())
}

/// `draw()` and `work()` at the same time: `draw` on a thread of its own (native), or first
/// (in the browser, which has no threads here).
fn alongside<A: Send, B>(draw: impl FnOnce() -> A + Send, work: impl FnOnce() -> B) -> (A, B) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::thread::scope(|s| {
            let drawn = s.spawn(draw);
            let done = work();
            (drawn.join().expect("drawing a batch does not panic"), done)
        })
    }
    #[cfg(target_arch = "wasm32")]
    {
        (draw(), work())
    }
}
