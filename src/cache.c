/* The cache handle: configuration, creation, statistics and the invariant checker. */
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
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
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
    if (cfg->storage == PKV_STORAGE_METADATA) return PKV_OK;
    RETURN_IF(cfg->storage != PKV_STORAGE_HOST, PKV_ERR_INVALID);
    RETURN_IF(cfg->num_layers < 1 || cfg->h_kv < 1 || cfg->d < 1 || cfg->dv < 1, PKV_ERR_INVALID);
    RETURN_IF(cfg->v_separate != 0 && cfg->v_separate != 1, PKV_ERR_INVALID);
    RETURN_IF(!cfg->v_separate && cfg->dv > cfg->d, PKV_ERR_INVALID);
    RETURN_IF(pkv_row_bytes(cfg->kv_dtype, cfg->h_kv, cfg->d) == 0, PKV_ERR_DTYPE);
    if (cfg->kv_dtype == PKV_FP8_MLA656) RETURN_IF(cfg->v_separate || cfg->dv != 512, PKV_ERR_DTYPE);
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
    c->seq_free_head = -1;
    /* Not a secret: only makes another cache's handles miss. Without an OS
     * source the address and a clock do. */
    if (pkv_os_random(&c->handle_salt, sizeof c->handle_salt) != PKV_OK) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        c->handle_salt = (uint32_t)(((uintptr_t)c >> 4) * 2654435761u) ^ (uint32_t)ts.tv_nsec;
    }
    int st = pool_init(&c->pool, &c->al, cfg->num_blocks, cfg->block_size);
    if (st == PKV_OK) st = store_init(c);
    if (st == PKV_OK) st = prefix_init(c);
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

void pkv_cache_destroy(pkv_cache *c) {
    if (!c) return;
    pkv_allocator al = c->al;
    for (int32_t i = 0; i < c->seqs_cap; i++) seq_release_record(c, &c->seqs[i]);
    pkv_mem_free(&al, c->seqs);
    prefix_destroy(c);
    store_destroy(c);
    pool_destroy(&c->pool, &al);
    if (c->thread_safe) pthread_mutex_destroy(&c->lock);
    pkv_mem_free(&al, c);
}

int pkv_cache_config(pkv_cache *c, pkv_config *cfg) {
    RETURN_IF(!cfg, PKV_ERR_NULL);
    CACHE_ENTER(c);
    if (cfg->size < PKV_CONFIG_SIZE_1_0)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "cfg->size is %u: start from pkv_config_init", cfg->size));
    pkv__struct_export(cfg, &c->cfg, sizeof c->cfg);
    CACHE_LEAVE(c, PKV_OK);
}

const char *pkv_cache_last_error(const pkv_cache *c) { return c ? c->err : "cache is NULL"; }

int pkv_cache_stats(pkv_cache *c, pkv_stats *user_out) {
    RETURN_IF(!c || !user_out, PKV_ERR_NULL);
    RETURN_IF(user_out->size < PKV_STATS_SIZE_1_0, PKV_ERR_INVALID);
    cache_lock(c);
    const pkv_pool *p = &c->pool;
    pkv_stats full, *out = &full;
    memset(out, 0, sizeof *out);
    out->num_blocks = p->num_blocks;
    out->block_size = p->block_size;
    out->free_blocks = p->free_top;
    out->used_blocks = p->used;
    out->evictable_blocks = p->num_evictable;
    out->shared_blocks = p->shared;
    out->num_seqs = c->num_seqs;
    out->peak_used_blocks = p->peak_used;
    out->tokens = c->tokens;
    out->cow_copies = c->cow_copies;
    out->evictions = p->evictions;
    prefix_stats(c, out);
    pkv__struct_export(user_out, out, sizeof *out);
    c->err[0] = 0;
    cache_unlock(c);
    return PKV_OK;
}

int pkv_block_refcount(pkv_cache *c, int32_t block, int32_t *out) {
    RETURN_IF(!out, PKV_ERR_NULL);
    CACHE_ENTER(c);
    if (block < 0 || block >= c->pool.num_blocks)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_BLOCK_ID, "block %d outside [0, %d)", block, c->pool.num_blocks));
    *out = c->pool.refcount[block];
    CACHE_LEAVE(c, PKV_OK);
}

