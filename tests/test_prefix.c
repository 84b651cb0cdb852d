/* Prefix cache, unit level: SipHash-2-4-128 test vectors, block keys, lookup,
 * registration and deduplication, namespaces, eviction order (LRU, deepest
 * first, orphans dropped), auto-registration, copy-on-write of a cached block,
 * validation, allocation failures (state unchanged), a thread-safe smoke run.
 * The model-based run is tests/test_prefix_model.c. Everything here also
 * passes in the weak-hash build (make test-weakhash). */
#include <pthread.h>
#include <stdint.h>

#include "internal.h"
#include "test.h"

/* SipHash-2-4 with 128-bit output, key 00..0f, message 00, 01, ..., len - 1
 * for len = 0..63: the published vectors of the reference implementation
 * (vectors_sip128 in vectors.h of github.com/veorq/SipHash). */
static const char *const sip128_vectors[64] = {
    "a3817f04ba25a8e66df67214c7550293", "da87c1d86b99af44347659119b22fc45", "8177228da4a45dc7fca38bdef60affe4",
    "9c70b60c5267a94e5f33b6b02985ed51", "f88164c12d9c8faf7d0f6e7c7bcd5579", "1368875980776f8854527a07690e9627",
    "14eeca338b208613485ea0308fd7a15e", "a1f1ebbed8dbc153c0b84aa61ff08239", "3b62a9ba6258f5610f83e264f31497b4",
    "264499060ad9baabc47f8b02bb6d71ed", "00110dc378146956c95447d3f3d0fbba", "0151c568386b6677a2b4dc6f81e5dc18",
    "d626b266905ef35882634df68532c125", "9869e247e9c08b10d029934fc4b952f7", "31fcefac66d7de9c7ec7485fe4494902",
    "5493e99933b0a8117e08ec0f97cfc3d9", "6ee2a4ca67b054bbfd3315bf85230577", "473d06e8738db89854c066c47ae47740",
    "a426e5e423bf4885294da481feaef723", "78017731cf65fab074d5208952512eb1", "9e25fc833f2290733e9344a5e83839eb",
    "568e495abe525a218a2214cd3e071d12", "4a29b54552d16b9a469c10528eff0aae", "c9d184ddd5a9f5e0cf8ce29a9abf691c",
    "2db479ae78bd50d8882a8a178a6132ad", "8ece5f042d5e447b5051b9eacb8d8f6f", "9c0b53b4b3c307e87eaee08678141f66",
    "abf248af69a6eae4bfd3eb2f129eeb94", "0664da1668574b88b935f3027358aef4", "aa4b9dc4bf337de90cd4fd3c467c6ab7",
    "ea5c7f471faf6bde2b1ad7d4686d2287", "2939b0183223fafc1723de4f52c43d35", "7c3956ca5eeafc3e363e9d556546eb68",
    "77c6077146f01c32b6b69d5f4ea9ffcf", "37a6986cb8847edf0925f0f1309b54de", "a705f0e69da9a8f907241a2e923c8cc8",
    "3dc47d1f29c448461e9e76ed904f6711", "0d62bf01e6fc0e1a0d3c4751c5d3692b", "8c03468bca7c669ee4fd5e084bbee7b5",
    "528a5bb93baf2c9c4473cce5d0d22bd9", "df6a301e95c95dad97ae0cc8c6913bd8", "801189902c857f39e73591285e70b6db",
    "e617346ac9c231bb3650ae34ccca0c5b", "27d93437efb721aa401821dcec5adf89", "89237d9ded9c5e78d8b1c9b166cc7342",
    "4a6d8091bf5e7d651189fa94a250b14c", "0e33f96055e7ae893ffc0e3dcf492902", "e61c432b720b19d18ec8d84bdc63151b",
    "f7e5aef549f782cf379055a608269b16", "438d030fd0b7a54fa837f2ad201a6403", "a590d3ee4fbf04e3247e0d27f286423f",
    "5fe2c1a172fe93c4b15cd37caef9f538", "2c97325cbd06b36eb2133dd08b3a017c", "92c814227a6bca949ff0659f002ad39e",
    "dce850110bd8328cfbd50841d6911d87", "67f14984c7da791248e32bb5922583da", "1938f2cf72d54ee97e94166fa91d2a36",
    "74481e9646ed49fe0f6224301604698e", "57fca5de98a9d6d8006438d0583d8a1d", "9fecde1cefdc1cbed4763674d9575359",
    "e3040c00eb28f15366ca73cbd872e740", "7697009a6a831dfecca91c5993670f7a", "5853542321f567a005d547a4f04759bd",
    "5150d1772f50834a503e069a973fbd7c",
};

