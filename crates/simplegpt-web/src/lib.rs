//! The browser's binding: a thin shell over the core crate. JavaScript opens a device once
//! (WebGPU, or the CPU backend as a fallback), then drives one `Run` per variant, awaiting
//! `step()` between animation frames so the page never freezes. Records cross the boundary
//! as JSON in the same format the native CLI writes.
#![cfg(target_family = "wasm")]

use std::cell::RefCell;
use std::rc::Rc;

use burn::module::Module;
use burn::tensor::Device;
use js_sys::Promise;
use simplegpt::Config;
use simplegpt::data::Dataset;
use simplegpt::record::RunHeader;
use simplegpt::sample::{DEFAULT_TEMPERATURE, DEFAULT_TOP_K, SampleOptions, generate};
use simplegpt::train::Trainer;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

struct Opened {
    device: Device,
    backend: String,
    adapter: String,
}

thread_local! {
    static DEVICE: RefCell<Option<Rc<Opened>>> = const { RefCell::new(None) };
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
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
/// more than wgpu). Resolves to JSON `{backend, adapter}`.
#[wasm_bindgen]
pub fn open_device(webgpu: bool, adapter: String) -> Promise {
    future_to_promise(async move {
        let opened = if webgpu {
            let (device, setup) = Device::wgpu_options().init_with_setup_async().await.map_err(js_err)?;
            let info = setup.adapter.get_info();
            let adapter = if adapter.is_empty() { format!("{} ({:?})", info.name, info.device_type) } else { adapter };
            Opened { device, backend: "webgpu".into(), adapter }
        } else {
            Opened { device: Device::flex(), backend: "cpu".into(), adapter: "burn flex (wasm)".into() }
        };
        let json = serde_json::json!({ "backend": opened.backend, "adapter": opened.adapter }).to_string();
        DEVICE.with(|d| *d.borrow_mut() = Some(Rc::new(opened)));
        Ok(JsValue::from_str(&json))
    })
}

/// The embedded default corpus.
#[wasm_bindgen]
pub fn default_corpus() -> String {
    simplegpt::data::default_corpus()
}

/// The group a parameter's gradient norm is summed into in the charts, as in the CLI's reports.
#[wasm_bindgen]
pub fn param_group(path: &str) -> String {
    simplegpt::params::param_group(path).to_string()
}

/// A preset plus `key=value` overrides, as config JSON; throws the CLI's message on bad input.
#[wasm_bindgen]
pub fn resolve_config(preset: &str, overrides: Vec<String>) -> Result<String, JsValue> {
    let config = Config::resolve(preset, None, &overrides).map_err(js_err)?;
    Ok(serde_json::to_string(&config).expect("serialisable"))
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
            let config: Config = serde_json::from_str(&config_json).map_err(js_err)?;
            let data = Dataset::from_text(&text, "the text").map_err(js_err)?;
            let trainer = Trainer::new(config, data, &opened.device).map_err(js_err)?;
            let t = &trainer;
            let header =
                RunHeader::new(&t.config, &t.model, &t.data, &opened.backend, &opened.adapter).await.map_err(js_err)?;
            let header = serde_json::to_string(&header).expect("serialisable");
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
            Ok(record.map_or(JsValue::NULL, |r| JsValue::from_str(&serde_json::to_string(&r).expect("serialisable"))))
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
