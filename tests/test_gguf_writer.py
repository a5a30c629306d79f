#!/usr/bin/python3
"""tests/gguf_writer.py against the GGUF files llama.cpp's own tools wrote (../shared/golden/gguf).

The golden files hold g-gqa.bin's weights, converted by llama.cpp's convert-llama2c-to-ggml (F32)
and llama-quantize (F16, Q8_0). Written from the same weights by gguf_writer, every tensor must
have the golden file's name, shape, type and exact bytes (Q8_0 included: the quantization is
ggml's), and the vocabulary and hyperparameter keys must hold the same values. attn_q and
attn_k must equal g-gqa.bin's wq and wk unpermuted: the converter keeps llama2.c's RoPE pair
order, the one run.c uses. Then every broken variant must be what its description says.
Prints `gguf_writer: N passed, M failed`; exits non-zero on any failure.
"""
import os
import struct
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "..", "shared", "golden", "gguf")
sys.path.insert(0, os.path.join(REPO, "tests"))

try:
    import numpy as np
except ImportError as e:
    print(f"SKIPPED: GGUF writer test ({e.name} not installed)")
    sys.exit(0)

import gguf_writer as gw  # noqa: E402


def main():
    if not os.path.isdir(GOLDEN):
        print(f"SKIPPED: GGUF writer test ({GOLDEN} is absent)")
        return 0
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        print(("ok      " if ok else "FAILED  ") + what)
        passed += bool(ok)
        failed += not ok

    weights, c, _ = gw.read_llama2c(os.path.join(GOLDEN, "g-gqa.bin"))
    vocab = gw.read_tokenizer_bin(
        open(os.path.join(REPO, "tokenizer", "shakespeare.tokenizer.bin"), "rb").read())

    for kind in ("f32", "f16", "q8_0"):
        golden = gw.read_gguf(os.path.join(GOLDEN, f"g-gqa.{kind}.gguf"))
        kvs, tensors = gw.llama_gguf(weights, c, vocab, type_name=kind.upper(), output="copy")
        mine = gw.read_gguf(gw.gguf_bytes(kvs, tensors))
        check(mine.version == golden.version == 3, f"{kind}: version 3")
        check(sorted(t.name for t in mine.tensors) == sorted(t.name for t in golden.tensors),
              f"{kind}: the same {len(golden.tensors)} tensor names")
        differ = [t.name for t in golden.tensors
                  if mine.tensor(t.name).ne != t.ne or mine.tensor(t.name).type_id != t.type_id
                  or mine.tensor_data(t.name) != golden.tensor_data(t.name)]
        check(not differ, f"{kind}: every tensor's shape, type and bytes equal the golden "
              f"file's {differ[:3]}")
        check(all(t.offset % 32 == 0 for t in mine.tensors) and mine.data_offset % 32 == 0,
              f"{kind}: data section and tensor offsets aligned to 32")
        # Keys: the golden converter writes context_length 128 and no rope.freq_base (10000);
        # it also writes separator/padding ids (none), which a llama model does not need.
        expected = dict(golden.kvs)
        expected["llama.context_length"] = (gw.UINT32, c.seq_len)
        expected["llama.rope.freq_base"] = (gw.FLOAT32, 10000.0)
        expected.setdefault("general.file_type", (gw.UINT32, 0))
        for key in ("tokenizer.ggml.seperator_token_id", "tokenizer.ggml.padding_token_id"):
            expected.pop(key)
        got = {k: (t, v if t != gw.FLOAT32 else struct.unpack("<f", struct.pack("<f", v))[0])
               for k, (t, v) in mine.kvs.items()}
        differ = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
        check(not differ, f"{kind}: keys and values equal the golden file's {differ[:3]}")

    golden = gw.read_gguf(os.path.join(GOLDEN, "g-gqa.f32.gguf"))
    same = all(np.array_equal(golden.tensor_array(f"blk.{i}.attn_{n}.weight"), weights[w][i])
               for i in range(c.n_layers) for n, w in (("q", "wq"), ("k", "wk")))
    check(same, "golden attn_q/attn_k equal g-gqa.bin's wq/wk: no RoPE permutation")
    tokens = golden.value("tokenizer.ggml.tokens")[1]
    check(tokens[300:303] == [p.decode().replace(" ", gw.SPACE_MARK) for p in vocab.pieces[300:303]]
          and any(gw.SPACE_MARK in t for t in tokens), "golden pieces spell spaces as U+2581")

    q8 = gw.read_gguf(gw.gguf_bytes(*gw.llama_gguf(weights, c, vocab, type_name="Q8_0")))
    err = float(np.abs(q8.tensor_array("blk.0.ffn_down.weight") - weights["w2"][0]).max())
    check(0 < err <= np.abs(weights["w2"][0]).max() / 127, f"Q8_0 round trip error {err:.2e} "
          "within half a step of the largest scale")

    # The variants.
    def parse(name):
        return gw.read_gguf(gw.variant(name, weights, c, vocab))

    def refuses(name):
        try:
            parse(name)
        except (ValueError, struct.error, UnicodeDecodeError):
            return True
        return False

    for name in ("f32", "f16", "q8_0", "untied", "output-copy", "no-optional-keys", "align64",
                 "align48", "align32-explicit", "no-vocab"):
        try:
            g = parse(name)
            ok = g.data_offset + g.tensors[-1].offset + len(g.tensor_data(g.tensors[-1].name)) \
                == len(g.raw)
        except ValueError:
            ok = False
        check(ok, f"variant {name}: parses, the last tensor ends the file")
    g = parse("untied")
    check(not np.array_equal(g.tensor_array("output.weight"),
                             g.tensor_array("token_embd.weight")),
          "variant untied: output.weight differs from token_embd.weight")
    check("output.weight" not in [t.name for t in parse("f32").tensors],
          "variant f32: no output.weight (tied)")
    g = parse("no-optional-keys")
    check("llama.attention.head_count_kv" not in g.kvs and "llama.rope.freq_base" not in g.kvs,
          "variant no-optional-keys: neither head_count_kv nor rope.freq_base")
    for name, alignment in (("align64", 64), ("align48", 48)):
        g = parse(name)
        check(g.alignment == alignment and g.data_offset % alignment == 0 and
              all(t.offset % alignment == 0 for t in g.tensors) and
              any(t.offset % 64 for t in g.tensors) == (alignment == 48),
              f"variant {name}: general.alignment {alignment}, data and offsets aligned to it")
    for t in gw.REFUSED_TYPES:
        g = parse(f"type-{t.lower()}")
        info = g.tensor("blk.0.ffn_gate.weight")
        check(info.type_name == t and len(g.tensor_data(info.name)) ==
              gw.tensor_bytes(t, info.ne) and info.ne[0] % gw.GGML_TYPES[t][1] == 0,
              f"variant type-{t.lower()}: a {t} tensor of {gw.tensor_bytes(t, info.ne)} bytes")
    g = parse("truncated")
    last = g.tensors[-1]
    check(g.data_offset + last.offset + len(g.tensor_data(last.name)) < len(
        gw.variant("f32", weights, c, vocab)) and len(g.raw) < g.data_offset + last.offset +
        gw.tensor_bytes(last.type_name, last.ne), "variant truncated: the last tensor is cut")
    for name in ("array-length-lie", "string-length-lie", "truncated-header", "bad-magic",
                 "tensor-count-lie"):
        check(refuses(name), f"variant {name}: the reader refuses it")
    check(parse("tokenizer-gpt2").value("tokenizer.ggml.model") == "gpt2",
          "variant tokenizer-gpt2")
    check(parse("arch-falcon").value("general.architecture") == "falcon", "variant arch-falcon")
    check(parse("version2").version == 2, "variant version2")
    check(parse("huge-dims").tensor("output_norm.weight").ne == [1 << 32, 1 << 32],
          "variant huge-dims")
    check(parse("offset-past-end").tensors[-1].offset >= 1 << 63, "variant offset-past-end")
    check(parse("rope-dim-mismatch").value("llama.rope.dimension_count") == c.head_dim // 2,
          "variant rope-dim-mismatch")
    check("blk.1.attn_v.weight" not in [t.name for t in parse("missing-tensor").tensors],
          "variant missing-tensor")
    check(parse("wrong-shape").tensor("blk.0.attn_k.weight").ne == [c.dim, 2 * 16],
          "variant wrong-shape")
    g = parse("no-optional-keys")
    k = g.tensor_array("blk.1.attn_k.weight").reshape(c.n_heads, -1, c.dim)
    check(k.shape[1] == c.head_dim and all(np.array_equal(k[h], weights["wk"][1].reshape(
        c.n_kv_heads, -1, c.dim)[h // 4]) for h in range(c.n_heads)),
        "variant no-optional-keys: each kv head repeated for its 4 query heads")
    check(parse("no-head-count-kv").tensor("blk.0.attn_k.weight").ne == [c.dim, 16],
          "variant no-head-count-kv: attn_k keeps 2 kv heads")
    built = [n for n in gw.VARIANTS if gw.variant(n, weights, c, vocab)]
    check(built == list(gw.VARIANTS), f"all {len(gw.VARIANTS)} variants build")

    print(f"gguf_writer: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
