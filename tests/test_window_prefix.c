/* Prefix caching in sliding-window caches (issue 14 item 1): a window cache
 * registers its blocks as it appends (PKV_FLAG_AUTO_REGISTER), the window
 * releases them (evictable, still cached), and a lookup needs only the blocks
 * of the hit's last window; a reclaimed block whose entry has children stays
 * in the index as a ghost, so the chain below it stays findable.
 *
 * - config: prefix caching on a window cache needs AUTO_REGISTER; tiers are
 *   refused;
 * - a worked case with the hit computed by hand: a 1000-token prompt in a
 *   W = 128 cache of 16-token blocks is found whole (992 tokens) holding 8
 *   blocks; after every block outside that window is reclaimed (ghosts) it is
 *   still found whole; once a block of the window goes, the hit drops to what
 *   the remaining blocks serve; every served row equals the row written;
 * - a random run against a full-attention cache given the same operations:
 *   with a pool that never reclaims, every lookup hits exactly what the full
 *   cache hits (the window changes which blocks are held, never what is
 *   found); with a small pool, blocks are reclaimed and ghosts revived; in
 *   both, every row a lookup serves
 *   equals the row of that token at that position, the KV events replayed
 *   give the cached block count, and pkv_cache_check holds after every call;
 * - KV groups: a full group and a window group, both caching prefixes; the
 *   group hit is the longest length both can serve (worked case). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "test.h"

#define D 4

static pkv_cache *make(int32_t nb, int32_t bs, int32_t window) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = bs;
    cfg.window = window;
    cfg.flags = PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = 1;
    cfg.h_kv = 1;
    cfg.d = D;
    cfg.dv = D;
    cfg.v_separate = 1;
    cfg.kv_dtype = PKV_F32;
    cfg.hash_key_set = 1;
    memset(cfg.hash_key, 7, sizeof cfg.hash_key);
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    return c;
}

/* The K and V rows of token tok at position pos (exact in float). */
static void row(int32_t tok, int32_t pos, float *k, float *v) {
    for (int i = 0; i < D; i++) {
        k[i] = (float)(tok * 4 + i);
        v[i] = (float)(pos * 4 + i);
    }
}

/* Appends toks[0..n) to seq and writes their rows. */
static int append(pkv_cache *c, pkv_seq s, int32_t start, const int32_t *toks, int32_t n) {
    int64_t *slots = malloc((size_t)(n ? n : 1) * sizeof *slots);
    float *k = malloc((size_t)(n ? n : 1) * D * sizeof *k), *v = malloc((size_t)(n ? n : 1) * D * sizeof *v);
    int st = pkv_seq_append(c, s, n, toks, slots, NULL);
    if (st == PKV_OK) {
        for (int32_t i = 0; i < n; i++) row(toks[i], start + i, k + i * D, v + i * D);
        CHECK_OK(pkv_store_write(c, 0, slots, n, k, v, PKV_F32));
    }
    free(slots);
    free(k);
    free(v);
    return st;
}

/* Every row seq holds (the blocks its table does not mark -1) equals the
 * row of toks at that position; returns the number of blocks held. */
static int32_t check_rows(pkv_cache *c, pkv_seq s, const int32_t *toks, int32_t bs) {
    int32_t len, nb;
    CHECK_OK(pkv_seq_length(c, s, &len));
    int32_t *blocks = malloc(((size_t)len / (size_t)bs + 2) * sizeof *blocks);
    CHECK_OK(pkv_seq_blocks(c, s, blocks, len / bs + 2, &nb));
    int32_t held = 0;
    for (int32_t j = 0; j < nb; j++) {
        if (blocks[j] < 0) {
            CHECK(held == 0); /* released blocks come first */
            continue;
        }
        held++;
        for (int32_t p = j * bs; p < len && p < (j + 1) * bs; p++) {
            int64_t slot = (int64_t)blocks[j] * bs + p % bs;
            float k[D], v[D], ek[D], ev[D];
            CHECK_OK(pkv_store_read(c, 0, &slot, 1, k, v));
            row(toks[p], p, ek, ev);
            if (memcmp(k, ek, sizeof k) || memcmp(v, ev, sizeof v)) {
                CHECK(!"a served row differs from the row written for its token and position");
                free(blocks);
                return held;
            }
        }
    }
    free(blocks);
    return held;
}

