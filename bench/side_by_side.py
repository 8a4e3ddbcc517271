"""simplegpt next to nanoGPT (PyTorch) on the same machine, the same config and data.

Runs nanoGPT's own train.py and `simplegpt bench` on the same model sizes, and prints
ms/step, tokens/s and the ratio to nanoGPT for each, with the peak device memory (on a GPU)
and each process's peak RSS (from GNU time, where there is one). nanoGPT is not part of this project:
pass a checkout of it with --nanogpt (`bash bench/pack.sh` exports one for the GPU machine,
which has no network). Needs python3 with numpy and torch.

    python3 bench/side_by_side.py --simplegpt target/release/simplegpt \\
        --nanogpt bench/carry/nanoGPT --data tinyshakespeare.txt --device vulkan

Several simplegpt builds and devices can be measured in one run (`--simplegpt` again,
as PATH@DEVICE), and nanoGPT at several precisions (`--dtype float32,bfloat16`); ratios are
to nanoGPT at the first dtype. A simplegpt run that fails (a device the binary lacks) is
reported and the rest go on.

Sizes: `shakespeare` is nanoGPT's shakespeare_char config (6 x 384, block 256, batch 64,
dropout 0.2); `tiny` simplegpt's tiny preset (1 x 64, 2 heads, block 64, batch 32, no
dropout); `cpu` nanoGPT's README example for a CPU (4 x 128, 4 heads, block 64, batch 12, no
dropout); `large` is GPT-2 small's shape (12 x 768, block 1024, batch 8, no dropout) on
the same characters. nanoGPT runs in float32 (`--dtype float32`, with TF32 matmuls, as its
train.py allows them), the precision simplegpt trains in.
"""

import argparse
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile

import numpy as np

def flags(n_layer, n_head, n_embd, block_size, batch_size, dropout):
    """nanoGPT's train.py flags and simplegpt's --set equivalents (on its nanoGPT preset)."""
    keys = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, batch_size=batch_size,
                dropout=dropout)
    return [f"--{k}={v}" for k, v in keys.items()], [f"{k}={v}" for k, v in keys.items()]


SIZES = {
    # nanoGPT's train.py flags, and simplegpt's --set equivalents on its nanoGPT preset.
    "shakespeare": ([], []),
    # simplegpt's `tiny` preset (the blog's one-layer model).
    "tiny": flags(1, 2, 64, 64, 32, 0.0),
    # nanoGPT's README example for a CPU ("4 layers, 4 heads, 128 wide, context 64, batch 12").
    "cpu": flags(4, 4, 128, 64, 12, 0.0),
    "large": flags(12, 12, 768, 1024, 8, 0.0),
}


