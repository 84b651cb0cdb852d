/* Asynchronous loads from backend tiers (pkv_tier_async_start,
 * pkv_prefix_lookup_async, pkv_seq_load_poll / _wait): a backend whose reads
 * wait on a gate the test opens holds loads in flight for as long as the test
 * needs, so "loading" is observed, not hoped for. Checked: ready / loading
 * counts; every call that would read or extend a loading block is refused;
 * the bytes every finished load serves equal what was written; a corrupt or
 * vanished blob cuts the sequences that hold it; freeing or destroying with
 * loads in flight; a synchronous lookup that meets loading blocks waits for
 * them; two threads on a thread-safe cache with evictions between lookups
 * (run under TSan by `make tsan`); the file tier; pkv_cache_check after every
 * step. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "pagedkv.h"
#include "test.h"
#include "tier_file.h" /* pkv__tier_file_io: failing and damaging reads */

enum { BS = 4, D = 6, DV = 3, LAYERS = 2, NB = 16, MAXB = 64 };

static float kv_val(int32_t t, int32_t pos, int32_t l, int i) { return (float)(t * 131 + pos * 17 + l * 7 + i) * 0.25f; }

/* ---- a backend in memory whose reads wait on a gate ---- */
typedef struct gate_be {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int closed;      /* gets wait while set */
    int delay_us;    /* each get sleeps this long */
    int max_wait_ms; /* > 0: a get waits at most this long at a closed gate (the library
                      * calls a backend one thread at a time, so a parked get also holds
                      * off the caller's puts: the random run must not park for good) */
    int n, gets, waiting;
    uint8_t keys[MAXB][16];
    uint8_t *blobs[MAXB];
    size_t lens[MAXB];
} gate_be;

static int gb_find(gate_be *g, const uint8_t key[16]) {
    for (int i = 0; i < g->n; i++)
        if (memcmp(g->keys[i], key, 16) == 0) return i;
    return -1;
}
static int gb_put(void *ctx, const uint8_t key[16], const void *blob, size_t len) {
    gate_be *g = ctx;
    pthread_mutex_lock(&g->mu);
    int i = gb_find(g, key), st = PKV_OK;
    if (i < 0 && g->n == MAXB) st = PKV_ERR_CAPACITY;
    else {
        if (i < 0) {
            i = g->n++;
            memcpy(g->keys[i], key, 16);
            g->blobs[i] = NULL;
        }
        free(g->blobs[i]);
        g->blobs[i] = malloc(len);
        memcpy(g->blobs[i], blob, len);
        g->lens[i] = len;
    }
    pthread_mutex_unlock(&g->mu);
    return st;
}
static int gb_get(void *ctx, const uint8_t key[16], void *buf, size_t cap, size_t *len) {
    gate_be *g = ctx;
    pthread_mutex_lock(&g->mu);
    g->waiting++;
    if (g->max_wait_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)g->max_wait_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        while (g->closed && pthread_cond_timedwait(&g->cv, &g->mu, &ts) == 0) {
        }
    } else {
        while (g->closed) pthread_cond_wait(&g->cv, &g->mu);
    }
    g->waiting--;
    g->gets++;
    int d = g->delay_us;
    pthread_mutex_unlock(&g->mu);
    if (d) usleep((useconds_t)d);
    pthread_mutex_lock(&g->mu);
    int i = gb_find(g, key), st = PKV_OK;
    if (i < 0) st = PKV_ERR_NOT_FOUND;
    else if (cap < g->lens[i]) st = PKV_ERR_BUFFER;
    else {
        memcpy(buf, g->blobs[i], g->lens[i]);
        *len = g->lens[i];
    }
    pthread_mutex_unlock(&g->mu);
    return st;
}
static int gb_exists(void *ctx, const uint8_t key[16]) {
    gate_be *g = ctx;
    pthread_mutex_lock(&g->mu);
    int r = gb_find(g, key) >= 0;
    pthread_mutex_unlock(&g->mu);
    return r;
}
static int gb_del(void *ctx, const uint8_t key[16]) {
    gate_be *g = ctx;
    pthread_mutex_lock(&g->mu);
    int i = gb_find(g, key), st = PKV_OK;
    if (i < 0) st = PKV_ERR_NOT_FOUND;
    else {
        free(g->blobs[i]);
        g->n--;
        memcpy(g->keys[i], g->keys[g->n], 16);
        g->blobs[i] = g->blobs[g->n];
        g->lens[i] = g->lens[g->n];
    }
    pthread_mutex_unlock(&g->mu);
    return st;
}
static void gb_close(void *ctx) { (void)ctx; }

