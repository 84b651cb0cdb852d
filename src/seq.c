/* Sequences on top of the pool: records holding a block list, a length and the
 * known token ids; creation, extension on blocks the caller took, truncation,
 * copies (fork), retirement, and their invariants.
 *
 * This layer decides nothing about where blocks come from or what their
 * contents are: the cache layer takes blocks from the pool, performs any
 * copy-on-write and registers blocks in the prefix index, and calls down here
 * to update the records. Every call here that can fail (growing an array)
 * changes nothing visible when it fails.
 *
 * Record slots are reused, with a generation in the handle so that a freed
 * handle is refused, not aliased; the index bits are XORed with a per-cache
 * random salt so that a handle of another (or a destroyed) cache almost surely
 * names no record here. */
#include <string.h>

#include "internal.h"

#define HANDLE_INDEX(h) ((int32_t)((uint64_t)(h) & 0xffffffffu))
#define HANDLE_GEN(h) ((uint32_t)((uint64_t)(h) >> 32))

void seq_init(pkv_seqtab *t, const pkv_allocator *al, pkv_pool *pool, uint32_t salt, int32_t min_tokens_cap) {
    memset(t, 0, sizeof *t);
    t->al = al;
    t->pool = pool;
    t->seq_free_head = -1;
    t->handle_salt = salt;
    t->min_tokens_cap = min_tokens_cap;
}

void seq_destroy(pkv_seqtab *t) {
    for (int32_t i = 0; i < t->seqs_cap; i++) {
        pkv_seq_rec *r = &t->seqs[i];
        pkv_mem_free(t->al, r->blocks);
        pkv_mem_free(t->al, r->tokens);
        pkv_mem_free(t->al, r->mm);
    }
    pkv_mem_free(t->al, t->seqs);
    t->seqs = NULL;
    t->seqs_cap = 0;
}

pkv_seq seq_handle(const pkv_seqtab *t, const pkv_seq_rec *r) {
    return (pkv_seq)(((uint64_t)r->gen << 32) | ((uint32_t)(r - t->seqs) ^ t->handle_salt));
}

pkv_seq_rec *seq_get(pkv_seqtab *t, pkv_seq h) {
    if (h <= 0) return NULL;
    uint32_t i = (uint32_t)HANDLE_INDEX(h) ^ t->handle_salt;
    if (i >= (uint32_t)t->seqs_cap) return NULL;
    pkv_seq_rec *r = &t->seqs[i];
    return (r->live && r->gen == HANDLE_GEN(h)) ? r : NULL;
}

/* A free record slot (growing the table if needed) without taking it, so the
 * caller can still fail cleanly. */
int seq_slot_prepare(pkv_seqtab *t, int32_t *idx) {
    if (t->seq_free_head < 0) {
        int32_t old = t->seqs_cap;
        RETURN_IF(old >= INT32_MAX / 2, PKV_ERR_NOMEM);
        FORWARD_IF_ERROR(pkv_mem_grow(t->al, (void **)&t->seqs, &t->seqs_cap, old + 1, sizeof *t->seqs));
        memset(t->seqs + old, 0, (size_t)(t->seqs_cap - old) * sizeof *t->seqs);
        for (int32_t i = t->seqs_cap - 1; i >= old; i--) {
            t->seqs[i].next_free = t->seq_free_head;
            t->seq_free_head = i;
        }
    }
    *idx = t->seq_free_head;
    return PKV_OK;
}

/* Takes the slot prepared above and makes it a live, empty sequence. */
pkv_seq_rec *seq_slot_commit(pkv_seqtab *t, int32_t idx, uint64_t ns) {
    pkv_seq_rec *r = &t->seqs[idx];
    pkv_assert(idx == t->seq_free_head && !r->live);
    t->seq_free_head = r->next_free;
    pkv_assert(r->gen < SEQ_GEN_MAX); /* exhausted slots never return to the free list */
    r->gen++;
    r->live = 1;
    r->next_free = -1;
    r->len = r->nblocks = r->ntokens = r->nregistered = r->tok_base = r->lookahead = r->nreleased = 0;
    r->last_start = r->last_n = 0;
    r->ns = ns;
    r->adapter = 0;
    r->nmm = 0;
    r->grouped = 0;
    r->load_cut = 0;
    t->num_seqs++;
    return r;
}

