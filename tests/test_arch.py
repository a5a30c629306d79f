#!/usr/bin/python3
"""The GGUF architectures llama (Llama 2 and 3), qwen2, gemma, gemma2 and gpt2 through ./run,
held to llama.cpp's logits and to tests/arch_reference.py (an independent numpy forward pass).

  a. (../shared) arch_reference against llama.cpp's logits of the golden files of
     ../shared/golden/arch (s-gpt2, s-gemma, s-gemma2, s-qwen2, s-llama3: within 2e-2 and the
     same argmax at every position), against the numpy pass over s-qbase.Q8_0's dequantized
     weights (and the other quantized files' when tests/ggml_quants.py is there), and its
     greedy continuation of s-gpt2-vocab against llama.cpp's.
  b. (../shared) ./run on the same files: the same tolerance against llama.cpp's logits; the
     quantized s-qbase files within 1.0 of llama.cpp's or of the dequantized pass (they differ
     by up to 0.86 from each other) with the same argmax at most positions.
  c. Random-weight files of every architecture written by gguf_writer.arch_gguf: MHA, GQA and
     MQA, head_dim other than dim / heads, Llama 3's rope_freqs, linear RoPE scaling, untied
     classifiers, F16 and Q8_0 matrices, gemma2's soft caps and a sliding window shorter than
     the prompt, 46-layer gemma2's query scale, prompts longer than one 128-position block, and
     greedy generation through the KV cache (a sliding window's ring included). ./run's logits
     of every processed position against arch_reference on the same ids, within a tolerance
     relative to the logits' standard deviation (1e-3 for F32, 3e-3 for F16, 0.25 for Q8_0
     and the other block types, see TOLERANCE, whose files are tested when
     tests/ggml_quants.py is there to write them);
     the generated ids are the argmax of run's own logits and a top choice of the reference;
     ids and logits bit-identical at --threads 1, the default and --threads 3.
  d. (../shared) s-gpt2-vocab.gguf (GPT-2's real vocabulary): `--encode` of the prompt gives
     llama.cpp's ids, and 16 greedy steps from the text prompt give llama.cpp's ids.
  e. --kv-cache f16 and q8 against f32 on one file of each architecture (120 positions):
     within 0.01 and 0.2 standard deviations of the logits, times sqrt(layers / 2), and the
     same argmax at 9 positions in 10.

Prints one line per check and `arch: N passed, M failed`; exits non-zero on any failure.
Without numpy it prints a SKIPPED line and exits 0; without ../shared, parts a, b and d are one
SKIPPED line.

    /usr/bin/python3 tests/test_arch.py [--run ./run]
"""
import argparse
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
GOLDEN = os.path.join(REPO, "..", "shared", "golden", "arch")
GOLDEN_FILES = ("s-gpt2", "s-gemma", "s-gemma2", "s-qwen2", "s-llama3")
QUANTIZED = ("Q8_0", "Q4_0", "Q4_K_M", "Q6_K")
GOLDEN_TOLERANCE = 2e-2
GPT2_PROMPT = "Fear is the mind-killer. Fear is"


class Suite:
    """Counts checks and prints one line for each."""

    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, what):
        print(("ok      " if ok else "FAILED  ") + what)
        self.passed += bool(ok)
        self.failed += not ok

    def guarded(self, what, fn):
        """Run fn() -> (ok, detail); an exception (a refused file, a crash) fails the check with
        its message."""
        try:
            ok, detail = fn()
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        self.check(ok, f"{what}: {detail}")
        return ok


def run_cmd(run_bin, args, timeout=120):
    """./run with args; RuntimeError with the first stderr line when it fails."""
    r = subprocess.run([run_bin] + [str(a) for a in args], capture_output=True, timeout=timeout)
    if r.returncode != 0:
        lines = r.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
        raise RuntimeError(f"run exited {r.returncode}: {lines[0][:300]}")
    return r


