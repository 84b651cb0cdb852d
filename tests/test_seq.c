/* Unit tests of the core: configuration, pool, sequences, copy-on-write,
 * storage and page-table export, each operation and its error paths. */
#include "test.h"

static pkv_cache *make_cache(int32_t nb, int32_t bs) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = bs;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    return c;
}

static void test_config(void) {
    pkv_config cfg;
    pkv_cache *c = (pkv_cache *)1;
    pkv_config_init(&cfg);
    CHECK_INT(cfg.block_size, 64);
    CHECK_INT(cfg.d, 576);
    CHECK_STATUS(pkv_cache_create(NULL, &c), PKV_ERR_NULL);
    CHECK(c == NULL);
    CHECK_STATUS(pkv_cache_create(&cfg, NULL), PKV_ERR_NULL);
    static const struct { int32_t nb, bs; } bad[] = {{0, 64}, {-1, 64}, {8, 0}, {8, 4097}, {8, -3}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg.num_blocks = bad[i].nb;
        cfg.block_size = bad[i].bs;
        CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
    }
    pkv_config_init(&cfg);
    cfg.flags = 1u << 30;
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
    pkv_config_init(&cfg);
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_blocks = 4;
    cfg.kv_dtype = 9;
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_DTYPE);
    cfg.kv_dtype = PKV_FP8_MLA656;
    cfg.d = 128;
    cfg.dv = 128;
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_DTYPE);
    cfg.d = 576;
    cfg.dv = 512;
    cfg.kv_dtype = PKV_BF16;
    cfg.dv = 600; /* V shared but wider than K */
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
    cfg.storage = 7;
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
    /* limits that are valid */
    pkv_config_init(&cfg);
    cfg.num_blocks = 1;
    cfg.block_size = 4096;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    pkv_config got;
    pkv_config_init(&got);
    CHECK_OK(pkv_cache_config(c, &got));
    CHECK_INT(got.block_size, 4096);
    pkv_cache_destroy(c);
    pkv_cache_destroy(NULL);
}

static void test_strerror(void) {
    for (int s = 0; s >= PKV_ERR_SLOT; s--) {
        const char *t = pkv_strerror(s);
        CHECK(t && *t && strcmp(t, "unknown status") != 0);
    }
    CHECK(strcmp(pkv_strerror(-1000), "unknown status") == 0);
    CHECK(strcmp(pkv_version(), PKV_VERSION_STRING) == 0);
}

