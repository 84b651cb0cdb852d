/* Scheduler calls (issue 14 item 3): peek counts cached tokens without taking
 * references, touching the LRU order or counting a query; evict(n) and reset
 * of the prefix cache; sizing a pool from a byte budget. */
#include "internal.h"
#include "test.h"

static pkv_cache *make(int32_t nb, int32_t bs) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = bs;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    return c;
}

static pkv_seq registered(pkv_cache *c, const int32_t *toks, int32_t n) {
    pkv_seq s;
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append(c, s, n, toks, NULL, &cow));
    CHECK_OK(pkv_prefix_register(c, s, NULL, NULL));
    return s;
}

static pkv_stats stats(pkv_cache *c) {
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st));
    return st;
}

static void test_peek(void) {
    pkv_cache *c = make(8, 2);
    int32_t a[5] = {1, 2, 3, 4, 5}, b[4] = {7, 8, 9, 10}, cached = -1, pool = -1;
    pkv_seq sa = registered(c, a, 5), sb = registered(c, b, 4);
    CHECK_OK(pkv_seq_free(c, sa));
    CHECK_OK(pkv_seq_free(c, sb)); /* LRU: a1 a0 b1 b0 (a's blocks released first) */
    pkv_stats before = stats(c);
    CHECK_OK(pkv_prefix_peek(c, 0, a, 5, &cached, &pool));
    CHECK_INT(cached, 4);
    CHECK_INT(pool, 4);
    CHECK_OK(pkv_prefix_peek(c, 0, a, 3, &cached, NULL));
    CHECK_INT(cached, 2);
    CHECK_OK(pkv_prefix_peek(c, 1, a, 5, &cached, NULL)); /* another namespace */
    CHECK_INT(cached, 0);
    pkv_stats after = stats(c);
    CHECK_INT(after.prefix_queries, before.prefix_queries);
    CHECK_INT(after.evictable_blocks, before.evictable_blocks);
    /* LRU order untouched: the next eviction still takes a's deepest block. */
    int32_t n = 0;
    CHECK_OK(pkv_prefix_evict(c, 1, &n));
    CHECK_INT(n, 1);
    CHECK_OK(pkv_prefix_peek(c, 0, a, 5, &cached, NULL));
    CHECK_INT(cached, 2);
    CHECK_OK(pkv_prefix_peek(c, 0, b, 4, &cached, NULL));
    CHECK_INT(cached, 4);
    CHECK_STATUS(pkv_prefix_peek(c, 0, a, -1, &cached, NULL), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_prefix_peek(c, 0, NULL, 4, &cached, NULL), PKV_ERR_NULL);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

static void test_evict_and_reset(void) {
    pkv_cache *c = make(8, 2);
    int32_t a[6] = {1, 2, 3, 4, 5, 6}, n = -1;
    pkv_seq sa = registered(c, a, 6);
    CHECK_STATUS(pkv_prefix_reset(c), PKV_ERR_STATE); /* sa holds registered blocks */
    CHECK(strstr(pkv_cache_last_error(c), "registered") != NULL);
    CHECK_OK(pkv_prefix_evict(c, 5, &n));
    CHECK_INT(n, 0); /* nothing evictable: held blocks are not touched */
    CHECK_OK(pkv_seq_free(c, sa));
    CHECK_INT(stats(c).evictable_blocks, 3);
    CHECK_OK(pkv_prefix_evict(c, 2, &n));
    CHECK_INT(n, 2);
    pkv_stats st = stats(c);
    CHECK_INT(st.evictable_blocks, 1);
    CHECK_INT(st.free_blocks, 7);
    CHECK_INT(st.evictions, 2);
    CHECK_OK(pkv_prefix_evict(c, 10, &n));
    CHECK_INT(n, 1);
    CHECK_STATUS(pkv_prefix_evict(c, -1, &n), PKV_ERR_INVALID);
    sa = registered(c, a, 6);
    CHECK_OK(pkv_seq_free(c, sa));
    CHECK_OK(pkv_prefix_reset(c));
    st = stats(c);
    CHECK_INT(st.cached_blocks, 0);
    CHECK_INT(st.free_blocks, 8);
    pkv_seq s;
    int32_t hit = -1;
    CHECK_OK(pkv_prefix_lookup(c, 0, a, 6, &s, &hit));
    CHECK_INT(hit, 0);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
    pkv_config cfg;
    pkv_config_init(&cfg);
    CHECK_OK(pkv_cache_create(&cfg, &c));
    CHECK_STATUS(pkv_prefix_reset(c), PKV_ERR_MODE);
    CHECK_STATUS(pkv_prefix_evict(c, 1, &n), PKV_ERR_MODE);
    pkv_cache_destroy(c);
}

static void test_blocks_for_bytes(void) {
    pkv_config cfg;
    pkv_config_init(&cfg); /* MLA: 1 layer, 576 bf16 per token, 64 per block */
    int32_t nb = 0;
    CHECK_OK(pkv_config_blocks_for_bytes(&cfg, 1ull << 30, &nb));
    CHECK_INT(nb, (1 << 30) / (64 * 576 * 2));
    cfg.num_layers = 61;
    cfg.kv_dtype = PKV_FP8_MLA656;
    CHECK_OK(pkv_config_blocks_for_bytes(&cfg, 80ull << 30, &nb));
    CHECK_INT(nb, (int32_t)((80ull << 30) / (64ull * 656 * 61)));
    cfg.kv_dtype = PKV_F16;
    cfg.num_layers = 32, cfg.h_kv = 8, cfg.d = 128, cfg.dv = 128, cfg.v_separate = 1, cfg.block_size = 16;
    CHECK_OK(pkv_config_blocks_for_bytes(&cfg, 16ull << 30, &nb));
    CHECK_INT(nb, (int32_t)((16ull << 30) / (16ull * 32 * 2 * 8 * 128 * 2)));
    CHECK_STATUS(pkv_config_blocks_for_bytes(&cfg, 100, &nb), PKV_ERR_INVALID);
    cfg.kv_dtype = 99;
    CHECK_STATUS(pkv_config_blocks_for_bytes(&cfg, 1ull << 30, &nb), PKV_ERR_DTYPE);
    CHECK_STATUS(pkv_config_blocks_for_bytes(NULL, 1, &nb), PKV_ERR_NULL);
}

/* KV events replayed into a shadow index equal the real one: every stored
 * key is live in the index, and the shadow holds as many blocks as the cache
 * has cached; a full queue drops and counts. The shadow counts each key (a
 * PKV_WEAK_HASH build gives different blocks equal keys). */
typedef struct shadow {
    int n;
    uint8_t keys[4096][16];
    int count[4096];
} shadow;

static int shadow_find(const shadow *sh, const uint8_t key[16]) {
    for (int i = 0; i < sh->n; i++)
        if (memcmp(sh->keys[i], key, 16) == 0) return i;
    return -1;
}

static int shadow_total(const shadow *sh) {
    int t = 0;
    for (int i = 0; i < sh->n; i++) t += sh->count[i];
    return t;
}

static void replay(pkv_cache *c, shadow *sh) {
    pkv_event ev[64];
    int32_t n;
    int64_t dropped = 0;
    do {
        CHECK_OK(pkv_events_drain(c, ev, 64, &n, &dropped));
        CHECK_INT(dropped, 0);
        for (int32_t i = 0; i < n; i++) {
            int at = shadow_find(sh, ev[i].key);
            if (ev[i].kind == PKV_EVENT_STORED) {
                if (at < 0 && sh->n < 4096) {
                    at = sh->n++;
                    memcpy(sh->keys[at], ev[i].key, 16);
                    sh->count[at] = 0;
                }
                if (at >= 0) sh->count[at]++;
            } else {
                CHECK_INT(ev[i].kind, PKV_EVENT_REMOVED);
                CHECK(at >= 0 && sh->count[at] > 0);
                if (at >= 0 && --sh->count[at] == 0) {
                    memcpy(sh->keys[at], sh->keys[--sh->n], 16);
                    sh->count[at] = sh->count[sh->n];
                }
            }
        }
    } while (n == 64);
}

static void shadow_equal(pkv_cache *c, const shadow *sh) {
    CHECK_INT(shadow_total(sh), stats(c).cached_blocks);
    int missing = 0;
    for (int i = 0; i < sh->n; i++) {
        uint64_t k[2];
        memcpy(k, sh->keys[i], 16);
        missing += prefix_find_key(c->prefix, k) < 0;
    }
    CHECK_INT(missing, 0);
}

static void test_events(void) {
    static shadow sh;
    sh.n = 0;
    pkv_cache *c = make(12, 2);
    int32_t n;
    CHECK_STATUS(pkv_events_drain(c, NULL, 0, &n, NULL), PKV_ERR_STATE);
    CHECK_OK(pkv_events_enable(c, 256));
    test_rng rng = {0xe7e7};
    pkv_seq live[6] = {0};
    long ops = test_scaled(20000);
    for (long op = 0; op < ops; op++) {
        int slot = (int)test_below(&rng, 6);
        if (live[slot]) {
            if (test_below(&rng, 3) == 0) {
                pkv_seq f;
                CHECK_OK(pkv_seq_fork(c, live[slot], &f));
                CHECK_OK(pkv_seq_free(c, live[slot]));
                live[slot] = f;
            } else {
                CHECK_OK(pkv_seq_free(c, live[slot]));
                live[slot] = 0;
            }
        } else {
            int32_t toks[10], len = 2 + (int32_t)test_below(&rng, 9), stem = (int32_t)test_below(&rng, 4);
            for (int32_t i = 0; i < len; i++) toks[i] = i < 4 ? stem : (int32_t)test_below(&rng, 3);
            pkv_seq s;
            int32_t hit;
            CHECK_OK(pkv_prefix_lookup(c, (uint64_t)test_below(&rng, 2), toks, len, &s, &hit));
            pkv_block_copy cow;
            int st = pkv_seq_append(c, s, len - hit, toks + hit, NULL, &cow);
            if (st == PKV_OK) {
                CHECK_OK(pkv_prefix_register(c, s, NULL, NULL));
                live[slot] = s;
            } else {
                CHECK_STATUS(st, PKV_ERR_CAPACITY);
                CHECK_OK(pkv_seq_free(c, s));
            }
        }
        if (test_below(&rng, 50) == 0) CHECK_OK(pkv_prefix_evict(c, 2, NULL));
        if (op % 7 == 0) {
            replay(c, &sh);
            shadow_equal(c, &sh);
        }
    }
    for (int i = 0; i < 6; i++)
        if (live[i]) CHECK_OK(pkv_seq_free(c, live[i]));
    CHECK_OK(pkv_prefix_reset(c));
    replay(c, &sh);
    CHECK_INT(shadow_total(&sh), 0);
    /* A small queue overflows, and says so. */
    CHECK_OK(pkv_events_enable(c, 2));
    int32_t toks[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    pkv_seq s = registered(c, toks, 8);
    pkv_event ev[4];
    int64_t dropped = -1;
    CHECK_OK(pkv_events_drain(c, ev, 4, &n, &dropped));
    CHECK_INT(n, 2);
    CHECK_INT(dropped, 2);
    CHECK_INT(ev[0].kind, PKV_EVENT_STORED);
    CHECK_INT(ev[0].has_parent, 0);
    CHECK(memcmp(ev[1].parent_key, ev[0].key, 16) == 0);
    CHECK_OK(pkv_events_drain(c, ev, 4, &n, &dropped));
    CHECK_INT(n, 0);
    CHECK_INT(dropped, 0);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

/* Speculative decoding with AUTO_REGISTER: 10 steps of 3 drafts of which 1 is
 * accepted. Drafts appended as ordinary tokens get registered when they fill a
 * block, and the rollback by truncate then leaves a cached partial block that
 * the next append must copy; as lookahead tokens they never are: no copy. */
static int64_t spec_decode(int use_lookahead) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 64;
    cfg.block_size = 4;
    cfg.flags = PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    if (!c) return -1;
    pkv_seq s;
    pkv_block_copy cow;
    int32_t prompt[6] = {1, 2, 3, 4, 5, 6}, la = -1;
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append(c, s, 6, prompt, NULL, &cow));
    int32_t next = 100;
    for (int step = 0; step < 10; step++) {
        int32_t drafts[3] = {next, next + 1, next + 2}, len;
        CHECK_OK(pkv_seq_length(c, s, &len));
        if (use_lookahead) {
            CHECK_OK(pkv_seq_append_lookahead(c, s, 3, drafts, NULL, &cow));
            CHECK_OK(pkv_seq_lookahead(c, s, &la));
            CHECK_INT(la, 3);
            CHECK_STATUS(pkv_seq_append(c, s, 1, drafts, NULL, &cow), PKV_ERR_STATE);
            CHECK_OK(pkv_seq_accept(c, s, 1));
        } else {
            CHECK_OK(pkv_seq_append(c, s, 3, drafts, NULL, &cow));
            CHECK_OK(pkv_seq_truncate(c, s, len + 1));
        }
        int32_t after;
        CHECK_OK(pkv_seq_length(c, s, &after));
        CHECK_INT(after, len + 1);
        next += 3;
    }
    /* The accepted tokens' full blocks are registered: 6 + 10 = 16 tokens, 4 blocks. */
    pkv_stats st = stats(c);
    if (use_lookahead) CHECK_INT(st.cached_blocks, 4);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
    return st.cow_copies;
}

static void test_lookahead(void) {
    int64_t plain = spec_decode(0), la = spec_decode(1);
    printf("speculative decoding, 10 steps of 3 drafts with AUTO_REGISTER: %lld copy-on-write copies as "
           "ordinary tokens, %lld as lookahead tokens\n", (long long)plain, (long long)la);
    CHECK(plain > 0);
    CHECK_INT(la, 0);
    /* accept's range, and drafts truncated away like any tokens */
    pkv_cache *c = make(8, 2);
    pkv_seq s;
    pkv_block_copy cow;
    int32_t t[4] = {1, 2, 3, 4}, la_n = -1;
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append_lookahead(c, s, 4, t, NULL, &cow));
    CHECK_STATUS(pkv_seq_accept(c, s, 5), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_seq_accept(c, s, -1), PKV_ERR_INVALID);
    CHECK_OK(pkv_prefix_register(c, s, NULL, NULL)); /* drafts are not registered */
    CHECK_INT(stats(c).cached_blocks, 0);
    CHECK_OK(pkv_seq_truncate(c, s, 1));
    CHECK_OK(pkv_seq_lookahead(c, s, &la_n));
    CHECK_INT(la_n, 1);
    CHECK_OK(pkv_seq_accept(c, s, 1));
    CHECK_OK(pkv_seq_lookahead(c, s, &la_n));
    CHECK_INT(la_n, 0);
    CHECK_OK(pkv_seq_append(c, s, 3, t + 1, NULL, &cow));
    CHECK_OK(pkv_prefix_register(c, s, NULL, NULL));
    CHECK_INT(stats(c).cached_blocks, 2);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

int main(void) {
    test_lookahead();
    test_events();
    test_peek();
    test_evict_and_reset();
    test_blocks_for_bytes();
    return test_report("test_sched");
}
