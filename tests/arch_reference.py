#!/usr/bin/python3
"""A plain numpy forward pass of GGUF models, written independently of run.c, to test it.

It reads the architectures llama (Llama 2 and 3: `rope_freqs.weight`, `attention.key_length`,
linear RoPE scaling), qwen2, gemma, gemma2 and gpt2 the way llama.cpp's graphs compute them,
in float64, over every position at once with a causal mask (no KV cache). The GGUF layout is
the one llama.cpp's converter writes (weights are row-major (out, in) matrices; norm weights of
gemma and gemma2 already include their +1). What each architecture does:

    llama   x = embd[id]; per layer: x += Wo attn(rope_norm(Wq n), rope_norm(Wk n), Wv n),
            n = rmsnorm(x) * attn_norm; x += down(silu(gate n) * up n), n = rmsnorm(x) * ffn_norm;
            logits = output(rmsnorm(x) * output_norm), output = token_embd when absent.
            RoPE rotates adjacent pairs (2i, 2i+1) by pos * scale * base^(-2i/n_rot) / freqs[i]
            (freqs: rope_freqs.weight, else 1; scale: 1/rope.scaling.factor for "linear", the
            default type, 1 for "none"; both rotated values times rope.scaling.attn_factor
            when the file has it).
            Optional q/k/v/o biases are added when the file has them.
    qwen2   llama with q/k/v biases and NEOX RoPE: pairs (i, i + n_rot/2).
    gemma   NEOX RoPE; x = embd[id] * sqrt(dim); head_dim = attention.key_length; FFN
            down(gelu(gate n) * up n); the classifier is always token_embd.
    gemma2  gemma plus rmsnorm * post_attention_norm on the attention's output and rmsnorm *
            post_ffw_norm on the FFN's output, each before its residual add; attention scores
            (after the 1/sqrt(head_dim) scaling) soft-capped cap * tanh(s / cap); layers
            il % 2 == 0 see only keys k with p - k < attention.sliding_window; final logits
            soft-capped with final_logit_softcapping. With 46 layers q is scaled by
            1/sqrt(dim // heads) instead of 1/sqrt(head_dim).
    gpt2    x = embd[id] + position_embd[pos]; LayerNorm (mean and variance, bias) with
            attention.layer_norm_epsilon; fused attn_qkv (rows: q, then k, then v) with bias;
            biases on every linear; FFN down(gelu(up n)); no RoPE.

GELU is the tanh form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). llama.cpp's CPU
backend evaluates it through a table indexed by the input rounded to fp16, whose entries are
rounded to fp16 too (and passes x >= 10 through, gives 0 for x <= -10); `gelu="fp16"`
reproduces that, to compare with llama.cpp's own logits closely; the default "exact" is the
plain formula.

Function-level API:

    load(path) -> Model             weights dequantized to float64: F32, F16 and Q8_0 here,
                                    every other ggml type through tests/ggml_quants.py
    logits(model, ids, gelu="exact") -> np.ndarray (len(ids), vocab), float64
                                    ids fed at positions 0..n-1

CLI:

    arch_reference.py MODEL.gguf --ids "1 2 3" [--out logits.f32] [--gelu exact|fp16]

writes little-endian float32 rows, one per position (as `./run --logits` does), or prints the
argmax of each position when --out is absent.
"""
import argparse
import os
import sys
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_writer as gw  # noqa: E402

ARCHITECTURES = ("llama", "qwen2", "gemma", "gemma2", "gpt2")
NEOX_ROPE = ("qwen2", "gemma", "gemma2")
NATIVE_TYPES = ("F32", "F16", "Q8_0")