static void test_append_slots(void) {
    pkv_cache *c = make_cache(8, 4);
    pkv_seq s;
    pkv_block_copy cow;
    int64_t slots[32];
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK(s > 0);
    int32_t need = -1;
    CHECK_OK(pkv_seq_blocks_needed(c, s, 6, &need));
    CHECK_INT(need, 2);
    CHECK_OK(pkv_seq_append(c, s, 6, NULL, slots, &cow));
    CHECK_INT(cow.src, -1);
    /* a new pool hands out blocks 0, 1, ... */
    for (int i = 0; i < 6; i++) CHECK_INT(slots[i], (i / 4) * 4 + i % 4);
    CHECK_OK(pkv_seq_append(c, s, 3, NULL, slots, &cow));
    CHECK_INT(slots[0], 6);
    CHECK_INT(slots[1], 7);
    CHECK_INT(slots[2], 8); /* block 2, offset 0 */
    int32_t len, blocks[8], n;
    CHECK_OK(pkv_seq_length(c, s, &len));
    CHECK_INT(len, 9);
    CHECK_OK(pkv_seq_blocks(c, s, blocks, 8, &n));
    CHECK_INT(n, 3);
    CHECK_STATUS(pkv_seq_blocks(c, s, blocks, 2, &n), PKV_ERR_BUFFER);
    CHECK_INT(n, 3);
    CHECK_OK(pkv_seq_append(c, s, 0, NULL, NULL, &cow));
    /* metadata mode requires cow */
    CHECK_STATUS(pkv_seq_append(c, s, 1, NULL, NULL, NULL), PKV_ERR_NULL);
    CHECK_STATUS(pkv_seq_append(c, s, -1, NULL, NULL, &cow), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_seq_append(c, s, INT32_MAX, NULL, NULL, &cow), PKV_ERR_INVALID); /* length overflow */
    CHECK_STATUS(pkv_seq_append(c, s, INT32_MAX - 9, NULL, NULL, &cow), PKV_ERR_CAPACITY);
    CHECK_STATUS(pkv_seq_append(c, 12345, 1, NULL, NULL, &cow), PKV_ERR_NO_SEQ);
    CHECK_STATUS(pkv_seq_append(c, -5, 1, NULL, NULL, &cow), PKV_ERR_NO_SEQ);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

static void test_capacity_all_or_nothing(void) {
    pkv_cache *c = make_cache(4, 16);
    pkv_seq a, b;
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_create(c, 0, &a));
    CHECK_OK(pkv_seq_create(c, 0, &b));
    CHECK_OK(pkv_seq_append(c, a, 40, NULL, NULL, &cow)); /* 3 blocks */
    pkv_stats st0 = PKV_STATS_INIT, st1 = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st0));
    CHECK_INT(st0.free_blocks, 1);
    CHECK_STATUS(pkv_seq_append(c, b, 17, NULL, NULL, &cow), PKV_ERR_CAPACITY);
    CHECK(strstr(pkv_cache_last_error(c), "needs 2 blocks") != NULL);
    CHECK_OK(pkv_cache_stats(c, &st1));
    CHECK_INT(st1.free_blocks, 1);
    CHECK_INT(st1.tokens, 40);
    int32_t len;
    CHECK_OK(pkv_seq_length(c, b, &len));
    CHECK_INT(len, 0);
    /* exactly fits: 8 more tokens into a's last block + 16 into one new block */
    CHECK_OK(pkv_seq_append(c, a, 24, NULL, NULL, &cow));
    CHECK_STATUS(pkv_seq_append(c, a, 1, NULL, NULL, &cow), PKV_ERR_CAPACITY);
    CHECK_STATUS(pkv_seq_append(c, b, 1, NULL, NULL, &cow), PKV_ERR_CAPACITY);
    CHECK_OK(pkv_seq_truncate(c, a, 17)); /* frees 2 blocks */
    CHECK_OK(pkv_cache_stats(c, &st1));
    CHECK_INT(st1.free_blocks, 2);
    CHECK_STATUS(pkv_seq_truncate(c, a, 18), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_seq_truncate(c, a, -1), PKV_ERR_INVALID);
    CHECK_OK(pkv_seq_truncate(c, a, 17));
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

