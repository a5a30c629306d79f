#!/usr/bin/python3
"""Plots decode tokens/s against context from scripts/bench_context.sh's CSV: one panel per model
shape, a colour per attention kind (MHA, GQA, MQA), a line style per KV cache format.

  /usr/bin/python3 scripts/plot_context.py CONTEXT_CSV OUT.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"MHA": "tab:red", "GQA": "tab:blue", "MQA": "tab:green"}
STYLES = {"f32": "-", "f16": "--", "q8": ":"}


def shape_of(model):
    """The panel a model belongs to: its name without the attention kind."""
    return "110M shape, seq_len 32768" if model.startswith("110M") else \
        "KV-dominated shape (dim 256, 4 layers), seq_len 16384"


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.DictReader(f))
    shapes = sorted({shape_of(r["model"]) for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(shapes), figsize=(6.5 * len(shapes), 4.6), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        lines = {}
        for r in rows:
            if shape_of(r["model"]) == shape:
                lines.setdefault((r["kind"], r["format"]), []).append(
                    (int(r["context"]), float(r["decode_tps"])))
        for (kind, fmt), points in sorted(lines.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], STYLES.get(fmt, "-"),
                    color=COLOURS.get(kind, "black"), marker="o", markersize=3,
                    label=f"{kind} {fmt}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (positions in the KV cache)")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(shape, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=3)
    threads = rows[0]["threads"] if rows else "?"
    fig.suptitle(f"Decoding at length: MHA, GQA, MQA; fp32, fp16, q8 KV cache ({threads} threads)")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print(f"plot_context: wrote {sys.argv[2]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
