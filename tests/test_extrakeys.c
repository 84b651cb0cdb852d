/* Extra keys in a block's identity (issue 14 item 5): LoRA adapter ids and
 * multimodal ranges. Checked here:
 *  - the calls' contracts: validation, errors leave the sequence as it was,
 *    forks inherit, truncation drops the ranges past the new end;
 *  - sharing: equal tokens under another adapter, another image, another
 *    offset or length of the same image never share; equal extras do (lookup,
 *    peek and deduplication at registration agree);
 *  - the key of a block with extras is the documented message, recomputed here
 *    with pkv_siphash128 from the formula in src/prefix.c (the events report it);
 *  - many adapters over the same tokens each find their own blocks, also in
 *    the PKV_WEAK_HASH build where block keys collide;
 *  - a file tier restart keeps a block's extras: the restored blocks are found
 *    with the same extra keys only;
 *  - pkv_cache_check sees extra keys that disagree with registered blocks.
 * The random comparison with an independent model is in test_prefix_model.c. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"
#include "test.h"

enum { BS = 4, D = 6, DV = 3, LAYERS = 2 };

static const uint8_t KEY[16] = {0x5a, 0x11, 0x7e, 0x42, 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8};

static pkv_cache *make(int32_t nb, int host) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    if (host) {
        cfg.storage = PKV_STORAGE_HOST;
        cfg.num_layers = LAYERS;
        cfg.h_kv = 1;
        cfg.d = D;
        cfg.dv = DV;
        cfg.v_separate = 1;
        cfg.kv_dtype = PKV_F32;
    }
    cfg.hash_key_set = 1;
    memcpy(cfg.hash_key, KEY, 16);
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    return c;
}

static pkv_mm_range mm(int64_t start, int64_t len, uint8_t tag) {
    pkv_mm_range r;
    r.start = start;
    r.len = len;
    for (int i = 0; i < 16; i++) r.hash[i] = (uint8_t)(tag * 16 + i);
    return r;
}

static pkv_extra_keys extras(uint64_t adapter, const pkv_mm_range *r, int32_t n) {
    pkv_extra_keys x = PKV_EXTRA_KEYS_INIT;
    x.adapter_id = adapter;
    x.mm = r;
    x.num_mm = n;
    return x;
}

/* A sequence (metadata mode) with adapter and ranges, tokens[0..n) appended
 * and registered; *reg / *dd get the registration's counts. */
static pkv_seq seq_with(pkv_cache *c, uint64_t adapter, const pkv_mm_range *r, int32_t nr, const int32_t *toks,
                        int32_t n, int32_t *reg, int32_t *dd) {
    pkv_seq s = 0;
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_set_adapter(c, s, adapter));
    for (int32_t k = 0; k < nr; k++) CHECK_OK(pkv_seq_add_mm(c, s, r[k].start, r[k].len, r[k].hash));
    CHECK_OK(pkv_seq_append(c, s, n, toks, NULL, &cow));
    CHECK_OK(pkv_prefix_register(c, s, reg, dd));
    return s;
}

/* Cached tokens of toks[0..n) under x, by lookup (the sequence freed) and by
 * peek, which must agree. */
static int32_t hit(pkv_cache *c, const pkv_extra_keys *x, const int32_t *toks, int32_t n) {
    int32_t got = -1, peek = -2;
    pkv_seq s = 0;
    CHECK_OK(pkv_prefix_peek_ex(c, 0, toks, n, x, &peek, NULL));
    CHECK_OK(pkv_prefix_lookup_ex(c, 0, toks, n, x, &s, &got));
    CHECK_INT(peek, got);
    CHECK_OK(pkv_seq_free(c, s));
    return got;
}

