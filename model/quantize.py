#!/usr/bin/python3
"""Turn an fp32 GQAM checkpoint into its int8 variant.

Usage: model/quantize.py IN.bin OUT.bin [--group 32] [--force]

Every weight matrix (token embedding, wq, wk, wv, wo, w1, w2, w3, classifier) is stored as int8
in groups of GROUP consecutive values along each row, one fp32 scale per group:
    scale = max(|w| in the group) / 127,  value = round(w / scale),  w ~ value * scale.
RMSNorm weights stay fp32. The header sets flags bit 1 and stores GROUP at bytes 60..63; every
part (int8 values, scales, fp32 vectors) starts on a 64-byte boundary of the weights section.
README.md documents the layout; run.c reads it with layout_weights().
"""
import argparse
import os
import struct
import sys

import numpy as np

HEADER_BYTES = 256
FLAG_SHARED_CLASSIFIER = 1
FLAG_INT8 = 2


def align(offset, alignment=64):
    return (offset + alignment - 1) // alignment * alignment


def read_checkpoint(path):
    data = open(path, "rb").read()
    if data[:4] != b"GQAM":
        sys.exit(f"quantize: {path}: not a GQAM checkpoint")
    (version, dim, hidden, n_layers, n_heads, n_kv_heads, head_dim, vocab, seq_len) = \
        struct.unpack_from("<9I", data, 4)
    flags, = struct.unpack_from("<I", data, 48)
    if version != 1 or flags & ~FLAG_SHARED_CLASSIFIER:
        sys.exit(f"quantize: {path}: expected an fp32 version-1 checkpoint (flags {flags})")
    tok_offset, tok_bytes, w_offset, w_bytes = struct.unpack_from("<4Q", data, 64)
    config = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads,
                  n_kv_heads=n_kv_heads, head_dim=head_dim, vocab=vocab, seq_len=seq_len,
                  shared=bool(flags & FLAG_SHARED_CLASSIFIER))
    weights = np.frombuffer(data, dtype="<f4", count=w_bytes // 4, offset=w_offset)
    return data, config, weights, w_offset


def tensors(c):
    """(name, shape, is_matrix) in file order, as run.c's layout_weights lists them."""
    D, F, L, V = c["dim"], c["hidden"], c["n_layers"], c["vocab"]
    q_dim, kv_dim = c["n_heads"] * c["head_dim"], c["n_kv_heads"] * c["head_dim"]
    table = [("token_embedding", (V, D), True), ("rms_att", (L, D), False),
             ("wq", (L, q_dim, D), True), ("wk", (L, kv_dim, D), True),
             ("wv", (L, kv_dim, D), True), ("wo", (L, D, q_dim), True),
             ("rms_ffn", (L, D), False), ("w1", (L, F, D), True), ("w2", (L, D, F), True),
             ("w3", (L, F, D), True), ("rms_final", (D,), False)]
    if not c["shared"]:
        table.append(("classifier", (V, D), True))
    return table


def quantize(w, group):
    """w (..., cols) fp32 -> int8 values of the same shape, fp32 scales (..., cols / group)."""
    grouped = w.reshape(-1, group).astype(np.float64)
    max_abs = np.abs(grouped).max(axis=1)
    scale = max_abs / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    values = np.clip(np.rint(grouped / safe[:, None]), -127, 127).astype(np.int8)
    return values.reshape(w.shape), scale.astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--group", type=int, default=32,
                        help="values per scale; must divide dim and hidden_dim (default 32)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args()
    if os.path.exists(args.output) and not args.force:
        sys.exit(f"quantize: {args.output} exists; pass --force to overwrite it")
    print(quantize_file(args.input, args.output, args.group))


def quantize_file(input_path, output_path, group=32):
    """Writes the int8 variant of the fp32 checkpoint input_path to output_path (replacing it)
    and returns a one-line summary; exits with a message on a bad input or group."""
    data, c, weights, w_offset = read_checkpoint(input_path)
    if group <= 0 or c["dim"] % group or c["hidden"] % group:
        sys.exit(f"quantize: --group {group} must divide dim {c['dim']} and hidden_dim "
                 f"{c['hidden']}")

    parts = []  # (offset in the weights section, bytes)
    offset, cursor = 0, 0
    max_error = 0.0
    for name, shape, is_matrix in tensors(c):
        count = int(np.prod(shape))
        w = weights[cursor:cursor + count].reshape(shape)
        cursor += count
        if is_matrix:
            values, scales = quantize(w, group)
            restored = values.reshape(-1, group).astype(np.float32) * scales[:, None]
            max_error = max(max_error, float(np.abs(restored.reshape(w.shape) - w).max()))
            for blob in (values.tobytes(), scales.astype("<f4").tobytes()):
                offset = align(offset)
                parts.append((offset, blob))
                offset += len(blob)
        else:
            offset = align(offset)
            parts.append((offset, w.astype("<f4").tobytes()))
            offset += 4 * count
    if cursor != len(weights):
        sys.exit(f"quantize: {input_path}: {len(weights) - cursor} floats left over")
    weights_bytes = offset

    header = bytearray(data[:HEADER_BYTES])
    flags, = struct.unpack_from("<I", header, 48)
    struct.pack_into("<I", header, 48, flags | FLAG_INT8)
    struct.pack_into("<I", header, 60, group)
    struct.pack_into("<Q", header, 88, weights_bytes)
    tmp = output_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(data[HEADER_BYTES:w_offset])  # the tokenizer and its padding, unchanged
        section = bytearray(weights_bytes)
        for where, blob in parts:
            section[where:where + len(blob)] = blob
        f.write(section)
    os.replace(tmp, output_path)
    return (f"quantize: wrote {output_path}: {os.path.getsize(output_path)} bytes "
            f"(fp32 {os.path.getsize(input_path)}), groups of {group}, "
            f"max |w - dequantized| {max_error:.3g}")


if __name__ == "__main__":
    main()