@dataclass
class Model:
    arch: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int          # of queries and keys
    head_dim_v: int        # of values
    n_rot: int             # leading dimensions of each head that RoPE rotates
    vocab_size: int
    context: int
    eps: float
    rope_base: float = 10000.0
    rope_scale: float = 1.0        # multiplies the angle: 1 / rope.scaling.factor
    rope_attn_factor: float = 1.0  # multiplies the rotated values: rope.scaling.attn_factor
    attn_softcap: float = 0.0      # 0: none
    final_softcap: float = 0.0
    window: int = 0                # sliding window of gemma2's even layers, 0: none
    weights: dict = field(default_factory=dict, repr=False)

    def w(self, name):
        return self.weights[name]

    def has(self, name):
        return name in self.weights


# ----------------------------------------------------------------------------
# Reading

def tensor_array(g, name):
    """A tensor of the file as float64, row-major (ne reversed). Types other than F32, F16 and
    Q8_0 are dequantized by tests/ggml_quants.py, imported only when such a tensor is met."""
    t = g.tensor(name)
    if t.type_name in NATIVE_TYPES:
        return g.tensor_array(name).astype(np.float64)
    try:
        import ggml_quants
    except ImportError as e:
        raise RuntimeError(f"{name} is {t.type_name}: reading it needs tests/ggml_quants.py "
                           f"(dequantize), which is not importable ({e})") from None
    count = int(np.prod(t.ne, dtype=np.int64))
    values = ggml_quants.dequantize(g.tensor_data(name), t.type_name, count)
    return np.asarray(values, dtype=np.float64).reshape(list(reversed(t.ne)))


