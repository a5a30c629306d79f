#!/usr/bin/python3
"""The MHA -> GQA/MQA converter (model/convert.py) against a naive mean-pool.

A random MHA model is written in the project's format, converted to every divisor of n_heads,
and read back: wk and wv must equal the mean of each group's heads computed here with plain
loops over heads and rows, every other tensor must be unchanged, and ./run must load the result
and report the right attention kind. A converted model whose heads are identical within each
group must also compute exactly what the MHA model computes (nothing lost when nothing differs).
model/quantize.py and convert.py on hostile input (tests/tool_checks.py): a FIFO, a directory, a
missing, empty, truncated or corrupt checkpoint, a bad header number or weight, bad flags, an
output that is the input (by name, symlink or hard link), a missing directory, a full disk, a
write cut short and Ctrl-C: one line on stderr and exit 1 (data) or 2 (usage) each, no
traceback, the input intact, and no partial output left behind.
Prints `convert: N passed, M failed`; exits non-zero on any failure.
"""
import os
import struct
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "model"))
sys.path.insert(0, os.path.join(REPO, "tests"))

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"SKIPPED: converter test ({e.name} not installed)")
    sys.exit(0)

from checkpoint import read_checkpoint, write_checkpoint  # noqa: E402
from model import Config, Transformer  # noqa: E402
from tool_checks import (describe, fifo, full_disk, interrupted_cleanly, leftovers,  # noqa: E402
                         one_line, tool)

CONVERT = os.path.join(REPO, "model", "convert.py")
QUANTIZE = os.path.join(REPO, "model", "quantize.py")

RUN = os.environ.get("RUN_BINARY", os.path.join(REPO, "run"))


def naive_mean_pool(weight, n_heads, n_kv_heads, head_dim):
    """Group g's row r is the average of row r of each head in the group, summed one by one."""
    w = weight.numpy().astype(np.float64)
    group = n_heads // n_kv_heads
    out = np.zeros((n_kv_heads * head_dim, w.shape[1]))
    for g in range(n_kv_heads):
        for r in range(head_dim):
            total = np.zeros(w.shape[1])
            for member in range(group):
                head = g * group + member
                total += w[head * head_dim + r]
            out[g * head_dim + r] = total / group
    return out


