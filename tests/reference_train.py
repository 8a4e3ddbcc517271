"""An independent GPT trainer in PyTorch, for checking simplegpt's training, not only its forward.

Reads a file written by `simplegpt export --batches N` (safetensors: the initial weights in
PyTorch names and layout, the token ids of the first N training batches, the config in its
metadata) and trains those weights on those batches for N / grad_accum steps (at most
max_steps), written out below from the definitions (the model: the SimpleGPT paper, nanoGPT and the papers of the
other norm placements, as tests/reference_gpt.py's numpy forward; the training: nanoGPT's),
not from simplegpt's code:

- gradients: torch autograd, of the mean cross-entropy (plus z_loss x the mean of log(Z)^2,
  PaLM's z-loss, when the config has one), summed over the grad_accum micro-batches of a step
  and divided by grad_accum;
- clipping: one L2 norm over every gradient (`torch.nn.utils.clip_grad_norm_`'s), the
  gradients scaled by min(1, grad_clip / norm) (without torch's + 1e-6: simplegpt divides by
  the norm itself);
- the learning rate: nanoGPT's get_lr, linear warmup lr (step + 1) / (warmup + 1), then a
  cosine from lr to min_lr at lr_decay_steps, then min_lr;
- the update: `torch.optim.AdamW` (bias-corrected moments, eps added to sqrt(v_hat),
  decoupled weight decay p <- p (1 - lr wd) before the Adam step) with two parameter groups
  as nanoGPT's: weight decay on tensors of rank >= 2 (embeddings, linear weights, the head),
  none on biases, norm gains and nGPT's scale vectors; on all of them with decay_all;
- nGPT: after each update every matrix's vectors along the width are put back on the unit
  sphere (rows of the embedding, of the head and of the linears that read the width; columns
  of attn.o and mlp.proj, which write it).

Everything is float32, as simplegpt trains (`--float64` trains in float64 instead, to see how
far float32's rounding alone moves a trajectory). Dropout is not implemented: the config
must have dropout = 0.

Given simplegpt's run directory of the same config, trained with log_interval = 1, it
compares each step's loss and gradient norm (before clipping) with the run's metrics.jsonl
and exits non-zero naming the first step that differs by more than the tolerance: by
default 1e-5 relative on the loss and 1e-4 on the gradient norm. Why these: on the test's
configs (tests/cli.rs, 30 steps at lr 1e-3) every placement agreed to at most 1.8e-7 on the
loss (about 2 float32 ulps) and 1e-6 on the gradient norm, and this float64 reference agreed
with simplegpt as closely, so rounding is not amplified there; the bounds leave a margin of
50 and more for other CPUs' summation orders. A trajectory that amplifies rounding (the QK-norm
variants at lr 3e-3: float32 and float64 references themselves part by 1e-2 within 30 steps)
cannot be compared at any tolerance that means something; the test's learning rate is chosen
so that none does. Measured there (pre-LN, SimpleNorm, OLMo 2, Mix-LN), a wrong beta1 or beta2,
weight decay left out or put on every parameter, no clipping, another warmup or min_lr, the
soft cap or the z-loss left out, or one more post-LN block in Mix-LN moves the losses by
1e-4 to 2e-1 and the gradient norms by 2e-4 to 5e-1 within the 30 steps. (Under nGPT, weight
decay is nearly undone by the projection onto the sphere: leaving it out moves its losses by
1.4e-6 only, which this cannot see.)

With several EXPORT RUN_DIR pairs it checks each (one process: torch is imported once).
`--set KEY=VALUE` changes a [train] key (or a [model] key the export's tensors still fit)
for this reference alone; `--must-fail RUN_DIR:KEY=VALUE` also trains that pair so changed
and requires it to fail: a way to see that a wrong optimizer or model cannot pass. With an
export alone it prints each step's loss and gradient norm.

Usage: python3 reference_train.py EXPORT.safetensors [RUN_DIR] [EXPORT RUN_DIR ...]
       [--tolerance 1e-5] [--grad-tolerance 1e-4] [--set KEY=VALUE ...]
       [--must-fail RUN_DIR:KEY=VALUE ...] [--float64]
"""

