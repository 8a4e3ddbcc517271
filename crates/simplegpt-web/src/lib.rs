//! The browser's binding: a thin shell over the core crate. JavaScript opens a device once
//! (WebGPU, or the CPU backend as a fallback), then drives one `Run` per variant, awaiting
//! `step()` between animation frames so the page never freezes. Records cross the boundary
//! as JSON in the same format the native CLI writes.
#![cfg(target_family = "wasm")]

use std::cell::RefCell;
use std::rc::Rc;

use burn::module::Module;
use burn::tensor::Device;
use burn::tensor::wgpu::wgpu::DeviceType;
use js_sys::Promise;
use simplegpt::Config;
use simplegpt::config::{NormKind, PRESETS};
use simplegpt::data::Dataset;
use simplegpt::device::Opened;
use simplegpt::record::{RunHeader, StepRecord};
use simplegpt::sample::{DEFAULT_TEMPERATURE, DEFAULT_TOP_K, SampleOptions, generate};
use simplegpt::study::{self, Summary, Variant};
use simplegpt::train::Trainer;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

thread_local! {
    static DEVICE: RefCell<Option<Rc<Opened>>> = const { RefCell::new(None) };
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("serialisable")
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, JsValue> {
    serde_json::from_str(json).map_err(js_err)
}

/// The run's trainer, or an error while a step holds it (JavaScript may call in while a
/// `step()` promise is pending).
fn lock(trainer: &RefCell<Trainer>) -> Result<std::cell::RefMut<'_, Trainer>, JsValue> {
    trainer.try_borrow_mut().map_err(|_| js_err("a step of this run is in progress; await it first"))
}

