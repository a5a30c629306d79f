#!/usr/bin/env python3
"""Export a training checkpoint (model/runs/<name>/best.pt or ckpt.pt) to the
project's checkpoint format (GQAM version 1, see checkpoint.py), embedding
the llama2.c-format tokenizer.bin.

    /usr/bin/python3 model/export.py --ckpt model/runs/gqa/best.pt \
        --tokenizer tokenizer/shakespeare.tokenizer.bin --out model/shakespeare-gqa.bin

Refuses to overwrite an existing output unless --force is given.
"""
import argparse
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from checkpoint import read_checkpoint, write_checkpoint  # noqa: E402
from model import Config, Transformer  # noqa: E402


def repo_path(p):
    return p if os.path.isabs(p) else os.path.join(REPO, p)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="torch checkpoint written by train.py")
    ap.add_argument("--tokenizer", default="tokenizer/shakespeare.tokenizer.bin",
                    help="llama2.c tokenizer.bin to embed ('' for none)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bos-id", type=int, default=1)
    ap.add_argument("--eos-id", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out")
    ap.add_argument("--int8", type=int, metavar="GROUP", default=0,
                    help="write the int8 variant, GROUP values per scale (32 is usual): "
                         "model/quantize.py applied to the fp32 export")
    args = ap.parse_args()

    out = repo_path(args.out)
    if os.path.exists(out) and not args.force:
        sys.exit(f"export: {args.out} exists; pass --force to overwrite")
    ck = torch.load(repo_path(args.ckpt), map_location="cpu")
    cfg = Config(**ck["config"])
    cfg.dropout = 0.0
    model = Transformer(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    tok = b""
    if args.tokenizer:
        with open(repo_path(args.tokenizer), "rb") as f:
            tok = f.read()
    size = write_checkpoint(model, out, tok, args.bos_id, args.eos_id, force=args.force)

    # read it back and check the round trip
    m2, h, tok2 = read_checkpoint(out)
    assert tok2 == tok
    x = torch.randint(0, cfg.vocab_size, (1, min(32, cfg.seq_len)))
    with torch.no_grad():
        d = (model(x)[0] - m2(x)[0]).abs().max().item()
    assert d == 0.0, d
    print(f"wrote {args.out}: {size} bytes, {model.n_params()} parameters, "
          f"step {ck['step']}, n_kv_heads {cfg.n_kv_heads}")
    if args.int8:
        fp32 = out + ".fp32"
        os.replace(out, fp32)
        subprocess.run([sys.executable, os.path.join(HERE, "quantize.py"), fp32, out,
                        "--group", str(args.int8), "--force"], check=True)
        os.remove(fp32)


if __name__ == "__main__":
    main()
