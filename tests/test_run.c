/*
 * Unit, conformance and command-line tests for run.c (Check framework).
 *
 * The tests include run.c itself, so they call the real functions. Every check compares against
 * something independent of the code under test: a naive loop written here, a value worked out by
 * hand, or the golden outputs of another implementation in ../shared/golden.
 *
 * Run from the repository root (make test does): the command-line suite runs ./run, and the
 * conformance suite reads ../shared. Without ../shared that suite prints one SKIPPED line.
 */

#define RUN_NO_MAIN
#include "../run.c"

// The kernel table the build under test runs: Part 2's fast kernels, or Part 1's own in the
// plain build (make plain), where the tests of the fast kernels themselves are left out.
#ifdef RUN_PLAIN
#define BUILD_KERNELS     plain_kernels
#define quantize_row_fast quantize_row
#define PLAIN_BUILD       1
#else
#define BUILD_KERNELS fast_kernels
#define PLAIN_BUILD   0
#endif

#include <check.h>
#include <sys/wait.h>

#define SHARED "../shared"
#define GOLDEN SHARED "/golden"

// ----------------------------------------------------------------------------
// Test data: a small deterministic random generator (independent of run.c's sampler)

static uint64_t lcg_next(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return *state >> 11;
}

static float uniform(uint64_t *state, float low, float high) {
    return low + (high - low) * (float)((double)lcg_next(state) / (double)(1ull << 53));
}

static void fill_uniform(float *x, size_t n, uint64_t *state, float low, float high) {
    for (size_t i = 0; i < n; i++) {
        x[i] = uniform(state, low, high);
    }
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float worst = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        worst = d > worst || isnan(d) ? d : worst;
    }
    return worst;
}

// ----------------------------------------------------------------------------
// Naive references, written for clarity in double precision

static void naive_matmul(float *out, const float *x, const float *w, int n, int d) {
    for (int i = 0; i < d; i++) {
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            sum += (double)w[(size_t)i * n + j] * x[j];
        }
        out[i] = (float)sum;
    }
}

static void naive_rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sum += (double)x[i] * x[i];
    }
    double scale = 1.0 / sqrt(sum / n + eps);
    for (int i = 0; i < n; i++) {
        out[i] = (float)(x[i] * scale * weight[i]);
    }
}

// Softmax that treats -INFINITY as "masked": probability exactly zero.
static void naive_softmax(float *x, int n) {
    double max = -INFINITY;
    for (int i = 0; i < n; i++) {
        max = x[i] > max ? x[i] : max;
    }
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sum += isinf(x[i]) && x[i] < 0 ? 0.0 : exp(x[i] - max);
    }
    for (int i = 0; i < n; i++) {
        x[i] = isinf(x[i]) && x[i] < 0 ? 0.0f : (float)(exp(x[i] - max) / sum);
    }
}

// RoPE as a complex multiplication: pair (a, b) is the number a + ib, times e^(i * angle).
static void naive_rope(float *v, int head_dim, int pos, float theta) {
    for (int i = 0; i < head_dim; i += 2) {
        double angle = pos / pow(theta, (double)i / head_dim);
        double a = v[i], b = v[i + 1];
        v[i] = (float)(a * cos(angle) - b * sin(angle));
        v[i + 1] = (float)(a * sin(angle) + b * cos(angle));
    }
}

// Attention of query position pos over a full (S, kv_dim) cache, with an explicit causal mask
// (-INFINITY for every key after pos). Query head h reads kv head h * KVH / H.
static void naive_attention(float *out, const float *q, const float *keys, const float *values,
                            int pos, int seq_len, int n_heads, int n_kv_heads, int head_dim) {
    int kv_dim = n_kv_heads * head_dim;
    float *scores = malloc(seq_len * sizeof(float));
    for (int h = 0; h < n_heads; h++) {
        int kv = h * n_kv_heads / n_heads;
        for (int t = 0; t < seq_len; t++) {
            if (t > pos) {
                scores[t] = -INFINITY;
                continue;
            }
            double sum = 0.0;
            for (int i = 0; i < head_dim; i++) {
                sum += (double)q[h * head_dim + i] * keys[t * kv_dim + kv * head_dim + i];
            }
            scores[t] = (float)(sum / sqrt((double)head_dim));
        }
        naive_softmax(scores, seq_len);
        for (int i = 0; i < head_dim; i++) {
            double sum = 0.0;
            for (int t = 0; t < seq_len; t++) {
                sum += (double)scores[t] * values[t * kv_dim + kv * head_dim + i];
            }
            out[h * head_dim + i] = (float)sum;
        }
    }
    free(scores);
}

// The whole model over tokens[0..T) at once, without a KV cache: every layer computes the keys
// and values of all T positions and masks the future explicitly. logits: (T, V).
static void naive_forward_all(const Config *c, const Weights *w, const int *tokens, int T,
                              float *logits) {
    int D = c->dim, F = c->hidden_dim, hd = c->head_dim, H = c->n_heads, KVH = c->n_kv_heads;
    int q_dim = H * hd, kv_dim = KVH * hd;
    float *x = calloc((size_t)T * D, sizeof(float)), *xb = calloc(D, sizeof(float));
    float *q = calloc((size_t)T * q_dim, sizeof(float));
    float *k = calloc((size_t)T * kv_dim, sizeof(float)), *v = calloc((size_t)T * kv_dim, 4);
    float *att = calloc(q_dim, sizeof(float)), *proj = calloc(D, sizeof(float));
    float *h1 = calloc(F, sizeof(float)), *h3 = calloc(F, sizeof(float));
    float *normed = calloc((size_t)T * D, sizeof(float));
    for (int t = 0; t < T; t++) {
        memcpy(x + (size_t)t * D, w->token_embedding.f32 + (size_t)tokens[t] * D,
               D * sizeof(float));
    }
    for (int l = 0; l < c->n_layers; l++) {
        for (int t = 0; t < T; t++) {
            naive_rmsnorm(normed + (size_t)t * D, x + (size_t)t * D, w->rms_att + (size_t)l * D, D,
                          c->norm_eps);
            naive_matmul(q + (size_t)t * q_dim, normed + (size_t)t * D,
                         w->wq.f32 + (size_t)l * q_dim * D, D, q_dim);
            naive_matmul(k + (size_t)t * kv_dim, normed + (size_t)t * D,
                         w->wk.f32 + (size_t)l * kv_dim * D, D, kv_dim);
            naive_matmul(v + (size_t)t * kv_dim, normed + (size_t)t * D,
                         w->wv.f32 + (size_t)l * kv_dim * D, D, kv_dim);
            for (int h = 0; h < H; h++) {
                naive_rope(q + (size_t)t * q_dim + h * hd, hd, t, c->rope_theta);
            }
            for (int h = 0; h < KVH; h++) {
                naive_rope(k + (size_t)t * kv_dim + h * hd, hd, t, c->rope_theta);
            }
        }
        for (int t = 0; t < T; t++) {
            naive_attention(att, q + (size_t)t * q_dim, k, v, t, T, H, KVH, hd);
            naive_matmul(proj, att, w->wo.f32 + (size_t)l * D * q_dim, q_dim, D);
            for (int i = 0; i < D; i++) {
                x[(size_t)t * D + i] += proj[i];
            }
        }
        for (int t = 0; t < T; t++) {
            naive_rmsnorm(xb, x + (size_t)t * D, w->rms_ffn + (size_t)l * D, D, c->norm_eps);
            naive_matmul(h1, xb, w->w1.f32 + (size_t)l * F * D, D, F);
            naive_matmul(h3, xb, w->w3.f32 + (size_t)l * F * D, D, F);
            for (int i = 0; i < F; i++) {
                h1[i] = (float)(h1[i] / (1.0 + exp(-(double)h1[i])) * h3[i]);
            }
            naive_matmul(proj, h1, w->w2.f32 + (size_t)l * D * F, F, D);
            for (int i = 0; i < D; i++) {
                x[(size_t)t * D + i] += proj[i];
            }
        }
    }
    for (int t = 0; t < T; t++) {
        naive_rmsnorm(xb, x + (size_t)t * D, w->rms_final, D, c->norm_eps);
        naive_matmul(logits + (size_t)t * c->vocab_size, xb, w->classifier.f32, D, c->vocab_size);
    }
    free(x), free(xb), free(q), free(k), free(v), free(att), free(proj), free(h1), free(h3);
    free(normed);
}

// ----------------------------------------------------------------------------
// Writing test checkpoints and tokenizers

typedef struct {
    unsigned char *data;
    size_t size, capacity;
} Bytes;

static void bytes_append(Bytes *b, const void *data, size_t n) {
    if (n == 0) {
        return; // memcpy into a buffer not yet allocated is undefined even for 0 bytes
    }
    if (b->size + n > b->capacity) {
        b->capacity = (b->size + n) * 2;
        b->data = realloc(b->data, b->capacity);
    }
    memcpy(b->data + b->size, data, n);
    b->size += n;
}

static void bytes_u32(Bytes *b, uint32_t v) {
    bytes_append(b, &v, 4);
}

static void bytes_f32(Bytes *b, float v) {
    bytes_append(b, &v, 4);
}

// A small hand-made vocabulary in tokenizer.bin layout: the three control pieces, 256 byte
// pieces, then ordinary pieces with their scores (higher merges first).
static const char *test_pieces[] = {" ",    "a",     "b",      "c",  "e",   "h",  "l",  "o",
                                    "é",    "ab",    "abc",    " a", " ab", "he", "ll", "lo",
                                    "hell", "hello", " hello", " c", "  ",  "x",  "y",  "z",
                                    "xy",   "yz",    "<",      "s",  ">",   "<s"};
static const float test_scores[] = {-1,  -2,  -3,  -4,  -5,  -6,  -7,  -8,  -9,  -10,
                                    -11, -12, -13, -14, -15, -16, -17, -18, -19, -20,
                                    -21, -22, -23, -24, -25, -25, -26, -27, -28, -29};
#define N_TEST_PIECES    (int)(sizeof test_pieces / sizeof test_pieces[0])
#define TEST_VOCAB       (3 + 256 + N_TEST_PIECES)
#define FIRST_TEST_PIECE (3 + 256)

static Bytes test_tokenizer_bytes(void) {
    Bytes b = {0};
    bytes_u32(&b, 16);
    const char *controls[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) {
        bytes_f32(&b, 0.0f);
        bytes_u32(&b, (uint32_t)strlen(controls[i]));
        bytes_append(&b, controls[i], strlen(controls[i]));
    }
    for (int byte = 0; byte < 256; byte++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", byte);
        bytes_f32(&b, 0.0f);
        bytes_u32(&b, 6);
        bytes_append(&b, name, 6);
    }
    for (int i = 0; i < N_TEST_PIECES; i++) {
        bytes_f32(&b, test_scores[i]);
        bytes_u32(&b, (uint32_t)strlen(test_pieces[i]));
        bytes_append(&b, test_pieces[i], strlen(test_pieces[i]));
    }
    return b;
}

static int test_piece_id(const char *piece) {
    for (int i = 0; i < N_TEST_PIECES; i++) {
        if (strcmp(test_pieces[i], piece) == 0) {
            return FIRST_TEST_PIECE + i;
        }
    }
    ck_abort_msg("no test piece '%s'", piece);
    return -1;
}

static Config small_config(int n_heads, int n_kv_heads, bool shared_classifier) {
    return (Config){.dim = 32,
                    .hidden_dim = 72,
                    .n_layers = 2,
                    .n_heads = n_heads,
                    .n_kv_heads = n_kv_heads,
                    .head_dim = 32 / n_heads,
                    .vocab_size = TEST_VOCAB,
                    .seq_len = 24,
                    .rope_theta = 10000.0f,
                    .norm_eps = 1e-5f,
                    .shared_classifier = shared_classifier,
                    .bos_id = 1,
                    .eos_id = 2,
                    .rope_scale = 1.0f,
                    .embedding_scale = 1.0f,
                    .query_scale = 1.0f / sqrtf(32.0f / n_heads)};
}

// Random weights for c: normal-ish values, RMSNorm weights in [0.5, 1.5) so every one matters.
static float *random_weights(const Config *c, uint64_t seed, size_t *n_floats) {
    Weights w;
    *n_floats = layout_weights(c, false, NULL, &w) / sizeof(float);
    float *data = malloc(*n_floats * sizeof(float));
    fill_uniform(data, *n_floats, &seed, -0.25f, 0.25f);
    layout_weights(c, false, (const unsigned char *)data, &w);
    size_t D = c->dim, L = c->n_layers;
    fill_uniform((float *)w.rms_att, L * D, &seed, 0.5f, 1.5f);
    fill_uniform((float *)w.rms_ffn, L * D, &seed, 0.5f, 1.5f);
    fill_uniform((float *)w.rms_final, D, &seed, 0.5f, 1.5f);
    return data;
}

static void naive_quantize(const float *w, size_t count, int group, int8_t *q, float *scales);
static void expect_rejected(const Bytes *file, const char *needle);

// A checkpoint in the project's format, as bytes.
static Bytes gqam_bytes(const Config *c, const float *weights, size_t n_floats,
                        const Bytes *tokenizer) {
    Bytes b = {0};
    size_t tok_size = tokenizer ? tokenizer->size : 0;
    uint64_t weights_offset = (GQAM_HEADER_BYTES + tok_size + 63) / 64 * 64;
    bytes_append(&b, "GQAM", 4);
    uint32_t fields[] = {1,           c->dim,        c->hidden_dim,
                         c->n_layers, c->n_heads,    c->n_kv_heads,
                         c->head_dim, c->vocab_size, c->seq_len};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        bytes_u32(&b, fields[i]);
    }
    bytes_f32(&b, c->rope_theta);
    bytes_f32(&b, c->norm_eps);
    bytes_u32(&b, c->shared_classifier ? 1 : 0);
    bytes_u32(&b, c->bos_id);
    bytes_u32(&b, c->eos_id);
    bytes_u32(&b, 0);
    uint64_t offsets[] = {GQAM_HEADER_BYTES, tok_size, weights_offset, n_floats * 4};
    bytes_append(&b, offsets, sizeof offsets);
    unsigned char zeros[256] = {0};
    bytes_append(&b, zeros, GQAM_HEADER_BYTES - b.size);
    if (tokenizer) {
        bytes_append(&b, tokenizer->data, tokenizer->size);
    }
    bytes_append(&b, zeros, weights_offset - b.size);
    bytes_append(&b, weights, n_floats * sizeof(float));
    return b;
}

// The int8 variant of a checkpoint, written from the format's description (README.md): the
// same header with flags bit 1 and the group size at byte 60; every matrix as int8 values then
// one fp32 scale per group, every vector fp32, each part starting on a 64-byte boundary.
static Bytes gqam_int8_bytes(const Config *c, const float *weights, int group) {
    size_t D = c->dim, F = c->hidden_dim, L = c->n_layers, V = c->vocab_size;
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    struct {
        size_t count;
        bool matrix;
    } table[] = {{V * D, true},      {L * D, false},     {L * q_dim * D, true},
                 {L * kv * D, true}, {L * kv * D, true}, {L * D * q_dim, true},
                 {L * D, false},     {L * F * D, true},  {L * D * F, true},
                 {L * F * D, true},  {D, false},         {V * D, true}};
    int n_tensors = c->shared_classifier ? 11 : 12;
    Bytes section = {0};
    unsigned char zeros[64] = {0};
    const float *w = weights;
    for (int k = 0; k < n_tensors; k++) {
        size_t count = table[k].count;
        bytes_append(&section, zeros, (64 - section.size % 64) % 64);
        if (!table[k].matrix) {
            bytes_append(&section, w, count * sizeof(float));
        } else {
            int8_t *values = malloc(count);
            float *scales = malloc(count / group * sizeof(float));
            naive_quantize(w, count, group, values, scales);
            bytes_append(&section, values, count);
            bytes_append(&section, zeros, (64 - section.size % 64) % 64);
            bytes_append(&section, scales, count / group * sizeof(float));
            free(values), free(scales);
        }
        w += count;
    }
    Bytes file = gqam_bytes(c, (const float *)section.data, section.size / sizeof(float), NULL);
    uint32_t flags = (c->shared_classifier ? 1 : 0) | 2, group_field = group;
    memcpy(file.data + 48, &flags, 4);
    memcpy(file.data + 60, &group_field, 4);
    free(section.data);
    return file;
}

static char *write_temp_file(const void *data, size_t size, const char *suffix) {
    char *path = malloc(256);
    snprintf(path, 256, "/tmp/run-test-XXXXXX%s", suffix);
    int fd = mkstemps(path, (int)strlen(suffix));
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, data, size), (ssize_t)size);
    close(fd);
    return path;
}

// A random model with the test tokenizer, written to a temporary file.
static char *write_test_model(const Config *c, uint64_t seed) {
    size_t n_floats;
    float *weights = random_weights(c, seed, &n_floats);
    Bytes tok = test_tokenizer_bytes();
    Bytes file = gqam_bytes(c, weights, n_floats, &tok);
    char *path = write_temp_file(file.data, file.size, ".bin");
    free(weights), free(tok.data), free(file.data);
    return path;
}

