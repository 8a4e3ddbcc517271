#!/usr/bin/env bash
# Builds the browser bundle into web/pkg/ from a fresh machine: the wasm32 target, the
# core compiled to wasm, wasm-bindgen's JS glue, and (SIMPLEGPT_WASM_OPT=1) wasm-opt.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/simplegpt-target}"

# Route A: rustup's wasm32 target (its download server may be unreachable: time it out).
if ! rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown; then
  timeout 180 rustup target add wasm32-unknown-unknown || {
    echo "error: could not install the wasm32 target with rustup (its download server is unreachable?); retry \`rustup target add wasm32-unknown-unknown\` where it is reachable, or build with Debian's Rust instead: apt-get install rustc-web cargo-web rust-web-src rust-web-llvm, then RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --release -p simplegpt-web --lib --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort" >&2
    exit 1
  }
fi
cargo build --release --locked -p simplegpt-web --lib --target wasm32-unknown-unknown

# wasm-bindgen's CLI must be the exact version of the wasm-bindgen crate in Cargo.lock.
version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
if ! wasm-bindgen --version 2>/dev/null | grep -q "$version"; then
  cargo install wasm-bindgen-cli --version "$version"
fi
rm -rf web/pkg
wasm-bindgen --target web --no-typescript --remove-name-section --out-dir web/pkg \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/simplegpt_web.wasm"

# wasm-opt from npm's binaryen (Debian's is too old and breaks the module); a full -O3 takes
# many minutes on 2 cores, so it is opt-in.
if [ "${SIMPLEGPT_WASM_OPT:-0}" = 1 ]; then
  npx --yes binaryen@132.0.0 wasm-opt -O3 --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-simd -o web/pkg/simplegpt_web_bg.wasm web/pkg/simplegpt_web_bg.wasm
fi
raw=$(stat -c %s web/pkg/simplegpt_web_bg.wasm)
gz=$(gzip -9 -c web/pkg/simplegpt_web_bg.wasm | wc -c)
echo "web/pkg/simplegpt_web_bg.wasm: $((raw / 1024 / 1024)) MB raw, $((gz / 1024 / 1024)) MB gzipped"
