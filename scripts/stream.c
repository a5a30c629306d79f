// stream: memory read bandwidth, the ceiling on decoding speed.
//
// Decoding one token reads every weight once, so tokens/s can be no higher than read bandwidth
// divided by the bytes of weights. This probe measures that bandwidth the way run.c reads: a
// read-only pass over a float32 array far larger than any cache (a sum, so nothing is written
// back), split statically across OpenMP threads. Like McCalpin's STREAM it keeps the best of
// several passes; unlike it, it only reads. Two patterns, one and four sequential streams per
// thread, over transparent huge pages where the kernel grants them; the bound is the faster.
//
//   gcc -O3 -march=native -fopenmp -o bench-cache/stream scripts/stream.c
//   bench-cache/stream [--mib N] [--reps N] [THREADS...]
//
// --mib: array size in MiB (default 1024; at least 64). --reps: timed passes per thread count
// (default 10). THREADS: the thread counts to measure (default: 1 and every CPU OpenMP sees).
// One machine-readable line per thread count goes to stdout, GB being 10^9 bytes:
//
//   read_bandwidth_gbs threads=2 value=67.9
//
// Lines starting with '#' describe the run.
#include <omp.h>
#include <stdio.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COUNTS 64

#define BLOCK 64 // floats per block: four 64-byte cache lines

// Sums n floats (a multiple of BLOCK) with `threads` threads, each taking one contiguous run of
// blocks. BLOCK independent accumulators per thread (several vector registers) keep the adds
// off the critical path, so the loop waits on memory only; a single running sum would cap it
// near 20 GB/s even in L1.
static double read_pass(const float *a, size_t n, int threads) {
    double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        float acc[BLOCK] = {0};
#pragma omp for schedule(static)
        for (size_t b = 0; b < n / BLOCK; b++) {
            const float *block = a + b * BLOCK;
#pragma omp simd
            for (int j = 0; j < BLOCK; j++) {
                acc[j] += block[j];
            }
        }
        for (int j = 0; j < BLOCK; j++) {
            total += acc[j];
        }
    }
    return total;
}

// The same sum with each thread's share cut into `streams` parts read side by side: some hosts
// serve several sequential streams per core faster than one, so the bound is the faster of the
// two patterns.
static double read_pass_streams(const float *a, size_t n, int threads, int streams) {
    double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        float acc[BLOCK] = {0};
        size_t blocks = n / BLOCK, t = (size_t)omp_get_thread_num(), nt = (size_t)threads;
        size_t first = blocks * t / nt, count = blocks * (t + 1) / nt - first;
        size_t part = count / (size_t)streams;
        for (size_t b = 0; b < part; b++) {
            for (int k = 0; k < streams; k++) {
                const float *block = a + (first + (size_t)k * part + b) * BLOCK;
#pragma omp simd
                for (int j = 0; j < BLOCK; j++) {
                    acc[j] += block[j];
                }
            }
        }
        for (size_t b = first + part * (size_t)streams; b < first + count; b++) {
#pragma omp simd
            for (int j = 0; j < BLOCK; j++) {
                acc[j] += a[b * BLOCK + j];
            }
        }
        for (int j = 0; j < BLOCK; j++) {
            total += acc[j];
        }
    }
    return total;
}

// The best GB/s of reps passes of one pattern (streams 1: read_pass).
static double best_rate(const float *a, size_t n, int threads, int streams, long reps,
                        double *checksum) {
    double best = 0.0;
    for (long r = 0; r <= reps; r++) { // the first pass warms up: page tables, thread start-up
        double start = omp_get_wtime();
        *checksum +=
            streams == 1 ? read_pass(a, n, threads) : read_pass_streams(a, n, threads, streams);
        double gbs = (double)(n * sizeof(float)) / (omp_get_wtime() - start) / 1e9;
        best = r > 0 && gbs > best ? gbs : best;
    }
    return best;
}

static int parse_positive(const char *text, const char *what, long *out) {
    char *end;
    long v = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v <= 0) {
        fprintf(stderr, "stream: %s expects a positive integer, got '%s'\n", what, text);
        return -1;
    }
    *out = v;
    return 0;
}

int main(int argc, char **argv) {
    long mib = 1024, reps = 10;
    int counts[MAX_COUNTS], n_counts = 0;
    for (int i = 1; i < argc; i++) {
        long v;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("Usage: stream [--mib N] [--reps N] [THREADS...]\n"
                   "Best read bandwidth over N passes of a read-only sum, per thread count.\n");
            return 0;
        } else if ((strcmp(argv[i], "--mib") == 0 || strcmp(argv[i], "--reps") == 0)) {
            if (i + 1 >= argc) {
                fprintf(stderr, "stream: %s needs a value\n", argv[i]);
                return 2;
            }
            if (parse_positive(argv[i + 1], argv[i], argv[i][2] == 'm' ? &mib : &reps)) {
                return 2;
            }
            i++;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "stream: unknown option '%s' (try --help)\n", argv[i]);
            return 2;
        } else if (parse_positive(argv[i], "a thread count", &v)) {
            return 2;
        } else if (n_counts == MAX_COUNTS) {
            fprintf(stderr, "stream: at most %d thread counts\n", MAX_COUNTS);
            return 2;
        } else {
            counts[n_counts++] = (int)v;
        }
    }
    if (mib < 64) {
        fprintf(stderr, "stream: --mib %ld is too small to leave the caches; give 64 or more\n",
                mib);
        return 2;
    }
    int max_threads = omp_get_num_procs();
    if (n_counts == 0) {
        counts[n_counts++] = 1;
        if (max_threads > 1) {
            counts[n_counts++] = max_threads;
        }
    }
    int init_threads = max_threads;
    for (int c = 0; c < n_counts; c++) {
        init_threads = counts[c] > init_threads ? counts[c] : init_threads;
    }

    size_t bytes = (size_t)mib << 20, n = bytes / sizeof(float);
    // 2 MiB-aligned, with transparent huge pages asked for: fewer TLB misses on a long stream,
    // as a mapped model may get them too.
    float *a = aligned_alloc((size_t)2 << 20, bytes);
    if (a == NULL) {
        fprintf(stderr, "stream: cannot allocate %ld MiB; try a smaller --mib\n", mib);
        return 1;
    }
    madvise(a, bytes, MADV_HUGEPAGE); // advice only: without it the probe still runs
    // First touch in parallel, with the static schedule of blocks the passes use, so each page sits
    // near the thread that will read it on a multi-socket machine.
#pragma omp parallel for num_threads(init_threads) schedule(static)
    for (size_t b = 0; b < n / BLOCK; b++) {
        for (size_t i = b * BLOCK; i < (b + 1) * BLOCK; i++) {
            a[i] = (float)(i & 1023) * 0x1p-10f;
        }
    }

    printf("# stream: %ld MiB float32 array, read-only sum, best of %ld passes, %d CPUs\n", mib,
           reps, max_threads);
    double checksum = 0.0;
    for (int c = 0; c < n_counts; c++) {
        int threads = counts[c];
        double one = best_rate(a, n, threads, 1, reps, &checksum);
        double four = best_rate(a, n, threads, 4, reps, &checksum);
        printf("# threads=%d: one stream per thread %.1f GB/s, four streams per thread %.1f\n",
               threads, one, four);
        printf("read_bandwidth_gbs threads=%d value=%.1f\n", threads, one > four ? one : four);
        fflush(stdout);
    }
    // The sums are printed so the compiler cannot drop the passes that produce them.
    printf("# checksum %.6e\n", checksum);
    free(a);
    return 0;
}
