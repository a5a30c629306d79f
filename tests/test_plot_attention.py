#!/usr/bin/python3
"""scripts/plot_attention.py: the kv-group brackets, a real plot, and its error messages.

- kv_groups and head_offsets against hand-written layouts for MHA, GQA and MQA;
- ./run writes an --attn-dump of the shipped GQA model; the figure drawn from it has one
  "kv head g" label centred over each group's query heads, and a colorbar; the PNG written by
  the script exists and has sane dimensions;
- bad input (no file, not JSON, missing keys, a ragged array) ends in one line on stderr and
  exit 1, an existing out file without --force in one line and exit 2; unknown keys are ignored;
- hostile input (tests/tool_checks.py): a FIFO, a directory or an empty file as the dump, JSON
  nested too deeply, bad flags, an out file that is the dump (by name, symlink or hard link, even
  with --force), a missing directory, a full disk, a write cut short and Ctrl-C: one line and
  exit 1 (data) or 2 (usage) each, no traceback, the dump intact, no partial PNG left behind;
- a missing matplotlib or numpy (a stub package on PYTHONPATH that fails to import) ends in a
  one-line hint naming the Debian package, not a traceback.
Prints `plot_attention: N passed, M failed`; exits non-zero on any failure.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "plot_attention.py")
RUN = os.environ.get("RUN_BINARY", os.path.join(REPO, "run"))
MODEL = os.path.join(REPO, "model", "shakespeare-gqa.bin")
PYTHON = "/usr/bin/python3"

try:
    import matplotlib  # noqa: F401
    import numpy  # noqa: F401
except ImportError as e:
    print(f"SKIPPED: plot_attention test ({e.name} not installed)")
    sys.exit(0)

sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.join(REPO, "tests"))
import plot_attention  # noqa: E402
from tool_checks import (describe, fifo, full_disk, interrupted_cleanly, leftovers,  # noqa: E402
                         one_line, tool)

passed = failed = 0


def check(ok, what):
    global passed, failed
    print(("ok      " if ok else "FAILED  ") + what)
    passed += bool(ok)
    failed += not ok


def script(*args, env=None):
    """Runs the script; returns (exit status, stdout, stderr)."""
    p = subprocess.run([PYTHON, SCRIPT, *args], capture_output=True, text=True, env=env)
    return p.returncode, p.stdout, p.stderr


def one_line_error(result, expect, what, want=1):
    status, out, err = result
    lines = err.splitlines()
    check(status == want and len(lines) == 1 and lines[0].startswith("plot_attention: ")
          and expect in lines[0] and "Traceback" not in err,
          f"{what}: exit {want} and one line ({err.strip()!r}, status {status})")


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def test_groups():
    # The query heads under each kv head, written out by hand.
    check(plot_attention.kv_groups(8, 1) == [(g, [g]) for g in range(8)],
          "MHA 8 heads: eight brackets of one head each")
    check(plot_attention.kv_groups(8, 4) == [(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7])],
          "GQA 8 heads in groups of 4: kv 0 over heads 0-3, kv 1 over 4-7")
    check(plot_attention.kv_groups(6, 2) == [(0, [0, 1]), (1, [2, 3]), (2, [4, 5])],
          "GQA 6 heads in groups of 2: three brackets of two")
    check(plot_attention.kv_groups(8, 8) == [(0, [0, 1, 2, 3, 4, 5, 6, 7])],
          "MQA 8 heads: one bracket over all")
    try:
        plot_attention.kv_groups(8, 3)
        check(False, "group_size 3 with 8 heads is refused")
    except ValueError:
        check(True, "group_size 3 with 8 heads is refused")

    # Columns: cell 1, space 0.1, gap 0.5 between GQA groups only.
    def offsets(n, g):
        return [round(x, 6) for x in plot_attention.head_offsets(n, g, 1.0, 0.1, 0.5)]

    check(offsets(4, 1) == [0.0, 1.1, 2.2, 3.3], "MHA columns: evenly spaced, no group gap")
    check(offsets(4, 2) == [0.0, 1.1, 2.7, 3.8], "GQA columns: a gap between the two groups")
    check(offsets(4, 4) == [0.0, 1.1, 2.2, 3.3], "MQA columns: evenly spaced, no group gap")
    check(plot_attention.kind_of(8, 1) == "MHA" and plot_attention.kind_of(8, 4) == "GQA"
          and plot_attention.kind_of(8, 8) == "MQA", "kind_of names MHA, GQA and MQA")
    step = {n: plot_attention.tick_step(n, plot_attention.cell_size(n)) for n in range(1, 257)}
    check(all(step[n] == 1 for n in range(1, 16)) and step[40] > 1 and step[256] >= 10,
          f"every token labelled up to 15 tokens, one in {step[40]} of 40, {step[256]} of 256")
    check(plot_attention.display_label("$x\n") == r"\$x\n", "labels: no mathtext, no newlines")


def test_figure(dump_path):
    dump, attention = plot_attention.read_dump(dump_path)
    fig = plot_attention.draw(dump, attention, list(range(dump["n_layers"])))
    n_heads, group_size = dump["n_heads"], dump["group_size"]
    heatmaps = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    check(len(heatmaps) == dump["n_layers"] * n_heads,
          f"{len(heatmaps)} heatmaps for {dump['n_layers']} layers x {n_heads} heads")
    # The heatmaps of the top row, left to right, are heads 0..n_heads-1.
    top = sorted(heatmaps, key=lambda ax: -ax.get_position().y1)[:n_heads]
    top.sort(key=lambda ax: ax.get_position().x0)
    texts = {t.get_text(): t.get_position() for t in fig.texts}
    for g, heads in plot_attention.kv_groups(n_heads, group_size):
        pos = texts.get(f"kv head {g}")
        x0, x1 = top[heads[0]].get_position().x0, top[heads[-1]].get_position().x1
        check(pos is not None and x0 < pos[0] < x1 and pos[1] > top[0].get_position().y1
              and abs(pos[0] - (x0 + x1) / 2) < 1e-6,
              f"'kv head {g}' centred above heads {heads[0]}-{heads[-1]}")
    check(len([t for t in texts if t.startswith("kv head")]) == n_heads // group_size,
          "one bracket label per kv head")
    # Each bracket is a line in figure coordinates: one per kv group.
    check(len(fig.artists) + len(fig.lines) == n_heads // group_size,
          "one bracket line per kv head")
    check(any(ax.get_ylabel() == "attention weight" for ax in fig.axes), "a colorbar")
    sizes = {t.get_fontsize() for t in top[0].get_yticklabels()}
    check(sizes and min(sizes) >= 9, f"token labels of {sizes} points")


def hostile(tmp, dump):
    """Bad files and outputs, in a directory of their own so that leftovers show."""
    d = os.path.join(tmp, "hostile")
    os.makedirs(d)
    good = open(dump, "rb").read()
    src = os.path.join(d, "dump.json")
    with open(src, "wb") as f:
        f.write(good)
    empty, deep = os.path.join(d, "empty.json"), os.path.join(d, "deep.json")
    open(empty, "wb").close()
    with open(deep, "w", encoding="utf-8") as f:
        f.write("[" * 100000 + "]" * 100000)
    pipe = fifo(d)
    full = full_disk(d)
    out = os.path.join(d, "out.png")
    for args, status, needle in (
            ([pipe, out], 1, f"{pipe}: not a regular file"),
            ([d, out], 1, f"{d}: is a directory, expected a file"),
            ([empty, out], 1, f"{empty}: file is empty"),
            ([deep, out], 1, f"{deep}: not an attention dump (JSON nested too deeply)"),
            ([src, out, "--bogus"], 2, "unrecognized arguments: --bogus (see plot_attention.py "
             "--help)"),
            ([src], 2, "the following arguments are required: out")):
        r = tool(SCRIPT, *args, timeout=15)
        check(one_line(r, "plot_attention", status, needle) and not os.path.exists(out),
              f"refuses {' '.join(os.path.basename(a) for a in args)}: {describe(r)}")
        if os.path.exists(out):
            os.remove(out)

    # An out file that is the dump, even with --force: refused, the dump intact.
    link, hard = os.path.join(d, "link.json"), os.path.join(d, "hard.json")
    os.symlink(src, link)
    os.link(src, hard)
    for target, how in ((src, "by name"), (link, "through a symlink"),
                        (hard, "through a hard link")):
        r = tool(SCRIPT, src, target, "--force")
        intact = open(src, "rb").read() == good
        check(one_line(r, "plot_attention", 2, f"{target} is the input; write somewhere else")
              and intact, f"an out file that is the dump {how} is refused, the dump intact: "
              f"{describe(r)}")
        if not intact:  # so that the checks below still test what they say
            with open(src, "wb") as f:
                f.write(good)
    os.remove(link)
    os.remove(hard)

    # Out files that cannot be written: a missing directory, a full disk, a file size limit.
    before = os.listdir(d)
    missing = os.path.join(d, "no-such-dir", "out.png")
    r = tool(SCRIPT, src, missing)
    check(one_line(r, "plot_attention", 1, f"cannot create {missing}: No such file or directory"),
          f"an out file in a missing directory: {describe(r)}")
    if full:
        r = tool(SCRIPT, src, full, "--force")
        check(one_line(r, "plot_attention", 1, f"cannot write {full}: No space left on device"),
              f"an out file on a full disk: {describe(r)}")
        r = tool(SCRIPT, src, out, stdout=full)
        check(one_line(r, "plot_attention", 1, "cannot write output: No space left on device"),
              f"its summary into a full disk (> /dev/full): {describe(r)}")
        if os.path.exists(out):
            os.remove(out)
    with open(out, "wb") as f:
        f.write(b"the old picture")
    r = tool(SCRIPT, src, out, "--force", fsize=16 * 1024)
    left = [x for x in leftovers(d, before) if x != "out.png"]
    check(one_line(r, "plot_attention", 1, f"cannot write {out}: File too large") and
          open(out, "rb").read() == b"the old picture" and left == [],
          f"a write cut short keeps the old PNG and leaves no temporary file: {describe(r)} {left}")
    os.remove(out)

    # Ctrl-C while matplotlib is imported, and once the PNG is complete but not in place.
    for trap, when in (("import:matplotlib", "while importing matplotlib"),
                       (f"publish:{out}", "before the PNG is in place")):
        r = tool(SCRIPT, src, out, interrupt=trap)
        check(interrupted_cleanly(r) and leftovers(d, before) == [],
              f"Ctrl-C {when}: exit 130, nothing printed or left ({describe(r)} "
              f"{leftovers(d, before)})")


def main():
    tmp = tempfile.mkdtemp(prefix="plot_attention.")
    test_groups()

    dump = os.path.join(tmp, "gqa.json")
    p = subprocess.run([RUN, MODEL, "-p", "Fear is the crown of", "--attn-dump", dump],
                       capture_output=True, text=True)
    check(p.returncode == 0 and os.path.exists(dump), f"./run --attn-dump writes {dump}")
    if p.returncode != 0:
        print(p.stderr)
        sys.exit(1)
    test_figure(dump)

    png = os.path.join(tmp, "gqa.png")
    status, out, err = script(dump, png)
    size = png_size(png) if os.path.exists(png) else None
    check(status == 0 and size is not None, f"the script writes a PNG ({out.strip()!r} {err!r})")
    if size:
        w, h = size
        check(800 <= w <= 8000 and 600 <= h <= 8000 and w > h,
              f"PNG of {w}x{h} pixels: 6 layers by 8 heads, wider than high")

    # An existing out file is kept without --force, replaced with it.
    before = os.stat(png)
    one_line_error(script(dump, png), "exists; pass --force", "out file exists, no --force", 2)
    check(os.stat(png).st_mtime_ns == before.st_mtime_ns, "the existing file is untouched")
    status, _, err = script(dump, png, "--force")
    check(status == 0, f"--force overwrites it ({err.strip()!r})")

    # Bad input: one line each.
    with open(dump, encoding="utf-8") as f:
        good = json.load(f)

    def write(name, text):
        path = os.path.join(tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    out = os.path.join(tmp, "never.png")
    one_line_error(script(os.path.join(tmp, "absent.json"), out),
                   "cannot open: No such file or directory", "no dump file")
    one_line_error(script(write("bad.json", '{"n_layers": 6,'), out), "not JSON", "bad JSON")
    one_line_error(script(write("list.json", "[1, 2]"), out), "not an attention dump",
                   "a JSON list")
    missing = {k: v for k, v in good.items() if k not in ("attention", "group_size")}
    one_line_error(script(write("missing.json", json.dumps(missing)), out),
                   "no group_size, attention", "missing keys")
    ragged = json.loads(json.dumps(good))
    ragged["attention"][2][3].pop()
    one_line_error(script(write("ragged.json", json.dumps(ragged)), out),
                   "attention is not a 6 x 8 x 8 x 8 array", "a ragged attention array")
    one_line_error(script(dump, out, "--layers", "9"), "outside 0..5", "--layers out of range")
    check(not os.path.exists(out), "no PNG written for bad input")
    extra = dict(good, softmax_temperature=1.0, notes={"any": ["thing"]})
    status, _, err = script(write("extra.json", json.dumps(extra)), out)
    check(status == 0 and os.path.exists(out), f"unknown keys are ignored ({err.strip()!r})")

    os.remove(out)
    hostile(tmp, dump)

    # Missing modules: a stub package that fails to import, first on PYTHONPATH.
    for module, package in (("matplotlib", "python3-matplotlib"), ("numpy", "python3-numpy")):
        stub = os.path.join(tmp, f"without-{module}", module)
        os.makedirs(stub)
        with open(os.path.join(stub, "__init__.py"), "w", encoding="utf-8") as f:
            f.write(f"raise ImportError(\"No module named '{module}'\", name='{module}')\n")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(stub))
        one_line_error(script(dump, os.path.join(tmp, "x.png"), env=env),
                       f"needs {package}: sudo apt-get install {package}", f"no {module}")

    subprocess.run(["rm", "-rf", tmp], check=False)
    print(f"plot_attention: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
