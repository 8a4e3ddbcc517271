#!/usr/bin/env bash
# On the GPU machine, after bench/gpu.sh has unpacked the binary (or with SIMPLEGPT=path):
# the first GPU results (training, repro, the norms), each part with its command and wall
# time, into OUT.
# Parts (run one at a time; each takes minutes on a data-centre GPU):
#   train  the nanoGPT preset to the end on DEVICE (nanoGPT's own run reaches val 1.466)
#   repro  one config on the CPU and on DEVICE, compared step by step (100 steps)
#   norms  pre-LN vs pre-RMS + QK-norm vs SimpleNorm at nanoGPT's size, at nanoGPT's LR
#          and at 10x it
# Settings: DEVICE (vulkan), DATA (bench/carry/input.txt), OUT (out-gpu), PRESET for repro
# (tiny) and STEPS for repro (100); EXTRA: more arguments for every command (e.g. --set
# max_steps=20 to try the script on a small machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${SIMPLEGPT:-/tmp/simplegpt}"
device="${DEVICE:-vulkan}"
data="${DATA:-bench/carry/input.txt}"
out="${OUT:-out-gpu}"
read -r -a extra <<< "${EXTRA:-}"
mkdir -p "$out"

# Prints the command, runs it with its output kept in $out/NAME.log, and prints the time.
timed() {
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: $((SECONDS - start)) s"
}

for part in "${@:-train}"; do
  case "$part" in
    train)
      timed "train-$device" "$bin" train --preset nanogpt-shakespeare-char --data "$data" --device "$device" \
        --out "$out/nanogpt-$device" --overwrite "${extra[@]}"
      ;;
    repro)
      timed "repro-cpu-$device" "$bin" repro --backends "cpu,$device" --preset "${PRESET:-tiny}" --data "$data" \
        --steps "${STEPS:-100}" "${extra[@]}"
      ;;
    norms)
      for lrs in 1e-3:1e-4 1e-2:1e-3; do
        lr=${lrs%:*}
        timed "norms-lr-$lr" "$bin" compare --preset nanogpt-shakespeare-char --data "$data" --device "$device" \
          --set "lr=$lr" --set "min_lr=${lrs#*:}" --interleave --out "$out/norms-lr-$lr" \
          --variant pre_ln:norm=pre_ln --variant pre_rms_qk:norm=pre_rms_qk --variant simple:norm=simple "${extra[@]}"
      done
      ;;
    *)
      echo "unknown part '$part'; the parts are train, repro and norms" >&2
      exit 2
      ;;
  esac
done
