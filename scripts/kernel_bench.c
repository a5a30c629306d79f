// kernel_bench: the read rate of run.c's one-position products, pattern by pattern, on this host.
//
// Decoding streams every weight once per token, so what a product kernel reads per second is
// what decoding can reach. Hosts differ in which access pattern they serve fastest (the four-rows
// fp32 kernel with prefetch gained 14% on one Intel Xeon and lost 45% on an AMD EPYC), so this
// prints, for each pattern and thread count, the weights' bytes read per second, beside a plain
// sequential read of the same bytes:
//   read          a sum over the matrix's bytes, one contiguous share per thread (the ceiling)
//   fp32 plain    Part 1's dot for each row, the loop every fast kernel must beat
//   fp32 rows1    matvec_f32_rows1: one row at a time, one sequential stream per thread
//   fp32 rows4    matvec_f32_rows4: four rows at a time with software prefetch
//   Q8_0, Q4_0 ... Q6_K   block_rows_fast over blocks of each type, x quantized once; and again
//                         asking for the weights PREFETCH_BYTES ahead (", prefetch"), the
//                         choice choose_prefetch makes at load
//   Q4_0 eight rows       eight_rows_fast, eight_rows_k4 and eight_rows_k6 over the same rows
//   Q4_K eight rows       copied eight at a time, the kernels decoding runs for Q4_0, Q4_K,
//   Q5_K eight rows       Q5_K and Q6_K (AVX-512 builds)
//   Q6_K eight rows
// Each matrix is 256 MiB or more (far past any cache), rows of 2048 values; the best of 5 passes.
//
//   gcc -O3 -march=native -fopenmp -isystem /usr/include/stb -o bench-cache/kernel_bench
//       scripts/kernel_bench.c -lpcre2-8 -lm
//   bench-cache/kernel_bench [THREADS...]        (default: 1 and every CPU)
//
// One Markdown table on stdout. make bench runs it (scripts/bench.sh).
#define RUN_NO_MAIN
#include "../run.c"

#define COLS   2048
#define PASSES 5

typedef struct {
    const char *name;
    Matrix w;
    unsigned char *data; // the matrix's bytes
    size_t bytes;
} Pattern;

// A matrix of at least 256 MiB of the given encoding, its bytes random and its fp16 scales small
// and finite, so that every kernel computes with real numbers.
static Pattern make_pattern(const char *name, uint32_t ggml_type, bool f32) {
    Pattern p = {.name = name};
    size_t row_bytes = f32 ? COLS * sizeof(float)
                       : ggml_type == GGML_TYPE_Q8_0
                           ? COLS / Q8_0_BLOCK * Q8_0_BYTES
                           : block_row_bytes(block_type_of(ggml_type), COLS);
    size_t rows = ((size_t)256 << 20) / row_bytes + 1;
    p.bytes = rows * row_bytes;
    unsigned char *data = aligned_alloc(64, (p.bytes + 63) / 64 * 64);
    if (data == NULL) {
        fprintf(stderr, "kernel_bench: out of memory\n");
        exit(1);
    }
    uint64_t state = 1;
    for (size_t i = 0; i < p.bytes; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        data[i] = (unsigned char)(state >> 56);
    }
    for (size_t i = 0; f32 && i < p.bytes / sizeof(float); i++) {      // normal numbers in (-1, 1):
        float value = (float)data[i * 4] / 128.0f - 1.0f + 1.0f / 256; // no subnormal's slow path
        memcpy(data + i * 4, &value, sizeof value);
    }
    p.data = data;
    p.w = (Matrix){.rows = rows, .cols = COLS};
    if (f32) {
        p.w.f32 = (const float *)data;
    } else if (ggml_type == GGML_TYPE_Q8_0) {
        for (size_t b = 0; b < p.bytes / Q8_0_BYTES; b++) {
            data[b * Q8_0_BYTES] = 0x00, data[b * Q8_0_BYTES + 1] = 0x20; // d = 2^-7
        }
        p.w.q8_0 = data, p.w.group = Q8_0_BLOCK;
    } else {
        const BlockType *type = block_type_of(ggml_type);
        // Every fp16 field in range: the high bytes of the types' d, dmin or m (bytes 0-1 and
        // 2-3, or 80-83, 108-109, 208-209) with an exponent of at most 15.
        static const int high_bytes[] = {1, 3, 81, 83, 109, 209};
        for (size_t b = 0; b < p.bytes / type->bytes; b++) {
            for (size_t i = 0; i < sizeof high_bytes / sizeof high_bytes[0]; i++) {
                if (high_bytes[i] < type->bytes) {
                    data[b * type->bytes + high_bytes[i]] &= 0x3f;
                }
            }
        }
        p.w.blocks = data, p.w.block_type = type;
    }
    return p;
}