static void test_fork_cow_metadata(void) {
    pkv_cache *c = make_cache(16, 4);
    pkv_seq p, ch;
    pkv_block_copy cow;
    int64_t slots[8];
    int32_t rc, need;
    CHECK_OK(pkv_seq_create(c, 0, &p));
    CHECK_OK(pkv_seq_append(c, p, 6, NULL, NULL, &cow)); /* blocks 0 (full), 1 (2 of 4) */
    CHECK_OK(pkv_seq_fork(c, p, &ch));
    CHECK_OK(pkv_block_refcount(c, 0, &rc));
    CHECK_INT(rc, 2);
    CHECK_OK(pkv_block_refcount(c, 1, &rc));
    CHECK_INT(rc, 2);
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st));
    CHECK_INT(st.shared_blocks, 2);
    CHECK_INT(st.tokens, 12);
    /* appending into the shared partial block copies it first */
    CHECK_OK(pkv_seq_blocks_needed(c, ch, 1, &need));
    CHECK_INT(need, 1);
    CHECK_OK(pkv_seq_append(c, ch, 1, NULL, slots, &cow));
    CHECK_INT(cow.src, 1);
    CHECK(cow.dst >= 2);
    CHECK_INT(slots[0], (int64_t)cow.dst * 4 + 2);
    CHECK_OK(pkv_block_refcount(c, 1, &rc));
    CHECK_INT(rc, 1);
    /* the parent now owns block 1 alone: no copy */
    CHECK_OK(pkv_seq_append(c, p, 1, NULL, slots, &cow));
    CHECK_INT(cow.src, -1);
    CHECK_INT(slots[0], 1 * 4 + 2);
    /* a full shared block is never copied: appends take a new block */
    pkv_seq g;
    CHECK_OK(pkv_seq_truncate(c, p, 4));
    CHECK_OK(pkv_seq_fork(c, p, &g));
    CHECK_OK(pkv_seq_append(c, g, 1, NULL, NULL, &cow));
    CHECK_INT(cow.src, -1);
    CHECK_OK(pkv_block_refcount(c, 0, &rc));
    CHECK_INT(rc, 3);
    CHECK_OK(pkv_seq_free(c, p));
    CHECK_STATUS(pkv_seq_free(c, p), PKV_ERR_NO_SEQ);
    CHECK_STATUS(pkv_seq_fork(c, p, &g), PKV_ERR_NO_SEQ);
    CHECK_OK(pkv_block_refcount(c, 0, &rc));
    CHECK_INT(rc, 2);
    CHECK_STATUS(pkv_block_refcount(c, 16, &rc), PKV_ERR_BLOCK_ID);
    CHECK_STATUS(pkv_block_refcount(c, -1, &rc), PKV_ERR_BLOCK_ID);
    CHECK_OK(pkv_cache_check(c));
    /* handles are not reused after free */
    pkv_seq again;
    CHECK_OK(pkv_seq_create(c, 0, &again));
    CHECK(again != p);
    CHECK_STATUS(pkv_seq_truncate(c, p, 0), PKV_ERR_NO_SEQ);
    pkv_cache_destroy(c);
}

static pkv_cache *make_host(int32_t nb, int32_t bs, int32_t layers, int32_t dtype, int sep) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = bs;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = layers;
    cfg.h_kv = 2;
    cfg.d = 8;
    cfg.dv = sep ? 6 : 4;
    cfg.v_separate = sep;
    cfg.kv_dtype = dtype;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    return c;
}

/* Host mode: rows land at their slots in every layer, conversions round to
 * nearest even, and copy-on-write copies the block in all layers. */
