#!/usr/bin/env python3
"""Twin test: run.c against the PyTorch twin (model/model.py).

For every shipped checkpoint model/shakespeare-*.bin (or the paths given):
  1. logits: BOS followed by sentencepiece's ids for a line of Shakespeare is
     fed to `./run MODEL --tokens "<ids>" --logits FILE -n 0 -q`; FILE holds
     one little-endian float32 row of vocab_size logits per position. Every
     row must match the twin's logits within 1e-4 (max abs diff).
  2. encode: `./run MODEL --encode -p TEXT` must print the same ids as
     sentencepiece's encode (no BOS) for lines of the validation split and
     edge cases. The model's embedded tokenizer is also checked to reproduce
     sentencepiece with a reference llama2.c-style encoder in Python.

Prints one line per model and a final `twin: N passed, M failed`; exits
non-zero on any failure. Without torch it prints a SKIPPED line and exits 0.

    /usr/bin/python3 tests/test_twin.py [--run ./run] [MODEL.bin ...]
"""
import argparse
import glob
import os
import struct
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?\n"
EDGE_CASES = [
    "",
    " ",
    "   ",
    " leading space",
    "trailing space ",
    "multiple   spaces  inside",
    "\n",
    "two\nlines\n\nand a blank one",
    "\ttab\tseparated",
    "café",
    "naïve façade, Æsop's œuvre",
    "emoji \U0001F600 here",
    "\U0001F3AD",
    "numbers 1234 and 3.14159",
    "ALL CAPS: KING RICHARD III.",
]


def load_tokenizer_bin(buf):
    """llama2.c tokenizer.bin -> (pieces as bytes, scores)."""
    (max_len,) = struct.unpack_from("<i", buf, 0)
    off, pieces, scores = 4, [], []
    while off < len(buf):
        score, n = struct.unpack_from("<fi", buf, off)
        off += 8
        pieces.append(bytes(buf[off:off + n]))
        scores.append(score)
        off += n
    assert max(len(p) for p in pieces) <= max_len
    return pieces, scores


def llama2c_encode(text, pieces, scores):
    """Reference of run.c's encoder: dummy-prefix space, per-codepoint
    lookup with byte fallback (id = byte + 3), then repeatedly merge the
    adjacent pair whose concatenation is a piece with the highest score."""
    if text == "":
        return []
    lut = {}
    for i, p in enumerate(pieces):
        lut.setdefault(p, i)
    ids = [lut[b" "]]
    for ch in text:
        b = ch.encode("utf-8")
        if b in lut:
            ids.append(lut[b])
        else:
            ids.extend(x + 3 for x in b)
    while True:
        best, best_i, best_id = None, -1, -1
        for i in range(len(ids) - 1):
            j = lut.get(pieces[ids[i]] + pieces[ids[i + 1]])
            if j is not None and (best is None or scores[j] > best):
                best, best_i, best_id = scores[j], i, j
        if best_i < 0:
            return ids
        ids[best_i:best_i + 2] = [best_id]


