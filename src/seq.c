/* Sequences on top of the pool: create, append (with copy-on-write), truncate,
 * fork, free.
 *
 * Every mutating call validates and reserves everything it may need first
 * (array capacity, pool blocks) and only then changes state, so a failing call
 * leaves the cache exactly as it was. Record slots are reused, with a
 * generation in the handle so that a freed handle is refused, not aliased; the
 * index bits are XORed with a per-cache random salt so that a handle of another
 * (or a destroyed) cache almost surely names no record here. */
#include <string.h>

#include "internal.h"

#define HANDLE_INDEX(h) ((int32_t)((uint64_t)(h) & 0xffffffffu))
#define HANDLE_GEN(h) ((uint32_t)((uint64_t)(h) >> 32))

pkv_seq seq_handle(const pkv_cache *c, const pkv_seq_rec *r) {
    return (pkv_seq)(((uint64_t)r->gen << 32) | ((uint32_t)(r - c->seqs) ^ c->handle_salt));
}

pkv_seq_rec *seq_get(pkv_cache *c, pkv_seq h) {
    if (h <= 0) return NULL;
    uint32_t i = (uint32_t)HANDLE_INDEX(h) ^ c->handle_salt;
    if (i >= (uint32_t)c->seqs_cap) return NULL;
    pkv_seq_rec *r = &c->seqs[i];
    return (r->live && r->gen == HANDLE_GEN(h)) ? r : NULL;
}

/* A free record slot (growing the table if needed) without taking it, so the
 * caller can still fail cleanly. */
int seq_slot_prepare(pkv_cache *c, int32_t *idx) {
    if (c->seq_free_head < 0) {
        int32_t old = c->seqs_cap;
        RETURN_IF(old >= INT32_MAX / 2, PKV_ERR_NOMEM);
        FORWARD_IF_ERROR(pkv_mem_grow(&c->al, (void **)&c->seqs, &c->seqs_cap, old + 1, sizeof *c->seqs));
        memset(c->seqs + old, 0, (size_t)(c->seqs_cap - old) * sizeof *c->seqs);
        for (int32_t i = c->seqs_cap - 1; i >= old; i--) {
            c->seqs[i].next_free = c->seq_free_head;
            c->seq_free_head = i;
        }
    }
    *idx = c->seq_free_head;
    return PKV_OK;
}

/* Takes the slot prepared above and makes it a live, empty sequence. */
pkv_seq_rec *seq_slot_commit(pkv_cache *c, int32_t idx, uint64_t ns) {
    pkv_seq_rec *r = &c->seqs[idx];
    pkv_assert(idx == c->seq_free_head && !r->live);
    c->seq_free_head = r->next_free;
    pkv_assert(r->gen < SEQ_GEN_MAX); /* exhausted slots never return to the free list */
    r->gen++;
    r->live = 1;
    r->next_free = -1;
    r->len = r->nblocks = r->ntokens = r->nregistered = 0;
    r->last_start = r->last_n = 0;
    r->ns = ns;
    c->num_seqs++;
    return r;
}

int seq_new(pkv_cache *c, uint64_t ns, pkv_seq *out) {
    int32_t idx;
    FORWARD_IF_ERROR(seq_slot_prepare(c, &idx));
    *out = seq_handle(c, seq_slot_commit(c, idx, ns));
    return PKV_OK;
}

int seq_reserve(pkv_cache *c, pkv_seq_rec *r, int32_t nblocks, int32_t ntokens, int want_keys) {
    FORWARD_IF_ERROR(pkv_mem_grow(&c->al, (void **)&r->blocks, &r->blocks_cap, nblocks, sizeof *r->blocks));
    FORWARD_IF_ERROR(pkv_mem_grow(&c->al, (void **)&r->tokens, &r->tokens_cap, ntokens, sizeof *r->tokens));
    /* Keys last: whether a record has keys is visible state (fork copies them),
     * so they must not appear when a later reservation fails. */
    if (r->keys || want_keys)
        return pkv_mem_grow(&c->al, (void **)&r->keys, &r->keys_cap, nblocks, sizeof *r->keys);
    return PKV_OK;
}

/* Frees a record's arrays (cache destruction). */
void seq_release_record(pkv_cache *c, pkv_seq_rec *r) {
    pkv_mem_free(&c->al, r->blocks);
    pkv_mem_free(&c->al, r->tokens);
    pkv_mem_free(&c->al, r->keys);
    r->blocks = NULL;
    r->tokens = NULL;
    r->keys = NULL;
    r->blocks_cap = r->tokens_cap = r->keys_cap = 0;
}

/* Releases blocks [keep, nblocks) last first, so that prefix chains become
 * evictable from their deepest block. */
static void release_tail(pkv_cache *c, pkv_seq_rec *r, int32_t keep) {
    for (int32_t j = r->nblocks - 1; j >= keep; j--) pool_unref(&c->pool, r->blocks[j]);
    r->nblocks = keep;
}