static void test_siphash_vectors(void) {
    uint8_t key[16], msg[64], out[16];
    for (int i = 0; i < 16; i++) key[i] = (uint8_t)i;
    for (int i = 0; i < 64; i++) msg[i] = (uint8_t)i;
    for (int len = 0; len < 64; len++) {
        pkv_siphash128(key, msg, (size_t)len, out);
        char hex[33];
        for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", out[i]);
        if (strcmp(hex, sip128_vectors[len]) != 0) TEST_FAIL_("siphash128 len %d: %s, want %s", len, hex, sip128_vectors[len]);
        test_checks_++;
    }
    /* Unaligned input gives the same result. */
    uint8_t buf[80];
    memcpy(buf + 3, msg, 64);
    pkv_siphash128(key, buf + 3, 63, out);
    uint8_t ref[16];
    pkv_siphash128(key, msg, 63, ref);
    CHECK(memcmp(out, ref, 16) == 0);
}

static void le_bytes(uint8_t *dst, uint64_t v, int n) {
    for (int i = 0; i < n; i++) dst[i] = (uint8_t)(v >> (8 * i));
}

/* The block key is SipHash-128 over tokens (LE int32) || ns (LE) || parent key,
 * the same through the one-block path and through the lanes. */
static void test_block_key(void) {
    test_rng rng = {42};
    static const int32_t sizes[] = {1, 2, 3, 4, 7, 16, 63, 64};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        int32_t bs = sizes[si];
        for (int rep = 0; rep < 8; rep++) {
            uint8_t secret[16], parent[16], key[16], want[16];
            int32_t toks[SIP_LANES * 64];
            for (int i = 0; i < 16; i++) secret[i] = (uint8_t)test_next(&rng), parent[i] = (uint8_t)test_next(&rng);
            for (int i = 0; i < SIP_LANES * bs; i++) toks[i] = (int32_t)test_next(&rng);
            uint64_t ns = test_next(&rng);
            uint8_t msg[64 * 4 + 24];
            for (int i = 0; i < bs; i++) le_bytes(msg + 4 * i, (uint32_t)toks[i], 4);
            le_bytes(msg + 4 * bs, ns, 8);
            memcpy(msg + 4 * bs + 8, parent, 16);
            pkv_siphash128(secret, msg, (size_t)bs * 4 + 24, want);
#if defined(PKV_WEAK_HASH)
            for (int i = 0; i < 16; i++) {
                int bits = PKV_WEAK_HASH - 8 * i;
                want[i] = bits >= 8 ? want[i] : bits <= 0 ? 0 : (uint8_t)(want[i] & ((1u << bits) - 1));
            }
#endif
            prefix_block_key(secret, toks, bs, ns, parent, 0, key);
            CHECK(memcmp(key, want, 16) == 0);
            /* Four blocks through the lanes against one at a time. */
            uint64_t k[2] = {0, 0}, pk[2] = {0, 0};
            for (int i = 7; i >= 0; i--) k[0] = (k[0] << 8) | secret[i], k[1] = (k[1] << 8) | secret[8 + i];
            for (int nblk = 1; nblk <= SIP_LANES; nblk++) {
                sip_state st[SIP_LANES], one;
                sip_absorb_blocks(k, toks, bs, nblk, st);
                for (int l = 0; l < nblk; l++) {
                    uint64_t a[2], b[2];
                    sip_finish_block(&st[l], toks + l * bs, bs, ns, pk, a);
                    sip_absorb_blocks(k, toks + l * bs, bs, 1, &one);
                    sip_finish_block(&one, toks + l * bs, bs, ns, pk, b);
                    CHECK(a[0] == b[0] && a[1] == b[1]);
                    sip_absorb_blocks(k, toks + l * bs, bs, 1, &one);
                    CHECK(sip_finish_block_lo(&one, toks + l * bs, bs, ns, pk) == a[0]);
                }
            }
        }
    }
}

/* ---- helpers ---- */

