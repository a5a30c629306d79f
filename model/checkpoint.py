"""Reader and writer for the project's checkpoint format (version 1).

Header (256 bytes, little-endian):
  0 char[4] magic "GQAM"   4 u32 version=1    8 u32 dim     12 u32 hidden_dim
 16 u32 n_layers          20 u32 n_heads     24 u32 n_kv_heads 28 u32 head_dim
 32 u32 vocab_size        36 u32 seq_len     40 f32 rope_theta 44 f32 norm_eps
 48 u32 flags (bit 0: classifier shared with token embedding)
 52 u32 bos_id  56 u32 eos_id  60 u32 reserved=0
 64 u64 tokenizer_offset (=256)  72 u64 tokenizer_bytes
 80 u64 weights_offset (= 256 + tokenizer_bytes rounded up to 64)
 88 u64 weights_bytes   96..255 zero
Then the llama2.c tokenizer.bin bytes, zero padding, then fp32 weights in the
order of WEIGHT_ORDER below, each row-major, layers stacked.
"""
import math
import os
import struct

import numpy as np

import toolio

# torch is imported where it is used, so that the header can be read and checked (quantize.py,
# convert.py before its model is built) without the seconds its import takes.

MAGIC = b"GQAM"
VERSION = 1
HEADER_BYTES = 256
RESERVED_START = 96
FLAG_SHARED_CLASSIFIER = 1
FLAG_INT8 = 2  # model/quantize.py's output; header bytes 60..63 then hold the group size
HEADER_FMT = "<4s9Iff4I4Q"  # up to offset 96
# run.c's bounds on the header's fields (MAX_DIM and the others)
LIMITS = dict(dim=1 << 16, hidden_dim=1 << 18, n_layers=1024, n_heads=1024, n_kv_heads=1024,
              head_dim=4096, vocab_size=1 << 21, seq_len=1 << 20)
LOW = dict(head_dim=2, vocab_size=3)


def _align(n, a=64):
    return (n + a - 1) // a * a


def tensors_in_order(model):
    """The weights in file order: list of (name, float32 numpy array)."""
    import torch
    cfg = model.cfg
    L = model.layers
    out = [("token_embedding", model.token_embedding.weight)]
    out.append(("rms_att", torch.stack([l.rms_att.weight for l in L])))
    out.append(("wq", torch.stack([l.attention.wq.weight for l in L])))
    out.append(("wk", torch.stack([l.attention.wk.weight for l in L])))
    out.append(("wv", torch.stack([l.attention.wv.weight for l in L])))
    out.append(("wo", torch.stack([l.attention.wo.weight for l in L])))
    out.append(("rms_ffn", torch.stack([l.rms_ffn.weight for l in L])))
    out.append(("w1", torch.stack([l.ffn.w1.weight for l in L])))
    out.append(("w2", torch.stack([l.ffn.w2.weight for l in L])))
    out.append(("w3", torch.stack([l.ffn.w3.weight for l in L])))
    out.append(("rms_final", model.rms_final.weight))
    if not cfg.shared_classifier:
        out.append(("classifier", model.classifier.weight))
    return [(n, t.detach().cpu().float().contiguous().numpy()) for n, t in out]