def validation_lines(data_path, n=20):
    with open(data_path, encoding="utf-8") as f:
        text = f.read()
    val = text[int(len(text) * 0.9):]
    lines = [l for l in val.split("\n") if l.strip()]
    step = max(1, len(lines) // n)
    out = lines[::step][:n]
    # one multi-line chunk as run.c sees a longer prompt
    out.append(val[1000:1400])
    return out


def run_logits(run_bin, model_path, ids, vocab):
    import numpy as np
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.f32")
        cmd = [run_bin, model_path, "--tokens", " ".join(map(str, ids)), "--logits", out,
               "-n", "0", "-q"]
        r = subprocess.run(cmd, capture_output=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()[:500]}")
        a = np.fromfile(out, dtype="<f4")
    if a.size % vocab:
        raise RuntimeError(f"logits file has {a.size} floats, not a multiple of {vocab}")
    return a.reshape(-1, vocab)


def run_encode(run_bin, model_path, text):
    cmd = [run_bin, model_path, "--encode", "-p", text]
    r = subprocess.run(cmd, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"--encode exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()[:300]}")
    return [int(t) for t in r.stdout.decode().split()]


def check_model(path, run_bin, sp, lines):
    import numpy as np
    import torch
    from checkpoint import read_checkpoint

    problems = []
    model, hdr, tok_bytes = read_checkpoint(path)
    pieces, scores = load_tokenizer_bin(tok_bytes)
    if len(pieces) != hdr["vocab_size"]:
        problems.append(f"embedded tokenizer has {len(pieces)} pieces, vocab is {hdr['vocab_size']}")

    # 1. logits
    ids = [hdr["bos_id"]] + sp.encode(PROMPT)
    assert len(ids) >= 9
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0][0].numpy()
    maxdiff = float("nan")
    try:
        got = run_logits(run_bin, path, ids, hdr["vocab_size"])
        if got.shape != ref.shape:
            problems.append(f"logits shape {got.shape}, expected {ref.shape}")
        else:
            maxdiff = float(np.abs(got.astype(np.float64) - ref).max())
            if not maxdiff <= TOL:
                problems.append(f"logits max abs diff {maxdiff:.3g} > {TOL:g}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"logits: {e}")

    # 2. encode
    enc_ok = 0
    for text in lines + EDGE_CASES:
        want = sp.encode(text)
        ref_py = llama2c_encode(text, pieces, scores)
        if ref_py != want:
            problems.append(f"embedded tokenizer (Python reference) differs from sentencepiece "
                            f"on {text!r}")
        try:
            got = run_encode(run_bin, path, text)
        except Exception as e:  # noqa: BLE001
            problems.append(f"encode {text!r}: {e}")
            continue
        if got != want:
            problems.append(f"encode {text!r}: run.c {got[:12]}..., sentencepiece {want[:12]}...")
        else:
            enc_ok += 1
    n_enc = len(lines) + len(EDGE_CASES)
    summary = (f"{len(ids)} positions, logits max|diff| {maxdiff:.2e}; "
               f"encode {enc_ok}/{n_enc} cases")
    return problems, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=os.path.join(REPO, "run"), help="run.c binary")
    ap.add_argument("--tokenizer", default=os.path.join(REPO, "tokenizer", "shakespeare.model"))
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data",
                                                   "tinyshakespeare.txt"))
    ap.add_argument("models", nargs="*")
    args = ap.parse_args()

    try:
        import torch  # noqa: F401
        import numpy  # noqa: F401
    except ImportError:
        print("SKIPPED: twin test (python3-torch not installed)")
        return 0
    try:
        import sentencepiece as spm
    except ImportError:
        print("SKIPPED: twin test (python3-sentencepiece not installed)")
        return 0
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(REPO, "model"))

    models = args.models or sorted(glob.glob(os.path.join(REPO, "model", "shakespeare-*.bin")))
    if not models:
        print("SKIPPED: twin test (no model/shakespeare-*.bin checkpoints)")
        return 0
    if not os.access(args.run, os.X_OK):
        print(f"FAIL: {args.run} not found or not executable (build it with make)")
        print(f"twin: 0 passed, {len(models)} failed")
        return 1
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    if os.path.exists(args.data):
        lines = validation_lines(args.data)
    else:
        print(f"note: {args.data} not found; encode check uses built-in lines only")
        lines = ["First Citizen:", "Before we proceed any further, hear me speak."]

    passed = failed = 0
    for path in models:
        name = os.path.relpath(path, REPO)
        try:
            problems, summary = check_model(path, args.run, sp, lines)
        except Exception as e:  # noqa: BLE001
            problems, summary = [f"{type(e).__name__}: {e}"], "error"
        if problems:
            failed += 1
            print(f"FAIL {name}: {summary}")
            for p in problems[:10]:
                print(f"    {p}")
            if len(problems) > 10:
                print(f"    ... and {len(problems) - 10} more")
        else:
            passed += 1
            print(f"PASS {name}: {summary}")
    print(f"twin: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