static pkv_cache *make_cache(int32_t nb, int32_t bs, uint32_t flags) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = bs;
    cfg.flags = PKV_FLAG_PREFIX_CACHE | flags;
    cfg.hash_key_set = 1;
    for (int i = 0; i < 16; i++) cfg.hash_key[i] = (uint8_t)(i * 7 + 1);
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    return c;
}

/* A fresh sequence in ns holding tokens[0..n) (appended with their ids). */
static pkv_seq seq_with(pkv_cache *c, uint64_t ns, const int32_t *toks, int32_t n) {
    pkv_seq s = 0;
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_create(c, ns, &s));
    CHECK_OK(pkv_seq_append(c, s, n, toks, NULL, &cow));
    return s;
}

static int32_t blocks_of(pkv_cache *c, pkv_seq s, int32_t *out) {
    int32_t n = 0;
    CHECK_OK(pkv_seq_blocks(c, s, out, 256, &n));
    return n;
}

static pkv_stats stats_of(pkv_cache *c) {
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st));
    return st;
}

static int32_t refcount(pkv_cache *c, int32_t b) {
    int32_t rc = -1;
    CHECK_OK(pkv_block_refcount(c, b, &rc));
    return rc;
}

static int32_t lookup(pkv_cache *c, uint64_t ns, const int32_t *toks, int32_t n, pkv_seq *out) {
    int32_t cached = -1;
    pkv_seq s = 0;
    CHECK_OK(pkv_prefix_lookup(c, ns, toks, n, &s, &cached));
    if (out) *out = s;
    else CHECK_OK(pkv_seq_free(c, s));
    return cached;
}

/* ---- behaviour ---- */