static void test_host_storage(void) {
    for (int dtype = PKV_F32; dtype <= PKV_BF16; dtype++) {
        pkv_cache *c = make_host(8, 4, 2, dtype, 1);
        pkv_seq s, f;
        int64_t slots[6];
        float k[6 * 16], v[6 * 12], kr[6 * 16], vr[6 * 12];
        CHECK_OK(pkv_seq_create(c, 0, &s));
        CHECK_OK(pkv_seq_append(c, s, 6, NULL, slots, NULL));
        for (int i = 0; i < 6 * 16; i++) k[i] = (float)(i % 37) * 0.25f - 3.0f;
        for (int i = 0; i < 6 * 12; i++) v[i] = (float)(i % 29) * -0.5f + 1.0f;
        for (int layer = 0; layer < 2; layer++) {
            CHECK_OK(pkv_store_write(c, layer, slots, 6, k, v, PKV_F32));
            CHECK_OK(pkv_store_read(c, layer, slots, 6, kr, vr));
            CHECK(memcmp(k, kr, sizeof k) == 0); /* these values are exact in every dtype */
            CHECK(memcmp(v, vr, sizeof v) == 0);
        }
        /* the arena layout is FlashMLA's [num_blocks][block_size][h_kv][d] */
        void *ka, *va;
        CHECK_OK(pkv_store_arenas(c, 1, &ka, &va));
        CHECK(va != NULL);
        size_t es = pkv_dtype_size(dtype);
        int64_t slot = slots[5];
        float first;
        if (dtype == PKV_F32) memcpy(&first, (char *)ka + (size_t)slot * 16 * es, 4);
        else {
            uint16_t h;
            memcpy(&h, (char *)ka + (size_t)slot * 16 * es, 2);
            uint32_t u = (uint32_t)h << 16;
            if (dtype == PKV_BF16) memcpy(&first, &u, 4);
            else first = k[5 * 16]; /* f16 checked through read-back above */
        }
        CHECK(first == k[5 * 16]);
        /* fork + append into the shared partial block copies it in both layers */
        CHECK_OK(pkv_seq_fork(c, s, &f));
        int64_t fs[1];
        pkv_block_copy cow;
        CHECK_OK(pkv_seq_append(c, f, 1, NULL, fs, &cow));
        CHECK(cow.src == (int32_t)(slots[4] / 4) && cow.dst != cow.src);
        int64_t moved[2] = {(int64_t)cow.dst * 4 + 0, (int64_t)cow.dst * 4 + 1};
        for (int layer = 0; layer < 2; layer++) {
            CHECK_OK(pkv_store_read(c, layer, moved, 2, kr, vr));
            CHECK(memcmp(kr, k + 4 * 16, 2 * 16 * sizeof(float)) == 0);
            CHECK(memcmp(vr, v + 4 * 12, 2 * 12 * sizeof(float)) == 0);
        }
        /* writes through the child's slot do not touch the parent's block */
        float z[16] = {0}, zv[12] = {0};
        CHECK_OK(pkv_store_write(c, 0, fs, 1, z, zv, PKV_F32));
        CHECK_OK(pkv_store_read(c, 0, slots, 6, kr, vr));
        CHECK(memcmp(k, kr, sizeof k) == 0);
        /* errors: bad layer, slot outside, slot in a free block, dtype */
        int64_t bad[1] = {8 * 4};
        CHECK_STATUS(pkv_store_write(c, 2, slots, 1, k, v, PKV_F32), PKV_ERR_INVALID);
        CHECK_STATUS(pkv_store_write(c, 0, bad, 1, k, v, PKV_F32), PKV_ERR_SLOT);
        bad[0] = 7 * 4;
        CHECK_STATUS(pkv_store_write(c, 0, bad, 1, k, v, PKV_F32), PKV_ERR_SLOT);
        CHECK_STATUS(pkv_store_write(c, 0, slots, 1, k, NULL, PKV_F32), PKV_ERR_NULL);
        CHECK_STATUS(pkv_store_write(c, 0, slots, 1, k, v, PKV_FP8_MLA656), PKV_ERR_DTYPE);
        if (dtype != PKV_F32) CHECK_STATUS(pkv_store_write(c, 0, slots, 1, k, v, 3 - dtype), PKV_ERR_DTYPE);
        CHECK_STATUS(pkv_store_write(c, 0, slots, -1, k, v, PKV_F32), PKV_ERR_INVALID);
        CHECK_OK(pkv_cache_check(c));
        pkv_cache_destroy(c);
    }
    /* rounding: f32 -> bf16 and f16 round to nearest even */
    pkv_cache *c = make_host(2, 1, 1, PKV_BF16, 0);
    pkv_seq s;
    int64_t slot[1];
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append(c, s, 1, NULL, slot, NULL));
    float k[16], kr[16], vr[8];
    for (int i = 0; i < 16; i++) k[i] = 1.0f + (float)i / 512.0f; /* 1 + i*2^-9: bf16 keeps 7 bits */
    CHECK_OK(pkv_store_write(c, 0, slot, 1, k, NULL, PKV_F32));
    CHECK_OK(pkv_store_read(c, 0, slot, 1, kr, vr));
    /* i*2^-9 rounds to a multiple of 2^-7, ties (i = 2, 6, 10, 14) to even */
    static const float want[16] = {1, 1, 1, 1.0078125f, 1.0078125f, 1.0078125f, 1.015625f, 1.015625f,
                                   1.015625f, 1.015625f, 1.015625f, 1.0234375f, 1.0234375f, 1.0234375f,
                                   1.03125f, 1.03125f};
    for (int i = 0; i < 16; i++) CHECK_NEAR(kr[i], want[i], 0);
    for (int i = 0; i < 4; i++) CHECK_NEAR(vr[i], want[i], 0); /* V = first dv dims of K */
    pkv_cache_destroy(c);
    /* metadata mode has no storage */
    c = make_cache(2, 4);
    CHECK_STATUS(pkv_store_write(c, 0, slot, 1, k, NULL, PKV_F32), PKV_ERR_MODE);
    void *ka;
    CHECK_STATUS(pkv_store_arenas(c, 0, &ka, NULL), PKV_ERR_MODE);
    pkv_cache_destroy(c);
}

