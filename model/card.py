#!/usr/bin/env python3
"""Print the model card's numbers (markdown) for the shipped checkpoints,
from the exported model/shakespeare-*.bin headers and the loss CSVs.

    /usr/bin/python3 model/card.py
"""
import csv
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from checkpoint import read_header  # noqa: E402

# token/char ratios of the two splits (train.py prints them: 438829 / 1003854
# and 52108 / 111540 with tokenizer/shakespeare.model)
TRAIN_TOK_PER_CHAR = 438829 / 1003854


def main():
    rows_out = []
    order = {"mha": 0, "gqa": 1, "mqa": 2}
    for name in sorted((os.path.basename(p)[len("shakespeare-"):-len(".bin")]
                        for p in glob.glob(os.path.join(HERE, "shakespeare-*.bin"))),
                       key=lambda n: (order.get(n, 9), n)):
        path = os.path.join(HERE, f"shakespeare-{name}.bin")
        if not os.path.exists(os.path.join(HERE, f"shakespeare-{name}.loss.csv")):
            continue
        with open(path, "rb") as f:
            h = read_header(f.read(256))
        n_params = h["weights_bytes"] // 4
        kv_tok = 2 * h["n_layers"] * h["n_kv_heads"] * h["head_dim"] * 4
        with open(os.path.join(HERE, f"shakespeare-{name}.loss.csv")) as f:
            rows = [r for r in csv.DictReader(f) if r["val_loss"]]
        best = min(rows, key=lambda r: float(r["val_loss"]))
        last = rows[-1]
        rows_out.append((name, h, n_params, kv_tok, os.path.getsize(path), best, last))

    print("| | " + " | ".join(r[0].upper() for r in rows_out) + " |")
    print("|---|" + "---|" * len(rows_out))

    def line(label, f):
        print(f"| {label} | " + " | ".join(f(r) for r in rows_out) + " |")

    line("dim / hidden_dim / n_layers", lambda r: f"{r[1]['dim']} / {r[1]['hidden_dim']} / {r[1]['n_layers']}")
    line("n_heads / n_kv_heads / head_dim", lambda r: f"{r[1]['n_heads']} / {r[1]['n_kv_heads']} / {r[1]['head_dim']}")
    line("vocab / seq_len", lambda r: f"{r[1]['vocab_size']} / {r[1]['seq_len']}")
    line("parameters", lambda r: f"{r[2]:,}")
    line("file size (bytes)", lambda r: f"{r[4]:,}")
    line("KV cache per token", lambda r: f"{r[3]:,} B")
    line(f"KV cache at full context", lambda r: f"{r[3] * r[1]['seq_len']:,} B "
         f"({r[3] * r[1]['seq_len'] / 2**20:.2f} MiB)")
    line("steps / tokens seen", lambda r: f"{r[6]['step']} / {int(r[6]['tokens_seen']):,}")
    line("training time", lambda r: f"{float(r[6]['elapsed_s']) / 60:.1f} min")
    line("final train loss (nats/token, nats/char)",
         lambda r: f"{float(r[6]['train_loss']):.4f}, {float(r[6]['train_loss']) * TRAIN_TOK_PER_CHAR:.4f}")
    line("final val loss (nats/token, nats/char)",
         lambda r: f"{float(r[6]['val_loss']):.4f}, {float(r[6]['val_nats_per_char']):.4f}")
    line("exported (best val) step", lambda r: f"{r[5]['step']}")
    line("exported val loss (nats/token, nats/char)",
         lambda r: f"{float(r[5]['val_loss']):.4f}, {float(r[5]['val_nats_per_char']):.4f}")


if __name__ == "__main__":
    main()