static void test_contracts(void) {
    pkv_cache *c = make(16, 0);
    int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8}, n = -1;
    uint8_t h[16] = {1};
    uint64_t ad = 99;
    pkv_mm_range got[4];
    pkv_block_copy cow;
    pkv_seq s, f;
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_extra_keys(c, s, &ad, got, 4, &n));
    CHECK(ad == 0 && n == 0);
    CHECK_OK(pkv_seq_set_adapter(c, s, 5));
    CHECK_OK(pkv_seq_set_adapter(c, s, 6)); /* still empty: replaced */
    CHECK_STATUS(pkv_seq_add_mm(c, s, 0, 2, NULL), PKV_ERR_NULL);
    CHECK_STATUS(pkv_seq_add_mm(c, s, -1, 2, h), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_seq_add_mm(c, s, 0, 0, h), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_seq_add_mm(c, s, INT32_MAX, 1, h), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_seq_add_mm(c, s, 1, INT32_MAX, h), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_seq_add_mm(c, 12345, 0, 1, h), PKV_ERR_NO_SEQ);
    CHECK_STATUS(pkv_seq_set_adapter(c, 12345, 1), PKV_ERR_NO_SEQ);
    CHECK_OK(pkv_seq_add_mm(c, s, 2, 3, h));                     /* [2, 5) */
    CHECK_STATUS(pkv_seq_add_mm(c, s, 4, 1, h), PKV_ERR_INVALID); /* overlaps */
    CHECK_STATUS(pkv_seq_add_mm(c, s, 1, 1, h), PKV_ERR_INVALID); /* before the last */
    CHECK_OK(pkv_seq_add_mm(c, s, 5, 1, h));                     /* [5, 6): adjacent */
    CHECK_OK(pkv_seq_append(c, s, 7, t, NULL, &cow));
    CHECK_STATUS(pkv_seq_set_adapter(c, s, 7), PKV_ERR_STATE);
    CHECK_STATUS(pkv_seq_add_mm(c, s, 6, 1, h), PKV_ERR_INVALID); /* before the length 7 */
    CHECK_OK(pkv_seq_add_mm(c, s, 9, 4, h));                     /* [9, 13): past the length */
    CHECK_STATUS(pkv_seq_extra_keys(c, s, NULL, got, 2, &n), PKV_ERR_BUFFER);
    CHECK_INT(n, 3);
    CHECK_STATUS(pkv_seq_extra_keys(c, s, NULL, got, 4, NULL), PKV_ERR_NULL);
    n = -1;
    CHECK_OK(pkv_seq_extra_keys(c, s, &ad, NULL, 0, &n)); /* the count only */
    CHECK(ad == 6 && n == 3);
    CHECK_OK(pkv_seq_extra_keys(c, s, &ad, got, 4, &n));
    CHECK(n == 3 && got[0].start == 2 && got[0].len == 3 && got[1].start == 5 && got[2].start == 9 &&
          got[2].len == 4 && memcmp(got[0].hash, h, 16) == 0);
    /* A fork inherits everything. */
    CHECK_OK(pkv_seq_fork(c, s, &f));
    CHECK_OK(pkv_seq_extra_keys(c, f, &ad, got, 4, &n));
    CHECK(ad == 6 && n == 3 && got[2].start == 9);
    /* Truncation: ranges starting at or past the new end go, a cut one stays. */
    CHECK_OK(pkv_seq_truncate(c, f, 6));
    CHECK_OK(pkv_seq_extra_keys(c, f, &ad, got, 4, &n));
    CHECK(ad == 6 && n == 2 && got[1].start == 5);
    CHECK_OK(pkv_seq_truncate(c, f, 3)); /* [2, 5) is cut at 3: kept whole */
    CHECK_OK(pkv_seq_extra_keys(c, f, NULL, got, 4, &n));
    CHECK(n == 1 && got[0].start == 2 && got[0].len == 3);
    CHECK_STATUS(pkv_seq_add_mm(c, f, 4, 1, h), PKV_ERR_INVALID); /* inside the kept range */
    CHECK_OK(pkv_seq_truncate(c, f, 0));
    CHECK_OK(pkv_seq_extra_keys(c, f, &ad, NULL, 0, &n));
    CHECK(ad == 6 && n == 0);
    /* The parent is untouched by the child's truncations. */
    CHECK_OK(pkv_seq_extra_keys(c, s, NULL, NULL, 0, &n));
    CHECK_INT(n, 3);
    /* A freed record reused by a new sequence starts without extras. */
    CHECK_OK(pkv_seq_free(c, f));
    CHECK_OK(pkv_seq_create(c, 0, &f));
    CHECK_OK(pkv_seq_extra_keys(c, f, &ad, NULL, 0, &n));
    CHECK(ad == 0 && n == 0);

    /* Lookup and peek validate the extras; a refused call creates nothing. */
    pkv_stats st0 = PKV_STATS_INIT, st1 = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st0));
    pkv_mm_range bad[2] = {mm(4, 2, 1), mm(5, 2, 2)};
    pkv_extra_keys x = extras(1, bad, 2);
    int32_t cached = -1;
    pkv_seq q = 0;
    CHECK_STATUS(pkv_prefix_lookup_ex(c, 0, t, 8, &x, &q, &cached), PKV_ERR_INVALID); /* overlap */
    CHECK_STATUS(pkv_prefix_peek_ex(c, 0, t, 8, &x, &cached, NULL), PKV_ERR_INVALID);
    bad[1] = mm(1, 2, 2);
    CHECK_STATUS(pkv_prefix_lookup_ex(c, 0, t, 8, &x, &q, &cached), PKV_ERR_INVALID); /* unsorted */
    bad[1] = mm(6, 0, 2);
    CHECK_STATUS(pkv_prefix_lookup_ex(c, 0, t, 8, &x, &q, &cached), PKV_ERR_INVALID); /* empty range */
    x.num_mm = -1;
    CHECK_STATUS(pkv_prefix_lookup_ex(c, 0, t, 8, &x, &q, &cached), PKV_ERR_INVALID);
    x.num_mm = 1;
    x.mm = NULL;
    CHECK_STATUS(pkv_prefix_lookup_ex(c, 0, t, 8, &x, &q, &cached), PKV_ERR_NULL);
    x = extras(1, NULL, 0);
    x.size = 8;
    CHECK_STATUS(pkv_prefix_lookup_ex(c, 0, t, 8, &x, &q, &cached), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_prefix_peek_ex(c, 0, t, 8, &x, &cached, NULL), PKV_ERR_INVALID);
    CHECK_OK(pkv_cache_stats(c, &st1));
    CHECK_INT(st1.num_seqs, st0.num_seqs);
    CHECK_INT(st1.prefix_queries, st0.prefix_queries);
    /* A larger struct from a newer header: accepted when its unknown tail is zero. */
    struct {
        pkv_extra_keys x;
        uint64_t more;
    } big;
    memset(&big, 0, sizeof big);
    big.x.size = sizeof big;
    big.x.adapter_id = 3;
    CHECK_OK(pkv_prefix_peek_ex(c, 0, t, 8, &big.x, &cached, NULL));
    big.more = 1;
    CHECK_STATUS(pkv_prefix_peek_ex(c, 0, t, 8, &big.x, &cached, NULL), PKV_ERR_INVALID);
    /* The new sequence of a lookup takes the adapter and every range. */
    pkv_mm_range two[2] = {mm(1, 2, 1), mm(20, 5, 2)};
    x = extras(77, two, 2);
    CHECK_OK(pkv_prefix_lookup_ex(c, 0, t, 8, &x, &q, &cached));
    CHECK_OK(pkv_seq_extra_keys(c, q, &ad, got, 4, &n));
    CHECK(ad == 77 && n == 2 && got[0].start == 1 && got[1].start == 20 && got[1].len == 5 &&
          memcmp(got[1].hash, two[1].hash, 16) == 0);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