static void test_basic(void) {
    pkv_cache *c = make_cache(32, 4, 0);
    int32_t p[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, b1[8], b2[8];
    pkv_seq s1, s2;
    CHECK_INT(lookup(c, 0, p, 10, &s1), 0);
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_append(c, s1, 10, p, NULL, &cow));
    int32_t reg = -1, dd = -1;
    CHECK_OK(pkv_prefix_register(c, s1, &reg, &dd));
    CHECK_INT(reg, 2);
    CHECK_INT(dd, 0);
    CHECK_OK(pkv_prefix_register(c, s1, &reg, &dd)); /* nothing new */
    CHECK_INT(reg, 0);
    CHECK_INT(dd, 0);
    CHECK_INT(stats_of(c).cached_blocks, 2);
    CHECK_INT(lookup(c, 0, p, 10, &s2), 8);
    int32_t len = 0;
    CHECK_OK(pkv_seq_length(c, s2, &len));
    CHECK_INT(len, 8);
    CHECK_INT(blocks_of(c, s1, b1), 3);
    CHECK_INT(blocks_of(c, s2, b2), 2);
    CHECK_INT(b2[0], b1[0]);
    CHECK_INT(b2[1], b1[1]);
    CHECK_INT(refcount(c, b1[0]), 2);
    CHECK_INT(refcount(c, b1[2]), 1);
    /* The engine appends the rest; the new sequence continues the chain. */
    CHECK_OK(pkv_seq_append(c, s2, 2, p + 8, NULL, &cow));
    CHECK_INT(cow.src, -1);
    int32_t q[8] = {1, 2, 3, 4, 5, 6, 7, 0};
    CHECK_INT(lookup(c, 0, q, 8, NULL), 4);  /* differs in block 1 */
    CHECK_INT(lookup(c, 0, q, 7, NULL), 4);  /* one full block */
    CHECK_INT(lookup(c, 0, q, 3, NULL), 0);  /* no full block */
    CHECK_INT(lookup(c, 0, p, 0, NULL), 0);
    q[0] = 0;
    CHECK_INT(lookup(c, 0, q, 8, NULL), 0);  /* first block misses */
    pkv_stats st = stats_of(c);
    CHECK_INT(st.prefix_queries, 7);
    CHECK_INT(st.prefix_query_tokens, 10 + 10 + 8 + 7 + 3 + 0 + 8);
    CHECK_INT(st.prefix_hit_tokens, 8 + 4 + 4);
    CHECK_INT(st.registrations, 2);
    /* Freed: the cached blocks stay findable, as evictable blocks. */
    CHECK_OK(pkv_seq_free(c, s1));
    CHECK_OK(pkv_seq_free(c, s2));
    st = stats_of(c);
    CHECK_INT(st.evictable_blocks, 2);
    CHECK_INT(st.used_blocks, 0);
    CHECK_INT(st.cached_blocks, 2);
    CHECK_INT(lookup(c, 0, p, 10, &s1), 8);
    CHECK_INT(stats_of(c).evictable_blocks, 0);
    CHECK_INT(refcount(c, b1[0]), 1);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

static void test_namespaces(void) {
    pkv_cache *c = make_cache(32, 4, 0);
    int32_t p[12];
    for (int i = 0; i < 12; i++) p[i] = 100 + i;
    pkv_seq a = seq_with(c, 1, p, 12), b = seq_with(c, 2, p, 12);
    int32_t reg, dd, ba[3], bb[3];
    CHECK_OK(pkv_prefix_register(c, a, &reg, &dd));
    CHECK_INT(reg, 3);
    CHECK_INT(lookup(c, 2, p, 12, NULL), 0); /* ns 2 sees nothing of ns 1 */
    CHECK_INT(lookup(c, 0, p, 12, NULL), 0);
    CHECK_OK(pkv_prefix_register(c, b, &reg, &dd));
    CHECK_INT(reg, 3); /* its own copies, not deduplicated across namespaces */
    CHECK_INT(dd, 0);
    blocks_of(c, a, ba);
    blocks_of(c, b, bb);
    for (int j = 0; j < 3; j++)
        for (int k = 0; k < 3; k++) CHECK(ba[j] != bb[k]);
    pkv_seq la, lb;
    int32_t got[3];
    CHECK_INT(lookup(c, 1, p, 12, &la), 12);
    blocks_of(c, la, got);
    CHECK(memcmp(got, ba, sizeof got) == 0);
    CHECK_INT(lookup(c, 2, p, 12, &lb), 12);
    blocks_of(c, lb, got);
    CHECK(memcmp(got, bb, sizeof got) == 0);
    CHECK_INT(stats_of(c).cached_blocks, 6);
    /* ns differing only in the high bit. */
    CHECK_INT(lookup(c, 1ull | (1ull << 63), p, 12, NULL), 0);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

static void test_dedup(void) {
    pkv_cache *c = make_cache(32, 4, 0);
    int32_t p[9] = {5, 6, 7, 8, 9, 10, 11, 12, 13};
    pkv_seq s1 = seq_with(c, 0, p, 9), s2 = seq_with(c, 0, p, 9);
    int32_t reg, dd, b1[3], b2[3], old2[3];
    CHECK_OK(pkv_prefix_register(c, s1, &reg, &dd));
    blocks_of(c, s1, b1);
    blocks_of(c, s2, old2);
    int32_t free_before = stats_of(c).free_blocks;
    CHECK_OK(pkv_prefix_register(c, s2, &reg, &dd));
    CHECK_INT(reg, 0);
    CHECK_INT(dd, 2);
    blocks_of(c, s2, b2);
    CHECK_INT(b2[0], b1[0]);
    CHECK_INT(b2[1], b1[1]);
    CHECK_INT(b2[2], old2[2]); /* the partial block stays its own */
    CHECK_INT(stats_of(c).free_blocks, free_before + 2);
    CHECK_INT(stats_of(c).dedups, 2);
    CHECK_INT(refcount(c, b1[0]), 2);
    CHECK_INT(refcount(c, old2[0]), 0);
    /* A block shared by a fork: deduplication moves only the registering sequence. */
    pkv_seq s3 = seq_with(c, 0, p, 9), s4;
    CHECK_OK(pkv_seq_fork(c, s3, &s4));
    int32_t b3[3], b4[3];
    blocks_of(c, s3, b3);
    CHECK_INT(refcount(c, b3[0]), 2);
    CHECK_OK(pkv_prefix_register(c, s3, &reg, &dd));
    CHECK_INT(dd, 2);
    blocks_of(c, s4, b4);
    CHECK(memcmp(b4, b3, sizeof b4) == 0); /* s4 untouched */
    CHECK_INT(refcount(c, b3[0]), 1);
    CHECK_INT(refcount(c, b1[0]), 3);
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_prefix_register(c, s4, &reg, &dd));
    CHECK_INT(dd, 2);
    CHECK_INT(refcount(c, b1[0]), 4);
    CHECK_INT(refcount(c, b3[0]), 0);
    /* A sequence forked from a registered one holds the same cached blocks. */
    pkv_seq s5;
    CHECK_OK(pkv_seq_fork(c, s1, &s5));
    CHECK_OK(pkv_prefix_register(c, s5, &reg, &dd));
    CHECK_INT(reg + dd, 0);
    CHECK_INT(stats_of(c).dedups, 6);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

/* LRU across chains; within one chain the deepest block goes first; a chain
 * broken by evicting its parent first loses its orphans at once. */
static void test_eviction_order(void) {
    pkv_cache *c = make_cache(8, 2, 0);
    int32_t a[6] = {1, 1, 2, 2, 3, 3}, b[4] = {7, 7, 8, 8}, ba[3], bb[2];
    pkv_seq sa = seq_with(c, 0, a, 6), sb = seq_with(c, 0, b, 4);
    CHECK_OK(pkv_prefix_register(c, sa, NULL, NULL));
    CHECK_OK(pkv_prefix_register(c, sb, NULL, NULL));
    blocks_of(c, sa, ba);
    blocks_of(c, sb, bb);
    CHECK_OK(pkv_seq_free(c, sa)); /* LRU: a2 a1 a0 */
    CHECK_OK(pkv_seq_free(c, sb)); /* then b1 b0 */
    CHECK_INT(stats_of(c).evictable_blocks, 5);
    CHECK_INT(lookup(c, 0, a, 6, NULL), 6); /* a used again: LRU b1 b0 a2 a1 a0 */
    pkv_seq filler;
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_create(c, 0, &filler));
    CHECK_OK(pkv_seq_append(c, filler, 6, NULL, NULL, &cow)); /* the 3 free blocks */
    CHECK_INT(stats_of(c).evictions, 0);
    CHECK_OK(pkv_seq_append(c, filler, 2, NULL, NULL, &cow)); /* evicts b1 */
    int32_t fb[8];
    CHECK_INT(blocks_of(c, filler, fb), 4);
    CHECK_INT(fb[3], bb[1]);
    CHECK_INT(lookup(c, 0, b, 4, NULL), 2);
    CHECK_INT(lookup(c, 0, a, 6, NULL), 6);
    /* LRU now: b0 a2 a1 a0 (the lookups re-released them in that order) */
    CHECK_OK(pkv_seq_append(c, filler, 2, NULL, NULL, &cow)); /* evicts b0 */
    CHECK_INT(lookup(c, 0, b, 4, NULL), 0);
    CHECK_OK(pkv_seq_append(c, filler, 2, NULL, NULL, &cow)); /* evicts a2, the deepest */
    CHECK_INT(blocks_of(c, filler, fb), 6);
    CHECK_INT(fb[5], ba[2]);
    CHECK_INT(lookup(c, 0, a, 6, NULL), 4);
    CHECK_INT(stats_of(c).evictions, 3);
    CHECK_INT(stats_of(c).cached_blocks, 2);
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_seq_free(c, filler));
    pkv_cache_destroy(c);

    /* Orphans: force the chain's root to be reclaimed first. */
    c = make_cache(4, 2, 0);
    int32_t ch[8] = {1, 2, 3, 4, 5, 6, 7, 8}, bc[4];
    pkv_seq s = seq_with(c, 0, ch, 6);
    CHECK_OK(pkv_prefix_register(c, s, NULL, NULL));
    blocks_of(c, s, bc);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_INT(stats_of(c).evictable_blocks, 3);
    CHECK_INT(stats_of(c).free_blocks, 1);
    pool_evict_first(&c->pool, bc[0]);
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append(c, s, 4, NULL, NULL, &cow)); /* free block, then the root */
    blocks_of(c, s, fb);
    CHECK_INT(fb[1], bc[0]);
    pkv_stats st = stats_of(c);
    CHECK_INT(st.cached_blocks, 0);      /* children dropped with it */
    CHECK_INT(st.evictable_blocks, 0);
    CHECK_INT(st.free_blocks, 2);        /* ... onto the free list */
    CHECK_INT(st.evictions, 3);
    CHECK_INT(lookup(c, 0, ch, 6, NULL), 0);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