def write_checkpoint(model, path, tokenizer_bytes=b"", bos_id=1, eos_id=2, force=False):
    """Writes model as a GQAM file at path (under a temporary name until it is complete: see
    toolio.write_output) and returns its size."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists (pass --force to overwrite)")
    return toolio.write_output(path, force, lambda f: write_checkpoint_to(
        f, model, tokenizer_bytes, bos_id, eos_id))


def write_checkpoint_to(f, model, tokenizer_bytes=b"", bos_id=1, eos_id=2):
    """Writes model as a GQAM file into the binary file f; returns the bytes written."""
    cfg = model.cfg
    tensors = tensors_in_order(model)
    n_floats = sum(a.size for _, a in tensors)
    tok_off = HEADER_BYTES
    w_off = _align(tok_off + len(tokenizer_bytes))
    flags = FLAG_SHARED_CLASSIFIER if cfg.shared_classifier else 0
    hdr = struct.pack(HEADER_FMT, MAGIC, VERSION, cfg.dim, cfg.hidden_dim, cfg.n_layers,
                      cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.vocab_size, cfg.seq_len,
                      cfg.rope_theta, cfg.norm_eps,
                      flags, bos_id, eos_id, 0,
                      tok_off, len(tokenizer_bytes), w_off, 4 * n_floats)
    assert len(hdr) == 96
    hdr += bytes(HEADER_BYTES - len(hdr))
    f.write(hdr)
    f.write(tokenizer_bytes)
    f.write(bytes(w_off - tok_off - len(tokenizer_bytes)))
    for _, a in tensors:
        f.write(a.astype("<f4").tobytes())
    return w_off + 4 * n_floats


def read_header(buf):
    if len(buf) < HEADER_BYTES or buf[:4] != MAGIC:
        raise ValueError("not a GQAM checkpoint")
    (magic, version, dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, vocab_size,
     seq_len, rope_theta, norm_eps, flags, bos_id, eos_id, reserved, tok_off, tok_bytes,
     w_off, w_bytes) = struct.unpack_from(HEADER_FMT, buf, 0)
    if version != VERSION:
        raise ValueError(f"format version is {version}, this program reads version {VERSION}")
    return dict(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads,
                n_kv_heads=n_kv_heads, head_dim=head_dim, vocab_size=vocab_size,
                seq_len=seq_len, rope_theta=rope_theta, norm_eps=norm_eps, flags=flags,
                bos_id=bos_id, eos_id=eos_id, tokenizer_offset=tok_off,
                tokenizer_bytes=tok_bytes, weights_offset=w_off, weights_bytes=w_bytes)


def parse_header(buf):
    """The header of the fp32 GQAM file whose bytes (all of them) are buf, as a dict, once every
    field is checked as run.c checks it; ValueError naming the first bad one in run.c's words."""
    if len(buf) < HEADER_BYTES:
        raise ValueError(f"file is {len(buf)} bytes, shorter than the {HEADER_BYTES}-byte header")
    if buf[:4] != MAGIC:
        raise ValueError('not a GQAM checkpoint (no "GQAM" magic; model/import.py imports '
                         "llama2.c checkpoints)")
    h = read_header(buf)  # the version
    flags, group = h["flags"], struct.unpack_from("<I", buf, 60)[0]
    if flags & ~(FLAG_SHARED_CLASSIFIER | FLAG_INT8):
        raise ValueError(f"flags are {flags:#x}, this program knows only "
                         f"{FLAG_SHARED_CLASSIFIER | FLAG_INT8:#x}")
    if flags & FLAG_INT8:
        raise ValueError(f"int8 weights (flags {flags:#x}, groups of {group}); this program "
                         "reads fp32 checkpoints")
    if group:
        raise ValueError(f"quant_group is {group} in an fp32 checkpoint, expected 0")
    for i in range(RESERVED_START, HEADER_BYTES):
        if buf[i]:
            raise ValueError(f"header byte {i} is {buf[i]:#04x}; bytes {RESERVED_START}.."
                             f"{HEADER_BYTES - 1} are reserved and must be 0")
    for name, high in LIMITS.items():
        low = LOW.get(name, 1)
        if not low <= h[name] <= high:
            raise ValueError(f"{name} is {h[name]}, expected {low}..{high}")
    if h["n_heads"] % h["n_kv_heads"]:
        raise ValueError(f"n_kv_heads is {h['n_kv_heads']}, which does not divide n_heads "
                         f"{h['n_heads']}")
    if h["head_dim"] % 2:
        raise ValueError(f"head_dim is {h['head_dim']}, expected an even number (RoPE rotates "
                         "pairs)")
    if h["n_heads"] * h["head_dim"] != h["dim"]:
        raise ValueError(f"head_dim is {h['head_dim']}, but dim {h['dim']} / n_heads "
                         f"{h['n_heads']} needs {h['dim'] // h['n_heads']}")
    if not (math.isfinite(h["rope_theta"]) and h["rope_theta"] > 1):
        raise ValueError(f"rope_theta is {h['rope_theta']:g}, expected a finite number above 1")
    if not (math.isfinite(h["norm_eps"]) and 0 < h["norm_eps"] < 1):
        raise ValueError(f"norm_eps is {h['norm_eps']:g}, expected a number in (0, 1)")
    for name in ("bos_id", "eos_id"):
        if h[name] >= h["vocab_size"]:
            raise ValueError(f"{name} is {h[name]}, expected 0..{h['vocab_size'] - 1}")
    if h["tokenizer_offset"] != HEADER_BYTES:
        raise ValueError(f"tokenizer_offset is {h['tokenizer_offset']}, expected {HEADER_BYTES}")
    if h["tokenizer_bytes"] > len(buf) - HEADER_BYTES:
        raise ValueError(f"tokenizer_bytes is {h['tokenizer_bytes']}, past the end of the "
                         f"{len(buf)}-byte file")
    aligned = _align(HEADER_BYTES + h["tokenizer_bytes"])
    if h["weights_offset"] != aligned:
        raise ValueError(f"weights_offset is {h['weights_offset']}, expected {aligned}")
    needed = 4 * sum(math.prod(shape) for _, shape, _ in weight_layout(h))
    if h["weights_bytes"] != needed:
        raise ValueError(f"weights_bytes is {h['weights_bytes']}, the config needs {needed}")
    size = h["weights_offset"] + needed
    if len(buf) < size:
        raise ValueError(f"file is {len(buf)} bytes, the header needs {size} (truncated?)")
    if len(buf) > size:
        raise ValueError(f"file is {len(buf)} bytes, the header accounts for only {size}")
    return h