static void test_config(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.window = 64;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    pkv_cache *c = NULL;
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
    CHECK(c == NULL);
    cfg.flags = PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    CHECK_STATUS(pkv_cache_add_host_tier(c, 16, 0), PKV_ERR_MODE);
    CHECK(strstr(pkv_cache_last_error(c), "window") != NULL);
    pkv_cache_destroy(c);
}

static int32_t lookup(pkv_cache *c, const int32_t *toks, int32_t n, pkv_seq *s) {
    int32_t got = -1, peek = -1, pool = -1;
    CHECK_OK(pkv_prefix_peek(c, 0, toks, n, &peek, &pool));
    CHECK_OK(pkv_prefix_lookup(c, 0, toks, n, s, &got));
    CHECK_INT(peek, got); /* the peek tells what the lookup finds */
    CHECK_INT(pool, got);
    CHECK_OK(pkv_cache_check(c));
    return got;
}

static void test_worked(void) {
    const int32_t bs = 16, W = 128, n = 1000;
    pkv_cache *c = make(256, bs, W);
    int32_t *toks = malloc(n * sizeof *toks);
    for (int32_t i = 0; i < n; i++) toks[i] = 1000 + i * 7 % 501;
    pkv_seq a;
    CHECK_OK(pkv_seq_create(c, 0, &a));
    for (int32_t i = 0; i < n; i += 100) CHECK_OK(append(c, a, i, toks + i, 100));
    CHECK_OK(append(c, a, n, toks, 1)); /* one more step: the window moves past the prompt's start */
    CHECK_OK(pkv_cache_check(c));
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st));
    CHECK_INT(st.cached_blocks, n / bs); /* 62 full blocks registered, though most were released */
    CHECK_OK(pkv_seq_free(c, a));

    /* The whole prompt's 62 blocks are found; the sequence holds the blocks
     * of the window of token 991 (and 992): blocks (992 - 128) / 16 = 54 to 61. */
    pkv_seq s;
    CHECK_INT(lookup(c, toks, n, &s), 992);
    CHECK_INT(check_rows(c, s, toks, bs), 8);
    CHECK_OK(pkv_seq_truncate(c, s, 991)); /* a whole-prompt hit recomputes its last token */
    CHECK_OK(pkv_seq_free(c, s));

    /* Blocks 0..53 were released first (the window moved), so they are the
     * least recently used: reclaimed, their entries stay as ghosts. */
    int32_t ev = 0;
    CHECK_OK(pkv_prefix_evict(c, 54, &ev));
    CHECK_INT(ev, 54);
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_cache_stats(c, &st));
    CHECK_INT(st.cached_blocks, 8);
    CHECK_INT(lookup(c, toks, n, &s), 992);
    CHECK_INT(check_rows(c, s, toks, bs), 8);
    /* The cached prefix grows from its ghosts' chain: the next blocks register. */
    CHECK_OK(append(c, s, 992, toks + 992, 8));
    CHECK_OK(pkv_seq_free(c, s));

    /* A shorter prompt whose window (blocks 45..52) is gone is found as far
     * as a window the pool holds: none, since every block before 54 left. */
    CHECK_INT(lookup(c, toks, 53 * bs, &s), 0);
    CHECK_OK(pkv_seq_free(c, s));

    /* The deepest block (61, released last by the free) goes: the chain ends
     * at 60 and no length has its whole window in the pool any more. */
    CHECK_OK(pkv_prefix_evict(c, 1, &ev));
    CHECK_INT(ev, 1);
    CHECK_OK(pkv_cache_check(c));
    CHECK_INT(lookup(c, toks, n, &s), 0);
    CHECK_OK(pkv_seq_free(c, s));

    /* Computed again, the prompt revives the ghosts (their blocks are cached
     * again) and is found whole. (Blocks an append fills whose identity is
     * cached register, deduplicated, at the next append: one more token.) */
    CHECK_OK(pkv_seq_create(c, 0, &a));
    for (int32_t i = 0; i < n; i += 100) CHECK_OK(append(c, a, i, toks + i, 100));
    CHECK_OK(append(c, a, n, toks, 1));
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_seq_free(c, a));
    CHECK_INT(lookup(c, toks, n, &s), 992);
    CHECK_INT(check_rows(c, s, toks, bs), 8);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_prefix_reset(c));
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_cache_stats(c, &st));
    CHECK_INT(st.cached_blocks, 0);
    free(toks);
    pkv_cache_destroy(c);
}