static void gate_init(gate_be *g) {
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
}
static void gate_set(gate_be *g, int closed) {
    pthread_mutex_lock(&g->mu);
    g->closed = closed;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}
static void gate_free(gate_be *g) {
    for (int i = 0; i < g->n; i++) free(g->blobs[i]);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}
/* Flips one byte in the middle of the blob stored under the key of the
 * i-th stored blob whose first token id (at the identity's token offset) is
 * tok; returns whether one was found. */
static int gate_corrupt_first_token(gate_be *g, int32_t tok, size_t tok_off) {
    int hit = 0;
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < g->n && !hit; i++) {
        int32_t t0;
        memcpy(&t0, g->blobs[i] + tok_off, 4);
        if (t0 == tok) {
            g->blobs[i][g->lens[i] / 2] ^= 0x40;
            hit = 1;
        }
    }
    pthread_mutex_unlock(&g->mu);
    return hit;
}

static pkv_tier_backend gate_backend(gate_be *g) {
    pkv_tier_backend b;
    memset(&b, 0, sizeof b);
    b.size = sizeof b;
    b.ctx = g;
    b.put = gb_put;
    b.get = gb_get;
    b.exists = gb_exists;
    b.del = gb_del;
    b.close = gb_close;
    return b;
}

/* ---- cache helpers ---- */

static pkv_cache *make(int thread_safe, const pkv_tier_backend *be, int io_threads) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = NB;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE | (thread_safe ? PKV_FLAG_THREAD_SAFE : 0);
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = LAYERS;
    cfg.h_kv = 1;
    cfg.d = D;
    cfg.dv = DV;
    cfg.v_separate = 1;
    cfg.kv_dtype = PKV_F32;
    static const uint8_t fixed[16] = {0x5a, 0x11, 0x7e, 0x42, 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8};
    cfg.hash_key_set = 1;
    memcpy(cfg.hash_key, fixed, 16);
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    if (be) CHECK_OK(pkv_cache_add_tier(c, be, MAXB, 0));
    if (io_threads) CHECK_OK(pkv_tier_async_start(c, io_threads));
    return c;
}

/* Writes and registers tokens[0..n), then frees the sequence. */
static void put_prompt(pkv_cache *c, const int32_t *toks, int32_t n) {
    pkv_seq s;
    int64_t slots[64];
    float k[64 * D], v[64 * DV];
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append(c, s, n, toks, slots, NULL));
    for (int32_t l = 0; l < LAYERS; l++) {
        for (int32_t i = 0; i < n; i++) {
            for (int j = 0; j < D; j++) k[i * D + j] = kv_val(toks[i], i, l, j);
            for (int j = 0; j < DV; j++) v[i * DV + j] = kv_val(toks[i], i, l, 100 + j);
        }
        CHECK_OK(pkv_store_write(c, l, slots, n, k, v, PKV_F32));
    }
    CHECK_OK(pkv_prefix_register(c, s, NULL, NULL));
    CHECK_OK(pkv_seq_free(c, s));
}