int seq_reserve(pkv_seqtab *t, pkv_seq_rec *r, int32_t nblocks, int32_t stored_tokens) {
    if (stored_tokens < t->min_tokens_cap) stored_tokens = t->min_tokens_cap;
    FORWARD_IF_ERROR(pkv_mem_grow(t->al, (void **)&r->blocks, &r->blocks_cap, nblocks, sizeof *r->blocks));
    return pkv_mem_grow(t->al, (void **)&r->tokens, &r->tokens_cap, stored_tokens, sizeof *r->tokens);
}

int seq_reserve_mm(pkv_seqtab *t, pkv_seq_rec *r, int32_t nmm) {
    return pkv_mem_grow(t->al, (void **)&r->mm, &r->mm_cap, nmm, sizeof *r->mm);
}

void seq_drop_registered_tokens(pkv_seqtab *t, pkv_seq_rec *r) {
    int32_t base = r->nregistered * t->pool->block_size, drop = base - r->tok_base;
    pkv_assert(drop >= 0 && r->ntokens >= base);
    if (drop > 0 && r->ntokens > base)
        memmove(r->tokens, r->tokens + drop, (size_t)(r->ntokens - base) * sizeof *r->tokens);
    r->tok_base = base;
}

int seq_swap_tokens(pkv_seqtab *t, pkv_seq_rec *r, int32_t *buf, int32_t cap) {
    int32_t stored = r->ntokens - r->tok_base;
    if (stored > cap || cap < t->min_tokens_cap) return 0;
    if (stored) memcpy(buf, r->tokens, (size_t)stored * sizeof *buf);
    pkv_mem_free(t->al, r->tokens);
    r->tokens = buf;
    r->tokens_cap = cap;
    return 1;
}

void seq_adopt_prefix(pkv_seqtab *t, pkv_seq_rec *r, const int32_t *blocks, int32_t m, int held) {
    int32_t len = m * t->pool->block_size, released = 0;
    while (released < m && blocks[released] < 0) released++; /* a window cache's lookup */
    if (!held)
        for (int32_t j = released; j < m; j++) pool_ref(t->pool, blocks[j]);
    if (m && r->blocks != blocks) memcpy(r->blocks, blocks, (size_t)m * sizeof *blocks);
    r->nreleased = released;
    r->nblocks = r->nregistered = m;
    r->len = r->ntokens = r->tok_base = len;
    r->last_start = len;
    r->last_n = 0;
    t->tokens += len;
}

/* Releases blocks [keep, nblocks) last first, so that prefix chains become
 * evictable from their deepest block. */
static void release_tail(pkv_seqtab *t, pkv_seq_rec *r, int32_t keep) {
    for (int32_t j = r->nblocks - 1; j >= keep && j >= r->nreleased; j--) pool_unref(t->pool, r->blocks[j]);
    r->nblocks = keep;
    if (r->nreleased > keep) r->nreleased = keep; /* only when keep is 0 (a retire) or holes end there */
}

void seq_release_before(pkv_seqtab *t, pkv_seq_rec *r, int32_t upto) {
    if (upto > r->nblocks) upto = r->nblocks;
    for (int32_t j = r->nreleased; j < upto; j++) {
        pool_unref(t->pool, r->blocks[j]);
        r->blocks[j] = -1;
    }
    if (upto > r->nreleased) r->nreleased = upto;
}

void seq_retire(pkv_seqtab *t, pkv_seq_rec *r) {
    release_tail(t, r, 0);
    t->tokens -= r->len;
    r->len = r->ntokens = r->nregistered = r->tok_base = r->lookahead = 0;
    r->adapter = 0;
    r->nmm = 0;
    r->live = 0;
    t->num_seqs--;
    /* Wrapping the generation would hand out this slot's old handles again. */
    if (r->gen >= SEQ_GEN_MAX) {
        r->next_free = -1;
        return;
    }
    r->next_free = t->seq_free_head;
    t->seq_free_head = (int32_t)(r - t->seqs);
}

int seq_needs_cow(const pkv_seqtab *t, const pkv_seq_rec *r, int32_t n) {
    if (n == 0 || r->len % t->pool->block_size == 0) return 0;
    int32_t last = r->blocks[r->nblocks - 1];
    return t->pool->refcount[last] > 1 || t->pool->cached[last];
}

