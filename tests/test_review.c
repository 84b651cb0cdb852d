/* Regression tests for review findings: each test names the contract it holds
 * the library to (include/pagedkv.h). */
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "npy.h"
#include "test.h"

/* pkv_store_write: "src_dtype is the kv dtype (bytes copied)". For an FP8
 * MLA656 cache that means ready-made 656-byte rows (e.g. quantized by the
 * engine on the GPU) are copied as they are. */
static void test_fp8_raw_rows(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 2;
    cfg.block_size = 4;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.kv_dtype = PKV_FP8_MLA656;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    if (!c) return;
    pkv_seq s;
    int64_t slots[2];
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_OK(pkv_seq_append(c, s, 2, NULL, slots, NULL));
    float x[2][576];
    uint8_t rows[2][656];
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < 576; i++) x[r][i] = (float)((i * 7 + r * 13) % 29) - 14.0f;
        CHECK_OK(pkv_mla656_quantize(x[r], rows[r], 0));
    }
    CHECK_OK(pkv_store_write(c, 0, slots, 2, rows, NULL, PKV_FP8_MLA656));
    void *k = NULL;
    CHECK_OK(pkv_store_arenas(c, 0, &k, NULL));
    if (k) {
        for (int r = 0; r < 2; r++)
            CHECK(memcmp((const uint8_t *)k + (size_t)slots[r] * 656, rows[r], 656) == 0);
    }
    float back[2][576], want[576];
    CHECK_OK(pkv_store_read(c, 0, slots, 2, &back[0][0], NULL));
    for (int r = 0; r < 2; r++) {
        CHECK_OK(pkv_mla656_dequantize(rows[r], want));
        CHECK(memcmp(back[r], want, sizeof want) == 0);
    }
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

/* pkv_cache_last_error: "" when the last call on the cache succeeded. Every
 * entry point taking a cache goes through CACHE_ENTER (which also takes the
 * lock of a thread-safe cache), including the small getters. */
static void test_last_error_cleared(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 4;
    cfg.block_size = 4;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.d = 8;
    cfg.dv = 8;
    cfg.flags = PKV_FLAG_THREAD_SAFE;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    if (!c) return;
    pkv_seq s;
    CHECK_OK(pkv_seq_create(c, 0, &s));
    int32_t rc = -1;
    void *k = NULL, *v = NULL;
    pkv_config got;
    CHECK_STATUS(pkv_seq_truncate(c, s, 5), PKV_ERR_INVALID);
    CHECK(pkv_cache_last_error(c)[0] != 0);
    CHECK_OK(pkv_block_refcount(c, 0, &rc));
    CHECK(strcmp(pkv_cache_last_error(c), "") == 0);
    CHECK_STATUS(pkv_seq_truncate(c, s, 5), PKV_ERR_INVALID);
    CHECK_OK(pkv_store_arenas(c, 0, &k, &v));
    CHECK(strcmp(pkv_cache_last_error(c), "") == 0);
    CHECK_STATUS(pkv_seq_truncate(c, s, 5), PKV_ERR_INVALID);
    pkv_config_init(&got);
    CHECK_OK(pkv_cache_config(c, &got));
    CHECK(strcmp(pkv_cache_last_error(c), "") == 0);
    CHECK_STATUS(pkv_store_arenas(c, 3, &k, &v), PKV_ERR_INVALID);
    CHECK(pkv_cache_last_error(c)[0] != 0);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

/* pkv attn with a --v-cache that is not 4-dimensional (here a 0-d array) is a
 * usage error, found before any shape element is read: it used to read
 * v.shape[ndim - 1], i.e. shape[-1] (undefined; `make ubsan` aborts on it). */
static void test_cli_v_cache_scalar(void) {
    const char *bin = getenv("PKV_BIN");
    if (!bin || access(bin, X_OK) != 0) return; /* the test run sets PKV_BIN */
    char dir[] = "/tmp/pkv_review_XXXXXX";
    if (!mkdtemp(dir)) return;
    char q[64], k[64], v[64], bt[64], sl[64], out[64], e[256], cmd[512];
    snprintf(q, sizeof q, "%s/q.npy", dir);
    snprintf(k, sizeof k, "%s/k.npy", dir);
    snprintf(v, sizeof v, "%s/v.npy", dir);
    snprintf(bt, sizeof bt, "%s/bt.npy", dir);
    snprintf(sl, sizeof sl, "%s/sl.npy", dir);
    snprintf(out, sizeof out, "%s/out.npy", dir);
    float x[4] = {1, 2, 3, 4}, one = 1;
    int32_t zero = 0, len = 1;
    int64_t qs[4] = {1, 1, 1, 4}, bs[2] = {1, 1}, ls[1] = {1};
    CHECK_OK(npy_save(q, NPY_F4, 4, qs, x, e, sizeof e));
    CHECK_OK(npy_save(k, NPY_F4, 4, qs, x, e, sizeof e));
    CHECK_OK(npy_save(v, NPY_F4, 0, NULL, &one, e, sizeof e));
    CHECK_OK(npy_save(bt, NPY_I4, 2, bs, &zero, e, sizeof e));
    CHECK_OK(npy_save(sl, NPY_I4, 1, ls, &len, e, sizeof e));
    snprintf(cmd, sizeof cmd,
             "%s attn --q %s --k-cache %s --v-cache %s --block-table %s --seqlens %s --out %s --scale 1 "
             ">/dev/null 2>&1", bin, q, k, v, bt, sl, out);
    int st = system(cmd);
    CHECK(WIFEXITED(st));
    CHECK_INT(WIFEXITED(st) ? WEXITSTATUS(st) : -1, 2);
    const char *files[] = {q, k, v, bt, sl, out};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) unlink(files[i]);
    rmdir(dir);
}