static void test_auto_register(void) {
    pkv_cache *c = make_cache(32, 4, PKV_FLAG_AUTO_REGISTER);
    int32_t p[11] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, b1[3], b2[3], old[3];
    pkv_seq s1 = seq_with(c, 0, p, 10);
    CHECK_INT(stats_of(c).cached_blocks, 2); /* registered as they filled */
    CHECK_INT(lookup(c, 0, p, 10, NULL), 8);
    /* A second copy: blocks it just filled are not moved (their slots were just
     * handed out); the next append, once their KV is written, deduplicates. */
    pkv_seq s2 = seq_with(c, 0, p, 10);
    blocks_of(c, s1, b1);
    blocks_of(c, s2, old);
    CHECK_INT(stats_of(c).dedups, 0);
    CHECK_INT(stats_of(c).cached_blocks, 2);
    int64_t slot = -1;
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_append(c, s2, 1, p + 10, &slot, &cow));
    CHECK_INT(stats_of(c).dedups, 2);
    blocks_of(c, s2, b2);
    CHECK_INT(b2[0], b1[0]);
    CHECK_INT(b2[1], b1[1]);
    CHECK_INT(b2[2], old[2]);
    CHECK_INT(slot, (int64_t)old[2] * 4 + 2); /* the new token's slot is in its own block */
    /* Appends without token ids register nothing further. */
    CHECK_OK(pkv_seq_append(c, s1, 6, NULL, NULL, &cow));
    CHECK_INT(stats_of(c).cached_blocks, 2);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

