/* Allocation-failure injection (SQLite's method): a scripted workload runs
 * with a counting allocator that fails its k-th allocation, for k = 1, 2, ...
 * until the workload runs through without reaching k. At every k:
 *  - the call that met the failure returns PKV_ERR_NOMEM (creation: *out NULL),
 *  - the cache's canonical dump (cache_dump) equals the dump before the call,
 *  - pkv_cache_check passes,
 *  - retrying the call succeeds, and the workload ends in exactly the state of
 *    a run without failures (final dumps compared),
 *  - after destruction no allocation is outstanding.
 * pkv_cache_check runs after every step. Prints the failure points exercised. */
#include <stdint.h>

#include "internal.h"
#include "test.h"

/* ---- the counting allocator ---- */

#define FA_MAGIC 0x70a11c0cu

typedef struct fa_state {
    long count;       /* allocations seen while armed */
    long fail_at;     /* fail the allocation with this count (0: never) */
    long failed;      /* failures injected */
    long outstanding; /* allocations not yet freed */
    long bad_frees;   /* frees of pointers this allocator did not hand out */
    int armed;        /* 0 while the test itself calls into the library (check) */
} fa_state;

typedef struct fa_hdr {
    uint32_t magic;
    uint32_t pad;
    uint64_t size;
} fa_hdr; /* 16 bytes: keeps malloc's alignment for the block after it */

static void *fa_alloc(void *opaque, size_t size) {
    fa_state *f = opaque;
    if (f->armed) {
        f->count++;
        if (f->count == f->fail_at) {
            f->failed++;
            return NULL;
        }
    }
    if (size > SIZE_MAX - sizeof(fa_hdr)) return NULL;
    fa_hdr *h = malloc(sizeof *h + size);
    if (!h) return NULL;
    h->magic = FA_MAGIC;
    h->size = size;
    f->outstanding++;
    return h + 1;
}

static void fa_free(void *opaque, void *p) {
    fa_state *f = opaque;
    fa_hdr *h = (fa_hdr *)p - 1;
    if (!p || h->magic != FA_MAGIC) {
        f->bad_frees++;
        return;
    }
    h->magic = 0;
    f->outstanding--;
    free(h);
}

/* ---- the step runner ---- */

#define MAX_CACHES 12

typedef struct runner {
    fa_state fa;
    long steps, retries;
    uint8_t *before;
    size_t before_len;
    long failed_before;
    /* Final dumps of each cache, in creation order. */
    uint8_t *final[MAX_CACHES];
    size_t final_len[MAX_CACHES];
    int nfinal;
} runner;

static uint8_t *dump_alloc(pkv_cache *c, size_t *len) {
    size_t n = cache_dump(c, NULL, 0);
    uint8_t *b = malloc(n ? n : 1);
    if (!b) { fprintf(stderr, "out of memory in the test\n"); exit(2); }
    size_t m = cache_dump(c, b, n);
    if (m != n) { fprintf(stderr, "cache_dump size changed\n"); exit(2); }
    *len = n;
    return b;
}

static void check_cache(runner *R, pkv_cache *c, const char *what, int line) {
    if (!c) return;
    int armed = R->fa.armed;
    R->fa.armed = 0;
    int st = pkv_cache_check(c);
    R->fa.armed = armed;
    test_checks_++;
    if (st != PKV_OK)
        TEST_FAIL_("line %d (%s): pkv_cache_check: %s (%s)", line, what, pkv_strerror(st),
                   pkv_cache_last_error(c));
}

static void step_begin(runner *R, pkv_cache *c) {
    R->steps++;
    free(R->before);
    R->before = c ? dump_alloc(c, &R->before_len) : NULL;
    R->failed_before = R->fa.failed;
}

