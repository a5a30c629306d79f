#!/usr/bin/python3
"""Import a llama2.c checkpoint and its tokenizer.bin into the project's format (GQAM version 1).

Usage: model/import.py MODEL.bin TOKENIZER.bin OUT.bin [--int8 [GROUP]] [--force]

MODEL.bin is in llama2.c's legacy layout (seven int32: dim, hidden_dim, n_layers, n_heads,
n_kv_heads, vocab_size, seq_len, a negative vocab_size meaning a separate classifier; then fp32
weights, with the two precomputed RoPE tables before the classifier). TOKENIZER.bin is the
llama2.c tokenizer.bin of its vocabulary, which the output embeds, so that ./run needs no -z.
RoPE theta is 10000, the RMSNorm epsilon 1e-5, BOS 1 and EOS 2, as llama2.c assumes.

The output is what model/export.py writes for the same weights (checkpoint.write_checkpoint),
byte for byte; --int8 then quantizes it as model/quantize.py does (groups of GROUP, default 32).
MODEL.bin and TOKENIZER.bin must be regular files; OUT.bin is written under a temporary name and
renamed into place when complete, never over an input, and over an existing file only with
--force. Bad input is one line on stderr, exit 1 (2 for bad usage): model/toolio.py.
"""
import io
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import toolio  # noqa: E402

if __name__ == "__main__":
    toolio.guard("import")

import numpy as np  # noqa: E402

from toolio import Failure  # noqa: E402

LEGACY_HEADER = struct.Struct("<7i")


class ImportError_(ValueError):
    pass


def read_legacy(data):
    """The bytes of a llama2.c checkpoint -> (config dict, flat float32 weights in GQAM order)."""
    if data[:4] == b"GQAM":
        raise ImportError_("already in the project's format (GQAM magic); nothing to import")
    if len(data) < LEGACY_HEADER.size:
        raise ImportError_(f"file is {len(data)} bytes, shorter than the 28-byte llama2.c "
                           "header")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = LEGACY_HEADER.unpack_from(data)
    for name, value, high in (("dim", dim, 1 << 16), ("hidden_dim", hidden, 1 << 18),
                              ("n_layers", layers, 1024), ("n_heads", heads, 1024),
                              ("n_kv_heads", kv_heads, 1024), ("vocab_size", abs(vocab), 1 << 21),
                              ("seq_len", seq_len, 1 << 20)):
        if not 1 <= value <= high:
            raise ImportError_(f"{name} is {value}, expected 1..{high} (not a llama2.c "
                               "checkpoint?)")
    if dim % heads:
        raise ImportError_(f"dim {dim} is not a multiple of n_heads {heads}")
    if heads % kv_heads:
        raise ImportError_(f"n_kv_heads is {kv_heads}, which does not divide n_heads {heads}")
    head_dim = dim // heads
    if head_dim % 2:
        raise ImportError_(f"head_dim is {head_dim}, expected an even number (RoPE rotates "
                           "pairs)")
    shared = vocab > 0
    vocab = abs(vocab)
    kv_dim = kv_heads * head_dim
    per_layer = 2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * dim * hidden
    before_rope = vocab * dim + layers * per_layer + dim
    rope = seq_len * head_dim  # two tables of seq_len * head_dim / 2 floats
    floats = before_rope + rope + (0 if shared else vocab * dim)
    expected = LEGACY_HEADER.size + 4 * floats
    if len(data) != expected:
        raise ImportError_(f"file is {len(data)} bytes, its header needs {expected}" +
                           (" (truncated?)" if len(data) < expected else ""))
    w = np.frombuffer(data, dtype="<f4", offset=LEGACY_HEADER.size, count=floats)
    if not np.isfinite(w).all():
        raise ImportError_("the weights hold values that are not finite")
    weights = w[:before_rope] if shared else np.concatenate([w[:before_rope],
                                                             w[before_rope + rope:]])
    config = dict(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads,
                  n_kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab, seq_len=seq_len,
                  rope_theta=10000.0, norm_eps=1e-5, shared_classifier=shared)
    return config, weights


def check_tokenizer(data, vocab_size):
    """Walks a llama2.c tokenizer.bin as run.c does: every record must fit and the pieces must
    number exactly vocab_size."""
    if len(data) < 4:
        raise ImportError_(f"tokenizer is {len(data)} bytes, too short for its header")
    offset, pieces = 4, 0
    while offset < len(data):
        if len(data) - offset < 8:
            raise ImportError_(f"tokenizer piece {pieces} is cut off at byte {offset}")
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        if not np.isfinite(score):
            raise ImportError_(f"tokenizer piece {pieces} has a score that is not finite")
        if length < 0 or length > len(data) - offset:
            raise ImportError_(f"tokenizer piece {pieces} has length {length}, running past "
                               "the end of the file")
        offset += length
        pieces += 1
    if pieces != vocab_size:
        raise ImportError_(f"tokenizer has {pieces} pieces, the model's vocab_size is "
                           f"{vocab_size}")


def main():
    parser = toolio.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="llama2.c checkpoint")
    parser.add_argument("tokenizer", help="llama2.c tokenizer.bin with vocab_size pieces")
    parser.add_argument("output")
    parser.add_argument("--int8", type=int, nargs="?", const=32, default=None, metavar="GROUP",
                        help="write the int8 variant, GROUP values per scale (default 32)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args()
    group = args.int8
    if group is not None and group < 1:
        parser.error(f"--int8 expects a positive group size, got {group}")

    toolio.check_output(args.output, args.force, [(args.model, "the model input"),
                                                  (args.tokenizer, "the tokenizer input")])
    data, _ = toolio.read_input(args.model)
    try:
        config, weights = read_legacy(data)
    except ValueError as e:
        raise Failure(f"{args.model}: {e}") from None
    tokenizer, _ = toolio.read_input(args.tokenizer)
    try:
        check_tokenizer(tokenizer, config["vocab_size"])
    except ValueError as e:
        raise Failure(f"{args.tokenizer}: {e}") from None
    if group and (config["dim"] % group or config["hidden_dim"] % group):
        raise Failure(f"{args.model}: --int8 {group} must divide dim {config['dim']} and "
                      f"hidden_dim {config['hidden_dim']}")

    import torch  # noqa: E402  (slow to import; only once the inputs are known to be good)
    from checkpoint import load_weights, write_checkpoint_to
    from model import Config, Transformer
    from quantize import quantize_bytes

    torch.set_grad_enabled(False)
    model = Transformer(Config(**config)).eval()
    load_weights(model, weights)
    kind = {1: "MQA", config["n_heads"]: "MHA"}.get(config["n_kv_heads"], "GQA")
    what = (f"{model.n_params()} parameters, {kind}, tokenizer of {config['vocab_size']} "
            "pieces embedded")
    if not group:
        size = toolio.write_output(args.output, args.force, lambda f: write_checkpoint_to(
            f, model, tokenizer, bos_id=1, eos_id=2))
        toolio.print_result(f"import: wrote {args.output}: {size} bytes, {what}")
        return
    fp32 = io.BytesIO()
    write_checkpoint_to(fp32, model, tokenizer, bos_id=1, eos_id=2)
    out, max_error = quantize_bytes(fp32.getvalue(), group, args.model)
    toolio.write_output(args.output, args.force, lambda f: f.write(out))
    toolio.print_result(f"import: wrote {args.output}: {len(out)} bytes (fp32 "
                        f"{len(fp32.getvalue())}), {what}, int8 in groups of {group}, "
                        f"max |w - dequantized| {max_error:.3g}")


if __name__ == "__main__":
    toolio.run(main)
