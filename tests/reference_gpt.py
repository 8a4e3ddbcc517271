"""An independent GPT forward pass in numpy, for checking simplegpt's numbers.

Reads a file written by `simplegpt export --batches N` (safetensors: PyTorch names and
layout, the config and the batches in it), runs the model written out below from the
definitions in the SimpleGPT paper, nanoGPT and the papers of the other norm placements
(Peri-LN, Mix-LN, OLMo 2, DeepNet, nGPT; not from simplegpt's code), and prints the mean
cross-entropy of each exported batch, one per line, in float64; with `z_loss > 0` in the
config, each line also gives, after a space, the z-loss term (z_loss x the mean of
log(Z)^2). With `dropout > 0` in the config, batch i is run as training step i runs it:
with dropout masks drawn by the hash specified in simplegpt's rng.rs (re-implemented
below), keyed by (seed, i, site).

Which tensors the model has follows from the config (norm kind, MLP, positions, bias, tied
head); the export must hold exactly those, or the script fails.

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


M64 = (1 << 64) - 1


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def keep_mask(shape, seed, batch, site, p):
    """Keep (True) or drop each element: a 5-round Feistel hash of its row-major index."""
    key = splitmix64(splitmix64(splitmix64(seed) ^ batch) ^ site)
    index = np.arange(math.prod(shape), dtype=np.int64)
    left, right = index >> 15, index & 0x7FFF
    for r in range(5):
        t = (right ^ (splitmix64((key + r) & M64) & 0x7FFF)) * 0x5D2B
        left, right = right, left ^ (((t >> 15) ^ t) & 0x7FFF)
    threshold = math.floor(p * (1 << 30) + 0.5)
    return (((left << 15) | right) >= threshold).reshape(shape)


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


LAYER_NORM_KINDS = ("pre_ln", "post_ln", "mix_ln", "deepnorm")


def qk_norm(m):
    """QK-norm: its own switch (absent from older configs: off), and part of three variants."""
    return m.get("qk_norm", False) or m["norm"] in ("pre_rms_qk", "simple", "olmo2")


def post_ln_blocks(m):
    """How many of the first blocks normalise after the residual add."""
    kind, layers = m["norm"], m["n_layer"]
    if kind in ("post_ln", "deepnorm"):
        return layers
    if kind == "mix_ln":  # Mix-LN: post-LN in the first floor(fraction x L) layers
        return math.floor(m.get("mix_ln_fraction", 0.25) * layers)
    return 0


def expected_names(m):
    """Every tensor an export of this model config must hold, by the layout of interop.rs:
    derived from the config, so that a missing or extra norm is an error, not skipped."""
    kind = m["norm"]
    rms = kind not in LAYER_NORM_KINDS
    names = {"wte.weight"}
    if m["pos"] == "learned":
        names.add("wpe.weight")
    if not m["tie_weights"]:
        names.add("lm_head.weight")

    def linear(prefix):
        names.add(prefix + ".weight")
        if m["bias"]:
            names.add(prefix + ".bias")

    def norm(prefix, is_rms=rms):
        names.add(prefix + ".weight")
        if m["bias"] and not is_rms:
            names.add(prefix + ".bias")

    for i in range(m["n_layer"]):
        p = f"blocks.{i}"
        for lin in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj"):
            linear(f"{p}.{lin}")
        if m["mlp"] == "swiglu":
            linear(f"{p}.mlp.gate")
        if kind in ("pre_ln", "pre_rms", "pre_rms_qk", "post_ln", "peri_ln", "mix_ln", "deepnorm"):
            norm(f"{p}.ln_1")
            norm(f"{p}.ln_2")
        if kind in ("peri_ln", "olmo2"):  # a norm on each sublayer's output
            norm(f"{p}.attn_out_norm")
            norm(f"{p}.mlp_out_norm")
        if qk_norm(m):  # QK-norm: RMSNorm without bias
            norm(f"{p}.attn.q_norm", True)
            norm(f"{p}.attn.k_norm", True)
        if kind == "simple":  # a norm after every linear
            for n in ("attn.v_norm", "attn.o_norm", "mlp.fc_norm", "mlp.proj_norm"):
                norm(f"{p}.{n}", True)
            if m["mlp"] == "swiglu":
                norm(f"{p}.mlp.gate_norm", True)
        if kind == "ngpt":  # nGPT's learned vectors: alpha per sublayer, s_qk, s_u, s_nu
            for n in ("attn_alpha", "mlp_alpha", "attn.qk_scale", "mlp.fc_scale", "mlp.gate_scale"):
                names.add(f"{p}.{n}.weight")
    if kind == "ngpt":
        names.add("logit_scale.weight")  # s_z
    if kind not in ("post_ln", "deepnorm", "ngpt", "none"):
        norm("ln_f")
    return names


def unit(x):
    """nGPT's normalisation onto the unit sphere, over the last axis."""
    return x / np.sqrt((x * x).sum(-1, keepdims=True))


