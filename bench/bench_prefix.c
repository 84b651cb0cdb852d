/* Prefix-cache benchmarks, one core, block size 64, metadata mode:
 *  - hashing: pkv_siphash128 over one long buffer, and chained block keys
 *    (the lane-interleaved path registration and lookup use), in GB/s of token ids;
 *  - for prompts of 1K, 16K and 128K tokens: lookup of a fully cached prompt
 *    (default path, and every level hashed), lookup that misses at the first
 *    block, registration per block (new blocks, and duplicates deduplicated),
 *    and an append that must evict every block it takes against one that takes
 *    free blocks (the difference is the cost of an eviction).
 * Each figure is taken over many repetitions and reported as the best and the
 * median (the best is the code's cost; the median shows the machine's noise).
 * Per-block figures show O(blocks). JSON lines on stdout, a table on stderr.
 *   build/bench/bench_prefix [--quick]   (or PKV_BENCH_QUICK=1) */
#include <stdlib.h>
#include <string.h>

#include "common/bench.h"
#include "internal.h"

enum { BS = 64 };

static int quick;

#define OK(call) BENCH_OK(call)

static pkv_cache *make_cache(int32_t nb) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    pkv_cache *c;
    OK(pkv_cache_create(&cfg, &c));
    return c;
}

static void fill(int32_t *t, int32_t n, uint32_t seed) {
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int32_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)(s >> 45); /* ids below 2^19, as real vocabularies */
    }
}

enum { MAXREP = 41 };

static double best_of(const double *v, int n) {
    double b = v[0];
    for (int i = 1; i < n; i++)
        if (v[i] < b) b = v[i];
    return b;
}

/* v[0..n): seconds per operation; blocks > 0 adds a per-block figure. */
static void emit(const char *op, int32_t tokens, double *v, int n, int32_t blocks) {
    double best = best_of(v, n), med = bench_median(v, n);
    bench_json j;
    json_begin(&j, stdout);
    json_str(&j, "bench", "prefix");
    json_str(&j, "op", op);
    json_int(&j, "tokens", tokens);
    json_int(&j, "blocks", tokens / BS);
    json_num(&j, "best_us", best * 1e6);
    json_num(&j, "median_us", med * 1e6);
    json_num(&j, "best_ns_per_block", blocks > 0 ? best * 1e9 / blocks : 0);
    json_end(&j);
    fprintf(stderr, "%-20s %7d %6d %11.2f %11.2f %10.1f\n", op, tokens, tokens / BS, best * 1e6, med * 1e6,
            blocks > 0 ? best * 1e9 / blocks : 0.0);
}

static void bench_hashing(void) {
    const int32_t ntok = 1 << 20; /* 4 MiB of token ids */
    int32_t *t = malloc((size_t)ntok * sizeof *t);
    fill(t, ntok, 1);
    uint8_t key[16] = {1, 2, 3}, out[16];
    int reps = quick ? 5 : 21;
    double v[MAXREP], v2[MAXREP];
    pkv_siphash128(key, t, (size_t)ntok * 4, out); /* warm-up: caches, clock */
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        pkv_siphash128(key, t, (size_t)ntok * 4, out);
        v[r] = bench_now() - t0;
    }

    /* Chained block keys exactly as registration computes them. */
    uint64_t k[2] = {1, 2};
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        uint64_t pk[2] = {0, 0};
        sip_state st[SIP_LANES];
        for (int32_t b = 0; b < ntok / BS; b += SIP_LANES) {
            sip_absorb_blocks(k, t + (size_t)b * BS, BS, SIP_LANES, st);
            for (int l = 0; l < SIP_LANES; l++) sip_finish_block(&st[l], t + (size_t)(b + l) * BS, BS, 0, pk, pk);
        }
        v2[r] = bench_now() - t0;
        out[r & 15] ^= (uint8_t)pk[0];
    }
    double gb = (double)ntok * 4 / 1e9;
    const char *names[2] = {"siphash128_stream", "block_keys_chained"};
    double *vs[2] = {v, v2};
    for (int i = 0; i < 2; i++) {
        double best = best_of(vs[i], reps), med = bench_median(vs[i], reps);
        bench_json j;
        json_begin(&j, stdout);
        json_str(&j, "bench", "prefix");
        json_str(&j, "op", names[i]);
        json_int(&j, "bytes", (long long)ntok * 4);
        json_num(&j, "best_gbs", gb / best);
        json_num(&j, "median_gbs", gb / med);
        json_end(&j);
        fprintf(stderr, "%-20s %.2f GB/s of token ids best, %.2f median (4 MiB, one core)\n", names[i], gb / best,
                gb / med);
    }
    if (out[0] == 0x5a && out[1] == 0xa5) fprintf(stderr, " ");
    free(t);
}

/* Seconds per lookup of prompt[0..n) into v[0..reps), batch lookups per timing. */
static int time_lookups(pkv_cache *c, const int32_t *prompt, int32_t n, int32_t expect, double *v) {
    enum { MAXB = 64 };
    pkv_seq h[MAXB];
    int batch = n >= 65536 ? 8 : n >= 16384 ? 32 : MAXB, reps = quick ? 5 : MAXREP;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        for (int i = 0; i < batch; i++) {
            int32_t cached;
            OK(pkv_prefix_lookup(c, 0, prompt, n, &h[i], &cached));
            if (cached != expect) bench_die("unexpected cached length", PKV_ERR_STATE);
        }
        v[r] = (bench_now() - t0) / batch;
        for (int i = 0; i < batch; i++) OK(pkv_seq_free(c, h[i]));
    }
    return reps;
}