def weight_layout(h):
    """(name, shape, is_matrix) of each weight in file order, for the header dict h; the first
    axis of the per-layer ones is the layer."""
    D, F, L, V = h["dim"], h["hidden_dim"], h["n_layers"], h["vocab_size"]
    q_dim, kv_dim = h["n_heads"] * h["head_dim"], h["n_kv_heads"] * h["head_dim"]
    table = [("token_embedding", (V, D), True), ("rms_att", (L, D), False),
             ("wq", (L, q_dim, D), True), ("wk", (L, kv_dim, D), True),
             ("wv", (L, kv_dim, D), True), ("wo", (L, D, q_dim), True),
             ("rms_ffn", (L, D), False), ("w1", (L, F, D), True), ("w2", (L, D, F), True),
             ("w3", (L, F, D), True), ("rms_final", (D,), False)]
    if not h["flags"] & FLAG_SHARED_CLASSIFIER:
        table.append(("classifier", (V, D), True))
    return table


PER_LAYER = {"rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3"}


def weights_of(h, buf):
    """The fp32 weights of a file that parse_header accepted, as one flat array (no copy)."""
    return np.frombuffer(buf, dtype="<f4", offset=h["weights_offset"],
                         count=h["weights_bytes"] // 4)


def check_finite(h, weights):
    """ValueError naming the first weight that is not a finite number, as run.c does."""
    if np.isfinite(weights).all():
        return
    offset = 0
    for name, shape, _ in weight_layout(h):
        count = math.prod(shape)
        part = weights[offset:offset + count]
        bad = np.flatnonzero(~np.isfinite(part))
        if bad.size:
            index = int(bad[0])
            value = float(part[index])
            where = name
            if name in PER_LAYER:
                per_layer = count // shape[0]
                where = f"{name} of layer {index // per_layer}"
                index %= per_layer
            raise ValueError(f"{where}, value {index} is {value}; every weight must be a finite "
                             "number")
        offset += count


def read_checkpoint(path, buf=None):
    """Returns (model in eval mode, header dict, embedded tokenizer.bin bytes). buf: the file's
    bytes, when the caller has read them already."""
    from model import Config, Transformer  # noqa: import here to keep this module light
    if buf is None:
        with open(path, "rb") as f:
            buf = f.read()
    h = parse_header(buf)
    cfg = Config(dim=h["dim"], hidden_dim=h["hidden_dim"], n_layers=h["n_layers"],
                 n_heads=h["n_heads"], n_kv_heads=h["n_kv_heads"], head_dim=h["head_dim"],
                 vocab_size=h["vocab_size"], seq_len=h["seq_len"], rope_theta=h["rope_theta"],
                 norm_eps=h["norm_eps"], shared_classifier=bool(h["flags"] & 1))
    model = Transformer(cfg)
    load_weights(model, weights_of(h, buf))
    tok = buf[h["tokenizer_offset"]:h["tokenizer_offset"] + h["tokenizer_bytes"]]
    model.eval()
    return model, h, tok


def load_weights(model, w):
    """Fill model's parameters from w, a flat float32 array of the weights in file order
    (tensors_in_order), which must hold exactly as many floats as the model has."""
    import torch
    o = 0
    expected = [(n, a.shape) for n, a in tensors_in_order(model)]
    got = {}
    for n, shape in expected:
        k = int(np.prod(shape))
        got[n] = torch.from_numpy(w[o:o + k].reshape(shape).copy())
        o += k
    if o != w.size:
        raise ValueError("weights size does not match config")
    with torch.no_grad():
        model.token_embedding.weight.copy_(got["token_embedding"])
        for i, l in enumerate(model.layers):
            l.rms_att.weight.copy_(got["rms_att"][i])
            l.attention.wq.weight.copy_(got["wq"][i])
            l.attention.wk.weight.copy_(got["wk"][i])
            l.attention.wv.weight.copy_(got["wv"][i])
            l.attention.wo.weight.copy_(got["wo"][i])
            l.rms_ffn.weight.copy_(got["rms_ffn"][i])
            l.ffn.w1.weight.copy_(got["w1"][i])
            l.ffn.w2.weight.copy_(got["w2"][i])
            l.ffn.w3.weight.copy_(got["w3"][i])
        model.rms_final.weight.copy_(got["rms_final"])
        if not model.cfg.shared_classifier:
            model.classifier.weight.copy_(got["classifier"])
