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
import os
import struct

import numpy as np
import torch

MAGIC = b"GQAM"
VERSION = 1
HEADER_BYTES = 256
FLAG_SHARED_CLASSIFIER = 1
HEADER_FMT = "<4s9Iff4I4Q"  # up to offset 96


def _align(n, a=64):
    return (n + a - 1) // a * a


def tensors_in_order(model):
    """The weights in file order: list of (name, float32 numpy array)."""
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
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists (pass --force to overwrite)")
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
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(hdr)
        f.write(tokenizer_bytes)
        f.write(bytes(w_off - tok_off - len(tokenizer_bytes)))
        for _, a in tensors:
            f.write(a.astype("<f4").tobytes())
    os.replace(tmp, path)
    return w_off + 4 * n_floats


def read_header(buf):
    if len(buf) < HEADER_BYTES or buf[:4] != MAGIC:
        raise ValueError("not a GQAM checkpoint")
    (magic, version, dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, vocab_size,
     seq_len, rope_theta, norm_eps, flags, bos_id, eos_id, reserved, tok_off, tok_bytes,
     w_off, w_bytes) = struct.unpack_from(HEADER_FMT, buf, 0)
    if version != VERSION:
        raise ValueError(f"unsupported version {version}")
    return dict(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads,
                n_kv_heads=n_kv_heads, head_dim=head_dim, vocab_size=vocab_size,
                seq_len=seq_len, rope_theta=rope_theta, norm_eps=norm_eps, flags=flags,
                bos_id=bos_id, eos_id=eos_id, tokenizer_offset=tok_off,
                tokenizer_bytes=tok_bytes, weights_offset=w_off, weights_bytes=w_bytes)


def read_checkpoint(path):
    """Returns (model in eval mode, header dict, embedded tokenizer.bin bytes)."""
    from model import Config, Transformer  # noqa: import here to keep this module light
    with open(path, "rb") as f:
        buf = f.read()
    h = read_header(buf)
    if h["weights_offset"] + h["weights_bytes"] != len(buf):
        raise ValueError("file size does not match header")
    cfg = Config(dim=h["dim"], hidden_dim=h["hidden_dim"], n_layers=h["n_layers"],
                 n_heads=h["n_heads"], n_kv_heads=h["n_kv_heads"], head_dim=h["head_dim"],
                 vocab_size=h["vocab_size"], seq_len=h["seq_len"], rope_theta=h["rope_theta"],
                 norm_eps=h["norm_eps"], shared_classifier=bool(h["flags"] & 1))
    model = Transformer(cfg)
    w = np.frombuffer(buf, dtype="<f4", offset=h["weights_offset"],
                      count=h["weights_bytes"] // 4)
    load_weights(model, w)
    tok = buf[h["tokenizer_offset"]:h["tokenizer_offset"] + h["tokenizer_bytes"]]
    model.eval()
    return model, h, tok


def load_weights(model, w):
    """Fill model's parameters from w, a flat float32 array of the weights in file order
    (tensors_in_order), which must hold exactly as many floats as the model has."""
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
