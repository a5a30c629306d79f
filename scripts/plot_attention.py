#!/usr/bin/python3
"""Draw the attention maps that `run MODEL -p TEXT --attn-dump FILE` wrote.

Usage: scripts/plot_attention.py FILE out.png [--layers 0,2] [--force]

One row of heatmaps per layer, one column per query head; in each heatmap a row is a query
token and a column the key token it reads. Query heads that share a key/value head (a GQA or
MQA group) stand side by side under one bracket, labelled "kv head g", so the groups are
visible: heads in a group read the same keys but ask different questions of them. Under MHA
each bracket covers one head, under MQA one bracket covers them all.

Needs python3-matplotlib and python3-numpy (make test installs both). FILE must be a regular
file; out.png is written under a temporary name and renamed into place when complete, never over
FILE, and over an existing file only with --force. Bad input is one line on stderr, exit 1 (2 for
bad usage): model/toolio.py.
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "model"))
import toolio  # noqa: E402

if __name__ == "__main__":
    toolio.guard("plot_attention")

try:
    import numpy as np
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
except ImportError as e:
    PACKAGE = "python3-numpy" if (e.name or "").split(".")[0] == "numpy" else "python3-matplotlib"
    sys.exit(f"plot_attention: needs {PACKAGE}: sudo apt-get install {PACKAGE}")

# The keys this script reads; a dump may hold others ("tokens", "n_kv_heads", later additions).
REQUIRED_KEYS = ("n_layers", "n_heads", "group_size", "labels", "attention")

# Layout, in inches (the PNG has DPI pixels per inch).
DPI = 100
TICK_FONT = 10  # points: token labels
TICK_PITCH = 0.19  # inches one token label needs along an axis at TICK_FONT
SPACE = 0.12  # between heatmaps
GROUP_GAP = 0.45  # extra space between kv groups (GQA)
MAX_LABEL = 12  # characters of a token label shown


class DumpError(Exception):
    """The dump cannot be drawn; the message says why, in one line."""


def kv_groups(n_heads, group_size):
    """The query heads of each kv head: [(kv_head, [query heads])], in column order.

    Query head h reads kv head h // group_size, so the groups are runs of group_size heads.
    """
    if group_size < 1 or n_heads < 1 or n_heads % group_size:
        raise ValueError(f"group_size {group_size} does not divide n_heads {n_heads}")
    return [(g, list(range(g * group_size, (g + 1) * group_size)))
            for g in range(n_heads // group_size)]


def head_offsets(n_heads, group_size, cell, space=SPACE, gap=GROUP_GAP):
    """The left edge of each query head's heatmap, from the left of the first one.

    Heatmaps are cell wide and space apart; between two kv groups there is gap more, but only
    under GQA: under MHA every head is its own group and under MQA there is one group.
    """
    groups = kv_groups(n_heads, group_size)
    spread = 1 < len(groups) < n_heads
    offsets = []
    x = 0.0
    for g, heads in groups:
        if g and spread:
            x += gap
        for _ in heads:
            offsets.append(x)
            x += cell + space
    return offsets


def kind_of(n_heads, group_size):
    if group_size == 1:
        return "MHA"
    return "MQA" if group_size == n_heads else "GQA"


def cell_size(n_tokens):
    """A heatmap's side in inches: it grows with the prompt until its labels fit, up to 3."""
    return min(max(1.4, n_tokens * TICK_PITCH), 3.0)


def tick_step(n_tokens, cell):
    """Label every step-th token so that labels TICK_PITCH apart fit along a cell."""
    return max(1, math.ceil(n_tokens * TICK_PITCH / cell - 1e-9))


def display_label(label):
    """A token label as it can be drawn: no line breaks, no mathtext, not too long."""
    text = str(label).replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    text = text.replace("$", r"\$")
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 1] + "…"


