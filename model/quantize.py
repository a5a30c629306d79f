#!/usr/bin/python3
"""Turn an fp32 GQAM checkpoint into its int8 variant.

Usage: model/quantize.py IN.bin OUT.bin [--group 32] [--force]

Every weight matrix (token embedding, wq, wk, wv, wo, w1, w2, w3, classifier) is stored as int8
in groups of GROUP consecutive values along each row, one fp32 scale per group:
    scale = max(|w| in the group) / 127,  value = round(w / scale),  w ~ value * scale.
RMSNorm weights stay fp32. The header sets flags bit 1 and stores GROUP at bytes 60..63; every
part (int8 values, scales, fp32 vectors) starts on a 64-byte boundary of the weights section.
README.md documents the layout; run.c reads it with layout_weights().

IN.bin must be a regular file holding a valid fp32 checkpoint; OUT.bin is written under a
temporary name and renamed into place when complete, never over IN.bin, and over an existing
file only with --force. Bad input is one line on stderr, exit 1 (2 for bad usage): model/toolio.py.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import toolio  # noqa: E402

if __name__ == "__main__":
    toolio.guard("quantize")

import numpy as np  # noqa: E402

from checkpoint import check_finite, parse_header, weight_layout, weights_of  # noqa: E402
from toolio import Failure  # noqa: E402

HEADER_BYTES = 256
FLAG_INT8 = 2


def align(offset, alignment=64):
    return (offset + alignment - 1) // alignment * alignment


def read_checkpoint(path, data):
    """The header dict and fp32 weights of the GQAM file at path whose bytes are data; Failure
    naming what is wrong with it."""
    try:
        h = parse_header(data)
        weights = weights_of(h, data)
        check_finite(h, weights)
    except ValueError as e:
        raise Failure(f"{path}: {e}") from None
    return h, weights


def quantize(w, group):
    """w (..., cols) fp32 -> int8 values of the same shape, fp32 scales (..., cols / group)."""
    grouped = w.reshape(-1, group).astype(np.float64)
    max_abs = np.abs(grouped).max(axis=1)
    scale = max_abs / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    values = np.clip(np.rint(grouped / safe[:, None]), -127, 127).astype(np.int8)
    return values.reshape(w.shape), scale.astype(np.float32)


def main():
    parser = toolio.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--group", type=int, default=32,
                        help="values per scale; must divide dim and hidden_dim (default 32)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args()
    if args.group < 1:
        parser.error(f"--group expects a positive integer, got {args.group}")
    toolio.check_output(args.output, args.force, [(args.input, "the input")])
    data, info = toolio.read_input(args.input)
    toolio.print_result(quantize_file(args.input, args.output, args.group, force=args.force,
                                      data=data))


def quantize_bytes(data, group, path):
    """The int8 variant of the fp32 checkpoint whose bytes are data (read from path), in groups
    of group, and the largest |w - dequantized|; Failure on a bad checkpoint or group."""
    c, weights = read_checkpoint(path, data)
    if group <= 0 or c["dim"] % group or c["hidden_dim"] % group:
        raise Failure(f"--group {group} must divide dim {c['dim']} and hidden_dim "
                      f"{c['hidden_dim']}")

    parts = []  # (offset in the weights section, bytes)
    offset, cursor = 0, 0
    max_error = 0.0
    for name, shape, is_matrix in weight_layout(c):
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
    weights_bytes = offset

    header = bytearray(data[:HEADER_BYTES])
    flags, = struct.unpack_from("<I", header, 48)
    struct.pack_into("<I", header, 48, flags | FLAG_INT8)
    struct.pack_into("<I", header, 60, group)
    struct.pack_into("<Q", header, 88, weights_bytes)
    section = bytearray(weights_bytes)
    for where, blob in parts:
        section[where:where + len(blob)] = blob
    w_offset = c["weights_offset"]
    # the tokenizer and its padding, unchanged
    return bytes(header) + data[HEADER_BYTES:w_offset] + bytes(section), max_error


def quantize_file(input_path, output_path, group=32, force=True, data=None):
    """Writes the int8 variant of the fp32 checkpoint input_path (whose bytes are data, when the
    caller has read them) to output_path, under a temporary name until it is complete, and
    returns a one-line summary; Failure on a bad input, group or output."""
    if data is None:
        data, _ = toolio.read_input(input_path)
    out, max_error = quantize_bytes(data, group, input_path)
    toolio.write_output(output_path, force, lambda f: f.write(out))
    return (f"quantize: wrote {output_path}: {len(out)} bytes "
            f"(fp32 {len(data)}), groups of {group}, "
            f"max |w - dequantized| {max_error:.3g}")


if __name__ == "__main__":
    toolio.run(main)