/* Every cached position of s serves exactly the KV written for its token. */
static void check_bytes(pkv_cache *c, pkv_seq s, const int32_t *toks) {
    int32_t len = -1, nb = 0, blocks[NB];
    CHECK_OK(pkv_seq_length(c, s, &len));
    CHECK_OK(pkv_seq_blocks(c, s, blocks, NB, &nb));
    int64_t slots[64];
    for (int32_t i = 0; i < len; i++) slots[i] = (int64_t)blocks[i / BS] * BS + i % BS;
    float k[64 * D], v[64 * DV];
    for (int32_t l = 0; l < LAYERS && len > 0; l++) {
        CHECK_OK(pkv_store_read(c, l, slots, len, k, v));
        int bad = 0;
        for (int32_t i = 0; i < len; i++) {
            for (int j = 0; j < D; j++) bad += k[i * D + j] != kv_val(toks[i], i, l, j);
            for (int j = 0; j < DV; j++) bad += v[i * DV + j] != kv_val(toks[i], i, l, 100 + j);
        }
        CHECK_INT(bad, 0);
    }
}

/* Evicts every cached block of the pool into the tier. */
static void to_tier(pkv_cache *c) {
    int32_t ev = 0;
    CHECK_OK(pkv_prefix_evict(c, NB, &ev));
    CHECK_OK(pkv_cache_check(c));
}

static pkv_tier_stats tstats(pkv_cache *c) {
    pkv_tier_stats st = PKV_TIER_STATS_INIT;
    CHECK_OK(pkv_tier_stats_get(c, 0, &st));
    return st;
}

static void prompt_tokens(int32_t *t, int32_t n, int32_t base) {
    for (int32_t i = 0; i < n; i++) t[i] = base + i * 3;
}

/* Waits until the backend has n gets parked at its gate. */
static void wait_parked(gate_be *g, int n) {
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&g->mu);
        int w = g->waiting;
        pthread_mutex_unlock(&g->mu);
        if (w >= n) return;
        usleep(1000);
    }
    CHECK(0 && "loads never reached the backend");
}

/* ---- tests ---- */

static void test_refusals_and_bytes(void) {
    gate_be g;
    gate_init(&g);
    pkv_tier_backend be = gate_backend(&g);
    pkv_cache *c = make(0, &be, 2);
    int32_t a[24];
    prompt_tokens(a, 24, 1000);
    put_prompt(c, a, 24);
    /* the first two blocks stay in the pool, the other four go to the tier */
    to_tier(c);
    pkv_seq s0;
    int32_t got = -1;
    CHECK_OK(pkv_prefix_lookup(c, 0, a, 8, &s0, &got)); /* synchronous: loads 2 blocks, no loads in flight */
    CHECK_INT(got, 8);
    CHECK_OK(pkv_seq_free(c, s0));

    gate_set(&g, 1);
    pkv_seq s, s2;
    int32_t ready = -1, loading = -1, len = -1;
    CHECK_OK(pkv_prefix_lookup_async(c, 0, a, 24, NULL, &s, &ready, &loading));
    CHECK_INT(ready, 8);
    CHECK_INT(loading, 16);
    CHECK_OK(pkv_cache_check(c)); /* the jobs' references are counted */
    wait_parked(&g, 1);
    /* refused while loading */
    int32_t blocks[NB], nb;
    int64_t slots[4];
    pkv_block_copy cow;
    CHECK_INT(pkv_seq_blocks(c, s, blocks, NB, &nb), PKV_ERR_STATE);
    CHECK(strstr(pkv_cache_last_error(c), "loading") != NULL);
    CHECK_INT(pkv_seq_append(c, s, 1, a, slots, &cow), PKV_ERR_STATE);
    CHECK_INT(pkv_seq_truncate(c, s, 4), PKV_ERR_STATE);
    pkv_seq child;
    CHECK_INT(pkv_seq_fork(c, s, &child), PKV_ERR_STATE);
    CHECK_INT(pkv_prefix_register(c, s, NULL, NULL), PKV_ERR_STATE);
    CHECK_INT(pkv_seq_swap_out(c, s), PKV_ERR_STATE);
    int32_t table[8], lens[1], need;
    CHECK_INT(pkv_export_flashmla(c, &s, 1, table, 8, lens, &need), PKV_ERR_STATE);
    CHECK_OK(pkv_seq_length(c, s, &len));
    CHECK_INT(len, 24);
    CHECK_OK(pkv_seq_load_poll(c, s, &loading, &len));
    CHECK_INT(loading, 16);
    /* a second async lookup shares the loading blocks */
    CHECK_OK(pkv_prefix_lookup_async(c, 0, a, 24, NULL, &s2, &ready, &loading));
    CHECK_INT(ready, 8);
    CHECK_INT(loading, 16);
    CHECK_OK(pkv_cache_check(c));
    gate_set(&g, 0);
    /* an export applies the loads that ended (no poll needed before it) */
    int est = PKV_ERR_STATE;
    for (int k = 0; k < 20000 && est == PKV_ERR_STATE; k++)
        if ((est = pkv_export_flashmla(c, &s2, 1, table, 8, lens, &need)) == PKV_ERR_STATE) usleep(500);
    CHECK_OK(est);
    CHECK_INT(lens[0], 24);
    CHECK_OK(pkv_seq_load_wait(c, s, &len));
    CHECK_INT(len, 24);
    CHECK_OK(pkv_seq_load_poll(c, s2, &loading, &len));
    CHECK_INT(loading, 0);
    check_bytes(c, s, a);
    check_bytes(c, s2, a);
    CHECK_OK(pkv_seq_blocks(c, s, blocks, NB, &nb));
    int32_t b2[NB], nb2;
    CHECK_OK(pkv_seq_blocks(c, s2, b2, NB, &nb2));
    CHECK_INT(nb2, nb);
    CHECK(memcmp(blocks, b2, sizeof(int32_t) * (size_t)nb) == 0); /* the same blocks, loaded once */
    CHECK_INT(tstats(c).hits, 2 + 4);
    CHECK_INT(tstats(c).errors, 0);
    /* a sequence whose loads ended works as any other */
    CHECK_OK(pkv_seq_append(c, s, 1, a, slots, &cow));
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_seq_free(c, s2));
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
    gate_free(&g);
}