// One pass of the pattern over the whole matrix on the current threads; seconds.
static double one_pass(const Pattern *p, RunState *s, const float *x, float *out) {
    double start = seconds_now();
    if (p->name[0] == 'r') { // read: the ceiling, a sum over the bytes
        uint64_t sum = 0;    // integer adds, vectorized: the loop waits on memory only
        const uint64_t *words = (const uint64_t *)p->data;
        size_t n = p->bytes / 8;
#pragma omp parallel for reduction(+ : sum) schedule(static)
        for (size_t i = 0; i < n; i++) {
            sum += words[i];
        }
        out[0] = (float)(sum & 0xff);
    } else if (strcmp(p->name, "fp32 plain") == 0) {
        const Matrix *w = &p->w;
#pragma omp parallel for schedule(static)
        for (size_t row = 0; row < w->rows; row++) {
            out[row] = dot(w->f32 + row * w->cols, x, w->cols);
        }
    } else {
        const Matrix *ws[] = {&p->w};
        float *outs[] = {out};
        matmul_vector(outs, x, ws, 1, s);
    }
    return seconds_now() - start;
}

// Copies p's rows eight at a time for the eight-row kernels; false where this build has no such
// kernel, or the copy cannot be made.
static bool interleave_pattern(const Pattern *p, KernelScratch *k) {
#if HAVE_AVX512
    return copy_eight_rows(k, &p->w) == 0 && eight_rows_of(k, &p->w) != NULL;
#else
    (void)p, (void)k;
    return false;
#endif
}

int main(int argc, char **argv) {
    int counts[8] = {1, omp_get_num_procs()}, n_counts = counts[1] > 1 ? 2 : 1;
    if (argc > 1) {
        n_counts = argc - 1 < 8 ? argc - 1 : 8;
        for (int i = 0; i < n_counts; i++) {
            counts[i] = atoi(argv[i + 1]) > 0 ? atoi(argv[i + 1]) : 1;
        }
    }
    const char *names[] = {"fp32 plain",
                           "fp32 rows1",
                           "fp32 rows4",
                           "Q8_0",
                           "Q4_0",
                           "Q4_0 eight rows",
                           "Q4_1",
                           "Q5_0",
                           "Q5_1",
                           "Q2_K",
                           "Q3_K",
                           "Q4_K",
                           "Q4_K eight rows",
                           "Q5_K",
                           "Q5_K eight rows",
                           "Q6_K",
                           "Q6_K eight rows"};
    uint32_t types[] = {0,
                        0,
                        0,
                        GGML_TYPE_Q8_0,
                        GGML_TYPE_Q4_0,
                        GGML_TYPE_Q4_0,
                        GGML_TYPE_Q4_1,
                        GGML_TYPE_Q5_0,
                        GGML_TYPE_Q5_1,
                        GGML_TYPE_Q2_K,
                        GGML_TYPE_Q3_K,
                        GGML_TYPE_Q4_K,
                        GGML_TYPE_Q4_K,
                        GGML_TYPE_Q5_K,
                        GGML_TYPE_Q5_K,
                        GGML_TYPE_Q6_K,
                        GGML_TYPE_Q6_K};
    int n_patterns = (int)(sizeof types / sizeof types[0]);
    Config c = {.dim = COLS,
                .hidden_dim = COLS,
                .n_layers = 1,
                .n_heads = 1,
                .n_kv_heads = 1,
                .head_dim = 2,
                .vocab_size = 2,
                .seq_len = 1,
                .query_scale = 1.0f};
    RunState s;
    if (build_run_state(&s, &c, KV_F32)) {
        return 1;
    }
    float *x = calloc(COLS, sizeof(float)), *out = NULL;
    for (int i = 0; i < COLS; i++) {
        x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    }
    printf("| pattern | threads | GB/s of weights | of a plain read |\n|---|---|---|---|\n");
    for (int k = 0; k < n_patterns; k++) {
        Pattern p = make_pattern(names[k], types[k], k < 3);
        if (strstr(names[k], "eight rows") != NULL && !interleave_pattern(&p, s.scratch)) {
            free(p.data);
            continue; // no such kernel in this build
        }
        Pattern read = p;
        read.name = "read";
        s.scratch->matvec = k == 2 ? matvec_f32_rows4 : matvec_f32_rows1;
        out = realloc(out, p.w.rows * sizeof(float));
        for (int t = 0; t < n_counts; t++) {
            for (int prefetch = 0; prefetch < (k < 3 ? 1 : 2); prefetch++) {
                use_threads(counts[t]);
                s.scratch->prefetch = prefetch == 1;
                double best = INFINITY, best_read = INFINITY;
                for (int pass = 0; pass < PASSES; pass++) {
                    double a = one_pass(&p, &s, x, out), b = one_pass(&read, &s, x, out);
                    best = a < best ? a : best;
                    best_read = b < best_read ? b : best_read;
                }
                printf("| %s%s | %d | %.1f | %.2f |\n", names[k], prefetch ? ", prefetch" : "",
                       counts[t], p.bytes / best / 1e9, best_read / best);
            }
        }
        free_eight_rows(s.scratch);
        free(p.data);
    }
    free(x), free(out);
    free_run_state(&s);
    return 0;
}
