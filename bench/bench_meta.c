/* Metadata bytes per block: everything a cache allocates besides KV storage
 * (metadata mode), counted through the allocator hook, with the pool full of
 * sequences (64-block sequences of 64-token blocks), in four settings:
 *  - no prefix caching, appends without token ids (what a plain engine does);
 *  - no prefix caching, appends with token ids (4 B per token more, by design);
 *  - prefix caching, every block registered (token ids stored once, in the index);
 *  - prefix caching, half the sequences forks of the others (shared blocks);
 *  - prefix caching, all registered, each sequence with a LoRA adapter id and
 *    one 576-token image (extra keys: every block's identity holds a digest).
 * Targets (architecture issue): <= 16 B per block without prefix caching, and
 * <= 4 B per token + 48 B per block with it.
 *   build/bench/bench_meta [--blocks N]   (default 262144 blocks, 16.8M tokens) */
#include <stdlib.h>
#include <string.h>

#include "common/bench.h"
#include "pagedkv.h"

enum { BS = 64, SEQ_BLOCKS = 64 };

typedef struct counter {
    size_t live, peak;
} counter;

/* The hook prefixes each allocation with its size so that frees are counted. */
static void *count_alloc(void *o, size_t n) {
    counter *c = o;
    size_t *p = malloc(n + 16);
    if (!p) return NULL;
    p[0] = n;
    c->live += n;
    if (c->live > c->peak) c->peak = c->live;
    return (char *)p + 16;
}
static void count_free(void *o, void *ptr) {
    counter *c = o;
    size_t *p = (size_t *)(void *)((char *)ptr - 16);
    c->live -= p[0];
    free(p);
}

#define OK(call) BENCH_OK(call)

typedef struct result {
    const char *name;
    double bytes_per_block, bytes_per_token_ids, overhead_per_block, seconds;
} result;

static result run(const char *name, int32_t nb, int prefix, int with_tokens, int forks, int extras) {
    counter cnt = {0, 0};
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = BS;
    cfg.flags = prefix ? PKV_FLAG_PREFIX_CACHE : 0;
    cfg.hash_key_set = 1;
    cfg.allocator.alloc = count_alloc;
    cfg.allocator.free = count_free;
    cfg.allocator.opaque = &cnt;
    pkv_cache *c;
    double t0 = bench_now();
    OK(pkv_cache_create(&cfg, &c));
    int32_t n = SEQ_BLOCKS * BS, nseq = nb / SEQ_BLOCKS;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)n);
    pkv_block_copy cow;
    int64_t ntok_stored = 0;
    for (int32_t s = 0; s < nseq; s++) {
        pkv_seq q;
        if (forks && (s & 1)) continue; /* the fork made with sequence s - 1 takes these blocks */
        for (int32_t i = 0; i < n; i++) toks[i] = s * n + i; /* every block distinct */
        OK(pkv_seq_create(c, 0, &q));
        if (extras) {
            uint8_t hash[16];
            for (int i = 0; i < 16; i++) hash[i] = (uint8_t)(s * 16 + i);
            OK(pkv_seq_set_adapter(c, q, (uint64_t)s + 1));
            OK(pkv_seq_add_mm(c, q, 3 * BS + 5, 576, hash));
        }
        OK(pkv_seq_append(c, q, n, with_tokens ? toks : NULL, NULL, &cow));
        if (with_tokens) ntok_stored += n;
        if (prefix) OK(pkv_prefix_register(c, q, NULL, NULL));
        if (forks) {
            pkv_seq f;
            OK(pkv_seq_fork(c, q, &f));
            OK(pkv_seq_append(c, f, n, with_tokens ? toks : NULL, NULL, &cow));
            if (with_tokens) ntok_stored += n;
            if (prefix) OK(pkv_prefix_register(c, f, NULL, NULL));
        }
    }
    double secs = bench_now() - t0;
    pkv_stats st = PKV_STATS_INIT;
    OK(pkv_cache_stats(c, &st));
    if (st.used_blocks != nb) {
        fprintf(stderr, "bench_meta: %s: %d of %d blocks used\n", name, st.used_blocks, nb);
        exit(1);
    }
    result r;
    r.name = name;
    r.seconds = secs;
    r.bytes_per_block = (double)cnt.live / nb;
    r.bytes_per_token_ids = (double)ntok_stored * 4 / nb;
    r.overhead_per_block = r.bytes_per_block - 4.0 * BS * (with_tokens ? 1 : 0);
    pkv_cache_destroy(c);
    free(toks);
    if (cnt.live != 0) {
        fprintf(stderr, "bench_meta: %s: %zu bytes still allocated after destroy\n", name, cnt.live);
        exit(1);
    }
    return r;
}

int main(int argc, char **argv) {
    bench_set_name(argv[0]);
    int32_t nb = 262144;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--blocks") == 0 && i + 1 < argc) nb = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0) nb = 16384;
    }
    if (getenv("PKV_BENCH_QUICK")) nb = 16384;
    nb -= nb % (2 * SEQ_BLOCKS);
    if (nb < 2 * SEQ_BLOCKS) nb = 2 * SEQ_BLOCKS;
    result rs[5] = {
        run("no prefix caching, no token ids", nb, 0, 0, 0, 0),
        run("no prefix caching, token ids", nb, 0, 1, 0, 0),
        run("prefix caching, all registered", nb, 1, 1, 0, 0),
        run("prefix caching, half forks (shared)", nb, 1, 1, 1, 0),
        run("prefix caching, all registered, adapter + image per sequence", nb, 1, 1, 0, 1),
    };
    const double target[5] = {16, 16, 48, 48, 48};
    fprintf(stderr, "metadata bytes per %d-slot block, %d blocks in the pool, all in use (metadata mode)\n", BS, nb);
    fprintf(stderr, "| setting | bytes/block | of which token ids | other | target (other) |\n|---|---:|---:|---:|---:|\n");
    for (int i = 0; i < 5; i++) {
        bench_json j;
        json_begin(&j, stdout);
        json_str(&j, "bench", "meta");
        json_str(&j, "setting", rs[i].name);
        json_int(&j, "num_blocks", nb);
        json_int(&j, "block_size", BS);
        json_num(&j, "bytes_per_block", rs[i].bytes_per_block);
        json_num(&j, "token_id_bytes_per_block", rs[i].bytes_per_token_ids);
        json_num(&j, "other_bytes_per_block", rs[i].bytes_per_block - rs[i].bytes_per_token_ids);
        json_num(&j, "target_other_bytes_per_block", target[i]);
        json_num(&j, "fill_seconds", rs[i].seconds);
        json_end(&j);
        fprintf(stderr, "| %s | %.1f | %.1f | %.1f | <= %.0f |\n", rs[i].name, rs[i].bytes_per_block,
                rs[i].bytes_per_token_ids, rs[i].bytes_per_block - rs[i].bytes_per_token_ids, target[i]);
    }
    return 0;
}