/* pkv_export_flashmla with max_blocks_per_seq == 0 and no table (every
 * sequence empty: only cache_seqlens wanted) is valid; it used to form
 * NULL + 0 (undefined in C; clang's UBSan aborts on it). */
static void test_export_empty_table(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 4;
    cfg.block_size = 4;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    if (!c) return;
    pkv_seq s[2];
    CHECK_OK(pkv_seq_create(c, 0, &s[0]));
    CHECK_OK(pkv_seq_create(c, 0, &s[1]));
    int32_t lens[2] = {-1, -1}, needed = -1;
    CHECK_OK(pkv_export_flashmla(c, s, 2, NULL, 0, lens, &needed));
    CHECK_INT(lens[0], 0);
    CHECK_INT(lens[1], 0);
    CHECK_INT(needed, 0);
    pkv_cache_destroy(c);
}

/* "Handles of freed sequences are never reused by the same cache": a record
 * slot whose generation is exhausted must not wrap to generation 1 and hand out
 * the slot's first handle again (a long-running server reuses a few slots
 * billions of times). */
static void test_generation_exhausted(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = 4;
    cfg.block_size = 4;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    if (!c) return;
    pkv_seq first, last, again;
    int32_t len;
    CHECK_OK(pkv_seq_create(c, 0, &first));
    CHECK_OK(pkv_seq_free(c, first));
    CHECK_OK(pkv_seq_create(c, 0, &last)); /* the same slot, next generation */
    pkv_seq_rec *r = seq_get(&c->seqs, last);
    CHECK(r != NULL);
    if (!r) return;
    r->gen = 0x7fffffffu; /* as after 2^31 - 1 reuses */
    last = seq_handle(&c->seqs, r);
    CHECK_OK(pkv_seq_length(c, last, &len));
    CHECK_OK(pkv_seq_free(c, last));
    CHECK_OK(pkv_seq_create(c, 0, &again));
    CHECK(again != first && again != last);
    CHECK_STATUS(pkv_seq_length(c, first, &len), PKV_ERR_NO_SEQ);
    CHECK_STATUS(pkv_seq_length(c, last, &len), PKV_ERR_NO_SEQ);
    CHECK_OK(pkv_seq_length(c, again, &len));
    CHECK_OK(pkv_cache_check(c));
    CHECK_OK(pkv_seq_free(c, again));
    CHECK_OK(pkv_cache_check(c));
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st));
    CHECK_INT(st.num_seqs, 0);
    pkv_cache_destroy(c);
}

/* A metadata-mode cache of nb blocks of bs slots (NULL on failure, reported). */
static pkv_cache *meta_cache(int32_t nb, int32_t bs, uint32_t flags) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = bs;
    cfg.flags = flags;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    return c;
}

