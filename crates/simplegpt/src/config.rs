//! Run configuration: one plain struct for the model, one for training, the presets (TOML
//! files in `presets/`), and `key=value` overrides (as nanoGPT's configurator). Everything
//! that shapes a run is here, and the resolved config is written next to every run. Over
//! 500 lines with its tests, because every key's check (`validate`) belongs beside the keys.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::TokenizerKind;

/// Where the normalisation goes. Which norms each variant has is answered by the methods
/// below; where they act is a few lines in `model::Block::forward`, `Attention` and `Mlp`.
/// QK-norm is also a switch of its own (`ModelConfig::qk_norm`), on any placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// GPT-2 / nanoGPT: LayerNorm on each sublayer's input.
    PreLn,
    /// LLaMA: RMSNorm on each sublayer's input.
    PreRms,
    /// `pre_rms` with `qk_norm = true`: RMSNorm on q and k (over the full width) right after
    /// their projections. Kept as a name of its own, which the records of earlier runs use.
    PreRmsQk,
    /// Original Transformer: LayerNorm after each residual add.
    PostLn,
    /// SimpleGPT: RMSNorm right after every linear map, no pre-norm; QK-norm by definition.
    Simple,
    /// Peri-LN (arXiv 2502.02732; Gemma 2's "sandwich"): RMSNorm on each sublayer's input
    /// and on its output, `x + norm(f(norm(x)))`.
    PeriLn,
    /// Mix-LN (arXiv 2412.13795): post-LN (LayerNorm) in the first floor(mix_ln_fraction x
    /// n_layer) blocks, pre-LN (LayerNorm) in the rest.
    MixLn,
    /// OLMo 2's reordered norm (arXiv 2501.00656): RMSNorm on each sublayer's output inside
    /// the residual branch, none on its input, `x + norm(f(x))`; QK-norm by definition.
    Olmo2,
    /// DeepNet (arXiv 2203.00555): post-LN (LayerNorm) with the residual scaled up,
    /// `norm(alpha x + f(x))`, alpha = (2 n_layer)^(1/4), and v, o and the MLP's linears drawn
    /// beta = (8 n_layer)^(-1/4) times smaller.
    #[serde(rename = "deepnorm")]
    DeepNorm,
    /// nGPT, the normalised Transformer (arXiv 2410.01131): the hidden state, the embeddings
    /// and every matrix's vectors along the width kept at unit norm, each sublayer moving
    /// the state towards its normalised output by learned steps, `norm(h + alpha (norm(f(h))
    /// - h))`; q and k unit per head (scaled by s_qk), the logits scaled by s_z, no norm
    /// layers. Defined with SwiGLU, RoPE, an untied head, no biases and residuals on.
    Ngpt,
    /// No normalisation at all.
    None,
}

impl NormKind {
    /// Every variant, in the order `--help` and the docs list them.
    pub const ALL: [NormKind; 11] = [
        NormKind::PreLn,
        NormKind::PreRms,
        NormKind::PreRmsQk,
        NormKind::PostLn,
        NormKind::Simple,
        NormKind::PeriLn,
        NormKind::MixLn,
        NormKind::Olmo2,
        NormKind::DeepNorm,
        NormKind::Ngpt,
        NormKind::None,
    ];

    /// A norm on each block's two sublayers (`ln_1`, `ln_2`): before them, or after the add.
    pub fn block_norms(self) -> bool {
        matches!(
            self,
            NormKind::PreLn
                | NormKind::PreRms
                | NormKind::PreRmsQk
                | NormKind::PostLn
                | NormKind::PeriLn
                | NormKind::MixLn
                | NormKind::DeepNorm
        )
    }

    /// A norm on each sublayer's output, before the residual add (`attn_out_norm`, `mlp_out_norm`).
    pub fn out_norms(self) -> bool {
        matches!(self, NormKind::PeriLn | NormKind::Olmo2)
    }

    /// LayerNorm (GPT-2, the original Transformer, and the post-LN variants Mix-LN and
    /// DeepNet build on); every other variant uses RMSNorm.
    pub fn layer_norm(self) -> bool {
        matches!(self, NormKind::PreLn | NormKind::PostLn | NormKind::MixLn | NormKind::DeepNorm)
    }

    /// QK-norm is part of the variant's definition, whatever `ModelConfig::qk_norm` says.
    pub fn implies_qk_norm(self) -> bool {
        matches!(self, NormKind::PreRmsQk | NormKind::Simple | NormKind::Olmo2)
    }