// Runs f with stderr captured into message; returns f's result.
static int capture_stderr(int (*f)(void *), void *arg, char *message, size_t capacity) {
    char path[] = "/tmp/run-test-stderr-XXXXXX";
    int fd = mkstemp(path);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    int result = f(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ssize_t n = pread(fd, message, capacity - 1, 0);
    message[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(path);
    return result;
}

// ----------------------------------------------------------------------------
// Kernels

// Scratch buffers for matmul, sized for rows of up to max_cols values.
static RunState matmul_scratch(size_t max_cols) {
    RunState s = {0};
    s.kernels = &BUILD_KERNELS;
    s.x_q8 = calloc(BLOCK * max_cols, 1);
    s.x_scales = calloc(BLOCK * max_cols, sizeof(float));
    s.scratch = calloc(1, sizeof *s.scratch);
    s.scratch->n_threads = thread_count();
#ifndef RUN_PLAIN
    s.scratch->matvec = matvec_f32_rows4; // the pattern choose_matvec may keep; rows1 is tested too
    s.scratch->x_k = calloc(max_cols, 1);
    s.scratch->x_k_scales = calloc(max_cols / 256 + 1, sizeof(float));
    s.scratch->x_k_sums = calloc(max_cols / 32 + 1, sizeof(int16_t));
    s.scratch->x_k6 = calloc(max_cols, 1);
    s.scratch->x_k6_sums = calloc(max_cols / 16 + 1, sizeof(int16_t));
    s.scratch->x_32 = calloc(max_cols + 128, 1);
    s.scratch->x_32_lanes = calloc(max_cols / 2 + 32, sizeof(float));
    s.scratch->x_32_sums = calloc(max_cols / 4 + 16, sizeof(int32_t));
    s.scratch->x_eight = calloc(max_cols / 32 * 256, 1);
    s.scratch->x_eight_sums = calloc(max_cols / 32, sizeof(int32_t));
    s.scratch->x_eight_offsets = calloc(max_cols / 32 * 16, sizeof(int32_t));
#endif
#ifndef RUN_PLAIN
    s.scratch->panels = calloc((size_t)s.scratch->n_threads * ROW_TILE * max_cols, sizeof(float));
    s.scratch->x_columns = calloc(max_cols * BLOCK, sizeof(float));
#endif
    return s;
}

static void free_matmul_scratch(RunState *s) {
#ifndef RUN_PLAIN
    free(s->scratch->panels), free(s->scratch->x_columns);
    free(s->scratch->x_k), free(s->scratch->x_k_scales), free(s->scratch->x_k_sums);
    free(s->scratch->x_32), free(s->scratch->x_32_lanes), free(s->scratch->x_k6);
    free(s->scratch->x_k6_sums), free(s->scratch->x_32_sums);
    free(s->scratch->x_eight), free(s->scratch->x_eight_sums), free(s->scratch->x_eight_offsets);
    free_eight_rows(s->scratch);
#endif
    free(s->x_q8), free(s->x_scales), free(s->scratch);
}

// Quantizes w (d, n) in groups the naive way: scale = max|w| / 127, value = round(w / scale).
static void naive_quantize(const float *w, size_t count, int group, int8_t *q, float *scales) {
    for (size_t g = 0; g < count / group; g++) {
        double max = 0.0;
        for (int i = 0; i < group; i++) {
            max = fmax(max, fabs((double)w[g * group + i]));
        }
        scales[g] = (float)(max / 127.0);
        for (int i = 0; i < group; i++) {
            q[g * group + i] = max > 0 ? (int8_t)lround(w[g * group + i] / (max / 127.0)) : 0;
        }
    }
}

// fp32 products, one position and blocks, at sizes that are not multiples of the vector width.
START_TEST(test_matmul_matches_naive) {
    uint64_t seed = 1;
    int sizes[][3] = {{1, 1, 1},      {7, 3, 2},     {37, 13, 5},  {64, 64, 4},
                      {129, 31, 9},   {16, 8, 8},    {300, 17, 1}, {33, 4, 7},
                      {288, 100, 64}, {768, 65, 13}, {17, 33, 25}, {1376, 40, 12}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int n = sizes[k][0], d = sizes[k][1], positions = sizes[k][2];
        float *w = malloc(sizeof(float) * n * d), *x = malloc(sizeof(float) * n * positions);
        float *got = malloc(sizeof(float) * d * positions), *want = malloc(sizeof(float) * d);
        fill_uniform(w, (size_t)n * d, &seed, -1, 1);
        fill_uniform(x, (size_t)n * positions, &seed, -1, 1);
        Matrix m = {.f32 = w, .rows = d, .cols = n};
        RunState s = matmul_scratch(n);
        s.kernels->matmul(got, x, positions, &m, &s);
        for (int p = 0; p < positions; p++) {
            naive_matmul(want, x + p * n, w, n, d);
            // each sum is taken in one order over n terms, so rounding grows with n
            float diff = max_abs_diff(got + p * d, want, d);
            ck_assert_msg(diff <= 1e-5f + 5e-8f * n, "n %d d %d B %d p %d: %g", n, d, positions, p,
                          diff);
        }
        free_matmul_scratch(&s);
        free(w), free(x), free(got), free(want);
    }
}
END_TEST

#ifndef RUN_PLAIN // a fast kernel
// Products of one input (queries, keys and values of a GQA layer: 96, 32 and 32 rows, and the
// first two the other way round) against naive loops, and bit for bit against the same products
// one at a time on one thread, on 1 to 3 threads, for one position and for blocks, fp32 and
// int8. The matrices are large enough for the threads to share them.
START_TEST(test_matmul_shared_matches_single) {
    uint64_t seed = 13;
    int n = 1024, group = 32, rows[] = {96, 32, 32}, positions[] = {1, 7, 70, BLOCK};
    int max_positions = BLOCK;
    float *x = malloc(sizeof(float) * n * max_positions), *want = malloc(sizeof(float) * 96);
    float *w[3], *got[3], *single[3], *wscale[3];
    int8_t *wq[3];
    Matrix fp32[3], int8[3];
    for (int i = 0; i < 3; i++) {
        w[i] = malloc(sizeof(float) * n * rows[i]);
        wq[i] = malloc((size_t)n * rows[i]);
        wscale[i] = malloc(sizeof(float) * n * rows[i] / group);
        got[i] = malloc(sizeof(float) * rows[i] * max_positions);
        single[i] = malloc(sizeof(float) * rows[i] * max_positions);
        fill_uniform(w[i], (size_t)n * rows[i], &seed, -1, 1);
        naive_quantize(w[i], (size_t)n * rows[i], group, wq[i], wscale[i]);
        fp32[i] = (Matrix){.f32 = w[i], .rows = rows[i], .cols = n};
        int8[i] =
            (Matrix){.q8 = wq[i], .scales = wscale[i], .rows = rows[i], .cols = n, .group = group};
    }
    fill_uniform(x, (size_t)n * max_positions, &seed, -1, 1);
    int threads_before = omp_get_max_threads();
    for (int format = 0; format < 2; format++) {
        const Matrix *ws[] = {format ? &int8[0] : &fp32[0], format ? &int8[1] : &fp32[1],
                              format ? &int8[2] : &fp32[2]};
        for (size_t k = 0; k < sizeof positions / sizeof positions[0]; k++) {
            int B = positions[k];
            omp_set_num_threads(1);
            RunState one = matmul_scratch(n);
            for (int i = 0; i < 3; i++) {
                one.kernels->matmul(single[i], x, B, ws[i], &one);
            }
            free_matmul_scratch(&one);
            // the 96-row matrix first (as queries come before keys), and second
            for (int run = 0; run < 6; run++) {
                int threads = 1 + run / 2;
                bool swapped = run % 2 == 1;
                omp_set_num_threads(threads);
                const Matrix *order[] = {ws[swapped], ws[!swapped], ws[2]};
                float *outs[] = {got[swapped], got[!swapped], got[2]};
                for (int i = 0; i < 3; i++) { // nothing left from the run before
                    memset(got[i], 0x7f, sizeof(float) * rows[i] * max_positions);
                }
                RunState s = matmul_scratch(n);
                s.kernels->matmul_shared(outs, x, B, order, 3, &s);
                for (int i = 0; i < 3; i++) {
                    ck_assert_msg(memcmp(got[i], single[i], sizeof(float) * rows[i] * B) == 0,
                                  "format %d B %d threads %d order %d matrix %d differs from alone",
                                  format, B, threads, swapped, i);
                    if (format == 0) {
                        for (int p = 0; p < B; p++) {
                            naive_matmul(want, x + (size_t)p * n, w[i], n, rows[i]);
                            float diff = max_abs_diff(got[i] + (size_t)p * rows[i], want, rows[i]);
                            ck_assert_msg(diff <= 1e-4f,
                                          "B %d threads %d order %d matrix %d position %d: %g", B,
                                          threads, swapped, i, p, diff);
                        }
                    }
                }
                free_matmul_scratch(&s);
            }
        }
    }
    omp_set_num_threads(threads_before);
    for (int i = 0; i < 3; i++) {
        free(w[i]), free(wq[i]), free(wscale[i]), free(got[i]), free(single[i]);
    }
    free(x), free(want);
}
END_TEST
#endif

#ifndef RUN_PLAIN // a fast kernel
// The block product's input columns and register tiles (AVX-512) against their plain C twins:
// inputs that are not a multiple of sixteen, partial blocks, 1 to ROW_TILE rows, every count of
// positions of a tile.
START_TEST(test_row_tile_kernels_match_portable) {
    uint64_t seed = 5;
    size_t ns[] = {1, 16, 37, 300};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        size_t n = ns[k], d = 45;
        float *w = malloc(sizeof(float) * ROW_TILE * n), *x = malloc(sizeof(float) * BLOCK * n);
        float *fast = malloc(sizeof(float) * BLOCK * n), *slow = malloc(sizeof(float) * BLOCK * n);
        float *out_fast = malloc(sizeof(float) * BLOCK * d);
        float *out_slow = malloc(sizeof(float) * BLOCK * d);
        fill_uniform(w, ROW_TILE * n, &seed, -1, 1);
        fill_uniform(x, BLOCK * n, &seed, -1, 1);
        int position_counts[] = {1, 5, 17, 33, BLOCK};
        for (size_t c = 0; c < sizeof position_counts / sizeof position_counts[0]; c++) {
            for (int p0 = 0; p0 < BLOCK; p0 += 16) {
                inputs_to_columns(fast, x, p0, position_counts[c], n);
                inputs_to_columns_portable(slow, x, p0, position_counts[c], n);
            }
            ck_assert_msg(memcmp(fast, slow, sizeof(float) * BLOCK * n) == 0,
                          "columns n %zu positions %d", n, position_counts[c]);
        }
        const float *w_rows[ROW_TILE];
        for (size_t rows = 1; rows <= ROW_TILE; rows++) {
            for (size_t r = 0; r < ROW_TILE; r++) {
                w_rows[r] = w + (r < rows ? r : 0) * n;
            }
            for (int count = 1; count <= TILE_POSITIONS; count++) {
                for (size_t i = 0; i < (size_t)BLOCK * d; i++) {
                    out_fast[i] = out_slow[i] = 7.0f; // what lies past the tile stays
                }
                row_tile(out_fast + 3, d, w_rows, rows, slow + 1, n, count, w);
                row_tile_portable(out_slow + 3, d, w_rows, rows, slow + 1, n, count);
                ck_assert_msg(max_abs_diff(out_fast, out_slow, (size_t)BLOCK * d) <= 1e-5f,
                              "tile n %zu rows %zu count %d", n, rows, count);
            }
        }
        free(w), free(x), free(fast), free(slow), free(out_fast), free(out_slow);
    }
}
END_TEST
#endif

#ifndef RUN_PLAIN // a fast kernel
// Quantizing activations (sixteen values at a time, AVX-512) against the plain twin, bit for bit,
// for groups of 16, 32 and 64 and a group of 8 (which takes the twin), with ties, zeros and a
// group of zeros among the values.
START_TEST(test_quantize_row_matches_portable) {
    uint64_t seed = 14;
    size_t n = 256;
    float x[256], scales_fast[32], scales_slow[32];
    int8_t fast[256], slow[256];
    fill_uniform(x, n, &seed, -3, 3);
    for (int i = 0; i < 16; i++) {
        x[64 + i] = 0.0f; // a group of zeros at group 16
    }
    x[3] = 127.0f, x[5] = 0.5f, x[6] = -1.5f, x[7] = 2.5f; // with max 127, halves are ties
    int groups[] = {8, 16, 32, 64};
    for (size_t k = 0; k < sizeof groups / sizeof groups[0]; k++) {
        quantize_row_fast(fast, scales_fast, x, n, groups[k]);
        quantize_row(slow, scales_slow, x, n, groups[k]);
        ck_assert_msg(memcmp(fast, slow, n) == 0, "values, group %d", groups[k]);
        ck_assert_msg(memcmp(scales_fast, scales_slow, sizeof(float) * n / groups[k]) == 0,
                      "scales, group %d", groups[k]);
    }
}
END_TEST
#endif

#ifndef RUN_PLAIN // a fast kernel
// The feed-forward's gate (sixteen lanes at a time, AVX-512) against silu(x) * y in double
// precision, for spans that end mid-vector, large gates of both signs and values near zero.
START_TEST(test_swiglu_matches_silu) {
    uint64_t seed = 12;
    size_t n = 75;
    float gate[75], value[75], fast[75], slow[75];
    fill_uniform(gate, n, &seed, -12, 12);
    fill_uniform(value, n, &seed, -3, 3);
    float extremes[] = {-200.0f, -88.0f, -20.0f, -1e-3f, 0.0f, 1e-3f, 20.0f, 88.0f, 200.0f};
    memcpy(gate + 60, extremes, sizeof extremes);
    for (size_t last = 1; last <= n; last += 7) {
        memcpy(fast, gate, sizeof gate), memcpy(slow, gate, sizeof gate);
        swiglu_span(fast, value, 1, last);
        swiglu(slow + 1, value + 1, last - 1);
        ck_assert_msg(fast[0] == gate[0] && (last == n || fast[last] == gate[last]),
                      "values outside the span changed, last %zu", last);
        for (size_t i = 1; i < last; i++) {
            double x = gate[i], want = x / (1.0 + exp(-x)) * value[i];
            double tolerance = 2e-6 * fabs(want) + 1e-30;
            ck_assert_msg(fabs(fast[i] - want) <= tolerance && fabs(slow[i] - want) <= tolerance,
                          "gate %g value %g: fast %g, plain %g, want %g", x, value[i], fast[i],
                          slow[i], want);
        }
    }
}
END_TEST
#endif

#ifndef RUN_PLAIN // a fast kernel
// The fp32 products for one position (one and four rows at a time) against Part 1's dot, at
// every row count's remainder and inputs that are not a multiple of sixteen; the two patterns
// give the same bits, so the one chosen at load changes no result.
START_TEST(test_matvec_matches_plain) {
    uint64_t seed = 8;
    float w[9 * 50], x[50], fast[9], four[9], slow[9];
    fill_uniform(w, 9 * 50, &seed, -1, 1);
    fill_uniform(x, 50, &seed, -1, 1);
    for (size_t n = 1; n <= 50; n++) {
        for (size_t d = 1; d <= 9; d++) {
            matvec_f32_rows1(fast, x, w, n, d);
            matvec_f32_rows4(four, x, w, n, d);
            for (size_t row = 0; row < d; row++) {
                slow[row] = dot(w + row * n, x, n);
            }
            ck_assert_msg(max_abs_diff(fast, slow, d) <= 1e-5f, "n %zu d %zu", n, d);
            ck_assert_msg(memcmp(fast, four, d * sizeof(float)) == 0, "n %zu d %zu", n, d);
        }
    }
}
END_TEST
#endif

START_TEST(test_quantize_row_bounds) {
    uint64_t seed = 9;
    float x[96];
    fill_uniform(x, 96, &seed, -3, 3);
    x[5] = 0.0f;
    for (int i = 64; i < 96; i++) {
        x[i] = 0.0f; // an all-zero group gets scale 0 and zero values
    }
    int8_t q[96];
    float scales[3];
    quantize_row_fast(q, scales, x, 96, 32);
    for (int g = 0; g < 2; g++) {
        float max = 0.0f;
        int biggest = 0;
        for (int i = 0; i < 32; i++) {
            ck_assert_float_le(fabsf(x[g * 32 + i] - q[g * 32 + i] * scales[g]),
                               scales[g] / 2 + 1e-6f);
            biggest = abs(q[g * 32 + i]) > biggest ? abs(q[g * 32 + i]) : biggest;
            max = fmaxf(max, fabsf(x[g * 32 + i]));
        }
        ck_assert_int_eq(biggest, 127);
        ck_assert_float_eq_tol(scales[g], max / 127.0f, 1e-7f);
    }
    ck_assert_float_eq(scales[2], 0.0f);
    ck_assert_int_eq(q[70], 0);
}
END_TEST

// int8 products, one position and blocks: each position's inputs are quantized in the weights'
// groups and each group multiplied as an exact integer sum (checked against a naive integer sum
// of naively quantized inputs), with groups of 32 and of 4.
START_TEST(test_matmul_q8_matches_naive) {
    uint64_t seed = 3;
    int sizes[][4] = {{32, 5, 1, 32},   {64, 7, 3, 32},   {96, 13, 5, 32},   {288, 9, 1, 32},
                      {1376, 6, 4, 32}, {64, 4, 4, 32},   {288, 40, 64, 32}, {96, 7, 33, 32},
                      {12, 9, 20, 4},   {768, 13, 17, 32}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int n = sizes[k][0], d = sizes[k][1], positions = sizes[k][2], group = sizes[k][3];
        float *w = malloc(sizeof(float) * n * d), *x = malloc(sizeof(float) * n * positions);
        int8_t *wq = malloc(n * d), *xq = malloc(n);
        float *ws = malloc(sizeof(float) * n * d / group), *xs = malloc(sizeof(float) * n / group);
        float *got = malloc(sizeof(float) * d * positions);
        fill_uniform(w, (size_t)n * d, &seed, -1, 1);
        fill_uniform(x, (size_t)n * positions, &seed, -2, 2);
        naive_quantize(w, (size_t)n * d, group, wq, ws);
        Matrix m = {.q8 = wq, .scales = ws, .rows = d, .cols = n, .group = group};
        RunState s = matmul_scratch(n);
        s.kernels->matmul(got, x, positions, &m, &s);
        for (int p = 0; p < positions; p++) {
            naive_quantize(x + (size_t)p * n, n, group, xq, xs);
            for (int r = 0; r < d; r++) {
                double want = 0.0;
                for (int g = 0; g < n / group; g++) {
                    long integer = 0;
                    for (int i = 0; i < group; i++) {
                        integer += (long)wq[r * n + g * group + i] * xq[g * group + i];
                    }
                    want += (double)integer * ws[r * n / group + g] * xs[g];
                }
                ck_assert_msg(fabs(got[p * d + r] - want) <= 1e-4 * (1 + fabs(want)),
                              "n %d B %d position %d row %d: %g, want %g", n, positions, p, r,
                              got[p * d + r], want);
            }
        }
        free_matmul_scratch(&s);
        free(w), free(x), free(wq), free(xq), free(ws), free(xs), free(got);
    }
}
END_TEST

#ifndef RUN_PLAIN // a fast kernel
// The block product's int8 tile (AVX-512 VNNI) against its plain C twin: 1 to Q8_ROW_TILE rows,
// every count of positions of a tile, groups of 32 and 8.
START_TEST(test_q8_row_tile_matches_portable) {
    uint64_t seed = 6;
    int shapes[][2] = {{64, 32}, {96, 32}, {40, 8}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        size_t n = shapes[k][0], d = 21;
        int group = shapes[k][1];
        float *x = malloc(sizeof(float) * BLOCK * n), *w = malloc(sizeof(float) * Q8_ROW_TILE * n);
        int8_t *wq = malloc(Q8_ROW_TILE * n), *row_q8 = malloc(n);
        float *ws = malloc(sizeof(float) * Q8_ROW_TILE * n / group),
              *row_scales = malloc(sizeof(float) * n);
        uint8_t *x_u8 = malloc(BLOCK * n);
        float *x_scales = malloc(sizeof(float) * BLOCK * n / group);
        int32_t *sums = malloc(sizeof(int32_t) * Q8_ROW_TILE * n / group);
        float *out_fast = malloc(sizeof(float) * BLOCK * d),
              *out_slow = malloc(sizeof(float) * BLOCK * d);
        fill_uniform(x, BLOCK * n, &seed, -2, 2);
        fill_uniform(w, Q8_ROW_TILE * n, &seed, -1, 1);
        naive_quantize(w, Q8_ROW_TILE * n, group, wq, ws);
        // the block's inputs as the product prepares them: quantized, then as columns of four
        int8_t *rows_q8 = malloc(BLOCK * n);
        uint8_t *x_u8_slow = malloc(BLOCK * n);
        for (int p = 0; p < BLOCK - 3; p++) {
            quantize_row_fast(rows_q8 + p * n, row_scales, x + p * n, n, group);
            for (size_t g = 0; g < n / group; g++) {
                x_scales[g * BLOCK + p] = row_scales[g];
            }
        }
        for (size_t g = 0; g < n / group; g++) {
            for (int p = BLOCK - 3; p < BLOCK; p++) {
                x_scales[g * BLOCK + p] = 0.0f;
            }
        }
        for (int p0 = 0; p0 < BLOCK; p0 += 16) {
            unsigned_columns(x_u8, rows_q8, p0, BLOCK - 3, n);
            unsigned_columns_portable(x_u8_slow, rows_q8, p0, BLOCK - 3, n);
        }
        ck_assert_msg(memcmp(x_u8, x_u8_slow, BLOCK * n) == 0, "columns of four, n %zu", n);
        free(rows_q8), free(x_u8_slow), free(row_q8);
        int32_t *sums_slow = malloc(sizeof(int32_t) * Q8_ROW_TILE * n / group);
        for (size_t rows = 1; rows <= Q8_ROW_TILE; rows++) {
            const int8_t *w_rows[Q8_ROW_TILE];
            const float *w_scales[Q8_ROW_TILE];
            for (size_t r = 0; r < Q8_ROW_TILE; r++) {
                w_rows[r] = wq + (r < rows ? r : 0) * n,
                w_scales[r] = ws + (r < rows ? r : 0) * n / group;
            }
            group_sums(sums, w_rows, Q8_ROW_TILE, n, group);
            group_sums_portable(sums_slow, w_rows, Q8_ROW_TILE, n, group);
            ck_assert_msg(memcmp(sums, sums_slow, sizeof(int32_t) * Q8_ROW_TILE * n / group) == 0,
                          "group sums, n %zu group %d", n, group);
            for (int count = 1; count <= Q8_TILE_POSITIONS; count++) {
                for (size_t i = 0; i < (size_t)BLOCK * d; i++) {
                    out_fast[i] = out_slow[i] = 7.0f; // what lies past the tile stays
                }
                q8_row_tile(out_fast + 2, d, w_rows, w_scales, sums, rows, x_u8 + 4 * 5,
                            x_scales + 5, n, group, count, wq);
                q8_row_tile_portable(out_slow + 2, d, w_rows, w_scales, sums, rows, x_u8 + 4 * 5,
                                     x_scales + 5, n, group, count);
                ck_assert_msg(max_abs_diff(out_fast, out_slow, (size_t)BLOCK * d) <= 1e-4f,
                              "n %zu rows %zu count %d", n, rows, count);
            }
        }
        free(x), free(w), free(wq), free(ws), free(row_scales), free(x_u8), free(sums_slow);
        free(x_scales), free(sums), free(out_fast), free(out_slow);
    }
}
END_TEST
#endif

// A half's value worked out from its bits with ldexp, independently of run.c's half_to_float.
static double naive_half(uint16_t h) {
    int exponent = (h >> 10) & 31, mantissa = h & 1023;
    double value = exponent == 0    ? ldexp(mantissa, -24)
                   : exponent == 31 ? (mantissa != 0 ? NAN : INFINITY)
                                    : ldexp(1024 + mantissa, exponent - 25);
    return h >> 15 ? -value : value;
}

// A random finite half of magnitude between 2^(low - 15) and 2^(high - 14).
static uint16_t random_half(uint64_t *state, int low, int high) {
    uint64_t r = lcg_next(state);
    int exponent = low + (int)(r % (uint64_t)(high - low + 1));
    return (uint16_t)((r >> 20 & 1) << 15 | exponent << 10 | (r >> 32 & 1023));
}

// Every one of the 65536 halves, against the value worked out from its bits, and against the
// processor's own conversion in builds with AVX-512.
START_TEST(test_half_to_float_every_value) {
    for (uint32_t h = 0; h < 65536; h++) {
        double want = naive_half((uint16_t)h);
        float got = half_to_float((uint16_t)h);
        if (isnan(want)) {
            ck_assert_msg(isnan(got), "half 0x%04x: %g, expected NaN", h, got);
            continue;
        }
        ck_assert_msg(got == want && !signbit(got) == !signbit(want),
                      "half 0x%04x: %g, expected %g", h, got, want);
#if HAVE_AVX512
        float hardware = _cvtsh_ss((uint16_t)h);
        ck_assert_int_eq(memcmp(&hardware, &got, sizeof got), 0);
#endif
    }
}
END_TEST

// F16 products: dot_f16 and its portable twin, halves_to_floats and its twin, and matmul for one
// position and for blocks, at sizes around the vector widths, against naive double sums.
START_TEST(test_f16_kernels_match_naive) {
    uint64_t seed = 11;
    int sizes[][3] = {{1, 1, 1},  {7, 3, 2},  {15, 5, 1},  {16, 4, 4},   {17, 9, 5},
                      {31, 2, 3}, {33, 7, 1}, {65, 13, 6}, {288, 11, 1}, {301, 6, 9}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int n = sizes[k][0], d = sizes[k][1], positions = sizes[k][2];
        uint16_t *w = malloc(sizeof(uint16_t) * n * d);
        float *x = malloc(sizeof(float) * n * positions), *wide = malloc(sizeof(float) * n * d);
        float *twin = malloc(sizeof(float) * n * d), *got = malloc(sizeof(float) * d * positions);
        for (int i = 0; i < n * d; i++) {
            w[i] = random_half(&seed, 8, 16);
        }
        fill_uniform(x, (size_t)n * positions, &seed, -1, 1);
        for (size_t i = 0; i < (size_t)n * d; i++) {
            twin[i] = half_to_float(w[i]);
        }
#ifdef RUN_PLAIN
        memcpy(wide, twin, sizeof(float) * n * d);
#else
        halves_to_floats(wide, w, (size_t)n * d);
#endif
        for (int i = 0; i < n * d; i++) {
            ck_assert_msg(wide[i] == naive_half(w[i]) && twin[i] == wide[i], "n %d value %d", n, i);
        }
        Matrix m = {.f16 = w, .rows = d, .cols = n};
        RunState s = matmul_scratch(n);
        s.kernels->matmul(got, x, positions, &m, &s);
        for (int p = 0; p < positions; p++) {
            const float *xp = x + (size_t)p * n;
            for (int r = 0; r < d; r++) {
                double want = 0.0, magnitude = 0.0;
                for (int i = 0; i < n; i++) {
                    want += naive_half(w[r * n + i]) * xp[i];
                    magnitude += fabs(naive_half(w[r * n + i]) * xp[i]);
                }
                double tolerance = 1e-5 * (1 + magnitude);
                const uint16_t *row = w + (size_t)r * n;
                ck_assert_msg(fabs(got[p * d + r] - want) <= tolerance, "matmul n %d B %d", n,
                              positions);
#ifndef RUN_PLAIN
                ck_assert_msg(fabs(dot_f16_fast(row, xp, n, n % 2 == 0) - want) <= tolerance,
                              "dot_f16_fast n %d", n);
#endif
                ck_assert_msg(fabs(dot_f16(row, xp, n) - want) <= tolerance, "dot_f16 n %d", n);
            }
        }
        free_matmul_scratch(&s);
        free(w), free(x), free(wide), free(twin), free(got);
    }
}
END_TEST

// Q8_0 products: dot_q8_0 and its fast twin, and matmul for one position and for blocks of
// positions, against a naive integer sum per block with each position's x quantized the naive
// way. Values include -128, which a file may hold.
START_TEST(test_q8_0_kernels_match_naive) {
    uint64_t seed = 12;
    int sizes[][3] = {{32, 1, 1},  {32, 5, 3},  {64, 7, 1},   {96, 13, 5},
                      {160, 4, 4}, {288, 9, 1}, {1376, 6, 2}, {224, 3, 7}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int n = sizes[k][0], d = sizes[k][1], positions = sizes[k][2], nb = n / 32;
        unsigned char *blocks = malloc((size_t)d * nb * 34);
        float *x = malloc(sizeof(float) * n * positions);
        float *got = malloc(sizeof(float) * d * positions);
        int8_t *xq = malloc(n);
        float *xs = malloc(sizeof(float) * nb);
        for (int b = 0; b < d * nb; b++) {
            uint16_t scale = random_half(&seed, 5, 10);
            memcpy(blocks + b * 34, &scale, 2);
            for (int i = 0; i < 32; i++) {
                int8_t v = (int8_t)(lcg_next(&seed) >> 24);
                v = i == 3 && b % 3 == 0 ? -128 : v;
                blocks[b * 34 + 2 + i] = (unsigned char)v;
            }
        }
        fill_uniform(x, (size_t)n * positions, &seed, -2, 2);
        Matrix m = {.q8_0 = blocks, .rows = d, .cols = n, .group = 32};
        RunState s = matmul_scratch(n);
        s.kernels->matmul(got, x, positions, &m, &s);
        // Both builds quantize every position's x in groups of 32, as the one-position path does
        // (the fast build's blocks through the int8 block product).
        for (int p = 0; p < positions; p++) {
            naive_quantize(x + (size_t)p * n, n, 32, xq, xs);
            for (int r = 0; r < d; r++) {
                double want = 0.0, magnitude = 0.0;
                for (int b = 0; b < nb; b++) {
                    const unsigned char *block = blocks + ((size_t)r * nb + b) * 34;
                    long integer = 0;
                    for (int i = 0; i < 32; i++) {
                        integer += (long)(int8_t)block[2 + i] * xq[b * 32 + i];
                    }
                    double term =
                        integer * naive_half((uint16_t)(block[0] | block[1] << 8)) * xs[b];
                    want += term;
                    magnitude += fabs(term);
                }
                double tolerance = 1e-5 * (1 + magnitude);
                const unsigned char *row = blocks + (size_t)r * nb * 34;
#ifndef RUN_PLAIN
                ck_assert_msg(fabs(dot_q8_0_fast(row, xq, xs, n, r % 2 == 0) - want) <= tolerance,
                              "dot_q8_0_fast n %d", n);
#endif
                ck_assert_msg(fabs(dot_q8_0(row, xq, xs, n) - want) <= tolerance, "dot_q8_0 n %d",
                              n);
                ck_assert_msg(fabs(got[(size_t)p * d + r] - want) <= tolerance,
                              "matmul n %d row %d position %d", n, r, p);
            }
        }
        free_matmul_scratch(&s);
        free(blocks), free(x), free(got), free(xq), free(xs);
    }
}
END_TEST

// Every block type's products, of one position and of a block of four (the fast build's integer
// kernels and int8 block product, the plain build's dequantizing dot), against a double sum over
// decode_row's fp32 weights. Integer kernels round x to int8 (at most max|x| / 254 off per
// value), so they may be off by sum |w| * max|x| / 254;
// a run or lane paired with the wrong x, scale or minimum is off by far more. Bytes are random,
// each block's fp16 numbers (the offsets of ggml-common.h's layouts) finite.
// Row r of a block matrix times x (n), summed in double over Part 1's dequantized weights (w:
// scratch for the row), and the error a product against x rounded to int8 may make: half a step
// of x's rounding (max |x| / 127) on every weight, and fp32's on the sum.
static double dequantized_product(const Matrix *m, int r, const float *x, float *w,
                                  double *tolerance) {
    decode_row(m, r, w);
    double want = 0.0, weights = 0.0, magnitude = 0.0, x_max = 0.0;
    for (size_t i = 0; i < m->cols; i++) {
        want += (double)w[i] * x[i];
        weights += fabs(w[i]);
        magnitude += fabs((double)w[i] * x[i]);
        x_max = fmax(x_max, fabs(x[i]));
    }
    *tolerance = weights * x_max / 254 + 1e-5 * magnitude;
    return want;
}

START_TEST(test_block_kernels_match_dequantized) {
    static const struct {
        uint32_t type;
        int halves[2]; // byte offsets of d, and of dmin or m (-1: none)
    } types[] = {
        {GGML_TYPE_Q4_0, {0, -1}}, {GGML_TYPE_Q4_1, {0, 2}},   {GGML_TYPE_Q5_0, {0, -1}},
        {GGML_TYPE_Q5_1, {0, 2}},  {GGML_TYPE_Q2_K, {80, 82}}, {GGML_TYPE_Q3_K, {108, -1}},
        {GGML_TYPE_Q4_K, {0, 2}},  {GGML_TYPE_Q5_K, {0, 2}},   {GGML_TYPE_Q6_K, {208, -1}}};
    int widths[] = {256, 512, 1024, 96, 160, 800};
    uint64_t seed = 15;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const BlockType *type = block_type_of(types[t].type);
        for (size_t k = 0; k < sizeof widths / sizeof widths[0]; k++) {
            int n = widths[k], d = 5, P = 4;
            if (n % type->values != 0) {
                continue;
            }
            size_t row_bytes = block_row_bytes(type, n), n_blocks = (size_t)d * n / type->values;
            unsigned char *blocks = malloc(row_bytes * d);
            float *x = malloc(sizeof(float) * n * P), *w = malloc(sizeof(float) * n);
            float got[4 * 5];
            for (size_t i = 0; i < row_bytes * d; i++) {
                blocks[i] = (unsigned char)(lcg_next(&seed) >> 24);
            }
            for (size_t b = 0; b < n_blocks; b++) {
                for (int h = 0; h < 2 && types[t].halves[h] >= 0; h++) {
                    uint16_t half = random_half(&seed, 5, 12);
                    memcpy(blocks + b * type->bytes + types[t].halves[h], &half, 2);
                }
            }
            fill_uniform(x, (size_t)n * P, &seed, -2, 2);
            Matrix m = {.blocks = blocks, .block_type = type, .rows = d, .cols = n};
            RunState s = matmul_scratch(n);
            for (int positions = 1; positions <= P; positions += P - 1) { // one, and a block
                s.kernels->matmul(got, x, positions, &m, &s);
                for (int p = 0; p < positions; p++) {
                    for (int r = 0; r < d; r++) {
                        double tolerance;
                        double want = dequantized_product(&m, r, x + (size_t)p * n, w, &tolerance);
                        ck_assert_msg(fabs(got[p * d + r] - want) <= tolerance,
                                      "%s n %d positions %d row %d: %g, want %g (tolerance %g)",
                                      type->name, n, positions, r, got[p * d + r], want, tolerance);
                    }
                }
            }
            free_matmul_scratch(&s);
            free(blocks), free(x), free(w);
        }
    }
}
END_TEST

#if HAVE_AVX512
// One case of test_eight_rows_match_dequantized: d random rows of n weights of type, each
// block's fp16 fields (`halves` of them from byte d_at: d, and Q4_K's dmin) finite.
static void eight_rows_case(const BlockType *type, int d_at, int halves, int n, int d,
                            uint64_t *seed) {
    size_t row_bytes = block_row_bytes(type, n), n_blocks = (size_t)d * n / type->values;
    unsigned char *blocks = malloc(row_bytes * d);
    float *x = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * n);
    float got[45], again[45];
    for (size_t i = 0; i < row_bytes * d; i++) {
        blocks[i] = (unsigned char)(lcg_next(seed) >> 24);
    }
    for (size_t b = 0; b < n_blocks * halves; b++) {
        uint16_t half = random_half(seed, 5, 12);
        memcpy(blocks + b / halves * type->bytes + d_at + 2 * (b % halves), &half, 2);
    }
    fill_uniform(x, (size_t)n, seed, -2, 2);
    Matrix m = {.blocks = blocks, .block_type = type, .rows = d, .cols = n};
    RunState s = matmul_scratch(n);
    ck_assert_int_eq(copy_eight_rows(s.scratch, &m), 0);
    ck_assert_ptr_nonnull(eight_rows_of(s.scratch, &m));
    use_threads(2);
    s.kernels->matmul(got, x, 1, &m, &s);
    use_threads(1);
    s.kernels->matmul(again, x, 1, &m, &s);
    for (int r = 0; r < d; r++) {
        double tolerance, want = dequantized_product(&m, r, x, w, &tolerance);
        ck_assert_msg(fabs(got[r] - want) <= tolerance,
                      "%s n %d rows %d row %d: %g, want %g (tolerance %g)", type->name, n, d, r,
                      got[r], want, tolerance);
        ck_assert_msg(memcmp(&got[r], &again[r], sizeof(float)) == 0,
                      "%s n %d rows %d row %d: %a on 2 threads, %a on 1", type->name, n, d, r,
                      got[r], again[r]);
    }
    free_matmul_scratch(&s);
    free(blocks), free(x), free(w);
}

