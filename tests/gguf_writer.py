#!/usr/bin/python3
"""A small GGUF (version 3) writer and reader, for testing GGUF loaders.

GGUF is ggml's model file (the specification is docs/gguf.md in the ggml repository). All
numbers are little-endian:

    header       char[4] "GGUF", u32 version (3), u64 tensor_count, u64 kv_count
    kv pairs     kv_count times: string key, u32 value type, the value
    tensor infos tensor_count times: string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
                 u64 offset (from the start of the data section, a multiple of the alignment)
    padding      zeros up to the next multiple of general.alignment (32 when the key is absent)
    data         each tensor's bytes at its offset, zero padding between tensors

A string is a u64 byte count and the UTF-8 bytes, no terminator. An array is a u32 element
type, a u64 element count, then the elements. ne[0] is the fastest-varying dimension, so a
row-major (rows, cols) matrix has ne = [cols, rows]. A Q8_0 tensor is stored in blocks of 32
values along a row, each block an fp16 scale d followed by 32 int8 values q (34 bytes); the
value is d * q.

Function-level API:

    write_gguf(path, kvs, tensors, alignment=32)    kvs: [(key, vtype, value)],
                                                    tensors: [Tensor]
    read_gguf(path_or_bytes) -> GGUFFile            header, kvs, tensor infos, data offset
    llama_gguf(weights, config, vocab, ...) -> (kvs, tensors)
                                                    a llama-architecture model as llama.cpp
                                                    names it
    arch_gguf(arch, dim=, layers=, heads=, n_kv_heads=, head_dim=, ffn=, context=, window=,
              vocab=1024, type_name="F32", seed=0, tied=True, ...) -> (kvs, tensors)
                                                    a random-weight llama, qwen2, gemma,
                                                    gemma2 or gpt2 model in the layout of
                                                    llama.cpp's converter
    write_arch(path, arch, **arch_gguf_arguments) -> bytes written
    read_llama2c(path) / read_gqam(path) -> (weights, config, vocab or None)
    variant(name, weights, config, vocab) -> bytes  the deliberately broken files (VARIANTS)

CLI:

    gguf_writer.py write MODEL.bin OUT.gguf [--type f32|f16|q8_0] [-z tokenizer.bin]
                                            [--alignment N] [--untied] [--no-optional]
    gguf_writer.py variants MODEL.bin DIR [-z tokenizer.bin]   every variant into DIR
    gguf_writer.py dump FILE.gguf                              header, keys and tensors
    gguf_writer.py write-arch ARCH OUT.gguf [--type F32|F16|Q8_0|<other ggml type>]
        [--dim N --layers N --heads N --kv-heads N --head-dim N --ffn N --context N
         --window N --vocab N --untied --seed N --rope-base B --rope-freqs --rope-scale F
         --attn-softcap C --final-softcap C --vocab-from FILE.gguf]
                                            a random-weight model of llama, qwen2, gemma,
                                            gemma2 or gpt2 (arch_gguf)

MODEL.bin is a llama2.c checkpoint or a GQAM one (fp32); a GQAM file carries its tokenizer.
"""
import argparse
import os
import struct
import sys
from dataclasses import dataclass, field

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

# Metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, \
    FLOAT64 = range(13)
SCALAR_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I",
                  INT32: "<i", FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q",
                  FLOAT64: "<d"}
VALUE_TYPE_NAMES = {UINT8: "u8", INT8: "i8", UINT16: "u16", INT16: "i16", UINT32: "u32",
                    INT32: "i32", FLOAT32: "f32", BOOL: "bool", STRING: "string",
                    ARRAY: "array", UINT64: "u64", INT64: "i64", FLOAT64: "f64"}

# ggml tensor types: name -> (id, values per block, bytes per block), as ggml defines them.
GGML_TYPES = {
    "F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34), "Q8_1": (9, 32, 36),
    "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110), "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "Q8_K": (15, 256, 292),
    "IQ2_XXS": (16, 256, 66), "IQ2_XS": (17, 256, 74), "IQ3_XXS": (18, 256, 98),
    "IQ1_S": (19, 256, 50), "IQ4_NL": (20, 32, 18), "IQ3_S": (21, 256, 110),
    "IQ2_S": (22, 256, 82), "IQ4_XS": (23, 256, 136), "I8": (24, 1, 1), "I16": (25, 1, 2),
    "I32": (26, 1, 4), "I64": (27, 1, 8), "F64": (28, 1, 8), "IQ1_M": (29, 256, 56),
    "BF16": (30, 1, 2), "TQ1_0": (34, 256, 54), "TQ2_0": (35, 256, 66),
    "MXFP4": (39, 32, 17),
}
TYPE_NAMES = {spec[0]: name for name, spec in GGML_TYPES.items()}

# sentencepiece token types, as llama.cpp stores them in tokenizer.ggml.token_type.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6
SPACE_MARK = "\u2581"  # sentencepiece's visible space


def align(offset, alignment):
    return offset + (alignment - offset % alignment) % alignment


def tensor_bytes(type_name, ne):
    """Bytes of a tensor of this type and shape (ne[0] must be a whole number of blocks)."""
    _, block, size = GGML_TYPES[type_name]
    if ne[0] % block:
        raise ValueError(f"{type_name}: row length {ne[0]} is not a multiple of {block}")
    count = int(np.prod(ne, dtype=np.int64))
    return count // block * size


# ----------------------------------------------------------------------------
# Encoding tensors

def quantize_q8_0(x):
    """float32 values (rows, cols), cols a multiple of 32 -> Q8_0 bytes, as ggml's
    quantize_row_q8_0_ref: per block d = max|x| / 127, q = round(x / d) (half away from zero),
    computed in float32, d stored as fp16."""
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    scaled = blocks * inv[:, None]
    q = (np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))).astype(np.int8)
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", 32)])
    out["d"] = d.astype(np.float16)
    out["qs"] = q
    return out.tobytes()


