"""An independent GPT forward pass in numpy, for checking simplegpt's numbers.

Reads a file written by `simplegpt export --batches N` (safetensors: PyTorch names and
layout, the config and the batches in it), runs the model written out below from the
definitions in the SimpleGPT paper and nanoGPT (not from simplegpt's code), and prints the
mean cross-entropy of each exported batch, one per line, in float64.

Usage: python3 reference_gpt.py EXPORT.safetensors
"""

import json
import math
import struct
import sys
import tomllib

import numpy as np

EPS = 1e-5


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F32": np.float32, "I32": np.int32}
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        buf = raw[8 + n + start : 8 + n + end]
        tensors[name] = np.frombuffer(buf, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return tensors, meta


def layer_norm(x, w, b):
    x = x - x.mean(-1, keepdims=True)
    x = x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS)
    return x * w + (b if b is not None else 0.0)


def rms_norm(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def forward_loss(W, m, x, y):
    """Mean cross-entropy of next-character prediction; x, y: [B, T] ids."""
    norm, rms = m["norm"], m["norm"] not in ("pre_ln", "post_ln")
    if m["pos"] != "learned":
        raise SystemExit("the reference implements learned positions only")

    def get(name):
        return W[name].astype(np.float64) if name in W else None

    def normalize(prefix, h):
        if get(prefix + ".weight") is None:
            return h
        if rms:
            return rms_norm(h, get(prefix + ".weight"))
        return layer_norm(h, get(prefix + ".weight"), get(prefix + ".bias"))

    def linear(prefix, h):  # torch layout: y = h W^T + b
        out = h @ get(prefix + ".weight").T
        b = get(prefix + ".bias")
        return out + b if b is not None else out

    def add(a, b):
        return a + b if m["residual"] else b

    B, T = x.shape
    C, nh = m["n_embd"], m["n_head"]
    hs = C // nh
    h = get("wte.weight")[x] + get("wpe.weight")[:T]
    causal = np.triu(np.ones((T, T), dtype=bool), 1)
    for i in range(m["n_layer"]):
        p = f"blocks.{i}"

        def attn(u):
            q = normalize(p + ".attn.q_norm", linear(p + ".attn.q", u))
            k = normalize(p + ".attn.k_norm", linear(p + ".attn.k", u))
            v = normalize(p + ".attn.v_norm", linear(p + ".attn.v", u))
            q, k, v = (t.reshape(B, T, nh, hs).transpose(0, 2, 1, 3) for t in (q, k, v))
            att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
            att = softmax(np.where(causal, -np.inf, att), -1)
            out = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
            return normalize(p + ".attn.o_norm", linear(p + ".attn.o", out))

        def mlp(u):
            a = normalize(p + ".mlp.fc_norm", linear(p + ".mlp.fc", u))
            if m["mlp"] == "swiglu":
                a = silu(a) * normalize(p + ".mlp.gate_norm", linear(p + ".mlp.gate", u))
            else:
                a = gelu(a)
            return normalize(p + ".mlp.proj_norm", linear(p + ".mlp.proj", a))

        if norm == "post_ln":
            h = normalize(p + ".ln_1", add(h, attn(h)))
            h = normalize(p + ".ln_2", add(h, mlp(h)))
        else:
            h = add(h, attn(normalize(p + ".ln_1", h)))
            h = add(h, mlp(normalize(p + ".ln_2", h)))
    h = normalize("ln_f", h)
    head = get("lm_head.weight") if "lm_head.weight" in W else get("wte.weight")
    logits = h @ head.T
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, y[..., None].astype(np.int64), -1).mean()


def main():
    W, meta = read_safetensors(sys.argv[1])
    model = tomllib.loads(meta["config"])["model"]
    for x, y in zip(W["batches.x"], W["batches.y"]):
        print(f"{forward_loss(W, model, x, y):.10f}")


if __name__ == "__main__":
    main()
