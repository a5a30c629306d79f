#!/usr/bin/env python3
"""Train the project's sentencepiece BPE tokenizer on tinyshakespeare and
export it in llama2.c's tokenizer.bin format.

Usage (from the repo root):
    /usr/bin/python3 tokenizer/train_tokenizer.py
    /usr/bin/python3 tokenizer/train_tokenizer.py --data ../shared/data/tinyshakespeare.txt --vocab-size 1024

Outputs tokenizer/shakespeare.model, tokenizer/shakespeare.vocab and
tokenizer/shakespeare.tokenizer.bin.

The options are chosen so that a llama2.c-style encoder (dummy-prefix space,
per-codepoint lookup, byte fallback, then greedy merging of the adjacent pair
with the highest-scoring concatenation) reproduces sentencepiece exactly.
"""
import argparse
import os
import struct
import sys
import tempfile

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def train_text(data_path, frac=0.9):
    with open(data_path, "r", encoding="utf-8") as f:
        text = f.read()
    n = int(len(text) * frac)
    return text[:n]


def export_tokenizer_bin(model_path, out_path):
    """llama2.c tokenizer.bin: int32 max_token_length, then per id:
    float32 score, int32 length, bytes (UTF-8, no NUL). '\u2581' -> ' '."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    tokens, scores = [], []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        piece = piece.replace("\u2581", " ")
        tokens.append(piece.encode("utf-8"))
        scores.append(sp.get_score(i))
    max_len = max(len(t) for t in tokens)
    with open(out_path, "wb") as f:
        f.write(struct.pack("<i", max_len))
        for b, s in zip(tokens, scores):
            f.write(struct.pack("<fi", s, len(b)))
            f.write(b)
    return len(tokens), max_len


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/tinyshakespeare.txt",
                    help="corpus path (relative paths are taken from the repo root)")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--prefix", default=os.path.join(HERE, "shakespeare"),
                    help="output prefix (.model/.vocab/.tokenizer.bin)")
    args = ap.parse_args()

    data = args.data if os.path.isabs(args.data) else os.path.join(REPO, args.data)
    text = train_text(data)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt",
                                     delete=False) as tf:
        tf.write(text)
        tmp = tf.name
    try:
        spm.SentencePieceTrainer.train(
            input=tmp,
            model_prefix=args.prefix,
            model_type="bpe",
            vocab_size=args.vocab_size,
            byte_fallback=True,
            add_dummy_prefix=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            character_coverage=1.0,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            # the corpus is one file of short lines; treat every line as a sentence
            input_sentence_size=0,
            max_sentence_length=1 << 20,
            num_threads=2,
            train_extremely_large_corpus=False,
            minloglevel=1,
        )
    finally:
        os.unlink(tmp)
    n, max_len = export_tokenizer_bin(args.prefix + ".model",
                                      args.prefix + ".tokenizer.bin")
    print(f"wrote {args.prefix}.model and {args.prefix}.tokenizer.bin "
          f"({n} pieces, max piece length {max_len} bytes)")


if __name__ == "__main__":
    sys.exit(main())