/* Issue 16, item 16: every failing call leaves a detail, also for a negative
 * count and a NULL argument (which used to keep the previous call's text). */
static void test_last_error_always_set(void) {
    pkv_cache *c = meta_cache(4, 4, 0);
    if (!c) return;
    pkv_seq s;
    pkv_block_copy cow;
    int32_t n;
    CHECK_OK(pkv_seq_create(c, 0, &s));
    CHECK_STATUS(pkv_seq_append(c, s, -1, NULL, NULL, &cow), PKV_ERR_INVALID);
    CHECK(strstr(pkv_cache_last_error(c), "-1") != NULL);
    CHECK_STATUS(pkv_seq_blocks_needed(c, s, -3, &n), PKV_ERR_INVALID);
    CHECK(strstr(pkv_cache_last_error(c), "-3") != NULL);
    CHECK_STATUS(pkv_seq_length(c, s, NULL), PKV_ERR_NULL);
    CHECK(strstr(pkv_cache_last_error(c), "out is NULL") != NULL);
    CHECK_STATUS(pkv_seq_fork(c, s, NULL), PKV_ERR_NULL);
    CHECK(strstr(pkv_cache_last_error(c), "child") != NULL);
    CHECK_STATUS(pkv_seq_free(c, s + 1), PKV_ERR_NO_SEQ);
    CHECK(pkv_cache_last_error(c)[0] != 0);
    CHECK_OK(pkv_seq_free(c, s));
    CHECK(pkv_cache_last_error(c)[0] == 0);
    pkv_cache_destroy(c);
}

/* Issue 16, item 16: stats.evictions counts blocks reclaimed from the pool. A
 * cached block that is still held by a sequence when its parent is evicted
 * only leaves the index (its holder keeps it): that is not an eviction. */
static void test_used_orphan_is_not_an_eviction(void) {
    pkv_cache *c = meta_cache(5, 2, PKV_FLAG_PREFIX_CACHE);
    if (!c) return;
    const int32_t toks[4] = {1, 1, 2, 2};
    pkv_seq z, x, y, filler;
    pkv_block_copy cow;
    int32_t reg, dd;
    /* z caches [1 1] alone, then lets it go: evictable block c0. */
    CHECK_OK(pkv_seq_create(c, 0, &z));
    CHECK_OK(pkv_seq_append(c, z, 2, toks, NULL, &cow));
    CHECK_OK(pkv_prefix_register(c, z, &reg, &dd));
    CHECK_OK(pkv_seq_free(c, z));
    /* x holds [1 1 2 2] unregistered; its fork y registers: block 0 moves onto
     * c0, block 1 (shared with x) is cached with parent c0. */
    CHECK_OK(pkv_seq_create(c, 0, &x));
    CHECK_OK(pkv_seq_append(c, x, 4, toks, NULL, &cow));
    CHECK_OK(pkv_seq_fork(c, x, &y));
    CHECK_OK(pkv_prefix_register(c, y, &reg, &dd));
    CHECK_INT(reg, 1);
    CHECK_INT(dd, 1);
    CHECK_OK(pkv_seq_free(c, y)); /* c0 evictable again; x still holds block 1 */
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(c, &st));
    CHECK_INT(st.cached_blocks, 2);
    CHECK_INT(st.evictable_blocks, 1);
    /* Take every available block: c0 is reclaimed, x's block 1 orphaned. */
    CHECK_OK(pkv_seq_create(c, 0, &filler));
    CHECK_OK(pkv_seq_append(c, filler, 2 * st.free_blocks + 2, NULL, NULL, &cow));
    CHECK_OK(pkv_cache_stats(c, &st));
    CHECK_INT(st.cached_blocks, 0);
    CHECK_INT(st.evictions, 1);
    CHECK_INT(st.used_blocks, 5);
    CHECK_OK(pkv_cache_check(c));
    pkv_cache_destroy(c);
}

int main(void) {
    test_last_error_always_set();
    test_used_orphan_is_not_an_eviction();
    test_fp8_raw_rows();
    test_last_error_cleared();
    test_cli_v_cache_scalar();
    test_export_empty_table();
    test_generation_exhausted();
    return test_report("test_review");
}