void seq_replace_block(pkv_seqtab *t, pkv_seq_rec *r, int32_t j, int32_t b) {
    pool_ref(t->pool, b);
    pool_unref(t->pool, r->blocks[j]);
    r->blocks[j] = b;
}

void seq_extend(pkv_seqtab *t, pkv_seq_rec *r, int32_t n, const int32_t *tokens, int64_t *slots) {
    int32_t bs = t->pool->block_size;
    pkv_assert(r->nblocks == seq_blocks_for(t, (int64_t)r->len + n));
    if (slots) {
        int32_t pos = r->len;
        for (int32_t i = 0; i < n; i++, pos++) slots[i] = (int64_t)r->blocks[pos / bs] * bs + pos % bs;
    }
    if (tokens && r->ntokens == r->len) {
        if (n) memcpy(r->tokens + (r->len - r->tok_base), tokens, (size_t)n * sizeof *tokens);
        r->ntokens = r->len + n;
    }
    r->last_start = r->len;
    r->last_n = n;
    r->len += n;
    t->tokens += n;
}

int32_t seq_truncate_needs_tokens(const pkv_seqtab *t, const pkv_seq_rec *r, int32_t new_len) {
    int32_t bs = t->pool->block_size, nreg = new_len / bs;
    int32_t ntok = r->ntokens < new_len ? r->ntokens : new_len;
    return nreg < r->nregistered && ntok > nreg * bs ? nreg : -1;
}

void seq_truncate(pkv_seqtab *t, pkv_seq_rec *r, int32_t new_len, const int32_t *block_toks) {
    int32_t bs = t->pool->block_size;
    int32_t j = seq_truncate_needs_tokens(t, r, new_len);
    release_tail(t, r, seq_blocks_for(t, new_len));
    t->tokens -= r->len - new_len;
    r->lookahead -= r->len - new_len; /* drafts go first */
    if (r->lookahead < 0) r->lookahead = 0;
    r->len = new_len;
    if (r->ntokens > new_len) r->ntokens = new_len;
    if (r->nregistered > new_len / bs) {
        /* Blocks that stop being registered take their ids back from the index
         * (only the one now partial keeps any: tokens_cap >= block_size). */
        r->nregistered = new_len / bs;
        r->tok_base = r->nregistered * bs;
        if (j >= 0) memcpy(r->tokens, block_toks, (size_t)(r->ntokens - r->tok_base) * sizeof *r->tokens);
    }
    /* Ranges of tokens that no longer exist go; one cut by new_len stays whole. */
    while (r->nmm > 0 && r->mm[r->nmm - 1].start >= new_len) r->nmm--;
    if (r->last_start > new_len) r->last_start = new_len;
    if (r->last_start + r->last_n > new_len) r->last_n = new_len - r->last_start;
}

void seq_copy(pkv_seqtab *t, const pkv_seq_rec *p, pkv_seq_rec *r) {
    if (p->nblocks) memcpy(r->blocks, p->blocks, (size_t)p->nblocks * sizeof *r->blocks);
    for (int32_t j = p->nreleased; j < p->nblocks; j++) pool_ref(t->pool, p->blocks[j]);
    r->nblocks = p->nblocks;
    r->nreleased = p->nreleased;
    r->len = p->len;
    if (p->ntokens > p->tok_base)
        memcpy(r->tokens, p->tokens, (size_t)(p->ntokens - p->tok_base) * sizeof *r->tokens);
    r->ntokens = p->ntokens;
    r->tok_base = p->tok_base;
    r->lookahead = p->lookahead;
    r->nregistered = p->nregistered;
    r->adapter = p->adapter;
    if (p->nmm) memcpy(r->mm, p->mm, (size_t)p->nmm * sizeof *r->mm);
    r->nmm = p->nmm;
    r->last_start = r->len;
    r->last_n = 0;
    t->tokens += r->len;
}

