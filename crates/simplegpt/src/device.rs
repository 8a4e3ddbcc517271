//! Choosing a device by name, natively. (The browser gets its WebGPU device from
//! `Device::wgpu_options().init_async()` in the wasm crate.)

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use burn::tensor::Device;
use burn::tensor::wgpu::WgpuBackend;

use crate::error::{Error, Result};

pub const NAMES: &[&str] = &["auto", "cpu", "wgpu", "vulkan", "metal", "dx12", "cuda"];

/// An opened device and a line that says what it is.
#[derive(Clone)]
pub struct Opened {
    pub device: Device,
    /// "cpu (flex)", "wgpu Vulkan: NVIDIA H100", ...
    pub description: String,
    pub backend: String,
    /// A software rasteriser (lavapipe, SwiftShader): real GPU code, CPU speed.
    pub software: bool,
}

/// Opens a device by name. `auto` prefers CUDA (when built with it), then a wgpu GPU,
/// then the CPU.
pub fn open(name: &str) -> Result<Opened> {
    match name {
        "cpu" => Ok(Opened {
            device: Device::flex(),
            description: "cpu (burn flex)".into(),
            backend: "cpu".into(),
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
    let description = format!("{name}: {} ({:?}, {:?})", info.name, setup.backend, info.device_type);
    let software = info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu;
    let d = Opened { device, description, backend: name.to_string(), software };
    opened.insert(name.to_string(), d.clone());
    Ok(d)
}

#[cfg(feature = "cuda")]
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
        Ok(device) => Ok(Opened { device, description: "cuda: GPU 0".into(), backend: "cuda".into(), software: false }),
        Err(_) => Err(Error::Input(
            "no CUDA GPU is available (no NVIDIA driver or device found); use --device wgpu or cpu".into(),
        )),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Opened> {
    Err(Error::Input(
        "this build has no CUDA support; rebuild with `cargo build --release --features cuda`, \
         or use --device wgpu or cpu"
            .into(),
    ))
}

/// Every adapter wgpu can see, one line each, for `simplegpt devices`.
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