import argparse
import json
import math
import os
import sys
import tomllib

import torch

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_gpt  # noqa: E402  (its safetensors reader)
from reference_gpt import expected_names  # noqa: E402  (which tensors a config's model has)

EPS = 1e-5
LAYER_NORM_KINDS = ("pre_ln", "post_ln", "mix_ln", "deepnorm")
PRE_OR_POST = ("pre_ln", "pre_rms", "pre_rms_qk", "post_ln", "peri_ln", "mix_ln", "deepnorm")


def read_safetensors(path):
    """reference_gpt's reader (its numpy arrays are read-only views of the file), as torch tensors."""
    arrays, meta = reference_gpt.read_safetensors(path)
    return {name: torch.from_numpy(a.copy()) for name, a in arrays.items()}, meta


def qk_norm(m):
    """QK-norm: its own switch, and part of pre_rms_qk, simple and olmo2 by definition."""
    return m.get("qk_norm", False) or m["norm"] in ("pre_rms_qk", "simple", "olmo2")


def post_ln_blocks(m):
    """How many of the first blocks normalise after the residual add (Mix-LN: floor(f L))."""
    if m["norm"] in ("post_ln", "deepnorm"):
        return m["n_layer"]
    if m["norm"] == "mix_ln":
        return math.floor(m.get("mix_ln_fraction", 0.25) * m["n_layer"])
    return 0


def layer_norm(x, w, b):
    x = x - x.mean(-1, keepdim=True)
    x = x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS)
    return x * w + b if b is not None else x * w


def rms_norm(x, w):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * w


def unit(x, dim=-1):
    """nGPT's normalisation onto the unit sphere (no eps)."""
    return x / torch.sqrt((x * x).sum(dim, keepdim=True))


def rope_tables(T, hs, theta=10000.0):
    """RoPE (RoFormer): the pair (2i, 2i+1) of each head's channels at position p is rotated
    by p theta^(-2i/hs)."""
    freq = theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * freq[None, :]
    return torch.cos(angle), torch.sin(angle)


def rope(t, cos, sin):
    even, odd = t[..., 0::2], t[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)


