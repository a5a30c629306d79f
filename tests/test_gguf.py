#!/usr/bin/python3
"""GGUF files through ./run: the vocabulary against sentencepiece, the weights against GQAM.

  1. model/shakespeare-gqa.bin is written as GGUF F32, F16 and Q8_0 by tests/gguf_writer.py. The
     F32 file must give exactly the logits of the .bin (the same numbers, read through the other
     loader); F16 and Q8_0 must stay close (max |diff| at most 0.02 and 0.2) with the same greedy
     token at most positions, and give the same bits at 1 and 2 threads.
  2. Text encodes through each file's embedded vocabulary (tokenizer.ggml.*, spaces spelled
     U+2581) to exactly sentencepiece's ids for tokenizer/shakespeare.model: edge cases and lines
     of the validation split. The same for llama.cpp's own g-gqa.f32.gguf when ../shared is
     present.

Prints one line per check and `gguf: N passed, M failed`; exits non-zero on any failure. Without
numpy or sentencepiece it prints a SKIPPED line and exits 0.

    /usr/bin/python3 tests/test_gguf.py [--run ./run]
"""
import argparse
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
GOLDEN_GGUF = os.path.join(REPO, "..", "shared", "golden", "gguf", "g-gqa.f32.gguf")
DATA = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt")
PROMPT_IDS = [1, 17, 250, 99, 480, 3, 77, 300, 12, 511, 256, 45, 128, 200, 64, 33]
LINES = ["First Citizen:", "Before we proceed any further, hear me speak.",
         "ROMEO:\nBut, soft! what light through yonder window breaks?"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=os.path.join(REPO, "run"))
    args = ap.parse_args()
    try:
        import numpy as np
        import sentencepiece as spm
    except ImportError as e:
        print(f"SKIPPED: GGUF test ({e.name} not installed)")
        return 0
    import gguf_writer as gw
    from test_twin import EDGE_CASES, run_encode, run_logits, validation_lines

    sp = spm.SentencePieceProcessor(model_file=os.path.join(REPO, "tokenizer",
                                                            "shakespeare.model"))
    source = os.path.join(REPO, "model", "shakespeare-gqa.bin")
    texts = EDGE_CASES + (validation_lines(DATA) if os.path.exists(DATA) else LINES)
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        print(("ok      " if ok else "FAILED  ") + what)
        passed += bool(ok)
        failed += not ok

    with tempfile.TemporaryDirectory() as tmp:
        weights, c, vocab = gw.read_model(source)
        models = {}
        for type_name in ("F32", "F16", "Q8_0"):
            path = os.path.join(tmp, f"shakespeare-gqa.{type_name.lower()}.gguf")
            gw.write_gguf(path, *gw.llama_gguf(weights, c, vocab, type_name=type_name))
            models[type_name] = path
        want = run_logits(args.run, source, PROMPT_IDS, c.vocab_size)
        for type_name, tolerance in (("F32", 0.0), ("F16", 0.02), ("Q8_0", 0.2)):
            got = run_logits(args.run, models[type_name], PROMPT_IDS, c.vocab_size)
            diff = float(np.abs(got - want).max())
            same = int((got.argmax(1) == want.argmax(1)).sum())
            check(diff <= tolerance and same >= len(PROMPT_IDS) - 2,
                  f"{type_name} written from shakespeare-gqa.bin: max |logit diff| {diff:.3g} "
                  f"(at most {tolerance:g}), the same argmax at {same} of {len(PROMPT_IDS)}")

        for type_name in ("F16", "Q8_0"):
            outputs = []
            for threads in (1, 2):
                logits = os.path.join(tmp, f"logits-{threads}.f32")
                r = subprocess.run([args.run, models[type_name], "--tokens",
                                    " ".join(map(str, PROMPT_IDS)), "-n", "32", "-t", "0",
                                    "--emit-ids", "-q", "--threads", str(threads), "--logits",
                                    logits, "--force"], capture_output=True, timeout=300)
                outputs.append((r.returncode, r.stdout, open(logits, "rb").read()))
            check(outputs[0] == outputs[1] and outputs[0][0] == 0,
                  f"{type_name}: greedy ids and logits bit-identical at 1 and 2 threads")

        encoded = dict(models)
        if os.path.exists(GOLDEN_GGUF):
            encoded["llama.cpp g-gqa.f32.gguf"] = GOLDEN_GGUF
        for name, path in encoded.items():
            wrong = []
            for text in texts:
                got = run_encode(args.run, path, text)
                if got != sp.encode(text):
                    wrong.append(text)
            check(not wrong, f"{name}: {len(texts) - len(wrong)} of {len(texts)} texts encode "
                             f"as sentencepiece does" + (f"; not {wrong[:3]!r}" if wrong else ""))
    print(f"gguf: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