static void test_exports(void) {
    pkv_cache *c = make_cache(16, 4);
    pkv_seq s[3];
    pkv_block_copy cow;
    for (int i = 0; i < 3; i++) CHECK_OK(pkv_seq_create(c, 0, &s[i]));
    CHECK_OK(pkv_seq_append(c, s[0], 5, NULL, NULL, &cow));  /* blocks 0,1 */
    CHECK_OK(pkv_seq_append(c, s[2], 8, NULL, NULL, &cow));  /* blocks 2,3 */
    CHECK_OK(pkv_seq_append(c, s[0], 2, NULL, NULL, &cow));  /* 7 tokens */
    int32_t table[3 * 3], lens[3], need = 0;
    CHECK_STATUS(pkv_export_flashmla(c, s, 3, table, 1, lens, &need), PKV_ERR_BUFFER);
    CHECK_INT(need, 2);
    CHECK(strstr(pkv_cache_last_error(c), ">= 2") != NULL);
    CHECK_OK(pkv_export_flashmla(c, s, 3, table, 3, lens, &need));
    static const int32_t want_table[9] = {0, 1, -1, -1, -1, -1, 2, 3, -1};
    for (int i = 0; i < 9; i++) CHECK_INT(table[i], want_table[i]);
    CHECK_INT(lens[0], 7);
    CHECK_INT(lens[1], 0);
    CHECK_INT(lens[2], 8);
    int32_t indptr[4], idx[8], last[3];
    CHECK_STATUS(pkv_export_flashinfer(c, s, 3, indptr, idx, 3, last, &need), PKV_ERR_BUFFER);
    CHECK_INT(need, 4);
    CHECK_OK(pkv_export_flashinfer(c, s, 3, indptr, idx, 8, last, &need));
    CHECK_INT(indptr[0], 0);
    CHECK_INT(indptr[1], 2);
    CHECK_INT(indptr[2], 2);
    CHECK_INT(indptr[3], 4);
    CHECK_INT(idx[0], 0);
    CHECK_INT(idx[3], 3);
    CHECK_INT(last[0], 3);
    CHECK_INT(last[1], 0);
    CHECK_INT(last[2], 4);
    int64_t slots[16];
    int32_t n;
    CHECK_OK(pkv_export_slot_mapping(c, s, 3, slots, 16, &n));
    CHECK_INT(n, 2 + 8); /* s[0]'s last append: 2 tokens; s[2]: 8 */
    CHECK_INT(slots[0], 1 * 4 + 1);
    CHECK_INT(slots[1], 1 * 4 + 2);
    CHECK_INT(slots[2], 8);
    CHECK_STATUS(pkv_export_slot_mapping(c, s, 3, slots, 9, &n), PKV_ERR_BUFFER);
    CHECK_INT(n, 10);
    pkv_seq bad[2] = {s[0], 999};
    CHECK_STATUS(pkv_export_flashmla(c, bad, 2, table, 3, lens, &need), PKV_ERR_NO_SEQ);
    CHECK_STATUS(pkv_export_flashmla(c, NULL, 2, table, 3, lens, &need), PKV_ERR_NULL);
    CHECK_STATUS(pkv_export_flashmla(c, s, -1, table, 3, lens, &need), PKV_ERR_INVALID);
    CHECK_OK(pkv_export_flashmla(c, s, 0, NULL, 0, NULL, &need));
    pkv_cache_destroy(c);
}

