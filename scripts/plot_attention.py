#!/usr/bin/python3
"""Draw the attention maps that `run MODEL -p TEXT --attn-dump FILE` wrote.

Usage: scripts/plot_attention.py FILE out.png [--layers 0,2] [--force]

One row of heatmaps per layer, one column per query head. Query heads that share a key/value
head (a GQA or MQA group) stand side by side under one bracket, so the groups are visible:
heads in a group read the same keys but ask different questions of them.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dump", help="JSON written by run --attn-dump")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--layers", help="comma-separated layers to draw (default: all)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    args = parser.parse_args()

    if os.path.exists(args.out) and not args.force:
        sys.exit(f"plot_attention: {args.out} exists; pass --force to overwrite it")
    try:
        with open(args.dump, encoding="utf-8") as f:
            dump = json.load(f)
        attention = np.array(dump["attention"], dtype=np.float32)  # (L, H, T, T)
        labels = dump["labels"]
        group_size = int(dump["group_size"])
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"plot_attention: {args.dump}: not an attention dump ({e})")

    n_layers, n_heads, n_tokens, _ = attention.shape
    layers = list(range(n_layers))
    if args.layers:
        layers = [int(x) for x in args.layers.split(",")]
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            sys.exit(f"plot_attention: --layers {bad} outside 0..{n_layers - 1}")

    # Masked cells (a query never reads a later key) are drawn blank, not as zeros.
    mask = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)
    cell = 0.22 * max(n_tokens, 6)
    # A narrow empty column between kv groups sets the groups apart.
    n_groups = n_heads // group_size
    gap = 0.3 if 1 < n_groups < n_heads else 0.0
    ratios = []
    for g in range(n_groups):
        ratios += [1.0] * group_size + ([gap] if gap and g < n_groups - 1 else [])
    fig = plt.figure(figsize=(cell * (n_heads + gap * n_groups) + 1.5, cell * len(layers) + 1.2))
    grid = fig.add_gridspec(len(layers), len(ratios), width_ratios=ratios)
    column = [h + (h // group_size if gap else 0) for h in range(n_heads)]
    axes = [[fig.add_subplot(grid[r, column[h]]) for h in range(n_heads)]
            for r in range(len(layers))]
    kind = "MHA" if group_size == 1 else ("MQA" if group_size == n_heads else "GQA")
    fig.suptitle(f"{os.path.basename(dump.get('model', ''))}: {kind}, {n_heads} query heads, "
                 f"{n_heads // group_size} kv heads (groups of {group_size})")
    for row, layer in enumerate(layers):
        for head in range(n_heads):
            ax = axes[row][head]
            weights = np.ma.array(attention[layer, head], mask=mask)
            ax.imshow(weights, vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"h{head}\nkv{head // group_size}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
                if n_tokens <= 16:
                    ax.set_yticks(range(n_tokens))
                    ax.set_yticklabels(labels, fontsize=6)
            if row == len(layers) - 1 and n_tokens <= 16:
                ax.set_xticks(range(n_tokens))
                ax.set_xticklabels(labels, fontsize=6, rotation=90)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(args.out, dpi=90)
    print(f"plot_attention: wrote {args.out} ({len(layers)} layers x {n_heads} heads)")


if __name__ == "__main__":
    main()
