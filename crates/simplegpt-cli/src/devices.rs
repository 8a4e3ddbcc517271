//! `simplegpt devices`: the backends of this build and the GPU adapters found here.

use simplegpt::{Result, device};

pub fn run() -> Result<()> {
    println!(
        "backends in this build: cpu (burn flex), wgpu (vulkan, metal, dx12){}",
        if cfg!(feature = "cuda") { ", cuda" } else { " (cuda: rebuild with --features cuda)" }
    );
    let adapters = device::list_adapters();
    if adapters.is_empty() {
        println!("no wgpu adapters found (no Vulkan/Metal/DX12 driver); --device cpu works everywhere");
    }
    for a in adapters {
        println!("  {a}");
    }
    match device::open("auto") {
        Ok(d) => println!("--device auto picks: {}", d.adapter),
        Err(e) => println!("--device auto: {e}"),
    }
    Ok(())
}