    /// A norm before the LM head: the post-LN variants' last block already ends in one, as
    /// nGPT's (at unit norm), `none` has none. (Mix-LN's last blocks are pre-LN: it has one.)
    pub fn final_norm(self) -> bool {
        !matches!(self, NormKind::PostLn | NormKind::DeepNorm | NormKind::Ngpt | NormKind::None)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// nanoGPT: Linear(4d) -> GELU -> Linear(d).
    Gelu,
    /// LLaMA: SiLU-gated, hidden width 2/3 of 4d so parameters match the GELU MLP.
    Swiglu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosKind {
    /// nanoGPT: a learned position embedding added to the token embedding.
    Learned,
    /// LLaMA: rotary position encoding applied to q and k.
    Rope,
}

/// Each kind prints as users type it in a config (`pre_ln`, `swiglu`, `rope`): its serde name.
macro_rules! display_as_in_config {
    ($($kind:ty),*) => {$(
        impl std::fmt::Display for $kind {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let name = serde_json::to_value(self).expect("a unit variant serialises");
                f.write_str(name.as_str().expect("as a string"))
            }
        }
    )*};
}
display_as_in_config!(NormKind, MlpKind, PosKind);

/// The placements as menus offer them: the page's norms comparison, and its labels.
impl NormKind {
    /// Its name in legends (`pre-LN`, `SimpleNorm`).
    pub fn label(self) -> &'static str {
        match self {
            NormKind::PreLn => "pre-LN",
            NormKind::PreRms => "pre-RMS",
            NormKind::PreRmsQk => "pre-RMS + QK-norm",
            NormKind::PostLn => "post-LN",
            NormKind::Simple => "SimpleNorm",
            NormKind::PeriLn => "Peri-LN",
            NormKind::MixLn => "Mix-LN",
            NormKind::Olmo2 => "OLMo 2",
            NormKind::DeepNorm => "DeepNorm",
            NormKind::Ngpt => "nGPT",
            NormKind::None => "no norm",
        }
    }

    /// What it is, in one line.
    pub fn about(self) -> &'static str {
        match self {
            NormKind::PreLn => "GPT-2 / nanoGPT: LayerNorm on each sublayer's input",
            NormKind::PreRms => "LLaMA: RMSNorm on each sublayer's input",
            NormKind::PreRmsQk => "pre-RMS, and RMSNorm on q and k after their projections",
            NormKind::PostLn => "the original Transformer: LayerNorm after each residual add",
            NormKind::Simple => "SimpleGPT: RMSNorm right after every linear map, no pre-norm",
            NormKind::PeriLn => "Peri-LN / Gemma 2's sandwich: RMSNorm on each sublayer's input and output",
            NormKind::MixLn => "Mix-LN: post-LN in the first quarter of the blocks, pre-LN in the rest",
            NormKind::Olmo2 => "OLMo 2's reordered norm: RMSNorm on each sublayer's output, and QK-norm",
            NormKind::DeepNorm => "DeepNet: post-LN with the residual scaled up and a smaller init",
            NormKind::Ngpt => "nGPT: every hidden state and weight vector on the unit sphere",
            NormKind::None => "no normalisation at all",
        }
    }

    /// The other settings the placement is defined with, as `--set` takes them: what a
    /// menu that offers it over any preset must set beside `norm`.
    pub fn defined_with(self) -> &'static [&'static str] {
        match self {
            NormKind::Ngpt => &["mlp=swiglu", "pos=rope", "tie_weights=false", "bias=false", "residual=true"],
            _ => &[],
        }
    }

    /// The placements a norms comparison trains unless told otherwise: the paper's baselines
    /// and SimpleNorm.
    pub const COMPARED_BY_DEFAULT: [NormKind; 4] =
        [NormKind::PreLn, NormKind::PostLn, NormKind::PreRmsQk, NormKind::Simple];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// 0 means "take it from the data's tokenizer" (the resolved config records the number);
    /// a larger number pads the vocabulary (nanoGPT pads GPT-2's 50257 to 50304).
    pub vocab_size: usize,
    /// `char` (the characters of the training text) or `gpt2` (GPT-2's BPE). Absent from
    /// the configs of earlier versions, which are `char`; left out of a `char` config's TOML,
    /// so that its text (and hash) is what it was.
    #[serde(default, skip_serializing_if = "TokenizerKind::is_char")]
    pub tokenizer: TokenizerKind,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub dropout: f64,
    pub bias: bool,
    pub tie_weights: bool,
    pub norm: NormKind,
    /// RMSNorm on q and k over the full width, right after their projections, on any `norm`
    /// (`pre_rms_qk`, `simple` and `olmo2` have it whatever this says). This key and the next
    /// two (and `TrainConfig::z_loss`) are absent from the configs of earlier versions, and
    /// left out of a config's TOML at their defaults, so that those configs read, and hash,
    /// as they did.
    #[serde(default, skip_serializing_if = "is_false")]
    pub qk_norm: bool,
    /// Mix-LN's share of post-LN blocks, the first floor(mix_ln_fraction x n_layer); in [0, 1).
    #[serde(default = "default_mix_ln_fraction", skip_serializing_if = "is_default_mix_ln_fraction")]
    pub mix_ln_fraction: f64,
    /// Gemma 2's soft cap on the logits, `c tanh(logits / c)` (in every forward pass:
    /// training, evaluation, sampling); 0 turns it off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub logit_softcap: f64,
    pub residual: bool,
    pub mlp: MlpKind,
    pub pos: PosKind,
    /// Our fused kernels (the norms, the attention, the cross-entropy, GELU and AdamW's step,
    /// on the CPU and the GPU: `simplegpt_shaders::{norm, causal_attention, cross_entropy,
    /// gelu, adamw_step}`) where there is one, else burn's tensor ops; the two differ by
    /// rounding (AdamW's step on the CPU excepted: the same bits), and on the GPU in GELU's
    /// gradient, which burn's takes from GELU's tanh approximation (up to 8.7e-4 from exact
    /// GELU's), so `false` lets a user compare. Absent from configs of earlier versions and
    /// left out of the TOML when true, so that their text (and hash) is what it was.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub fused: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

const DEFAULT_MIX_LN_FRACTION: f64 = 0.25;

fn default_mix_ln_fraction() -> f64 {
    DEFAULT_MIX_LN_FRACTION
}

