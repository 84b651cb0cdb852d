/* Benchmark: the share of the streaming read that reading a paged GQA KV cache
 * in a given order reaches, with no compute at all (issue 16 item 18: GQA f16
 * decode at >= 85 % of the streaming read; bench/README.md, "GQA decode, cold").
 *
 * The bytes are those of bench_attn's gqa_f16 shape: h_kv 8, d 128, f16, so a
 * token's K row is 2 KiB (8 heads of 256 bytes) and its V row the same, in
 * blocks of 64 tokens at permuted block ids, 16384 tokens. Each tile of 64
 * tokens is read K then V, as the rows kernel does, and threads take chunks of
 * 256 tokens in turn. Orders:
 *   kernel       the rows kernel's: per 16 tokens, per head, the 16 rows' 256
 *                bytes (2 KiB apart), with its software prefetches (into L2)
 *                of the rows 32 ahead in the read order;
 *   kernel-nopf  the same without software prefetch;
 *   address      each token's whole row in address order (all heads), no
 *                software prefetch: the hardware prefetchers follow it;
 *   hnd          the same bytes laid out head-major within each block
 *                ([block][head][token][d], FlashInfer's HND; the library's
 *                layout is FlashMLA's [block][token][head][d]), read per head
 *                over the block's 64 rows (16 KiB in a row), with the kernel's
 *                prefetches;
 *   hnd-nopf     the same without software prefetch.
 * Every run is cold (the arrays flushed) and paired with one run of the
 * reference streaming read of the same bytes right before it (%st, as in
 * bench_attn); each row gives the median over runs, the orders alternated.
 *
 * Usage: bench_readorder [--quick] [--threads N]  (JSON lines on stdout, table
 * on stderr). */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bench.h"
#include "pagedkv.h"

#define TOKENS 16384
#define BLOCK 64
#define HEADS 8
#define HEAD_BYTES 256 /* d 128 x f16 */
#define ROW_BYTES (HEADS * HEAD_BYTES)
#define CHUNK 256 /* tokens per chunk a thread takes */
#define AHEAD 32  /* rows the kernel order prefetches ahead (ATTN_PF) */
#define UNROLL4 _Pragma("GCC unroll 4")

enum { ORDER_KERNEL, ORDER_KERNEL_NOPF, ORDER_ADDRESS, ORDER_HND, ORDER_HND_NOPF, ORDERS };
static const char *const order_names[ORDERS] = {"kernel", "kernel-nopf", "address", "hnd", "hnd-nopf"};

typedef struct job {
    const char *k, *v;
    const int32_t *table; /* block of the sequence -> stored block */
    int order, id, threads;
    pthread_barrier_t *bar;
    int64_t sink;
} job;

static const char *row_at(const char *base, const int32_t *table, int t) {
    return base + ((size_t)table[t / BLOCK] * BLOCK + (size_t)(t % BLOCK)) * ROW_BYTES;
}

/* Head h's bytes of token t: in the FlashMLA layout at row_at + h * HEAD_BYTES,
 * in the head-major (HND) one at its block + (h * BLOCK + t % BLOCK) * HEAD_BYTES. */
static const char *head_at(const char *base, const int32_t *table, int t, int h, int hnd) {
    if (!hnd) return row_at(base, table, t) + h * HEAD_BYTES;
    return base + (size_t)table[t / BLOCK] * BLOCK * ROW_BYTES + ((size_t)h * BLOCK + (size_t)(t % BLOCK)) * HEAD_BYTES;
}

/* Head h of the row AHEAD rows after row j of a tile's pass in the read order
 * (the tile's K rows, its V rows, the next tile's K rows), NULL past the chunk. */
static const char *ahead_head(const job *jb, int tile, int pass, int j, int end, int h, int hnd) {
    const int nx = j + AHEAD;
    if (nx < tile + BLOCK) return head_at(pass ? jb->v : jb->k, jb->table, nx, h, hnd);
    if (pass == 0) return head_at(jb->v, jb->table, nx - BLOCK, h, hnd);
    return nx < end ? head_at(jb->k, jb->table, nx, h, hnd) : NULL;
}

/* acc | head h of row j (of the pass's array base); prefetch: first the same
 * head of the row AHEAD rows later in the read order, as the rows kernel does. */
__attribute__((target("avx512f"))) static inline __m512i read_head(const job *jb, __m512i acc, const char *base,
                                                                  int tile, int pass, int j, int end, int h,
                                                                  int hnd, int prefetch) {
    const char *pf = prefetch ? ahead_head(jb, tile, pass, j, end, h, hnd) : NULL;
    if (pf) UNROLL4 for (int l = 0; l < HEAD_BYTES; l += 64)
            _mm_prefetch(pf + l, _MM_HINT_T1);
    const char *r = head_at(base, jb->table, j, h, hnd);
    UNROLL4 for (int l = 0; l < HEAD_BYTES; l += 64)
        acc = _mm512_or_si512(acc, _mm512_loadu_si512((const void *)(r + l)));
    return acc;
}

