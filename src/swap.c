/* Sequence swap (preemption): a whole sequence leaves the pool and comes back.
 *
 * Out: every block of the sequence, the partly filled last one included, is
 * copied out (metadata mode: OFFLOAD transfers into tier-0 slots that stay
 * pinned until swap-in or free; host mode: the rows into one buffer from the
 * cache's allocator), then the blocks are released as a free would release
 * them, so registered full blocks stay in the prefix cache (evictable). The
 * record keeps its handle, length and every token id: the ids of its
 * registered blocks are copied back from the index first, since those entries
 * may be evicted while it is out.
 *
 * In: takes the blocks from the pool (all or nothing), restores the rows
 * (LOAD transfers, or copies), and, with AUTO_REGISTER, registers the full
 * blocks again (moving onto cached duplicates: the same identity is the same KV).
 *
 * Part of the cache layer (it orchestrates pool, seq, prefix, store and tiers). */
#include <string.h>

#include "internal.h"

int swap_out_op(pkv_cache *c, pkv_seq_rec *r) {
    int32_t k = r->nblocks, bs = c->pool.block_size;
    if (r->swapped) return cache_fail(c, PKV_ERR_STATE, "the sequence is swapped out already");
    if (r->lookahead)
        return cache_fail(c, PKV_ERR_STATE, "the sequence has %d lookahead tokens: pkv_seq_accept them first",
                          r->lookahead);
    if (r->nreleased)
        return cache_fail(c, PKV_ERR_STATE, "the sequence's window released %d of its blocks: it cannot be swapped",
                          r->nreleased);
    int meta = !c->store.enabled;
    if (meta && !c->tiers.meta)
        return cache_fail(c, PKV_ERR_MODE, "metadata mode swaps to tier 0: add one (pkv_cache_add_host_tier)");
    if (meta && tmeta_swap_room(c) < k)
        return cache_fail(c, PKV_ERR_CAPACITY, "swap out of %d blocks: tier 0 has room for %lld", k,
                          (long long)tmeta_swap_room(c));
    /* Reserve: the transfers or the buffer, and the token ids of the registered blocks. */
    int32_t *toks = NULL, cap = 0;
    uint8_t *buf = NULL;
    size_t rb = store_block_bytes(&c->store);
    int st = meta ? tmeta_reserve(c, 0, k + (int64_t)k * c->tiers.n) : PKV_OK;
    if (st == PKV_OK && !meta && k) {
        if (c->swap_spare && c->swap_spare_size >= (size_t)k * rb) {
            buf = c->swap_spare; /* taken below, once nothing can fail */
        } else if (!(buf = pkv_mem_alloc(&c->al, (size_t)k * rb))) {
            st = PKV_ERR_NOMEM;
        }
    }
    if (st == PKV_OK && r->nregistered) {
        cap = r->ntokens > c->seqs.min_tokens_cap ? r->ntokens : c->seqs.min_tokens_cap;
        if (!(toks = pkv_mem_alloc(&c->al, (size_t)cap * sizeof *toks))) st = PKV_ERR_NOMEM;
    }
    if (st != PKV_OK) {
        if (buf != c->swap_spare) pkv_mem_free(&c->al, buf);
        return cache_fail(c, st, "swap out of %d blocks: no memory", k);
    }
    if (buf && buf == c->swap_spare) {
        r->swap_size = c->swap_spare_size;
        c->swap_spare = NULL;
        c->swap_spare_size = 0;
    } else {
        r->swap_size = (size_t)k * rb;
    }
    if (toks) {
        for (int32_t j = 0; j < r->nregistered; j++)
            memcpy(toks + (size_t)j * bs, prefix_block_tokens(c->prefix, r->blocks[j]), (size_t)bs * sizeof *toks);
        if (r->ntokens > r->tok_base)
            memcpy(toks + r->tok_base, r->tokens, (size_t)(r->ntokens - r->tok_base) * sizeof *toks);
        pkv_mem_free(&c->al, r->tokens);
        r->tokens = toks;
        r->tokens_cap = cap;
        r->tok_base = 0;
        r->nregistered = 0;
    }
    /* Unregistering above changed no block: the entries keep their blocks, the
     * record just holds all of its ids now. From here on nothing can fail.
     * The rows are copied in order (the buffer is written front to back), the
     * blocks then released last first, as a free does (chains become
     * evictable from their end). */
    if (!meta)
        for (int32_t j = 0; j < k; j++) store_block_out(&c->store, r->blocks[j], buf + (size_t)j * rb, NULL, NULL);
    for (int32_t j = k - 1; j >= 0; j--) {
        int32_t b = r->blocks[j];
        if (meta) {
            int32_t s;
            tmeta_swap_take(c, 1, &s);
            tmeta_push(c, PKV_XFER_OFFLOAD, 0, b, s, -1, -1);
            r->blocks[j] = s;
        } else {
            r->blocks[j] = -1;
        }
        pool_unref(&c->pool, b);
    }
    r->swapped = 1;
    r->swap_buf = buf;
    return PKV_OK;
}

/* r's buffer becomes the cache's spare when it is larger than the spare (the
 * smaller one is freed). */
