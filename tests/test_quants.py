#!/usr/bin/python3
"""ggml's quantized block types through ./run, against independent references.

  1. llama.cpp's own files (../shared/golden/arch/s-qbase.{Q4_0,Q4_K_M,Q6_K,Q8_0}.gguf, written
     by llama-quantize): a prompt computed as one block gives the logits of an fp32 pass over
     the dequantized weights (TYPE.dequant-logits.f32, numpy) to 1e-3; one position at a time,
     where the activations are quantized to int8 too, it lands within 1.25 times the distance
     between that pass and llama.cpp's own logits, with correlation at least 0.998.
  2. Every type, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K to Q6_K, on a random llama model whose
     matrices and embedding (and untied classifier) are all of that type, quantized by
     tests/ggml_quants.py (whose dequantizer is bit-identical to ggml's): the file's logits
     against those of an F32 file of the dequantized weights, as a block (to 1e-3) and one
     position at a time (close, same argmax at most positions), and the same bits on 1 and 2
     threads.
  3. A Q4_K_M-style mix: Q4_K with Q6_K for attn_v and the embedding, and Q5_0 for the rows of
     576 that are not a multiple of 256, as llama-quantize falls back.
  4. Bad blocks: a scale that is infinite (Q4_K's dmin), or a file cut inside a tensor, is
     refused in one line.

Prints one line per check and `quants: N passed, M failed`; exits non-zero on any failure. Without
numpy it prints a SKIPPED line and exits 0.

    /usr/bin/python3 tests/test_quants.py [--run ./run]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
GOLDEN = os.path.join(REPO, "..", "shared", "golden", "arch")
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
PROMPT = [1, 17, 250, 99, 480, 3, 77, 300, 12, 511, 256, 45, 128, 200, 64, 33, 7, 401, 150, 9]


def run_logits(run_bin, path, ids, extra=(), steps=0):
    """The logits ./run writes for ids (and `steps` greedy tokens after them), and its output."""
    import numpy as np
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.f32")
        cmd = [run_bin, path, "--tokens", " ".join(map(str, ids)), "--logits", out, "-n",
               str(steps), "-t", "0", "-q", "--emit-ids", *extra]
        r = subprocess.run(cmd, capture_output=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} exited {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()[:300]}")
        return np.fromfile(out, dtype="<f4"), [int(t) for t in r.stdout.split()]


def decode_logits(run_bin, path, vocab):
    """Greedy decoding one position at a time from token 1: (the logits, the sequence fed)."""
    logits, generated = run_logits(run_bin, path, [1], steps=24)
    fed = [1] + generated[:-1]
    return logits.reshape(-1, vocab)[:len(fed)], fed


def random_model(seed=7):
    """A random llama model whose rows are multiples of 256 except the feed-forward's 576."""
    import numpy as np
    import gguf_writer as gw
    c = gw.LlamaConfig(dim=256, hidden_dim=576, n_layers=2, n_heads=4, n_kv_heads=2,
                       vocab_size=512, seq_len=64)
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in gw._shapes(c).items():
        if name.startswith("rms"):
            weights[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            fan_in = shape[-1]
            weights[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    weights["token_embedding"] *= 8.0  # logits of a few units, so argmax is decisive
    weights["classifier"] *= 4.0
    return c, weights


def requantize(tensors, choose):
    """Two copies of a model's tensors: matrices in the type choose(tensor) gives (None: kept),
    and the same values, dequantized, as F32. Returns (quantized, dequantized)."""
    import numpy as np
    import gguf_writer as gw
    import ggml_quants as gq
    quantized, dequantized = [], []
    for t in tensors:
        type_name = choose(t) if len(t.ne) == 2 else None
        if type_name is None:
            quantized.append(t)
            dequantized.append(t)
            continue
        values = np.frombuffer(t.data, dtype="<f4").reshape(t.ne[1], t.ne[0])
        data = gq.quantize(values, type_name)
        back = gq.dequantize(data, type_name, values.size).astype("<f4")
        quantized.append(gw.Tensor(t.name, t.ne, type_name, data))
        dequantized.append(gw.Tensor(t.name, t.ne, "F32", back.tobytes()))
    return quantized, dequantized


def fast_build_has_avx512(run_bin):
    """Whether run_bin is the default build (not make plain's) on a host with the AVX-512
    features its fast kernels need."""
    if "plain" in os.path.basename(run_bin):
        return False
    flags = open("/proc/cpuinfo").read()
    return all(f in flags.split() for f in
               ("avx512f", "avx512bw", "avx512dq", "avx512_vnni", "f16c"))

def check_eight_row_copies(run_bin, path, name, check):
    """The eight-row copies of the Q4_0, Q4_K, Q5_K and Q6_K matrices that an AVX-512 build makes
    at load: --info's sizes of them against the file's own tensors (the embedding is copied only
    as the classifier, when tied and there is no output.weight). A record holds a block of eight
    rows: Q4_0's and Q6_K's the eight blocks' bytes, Q4_K's 1184 bytes and Q5_K's 1440."""
    import gguf_writer as gw
    info = subprocess.run([run_bin, path, "--info"], capture_output=True, text=True).stdout
    found = re.search(r"^eight rows .*at load:( Q4_0 (\d+) bytes)?,?( Q4_K (\d+) bytes)?"
                      r",?( Q5_K (\d+) bytes)?,?( Q6_K (\d+) bytes)?$", info, re.M)
    tensors = gw.read_gguf(path).tensors
    names = {t.name for t in tensors}
    classifier = "output.weight" if "output.weight" in names else "token_embd.weight"
    want = []
    for type_id, values, record_bytes in ((2, 32, 144), (12, 256, 1184), (13, 256, 1440),
                                          (14, 256, 1680)):
        want.append(sum(t.ne[1] // 8 * (t.ne[0] // values) * record_bytes
                        for t in tensors
                        if t.type_id == type_id and len(t.ne) == 2 and t.ne[1] >= 8
                        and (t.name.startswith("blk.") or t.name == classifier)))
    got = found and [int(found.group(i) or 0) for i in (2, 4, 6, 8)]
    if not fast_build_has_avx512(run_bin):
        check(found is None, f"{name}: no eight-row copy without AVX-512 or in the plain build")
    elif sum(want) > 0 or found is not None:
        check(got == want, f"{name}: --info gives the eight-row copies (Q4_0, Q4_K, Q5_K, Q6_K) "
              f"as {got} bytes, the file's matrices make {want}")



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=os.path.join(REPO, "run"))
    args = ap.parse_args()
    try:
        import numpy as np
    except ImportError as e:
        print(f"SKIPPED: quantization test ({e.name} not installed)")
        return 0
    import gguf_writer as gw
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        print(("ok      " if ok else "FAILED  ") + what)
        passed += bool(ok)
        failed += not ok

    # 1. llama.cpp's files.
    if os.path.isdir(GOLDEN):
        ids = [int(t) for t in open(os.path.join(GOLDEN, "ids.txt")).read().split()]
        for t in ["Q4_0", "Q4_K_M", "Q6_K", "Q8_0"]:
            path = os.path.join(GOLDEN, f"s-qbase.{t}.gguf")
            exact = np.fromfile(os.path.join(GOLDEN, f"s-qbase.{t}.dequant-logits.f32"), "<f4")
            theirs = np.fromfile(os.path.join(GOLDEN, f"s-qbase.{t}.logits.f32"), "<f4")
            vocab = exact.size // len(ids)
            exact, theirs = exact.reshape(-1, vocab), theirs.reshape(-1, vocab)
            block, _ = run_logits(args.run, path, ids)
            block = block.reshape(-1, vocab)
            gap = np.abs(theirs - exact).max()
            # Blocks meet int8 activations where the weights are scale * (q - offset), as
            # llama.cpp's do: within the bound of one of the two references.
            diff = min(np.abs(block - exact).max(), np.abs(block - theirs).max())
            corr = np.corrcoef(block.ravel(), exact.ravel())[0, 1]
            check(diff <= 1.25 * gap and corr >= 0.998,
                  f"{t}: a block of 24 positions within {diff:.3f} of a reference, the references "
                  f"{gap:.3f} apart; correlation {corr:.5f}")
            # One position at a time: each prefix fed as its own run's last position.
            steps = np.stack([run_logits(args.run, path, ids[:n + 1], ["--threads", "1"])[0]
                              .reshape(-1, vocab)[-1] for n in range(0, len(ids), 4)])
            rows = exact[0::4]
            step_diff = min(np.abs(steps - rows).max(), np.abs(steps - theirs[0::4]).max())
            corr = np.corrcoef(steps.ravel(), rows.ravel())[0, 1]
            check(step_diff <= 1.25 * gap and corr >= 0.998,
                  f"{t}: one position at a time (int8 activations) within {step_diff:.3f} of a "
                  f"reference, the references {gap:.3f} apart; correlation {corr:.5f}")
        for name in ("Q4_0", "Q4_K_M"):
            check_eight_row_copies(args.run, os.path.join(GOLDEN, f"s-qbase.{name}.gguf"), name,
                                   check)
    else:
        print("SKIPPED: llama.cpp's quantized files (../shared absent)")

    # 2. and 3. Every type, and a mix.
    try:
        import ggml_quants  # noqa: F401
    except ImportError:
        print("SKIPPED: per-type files (tests/ggml_quants.py missing)")
        ggml_quants = None
    c, weights = random_model()
    kvs, tensors = gw.llama_gguf(weights, c, None, "F32", output="untied")
    mixes = {t: (lambda tensor, t=t: t if tensor.ne[0] % 256 == 0 or t in
                 ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0") else "Q5_1") for t in TYPES}

    def q4_k_m(tensor):
        if tensor.ne[0] % 256 != 0:
            return "Q5_0"  # llama-quantize's fall-back for rows of 576
        return "Q6_K" if tensor.name in ("token_embd.weight", "blk.0.attn_v.weight") else "Q4_K"
    mixes["Q4_K_M-like"] = q4_k_m
    with tempfile.TemporaryDirectory() as tmp:
        for name, choose in (mixes.items() if ggml_quants is not None else []):
            quantized, dequantized = requantize(tensors, choose)
            qpath, fpath = os.path.join(tmp, f"{name}.gguf"), os.path.join(tmp, f"{name}-f32.gguf")
            gw.write_gguf(qpath, kvs, quantized)
            gw.write_gguf(fpath, kvs, dequantized)
            V = c.vocab_size
            got = run_logits(args.run, qpath, PROMPT)[0].reshape(-1, V)
            want = run_logits(args.run, fpath, PROMPT)[0].reshape(-1, V)
            diff = np.abs(got - want).max() / want.std()
            corr = np.corrcoef(got.ravel(), want.ravel())[0, 1]
            # Q8_0 meets int8 activations in the plain build's blocks too; the fast build's
            # blocks, wherever weights are scale * (q - offset). The others are exact.
            int8 = name in ("Q8_0", "Q4_0", "Q5_0", "Q3_K", "Q6_K", "Q4_K_M-like")
            check(diff < 0.25 and corr > 0.998 if int8 else diff < 1e-4,
                  f"{name}: a block of {len(PROMPT)} positions against the F32 file of its "
                  f"dequantized weights: max |diff| {diff:.2e} of the logits' std, correlation "
                  f"{corr:.5f}")
            steps, fed = decode_logits(args.run, qpath, V)
            exact = run_logits(args.run, fpath, fed)[0].reshape(-1, V)
            diff = np.abs(steps - exact).max() / exact.std()
            same = (steps.argmax(1) == exact.argmax(1)).mean()
            corr = np.corrcoef(steps.ravel(), exact.ravel())[0, 1]
            check(diff < 0.25 and corr > 0.998 and same >= 0.8,
                  f"{name}: {len(fed)} positions one at a time: max |diff| {diff:.3f} of the "
                  f"logits' std, correlation {corr:.5f}, same argmax at {same:.0%}")
            check_eight_row_copies(args.run, qpath, name, check)
            one = run_logits(args.run, qpath, PROMPT, ["--threads", "1"], steps=8)[0]
            two = run_logits(args.run, qpath, PROMPT, ["--threads", "2"], steps=8)[0]
            check(np.array_equal(one, two), f"{name}: the same bits on 1 and 2 threads")

        # 4. Bad blocks.
        if ggml_quants is not None:
            # Each type's fp16 numbers, as ggml-common.h lays its blocks out: (block bytes, the
            # byte offsets of d and of dmin or m).
            scales = {"Q4_0": (18, [0]), "Q4_1": (20, [0, 2]), "Q5_0": (22, [0]),
                      "Q5_1": (24, [0, 2]), "Q8_0": (34, [0]), "Q2_K": (84, [80, 82]),
                      "Q3_K": (110, [108]), "Q4_K": (144, [0, 2]), "Q5_K": (176, [0, 2]),
                      "Q6_K": (210, [208])}
            for type_name, (size, offsets) in scales.items():
                quantized, _ = requantize(tensors, lambda t, q=type_name: q
                                          if t.name == "blk.1.ffn_up.weight" else None)
                for offset, bits in zip(offsets, (b"\x00\x7c", b"\x01\xfe")):  # +inf, a NaN
                    bad = []
                    for t in quantized:
                        data = bytearray(t.data)
                        if t.name == "blk.1.ffn_up.weight":
                            data[size * 3 + offset:size * 3 + offset + 2] = bits
                        bad.append(gw.Tensor(t.name, t.ne, t.type_name, bytes(data)))
                    path = os.path.join(tmp, "bad-scale.gguf")
                    gw.write_gguf(path, kvs, bad)
                    r = subprocess.run([args.run, path, "--tokens", "1", "-n", "1"],
                                       capture_output=True)
                    err = r.stderr.decode()
                    check(r.returncode == 1 and err.count("\n") == 1 and
                          f"tensor 'blk.1.ffn_up.weight', block 3 ({type_name}) has a scale that "
                          "is not a finite number" in err,
                          f"{type_name}: a scale that is not finite at byte {offset} of a block "
                          f"is refused in one line: {err.strip()}")
            quantized, _ = requantize(tensors, lambda t: "Q4_K" if t.ne[0] % 256 == 0 else "Q5_0")
            data = gw.gguf_bytes(kvs, quantized)
            path = os.path.join(tmp, "cut.gguf")
            with open(path, "wb") as f:
                f.write(data[:-1000])
            r = subprocess.run([args.run, path, "--tokens", "1", "-n", "1"], capture_output=True)
            err = r.stderr.decode()
            check(r.returncode == 1 and "truncated?" in err and err.count("\n") == 1,
                  f"a file cut inside a quantized tensor is refused: {err.strip()}")
    print(f"quants: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