def corrupt(data, offset, fmt, value):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def hostile(d, src, check):
    """quantize.py and convert.py on bad input: one line, the right status, nothing left over."""
    good = open(src, "rb").read()
    weights_offset, = struct.unpack_from("<Q", good, 80)
    files = {"empty.bin": b"", "header-cut.bin": good[:100], "weights-cut.bin": good[:-100],
             "version.bin": corrupt(good, 4, "<I", 2),
             "dim0.bin": corrupt(good, 8, "<I", 0), "layers.bin": corrupt(good, 16, "<I", 100000),
             "theta.bin": corrupt(good, 40, "<f", float("nan")),
             "reserved.bin": corrupt(good, 200, "<B", 7),
             "nan.bin": corrupt(good, weights_offset + 4 * 1000, "<f", float("nan"))}
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    path = {name: os.path.join(d, name) for name in files}
    pipe = fifo(d)
    full = full_disk(d)
    out = os.path.join(d, "hostile-out.bin")
    # (input, needle, tools): convert reads the header with the same code, so a few suffice for it
    inputs = [
        (os.path.join(d, "absent.bin"), "cannot open: No such file or directory", "qc"),
        (d, "is a directory, expected a file", "qc"),
        (pipe, "not a regular file", "qc"),
        (path["empty.bin"], "file is empty", "q"),
        (path["header-cut.bin"], "file is 100 bytes, shorter than the 256-byte header", "qc"),
        (path["weights-cut.bin"], f"file is {len(good) - 100} bytes, the header needs "
         f"{len(good)} (truncated?)", "qc"),
        (path["version.bin"], "format version is 2, this program reads version 1", "q"),
        (path["dim0.bin"], "dim is 0, expected 1..65536", "qc"),
        (path["layers.bin"], "n_layers is 100000, expected 1..1024", "q"),
        (path["theta.bin"], "rope_theta is nan, expected a finite number above 1", "q"),
        (path["reserved.bin"], "header byte 200 is 0x07; bytes 96..255 are reserved", "q"),
        (path["nan.bin"], "token_embedding, value 1000 is nan; every weight must be a finite "
         "number", "qc"),
    ]
    tools = {"q": ("quantize", QUANTIZE, []), "c": ("convert", CONVERT, ["--n-kv-heads", "2"])}
    for letter, (name, script, extra) in tools.items():
        for source, needle, which in inputs:
            if letter not in which:
                continue
            r = tool(script, source, out, *extra, timeout=15)
            check(one_line(r, name, 1, needle) and not os.path.exists(out),
                  f"{name}: {os.path.basename(source)} refused: {describe(r)}")
            if os.path.exists(out):
                os.remove(out)
        for args, status, needle in (
                ([src, out, *extra, "--bogus"], 2, "unrecognized arguments: --bogus"),
                ([src], 2, "the following arguments are required"),
                ([src, out, "--group", "0"] if letter == "q" else [src, out, "--n-kv-heads", "0"],
                 2, "expects a positive integer, got 0")):
            r = tool(script, *args)
            check(one_line(r, name, status, needle), f"{name}: usage {args[1:]} refused in one "
                  f"line: {describe(r)}")

        # An output that names the input, even with --force: refused before anything is written.
        link = os.path.join(d, "link.bin")
        hard = os.path.join(d, "hard.bin")
        for target in (link, hard):
            if os.path.lexists(target):
                os.remove(target)
        os.symlink(src, link)
        os.link(src, hard)
        for target, how in ((src, "by name"), (link, "through a symlink"),
                            (hard, "through a hard link")):
            r = tool(script, src, target, *extra, "--force")
            intact = open(src, "rb").read() == good
            check(one_line(r, name, 2, f"{target} is the input; write somewhere else") and intact,
                  f"{name}: an output that is the input {how} is refused, the input intact: "
                  f"{describe(r)}")
            if not intact:  # so that the checks below still test what they say
                with open(src, "wb") as f:
                    f.write(good)
        os.remove(link)
        os.remove(hard)
        r = tool(script, src, src, *extra)
        check(one_line(r, name, 2, "is the input"), f"{name}: the input as output without --force "
              f"is refused as the input: {describe(r)}")

        # Outputs that cannot be written: a missing directory, a full disk, a file size limit.
        before = os.listdir(d)
        missing = os.path.join(d, "no-such-dir", "out.bin")
        r = tool(script, src, missing, *extra)
        check(one_line(r, name, 1, f"cannot create {missing}: No such file or directory"),
              f"{name}: an output in a missing directory: {describe(r)}")
        r = tool(script, src, os.path.join(src, "out.bin"), *extra)
        check(one_line(r, name, 1, "Not a directory"), f"{name}: an output under a file: "
              f"{describe(r)}")
        if full:
            r = tool(script, src, full, *extra, "--force")
            check(one_line(r, name, 1, f"cannot write {full}: No space left on device"),
                  f"{name}: output into a full disk: {describe(r)}")
        if full and letter == "q":  # the summary line: convert's and import's print alike
            r = tool(script, src, out, *extra, stdout=full)
            check(one_line(r, name, 1, "cannot write output: No space left on device"),
                  f"{name}: its summary into a full disk (> /dev/full): {describe(r)}")
            if os.path.exists(out):
                os.remove(out)
        with open(out, "wb") as f:
            f.write(b"the old output")
        r = tool(script, src, out, *extra, "--force", fsize=64 * 1024)
        left = [x for x in leftovers(d, before) if x != os.path.basename(out)]
        check(one_line(r, name, 1, f"cannot write {out}: File too large") and
              open(out, "rb").read() == b"the old output" and left == [],
              f"{name}: a write cut short keeps the old output and leaves no temporary file: "
              f"{describe(r)} {left}")
        r = tool(script, src, out, *extra)
        check(one_line(r, name, 2, f"{out} exists; pass --force to overwrite it"),
              f"{name}: an existing output without --force: {describe(r)}")
        os.remove(out)

        # Ctrl-C while importing its libraries, and once the output is complete but not in place.
        module = "numpy" if letter == "q" else "torch"
        r = tool(script, src, out, *extra, interrupt=f"import:{module}")
        check(interrupted_cleanly(r) and leftovers(d, before) == [],
              f"{name}: Ctrl-C while importing {module}: exit 130, nothing printed or left "
              f"({describe(r)} {leftovers(d, before)})")
        r = tool(script, src, out, *extra, interrupt=f"publish:{out}")
        check(interrupted_cleanly(r) and leftovers(d, before) == [],
              f"{name}: Ctrl-C before the output is in place: exit 130, no output, no temporary "
              f"file ({describe(r)} {leftovers(d, before)})")


