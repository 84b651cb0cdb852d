/* KV tiers below the pool: offload on eviction, promotion on lookup, demotion
 * between tiers, tier eviction, corrupted and foreign blobs, restart from a
 * backend that outlives the cache, and a random run in which every block a
 * lookup serves is read back and compared with the KV its tokens were written
 * with (K and V rows are a function of token id, position and layer). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"
#include "test.h"

enum { BS = 4, D = 6, DV = 3, LAYERS = 2 };

/* The KV of token t at position pos in layer l: what was written, and what a
 * lookup must serve. */
static float kv_val(int32_t t, int32_t pos, int32_t l, int i) { return (float)(t * 131 + pos * 17 + l * 7 + i) * 0.25f; }

static pkv_cache *make(int32_t nb, const uint8_t key[16]) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = LAYERS;
    cfg.h_kv = 1;
    cfg.d = D;
    cfg.dv = DV;
    cfg.v_separate = 1;
    cfg.kv_dtype = PKV_F32;
    /* A fixed key by default: the same blocks every run (a PKV_WEAK_HASH build,
     * whose 8-bit keys make blobs of one tier share a key, behaves the same). */
    static const uint8_t fixed[16] = {0x5a, 0x11, 0x7e, 0x42, 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8};
    cfg.hash_key_set = 1;
    memcpy(cfg.hash_key, key ? key : fixed, 16);
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    return c;
}

/* A sequence of tokens[0..n) with its KV written, registered. */
static pkv_seq prompt(pkv_cache *c, const int32_t *toks, int32_t n) {
    pkv_seq s;
    int64_t slots[256];
    float k[256 * D], v[256 * DV];
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append(c, s, n, toks, slots, NULL));
    for (int32_t l = 0; l < LAYERS; l++) {
        for (int32_t i = 0; i < n; i++) {
            for (int j = 0; j < D; j++) k[i * D + j] = kv_val(toks[i], i, l, j);
            for (int j = 0; j < DV; j++) v[i * DV + j] = kv_val(toks[i], i, l, 100 + j);
        }
        int wst = pkv_store_write(c, l, slots, n, k, v, PKV_F32);
        if (wst) printf("write: %s\n", pkv_cache_last_error(c));
        CHECK_OK(wst);
    }
    CHECK_OK(pkv_prefix_register(c, s, NULL, NULL));
    return s;
}

/* Looks tokens up and checks that every cached position serves exactly the KV
 * written for it; returns the cached length (the sequence is freed). */
static int32_t lookup_check(pkv_cache *c, const int32_t *toks, int32_t n) {
    pkv_seq s;
    int32_t hit = -1, nb = 0, blocks[64];
    CHECK_OK(pkv_prefix_lookup(c, 0, toks, n, &s, &hit));
    CHECK_OK(pkv_seq_blocks(c, s, blocks, 64, &nb));
    int64_t slots[256];
    for (int32_t i = 0; i < hit; i++) slots[i] = (int64_t)blocks[i / BS] * BS + i % BS;
    float k[256 * D], v[256 * DV];
    for (int32_t l = 0; l < LAYERS && hit > 0; l++) {
        CHECK_OK(pkv_store_read(c, l, slots, hit, k, v));
        int bad = 0;
        for (int32_t i = 0; i < hit; i++) {
            for (int j = 0; j < D; j++) bad += k[i * D + j] != kv_val(toks[i], i, l, j);
            for (int j = 0; j < DV; j++) bad += v[i * DV + j] != kv_val(toks[i], i, l, 100 + j);
        }
        CHECK_INT(bad, 0);
    }
    CHECK_OK(pkv_seq_free(c, s));
    return hit;
}

static pkv_tier_stats tstats(pkv_cache *c, int t) {
    pkv_tier_stats st = PKV_TIER_STATS_INIT;
    CHECK_OK(pkv_tier_stats_get(c, t, &st));
    return st;
}

/* Takes every block of the pool (evicting all cached ones), then frees them. */
static void flush_pool(pkv_cache *c, int32_t nb) {
    pkv_seq f;
    CHECK_OK(pkv_seq_create(c, 0, &f));
    CHECK_OK(pkv_seq_append(c, f, nb * BS, NULL, NULL, NULL));
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_seq_free(c, f));
}

