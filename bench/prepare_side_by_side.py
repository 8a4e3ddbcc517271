"""GPT-2 BPE tokenising speed: `simplegpt prepare` next to OpenAI's tiktoken (the Python
package, Rust inside) fed the same r50k_base ranks, both on one core, then simplegpt on
every core. Prints MB/s of UTF-8 input (medians over repeats, taken in turns so that a
noisy machine slows both alike) and the ratios, after checking that both give the same ids.

    pip install tiktoken numpy
    python3 bench/prepare_side_by_side.py --simplegpt ~/.cache/simplegpt-target/debug/simplegpt \
        --text tinyshakespeare.txt --mib 32

The ranks file defaults to the copy tiktoken-rs (simplegpt's tokenizer crate) carries in the
cargo registry, so nothing is downloaded. tiktoken is timed on `encode_ordinary` of the text
in memory; simplegpt on the whole `prepare` command (read, tokenise, write the shards).
"""

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np
import tiktoken
from tiktoken.load import load_tiktoken_bpe

# GPT-2's pre-tokenizer, as tiktoken's own r50k_base definition gives it.
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TEXT = 50256


def default_ranks():
    found = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-*/assets/r50k_base.tiktoken")))
    if not found:
        raise SystemExit("error: no r50k_base.tiktoken in the cargo registry; build simplegpt first or give --ranks")
    return found[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simplegpt", required=True, help="the simplegpt binary")
    ap.add_argument("--text", default=os.path.expanduser("~/.cache/simplegpt/tinyshakespeare.txt"))
    ap.add_argument("--mib", type=float, default=32, help="repeat the text up to this many MiB")
    ap.add_argument("--ranks", default=None, help="r50k_base.tiktoken (default: tiktoken-rs's)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    base = open(args.text, encoding="utf-8").read()
    text = base * max(1, int(args.mib * 2**20 / len(base.encode())))
    mb = len(text.encode()) / 1e6
    enc = tiktoken.Encoding(
        "r50k_base",
        pat_str=R50K_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(args.ranks or default_ranks()),
        special_tokens={"<|endoftext|>": END_OF_TEXT},
    )
    work = tempfile.mkdtemp(prefix="prepare-bench-")
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write(text)

    def tiktoken_run():
        t = time.perf_counter()
        ids = enc.encode_ordinary(text)
        return time.perf_counter() - t, ids

    def simplegpt_run(threads):
        out = os.path.join(work, f"shards-{threads}")
        shutil.rmtree(out, ignore_errors=True)
        env = dict(os.environ)
        if threads:
            env["RAYON_NUM_THREADS"] = str(threads)
        t = time.perf_counter()
        subprocess.run([args.simplegpt, "prepare", corpus, "--out", out, "--format", "nanogpt"],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        secs = time.perf_counter() - t
        ids = np.concatenate([np.fromfile(os.path.join(out, s), dtype="<u2") for s in ("train.bin", "val.bin")])
        return secs, ids

    cores = os.cpu_count()
    times = {"tiktoken, 1 core": [], "simplegpt, 1 core": [], f"simplegpt, {cores} cores": []}
    for r in range(args.repeats):
        secs, ids = tiktoken_run()
        times["tiktoken, 1 core"].append(secs)
        for threads, name in [(1, "simplegpt, 1 core"), (None, f"simplegpt, {cores} cores")]:
            secs, ours = simplegpt_run(threads)
            times[name].append(secs)
            if r == 0:
                # One document: <|endoftext|>, then the text's ids, however prepare read it.
                same = len(ours) == len(ids) + 1 and ours[0] == END_OF_TEXT and np.array_equal(ours[1:], ids)
                if not same:
                    raise SystemExit(f"error: {name} gave other ids than tiktoken ({len(ours) - 1} vs {len(ids)})")
    shutil.rmtree(work)

    print(f"{mb:.1f} MB of UTF-8 ({args.text} repeated), {len(ids)} tokens, the same ids from both; "
          f"medians of {args.repeats}, taken in turns")
    print("| run | s | MB/s | MB/s per core | vs tiktoken per core |")
    print("|---|---:|---:|---:|---:|")
    per_core_tiktoken = mb / statistics.median(times["tiktoken, 1 core"])
    for name, ts in times.items():
        s = statistics.median(ts)
        n = cores if "cores" in name else 1
        print(f"| {name} | {s:.2f} | {mb / s:.1f} | {mb / s / n:.1f} | {mb / s / n / per_core_tiktoken:.2f}x |")


if __name__ == "__main__":
    main()