int seq_check(pkv_seqtab *t, int has_prefix, int32_t *count, int32_t *owner, pkv_detail *d) {
    const pkv_pool *p = t->pool;
    int64_t tokens = 0;
    int32_t live = 0;
    for (int32_t b = 0; b < p->num_blocks; b++) owner[b] = -1;
    for (int32_t i = 0; i < t->seqs_cap; i++) {
        const pkv_seq_rec *r = &t->seqs[i];
        if (!r->live) continue;
        live++;
        tokens += r->len;
        if (r->swapped) continue; /* its blocks[] are slots, not pool blocks (swap_check) */
        int32_t want = seq_blocks_for(t, r->len);
        if (r->nblocks != want || r->len < 0)
            return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: %d tokens in %d blocks (want %d)", i, r->len,
                             r->nblocks, want);
        if (r->ntokens < 0 || r->ntokens > r->len || r->nregistered < 0 || r->nregistered > r->nblocks ||
            (int64_t)r->nregistered * p->block_size > r->ntokens ||
            r->tok_base != r->nregistered * p->block_size || r->ntokens - r->tok_base > r->tokens_cap ||
            (r->nregistered && r->tokens_cap < t->min_tokens_cap))
            return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: tokens %d (from %d, room %d) registered %d of length %d",
                             i, r->ntokens, r->tok_base, r->tokens_cap, r->nregistered, r->len);
        if (r->nregistered && !has_prefix)
            return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d has %d registered blocks without a prefix cache", i,
                             r->nregistered);
        if (r->lookahead < 0 || r->lookahead > r->len || r->nregistered * p->block_size > r->len - r->lookahead)
            return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: %d lookahead tokens of %d, %d blocks registered", i,
                             r->lookahead, r->len, r->nregistered);
        if (r->last_start < 0 || r->last_n < 0 || (int64_t)r->last_start + r->last_n > r->len)
            return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: last append [%d, +%d) outside its %d tokens", i,
                             r->last_start, r->last_n, r->len);
        for (int32_t k = 0; k < r->nmm; k++) {
            const pkv_mm_range *x = &r->mm[k];
            if (k >= r->mm_cap || x->start < 0 || x->len < 1 || x->start > INT32_MAX - x->len ||
                (k && x->start < r->mm[k - 1].start + r->mm[k - 1].len))
                return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: multimodal range %d [%lld, +%lld) out of order", i,
                                 k, (long long)x->start, (long long)x->len);
        }
        if (r->nreleased < 0 || r->nreleased > r->nblocks)
            return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: %d released blocks of %d (%d registered)", i,
                             r->nreleased, r->nblocks, r->nregistered);
        for (int32_t j = 0; j < r->nreleased; j++)
            if (r->blocks[j] != -1)
                return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: released block #%d is %d, not -1", i, j,
                                 r->blocks[j]);
        for (int32_t j = r->nreleased; j < r->nblocks; j++) {
            int32_t b = r->blocks[j];
            if (b < 0 || b >= p->num_blocks || p->state[b] != BLOCK_USED)
                return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d holds block %d that is not in use", i, b);
            /* Two positions of one sequence can never share a slot. */
            if (owner[b] == i) return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d holds block %d twice", i, b);
            owner[b] = i;
            count[b]++;
        }
    }
    if (live != t->num_seqs || tokens != t->tokens)
        return pkv__fail(d, PKV_ERR_CORRUPT, "%d live sequences (counted %d), %lld tokens (counted %lld)",
                         t->num_seqs, live, (long long)t->tokens, (long long)tokens);
    /* Slots with an exhausted generation are retired: neither live nor listed. */
    int32_t nfree_recs = 0, retired = 0;
    for (int32_t i = 0; i < t->seqs_cap; i++) retired += !t->seqs[i].live && t->seqs[i].gen >= SEQ_GEN_MAX;
    for (int32_t i = t->seq_free_head; i >= 0; i = t->seqs[i].next_free)
        if (i >= t->seqs_cap || t->seqs[i].live || t->seqs[i].gen >= SEQ_GEN_MAX ||
            ++nfree_recs > t->seqs_cap - t->num_seqs)
            return pkv__fail(d, PKV_ERR_CORRUPT, "sequence record free list broken at %d", i);
    if (nfree_recs != t->seqs_cap - t->num_seqs - retired)
        return pkv__fail(d, PKV_ERR_CORRUPT, "%d free sequence records listed, %d expected", nfree_recs,
                         t->seqs_cap - t->num_seqs - retired);
    for (int32_t b = 0; b < p->num_blocks; b++)
        if (count[b] != p->refcount[b])
            return pkv__fail(d, PKV_ERR_CORRUPT, "block %d has refcount %d but %d holders", b, p->refcount[b],
                             count[b]);
    return PKV_OK;
}