static void test_offload_promote(void) {
    pkv_cache *c = make(4, NULL);
    CHECK_OK(pkv_cache_add_host_tier(c, 8, 0));
    int32_t a[12] = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    pkv_seq s = prompt(c, a, 12);
    CHECK_OK(pkv_seq_free(c, s));
    flush_pool(c, 4); /* the 3 cached blocks go to the tier */
    pkv_tier_stats t = tstats(c, 0);
    CHECK_INT(t.stores, 3);
    CHECK_INT(t.blocks, 3);
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st));
    CHECK_INT(st.cached_blocks, 3); /* still findable */
    CHECK_INT(st.evictable_blocks, 0);
    CHECK_INT(lookup_check(c, a, 12), 12); /* promoted back, KV intact */
    t = tstats(c, 0);
    CHECK_INT(t.hits, 3);
    CHECK_INT(t.blocks, 3); /* tiers keep their copy */
    CHECK(t.bytes_out > 0 && t.bytes_in > 0);
    /* the second time the blocks are in the pool (evictable) already */
    CHECK_INT(lookup_check(c, a, 12), 12);
    CHECK_INT(tstats(c, 0).hits, 3);
    CHECK_OK(pkv_cache_check(c));
    /* errors: not on a used cache, not without prefix caching (metadata mode:
     * tests/test_tiers_meta.c) */
    CHECK_STATUS(pkv_cache_add_host_tier(c, 4, 0), PKV_ERR_STATE);
    pkv_cache_destroy(c);
    pkv_config cfg;
    pkv_config_init(&cfg);
    CHECK_OK(pkv_cache_create(&cfg, &c));
    CHECK_STATUS(pkv_cache_add_host_tier(c, 4, 0), PKV_ERR_MODE);
    CHECK(strstr(pkv_cache_last_error(c), "prefix caching") != NULL);
    pkv_cache_destroy(c);
}

/* A full tier lets its least recently used block go; with a second tier it
 * moves there instead. */
static void test_tier_eviction_and_demotion(void) {
    int32_t a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b[8] = {21, 22, 23, 24, 25, 26, 27, 28};
    for (int two = 0; two <= 1; two++) {
        pkv_cache *c = make(4, NULL);
        CHECK_OK(pkv_cache_add_host_tier(c, 2, 0));
        if (two) CHECK_OK(pkv_cache_add_host_tier(c, 4, 0));
        pkv_seq s = prompt(c, a, 8);
        CHECK_OK(pkv_seq_free(c, s));
        flush_pool(c, 4); /* a's 2 blocks fill tier 0 */
        s = prompt(c, b, 8);
        CHECK_OK(pkv_seq_free(c, s));
        flush_pool(c, 4); /* b's 2 blocks push a's out of tier 0 */
        pkv_tier_stats t0 = tstats(c, 0);
        CHECK_INT(t0.blocks, 2);
        CHECK_INT(t0.evictions, 2);
        /* evictions are not faults: a deleted blob is no error */
        CHECK_INT(t0.errors, 0);
        CHECK_INT(t0.degraded, 0);
        CHECK_INT(lookup_check(c, b, 8), 8);
        if (two) {
            CHECK_INT(tstats(c, 1).blocks, 2);
            CHECK_INT(tstats(c, 1).stores, 2);
            CHECK_INT(lookup_check(c, a, 8), 8); /* from tier 1 */
            CHECK_INT(tstats(c, 1).hits, 2);
            CHECK_INT(tstats(c, 1).errors, 0);
        } else {
            CHECK_INT(lookup_check(c, a, 8), 0); /* gone, with its child */
        }
        CHECK_OK(pkv_cache_check(c));
        pkv_cache_destroy(c);
    }
}

/* ---- a test backend in plain memory that outlives caches and can be damaged ---- */

typedef struct mem_be {
    int n;
    uint8_t keys[64][16];
    uint8_t *blobs[64];
    size_t lens[64];
    int closed, fail_puts;
} mem_be;

