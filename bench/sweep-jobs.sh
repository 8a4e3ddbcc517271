#!/usr/bin/env bash
# Trains a learning-rate sweep's runs on a many-core machine: one process per (variant,
# seed), each on one thread, JOBS at a time, into the layout that `simplegpt sweep --seeds
# SEEDS --out OUT` uses (VARIANT/lr-X/seed-S). That sweep command, run afterwards with the
# same arguments, trains only what is missing and writes the report: it reuses every run that
# ended, and a run cut short is trained again. So does this script, run again on the same OUT.
#
#   bash bench/sweep-jobs.sh SIMPLEGPT OUT JOBS SEEDS SWEEP_ARGS...
#
# SWEEP_ARGS are sweep's own (each --variant NAME:KEY=VALUE,... among them; no --seeds or
# --out). Seeds count up from BASE_SEED (1337, the presets' seed), as sweep's --seeds does.
set -euo pipefail
[ $# -ge 5 ] || { echo "usage: bench/sweep-jobs.sh SIMPLEGPT OUT JOBS SEEDS SWEEP_ARGS..." >&2; exit 2; }
bin=$1 out=$2 jobs=$3 seeds=$4
shift 4
base=${BASE_SEED:-1337}
variants=() common=()
while [ $# -gt 0 ]; do
  if [ "$1" = --variant ]; then variants+=("$2"); shift 2; else common+=("$1"); shift; fi
done
[ ${#variants[@]} -gt 0 ] || { echo "error: give each variant with --variant NAME:KEY=VALUE,..." >&2; exit 2; }
mkdir -p "$out/.jobs"

# One job: the variant's whole LR grid with one seed, in its own study directory, which first
# takes over the runs OUT already has of it (the sweep reuses those that ended).
job() {
  local variant=$1 seed=$2 name=${1%%:*}
  local dir="$out/.jobs/$name/seed-$seed"
  mkdir -p "$dir/$name"
  for run in "$out/$name"/lr-*/"seed-$seed"; do
    [ -d "$run" ] || continue
    local lr
    lr=$(basename "$(dirname "$run")")
    rm -rf "${dir:?}/$name/$lr" && mv "$run" "$dir/$name/$lr"
  done
  RAYON_NUM_THREADS=1 "$bin" sweep "${common[@]}" --variant "$variant" --set "seed=$seed" --out "$dir" \
    > "$dir.log" 2>&1 || echo "$name seed $seed: exit $? (see $dir.log)" >&2
}
export -f job
export bin out
export common_args="${common[*]@Q}"

# Each job's runs moved to where the sweep with --seeds looks for them.
collect() {
  for run in "$out"/.jobs/*/seed-*/*/lr-*; do
    [ -d "$run" ] || continue
    local seed_dir=${run%/*/lr-*} name
    name=$(basename "$(dirname "$seed_dir")")
    local to="$out/$name/$(basename "$run")/$(basename "$seed_dir")"
    mkdir -p "${to%/*}" && rm -rf "$to" && mv "$run" "$to"
  done
}
# Stopped (e.g. by `timeout`, or `kill -- -PGID` when started with setsid): stop every job, keep
# what they trained. `kill 0` signals the whole process group: start this script in a group
# of its own (setsid, or an interactive shell's job) when it is stopped from another script.
trap 'trap "" TERM INT; kill -TERM 0; wait; collect; exit 143' TERM INT

# Seeds outermost, so that a machine that stops early has whole seeds of every variant.
for ((s = base; s < base + seeds; s++)); do
  for v in "${variants[@]}"; do printf '%s\0%s\0' "$v" "$s"; done
done | xargs -0 -n 2 -P "$jobs" bash -c 'eval "common=($common_args)"; job "$@"' _ &
wait $! || echo "some jobs failed (see $out/.jobs/*/*.log)" >&2
collect
echo "trained into $out; now run the sweep with --seeds $seeds --out $out to write its report"