// Q4_0, Q4_K, Q5_K and Q6_K rows eight at a time: the records copy_eight_rows makes, read by the
// one-position product (groups of eight, then the rows past them through dot_32, dot_k4 or
// dot_k16), against the dequantized rows in a plain loop; on 1 and 2 threads, with the same bits.
START_TEST(test_eight_rows_match_dequantized) {
    static const struct {
        uint32_t type;
        int d_at, halves, widths[5];
    } types[] = {{GGML_TYPE_Q4_0, 0, 1, {32, 96, 800, 2048, 2080}}, // 2080: spans of 32, 32, 1
                 {GGML_TYPE_Q4_K, 0, 2, {256, 768, 2048, 1280}},    // 1280: spans of 4, 1
                 {GGML_TYPE_Q5_K, 0, 2, {256, 768, 2048, 1280}},
                 {GGML_TYPE_Q6_K, 208, 1, {256, 768, 2048, 1280}}};
    int heights[] = {8, 13, 45}; // 45 x 2048: worth 2 threads
    int threads_before = omp_get_max_threads();
    uint64_t seed = 31;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const BlockType *type = block_type_of(types[t].type);
        for (size_t k = 0; k < 5 && types[t].widths[k] > 0; k++) {
            for (size_t h = 0; h < sizeof heights / sizeof heights[0]; h++) {
                int n = types[t].widths[k], d = heights[h];
                eight_rows_case(type, types[t].d_at, types[t].halves, n, d, &seed);
            }
        }
    }
    use_threads(threads_before);
}
END_TEST
#endif

// decode_row, which turns an embedding row (and, in blocks, a quantized weight row) back into
// fp32, against each encoding's definition worked out by hand: int8 values times the scale of
// their own group, F16 halves, Q8_0 values times their block's fp16 scale.
START_TEST(test_decode_row_matches_naive) {
    uint64_t seed = 14;
    enum { ROWS = 3, N = 96 };
    float w[ROWS * N], got[N], scales[ROWS * N / 16];
    int8_t q[ROWS * N];
    uint16_t h[ROWS * N];
    unsigned char blocks[ROWS * (N / 32) * 34];
    fill_uniform(w, ROWS * N, &seed, -1, 1);
    for (int i = 0; i < ROWS * N; i++) {
        q[i] = (int8_t)(lcg_next(&seed) >> 24);
        h[i] = random_half(&seed, 5, 20);
    }
    fill_uniform(scales, ROWS * N / 16, &seed, 0.1f, 2);
    for (int b = 0; b < ROWS * N / 32; b++) {
        memcpy(blocks + b * 34, &h[b], 2);
        memcpy(blocks + b * 34 + 2, q + b * 32, 32);
    }
    int groups[] = {16, 32, 48};
    for (int row = 0; row < ROWS; row++) {
        Matrix f32 = {.f32 = w, .rows = ROWS, .cols = N}, f16 = {.f16 = h, .rows = ROWS, .cols = N};
        decode_row(&f32, row, got);
        ck_assert_int_eq(memcmp(got, w + row * N, sizeof got), 0);
        decode_row(&f16, row, got);
        for (int i = 0; i < N; i++) {
            ck_assert_msg(got[i] == naive_half(h[row * N + i]), "F16 row %d value %d", row, i);
        }
        for (size_t k = 0; k < sizeof groups / sizeof groups[0]; k++) {
            int g = groups[k];
            Matrix int8 = {.q8 = q, .scales = scales, .rows = ROWS, .cols = N, .group = g};
            decode_row(&int8, row, got);
            for (int i = 0; i < N; i++) {
                float want = q[row * N + i] * scales[(row * N + i) / g];
                ck_assert_msg(got[i] == want, "int8 group %d row %d value %d", g, row, i);
            }
        }
        Matrix q8_0 = {.q8_0 = blocks, .rows = ROWS, .cols = N, .group = 32};
        decode_row(&q8_0, row, got);
        for (int i = 0; i < N; i++) {
            int b = (row * N + i) / 32;
            float want = (float)(q[row * N + i] * naive_half(h[b]));
            ck_assert_msg(got[i] == want, "Q8_0 row %d value %d", row, i);
        }
    }
}
END_TEST

START_TEST(test_rmsnorm_matches_naive) {
    uint64_t seed = 2;
    float x[67], weight[67], got[67], want[67];
    fill_uniform(x, 67, &seed, -3, 3);
    fill_uniform(weight, 67, &seed, 0.5f, 1.5f);
    rmsnorm(got, x, weight, 67, 1e-5f);
    naive_rmsnorm(want, x, weight, 67, 1e-5f);
    ck_assert_float_le(max_abs_diff(got, want, 67), 1e-6f);
    rmsnorm(x, x, weight, 67, 1e-5f); // in place
    ck_assert_float_le(max_abs_diff(x, want, 67), 1e-6f);
}
END_TEST

START_TEST(test_softmax_masked_and_stable) {
    float got[6] = {1.0f, -INFINITY, 3.0f, 0.5f, -INFINITY, -2.0f};
    float want[6];
    memcpy(want, got, sizeof got);
    softmax(got, 6);
    naive_softmax(want, 6);
    ck_assert_float_eq(got[1], 0.0f);
    ck_assert_float_eq(got[4], 0.0f);
    ck_assert_float_le(max_abs_diff(got, want, 6), 1e-7f);
    // Huge logits must not overflow: the maximum is subtracted first.
    float big[3] = {1000.0f, 1001.0f, 999.0f};
    softmax(big, 3);
    ck_assert(isfinite(big[0]) && isfinite(big[1]) && isfinite(big[2]));
    ck_assert_float_eq_tol(big[0] + big[1] + big[2], 1.0f, 1e-6f);
    ck_assert_float_eq_tol(big[1], (float)(1.0 / (1.0 + exp(-1.0) + exp(-2.0))), 1e-6f);
}
END_TEST

START_TEST(test_rope_matches_complex_rotation) {
    uint64_t seed = 3;
    int head_dim = 16, n_heads = 3;
    for (int pos = 0; pos < 40; pos += 13) {
        float got[48], want[48], cos_table[8], sin_table[8];
        fill_uniform(got, 48, &seed, -1, 1);
        memcpy(want, got, sizeof got);
        rope_angles(cos_table, sin_table, pos, head_dim, 10000.0f, NULL);
        rope_rotate(got, n_heads, head_dim, cos_table, sin_table, ROPE_ADJACENT);
        for (int h = 0; h < n_heads; h++) {
            naive_rope(want + h * head_dim, head_dim, pos, 10000.0f);
        }
        ck_assert_float_le(max_abs_diff(got, want, 48), 1e-5f);
    }
}
END_TEST

// The property RoPE exists for: <rope(q, m), rope(k, n)> depends on m - n only.
START_TEST(test_rope_relative_position) {
    uint64_t seed = 4;
    float q[8], k[8];
    fill_uniform(q, 8, &seed, -1, 1);
    fill_uniform(k, 8, &seed, -1, 1);
    float dots[2];
    int positions[2][2] = {{5, 2}, {105, 102}};
    for (int i = 0; i < 2; i++) {
        float qr[8], kr[8], cos_table[4], sin_table[4];
        memcpy(qr, q, sizeof q), memcpy(kr, k, sizeof k);
        rope_angles(cos_table, sin_table, positions[i][0], 8, 10000.0f, NULL);
        rope_rotate(qr, 1, 8, cos_table, sin_table, ROPE_ADJACENT);
        rope_angles(cos_table, sin_table, positions[i][1], 8, 10000.0f, NULL);
        rope_rotate(kr, 1, 8, cos_table, sin_table, ROPE_ADJACENT);
        dots[i] = dot(qr, kr, 8);
    }
    ck_assert_float_eq_tol(dots[0], dots[1], 1e-5f);
}
END_TEST

// Attention on its own: a run state with one layer, a KV cache filled with random keys and
// values, and the queries of a block; `attention` (tiles, online softmax, chunks merged) against
// `attend` (all scores, softmax, weighted sum) for every query head.
typedef struct {
    Config c;
    RunState s;
    float *keys, *values; // (S, kv_dim) the same keys and values, flat, for attend
} AttentionBench;

static void build_attention_bench(AttentionBench *b, int n_heads, int n_kv_heads, int seq_len,
                                  KvFormat format, uint64_t seed) {
    int hd = 16;
    b->c = (Config){.dim = n_heads * hd,
                    .hidden_dim = 8,
                    .n_layers = 1,
                    .n_heads = n_heads,
                    .n_kv_heads = n_kv_heads,
                    .head_dim = hd,
                    .vocab_size = 8,
                    .seq_len = seq_len,
                    .query_scale = 0.25f}; // 1 / sqrt(hd)
    ck_assert_int_eq(build_run_state(&b->s, &b->c, format), 0);
    ck_assert_int_eq(kv_reserve(&b->s.kv, seq_len), 0);
    size_t kv_dim = kv_dim_of(&b->c);
    b->keys = malloc(sizeof(float) * seq_len * kv_dim);
    b->values = malloc(sizeof(float) * seq_len * kv_dim);
    fill_uniform(b->keys, (size_t)seq_len * kv_dim, &seed, -2, 2);
    fill_uniform(b->values, (size_t)seq_len * kv_dim, &seed, -2, 2);
    for (int pos = 0; pos < seq_len; pos++) {
        kv_store(&b->s.kv, 0, KV_KEYS, pos, b->keys + pos * kv_dim);
        kv_store(&b->s.kv, 0, KV_VALUES, pos, b->values + pos * kv_dim);
    }
    fill_uniform(b->s.q, (size_t)BLOCK * n_heads * hd, &seed, -2, 2);
}

static void free_attention_bench(AttentionBench *b) {
    free_run_state(&b->s);
    free(b->keys), free(b->values);
}

// The block of n positions at start against attend, head by head: the largest difference
// relative to the largest output value.
static float attention_vs_attend(AttentionBench *b, int start, int n) {
    const Config *c = &b->c;
    int hd = c->head_dim;
    size_t q_dim = (size_t)c->n_heads * hd, kv_dim = kv_dim_of(c);
    b->s.kernels->attention(&b->s, 0, start, n, c);
    float *weights = malloc(sizeof(float) * c->seq_len), want[64], worst = 0.0f;
    ScoreRule rule = score_rule(c, 0);
    for (int i = 0; i < n; i++) {
        for (int head = 0; head < c->n_heads; head++) {
            int kv = head / group_size_of(c);
            attend(want, weights, b->s.q + i * q_dim + head * hd, b->keys + kv * hd,
                   b->values + kv * hd, hd, kv_dim, start + i + 1, &rule);
            float scale = 0.0f;
            for (int j = 0; j < hd; j++) {
                scale = fmaxf(scale, fabsf(want[j]));
            }
            float diff = max_abs_diff(b->s.attn_out + i * q_dim + head * hd, want, hd) / scale;
            worst = diff > worst || isnan(diff) ? diff : worst;
        }
    }
    free(weights);
    return worst;
}

static void check_attention(int n_heads, int n_kv_heads) {
    AttentionBench b;
    int seq_len = 2100; // several pages, and decode chunks of two lengths
    build_attention_bench(&b, n_heads, n_kv_heads, seq_len, KV_F32, 5 + n_kv_heads);
    // Decode steps: every length up to 300 (tiles of 64 and the page boundary at 256 crossed),
    // then lengths around chunk and page boundaries, up to 2100 keys in chunks of 256.
    int lengths[] = {511, 512, 513, 1024, 1025, 1500, 2047, 2100};
    for (int n_keys = 1; n_keys <= 300 + 8; n_keys++) {
        int length = n_keys <= 300 ? n_keys : lengths[n_keys - 301];
        float diff = attention_vs_attend(&b, length - 1, 1);
        ck_assert_msg(diff <= 1e-5f, "H=%d KVH=%d decode, %d keys: relative diff %g", n_heads,
                      n_kv_heads, length, diff);
    }
    // Prompt blocks, causal within the block: from position 0, across the page boundary, deep.
    int blocks[][2] = {{0, BLOCK}, {0, 5},        {200, BLOCK},
                       {250, 37},  {1000, BLOCK}, {2100 - BLOCK, BLOCK}};
    for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++) {
        float diff = attention_vs_attend(&b, blocks[k][0], blocks[k][1]);
        ck_assert_msg(diff <= 1e-5f, "H=%d KVH=%d block of %d at %d: relative diff %g", n_heads,
                      n_kv_heads, blocks[k][1], blocks[k][0], diff);
    }
    // Causality: garbage in positions after the query's own must not change the result.
    size_t q_dim = (size_t)n_heads * b.c.head_dim, kv_dim = kv_dim_of(&b.c);
    float *before = malloc(sizeof(float) * BLOCK * q_dim);
    b.s.kernels->attention(&b.s, 0, 100, BLOCK, &b.c);
    memcpy(before, b.s.attn_out, sizeof(float) * BLOCK * q_dim);
    uint64_t seed = 99;
    float *garbage = malloc(sizeof(float) * kv_dim);
    for (int pos = 100 + BLOCK; pos < 400; pos++) {
        fill_uniform(garbage, kv_dim, &seed, -100, 100);
        kv_store(&b.s.kv, 0, KV_KEYS, pos, garbage);
        kv_store(&b.s.kv, 0, KV_VALUES, pos, garbage);
    }
    b.s.kernels->attention(&b.s, 0, 100, BLOCK, &b.c);
    ck_assert_float_eq(max_abs_diff(before, b.s.attn_out, BLOCK * q_dim), 0.0f);
    free(before), free(garbage);
    free_attention_bench(&b);
}

START_TEST(test_attention_mha) {
    check_attention(4, 4);
}
END_TEST

START_TEST(test_attention_gqa) {
    check_attention(6, 2);
}
END_TEST

START_TEST(test_attention_mqa) {
    check_attention(4, 1);
}
END_TEST

// The three loops of online_softmax_step (run.c, Part 1) written out plainly, for the AVX-512
// kernels that stand for them.
static float tile_scores_portable(float *scores, const float *query, const float *keys, int n,
                                  int head_dim, float scale) {
    float max = -INFINITY;
    for (int t = 0; t < n; t++) {
        scores[t] = dot(query, keys + (size_t)t * head_dim, head_dim) * scale;
        max = scores[t] > max ? scores[t] : max;
    }
    return max;
}

static float tile_exp_portable(float *x, int n, float shift) {
    float sum = 0.0f;
    for (int t = 0; t < n; t++) {
        x[t] = expf(x[t] - shift);
        sum += x[t];
    }
    return sum;
}

static void tile_accumulate_portable(float *acc, const float *weights, const float *values, int n,
                                     int head_dim) {
    for (int t = 0; t < n; t++) {
        const float *value = values + (size_t)t * head_dim;
        for (int j = 0; j < head_dim; j++) {
            acc[j] += weights[t] * value[j];
        }
    }
}

// The attention kernels (AVX-512) against the plain loops above, for head sizes of whole and
// partial 16-lane chunks up to the 64 they serve (online_softmax_tile_fast sends wider heads to
// Part 1), and tiles of every length.
START_TEST(test_attention_kernels_match_portable) {
#if HAVE_AVX512
    int head_dims[] = {8, 16, 24, 32, 48, 64};
    uint64_t seed = 21;
    float query[80], keys[KV_TILE * 80], fast[KV_TILE], slow[KV_TILE];
    float acc_fast[80], acc_slow[80];
    fill_uniform(keys, KV_TILE * 80, &seed, -2, 2);
    for (size_t h = 0; h < sizeof head_dims / sizeof head_dims[0]; h++) {
        int hd = head_dims[h];
        fill_uniform(query, 80, &seed, -2, 2);
        for (int n = 1; n <= KV_TILE; n++) {
            float max_fast = tile_scores(fast, query, keys, n, hd, 0.3f);
            float max_slow = tile_scores_portable(slow, query, keys, n, hd, 0.3f);
            ck_assert_float_le(max_abs_diff(fast, slow, n), 1e-5f);
            ck_assert_float_le(fabsf(max_fast - max_slow), 1e-5f);
            float sum_fast = tile_exp(fast, n, max_slow),
                  sum_slow = tile_exp_portable(slow, n, max_slow);
            for (int t = 0; t < n; t++) {
                ck_assert_float_le(fabsf(fast[t] - slow[t]), 2e-6f * slow[t] + 1e-30f);
            }
            ck_assert_float_le(fabsf(sum_fast - sum_slow), 1e-5f * sum_slow);
            fill_uniform(acc_fast, 80, &seed, -1, 1);
            memcpy(acc_slow, acc_fast, sizeof acc_fast);
            tile_accumulate(acc_fast, slow, keys, n, hd);
            tile_accumulate_portable(acc_slow, slow, keys, n, hd);
            ck_assert_float_le(max_abs_diff(acc_fast, acc_slow, 80), 1e-5f);
        }
    }
    // exp far below the maximum underflows to 0, not to garbage
    float low[3] = {-200.0f, -90.0f, 0.0f};
    tile_exp(low, 3, 0.0f);
    ck_assert(low[0] == 0.0f && low[1] >= 0.0f && low[1] < 1e-38f && low[2] == 1.0f);
#endif
}
END_TEST

#ifndef RUN_PLAIN // a fast kernel
// What the model calls for a tile (online_softmax_tile) against Part 1's definition
// (online_softmax_tile_plain), where the causal cut crosses the tile: positions of a block see
// the tile up to their own position, so the tile is cut short for most rows. The shapes take
// each path of the kernel: one row at a time (MHA decode, GQA with few rows), and the keys as
// columns for many rows (a prompt block, an MQA decode step), with an odd number of rows, head
// sizes of whole and partial 16-lane chunks, and a tile that is not full.
static void check_tile_against_plain(int n_heads, int n_kv_heads, int hd, int n_rows, int n_keys,
                                     int start) {
    Config c = {.n_heads = n_heads, .n_kv_heads = n_kv_heads, .head_dim = hd};
    uint64_t seed = 41 + (uint64_t)(n_heads * 7 + hd + n_rows + start);
    size_t q_size = (size_t)n_rows * n_heads * hd, heads = (size_t)n_rows * n_heads;
    float *q = malloc(sizeof(float) * q_size);
    float *keys = malloc(sizeof(float) * KV_TILE * hd),
          *values = malloc(sizeof(float) * KV_TILE * hd);
    float *acc[2], *max[2], *sum[2];
    fill_uniform(q, q_size, &seed, -2, 2);
    fill_uniform(keys, (size_t)KV_TILE * hd, &seed, -2, 2);
    fill_uniform(values, (size_t)KV_TILE * hd, &seed, -2, 2);
    for (int v = 0; v < 2; v++) {
        acc[v] = calloc(q_size, sizeof(float));
        max[v] = malloc(sizeof(float) * heads), sum[v] = malloc(sizeof(float) * heads);
        for (size_t r = 0; r < heads; r++) {
            max[v][r] = -INFINITY, sum[v][r] = 0.0f;
        }
    }
    KvTile tile = {keys, values, 64, n_keys, {1.0f / sqrtf((float)hd), 0.0f, 0}}; // 64..64+n-1
    AttentionState fast = {acc[0], max[0], sum[0]}, plain = {acc[1], max[1], sum[1]};
    for (int kv_head = 0; kv_head < n_kv_heads; kv_head++) {
        online_softmax_tile_fast(fast, q, &tile, kv_head, start, 0, n_rows, &c);
        online_softmax_tile(plain, q, &tile, kv_head, start, 0, n_rows, &c);
    }
    for (size_t r = 0; r < heads; r++) {
        ck_assert_msg(fabsf(sum[0][r] - sum[1][r]) <= 1e-4f * (1.0f + sum[1][r]) &&
                          (max[0][r] == max[1][r] || fabsf(max[0][r] - max[1][r]) <= 1e-5f),
                      "H %d KVH %d hd %d start %d row %zu: sum %g vs %g, max %g vs %g", n_heads,
                      n_kv_heads, hd, start, r, sum[0][r], sum[1][r], max[0][r], max[1][r]);
    }
    ck_assert_msg(max_abs_diff(acc[0], acc[1], q_size) <= 1e-3f, "H %d KVH %d hd %d start %d",
                  n_heads, n_kv_heads, hd, start);
    for (int v = 0; v < 2; v++) {
        free(acc[v]), free(max[v]), free(sum[v]);
    }
    free(q), free(keys), free(values);
}

START_TEST(test_attention_tile_matches_plain_with_causal_cut) {
    int starts[] = {60, 70, 100};
    for (int k = 0; k < 3; k++) {
        check_tile_against_plain(8, 2, 16, 16, KV_TILE, starts[k]); // GQA prompt block: columns
        check_tile_against_plain(9, 3, 24, 5, KV_TILE, starts[k]);  // 15 rows, half chunks
        check_tile_against_plain(4, 4, 64, 3, 50, starts[k]);       // MHA, 3 rows: one at a time
    }
    check_tile_against_plain(8, 1, 32, 1, KV_TILE, 200); // MQA decode step: columns
    check_tile_against_plain(8, 1, 32, 1, 37, 200);      // ... a tile that is not full
    check_tile_against_plain(12, 1, 48, 1, 5, 68);       // ... cut by the causal mask
    check_tile_against_plain(9, 1, 8, 1, KV_TILE, 200);  // odd group, head of 8
    check_tile_against_plain(8, 4, 32, 1, KV_TILE, 200); // GQA decode step: one row at a time
}
END_TEST
#endif

// Thread pacing, on simulated token times: with a core held by another program two threads take
// 15 ms a token and one thread 3 ms, so nearly every token should run on one thread; on a free
// machine (2 ms against 3.5 ms) nearly every token should run on two.
static int tokens_on_one_thread(double two_threads, double one_thread, int n) {
    ThreadPace pace = {.adaptive = true, .most = 2, .current = 2, .until_trial = 1, .interval = 16};
    int on_one = 0;
    for (int token = 0; token < n; token++) {
        on_one += pace.current == 1;
        pace_threads(&pace, pace.current == 1 ? one_thread : two_threads);
    }
    return on_one;
}

START_TEST(test_thread_pace_follows_the_faster_count) {
    int threads_before = thread_count();
    int busy = tokens_on_one_thread(0.015, 0.003, 400);
    int idle = tokens_on_one_thread(0.002, 0.0035, 400);
    use_threads(threads_before);
    ck_assert_msg(busy >= 390, "busy machine: %d of 400 tokens on one thread", busy);
    ck_assert_msg(idle <= 8, "free machine: %d of 400 tokens on one thread", idle);
}
END_TEST

// The starting thread count, from the kernel's count of running tasks (/proc/loadavg's fourth
// field, which counts the reading program too).
START_TEST(test_starting_threads_from_running_tasks) {
    ck_assert_int_eq(cores_busy_elsewhere("0.79 0.78 0.80 1/78 28714\n", 1), 0);
    ck_assert_int_eq(cores_busy_elsewhere("1.45 0.94 0.86 3/80 28912\n", 1), 2);
    // this program's own spinning OpenMP worker is not another program
    ck_assert_int_eq(cores_busy_elsewhere("1.45 0.94 0.86 3/80 28912\n", 2), 1);
    ck_assert_int_eq(cores_busy_elsewhere("1.45 0.94 0.86 2/80 28912\n", 2), 0);
    ck_assert_int_eq(cores_busy_elsewhere("garbage", 1), -1);
    ck_assert_int_eq(cores_busy_elsewhere("0.1 0.2 0.3 0/5 1", 1), -1);
    ck_assert_int_ge(own_running_threads(), 1);     // the thread asking is running
    ck_assert_int_eq(starting_threads(2, 2, 0), 2); // a free machine
    ck_assert_int_eq(starting_threads(2, 2, 1), 1); // one core held elsewhere
    ck_assert_int_eq(starting_threads(2, 2, 2), 1); // never fewer than one
    ck_assert_int_eq(starting_threads(4, 8, 5), 3);
    ck_assert_int_eq(starting_threads(4, 8, 2), 4);
    ck_assert_int_eq(starting_threads(2, 2, -1), 2); // unknown: all threads
}
END_TEST

#ifndef RUN_PLAIN // a fast kernel
// Part 1's recurrence on its own (the plain C that builds without AVX-512 run): tiles of
// online_softmax_step, and two halves merged with online_softmax_merge, equal attend.
START_TEST(test_online_softmax_step_matches_attend) {
    enum { HD = 24, N = 300 };
    ScoreRule rule = {1.0f / sqrtf((float)HD), 0.0f, 0};
    uint64_t seed = 31;
    float *keys = malloc(sizeof(float) * N * HD), *values = malloc(sizeof(float) * N * HD);
    float query[HD], want[HD], weights[N], acc[HD], acc2[HD];
    fill_uniform(keys, (size_t)N * HD, &seed, -3, 3);
    fill_uniform(values, (size_t)N * HD, &seed, -2, 2);
    fill_uniform(query, HD, &seed, -3, 3);
    for (int n = 1; n <= N; n++) {
        attend(want, weights, query, keys, values, HD, HD, n, &rule);
        float max = -INFINITY, sum = 0.0f, max2 = -INFINITY, sum2 = 0.0f;
        memset(acc, 0, sizeof acc), memset(acc2, 0, sizeof acc2);
        int half = n / 2 / KV_TILE * KV_TILE; // keys [0, half) in one state, the rest in another
        for (int t0 = 0; t0 < n; t0 += KV_TILE) {
            int count = n - t0 < KV_TILE ? n - t0 : KV_TILE;
            bool first = t0 < half;
            online_softmax_step(first ? acc : acc2, first ? &max : &max2, first ? &sum : &sum2,
                                query, keys + t0 * HD, values + t0 * HD, count, HD, &rule);
        }
        if (half > 0) {
            online_softmax_merge(acc, &max, &sum, acc2, max2, sum2, HD);
        } else {
            memcpy(acc, acc2, sizeof acc), max = max2, sum = sum2;
        }
        float scale = 0.0f, worst = 0.0f;
        for (int j = 0; j < HD; j++) {
            scale = fmaxf(scale, fabsf(want[j]));
            worst = fmaxf(worst, fabsf(acc[j] / sum - want[j]));
        }
        ck_assert_msg(worst <= 1e-5f * scale, "%d keys: %g of %g", n, worst, scale);
    }
    free(keys), free(values);
}
END_TEST
#endif

// A decode step split into chunks over two threads gives the same bits as on one thread.
START_TEST(test_attention_threads_bit_identical) {
    AttentionBench b;
    build_attention_bench(&b, 8, 1, 2100, KV_F32, 17);
    size_t q_dim = 8 * 16;
    float one[8 * 16], two[8 * 16];
    use_threads(1);
    b.s.kernels->attention(&b.s, 0, 2099, 1, &b.c);
    memcpy(one, b.s.attn_out, sizeof one);
    use_threads(2);
    b.s.kernels->attention(&b.s, 0, 2099, 1, &b.c);
    memcpy(two, b.s.attn_out, sizeof two);
    ck_assert_int_eq(memcmp(one, two, q_dim * sizeof(float)), 0);
    free_attention_bench(&b);
}
END_TEST