fn is_default_mix_ln_fraction(fraction: &f64) -> bool {
    *fraction == DEFAULT_MIX_LN_FRACTION
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl ModelConfig {
    /// QK-norm: asked for, or part of the norm variant.
    pub fn has_qk_norm(&self) -> bool {
        self.qk_norm || self.norm.implies_qk_norm()
    }

    /// How many of the first blocks normalise after the residual add: all of them for
    /// post-LN and DeepNorm, Mix-LN's floor(mix_ln_fraction x n_layer), else none.
    pub fn post_norm_blocks(&self) -> usize {
        match self.norm {
            NormKind::PostLn | NormKind::DeepNorm => self.n_layer,
            NormKind::MixLn => (self.mix_ln_fraction * self.n_layer as f64).floor() as usize,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub seed: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_steps: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    /// The cosine reaches `min_lr` here (nanoGPT's `lr_decay_iters`).
    pub lr_decay_steps: usize,
    pub weight_decay: f64,
    /// nanoGPT decays only weights of rank >= 2; the SimpleGPT reference decays everything.
    pub decay_all: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (one norm over all parameters); 0 disables it.
    pub grad_clip: f64,
    /// PaLM's z-loss (also OLMo 2's): training minimises the cross-entropy plus `z_loss` x the
    /// mean of log(Z)^2 (Z: the softmax's normaliser), logged apart as `z_loss`; every loss
    /// reported as a loss (`loss`, `train_loss`, `val_loss`) is the cross-entropy alone.
    /// 0 turns it off, and is left out of a config's TOML.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub z_loss: f64,
    pub log_interval: usize,
    pub eval_interval: usize,
    pub eval_iters: usize,
    /// Every this many steps: per-parameter gradient norms and per-block activation RMS.
    pub diag_interval: usize,
    /// A loss above `diverge_factor` x the first logged loss (or NaN/inf) ends the run.
    pub diverge_factor: f64,
    /// Write a checkpoint at every evaluation (and at the end).
    pub checkpoint: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub train: TrainConfig,
}

/// A named config. Each is a TOML file in the repository's `presets/` (compiled in), with
/// every key, for a user to read and copy.
pub struct Preset {
    pub name: &'static str,
    /// One line on what it is, for `--help` and the page's menu.
    pub about: &'static str,
    pub toml: &'static str,
}

/// The presets, the default (`tiny`) first.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "tiny",
        about: "the blog's one-layer model: d 64, 2 heads, context 64, batch 32",
        toml: include_str!("../../../presets/tiny.toml"),
    },
    Preset {
        name: "micro",
        about: "tiny at d 32, context 32, batch 8: the quickest, for a first look in the browser",
        toml: include_str!("../../../presets/micro.toml"),
    },
    Preset {
        name: "small",
        about: "tiny with 4 layers, where the norms matter: pre-LN fails at a high LR, SimpleNorm trains",
        toml: include_str!("../../../presets/small.toml"),
    },
    Preset {
        name: "nanogpt-shakespeare-char",
        about: "nanoGPT's config/train_shakespeare_char.py, exactly",
        toml: include_str!("../../../presets/nanogpt-shakespeare-char.toml"),
    },
    Preset {
        name: "simplegpt-shakespeare-char",
        about: "the same with SimpleNorm (untied head, reference init)",
        toml: include_str!("../../../presets/simplegpt-shakespeare-char.toml"),
    },
    Preset {
        name: "gpt2-small",
        about: "nanoGPT's config/train_gpt2.py: GPT-2 small (124M) on GPT-2 BPE tokens, ~0.5M tokens a step",
        toml: include_str!("../../../presets/gpt2-small.toml"),
    },
    Preset {
        name: "simplegpt-small",
        about: "gpt2-small with SimpleNorm (untied head, reference init)",
        toml: include_str!("../../../presets/simplegpt-small.toml"),
    },
];

impl Config {
    /// A run's config as every front end builds it: the preset, then a TOML file's keys
    /// (its text, and a name for messages), then each `key=value`; validated.
    pub fn resolve(preset: &str, toml: Option<(&str, &str)>, sets: &[String]) -> Result<Config> {
        let mut config = Config::preset(preset)?;
        if let Some((text, origin)) = toml {
            config = Config::from_toml(text, config, origin)?;
        }
        for s in sets {
            config.set(s)?;
        }
        config.validate()?;
        Ok(config)
    }

    pub fn preset(name: &str) -> Result<Config> {
        let Some(preset) = PRESETS.iter().find(|p| p.name == name) else {
            return Err(Error::Input(format!(
                "unknown preset '{name}'; the presets are: {}",
                PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            )));
        };
        Ok(toml::from_str(preset.toml).expect("a preset file holds every key"))
    }

    /// Read a TOML file. Keys it leaves out keep the values of `base` (a preset).
    pub fn from_toml(text: &str, base: Config, origin: &str) -> Result<Config> {
        let overrides: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(0, |s| text[..s.start].matches('\n').count() + 1);
            Error::Input(format!("{origin}: bad TOML at line {line}: {}", one_line(e.message())))
        })?;
        let mut merged = base.table_with_every_key();
        for (section, value) in overrides {
            match (merged.get_mut(&section), value) {
                (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
                    for (key, v) in src {
                        let v = match dst.get(&key) {
                            Some(old) => as_type_of(v, old),
                            None => v,
                        };
                        if let Some(old) = dst.get(&key)
                            && old.type_str() != v.type_str()
                        {
                            return Err(Error::Input(format!(
                                "{origin}: [{section}] {key} = {v}: expected {}, like {old}",
                                old.type_str()
                            )));
                        }
                        dst.insert(key, v);
                    }
                }
                (_, v) if !v.is_table() => {
                    return Err(Error::Input(format!(
                        "{origin}: '{section}' is outside a section; put it under [model] or [train]"
                    )));
                }
                _ => {
                    return Err(Error::Input(format!(
                        "{origin}: unknown section '{section}'; expected [model] and [train]"
                    )));
                }
            }
        }
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Input(format!("{origin}: {}", one_line(e.message()))))
    }

    /// Whether a TOML file's text or `key=value` overrides give `key` (bare or with its
    /// section), whatever the value: for keys a command sets itself and will not take.
    pub fn gives_key(toml: Option<&str>, sets: &[String], key: &str) -> bool {
        let names_key = |k: &str| k.trim() == key || k.trim().split_once('.').is_some_and(|(_, k)| k == key);
        let in_toml = toml
            .and_then(|t| t.parse::<toml::Table>().ok())
            .is_some_and(|table| table.values().any(|section| section.as_table().is_some_and(|s| s.contains_key(key))));
        in_toml || sets.iter().any(|s| s.split_once('=').is_some_and(|(k, _)| names_key(k)))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serialises")
    }

    /// The config as a TOML table with every key: those its TOML leaves out at their
    /// defaults (see `ModelConfig::qk_norm`) are keys all the same, which `set` and a TOML
    /// file give values of their type.
    fn table_with_every_key(&self) -> toml::Table {
        let mut table = toml::Table::try_from(self).expect("a Config always serialises");
        let (m, t) = (&self.model, &self.train);
        let left_out: [(&str, &str, toml::Value); 6] = [
            ("model", "tokenizer", m.tokenizer.to_string().into()),
            ("model", "fused", m.fused.into()),
            ("model", "qk_norm", m.qk_norm.into()),
            ("model", "mix_ln_fraction", m.mix_ln_fraction.into()),
            ("model", "logit_softcap", m.logit_softcap.into()),
            ("train", "z_loss", t.z_loss.into()),
        ];
        for (section, key, value) in left_out {
            if let Some(toml::Value::Table(keys)) = table.get_mut(section) {
                keys.entry(key).or_insert(value);
            }
        }
        table
    }

    /// Apply one `section.key=value` or `key=value` override (the key is looked up in
    /// [model] then [train]). The value is parsed as TOML, so `norm=simple`, `lr=3e-3`
    /// and `residual=false` all work without quotes.
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (key, raw) = assignment
            .split_once('=')
            .ok_or_else(|| Error::Input(format!("--set '{assignment}': expected key=value, e.g. --set lr=3e-3")))?;
        let key = key.trim();
        let raw = raw.trim();
        let mut table = self.table_with_every_key();
        let (section, field) = match key.split_once('.') {
            Some((s, f)) => (s.to_string(), f.to_string()),
            None => {
                let found =
                    ["model", "train"].into_iter().find(|s| table[*s].as_table().is_some_and(|t| t.contains_key(key)));
                match found {
                    Some(s) => (s.to_string(), key.to_string()),
                    None => return Err(unknown_key(key)),
                }
            }
        };
        let Some(toml::Value::Table(section_table)) = table.get_mut(&section) else {
            return Err(unknown_key(key));
        };
        let Some(old) = section_table.get(&field) else {
            return Err(unknown_key(key));
        };
        let value = parse_value(raw, old).ok_or_else(|| {
            Error::Input(format!(
                "--set {key}={raw}: the number is out of range (whole numbers go up to {}); give a smaller one",
                i64::MAX
            ))
        })?;
        section_table.insert(field, value);
        *self = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            Error::Input(format!("--set {key}={raw}: bad value ({})", one_line(e.message())))
        })?;
        Ok(())
    }

    /// Checks that the numbers make a model and a run; called before anything is built.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let t = &self.train;
        let bad = |msg: String| Err(Error::Input(msg));
        if m.n_head == 0 || m.n_embd == 0 || m.n_layer == 0 || m.block_size == 0 {
            return bad("n_head, n_embd, n_layer and block_size must all be at least 1".into());
        }
        if t.batch_size == 0 || t.grad_accum == 0 {
            return bad("batch_size and grad_accum must be at least 1".into());
        }
        let dims = [
            ("n_layer", m.n_layer),
            ("n_head", m.n_head),
            ("n_embd", m.n_embd),
            ("block_size", m.block_size),
            ("vocab_size", m.vocab_size),
            ("batch_size", t.batch_size),
            ("grad_accum", t.grad_accum),
        ];
        if let Some((name, v)) = dims.iter().find(|(_, v)| *v > MAX_DIM) {
            return bad(format!("{name} = {v} is too large (at most {MAX_DIM})"));
        }
        // Sizes in 128 bits: with each dimension at most 2^24 they cannot overflow there.
        let (b, nh, tt, c) = (t.batch_size as u128, m.n_head as u128, m.block_size as u128, m.n_embd as u128);
        let params = m.num_params_u128();
        if params > MAX_ELEMENTS {
            return bad(format!(
                "the model would have {params} parameters, more than simplegpt's {MAX_ELEMENTS}; lower n_layer or n_embd"
            ));
        }
        // The tensors a dropout masks: the attention weights [B, nh, T, T] and the
        // activations [B, T, C].
        let (attention, activations) = (b * nh * tt * tt, b * tt * c);
        if m.dropout > 0.0 && attention.max(activations) > crate::rng::MASK_MAX_ELEMENTS as u128 {
            return bad(format!(
                "dropout masks hold at most 2^30 elements, but the attention weights have \
                 batch_size x n_head x block_size^2 = {attention} and the activations \
                 batch_size x block_size x n_embd = {activations}; lower batch_size (and raise \
                 grad_accum) or set dropout=0"
            ));
        }
        let tensors = [
            ("the attention weights, batch_size x n_head x block_size^2", attention),
            ("the MLP activations, batch_size x block_size x hidden", b * tt * m.mlp_hidden() as u128),
            ("the logits, batch_size x block_size x vocab_size", b * tt * m.vocab_size as u128),
        ];
        if let Some((what, n)) = tensors.iter().find(|(_, n)| *n > MAX_ELEMENTS) {
            return bad(format!(
                "{what} would hold {n} elements, more than simplegpt's {MAX_ELEMENTS} in one tensor; lower batch_size (and raise grad_accum) or block_size"
            ));
        }
        if m.n_embd % m.n_head != 0 {
            return bad(format!(
                "n_embd ({}) must be divisible by n_head ({}); pick e.g. n_embd={}",
                m.n_embd,
                m.n_head,
                m.n_embd.div_ceil(m.n_head) * m.n_head
            ));
        }
        if m.pos == PosKind::Rope && (m.n_embd / m.n_head) % 2 != 0 {
            return bad(format!("rope needs an even head size; n_embd/n_head is {}", m.n_embd / m.n_head));
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", m.dropout));
        }
        // Written so that NaN fails every check: a comparison with NaN is false.
        if !(t.lr > 0.0 && t.lr.is_finite() && t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            return bad(format!("need lr > 0 (finite) and 0 <= min_lr <= lr, got lr={}, min_lr={}", t.lr, t.min_lr));
        }
        if !((0.0..1.0).contains(&t.beta1) && (0.0..1.0).contains(&t.beta2) && t.eps > 0.0 && t.eps.is_finite()) {
            return bad(format!(
                "beta1 and beta2 must be in [0, 1) and eps > 0 (finite), got {}, {}, {}",
                t.beta1, t.beta2, t.eps
            ));
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return bad(format!("weight_decay must be >= 0 (finite), got {}", t.weight_decay));
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return bad(format!("grad_clip must be >= 0 (0 turns clipping off), got {}", t.grad_clip));
        }
        if t.log_interval == 0 || t.eval_interval == 0 || t.eval_iters == 0 || t.diag_interval == 0 {
            return bad("log_interval, eval_interval, eval_iters and diag_interval must be at least 1".into());
        }
        if m.norm == NormKind::Ngpt
            && !(m.mlp == MlpKind::Swiglu && m.pos == PosKind::Rope && !m.tie_weights && !m.bias && m.residual)
        {
            return bad("ngpt is defined with SwiGLU, RoPE, an untied head, no biases and residuals: \
                 set mlp=swiglu, pos=rope, tie_weights=false, bias=false, residual=true"
                .into());
        }
        if m.norm == NormKind::Ngpt && m.qk_norm {
            return bad("ngpt has no norm layers (q and k are made unit per head): leave qk_norm off".into());
        }
        if !(0.0..1.0).contains(&m.mix_ln_fraction) {
            return bad(format!(
                "mix_ln_fraction must be in [0, 1) (at 1 every block is post-LN: use norm = post_ln), got {}",
                m.mix_ln_fraction
            ));
        }
        if !(m.logit_softcap >= 0.0 && m.logit_softcap.is_finite()) {
            return bad(format!("logit_softcap must be >= 0 (0 turns it off), got {}", m.logit_softcap));
        }
        if !(t.z_loss >= 0.0 && t.z_loss.is_finite()) {
            return bad(format!("z_loss must be >= 0 (0 turns it off), got {}", t.z_loss));
        }
        if !(t.diverge_factor > 1.0) {
            return bad(format!("diverge_factor must be > 1, got {}", t.diverge_factor));
        }
        Ok(())
    }
}

