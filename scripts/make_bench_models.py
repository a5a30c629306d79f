#!/usr/bin/python3
"""Writes random-weight benchmark checkpoints in the project's format (GQAM version 1).

The shapes are those of llama2.c's stories models, so speed and memory numbers can be set beside
llama2.c's; the weights are random (normal, std 0.02; RMSNorm weights 1.0), so the text they
generate is noise. Every file embeds the Llama 2 tokenizer when ../shared/tokenizers/
llama2.tokenizer.bin exists, and no tokenizer (tokenizer_bytes 0) otherwise.

  name      dim  hidden  layers  heads  kv heads  seq   size
  15M       288     768       6      6         6   256    61 MB
  15M-gqa   288     768       6      6         2   256    59 MB
  15M-mqa   288     768       6      6         1   256    58 MB
  42M       512    1376       8      8         8  1024   167 MB
  110M      768    2048      12     12        12  1024   439 MB

Long contexts (scripts/bench_context.sh): the 110M shape with a context of 32768 as MHA, GQA and
MQA; a shape whose KV cache outweighs its weights within a few thousand tokens (vocab 512, no
tokenizer); and a context of 2^20 positions.

  name          dim  hidden  layers  heads  kv heads    seq  vocab   size
  110M-32k      768    2048      12     12        12  32768  32000  439 MB
  110M-gqa-32k  768    2048      12     12         4  32768  32000  401 MB
  110M-mqa-32k  768    2048      12     12         1  32768  32000  387 MB
  kv-mha        256     768       4      8         8  16384    512   14 MB
  kv-gqa        256     768       4      8         4  16384    512   13 MB
  kv-mqa        256     768       4      8         1  16384    512   12 MB
  1M            256     768      16      8         8  2^20     512   55 MB

All share bos 1, eos 2, rope_theta 10000, norm_eps 1e-5 and the classifier with the token
embedding; the vocabulary is 32000 unless the table says otherwise. Files go to --out (default bench-cache/) as NAME.bin; a file that already has
the expected size is kept, so a second run costs nothing. Weights are drawn from a generator
seeded with --seed and written in chunks, so memory stays near 64 MB whatever the model.

  /usr/bin/python3 scripts/make_bench_models.py [--out DIR] [--models 15M,42M] [--list]

Needs numpy only. --int8 also writes NAME-int8.bin beside each model, through
model/quantize.py (int8 weights in groups of 32, one fp32 scale per group).
"""
import argparse
import os
import struct
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(REPO, "..", "shared", "tokenizers", "llama2.tokenizer.bin")

# (dim, hidden_dim, n_layers, n_heads, n_kv_heads, seq_len); head_dim = dim / n_heads.
SHAPES = {
    "15M": (288, 768, 6, 6, 6, 256),
    "15M-gqa": (288, 768, 6, 6, 2, 256),
    "15M-mqa": (288, 768, 6, 6, 1, 256),
    "42M": (512, 1376, 8, 8, 8, 1024),
    "110M": (768, 2048, 12, 12, 12, 1024),
    "110M-32k": (768, 2048, 12, 12, 12, 32768),
    "110M-gqa-32k": (768, 2048, 12, 12, 4, 32768),
    "110M-mqa-32k": (768, 2048, 12, 12, 1, 32768),
    "kv-mha": (256, 768, 4, 8, 8, 16384),
    "kv-gqa": (256, 768, 4, 8, 4, 16384),
    "kv-mqa": (256, 768, 4, 8, 1, 16384),
    "1M": (256, 768, 16, 8, 8, 1 << 20),
}
VOCAB_SIZE = 32000
# Models with a vocabulary of their own embed no tokenizer: run them with --tokens.
VOCAB_SIZES = {"kv-mha": 512, "kv-gqa": 512, "kv-mqa": 512, "1M": 512}
BOS_ID, EOS_ID = 1, 2
ROPE_THETA, NORM_EPS = 10000.0, 1e-5
STD = 0.02

# Header layout, as in README.md ("The checkpoint format") and model/checkpoint.py.
MAGIC, VERSION, HEADER_BYTES = b"GQAM", 1, 256
HEADER_FMT = "<4s9Iff4I4Q"  # fields up to offset 96; zeros follow up to HEADER_BYTES
FLAG_SHARED_CLASSIFIER = 1
CHUNK_FLOATS = 1 << 24  # 64 MB of float32 per write


def align64(n):
    return (n + 63) // 64 * 64