/* A record back on the free list; its arrays are kept for reuse. */
static void seq_retire(pkv_cache *c, pkv_seq_rec *r) {
    release_tail(c, r, 0);
    c->tokens -= r->len;
    r->len = r->ntokens = r->nregistered = 0;
    r->live = 0;
    c->num_seqs--;
    /* Wrapping the generation would hand out this slot's old handles again. */
    if (r->gen >= SEQ_GEN_MAX) {
        r->next_free = -1;
        return;
    }
    r->next_free = c->seq_free_head;
    c->seq_free_head = (int32_t)(r - c->seqs);
}

static int32_t blocks_for(const pkv_cache *c, int64_t len) {
    return (int32_t)((len + c->pool.block_size - 1) / c->pool.block_size);
}

/* Whether appending to r must first copy its last block: the block is partly
 * filled and someone else holds it or the prefix index promises its contents. */
static int needs_cow(const pkv_cache *c, const pkv_seq_rec *r, int32_t n) {
    if (n == 0 || r->len % c->pool.block_size == 0) return 0;
    int32_t last = r->blocks[r->nblocks - 1];
    return c->pool.refcount[last] > 1 || c->pool.cached[last];
}

static int seq_append(pkv_cache *c, pkv_seq h, int32_t n, const int32_t *tokens, int64_t *slots,
                      pkv_block_copy *cow) {
    pkv_seq_rec *r = seq_get(c, h);
    if (!r) return cache_fail(c, PKV_ERR_NO_SEQ, "sequence handle %lld is not live", (long long)h);
    RETURN_IF(n < 0 || n > INT32_MAX - r->len, PKV_ERR_INVALID);
    if (!cow && !c->store.enabled)
        return cache_fail(c, PKV_ERR_NULL, "metadata mode: cow is required to report copies");
    if (cow) cow->src = cow->dst = -1;
    int32_t bs = c->pool.block_size;
    int64_t new_len = (int64_t)r->len + n;
    int32_t new_blocks = blocks_for(c, new_len) - r->nblocks;
    int32_t cow_needed = needs_cow(c, r, n);
    int32_t avail = pool_available(&c->pool);
    if (new_blocks + cow_needed > avail)
        return cache_fail(c, PKV_ERR_CAPACITY, "append of %d tokens needs %d blocks, %d available", n,
                          new_blocks + cow_needed, avail);
    int record_tokens = tokens != NULL && r->ntokens == r->len;
    /* Auto-registration needs key room; reserved here so that it cannot fail later. */
    int auto_reg = c->prefix != NULL && (c->cfg.flags & PKV_FLAG_AUTO_REGISTER);
    FORWARD_IF_ERROR(seq_reserve(c, r, r->nblocks + new_blocks, record_tokens ? (int32_t)new_len : 0, auto_reg));

    /* From here on nothing can fail. */
    if (cow_needed) {
        int32_t src = r->blocks[r->nblocks - 1];
        int32_t dst = pool_alloc(&c->pool);
        store_copy_block(c, src, dst);
        if (cow) { cow->src = src; cow->dst = dst; }
        pool_unref(&c->pool, src);
        r->blocks[r->nblocks - 1] = dst;
        c->cow_copies++;
    }
    for (int32_t j = 0; j < new_blocks; j++) r->blocks[r->nblocks++] = pool_alloc(&c->pool);
    if (slots) {
        int32_t pos = r->len;
        for (int32_t i = 0; i < n; i++, pos++)
            slots[i] = (int64_t)r->blocks[pos / bs] * bs + pos % bs;
    }
    if (record_tokens) {
        if (n) memcpy(r->tokens + r->len, tokens, (size_t)n * sizeof *tokens);
        r->ntokens = (int32_t)new_len;
    }
    int32_t old_len = r->len;
    r->last_start = r->len;
    r->last_n = n;
    r->len = (int32_t)new_len;
    c->tokens += n;
    /* Blocks filled before this append (KV written) may be deduplicated; ones
     * it filled are indexed but not moved, since their slots were just handed out. */
    if (auto_reg) prefix_register_seq(c, r, old_len, NULL, NULL);
    return PKV_OK;
}

static int seq_blocks_needed(pkv_cache *c, pkv_seq h, int32_t n, int32_t *out) {
    pkv_seq_rec *r = seq_get(c, h);
    RETURN_IF(!r, PKV_ERR_NO_SEQ);
    RETURN_IF(n < 0 || n > INT32_MAX - r->len, PKV_ERR_INVALID);
    *out = blocks_for(c, (int64_t)r->len + n) - r->nblocks + needs_cow(c, r, n);
    return PKV_OK;
}

static int seq_truncate(pkv_cache *c, pkv_seq h, int32_t new_len) {
    pkv_seq_rec *r = seq_get(c, h);
    RETURN_IF(!r, PKV_ERR_NO_SEQ);
    if (new_len < 0 || new_len > r->len)
        return cache_fail(c, PKV_ERR_INVALID, "truncate to %d outside [0, %d]", new_len, r->len);
    release_tail(c, r, blocks_for(c, new_len));
    c->tokens -= r->len - new_len;
    r->len = new_len;
    if (r->ntokens > new_len) r->ntokens = new_len;
    if (r->nregistered > new_len / c->pool.block_size) r->nregistered = new_len / c->pool.block_size;
    if (r->last_start > new_len) r->last_start = new_len;
    if (r->last_start + r->last_n > new_len) r->last_n = new_len - r->last_start;
    return PKV_OK;
}

