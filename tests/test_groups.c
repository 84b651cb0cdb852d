/* KV groups (pkv_groups_*): a random run of creates, appends, truncations,
 * forks and frees on a groups object of a full-attention group and a
 * sliding-window group (different block sizes, pools, storage modes), checked
 * against an independent expectation: one standalone cache per group, built
 * from the same config and given the same operations one by one. Every group
 * sequence's members must then equal the standalone sequences exactly (length,
 * block ids, slots, copy-on-write copies), an append must take blocks in both
 * groups or in neither (a short window pool refuses while the full one has
 * room, and the full group is then unchanged), a truncation the window refuses
 * changes neither group, and calls that would change one member alone are
 * refused. Then lookups across two full groups with prefix caching. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "pagedkv.h"
#include "test.h"

enum { NG = 2, MAXS = 12, MAXB = 64 };

static uint64_t rs = 0x243f6a8885a308d3ull;
static uint32_t rnd(uint32_t n) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs % n);
}

static void configs(pkv_config cfg[NG]) {
    pkv_config_init(&cfg[0]); /* full attention, host mode */
    cfg[0].num_blocks = 40;
    cfg[0].block_size = 4;
    cfg[0].storage = PKV_STORAGE_HOST;
    cfg[0].num_layers = 1;
    cfg[0].h_kv = 1;
    cfg[0].d = 8;
    cfg[0].dv = 8;
    cfg[0].kv_dtype = PKV_F32;
    pkv_config_init(&cfg[1]); /* a window of 6 tokens, metadata mode, a short pool */
    cfg[1].num_blocks = 14;
    cfg[1].block_size = 2;
    cfg[1].window = 6;
}

typedef struct shadow {
    pkv_cache *c[NG];
} shadow;

static int32_t avail(pkv_cache *c) {
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st));
    return st.free_blocks + st.evictable_blocks;
}

static void same_member(pkv_groups *g, pkv_seq gs, int i, pkv_cache *sc, pkv_seq ss) {
    pkv_cache *gc;
    pkv_seq m;
    CHECK_OK(pkv_groups_cache(g, i, &gc));
    CHECK_OK(pkv_groups_seq_handle(g, gs, i, &m));
    int32_t la = -1, lb = -2, na = 0, nb = 0, ba[MAXB], bb[MAXB];
    CHECK_OK(pkv_seq_length(gc, m, &la));
    CHECK_OK(pkv_seq_length(sc, ss, &lb));
    CHECK_INT(la, lb);
    CHECK_OK(pkv_seq_blocks(gc, m, ba, MAXB, &na));
    CHECK_OK(pkv_seq_blocks(sc, ss, bb, MAXB, &nb));
    CHECK_INT(na, nb);
    int diff = 0;
    for (int32_t k = 0; k < na && k < nb; k++) diff += ba[k] != bb[k];
    CHECK_INT(diff, 0);
}