def read_dump(path):
    """The dump at path as (dump, attention array); DumpError when it is not a usable one."""
    try:
        data, _ = toolio.read_input(path)  # a regular file: a FIFO is refused, not waited on
    except toolio.Failure as e:
        raise DumpError(str(e)) from None
    try:
        dump = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DumpError(f"{path}: not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise DumpError(f"{path}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise DumpError(f"{path}: not an attention dump (JSON nested too deeply)") from None
    if not isinstance(dump, dict):
        raise DumpError(f"{path}: not an attention dump (a JSON {type(dump).__name__}, "
                        "not an object)")
    missing = [k for k in REQUIRED_KEYS if k not in dump]
    if missing:
        raise DumpError(f"{path}: not an attention dump: no {', '.join(missing)}")
    for key in ("n_layers", "n_heads", "group_size"):
        if not isinstance(dump[key], int) or isinstance(dump[key], bool) or dump[key] < 1:
            raise DumpError(f"{path}: {key} is {dump[key]!r}, not a positive integer")
    n_layers, n_heads, group_size = dump["n_layers"], dump["n_heads"], dump["group_size"]
    if n_heads % group_size:
        raise DumpError(f"{path}: group_size {group_size} does not divide n_heads {n_heads}")
    n_kv_heads = dump.get("n_kv_heads", n_heads // group_size)
    if n_kv_heads != n_heads // group_size:
        raise DumpError(f"{path}: n_kv_heads {n_kv_heads!r} is not n_heads / group_size "
                        f"({n_heads} / {group_size})")
    labels = dump["labels"]
    if not isinstance(labels, list) or not labels:
        raise DumpError(f"{path}: labels is not a non-empty list")
    n_tokens = len(labels)
    want = (n_layers, n_heads, n_tokens, n_tokens)
    shape = " x ".join(map(str, want))
    try:
        attention = np.array(dump["attention"], dtype=np.float32)
    except (ValueError, TypeError):
        raise DumpError(f"{path}: attention is not a {shape} array of numbers "
                        "(layers x heads x labels x labels)") from None
    if attention.shape != want:
        got = " x ".join(map(str, attention.shape)) or "a single number"
        raise DumpError(f"{path}: attention is {got}, expected {shape} "
                        "(layers x heads x labels x labels)")
    return dump, attention


def parse_layers(text, n_layers):
    """--layers "0,2" as [0, 2]; DumpError naming the bad ones."""
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise DumpError(f"--layers {text!r}: expected comma-separated layer numbers") from None
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise DumpError(f"--layers {text}: {', '.join(map(str, bad))} outside 0..{n_layers - 1}")
    return layers


def draw(dump, attention, layers):
    """The figure of the given layers of a dump that read_dump accepted."""
    n_heads, group_size = dump["n_heads"], dump["group_size"]
    labels = [display_label(x) for x in dump["labels"]]
    n_tokens = len(labels)
    groups = kv_groups(n_heads, group_size)

    # Past 15 tokens or so only every step-th token is labelled.
    cell = cell_size(n_tokens)
    step = tick_step(n_tokens, cell)
    ticks = list(range(0, n_tokens, step))
    longest = max(len(labels[t]) for t in ticks)
    offsets = head_offsets(n_heads, group_size, cell)
    grid_w = offsets[-1] + cell
    grid_h = len(layers) * cell + (len(layers) - 1) * SPACE
    left = 0.55 + 0.085 * longest  # layer label and query-token labels
    bottom = 0.35 + 0.085 * longest  # key-token labels, rotated
    top = 1.55  # title, kv brackets, head titles
    right = 1.25  # colorbar and its labels
    width, height = left + grid_w + right, bottom + grid_h + top
    # Keep the PNG under about 8000 pixels a side, whatever the model.
    dpi = min(DPI, 8000 / max(width, height))

    fig = plt.figure(figsize=(width, height), dpi=dpi)

    def box(x, y, w, h):  # inches from the bottom left, as figure fractions
        return [x / width, y / height, w / width, h / height]

    # Masked cells (a query never reads a later key) are drawn blank, not as zeros.
    mask = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)
    image = None
    grid_top = bottom + grid_h
    for row, layer in enumerate(layers):
        y = grid_top - (row + 1) * cell - row * SPACE
        for head in range(n_heads):
            ax = fig.add_axes(box(left + offsets[head], y, cell, cell))
            weights = np.ma.array(attention[layer, head], mask=mask)
            image = ax.imshow(weights, vmin=0.0, vmax=1.0, cmap="viridis",
                              interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"head {head}", fontsize=10, pad=4)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=11)
                ax.set_yticks(ticks)
                ax.set_yticklabels([labels[t] for t in ticks], fontsize=TICK_FONT)
            if row == len(layers) - 1:
                ax.set_xticks(ticks)
                ax.set_xticklabels([labels[t] for t in ticks], fontsize=TICK_FONT, rotation=90)

    # One bracket per kv group over its query heads' columns, above the head titles.
    inset = 0.06
    bracket_y = grid_top + 0.42
    for g, heads in groups:
        x0 = left + offsets[heads[0]] + inset
        x1 = left + offsets[heads[-1]] + cell - inset
        xs = [x0 / width, x0 / width, x1 / width, x1 / width]
        ys = [(bracket_y - 0.1) / height, bracket_y / height, bracket_y / height,
              (bracket_y - 0.1) / height]
        fig.add_artist(Line2D(xs, ys, color="0.25", linewidth=1.5))
        fig.text((x0 + x1) / 2 / width, (bracket_y + 0.05) / height, f"kv head {g}",
                 ha="center", va="bottom", fontsize=11)

    cax = fig.add_axes(box(left + grid_w + 0.3, bottom, 0.2, grid_h))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("attention weight", fontsize=11)
    bar.ax.tick_params(labelsize=10)

    kind = kind_of(n_heads, group_size)
    model = os.path.basename(str(dump.get("model", "")))
    kv = f"{len(groups)} kv head" + ("s" if len(groups) > 1 else "")
    title = f"{model}: {kind}, {n_heads} query heads, {kv} (groups of {group_size})"
    note = "rows: query token; columns: the key token it reads"
    if step > 1:
        note += f"; {n_tokens} tokens, one in {step} labelled"
    fig.text(0.5, (height - 0.3) / height, title, ha="center", va="center", fontsize=14)
    fig.text(0.5, (height - 0.62) / height, note, ha="center", va="center", fontsize=11,
             color="0.3")
    return fig


def main():
    parser = toolio.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dump", help="JSON written by run --attn-dump")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--layers", help="comma-separated layers to draw (default: all)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    args = parser.parse_args()

    toolio.check_output(args.out, args.force, [(args.dump, "the input")])
    try:
        dump, attention = read_dump(args.dump)
        layers = list(range(dump["n_layers"]))
        if args.layers:
            layers = parse_layers(args.layers, dump["n_layers"])
    except DumpError as e:
        raise toolio.Failure(str(e)) from None
    # savefig picks the format by the name's extension (out.svg is an SVG), PNG without one
    kind = os.path.splitext(args.out)[1][1:].lower() or "png"
    try:
        fig = draw(dump, attention, layers)
        toolio.write_output(args.out, args.force,
                            lambda f: fig.savefig(f, format=kind, dpi="figure"))
    except ValueError as e:
        raise toolio.Failure(f"cannot write {args.out}: {e}") from None
    n = len(layers)
    toolio.print_result(f"plot_attention: wrote {args.out} ({n} layer{'s' * (n > 1)} x "
                        f"{dump['n_heads']} heads)")


if __name__ == "__main__":
    toolio.run(main)