/* Allocation goes through the hook; a hook that fails gives PKV_ERR_NOMEM. */
typedef struct counting { long allocs, frees, fail_at; } counting;
static void *count_alloc(void *o, size_t n) {
    counting *k = o;
    if (k->fail_at && k->allocs + 1 == k->fail_at) return NULL;
    k->allocs++;
    return malloc(n);
}
static void count_free(void *o, void *p) {
    ((counting *)o)->frees++;
    free(p);
}

static void test_allocator_hook(void) {
    counting k = {0, 0, 0};
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 8;
    cfg.allocator.alloc = count_alloc;
    cfg.allocator.free = count_free;
    cfg.allocator.opaque = &k;
    pkv_cache *c;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    CHECK(k.allocs > 0);
    pkv_seq s;
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append(c, s, 100, NULL, NULL, &cow));
    pkv_cache_destroy(c);
    CHECK_INT(k.allocs, k.frees);
    for (long f = 1; f < 8; f++) {
        counting j = {0, 0, f};
        cfg.allocator.opaque = &j;
        int st = pkv_cache_create(&cfg, &c);
        CHECK(st == PKV_OK || st == PKV_ERR_NOMEM);
        if (st == PKV_OK) pkv_cache_destroy(c);
        CHECK_INT(j.allocs, j.frees);
    }
    cfg.allocator.free = NULL;
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
}

/* The header's advice for a fully cached prompt: truncate by one token and
 * append it again; the cached block is copied, never written. */
static void test_full_hit_recompute(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 8;
    cfg.block_size = 4;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    pkv_cache *c;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    int32_t toks[8] = {1, 2, 3, 4, 5, 6, 7, 8}, cached, reg, rc;
    pkv_seq a, b;
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_create(c, 0, &a));
    CHECK_OK(pkv_seq_append(c, a, 8, toks, NULL, &cow));
    CHECK_OK(pkv_prefix_register(c, a, &reg, NULL));
    CHECK_INT(reg, 2);
    CHECK_OK(pkv_prefix_lookup(c, 0, toks, 8, &b, &cached));
    CHECK_INT(cached, 8);
    CHECK_OK(pkv_seq_truncate(c, b, 7));
    int64_t slot;
    CHECK_OK(pkv_seq_append(c, b, 1, toks + 7, &slot, &cow));
    CHECK_INT(cow.src, 1);
    CHECK(cow.dst != 1 && slot == (int64_t)cow.dst * 4 + 3);
    CHECK_OK(pkv_block_refcount(c, 1, &rc));
    CHECK_INT(rc, 1); /* only a holds the cached block now */
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

/* Handles carry a per-cache salt: the first sequence of two caches has the
 * same record slot and generation, yet neither cache accepts the other's. */
static void test_foreign_handles(void) {
    pkv_cache *a = make_cache(4, 4), *b = make_cache(4, 4);
    pkv_seq ha, hb;
    int32_t len;
    CHECK_OK(pkv_seq_create(a, 0, &ha));
    CHECK_OK(pkv_seq_create(b, 0, &hb));
    CHECK_OK(pkv_seq_length(a, ha, &len));
    CHECK_STATUS(pkv_seq_length(b, ha, &len), PKV_ERR_NO_SEQ);
    CHECK_STATUS(pkv_seq_length(a, hb, &len), PKV_ERR_NO_SEQ);
    CHECK_STATUS(pkv_seq_free(b, ha), PKV_ERR_NO_SEQ);
    pkv_cache_destroy(a);
    pkv_cache_destroy(b);
}

int main(void) {
    test_foreign_handles();
    test_full_hit_recompute();
    test_config();
    test_strerror();
    test_append_slots();
    test_capacity_all_or_nothing();
    test_fork_cow_metadata();
    test_host_storage();
    test_exports();
    test_allocator_hook();
    return test_report("test_seq");
}
