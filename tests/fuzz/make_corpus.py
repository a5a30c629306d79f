#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/.

Deterministic (a fixed random seed), so running it again rewrites the same files; run it after
changing it and commit the result. Tiny checkpoints in both formats, with and without an embedded
tokenizer, one valid file of each kind next to near misses; tiny GGUF files (F32, F16, Q8_0) written
by tests/gguf_writer.py, valid ones and near misses; tokenizer.bin files; prompts; command
lines (arguments separated by NUL bytes).

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""

import os
import random
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")
SHAKESPEARE = os.path.join(ROOT, "tokenizer", "shakespeare.tokenizer.bin")
rng = random.Random(20240606)


def floats(n, low=-0.5, high=0.5):
    return struct.pack(f"<{n}f", *(rng.uniform(low, high) for _ in range(n)))


def tokenizer_bin(pieces):
    """llama2.c's tokenizer.bin: int32 max_token_length, then (f32 score, int32 length, bytes)."""
    out = struct.pack("<i", max((len(p) for _, p in pieces), default=0))
    for score, piece in pieces:
        out += struct.pack("<fi", score, len(piece)) + piece
    return out


def small_pieces():
    """unk, BOS, EOS, byte pieces for a few bytes, then merges; 16 pieces."""
    pieces = [(0.0, b"<unk>"), (0.0, b"<s>"), (0.0, b"</s>")]
    pieces += [(0.0, b"<0x%02X>" % b) for b in (0x0A, 0x20, 0xC3, 0xA9)]
    merges = [b" ", b"a", b"b", b"e", b" a", b"ab", b" ab", b"be", b"\xc3\xa9"]
    pieces += [(-float(i), m) for i, m in enumerate(merges)]
    return pieces


def rms(n):
    return floats(n, 0.5, 1.5)