// The cache's pages: a position maps to page pos / KV_PAGE, pages come as positions fill, and
// what is stored comes back through the mapping; fp16 and q8 within their rounding.
START_TEST(test_kv_cache_pages_and_formats) {
    Config c = {.n_layers = 2, .n_kv_heads = 2, .head_dim = 24, .seq_len = 700};
    KvFormat formats[] = {KV_F32, KV_F16, KV_Q8};
    float tolerance[] = {0.0f, 1.0f / 1024, 1.0f / 127};
    uint64_t seed = 3;
    size_t kv_dim = 48, n = 600;
    float *x = malloc(sizeof(float) * n * kv_dim), *back = malloc(sizeof(float) * n * 24);
    fill_uniform(x, n * kv_dim, &seed, -3, 3);
    for (int f = 0; f < 3; f++) {
        KvCache kv;
        ck_assert_int_eq(build_kv_cache(&kv, &c, formats[f]), 0);
        ck_assert_int_eq(kv.max_pages, 3);
        ck_assert_int_eq(kv_reserve(&kv, 300), 0);
        ck_assert_int_eq(kv.n_pages, 2);
        ck_assert_ptr_null(kv.pages[2]);
        ck_assert_int_eq(kv_reserve(&kv, (int)n), 0);
        ck_assert_int_eq(kv.n_pages, 3);
        ck_assert_ptr_eq(kv_row(&kv, 1, KV_VALUES, 1, 257),
                         kv.pages[(1 * 2 + KV_VALUES) * 3 + 1] + (KV_PAGE + 1) * kv.row_bytes);
        for (size_t pos = 0; pos < n; pos++) {
            kv_store(&kv, 1, KV_VALUES, (int)pos, x + pos * kv_dim);
        }
        kv_gather(&kv, 1, KV_VALUES, 1, (int)n, back);
        float worst = 0.0f;
        for (size_t pos = 0; pos < n; pos++) {
            for (int j = 0; j < 24; j++) { // relative to the group's largest magnitude, <= 3
                worst = fmaxf(worst, fabsf(back[pos * 24 + j] - x[pos * kv_dim + 24 + j]) / 3);
            }
        }
        ck_assert_msg(worst <= tolerance[f], "%s: worst %g", kv_format_name(formats[f]), worst);
        free_kv_cache(&kv);
    }
    free(x), free(back);
}
END_TEST

// fp16 conversion: the fast path (F16C when compiled in) and the plain C twin agree bit for bit,
// specials included, and a round trip keeps 11 significant bits.
START_TEST(test_f16_conversion) {
    float specials[] = {0.0f,      -0.0f,     1.0f,          -2.5f,   65504.0f, 65520.0f,
                        1e-8f,     6.1e-5f,   5.96e-8f,      3.0e-8f, 1e10f,    INFINITY,
                        -INFINITY, 0.333333f, 1.0009765625f, 2049.0f};
    enum { N = 16 + 4096 };
    float x[N], back[N];
    uint16_t fast[N];
    memcpy(x, specials, sizeof specials);
    uint64_t seed = 11;
    for (int i = 16; i < N; i++) {
        x[i] = uniform(&seed, -1, 1) * powf(2.0f, (float)(i % 40) - 26);
    }
    f16_from_f32_row(fast, x, N);
    f32_from_f16_row(back, fast, N);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(fast[i] == f16_from_f32_portable(x[i]), "x=%g: %04x", x[i], fast[i]);
        ck_assert(back[i] == half_to_float(fast[i]));
        if (fabsf(x[i]) >= 6.2e-5f && fabsf(x[i]) <= 65504.0f) {
            ck_assert_float_le(fabsf(back[i] - x[i]), fabsf(x[i]) / 2048);
        }
    }
    ck_assert(isinf(back[5]) && isinf(back[10]));
    uint16_t nan = f16_from_f32_portable(NAN);
    ck_assert(isnan(half_to_float(nan)));
}
END_TEST

// ----------------------------------------------------------------------------
// The whole model

static void check_incremental_equals_full(int n_heads, int n_kv_heads, bool shared) {
    Config c = small_config(n_heads, n_kv_heads, shared);
    char *path = write_test_model(&c, 42 + n_kv_heads);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, path, KV_F32), 0);
    int tokens[] = {1, 270, 5, 99, 261, 270, 3, 200, 263, 150, 42};
    int T = sizeof tokens / sizeof tokens[0];
    float *want = malloc(sizeof(float) * T * c.vocab_size);
    naive_forward_all(&t.config, &t.weights, tokens, T, want);
    for (int pos = 0; pos < T; pos++) {
        float *got = forward(&t, tokens[pos], pos, true);
        float diff = max_abs_diff(got, want + (size_t)pos * c.vocab_size, c.vocab_size);
        ck_assert_msg(diff <= 1e-4f, "H=%d KVH=%d pos %d: diff %g", n_heads, n_kv_heads, pos, diff);
    }
    free(want);
    free_transformer(&t);
    unlink(path);
    free(path);
}

START_TEST(test_incremental_equals_full_mha) {
    check_incremental_equals_full(4, 4, true);
}
END_TEST

START_TEST(test_incremental_equals_full_gqa) {
    check_incremental_equals_full(8, 2, false);
}
END_TEST

START_TEST(test_incremental_equals_full_mqa) {
    check_incremental_equals_full(4, 1, true);
}
END_TEST

// A GQA model equals the MHA model whose key/value heads are copies of the GQA heads they serve.
START_TEST(test_gqa_equals_mha_with_duplicated_heads) {
    Config gqa = small_config(8, 2, false), mha = small_config(8, 8, false);
    size_t n_gqa, n_mha;
    float *gqa_weights = random_weights(&gqa, 7, &n_gqa);
    float *mha_weights = random_weights(&mha, 8, &n_mha);
    Weights g, m;
    layout_weights(&gqa, false, (const unsigned char *)gqa_weights, &g);
    layout_weights(&mha, false, (const unsigned char *)mha_weights, &m);
    size_t D = gqa.dim, hd = gqa.head_dim, L = gqa.n_layers;
    // Everything but wk and wv is copied as is; wk and wv repeat each kv head group_size times.
    struct {
        const float *from, *to;
        size_t count;
    } same[] = {{g.token_embedding.f32, m.token_embedding.f32, (size_t)gqa.vocab_size * D},
                {g.rms_att, m.rms_att, L * D},
                {g.wq.f32, m.wq.f32, L * D * D},
                {g.wo.f32, m.wo.f32, L * D * D},
                {g.rms_ffn, m.rms_ffn, L * D},
                {g.w1.f32, m.w1.f32, L * gqa.hidden_dim * D},
                {g.w2.f32, m.w2.f32, L * gqa.hidden_dim * D},
                {g.w3.f32, m.w3.f32, L * gqa.hidden_dim * D},
                {g.rms_final, m.rms_final, D},
                {g.classifier.f32, m.classifier.f32, (size_t)gqa.vocab_size * D}};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        memcpy((float *)same[i].to, same[i].from, same[i].count * sizeof(float));
    }
    for (size_t l = 0; l < L; l++) {
        for (size_t h = 0; h < 8; h++) {
            size_t kv = h / 4;
            for (int which = 0; which < 2; which++) {
                const float *from = (which ? g.wv : g.wk).f32 + (l * 2 + kv) * hd * D;
                float *to = (float *)(which ? m.wv : m.wk).f32 + (l * 8 + h) * hd * D;
                memcpy(to, from, hd * D * sizeof(float));
            }
        }
    }
    Bytes tok = test_tokenizer_bytes();
    Bytes gqa_file = gqam_bytes(&gqa, gqa_weights, n_gqa, &tok);
    Bytes mha_file = gqam_bytes(&mha, mha_weights, n_mha, &tok);
    char *gqa_path = write_temp_file(gqa_file.data, gqa_file.size, ".bin");
    char *mha_path = write_temp_file(mha_file.data, mha_file.size, ".bin");
    Transformer a, b;
    ck_assert_int_eq(build_transformer(&a, gqa_path, KV_F32), 0);
    ck_assert_int_eq(build_transformer(&b, mha_path, KV_F32), 0);
    ck_assert_int_lt(kv_bytes_per_token(&a.config, KV_F32), kv_bytes_per_token(&b.config, KV_F32));
    int tokens[] = {1, 260, 300, 7, 270, 261};
    for (int pos = 0; pos < 6; pos++) {
        float *la = forward(&a, tokens[pos], pos, true);
        float *lb = forward(&b, tokens[pos], pos, true);
        ck_assert_float_le(max_abs_diff(la, lb, gqa.vocab_size), 1e-6f);
    }
    free_transformer(&a), free_transformer(&b);
    unlink(gqa_path), unlink(mha_path);
    free(gqa_path), free(mha_path), free(gqa_weights), free(mha_weights);
    free(tok.data), free(gqa_file.data), free(mha_file.data);
}
END_TEST

// The same random model in fp32 and in int8: the loader reads the int8 layout, and int8 logits
// stay close to fp32 ones, for one position at a time and for a prefill block alike.
START_TEST(test_int8_checkpoint_close_to_fp32) {
    Config c = small_config(4, 2, false);
    c.hidden_dim = 96; // int8 groups of 32 must divide dim and hidden_dim
    size_t n_floats;
    float *weights = random_weights(&c, 31, &n_floats);
    Bytes fp32 = gqam_bytes(&c, weights, n_floats, NULL);
    Bytes int8 = gqam_int8_bytes(&c, weights, 32);
    ck_assert_uint_lt(int8.size, fp32.size / 3);
    char *fp32_path = write_temp_file(fp32.data, fp32.size, ".bin");
    char *int8_path = write_temp_file(int8.data, int8.size, ".bin");
    Transformer a, b;
    ck_assert_int_eq(build_transformer(&a, fp32_path, KV_F32), 0);
    ck_assert_int_eq(build_transformer(&b, int8_path, KV_F32), 0);
    ck_assert_int_eq(b.config.quant_group, 32);
    ck_assert_ptr_nonnull(b.weights.wq.q8);
    int tokens[] = {1, 270, 5, 99, 261, 7, 30, 200};
    // A block and one position at a time compute the same thing: every position's activations
    // quantized in groups of 32 and each group's product an exact integer sum; only the order
    // in which the groups' real numbers are added differs.
    float *block = malloc(sizeof(float) * 8 * c.vocab_size);
    memcpy(block, forward_block(&b, tokens, 8, 0, LOGITS_ALL), sizeof(float) * 8 * c.vocab_size);
    // Both stay close to fp32: within 5% of the largest logit on these random weights (trained
    // weights do better; see the perplexities in README.md).
    for (int pos = 0; pos < 8; pos++) {
        float *la = forward(&a, tokens[pos], pos, true);
        float *lb = forward(&b, tokens[pos], pos, true);
        float scale = 0.0f;
        for (int i = 0; i < c.vocab_size; i++) {
            scale = fmaxf(scale, fabsf(la[i]));
        }
        float step = max_abs_diff(block + pos * c.vocab_size, lb, c.vocab_size);
        ck_assert_msg(step <= 1e-4f * scale, "pos %d: block and one at a time differ by %g", pos,
                      step);
        float diff = max_abs_diff(la, lb, c.vocab_size);
        ck_assert_msg(diff <= 0.05f * scale, "pos %d: int8 differs by %g (logits up to %g)", pos,
                      diff, scale);
    }
    free(block);
    // A group that does not divide dim is rejected.
    uint32_t bad_group = 24;
    memcpy(int8.data + 60, &bad_group, 4);
    expect_rejected(&int8, "quant_group");
    free_transformer(&a), free_transformer(&b);
    unlink(fp32_path), unlink(int8_path);
    free(fp32_path), free(int8_path), free(weights), free(fp32.data), free(int8.data);
}
END_TEST

// Every buffer of the run state and every page of the KV cache starts on a cache line, so that
// the kernels' vector loads never straddle two.
START_TEST(test_run_state_is_aligned) {
    Config c = small_config(8, 2, true);
    c.seq_len = 2 * KV_PAGE + 10;
    char *path = write_test_model(&c, 17);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, path, KV_F32), 0);
    ck_assert_int_eq(reserve_positions(&t, c.seq_len), 0);
    Allocation table[N_ALLOCATIONS];
    run_state_allocations(&t.state, t.state.scratch, &t.config, run_state_threads(&t.state), table);
    for (int i = 0; i < N_ALLOCATIONS; i++) {
        ck_assert_msg((uintptr_t)*table[i].buffer % 64 == 0, "%s (buffer %d) at %p", table[i].what,
                      i, *table[i].buffer);
    }
    const KvCache *kv = &t.state.kv;
    for (size_t i = 0; i < (size_t)kv->n_layers * 2 * kv->max_pages; i++) {
        ck_assert_msg(kv->pages[i] != NULL && (uintptr_t)kv->pages[i] % 64 == 0, "page %zu at %p",
                      i, (void *)kv->pages[i]);
    }
    free_transformer(&t);
    unlink(path);
    free(path);
}
END_TEST

// The prompt goes through in blocks: the logits of every position equal those of feeding the
// same tokens one at a time, across a block boundary.
START_TEST(test_block_prefill_equals_incremental) {
    Config c = small_config(8, 2, true);
    c.seq_len = BLOCK + 86;
    char *path = write_test_model(&c, 91);
    Transformer a, b;
    ck_assert_int_eq(build_transformer(&a, path, KV_F32), 0);
    ck_assert_int_eq(build_transformer(&b, path, KV_F32), 0);
    int n = BLOCK + 37;
    int *tokens = malloc(sizeof(int) * n);
    uint64_t seed = 4;
    for (int i = 0; i < n; i++) {
        tokens[i] = (int)(lcg_next(&seed) % TEST_VOCAB);
    }
    float *block = malloc(sizeof(float) * n * c.vocab_size);
    for (int start = 0; start < n; start += BLOCK) {
        int count = n - start < BLOCK ? n - start : BLOCK;
        float *logits = forward_block(&a, tokens + start, count, start, LOGITS_ALL);
        memcpy(block + (size_t)start * c.vocab_size, logits, sizeof(float) * count * c.vocab_size);
    }
    for (int pos = 0; pos < n; pos++) {
        float *logits = forward(&b, tokens[pos], pos, true);
        float diff = max_abs_diff(block + (size_t)pos * c.vocab_size, logits, c.vocab_size);
        ck_assert_msg(diff <= 1e-4f, "pos %d: block and step differ by %g", pos, diff);
    }
    // LOGITS_LAST gives the last row of LOGITS_ALL.
    float *last = forward_block(&a, tokens, 10, 0, LOGITS_LAST);
    float *step = forward(&b, tokens[9], 9, true);
    forward_block(&b, tokens, 10, 0, LOGITS_NONE);
    ck_assert_float_le(max_abs_diff(last, step, c.vocab_size), 1e-4f);
    free(block), free(tokens);
    free_transformer(&a), free_transformer(&b);
    unlink(path);
    free(path);
}
END_TEST

// An fp16 or q8 KV cache changes the logits only by its rounding: every position of a prompt
// longer than a page (a GQA model), fed in blocks, against the fp32 cache. fp16 keeps 11
// significant bits, q8 about 7: measured 0.0024 and 0.031 here, held to 0.01 and 0.1.
START_TEST(test_kv_formats_close_to_f32) {
    Config c = small_config(8, 2, true);
    c.seq_len = 300;
    char *path = write_test_model(&c, 57);
    int n = 290;
    int *tokens = malloc(sizeof(int) * n);
    uint64_t seed = 8;
    for (int i = 0; i < n; i++) {
        tokens[i] = (int)(lcg_next(&seed) % TEST_VOCAB);
    }
    float *want = malloc(sizeof(float) * n * c.vocab_size);
    KvFormat formats[] = {KV_F32, KV_F16, KV_Q8};
    float tolerance[] = {0.0f, 1e-2f, 1e-1f};
    for (int f = 0; f < 3; f++) {
        Transformer t;
        ck_assert_int_eq(build_transformer(&t, path, formats[f]), 0);
        ck_assert_int_eq(reserve_positions(&t, n), 0);
        float worst = 0.0f;
        for (int start = 0; start < n; start += BLOCK) {
            int count = n - start < BLOCK ? n - start : BLOCK;
            float *logits = forward_block(&t, tokens + start, count, start, LOGITS_ALL);
            float *row = want + (size_t)start * c.vocab_size;
            if (formats[f] == KV_F32) {
                memcpy(row, logits, sizeof(float) * count * c.vocab_size);
            }
            float diff = max_abs_diff(logits, row, (size_t)count * c.vocab_size);
            worst = diff > worst || isnan(diff) ? diff : worst;
        }
        fprintf(stderr, "kv cache %s: max |logit difference| from f32 %.3g (tolerance %.0e)\n",
                kv_format_name(formats[f]), worst, tolerance[f]);
        ck_assert_msg(worst <= tolerance[f], "%s: %g", kv_format_name(formats[f]), worst);
        free_transformer(&t);
    }
    free(tokens), free(want);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(test_kv_cache_size_and_info_numbers) {
    Config c = small_config(8, 2, true);
    // 2 (keys and values) * L * KVH * hd * 4 bytes
    ck_assert_uint_eq(kv_bytes_per_token(&c, KV_F32), 2 * 2 * 2 * 4 * 4);
    // fp16 halves it; q8 stores hd = 4 int8 values and one fp32 scale per kv head
    ck_assert_uint_eq(kv_bytes_per_token(&c, KV_F16), 2 * 2 * 2 * 4 * 2);
    ck_assert_uint_eq(kv_bytes_per_token(&c, KV_Q8), 2 * 2 * 2 * (4 + 4));
    size_t D = 32, F = 72, L = 2, V = TEST_VOCAB;
    size_t per_layer = D + D * D + 2 * (2 * 4) * D + D * D + D + 3 * F * D;
    ck_assert_uint_eq(parameter_count(&c), V * D + L * per_layer + D);
    c.shared_classifier = false;
    ck_assert_uint_eq(parameter_count(&c), 2 * V * D + L * per_layer + D);
}
END_TEST

// ----------------------------------------------------------------------------
// Tokenizer

static void build_test_tokenizer(Tokenizer *t) {
    Bytes b = test_tokenizer_bytes();
    ck_assert_int_eq(build_tokenizer(t, b.data, b.size, "test", TEST_VOCAB, 1, 2), 0);
    free(b.data);
}

// Naive BPE for the reference: rescans every pair with a linear search of the vocabulary.
static int naive_bpe(const Tokenizer *t, const char *text, int *ids) {
    char *with_prefix = malloc(strlen(text) + 2);
    with_prefix[0] = ' ';
    strcpy(with_prefix + 1, text);
    char **symbols = calloc(strlen(with_prefix) + 1, sizeof(char *));
    int n = 0;
    for (size_t i = 0; with_prefix[i];) {
        size_t len = 1;
        unsigned char lead = (unsigned char)with_prefix[i];
        if (lead >= 0xC0) {
            while ((with_prefix[i + len] & 0xC0) == 0x80) {
                len++;
            }
        }
        symbols[n] = strndup(with_prefix + i, len);
        n++;
        i += len;
    }
    for (;;) {
        int best = -1, best_id = -1;
        for (int i = 0; i + 1 < n; i++) {
            char joined[64];
            snprintf(joined, sizeof joined, "%s%s", symbols[i], symbols[i + 1]);
            for (int id = FIRST_TEST_PIECE; id < t->vocab_size; id++) {
                if (strcmp(test_pieces[id - FIRST_TEST_PIECE], joined) == 0 &&
                    (best < 0 || test_scores[id - FIRST_TEST_PIECE] >
                                     test_scores[best_id - FIRST_TEST_PIECE])) {
                    best = i, best_id = id;
                }
            }
        }
        if (best < 0) {
            break;
        }
        char joined[64];
        snprintf(joined, sizeof joined, "%s%s", symbols[best], symbols[best + 1]);
        free(symbols[best]), free(symbols[best + 1]);
        symbols[best] = strdup(joined);
        memmove(symbols + best + 1, symbols + best + 2, (n - best - 2) * sizeof(char *));
        n--;
    }
    int count = 0;
    for (int i = 0; i < n; i++) {
        int id = -1;
        for (int p = 0; p < N_TEST_PIECES; p++) {
            if (strcmp(test_pieces[p], symbols[i]) == 0) {
                id = FIRST_TEST_PIECE + p;
            }
        }
        if (id >= 0) {
            ids[count++] = id;
        } else {
            for (const unsigned char *c = (const unsigned char *)symbols[i]; *c; c++) {
                ids[count++] = 3 + *c; // byte pieces sit at 3..258
            }
        }
        free(symbols[i]);
    }
    free(symbols), free(with_prefix);
    return count;
}

// GPT-2's byte alphabet: every byte stands for its own code point below U+0144, the 188
// printable ones for themselves, a space for U+0120 ('Ġ').
START_TEST(test_byte_stand_in_alphabet) {
    bool used[0x144] = {false};
    int printable = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_stand_in(b);
        ck_assert_msg(cp < 0x144 && !used[cp], "byte %d -> U+%04X", b, cp);
        used[cp] = true;
        printable += cp == (uint32_t)b;
    }
    ck_assert_int_eq(printable, 188);
    ck_assert_uint_eq(byte_stand_in(' '), 0x120);
    ck_assert_uint_eq(byte_stand_in('\n'), 0x10A);
    ck_assert_uint_eq(byte_stand_in(0xAD), 0x143); // the last of the 68, in byte order
}
END_TEST

// A GGUF string array (u64 length, then the bytes) of count texts, into out; returns its size.
static size_t gguf_strings(unsigned char *out, const char *const *texts, int count) {
    size_t n = 0;
    for (int i = 0; i < count; i++) {
        uint64_t length = strlen(texts[i]);
        memcpy(out + n, &length, 8);
        memcpy(out + n + 8, texts[i], length);
        n += 8 + length;
    }
    return n;
}

// Byte-level BPE of text with the 256 byte tokens, "ab", "bc", "abc" and "aa" and the merges
// given (in rank order), against the ids worked out by hand.
static void check_merges(const char *const *merges, int n_merges, const char *text, const int *want,
                         int n_want) {
    static unsigned char tokens[256 * 12 + 64], merge_bytes[256];
    static char alphabet[256][3];
    const char *texts[260];
    for (int b = 0; b < 256; b++) {
        small_code_point_utf8(byte_stand_in(b), alphabet[b]);
        texts[b] = alphabet[b];
    }
    texts[256] = "ab", texts[257] = "bc", texts[258] = "abc", texts[259] = "aa";
    gguf_strings(tokens, texts, 260);
    gguf_strings(merge_bytes, merges, n_merges);
    GgufByteVocabulary v = {.tokens = tokens, .merges = merge_bytes, .n_merges = n_merges};
    Config c = {.vocab_size = 260, .bos_id = 0, .eos_id = 0};
    Tokenizer t;
    ck_assert_int_eq(build_byte_level_tokenizer(&t, &v, "merges", &c, -1, -1), 0);
    int got[64];
    int n = encode(&t, text, strlen(text), false, got);
    ck_assert_msg(n == n_want && memcmp(got, want, sizeof(int) * n_want) == 0,
                  "'%s' with %d merges: %d ids, the first %d", text, n_merges, n,
                  n > 0 ? got[0] : -1);
    free_tokenizer(&t);
}

// The merge ranked first goes first, the leftmost pair on a tie, and only listed pairs merge.
START_TEST(test_byte_level_merge_order) {
    const char *ab_first[] = {"a b", "ab c", "b c"}, *bc_first[] = {"b c", "a b", "ab c"};
    const char *aa[] = {"a a"};
    check_merges(ab_first, 3, "abc", (int[]){258}, 1);
    check_merges(bc_first, 3, "abc", (int[]){'a', 257}, 2); // no merge "a bc"
    check_merges(aa, 1, "aaa", (int[]){259, 'a'}, 2);
    check_merges(aa, 1, "abc", (int[]){'a', 'b', 'c'}, 3);
}
END_TEST

START_TEST(test_encode_by_hand) {
    Tokenizer t;
    build_test_tokenizer(&t);
    int ids[64];
    // " hello" is a piece reached by merges: he, ll, hell, hello, then " " + "hello".
    ck_assert_int_eq(encode(&t, "hello", 5, false, ids), 1);
    ck_assert_int_eq(ids[0], test_piece_id(" hello"));
    // BOS comes first when asked for.
    ck_assert_int_eq(encode(&t, "hello", 5, true, ids), 2);
    ck_assert_int_eq(ids[0], 1);
    // "abc c": " a"(-12) loses to "ab"(-10) first, then " "+"ab"? no: " ab" is -13 but "abc"(-11)
    // comes first, and " abc" is no piece. So: " ", "abc", " c".
    ck_assert_int_eq(encode(&t, "abc c", 5, false, ids), 3);
    ck_assert_int_eq(ids[0], test_piece_id(" "));
    ck_assert_int_eq(ids[1], test_piece_id("abc"));
    ck_assert_int_eq(ids[2], test_piece_id(" c"));
    // A character that is no piece falls back to its bytes: 'q' is byte piece 3 + 0x71.
    ck_assert_int_eq(encode(&t, "q", 1, false, ids), 2);
    ck_assert_int_eq(ids[0], test_piece_id(" "));
    ck_assert_int_eq(ids[1], 3 + 'q');
    // "xy" and "yz" score the same: the leftmost pair merges first, as in sentencepiece.
    ck_assert_int_eq(encode(&t, "xyz", 3, false, ids), 3);
    ck_assert_int_eq(ids[1], test_piece_id("xy"));
    ck_assert_int_eq(ids[2], test_piece_id("z"));
    free_tokenizer(&t);
}
END_TEST

START_TEST(test_encode_matches_naive_bpe) {
    Tokenizer t;
    build_test_tokenizer(&t);
    const char *texts[] = {"hello hello", "abcabc ab a b", "  hello",  "hellohello",
                           "é hello é",   "cab bac",       "a",        "ll lo hell",
                           "xyz abc",     "   ",           "xyzxyz yz"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int got[128], want[128];
        int n_got = encode(&t, texts[i], strlen(texts[i]), false, got);
        int n_want = naive_bpe(&t, texts[i], want);
        ck_assert_msg(n_got == n_want, "'%s': %d ids, naive %d", texts[i], n_got, n_want);
        for (int j = 0; j < n_got; j++) {
            ck_assert_msg(got[j] == want[j], "'%s' id %d: %d vs %d", texts[i], j, got[j], want[j]);
        }
    }
    free_tokenizer(&t);
}
END_TEST

START_TEST(test_encode_empty_and_edges) {
    Tokenizer t;
    build_test_tokenizer(&t);
    int ids[32];
    ck_assert_int_eq(encode(&t, "", 0, false, ids), 0);
    ck_assert_int_eq(encode(&t, "", 0, true, ids), 1);
    ck_assert_int_eq(ids[0], 1);
    // Newline and tab are no pieces here: byte fallback.
    ck_assert_int_eq(encode(&t, "\n\t", 2, false, ids), 3);
    ck_assert_int_eq(ids[1], 3 + '\n');
    ck_assert_int_eq(ids[2], 3 + '\t');
    // Invalid UTF-8 goes through byte fallback, one byte piece per byte; no crash, no loss.
    const char invalid[] = "a\xff\xc3(\xe2\x82";
    int n = encode(&t, invalid, 6, false, ids);
    ck_assert_int_eq(n, 6);
    ck_assert_int_eq(ids[0], test_piece_id(" a"));
    ck_assert_int_eq(ids[1], 3 + 0xff);
    ck_assert_int_eq(ids[2], 3 + 0xc3);
    ck_assert_int_eq(ids[3], 3 + '(');
    ck_assert_int_eq(ids[4], 3 + 0xe2);
    ck_assert_int_eq(ids[5], 3 + 0x82);
    // Control pieces never come out of text, even when it spells them: "<s" + ">" would merge.
    n = encode(&t, "<s>", 3, false, ids);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(ids[1], test_piece_id("<s"));
    for (int i = 0; i < n; i++) {
        ck_assert_int_ne(ids[i], 1);
    }
    free_tokenizer(&t);
}
END_TEST

