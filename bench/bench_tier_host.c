/* Host tier and swap (issue 11), measured in one run:
 *  - host tier copies against memcpy: offloading N cached blocks into a host
 *    tier (pkv_prefix_evict) and promoting them back (pkv_prefix_lookup),
 *    against memcpy of the same bytes in block-sized chunks between two
 *    buffers of the same total size;
 *  - promotion of a 16K-token prefix (host mode: the rows copied back;
 *    metadata mode: the library's time to place it and list the loads);
 *  - swap out and in of a 16K-token sequence (host mode: copies; metadata
 *    mode: tier-0 slots and the transfer list).
 * Blocks default to 8 layers of 64 tokens of 1152-byte rows (FlashMLA's bf16
 * MLA row), 589824 B. Each figure is the median of --reps runs.
 *   build/bench/bench_tier_host [--layers L] [--tokens T] [--reps R] [--quick] */
#include <stdlib.h>
#include <string.h>

#include "common/bench.h"
#include "pagedkv.h"

enum { BS = 64 };

static pkv_cache *make(int host, int32_t nb, int32_t layers, int64_t tier_blocks) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    cfg.storage = host ? PKV_STORAGE_HOST : PKV_STORAGE_METADATA;
    cfg.num_layers = layers; /* MLA bf16: 576 x 2 B per token, V shared */
    cfg.hash_key_set = 1;
    pkv_cache *c;
    BENCH_OK(pkv_cache_create(&cfg, &c));
    if (tier_blocks) BENCH_OK(pkv_cache_add_host_tier(c, tier_blocks, 0));
    return c;
}

static void drain(pkv_cache *c) {
    pkv_tier_transfer x[512];
    int32_t n;
    do BENCH_OK(pkv_tier_transfers_drain(c, x, 512, &n)); while (n == 512);
}

/* A registered sequence of n tokens (ids from base), rows written in host mode. */
static pkv_seq fill(pkv_cache *c, int host, int32_t base, int32_t n, int32_t layers) {
    int32_t *toks = malloc((size_t)n * sizeof *toks);
    int64_t *slots = malloc((size_t)n * sizeof *slots);
    if (!toks || !slots) bench_die("malloc", PKV_ERR_NOMEM);
    for (int32_t i = 0; i < n; i++) toks[i] = base + i;
    pkv_seq s;
    pkv_block_copy cow;
    BENCH_OK(pkv_seq_create(c, 0, &s));
    BENCH_OK(pkv_seq_append(c, s, n, toks, slots, &cow));
    if (host) {
        uint16_t *rows = malloc((size_t)n * 576 * 2);
        if (!rows) bench_die("malloc", PKV_ERR_NOMEM);
        for (size_t i = 0; i < (size_t)n * 576; i++) rows[i] = (uint16_t)(0x3c00 + (i * 7 % 512));
        for (int32_t l = 0; l < layers; l++) BENCH_OK(pkv_store_write(c, l, slots, n, rows, NULL, PKV_BF16));
        free(rows);
    }
    BENCH_OK(pkv_prefix_register(c, s, NULL, NULL));
    drain(c);
    free(toks);
    free(slots);
    return s;
}

/* The memcpy reference, measured in each repetition right before the
 * library's copies (a ratio per repetition, so both see the same load): the
 * same bytes between two buffers, in whole-block chunks and in 4 KiB pieces
 * (the library copies 4 KiB at a time), the faster of the two; directions
 * alternate so that neither buffer stays hot. */
typedef struct memref {
    uint8_t *a, *b;
    size_t block;
    int32_t nblocks;
} memref;

static double copy_pass(memref *m, size_t piece) {
    double t0 = bench_now();
    for (int32_t i = 0; i < m->nblocks; i++)
        for (size_t at = 0; at < m->block; at += piece) {
            size_t k = m->block - at < piece ? m->block - at : piece;
            memcpy(m->b + (size_t)i * m->block + at, m->a + (size_t)i * m->block + at, k);
        }
    double t = bench_now() - t0;
    uint8_t *x = m->a;
    m->a = m->b;
    m->b = x;
    return t;
}

static double memcpy_ref(memref *m) {
    double whole = copy_pass(m, m->block), pieces = copy_pass(m, 4096);
    return whole < pieces ? whole : pieces;
}