static int mb_find(mem_be *m, const uint8_t key[16]) {
    for (int i = 0; i < m->n; i++)
        if (memcmp(m->keys[i], key, 16) == 0) return i;
    return -1;
}
static int mb_put(void *ctx, const uint8_t key[16], const void *blob, size_t len) {
    mem_be *m = ctx;
    if (m->fail_puts) return PKV_ERR_IO;
    int i = mb_find(m, key);
    if (i < 0) {
        if (m->n == 64) return PKV_ERR_CAPACITY;
        i = m->n++;
        memcpy(m->keys[i], key, 16);
        m->blobs[i] = NULL;
    }
    free(m->blobs[i]);
    m->blobs[i] = malloc(len);
    memcpy(m->blobs[i], blob, len);
    m->lens[i] = len;
    return PKV_OK;
}
static int mb_get(void *ctx, const uint8_t key[16], void *buf, size_t cap, size_t *len) {
    mem_be *m = ctx;
    int i = mb_find(m, key);
    if (i < 0) return PKV_ERR_NOT_FOUND;
    *len = m->lens[i];
    if (cap < m->lens[i]) return PKV_ERR_BUFFER;
    memcpy(buf, m->blobs[i], m->lens[i]);
    return PKV_OK;
}
static int mb_exists(void *ctx, const uint8_t key[16]) { return mb_find(ctx, key) >= 0; }
static int mb_del(void *ctx, const uint8_t key[16]) {
    mem_be *m = ctx;
    int i = mb_find(m, key);
    if (i < 0) return PKV_ERR_NOT_FOUND;
    free(m->blobs[i]);
    m->n--;
    memcpy(m->keys[i], m->keys[m->n], 16);
    m->blobs[i] = m->blobs[m->n];
    m->lens[i] = m->lens[m->n];
    return PKV_OK;
}
static int mb_scan(void *ctx, int (*fn)(void *, const uint8_t *, size_t), void *arg) {
    mem_be *m = ctx;
    for (int i = 0; i < m->n; i++)
        if (fn(arg, m->keys[i], m->lens[i])) break;
    return PKV_OK;
}
static void mb_close(void *ctx) { ((mem_be *)ctx)->closed++; }
static pkv_tier_backend mb_backend(mem_be *m) {
    pkv_tier_backend b;
    memset(&b, 0, sizeof b);
    b.size = sizeof b;
    b.ctx = m;
    b.put = mb_put;
    b.get = mb_get;
    b.exists = mb_exists;
    b.del = mb_del;
    b.scan = mb_scan;
    b.close = mb_close;
    return b;
}
static void mb_free(mem_be *m) {
    for (int i = 0; i < m->n; i++) free(m->blobs[i]);
    m->n = 0;
}

static void test_corrupt_and_failing_backend(void) {
    static mem_be m;
    memset(&m, 0, sizeof m);
    pkv_tier_backend be = mb_backend(&m);
    pkv_cache *c = make(4, NULL);
    CHECK_OK(pkv_cache_add_tier(c, &be, 16, 0));
    int32_t a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    pkv_seq s = prompt(c, a, 8);
    CHECK_OK(pkv_seq_free(c, s));
    flush_pool(c, 4);
    CHECK_INT(m.n, 2);
    /* A flipped byte in the second block's rows: its load fails the checksum. */
    for (int i = 0; i < m.n; i++) {
        uint64_t parent[2];
        memcpy(parent, m.blobs[i] + 64, 16);
        if (parent[0] | parent[1]) m.blobs[i][m.lens[i] / 2] ^= 0x40; /* mid-rows: found while unpacking */
    }
    CHECK_INT(lookup_check(c, a, 8), 4);
    pkv_tier_stats t = tstats(c, 0);
    CHECK_INT(t.corrupt, 1);
    CHECK_INT(t.misses, 1);
    CHECK_INT(t.degraded, 1);
    CHECK_OK(pkv_cache_check(c));
    /* A backend that fails every put: evicted blocks are dropped, not lost silently. */
    m.fail_puts = 1;
    int32_t b[8] = {31, 32, 33, 34, 35, 36, 37, 38};
    s = prompt(c, b, 8);
    CHECK_OK(pkv_seq_free(c, s));
    flush_pool(c, 4);
    CHECK(tstats(c, 0).errors >= 1);
    CHECK_INT(lookup_check(c, b, 8), 0);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
    CHECK_INT(m.closed, 1);
    mb_free(&m);
}

/* A backend that outlives the cache: a new cache with the same hash key and
 * geometry finds the prefixes again; another geometry finds nothing and the
 * foreign blobs are deleted; another hash key shares nothing. */