START_TEST(test_unknown_bytes_without_byte_pieces) {
    // A vocabulary with no byte pieces maps unknown characters to <unk> (id 0).
    Bytes b = {0};
    bytes_u32(&b, 8);
    const char *pieces[] = {"<unk>", "<s>", "</s>", " ", "a"};
    for (int i = 0; i < 5; i++) {
        bytes_f32(&b, -(float)i);
        bytes_u32(&b, (uint32_t)strlen(pieces[i]));
        bytes_append(&b, pieces[i], strlen(pieces[i]));
    }
    Tokenizer t;
    ck_assert_int_eq(build_tokenizer(&t, b.data, b.size, "test", 5, 1, 2), 0);
    int ids[16];
    ck_assert_int_eq(encode(&t, "aq", 2, false, ids), 3);
    ck_assert_int_eq(ids[0], 3);
    ck_assert_int_eq(ids[1], 4);
    ck_assert_int_eq(ids[2], 0);
    free_tokenizer(&t);
    free(b.data);
}
END_TEST

// Decodes ids (the first being BOS) through the streaming writer into a string.
static char *decode_all(const Tokenizer *t, const int *ids, int n) {
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    Utf8Stream stream = {0};
    for (int i = 1; i < n; i++) {
        ck_assert_int_eq(write_token(out, t, &stream, ids[i - 1], ids[i]), 0);
    }
    char tail[4];
    fwrite(tail, 1, utf8_flush(&stream, tail), out);
    fclose(out);
    return text;
}

START_TEST(test_round_trip) {
    Tokenizer t;
    build_test_tokenizer(&t);
    const char *texts[] = {"hello",         " hello",    "  two spaces",  "trailing ",
                           "line\nbreak\n", "tab\there", "café ☕ 日本 😀", "",
                           "abc abc"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int ids[128];
        int n = encode(&t, texts[i], strlen(texts[i]), true, ids);
        char *decoded = decode_all(&t, ids, n);
        ck_assert_str_eq(decoded, texts[i]);
        free(decoded);
    }
    free_tokenizer(&t);
}
END_TEST

START_TEST(test_decode_stream_utf8) {
    Tokenizer t;
    build_test_tokenizer(&t);
    // 😀 is F0 9F 98 80: four byte tokens must print as one whole character.
    int emoji[] = {1, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80, 3 + 0xE0, 3 + 0xA4, 3 + 0x85};
    char *text = decode_all(&t, emoji, 8);
    ck_assert_str_eq(text, "😀अ");
    free(text);
    // A control byte is escaped, never printed raw; newline and tab pass.
    int control[] = {1, 3 + 0x07, 3 + '\n', 3 + 0x1B, 3 + '\t'};
    text = decode_all(&t, control, 5);
    ck_assert_str_eq(text, "\\x07\n\\x1B\t");
    free(text);
    // A lone continuation byte, a lead byte cut short, an overlong form, a character cut off
    // at the end: each becomes U+FFFD, and the bytes around survive.
    int broken[] = {1,       3 + 0x80, 3 + 'x',  3 + 0xE2, 3 + 0x82,
                    3 + 'y', 3 + 0xC0, 3 + 0xE0, 3 + 0x80, 3 + 0xF0};
    text = decode_all(&t, broken, 10);
    // E0 80 is an overlong start: E0 becomes U+FFFD, then the lone 80 another.
    ck_assert_str_eq(text,
                     "\xEF\xBF\xBDx\xEF\xBF\xBDy\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    free(text);
    // BOS and EOS print nothing; the piece after BOS loses its dummy-prefix space.
    int specials[] = {1, test_piece_id(" hello"), 2, test_piece_id(" hello")};
    text = decode_all(&t, specials, 4);
    ck_assert_str_eq(text, "hello hello");
    free(text);
    free_tokenizer(&t);
}
END_TEST

// ----------------------------------------------------------------------------
// Sampler

START_TEST(test_top_k_and_top_p_keep_the_right_set) {
    float p[7] = {0.10f, 0.35f, 0.05f, 0.30f, 0.15f, 0.0f, 0.05f};
    struct {
        int top_k;
        float top_p;
        int n;
        int ids[7];
    } cases[] = {
        {0, 1.0f, 7, {1, 3, 4, 0, 2, 6, 5}}, // nothing filtered; most likely first, ties by id
        {2, 1.0f, 2, {1, 3}},                // top-k 2
        {6, 1.0f, 6, {1, 3, 4, 0, 2, 6}},    // the tie at 0.05 keeps both, id 2 first
        {0, 0.60f, 2, {1, 3}},               // 0.35 < 0.60 <= 0.65
        {0, 0.75f, 3, {1, 3, 4}},            // 0.65 < 0.75 <= 0.80
        {0, 0.30f, 1, {1}},                  // the first alone reaches 0.30
        {3, 0.5f, 2, {1, 3}},                // top-k keeps 0.80; half of that is 0.40 -> 1, 3
        {1, 0.9f, 1, {1}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        Sampler s;
        ck_assert_int_eq(build_sampler(&s, 7, 1.0f, cases[c].top_k, cases[c].top_p, 1), 0);
        int n = select_candidates(&s, p);
        ck_assert_msg(n == cases[c].n, "case %zu: kept %d, expected %d", c, n, cases[c].n);
        for (int i = 0; i < n; i++) {
            ck_assert_int_eq(s.candidates[i].id, cases[c].ids[i]);
        }
        free_sampler(&s);
    }
}
END_TEST

// The nucleus prefilter must not change the kept set: compare with sorting every token, on
// peaked and flat distributions over a large vocabulary.
static int naive_kept_set(const float *p, int V, int top_k, float top_p, int *ids) {
    for (int i = 0; i < V; i++) {
        ids[i] = i;
    }
    for (int i = 1; i < V; i++) { // insertion sort: most likely first, ties by id
        int id = ids[i], j = i - 1;
        while (j >= 0 && (p[ids[j]] < p[id] || (p[ids[j]] == p[id] && ids[j] > id))) {
            ids[j + 1] = ids[j];
            j--;
        }
        ids[j + 1] = id;
    }
    int n = top_k > 0 && top_k < V ? top_k : V;
    double mass = 0.0;
    for (int i = 0; i < n; i++) {
        mass += p[ids[i]];
    }
    double cumulative = 0.0;
    for (int i = 0; i < n && top_p < 1.0f; i++) {
        cumulative += p[ids[i]];
        if (cumulative >= top_p * mass - 1e-6) {
            return i + 1;
        }
    }
    return n;
}

START_TEST(test_sampler_prefilter_keeps_the_same_set) {
    int V = 2000;
    float *logits = malloc(sizeof(float) * V), *p = malloc(sizeof(float) * V);
    int *want = malloc(sizeof(int) * V);
    uint64_t seed = 21;
    float spreads[] = {0.5f, 3.0f, 12.0f};
    int ks[] = {0, 5, 50, 1500};
    float ps[] = {0.5f, 0.9f, 0.99f, 1.0f};
    for (int a = 0; a < 3; a++) {
        fill_uniform(logits, V, &seed, -spreads[a], spreads[a]);
        memcpy(p, logits, sizeof(float) * V);
        softmax(p, V);
        for (int b = 0; b < 4; b++) {
            for (int c = 0; c < 4; c++) {
                Sampler s;
                ck_assert_int_eq(build_sampler(&s, V, 1.0f, ks[b], ps[c], 1), 0);
                int n = select_candidates(&s, p);
                int n_want = naive_kept_set(p, V, ks[b], ps[c], want);
                ck_assert_msg(abs(n - n_want) <= 1, "spread %g k %d p %g: %d vs %d", spreads[a],
                              ks[b], ps[c], n, n_want);
                for (int i = 0; i < (n < n_want ? n : n_want); i++) {
                    ck_assert_int_eq(s.candidates[i].id, want[i]);
                }
                free_sampler(&s);
            }
        }
    }
    free(logits), free(p), free(want);
}
END_TEST

START_TEST(test_sampler_seeded_reproducible) {
    uint64_t data_seed = 11;
    float logits[50], copy[50];
    int first[200], second[200], other[200];
    for (int run = 0; run < 3; run++) {
        Sampler s;
        ck_assert_int_eq(build_sampler(&s, 50, 1.0f, 20, 0.95f, run == 2 ? 1235 : 1234), 0);
        data_seed = 11;
        for (int i = 0; i < 200; i++) {
            fill_uniform(logits, 50, &data_seed, -2, 2);
            memcpy(copy, logits, sizeof logits);
            int id = sample(&s, copy);
            (run == 0 ? first : run == 1 ? second : other)[i] = id;
        }
        free_sampler(&s);
    }
    ck_assert_mem_eq(first, second, sizeof first);
    ck_assert_int_ne(memcmp(first, other, sizeof first), 0);
}
END_TEST

START_TEST(test_sampler_follows_distribution) {
    // With temperature 1 and no filtering, draws follow softmax(logits) = (0.5, 0.3, 0.2).
    Sampler s;
    ck_assert_int_eq(build_sampler(&s, 3, 1.0f, 0, 1.0f, 99), 0);
    int counts[3] = {0};
    int draws = 20000;
    for (int i = 0; i < draws; i++) {
        float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
        counts[sample(&s, logits)]++;
    }
    ck_assert_float_eq_tol(counts[0] / (float)draws, 0.5f, 0.02f);
    ck_assert_float_eq_tol(counts[1] / (float)draws, 0.3f, 0.02f);
    ck_assert_float_eq_tol(counts[2] / (float)draws, 0.2f, 0.02f);
    free_sampler(&s);
}
END_TEST

START_TEST(test_greedy_takes_first_maximum) {
    Sampler s;
    ck_assert_int_eq(build_sampler(&s, 4, 0.0f, 0, 1.0f, 1), 0);
    float logits[4] = {1.0f, 3.0f, 3.0f, -1.0f};
    ck_assert_int_eq(sample(&s, logits), 1);
    free_sampler(&s);
}
END_TEST

static int parse_argv(void *arg) {
    char **argv = arg;
    int argc = 0;
    while (argv[argc] != NULL) {
        argc++;
    }
    Options o;
    return parse_options(argc, argv, &o);
}

// parse_options runs getopt afresh each time: a cluster left half-read ("-hq" stops at -h)
// must not leak into the next parse, and an unknown option in a cluster is named by itself.
START_TEST(test_parse_options_fresh_state) {
    char message[512];
    char *help[] = {"run", "-hq", NULL};
    char *plain[] = {"run", "model.bin", "-q", NULL};
    char *cluster[] = {"run", "model.bin", "-yq", NULL};
    int saved = dup(1);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1); // --help prints to stdout
    ck_assert_int_eq(capture_stderr(parse_argv, help, message, sizeof message), 1);
    fflush(stdout);
    dup2(saved, 1);
    close(saved), close(null);
    Options o;
    ck_assert_int_eq(parse_options(3, plain, &o), 0);
    ck_assert(o.quiet);
    ck_assert_str_eq(o.model_path, "model.bin");
    ck_assert_int_eq(capture_stderr(parse_argv, cluster, message, sizeof message), -1);
    ck_assert_msg(strstr(message, "'-y' is an unknown option") != NULL, "message: %s", message);
}
END_TEST

// ----------------------------------------------------------------------------
// Loader rejections: every bad file gives -1 and a message naming the field

typedef struct {
    const char *path;
} LoadArgs;

static int load_only(void *arg) {
    Transformer t;
    int result = build_transformer(&t, ((LoadArgs *)arg)->path, KV_F32);
    if (result == 0) {
        free_transformer(&t);
    }
    return result;
}

// Loads a checkpoint, then reserves KV-cache pages for its whole context.
static int reserve_whole_context(void *arg) {
    Transformer t;
    int result = build_transformer(&t, ((LoadArgs *)arg)->path, KV_F32);
    if (result == 0) {
        ck_assert_int_eq(t.state.kv.n_pages, 1);
        result = reserve_positions(&t, t.config.seq_len);
        free_transformer(&t);
    }
    return result;
}

// Loads bytes as a checkpoint file; returns the result and the stderr message.
static int load_bytes(const unsigned char *data, size_t size, char *message, size_t capacity) {
    char *path = write_temp_file(data, size, ".bin");
    LoadArgs args = {path};
    int result = capture_stderr(load_only, &args, message, capacity);
    unlink(path);
    free(path);
    return result;
}

static Bytes valid_model_bytes(void) {
    Config c = small_config(4, 2, true);
    size_t n_floats;
    float *weights = random_weights(&c, 5, &n_floats);
    Bytes tok = test_tokenizer_bytes();
    Bytes file = gqam_bytes(&c, weights, n_floats, &tok);
    free(weights), free(tok.data);
    return file;
}

static void expect_rejected(const Bytes *file, const char *needle) {
    char message[1024];
    int result = load_bytes(file->data, file->size, message, sizeof message);
    ck_assert_msg(result == -1, "accepted a bad file (expected an error about '%s')", needle);
    ck_assert_msg(strstr(message, needle) != NULL, "message '%s' does not mention '%s'", message,
                  needle);
    ck_assert_msg(strchr(message, '\n') == message + strlen(message) - 1,
                  "expected one line, got '%s'", message);
}

static void expect_field_rejected(size_t offset, uint32_t value, const char *needle) {
    Bytes file = valid_model_bytes();
    memcpy(file.data + offset, &value, 4);
    expect_rejected(&file, needle);
    free(file.data);
}

START_TEST(test_loader_accepts_valid) {
    Bytes file = valid_model_bytes();
    char message[256];
    ck_assert_int_eq(load_bytes(file.data, file.size, message, sizeof message), 0);
    ck_assert_str_eq(message, "");
    free(file.data);
}
END_TEST

START_TEST(test_loader_rejects_truncation) {
    Bytes file = valid_model_bytes();
    size_t weights_offset = (GQAM_HEADER_BYTES + 0) + 0;
    memcpy(&weights_offset, file.data + 80, 8);
    size_t cuts[] = {
        3, 100, GQAM_HEADER_BYTES + 50, weights_offset - 1, weights_offset + 1000, file.size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        Bytes cut = {file.data, cuts[i], cuts[i]};
        char message[512];
        ck_assert_int_eq(load_bytes(cut.data, cut.size, message, sizeof message), -1);
        ck_assert_msg(strlen(message) > 0, "no message for a cut at %zu", cuts[i]);
    }
    Bytes one_short = {file.data, file.size - 1, file.size - 1};
    expect_rejected(&one_short, "truncated");
    bytes_u32(&file, 0);
    expect_rejected(&file, "accounts for only");
    free(file.data);
}
END_TEST

START_TEST(test_loader_rejects_bad_header_fields) {
    expect_field_rejected(0, 0x4d514746, "not a checkpoint"); // "FGQM": wrong magic
    expect_field_rejected(4, 2, "version");
    expect_field_rejected(8, 0, "dim");
    expect_field_rejected(8, 0x80000000u, "dim");
    expect_field_rejected(12, 0, "hidden_dim");
    expect_field_rejected(12, 0xFFFFFFFFu, "hidden_dim");
    expect_field_rejected(16, 0, "n_layers");
    expect_field_rejected(16, 100000, "n_layers");
    expect_field_rejected(20, 0, "n_heads");
    expect_field_rejected(24, 0, "n_kv_heads");
    expect_field_rejected(24, 3, "does not divide n_heads");
    expect_field_rejected(28, 4, "head_dim"); // dim 32 / n_heads 4 needs 8
    expect_field_rejected(28, 7, "head_dim"); // odd
    expect_field_rejected(32, 2, "vocab_size");
    expect_field_rejected(32, 1u << 30, "vocab_size");
    expect_field_rejected(36, 0, "seq_len");
    expect_field_rejected(36, 1u << 31, "seq_len");
    float nan_value = NAN, zero = 0.0f;
    uint32_t bits;
    memcpy(&bits, &nan_value, 4);
    expect_field_rejected(40, bits, "rope_theta");
    memcpy(&bits, &zero, 4);
    expect_field_rejected(44, bits, "norm_eps");
    expect_field_rejected(48, 6, "flags");
    expect_field_rejected(52, TEST_VOCAB, "bos_id");
    expect_field_rejected(56, 0xFFFFFFFFu, "eos_id");
    expect_field_rejected(64, 300, "tokenizer_offset");
    expect_field_rejected(72, 0x7FFFFFFF, "tokenizer_bytes");
    expect_field_rejected(80, 64, "weights_offset");
    expect_field_rejected(88, 12, "weights_bytes");
    expect_field_rejected(60, 32, "quant_group"); // a group size in an fp32 file
}
END_TEST

// A 7B-sized config is no overflow: the header's byte count is exact and named.
START_TEST(test_loader_big_configs) {
    Config c = {.dim = 4096,
                .hidden_dim = 11008,
                .n_layers = 32,
                .n_heads = 32,
                .n_kv_heads = 32,
                .head_dim = 128,
                .vocab_size = 32000,
                .seq_len = 2048,
                .rope_theta = 10000.0f,
                .norm_eps = 1e-5f,
                .shared_classifier = false,
                .bos_id = 1,
                .eos_id = 2};
    uint64_t D = 4096, F = 11008, L = 32, V = 32000;
    uint64_t params = 2 * V * D + L * (2 * D + 4 * D * D + 3 * D * F) + D; // 6.74 billion
    ck_assert_uint_eq(parameter_count(&c), params);
    float none = 0.0f;
    Bytes file = gqam_bytes(&c, &none, 0, NULL);
    uint64_t weights_bytes = params * 4;
    memcpy(file.data + 88, &weights_bytes, 8);
    char needle[128];
    snprintf(needle, sizeof needle, "the header needs %llu (truncated?)",
             (unsigned long long)(GQAM_HEADER_BYTES + weights_bytes));
    expect_rejected(&file, needle);
    free(file.data);

    // A config whose KV cache cannot fit in memory: 1024 layers of a 1M-token context.
    Config huge = {.dim = 16,
                   .hidden_dim = 16,
                   .n_layers = 1024,
                   .n_heads = 1,
                   .n_kv_heads = 1,
                   .head_dim = 16,
                   .vocab_size = 3,
                   .seq_len = 1 << 20,
                   .rope_theta = 10000.0f,
                   .norm_eps = 1e-5f,
                   .shared_classifier = true,
                   .bos_id = 1,
                   .eos_id = 2};
    size_t n_floats = parameter_count(&huge);
    float *weights = calloc(n_floats, sizeof(float));
    file = gqam_bytes(&huge, weights, n_floats, NULL);
    // The cache grows in pages, so the model loads (one page per layer); asking for the whole
    // context is refused in one line. Keys and values: 2 * 1024 * 2^20 * 16 * 4 bytes.
    char *path = write_temp_file(file.data, file.size, ".bin");
    LoadArgs args = {path};
    char message[1024];
    ck_assert_int_eq(capture_stderr(reserve_whole_context, &args, message, sizeof message), -1);
    ck_assert_msg(strstr(message, "need 137.") != NULL, "message '%s'", message);
    ck_assert_msg(strchr(message, '\n') == message + strlen(message) - 1, "'%s'", message);
    unlink(path);
    free(path);
    free(file.data), free(weights);
}
END_TEST

START_TEST(test_loader_rejects_empty_missing_directory) {
    char message[512];
    LoadArgs args = {"/nonexistent/model.bin"};
    ck_assert_int_eq(capture_stderr(load_only, &args, message, sizeof message), -1);
    ck_assert_ptr_nonnull(strstr(message, "cannot open"));
    args.path = "/tmp";
    ck_assert_int_eq(capture_stderr(load_only, &args, message, sizeof message), -1);
    ck_assert_ptr_nonnull(strstr(message, "is a directory"));
    ck_assert_int_eq(load_bytes((const unsigned char *)"", 0, message, sizeof message), -1);
    ck_assert_ptr_nonnull(strstr(message, "empty"));
}
END_TEST

// A llama2.c legacy file: 7 int32, the weights, the two RoPE tables, maybe a classifier.
static Bytes legacy_bytes(const Config *c, const float *weights) {
    Bytes b = {0};
    int32_t header[7] = {c->dim,        c->hidden_dim,
                         c->n_layers,   c->n_heads,
                         c->n_kv_heads, c->shared_classifier ? c->vocab_size : -c->vocab_size,
                         c->seq_len};
    bytes_append(&b, header, sizeof header);
    Weights w;
    size_t before_rope = layout_weights(c, false, NULL, &w) / sizeof(float) -
                         (c->shared_classifier ? 0 : (size_t)c->vocab_size * c->dim);
    bytes_append(&b, weights, before_rope * sizeof(float));
    float *rope_tables = calloc((size_t)c->seq_len * c->head_dim, sizeof(float));
    bytes_append(&b, rope_tables, (size_t)c->seq_len * c->head_dim * sizeof(float));
    free(rope_tables);
    if (!c->shared_classifier) {
        bytes_append(&b, weights + before_rope, (size_t)c->vocab_size * c->dim * sizeof(float));
    }
    return b;
}

START_TEST(test_legacy_format_same_logits) {
    // The same weights in both formats give the same logits, tied or separate classifier.
    for (int shared = 0; shared < 2; shared++) {
        Config c = small_config(4, 2, shared);
        size_t n_floats;
        float *weights = random_weights(&c, 17, &n_floats);
        Bytes ours = gqam_bytes(&c, weights, n_floats, NULL);
        Bytes legacy = legacy_bytes(&c, weights);
        char *ours_path = write_temp_file(ours.data, ours.size, ".bin");
        char *legacy_path = write_temp_file(legacy.data, legacy.size, ".bin");
        Transformer a, b;
        ck_assert_int_eq(build_transformer(&a, ours_path, KV_F32), 0);
        ck_assert_int_eq(build_transformer(&b, legacy_path, KV_F32), 0);
        ck_assert(b.checkpoint->legacy);
        ck_assert_int_eq(b.config.shared_classifier, shared);
        for (int pos = 0; pos < 4; pos++) {
            float *la = forward(&a, 5 + pos, pos, true);
            float *lb = forward(&b, 5 + pos, pos, true);
            ck_assert_float_eq(max_abs_diff(la, lb, c.vocab_size), 0.0f);
        }
        // Truncated legacy files are rejected too.
        char message[512];
        ck_assert_int_eq(load_bytes(legacy.data, legacy.size - 4, message, sizeof message), -1);
        ck_assert_ptr_nonnull(strstr(message, "truncated"));
        free_transformer(&a), free_transformer(&b);
        unlink(ours_path), unlink(legacy_path);
        free(ours_path), free(legacy_path), free(weights), free(ours.data), free(legacy.data);
    }
}
END_TEST

static int build_tokenizer_from(void *arg) {
    Bytes *b = arg;
    Tokenizer t;
    int result = build_tokenizer(&t, b->data, b->size, "tok.bin", TEST_VOCAB, 1, 2);
    if (result == 0) {
        free_tokenizer(&t);
    }
    return result;
}

START_TEST(test_tokenizer_rejections) {
    char message[512];
    Bytes b = test_tokenizer_bytes();
    ck_assert_int_eq(capture_stderr(build_tokenizer_from, &b, message, sizeof message), 0);
    // One piece fewer than the model's vocabulary.
    Bytes fewer = b;
    fewer.size -= 8 + strlen(test_pieces[N_TEST_PIECES - 1]);
    ck_assert_int_eq(capture_stderr(build_tokenizer_from, &fewer, message, sizeof message), -1);
    ck_assert_ptr_nonnull(strstr(message, "vocab_size"));
    // The last piece's length runs past the end of the file.
    Bytes past = b;
    past.data = malloc(b.size);
    memcpy(past.data, b.data, b.size);
    size_t last_length_at = b.size - strlen(test_pieces[N_TEST_PIECES - 1]) - 4;
    uint32_t huge = 1000;
    memcpy(past.data + last_length_at, &huge, 4);
    ck_assert_int_eq(capture_stderr(build_tokenizer_from, &past, message, sizeof message), -1);
    ck_assert_ptr_nonnull(strstr(message, "running past the end"));
    // A negative length, and a record cut in its header.
    int32_t negative = -5;
    memcpy(past.data + last_length_at, &negative, 4);
    ck_assert_int_eq(capture_stderr(build_tokenizer_from, &past, message, sizeof message), -1);
    ck_assert_ptr_nonnull(strstr(message, "length -5"));
    Bytes cut = {b.data, 4 + 3, 7};
    ck_assert_int_eq(capture_stderr(build_tokenizer_from, &cut, message, sizeof message), -1);
    ck_assert_ptr_nonnull(strstr(message, "cut off"));
    free(past.data), free(b.data);
}
END_TEST

// ----------------------------------------------------------------------------
// Inspection: --eval against a hand-computed NLL, attention records against the kernel

// The NLL of tokens[1..n) computed the long way: every window recomputed from scratch by the
// naive full-sequence model, every -log p summed in double.
static double naive_windowed_nll(const Config *c, const Weights *w, const int *tokens, int n,
                                 int stride, long *n_scored) {
    int S = c->seq_len, V = c->vocab_size;
    float *logits = malloc(sizeof(float) * S * V);
    double total = 0.0;
    *n_scored = 0;
    int scored_until = 0;
    for (int start = 0; scored_until < n - 1; start += stride) {
        int end = start + S < n - 1 ? start + S : n - 1;
        naive_forward_all(c, w, tokens + start, end - start, logits);
        for (int target = scored_until + 1; target <= end; target++) {
            const float *row = logits + (size_t)(target - 1 - start) * V;
            double sum = 0.0;
            for (int i = 0; i < V; i++) {
                sum += exp((double)row[i]);
            }
            total += log(sum) - row[tokens[target]];
            (*n_scored)++;
        }
        scored_until = end;
    }
    free(logits);
    return total;
}

START_TEST(test_eval_matches_hand_computed_nll) {
    Config c = small_config(4, 2, true);
    char *path = write_test_model(&c, 77);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, path, KV_F32), 0);
    uint64_t seed = 5;
    int tokens[61];
    for (int i = 0; i < 61; i++) {
        tokens[i] = (int)(lcg_next(&seed) % TEST_VOCAB);
    }
    int strides[] = {24, 10, 1};
    for (int s = 0; s < 3; s++) {
        EvalResult r;
        evaluate(&t, tokens, 61, strides[s], &r);
        long n_scored;
        double want = naive_windowed_nll(&t.config, &t.weights, tokens, 61, strides[s], &n_scored);
        ck_assert_int_eq(r.n_scored, 60);
        ck_assert_int_eq(n_scored, 60);
        ck_assert_msg(fabs(r.total_nll - want) <= 1e-3 * n_scored, "stride %d: %f vs %f",
                      strides[s], r.total_nll, want);
    }
    // A single short window, worked through by hand from the naive logits.
    int three[] = {1, 270, 5};
    EvalResult r;
    evaluate(&t, three, 3, 24, &r);
    float logits[2 * TEST_VOCAB];
    naive_forward_all(&t.config, &t.weights, three, 2, logits);
    double want = 0.0;
    for (int p = 0; p < 2; p++) {
        double sum = 0.0;
        for (int i = 0; i < TEST_VOCAB; i++) {
            sum += exp((double)logits[p * TEST_VOCAB + i]);
        }
        want += log(sum) - logits[p * TEST_VOCAB + three[p + 1]];
    }
    ck_assert_int_eq(r.n_scored, 2);
    ck_assert_double_eq_tol(r.total_nll, want, 1e-4);
    free_transformer(&t);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(test_attention_record_matches_kernel) {
    Config c = small_config(8, 2, false);
    char *path = write_test_model(&c, 78);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, path, KV_F32), 0);
    int tokens[] = {1, 270, 5, 99, 261};
    Inspector *in = record_prompt_attention(&t, tokens, 5);
    ck_assert_ptr_nonnull(in);
    float *record = in->attention;
    for (int layer = 0; layer < c.n_layers; layer++) {
        for (int head = 0; head < c.n_heads; head++) {
            const float *w = record + ((size_t)layer * c.n_heads + head) * 25;
            for (int query = 0; query < 5; query++) {
                double sum = 0.0;
                for (int key = 0; key < 5; key++) {
                    ck_assert(key <= query || w[query * 5 + key] == 0.0f); // causal
                    sum += w[query * 5 + key];
                }
                ck_assert_double_eq_tol(sum, 1.0, 1e-5);
            }
        }
    }
    // The record's last row equals a naive attention over the cache with the recorded query.
    size_t q_dim = (size_t)c.n_heads * c.head_dim, kv_dim = kv_dim_of(&c);
    float *naive_out = malloc(q_dim * sizeof(float));
    for (int layer = 0; layer < c.n_layers; layer++) {
        float *keys = malloc(sizeof(float) * 5 * kv_dim);
        for (int kv = 0; kv < c.n_kv_heads; kv++) { // (5, kv_dim) gathered through the pages
            float head_keys[5 * 64];
            kv_gather(&t.state.kv, layer, KV_KEYS, kv, 5, head_keys);
            for (int pos = 0; pos < 5; pos++) {
                memcpy(keys + pos * kv_dim + kv * c.head_dim, head_keys + pos * c.head_dim,
                       sizeof(float) * c.head_dim);
            }
        }
        float *scores = malloc(sizeof(float) * c.seq_len);
        for (int head = 0; head < c.n_heads; head++) {
            const float *q = in->queries + (layer * 5 + 4) * q_dim + head * c.head_dim;
            int kv = head * c.n_kv_heads / c.n_heads;
            for (int key = 0; key < 5; key++) {
                scores[key] = dot(q, keys + key * kv_dim + kv * c.head_dim, c.head_dim) /
                              sqrtf((float)c.head_dim);
            }
            naive_softmax(scores, 5);
            const float *w = in->attention + ((size_t)layer * c.n_heads + head) * 25;
            ck_assert_float_le(max_abs_diff(scores, w + 4 * 5, 5), 1e-6f);
        }
        free(keys);
        free(scores);
    }
    free(naive_out);
    free_inspector(in);
    free_transformer(&t);
    unlink(path);
    free(path);
}
END_TEST

