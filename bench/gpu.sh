#!/usr/bin/env bash
# The GPU machine's one run. That machine has no Rust, no network and no Vulkan loader:
# bench/pack.sh packs what it needs into bench/carry/, which travels with the checkout. From
# the repository root there:
#
#   bash bench/gpu.sh OUT
#
# SIZE=tiny TORCH_DEVICE=cpu tries the script quickly on a machine without a GPU (Vulkan on
# lavapipe).
# Within BUDGET seconds (default 540), in this order, each part's output in OUT/PART.log and
# everything it prints also in OUT/gpu.log. "Each build": each one bench/pack.sh packed (the
# default build, and those with burn's autotune, SPIR-V compiler or fusion), default first.
#   setup    the Vulkan loader and CUDA's libraries found; `simplegpt devices`; nvidia-smi
#   profile  each build's kernels at nanoGPT's shakespeare_char size, by kind, with CubeCL's
#            profiler (bench/kernel_profile.py): OUT/profile-BUILD.txt
#   speed    bench/side_by_side.py at that size: nanoGPT (DTYPES, default float32 with TF32
#            matmuls) beside simplegpt pre-LN and SimpleNorm, for each build on Vulkan and CUDA;
#            and SimpleNorm with burn's tensor ops for what has a kernel of ours (norms,
#            attention, cross-entropy, GELU, AdamW's step: `fused=false`), the default build
#   repeat   each autotuned build trains tiny twice in two processes, compared step by step
#            (autotune picks kernels by timing them: are two runs still the same numbers?)
#   train    the nanogpt-shakespeare-char preset with the fastest build and device, for the
#            time left less what repro needs (nanoGPT's own run reaches val 1.466 near step 1500)
#   repro    tiny, 100 steps, on the CPU, Vulkan and CUDA, compared step by step; and 40 steps
#            with dropout; with the fastest build
# With SWEEP=1, the CPU cores that the GPU runs leave idle train the docs' learning-rate sweep
# of every placement meanwhile (bench/sweep-jobs.sh, SEEDS seeds, default 3), into OUT/sweep,
# until the end; it goes on from bench/carry/sweep where that holds runs of an earlier one.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/gpu.sh OUT}
budget=${BUDGET:-540}
carry=bench/carry
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec > >(tee -a "$out/gpu.log") 2>&1

# Seconds left of the budget, less $1 kept for the parts after.
left() { echo $((budget - SECONDS - ${1:-0})); }
# part NAME SECONDS CMD...: runs CMD for at most SECONDS (and never past the budget), its
# output in OUT/NAME.log, and says how it ended.
part() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  if [ "$limit" -lt 5 ]; then echo "== $name: skipped, no time left"; return; fi
  echo "== $name (at most ${limit} s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

