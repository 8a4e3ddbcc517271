#!/usr/bin/env bash
# Packs what bench/gpu.sh needs on the GPU machine, which has no Rust, no network and no
# Vulkan loader, into bench/carry/ (ignored by git; small enough to copy along): release
# builds of simplegpt (stripped, compressed), Debian's libvulkan1 .deb, a nanoGPT export
# (NANOGPT_SRC: a git URL or a local clone) and tiny Shakespeare (DATA: a path, or
# downloaded). Then, on the GPU machine: bash bench/gpu.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/simplegpt-target}"
NANOGPT_SRC="${NANOGPT_SRC:-https://github.com/karpathy/nanoGPT}"
carry=bench/carry
rm -rf "$carry" && mkdir -p "$carry/debs"

# One release build for each name in BUILDS (default: just `default`), each a cold build of
# burn's GPU crates taking tens of minutes on 2 cores: `default`, or a comma-separated list of
# the CLI's features (autotune, vulkan, fusion, cuda), packed as simplegpt-FEATURE-FEATURE.xz.
# CUDA needs no toolkit to build (the driver and NVRTC are found at run time), but its build
# downloads an LLVM bundle from GitHub (tracel-llvm-bundler, for cubecl-cuda's PTX path): where
# that is blocked, only the wgpu backends build.
for build in ${BUILDS:-default}; do
  if [ "$build" = default ]; then features="" name=simplegpt; else features=$build name=simplegpt-${build//,/-}; fi
  cargo build --release --locked -p simplegpt-cli --features "$features"
  strip -o "$carry/$name" "$CARGO_TARGET_DIR/release/simplegpt"
  xz -9 -T2 "$carry/$name"
done

# The Vulkan loader, and the GL dispatch libraries that NVIDIA's Vulkan driver loads.
(cd "$carry/debs" && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 2>/dev/null)

if [ -d "$NANOGPT_SRC" ]; then
  mkdir -p "$carry/nanoGPT" && git -C "$NANOGPT_SRC" archive HEAD | tar -x -C "$carry/nanoGPT"
else
  git clone -q --depth 1 "$NANOGPT_SRC" "$carry/nanoGPT" && rm -rf "$carry/nanoGPT/.git"
fi
rm -rf "$carry/nanoGPT/assets" # images only

if [ -n "${DATA:-}" ]; then
  cp "$DATA" "$carry/input.txt"
else
  curl -fsSL -o "$carry/input.txt" https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
fi
du -sh "$carry"