def dequantize_q8_0(data, count):
    blocks = np.frombuffer(data, dtype=[("d", "<f2"), ("qs", "i1", 32)], count=count // 32)
    return (blocks["d"].astype(np.float32)[:, None] * blocks["qs"].astype(np.float32)).ravel()


def encode_tensor(array, type_name):
    """A float array in a ggml type's bytes (F32, F16 or Q8_0)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    if type_name == "F32":
        return a.astype("<f4").tobytes()
    if type_name == "F16":
        return a.astype("<f2").tobytes()
    if type_name == "Q8_0":
        return quantize_q8_0(a)
    raise ValueError(f"cannot encode {type_name}; give the tensor's bytes instead")


@dataclass
class Tensor:
    name: str
    ne: list        # dimensions, fastest-varying first
    type_name: str  # a key of GGML_TYPES
    data: bytes     # exactly the bytes of the tensor (a truncated file is made by cutting it)


def matrix(name, array, type_name):
    """A row-major (rows, cols) or (n,) float array as a Tensor."""
    ne = list(reversed(array.shape))
    return Tensor(name, ne, type_name, encode_tensor(array, type_name))


# ----------------------------------------------------------------------------
# Writing

def _string(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _value(vtype, value):
    if vtype == STRING:
        return _string(value)
    if vtype == ARRAY:
        elem_type, items = value
        return struct.pack("<IQ", elem_type, len(items)) + b"".join(
            _value(elem_type, item) for item in items)
    return struct.pack(SCALAR_FORMATS[vtype], value)


def gguf_bytes(kvs, tensors, alignment=DEFAULT_ALIGNMENT, version=GGUF_VERSION,
               tensor_count=None, kv_count=None):
    """The bytes of a GGUF file. kvs: [(key, vtype, value)], an ARRAY value being
    (element vtype, [items]). The data section is laid out with `alignment`, which is written
    as general.alignment only if kvs holds it (the caller decides). tensor_count and kv_count
    override the header's counts (for broken files)."""
    out = bytearray(GGUF_MAGIC)
    out += struct.pack("<IQQ", version, len(tensors) if tensor_count is None else tensor_count,
                       len(kvs) if kv_count is None else kv_count)
    for key, vtype, value in kvs:
        out += _string(key) + struct.pack("<I", vtype) + _value(vtype, value)
    offset = 0
    placed = []
    for t in tensors:
        offset = align(offset, alignment)
        placed.append(offset)
        out += _string(t.name) + struct.pack("<I", len(t.ne))
        out += struct.pack(f"<{len(t.ne)}Q", *t.ne)
        out += struct.pack("<IQ", GGML_TYPES[t.type_name][0], offset)
        offset += len(t.data)
    out += bytes(align(len(out), alignment) - len(out))
    data_start = len(out)
    for t, where in zip(tensors, placed):
        out += bytes(data_start + where - len(out))
        out += t.data
    return bytes(out)


def write_gguf(path, kvs, tensors, alignment=DEFAULT_ALIGNMENT, **kwargs):
    data = gguf_bytes(kvs, tensors, alignment, **kwargs)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


# ----------------------------------------------------------------------------
# Reading

@dataclass
class TensorInfo:
    name: str
    ne: list
    type_id: int
    offset: int  # from the start of the data section

    @property
    def type_name(self):
        return TYPE_NAMES.get(self.type_id, f"type {self.type_id}")


@dataclass
class GGUFFile:
    version: int
    kvs: dict            # key -> (vtype, value); arrays as (element vtype, [items])
    tensors: list        # [TensorInfo] in file order
    alignment: int
    data_offset: int     # where the data section starts in the file
    raw: bytes = field(repr=False)

    def value(self, key, default=None):
        return self.kvs[key][1] if key in self.kvs else default

    def tensor(self, name):
        return next(t for t in self.tensors if t.name == name)

    def tensor_data(self, name):
        t = self.tensor(name)
        start = self.data_offset + t.offset
        return self.raw[start:start + tensor_bytes(t.type_name, t.ne)]

    def tensor_array(self, name):
        """F32, F16 or Q8_0 tensor as float32, shaped row-major (ne reversed)."""
        t = self.tensor(name)
        data = self.tensor_data(name)
        count = int(np.prod(t.ne))
        if t.type_name == "F32":
            a = np.frombuffer(data, dtype="<f4")
        elif t.type_name == "F16":
            a = np.frombuffer(data, dtype="<f2").astype(np.float32)
        elif t.type_name == "Q8_0":
            a = dequantize_q8_0(data, count)
        else:
            raise ValueError(f"{name}: cannot decode {t.type_name}")
        return a.reshape(list(reversed(t.ne)))


class _Cursor:
    def __init__(self, raw):
        self.raw, self.pos = raw, 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.raw):
            raise ValueError(f"file ends at {len(self.raw)} inside a field at {self.pos}")
        values = struct.unpack_from(fmt, self.raw, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def string(self):
        n = self.take("<Q")
        if n > len(self.raw) - self.pos:
            raise ValueError(f"string of {n} bytes at {self.pos} runs past the end")
        s = self.raw[self.pos:self.pos + n]
        self.pos += n
        return s.decode("utf-8")

    def value(self, vtype):
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            elem_type, n = self.take("<I"), self.take("<Q")
            if n > len(self.raw) - self.pos:
                raise ValueError(f"array of {n} elements at {self.pos} runs past the end")
            return elem_type, [self.value(elem_type) for _ in range(n)]
        if vtype not in SCALAR_FORMATS:
            raise ValueError(f"unknown value type {vtype}")
        return self.take(SCALAR_FORMATS[vtype])


def read_gguf(source):
    """Parse a GGUF file (a path or its bytes). Tensor data stays in .raw."""
    raw = source if isinstance(source, (bytes, bytearray)) else open(source, "rb").read()
    c = _Cursor(bytes(raw))
    if c.take("4s") != GGUF_MAGIC:
        raise ValueError("no GGUF magic")
    version, n_tensors, n_kvs = c.take("<IQQ")
    kvs = {}
    for _ in range(n_kvs):
        key = c.string()
        vtype = c.take("<I")
        kvs[key] = (vtype, c.value(vtype))
    tensors = []
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.take("<I")
        ne = [c.take("<Q") for _ in range(n_dims)]
        type_id, offset = c.take("<IQ")
        tensors.append(TensorInfo(name, ne, type_id, offset))
    alignment = kvs.get("general.alignment", (UINT32, DEFAULT_ALIGNMENT))[1]
    return GGUFFile(version, kvs, tensors, alignment, align(c.pos, alignment), c.raw)


# ----------------------------------------------------------------------------
# Model sources: llama2.c and GQAM checkpoints, llama2.c tokenizer.bin

@dataclass
class LlamaConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    bos_id: int = 1
    eos_id: int = 2

    @property
    def head_dim(self):
        return self.dim // self.n_heads


@dataclass
class Vocab:
    pieces: list   # bytes, as in tokenizer.bin (a space is a space)
    scores: list   # floats
    max_length: int = 0


def read_tokenizer_bin(data, vocab_size=None):
    """llama2.c tokenizer.bin bytes -> Vocab (all records, or the first vocab_size)."""
    max_length, = struct.unpack_from("<i", data, 0)
    pos, pieces, scores = 4, [], []
    while pos < len(data) and (vocab_size is None or len(pieces) < vocab_size):
        score, n = struct.unpack_from("<fi", data, pos)
        pos += 8
        pieces.append(bytes(data[pos:pos + n]))
        scores.append(score)
        pos += n
    return Vocab(pieces, scores, max_length)


def tokenizer_bin_bytes(vocab):
    """Vocab -> llama2.c tokenizer.bin bytes."""
    max_length = max([vocab.max_length] + [len(p) for p in vocab.pieces])
    out = bytearray(struct.pack("<i", max_length))
    for piece, score in zip(vocab.pieces, vocab.scores):
        out += struct.pack("<fi", score, len(piece)) + piece
    return bytes(out)


# Weight names in llama2.c's order, with their row-major shapes per layer.
WEIGHT_ORDER = ["token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2",
                "w3", "rms_final"]


def _shapes(c):
    D, F, L, V = c.dim, c.hidden_dim, c.n_layers, c.vocab_size
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    return {"token_embedding": (V, D), "rms_att": (L, D), "wq": (L, q, D), "wk": (L, kv, D),
            "wv": (L, kv, D), "wo": (L, D, q), "rms_ffn": (L, D), "w1": (L, F, D),
            "w2": (L, D, F), "w3": (L, F, D), "rms_final": (D,), "classifier": (V, D)}


def _split_weights(floats, c, rope_tables, shared):
    shapes, weights, pos = _shapes(c), {}, 0
    for name in WEIGHT_ORDER:
        n = int(np.prod(shapes[name]))
        weights[name] = floats[pos:pos + n].reshape(shapes[name])
        pos += n
    if rope_tables:
        pos += c.seq_len * c.head_dim  # llama2.c's two precomputed RoPE tables, unused
    if not shared:
        n = c.vocab_size * c.dim
        weights["classifier"] = floats[pos:pos + n].reshape(shapes["classifier"])
        pos += n
    if pos != len(floats):
        raise ValueError(f"{len(floats) - pos} floats left over after the weights")
    return weights


def read_llama2c(path):
    """llama2.c checkpoint -> (weights dict of float32 arrays, LlamaConfig, None)."""
    data = open(path, "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack_from("<7i", data)
    c = LlamaConfig(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len)
    floats = np.frombuffer(data, dtype="<f4", offset=28)
    return _split_weights(floats, c, True, vocab > 0), c, None


def read_gqam(path):
    """fp32 GQAM checkpoint -> (weights, LlamaConfig, Vocab or None)."""
    data = open(path, "rb").read()
    (version, dim, hidden, layers, heads, kv_heads, head_dim, vocab, seq_len, theta, eps, flags,
     bos, eos, _) = struct.unpack_from("<9I2f4I", data, 4)
    if version != 1 or flags & ~1:
        raise ValueError(f"{path}: expected an fp32 GQAM version 1 file (flags {flags})")
    tok_offset, tok_bytes, w_offset, w_bytes = struct.unpack_from("<4Q", data, 64)
    c = LlamaConfig(dim, hidden, layers, heads, kv_heads, vocab, seq_len, theta, eps, bos, eos)
    floats = np.frombuffer(data, dtype="<f4", offset=w_offset, count=w_bytes // 4)
    vocab_obj = None
    if tok_bytes:
        vocab_obj = read_tokenizer_bin(data[tok_offset:tok_offset + tok_bytes], vocab)
    return _split_weights(floats, c, False, bool(flags & 1)), c, vocab_obj


def read_model(path):
    with open(path, "rb") as f:
        magic = f.read(4)
    return read_gqam(path) if magic == b"GQAM" else read_llama2c(path)


# ----------------------------------------------------------------------------
# A llama-architecture model

def _token_type(piece, token_id, c):
    if token_id == 0:
        return TOKEN_UNKNOWN
    if token_id in (c.bos_id, c.eos_id):
        return TOKEN_CONTROL
    if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
        return TOKEN_BYTE
    return TOKEN_NORMAL


def vocab_kvs(vocab, c, model="llama"):
    """The tokenizer.ggml.* keys: pieces with spaces spelled U+2581, as sentencepiece does."""
    tokens = [p.decode("utf-8").replace(" ", SPACE_MARK) for p in vocab.pieces]
    types = [_token_type(p, i, c) for i, p in enumerate(vocab.pieces)]
    return [("tokenizer.ggml.model", STRING, model),
            ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
            ("tokenizer.ggml.scores", ARRAY, (FLOAT32, list(vocab.scores))),
            ("tokenizer.ggml.token_type", ARRAY, (INT32, types)),
            ("tokenizer.ggml.unknown_token_id", UINT32, 0),
            ("tokenizer.ggml.bos_token_id", UINT32, c.bos_id),
            ("tokenizer.ggml.eos_token_id", UINT32, c.eos_id)]


FILE_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7}


def llama_gguf(weights, c, vocab=None, type_name="F32", alignment=DEFAULT_ALIGNMENT,
               write_alignment=None, output="tied", optional_keys=True, name="llama"):
    """(kvs, tensors) of a llama model as llama.cpp names it. Matrices get type_name, the
    RMSNorm vectors stay F32 (as llama-quantize leaves them). output: "tied" writes no
    output.weight, "copy" writes the embedding again (as llama.cpp's llama2.c converter does),
    "untied" writes weights["classifier"] (or, lacking one, a different matrix). optional_keys
    False leaves out attention.head_count_kv and rope.freq_base. general.alignment is written
    when write_alignment is true, or by default when alignment differs from 32."""
    if write_alignment is None:
        write_alignment = alignment != DEFAULT_ALIGNMENT
    kvs = [("general.architecture", STRING, "llama"),
           ("general.name", STRING, name),
           ("general.file_type", UINT32, FILE_TYPES.get(type_name, 0))]
    if type_name != "F32":
        kvs.append(("general.quantization_version", UINT32, 2))
    if write_alignment:
        kvs.append(("general.alignment", UINT32, alignment))
    kvs += [("llama.context_length", UINT32, c.seq_len),
            ("llama.embedding_length", UINT32, c.dim),
            ("llama.block_count", UINT32, c.n_layers),
            ("llama.feed_forward_length", UINT32, c.hidden_dim),
            ("llama.rope.dimension_count", UINT32, c.head_dim),
            ("llama.attention.head_count", UINT32, c.n_heads)]
    if optional_keys:
        kvs += [("llama.attention.head_count_kv", UINT32, c.n_kv_heads),
                ("llama.rope.freq_base", FLOAT32, c.rope_theta)]
    kvs.append(("llama.attention.layer_norm_rms_epsilon", FLOAT32, c.norm_eps))
    if vocab is not None:
        kvs += vocab_kvs(vocab, c)

    def m(tensor_name, array):
        return matrix(tensor_name, array, type_name)

    def v(tensor_name, array):
        return matrix(tensor_name, array, "F32")

    w = weights
    tensors = [m("token_embd.weight", w["token_embedding"]),
               v("output_norm.weight", w["rms_final"])]
    if output == "copy":
        tensors.append(m("output.weight", w["token_embedding"]))
    elif output == "untied":
        classifier = w.get("classifier")
        if classifier is None or np.array_equal(classifier, w["token_embedding"]):
            classifier = np.ascontiguousarray(w["token_embedding"][::-1])  # rows reversed
        tensors.append(m("output.weight", classifier))
    elif output != "tied":
        raise ValueError(f"output must be tied, copy or untied, not {output!r}")
    for i in range(c.n_layers):
        b = f"blk.{i}."
        tensors += [v(b + "attn_norm.weight", w["rms_att"][i]),
                    m(b + "attn_q.weight", w["wq"][i]),
                    m(b + "attn_k.weight", w["wk"][i]),
                    m(b + "attn_v.weight", w["wv"][i]),
                    m(b + "attn_output.weight", w["wo"][i]),
                    v(b + "ffn_norm.weight", w["rms_ffn"][i]),
                    m(b + "ffn_gate.weight", w["w1"][i]),
                    m(b + "ffn_down.weight", w["w2"][i]),
                    m(b + "ffn_up.weight", w["w3"][i])]
    return kvs, tensors


# ----------------------------------------------------------------------------
# Random-weight models of other architectures, in llama.cpp's converter layout

# Sizes when arch_gguf is not told otherwise: those of the golden files in
# ../shared/golden/arch (gemma2 needs 26, 42 or 46 layers for llama.cpp to load it).
ARCH_DEFAULTS = {
    "llama": dict(dim=64, layers=2, heads=4, n_kv_heads=2, ffn=192, context=256,
                  rope_base=10000.0, eps=1e-5),
    "qwen2": dict(dim=64, layers=2, heads=8, n_kv_heads=2, ffn=176, context=256,
                  rope_base=1e6, eps=1e-5),
    "gemma": dict(dim=64, layers=2, heads=4, n_kv_heads=1, head_dim=32, ffn=160, context=256,
                  rope_base=None, eps=1e-5),
    "gemma2": dict(dim=32, layers=26, heads=4, n_kv_heads=2, head_dim=16, ffn=64, context=256,
                   window=6, rope_base=None, eps=1e-6),
    "gpt2": dict(dim=64, layers=2, heads=4, n_kv_heads=None, ffn=256, context=128,
                 rope_base=None, eps=1e-5),
}
ARCHS = tuple(ARCH_DEFAULTS)

# llama.cpp's llama_ftype of a file whose matrices are all of one type.
FILE_TYPES.update({"Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K": 11,
                   "Q4_K": 14, "Q5_K": 16, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30,
                   "BF16": 32, "TQ1_0": 36, "TQ2_0": 37})


def encode_any(array, type_name):
    """encode_tensor, extended to every ggml type through tests/ggml_quants.py's quantize
    (imported only when a type other than F32, F16 and Q8_0 is asked for)."""
    if type_name in ("F32", "F16", "Q8_0"):
        return encode_tensor(array, type_name)
    try:
        import ggml_quants
    except ImportError as e:
        raise RuntimeError(f"writing {type_name} tensors needs tests/ggml_quants.py "
                           f"(quantize), which is not importable ({e})") from None
    return bytes(ggml_quants.quantize(np.ascontiguousarray(array, dtype=np.float32),
                                      type_name))


def matrix_type(type_name, cols):
    """The type a matrix with rows of `cols` values gets in a file of type_name: type_name
    when the rows are whole blocks of it, else Q8_0 when they are whole blocks of 32, else F16
    (llama-quantize also falls back to a type the row length allows)."""
    if type_name not in GGML_TYPES:
        raise ValueError(f"unknown ggml type {type_name!r}")
    if cols % GGML_TYPES[type_name][1] == 0:
        return type_name
    return "Q8_0" if cols % 32 == 0 else "F16"


def sentencepiece_style_vocab(size):
    """[(piece, score, token type)] of a llama-style vocabulary: <unk>, <s>, </s>, the 256
    byte tokens <0xNN>, then unique text pieces (U+2581 is the space) with falling scores."""
    if size < 260:
        raise ValueError(f"a vocabulary needs at least 260 pieces, not {size}")
    out = [("<unk>", 0.0, TOKEN_UNKNOWN), ("<s>", 0.0, TOKEN_CONTROL),
           ("</s>", 0.0, TOKEN_CONTROL)]
    out += [(f"<0x{b:02X}>", 0.0, TOKEN_BYTE) for b in range(256)]
    lower = "etaoinshrdlcumwfgypbvkjxqz"
    singles = list(lower) + list(lower.upper()) + list("0123456789.,;:!?'\"-()[]/&*#%")

    def pieces():
        yield SPACE_MARK
        for ch in singles:
            yield ch
            yield SPACE_MARK + ch
        length = 2
        while True:
            for idx in np.ndindex(*([len(lower)] * length)):
                word = "".join(lower[i] for i in idx)
                yield SPACE_MARK + word
                yield word
            length += 1

    for rank, piece in enumerate(pieces()):
        if len(out) == size:
            break
        out.append((piece, -float(rank), TOKEN_NORMAL))
    return out


def arch_vocab_kvs(arch, size=1024, vocab_from=None):
    """The tokenizer.* keys of an arch_gguf file: copied from the GGUF file vocab_from, or a
    generated sentencepiece-style vocabulary of `size` pieces (BOS 1, EOS 2, UNK 0)."""
    if vocab_from is not None:
        g = read_gguf(vocab_from)
        kvs = [(k, t, v) for k, (t, v) in g.kvs.items() if k.startswith("tokenizer.")]
        if not kvs:
            raise ValueError(f"{vocab_from} holds no tokenizer.* keys")
        return kvs
    vocab = sentencepiece_style_vocab(size)
    kvs = [("tokenizer.ggml.model", STRING, "llama"),
           ("tokenizer.ggml.tokens", ARRAY, (STRING, [p for p, _, _ in vocab])),
           ("tokenizer.ggml.scores", ARRAY, (FLOAT32, [s for _, s, _ in vocab])),
           ("tokenizer.ggml.token_type", ARRAY, (INT32, [t for _, _, t in vocab])),
           ("tokenizer.ggml.bos_token_id", UINT32, 1),
           ("tokenizer.ggml.eos_token_id", UINT32, 2),
           ("tokenizer.ggml.unknown_token_id", UINT32, 0),
           ("tokenizer.ggml.padding_token_id", UINT32, 0xFFFFFFFF)]
    if arch in ("gemma", "gemma2"):
        kvs.append(("tokenizer.ggml.add_space_prefix", BOOL, False))
    return kvs


def llama3_rope_factors(base, n_rot, factor=32.0, low=1.0, high=4.0, original_context=8192):
    """Llama 3's per-pair frequency divisors (rope_freqs.weight), as llama.cpp's converter
    derives them from rope_scaling: 1 for wavelengths under original_context / high, `factor`
    above original_context / low, a smooth blend between."""
    freqs = 1.0 / (np.float32(base) ** (np.arange(0, n_rot, 2, dtype=np.float32) / n_rot))
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < original_context / high:
            out.append(1.0)
        elif wavelen > original_context / low:
            out.append(factor)
        else:
            smooth = (original_context / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def arch_gguf(arch, dim=None, layers=None, heads=None, n_kv_heads=None, head_dim=None,
              ffn=None, context=None, window=None, vocab=1024, type_name="F32", seed=0,
              tied=None, rope_base=None, rope_freqs=None, rope_scale=None, attn_softcap=50.0,
              final_softcap=30.0, eps=None, vocab_from=None, name=None):
    """(kvs, tensors) of a random-weight model of `arch` (llama, qwen2, gemma, gemma2, gpt2),
    named and shaped as llama.cpp's convert_hf_to_gguf.py writes that architecture.

    Sizes default to ARCH_DEFAULTS[arch]. n_kv_heads: key/value heads (MHA when equal to
    heads, MQA at 1). head_dim: width of a query/key/value head; written as
    attention.key_length/value_length (llama, gemma, gemma2: gemma's is always written; qwen2
    and gpt2 need dim / heads). window: gemma2's attention.sliding_window. vocab: pieces of the
    generated vocabulary, unless vocab_from names a GGUF file to copy tokenizer.* from.
    type_name: the type of every matrix (F32, F16, Q8_0, or any ggml type that
    tests/ggml_quants.py quantizes; rows that are not whole blocks fall back, see matrix_type);
    norms, biases and rope_freqs stay F32. tied: no output.weight, the embedding is the
    classifier (default; gemma and gemma2 allow nothing else). gpt2 always has output.weight:
    tied writes a copy of the embedding, as its converter does, untied a different matrix.
    rope_base: rope.freq_base (written when given or the architecture's default has one).
    rope_freqs (llama): True for Llama 3's factors (llama3_rope_factors), or an array of
    head_dim / 2 divisors, written as rope_freqs.weight. rope_scale: a linear
    rope.scaling.factor (positions divided by it). attn_softcap, final_softcap: gemma2's
    soft-caps. seed: the weights; the same arguments give the same bytes.

    Weights are drawn so that logits have a standard deviation of about 4 (the embedding and
    classifier at 4 / sqrt(dim), matrices at 1.2 / sqrt(fan_in), norms 1 + 0.1 N, biases
    0.05 N; gemma's embedding at 0.5 / sqrt(dim) and output_norm times 8, as its input is
    scaled by sqrt(dim)), so that greedy choices are not near-ties and the layers, not the
    embedding alone, decide them."""
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"architecture {arch!r}: arch_gguf writes {', '.join(ARCHS)}")
    d = ARCH_DEFAULTS[arch]
    D = int(dim if dim is not None else d["dim"])
    L = int(layers if layers is not None else d["layers"])
    H = int(heads if heads is not None else d["heads"])
    KVH = n_kv_heads if n_kv_heads is not None else (d["n_kv_heads"] or H)
    KVH = int(KVH)
    if head_dim is None:  # the default's own head_dim only while dim and heads are default
        head_dim = d.get("head_dim") if dim is None and heads is None else None
    HD = int(head_dim if head_dim is not None else D // H)
    F = int(ffn if ffn is not None else d["ffn"])
    ctx = int(context if context is not None else d["context"])
    eps = float(eps if eps is not None else d["eps"])
    if H % KVH:
        raise ValueError(f"n_kv_heads {KVH} does not divide heads {H}")
    if arch in ("qwen2", "gpt2") and HD * H != D:
        raise ValueError(f"{arch}: head_dim must be dim / heads ({D} / {H})")
    if tied is None:
        tied = True
    if not tied and arch in ("gemma", "gemma2"):
        raise ValueError(f"{arch}: llama.cpp always uses the embedding as the classifier")
    if rope_freqs is not None and rope_freqs is not False and arch != "llama":
        raise ValueError("rope_freqs is Llama 3's, for the llama architecture")
    if rope_scale is not None and arch == "gpt2":
        raise ValueError("gpt2 has no RoPE")
    if window is not None and arch != "gemma2":
        raise ValueError("window is gemma2's sliding window")
    base = rope_base if rope_base is not None else d["rope_base"]

    rng = np.random.default_rng(seed)
    gauss = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731

    def mat(rows, cols):
        return gauss(rows, cols) * np.float32(1.2 / np.sqrt(cols))

    def norm_w():
        return np.float32(1) + np.float32(0.1) * gauss(D)

    def bias(n):
        return np.float32(0.05) * gauss(n)

    if vocab_from is not None:
        vocab_keys = arch_vocab_kvs(arch, vocab_from=vocab_from)
        V = len(dict((k, v) for k, _, v in vocab_keys)["tokenizer.ggml.tokens"][1])
    else:
        vocab_keys = arch_vocab_kvs(arch, int(vocab))
        V = int(vocab)
    # gemma multiplies the embedding by sqrt(dim): drawn at 0.5 / sqrt(dim), its rows enter
    # the residual stream below the size of the layers' outputs (the tied classifier would
    # otherwise mostly predict the input token), and output_norm at about 8 brings the logits
    # to the same scale as the other architectures'.
    gemma_like = arch in ("gemma", "gemma2")
    embd = gauss(V, D) * np.float32((0.5 if gemma_like else 4) / np.sqrt(D))

    p = arch + "."
    kvs = [("general.architecture", STRING, arch),
           ("general.name", STRING, name or f"random {arch}"),
           (p + "context_length", UINT32, ctx),
           (p + "embedding_length", UINT32, D),
           (p + "block_count", UINT32, L),
           (p + "feed_forward_length", UINT32, F),
           (p + "attention.head_count", UINT32, H)]
    if arch != "gpt2" or KVH != H:
        kvs.append((p + "attention.head_count_kv", UINT32, KVH))
    if arch == "gpt2":
        kvs.append((p + "attention.layer_norm_epsilon", FLOAT32, eps))
    else:
        kvs.append((p + "attention.layer_norm_rms_epsilon", FLOAT32, eps))
    if arch in ("gemma", "gemma2") or (arch == "llama" and HD * H != D) or \
            (arch == "llama" and head_dim is not None):
        kvs += [(p + "attention.key_length", UINT32, HD),
                (p + "attention.value_length", UINT32, HD)]
    if arch == "gemma2":
        kvs += [(p + "attn_logit_softcapping", FLOAT32, float(attn_softcap)),
                (p + "final_logit_softcapping", FLOAT32, float(final_softcap)),
                (p + "attention.sliding_window", UINT32,
                 int(window if window is not None else d["window"]))]
    if base is not None:
        kvs.append((p + "rope.freq_base", FLOAT32, float(base)))
    if arch == "llama":
        kvs += [(p + "rope.dimension_count", UINT32, HD), (p + "vocab_size", UINT32, V)]
    if rope_scale is not None:
        kvs += [(p + "rope.scaling.type", STRING, "linear"),
                (p + "rope.scaling.factor", FLOAT32, float(rope_scale))]
    kvs.append(("general.file_type", UINT32, FILE_TYPES.get(type_name, 0)))
    if type_name != "F32":
        kvs.append(("general.quantization_version", UINT32, 2))
    kvs += vocab_keys

    def m(tensor_name, array):
        kind = matrix_type(type_name, array.shape[-1])
        return Tensor(tensor_name, list(reversed(array.shape)), kind, encode_any(array, kind))

    def v(tensor_name, array):
        return matrix(tensor_name, array, "F32")

    tensors = [m("token_embd.weight", embd)]
    if arch == "gpt2":
        tensors.append(m("position_embd.weight", gauss(ctx, D) * np.float32(0.1)))
    tensors.append(v("output_norm.weight", norm_w() * np.float32(8 if gemma_like else 1)))
    if arch == "gpt2":
        tensors.append(v("output_norm.bias", bias(D)))
    if arch == "gpt2" and tied:
        tensors.append(m("output.weight", embd))
    elif not tied:
        tensors.append(m("output.weight", gauss(V, D) * np.float32(4 / np.sqrt(D))))
    if rope_freqs is True:
        tensors.append(v("rope_freqs.weight", llama3_rope_factors(base, HD)))
    elif rope_freqs is not None and rope_freqs is not False:
        factors = np.asarray(rope_freqs, dtype=np.float32)
        if factors.shape != (HD // 2,):
            raise ValueError(f"rope_freqs needs {HD // 2} values, not {factors.shape}")
        tensors.append(v("rope_freqs.weight", factors))
    q_rows, kv_rows = H * HD, KVH * HD
    for i in range(L):
        b = f"blk.{i}."
        if arch == "gpt2":
            tensors += [v(b + "attn_norm.weight", norm_w()), v(b + "attn_norm.bias", bias(D)),
                        m(b + "attn_qkv.weight", mat(q_rows + 2 * kv_rows, D)),
                        v(b + "attn_qkv.bias", bias(q_rows + 2 * kv_rows)),
                        m(b + "attn_output.weight", mat(D, q_rows)),
                        v(b + "attn_output.bias", bias(D)),
                        v(b + "ffn_norm.weight", norm_w()), v(b + "ffn_norm.bias", bias(D)),
                        m(b + "ffn_up.weight", mat(F, D)), v(b + "ffn_up.bias", bias(F)),
                        m(b + "ffn_down.weight", mat(D, F)), v(b + "ffn_down.bias", bias(D))]
            continue
        tensors += [v(b + "attn_norm.weight", norm_w()),
                    m(b + "attn_q.weight", mat(q_rows, D)),
                    m(b + "attn_k.weight", mat(kv_rows, D)),
                    m(b + "attn_v.weight", mat(kv_rows, D))]
        if arch == "qwen2":
            tensors += [v(b + "attn_q.bias", bias(q_rows)), v(b + "attn_k.bias", bias(kv_rows)),
                        v(b + "attn_v.bias", bias(kv_rows))]
        tensors.append(m(b + "attn_output.weight", mat(D, q_rows)))
        if arch == "gemma2":
            tensors.append(v(b + "post_attention_norm.weight", norm_w()))
        tensors += [v(b + "ffn_norm.weight", norm_w()),
                    m(b + "ffn_gate.weight", mat(F, D)),
                    m(b + "ffn_up.weight", mat(F, D)),
                    m(b + "ffn_down.weight", mat(D, F))]
        if arch == "gemma2":
            tensors.append(v(b + "post_ffw_norm.weight", norm_w()))
    return kvs, tensors


def write_arch(path, arch, **kwargs):
    """arch_gguf's model written to path; returns the file's size."""
    return write_gguf(path, *arch_gguf(arch, **kwargs))


# ----------------------------------------------------------------------------
# Deliberately broken or unusual files

REFUSED_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                 "IQ4_NL", "BF16"]


def _with_refused_type(tensors, type_name):
    """blk.0.ffn_gate.weight turned into type_name, with bytes of the size that type needs."""
    out = []
    for t in tensors:
        if t.name == "blk.0.ffn_gate.weight":
            _, block, _ = GGML_TYPES[type_name]
            ne = list(t.ne)
            if ne[0] % block:  # k-quants need rows that are whole 256-value blocks
                ne = [block, int(np.prod(ne)) // block] if int(np.prod(ne)) % block == 0 \
                    else [block, 1]
            size = tensor_bytes(type_name, ne)
            t = Tensor(t.name, ne, type_name, (bytes(range(256)) * (size // 256 + 1))[:size])
        out.append(t)
    return out


def _replace_kv(kvs, key, vtype, value):
    return [(k, vtype, value) if k == key else (k, t, v) for k, t, v in kvs]


def variant(name, weights, c, vocab):
    """The bytes of one file of VARIANTS."""
    def build(**kw):
        return llama_gguf(weights, c, vocab, **kw)

    if name in ("f32", "f16", "q8_0"):
        return gguf_bytes(*build(type_name=name.upper()))
    if name == "untied":
        return gguf_bytes(*build(output="untied"))
    if name == "output-copy":
        return gguf_bytes(*build(output="copy"))
    if name == "no-optional-keys":
        # Without head_count_kv a reader takes head_count kv heads, so the kv heads are
        # duplicated into an MHA model that computes exactly what the GQA one does.
        mha = dict(weights)
        group = c.n_heads // c.n_kv_heads
        for key in ("wk", "wv"):
            heads = weights[key].reshape(c.n_layers, c.n_kv_heads, c.head_dim, c.dim)
            mha[key] = np.repeat(heads, group, axis=1).reshape(c.n_layers, -1, c.dim)
        mha_config = LlamaConfig(**{**c.__dict__, "n_kv_heads": c.n_heads})
        return gguf_bytes(*llama_gguf(mha, mha_config, vocab, optional_keys=False))
    if name == "no-head-count-kv":
        return gguf_bytes(*build(optional_keys=False))
    if name == "align64":
        return gguf_bytes(*build(alignment=64), alignment=64)
    if name == "align48":
        return gguf_bytes(*build(alignment=48), alignment=48)
    if name == "align32-explicit":
        return gguf_bytes(*build(write_alignment=True))
    if name.startswith("type-"):
        kvs, tensors = build()
        return gguf_bytes(kvs, _with_refused_type(tensors, name[5:].upper()))
    if name == "truncated":
        data = gguf_bytes(*build())
        return data[:len(data) - 1000]
    if name == "truncated-header":
        return gguf_bytes(*build())[:20]
    if name == "array-length-lie":
        # tokenizer.ggml.scores claims 2^40 floats in a file far shorter
        kvs, tensors = build()
        data = bytearray(gguf_bytes(kvs, tensors))
        needle = _string("tokenizer.ggml.scores") + struct.pack("<IIQ", ARRAY, FLOAT32,
                                                               c.vocab_size)
        at = data.index(needle) + len(needle) - 8
        struct.pack_into("<Q", data, at, 1 << 40)
        return bytes(data)
    if name == "string-length-lie":
        kvs, tensors = build()
        data = bytearray(gguf_bytes(kvs, tensors))
        needle = _string("general.name") + struct.pack("<I", STRING)
        at = data.index(needle) + len(needle)
        struct.pack_into("<Q", data, at, (1 << 64) - 2)
        return bytes(data)
    if name == "tokenizer-gpt2":
        kvs, tensors = build()
        return gguf_bytes(_replace_kv(kvs, "tokenizer.ggml.model", STRING, "gpt2"), tensors)
    if name == "arch-falcon":
        kvs, tensors = build()
        return gguf_bytes(_replace_kv(kvs, "general.architecture", STRING, "falcon"), tensors)
    if name == "version2":
        return gguf_bytes(*build(), version=2)
    if name == "bad-magic":
        return b"GGUX" + gguf_bytes(*build())[4:]
    if name == "nan-weight":
        kvs, tensors = build()
        out = []
        for t in tensors:
            if t.name == "blk.1.ffn_up.weight":
                data = bytearray(t.data)
                data[12:16] = struct.pack("<f", float("nan"))  # value 3 of the matrix
                t = Tensor(t.name, t.ne, t.type_name, bytes(data))
            out.append(t)
        return gguf_bytes(kvs, out)
    if name == "missing-tensor":
        kvs, tensors = build()
        return gguf_bytes(kvs, [t for t in tensors if t.name != "blk.1.attn_v.weight"])
    if name == "wrong-shape":
        kvs, tensors = build()
        for t in tensors:
            if t.name == "blk.0.attn_k.weight":
                t.ne = [t.ne[0], t.ne[1] * 2]
                t.data = t.data * 2
        return gguf_bytes(kvs, tensors)
    if name == "offset-past-end":
        kvs, tensors = build()
        data = bytearray(gguf_bytes(kvs, tensors))
        gf = read_gguf(bytes(data))
        # the last tensor info's offset field: right before the data section's padding
        info_end = _tensor_info_end(bytes(data))
        struct.pack_into("<Q", data, info_end - 8, (1 << 63) + gf.tensors[-1].offset)
        return bytes(data)
    if name == "huge-dims":
        kvs, tensors = build()
        for t in tensors:
            if t.name == "output_norm.weight":
                t.ne = [1 << 32, 1 << 32]
        return gguf_bytes(kvs, tensors)
    if name == "rope-dim-mismatch":
        kvs, tensors = build()
        return gguf_bytes(_replace_kv(kvs, "llama.rope.dimension_count", UINT32,
                                      c.head_dim // 2), tensors)
    if name == "no-vocab":
        return gguf_bytes(*llama_gguf(weights, c, None))
    if name == "tensor-count-lie":
        kvs, tensors = build()
        return gguf_bytes(kvs, tensors, tensor_count=1 << 62)
    raise ValueError(f"unknown variant {name!r}")


def _tensor_info_end(data):
    """Byte position just after the last tensor info."""
    c = _Cursor(data)
    c.take("4s")
    _, n_tensors, n_kvs = c.take("<IQQ")
    for _ in range(n_kvs):
        c.string()
        c.value(c.take("<I"))
    for _ in range(n_tensors):
        c.string()
        n_dims = c.take("<I")
        c.take(f"<{n_dims}Q")
        c.take("<IQ")
    return c.pos


# name -> what a loader should do with it
VARIANTS = {
    "f32": "load: every tensor F32, no output.weight (tied classifier)",
    "f16": "load: matrices F16, norms F32",
    "q8_0": "load: matrices Q8_0, norms F32",
    "untied": "load: output.weight differs from token_embd.weight",
    "output-copy": "load: output.weight a copy of the embedding, as llama.cpp's converter writes",
    "no-optional-keys": "load: no head_count_kv (so head_count) and no rope.freq_base (so "
                        "10000); the kv heads duplicated into MHA, the same logits as GQA",
    "no-head-count-kv": "refuse: no head_count_kv, so 8 kv heads, but attn_k has 2 heads' rows",
    "align64": "load: general.alignment 64",
    "align48": "load: general.alignment 48 (a multiple of 8, as the spec asks, not a power of two)",
    "align32-explicit": "load: general.alignment written as 32",
    **{f"type-{t.lower()}": f"refuse: blk.0.ffn_gate.weight is {t}" for t in REFUSED_TYPES},
    "truncated": "refuse: the last tensor is cut short",
    "truncated-header": "refuse: the file ends inside the header",
    "array-length-lie": "refuse: tokenizer.ggml.scores claims 2^40 elements",
    "string-length-lie": "refuse: general.name claims 2^64-2 bytes",
    "tokenizer-gpt2": "refuse: a gpt2 vocabulary without its merges",
    "arch-falcon": "refuse: general.architecture is falcon",
    "version2": "refuse (or read as v2): version 2",
    "bad-magic": "refuse: no GGUF magic",
    "missing-tensor": "refuse: blk.1.attn_v.weight is absent",
    "nan-weight": "refuse: a NaN in blk.1.ffn_up.weight",
    "wrong-shape": "refuse: blk.0.attn_k.weight has twice the rows",
    "offset-past-end": "refuse: the last tensor's offset is near 2^63",
    "huge-dims": "refuse: output_norm.weight claims 2^32 x 2^32 values",
    "rope-dim-mismatch": "refuse: rope.dimension_count is half of head_dim",
    "no-vocab": "load without a tokenizer (no tokenizer.ggml.* keys)",
    "tensor-count-lie": "refuse: tensor_count is 2^62",
}


def write_variants(model_path, out_dir, tokenizer_path=None):
    weights, c, vocab = read_model(model_path)
    if tokenizer_path:
        vocab = read_tokenizer_bin(open(tokenizer_path, "rb").read())
    if vocab is None:
        raise SystemExit("gguf_writer: the model has no tokenizer; pass one with -z")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in VARIANTS:
        path = os.path.join(out_dir, name + ".gguf")
        with open(path, "wb") as f:
            f.write(variant(name, weights, c, vocab))
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------
# Command line

def dump(path):
    g = read_gguf(path)
    print(f"{path}: GGUF v{g.version}, {len(g.kvs)} keys, {len(g.tensors)} tensors, "
          f"alignment {g.alignment}, data at {g.data_offset}, file {len(g.raw)} bytes")
    for key, (vtype, value) in g.kvs.items():
        if vtype == ARRAY:
            elem_type, items = value
            shown = f"[{VALUE_TYPE_NAMES[elem_type]} x {len(items)}] {items[:4]!r}..."
        else:
            shown = repr(value)
        print(f"  {key} ({VALUE_TYPE_NAMES.get(vtype, vtype)}) = {shown}")
    for t in g.tensors:
        print(f"  tensor {t.name} {t.type_name} ne={t.ne} offset={t.offset}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write a llama GGUF from a llama2.c or GQAM checkpoint")
    w.add_argument("model")
    w.add_argument("out")
    w.add_argument("--type", default="f32", choices=["f32", "f16", "q8_0"])
    w.add_argument("-z", "--tokenizer", help="llama2.c tokenizer.bin (a GQAM file has one)")
    w.add_argument("--alignment", type=int, default=DEFAULT_ALIGNMENT)
    w.add_argument("--untied", action="store_true", help="write a different output.weight")
    w.add_argument("--no-optional", action="store_true",
                   help="leave out attention.head_count_kv and rope.freq_base")
    v = sub.add_parser("variants", help="write every test variant into a directory")
    v.add_argument("model")
    v.add_argument("out_dir")
    v.add_argument("-z", "--tokenizer")
    d = sub.add_parser("dump", help="print a GGUF file's header, keys and tensors")
    d.add_argument("file")
    a = sub.add_parser("write-arch", help="write a random-weight model of an architecture")
    a.add_argument("arch", choices=ARCHS)
    a.add_argument("out")
    a.add_argument("--type", default="F32", type=str.upper,
                   help="matrices' ggml type: F32, F16, Q8_0, or another ggml type "
                        "(through tests/ggml_quants.py)")
    for flag in ("dim", "layers", "heads", "kv-heads", "head-dim", "ffn", "context", "window",
                 "vocab"):
        a.add_argument("--" + flag, type=int)
    a.add_argument("--untied", action="store_true", help="write a separate output.weight")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--rope-base", type=float)
    a.add_argument("--rope-freqs", action="store_true",
                   help="llama: Llama 3's rope_freqs.weight")
    a.add_argument("--rope-scale", type=float, help="linear rope.scaling.factor")
    a.add_argument("--attn-softcap", type=float, default=50.0)
    a.add_argument("--final-softcap", type=float, default=30.0)
    a.add_argument("--vocab-from", help="copy tokenizer.* keys from this GGUF file")
    args = ap.parse_args(argv)

    if args.command == "dump":
        dump(args.file)
        return 0
    if args.command == "write-arch":
        if args.type not in GGML_TYPES:
            raise SystemExit(f"gguf_writer: --type {args.type} is not a ggml type")
        try:
            kvs, tensors = arch_gguf(
                args.arch, dim=args.dim, layers=args.layers, heads=args.heads,
                n_kv_heads=args.kv_heads, head_dim=args.head_dim, ffn=args.ffn,
                context=args.context, window=args.window,
                vocab=args.vocab if args.vocab is not None else 1024, type_name=args.type,
                seed=args.seed, tied=not args.untied, rope_base=args.rope_base,
                rope_freqs=True if args.rope_freqs else None, rope_scale=args.rope_scale,
                attn_softcap=args.attn_softcap, final_softcap=args.final_softcap,
                vocab_from=args.vocab_from)
        except (ValueError, RuntimeError) as e:
            raise SystemExit(f"gguf_writer: {e}")
        size = write_gguf(args.out, kvs, tensors)
        counts = {}
        for t in tensors:
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        print(f"wrote {args.out}: {size} bytes, {args.arch}, {len(tensors)} tensors: "
              + ", ".join(f"{n} {k}" for k, n in counts.items()))
        return 0
    if args.command == "variants":
        for path in write_variants(args.model, args.out_dir, args.tokenizer):
            print(path)
        return 0
    weights, c, vocab = read_model(args.model)
    if args.tokenizer:
        vocab = read_tokenizer_bin(open(args.tokenizer, "rb").read())
    if args.alignment <= 0 or args.alignment % 8:
        raise SystemExit(f"gguf_writer: --alignment {args.alignment} must be a positive "
                         "multiple of 8")
    kvs, tensors = llama_gguf(weights, c, vocab, type_name=args.type.upper(),
                              alignment=args.alignment,
                              output="untied" if args.untied else "tied",
                              optional_keys=not args.no_optional)
    size = write_gguf(args.out, kvs, tensors, alignment=args.alignment)
    print(f"wrote {args.out}: {size} bytes, {len(tensors)} tensors, {args.type}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