static int seq_fork(pkv_cache *c, pkv_seq parent, pkv_seq *child) {
    pkv_seq_rec *p = seq_get(c, parent);
    RETURN_IF(!p, PKV_ERR_NO_SEQ);
    int32_t idx;
    FORWARD_IF_ERROR(seq_slot_prepare(c, &idx));
    p = seq_get(c, parent); /* the record table may have moved */
    FORWARD_IF_ERROR(seq_reserve(c, &c->seqs[idx], p->nblocks, p->ntokens, p->keys != NULL));
    pkv_seq_rec *r = seq_slot_commit(c, idx, p->ns);
    if (p->nblocks) memcpy(r->blocks, p->blocks, (size_t)p->nblocks * sizeof *r->blocks);
    for (int32_t j = 0; j < p->nblocks; j++) pool_ref(&c->pool, p->blocks[j]);
    r->nblocks = p->nblocks;
    r->len = p->len;
    if (p->ntokens) memcpy(r->tokens, p->tokens, (size_t)p->ntokens * sizeof *r->tokens);
    r->ntokens = p->ntokens;
    if (p->keys && p->nregistered) memcpy(r->keys, p->keys, (size_t)p->nregistered * sizeof *r->keys);
    r->nregistered = p->keys ? p->nregistered : 0;
    r->last_start = r->len;
    r->last_n = 0;
    c->tokens += r->len;
    *child = seq_handle(c, r);
    return PKV_OK;
}

/* ---- public entry points: argument checks, lock, body ---- */

int pkv_seq_create(pkv_cache *c, uint64_t ns, pkv_seq *out) {
    RETURN_IF(!out, PKV_ERR_NULL);
    CACHE_ENTER(c);
    int st = seq_new(c, ns, out);
    CACHE_LEAVE(c, st);
}

int pkv_seq_append(pkv_cache *c, pkv_seq seq, int32_t n, const int32_t *tokens, int64_t *slots,
                   pkv_block_copy *cow) {
    CACHE_ENTER(c);
    int st = seq_append(c, seq, n, tokens, slots, cow);
    CACHE_LEAVE(c, st);
}

int pkv_seq_blocks_needed(pkv_cache *c, pkv_seq seq, int32_t n, int32_t *out) {
    RETURN_IF(!out, PKV_ERR_NULL);
    CACHE_ENTER(c);
    int st = seq_blocks_needed(c, seq, n, out);
    CACHE_LEAVE(c, st);
}

int pkv_seq_truncate(pkv_cache *c, pkv_seq seq, int32_t new_len) {
    CACHE_ENTER(c);
    int st = seq_truncate(c, seq, new_len);
    CACHE_LEAVE(c, st);
}

int pkv_seq_fork(pkv_cache *c, pkv_seq parent, pkv_seq *child) {
    RETURN_IF(!child, PKV_ERR_NULL);
    CACHE_ENTER(c);
    int st = seq_fork(c, parent, child);
    CACHE_LEAVE(c, st);
}

int pkv_seq_free(pkv_cache *c, pkv_seq seq) {
    CACHE_ENTER(c);
    pkv_seq_rec *r = seq_get(c, seq);
    int st = PKV_ERR_NO_SEQ;
    if (r) {
        seq_retire(c, r);
        st = PKV_OK;
    }
    CACHE_LEAVE(c, st);
}

int pkv_seq_length(pkv_cache *c, pkv_seq seq, int32_t *out) {
    RETURN_IF(!out, PKV_ERR_NULL);
    CACHE_ENTER(c);
    pkv_seq_rec *r = seq_get(c, seq);
    if (r) *out = r->len;
    CACHE_LEAVE(c, r ? PKV_OK : PKV_ERR_NO_SEQ);
}

int pkv_seq_blocks(pkv_cache *c, pkv_seq seq, int32_t *blocks, int32_t cap, int32_t *n) {
    RETURN_IF(!n, PKV_ERR_NULL);
    CACHE_ENTER(c);
    pkv_seq_rec *r = seq_get(c, seq);
    int st = PKV_ERR_NO_SEQ;
    if (r) {
        *n = r->nblocks;
        if (cap < r->nblocks) {
            st = cache_fail(c, PKV_ERR_BUFFER, "sequence has %d blocks, buffer holds %d", r->nblocks, cap);
        } else if (!blocks && r->nblocks) {
            st = PKV_ERR_NULL;
        } else {
            if (r->nblocks) memcpy(blocks, r->blocks, (size_t)r->nblocks * sizeof *blocks);
            st = PKV_OK;
        }
    }
    CACHE_LEAVE(c, st);
}