def tensor_shapes(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size=VOCAB_SIZE):
    """(name, shape, is_norm) in file order; the classifier is shared, so it is absent."""
    head_dim = dim // n_heads
    q_dim, kv_dim, L = n_heads * head_dim, n_kv_heads * head_dim, n_layers
    return [
        ("token_embedding", (vocab_size, dim), False),
        ("rms_att", (L, dim), True),
        ("wq", (L, q_dim, dim), False),
        ("wk", (L, kv_dim, dim), False),
        ("wv", (L, kv_dim, dim), False),
        ("wo", (L, dim, q_dim), False),
        ("rms_ffn", (L, dim), True),
        ("w1", (L, hidden_dim, dim), False),
        ("w2", (L, dim, hidden_dim), False),
        ("w3", (L, hidden_dim, dim), False),
        ("rms_final", (dim,), True),
    ]


def header(shape, tokenizer_bytes, vocab_size=VOCAB_SIZE):
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, seq_len = shape
    n_floats = sum(int(np.prod(s)) for _, s, _ in tensor_shapes(*shape[:5], vocab_size))
    weights_offset = align64(HEADER_BYTES + tokenizer_bytes)
    packed = struct.pack(HEADER_FMT, MAGIC, VERSION, dim, hidden_dim, n_layers, n_heads,
                         n_kv_heads, dim // n_heads, vocab_size, seq_len, ROPE_THETA, NORM_EPS,
                         FLAG_SHARED_CLASSIFIER, BOS_ID, EOS_ID, 0,
                         HEADER_BYTES, tokenizer_bytes, weights_offset, 4 * n_floats)
    return packed + bytes(HEADER_BYTES - len(packed)), weights_offset + 4 * n_floats


def write_model(path, shape, tokenizer, seed, vocab_size=VOCAB_SIZE):
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, _ = shape
    head, total = header(shape, len(tokenizer), vocab_size)
    rng = np.random.default_rng(seed)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head)
        f.write(tokenizer)
        f.write(bytes(align64(HEADER_BYTES + len(tokenizer)) - HEADER_BYTES - len(tokenizer)))
        for _, tensor_shape, is_norm in tensor_shapes(dim, hidden_dim, n_layers, n_heads,
                                                      n_kv_heads, vocab_size):
            left = int(np.prod(tensor_shape))
            while left > 0:
                n = min(left, CHUNK_FLOATS)
                if is_norm:
                    chunk = np.ones(n, dtype="<f4")
                else:
                    chunk = rng.standard_normal(n, dtype=np.float32)
                    chunk *= STD
                    chunk = chunk.astype("<f4", copy=False)
                chunk.tofile(f)
                left -= n
    if os.path.getsize(tmp) != total:
        os.remove(tmp)
        raise RuntimeError(f"{path}: wrote an unexpected number of bytes")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "bench-cache"),
                    help="directory for the checkpoints (default: bench-cache/)")
    ap.add_argument("--models", default="15M,15M-gqa,15M-mqa,42M,110M",
                    help="comma- or space-separated subset of " + ", ".join(SHAPES))
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                    help="llama2.c tokenizer.bin to embed; none is embedded when it is absent")
    ap.add_argument("--seed", type=int, default=1234, help="generator seed (default 1234)")
    ap.add_argument("--force", action="store_true", help="rewrite files that already exist")
    ap.add_argument("--list", action="store_true",
                    help="print each model's path and expected size, write nothing")
    ap.add_argument("--int8", action="store_true",
                    help="also write NAME-int8.bin, quantized by model/quantize.py")
    args = ap.parse_args()

    names = [n for n in args.models.replace(",", " ").split() if n]
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names:
        print(f"make_bench_models: unknown model(s) {' '.join(unknown) or '(none given)'}; "
              f"expected some of {', '.join(SHAPES)}", file=sys.stderr)
        return 2

    tokenizer = b""
    if os.path.exists(args.tokenizer):
        with open(args.tokenizer, "rb") as f:
            tokenizer = f.read()
    elif not args.list:
        print(f"make_bench_models: {args.tokenizer} not found; embedding no tokenizer",
              file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    for name in names:
        path = os.path.join(args.out, name + ".bin")
        vocab_size = VOCAB_SIZES.get(name, VOCAB_SIZE)
        own_tokenizer = tokenizer if vocab_size == VOCAB_SIZE else b""
        _, total = header(SHAPES[name], len(own_tokenizer), vocab_size)
        if args.list:
            print(f"{path} {total}")
            continue
        if not args.force and os.path.exists(path) and os.path.getsize(path) == total:
            print(f"{path}: up to date ({total} bytes)", file=sys.stderr)
        else:
            print(f"{path}: writing {total} bytes", file=sys.stderr)
            write_model(path, SHAPES[name], own_tokenizer, args.seed, vocab_size)
        int8_path = os.path.join(args.out, name + "-int8.bin")
        if args.int8 and (args.force or not os.path.exists(int8_path)
                          or os.path.getmtime(int8_path) < os.path.getmtime(path)):
            subprocess.run([sys.executable, os.path.join(REPO, "model", "quantize.py"), path,
                            int8_path, "--force"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