/* ---- random run: window cache vs full cache ---- */

#define NSEQ 6
#define MAXLEN 700

typedef struct rseq {
    int live;
    pkv_seq w, f; /* in the window cache, in the full cache */
    int32_t len;
    int32_t toks[MAXLEN];
} rseq;

static void random_run(uint64_t seed, int32_t window_blocks, long ops, int expect_equal) {
    const int32_t bs = 8, W = 40;
    pkv_cache *cw = make(window_blocks, bs, W), *cf = make(1 << 16, bs, 0);
    CHECK_OK(pkv_events_enable(cw, 1 << 16));
    test_rng rng = {seed};
    rseq *s = calloc(NSEQ, sizeof *s);
    int64_t shadow = 0, hits = 0, lookups = 0;
    /* Prompts share prefixes: a few families of base tokens. */
    int32_t base[4][MAXLEN];
    for (int f = 0; f < 4; f++)
        for (int32_t i = 0; i < MAXLEN; i++) base[f][i] = (int32_t)test_below(&rng, 50) + 100 * (f & 1);
    for (long op = 0; op < ops; op++) {
        int k = (int)test_below(&rng, NSEQ);
        rseq *q = &s[k];
        int what = (int)test_below(&rng, 10);
        if (!q->live) {
            /* a prompt from a family, diverging at a random point */
            int fam = (int)test_below(&rng, 4);
            int32_t n = 1 + (int32_t)test_below(&rng, MAXLEN - 200), cut = (int32_t)test_below(&rng, n + 1);
            for (int32_t i = 0; i < n; i++) q->toks[i] = i < cut ? base[fam][i] : (int32_t)test_below(&rng, 1000);
            int32_t gw = 0, gf = 0;
            int st = pkv_prefix_lookup(cw, 0, q->toks, n, &q->w, &gw);
            CHECK_OK(st);
            CHECK_OK(pkv_prefix_lookup(cf, 0, q->toks, n, &q->f, &gf));
            if (expect_equal) CHECK_INT(gw, gf);
            lookups++;
            hits += gw;
            check_rows(cw, q->w, q->toks, bs);
            /* each continues from its hit (a whole hit recomputes its last token) */
            int32_t fw = gw == n && n > 0 ? n - 1 : gw, ff = gf == n && n > 0 ? n - 1 : gf;
            CHECK_OK(pkv_seq_truncate(cw, q->w, fw));
            CHECK_OK(pkv_seq_truncate(cf, q->f, ff));
            int stw = append(cw, q->w, fw, q->toks + fw, n - fw);
            if (stw == PKV_OK) {
                CHECK_OK(append(cf, q->f, ff, q->toks + ff, n - ff));
                q->len = n;
                q->live = 1;
            } else {
                CHECK_STATUS(stw, PKV_ERR_CAPACITY);
                CHECK_OK(pkv_seq_free(cw, q->w));
                CHECK_OK(pkv_seq_free(cf, q->f));
            }
        } else if (what < 5 && q->len < MAXLEN - 8) {
            int32_t n = 1 + (int32_t)test_below(&rng, 8);
            for (int32_t i = 0; i < n; i++) q->toks[q->len + i] = (int32_t)test_below(&rng, 1000);
            int stw = append(cw, q->w, q->len, q->toks + q->len, n);
            if (stw == PKV_OK) {
                CHECK_OK(append(cf, q->f, q->len, q->toks + q->len, n));
                q->len += n;
            } else {
                CHECK_STATUS(stw, PKV_ERR_CAPACITY);
            }
        } else if (what < 6) {
            int32_t to = q->len - (int32_t)test_below(&rng, 12);
            if (to < 0) to = 0;
            int stw = pkv_seq_truncate(cw, q->w, to);
            if (stw == PKV_OK) {
                CHECK_OK(pkv_seq_truncate(cf, q->f, to));
                q->len = to;
            } else {
                CHECK_STATUS(stw, PKV_ERR_STATE); /* its window needs released blocks */
            }
        } else if (what < 7) {
            int j = (int)test_below(&rng, NSEQ);
            if (!s[j].live) {
                int stw = pkv_seq_fork(cw, q->w, &s[j].w);
                CHECK_OK(stw);
                CHECK_OK(pkv_seq_fork(cf, q->f, &s[j].f));
                s[j].live = 1;
                s[j].len = q->len;
                memcpy(s[j].toks, q->toks, (size_t)q->len * sizeof *q->toks);
            }
        } else if (what < 9) {
            CHECK_OK(pkv_seq_free(cw, q->w));
            CHECK_OK(pkv_seq_free(cf, q->f));
            q->live = 0;
        } else {
            int32_t ev;
            if (!expect_equal) CHECK_OK(pkv_prefix_evict(cw, (int32_t)test_below(&rng, 6), &ev));
        }
        if (expect_equal) {
            /* an eviction by the pool would make the hits differ: none happens */
            pkv_stats st = PKV_STATS_INIT;
            CHECK_OK(pkv_cache_stats(cw, &st));
            CHECK_INT(st.evictions, 0);
        }
        pkv_event evs[256];
        int32_t ne;
        do {
            CHECK_OK(pkv_events_drain(cw, evs, 256, &ne, NULL));
            for (int32_t i = 0; i < ne; i++) shadow += evs[i].kind == PKV_EVENT_STORED ? 1 : -1;
        } while (ne == 256);
        pkv_stats st = PKV_STATS_INIT;
        CHECK_OK(pkv_cache_stats(cw, &st));
        CHECK_INT(st.cached_blocks, shadow);
        int rc = pkv_cache_check(cw);
        CHECK_OK(rc);
        if (rc != PKV_OK) {
            fprintf(stderr, "op %ld: %s\n", op, pkv_cache_last_error(cw));
            break;
        }
    }
    printf("window_prefix: seed %llu, pool %d: %lld lookups hit %.1f tokens on average\n", (unsigned long long)seed,
           (int)window_blocks, (long long)lookups, lookups ? (double)hits / (double)lookups : 0.0);
    CHECK(hits > 0);
    for (int k = 0; k < NSEQ; k++)
        if (s[k].live) {
            CHECK_OK(pkv_seq_free(cw, s[k].w));
            CHECK_OK(pkv_seq_free(cf, s[k].f));
        }
    CHECK_OK(pkv_cache_check(cw));
    free(s);
    pkv_cache_destroy(cw);
    pkv_cache_destroy(cf);
}