def run_logits(run_bin, model, ids, vocab, tmp, steps=0, extra=()):
    """(stdout bytes, logits bytes, logits rows) of `./run MODEL --tokens IDS --logits F -n
    steps`, greedy, generated ids printed one per line."""
    import numpy as np
    out = os.path.join(tmp, "logits.f32")
    if os.path.exists(out):
        os.remove(out)
    r = run_cmd(run_bin, [model, "--tokens", " ".join(map(str, ids)), "--logits", out,
                          "-n", steps, "-t", "0", "--emit-ids", "-q", *extra])
    raw = open(out, "rb").read()
    a = np.frombuffer(raw, dtype="<f4")
    if a.size % vocab:
        raise RuntimeError(f"the logits file holds {a.size} floats, not rows of {vocab}")
    return r.stdout, raw, a.reshape(-1, vocab).astype(np.float64)


def compare(got, want, tolerance, what="", tie=None, min_same=None):
    """(ok, detail): max |got - want| within tolerance; at every position run's choice is a top
    choice of want, its logit within `tie` (2 * tolerance unless given) of the maximum, so
    that a near-tie decided by rounding is not a failure; and, when min_same is given, the
    very same argmax at min_same positions at least."""
    import numpy as np
    if got.shape != want.shape:
        return False, f"{got.shape[0]} rows of {got.shape[1]}, expected {want.shape}"
    tie = 2 * tolerance if tie is None else tie
    diff = float(np.abs(got - want).max())
    pick = got.argmax(axis=1)
    same = int((pick == want.argmax(axis=1)).sum())
    top = bool(np.all(want[np.arange(len(want)), pick] >= want.max(axis=1) - tie))
    ok = diff <= tolerance and top and (min_same is None or same >= min_same)
    return ok, (f"{what}max |diff| {diff:.3g} (at most {tolerance:.3g}), the same argmax at "
                f"{same} of {len(want)}" + ("" if min_same is None else f" (at least {min_same})")
                + ("" if top else ", and a choice that is not a top one"))


def golden_logits(name):
    import numpy as np
    return np.fromfile(os.path.join(GOLDEN, name), dtype="<f4").astype(np.float64)


def golden_ids():
    return [int(t) for t in open(os.path.join(GOLDEN, "ids.txt")).read().split()]


def gpt2_vocab_ids():
    """(prompt ids, generated ids) of s-gpt2-vocab.greedy-ids.txt: lines 'prompt ...' and
    'gen ...'."""
    lines = dict(line.split(None, 1) for line in
                 open(os.path.join(GOLDEN, "s-gpt2-vocab.greedy-ids.txt")).read().splitlines()
                 if line.strip())
    return [int(t) for t in lines["prompt"].split()], [int(t) for t in lines["gen"].split()]


def has_ggml_quants():
    try:
        import ggml_quants  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------
# a, b, d: the golden files

