#!/usr/bin/env python3
"""Plot validation (and train) loss curves of several runs in one PNG.

    /usr/bin/python3 model/plot_losses.py --out model/shakespeare-loss.png \
        mha=model/shakespeare-mha.loss.csv gqa=model/shakespeare-gqa.loss.csv
"""
import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("runs", nargs="+", help="label=path/to/loss.csv")
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec in args.runs:
        label, path = spec.split("=", 1)
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r["val_loss"]]
        t = [int(r["tokens_seen"]) / 1e6 for r in rows]
        line, = ax.plot(t, [float(r["val_loss"]) for r in rows], label=f"{label} val")
        ax.plot(t, [float(r["train_loss"]) for r in rows], "--", color=line.get_color(),
                alpha=0.6, label=f"{label} train")
    ax.set_xlabel("tokens seen (M)")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("tinyshakespeare, BPE-1024: MHA vs GQA vs MQA")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()