echo "== setup"
for deb in "$carry"/debs/*.deb; do dpkg -x "$deb" /; done
ldconfig
if [ -z "${VK_DRIVER_FILES:-}" ]; then
  for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
    /etc/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$icd" ] && export VK_DRIVER_FILES="$icd" && break
  done
fi
echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-none found}"
# CUDA's run-time compiler (burn's CUDA backend compiles its kernels with NVRTC at run time):
# the toolkit's, else the one PyTorch's wheels carry.
nvrtc=$(ls /usr/local/cuda/lib64/libnvrtc.so* 2>/dev/null | head -1)
[ -n "$nvrtc" ] || nvrtc=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null |
  xargs -I{} find {} -name 'libnvrtc.so*' 2>/dev/null | head -1)
echo "NVRTC: ${nvrtc:-not found}"
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -d /usr/local/cuda ] && export CUDA_PATH=/usr/local/cuda
# The default build first (the one the devices are probed with).
builds=()
for packed in "$carry"/simplegpt.xz "$carry"/simplegpt-*.xz; do
  [ -f "$packed" ] || continue
  bin=/tmp/$(basename "$packed" .xz)
  xz -dc "$packed" > "$bin" && chmod +x "$bin" && builds+=("$bin")
done
[ ${#builds[@]} -gt 0 ] || { echo "no simplegpt build in $carry: run bench/pack.sh first"; exit 1; }
sg=${builds[0]}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
"$sg" devices

# The devices that open, in the default build.
gpus=()
for device in vulkan cuda; do
  if "$sg" bench --preset tiny --device "$device" --warmup 1 --steps 1 > /dev/null 2> "$out/open-$device.log"; then
    gpus+=("$device")
  else
    echo "$device does not train here: $(tail -1 "$out/open-$device.log")"
  fi
done
[ ${#gpus[@]} -gt 0 ] || { echo "no GPU device trains; stopping"; exit 1; }
# wgpu's SPIR-V compiler crashes lavapipe: on a machine whose Vulkan is lavapipe, leave the
# builds with the `vulkan` feature out.
if "$sg" devices | grep -q "Vulkan: llvmpipe"; then
  kept=()
  for bin in "${builds[@]}"; do case $bin in *vulkan*) echo "$(basename "$bin"): left out on lavapipe" ;; *) kept+=("$bin") ;; esac; done
  builds=("${kept[@]}")
fi
size=${SIZE:-shakespeare}
if [ "$size" = tiny ]; then shape=(--preset tiny); else shape=(--preset nanogpt-shakespeare-char); fi

if [ "${SWEEP:-0}" = 1 ]; then
  # One core each on all but the first four, which this script and its GPU runs keep for
  # themselves (taskset), so that the sweep does not slow the timed GPU steps.
  cpus=$(nproc)
  jobs=$((cpus > 5 ? cpus - 4 : 1))
  pin=()
  if [ "$cpus" -gt 5 ] && command -v taskset > /dev/null; then
    pin=(taskset -c "4-$((cpus - 1))")
    taskset -p -c 0-3 $$ > /dev/null
  fi
  [ -d "$carry/sweep" ] && mkdir -p "$out/sweep" && cp -r "$carry/sweep/." "$out/sweep/"
  setsid "${pin[@]}" bash bench/sweep-jobs.sh "$sg" "$out/sweep" "$jobs" "${SEEDS:-3}" --device cpu --preset tiny \
    --set n_layer=4 --data "$carry/input.txt" --set checkpoint=false --set max_steps=300 --set lr_decay_steps=300 \
    --set warmup_steps=30 --set eval_interval=100 --lr-min 1e-3 --lr-max 3.16 --points 8 \
    --variant pre_ln:norm=pre_ln --variant pre_rms:norm=pre_rms --variant pre_rms_qk:norm=pre_rms_qk \
    --variant post_ln:norm=post_ln --variant simple:norm=simple --variant peri_ln:norm=peri_ln \
    --variant mix_ln:norm=mix_ln --variant olmo2:norm=olmo2 --variant deepnorm:norm=deepnorm \
    --variant none:norm=none --variant ngpt:norm=ngpt,mlp=swiglu,pos=rope,tie_weights=false,bias=false \
    > "$out/sweep.log" 2>&1 &
  sweep=$!
fi

# profile BIN DEVICE DATA SUMMARY PRESET_ARGS...: a build's kernels, pre-LN: 3 warm-up steps
# (autotuning happens there), and the 3 steps after them summed.
profile() {
  local bin=$1 device=$2 data=$3 summary=$4 dir=/tmp/profile-$(basename "$1")
  shift 4
  mkdir -p "$dir" && rm -f "$dir/profile.log"
  printf '[profiling.logger]\nlevel = "basic"\nfile = "%s/profile.log"\n' "$dir" > "$dir/cubecl.toml"
  (cd "$dir" && "$bin" bench "$@" --device "$device" --data "$data" --warmup 3 --steps 4) &&
    python3 bench/kernel_profile.py "$dir/profile.log" --steps 3 | tee "$summary"
}
export -f profile
for bin in "${builds[@]}"; do
  part "profile-$(basename "$bin")" "$(left 400)" bash -c 'profile "$@"' _ "$bin" "${gpus[0]}" \
    "$PWD/$carry/input.txt" "$out/profile-$(basename "$bin").txt" "${shape[@]}"
done

rm -f "$out/speed.json"
runs=()
for bin in "${builds[@]}"; do for device in "${gpus[@]}"; do runs+=(--simplegpt "$bin@$device"); done; done
part speed "$(left 300)" python3 bench/side_by_side.py "${runs[@]}" --nanogpt "$carry/nanoGPT" \
  --data "$carry/input.txt" --sizes "$size" --dtype "${DTYPES:-float32}" --warmup 5 --steps 30 \
  --torch-device "${TORCH_DEVICE:-cuda}" --json "$out/speed.json"

# SimpleNorm's step with burn's tensor ops rather than simplegpt's kernels (`fused=false`:
# the norms, the attention, the cross-entropy, GELU and AdamW's step), on the first build, to
# set beside its fused figure in the speed part.
part norms-unfused "$(left 260)" "$sg" bench "${shape[@]}" --device "${gpus[0]}" --data "$carry/input.txt" \
  --warmup 5 --steps 30 --set norm=simple --set fused=false

# The fastest build and device, by their pre-LN step.
read -r fast fastest < <(python3 - "$out/speed.json" <<'EOF' 2>/dev/null || echo "$(basename "$sg") ${gpus[0]}"
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["results"] if r["ms"] and r["run"].endswith("pre-LN")
        and r["run"].startswith("simplegpt")]
print(*min(rows, key=lambda r: r["ms"])["run"].split(",")[0].split(" on "))
EOF
)
fast=/tmp/$fast
echo "fastest: $(basename "$fast") on $fastest"

# repeat BIN DEVICE DATA: two processes of a build train tiny with the same seed; the same losses?
repeat() {
  local bin=$1 device=$2 data=$3 name run
  name=$(basename "$bin")
  for run in a b; do
    "$bin" train --preset tiny --data "$data" --device "$device" --set max_steps=20 --set eval_interval=1000 \
      --set checkpoint=false --out "/tmp/repeat-$name-$run" --overwrite > /dev/null || return
  done
  "$bin" repro "/tmp/repeat-$name-a" "/tmp/repeat-$name-b"
}
export -f repeat
for bin in "${builds[@]}"; do
  case $bin in *autotune*)
    part "repeat-$(basename "$bin")" "$(($(left 160) < 70 ? $(left 160) : 70))" bash -c 'repeat "$@"' _ "$bin" \
      "$fastest" "$carry/input.txt" ;;
  esac
done

part "train-$fastest" "$(left 100)" "$fast" train --preset nanogpt-shakespeare-char --data "$carry/input.txt" \
  --device "$fastest" --set checkpoint=false --out "$out/nanogpt-$fastest" --overwrite
[ -f "$out/nanogpt-$fastest/metrics.jsonl" ] && python3 - "$out/nanogpt-$fastest/metrics.jsonl" <<'EOF' || true
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if r.get("val_loss") is not None]
if not evals:
    sys.exit("no evaluation yet")
best = min(evals, key=lambda r: r["val_loss"])
print(f"best val loss {best['val_loss']:.4f} at step {best['step']} of {evals[-1]['step']} evaluated")
EOF

backends=cpu,$(IFS=,; echo "${gpus[*]}")
part repro "$(left 50)" "$fast" repro --backends "$backends" --preset tiny --data "$carry/input.txt" --steps 100
part repro-dropout "$(left 15)" "$fast" repro --backends "$backends" --preset tiny --data "$carry/input.txt" \
  --steps 40 --set dropout=0.1

if [ -n "${sweep:-}" ]; then
  kill -TERM -- "-$sweep" 2>/dev/null
  wait "$sweep"
  echo "== sweep: $(find "$out/sweep" -name metrics.jsonl -path '*/seed-*' | wc -l) runs trained or begun"
fi
echo "== done after $SECONDS s"
# Let tee write the end of gpu.log before the script exits.
exec >&- 2>&-
wait
