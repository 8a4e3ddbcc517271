//! `simplegpt devices`: the backends of this build and the GPU adapters found here.

use simplegpt::device::Opened;
use simplegpt::{Result, device};

pub fn run() -> Result<()> {
    println!(
        "backends in this build: cpu (burn flex), wgpu (vulkan, metal, dx12){}",
        if cfg!(feature = "cuda") { ", cuda" } else { " (cuda: rebuild with --features cuda)" }
    );
    let on = |feature: bool| if feature { "on" } else { "off" };
    println!(
        "GPU kernels in this build: autotune {}, Vulkan shaders {}, fusion {}",
        on(cfg!(feature = "autotune")),
        if cfg!(feature = "vulkan") { "SPIR-V" } else { "WGSL" },
        on(cfg!(feature = "fusion")),
    );
    let adapters = device::list_adapters();
    if adapters.is_empty() {
        println!("no wgpu adapters found (no Vulkan/Metal/DX12 driver); --device cpu works everywhere");
    }
    for a in adapters {
        println!("  {a}");
    }
    match device::open("auto") {
        Ok(d) => {
            println!("--device auto picks: {}", d.adapter);
            if let Some(hint) = speed_hint(&d) {
                println!("{hint}");
            }
        }
        Err(e) => println!("--device auto: {e}"),
    }
    Ok(())
}

/// On a real GPU, a build without autotune runs each matmul with one fixed kernel (which keeps
/// runs bit-identical): say how to build the fast one. None on the CPU, on a software
/// rasteriser and in an autotuned build.
pub fn speed_hint(opened: &Opened) -> Option<&'static str> {
    (opened.backend != "cpu" && !opened.software && !cfg!(feature = "autotune")).then_some(
        "note: this build runs one fixed kernel per matmul on the GPU; one built with \
         `cargo build --release -p simplegpt-cli --features autotune,vulkan` trained 2.4x faster \
         on an H200 (its runs can then differ in the last bits from one process to the next)",
    )
}
