/* The cache handle: configuration, creation, statistics, the error detail and
 * the invariant checker, which calls each layer's own checker in order. The
 * operations on sequences, the prefix index and storage are in ops.c. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

void pkv_config_init(pkv_config *cfg) {
    if (!cfg) return;
    memset(cfg, 0, sizeof *cfg);
    cfg->size = sizeof *cfg;
    cfg->num_blocks = 1024;
    cfg->block_size = 64;
    cfg->storage = PKV_STORAGE_METADATA;
    cfg->num_layers = 1;
    cfg->h_kv = 1;
    cfg->d = 576;
    cfg->dv = 512;
    cfg->v_separate = 0;
    cfg->kv_dtype = PKV_BF16;
}

int cache_fail(pkv_cache *c, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err.text, sizeof c->err.text, fmt, ap);
    va_end(ap);
    return status;
}

int cache_leave(pkv_cache *c, int status, const char *func) {
    if (status < 0 && !c->err.text[0]) cache_fail(c, status, "%s: %s", func, pkv_strerror(status));
    cache_unlock(c);
    return status;
}

#define KNOWN_FLAGS \
    (PKV_FLAG_THREAD_SAFE | PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER | PKV_FLAG_FP8_POW2_SCALE)

static int config_validate(const pkv_config *cfg) {
    RETURN_IF(cfg->num_blocks < 1, PKV_ERR_INVALID);
    RETURN_IF(cfg->block_size < 1 || cfg->block_size > 4096, PKV_ERR_INVALID);
    RETURN_IF(cfg->flags & ~(uint32_t)KNOWN_FLAGS, PKV_ERR_INVALID);
    RETURN_IF((cfg->flags & PKV_FLAG_AUTO_REGISTER) && !(cfg->flags & PKV_FLAG_PREFIX_CACHE),
              PKV_ERR_INVALID);
    RETURN_IF((cfg->allocator.alloc == NULL) != (cfg->allocator.free == NULL), PKV_ERR_INVALID);
    RETURN_IF(cfg->hash_key_set != 0 && cfg->hash_key_set != 1, PKV_ERR_INVALID);
    /* A window cache caches prefixes only registering as it appends (the
     * window releases blocks right after). */
    RETURN_IF(cfg->window < 0 ||
                  (cfg->window > 0 && (cfg->flags & PKV_FLAG_PREFIX_CACHE) && !(cfg->flags & PKV_FLAG_AUTO_REGISTER)),
              PKV_ERR_INVALID);
    if (cfg->storage == PKV_STORAGE_METADATA) return PKV_OK;
    RETURN_IF(cfg->storage != PKV_STORAGE_HOST, PKV_ERR_INVALID);
    RETURN_IF(cfg->num_layers < 1 || cfg->h_kv < 1 || cfg->d < 1 || cfg->dv < 1, PKV_ERR_INVALID);
    RETURN_IF(cfg->v_separate != 0 && cfg->v_separate != 1, PKV_ERR_INVALID);
    RETURN_IF(!cfg->v_separate && cfg->dv > cfg->d, PKV_ERR_INVALID);
    RETURN_IF(!pkv__dtype_geometry_ok(cfg->kv_dtype, cfg->h_kv, cfg->d, cfg->dv, cfg->v_separate), PKV_ERR_DTYPE);
    /* Arena sizes must be representable; refused here, before anything is allocated
     * (64: store.c's alignment slack). */
    size_t row = pkv_row_bytes(cfg->kv_dtype, cfg->h_kv, cfg->d);
    size_t vrow = cfg->v_separate ? pkv_row_bytes(cfg->kv_dtype, cfg->h_kv, cfg->dv) : 0;
    size_t slots = (size_t)cfg->num_blocks * (size_t)cfg->block_size;
    RETURN_IF(slots > (SIZE_MAX - 64) / (row > vrow ? row : vrow), PKV_ERR_INVALID);
    return PKV_OK;
}