/* Returns 1 when the call met the injected failure (the caller retries it). */
static int step_end(runner *R, pkv_cache *c, int st, int expect, const char *what, int line) {
    if (R->fa.failed == R->failed_before) {
        test_checks_++;
        if (st != expect)
            TEST_FAIL_("k=%ld line %d: %s returned %d (%s), want %d (%s)", R->fa.fail_at, line, what, st,
                       pkv_strerror(st), expect, pkv_strerror(expect));
        check_cache(R, c, what, line);
        return 0;
    }
    test_checks_++;
    if (st != PKV_ERR_NOMEM)
        TEST_FAIL_("k=%ld line %d: %s met an allocation failure but returned %d (%s)", R->fa.fail_at, line,
                   what, st, pkv_strerror(st));
    if (c) {
        size_t n;
        uint8_t *after = dump_alloc(c, &n);
        test_checks_++;
        if (n != R->before_len || memcmp(after, R->before, n) != 0)
            TEST_FAIL_("k=%ld line %d: %s failed with NOMEM but changed the cache state (dump %zu -> %zu bytes)",
                       R->fa.fail_at, line, what, R->before_len, n);
        free(after);
        check_cache(R, c, what, line);
    }
    R->retries++;
    return 1;
}

/* Runs call; on an injected failure checks it and runs it again (the failure
 * was the k-th allocation only, so the retry must take the normal path). */