fn device() -> Result<Rc<Opened>, JsValue> {
    DEVICE.with(|d| d.borrow().clone()).ok_or_else(|| js_err("call open_device first"))
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Opens WebGPU when `webgpu` is true (the page checks `navigator.gpu` and
/// `requestAdapter()` first: asking for it where there is none panics), else the CPU
/// backend. `adapter` is the page's name for the WebGPU adapter (browsers tell JavaScript
/// more than wgpu). Resolves to the `device::Opened` as JSON: `{backend, adapter, software}`.
#[wasm_bindgen]
pub fn open_device(webgpu: bool, adapter: String) -> Promise {
    future_to_promise(async move {
        let opened = if webgpu {
            let (device, setup) = Device::wgpu_options().init_with_setup_async().await.map_err(js_err)?;
            let info = setup.adapter.get_info();
            let software = info.device_type == DeviceType::Cpu;
            let adapter = if adapter.is_empty() { format!("{} ({:?})", info.name, info.device_type) } else { adapter };
            Opened { device, backend: "webgpu".into(), adapter, software }
        } else {
            Opened {
                device: Device::flex(),
                backend: "cpu".into(),
                adapter: "burn flex (wasm)".into(),
                software: false,
            }
        };
        let json = to_json(&opened);
        DEVICE.with(|d| *d.borrow_mut() = Some(Rc::new(opened)));
        Ok(JsValue::from_str(&json))
    })
}

/// The embedded default corpus.
#[wasm_bindgen]
pub fn default_corpus() -> String {
    simplegpt::data::default_corpus()
}

/// The presets (`config::PRESETS`, as `--preset` knows them), as JSON `[{name, about}]`.
#[wasm_bindgen]
pub fn presets() -> String {
    to_json(&PRESETS.iter().map(|p| serde_json::json!({ "name": p.name, "about": p.about })).collect::<Vec<_>>())
}

/// A preset plus `key=value` overrides, as config JSON; throws the CLI's message on bad input.
#[wasm_bindgen]
pub fn resolve_config(preset: &str, overrides: Vec<String>) -> Result<String, JsValue> {
    Ok(to_json(&Config::resolve(preset, None, &overrides).map_err(js_err)?))
}

/// `simplegpt sweep`'s runs: each variant (`[NAME:]key=value,...`, as `--variant`) at
/// `points` learning rates log-spaced from `lr_min` to `lr_max`, min_lr a tenth of each,
/// over the preset with `overrides` (which must not give lr or min_lr, as `--set` there).
/// JSON `[{name, variant, config}]`, runs named `VARIANT/lr-X`.
#[wasm_bindgen]
pub fn sweep_jobs(
    preset: &str,
    overrides: Vec<String>,
    variants: Vec<String>,
    lr_min: f64,
    lr_max: f64,
    points: usize,
) -> Result<String, JsValue> {
    let variants = Variant::parse_all(&variants).map_err(js_err)?;
    study::variants::refuse_swept_keys(None, &overrides, &variants).map_err(js_err)?;
    let base = Config::resolve(preset, None, &overrides).map_err(js_err)?;
    let jobs = study::sweep_jobs(&variants, &base, lr_min, lr_max, points).map_err(js_err)?;
    let json = |(name, config): &(String, Config)| serde_json::json!({ "name": name, "variant": study::variant_of(name), "config": config });
    Ok(to_json(&jobs.iter().map(json).collect::<Vec<_>>()))
}

/// A run's `study::Summary` (final and best losses, divergence, ...) from its config and
/// records (JSON), as the CLI's reports give it.
#[wasm_bindgen]
pub fn summarize(name: &str, config_json: &str, records_json: &str) -> Result<String, JsValue> {
    let records: Vec<StepRecord> = from_json(records_json)?;
    Ok(to_json(&Summary::of(name, &from_json(config_json)?, &records)))
}

/// Gradient norm per parameter group (`params::param_group`) at each diagnostic step of
/// the records (JSON), as the CLI's reports plot it: JSON `[[group, [[step, norm], ...]], ...]`.
#[wasm_bindgen]
pub fn grouped_grad_norms(records_json: &str) -> Result<String, JsValue> {
    let records: Vec<StepRecord> = from_json(records_json)?;
    Ok(to_json(&study::stats::grouped_grad_norms(&records)))
}

/// Every norm placement (`config::NormKind::ALL`): JSON `[{name, label, about, sets,
/// default}]`: `sets`, the overrides that train it (`norm=...` and what it is defined with);
/// `default` for those a norms comparison trains unless told otherwise.
#[wasm_bindgen]
pub fn norms() -> String {
    let norm = |n: &NormKind| {
        let sets: Vec<String> =
            std::iter::once(format!("norm={n}")).chain(n.defined_with().iter().map(|s| s.to_string())).collect();
        serde_json::json!({
            "name": n.to_string(),
            "label": n.label(),
            "about": n.about(),
            "sets": sets,
            "default": NormKind::COMPARED_BY_DEFAULT.contains(n),
        })
    };
    to_json(&NormKind::ALL.iter().map(norm).collect::<Vec<_>>())
}

/// The diagnostics of the records (JSON), as the CLI's reports plot them, each as JSON
/// `[[curve, [[step, value], ...]], ...]`: the largest attention logit per layer, the RMS of
/// each kind of linear's output (largest over layers), the activation RMS per block.
#[wasm_bindgen]
pub fn diagnostics(records_json: &str) -> Result<String, JsValue> {
    let records: Vec<StepRecord> = from_json(records_json)?;
    Ok(to_json(&serde_json::json!({
        "attn_logit_max": study::stats::attn_logit_max(&records),
        "linear_rms": study::stats::linear_rms_by_kind(&records),
        "act_rms": study::stats::block_rms(&records),
    })))
}

/// The colours of the CLI's plots (`study::plot::COLORS`), in order.
#[wasm_bindgen]
pub fn colors() -> Vec<String> {
    study::plot::COLORS.iter().map(|c| c.to_string()).collect()
}

/// One training run on the opened device.
#[wasm_bindgen]
pub struct Run {
    trainer: Rc<RefCell<Trainer>>,
    header: String,
}

#[wasm_bindgen]
impl Run {
    /// Builds the model for `config_json` on `text` (weights drawn from the seed) and its run
    /// header. Resolves to a `Run`.
    pub fn create(config_json: String, text: String) -> Promise {
        future_to_promise(async move {
            let opened = device()?;
            let config: Config = from_json(&config_json)?;
            let data = Dataset::from_text(&text, "the text").map_err(js_err)?;
            let trainer = Trainer::new(config, data, &opened.device).map_err(js_err)?;
            let t = &trainer;
            let header =
                RunHeader::new(&t.config, &t.model, &t.data, &opened.backend, &opened.adapter).await.map_err(js_err)?;
            let header = to_json(&header);
            Ok(Run { trainer: Rc::new(RefCell::new(trainer)), header }.into())
        })
    }

    /// The run header (JSON), as `run.json` natively.
    pub fn header(&self) -> String {
        self.header.clone()
    }

    /// The validation loss of the character frequencies alone (`Dataset::unigram_loss`): the
    /// level a run that learns no context stalls at, drawn as a reference line.
    pub fn unigram_loss(&self) -> Result<f64, JsValue> {
        Ok(lock(&self.trainer)?.data.unigram_loss())
    }

    pub fn finished(&self) -> Result<bool, JsValue> {
        Ok(lock(&self.trainer)?.finished())
    }

    /// One step; resolves to the step's record (JSON) when it was logged, else `null`.
    // The step holds the trainer across its awaits (its GPU read-backs). The page awaits
    // each step before the next call; a call that comes earlier gets `lock`'s error.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn step(&self) -> Promise {
        let trainer = self.trainer.clone();
        future_to_promise(async move {
            let record = lock(&trainer)?.step().await.map_err(js_err)?;
            Ok(record.map_or(JsValue::NULL, |r| JsValue::from_str(&to_json(&r))))
        })
    }

    /// Text from the model as it is now.
    pub fn sample(&self, prompt: String, tokens: usize, seed: u64) -> Promise {
        let trainer = self.trainer.clone();
        future_to_promise(async move {
            let (model, tokenizer, block) = {
                let t = lock(&trainer)?;
                (t.model.valid(), t.data.tokenizer.clone(), t.config.model.block_size)
            };
            let opts = SampleOptions {
                prompt,
                max_new_tokens: tokens,
                temperature: DEFAULT_TEMPERATURE,
                top_k: DEFAULT_TOP_K,
                seed,
            };
            let text = generate(&model, &tokenizer, block, &opts).await.map_err(js_err)?;
            Ok(JsValue::from_str(&text))
        })
    }
}