/* Registration that stops (appends without token ids; an index growth that
 * fails) costs the sequence its caching, never the window's release: a long
 * decode keeps a few blocks. */
static void *no_alloc(void *o, size_t n) {
    (void)o;
    (void)n;
    return NULL;
}
static void no_free(void *o, void *p) {
    (void)o;
    (void)p;
}

static void test_registration_stops(void) {
    const int32_t bs = 4;
    for (int mode = 0; mode < 2; mode++) {
        pkv_cache *c = make(8, bs, mode ? 4 : 16);
        if (mode) { /* the index's growth fails (the rest of the cache allocates as usual) */
            static const pkv_allocator fail = {no_alloc, no_free, NULL};
            prefix_set_window(c->prefix, &fail);
        }
        pkv_seq s;
        CHECK_OK(pkv_seq_create(c, 0, &s));
        int32_t toks[8] = {1, 2, 3, 4, 5, 6, 7, 8}, len = 0;
        CHECK_OK(append(c, s, 0, toks, 8));
        int st = PKV_OK;
        int64_t slot;
        pkv_block_copy cow;
        for (len = 8; len < 600 && st == PKV_OK; len++) {
            int32_t t = 1000 + len; /* all distinct: every block is new, ghosts pile up */
            st = pkv_seq_append(c, s, 1, mode ? &t : NULL, &slot, &cow);
        }
        CHECK_OK(st);
        CHECK_INT(len, 600);
        pkv_stats stt = PKV_STATS_INIT;
        CHECK_OK(pkv_cache_stats(c, &stt));
        CHECK(stt.used_blocks <= (mode ? 4 : 6));
        CHECK_OK(pkv_cache_check(c));
        pkv_cache_destroy(c);
    }
}

/* ---- KV groups ---- */

