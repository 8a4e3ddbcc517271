#!/usr/bin/env bash
# A/B of simplegpt builds on a shared, noisy machine: runs `simplegpt bench` with each build
# in turn, ROUNDS times (A B A B ..., so that a slow spell of the machine hits both), then
# prints each build's medians: ms/step (from bench), CPU seconds (user + system), minor page
# faults and peak RSS (from GNU time, for the whole process: start-up and warm-up included).
#
#   bash bench/ab.sh ROUNDS NAME=COMMAND [NAME=COMMAND ...] -- BENCH ARGS...
#   bash bench/ab.sh 5 base=/tmp/simplegpt-base new=target/debug/simplegpt -- \
#       --device cpu --preset tiny --data embedded
#
# COMMAND may start with environment settings (`env GLIBC_TUNABLES=... /path/simplegpt`).
# Every run's figures go to stderr as they come; the medians to stdout.
set -euo pipefail
rounds=$1
shift
names=() cmds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  names+=("${1%%=*}")
  cmds+=("${1#*=}")
  shift
done
[ "${1:-}" = "--" ] && shift
log=$(mktemp)
for r in $(seq 1 "$rounds"); do
  for i in "${!names[@]}"; do
    out=$(mktemp)
    # shellcheck disable=SC2086 # COMMAND is split into words on purpose
    /usr/bin/time -f 'TIME %U %S %R %M' ${cmds[$i]} bench "$@" >"$out" 2>&1
    ms=$(grep -o '| [0-9.]* ms/step' "$out" | head -1 | cut -d' ' -f2)
    read -r user sys faults rss < <(grep '^TIME ' "$out" | cut -d' ' -f2-)
    line="${names[$i]} round $r: $ms ms/step, cpu $(echo "$user + $sys" | bc) s, $faults minor faults, peak RSS $((rss / 1024)) MiB"
    echo "$line" >&2
    echo "$line" >>"$log"
    rm -f "$out"
  done
done
python3 - "$log" "${names[@]}" <<'EOF'
import re, statistics, sys
log, names = sys.argv[1], sys.argv[2:]
rows = [re.match(r"(\S+) round \d+: ([\d.]+) ms/step, cpu ([\d.]+) s, (\d+) minor faults, peak RSS (\d+) MiB", l).groups()
        for l in open(log)]
med = {}
for n in names:
    mine = [r for r in rows if r[0] == n]
    med[n] = [statistics.median(float(r[k]) for r in mine) for k in (1, 2, 3, 4)]
    print(f"{n}: median of {len(mine)}: {med[n][0]:.2f} ms/step, cpu {med[n][1]:.2f} s, "
          f"{med[n][2]:.0f} minor faults, peak RSS {med[n][3]:.0f} MiB")
for n in names[1:]:
    print(f"{n} / {names[0]}: ms/step {med[n][0] / med[names[0]][0]:.3f}, cpu {med[n][1] / med[names[0]][1]:.3f}, "
          f"faults {med[n][2] / med[names[0]][2]:.3f}")
EOF
rm -f "$log"