/* Truncating into a cached block and appending copies it: the cached block keeps
 * its contents and stays findable. */
static void test_truncate_cow(void) {
    pkv_cache *c = make_cache(16, 4, 0);
    int32_t p[8] = {1, 2, 3, 4, 5, 6, 7, 8}, alt[2] = {70, 80}, b[2], nb[2];
    pkv_seq s = seq_with(c, 0, p, 8);
    CHECK_OK(pkv_prefix_register(c, s, NULL, NULL));
    blocks_of(c, s, b);
    CHECK_OK(pkv_seq_truncate(c, s, 6));
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_append(c, s, 2, alt, NULL, &cow));
    CHECK_INT(cow.src, b[1]);
    CHECK(cow.dst != b[1]);
    blocks_of(c, s, nb);
    CHECK_INT(nb[1], cow.dst);
    CHECK_INT(lookup(c, 0, p, 8, NULL), 8);
    int32_t q[8] = {1, 2, 3, 4, 5, 6, 70, 80}, reg, dd;
    CHECK_INT(lookup(c, 0, q, 8, NULL), 4);
    CHECK_OK(pkv_prefix_register(c, s, &reg, &dd));
    CHECK_INT(reg, 1);
    CHECK_INT(lookup(c, 0, q, 8, NULL), 8);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

static void test_validation(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    pkv_cache *plain = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &plain));
    int32_t p[4] = {1, 2, 3, 4}, cached = 0;
    pkv_seq s = 0;
    CHECK_STATUS(pkv_prefix_lookup(plain, 0, p, 4, &s, &cached), PKV_ERR_MODE);
    CHECK_OK(pkv_seq_create(plain, 0, &s));
    CHECK_STATUS(pkv_prefix_register(plain, s, NULL, NULL), PKV_ERR_MODE);
    CHECK_INT(stats_of(plain).cached_blocks, 0);
    pkv_cache_destroy(plain);

    pkv_cache *c = make_cache(8, 2, 0);
    CHECK_STATUS(pkv_prefix_lookup(NULL, 0, p, 4, &s, &cached), PKV_ERR_NULL);
    CHECK_STATUS(pkv_prefix_lookup(c, 0, NULL, 4, &s, &cached), PKV_ERR_NULL);
    CHECK_STATUS(pkv_prefix_lookup(c, 0, p, 4, NULL, &cached), PKV_ERR_NULL);
    CHECK_STATUS(pkv_prefix_lookup(c, 0, p, 4, &s, NULL), PKV_ERR_NULL);
    CHECK_STATUS(pkv_prefix_lookup(c, 0, p, -1, &s, &cached), PKV_ERR_INVALID);
    CHECK_OK(pkv_prefix_lookup(c, 0, NULL, 0, &s, &cached)); /* empty prompt */
    CHECK_INT(cached, 0);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_STATUS(pkv_prefix_register(c, s, NULL, NULL), PKV_ERR_NO_SEQ);
    CHECK_STATUS(pkv_prefix_register(NULL, s, NULL, NULL), PKV_ERR_NULL);
    CHECK_STATUS(pkv_prefix_register(c, 0, NULL, NULL), PKV_ERR_NO_SEQ);
    CHECK_INT(stats_of(c).num_seqs, 0);
    CHECK_INT(stats_of(c).prefix_queries, 1);
    /* A sequence whose token ids are unknown registers nothing. */
    pkv_block_copy cow;
    int32_t reg = -1, dd = -1;
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append(c, s, 4, NULL, NULL, &cow));
    CHECK_OK(pkv_prefix_register(c, s, &reg, &dd));
    CHECK_INT(reg, 0);
    CHECK_INT(dd, 0);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);

    cfg.flags = PKV_FLAG_AUTO_REGISTER; /* needs PKV_FLAG_PREFIX_CACHE */
    CHECK_STATUS(pkv_cache_create(&cfg, &plain), PKV_ERR_INVALID);
}