// Inspection reads the cache through its pages: a 290-token prompt crosses the first page, and
// the record's keys and weights past it still match a naive softmax over those keys.
START_TEST(test_attention_record_across_pages) {
    Config c = small_config(8, 2, false);
    c.seq_len = 300;
    char *path = write_test_model(&c, 79);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, path, KV_F32), 0);
    enum { R = 290 };
    int tokens[R];
    uint64_t seed = 12;
    for (int i = 0; i < R; i++) {
        tokens[i] = (int)(lcg_next(&seed) % TEST_VOCAB);
    }
    Inspector *in = record_prompt_attention(&t, tokens, R);
    ck_assert_ptr_nonnull(in);
    ck_assert_int_eq(t.state.kv.n_pages, 2);
    size_t q_dim = (size_t)c.n_heads * c.head_dim, kv_dim = kv_dim_of(&c);
    float scores[R];
    for (int layer = 0; layer < c.n_layers; layer++) {
        for (int head = 0; head < c.n_heads; head++) {
            int kv = head * c.n_kv_heads / c.n_heads;
            for (int pos = 250; pos < R; pos += 13) {
                const float *q =
                    in->queries + ((size_t)layer * R + pos) * q_dim + head * c.head_dim;
                for (int key = 0; key <= pos; key++) {
                    const float *k =
                        in->keys + ((size_t)layer * R + key) * kv_dim + kv * c.head_dim;
                    scores[key] = dot(q, k, c.head_dim) / sqrtf((float)c.head_dim);
                }
                naive_softmax(scores, pos + 1);
                const float *w = in->attention + (((size_t)layer * c.n_heads + head) * R + pos) * R;
                ck_assert_float_le(max_abs_diff(scores, w, pos + 1), 1e-6f);
            }
        }
        // the recorded keys are the cache's, position 280 living in the second page
        float gathered[R * 4];
        kv_gather(&t.state.kv, layer, KV_KEYS, 1, R, gathered);
        ck_assert_float_eq(
            max_abs_diff(gathered + 280 * 4, in->keys + ((size_t)layer * R + 280) * kv_dim + 4, 4),
            0.0f);
    }
    free_inspector(in);
    free_transformer(&t);
    unlink(path);
    free(path);
}
END_TEST

// ----------------------------------------------------------------------------
// Hostile inputs: weights that are not numbers, sampling at the edges, prompts across blocks

// Writes a model whose weight at index (of the flat fp32 weights) is value, and loads it.
static void expect_weight_rejected(size_t index, float value, const char *needle) {
    Config c = small_config(4, 2, true);
    size_t n_floats;
    float *weights = random_weights(&c, 5, &n_floats);
    weights[index] = value;
    Bytes tok = test_tokenizer_bytes();
    Bytes file = gqam_bytes(&c, weights, n_floats, &tok);
    expect_rejected(&file, needle);
    free(weights), free(tok.data), free(file.data);
}

START_TEST(test_loader_rejects_nonfinite_weights) {
    Config c = small_config(4, 2, true);
    size_t D = c.dim, V = c.vocab_size, L = c.n_layers, q_dim = (size_t)c.n_heads * c.head_dim;
    expect_weight_rejected(5, NAN, "token_embedding, value 5 is nan");
    expect_weight_rejected(V * D + D + 3, INFINITY, "rms_att of layer 1, value 3 is inf");
    // wq follows rms_att; layer 1 starts q_dim * D values in.
    expect_weight_rejected(V * D + L * D + q_dim * D + 7, -INFINITY,
                           "wq of layer 1, value 7 is -inf");
    // int8: a -128 anywhere, and a scale that is not finite.
    size_t n_floats;
    float *weights = random_weights(&c, 5, &n_floats);
    Bytes file = gqam_int8_bytes(&c, weights, 8);
    uint64_t weights_offset;
    memcpy(&weights_offset, file.data + 80, 8);
    file.data[weights_offset + 9] = 0x80;
    expect_rejected(&file, "token_embedding, value 9 is -128; int8 weights lie in -127..127");
    file.data[weights_offset + 9] = 0;
    size_t scales = (weights_offset + V * D + 63) / 64 * 64; // the embedding's scales follow
    float nan = NAN;
    memcpy(file.data + scales + 4 * 3, &nan, 4);
    expect_rejected(&file, "token_embedding, scale 3 is nan");
    free(weights), free(file.data);
}
END_TEST

START_TEST(test_loader_rejects_reserved_header_bytes) {
    Bytes file = valid_model_bytes();
    file.data[200] = 7;
    expect_rejected(&file, "header byte 200 is 0x07; bytes 96..255 are reserved");
    free(file.data);
}
END_TEST

// A tiny temperature no longer overflows (logits / T = inf, then NaN), and a distribution that
// no token survives the top-p prefilter of still gives a token.
START_TEST(test_sampler_is_total) {
    enum { V = 1024 };
    float *logits = malloc(V * sizeof(float));
    uint64_t seed = 31;
    Sampler s;
    ck_assert_int_eq(build_sampler(&s, V, 2e-38f, 0, 0.9f, 7), 0);
    for (int trial = 0; trial < 20; trial++) {
        fill_uniform(logits, V, &seed, -30, 30);
        int want = argmax(logits, V);
        ck_assert_int_eq(sample(&s, logits), want); // T -> 0 is greedy
    }
    free_sampler(&s);
    ck_assert_int_eq(build_sampler(&s, V, 1.0f, 0, 0.0005f, 7), 0);
    for (int trial = 0; trial < 5; trial++) {
        for (int i = 0; i < V; i++) {
            logits[i] = 0.0f; // uniform: every probability under the cutoff (1 - p) / (V - 1)
        }
        ck_assert_int_eq(sample(&s, logits), 0); // the nucleus is the first of the tied tokens
    }
    float uniform[V];
    for (int i = 0; i < V; i++) {
        uniform[i] = 1.0f / V;
    }
    ck_assert_int_eq(select_candidates(&s, uniform), 1);
    ck_assert_int_eq(s.candidates[0].id, 0);
    free_sampler(&s);
    free(logits);
}
END_TEST

// Temperature reshapes the distribution the draw follows: frequencies of 40000 draws against
// softmax(logits / T) worked out by hand.
START_TEST(test_temperature_changes_the_distribution) {
    const float logits[3] = {0.0f, 1.0f, 2.0f};
    const struct {
        float temperature;
        double expected[3];
    } cases[] = {
        {0.5f, {1 / 62.9872, 7.38906 / 62.9872, 54.5982 / 62.9872}}, // e^0, e^2, e^4
        {2.0f, {1 / 5.36700, 1.64872 / 5.36700, 2.71828 / 5.36700}}, // e^0, e^0.5, e^1
    };
    for (int k = 0; k < 2; k++) {
        Sampler s;
        ck_assert_int_eq(build_sampler(&s, 3, cases[k].temperature, 0, 1.0f, 99), 0);
        int counts[3] = {0};
        for (int draw = 0; draw < 40000; draw++) {
            float scratch[3] = {logits[0], logits[1], logits[2]};
            counts[sample(&s, scratch)]++;
        }
        for (int i = 0; i < 3; i++) {
            double seen = counts[i] / 40000.0;
            ck_assert_msg(fabs(seen - cases[k].expected[i]) < 0.012,
                          "T=%g token %d: %.4f, want %.4f", cases[k].temperature, i, seen,
                          cases[k].expected[i]);
        }
        free_sampler(&s);
    }
}
END_TEST

// Top-p keeps the fewest tokens whose probabilities reach p: an exact tie with p counts.
START_TEST(test_top_p_exact_boundary) {
    const float probabilities[4] = {0.5f, 0.25f, 0.125f, 0.125f};
    Sampler s;
    ck_assert_int_eq(build_sampler(&s, 4, 1.0f, 0, 0.75f, 1), 0);
    ck_assert_int_eq(select_candidates(&s, probabilities), 2);
    s.top_p = 0.7500001f;
    ck_assert_int_eq(select_candidates(&s, probabilities), 3);
    free_sampler(&s);
}
END_TEST

// Generation stops at an end-of-turn token of the vocabulary, not only at EOS or BOS: the
// token greedy decoding picks first, marked so, ends it before anything is printed.
START_TEST(test_generation_stops_at_end_of_turn) {
    Config c = small_config(4, 2, true);
    char *path = write_test_model(&c, 5);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, path, KV_F32), 0);
    Tokenizer tok;
    ck_assert_int_eq(build_tokenizer(&tok, t.checkpoint->tokenizer_bytes,
                                     t.checkpoint->tokenizer_size, "test", c.vocab_size, c.bos_id,
                                     c.eos_id),
                     0);
    Sampler sampler;
    ck_assert_int_eq(build_sampler(&sampler, c.vocab_size, 0.0f, 0, 1.0f, 1), 0);
    int prompt[] = {1, 7, 9}, stop;
    FILE *text = fopen("/dev/null", "w");
    TextOut out = {.file = text, .emit_ids = true};
    GenerationRecord record = {
        .watch = {false, see_logits}, .n_prompt = 3, .vocab_size = c.vocab_size};
    ck_assert_int_eq(generate(&t, &tok, &sampler, prompt, 3, 4, &out, &record.watch, &stop), 4);
    int first = argmax(forward_block(&t, prompt, 3, 0, LOGITS_LAST), c.vocab_size);
    ck_assert_int_ne(first, c.eos_id);
    tok.ends_generation = calloc(c.vocab_size, sizeof(bool));
    tok.ends_generation[first] = true;
    ck_assert_int_eq(generate(&t, &tok, &sampler, prompt, 3, 4, &out, &record.watch, &stop), 0);
    ck_assert_int_eq(stop, first);
    fclose(text);
    free_sampler(&sampler), free_tokenizer(&tok), free_transformer(&t);
    unlink(path), free(path);
}
END_TEST

START_TEST(test_json_strings_are_valid_utf8) {
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    json_string(out, "a\xff\"b\\\x01\xc3\xa9\xe2\x96\x81\xe2\x96");
    fclose(out);
    ck_assert_str_eq(text, "\"a\\ufffd\\\"b\\\\\\u0001\xc3\xa9\xe2\x96\x81\\ufffd\\ufffd\"");
    free(text);
}
END_TEST

// A model with rope_theta 500000 (Llama 3's) computes with it: forward matches the naive model
// run with the theta that was written, and differs from one run with 10000.
START_TEST(test_rope_theta_from_the_header) {
    Config c = small_config(4, 2, false);
    c.rope_theta = 500000.0f;
    c.seq_len = 64;
    char *path = write_test_model(&c, 77);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, path, KV_F32), 0);
    int tokens[40];
    for (int i = 0; i < 40; i++) {
        tokens[i] = (i * 37 + 5) % c.vocab_size;
    }
    float *want = malloc(sizeof(float) * 40 * c.vocab_size);
    float *other = malloc(sizeof(float) * 40 * c.vocab_size);
    naive_forward_all(&c, &t.weights, tokens, 40, want);
    Config default_theta = c;
    default_theta.rope_theta = 10000.0f;
    naive_forward_all(&default_theta, &t.weights, tokens, 40, other);
    float *got = NULL;
    for (int pos = 0; pos < 40; pos++) {
        got = forward(&t, tokens[pos], pos, true);
    }
    size_t last = (size_t)39 * c.vocab_size;
    ck_assert_float_le(max_abs_diff(got, want + last, c.vocab_size), 1e-4f);
    ck_assert_float_gt(max_abs_diff(other + last, want + last, c.vocab_size), 1e-3f);
    free(want), free(other);
    free_transformer(&t);
    unlink(path);
    free(path);
}
END_TEST

// Prompts of 64, 65, 128 and 200 positions, through generate (--logits rows), evaluate and the
// attention record, against the same tokens fed one position at a time.
START_TEST(test_prompt_blocks_match_token_by_token) {
    Config c = small_config(8, 2, false);
    c.seq_len = 256;
    char *path = write_test_model(&c, 91);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, path, KV_F32), 0);
    int V = c.vocab_size, lengths[] = {64, 65, 128, 200};
    int *tokens = malloc(sizeof(int) * 200);
    for (int i = 0; i < 200; i++) {
        tokens[i] = (i * 131 + 7) % V;
    }
    float *want = malloc(sizeof(float) * 200 * V);
    Inspector *one_at_a_time = new_inspector(&c, 200, true);
    t.state.inspector = one_at_a_time;
    for (int pos = 0; pos < 200; pos++) {
        memcpy(want + (size_t)pos * V, forward(&t, tokens[pos], pos, true), sizeof(float) * V);
    }
    t.state.inspector = NULL;
    Sampler sampler;
    ck_assert_int_eq(build_sampler(&sampler, V, 0.0f, 0, 1.0f, 1), 0);
    for (int k = 0; k < 4; k++) {
        int T = lengths[k];
        // generate: the --logits file holds exactly T rows, equal to the ones above.
        char *rows = NULL;
        size_t size = 0;
        FILE *logits_file = open_memstream(&rows, &size);
        FILE *text = fopen("/dev/null", "w");
        TextOut out = {.file = text, .emit_ids = true};
        GenerationRecord record = {.watch = {true, see_logits},
                                   .logits_file = logits_file,
                                   .n_prompt = T,
                                   .vocab_size = V};
        int stop_token;
        ck_assert_int_ge(
            generate(&t, NULL, &sampler, tokens, T, 1, &out, &record.watch, &stop_token), 0);
        fclose(logits_file), fclose(text);
        ck_assert_uint_eq(size, sizeof(float) * T * V);
        float diff = max_abs_diff((const float *)rows, want, (size_t)T * V);
        ck_assert_msg(diff <= 1e-4f, "generate, %d positions: diff %g", T, diff);
        free(rows);
        // evaluate: the same losses as the rows above give.
        EvalResult r;
        ck_assert_int_eq(evaluate(&t, tokens, T, c.seq_len, &r), 0);
        double nll = 0.0;
        for (int i = 0; i + 1 < T; i++) {
            nll += token_nll(want + (size_t)i * V, V, tokens[i + 1]);
        }
        ck_assert_int_eq(r.n_scored, T - 1);
        ck_assert_double_eq_tol(r.total_nll, nll, 1e-3);
        // The attention record of the block run against the one recorded position by position.
        Inspector *in = record_prompt_attention(&t, tokens, T);
        ck_assert_ptr_nonnull(in);
        size_t R = 200;
        for (int layer = 0; layer < c.n_layers; layer++) {
            for (int head = 0; head < c.n_heads; head++) {
                for (int query = 0; query < T; query++) {
                    const float *a =
                        in->attention + (((size_t)layer * c.n_heads + head) * T + query) * T;
                    const float *b = one_at_a_time->attention +
                                     (((size_t)layer * c.n_heads + head) * R + query) * R;
                    ck_assert_msg(max_abs_diff(a, b, T) <= 1e-5f,
                                  "record, %d positions: layer %d head %d query %d", T, layer, head,
                                  query);
                }
            }
        }
        free_inspector(in);
    }
    free_sampler(&sampler);
    free_inspector(one_at_a_time);
    free(want), free(tokens);
    free_transformer(&t);
    unlink(path);
    free(path);
}
END_TEST

// ----------------------------------------------------------------------------
// Conformance with the golden outputs of an independent implementation (needs ../shared)

static float *read_floats(const char *path, size_t *count) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *data = malloc(size);
    ck_assert_int_eq(fread(data, 1, size, f), size);
    fclose(f);
    *count = size / sizeof(float);
    return data;
}

static int read_ids(const char *path, int *ids, int capacity) {
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    int n = 0;
    while (n < capacity && fscanf(f, "%d", &ids[n]) == 1) {
        n++;
    }
    fclose(f);
    return n;
}

typedef struct {
    const char *name, *model;
    int tokens[16];
    int n_tokens;
    float tolerance;
} GoldenCase;

static const GoldenCase golden_cases[] = {
    {"stories260K",
     SHARED "/models/stories260K.bin",
     {1, 300, 310, 320, 330, 340, 350, 360},
     8,
     5e-4f},
    {"tiny-mha",
     GOLDEN "/tiny-mha.bin",
     {1, 17, 250, 99, 480, 3, 77, 300, 12, 511, 256, 45, 128, 200, 64, 33},
     16,
     1e-4f},
    {"tiny-gqa",
     GOLDEN "/tiny-gqa.bin",
     {1, 17, 250, 99, 480, 3, 77, 300, 12, 511, 256, 45, 128, 200, 64, 33},
     16,
     1e-4f},
    {"tiny-mqa",
     GOLDEN "/tiny-mqa.bin",
     {1, 17, 250, 99, 480, 3, 77, 300, 12, 511, 256, 45, 128, 200, 64, 33},
     16,
     1e-4f},
};

START_TEST(test_golden_logits) {
    const GoldenCase *g = &golden_cases[_i];
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, g->model, KV_F32), 0);
    char path[256];
    snprintf(path, sizeof path, GOLDEN "/%s.logits.f32", g->name);
    size_t count;
    float *want = read_floats(path, &count);
    ck_assert_uint_eq(count, (size_t)g->n_tokens * t.config.vocab_size);
    float worst = 0.0f;
    for (int pos = 0; pos < g->n_tokens; pos++) {
        float *got = forward(&t, g->tokens[pos], pos, true);
        float diff =
            max_abs_diff(got, want + (size_t)pos * t.config.vocab_size, t.config.vocab_size);
        worst = diff > worst ? diff : worst;
    }
    fprintf(stderr, "golden %s: max |logit difference| %.3g (tolerance %.0e)\n", g->name, worst,
            g->tolerance);
    ck_assert_msg(worst <= g->tolerance, "%s: max diff %g", g->name, worst);
    free(want);
    free_transformer(&t);
}
END_TEST

START_TEST(test_golden_greedy) {
    const GoldenCase *g = &golden_cases[_i];
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, g->model, KV_F32), 0);
    char path[256];
    snprintf(path, sizeof path, GOLDEN "/%s.greedy.txt", g->name);
    int want[64];
    ck_assert_int_eq(read_ids(path, want, 64), 64);
    int token = 1;
    for (int step = 0; step < 64; step++) {
        float *logits = forward(&t, token, step, true);
        token = argmax(logits, t.config.vocab_size);
        ck_assert_msg(token == want[step], "%s step %d: %d, golden %d", g->name, step, token,
                      want[step]);
    }
    free_transformer(&t);
}
END_TEST

// Decodes a JSON string literal (the golden TSV's first column) into UTF-8.
static size_t json_unescape(const char *json, char *out) {
    size_t n = 0;
    ck_assert_int_eq(json[0], '"');
    for (const char *p = json + 1; *p != '"'; p++) {
        if (*p != '\\') {
            out[n++] = *p;
            continue;
        }
        p++;
        switch (*p) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case 'u': {
            unsigned code;
            ck_assert_int_eq(sscanf(p + 1, "%4x", &code), 1);
            ck_assert_msg(code < 0x80, "only ASCII \\u escapes are expected");
            out[n++] = (char)code;
            p += 4;
            break;
        }
        default: out[n++] = *p; break;
        }
    }
    out[n] = '\0';
    return n;
}

// A text file, NUL-terminated (malloc'd).
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc(size + 1);
    ck_assert_int_eq(fread(text, 1, size, f), size);
    text[size] = '\0';
    fclose(f);
    return text;
}

// Whether ids (n) stand for exactly the bytes text[0..length), as token_bytes gives them.
static bool decodes_to(const Tokenizer *tok, const int *ids, int n, const char *text,
                       size_t length) {
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        const unsigned char *bytes;
        unsigned char storage;
        size_t k = token_bytes(tok, i > 0 ? ids[i - 1] : -1, ids[i], &bytes, &storage);
        if (at + k > length || memcmp(text + at, bytes, k) != 0) {
            return false;
        }
        at += k;
    }
    return at == length;
}

// GPT-2's vocabulary as llama.cpp ships it (a GGUF file with no tensors): llama.cpp's 46
// tokenizer test strings against Hugging Face's ids, each decoded back to its bytes; invalid
// UTF-8 too; <|endoftext|> ends generation, and no BOS is added.
START_TEST(test_golden_byte_level_vocabulary) {
    const char *vocab = GOLDEN "/tokenizers/ggml-vocab-gpt-2.gguf";
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, vocab, KV_F32), 0);
    ck_assert(t.checkpoint->vocab_only);
    Tokenizer tok;
    ck_assert_int_eq(build_byte_level_tokenizer(&tok, &t.checkpoint->gguf->bpe, vocab, &t.config,
                                                t.checkpoint->gguf->add_bos,
                                                t.checkpoint->gguf->add_eos),
                     0);
    ck_assert(!tok.add_bos && tok.ends_generation[50256]);
    char *inputs = read_text(GOLDEN "/tokenizers/ggml-vocab-gpt-2.gguf.inp");
    FILE *outputs = fopen(GOLDEN "/tokenizers/ggml-vocab-gpt-2.gguf.out", "r");
    ck_assert(inputs != NULL && outputs != NULL);
    const char *separator = "\n__ggml_vocab_test__\n";
    char *text = inputs, line[65536];
    int strings = 0;
    for (char *end; (end = strstr(text, separator)) != NULL; text = end + strlen(separator)) {
        ck_assert_ptr_nonnull(fgets(line, sizeof line, outputs));
        size_t length = (size_t)(end - text);
        int *ids = malloc(sizeof(int) * max_encoded_tokens(length)), want[4096], n_want = 0;
        for (char *p = line, *next; (want[n_want] = (int)strtol(p, &next, 10)), next != p;
             p = next) {
            n_want++;
        }
        int n = encode(&tok, text, length, false, ids);
        ck_assert_msg(n == n_want && memcmp(ids, want, sizeof(int) * n) == 0, "string %d", strings);
        ck_assert_msg(decodes_to(&tok, ids, n, text, length), "string %d decoded", strings);
        free(ids);
        strings++;
    }
    ck_assert_int_eq(strings, 46);
    const char *broken = "a\xff\xfe b\xc3";
    int ids[16], n = encode(&tok, broken, strlen(broken), false, ids);
    ck_assert(n > 0 && decodes_to(&tok, ids, n, broken, strlen(broken)));
    fclose(outputs), free(inputs);
    free_tokenizer(&tok);
    free_transformer(&t);
}
END_TEST

START_TEST(test_golden_tokenizer) {
    unsigned char *data = NULL;
    size_t size;
    ck_assert_int_eq(read_whole_file(SHARED "/tokenizers/llama2.tokenizer.bin", MAX_TOKENIZER_BYTES,
                                     "-z", &data, &size),
                     0);
    Tokenizer t;
    ck_assert_int_eq(build_tokenizer(&t, data, size, "llama2", 32000, 1, 2), 0);
    free(data);
    FILE *f = fopen(GOLDEN "/tokenizer_llama2.tsv", "r");
    ck_assert_ptr_nonnull(f);
    char line[4096], text[4096];
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f)); // header
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        char *tab = strchr(line, '\t');
        ck_assert_ptr_nonnull(tab);
        *tab = '\0';
        size_t length = json_unescape(line, text);
        int want[1024], n_want = 0;
        for (char *p = tab + 1; *p && *p != '\n';) {
            char *end;
            want[n_want++] = (int)strtol(p, &end, 10);
            p = end;
            while (*p == ' ') {
                p++;
            }
        }
        int got[4096 + 2];
        int n_got = encode(&t, text, length, false, got);
        ck_assert_msg(n_got == n_want, "'%s': %d ids, sentencepiece %d", text, n_got, n_want);
        for (int i = 0; i < n_got; i++) {
            ck_assert_msg(got[i] == want[i], "'%s' id %d: %d, sentencepiece %d", text, i, got[i],
                          want[i]);
        }
        // And back: decoding gives the text again.
        int with_bos[4096 + 3];
        with_bos[0] = 1;
        memcpy(with_bos + 1, got, n_got * sizeof(int));
        char *decoded = decode_all(&t, with_bos, n_got + 1);
        ck_assert_str_eq(decoded, text);
        free(decoded);
        rows++;
    }
    fclose(f);
    ck_assert_int_eq(rows, 36);
    free_tokenizer(&t);
}
END_TEST

// ----------------------------------------------------------------------------
// The command line: runs ./run as a user would

typedef struct {
    int status;
    char out[65536];
    char err[4096];
} CliResult;

// GGUF files that llama.cpp's own tools wrote from g-gqa.bin (../shared/golden/gguf/README.md).
static const char *const golden_gguf_types[] = {"f32", "f16", "q8_0"};

