/* Shared benchmark helpers: timing, medians, the machine's own ceilings (FP32
 * FMA throughput from a register-only loop, streaming-read bandwidth) and a
 * tiny JSON-lines writer. Benchmarks print one JSON object per line on stdout
 * and a readable table on stderr. */
#ifndef PKV_BENCH_H
#define PKV_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Monotonic seconds. */
double bench_now(void);
/* Median of v[0..n) (sorts v). */
double bench_median(double *v, int n);
/* Online CPUs. */
int bench_cpus(void);
/* CPU model string from /proc/cpuinfo ("unknown" elsewhere). */
const char *bench_cpu_model(void);

/* FP32 FMA GFLOP/s of threads threads running a register-only FMA loop with the
 * widest vectors the CPU has (AVX-512, AVX2+FMA, else scalar), median of reps.
 * *isa (may be NULL) names the vector width used. */
double bench_fma_gflops(int threads, int reps, const char **isa);
/* Streaming-read GB/s over a buffer of bytes, threads threads, median of reps. */
double bench_read_gbs(size_t bytes, int threads, int reps);

/* JSON lines: json_begin(f); json_str(f, "k", "v"); json_num(f, "k", 1.5); json_end(f). */
typedef struct bench_json {
    FILE *f;
    int n;
} bench_json;
void json_begin(bench_json *j, FILE *f);
void json_str(bench_json *j, const char *key, const char *val);
void json_num(bench_json *j, const char *key, double val);
void json_int(bench_json *j, const char *key, long long val);
void json_end(bench_json *j);

/* Register-only FMA kernels per ISA (fma_avx512.c, fma_avx2.c): iters loop
 * iterations; returns the FLOPs done (and a value that keeps the loop alive). */
double bench_fma_avx512(long iters, float *sink);
double bench_fma_avx2(long iters, float *sink);

#endif