static void bench_size(int32_t n) {
    int32_t nblk = n / BS;
    int32_t *p = malloc((size_t)n * sizeof *p), *q = malloc((size_t)n * sizeof *q);
    fill(p, n, 7);
    pkv_cache *c = make_cache(4 * nblk + 64);
    pkv_block_copy cow;
    int reps = quick ? 5 : 21;
    double v[MAXREP];

    /* Registration of new blocks: a fresh chain each repetition (first token differs). */
    for (int r = 0; r < reps; r++) {
        memcpy(q, p, (size_t)n * sizeof *q);
        q[0] = -1 - r;
        pkv_seq s;
        OK(pkv_seq_create(c, 0, &s));
        OK(pkv_seq_append(c, s, n, q, NULL, &cow));
        int32_t reg, dd;
        double t0 = bench_now();
        OK(pkv_prefix_register(c, s, &reg, &dd));
        v[r] = bench_now() - t0;
        if (reg != nblk) bench_die("registration count", PKV_ERR_STATE);
        OK(pkv_seq_free(c, s));
    }
    emit("register_new", n, v, reps, nblk);

    /* The prompt itself, cached and released (evictable), then duplicates of it. */
    pkv_seq s0;
    OK(pkv_seq_create(c, 0, &s0));
    OK(pkv_seq_append(c, s0, n, p, NULL, &cow));
    OK(pkv_prefix_register(c, s0, NULL, NULL));
    for (int r = 0; r < reps; r++) {
        pkv_seq s;
        OK(pkv_seq_create(c, 0, &s));
        OK(pkv_seq_append(c, s, n, p, NULL, &cow));
        int32_t reg, dd;
        double t0 = bench_now();
        OK(pkv_prefix_register(c, s, &reg, &dd));
        v[r] = bench_now() - t0;
        if (dd != nblk) bench_die("dedup count", PKV_ERR_STATE);
        OK(pkv_seq_free(c, s));
    }
    emit("register_dedup", n, v, reps, nblk);
    OK(pkv_seq_free(c, s0));

    int lr = time_lookups(c, p, n, n, v);
    emit("lookup_hit", n, v, lr, nblk);
    prefix_set_child_scan(c, 0);
    lr = time_lookups(c, p, n, n, v);
    emit("lookup_hit_hashed", n, v, lr, nblk);
    prefix_set_child_scan(c, PREFIX_CHILD_SCAN);
    memcpy(q, p, (size_t)n * sizeof *q);
    q[0] ^= 1;
    lr = time_lookups(c, q, n, 0, v);
    emit("lookup_miss_first", n, v, lr, 0);
    pkv_cache_destroy(c);

    /* Eviction under pressure: a pool exactly one prompt large. Each repetition
     * caches a fresh chain and releases it (all blocks evictable), then times an
     * append that reclaims all of them, then one that takes the freed blocks. */
    c = make_cache(nblk);
    double ve[MAXREP], vf[MAXREP], vx[MAXREP];
    for (int r = 0; r < reps; r++) {
        memcpy(q, p, (size_t)n * sizeof *q);
        q[0] = -1 - r;
        pkv_seq s;
        OK(pkv_seq_create(c, 0, &s));
        OK(pkv_seq_append(c, s, n, q, NULL, &cow));
        OK(pkv_prefix_register(c, s, NULL, NULL));
        OK(pkv_seq_free(c, s));
        OK(pkv_seq_create(c, 0, &s));
        double t0 = bench_now();
        OK(pkv_seq_append(c, s, n, NULL, NULL, &cow));
        ve[r] = bench_now() - t0;
        OK(pkv_seq_free(c, s));
        OK(pkv_seq_create(c, 0, &s));
        t0 = bench_now();
        OK(pkv_seq_append(c, s, n, NULL, NULL, &cow));
        vf[r] = bench_now() - t0;
        OK(pkv_seq_free(c, s));
    }
    pkv_stats st = PKV_STATS_INIT;
    OK(pkv_cache_stats(c, &st));
    if (st.evictions != (int64_t)reps * nblk) bench_die("eviction count", PKV_ERR_STATE);
    for (int r = 0; r < reps; r++) vx[r] = ve[r] > vf[r] ? ve[r] - vf[r] : 0;
    emit("append_evicting", n, ve, reps, nblk);
    emit("append_free_blocks", n, vf, reps, nblk);
    emit("eviction_extra", n, vx, reps, nblk);
    pkv_cache_destroy(c);
    free(p);
    free(q);
}

int main(int argc, char **argv) {
    bench_set_name(argv[0]);
    quick = getenv("PKV_BENCH_QUICK") != NULL;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--quick") == 0) quick = 1;
    fprintf(stderr, "prefix cache, block size %d, one core: %s\n", BS, bench_cpu_model());
    bench_hashing();
    fprintf(stderr, "\n%-20s %7s %6s %11s %11s %10s\n", "op", "tokens", "blocks", "best us", "median us",
            "ns/block");
    static const int32_t sizes[] = {1024, 16384, 131072};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) bench_size(sizes[i]);
    return 0;
}