def check_unit_vectors(W):
    """nGPT keeps every matrix's vectors along the width at unit norm (torch layout [out, in]:
    rows of the embeddings and of the matrices that read the width, columns of those that
    write it)."""
    for name, w in W.items():
        if w.ndim != 2 or name.startswith("batches."):
            continue
        writes_width = name.endswith("attn.o.weight") or name.endswith("mlp.proj.weight")
        lengths = np.sqrt((w.astype(np.float64) ** 2).sum(0 if writes_width else 1))
        if np.abs(lengths - 1).max() > 1e-5:
            raise SystemExit(f"nGPT: {name} has vectors of length {lengths.min()} to {lengths.max()}, not 1")


def rope(t, theta=10000.0):
    """Rotary position embedding (RoFormer): the pairs (2i, 2i+1) of each head's channels
    at position p rotated by the angle p * theta^(-2i/hs); t: [B, nh, T, hs]."""
    T, hs = t.shape[-2], t.shape[-1]
    freq = theta ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)
    angle = np.arange(T, dtype=np.float64)[:, None] * freq[None, :]  # [T, hs/2]
    cos, sin = np.cos(angle), np.sin(angle)
    even, odd = t[..., 0::2], t[..., 1::2]
    out = np.empty_like(t)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def forward_loss(W, m, x, y, seed, batch):
    """Mean cross-entropy of next-character prediction, and the mean of log(Z)^2 over the
    positions (Z: the softmax's normaliser); x, y: [B, T] ids."""
    kind = m["norm"]
    rms = kind not in LAYER_NORM_KINDS
    pre_or_post = kind in ("pre_ln", "pre_rms", "pre_rms_qk", "post_ln", "peri_ln", "mix_ln", "deepnorm")
    out_norm = kind in ("peri_ln", "olmo2")
    qk = qk_norm(m)
    simple = kind == "simple"
    # DeepNet (decoder-only): post-LN of alpha x + f(x), alpha = (2 N)^(1/4) for N layers.
    alpha = (2 * m["n_layer"]) ** 0.25 if kind == "deepnorm" else 1.0
    ngpt = kind == "ngpt"
    C = m["n_embd"]

    def learned(name, init, scale):
        """nGPT's parametrisation: a vector stored at `scale`, used as stored x init / scale."""
        return get(name) * (init / scale)

    def dropout(h, site):
        p = m["dropout"]
        if p == 0:
            return h
        return np.where(keep_mask(h.shape, seed, batch, site, p), h / (1.0 - p), 0.0)

    def get(name):
        return W[name].astype(np.float64)

    def bias(name):
        return get(name) if m["bias"] else None

    def normalize(prefix, h, on=True, is_rms=rms):
        if not on:
            return h
        if is_rms:
            return rms_norm(h, get(prefix + ".weight"))
        return layer_norm(h, get(prefix + ".weight"), bias(prefix + ".bias"))

    def linear(prefix, h):  # torch layout: y = h W^T + b
        out = h @ get(prefix + ".weight").T
        b = bias(prefix + ".bias")
        return out + b if b is not None else out

    def add(a, b):
        return alpha * a + b if m["residual"] else b

    B, T = x.shape
    C, nh = m["n_embd"], m["n_head"]
    hs = C // nh
    h = get("wte.weight")[x]
    if m["pos"] == "learned":
        h = h + get("wpe.weight")[:T]
    elif m["pos"] != "rope":
        raise SystemExit(f"unknown pos {m['pos']!r}")
    h = dropout(h, 0)
    causal = np.triu(np.ones((T, T), dtype=bool), 1)
    for i in range(m["n_layer"]):
        p = f"blocks.{i}"

        def attn(u):
            q = normalize(p + ".attn.q_norm", linear(p + ".attn.q", u), qk, True)
            k = normalize(p + ".attn.k_norm", linear(p + ".attn.k", u), qk, True)
            v = normalize(p + ".attn.v_norm", linear(p + ".attn.v", u), simple, True)
            q, k, v = (t.reshape(B, T, nh, hs).transpose(0, 2, 1, 3) for t in (q, k, v))
            if m["pos"] == "rope":
                q, k = rope(q), rope(k)
            if ngpt:  # q, k unit per head times s_qk; cosines taken at sqrt(hs)
                s_qk = learned(p + ".attn.qk_scale.weight", 1.0, C**-0.5).reshape(nh, 1, hs)
                q, k = unit(q) * s_qk, unit(k) * s_qk
                att = q @ k.transpose(0, 1, 3, 2) * math.sqrt(hs)
            else:
                att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
            att = dropout(softmax(np.where(causal, -np.inf, att), -1), 1 + 3 * i)
            out = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
            return dropout(normalize(p + ".attn.o_norm", linear(p + ".attn.o", out), simple, True), 2 + 3 * i)

        def mlp(u):
            a = normalize(p + ".mlp.fc_norm", linear(p + ".mlp.fc", u), simple, True)
            if ngpt:  # nGPT's SwiGLU: u s_u gating silu(nu s_nu sqrt(d))
                nu = a * learned(p + ".mlp.fc_scale.weight", 1.0, 1.0) * math.sqrt(C)
                a = silu(nu) * linear(p + ".mlp.gate", u) * learned(p + ".mlp.gate_scale.weight", 1.0, 1.0)
            elif m["mlp"] == "swiglu":
                a = silu(a) * normalize(p + ".mlp.gate_norm", linear(p + ".mlp.gate", u), simple, True)
            else:
                a = gelu(a)
            return dropout(normalize(p + ".mlp.proj_norm", linear(p + ".mlp.proj", a), simple, True), 3 + 3 * i)

        if ngpt:  # h <- norm(h + alpha (norm(f(h)) - h)), alpha per channel, for each sublayer
            alpha_a = learned(p + ".attn_alpha.weight", 0.05, C**-0.5)
            h = unit(h + alpha_a * (unit(attn(h)) - h))
            alpha_m = learned(p + ".mlp_alpha.weight", 0.05, C**-0.5)
            h = unit(h + alpha_m * (unit(mlp(h)) - h))
        elif i < post_ln_blocks(m):  # post-LN, DeepNet, Mix-LN's first layers
            h = normalize(p + ".ln_1", add(h, attn(h)))
            h = normalize(p + ".ln_2", add(h, mlp(h)))
        else:  # pre-LN; Peri-LN and OLMo 2 also normalise each sublayer's output
            h = add(h, normalize(p + ".attn_out_norm", attn(normalize(p + ".ln_1", h, pre_or_post)), out_norm, True))
            h = add(h, normalize(p + ".mlp_out_norm", mlp(normalize(p + ".ln_2", h, pre_or_post)), out_norm, True))
    h = normalize("ln_f", h, kind not in ("post_ln", "deepnorm", "ngpt", "none"))
    head = get("wte.weight") if m["tie_weights"] else get("lm_head.weight")
    logits = h @ head.T
    if ngpt:
        logits = logits * learned("logit_scale.weight", 1.0, C**-0.5)  # s_z
    cap = m.get("logit_softcap", 0.0)
    if cap > 0:  # Gemma 2's soft cap
        logits = cap * np.tanh(logits / cap)
    top = logits.max(-1, keepdims=True)
    log_z = top + np.log(np.exp(logits - top).sum(-1, keepdims=True))
    logp = logits - log_z
    return -np.take_along_axis(logp, y[..., None].astype(np.int64), -1).mean(), (log_z**2).mean()


def main():
    W, meta = read_safetensors(sys.argv[1])
    config = tomllib.loads(meta["config"])
    names, expected = set(W) - {"batches.x", "batches.y"}, expected_names(config["model"])
    if names != expected:
        raise SystemExit(f"the export's tensors differ from the config's: missing {sorted(expected - names)}, unexpected {sorted(names - expected)}")
    if config["model"]["norm"] == "ngpt":
        check_unit_vectors(W)
    z_loss = config["train"].get("z_loss", 0.0)
    for i, (x, y) in enumerate(zip(W["batches.x"], W["batches.y"])):
        cross_entropy, mean_log_z_squared = forward_loss(W, config["model"], x, y, config["train"]["seed"], i)
        z_term = f" {z_loss * mean_log_z_squared:.10f}" if z_loss > 0 else ""
        print(f"{cross_entropy:.10f}{z_term}")


if __name__ == "__main__":
    main()