def main():
    torch.manual_seed(7)
    cfg = Config(dim=64, hidden_dim=96, n_layers=2, n_heads=8, n_kv_heads=8, head_dim=8,
                 vocab_size=300, seq_len=32, shared_classifier=False)
    mha = Transformer(cfg).eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.uniform_(-0.3, 0.3)
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        print(("ok      " if ok else "FAILED  ") + what)
        passed += ok
        failed += not ok

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "mha.bin")
        write_checkpoint(mha, src)
        for kv in (4, 2, 1):
            out = os.path.join(d, f"kv{kv}.bin")
            r = subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"), src,
                                out, "--n-kv-heads", str(kv)], capture_output=True, text=True)
            check(r.returncode == 0, f"convert to n_kv_heads {kv}: exit {r.returncode} "
                  f"{r.stderr.strip()}")
            if r.returncode:
                continue
            got, header, _ = read_checkpoint(out)
            check(header["n_kv_heads"] == kv, f"n_kv_heads {kv} in the header")
            worst = 0.0
            for layer_mha, layer_got in zip(mha.layers, got.layers):
                for name in ("wk", "wv"):
                    want = naive_mean_pool(getattr(layer_mha.attention, name).weight.detach(),
                                           cfg.n_heads, kv, cfg.head_dim)
                    have = getattr(layer_got.attention, name).weight.detach().numpy()
                    worst = max(worst, float(np.abs(have - want).max()))
            check(worst <= 1e-6, f"kv {kv}: wk and wv equal the naive group means "
                  f"(max diff {worst:.2e})")
            same = all(torch.equal(a, b) for (na, a), (nb, b) in
                       zip(mha.state_dict().items(), got.state_dict().items())
                       if not (na.endswith("wk.weight") or na.endswith("wv.weight")))
            check(same, f"kv {kv}: every other tensor unchanged")
            if os.path.exists(RUN):
                info = subprocess.run([RUN, out, "--info"], capture_output=True, text=True)
                kind = "MQA" if kv == 1 else "GQA"
                check(info.returncode == 0 and f"attention    {kind}" in info.stdout,
                      f"kv {kv}: ./run --info reports {kind}")

        # Heads identical within their groups: mean-pooling loses nothing, logits agree.
        twin = Transformer(cfg).eval()
        twin.load_state_dict(mha.state_dict())
        with torch.no_grad():
            for layer in twin.layers:
                for name in ("wk", "wv"):
                    w = getattr(layer.attention, name).weight
                    heads = w.view(cfg.n_heads, cfg.head_dim, cfg.dim)
                    heads.copy_(heads[::2].repeat_interleave(2, dim=0))
        src2 = os.path.join(d, "dup.bin")
        write_checkpoint(twin, src2)
        out2 = os.path.join(d, "dup-kv4.bin")
        subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"), src2, out2,
                        "--n-kv-heads", "4"], check=True, capture_output=True)
        gqa, _, _ = read_checkpoint(out2)
        tokens = torch.tensor([[1, 5, 77, 200, 3, 9]])
        with torch.no_grad():
            diff = float((twin(tokens)[0] - gqa(tokens)[0]).abs().max())
        check(diff <= 1e-5, f"duplicated heads: converted logits equal MHA ones "
              f"(max diff {diff:.2e})")

        # Refusals: an input that is not MHA, a count that does not divide, an existing output.
        r = subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"),
                            os.path.join(d, "kv2.bin"), os.path.join(d, "x.bin"),
                            "--n-kv-heads", "1"], capture_output=True, text=True)
        check(r.returncode != 0 and "MHA" in r.stderr, "refuses a GQA input")
        r = subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"), src,
                            os.path.join(d, "y.bin"), "--n-kv-heads", "3"],
                           capture_output=True, text=True)
        check(r.returncode != 0 and "divide" in r.stderr, "refuses n_kv_heads 3 of 8 heads")
        r = subprocess.run([sys.executable, os.path.join(REPO, "model", "convert.py"), src,
                            os.path.join(d, "kv2.bin"), "--n-kv-heads", "2"],
                           capture_output=True, text=True)
        check(r.returncode != 0 and "exists" in r.stderr, "refuses to overwrite without --force")

        hostile(d, src, check)

    print(f"convert: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