static void test_restart(void) {
    static mem_be m;
    memset(&m, 0, sizeof m);
    uint8_t key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, other[16] = {9};
    int32_t a[12] = {4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9};
    pkv_tier_backend be = mb_backend(&m);
    pkv_cache *c = make(4, key);
    CHECK_OK(pkv_cache_add_tier(c, &be, 16, 0));
    pkv_seq s = prompt(c, a, 12);
    CHECK_OK(pkv_seq_free(c, s));
    flush_pool(c, 4);
    pkv_cache_destroy(c);
    CHECK_INT(m.n, 3);

    c = make(4, key);
    CHECK_OK(pkv_cache_add_tier(c, &be, 16, 0));
    CHECK_INT(tstats(c, 0).restored, 3);
    CHECK_INT(lookup_check(c, a, 12), 12);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);

    c = make(4, other);
    CHECK_OK(pkv_cache_add_tier(c, &be, 16, 0));
    CHECK_INT(lookup_check(c, a, 12), 0);
    pkv_cache_destroy(c);

    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 4;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = LAYERS;
    cfg.d = D + 2;
    cfg.dv = DV;
    cfg.kv_dtype = PKV_F32;
    cfg.hash_key_set = 1;
    memcpy(cfg.hash_key, key, 16);
    CHECK_OK(pkv_cache_create(&cfg, &c));
    CHECK_OK(pkv_cache_add_tier(c, &be, 16, 0));
    CHECK_INT(tstats(c, 0).restored, 0);
    CHECK_INT(m.n, 0); /* foreign blobs deleted */
    pkv_cache_destroy(c);
    mb_free(&m);
}

/* Random prompts from a few stems through a small pool and two small tiers:
 * every hit serves exactly the KV its tokens were written with. */
static void test_random(void) {
    test_rng rng = {0x7e57};
    long ops = test_scaled(4000);
    if (ops < 200) ops = 200;
    for (int two = 0; two <= 1; two++) {
        pkv_cache *c = make(12, NULL);
        CHECK_OK(pkv_cache_add_host_tier(c, 6, 0));
        if (two) CHECK_OK(pkv_cache_add_host_tier(c, 10, 0));
        int64_t hits = 0;
        for (long op = 0; op < ops; op++) {
            int32_t toks[32], n = 4 + (int32_t)test_below(&rng, 28), stem = (int32_t)test_below(&rng, 5);
            for (int32_t i = 0; i < n; i++) toks[i] = i < 12 ? stem * 100 + i : (int32_t)test_below(&rng, 3) * 1000 + i;
            if (test_below(&rng, 2)) {
                hits += lookup_check(c, toks, n);
            } else {
                pkv_stats st = PKV_STATS_INIT;
                CHECK_OK(pkv_cache_stats(c, &st));
                if (st.free_blocks + st.evictable_blocks < (n + BS - 1) / BS) continue;
                pkv_seq s = prompt(c, toks, n);
                CHECK_OK(pkv_seq_free(c, s));
            }
            if (op % 50 == 0 && pkv_cache_check(c) != PKV_OK) {
                TEST_FAIL_("op %ld: %s", op, pkv_cache_last_error(c));
                break;
            }
        }
        CHECK_OK(pkv_cache_check(c));
        CHECK(hits > 0);
        CHECK(tstats(c, 0).hits > 0);
        printf("tiers: %ld random operations with %d tier(s): %lld tokens served, tier 0 %lld hits %lld stores\n", ops,
               two + 1, (long long)hits, (long long)tstats(c, 0).hits, (long long)tstats(c, 0).stores);
        pkv_cache_destroy(c);
    }
}

/* The file tier under a cache: a new process (here: a new cache) opened on
 * the same directory with the same hash key serves the prefix again; a byte
 * flipped in a slab file afterwards is a miss, never wrong KV. */
static void rm_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[600];
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') {
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

static pkv_cache *with_file_tier(const char *dir, const uint8_t key[16]) {
    pkv_cache *c = make(4, key);
    size_t blob = 0;
    CHECK_OK(pkv_tier_blob_size(c, &blob));
    pkv_tier_backend be;
    char detail[256] = "";
    int st = pkv_tier_file_open(dir, 64 * (uint64_t)blob, blob, PKV_FILE_TIER_FSYNC, &be, detail);
    if (st != PKV_OK) printf("file tier: %s\n", detail);
    CHECK_OK(st);
    if (st == PKV_OK) CHECK_OK(pkv_cache_add_tier(c, &be, 32, 0));
    return c;
}