class Gpt:
    """The model as a function of a dict of tensors named as the export names them."""

    def __init__(self, m):
        self.m = m
        self.kind = m["norm"]
        self.rms = self.kind not in LAYER_NORM_KINDS
        self.C, self.nh = m["n_embd"], m["n_head"]
        # DeepNet (decoder-only): alpha x + f(x) under a post-LN, alpha = (2 N)^(1/4).
        self.alpha = (2 * m["n_layer"]) ** 0.25 if self.kind == "deepnorm" else 1.0

    def forward(self, P, x):
        """Logits [B, T, V] of ids x [B, T]."""
        m, kind, C, nh = self.m, self.kind, self.C, self.nh
        B, T = x.shape
        hs = C // nh
        ngpt, simple, qk = kind == "ngpt", kind == "simple", qk_norm(m)
        out_norm = kind in ("peri_ln", "olmo2")

        def norm(name, h, on=True, is_rms=None):
            if not on:
                return h
            if self.rms if is_rms is None else is_rms:
                return rms_norm(h, P[name + ".weight"])
            return layer_norm(h, P[name + ".weight"], P.get(name + ".bias"))

        def linear(name, h):  # torch layout [out, in]
            return torch.nn.functional.linear(h, P[name + ".weight"], P.get(name + ".bias"))

        def learned(name, init, scale):  # nGPT: stored at `scale`, used as stored x init / scale
            return P[name + ".weight"] * (init / scale)

        def add(a, b):
            if not m["residual"]:
                return b
            return a + b if self.alpha == 1.0 else self.alpha * a + b

        h = P["wte.weight"][x]
        if m["pos"] == "learned":
            h = h + P["wpe.weight"][:T]
        else:
            cos, sin = (t.to(h.dtype) for t in rope_tables(T, hs))
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        for i in range(m["n_layer"]):
            p = f"blocks.{i}"

            def attn(u):
                q = norm(p + ".attn.q_norm", linear(p + ".attn.q", u), qk, True)
                k = norm(p + ".attn.k_norm", linear(p + ".attn.k", u), qk, True)
                v = norm(p + ".attn.v_norm", linear(p + ".attn.v", u), simple, True)
                q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))
                if m["pos"] == "rope":
                    q, k = rope(q, cos, sin), rope(k, cos, sin)
                if ngpt:  # unit q, k per head, times s_qk; cosines taken at sqrt(hs)
                    s_qk = learned(p + ".attn.qk_scale", 1.0, C**-0.5).view(nh, 1, hs)
                    q, k = unit(q) * s_qk, unit(k) * s_qk
                    att = (q @ k.transpose(-1, -2)) * math.sqrt(hs)
                else:
                    att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hs))
                att = torch.softmax(att.masked_fill(causal, float("-inf")), -1)
                y = (att @ v).transpose(1, 2).reshape(B, T, C)
                return norm(p + ".attn.o_norm", linear(p + ".attn.o", y), simple, True)

            def mlp(u):
                a = norm(p + ".mlp.fc_norm", linear(p + ".mlp.fc", u), simple, True)
                if ngpt:  # u s_u gating silu(nu s_nu sqrt(C))
                    nu = a * learned(p + ".mlp.fc_scale", 1.0, 1.0) * math.sqrt(C)
                    a = torch.nn.functional.silu(nu) * (linear(p + ".mlp.gate", u) * learned(p + ".mlp.gate_scale", 1.0, 1.0))
                elif m["mlp"] == "swiglu":
                    a = torch.nn.functional.silu(a) * norm(p + ".mlp.gate_norm", linear(p + ".mlp.gate", u), simple, True)
                else:
                    a = torch.nn.functional.gelu(a)  # the exact (erf) form
                return norm(p + ".mlp.proj_norm", linear(p + ".mlp.proj", a), simple, True)

            if ngpt:  # h <- unit(h + alpha (unit(f(h)) - h)) for each sublayer
                h = unit(h + learned(p + ".attn_alpha", 0.05, C**-0.5) * (unit(attn(h)) - h))
                h = unit(h + learned(p + ".mlp_alpha", 0.05, C**-0.5) * (unit(mlp(h)) - h))
            elif i < post_ln_blocks(m):  # post-LN, DeepNet, Mix-LN's first blocks
                h = norm(p + ".ln_1", add(h, attn(h)))
                h = norm(p + ".ln_2", add(h, mlp(h)))
            else:  # pre-LN; Peri-LN and OLMo 2 also normalise each sublayer's output
                pre = kind in PRE_OR_POST
                h = add(h, norm(p + ".attn_out_norm", attn(norm(p + ".ln_1", h, pre)), out_norm))
                h = add(h, norm(p + ".mlp_out_norm", mlp(norm(p + ".ln_2", h, pre)), out_norm))
        h = norm("ln_f", h, kind not in ("post_ln", "deepnorm", "ngpt", "none"))
        head = P["wte.weight"] if m["tie_weights"] else P["lm_head.weight"]
        logits = h @ head.t()
        if ngpt:
            logits = logits * learned("logit_scale", 1.0, C**-0.5)  # s_z
        cap = m.get("logit_softcap", 0.0)
        if cap > 0:  # Gemma 2's soft cap
            logits = cap * torch.tanh(logits / cap)
        return logits


def losses(logits, y):
    """The mean cross-entropy, and the mean of log(Z)^2 (Z: the softmax's normaliser)."""
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    log_z = torch.logsumexp(flat, -1)
    return torch.nn.functional.cross_entropy(flat, y.reshape(-1).long()), (log_z * log_z).mean()