static void test_random_model(void) {
    pkv_config cfg[NG];
    configs(cfg);
    const pkv_config *cp[NG] = {&cfg[0], &cfg[1]};
    pkv_groups *g = NULL;
    CHECK_OK(pkv_groups_create(cp, NG, &g));
    shadow sh;
    for (int i = 0; i < NG; i++) CHECK_OK(pkv_cache_create(&cfg[i], &sh.c[i]));
    pkv_seq gs[MAXS], ss[MAXS][NG];
    int ns = 0;
    long refused_capacity = 0, refused_window = 0, appended = 0;
    const long ops = test_scaled(20000) < 500 ? 500 : test_scaled(20000);
    for (long op = 0; op < ops; op++) {
        uint32_t k = rnd(100);
        if (k < 12 && ns < MAXS) {
            CHECK_OK(pkv_groups_seq_create(g, 7, &gs[ns]));
            for (int i = 0; i < NG; i++) CHECK_OK(pkv_seq_create(sh.c[i], 7, &ss[ns][i]));
            ns++;
        } else if (k < 55 && ns) {
            int s = (int)rnd((uint32_t)ns);
            int32_t n = 1 + (int32_t)rnd(7), need[NG], toks[8];
            for (int32_t t = 0; t < n; t++) toks[t] = (int32_t)rnd(50);
            int fits = 1;
            for (int i = 0; i < NG; i++) {
                CHECK_OK(pkv_seq_blocks_needed(sh.c[i], ss[s][i], n, &need[i]));
                fits &= need[i] <= avail(sh.c[i]);
            }
            int32_t per[NG];
            CHECK_OK(pkv_groups_blocks_needed(g, gs[s], n, per));
            CHECK_INT(per[0], need[0]);
            CHECK_INT(per[1], need[1]);
            int64_t gsl[NG][8], ssl[NG][8];
            int64_t *gslots[NG] = {gsl[0], gsl[1]};
            pkv_block_copy gcow[NG], scow[NG];
            int st = pkv_groups_append(g, gs[s], n, toks, gslots, gcow);
            if (!fits) {
                CHECK_INT(st, PKV_ERR_CAPACITY);
                CHECK(strstr(pkv_groups_last_error(g), "group") != NULL);
                refused_capacity++;
            } else {
                CHECK_OK(st);
                appended++;
                for (int i = 0; i < NG; i++) {
                    CHECK_OK(pkv_seq_append(sh.c[i], ss[s][i], n, toks, ssl[i], &scow[i]));
                    int diff = 0;
                    for (int32_t t = 0; t < n; t++) diff += gsl[i][t] != ssl[i][t];
                    CHECK_INT(diff, 0);
                    CHECK_INT(gcow[i].src, scow[i].src);
                    CHECK_INT(gcow[i].dst, scow[i].dst);
                }
            }
        } else if (k < 70 && ns) {
            int s = (int)rnd((uint32_t)ns);
            int32_t len;
            CHECK_OK(pkv_groups_length(g, gs[s], &len));
            int32_t to = (int32_t)rnd((uint32_t)len + 1);
            /* the window group refuses first, changing nothing; the full one never refuses */
            int sst = pkv_seq_truncate(sh.c[1], ss[s][1], to);
            int st = pkv_groups_truncate(g, gs[s], to);
            CHECK_INT(st, sst);
            if (sst == PKV_OK) CHECK_OK(pkv_seq_truncate(sh.c[0], ss[s][0], to));
            else refused_window++;
        } else if (k < 80 && ns && ns < MAXS) {
            int s = (int)rnd((uint32_t)ns);
            CHECK_OK(pkv_groups_fork(g, gs[s], &gs[ns]));
            for (int i = 0; i < NG; i++) CHECK_OK(pkv_seq_fork(sh.c[i], ss[s][i], &ss[ns][i]));
            ns++;
        } else if (k < 92 && ns) {
            int s = (int)rnd((uint32_t)ns);
            CHECK_OK(pkv_groups_free(g, gs[s]));
            for (int i = 0; i < NG; i++) CHECK_OK(pkv_seq_free(sh.c[i], ss[s][i]));
            CHECK_INT(pkv_groups_free(g, gs[s]), PKV_ERR_NO_SEQ); /* a stale handle */
            ns--;
            gs[s] = gs[ns];
            for (int i = 0; i < NG; i++) ss[s][i] = ss[ns][i];
        } else if (ns) {
            /* a member cannot be changed alone; reading it works */
            int s = (int)rnd((uint32_t)ns), i = (int)rnd(NG);
            pkv_cache *gc;
            pkv_seq m, child;
            CHECK_OK(pkv_groups_cache(g, i, &gc));
            CHECK_OK(pkv_groups_seq_handle(g, gs[s], i, &m));
            pkv_block_copy cow;
            CHECK_INT(pkv_seq_append(gc, m, 1, NULL, NULL, &cow), PKV_ERR_STATE);
            CHECK_INT(pkv_seq_truncate(gc, m, 0), PKV_ERR_STATE);
            CHECK_INT(pkv_seq_fork(gc, m, &child), PKV_ERR_STATE);
            CHECK_INT(pkv_seq_free(gc, m), PKV_ERR_STATE);
            int32_t table[MAXB], lens[1], need = 0;
            CHECK_OK(pkv_export_flashmla(gc, &m, 1, table, MAXB, lens, &need));
        }
        for (int s = 0; s < ns; s++)
            for (int i = 0; i < NG; i++) same_member(g, gs[s], i, sh.c[i], ss[s][i]);
        for (int i = 0; i < NG; i++) {
            pkv_cache *gc;
            CHECK_OK(pkv_groups_cache(g, i, &gc));
            CHECK_OK(pkv_cache_check(gc));
            CHECK_INT(avail(gc), avail(sh.c[i]));
        }
    }
    /* the run met both kinds of refusal, and did work */
    CHECK(refused_capacity > 0);
    CHECK(refused_window > 0);
    CHECK(appended > 0);
    pkv_groups_destroy(g);
    for (int i = 0; i < NG; i++) pkv_cache_destroy(sh.c[i]);
}