// The logits of the 16 golden tokens, one position at a time (the decode path) and as one block
// (the prefill path), against llama2.c's on g-gqa.bin.
START_TEST(test_golden_gguf_logits) {
    const char *type = golden_gguf_types[_i];
    const GoldenCase *g = &golden_cases[2]; // the same 16 tokens
    char path[256];
    snprintf(path, sizeof path, GOLDEN "/gguf/g-gqa.%s.gguf", type);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, path, KV_F32), 0);
    size_t count, V = (size_t)t.config.vocab_size;
    float *want = read_floats(GOLDEN "/gguf/g-gqa.logits.f32", &count);
    ck_assert_uint_eq(count, 16 * V);
    float worst_step = 0.0f, worst_block = 0.0f;
    int same_argmax = 0;
    for (int pos = 0; pos < 16; pos++) {
        float *got = forward(&t, g->tokens[pos], pos, true);
        worst_step = fmaxf(worst_step, max_abs_diff(got, want + pos * V, V));
        same_argmax += argmax(got, (int)V) == argmax(want + pos * V, (int)V);
    }
    float *block = forward_block(&t, g->tokens, 16, 0, LOGITS_ALL);
    worst_block = max_abs_diff(block, want, 16 * V);
    bool quantized = strcmp(type, "q8_0") == 0;
    float tolerance = quantized ? 0.17f : 1e-4f; // Q8_0: the golden README's guide
    fprintf(stderr,
            "golden gguf %s: max |logit difference| %.3g one position at a time, %.3g as a "
            "block; the same argmax at %d of 16 positions (tolerance %.2g)\n",
            type, worst_step, worst_block, same_argmax, tolerance);
    ck_assert_float_le(worst_step, tolerance);
    ck_assert_float_le(worst_block, tolerance);
    ck_assert_int_ge(same_argmax, quantized ? 15 : 16);
    free(want);
    free_transformer(&t);
}
END_TEST

#if HAVE_AVX512
// The eight-row copies are made only where they fit in the room interleave_weights is given:
// llama.cpp's Q4_0 file (Q4_0 matrices and a Q6_K classifier) with room for exactly its copies,
// and with one byte less, where decode reads the file's rows instead, to the same logits but for
// rounding.
START_TEST(test_golden_copies_need_room) {
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, GOLDEN "/arch/s-qbase.Q4_0.gguf", KV_F32), 0);
    KernelScratch *k = t.state.scratch;
    size_t copies = weight_copy_bytes(&t.state), V = (size_t)t.config.vocab_size;
    ck_assert(k->copy_bytes[0] > 0 && k->copy_bytes[3] > 0 && k->copies_left_out == 0);
    size_t memory = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
    size_t taken = t.checkpoint->mapping_size + kv_bytes_at(&t.config, KV_F32, t.config.seq_len) +
                   run_state_bytes(&t.config, run_state_threads(&t.state));
    ck_assert_uint_eq(memory_room(&t), memory - taken);
    float *with = malloc(V * sizeof(float));
    memcpy(with, forward(&t, 1, 0, true), V * sizeof(float));
    free_eight_rows(k);
    ck_assert_int_eq(interleave_weights(&t, copies - 1), 0);
    ck_assert_uint_eq(weight_copy_bytes(&t.state), 0);
    ck_assert_uint_eq(k->copies_left_out, copies);
    ck_assert_ptr_null(eight_rows_of(k, &t.weights.classifier));
    float difference = max_abs_diff(forward(&t, 1, 0, true), with, V);
    ck_assert_msg(difference <= 1e-3f, "logits %g apart with and without the copies", difference);
    free_eight_rows(k);
    ck_assert_int_eq(interleave_weights(&t, copies), 0);
    ck_assert_uint_eq(weight_copy_bytes(&t.state), copies);
    ck_assert_uint_eq(k->copies_left_out, 0);
    ck_assert_float_eq(max_abs_diff(forward(&t, 1, 0, true), with, V), 0.0f);
    free(with);
    free_transformer(&t);
}
END_TEST
#endif

// Greedy decoding from BOS: the F32 and F16 files give g-gqa.bin's ids (the same weights).
START_TEST(test_golden_gguf_greedy) {
    const char *type = golden_gguf_types[_i];
    char path[256];
    snprintf(path, sizeof path, GOLDEN "/gguf/g-gqa.%s.gguf", type);
    Transformer gguf, legacy;
    ck_assert_int_eq(build_transformer(&gguf, path, KV_F32), 0);
    ck_assert_int_eq(build_transformer(&legacy, GOLDEN "/gguf/g-gqa.bin", KV_F32), 0);
    int a = 1, b = 1;
    for (int step = 0; step < 64; step++) {
        a = argmax(forward(&gguf, a, step, true), gguf.config.vocab_size);
        b = argmax(forward(&legacy, b, step, true), legacy.config.vocab_size);
        ck_assert_msg(a == b, "%s step %d: %d, g-gqa.bin %d", type, step, a, b);
    }
    free_transformer(&gguf);
    free_transformer(&legacy);
}
END_TEST

// The vocabulary in the golden GGUF files encodes every text of the llama2 tokenizer golden
// table, and decodes it back, exactly as the Shakespeare tokenizer it was copied from (whose ids
// tests/test_twin.py checks against sentencepiece).
START_TEST(test_golden_gguf_vocabulary) {
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, GOLDEN "/gguf/g-gqa.f32.gguf", KV_F32), 0);
    ck_assert_ptr_nonnull(t.checkpoint->tokenizer_bytes);
    Tokenizer from_gguf, from_file;
    ck_assert_int_eq(build_tokenizer(&from_gguf, t.checkpoint->tokenizer_bytes,
                                     t.checkpoint->tokenizer_size, "gguf", 1024, 1, 2),
                     0);
    unsigned char *data = NULL;
    size_t size;
    ck_assert_int_eq(read_whole_file("tokenizer/shakespeare.tokenizer.bin", MAX_TOKENIZER_BYTES,
                                     "-z", &data, &size),
                     0);
    ck_assert_int_eq(build_tokenizer(&from_file, data, size, "shakespeare", 1024, 1, 2), 0);
    free(data);
    FILE *f = fopen(GOLDEN "/tokenizer_llama2.tsv", "r");
    ck_assert_ptr_nonnull(f);
    char line[4096], text[4096];
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        char *tab = strchr(line, '\t');
        if (rows++ == 0 || tab == NULL) {
            continue; // the header
        }
        *tab = '\0';
        size_t length = json_unescape(line, text);
        int got[4096 + 3], want[4096 + 3];
        int n_got = encode(&from_gguf, text, length, true, got);
        int n_want = encode(&from_file, text, length, true, want);
        ck_assert_int_eq(n_got, n_want);
        ck_assert_int_eq(memcmp(got, want, n_got * sizeof(int)), 0);
        char *decoded = decode_all(&from_gguf, got, n_got);
        ck_assert_str_eq(decoded, text);
        free(decoded);
    }
    fclose(f);
    ck_assert_int_gt(rows, 30);
    free_tokenizer(&from_gguf);
    free_tokenizer(&from_file);
    free_transformer(&t);
}
END_TEST

static char *slurp(const char *path, size_t capacity, char *into) {
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(into, 1, capacity - 1, f) : 0;
    into[n] = '\0';
    if (f) {
        fclose(f);
    }
    return into;
}

// The program under test: ./run, or the build that RUN_BINARY names (a sanitizer build, say).
static const char *run_binary(void) {
    const char *binary = getenv("RUN_BINARY");
    return binary != NULL && binary[0] != '\0' ? binary : "./run";
}

// Runs "./run ARGS" through the shell; collects the exit status, stdout and stderr.
__attribute__((format(printf, 2, 3))) static void run_cli(CliResult *r, const char *format, ...) {
    static char args[8192], command[8704];
    va_list ap;
    va_start(ap, format);
    vsnprintf(args, sizeof args, format, ap);
    va_end(ap);
    char out_path[] = "/tmp/run-cli-out-XXXXXX", err_path[] = "/tmp/run-cli-err-XXXXXX";
    close(mkstemp(out_path));
    close(mkstemp(err_path));
    snprintf(command, sizeof command, "%s %s >%s 2>%s </dev/null", run_binary(), args, out_path,
             err_path);
    int status = system(command);
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    slurp(out_path, sizeof r->out, r->out);
    slurp(err_path, sizeof r->err, r->err);
    unlink(out_path), unlink(err_path);
}

static char *cli_model; // a random GQA model with the test tokenizer, made once for the suite

static void cli_setup(void) {
    Config c = small_config(4, 2, true);
    cli_model = write_test_model(&c, 2024);
}

static void cli_teardown(void) {
    unlink(cli_model);
    free(cli_model);
}

static void expect_cli_error(int status, const char *needle, const char *args) {
    CliResult *r = malloc(sizeof *r);
    run_cli(r, "%s", args);
    ck_assert_msg(r->status == status, "'%s': exit %d, expected %d (stderr: %s)", args, r->status,
                  status, r->err);
    ck_assert_msg(strstr(r->err, needle) != NULL, "'%s': stderr '%s' lacks '%s'", args, r->err,
                  needle);
    ck_assert_msg(strncmp(r->err, "run: ", 5) == 0 &&
                      strchr(r->err, '\n') == r->err + strlen(r->err) - 1,
                  "'%s': expected one 'run: ' line, got '%s'", args, r->err);
    free(r);
}

START_TEST(test_cli_usage_errors) {
    char args[512];
    struct {
        const char *flags, *needle;
    } cases[] = {
        {"-t -1", "--temperature"},
        {"-t abc", "--temperature"},
        {"-t nan", "--temperature"},
        {"--top-p 0", "--top-p"},
        {"--top-p 1.5", "--top-p"},
        {"-k -1", "--top-k"},
        {"--threads 0", "--threads"},
        {"--threads -2", "--threads"},
        {"-n -1", "--steps"},
        {"-n 12x", "--steps"},
        {"--bogus", "'--bogus' is an unknown option"},
        {"-x", "'-x' is an unknown option"},
        {"--quiet=3", "'--quiet' takes no value"},
        {"-qy", "'-y' is an unknown option"},
        {"-s -3", "--seed"},
        {"--tokens '1 99999'", "outside the vocabulary"},
        {"--tokens 'a b'", "--tokens"},
        {"--tokens 1 -p hi", "give one of --prompt, --file and --tokens"},
        {"extra", "unexpected argument"},
        {"--kv-cache f8", "--kv-cache expects f32, f16 or q8, got 'f8'"},
        {"--kv-cache", "needs a value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(args, sizeof args, "%s %s", cli_model, cases[i].flags);
        expect_cli_error(2, cases[i].needle, args);
    }
    snprintf(args, sizeof args, "%s -p", cli_model);
    expect_cli_error(2, "needs a value", args);
    expect_cli_error(2, "missing MODEL", "");
}
END_TEST

START_TEST(test_cli_data_errors) {
    char args[512];
    expect_cli_error(1, "cannot open", "/nonexistent/model.bin");
    expect_cli_error(1, "is a directory", "/tmp");
    char *empty = write_temp_file("", 0, ".bin");
    expect_cli_error(1, "empty", empty);
    unlink(empty), free(empty);
    // seq_len is 24 and "hello " is one token per 6 bytes at best: 60 of them cannot fit.
    char prompt[400] = "";
    for (int i = 0; i < 60; i++) {
        strcat(prompt, "hello ");
    }
    snprintf(args, sizeof args, "%s -p '%s'", cli_model, prompt);
    expect_cli_error(1, "longer than the context", args);
    snprintf(args, sizeof args,
             "%s -p 'hello hello hello hello hello hello hello hello hello "
             "hello hello hello hello hello hello hello hello hello hello "
             "hello hello hello hello hello hello'",
             cli_model);
    expect_cli_error(1, "longer than the context", args);
    char *logits = write_temp_file("keep", 4, ".f32");
    snprintf(args, sizeof args, "%s --tokens 1 --logits %s", cli_model, logits);
    expect_cli_error(2, "exists", args);
    char kept[8];
    ck_assert_str_eq(slurp(logits, sizeof kept, kept), "keep"); // untouched
    unlink(logits), free(logits);
}
END_TEST

// Every kind of bad checkpoint through the command line: one line naming the file and what is
// wrong, exit status 1.
START_TEST(test_cli_bad_files) {
    struct {
        size_t offset;
        uint32_t value;
        const char *needle;
    } fields[] = {
        {0, 0x4d514746, "not a checkpoint"},
        {4, 7, "format version is 7"},
        {8, 0, "dim is 0"},
        {12, 0xFFFFFFFFu, "hidden_dim is 4294967295"},
        {16, 0, "n_layers is 0"},
        {20, 0, "n_heads is 0"},
        {24, 3, "n_kv_heads is 3, which does not divide n_heads 4"},
        {28, 4, "head_dim is 4, but dim 32 / n_heads 4 needs 8"},
        {32, 0, "vocab_size is 0"},
        {36, 0x7FFFFFFF, "seq_len is 2147483647"},
        {48, 8, "flags are 0x8"},
    };
    char args[512];
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        Bytes file = valid_model_bytes();
        memcpy(file.data + fields[i].offset, &fields[i].value, 4);
        char *path = write_temp_file(file.data, file.size, ".bin");
        snprintf(args, sizeof args, "%s -p hello", path);
        expect_cli_error(1, fields[i].needle, args);
        ck_assert_ptr_nonnull(strstr(args, path));
        unlink(path), free(path), free(file.data);
    }
    // Truncated inside the header, inside the tokenizer, inside the weights.
    Bytes file = valid_model_bytes();
    size_t cuts[] = {100, GQAM_HEADER_BYTES + 1000, file.size - 5};
    const char *needles[] = {"shorter than the 256-byte header", "past the end", "truncated"};
    for (int i = 0; i < 3; i++) {
        char *path = write_temp_file(file.data, cuts[i], ".bin");
        snprintf(args, sizeof args, "%s -p hello", path);
        expect_cli_error(1, needles[i], args);
        unlink(path), free(path);
    }
    free(file.data);
    // llama2.c files: a negative field, and heads that do not divide.
    int32_t legacy[7] = {64, 172, -5, 8, 4, 512, 512};
    char *path = write_temp_file(legacy, sizeof legacy, ".bin");
    snprintf(args, sizeof args, "%s --tokens 1 --emit-ids", path);
    expect_cli_error(1, "n_layers is -5", args);
    unlink(path), free(path);
    int32_t odd[7] = {64, 172, 5, 8, 3, 512, 512};
    path = write_temp_file(odd, sizeof odd, ".bin");
    snprintf(args, sizeof args, "%s --tokens 1 --emit-ids", path);
    expect_cli_error(1, "n_kv_heads is 3, which does not divide n_heads 8", args);
    unlink(path), free(path);
}
END_TEST

START_TEST(test_cli_generates_text) {
    CliResult *r = malloc(sizeof *r);
    run_cli(r, "%s -p hello -n 8 -t 0", cli_model);
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(strncmp(r->out, "hello", 5) == 0, "stdout '%s'", r->out);
    ck_assert_ptr_nonnull(strstr(r->err, "prompt 2 tokens"));
    ck_assert_ptr_nonnull(
        strstr(r->err, "kv cache f32, 6144 bytes")); // 2 * L 2 * KVH 2 * hd 8 * 4 B * S 24
    ck_assert_ptr_nonnull(strstr(r->err, "decode"));
    // Greedy text equals greedy ids decoded: same tokens either way.
    CliResult *ids = malloc(sizeof *ids);
    run_cli(ids, "%s -p hello -n 8 -t 0 --emit-ids -q", cli_model);
    ck_assert_int_eq(ids->status, 0);
    ck_assert_str_eq(ids->err, "");
    int n_lines = 0;
    for (char *p = ids->out; *p; p++) {
        n_lines += *p == '\n';
    }
    ck_assert_int_ge(n_lines, 1);
    ck_assert_int_le(n_lines, 8);
    free(r), free(ids);
}
END_TEST

START_TEST(test_cli_edge_prompts_and_steps) {
    CliResult *r = malloc(sizeof *r);
    run_cli(r, "%s -p '' -n 3 -t 0 -q", cli_model); // empty prompt: start from BOS
    ck_assert_int_eq(r->status, 0);
    run_cli(r, "%s -p hello -n 0", cli_model); // no steps: process the prompt only
    ck_assert_int_eq(r->status, 0);
    ck_assert_str_eq(r->out, "hello\n");
    ck_assert_ptr_nonnull(strstr(r->err, "generated 0"));
    for (int f = 0; f < 3; f++) { // every KV cache format generates, and says which it is
        const char *format = kv_format_name((KvFormat)f);
        run_cli(r, "%s -p hello -n 8 -t 0 --kv-cache %s", cli_model, format);
        ck_assert_int_eq(r->status, 0);
        char needle[32];
        snprintf(needle, sizeof needle, "kv cache %s,", format);
        ck_assert_msg(strstr(r->err, needle) != NULL, "stderr '%s'", r->err);
        run_cli(r, "%s --info --kv-cache %s", cli_model, format);
        ck_assert_int_eq(r->status, 0);
        snprintf(needle, sizeof needle, "tokens), %s\n", format);
        ck_assert_msg(strstr(r->out, needle) != NULL, "stdout '%s'", r->out);
        ck_assert_ptr_nonnull(strstr(r->out, "kv pages     24 positions")); // S < KV_PAGE
    }
    run_cli(r, "%s -p hello -n 1000 -t 0", cli_model); // past the context: clamped, noted
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->err, "clamped to 22"));
    run_cli(r, "%s -p \"$(printf 'a\\377\\376b')\" -n 2 -t 0 -q", cli_model); // invalid UTF-8
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(strncmp(r->out,
                          "a\xEF\xBF\xBD\xEF\xBF\xBD"
                          "b",
                          8) == 0,
                  "stdout '%s'", r->out);
    char long_prompt[700] = "";
    for (int i = 0; i < 100; i++) {
        strcat(long_prompt, "hello ");
    }
    run_cli(r, "%s --encode -p '%s'", cli_model, long_prompt); // longer than the context: fine
    ck_assert_int_eq(r->status, 0);
    run_cli(r, "%s --encode -p 'abc c'", cli_model);
    ck_assert_int_eq(r->status, 0);
    char want[64];
    snprintf(want, sizeof want, "%d %d %d\n", test_piece_id(" "), test_piece_id("abc"),
             test_piece_id(" c"));
    ck_assert_str_eq(r->out, want);
    free(r);
}
END_TEST

START_TEST(test_cli_seeded_sampling_reproducible) {
    CliResult *a = malloc(sizeof *a), *b = malloc(sizeof *b), *c = malloc(sizeof *c);
    run_cli(a, "%s --tokens 1 -n 20 -t 1.5 -s 7 --emit-ids -q", cli_model);
    run_cli(b, "%s --tokens 1 -n 20 -t 1.5 -s 7 --emit-ids -q", cli_model);
    run_cli(c, "%s --tokens 1 -n 20 -t 1.5 -s 8 --emit-ids -q", cli_model);
    ck_assert_int_eq(a->status, 0);
    ck_assert_str_eq(a->out, b->out);
    ck_assert_str_ne(a->out, c->out);
    free(a), free(b), free(c);
}
END_TEST

START_TEST(test_cli_threads_bit_identical) {
    const char *models[] = {cli_model, GOLDEN "/tiny-gqa.bin"};
    int n_models = access(GOLDEN, R_OK) == 0 ? 2 : 1;
    for (int m = 0; m < n_models; m++) {
        CliResult *one = malloc(sizeof *one), *two = malloc(sizeof *two);
        char path1[] = "/tmp/run-logits1-XXXXXX", path2[] = "/tmp/run-logits2-XXXXXX";
        close(mkstemp(path1)), close(mkstemp(path2));
        run_cli(one,
                "%s --tokens '1 5 9 270' -n 16 -t 0 --emit-ids -q --threads 1 --logits %s --force",
                models[m], path1);
        run_cli(two,
                "%s --tokens '1 5 9 270' -n 16 -t 0 --emit-ids -q --threads 2 --logits %s --force",
                models[m], path2);
        ck_assert_int_eq(one->status, 0);
        ck_assert_int_eq(two->status, 0);
        ck_assert_str_eq(one->out, two->out);
        size_t n1, n2;
        float *l1 = read_floats(path1, &n1), *l2 = read_floats(path2, &n2);
        ck_assert_uint_eq(n1, n2);
        ck_assert_uint_gt(n1, 0);
        ck_assert_int_eq(memcmp(l1, l2, n1 * sizeof(float)), 0);
        unlink(path1), unlink(path2);
        free(l1), free(l2), free(one), free(two);
    }
}
END_TEST

START_TEST(test_cli_eval_and_inspection) {
    CliResult *r = malloc(sizeof *r);
    run_cli(r, "--help");
    ck_assert_int_eq(r->status, 0);
    const char *flags[] = {"--eval FILE",   "--stride N", "--attn L[:H]", "--attn-dump FILE",
                           "--explain POS", "--encode",   "--force"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        ck_assert_msg(strstr(r->out, flags[i]) != NULL, "--help lacks %s", flags[i]);
    }
    char *text = write_temp_file("hello abc hello\nab c", 20, ".txt");
    run_cli(r, "%s --eval %s", cli_model, text);
    ck_assert_msg(r->status == 0, "stderr %s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "20 bytes, 20 characters"));
    ck_assert_ptr_nonnull(strstr(r->out, "nats/token, perplexity"));
    // The reported loss equals the hand computation on the same tokens.
    Tokenizer tok;
    build_test_tokenizer(&tok);
    int tokens[64];
    int n = encode(&tok, "hello abc hello\nab c", 20, false, tokens);
    Transformer t;
    ck_assert_int_eq(build_transformer(&t, cli_model, KV_F32), 0);
    long n_scored;
    double total = naive_windowed_nll(&t.config, &t.weights, tokens, n, 24, &n_scored);
    double reported = 0.0;
    ck_assert_int_eq(sscanf(strstr(r->out, "loss") + 4, "%lf", &reported), 1);
    ck_assert_double_eq_tol(reported, total / n_scored, 1e-3);
    double per_char = 0.0;
    ck_assert_int_eq(sscanf(strstr(r->out, "per char") + 8, "%lf", &per_char), 1);
    // per character of the scored tokens: the first token's characters (its piece, ASCII here,
    // without the dummy prefix's space) are not scored
    const char *first = tok.pieces[tokens[0]];
    double first_chars = (double)strlen(first) - (first[0] == ' ');
    ck_assert_double_eq_tol(per_char, total / (20.0 - first_chars), 1e-3);
    free_transformer(&t);
    free_tokenizer(&tok);

    run_cli(r, "%s --eval %s --stride 100", cli_model, text);
    ck_assert_int_eq(r->status, 2);
    ck_assert_ptr_nonnull(strstr(r->err, "--stride 100"));
    run_cli(r, "%s --eval %s -p hi", cli_model, text);
    ck_assert_int_eq(r->status, 2);
    unlink(text), free(text);

    run_cli(r, "%s -p 'hello abc' --attn 1:3", cli_model);
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "layer 1, head 3: reads kv head 1"));
    ck_assert_ptr_null(strstr(r->out, "head 2:"));
    run_cli(r, "%s -p 'hello abc' --attn 1", cli_model);
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "layer 1, head 0"));
    ck_assert_ptr_nonnull(strstr(r->out, "layer 1, head 3"));
    run_cli(r, "%s -p 'hello abc' --attn 1:4", cli_model);
    ck_assert_int_eq(r->status, 2);
    run_cli(r, "%s -p 'hello abc' --attn 2", cli_model);
    ck_assert_int_eq(r->status, 2);
    ck_assert_ptr_nonnull(strstr(r->err, "layers 0..1"));
    run_cli(r, "%s -p 'hello abc' --attn 1:x", cli_model);
    ck_assert_int_eq(r->status, 2);
    run_cli(r, "%s -p 'hello abc' --explain 2 --attn 0:3", cli_model);
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "Self-attention of"));
    ck_assert_ptr_nonnull(strstr(r->out, "reads kv head 1, shared by query heads 2-3 (GQA)"));
    run_cli(r, "%s -p 'hello abc' --explain 9", cli_model);
    ck_assert_int_eq(r->status, 2);
    ck_assert_msg(strstr(r->err, "positions 0..3") != NULL, "stderr: %s", r->err);

    char dump[] = "/tmp/run-attn-XXXXXX";
    close(mkstemp(dump));
    run_cli(r, "%s -p 'hello abc' --attn-dump %s", cli_model, dump);
    ck_assert_int_eq(r->status, 2); // exists: not overwritten
    run_cli(r, "%s -p 'hello abc' --attn-dump %s --force", cli_model, dump);
    ck_assert_int_eq(r->status, 0);
    char json[8192];
    slurp(dump, sizeof json, json);
    ck_assert_ptr_nonnull(strstr(json, "\"n_kv_heads\": 2"));
    ck_assert_ptr_nonnull(strstr(json, "\"labels\": [\"<s>\", \"▁hello\", \"▁\", \"abc\"]"));
    unlink(dump);
    free(r);
}
END_TEST

START_TEST(test_cli_golden_greedy_and_logits) {
    const GoldenCase *g = &golden_cases[_i];
    CliResult *r = malloc(sizeof *r);
    run_cli(r, "%s --tokens 1 -n 64 -t 0 --emit-ids -q", g->model);
    ck_assert_int_eq(r->status, 0);
    char path[256], want[4096];
    snprintf(path, sizeof path, GOLDEN "/%s.greedy.txt", g->name);
    ck_assert_str_eq(r->out, slurp(path, sizeof want, want));

    char tokens[256] = "", logits_path[] = "/tmp/run-golden-XXXXXX";
    for (int i = 0; i < g->n_tokens; i++) {
        snprintf(tokens + strlen(tokens), sizeof tokens - strlen(tokens), "%d ", g->tokens[i]);
    }
    close(mkstemp(logits_path));
    run_cli(r, "%s --tokens '%s' -n 0 -q --emit-ids --logits %s --force", g->model, tokens,
            logits_path);
    ck_assert_int_eq(r->status, 0);
    size_t n_got, n_want;
    float *got = read_floats(logits_path, &n_got);
    snprintf(path, sizeof path, GOLDEN "/%s.logits.f32", g->name);
    float *golden = read_floats(path, &n_want);
    ck_assert_uint_eq(n_got, n_want);
    ck_assert_float_le(max_abs_diff(got, golden, n_got), g->tolerance);
    unlink(logits_path);
    free(got), free(golden), free(r);
}
END_TEST

START_TEST(test_cli_legacy_needs_tokenizer) {
    CliResult *r = malloc(sizeof *r);
    expect_cli_error(2, "has no tokenizer", GOLDEN "/tiny-gqa.bin -p hello");
    run_cli(r, "%s -z %s -p 'Once upon' --encode", SHARED "/models/stories260K.bin",
            SHARED "/tokenizers/llama2.tokenizer.bin");
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(
        strstr(r->err, "tokenizer has 32000 pieces, the model's vocab_size is 512"));
    run_cli(r, "%s --info", SHARED "/models/stories260K.bin");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(
        strstr(r->out, "GQA: 8 query heads share 4 key/value heads, group size 2"));
    ck_assert_ptr_nonnull(strstr(r->out, "1280 bytes per token, 655360 bytes at full context"));
    ck_assert_ptr_nonnull(strstr(r->out, "parameters   260032"));
    free(r);
}
END_TEST

// ----------------------------------------------------------------------------
// GGUF files written by tests/gguf_writer.py (an independent writer, in Python) from a random
// GQAM model: each variant loads with the logits the GQAM file gives through the other loader (and
// the same bits at 1 and 2 threads), or is refused with one line and exit status 1.

static char *gguf_source;                        // the GQAM model the variants come from
static char gguf_dir[] = "/tmp/run-gguf-XXXXXX"; // the variants, NAME.gguf
static bool gguf_written;

static void gguf_setup(void) {
    Config c = small_config(4, 2, true);
    c.dim = 64, c.hidden_dim = 96, c.head_dim = 16; // rows of whole Q8_0 blocks
    gguf_source = write_test_model(&c, 99);
    char command[512];
    if (mkdtemp(gguf_dir) == NULL) {
        return;
    }
    snprintf(command, sizeof command,
             "/usr/bin/python3 tests/gguf_writer.py variants %s %s >/dev/null", gguf_source,
             gguf_dir);
    gguf_written = system(command) == 0;
    if (!gguf_written) {
        printf("SKIPPED: GGUF file tests (tests/gguf_writer.py failed: is python3-numpy "
               "installed?)\n");
    }
}