#define STEP(R, cache, expect, call)                                                    \
    do {                                                                                \
        pkv_cache *sc_ = (cache);                                                       \
        step_begin(R, sc_);                                                             \
        int st_ = (call);                                                               \
        if (step_end(R, sc_, st_, expect, #call, __LINE__)) {                           \
            step_begin(R, sc_);                                                         \
            st_ = (call);                                                               \
            (void)step_end(R, sc_, st_, expect, #call, __LINE__);                      \
        }                                                                               \
    } while (0)

/* Creation: on failure *out must be NULL and nothing may be outstanding
 * beyond what existed before. */
static pkv_cache *create_cache(runner *R, const pkv_config *cfg, int line) {
    pkv_cache *c = (pkv_cache *)1;
    long out_before = R->fa.outstanding;
    for (int attempt = 0; attempt < 2; attempt++) {
        step_begin(R, NULL);
        int st = pkv_cache_create(cfg, &c);
        int retry = step_end(R, NULL, st, PKV_OK, "pkv_cache_create", line);
        if (!retry) break;
        test_checks_++;
        if (c != NULL) TEST_FAIL_("k=%ld: failed pkv_cache_create left *out non-NULL", R->fa.fail_at);
        CHECK_INT(R->fa.outstanding, out_before);
    }
    return c;
}

static void finish_cache(runner *R, pkv_cache *c) {
    if (!c) return;
    if (R->nfinal == MAX_CACHES) {
        fprintf(stderr, "raise MAX_CACHES\n");
        exit(2);
    }
    R->final[R->nfinal] = dump_alloc(c, &R->final_len[R->nfinal]);
    R->nfinal++;
    pkv_cache_destroy(c);
}

/* ---- the workload ---- */

enum { NB = 12, BS = 4, LAYERS = 2, HKV = 2, D = 6, DV = 4 };

static float pattern(int tag, int32_t pos, int layer, int i) {
    return (float)(tag * 1000 + pos) + (float)layer * 0.5f + (float)i * (1.0f / 64.0f);
}

static void make_rows(float *k, float *v, int tag, int32_t start, int32_t n, int layer) {
    for (int32_t t = 0; t < n; t++) {
        for (int i = 0; i < HKV * D; i++) k[t * HKV * D + i] = pattern(tag, start + t, layer, i);
        for (int i = 0; i < HKV * DV; i++) v[t * HKV * DV + i] = -pattern(tag, start + t, layer, i);
    }
}

/* Reads positions [0, len) of seq through its block list and compares them
 * with the pattern of tag_at(pos). */
static void verify_rows(runner *R, pkv_cache *c, pkv_seq s, int32_t len, const int *tag_at, int line) {
    int32_t blocks[NB], nb = 0;
    STEP(R, c, PKV_OK, pkv_seq_blocks(c, s, blocks, NB, &nb));
    int64_t slots[NB * BS];
    for (int32_t p = 0; p < len; p++) slots[p] = (int64_t)blocks[p / BS] * BS + p % BS;
    float k[NB * BS * HKV * D], v[NB * BS * HKV * DV], ek[NB * BS * HKV * D], ev[NB * BS * HKV * DV];
    for (int layer = 0; layer < LAYERS; layer++) {
        STEP(R, c, PKV_OK, pkv_store_read(c, layer, slots, len, k, v));
        for (int32_t p = 0; p < len; p++) make_rows(ek + p * HKV * D, ev + p * HKV * DV, tag_at[p], p, 1, layer);
        test_checks_++;
        if (memcmp(k, ek, (size_t)len * HKV * D * sizeof(float)) ||
            memcmp(v, ev, (size_t)len * HKV * DV * sizeof(float)))
            TEST_FAIL_("k=%ld line %d: stored rows differ from the pattern", R->fa.fail_at, line);
    }
}

static void write_rows(runner *R, pkv_cache *c, const int64_t *slots, int32_t start, int32_t n, int tag) {
    float k[NB * BS * HKV * D], v[NB * BS * HKV * DV];
    for (int layer = 0; layer < LAYERS; layer++) {
        make_rows(k, v, tag, start, n, layer);
        STEP(R, c, PKV_OK, pkv_store_write(c, layer, slots, n, k, v, PKV_F32));
    }
}

static void exports(runner *R, pkv_cache *c, const pkv_seq *seqs, int32_t b) {
    int32_t table[8 * NB], lens[8], needed = 0, indptr[9], indices[8 * NB], last[8], n = 0;
    int64_t slots[8 * NB * BS];
    STEP(R, c, PKV_OK, pkv_export_flashmla(c, seqs, b, table, NB, lens, &needed));
    STEP(R, c, PKV_OK, pkv_export_flashinfer(c, seqs, b, indptr, indices, 8 * NB, last, &needed));
    STEP(R, c, PKV_OK, pkv_export_slot_mapping(c, seqs, b, slots, 8 * NB * BS, &n));
    STEP(R, c, PKV_ERR_BUFFER, pkv_export_flashmla(c, seqs, b, table, 0, lens, &needed));
}

static void workload_host(runner *R) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = NB;
    cfg.block_size = BS;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = LAYERS;
    cfg.h_kv = HKV;
    cfg.d = D;
    cfg.dv = DV;
    cfg.v_separate = 1;
    cfg.kv_dtype = PKV_F32;
    cfg.allocator = (pkv_allocator){fa_alloc, fa_free, &R->fa};
    pkv_cache *c = create_cache(R, &cfg, __LINE__);
    if (!c) return;
    int32_t toks[64];
    for (int i = 0; i < 64; i++) toks[i] = 1000 + i;
    int64_t slots[64];
    pkv_seq a = 0, b = 0, x = 0, many[10];
    int tag_a[64], tag_b[64], tag_x[64];

    STEP(R, c, PKV_OK, pkv_seq_create(c, 7, &a));
    STEP(R, c, PKV_OK, pkv_seq_append(c, a, 10, toks, slots, NULL));
    write_rows(R, c, slots, 0, 10, 1);
    for (int p = 0; p < 64; p++) tag_a[p] = tag_b[p] = tag_x[p] = 1;
    STEP(R, c, PKV_OK, pkv_seq_fork(c, a, &b));
    /* Copy-on-write: b's last block (2 of 4 slots used) is shared with a. */
    STEP(R, c, PKV_OK, pkv_seq_append(c, b, 3, toks + 10, slots, NULL));
    write_rows(R, c, slots, 10, 3, 2);
    for (int p = 10; p < 13; p++) tag_b[p] = 2;
    verify_rows(R, c, a, 10, tag_a, __LINE__);
    verify_rows(R, c, b, 13, tag_b, __LINE__);
    /* Enough sequences to grow the record table, some freed again. */
    for (int i = 0; i < 10; i++) STEP(R, c, PKV_OK, pkv_seq_create(c, (uint64_t)i, &many[i]));
    for (int i = 0; i < 10; i += 2) STEP(R, c, PKV_OK, pkv_seq_free(c, many[i]));
    STEP(R, c, PKV_OK, pkv_seq_append(c, many[1], 1, toks, NULL, NULL));
    /* A fork truncated into a shared block, then grown past it with tokens. */
    STEP(R, c, PKV_OK, pkv_seq_fork(c, b, &x));
    STEP(R, c, PKV_OK, pkv_seq_truncate(c, x, 5));
    STEP(R, c, PKV_OK, pkv_seq_append(c, x, 20, toks + 5, slots, NULL));
    write_rows(R, c, slots, 5, 20, 3);
    for (int p = 5; p < 25; p++) tag_x[p] = 3;
    verify_rows(R, c, x, 25, tag_x, __LINE__);
    verify_rows(R, c, b, 13, tag_b, __LINE__);
    int32_t need = 0, len = 0;
    STEP(R, c, PKV_OK, pkv_seq_blocks_needed(c, b, 40, &need));
    STEP(R, c, PKV_ERR_CAPACITY, pkv_seq_append(c, b, 4 * NB, toks, NULL, NULL));
    pkv_seq set[4] = {a, b, x, many[1]};
    exports(R, c, set, 4);
    STEP(R, c, PKV_OK, pkv_seq_free(c, a));
    STEP(R, c, PKV_ERR_NO_SEQ, pkv_seq_length(c, a, &len));
    STEP(R, c, PKV_OK, pkv_seq_truncate(c, x, 0));
    STEP(R, c, PKV_OK, pkv_seq_append(c, x, 9, toks, slots, NULL));
    STEP(R, c, PKV_OK, pkv_cache_check(c));
    pkv_stats stats = PKV_STATS_INIT;
    STEP(R, c, PKV_OK, pkv_cache_stats(c, &stats));
    finish_cache(R, c);
}

static void workload_metadata(runner *R, uint32_t flags) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 2 * NB;
    cfg.block_size = BS;
    cfg.flags = flags;
    cfg.allocator = (pkv_allocator){fa_alloc, fa_free, &R->fa};
    pkv_cache *c = create_cache(R, &cfg, __LINE__);
    if (!c) return;
    int32_t toks[64];
    for (int i = 0; i < 64; i++) toks[i] = 5 * i + 1;
    pkv_seq a = 0, b = 0, d = 0;
    pkv_block_copy cow;
    int64_t slots[64];
    STEP(R, c, PKV_OK, pkv_seq_create(c, 0, &a));
    STEP(R, c, PKV_OK, pkv_seq_append(c, a, 6, toks, slots, &cow));
    STEP(R, c, PKV_OK, pkv_seq_fork(c, a, &b));
    STEP(R, c, PKV_OK, pkv_seq_append(c, b, 1, toks + 6, slots, &cow));
    CHECK(cow.src >= 0 && cow.dst >= 0 && cow.src != cow.dst);
    STEP(R, c, PKV_OK, pkv_seq_append(c, a, 30, NULL, slots, &cow));
    STEP(R, c, PKV_OK, pkv_seq_fork(c, b, &d));
    STEP(R, c, PKV_OK, pkv_seq_append(c, d, 17, toks + 7, NULL, &cow));
    STEP(R, c, PKV_ERR_NULL, pkv_seq_append(c, d, 1, NULL, NULL, NULL));
    pkv_seq set[3] = {a, b, d};
    exports(R, c, set, 3);
    STEP(R, c, PKV_OK, pkv_seq_free(c, b));
    STEP(R, c, PKV_OK, pkv_seq_truncate(c, d, 3));
    STEP(R, c, PKV_ERR_MODE, pkv_store_write(c, 0, slots, 1, toks, NULL, PKV_F32));
    finish_cache(R, c);
}