static void test_failed_load_cuts(void) {
    gate_be g;
    gate_init(&g);
    pkv_tier_backend be = gate_backend(&g);
    pkv_cache *c = make(0, &be, 3);
    int32_t a[24];
    prompt_tokens(a, 24, 5000);
    put_prompt(c, a, 24);
    to_tier(c);
    CHECK_INT(g.n, 6);
    /* the third block (tokens 8..11) is damaged in the store */
    size_t blob = 0;
    CHECK_OK(pkv_tier_blob_size(c, &blob));
    CHECK(gate_corrupt_first_token(&g, a[8], 104)); /* token ids follow the 104-byte header */
    gate_set(&g, 1);
    pkv_seq s, s2;
    int32_t ready, loading, len = -1;
    CHECK_OK(pkv_prefix_lookup_async(c, 0, a, 24, NULL, &s, &ready, &loading));
    CHECK_INT(ready, 0);
    CHECK_INT(loading, 24);
    CHECK_OK(pkv_prefix_lookup_async(c, 0, a, 16, NULL, &s2, &ready, &loading));
    CHECK_INT(loading, 16);
    gate_set(&g, 0);
    /* the loads end (one failed) with nothing reaped yet: an append now must not
     * land at the cut length the engine has not been told of */
    usleep(200000);
    {
        int64_t sl[4];
        pkv_block_copy cw;
        CHECK_INT(pkv_seq_append(c, s, 4, a + 8, sl, &cw), PKV_ERR_STATE);
        CHECK_INT(pkv_seq_append(c, s, 4, a + 8, sl, &cw), PKV_ERR_STATE);
    }
    CHECK_OK(pkv_seq_load_wait(c, s, &len));
    CHECK_INT(len, 8); /* cut before the bad block */
    CHECK_OK(pkv_seq_load_wait(c, s2, &len));
    CHECK_INT(len, 8);
    check_bytes(c, s, a);
    CHECK_INT(tstats(c).corrupt, 1);
    /* the blocks chained below the bad one leave the tier with it: their loads,
     * when they had not read yet, miss too */
    CHECK(tstats(c).misses >= 1 && tstats(c).misses <= 4);
    CHECK_OK(pkv_cache_check(c));
    /* the bad block and what chains below it left the cache; the rest serves */
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_seq_free(c, s2));
    pkv_seq s3;
    int32_t got;
    CHECK_OK(pkv_prefix_lookup(c, 0, a, 24, &s3, &got));
    CHECK_INT(got, 8);
    check_bytes(c, s3, a);
    /* the engine computes the rest again */
    int64_t slots[16];
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_append(c, s3, 16, a + 8, slots, &cow));
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_seq_free(c, s3));
    pkv_cache_destroy(c);
    gate_free(&g);
}

