#!/usr/bin/env python3
"""Where a GPU step's time goes, kernel by kind, from CubeCL's own profiler.

CubeCL times every kernel it launches when its profiling logger is on. Run a bench with this
in a `cubecl.toml` in the working directory (timing each kernel slows the step: read the
shares and the kernels' own times, not the step's):

    [profiling.logger]
    level = "basic"
    file = "profile.log"

then `simplegpt bench --device vulkan ... --warmup 3 --steps 4` and

    python3 bench/kernel_profile.py profile.log --steps 3

It splits the log into steps at each launch of the step's first kernel (--step-start: the
token embedding's lookup), drops what comes before the first (initialisation) and the last
step (the log can end before its last lines are written), and of the rest takes the last
--steps, which leaves out the first steps' autotuning where that is built in. It sums the
lines `| 1.23ms | KernelName_hash` by kind of kernel (the name without its hash; a matmul
by its routine) and prints each kind's launches and milliseconds per step, and its share.
"""

import argparse
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^\|\s*([0-9.]+)(ns|µs|us|ms|s)\s*\|\s*(.+?)\s*$")
# A kernel CubeCL named but could not time.
UNTIMED = re.compile(r"^\|\s*not measured\s*\|")
UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def kind(name: str) -> str:
    """A kernel's kind: its name without the hash CubeCL appends; a matmul by its routine."""
    fields = [f.strip() for f in name.split("|")]
    fields[-1] = re.sub(r"_[0-9a-f]{8}$", "", fields[-1])
    if fields[0] == "MatmulEntry":
        routine = [f for f in fields if f.endswith("Family") or f.endswith("Partitioner")]
        return " ".join(["matmul"] + (routine or ["(routine not named)"]))
    if len(fields) > 2:
        fields = fields[:2]
    return " ".join(fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log", help="the profiling log CubeCL wrote")
    parser.add_argument("--steps", type=int, default=1, help="steps to sum, the log's last complete ones")
    parser.add_argument("--step-start", default="SelectKernel", help="the kind of each step's first kernel")
    parser.add_argument("--top", type=int, default=25, help="kinds to list (the rest summed)")
    args = parser.parse_args()

    if args.steps < 1:
        sys.exit(f"error: --steps {args.steps}: give at least 1")
    steps = [[]]
    untimed = 0
    try:
        log = open(args.log, encoding="utf-8", errors="replace")
    except OSError as e:
        sys.exit(f"error: cannot read {args.log}: {e.strerror}")
    with log:
        for line in log:
            untimed += bool(UNTIMED.match(line))
            match = LINE.match(line)
            if not match:
                continue
            value, unit, name = match.groups()
            key = kind(name)
            if key == args.step_start:
                steps.append([])
            steps[-1].append((key, float(value) * UNIT_MS[unit]))
    complete = steps[1:-1]
    if not any(steps):
        sys.exit(f"error: no kernel timings in {args.log}: was the profiling logger on (cubecl.toml)?")
    if len(complete) < args.steps:
        sys.exit(f"error: {args.log} holds {len(complete)} complete steps (each starting with "
                 f"{args.step_start}), fewer than --steps {args.steps}: bench more steps")
    total = defaultdict(float)
    launches = defaultdict(int)
    for step in complete[-args.steps:]:
        for key, ms in step:
            total[key] += ms
            launches[key] += 1

    whole = sum(total.values()) or 1.0
    steps = args.steps
    print(f"{sum(launches.values()) / steps:.0f} kernel launches and {whole / steps:.2f} ms of "
          f"kernel time per step ({steps} steps)")
    if untimed:
        print(f"({untimed} launches in the log were not timed by CubeCL and are not counted)")
    print(f"{'kind':<60} {'launches/step':>13} {'ms/step':>9} {'share':>6}")
    ranked = sorted(total, key=total.get, reverse=True)
    for key in ranked[: args.top]:
        print(f"{key[:60]:<60} {launches[key] / steps:>13.1f} {total[key] / steps:>9.2f} "
              f"{total[key] / whole:>6.1%}")
    rest = ranked[args.top:]
    if rest:
        ms = sum(total[k] for k in rest)
        n = sum(launches[k] for k in rest)
        print(f"{f'({len(rest)} other kinds)':<60} {n / steps:>13.1f} {ms / steps:>9.2f} {ms / whole:>6.1%}")


if __name__ == "__main__":
    main()
