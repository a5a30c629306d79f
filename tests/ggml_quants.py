#!/usr/bin/python3
"""numpy quantizers and dequantizers for ggml's block types, for writing test GGUF files and
computing reference values.

    dequantize(data, type_name, count) -> np.ndarray   float32, `count` values in file order
    quantize(array, type_name) -> bytes                float32 array, last dimension a multiple
                                                       of the block size, taken row-major
    BLOCKS = {type_name: (ggml type id, values per block, bytes per block)}

Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K. All numbers are
little-endian; "fp16" is an IEEE half. Each type's layout is in its dequantizer's docstring.

dequantize does ggml's dequantize_row_* arithmetic in float32, operation for operation (ggml
builds these functions without fused multiply-add), so its floats are bit-identical to ggml's.
quantize for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and Q8_K follows quantize_row_*_ref exactly and
gives ggml's bytes. For the K-quants it is plainer than ggml's search for the best scales: a
per-sub-block min/max (Q2_K, Q4_K, Q5_K) or absolute maximum (Q3_K, Q6_K), the sub-block scales
quantized against the largest of the super-block, then each value rounded to the nearest level
of its final scale. The blocks are valid and decode close to the input; the bytes are not ggml's.

`python3 tests/ggml_quants.py` round-trips random data through every type and checks the RMS
error against per-type bounds.
"""
import sys

import numpy as np

QK = 32     # values per block of the simple types
QK_K = 256  # values per super-block of the K-quants

BLOCKS = {
    "Q4_0": (2, QK, 18), "Q4_1": (3, QK, 20), "Q5_0": (6, QK, 22), "Q5_1": (7, QK, 24),
    "Q8_0": (8, QK, 34), "Q8_1": (9, QK, 36), "Q2_K": (10, QK_K, 84), "Q3_K": (11, QK_K, 110),
    "Q4_K": (12, QK_K, 144), "Q5_K": (13, QK_K, 176), "Q6_K": (14, QK_K, 210),
    "Q8_K": (15, QK_K, 292),
}

F32 = np.float32


# ----------------------------------------------------------------------------
# Helpers

def _block_bytes(data, type_name, count):
    """The blocks of `count` values as a (blocks, bytes per block) uint8 array."""
    _, n, size = BLOCKS[type_name]
    if count % n:
        raise ValueError(f"{type_name}: {count} values is not a whole number of {n}-value blocks")
    nb = count // n
    if len(data) < nb * size:
        raise ValueError(f"{type_name}: {count} values need {nb * size} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, count=nb * size).reshape(nb, size)


def _fp16(b, at):
    """The fp16 at byte offset `at` of every block, as float32 (shape (blocks, 1))."""
    return np.ascontiguousarray(b[:, at:at + 2]).view("<f2").astype(F32)


def _to_fp16_bytes(x):
    """float32 (blocks,) -> (blocks, 2) uint8, rounded to nearest even as ggml does."""
    return np.asarray(x, dtype=F32).astype("<f2").reshape(-1, 1).view(np.uint8)


def _value_blocks(array, type_name):
    """A float32 array as (blocks, values per block), checking the row length."""
    n = BLOCKS[type_name][1]
    a = np.ascontiguousarray(array, dtype=F32)
    if a.ndim == 0 or a.shape[-1] % n:
        raise ValueError(f"{type_name}: the last dimension {a.shape} is not a multiple of {n}")
    return a.reshape(-1, n)


def _nearest_int(x):
    """ggml's nearest_int: round half to even (it adds 1.5 * 2^23 in float32)."""
    return np.rint(x).astype(np.int32)


def _roundf(x):
    """C's roundf: half away from zero, exact for every float32."""
    t = np.trunc(x)
    return (t + np.where(np.abs(x - t) >= F32(0.5), np.sign(x), F32(0))).astype(np.int32)


def _signed_absmax(x):
    """Per row of the last axis, the value of largest magnitude (the first such, as ggml)."""
    i = np.argmax(np.abs(x), axis=-1)
    return np.take_along_axis(x, i[..., None], axis=-1)[..., 0]


def _safe_div(a, b):
    """a / b in float32, 0 where b is 0."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=F32), np.asarray(b, dtype=F32))
    return np.divide(a, b, out=np.zeros(a.shape, dtype=F32), where=b != 0)


def _safe_inv(d):
    """ggml's `id = d ? 1.0f/d : 0.0f` in float32."""
    return _safe_div(F32(1), d)


def _nibbles(qs):
    """(blocks, 16) bytes -> (blocks, 32): value j in the low nibble of byte j, value j + 16 in
    the high nibble (the 32-value types)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _pack_nibbles(q):
    """(blocks, 32) values 0..15 -> (blocks, 16) bytes, inverse of _nibbles."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _bits32(qh):
    """(blocks, 4) bytes, a little-endian u32 -> (blocks, 32): bit j of it."""
    word = np.ascontiguousarray(qh).view("<u4")
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _pack_bits32(bits):
    """(blocks, 32) bits -> (blocks, 4) bytes of the u32 with bit j = bits[j]."""
    word = (bits.astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return word.astype("<u4").reshape(-1, 1).view(np.uint8)


def _crumbs(qs):
    """(blocks, 64) bytes of 2-bit values -> (blocks, 256) as Q2_K and Q3_K lay them out: value
    128*h + 32*j + l is bits 2j..2j+1 of byte 32*h + l (h 0..1, j 0..3, l 0..31)."""
    q = qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK_K)


def _pack_crumbs(q):
    """(blocks, 256) values 0..3 -> (blocks, 64) bytes, inverse of _crumbs."""
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return np.bitwise_or.reduce(q << shifts, axis=2).reshape(-1, 64)


def _scale_min_k4(s):
    """Q4_K's and Q5_K's 12 scale bytes -> (scales, mins), each (blocks, 8) of 6 bits:
    for j < 4 scale j = s[j] & 63, min j = s[j+4] & 63; for j >= 4 scale j =
    (s[j+4] & 15) | (s[j-4] >> 6) << 4 and min j = (s[j+4] >> 4) | (s[j] >> 6) << 4."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, mn


def _pack_scale_min_k4(sc, mn):
    """(blocks, 8) scales and mins 0..63 -> (blocks, 12) bytes, inverse of _scale_min_k4."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    return np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
                           mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
                           (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)], axis=1)