int pkv_cache_create(const pkv_config *user_cfg, pkv_cache **out) {
    RETURN_IF(!out, PKV_ERR_NULL);
    *out = NULL;
    RETURN_IF(!user_cfg, PKV_ERR_NULL);
    pkv_config full, *cfg = &full;
    pkv_config_init(cfg);
    FORWARD_IF_ERROR(pkv__struct_import(cfg, sizeof *cfg, user_cfg, PKV_CONFIG_SIZE_1_0));
    FORWARD_IF_ERROR(config_validate(cfg));
    const pkv_allocator *al = &cfg->allocator;
    pkv_cache *c = pkv_mem_calloc(al, 1, sizeof *c);
    RETURN_IF(!c, PKV_ERR_NOMEM);
    c->cfg = *cfg;
    c->al = cfg->allocator;
    /* Not a secret: only makes another cache's handles miss. Without an OS
     * source the address and a clock do. */
    uint32_t salt;
    if (pkv_os_random(&salt, sizeof salt) != PKV_OK) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        salt = (uint32_t)(((uintptr_t)c >> 4) * 2654435761u) ^ (uint32_t)ts.tv_nsec;
    }
    seq_init(&c->seqs, &c->al, &c->pool, salt, (cfg->flags & PKV_FLAG_PREFIX_CACHE) ? cfg->block_size : 0);
    int st = pool_init(&c->pool, &c->al, cfg->num_blocks, cfg->block_size, (cfg->flags & PKV_FLAG_PREFIX_CACHE) != 0);
    if (st == PKV_OK) st = store_init(&c->store, &c->cfg, &c->al, &c->pool);
    if (st == PKV_OK && (cfg->flags & PKV_FLAG_PREFIX_CACHE)) {
        uint8_t secret[16];
        if (cfg->hash_key_set) memcpy(secret, cfg->hash_key, 16);
        else st = pkv_os_random(secret, sizeof secret);
        if (st == PKV_OK) st = prefix_create(&c->al, &c->pool, secret, &c->prefix);
        if (st == PKV_OK && cfg->window > 0) prefix_set_window(c->prefix, &c->al);
    }
    if (st == PKV_OK && (cfg->flags & PKV_FLAG_THREAD_SAFE)) {
        if (pthread_mutex_init(&c->lock, NULL) != 0) st = PKV_ERR_THREAD;
        else c->thread_safe = 1;
    }
    if (st != PKV_OK) {
        pkv_cache_destroy(c);
        return st;
    }
    *out = c;
    return PKV_OK;
}

int cache_block_bytes(const pkv_config *user_cfg, pkv_config *cfg, uint64_t *block) {
    RETURN_IF(!user_cfg, PKV_ERR_NULL);
    pkv_config_init(cfg);
    FORWARD_IF_ERROR(pkv__struct_import(cfg, sizeof *cfg, user_cfg, PKV_CONFIG_SIZE_1_0));
    RETURN_IF(cfg->block_size < 1 || cfg->block_size > 4096 || cfg->num_layers < 1, PKV_ERR_INVALID);
    RETURN_IF(cfg->v_separate != 0 && cfg->v_separate != 1, PKV_ERR_INVALID);
    RETURN_IF(!cfg->v_separate && cfg->dv > cfg->d, PKV_ERR_INVALID);
    RETURN_IF(!pkv__dtype_geometry_ok(cfg->kv_dtype, cfg->h_kv, cfg->d, cfg->dv, cfg->v_separate), PKV_ERR_DTYPE);
    uint64_t row = pkv_row_bytes(cfg->kv_dtype, cfg->h_kv, cfg->d);
    if (cfg->v_separate) row += pkv_row_bytes(cfg->kv_dtype, cfg->h_kv, cfg->dv);
    *block = row * (uint64_t)cfg->block_size * (uint64_t)cfg->num_layers;
    return PKV_OK;
}

int pkv_config_blocks_for_bytes(const pkv_config *user_cfg, uint64_t bytes, int32_t *num_blocks) {
    RETURN_IF(!user_cfg || !num_blocks, PKV_ERR_NULL);
    pkv_config cfg;
    uint64_t block;
    FORWARD_IF_ERROR(cache_block_bytes(user_cfg, &cfg, &block));
    uint64_t nb = bytes / block;
    RETURN_IF(nb < 1 || nb > INT32_MAX, PKV_ERR_INVALID);
    *num_blocks = (int32_t)nb;
    return PKV_OK;
}