static void test_lookup_and_arguments(void) {
    pkv_config a, b;
    pkv_config_init(&a); /* an MLA-like group, block size 4 */
    a.num_blocks = 32;
    a.block_size = 4;
    a.flags = PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER;
    pkv_config_init(&b); /* an indexer-key group, block size 8 */
    b.num_blocks = 16;
    b.block_size = 8;
    b.flags = PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER;
    b.d = 128;
    b.dv = 128;
    const pkv_config *cp[2] = {&a, &b};
    pkv_groups *g = NULL;
    CHECK_INT(pkv_groups_create(cp, 0, &g), PKV_ERR_INVALID);
    CHECK_INT(pkv_groups_create(cp, 9, &g), PKV_ERR_INVALID);
    CHECK_INT(pkv_groups_create(NULL, 2, &g), PKV_ERR_NULL);
    pkv_config ts = a;
    ts.flags |= PKV_FLAG_THREAD_SAFE;
    const pkv_config *mixed[2] = {&ts, &b};
    CHECK_INT(pkv_groups_create(mixed, 2, &g), PKV_ERR_INVALID);
    CHECK(g == NULL);
    CHECK_OK(pkv_groups_create(cp, 2, &g));
    int32_t toks[30];
    for (int i = 0; i < 30; i++) toks[i] = 100 + i;
    pkv_seq s, t;
    pkv_block_copy cow[2];
    CHECK_OK(pkv_groups_seq_create(g, 1, &s));
    CHECK_OK(pkv_groups_append(g, s, 30, toks, NULL, cow));
    CHECK_OK(pkv_groups_free(g, s));
    int32_t cached = -1, len = -1;
    /* group a has 7 full blocks (28 tokens), group b 3 (24): the hit is 24 */
    CHECK_OK(pkv_groups_lookup(g, 1, toks, 30, &t, &cached));
    CHECK_INT(cached, 24);
    CHECK_OK(pkv_groups_length(g, t, &len));
    CHECK_INT(len, 24);
    for (int i = 0; i < 2; i++) {
        pkv_cache *c;
        pkv_seq m;
        CHECK_OK(pkv_groups_cache(g, i, &c));
        CHECK_OK(pkv_groups_seq_handle(g, t, i, &m));
        CHECK_OK(pkv_seq_length(c, m, &len));
        CHECK_INT(len, 24);
        CHECK_OK(pkv_cache_check(c));
    }
    /* another namespace: no hit */
    pkv_seq u;
    CHECK_OK(pkv_groups_lookup(g, 2, toks, 30, &u, &cached));
    CHECK_INT(cached, 0);
    /* arguments */
    pkv_seq m;
    CHECK_INT(pkv_groups_seq_handle(g, t, 2, &m), PKV_ERR_INVALID);
    CHECK_INT(pkv_groups_seq_handle(g, t, -1, &m), PKV_ERR_INVALID);
    CHECK_INT(pkv_groups_seq_handle(g, 12345, 0, &m), PKV_ERR_NO_SEQ);
    CHECK_INT(pkv_groups_append(g, t, -1, NULL, NULL, cow), PKV_ERR_INVALID);
    CHECK_INT(pkv_groups_append(g, t, 1, NULL, NULL, NULL), PKV_ERR_NULL); /* metadata mode needs cow */
    CHECK_INT(pkv_groups_truncate(g, t, 25), PKV_ERR_INVALID);
    CHECK_INT(pkv_groups_lookup(g, 1, NULL, 3, &u, &cached), PKV_ERR_NULL);
    CHECK_INT(pkv_groups_lookup(g, 1, toks, -1, &u, &cached), PKV_ERR_INVALID);
    CHECK_INT(pkv_groups_length(g, t, NULL), PKV_ERR_NULL);
    CHECK_INT(pkv_groups_length(NULL, t, &len), PKV_ERR_NULL);
    pkv_cache *c;
    CHECK_INT(pkv_groups_cache(g, 5, &c), PKV_ERR_INVALID);
    CHECK_OK(pkv_groups_free(g, t));
    CHECK_OK(pkv_groups_free(g, u));
    pkv_groups_destroy(g);
    pkv_groups_destroy(NULL);
}