def part_golden(s, run_bin):
    import numpy as np
    import arch_reference as ar
    ids = golden_ids()
    models = {}
    for name in GOLDEN_FILES:
        def ref(name=name):
            models[name] = ar.load(os.path.join(GOLDEN, name + ".gguf"))
            want = golden_logits(name + ".logits.f32").reshape(len(ids), -1)
            return compare(ar.logits(models[name], ids), want, GOLDEN_TOLERANCE)
        s.guarded(f"a. reference on {name}.gguf against llama.cpp's logits", ref)
    quant_types = [t for t in QUANTIZED if t == "Q8_0" or has_ggml_quants()]
    if len(quant_types) < len(QUANTIZED):
        print("SKIPPED  a. reference on s-qbase Q4_0, Q4_K_M and Q6_K: tests/ggml_quants.py "
              "is absent")
    for t in quant_types:
        def ref_q(t=t):
            m = ar.load(os.path.join(GOLDEN, f"s-qbase.{t}.gguf"))
            want = golden_logits(f"s-qbase.{t}.dequant-logits.f32").reshape(len(ids), -1)
            return compare(ar.logits(m, ids), want, 1e-3)
        s.guarded(f"a. reference on s-qbase.{t}.gguf against the dequantized numpy pass", ref_q)

    def ref_greedy():
        prompt, gen = gpt2_vocab_ids()
        m = ar.load(os.path.join(GOLDEN, "s-gpt2-vocab.gguf"))
        mine = ar.greedy(m, prompt, len(gen))
        return mine == gen, f"{len(gen)} greedy ids" + ("" if mine == gen else f": {mine}")
    s.guarded("a. reference's greedy continuation of s-gpt2-vocab.gguf equals llama.cpp's",
              ref_greedy)

    with tempfile.TemporaryDirectory() as tmp:
        for name in GOLDEN_FILES:
            def run_golden(name=name):
                want = golden_logits(name + ".logits.f32").reshape(len(ids), -1)
                _, _, got = run_logits(run_bin, os.path.join(GOLDEN, name + ".gguf"), ids,
                                       want.shape[1], tmp)
                return compare(got, want, GOLDEN_TOLERANCE)
            s.guarded(f"b. ./run on {name}.gguf against llama.cpp's logits", run_golden)
        for t in QUANTIZED:
            def run_quant(t=t):
                cpp = golden_logits(f"s-qbase.{t}.logits.f32").reshape(len(ids), -1)
                deq = golden_logits(f"s-qbase.{t}.dequant-logits.f32").reshape(len(ids), -1)
                _, _, got = run_logits(run_bin, os.path.join(GOLDEN, f"s-qbase.{t}.gguf"), ids,
                                       cpp.shape[1], tmp)
                d_cpp = float(np.abs(got - cpp).max())
                d_deq = float(np.abs(got - deq).max())
                same = int((got.argmax(1) == cpp.argmax(1)).sum())
                return (min(d_cpp, d_deq) <= 1.0 and same >= len(ids) - 3,
                        f"max |diff| {d_cpp:.3g} from llama.cpp's, {d_deq:.3g} from the "
                        f"dequantized pass (one at most 1.0), the same argmax as llama.cpp at "
                        f"{same} of {len(ids)}")
            s.guarded(f"b. ./run on s-qbase.{t}.gguf", run_quant)

    def encode():
        prompt, _ = gpt2_vocab_ids()
        r = run_cmd(run_bin, [os.path.join(GOLDEN, "s-gpt2-vocab.gguf"), "--encode", "-p",
                              GPT2_PROMPT])
        got = [int(t) for t in r.stdout.split()]
        return got == prompt, f"{got}" + ("" if got == prompt else f", expected {prompt}")
    s.guarded(f"d. s-gpt2-vocab.gguf --encode {GPT2_PROMPT!r} gives llama.cpp's ids", encode)

    def generate():
        _, gen = gpt2_vocab_ids()
        r = run_cmd(run_bin, [os.path.join(GOLDEN, "s-gpt2-vocab.gguf"), "-p", GPT2_PROMPT,
                              "-n", len(gen), "-t", "0", "--emit-ids", "-q"])
        got = [int(t) for t in r.stdout.split()]
        return got == gen, f"{len(got)} ids" + ("" if got == gen else f" {got}, expected {gen}")
    s.guarded("d. s-gpt2-vocab.gguf: 16 greedy ids from the text prompt equal llama.cpp's",
              generate)


# ----------------------------------------------------------------------------
# c, e: generated files