void pkv_cache_destroy(pkv_cache *c) {
    if (!c) return;
    pkv_allocator al = c->al;
    aio_stop(c); /* the I/O threads end their current reads (queued ones are dropped) before the pool goes */
    swap_destroy(c);
    seq_destroy(&c->seqs);
    tmeta_destroy(c);
    tier_destroy(c);
    if (c->prefix) prefix_destroy(c->prefix, &al);
    store_destroy(&c->store);
    pool_destroy(&c->pool, &al);
    if (c->thread_safe) pthread_mutex_destroy(&c->lock);
    pkv_mem_free(&al, c);
}

int pkv_cache_config(pkv_cache *c, pkv_config *cfg) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !cfg, "cfg");
    if (cfg->size < PKV_CONFIG_SIZE_1_0)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "cfg->size is %u: start from pkv_config_init", cfg->size));
    pkv__struct_export(cfg, &c->cfg, sizeof c->cfg);
    CACHE_LEAVE(c, PKV_OK);
}

const char *pkv_cache_last_error(const pkv_cache *c) { return c ? c->err.text : "cache is NULL"; }

int pkv_cache_stats(pkv_cache *c, pkv_stats *user_out) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !user_out, "out");
    if (user_out->size < PKV_STATS_SIZE_1_0)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "out->size is %u: initialize with PKV_STATS_INIT",
                                  user_out->size));
    const pkv_pool *p = &c->pool;
    pkv_stats full, *out = &full;
    memset(out, 0, sizeof *out);
    out->num_blocks = p->num_blocks;
    out->block_size = p->block_size;
    out->free_blocks = p->free_top;
    out->used_blocks = p->used;
    out->evictable_blocks = p->num_evictable;
    out->shared_blocks = p->shared;
    out->num_seqs = c->seqs.num_seqs;
    out->peak_used_blocks = p->peak_used;
    out->tokens = c->seqs.tokens;
    out->cow_copies = c->cow_copies;
    out->evictions = p->evictions;
    prefix_stats(c->prefix, out);
    pkv__struct_export(user_out, out, sizeof *out);
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_block_refcount(pkv_cache *c, int32_t block, int32_t *out) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    if (block < 0 || block >= c->pool.num_blocks)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_BLOCK_ID, "block %d outside [0, %d)", block, c->pool.num_blocks));
    *out = c->pool.refcount[block];
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_cache_check(pkv_cache *c) {
    RETURN_IF(!c, PKV_ERR_NULL);
    cache_lock(c);
    c->err.text[0] = 0;
    int32_t *count = pkv_mem_calloc(&c->al, 2 * (size_t)c->pool.num_blocks, sizeof *count);
    int st = count ? pool_check(&c->pool, count, &c->err) : PKV_ERR_NOMEM;
    if (st == PKV_OK) { /* holders: loads in flight, then the sequences (seq_check) */
        memset(count, 0, (size_t)c->pool.num_blocks * sizeof *count);
        aio_count_refs(c, count);
    }
    if (st == PKV_OK) st = seq_check(&c->seqs, c->prefix != NULL, count, count + c->pool.num_blocks, &c->err);
    if (st == PKV_OK)
        st = c->prefix ? prefix_check(c->prefix, &c->seqs, &c->al, &c->err) : prefix_check_off(&c->pool, &c->err);
    if (st == PKV_OK) st = tier_check(c, &c->err);
    if (st == PKV_OK) st = tmeta_check(c, &c->err);
    if (st == PKV_OK) st = swap_check(c, &c->err);
    pkv_mem_free(&c->al, count);
    if (st == PKV_OK) c->err.text[0] = 0;
    else if (!c->err.text[0]) cache_fail(c, st, "pkv_cache_check: %s", pkv_strerror(st));
    cache_unlock(c);
    return st;
}

/* ---- test hooks ---- */

void prefix_secret(const pkv_cache *c, uint8_t out[16]) {
    if (c->prefix) prefix_get_secret(c->prefix, out);
    else memset(out, 0, 16);
}

int64_t prefix_collisions(const pkv_cache *c) { return c->prefix ? prefix_get_collisions(c->prefix) : 0; }

void prefix_set_child_scan(pkv_cache *c, int32_t n) {
    if (c->prefix) prefix_child_scan(c->prefix, n);
}
