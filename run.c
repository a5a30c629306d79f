/*
 * run.c: text generation with a Llama-family transformer decoder, in one file.
 *
 * What it does: loads a checkpoint (the project's own format, fp32 or int8; llama2.c's; or a GGUF
 * file of the llama architecture, F32, F16 or Q8_0, with a sentencepiece-style or byte-level
 * BPE vocabulary), turns a prompt into token ids, runs them
 * through the decoder while filling a KV cache (the prompt in blocks of positions, then one
 * generated token at a time), and samples a continuation, streaming it as text. It also measures
 * perplexity and shows what attention does (--eval, --attn, --explain, --attn-dump).
 *
 * What it is for: reading. Every query head reads one key/value head; when several query heads
 * share a key/value head the model uses grouped-query attention (GQA), when all of them share one
 * it uses multi-query attention (MQA), and when each has its own it is plain multi-head attention
 * (MHA). One code path serves all three; see section 4, "Attention".
 *
 * Non-goals: training (see model/), batches of several sequences, GPUs, big-endian hosts.
 *
 * How the file is laid out
 *   PART 1, the model, reads top to bottom in the order data flows. It is plain C, and it is
 *   the program: `make plain` builds ./run-plain from this file with -DRUN_PLAIN, and that build
 *   runs Part 1's functions and nothing else for every product, norm, softmax, activation and
 *   attention step.
 *     1. Config and weights        what a model is: its sizes and its matrices
 *     2. Run state and KV cache    the buffers one forward pass writes; the cache in pages
 *     3. Plain math                dot, the weight encodings, matmul, rmsnorm, softmax,
 *                                  SwiGLU, RoPE
 *     4. Attention                 one query head against one key/value head, then the same in
 *                                  tiles with an online softmax, one kv head's group at a time
 *     5. Forward pass              the kernel table, the one seam where the fast build swaps in
 *                                  its kernels; then a block of positions through every layer
 *     6. Tokenizer                 text to ids (sentencepiece's BPE and GPT-2's byte-level
 *                                  BPE) and ids back to text
 *     7. Sampler                   temperature, top-k, top-p, a seeded draw
 *     8. Generation and main       the prompt, then one token at a time
 *   PART 2, the machinery, begins at the banner that says so, with an index. A first-time reader
 *   can stop there: it holds the fast kernels (threads, int8, register tiles, AVX-512) that the
 *   default build (`make build`, ./run) puts in the kernel table, checkpoint parsing and
 *   validation, the tokenizer file, UTF-8 rules, error reporting, inspection and the command
 *   line. Part 1 declares the few Part 2 functions it calls just before the first call.
 *
 * Follow one token (generation, after the prompt), as the plain build runs it:
 *   generate -> forward -> forward_block: decode_row (the embedding), rope_angles, then per layer
 *     attention_block:    rmsnorm -> matmul_shared (wq, wk, wv) -> rotate_and_cache
 *                         (rope_rotate, kv_store) -> attention -> attend_tiles
 *                         -> online_softmax_tile -> online_softmax_step -> matmul (wo) -> add to x
 *     feed_forward_block: rmsnorm -> matmul_shared (w1, w3) -> swiglu -> matmul (w2) -> add to x
 *   then rmsnorm -> matmul (classifier) -> logits -> sample -> print_token.
 * The fast build takes the same path through the kernel table (section 5), where matmul,
 * matmul_shared, swiglu, rotate_and_cache and attention are Part 2's, and attention's tiles go
 * through online_softmax_tile_fast.
 *
 * The same computation, written plainly elsewhere: model/model.py (PyTorch; it trained the
 * shipped models and the tests check this file against it) and naive_forward_all in
 * tests/test_run.c (the whole model as naive loops over every position, no KV cache).
 *
 * Dimension legend used by every shape comment:
 *   L  n_layers          D  dim, the width of the residual stream
 *   H  n_heads           KVH  n_kv_heads        hd  head_dim (D = H * hd)
 *   F  hidden_dim        V  vocab_size          S  seq_len, the context length
 *   B  positions in the current block (BLOCK at most)
 *   kv_dim = KVH * hd, the width of one position's keys (or values) across all kv heads
 */

#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define STB_DS_IMPLEMENTATION
#include <stb_ds.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#define RUN_VERSION "0.1.0"

// Errors: every failure is reported as one line on stderr by the function that meets it, which
// then returns an error code to its caller; only main decides to exit. These two helpers live in
// Part 2 and are used everywhere.
static int report_error(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void *checked_calloc(size_t count, size_t size, const char *what); // NULL after a report

// ============================================================================================
// PART 1: THE MODEL
// ============================================================================================

// ----------------------------------------------------------------------------
// 1. Config and weights

// The choices that tell the GPT-style decoders apart. Llama 2 is the first of each; the
// comment names the models that take another (section 5 shows where each one acts).
typedef enum {
    NORM_RMS,  // x / rms(x) * weight (Llama, Qwen2, Gemma)
    NORM_LAYER // (x - mean) / std(x) * weight + bias: LayerNorm (GPT-2)
} NormKind;

typedef enum {
    ROPE_ADJACENT, // RoPE rotates the pairs (x[2i], x[2i+1]) (Llama)
    ROPE_HALVES,   // ... the pairs (x[i], x[i + hd/2]) (Qwen2, Gemma: "NEOX" order)
    ROPE_NONE      // no rotation: a learned position vector is added to the embedding (GPT-2)
} RopeKind;

typedef enum {
    FFN_SWIGLU, // down(silu(gate(x)) * up(x)) (Llama, Qwen2)
    FFN_GEGLU,  // down(gelu(gate(x)) * up(x)) (Gemma)
    FFN_GELU    // down(gelu(up(x))), no gate (GPT-2)
} FeedForwardKind;

typedef struct {
    int dim;                  // D: width of the residual stream
    int hidden_dim;           // F: width of the feed-forward layer
    int n_layers;             // L
    int n_heads;              // H: query heads
    int n_kv_heads;           // KVH: key/value heads; each serves H / KVH query heads
    int head_dim;             // hd: width of one head (usually D / H; Gemma's is wider)
    int vocab_size;           // V
    int seq_len;              // S: the most positions the KV cache holds
    float rope_theta;         // base of the rotary position embedding's frequencies
    float rope_scale;         // positions are multiplied by this before RoPE (1; linear scaling)
    float norm_eps;           // added to the mean square in RMSNorm (the variance in LayerNorm)
    bool shared_classifier;   // the classifier is the token embedding matrix itself
    int bos_id;               // token that starts every sequence
    int eos_id;               // token that ends one
    int quant_group;          // int8 weights: values per fp32 scale; 0: fp32 weights
    const char *architecture; // "llama", "qwen2", "gemma", "gemma2" or "gpt2"
    NormKind norm;
    RopeKind rope;
    FeedForwardKind feed_forward;
    float embedding_scale;   // the token embedding is multiplied by it: 1, Gemma sqrt(D)
    float query_scale;       // a score is q.k times this: 1 / sqrt(hd)
    float attention_softcap; // Gemma 2: scores squashed into (-cap, cap); 0: none
    float logits_softcap;    // Gemma 2: the same for the logits; 0: none
    int sliding_window;      // Gemma 2: even layers see the last W positions; 0: none
} Config;

// Query heads per key/value head: 1 for MHA, H for MQA, anything between for GQA.
static int group_size_of(const Config *c) {
    return c->n_heads / c->n_kv_heads;
}

// The three names of one mechanism: MHA when every query head has its own key/value head, MQA
// when all of them share one, GQA for the groups in between.
typedef enum { ATTENTION_MHA, ATTENTION_GQA, ATTENTION_MQA } AttentionKind;

static AttentionKind attention_kind(const Config *c) {
    return c->n_kv_heads == c->n_heads ? ATTENTION_MHA
           : c->n_kv_heads == 1        ? ATTENTION_MQA
                                       : ATTENTION_GQA;
}

static const char *attention_kind_name(const Config *c) {
    static const char *const names[] = {"MHA", "GQA", "MQA"};
    return names[attention_kind(c)];
}

static size_t kv_dim_of(const Config *c) {
    return (size_t)c->n_kv_heads * c->head_dim;
}

// The positions a query of this layer sees, itself included: Gemma 2's even layers look back
// over a sliding window of W positions only; 0 means all of them.
static int layer_window(const Config *c, int layer) {
    return layer % 2 == 0 ? c->sliding_window : 0;
}

// A weight matrix (rows, cols), a read-only view into the mapped checkpoint, in one of four
// encodings: exactly one of f32, q8, f16 and q8_0 is set.
//   fp32   the plain one: 4 bytes a weight.
//   int8   (the project's own) `group` consecutive values along a row share one fp32 scale: the
//          weight is value * scale, about a quarter of the bytes to read per token.
//   F16    (GGUF) IEEE half precision: half the bytes of fp32.
//   Q8_0   (GGUF) blocks of 32 int8 values along a row, each block led by its own fp16 scale:
//          34 bytes per 32 weights.
//   blocks (GGUF, the types the files people download come in: Q4_0, Q4_1, Q5_0, Q5_1 and the
//          "K-quants" Q2_K to Q6_K) runs of 32 or 256 weights along a row, stored as small
//          unsigned integers q of 2 to 6 bits, with a scale (and an offset, the minimum) for
//          each group of 16 or 32 of them: weight = scale * q - minimum. Q4_K, the most common,
//          spends 4.5 bits a weight: 4-bit q, and 6-bit scales and minimums that are
//          themselves scaled by two fp16 numbers per 256 weights.
// A quantized weight is never stored as fp32: each product turns it back on the fly (section 3).
//
// One block type: how many weights a block holds and in how many bytes, and how to read one.
// unpack writes the block's integers q (values) and, for each run of 16 weights, the scale and
// minimum: weight i is scale[i / 16] * q[i] - minimum[i / 16]. Each type's layout is in Part 2,
// "Quantized blocks".
#define MAX_BLOCK_VALUES 256

typedef struct {
    uint32_t ggml_type; // ggml's id for the type
    const char *name;
    int values, bytes; // weights per block, bytes per block
    void (*unpack)(const unsigned char *block, uint8_t *q, float *scale, float *minimum);
} BlockType;

typedef struct Matrix Matrix;
struct Matrix {
    const float *f32;            // (rows, cols)
    const int8_t *q8;            // (rows, cols) int8 values
    const float *scales;         // (rows, cols / group) their scales
    const uint16_t *f16;         // (rows, cols) half-precision values
    const unsigned char *q8_0;   // (rows, cols / 32) blocks: an fp16 scale, then 32 int8 values
    const unsigned char *blocks; // (rows, cols / values) blocks of block_type
    const BlockType *block_type;
    size_t rows, cols;
    int group;            // values per scale: int8 and Q8_0 (32); 0 for fp32 and F16
    const Matrix *layers; // (L) one matrix per layer when they lie apart (GGUF), else NULL
};

// The weights. Each per-layer Matrix field holds all L layers: stacked, (L, rows, cols), in the
// project's and llama2.c's files; in a GGUF file, where one layer's matrix need not sit next to
// the next one's, as a table of L matrices in `layers`. layer_matrix picks one layer out.
// The vectors after the first block are what other architectures add; NULL where absent.
typedef struct {
    Matrix token_embedding; // (V, D)
    const float *rms_att;   // (L, D) norm weights before attention
    Matrix wq;              // (L, H * hd, D)
    Matrix wk;              // (L, kv_dim, D)
    Matrix wv;              // (L, kv_dim, D)
    Matrix wo;              // (L, D, H * hd)
    const float *rms_ffn;   // (L, D) norm weights before the feed-forward layer
    Matrix w1;              // (L, F, D) gate projection (none in GPT-2)
    Matrix w2;              // (L, D, F) down projection
    Matrix w3;              // (L, F, D) up projection
    const float *rms_final; // (D)
    Matrix classifier;      // (V, D); the same memory as token_embedding when shared

    Matrix position_embedding;  // (S, D) GPT-2: a learned vector for each position
    const float *rope_divisors; // (hd / 2) Llama 3: each pair's angle is divided by its own
    const float *bias_att;      // (L, D) GPT-2: LayerNorm biases
    const float *bias_ffn;      // (L, D)
    const float *bias_final;    // (D)
    const float *bq, *bk, *bv;  // (L, H * hd), (L, kv_dim), (L, kv_dim) Qwen2, GPT-2
    const float *bo;            // (L, D) GPT-2, like the feed-forward's two below
    const float *b3, *b2;       // (L, F), (L, D)
    const float *post_att;      // (L, D) Gemma 2: norm weights of attention's output
    const float *post_ffn;      // (L, D) ... and of the feed-forward's
} Weights;

// One layer's (rows, cols) matrix out of a stack or a table of them.
static Matrix layer_matrix(const Matrix *stack, int layer) {
    if (stack->layers != NULL) {
        return stack->layers[layer];
    }
    Matrix m = *stack;
    size_t values = (size_t)layer * m.rows * m.cols;
    if (m.f32 != NULL) {
        m.f32 += values;
    } else if (m.q8 != NULL) {
        m.q8 += values;
        m.scales += values / m.group;
    }
    return m;
}

// One layer's vector (n) out of (L, n), or NULL where the model has none.
static const float *layer_vector(const float *stack, int layer, size_t n) {
    return stack != NULL ? stack + layer * n : NULL;
}

// ----------------------------------------------------------------------------
// 2. Run state: the activations of the positions being computed, and the KV cache
//
// The prompt is known in advance, so its positions go through the model in blocks of up to
// BLOCK at a time: each weight matrix is then read once for the whole block instead of once
// per position, which turns memory-bound matrix-vector products into compute-bound
// matrix-matrix products. Generation feeds one position at a time, a block of one.
//
// The KV cache keeps every position's keys and values, layer by layer, so that a new position
// computes only its own and reads the earlier ones. It stores KVH heads per position, not H:
// that is where GQA and MQA save memory.
//
// The cache lives in pages of KV_PAGE positions, allocated as positions fill, so its memory
// grows with the tokens used rather than with the context the model allows: a model of a
// million positions given a 200-token prompt holds one page per layer. A page holds one layer's
// keys (or values) for KV_PAGE positions, kv head after kv head, (KVH, KV_PAGE, hd): one kv
// head's keys for a run of positions lie side by side, the way attention reads them. Entries
// are fp32 (the default), fp16 (half the bytes to read per token), or int8 in groups of 32
// values with one fp32 scale per group (about a quarter).
//
// A layer with a sliding window of W positions (Gemma 2) never reads a key more than W positions
// old, so it owns only the few pages that cover W positions and a block, and page p of it is its
// page p % ring: a ring that the window moves around, overwriting what no query sees any more.
//
// Pages are reserved before the forward pass needs them (reserve_positions; generation reserves
// the prompt and every step before the first token), so the forward pass never allocates and
// cannot fail: an out-of-memory error comes before any output, as one line, and not halfway
// through a layer.

#define BLOCK   128 // positions of the prompt computed together (a multiple of 16)
#define KV_PAGE 256 // positions per page of the KV cache
#define KV_TILE 64  // positions attention reads at a time (section 4); divides KV_PAGE

// How the cache stores its entries (--kv-cache), and which half of a layer's pages a row is in.
typedef enum { KV_F32, KV_F16, KV_Q8 } KvFormat;
enum { KV_KEYS = 0, KV_VALUES = 1 };

typedef struct {
    KvFormat format;
    int n_layers, n_kv_heads, head_dim;
    size_t row_bytes;      // one kv head's vector (hd values) in the cache's format
    int page_positions;    // P: KV_PAGE, or S when the whole context is shorter than a page
    int max_pages;         // pages per layer at full context: ceil(S / KV_PAGE)
    int n_pages;           // pages reserved per layer: positions below n_pages * P fit
    unsigned char **pages; // (L, 2, max_pages): [layer][KV_KEYS or KV_VALUES][page], or NULL
    int *layer_pages;      // (L) pages a layer owns: max_pages, or a sliding window's ring
} KvCache;

// Where kv head kv_head of position pos lives: with P = page_positions (KV_PAGE), row pos % P
// of that head in page pos / P. Every read and write of the cache goes through here.
static unsigned char *kv_row(const KvCache *kv, int layer, int which, int kv_head, int pos) {
    int page = pos / kv->page_positions, row = pos % kv->page_positions;
    unsigned char *base = kv->pages[((size_t)layer * 2 + which) * kv->max_pages + page];
    return base + ((size_t)kv_head * kv->page_positions + row) * kv->row_bytes;
}

// Part 2, "KV cache formats": kv_store writes one position's keys or values x (KVH * hd fp32)
// into the cache; kv_rows reads rows first..first+count-1 of one kv head (within one page) as
// fp32 (count, hd): a pointer into the page itself for an fp32 cache, else the rows converted
// into scratch.
static void kv_store(KvCache *kv, int layer, int which, int pos, const float *x);
static const float *kv_rows(const KvCache *kv, int layer, int which, int kv_head, int first,
                            int count, float *scratch);

typedef struct Kernels Kernels;             // section 5: the functions the forward pass calls
typedef struct KernelScratch KernelScratch; // Part 2: the fast kernels' own buffers
typedef struct Inspector Inspector;         // Part 2: what --attn, --explain and --attn-dump record

typedef struct {
    float *x;        // (B, D) the residual stream of each position
    float *xb;       // (B, D) a normalised copy of x, or a sub-layer's output
    float *q;        // (B, H * hd) the queries of every head
    float *k;        // (B, kv_dim) the block's keys, on their way into the cache
    float *v;        // (B, kv_dim) the block's values
    float *attn_out; // (B, H * hd) each head's weighted sum of values
    float *hb;       // (B, F) feed-forward hidden activations
    float *hb2;      // (B, F)
    float *rope_cos; // (B, hd / 2) the rotation of each position, one angle per pair
    float *rope_sin; // (B, hd / 2)
    float *logits;   // (B, V)
    float *run_max;  // (B, H) attention's online softmax: each query head's largest score so far
    float *run_sum;  // (B, H) ... and its sum of exp(score - max) so far (section 4)
    float *kv_tile;  // (2, KV_TILE, hd) a tile of keys and values read from the cache as fp32
    int8_t *x_q8;    // (B, max(D, F, H * hd)) activations quantized like int8 weights (section 3)
    float *x_scales; // (B, max(D, F, H * hd)) their scales, one per group (at most one per value)
    KvCache kv;      // (L, 2, S, kv_dim) in pages: keys and values of every position so far
    const Kernels *kernels; // the products, attention and gate this build runs (section 5)
    KernelScratch *scratch; // Part 2: the fast kernels' buffers, and the threads they serve
    Inspector *inspector;   // NULL, except while --attn, --explain or --attn-dump runs the prompt
} RunState;

typedef struct Checkpoint Checkpoint; // Part 2: the mapped file and what its format adds

typedef struct {
    Config config;
    Weights weights;
    RunState state;
    Checkpoint *checkpoint; // owns the mapped file the weights live in
} Transformer;

// Part 2, "Reading any checkpoint": makes room in the KV cache for positions 0..n-1 (n <= S),
// checking first that the weights, the activations and those pages fit in memory, so that a
// cache that would outgrow the machine is refused in one line before it is filled. Returns 0,
// or -1 after a report.
static int reserve_positions(Transformer *t, int n);

// ----------------------------------------------------------------------------
// 3. Plain math
// Each output element is summed by one thread in one fixed order, so results do not depend on
// the number of threads: greedy decoding gives the same tokens with 1 thread or 16.

static float dot(const float *a, const float *b, size_t n) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (size_t i = 0; i < n; i++) {
        sum += a[i] * b[i];
    }
    return sum;
}

// IEEE half precision to fp32, exactly (every half is a float): 1 sign bit, 5 exponent bits
// (bias 15), 10 mantissa bits. Exponent 0 holds zero and the subnormals, mantissa * 2^-24;
// exponent 31 infinity and NaN.
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    float value;
    if (exponent == 0) {
        value = ldexpf((float)mantissa, -24);
        return sign ? -value : value;
    }
    uint32_t bits = exponent == 31 ? sign | 0x7f800000u | mantissa << 13
                                   : sign | (exponent + 112) << 23 | mantissa << 13;
    memcpy(&value, &bits, sizeof value);
    return value;
}

// The little-endian half at p (Q8_0 scales sit at even but not 4-byte-aligned offsets).
static uint16_t load_half(const unsigned char *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

// A Q8_0 block: an fp16 scale d, then 32 int8 values q; the weight is d * q.
#define Q8_0_BLOCK 32 // values per block
#define Q8_0_BYTES 34 // bytes per block

// A row of blocks (n weights) turned back into fp32, out (n): scale * q - minimum.
static void decode_blocks(const BlockType *type, const unsigned char *blocks, float *out,
                          size_t n) {
    uint8_t q[MAX_BLOCK_VALUES];
    float scale[MAX_BLOCK_VALUES / 16], minimum[MAX_BLOCK_VALUES / 16];
    for (size_t b = 0; b < n / type->values; b++, blocks += type->bytes) {
        type->unpack(blocks, q, scale, minimum);
        for (int i = 0; i < type->values; i++) {
            out[b * type->values + i] = scale[i / 16] * q[i] - minimum[i / 16];
        }
    }
}

// Bytes of one row of n weights in blocks.
static size_t block_row_bytes(const BlockType *type, size_t n) {
    return n / type->values * type->bytes;
}

// Row `row` of W turned back into fp32, out (cols): what each encoding means.
static void decode_row(const Matrix *w, size_t row, float *out) {
    size_t n = w->cols;
    if (w->blocks != NULL) {
        decode_blocks(w->block_type, w->blocks + row * block_row_bytes(w->block_type, n), out, n);
    } else if (w->f32 != NULL) {
        memcpy(out, w->f32 + row * n, n * sizeof(float));
    } else if (w->f16 != NULL) {
        for (size_t i = 0; i < n; i++) {
            out[i] = half_to_float(w->f16[row * n + i]);
        }
    } else if (w->q8_0 != NULL) {
        const unsigned char *block = w->q8_0 + row * (n / Q8_0_BLOCK) * Q8_0_BYTES;
        for (size_t b = 0; b < n / Q8_0_BLOCK; b++, block += Q8_0_BYTES) {
            float scale = half_to_float(load_half(block));
            const int8_t *values = (const int8_t *)(block + 2);
            for (int i = 0; i < Q8_0_BLOCK; i++) {
                out[b * Q8_0_BLOCK + i] = values[i] * scale;
            }
        }
    } else {
        const int8_t *values = w->q8 + row * n;
        const float *scales = w->scales + row * (n / w->group);
        for (size_t i = 0; i < n; i++) {
            out[i] = values[i] * scales[i / w->group];
        }
    }
}

// int8 and Q8_0 weights meet int8 activations: x is quantized in the same groups as the weights
// (each group's largest magnitude becomes 127), so each group's dot product is an exact integer
// sum, and the product of the two groups' scales turns it back into a real number:
// sum over groups g of (w_g . x_g) * w_scale_g * x_scale_g.
static void quantize_row(int8_t *q, float *scales, const float *x, size_t n, int group) {
    for (size_t start = 0; start < n; start += group) {
        float max = 0.0f;
#pragma omp simd reduction(max : max)
        for (int i = 0; i < group; i++) {
            float size = fabsf(x[start + i]);
            max = size > max ? size : max;
        }
        float scale = max / 127.0f;
        float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (int i = 0; i < group; i++) {
            q[start + i] = (int8_t)lrintf(x[start + i] * inverse);
        }
        scales[start / group] = scale;
    }
}

static float dot_q8(const int8_t *w, const float *w_scales, const int8_t *x, const float *x_scales,
                    size_t n, int group) {
    float sum = 0.0f;
    for (size_t start = 0; start < n; start += group) {
        int32_t integer = 0;
        for (int i = 0; i < group; i++) {
            integer += (int32_t)w[start + i] * x[start + i];
        }
        sum += (float)integer * w_scales[start / group] * x_scales[start / group];
    }
    return sum;
}

// Q8_0 as int8 in groups of 32, each block's scale read from the block itself.
static float dot_q8_0(const unsigned char *blocks, const int8_t *x, const float *x_scales,
                      size_t n) {
    float sum = 0.0f;
    for (size_t b = 0; b < n / Q8_0_BLOCK; b++) {
        const unsigned char *block = blocks + b * Q8_0_BYTES;
        const int8_t *values = (const int8_t *)(block + 2);
        int32_t integer = 0;
        for (int i = 0; i < Q8_0_BLOCK; i++) {
            integer += (int32_t)values[i] * x[b * Q8_0_BLOCK + i];
        }
        sum += (float)integer * half_to_float(load_half(block)) * x_scales[b];
    }
    return sum;
}

// F16 weights meet fp32 activations: each weight is widened to fp32 as it is read, so the
// product reads half the bytes of an fp32 one and computes the same sum of exact products.
static float dot_f16(const uint16_t *w, const float *x, size_t n) {
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        sum += half_to_float(w[i]) * x[i];
    }
    return sum;
}

// Blocks against fp32 activations, x (n): each run of 16 weights contributes
// scale * (q . x) - minimum * sum(x), so a block's integers meet x without being decoded.
static float dot_blocks(const BlockType *type, const unsigned char *blocks, const float *x,
                        size_t n) {
    uint8_t q[MAX_BLOCK_VALUES];
    float scale[MAX_BLOCK_VALUES / 16], minimum[MAX_BLOCK_VALUES / 16], sum = 0.0f;
    for (size_t b = 0; b < n / type->values; b++, blocks += type->bytes) {
        type->unpack(blocks, q, scale, minimum);
        for (int run = 0; run < type->values / 16; run++) {
            const float *xr = x + b * type->values + run * 16;
            float qx = 0.0f, sum_x = 0.0f;
            for (int i = 0; i < 16; i++) {
                qx += q[run * 16 + i] * xr[i];
                sum_x += xr[i];
            }
            sum += scale[run] * qx - minimum[run] * sum_x;
        }
    }
    return sum;
}

// Row `row` of W against one position's x (n), in W's encoding: int8 and Q8_0 rows read x as
// quantized beforehand into x_q8 and x_scales.
static float row_dot(const Matrix *w, size_t row, const float *x, const int8_t *x_q8,
                     const float *x_scales) {
    size_t n = w->cols;
    if (w->f32 != NULL) {
        return dot(w->f32 + row * n, x, n);
    }
    if (w->blocks != NULL) {
        return dot_blocks(w->block_type, w->blocks + row * block_row_bytes(w->block_type, n), x, n);
    }
    if (w->f16 != NULL) {
        return dot_f16(w->f16 + row * n, x, n);
    }
    if (w->q8_0 != NULL) {
        return dot_q8_0(w->q8_0 + row * (n / Q8_0_BLOCK) * Q8_0_BYTES, x_q8, x_scales, n);
    }
    return dot_q8(w->q8 + row * n, w->scales + row * (n / w->group), x_q8, x_scales, n, w->group);
}

// The product every layer is built from: out (B, d) = x (B, n) @ W (d, n)^T, one dot product
// per row of W and position.
static void matmul(float *out, const float *x, int n_positions, const Matrix *w, RunState *s) {
    size_t n = w->cols, d = w->rows;
    bool quantized = w->q8 != NULL || w->q8_0 != NULL;
    for (int p = 0; p < n_positions; p++) {
        const float *x_p = x + (size_t)p * n;
        if (quantized) {
            quantize_row(s->x_q8, s->x_scales, x_p, n, w->group); // Q8_0: groups of 32
        }
        for (size_t row = 0; row < d; row++) {
            out[(size_t)p * d + row] = row_dot(w, row, x_p, s->x_q8, s->x_scales);
        }
    }
}

// Products of one input: queries, keys and values are three of them, and so are the
// feed-forward's gate and value. The plain build computes them one after the other; the fast
// one shares one preparation of x and one wait for the threads.
static void matmul_shared(float *const *outs, const float *x, int n_positions,
                          const Matrix *const *ws, int count, RunState *s) {
    for (int i = 0; i < count; i++) {
        matmul(outs[i], x, n_positions, ws[i], s);
    }
}

// out (n) = x (n) / sqrt(mean(x^2) + eps) * weight (n). out may be x.
static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    float mean_square = dot(x, x, n) / n;
    float inverse_rms = 1.0f / sqrtf(mean_square + eps);
    for (int i = 0; i < n; i++) {
        out[i] = x[i] * inverse_rms * weight[i];
    }
}

// LayerNorm (GPT-2): out (n) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias. RMSNorm
// above is the same without the mean and the bias, one pass cheaper; models trained with it
// lose nothing.
static void layernorm(float *out, const float *x, const float *weight, const float *bias, int n,
                      float eps) {
    float mean = 0.0f, variance = 0.0f;
    for (int i = 0; i < n; i++) {
        mean += x[i];
    }
    mean /= n;
    for (int i = 0; i < n; i++) {
        variance += (x[i] - mean) * (x[i] - mean);
    }
    float inverse_std = 1.0f / sqrtf(variance / n + eps);
    for (int i = 0; i < n; i++) {
        out[i] = (x[i] - mean) * inverse_std * weight[i] + bias[i];
    }
}

// The norm the model uses, for each of n_positions rows of D: out may be x. weight (D), bias
// (D) or NULL.
static void normalize(float *out, const float *x, int n_positions, const float *weight,
                      const float *bias, const Config *c) {
    size_t D = c->dim;
    for (int i = 0; i < n_positions; i++) {
        if (c->norm == NORM_LAYER) {
            layernorm(out + i * D, x + i * D, weight, bias, D, c->norm_eps);
        } else {
            rmsnorm(out + i * D, x + i * D, weight, D, c->norm_eps);
        }
    }
}

// x (n_positions, n) += bias (n) on every row: the linear layers of GPT-2 and Qwen2's q, k and
// v are affine, W x + b. Nothing to do without a bias.
static void add_bias(float *x, const float *bias, int n_positions, size_t n) {
    for (int p = 0; bias != NULL && p < n_positions; p++) {
        for (size_t i = 0; i < n; i++) {
            x[p * n + i] += bias[i];
        }
    }
}

// Gemma 2's soft cap: cap * tanh(x / cap) keeps x below cap in size, and leaves small values
// almost unchanged (tanh(u) ~ u); a cap of 0 means none.
static float soft_cap(float x, float cap) {
    return cap > 0.0f ? cap * tanhf(x / cap) : x;
}

// Turns x (n) into probabilities in place. Subtracting the maximum first keeps exp from
// overflowing; entries of -INFINITY (masked out) become exactly 0.
static void softmax(float *x, int n) {
    float max = x[0];
    for (int i = 1; i < n; i++) {
        max = x[i] > max ? x[i] : max;
    }
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) {
        x[i] /= sum;
    }
}

static float silu(float x) {
    return x / (1.0f + expf(-x));
}

// The feed-forward's gate: hb[i] = silu(hb[i]) * hb2[i] for i < count.
static void swiglu(float *hb, const float *hb2, size_t count) {
    for (size_t i = 0; i < count; i++) {
        hb[i] = silu(hb[i]) * hb2[i];
    }
}

// GELU, x times the chance that a standard normal lies below x, in the tanh form GPT-2 and
// Gemma were trained with: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
static float gelu(float x) {
    const float sqrt_2_over_pi = 0.7978845608f;
    return 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * (x + 0.044715f * x * x * x)));
}

// Gemma's gate: hb[i] = gelu(hb[i]) * hb2[i]; GPT-2 has no gate, hb2 NULL: hb[i] = gelu(hb[i]).
static void gelu_gate(float *hb, const float *hb2, size_t count) {
    for (size_t i = 0; i < count; i++) {
        hb[i] = hb2 != NULL ? gelu(hb[i]) * hb2[i] : gelu(hb[i]);
    }
}

// Rotary position embedding. Each head's vector is read as hd / 2 pairs, and pair i of position
// pos is rotated by the angle pos * theta^(-2i / hd): low pairs turn fast, high pairs slowly. A
// query at position m and a key at position n are both rotated, so their dot product depends on
// m - n alone: attention sees relative position.
// Two refinements: position_scale (linear RoPE scaling) stretches a trained context by turning
// every pair more slowly; divisors (hd / 2, Llama 3, or NULL) slow down each pair by its own
// factor, the low-frequency pairs most, which is how Llama 3 reaches 128k positions.
static void rope_angles(float *cos_out, float *sin_out, float position, int head_dim, float theta,
                        const float *divisors) {
    for (int i = 0; i < head_dim / 2; i++) {
        double frequency = pow((double)theta, -2.0 * i / head_dim);
        double angle = position * frequency / (divisors != NULL ? divisors[i] : 1.0f);
        cos_out[i] = (float)cos(angle);
        sin_out[i] = (float)sin(angle);
    }
}

// Rotates every head of x (n_heads, head_dim) by the angles of one position. Which components
// form pair i is the model's convention: (x[2i], x[2i+1]) in Llama, (x[i], x[i + hd/2]) in
// Qwen2 and Gemma. Both are the same rotation of a permuted vector; a model works only with
// the one it was trained with.
static void rope_rotate(float *x, int n_heads, int head_dim, const float *cos_table,
                        const float *sin_table, RopeKind kind) {
    int half = head_dim / 2;
    for (int head = 0; head < n_heads; head++) {
        float *v = x + (size_t)head * head_dim;
        for (int i = 0; i < half; i++) {
            float *a = kind == ROPE_HALVES ? &v[i] : &v[2 * i];
            float *b = kind == ROPE_HALVES ? &v[i + half] : &v[2 * i + 1];
            float a0 = *a, b0 = *b;
            *a = a0 * cos_table[i] - b0 * sin_table[i];
            *b = a0 * sin_table[i] + b0 * cos_table[i];
        }
    }
}

// ----------------------------------------------------------------------------
// 4. Attention
//
// The query of head h at position pos asks "which earlier positions matter to me?". Its answer is
// a weight for each position t <= pos: the dot product of the query with t's key, divided by
// sqrt(hd) so that the scores keep unit scale as heads get wider, then softmax over t. The head's
// output is the weighted sum of the values at those positions.
//
// Head groups: the H query heads are split into KVH groups of group_size = H / KVH consecutive
// heads, and every head of group g reads key/value head g. So query head h reads kv head
// h / group_size. With KVH = H every query head has its own keys and values (MHA); with KVH = 1
// all of them share one (MQA); in between is GQA. The cache only stores KVH heads, which is the
// whole point: it shrinks by the factor group_size.
//
// Causality needs no mask: position pos reads the cache up to pos and stops, so it never sees a
// later position, not even one of its own block whose keys are already in the cache.
//
// Two variations, both Gemma 2's. Its scores pass through a soft cap, cap * tanh(s / cap),
// so that no key can take all of a head's weight. Its even layers attend over a sliding window:
// position pos sees only positions pos - W + 1..pos, so those layers' caches need only the last
// W positions (section 2), however long the context.
typedef struct {
    float scale;   // q.k times scale: 1 / sqrt(hd) in all but one model
    float softcap; // 0: none
    int window;    // W; 0: every earlier position
} ScoreRule;

static ScoreRule score_rule(const Config *c, int layer) {
    return (ScoreRule){c->query_scale, c->attention_softcap, layer_window(c, layer)};
}

// The first of positions 0..pos that a query at pos sees under the rule.
static int first_visible(const ScoreRule *rule, int pos) {
    return rule->window > 0 && pos >= rule->window ? pos - rule->window + 1 : 0;
}

// How well a query matches a key, as attention weighs it before the softmax.
static float attention_score(const float *query, const float *key, int head_dim,
                             const ScoreRule *rule) {
    return soft_cap(dot(query, key, head_dim) * rule->scale, rule->softcap);
}

// The definition, as a textbook writes it: one query head at position n_keys - 1 attending
// over the positions 0..n_keys-1 of one key/value head. The model computes the same thing tile
// by tile (below); this is the reference the tests hold it to, and what the inspector shows.
// query: (hd); keys, values: this kv head's vector at each position, position t's at
//   keys + t * kv_stride
// weights: (n_keys) receives the attention weights, 0 outside a window; out: (hd) the weighted
//   sum of the values
static void attend(float *out, float *weights, const float *query, const float *keys,
                   const float *values, int head_dim, size_t kv_stride, int n_keys,
                   const ScoreRule *rule) {
    int first = first_visible(rule, n_keys - 1);
    for (int t = 0; t < n_keys; t++) { // how well the query matches each key it sees
        weights[t] =
            t < first ? -INFINITY : attention_score(query, keys + t * kv_stride, head_dim, rule);
    }
    softmax(weights, n_keys); // scores -> weights that are positive and sum to 1
    memset(out, 0, head_dim * sizeof(float));
    for (int t = first; t < n_keys; t++) {
        const float *value = values + t * kv_stride;
        for (int j = 0; j < head_dim; j++) {
            out[j] += weights[t] * value[j];
        }
    }
}

// attend needs all n_keys scores at once, and at a context of a million positions that buffer,
// for every head of every position of a block, would not fit. So the model reads keys and
// values in tiles of KV_TILE positions and keeps, for each query head, a summary of the tiles
// seen so far: the online softmax of FlashAttention.
//   max  m: the largest score so far
//   sum  l: the sum of exp(score - m) over the keys so far
//   acc  (hd): the sum of exp(score - m) * value over the keys so far
// A tile whose scores go higher moves the maximum to m'; every term summed so far then needs
// the factor exp(m - m'), and since they all share it, l and acc are rescaled once. After the
// last tile, acc / l is softmax-then-weighted-sum: attend's output, up to rounding.
//
// One step of that recurrence: a tile of n keys and values (rows of hd, side by side) for one
// query head. acc (hd), *max and *sum hold the head's state: 0, -INFINITY and 0 before the
// first tile.
static void online_softmax_step(float *acc, float *max, float *sum, const float *query,
                                const float *keys, const float *values, int n, int head_dim,
                                const ScoreRule *rule) {
    float s[KV_TILE];
    float tile_max = -INFINITY;
    for (int t = 0; t < n; t++) { // the tile's scores s, as in attend
        s[t] = attention_score(query, keys + (size_t)t * head_dim, head_dim, rule);
        tile_max = s[t] > tile_max ? s[t] : tile_max;
    }
    float new_max = tile_max > *max ? tile_max : *max; // m' = max(m, the tile's largest s)
    float rescale = expf(*max - new_max);              // exp(m - m'); 0 before the first tile
    *sum *= rescale;                                   // l = l * exp(m - m')
    for (int j = 0; j < head_dim; j++) {
        acc[j] *= rescale; // acc = acc * exp(m - m')
    }
    for (int t = 0; t < n; t++) {
        float p = expf(s[t] - new_max); // exp(s - m'): the key's weight, not yet normalised
        *sum += p;                      // l = l + exp(s - m')
        const float *value = values + (size_t)t * head_dim;
        for (int j = 0; j < head_dim; j++) {
            acc[j] += p * value[j]; // acc = acc + exp(s - m') * v
        }
    }
    *max = new_max; // m = m'
}

// The online-softmax state of a block's query heads: acc (B, H * hd), max and sum (B, H); the
// state of query head h of block position i is at row i * H + h.
typedef struct {
    float *acc, *max, *sum;
} AttentionState;

// A tile of one kv head's keys and values: positions t0..t0+n-1, rows of hd side by side, and
// how this layer scores them.
typedef struct {
    const float *keys, *values; // (n, hd)
    int t0, n;
    ScoreRule rule;
} KvTile;

// The keys of the tile that the query at position pos sees: rows *from..*to-1 (none when
// *from >= *to), cut at pos (causal) and at the start of a sliding window.
static void visible_rows(const KvTile *tile, int pos, int *from, int *to) {
    int first = first_visible(&tile->rule, pos) - tile->t0;
    int end = pos + 1 - tile->t0;
    *from = first > 0 ? first : 0;
    *to = end < tile->n ? end : tile->n;
}

// One tile for every query head of kv head kv_head's group and block positions i0..i1-1: the
// recurrence's step for each (position, head), position i seeing the tile up to its own
// position start + i (causal), so the tile is cut short or skipped for it.
static void online_softmax_tile(AttentionState st, const float *q, const KvTile *tile, int kv_head,
                                int start, int i0, int i1, const Config *c) {
    int hd = c->head_dim, group_size = group_size_of(c);
    size_t q_dim = (size_t)c->n_heads * hd;
    for (int i = i0; i < i1; i++) {
        int from, to; // the keys of this tile that position start + i sees
        visible_rows(tile, start + i, &from, &to);
        for (int h = 0; h < group_size && from < to; h++) {
            int head = kv_head * group_size + h; // the group shares this tile
            size_t row = (size_t)i * c->n_heads + head;
            online_softmax_step(st.acc + row * hd, st.max + row, st.sum + row,
                                q + i * q_dim + (size_t)head * hd, tile->keys + (size_t)from * hd,
                                tile->values + (size_t)from * hd, to - from, hd, &tile->rule);
        }
    }
}

// online_softmax_tile, or a fast kernel that stands for it (Part 2).
typedef void TileFunction(AttentionState st, const float *q, const KvTile *tile, int kv_head,
                          int start, int i0, int i1, const Config *c);

// The query heads of kv head kv_head's group, for block positions i0..i1-1, over the cache's
// positions first..end-1 (first a multiple of KV_TILE). Position i sees the cache up to its own
// position start + i, so tiles past it are cut short or skipped for it; tiles before the window
// of the first position are not read at all.
// Each tile of keys and values is read from the cache once, for every head of the group and
// every position: for a decode step of an MQA model one pass over the cache serves all H query
// heads, where MHA makes H passes over H times as many keys. That is the memory GQA and MQA save
// at length. tile: scratch (2, KV_TILE, hd) for keys and values stored as fp16 or int8.
static void attend_tiles(AttentionState st, const float *q, const KvCache *kv, int layer,
                         int kv_head, int start, int i0, int i1, int first, int end,
                         const Config *c, float *tile, TileFunction *tile_function) {
    int hd = c->head_dim;
    ScoreRule rule = score_rule(c, layer);
    int window_start = first_visible(&rule, start + i0) / KV_TILE * KV_TILE;
    for (int t0 = first > window_start ? first : window_start; t0 < end; t0 += KV_TILE) {
        int n = end - t0 < KV_TILE ? end - t0 : KV_TILE; // within one page: KV_TILE divides it
        KvTile kv_tile = {kv_rows(kv, layer, KV_KEYS, kv_head, t0, n, tile),
                          kv_rows(kv, layer, KV_VALUES, kv_head, t0, n, tile + KV_TILE * hd), t0, n,
                          rule};
        tile_function(st, q, &kv_tile, kv_head, start, i0, i1, c);
    }
}

// Every head of every position of the block: attn_out (B, H * hd) from the queries s->q
// (B, H * hd) and this layer's cache, filled up to position start + n_positions - 1. Each kv
// head's group reads the cache from its first position to the block's last one sees.
static void attention(RunState *s, int layer, int start, int n_positions, const Config *c) {
    size_t heads = (size_t)n_positions * c->n_heads, hd = c->head_dim;
    memset(s->attn_out, 0, heads * hd * sizeof(float));
    for (size_t row = 0; row < heads; row++) { // no keys seen yet
        s->run_max[row] = -INFINITY, s->run_sum[row] = 0.0f;
    }
    AttentionState st = {s->attn_out, s->run_max, s->run_sum};
    for (int kv_head = 0; kv_head < c->n_kv_heads; kv_head++) {
        attend_tiles(st, s->q, &s->kv, layer, kv_head, start, 0, n_positions, 0,
                     start + n_positions, c, s->kv_tile, online_softmax_tile);
    }
    for (size_t row = 0; row < heads; row++) { // the output of each head: acc / l
        for (size_t j = 0; j < hd; j++) {
            s->attn_out[row * hd + j] /= s->run_sum[row];
        }
    }
}

// ----------------------------------------------------------------------------
// 5. Forward pass: a block of positions through every layer
//
// Each layer adds two things to the residual stream x: what attention reads from earlier
// positions, then what the feed-forward network makes of it. Both read a normalised copy of x
// and add their result back, so x carries everything from layer to layer.

// Position i of the block, start + i: its queries and keys rotated by their position (RoPE;
// values carry no position; GPT-2 rotates nothing), then its key and value put into the cache.
static void rotate_and_cache_position(RunState *s, const Config *c, int layer, int start, int i) {
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = kv_dim_of(c);
    const float *cos_table = s->rope_cos + i * c->head_dim / 2;
    const float *sin_table = s->rope_sin + i * c->head_dim / 2;
    if (c->rope != ROPE_NONE) {
        rope_rotate(s->q + i * q_dim, c->n_heads, c->head_dim, cos_table, sin_table, c->rope);
        rope_rotate(s->k + i * kv_dim, c->n_kv_heads, c->head_dim, cos_table, sin_table, c->rope);
    }
    kv_store(&s->kv, layer, KV_KEYS, start + i, s->k + i * kv_dim);
    kv_store(&s->kv, layer, KV_VALUES, start + i, s->v + i * kv_dim);
}

// Every position of the block, in order.
static void rotate_and_cache(RunState *s, const Config *c, int layer, int start, int n_positions) {
    for (int i = 0; i < n_positions; i++) {
        rotate_and_cache_position(s, c, layer, start, i);
    }
}

// The seam between the two parts: the functions the forward pass calls through s->kernels. The
// plain build's table holds the definitions above. The default build's (Part 2, fast_kernels)
// holds kernels that compute the same numbers faster, threaded, in register tiles and with
// AVX-512 where the processor has it; each names the function above it stands for, and the
// tests hold each to it.
struct Kernels {
    void (*matmul)(float *out, const float *x, int n_positions, const Matrix *w, RunState *s);
    void (*matmul_shared)(float *const *outs, const float *x, int n_positions,
                          const Matrix *const *ws, int count, RunState *s);
    void (*swiglu)(float *hb, const float *hb2, size_t count);
    void (*rotate_and_cache)(RunState *s, const Config *c, int layer, int start, int n_positions);
    void (*attention)(RunState *s, int layer, int start, int n_positions, const Config *c);
};

static const Kernels plain_kernels = {matmul, matmul_shared, swiglu, rotate_and_cache, attention};

// Hands the inspector a layer's queries and cache (Part 2, "Inspection"); only called when
// --attn, --explain or --attn-dump set s->inspector.
static void inspect_layer(Inspector *inspector, const Config *c, int layer, int start,
                          int n_positions, const float *q, const KvCache *kv);

// x += attention(norm(x)) for one layer and the block's positions.
static void attention_block(Transformer *t, int layer, int start, int n_positions) {
    const Config *c = &t->config;
    const Weights *w = &t->weights;
    RunState *s = &t->state;
    size_t D = c->dim, q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = kv_dim_of(c);
    Matrix wq = layer_matrix(&w->wq, layer), wk = layer_matrix(&w->wk, layer);
    Matrix wv = layer_matrix(&w->wv, layer), wo = layer_matrix(&w->wo, layer);

    // Normalise each position's x: xb (B, D).
    normalize(s->xb, s->x, n_positions, w->rms_att + layer * D, layer_vector(w->bias_att, layer, D),
              c);
    // Project to queries (B, H * hd), and to keys and values (B, KVH * hd). Qwen2 and GPT-2
    // add a bias to each; Llama and Gemma have none.
    float *projected[] = {s->q, s->k, s->v};
    const Matrix *projections[] = {&wq, &wk, &wv};
    s->kernels->matmul_shared(projected, s->xb, n_positions, projections, 3, s);
    add_bias(s->q, layer_vector(w->bq, layer, q_dim), n_positions, q_dim);
    add_bias(s->k, layer_vector(w->bk, layer, kv_dim), n_positions, kv_dim);
    add_bias(s->v, layer_vector(w->bv, layer, kv_dim), n_positions, kv_dim);
    // Rotate queries and keys by their positions (RoPE), and put keys and values into the cache:
    // a position of the block attends to the block's earlier positions too.
    s->kernels->rotate_and_cache(s, c, layer, start, n_positions);
    if (s->inspector != NULL) {
        inspect_layer(s->inspector, c, layer, start, n_positions, s->q, &s->kv);
    }
    // Every query head reads its kv head's cache: attn_out (B, H * hd).
    s->kernels->attention(s, layer, start, n_positions, c);
    // Mix the heads back into the residual stream: x += attn_out @ wo^T (+ bo), (B, D); Gemma 2
    // normalises the result first.
    s->kernels->matmul(s->xb, s->attn_out, n_positions, &wo, s);
    add_bias(s->xb, layer_vector(w->bo, layer, D), n_positions, D);
    if (w->post_att != NULL) {
        normalize(s->xb, s->xb, n_positions, w->post_att + layer * D, NULL, c);
    }
    for (size_t i = 0; i < n_positions * D; i++) {
        s->x[i] += s->xb[i];
    }
}

// The feed-forward's hidden layer, hb (B, F), from the normalised xb (B, D): a gate times a
// value in Llama (SwiGLU) and Gemma (GeGLU), one GELU layer in GPT-2.
static void feed_forward_hidden(Transformer *t, int layer, int n_positions) {
    const Config *c = &t->config;
    const Weights *w = &t->weights;
    RunState *s = &t->state;
    size_t F = c->hidden_dim;
    Matrix w1 = layer_matrix(&w->w1, layer), w3 = layer_matrix(&w->w3, layer);
    if (c->feed_forward == FFN_GELU) { // hb = gelu(xb @ w3^T + b3)
        s->kernels->matmul(s->hb, s->xb, n_positions, &w3, s);
        add_bias(s->hb, layer_vector(w->b3, layer, F), n_positions, F);
        gelu_gate(s->hb, NULL, (size_t)n_positions * F);
        return;
    }
    // Widen to F twice: a gate (w1) and a value (w3), hb and hb2 (B, F).
    float *widened[] = {s->hb, s->hb2};
    const Matrix *widenings[] = {&w1, &w3};
    s->kernels->matmul_shared(widened, s->xb, n_positions, widenings, 2, s);
    // The gate, through silu (or gelu), scales the value element by element.
    if (c->feed_forward == FFN_GEGLU) {
        gelu_gate(s->hb, s->hb2, (size_t)n_positions * F);
    } else {
        s->kernels->swiglu(s->hb, s->hb2, (size_t)n_positions * F);
    }
}

// x += w2(hidden(h)) with h = norm(x): the feed-forward layer.
static void feed_forward_block(Transformer *t, int layer, int n_positions) {
    const Config *c = &t->config;
    const Weights *w = &t->weights;
    RunState *s = &t->state;
    size_t D = c->dim;
    Matrix w2 = layer_matrix(&w->w2, layer);

    // Normalise each position's x: xb (B, D).
    normalize(s->xb, s->x, n_positions, w->rms_ffn + layer * D, layer_vector(w->bias_ffn, layer, D),
              c);
    feed_forward_hidden(t, layer, n_positions);
    // Narrow back to D and add to the residual stream: x += hb @ w2^T (+ b2), (B, D); Gemma 2
    // normalises first.
    s->kernels->matmul(s->xb, s->hb, n_positions, &w2, s);
    add_bias(s->xb, layer_vector(w->b2, layer, D), n_positions, D);
    if (w->post_ffn != NULL) {
        normalize(s->xb, s->xb, n_positions, w->post_ffn + layer * D, NULL, c);
    }
    for (size_t i = 0; i < n_positions * D; i++) {
        s->x[i] += s->xb[i];
    }
}

// Which positions of a block need logits: the classifier is the largest matrix of a small
// model, and prompt positions need only their keys and values, except the last one.
typedef enum { LOGITS_NONE, LOGITS_LAST, LOGITS_ALL } LogitsWanted;

// Each token's row of the embedding, as fp32, into x (B, D), and the rotation angles of each
// position. Gemma scales the embedding by sqrt(D); GPT-2 adds a learned vector for the position
// here, where Llama instead rotates q and k (rotate_and_cache).
static void embed_block(Transformer *t, const int *tokens, int n, int start) {
    const Config *c = &t->config;
    const Weights *w = &t->weights;
    RunState *s = &t->state;
    size_t D = c->dim, half = c->head_dim / 2;
    for (int i = 0; i < n; i++) {
        float *x = s->x + i * D;
        decode_row(&w->token_embedding, tokens[i], x);
        for (size_t j = 0; c->embedding_scale != 1.0f && j < D; j++) {
            x[j] *= c->embedding_scale;
        }
        if (c->rope == ROPE_NONE) {
            decode_row(&w->position_embedding, start + i, s->xb);
            for (size_t j = 0; j < D; j++) {
                x[j] += s->xb[j];
            }
        } else {
            rope_angles(s->rope_cos + i * half, s->rope_sin + i * half, (start + i) * c->rope_scale,
                        c->head_dim, c->rope_theta, w->rope_divisors);
        }
    }
}

// Runs tokens[0..n) (n <= BLOCK) through the model at positions start..start+n-1; positions
// 0..start-1 must already be in the KV cache, and the cache must have room up to start+n-1
// (reserve_positions). Returns the logits: (V) of the last position for
// LOGITS_LAST, (n, V) for LOGITS_ALL, NULL for LOGITS_NONE.
static float *forward_block(Transformer *t, const int *tokens, int n, int start,
                            LogitsWanted wanted) {
    const Config *c = &t->config;
    RunState *s = &t->state;
    size_t D = c->dim;
    embed_block(t, tokens, n, start);
    for (int layer = 0; layer < c->n_layers; layer++) {
        attention_block(t, layer, start, n);
        feed_forward_block(t, layer, n);
    }
    if (wanted == LOGITS_NONE) {
        return NULL;
    }
    int first = wanted == LOGITS_ALL ? 0 : n - 1;
    normalize(s->x + first * D, s->x + first * D, n - first, t->weights.rms_final,
              t->weights.bias_final, c);
    s->kernels->matmul(s->logits, s->x + first * D, n - first, &t->weights.classifier, s);
    size_t count = (size_t)(n - first) * c->vocab_size;
    for (size_t i = 0; c->logits_softcap > 0.0f && i < count; i++) { // Gemma 2
        s->logits[i] = soft_cap(s->logits[i], c->logits_softcap);
    }
    return s->logits;
}

// One token at position pos: the step of generation. Returns its logits (V), or NULL.
static float *forward(Transformer *t, int token, int pos, bool want_logits) {
    return forward_block(t, &token, 1, pos, want_logits ? LOGITS_LAST : LOGITS_NONE);
}

// ----------------------------------------------------------------------------
// 6. Tokenizer: byte pair encoding (BPE), sentencepiece's and GPT-2's
//
// Both kinds start from small symbols and keep merging the adjacent pair that ranks best, the
// leftmost on ties, until no pair merges. They differ in the symbols and the ranking.
//
// Sentencepiece (llama2.c's tokenizer.bin, Llama 2, the shipped models): a piece is a string
// (sentencepiece's '▁' already turned back into ' '), a byte-fallback piece "<0xAB>" standing for
// the single byte 0xAB, or a control piece (unknown, BOS, EOS) that never comes out of text.
// Encoding prepends a space (the "dummy prefix", so a word reads the same at the start of a text
// as in its middle), splits the text into UTF-8 characters, gives each its piece or, failing
// that, one byte piece per byte; a pair merges when its concatenation is a piece, the piece with
// the highest score first.
//
// Byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM: a GGUF tokenizer.ggml.model "gpt2"): the text is
// first cut into pre-tokens by the vocabulary's regular expression (words with their leading
// space, runs of digits, punctuation, whitespace; Part 2, "Byte-level vocabularies and
// pre-tokenizers"), and merges never
// cross a pre-token. Every byte is a symbol of its own, so no text is unknown; the vocabulary's
// merge list names the pairs that merge, the first in the list first.
//
// Part 2 reads the pieces from a tokenizer.bin file, a checkpoint or a GGUF file, checking every
// record first ("The tokenizer file", and the byte-level section). A GGUF vocabulary also marks
// control tokens (<|endoftext|>, <|im_start|>) that a prompt may write literally: Part 2 finds
// those first.

typedef struct {
    char *key;
    int value;
} PieceEntry;

// A merge of byte-level BPE: the pair's place in the merge list, and the piece it makes.
typedef struct {
    uint64_t key; // left id << 32 | right id
    struct {
        int rank, merged;
    } value;
} MergeEntry;

typedef struct PreTokenizer PreTokenizer; // Part 2: the vocabulary's regular expression

typedef struct {
    int vocab_size;
    char **pieces;              // (V) NUL-terminated piece text, pointing into piece_text
    char *piece_text;           // all pieces, back to back
    int *piece_lengths;         // (V) bytes in each piece
    float *scores;              // (V) merge priority: the higher merges first
    int16_t *byte_value;        // (V) the byte a byte-fallback piece stands for, or -1
    bool *mergeable;            // (V) an ordinary piece, one that text can produce by merging
    int max_piece_length;       // bytes in the longest ordinary piece
    PieceEntry *piece_ids;      // stb_ds string map: ordinary piece text -> id
    int byte_pieces[256];       // id of the byte-fallback piece of each byte, or -1
    int bos_id, eos_id, unk_id; // unk_id -1: no unknown piece (byte-level BPE needs none)
    bool add_bos, add_eos;      // what encoding a prompt adds around it
    bool add_space_prefix;      // sentencepiece's dummy prefix
    bool *ends_generation;      // (V) EOS, and the vocabulary's end-of-turn tokens
    // Byte-level BPE: pieces hold the bytes a token stands for, byte_pieces the one-byte tokens.
    bool byte_level;
    MergeEntry *merges; // stb_ds map: (left id, right id) -> rank and merged piece
    PreTokenizer *pre;  // Part 2: the regular expression that cuts text into pre-tokens
    int *specials;      // control and user-defined ids, longest text first, found in text as is
    int n_specials;
    bool special_starts[256]; // the bytes a special token's text begins with
    bool *control;            // (V) control tokens: written as nothing
    bool parse_specials;      // false for --no-special: their text is encoded like any other
} Tokenizer;

static int lookup_piece(const Tokenizer *t, const char *text) {
    PieceEntry *map = t->piece_ids; // stb_ds macros take a modifiable lvalue
    if (map == NULL) {
        return -1; // no ordinary pieces; stb_ds would allocate a map just to look
    }
    ptrdiff_t slot = shgeti(map, text);
    return slot < 0 ? -1 : map[slot].value;
}

// Bytes in the valid UTF-8 character that starts text[0..length), or 0 if none starts there
// (Part 2, "UTF-8").
static int utf8_char_length(const unsigned char *text, size_t length);

// Appends the initial pieces of text: one per character, or one byte piece per byte for
// characters that are not pieces (and for bytes that are not valid UTF-8).
static int split_characters(const Tokenizer *t, const unsigned char *text, size_t length,
                            int *tokens, int n) {
    size_t i = 0;
    while (i < length) {
        int char_length = utf8_char_length(text + i, length - i);
        if (char_length > 0) {
            char character[5] = {0};
            memcpy(character, text + i, char_length);
            int id = lookup_piece(t, character);
            if (id >= 0) {
                tokens[n++] = id;
                i += char_length;
                continue;
            }
        }
        int bytes = char_length > 0 ? char_length : 1;
        for (int b = 0; b < bytes; b++) {
            int id = t->byte_pieces[text[i + b]];
            tokens[n++] = id >= 0 ? id : t->unk_id;
        }
        i += bytes;
    }
    return n;
}

// The id of the piece that left followed by right merge into, or -1 if they do not merge, and
// its priority: sentencepiece merges the highest-scoring piece first, byte-level BPE the pair
// ranked first in the merge list.
static int merged_piece(const Tokenizer *t, int left, int right, char *buffer, float *priority) {
    if (!t->mergeable[left] || !t->mergeable[right]) {
        return -1;
    }
    if (t->byte_level) {
        MergeEntry *map = t->merges;
        ptrdiff_t slot = map != NULL ? hmgeti(map, (uint64_t)left << 32 | (uint32_t)right) : -1;
        if (slot < 0) {
            return -1;
        }
        *priority = -(float)map[slot].value.rank; // ranks stay below 2^24, exact in a float
        return map[slot].value.merged;
    }
    int a = t->piece_lengths[left], b = t->piece_lengths[right];
    if (a + b > t->max_piece_length) {
        return -1;
    }
    memcpy(buffer, t->pieces[left], a);
    memcpy(buffer + a, t->pieces[right], b);
    buffer[a + b] = '\0';
    int merged = lookup_piece(t, buffer);
    merged = merged >= 0 && t->mergeable[merged] ? merged : -1; // not a control token
    *priority = merged >= 0 ? t->scores[merged] : 0.0f;
    return merged;
}

// BPE with a priority queue, as sentencepiece does it, so that a long text costs O(n log n)
// rather than a rescan of every pair after every merge. The symbols form a linked list over
// their starting positions; the queue holds candidate merges, best score first and leftmost
// first on ties. A candidate goes stale when a neighbour merges first; it is then skipped.

typedef struct {
    float score;           // the higher merges first
    int left;              // position of the left symbol
    int left_id, right_id; // the pair's ids when the candidate was made
    int merged_id;         // the piece the pair spells
} MergeCandidate;

typedef struct {
    int *ids;  // (n) each position's current id; -1 once merged into its left neighbour
    int *next; // (n) position of the next live symbol, or n
    int *prev; // (n) position of the previous live symbol, or -1
    MergeCandidate *heap;
    int heap_size;
    char *buffer; // room to spell a candidate pair
} MergeState;

// The queue's two operations (Part 2): add a candidate; take out the best one.
static void heap_push(MergeState *m, MergeCandidate candidate);
static MergeCandidate heap_pop(MergeState *m);

// Queues the merge of the symbol at left with its right neighbour, if they spell a piece.
static void queue_merge(const Tokenizer *t, MergeState *m, int left, int n) {
    int right = left >= 0 ? m->next[left] : n;
    if (left < 0 || right >= n) {
        return;
    }
    float priority;
    int merged = merged_piece(t, m->ids[left], m->ids[right], m->buffer, &priority);
    if (merged >= 0) {
        heap_push(m, (MergeCandidate){priority, left, m->ids[left], m->ids[right], merged});
    }
}

// Merges tokens[0..n) in place and returns the new count, or -1 when out of memory.
static int merge_pairs(const Tokenizer *t, int *tokens, int n) {
    MergeState m = {
        .ids = tokens,
        .next = checked_calloc(n, sizeof(int), "encoding"),
        .prev = checked_calloc(n, sizeof(int), "encoding"),
        .heap = checked_calloc(3 * (size_t)n, sizeof(MergeCandidate), "encoding"),
        .buffer = checked_calloc(t->max_piece_length + 1, 1, "encoding"),
    };
    int result = -1;
    if (m.next != NULL && m.prev != NULL && m.heap != NULL && m.buffer != NULL) {
        for (int i = 0; i < n; i++) {
            m.next[i] = i + 1;
            m.prev[i] = i - 1;
        }
        for (int i = 0; i + 1 < n; i++) {
            queue_merge(t, &m, i, n);
        }
        while (m.heap_size > 0) {
            MergeCandidate c = heap_pop(&m);
            int right = m.next[c.left];
            if (m.ids[c.left] != c.left_id || right >= n || m.ids[right] != c.right_id) {
                continue; // stale: a neighbour merged first
            }
            m.ids[c.left] = c.merged_id;
            m.ids[right] = -1;
            m.next[c.left] = m.next[right];
            if (m.next[right] < n) {
                m.prev[m.next[right]] = c.left;
            }
            queue_merge(t, &m, m.prev[c.left], n);
            queue_merge(t, &m, c.left, n);
        }
        result = 0;
        for (int i = 0; i < n; i++) {
            if (tokens[i] >= 0) {
                tokens[result++] = tokens[i];
            }
        }
    }
    free(m.next);
    free(m.prev);
    free(m.heap);
    free(m.buffer);
    return result;
}

// The most ids that encoding length bytes can give: one per byte, the dummy prefix, BOS and EOS.
static size_t max_encoded_tokens(size_t length) {
    return length + 3;
}

// Sentencepiece's encoding of text[0..length) (no control tokens in it) into tokens. Returns the
// number of ids, or -1 when out of memory.
static int encode_sentencepiece(const Tokenizer *t, const char *text, size_t length, int *tokens) {
    if (length == 0) {
        return 0;
    }
    int n = t->add_space_prefix ? split_characters(t, (const unsigned char *)" ", 1, tokens, 0) : 0;
    n = split_characters(t, (const unsigned char *)text, length, tokens, n);
    return merge_pairs(t, tokens, n);
}

// Byte-level BPE of one pre-token, bytes[0..n): a symbol per byte, then the merges. (A few
// vocabularies lack the token of some byte, Falcon's of control bytes: that byte is left out,
// as llama.cpp leaves it out.)
static int encode_pretoken(const Tokenizer *t, const unsigned char *bytes, size_t n, int *tokens) {
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        if (t->byte_pieces[bytes[i]] >= 0) {
            tokens[count++] = t->byte_pieces[bytes[i]];
        }
    }
    return merge_pairs(t, tokens, count);
}

// Part 2, "Pre-tokenizers": the text cut into pieces of control tokens (when the vocabulary has
// them and they are parsed) and of plain text, each plain piece encoded by encode_sentencepiece,
// or cut into pre-tokens for encode_pretoken. Returns the number of ids, or -1 after a report.
static int encode_pieces(const Tokenizer *t, const char *text, size_t length, int *tokens);

// Encodes text[0..length) into tokens, which must hold max_encoded_tokens(length) ids; a prompt
// (as_prompt) gets BOS before it and EOS after it as the vocabulary asks (t->add_bos, add_eos).
// Returns the number of ids, or -1 after a report. An empty text encodes to nothing (or to BOS).
static int encode(const Tokenizer *t, const char *text, size_t length, bool as_prompt,
                  int *tokens) {
    int n = 0;
    if (as_prompt && t->add_bos) {
        tokens[n++] = t->bos_id;
    }
    int count = t->byte_level || t->n_specials > 0
                    ? encode_pieces(t, text, length, tokens + n)
                    : encode_sentencepiece(t, text, length, tokens + n);
    if (count < 0) {
        return -1;
    }
    n += count;
    if (as_prompt && t->add_eos && length > 0) {
        tokens[n++] = t->eos_id;
    }
    return n;
}

// Decoding streams bytes into valid UTF-8: a character whose bytes arrive in several byte-fallback
// tokens is held back until it is whole, a broken sequence becomes U+FFFD, and control bytes
// other than newline and tab are written as the escape \xNN, never raw. Utf8Stream and its two
// functions are in Part 2, "UTF-8".

typedef struct {
    unsigned char pending[4]; // the bytes so far of an incomplete character
    int n_pending;
} Utf8Stream;

#define REPLACEMENT_CHARACTER "\xEF\xBF\xBD"

// Feeds one byte; writes what can be printed now to out (room for 16 bytes) and returns its length.
static size_t utf8_push(Utf8Stream *s, unsigned char byte, char *out);
// Ends the stream: an incomplete character left over becomes U+FFFD.
static size_t utf8_flush(Utf8Stream *s, char *out);

// The raw bytes that token stands for, before UTF-8 assembly. The piece after BOS drops its
// leading space: that space is the dummy prefix encoding added.
static size_t token_bytes(const Tokenizer *t, int previous, int token, const unsigned char **out,
                          unsigned char *byte_storage) {
    if (token == t->bos_id || token == t->eos_id || (t->control != NULL && t->control[token])) {
        return 0;
    }
    if (token == t->unk_id) {
        *out = (const unsigned char *)REPLACEMENT_CHARACTER;
        return 3;
    }
    if (t->byte_value[token] >= 0) {
        *byte_storage = (unsigned char)t->byte_value[token];
        *out = byte_storage;
        return 1;
    }
    const char *piece = t->pieces[token];
    size_t length = t->piece_lengths[token];
    if (t->add_space_prefix && previous == t->bos_id && length > 0 && piece[0] == ' ') {
        piece++;
        length--;
    }
    *out = (const unsigned char *)piece;
    return length;
}

// Writes the text of token to file through the stream; returns -1 if the write fails.
static int write_token(FILE *file, const Tokenizer *t, Utf8Stream *stream, int previous,
                       int token) {
    const unsigned char *bytes;
    unsigned char byte_storage;
    size_t length = token_bytes(t, previous, token, &bytes, &byte_storage);
    for (size_t i = 0; i < length; i++) {
        char out[16];
        size_t n = utf8_push(stream, bytes[i], out);
        if (n > 0 && fwrite(out, 1, n, file) != n) {
            return -1;
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// 7. Sampler: temperature, then top-k, then top-p (nucleus), then a seeded random draw

typedef struct {
    float probability;
    int id;
} Candidate;

typedef struct {
    int vocab_size;
    float temperature; // 0 means greedy: always the most likely token
    int top_k;         // keep the k most likely tokens; 0 keeps all
    float top_p;       // then the fewest whose probabilities sum to at least p; 1 keeps all
    uint64_t rng_state;
    Candidate *candidates; // (V) scratch, sorted by probability
} Sampler;

static int build_sampler(Sampler *s, int vocab_size, float temperature, int top_k, float top_p,
                         uint64_t seed) {
    *s = (Sampler){
        .vocab_size = vocab_size, .temperature = temperature, .top_k = top_k, .top_p = top_p};
    // splitmix64 turns any seed, 0 included, into a good non-zero state for xorshift.
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    s->rng_state = (z ^ (z >> 31)) | 1;
    s->candidates = checked_calloc(vocab_size, sizeof(Candidate), "sampler");
    return s->candidates != NULL ? 0 : -1;
}

static void free_sampler(Sampler *s) {
    free(s->candidates);
    s->candidates = NULL;
}

// xorshift64*: fast, and the same seed gives the same sequence on every machine.
static uint32_t random_u32(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(uint64_t *state) {
    return (random_u32(state) >> 8) / 16777216.0f; // in [0, 1)
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

// Sorts candidates most likely first, ties by id (Part 2: an in-place heapsort, because glibc's
// qsort may allocate, and sampling must not allocate once per token).
static void sort_candidates(Candidate *c, int n);

// Fills s->candidates with the tokens that top-k and then top-p keep, most likely first, and
// returns how many. probabilities (V) must sum to 1.
static int select_candidates(Sampler *s, const float *probabilities) {
    int V = s->vocab_size, k = s->top_k > 0 && s->top_k < V ? s->top_k : V;
    // Sorting all V tokens every step is slow for a big vocabulary. With top-p < 1, a token
    // below (1 - p) / (V - 1) can never make the nucleus: all of them together hold less than
    // 1 - p, so the tokens above reach p first. They are left out of the sort, unless top-k
    // would keep more tokens than there are above the cut.
    float cutoff = s->top_p < 1.0f ? (1.0f - s->top_p) / (V - 1) : 0.0f;
    float total_mass = 0.0f;
    int n = 0;
    for (int i = 0; i < V; i++) {
        total_mass += probabilities[i];
        if (probabilities[i] >= cutoff) {
            s->candidates[n++] = (Candidate){probabilities[i], i};
        }
    }
    if (k < V && n < k) {
        n = 0;
        for (int i = 0; i < V; i++) {
            s->candidates[n++] = (Candidate){probabilities[i], i};
        }
    }
    if (n == 0) { // nothing reached the cutoff (a near-uniform distribution): keep the top token
        int best = argmax(probabilities, V);
        s->candidates[n++] = (Candidate){probabilities[best], best};
    }
    sort_candidates(s->candidates, n);
    n = k < n ? k : n;
    if (s->top_p < 1.0f) {
        float kept_mass = 0.0f; // of what top-k keeps: everything when k = V
        for (int i = 0; i < n && k < V; i++) {
            kept_mass += s->candidates[i].probability;
        }
        kept_mass = k < V ? kept_mass : total_mass;
        float cumulative = 0.0f;
        for (int i = 0; i < n; i++) {
            cumulative += s->candidates[i].probability;
            if (cumulative >= s->top_p * kept_mass) {
                n = i + 1;
                break;
            }
        }
    }
    return n;
}

// Picks the next token from logits (V), which it overwrites with probabilities.
static int sample(Sampler *s, float *logits) {
    if (s->temperature == 0.0f) {
        return argmax(logits, s->vocab_size);
    }
    // The largest logit is subtracted before dividing: a tiny temperature would otherwise turn
    // large logits into inf (and inf - inf into NaN); this way every scaled logit is at most 0.
    float max = logits[argmax(logits, s->vocab_size)];
    for (int i = 0; i < s->vocab_size; i++) {
        logits[i] = (logits[i] - max) / s->temperature;
    }
    softmax(logits, s->vocab_size);
    int n = select_candidates(s, logits);
    float mass = 0.0f;
    for (int i = 0; i < n; i++) {
        mass += s->candidates[i].probability;
    }
    float coin = random_f32(&s->rng_state) * mass;
    float cumulative = 0.0f;
    for (int i = 0; i < n; i++) {
        cumulative += s->candidates[i].probability;
        if (coin < cumulative) {
            return s->candidates[i].id;
        }
    }
    return s->candidates[n - 1].id; // rounding left the coin past the last edge
}

// ----------------------------------------------------------------------------
// 8. Generation: feed the prompt, then sample, print and feed back one token at a time

// Where the text goes: stdout as text, or the ids one per line.
typedef struct {
    FILE *file;
    bool emit_ids;    // print ids instead of text
    bool echo_prompt; // print the prompt's text before the continuation
} TextOut;

// What generation shows its caller after every forward pass that computes logits: rows of
// logits (V each) for positions first..first+count-1. The caller (Part 2, run_generate) checks
// that they are finite numbers, writes them for --logits, and times the run. A non-zero return
// stops generation (after its report).
typedef struct LogitsWatch LogitsWatch;
struct LogitsWatch {
    bool every_position; // logits for every prompt position (--logits), not only the last one's
    int (*see)(LogitsWatch *watch, const float *logits, int first, int count);
};

static int print_token(const TextOut *out, const Tokenizer *tok, Utf8Stream *stream, int previous,
                       int token) {
    int failed = out->emit_ids ? fprintf(out->file, "%d\n", token) < 0
                               : write_token(out->file, tok, stream, previous, token);
    if (failed || fflush(out->file) != 0) {
        return report_error("cannot write output: %s", strerror(errno));
    }
    return 0;
}

// The prompt, BLOCK positions at a time: only its last position needs logits, unless the watch
// wants every row. Returns the last position's logits (V), or NULL after a report.
static float *prefill(Transformer *t, const int *prompt, int n_prompt, LogitsWatch *watch) {
    size_t V = t->config.vocab_size;
    float *logits = NULL;
    for (int start = 0; start < n_prompt; start += BLOCK) {
        int n = n_prompt - start < BLOCK ? n_prompt - start : BLOCK;
        bool last = start + n == n_prompt;
        LogitsWanted wanted = watch->every_position ? LOGITS_ALL : last ? LOGITS_LAST : LOGITS_NONE;
        logits = forward_block(t, prompt + start, n, start, wanted);
        if (wanted == LOGITS_ALL && watch->see(watch, logits, start, n)) {
            return NULL;
        }
        if (wanted == LOGITS_ALL) {
            logits += (n - 1) * V; // sampling starts from the last row
        } else if (last && watch->see(watch, logits, start + n - 1, 1)) {
            return NULL;
        }
    }
    return logits;
}

// The prompt's text, when the output is text and asks for it.
static int print_prompt(const TextOut *out, const Tokenizer *tok, Utf8Stream *stream,
                        const int *prompt, int n_prompt) {
    for (int pos = 0; out->echo_prompt && !out->emit_ids && pos < n_prompt; pos++) {
        if (print_token(out, tok, stream, pos > 0 ? prompt[pos - 1] : -1, prompt[pos])) {
            return -1;
        }
    }
    return 0;
}

// Ends the text: what is left of an incomplete character, then a newline.
static int finish_text(const TextOut *out, Utf8Stream *stream) {
    char tail[4];
    size_t n = utf8_flush(stream, tail);
    if (!out->emit_ids && (fwrite(tail, 1, n, out->file) != n || fputc('\n', out->file) == EOF ||
                           fflush(out->file) != 0)) {
        return report_error("cannot write output: %s", strerror(errno));
    }
    return 0;
}

// Whether generation stops at token: BOS, EOS, or another end of a turn the vocabulary marks
// (<|eot_id|>, <|im_end|>, <end_of_turn>).
static bool ends_generation(const Config *c, const Tokenizer *tok, int token) {
    return token == c->eos_id || token == c->bos_id ||
           (tok != NULL && tok->ends_generation != NULL && tok->ends_generation[token]);
}

// Processes prompt[0..n_prompt) (1 <= n_prompt, n_prompt + steps <= S), then generates up to
// steps tokens, stopping early at the end of generation (then *stop_token is it, else -1). Returns
// the number of tokens generated, or -1 after a report. tok may be NULL when out->emit_ids is set.
static int generate(Transformer *t, const Tokenizer *tok, Sampler *sampler, const int *prompt,
                    int n_prompt, int steps, const TextOut *out, LogitsWatch *watch,
                    int *stop_token) {
    const Config *c = &t->config;
    Utf8Stream stream = {0};
    *stop_token = -1;
    if (reserve_positions(t, n_prompt + steps)) { // every page generation will fill, up front
        return -1;
    }
    float *logits = prefill(t, prompt, n_prompt, watch);
    if (logits == NULL || print_prompt(out, tok, &stream, prompt, n_prompt)) {
        return -1;
    }
    int previous = prompt[n_prompt - 1], generated = 0;
    for (int pos = n_prompt; pos < n_prompt + steps; pos++) {
        int next = sample(sampler, logits);
        if (ends_generation(c, tok, next)) {
            *stop_token = next;
            break;
        }
        if (print_token(out, tok, &stream, previous, next)) {
            return -1;
        }
        generated++;
        previous = next;
        if (pos + 1 < n_prompt + steps) { // the next step needs this token's keys and values
            logits = forward(t, next, pos, true);
            if (watch->see(watch, logits, pos, 1)) {
                return -1;
            }
        }
    }
    return finish_text(out, &stream) ? -1 : generated;
}

// Part 2, "Command line": reads the arguments, builds the Transformer, the Tokenizer and the
// Sampler above from the files they name, and runs one mode: generate by default, or a tool that
// measures or shows the model (--info, --encode, --eval, --attn, --explain). Returns the exit
// status: 0, 1 for bad data (a file, the prompt), 2 for bad usage (flags).
static int run_command_line(int argc, char **argv);

#ifndef RUN_NO_MAIN
int main(int argc, char **argv) {
    return run_command_line(argc, argv);
}
#endif

// ============================================================================================
// PART 2: THE MACHINERY
//
// The model is complete above: a first-time reader can stop here. What follows makes it fast,
// safe and usable, and none of it changes what the model computes. The sections, in order:
//   Errors and checked allocation   report_error, checked_calloc, cache-line-aligned buffers
//   Threads and time                thread counts and shares, on_threads, the clock
//   KV cache formats                kv_store and kv_rows: fp32, fp16 and int8 rows of the cache
//   Numbers that must be finite     scans of weights and logits for NaN, infinity, int8 -128
//   Threads on a busy machine       the thread count generation runs on, token by token
//   The fast kernels' buffers       KernelScratch, behind the run state's opaque pointer
//   Fast kernels                    (not in the plain build) matmul and matmul_shared: one
//                                   position, blocks in register tiles, int8 VNNI, AVX-512,
//                                   Q4_0, Q4_K, Q5_K and Q6_K rows copied eight at a time
//   Attention kernels               (not in the plain build) online_softmax_tile in vectors,
//                                   attention split into units for the threads
//   The feed-forward's gate         (not in the plain build) swiglu in vectors
//   The fast kernel table           (not in the plain build) fast_kernels, for section 5's seam
//   Run state bookkeeping           the run state's buffers, the KV cache's pages
//   Checkpoint files                the project's format (GQAM) and llama2.c's, validated
//   GGUF files                      llama-architecture GGUF: keys, tensors, vocabularies (and
//                                   vocabulary-only files)
//   Reading any checkpoint          mapping a file, checking every weight, the Transformer
//   The tokenizer file              tokenizer.bin records, checked, into a Tokenizer
//   Byte-level vocabularies and     GPT-2's byte alphabet, a GGUF byte-level vocabulary into a
//     pre-tokenizers                Tokenizer, control tokens, PCRE2's cuts, encode_pieces
//   UTF-8                           character lengths and the decoding stream
//   Sorting                         the BPE merge queue and the sampler's heapsort
//   Inspection                      --eval, --attn, --attn-dump and --explain
//   Command line                    options, the modes, the generation's watch, and the summary
// ============================================================================================

// The fast kernels use AVX-512 (with VNNI and F16C) where the compiler may, that is, where
// -march=native found it; the plain build never does.
#if !defined(RUN_PLAIN) && defined(__AVX512F__) && defined(__AVX512BW__) &&                        \
    defined(__AVX512DQ__) && defined(__AVX512VNNI__) && defined(__F16C__)
#define HAVE_AVX512 1
#else
#define HAVE_AVX512 0
#endif
#if !defined(RUN_PLAIN) && (HAVE_AVX512 || defined(__F16C__))
#include <immintrin.h>
#endif

// ----------------------------------------------------------------------------
// Errors and checked allocation

// Exit codes: bad data (a file, the prompt) and bad usage (flags) are told apart for scripts.
enum { EXIT_DATA = 1, EXIT_USAGE = 2 };

// One line on stderr: "run: ", the message, then ending (a newline, or a hint and a newline).
static int report_line(const char *ending, const char *format, va_list args) {
    fputs("run: ", stderr);
    vfprintf(stderr, format, args);
    fputs(ending, stderr);
    return -1;
}

__attribute__((format(printf, 1, 2))) static int report_error(const char *format, ...) {
    va_list args;
    va_start(args, format);
    report_line("\n", format, args);
    va_end(args);
    return -1;
}

// calloc that refuses sizes that overflow and names what it was allocating when memory runs out.
static void *checked_calloc(size_t count, size_t size, const char *what) {
    if (count == 0 || size == 0) {
        count = 1;
        size = 1;
    }
    if (count > SIZE_MAX / size) {
        report_error("%s: size %zu x %zu overflows", what, count, size);
        return NULL;
    }
    void *memory = calloc(count, size);
    if (memory == NULL) {
        report_error("out of memory allocating %zu bytes for %s", count * size, what);
    }
    return memory;
}

// checked_calloc for the run state's buffers and the KV cache's pages: the memory starts on a
// 64-byte boundary, a cache line, so that no vector load of it straddles two lines (calloc's
// 16-byte alignment made every load of a block's input columns do so). The address calloc
// returned sits just before it, for aligned_free. Pages stay untouched until used, as calloc's.
#define CACHE_LINE 64
static void *checked_aligned_calloc(size_t count, size_t size, const char *what) {
    if (count != 0 && size != 0 && count > (SIZE_MAX - 2 * CACHE_LINE) / size) {
        report_error("%s: size %zu x %zu overflows", what, count, size);
        return NULL;
    }
    unsigned char *raw = checked_calloc(count * size + CACHE_LINE + sizeof(void *), 1, what);
    if (raw == NULL) {
        return NULL;
    }
    uintptr_t start =
        ((uintptr_t)(raw + sizeof(void *)) + CACHE_LINE - 1) & ~(uintptr_t)(CACHE_LINE - 1);
    void *memory = (void *)start;
    memcpy((unsigned char *)memory - sizeof(void *), &raw, sizeof raw);
    return memory;
}

static void aligned_free(void *memory) {
    if (memory != NULL) {
        void *raw;
        memcpy(&raw, (unsigned char *)memory - sizeof(void *), sizeof raw);
        free(raw);
    }
}

// SIGINT, SIGTERM and SIGHUP are held back while a temporary file exists, and looked for between
// tokens and blocks (interrupt_pending): the run then stops, removes the temporary file, and
// lets the signal end it as it would have, leaving nothing half-written behind. A signal goes to
// any thread that does not hold it back, so OpenMP's workers hold them back always: they are
// started with them held (start_threads), and the main thread alone lets them through.
static void hold_interrupts(bool hold) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT), sigaddset(&set, SIGTERM), sigaddset(&set, SIGHUP);
    pthread_sigmask(hold ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

// The interrupting signal waiting to be delivered, or 0; reports it once.
static int interrupt_pending(const char *what) {
    sigset_t pending;
    int signals[] = {SIGINT, SIGTERM, SIGHUP};
    if (sigpending(&pending) != 0) {
        return 0;
    }
    for (int i = 0; i < 3; i++) {
        if (sigismember(&pending, signals[i])) {
            report_error("interrupted by %s: %s is not written", strsignal(signals[i]), what);
            return signals[i];
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// Threads and time

static int thread_count(void) {
#ifdef _OPENMP
    int threads = omp_get_max_threads(), limit = omp_get_thread_limit(); // OMP_THREAD_LIMIT
    return threads < limit ? threads : limit;
#else
    return 1;
#endif
}

// Below this many multiply-adds a loop runs on one thread: waking the other threads and waiting
// for all of them at the end costs more than they save, and far more on a busy machine.
#define PARALLEL_MIN_WORK (1 << 16)

// Whether a loop of this many multiply-adds should run on all threads.
static bool worth_parallel(size_t work) {
    return work >= PARALLEL_MIN_WORK && thread_count() > 1;
}

// This thread's share [first, last) of n items inside a parallel region: contiguous, in thread
// order, as OpenMP's static schedule splits a loop.
static void thread_share(size_t n, size_t *first, size_t *last) {
    size_t thread = 0, threads = 1;
#ifdef _OPENMP
    thread = (size_t)omp_get_thread_num();
    threads = (size_t)omp_get_num_threads();
#endif
    *first = n * thread / threads;
    *last = n * (thread + 1) / threads;
}

static void use_threads(int threads) {
#ifdef _OPENMP
    if (threads > 0) {
        omp_set_num_threads(threads);
    }
#else
    (void)threads;
#endif
}

static void warm_up_threads(void);

// The worker threads, started once with the interrupting signals held back (see hold_interrupts):
// a thread inherits the mask of the one that creates it. OMP_NUM_THREADS may ask for more than
// any machine starts (libgomp would abort with its own message): more than --threads allows is
// refused. Returns 0, or -1 after a report.
static int start_threads(int threads) {
    use_threads(threads);
    if (thread_count() > 1024) {
        return report_error("OMP_NUM_THREADS asks for %d threads; at most 1024 (or --threads N)",
                            thread_count());
    }
    hold_interrupts(true);
    warm_up_threads();
    hold_interrupts(false);
    return 0;
}

#ifndef RUN_PLAIN // what only the fast kernels use
static int thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// Runs body(context) on all threads when a loop of `work` multiply-adds is worth it, else on this
// one. Inside body, a loop under "#pragma omp for" or a share from thread_share covers every item
// either way: outside a parallel region both give this thread all of them. (Not OpenMP's if
// clause: a region that the clause keeps on one thread still makes OpenMP's runtime allocate a
// team, which would mean an allocation per token.)
static void on_threads(size_t work, void (*body)(void *context), void *context) {
    if (worth_parallel(work)) {
#pragma omp parallel
        body(context);
    } else {
        body(context);
    }
}
#endif

// Starts OpenMP's worker threads, so that their start-up cost is not counted as prefill time.
static void warm_up_threads(void) {
    int started = 0;
#pragma omp parallel reduction(+ : started)
    started += 1;
    (void)started;
}

static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec + now.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// KV cache formats
//
// A row is one kv head's vector of hd values at one position:
//   fp32  hd floats
//   fp16  hd IEEE half floats (rounded to nearest even): half the bytes, about 3 decimal digits
//   q8    the scales of ceil(hd / 32) groups of up to 32 values (fp32), then hd int8 values:
//         value = int8 * its group's scale, the scale being the group's largest magnitude / 127;
//         rounded up to a multiple of 4 bytes so that every row's scales stay aligned.
// Keys and values are written once (kv_store) and read at every later step (kv_rows), so the
// reads are what the format makes cheaper.

#define KV_Q8_GROUP 32

static size_t kv_q8_groups(int head_dim) {
    return ((size_t)head_dim + KV_Q8_GROUP - 1) / KV_Q8_GROUP;
}

static size_t kv_row_bytes(KvFormat format, int head_dim) {
    switch (format) {
    case KV_F16: return (size_t)head_dim * sizeof(uint16_t);
    case KV_Q8: return (kv_q8_groups(head_dim) * sizeof(float) + head_dim + 3) / 4 * 4;
    default: return (size_t)head_dim * sizeof(float);
    }
}

// Bytes of one page: one layer's keys, or its values, for KV_PAGE positions.
static size_t kv_page_bytes(const KvCache *kv) {
    return (size_t)kv->n_kv_heads * kv->page_positions * kv->row_bytes;
}

// Bytes of keys plus values that one position adds to the cache in a format, across all layers.
static size_t kv_bytes_per_token(const Config *c, KvFormat format) {
    return 2 * (size_t)c->n_layers * c->n_kv_heads * kv_row_bytes(format, c->head_dim);
}

// Bytes of keys plus values for n positions: a sliding-window layer holds W of them at most.
static size_t kv_bytes_at(const Config *c, KvFormat format, int n) {
    size_t bytes = 0, per_layer = 2 * (size_t)c->n_kv_heads * kv_row_bytes(format, c->head_dim);
    for (int layer = 0; layer < c->n_layers; layer++) {
        int window = layer_window(c, layer);
        bytes += per_layer * (size_t)(window > 0 && window < n ? window : n);
    }
    return bytes;
}

static const char *kv_format_name(KvFormat format) {
    static const char *const names[] = {"f32", "f16", "q8"};
    return names[format];
}

// fp32 to fp16 in plain C (F. Giesen's float_to_half_fast3_rtne): round to nearest even,
// subnormals, infinities and NaN included. Back to fp32 is Part 1's half_to_float.
static uint16_t f16_from_f32_portable(float value) {
    const uint32_t f32_infinity = 255u << 23, f16_too_big = (127u + 16) << 23;
    const uint32_t denormal_magic = ((127u - 15) + (23 - 10) + 1) << 23;
    uint32_t f;
    memcpy(&f, &value, sizeof f);
    uint32_t sign = f & 0x80000000u;
    f ^= sign;
    uint16_t half;
    if (f >= f16_too_big) {
        half = f > f32_infinity ? 0x7e00 : 0x7c00; // NaN stays NaN, too big becomes infinity
    } else if (f < (113u << 23)) { // a subnormal half, or zero: let the FPU round it
        float magic, shifted;
        memcpy(&magic, &denormal_magic, sizeof magic);
        memcpy(&shifted, &f, sizeof shifted);
        shifted += magic;
        memcpy(&f, &shifted, sizeof f);
        half = (uint16_t)(f - denormal_magic);
    } else {
        uint32_t mantissa_odd = (f >> 13) & 1;
        f += ((uint32_t)(15 - 127) << 23) + 0xfff; // rebias, and round half up...
        f += mantissa_odd;                         // ...or to even
        half = (uint16_t)(f >> 13);
    }
    return half | (uint16_t)(sign >> 16);
}

// With F16C the processor converts 8 values at a time, the same way; the tail goes through C.
static void f16_from_f32_row(uint16_t *out, const float *x, int n) {
    int i = 0;
#if defined(__F16C__) && !defined(RUN_PLAIN)
    for (; i + 8 <= n; i += 8) {
        __m128i half = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(out + i), half);
    }
#endif
    for (; i < n; i++) {
        out[i] = f16_from_f32_portable(x[i]);
    }
}

static void f32_from_f16_row(float *out, const uint16_t *half, int n) {
    int i = 0;
#if defined(__F16C__) && !defined(RUN_PLAIN)
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(half + i))));
    }
#endif
    for (; i < n; i++) {
        out[i] = half_to_float(half[i]);
    }
}

// Each group of up to KV_Q8_GROUP values quantized as Part 1's quantize_row quantizes
// activations: a last group shorter than the others is a group of its own length.
static void q8_from_f32_row(unsigned char *row, const float *x, int n) {
    float *scales = (float *)row;
    int8_t *values = (int8_t *)(row + kv_q8_groups(n) * sizeof(float));
    for (int start = 0; start < n; start += KV_Q8_GROUP) {
        int length = n - start < KV_Q8_GROUP ? n - start : KV_Q8_GROUP;
        quantize_row(values + start, scales + start / KV_Q8_GROUP, x + start, length, length);
    }
}

static void f32_from_q8_row(float *out, const unsigned char *row, int n) {
    const float *scales = (const float *)row;
    const int8_t *values = (const int8_t *)(row + kv_q8_groups(n) * sizeof(float));
    for (int start = 0; start < n; start += KV_Q8_GROUP) {
        int end = start + KV_Q8_GROUP < n ? start + KV_Q8_GROUP : n;
        float scale = scales[start / KV_Q8_GROUP];
        for (int i = start; i < end; i++) {
            out[i] = values[i] * scale;
        }
    }
}

static void kv_store(KvCache *kv, int layer, int which, int pos, const float *x) {
    int hd = kv->head_dim;
    for (int head = 0; head < kv->n_kv_heads; head++) {
        unsigned char *row = kv_row(kv, layer, which, head, pos);
        const float *v = x + (size_t)head * hd;
        switch (kv->format) {
        case KV_F16: f16_from_f32_row((uint16_t *)row, v, hd); break;
        case KV_Q8: q8_from_f32_row(row, v, hd); break;
        default: memcpy(row, v, hd * sizeof(float)); break;
        }
    }
}

static const float *kv_rows(const KvCache *kv, int layer, int which, int kv_head, int first,
                            int count, float *scratch) {
    const unsigned char *row = kv_row(kv, layer, which, kv_head, first);
    int hd = kv->head_dim;
    if (kv->format == KV_F32) {
        return (const float *)row; // rows of one head in one page are side by side
    }
    for (int t = 0; t < count; t++, row += kv->row_bytes) {
        if (kv->format == KV_F16) {
            f32_from_f16_row(scratch + (size_t)t * hd, (const uint16_t *)row, hd);
        } else {
            f32_from_q8_row(scratch + (size_t)t * hd, row, hd);
        }
    }
    return scratch;
}

// Positions 0..n-1 of one kv head's keys or values as fp32, out (n, hd), read page by page
// through the mapping: what inspection shows and recomputes from.
static void kv_gather(const KvCache *kv, int layer, int which, int kv_head, int n, float *out) {
    int hd = kv->head_dim;
    for (int first = 0; first < n; first += kv->page_positions) {
        int count = n - first < kv->page_positions ? n - first : kv->page_positions;
        float *dst = out + (size_t)first * hd;
        const float *rows = kv_rows(kv, layer, which, kv_head, first, count, dst);
        if (rows != dst) {
            memcpy(dst, rows, (size_t)count * hd * sizeof(float));
        }
    }
}

// ----------------------------------------------------------------------------
// Numbers that must be finite: weights on load, logits as they are computed

// The index of the first value of data[lo..hi), each `width` bytes, whose bits under mask equal
// pattern, or hi. A float is an infinity or a NaN when its exponent bits are all set (mask and
// pattern 0x7f800000), and so is a half (0x7c00); an int8 -128 is the byte 0x80 (mask 0xff).
// Chunks are checked as a whole first, a loop the compiler vectorizes once width is a constant.
static inline __attribute__((always_inline)) size_t
scan_bits(const void *data, size_t width, uint32_t mask, uint32_t pattern, size_t lo, size_t hi) {
    const unsigned char *bytes = data;
    for (size_t start = lo; start < hi; start += 4096) {
        size_t end = hi - start < 4096 ? hi : start + 4096;
        unsigned any = 0;
#pragma omp simd reduction(| : any)
        for (size_t i = start; i < end; i++) {
            uint32_t bits = 0;
            memcpy(&bits, bytes + i * width, width);
            any |= (bits & mask) == pattern;
        }
        for (size_t i = start; any && i < end; i++) {
            uint32_t bits = 0;
            memcpy(&bits, bytes + i * width, width);
            if ((bits & mask) == pattern) {
                return i;
            }
        }
    }
    return hi;
}

typedef size_t ScanFunction(const void *data, size_t lo, size_t hi);

static size_t scan_nonfinite_float(const void *x, size_t lo, size_t hi) {
    return scan_bits(x, sizeof(float), 0x7f800000u, 0x7f800000u, lo, hi);
}

static size_t scan_nonfinite_half(const void *h, size_t lo, size_t hi) {
    return scan_bits(h, sizeof(uint16_t), 0x7c00u, 0x7c00u, lo, hi);
}

static size_t scan_minus_128(const void *q, size_t lo, size_t hi) {
    return scan_bits(q, sizeof(int8_t), 0xffu, 0x80u, lo, hi);
}

// The index of the first of n values that scan finds, or n if none; each thread scans a share,
// and the smallest index found wins, whatever the number of threads.
static size_t first_found(const void *data, size_t n, ScanFunction *scan) {
    size_t first = n;
    if (worth_parallel(n)) {
#pragma omp parallel reduction(min : first)
        {
            size_t lo, hi;
            thread_share(n, &lo, &hi);
            size_t found = scan(data, lo, hi);
            first = found < hi ? found : n;
        }
        return first;
    }
    return scan(data, 0, n);
}

// The index of the first value of x (n) that is not a finite number, or n if they all are.
static size_t first_nonfinite(const float *x, size_t n) {
    return first_found(x, n, scan_nonfinite_float);
}

// Whether an fp16 cache holds an infinity among positions 0..n-1: a key or value beyond fp16's
// largest number, 65504, which fp32 and int8 rows would have held.
static bool kv_overflowed(const KvCache *kv, int n) {
    for (int layer = 0; kv->format == KV_F16 && layer < kv->n_layers; layer++) {
        for (int which = KV_KEYS; which <= KV_VALUES; which++) {
            for (int head = 0; head < kv->n_kv_heads; head++) {
                for (int pos = 0; pos < n; pos++) {
                    const unsigned char *row = kv_row(kv, layer, which, head, pos);
                    if (first_found(row, kv->head_dim, scan_nonfinite_half) <
                        (size_t)kv->head_dim) {
                        return true;
                    }
                }
            }
        }
    }
    return false;
}

// count logits of positions first, first + 1, ... (rows of vocab_size) are finite numbers; else
// one line saying where, and why when the fp16 cache is the cause.
static int check_logits(const float *logits, size_t count, int vocab_size, int first,
                        const KvCache *kv) {
    size_t bad = first_nonfinite(logits, count);
    if (bad < count) {
        size_t pos = first + bad / vocab_size;
        if (kv_overflowed(kv, (int)pos + 1)) {
            return report_error("the logits of position %zu are %g: a key or value exceeds the "
                                "fp16 KV cache's largest number, 65504; use --kv-cache f32 or q8",
                                pos, logits[bad]);
        }
        return report_error("the logits of position %zu are %g: the model's numbers overflow "
                            "float32",
                            pos, logits[bad]);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// Threads on a busy machine
//
// Every parallel product ends at a barrier where each thread waits for the others. When another
// program holds one of the cores, the thread that shares its core is descheduled for whole time
// slices, every barrier waits for it, and two threads decode far slower than one (the busy-core
// table of scripts/bench.sh measures it). So, unless --threads fixes the count, the run starts on
// as many threads as the kernel's count of running tasks leaves cores free, and generation
// times each token and now and then tries the other count for one token: it keeps the faster.
// While that count still shows another program on a core, no trial of all threads is made.
// The first trial comes at the second token, and a token much slower than the recent ones
// brings the next one forward. A trial that loses pushes the next one back, at least twice as
// far, one that wins keeps the spacing, and either way the next trial of the slower count waits
// until it would cost under 2% of the time (a descheduled thread can make a token a hundred
// times slower). The count never changes results:
// every output is summed by one thread in a fixed order, whatever the count.

// How many threads generation's products run on, token by token. --threads fixes the count; by
// default generation times its tokens and runs on one thread while another program holds a core.
typedef struct {
    bool adaptive;      // false: the count stays as --threads (or OpenMP) set it
    int most;           // the count while the cores are free
    int current;        // the count the next token runs on
    bool trial;         // the next token tries the other count
    long until_trial;   // tokens before the other count is tried again
    long interval;      // tokens between trials: grows after each losing one
    double seconds[2];  // recent seconds per token on one thread [0] and on `most` [1]
    long single_tokens; // tokens run on one thread although `most` were allowed
    int cores;          // > 0: the machine's cores, and trials of `most` wait until they are free
    int prompt_threads; // the count the prompt ran on
} ThreadPace;

static void set_pace_threads(ThreadPace *pace, int threads) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    pace->current = threads;
}

// How many cores other programs are running on right now, from the text of /proc/loadavg: its
// fourth field, "running/total", counts the tasks that are running or ready to run at this
// instant, own of them this program's threads (the reading one, and OpenMP's workers, which
// spin for a while after each parallel loop). -1 if the text does not say.
static int cores_busy_elsewhere(const char *loadavg, int own) {
    int running, total;
    if (sscanf(loadavg, "%*f %*f %*f %d/%d", &running, &total) != 2 || running < 1) {
        return -1;
    }
    return running > own ? running - own : 0;
}

// This program's threads that are running or ready to run (state R in /proc/self/task/*/stat);
// at least 1, the one reading.
static int own_running_threads(void) {
    int running = 0;
    DIR *tasks = opendir("/proc/self/task");
    for (struct dirent *e; tasks != NULL && (e = readdir(tasks)) != NULL;) {
        char path[300], text[512];
        if (e->d_name[0] == '.') {
            continue;
        }
        snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL) {
            continue;
        }
        size_t n = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[n] = '\0';
        const char *state = strrchr(text, ')'); // after the command name, which may hold spaces
        running += state != NULL && state[1] == ' ' && state[2] == 'R';
    }
    if (tasks != NULL) {
        closedir(tasks);
    }
    return running > 0 ? running : 1;
}

// The count to start on: all `most` threads when enough cores are free, else as many as are free
// (at least one). A core another program is spinning on would stall every barrier of the prompt
// and of the first tokens before the timing of tokens could notice.
static int starting_threads(int most, int cores, int busy) {
    if (busy < 0 || cores < 1) {
        return most;
    }
    int free_cores = cores - busy;
    return free_cores >= most ? most : free_cores > 1 ? free_cores : 1;
}

static int read_cores_busy(void) {
    char text[128] = "";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f == NULL) {
        return -1;
    }
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    return cores_busy_elsewhere(text, own_running_threads());
}

// The count is of one instant, so it is read twice, a millisecond apart, and the smaller kept: a
// program that ran for a moment (the shell that started this one) is not a busy core.
static int cores_busy_now(void) {
    int first = read_cores_busy();
    nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    int second = read_cores_busy();
    return first < second ? first : second;
}

static void start_pacing(ThreadPace *pace, bool adaptive) {
    int most = thread_count();
    *pace = (ThreadPace){.adaptive = adaptive && most > 1,
                         .most = most,
                         .current = most,
                         .until_trial = 1,
                         .interval = 16};
    pace->prompt_threads = most;
    if (!pace->adaptive) {
        return;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    pace->cores = cores > 0 && cores < 1 << 16 ? (int)cores : 0;
    int start = starting_threads(most, pace->cores, cores_busy_now());
    if (start > 1 && start < most) { // a large machine, partly busy: as many threads as are free
        pace->most = start;
        set_pace_threads(pace, start);
    } else if (start < most) { // pacing chooses between one thread and most
        set_pace_threads(pace, 1);
        pace->until_trial = pace->interval; // the cores were just seen busy
    }
    pace->prompt_threads = pace->current;
}

static void pace_threads(ThreadPace *pace, double seconds) {
    if (!pace->adaptive) {
        return;
    }
    int mode = pace->current == pace->most, other = !mode;
    pace->single_tokens += mode == 0;
    if (pace->trial) { // this token tried `mode`; the count it left is `other`
        pace->trial = false;
        bool won = seconds < pace->seconds[other];
        pace->seconds[mode] = seconds;
        double loser = won ? pace->seconds[other] : seconds,
               winner = won ? seconds : pace->seconds[other];
        long affordable = (long)(50.0 * loser / winner); // one trial per 50 winning tokens' time
        long doubled = 2 * pace->interval;
        long spacing = won ? pace->interval : doubled; // a win keeps the spacing, a loss doubles it
        pace->interval = spacing > affordable ? spacing : affordable;
        pace->interval = pace->interval < 1 << 20 ? pace->interval : 1 << 20;
        pace->until_trial = pace->interval;
        if (!won) {
            set_pace_threads(pace, other == 1 ? pace->most : 1);
        }
        return;
    }
    double recent = pace->seconds[mode];
    bool sudden = recent > 0 && seconds > 2 * recent;
    pace->seconds[mode] = recent > 0 ? 0.75 * recent + 0.25 * seconds : seconds;
    if (--pace->until_trial <= 0 || (sudden && mode == 1)) {
        // A trial of `most` threads while another program holds a core would only lose, and
        // cost far more than a token: wait until the kernel's count shows the cores free.
        if (other == 1 && pace->cores > 0 &&
            starting_threads(pace->most, pace->cores, read_cores_busy()) < pace->most) {
            pace->until_trial = pace->interval;
            return;
        }
        pace->trial = true;
        set_pace_threads(pace, other == 1 ? pace->most : 1);
    }
}

// ----------------------------------------------------------------------------
// Quantized blocks
//
// ggml's block types, as ggml-common.h lays them out (all little-endian, fp16 scales at any even
// offset). Each unpack writes a block's integers q and, per run of 16 weights, the scale and
// minimum of Part 1's BlockType: weight = scale * q - minimum. A type whose q is signed (Q4_0's
// q - 8) keeps q unsigned and folds the offset into the minimum.
//   Q4_0  18 bytes / 32: fp16 d, 16 bytes of 4-bit q (low nibbles weights 0-15, high 16-31);
//         weight = d * (q - 8)
//   Q4_1  20 bytes / 32: fp16 d, fp16 m, 16 bytes of 4-bit q; weight = d * q + m
//   Q5_0  22 bytes / 32: fp16 d, 4 bytes of fifth bits (bit j for weight j), 16 bytes of 4-bit
//         q; weight = d * (q - 16)
//   Q5_1  24 bytes / 32: fp16 d, fp16 m, the fifth bits, the 4-bit q; weight = d * q + m
//   Q2_K  84 bytes / 256: 16 bytes of 4-bit scale and 4-bit minimum per 16 weights, 64 bytes
//         of 2-bit q, fp16 d, fp16 dmin; weight = d * scale * q - dmin * minimum
//   Q3_K  110 bytes / 256: 32 bytes of high bits, 64 bytes of 2-bit q, 12 bytes of 6-bit
//         scales (16 of them, each - 32), fp16 d; weight = d * scale * (q - 4), the high bit
//         set adding 4
//   Q4_K  144 bytes / 256: fp16 d, fp16 dmin, 12 bytes of 6-bit scales and minimums (8 each,
//         one per 32 weights), 128 bytes of 4-bit q; weight = d * scale * q - dmin * minimum
//   Q5_K  176 bytes / 256: as Q4_K, with 32 bytes of fifth bits before the q
//   Q6_K  210 bytes / 256: 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 scales,
//         fp16 d; weight = d * scale * (q - 32)
// In the K-quants, weights come in halves of 128 (Q2_K, Q3_K, Q6_K) or quarters of 64 (Q4_K,
// Q5_K) that share their bytes of q: the low bits of a byte serve one run, the next bits the
// next one.

#define GGML_TYPE_Q4_0 2
#define GGML_TYPE_Q4_1 3
#define GGML_TYPE_Q5_0 6
#define GGML_TYPE_Q5_1 7
#define GGML_TYPE_Q2_K 10
#define GGML_TYPE_Q3_K 11
#define GGML_TYPE_Q4_K 12
#define GGML_TYPE_Q5_K 13
#define GGML_TYPE_Q6_K 14

static uint32_t load_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// Blocks of 32: the two runs of 16 share the block's scale and minimum. high: each weight's
// fifth bit (bit j of the u32), or NULL.
static void unpack_32(const unsigned char *nibbles, const unsigned char *high, float d, float m,
                      uint8_t *q, float *scale, float *minimum) {
    uint32_t bits = high != NULL ? load_u32(high) : 0;
    for (int j = 0; j < 16; j++) {
        q[j] = (uint8_t)((nibbles[j] & 0x0f) | ((bits >> j) & 1) << 4);
        q[j + 16] = (uint8_t)((nibbles[j] >> 4) | ((bits >> (j + 16)) & 1) << 4);
    }
    scale[0] = scale[1] = d;
    minimum[0] = minimum[1] = m;
}

static void unpack_q4_0(const unsigned char *b, uint8_t *q, float *scale, float *minimum) {
    float d = half_to_float(load_half(b));
    unpack_32(b + 2, NULL, d, 8.0f * d, q, scale, minimum);
}

static void unpack_q4_1(const unsigned char *b, uint8_t *q, float *scale, float *minimum) {
    unpack_32(b + 4, NULL, half_to_float(load_half(b)), -half_to_float(load_half(b + 2)), q, scale,
              minimum);
}

static void unpack_q5_0(const unsigned char *b, uint8_t *q, float *scale, float *minimum) {
    float d = half_to_float(load_half(b));
    unpack_32(b + 6, b + 2, d, 16.0f * d, q, scale, minimum);
}

static void unpack_q5_1(const unsigned char *b, uint8_t *q, float *scale, float *minimum) {
    unpack_32(b + 8, b + 4, half_to_float(load_half(b)), -half_to_float(load_half(b + 2)), q, scale,
              minimum);
}

static void unpack_q2_k(const unsigned char *b, uint8_t *q, float *scale, float *minimum) {
    const unsigned char *scales = b, *bits = b + 16;
    float d = half_to_float(load_half(b + 80)), dmin = half_to_float(load_half(b + 82));
    for (int run = 0; run < 16; run++) {
        scale[run] = d * (scales[run] & 0x0f);
        minimum[run] = dmin * (scales[run] >> 4);
    }
    for (int i = 0; i < 256; i++) { // half h, shift pair k, run of 16 r within the pair's 32
        int h = i / 128, k = i % 128 / 32, l = i % 32;
        q[i] = (bits[h * 32 + l] >> (2 * k)) & 3;
    }
}

// Q3_K's 16 scales of 6 bits: low 4 bits in bytes 0-7 (two per byte), high 2 bits in 8-11.
static void q3_k_scales(const unsigned char *packed, int *scales) {
    for (int j = 0; j < 16; j++) {
        int low = j < 8 ? packed[j] & 0x0f : packed[j - 8] >> 4;
        int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        scales[j] = (low | high << 4) - 32;
    }
}

static void unpack_q3_k(const unsigned char *b, uint8_t *q, float *scale, float *minimum) {
    const unsigned char *high = b, *bits = b + 32;
    float d = half_to_float(load_half(b + 108));
    int scales[16];
    q3_k_scales(b + 96, scales);
    for (int run = 0; run < 16; run++) {
        scale[run] = d * scales[run];
        minimum[run] = 4.0f * scale[run];
    }
    for (int i = 0; i < 256; i++) {
        int h = i / 128, k = i % 128 / 32, l = i % 32;
        int low = (bits[h * 32 + l] >> (2 * k)) & 3, top = (high[l] >> (h * 4 + k)) & 1;
        q[i] = (uint8_t)(low + 4 * top);
    }
}

// Q4_K's and Q5_K's 8 scales and 8 minimums of 6 bits in 12 bytes: j < 4 in the low 6 bits of
// bytes j and j + 4; the others split between bytes j + 4 (low 4 bits) and j - 4, j (top 2).
static void k_scale_min(const unsigned char *packed, int j, int *scale, int *minimum) {
    if (j < 4) {
        *scale = packed[j] & 63;
        *minimum = packed[j + 4] & 63;
    } else {
        *scale = (packed[j + 4] & 0x0f) | (packed[j - 4] >> 6) << 4;
        *minimum = (packed[j + 4] >> 4) | (packed[j] >> 6) << 4;
    }
}

// Q4_K and Q5_K: quarters of 64 weights, each two runs of 32 (four of 16) with a 6-bit scale
// and minimum; the first 32 read the low nibbles, the next 32 the high ones. high: fifth bits.
static void unpack_k4(const unsigned char *b, const unsigned char *high,
                      const unsigned char *nibbles, uint8_t *q, float *scale, float *minimum) {
    float d = half_to_float(load_half(b)), dmin = half_to_float(load_half(b + 2));
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        k_scale_min(b + 4, j, &sc, &mn);
        scale[2 * j] = scale[2 * j + 1] = d * sc;
        minimum[2 * j] = minimum[2 * j + 1] = dmin * mn;
    }
    for (int i = 0; i < 256; i++) {
        int quarter = i / 64, upper = i % 64 / 32, l = i % 32;
        int nibble = (nibbles[quarter * 32 + l] >> (4 * upper)) & 0x0f;
        int fifth = high != NULL ? (high[l] >> (2 * quarter + upper)) & 1 : 0;
        q[i] = (uint8_t)(nibble | fifth << 4);
    }
}

static void unpack_q4_k(const unsigned char *b, uint8_t *q, float *scale, float *minimum) {
    unpack_k4(b, NULL, b + 16, q, scale, minimum);
}

static void unpack_q5_k(const unsigned char *b, uint8_t *q, float *scale, float *minimum) {
    unpack_k4(b, b + 16, b + 48, q, scale, minimum);
}

static void unpack_q6_k(const unsigned char *b, uint8_t *q, float *scale, float *minimum) {
    const unsigned char *low = b, *high = b + 128;
    const int8_t *scales = (const int8_t *)(b + 192);
    float d = half_to_float(load_half(b + 208));
    for (int run = 0; run < 16; run++) {
        scale[run] = d * scales[run];
        minimum[run] = 32.0f * scale[run];
    }
    for (int i = 0; i < 256; i++) { // half h, then four quarters k of 32 sharing bytes
        int h = i / 128, k = i % 128 / 32, l = i % 32;
        int nibble = (low[h * 64 + (k % 2) * 32 + l] >> (4 * (k / 2))) & 0x0f;
        int top = (high[h * 32 + l] >> (2 * k)) & 3;
        q[i] = (uint8_t)(nibble | top << 4);
    }
}

static const BlockType BLOCK_TYPES[] = {
    {GGML_TYPE_Q4_0, "Q4_0", 32, 18, unpack_q4_0},
    {GGML_TYPE_Q4_1, "Q4_1", 32, 20, unpack_q4_1},
    {GGML_TYPE_Q5_0, "Q5_0", 32, 22, unpack_q5_0},
    {GGML_TYPE_Q5_1, "Q5_1", 32, 24, unpack_q5_1},
    {GGML_TYPE_Q2_K, "Q2_K", 256, 84, unpack_q2_k},
    {GGML_TYPE_Q3_K, "Q3_K", 256, 110, unpack_q3_k},
    {GGML_TYPE_Q4_K, "Q4_K", 256, 144, unpack_q4_k},
    {GGML_TYPE_Q5_K, "Q5_K", 256, 176, unpack_q5_k},
    {GGML_TYPE_Q6_K, "Q6_K", 256, 210, unpack_q6_k},
};

// The block type of a ggml type id, or NULL.
static const BlockType *block_type_of(uint32_t ggml_type) {
    for (size_t i = 0; i < sizeof BLOCK_TYPES / sizeof BLOCK_TYPES[0]; i++) {
        if (BLOCK_TYPES[i].ggml_type == ggml_type) {
            return &BLOCK_TYPES[i];
        }
    }
    return NULL;
}

#ifndef RUN_PLAIN // what only the fast block products use
// The block types whose weights are scale * (q - offset), one scale per group of 16 or 32:
// as int8 values q - offset in those groups, the int8 block product takes them. Returns the
// group, or 0 for the types with a minimum of their own (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K).
static int symmetric_group(const BlockType *type, int *offset) {
    switch (type->ggml_type) {
    case GGML_TYPE_Q4_0: *offset = 8; return 32;
    case GGML_TYPE_Q5_0: *offset = 16; return 32;
    case GGML_TYPE_Q3_K: *offset = 4; return 16;
    case GGML_TYPE_Q6_K: *offset = 32; return 16;
    default: *offset = 0; return 0;
    }
}

// A row (n) of a symmetric type as int8 values (n) and the scales of its groups.
static void blocks_to_int8_portable(const BlockType *type, const unsigned char *row, size_t n,
                                    int8_t *values, float *scales) {
    uint8_t q[MAX_BLOCK_VALUES];
    float scale[MAX_BLOCK_VALUES / 16], minimum[MAX_BLOCK_VALUES / 16];
    int offset, group = symmetric_group(type, &offset), groups = type->values / group;
    for (size_t b = 0; b < n / type->values; b++, row += type->bytes) {
        type->unpack(row, q, scale, minimum);
        for (int i = 0; i < type->values; i++) {
            values[b * type->values + i] = (int8_t)(q[i] - offset);
        }
        for (int g = 0; g < groups; g++) {
            scales[b * groups + g] = scale[g * group / 16];
        }
    }
}
#endif

// The first of n_blocks blocks whose fp16 scales (d, and dmin or m where the type has one) are
// not finite numbers, or n_blocks.
static size_t first_bad_block(const BlockType *type, const unsigned char *blocks, size_t n_blocks) {
    // Where each type keeps its fp16 numbers: two at 0 and 2, or one at 0, or at the end.
    int first = 0, second = -1;
    switch (type->ggml_type) {
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q4_K:
    case GGML_TYPE_Q5_K: second = 2; break;
    case GGML_TYPE_Q2_K: first = 80, second = 82; break;
    case GGML_TYPE_Q3_K: first = 108; break;
    case GGML_TYPE_Q6_K: first = 208; break;
    default: break;
    }
    for (size_t b = 0; b < n_blocks; b++) {
        const unsigned char *block = blocks + b * type->bytes;
        if ((load_half(block + first) & 0x7c00) == 0x7c00 ||
            (second >= 0 && (load_half(block + second) & 0x7c00) == 0x7c00)) {
            return b;
        }
    }
    return n_blocks;
}

// ----------------------------------------------------------------------------
// The fast kernels' buffers

// The fast kernels' buffers (Part 1 sees them as an opaque pointer): each thread's tile of keys
// and values and its rows of weights turned into fp32, a block's inputs laid out as columns, and
// the online-softmax states of a decode step split along the cache.
#ifndef RUN_PLAIN
#define ROW_TILE  6 // rows of a weight matrix a block product multiplies at a time ("Fast kernels")
#define KV_SPLITS 64 // at most this many chunks of positions per decode step ("Attention kernels")
// One position's fp32 rows: out (d) = w (d, n) @ x (n).
typedef void MatvecFunction(float *out, const float *x, const float *w, size_t n, size_t d);

// A Q4_0, Q4_K, Q5_K or Q6_K matrix's rows copied eight at a time for the one-position kernels
// ("Q4_0, Q4_K, Q5_K and Q6_K rows eight at a time"). eight_rows_types: those types, in the order
// of KernelScratch's copy_bytes.
#define EIGHT_ROWS_TYPES 4
static const uint32_t eight_rows_types[EIGHT_ROWS_TYPES] = {GGML_TYPE_Q4_0, GGML_TYPE_Q4_K,
                                                            GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};
typedef struct {
    uint64_t key;         // eight_rows_key of the matrix's blocks in the file
    unsigned char *value; // (spans, rows / 8, the span's blocks, record bytes) its records
} EightRows;

// A map key for a matrix's blocks: the address's bits 0-30 and 31-61 in bits 0-30 and 32-62, so
// that bits 31 and 63 are 0 (stb_ds hashes an 8-byte key by shifting its bytes as ints, and a
// byte of 128 or more shifted by 24 overflows one); one address, one key.
static uint64_t eight_rows_key(const unsigned char *blocks) {
    uint64_t address = (uint64_t)(uintptr_t)blocks;
    return (address & 0x7fffffffu) | (address >> 31 & 0x7fffffffu) << 32;
}

struct KernelScratch {
    int n_threads;
    MatvecFunction *matvec;   // the faster on this host of matvec_f32_rows1 and _rows4
    double matvec_gain;       // how much faster rows4 read the probe matrix than rows1
    bool prefetch;            // one-position int8, F16, Q8_0 and block kernels prefetch weights
    double prefetch_gain;     // how much faster the probe matrix read with prefetch than without
    float *tiles;             // (threads, 2, KV_TILE, hd) a tile of keys and values read as fp32
    float *panels;            // (threads, ROW_TILE, widest) int8/F16/Q8_0 rows turned into fp32
    float *x_columns;         // (widest, BLOCK) a block's inputs as columns, for block products
    float *split_acc;         // (KV_SPLITS, H * hd) each later chunk's state
    float *split_max;         // (KV_SPLITS, H)
    float *split_sum;         // (KV_SPLITS, H)
    int8_t *x_k;              // (widest) x as int8 in blocks of 256, for Q4_K and Q5_K rows
    float *x_k_scales;        // (widest / 256) each block's scale
    int16_t *x_k_sums;        // (widest / 32) the sum of each run of 32 of x_k, in x's order
    int8_t *x_k6;             // (widest) the same int8 in x's order, for Q6_K rows
    int16_t *x_k6_sums;       // (widest / 16) the sum of each run of 16 of x_k6
    int8_t *x_32;             // (widest / 128 + 1, 128) x as int8 for blocks of 32 (dot_32)
    float *x_32_lanes;        // (widest / 128 + 1, 2, 16) each group's lanes' x scales, scaled sums
    int32_t *x_32_sums;       // (widest / 128 + 1, 16) minus each lane's sum of x times the offset
    int8_t *x_eight;          // (widest / 32, 4, 64) x as Q4_0's eight-row records read it
    int32_t *x_eight_sums;    // (widest / 32) Q4_0's: minus four times each block's sum of x
    int32_t *x_eight_offsets; // (widest / 32, 16) Q6_K's: minus 32 times each lane's run's sum
    EightRows *eight_rows;    // stb_ds map: a matrix's blocks -> its eight-row records
    size_t copy_bytes[EIGHT_ROWS_TYPES]; // what those copies take: Q4_0's, Q4_K's, Q5_K's, Q6_K's
    size_t copies_left_out; // what they would have taken, where they did not fit in memory
};
#define N_SCRATCH 17
#else
struct KernelScratch {
    int n_threads;
};
#define N_SCRATCH 0
#endif
#ifndef RUN_PLAIN
// ----------------------------------------------------------------------------
// Fast kernels
//
// matmul and matmul_shared (Part 1, section 3) in two shapes: one position (generation), where
// every weight is read once per token and memory bandwidth sets the pace, and a block of
// positions (the prompt), where register tiles of 6 rows by up to 64 positions reuse each loaded
// weight for 64 positions and arithmetic sets the pace. Weights are fp32, int8, F16 or Q8_0. The
// AVX-512 kernels sit under one #if below; without AVX-512 the one-position products are Part
// 1's own and the block products' tiles are the plain C loops that come first. The tests check
// every kernel against Part 1's functions and naive loops.

// The block product multiplies ROW_TILE rows of W by TILE_POSITIONS positions at a time, in
// registers, and takes each group of rows past every position of the block while the rows sit
// in the cache, so that each weight is read from memory once per block. x is first turned into
// columns, (n, BLOCK): columns[k * BLOCK + p] = x[p][k], so that one vector load gives input k
// of sixteen positions. Then for each input k, each of the tile's rows broadcasts its weight
// w[r][k], read straight from the matrix, and multiplies the loaded inputs; no sum needs adding
// across lanes at the end. (Twelve rows by 32 positions do the same arithmetic with as many
// registers, but ran about a quarter slower where the weights came from memory: twelve short
// streams of weights for the prefetcher instead of six.)
#define TILE_POSITIONS 64
#define TILE_VECTORS   (TILE_POSITIONS / 16)

// (The plain C tiles from here to the #if are the kernels of builds without AVX-512; the AVX-512
// ones call group_sums_portable for groups other than 32, and the tests hold them all to each
// other.)
// Positions p0..p0+15 of x (B, n) into columns (n, BLOCK); positions past n_positions get zero
// columns, so a tile may always read all of its positions.
__attribute__((unused)) static void inputs_to_columns_portable(float *columns, const float *x,
                                                               int p0, int n_positions, size_t n) {
    for (size_t k = 0; k < n; k++) {
        for (int p = p0; p < p0 + 16; p++) {
            columns[k * BLOCK + p] = p < n_positions ? x[p * n + k] : 0.0f;
        }
    }
}

// out[p * d + r] = sum over k of w_rows[r][k] * columns[k * BLOCK + p], for positions p < count
// and rows r < rows, each sum taken in the order of k.
__attribute__((unused)) static void row_tile_portable(float *out, size_t d,
                                                      const float *const *w_rows, size_t rows,
                                                      const float *columns, size_t n, int count) {
    for (int p = 0; p < count; p++) {
        for (size_t r = 0; r < rows; r++) {
            float sum = 0.0f;
            for (size_t k = 0; k < n; k++) {
                sum += w_rows[r][k] * columns[k * BLOCK + p];
            }
            out[p * d + r] = sum;
        }
    }
}

// int8 weights in a block: the inputs are quantized like a single position's (quantize_row), so
// each group's product is an exact integer sum as in dot_q8, and the integer sums run on VNNI,
// which multiplies 64 byte pairs per instruction, four times the pairs of an fp32 multiply-add.
// Its instruction multiplies unsigned bytes by signed ones, so the quantized inputs are stored
// plus 128, as unsigned bytes, and 128 times the group's sum of weights is taken off again:
// sum (x + 128) w - 128 sum w = sum x w. Inputs as columns of four (so that four inputs of sixteen
// positions fill one vector): x_u8[(k / 4) * 4 * BLOCK + 4 * p + k % 4] = x_q[p][k] + 128, and
// their scales x_scales[g * BLOCK + p]. A tile takes Q8_ROW_TILE rows by Q8_TILE_POSITIONS
// positions: its integer sums need registers of their own.
#define Q8_ROW_TILE       6
#define Q8_TILE_POSITIONS 32

// Positions p0..p0+15 of the block's quantized rows (B, n), plus 128, into columns of four:
// seen as 32-bit words, rows (B, n / 4) become columns (n / 4, BLOCK), a transposition. Positions
// past n_positions get zeros.
__attribute__((unused)) static void unsigned_columns_portable(uint8_t *x_u8, const int8_t *rows,
                                                              int p0, int n_positions, size_t n) {
    for (size_t k = 0; k < n; k++) {
        for (int p = p0; p < p0 + 16; p++) {
            x_u8[(k / 4) * 4 * BLOCK + 4 * p + k % 4] =
                p < n_positions ? (uint8_t)(rows[(size_t)p * n + k] + 128) : 0;
        }
    }
}

// 128 times the sum of each group of each of the rows (rows, n / group).
__attribute__((unused)) static void group_sums_portable(int32_t *sums, const int8_t *const *w_rows,
                                                        size_t rows, size_t n, int group) {
    for (size_t r = 0; r < rows; r++) {
        for (size_t g = 0; g < n / group; g++) {
            int32_t sum = 0;
            for (int i = 0; i < group; i++) {
                sum += w_rows[r][g * group + i];
            }
            sums[r * (n / group) + g] = 128 * sum;
        }
    }
}

// out[p * d + r] = sum over groups g of (sum over k in g of x_q[p][k] w[r][k]) * w_scale[r][g] *
// x_scale[p][g], for positions p < count and rows r < rows.
__attribute__((unused)) static void
q8_row_tile_portable(float *out, size_t d, const int8_t *const *w_rows,
                     const float *const *w_scales, const int32_t *sums, size_t rows,
                     const uint8_t *x_u8, const float *x_scales, size_t n, int group, int count) {
    for (int p = 0; p < count; p++) {
        for (size_t r = 0; r < rows; r++) {
            float total = 0.0f;
            for (size_t g = 0; g < n / group; g++) {
                int32_t integer = -sums[r * (n / group) + g];
                for (size_t k = g * group; k < (g + 1) * group; k++) {
                    integer += x_u8[(k / 4) * 4 * BLOCK + 4 * p + k % 4] * w_rows[r][k];
                }
                total += (float)integer * x_scales[g * BLOCK + p] * w_scales[r][g];
            }
            out[p * d + r] = total;
        }
    }
}

#if HAVE_AVX512

// A one-position int8 product streams every weight once from memory. Asking for the weights
// this far ahead of the loads that use them keeps more of them in flight than one core's
// hardware prefetcher does alone (measured: int8 decode of the 110M shape about 25% faster;
// fp32 showed no clear gain).
#define PREFETCH_BYTES 1024

// dot_q8 (Part 1) with AVX-512 VNNI, for groups of 32: one instruction multiplies 64 byte pairs and
// adds them four at a time into 16 int32 lanes, lanes 0-7 holding the first group and 8-15 the
// second. vpdpbusd wants unsigned times signed bytes, so x's sign moves onto w: |x| * (sign(x) w).
// Weights lie in [-127, 127], so negating them cannot overflow.
static float dot_q8_fast(const int8_t *w, const float *w_scales, const int8_t *x,
                         const float *x_scales, size_t n, int group, bool prefetch) {
    if (group != 32) {
        return dot_q8(w, w_scales, x, x_scales, n, group);
    }
    __m512 sum = _mm512_setzero_ps();
    size_t start = 0;
    for (; start + 64 <= n; start += 64) {
        if (prefetch) {
            _mm_prefetch((const char *)(w + start + PREFETCH_BYTES), _MM_HINT_T0);
        }
        __m512i xv = _mm512_loadu_si512(x + start), wv = _mm512_loadu_si512(w + start);
        __mmask64 negative = _mm512_movepi8_mask(xv);
        __m512i signed_w = _mm512_mask_sub_epi8(wv, negative, _mm512_setzero_si512(), wv);
        __m512i integer =
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(xv), signed_w);
        size_t g = start / 32;
        __m512 scales = _mm512_insertf32x8(_mm512_set1_ps(w_scales[g] * x_scales[g]),
                                           _mm256_set1_ps(w_scales[g + 1] * x_scales[g + 1]), 1);
        sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(integer), scales, sum);
    }
    float total = _mm512_reduce_add_ps(sum);
    if (start < n) { // an odd number of groups leaves one
        total += dot_q8(w + start, w_scales + start / 32, x + start, x_scales + start / 32,
                        n - start, group);
    }
    return total;
}

// The sums of the lanes of four vectors: (sum a, sum b, sum c, sum d), in 8 shuffles rather than
// the 16 of four separate reductions.
static inline __m128 reduce_add_4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 halves =
        _mm256_add_ps(_mm512_castps512_ps256(abcd),
                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1));
}

// The fp32 rows of Part 1's matmul for one position, with AVX-512, in two patterns that trade
// places between hosts (scripts/DESIGN.md, "fp32 decode"): one row at a time, one sequential
// stream per thread, and four rows at a time with software prefetch, four streams in flight.
// Both sum each row in the same order (sixteen lanes, then reduce_add_4), so they give the same
// bits and either may serve any row: load_model times both on the model's largest fp32 matrix
// and keeps the faster (choose_matvec).
//
// Only a short last run of a row is read masked: on the AMD EPYC, masked loads of every run read
// 3% slower than plain loads, and 15% slower where x does not start on a cache line.
static void matvec_f32_rows1(float *out, const float *x, const float *w, size_t n, size_t d) {
    for (size_t row = 0; row < d; row++) {
        const float *w0 = w + row * n;
        __m512 s0 = _mm512_setzero_ps();
        size_t i = 0;
        for (; i + 16 <= n; i += 16) {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + i), _mm512_loadu_ps(x + i), s0);
        }
        if (i < n) {
            __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0 + i), _mm512_maskz_loadu_ps(m, x + i),
                                 s0);
        }
        out[row] = _mm_cvtss_f32(reduce_add_4(s0, s0, s0, s0));
    }
}

// Four rows at a time, each asked for PREFETCH_BYTES ahead of its loads. A short last group
// repeats its first row and keeps only its own sums.
static void matvec_f32_rows4(float *out, const float *x, const float *w, size_t n, size_t d) {
    for (size_t row = 0; row < d; row += 4) {
        size_t rows = d - row < 4 ? d - row : 4;
        const float *w0 = w + row * n;
        const float *w1 = rows > 1 ? w0 + n : w0, *w2 = rows > 2 ? w0 + 2 * n : w0;
        const float *w3 = rows > 3 ? w0 + 3 * n : w0;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (size_t i = 0; i < n; i += 16) {
            __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
            _mm_prefetch((const char *)(w0 + i) + PREFETCH_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)(w1 + i) + PREFETCH_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)(w2 + i) + PREFETCH_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)(w3 + i) + PREFETCH_BYTES, _MM_HINT_T0);
            __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
            s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0 + i), xv, s0);
            s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w1 + i), xv, s1);
            s2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w2 + i), xv, s2);
            s3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w3 + i), xv, s3);
        }
        _mm_mask_storeu_ps(out + row, (__mmask8)((1u << rows) - 1), reduce_add_4(s0, s1, s2, s3));
    }
}

// A 16 x 16 block in sixteen registers, transposed: r[i][j] becomes r[j][i]. Four rounds of
// shuffles, each pairing registers twice as far apart: after the first two rounds register 4g + k
// holds, in its 128-bit lane l, element 4l + k of rows 4g..4g+3; the last two gather those
// lanes.
static inline void transpose_16x16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {
        r[g] = _mm512_shuffle_ps(t[g], t[g + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; k++) {
        __m512 even_lanes = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
        __m512 odd_lanes = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
        __m512 even_lanes2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
        __m512 odd_lanes2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
        t[k] = _mm512_shuffle_f32x4(even_lanes, even_lanes2, 0x88);
        t[8 + k] = _mm512_shuffle_f32x4(even_lanes, even_lanes2, 0xdd);
        t[4 + k] = _mm512_shuffle_f32x4(odd_lanes, odd_lanes2, 0x88);
        t[12 + k] = _mm512_shuffle_f32x4(odd_lanes, odd_lanes2, 0xdd);
    }
    for (int i = 0; i < 16; i++) {
        r[i] = t[i];
    }
}

// quantize_row (Part 1) with AVX-512, for groups of a multiple of sixteen (others go to Part 1):
// each group's largest size over its vectors, then sixteen values scaled, rounded to the nearest
// integer (ties to even, as lrintf) and narrowed to bytes at a time. The same arithmetic in the
// same order as Part 1's, so the two agree to the bit.
static void quantize_row_fast(int8_t *q, float *scales, const float *x, size_t n, int group) {
    if (group % 16 != 0) {
        quantize_row(q, scales, x, n, group);
        return;
    }
    for (size_t start = 0; start < n; start += group) {
        __m512 sizes = _mm512_setzero_ps();
        for (int i = 0; i < group; i += 16) { // max(size, sizes) keeps sizes where x is NaN
            sizes = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + start + i)), sizes);
        }
        float scale = _mm512_reduce_max_ps(sizes) / 127.0f;
        __m512 inverse = _mm512_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
        for (int i = 0; i < group; i += 16) {
            __m512i rounded =
                _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + start + i), inverse));
            _mm_storeu_si128((__m128i *)(q + start + i), _mm512_cvtsepi32_epi8(rounded));
        }
        scales[start / group] = scale;
    }
}

// inputs_to_columns_portable with AVX-512: sixteen positions by sixteen inputs at a time,
// transposed in registers.
static void inputs_to_columns(float *columns, const float *x, int p0, int n_positions, size_t n) {
    for (size_t k = 0; k < n; k += 16) {
        __mmask16 inputs = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1);
        __m512 block[16];
        for (int i = 0; i < 16; i++) {
            block[i] = p0 + i < n_positions
                           ? _mm512_maskz_loadu_ps(inputs, x + (size_t)(p0 + i) * n + k)
                           : _mm512_setzero_ps();
        }
        transpose_16x16(block);
        for (size_t j = 0; j < 16 && k + j < n; j++) {
            _mm512_storeu_ps(columns + (k + j) * BLOCK + p0, block[j]);
        }
    }
}

// A register tile's sums into out: acc[r][v] holds row r of positions 16v..16v+15, one per lane,
// and out wants positions as rows, out[p * d + r] for positions p < count and rows r < rows.
static inline __attribute__((always_inline)) void store_tile(float *out, size_t d,
                                                             __m512 (*acc)[TILE_VECTORS],
                                                             int tile_rows, size_t rows, int count,
                                                             const int vectors) {
    float tile[ROW_TILE > Q8_ROW_TILE ? ROW_TILE : Q8_ROW_TILE][TILE_POSITIONS];
    for (int r = 0; r < tile_rows; r++) {
        for (int v = 0; v < vectors; v++) {
            _mm512_storeu_ps(tile[r] + 16 * v, acc[r][v]);
        }
    }
    for (int p = 0; p < count; p++) {
        for (size_t r = 0; r < rows; r++) {
            out[p * d + r] = tile[r][p];
        }
    }
}

// row_tile_portable with AVX-512, for a tile of one to four vectors of positions (16 to 64): the
// ROW_TILE * vectors accumulators (at most 24 of the 32 registers) stay in registers.
static inline __attribute__((always_inline)) void
row_tile_vectors(float *out, size_t d, const float *const *w_rows, size_t rows,
                 const float *columns, size_t n, int count, const float *next_rows,
                 const int vectors) {
    __m512 acc[ROW_TILE][TILE_VECTORS];
    for (int r = 0; r < ROW_TILE; r++) {
        for (int v = 0; v < vectors; v++) {
            acc[r][v] = _mm512_setzero_ps();
        }
    }
#pragma GCC unroll 2
    for (size_t k = 0; k < n; k++) {
        if (next_rows != NULL && k % 16 == 0) { // a cache line of each of the next tile's rows
            for (int r = 0; r < ROW_TILE; r++) {
                _mm_prefetch((const char *)(next_rows + r * n + k), _MM_HINT_T0);
            }
        }
        __m512 x[TILE_VECTORS];
        for (int v = 0; v < vectors; v++) {
            x[v] = _mm512_loadu_ps(columns + k * BLOCK + 16 * v);
        }
        for (int r = 0; r < ROW_TILE; r++) {
            __m512 weight = _mm512_set1_ps(w_rows[r][k]);
            for (int v = 0; v < vectors; v++) {
                acc[r][v] = _mm512_fmadd_ps(weight, x[v], acc[r][v]);
            }
        }
    }
    store_tile(out, d, acc, ROW_TILE, rows, count, vectors);
}

static void row_tile(float *out, size_t d, const float *const *w_rows, size_t rows,
                     const float *columns, size_t n, int count, const float *next_rows) {
    switch ((count + 15) / 16) {
    case 4: row_tile_vectors(out, d, w_rows, rows, columns, n, count, next_rows, 4); break;
    case 3: row_tile_vectors(out, d, w_rows, rows, columns, n, count, next_rows, 3); break;
    case 2: row_tile_vectors(out, d, w_rows, rows, columns, n, count, next_rows, 2); break;
    default: row_tile_vectors(out, d, w_rows, rows, columns, n, count, next_rows, 1); break;
    }
}

// unsigned_columns_portable with AVX-512: sixteen positions by sixteen words, transposed in
// registers, the sign bit of every byte flipped (+128).
static void unsigned_columns(uint8_t *x_u8, const int8_t *rows, int p0, int n_positions, size_t n) {
    size_t words = n / 4;
    __m512i flip = _mm512_set1_epi8((char)0x80);
    for (size_t k = 0; k < words; k += 16) {
        __mmask16 lanes =
            words - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (words - k)) - 1);
        __m512 block[16];
        for (int i = 0; i < 16; i++) {
            block[i] =
                p0 + i < n_positions
                    ? _mm512_castsi512_ps(_mm512_xor_si512(
                          _mm512_maskz_loadu_epi32(lanes, rows + (size_t)(p0 + i) * n + 4 * k),
                          flip))
                    : _mm512_setzero_ps();
        }
        transpose_16x16(block);
        for (size_t j = 0; j < 16 && k + j < words; j++) {
            _mm512_storeu_ps((float *)(x_u8 + (k + j) * 4 * BLOCK + 4 * p0), block[j]);
        }
    }
}

// group_sums_portable with AVX-512 for groups of 32: flipping the sign bit makes each byte w + 128,
// unsigned, and vpsadbw adds eight of them at once; a group's sum is then that of four such
// partial sums less 32 * 128.
static void group_sums(int32_t *sums, const int8_t *const *w_rows, size_t rows, size_t n,
                       int group) {
    if (group != 32) {
        group_sums_portable(sums, w_rows, rows, n, group);
        return;
    }
    __m512i flip = _mm512_set1_epi8((char)0x80);
    size_t groups = n / 32;
    for (size_t r = 0; r < rows; r++) {
        size_t g = 0;
        for (; g + 2 <= groups; g += 2) {
            __m512i bytes = _mm512_xor_si512(_mm512_loadu_si512(w_rows[r] + 32 * g), flip);
            __m512i eights = _mm512_sad_epu8(bytes, _mm512_setzero_si512()); // 8 sums of 8
            __m256i low = _mm512_castsi512_si256(eights),
                    high = _mm512_extracti64x4_epi64(eights, 1);
            int64_t first = _mm256_extract_epi64(low, 0) + _mm256_extract_epi64(low, 1) +
                            _mm256_extract_epi64(low, 2) + _mm256_extract_epi64(low, 3);
            int64_t second = _mm256_extract_epi64(high, 0) + _mm256_extract_epi64(high, 1) +
                             _mm256_extract_epi64(high, 2) + _mm256_extract_epi64(high, 3);
            sums[r * groups + g] = 128 * (int32_t)(first - 32 * 128);
            sums[r * groups + g + 1] = 128 * (int32_t)(second - 32 * 128);
        }
        for (; g < groups; g++) {
            const int8_t *one = w_rows[r] + 32 * g;
            group_sums_portable(sums + r * groups + g, &one, 1, 32, 32);
        }
    }
}

// q8_row_tile_portable with AVX-512 VNNI, for one or two vectors of positions: per group, the
// integer sums of the tile in 6 * vectors registers, then each turned into a real number and
// added to its row's sums in as many more.
static inline __attribute__((always_inline)) void
q8_row_tile_vectors(float *out, size_t d, const int8_t *const *w_rows, const float *const *w_scales,
                    const int32_t *sums, size_t rows, const uint8_t *x_u8, const float *x_scales,
                    size_t n, int group, int count, const int8_t *next_rows, const int vectors) {
    __m512 acc[Q8_ROW_TILE][TILE_VECTORS];
    for (int r = 0; r < Q8_ROW_TILE; r++) {
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
    size_t groups = n / group;
    for (size_t g = 0; g < groups; g++) {
        if (next_rows != NULL && g * group % 64 < (size_t)group) { // each cache line once
            for (int r = 0; r < Q8_ROW_TILE; r++) {
                _mm_prefetch((const char *)(next_rows + r * n + g * group), _MM_HINT_T0);
            }
        }
        __m512i integer[Q8_ROW_TILE][2];
        for (int r = 0; r < Q8_ROW_TILE; r++) {
            integer[r][0] = integer[r][1] = _mm512_setzero_si512();
        }
        for (size_t k = g * group; k < (g + 1) * group; k += 4) {
            const uint8_t *four = x_u8 + k * BLOCK; // (k / 4) * 4 * BLOCK
            __m512i x0 = _mm512_loadu_si512(four);
            __m512i x1 = vectors == 2 ? _mm512_loadu_si512(four + 64) : x0;
            for (int r = 0; r < Q8_ROW_TILE; r++) {
                int32_t weights;
                memcpy(&weights, w_rows[r] + k, sizeof weights);
                __m512i w4 = _mm512_set1_epi32(weights);
                integer[r][0] = _mm512_dpbusd_epi32(integer[r][0], x0, w4);
                if (vectors == 2) {
                    integer[r][1] = _mm512_dpbusd_epi32(integer[r][1], x1, w4);
                }
            }
        }
        __m512 scale0 = _mm512_loadu_ps(x_scales + g * BLOCK);
        __m512 scale1 = vectors == 2 ? _mm512_loadu_ps(x_scales + g * BLOCK + 16) : scale0;
        for (int r = 0; r < Q8_ROW_TILE; r++) {
            __m512i correction = _mm512_set1_epi32(sums[r * groups + g]);
            __m512 w_scale = _mm512_set1_ps(w_scales[r][g]);
            __m512 sum0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(integer[r][0], correction));
            acc[r][0] = _mm512_fmadd_ps(_mm512_mul_ps(sum0, scale0), w_scale, acc[r][0]);
            if (vectors == 2) {
                __m512 sum1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(integer[r][1], correction));
                acc[r][1] = _mm512_fmadd_ps(_mm512_mul_ps(sum1, scale1), w_scale, acc[r][1]);
            }
        }
    }
    store_tile(out, d, acc, Q8_ROW_TILE, rows, count, vectors);
}

static void q8_row_tile(float *out, size_t d, const int8_t *const *w_rows,
                        const float *const *w_scales, const int32_t *sums, size_t rows,
                        const uint8_t *x_u8, const float *x_scales, size_t n, int group, int count,
                        const int8_t *next_rows) {
    if (count > 16) {
        q8_row_tile_vectors(out, d, w_rows, w_scales, sums, rows, x_u8, x_scales, n, group, count,
                            next_rows, 2);
    } else {
        q8_row_tile_vectors(out, d, w_rows, w_scales, sums, rows, x_u8, x_scales, n, group, count,
                            next_rows, 1);
    }
}

// half_to_float (Part 1) over n values, with the hardware's conversion, 16 values at a time.
static void halves_to_floats(float *out, const uint16_t *in, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(in + i));
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(h));
    }
    for (; i < n; i++) {
        out[i] = _cvtsh_ss(in[i]);
    }
}

// dot_f16 (Part 1) with AVX-512: 32 halves a step, widened by the hardware, into two
// accumulators so that consecutive multiply-adds do not wait on each other.
static float dot_f16_fast(const uint16_t *w, const float *x, size_t n, bool prefetch) {
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        if (prefetch) {
            _mm_prefetch((const char *)(w + i) + PREFETCH_BYTES, _MM_HINT_T0);
        }
        __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i)));
        __m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i + 16)));
        sum0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + i), sum0);
        sum1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + i + 16), sum1);
    }
    float total = _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
    for (; i < n; i++) {
        total += _cvtsh_ss(w[i]) * x[i];
    }
    return total;
}

// dot_q8_0 (Part 1) with AVX-512 VNNI, two blocks a step: their 64 values in one register, lanes
// 0-7 summing the first block and 8-15 the second, as in dot_q8. A file may hold -128, which
// cannot be negated in a byte, so here w's sign moves onto x (quantize_row keeps x in
// [-127, 127]): |w| * (sign(w) x).
static float dot_q8_0_fast(const unsigned char *blocks, const int8_t *x, const float *x_scales,
                           size_t n, bool prefetch) {
    __m512 sum = _mm512_setzero_ps();
    size_t b = 0, n_blocks = n / Q8_0_BLOCK;
    for (; b + 2 <= n_blocks; b += 2) {
        const unsigned char *pair = blocks + b * Q8_0_BYTES;
        if (prefetch) {
            _mm_prefetch((const char *)pair + PREFETCH_BYTES, _MM_HINT_T0);
        }
        __m256i low = _mm256_loadu_si256((const __m256i *)(pair + 2));
        __m256i high = _mm256_loadu_si256((const __m256i *)(pair + Q8_0_BYTES + 2));
        __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
        __m512i xv = _mm512_loadu_si512(x + b * Q8_0_BLOCK);
        __mmask64 negative = _mm512_movepi8_mask(wv);
        __m512i signed_x = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
        __m512i integer =
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv), signed_x);
        float s0 = _cvtsh_ss(load_half(pair)) * x_scales[b];
        float s1 = _cvtsh_ss(load_half(pair + Q8_0_BYTES)) * x_scales[b + 1];
        __m512 scales = _mm512_insertf32x8(_mm512_set1_ps(s0), _mm256_set1_ps(s1), 1);
        sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(integer), scales, sum);
    }
    float total = _mm512_reduce_add_ps(sum);
    if (b < n_blocks) { // an odd number of blocks leaves one
        total += dot_q8_0(blocks + b * Q8_0_BYTES, x + b * Q8_0_BLOCK, x_scales + b, Q8_0_BLOCK);
    }
    return total;
}

// dot_blocks (Part 1) with int8 activations. x is quantized once per position, in groups of 32
// for the blocks of 32 and in blocks of 256 for the K-quants; each type's kernel below
// unpacks its q into unsigned bytes, lets one VNNI or pair-sum instruction multiply 64 of
// them by x, and meets the scales in integers where it can.

// Two runs of 32 bytes as one vector of 64 (weights in order).
static inline __m512i join_halves(__m256i low, __m256i high) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

// Q2_K and Q3_K: half h's 32 bytes hold four runs of 32 weights in bit pairs 0-1, 2-3, 4-5, 6-7;
// Q3_K's hmask adds 4 where bit 4h + k is set.
static inline __attribute__((always_inline)) void
expand_k2(const unsigned char *bits, const unsigned char *hmask, __m512i *q) {
    __m256i m = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
    __m256i high = hmask != NULL ? _mm256_loadu_si256((const __m256i *)hmask) : m;
    for (int h = 0; h < 2; h++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(bits + h * 32));
        __m256i k[4] = {_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16(v, 2), m),
                        _mm256_and_si256(_mm256_srli_epi16(v, 4), m),
                        _mm256_and_si256(_mm256_srli_epi16(v, 6), m)};
        for (int j = 0; hmask != NULL && j < 4; j++) {
            __mmask32 set = _mm256_test_epi8_mask(high, _mm256_set1_epi8((char)(1 << (4 * h + j))));
            k[j] = _mm256_mask_add_epi8(k[j], set, k[j], four);
        }
        q[2 * h] = join_halves(k[0], k[1]);
        q[2 * h + 1] = join_halves(k[2], k[3]);
    }
}

// Q4_K's and Q5_K's 8 scales and 8 minimums of 6 bits (see k_scale_min), in run order, as the
// eight 16-bit lanes of *scales and of *minimums.
static inline void k4_scales(const unsigned char *packed, __m128i *scales, __m128i *minimums) {
    uint32_t a = load_u32(packed), b = load_u32(packed + 4), c = load_u32(packed + 8);
    uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, top2 = 0x03030303;
    uint32_t scales_0_3 = a & low6, minimums_0_3 = b & low6;
    uint32_t scales_4_7 = (c & low4) | ((a >> 6) & top2) << 4;
    uint32_t minimums_4_7 = ((c >> 4) & low4) | ((b >> 6) & top2) << 4;
    *scales = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)scales_4_7, (int)scales_0_3));
    *minimums = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)minimums_4_7, (int)minimums_0_3));
}

// A row of Q4_K or Q5_K blocks against x as int8 in blocks of 256 (x_k: one scale per block, runs
// in the order the nibbles come, see quantize_for_k4). Each 64 bytes of q hold two runs of 32;
// the integer products of pairs (maddubs) meet their runs' 6-bit scales in 16-bit lanes
// (dpwssd), so a block's sum stays an integer until one multiply by d and x's scale. The
// minimums meet the runs' sums of x.
static inline __attribute__((always_inline)) float
dot_k4(const unsigned char *row, const KernelScratch *k, size_t n, int bytes, bool fifth) {
    // Vector i holds runs (0, 2), (1, 3), (4, 6), (5, 7) in its low and high 256 bits; pick[i]
    // copies each half's run scale (a 16-bit lane of scales) into all of that half's lanes.
    const __m512i pick[4] = {
        _mm512_set_epi32(0x05040504, 0x05040504, 0x05040504, 0x05040504, 0x05040504, 0x05040504,
                         0x05040504, 0x05040504, 0x01000100, 0x01000100, 0x01000100, 0x01000100,
                         0x01000100, 0x01000100, 0x01000100, 0x01000100),
        _mm512_set_epi32(0x07060706, 0x07060706, 0x07060706, 0x07060706, 0x07060706, 0x07060706,
                         0x07060706, 0x07060706, 0x03020302, 0x03020302, 0x03020302, 0x03020302,
                         0x03020302, 0x03020302, 0x03020302, 0x03020302),
        _mm512_set_epi32(0x0d0c0d0c, 0x0d0c0d0c, 0x0d0c0d0c, 0x0d0c0d0c, 0x0d0c0d0c, 0x0d0c0d0c,
                         0x0d0c0d0c, 0x0d0c0d0c, 0x09080908, 0x09080908, 0x09080908, 0x09080908,
                         0x09080908, 0x09080908, 0x09080908, 0x09080908),
        _mm512_set_epi32(0x0f0e0f0e, 0x0f0e0f0e, 0x0f0e0f0e, 0x0f0e0f0e, 0x0f0e0f0e, 0x0f0e0f0e,
                         0x0f0e0f0e, 0x0f0e0f0e, 0x0b0a0b0a, 0x0b0a0b0a, 0x0b0a0b0a, 0x0b0a0b0a,
                         0x0b0a0b0a, 0x0b0a0b0a, 0x0b0a0b0a, 0x0b0a0b0a)};
    const __m512i mask = _mm512_set1_epi8(0x0f), sixteen = _mm512_set1_epi8(16);
    __m512 sum = _mm512_setzero_ps();
    __m128 minimums = _mm_setzero_ps();
    for (size_t b = 0; b < n / 256; b++) {
        const unsigned char *block = row + b * bytes, *nibbles = block + (fifth ? 48 : 16);
        const int8_t *x = k->x_k + b * 256;
        if (k->prefetch) {
            _mm_prefetch((const char *)block + PREFETCH_BYTES, _MM_HINT_T0);
        }
        __m128i scales16, minimums16;
        k4_scales(block + 4, &scales16, &minimums16);
        __m512i scales = _mm512_broadcast_i32x4(scales16);
        __m512i v[2] = {_mm512_loadu_si512(nibbles), _mm512_loadu_si512(nibbles + 64)};
        __m512i integer = _mm512_setzero_si512(), bits = _mm512_setzero_si512();
        if (fifth) { // Q5_K: bit r of byte l (of 32) is the fifth bit of run r's weight l
            bits = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(block + 16)));
        }
        for (int i = 0; i < 4; i++) {
            __m512i q = _mm512_and_si512(i % 2 ? _mm512_srli_epi16(v[i / 2], 4) : v[i / 2], mask);
            if (fifth) {
                int low = 1 << (4 * (i / 2) + i % 2), high = low << 2;
                __m512i which = _mm512_inserti64x4(_mm512_set1_epi8((char)low),
                                                   _mm256_set1_epi8((char)high), 1);
                q = _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(bits, which), q, sixteen);
            }
            __m512i pairs = _mm512_maddubs_epi16(q, _mm512_loadu_si512(x + 64 * i));
            integer = _mm512_dpwssd_epi32(integer, pairs, _mm512_shuffle_epi8(scales, pick[i]));
        }
        float x_scale = k->x_k_scales[b];
        float d = _cvtsh_ss(load_half(block)) * x_scale,
              dmin = _cvtsh_ss(load_half(block + 2)) * x_scale;
        sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(integer), _mm512_set1_ps(d), sum);
        __m128i mins =
            _mm_madd_epi16(minimums16, _mm_loadu_si128((const __m128i *)(k->x_k_sums + 8 * b)));
        minimums = _mm_fmadd_ps(_mm_cvtepi32_ps(mins), _mm_set1_ps(dmin), minimums);
    }
    return _mm512_reduce_add_ps(_mm512_sub_ps(sum, _mm512_zextps128_ps512(minimums)));
}

static float dot_q4_k(const unsigned char *row, const KernelScratch *k, size_t n) {
    return dot_k4(row, k, n, 144, false);
}
static float dot_q5_k(const unsigned char *row, const KernelScratch *k, size_t n) {
    return dot_k4(row, k, n, 176, true);
}

// Q6_K's 256 values of 6 bits (0..63, weight order) as four vectors of 64: half h's 64 bytes of
// low nibbles and 32 bytes of top bits give its 128, four runs of 32 that take bits 0-3 or 4-7
// of the nibbles and bits 2k, 2k+1 of the top bytes.
static inline void q6_k_values(const unsigned char *b, __m512i *q) {
    __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; h++) {
        __m256i low0 = _mm256_loadu_si256((const __m256i *)(b + h * 64));
        __m256i low1 = _mm256_loadu_si256((const __m256i *)(b + h * 64 + 32));
        __m256i top = _mm256_loadu_si256((const __m256i *)(b + 128 + h * 32));
        __m256i q0 = _mm256_or_si256(_mm256_and_si256(low0, m4),
                                     _mm256_and_si256(_mm256_slli_epi16(top, 4), m2));
        __m256i q1 = _mm256_or_si256(_mm256_and_si256(low1, m4),
                                     _mm256_and_si256(_mm256_slli_epi16(top, 2), m2));
        __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(low0, 4), m4),
                                     _mm256_and_si256(top, m2));
        __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(low1, 4), m4),
                                     _mm256_and_si256(_mm256_srli_epi16(top, 2), m2));
        q[2 * h] = join_halves(q0, q1);
        q[2 * h + 1] = join_halves(q2, q3);
    }
}

// Q3_K's 16 scales of 6 bits (q3_k_scales), minus 32, as 16-bit lanes: low 4 bits in bytes
// 0-7 (scales 0-7 in the low nibbles, 8-15 in the high ones), high 2 bits in bytes 8-11 (scale
// j in byte 8 + j % 4, bits 2 (j / 4) and up).
static inline __m256i q3_k_scales16(const unsigned char *packed) {
    uint64_t low = load_u32(packed) | (uint64_t)load_u32(packed + 4) << 32;
    uint32_t high = load_u32(packed + 8), top2 = 0x03030303;
    uint64_t nibbles = 0x0f0f0f0f0f0f0f0full;
    uint64_t high_0_7 = (high & top2) | (uint64_t)((high >> 2) & top2) << 32;
    uint64_t high_8_15 = ((high >> 4) & top2) | (uint64_t)((high >> 6) & top2) << 32;
    __m128i scales = _mm_set_epi64x((long long)((low >> 4 & nibbles) | high_8_15 << 4),
                                    (long long)((low & nibbles) | high_0_7 << 4));
    return _mm256_cvtepi8_epi16(_mm_sub_epi8(scales, _mm_set1_epi8(32)));
}

// A row of Q2_K, Q3_K or Q6_K blocks against x as int8 in blocks of 256 (x_k6, weight order):
// runs of 16 weights, each with its own integer scale, meet the pair sums in 16-bit lanes; an
// offset (Q3_K's 4, Q6_K's 32) meets the runs' sums of x in integers too, and Q2_K's minimums
// in one float product per block.
static inline __attribute__((always_inline)) float
dot_k16(const unsigned char *row, const KernelScratch *k, size_t n, uint32_t type) {
    static const int16_t runs[4][32] = {
        {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
        {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5,
         6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
        {8,  8,  8,  8,  8,  8,  8,  8,  9,  9,  9,  9,  9,  9,  9,  9,
         10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
        {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13,
         14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};
    int bytes = type == GGML_TYPE_Q6_K ? 210 : type == GGML_TYPE_Q3_K ? 110 : 84;
    __m512 sum = _mm512_setzero_ps();
    __m256 minimums = _mm256_setzero_ps();
    for (size_t b = 0; b < n / 256; b++) {
        const unsigned char *block = row + b * bytes;
        const int8_t *x = k->x_k6 + b * 256;
        if (k->prefetch) {
            _mm_prefetch((const char *)block + PREFETCH_BYTES, _MM_HINT_T0);
        }
        __m256i x_sums = _mm256_loadu_si256((const __m256i *)(k->x_k6_sums + 16 * b));
        __m512i q[4];
        __m256i scales, minimums16 = _mm256_setzero_si256();
        float d, dmin = 0.0f;
        if (type == GGML_TYPE_Q6_K) {
            q6_k_values(block, q);
            scales = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(block + 192)));
            d = _cvtsh_ss(load_half(block + 208));
        } else if (type == GGML_TYPE_Q3_K) {
            expand_k2(block + 32, block, q);
            scales = q3_k_scales16(block + 96);
            d = _cvtsh_ss(load_half(block + 108));
        } else { // Q2_K: a 4-bit scale and a 4-bit minimum per run
            expand_k2(block + 16, NULL, q);
            __m256i packed = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)block));
            scales = _mm256_and_si256(packed, _mm256_set1_epi16(15));
            minimums16 = _mm256_srli_epi16(packed, 4);
            d = _cvtsh_ss(load_half(block + 80)), dmin = _cvtsh_ss(load_half(block + 82));
        }
        __m512i wide = _mm512_castsi256_si512(scales), integer = _mm512_setzero_si512();
        for (int j = 0; j < 4; j++) {
            __m512i pairs = _mm512_maddubs_epi16(q[j], _mm512_loadu_si512(x + 64 * j));
            __m512i lane_scales = _mm512_permutexvar_epi16(_mm512_loadu_si512(runs[j]), wide);
            integer = _mm512_dpwssd_epi32(integer, pairs, lane_scales);
        }
        if (type != GGML_TYPE_Q2_K) { // minus offset * scale * sum(x) per run
            __m256i offsets = _mm256_madd_epi16(scales, x_sums);
            offsets = _mm256_slli_epi32(offsets, type == GGML_TYPE_Q6_K ? 5 : 2);
            integer = _mm512_sub_epi32(integer, _mm512_zextsi256_si512(offsets));
        } else {
            minimums = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(minimums16, x_sums)),
                                       _mm256_set1_ps(dmin * k->x_k_scales[b]), minimums);
        }
        sum =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(integer), _mm512_set1_ps(d * k->x_k_scales[b]), sum);
    }
    return _mm512_reduce_add_ps(_mm512_sub_ps(sum, _mm512_zextps256_ps512(minimums)));
}

// Blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1), four at a time: group g is blocks 4g to 4g + 3. Two
// loads cover a group's bytes (72 to 96), and one byte permute gathers its four runs of 16
// nibble bytes into one vector: [block 0's 16, block 1's, block 2's, block 3's]. Its low nibbles
// are each block's weights 0-15, its high nibbles weights 16-31; x_32 holds x in the same two
// orders (quantize_for_32), so two VNNI instructions make 16 sums of 8, lanes 4j to 4j + 3 of
// block j. A word permute spreads each block's fp16 d (and m) over its four lanes. Per group and
// lane, x_32_lanes holds x's scale and that times the lane's sum of x (for a minimum m), and
// x_32_sums minus the lane's sum of x times the offset of 8 or 16, where the VNNI sum starts. The
// last group may be short: masked loads read nothing past the row, and x_32 is zero there.
typedef struct {
    int bytes, m_at, fifth_at, nibbles_at;
    bool offset; // q - 8 (Q4_0) or q - 16 (Q5_0), where x_32_sums holds the offset times the sums
} Layout32;

// Each byte's high nibble, as a byte: one affine bit transform where the processor has GFNI.
static inline __m512i high_nibbles(__m512i v) {
#ifdef __GFNI__
    return _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64(0x1020408000000000ll), 0);
#else
    return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0f));
#endif
}

// Index vectors of the two permutes: byte i of the nibbles is block i / 16's byte nibbles_at +
// i % 16; word i (of 16) is block i / 4's word at byte `at`.
static inline __m512i nibble_index(Layout32 l) {
    const __m512i i =
        _mm512_set_epi32(0x3f3e3d3c, 0x3b3a3938, 0x37363534, 0x33323130, 0x2f2e2d2c, 0x2b2a2928,
                         0x27262524, 0x23222120, 0x1f1e1d1c, 0x1b1a1918, 0x17161514, 0x13121110,
                         0x0f0e0d0c, 0x0b0a0908, 0x07060504, 0x03020100);
    __m512i block = _mm512_and_si512(_mm512_srli_epi16(i, 4), _mm512_set1_epi8(3));
    __m512i within = _mm512_and_si512(i, _mm512_set1_epi8(15));
    __m512i start = _mm512_add_epi8(within, _mm512_set1_epi8((char)l.nibbles_at));
    for (int j = 1; j < 4; j++) { // start + block * bytes, without a byte multiply
        __mmask64 later = _mm512_cmpge_epu8_mask(block, _mm512_set1_epi8((char)j));
        start = _mm512_mask_add_epi8(start, later, start, _mm512_set1_epi8((char)l.bytes));
    }
    return start;
}

static inline __m512i word_index(Layout32 l, int at) {
    const __m512i block = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3,
                                           3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    return _mm512_add_epi16(_mm512_mullo_epi16(block, _mm512_set1_epi16((short)(l.bytes / 2))),
                            _mm512_set1_epi16((short)(at / 2)));
}

// The group's nibble bytes, [block 0's 16, ..., block 3's 16], from its bytes at a (also in low
// and high): one byte permute with VBMI, else four loads.
static inline __m512i group_nibbles(const unsigned char *a, __m512i low, __m512i high, Layout32 l,
                                    int blocks) {
#ifdef __AVX512VBMI__
    (void)a, (void)blocks;
    return _mm512_permutex2var_epi8(low, nibble_index(l), high);
#else
    (void)low, (void)high;
    __m512i v = _mm512_setzero_si512();
    for (int j = 0; j < blocks; j++) {
        __m128i run = _mm_loadu_si128((const __m128i *)(a + j * l.bytes + l.nibbles_at));
        v = _mm512_mask_broadcast_i32x4(v, (__mmask16)(0xf << 4 * j), run);
    }
    return v;
#endif
}

// The group's 4 fp16 numbers at word index `index` of low:high, each over its block's lanes.
static inline __m512 spread_halves(__m512i low, __m512i high, __m512i index) {
    __m512i words = _mm512_permutex2var_epi16(low, index, high);
    return _mm512_cvtph_ps(_mm512_castsi512_si256(words));
}

// The fifth bits of a group's 4 blocks (bit i of a block's u32 is its weight i's): 16 of each
// for the low nibbles, and the other 16 for the high ones.
static inline void fifth_bits(const unsigned char *a, Layout32 l, int blocks, __mmask64 *low,
                              __mmask64 *high) {
    *low = *high = 0;
    for (int j = 0; j < blocks; j++) {
        uint64_t bits = load_u32(a + j * l.bytes + l.fifth_at);
        *low |= (bits & 0xffff) << 16 * j;
        *high |= (bits >> 16) << 16 * j;
    }
}

typedef struct {
    __m512 sum, minimums;
} Sums32;

// The mask of a vector's first `bytes` bytes (none for 0 or fewer, all 64 for 64 or more).
static inline __mmask64 first_bytes(int bytes) {
    return bytes <= 0 ? 0 : bytes >= 64 ? ~0ull : (1ull << bytes) - 1;
}

// Adds group g (its bytes at a, `blocks` of them) to sums.
static inline __attribute__((always_inline)) Sums32 group_32(const unsigned char *a,
                                                             const KernelScratch *k, size_t g,
                                                             Layout32 l, int blocks, Sums32 sums) {
    int bytes = blocks * l.bytes;
    __m512i low = _mm512_maskz_loadu_epi8(first_bytes(bytes), a);
    __m512i high = _mm512_maskz_loadu_epi8(first_bytes(bytes - 64), a + 64);
    __m512i v = group_nibbles(a, low, high, l, blocks);
    const __m512i mask = _mm512_set1_epi8(0x0f);
    __m512i q_low = _mm512_and_si512(v, mask), q_high = high_nibbles(v);
    if (l.fifth_at >= 0) {
        __mmask64 fifth_low, fifth_high;
        fifth_bits(a, l, blocks, &fifth_low, &fifth_high);
        q_low = _mm512_mask_add_epi8(q_low, fifth_low, q_low, _mm512_set1_epi8(16));
        q_high = _mm512_mask_add_epi8(q_high, fifth_high, q_high, _mm512_set1_epi8(16));
    }
    __m512i integer = l.offset ? _mm512_loadu_si512(k->x_32_sums + g * 16) : _mm512_setzero_si512();
    integer = _mm512_dpbusd_epi32(integer, q_low, _mm512_loadu_si512(k->x_32 + g * 128));
    integer = _mm512_dpbusd_epi32(integer, q_high, _mm512_loadu_si512(k->x_32 + g * 128 + 64));
    const float *lanes = k->x_32_lanes + g * 32;
    if (l.m_at >= 0) {
        __m512 m = spread_halves(low, high, word_index(l, l.m_at));
        sums.minimums = _mm512_fmadd_ps(m, _mm512_loadu_ps(lanes + 16), sums.minimums);
    }
    __m512 d = spread_halves(low, high, word_index(l, 0));
    sums.sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(integer),
                               _mm512_mul_ps(d, _mm512_loadu_ps(lanes)), sums.sum);
    return sums;
}

static inline __attribute__((always_inline)) float
dot_32(const unsigned char *row, const KernelScratch *k, size_t n, Layout32 l) {
    Sums32 even = {_mm512_setzero_ps(), _mm512_setzero_ps()}, odd = even;
    size_t blocks = n / 32, groups = blocks / 4, g = 0;
    for (; g + 1 < groups; g += 2) { // two sums, so that one FMA need not wait for the last
        const unsigned char *a = row + 4 * g * l.bytes;
        if (k->prefetch) {
            _mm_prefetch((const char *)a + PREFETCH_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)a + PREFETCH_BYTES + 64, _MM_HINT_T0);
        }
        even = group_32(a, k, g, l, 4, even);
        odd = group_32(a + 4 * l.bytes, k, g + 1, l, 4, odd);
    }
    if (g < groups) {
        even = group_32(row + 4 * g * l.bytes, k, g, l, 4, even);
        g++;
    }
    if (g * 4 < blocks) {
        odd = group_32(row + 4 * g * l.bytes, k, g, l, (int)(blocks - g * 4), odd);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(even.sum, odd.sum),
                                              _mm512_add_ps(even.minimums, odd.minimums)));
}

static inline __attribute__((always_inline)) float dot_q4_0(const unsigned char *row,
                                                            const KernelScratch *k, size_t n) {
    return dot_32(
        row, k, n,
        (Layout32){.bytes = 18, .m_at = -1, .fifth_at = -1, .nibbles_at = 2, .offset = true});
}
static inline __attribute__((always_inline)) float dot_q4_1(const unsigned char *row,
                                                            const KernelScratch *k, size_t n) {
    return dot_32(row, k, n, (Layout32){.bytes = 20, .m_at = 2, .fifth_at = -1, .nibbles_at = 4});
}
static inline __attribute__((always_inline)) float dot_q5_0(const unsigned char *row,
                                                            const KernelScratch *k, size_t n) {
    return dot_32(
        row, k, n,
        (Layout32){.bytes = 22, .m_at = -1, .fifth_at = 2, .nibbles_at = 6, .offset = true});
}
static inline __attribute__((always_inline)) float dot_q5_1(const unsigned char *row,
                                                            const KernelScratch *k, size_t n) {
    return dot_32(row, k, n, (Layout32){.bytes = 24, .m_at = 2, .fifth_at = 4, .nibbles_at = 8});
}

// x_q8 (groups of 32, scales in x_scales) in dot_32's order, with each lane's scale and scaled
// sum, and minus the sum times the rows' offset (0, 8 or 16); a short last group is padded with
// zeros.
static void quantize_for_32(KernelScratch *k, const int8_t *x_q8, const float *x_scales, size_t n,
                            int offset) {
    size_t blocks = n / 32;
    for (size_t g = 0; g < (blocks + 3) / 4; g++) {
        int8_t *out = k->x_32 + g * 128;
        float *lanes = k->x_32_lanes + g * 32;
        memset(out, 0, 128);
        for (size_t j = 0; j < 4 && 4 * g + j < blocks; j++) {
            memcpy(out + 16 * j, x_q8 + (4 * g + j) * 32, 16);
            memcpy(out + 64 + 16 * j, x_q8 + (4 * g + j) * 32 + 16, 16);
        }
        for (int lane = 0; lane < 16; lane++) {
            size_t block = 4 * g + lane / 4;
            float scale = block < blocks ? x_scales[block] : 0.0f;
            int total = 0;
            for (int i = 0; i < 4; i++) {
                total += out[4 * lane + i] + out[64 + 4 * lane + i];
            }
            lanes[lane] = scale;
            lanes[16 + lane] = scale * (float)total;
            k->x_32_sums[g * 16 + lane] = -offset * total;
        }
    }
}

// out[first..last) for rows of blocks, x quantized into s->scratch (quantize_for_blocks). The
// type is chosen once, so that each kernel's constants are set up once per share, not per row.
#define EACH_ROW(dot)                                                                              \
    for (size_t r = first; r < last; r++) {                                                        \
        const unsigned char *row = w->blocks + r * row_bytes;                                      \
        out[r] = dot;                                                                              \
    }                                                                                              \
    break

static void block_rows_fast(float *out, const Matrix *w, size_t first, size_t last, const float *x,
                            const RunState *s) {
    (void)x;
    const KernelScratch *k = s->scratch;
    size_t n = w->cols, row_bytes = block_row_bytes(w->block_type, n);
    switch (w->block_type->ggml_type) {
    case GGML_TYPE_Q4_0: EACH_ROW(dot_q4_0(row, k, n));
    case GGML_TYPE_Q4_1: EACH_ROW(dot_q4_1(row, k, n));
    case GGML_TYPE_Q5_0: EACH_ROW(dot_q5_0(row, k, n));
    case GGML_TYPE_Q5_1: EACH_ROW(dot_q5_1(row, k, n));
    case GGML_TYPE_Q4_K: EACH_ROW(dot_q4_k(row, k, n));
    case GGML_TYPE_Q5_K: EACH_ROW(dot_q5_k(row, k, n));
    case GGML_TYPE_Q2_K: EACH_ROW(dot_k16(row, k, n, GGML_TYPE_Q2_K));
    case GGML_TYPE_Q3_K: EACH_ROW(dot_k16(row, k, n, GGML_TYPE_Q3_K));
    default: EACH_ROW(dot_k16(row, k, n, GGML_TYPE_Q6_K));
    }
}
#undef EACH_ROW

// x (n, a multiple of 256) as int8 in blocks of 256 for dot_k4: one scale per block, each block's
// runs of 32 in the order Q4_K's nibbles give them (0, 2, 1, 3, 4, 6, 5, 7), and each run's sum.
static void quantize_for_k4(KernelScratch *k, const float *x, size_t n) {
    static const int order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (size_t b = 0; b < n / 256; b++) {
        const float *xb = x + b * 256;
        __m512 sizes = _mm512_setzero_ps();
        for (int i = 0; i < 256; i += 16) { // max(size, sizes) keeps sizes where x is NaN
            sizes = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb + i)), sizes);
        }
        float scale = _mm512_reduce_max_ps(sizes) / 127.0f;
        __m512 inverse = _mm512_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
        int8_t *natural = k->x_k6 + b * 256;
        for (int run = 0; run < 16; run++) {
            __m128i q = _mm512_cvtsepi32_epi8(
                _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * run), inverse)));
            _mm_storeu_si128((__m128i *)(natural + 16 * run), q);
            k->x_k6_sums[b * 16 + run] = (int16_t)_mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(q));
        }
        for (int slot = 0; slot < 8; slot++) {
            int run = order[slot];
            memcpy(k->x_k + b * 256 + 32 * slot, natural + 32 * run, 32);
            k->x_k_sums[b * 8 + run] =
                (int16_t)(k->x_k6_sums[b * 16 + 2 * run] + k->x_k6_sums[b * 16 + 2 * run + 1]);
        }
        k->x_k_scales[b] = scale;
    }
}

// ----------------------------------------------------------------------------
// Q4_0, Q4_K, Q5_K and Q6_K rows eight at a time
//
// Most of dot_32's instructions go to scales, not weights: every block of 32 weights has its own
// fp16 scale, which must be spread over the block's lanes, converted and multiplied once per
// four blocks. Eight rows side by side share that work: the eight rows' scales of one block are
// one conversion, one multiply and one multiply-add, for 256 weights. So at load every Q4_0
// matrix of a one-position product is copied, eight rows at a time, into an interleaved layout
// (interleave_weights), one 144-byte record per block of the eight rows:
//   bytes  0-15   the eight rows' fp16 scales, row after row
//   bytes 16-79   vector 0: its 4-byte lane j holds row j % 8's nibble bytes 4c..4c+3, c = j / 8
//   bytes 80-143  vector 1: the same for c = 2 + j / 8
// A nibble byte i holds weight i (low) and weight 16 + i (high), so each lane's four products
// belong to one row, and each row's sum is split over two lanes, j and j + 8. x is laid out to
// match (quantize_for_eight_rows): per block four 64-byte vectors, the values that meet vector
// 0's low nibbles, its high ones, then vector 1's, and minus four times the block's sum, the
// offset 8 halved between the two lanes of a row. Rows past the last multiple of eight stay with
// dot_32. Over rows in the cache this reads Q4_0 at about twice dot_32's rate (scripts/DESIGN.md);
// the prompt's block products still read the file's own rows.
//
// Every group of eight rows meets all of x, so x must stay in L1 while the records stream past
// it: a matrix's records are kept in spans of EIGHT_ROWS_SPAN columns, span after span, each
// holding every group's records of its columns, and the kernels take one span at a time over all
// of a thread's groups. x's share of L1 is then that of a span (8 KB of Q4_0's layout, 3 KB of
// Q6_K's) at any width: with the whole row at once, 5632 columns wide, both kernels read from
// memory at little more than half the rate (scripts/DESIGN.md). A thread reads its share of a
// span in one sequential stream.
#define EIGHT_ROWS_RECORD 144
#define EIGHT_ROWS_SPAN   1024

// Where the span starting at block `start` of a row of n_blocks begins, in records, for a matrix
// of `groups` groups of eight rows; *length: its blocks (span_blocks, or fewer in the last).
static size_t span_start(size_t groups, size_t n_blocks, size_t span_blocks, size_t start,
                         size_t *length) {
    *length = n_blocks - start < span_blocks ? n_blocks - start : span_blocks;
    return groups * start;
}

// The index of group `group`'s record of block b among a matrix's records: (spans, groups, the
// span's blocks).
static size_t record_index(size_t groups, size_t n_blocks, size_t span_blocks, size_t group,
                           size_t b) {
    size_t length, start = b / span_blocks * span_blocks;
    return span_start(groups, n_blocks, span_blocks, start, &length) + group * length + b - start;
}

// A matrix's rows 0..8 * (rows / 8) - 1 in records: (cols / EIGHT_ROWS_SPAN spans, rows / 8,
// the span's blocks of 32, EIGHT_ROWS_RECORD).
static void interleave_q4_0(unsigned char *records, const unsigned char *blocks, size_t rows,
                            size_t cols) {
    size_t n_blocks = cols / 32, row_bytes = n_blocks * 18, groups = rows / 8;
    for (size_t group = 0; group < groups; group++) {
        for (size_t b = 0; b < n_blocks; b++) {
            unsigned char *record =
                records +
                record_index(groups, n_blocks, EIGHT_ROWS_SPAN / 32, group, b) * EIGHT_ROWS_RECORD;
            for (int r = 0; r < 8; r++) {
                const unsigned char *block = blocks + (group * 8 + r) * row_bytes + b * 18;
                memcpy(record + 2 * r, block, 2);
                for (int c = 0; c < 4; c++) { // lane r + 8 * (c % 2) of vector c / 2
                    memcpy(record + 16 + 64 * (c / 2) + 4 * (r + 8 * (c % 2)), block + 2 + 4 * c,
                           4);
                }
            }
        }
    }
}

// x_q8 (n, groups of 32) as the records' products read it: k->x_eight (n / 32, 4, 64) and
// k->x_eight_sums (n / 32).
static void quantize_for_eight_rows(KernelScratch *k, const int8_t *x_q8, size_t n) {
    // dword c of a block is its values 4c..4c+3: lanes 0-7 take one chunk, lanes 8-15 the next
    const __m512i chunks[4] = {_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                               _mm512_set_epi32(5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4),
                               _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2),
                               _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6)};
    for (size_t b = 0; b < n / 32; b++) {
        __m256i values = _mm256_loadu_si256((const __m256i *)(x_q8 + 32 * b));
        __m512i wide = _mm512_castsi256_si512(values);
        for (int v = 0; v < 4; v++) {
            _mm512_storeu_si512(k->x_eight + (4 * b + v) * 64,
                                _mm512_permutexvar_epi32(chunks[v], wide));
        }
        __m256i sums = _mm256_sad_epu8(_mm256_xor_si256(values, _mm256_set1_epi8((char)0x80)),
                                       _mm256_setzero_si256()); // (x + 128) summed by eights
        int64_t total = _mm256_extract_epi64(sums, 0) + _mm256_extract_epi64(sums, 1) +
                        _mm256_extract_epi64(sums, 2) + _mm256_extract_epi64(sums, 3) - 32 * 128;
        k->x_eight_sums[b] = (int32_t)(-4 * total);
    }
}

// Block b of eight rows: their eight products with x's block b, each times both scales.
static inline __attribute__((always_inline)) __m256 eight_rows_block(const unsigned char *record,
                                                                     const KernelScratch *k,
                                                                     const float *x_scales,
                                                                     size_t b) {
    const __m512i mask = _mm512_set1_epi8(0x0f);
    const int8_t *x = k->x_eight + 4 * b * 64;
    __m512i first = _mm512_loadu_si512(record + 16), second = _mm512_loadu_si512(record + 80);
    __m512i sum = _mm512_set1_epi32(k->x_eight_sums[b]);
    sum = _mm512_dpbusd_epi32(sum, _mm512_and_si512(first, mask), _mm512_loadu_si512(x));
    sum = _mm512_dpbusd_epi32(sum, high_nibbles(first), _mm512_loadu_si512(x + 64));
    sum = _mm512_dpbusd_epi32(sum, _mm512_and_si512(second, mask), _mm512_loadu_si512(x + 128));
    sum = _mm512_dpbusd_epi32(sum, high_nibbles(second), _mm512_loadu_si512(x + 192));
    __m256i rows = _mm256_add_epi32(_mm512_castsi512_si256(sum), _mm512_extracti32x8_epi32(sum, 1));
    __m256 scales = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)record)),
                                  _mm256_set1_ps(x_scales[b]));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(rows), scales);
}

// out[8 * g .. 8 * g + 7] for the groups g in [first, last) of `groups`, x quantized by
// quantize_for_eight_rows: span by span, each span's sums added to those of the spans before.
// Two sums within a span, for even and odd blocks, so that one add need not wait for the last.
static void eight_rows_fast(float *out, const unsigned char *records, size_t groups, size_t cols,
                            size_t first, size_t last, const RunState *s) {
    const KernelScratch *k = s->scratch;
    size_t n_blocks = cols / 32, length;
    for (size_t start = 0; start < n_blocks; start += EIGHT_ROWS_SPAN / 32) {
        const unsigned char *record =
            records +
            (span_start(groups, n_blocks, EIGHT_ROWS_SPAN / 32, start, &length) + first * length) *
                EIGHT_ROWS_RECORD;
        for (size_t group = first; group < last; group++) {
            __m256 even = _mm256_setzero_ps(), odd = even;
            size_t b = start, end = start + length;
            for (; b + 1 < end; b += 2, record += 2 * EIGHT_ROWS_RECORD) {
                even = _mm256_add_ps(even, eight_rows_block(record, k, s->x_scales, b));
                odd = _mm256_add_ps(
                    odd, eight_rows_block(record + EIGHT_ROWS_RECORD, k, s->x_scales, b + 1));
            }
            if (b < end) {
                even = _mm256_add_ps(even, eight_rows_block(record, k, s->x_scales, b));
                record += EIGHT_ROWS_RECORD;
            }
            __m256 sum = _mm256_add_ps(even, odd);
            __m256 before = start == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(out + 8 * group);
            _mm256_storeu_ps(out + 8 * group, _mm256_add_ps(before, sum));
        }
    }
}

// Q6_K's rows eight at a time. Q6_K (dot_k16) spends most of its instructions unpacking each
// weight's 6 bits from a nibble and two top bits, and on one scale per run of 16 weights. Its
// records keep the 6 bits together and give the scales of eight rows one vector: per
// super-block of 256 weights of eight rows, one 1680-byte record (eight rows' 210 bytes):
//   bytes    0-15   the eight rows' fp16 d, row after row
//   bytes   16-143  the scales: byte 16 + 16 g + 8 h + r is row r's scale of run 2 g + h
//   bytes  144-     group g (0-7) of runs 2 g and 2 g + 1 in 192 bytes, at 144 + 192 g: three
//                   64-byte vectors a, b, c
// A group's 256 values (0..63) are four vectors v0..v3 of 64: the 4-byte lane j of vector i
// holds row j % 8's values 4 i..4 i + 3 of run 2 g + j / 8, so each lane's four products belong
// to one row and one run. v0, v1, v2 are the low 6 bits of a, b and c; v3's bits 0-1, 2-3 and
// 4-5 are the top two bits of a, b and c. A group's four VNNI sums start at minus 32 times each
// lane's run's sum of x (the offset, quantize_for_eight_k6), meet the lanes' scales in one
// integer multiply, and then each row's two lanes, j and j + 8, are added once per super-block.
// x stays as quantize_for_k4 left it (x_k6, weight order): a vector's x is one in-lane shuffle
// of the group's 32 values, so that x takes an eighth of the cache that an expanded layout would
// (which at 2048 wide pushed x out of L1 and made the kernel slower than dot_k16 from memory).
// Rows past the last multiple of eight stay with dot_k16. Over rows in the cache this reads Q6_K
// about 1.6 times as fast as dot_k16 (scripts/DESIGN.md).
#define EIGHT_K6_RECORD 1680

// Row r's block (210 bytes) into its part of a record: values in weight order (q6_k_values),
// then four at a time into their lane, r + 8 h, of vectors a, b, c, or as top bits into all three.
static void interleave_q6_k_block(unsigned char *record, const unsigned char *block, int r) {
    uint8_t q[256];
    __m512i values[4];
    q6_k_values(block, values);
    for (int v = 0; v < 4; v++) {
        _mm512_storeu_si512(q + 64 * v, values[v]);
    }
    memcpy(record + 2 * r, block + 208, 2);
    for (int run = 0; run < 16; run++) {
        record[16 + 16 * (run / 2) + 8 * (run % 2) + r] = block[192 + run];
    }
    for (int g = 0; g < 8; g++) {
        unsigned char *abc = record + 144 + 192 * g;
        for (int h = 0; h < 2; h++) {
            int at = 4 * (r + 8 * h);
            const uint8_t *run = q + 32 * g + 16 * h; // values 4 v..4 v + 3 go to vector v
            uint32_t top = load_u32(run + 12), lanes[3];
            for (int v = 0; v < 3; v++) {
                lanes[v] = load_u32(run + 4 * v) | ((top >> (2 * v)) & 0x03030303u) << 6;
                memcpy(abc + 64 * v + at, &lanes[v], 4);
            }
        }
    }
}

// Row r's K-quant block into its part of a record.
typedef void InterleaveBlock(unsigned char *record, const unsigned char *block, int r);

// The records of a K-quant matrix's rows 0..8 * (rows / 8) - 1, record_bytes per super-block of
// eight rows (block_bytes each), each row's part written by `block`: (cols / EIGHT_ROWS_SPAN
// spans, rows / 8, the span's super-blocks, record_bytes).
static void interleave_k(unsigned char *records, const unsigned char *blocks, size_t rows,
                         size_t cols, size_t block_bytes, size_t record_bytes,
                         InterleaveBlock *block) {
    size_t n_blocks = cols / 256, row_bytes = n_blocks * block_bytes, groups = rows / 8;
#pragma omp parallel for schedule(static)
    for (size_t group = 0; group < groups; group++) {
        for (size_t b = 0; b < n_blocks; b++) {
            size_t at = record_index(groups, n_blocks, EIGHT_ROWS_SPAN / 256, group, b);
            for (int r = 0; r < 8; r++) {
                block(records + at * record_bytes,
                      blocks + (group * 8 + r) * row_bytes + b * block_bytes, r);
            }
        }
    }
}

// The sums the records' products start from, k->x_eight_offsets (n / 32, 16): for group g,
// minus 32 times x_k6's sum over run 2 g in lanes 0-7 and over run 2 g + 1 in lanes 8-15.
static void quantize_for_eight_k6(KernelScratch *k, size_t n) {
    for (size_t g = 0; g < n / 32; g++) {
        __m256i first = _mm256_set1_epi32(-32 * k->x_k6_sums[2 * g]);
        __m256i second = _mm256_set1_epi32(-32 * k->x_k6_sums[2 * g + 1]);
        _mm512_storeu_si512(k->x_eight_offsets + 16 * g,
                            _mm512_inserti32x8(_mm512_castsi256_si512(first), second, 1));
    }
}

// Super-block b of eight Q6_K rows: their eight products with x's block b, times both scales.
static inline __attribute__((always_inline)) __m256
eight_rows_k6_block(const unsigned char *record, const KernelScratch *k, size_t b) {
    const __m512i low6 = _mm512_set1_epi8(0x3f), low2 = _mm512_set1_epi8(0x03);
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    __m512i integer = _mm512_setzero_si512();
    for (int g = 0; g < 8; g++) {
        const unsigned char *abc = record + 144 + 192 * g;
        // x's 32 values of the two runs as 16-byte quarters [0-15, 0-15, 16-31, 16-31]: dword v of
        // each quarter is then the x that lanes 0-7 and 8-15 of vector v meet
        __m512i xs = _mm512_castsi256_si512(
            _mm256_loadu_si256((const __m256i *)(k->x_k6 + (8 * b + g) * 32)));
        xs = _mm512_shuffle_i64x2(xs, xs, 0x50);
        __m512i a = _mm512_loadu_si512(abc), bb = _mm512_loadu_si512(abc + 64);
        __m512i c = _mm512_loadu_si512(abc + 128);
        // v3: bits 0-1 from a's top, 2-3 from b's, 4-5 from c's (0xe4: third ? first : second)
        __m512i top = _mm512_ternarylogic_epi32(_mm512_srli_epi16(a, 6), _mm512_srli_epi16(bb, 4),
                                                low2, 0xe4);
        top = _mm512_ternarylogic_epi32(top, _mm512_srli_epi16(c, 2), low4, 0xe4);
        __m512i sum = _mm512_loadu_si512(k->x_eight_offsets + 16 * (8 * b + g));
        sum = _mm512_dpbusd_epi32(sum, _mm512_and_si512(a, low6), _mm512_shuffle_epi32(xs, 0x00));
        sum = _mm512_dpbusd_epi32(sum, _mm512_and_si512(bb, low6), _mm512_shuffle_epi32(xs, 0x55));
        sum = _mm512_dpbusd_epi32(sum, _mm512_and_si512(c, low6), _mm512_shuffle_epi32(xs, 0xaa));
        sum = _mm512_dpbusd_epi32(sum, _mm512_and_si512(top, low6), _mm512_shuffle_epi32(xs, 0xff));
        __m512i scales =
            _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(record + 16 + 16 * g)));
        integer = _mm512_add_epi32(integer, _mm512_mullo_epi32(sum, scales));
    }
    __m256i rows =
        _mm256_add_epi32(_mm512_castsi512_si256(integer), _mm512_extracti32x8_epi32(integer, 1));
    __m256 scales = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)record)),
                                  _mm256_set1_ps(k->x_k_scales[b]));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(rows), scales);
}

// A super-block of eight rows of a K-quant's records: their eight products with x's block b.
typedef __m256 EightRowsBlock(const unsigned char *record, const KernelScratch *k, size_t b);

// out[8 * g .. 8 * g + 7] for the groups g in [first, last) of `groups`, from records of
// record_bytes per super-block, each read by `block`: span by span, as eight_rows_fast. Inlined
// into each caller, so that `block` is inlined too.
static inline __attribute__((always_inline)) void
eight_rows_k(float *out, const unsigned char *records, size_t groups, size_t cols, size_t first,
             size_t last, const KernelScratch *k, size_t record_bytes, EightRowsBlock *block) {
    size_t n_blocks = cols / 256, length;
    for (size_t start = 0; start < n_blocks; start += EIGHT_ROWS_SPAN / 256) {
        const unsigned char *record =
            records +
            (span_start(groups, n_blocks, EIGHT_ROWS_SPAN / 256, start, &length) + first * length) *
                record_bytes;
        for (size_t group = first; group < last; group++) {
            __m256 sum = start == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(out + 8 * group);
            for (size_t b = start; b < start + length; b++, record += record_bytes) {
                sum = _mm256_add_ps(sum, block(record, k, b));
            }
            _mm256_storeu_ps(out + 8 * group, sum);
        }
    }
}

// Q6_K's groups [first, last), x quantized by quantize_for_k4 and its sums by
// quantize_for_eight_k6.
static void eight_rows_k6(float *out, const unsigned char *records, size_t groups, size_t cols,
                          size_t first, size_t last, const KernelScratch *k) {
    eight_rows_k(out, records, groups, cols, first, last, k, EIGHT_K6_RECORD, eight_rows_k6_block);
}

// Q4_K's rows eight at a time. dot_k4 spends most of its instructions on each block's packed
// 6-bit scales and minimums and on spreading the scales over 16-bit lanes, once per row. Per
// super-block of 256 weights of eight rows, one 1184-byte record (32 bytes more than the eight
// blocks' 1152, the scales and minimums unpacked to bytes):
//   bytes    0-15   the eight rows' fp16 d, row after row
//   bytes   16-31   their fp16 dmin
//   bytes   32-95   the scales: byte 32 + 16 p + 8 h + r is row r's scale of run 2 p + h
//   bytes   96-159  the minimums: byte 96 + 32 m + 2 (r + 8 q) + e is row r's of run 4 m + 2 q + e
//   bytes  160-     pair p (0-3) of runs 2 p and 2 p + 1 in four 64-byte vectors, at 160 + 256 p
// The 4-byte lane r + 8 h of vector v holds row r's weights 4 v..4 v + 3 of run 2 p + h in its
// low nibbles and 16 + 4 v..16 + 4 v + 3 in its high ones (the file packs runs 2 p and 2 p + 1 into
// the low and high nibbles of one byte; the records pack each run's two halves), so that each
// lane's products belong to one row and one run. x is read as for Q6_K's records: x_k6, two runs'
// 64 values a vector, one in-lane shuffle per vector of weights. Eight VNNI sums a pair of runs,
// one integer multiply by the lanes' scales; the minimums meet the runs' sums of x in two
// multiply-adds of 16-bit pairs per super-block. Rows past the last multiple of eight stay with
// dot_k4. Q5_K's records (1440 bytes, eight blocks take 1408) are Q4_K's with a fifth vector
// after each pair's four, pair p at 160 + 320 p (so that a record is still read front to back:
// with the fifth bits at its end, reading from memory was slower than dot_k4's), which holds
// the pair's fifth bits: its byte j belongs to byte j of each of the four vectors, bit 4 + v the
// fifth bit of vector v's low nibble and bit v that of its high one, so that one shift and one
// mask put it at bit 4.
#define EIGHT_K4_RECORD 1184
#define EIGHT_K5_RECORD 1440

// Row r's block (Q4_K's 144 bytes, or Q5_K's 176 with fifth_bits, its bytes 16-47) into its part
// of a record.
static inline void interleave_k45_block(unsigned char *record, const unsigned char *block, int r,
                                        const unsigned char *fifth_bits) {
    memcpy(record + 2 * r, block, 2);
    memcpy(record + 16 + 2 * r, block + 2, 2);
    for (int run = 0; run < 8; run++) {
        int scale, minimum;
        k_scale_min(block + 4, run, &scale, &minimum);
        record[32 + 16 * (run / 2) + 8 * (run % 2) + r] = (unsigned char)scale;
        record[96 + 32 * (run / 4) + 2 * (r + 8 * (run % 4 / 2)) + run % 2] =
            (unsigned char)minimum;
    }
    // pair p's 32 bytes: run 2 p low, 2 p + 1 high; Q5_K's fifth bits: bit 2 p + h of byte l.
    // Four bytes at a time: lane r + 8 h of vector v takes the run's weights 4 v..4 v + 3 (low
    // nibbles) and 16 + 4 v.. (high), and of the fifth vector bits 4 + v and v.
    const unsigned char *nibbles = block + (fifth_bits != NULL ? 48 : 16);
    for (int pair = 0; pair < 4; pair++) {
        unsigned char *vectors = record + 160 + (fifth_bits != NULL ? 320 : 256) * pair;
        for (int h = 0; h < 2; h++) {
            uint32_t fifth = 0;
            for (int v = 0; v < 4; v++) {
                uint32_t low = load_u32(nibbles + 32 * pair + 4 * v) >> (4 * h) & 0x0f0f0f0fu;
                uint32_t high = load_u32(nibbles + 32 * pair + 16 + 4 * v) >> (4 * h) & 0x0f0f0f0fu;
                uint32_t lane = low | high << 4;
                memcpy(vectors + 64 * v + 4 * (r + 8 * h), &lane, 4);
                if (fifth_bits != NULL) {
                    int shift = 2 * pair + h;
                    fifth |= (load_u32(fifth_bits + 4 * v) >> shift & 0x01010101u) << (4 + v) |
                             (load_u32(fifth_bits + 16 + 4 * v) >> shift & 0x01010101u) << v;
                }
            }
            if (fifth_bits != NULL) {
                memcpy(vectors + 256 + 4 * (r + 8 * h), &fifth, 4);
            }
        }
    }
}

static void interleave_q4_k_block(unsigned char *record, const unsigned char *block, int r) {
    interleave_k45_block(record, block, r, NULL);
}
static void interleave_q5_k_block(unsigned char *record, const unsigned char *block, int r) {
    interleave_k45_block(record, block, r, block + 16);
}

// The eight rows' sums of minimum times x over super-block b's runs, as integers.
static inline __m256i eight_rows_k4_minimums(const unsigned char *record, const KernelScratch *k,
                                             size_t b) {
    // dword i of the runs' sums is the pair (sum 2 i, sum 2 i + 1): lanes 0-7 of the first
    // product take pair 0, lanes 8-15 pair 1; of the second, pairs 2 and 3
    const __m512i first = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i second = _mm512_add_epi32(first, _mm512_set1_epi32(2));
    __m512i sums = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(k->x_k_sums + 8 * b)));
    __m512i m0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(record + 96)));
    __m512i m1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(record + 128)));
    __m512i total = _mm512_madd_epi16(m0, _mm512_permutexvar_epi32(first, sums));
    total = _mm512_dpwssd_epi32(total, m1, _mm512_permutexvar_epi32(second, sums));
    return _mm256_add_epi32(_mm512_castsi512_si256(total), _mm512_extracti32x8_epi32(total, 1));
}

// Super-block b of eight Q4_K rows (with fifth bits, Q5_K): their eight products with x's block b.
static inline __attribute__((always_inline)) __m256
eight_rows_k45_block(const unsigned char *record, const KernelScratch *k, size_t b, bool fifth) {
    const __m512i low4 = _mm512_set1_epi8(0x0f), bit4 = _mm512_set1_epi8(0x10);
    __m512i integer = _mm512_setzero_si512();
    for (int pair = 0; pair < 4; pair++) {
        const unsigned char *vectors = record + 160 + (fifth ? 320 : 256) * pair;
        // x's 128-bit quarters: run 2 p's values 0-15, 16-31, then run 2 p + 1's; the low nibbles
        // meet quarters [0, 0, 2, 2], the high ones [1, 1, 3, 3], dword v of each
        __m512i xs = _mm512_loadu_si512(k->x_k6 + b * 256 + 64 * pair);
        __m512i x_low = _mm512_shuffle_i64x2(xs, xs, 0xa0),
                x_high = _mm512_shuffle_i64x2(xs, xs, 0xf5);
        __m512i sum = _mm512_setzero_si512();
        __m512i x_lows[4] = {_mm512_shuffle_epi32(x_low, 0x00), _mm512_shuffle_epi32(x_low, 0x55),
                             _mm512_shuffle_epi32(x_low, 0xaa), _mm512_shuffle_epi32(x_low, 0xff)};
        __m512i x_highs[4] = {
            _mm512_shuffle_epi32(x_high, 0x00), _mm512_shuffle_epi32(x_high, 0x55),
            _mm512_shuffle_epi32(x_high, 0xaa), _mm512_shuffle_epi32(x_high, 0xff)};
        __m512i bits = fifth ? _mm512_loadu_si512(vectors + 256) : low4;
        for (int v = 0; v < 4; v++) {
            __m512i q = _mm512_loadu_si512(vectors + 64 * v);
            __m512i low = _mm512_and_si512(q, low4);
            __m512i high = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
            if (fifth) { // 0xf8: first | (second & third)
                low = _mm512_ternarylogic_epi32(low, _mm512_srli_epi16(bits, v), bit4, 0xf8);
                high = _mm512_ternarylogic_epi32(high, _mm512_slli_epi16(bits, 4 - v), bit4, 0xf8);
            }
            sum = _mm512_dpbusd_epi32(sum, low, x_lows[v]);
            sum = _mm512_dpbusd_epi32(sum, high, x_highs[v]);
        }
        __m512i scales =
            _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(record + 32 + 16 * pair)));
        integer = _mm512_add_epi32(integer, _mm512_mullo_epi32(sum, scales));
    }
    __m256i rows =
        _mm256_add_epi32(_mm512_castsi512_si256(integer), _mm512_extracti32x8_epi32(integer, 1));
    __m256 x_scale = _mm256_set1_ps(k->x_k_scales[b]);
    __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)record)), x_scale);
    __m256 dmin =
        _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(record + 16))), x_scale);
    __m256 minimums = _mm256_cvtepi32_ps(eight_rows_k4_minimums(record, k, b));
    return _mm256_fmsub_ps(_mm256_cvtepi32_ps(rows), d, _mm256_mul_ps(minimums, dmin));
}

static inline __attribute__((always_inline)) __m256
eight_rows_k4_block(const unsigned char *record, const KernelScratch *k, size_t b) {
    return eight_rows_k45_block(record, k, b, false);
}
static inline __attribute__((always_inline)) __m256
eight_rows_k5_block(const unsigned char *record, const KernelScratch *k, size_t b) {
    return eight_rows_k45_block(record, k, b, true);
}

// Q4_K's or Q5_K's groups [first, last), x quantized by quantize_for_k4.
static void eight_rows_k4(float *out, const unsigned char *records, size_t groups, size_t cols,
                          size_t first, size_t last, const KernelScratch *k, bool fifth) {
    if (fifth) {
        eight_rows_k(out, records, groups, cols, first, last, k, EIGHT_K5_RECORD,
                     eight_rows_k5_block);
    } else {
        eight_rows_k(out, records, groups, cols, first, last, k, EIGHT_K4_RECORD,
                     eight_rows_k4_block);
    }
}

// out's rows of w in the groups of eight [first, last), from w's records.
static void eight_rows_product(float *out, const unsigned char *records, const Matrix *w,
                               size_t first, size_t last, const RunState *s) {
    if (w->block_type->ggml_type == GGML_TYPE_Q6_K) {
        eight_rows_k6(out, records, w->rows / 8, w->cols, first, last, s->scratch);
    } else if (w->block_type->ggml_type == GGML_TYPE_Q4_K ||
               w->block_type->ggml_type == GGML_TYPE_Q5_K) {
        eight_rows_k4(out, records, w->rows / 8, w->cols, first, last, s->scratch,
                      w->block_type->ggml_type == GGML_TYPE_Q5_K);
    } else {
        eight_rows_fast(out, records, w->rows / 8, w->cols, first, last, s);
    }
}

// x (n) quantized for rows of type: in blocks of 256 for the K-quants, in groups of 32 for the
// blocks of 32, laid out for dot_32 where some rows go through it (by_32) and for the eight-row
// records where some are read from them (by_eight: Q4_0's layout, Q6_K's starting sums; Q4_K's
// and Q5_K's records read quantize_for_k4's x as it is).
static void quantize_for_blocks(RunState *s, const float *x, size_t n, const BlockType *type,
                                bool by_32, bool by_eight) {
    if (type->values == 256) {
        quantize_for_k4(s->scratch, x, n);
        if (by_eight && type->ggml_type == GGML_TYPE_Q6_K) {
            quantize_for_eight_k6(s->scratch, n);
        }
        return;
    }
    int offset; // Q4_0's 8, Q5_0's 16; 0 for Q4_1 and Q5_1, which have a minimum instead
    symmetric_group(type, &offset);
    quantize_row_fast(s->x_q8, s->x_scales, x, n, 32);
    if (by_32) {
        quantize_for_32(s->scratch, s->x_q8, s->x_scales, n, offset);
    }
    if (by_eight) {
        quantize_for_eight_rows(s->scratch, s->x_q8, n);
    }
}

// Rows of Q4_0 blocks as int8 (q - 8) and one scale per block of 32.
static void q4_0_to_int8(const unsigned char *row, size_t n, int8_t *values, float *scales) {
    const __m128i mask = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
    for (size_t b = 0; b < n / 32; b++) {
        const unsigned char *block = row + b * 18;
        __m128i v = _mm_loadu_si128((const __m128i *)(block + 2));
        _mm_storeu_si128((__m128i *)(values + 32 * b), _mm_sub_epi8(_mm_and_si128(v, mask), eight));
        _mm_storeu_si128((__m128i *)(values + 32 * b + 16),
                         _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), mask), eight));
        scales[b] = _cvtsh_ss(load_half(block));
    }
}

// Rows of Q6_K blocks as int8 (q - 32) and one scale per run of 16.
static void q6_k_to_int8(const unsigned char *row, size_t n, int8_t *values, float *scales) {
    for (size_t b = 0; b < n / 256; b++) {
        const unsigned char *block = row + b * 210;
        __m512i q[4];
        q6_k_values(block, q);
        for (int j = 0; j < 4; j++) {
            _mm512_storeu_si512(values + 256 * b + 64 * j,
                                _mm512_sub_epi8(q[j], _mm512_set1_epi8(32)));
        }
        __m512 sc = _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(block + 192))));
        _mm512_storeu_ps(scales + 16 * b,
                         _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(load_half(block + 208))), sc));
    }
}

// A row of Q4_K or Q5_K blocks as fp32: each run of 32 is (d * scale) * q - (dmin * minimum), as
// decode_blocks (Part 1) computes it, 16 weights at a time.
static void k4_to_floats(const unsigned char *row, size_t n, float *out, int bytes, bool fifth) {
    const __m256i mask = _mm256_set1_epi8(0x0f);
    for (size_t b = 0; b < n / 256; b++) {
        const unsigned char *block = row + b * bytes, *nibbles = block + (fifth ? 48 : 16);
        __m128i scales16, minimums16;
        k4_scales(block + 4, &scales16, &minimums16);
        float scale[8], minimum[8];
        _mm256_storeu_ps(scale, _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(load_half(block))),
                                              _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(scales16))));
        _mm256_storeu_ps(minimum,
                         _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(load_half(block + 2))),
                                       _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(minimums16))));
        __m256i bits = _mm256_loadu_si256((const __m256i *)(block + 16)); // Q5_K's fifth bits
        for (int run = 0; run < 8; run++) { // run 2j: quarter j's low nibbles; 2j + 1: high
            __m256i v = _mm256_loadu_si256((const __m256i *)(nibbles + 32 * (run / 2)));
            __m256i q = _mm256_and_si256(run % 2 ? _mm256_srli_epi16(v, 4) : v, mask);
            if (fifth) {
                __mmask32 set = _mm256_test_epi8_mask(bits, _mm256_set1_epi8((char)(1 << run)));
                q = _mm256_mask_add_epi8(q, set, q, _mm256_set1_epi8(16));
            }
            __m512 s = _mm512_set1_ps(scale[run]), m = _mm512_set1_ps(minimum[run]);
            for (int half = 0; half < 2; half++) {
                __m128i bytes16 = half ? _mm256_extracti128_si256(q, 1) : _mm256_castsi256_si128(q);
                __m512 values = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes16));
                _mm512_storeu_ps(out + b * 256 + run * 32 + half * 16,
                                 _mm512_sub_ps(_mm512_mul_ps(s, values), m));
            }
        }
    }
}

// A row of blocks as fp32 (decode_blocks, Part 1), the common K-quants with vector code.
static void blocks_to_floats(const BlockType *type, const unsigned char *row, size_t n,
                             float *out) {
    if (type->ggml_type == GGML_TYPE_Q4_K) {
        k4_to_floats(row, n, out, 144, false);
    } else if (type->ggml_type == GGML_TYPE_Q5_K) {
        k4_to_floats(row, n, out, 176, true);
    } else {
        decode_blocks(type, row, out, n);
    }
}

static void blocks_to_int8(const BlockType *type, const unsigned char *row, size_t n,
                           int8_t *values, float *scales) {
    if (type->ggml_type == GGML_TYPE_Q4_0) {
        q4_0_to_int8(row, n, values, scales);
    } else if (type->ggml_type == GGML_TYPE_Q6_K) {
        q6_k_to_int8(row, n, values, scales);
    } else {
        blocks_to_int8_portable(type, row, n, values, scales);
    }
}
#else
// Without AVX-512: Part 1's products, and the plain C tiles above.
#define blocks_to_int8                      blocks_to_int8_portable
#define blocks_to_floats(type, row, n, out) decode_blocks(type, row, out, n)

static void matvec_f32_rows1(float *out, const float *x, const float *w, size_t n, size_t d) {
    for (size_t row = 0; row < d; row++) {
        out[row] = dot(w + row * n, x, n);
    }
}
#define matvec_f32_rows4                    matvec_f32_rows1

static void halves_to_floats(float *out, const uint16_t *in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        out[i] = half_to_float(in[i]);
    }
}

#define dot_f16_fast(w, x, n, prefetch)           dot_f16(w, x, n)
#define quantize_for_blocks(s, x, n, type, a, b)  (void)0
#define eight_rows_product(out, r, w, g0, g1, s)  (void)0 // no records without AVX-512
#define dot_q8_0_fast(w, x, xs, n, prefetch)      dot_q8_0(w, x, xs, n)
#define dot_q8_fast(w, ws, x, xs, n, g, prefetch) dot_q8(w, ws, x, xs, n, g)
#define quantize_row_fast                         quantize_row

static void block_rows_fast(float *out, const Matrix *w, size_t first, size_t last, const float *x,
                            const RunState *s) {
    (void)s;
    size_t row_bytes = block_row_bytes(w->block_type, w->cols);
    for (size_t r = first; r < last; r++) {
        out[r] = dot_blocks(w->block_type, w->blocks + r * row_bytes, x, w->cols);
    }
}

static void inputs_to_columns(float *columns, const float *x, int p0, int n_positions, size_t n) {
    inputs_to_columns_portable(columns, x, p0, n_positions, n);
}

static void row_tile(float *out, size_t d, const float *const *w_rows, size_t rows,
                     const float *columns, size_t n, int count, const float *next_rows) {
    (void)next_rows;
    row_tile_portable(out, d, w_rows, rows, columns, n, count);
}

static void q8_row_tile(float *out, size_t d, const int8_t *const *w_rows,
                        const float *const *w_scales, const int32_t *sums, size_t rows,
                        const uint8_t *x_u8, const float *x_scales, size_t n, int group, int count,
                        const int8_t *next_rows) {
    (void)next_rows;
    q8_row_tile_portable(out, d, w_rows, w_scales, sums, rows, x_u8, x_scales, n, group, count);
}

static void unsigned_columns(uint8_t *x_u8, const int8_t *rows, int p0, int n_positions, size_t n) {
    unsigned_columns_portable(x_u8, rows, p0, n_positions, n);
}

static void group_sums(int32_t *sums, const int8_t *const *w_rows, size_t rows, size_t n,
                       int group) {
    group_sums_portable(sums, w_rows, rows, n, group);
}
#endif

// row_dot (Part 1) for an int8, F16 or Q8_0 row, through the kernels above: F16 against x
// itself, int8 and Q8_0 against x quantized into s->x_q8 in their groups.
static float row_dot_fast(const Matrix *w, size_t row, const float *x, const RunState *s) {
    size_t n = w->cols;
    if (w->f16 != NULL) {
        return dot_f16_fast(w->f16 + row * n, x, n, s->scratch->prefetch);
    }
    if (w->q8_0 != NULL) {
        return dot_q8_0_fast(w->q8_0 + row * (n / Q8_0_BLOCK) * Q8_0_BYTES, s->x_q8, s->x_scales, n,
                             s->scratch->prefetch);
    }
    return dot_q8_fast(w->q8 + row * n, w->scales + row * (n / w->group), s->x_q8, s->x_scales, n,
                       w->group, s->scratch->prefetch);
}

// Rows [first, last) of out (d) = W (d, n) @ x (n) for one position: fp32 rows go through
// the matvec this host runs faster, blocks through block_rows_fast, the others through
// row_dot_fast; both read x as quantized beforehand (prepare_vector_input).
static void vector_rows(float *out, const float *x, const Matrix *w, size_t first, size_t last,
                        const RunState *s) {
    if (w->f32 != NULL) {
        s->scratch->matvec(out + first, x, w->f32 + first * w->cols, w->cols, last - first);
        return;
    }
    if (w->blocks != NULL) {
        block_rows_fast(out, w, first, last, x, s);
        return;
    }
    for (size_t row = first; row < last; row++) {
        out[row] = row_dot_fast(w, row, x, s);
    }
}

// A one-position product's arguments, for the body a parallel region runs.
typedef struct {
    float *const *outs;
    const float *x;
    const Matrix *const *ws;
    int count;
    RunState *s;
} Products;

// The records of w's rows eight at a time, or NULL where it has none.
static const unsigned char *eight_rows_of(KernelScratch *k, const Matrix *w) {
    if (w->blocks == NULL || k->eight_rows == NULL) {
        return NULL;
    }
    ptrdiff_t slot = hmgeti(k->eight_rows, eight_rows_key(w->blocks));
    return slot >= 0 ? k->eight_rows[slot].value : NULL;
}

// This thread's contiguous share of every matrix's rows; of a matrix with records, a share of
// its groups of eight rows, the rows past the last group counting as one more group. Each row is
// then summed by the same kernel on 1 thread or 16.
static void vector_shares(void *context) {
    const Products *p = context;
    for (int i = 0; i < p->count; i++) {
        const Matrix *w = p->ws[i];
        const unsigned char *records = eight_rows_of(p->s->scratch, w);
        size_t first, last;
        if (records == NULL) {
            thread_share(w->rows, &first, &last);
            vector_rows(p->outs[i], p->x, w, first, last, p->s);
            continue;
        }
        size_t groups = w->rows / 8;
        thread_share(groups + (w->rows % 8 != 0), &first, &last);
        eight_rows_product(p->outs[i], records, w, first, last < groups ? last : groups, p->s);
        if (last > groups) {
            vector_rows(p->outs[i], p->x, w, groups * 8, w->rows, p->s);
        }
    }
}

// x as the one-position kernels of count matrices of one encoding read it: int8 in their groups,
// or in the layouts of the block kernels their rows go through.
static void prepare_vector_input(const float *x, const Matrix *const *ws, int count, RunState *s) {
    const Matrix *w = ws[0];
    if (w->blocks != NULL) {
        bool by_32 = false, by_eight = false;
        for (int i = 0; i < count; i++) {
            bool records = eight_rows_of(s->scratch, ws[i]) != NULL;
            by_eight = by_eight || records;
            by_32 = by_32 || !records || ws[i]->rows % 8 != 0;
        }
        quantize_for_blocks(s, x, w->cols, w->block_type, by_32, by_eight);
    } else if (w->f32 == NULL && w->f16 == NULL) { // int8 or Q8_0: x in their groups
        quantize_row_fast(s->x_q8, s->x_scales, x, w->cols, w->group);
    }
}

// outs[i] (d_i) = ws[i] (d_i, n) @ x (n) for one position and count matrices of one encoding:
// every weight is read once per token, so this is bounded by memory bandwidth. Rows are
// independent: each thread takes a contiguous share of every matrix's rows, and the threads meet
// once at the end, not once per matrix.
static void matmul_vector(float *const *outs, const float *x, const Matrix *const *ws, int count,
                          RunState *s) {
    size_t work = 0;
    for (int i = 0; i < count; i++) {
        work += ws[i]->rows * ws[i]->cols;
    }
    prepare_vector_input(x, ws, count, s);
    Products p = {outs, x, ws, count, s};
    on_threads(work, vector_shares, &p);
}

// Rows [first, first + count) of an int8, F16 or Q8_0 matrix, turned back into fp32 in panel
// (count, cols): decode_row (Part 1) for each, F16 rows with the hardware's conversion.
static const float *dequantize_rows(const Matrix *w, size_t first, size_t count, float *panel) {
    if (w->f16 != NULL) {
        halves_to_floats(panel, w->f16 + first * w->cols, count * w->cols);
        return panel;
    }
    for (size_t r = 0; r < count; r++) {
        if (w->blocks != NULL) {
            size_t n = w->cols;
            blocks_to_floats(w->block_type,
                             w->blocks + (first + r) * block_row_bytes(w->block_type, n), n,
                             panel + r * n);
        } else {
            decode_row(w, first + r, panel + r * w->cols);
        }
    }
    return panel;
}

// out (B, d) = x (B, n) @ W (d, n)^T for a block of B positions: x turned into columns once, then
// each thread takes groups of ROW_TILE rows of W and runs them past every position of the block,
// so each weight is read from memory once per block. F16 and Q8_0 rows (and int8 rows in groups
// that are not a multiple of four) are turned back into fp32 first: a block is bound by
// arithmetic, not by memory, so fp32 arithmetic costs nothing extra here; int8 rows have their
// own product below. block_rows does one group of rows against every position.
static void block_rows(float *out, const float *columns, int n_positions, const Matrix *w,
                       size_t group, RunState *s) {
    size_t n = w->cols, d = w->rows, first = ROW_TILE * group;
    size_t rows = d - first < ROW_TILE ? d - first : ROW_TILE;
    const float *weights =
        w->f32 != NULL
            ? w->f32 + first * n
            : dequantize_rows(w, first, rows,
                              s->scratch->panels + (size_t)thread_index() * ROW_TILE * n);
    const float *w_rows[ROW_TILE];
    for (size_t r = 0; r < ROW_TILE; r++) { // a short last group repeats its first row
        w_rows[r] = weights + (r < rows ? r : 0) * n;
    }
    // While the first tile of positions runs, the next group's rows of an fp32 matrix are asked
    // for from memory, ahead of the hardware's prefetcher, which waits for a stream of misses.
    const float *next_rows =
        w->f32 != NULL && first + 2 * ROW_TILE <= d ? w->f32 + (first + ROW_TILE) * n : NULL;
    for (int p = 0; p < n_positions; p += TILE_POSITIONS) {
        int count = n_positions - p < TILE_POSITIONS ? n_positions - p : TILE_POSITIONS;
        row_tile(out + (size_t)p * d + first, d, w_rows, rows, columns + p, n, count,
                 p == 0 ? next_rows : NULL);
    }
}

// The groups in which the int8 block product takes w's weights: int8 weights in groups of a
// multiple of four, Q8_0, and the block types whose weights are scale * (q - offset)
// (symmetric_group); 0 for the others, which are turned into fp32.
static int int8_group(const Matrix *w) {
    int offset;
    if (w->q8 != NULL) {
        return w->group % 4 == 0 ? w->group : 0;
    }
    if (w->q8_0 != NULL) {
        return Q8_0_BLOCK;
    }
    return w->blocks != NULL ? symmetric_group(w->block_type, &offset) : 0;
}

// block_rows for int8 weights (int8_group): Q8_ROW_TILE rows against every position, with the
// inputs quantized as columns (x_u8, x_scales).
static void q8_block_rows(float *out, const uint8_t *x_u8, const float *x_scales, int n_positions,
                          const Matrix *w, size_t tile, RunState *s) {
    int group = int8_group(w);
    size_t n = w->cols, d = w->rows, first = Q8_ROW_TILE * tile, groups = n / group;
    size_t rows = d - first < Q8_ROW_TILE ? d - first : Q8_ROW_TILE;
    // The thread's panel: the group sums, then blocks' rows as int8 values and their scales.
    int32_t *sums = (int32_t *)(s->scratch->panels + (size_t)thread_index() * ROW_TILE * n);
    int8_t *values = (int8_t *)(sums + Q8_ROW_TILE * groups);
    float *scales = (float *)(values + Q8_ROW_TILE * n);
    const int8_t *w_rows[Q8_ROW_TILE];
    const float *w_scales[Q8_ROW_TILE];
    for (size_t r = 0; r < Q8_ROW_TILE; r++) { // a short last tile repeats its first row
        size_t row = first + (r < rows ? r : 0);
        if (w->q8 != NULL) {
            w_rows[r] = w->q8 + row * n, w_scales[r] = w->scales + row * groups;
        } else if (w->q8_0 != NULL) { // the block's own int8 values and fp16 scale
            w_rows[r] = values + r * n, w_scales[r] = scales + r * groups;
            const unsigned char *block = w->q8_0 + row * groups * Q8_0_BYTES;
            for (size_t b = 0; b < groups; b++, block += Q8_0_BYTES) {
                memcpy(values + r * n + b * Q8_0_BLOCK, block + 2, Q8_0_BLOCK);
                scales[r * groups + b] = half_to_float(load_half(block));
            }
        } else {
            w_rows[r] = values + r * n, w_scales[r] = scales + r * groups;
            blocks_to_int8(w->block_type, w->blocks + row * block_row_bytes(w->block_type, n), n,
                           values + r * n, scales + r * groups);
        }
    }
    group_sums(sums, w_rows, Q8_ROW_TILE, n, group);
    const int8_t *next_rows =
        w->q8 != NULL && first + 2 * Q8_ROW_TILE <= d ? w->q8 + (first + Q8_ROW_TILE) * n : NULL;
    for (int p = 0; p < n_positions; p += Q8_TILE_POSITIONS) { // (next_rows: as block_rows)
        int count = n_positions - p < Q8_TILE_POSITIONS ? n_positions - p : Q8_TILE_POSITIONS;
        q8_row_tile(out + (size_t)p * d + first, d, w_rows, w_scales, sums, rows, x_u8 + 4 * p,
                    x_scales + p, n, group, count, p == 0 ? next_rows : NULL);
    }
}

// A block product runs in stages, on all threads, each stage finished by every thread before
// the next begins: int8 weights (in groups of a multiple of four) quantize each position's inputs
// and turn them into columns of four; other weights turn the inputs into columns of fp32; then
// the tiles. A step of a stage: one position (QUANTIZE), sixteen positions (COLUMNS), one tile
// of rows (TILES).
enum BlockStage { QUANTIZE, COLUMNS, TILES };

// The products of a block that read the same input x: the matrices' tiles are numbered one after
// the other, matrix i's from first_tile[i], so that the threads share them as one list.
#define MAX_SHARED 3
typedef struct {
    float *const *outs;
    const Matrix *const *ws;
    int count;
    bool int8; // int8 weights in groups of a multiple of four: the VNNI product
    int first_tile[MAX_SHARED + 1];
    enum BlockStage first_stage;
    int steps[TILES + 1]; // steps of each stage
    const float *x;
    int n_positions;
    RunState *s;
} BlockProducts;

static void block_step(enum BlockStage stage, int step, const BlockProducts *b, const float *x,
                       int n_positions, RunState *s) {
    const Matrix *w = b->ws[0];
    int group = b->int8 ? int8_group(w) : 0;
    size_t n = w->cols, groups = b->int8 ? n / group : 0;
    float *x_columns = s->scratch->x_columns;    // (n, BLOCK)
    uint8_t *x_u8 = (uint8_t *)x_columns;        // (n / 4, BLOCK, 4)
    float *x_scales = x_columns + n * BLOCK / 4; // (n / group, BLOCK)
    if (stage == QUANTIZE) {
        quantize_row_fast(s->x_q8 + (size_t)step * n, s->x_scales + (size_t)step * groups,
                          x + (size_t)step * n, n, group);
    } else if (stage == COLUMNS && !b->int8) {
        inputs_to_columns(x_columns, x, 16 * step, n_positions, n);
    } else if (stage == COLUMNS) {
        unsigned_columns(x_u8, s->x_q8, 16 * step, n_positions, n);
        for (size_t g = 0; g < groups; g++) {
            for (int p = 16 * step; p < 16 * step + 16; p++) {
                x_scales[g * BLOCK + p] = p < n_positions ? s->x_scales[p * groups + g] : 0.0f;
            }
        }
    } else {
        int i = 0;
        while (step >= b->first_tile[i + 1]) {
            i++;
        }
        int tile = step - b->first_tile[i];
        if (b->int8) {
            q8_block_rows(b->outs[i], x_u8, x_scales, n_positions, b->ws[i], tile, s);
        } else {
            block_rows(b->outs[i], x_columns, n_positions, b->ws[i], tile, s);
        }
    }
}

// Every stage in turn, each step of a stage on one thread ("omp for" waits at its end).
static void block_stages(void *context) {
    const BlockProducts *b = context;
    for (int stage = b->first_stage; stage <= TILES; stage++) {
#pragma omp for schedule(static)
        for (int step = 0; step < b->steps[stage]; step++) {
            block_step(stage, step, b, b->x, b->n_positions, b->s);
        }
    }
}

// outs[i] (B, d_i) = x (B, n) @ ws[i] (d_i, n)^T for count matrices of one encoding.
static void matmul_block(float *const *outs, const float *x, int n_positions,
                         const Matrix *const *ws, int count, RunState *s) {
    const Matrix *w = ws[0];
    BlockProducts b = {.outs = outs, .ws = ws, .count = count};
    b.int8 = int8_group(w) > 0; // other weights are turned into fp32
    size_t tile_rows = b.int8 ? Q8_ROW_TILE : ROW_TILE, work = 0;
    for (int i = 0; i < count; i++) {
        b.first_tile[i + 1] = b.first_tile[i] + (int)((ws[i]->rows + tile_rows - 1) / tile_rows);
        work += ws[i]->rows * ws[i]->cols * n_positions;
    }
    b.first_stage = b.int8 ? QUANTIZE : COLUMNS;
    b.steps[QUANTIZE] = n_positions;
    b.steps[COLUMNS] = (n_positions + 15) / 16;
    b.steps[TILES] = b.first_tile[count];
    b.x = x, b.n_positions = n_positions, b.s = s;
    on_threads(work, block_stages, &b);
}

// Whether two matrices hold their weights the same way, so that one preparation of the input
// (quantized in the same groups, or as columns) serves both.
static bool same_encoding(const Matrix *a, const Matrix *b) {
    return (a->f32 == NULL) == (b->f32 == NULL) && (a->f16 == NULL) == (b->f16 == NULL) &&
           (a->q8 == NULL) == (b->q8 == NULL) && (a->q8_0 == NULL) == (b->q8_0 == NULL) &&
           a->block_type == b->block_type && a->group == b->group && a->cols == b->cols;
}

// matmul_shared (Part 1): one preparation of x and one wait for the threads for all count
// matrices, when they hold their weights the same way.
static void matmul_shared_fast(float *const *outs, const float *x, int n_positions,
                               const Matrix *const *ws, int count, RunState *s) {
    bool together = count <= MAX_SHARED;
    for (int i = 1; i < count; i++) {
        together = together && same_encoding(ws[0], ws[i]);
    }
    if (!together) { // (a GGUF file may mix encodings)
        for (int i = 0; i < count; i++) {
            matmul_shared_fast(outs + i, x, n_positions, ws + i, 1, s);
        }
    } else if (n_positions == 1) {
        matmul_vector(outs, x, ws, count, s);
    } else {
        matmul_block(outs, x, n_positions, ws, count, s);
    }
}

// matmul (Part 1): one position takes the matrix-vector path, several the block path.
static void matmul_fast(float *out, const float *x, int n_positions, const Matrix *w, RunState *s) {
    matmul_shared_fast(&out, x, n_positions, &w, 1, s);
}
// ----------------------------------------------------------------------------
// Attention kernels
//
// online_softmax_tile_fast stands for online_softmax_tile (Part 1): it runs online_softmax_step
// for every row (query head at a block
// position) that reads a tile, with each of the step's three loops as an AVX-512 kernel: scores
// four keys at a time with one shared horizontal sum, exp by a polynomial sixteen lanes at a
// time, and the weighted sum of values in registers. When many rows read the tile (a prompt
// block, or a decode step of a model with large head groups, MQA's above all) the tile's keys
// are first turned into columns, so that scores need no horizontal sums; measured on the
// KV-dominated benchmark model at 12k positions, that made prompt blocks 15-35% faster and MQA
// decode about 12% faster. One row alone does not pay for the turning, so MHA decode keeps the
// first way. Without AVX-512, and for heads wider than 64, Part 1's online_softmax_tile runs.
// The tests hold the kernels to plain loops and the whole to attend. attention_fast, at the end,
// stands for attention (Part 1): the same tiles, split into units of work for the threads.

#if HAVE_AVX512

// exp(v) for lanes v <= 0: v = k ln 2 + r with |r| <= ln 2 / 2, exp(r) by Cephes' expf polynomial
// (relative error about 1e-7), times 2^k (scalef, which underflows to 0).
static inline __m512 exp_lanes(__m512 v) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    v = _mm512_max_ps(v, _mm512_set1_ps(-104.0f)); // exp is 0 in fp32 below this anyway
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(v, log2e), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(k, ln2_lo, _mm512_fnmadd_ps(k, ln2_hi, v));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, k);
}

// The lanes of a head's vector that chunk c of 16 covers (a head_dim of 24 has a half chunk).
static inline __mmask16 lanes_of(int head_dim, int c) {
    int left = head_dim - 16 * c;
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

// The kernels take the number of 16-lane chunks of a head (1 to 4, head_dim <= 64) as a
// constant, so that the compiler keeps the query and the accumulators in registers.
static inline __attribute__((always_inline)) __m512 score_lanes(const __m512 *q, const float *key,
                                                                int head_dim, const int chunks) {
    __m512 sum = _mm512_mul_ps(q[0], _mm512_maskz_loadu_ps(lanes_of(head_dim, 0), key));
    for (int c = 1; c < chunks; c++) {
        __m512 k = _mm512_maskz_loadu_ps(lanes_of(head_dim, c), key + 16 * c);
        sum = _mm512_fmadd_ps(q[c], k, sum);
    }
    return sum;
}

static inline __attribute__((always_inline)) float
tile_scores_chunks(float *scores, const float *query, const float *keys, int n, int head_dim,
                   float scale, const int chunks) {
    __m512 q[4];
    for (int c = 0; c < chunks; c++) {
        q[c] = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes_of(head_dim, c), query + 16 * c),
                             _mm512_set1_ps(scale));
    }
    __m128 best = _mm_set1_ps(-INFINITY);
    int t = 0;
    for (; t + 4 <= n; t += 4) { // four keys at a time, reduced together
        const float *key = keys + (size_t)t * head_dim;
        __m128 four = reduce_add_4(score_lanes(q, key, head_dim, chunks),
                                   score_lanes(q, key + head_dim, head_dim, chunks),
                                   score_lanes(q, key + 2 * head_dim, head_dim, chunks),
                                   score_lanes(q, key + 3 * head_dim, head_dim, chunks));
        _mm_storeu_ps(scores + t, four);
        best = _mm_max_ps(best, four);
    }
    for (; t < n; t++) {
        const float *key = keys + (size_t)t * head_dim;
        scores[t] = _mm512_reduce_add_ps(score_lanes(q, key, head_dim, chunks));
        best = _mm_max_ps(best, _mm_set1_ps(scores[t]));
    }
    best = _mm_max_ps(best, _mm_movehl_ps(best, best));
    best = _mm_max_ps(best, _mm_shuffle_ps(best, best, 1));
    return _mm_cvtss_f32(best);
}

static float tile_scores(float *scores, const float *query, const float *keys, int n, int head_dim,
                         float scale) {
    switch ((head_dim + 15) / 16) {
    case 1: return tile_scores_chunks(scores, query, keys, n, head_dim, scale, 1);
    case 2: return tile_scores_chunks(scores, query, keys, n, head_dim, scale, 2);
    case 3: return tile_scores_chunks(scores, query, keys, n, head_dim, scale, 3);
    default: return tile_scores_chunks(scores, query, keys, n, head_dim, scale, 4); // hd <= 64
    }
}

// exp(x - shift) for x - shift <= 0, sixteen at a time; returns their sum.
static float tile_exp(float *x, int n, float shift) {
    __m512 total = _mm512_setzero_ps();
    for (int t = 0; t < n; t += 16) {
        __mmask16 lanes = n - t >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - t)) - 1);
        __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, x + t), _mm512_set1_ps(shift));
        __m512 p = _mm512_maskz_mov_ps(lanes, exp_lanes(v));
        total = _mm512_add_ps(total, p);
        _mm512_mask_storeu_ps(x + t, lanes, p);
    }
    return _mm512_reduce_add_ps(total);
}

// The weighted sum of values for `rows` rows (1 or 2) that read the same tile: acc[r] +=
// weights[r][t] * values[t] for t < n. Two sums per chunk and row, for even and odd keys, so that
// consecutive multiply-adds do not wait for each other. With two rows, each value vector loaded
// serves both, which halves the loads that bound a single row; each row still adds its terms in
// the same order as alone.
static inline __attribute__((always_inline)) void
tile_accumulate_chunks(float *const *acc, const float *const *weights, const float *values, int n,
                       int head_dim, const int rows, const int chunks) {
    __m512 even[2][4], odd[2][4];
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < chunks; c++) {
            even[r][c] = _mm512_maskz_loadu_ps(lanes_of(head_dim, c), acc[r] + 16 * c);
            odd[r][c] = _mm512_setzero_ps();
        }
    }
    int t = 0;
    for (; t + 2 <= n; t += 2) {
        const float *value = values + (size_t)t * head_dim;
        for (int c = 0; c < chunks; c++) {
            __mmask16 lanes = lanes_of(head_dim, c);
            __m512 v0 = _mm512_maskz_loadu_ps(lanes, value + 16 * c);
            __m512 v1 = _mm512_maskz_loadu_ps(lanes, value + head_dim + 16 * c);
            for (int r = 0; r < rows; r++) {
                even[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(weights[r][t]), v0, even[r][c]);
                odd[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(weights[r][t + 1]), v1, odd[r][c]);
            }
        }
    }
    for (; t < n; t++) {
        const float *value = values + (size_t)t * head_dim;
        for (int c = 0; c < chunks; c++) {
            __m512 v = _mm512_maskz_loadu_ps(lanes_of(head_dim, c), value + 16 * c);
            for (int r = 0; r < rows; r++) {
                even[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(weights[r][t]), v, even[r][c]);
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < chunks; c++) {
            _mm512_mask_storeu_ps(acc[r] + 16 * c, lanes_of(head_dim, c),
                                  _mm512_add_ps(even[r][c], odd[r][c]));
        }
    }
}

// (head_dim <= 64 for two rows: the caller takes longer heads elsewhere.)
static void tile_accumulate_rows(float *const *acc, const float *const *weights,
                                 const float *values, int n, int head_dim, int rows) {
    int chunks = (head_dim + 15) / 16;
    if (rows == 2) {
        switch (chunks) {
        case 1: tile_accumulate_chunks(acc, weights, values, n, head_dim, 2, 1); break;
        case 2: tile_accumulate_chunks(acc, weights, values, n, head_dim, 2, 2); break;
        case 3: tile_accumulate_chunks(acc, weights, values, n, head_dim, 2, 3); break;
        default: tile_accumulate_chunks(acc, weights, values, n, head_dim, 2, 4); break;
        }
        return;
    }
    switch (chunks) {
    case 1: tile_accumulate_chunks(acc, weights, values, n, head_dim, 1, 1); break;
    case 2: tile_accumulate_chunks(acc, weights, values, n, head_dim, 1, 2); break;
    case 3: tile_accumulate_chunks(acc, weights, values, n, head_dim, 1, 3); break;
    default: tile_accumulate_chunks(acc, weights, values, n, head_dim, 1, 4); break; // hd <= 64
    }
}

static void tile_accumulate(float *acc, const float *weights, const float *values, int n,
                            int head_dim) {
    tile_accumulate_rows(&acc, &weights, values, n, head_dim, 1);
}

// The rest of online_softmax_step once the tile's scores p (n) and their maximum are known:
// rescale the state to the new maximum, turn p into exp(s - m'), and add the weighted values.
static void online_softmax_rescale(float *acc, float *max, float *sum, float *p, float tile_max,
                                   int n, int head_dim) {
    float new_max = tile_max > *max ? tile_max : *max;
    float rescale = expf(*max - new_max);
    for (int j = 0; j < head_dim; j++) {
        acc[j] *= rescale;
    }
    *sum = *sum * rescale + tile_exp(p, n, new_max);
    *max = new_max;
}

static void online_softmax_update(float *acc, float *max, float *sum, float *p, float tile_max,
                                  const float *values, int n, int head_dim) {
    online_softmax_rescale(acc, max, sum, p, tile_max, n, head_dim);
    tile_accumulate(acc, p, values, n, head_dim);
}

// online_softmax_step with the three kernels above.
static void online_softmax_step_fast(float *acc, float *max, float *sum, const float *query,
                                     const float *keys, const float *values, int n, int head_dim,
                                     float scale) {
    float p[KV_TILE];
    float tile_max = tile_scores(p, query, keys, n, head_dim, scale);
    online_softmax_update(acc, max, sum, p, tile_max, values, n, head_dim);
}

// When many rows read one tile (every head of an MQA decode step, every position of a prompt
// block), the tile's keys are first turned into columns, (hd, KV_TILE): then sixteen scores of a
// row are sixteen lanes of one sum over d of q[d] * column d, with no horizontal sums, and the
// cost of turning is shared by all the rows. Past the tile's n keys the columns hold zeros.
#define COLUMN_ROWS 8 // rows from which the columns pay for themselves

// keys (n, hd) -> columns (hd, KV_TILE), sixteen keys by sixteen dimensions at a time.
static void keys_to_columns(float *columns, const float *keys, int n, int head_dim) {
    for (int t = 0; t < KV_TILE; t += 16) {
        for (int c = 0; c < (head_dim + 15) / 16; c++) {
            __mmask16 lanes = lanes_of(head_dim, c);
            __m512 block[16];
            for (int i = 0; i < 16; i++) {
                block[i] =
                    t + i < n
                        ? _mm512_maskz_loadu_ps(lanes, keys + (size_t)(t + i) * head_dim + 16 * c)
                        : _mm512_setzero_ps();
            }
            transpose_16x16(block);
            for (int j = 0; j < 16 && 16 * c + j < head_dim; j++) {
                _mm512_store_ps(columns + (size_t)(16 * c + j) * KV_TILE + t, block[j]);
            }
        }
    }
}

// The KV_TILE scores of two rows a and b against the columns, times scale: eight running sums
// (two rows, four groups of sixteen keys), enough to keep both multiply-add units busy.
static void column_scores_2(float *scores_a, float *scores_b, const float *query_a,
                            const float *query_b, const float *columns, int head_dim, float scale) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int d = 0; d < head_dim; d++) {
        const float *column = columns + (size_t)d * KV_TILE;
        __m512 k0 = _mm512_load_ps(column), k1 = _mm512_load_ps(column + 16);
        __m512 k2 = _mm512_load_ps(column + 32), k3 = _mm512_load_ps(column + 48);
        __m512 qa = _mm512_set1_ps(query_a[d]), qb = _mm512_set1_ps(query_b[d]);
        a0 = _mm512_fmadd_ps(qa, k0, a0), a1 = _mm512_fmadd_ps(qa, k1, a1);
        a2 = _mm512_fmadd_ps(qa, k2, a2), a3 = _mm512_fmadd_ps(qa, k3, a3);
        b0 = _mm512_fmadd_ps(qb, k0, b0), b1 = _mm512_fmadd_ps(qb, k1, b1);
        b2 = _mm512_fmadd_ps(qb, k2, b2), b3 = _mm512_fmadd_ps(qb, k3, b3);
    }
    __m512 s = _mm512_set1_ps(scale);
    _mm512_storeu_ps(scores_a, _mm512_mul_ps(a0, s));
    _mm512_storeu_ps(scores_a + 16, _mm512_mul_ps(a1, s));
    _mm512_storeu_ps(scores_a + 32, _mm512_mul_ps(a2, s));
    _mm512_storeu_ps(scores_a + 48, _mm512_mul_ps(a3, s));
    _mm512_storeu_ps(scores_b, _mm512_mul_ps(b0, s));
    _mm512_storeu_ps(scores_b + 16, _mm512_mul_ps(b1, s));
    _mm512_storeu_ps(scores_b + 32, _mm512_mul_ps(b2, s));
    _mm512_storeu_ps(scores_b + 48, _mm512_mul_ps(b3, s));
}

// The largest of the first n scores.
static float max_of(const float *scores, int n) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    for (int t = 0; t < n; t += 16) {
        __mmask16 lanes = n - t >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - t)) - 1);
        best = _mm512_mask_max_ps(best, lanes, best, _mm512_loadu_ps(scores + t));
    }
    return _mm512_reduce_max_ps(best);
}

// A row that reads a tile: the state of one query head at one block position, and how many of
// the tile's keys it sees.
typedef struct {
    float *acc, *max, *sum;
    const float *query;
    int visible;
} TileRow;

// Block position i, head h of kv_head's group, as a row that reads the tile (visible <= 0: the
// tile lies past its position, for this head and the group's others alike).
static TileRow tile_row(AttentionState st, const float *q, const KvTile *tile, int kv_head,
                        int start, int i, int h, const Config *c) {
    int hd = c->head_dim, head = kv_head * group_size_of(c) + h;
    size_t q_dim = (size_t)c->n_heads * hd, row = (size_t)i * c->n_heads + head;
    int visible = start + i + 1 - tile->t0;
    visible = visible < tile->n ? visible : tile->n;
    return (TileRow){st.acc + row * hd, st.max + row, st.sum + row,
                     q + i * q_dim + (size_t)head * hd, visible};
}

// online_softmax_tile for many rows: the tile's keys turned into columns once, then the
// rows' scores two at a time. (Kept out of line: its buffers would otherwise sit on the stack of
// every call, of the one-row decode steps of MHA too.)
static __attribute__((noinline)) void
online_softmax_tile_by_columns(AttentionState st, const float *q, const KvTile *tile, int kv_head,
                               int start, int i0, int i1, const Config *c) {
    int hd = c->head_dim, group_size = group_size_of(c);
    float columns[64 * KV_TILE] __attribute__((aligned(64))); // (hd <= 64, KV_TILE)
    float scores[2][KV_TILE];
    TileRow rows[2];
    int n_rows = 0;
    keys_to_columns(columns, tile->keys, tile->n, hd);
    for (int i = i0; i < i1; i++) {
        for (int h = 0; h < group_size; h++) {
            rows[n_rows] = tile_row(st, q, tile, kv_head, start, i, h, c);
            if (rows[n_rows].visible <= 0) {
                break;
            }
            n_rows++;
            bool last = i == i1 - 1 && h == group_size - 1;
            if (n_rows < 2 && !last) {
                continue;
            }
            // an odd last row pairs with itself
            column_scores_2(scores[0], scores[1], rows[0].query, rows[n_rows - 1].query, columns,
                            hd, tile->rule.scale);
            if (n_rows == 1) {
                online_softmax_update(rows[0].acc, rows[0].max, rows[0].sum, scores[0],
                                      max_of(scores[0], rows[0].visible), tile->values,
                                      rows[0].visible, hd);
                n_rows = 0;
                continue;
            }
            // Both rows' values in one pass, over the keys the longer row sees: the other row's
            // weights past its own keys are zeros.
            int n = rows[0].visible > rows[1].visible ? rows[0].visible : rows[1].visible;
            for (int k = 0; k < 2; k++) {
                online_softmax_rescale(rows[k].acc, rows[k].max, rows[k].sum, scores[k],
                                       max_of(scores[k], rows[k].visible), rows[k].visible, hd);
                for (int t = rows[k].visible; t < n; t++) {
                    scores[k][t] = 0.0f;
                }
            }
            float *accs[] = {rows[0].acc, rows[1].acc};
            const float *weights[] = {scores[0], scores[1]};
            tile_accumulate_rows(accs, weights, tile->values, n, hd, 2);
            n_rows = 0;
        }
    }
}

static void online_softmax_tile_fast(AttentionState st, const float *q, const KvTile *tile,
                                     int kv_head, int start, int i0, int i1, const Config *c) {
    int hd = c->head_dim, group_size = group_size_of(c);
    if (hd > 64 || tile->rule.softcap > 0.0f || tile->rule.window > 0) { // Gemma 2's: plainly
        online_softmax_tile(st, q, tile, kv_head, start, i0, i1, c);
        return;
    }
    if ((i1 - i0) * group_size >= COLUMN_ROWS) {
        online_softmax_tile_by_columns(st, q, tile, kv_head, start, i0, i1, c);
        return;
    }
    for (int i = i0; i < i1; i++) {
        for (int h = 0; h < group_size; h++) {
            TileRow r = tile_row(st, q, tile, kv_head, start, i, h, c);
            if (r.visible <= 0) {
                break;
            }
            online_softmax_step_fast(r.acc, r.max, r.sum, r.query, tile->keys, tile->values,
                                     r.visible, hd, tile->rule.scale);
        }
    }
}
#else
#define online_softmax_tile_fast online_softmax_tile
#endif

// Two summaries of disjoint sets of keys combine like two tiles: rescale both to the larger
// maximum and add. (acc, max, sum) += (acc2, max2, sum2).
static void online_softmax_merge(float *acc, float *max, float *sum, const float *acc2, float max2,
                                 float sum2, int head_dim) {
    if (max2 == -INFINITY) { // no keys on that side (all before a sliding window)
        return;
    }
    float new_max = max2 > *max ? max2 : *max;
    float rescale = expf(*max - new_max), rescale2 = expf(max2 - new_max);
    *sum = *sum * rescale + sum2 * rescale2;
    for (int j = 0; j < head_dim; j++) {
        acc[j] = acc[j] * rescale + acc2[j] * rescale2;
    }
    *max = new_max;
}

// How attention splits into units of work for threads. Each unit is one kv head's group for some
// positions of the block against some positions of the cache; the split depends only on the
// shapes, never on the number of threads, and each output is summed by one unit in a fixed
// order (chunks merged in order at the end), so results are the same on 1 thread or 16.
//   A prompt block: by kv head, and by QUERY_ROWS positions of the block, each against the
//   whole cache it sees.
//   A decode step (one position): by kv head, and along the cache in chunks of a fixed length
//   (flash-decoding), each with its own online-softmax state; with MQA's one kv head that is
//   what puts every core to work on a long context.
#define QUERY_ROWS 16
#define KV_CHUNK   256 // positions per decode chunk, a multiple of KV_TILE, until KV_SPLITS chunks

typedef struct {
    int n_rows;   // units along the block's positions
    int n_chunks; // units along the cache
    int chunk;    // positions per chunk
    int n_keys;   // positions the block's last position sees
} AttentionSplit;

static AttentionSplit attention_split(int start, int n_positions) {
    AttentionSplit split = {.n_rows = (n_positions + QUERY_ROWS - 1) / QUERY_ROWS,
                            .n_chunks = 1,
                            .n_keys = start + n_positions};
    split.chunk = split.n_keys;
    if (n_positions == 1) {
        split.chunk = KV_CHUNK;
        while ((split.n_keys + split.chunk - 1) / split.chunk > KV_SPLITS) {
            split.chunk *= 2;
        }
        split.n_chunks = (split.n_keys + split.chunk - 1) / split.chunk;
    }
    return split;
}

// A layer's attention for a block, as the threads share it.
typedef struct {
    RunState *s;
    int layer, start, n_positions, units;
    AttentionSplit split;
    const Config *c;
} AttentionWork;

// Unit u: kv head u % KVH, then a group of query rows, then a cache chunk. Chunk 0 accumulates in
// the block's own state, chunk k > 0 (decode only) in the k-th split state. Later rows of a
// block see more keys, so the row groups are taken in the order 0, last, 1, last - 1, ...: a
// run of consecutive units, which is what OpenMP's static schedule gives each thread, then holds
// early and late rows alike, and the threads finish together.
static void attention_unit(const AttentionWork *a, int u) {
    const Config *c = a->c;
    RunState *s = a->s;
    const AttentionSplit *split = &a->split;
    int kv_head = u % c->n_kv_heads, turn = u / c->n_kv_heads % split->n_rows;
    int row_group = turn % 2 == 0 ? turn / 2 : split->n_rows - 1 - turn / 2;
    int chunk = u / c->n_kv_heads / split->n_rows;
    size_t q_dim = (size_t)c->n_heads * c->head_dim;
    AttentionState st = {s->attn_out, s->run_max, s->run_sum};
    if (chunk > 0) {
        KernelScratch *k = s->scratch;
        st = (AttentionState){k->split_acc + (chunk - 1) * q_dim,
                              k->split_max + (chunk - 1) * c->n_heads,
                              k->split_sum + (chunk - 1) * c->n_heads};
    }
    int i0 = row_group * QUERY_ROWS;
    int i1 = i0 + QUERY_ROWS < a->n_positions ? i0 + QUERY_ROWS : a->n_positions;
    int first = chunk * split->chunk;
    int end = first + split->chunk < a->start + i1 ? first + split->chunk : a->start + i1;
    float *tile = s->scratch->tiles + (size_t)thread_index() * 2 * KV_TILE * c->head_dim;
    attend_tiles(st, s->q, &s->kv, a->layer, kv_head, a->start, i0, i1, first, end, c, tile,
                 online_softmax_tile_fast);
}

static void attention_units(void *context) {
    const AttentionWork *a = context;
#pragma omp for schedule(static)
    for (int u = 0; u < a->units; u++) {
        attention_unit(a, u);
    }
}

// Sets every state the block's units will update to "no keys yet".
static void reset_attention_state(RunState *s, int n_positions, int n_chunks, const Config *c) {
    size_t q_dim = (size_t)c->n_heads * c->head_dim, heads = (size_t)n_positions * c->n_heads;
    KernelScratch *k = s->scratch;
    memset(s->attn_out, 0, n_positions * q_dim * sizeof(float));
    memset(k->split_acc, 0, (n_chunks - 1) * q_dim * sizeof(float));
    for (size_t i = 0; i < heads; i++) {
        s->run_max[i] = -INFINITY, s->run_sum[i] = 0.0f;
    }
    for (size_t i = 0; i < (size_t)(n_chunks - 1) * c->n_heads; i++) {
        k->split_max[i] = -INFINITY, k->split_sum[i] = 0.0f;
    }
}

// attention (Part 1) on all threads: the block's units, then, for a decode step, chunks 1, 2, ...
// folded into chunk 0 in that order, and each head's output acc / l.
static void attention_fast(RunState *s, int layer, int start, int n_positions, const Config *c) {
    AttentionWork a = {s, layer, start, n_positions, 0, attention_split(start, n_positions), c};
    int hd = c->head_dim;
    a.units = c->n_kv_heads * a.split.n_rows * a.split.n_chunks;
    reset_attention_state(s, n_positions, a.split.n_chunks, c);
    // Each query reads up to start + n_positions keys and as many values.
    size_t work = (size_t)n_positions * c->n_heads * a.split.n_keys * hd * 2;
    on_threads(a.units > 1 ? work : 0, attention_units, &a);
    const KernelScratch *k = s->scratch;
    for (int chunk = 1; chunk < a.split.n_chunks; chunk++) {
        for (int head = 0; head < c->n_heads; head++) {
            size_t row = (size_t)(chunk - 1) * c->n_heads + head;
            online_softmax_merge(s->attn_out + (size_t)head * hd, s->run_max + head,
                                 s->run_sum + head, k->split_acc + row * hd, k->split_max[row],
                                 k->split_sum[row], hd);
        }
    }
    for (int row = 0; row < n_positions * c->n_heads; row++) {
        for (int j = 0; j < hd; j++) {
            s->attn_out[(size_t)row * hd + j] /= s->run_sum[row];
        }
    }
}

// rotate_and_cache (Part 1): positions are independent, so they share the threads (a value
// costs about four multiply-adds here).
typedef struct {
    RunState *s;
    const Config *c;
    int layer, start, n_positions;
} BlockPositions;

static void rotate_and_cache_positions(void *context) {
    const BlockPositions *b = context;
#pragma omp for schedule(static)
    for (int i = 0; i < b->n_positions; i++) {
        rotate_and_cache_position(b->s, b->c, b->layer, b->start, i);
    }
}

static void rotate_and_cache_fast(RunState *s, const Config *c, int layer, int start,
                                  int n_positions) {
    BlockPositions b = {s, c, layer, start, n_positions};
    size_t values = (size_t)c->n_heads * c->head_dim + 2 * kv_dim_of(c);
    on_threads((size_t)n_positions * values * 4, rotate_and_cache_positions, &b);
}
// ----------------------------------------------------------------------------
// The feed-forward's gate
//
// swiglu_fast stands for swiglu (Part 1): hb[i] = silu(hb[i]) * hb2[i] over a block's (B, F)
// values, on all threads, sixteen lanes at a time with the attention kernels' exp.
// silu(x) = x / (1 + e^-x) is taken as x / (1 + e) for x >= 0 and x e / (1 + e) for x < 0, with
// e = exp(-|x|) <= 1, so that exp is only asked for what it computes well and never overflows.

#if HAVE_AVX512
static void swiglu_span(float *hb, const float *hb2, size_t first, size_t last) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = first; i < last; i += 16) {
        __mmask16 lanes = last - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (last - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(lanes, hb + i);
        __m512 e = exp_lanes(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
        __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
        __m512 numerator = _mm512_mask_mul_ps(x, negative, x, e); // x, or x e where x < 0
        __m512 gate = _mm512_div_ps(numerator, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(hb + i, lanes,
                              _mm512_mul_ps(gate, _mm512_maskz_loadu_ps(lanes, hb2 + i)));
    }
}
#else
static void swiglu_span(float *hb, const float *hb2, size_t first, size_t last) {
    swiglu(hb + first, hb2 + first, last - first);
}
#endif

typedef struct {
    float *hb;
    const float *hb2;
    size_t count;
} Gate;

static void swiglu_share(void *context) {
    const Gate *g = context;
    size_t first, last;
    thread_share(g->count, &first, &last);
    swiglu_span(g->hb, g->hb2, first, last);
}

// (A silu costs about as much as eight multiply-adds.)
static void swiglu_fast(float *hb, const float *hb2, size_t count) {
    Gate g = {hb, hb2, count};
    on_threads(count * 8, swiglu_share, &g);
}

// ----------------------------------------------------------------------------
// The fast kernel table: what the default build's forward pass calls (Part 1, section 5)

static const Kernels fast_kernels = {matmul_fast, matmul_shared_fast, swiglu_fast,
                                     rotate_and_cache_fast, attention_fast};

// The model's largest fp32 matrix (f32), or largest other one (!f32), the probe of
// choose_matvec and choose_prefetch; NULL if it has none.
static const Matrix *largest_matrix(const Transformer *t, bool f32) {
    const Weights *w = &t->weights;
    const Matrix *candidates[] = {&w->classifier, &w->token_embedding,
                                  &w->w1,         &w->w2,
                                  &w->w3,         &w->wq,
                                  &w->wo},
                 *best = NULL;
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        Matrix m = layer_matrix(candidates[i], 0);
        bool usable = m.rows > 0 && (m.f32 != NULL) == f32 && (m.q8 == NULL || m.group % 32 == 0);
        if (usable && (best == NULL || m.rows * m.cols > best->rows * best->cols)) {
            best = candidates[i];
        }
    }
    return best;
}

static const Matrix *largest_f32_matrix(const Transformer *t) {
    return largest_matrix(t, true);
}

// Sends a probe matrix's bytes out of the caches, so that a pass over it reads memory as decoding
// a model does (a small model's matrices would otherwise be timed in cache, where four rows at a
// time and prefetch win on hosts where, from memory, they lose).
static void evict(const void *data, size_t bytes) {
#if HAVE_AVX512
    for (size_t i = 0; i < bytes; i += 64) {
        _mm_clflush((const char *)data + i);
    }
    _mm_mfence();
#else
    (void)data, (void)bytes;
#endif
}

// The rows of a probe: its first 8 MiB, enough to read at memory's pace once out of the caches,
// and little to flush and read six times at load.
static size_t probe_rows(size_t rows, size_t row_bytes) {
    size_t most = ((size_t)8 << 20) / (row_bytes > 0 ? row_bytes : 1);
    return rows < most ? rows : most > 0 ? most : 1;
}

// The bytes of a probe matrix that is not fp32, and how many.
static const void *matrix_bytes(const Matrix *m) {
    return m->q8 != NULL     ? (const void *)m->q8
           : m->f16 != NULL  ? (const void *)m->f16
           : m->q8_0 != NULL ? (const void *)m->q8_0
                             : (const void *)m->blocks;
}

static size_t matrix_size(const Matrix *m) {
    size_t n = m->rows * m->cols;
    return m->q8 != NULL     ? n
           : m->f16 != NULL  ? 2 * n
           : m->q8_0 != NULL ? n / Q8_0_BLOCK * Q8_0_BYTES
                             : m->rows * block_row_bytes(m->block_type, m->cols);
}

// Without software prefetch, unless asking for the weights PREFETCH_BYTES ahead read the model's
// largest int8, F16, Q8_0 or block matrix at least 5% faster here, from memory (the best of three
// passes each, alternating, one thread): hosts differ (it gained 30% on an Intel Xeon and lost 25%
// on an AMD EPYC), and the choice changes only the speed.
static void choose_prefetch(Transformer *t) {
    KernelScratch *k = t->state.scratch;
    k->prefetch = false, k->prefetch_gain = 1.0;
    const Matrix *stack = largest_matrix(t, false);
    if (stack == NULL) {
        return;
    }
    Matrix m = layer_matrix(stack, 0);
    m.rows = probe_rows(m.rows, matrix_size(&m) / m.rows);
    float *x = checked_calloc(m.cols + m.rows, sizeof(float), "the kernel probe");
    if (x == NULL) {
        return;
    }
    const Matrix *probe = &m;
    prepare_vector_input(x, &probe, 1, &t->state);
    double best[2] = {INFINITY, INFINITY};
    for (int round = 0; round < 6; round++) {
        k->prefetch = round % 2 == 1;
        evict(matrix_bytes(&m), matrix_size(&m));
        double start = seconds_now();
        vector_rows(x + m.cols, x, &m, 0, m.rows, &t->state);
        double seconds = seconds_now() - start;
        best[round % 2] = seconds < best[round % 2] ? seconds : best[round % 2];
    }
    free(x);
    k->prefetch_gain = best[0] / best[1];
    k->prefetch = k->prefetch_gain >= 1.05;
}

// One row at a time, unless four at a time read the model's largest fp32 matrix at least 5%
// faster here, from memory (the best of three passes each, alternating, one thread): the two give
// the same bits, so the choice changes only the speed. Three passes over the probe rows each.
static void choose_matvec(Transformer *t) {
    KernelScratch *k = t->state.scratch;
    k->matvec = matvec_f32_rows1, k->matvec_gain = 1.0;
    const Matrix *stack = largest_f32_matrix(t);
    if (stack == NULL || !HAVE_AVX512) { // without AVX-512 the two are one function
        return;
    }
    Matrix m = layer_matrix(stack, 0);
    m.rows = probe_rows(m.rows, m.cols * sizeof(float));
    float *x = checked_calloc(m.cols + m.rows, sizeof(float), "the kernel probe");
    if (x == NULL) {
        return;
    }
    MatvecFunction *kernels[2] = {matvec_f32_rows1, matvec_f32_rows4};
    double best[2] = {INFINITY, INFINITY};
    for (int round = 0; round < 6; round++) {
        evict(m.f32, m.rows * m.cols * sizeof(float));
        double start = seconds_now();
        kernels[round % 2](x + m.cols, x, m.f32, m.cols, m.rows);
        double seconds = seconds_now() - start;
        best[round % 2] = seconds < best[round % 2] ? seconds : best[round % 2];
    }
    free(x);
    k->matvec_gain = best[0] / best[1];
    k->matvec = k->matvec_gain >= 1.05 ? matvec_f32_rows4 : matvec_f32_rows1;
}

#if HAVE_AVX512
// Per type of eight_rows_types: a record's bytes (one block of eight rows) and what writes a
// row's part of a K-quant's records (interleave_k); Q4_0's are made by interleave_q4_0.
static const struct {
    size_t record_bytes;
    InterleaveBlock *block;
} eight_rows_layouts[EIGHT_ROWS_TYPES] = {{EIGHT_ROWS_RECORD, NULL},
                                          {EIGHT_K4_RECORD, interleave_q4_k_block},
                                          {EIGHT_K5_RECORD, interleave_q5_k_block},
                                          {EIGHT_K6_RECORD, interleave_q6_k_block}};

// The slot in eight_rows_types (and k->copy_bytes) of m's type, or -1 where its rows are not
// read eight at a time.
static int eight_rows_slot(const Matrix *m) {
    for (int i = 0; m->blocks != NULL && i < EIGHT_ROWS_TYPES; i++) {
        if (m->block_type->ggml_type == eight_rows_types[i]) {
            return i;
        }
    }
    return -1;
}

// What m's records take: one per block of its whole groups of eight rows, if its type has them;
// otherwise 0.
static size_t eight_rows_bytes(const Matrix *m) {
    int slot = eight_rows_slot(m);
    if (slot < 0 || m->rows < 8) {
        return 0;
    }
    return m->rows / 8 * (m->cols / m->block_type->values) * eight_rows_layouts[slot].record_bytes;
}

// m's records (interleave_q4_0, interleave_k), made and filed in k->eight_rows unless m has them
// already; nothing for other types or fewer than eight rows. Returns 0, or -1 after a report.
static int copy_eight_rows(KernelScratch *k, const Matrix *m) {
    size_t bytes = eight_rows_bytes(m);
    if (bytes == 0 || hmgeti(k->eight_rows, eight_rows_key(m->blocks)) >= 0) {
        return 0;
    }
    int slot = eight_rows_slot(m);
    unsigned char *records = checked_aligned_calloc(1, bytes, "rows eight at a time");
    if (records == NULL) {
        return -1;
    }
    if (eight_rows_layouts[slot].block == NULL) {
        interleave_q4_0(records, m->blocks, m->rows, m->cols);
    } else {
        interleave_k(records, m->blocks, m->rows, m->cols, (size_t)m->block_type->bytes,
                     eight_rows_layouts[slot].record_bytes, eight_rows_layouts[slot].block);
    }
    hmput(k->eight_rows, eight_rows_key(m->blocks), records);
    k->copy_bytes[slot] += bytes;
    return 0;
}
#endif

// Records for every Q4_0, Q4_K, Q5_K and Q6_K matrix of the one-position products, each once, if
// together they fit in `room` bytes; otherwise none (k->copies_left_out says what they would take),
// and decode reads the file's rows. A classifier tied to the token embedding is copied once, and
// the lookup of a token's row still reads the file. Returns 0, or -1 after a report.
static int interleave_weights(Transformer *t, size_t room) {
#if !HAVE_AVX512
    (void)t, (void)room; // the kernels that read the copies are AVX-512's
#else
    const Weights *w = &t->weights;
    const Matrix *stacks[] = {&w->wq, &w->wk, &w->wv, &w->wo,
                              &w->w1, &w->w2, &w->w3, &w->classifier};
    for (int make = 0; make < 2; make++) { // first what they take, then the copies
        size_t bytes = 0;
        for (size_t i = 0; i < sizeof stacks / sizeof stacks[0]; i++) {
            int layers = stacks[i] == &w->classifier ? 1 : t->config.n_layers;
            for (int layer = 0; layer < layers; layer++) {
                Matrix m = layer_matrix(stacks[i], layer);
                bytes += make ? 0 : eight_rows_bytes(&m);
                if (make && copy_eight_rows(t->state.scratch, &m) != 0) {
                    return -1;
                }
            }
        }
        if (!make && bytes > room) {
            t->state.scratch->copies_left_out = bytes;
            return 0;
        }
    }
#endif
    return 0;
}

static void free_eight_rows(KernelScratch *k) {
    for (ptrdiff_t i = 0; i < hmlen(k->eight_rows); i++) {
        aligned_free(k->eight_rows[i].value);
    }
    hmfree(k->eight_rows);
    memset(k->copy_bytes, 0, sizeof k->copy_bytes);
    k->copies_left_out = 0;
}
#endif // RUN_PLAIN

// ----------------------------------------------------------------------------
// Run state bookkeeping: the buffers of section 2 and the KV cache's pages

// The buffers of the run state with their sizes in elements: one table serves building,
// freeing and the memory estimate.
typedef struct {
    void **buffer;
    size_t count, size;
    const char *what;
} Allocation;

// The pages a layer owns: all of them, or for a sliding window of W positions a ring that
// holds the W - 1 positions before a block and the block's BLOCK (P positions may straddle one
// more page).
static int kv_layer_pages(const Config *c, int layer, int page_positions, int max_pages) {
    int window = layer_window(c, layer);
    int ring = (window + BLOCK - 2) / page_positions + 2;
    return window > 0 && ring < max_pages ? ring : max_pages;
}

static int build_kv_cache(KvCache *kv, const Config *c, KvFormat format) {
    *kv = (KvCache){.format = format,
                    .n_layers = c->n_layers,
                    .n_kv_heads = c->n_kv_heads,
                    .head_dim = c->head_dim,
                    .row_bytes = kv_row_bytes(format, c->head_dim),
                    .page_positions = c->seq_len < KV_PAGE ? c->seq_len : KV_PAGE,
                    .max_pages = (c->seq_len + KV_PAGE - 1) / KV_PAGE};
    kv->pages = checked_calloc((size_t)c->n_layers * 2 * kv->max_pages, sizeof(unsigned char *),
                               "the KV cache's page table");
    kv->layer_pages = checked_calloc(c->n_layers, sizeof(int), "the KV cache's page table");
    if (kv->pages == NULL || kv->layer_pages == NULL) {
        return -1;
    }
    for (int layer = 0; layer < c->n_layers; layer++) {
        kv->layer_pages[layer] = kv_layer_pages(c, layer, kv->page_positions, kv->max_pages);
    }
    return 0;
}

static void free_kv_cache(KvCache *kv) {
    for (int layer = 0; kv->pages != NULL && kv->layer_pages != NULL && layer < kv->n_layers;
         layer++) {
        for (size_t i = 0; i < (size_t)2 * kv->max_pages; i++) {
            if ((int)(i % kv->max_pages) < kv->layer_pages[layer]) { // a ring's others alias
                aligned_free(kv->pages[(size_t)layer * 2 * kv->max_pages + i]);
            }
        }
    }
    free(kv->pages);
    free(kv->layer_pages);
    memset(kv, 0, sizeof *kv);
}

// The pages that n_pages per layer take in memory: a ring's pages count once.
static size_t kv_pages_held(const KvCache *kv, int n_pages) {
    size_t held = 0;
    for (int layer = 0; layer < kv->n_layers; layer++) {
        held += 2 * (size_t)(n_pages < kv->layer_pages[layer] ? n_pages : kv->layer_pages[layer]);
    }
    return held;
}

// Allocates the pages positions 0..n-1 need (n <= S) that are not there yet; a ring's later pages
// are its first ones again. Returns 0, or -1 after a report; pages allocated before a failure
// stay, and free_kv_cache frees them.
static int kv_reserve(KvCache *kv, int n) {
    int pages = (n + kv->page_positions - 1) / kv->page_positions;
    for (; kv->n_pages < pages; kv->n_pages++) {
        for (int layer = 0; layer < kv->n_layers; layer++) {
            int ring = kv->layer_pages[layer];
            for (int which = KV_KEYS; which <= KV_VALUES; which++) {
                unsigned char **table = &kv->pages[((size_t)layer * 2 + which) * kv->max_pages];
                if (kv->n_pages >= ring) {
                    table[kv->n_pages] = table[kv->n_pages % ring];
                    continue;
                }
                if (table[kv->n_pages] == NULL) {
                    table[kv->n_pages] =
                        checked_aligned_calloc(1, kv_page_bytes(kv), "a page of the KV cache");
                }
                if (table[kv->n_pages] == NULL) {
                    return -1;
                }
            }
        }
    }
    return 0;
}

#define N_ALLOCATIONS (16 + N_SCRATCH)

// The table of the run state's buffers, and of the kernels' buffers in k.
static void run_state_allocations(RunState *s, KernelScratch *k, const Config *c, int n_threads,
                                  Allocation table[N_ALLOCATIONS]) {
    size_t B = BLOCK, D = c->dim, F = c->hidden_dim, H = c->n_heads, hd = c->head_dim;
    size_t q_dim = H * hd, kv_dim = kv_dim_of(c), widest = D > F ? D : F;
    widest = widest > q_dim ? widest : q_dim; // the longest row of any matrix
    Allocation all[N_ALLOCATIONS] = {
        {(void **)&s->x, B * D, sizeof(float), "activations"},
        {(void **)&s->xb, B * D, sizeof(float), "activations"},
        {(void **)&s->q, B * q_dim, sizeof(float), "queries"},
        {(void **)&s->k, B * kv_dim, sizeof(float), "keys"},
        {(void **)&s->v, B * kv_dim, sizeof(float), "values"},
        {(void **)&s->attn_out, B * q_dim, sizeof(float), "attention output"},
        {(void **)&s->hb, B * F, sizeof(float), "feed-forward activations"},
        {(void **)&s->hb2, B * F, sizeof(float), "feed-forward activations"},
        {(void **)&s->rope_cos, B * hd / 2, sizeof(float), "RoPE table"},
        {(void **)&s->rope_sin, B * hd / 2, sizeof(float), "RoPE table"},
        {(void **)&s->logits, B * c->vocab_size, sizeof(float), "logits"},
        {(void **)&s->run_max, B * H, sizeof(float), "attention state"},
        {(void **)&s->run_sum, B * H, sizeof(float), "attention state"},
        {(void **)&s->kv_tile, 2 * KV_TILE * hd, sizeof(float), "KV tiles"},
        {(void **)&s->x_q8, B * widest, sizeof(int8_t), "quantized activations"},
        {(void **)&s->x_scales, B * widest, sizeof(float), "quantized activations"},
#ifndef RUN_PLAIN
        {(void **)&k->tiles, (size_t)n_threads * 2 * KV_TILE * hd, sizeof(float), "KV tiles"},
        {(void **)&k->panels, (size_t)n_threads * ROW_TILE * widest, sizeof(float), "weight rows"},
        {(void **)&k->x_columns, widest * BLOCK, sizeof(float), "block inputs"},
        {(void **)&k->split_acc, KV_SPLITS * q_dim, sizeof(float), "attention state"},
        {(void **)&k->split_max, KV_SPLITS * H, sizeof(float), "attention state"},
        {(void **)&k->split_sum, KV_SPLITS * H, sizeof(float), "attention state"},
        {(void **)&k->x_k, widest, sizeof(int8_t), "quantized activations"},
        {(void **)&k->x_k_scales, widest / 256 + 1, sizeof(float), "quantized activations"},
        {(void **)&k->x_k_sums, widest / 32 + 1, sizeof(int16_t), "quantized activations"},
        {(void **)&k->x_k6, widest, sizeof(int8_t), "quantized activations"},
        {(void **)&k->x_k6_sums, widest / 16 + 1, sizeof(int16_t), "quantized activations"},
        {(void **)&k->x_32, (widest / 128 + 1) * 128, sizeof(int8_t), "quantized activations"},
        {(void **)&k->x_32_lanes, (widest / 128 + 1) * 32, sizeof(float), "quantized activations"},
        {(void **)&k->x_32_sums, (widest / 128 + 1) * 16, sizeof(int32_t), "quantized activations"},
        {(void **)&k->x_eight, widest / 32 * 256, sizeof(int8_t), "quantized activations"},
        {(void **)&k->x_eight_sums, widest / 32, sizeof(int32_t), "quantized activations"},
        {(void **)&k->x_eight_offsets, widest / 32 * 16, sizeof(int32_t), "quantized activations"},
#endif
    };
    (void)k, (void)n_threads;
    memcpy(table, all, sizeof all);
}

static size_t run_state_bytes(const Config *c, int n_threads) {
    RunState unused;
    KernelScratch unused_scratch;
    Allocation table[N_ALLOCATIONS];
    run_state_allocations(&unused, &unused_scratch, c, n_threads, table);
    size_t bytes = 0;
    for (int i = 0; i < N_ALLOCATIONS; i++) {
        bytes += table[i].count * table[i].size;
    }
    return bytes;
}

// What the fast kernels' copies of weights take (Q4_0, Q4_K, Q5_K and Q6_K rows eight at a time).
static size_t weight_copy_bytes(const RunState *s) {
#ifdef RUN_PLAIN
    (void)s;
    return 0;
#else
    size_t bytes = 0;
    for (int i = 0; s->scratch != NULL && i < EIGHT_ROWS_TYPES; i++) {
        bytes += s->scratch->copy_bytes[i];
    }
    return bytes;
#endif
}

// The threads the run state was built for.
static int run_state_threads(const RunState *s) {
    return s->scratch != NULL ? s->scratch->n_threads : 1;
}

static void free_run_state(RunState *s) {
    Config none = {0};
    KernelScratch none_scratch = {0};
    Allocation table[N_ALLOCATIONS];
    run_state_allocations(s, s->scratch != NULL ? s->scratch : &none_scratch, &none, 0, table);
    for (int i = 0; i < N_ALLOCATIONS; i++) {
        aligned_free(*table[i].buffer);
    }
#ifndef RUN_PLAIN
    if (s->scratch != NULL) {
        free_eight_rows(s->scratch);
    }
#endif
    free(s->scratch);
    free_kv_cache(&s->kv);
    memset(s, 0, sizeof *s);
}

// Whether `needed` bytes fit in this machine's memory; 0, or -1 after a report naming `what`.
static int check_memory(size_t needed, const char *what) {
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page_size > 0 && needed > (size_t)pages * (size_t)page_size) {
        return report_error("%s need %.1f GB, this machine has %.1f GB", what, needed / 1e9,
                            (double)pages * page_size / 1e9);
    }
    return 0;
}

// The activations and an empty KV cache; no page yet (see reserve_positions). The kernel
// table is filled here, once: Part 1's functions in the plain build, Part 2's fast kernels in
// the default one.
static int build_run_state(RunState *s, const Config *c, KvFormat format) {
    memset(s, 0, sizeof *s);
#ifdef RUN_PLAIN
    s->kernels = &plain_kernels;
#else
    s->kernels = &fast_kernels;
    (void)plain_kernels; // the tests run it beside the fast one
#endif
    s->scratch = checked_calloc(1, sizeof *s->scratch, "the kernels' buffers");
    if (s->scratch == NULL) {
        return -1;
    }
    s->scratch->n_threads = thread_count();
#ifndef RUN_PLAIN
    s->scratch->matvec = matvec_f32_rows1; // until choose_matvec has measured the host
#endif
    Allocation table[N_ALLOCATIONS];
    run_state_allocations(s, s->scratch, c, s->scratch->n_threads, table);
    for (int i = 0; i < N_ALLOCATIONS; i++) {
        *table[i].buffer = checked_aligned_calloc(table[i].count, table[i].size, table[i].what);
        if (*table[i].buffer == NULL) {
            free_run_state(s);
            return -1;
        }
    }
    if (build_kv_cache(&s->kv, c, format)) {
        free_run_state(s);
        return -1;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// Checkpoint files
//
//
// The project's format (all little-endian; model/FORMAT.md documents it byte by byte):
//   a 256-byte header: magic "GQAM", version, the config, flags, BOS/EOS ids, and the offsets and
//   sizes of the two sections that follow; the tokenizer, laid out as llama2.c's tokenizer.bin;
//   zero padding to a multiple of 64 bytes; the weights in layout_weights' order, fp32 or int8.
// llama2.c's legacy format: seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
//   vocab_size, seq_len; a negative vocab_size means a separate classifier), then the weights.
// Every field is validated before anything is allocated, and the file size must be exactly what
// the header implies, so a truncated download is caught before it is read.

typedef struct GgufModel GgufModel; // "GGUF files": a GGUF file's tensor tables and vocabulary

// A checkpoint file, mapped into memory read-only: the weights point straight into it.
struct Checkpoint {
    Config config;
    Weights weights;
    bool legacy;                          // llama2.c's format rather than the project's
    const unsigned char *tokenizer_bytes; // the embedded tokenizer.bin, or NULL
    size_t tokenizer_size;
    void *mapping; // the whole file, mapped read-only
    size_t mapping_size;
    GgufModel *gguf; // a GGUF file's per-layer tables, norms and vocabulary, else NULL
    bool vocab_only; // a GGUF vocabulary with no tensors: no weights, no run state
};

#define GQAM_MAGIC                  "GQAM"
#define GQAM_VERSION                1
#define GQAM_HEADER_BYTES           256
#define GQAM_RESERVED_START         96 // header bytes 96..255 are zero
#define GQAM_ALIGNMENT              64
#define GQAM_FLAG_SHARED_CLASSIFIER 1u
#define GQAM_FLAG_INT8_WEIGHTS      2u // then header bytes 60..63 hold quant_group
#define LEGACY_HEADER_BYTES         28

// Bounds that any sane checkpoint respects; they keep every size product far from overflow.
#define MAX_DIM        (1 << 16)
#define MAX_HIDDEN_DIM (1 << 18)
#define MAX_LAYERS     1024
#define MAX_HEADS      1024
#define MAX_HEAD_DIM   4096
#define MAX_VOCAB      (1 << 21)
#define MAX_SEQ_LEN    (1 << 20)
// Files read whole: a tokenizer.bin of the largest vocabulary is far smaller than this.
#define MAX_TOKENIZER_BYTES ((size_t)256 << 20)
#define MAX_EVAL_BYTES      ((size_t)1 << 30)

static uint32_t read_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t read_u64(const unsigned char *p) {
    return (uint64_t)read_u32(p) | (uint64_t)read_u32(p + 4) << 32;
}

static float read_f32(const unsigned char *p) {
    uint32_t bits = read_u32(p);
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static int check_range(const char *path, const char *field, long long value, long long low,
                       long long high) {
    if (value < low || value > high) {
        return report_error("%s: %s is %lld, expected %lld..%lld", path, field, value, low, high);
    }
    return 0;
}

// The header fields as read, wide enough that a negative int32 or a huge uint32 survives intact
// for the error message.
typedef struct {
    long long dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, vocab_size, seq_len;
    long long bos_id, eos_id, quant_group;
    float rope_theta, norm_eps;
    bool shared_classifier;
    bool head_dim_free; // GGUF: head_dim is the file's key_length, not necessarily dim / n_heads
} RawConfig;

// A validated header as the Config of a Llama-style model; GGUF files of other architectures
// then change what differs.
static Config config_of(const RawConfig *r) {
    return (Config){
        .dim = (int)r->dim,
        .hidden_dim = (int)r->hidden_dim,
        .n_layers = (int)r->n_layers,
        .n_heads = (int)r->n_heads,
        .n_kv_heads = (int)r->n_kv_heads,
        .head_dim = (int)r->head_dim,
        .vocab_size = (int)r->vocab_size,
        .seq_len = (int)r->seq_len,
        .rope_theta = r->rope_theta,
        .norm_eps = r->norm_eps,
        .shared_classifier = r->shared_classifier,
        .bos_id = (int)r->bos_id,
        .eos_id = (int)r->eos_id,
        .quant_group = (int)r->quant_group,
        .rope_scale = 1.0f,
        .architecture = "llama",
        .norm = NORM_RMS,
        .rope = ROPE_ADJACENT,
        .feed_forward = FFN_SWIGLU,
        .embedding_scale = 1.0f,
        .query_scale = 1.0f / sqrtf((float)r->head_dim),
    };
}

static int validate_config(const RawConfig *r, const char *path, Config *c) {
    if (check_range(path, "dim", r->dim, 1, MAX_DIM) ||
        check_range(path, "hidden_dim", r->hidden_dim, 1, MAX_HIDDEN_DIM) ||
        check_range(path, "n_layers", r->n_layers, 1, MAX_LAYERS) ||
        check_range(path, "n_heads", r->n_heads, 1, MAX_HEADS) ||
        check_range(path, "n_kv_heads", r->n_kv_heads, 1, MAX_HEADS) ||
        check_range(path, "head_dim", r->head_dim, 2, MAX_HEAD_DIM) ||
        check_range(path, "vocab_size", r->vocab_size, 3, MAX_VOCAB) ||
        check_range(path, "seq_len", r->seq_len, 1, MAX_SEQ_LEN)) {
        return -1;
    }
    if (r->n_heads % r->n_kv_heads != 0) {
        return report_error("%s: n_kv_heads is %lld, which does not divide n_heads %lld", path,
                            r->n_kv_heads, r->n_heads);
    }
    if (r->head_dim % 2 != 0) {
        return report_error("%s: head_dim is %lld, expected an even number (RoPE rotates pairs)",
                            path, r->head_dim);
    }
    if (!r->head_dim_free && r->n_heads * r->head_dim != r->dim) {
        return report_error("%s: head_dim is %lld, but dim %lld / n_heads %lld needs %lld", path,
                            r->head_dim, r->dim, r->n_heads, r->dim / r->n_heads);
    }
    if (!(isfinite(r->rope_theta) && r->rope_theta > 1.0f)) {
        return report_error("%s: rope_theta is %g, expected a finite number above 1", path,
                            r->rope_theta);
    }
    if (!(isfinite(r->norm_eps) && r->norm_eps > 0.0f && r->norm_eps < 1.0f)) {
        return report_error("%s: norm_eps is %g, expected a number in (0, 1)", path, r->norm_eps);
    }
    if (check_range(path, "bos_id", r->bos_id, 0, r->vocab_size - 1) ||
        check_range(path, "eos_id", r->eos_id, 0, r->vocab_size - 1) ||
        check_range(path, "quant_group", r->quant_group, 0, MAX_DIM)) {
        return -1;
    }
    if (r->quant_group > 0 && (r->dim % r->quant_group || r->hidden_dim % r->quant_group)) {
        return report_error("%s: quant_group is %lld; it must divide both dim %lld and "
                            "hidden_dim %lld",
                            path, r->quant_group, r->dim, r->hidden_dim);
    }
    *c = config_of(r);
    return 0;
}

// Reserves bytes at *offset (rounded up to a multiple of alignment first) and returns where
// they are in base, or NULL when base is NULL (when only the size is wanted).
static const void *place(const unsigned char *base, size_t *offset, size_t bytes,
                         size_t alignment) {
    *offset = (*offset + alignment - 1) / alignment * alignment;
    const void *where = base != NULL ? base + *offset : NULL;
    *offset += bytes;
    return where;
}

// fp32 tensors follow each other with no gaps (as in llama2.c's files); in an int8 checkpoint
// every part starts on a 64-byte boundary.
static const float *place_vector(const unsigned char *base, size_t *offset, size_t count,
                                 int group) {
    return place(base, offset, count * sizeof(float), group > 0 ? 64 : 1);
}

static Matrix place_matrix(const unsigned char *base, size_t *offset, size_t layers, size_t rows,
                           size_t cols, int group) {
    Matrix m = {.rows = rows, .cols = cols, .group = group};
    size_t values = layers * rows * cols;
    if (group == 0) {
        m.f32 = place(base, offset, values * sizeof(float), 1);
    } else {
        m.q8 = place(base, offset, values, 64);
        m.scales = place(base, offset, values / group * sizeof(float), 64);
    }
    return m;
}

// The one table of tensor shapes, in file order. Returns the bytes the weights occupy; when base
// is not NULL it also points each tensor of w into base. llama2.c's legacy files carry two
// precomputed RoPE tables (S * hd / 2 floats each) before the classifier; we skip them and
// compute RoPE ourselves.
static size_t layout_weights(const Config *c, bool legacy_rope_tables, const unsigned char *base,
                             Weights *w) {
    size_t D = c->dim, F = c->hidden_dim, L = c->n_layers, V = c->vocab_size;
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = kv_dim_of(c);
    int g = c->quant_group;
    size_t offset = 0;
    w->token_embedding = place_matrix(base, &offset, 1, V, D, g);
    w->rms_att = place_vector(base, &offset, L * D, g);
    w->wq = place_matrix(base, &offset, L, q_dim, D, g);
    w->wk = place_matrix(base, &offset, L, kv_dim, D, g);
    w->wv = place_matrix(base, &offset, L, kv_dim, D, g);
    w->wo = place_matrix(base, &offset, L, D, q_dim, g);
    w->rms_ffn = place_vector(base, &offset, L * D, g);
    w->w1 = place_matrix(base, &offset, L, F, D, g);
    w->w2 = place_matrix(base, &offset, L, D, F, g);
    w->w3 = place_matrix(base, &offset, L, F, D, g);
    w->rms_final = place_vector(base, &offset, D, g);
    if (legacy_rope_tables) {
        place_vector(base, &offset, (size_t)c->seq_len * c->head_dim, g);
    }
    w->classifier =
        c->shared_classifier ? w->token_embedding : place_matrix(base, &offset, 1, V, D, g);
    return offset;
}

// Parameters the model computes with (the legacy RoPE tables are not parameters).
static size_t parameter_count(const Config *c) {
    Config fp32 = *c;
    fp32.quant_group = 0;
    Weights unused;
    return layout_weights(&fp32, false, NULL, &unused) / sizeof(float);
}

static int check_file_size(const char *path, size_t actual, size_t expected) {
    if (actual < expected) {
        return report_error("%s: file is %zu bytes, the header needs %zu (truncated?)", path,
                            actual, expected);
    }
    if (actual > expected) {
        return report_error("%s: file is %zu bytes, the header accounts for only %zu", path, actual,
                            expected);
    }
    return 0;
}

// Checks the header fields that say how to read the rest: the size, version, flags, quant_group
// and reserved bytes. Returns the flags and quant_group.
static int gqam_check_header(const unsigned char *data, size_t size, const char *path,
                             uint32_t *flags, uint32_t *quant_group) {
    if (size < GQAM_HEADER_BYTES) {
        return report_error("%s: file is %zu bytes, shorter than the %d-byte header", path, size,
                            GQAM_HEADER_BYTES);
    }
    uint32_t version = read_u32(data + 4);
    if (version != GQAM_VERSION) {
        return report_error("%s: format version is %u, this program reads version %d", path,
                            version, GQAM_VERSION);
    }
    *flags = read_u32(data + 48);
    uint32_t known = GQAM_FLAG_SHARED_CLASSIFIER | GQAM_FLAG_INT8_WEIGHTS;
    if (*flags & ~known) {
        return report_error("%s: flags are 0x%x, this program knows only 0x%x", path, *flags,
                            known);
    }
    *quant_group = read_u32(data + 60);
    if (!(*flags & GQAM_FLAG_INT8_WEIGHTS) && *quant_group != 0) {
        return report_error("%s: quant_group is %u in an fp32 checkpoint, expected 0", path,
                            *quant_group);
    }
    if ((*flags & GQAM_FLAG_INT8_WEIGHTS) && *quant_group == 0) {
        return report_error("%s: quant_group is 0 in an int8 checkpoint", path);
    }
    for (size_t i = GQAM_RESERVED_START; i < GQAM_HEADER_BYTES; i++) {
        if (data[i] != 0) {
            return report_error("%s: header byte %zu is 0x%02x; bytes %d..%d are reserved and must "
                                "be 0",
                                path, i, data[i], GQAM_RESERVED_START, GQAM_HEADER_BYTES - 1);
        }
    }
    return 0;
}

// The model's hyperparameters as the header states them, before any range check.
static RawConfig gqam_raw_config(const unsigned char *data, uint32_t flags, uint32_t quant_group) {
    RawConfig raw = {
        .dim = read_u32(data + 8),
        .hidden_dim = read_u32(data + 12),
        .n_layers = read_u32(data + 16),
        .n_heads = read_u32(data + 20),
        .n_kv_heads = read_u32(data + 24),
        .head_dim = read_u32(data + 28),
        .vocab_size = read_u32(data + 32),
        .seq_len = read_u32(data + 36),
        .rope_theta = read_f32(data + 40),
        .norm_eps = read_f32(data + 44),
        .shared_classifier = flags & GQAM_FLAG_SHARED_CLASSIFIER,
        .bos_id = read_u32(data + 52),
        .eos_id = read_u32(data + 56),
        .quant_group = quant_group,
    };
    return raw;
}

// Checks where the header puts the tokenizer and the weights: the tokenizer right after the
// header, the weights (needed bytes) at the next alignment boundary, and nothing after them.
// Returns the tokenizer's size and the weights' offset.
static int gqam_check_sections(const unsigned char *data, size_t size, const char *path,
                               size_t needed, uint64_t *tokenizer_size, uint64_t *weights_offset) {
    uint64_t tokenizer_offset = read_u64(data + 64);
    *tokenizer_size = read_u64(data + 72);
    *weights_offset = read_u64(data + 80);
    uint64_t weights_bytes = read_u64(data + 88);
    if (tokenizer_offset != GQAM_HEADER_BYTES) {
        return report_error("%s: tokenizer_offset is %llu, expected %d", path,
                            (unsigned long long)tokenizer_offset, GQAM_HEADER_BYTES);
    }
    if (*tokenizer_size > size - GQAM_HEADER_BYTES) {
        return report_error("%s: tokenizer_bytes is %llu, past the end of the %zu-byte file", path,
                            (unsigned long long)*tokenizer_size, size);
    }
    uint64_t aligned =
        (tokenizer_offset + *tokenizer_size + GQAM_ALIGNMENT - 1) / GQAM_ALIGNMENT * GQAM_ALIGNMENT;
    if (*weights_offset != aligned) {
        return report_error("%s: weights_offset is %llu, expected %llu", path,
                            (unsigned long long)*weights_offset, (unsigned long long)aligned);
    }
    if (weights_bytes != needed) {
        return report_error("%s: weights_bytes is %llu, the config needs %zu", path,
                            (unsigned long long)weights_bytes, needed);
    }
    if (check_file_size(path, size, *weights_offset + weights_bytes)) {
        return -1;
    }
    return 0;
}

static int parse_gqam(const unsigned char *data, size_t size, const char *path, Checkpoint *ckpt) {
    uint32_t flags = 0, quant_group = 0;
    if (gqam_check_header(data, size, path, &flags, &quant_group)) {
        return -1;
    }
    RawConfig raw = gqam_raw_config(data, flags, quant_group);
    if (validate_config(&raw, path, &ckpt->config)) {
        return -1;
    }
    size_t needed = layout_weights(&ckpt->config, false, NULL, &ckpt->weights);
    uint64_t tokenizer_size = 0, weights_offset = 0;
    if (gqam_check_sections(data, size, path, needed, &tokenizer_size, &weights_offset)) {
        return -1;
    }
    ckpt->legacy = false;
    // The tokenizer starts where gqam_check_sections found it: right after the header.
    ckpt->tokenizer_bytes = tokenizer_size > 0 ? data + GQAM_HEADER_BYTES : NULL;
    ckpt->tokenizer_size = tokenizer_size;
    layout_weights(&ckpt->config, false, data + weights_offset, &ckpt->weights);
    return 0;
}

static int parse_legacy(const unsigned char *data, size_t size, const char *path,
                        Checkpoint *ckpt) {
    if (size < LEGACY_HEADER_BYTES) {
        return report_error("%s: file is %zu bytes, too short for any checkpoint header", path,
                            size);
    }
    int32_t field[7];
    for (int i = 0; i < 7; i++) {
        field[i] = (int32_t)read_u32(data + 4 * i);
    }
    // Without the magic, the file is taken for a llama2.c checkpoint; a first field that is no
    // plausible dim means it is neither.
    if (field[0] <= 0 || field[0] > MAX_DIM) {
        return report_error("%s: not a checkpoint: no \"" GQAM_MAGIC "\" magic, and as a llama2.c "
                            "header its dim would be %d",
                            path, field[0]);
    }
    if (check_range(path, "n_heads", field[3], 1, MAX_HEADS)) {
        return -1;
    }
    if (field[0] % field[3] != 0) {
        return report_error("%s: dim %d is not a multiple of n_heads %d", path, field[0], field[3]);
    }
    RawConfig raw = {
        .dim = field[0],
        .hidden_dim = field[1],
        .n_layers = field[2],
        .n_heads = field[3],
        .n_kv_heads = field[4],
        .head_dim = field[0] / field[3],
        .vocab_size = llabs((long long)field[5]),
        .seq_len = field[6],
        .rope_theta = 10000.0f,
        .norm_eps = 1e-5f,
        .shared_classifier = field[5] > 0,
        .bos_id = 1,
        .eos_id = 2,
    };
    if (validate_config(&raw, path, &ckpt->config)) {
        return -1;
    }
    size_t needed = layout_weights(&ckpt->config, true, NULL, &ckpt->weights);
    if (check_file_size(path, size, LEGACY_HEADER_BYTES + needed)) {
        return -1;
    }
    ckpt->legacy = true;
    ckpt->tokenizer_bytes = NULL;
    ckpt->tokenizer_size = 0;
    layout_weights(&ckpt->config, true, data + LEGACY_HEADER_BYTES, &ckpt->weights);
    return 0;
}

// ----------------------------------------------------------------------------
// GGUF files
//
// GGUF is ggml's model file (ggml's docs/gguf.md). All little-endian:
//   header       char[4] "GGUF", u32 version, u64 tensor_count, u64 kv_count
//   kv pairs     string key, u32 value type, value (an array: u32 element type, u64 count,
//                the elements); a string is a u64 byte count and the bytes, no terminator
//   tensor infos string name, u32 n_dims, u64 ne[n_dims] (ne[0] the row length), u32 ggml
//                type, u64 offset from the start of the data section
//   padding      to a multiple of general.alignment (32 when the key is absent)
//   data section each tensor at its offset, a multiple of the alignment
// We read the llama architecture with F32, F16 or Q8_0 tensors (Q8_0: blocks of 32 values along
// a row, each an fp16 scale d then 32 int8 q; the value is d * q), and its sentencepiece-style
// vocabulary (tokenizer.ggml.model "llama"), which we turn into the bytes of a llama2.c
// tokenizer.bin for build_tokenizer. llama.cpp's converters keep Q and K in the order of the
// rotated pairs that this program's RoPE uses, so no tensor is permuted.
//
// Every count, length, shape, type and offset is checked against the file's size before
// anything is allocated; only then are the per-layer table and the tokenizer bytes allocated.

#define GGUF_MAGIC             "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ALIGNMENT     (1 << 20)
#define GGUF_MAX_KEY_LENGTH    65535 // the spec's bound on a key
#define GGUF_MAX_NAME_LENGTH   64    // the spec's bound on a tensor name
#define GGUF_MAX_DIMS          4

// Metadata value types.
enum {
    GGUF_UINT8,
    GGUF_INT8,
    GGUF_UINT16,
    GGUF_INT16,
    GGUF_UINT32,
    GGUF_INT32,
    GGUF_FLOAT32,
    GGUF_BOOL,
    GGUF_STRING,
    GGUF_ARRAY,
    GGUF_UINT64,
    GGUF_INT64,
    GGUF_FLOAT64,
    GGUF_N_VALUE_TYPES
};

static const char *const GGUF_VALUE_TYPE_NAMES[GGUF_N_VALUE_TYPES] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};

// The same with their article, for "key 'x' is an i32, expected a string".
static const char *const GGUF_VALUE_TYPE_PHRASES[GGUF_N_VALUE_TYPES] = {
    "a u8",   "an i8",    "a u16",    "an i16", "a u32",  "an i32", "an f32",
    "a bool", "a string", "an array", "a u64",  "an i64", "an f64"};

// Bytes of one scalar value; 0 for strings and arrays, whose size is in the file.
static const size_t GGUF_VALUE_SIZES[GGUF_N_VALUE_TYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

// The ggml tensor types we read.
#define GGML_TYPE_F32  0
#define GGML_TYPE_F16  1
#define GGML_TYPE_Q8_0 8

// ggml's type ids, for naming a type we refuse; NULL where ggml has none.
static const char *ggml_type_name(uint32_t type) {
    static const char *const names[] = {
        "F32",   "F16",        "Q4_0",       "Q4_1",       "Q4_2",     "Q4_3",     "Q5_0",
        "Q5_1",  "Q8_0",       "Q8_1",       "Q2_K",       "Q3_K",     "Q4_K",     "Q5_K",
        "Q6_K",  "Q8_K",       "IQ2_XXS",    "IQ2_XS",     "IQ3_XXS",  "IQ1_S",    "IQ4_NL",
        "IQ3_S", "IQ2_S",      "IQ4_XS",     "I8",         "I16",      "I32",      "I64",
        "F64",   "IQ1_M",      "BF16",       "Q4_0_4_4",   "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",
        "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};
    return type < sizeof names / sizeof names[0] ? names[type] : NULL;
}

// One tensor: where its bytes are in the mapped file, its type, and its shape.
typedef struct {
    const unsigned char *data; // NULL: absent (an optional tensor, or output.weight when tied)
    uint32_t type;             // GGML_TYPE_F32, GGML_TYPE_F16 or GGML_TYPE_Q8_0
    size_t rows, cols;         // row-major: cols = ne[0], rows = ne[1] (1 for a vector)
    size_t bytes;
} GgufTensor;

// The tensors of a file, as llama.cpp's converter names them: the model's own ("token_embd.weight")
// and each layer's ("blk.N.attn_q.weight"). Which of them an architecture has is in its row of
// ARCHITECTURES below.
enum {
    G_TOKEN_EMBD,       // (V, D)
    G_OUTPUT_NORM,      // (D)
    G_OUTPUT,           // (V, D), the classifier; absent when tied to token_embd
    G_POSITION_EMBD,    // (S, D) GPT-2
    G_OUTPUT_NORM_BIAS, // (D) GPT-2
    G_ROPE_FREQS,       // (hd / 2) Llama 3's divisors of each pair's angle
    N_GLOBAL_SLOTS
};

enum {
    L_ATTN_NORM,        // (D)
    L_ATTN_NORM_BIAS,   // (D) GPT-2
    L_ATTN_Q,           // (H * hd, D)
    L_ATTN_Q_BIAS,      // (H * hd) Qwen2
    L_ATTN_K,           // (kv_dim, D)
    L_ATTN_K_BIAS,      // (kv_dim)
    L_ATTN_V,           // (kv_dim, D)
    L_ATTN_V_BIAS,      // (kv_dim)
    L_ATTN_QKV,         // (H * hd + 2 kv_dim, D) GPT-2: q, k and v in one, one after the other
    L_ATTN_QKV_BIAS,    // (H * hd + 2 kv_dim)
    L_ATTN_OUTPUT,      // (D, H * hd)
    L_ATTN_OUTPUT_BIAS, // (D) GPT-2
    L_POST_ATTN_NORM,   // (D) Gemma 2
    L_FFN_NORM,         // (D)
    L_FFN_NORM_BIAS,    // (D) GPT-2
    L_FFN_GATE,         // (F, D), run.c's w1
    L_FFN_UP,           // (F, D), w3
    L_FFN_UP_BIAS,      // (F) GPT-2
    L_FFN_DOWN,         // (D, F), w2
    L_FFN_DOWN_BIAS,    // (D) GPT-2
    L_POST_FFW_NORM,    // (D) Gemma 2
    N_LAYER_SLOTS
};

static const char *const GGUF_GLOBAL_TENSORS[N_GLOBAL_SLOTS] = {
    "token_embd.weight",    "output_norm.weight", "output.weight",
    "position_embd.weight", "output_norm.bias",   "rope_freqs.weight"};

static const char *const GGUF_LAYER_TENSORS[N_LAYER_SLOTS] = {"attn_norm.weight",
                                                              "attn_norm.bias",
                                                              "attn_q.weight",
                                                              "attn_q.bias",
                                                              "attn_k.weight",
                                                              "attn_k.bias",
                                                              "attn_v.weight",
                                                              "attn_v.bias",
                                                              "attn_qkv.weight",
                                                              "attn_qkv.bias",
                                                              "attn_output.weight",
                                                              "attn_output.bias",
                                                              "post_attention_norm.weight",
                                                              "ffn_norm.weight",
                                                              "ffn_norm.bias",
                                                              "ffn_gate.weight",
                                                              "ffn_up.weight",
                                                              "ffn_up.bias",
                                                              "ffn_down.weight",
                                                              "ffn_down.bias",
                                                              "post_ffw_norm.weight"};

typedef struct {
    GgufTensor tensors[N_LAYER_SLOTS]; // in the order of the L_ slots
} GgufLayer;

// What each architecture computes (Part 1's choices) and which tensors it has: one letter per
// slot, r required, o optional, . not part of it.
typedef struct {
    const char *name;
    NormKind norm;
    RopeKind rope;
    FeedForwardKind feed_forward;
    bool scale_embedding; // by sqrt(D)
    bool soft_caps;       // Gemma 2's: attention scores and logits, and the sliding window
    const char *global;   // N_GLOBAL_SLOTS letters
    const char *layer;    // N_LAYER_SLOTS letters
} Architecture;

static const Architecture ARCHITECTURES[] = {
    //                                                   token_embd..rope_freqs
    //                                                           attn_norm, q, k, v, qkv, output,
    //                                                           post, ffn_norm, gate, up, down,
    //                                                           post
    {"llama", NORM_RMS, ROPE_ADJACENT, FFN_SWIGLU, false, false, "rro..o",
     "r."
     "ro"
     "ro"
     "ro"
     ".."
     "ro"
     "."
     "r."
     "r"
     "r."
     "r."
     "."},
    {"qwen2", NORM_RMS, ROPE_HALVES, FFN_SWIGLU, false, false, "rro...",
     "r."
     "rr"
     "rr"
     "rr"
     ".."
     "r."
     "."
     "r."
     "r"
     "r."
     "r."
     "."},
    {"gemma", NORM_RMS, ROPE_HALVES, FFN_GEGLU, true, false, "rr....",
     "r."
     "r."
     "r."
     "r."
     ".."
     "r."
     "."
     "r."
     "r"
     "r."
     "r."
     "."},
    {"gemma2", NORM_RMS, ROPE_HALVES, FFN_GEGLU, true, true, "rr....",
     "r."
     "r."
     "r."
     "r."
     ".."
     "r."
     "r"
     "r."
     "r"
     "r."
     "r."
     "r"},
    {"gpt2", NORM_LAYER, ROPE_NONE, FFN_GELU, false, false, "rrorr.",
     "rr"
     ".."
     ".."
     ".."
     "rr"
     "rr"
     "."
     "rr"
     "."
     "rr"
     "rr"
     "."},
};

// A byte-level BPE vocabulary (tokenizer.ggml.model "gpt2") as the file holds it, its arrays
// checked against the file's size: pointers into the mapping, read when the tokenizer is built.
typedef struct {
    const unsigned char *tokens; // (V) GGUF strings, in GPT-2's byte-to-unicode alphabet
    const unsigned char *types;  // (V) i32 token types, or NULL
    const unsigned char *merges; // (n_merges) GGUF strings "left right", the first merging first
    uint64_t n_merges;
    const char *pre; // tokenizer.ggml.pre, pre_length bytes; NULL when absent
    size_t pre_length;
} GgufByteVocabulary;

struct GgufModel {
    Config config;   // quant_group 0; shared_classifier when output.weight is absent
    bool vocab_only; // no tensors: a vocabulary file, for --encode and --info
    bool byte_level; // the vocabulary is byte-level BPE: in bpe, not in tokenizer
    GgufByteVocabulary bpe;
    const unsigned char *token_types;       // (V) i32 tokenizer.ggml.token_type, or NULL
    int add_bos, add_eos, add_space_prefix; // the tokenizer.ggml keys: 0 or 1, -1 when absent
    const Architecture *architecture;
    GgufTensor global[N_GLOBAL_SLOTS]; // in the order of the G_ slots
    GgufLayer *layers;                 // (L), allocated
    unsigned char *tokenizer; // llama2.c tokenizer.bin bytes, allocated; NULL without vocabulary
    size_t tokenizer_size;
    uint32_t version, alignment;
    size_t tensor_bytes;   // all tensors together
    size_t parameters;     // their values
    size_t type_bytes[64]; // bytes of tensors of each ggml type (ggml_type_name's ids)
    Matrix *tables;        // (7, L) each layer's wq, wk, wv, wo, w1, w2, w3, allocated
    float *vectors;        // each layer's norm weights and biases, gathered (L, n) each
};

static void free_gguf(GgufModel *m) {
    free(m->layers);
    free(m->tokenizer);
    free(m->tables);
    free(m->vectors);
    memset(m, 0, sizeof *m);
}

// ---- Reading the file front to back, every read checked against its end

typedef struct {
    const unsigned char *data;
    size_t size, pos;
    const char *path;
} GgufCursor;

// Points *out at the next n bytes, or says that what was to be read runs past the end.
static int gguf_take(GgufCursor *c, size_t n, const char *what, const unsigned char **out) {
    if (n > c->size - c->pos) {
        return report_error("%s: %s at byte %zu needs %zu bytes, past the end of the %zu-byte "
                            "file (truncated?)",
                            c->path, what, c->pos, n, c->size);
    }
    *out = c->data + c->pos;
    c->pos += n;
    return 0;
}

static int gguf_u32(GgufCursor *c, const char *what, uint32_t *value) {
    const unsigned char *p = NULL;
    if (gguf_take(c, 4, what, &p)) {
        return -1;
    }
    *value = read_u32(p);
    return 0;
}

static int gguf_u64(GgufCursor *c, const char *what, uint64_t *value) {
    const unsigned char *p = NULL;
    if (gguf_take(c, 8, what, &p)) {
        return -1;
    }
    *value = read_u64(p);
    return 0;
}

// A string: u64 length, then the bytes (not NUL-terminated: use the length).
static int gguf_string(GgufCursor *c, const char *what, const char **text, size_t *length) {
    uint64_t n;
    if (gguf_u64(c, what, &n)) {
        return -1;
    }
    if (n > c->size - c->pos) {
        return report_error("%s: %s at byte %zu claims %llu bytes, past the end of the %zu-byte "
                            "file",
                            c->path, what, c->pos - 8, (unsigned long long)n, c->size);
    }
    *text = (const char *)c->data + c->pos;
    *length = (size_t)n;
    c->pos += (size_t)n;
    return 0;
}

// A file's text made safe for a message: at most capacity - 1 bytes, anything outside printable
// ASCII shown as '?', so that a damaged name never sends control bytes to the terminal.
static const char *gguf_printable(char *out, size_t capacity, const char *text, size_t length) {
    size_t n = length < capacity - 1 ? length : capacity - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)text[i];
        out[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    out[n] = '\0';
    return out;
}

static bool gguf_string_is(const char *text, size_t length, const char *expected) {
    return length == strlen(expected) && memcmp(text, expected, length) == 0;
}

// ---- Metadata

// The keys we read. A value is located while walking the pairs and interpreted afterwards.
enum {
    KEY_ARCHITECTURE,
    KEY_ALIGNMENT,
    KEY_TOKENIZER_MODEL,
    KEY_TOKENS,
    KEY_SCORES,
    KEY_TOKEN_TYPE,
    KEY_BOS_ID,
    KEY_EOS_ID,
    KEY_MERGES,
    KEY_PRE,
    KEY_ADD_BOS,
    KEY_ADD_EOS,
    KEY_ADD_SPACE_PREFIX,
    KEY_CONTEXT_LENGTH, // the architecture's keys follow: "llama.context_length" and so on
    FIRST_ARCHITECTURE_KEY = KEY_CONTEXT_LENGTH,
    KEY_EMBEDDING_LENGTH,
    KEY_BLOCK_COUNT,
    KEY_FEED_FORWARD_LENGTH,
    KEY_HEAD_COUNT,
    KEY_HEAD_COUNT_KV,
    KEY_RMS_EPSILON,
    KEY_LAYER_NORM_EPSILON,
    KEY_KEY_LENGTH,
    KEY_VALUE_LENGTH,
    KEY_ROPE_FREQ_BASE,
    KEY_ROPE_DIMENSION_COUNT,
    KEY_ROPE_SCALING_TYPE,
    KEY_ROPE_SCALING_FACTOR,
    KEY_ROPE_SCALE_LINEAR,
    KEY_ROPE_ATTN_FACTOR,
    KEY_ATTN_SOFTCAP,
    KEY_FINAL_SOFTCAP,
    KEY_SLIDING_WINDOW,
    KEY_EXPERT_COUNT,
    N_GGUF_KEYS
};

static const char *const GGUF_KEY_NAMES[N_GGUF_KEYS] = {
    "general.architecture",
    "general.alignment",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
    // after the architecture's name and a dot:
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.layer_norm_rms_epsilon",
    "attention.layer_norm_epsilon",
    "attention.key_length",
    "attention.value_length",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scale_linear",
    "rope.scaling.attn_factor",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "attention.sliding_window",
    "expert_count",
};

typedef struct {
    bool present;
    uint32_t type;              // value type
    const unsigned char *value; // the value (a string's u64 length; an array's first element)
    uint32_t element_type;      // arrays
    uint64_t count;             // arrays: elements
} GgufValue;

// Walks a scalar of a fixed-size type; a bool must be 0 or 1.
static int gguf_skip_scalar(GgufCursor *c, uint32_t type, const char *key) {
    const unsigned char *p = NULL;
    if (gguf_take(c, GGUF_VALUE_SIZES[type], key, &p)) {
        return -1;
    }
    if (type == GGUF_BOOL && *p > 1) {
        return report_error("%s: key '%s' is a bool of value %u, expected 0 or 1", c->path, key,
                            *p);
    }
    return 0;
}

// Walks the v->count elements of an array whose header has been read: fixed-size elements of
// least bytes each in one step (bools checked to be 0 or 1), strings one at a time.
static int gguf_skip_elements(GgufCursor *c, const char *key, const GgufValue *v, size_t least) {
    if (v->element_type != GGUF_STRING) {
        c->pos += (size_t)v->count * least;
        if (v->element_type == GGUF_BOOL) {
            for (uint64_t i = 0; i < v->count; i++) {
                if (v->value[i] > 1) {
                    return report_error("%s: key '%s' element %llu is a bool of value %u", c->path,
                                        key, (unsigned long long)i, v->value[i]);
                }
            }
        }
        return 0;
    }
    for (uint64_t i = 0; i < v->count; i++) {
        const char *text = NULL;
        size_t length = 0;
        if (gguf_string(c, key, &text, &length)) {
            return -1;
        }
    }
    return 0;
}

// Walks an array: its element type and count, checked against the bytes left in the file, then
// its elements.
static int gguf_skip_array(GgufCursor *c, const char *key, GgufValue *v) {
    uint32_t element_type;
    uint64_t count;
    if (gguf_u32(c, key, &element_type) || gguf_u64(c, key, &count)) {
        return -1;
    }
    if (element_type >= GGUF_N_VALUE_TYPES || element_type == GGUF_ARRAY) {
        return report_error("%s: key '%s' is an array of value type %u, expected a scalar or "
                            "string type",
                            c->path, key, element_type);
    }
    // The smallest an element can be: a string is at least its 8-byte length.
    size_t least = element_type == GGUF_STRING ? 8 : GGUF_VALUE_SIZES[element_type];
    size_t left = c->size - c->pos;
    if (count > left / least) {
        return report_error("%s: key '%s' claims %llu %s elements, more than the %zu bytes left "
                            "in the file hold",
                            c->path, key, (unsigned long long)count,
                            GGUF_VALUE_TYPE_NAMES[element_type], left);
    }
    v->element_type = element_type;
    v->count = count;
    v->value = c->data + c->pos;
    return gguf_skip_elements(c, key, v, least);
}

// Walks one value of the given type, checking every length against the end of the file.
// Arrays of arrays are refused (llama models have none).
static int gguf_skip_value(GgufCursor *c, uint32_t type, const char *key, GgufValue *v) {
    v->type = type;
    v->value = c->data + c->pos;
    if (type >= GGUF_N_VALUE_TYPES) {
        return report_error("%s: key '%s' has value type %u, expected 0..%d", c->path, key, type,
                            GGUF_N_VALUE_TYPES - 1);
    }
    if (type == GGUF_STRING) {
        const char *text = NULL;
        size_t length = 0;
        return gguf_string(c, key, &text, &length);
    }
    if (type != GGUF_ARRAY) {
        return gguf_skip_scalar(c, type, key);
    }
    return gguf_skip_array(c, key, v);
}

// An integer of any integer type, wide enough for every u32 and i64 (a u64 above LLONG_MAX
// reads as LLONG_MAX, which every range check refuses).
static int gguf_integer(const GgufValue *v, const char *path, const char *key, long long *out) {
    const unsigned char *p = v->value;
    switch (v->type) {
    case GGUF_UINT8: *out = p[0]; return 0;
    case GGUF_INT8: *out = (int8_t)p[0]; return 0;
    case GGUF_UINT16: *out = (uint16_t)(p[0] | p[1] << 8); return 0;
    case GGUF_INT16: *out = (int16_t)(p[0] | p[1] << 8); return 0;
    case GGUF_UINT32: *out = read_u32(p); return 0;
    case GGUF_INT32: *out = (int32_t)read_u32(p); return 0;
    case GGUF_UINT64: {
        uint64_t u = read_u64(p);
        if (u > (uint64_t)LLONG_MAX) {
            return report_error("%s: key '%s' is %llu, larger than any size this program reads",
                                path, key, (unsigned long long)u);
        }
        *out = (long long)u;
        return 0;
    }
    case GGUF_INT64: *out = (long long)read_u64(p); return 0;
    default:
        return report_error("%s: key '%s' is %s, expected an integer", path, key,
                            GGUF_VALUE_TYPE_PHRASES[v->type]);
    }
}

static int gguf_float(const GgufValue *v, const char *path, const char *key, float *out) {
    if (v->type == GGUF_FLOAT32) {
        *out = read_f32(v->value);
        return 0;
    }
    if (v->type == GGUF_FLOAT64) {
        uint64_t bits = read_u64(v->value);
        double d;
        memcpy(&d, &bits, sizeof d);
        *out = (float)d;
        return 0;
    }
    return report_error("%s: key '%s' is %s, expected an f32", path, key,
                        GGUF_VALUE_TYPE_PHRASES[v->type]);
}

// A string value's text (its length prefix already checked by the walk).
static void gguf_string_value(const GgufValue *v, const char **text, size_t *length) {
    *length = (size_t)read_u64(v->value);
    *text = (const char *)v->value + 8;
}

// The architecture's name as the file spells it ("llama" until general.architecture is read).
static void gguf_architecture_name(const GgufValue *keys, const char **name, size_t *length) {
    *name = "llama", *length = 5;
    if (keys[KEY_ARCHITECTURE].present && keys[KEY_ARCHITECTURE].type == GGUF_STRING) {
        gguf_string_value(&keys[KEY_ARCHITECTURE], name, length);
    }
}

// A key's full name, for messages: "gemma.context_length" for an architecture's key.
static const char *gguf_key_name(const GgufValue *keys, int key, char *out, size_t capacity) {
    if (key < FIRST_ARCHITECTURE_KEY) {
        return GGUF_KEY_NAMES[key];
    }
    const char *arch;
    size_t length;
    char shown[41];
    gguf_architecture_name(keys, &arch, &length);
    snprintf(out, capacity, "%s.%s", gguf_printable(shown, sizeof shown, arch, length),
             GGUF_KEY_NAMES[key]);
    return out;
}

// Whether key (length bytes) is key number k; an architecture's key carries its name first.
static bool gguf_key_is(const char *key, size_t length, int k, const GgufValue *keys) {
    if (k < FIRST_ARCHITECTURE_KEY) {
        return gguf_string_is(key, length, GGUF_KEY_NAMES[k]);
    }
    const char *arch;
    size_t arch_length;
    gguf_architecture_name(keys, &arch, &arch_length);
    return length > arch_length + 1 && memcmp(key, arch, arch_length) == 0 &&
           key[arch_length] == '.' &&
           gguf_string_is(key + arch_length + 1, length - arch_length - 1, GGUF_KEY_NAMES[k]);
}

// Walks the kv pairs, noting where keys first..last-1 are; refuses one given twice.
static int gguf_walk_metadata(GgufCursor *c, uint64_t kv_count, GgufValue *keys, int first,
                              int last) {
    for (uint64_t i = 0; i < kv_count; i++) {
        const char *key = NULL;
        size_t length = 0;
        uint32_t type;
        if (gguf_string(c, "a key", &key, &length)) {
            return -1;
        }
        if (length == 0 || length > GGUF_MAX_KEY_LENGTH) {
            return report_error("%s: key %llu has length %zu, expected 1..%d", c->path,
                                (unsigned long long)i, length, GGUF_MAX_KEY_LENGTH);
        }
        // A copy with a terminator, for messages (long keys are cut).
        char name[128];
        gguf_printable(name, sizeof name, key, length);
        if (gguf_u32(c, name, &type)) {
            return -1;
        }
        int known = -1;
        for (int k = first; k < last; k++) {
            known = gguf_key_is(key, length, k, keys) ? k : known;
        }
        GgufValue value = {0};
        if (gguf_skip_value(c, type, name, &value)) {
            return -1;
        }
        if (known >= 0) {
            if (keys[known].present) {
                return report_error("%s: key '%s' appears twice", c->path, name);
            }
            keys[known] = value;
            keys[known].present = true;
        }
    }
    return 0;
}

// The kv pairs, walked twice: the general and tokenizer keys, then, once the architecture's
// name is known, its own keys.
static int gguf_read_metadata(GgufCursor *c, uint64_t kv_count, GgufValue *keys) {
    memset(keys, 0, N_GGUF_KEYS * sizeof *keys);
    size_t start = c->pos;
    if (gguf_walk_metadata(c, kv_count, keys, 0, FIRST_ARCHITECTURE_KEY)) {
        return -1;
    }
    c->pos = start; // checked already: this walk cannot fail
    return gguf_walk_metadata(c, kv_count, keys, FIRST_ARCHITECTURE_KEY, N_GGUF_KEYS);
}

// Reads a required (or, with fallback >= 0, optional) integer key into *out, within low..high.
static int gguf_config_integer(const GgufValue *keys, int key, const char *path, long long fallback,
                               long long low, long long high, long long *out) {
    char buffer[96];
    const char *name = gguf_key_name(keys, key, buffer, sizeof buffer);
    if (!keys[key].present) {
        if (fallback < 0) {
            const char *arch;
            size_t length;
            char shown[41];
            gguf_architecture_name(keys, &arch, &length);
            return report_error("%s: key '%s' is missing; a %s model needs it", path, name,
                                gguf_printable(shown, sizeof shown, arch, length));
        }
        *out = fallback;
        return 0;
    }
    return gguf_integer(&keys[key], path, name, out) || check_range(path, name, *out, low, high);
}

// Reads an optional float key into *out (left as it is when absent).
static int gguf_config_float(const GgufValue *keys, int key, const char *path, float *out) {
    char name[96];
    return keys[key].present &&
           gguf_float(&keys[key], path, gguf_key_name(keys, key, name, sizeof name), out);
}

// ---- Tensors

// Parses "token_embd.weight", "blk.N.attn_q.weight" and the like into a slot (a G_ slot for the
// model's own tensors, layer -1; N_GLOBAL_SLOTS + an L_ slot for a layer's) and a layer; returns
// false for any other name.
static bool gguf_slot(const char *name, size_t length, int n_layers, int *slot, int *layer) {
    *layer = -1;
    for (int i = 0; i < N_GLOBAL_SLOTS; i++) {
        if (gguf_string_is(name, length, GGUF_GLOBAL_TENSORS[i])) {
            *slot = i;
            return true;
        }
    }
    if (length < 5 || memcmp(name, "blk.", 4) != 0 || !isdigit((unsigned char)name[4])) {
        return false;
    }
    size_t i = 4;
    long long n = 0;
    while (i < length && isdigit((unsigned char)name[i]) && n <= MAX_LAYERS) {
        n = n * 10 + (name[i++] - '0');
    }
    if (i >= length || name[i] != '.' || n >= n_layers || (name[4] == '0' && i > 5)) {
        return false;
    }
    i++;
    for (int kind = 0; kind < N_LAYER_SLOTS; kind++) {
        if (gguf_string_is(name + i, length - i, GGUF_LAYER_TENSORS[kind])) {
            *slot = N_GLOBAL_SLOTS + kind;
            *layer = (int)n;
            return true;
        }
    }
    return false;
}

// What an architecture says of a slot: 'r' required, 'o' optional, '.' not one of its tensors.
static char gguf_slot_rule(const Architecture *a, int slot) {
    return slot < N_GLOBAL_SLOTS ? a->global[slot] : a->layer[slot - N_GLOBAL_SLOTS];
}

// The shape (rows, cols) a slot must have; rows 0 for a vector of cols.
static void gguf_expected_shape(const Config *c, int slot, size_t *rows, size_t *cols) {
    size_t D = c->dim, F = c->hidden_dim, V = c->vocab_size, S = c->seq_len;
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = kv_dim_of(c);
    size_t qkv = q_dim + 2 * kv_dim;
    size_t shapes[N_GLOBAL_SLOTS + N_LAYER_SLOTS][2] = {
        {V, D},      {0, D},      {V, D},
        {S, D},      {0, D},      {0, c->head_dim / 2}, // the model's own
        {0, D},      {0, D},                            // attn_norm
        {q_dim, D},  {0, q_dim},  {kv_dim, D},
        {0, kv_dim}, {kv_dim, D}, {0, kv_dim}, // q, k, v
        {qkv, D},    {0, qkv},    {D, q_dim},
        {0, D},      {0, D}, // qkv, output, post_attention_norm
        {0, D},      {0, D},      {F, D},
        {F, D},      {0, F},      {D, F},
        {0, D},      {0, D}, // the feed-forward
    };
    *rows = shapes[slot][0];
    *cols = shapes[slot][1];
}

// One tensor info, read and checked: name, shape (at most 4 dims, no zero, no overflow), type
// (F32, F16 or Q8_0; F32 for vectors), offset (aligned), and its bytes within the data section.
// data_start is 0 on the first walk, which only checks the info itself.
typedef struct {
    const char *name;
    size_t name_length;
    uint32_t n_dims, type;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t offset;
    size_t values, bytes;
    char printable[GGUF_MAX_NAME_LENGTH + 1];
} GgufTensorInfo;

// Reads a tensor's dimension count and dimensions into t->n_dims and t->ne, and their product
// into t->values: 1..GGUF_MAX_DIMS dimensions, none 0, the product within a size_t.
static int gguf_read_tensor_shape(GgufCursor *c, const char *name, GgufTensorInfo *t) {
    if (gguf_u32(c, name, &t->n_dims)) {
        return -1;
    }
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) {
        return report_error("%s: tensor '%s' has %u dimensions, expected 1..%d", c->path, name,
                            t->n_dims, GGUF_MAX_DIMS);
    }
    t->values = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (gguf_u64(c, name, &t->ne[d])) {
            return -1;
        }
        if (t->ne[d] == 0) {
            return report_error("%s: tensor '%s' has dimension %u of 0", c->path, name, d);
        }
        if (t->ne[d] > SIZE_MAX / t->values) {
            return report_error("%s: tensor '%s' has dimension %u of %llu: more values than "
                                "memory can address",
                                c->path, name, d, (unsigned long long)t->ne[d]);
        }
        t->values *= (size_t)t->ne[d];
    }
    return 0;
}

// Refuses a tensor of a type we do not read, naming the type where ggml has a name for it.
static int gguf_report_tensor_type(const char *path, const char *name, uint32_t ggml_type) {
    char type[32];
    if (ggml_type_name(ggml_type) != NULL) {
        snprintf(type, sizeof type, "%s", ggml_type_name(ggml_type));
    } else {
        snprintf(type, sizeof type, "of unknown type %u", ggml_type);
    }
    return report_error("%s: tensor '%s' is %s; this program reads F32, F16, Q8_0, Q4_0, Q4_1, "
                        "Q5_0, Q5_1 and Q2_K to Q6_K tensors",
                        path, name, type);
}

// The bytes t->values values of type t->type take, into t->bytes: a block type stores blocks
// of `values` weights in `bytes`, so its rows must be whole blocks.
static int gguf_tensor_bytes(const char *path, const char *name, GgufTensorInfo *t) {
    const BlockType *block = block_type_of(t->type);
    if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16 && t->type != GGML_TYPE_Q8_0 &&
        block == NULL) {
        return gguf_report_tensor_type(path, name, t->type);
    }
    size_t bytes_per_block = t->type == GGML_TYPE_F16 ? 2 : 4, values_per_block = 1;
    if (t->type == GGML_TYPE_Q8_0) {
        bytes_per_block = Q8_0_BYTES, values_per_block = Q8_0_BLOCK;
    } else if (block != NULL) {
        bytes_per_block = block->bytes, values_per_block = block->values;
    }
    if (t->ne[0] % values_per_block != 0) {
        return report_error("%s: tensor '%s' is %s with rows of %llu values, not a multiple of "
                            "%zu",
                            path, name, ggml_type_name(t->type), (unsigned long long)t->ne[0],
                            values_per_block);
    }
    size_t blocks = t->values / values_per_block;
    if (blocks > SIZE_MAX / bytes_per_block) {
        return report_error("%s: tensor '%s' of %zu values is too large", path, name, t->values);
    }
    t->bytes = blocks * bytes_per_block;
    return 0;
}

static int gguf_read_tensor_info(GgufCursor *c, uint64_t index, GgufTensorInfo *t) {
    if (gguf_string(c, "a tensor name", &t->name, &t->name_length)) {
        return -1;
    }
    if (t->name_length == 0 || t->name_length > GGUF_MAX_NAME_LENGTH) {
        return report_error("%s: tensor %llu has a name of %zu bytes, expected 1..%d", c->path,
                            (unsigned long long)index, t->name_length, GGUF_MAX_NAME_LENGTH);
    }
    gguf_printable(t->printable, sizeof t->printable, t->name, t->name_length);
    const char *name = t->printable;
    if (gguf_read_tensor_shape(c, name, t)) {
        return -1;
    }
    if (gguf_u32(c, name, &t->type) || gguf_u64(c, name, &t->offset)) {
        return -1;
    }
    return gguf_tensor_bytes(c->path, name, t);
}

// Checks a tensor's offset and size against the data section, and its shape and type against
// what its slot needs.
static int gguf_check_tensor(const GgufTensorInfo *t, const char *path, size_t data_size,
                             uint32_t alignment, const Config *c, int slot, bool kv_defaulted) {
    const char *name = t->printable;
    if (t->offset % alignment != 0) {
        return report_error("%s: tensor '%s' is at offset %llu, not a multiple of the alignment "
                            "%u",
                            path, name, (unsigned long long)t->offset, alignment);
    }
    if (t->offset > data_size || t->bytes > data_size - t->offset) {
        return report_error("%s: tensor '%s' needs %zu bytes at offset %llu of the data section, "
                            "which holds %zu (truncated?)",
                            path, name, t->bytes, (unsigned long long)t->offset, data_size);
    }
    size_t rows, cols;
    gguf_expected_shape(c, slot, &rows, &cols);
    bool vector = rows == 0;
    bool shape_ok = vector ? t->n_dims == 1 && t->ne[0] == cols
                           : t->n_dims == 2 && t->ne[0] == cols && t->ne[1] == rows;
    if (!shape_ok) {
        char got[96] = "", want[48];
        for (uint32_t d = 0; d < t->n_dims; d++) {
            size_t n = strlen(got);
            snprintf(got + n, sizeof got - n, "%s%llu", d ? ", " : "",
                     (unsigned long long)t->ne[d]);
        }
        if (vector) {
            snprintf(want, sizeof want, "[%zu]", cols);
        } else {
            snprintf(want, sizeof want, "[%zu, %zu]", cols, rows);
        }
        return report_error(
            "%s: tensor '%s' has shape [%s], the config needs %s%s", path, name, got, want,
            kv_defaulted && (slot == N_GLOBAL_SLOTS + L_ATTN_K || slot == N_GLOBAL_SLOTS + L_ATTN_V)
                ? " (llama.attention.head_count_kv is absent, so it is head_count)"
                : "");
    }
    if (vector && t->type != GGML_TYPE_F32) {
        return report_error("%s: tensor '%s' is %s, expected F32 for a vector", path, name,
                            ggml_type_name(t->type));
    }
    return 0;
}

// ---- Vocabulary: tokenizer.ggml.* into llama2.c's tokenizer.bin layout

// A piece's length once each U+2581 (sentencepiece's visible space, 3 bytes) is a plain space.
static size_t gguf_piece_length(const char *piece, size_t length) {
    size_t out = 0;
    for (size_t i = 0; i < length; out++) {
        i += (length - i >= 3 && memcmp(piece + i, "\xE2\x96\x81", 3) == 0) ? 3 : 1;
    }
    return out;
}

// Checks tokenizer.ggml.model: "llama" (sentencepiece-style) or "gpt2" (byte-level BPE).
static int gguf_check_tokenizer_model(const GgufValue *model_key, const char *path,
                                      bool *byte_level) {
    const char *model;
    size_t length = 0;
    if (model_key->type != GGUF_STRING) {
        return report_error("%s: key 'tokenizer.ggml.model' is %s, expected a string", path,
                            GGUF_VALUE_TYPE_PHRASES[model_key->type]);
    }
    gguf_string_value(model_key, &model, &length);
    *byte_level = gguf_string_is(model, length, "gpt2");
    if (!*byte_level && !gguf_string_is(model, length, "llama")) {
        char shown[41];
        return report_error("%s: tokenizer.ggml.model is \"%s\"; this program reads "
                            "sentencepiece-style \"llama\" and byte-level \"gpt2\" vocabularies",
                            path, gguf_printable(shown, sizeof shown, model, length));
    }
    return 0;
}

// A boolean tokenizer key into *out: 0 or 1, or -1 when the key is absent.
static int gguf_flag(const GgufValue *keys, int key, const char *path, int *out) {
    *out = -1;
    if (!keys[key].present) {
        return 0;
    }
    if (keys[key].type != GGUF_BOOL) {
        return report_error("%s: key '%s' is %s, expected a bool", path, GGUF_KEY_NAMES[key],
                            GGUF_VALUE_TYPE_PHRASES[keys[key].type]);
    }
    *out = keys[key].value[0];
    return 0;
}

// The byte-level vocabulary's arrays: tokens as strings (checked with the others), merges as
// strings, tokenizer.ggml.pre as a string; pointers to them into m->bpe.
static int gguf_check_byte_vocabulary(const GgufValue *keys, const char *path, GgufModel *m) {
    const GgufValue *merges = &keys[KEY_MERGES], *pre = &keys[KEY_PRE];
    if (!merges->present || merges->type != GGUF_ARRAY || merges->element_type != GGUF_STRING) {
        return report_error("%s: a \"gpt2\" vocabulary needs tokenizer.ggml.merges, an array of "
                            "strings",
                            path);
    }
    if (pre->present && pre->type != GGUF_STRING) {
        return report_error("%s: key 'tokenizer.ggml.pre' is %s, expected a string", path,
                            GGUF_VALUE_TYPE_PHRASES[pre->type]);
    }
    m->byte_level = true;
    m->bpe = (GgufByteVocabulary){.tokens = keys[KEY_TOKENS].value,
                                  .types = keys[KEY_TOKEN_TYPE].present ? keys[KEY_TOKEN_TYPE].value
                                                                        : NULL,
                                  .merges = merges->value,
                                  .n_merges = merges->count};
    if (pre->present) {
        gguf_string_value(pre, &m->bpe.pre, &m->bpe.pre_length);
    }
    return 0;
}

// Checks the types and lengths of the vocabulary arrays: vocab_size strings in
// tokenizer.ggml.tokens, as many f32 in tokenizer.ggml.scores and, if present, as many i32 in
// tokenizer.ggml.token_type.
static int gguf_check_vocabulary_arrays(const GgufValue *keys, const char *path,
                                        long long vocab_size, bool byte_level) {
    const GgufValue *tokens = &keys[KEY_TOKENS], *scores = &keys[KEY_SCORES];
    if (tokens->type != GGUF_ARRAY || tokens->element_type != GGUF_STRING) {
        return report_error("%s: key 'tokenizer.ggml.tokens' is not an array of strings", path);
    }
    if ((long long)tokens->count != vocab_size) {
        return report_error("%s: tokenizer.ggml.tokens has %llu pieces, token_embd.weight has "
                            "%lld rows",
                            path, (unsigned long long)tokens->count, vocab_size);
    }
    if (!byte_level && (!scores->present || scores->type != GGUF_ARRAY ||
                        scores->element_type != GGUF_FLOAT32 || scores->count != tokens->count)) {
        return report_error("%s: tokenizer.ggml.scores must be an array of %llu f32 (the merge "
                            "priorities of the pieces)",
                            path, (unsigned long long)tokens->count);
    }
    const GgufValue *types = &keys[KEY_TOKEN_TYPE];
    if (types->present && (types->type != GGUF_ARRAY || types->element_type != GGUF_INT32 ||
                           types->count != tokens->count)) {
        return report_error("%s: tokenizer.ggml.token_type must be an array of %llu i32", path,
                            (unsigned long long)tokens->count);
    }
    return 0;
}

// Checks each piece's score and length, and returns the tokenizer.bin size in *size.
static int gguf_vocabulary_size(const GgufValue *tokens, const GgufValue *scores, const char *path,
                                size_t *size) {
    // 4 bytes of max_token_length, then per piece a score, a length and the bytes. Each
    // piece is no longer than its string, which lies within the file: no overflow.
    size_t total = 4;
    const unsigned char *p = tokens->value;
    for (uint64_t i = 0; i < tokens->count; i++) {
        size_t length = (size_t)read_u64(p);
        float score = read_f32(scores->value + 4 * i);
        if (!isfinite(score)) {
            return report_error("%s: tokenizer.ggml.scores[%llu] is not finite", path,
                                (unsigned long long)i);
        }
        if (length > INT32_MAX) {
            return report_error("%s: tokenizer piece %llu is %zu bytes long", path,
                                (unsigned long long)i, length);
        }
        total += 8 + gguf_piece_length((const char *)p + 8, length);
        p += 8 + length;
    }
    *size = total;
    return 0;
}

// Checks the vocabulary keys; returns the tokenizer.bin size of a sentencepiece-style one in
// *size (0: none, or a byte-level one, which m->bpe then locates).
static int gguf_check_vocabulary(const GgufValue *keys, const char *path, long long vocab_size,
                                 GgufModel *m, size_t *size) {
    *size = 0;
    bool byte_level = false;
    if ((keys[KEY_TOKENIZER_MODEL].present &&
         gguf_check_tokenizer_model(&keys[KEY_TOKENIZER_MODEL], path, &byte_level)) ||
        gguf_flag(keys, KEY_ADD_BOS, path, &m->add_bos) ||
        gguf_flag(keys, KEY_ADD_EOS, path, &m->add_eos) ||
        gguf_flag(keys, KEY_ADD_SPACE_PREFIX, path, &m->add_space_prefix)) {
        return -1;
    }
    const GgufValue *tokens = &keys[KEY_TOKENS], *scores = &keys[KEY_SCORES];
    if (!tokens->present) {
        return 0; // no vocabulary: ids only, or -z
    }
    if (gguf_check_vocabulary_arrays(keys, path, vocab_size, byte_level)) {
        return -1;
    }
    m->token_types = keys[KEY_TOKEN_TYPE].present ? keys[KEY_TOKEN_TYPE].value : NULL;
    if (byte_level) {
        return gguf_check_byte_vocabulary(keys, path, m);
    }
    return gguf_vocabulary_size(tokens, scores, path, size);
}

static void gguf_write_vocabulary(const GgufValue *keys, unsigned char *out) {
    const GgufValue *tokens = &keys[KEY_TOKENS], *scores = &keys[KEY_SCORES];
    const unsigned char *p = tokens->value;
    unsigned char *w = out + 4;
    uint32_t longest = 0;
    for (uint64_t i = 0; i < tokens->count; i++) {
        size_t length = (size_t)read_u64(p);
        const char *piece = (const char *)p + 8;
        uint32_t n = (uint32_t)gguf_piece_length(piece, length);
        memcpy(w, scores->value + 4 * i, 4); // f32, little-endian in both formats
        memcpy(w + 4, &n, 4);
        w += 8;
        for (size_t j = 0; j < length;) {
            if (length - j >= 3 && memcmp(piece + j, "\xE2\x96\x81", 3) == 0) {
                *w++ = ' ';
                j += 3;
            } else {
                *w++ = (unsigned char)piece[j++];
            }
        }
        longest = n > longest ? n : longest;
        p += 8 + length;
    }
    memcpy(out, &longest, 4);
}

// ---- The whole file

// The header: magic, version, and the two counts, each bounded by what the file can hold.
static int gguf_read_header(GgufCursor *c, GgufModel *m, uint64_t *tensor_count,
                            uint64_t *kv_count) {
    const unsigned char *magic = NULL;
    if (gguf_take(c, 4, "the magic", &magic)) {
        return -1;
    }
    if (memcmp(magic, GGUF_MAGIC, 4) != 0) {
        return report_error("%s: not a GGUF file: no \"" GGUF_MAGIC "\" magic", c->path);
    }
    if (gguf_u32(c, "the version", &m->version) || gguf_u64(c, "tensor_count", tensor_count) ||
        gguf_u64(c, "kv_count", kv_count)) {
        return -1;
    }
    if (m->version != 2 && m->version != 3) { // 2 and 3 are laid out alike (little-endian)
        return report_error("%s: GGUF version is %u, this program reads versions 2 and 3", c->path,
                            m->version);
    }
    // Each pair takes at least 13 bytes (key length, type, a 1-byte value), each tensor info 32.
    if (*kv_count > (c->size - c->pos) / 13 || *tensor_count > (c->size - c->pos) / 32) {
        return report_error("%s: the header claims %llu keys and %llu tensors, more than the "
                            "%zu-byte file holds",
                            c->path, (unsigned long long)*kv_count,
                            (unsigned long long)*tensor_count, c->size);
    }
    return 0;
}

// The row of ARCHITECTURES that general.architecture names, or NULL after a report.
static const Architecture *gguf_architecture(const GgufValue *keys, const char *path) {
    if (!keys[KEY_ARCHITECTURE].present || keys[KEY_ARCHITECTURE].type != GGUF_STRING) {
        report_error("%s: key 'general.architecture' is missing or not a string", path);
        return NULL;
    }
    const char *arch;
    size_t arch_length;
    gguf_string_value(&keys[KEY_ARCHITECTURE], &arch, &arch_length);
    for (size_t i = 0; i < sizeof ARCHITECTURES / sizeof ARCHITECTURES[0]; i++) {
        if (gguf_string_is(arch, arch_length, ARCHITECTURES[i].name)) {
            return &ARCHITECTURES[i];
        }
    }
    char shown[41];
    report_error("%s: general.architecture is \"%s\"; this program runs llama, qwen2, gemma, "
                 "gemma2 and gpt2 models",
                 path, gguf_printable(shown, sizeof shown, arch, arch_length));
    return NULL;
}

// The norm's epsilon (required; LayerNorm's key in GPT-2) and the RoPE base (10000 when
// absent).
static int gguf_read_floats(const GgufValue *keys, const char *path, const Architecture *a,
                            RawConfig *raw) {
    int epsilon = a->norm == NORM_LAYER ? KEY_LAYER_NORM_EPSILON : KEY_RMS_EPSILON;
    long long unused;
    raw->rope_theta = 10000.0f;
    if (!keys[epsilon].present) {
        return gguf_config_integer(keys, epsilon, path, -1, 0, 0, &unused); // says it is missing
    }
    char name[96];
    if (gguf_config_float(keys, epsilon, path, &raw->norm_eps) ||
        gguf_config_float(keys, KEY_ROPE_FREQ_BASE, path, &raw->rope_theta)) {
        return -1;
    }
    // validate_config checks these too, by run.c's names; the file's are clearer here
    if (!(isfinite(raw->norm_eps) && raw->norm_eps > 0.0f && raw->norm_eps < 1.0f)) {
        return report_error("%s: %s is %g, expected a number in (0, 1)", path,
                            gguf_key_name(keys, epsilon, name, sizeof name), raw->norm_eps);
    }
    if (!(isfinite(raw->rope_theta) && raw->rope_theta > 1.0f)) {
        return report_error("%s: %s is %g, expected a finite number above 1", path,
                            gguf_key_name(keys, KEY_ROPE_FREQ_BASE, name, sizeof name),
                            raw->rope_theta);
    }
    return 0;
}

// head_dim: attention.key_length where the file has it (Gemma's 256 is not D / H), else D / H.
// Values are as wide as keys, and RoPE turns the whole head.
static int gguf_read_head_dim(const GgufValue *keys, const char *path, RawConfig *raw) {
    char name[96];
    if (raw->dim % raw->n_heads != 0 && !keys[KEY_KEY_LENGTH].present) {
        return report_error("%s: %s %lld is not a multiple of %s %lld", path,
                            gguf_key_name(keys, KEY_EMBEDDING_LENGTH, name, sizeof name), raw->dim,
                            GGUF_KEY_NAMES[KEY_HEAD_COUNT], raw->n_heads);
    }
    long long value_length, rope_dims;
    if (gguf_config_integer(keys, KEY_KEY_LENGTH, path, raw->dim / raw->n_heads, 2, MAX_HEAD_DIM,
                            &raw->head_dim) ||
        gguf_config_integer(keys, KEY_VALUE_LENGTH, path, raw->head_dim, 1, MAX_HEAD_DIM,
                            &value_length) ||
        gguf_config_integer(keys, KEY_ROPE_DIMENSION_COUNT, path, raw->head_dim, 1, MAX_HEAD_DIM,
                            &rope_dims)) {
        return -1;
    }
    raw->head_dim_free = true;
    if (value_length != raw->head_dim) {
        return report_error("%s: %s is %lld and key_length %lld; this program needs values as "
                            "wide as keys",
                            path, gguf_key_name(keys, KEY_VALUE_LENGTH, name, sizeof name),
                            value_length, raw->head_dim);
    }
    if (rope_dims != raw->head_dim) {
        return report_error("%s: %s is %lld, but this program rotates the whole head: head_dim "
                            "%lld (partial RoPE is not supported)",
                            path, gguf_key_name(keys, KEY_ROPE_DIMENSION_COUNT, name, sizeof name),
                            rope_dims, raw->head_dim);
    }
    return 0;
}

// The hyperparameters into raw (all but vocab_size, which is token_embd's row count), and the
// alignment of the data section.
static int gguf_read_hyperparameters(const GgufValue *keys, const char *path, const Architecture *a,
                                     RawConfig *raw, long long *alignment) {
    *raw = (RawConfig){.shared_classifier = true}; // until output.weight turns up
    long long experts;
    if (gguf_config_integer(keys, KEY_ALIGNMENT, path, GGUF_DEFAULT_ALIGNMENT, 8,
                            GGUF_MAX_ALIGNMENT, alignment) ||
        gguf_config_integer(keys, KEY_EMBEDDING_LENGTH, path, -1, 1, MAX_DIM, &raw->dim) ||
        gguf_config_integer(keys, KEY_FEED_FORWARD_LENGTH, path, -1, 1, MAX_HIDDEN_DIM,
                            &raw->hidden_dim) ||
        gguf_config_integer(keys, KEY_BLOCK_COUNT, path, -1, 1, MAX_LAYERS, &raw->n_layers) ||
        gguf_config_integer(keys, KEY_HEAD_COUNT, path, -1, 1, MAX_HEADS, &raw->n_heads) ||
        gguf_config_integer(keys, KEY_HEAD_COUNT_KV, path, raw->n_heads, 1, MAX_HEADS,
                            &raw->n_kv_heads) ||
        gguf_config_integer(keys, KEY_CONTEXT_LENGTH, path, -1, 1, MAX_SEQ_LEN, &raw->seq_len) ||
        gguf_config_integer(keys, KEY_BOS_ID, path, 1, 0, MAX_VOCAB, &raw->bos_id) ||
        gguf_config_integer(keys, KEY_EOS_ID, path, 2, 0, MAX_VOCAB, &raw->eos_id) ||
        gguf_config_integer(keys, KEY_EXPERT_COUNT, path, 0, 0, LLONG_MAX, &experts) ||
        gguf_read_floats(keys, path, a, raw) || gguf_read_head_dim(keys, path, raw)) {
        return -1;
    }
    if (experts > 0) {
        char name[96];
        return report_error("%s: %s is %lld: a mixture of experts, which this program does not run",
                            path, gguf_key_name(keys, KEY_EXPERT_COUNT, name, sizeof name),
                            experts);
    }
    // The spec asks for a multiple of 8 (llama.cpp also wants a power of two; we need neither).
    if (*alignment % 8 != 0) {
        return report_error("%s: general.alignment is %lld, expected a multiple of 8", path,
                            *alignment);
    }
    return 0;
}

// RoPE scaling: "linear" divides every position by rope.scaling.factor (or the older
// rope.scale_linear); "none" and an absent key change nothing; YaRN and the others are refused.
static int gguf_read_rope_scaling(const GgufValue *keys, const char *path, Config *c) {
    char name[96];
    const char *type = "linear";
    size_t length = 6;
    float factor = 1.0f;
    const GgufValue *type_key = &keys[KEY_ROPE_SCALING_TYPE];
    if (type_key->present && type_key->type == GGUF_STRING) {
        gguf_string_value(type_key, &type, &length);
    } else if (type_key->present) {
        return report_error("%s: key '%s' is %s, expected a string", path,
                            gguf_key_name(keys, KEY_ROPE_SCALING_TYPE, name, sizeof name),
                            GGUF_VALUE_TYPE_PHRASES[type_key->type]);
    }
    float attn_factor = 1.0f;
    if (gguf_config_float(keys, KEY_ROPE_ATTN_FACTOR, path, &attn_factor)) {
        return -1;
    }
    if (attn_factor != 1.0f) { // it would scale every rotated q and k
        return report_error("%s: %s is %g; this program implements 1 only", path,
                            gguf_key_name(keys, KEY_ROPE_ATTN_FACTOR, name, sizeof name),
                            attn_factor);
    }
    if (gguf_string_is(type, length, "none")) {
        return 0;
    }
    if (!gguf_string_is(type, length, "linear")) {
        char shown[41];
        return report_error("%s: %s is \"%s\"; this program implements \"none\" and \"linear\"",
                            path, gguf_key_name(keys, KEY_ROPE_SCALING_TYPE, name, sizeof name),
                            gguf_printable(shown, sizeof shown, type, length));
    }
    int key =
        keys[KEY_ROPE_SCALING_FACTOR].present ? KEY_ROPE_SCALING_FACTOR : KEY_ROPE_SCALE_LINEAR;
    if (gguf_config_float(keys, key, path, &factor)) {
        return -1;
    }
    if (factor == 0.0f) { // llama.cpp's "no factor"
        return 0;
    }
    if (!(isfinite(factor) && factor > 0.0f)) {
        return report_error("%s: %s is %g, expected a finite number above 0", path,
                            gguf_key_name(keys, key, name, sizeof name), factor);
    }
    c->rope_scale = 1.0f / factor;
    return 0;
}

// A soft cap's key, or its default where absent: a finite number above 0.
static int gguf_read_cap(const GgufValue *keys, int key, const char *path, float *cap) {
    char name[96];
    if (gguf_config_float(keys, key, path, cap)) {
        return -1;
    }
    if (!(isfinite(*cap) && *cap > 0.0f)) {
        return report_error("%s: %s is %g, expected a finite number above 0", path,
                            gguf_key_name(keys, key, name, sizeof name), *cap);
    }
    return 0;
}

// What the architecture changes in a validated Llama-style config (Part 1's choices). Gemma 2's
// defaults are llama.cpp's: caps of 50 and 30, a window of 4096, and 46 layers (the 27B) scale
// the queries by 1 / sqrt(D / H) rather than 1 / sqrt(hd).
static int gguf_apply_architecture(const GgufValue *keys, const char *path, const Architecture *a,
                                   Config *c) {
    c->architecture = a->name;
    c->norm = a->norm;
    c->rope = a->rope;
    c->feed_forward = a->feed_forward;
    c->embedding_scale = a->scale_embedding ? sqrtf((float)c->dim) : 1.0f;
    if (a->rope != ROPE_NONE && gguf_read_rope_scaling(keys, path, c)) {
        return -1;
    }
    if (!a->soft_caps) {
        return 0;
    }
    long long window;
    c->attention_softcap = 50.0f, c->logits_softcap = 30.0f;
    if (gguf_read_cap(keys, KEY_ATTN_SOFTCAP, path, &c->attention_softcap) ||
        gguf_read_cap(keys, KEY_FINAL_SOFTCAP, path, &c->logits_softcap) ||
        gguf_config_integer(keys, KEY_SLIDING_WINDOW, path, 4096, 1, MAX_SEQ_LEN, &window)) {
        return -1;
    }
    c->sliding_window = (int)window;
    if (c->n_layers == 46) {
        c->query_scale = 1.0f / sqrtf((float)c->dim / c->n_heads);
    }
    return 0;
}

// The tensor infos, a first time: each one on its own, to find where they end, and the rows of
// token_embd.weight, the vocabulary size.
static int gguf_scan_tensor_infos(GgufCursor *c, uint64_t tensor_count, long long *vocab_size) {
    GgufTensorInfo info;
    *vocab_size = -1;
    for (uint64_t i = 0; i < tensor_count; i++) {
        if (gguf_read_tensor_info(c, i, &info)) {
            return -1;
        }
        if (gguf_string_is(info.name, info.name_length, "token_embd.weight")) {
            *vocab_size = info.n_dims == 2 && info.ne[1] <= MAX_VOCAB ? (long long)info.ne[1] : 0;
        }
    }
    if (*vocab_size < 0) {
        return report_error("%s: tensor 'token_embd.weight' is missing", c->path);
    }
    return 0;
}

// A second time: every tensor's place, shape and type, and that each is one of the
// architecture's; counts the bytes of each type.
static int gguf_check_tensor_infos(GgufCursor *c, uint64_t tensor_count, size_t data_size,
                                   uint32_t alignment, bool kv_defaulted, GgufModel *m) {
    GgufTensorInfo info;
    for (uint64_t i = 0; i < tensor_count; i++) {
        int slot, layer;
        gguf_read_tensor_info(c, i, &info); // checked by the first walk
        if (!gguf_slot(info.name, info.name_length, m->config.n_layers, &slot, &layer) ||
            gguf_slot_rule(m->architecture, slot) == '.') {
            return report_error("%s: tensor '%s' is not one of a %s model's", c->path,
                                info.printable, m->architecture->name);
        }
        if (gguf_check_tensor(&info, c->path, data_size, alignment, &m->config, slot,
                              kv_defaulted)) {
            return -1;
        }
        if (slot == G_OUTPUT) {
            m->config.shared_classifier = false;
        }
        m->tensor_bytes += info.bytes;
        m->parameters += info.values;
        m->type_bytes[info.type < 64 ? info.type : 0] += info.bytes;
    }
    return 0;
}

// The tensor in slot of layer (-1: the model's own).
static GgufTensor *gguf_tensor(GgufModel *m, int slot, int layer) {
    return layer < 0 ? &m->global[slot] : &m->layers[layer].tensors[slot - N_GLOBAL_SLOTS];
}

// Every tensor the architecture requires is there; else names the first one missing.
static int gguf_check_required(const GgufModel *m, const char *path) {
    for (int slot = 0; slot < N_GLOBAL_SLOTS + N_LAYER_SLOTS; slot++) {
        bool global = slot < N_GLOBAL_SLOTS;
        for (int l = 0; l < (global ? 1 : m->config.n_layers); l++) {
            const GgufTensor *t = gguf_tensor((GgufModel *)m, slot, global ? -1 : l);
            if (gguf_slot_rule(m->architecture, slot) == 'r' && t->data == NULL) {
                if (global) {
                    return report_error("%s: tensor '%s' is missing; a %s model needs it", path,
                                        GGUF_GLOBAL_TENSORS[slot], m->architecture->name);
                }
                return report_error("%s: tensor 'blk.%d.%s' is missing; a %s model needs it", path,
                                    l, GGUF_LAYER_TENSORS[slot - N_GLOBAL_SLOTS],
                                    m->architecture->name);
            }
        }
    }
    return 0;
}

// A third time, everything checked: allocates the layer table and points each tensor into the
// data section. On failure nothing stays allocated.
static int gguf_place_tensors(GgufCursor *c, uint64_t tensor_count,
                              const unsigned char *data_section, GgufModel *m) {
    m->layers =
        checked_calloc((size_t)m->config.n_layers, sizeof *m->layers, "the GGUF layer table");
    if (m->layers == NULL) {
        return -1;
    }
    GgufTensorInfo info;
    for (uint64_t i = 0; i < tensor_count; i++) {
        int slot, layer;
        gguf_read_tensor_info(c, i, &info);
        gguf_slot(info.name, info.name_length, m->config.n_layers, &slot, &layer);
        GgufTensor *t = gguf_tensor(m, slot, layer);
        if (t->data != NULL) {
            report_error("%s: tensor '%s' appears twice", c->path, info.printable);
            free_gguf(m);
            return -1;
        }
        *t = (GgufTensor){.data = data_section + info.offset,
                          .type = info.type,
                          .rows = info.n_dims == 2 ? (size_t)info.ne[1] : 1,
                          .cols = (size_t)info.ne[0],
                          .bytes = info.bytes};
    }
    if (gguf_check_required(m, c->path)) {
        free_gguf(m);
        return -1;
    }
    return 0;
}

// The sentencepiece-style vocabulary turned into tokenizer.bin bytes in m->tokenizer.
static int gguf_keep_vocabulary(const GgufValue *keys, size_t tokenizer_size, GgufModel *m) {
    if (tokenizer_size > 0) {
        m->tokenizer = checked_calloc(tokenizer_size, 1, "the GGUF vocabulary");
        if (m->tokenizer == NULL) {
            return -1;
        }
        gguf_write_vocabulary(keys, m->tokenizer);
        m->tokenizer_size = tokenizer_size;
    }
    return 0;
}

// A file with no tensors, as llama.cpp ships its vocabularies for tokenizer tests: whatever its
// architecture, only the vocabulary and its BOS and EOS ids are read.
static int parse_gguf_vocabulary(const GgufValue *keys, const char *path, GgufModel *m) {
    const GgufValue *tokens = &keys[KEY_TOKENS];
    if (!tokens->present || tokens->type != GGUF_ARRAY || tokens->count == 0 ||
        tokens->count > MAX_VOCAB) {
        return report_error("%s: a GGUF file with no tensors must hold a vocabulary "
                            "(tokenizer.ggml.tokens, 1 to %d strings)",
                            path, MAX_VOCAB);
    }
    long long vocab_size = (long long)tokens->count, bos, eos;
    size_t tokenizer_size;
    if (gguf_config_integer(keys, KEY_BOS_ID, path, 1, 0, vocab_size - 1, &bos) ||
        gguf_config_integer(keys, KEY_EOS_ID, path, 2 < vocab_size ? 2 : 0, 0, vocab_size - 1,
                            &eos) ||
        gguf_check_vocabulary(keys, path, vocab_size, m, &tokenizer_size) ||
        gguf_keep_vocabulary(keys, tokenizer_size, m)) {
        return -1;
    }
    m->vocab_only = true;
    m->config = (Config){.vocab_size = (int)vocab_size, .bos_id = (int)bos, .eos_id = (int)eos};
    return 0;
}

// Reads a GGUF llama model held in memory (a mapped file); tensors point into data, which must
// outlive m. On success m->layers and m->tokenizer are allocated: free_gguf releases them.
static int parse_gguf(const unsigned char *data, size_t size, const char *path, GgufModel *m) {
    memset(m, 0, sizeof *m);
    GgufCursor c = {.data = data, .size = size, .pos = 0, .path = path};
    uint64_t tensor_count, kv_count;
    GgufValue keys[N_GGUF_KEYS];
    RawConfig raw;
    long long alignment;
    if (gguf_read_header(&c, m, &tensor_count, &kv_count) ||
        gguf_read_metadata(&c, kv_count, keys)) {
        return -1;
    }
    if (tensor_count == 0) {
        return parse_gguf_vocabulary(keys, path, m);
    }
    m->architecture = gguf_architecture(keys, path);
    if (m->architecture == NULL ||
        gguf_read_hyperparameters(keys, path, m->architecture, &raw, &alignment)) {
        return -1;
    }
    size_t infos_start = c.pos, tokenizer_size;
    if (gguf_scan_tensor_infos(&c, tensor_count, &raw.vocab_size) ||
        validate_config(&raw, path, &m->config) ||
        gguf_apply_architecture(keys, path, m->architecture, &m->config) ||
        gguf_check_vocabulary(keys, path, raw.vocab_size, m, &tokenizer_size)) {
        return -1;
    }
    size_t data_start = c.pos + (alignment - c.pos % alignment) % alignment;
    if (data_start > size) {
        return report_error("%s: file is %zu bytes, ending before its data section at %zu "
                            "(truncated?)",
                            path, size, data_start);
    }
    c.pos = infos_start;
    bool kv_defaulted = !keys[KEY_HEAD_COUNT_KV].present;
    if (gguf_check_tensor_infos(&c, tensor_count, size - data_start, (uint32_t)alignment,
                                kv_defaulted, m)) {
        return -1;
    }
    c.pos = infos_start;
    if (gguf_place_tensors(&c, tensor_count, data + data_start, m)) {
        return -1;
    }
    if (gguf_keep_vocabulary(keys, tokenizer_size, m)) {
        free_gguf(m);
        return -1;
    }
    m->alignment = (uint32_t)alignment;
    return 0;
}

// ---- Into the program's weights

// A tensor as a Matrix: a view of its bytes in the mapped file (its type is F32, F16 or Q8_0).
static Matrix gguf_matrix(const GgufTensor *t) {
    Matrix m = {.rows = t->rows, .cols = t->cols};
    if (t->type == GGML_TYPE_F32) {
        m.f32 = (const float *)t->data;
    } else if (t->type == GGML_TYPE_F16) {
        m.f16 = (const uint16_t *)t->data;
    } else if (t->type == GGML_TYPE_Q8_0) {
        m.q8_0 = t->data;
        m.group = Q8_0_BLOCK;
    } else {
        m.blocks = t->data;
        m.block_type = block_type_of(t->type);
    }
    return m;
}

// Rows first..first+count-1 of m: GPT-2's fused attn_qkv holds q, k and v one after the other.
static Matrix matrix_rows(Matrix m, size_t first, size_t count) {
    if (m.f32 != NULL) {
        m.f32 += first * m.cols;
    } else if (m.f16 != NULL) {
        m.f16 += first * m.cols;
    } else if (m.q8_0 != NULL) {
        m.q8_0 += first * (m.cols / Q8_0_BLOCK) * Q8_0_BYTES;
    } else {
        m.blocks += first * block_row_bytes(m.block_type, m.cols);
    }
    m.rows = count;
    return m;
}

// A per-layer vector of the weights: values first..first+n-1 of each layer's tensor in slot,
// gathered into an (L, n) array for field (zeros in a layer that lacks an optional one).
typedef struct {
    int slot;
    size_t first, n;
    const float **field;
} LayerVector;

static int gguf_layer_vectors(const Config *c, Weights *w, LayerVector out[16]) {
    size_t D = c->dim, F = c->hidden_dim, q = (size_t)c->n_heads * c->head_dim;
    size_t kv = kv_dim_of(c);
    LayerVector all[] = {
        {L_ATTN_NORM, 0, D, &w->rms_att},      {L_ATTN_NORM_BIAS, 0, D, &w->bias_att},
        {L_ATTN_Q_BIAS, 0, q, &w->bq},         {L_ATTN_K_BIAS, 0, kv, &w->bk},
        {L_ATTN_V_BIAS, 0, kv, &w->bv},        {L_ATTN_QKV_BIAS, 0, q, &w->bq},
        {L_ATTN_QKV_BIAS, q, kv, &w->bk},      {L_ATTN_QKV_BIAS, q + kv, kv, &w->bv},
        {L_ATTN_OUTPUT_BIAS, 0, D, &w->bo},    {L_POST_ATTN_NORM, 0, D, &w->post_att},
        {L_FFN_NORM, 0, D, &w->rms_ffn},       {L_FFN_NORM_BIAS, 0, D, &w->bias_ffn},
        {L_FFN_UP_BIAS, 0, F, &w->b3},         {L_FFN_DOWN_BIAS, 0, D, &w->b2},
        {L_POST_FFW_NORM, 0, D, &w->post_ffn},
    };
    memcpy(out, all, sizeof all);
    return (int)(sizeof all / sizeof all[0]);
}

// Gathers the per-layer vectors that the file has into m->vectors and points w's fields there.
static int gguf_gather_vectors(GgufModel *m, Weights *w) {
    const Config *c = &m->config;
    size_t L = (size_t)c->n_layers, total = 0;
    LayerVector vectors[16];
    int count = gguf_layer_vectors(c, w, vectors);
    bool present[16];
    for (int k = 0; k < count; k++) {
        present[k] = false;
        for (size_t l = 0; l < L; l++) {
            present[k] = present[k] || m->layers[l].tensors[vectors[k].slot].data != NULL;
        }
        total += present[k] ? vectors[k].n : 0;
    }
    m->vectors = checked_calloc(total * L + 1, sizeof(float), "the GGUF norms and biases");
    if (m->vectors == NULL) {
        return -1;
    }
    float *next = m->vectors;
    for (int k = 0; k < count; k++) {
        if (!present[k]) {
            continue;
        }
        const LayerVector *v = &vectors[k];
        for (size_t l = 0; l < L; l++) {
            const GgufTensor *t = &m->layers[l].tensors[v->slot];
            if (t->data != NULL) {
                memcpy(next + l * v->n, (const float *)t->data + v->first, v->n * sizeof(float));
            }
        }
        *v->field = next;
        next += L * v->n;
    }
    return 0;
}

// Points w into the file: every matrix straight at its tensor, each per-layer field at a table
// of L matrices. The per-layer norms and biases are gathered into the (L, n) arrays Part 1
// reads; they are the only weights copied.
static int gguf_point_weights(GgufModel *m, Weights *w) {
    const Config *c = &m->config;
    size_t L = (size_t)c->n_layers, q_dim = (size_t)c->n_heads * c->head_dim;
    size_t kv_dim = kv_dim_of(c);
    *w = (Weights){0};
    m->tables = checked_calloc(7 * L, sizeof *m->tables, "the GGUF layer tables");
    if (m->tables == NULL || gguf_gather_vectors(m, w)) {
        return -1;
    }
    static const int slots[7] = {L_ATTN_Q,   L_ATTN_K,   L_ATTN_V, L_ATTN_OUTPUT,
                                 L_FFN_GATE, L_FFN_DOWN, L_FFN_UP};
    for (size_t l = 0; l < L; l++) {
        const GgufTensor *tensors = m->layers[l].tensors;
        for (size_t k = 0; k < 7; k++) {
            m->tables[k * L + l] = gguf_matrix(&tensors[slots[k]]);
        }
        if (tensors[L_ATTN_QKV].data != NULL) { // GPT-2: q, k and v are thirds of one matrix
            Matrix qkv = gguf_matrix(&tensors[L_ATTN_QKV]);
            m->tables[l] = matrix_rows(qkv, 0, q_dim);
            m->tables[L + l] = matrix_rows(qkv, q_dim, kv_dim);
            m->tables[2 * L + l] = matrix_rows(qkv, q_dim + kv_dim, kv_dim);
        }
    }
    Matrix *fields[7] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3};
    for (size_t k = 0; k < 7; k++) {
        const Matrix *first = &m->tables[k * L];
        if (first->rows > 0) { // GPT-2 has no gate
            *fields[k] = (Matrix){.rows = first->rows, .cols = first->cols, .layers = first};
        }
    }
    w->token_embedding = gguf_matrix(&m->global[G_TOKEN_EMBD]);
    w->classifier = c->shared_classifier ? w->token_embedding : gguf_matrix(&m->global[G_OUTPUT]);
    w->rms_final = (const float *)m->global[G_OUTPUT_NORM].data;
    w->bias_final = (const float *)m->global[G_OUTPUT_NORM_BIAS].data;
    w->rope_divisors = (const float *)m->global[G_ROPE_FREQS].data;
    if (m->global[G_POSITION_EMBD].data != NULL) {
        w->position_embedding = gguf_matrix(&m->global[G_POSITION_EMBD]);
    }
    return 0;
}

// Reads a GGUF file held in memory into ckpt, which then owns the tables parsing allocated.
static int parse_gguf_checkpoint(const unsigned char *data, size_t size, const char *path,
                                 Checkpoint *ckpt) {
    GgufModel m;
    if (parse_gguf(data, size, path, &m)) {
        return -1;
    }
    ckpt->gguf = checked_calloc(1, sizeof *ckpt->gguf, "the GGUF tables");
    if (ckpt->gguf == NULL || (!m.vocab_only && gguf_point_weights(&m, &ckpt->weights))) {
        free_gguf(&m);
        free(ckpt->gguf);
        ckpt->gguf = NULL;
        return -1;
    }
    *ckpt->gguf = m;
    ckpt->config = m.config;
    ckpt->vocab_only = m.vocab_only;
    ckpt->legacy = false;
    ckpt->tokenizer_bytes = m.tokenizer;
    ckpt->tokenizer_size = m.tokenizer_size;
    return 0;
}

// ----------------------------------------------------------------------------
// Reading any checkpoint

// Reads a checkpoint held in memory; the weights point into data, which must outlive ckpt.
static int parse_checkpoint(const unsigned char *data, size_t size, const char *path,
                            Checkpoint *ckpt) {
    if (size >= 4 && memcmp(data, GGUF_MAGIC, 4) == 0) {
        return parse_gguf_checkpoint(data, size, path, ckpt);
    }
    if (size >= 4 && memcmp(data, GQAM_MAGIC, 4) == 0) {
        return parse_gqam(data, size, path, ckpt);
    }
    return parse_legacy(data, size, path, ckpt);
}

// Opens path for reading and returns its descriptor and size, or -1 after saying why not.
// O_NONBLOCK keeps open from waiting for a writer when path is a FIFO, which is then refused
// like any other file that is not regular; on a regular file the flag changes nothing.
static int open_regular_file(const char *path, size_t *size) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        return report_error("%s: cannot open: %s", path, strerror(errno));
    }
    struct stat info;
    if (fstat(fd, &info) != 0) {
        report_error("%s: cannot stat: %s", path, strerror(errno));
    } else if (S_ISDIR(info.st_mode)) {
        report_error("%s: is a directory, expected a file", path);
    } else if (!S_ISREG(info.st_mode)) {
        report_error("%s: is not a regular file", path);
    } else if (info.st_size == 0) {
        report_error("%s: file is empty", path);
    } else {
        *size = (size_t)info.st_size;
        return fd;
    }
    close(fd);
    return -1;
}

// What a matrix is called in messages: "wq of layer 3", "token_embedding" for one outside the
// layers (layer < 0), or a GGUF file's own name for it, "tensor 'blk.3.attn_q.weight'".
static void name_matrix(const char *name, long layer, char *out, size_t capacity) {
    if (layer >= 0) {
        snprintf(out, capacity, "%s of layer %ld", name, layer);
    } else {
        snprintf(out, capacity, "%s", name);
    }
}

// Where a bad value sits: "wq of layer 3, value 17".
static void describe_value(const char *matrix, const char *what, size_t index, char *out,
                           size_t capacity) {
    snprintf(out, capacity, "%s, %s %zu", matrix, what, index);
}

// A matrix, named as name_matrix names it, in whichever encoding it has: every value finite; int8
// values in -127..127 (the AVX-512 kernel negates the project's int8 weights, and -128 has no
// positive twin); every scale finite.
static int check_matrix(const char *matrix, const Matrix *m, const char *path) {
    size_t count = m->rows * m->cols, bad;
    char where[320];
    if (m->f32 != NULL && (bad = first_nonfinite(m->f32, count)) < count) {
        describe_value(matrix, "value", bad, where, sizeof where);
        return report_error("%s: %s is %g; every weight must be a finite number", path, where,
                            m->f32[bad]);
    }
    if (m->f16 != NULL && (bad = first_found(m->f16, count, scan_nonfinite_half)) < count) {
        describe_value(matrix, "value", bad, where, sizeof where);
        return report_error("%s: %s is not a finite number (fp16 0x%04x)", path, where,
                            m->f16[bad]);
    }
    if (m->q8 != NULL && (bad = first_found(m->q8, count, scan_minus_128)) < count) {
        describe_value(matrix, "value", bad, where, sizeof where);
        return report_error("%s: %s is -128; int8 weights lie in -127..127", path, where);
    }
    if (m->q8 != NULL && (bad = first_nonfinite(m->scales, count / m->group)) < count / m->group) {
        describe_value(matrix, "scale", bad, where, sizeof where);
        return report_error("%s: %s is %g; every scale must be a finite number", path, where,
                            m->scales[bad]);
    }
    size_t n_blocks = m->blocks != NULL ? count / m->block_type->values : 0;
    if (m->blocks != NULL &&
        (bad = first_bad_block(m->block_type, m->blocks, n_blocks)) < n_blocks) {
        describe_value(matrix, "block", bad, where, sizeof where);
        return report_error("%s: %s (%s) has a scale that is not a finite number", path, where,
                            m->block_type->name);
    }
    for (size_t block = 0; m->q8_0 != NULL && block < count / Q8_0_BLOCK; block++) {
        if ((load_half(m->q8_0 + block * Q8_0_BYTES) & 0x7C00) == 0x7C00) {
            describe_value(matrix, "block", block, where, sizeof where);
            return report_error("%s: %s (Q8_0) has a scale that is not a finite number", path,
                                where);
        }
    }
    return 0;
}

// layers vectors of n fp32 values each (the RMSNorm weights).
static int check_vectors(const char *name, const float *v, size_t layers, size_t n,
                         const char *path) {
    size_t bad = first_nonfinite(v, layers * n);
    if (bad < layers * n) {
        char matrix[160], where[320];
        name_matrix(name, layers > 1 ? (long)(bad / n) : -1, matrix, sizeof matrix);
        describe_value(matrix, "value", bad % n, where, sizeof where);
        return report_error("%s: %s is %g; every weight must be a finite number", path, where,
                            v[bad]);
    }
    return 0;
}

// The vectors other architectures add, where the model has them: biases, the extra norms, GPT-2's
// position vectors and Llama 3's RoPE divisors (which must also be above 0).
static int check_other_weights(const Config *c, const Weights *w, const char *path) {
    size_t L = c->n_layers, D = c->dim, F = c->hidden_dim, kv_dim = kv_dim_of(c);
    size_t q_dim = (size_t)c->n_heads * c->head_dim, half = c->head_dim / 2;
    struct {
        const char *name;
        const float *v;
        size_t layers, n;
    } vectors[] = {{"bias_att", w->bias_att, L, D},
                   {"bias_ffn", w->bias_ffn, L, D},
                   {"bias_final", w->bias_final, 1, D},
                   {"bq", w->bq, L, q_dim},
                   {"bk", w->bk, L, kv_dim},
                   {"bv", w->bv, L, kv_dim},
                   {"bo", w->bo, L, D},
                   {"b3", w->b3, L, F},
                   {"b2", w->b2, L, D},
                   {"post_att", w->post_att, L, D},
                   {"post_ffn", w->post_ffn, L, D},
                   {"rope_divisors", w->rope_divisors, 1, half}};
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        if (vectors[i].v != NULL &&
            check_vectors(vectors[i].name, vectors[i].v, vectors[i].layers, vectors[i].n, path)) {
            return -1;
        }
    }
    bool positions = w->position_embedding.rows > 0;
    return positions ? check_matrix("position_embedding", &w->position_embedding, path) : 0;
}

// Llama 3's RoPE divisors divide the rotation frequencies: each must be above 0.
static int check_rope_divisors(const Config *c, const Weights *w, const char *path) {
    for (size_t i = 0; w->rope_divisors != NULL && i < (size_t)c->head_dim / 2; i++) {
        if (!(w->rope_divisors[i] > 0.0f)) {
            return report_error("%s: tensor 'rope_freqs.weight', value %zu is %g; RoPE's divisors "
                                "must be above 0",
                                path, i, w->rope_divisors[i]);
        }
    }
    return 0;
}

// Reads every weight once: a NaN, an infinity or an int8 -128 anywhere would otherwise come out
// as silent garbage. One parallel pass, about as long as the first token takes.
static int check_weights(const Config *c, const Weights *w, const char *path) {
    size_t L = c->n_layers, D = c->dim;
    if (check_matrix("token_embedding", &w->token_embedding, path) ||
        (!c->shared_classifier && check_matrix("classifier", &w->classifier, path)) ||
        check_vectors("rms_att", w->rms_att, L, D, path) ||
        check_vectors("rms_ffn", w->rms_ffn, L, D, path) ||
        check_vectors("rms_final", w->rms_final, 1, D, path) || check_other_weights(c, w, path)) {
        return -1;
    }
    const Matrix *stacks[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3};
    const char *names[] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
    for (int i = 0; i < 7; i++) {
        for (int layer = 0; stacks[i]->rows > 0 && layer < c->n_layers; layer++) {
            Matrix m = layer_matrix(stacks[i], layer);
            char matrix[160];
            name_matrix(names[i], layer, matrix, sizeof matrix);
            if (check_matrix(matrix, &m, path)) {
                return -1;
            }
        }
    }
    return 0;
}

// A GGUF file's tensors, each once, checked as check_weights checks the program's matrices but
// named as the file names them: "tensor 'blk.1.ffn_up.weight', block 3".
static int gguf_check_values(GgufModel *m, const char *path) {
    for (int slot = 0; slot < N_GLOBAL_SLOTS + N_LAYER_SLOTS; slot++) {
        bool global = slot < N_GLOBAL_SLOTS;
        for (int l = 0; l < (global ? 1 : m->config.n_layers); l++) {
            const GgufTensor *t = gguf_tensor(m, slot, global ? -1 : l);
            char matrix[160];
            if (global) {
                snprintf(matrix, sizeof matrix, "tensor '%s'", GGUF_GLOBAL_TENSORS[slot]);
            } else {
                snprintf(matrix, sizeof matrix, "tensor 'blk.%d.%s'", l,
                         GGUF_LAYER_TENSORS[slot - N_GLOBAL_SLOTS]);
            }
            Matrix view = gguf_matrix(t);
            if (t->data != NULL && check_matrix(matrix, &view, path)) {
                return -1;
            }
        }
    }
    return 0;
}

// A mapped file that another process truncates raises SIGBUS when a page that is gone is read.
// A signal handler can reach only static storage, so the message is written there, once, before
// the weights are read: this is the program's one piece of global state.
static char model_changed_message[512];
static size_t model_changed_length;

static void report_model_changed(int signal_number) {
    (void)signal_number;
    ssize_t written = write(STDERR_FILENO, model_changed_message, model_changed_length);
    (void)written;
    _exit(EXIT_DATA);
}

static void watch_for_truncation(const char *path) {
    int length = snprintf(model_changed_message, sizeof model_changed_message,
                          "run: %s changed while it was being read (truncated or rewritten by "
                          "another program?)\n",
                          path);
    model_changed_length = length > 0 && (size_t)length < sizeof model_changed_message
                               ? (size_t)length
                               : strlen(model_changed_message);
    struct sigaction action = {.sa_handler = report_model_changed};
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, NULL);
}

static void free_checkpoint(Checkpoint *ckpt);

static int load_checkpoint(const char *path, Checkpoint *ckpt) {
    memset(ckpt, 0, sizeof *ckpt);
    size_t size;
    int fd = open_regular_file(path, &size);
    if (fd < 0) {
        return -1;
    }
    void *mapping = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (mapping == MAP_FAILED) {
        return report_error("%s: cannot map %zu bytes: %s", path, size, strerror(errno));
    }
    watch_for_truncation(path);
    ckpt->mapping = mapping;
    ckpt->mapping_size = size;
    if (parse_checkpoint(mapping, size, path, ckpt)) {
        munmap(mapping, size);
        memset(ckpt, 0, sizeof *ckpt);
        return -1;
    }
    bool checked = ckpt->vocab_only ||
                   (ckpt->gguf != NULL ? gguf_check_values(ckpt->gguf, path) == 0
                                       : check_weights(&ckpt->config, &ckpt->weights, path) == 0);
    if (!checked || check_rope_divisors(&ckpt->config, &ckpt->weights, path)) {
        free_checkpoint(ckpt); // a GGUF file's tables too
        return -1;
    }
    return 0;
}

static void free_checkpoint(Checkpoint *ckpt) {
    if (ckpt->mapping != NULL) {
        munmap(ckpt->mapping, ckpt->mapping_size);
    }
    if (ckpt->gguf != NULL) {
        free_gguf(ckpt->gguf);
        free(ckpt->gguf);
    }
    memset(ckpt, 0, sizeof *ckpt);
}

#ifndef RUN_PLAIN
// This machine's memory less the file's mapping, the activations and a KV cache at full
// context: what copies of weights may take (0 where even those do not fit; all of size_t where
// the memory is unknown).
static size_t memory_room(const Transformer *t) {
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_size <= 0) {
        return SIZE_MAX;
    }
    size_t memory = (size_t)pages * (size_t)page_size;
    size_t taken = t->checkpoint->mapping_size +
                   run_state_bytes(&t->config, run_state_threads(&t->state)) +
                   kv_bytes_at(&t->config, t->state.kv.format, t->config.seq_len);
    return taken < memory ? memory - taken : 0;
}
#endif

// Loads the model at path with a KV cache in the given format, and reserves the cache's first
// page (positions 0..KV_PAGE-1, or all of them for a shorter context). Returns 0, or -1 after a
// report.
static void free_transformer(Transformer *t);

static int build_transformer(Transformer *t, const char *path, KvFormat format) {
    memset(t, 0, sizeof *t);
    t->checkpoint = checked_calloc(1, sizeof *t->checkpoint, "the checkpoint");
    if (t->checkpoint == NULL || load_checkpoint(path, t->checkpoint)) {
        free(t->checkpoint);
        t->checkpoint = NULL;
        return -1;
    }
    t->config = t->checkpoint->config;
    t->weights = t->checkpoint->weights;
    if (t->checkpoint->vocab_only) {
        return 0; // nothing to run: --encode and --info only
    }
    int first_page = t->config.seq_len < KV_PAGE ? t->config.seq_len : KV_PAGE;
    bool failed = build_run_state(&t->state, &t->config, format) != 0;
#ifndef RUN_PLAIN
    if (!failed) {
        choose_matvec(t);
        choose_prefetch(t);
        failed = interleave_weights(t, memory_room(t)) != 0;
    }
#endif
    if (failed || reserve_positions(t, first_page)) { // which counts the copies of weights
        free_transformer(t);
        return -1;
    }
    return 0;
}

static void free_transformer(Transformer *t) {
    free_run_state(&t->state);
    if (t->checkpoint != NULL) {
        free_checkpoint(t->checkpoint);
        free(t->checkpoint);
    }
    t->checkpoint = NULL;
}

static int reserve_positions(Transformer *t, int n) {
    KvCache *kv = &t->state.kv;
    size_t pages = (size_t)(n + kv->page_positions - 1) / kv->page_positions;
    size_t needed = t->checkpoint->mapping_size + weight_copy_bytes(&t->state) +
                    run_state_bytes(&t->config, run_state_threads(&t->state)) +
                    kv_pages_held(kv, (int)pages) * kv_page_bytes(kv);
    char what[128];
    snprintf(what, sizeof what, "the weights, activations and a KV cache of %d positions", n);
    if (check_memory(needed, what)) {
        return -1;
    }
    return kv_reserve(kv, n);
}
// ----------------------------------------------------------------------------
// The tokenizer file
//
// tokenizer.bin: int32 max_token_length, then for each of the V ids in order: float32 score,
// int32 length, the piece's bytes. The project's checkpoints embed the same bytes.

// "<0xAB>" -> 0xAB, anything else -> -1.
static int parse_byte_piece(const char *piece, int length) {
    if (length != 6 || memcmp(piece, "<0x", 3) != 0 || piece[5] != '>' ||
        !isxdigit((unsigned char)piece[3]) || !isxdigit((unsigned char)piece[4])) {
        return -1;
    }
    char hex[3] = {piece[3], piece[4], '\0'};
    return (int)strtol(hex, NULL, 16);
}

static void free_pre_tokenizer(PreTokenizer *p); // "Byte-level vocabularies and pre-tokenizers"

static void free_tokenizer(Tokenizer *t) {
    free(t->pieces);
    free(t->piece_text);
    free(t->piece_lengths);
    free(t->scores);
    free(t->byte_value);
    free(t->mergeable);
    free(t->control);
    free(t->ends_generation);
    free(t->specials);
    shfree(t->piece_ids);
    hmfree(t->merges);
    free_pre_tokenizer(t->pre);
    memset(t, 0, sizeof *t);
}

// Walks the records of a tokenizer.bin once to check every length and count the pieces, so that
// nothing is allocated for a file that would be rejected.
static int scan_tokenizer(const unsigned char *data, size_t size, const char *name,
                          long long *n_pieces, size_t *text_bytes) {
    if (size < 4) {
        return report_error("%s: tokenizer is %zu bytes, too short for its header", name, size);
    }
    size_t offset = 4;
    *n_pieces = 0;
    *text_bytes = 0;
    while (offset < size) {
        if (size - offset < 8) {
            return report_error("%s: tokenizer piece %lld is cut off at byte %zu", name, *n_pieces,
                                offset);
        }
        float score = read_f32(data + offset);
        int32_t length = (int32_t)read_u32(data + offset + 4);
        offset += 8;
        if (!isfinite(score)) {
            return report_error("%s: tokenizer piece %lld has a score that is not finite", name,
                                *n_pieces);
        }
        if (length < 0 || (size_t)length > size - offset) {
            return report_error("%s: tokenizer piece %lld has length %d, running past the end "
                                "of the file",
                                name, *n_pieces, length);
        }
        offset += (size_t)length;
        *text_bytes += (size_t)length + 1;
        (*n_pieces)++;
    }
    return 0;
}

// The arrays every tokenizer has: V pieces of text_bytes in all. 0, or -1 after a report.
static int allocate_pieces(Tokenizer *t, int vocab_size, size_t text_bytes) {
    t->vocab_size = vocab_size;
    t->pieces = checked_calloc(vocab_size, sizeof(char *), "tokenizer");
    t->piece_text = checked_calloc(text_bytes, 1, "tokenizer");
    t->piece_lengths = checked_calloc(vocab_size, sizeof(int), "tokenizer");
    t->scores = checked_calloc(vocab_size, sizeof(float), "tokenizer");
    t->byte_value = checked_calloc(vocab_size, sizeof(int16_t), "tokenizer");
    t->mergeable = checked_calloc(vocab_size, sizeof(bool), "tokenizer");
    return t->pieces && t->piece_text && t->piece_lengths && t->scores && t->byte_value &&
                   t->mergeable
               ? 0
               : -1;
}

// Builds a tokenizer from tokenizer.bin bytes (a file, or the section embedded in a checkpoint).
// vocab_size, bos_id and eos_id come from the model, and the file must have exactly V pieces.
static int build_tokenizer(Tokenizer *t, const unsigned char *data, size_t size, const char *name,
                           int vocab_size, int bos_id, int eos_id) {
    memset(t, 0, sizeof *t);
    long long n_pieces = 0;
    size_t text_bytes = 0;
    if (scan_tokenizer(data, size, name, &n_pieces, &text_bytes)) {
        return -1;
    }
    if (n_pieces != vocab_size) {
        return report_error("%s: tokenizer has %lld pieces, the model's vocab_size is %d", name,
                            n_pieces, vocab_size);
    }
    t->bos_id = bos_id;
    t->eos_id = eos_id;
    t->unk_id = 0; // sentencepiece's convention, shared by every such tokenizer this program reads
    t->add_bos = true, t->add_space_prefix = true, t->parse_specials = true;
    if (allocate_pieces(t, vocab_size, text_bytes)) {
        free_tokenizer(t);
        return -1;
    }
    for (int b = 0; b < 256; b++) {
        t->byte_pieces[b] = -1;
    }
    size_t offset = 4;
    char *text = t->piece_text;
    for (int id = 0; id < vocab_size; id++) {
        int length = (int)read_u32(data + offset + 4);
        t->scores[id] = read_f32(data + offset);
        memcpy(text, data + offset + 8, length);
        text[length] = '\0';
        offset += 8 + (size_t)length;
        t->pieces[id] = text;
        t->piece_lengths[id] = length;
        text += length + 1;

        int byte = parse_byte_piece(t->pieces[id], length);
        t->byte_value[id] = (int16_t)byte;
        if (byte >= 0 && t->byte_pieces[byte] < 0) {
            t->byte_pieces[byte] = id;
        }
        bool special = id == t->unk_id || id == bos_id || id == eos_id;
        t->mergeable[id] = byte < 0 && !special && length > 0;
        // The first of two identical pieces wins, as in sentencepiece.
        if (t->mergeable[id] && shgeti(t->piece_ids, t->pieces[id]) < 0) {
            shput(t->piece_ids, t->pieces[id], id);
            t->max_piece_length = length > t->max_piece_length ? length : t->max_piece_length;
        }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// Byte-level vocabularies and pre-tokenizers
//
// A byte-level vocabulary (GGUF tokenizer.ggml.model "gpt2") writes its tokens in GPT-2's
// byte-to-unicode alphabet: the 188 printable bytes stand for themselves and the other 68, in
// order, for U+0100 onwards, so that a space is written 'Ġ' (U+0120). The tokenizer keeps each
// token's bytes, the alphabet's spelling only for reading the merges. Token types (tokenizer.ggml.
// token_type): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte. Control and
// user-defined tokens are written as they read in a prompt (<|endoftext|>), not in the alphabet.
//
// Pre-tokenizers cut text with the regular expressions the vocabularies are defined by, through
// PCRE2 (Unicode properties, UTF-8, JIT-compiled): each expression cuts every piece the one
// before it left into its matches and the text between them, all kept. The table holds those of
// tokenizer.ggml.pre values this program knows, as Hugging Face's tokenizer.json files and
// llama.cpp's llm_tokenizer_bpe write them.

enum {
    TOKEN_NORMAL = 1,
    TOKEN_UNKNOWN = 2,
    TOKEN_CONTROL = 3,
    TOKEN_USER_DEFINED = 4,
    TOKEN_UNUSED = 5
};

#define GPT2_REGEX                                                                                 \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define LLAMA3_REGEX(digits)                                                                       \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" digits                     \
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define MAX_PRE_REGEXES 3

typedef struct {
    const char *name;
    const char *regexes[MAX_PRE_REGEXES];
    bool ignore_merges; // a pre-token that is a whole token is that token, merged or not
    bool add_bos;       // encoding adds BOS unless tokenizer.ggml.add_bos_token says otherwise
} PreTokenizerKind;

// (With the names llama.cpp gives the same expressions.)
static const PreTokenizerKind PRE_TOKENIZERS[] = {
    {"gpt-2", {GPT2_REGEX}, false, false},
    {"mpt", {GPT2_REGEX}, false, false},
    {"olmo", {GPT2_REGEX}, false, false},
    {"phi-2", {GPT2_REGEX}, false, false},
    {"roberta-bpe", {GPT2_REGEX}, false, false},
    {"llama-bpe", {LLAMA3_REGEX("{1,3}")}, true, true}, // Llama 3: digits in runs of up to 3
    {"llama3", {LLAMA3_REGEX("{1,3}")}, true, true},
    {"llama-v3", {LLAMA3_REGEX("{1,3}")}, true, true},
    {"falcon3", {LLAMA3_REGEX("{1,3}")}, true, true},
    {"qwen2", {LLAMA3_REGEX("")}, false, false}, // Llama 3's, single digits
    {"deepseek-r1-qwen", {LLAMA3_REGEX("")}, false, false},
    {"smollm", {"\\p{N}", GPT2_REGEX}, false, false}, // every digit split off, then GPT-2's
    {"starcoder", {"\\p{N}", GPT2_REGEX}, false, false},
    {"refact", {"\\p{N}", GPT2_REGEX}, false, false},
    {"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2_REGEX, "[0-9][0-9][0-9]"}, false, false},
};

// A token by the hash of its bytes (FNV-1a), for pre-tokenizers that take whole tokens.
typedef struct {
    uint64_t key;
    int value;
} WholeToken;

struct PreTokenizer {
    pcre2_code *regexes[MAX_PRE_REGEXES];
    int n_regexes;
    bool ignore_merges;
    WholeToken *whole_tokens; // stb_ds map, with ignore_merges: normal tokens by their bytes
};

// (Bits 31 and 63 are cleared: stb_ds hashes an 8-byte key by shifting its bytes as ints, and a
// byte of 128 or more shifted by 24 overflows one.)
static uint64_t bytes_hash(const unsigned char *bytes, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ bytes[i]) * 0x100000001b3ull;
    }
    return h & 0x7fffffff7fffffffull;
}

static void free_pre_tokenizer(PreTokenizer *p) {
    for (int i = 0; p != NULL && i < p->n_regexes; i++) {
        pcre2_code_free(p->regexes[i]);
    }
    if (p != NULL) {
        hmfree(p->whole_tokens);
    }
    free(p);
}

// The kind that tokenizer.ggml.pre names (absent: GPT-2's), or NULL after a report.
static const PreTokenizerKind *pre_tokenizer_kind(const char *pre, size_t length,
                                                  const char *name) {
    size_t n_kinds = sizeof PRE_TOKENIZERS / sizeof PRE_TOKENIZERS[0];
    for (size_t k = 0; k < n_kinds; k++) {
        if (pre == NULL || gguf_string_is(pre, length, PRE_TOKENIZERS[k].name)) {
            return &PRE_TOKENIZERS[k];
        }
    }
    char shown[41];
    report_error("%s: tokenizer.ggml.pre is \"%s\"; this program knows gpt-2, llama-bpe, qwen2, "
                 "smollm, starcoder and falcon",
                 name, gguf_printable(shown, sizeof shown, pre, length));
    return NULL;
}

static PreTokenizer *build_pre_tokenizer(const PreTokenizerKind *kind, const char *name) {
    PreTokenizer *p = checked_calloc(1, sizeof *p, "the pre-tokenizer");
    for (int i = 0; p != NULL && i < MAX_PRE_REGEXES && kind->regexes[i] != NULL; i++) {
        int error;
        PCRE2_SIZE offset;
        p->regexes[i] =
            pcre2_compile((PCRE2_SPTR)kind->regexes[i], PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, NULL);
        if (p->regexes[i] == NULL) {
            PCRE2_UCHAR message[160];
            pcre2_get_error_message(error, message, sizeof message);
            report_error("%s: the %s pre-tokenizer's expression does not compile: %s", name,
                         kind->name, (const char *)message);
            free_pre_tokenizer(p);
            return NULL;
        }
        pcre2_jit_compile(p->regexes[i], PCRE2_JIT_COMPLETE); // without a JIT, interpreted
        p->n_regexes++;
    }
    if (p != NULL) {
        p->ignore_merges = kind->ignore_merges;
    }
    return p;
}

// ---- The stand-in alphabet

static bool byte_is_printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

// The code point that stands for byte b.
static uint32_t byte_stand_in(int b) {
    if (byte_is_printable(b)) {
        return (uint32_t)b;
    }
    uint32_t n = 0;
    for (int c = 0; c < b; c++) {
        n += !byte_is_printable(c);
    }
    return 256 + n;
}

// A code point below U+0800 in UTF-8, out (3 bytes): its length.
static int small_code_point_utf8(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = '\0';
        return 1;
    }
    out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = '\0';
    return 2;
}

// A normal token's text turned back into its bytes, out (at most length bytes): each character
// of the alphabet becomes its byte, anything else stays as it is. Returns the byte count.
static size_t alphabet_to_bytes(const char *text, size_t length, const int16_t *byte_of,
                                char *out) {
    size_t n = 0;
    for (size_t i = 0; i < length;) {
        unsigned char c = (unsigned char)text[i];
        uint32_t cp = c;
        int width = 1;
        if (c >= 0xC0 && c < 0xE0 && i + 1 < length &&
            ((unsigned char)text[i + 1] & 0xC0) == 0x80) {
            cp = (uint32_t)(c & 0x1F) << 6 | ((unsigned char)text[i + 1] & 0x3F);
            width = 2;
        }
        if (cp < 0x144 && byte_of[cp] >= 0 && (width == 2 || cp < 0x80)) {
            out[n++] = (char)byte_of[cp];
        } else {
            memcpy(out + n, text + i, width);
            n += width;
        }
        i += width;
    }
    return n;
}

// ---- Building the tokenizer

// The texts llama.cpp ends a turn at besides EOS; they are control tokens whatever their type.
static bool ends_a_turn(const char *text, size_t length) {
    static const char *const texts[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>", "<end_of_turn>",
                                        "<|endoftext|>", "<|eom_id|>", "<EOT>"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        if (gguf_string_is(text, length, texts[i])) {
            return true;
        }
    }
    return false;
}

static int compare_special_length(const void *a, const void *b, void *pieces) {
    const int *lengths = pieces;
    int x = *(const int *)a, y = *(const int *)b;
    return lengths[y] != lengths[x] ? lengths[y] - lengths[x] : x - y;
}

// The arrays of a byte-level tokenizer, and the alphabet's spelling of every token (freed once
// the merges are read).
static int allocate_byte_tokenizer(Tokenizer *t, int vocab_size, size_t text_bytes,
                                   char **alphabet) {
    int status = allocate_pieces(t, vocab_size, text_bytes);
    t->control = checked_calloc(vocab_size, sizeof(bool), "tokenizer");
    t->ends_generation = checked_calloc(vocab_size, sizeof(bool), "tokenizer");
    t->specials = checked_calloc(vocab_size, sizeof(int), "tokenizer");
    *alphabet = checked_calloc(text_bytes, 1, "tokenizer");
    return status == 0 && t->control && t->ends_generation && t->specials && *alphabet ? 0 : -1;
}

// Token id is found in prompts as it is written (its text must be in t->pieces already).
static void add_special(Tokenizer *t, int id) {
    if (t->piece_lengths[id] > 0) {
        t->specials[t->n_specials++] = id;
        t->special_starts[(unsigned char)t->pieces[id][0]] = true;
    }
}

// Token id's text from the vocabulary: its bytes in pieces, its alphabet spelling in alphabet
// (both NUL-terminated), and what its type makes it.
static void read_byte_token(Tokenizer *t, int id, const char *text, size_t length, int type,
                            const int16_t *byte_of, char **piece_at, char **alphabet_at) {
    bool turn = ends_a_turn(text, length);
    bool control = type == TOKEN_CONTROL || type == TOKEN_UNKNOWN || turn;
    bool normal = !control && type != TOKEN_USER_DEFINED && type != TOKEN_UNUSED;
    memcpy(*alphabet_at, text, length);
    size_t n = normal ? alphabet_to_bytes(text, length, byte_of, *piece_at) : length;
    if (!normal) {
        memcpy(*piece_at, text, length);
    }
    t->pieces[id] = *piece_at;
    t->piece_lengths[id] = (int)n;
    t->byte_value[id] = -1;
    t->mergeable[id] = normal && length > 0;
    t->control[id] = control;
    t->ends_generation[id] = turn || id == t->eos_id;
    if (control || type == TOKEN_USER_DEFINED) {
        add_special(t, id);
    }
    if (t->mergeable[id] && shgeti(t->piece_ids, *alphabet_at) < 0) {
        shput(t->piece_ids, *alphabet_at, id);
        t->max_piece_length = (int)length > t->max_piece_length ? (int)length : t->max_piece_length;
    }
    *piece_at += n + 1;
    *alphabet_at += length + 1;
}

// A sentencepiece vocabulary's control and user-defined tokens, by their GGUF token types: found
// in prompts as they are written, and never made by merges. (Its unknown piece stays U+FFFD.)
static int mark_special_tokens(Tokenizer *t, const unsigned char *types) {
    t->control = checked_calloc(t->vocab_size, sizeof(bool), "tokenizer");
    t->ends_generation = checked_calloc(t->vocab_size, sizeof(bool), "tokenizer");
    t->specials = checked_calloc(t->vocab_size, sizeof(int), "tokenizer");
    if (t->control == NULL || t->ends_generation == NULL || t->specials == NULL) {
        return -1;
    }
    for (int id = 0; id < t->vocab_size; id++) {
        int type = (int)read_u32(types + 4 * (size_t)id);
        size_t length = (size_t)t->piece_lengths[id];
        bool turn = ends_a_turn(t->pieces[id], length);
        t->control[id] = (type == TOKEN_CONTROL || turn) && id != t->unk_id;
        t->ends_generation[id] = turn || id == t->eos_id;
        if (t->control[id] || type == TOKEN_USER_DEFINED) {
            add_special(t, id);
            t->mergeable[id] = false;
        }
    }
    qsort_r(t->specials, t->n_specials, sizeof(int), compare_special_length, t->piece_lengths);
    return 0;
}

// Every token, and the one-byte token of each byte (which must exist: every text is bytes).
static int read_byte_tokens(Tokenizer *t, const GgufByteVocabulary *v, char *alphabet,
                            const char *name) {
    int16_t byte_of[0x144];
    for (int i = 0; i < 0x144; i++) {
        byte_of[i] = -1;
    }
    for (int b = 0; b < 256; b++) {
        byte_of[byte_stand_in(b)] = (int16_t)b;
    }
    sh_new_strdup(t->piece_ids); // (an arena's blocks trip UBSan: stb_ds writes past a char[8])
    const unsigned char *p = v->tokens;
    char *piece_at = t->piece_text, *alphabet_at = alphabet;
    for (int id = 0; id < t->vocab_size; id++) {
        size_t length = (size_t)read_u64(p);
        int type = v->types != NULL ? (int)read_u32(v->types + 4 * (size_t)id) : TOKEN_NORMAL;
        read_byte_token(t, id, (const char *)p + 8, length, type, byte_of, &piece_at, &alphabet_at);
        p += 8 + length;
    }
    int missing = 0;
    for (int b = 0; b < 256; b++) {
        char stand_in[3];
        small_code_point_utf8(byte_stand_in(b), stand_in);
        t->byte_pieces[b] = lookup_piece(t, stand_in);
        missing += t->byte_pieces[b] < 0;
    }
    if (missing > 64) { // a few control bytes may lack a token; most bytes may not
        return report_error("%s: %d of the 256 bytes have no token in the vocabulary: not a "
                            "byte-level vocabulary",
                            name, missing);
    }
    qsort_r(t->specials, t->n_specials, sizeof(int), compare_special_length, t->piece_lengths);
    return 0;
}

// Merge `rank`, "left right" in the alphabet, into t->merges: the ids of left, right and of the
// token they make.
static int read_merge(Tokenizer *t, const char *text, size_t length, uint64_t rank,
                      const char *name, char *pair, size_t capacity) {
    char shown[41];
    const char *space = length > 1 ? memchr(text + 1, ' ', length - 1) : NULL;
    if (space == NULL) {
        return report_error("%s: tokenizer.ggml.merges[%llu] \"%s\" is not two tokens and a space",
                            name, (unsigned long long)rank,
                            gguf_printable(shown, sizeof shown, text, length));
    }
    if (length >= capacity) { // longer than any two tokens
        return report_error("%s: tokenizer.ggml.merges[%llu] is %zu bytes, longer than two tokens",
                            name, (unsigned long long)rank, length);
    }
    size_t left_length = (size_t)(space - text), right_length = length - left_length - 1;
    memcpy(pair, text, left_length);
    pair[left_length] = '\0';
    int left = lookup_piece(t, pair);
    memcpy(pair, space + 1, right_length);
    pair[right_length] = '\0';
    int right = lookup_piece(t, pair);
    memcpy(pair, text, left_length);
    memcpy(pair + left_length, space + 1, right_length);
    pair[left_length + right_length] = '\0';
    int merged = lookup_piece(t, pair);
    if (left < 0 || right < 0 || merged < 0) {
        return report_error("%s: tokenizer.ggml.merges[%llu] \"%s\" names a token that is not in "
                            "the vocabulary",
                            name, (unsigned long long)rank,
                            gguf_printable(shown, sizeof shown, text, length));
    }
    uint64_t key = (uint64_t)left << 32 | (uint32_t)right;
    if (hmgeti(t->merges, key) < 0) { // of two identical merges the first ranks
        MergeEntry entry = {.key = key, .value = {(int)rank, merged}};
        hmputs(t->merges, entry);
    }
    return 0;
}

// Builds a byte-level BPE tokenizer from a GGUF vocabulary (its arrays checked on load).
// add_bos and add_eos are the file's keys (-1: absent, the pre-tokenizer's default then).
static int build_byte_level_tokenizer(Tokenizer *t, const GgufByteVocabulary *v, const char *name,
                                      const Config *c, int add_bos, int add_eos) {
    *t = (Tokenizer){.bos_id = c->bos_id,
                     .eos_id = c->eos_id,
                     .unk_id = -1,
                     .byte_level = true,
                     .parse_specials = true};
    const PreTokenizerKind *kind = pre_tokenizer_kind(v->pre, v->pre_length, name);
    if (kind == NULL) {
        return -1;
    }
    size_t text_bytes = 0;
    const unsigned char *p = v->tokens;
    for (int id = 0; id < c->vocab_size; id++) { // lengths checked against the file on load
        size_t length = (size_t)read_u64(p);
        text_bytes += length + 1;
        p += 8 + length;
    }
    char *alphabet = NULL;
    t->add_bos = add_bos >= 0 ? add_bos : kind->add_bos;
    t->add_eos = add_eos > 0;
    int status = allocate_byte_tokenizer(t, c->vocab_size, text_bytes, &alphabet);
    status = status || read_byte_tokens(t, v, alphabet, name);
    size_t capacity = 2 * (size_t)t->max_piece_length + 2;
    char *pair = status == 0 ? checked_calloc(capacity, 1, "tokenizer") : NULL;
    status = status || pair == NULL;
    p = v->merges;
    for (uint64_t rank = 0; status == 0 && rank < v->n_merges; rank++) {
        size_t length = (size_t)read_u64(p);
        status = read_merge(t, (const char *)p + 8, length, rank, name, pair, capacity);
        p += 8 + length;
    }
    free(pair);
    if (status == 0) {
        t->pre = build_pre_tokenizer(kind, name);
        status = t->pre == NULL ? -1 : 0;
    }
    for (int id = 0; status == 0 && kind->ignore_merges && id < t->vocab_size; id++) {
        uint64_t key = bytes_hash((const unsigned char *)t->pieces[id], t->piece_lengths[id]);
        if (t->mergeable[id] && hmgeti(t->pre->whole_tokens, key) < 0) {
            hmput(t->pre->whole_tokens, key, id); // (a collision leaves the later one merged)
        }
    }
    shfree(t->piece_ids); // the alphabet's spellings, needed only for the merges
    free(alphabet);
    if (status != 0) {
        free_tokenizer(t);
    }
    return status != 0 ? -1 : 0;
}

// ---- Encoding

// One pre-token, text[0..n): the token it is, when the pre-tokenizer takes whole tokens as they
// are (Llama 3's) and it is one; else its bytes merged.
static int encode_byte_pretoken(const Tokenizer *t, const unsigned char *text, size_t n,
                                int *tokens) {
    WholeToken *whole = t->pre->whole_tokens;
    ptrdiff_t slot = whole != NULL ? hmgeti(whole, bytes_hash(text, n)) : -1;
    if (slot >= 0) {
        int id = whole[slot].value;
        if ((size_t)t->piece_lengths[id] == n && memcmp(t->pieces[id], text, n) == 0) {
            tokens[0] = id;
            return 1;
        }
    }
    return encode_pretoken(t, text, n, tokens);
}

// The pieces of text[start..end) that regular expressions level and after leave, encoded.
static int split_and_encode(const Tokenizer *t, int level, const unsigned char *text, size_t start,
                            size_t end, pcre2_match_data *match, int *tokens) {
    const PreTokenizer *pre = t->pre;
    if (level >= pre->n_regexes || level >= MAX_PRE_REGEXES) {
        return encode_byte_pretoken(t, text + start, end - start, tokens);
    }
    int n = 0;
    size_t pos = start;
    while (pos < end) {
        int found = pcre2_match(pre->regexes[level], text, end, pos, 0, match, NULL);
        if (found == PCRE2_ERROR_NOMATCH) {
            break;
        }
        if (found < 0) {
            return report_error("the pre-tokenizer failed on the text at byte %zu (PCRE2 error %d)",
                                pos, found);
        }
        PCRE2_SIZE *span = pcre2_get_ovector_pointer(match);
        size_t from = span[0], to = span[1] > span[0] ? span[1] : span[0] + 1;
        int gap =
            from > pos ? split_and_encode(t, level + 1, text, pos, from, match, tokens + n) : 0;
        int piece =
            gap < 0 ? -1 : split_and_encode(t, level + 1, text, from, to, match, tokens + n + gap);
        if (gap < 0 || piece < 0) {
            return -1;
        }
        n += gap + piece;
        pos = to;
    }
    int rest = pos < end ? split_and_encode(t, level + 1, text, pos, end, match, tokens + n) : 0;
    return rest < 0 ? -1 : n + rest;
}

// Plain text between control tokens, in the vocabulary's way.
static int encode_plain(const Tokenizer *t, const char *text, size_t length, int *tokens) {
    if (!t->byte_level) {
        return encode_sentencepiece(t, text, length, tokens);
    }
    if (length == 0) {
        return 0;
    }
    pcre2_match_data *match = pcre2_match_data_create(2, NULL);
    if (match == NULL) {
        return report_error("out of memory for the pre-tokenizer's match");
    }
    int n = split_and_encode(t, 0, (const unsigned char *)text, 0, length, match, tokens);
    pcre2_match_data_free(match);
    return n;
}

// The control or user-defined token written at text[0..length), the longest, or -1.
static int special_at(const Tokenizer *t, const char *text, size_t length) {
    for (int i = 0; i < t->n_specials; i++) {
        int id = t->specials[i];
        size_t n = (size_t)t->piece_lengths[id];
        if (n <= length && memcmp(text, t->pieces[id], n) == 0 &&
            (t->parse_specials || !t->control[id])) {
            return id;
        }
    }
    return -1;
}

static int encode_pieces(const Tokenizer *t, const char *text, size_t length, int *tokens) {
    int n = 0;
    size_t plain = 0;
    for (size_t pos = 0; pos < length;) {
        int id = t->special_starts[(unsigned char)text[pos]]
                     ? special_at(t, text + pos, length - pos)
                     : -1;
        if (id < 0) {
            pos++;
            continue;
        }
        int count = encode_plain(t, text + plain, pos - plain, tokens + n);
        if (count < 0) {
            return -1;
        }
        n += count;
        tokens[n++] = id;
        pos += (size_t)t->piece_lengths[id];
        plain = pos;
    }
    int count = encode_plain(t, text + plain, length - plain, tokens + n);
    return count < 0 ? -1 : n + count;
}

// ----------------------------------------------------------------------------
// UTF-8

// Bytes in the UTF-8 character that lead starts: 1 to 4, or 0 if no character starts with it.
static int utf8_expected_length(unsigned char lead) {
    return lead < 0x80                    ? 1
           : lead >= 0xC2 && lead <= 0xDF ? 2
           : lead >= 0xE0 && lead <= 0xEF ? 3
           : lead >= 0xF0 && lead <= 0xF4 ? 4
                                          : 0;
}

// Whether byte may stand at position index (1 to 3) of the character that lead starts. The
// second byte's narrower ranges exclude overlong forms, surrogates and code points past U+10FFFF.
static bool utf8_continuation_ok(unsigned char lead, int index, unsigned char byte) {
    unsigned char low = 0x80, high = 0xBF;
    if (index == 1) {
        low = lead == 0xE0 ? 0xA0 : lead == 0xF0 ? 0x90 : 0x80;
        high = lead == 0xED ? 0x9F : lead == 0xF4 ? 0x8F : 0xBF;
    }
    return byte >= low && byte <= high;
}

// Bytes in the valid UTF-8 character that starts text[0..length), or 0 if none starts there.
static int utf8_char_length(const unsigned char *text, size_t length) {
    int expected = utf8_expected_length(text[0]);
    if (expected == 0 || (size_t)expected > length) {
        return 0;
    }
    for (int i = 1; i < expected; i++) {
        if (!utf8_continuation_ok(text[0], i, text[i])) {
            return 0;
        }
    }
    return expected;
}

// Writes the printable form of one complete character (or one ASCII byte) to out.
static size_t emit_character(const unsigned char *bytes, int length, char *out) {
    if (length == 1 && (bytes[0] < 0x20 || bytes[0] == 0x7F) && bytes[0] != '\n' &&
        bytes[0] != '\t') {
        return (size_t)snprintf(out, 8, "\\x%02X", bytes[0]);
    }
    memcpy(out, bytes, length);
    return (size_t)length;
}

// Feeds one byte; writes what can be printed now to out (room for 16 bytes) and returns its length.
static size_t utf8_push(Utf8Stream *s, unsigned char byte, char *out) {
    size_t written = 0;
    if (s->n_pending > 0) {
        unsigned char lead = s->pending[0];
        if (utf8_continuation_ok(lead, s->n_pending, byte)) {
            s->pending[s->n_pending++] = byte;
            int expected = utf8_expected_length(lead);
            if (s->n_pending < expected) {
                return 0;
            }
            s->n_pending = 0;
            return emit_character(s->pending, expected, out);
        }
        // The character broke off: replace what came of it, then treat this byte afresh.
        memcpy(out, REPLACEMENT_CHARACTER, 3);
        written = 3;
        s->n_pending = 0;
    }
    int expected = utf8_expected_length(byte);
    if (expected == 1) {
        return written + emit_character(&byte, 1, out + written);
    }
    if (expected > 1) {
        s->pending[0] = byte;
        s->n_pending = 1;
        return written;
    }
    memcpy(out + written, REPLACEMENT_CHARACTER, 3);
    return written + 3;
}

// Ends the stream: an incomplete character left over becomes U+FFFD.
static size_t utf8_flush(Utf8Stream *s, char *out) {
    if (s->n_pending == 0) {
        return 0;
    }
    s->n_pending = 0;
    memcpy(out, REPLACEMENT_CHARACTER, 3);
    return 3;
}

static size_t count_utf8_characters(const unsigned char *text, size_t length) {
    size_t count = 0;
    for (size_t i = 0; i < length; count++) {
        int n = utf8_char_length(text + i, length - i);
        i += n > 0 ? (size_t)n : 1; // a byte that starts no character prints as one U+FFFD
    }
    return count;
}

// ----------------------------------------------------------------------------
// Sorting: the BPE merge queue (a binary heap) and the sampler's candidates (a heapsort)

static bool better_candidate(const MergeCandidate *a, const MergeCandidate *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(MergeState *m, MergeCandidate candidate) {
    int i = m->heap_size++;
    while (i > 0 && better_candidate(&candidate, &m->heap[(i - 1) / 2])) {
        m->heap[i] = m->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    m->heap[i] = candidate;
}

static MergeCandidate heap_pop(MergeState *m) {
    MergeCandidate top = m->heap[0], last = m->heap[--m->heap_size];
    int i = 0;
    for (;;) {
        int child = 2 * i + 1;
        if (child >= m->heap_size) {
            break;
        }
        if (child + 1 < m->heap_size && better_candidate(&m->heap[child + 1], &m->heap[child])) {
            child++;
        }
        if (!better_candidate(&m->heap[child], &last)) {
            break;
        }
        m->heap[i] = m->heap[child];
        i = child;
    }
    m->heap[i] = last;
    return top;
}

static int compare_candidates(const void *a, const void *b) {
    const Candidate *x = a, *y = b;
    if (x->probability != y->probability) {
        return x->probability > y->probability ? -1 : 1;
    }
    return x->id - y->id;
}

// Restores the heap order below root: the candidate that sorts last rises to the top.
static void sift_down(Candidate *c, int root, int n) {
    for (int child; (child = 2 * root + 1) < n; root = child) {
        if (child + 1 < n && compare_candidates(&c[child + 1], &c[child]) > 0) {
            child++; // the later of the two in sorted order
        }
        if (compare_candidates(&c[root], &c[child]) >= 0) {
            return;
        }
        Candidate swap = c[root];
        c[root] = c[child];
        c[child] = swap;
    }
}

// Sorts candidates most likely first (ties by id) in place. A heapsort, because glibc's qsort
// may allocate a buffer, and sampling must not allocate once per token.
static void sort_candidates(Candidate *c, int n) {
    for (int i = n / 2 - 1; i >= 0; i--) {
        sift_down(c, i, n);
    }
    for (int end = n - 1; end > 0; end--) {
        Candidate swap = c[0];
        c[0] = c[end];
        c[end] = swap;
        sift_down(c, 0, end);
    }
}

// ----------------------------------------------------------------------------
// Inspection: perplexity, attention maps, and one attention head worked by hand

// -log softmax(logits)[target], in double so that long sums stay exact.
static double token_nll(const float *logits, int vocab_size, int target) {
    double max = logits[argmax(logits, vocab_size)], sum = 0.0;
    for (int i = 0; i < vocab_size; i++) {
        sum += exp(logits[i] - max);
    }
    return log(sum) + max - logits[target];
}

typedef struct {
    double total_nll; // nats, summed over the scored tokens
    long n_scored;    // tokens predicted: every token but the first
    long n_processed; // positions run through the model, windows overlapping
    int n_windows;
} EvalResult;

// Teacher forcing: the model sees the true tokens and is scored on predicting each next one.
// tokens[1..n) are scored in windows of at most S positions that start every stride tokens
// (stride <= S), each window starting from an empty cache. A window scores only the targets no
// earlier window reached, so with stride < S every target but those of the first window sees at
// least S - stride tokens of context; with stride = S the windows do not overlap, which is how
// training measures its validation loss.
// Returns 0, or -1 after a report when the KV cache for one window does not fit.
static int evaluate(Transformer *t, const int *tokens, int n, int stride, EvalResult *r) {
    int S = t->config.seq_len, V = t->config.vocab_size;
    *r = (EvalResult){0};
    if (reserve_positions(t, n - 1 < S ? n - 1 : S)) {
        return -1;
    }
    int scored_until = 0; // targets tokens[1..scored_until] are done
    for (int start = 0; scored_until < n - 1; start += stride) {
        int end = start + S < n - 1 ? start + S : n - 1; // this window's inputs: [start, end)
        for (int block = start; block < end; block += BLOCK) {
            int count = end - block < BLOCK ? end - block : BLOCK;
            bool any_scored = block + count > scored_until; // targets block+1..block+count
            float *logits = forward_block(t, tokens + block, count, block - start,
                                          any_scored ? LOGITS_ALL : LOGITS_NONE);
            if (any_scored &&
                check_logits(logits, (size_t)count * V, V, block - start, &t->state.kv)) {
                return -1;
            }
            for (int i = 0; any_scored && i < count; i++) {
                int target = block + i + 1;
                if (target > scored_until) {
                    r->total_nll += token_nll(logits + (size_t)i * V, V, tokens[target]);
                    r->n_scored++;
                }
            }
            r->n_processed += count;
        }
        scored_until = end;
        r->n_windows++;
    }
    return 0;
}

// What --attn, --explain and --attn-dump record while positions 0..R-1 run through the model.
// The attention weights live in the run state's scratch only until the next layer, so the
// inspector recomputes them with attend from each layer's queries and cache: the same function
// on the same numbers, so the same weights the model used.
struct Inspector {
    int n_positions;    // R
    float *queries;     // (L, R, H * hd) every head's query, after RoPE
    float *keys;        // (L, R, kv_dim) every kv head's key, after RoPE, read from the cache
    float *attention;   // (L, H, R, R) weights, row = query position, 0 past it; NULL: not wanted
    float *head_keys;   // (R, hd) scratch: one kv head's keys, gathered from the cache's pages
    float *head_values; // (R, hd) and its values
    float *head_out;    // (hd) scratch for attend's output, which the inspector does not keep
};

static void free_inspector(Inspector *in) {
    if (in != NULL) {
        free(in->queries);
        free(in->keys);
        free(in->attention);
        free(in->head_keys);
        free(in->head_values);
        free(in->head_out);
        free(in);
    }
}

static Inspector *new_inspector(const Config *c, int n_positions, bool with_attention) {
    size_t R = n_positions, q_dim = (size_t)c->n_heads * c->head_dim;
    Inspector *in = checked_calloc(1, sizeof(Inspector), "the attention record");
    if (in == NULL) {
        return NULL;
    }
    in->n_positions = n_positions;
    in->queries = checked_calloc((size_t)c->n_layers * R * q_dim, sizeof(float), "queries");
    in->keys = checked_calloc((size_t)c->n_layers * R * kv_dim_of(c), sizeof(float), "keys");
    in->head_keys = checked_calloc(R * c->head_dim, sizeof(float), "the attention record");
    in->head_values = checked_calloc(R * c->head_dim, sizeof(float), "the attention record");
    in->head_out = checked_calloc(c->head_dim, sizeof(float), "the attention record");
    if (with_attention) {
        in->attention = checked_calloc((size_t)c->n_layers * c->n_heads * R * R, sizeof(float),
                                       "the attention record");
    }
    if (in->queries == NULL || in->keys == NULL || in->head_keys == NULL ||
        in->head_values == NULL || in->head_out == NULL ||
        (with_attention && in->attention == NULL)) {
        free_inspector(in);
        return NULL;
    }
    return in;
}

static void inspect_layer(Inspector *in, const Config *c, int layer, int start, int n_positions,
                          const float *q, const KvCache *kv) {
    size_t R = in->n_positions, hd = c->head_dim, q_dim = (size_t)c->n_heads * hd;
    size_t kv_dim = kv_dim_of(c);
    int end = start + n_positions < in->n_positions ? start + n_positions : in->n_positions;
    for (int pos = start; pos < end; pos++) {
        memcpy(in->queries + ((size_t)layer * R + pos) * q_dim, q + (pos - start) * q_dim,
               q_dim * sizeof(float));
    }
    int group_size = group_size_of(c);
    ScoreRule rule = score_rule(c, layer);
    for (int kv_head = 0; kv_head < c->n_kv_heads && start < end; kv_head++) {
        // This kv head's keys and values so far, read through the cache's page mapping.
        kv_gather(kv, layer, KV_KEYS, kv_head, end, in->head_keys);
        kv_gather(kv, layer, KV_VALUES, kv_head, end, in->head_values);
        for (int pos = start; pos < end; pos++) {
            memcpy(in->keys + ((size_t)layer * R + pos) * kv_dim + kv_head * hd,
                   in->head_keys + pos * hd, hd * sizeof(float));
        }
        for (int h = 0; in->attention != NULL && h < group_size; h++) {
            int head = kv_head * group_size + h;
            for (int pos = start; pos < end; pos++) {
                float *row = in->attention + (((size_t)layer * c->n_heads + head) * R + pos) * R;
                attend(in->head_out, row, q + (pos - start) * q_dim + head * hd, in->head_keys,
                       in->head_values, hd, hd, pos + 1, &rule);
            }
        }
    }
}

// Whether the recorded queries and weights are finite numbers; reports when not (a weight
// large enough to overflow float32 gets this far, since inspection computes no logits).
static bool recording_finite(const Inspector *in, const Config *c) {
    size_t R = in->n_positions, queries = (size_t)c->n_layers * R * c->n_heads * c->head_dim;
    size_t weights = (size_t)c->n_layers * c->n_heads * R * R;
    if (first_nonfinite(in->queries, queries) < queries ||
        (in->attention != NULL && first_nonfinite(in->attention, weights) < weights)) {
        report_error("the attention of this prompt is not finite: the model's numbers overflow "
                     "float32");
        return false;
    }
    return true;
}

// Runs tokens[0..n) through the model in prompt blocks with an inspector that keeps the
// attention weights; NULL after a report when out of memory. Free it with free_inspector.
static Inspector *record_prompt_attention(Transformer *t, const int *tokens, int n) {
    Inspector *in = new_inspector(&t->config, n, true);
    if (in == NULL || reserve_positions(t, n)) {
        free_inspector(in);
        return NULL;
    }
    t->state.inspector = in;
    for (int start = 0; start < n; start += BLOCK) {
        if (interrupt_pending("the attention record")) {
            t->state.inspector = NULL;
            free_inspector(in);
            return NULL;
        }
        forward_block(t, tokens + start, n - start < BLOCK ? n - start : BLOCK, start, LOGITS_NONE);
    }
    t->state.inspector = NULL;
    return in;
}

// A token as a short printable label: spaces as '▁' (as sentencepiece writes them), newline as
// '↵', byte pieces by name, BOS and EOS as <s> and </s>; at most max_chars characters.
static void token_label(const Tokenizer *tok, int token, char *out, size_t capacity,
                        int max_chars) {
    if (tok == NULL || tok->pieces == NULL) {
        snprintf(out, capacity, "#%d", token);
        return;
    }
    bool named = token == tok->bos_id || token == tok->eos_id;
    const char *piece = token == tok->bos_id   ? "<s>"
                        : token == tok->eos_id ? "</s>"
                                               : tok->pieces[token];
    // A piece may hold a NUL byte (a GGUF file's pieces are counted strings): its length, not
    // its terminator, says where it ends.
    size_t piece_length = named ? strlen(piece) : (size_t)tok->piece_lengths[token], n = 0;
    int chars = 0;
    Utf8Stream stream = {0};
    const unsigned char *bytes = (const unsigned char *)piece;
    for (const unsigned char *p = bytes; p < bytes + piece_length && chars < max_chars; p++) {
        char buffer[16];
        size_t length;
        if (*p == ' ' || *p == '\n') {
            length = (size_t)snprintf(buffer, sizeof buffer, "%s", *p == ' ' ? "▁" : "↵");
        } else if (*p == '\0') {
            length = (size_t)snprintf(buffer, sizeof buffer, "\\x00");
        } else {
            length = utf8_push(&stream, *p, buffer);
        }
        if (length > 0 && n + length < capacity) {
            memcpy(out + n, buffer, length);
            n += length;
            chars++;
        }
    }
    out[n] = '\0';
}

#define LABEL_BYTES 64

// One label per prompt token, each at most max_chars characters.
static char (*make_labels(const Tokenizer *tok, const int *tokens, int n,
                          int max_chars))[LABEL_BYTES] {
    char(*labels)[LABEL_BYTES] = checked_calloc(n, LABEL_BYTES, "token labels");
    for (int i = 0; labels != NULL && i < n; i++) {
        token_label(tok, tokens[i], labels[i], LABEL_BYTES, max_chars);
    }
    return labels;
}

// Prints a label padded with spaces to width characters, on the left or the right.
static void print_padded(const char *label, int width, bool right_align) {
    int chars = (int)count_utf8_characters((const unsigned char *)label, strlen(label));
    int padding = width > chars ? width - chars : 0;
    printf("%*s%s%*s", right_align ? padding : 0, "", label, right_align ? 0 : padding, "");
}

static void describe_head_group(const Config *c, int head, char *out, size_t capacity) {
    int group_size = group_size_of(c), kv_head = head / group_size;
    int first = kv_head * group_size, last = first + group_size - 1;
    if (attention_kind(c) == ATTENTION_MHA) {
        snprintf(out, capacity, "reads kv head %d, its own (MHA)", kv_head);
    } else {
        snprintf(out, capacity, "reads kv head %d, shared by query heads %d-%d (%s)", kv_head,
                 first, last, attention_kind_name(c));
    }
}

// weights: (R, R) one head's attention, row = query position, column = key position.
// Up to 11 positions print as numbers; up to 64 as shades; beyond that the first 64 only.
static void print_attention_table(const float *weights, int R, int n, char (*labels)[LABEL_BYTES]) {
    static const char *shades[] = {" ", "░", "▒", "▓", "█"};
    bool numbers = n <= 11;
    int shown = n < 64 ? n : 64;
    printf("%10s", "");
    for (int key = 0; key < shown; key++) {
        if (numbers) {
            print_padded(labels[key], 6, true);
        } else {
            printf("%d", key % 10);
        }
    }
    printf("\n");
    for (int query = 0; query < shown; query++) {
        printf("%3d ", query);
        print_padded(labels[query], 6, false);
        for (int key = 0; key < shown; key++) {
            float w = weights[(size_t)query * R + key];
            if (key > query) {
                printf(numbers ? "     ·" : "·"); // masked: a query never reads later keys
            } else if (numbers) {
                printf("%6.2f", w);
            } else {
                printf("%s", shades[w >= 0.6f    ? 4
                                    : w >= 0.35f ? 3
                                    : w >= 0.15f ? 2
                                    : w >= 0.05f ? 1
                                                 : 0]);
            }
        }
        printf("\n");
    }
    if (!numbers) {
        printf("%10sshades: ' ' < 0.05 <= ░ < 0.15 <= ▒ < 0.35 <= ▓ < 0.6 <= █\n", "");
    }
    if (shown < n) {
        printf("%10s(first %d of %d positions shown)\n", "", shown, n);
    }
}

// Prints layer's selected head (or all heads when head < 0) of the recorded attention.
static void print_attention(const Inspector *in, const Config *c, const Tokenizer *tok,
                            const int *tokens, int n, int layer, int head) {
    char(*labels)[LABEL_BYTES] = make_labels(tok, tokens, n, 5);
    if (labels == NULL) {
        return;
    }
    for (int h = head < 0 ? 0 : head; h < (head < 0 ? c->n_heads : head + 1); h++) {
        char group[128];
        describe_head_group(c, h, group, sizeof group);
        printf("layer %d, head %d: %s\n", layer, h, group);
        size_t R = in->n_positions;
        print_attention_table(in->attention + ((size_t)layer * c->n_heads + h) * R * R, (int)R, n,
                              labels);
        printf("\n");
    }
    free(labels);
}

// Writes text as a JSON string: quotes, backslashes and control bytes escaped, and any byte that
// is not part of valid UTF-8 (a path or a piece may hold one) written as U+FFFD, so that the
// output is always valid UTF-8 JSON.
static void json_string(FILE *out, const char *text) {
    const unsigned char *p = (const unsigned char *)text;
    size_t length = strlen(text);
    fputc('"', out);
    for (size_t i = 0; i < length;) {
        int n = utf8_char_length(p + i, length - i);
        if (n == 0) {
            fputs("\\ufffd", out);
            i++;
        } else if (p[i] == '"' || p[i] == '\\') {
            fprintf(out, "\\%c", p[i]);
            i++;
        } else if (p[i] < 0x20 || p[i] == 0x7F) {
            fprintf(out, "\\u%04x", p[i]);
            i++;
        } else {
            fwrite(p + i, 1, (size_t)n, out);
            i += (size_t)n;
        }
    }
    fputc('"', out);
}

// Writes [layer][head][position] vectors of head_dim values as JSON arrays. Vector (layer,
// head, position) is at data + layer * layer_stride + position * position_stride + head * hd.
static void write_head_vectors(FILE *out, const float *data, int n_layers, int n_heads,
                               int n_positions, size_t layer_stride, size_t position_stride,
                               int head_dim) {
    fputc('[', out);
    for (int layer = 0; layer < n_layers; layer++) {
        fprintf(out, layer ? ",\n  [" : "\n  [");
        for (int head = 0; head < n_heads; head++) {
            fprintf(out, head ? ", [" : "[");
            for (int pos = 0; pos < n_positions; pos++) {
                const float *v =
                    data + layer * layer_stride + pos * position_stride + (size_t)head * head_dim;
                fprintf(out, pos ? ", [" : "[");
                for (int i = 0; i < head_dim; i++) {
                    fprintf(out, i ? ", %.6g" : "%.6g", v[i]);
                }
                fputc(']', out);
            }
            fputc(']', out);
        }
        fputc(']', out);
    }
    fputc(']', out);
}

// Writes every layer's and head's recorded attention as JSON: attention[layer][head][query][key],
// zero where the causal mask hides the key.
static int write_attention_json(FILE *out, const Inspector *in, const Transformer *t,
                                const Tokenizer *tok, const int *tokens, int n,
                                const char *model_path) {
    const Config *c = &t->config;
    char(*labels)[LABEL_BYTES] = make_labels(tok, tokens, n, 16);
    if (labels == NULL) {
        return -1;
    }
    fprintf(out, "{\"model\": ");
    json_string(out, model_path);
    fprintf(out, ", \"n_layers\": %d, \"n_heads\": %d, \"n_kv_heads\": %d, \"group_size\": %d,\n",
            c->n_layers, c->n_heads, c->n_kv_heads, group_size_of(c));
    fprintf(out, " \"head_dim\": %d, \"kind\": \"%s\",\n", c->head_dim, attention_kind_name(c));
    fprintf(out, " \"tokens\": [");
    for (int i = 0; i < n; i++) {
        fprintf(out, i ? ", %d" : "%d", tokens[i]);
    }
    fprintf(out, "],\n \"labels\": [");
    for (int i = 0; i < n; i++) {
        fprintf(out, i ? ", " : "");
        json_string(out, labels[i]);
    }
    fprintf(out, "],\n \"attention\": [");
    size_t R = in->n_positions;
    for (int layer = 0; layer < c->n_layers; layer++) {
        fprintf(out, layer ? ",\n  [" : "\n  [");
        for (int head = 0; head < c->n_heads; head++) {
            const float *w = in->attention + ((size_t)layer * c->n_heads + head) * R * R;
            fprintf(out, head ? ",\n   [" : "\n   [");
            for (int query = 0; query < n; query++) {
                fprintf(out, query ? ", [" : "[");
                for (int key = 0; key < n; key++) {
                    fprintf(out, key ? ", %.6g" : "%.6g", w[(size_t)query * R + key]);
                }
                fprintf(out, "]");
            }
            fprintf(out, "]");
        }
        fprintf(out, "]");
    }
    // queries[layer][head][position] and keys[layer][kv_head][position], after RoPE: what the
    // weights are computed from, for a reader who wants to redo the arithmetic.
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = kv_dim_of(c);
    fprintf(out, "],\n \"queries\": ");
    write_head_vectors(out, in->queries, c->n_layers, c->n_heads, n, R * q_dim, q_dim, c->head_dim);
    fprintf(out, ",\n \"keys\": ");
    write_head_vectors(out, in->keys, c->n_layers, c->n_kv_heads, n, R * kv_dim, kv_dim,
                       c->head_dim);
    fprintf(out, "}\n");
    free(labels);
    return ferror(out) ? -1 : 0;
}

static void print_vector(const char *indent, const float *v, int n) {
    printf("%s[", indent);
    for (int i = 0; i < n; i++) {
        if (i > 0 && i % 8 == 0) {
            printf("\n%s ", indent);
        }
        printf(i % 8 ? " %7.3f" : "%7.3f", v[i]);
    }
    printf("]\n");
}

// Runs positions 0..pos through the model one at a time, as generation runs them, while in
// records them; fails if the recording holds a value that is not finite.
static int explain_record(Transformer *t, Inspector *in, const int *tokens, int pos) {
    RunState *s = &t->state;
    s->inspector = in;
    for (int p = 0; p <= pos; p++) {
        forward(t, tokens[p], p, false);
    }
    s->inspector = NULL;
    return recording_finite(in, &t->config) ? 0 : -1;
}

// Step 2 of --explain for one position p: its key, and the score rule's arithmetic.
static void explain_score(const float *query, const float *key, int p, int hd,
                          const ScoreRule *rule, const char *label, float *score) {
    float qk = dot(query, key, hd), scaled = qk * rule->scale;
    printf("   position %d \"%s\": key\n", p, label);
    print_vector("   ", key, hd);
    printf("   q.k = %.4f, x %.4f = %.4f", qk, rule->scale, scaled);
    if (rule->softcap > 0.0f) {
        printf(", soft-capped %g * tanh(s / %g) = %.4f", rule->softcap, rule->softcap,
               soft_cap(scaled, rule->softcap));
    }
    printf("\n");
    *score = attention_score(query, key, hd, rule);
}

// Steps 2 and 3 of --explain: scores[p] (pos + 1 of them) is the query's dot product with the
// key of position p, scaled (1 / sqrt(hd) in most models) and soft-capped where the model does,
// then softmaxed; positions before a sliding window are masked. keys is (pos + 1, hd).
static void explain_scores(const float *query, const float *keys, int pos, int hd,
                           const ScoreRule *rule, char (*labels)[LABEL_BYTES], float *scores) {
    int first = first_visible(rule, pos);
    printf("\n2. Each earlier position's key (after RoPE), and its dot product with the query,\n"
           "   times the scale %.4f (1 / sqrt(%d) = %.4f)%s:\n",
           rule->scale, hd, 1.0 / sqrt((double)hd),
           rule->softcap > 0.0f ? ", then the soft cap" : "");
    for (int p = 0; p <= pos; p++) {
        if (p < first) {
            printf("   position %d \"%s\": masked, before the sliding window of %d positions\n", p,
                   labels[p], rule->window);
            scores[p] = -INFINITY;
            continue;
        }
        explain_score(query, keys + p * hd, p, hd, rule, labels[p], &scores[p]);
    }
    printf("\n3. Softmax turns the scaled scores into weights that sum to 1 (positions after %d\n"
           "   are masked: a token never attends to the future):\n",
           pos);
    softmax(scores, pos + 1);
    for (int p = 0; p <= pos; p++) {
        printf("   position %d \"%s\": weight %.4f\n", p, labels[p], scores[p]);
    }
}

// Step 4 of --explain: adds the values (pos + 1, hd) weighted by scores into out (hd, zeroed).
static void explain_weighted_sum(const float *scores, const float *values, int pos, int hd,
                                 float *out) {
    printf("\n4. The output is the weighted sum of the values:\n");
    for (int p = 0; p <= pos; p++) {
        if (scores[p] == 0.0f) { // masked by a sliding window
            continue;
        }
        printf("   %.4f x value of position %d\n", scores[p], p);
        print_vector("   ", values + p * hd, hd);
        for (int i = 0; i < hd; i++) {
            out[i] += scores[p] * values[p * hd + i];
        }
    }
}

// Prints the worked example from a recording of positions 0..pos. scores has pos + 1 floats of
// room and out hd floats, zeroed.
static void explain_head(Transformer *t, Inspector *in, char (*labels)[LABEL_BYTES], int pos,
                         int layer, int head, float *scores, float *out) {
    const Config *c = &t->config;
    int hd = c->head_dim, kv_head = head / group_size_of(c);
    size_t q_dim = (size_t)c->n_heads * hd;
    const float *query =
        in->queries + ((size_t)layer * (pos + 1) + pos) * q_dim + (size_t)head * hd;
    // The head's keys and values, read through the cache's page mapping: (pos + 1, hd) each.
    float *keys = in->head_keys, *values = in->head_values;
    kv_gather(&t->state.kv, layer, KV_KEYS, kv_head, pos + 1, keys);
    kv_gather(&t->state.kv, layer, KV_VALUES, kv_head, pos + 1, values);
    char group[128];
    describe_head_group(c, head, group, sizeof group);
    printf("Self-attention of \"%s\" (position %d), layer %d, head %d.\n", labels[pos], pos, layer,
           head);
    printf("Head %d %s.\n\n", head, group);
    printf("1. The query of position %d (head_dim %d, after RoPE):\n", pos, hd);
    print_vector("   ", query, hd);
    ScoreRule rule = score_rule(c, layer);
    explain_scores(query, keys, pos, hd, &rule, labels, scores);
    explain_weighted_sum(scores, values, pos, hd, out);
    printf("   = output of head %d at position %d:\n", head, pos);
    print_vector("   ", out, hd);
}

// The textbook exercise "compute the self-attention of this word", done with the numbers the
// model really uses: one query position, one layer, one head, every step printed.
static int explain_attention(Transformer *t, const Tokenizer *tok, const int *tokens, int pos,
                             int layer, int head) {
    const Config *c = &t->config;
    int hd = c->head_dim;
    Inspector *in = new_inspector(c, pos + 1, false);
    float *scores = checked_calloc(pos + 1, sizeof(float), "scores");
    float *out = checked_calloc(hd, sizeof(float), "output");
    char(*labels)[LABEL_BYTES] = make_labels(tok, tokens, pos + 1, 12);
    if (in == NULL || scores == NULL || out == NULL || labels == NULL ||
        reserve_positions(t, pos + 1) || explain_record(t, in, tokens, pos)) {
        free_inspector(in), free(scores), free(out), free(labels);
        return -1;
    }
    explain_head(t, in, labels, pos, layer, head, scores, out);
    free_inspector(in), free(scores), free(out), free(labels);
    return 0;
}

// ----------------------------------------------------------------------------
// Command line

// What the user asked for: the command line, parsed.
typedef enum { MODE_GENERATE, MODE_INFO, MODE_ENCODE, MODE_EVAL, MODE_INSPECT } Mode;

typedef struct {
    Mode mode;
    const char *model_path;
    const char *tokenizer_path; // -z: a separate tokenizer.bin
    const char *prompt;         // -p: text
    const char *prompt_path;    // -f: the prompt's text from a file
    bool no_special;            // --no-special
    const char *token_list;     // --tokens: ids instead of text
    const char *logits_path;    // --logits
    int steps;
    bool steps_given;
    float temperature;
    int top_k;
    float top_p;
    uint64_t seed; // from --seed, or from the clock
    bool seed_given;
    int threads;        // 0: OpenMP's default
    KvFormat kv_format; // --kv-cache
    bool quiet, emit_ids, force;
    bool info, encode_only;     // --info, --encode
    const char *eval_path;      // --eval: a text file to score
    int stride;                 // --stride: tokens between evaluation windows; 0 means seq_len
    int attn_layer, attn_head;  // --attn LAYER[:HEAD]; attn_layer -1: not asked, head -1: all
    const char *attn_dump_path; // --attn-dump
    int explain_pos;            // --explain POS; -1: not asked
} Options;

enum {
    OPT_TOP_P = 256,
    OPT_EVAL,
    OPT_STRIDE,
    OPT_ATTN,
    OPT_ATTN_DUMP,
    OPT_EXPLAIN,
    OPT_THREADS,
    OPT_INFO,
    OPT_VERSION,
    OPT_TOKENS,
    OPT_LOGITS,
    OPT_EMIT_IDS,
    OPT_ENCODE,
    OPT_FORCE,
    OPT_KV_CACHE,
    OPT_NO_SPECIAL
};

static const struct option long_options[] = {
    {"prompt", required_argument, NULL, 'p'},
    {"steps", required_argument, NULL, 'n'},
    {"temperature", required_argument, NULL, 't'},
    {"top-k", required_argument, NULL, 'k'},
    {"top-p", required_argument, NULL, OPT_TOP_P},
    {"seed", required_argument, NULL, 's'},
    {"tokenizer", required_argument, NULL, 'z'},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"quiet", no_argument, NULL, 'q'},
    {"info", no_argument, NULL, OPT_INFO},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {"tokens", required_argument, NULL, OPT_TOKENS},
    {"logits", required_argument, NULL, OPT_LOGITS},
    {"emit-ids", no_argument, NULL, OPT_EMIT_IDS},
    {"encode", no_argument, NULL, OPT_ENCODE},
    {"force", no_argument, NULL, OPT_FORCE},
    {"kv-cache", required_argument, NULL, OPT_KV_CACHE},
    {"eval", required_argument, NULL, OPT_EVAL},
    {"stride", required_argument, NULL, OPT_STRIDE},
    {"attn", required_argument, NULL, OPT_ATTN},
    {"attn-dump", required_argument, NULL, OPT_ATTN_DUMP},
    {"explain", required_argument, NULL, OPT_EXPLAIN},
    {"file", required_argument, NULL, 'f'},
    {"no-special", no_argument, NULL, OPT_NO_SPECIAL},
    {NULL, 0, NULL, 0},
};

static void print_usage(FILE *out) {
    fputs(
        "Usage: run MODEL [options]\n"
        "Generate text with a Llama-family model (MHA, GQA or MQA).\n"
        "MODEL is a checkpoint in this project's format (tokenizer included), in llama2.c's\n"
        "format (pass its tokenizer with -z), or a GGUF file of the llama architecture with\n"
        "F32, F16 or Q8_0 tensors (its vocabulary included: sentencepiece-style or byte-level\n"
        "BPE). A GGUF file with a vocabulary and no tensors serves --encode and --info.\n"
        "\n"
        "  -p, --prompt TEXT       prompt text (default: empty, start from BOS)\n"
        "  -f, --file FILE         read the prompt text from FILE\n"
        "      --no-special        control tokens written in the prompt (<|endoftext|>) are\n"
        "                          plain text, not their ids\n"
        "  -n, --steps N           tokens to generate, 0 or more (default 256, clamped to the\n"
        "                          context)\n"
        "  -t, --temperature T     0 is greedy; higher is more random (default 0.8)\n"
        "  -k, --top-k K           sample among the K most likely tokens; 0 = all (default 0)\n"
        "      --top-p P           then among the fewest whose probability sums to P, in (0, 1]\n"
        "                          (default 0.9)\n"
        "  -s, --seed S            random seed (default: from the clock, printed in the "
        "summary)\n"
        "  -z, --tokenizer FILE    tokenizer.bin in llama2.c's format (overrides an embedded one)\n"
        "      --threads N         OpenMP threads, fixed (default: the free cores, and one\n"
        "                          thread while another program holds a core)\n"
        "      --kv-cache FORMAT   keys and values as f32, f16 (half the bytes per token) or q8\n"
        "                          (int8 in groups of 32 with a scale; about a quarter)\n"
        "                          (default f32)\n"
        "  -q, --quiet             no summary on stderr\n"
        "      --info              print the config, parameter count, attention kind and\n"
        "                          KV-cache size, then exit\n"
        "      --tokens \"1 17 250\" feed these token ids instead of a text prompt (no BOS added)\n"
        "      --logits FILE       write every processed position's logits as float32 rows\n"
        "      --force             let --logits or --attn-dump overwrite an existing FILE\n"
        "      --emit-ids          print generated token ids, one per line, instead of text\n"
        "      --encode            print the prompt's token ids (without BOS or EOS) and exit\n"
        "\n"
        "Inspection (each exits after its report):\n"
        "      --eval FILE         perplexity of FILE: mean negative log-likelihood per token\n"
        "                          and per character, teacher-forced in windows of seq_len\n"
        "      --stride N          start an --eval window every N tokens, 1..seq_len (default\n"
        "                          seq_len: windows do not overlap)\n"
        "      --attn L[:H]        print the prompt's attention weights in layer L (head H, or\n"
        "                          all heads)\n"
        "      --attn-dump FILE    write every layer's and head's prompt attention as JSON\n"
        "      --explain POS       work one attention head by hand for prompt position POS\n"
        "                          (layer and head from --attn, default 0:0)\n"
        "  -h, --help              this help\n"
        "      --version           the program's version\n"
        "\n"
        "Note: -p is the prompt (in llama2.c, -p is top-p and -i the prompt).\n"
        "Example: ./run model/shakespeare-gqa.bin -p \"Fear is\" -n 100\n",
        out);
}

static int usage_error(const char *format, ...) {
    va_list args;
    va_start(args, format);
    report_line(" (see run --help)\n", format, args);
    va_end(args);
    return -1;
}

static int parse_int(const char *flag, const char *text, long low, long high, int *out) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || errno != 0 || value < low || value > high) {
        return usage_error("%s expects an integer in %ld..%ld, got '%s'", flag, low, high, text);
    }
    *out = (int)value;
    return 0;
}

static int parse_float(const char *flag, const char *text, float low, float high,
                       bool low_inclusive, float *out) {
    char *end;
    errno = 0;
    float value = strtof(text, &end);
    bool in_range = low_inclusive ? value >= low : value > low;
    // ERANGE with a finite value is an underflow: 1e-45 is a (subnormal) float all the same
    bool range_error = errno != 0 && !(errno == ERANGE && isfinite(value));
    if (end == text || *end != '\0' || range_error || !isfinite(value) || !in_range ||
        value > high) {
        return usage_error("%s expects a number in %s%g, %g], got '%s'", flag,
                           low_inclusive ? "[" : "(", low, high, text);
    }
    *out = value;
    return 0;
}

// Names the option getopt stopped at, from optopt: 0 for an unknown long option (named by its
// argument, up to any "="), a known option's value when a known option was misused, otherwise
// the unknown letter itself, which may sit in a cluster such as "-qx" (and may be any byte).
static int option_error(bool missing_value, const char *argument) {
    bool known = optopt >= 256 || (optopt > 0 && strchr("pfntkszqh", optopt) != NULL);
    bool long_form = strncmp(argument, "--", 2) == 0;
    int length = (int)strcspn(argument, "=");
    if (missing_value) {
        if (long_form || optopt <= 0 || optopt >= 256) {
            return usage_error("'%.*s' needs a value", length, argument);
        }
        return usage_error("'-%c' needs a value", optopt);
    }
    if (optopt == 0) {
        return usage_error("'%.*s' is an unknown option", length, argument);
    }
    if (known && long_form) { // a flag given a value: --quiet=3
        return usage_error("'%.*s' takes no value", length, argument);
    }
    unsigned char letter = (unsigned char)optopt;
    if (letter == 'i') {
        return usage_error("'-i' is an unknown option; the prompt is -p here (in llama2.c it is "
                           "-i)");
    }
    if (isprint(letter)) {
        return usage_error("'-%c' is an unknown option", letter);
    }
    return usage_error("'-\\x%02X' is an unknown option", letter);
}

// --kv-cache's value: "f32", "f16" or "q8".
static int parse_kv_format(const char *text, KvFormat *format) {
    for (KvFormat f = KV_F32; f <= KV_Q8; f++) {
        if (strcmp(text, kv_format_name(f)) == 0) {
            *format = f;
            return 0;
        }
    }
    return usage_error("--kv-cache expects f32, f16 or q8, got '%s'", text);
}

// "3" -> layer 3, all heads; "3:5" -> layer 3, head 5.
static int parse_layer_head(const char *text, int *layer, int *head) {
    char *end;
    errno = 0;
    long l = strtol(text, &end, 10), h = -1;
    if (end != text && *end == ':') {
        char *head_text = end + 1;
        h = strtol(head_text, &end, 10);
        if (end == head_text || !isdigit((unsigned char)head_text[0])) {
            h = -2; // no head, or a signed one: -1 would otherwise read as "all heads"
        }
    }
    if (end == text || *end != '\0' || errno != 0 || l < 0 || l >= MAX_LAYERS || h < -1 ||
        h >= MAX_HEADS) {
        return usage_error("--attn expects LAYER or LAYER:HEAD, non-negative integers, got '%s'",
                           text);
    }
    *layer = (int)l;
    *head = (int)h;
    return 0;
}

// Returns 0 to run, 1 when help or the version was printed, -1 on a usage error.
static int parse_seed(const char *text, uint64_t *seed) {
    char *end;
    errno = 0;
    *seed = strtoull(text, &end, 10);
    if (end == text || *end != '\0' || errno != 0 || text[0] == '-') {
        return usage_error("--seed expects a non-negative integer, got '%s'", text);
    }
    return 0;
}

// One option with its value (optarg, for those that take one) into o. Returns 0, or -1 after a
// usage error.
static int apply_option(int option, const char *value, Options *o) {
    switch (option) {
    case 'p': o->prompt = value; return 0;
    case 'f': o->prompt_path = value; return 0;
    case OPT_NO_SPECIAL: o->no_special = true; return 0;
    case 'n': o->steps_given = true; return parse_int("--steps", value, 0, MAX_SEQ_LEN, &o->steps);
    case 't': return parse_float("--temperature", value, 0.0f, 100.0f, true, &o->temperature);
    case 'k': return parse_int("--top-k", value, 0, MAX_VOCAB, &o->top_k);
    case OPT_TOP_P: return parse_float("--top-p", value, 0.0f, 1.0f, false, &o->top_p);
    case 's': o->seed_given = true; return parse_seed(value, &o->seed);
    case 'z': o->tokenizer_path = value; return 0;
    case OPT_THREADS: return parse_int("--threads", value, 1, 1024, &o->threads);
    case 'q': o->quiet = true; return 0;
    case OPT_INFO: o->info = true; return 0;
    case OPT_TOKENS: o->token_list = value; return 0;
    case OPT_LOGITS: o->logits_path = value; return 0;
    case OPT_EMIT_IDS: o->emit_ids = true; return 0;
    case OPT_ENCODE: o->encode_only = true; return 0;
    case OPT_FORCE: o->force = true; return 0;
    case OPT_KV_CACHE: return parse_kv_format(value, &o->kv_format);
    case OPT_EVAL: o->eval_path = value; return 0;
    case OPT_STRIDE: return parse_int("--stride", value, 1, MAX_SEQ_LEN, &o->stride);
    case OPT_ATTN: return parse_layer_head(value, &o->attn_layer, &o->attn_head);
    case OPT_ATTN_DUMP: o->attn_dump_path = value; return 0;
    case OPT_EXPLAIN: return parse_int("--explain", value, 0, MAX_SEQ_LEN, &o->explain_pos);
    default: return -1;
    }
}

// The flag that chose a mode other than generation, for messages.
static const char *mode_flag(const Options *o) {
    return o->info                     ? "--info"
           : o->eval_path != NULL      ? "--eval"
           : o->encode_only            ? "--encode"
           : o->explain_pos >= 0       ? "--explain"
           : o->attn_dump_path != NULL ? "--attn-dump"
                                       : "--attn";
}

// Flags that the chosen mode would ignore are refused: a run that exits 0 having silently
// dropped --logits would leave the user looking for a file that was never written.
static int check_ignored_flags(const Options *o) {
    if (o->logits_path != NULL && o->mode != MODE_GENERATE) {
        return usage_error("--logits writes the logits of generation; %s computes none to write",
                           mode_flag(o));
    }
    if (o->stride > 0 && o->mode != MODE_EVAL) {
        return usage_error("--stride sets the windows of --eval, which is not given");
    }
    if (o->steps_given && o->mode != MODE_GENERATE) {
        return usage_error("--steps counts generated tokens; %s generates none", mode_flag(o));
    }
    if (o->no_special && o->token_list != NULL) {
        return usage_error("--no-special changes how text is encoded; --tokens are ids already");
    }
    if (o->force && o->logits_path == NULL && o->attn_dump_path == NULL) {
        return usage_error("--force lets --logits or --attn-dump overwrite a file; neither is "
                           "given");
    }
    return 0;
}

// After the options: the model's path, the flags that exclude each other, and the mode.
static int finish_options(int argc, char **argv, Options *o) {
    if (optind >= argc) {
        return usage_error("missing MODEL, the checkpoint to run");
    }
    if (argc - optind > 1) {
        return usage_error("unexpected argument '%s' after MODEL '%s'", argv[optind + 1],
                           argv[optind]);
    }
    o->model_path = argv[optind];
    if ((o->prompt != NULL) + (o->prompt_path != NULL) + (o->token_list != NULL) > 1) {
        return usage_error("give one of --prompt, --file and --tokens");
    }
    if (o->encode_only && o->token_list != NULL) {
        return usage_error("--encode encodes --prompt text, not --tokens");
    }
    if (o->eval_path != NULL &&
        (o->prompt != NULL || o->prompt_path != NULL || o->token_list != NULL)) {
        return usage_error("--eval scores a file; it takes no --prompt, --file or --tokens");
    }
    bool inspecting = o->attn_layer >= 0 || o->attn_dump_path != NULL || o->explain_pos >= 0;
    o->mode = o->info                ? MODE_INFO
              : o->eval_path != NULL ? MODE_EVAL
              : o->encode_only       ? MODE_ENCODE
              : inspecting           ? MODE_INSPECT
                                     : MODE_GENERATE;
    if (!o->seed_given) {
        o->seed = (uint64_t)time(NULL);
    }
    return check_ignored_flags(o);
}

// 0: run, 1: help or version printed, -1: a usage error was reported.
static int parse_options(int argc, char **argv, Options *o) {
    *o = (Options){.steps = 256,
                   .temperature = 0.8f,
                   .top_k = 0,
                   .top_p = 0.9f,
                   .attn_layer = -1,
                   .attn_head = -1,
                   .explain_pos = -1};
    opterr = 0; // we print our own messages
    optind = 0; // 0, not 1, makes glibc's getopt forget a half-read cluster like "-hq"
    int option;
    while ((option = getopt_long(argc, argv, ":p:f:n:t:k:s:z:qh", long_options, NULL)) != -1) {
        switch (option) {
        case 'h': print_usage(stdout); return 1;
        case OPT_VERSION: printf("run %s\n", RUN_VERSION); return 1;
        case ':': return option_error(true, argv[optind - 1]);
        case '?': return option_error(false, argv[optind - 1]);
        default:
            if (apply_option(option, optarg, o)) {
                return -1;
            }
        }
    }
    return finish_options(argc, argv, o);
}

// Parses --tokens into ids, each in [0, vocab_size); returns the count, or -1.
static int parse_token_list(const char *text, int vocab_size, int *ids, int capacity) {
    int n = 0;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        char *end;
        errno = 0;
        long id = strtol(p, &end, 10);
        if (end == p || errno != 0 || (*end != '\0' && !strchr(" ,\t\n", *end))) {
            return usage_error("--tokens expects space-separated integer ids, got '%s'", text);
        }
        if (id < 0 || id >= vocab_size) {
            return usage_error("--tokens: id %ld is outside the vocabulary 0..%d", id,
                               vocab_size - 1);
        }
        if (n == capacity) {
            return usage_error("--tokens: more than %d ids, longer than the context", capacity - 1);
        }
        ids[n++] = (int)id;
        p = end;
    }
    if (n == 0) {
        return usage_error("--tokens expects at least one id");
    }
    return n;
}

// Reads a whole file of at most max_size bytes (what, a flag, names the limit's owner in the
// message); the size is checked before anything is read.
static int read_whole_file(const char *path, size_t max_size, const char *what,
                           unsigned char **data, size_t *size) {
    int fd = open_regular_file(path, size);
    if (fd < 0) {
        return -1;
    }
    if (*size > max_size) {
        close(fd);
        return report_error("%s: %zu bytes; %s reads at most %zu MiB", path, *size, what,
                            max_size >> 20);
    }
    *data = checked_calloc(*size, 1, path);
    size_t done = 0;
    while (*data != NULL && done < *size) {
        ssize_t n = read(fd, *data + done, *size - done);
        if (n <= 0) {
            report_error("%s: read failed: %s", path, n < 0 ? strerror(errno) : "file shrank");
            free(*data);
            *data = NULL;
        } else {
            done += (size_t)n;
        }
    }
    close(fd);
    return *data != NULL ? 0 : -1;
}

// Loads the tokenizer from -z, else from the checkpoint. Returns 1 when there is none.
static int load_tokenizer(Tokenizer *tok, const Options *o, const Transformer *t) {
    const Config *c = &t->config;
    if (o->tokenizer_path != NULL) {
        unsigned char *data;
        size_t size;
        if (read_whole_file(o->tokenizer_path, MAX_TOKENIZER_BYTES, "-z", &data, &size)) {
            return EXIT_DATA;
        }
        int result = build_tokenizer(tok, data, size, o->tokenizer_path, c->vocab_size, c->bos_id,
                                     c->eos_id);
        free(data);
        return result != 0 ? EXIT_DATA : 0;
    }
    const GgufModel *gguf = t->checkpoint->gguf;
    if (gguf != NULL && gguf->byte_level) {
        return build_byte_level_tokenizer(tok, &gguf->bpe, o->model_path, c, gguf->add_bos,
                                          gguf->add_eos)
                   ? EXIT_DATA
                   : 0;
    }
    if (t->checkpoint->tokenizer_bytes != NULL) {
        if (build_tokenizer(tok, t->checkpoint->tokenizer_bytes, t->checkpoint->tokenizer_size,
                            o->model_path, c->vocab_size, c->bos_id, c->eos_id)) {
            return EXIT_DATA;
        }
        if (gguf != NULL) { // the file's keys, where it has them
            tok->add_bos = gguf->add_bos >= 0 ? gguf->add_bos : tok->add_bos;
            tok->add_eos = gguf->add_eos > 0;
            tok->add_space_prefix = gguf->add_space_prefix != 0;
        }
        return gguf != NULL && gguf->token_types != NULL &&
                       mark_special_tokens(tok, gguf->token_types)
                   ? EXIT_DATA
                   : 0;
    }
    // No tokenizer: only ids in and ids (or attention tables labelled by id) out will do.
    bool needs_text =
        o->mode == MODE_EVAL || o->token_list == NULL || (!o->emit_ids && o->mode != MODE_INSPECT);
    if (needs_text) {
        report_error("%s has no tokenizer: pass one with -z FILE, or use --tokens with --emit-ids",
                     o->model_path);
        return EXIT_USAGE;
    }
    return 0;
}

// The weights line of --info for a GGUF file: the matrices' type, then any tensor of another
// type by name, e.g. "F16 (norms F32)" or "Q8_0, output F16 (norms F32)".
// The tensor types and their shares of the bytes, the largest first: "Q4_K 78%, Q6_K 22%".
static void print_gguf_weights(const GgufModel *m) {
    bool printed[64] = {false};
    printf("weights      ");
    for (int n = 0;; n++) {
        int best = -1;
        for (int type = 0; type < 64; type++) {
            if (!printed[type] && m->type_bytes[type] > 0 &&
                (best < 0 || m->type_bytes[type] > m->type_bytes[best])) {
                best = type;
            }
        }
        if (best < 0) {
            break;
        }
        printed[best] = true;
        double share = 100.0 * m->type_bytes[best] / m->tensor_bytes;
        printf("%s%s %.*f%%", n > 0 ? ", " : "", ggml_type_name(best), share < 1.0 ? 1 : 0, share);
    }
    printf(": %zu bytes of tensors; token_embd %s, classifier %s\n", m->tensor_bytes,
           ggml_type_name(m->global[G_TOKEN_EMBD].type),
           m->global[G_OUTPUT].data != NULL ? ggml_type_name(m->global[G_OUTPUT].type)
                                            : "tied to it");
}

// Whether encoding a prompt adds BOS: the file's key, else the vocabulary's default.
static bool gguf_adds_bos(const GgufModel *m) {
    if (m->add_bos >= 0 || !m->byte_level) {
        return m->add_bos != 0; // sentencepiece's default: yes
    }
    size_t n_kinds = sizeof PRE_TOKENIZERS / sizeof PRE_TOKENIZERS[0];
    for (size_t k = 0; k < n_kinds; k++) {
        if (m->bpe.pre == NULL ||
            gguf_string_is(m->bpe.pre, m->bpe.pre_length, PRE_TOKENIZERS[k].name)) {
            return PRE_TOKENIZERS[k].add_bos;
        }
    }
    return false;
}

// The vocabulary line of --info for a GGUF file.
static void print_gguf_vocabulary(const GgufModel *m) {
    const char *bos = gguf_adds_bos(m) ? "BOS" : "no BOS";
    const char *eos = m->add_eos > 0 ? " and EOS" : "";
    if (m->byte_level) {
        char pre[41] = "gpt-2";
        if (m->bpe.pre != NULL) {
            gguf_printable(pre, sizeof pre, m->bpe.pre, m->bpe.pre_length);
        }
        printf("vocabulary   byte-level BPE, %llu merge%s, pre-tokenizer %s; a prompt gets %s%s\n",
               (unsigned long long)m->bpe.n_merges, m->bpe.n_merges == 1 ? "" : "s", pre, bos, eos);
    } else if (m->tokenizer != NULL) {
        printf("vocabulary   sentencepiece-style, %d pieces%s; a prompt gets %s%s\n",
               m->config.vocab_size, m->add_space_prefix == 0 ? ", no space prefix" : "", bos, eos);
    }
}

// --info of a GGUF file with a vocabulary and no tensors.
static void print_vocabulary_info(const Transformer *t, const char *path) {
    const GgufModel *gguf = t->checkpoint->gguf;
    printf("model        %s (GGUF v%u, a vocabulary and no tensors)\n", path, gguf->version);
    printf("vocab_size   %d\nbos_id       %d\neos_id       %d\n", t->config.vocab_size,
           t->config.bos_id, t->config.eos_id);
    print_gguf_vocabulary(gguf);
}

// The architecture's choices (section 1), one line each where they differ from Llama's.
static void print_choices(const Config *c, const Weights *w) {
    static const char *const norms[] = {"RMSNorm", "LayerNorm with bias"};
    static const char *const ropes[] = {"RoPE on adjacent pairs", "RoPE on halves (NEOX)",
                                        "learned position vectors, no RoPE"};
    static const char *const gates[] = {"SwiGLU (silu gate)", "GeGLU (gelu gate)", "GELU, no gate"};
    printf("norm         %s%s\npositions    %s", norms[c->norm],
           w->post_att != NULL ? ", also after attention and the feed-forward" : "",
           ropes[c->rope]);
    if (w->rope_divisors != NULL) {
        printf(", each pair's angle divided by rope_freqs");
    }
    if (c->rope_scale != 1.0f) {
        printf(", positions scaled by %g (linear)", c->rope_scale);
    }
    printf("\nfeed-forward %s\n", gates[c->feed_forward]);
    if (w->bq != NULL || w->bo != NULL) {
        printf("biases       %s\n", w->bo != NULL ? "on every linear layer" : "on q, k and v");
    }
    if (c->embedding_scale != 1.0f) {
        printf("embedding    scaled by %g (sqrt(dim))\n", c->embedding_scale);
    }
    if (c->attention_softcap > 0.0f) {
        printf("soft caps    attention scores %g, logits %g\n", c->attention_softcap,
               c->logits_softcap);
    }
    if (fabsf(c->query_scale * sqrtf((float)c->head_dim) - 1.0f) > 1e-6f) {
        printf("query scale  %g, not 1/sqrt(head_dim)\n", c->query_scale);
    }
}

// --info's attention and KV cache lines.
static void print_attention_info(const Transformer *t) {
    const Config *c = &t->config;
    printf("attention    %s: ", attention_kind_name(c));
    switch (attention_kind(c)) {
    case ATTENTION_MHA:
        printf("each of %d query heads has its own key/value head\n", c->n_heads);
        break;
    case ATTENTION_MQA: printf("all %d query heads share 1 key/value head\n", c->n_heads); break;
    case ATTENTION_GQA:
        printf("%d query heads share %d key/value heads, group size %d\n", c->n_heads,
               c->n_kv_heads, group_size_of(c));
        break;
    }
    const KvCache *kv = &t->state.kv;
    size_t per_token = kv_bytes_per_token(c, kv->format);
    printf("kv cache     %zu bytes per token, %zu bytes at full context (%d tokens), %s\n",
           per_token, kv_bytes_at(c, kv->format, c->seq_len), c->seq_len,
           kv_format_name(kv->format));
    if (c->sliding_window > 0) {
        printf("kv window    the %d sliding-window layers hold %d positions at most (window %d)\n",
               (c->n_layers + 1) / 2,
               c->sliding_window < c->seq_len ? c->sliding_window : c->seq_len, c->sliding_window);
    }
    printf("kv pages     %d positions, %zu bytes (one layer's keys or values), allocated as "
           "positions fill\n",
           kv->page_positions, kv_page_bytes(kv));
}

// The fast kernels' choices made at load: fp32's pattern, the prefetch, the eight-row copies.
static void print_kernel_choices(const Transformer *t) {
#ifdef RUN_PLAIN
    (void)t;
#else
    if (largest_f32_matrix(t) != NULL) {
        const KernelScratch *k = t->state.scratch;
        printf("fp32 decode  %s: four rows at a time read %.2fx as fast as one here\n",
               k->matvec == matvec_f32_rows4 ? "four rows at a time" : "one row at a time",
               k->matvec_gain);
    }
    if (largest_matrix(t, false) != NULL) {
        const KernelScratch *k = t->state.scratch;
        printf("prefetch     %s: asking for weights ahead read %.2fx as fast as not here\n",
               k->prefetch ? "on" : "off", k->prefetch_gain);
    }
    if (weight_copy_bytes(&t->state) > 0) {
        const size_t *bytes_of = t->state.scratch->copy_bytes;
        printf("eight rows   decode reads rows eight at a time, copied at load:");
        for (int i = 0, printed = 0; i < EIGHT_ROWS_TYPES; i++) {
            if (bytes_of[i] > 0) {
                printf("%s %s %zu bytes", printed++ > 0 ? "," : "",
                       block_type_of(eight_rows_types[i])->name, bytes_of[i]);
            }
        }
        printf("\n");
    }
    size_t left_out = t->state.scratch->copies_left_out;
    if (left_out > 0) {
        printf("eight rows   not copied: the copies would take %zu bytes, more than this machine's "
               "memory holds beside the file, the activations and a full KV cache\n",
               left_out);
    }
#endif
}

static void print_info(const Transformer *t, const char *path) {
    const Config *c = &t->config;
    const GgufModel *gguf = t->checkpoint->gguf;
    if (t->checkpoint->vocab_only) {
        print_vocabulary_info(t, path);
        return;
    }
    if (gguf != NULL) {
        printf("model        %s (GGUF v%u, architecture %s)\n", path, gguf->version,
               c->architecture);
    } else {
        printf("model        %s (%s)\n", path,
               t->checkpoint->legacy ? "llama2.c legacy format" : "GQAM format v1");
    }
    printf("dim          %d\nhidden_dim   %d\nn_layers     %d\nn_heads      %d\n"
           "n_kv_heads   %d\nhead_dim     %d\nvocab_size   %d\nseq_len      %d\n",
           c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim,
           c->vocab_size, c->seq_len);
    printf("rope_theta   %g\nnorm_eps     %g\nclassifier   %s\n", c->rope_theta, c->norm_eps,
           c->shared_classifier ? "shared with the token embedding" : "separate");
    print_choices(c, &t->weights);
    printf("parameters   %zu\n", gguf != NULL ? gguf->parameters : parameter_count(c));
    Weights unused;
    size_t bytes =
        gguf != NULL ? gguf->tensor_bytes : layout_weights(c, t->checkpoint->legacy, NULL, &unused);
    if (gguf != NULL) {
        print_gguf_weights(gguf);
        print_gguf_vocabulary(gguf);
    } else if (c->quant_group > 0) {
        printf("weights      int8 in groups of %d, %zu bytes\n", c->quant_group, bytes);
    } else {
        printf("weights      fp32, %zu bytes\n", bytes);
    }
    print_attention_info(t);
    print_kernel_choices(t);
    size_t state = run_state_bytes(c, run_state_threads(&t->state));
    const KvCache *kv = &t->state.kv;
    size_t cache = kv_bytes_at(c, kv->format, c->seq_len);
    size_t copies = weight_copy_bytes(&t->state);
    char copy[96] = "";
    if (copies > 0) {
        snprintf(copy, sizeof copy, ", rows eight at a time %zu (a copy)", copies);
    }
    printf("memory       %zu bytes at full context: weights %zu (mapped from the file)%s, KV "
           "cache %zu (%s), activations %zu (%d threads)\n",
           bytes + copies + cache + state, bytes, copy, cache, kv_format_name(kv->format), state,
           run_state_threads(&t->state));
}

// Turns the prompt (text or --tokens) into ids; returns the count, or -1 after an error.
static int prompt_tokens(const Options *o, const Tokenizer *tok, const Config *c, int **ids) {
    if (o->token_list != NULL) {
        *ids = checked_calloc((size_t)c->seq_len + 1, sizeof(int), "prompt");
        return *ids == NULL ? -1
                            : parse_token_list(o->token_list, c->vocab_size, *ids, c->seq_len + 1);
    }
    // A prompt is encoded whole before its length is checked against the context (prompt_ids
    // does that): a file of a gigabyte at most, or the command line's text.
    unsigned char *file_text = NULL;
    size_t length = 0;
    if (o->prompt_path != NULL &&
        read_whole_file(o->prompt_path, MAX_EVAL_BYTES, "--file", &file_text, &length)) {
        return -1;
    }
    const char *text = file_text != NULL   ? (const char *)file_text
                       : o->prompt != NULL ? o->prompt
                                           : "";
    length = file_text != NULL ? length : strlen(text);
    *ids = checked_calloc(max_encoded_tokens(length), sizeof(int), "prompt");
    int n = *ids == NULL ? -1 : encode(tok, text, length, o->mode != MODE_ENCODE, *ids);
    if (n == 0 && o->mode != MODE_ENCODE) { // nothing to start from: BOS, whatever the vocabulary
        (*ids)[n++] = tok->bos_id;
    }
    free(file_text);
    return n;
}

// Generation stops at the end of the context; asking for more is noted, not an error.
static int clamp_steps(const Options *o, int n_prompt, int seq_len) {
    if (n_prompt + o->steps <= seq_len) {
        return o->steps;
    }
    int steps = seq_len - n_prompt;
    if (o->steps_given && !o->quiet) {
        fprintf(stderr,
                "run: note: --steps %d clamped to %d, the room left in the context of %d "
                "token%s\n",
                o->steps, steps, seq_len, seq_len == 1 ? "" : "s");
    }
    return steps;
}

// An output file that a flag names (--logits, --attn-dump). A regular file is written under a
// temporary name beside it and renamed over it only once every byte is written, so a failed run
// leaves the old file, or none, never half of a new one. A file that exists and is not regular
// (/dev/null, a pipe) is written in place.
typedef struct {
    const char *flag, *path;
    char *temp_path; // NULL when writing in place
    FILE *file;      // NULL when the flag was not given
    bool replace;    // --force: the finished file may replace one that appeared meanwhile
} OutputFile;

// Publishes a finished temporary file under path: without --force it must not replace a file
// that another run created meanwhile (renameat2's RENAME_NOREPLACE, or a hard link where the file
// system lacks it). Returns 0, or -1 with errno set.
static int publish(const char *temp_path, const char *path, bool replace) {
    if (replace) {
        return rename(temp_path, path);
    }
    if (renameat2(AT_FDCWD, temp_path, AT_FDCWD, path, RENAME_NOREPLACE) == 0) {
        return 0;
    }
    if (errno != EINVAL && errno != ENOSYS) {
        return -1;
    }
    if (link(temp_path, path) != 0) {
        return -1;
    }
    unlink(temp_path);
    return 0;
}

static bool same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return a != NULL && b != NULL && stat(a, &sa) == 0 && stat(b, &sb) == 0 &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// Opens out for path (nothing when path is NULL). Refuses to write over one of the run's own
// inputs, and over any existing file without --force. Returns 0 or an exit status.
static int open_output(OutputFile *out, const char *flag, const char *path, const Options *o) {
    *out = (OutputFile){.flag = flag, .path = path, .replace = o->force};
    if (path == NULL) {
        return 0;
    }
    const char *inputs[] = {o->model_path, o->tokenizer_path, o->eval_path};
    const char *names[] = {"the model", "the -z tokenizer", "the --eval text"};
    for (int i = 0; i < 3; i++) {
        if (same_file(path, inputs[i])) {
            report_error("%s: %s is %s, an input of this run; write somewhere else", flag, path,
                         names[i]);
            return EXIT_USAGE;
        }
    }
    struct stat info;
    bool exists = stat(path, &info) == 0;
    if (exists && !o->force) {
        report_error("%s: %s exists; pass --force to overwrite it", flag, path);
        return EXIT_USAGE;
    }
    if (exists && !S_ISREG(info.st_mode)) {
        out->file = fopen(path, "wb");
    } else {
        size_t capacity = strlen(path) + 16;
        out->temp_path = checked_calloc(capacity, 1, "a file name");
        if (out->temp_path == NULL) {
            return EXIT_DATA;
        }
        snprintf(out->temp_path, capacity, "%s.tmp-XXXXXX", path);
        hold_interrupts(true); // until close_output has removed or published the file
        int fd = mkstemp(out->temp_path);
        if (fd >= 0) {
            mode_t mask = umask(0); // mkstemp makes the file private; give it the usual mode
            umask(mask);
            fchmod(fd, 0666 & ~mask);
            out->file = fdopen(fd, "wb");
            if (out->file == NULL) {
                close(fd);
                unlink(out->temp_path);
            }
        }
    }
    if (out->file == NULL) {
        report_error("%s: cannot create %s: %s", flag, path, strerror(errno));
        free(out->temp_path);
        *out = (OutputFile){0};
        hold_interrupts(false);
        return EXIT_DATA;
    }
    return 0;
}

// Closes out. With status 0 it first checks that every write reached the file (a full disk shows
// only when the buffer is flushed) and puts the file in place; otherwise it removes the
// temporary file. Returns status, or EXIT_DATA after reporting a failed write.
static int close_output(OutputFile *out, int status) {
    if (out->file == NULL) {
        return status;
    }
    int error = 0;
    if (fflush(out->file) != 0 || ferror(out->file)) {
        error = errno != 0 ? errno : EIO;
    }
    if (fclose(out->file) != 0 && error == 0) {
        error = errno;
    }
    if (status == 0 && error != 0) {
        report_error("%s: cannot write %s: %s", out->flag, out->path, strerror(error));
        status = EXIT_DATA;
    }
    if (out->temp_path != NULL) {
        if (status == 0 && publish(out->temp_path, out->path, out->replace) != 0) {
            if (errno == EEXIST) {
                report_error("%s: %s exists: another program created it during this run; pass "
                             "--force to overwrite it",
                             out->flag, out->path);
            } else {
                report_error("%s: cannot write %s: %s", out->flag, out->path, strerror(errno));
            }
            status = EXIT_DATA;
        }
        if (status != 0) {
            unlink(out->temp_path);
        }
        free(out->temp_path);
        hold_interrupts(false); // a signal held back ends the run here, as it would have
    }
    *out = (OutputFile){0};
    return status;
}

static int finish_output(int status) {
    errno = 0;
    if ((fflush(stdout) != 0 || ferror(stdout)) && status == 0) {
        report_error("cannot write output: %s", strerror(errno != 0 ? errno : EIO));
        return EXIT_DATA;
    }
    return status;
}

// --eval: reads, encodes and scores a text file, then prints the report.
static int run_eval(const Options *o, Transformer *t, const Tokenizer *tok) {
    const Config *c = &t->config;
    int stride = o->stride > 0 ? o->stride : c->seq_len;
    if (stride > c->seq_len) {
        report_error("--stride %d is longer than the context of %d token%s", stride, c->seq_len,
                     c->seq_len == 1 ? "" : "s");
        return EXIT_USAGE;
    }
    unsigned char *text;
    size_t size;
    if (read_whole_file(o->eval_path, MAX_EVAL_BYTES, "--eval", &text, &size)) {
        return EXIT_DATA;
    }
    int status = EXIT_DATA;
    int *tokens = checked_calloc(max_encoded_tokens(size), sizeof(int), "--eval tokens");
    int n = tokens != NULL ? encode(tok, (const char *)text, size, false, tokens) : -1;
    if (n < 2) {
        if (n >= 0) {
            report_error("%s: %d token(s), scoring needs at least 2", o->eval_path, n);
        }
        goto done;
    }
    double start = seconds_now();
    EvalResult r;
    if (evaluate(t, tokens, n, stride, &r)) {
        goto done;
    }
    double seconds = seconds_now() - start;
    size_t characters = count_utf8_characters(text, size);
    double nll = r.total_nll / r.n_scored;
    // The first token is not scored: per character counts the characters of those that are.
    const unsigned char *first;
    unsigned char byte;
    size_t first_bytes = token_bytes(tok, tok->bos_id, tokens[0], &first, &byte);
    size_t first_characters = count_utf8_characters(first, first_bytes);
    size_t scored_characters = characters > first_characters ? characters - first_characters : 1;
    double nats_per_char = r.total_nll / scored_characters;
    printf("file        %s: %zu bytes, %zu characters, %d tokens\n", o->eval_path, size, characters,
           n);
    printf("windows     %d of up to %d tokens, stride %d; %ld tokens scored\n", r.n_windows,
           c->seq_len, stride, r.n_scored);
    printf("loss        %.4f nats/token, perplexity %.4f\n", nll, exp(nll));
    printf("per char    %.4f nats, %.4f bits\n", nats_per_char, nats_per_char / log(2.0));
    printf("speed       %.1f tokens/s, %d threads\n", r.n_processed / seconds, thread_count());
    status = 0;
done:
    free(tokens);
    free(text);
    return status;
}

// --attn, --attn-dump and --explain: runs the prompt and shows what attention did with it.
static int inspect_prompt(const Options *o, Transformer *t, const Tokenizer *tok, const int *ids,
                          int n) {
    const Config *c = &t->config;
    int layer = o->attn_layer >= 0 ? o->attn_layer : 0;
    if (layer >= c->n_layers || o->attn_head >= c->n_heads) {
        char head[16] = "";
        if (o->attn_head >= 0) {
            snprintf(head, sizeof head, ":%d", o->attn_head);
        }
        report_error("--attn %d%s is outside the model: layers 0..%d, heads 0..%d", layer, head,
                     c->n_layers - 1, c->n_heads - 1);
        return EXIT_USAGE;
    }
    if (o->explain_pos >= n) {
        report_error("--explain %d is outside the prompt: positions 0..%d", o->explain_pos, n - 1);
        return EXIT_USAGE;
    }
    OutputFile dump;
    int status = open_output(&dump, "--attn-dump", o->attn_dump_path, o);
    if (status != 0) {
        return status;
    }
    if (o->attn_layer >= 0 || dump.file != NULL) {
        Inspector *in = record_prompt_attention(t, ids, n);
        if (in == NULL || !recording_finite(in, c)) {
            status = EXIT_DATA;
        }
        if (status == 0 && o->attn_layer >= 0) {
            print_attention(in, c, tok, ids, n, layer, o->attn_head);
        }
        if (status == 0 && dump.file != NULL) {
            write_attention_json(dump.file, in, t, tok, ids, n,
                                 o->model_path); // close_output checks
        }
        free_inspector(in);
    }
    status = close_output(&dump, status);
    if (status == 0 && o->explain_pos >= 0 &&
        explain_attention(t, tok, ids, o->explain_pos, layer,
                          o->attn_head < 0 ? 0 : o->attn_head)) {
        status = EXIT_DATA;
    }
    return status;
}

// What run_generate's watch sees of a run: the threads' pace, the clock, and --logits.
typedef struct {
    LogitsWatch watch; // first, so that the watch's pointer is this record's
    FILE *logits_file; // every processed position's logits, float32 rows (NULL: none)
    const char *logits_path;
    const KvCache *kv; // where an fp16 cache's overflow shows
    int n_prompt, vocab_size;
    ThreadPace pace;
    double start, prefill_end, last; // seconds: the run began, the prompt was done, last logits
    double prefill_seconds, decode_seconds;
} GenerationRecord;

// Writes count floats of logits (one or more rows) to file, if there is one.
static int write_logits(FILE *file, const char *path, const float *logits, size_t count) {
    if (file != NULL && fwrite(logits, sizeof(float), count, file) != count) {
        return report_error("--logits: cannot write %s: %s", path, strerror(errno));
    }
    return 0;
}

// The watch generate calls with each forward pass's logits: checks that they are finite, writes
// them for --logits, and after each generated token picks the thread count for the next one from
// the time it took (on a busy machine one thread can be faster than two).
static int see_logits(LogitsWatch *watch, const float *logits, int first, int count) {
    GenerationRecord *r = (GenerationRecord *)watch;
    double now = seconds_now();
    if (first >= r->n_prompt) {
        pace_threads(&r->pace, now - r->last);
    } else if (first + count == r->n_prompt) {
        r->prefill_end = now;
    }
    size_t values = (size_t)count * r->vocab_size;
    int failed = check_logits(logits, values, r->vocab_size, first, r->kv) ||
                 write_logits(r->logits_file, r->logits_path, logits, values) ||
                 (r->logits_file != NULL && interrupt_pending("--logits' file"));
    r->last = seconds_now();
    return failed;
}

// One line on stderr; scripts read its "generated N;", "prefill X tok/s" and "decode X tok/s".
static void print_summary(const GenerationRecord *r, int n_generated, int stop_token,
                          const Config *c, const Options *o, const KvCache *kv) {
    double prefill = r->prefill_seconds > 0 ? r->n_prompt / r->prefill_seconds : 0.0;
    // The first token comes from the prompt's logits; each later one, and the one that stopped
    // the run, from a forward pass of its own: the passes decoding timed.
    int passes = n_generated - (stop_token < 0 ? 1 : 0);
    double decode = r->decode_seconds > 0 ? passes / r->decode_seconds : 0.0;
    char stopped[64] = "", decoded[48] = "", sampling[48] = "greedy", single[64] = "";
    if (stop_token == c->eos_id || stop_token == c->bos_id) {
        snprintf(stopped, sizeof stopped, " stopped at %s;",
                 stop_token == c->eos_id ? "EOS" : "BOS");
    } else if (stop_token >= 0) { // another token that ends a turn: <|im_end|>, <|eot_id|>
        snprintf(stopped, sizeof stopped, " stopped at end-of-turn token %d;", stop_token);
    }
    if (passes > 0) {
        snprintf(decoded, sizeof decoded, ", decode %.1f tok/s", decode);
    }
    if (o->temperature > 0.0f) {
        snprintf(sampling, sizeof sampling, "seed %llu", (unsigned long long)o->seed);
    }
    int most = r->pace.adaptive ? r->pace.most : thread_count();
    if (r->pace.single_tokens > 0 || r->pace.prompt_threads != most) {
        snprintf(single, sizeof single, " (the prompt on %d, one thread for %ld of %d tokens)",
                 r->pace.prompt_threads, r->pace.single_tokens, n_generated);
    }
    fprintf(stderr,
            "prompt %d token%s, generated %d;%s prefill %.1f tok/s%s; kv cache %s, %zu bytes; "
            "threads %d%s; %s\n",
            r->n_prompt, r->n_prompt == 1 ? "" : "s", n_generated, stopped, prefill, decoded,
            kv_format_name(kv->format), kv_pages_held(kv, kv->n_pages) * kv_page_bytes(kv), most,
            single, sampling);
}

// Turns the prompt (text or --tokens) into ids that fit the context; the caller frees *ids.
// Returns 0, or an exit status after a report.
static int prompt_ids(const Options *o, const Tokenizer *tok, const Config *c, int **ids, int *n) {
    *n = prompt_tokens(o, tok, c, ids);
    if (*n < 0) {
        return o->token_list != NULL ? EXIT_USAGE : EXIT_DATA;
    }
    if (*n > c->seq_len) {
        report_error("the prompt is %d tokens, longer than the context of %d token%s", *n,
                     c->seq_len, c->seq_len == 1 ? "" : "s");
        return EXIT_DATA;
    }
    return 0;
}

// --attn, --attn-dump and --explain on the prompt.
static int run_inspection(const Options *o, Transformer *t, const Tokenizer *tok) {
    int *ids = NULL, n = 0;
    int status = prompt_ids(o, tok, &t->config, &ids, &n);
    if (status == 0) {
        status = inspect_prompt(o, t, tok, ids, n);
    }
    free(ids);
    return status;
}

// --info: the config, the sizes and the attention kind.
static int run_info(const Options *o, const Transformer *t) {
    print_info(t, o->model_path);
    return 0;
}

// --encode: prints the prompt's ids, whatever its length.
static int run_encode(const Options *o, const Transformer *t, const Tokenizer *tok) {
    int *ids = NULL;
    int n = prompt_tokens(o, tok, &t->config, &ids);
    for (int i = 0; i < n; i++) {
        printf(i > 0 ? " %d" : "%d", ids[i]);
    }
    if (n >= 0) {
        printf("\n");
    }
    free(ids);
    return n < 0 ? EXIT_DATA : 0;
}

// generate (Part 1) with its clock, its threads' pace and its watch. Returns the number of
// tokens generated, or -1 after a report.
static int timed_generate(Transformer *t, const Tokenizer *tok, Sampler *sampler, const int *ids,
                          int steps, const TextOut *out, GenerationRecord *r, int *stop_token) {
    start_pacing(&r->pace, r->pace.adaptive);
    warm_up_threads(); // so that the threads' start is not timed as prefill
    r->start = seconds_now();
    int generated = generate(t, tok, sampler, ids, r->n_prompt, steps, out, &r->watch, stop_token);
    double end = seconds_now();
    r->prefill_end = r->prefill_end > 0 ? r->prefill_end : end;
    r->prefill_seconds = r->prefill_end - r->start;
    r->decode_seconds = end - r->prefill_end;
    return generated;
}

// The default mode: generates from the prompt, writing --logits if asked.
static int run_generate(const Options *o, Transformer *t, const Tokenizer *tok, Sampler *sampler) {
    const Config *c = &t->config;
    int *ids = NULL, n_prompt = 0;
    OutputFile logits = {0};
    int status = prompt_ids(o, tok, c, &ids, &n_prompt);
    if (status == 0) {
        status = open_output(&logits, "--logits", o->logits_path, o);
    }
    if (status == 0) {
        TextOut out = {.file = stdout, .emit_ids = o->emit_ids, .echo_prompt = true};
        GenerationRecord record = {.watch = {logits.file != NULL, see_logits},
                                   .logits_file = logits.file,
                                   .logits_path = o->logits_path,
                                   .kv = &t->state.kv,
                                   .n_prompt = n_prompt,
                                   .vocab_size = c->vocab_size,
                                   .pace = {.adaptive = o->threads == 0}};
        int stop_token, steps = clamp_steps(o, n_prompt, c->seq_len);
        int generated = timed_generate(t, tok, sampler, ids, steps, &out, &record, &stop_token);
        status = close_output(&logits, generated < 0 ? EXIT_DATA : 0);
        if (status == 0 && !o->quiet) {
            print_summary(&record, generated, stop_token, c, o, &t->state.kv);
        }
    }
    free(ids);
    return status;
}

// The whole program: the arguments, then the model, the tokenizer and the sampler, then the mode.
// A standard stream that starts closed would hand its number to the first file opened, and
// the generated text would land in --logits' file: each is opened on /dev/null instead.
static int open_closed_standard_streams(void) {
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) == -1 && errno == EBADF &&
            open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd) {
            return -1; // nowhere to say so
        }
    }
    return 0;
}

// The stack the program's deepest calls need, with room to spare: a smaller limit (ulimit -s)
// would end the run with a segmentation fault somewhere in a kernel, so it is refused up front.
#define MIN_STACK_BYTES ((rlim_t)256 << 10)

static int check_stack_limit(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_STACK, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
        limit.rlim_cur < MIN_STACK_BYTES) {
        // no printf: on a stack this small its formatting alone could overflow it
        static const char message[] = "run: the stack limit (ulimit -s) is below the 256 KiB "
                                      "this program needs\n";
        ssize_t written = write(STDERR_FILENO, message, sizeof message - 1);
        (void)written;
        return -1;
    }
    return 0;
}

static int run_command_line(int argc, char **argv) {
    if (open_closed_standard_streams() != 0) {
        return EXIT_DATA;
    }
    if (check_stack_limit() != 0) {
        return EXIT_USAGE;
    }
    Options o;
    int parsed = parse_options(argc, argv, &o);
    if (parsed != 0) {
        return parsed > 0 ? 0 : EXIT_USAGE;
    }
    if (start_threads(o.threads) != 0) {
        return EXIT_USAGE;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (o.threads > 0 && cores > 0 && o.threads > cores) {
        fprintf(stderr,
                "run: warning: --threads %d is more than this machine's %ld cores: the "
                "threads will take turns, and every product waits for the last\n",
                o.threads, cores);
    }
    Transformer transformer;
    if (build_transformer(&transformer, o.model_path, o.kv_format)) {
        return EXIT_DATA;
    }
    if (o.mode == MODE_INFO) { // needs no tokenizer
        int status = run_info(&o, &transformer);
        free_transformer(&transformer);
        return finish_output(status);
    }
    Tokenizer tokenizer = {0};
    Sampler sampler = {0};
    int status = load_tokenizer(&tokenizer, &o, &transformer);
    tokenizer.parse_specials = !o.no_special;
    if (status == 0 && transformer.checkpoint->vocab_only && o.mode != MODE_ENCODE) {
        report_error("%s holds a vocabulary and no weights: it serves --encode and --info only",
                     o.model_path);
        status = EXIT_USAGE;
    }
    if (status == 0 && build_sampler(&sampler, transformer.config.vocab_size, o.temperature,
                                     o.top_k, o.top_p, o.seed)) {
        status = EXIT_DATA;
    }
    if (status == 0) {
        switch (o.mode) {
        case MODE_ENCODE: status = run_encode(&o, &transformer, &tokenizer); break;
        case MODE_EVAL: status = run_eval(&o, &transformer, &tokenizer); break;
        case MODE_INSPECT: status = run_inspection(&o, &transformer, &tokenizer); break;
        default: status = run_generate(&o, &transformer, &tokenizer, &sampler); break;
        }
    }
    free_sampler(&sampler);
    free_tokenizer(&tokenizer);
    free_transformer(&transformer);
    return finish_output(status);
}