static void keep_spare(pkv_cache *c, pkv_seq_rec *r) {
    if (r->swap_buf && r->swap_size > c->swap_spare_size) {
        pkv_mem_free(&c->al, c->swap_spare);
        c->swap_spare = r->swap_buf;
        c->swap_spare_size = r->swap_size;
    } else {
        pkv_mem_free(&c->al, r->swap_buf);
    }
    r->swap_buf = NULL;
    r->swap_size = 0;
}

int swap_in_op(pkv_cache *c, pkv_seq_rec *r) {
    if (!r->swapped) return cache_fail(c, PKV_ERR_STATE, "the sequence is not swapped out");
    int32_t k = r->nblocks, avail = pool_available(&c->pool);
    if (k > avail) return cache_fail(c, PKV_ERR_CAPACITY, "swap in of %d blocks, %d available", k, avail);
    int meta = !c->store.enabled;
    int st = meta ? tmeta_reserve(c, k, k) : PKV_OK;
    if (st != PKV_OK) return cache_fail(c, st, "swap in of %d blocks: no memory for the transfer list", k);
    size_t rb = store_block_bytes(&c->store);
    uint8_t *buf = r->swap_buf;
    for (int32_t j = 0; j < k; j++) {
        int32_t b = cache_take_block(c); /* its offload, if any, is queued before the load into it */
        if (meta) {
            tmeta_push(c, PKV_XFER_LOAD, 0, b, r->blocks[j], -1, -1);
            tmeta_swap_give(c, r->blocks[j]);
        } else {
            store_block_in(&c->store, b, buf + (size_t)j * rb, NULL, NULL);
        }
        r->blocks[j] = b;
    }
    keep_spare(c, r);
    r->swapped = 0;
    if (c->prefix && (c->cfg.flags & PKV_FLAG_AUTO_REGISTER)) {
        prefix_register_seq(c->prefix, &c->seqs, r, -1, NULL, NULL);
        if (c->tiers.write_through) tier_write_through(c, r->blocks, r->nregistered);
    }
    return PKV_OK;
}

void swap_release(pkv_cache *c, pkv_seq_rec *r) {
    if (!r->swapped) return;
    if (!c->store.enabled)
        for (int32_t j = 0; j < r->nblocks; j++) tmeta_swap_give(c, r->blocks[j]);
    keep_spare(c, r);
    r->nblocks = 0;
    r->swapped = 0;
}

void swap_destroy(pkv_cache *c) {
    pkv_mem_free(&c->al, c->swap_spare);
    c->swap_spare = NULL;
    c->swap_spare_size = 0;
    for (int32_t i = 0; i < c->seqs.seqs_cap; i++) {
        pkv_mem_free(&c->al, c->seqs.seqs[i].swap_buf);
        c->seqs.seqs[i].swap_buf = NULL;
    }
}

/* Swapped records: host mode holds a buffer exactly when there are blocks;
 * metadata mode's slots are tier 0's swap slots, each once, none free. */
int swap_check(pkv_cache *c, pkv_detail *d) {
    int meta = c->tiers.meta;
    int64_t nslots = 0;
    uint8_t *seen = NULL;
    if (meta) {
        pkv_tier *t = &c->tiers.t[0];
        if (!(seen = pkv_mem_calloc(&c->al, (size_t)t->capacity, 1))) return PKV_ERR_NOMEM;
        for (int64_t s = 0; s < t->capacity; s++) seen[s] = (uint8_t)tier_slot_free(t, s);
        for (int32_t e = t->head; e >= 0; e = t->next[e]) seen[t->slot_of[e]] = 1;
    }
    int st = PKV_OK;
    for (int32_t i = 0; i < c->seqs.seqs_cap && st == PKV_OK; i++) {
        const pkv_seq_rec *r = &c->seqs.seqs[i];
        if (!r->live && (r->swapped || r->swap_buf))
            st = pkv__fail(d, PKV_ERR_CORRUPT, "free sequence record %d is marked swapped", i);
        if (!r->live || st != PKV_OK) continue;
        if (!r->swapped) {
            if (r->swap_buf) st = pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d holds a swap buffer while resident", i);
            continue;
        }
        if (r->nregistered || r->tok_base)
            st = pkv__fail(d, PKV_ERR_CORRUPT, "swapped sequence %d has %d registered blocks", i, r->nregistered);
        else if (!meta && (r->nblocks > 0) != (r->swap_buf != NULL))
            st = pkv__fail(d, PKV_ERR_CORRUPT, "swapped sequence %d: %d blocks, buffer %s", i, r->nblocks,
                           r->swap_buf ? "set" : "missing");
        for (int32_t j = 0; meta && st == PKV_OK && j < r->nblocks; j++) {
            int32_t s = r->blocks[j];
            if (s < 0 || s >= c->tiers.t[0].capacity || seen[s]++)
                st = pkv__fail(d, PKV_ERR_CORRUPT, "swapped sequence %d: slot %d bad, free or shared", i, s);
            nslots++;
        }
    }
    if (meta && st == PKV_OK && nslots != c->tiers.t[0].swapped)
        st = pkv__fail(d, PKV_ERR_CORRUPT, "tier 0 counts %lld swap slots, sequences hold %lld",
                       (long long)c->tiers.t[0].swapped, (long long)nslots);
    pkv_mem_free(&c->al, seen);
    return st;
}