def weight_bytes(c, legacy, group=0):
    """The weights in layout_weights' order. fp32 tensors follow each other with no gaps; in an
    int8 file each matrix is int8 values then fp32 scales (one per group of a row), and every part
    starts on a multiple of 64 bytes. RMSNorm weights are near 1 so the model computes something."""
    D, F, L, V, H, KVH, S = (c[k] for k in
                             ("dim", "hidden", "layers", "vocab", "heads", "kv", "seq"))
    hd = D // H
    kv_dim = KVH * hd
    parts = []

    def matrix(count):
        if group == 0:
            parts.append(floats(count))
        else:
            parts.append(bytes(rng.randrange(256) for _ in range(count)))
            parts.append(floats(count // group, 0.001, 0.02))

    matrix(V * D)  # token_embedding
    parts.append(rms(L * D))  # rms_att
    for count in (L * D * D, L * kv_dim * D, L * kv_dim * D, L * D * D):  # wq wk wv wo
        matrix(count)
    parts.append(rms(L * D))  # rms_ffn
    for _ in range(3):  # w1 w2 w3
        matrix(L * F * D)
    parts.append(rms(D))  # rms_final
    if legacy:
        parts.append(floats(S * hd))  # the two RoPE tables llama2.c stores
    if not c["shared"]:
        matrix(V * D)  # classifier
    out = b""
    for part in parts:
        if group:
            out = out.ljust((len(out) + 63) // 64 * 64, b"\0")
        out += part
    return out


def legacy(c):
    vocab = c["vocab"] if c["shared"] else -c["vocab"]
    header = struct.pack("<7i", c["dim"], c["hidden"], c["layers"], c["heads"], c["kv"], vocab,
                         c["seq"])
    return header + weight_bytes(c, True)


def gqam(c, tokenizer=b"", version=1, bos=1, eos=2, group=0):
    weights = weight_bytes(c, False, group)
    tokenizer_offset = 256
    weights_offset = (tokenizer_offset + len(tokenizer) + 63) // 64 * 64
    flags = (1 if c["shared"] else 0) | (2 if group else 0)
    header = b"GQAM" + struct.pack(
        "<9I2f4I", version, c["dim"], c["hidden"], c["layers"], c["heads"], c["kv"],
        c["dim"] // c["heads"], c["vocab"], c["seq"], 10000.0, 1e-5, flags, bos, eos, group)
    header += struct.pack("<4Q", tokenizer_offset, len(tokenizer), weights_offset, len(weights))
    header = header.ljust(256, b"\0")
    return header + tokenizer.ljust(weights_offset - tokenizer_offset, b"\0") + weights


def config(dim=4, hidden=6, layers=1, heads=2, kv=1, vocab=16, seq=4, shared=True):
    return dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv=kv, vocab=vocab, seq=seq,
                shared=shared)


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def checkpoints():
    small = tokenizer_bin(small_pieces())
    write("checkpoint", "legacy-gqa-tied", legacy(config()))
    write("checkpoint", "legacy-mha-untied", legacy(config(heads=2, kv=2, shared=False, seq=3)))
    write("checkpoint", "legacy-mqa-2layers", legacy(config(dim=8, heads=4, kv=1, layers=2)))
    write("checkpoint", "gqam-gqa-tokenizer", gqam(config(), small))
    write("checkpoint", "gqam-mha-untied-no-tokenizer", gqam(config(kv=2, shared=False)))
    write("checkpoint", "gqam-seq1", gqam(config(seq=1), small))
    write("checkpoint", "gqam-int8-group4", gqam(config(hidden=8), small, group=4))
    write("checkpoint", "gqam-int8-group2-untied",
          gqam(config(dim=8, hidden=6, heads=2, kv=1, shared=False), group=2))
    if os.path.exists(SHAKESPEARE):
        with open(SHAKESPEARE, "rb") as f:
            shakespeare = f.read()
        write("checkpoint", "gqam-shakespeare-tokenizer",
              gqam(config(dim=2, hidden=2, heads=1, kv=1, vocab=1024, seq=8), shakespeare))
    # Near misses: each differs from a valid file in one way.
    valid = legacy(config())
    write("checkpoint", "legacy-truncated", valid[:-4])
    write("checkpoint", "legacy-one-byte-more", valid + b"\0")
    write("checkpoint", "legacy-header-only", valid[:28])
    write("checkpoint", "legacy-kv-heads-not-dividing", legacy(config(heads=2, kv=2))[:28]
          .replace(struct.pack("<i", 2) * 2, struct.pack("<ii", 2, 3), 1))
    good = gqam(config(), small)
    write("checkpoint", "gqam-version-2", good[:4] + struct.pack("<I", 2) + good[8:])
    write("checkpoint", "gqam-header-only", good[:256])
    write("checkpoint", "gqam-tokenizer-past-end",
          good[:72] + struct.pack("<Q", 1 << 40) + good[80:])
    write("checkpoint", "gqam-bos-out-of-range", gqam(config(), small, bos=16))
    int8 = gqam(config(hidden=8), small, group=4)
    write("checkpoint", "gqam-int8-group-not-dividing",
          int8[:60] + struct.pack("<I", 3) + int8[64:])
    write("checkpoint", "gqam-fp32-with-group", good[:60] + struct.pack("<I", 4) + good[64:])
    write("checkpoint", "magic-only", b"GQAM")
    write("checkpoint", "empty", b"")


def gguf_files():
    """Tiny llama GGUF files from tests/gguf_writer.py. dim 32: Q8_0 rows are whole blocks."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import numpy as np
    import gguf_writer as gw
    c = gw.LlamaConfig(dim=32, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=16,
                       seq_len=4)
    generator = np.random.default_rng(20240606)
    weights = {name: generator.uniform(-0.5, 0.5, shape).astype(np.float32)
               for name, shape in gw._shapes(c).items()}
    for name in ("rms_att", "rms_ffn", "rms_final"):
        weights[name] = weights[name] + 1.0
    vocab = gw.read_tokenizer_bin(tokenizer_bin(small_pieces()))

    def gguf(**kw):
        return gw.gguf_bytes(*gw.llama_gguf(weights, c, kw.pop("vocab", vocab), **kw),
                             alignment=kw.get("alignment", gw.DEFAULT_ALIGNMENT))

    write("checkpoint", "gguf-f32", gguf())
    write("checkpoint", "gguf-f16", gguf(type_name="F16"))
    write("checkpoint", "gguf-q8_0-untied", gguf(type_name="Q8_0", output="untied"))
    write("checkpoint", "gguf-f16-no-vocab-align48", gguf(type_name="F16", vocab=None,
                                                          alignment=48))
    for name in ("type-q4_k", "truncated", "array-length-lie", "tokenizer-gpt2",
                 "no-head-count-kv"):
        write("checkpoint", "gguf-" + name, gw.variant(name, weights, c, vocab))
    kvs, tensors = gw.llama_gguf(weights, c, vocab)
    write("checkpoint", "gguf-missing-tensor",
          gw.gguf_bytes(kvs, [t for t in tensors if t.name != "blk.0.attn_v.weight"]))


def arch_files():
    """Tiny GGUF files of every architecture and block type (tests/gguf_writer.py's arch_gguf):
    the keys and tensors each architecture adds, for the fuzzer to bend."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import gguf_writer as gw
    small = dict(dim=16, layers=1, heads=2, ffn=16, context=8, vocab=260)
    for arch in ("llama", "qwen2", "gemma", "gpt2"):
        write("checkpoint", f"arch-{arch}", gw.gguf_bytes(*gw.arch_gguf(arch, **small)))
    write("checkpoint", "arch-llama3-rope-freqs-linear",
          gw.gguf_bytes(*gw.arch_gguf("llama", **small, head_dim=16, rope_freqs=True,
                                      rope_scale=2.0)))
    write("checkpoint", "arch-gemma2-window",
          gw.gguf_bytes(*gw.arch_gguf("gemma2", dim=8, layers=26, heads=2, ffn=8, context=8,
                                      vocab=260, window=2, type_name="F16")))
    for type_name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        write("checkpoint", f"arch-llama-{type_name.lower()}",
              gw.gguf_bytes(*gw.arch_gguf("llama", dim=32, layers=1, heads=2, ffn=32, context=4,
                                          vocab=260, type_name=type_name)))
    for type_name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):  # rows of 256; narrow ones fall back
        write("checkpoint", f"arch-llama-{type_name.lower()}",
              gw.gguf_bytes(*gw.arch_gguf("llama", dim=256, layers=1, heads=2, head_dim=4,
                                          ffn=8, context=4, vocab=260, type_name=type_name)))


def byte_level():
    """A byte-level ("gpt2") vocabulary with no tensors, for the checkpoint target; the bpe
    target's seeds: a pre-tokenizer byte, then extra tokens, merges and a text, NUL-separated."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import gguf_writer as gw
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE]
    alphabet, n = {}, 0
    for b in range(256):  # GPT-2's byte alphabet: printable bytes as themselves, others from 256
        alphabet[b] = chr(b) if b in printable else chr(256 + n)
        n += b not in printable
    tokens = [alphabet[b] for b in range(256)] + ["ab", "\u0120t", "he", "<|endoftext|>"]
    kvs = [("general.architecture", gw.STRING, "gpt2"),
           ("tokenizer.ggml.model", gw.STRING, "gpt2"),
           ("tokenizer.ggml.pre", gw.STRING, "llama-bpe"),
           ("tokenizer.ggml.tokens", gw.ARRAY, (gw.STRING, tokens)),
           ("tokenizer.ggml.token_type", gw.ARRAY, (gw.INT32, [1] * (len(tokens) - 1) + [3])),
           ("tokenizer.ggml.merges", gw.ARRAY, (gw.STRING, ["a b", "\u0120 t", "h e"])),
           ("tokenizer.ggml.bos_token_id", gw.UINT32, 259),
           ("tokenizer.ggml.eos_token_id", gw.UINT32, 259),
           ("tokenizer.ggml.add_bos_token", gw.BOOL, True)]
    write("checkpoint", "vocab-byte-level.gguf", gw.gguf_bytes(kvs, []))
    write("bpe", "seed-gpt2",
          b"\x00ab\nHe\nll\n<|end|>\n@USER\x00a b\nH e\nl l\n\x00Hello <|end|> USER ab 123")
    write("bpe", "seed-llama3", b"\x05\n\xc4\xa0t\nhe\n\x00\xc4\xa0 t\nh e\n\x00 the 1234567 the")
    write("bpe", "seed-falcon", b"\x0e\x00\x00d\xc3\xadgits 9876 punct!!")


def tokenizers():
    write("tokenizer", "small", tokenizer_bin(small_pieces()))
    write("tokenizer", "three-control-pieces", tokenizer_bin(small_pieces()[:3]))
    duplicated = small_pieces() + [(5.0, b"a"), (1.0, b" ab")]
    write("tokenizer", "duplicate-pieces", tokenizer_bin(duplicated))
    write("tokenizer", "bytes-only",
          tokenizer_bin(small_pieces()[:3] + [(0.0, b"<0x%02X>" % b) for b in range(256)]))
    write("tokenizer", "odd-pieces", tokenizer_bin(
        small_pieces()[:3] + [(1.0, b"<0xZZ>"), (2.0, b"\xff\xfe"), (3.0, b"\x00a"), (4.0, b""),
                              (5.0, b"\x1b[31m"), (6.0, b"\xe6\x97\xa5"), (7.0, b"a" * 40)]))
    good = tokenizer_bin(small_pieces())
    write("tokenizer", "cut-in-a-piece", good[:-3])
    write("tokenizer", "negative-length", good[:4] + struct.pack("<fi", 0.0, -1))
    write("tokenizer", "nan-score", good + struct.pack("<fi", float("nan"), 1) + b"x")
    write("tokenizer", "header-only", struct.pack("<i", 7))
    if os.path.exists(SHAKESPEARE):
        shutil.copyfile(SHAKESPEARE, os.path.join(CORPUS, "tokenizer", "shakespeare"))


def prompts():
    texts = {
        "empty": b"",
        "fear": b"Fear is",
        "citizen": b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak.",
        "spaces": b"   leading and  double  spaces ",
        "unicode": "h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \U0001f642 \u2014 na\u00efve".encode(),
        "invalid-utf8":
            b"\xff\xfe \xc3 \xe2\x82 \xf0\x9f\x99 \xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80",
        "controls": b"a\x00b\x01c\x1b[0m\x7f\td\r\n",
        "pieces-as-text": b"<s></s><unk><0x41>",
        "digits": b"3.14159 2024-06-06 100,000",
        "repeated": b"ab" * 200,
    }
    for name, text in texts.items():
        write("encode", name, text)


def command_lines():
    lines = {
        "prompt": ["m.bin", "-p", "Fear is", "-n", "16"],
        "tokens": ["m.bin", "--tokens", "1 17 250", "--emit-ids", "-n", "8", "-t", "0"],
        "tokens-commas": ["m.bin", "--tokens=1,2,3,\t4\n5"],
        "sampling": ["m.bin", "-t", "0.5", "--top-p", "0.95", "-k", "40", "-s", "42", "-q"],
        "long-options": ["--prompt=hi", "--steps=3", "--temperature=1", "--seed=7", "m.bin",
                         "--threads", "2", "--quiet"],
        "clustered": ["-qn5", "-pabc", "m.bin"],
        "info": ["m.bin", "--info"],
        "encode": ["m.bin", "-z", "tok.bin", "--encode", "-p", "hi"],
        "logits": ["m.bin", "--logits", "out.f32", "--force", "--tokens", "5"],
        "help": ["--help"],
        "version": ["--version"],
        "missing-value": ["m.bin", "-p"],
        "unknown-long": ["m.bin", "--bogus"],
        "unknown-short": ["-x", "m.bin"],
        "two-models": ["a.bin", "b.bin"],
        "prompt-and-tokens": ["m.bin", "-p", "x", "--tokens", "1"],
        "bad-numbers": ["m.bin", "-n", "-1", "-t", "nan", "--top-p", "0", "-s", "-3"],
        "tokens-out-of-range": ["m.bin", "--tokens", "1 99999"],
        "eval": ["m.bin", "--eval", "text.txt", "--stride", "32", "-z", "tok.bin"],
        "attn-layer-head": ["m.bin", "-p", "to be", "--attn", "3:5", "--attn-dump", "a.json"],
        "attn-layer": ["--attn=2", "m.bin", "--tokens", "1 2"],
        "explain": ["m.bin", "--explain", "4", "-p", "abc"],
        "attn-bad": ["m.bin", "--attn", "3:", "--explain", "-1"],
        "flag-with-value": ["m.bin", "--quiet=3"],
        "cluster-then-help": ["-hq", "m.bin"],
        "unknown-in-cluster": ["m.bin", "-yq"],
        "empty": [],
    }
    for name, args in lines.items():
        write("cli", name, b"\0".join(a.encode() for a in args))


if __name__ == "__main__":
    shutil.rmtree(CORPUS, ignore_errors=True)
    checkpoints()
    gguf_files()
    arch_files()
    byte_level()
    tokenizers()
    prompts()
    command_lines()