static void test_secret(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    pkv_cache *a = NULL, *b = NULL, *k = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &a));
    CHECK_OK(pkv_cache_create(&cfg, &b));
    uint8_t sa[16], sb[16], sk[16], zero[16] = {0};
    prefix_secret(a, sa);
    prefix_secret(b, sb);
    CHECK(memcmp(sa, sb, 16) != 0);
    CHECK(memcmp(sa, zero, 16) != 0);
    cfg.hash_key_set = 1;
    for (int i = 0; i < 16; i++) cfg.hash_key[i] = (uint8_t)(0xa0 + i);
    CHECK_OK(pkv_cache_create(&cfg, &k));
    prefix_secret(k, sk);
    CHECK(memcmp(sk, cfg.hash_key, 16) == 0);
    pkv_cache_destroy(a);
    pkv_cache_destroy(b);
    pkv_cache_destroy(k);
}

/* ---- allocation failures: a failed call changes nothing ---- */

typedef struct fail_alloc { long countdown; } fail_alloc;
static void *fa_alloc(void *o, size_t n) {
    fail_alloc *f = o;
    if (f->countdown >= 0 && f->countdown-- == 0) return NULL;
    return malloc(n);
}
static void fa_free(void *o, void *p) { (void)o; free(p); }

static size_t dump_of(pkv_cache *c, uint8_t **buf) {
    size_t n = cache_dump(c, NULL, 0);
    *buf = malloc(n ? n : 1);
    cache_dump(c, *buf, n);
    return n;
}

/* Runs a small workload with the k-th allocation failing (k = 0, 1, ...) until
 * a run sees no failure; each failed call must leave the dump unchanged. */