/// The largest value of any one size in a config (layers, width, context, batch, ...).
const MAX_DIM: usize = 1 << 24;

/// The most parameters, and the most elements of one activation tensor, simplegpt allows:
/// their counts must fit the browser's 32-bit usize.
const MAX_ELEMENTS: u128 = u32::MAX as u128;

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn unknown_key(key: &str) -> Error {
    let table = Config::preset("tiny").unwrap().table_with_every_key();
    let keys: Vec<&String> = ["model", "train"].iter().flat_map(|s| table[*s].as_table().unwrap().keys()).collect();
    Error::Input(format!(
        "unknown config key '{key}'; known keys: {}",
        keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
    ))
}

/// A bare word for a string field (`norm=simple`) is taken as that string. None for a
/// number TOML cannot hold (a whole number past i64), which would otherwise become a string.
fn parse_value(raw: &str, old: &toml::Value) -> Option<toml::Value> {
    let parsed: Option<toml::Value> = format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v"));
    match parsed {
        Some(v) => Some(as_type_of(v, old)),
        None if raw.parse::<f64>().is_ok() => None,
        None => Some(toml::Value::String(raw.to_string())),
    }
}

/// `value` for a key that holds `old`: an integer where a float is expected (`lr = 1`,
/// `dropout = 0`) is that float; anything else as it is.
fn as_type_of(value: toml::Value, old: &toml::Value) -> toml::Value {
    match (value, old) {
        (toml::Value::Integer(i), toml::Value::Float(_)) => toml::Value::Float(i as f64),
        (v, _) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_norm_placement_is_in_the_menu_list_once() {
        // serde lists every variant in its error for an unknown one: the list to compare with.
        let err = serde_json::from_str::<NormKind>("\"nonsense\"").unwrap_err().to_string();
        let mut named: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
        let mut listed: Vec<String> = NormKind::ALL.iter().map(|n| n.to_string()).collect();
        assert!(named.len() >= 6, "{err}");
        named.sort();
        listed.sort();
        assert_eq!(named, listed, "{err}");
        assert!(NormKind::COMPARED_BY_DEFAULT.iter().all(|n| NormKind::ALL.contains(n)));
    }

    /// The preset files are whole configs that validate, and say what they claim: the
    /// shakespeare_char pair differs only in the norm and the tied head, micro and small
    /// differ from tiny only in their size, and tiny is the
    /// blog's model.
    #[test]
    fn every_preset_file_is_a_whole_valid_config() {
        for p in PRESETS {
            let c: Config = toml::from_str(p.toml).unwrap_or_else(|e| panic!("presets/{}.toml: {e}", p.name));
            c.validate().unwrap_or_else(|e| panic!("presets/{}.toml: {e}", p.name));
        }
        let nanogpt = Config::preset("nanogpt-shakespeare-char").unwrap();
        let simple = Config::preset("simplegpt-shakespeare-char").unwrap();
        let (m, t) = (&nanogpt.model, &nanogpt.train);
        assert_eq!((m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout), (6, 6, 384, 256, 0.2));
        assert_eq!((t.batch_size, t.lr, t.max_steps, t.beta2, t.eval_iters), (64, 1e-3, 5000, 0.99, 200));
        let mut only_norm_and_head = simple.clone();
        only_norm_and_head.model.norm = NormKind::PreLn;
        only_norm_and_head.model.tie_weights = true;
        assert_eq!(only_norm_and_head, nanogpt);
        assert_eq!((simple.model.norm, simple.model.tie_weights), (NormKind::Simple, false));
        let tiny = Config::preset("tiny").unwrap();
        assert_eq!((tiny.model.n_layer, tiny.model.n_embd, tiny.model.n_head, tiny.model.block_size), (1, 64, 2, 64));
        assert_eq!(tiny.train.batch_size, 32);
        // micro and small are tiny with a few keys changed, no more.
        let mut micro = Config::preset("micro").unwrap();
        assert_eq!((micro.model.n_embd, micro.model.block_size, micro.train.batch_size), (32, 32, 8));
        (micro.model.n_embd, micro.model.block_size, micro.train.batch_size) = (64, 64, 32);
        assert_eq!(micro, tiny);
        let mut small = Config::preset("small").unwrap();
        assert_eq!(small.model.n_layer, 4);
        small.model.n_layer = 1;
        assert_eq!(small, tiny);
        assert_eq!(tiny.model.tokenizer, TokenizerKind::Char);
        // The GPT-2 pair: nanoGPT's train_gpt2.py, and the same with SimpleNorm.
        let gpt2 = Config::preset("gpt2-small").unwrap();
        let simple = Config::preset("simplegpt-small").unwrap();
        let (m, t) = (&gpt2.model, &gpt2.train);
        assert_eq!((m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size), (12, 12, 768, 1024, 50304));
        assert_eq!(m.tokenizer, TokenizerKind::Gpt2);
        assert_eq!((t.batch_size * t.grad_accum * m.block_size, t.lr, t.min_lr), (491_520, 6e-4, 6e-5));
        assert_eq!((t.beta1, t.beta2, t.weight_decay, t.warmup_steps), (0.9, 0.95, 0.1, 2000));
        let mut only_norm_and_head = simple.clone();
        only_norm_and_head.model.norm = NormKind::PreLn;
        only_norm_and_head.model.tie_weights = true;
        assert_eq!(only_norm_and_head, gpt2);
        assert_eq!((simple.model.norm, simple.model.tie_weights), (NormKind::Simple, false));
    }

    #[test]
    fn the_tokenizer_key_defaults_to_char_and_leaves_char_configs_as_they_were() {
        let tiny = Config::preset("tiny").unwrap();
        assert!(!tiny.to_toml().contains("tokenizer"));
        let mut c = tiny.clone();
        c.set("tokenizer=gpt2").unwrap();
        assert_eq!(c.model.tokenizer, TokenizerKind::Gpt2);
        assert!(c.to_toml().contains("tokenizer = \"gpt2\""));
        c.set("model.tokenizer=char").unwrap();
        assert_eq!(c, tiny);
        let e = tiny.clone().set("tokenizer=bpe").unwrap_err().to_string();
        assert!(e.contains("tokenizer"), "{e}");
    }

    /// Every preset file gives every key, those a config's TOML leaves out at their default
    /// included: a preset is the place a user reads them from.
    #[test]
    fn every_preset_file_gives_every_key() {
        let every = Config::preset("tiny").unwrap().table_with_every_key();
        for p in PRESETS {
            let file: toml::Table = p.toml.parse().unwrap();
            for section in ["model", "train"] {
                let keys = |t: &toml::Table| t[section].as_table().unwrap().keys().cloned().collect::<Vec<_>>();
                assert_eq!(keys(&file), keys(&every), "presets/{}.toml [{section}]", p.name);
            }
        }
    }

    #[test]
    fn the_keys_added_after_the_first_runs_leave_their_configs_as_they_were() {
        // A config written before qk_norm, mix_ln_fraction, logit_softcap and z_loss existed:
        // it reads with them at their defaults, and writes (so hashes) the same text.
        let tiny = Config::preset("tiny").unwrap();
        let old_text: String = tiny
            .to_toml()
            .lines()
            .filter(|l| !["qk_norm", "mix_ln_fraction", "logit_softcap", "z_loss"].iter().any(|k| l.starts_with(k)))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(old_text, tiny.to_toml(), "left out at their defaults");
        let old: Config = toml::from_str(&old_text).unwrap();
        assert_eq!(old, tiny);
        assert_eq!((old.model.qk_norm, old.model.mix_ln_fraction, old.model.logit_softcap), (false, 0.25, 0.0));
        assert_eq!(old.train.z_loss, 0.0);
        // Set, each is written, reads back, and is a key to `set` and to a TOML file, whose
        // whole numbers are taken for the floats they stand for.
        let mut c = tiny.clone();
        for set in ["qk_norm=true", "mix_ln_fraction=0.5", "logit_softcap=30", "z_loss=1e-4"] {
            c.set(set).unwrap();
        }
        let text = c.to_toml();
        for key in ["qk_norm = true", "mix_ln_fraction = 0.5", "logit_softcap = 30.0", "z_loss = 0.0001"] {
            assert!(text.contains(key), "{key}: {text}");
        }
        assert_eq!(Config::from_toml(&text, tiny.clone(), "c.toml").unwrap(), c);
        let from_file =
            Config::from_toml("[model]\nlogit_softcap = 30\n[train]\nz_loss = 0\n", tiny.clone(), "f.toml").unwrap();
        assert_eq!((from_file.model.logit_softcap, from_file.train.z_loss), (30.0, 0.0));
        let e = tiny.clone().set("qk_norms=true").unwrap_err().to_string();
        assert!(e.contains("known keys") && e.contains("qk_norm") && e.contains("z_loss"), "{e}");
    }

    #[test]
    fn qk_norm_is_a_switch_and_part_of_three_variants() {
        let mut c = Config::preset("tiny").unwrap().model;
        for norm in [NormKind::PreLn, NormKind::PreRms, NormKind::PostLn, NormKind::PeriLn, NormKind::None] {
            c.norm = norm;
            c.qk_norm = false;
            assert!(!c.has_qk_norm(), "{norm}");
            c.qk_norm = true;
            assert!(c.has_qk_norm(), "{norm}");
        }
        c.qk_norm = false;
        for norm in [NormKind::PreRmsQk, NormKind::Simple, NormKind::Olmo2] {
            c.norm = norm;
            assert!(c.has_qk_norm(), "{norm} has QK-norm by definition");
        }
    }

    #[test]
    fn mix_ln_puts_post_ln_in_the_first_quarter_of_the_blocks() {
        let mut c = Config::preset("tiny").unwrap().model;
        c.norm = NormKind::MixLn;
        for (layers, fraction, post) in
            [(4, 0.25, 1), (6, 0.25, 1), (8, 0.25, 2), (12, 0.25, 3), (3, 0.25, 0), (4, 1.0, 4)]
        {
            (c.n_layer, c.mix_ln_fraction) = (layers, fraction);
            assert_eq!(c.post_norm_blocks(), post, "{layers} layers at {fraction}");
        }
        (c.norm, c.n_layer) = (NormKind::DeepNorm, 6);
        assert_eq!(c.post_norm_blocks(), 6);
        c.norm = NormKind::PeriLn;
        assert_eq!(c.post_norm_blocks(), 0);
    }

    #[test]
    fn the_fused_key_defaults_to_true_and_leaves_configs_as_they_were() {
        let tiny = Config::preset("tiny").unwrap();
        assert!(tiny.model.fused);
        assert!(!tiny.to_toml().contains("fused"));
        let mut c = tiny.clone();
        c.set("fused=false").unwrap();
        assert!(!c.model.fused);
        assert!(c.to_toml().contains("fused = false"));
        c.set("model.fused=true").unwrap();
        assert_eq!(c, tiny);
    }

    #[test]
    fn set_parses_every_kind_of_value() {
        let mut c = Config::preset("tiny").unwrap();
        c.set("norm=simple").unwrap();
        c.set("lr=3e-3").unwrap();
        c.set("train.lr=1").unwrap();
        c.set("residual=false").unwrap();
        c.set("n_layer=3").unwrap();
        assert_eq!(c.model.norm, NormKind::Simple);
        assert_eq!(c.train.lr, 1.0);
        assert!(!c.model.residual);
        assert_eq!(c.model.n_layer, 3);
    }

    #[test]
    fn set_rejects_unknown_keys_and_bad_values() {
        let mut c = Config::preset("tiny").unwrap();
        assert!(c.set("n_layers=3").unwrap_err().to_string().contains("unknown config key"));
        let unknown_norm = c.set("norm=layernorm").unwrap_err().to_string();
        assert!(unknown_norm.contains("bad value"), "{unknown_norm}");
        for name in ["pre_ln", "pre_rms_qk", "simple", "peri_ln", "mix_ln", "olmo2", "deepnorm", "ngpt", "none"] {
            assert!(unknown_norm.contains(&format!("`{name}`")), "lists {name}: {unknown_norm}");
        }
        assert!(c.set("n_layer=-1").unwrap_err().to_string().contains("bad value"));
        assert!(c.set("n_layer").unwrap_err().to_string().contains("key=value"));
        let too_large = c.set("max_steps=18446744073709551615").unwrap_err().to_string();
        assert!(too_large.contains("out of range"), "{too_large}");
        assert!(c.set("lr=1e999").unwrap_err().to_string().contains("out of range"));
    }

    #[test]
    fn kinds_print_as_users_type_them() {
        assert_eq!(format!("{} {}", NormKind::PreLn, NormKind::PreRmsQk), "pre_ln pre_rms_qk");
        let new = [NormKind::PeriLn, NormKind::MixLn, NormKind::Olmo2, NormKind::DeepNorm, NormKind::Ngpt];
        assert_eq!(new.map(|n| n.to_string()), ["peri_ln", "mix_ln", "olmo2", "deepnorm", "ngpt"]);
        assert_eq!(format!("{} {}", MlpKind::Swiglu, PosKind::Rope), "swiglu rope");
    }

    #[test]
    fn gives_key_sees_a_key_whatever_its_value_and_section() {
        let sets = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(Config::gives_key(None, &sets(&["lr=1e-3"]), "lr"));
        assert!(Config::gives_key(None, &sets(&["train.lr = 3"]), "lr"));
        assert!(!Config::gives_key(None, &sets(&["min_lr=1e-4", "norm=simple"]), "lr"));
        assert!(Config::gives_key(Some("[train]\nlr = 1e-3\n"), &[], "lr"));
        assert!(!Config::gives_key(Some("[train]\nmin_lr = 1e-4\n"), &[], "lr"));
    }

    #[test]
    fn toml_overrides_a_preset_and_round_trips() {
        let base = Config::preset("tiny").unwrap();
        let c = Config::from_toml("[model]\nnorm = \"post_ln\"\ndropout = 0\n", base.clone(), "x.toml").unwrap();
        assert_eq!(c.model.norm, NormKind::PostLn);
        assert_eq!(c.train, base.train);
        let again = Config::from_toml(&c.to_toml(), Config::preset("tiny").unwrap(), "y").unwrap();
        assert_eq!(again, c);
        assert!(Config::from_toml("[model\n", base.clone(), "z").is_err());
        assert!(Config::from_toml("[optim]\nlr=1\n", base.clone(), "z").is_err());
        // The line of the error, also when it is the first character of its line.
        let err = Config::from_toml("[train]\nlr = 1\nlr = 2\n", base, "dup.toml").unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn validate_names_the_problem() {
        let mut c = Config::preset("tiny").unwrap();
        c.model.n_embd = 65;
        assert!(c.validate().unwrap_err().to_string().contains("divisible by n_head"));
        // Dropout masks: the activations [B, T, C] can be the largest dropped tensor.
        let mut c = Config::preset("tiny").unwrap();
        (c.model.dropout, c.model.block_size, c.model.n_head, c.model.n_embd) = (0.1, 8, 1, 4096);
        c.model.mlp = MlpKind::Swiglu; // GELU's 4 C hidden would pass the 2^32 elements of one tensor
        c.train.batch_size = 1 << 15;
        assert!(c.validate().is_ok(), "B T C = 2^30 elements");
        c.train.batch_size = 1 << 16;
        assert!(c.validate().unwrap_err().to_string().contains("batch_size x block_size x n_embd = 2147483648"));
        // Sizes that overflow 64 bits, and values that are NaN, are input errors.
        let bad = |set: &str, expect: &str| {
            let mut c = Config::preset("tiny").unwrap();
            c.set(set).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(expect), "{set}: {err}");
        };
        bad("block_size=4294967296", "block_size = 4294967296 is too large");
        bad("n_layer=1000000", "parameters");
        bad("batch_size=1000000", "the attention weights");
        bad("eps=nan", "eps > 0");
        bad("min_lr=nan", "min_lr <= lr");
        bad("min_lr=1", "min_lr <= lr");
        bad("diverge_factor=nan", "diverge_factor");
        bad("grad_clip=-1", "grad_clip");
        bad("weight_decay=-5", "weight_decay");
        bad("norm=ngpt", "ngpt is defined with SwiGLU, RoPE, an untied head, no biases and residuals");
        let mut ngpt = Config::preset("tiny").unwrap();
        for set in ["norm=ngpt", "mlp=swiglu", "pos=rope", "tie_weights=false"] {
            ngpt.set(set).unwrap();
        }
        assert!(ngpt.validate().is_ok());
        for set in ["bias=true", "residual=false", "mlp=gelu"] {
            let mut c = ngpt.clone();
            c.set(set).unwrap();
            assert!(c.validate().unwrap_err().to_string().contains("ngpt is defined with"), "{set}");
        }
        bad(
            "mix_ln_fraction=1.5",
            "mix_ln_fraction must be in [0, 1) (at 1 every block is post-LN: use norm = post_ln), got 1.5",
        );
        bad("mix_ln_fraction=1", "use norm = post_ln");
        bad("mix_ln_fraction=-0.1", "mix_ln_fraction must be in [0, 1)");
        bad("mix_ln_fraction=nan", "mix_ln_fraction");
        bad("logit_softcap=-1", "logit_softcap must be >= 0");
        bad("z_loss=-1e-4", "z_loss must be >= 0");
        bad("z_loss=inf", "z_loss must be >= 0");
    }
}
