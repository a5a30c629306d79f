// peak: the machine's fused multiply-add throughput, the ceiling on prefill speed.
//
// Prefill runs a block of positions past each weight, so it is bound by arithmetic, not memory:
// every weight costs one multiply-add per position. This probe measures how many float32
// multiply-adds per second the cores can retire: each thread keeps ACCUMULATORS independent
// chains of vector FMAs in registers (enough to cover the FMA latency several times over), on
// the widest vectors the compiler targets with -march=native. Like scripts/stream.c it keeps
// the best of several passes and prints one machine-readable line per thread count, counting a
// multiply-add as two floating-point operations:
//
//   gcc -O3 -march=native -fopenmp -o bench-cache/peak scripts/peak.c
//   bench-cache/peak [--reps N] [THREADS...]
//   fma_peak_gflops threads=2 value=215.3
//
// THREADS: the thread counts to measure (default: 1 and every CPU OpenMP sees).
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COUNTS 64
#define ACCUMULATORS 12
#define ITERATIONS 20000000L

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif

typedef float vector __attribute__((vector_size(LANES * sizeof(float))));

// ITERATIONS rounds of ACCUMULATORS vector FMAs per thread; returns the seconds taken. The
// result is folded into *sink so that the compiler cannot drop the loop.
static double fma_pass(int threads, float *sink) {
    double start = omp_get_wtime();
    float total = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        vector acc[ACCUMULATORS], x, y;
        for (int i = 0; i < LANES; i++) {
            x[i] = 1.0f + 1e-7f * i;
            y[i] = 0.999999f;
        }
        for (int a = 0; a < ACCUMULATORS; a++) {
            acc[a] = x * (float)(a + omp_get_thread_num());
        }
        for (long it = 0; it < ITERATIONS; it++) {
#pragma GCC unroll 12
            for (int a = 0; a < ACCUMULATORS; a++) {
                acc[a] = acc[a] * y + x; // one FMA per lane
            }
        }
        for (int a = 0; a < ACCUMULATORS; a++) {
            for (int i = 0; i < LANES; i++) {
                total += acc[a][i];
            }
        }
    }
    *sink += total;
    return omp_get_wtime() - start;
}

int main(int argc, char **argv) {
    int reps = 3, counts[MAX_COUNTS], n_counts = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (atoi(argv[i]) > 0 && n_counts < MAX_COUNTS) {
            counts[n_counts++] = atoi(argv[i]);
        } else {
            fprintf(stderr, "peak: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (reps < 1) {
        fprintf(stderr, "peak: --reps must be at least 1\n");
        return 2;
    }
    if (n_counts == 0) {
        counts[n_counts++] = 1;
        if (omp_get_num_procs() > 1) {
            counts[n_counts++] = omp_get_num_procs();
        }
    }
    printf("# %d-lane float32 vectors, %d independent FMA chains per thread, best of %d\n", LANES,
           ACCUMULATORS, reps);
    float sink = 0.0f;
    for (int c = 0; c < n_counts; c++) {
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            double seconds = fma_pass(counts[c], &sink);
            best = seconds < best ? seconds : best;
        }
        double flops = 2.0 * LANES * ACCUMULATORS * (double)ITERATIONS * counts[c];
        printf("fma_peak_gflops threads=%d value=%.1f\n", counts[c], flops / best / 1e9);
    }
    return sink == 12345.0f; // never true; keeps the sums alive
}