int main(int argc, char **argv) {
    int32_t layers = 8, tokens = 16384;
    int reps = 7;
    bench_set_name(argv[0]);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) reps = 3, tokens = 4096, layers = 4;
        else {
            fprintf(stderr, "usage: bench_tier_host [--layers L] [--tokens T] [--reps R] [--quick]\n");
            return 2;
        }
    }
    if (layers < 1 || tokens < BS || reps < 1) return 2;
    int32_t nblocks = tokens / BS;
    tokens = nblocks * BS;
    size_t block = (size_t)BS * 1152 * (size_t)layers;
    double *t_off = malloc((size_t)reps * sizeof(double)), *t_prom = malloc((size_t)reps * sizeof(double));
    double *t_mprom = malloc((size_t)reps * sizeof(double)), *t_sout = malloc((size_t)reps * sizeof(double));
    double *t_sin = malloc((size_t)reps * sizeof(double)), *t_msout = malloc((size_t)reps * sizeof(double));
    double *t_msin = malloc((size_t)reps * sizeof(double));
    if (!t_off || !t_prom || !t_mprom || !t_sout || !t_sin || !t_msout || !t_msin) bench_die("malloc", PKV_ERR_NOMEM);

    memref mr = {malloc(block * (size_t)nblocks), malloc(block * (size_t)nblocks), block, nblocks};
    double *t_ref = malloc((size_t)reps * sizeof(double)), *r_off = malloc((size_t)reps * sizeof(double));
    double *r_prom = malloc((size_t)reps * sizeof(double)), *r_sout = malloc((size_t)reps * sizeof(double));
    double *r_sin = malloc((size_t)reps * sizeof(double));
    if (!mr.a || !mr.b || !t_ref || !r_off || !r_prom || !r_sout || !r_sin) bench_die("malloc", PKV_ERR_NOMEM);
    memset(mr.a, 1, block * (size_t)nblocks);
    memset(mr.b, 2, block * (size_t)nblocks);
    /* host mode: offload nblocks (pkv_prefix_evict), promote them (lookup) */
    pkv_cache *c = make(1, nblocks + 1, layers, nblocks);
    int32_t *toks = malloc((size_t)tokens * sizeof *toks);
    for (int32_t i = 0; i < tokens; i++) toks[i] = 1000 + i;
    for (int r = 0; r < reps; r++) {
        BENCH_OK(pkv_prefix_reset(c));
        pkv_seq s = fill(c, 1, 1000, tokens, layers);
        BENCH_OK(pkv_seq_free(c, s));
        int32_t ev = 0;
        t_ref[r] = memcpy_ref(&mr);
        double t0 = bench_now();
        BENCH_OK(pkv_prefix_evict(c, nblocks, &ev));
        t_off[r] = bench_now() - t0;
        if (ev != nblocks) bench_die("evict count", PKV_ERR_STATE);
        int32_t cached = 0;
        t0 = bench_now();
        BENCH_OK(pkv_prefix_lookup(c, 0, toks, tokens, &s, &cached));
        t_prom[r] = bench_now() - t0;
        if (cached != tokens) bench_die("promotion incomplete", PKV_ERR_STATE);
        /* swap of the promoted (registered) sequence with a partial block appended */
        pkv_block_copy cow;
        int32_t one = 7;
        BENCH_OK(pkv_seq_append(c, s, 1, &one, NULL, &cow));
        t0 = bench_now();
        BENCH_OK(pkv_seq_swap_out(c, s));
        t_sout[r] = bench_now() - t0;
        t0 = bench_now();
        BENCH_OK(pkv_seq_swap_in(c, s));
        t_sin[r] = bench_now() - t0;
        BENCH_OK(pkv_seq_free(c, s));
        r_off[r] = t_ref[r] / t_off[r];
        r_prom[r] = t_ref[r] / t_prom[r];
        r_sout[r] = t_ref[r] / t_sout[r];
        r_sin[r] = t_ref[r] / t_sin[r];
    }
    BENCH_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);

    /* metadata mode: the same operations, the library's side only */
    c = make(0, nblocks + 1, layers, 2 * (int64_t)nblocks + 2);
    for (int r = 0; r < reps; r++) {
        BENCH_OK(pkv_prefix_reset(c));
        pkv_seq s = fill(c, 0, 1000, tokens, layers);
        BENCH_OK(pkv_seq_free(c, s));
        BENCH_OK(pkv_prefix_evict(c, nblocks, NULL));
        drain(c);
        int32_t cached = 0;
        double t0 = bench_now();
        BENCH_OK(pkv_prefix_lookup(c, 0, toks, tokens, &s, &cached));
        t_mprom[r] = bench_now() - t0;
        drain(c);
        if (cached != tokens) bench_die("metadata promotion incomplete", PKV_ERR_STATE);
        t0 = bench_now();
        BENCH_OK(pkv_seq_swap_out(c, s));
        t_msout[r] = bench_now() - t0;
        drain(c);
        t0 = bench_now();
        BENCH_OK(pkv_seq_swap_in(c, s));
        t_msin[r] = bench_now() - t0;
        drain(c);
        BENCH_OK(pkv_seq_free(c, s));
    }
    BENCH_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);

    double bytes = (double)block * nblocks;
    double mc = bytes / bench_median(t_ref, reps) * 1e-9;
    double q_off = bench_median(r_off, reps), q_prom = bench_median(r_prom, reps);
    double q_sout = bench_median(r_sout, reps), q_sin = bench_median(r_sin, reps);
    double off = bytes / bench_median(t_off, reps) * 1e-9, prom = bytes / bench_median(t_prom, reps) * 1e-9;
    double sw_out = bytes / bench_median(t_sout, reps) * 1e-9, sw_in = bytes / bench_median(t_sin, reps) * 1e-9;
    double mprom = bench_median(t_mprom, reps), msout = bench_median(t_msout, reps), msin = bench_median(t_msin, reps);
    fprintf(stderr, "host tier, %d blocks of %zu B (%d layers x %d tokens x 1152 B), median of %d:\n", nblocks, block,
            layers, BS, reps);
    fprintf(stderr, "  memcpy (faster of block chunks, 4 KiB pieces) %7.2f GB/s; ratios: medians of per-repetition pairs\n",
            mc);
    fprintf(stderr, "  offload (evict -> tier)     %7.2f GB/s  %5.1f%% of memcpy\n", off, 100 * q_off);
    fprintf(stderr, "  promotion of %d tokens   %7.2f GB/s  %5.1f%% of memcpy (%.2f ms)\n", tokens, prom,
            100 * q_prom, bench_median(t_prom, reps) * 1e3);
    fprintf(stderr, "  swap out / in (host mode)   %7.2f / %.2f GB/s  %5.1f%% / %.1f%% of memcpy\n", sw_out, sw_in,
            100 * q_sout, 100 * q_sin);
    fprintf(stderr, "metadata mode, %d tokens: promotion %.1f us, swap out %.1f us, swap in %.1f us (lists only)\n",
            tokens, mprom * 1e6, msout * 1e6, msin * 1e6);
    bench_json j;
    json_begin(&j, stdout);
    json_str(&j, "bench", "tier_host");
    json_int(&j, "blocks", nblocks);
    json_int(&j, "block_bytes", (long long)block);
    json_int(&j, "layers", layers);
    json_int(&j, "tokens", tokens);
    json_int(&j, "reps", reps);
    json_num(&j, "memcpy_gbs", mc);
    json_num(&j, "offload_gbs", off);
    json_num(&j, "promote_gbs", prom);
    json_num(&j, "offload_vs_memcpy", q_off);
    json_num(&j, "promote_vs_memcpy", q_prom);
    json_num(&j, "swap_out_vs_memcpy", q_sout);
    json_num(&j, "swap_in_vs_memcpy", q_sin);
    json_num(&j, "promote_prefix_s", bench_median(t_prom, reps));
    json_num(&j, "swap_out_gbs", sw_out);
    json_num(&j, "swap_in_gbs", sw_in);
    json_num(&j, "meta_promote_prefix_s", mprom);
    json_num(&j, "meta_swap_out_s", msout);
    json_num(&j, "meta_swap_in_s", msin);
    json_end(&j);
    free(toks);
    free(mr.a);
    free(mr.b);
    free(t_ref);
    free(r_off);
    free(r_prom);
    free(r_sout);
    free(r_sin);
    free(t_off);
    free(t_prom);
    free(t_mprom);
    free(t_sout);
    free(t_sin);
    free(t_msout);
    free(t_msin);
    return 0;
}
