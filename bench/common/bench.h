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
/* Evicts [p, p + n) from every cache level (clflushopt where the CPU has it,
 * else clflush; nothing on other architectures), then fences. */
void bench_flush(const void *p, size_t n);
/* Online CPUs. */
int bench_cpus(void);
/* CPU model string from /proc/cpuinfo ("unknown" elsewhere). */
const char *bench_cpu_model(void);

/* The machine's compute ceilings, one per instruction kind the kernels run:
 * register-only loops with 16 independent chains written out (fma_avx512.c,
 * fma_avx2.c). */
typedef enum bench_kind {
    BENCH_SCALAR = 0, /* scalar float multiply-add (the portable kernels) */
    BENCH_FMA256,     /* FP32 FMA on 256-bit vectors */
    BENCH_FMA512,     /* FP32 FMA on 512-bit vectors */
    BENCH_DPBF16,     /* vdpbf16ps (AVX-512 BF16) */
    BENCH_AMX_BF16,   /* AMX tdpbf16ps */
    BENCH_KINDS
} bench_kind;
/* "scalar", "fma256", "fma512", "vdpbf16ps", "amx-tdpbf16ps". */
const char *bench_kind_name(int kind);
/* 1 if this CPU runs kind's loop. */
int bench_kind_available(int kind);
/* GFLOP/s of threads threads each running kind's loop for ~0.1 s: the best of
 * reps runs (the ceiling; a loaded machine only lowers it), *median (may be
 * NULL) the median. 0 when the kind is unavailable. */
double bench_ceiling(int kind, int threads, int reps, double *median);

/* The reference streaming read of this machine: 0 a plain read (the hardware
 * prefetchers alone), 1 one with software prefetch 4 KiB ahead, whichever has
 * the higher median over 9 alternated runs of each (64 MiB, threads threads;
 * chosen on the first call, kept for the process). */
int bench_read_reference(int threads);
/* Streaming-read GB/s over a buffer of bytes, threads threads: median of reps
 * runs of the reference read (*best, may be NULL: the best run of either kind). */
double bench_read_gbs(size_t bytes, int threads, int reps, double *best);
/* GB/s of a parallel sequential read of p[0..bytes) by threads threads,
 * flushed from the caches first (so from DRAM): the streaming bandwidth of the
 * very bytes a kernel reads, measured under the same conditions; one run of the
 * reference read (not the better of two runs, which would select noise). */
double bench_read_buf_gbs(const void *p, size_t bytes, int threads);

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

/* The loops (fma_avx512.c, fma_avx2.c): iters iterations; return the FLOPs. */
double bench_fma512(long iters, float *sink);
double bench_fma256(long iters, float *sink);     /* EVEX: needs AVX-512VL */
double bench_fma256_vex(long iters, float *sink); /* AVX2 + FMA */
double bench_dpbf16(long iters, float *sink);
double bench_amx_bf16(long iters, float *sink);

/* Prints "prog: what: pkv_strerror(st)" on stderr and exits 1 (prog: argv[0]'s
 * base name, set by bench_set_name; "bench" before). */
void bench_die(const char *what, int st);
/* Unlinks the files of dir (not its subdirectories' contents). */
void bench_rm_files(const char *dir);
/* Evicts dir's files from the page cache (root's drop_caches, else fdatasync +
 * posix_fadvise(DONTNEED) per file); returns how: "drop_caches" or "fadvise_dontneed". */
const char *bench_evict_files(const char *dir);
void bench_set_name(const char *argv0);
/* Runs a library call; any status but PKV_OK ends the benchmark (bench_die). */
#define BENCH_OK(call)                              \
    do {                                            \
        int bench_st_ = (call);                     \
        if (bench_st_ != 0) bench_die(#call, bench_st_);  \
    } while (0)

#endif
