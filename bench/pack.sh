#!/usr/bin/env bash
# Packs what the side-by-side benchmark needs on the GPU machine, which has no Rust, no
# network and no Vulkan loader, into bench/carry/ (ignored by git; small enough to copy
# along: the binary is stripped and compressed): the release simplegpt binary (stripped, gzipped), Debian's libvulkan1
# .deb, a nanoGPT export (NANOGPT_SRC: a git URL or a local clone) and tiny Shakespeare
# (DATA: a path, or downloaded). Then, on the GPU machine: bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/simplegpt-target}"
NANOGPT_SRC="${NANOGPT_SRC:-https://github.com/karpathy/nanoGPT}"
carry=bench/carry
rm -rf "$carry" && mkdir -p "$carry/debs"

# A cold release build of burn takes tens of minutes on 2 cores.
cargo build --release --locked -p simplegpt-cli
strip -o "$carry/simplegpt" "$CARGO_TARGET_DIR/release/simplegpt"
gzip -9 "$carry/simplegpt"
# FUSION=1 also packs a build with burn's kernel fusion (--features fusion; another long
# release build), which bench/gpu.sh then measures beside the default one.
if [ "${FUSION:-0}" = 1 ]; then
  cargo build --release --locked -p simplegpt-cli --features fusion
  strip -o "$carry/simplegpt-fusion" "$CARGO_TARGET_DIR/release/simplegpt"
  gzip -9 "$carry/simplegpt-fusion"
fi

(cd "$carry/debs" && apt-get download libvulkan1 2>/dev/null)

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