def learning_rate(step, t):
    """nanoGPT's get_lr."""
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / (t["warmup_steps"] + 1)
    if step >= t["lr_decay_steps"]:
        return t["min_lr"]
    ratio = (step - t["warmup_steps"]) / max(t["lr_decay_steps"] - t["warmup_steps"], 1)
    return t["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t["lr"] - t["min_lr"])


def project_ngpt(P):
    """nGPT: every matrix's vectors along the width C back at unit length."""
    with torch.no_grad():
        for name, w in P.items():
            if w.dim() != 2:
                continue
            writes_width = name.endswith("attn.o.weight") or name.endswith("mlp.proj.weight")
            w.copy_(unit(w, 0 if writes_width else 1))


def train(W, config, dtype=torch.float32):
    """Trains the exported weights on the exported batches; returns (loss, grad norm) per step."""
    m, t = config["model"], config["train"]
    if m["dropout"] != 0:
        raise SystemExit(f"this reference has no dropout; the config has dropout = {m['dropout']}")
    names, expected = set(W) - {"batches.x", "batches.y"}, expected_names(m)
    if names != expected:
        raise SystemExit(f"the export's tensors differ from the config's: missing {sorted(expected - names)}, unexpected {sorted(names - expected)}")
    P = {name: w.to(dtype).requires_grad_(True) for name, w in W.items() if not name.startswith("batches.")}
    model = Gpt(m)
    decayed = [w for w in P.values() if w.dim() >= 2 or t["decay_all"]]
    others = [w for w in P.values() if not (w.dim() >= 2 or t["decay_all"])]
    opt = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": t["weight_decay"]}, {"params": others, "weight_decay": 0.0}],
        lr=t["lr"],
        betas=(t["beta1"], t["beta2"]),
        eps=t["eps"],
        foreach=False,
    )
    accum, z_loss = t["grad_accum"], t.get("z_loss", 0.0)
    xs, ys = W["batches.x"], W["batches.y"]
    out = []
    for step in range(min(len(xs) // accum, t["max_steps"])):
        opt.zero_grad(set_to_none=True)
        step_losses = []
        for micro in range(accum):
            i = step * accum + micro
            ce, mean_log_z_sq = losses(model.forward(P, xs[i].long()), ys[i])
            objective = ce + z_loss * mean_log_z_sq if z_loss > 0 else ce
            (objective / accum).backward()
            step_losses.append(ce.item())
        grads = [w.grad for w in P.values() if w.grad is not None]
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        if t["grad_clip"] > 0:
            coef = torch.clamp(t["grad_clip"] / norm, max=1.0)
            for g in grads:
                g.mul_(coef)
        lr = learning_rate(step, t)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        if m["norm"] == "ngpt":
            project_ngpt(P)
        out.append((sum(step_losses) / accum, norm.item()))
    return out


def parse_value(text):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def compare(steps, run_dir, tolerance):
    """The worst relative difference of the losses and of the gradient norms from the run's
    metrics.jsonl, and what exceeds `tolerance` (by what: loss, grad_norm)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = {r["step"]: r for r in map(json.loads, f) if "loss" in r}
    worst, failures = {"loss": (0.0, None), "grad_norm": (0.0, None)}, []
    for i, (loss, norm) in enumerate(steps):
        r = records.get(i)
        if r is None:
            raise SystemExit(f"{run_dir} logged no training loss at step {i}: train it with log_interval = 1")
        for what, ours, theirs in (("loss", loss, r["loss"]), ("grad_norm", norm, r["grad_norm"])):
            diff = abs(ours - theirs) / abs(ours)
            if diff > worst[what][0]:
                worst[what] = (diff, i)
            if diff > tolerance[what]:
                failures.append(f"step {i}: {what} {theirs:.8f} in simplegpt, {ours:.8f} here ({diff:.2e} relative)")
    return worst, failures


def apply_settings(config, settings):
    """`KEY=VALUE`s into the config's [train] (where the key is one of it) or [model]."""
    for kv in settings:
        key, _, value = kv.partition("=")
        section = "train" if key in config["train"] or key == "z_loss" else "model"
        config[section][key] = parse_value(value)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", metavar="EXPORT [RUN_DIR]", help="an export alone, or export and run pairs")
    ap.add_argument("--tolerance", type=float, default=1e-5, help="of the loss, relative, per step")
    ap.add_argument("--grad-tolerance", type=float, default=1e-4, help="of the gradient norm, relative, per step")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for this reference alone")
    ap.add_argument(
        "--must-fail",
        action="append",
        default=[],
        metavar="RUN_DIR:KEY=VALUE",
        help="also train that pair with KEY=VALUE, which must then differ (exit non-zero if it agrees)",
    )
    ap.add_argument(
        "--float64",
        action="store_true",
        help="train in float64: how far float32's rounding alone moves the trajectory",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)  # the same sums in the same order on every machine
    pairs = [(args.pairs[0], None)] if len(args.pairs) == 1 else list(zip(args.pairs[::2], args.pairs[1::2]))
    if len(args.pairs) > 1 and len(args.pairs) % 2:
        raise SystemExit("give EXPORT RUN_DIR pairs, or one EXPORT alone")
    tolerance = {"loss": args.tolerance, "grad_norm": args.grad_tolerance}
    dtype = torch.float64 if args.float64 else torch.float32

    def check(export, run_dir, settings):
        """Trains the export (with `settings`) and compares with the run: whether it agrees."""
        W, meta = read_safetensors(export)
        config = tomllib.loads(meta["config"])
        if run_dir:
            with open(os.path.join(run_dir, "config.toml"), "rb") as f:
                run_config = tomllib.load(f)
            if run_config["model"] != config["model"] or run_config["train"]["seed"] != config["train"]["seed"]:
                raise SystemExit(f"{run_dir} was trained with another model or seed than {export} was exported with")
            config = run_config  # the run's training settings (max_steps, the schedule)
        apply_settings(config, settings)
        steps = train(W, config, dtype)
        if not run_dir:
            for i, (loss, norm) in enumerate(steps):
                print(f"{i} {loss:.8f} {norm:.8f}")
            return True
        worst, failures = compare(steps, run_dir, tolerance)
        print(
            f"{run_dir}{''.join(' with ' + s for s in settings)}: {len(steps)} steps, worst relative difference: "
            f"loss {worst['loss'][0]:.2e} (step {worst['loss'][1]}), grad_norm {worst['grad_norm'][0]:.2e} "
            f"(step {worst['grad_norm'][1]}); "
            + (f"FAIL at {len(failures)} points, first {failures[0]}" if failures else "pass")
        )
        return not failures

    failed = [run_dir for export, run_dir in pairs if not check(export, run_dir, args.set)]
    agreed = []
    for spec in args.must_fail:
        run_dir, _, setting = spec.rpartition(":")
        export = next((e for e, r in pairs if r == run_dir), None)
        if export is None:
            raise SystemExit(f"--must-fail {spec}: {run_dir} is not one of the runs given")
        if check(export, run_dir, args.set + [setting]):
            agreed.append(spec)
    if failed:
        raise SystemExit(
            f"FAIL: simplegpt's training differs from the torch reference's by more than {args.tolerance:.0e} "
            f"(loss) or {args.grad_tolerance:.0e} (gradient norm), relative, in {', '.join(failed)}"
        )
    if agreed:
        raise SystemExit(
            f"FAIL: the reference trained with something wrong still agrees with simplegpt ({', '.join(agreed)}): "
            "the comparison cannot tell them apart"
        )
    if args.must_fail:
        print(f"every --must-fail differed, as it must ({len(args.must_fail)})")


if __name__ == "__main__":
    main()
