//! The device a run trains on: `Opened`, on every target. Opening one by name (`open`) and
//! listing adapters are native; the browser's binding opens its WebGPU or CPU device itself
//! (`Device::wgpu_options().init_with_setup_async()` in the wasm crate) into the same type.

#[cfg(not(target_family = "wasm"))]
use std::collections::HashMap;
#[cfg(not(target_family = "wasm"))]
use std::sync::{Mutex, OnceLock};

use burn::backend::DispatchDevice;
use burn::tensor::Device;
#[cfg(not(target_family = "wasm"))]
use burn::tensor::wgpu::WgpuBackend;
use serde::Serialize;

#[cfg(not(target_family = "wasm"))]
use crate::error::{Error, Result};

#[cfg(not(target_family = "wasm"))]
pub const NAMES: &[&str] = &["auto", "cpu", "wgpu", "vulkan", "metal", "dx12", "cuda"];

/// An opened device and what it is; serialised (without the device) for the browser page.
#[derive(Clone, Serialize)]
pub struct Opened {
    #[serde(skip)]
    pub device: Device,
    /// "cpu", "wgpu", "vulkan", ..., "webgpu": the run header's `backend`.
    pub backend: String,
    /// What the device is, the run header's `adapter`: "cpu (burn flex)",
    /// "wgpu: NVIDIA H100 (Vulkan, DiscreteGpu)", in the browser what the browser tells.
    pub adapter: String,
    /// A software rasteriser (lavapipe, SwiftShader): real GPU code, CPU speed.
    pub software: bool,
}

/// Whether `device` is the CPU backend (burn's Flex), itself or under autodiff.
pub fn is_cpu(device: &Device) -> bool {
    fn flex(device: &DispatchDevice) -> bool {
        match device {
            DispatchDevice::Autodiff(inner) => flex(inner),
            DispatchDevice::Flex(_) => true,
            DispatchDevice::Cube(_) => false,
        }
    }
    flex(device.as_dispatch())
}

/// Opens a device by name. `auto` prefers CUDA (when built with it), then a wgpu GPU,
/// then the CPU.
#[cfg(not(target_family = "wasm"))]
pub fn open(name: &str) -> Result<Opened> {
    match name {
        "cpu" => Ok(Opened {
            device: Device::flex(),
            backend: "cpu".into(),
            adapter: "cpu (burn flex)".into(),
            software: false,
        }),
        "wgpu" => open_wgpu(WgpuBackend::Auto, "wgpu"),
        "vulkan" => open_wgpu(WgpuBackend::Vulkan, "vulkan"),
        "metal" => open_wgpu(WgpuBackend::Metal, "metal"),
        "dx12" => open_wgpu(WgpuBackend::Dx12, "dx12"),
        "cuda" => open_cuda(),
        "auto" => {
            if cfg!(feature = "cuda")
                && let Ok(d) = open_cuda()
            {
                return Ok(d);
            }
            match open_wgpu(WgpuBackend::Auto, "wgpu") {
                // A software rasteriser is slower than the CPU backend.
                Ok(d) if !d.software => Ok(d),
                _ => open("cpu"),
            }
        }
        other => Err(Error::Input(format!("unknown device '{other}'; choose one of: {}", NAMES.join(", ")))),
    }
}

/// wgpu allows one runtime per (adapter, API) per process: open each once and reuse it.
#[cfg(not(target_family = "wasm"))]
fn open_wgpu(api: WgpuBackend, name: &str) -> Result<Opened> {
    static OPENED: OnceLock<Mutex<HashMap<String, Opened>>> = OnceLock::new();
    let mut opened = OPENED.get_or_init(Default::default).lock().expect("not poisoned");
    if let Some(d) = opened.get(name) {
        return Ok(d.clone());
    }
    let (device, setup) = Device::wgpu_options().graphics_api(api).init_with_setup().map_err(|e| {
        Error::Input(format!(
            "no {name} GPU adapter is available ({e}); run `simplegpt devices` to see what is, \
             or use --device cpu"
        ))
    })?;
    let info = setup.adapter.get_info();
    let adapter = format!("{name}: {} ({:?}, {:?})", info.name, setup.backend, info.device_type);
    let software = info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu;
    let d = Opened { device, backend: name.to_string(), adapter, software };
    opened.insert(name.to_string(), d.clone());
    Ok(d)
}

#[cfg(all(feature = "cuda", not(target_family = "wasm")))]
fn open_cuda() -> Result<Opened> {
    // A missing driver or GPU panics inside the backend on first use: probe it once with a
    // silenced panic hook and turn the panic into an error.
    let probe = || {
        let device = Device::cuda(0);
        let t = burn::tensor::Tensor::<1>::ones([1], &device);
        let _ = t.into_data();
        device
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(probe);
    std::panic::set_hook(hook);
    match result {
        Ok(device) => Ok(Opened { device, backend: "cuda".into(), adapter: "cuda: GPU 0".into(), software: false }),
        Err(_) => Err(Error::Input(
            "no CUDA GPU is available (no NVIDIA driver or device found); use --device wgpu or cpu".into(),
        )),
    }
}

#[cfg(all(not(feature = "cuda"), not(target_family = "wasm")))]
fn open_cuda() -> Result<Opened> {
    Err(Error::Input(
        "this build has no CUDA support; rebuild with `cargo build --release --features cuda`, \
         or use --device wgpu or cpu"
            .into(),
    ))
}

/// Every adapter wgpu can see, one line each, for `simplegpt devices`.
#[cfg(not(target_family = "wasm"))]
pub fn list_adapters() -> Vec<String> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::default();
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{:?}: {} ({:?}, driver {} {})", i.backend, i.name, i.device_type, i.driver, i.driver_info)
        })
        .collect()
}