static void test_groups(void) {
    const int32_t bs = 16, W = 128, n = 1000;
    pkv_config full, win;
    pkv_config_init(&full);
    full.num_blocks = 256;
    full.block_size = bs;
    full.flags = PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER;
    win = full;
    win.window = W;
    const pkv_config *cfgs[2] = {&full, &win};
    pkv_groups *g = NULL;
    CHECK_OK(pkv_groups_create(cfgs, 2, &g));
    pkv_cache *cf, *cw;
    CHECK_OK(pkv_groups_cache(g, 0, &cf));
    CHECK_OK(pkv_groups_cache(g, 1, &cw));
    int32_t *toks = malloc(n * sizeof *toks);
    for (int32_t i = 0; i < n; i++) toks[i] = 5 + i % 97;
    pkv_seq a, s;
    int32_t got, len;
    CHECK_OK(pkv_groups_seq_create(g, 0, &a));
    pkv_block_copy cow[2];
    CHECK_OK(pkv_groups_append(g, a, n, toks, NULL, cow));
    CHECK_OK(pkv_groups_append(g, a, 1, toks, NULL, cow));
    CHECK_OK(pkv_groups_free(g, a));
    CHECK_OK(pkv_groups_lookup(g, 0, toks, n, &s, &got));
    CHECK_INT(got, 992); /* both groups hold it all */
    CHECK_OK(pkv_groups_length(g, s, &len));
    CHECK_INT(len, 992);
    CHECK_OK(pkv_groups_free(g, s));
    /* The full group loses its last 2 blocks (60, 61: released first at the
     * free): its hit is 960; the window group serves 960 too only from blocks
     * 52..59, which it released before the end and still holds (cached). */
    int32_t ev;
    CHECK_OK(pkv_prefix_evict(cf, 2, &ev));
    CHECK_INT(ev, 2);
    CHECK_OK(pkv_groups_lookup(g, 0, toks, n, &s, &got));
    CHECK_INT(got, 960);
    pkv_seq m0, m1;
    CHECK_OK(pkv_groups_seq_handle(g, s, 0, &m0));
    CHECK_OK(pkv_groups_seq_handle(g, s, 1, &m1));
    CHECK_OK(pkv_seq_length(cf, m0, &len));
    CHECK_INT(len, 960);
    CHECK_OK(pkv_seq_length(cw, m1, &len));
    CHECK_INT(len, 960);
    CHECK_OK(pkv_cache_check(cf));
    CHECK_OK(pkv_cache_check(cw));
    CHECK_OK(pkv_groups_free(g, s));
    /* A sequence of the window cache alone holds blocks 54..61 while every
     * other block of the group's window cache is reclaimed (0..53: ghosts).
     * On its own the window cache serves 992, but not 960 (its window needs
     * 52 and 53) nor any length below: the group hit is 0, though the full
     * group has 960 and the window group 992. */
    pkv_seq hold;
    CHECK_OK(pkv_prefix_lookup(cw, 0, toks, n, &hold, &got));
    CHECK_INT(got, 992);
    CHECK_OK(pkv_prefix_evict(cw, 54, &ev));
    CHECK_INT(ev, 54);
    int32_t alone, pool;
    CHECK_OK(pkv_prefix_peek(cw, 0, toks, n, &alone, &pool));
    CHECK_INT(alone, 992);
    CHECK_OK(pkv_groups_lookup(g, 0, toks, n, &s, &got));
    CHECK_INT(got, 0);
    CHECK_OK(pkv_groups_length(g, s, &len));
    CHECK_INT(len, 0);
    CHECK_OK(pkv_cache_check(cf));
    CHECK_OK(pkv_cache_check(cw));
    CHECK_OK(pkv_groups_free(g, s));
    CHECK_OK(pkv_seq_free(cw, hold));
    free(toks);
    pkv_groups_destroy(g);
}

#ifndef WINDOW_PREFIX_NO_MAIN
int main(void) {
    test_config();
    test_worked();
    test_registration_stops();
    random_run(1, 1 << 16, test_scaled(3000), 1);
    random_run(2, 1 << 16, test_scaled(3000), 1);
    random_run(3, 60, test_scaled(6000), 0);
    random_run(4, 40, test_scaled(6000), 0);
    test_groups();
    return test_report("window_prefix");
}
#endif