def prepare_nanogpt_data(nanogpt, text_path):
    """What nanoGPT's data/shakespeare_char/prepare.py does, minus its download."""
    out = os.path.join(nanogpt, "data", "shakespeare_char")
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    ids[: int(n * 0.9)].tofile(os.path.join(out, "train.bin"))
    ids[int(n * 0.9) :].tofile(os.path.join(out, "val.bin"))
    with open(os.path.join(out, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)


def run(cmd, cwd=None, check=True):
    """(stdout, peak RSS in MiB or None) of the command; on failure, exits (check) or returns
    None with its error printed. The peak RSS is the process's own, from GNU time where there
    is one (the kernel's count from wait4 in this process would include this process's own
    size at the fork, torch and all)."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    with tempfile.NamedTemporaryFile("r") as rss:
        timed = ["/usr/bin/time", "-f", "%M", "-o", rss.name] if os.path.exists("/usr/bin/time") else []
        p = subprocess.run(timed + cmd, cwd=cwd, capture_output=True, text=True)
        kib = rss.read().strip().splitlines()
    if p.returncode != 0:
        message = f"{cmd[0]} failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        if check:
            sys.exit("error: " + message)
        print("skipped: " + message, file=sys.stderr, flush=True)
        return None
    return p.stdout, int(kib[-1]) / 1024 if kib and kib[-1].isdigit() else None


# nanoGPT's train.py run as a script, then its peak device memory (PyTorch's allocator's own count).
NANOGPT_WITH_MEMORY = (
    "import runpy, sys, torch; sys.argv = sys.argv[1:]; runpy.run_path('train.py', run_name='__main__'); "
    "print(f'peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB' if torch.cuda.is_available() else '')"
)


def nanogpt_ms_per_step(args, flags, dtype):
    """Mean of nanoGPT's own per-iteration times after the warm-up iterations, and its peak
    memory; None where the run failed (a dtype the device lacks, say)."""
    iters = args.warmup + args.steps
    out = run(
        [sys.executable, "-c", NANOGPT_WITH_MEMORY, "train.py", "config/train_shakespeare_char.py",
         f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--eval_interval=1000000", "--eval_iters=1",
         "--log_interval=1", "--always_save_checkpoint=False", f"--device={args.torch_device}", f"--dtype={dtype}",
         f"--compile={args.compile}", *flags],
        cwd=args.nanogpt,
        check=False,
    )
    if out is None:
        return None
    out, rss = out
    times = [(int(m[1]), float(m[2])) for m in re.finditer(r"^iter (\d+): loss [^,]+, time ([\d.]+)ms", out, re.M)]
    timed = [t for i, t in times if i > args.warmup]
    if len(timed) < args.steps - 1:
        print(f"skipped: could not read nanoGPT's iteration times from its output:\n{out[-2000:]}", file=sys.stderr)
        return None
    memory = re.search(r"^peak memory (.*)$", out, re.M)
    return statistics.mean(timed), memory[1] if memory else "?", rss


def simplegpt_bench(args, binary, device, sets):
    """(ms/step, peak device memory), or None where the run failed."""
    cmd = [binary, "bench", "--preset", "nanogpt-shakespeare-char", "--device", device,
           "--data", args.data, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    for s in sets:
        cmd += ["--set", s]
    out = run(cmd, check=False)
    if out is None:
        return None
    out, rss = out
    line = (out.strip().splitlines() or [""])[-1]
    ms = re.search(r"\| ([\d.]+) ms/step \|", line)
    memory = re.search(r"peak device memory (.*)$", line)
    if not ms:
        print(f"skipped: unexpected output from simplegpt bench: {line!r}", file=sys.stderr)
        return None
    return float(ms[1]), memory[1] if memory else "?", rss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simplegpt", required=True, action="append",
                    help="the simplegpt binary, or BINARY@DEVICE; again for more builds or devices")
    ap.add_argument("--nanogpt", required=True, help="a nanoGPT checkout (it is written to: data/shakespeare_char)")
    ap.add_argument("--data", required=True, help="tiny Shakespeare (input.txt)")
    ap.add_argument("--device", default="vulkan", help="simplegpt's --device where --simplegpt names none (default vulkan)")
    ap.add_argument("--torch-device", default="cuda", help="nanoGPT's --device (default cuda)")
    ap.add_argument("--dtype", default="float32", help="nanoGPT's --dtype, or several, comma-separated (default float32)")
    ap.add_argument("--compile", default="False", choices=["True", "False"], help="nanoGPT's torch.compile")
    ap.add_argument("--sizes", default="shakespeare,large")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    for size in args.sizes.split(","):
        if size not in SIZES:
            sys.exit(f"error: unknown size '{size}'; choose from {', '.join(SIZES)}")
    if not os.path.isfile(os.path.join(args.nanogpt, "train.py")):
        sys.exit(f"error: {args.nanogpt} is not a nanoGPT checkout (no train.py); see bench/pack.sh")
    builds = [tuple(b.rsplit("@", 1)) if "@" in b else (b, args.device) for b in args.simplegpt]
    for binary, _ in builds:
        if not os.path.isfile(binary):
            sys.exit(f"error: no simplegpt binary at {binary}")
    dtypes = args.dtype.split(",")

    prepare_nanogpt_data(args.nanogpt, args.data)
    import torch  # only now: the checks above need no torch

    # Each row: size, what ran, ms/step (None: failed), memory. Printed, and the JSON
    # rewritten, as each is measured, so that a run stopped early keeps what it measured.
    rows = []

    def measured(row):
        rows.append(row)
        print(f"measured: {row}", file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"torch": torch.__version__, "args": vars(args), "results": rows}, f, indent=1)

    for size in args.sizes.split(","):
        torch_flags, sets = SIZES[size]
        given = dict(f[2:].split("=") for f in torch_flags)
        tokens = int(given.get("batch_size", 64)) * int(given.get("block_size", 256))
        for dtype in dtypes:
            ms, mem, rss = nanogpt_ms_per_step(args, torch_flags, dtype) or (None, "failed", None)
            measured({"size": size, "run": f"nanoGPT pre-LN ({dtype})", "ms": ms, "memory": mem, "rss_mib": rss,
                      "tokens_per_step": tokens})
        for binary, device in builds:
            label = f"{os.path.basename(binary)} on {device}"
            for norm, name in [("pre_ln", "pre-LN"), ("simple", "SimpleNorm")]:
                ms, mem, rss = simplegpt_bench(args, binary, device, sets + [f"norm={norm}"]) or (None, "failed", None)
                measured({"size": size, "run": f"{label}, {name}", "ms": ms, "memory": mem, "rss_mib": rss,
                          "tokens_per_step": tokens})

    print(f"\nnanoGPT: torch {torch.__version__} on {args.torch_device}, compile {args.compile}; "
          f"{args.warmup} warm-up + {args.steps} timed steps; ratios: nanoGPT's ms/step ({dtypes[0]}) over the run's")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    print()
    # Peak RSS: the whole process's, start-up and warm-up included (on a GPU, host memory).
    print("| size | run | ms/step | tokens/s | speed vs nanoGPT | device memory | peak RSS |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        here = [r for r in rows if r["size"] == size]
        base = here[0]["ms"]
        for r in here:
            tokens = r["tokens_per_step"]
            if r["ms"] is None:
                print(f"| {size} | {r['run']} | failed | | | | |")
                continue
            ratio = f"{base / r['ms']:.2f}x" if base else "–"
            rss = f"{r['rss_mib']:,.0f} MiB" if r["rss_mib"] else "?"
            print(f"| {size} | {r['run']} | {r['ms']:.2f} | {tokens / r['ms'] * 1e3:,.0f} | {ratio} | {r['memory']} | {rss} |")
        for binary, device in builds:
            label = f"{os.path.basename(binary)} on {device}"
            pre = next(r["ms"] for r in here if r["run"] == f"{label}, pre-LN")
            simple = next(r["ms"] for r in here if r["run"] == f"{label}, SimpleNorm")
            if pre and simple:
                print(f"| {size} | {label}: SimpleNorm / pre-LN step time | {simple / pre:.3f} | | | | |")


if __name__ == "__main__":
    main()