/* Pool-level invariants: the free stack, the LRU list and the counters agree
 * with the per-block states. */
static int check_pool(pkv_cache *c, int32_t *seen) {
    const pkv_pool *p = &c->pool;
    int32_t nfree = 0, nused = 0, nevict = 0, nshared = 0;
    for (int32_t b = 0; b < p->num_blocks; b++) {
        switch (p->state[b]) {
        case BLOCK_FREE:
            nfree++;
            if (p->refcount[b] != 0 || p->cached[b])
                return cache_fail(c, PKV_ERR_CORRUPT, "free block %d has refcount %d cached %d", b,
                                  p->refcount[b], p->cached[b]);
            break;
        case BLOCK_USED:
            nused++;
            if (p->refcount[b] < 1)
                return cache_fail(c, PKV_ERR_CORRUPT, "used block %d has refcount %d", b, p->refcount[b]);
            if (p->refcount[b] >= 2) nshared++;
            break;
        case BLOCK_EVICTABLE:
            nevict++;
            if (p->refcount[b] != 0 || !p->cached[b])
                return cache_fail(c, PKV_ERR_CORRUPT, "evictable block %d has refcount %d cached %d",
                                  b, p->refcount[b], p->cached[b]);
            break;
        default:
            return cache_fail(c, PKV_ERR_CORRUPT, "block %d has unknown state %d", b, p->state[b]);
        }
    }
    if (nfree != p->free_top || nused != p->used || nevict != p->num_evictable || nshared != p->shared)
        return cache_fail(c, PKV_ERR_CORRUPT,
                          "counts free %d/%d used %d/%d evictable %d/%d shared %d/%d disagree", nfree,
                          p->free_top, nused, p->used, nevict, p->num_evictable, nshared, p->shared);
    if (nfree + nused + nevict != p->num_blocks)
        return cache_fail(c, PKV_ERR_CORRUPT, "free + used + evictable != num_blocks");
    /* Counts agree, so a repeated entry (a double free) would hide a lost block. */
    memset(seen, 0, (size_t)p->num_blocks * sizeof *seen);
    for (int32_t i = 0; i < p->free_top; i++) {
        int32_t b = p->free_stack[i];
        if (b < 0 || b >= p->num_blocks || p->state[b] != BLOCK_FREE)
            return cache_fail(c, PKV_ERR_CORRUPT, "free stack entry %d holds block %d not free", i, b);
        if (seen[b]++) return cache_fail(c, PKV_ERR_CORRUPT, "block %d is on the free stack twice", b);
    }
    if (p->peak_used < p->used)
        return cache_fail(c, PKV_ERR_CORRUPT, "peak used %d below used %d", p->peak_used, p->used);
    int32_t walked = 0, prev = -1;
    for (int32_t b = p->lru_head; b >= 0; b = p->lru_next[b]) {
        if (b >= p->num_blocks || p->state[b] != BLOCK_EVICTABLE || p->lru_prev[b] != prev ||
            ++walked > nevict)
            return cache_fail(c, PKV_ERR_CORRUPT, "LRU list broken at block %d", b);
        prev = b;
    }
    if (walked != nevict || p->lru_tail != prev)
        return cache_fail(c, PKV_ERR_CORRUPT, "LRU list holds %d blocks, %d evictable", walked, nevict);
    return PKV_OK;
}

/* Sequence-level invariants: block counts match lengths, and every refcount
 * equals the number of sequence lists holding the block (recounted here). */