/* Two threads on one thread-safe groups object (TSan: make tsan), each
 * growing, truncating and freeing its own group sequences while the other
 * does the same; refusals for a short pool are allowed, nothing else. */
typedef struct tw {
    pkv_groups *g;
    int fails;
} tw;
static void *tworker(void *p) {
    tw *w = p;
    for (int it = 0; it < 300; it++) {
        pkv_seq s;
        pkv_block_copy cow[2];
        if (pkv_groups_seq_create(w->g, 0, &s) != PKV_OK) w->fails++;
        for (int k = 0; k < 5; k++) {
            int st = pkv_groups_append(w->g, s, 1 + it % 7, NULL, NULL, cow);
            if (st != PKV_OK && st != PKV_ERR_CAPACITY) w->fails++;
        }
        int32_t len = 0;
        if (pkv_groups_length(w->g, s, &len) != PKV_OK) w->fails++;
        int st = pkv_groups_truncate(w->g, s, len / 2);
        if (st != PKV_OK && st != PKV_ERR_STATE) w->fails++;
        if (pkv_groups_free(w->g, s) != PKV_OK) w->fails++;
    }
    return NULL;
}

static void test_threads(void) {
    pkv_config cfg[NG];
    configs(cfg);
    for (int i = 0; i < NG; i++) cfg[i].flags |= PKV_FLAG_THREAD_SAFE;
    cfg[0].storage = PKV_STORAGE_METADATA;
    const pkv_config *cp[NG] = {&cfg[0], &cfg[1]};
    pkv_groups *g = NULL;
    CHECK_OK(pkv_groups_create(cp, NG, &g));
    tw w[2] = {{g, 0}, {g, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&th[i], NULL, tworker, &w[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    CHECK_INT(w[0].fails + w[1].fails, 0);
    for (int i = 0; i < NG; i++) {
        pkv_cache *c;
        CHECK_OK(pkv_groups_cache(g, i, &c));
        CHECK_OK(pkv_cache_check(c));
        CHECK_INT(avail(c), cfg[i].num_blocks); /* everything freed */
    }
    pkv_groups_destroy(g);
}

/* Pools sized from one budget: every group runs out at the same number of
 * sequences; the expectation computed here in double from the row sizes. */
static void test_sizing(void) {
    pkv_config full, win;
    pkv_config_init(&full); /* bf16 MLA rows: 576 x 2 bytes, block size 64 */
    full.num_layers = 1;
    pkv_config_init(&win);
    win.num_layers = 5;
    win.window = 1024;
    const pkv_config *cp[2] = {&full, &win};
    int32_t nb[2] = {0, 0};
    const uint64_t gib = 1ull << 30;
    CHECK_OK(pkv_groups_blocks_for_bytes(cp, 2, gib, 8192, nb));
    const double row = 576 * 2, bf = row * 64 * 1, bw = row * 64 * 5;
    const double need_f = 8192 / 64, need_w = 1024 / 64 + 1; /* 128 and 17 blocks per sequence */
    const double per_seq = need_f * bf + need_w * bw;
    CHECK_INT(nb[0], (int32_t)(gib * need_f / per_seq));
    CHECK_INT(nb[1], (int32_t)(gib * need_w / per_seq));
    CHECK_INT(nb[0] / 128, 68); /* sequences of 8192 tokens the budget holds */
    CHECK_INT(nb[1] / 17, 68);
    CHECK(nb[0] * bf + nb[1] * bw <= (double)gib);
    /* all-full attention over the same 6 layers: 18 such sequences */
    pkv_config all = full;
    all.num_layers = 6;
    int32_t nall = 0;
    CHECK_OK(pkv_config_blocks_for_bytes(&all, gib, &nall));
    CHECK_INT(nall / 128, 18);
    /* a short sequence: the window group needs as many blocks as the full one */
    CHECK_OK(pkv_groups_blocks_for_bytes(cp, 2, gib, 100, nb));
    CHECK_INT(nb[0], nb[1]);
    CHECK_INT(pkv_groups_blocks_for_bytes(cp, 2, 1000, 8192, nb), PKV_ERR_INVALID); /* not one block */
    CHECK_INT(pkv_groups_blocks_for_bytes(cp, 0, gib, 8192, nb), PKV_ERR_INVALID);
    CHECK_INT(pkv_groups_blocks_for_bytes(cp, 2, gib, 0, nb), PKV_ERR_INVALID);
    CHECK_INT(pkv_groups_blocks_for_bytes(NULL, 2, gib, 8192, nb), PKV_ERR_NULL);
    win.window = -1;
    CHECK_INT(pkv_groups_blocks_for_bytes(cp, 2, gib, 8192, nb), PKV_ERR_INVALID);
}

/* Every byte a groups object holds comes from group 0's allocator (the
 * object, its records, a lookup's scratch) or its group's, and goes back. */
static long long counted;
static void *count_alloc(void *o, size_t n) {
    (void)o;
    size_t *p = malloc(n + 16);
    if (!p) return NULL;
    p[0] = n;
    counted += (long long)n;
    return (char *)p + 16;
}
static void count_free(void *o, void *q) {
    (void)o;
    if (!q) return;
    size_t *p = (size_t *)(void *)((char *)q - 16);
    counted -= (long long)p[0];
    free(p);
}

static void test_allocator(void) {
    pkv_config a, b;
    pkv_config_init(&a);
    a.num_blocks = 64;
    a.block_size = 4;
    a.flags = PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER;
    a.allocator.alloc = count_alloc;
    a.allocator.free = count_free;
    b = a;
    b.window = 8;
    const pkv_config *cfgs[2] = {&a, &b};
    pkv_cache *ca, *cb;
    CHECK_OK(pkv_cache_create(&a, &ca));
    CHECK_OK(pkv_cache_create(&b, &cb));
    long long caches = counted;
    pkv_cache_destroy(ca);
    pkv_cache_destroy(cb);
    CHECK_INT(counted, 0);
    pkv_groups *g;
    CHECK_OK(pkv_groups_create(cfgs, 2, &g));
    CHECK(counted > caches); /* the groups object itself */
    int32_t toks[40];
    for (int i = 0; i < 40; i++) toks[i] = 3 * i + 1;
    pkv_seq s[40], t;
    pkv_block_copy cow[2];
    long long before = counted;
    for (int i = 0; i < 40; i++) { /* more group sequences than the first record table holds */
        CHECK_OK(pkv_groups_seq_create(g, 0, &s[i]));
        CHECK_OK(pkv_groups_append(g, s[i], 1, toks, NULL, cow));
    }
    CHECK(counted > before);
    int32_t got;
    CHECK_OK(pkv_groups_lookup(g, 0, toks, 40, &t, &got));
    CHECK_OK(pkv_groups_free(g, t));
    pkv_groups_destroy(g);
    CHECK_INT(counted, 0);
}

int main(void) {
    test_allocator();
    test_sizing();
    test_lookup_and_arguments();
    test_random_model();
    test_threads();
    return test_report("test_groups");
}