static void test_sharing(void) {
    pkv_cache *c = make(64, 0);
    int32_t t[12] = {10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21}, reg, dd;
    /* Adapters. */
    pkv_seq a = seq_with(c, 7, NULL, 0, t, 12, &reg, &dd);
    CHECK(reg == 3 && dd == 0);
    pkv_extra_keys x7 = extras(7, NULL, 0), x8 = extras(8, NULL, 0), x0 = extras(0, NULL, 0);
    CHECK_INT(hit(c, &x7, t, 12), 12);
    CHECK_INT(hit(c, &x8, t, 12), 0);
    CHECK_INT(hit(c, &x0, t, 12), 0);
    CHECK_INT(hit(c, NULL, t, 12), 0);
    int32_t plain = -1;
    pkv_seq q;
    CHECK_OK(pkv_prefix_lookup(c, 0, t, 12, &q, &plain));
    CHECK_INT(plain, 0);
    CHECK_OK(pkv_seq_free(c, q));
    /* The same tokens and adapter deduplicate; another adapter registers its own. */
    pkv_seq b = seq_with(c, 7, NULL, 0, t, 12, &reg, &dd);
    CHECK(reg == 0 && dd == 3);
    pkv_seq e = seq_with(c, 9, NULL, 0, t, 12, &reg, &dd);
    CHECK(reg == 3 && dd == 0);
    int32_t ba[3], bb[3], be[3], nb;
    CHECK_OK(pkv_seq_blocks(c, a, ba, 3, &nb));
    CHECK_OK(pkv_seq_blocks(c, b, bb, 3, &nb));
    CHECK_OK(pkv_seq_blocks(c, e, be, 3, &nb));
    CHECK(memcmp(ba, bb, sizeof ba) == 0);
    for (int j = 0; j < 3; j++) CHECK(ba[j] != be[j]);

    /* An image over [5, 8) (block 1 only). */
    int32_t u[12] = {30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41};
    pkv_mm_range img = mm(5, 3, 1);
    pkv_seq m = seq_with(c, 0, &img, 1, u, 12, &reg, &dd);
    CHECK_INT(reg, 3);
    pkv_mm_range other = mm(5, 3, 2), shifted = mm(4, 4, 1), longer = mm(5, 4, 1), later = mm(12, 2, 1);
    pkv_extra_keys xi = extras(0, &img, 1), xo = extras(0, &other, 1), xs = extras(0, &shifted, 1),
                   xl = extras(0, &longer, 1), xa = extras(0, &img, 1), xn = extras(0, &later, 1);
    CHECK_INT(hit(c, &xi, u, 12), 12);
    CHECK_INT(hit(c, NULL, u, 12), 4); /* block 0 has no extra key */
    CHECK_INT(hit(c, &xo, u, 12), 4);  /* another image */
    CHECK_INT(hit(c, &xs, u, 12), 4);  /* the same image elsewhere in the block */
    CHECK_INT(hit(c, &xl, u, 12), 4);  /* the same image, longer (it also overlaps block 2) */
    CHECK_INT(hit(c, &xn, u, 12), 4);  /* a range past the prompt changes none of its blocks */
    xa.adapter_id = 7;
    CHECK_INT(hit(c, &xa, u, 12), 0);  /* an adapter changes every block */
    /* Block 2 follows a block with an image: reachable only through it. */
    CHECK_INT(hit(c, &xi, u, 8), 8);
    /* A range spanning blocks 0 to 2 and a second image in block 2. */
    pkv_mm_range two[2] = {mm(2, 7, 3), mm(10, 1, 4)};
    pkv_seq m2 = seq_with(c, 0, two, 2, u, 12, &reg, &dd);
    CHECK_INT(reg, 3); /* no block shared with m: block 0 carries the range here */
    pkv_extra_keys x2 = extras(0, two, 2);
    CHECK_INT(hit(c, &x2, u, 12), 12);
    x2.num_mm = 1;
    CHECK_INT(hit(c, &x2, u, 12), 8);
    CHECK_OK(pkv_cache_check(c));
    /* Images added while decoding: the next blocks carry them. */
    pkv_seq d = seq_with(c, 0, NULL, 0, u, 4, &reg, &dd);
    CHECK(reg == 0 && dd == 1); /* block 0 of m */
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_add_mm(c, d, 5, 3, img.hash));
    CHECK_OK(pkv_seq_append(c, d, 8, u + 4, NULL, &cow));
    CHECK_OK(pkv_prefix_register(c, d, &reg, &dd));
    CHECK(reg == 0 && dd == 2); /* the same blocks as m */
    CHECK_OK(pkv_cache_check(c));
    pkv_seq all[] = {a, b, e, m, m2, d};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) CHECK_OK(pkv_seq_free(c, all[i]));
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