static int check_seqs(pkv_cache *c, int32_t *count, int32_t *owner) {
    const pkv_pool *p = &c->pool;
    int64_t tokens = 0;
    int32_t live = 0;
    memset(count, 0, (size_t)p->num_blocks * sizeof *count);
    for (int32_t b = 0; b < p->num_blocks; b++) owner[b] = -1;
    for (int32_t i = 0; i < c->seqs_cap; i++) {
        const pkv_seq_rec *r = &c->seqs[i];
        if (!r->live) continue;
        live++;
        tokens += r->len;
        int32_t want = (int32_t)(((int64_t)r->len + p->block_size - 1) / p->block_size);
        if (r->nblocks != want || r->len < 0)
            return cache_fail(c, PKV_ERR_CORRUPT, "sequence %d: %d tokens in %d blocks (want %d)", i,
                              r->len, r->nblocks, want);
        if (r->ntokens < 0 || r->ntokens > r->len || r->nregistered < 0 || r->nregistered > r->nblocks ||
            (int64_t)r->nregistered * p->block_size > r->len)
            return cache_fail(c, PKV_ERR_CORRUPT, "sequence %d: tokens %d registered %d of length %d", i,
                              r->ntokens, r->nregistered, r->len);
        if (r->nregistered && !c->prefix)
            return cache_fail(c, PKV_ERR_CORRUPT, "sequence %d has %d registered blocks without a prefix cache", i,
                              r->nregistered);
        if (r->last_start < 0 || r->last_n < 0 || (int64_t)r->last_start + r->last_n > r->len)
            return cache_fail(c, PKV_ERR_CORRUPT, "sequence %d: last append [%d, +%d) outside its %d tokens", i,
                              r->last_start, r->last_n, r->len);
        for (int32_t j = 0; j < r->nblocks; j++) {
            int32_t b = r->blocks[j];
            if (b < 0 || b >= p->num_blocks || p->state[b] != BLOCK_USED)
                return cache_fail(c, PKV_ERR_CORRUPT, "sequence %d holds block %d that is not in use", i, b);
            /* Two positions of one sequence can never share a slot. */
            if (owner[b] == i)
                return cache_fail(c, PKV_ERR_CORRUPT, "sequence %d holds block %d twice", i, b);
            owner[b] = i;
            count[b]++;
        }
    }
    if (live != c->num_seqs || tokens != c->tokens)
        return cache_fail(c, PKV_ERR_CORRUPT, "%d live sequences (counted %d), %lld tokens (counted %lld)",
                          c->num_seqs, live, (long long)c->tokens, (long long)tokens);
    /* Slots with an exhausted generation are retired: neither live nor listed. */
    int32_t nfree_recs = 0, retired = 0;
    for (int32_t i = 0; i < c->seqs_cap; i++) retired += !c->seqs[i].live && c->seqs[i].gen >= SEQ_GEN_MAX;
    for (int32_t i = c->seq_free_head; i >= 0; i = c->seqs[i].next_free)
        if (i >= c->seqs_cap || c->seqs[i].live || c->seqs[i].gen >= SEQ_GEN_MAX ||
            ++nfree_recs > c->seqs_cap - c->num_seqs)
            return cache_fail(c, PKV_ERR_CORRUPT, "sequence record free list broken at %d", i);
    if (nfree_recs != c->seqs_cap - c->num_seqs - retired)
        return cache_fail(c, PKV_ERR_CORRUPT, "%d free sequence records listed, %d expected", nfree_recs,
                          c->seqs_cap - c->num_seqs - retired);
    for (int32_t b = 0; b < p->num_blocks; b++)
        if (count[b] != p->refcount[b])
            return cache_fail(c, PKV_ERR_CORRUPT, "block %d has refcount %d but %d holders", b,
                              p->refcount[b], count[b]);
    return PKV_OK;
}

int pkv_cache_check(pkv_cache *c) {
    RETURN_IF(!c, PKV_ERR_NULL);
    cache_lock(c);
    int32_t *count = pkv_mem_calloc(&c->al, 2 * (size_t)c->pool.num_blocks, sizeof *count);
    int st = count ? check_pool(c, count) : PKV_ERR_NOMEM;
    if (st == PKV_OK) st = check_seqs(c, count, count + c->pool.num_blocks);
    if (st == PKV_OK) st = prefix_check(c);
    pkv_mem_free(&c->al, count);
    if (st == PKV_OK) c->err[0] = 0;
    cache_unlock(c);
    return st;
}