def variants():
    """(label, arch, arch_gguf arguments, prompt length, steps generated)."""
    import numpy as np
    freqs = np.random.default_rng(7).uniform(1.0, 8.0, 16).astype(np.float32)
    v = [
        ("llama GQA 4/2", "llama", {}, 24, 8),
        ("llama MHA 4/4", "llama", dict(n_kv_heads=4), 24, 8),
        ("llama MQA 4/1", "llama", dict(n_kv_heads=1), 24, 8),
        ("llama 3: head_dim 32 (not 64/4), rope_freqs, base 500000", "llama",
         dict(head_dim=32, rope_freqs=freqs, rope_base=500000.0), 24, 8),
        ("llama linear RoPE scaling, factor 4", "llama", dict(rope_scale=4.0), 24, 8),
        ("llama untied classifier", "llama", dict(tied=False), 24, 8),
        ("llama F16", "llama", dict(type_name="F16"), 24, 8),
        ("llama Q8_0", "llama", dict(type_name="Q8_0"), 24, 8),
        ("llama 200-position prompt", "llama", {}, 200, 8),
        ("qwen2 GQA 8/2", "qwen2", {}, 24, 8),
        ("qwen2 MHA 8/8", "qwen2", dict(n_kv_heads=8), 24, 8),
        ("qwen2 MQA 8/1", "qwen2", dict(n_kv_heads=1), 24, 8),
        ("qwen2 untied classifier", "qwen2", dict(tied=False), 24, 8),
        ("qwen2 linear RoPE scaling, factor 2", "qwen2", dict(rope_scale=2.0), 24, 8),
        ("qwen2 F16", "qwen2", dict(type_name="F16"), 24, 8),
        ("qwen2 Q8_0", "qwen2", dict(type_name="Q8_0"), 24, 8),
        ("qwen2 200-position prompt", "qwen2", {}, 200, 8),
        ("gemma MQA 4/1, head_dim 32 (not 64/4)", "gemma", {}, 24, 8),
        ("gemma MHA 4/4, head_dim 16", "gemma", dict(n_kv_heads=4, head_dim=16), 24, 8),
        ("gemma GQA 4/2, head_dim 32", "gemma", dict(n_kv_heads=2, head_dim=32), 24, 8),
        ("gemma F16", "gemma", dict(type_name="F16"), 24, 8),
        ("gemma Q8_0", "gemma", dict(type_name="Q8_0"), 24, 8),
        ("gemma 200-position prompt", "gemma", {}, 200, 8),
        ("gemma2 GQA 4/2, 26 layers, window 6", "gemma2", {}, 24, 8),
        ("gemma2 MHA 4/4", "gemma2", dict(n_kv_heads=4), 24, 8),
        ("gemma2 MQA 4/1", "gemma2", dict(n_kv_heads=1), 24, 8),
        ("gemma2 soft caps 5 and 3 (active), window 3", "gemma2",
         dict(attn_softcap=5.0, final_softcap=3.0, window=3), 24, 8),
        ("gemma2 46 layers: q scaled by 1/sqrt(dim/heads 8), not head_dim 16", "gemma2",
         dict(layers=46), 24, 8),
        ("gemma2 F16", "gemma2", dict(type_name="F16"), 24, 8),
        ("gemma2 Q8_0, 4 layers", "gemma2", dict(type_name="Q8_0", layers=4), 24, 8),
        ("gemma2 150-position prompt, window 20, 70 steps through the window's ring",
         "gemma2", dict(window=20), 150, 70),
        ("gpt2 MHA 4/4", "gpt2", {}, 24, 8),
        ("gpt2 untied classifier", "gpt2", dict(tied=False), 24, 8),
        ("gpt2 F16", "gpt2", dict(type_name="F16"), 24, 8),
        ("gpt2 Q8_0", "gpt2", dict(type_name="Q8_0"), 24, 8),
        ("gpt2 200-position prompt (context 256)", "gpt2", dict(context=256), 200, 8),
    ]
    if has_ggml_quants():
        wide = dict(dim=256, heads=4, ffn=512)  # rows of whole 256-value k-quant blocks
        for arch, type_name in (("llama", "Q4_0"), ("qwen2", "Q4_1"), ("gemma", "Q5_0"),
                                ("gemma2", "Q5_1"), ("gpt2", "Q2_K"), ("llama", "Q3_K"),
                                ("qwen2", "Q4_K"), ("gemma", "Q5_K"), ("gemma2", "Q6_K")):
            kw = dict(wide, type_name=type_name, **({"layers": 4} if arch == "gemma2" else {}))
            v.append((f"{arch} {type_name}, dim 256" + (", 4 layers" if arch == "gemma2" else ""),
                      arch, kw, 24, 8))
    return v