static void le8(uint8_t *b, uint64_t v) {
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t rd8(const uint8_t *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* The extras digest of a block starting at lo, written out from its definition. */
static uint64_t digest(uint64_t adapter, const pkv_mm_range *r, int nr, int64_t lo) {
    static const uint8_t dom[16] = "pkv extra keys.";
    uint8_t xk[16], msg[48], h[16];
    for (int i = 0; i < 16; i++) xk[i] = (uint8_t)(KEY[i] ^ dom[i]);
    int any = adapter != 0;
    for (int k = 0; k < nr; k++) any |= r[k].start < lo + BS && r[k].start + r[k].len > lo;
    if (!any) return 0;
    le8(msg, adapter);
    pkv_siphash128(xk, msg, 8, h);
    for (int k = 0; k < nr; k++) {
        if (!(r[k].start < lo + BS && r[k].start + r[k].len > lo)) continue;
        memcpy(msg, h, 16);
        memcpy(msg + 16, r[k].hash, 16);
        le8(msg + 32, (uint64_t)(r[k].start - lo));
        le8(msg + 40, (uint64_t)r[k].len);
        pkv_siphash128(xk, msg, 48, h);
    }
    uint64_t d = rd8(h);
    return d ? d : 1;
}

/* The events' keys are SipHash(secret, tokens || ns || parent key || digest). */
static void test_keys(void) {
    pkv_cache *c = make(16, 0);
    CHECK_OK(pkv_events_enable(c, 16));
    int32_t t[12] = {5, 4, 3, 2, 1, 0, 9, 8, 7, 6, 5, 4}, reg, dd;
    pkv_mm_range img = mm(6, 3, 9);
    const uint64_t ns = 0, adapter = 0x1234567890ull;
    pkv_seq s = seq_with(c, adapter, &img, 1, t, 12, &reg, &dd);
    pkv_event ev[16];
    int32_t n = 0;
    CHECK_OK(pkv_events_drain(c, ev, 16, &n, NULL));
    CHECK_INT(n, 3);
    uint8_t parent[16] = {0};
    for (int j = 0; j < 3 && j < n; j++) {
        uint8_t msg[4 * BS + 32], want[16];
        for (int i = 0; i < BS; i++) {
            uint32_t w = (uint32_t)t[j * BS + i];
            for (int b = 0; b < 4; b++) msg[4 * i + b] = (uint8_t)(w >> (8 * b));
        }
        le8(msg + 4 * BS, ns);
        memcpy(msg + 4 * BS + 8, parent, 16);
        uint64_t xd = digest(adapter, &img, 1, (int64_t)j * BS);
        CHECK(xd != 0);
        le8(msg + 4 * BS + 24, xd);
        pkv_siphash128(KEY, msg, sizeof msg, want);
#if !defined(PKV_WEAK_HASH)
        CHECK(memcmp(ev[j].key, want, 16) == 0);
#endif
        CHECK(ev[j].kind == PKV_EVENT_STORED && ev[j].ns == ns && ev[j].has_parent == (j > 0));
        CHECK(memcmp(ev[j].parent_key, parent, 16) == 0);
        memcpy(parent, ev[j].key, 16);
    }
    /* Without extras the key is the one of before extra keys (no digest word). */
    int32_t v[4] = {1, 2, 3, 4};
    pkv_seq p = seq_with(c, 0, NULL, 0, v, 4, &reg, &dd);
    CHECK_OK(pkv_events_drain(c, ev, 16, &n, NULL));
    CHECK_INT(n, 1);
    uint8_t zero[16] = {0}, want[16];
    prefix_block_key(KEY, v, BS, 0, zero, 0, want);
    CHECK(n == 1 && memcmp(ev[0].key, want, 16) == 0);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_seq_free(c, p));
    pkv_cache_destroy(c);
}

/* Many adapters over the same tokens (and the same image at many offsets):
 * each lookup finds exactly its own blocks. In the weak-hash build every key
 * has 8 bits, so the index finds candidates of all of them and the identity
 * (the extras digest) decides. */
static void test_many_adapters(void) {
    enum { NA = 48, NT = 8 };
    pkv_cache *c = make(4 * NA + 8, 0);
    int32_t t[NT] = {1, 1, 2, 3, 5, 8, 13, 21}, reg, dd;
    pkv_seq s[NA];
    int32_t blocks[NA][2], nb;
    for (int i = 0; i < NA; i++) {
        pkv_mm_range img = mm(i % 4, 1 + i / 16, 5); /* the same image, offsets 0..3, lengths 1..3 */
        s[i] = seq_with(c, (uint64_t)(i / 4), &img, 1, t, NT, &reg, &dd);
        CHECK(reg == 2 && dd == 0);
        CHECK_OK(pkv_seq_blocks(c, s[i], blocks[i], 2, &nb));
    }
    for (int i = 0; i < NA; i++) {
        pkv_mm_range img = mm(i % 4, 1 + i / 16, 5);
        pkv_extra_keys x = extras((uint64_t)(i / 4), &img, 1);
        pkv_seq q;
        int32_t got = -1, qb[2];
        CHECK_OK(pkv_prefix_lookup_ex(c, 0, t, NT, &x, &q, &got));
        CHECK_INT(got, NT);
        CHECK_OK(pkv_seq_blocks(c, q, qb, 2, &nb));
        CHECK(qb[0] == blocks[i][0] && qb[1] == blocks[i][1]);
        CHECK_OK(pkv_seq_free(c, q));
    }
    CHECK_OK(pkv_cache_check(c));
#if defined(PKV_WEAK_HASH)
    CHECK(prefix_collisions(c) > 0);
#endif
    for (int i = 0; i < NA; i++) CHECK_OK(pkv_seq_free(c, s[i]));
    pkv_cache_destroy(c);
}

/* ---- a file tier restart keeps the extras ---- */

static float kv_val(int32_t t, int32_t pos, int32_t l, int i) { return (float)(t * 131 + pos * 17 + l * 7 + i) * 0.25f; }

static void write_kv(pkv_cache *c, pkv_seq s, const int32_t *toks, int32_t n) {
    int32_t blocks[16], nb;
    CHECK_OK(pkv_seq_blocks(c, s, blocks, 16, &nb));
    int64_t slots[64];
    float k[64 * D], v[64 * DV];
    for (int32_t i = 0; i < n; i++) slots[i] = (int64_t)blocks[i / BS] * BS + i % BS;
    for (int32_t l = 0; l < LAYERS; l++) {
        for (int32_t i = 0; i < n; i++) {
            for (int j = 0; j < D; j++) k[i * D + j] = kv_val(toks[i], i, l, j);
            for (int j = 0; j < DV; j++) v[i * DV + j] = kv_val(toks[i], i, l, 100 + j);
        }
        CHECK_OK(pkv_store_write(c, l, slots, n, k, v, PKV_F32));
    }
}

/* Cached tokens of toks under x, every served value checked. */
static int32_t lookup_check(pkv_cache *c, const pkv_extra_keys *x, const int32_t *toks, int32_t n) {
    pkv_seq s;
    int32_t got = -1, blocks[16], nb;
    CHECK_OK(pkv_prefix_lookup_ex(c, 0, toks, n, x, &s, &got));
    CHECK_OK(pkv_seq_blocks(c, s, blocks, 16, &nb));
    int64_t slots[64];
    float k[64 * D], v[64 * DV];
    for (int32_t i = 0; i < got; i++) slots[i] = (int64_t)blocks[i / BS] * BS + i % BS;
    for (int32_t l = 0; l < LAYERS && got > 0; l++) {
        CHECK_OK(pkv_store_read(c, l, slots, got, k, v));
        int bad = 0;
        for (int32_t i = 0; i < got; i++) {
            for (int j = 0; j < D; j++) bad += k[i * D + j] != kv_val(toks[i], i, l, j);
            for (int j = 0; j < DV; j++) bad += v[i * DV + j] != kv_val(toks[i], i, l, 100 + j);
        }
        CHECK_INT(bad, 0);
    }
    CHECK_OK(pkv_seq_free(c, s));
    return got;
}

static pkv_cache *with_file_tier(const char *dir) {
    pkv_cache *c = make(4, 1);
    size_t blob = 0;
    CHECK_OK(pkv_tier_blob_size(c, &blob));
    pkv_tier_backend be;
    char detail[256] = "";
    int st = pkv_tier_file_open(dir, 64 * (uint64_t)blob, blob, PKV_FILE_TIER_FSYNC, &be, detail);
    if (st != PKV_OK) printf("file tier: %s\n", detail);
    CHECK_OK(st);
    if (st == PKV_OK) CHECK_OK(pkv_cache_add_tier(c, &be, 32, PKV_TIER_WRITE_THROUGH));
    return c;
}

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

static void test_tier_restart(void) {
    char dir[] = "/tmp/pkv_extrakeys_XXXXXX";
    if (!mkdtemp(dir)) {
        TEST_FAIL_("mkdtemp failed");
        return;
    }
    int32_t a[12] = {40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51};
    pkv_mm_range img = mm(5, 2, 6);
    pkv_extra_keys xi = extras(0, &img, 1), xa = extras(3, NULL, 0);
    pkv_cache *c = with_file_tier(dir);
    /* Two identities of the same tokens: an image in block 1, and adapter 3. */
    pkv_seq s, q;
    pkv_block_copy cow;
    int32_t got;
    CHECK_OK(pkv_prefix_lookup_ex(c, 0, a, 12, &xi, &s, &got));
    CHECK_OK(pkv_seq_append(c, s, 12, a, NULL, &cow));
    write_kv(c, s, a, 12);
    CHECK_OK(pkv_prefix_register(c, s, NULL, NULL));
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_prefix_lookup_ex(c, 0, a, 12, &xa, &q, &got));
    CHECK_INT(got, 0);
    CHECK_OK(pkv_seq_append(c, q, 12, a, NULL, &cow));
    write_kv(c, q, a, 12);
    CHECK_OK(pkv_prefix_register(c, q, NULL, NULL));
    CHECK_OK(pkv_seq_free(c, q));
    pkv_tier_stats ts = PKV_TIER_STATS_INIT;
    CHECK_OK(pkv_tier_stats_get(c, 0, &ts));
    CHECK_INT(ts.stores, 6);
    pkv_cache_destroy(c);

    c = with_file_tier(dir);
    CHECK_OK(pkv_tier_stats_get(c, 0, &ts));
    CHECK_INT(ts.restored, 6);
    CHECK_INT(lookup_check(c, &xi, a, 12), 12);
    CHECK_INT(lookup_check(c, &xa, a, 12), 12);
    CHECK_INT(lookup_check(c, NULL, a, 12), 4); /* block 0 of the image's chain has no extras */
    pkv_mm_range other = mm(5, 2, 7);
    pkv_extra_keys xo = extras(0, &other, 1), xb = extras(4, NULL, 0);
    CHECK_INT(lookup_check(c, &xo, a, 12), 4);
    CHECK_INT(lookup_check(c, &xb, a, 12), 0);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
    rm_dir(dir);
}