def _q3_k_scales(s):
    """Q3_K's 12 scale bytes -> (blocks, 16) scales -32..31: the low 4 bits of scale j are the
    low nibble of s[j] (j < 8) or the high nibble of s[j-8] (j >= 8); its high 2 bits are bits
    2*(j//4)..+1 of s[8 + j%4]; the stored 6 bits are the scale plus 32."""
    j = np.arange(16)
    low = np.concatenate([s[:, :8] & 0x0F, s[:, :8] >> 4], axis=1)
    high = (s[:, 8 + j % 4] >> (2 * (j // 4)).astype(np.uint8)) & 3
    return (low | (high << 4)).astype(np.int32) - 32


def _pack_q3_k_scales(sc):
    """(blocks, 16) scales -32..31 -> (blocks, 12) bytes, inverse of _q3_k_scales."""
    l = (sc + 32).astype(np.uint8)
    low = (l[:, :8] & 0x0F) | ((l[:, 8:] & 0x0F) << 4)
    high = (l >> 4).reshape(-1, 4, 4) << (2 * np.arange(4, dtype=np.uint8)).reshape(1, 4, 1)
    return np.concatenate([low, np.bitwise_or.reduce(high, axis=1)], axis=1)


def _halves_k(qs):
    """(blocks, 128) bytes of 4-bit values -> (blocks, 256) as Q4_K and Q5_K lay them out:
    value 64*c + l is the low nibble of byte 32*c + l, value 64*c + 32 + l its high nibble."""
    q = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0x0F, q >> 4], axis=2).reshape(-1, QK_K)


def _pack_halves_k(q):
    """(blocks, 256) values 0..15 -> (blocks, 128) bytes, inverse of _halves_k."""
    q = q.astype(np.uint8).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


# ----------------------------------------------------------------------------
# The 32-value types

def dequantize_q4_0(b):
    """Q4_0, 18 bytes per 32 values: fp16 d at 0, qs[16] at 2. Value j (j < 16) is the low
    nibble of qs[j], value j + 16 its high nibble; x = (q - 8) * d."""
    d = _fp16(b, 0)
    q = _nibbles(b[:, 2:18]).astype(np.int32) - 8
    return q.astype(F32) * d


def dequantize_q4_1(b):
    """Q4_1, 20 bytes per 32 values: fp16 d at 0, fp16 m at 2, qs[16] at 4 (nibbles as Q4_0);
    x = q * d + m."""
    d, m = _fp16(b, 0), _fp16(b, 2)
    return _nibbles(b[:, 4:20]).astype(F32) * d + m


def dequantize_q5_0(b):
    """Q5_0, 22 bytes per 32 values: fp16 d at 0, qh[4] at 2 (a u32; bit j is the fifth bit of
    value j), qs[16] at 6 (the low 4 bits, nibbles as Q4_0); x = (q - 16) * d."""
    d = _fp16(b, 0)
    q = (_nibbles(b[:, 6:22]) | (_bits32(b[:, 2:6]) << 4)).astype(np.int32) - 16
    return q.astype(F32) * d


def dequantize_q5_1(b):
    """Q5_1, 24 bytes per 32 values: fp16 d at 0, fp16 m at 2, qh[4] at 4, qs[16] at 8 (bits as
    Q5_0); x = q * d + m."""
    d, m = _fp16(b, 0), _fp16(b, 2)
    q = _nibbles(b[:, 8:24]) | (_bits32(b[:, 4:8]) << 4)
    return q.astype(F32) * d + m


def dequantize_q8_0(b):
    """Q8_0, 34 bytes per 32 values: fp16 d at 0, int8 qs[32] at 2; x = q * d."""
    d = _fp16(b, 0)
    return np.ascontiguousarray(b[:, 2:34]).view(np.int8).astype(F32) * d


def dequantize_q8_1(b):
    """Q8_1, 36 bytes per 32 values: fp16 d at 0, fp16 s at 2 (d * sum of the 32 q, used by dot
    products only), int8 qs[32] at 4; x = q * d."""
    d = _fp16(b, 0)
    return np.ascontiguousarray(b[:, 4:36]).view(np.int8).astype(F32) * d


def quantize_q4_0(x):
    """As quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8, q = min(15,
    trunc(x / d + 8.5)), in float32 with 1/d from the unrounded d."""
    d = _signed_absmax(x) / F32(-8)
    q = np.minimum(15, np.trunc(x * _safe_inv(d)[:, None] + F32(8.5)).astype(np.int32))
    return np.concatenate([_to_fp16_bytes(d), _pack_nibbles(q)], axis=1)


def quantize_q4_1(x):
    """As quantize_row_q4_1_ref: d = (max - min) / 15, m = min, q = min(15, trunc((x - m) / d
    + 0.5))."""
    lo, hi = x.min(axis=1), x.max(axis=1)
    d = (hi - lo) / F32(15)
    q = (x - lo[:, None]) * _safe_inv(d)[:, None] + F32(0.5)
    q = np.minimum(15, np.trunc(q).astype(np.int32))
    return np.concatenate([_to_fp16_bytes(d), _to_fp16_bytes(lo), _pack_nibbles(q)], axis=1)


def quantize_q5_0(x):
    """As quantize_row_q5_0_ref: d = (the value of largest magnitude) / -16, q = min(31,
    trunc(x / d + 16.5))."""
    d = _signed_absmax(x) / F32(-16)
    q = np.minimum(31, np.trunc(x * _safe_inv(d)[:, None] + F32(16.5)).astype(np.int32))
    return np.concatenate([_to_fp16_bytes(d), _pack_bits32(q >> 4), _pack_nibbles(q & 15)],
                          axis=1)


def quantize_q5_1(x):
    """As quantize_row_q5_1_ref: d = (max - min) / 31, m = min, q = trunc((x - m) / d + 0.5)."""
    lo, hi = x.min(axis=1), x.max(axis=1)
    d = (hi - lo) / F32(31)
    q = (x - lo[:, None]) * _safe_inv(d)[:, None] + F32(0.5)
    q = np.minimum(31, np.trunc(q).astype(np.int32))
    return np.concatenate([_to_fp16_bytes(d), _to_fp16_bytes(lo), _pack_bits32(q >> 4),
                           _pack_nibbles(q & 15)], axis=1)


def _q8(x):
    d = np.abs(x).max(axis=1) / F32(127)
    q = _roundf(x * _safe_inv(d)[:, None])
    return d, q


def quantize_q8_0(x):
    """As quantize_row_q8_0_ref: d = max|x| / 127, q = roundf(x / d)."""
    d, q = _q8(x)
    return np.concatenate([_to_fp16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=1)


def quantize_q8_1(x):
    """As quantize_row_q8_1_ref: Q8_0's d and q, and s = (sum of q) * d."""
    d, q = _q8(x)
    s = q.sum(axis=1).astype(F32) * d
    return np.concatenate([_to_fp16_bytes(d), _to_fp16_bytes(s),
                           q.astype(np.int8).view(np.uint8)], axis=1)


# ----------------------------------------------------------------------------
# The K-quants: super-blocks of 256 values

def dequantize_q2_k(b):
    """Q2_K, 84 bytes per 256 values, 16 sub-blocks of 16: scales[16] at 0 (byte j: low nibble
    the scale of sub-block j, high nibble its min), qs[64] at 16 (2-bit q: value 128*h + 32*j + l
    is bits 2j..2j+1 of qs[32*h + l]), fp16 d at 80, fp16 dmin at 82.
    x = (d * scale) * q - (dmin * min), q 0..3."""
    d, dmin = _fp16(b, 80), _fp16(b, 82)
    s = b[:, 0:16]
    dl = d * (s & 0x0F).astype(F32)
    ml = dmin * (s >> 4).astype(F32)
    q = _crumbs(b[:, 16:80]).astype(F32).reshape(-1, 16, 16)
    return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, QK_K)


def dequantize_q3_k(b):
    """Q3_K, 110 bytes per 256 values, 16 sub-blocks of 16: hmask[32] at 0 (value v's high bit
    is bit v//32 of hmask[v%32]), qs[64] at 32 (the low 2 bits, laid out as Q2_K's), scales[12]
    at 96 (16 6-bit scales, stored plus 32: low 4 bits of scale j in the low nibble of byte j
    for j < 8, the high nibble of byte j-8 for j >= 8; high 2 bits in bits 2*(j//4)..+1 of byte
    8 + j%4), fp16 d at 108. q = low2 - (4 if the high bit is clear else 0), -4..3;
    x = (d * scale) * q."""
    d = _fp16(b, 108)
    dl = d * _q3_k_scales(b[:, 96:108]).astype(F32)
    high = (b[:, None, 0:32] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = _crumbs(b[:, 32:96]).astype(np.int32) - 4 * (1 - high.reshape(-1, QK_K).astype(np.int32))
    return (dl[:, :, None] * q.astype(F32).reshape(-1, 16, 16)).reshape(-1, QK_K)


def dequantize_q4_k(b):
    """Q4_K, 144 bytes per 256 values, 8 sub-blocks of 32: fp16 d at 0, fp16 dmin at 2,
    scales[12] at 4 (8 6-bit scales and 8 6-bit mins: for j < 4 scale j = s[j] & 63, min j =
    s[j+4] & 63; for j >= 4 scale j = (s[j+4] & 15) | (s[j-4] >> 6) << 4, min j =
    (s[j+4] >> 4) | (s[j] >> 6) << 4), qs[128] at 16 (value 64*c + l is the low nibble of
    qs[32*c + l], value 64*c + 32 + l its high nibble). x = (d * scale) * q - (dmin * min)."""
    d, dmin = _fp16(b, 0), _fp16(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    dl, ml = d * sc.astype(F32), dmin * mn.astype(F32)
    q = _halves_k(b[:, 16:144]).astype(F32).reshape(-1, 8, 32)
    return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, QK_K)


def dequantize_q5_k(b):
    """Q5_K, 176 bytes per 256 values, 8 sub-blocks of 32: fp16 d at 0, fp16 dmin at 2,
    scales[12] at 4 (as Q4_K), qh[32] at 16 (value 32*j + l's fifth bit is bit j of qh[l]),
    qs[128] at 48 (the low 4 bits, as Q4_K's). x = (d * scale) * q - (dmin * min), q 0..31."""
    d, dmin = _fp16(b, 0), _fp16(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    dl, ml = d * sc.astype(F32), dmin * mn.astype(F32)
    high = (b[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = (_halves_k(b[:, 48:176]) | (high.reshape(-1, QK_K) << 4)).astype(F32).reshape(-1, 8, 32)
    return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, QK_K)


def dequantize_q6_k(b):
    """Q6_K, 210 bytes per 256 values, 16 sub-blocks of 16: ql[128] at 0 (low 4 bits), qh[64]
    at 128 (high 2 bits), int8 scales[16] at 192, fp16 d at 208. For value 128*h + 32*k + l
    (h 0..1, k 0..3, l 0..31): the low 4 bits are the low nibble of ql[64*h + l] (k = 0),
    of ql[64*h + 32 + l] (k = 1), the high nibble of ql[64*h + l] (k = 2), of ql[64*h + 32 + l]
    (k = 3); the high 2 bits are bits 2k..2k+1 of qh[32*h + l]. q = that 6-bit number - 32;
    x = (d * scale) * q, the scale of sub-block v//16."""
    d = _fp16(b, 208)
    ql = b[:, 0:128].reshape(-1, 2, 2, 32)  # [h, first or second 32 bytes, l]
    low = np.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4],
                   axis=2)  # [h, k, l]
    high = (b[:, 128:192].reshape(-1, 2, 1, 32)
            >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
    q = (low | (high << 4)).astype(np.int32).reshape(-1, 16, 16) - 32
    dl = d * np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(F32)
    return (dl[:, :, None] * q.astype(F32)).reshape(-1, QK_K)


def dequantize_q8_k(b):
    """Q8_K, 292 bytes per 256 values: float32 d at 0, int8 qs[256] at 4, int16 bsums[16] at
    260 (the sum of each 16 q, used by dot products only); x = d * q."""
    d = np.ascontiguousarray(b[:, 0:4]).view("<f4").astype(F32)
    return d * np.ascontiguousarray(b[:, 4:260]).view(np.int8).astype(F32)


def _affine_k(x, n_sub, qmax, smax):
    """Scales and mins for the x = d*scale*q - dmin*min types (Q2_K, Q4_K, Q5_K). Per sub-block
    the min is -min(x, 0) and the scale (max + min) / qmax; the mins are quantized first to
    smax levels of dmin = max(min) / smax, the scales then cover what each sub-block's quantized
    min leaves, at smax levels of d = max(scale) / smax; q is then rounded and clamped to 0..qmax
    with the final d * scale and dmin * min."""
    xs = x.reshape(len(x), n_sub, -1)
    mins = -np.minimum(xs.min(axis=2), F32(0))
    dmin = (mins.max(axis=1) / F32(smax)).astype(np.float16).astype(F32)
    mq = np.clip(_nearest_int(_safe_div(mins, dmin[:, None])), 0, smax)
    off = dmin[:, None] * mq.astype(F32)
    scales = np.maximum((xs.max(axis=2) + off) / F32(qmax), F32(0))
    d = (scales.max(axis=1) / F32(smax)).astype(np.float16).astype(F32)
    sq = np.clip(_nearest_int(_safe_div(scales, d[:, None])), 0, smax)
    dl = d[:, None] * sq.astype(F32)
    q = np.clip(_nearest_int(_safe_div(xs + off[:, :, None], dl[:, :, None])), 0, qmax)
    return d, dmin, sq, mq, q.reshape(len(x), -1)


def _symmetric_k(x, n_sub, qlow, slow, shigh):
    """Scales for the x = d*scale*q types (Q3_K: q -4..3, Q6_K: q -32..31). Per sub-block the
    value of largest magnitude maps to q = -qlow (the wider end), scale = it / -qlow; the scale
    of largest magnitude maps to -slow, d = it / -slow, the others round and clamp to
    -slow..shigh; q is then rounded and clamped to -qlow..qlow-1 with the final d * scale."""
    xs = x.reshape(len(x), n_sub, -1)
    scales = _signed_absmax(xs) / F32(-qlow)
    d = (_signed_absmax(scales) / F32(-slow)).astype(np.float16).astype(F32)
    sq = np.clip(_nearest_int(_safe_div(scales, d[:, None])), -slow, shigh)
    dl = d[:, None] * sq.astype(F32)
    q = np.clip(_nearest_int(_safe_div(xs, dl[:, :, None])), -qlow, qlow - 1)
    return d, sq, q.reshape(len(x), -1)


def quantize_q2_k(x):
    """Q2_K: per 16 values a 4-bit scale and min (see _affine_k), q 0..3."""
    d, dmin, sq, mq, q = _affine_k(x, 16, 3, 15)
    scales = (sq | (mq << 4)).astype(np.uint8)
    return np.concatenate([scales, _pack_crumbs(q), _to_fp16_bytes(d), _to_fp16_bytes(dmin)],
                          axis=1)


def quantize_q3_k(x):
    """Q3_K: per 16 values a 6-bit signed scale (see _symmetric_k), q -4..3."""
    d, sq, q = _symmetric_k(x, 16, 4, 32, 31)
    l = (q + 4).astype(np.uint8)
    hmask = np.bitwise_or.reduce((l >> 2).reshape(-1, 8, 32)
                                 << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return np.concatenate([hmask, _pack_crumbs(l & 3), _pack_q3_k_scales(sq),
                           _to_fp16_bytes(d)], axis=1)


def quantize_q4_k(x):
    """Q4_K: per 32 values a 6-bit scale and min (see _affine_k), q 0..15."""
    d, dmin, sq, mq, q = _affine_k(x, 8, 15, 63)
    return np.concatenate([_to_fp16_bytes(d), _to_fp16_bytes(dmin), _pack_scale_min_k4(sq, mq),
                           _pack_halves_k(q)], axis=1)


def quantize_q5_k(x):
    """Q5_K: per 32 values a 6-bit scale and min (see _affine_k), q 0..31."""
    d, dmin, sq, mq, q = _affine_k(x, 8, 31, 63)
    high = (q >> 4).astype(np.uint8).reshape(-1, 8, 32)
    qh = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return np.concatenate([_to_fp16_bytes(d), _to_fp16_bytes(dmin), _pack_scale_min_k4(sq, mq),
                           qh, _pack_halves_k(q & 15)], axis=1)


def quantize_q6_k(x):
    """Q6_K: per 16 values an int8 scale (see _symmetric_k; ggml too keeps it to -128..127),
    q -32..31."""
    d, sq, q = _symmetric_k(x, 16, 32, 128, 127)
    l = (q + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # [h, k, l]
    ql = np.stack([(l[:, :, 0] & 0x0F) | ((l[:, :, 2] & 0x0F) << 4),
                   (l[:, :, 1] & 0x0F) | ((l[:, :, 3] & 0x0F) << 4)], axis=2).reshape(-1, 128)
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    qh = np.bitwise_or.reduce((l >> 4) << shifts, axis=2).reshape(-1, 64)
    return np.concatenate([ql, qh, sq.astype(np.int8).view(np.uint8), _to_fp16_bytes(d)],
                          axis=1)


def quantize_q8_k(x):
    """As quantize_row_q8_K_ref: iscale = -127 / (the value of largest magnitude), q = min(127,
    nearest(iscale * x)), d = 1 / iscale (float32); bsums the sums of each 16 q. An all-zero
    block is d = 0 and zeros."""
    m = _signed_absmax(x)
    iscale = _safe_div(F32(-127), m)
    q = np.minimum(127, _nearest_int(iscale[:, None] * x))
    d = _safe_inv(iscale)
    bsums = q.reshape(-1, 16, 16).sum(axis=2).astype("<i2")
    return np.concatenate([d.astype("<f4").reshape(-1, 1).view(np.uint8),
                           q.astype(np.int8).view(np.uint8), bsums.view(np.uint8)], axis=1)


_DEQUANTIZE = {
    "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1, "Q5_0": dequantize_q5_0,
    "Q5_1": dequantize_q5_1, "Q8_0": dequantize_q8_0, "Q8_1": dequantize_q8_1,
    "Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k, "Q4_K": dequantize_q4_k,
    "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k, "Q8_K": dequantize_q8_k,
}
_QUANTIZE = {
    "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1, "Q5_0": quantize_q5_0,
    "Q5_1": quantize_q5_1, "Q8_0": quantize_q8_0, "Q8_1": quantize_q8_1,
    "Q2_K": quantize_q2_k, "Q3_K": quantize_q3_k, "Q4_K": quantize_q4_k,
    "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k, "Q8_K": quantize_q8_k,
}


def dequantize(data, type_name, count):
    """`count` values (a multiple of the block size) of type_name's blocks in `data`, as a flat
    float32 array in storage order (row-major)."""
    if type_name not in _DEQUANTIZE:
        raise ValueError(f"cannot dequantize {type_name}")
    b = _block_bytes(data, type_name, count)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(_DEQUANTIZE[type_name](b), dtype=F32).reshape(count)


def quantize(array, type_name):
    """A float32 array (last dimension a multiple of the block size) in type_name's blocks,
    row-major."""
    if type_name not in _QUANTIZE:
        raise ValueError(f"cannot quantize {type_name}")
    x = _value_blocks(array, type_name)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = _QUANTIZE[type_name](x)
    assert out.shape == (len(x), BLOCKS[type_name][2])
    return np.ascontiguousarray(out, dtype=np.uint8).tobytes()


# ----------------------------------------------------------------------------
# Self-test

# Bounds on RMS(dequantize(quantize(x)) - x) / RMS(x) for Gaussian x. Rounding to a uniform grid
# of step h costs h / sqrt(12). A block's range is about 4.2 sigma for 32 values (+-2.1) and
# 5.8 sigma for 256, split into 2^bits - 1 steps, or (2^bits - 2) / 2 steps each side for the
# absmax types: Q8_0 0.005, Q8_K 0.0066, Q4_0 0.08, Q5_0 0.04, Q4_1 0.075, Q5_1 0.036. The
# K-quants' sub-blocks of 16 or 32 values have a narrower range, but their scales and mins are
# themselves quantized to 4 to 8 bits, so they land near the simple type of the same width; 2-bit
# Q2_K (4 levels) is the loosest, then Q3_K. Each bound is about 1.3 times the measured value:
# a miscoded field (a wrong nibble, shift or scale) costs far more than that.
BOUNDS = {
    "Q4_0": 0.11, "Q4_1": 0.10, "Q5_0": 0.055, "Q5_1": 0.05, "Q8_0": 0.007, "Q8_1": 0.007,
    "Q2_K": 0.42, "Q3_K": 0.20, "Q4_K": 0.10, "Q5_K": 0.05, "Q6_K": 0.025, "Q8_K": 0.009,
}


def rms_relative_error(x, type_name):
    y = dequantize(quantize(x, type_name), type_name, x.size).reshape(x.shape)
    return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2)))


def _self_test():
    rng = np.random.default_rng(20250220)
    failures = 0
    x = rng.standard_normal((64, 1024)).astype(F32)
    for name, (_, n, size) in BLOCKS.items():
        err = rms_relative_error(x, name)
        ok = err <= BOUNDS[name]
        data = quantize(x, name)
        ok &= len(data) == x.size // n * size
        # Blocks that are all zero, constant, one spike, and scaled far down stay valid.
        special = np.zeros((4, n), dtype=F32)
        special[1] = 0.75
        special[2, n // 3] = -3.0
        special[3] = x[0, :n] * F32(1e-3)
        y = dequantize(quantize(special, name), name, special.size).reshape(special.shape)
        ok &= bool(np.all(np.isfinite(y)) and np.all(y[0] == 0))
        ok &= bool(np.abs(y[2, n // 3] + 3.0) < 0.02 and np.abs(y[1] - 0.75).max() < 0.05)
        scale = np.sqrt(np.mean(special[3] ** 2))
        ok &= bool(np.sqrt(np.mean((y[3] - special[3]) ** 2)) <= 2 * BOUNDS[name] * scale)
        print(f"{name}: RMS error {err:.4f} of the input's RMS (bound {BOUNDS[name]})"
              f"{'' if ok else '  FAILED'}")
        failures += not ok
    # Q8_K's bsums are the sums of its 16-value groups.
    b = np.frombuffer(quantize(x, "Q8_K"), dtype=np.uint8).reshape(-1, 292)
    qs = np.ascontiguousarray(b[:, 4:260]).view(np.int8).astype(np.int32)
    bsums = np.ascontiguousarray(b[:, 260:292]).view("<i2")
    if not np.array_equal(qs.reshape(-1, 16, 16).sum(axis=2), bsums):
        print("Q8_K: bsums are not the sums of the quants  FAILED")
        failures += 1
    # A misfit row length and a short buffer are refused.
    for bad in (lambda: quantize(np.zeros(48, F32), "Q4_0"),
                lambda: dequantize(b"\0" * 17, "Q4_0", 32)):
        try:
            bad()
            print("a bad length was accepted  FAILED")
            failures += 1
        except ValueError:
            pass
    print(f"ggml_quants: {len(BLOCKS)} types, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(_self_test())