typedef struct opener {
    gate_be *g;
    int after_us;
} opener;
static void *open_later(void *p) {
    opener *o = p;
    usleep((useconds_t)o->after_us);
    gate_set(o->g, 0);
    return NULL;
}

static void test_free_sync_and_destroy(void) {
    gate_be g;
    gate_init(&g);
    pkv_tier_backend be = gate_backend(&g);
    pkv_cache *c = make(0, &be, 1);
    int32_t a[16];
    prompt_tokens(a, 16, 9000);
    put_prompt(c, a, 16);
    to_tier(c);
    /* freed while loading: the loads finish and leave cached blocks */
    gate_set(&g, 1);
    pkv_seq s;
    int32_t ready, loading, got = -1;
    CHECK_OK(pkv_prefix_lookup_async(c, 0, a, 16, NULL, &s, &ready, &loading));
    CHECK_INT(loading, 16);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_cache_check(c));
    /* a synchronous lookup of the same prompt waits for the loads */
    pthread_t th;
    opener o = {&g, 20000};
    CHECK(pthread_create(&th, NULL, open_later, &o) == 0);
    CHECK_OK(pkv_prefix_lookup(c, 0, a, 16, &s, &got));
    pthread_join(th, NULL);
    CHECK_INT(got, 16);
    check_bytes(c, s, a);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_cache_check(c));
    /* destroyed with loads in flight (slow reads): the thread ends the read it
     * is in; the queued ones are dropped, not read */
    to_tier(c);
    g.delay_us = 20000;
    pthread_mutex_lock(&g.mu);
    int gets0 = g.gets;
    pthread_mutex_unlock(&g.mu);
    CHECK_OK(pkv_prefix_lookup_async(c, 0, a, 16, NULL, &s, &ready, &loading));
    CHECK_INT(loading, 16);
    pkv_cache_destroy(c);
    CHECK(g.gets - gets0 >= 0 && g.gets - gets0 <= 2); /* of 16 / BS = 4 queued */
    gate_free(&g);
}

static void test_arguments(void) {
    gate_be g;
    gate_init(&g);
    pkv_tier_backend be = gate_backend(&g);
    pkv_cache *c = make(0, NULL, 0);
    CHECK_INT(pkv_tier_async_start(NULL, 1), PKV_ERR_NULL);
    CHECK_INT(pkv_tier_async_start(c, 1), PKV_ERR_STATE); /* no backend tier */
    int32_t a[8], ready = -1, loading = -1, len;
    prompt_tokens(a, 8, 7);
    put_prompt(c, a, 8);
    pkv_seq s;
    /* without I/O threads the async lookup is the synchronous one */
    CHECK_OK(pkv_prefix_lookup_async(c, 0, a, 8, NULL, &s, &ready, &loading));
    CHECK_INT(ready, 8);
    CHECK_INT(loading, 0);
    CHECK_OK(pkv_seq_load_wait(c, s, &len));
    CHECK_INT(len, 8);
    CHECK_INT(pkv_prefix_lookup_async(c, 0, a, 8, NULL, &s, NULL, &loading), PKV_ERR_NULL);
    CHECK_INT(pkv_seq_load_poll(c, s, NULL, NULL), PKV_ERR_NULL);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_INT(pkv_seq_load_poll(c, s, &loading, NULL), PKV_ERR_NO_SEQ);
    CHECK_INT(pkv_seq_load_wait(c, s, NULL), PKV_ERR_NO_SEQ);
    pkv_cache_destroy(c);
    c = make(0, &be, 0);
    CHECK_INT(pkv_tier_async_start(c, 0), PKV_ERR_INVALID);
    CHECK_INT(pkv_tier_async_start(c, 65), PKV_ERR_INVALID);
    CHECK_OK(pkv_tier_async_start(c, 2));
    CHECK_INT(pkv_tier_async_start(c, 2), PKV_ERR_STATE);
    CHECK_INT(pkv_cache_add_host_tier(c, 4, 0), PKV_ERR_STATE); /* tiers come first */
    pkv_tier_backend bad = gate_backend(&g);
    bad.flags = 0x80;
    pkv_cache *c2 = make(0, NULL, 0);
    CHECK_INT(pkv_cache_add_tier(c2, &bad, 4, 0), PKV_ERR_INVALID); /* unknown backend flags */
    pkv_cache_destroy(c2);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
    /* metadata mode: the engine moves the bytes */
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = NB;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    CHECK_OK(pkv_cache_add_host_tier(c, 8, 0));
    CHECK_INT(pkv_tier_async_start(c, 1), PKV_ERR_MODE);
    pkv_cache_destroy(c);
    gate_free(&g);
}