static void test_alloc_failures(void) {
    int points = 0;
    for (long k = 0; k < 1000; k++) {
        fail_alloc fa = {-1};
        pkv_config cfg;
        pkv_config_init(&cfg);
        cfg.num_blocks = 64;
        cfg.block_size = 4;
        /* Odd runs register explicitly, so that registration grows key arrays. */
        cfg.flags = PKV_FLAG_PREFIX_CACHE | (k % 2 ? 0 : PKV_FLAG_AUTO_REGISTER);
        cfg.hash_key_set = 1;
        cfg.allocator = (pkv_allocator){fa_alloc, fa_free, &fa};
        pkv_cache *c = NULL;
        CHECK_OK(pkv_cache_create(&cfg, &c));
        fa.countdown = k;
        int32_t p[64];
        for (int i = 0; i < 64; i++) p[i] = i % 13;
        int nomem = 0;
        pkv_seq live[16] = {0};
        for (int step = 0; step < 16 && !nomem; step++) {
            uint8_t *before, *after;
            size_t nb = dump_of(c, &before);
            pkv_seq s = 0;
            int32_t cached = 0, n = 9 + 3 * step;
            int st = PKV_OK;
            pkv_block_copy cow;
            switch (step % 4) {
            case 0: st = pkv_prefix_lookup(c, (uint64_t)(step % 8 == 0), p, n, &s, &cached); break;
            case 1: /* an append that registers (and grows the key array) */
                st = pkv_seq_create(c, 0, &s);
                if (st == PKV_OK) {
                    free(before);
                    nb = dump_of(c, &before);
                    st = pkv_seq_append(c, s, n, p, NULL, &cow);
                }
                break;
            case 2: /* explicit registration */
                st = pkv_seq_create(c, 0, &s);
                if (st == PKV_OK) {
                    free(before);
                    nb = dump_of(c, &before);
                    st = pkv_seq_append(c, s, 4, NULL, NULL, &cow);
                }
                if (st == PKV_OK) {
                    free(before);
                    nb = dump_of(c, &before);
                    st = pkv_prefix_register(c, live[step - 1], NULL, NULL);
                }
                break;
            default: /* lookup, then append the rest */
                st = pkv_prefix_lookup(c, 0, p, n, &s, &cached);
                if (st == PKV_OK) {
                    free(before);
                    nb = dump_of(c, &before);
                    st = pkv_seq_append(c, s, n - cached, p + cached, NULL, &cow);
                }
                break;
            }
            live[step] = s;
            if (st != PKV_OK) {
                CHECK_STATUS(st, PKV_ERR_NOMEM);
                size_t na = dump_of(c, &after);
                CHECK(na == nb && memcmp(after, before, na) == 0);
                if (na != nb || memcmp(after, before, na)) {
                    size_t off = 0;
                    while (off < na && off < nb && after[off] == before[off]) off++;
                    fprintf(stderr, "  k %ld step %d: dump %zu -> %zu bytes, first difference at %zu\n", k, step, nb, na, off);
                }
                free(after);
                nomem = 1;
            }
            free(before);
        }
        fa.countdown = -1;
        CHECK_OK(pkv_cache_check(c));
        pkv_cache_destroy(c);
        if (!nomem) break;
        points++;
    }
    CHECK(points > 5 && points < 1000);
    printf("prefix: %d allocation-failure points, each left the cache unchanged\n", points);
}

/* ---- threads: a thread-safe cache driven by two threads ---- */

typedef struct thr_arg { pkv_cache *c; uint64_t seed; long ops; int fails; } thr_arg;

static void *thr_main(void *v) {
    thr_arg *a = v;
    test_rng rng = {a->seed};
    int32_t stems[3][24];
    for (int s = 0; s < 3; s++)
        for (int i = 0; i < 24; i++) stems[s][i] = s * 100 + i;
    pkv_seq live[4] = {0};
    for (long i = 0; i < a->ops; i++) {
        int k = (int)test_below(&rng, 4);
        if (live[k]) {
            if (pkv_seq_free(a->c, live[k]) != PKV_OK) a->fails++;
            live[k] = 0;
            continue;
        }
        const int32_t *p = stems[test_below(&rng, 3)];
        int32_t n = 4 + (int32_t)test_below(&rng, 20), cached = 0;
        if (pkv_prefix_lookup(a->c, 0, p, n, &live[k], &cached) != PKV_OK || cached > n || cached % 4) {
            a->fails++;
            continue;
        }
        pkv_block_copy cow;
        int st = pkv_seq_append(a->c, live[k], n - cached, p + cached, NULL, &cow);
        if (st == PKV_OK) st = pkv_prefix_register(a->c, live[k], NULL, NULL);
        if (st != PKV_OK && st != PKV_ERR_CAPACITY) a->fails++;
    }
    for (int k = 0; k < 4; k++)
        if (live[k]) pkv_seq_free(a->c, live[k]);
    return NULL;
}

static void test_threads(void) {
    pkv_cache *c = make_cache(24, 4, PKV_FLAG_THREAD_SAFE);
    thr_arg a[2] = {{c, 1, test_scaled(20000), 0}, {c, 2, test_scaled(20000), 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) CHECK_INT(pthread_create(&t[i], NULL, thr_main, &a[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    CHECK_INT(a[0].fails + a[1].fails, 0);
    CHECK_OK(pkv_cache_check(c));
    CHECK_INT(stats_of(c).used_blocks, 0);
    pkv_cache_destroy(c);
}

int main(void) {
    test_siphash_vectors();
    test_block_key();
    test_basic();
    test_namespaces();
    test_dedup();
    test_eviction_order();
    test_auto_register();
    test_truncate_cow();
    test_validation();
    test_secret();
    test_alloc_failures();
    test_threads();
    return test_report("test_prefix");
}