/* FP8 MLA rows (656-byte tokens, V shared with K): quantizing writes, reads,
 * copy-on-write of quantized blocks. */
static void workload_fp8(runner *R) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 6;
    cfg.block_size = 2;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.kv_dtype = PKV_FP8_MLA656;
    cfg.allocator = (pkv_allocator){fa_alloc, fa_free, &R->fa};
    pkv_cache *c = create_cache(R, &cfg, __LINE__);
    if (!c) return;
    static float rows[3 * 576], back[3 * 576], v[3 * 512];
    for (int i = 0; i < 3 * 576; i++) rows[i] = (float)((i * 37) % 101 - 50) / 16.0f;
    int64_t slots[4];
    pkv_seq a = 0, b = 0;
    STEP(R, c, PKV_OK, pkv_seq_create(c, 0, &a));
    STEP(R, c, PKV_OK, pkv_seq_append(c, a, 3, NULL, slots, NULL));
    STEP(R, c, PKV_OK, pkv_store_write(c, 0, slots, 3, rows, NULL, PKV_F32));
    STEP(R, c, PKV_OK, pkv_seq_fork(c, a, &b));
    STEP(R, c, PKV_OK, pkv_seq_append(c, b, 1, NULL, slots + 3, NULL));
    STEP(R, c, PKV_OK, pkv_store_read(c, 0, slots, 3, back, v));
    rows[5] = NAN;
    STEP(R, c, PKV_ERR_NONFINITE, pkv_store_write(c, 0, slots + 3, 1, rows, NULL, PKV_F32));
    STEP(R, c, PKV_OK, pkv_seq_truncate(c, a, 1));
    finish_cache(R, c);
}