static void gguf_teardown(void) {
    char command[512];
    snprintf(command, sizeof command, "rm -rf %s", gguf_dir);
    ck_assert_int_eq(system(command), 0);
    unlink(gguf_source);
    free(gguf_source);
}

#define GGUF_TOKENS "1 5 9 270 3 44"

// The logits ./run writes for GGUF_TOKENS (6 rows of V), or NULL when it fails.
static float *cli_logits(const char *model, const char *extra, size_t *count) {
    CliResult *r = malloc(sizeof *r);
    char path[] = "/tmp/run-gguf-logits-XXXXXX";
    close(mkstemp(path));
    run_cli(r, "%s --tokens '" GGUF_TOKENS "' -n 0 -q --emit-ids --logits %s --force %s", model,
            path, extra);
    ck_assert_msg(r->status == 0, "%s: exit %d: %s", model, r->status, r->err);
    float *logits = read_floats(path, count);
    unlink(path);
    free(r);
    return logits;
}

START_TEST(test_gguf_variants_load) {
    if (!gguf_written) {
        return;
    }
    size_t n_want, n_got;
    float *want = cli_logits(gguf_source, "", &n_want);
    size_t V = TEST_VOCAB;
    ck_assert_uint_eq(n_want, 6 * V);
    struct {
        const char *name;
        float tolerance;
        bool reversed; // untied: output.weight is the embedding's rows in reverse order
    } cases[] = {
        {"f32", 0, false},
        {"output-copy", 0, false},
        {"align64", 0, false},
        {"align48", 0, false},
        {"align32-explicit", 0, false},
        {"version2", 0, false},
        {"no-vocab", 0, false},
        {"no-optional-keys", 1e-5f, false},
        {"untied", 1e-5f, true},
        {"f16", 0.02f, false},
        {"q8_0", 0.2f, false},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s.gguf", gguf_dir, cases[k].name);
        float *one_thread = NULL;
        for (int threads = 1; threads <= 2; threads++) {
            char extra[32];
            snprintf(extra, sizeof extra, "--threads %d", threads);
            float *got = cli_logits(path, extra, &n_got);
            ck_assert_uint_eq(n_got, n_want);
            float worst = 0.0f;
            for (size_t i = 0; i < n_got; i++) {
                size_t row = i / V, column = i % V;
                float expected = want[cases[k].reversed ? row * V + (V - 1 - column) : i];
                worst = fmaxf(worst, fabsf(got[i] - expected));
            }
            ck_assert_msg(worst <= cases[k].tolerance, "%s, %d threads: max |diff| %g", path,
                          threads, worst);
            if (threads == 1) {
                fprintf(stderr, "gguf %s: max |logit difference| from the GQAM file %.3g\n",
                        cases[k].name, worst);
                one_thread = got;
                continue;
            }
            // Each output is summed by one thread in a fixed order: bit-identical.
            ck_assert_msg(memcmp(got, one_thread, n_got * sizeof(float)) == 0,
                          "%s: 2 threads differ from 1", path);
            free(got);
        }
        free(one_thread);
    }
    free(want);
}
END_TEST

START_TEST(test_gguf_variants_refused) {
    if (!gguf_written) {
        return;
    }
    const char *types[] = {"Q8_1", "IQ4_NL", "BF16"};
    char args[512], needle[256], name[32];
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        snprintf(name, sizeof name, "%s", types[i]);
        for (char *p = name; *p; p++) {
            *p = (char)tolower((unsigned char)*p);
        }
        snprintf(args, sizeof args, "%s/type-%s.gguf -p hello", gguf_dir, name);
        snprintf(needle, sizeof needle,
                 "type-%s.gguf: tensor 'blk.0.ffn_gate.weight' is %s; this program reads F32, F16, "
                 "Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and Q2_K to Q6_K tensors",
                 name, types[i]);
        expect_cli_error(1, needle, args);
    }
    struct {
        const char *name, *needle;
    } cases[] = {
        {"truncated", "tensor 'blk.1.ffn_up.weight' needs"},
        {"truncated-header", "past the end of the 20-byte file (truncated?)"},
        {"array-length-lie", "key 'tokenizer.ggml.scores' claims 1099511627776 f32 elements"},
        {"string-length-lie", "general.name at byte"},
        {"tokenizer-gpt2", "a \"gpt2\" vocabulary needs tokenizer.ggml.merges"},
        {"arch-falcon",
         "general.architecture is \"falcon\"; this program runs llama, qwen2, gemma, "
         "gemma2 and gpt2 models"},
        {"bad-magic", "not a checkpoint"},
        {"missing-tensor", "tensor 'blk.1.attn_v.weight' is missing; a llama model needs it"},
        {"nan-weight",
         "tensor 'blk.1.ffn_up.weight', value 3 is nan; every weight must be a finite number"},
        {"wrong-shape",
         "tensor 'blk.0.attn_k.weight' has shape [64, 64], the config needs [64, 32]"},
        {"offset-past-end", "at offset 92233720368"},
        {"huge-dims", "more values than memory can address"},
        {"rope-dim-mismatch", "llama.rope.dimension_count is 8, but"},
        {"tensor-count-lie", "4611686018427387904 tensors, more than"},
        {"no-head-count-kv", "(llama.attention.head_count_kv is absent, so it is head_count)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(args, sizeof args, "%s/%s.gguf --tokens 1 --emit-ids", gguf_dir, cases[i].name);
        expect_cli_error(1, cases[i].needle, args);
    }
    // Without a vocabulary the model runs on ids alone, or takes a tokenizer with -z.
    snprintf(args, sizeof args, "%s/no-vocab.gguf -p hello", gguf_dir);
    expect_cli_error(2, "has no tokenizer", args);
}
END_TEST

START_TEST(test_gguf_info_and_text) {
    if (!gguf_written) {
        return;
    }
    CliResult *r = malloc(sizeof *r), *gqam = malloc(sizeof *gqam);
    const char *lines[][2] = {
        {"f16", "weights      F16 9"}, // then F32 for the norms, a few percent
        {"q8_0", "weights      Q8_0 9"},
        {"f32", "weights      F32 100%: "},
    };
    for (int i = 0; i < 3; i++) {
        run_cli(r, "%s/%s.gguf --info", gguf_dir, lines[i][0]);
        ck_assert_int_eq(r->status, 0);
        ck_assert_ptr_nonnull(strstr(r->out, "(GGUF v3, architecture llama)"));
        ck_assert_ptr_nonnull(strstr(r->out, lines[i][1]));
        ck_assert_ptr_nonnull(strstr(r->out, "GQA: 4 query heads share 2 key/value heads"));
        ck_assert_ptr_nonnull(strstr(r->out, "\nmemory       "));
    }
    run_cli(r, "%s/version2.gguf --info", gguf_dir);
    ck_assert_ptr_nonnull(strstr(r->out, "(GGUF v2, architecture llama)"));
    // The vocabulary the writer stored encodes and decodes text as the GQAM file's tokenizer does.
    run_cli(r, "%s/f32.gguf -p 'hello abc hello' -n 6 -t 0 -q", gguf_dir);
    run_cli(gqam, "%s -p 'hello abc hello' -n 6 -t 0 -q", gguf_source);
    ck_assert_int_eq(r->status, 0);
    ck_assert_str_eq(r->out, gqam->out);
    run_cli(r, "%s/q8_0.gguf -p 'hello abc h\xC3\xA9' --encode", gguf_dir);
    run_cli(gqam, "%s -p 'hello abc h\xC3\xA9' --encode", gguf_source);
    ck_assert_str_eq(r->out, gqam->out);
    free(r), free(gqam);
}
END_TEST

// ----------------------------------------------------------------------------

// The command line's rough edges.
START_TEST(test_cli_hostile_flags_and_texts) {
    char args[1024];
    snprintf(args, sizeof args, "%s -p hello --attn 0:-1", cli_model);
    expect_cli_error(2, "--attn expects LAYER or LAYER:HEAD", args);
    snprintf(args, sizeof args, "%s -i hello", cli_model);
    expect_cli_error(2, "the prompt is -p here", args);
    // A long prompt reports the token count that --encode gives.
    char prompt[700] = "";
    for (int i = 0; i < 100; i++) {
        strcat(prompt, "hello ");
    }
    CliResult *r = malloc(sizeof *r);
    run_cli(r, "%s --encode -p '%s'", cli_model, prompt);
    int count = 0;
    for (char *p = strtok(r->out, " \n"); p != NULL; p = strtok(NULL, " \n")) {
        count++;
    }
    char needle[128];
    snprintf(needle, sizeof needle, "the prompt is %d tokens, longer than the context", count + 1);
    snprintf(args, sizeof args, "%s -p '%s'", cli_model, prompt);
    expect_cli_error(1, needle, args);
    // The context's edge: seq_len ids fit, one more does not.
    char ids_text[256] = "";
    for (int i = 0; i < 24; i++) {
        strcat(ids_text, "5 ");
    }
    run_cli(r, "%s --tokens '%s' -n 0 --emit-ids", cli_model, ids_text);
    ck_assert_msg(r->status == 0, "24 ids: %s", r->err);
    strcat(ids_text, "5");
    snprintf(args, sizeof args, "%s --tokens '%s' -n 0 --emit-ids", cli_model, ids_text);
    expect_cli_error(1, "the prompt is 25 tokens, longer than the context of 24 tokens", args);
    // --eval on text with no valid character scores bytes, and never prints inf or nan.
    unsigned char bad[1000];
    memset(bad, 0x80, sizeof bad);
    char *text = write_temp_file(bad, sizeof bad, ".txt");
    run_cli(r, "%s --eval %s", cli_model, text);
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(strstr(r->out, "1000 characters") != NULL, "%s", r->out);
    ck_assert_msg(strstr(r->out, "inf") == NULL && strstr(r->out, "nan") == NULL, "%s", r->out);
    unlink(text), free(text);
    // --tokens with text output echoes the prompt first, as -p does.
    run_cli(r, "%s -p hello -n 0", cli_model);
    ck_assert_int_eq(r->status, 0);
    char echoed[256];
    snprintf(echoed, sizeof echoed, "%.200s", r->out);
    run_cli(r, "%s --encode -p hello", cli_model);
    char ids[128];
    snprintf(ids, sizeof ids, "1 %.100s", r->out);
    ids[strcspn(ids, "\n")] = '\0';
    run_cli(r, "%s --tokens '%s' -n 0", cli_model, ids);
    ck_assert_int_eq(r->status, 0);
    ck_assert_str_eq(r->out, echoed);
    // The summary: greedy runs print no seed, one token is "1 token", -n 0 shows no decode speed.
    run_cli(r, "%s --tokens 1 -n 0 -t 0", cli_model);
    ck_assert_msg(strstr(r->err, "prompt 1 token, generated 0;") != NULL, "%s", r->err);
    ck_assert_msg(strstr(r->err, "decode") == NULL && strstr(r->err, "seed") == NULL &&
                      strstr(r->err, "greedy") != NULL,
                  "%s", r->err);
    run_cli(r, "%s --tokens 1 -n 3 -t 0.8 -s 5", cli_model);
    ck_assert_msg(strstr(r->err, "decode ") != NULL && strstr(r->err, "seed 5") != NULL, "%s",
                  r->err);
    free(r);
}
END_TEST

// --explain works the same head as --attn shows: for every head of a GQA model (so every query
// head of a group reads the shared kv head), the weights it prints equal the row of the
// --attn table for that position.
START_TEST(test_cli_explain_matches_attention_table) {
    CliResult *table = malloc(sizeof *table), *explain = malloc(sizeof *explain);
    for (int head = 0; head < 4; head++) {
        run_cli(table, "%s -p 'hello hello' --attn 1:%d", cli_model, head);
        run_cli(explain, "%s -p 'hello hello' --attn 1:%d --explain 2", cli_model, head);
        ck_assert_int_eq(table->status, 0);
        ck_assert_int_eq(explain->status, 0);
        // The table's row for query 2: "  2 LABEL  w0  w1  w2  ·".
        char *row = strstr(table->out, "\n  2 ");
        ck_assert_ptr_nonnull(row);
        float want[3];
        char label[64];
        ck_assert_int_eq(sscanf(row, " 2 %63s %f %f %f", label, &want[0], &want[1], &want[2]), 4);
        const char *p = explain->out;
        for (int key = 0; key < 3; key++) {
            p = strstr(p, "\": weight ");
            ck_assert_ptr_nonnull(p);
            p += strlen("\": weight ");
            float got = strtof(p, NULL);
            ck_assert_msg(fabsf(got - want[key]) <= 0.006f,
                          "head %d key %d: explain %.4f, table %.2f", head, key, got, want[key]);
        }
    }
    free(table), free(explain);
}
END_TEST

// Generation that stops at EOS says so: the model's greedy first token is made its EOS.
START_TEST(test_cli_summary_names_the_stop) {
    Bytes file = valid_model_bytes();
    char *path = write_temp_file(file.data, file.size, ".bin");
    CliResult *r = malloc(sizeof *r);
    run_cli(r, "%s --tokens 1 -n 1 -t 0 --emit-ids", path);
    ck_assert_int_eq(r->status, 0);
    uint32_t first = (uint32_t)atoi(r->out);
    unlink(path), free(path);
    memcpy(file.data + 56, &first, 4); // eos_id
    path = write_temp_file(file.data, file.size, ".bin");
    run_cli(r, "%s --tokens 1 -n 5 -t 0 --emit-ids", path);
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(strstr(r->err, "generated 0; stopped at EOS;") != NULL, "%s", r->err);
    unlink(path), free(path), free(r), free(file.data);
}
END_TEST

// A prompt longer than a block with --logits: sampling starts from the last row of the last
// block, so the ids are those of the same run without --logits; and the summary times the
// prompt and the generated tokens apart (both rates above zero).
START_TEST(test_cli_logits_keep_the_ids_and_the_summary_times_both) {
    Config c = small_config(4, 2, true);
    c.seq_len = 200;
    char *path = write_test_model(&c, 77);
    static char tokens[2048];
    int n = 0;
    for (int i = 0; i < 150; i++) {
        n += snprintf(tokens + n, sizeof tokens - n, "%d ", 3 + i * 7 % (TEST_VOCAB - 3));
    }
    CliResult *plain = malloc(sizeof *plain), *logits = malloc(sizeof *logits);
    char logits_path[] = "/tmp/run-cli-logits-XXXXXX";
    close(mkstemp(logits_path));
    // sampled, not greedy: a random model's most likely token is often the same at every position
    run_cli(plain, "%s --tokens '%s' -n 12 -t 1 -s 5 --emit-ids --threads 1", path, tokens);
    run_cli(logits, "%s --tokens '%s' -n 12 -t 1 -s 5 --emit-ids --threads 1 --logits %s --force",
            path, tokens, logits_path);
    ck_assert_int_eq(plain->status, 0);
    ck_assert_int_eq(logits->status, 0);
    ck_assert_msg(strcmp(plain->out, logits->out) == 0, "ids differ with --logits:\n%s\n%s",
                  plain->out, logits->out);
    int generated = 0;
    double prefill = 0.0, decode = 0.0;
    const char *summary = strstr(plain->err, "generated ");
    ck_assert_msg(summary != NULL && sscanf(summary, "generated %d;", &generated) == 1, "%s",
                  plain->err);
    const char *rates = strstr(plain->err, "prefill ");
    ck_assert_msg(rates != NULL &&
                      sscanf(rates, "prefill %lf tok/s, decode %lf tok/s", &prefill, &decode) == 2,
                  "%s", plain->err);
    ck_assert_msg(generated > 0 && prefill > 0.0 && decode > 0.0, "%s", plain->err);
    unlink(logits_path), unlink(path), free(path), free(plain), free(logits);
}
END_TEST

// --attn on a model whose attention record cannot be allocated: one line, exit 1, no crash.
START_TEST(test_cli_attention_record_out_of_memory) {
    Config c = small_config(32, 32, true);
    c.dim = 64, c.head_dim = 2, c.hidden_dim = 8, c.n_layers = 512, c.seq_len = 1024;
    char *path = write_test_model(&c, 3);
    static char args[8192];
    int n = snprintf(args, sizeof args, "%s --emit-ids --attn 0:0 --tokens '", path);
    for (int i = 0; i < 1000; i++) {
        n += snprintf(args + n, sizeof args - n, "%d ", 3 + i % 200);
    }
    snprintf(args + n, sizeof args - n, "'");
    expect_cli_error(1, "out of memory allocating", args);
    unlink(path), free(path);
}
END_TEST

#if HAVE_AVX512
// The eight-row records' map keys: one per address, bits 31 and 63 always 0, which stb_ds's hash
// of 8-byte keys needs (UBSan, in make test-asan, reports a key byte of 128 or more at bytes 3
// and 7); every key put in the map is found again, with its value.
START_TEST(test_eight_rows_keys) {
    EightRows *map = NULL;
    uint64_t seed = 5, keys[64];
    for (int i = 0; i < 64; i++) {
        uintptr_t address = (uintptr_t)(lcg_next(&seed) << 32 | lcg_next(&seed)) >> 8;
        address |= i % 2 ? 0x80000080u : 0; // bits a plain key would put at the bytes' tops
        keys[i] = eight_rows_key((const unsigned char *)address);
        ck_assert_uint_eq(keys[i] & 0x8000000080000000ull, 0);
        ck_assert_uint_ne(keys[i], eight_rows_key((const unsigned char *)(address ^ 0x80000000u)));
        hmput(map, keys[i], (unsigned char *)address);
    }
    for (int i = 0; i < 64; i++) {
        ptrdiff_t slot = hmgeti(map, keys[i]);
        ck_assert_int_ge(slot, 0);
        ck_assert_uint_eq(eight_rows_key(map[slot].value), keys[i]);
    }
    hmfree(map);
}
END_TEST
#endif

static Suite *unit_suite(void) {
    Suite *s = suite_create("unit");
    TCase *kernels = tcase_create("kernels");
    tcase_add_test(kernels, test_matmul_matches_naive);
#ifndef RUN_PLAIN
    tcase_add_test(kernels, test_matmul_shared_matches_single);
#endif
#ifndef RUN_PLAIN
    tcase_add_test(kernels, test_row_tile_kernels_match_portable);
#endif
#ifndef RUN_PLAIN
    tcase_add_test(kernels, test_matvec_matches_plain);
#endif
#ifndef RUN_PLAIN
    tcase_add_test(kernels, test_swiglu_matches_silu);
#endif
#ifndef RUN_PLAIN
    tcase_add_test(kernels, test_quantize_row_matches_portable);
#endif
    tcase_add_test(kernels, test_quantize_row_bounds);
    tcase_add_test(kernels, test_matmul_q8_matches_naive);
#ifndef RUN_PLAIN
    tcase_add_test(kernels, test_q8_row_tile_matches_portable);
#endif
    tcase_add_test(kernels, test_half_to_float_every_value);
    tcase_add_test(kernels, test_f16_kernels_match_naive);
    tcase_add_test(kernels, test_q8_0_kernels_match_naive);
    tcase_add_test(kernels, test_block_kernels_match_dequantized);
#if HAVE_AVX512
    tcase_add_test(kernels, test_eight_rows_match_dequantized);
    tcase_add_test(kernels, test_eight_rows_keys);
#endif
    tcase_add_test(kernels, test_decode_row_matches_naive);
    tcase_add_test(kernels, test_rmsnorm_matches_naive);
    tcase_add_test(kernels, test_softmax_masked_and_stable);
    tcase_add_test(kernels, test_rope_matches_complex_rotation);
    tcase_add_test(kernels, test_rope_relative_position);
    tcase_add_test(kernels, test_attention_mha);
    tcase_add_test(kernels, test_attention_gqa);
    tcase_add_test(kernels, test_attention_mqa);
#ifndef RUN_PLAIN
    tcase_add_test(kernels, test_attention_tile_matches_plain_with_causal_cut);
#endif
    tcase_add_test(kernels, test_thread_pace_follows_the_faster_count);
    tcase_add_test(kernels, test_starting_threads_from_running_tasks);
    tcase_add_test(kernels, test_attention_threads_bit_identical);
#ifndef RUN_PLAIN
    tcase_add_test(kernels, test_online_softmax_step_matches_attend);
#endif
    tcase_add_test(kernels, test_attention_kernels_match_portable);
    tcase_add_test(kernels, test_kv_cache_pages_and_formats);
    tcase_add_test(kernels, test_f16_conversion);
    suite_add_tcase(s, kernels);

    TCase *model = tcase_create("model");
    tcase_set_timeout(model, 60);
    tcase_add_test(model, test_generation_stops_at_end_of_turn);
    tcase_add_test(model, test_incremental_equals_full_mha);
    tcase_add_test(model, test_incremental_equals_full_gqa);
    tcase_add_test(model, test_incremental_equals_full_mqa);
    tcase_add_test(model, test_gqa_equals_mha_with_duplicated_heads);
    tcase_add_test(model, test_kv_cache_size_and_info_numbers);
    tcase_add_test(model, test_int8_checkpoint_close_to_fp32);
    tcase_add_test(model, test_block_prefill_equals_incremental);
    tcase_add_test(model, test_run_state_is_aligned);
    tcase_add_test(model, test_rope_theta_from_the_header);
    tcase_add_test(model, test_kv_formats_close_to_f32);
    suite_add_tcase(s, model);

    TCase *tokenizer = tcase_create("tokenizer");
    tcase_add_test(tokenizer, test_byte_stand_in_alphabet);
    tcase_add_test(tokenizer, test_byte_level_merge_order);
    tcase_add_test(tokenizer, test_encode_by_hand);
    tcase_add_test(tokenizer, test_encode_matches_naive_bpe);
    tcase_add_test(tokenizer, test_encode_empty_and_edges);
    tcase_add_test(tokenizer, test_unknown_bytes_without_byte_pieces);
    tcase_add_test(tokenizer, test_round_trip);
    tcase_add_test(tokenizer, test_decode_stream_utf8);
    suite_add_tcase(s, tokenizer);

    TCase *sampler = tcase_create("sampler");
    tcase_add_test(sampler, test_top_k_and_top_p_keep_the_right_set);
    tcase_add_test(sampler, test_sampler_seeded_reproducible);
    tcase_add_test(sampler, test_sampler_prefilter_keeps_the_same_set);
    tcase_add_test(sampler, test_sampler_follows_distribution);
    tcase_add_test(sampler, test_greedy_takes_first_maximum);
    tcase_add_test(sampler, test_sampler_is_total);
    tcase_add_test(sampler, test_temperature_changes_the_distribution);
    tcase_add_test(sampler, test_top_p_exact_boundary);
    suite_add_tcase(s, sampler);

    TCase *loader = tcase_create("loader");
    tcase_add_test(loader, test_loader_accepts_valid);
    tcase_add_test(loader, test_parse_options_fresh_state);
    tcase_add_test(loader, test_loader_rejects_truncation);
    tcase_add_test(loader, test_loader_rejects_bad_header_fields);
    tcase_add_test(loader, test_loader_big_configs);
    tcase_add_test(loader, test_loader_rejects_empty_missing_directory);
    tcase_add_test(loader, test_legacy_format_same_logits);
    tcase_add_test(loader, test_tokenizer_rejections);
    tcase_add_test(loader, test_loader_rejects_nonfinite_weights);
    tcase_add_test(loader, test_loader_rejects_reserved_header_bytes);
    suite_add_tcase(s, loader);

    TCase *inspection = tcase_create("inspection");
    tcase_set_timeout(inspection, 60);
    tcase_add_test(inspection, test_eval_matches_hand_computed_nll);
    tcase_add_test(inspection, test_attention_record_matches_kernel);
    tcase_add_test(inspection, test_json_strings_are_valid_utf8);
    tcase_add_test(inspection, test_prompt_blocks_match_token_by_token);
    tcase_add_test(inspection, test_attention_record_across_pages);
    suite_add_tcase(s, inspection);
    return s;
}

static Suite *cli_suite(bool with_shared) {
    Suite *s = suite_create("cli");
    TCase *cli = tcase_create("cli");
    tcase_set_timeout(cli, 60);
    tcase_add_unchecked_fixture(cli, cli_setup, cli_teardown);
    tcase_add_test(cli, test_cli_usage_errors);
    tcase_add_test(cli, test_cli_logits_keep_the_ids_and_the_summary_times_both);
    tcase_add_test(cli, test_cli_data_errors);
    tcase_add_test(cli, test_cli_bad_files);
    tcase_add_test(cli, test_cli_generates_text);
    tcase_add_test(cli, test_cli_edge_prompts_and_steps);
    tcase_add_test(cli, test_cli_seeded_sampling_reproducible);
    tcase_add_test(cli, test_cli_threads_bit_identical);
    tcase_add_test(cli, test_cli_eval_and_inspection);
    tcase_add_test(cli, test_cli_hostile_flags_and_texts);
    tcase_add_test(cli, test_cli_summary_names_the_stop);
    tcase_add_test(cli, test_cli_explain_matches_attention_table);
    tcase_add_test(cli, test_cli_attention_record_out_of_memory);
    if (with_shared) {
        tcase_add_loop_test(cli, test_cli_golden_greedy_and_logits, 0, 4);
        tcase_add_test(cli, test_cli_legacy_needs_tokenizer);
    }
    suite_add_tcase(s, cli);

    TCase *gguf = tcase_create("gguf");
    tcase_set_timeout(gguf, 120);
    tcase_add_unchecked_fixture(gguf, gguf_setup, gguf_teardown);
    tcase_add_test(gguf, test_gguf_variants_load);
    tcase_add_test(gguf, test_gguf_variants_refused);
    tcase_add_test(gguf, test_gguf_info_and_text);
    suite_add_tcase(s, gguf);
    return s;
}

static Suite *conformance_suite(void) {
    Suite *s = suite_create("conformance");
    TCase *golden = tcase_create("golden");
    tcase_set_timeout(golden, 60);
    tcase_add_loop_test(golden, test_golden_logits, 0, 4);
    tcase_add_loop_test(golden, test_golden_greedy, 0, 4);
    tcase_add_test(golden, test_golden_tokenizer);
    tcase_add_test(golden, test_golden_byte_level_vocabulary);
    tcase_add_loop_test(golden, test_golden_gguf_logits, 0, 3);
    tcase_add_loop_test(golden, test_golden_gguf_greedy, 0, 2);
    tcase_add_test(golden, test_golden_gguf_vocabulary);
#if HAVE_AVX512
    tcase_add_test(golden, test_golden_copies_need_room);
#endif
    suite_add_tcase(s, golden);
    return s;
}

int main(void) {
    bool with_shared = access(GOLDEN "/README.md", R_OK) == 0;
    if (access(run_binary(), X_OK) != 0) {
        fprintf(stderr,
                "tests: %s is missing; run the tests from the repository root after "
                "building (make test does both)\n",
                run_binary());
        return 2;
    }
    SRunner *runner = srunner_create(unit_suite());
    srunner_add_suite(runner, cli_suite(with_shared));
    if (with_shared) {
        srunner_add_suite(runner, conformance_suite());
    } else {
        printf("SKIPPED: conformance suite (" SHARED " not found: golden outputs unavailable)\n");
        printf("SKIPPED: golden cases of the cli suite (" SHARED " not found)\n");
    }
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? 0 : 1;
}
