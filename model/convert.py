#!/usr/bin/python3
"""Convert a multi-head (MHA) checkpoint into grouped-query (GQA) or multi-query (MQA) attention.

Usage: model/convert.py IN.bin OUT.bin --n-kv-heads K [--force]

The method of the GQA paper (Ainslie et al. 2023, section 2.1): the key and value projection
heads of each group are mean-pooled into one head. With H query heads and K key/value heads,
group g holds the H / K consecutive heads g * H / K .. (g + 1) * H / K - 1, as run.c's
attention reads them (query head h reads kv head h / (H / K)):

    wk_new[g] = mean over the heads h of group g of wk[h]      (each a (head_dim, dim) block)
    wv_new[g] = mean over the heads h of group g of wv[h]

Everything else is copied unchanged. The converted model is usable at once and recovers most of
its quality after a short uptraining:
    /usr/bin/python3 model/train.py --init-from OUT.bin --n-kv-heads K ... (model/README.md)

IN.bin must be a regular file holding a valid fp32 checkpoint; OUT.bin is written under a
temporary name and renamed into place when complete, never over IN.bin, and over an existing
file only with --force. Bad input is one line on stderr, exit 1 (2 for bad usage): model/toolio.py.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import toolio  # noqa: E402

if __name__ == "__main__":
    toolio.guard("convert")

from checkpoint import (check_finite, parse_header, read_checkpoint, weights_of,  # noqa: E402
                        write_checkpoint_to)
from toolio import Failure  # noqa: E402


def mean_pool_heads(weight, n_heads, n_kv_heads, head_dim):
    """weight: (n_heads * head_dim, dim) -> (n_kv_heads * head_dim, dim), heads averaged in
    groups of n_heads // n_kv_heads consecutive heads."""
    group = n_heads // n_kv_heads
    dim = weight.shape[1]
    return weight.view(n_kv_heads, group, head_dim, dim).mean(dim=1).reshape(-1, dim)


def convert(model, n_kv_heads):
    from model import Config, Transformer
    cfg = model.cfg
    if cfg.n_kv_heads != cfg.n_heads:
        raise ValueError(f"the input has n_kv_heads {cfg.n_kv_heads}; convert an MHA model "
                         f"(n_kv_heads = n_heads = {cfg.n_heads})")
    if n_kv_heads < 1 or cfg.n_heads % n_kv_heads:
        raise ValueError(f"--n-kv-heads {n_kv_heads} must divide n_heads {cfg.n_heads}")
    new_cfg = Config(**{**vars(cfg), "n_kv_heads": n_kv_heads})
    out = Transformer(new_cfg)
    state = model.state_dict()
    for name, tensor in list(state.items()):
        if name.endswith("attention.wk.weight") or name.endswith("attention.wv.weight"):
            state[name] = mean_pool_heads(tensor, cfg.n_heads, n_kv_heads, cfg.head_dim)
    out.load_state_dict(state)
    out.eval()
    return out


def main():
    parser = toolio.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="an MHA checkpoint in the project's format")
    parser.add_argument("output")
    parser.add_argument("--n-kv-heads", type=int, required=True,
                        help="key/value heads of the result: 1 for MQA, a divisor for GQA")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args()
    if args.n_kv_heads < 1:
        parser.error(f"--n-kv-heads expects a positive integer, got {args.n_kv_heads}")
    toolio.check_output(args.output, args.force, [(args.input, "the input")])
    data, _ = toolio.read_input(args.input)
    try:  # the header and weights are checked before torch is imported
        header = parse_header(data)
        check_finite(header, weights_of(header, data))
        if header["n_kv_heads"] != header["n_heads"]:
            raise ValueError(f"the input has n_kv_heads {header['n_kv_heads']}; convert an MHA "
                             f"model (n_kv_heads = n_heads = {header['n_heads']})")
        if header["n_heads"] % args.n_kv_heads:
            raise ValueError(f"--n-kv-heads {args.n_kv_heads} must divide n_heads "
                             f"{header['n_heads']}")
    except ValueError as e:
        raise Failure(f"{args.input}: {e}") from None

    import torch
    torch.set_grad_enabled(False)
    model, header, tokenizer = read_checkpoint(args.input, data)
    converted = convert(model, args.n_kv_heads)
    toolio.write_output(args.output, args.force, lambda f: write_checkpoint_to(
        f, converted, tokenizer_bytes=tokenizer, bos_id=header["bos_id"],
        eos_id=header["eos_id"]))
    kind = "MQA" if args.n_kv_heads == 1 else "GQA"
    toolio.print_result(f"convert: wrote {args.output}: {kind}, {model.cfg.n_heads} query heads "
                        f"share {args.n_kv_heads} kv heads (mean-pooled from {args.input})")


if __name__ == "__main__":
    toolio.run(main)