/* Prefix cache: registration (with dedup), lookups (hit, partial, miss, after
 * release: evictable blocks reclaimed), eviction under pressure; flags adds
 * PKV_FLAG_AUTO_REGISTER or not. */
static void workload_prefix(runner *R, uint32_t flags) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = NB;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE | flags;
    cfg.hash_key_set = 1;
    for (int i = 0; i < 16; i++) cfg.hash_key[i] = (uint8_t)(i * 7 + 1);
    cfg.allocator = (pkv_allocator){fa_alloc, fa_free, &R->fa};
    pkv_cache *c = create_cache(R, &cfg, __LINE__);
    if (!c) return;
    int32_t toks[64], other[64];
    for (int i = 0; i < 64; i++) {
        toks[i] = 3 * i + 2;
        other[i] = 100000 + i;
    }
    pkv_seq a = 0, b = 0, l1 = 0, l2 = 0, l3 = 0, l4 = 0, big = 0;
    pkv_block_copy cow;
    int32_t reg = 0, dd = 0, hit = 0;
    STEP(R, c, PKV_OK, pkv_seq_create(c, 5, &a));
    STEP(R, c, PKV_OK, pkv_seq_append(c, a, 10, toks, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_prefix_register(c, a, &reg, &dd));
    /* the same prompt in a second sequence: registration deduplicates */
    STEP(R, c, PKV_OK, pkv_seq_create(c, 5, &b));
    STEP(R, c, PKV_OK, pkv_seq_append(c, b, 9, toks, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_prefix_register(c, b, &reg, &dd));
    STEP(R, c, PKV_OK, pkv_prefix_lookup(c, 5, toks, 13, &l1, &hit));
    STEP(R, c, PKV_OK, pkv_seq_append(c, l1, 5, toks + hit, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_prefix_lookup(c, 6, toks, 13, &l2, &hit)); /* other namespace: miss */
    STEP(R, c, PKV_OK, pkv_prefix_lookup(c, 5, other, 3, &l3, &hit));
    STEP(R, c, PKV_OK, pkv_seq_free(c, a));
    STEP(R, c, PKV_OK, pkv_seq_free(c, b));
    STEP(R, c, PKV_OK, pkv_seq_free(c, l1));
    /* all released: the chain is evictable, and a lookup takes it back */
    STEP(R, c, PKV_OK, pkv_prefix_lookup(c, 5, toks, 20, &l4, &hit));
    STEP(R, c, PKV_OK, pkv_seq_free(c, l4));
    /* pressure: a long sequence evicts cached blocks */
    STEP(R, c, PKV_OK, pkv_seq_create(c, 5, &big));
    STEP(R, c, PKV_OK, pkv_seq_append(c, big, 9 * BS, other, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_prefix_register(c, big, &reg, &dd));
    STEP(R, c, PKV_OK, pkv_prefix_lookup(c, 5, toks, 20, &l4, &hit));
    pkv_seq set[3] = {l2, l3, big};
    exports(R, c, set, 3);
    STEP(R, c, PKV_OK, pkv_seq_truncate(c, big, 2));
    STEP(R, c, PKV_OK, pkv_seq_append(c, big, 30, other, NULL, &cow));
    finish_cache(R, c);
}

/* Extra keys: adding ranges grows a record's array, fork and lookup_ex reserve
 * the new record's ranges before anything changes. */
static void workload_extras(runner *R) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = NB;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER;
    cfg.hash_key_set = 1;
    for (int i = 0; i < 16; i++) cfg.hash_key[i] = (uint8_t)(i * 5 + 3);
    cfg.allocator = (pkv_allocator){fa_alloc, fa_free, &R->fa};
    pkv_cache *c = create_cache(R, &cfg, __LINE__);
    if (!c) return;
    int32_t toks[64];
    for (int i = 0; i < 64; i++) toks[i] = 7 * i + 1;
    pkv_mm_range mm[6];
    for (int k = 0; k < 6; k++) {
        mm[k].start = 2 + 3 * k;
        mm[k].len = 2;
        for (int i = 0; i < 16; i++) mm[k].hash[i] = (uint8_t)(k * 16 + i);
    }
    pkv_seq a = 0, f = 0, l = 0;
    pkv_block_copy cow;
    int32_t hit = 0, peek = 0;
    STEP(R, c, PKV_OK, pkv_seq_create(c, 1, &a));
    STEP(R, c, PKV_OK, pkv_seq_set_adapter(c, a, 42));
    for (int k = 0; k < 6; k++) STEP(R, c, PKV_OK, pkv_seq_add_mm(c, a, mm[k].start, mm[k].len, mm[k].hash));
    STEP(R, c, PKV_OK, pkv_seq_append(c, a, 20, toks, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_seq_fork(c, a, &f));
    STEP(R, c, PKV_OK, pkv_seq_truncate(c, f, 9));
    pkv_extra_keys x = PKV_EXTRA_KEYS_INIT;
    x.adapter_id = 42;
    x.num_mm = 6;
    x.mm = mm;
    STEP(R, c, PKV_OK, pkv_prefix_peek_ex(c, 1, toks, 20, &x, &peek, NULL));
    STEP(R, c, PKV_OK, pkv_prefix_lookup_ex(c, 1, toks, 20, &x, &l, &hit));
    STEP(R, c, PKV_OK, pkv_seq_append(c, l, 20 - hit, toks + hit, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_seq_free(c, a));
    finish_cache(R, c);
}

/* Host mode with prefix caching and a host tier (its arena and index come from
 * the cache's allocator): offload on eviction, promotion by a lookup (the
 * promoted rows read back equal), a chain promoted over a full pool, and a
 * host-mode swap out and in (the swap buffer is allocated), every step with
 * its allocations failing in turn. */
static void workload_tiers(runner *R) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = NB;
    cfg.block_size = BS;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = LAYERS;
    cfg.h_kv = HKV;
    cfg.d = D;
    cfg.dv = DV;
    cfg.v_separate = 1;
    cfg.kv_dtype = PKV_F32;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    cfg.hash_key_set = 1;
    for (int i = 0; i < 16; i++) cfg.hash_key[i] = (uint8_t)(i * 3 + 9);
    cfg.allocator = (pkv_allocator){fa_alloc, fa_free, &R->fa};
    pkv_cache *c = create_cache(R, &cfg, __LINE__);
    if (!c) return;
    STEP(R, c, PKV_OK, pkv_cache_add_host_tier(c, 2 * NB, 0));
    int32_t toks[NB * BS], other[NB * BS];
    for (int i = 0; i < NB * BS; i++) {
        toks[i] = 500 + i;
        other[i] = 90000 + i;
    }
    int64_t slots[NB * BS];
    int tag[NB * BS];
    for (int p = 0; p < NB * BS; p++) tag[p] = 4;
    pkv_seq a = 0, b = 0, l = 0;
    int32_t reg = 0, dd = 0, hit = 0, evicted = 0;
    pkv_block_copy cow;
    /* a 6-block prompt, registered and released: cached in the pool */
    STEP(R, c, PKV_OK, pkv_seq_create(c, 0, &a));
    STEP(R, c, PKV_OK, pkv_seq_append(c, a, 6 * BS, toks, slots, &cow));
    write_rows(R, c, slots, 0, 6 * BS, 4);
    STEP(R, c, PKV_OK, pkv_prefix_register(c, a, &reg, &dd));
    STEP(R, c, PKV_OK, pkv_seq_free(c, a));
    /* offload: evicted into the tier */
    STEP(R, c, PKV_OK, pkv_prefix_evict(c, 3, &evicted));
    /* pressure: another sequence takes every pool block, the rest goes to the tier */
    STEP(R, c, PKV_OK, pkv_seq_create(c, 0, &b));
    STEP(R, c, PKV_OK, pkv_seq_append(c, b, NB * BS, other, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_seq_free(c, b));
    /* promotion: the prompt comes back from the tier, with its bytes */
    STEP(R, c, PKV_OK, pkv_prefix_lookup(c, 0, toks, 6 * BS + 1, &l, &hit));
    test_checks_++;
    if (hit != 6 * BS) TEST_FAIL_("k=%ld: promoted %d tokens, want %d", R->fa.fail_at, hit, 6 * BS);
    verify_rows(R, c, l, hit, tag, __LINE__);
    /* swap out and in (host mode: a buffer from the allocator), bytes kept */
    STEP(R, c, PKV_OK, pkv_seq_append(c, l, 2, toks + hit, slots, &cow));
    write_rows(R, c, slots, hit, 2, 4);
    STEP(R, c, PKV_OK, pkv_seq_swap_out(c, l));
    STEP(R, c, PKV_ERR_STATE, pkv_seq_append(c, l, 1, toks, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_seq_swap_in(c, l));
    verify_rows(R, c, l, hit + 2, tag, __LINE__);
    finish_cache(R, c);
}

/* Metadata mode with two slot tiers: offloads, demotions, a promotion and a
 * swap, with the transfer queue drained between steps. */
static void workload_meta_tiers(runner *R) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = NB;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    cfg.hash_key_set = 1;
    for (int i = 0; i < 16; i++) cfg.hash_key[i] = (uint8_t)(i * 11 + 2);
    cfg.allocator = (pkv_allocator){fa_alloc, fa_free, &R->fa};
    pkv_cache *c = create_cache(R, &cfg, __LINE__);
    if (!c) return;
    STEP(R, c, PKV_OK, pkv_cache_add_host_tier(c, 4, 0));
    STEP(R, c, PKV_OK, pkv_cache_add_host_tier(c, 8, 0));
    int32_t toks[NB * BS], other[NB * BS];
    for (int i = 0; i < NB * BS; i++) {
        toks[i] = 700 + i;
        other[i] = 80000 + i;
    }
    pkv_tier_transfer xf[64];
    pkv_seq a = 0, b = 0, l = 0;
    int32_t reg = 0, dd = 0, hit = 0, evicted = 0, nx = 0;
    pkv_block_copy cow;
    STEP(R, c, PKV_OK, pkv_seq_create(c, 0, &a));
    STEP(R, c, PKV_OK, pkv_seq_append(c, a, 6 * BS, toks, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_prefix_register(c, a, &reg, &dd));
    STEP(R, c, PKV_OK, pkv_seq_free(c, a));
    STEP(R, c, PKV_OK, pkv_prefix_evict(c, 6, &evicted)); /* 4 into tier 0, 2 demoted to tier 1 */
    STEP(R, c, PKV_OK, pkv_tier_transfers_drain(c, xf, 64, &nx));
    STEP(R, c, PKV_OK, pkv_seq_create(c, 0, &b));
    STEP(R, c, PKV_OK, pkv_seq_append(c, b, 3 * BS + 1, other, NULL, &cow));
    STEP(R, c, PKV_OK, pkv_prefix_lookup(c, 0, toks, 6 * BS, &l, &hit));
    STEP(R, c, PKV_OK, pkv_tier_transfers_drain(c, xf, 64, &nx));
    STEP(R, c, PKV_OK, pkv_seq_swap_out(c, b));
    STEP(R, c, PKV_OK, pkv_tier_transfers_drain(c, xf, 64, &nx));
    STEP(R, c, PKV_OK, pkv_seq_swap_in(c, b));
    STEP(R, c, PKV_OK, pkv_tier_transfers_drain(c, xf, 64, &nx));
    finish_cache(R, c);
}

static void workload(runner *R) {
    workload_host(R);
    workload_fp8(R);
    workload_prefix(R, 0);
    workload_prefix(R, PKV_FLAG_AUTO_REGISTER);
    workload_extras(R);
    workload_tiers(R);
    workload_meta_tiers(R);
    workload_metadata(R, 0);
    workload_metadata(R, PKV_FLAG_THREAD_SAFE);
}

static void runner_reset(runner *R, long fail_at) {
    free(R->before);
    for (int i = 0; i < R->nfinal; i++) free(R->final[i]);
    memset(R, 0, sizeof *R);
    R->fa.fail_at = fail_at;
    R->fa.armed = 1;
}

int main(void) {
    runner ref, R;
    memset(&ref, 0, sizeof ref);
    memset(&R, 0, sizeof R);
    runner_reset(&ref, 0);
    workload(&ref);
    CHECK_INT(ref.fa.outstanding, 0);
    CHECK_INT(ref.fa.bad_frees, 0);
    long total_allocs = ref.fa.count, points = 0, steps = ref.steps;
    for (long k = 1;; k++) {
        runner_reset(&R, k);
        workload(&R);
        test_checks_ += 2;
        if (R.fa.outstanding != 0) TEST_FAIL_("k=%ld: %ld allocations leaked", k, R.fa.outstanding);
        if (R.fa.bad_frees != 0) TEST_FAIL_("k=%ld: %ld bad frees", k, R.fa.bad_frees);
        if (R.fa.failed == 0) break;
        points++;
        steps += R.steps;
        /* Every failure was retried, so the run ends where the clean run ended. */
        CHECK_INT(R.nfinal, ref.nfinal);
        for (int i = 0; i < R.nfinal && i < ref.nfinal; i++) {
            test_checks_++;
            if (R.final_len[i] != ref.final_len[i] || memcmp(R.final[i], ref.final[i], R.final_len[i]))
                TEST_FAIL_("k=%ld: final state of cache %d differs from the run without failures", k, i);
        }
        if (test_fails_) break;
    }
    CHECK_INT(points, total_allocs);
    printf("failinject: %ld allocation-failure points exercised (%ld allocations in the workload, "
           "%ld steps run, each checked)\n",
           points, total_allocs, steps);
    CHECK_INT(ref.nfinal, 9); /* every workload's cache was compared at its end */
    runner_reset(&R, 0);
    runner_reset(&ref, 0);
    return test_report("test_failinject");
}