STOP_IDS = (1, 2)  # BOS and EOS of arch_gguf's vocabulary: generation may end there
# Tolerances, times the logits' standard deviation. run.c computes in fp32 and widens F16
# exactly (measured: 2e-5 on logits of standard deviation 4, F32 and F16 alike). With Q8_0
# matrices it rounds the activations to int8 in groups of 32 (the fast build when it decodes
# one position, the plain build always; llama.cpp does so too: its Q8_0 logits of s-qbase lie
# 0.1 standard deviations from the fp32 pass), which moves the logits of these models by up to
# 0.2 standard deviations (the worst of 10 seeds, both builds: gemma2 with 4 layers), times
# sqrt(layers / 2) for deeper ones. Random weights amplify that rounding layer after layer: over
# gemma2's 26 layers the plain build lands 0.4 to 1.9 standard deviations from the exact logits
# (and within 0.06 of a numpy pass that rounds the same activations), so the quantized gemma2
# files have 4 layers (run.c reads any number; llama.cpp only 26, 42 and 46). The other block
# types' weights are read exactly by both sides; only the activations' rounding can differ, so
# they get Q8_0's tolerance.
TOLERANCE = {"F32": 1e-3, "F16": 3e-3, "Q8_0": 0.25}


def part_generated(s, run_bin):
    import numpy as np
    import arch_reference as ar
    import gguf_writer as gw
    if not has_ggml_quants():
        print("SKIPPED  c. the block types other than Q8_0: tests/ggml_quants.py is absent")
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, arch, kw, n_prompt, steps) in enumerate(variants()):
            path = os.path.join(tmp, f"v{k}.gguf")
            gw.write_arch(path, arch, seed=100 + k, **kw)
            ids = [int(i) for i in np.random.default_rng(k).integers(3, 1024, n_prompt)]

            def against_reference():
                out, _, got = run_logits(run_bin, path, ids, 1024, tmp, steps)
                gen = [int(t) for t in out.split()]
                # each printed id is processed, but the last of a full run: a run that stops
                # at BOS or EOS prints neither, and its last row chose it
                stopped = len(gen) < steps
                rows = n_prompt + len(gen) - (0 if stopped else 1)
                if got.shape[0] != rows:
                    return False, (f"{got.shape[0]} logits rows for a prompt of {n_prompt} and "
                                   f"{len(gen)} generated ids ({rows} expected)")
                want = ar.logits(ar.load(path), (ids + gen)[:rows])
                kind = kw.get("type_name", "F32")
                tol = TOLERANCE.get(kind, TOLERANCE["Q8_0"]) * float(want.std())
                if kind in ("F32", "F16"):
                    ok, detail = compare(got, want, tol, f"{rows} positions, ")
                else:
                    layers = kw.get("layers", gw.ARCH_DEFAULTS[arch]["layers"])
                    tol *= np.sqrt(max(layers, 2) / 2)  # rounding grows with depth
                    ok, detail = compare(got, want, tol, f"{rows} positions, ", tie=tol / 2,
                                         min_same=rows - rows // 8)
                own = [int(i) for i in got[n_prompt - 1:].argmax(axis=1)]
                if own[:len(gen)] != gen or (stopped and own[-1] not in STOP_IDS):
                    ok, detail = False, detail + "; the generated ids are not the argmax of " \
                                                 "run's own logits"
                elif stopped:
                    detail += f"; stopped at {own[-1]} after {len(gen)} ids"
                return ok, detail
            s.guarded(f"c. {label}: ./run against the reference", against_reference)

            def threads():
                outs = [run_logits(run_bin, path, ids, 1024, tmp, steps, extra)[:2]
                        for extra in (["--threads", "1"], [], ["--threads", "3"])]
                same = outs[0] == outs[1] == outs[2]
                return same, "ids and logits bit-identical" if same else "they differ"
            s.guarded(f"c. {label}: --threads 1, the default and 3", threads)


def part_kv_cache(s, run_bin):
    import numpy as np
    import gguf_writer as gw
    with tempfile.TemporaryDirectory() as tmp:
        for arch in gw.ARCHS:
            path = os.path.join(tmp, f"{arch}.gguf")
            # gemma2 with 4 layers: over 26, random weights amplify any rounding chaotically
            # (see TOLERANCE; there an f16 cache moved the logits by 0.16, a q8 one by 2)
            kw = dict(window=20, layers=4) if arch == "gemma2" else {}
            gw.write_arch(path, arch, seed=7, **kw)
            ids = [int(i) for i in np.random.default_rng(99).integers(3, 1024, 120)]
            try:
                _, _, base = run_logits(run_bin, path, ids, 1024, tmp)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                s.check(False, f"e. {arch}: f32 KV cache: {e}")
                continue
            # the cache's rounding errors add up over the layers, about as the square root
            # of their number
            layers = kw.get("layers", gw.ARCH_DEFAULTS[arch]["layers"])
            scale = float(base.std()) * np.sqrt(layers / 2)
            for fmt, rel in (("f16", 0.01), ("q8", 0.2)):
                def cache(fmt=fmt, rel=rel):
                    _, _, got = run_logits(run_bin, path, ids, 1024, tmp,
                                           extra=["--kv-cache", fmt])
                    diff = float(np.abs(got - base).max())
                    same = int((got.argmax(1) == base.argmax(1)).sum())
                    need = len(ids) * 9 // 10
                    return (diff <= rel * scale and same >= need,
                            f"max |diff| {diff:.3g} from f32 (at most {rel * scale:.3g}), the "
                            f"same argmax at {same} of {len(ids)} (at least {need})")
                s.guarded(f"e. {arch}: --kv-cache {fmt} close to f32", cache)


def part_refusals(s, run_bin):
    """f. What an architecture's keys and tensors may not be: each file is refused with exit 1 and
    one `run: ` line naming what is wrong; a window wider than the context is not an error."""
    import numpy as np
    import gguf_writer as gw
    F32, STR, U32 = gw.FLOAT32, gw.STRING, gw.UINT32

    def with_kv(kvs, key, vtype, value):
        kvs = [(k, t, v) for k, t, v in kvs if k != key]
        return kvs + [(key, vtype, value)]
    def with_first_value(tensor, value):
        data = np.float32(value).tobytes() + tensor.data[4:]
        return gw.Tensor(tensor.name, tensor.ne, tensor.type_name, data)
    small = dict(layers=1)
    cases = [
        ("llama", small, lambda kv, t: (with_kv(kv, "llama.rope.scaling.type", STR, "yarn"), t),
         'llama.rope.scaling.type is "yarn"; this program implements "none" and "linear"'),
        ("llama", small,
         lambda kv, t: (with_kv(kv, "llama.rope.scaling.attn_factor", F32, 2.0), t),
         "llama.rope.scaling.attn_factor is 2; this program implements 1 only"),
        ("llama", small, lambda kv, t: (with_kv(kv, "llama.rope.scaling.factor", F32,
                                                float("nan")), t),
         "llama.rope.scaling.factor is nan, expected a finite number above 0"),
        ("gemma", small, lambda kv, t: (with_kv(kv, "gemma.attention.value_length", U32, 16), t),
         "gemma.attention.value_length is 16 and key_length 32; this program needs values as "
         "wide as keys"),
        ("gemma2", {}, lambda kv, t: (with_kv(kv, "gemma2.attn_logit_softcapping", F32,
                                              float("inf")), t),
         "gemma2.attn_logit_softcapping is inf, expected a finite number above 0"),
        ("gemma2", {}, lambda kv, t: (with_kv(kv, "gemma2.attention.sliding_window", STR, "6"),
                                      t),
         "key 'gemma2.attention.sliding_window' is a string, expected an integer"),
        ("qwen2", small, lambda kv, t: (with_kv(kv, "qwen2.expert_count", U32, 8), t),
         "qwen2.expert_count is 8: a mixture of experts, which this program does not run"),
        ("qwen2", small, lambda kv, t: (kv, [x for x in t if x.name != "blk.0.attn_k.bias"]),
         "tensor 'blk.0.attn_k.bias' is missing; a qwen2 model needs it"),
        ("gpt2", small, lambda kv, t: (kv, [x for x in t if x.name != "position_embd.weight"]),
         "tensor 'position_embd.weight' is missing; a gpt2 model needs it"),
        ("gemma", small, lambda kv, t: (kv, t + [gw.Tensor("output.weight", t[0].ne, "F32",
                                                           t[0].data)]),
         "tensor 'output.weight' is not one of a gemma model's"),
        ("llama", small, lambda kv, t: (with_kv(kv, "llama.rope.freq_base", F32, float("nan")),
                                        t),
         "llama.rope.freq_base is nan, expected a finite number above 1"),
        ("llama", small, lambda kv, t: (with_kv(kv, "llama.context_length", gw.UINT64,
                                                (1 << 64) - 1), t),
         "key 'llama.context_length' is 18446744073709551615, larger than any size"),
        ("llama", small, lambda kv, t: (with_kv(kv, "llama.block_count", gw.ARRAY,
                                                (U32, [1, 2])), t),
         "key 'llama.block_count' is an array, expected an integer"),
        ("llama", small, lambda kv, t: (with_kv(kv, "general.architecture", STR, "mamba"), t),
         'general.architecture is "mamba"; this program runs llama, qwen2, gemma, gemma2 and '
         "gpt2 models"),
        ("gpt2", small, lambda kv, t: (kv, [gw.Tensor(x.name, [x.ne[0], x.ne[1] - 1], x.type_name,
                                                      x.data[:len(x.data) - 4 * x.ne[0]])
                                            if x.name == "blk.0.attn_qkv.weight" else x
                                            for x in t]),
         "tensor 'blk.0.attn_qkv.weight' has shape [64, 191], the config needs [64, 192]"),
        ("llama", dict(layers=1, rope_freqs=True),
         lambda kv, t: (kv, [with_first_value(x, 0.0) if x.name == "rope_freqs.weight" else x
                             for x in t]),
         "tensor 'rope_freqs.weight', value 0 is 0; RoPE's divisors must be above 0"),
        ("qwen2", small,
         lambda kv, t: (kv, [with_first_value(x, float("nan")) if x.name == "blk.0.attn_k.bias"
                             else x for x in t]),
         "tensor 'blk.0.attn_k.bias', value 0 is nan; every weight must be a finite number"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (arch, kw, change, needle) in enumerate(cases):
            kvs, tensors = change(*gw.arch_gguf(arch, seed=3, **kw))
            path = os.path.join(tmp, f"bad{k}.gguf")
            gw.write_gguf(path, kvs, tensors)
            r = subprocess.run([run_bin, path, "--tokens", "1", "-n", "1"], capture_output=True,
                               timeout=60)
            err = r.stderr.decode(errors="replace")
            s.check(r.returncode == 1 and needle in err and err.count("\n") == 1 and
                    err.startswith("run: "), f"f. {arch}: refused: {err.strip()[:160]}")
        path = os.path.join(tmp, "wide-window.gguf")
        gw.write_arch(path, "gemma2", seed=3, window=100000, context=64)
        r = subprocess.run([run_bin, path, "--tokens", "1 2 3", "-n", "4", "-q"],
                           capture_output=True, timeout=60)
        s.check(r.returncode == 0, "f. gemma2: a sliding window wider than the context runs as "
                                   f"no window (exit {r.returncode})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=os.path.join(REPO, "run"))
    args = ap.parse_args()
    try:
        import numpy  # noqa: F401
    except ImportError as e:
        print(f"SKIPPED: architecture test ({e.name} not installed)")
        return 0
    s = Suite()
    if os.path.isdir(GOLDEN):
        part_golden(s, args.run)
    else:
        print(f"SKIPPED: the golden-file checks (a, b, d): {GOLDEN} is absent")
    part_generated(s, args.run)
    part_kv_cache(s, args.run)
    part_refusals(s, args.run)
    print(f"arch: {s.passed} passed, {s.failed} failed")
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