__attribute__((target("avx512f"))) static void *reader(void *arg) {
    job *jb = (job *)arg;
    __m512i acc = _mm512_setzero_si512();
    pthread_barrier_wait(jb->bar);
    for (int c = jb->id; c * CHUNK < TOKENS; c += jb->threads) {
        const int t0 = c * CHUNK, t1 = t0 + CHUNK < TOKENS ? t0 + CHUNK : TOKENS;
        for (int tile = t0; tile < t1; tile += BLOCK)
            for (int pass = 0; pass < 2; pass++) {
                const char *base = pass ? jb->v : jb->k;
                if (jb->order == ORDER_HND || jb->order == ORDER_HND_NOPF) {
                    for (int h = 0; h < HEADS; h++)
                        for (int j = tile; j < tile + BLOCK; j++)
                            acc = read_head(jb, acc, base, tile, pass, j, t1, h, 1, jb->order == ORDER_HND);
                    continue;
                }
                for (int j0 = tile; j0 < tile + BLOCK; j0 += 16) {
                    if (jb->order == ORDER_ADDRESS) {
                        for (int j = j0; j < j0 + 16; j++) {
                            const char *r = row_at(base, jb->table, j);
                            for (int l = 0; l < ROW_BYTES; l += 64)
                                acc = _mm512_or_si512(acc, _mm512_loadu_si512((const void *)(r + l)));
                        }
                        continue;
                    }
                    for (int h = 0; h < HEADS; h++)
                        for (int j = j0; j < j0 + 16; j++)
                            acc = read_head(jb, acc, base, tile, pass, j, t1, h, 0, jb->order == ORDER_KERNEL);
                }
            }
    }
    jb->sink = (int64_t)_mm512_reduce_or_epi64(acc);
    return NULL;
}

/* Seconds of one cold read of K and V in order by threads threads. */
static double run_once(const char *k, const char *v, const int32_t *table, size_t bytes, int order, int threads,
                       int64_t *sink) {
    bench_flush(k, bytes);
    bench_flush(v, bytes);
    job jobs[64];
    pthread_t th[64];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++) {
        jobs[i] = (job){k, v, table, order, i, threads, &bar, 0};
        if (i > 0 && pthread_create(&th[i], NULL, reader, &jobs[i]) != 0) {
            fprintf(stderr, "bench_readorder: pthread_create failed\n");
            exit(1);
        }
    }
    const double t0 = bench_now();
    reader(&jobs[0]);
    for (int i = 1; i < threads; i++) pthread_join(th[i], NULL);
    const double t = bench_now() - t0;
    for (int i = 0; i < threads; i++) *sink |= jobs[i].sink;
    pthread_barrier_destroy(&bar);
    return t;
}

int main(int argc, char **argv) {
    int quick = 0, threads = bench_cpus();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) quick = 1;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_readorder [--quick] [--threads N]\n");
            return 2;
        }
    }
    if (getenv("PKV_BENCH_QUICK")) quick = 1;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    if (!(pkv_cpu_features() & PKV_CPU_AVX512F)) {
        fprintf(stderr, "bench_readorder: needs AVX-512 (512-bit loads); skipped\n");
        return 0;
    }
    const size_t bytes = (size_t)TOKENS * ROW_BYTES;
    const int nb = TOKENS / BLOCK;
    char *k = aligned_alloc(4096, bytes), *v = aligned_alloc(4096, bytes);
    int32_t *table = malloc(sizeof(int32_t) * (size_t)nb);
    if (!k || !v || !table) {
        fprintf(stderr, "bench_readorder: out of memory\n");
        return 1;
    }
    memset(k, 1, bytes);
    memset(v, 2, bytes);
    for (int i = 0; i < nb; i++) table[i] = (int32_t)(((int64_t)i * 7919) % nb); /* 7919 is prime to nb */

    const int reps = quick ? 5 : 11;
    double ratio[ORDERS][11], gbs[ORDERS][11];
    int64_t sink = 0;
    for (int r = 0; r < reps; r++)
        for (int o = 0; o < ORDERS; o++) {
            const double ts = (double)bytes / bench_read_buf_gbs(k, bytes, threads) * 1e-9 +
                              (double)bytes / bench_read_buf_gbs(v, bytes, threads) * 1e-9;
            const double t = run_once(k, v, table, bytes, o, threads, &sink);
            ratio[o][r] = ts / t;
            gbs[o][r] = 2.0 * (double)bytes / t * 1e-9;
        }
    fprintf(stderr, "CPU: %s, %d threads; %d cold runs per order, alternated; reference: the %s read\n\n",
            bench_cpu_model(), threads, reps, bench_read_reference(threads) ? "software-prefetching" : "plain");
    fprintf(stderr, "%-12s %8s %8s\n", "order", "GB/s", "%st");
    for (int o = 0; o < ORDERS; o++) {
        const double st = bench_median(ratio[o], reps), g = bench_median(gbs[o], reps);
        bench_json j;
        json_begin(&j, stdout);
        json_str(&j, "bench", "readorder");
        json_str(&j, "order", order_names[o]);
        json_num(&j, "threads", threads);
        json_num(&j, "gbs", g);
        json_num(&j, "pct_stream_paired", 100.0 * st);
        json_end(&j);
        fprintf(stderr, "%-12s %8.1f %7.1f%%\n", order_names[o], g, 100.0 * st);
    }
    if (sink == 42) fprintf(stderr, "\n"); /* keeps the loads */
    free(k);
    free(v);
    free(table);
    return 0;
}