/* pkv_cache_check sees a sequence whose extra keys disagree with its
 * registered blocks, and ranges out of order. */
static void test_check(void) {
    pkv_cache *c = make(16, 0);
    int32_t t[12] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2}, reg, dd;
    pkv_mm_range r[2] = {mm(5, 2, 1), mm(9, 5, 2)};
    pkv_seq s = seq_with(c, 3, r, 2, t, 12, &reg, &dd);
    CHECK_INT(reg, 3);
    CHECK_OK(pkv_cache_check(c));
    pkv_seq_rec *rec = seq_get(&c->seqs, s);
    rec->adapter = 4;
    CHECK_STATUS(pkv_cache_check(c), PKV_ERR_CORRUPT);
    rec->adapter = 3;
    rec->mm[0].hash[3] ^= 1; /* block 1's image */
    CHECK_STATUS(pkv_cache_check(c), PKV_ERR_CORRUPT);
    rec->mm[0].hash[3] ^= 1;
    rec->mm[1].start = 6; /* overlaps the first */
    CHECK_STATUS(pkv_cache_check(c), PKV_ERR_CORRUPT);
    rec->mm[1].start = 9;
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_seq_free(c, s));
    pkv_cache_destroy(c);
}

int main(void) {
    test_contracts();
    test_sharing();
    test_keys();
    test_many_adapters();
    test_tier_restart();
    test_check();
    return test_report("test_extrakeys");
}