static void test_file_tier_restart(void) {
    char dir[] = "/tmp/pkv_tiers_XXXXXX";
    if (!mkdtemp(dir)) {
        TEST_FAIL_("mkdtemp failed");
        return;
    }
    uint8_t key[16] = {7, 7, 7};
    int32_t a[12] = {40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51};
    pkv_cache *c = with_file_tier(dir, key);
    pkv_seq s = prompt(c, a, 12);
    CHECK_OK(pkv_seq_free(c, s));
    flush_pool(c, 4);
    CHECK_INT(tstats(c, 0).stores, 3);
    pkv_cache_destroy(c);

    c = with_file_tier(dir, key);
    CHECK_INT(tstats(c, 0).restored, 3);
    CHECK_INT(lookup_check(c, a, 12), 12);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);

    /* Flip one byte in every slab file's payload region: whatever is found must
     * still be exactly what was written (lookup_check compares every value). */
    DIR *d = opendir(dir);
    struct dirent *de;
    int flipped = 0;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char p[600];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        FILE *f = fopen(p, "r+b");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        for (long off = 4096; off < size; off += 65536) {
            fseek(f, off, SEEK_SET);
            int ch = fgetc(f);
            fseek(f, off, SEEK_SET);
            fputc(ch ^ 0x10, f);
            flipped++;
        }
        fclose(f);
    }
    if (d) closedir(d);
    CHECK(flipped > 0);
    c = with_file_tier(dir, key);
    int32_t hit = lookup_check(c, a, 12);
    CHECK(hit >= 0 && hit <= 12);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
    rm_dir(dir);
}

/* evict(n) sends blocks to the tier like the pool's own evictions; reset
 * empties the index and the tiers. */
static void test_evict_reset_with_tiers(void) {
    pkv_cache *c = make(4, NULL);
    CHECK_OK(pkv_cache_add_host_tier(c, 8, 0));
    int32_t a[12] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8}, n = -1, cached = -1, pool = -1;
    pkv_seq s = prompt(c, a, 12);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_prefix_evict(c, 2, &n));
    CHECK_INT(n, 2);
    CHECK_INT(tstats(c, 0).stores, 2);
    CHECK_OK(pkv_prefix_peek(c, 0, a, 12, &cached, &pool));
    CHECK_INT(cached, 12); /* the whole chain, two of its blocks in the tier */
    CHECK_INT(pool, 4);
    CHECK_INT(lookup_check(c, a, 12), 12);
    CHECK_OK(pkv_prefix_reset(c));
    CHECK_INT(tstats(c, 0).blocks, 0);
    CHECK_INT(lookup_check(c, a, 12), 0);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

/* Write-through: registered blocks reach tier 0 at once; a process that dies
 * without evicting anything still leaves them for the next one. */
static void test_write_through(void) {
    pkv_cache *c = make(8, NULL);
    CHECK_STATUS(pkv_cache_add_host_tier(c, 8, 0x80), PKV_ERR_INVALID);
    CHECK_OK(pkv_cache_add_host_tier(c, 8, PKV_TIER_WRITE_THROUGH));
    CHECK_STATUS(pkv_cache_add_host_tier(c, 8, PKV_TIER_WRITE_THROUGH), PKV_ERR_INVALID); /* tier 0 only */
    int32_t a[10] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0};
    pkv_seq s = prompt(c, a, 10);
    CHECK_INT(tstats(c, 0).stores, 2);
    CHECK_INT(tstats(c, 0).blocks, 2);
    CHECK_OK(pkv_seq_free(c, s));
    flush_pool(c, 8); /* already in the tier: nothing more written */
    CHECK_INT(tstats(c, 0).stores, 2);
    CHECK_INT(lookup_check(c, a, 10), 8);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

int main(void) {
    test_write_through();
    test_evict_reset_with_tiers();
    test_file_tier_restart();
    test_offload_promote();
    test_tier_eviction_and_demotion();
    test_corrupt_and_failing_backend();
    test_restart();
    test_random();
    return test_report("test_tiers");
}