def load(path):
    """Read a GGUF file of one of ARCHITECTURES into a Model."""
    g = gw.read_gguf(path)
    arch = g.value("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: general.architecture is {arch!r}; this reference reads "
                         + ", ".join(ARCHITECTURES))

    def key(name, default=None):
        value = g.value(f"{arch}.{name}", default)
        if value is None:
            raise ValueError(f"{path}: key {arch}.{name} is missing")
        return value

    dim = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    kv_heads = int(key("attention.head_count_kv", heads))
    head_dim = int(key("attention.key_length", dim // heads))
    head_dim_v = int(key("attention.value_length", dim // heads))
    n_rot = int(key("rope.dimension_count", head_dim))
    eps_key = "attention.layer_norm_epsilon" if arch == "gpt2" else \
        "attention.layer_norm_rms_epsilon"
    weights = {t.name: tensor_array(g, t.name) for t in g.tensors}
    vocab = weights["token_embd.weight"].shape[0]
    m = Model(arch=arch, dim=dim, n_layers=int(key("block_count")), n_heads=heads,
              n_kv_heads=kv_heads, head_dim=head_dim, head_dim_v=head_dim_v, n_rot=n_rot,
              vocab_size=vocab, context=int(key("context_length")), eps=float(key(eps_key)),
              rope_base=float(key("rope.freq_base", 10000.0)), weights=weights)

    scaling = key("rope.scaling.type", "linear")
    factor = float(key("rope.scaling.factor", key("rope.scale_linear", 0.0)))
    if scaling not in ("none", "linear"):
        raise ValueError(f"{path}: rope.scaling.type {scaling!r}; this reference does linear")
    if scaling == "linear" and factor != 0.0:
        m.rope_scale = 1.0 / factor
    m.rope_attn_factor = float(key("rope.scaling.attn_factor", 1.0))
    if arch == "gemma2":
        m.attn_softcap = float(key("attn_logit_softcapping", 50.0))
        m.final_softcap = float(key("final_logit_softcapping", 30.0))
        m.window = int(key("attention.sliding_window", 4096))
    if arch == "gpt2" and head_dim != dim // heads:
        raise ValueError(f"{path}: gpt2 heads are dim / heads wide")
    if n_rot > head_dim or n_rot % 2:
        raise ValueError(f"{path}: rope.dimension_count {n_rot} with head_dim {head_dim}")
    return m


# ----------------------------------------------------------------------------
# The computation

def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def layer_norm(x, weight, bias, eps):
    centered = x - x.mean(axis=-1, keepdims=True)
    return centered / np.sqrt(np.mean(centered * centered, axis=-1, keepdims=True) + eps) \
        * weight + bias


def gelu_exact(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gelu_fp16(x):
    """GELU as llama.cpp's CPU backend tabulates it: the input rounded to fp16, the formula in
    float32, the result rounded to fp16; inputs beyond +-10 bypass the table."""
    x32 = np.asarray(x, dtype=np.float32)
    h = x32.astype(np.float16).astype(np.float32)
    c = np.float32(0.79788456080286535587989211986876)
    y = np.float32(0.5) * h * (np.float32(1) + np.tanh(c * h * (np.float32(1) + np.float32(
        0.044715) * h * h)))
    y = y.astype(np.float16).astype(np.float64)
    return np.where(x32 <= -10, 0.0, np.where(x32 >= 10, x32.astype(np.float64), y))


def silu(x):
    return x / (1.0 + np.exp(-x))


def rope(x, positions, m, freqs):
    """Rotate the first n_rot values of each head of x (n, heads, head_dim)."""
    half = m.n_rot // 2
    i = np.arange(half, dtype=np.float64)
    inv = m.rope_base ** (-2.0 * i / m.n_rot)
    if freqs is not None:
        inv = inv / freqs
    angle = positions[:, None].astype(np.float64) * m.rope_scale * inv[None, :]
    cos = np.cos(angle)[:, None, :] * m.rope_attn_factor
    sin = np.sin(angle)[:, None, :] * m.rope_attn_factor
    out = x.copy()
    if m.arch in NEOX_ROPE:
        a, b = x[..., :half], x[..., half:m.n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:m.n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:m.n_rot:2], x[..., 1:m.n_rot:2]
        out[..., 0:m.n_rot:2] = a * cos - b * sin
        out[..., 1:m.n_rot:2] = a * sin + b * cos
    return out


def linear(m, x, name):
    """x @ W.T (+ bias when the file holds NAME.bias)."""
    y = x @ m.w(name + ".weight").T
    if m.has(name + ".bias"):
        y = y + m.w(name + ".bias")
    return y


def attention(m, q, k, v, layer):
    """q (n, H, hd), k (n, KVH, hd), v (n, KVH, hdv) -> (n, H * hdv). Query head h reads
    kv head h // (H / KVH)."""
    n = q.shape[0]
    group = m.n_heads // m.n_kv_heads
    if m.arch == "gemma2" and m.n_layers == 46:
        scale = 1.0 / np.sqrt(float(m.dim // m.n_heads))
    else:
        scale = 1.0 / np.sqrt(float(m.head_dim))
    p = np.arange(n)
    visible = p[None, :] <= p[:, None]
    if m.arch == "gemma2" and layer % 2 == 0:
        visible &= (p[:, None] - p[None, :]) < m.window
    out = np.empty((n, m.n_heads, m.head_dim_v))
    for h in range(m.n_heads):
        s = (q[:, h, :] @ k[:, h // group, :].T) * scale
        if m.attn_softcap:
            s = m.attn_softcap * np.tanh(s / m.attn_softcap)
        s = np.where(visible, s, -np.inf)
        s = np.exp(s - s.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        out[:, h, :] = s @ v[:, h // group, :]
    return out.reshape(n, -1)


def logits(m, ids, gelu="exact"):
    """Logits (len(ids), vocab) of ids at positions 0..len(ids)-1, float64."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    if n == 0:
        return np.zeros((0, m.vocab_size))
    if ids.min() < 0 or ids.max() >= m.vocab_size:
        raise ValueError(f"ids must lie in 0..{m.vocab_size - 1}")
    if m.arch == "gpt2" and n > m.context:
        raise ValueError(f"gpt2 has {m.context} learned positions, the prompt is {n}")
    act = {"exact": gelu_exact, "fp16": gelu_fp16}[gelu]
    positions = np.arange(n)
    freqs = m.w("rope_freqs.weight") if m.has("rope_freqs.weight") else None
    x = m.w("token_embd.weight")[ids]
    if m.arch in ("gemma", "gemma2"):
        x = x * np.sqrt(float(m.dim))
    if m.arch == "gpt2":
        x = x + m.w("position_embd.weight")[positions]
    H, KVH, hd = m.n_heads, m.n_kv_heads, m.head_dim

    def norm(x, name):
        if m.arch == "gpt2":
            return layer_norm(x, m.w(name + ".weight"), m.w(name + ".bias"), m.eps)
        return rms_norm(x, m.w(name + ".weight"), m.eps)

    for il in range(m.n_layers):
        b = f"blk.{il}."
        h = norm(x, b + "attn_norm")
        if m.arch == "gpt2":
            qkv = linear(m, h, b + "attn_qkv")
            q_width, kv_width = m.dim, KVH * hd
            q = qkv[:, :q_width].reshape(n, H, hd)
            k = qkv[:, q_width:q_width + kv_width].reshape(n, KVH, hd)
            v = qkv[:, q_width + kv_width:q_width + 2 * kv_width].reshape(n, KVH, hd)
        else:
            q = linear(m, h, b + "attn_q").reshape(n, H, hd)
            k = linear(m, h, b + "attn_k").reshape(n, KVH, hd)
            v = linear(m, h, b + "attn_v").reshape(n, KVH, m.head_dim_v)
            q, k = rope(q, positions, m, freqs), rope(k, positions, m, freqs)
        a = linear(m, attention(m, q, k, v, il), b + "attn_output")
        if m.arch == "gemma2":
            a = rms_norm(a, m.w(b + "post_attention_norm.weight"), m.eps)
        x = x + a
        h = norm(x, b + "ffn_norm")
        if m.arch == "gpt2":
            f = linear(m, act(linear(m, h, b + "ffn_up")), b + "ffn_down")
        elif m.arch in ("gemma", "gemma2"):
            f = linear(m, act(linear(m, h, b + "ffn_gate")) * linear(m, h, b + "ffn_up"),
                       b + "ffn_down")
        else:
            f = linear(m, silu(linear(m, h, b + "ffn_gate")) * linear(m, h, b + "ffn_up"),
                       b + "ffn_down")
        if m.arch == "gemma2":
            f = rms_norm(f, m.w(b + "post_ffw_norm.weight"), m.eps)
        x = x + f
    x = norm(x, "output_norm")
    if m.arch in ("gemma", "gemma2") or not m.has("output.weight"):
        out = x @ m.w("token_embd.weight").T
    else:
        out = x @ m.w("output.weight").T
    if m.arch == "gemma2" and m.final_softcap:
        out = m.final_softcap * np.tanh(out / m.final_softcap)
    return out


def greedy(m, ids, steps, gelu="exact"):
    """ids followed by `steps` greedy continuations (recomputing the whole sequence)."""
    seq = list(ids)
    for _ in range(steps):
        seq.append(int(np.argmax(logits(m, seq, gelu)[-1])))
    return seq[len(ids):]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--ids", required=True, help='token ids, e.g. "1 17 250"')
    ap.add_argument("--out", help="write float32 logits rows here")
    ap.add_argument("--gelu", default="exact", choices=["exact", "fp16"])
    args = ap.parse_args(argv)
    try:
        ids = [int(t) for t in args.ids.replace(",", " ").split()]
        m = load(args.model)
        out = logits(m, ids, args.gelu)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"arch_reference: {e}", file=sys.stderr)
        return 1
    if args.out:
        out.astype("<f4").tofile(args.out)
        print(f"wrote {args.out}: {out.shape[0]} rows of {out.shape[1]} logits")
    else:
        print(" ".join(str(int(i)) for i in out.argmax(axis=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