/* Two threads look prompts up asynchronously, wait, check every byte and
 * evict, on one thread-safe cache (TSan: make tsan). */
typedef struct worker {
    pkv_cache *c;
    int32_t base;
    int iters;
} worker;

static void *work(void *p) {
    worker *w = p;
    int32_t a[16];
    prompt_tokens(a, 16, w->base);
    for (int it = 0; it < w->iters; it++) {
        pkv_seq s;
        int32_t ready, loading, len = -1;
        CHECK_OK(pkv_prefix_lookup_async(w->c, 0, a, 16, NULL, &s, &ready, &loading));
        CHECK_INT(ready + loading, 16);
        CHECK_OK(pkv_seq_load_wait(w->c, s, &len));
        CHECK_INT(len, 16);
        check_bytes(w->c, s, a);
        CHECK_OK(pkv_seq_free(w->c, s));
        int32_t ev;
        CHECK_OK(pkv_prefix_evict(w->c, it % 3 == 0 ? NB : 2, &ev));
    }
    return NULL;
}

static void test_threads(int file) {
    gate_be g;
    gate_init(&g);
    g.delay_us = 100;
    pkv_tier_backend be = gate_backend(&g);
    char dir[] = "/tmp/pkv_async_XXXXXX";
    pkv_cache *c;
    if (file) { /* the file tier's gets run in parallel (PKV_BACKEND_CONCURRENT_GET) */
        CHECK(mkdtemp(dir) != NULL);
        c = make(1, NULL, 0);
        size_t blob = 0;
        CHECK_OK(pkv_tier_blob_size(c, &blob));
        char detail[256];
        CHECK_OK(pkv_tier_file_open(dir, (uint64_t)blob * MAXB, blob, 0, &be, detail));
        CHECK(be.flags & PKV_BACKEND_CONCURRENT_GET);
        CHECK_OK(pkv_cache_add_tier(c, &be, MAXB, 0));
        CHECK_OK(pkv_tier_async_start(c, 2));
    } else {
        c = make(1, &be, 2);
    }
    int32_t a[16], b[16];
    prompt_tokens(a, 16, 20000);
    prompt_tokens(b, 16, 30000);
    put_prompt(c, a, 16);
    put_prompt(c, b, 16);
    to_tier(c);
    worker w[2] = {{c, 20000, 60}, {c, 30000, 60}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&th[i], NULL, work, &w[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    CHECK_OK(pkv_cache_check(c));
    CHECK_INT(tstats(c).errors, 0);
    CHECK(tstats(c).hits > 0);
    pkv_cache_destroy(c);
    gate_free(&g);
    if (file) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        CHECK(system(cmd) == 0);
    }
}

/* The file tier under I/O threads. */
static void test_file_tier(void) {
    char dir[] = "/tmp/pkv_async_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    pkv_cache *c = make(0, NULL, 0);
    size_t blob = 0;
    CHECK_OK(pkv_tier_blob_size(c, &blob));
    pkv_tier_backend fb;
    char detail[256];
    CHECK_OK(pkv_tier_file_open(dir, (uint64_t)blob * 32, blob, 0, &fb, detail));
    CHECK_OK(pkv_cache_add_tier(c, &fb, 32, 0));
    CHECK_OK(pkv_tier_async_start(c, 2));
    int32_t a[32];
    prompt_tokens(a, 32, 40000);
    put_prompt(c, a, 32);
    to_tier(c);
    pkv_seq s;
    int32_t ready, loading, len;
    CHECK_OK(pkv_prefix_lookup_async(c, 0, a, 32, NULL, &s, &ready, &loading));
    CHECK_INT(ready + loading, 32);
    CHECK_OK(pkv_seq_load_wait(c, s, &len));
    CHECK_INT(len, 32);
    check_bytes(c, s, a);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* A random run on one cache: prompts written, async lookups kept open, polls,
 * waits (every byte of what a wait returns checked), frees, evictions into the
 * tier, blobs damaged in the store, the gate closed and opened; the cache's
 * invariants after every operation. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static void test_random(void) {
    gate_be g;
    gate_init(&g);
    pkv_tier_backend be = gate_backend(&g);
    g.max_wait_ms = 2;
    pkv_cache *c = make(0, &be, 2);
    enum { NP = 5, NS = 6 };
    int32_t toks[NP][16];
    for (int p = 0; p < NP; p++) prompt_tokens(toks[p], 16, 60000 + 1000 * p);
    pkv_seq open_s[NS];
    int open_p[NS], nopen = 0;
    const long ops = test_scaled(10000) < 300 ? 300 : test_scaled(10000);
    for (long op = 0; op < ops; op++) {
        uint32_t k = rnd(100);
        int p = (int)rnd(NP);
        if (k < 10) {
            /* write a prompt again (a seq that computed it), unless the pool is short */
            pkv_stats st = PKV_STATS_INIT;
            CHECK_OK(pkv_cache_stats(c, &st));
            if (st.free_blocks + st.evictable_blocks >= 4) put_prompt(c, toks[p], 16);
        } else if (k < 35 && nopen < NS) {
            int32_t ready, loading, n = 4 * (1 + (int32_t)rnd(4));
            int st = pkv_prefix_lookup_async(c, 0, toks[p], n, NULL, &open_s[nopen], &ready, &loading);
            CHECK_OK(st);
            if (st == PKV_OK) {
                CHECK(ready + loading <= n && ready % BS == 0 && loading % BS == 0);
                open_p[nopen++] = p;
            }
        } else if (k < 50 && nopen) {
            int i = (int)rnd((uint32_t)nopen);
            int32_t loading = -1, len = -1;
            CHECK_OK(pkv_seq_load_poll(c, open_s[i], &loading, &len));
            CHECK(loading >= 0 && loading <= len);
        } else if (k < 65 && nopen) {
            int i = (int)rnd((uint32_t)nopen);
            gate_set(&g, 0);
            int32_t len = -1, loading = -1;
            CHECK_OK(pkv_seq_load_wait(c, open_s[i], &len));
            CHECK_OK(pkv_seq_load_poll(c, open_s[i], &loading, NULL));
            CHECK_INT(loading, 0);
            check_bytes(c, open_s[i], toks[open_p[i]]);
        } else if (k < 80 && nopen) {
            int i = (int)rnd((uint32_t)nopen);
            CHECK_OK(pkv_seq_free(c, open_s[i]));
            open_s[i] = open_s[--nopen];
            open_p[i] = open_p[nopen];
        } else if (k < 88) {
            int32_t ev;
            CHECK_OK(pkv_prefix_evict(c, 1 + (int32_t)rnd(NB), &ev));
        } else if (k < 92) {
            CHECK(gate_corrupt_first_token(&g, toks[p][4 * rnd(4)], 104) || 1);
        } else {
            gate_set(&g, (int)rnd(2));
        }
        CHECK_OK(pkv_cache_check(c));
    }
    gate_set(&g, 0);
    for (int i = 0; i < nopen; i++) {
        int32_t len;
        CHECK_OK(pkv_seq_load_wait(c, open_s[i], &len));
        check_bytes(c, open_s[i], toks[open_p[i]]);
        CHECK_OK(pkv_seq_free(c, open_s[i]));
    }
    CHECK_OK(pkv_cache_check(c));
    pkv_tier_stats ts = tstats(c);
    if (getenv("PKV_TEST_VERBOSE"))
        printf("random: %lld hits, %lld misses, %lld corrupt, %lld stores, %d gets\n", (long long)ts.hits,
               (long long)ts.misses, (long long)ts.corrupt, (long long)ts.stores, g.gets);
    CHECK(ts.hits > 0);
    CHECK(ts.corrupt > 0); /* the run met damaged blobs */
    pkv_cache_destroy(c);
    gate_free(&g);
}

/* ---- file reads that fail or come back damaged, on the I/O threads ---- */
static _Atomic long io_reads;
static _Atomic int io_every; /* every io_every-th read fails (odd) or returns flipped bytes (even) */
static ssize_t bad_pread(int fd, void *b, size_t n, off_t o) {
    long k = ++io_reads;
    if (io_every && k % io_every == 0) {
        if ((k / io_every) % 2) return errno = EIO, -1;
        ssize_t r = pkv__tier_file_io_default.pread(fd, b, n, o);
        if (r > 64) ((uint8_t *)b)[r / 2] ^= 0x10;
        return r;
    }
    return pkv__tier_file_io_default.pread(fd, b, n, o);
}

/* Async loads from a file tier whose reads fail (EIO) or return damaged bytes
 * now and then: every wait returns a prefix whose every byte is right, the
 * failures are counted (errors, misses), and the cache stays consistent. */
static void test_file_faults(void) {
    char dir[] = "/tmp/pkv_async_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    pkv_cache *c = make(0, NULL, 0);
    size_t blob = 0;
    CHECK_OK(pkv_tier_blob_size(c, &blob));
    pkv_tier_backend fb;
    char detail[256];
    CHECK_OK(pkv_tier_file_open(dir, (uint64_t)blob * MAXB, blob, 0, &fb, detail));
    CHECK_OK(pkv_cache_add_tier(c, &fb, MAXB, 0));
    CHECK_OK(pkv_tier_async_start(c, 2));
    enum { NP = 4 };
    int32_t toks[NP][16];
    for (int p = 0; p < NP; p++) prompt_tokens(toks[p], 16, 70000 + 1000 * p);
    pkv__tier_file_io.pread = bad_pread;
    long short_waits = 0;
    const int rounds = test_scaled(300) < 40 ? 40 : (int)test_scaled(300);
    for (int r = 0; r < rounds; r++) {
        int p = r % NP;
        io_every = 0;
        put_prompt(c, toks[p], 16);
        to_tier(c);
        io_every = 3 + r % 5;
        pkv_seq s;
        int32_t ready, loading, len = -1;
        CHECK_OK(pkv_prefix_lookup_async(c, 0, toks[p], 16, NULL, &s, &ready, &loading));
        CHECK_OK(pkv_seq_load_wait(c, s, &len));
        CHECK(len >= 0 && len <= 16 && len % BS == 0);
        short_waits += len < ready + loading;
        io_every = 0;
        check_bytes(c, s, toks[p]);
        CHECK_OK(pkv_seq_free(c, s));
        CHECK_OK(pkv_cache_check(c));
    }
    pkv__tier_file_io = pkv__tier_file_io_default;
    pkv_tier_stats ts = tstats(c);
    CHECK(short_waits > 0);      /* failures were met ... */
    CHECK(ts.errors > 0 && ts.degraded);
    CHECK(ts.hits > 0);          /* ... and loads got through */
    pkv_cache_destroy(c);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(void) {
    test_arguments();
    test_refusals_and_bytes();
    test_failed_load_cuts();
    test_free_sync_and_destroy();
    test_threads(0);
    test_threads(1);
    test_file_tier();
    test_random();
    test_file_faults();
    return test_report("test_tier_async");
}
