/* The cache layer's operations: every public call on sequences, the prefix
 * index and storage. Each one validates its arguments, reserves whatever it may
 * need (record slots, array capacity, pool blocks), and only then changes state
 * by calling down the layers, in this order for an append:
 *
 *   plan      seq_blocks_for / seq_needs_cow against pool_available
 *   reserve   seq_reserve (the only step that can fail, before any change)
 *   cow       pool_alloc (+ prefix_forget of a reclaimed block), store_copy_block
 *             in host mode or the returned copy in metadata mode, seq_replace_block
 *   blocks    pool_alloc (+ prefix_forget) for each new block, seq_extend
 *   register  prefix_register_seq (AUTO_REGISTER)
 *
 * so a failing call leaves the cache exactly as it was. Lower layers report a
 * status and a detail; the detail lands in the cache's last-error text. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A live record for handle h, or NULL with the detail recorded. */
static pkv_seq_rec *live_seq(pkv_cache *c, pkv_seq h) {
    pkv_seq_rec *r = seq_get(&c->seqs, h);
    if (!r) cache_fail(c, PKV_ERR_NO_SEQ, "sequence handle %lld is not live", (long long)h);
    return r;
}

/* ---- asynchronous loads: blocks the I/O threads are filling ---- */

/* The first of r's blocks that is still loading, or -1. */
static int32_t seq_loading_from(const pkv_cache *c, const pkv_seq_rec *r) {
    if (!aio_inflight(c) || r->swapped) return -1;
    for (int32_t j = r->nreleased; j < r->nblocks; j++)
        if (aio_is_loading(c, r->blocks[j])) return j;
    return -1;
}

static void reap_loads(pkv_cache *c, int block);

int cache_seq_loading(pkv_cache *c, const pkv_seq_rec *r, const char *what) {
    /* loads that ended are applied first (an export sees them at once) */
    if (aio_inflight(c)) reap_loads(c, 0);
    if (r->load_cut)
        return cache_fail(c, PKV_ERR_STATE, "%s: a load from a tier failed: the sequence now has %d tokens "
                          "(pkv_seq_load_poll, _wait or pkv_seq_length reports it)", what, r->len);
    int32_t j = seq_loading_from(c, r);
    if (j < 0) return PKV_OK;
    return cache_fail(c, PKV_ERR_STATE, "%s: block %d of the sequence (tokens from %d) is still loading from a tier: "
                      "pkv_seq_load_wait first", what, j, j * c->pool.block_size);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Failed loads of blocks failed[0..n) (sorted): every sequence holding one is
 * cut back to the blocks before its first such block (its ids past the cut
 * were the index's, dropped with them). One pass over the sequences. */
static void cut_holders(pkv_cache *c, const int32_t *failed, int32_t n) {
    pkv_seqtab *t = &c->seqs;
    for (int32_t i = 0; i < t->seqs_cap; i++) {
        pkv_seq_rec *r = &t->seqs[i];
        if (!r->live || r->swapped) continue;
        for (int32_t j = r->nreleased; j < r->nblocks; j++)
            if (bsearch(&r->blocks[j], failed, (size_t)n, sizeof *failed, cmp_i32)) {
                seq_truncate(t, r, j * c->pool.block_size, NULL);
                r->load_cut = 1;
                break;
            }
    }
}

/* Applies finished loads (block: wait for one while loads are in flight). */
static void reap_loads(pkv_cache *c, int block) {
    aio_done dn[64];
    int32_t n, failed[64];
    while ((n = aio_reap(c, dn, 64, block)) > 0) {
        int32_t nf = 0;
        for (int32_t i = 0; i < n; i++)
            if (!tier_load_done(c, &dn[i])) failed[nf++] = dn[i].b;
        if (nf) {
            qsort(failed, (size_t)nf, sizeof *failed, cmp_i32);
            cut_holders(c, failed, nf);
        }
        for (int32_t i = 0; i < n; i++) pool_unref(&c->pool, dn[i].b); /* the jobs' references */
        block = 0;
    }
}

/* Waits (holding the cache) until none of r's blocks is loading. */
static void seq_settle(pkv_cache *c, pkv_seq h) {
    reap_loads(c, 0);
    for (;;) {
        const pkv_seq_rec *r = seq_get(&c->seqs, h);
        if (!r || seq_loading_from(c, r) < 0) return;
        reap_loads(c, 1);
    }
}

/* A live record whose blocks are in the pool; NULL with *st set (PKV_ERR_STATE
 * for a swapped-out sequence, or one with blocks still loading). */
static pkv_seq_rec *resident_seq(pkv_cache *c, pkv_seq h, int *st) {
    pkv_seq_rec *r = live_seq(c, h);
    *st = r ? PKV_OK : PKV_ERR_NO_SEQ;
    if (r && r->swapped) {
        *st = cache_fail(c, PKV_ERR_STATE, "sequence %lld is swapped out: pkv_seq_swap_in it first", (long long)h);
        r = NULL;
    }
    if (r && (*st = cache_seq_loading(c, r, "sequence")) != PKV_OK) r = NULL;
    return r;
}

/* A block from the pool for a new owner; a reclaimed cached block leaves the
 * prefix index first (the caller checked that one is available). */
static int32_t take_block(pkv_cache *c) {
    int reclaimed;
    int32_t b = pool_alloc(&c->pool, &reclaimed);
    pkv_assert(b >= 0);
    if (reclaimed) {
        if (c->tiers.meta) tmeta_evicted(c, b);
        else if (c->tiers.n) tier_evicted(c, b);
        else prefix_forget(c->prefix, b);
    }
    return b;
}

int32_t cache_take_block(pkv_cache *c) { return take_block(c); }

/* Lookup through the tiers: the chain's blocks found in the pool are held at
 * once, in order, so that no promotion reclaims them; an entry found only in
 * a tier is copied into a new pool block. A promotion takes a pool block,
 * which may move other blocks between tiers or drop them: an entry further
 * down the chain that was dropped meanwhile lives nowhere (its id is not
 * reused during the call) and ends the match there. Returns the blocks held. */
/* Asynchronous promotion of entry e (async lookups, backend tiers): a pool
 * block is taken and e placed there now; an I/O thread fills it. 0 when e is
 * to be promoted synchronously (in a host tier, or no job slot free). */
static int promote_async(pkv_cache *c, int32_t e, int32_t *block) {
    int ti = tier_first_holding(c, e);
    if (ti < 0 || c->tiers.t[ti].host || !aio_can_submit(c)) return 0;
    c->tiers.pinned[0] = e; /* making room in the tiers must not drop e */
    int32_t b = take_block(c);
    c->tiers.pinned[0] = -1;
    prefix_place(c->prefix, e, b);
    aio_submit(c, e, ti, b);
    *block = b;
    return 1;
}

static int32_t match_through_tiers(pkv_cache *c, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n,
                                   int32_t *blocks, int async) {
    int32_t *ents = blocks; /* entry ids, replaced in place by the blocks held */
    int32_t k = prefix_match_entries(c->prefix, ns, x, tokens, n, ents), m;
    for (m = 0; m < k; m++) {
        int32_t e = ents[m], b = prefix_entry_block(c->prefix, e);
        if (b >= 0) pool_ref(&c->pool, b);
        else if (pool_available(&c->pool) == 0 ||
                 !((async && promote_async(c, e, &b)) ||
                   (c->tiers.meta ? tmeta_promote(c, e, take_block, &b) : tier_promote(c, e, take_block, &b))))
            break;
        blocks[m] = b;
    }
    if (m == k && c->tiers.shared) m = tier_shared_extend(c, ns, x, tokens, n, m, blocks, take_block);
    prefix_count_query(c->prefix, n, m * c->pool.block_size);
    return m;
}

/* Token ids are stored once: registration moves a sequence's ids of full
 * blocks into the index. When a call is about to register many blocks of a
 * sequence whose id array will then be mostly empty, a smaller array is
 * allocated up front (while the call can still fail cleanly) and swapped in
 * after the registration if the remaining ids fit. Returns the spare array or
 * NULL (not needed); *st = PKV_ERR_NOMEM when it was needed and failed. */
static int32_t *spare_tokens(pkv_cache *c, const pkv_seq_rec *r, int64_t ntokens_after, int32_t *cap, int *st) {
    int32_t bs = c->pool.block_size;
    int64_t left = ntokens_after % bs; /* ids past the last full block */
    int64_t want = left < c->seqs.min_tokens_cap ? c->seqs.min_tokens_cap : 2 * left;
    *st = PKV_OK;
    *cap = 0;
    if (!c->prefix || (int64_t)r->tokens_cap <= 4 * want || ntokens_after - r->tok_base <= 4 * want) return NULL;
    int32_t *buf = pkv_mem_alloc(&c->al, (size_t)want * sizeof *buf);
    if (!buf) *st = PKV_ERR_NOMEM;
    *cap = (int32_t)want;
    return buf;
}

static void use_spare_tokens(pkv_cache *c, pkv_seq_rec *r, int32_t *spare, int32_t cap) {
    if (spare && !seq_swap_tokens(&c->seqs, r, spare, cap)) pkv_mem_free(&c->al, spare);
}

/* Window caches: the first block the next token after `settled` tokens still
 * reads (its keys are (settled - W, settled]); blocks before it can go. */
static int32_t window_keep_from(const pkv_cache *c, int32_t settled) {
    int64_t first_key = (int64_t)settled + 1 - c->cfg.window;
    return first_key > 0 ? (int32_t)(first_key / c->pool.block_size) : 0;
}

/* Window caches with prefix caching: the first block a sequence of L tokens
 * holds after a lookup: the window of its next token and of the one before
 * (a lookup of a whole prompt is truncated by one token), and its last full
 * block, which the registration of the next block chains from. */
static int32_t window_hold_from(const pkv_cache *c, int32_t len) {
    int32_t s = window_keep_from(c, len > 0 ? len - 1 : 0), bs = c->pool.block_size;
    if (len >= bs && len / bs - 1 < s) s = len / bs - 1;
    return s;
}

int32_t cache_window_fit(const pkv_cache *c, const int32_t *ents, int32_t m, int32_t limit) {
    const int64_t bs = c->pool.block_size;
    int64_t len = m * bs < limit ? m * bs : limit;
    while (len > 0) {
        int32_t end = (int32_t)((len + bs - 1) / bs), s = window_hold_from(c, (int32_t)len), j = end - 1;
        while (j >= s && prefix_entry_block(c->prefix, ents[j]) >= 0) j--;
        if (j < s) break;
        len = j * bs; /* block j is gone: only a length before it can do without it */
    }
    return (int32_t)len;
}

void cache_window_adopt(pkv_cache *c, pkv_seq_rec *r, int32_t *ents, int32_t len) {
    const int32_t bs = c->pool.block_size, h = (int32_t)(((int64_t)len + bs - 1) / bs);
    const int32_t s = len > 0 ? window_hold_from(c, len) : 0;
    for (int32_t j = 0; j < h; j++) ents[j] = j < s ? -1 : prefix_entry_block(c->prefix, ents[j]);
    seq_adopt_prefix(&c->seqs, r, ents, h, 0);
    if (len < h * bs) {
        int32_t j = seq_truncate_needs_tokens(&c->seqs, r, len);
        seq_truncate(&c->seqs, r, len, j >= 0 ? prefix_block_tokens(c->prefix, r->blocks[j]) : NULL);
    }
}

/* An append in two steps (KV groups run the first on every group's cache
 * before the second on any): prepare validates and reserves everything that
 * can fail; commit cannot fail; abandon undoes a prepare not committed. */
int cache_append_prepare(pkv_cache *c, pkv_seq h, int32_t n, const int32_t *tokens, int64_t *slots,
                         pkv_block_copy *cow, int lookahead, append_plan *pl) {
    int st;
    pkv_seq_rec *r = resident_seq(c, h, &st);
    if (!r) return st;
    if (r->lookahead && !lookahead)
        return cache_fail(c, PKV_ERR_STATE, "the sequence has %d lookahead tokens: pkv_seq_accept them first",
                          r->lookahead);
    if (n < 0) return cache_fail(c, PKV_ERR_INVALID, "n = %d is negative", n);
    if (n > INT32_MAX - r->len)
        return cache_fail(c, PKV_ERR_INVALID, "n = %d would take the sequence past INT32_MAX tokens", n);
    if (!cow && !c->store.enabled)
        return cache_fail(c, PKV_ERR_NULL, "metadata mode: cow is required to report copies");
    if (cow) cow->src = cow->dst = -1;
    int64_t new_len = (int64_t)r->len + n;
    int32_t new_blocks = seq_blocks_for(&c->seqs, new_len) - r->nblocks;
    int32_t cow_needed = seq_needs_cow(&c->seqs, r, n);
    int32_t avail = pool_available(&c->pool);
    if (new_blocks + cow_needed > avail)
        return cache_fail(c, PKV_ERR_CAPACITY, "append of %d tokens needs %d blocks, %d available", n,
                          new_blocks + cow_needed, avail);
    int record_tokens = tokens != NULL && r->ntokens == r->len;
    int auto_reg = c->prefix != NULL && (c->cfg.flags & PKV_FLAG_AUTO_REGISTER);
    st = tmeta_reserve(c, new_blocks + cow_needed, 0);
    if (st < 0) return cache_fail(c, st, "append of %d tokens: no memory for the transfer list", n);
    st = seq_reserve(&c->seqs, r, r->nblocks + new_blocks, record_tokens ? (int32_t)new_len - r->tok_base : 0);
    if (st < 0) return cache_fail(c, st, "append of %d tokens: no memory for the block list", n);
    int32_t spare_cap = 0, *spare = NULL;
    if (auto_reg && record_tokens) {
        /* After the ids have grown to their new length. */
        spare = spare_tokens(c, r, new_len, &spare_cap, &st);
        if (st < 0) return cache_fail(c, st, "append of %d tokens: no memory for the token ids", n);
    }
    *pl = (append_plan){r, n, new_blocks, cow_needed, spare_cap, spare, tokens, slots, cow,
                        record_tokens, auto_reg, lookahead};
    return PKV_OK;
}

void cache_append_abandon(pkv_cache *c, append_plan *pl) {
    if (pl->spare) pkv_mem_free(&c->al, pl->spare);
    pl->spare = NULL;
}

void cache_append_commit(pkv_cache *c, append_plan *pl) {
    pkv_seq_rec *r = pl->r;
    const int32_t n = pl->n, new_blocks = pl->new_blocks, cow_needed = pl->cow_needed, spare_cap = pl->spare_cap;
    int32_t *spare = pl->spare;
    const int32_t *tokens = pl->tokens;
    int64_t *slots = pl->slots;
    pkv_block_copy *cow = pl->cow;
    const int record_tokens = pl->record_tokens, auto_reg = pl->auto_reg, lookahead = pl->lookahead;
    if (cow_needed) {
        int32_t src = r->blocks[r->nblocks - 1];
        int32_t dst = take_block(c);
        store_copy_block(&c->store, src, dst);
        if (cow) {
            cow->src = src;
            cow->dst = dst;
        }
        r->blocks[r->nblocks - 1] = dst; /* dst's one reference moves to r */
        pool_unref(&c->pool, src);
        c->cow_copies++;
    }
    for (int32_t j = 0; j < new_blocks; j++) r->blocks[r->nblocks++] = take_block(c);
    int32_t old_len = r->len, old_settled = r->len - r->lookahead;
    seq_extend(&c->seqs, r, n, record_tokens ? tokens : NULL, slots);
    if (lookahead) r->lookahead += n;
    /* Blocks filled before this append (KV written) may be deduplicated; ones
     * it filled are indexed but not moved, since their slots were just handed out. */
    if (auto_reg) {
        int32_t before = r->nregistered;
        prefix_register_seq(c->prefix, &c->seqs, r, old_len, NULL, NULL);
        use_spare_tokens(c, r, spare, spare_cap);
        if (c->tiers.write_through) tier_write_through(c, r->blocks + before, r->nregistered - before);
    }
    /* A window cache lets go of the blocks the next token's window no longer
     * reaches, as of the length settled before this append (its own tokens'
     * queries, being computed now, still read the blocks before them). */
    if (c->cfg.window > 0) {
        int32_t upto = window_keep_from(c, old_settled);
        /* With prefix caching the last registered block stays (the next
         * block's registration chains from its entry) while registration
         * keeps up: it has registered every block settled before this append.
         * One that fell behind (an append without token ids: nothing
         * registers again; an index growth that failed) gives way to the
         * window, or that block and every block after it would stay. */
        if (c->prefix && r->nregistered > r->nreleased && r->nregistered >= old_settled / c->pool.block_size &&
            r->nregistered - 1 < upto)
            upto = r->nregistered - 1;
        seq_release_before(&c->seqs, r, upto);
    }
}

static int seq_append_op(pkv_cache *c, pkv_seq h, int32_t n, const int32_t *tokens, int64_t *slots,
                         pkv_block_copy *cow, int lookahead) {
    append_plan pl;
    int st = cache_append_prepare(c, h, n, tokens, slots, cow, lookahead, &pl);
    if (st == PKV_OK) cache_append_commit(c, &pl);
    return st;
}

int cache_fork_prepare(pkv_cache *c, pkv_seq parent, int32_t *idx) {
    int st;
    if (!resident_seq(c, parent, &st)) return st;
    st = seq_slot_prepare(&c->seqs, idx);
    const pkv_seq_rec *p = seq_get(&c->seqs, parent); /* the record table may have moved */
    if (st == PKV_OK) st = seq_reserve(&c->seqs, &c->seqs.seqs[*idx], p->nblocks, p->ntokens - p->tok_base);
    if (st == PKV_OK) st = seq_reserve_mm(&c->seqs, &c->seqs.seqs[*idx], p->nmm);
    if (st < 0) return cache_fail(c, st, "fork: no memory for the child's record");
    return PKV_OK;
}

pkv_seq cache_fork_commit(pkv_cache *c, pkv_seq parent, int32_t idx) {
    const pkv_seq_rec *p = seq_get(&c->seqs, parent);
    pkv_seq_rec *r = seq_slot_commit(&c->seqs, idx, p->ns);
    seq_copy(&c->seqs, p, r);
    return seq_handle(&c->seqs, r);
}

static int seq_fork_op(pkv_cache *c, pkv_seq parent, pkv_seq *child) {
    int32_t idx;
    int st = cache_fork_prepare(c, parent, &idx);
    if (st == PKV_OK) *child = cache_fork_commit(c, parent, idx);
    return st;
}

/* A sequence of a KV group is changed only through pkv_groups_* (which keeps
 * the groups in step). */
static int refuse_grouped(pkv_cache *c, pkv_seq h) {
    const pkv_seq_rec *r = seq_get(&c->seqs, h);
    if (r && r->grouped)
        return cache_fail(c, PKV_ERR_STATE, "sequence %lld belongs to a KV group: change it through pkv_groups_*",
                          (long long)h);
    return PKV_OK;
}

static int prefix_register_op(pkv_cache *c, pkv_seq h, int32_t *registered, int32_t *deduped) {
    if (!c->prefix) return cache_fail(c, PKV_ERR_MODE, "prefix caching is off (PKV_FLAG_PREFIX_CACHE)");
    int st;
    pkv_seq_rec *r = resident_seq(c, h, &st);
    if (!r) return st;
    int32_t spare_cap;
    int32_t *spare = spare_tokens(c, r, r->ntokens, &spare_cap, &st);
    if (st < 0) return cache_fail(c, st, "register: no memory for the sequence's token ids");
    int32_t before = r->nregistered;
    prefix_register_seq(c->prefix, &c->seqs, r, -1, registered, deduped);
    use_spare_tokens(c, r, spare, spare_cap);
    if (c->tiers.write_through) tier_write_through(c, r->blocks + before, r->nregistered - before);
    return PKV_OK;
}

/* Multimodal ranges in order, within the int32 positions, never overlapping. */
static int check_ranges(pkv_cache *c, const pkv_mm_range *mm, int32_t nmm, int64_t min_start) {
    for (int32_t k = 0; k < nmm; k++) {
        int64_t s = mm[k].start, len = mm[k].len;
        if (s < 0 || len < 1 || s > INT32_MAX || len > INT32_MAX - s)
            return cache_fail(c, PKV_ERR_INVALID, "multimodal range %d [%lld, +%lld) outside the positions [0, INT32_MAX]",
                              k, (long long)s, (long long)len);
        if (s < min_start)
            return cache_fail(c, PKV_ERR_INVALID, "multimodal range %d starts at %lld, before %lld (%s)", k,
                              (long long)s, (long long)min_start,
                              k ? "the end of the range before it" : "the sequence's length or last range");
        min_start = s + len;
    }
    return PKV_OK;
}

/* The caller's extra keys (NULL: none) checked into *x. */
static int import_extras(pkv_cache *c, const pkv_extra_keys *user, prefix_extras *x) {
    x->adapter = 0;
    x->mm = NULL;
    x->nmm = 0;
    if (!user) return PKV_OK;
    pkv_extra_keys e;
    memset(&e, 0, sizeof e);
    if (pkv__struct_import(&e, sizeof e, user, PKV_EXTRA_KEYS_SIZE_1_1) < 0)
        return cache_fail(c, PKV_ERR_INVALID, "extra->size is %u: start from PKV_EXTRA_KEYS_INIT", user->size);
    if (e.num_mm < 0) return cache_fail(c, PKV_ERR_INVALID, "extra->num_mm = %d is negative", e.num_mm);
    if (e.num_mm > 0 && !e.mm) return cache_fail(c, PKV_ERR_NULL, "extra->mm is NULL with num_mm = %d", e.num_mm);
    FORWARD_IF_ERROR(check_ranges(c, e.mm, e.num_mm, 0));
    x->adapter = e.adapter_id;
    x->mm = e.mm;
    x->nmm = e.num_mm;
    return PKV_OK;
}

/* limit: a window cache's hit is at most this many tokens (KV groups). */
static int prefix_lookup_op(pkv_cache *c, uint64_t ns, const int32_t *tokens, int32_t n,
                            const pkv_extra_keys *extra, pkv_seq *out, int32_t *cached_tokens, int async,
                            int32_t limit) {
    if (!c->prefix) return cache_fail(c, PKV_ERR_MODE, "prefix caching is off (PKV_FLAG_PREFIX_CACHE)");
    if (n < 0) return cache_fail(c, PKV_ERR_INVALID, "prompt length %d is negative", n);
    if (n > 0 && !tokens) return cache_fail(c, PKV_ERR_NULL, "tokens is NULL with n = %d", n);
    prefix_extras x;
    FORWARD_IF_ERROR(import_extras(c, extra, &x));
    int32_t bs = c->pool.block_size, idx;
    /* Each promotion takes (and holds) a pool block: at most num_blocks of them. */
    int32_t most = n / bs < c->pool.num_blocks ? n / bs : c->pool.num_blocks;
    int st = tmeta_reserve(c, most, most);
    if (st == PKV_OK) st = seq_slot_prepare(&c->seqs, &idx);
    /* Room for the prompt's blocks (the engine appends the rest next), reserved
     * before the record is taken so that a failure changes nothing; the ids of
     * the cached blocks stay in the index. */
    if (st == PKV_OK) st = seq_reserve(&c->seqs, &c->seqs.seqs[idx], (int32_t)(((int64_t)n + bs - 1) / bs), 0);
    if (st == PKV_OK) st = seq_reserve_mm(&c->seqs, &c->seqs.seqs[idx], x.nmm);
    if (st < 0) return cache_fail(c, st, "lookup: no memory for the sequence of a %d-token prompt", n);
    pkv_seq_rec *r = seq_slot_commit(&c->seqs, idx, ns);
    r->adapter = x.adapter;
    if (x.nmm) memcpy(r->mm, x.mm, (size_t)x.nmm * sizeof *r->mm);
    r->nmm = x.nmm;
    if (c->cfg.window > 0) { /* r->blocks holds the chain's entries, then the blocks */
        int32_t m = prefix_match_entries(c->prefix, ns, &x, tokens, n, r->blocks);
        int32_t len = cache_window_fit(c, r->blocks, m, limit);
        cache_window_adopt(c, r, r->blocks, len);
        prefix_count_query(c->prefix, n, len);
    } else if (c->tiers.n) {
        int32_t m = match_through_tiers(c, ns, &x, tokens, n, r->blocks, async);
        seq_adopt_prefix(&c->seqs, r, r->blocks, m, 1);
    } else {
        int32_t m = prefix_match(c->prefix, ns, &x, tokens, n, r->blocks);
        seq_adopt_prefix(&c->seqs, r, r->blocks, m, 0);
    }
    *out = seq_handle(&c->seqs, r);
    /* A synchronous lookup may have matched blocks an async one is loading:
     * it returns only once they are in (or cut where one failed). */
    if (!async && aio_inflight(c)) seq_settle(c, *out);
    r = seq_get(&c->seqs, *out);
    r->load_cut = 0; /* the length returned here is the one after any cut */
    *cached_tokens = r->len;
    return PKV_OK;
}

int cache_lookup(pkv_cache *c, uint64_t ns, const int32_t *tokens, int32_t n, int32_t limit, pkv_seq *out,
                 int32_t *cached) {
    return prefix_lookup_op(c, ns, tokens, n, NULL, out, cached, 0, limit);
}

/* ---- public entry points: lock, arguments, body ---- */

#define FORWARD_GROUPED(c, h)                          \
    do {                                               \
        int gst_ = refuse_grouped((c), (h));           \
        if (gst_ < 0) CACHE_LEAVE((c), gst_);          \
    } while (0)

int pkv_seq_create(pkv_cache *c, uint64_t ns, pkv_seq *out) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    int32_t idx;
    int st = seq_slot_prepare(&c->seqs, &idx);
    if (st < 0) CACHE_LEAVE(c, cache_fail(c, st, "create: no memory for a sequence record"));
    *out = seq_handle(&c->seqs, seq_slot_commit(&c->seqs, idx, ns));
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_seq_append(pkv_cache *c, pkv_seq seq, int32_t n, const int32_t *tokens, int64_t *slots,
                   pkv_block_copy *cow) {
    CACHE_ENTER(c);
    FORWARD_GROUPED(c, seq);
    CACHE_LEAVE(c, seq_append_op(c, seq, n, tokens, slots, cow, 0));
}

int pkv_seq_append_lookahead(pkv_cache *c, pkv_seq seq, int32_t n, const int32_t *tokens, int64_t *slots,
                             pkv_block_copy *cow) {
    CACHE_ENTER(c);
    FORWARD_GROUPED(c, seq);
    CACHE_LEAVE(c, seq_append_op(c, seq, n, tokens, slots, cow, 1));
}

int pkv_seq_accept(pkv_cache *c, pkv_seq seq, int32_t accepted) {
    CACHE_ENTER(c);
    FORWARD_GROUPED(c, seq);
    int rst;
    pkv_seq_rec *r = resident_seq(c, seq, &rst);
    if (!r) CACHE_LEAVE(c, rst);
    if (accepted < 0 || accepted > r->lookahead)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "accepted %d outside [0, %d] (the lookahead tokens)", accepted,
                                  r->lookahead));
    int auto_reg = c->prefix != NULL && (c->cfg.flags & PKV_FLAG_AUTO_REGISTER);
    int32_t spare_cap = 0, *spare = NULL, st = PKV_OK;
    int32_t new_len = r->len - (r->lookahead - accepted);
    if (auto_reg) {
        spare = spare_tokens(c, r, r->ntokens < new_len ? r->ntokens : new_len, &spare_cap, &st);
        if (st < 0) CACHE_LEAVE(c, cache_fail(c, st, "accept: no memory for the token ids"));
    }
    /* Rejected drafts: their blocks were never registered, so this copies nothing. */
    int32_t j = seq_truncate_needs_tokens(&c->seqs, r, new_len);
    seq_truncate(&c->seqs, r, new_len, j >= 0 ? prefix_block_tokens(c->prefix, r->blocks[j]) : NULL);
    r->lookahead = 0;
    if (auto_reg) {
        prefix_register_seq(c->prefix, &c->seqs, r, -1, NULL, NULL);
        use_spare_tokens(c, r, spare, spare_cap);
    }
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_seq_lookahead(pkv_cache *c, pkv_seq seq, int32_t *out) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    pkv_seq_rec *r = live_seq(c, seq);
    if (r) *out = r->lookahead;
    CACHE_LEAVE(c, r ? PKV_OK : PKV_ERR_NO_SEQ);
}

int pkv_seq_blocks_needed(pkv_cache *c, pkv_seq seq, int32_t n, int32_t *out) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    int rst;
    pkv_seq_rec *r = resident_seq(c, seq, &rst);
    if (!r) CACHE_LEAVE(c, rst);
    if (n < 0 || n > INT32_MAX - r->len)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "n = %d outside [0, %d]", n, INT32_MAX - r->len));
    *out = seq_blocks_for(&c->seqs, (int64_t)r->len + n) - r->nblocks + seq_needs_cow(&c->seqs, r, n);
    CACHE_LEAVE(c, PKV_OK);
}

int cache_truncate_check(pkv_cache *c, pkv_seq seq, int32_t new_len) {
    int rst;
    pkv_seq_rec *r = resident_seq(c, seq, &rst);
    if (!r) return rst;
    if (new_len < 0 || new_len > r->len)
        return cache_fail(c, PKV_ERR_INVALID, "truncate to %d outside [0, %d]", new_len, r->len);
    if (r->nreleased > window_keep_from(c, new_len))
        return cache_fail(c, PKV_ERR_STATE,
                          "truncate to %d: its window (from token %d) needs blocks the window released "
                          "(the first %d)", new_len, new_len + 1 - c->cfg.window, r->nreleased);
    return PKV_OK;
}

void cache_truncate_commit(pkv_cache *c, pkv_seq seq, int32_t new_len) {
    pkv_seq_rec *r = seq_get(&c->seqs, seq);
    int32_t j = seq_truncate_needs_tokens(&c->seqs, r, new_len);
    seq_truncate(&c->seqs, r, new_len, j >= 0 ? prefix_block_tokens(c->prefix, r->blocks[j]) : NULL);
}

int pkv_seq_truncate(pkv_cache *c, pkv_seq seq, int32_t new_len) {
    CACHE_ENTER(c);
    int st = refuse_grouped(c, seq);
    if (st == PKV_OK) st = cache_truncate_check(c, seq, new_len);
    if (st == PKV_OK) cache_truncate_commit(c, seq, new_len);
    CACHE_LEAVE(c, st);
}

int pkv_seq_fork(pkv_cache *c, pkv_seq parent, pkv_seq *child) {
    CACHE_ENTER(c);
    FORWARD_GROUPED(c, parent);
    CACHE_NULL_IF(c, !child, "child");
    CACHE_LEAVE(c, seq_fork_op(c, parent, child));
}

int pkv_seq_free(pkv_cache *c, pkv_seq seq) {
    CACHE_ENTER(c);
    FORWARD_GROUPED(c, seq);
    pkv_seq_rec *r = live_seq(c, seq);
    if (!r) CACHE_LEAVE(c, PKV_ERR_NO_SEQ);
    swap_release(c, r);
    seq_retire(&c->seqs, r);
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_seq_length(pkv_cache *c, pkv_seq seq, int32_t *out) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    pkv_seq_rec *r = live_seq(c, seq);
    if (r && aio_inflight(c)) reap_loads(c, 0);
    if (r && seq_loading_from(c, r) < 0) r->load_cut = 0; /* reported */
    if (r) *out = r->len;
    CACHE_LEAVE(c, r ? PKV_OK : PKV_ERR_NO_SEQ);
}

int pkv_seq_blocks(pkv_cache *c, pkv_seq seq, int32_t *blocks, int32_t cap, int32_t *n) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !n, "n");
    int rst;
    pkv_seq_rec *r = resident_seq(c, seq, &rst);
    if (!r) CACHE_LEAVE(c, rst);
    *n = r->nblocks;
    if (cap < r->nblocks)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_BUFFER, "sequence has %d blocks, buffer holds %d", r->nblocks, cap));
    CACHE_NULL_IF(c, !blocks && r->nblocks, "blocks");
    if (r->nblocks) memcpy(blocks, r->blocks, (size_t)r->nblocks * sizeof *blocks);
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_prefix_register(pkv_cache *c, pkv_seq seq, int32_t *registered, int32_t *deduped) {
    CACHE_ENTER(c);
    if (registered) *registered = 0;
    if (deduped) *deduped = 0;
    CACHE_LEAVE(c, prefix_register_op(c, seq, registered, deduped));
}

int pkv_prefix_lookup(pkv_cache *c, uint64_t ns, const int32_t *tokens, int32_t n, pkv_seq *out,
                      int32_t *cached_tokens) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    CACHE_NULL_IF(c, !cached_tokens, "cached_tokens");
    CACHE_LEAVE(c, prefix_lookup_op(c, ns, tokens, n, NULL, out, cached_tokens, 0, INT32_MAX));
}

int pkv_prefix_lookup_ex(pkv_cache *c, uint64_t ns, const int32_t *tokens, int32_t n, const pkv_extra_keys *extra,
                         pkv_seq *out, int32_t *cached_tokens) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    CACHE_NULL_IF(c, !cached_tokens, "cached_tokens");
    CACHE_LEAVE(c, prefix_lookup_op(c, ns, tokens, n, extra, out, cached_tokens, 0, INT32_MAX));
}

/* ---- extra keys of a sequence ---- */

int pkv_seq_set_adapter(pkv_cache *c, pkv_seq seq, uint64_t adapter_id) {
    CACHE_ENTER(c);
    pkv_seq_rec *r = live_seq(c, seq);
    if (!r) CACHE_LEAVE(c, PKV_ERR_NO_SEQ);
    if (r->len != 0)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_STATE, "the sequence holds %d tokens: set the adapter before any", r->len));
    r->adapter = adapter_id;
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_seq_add_mm(pkv_cache *c, pkv_seq seq, int64_t start, int64_t len, const uint8_t hash[16]) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !hash, "hash");
    pkv_seq_rec *r = live_seq(c, seq);
    if (!r) CACHE_LEAVE(c, PKV_ERR_NO_SEQ);
    pkv_mm_range x;
    x.start = start;
    x.len = len;
    memcpy(x.hash, hash, 16);
    /* At or past the length (no registered block can change identity) and the last range. */
    int64_t min_start = r->len;
    if (r->nmm && r->mm[r->nmm - 1].start + r->mm[r->nmm - 1].len > min_start)
        min_start = r->mm[r->nmm - 1].start + r->mm[r->nmm - 1].len;
    int st = check_ranges(c, &x, 1, min_start);
    if (st < 0) CACHE_LEAVE(c, st);
    if (r->nmm == INT32_MAX || seq_reserve_mm(&c->seqs, r, r->nmm + 1) < 0)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_NOMEM, "no memory for %d multimodal ranges", r->nmm + 1));
    r->mm[r->nmm++] = x;
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_seq_extra_keys(pkv_cache *c, pkv_seq seq, uint64_t *adapter_id, pkv_mm_range *mm, int32_t cap,
                       int32_t *num_mm) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, mm && !num_mm, "num_mm");
    pkv_seq_rec *r = live_seq(c, seq);
    if (!r) CACHE_LEAVE(c, PKV_ERR_NO_SEQ);
    if (mm && cap < r->nmm) {
        *num_mm = r->nmm;
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_BUFFER, "the sequence has %d multimodal ranges, mm holds %d", r->nmm, cap));
    }
    if (adapter_id) *adapter_id = r->adapter;
    if (num_mm) *num_mm = r->nmm;
    if (mm && r->nmm) memcpy(mm, r->mm, (size_t)r->nmm * sizeof *mm);
    CACHE_LEAVE(c, PKV_OK);
}

/* Slots of blocks an I/O thread is filling are neither written nor read. */
static int slots_loading(pkv_cache *c, const int64_t *slots, int32_t n) {
    if (!aio_inflight(c) || !slots || n <= 0) return PKV_OK;
    reap_loads(c, 0);
    const int64_t bs = c->pool.block_size, end = (int64_t)c->pool.num_blocks * bs;
    for (int32_t i = 0; i < n; i++)
        if (slots[i] >= 0 && slots[i] < end && aio_is_loading(c, (int32_t)(slots[i] / bs)))
            return cache_fail(c, PKV_ERR_STATE, "slots[%d] = %lld is in block %lld, still loading from a tier", i,
                              (long long)slots[i], (long long)(slots[i] / bs));
    return PKV_OK;
}

int pkv_store_write(pkv_cache *c, int32_t layer, const int64_t *slots, int32_t n, const void *k_rows,
                    const void *v_rows, int32_t src_dtype) {
    CACHE_ENTER(c);
    int lst = slots_loading(c, slots, n);
    if (lst < 0) CACHE_LEAVE(c, lst);
    CACHE_LEAVE(c, store_write(&c->store, layer, slots, n, k_rows, v_rows, src_dtype, &c->err));
}

int pkv_store_read(pkv_cache *c, int32_t layer, const int64_t *slots, int32_t n, float *k_out, float *v_out) {
    CACHE_ENTER(c);
    int lst = slots_loading(c, slots, n);
    if (lst < 0) CACHE_LEAVE(c, lst);
    CACHE_LEAVE(c, store_read(&c->store, layer, slots, n, k_out, v_out, &c->err));
}

int pkv_store_arenas(pkv_cache *c, int32_t layer, void **k, void **v) {
    CACHE_ENTER(c);
    CACHE_LEAVE(c, store_arenas(&c->store, layer, k, v, &c->err));
}

/* ---- tiers ---- */

/* Tiers keep whole chains; a window cache's chains have ghosts (no KV). */
static int refuse_window_tier(pkv_cache *c) {
    if (c->cfg.window > 0)
        return cache_fail(c, PKV_ERR_MODE, "a sliding-window cache (window %d) takes no tiers", c->cfg.window);
    return PKV_OK;
}

int pkv_cache_add_host_tier(pkv_cache *c, int64_t capacity_blocks, uint32_t flags) {
    CACHE_ENTER(c);
    int wst = refuse_window_tier(c);
    if (wst < 0) CACHE_LEAVE(c, wst);
    if (!c->store.enabled) CACHE_LEAVE(c, tmeta_add(c, capacity_blocks, flags, &c->err));
    CACHE_LEAVE(c, tier_add(c, NULL, capacity_blocks, 1, flags, &c->err));
}

int pkv_cache_add_tier(pkv_cache *c, const pkv_tier_backend *backend, int64_t capacity_blocks, uint32_t flags) {
    if (!c) {
        if (backend && backend->close) backend->close(backend->ctx);
        return PKV_ERR_NULL;
    }
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !backend, "backend");
    int st = refuse_window_tier(c);
    if (st == PKV_OK) st = tier_add(c, backend, capacity_blocks, 0, flags, &c->err);
    if (st < 0 && backend->close) backend->close(backend->ctx); /* the cache took it over */
    CACHE_LEAVE(c, st);
}

int pkv_tier_blob_size(pkv_cache *c, size_t *out) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    if (!c->store.enabled) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_MODE, "metadata mode has no tiers"));
    *out = tier_blob_size(c);
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_tier_stats_get(pkv_cache *c, int32_t tier, pkv_tier_stats *user_out) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !user_out, "out");
    if (user_out->size < PKV_TIER_STATS_SIZE_1_0)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "out->size is %u: initialize with PKV_TIER_STATS_INIT",
                                  user_out->size));
    if (tier < 0 || tier >= c->tiers.n)
        CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "tier %d outside [0, %d)", tier, c->tiers.n));
    pkv_tier_stats full;
    memset(&full, 0, sizeof full);
    full.size = sizeof full;
    tier_stats(c, tier, &full);
    pkv__struct_export(user_out, &full, sizeof full);
    CACHE_LEAVE(c, PKV_OK);
}

/* ---- scheduler calls ---- */

static int prefix_peek_op(pkv_cache *c, uint64_t ns, const int32_t *tokens, int32_t n, const pkv_extra_keys *extra,
                          int32_t *cached_tokens, int32_t *pool_tokens) {
    if (!cached_tokens) return cache_fail(c, PKV_ERR_NULL, "cached_tokens is NULL");
    if (!c->prefix) return cache_fail(c, PKV_ERR_MODE, "prefix caching is off (PKV_FLAG_PREFIX_CACHE)");
    if (n < 0) return cache_fail(c, PKV_ERR_INVALID, "prompt length %d is negative", n);
    if (n > 0 && !tokens) return cache_fail(c, PKV_ERR_NULL, "tokens is NULL with n = %d", n);
    prefix_extras x;
    FORWARD_IF_ERROR(import_extras(c, extra, &x));
    if (c->cfg.window > 0) { /* the hit a lookup would make, every block of it in the pool */
        int32_t *ents = pkv_mem_alloc(&c->al, ((size_t)n / (size_t)c->pool.block_size + 1) * sizeof *ents);
        if (!ents) return cache_fail(c, PKV_ERR_NOMEM, "peek: no memory for a %d-token prompt's chain", n);
        int32_t m = prefix_match_entries(c->prefix, ns, &x, tokens, n, ents);
        *cached_tokens = cache_window_fit(c, ents, m, m * c->pool.block_size);
        if (pool_tokens) *pool_tokens = *cached_tokens;
        pkv_mem_free(&c->al, ents);
        return PKV_OK;
    }
    int32_t lead, m = prefix_peek(c->prefix, ns, &x, tokens, n, &lead);
    *cached_tokens = m * c->pool.block_size;
    if (pool_tokens) *pool_tokens = lead * c->pool.block_size;
    return PKV_OK;
}

int pkv_prefix_peek(pkv_cache *c, uint64_t ns, const int32_t *tokens, int32_t n, int32_t *cached_tokens,
                    int32_t *pool_tokens) {
    CACHE_ENTER(c);
    CACHE_LEAVE(c, prefix_peek_op(c, ns, tokens, n, NULL, cached_tokens, pool_tokens));
}

int pkv_prefix_peek_ex(pkv_cache *c, uint64_t ns, const int32_t *tokens, int32_t n, const pkv_extra_keys *extra,
                       int32_t *cached_tokens, int32_t *pool_tokens) {
    CACHE_ENTER(c);
    CACHE_LEAVE(c, prefix_peek_op(c, ns, tokens, n, extra, cached_tokens, pool_tokens));
}

int pkv_prefix_evict(pkv_cache *c, int32_t n, int32_t *evicted) {
    CACHE_ENTER(c);
    if (!c->prefix) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_MODE, "prefix caching is off (PKV_FLAG_PREFIX_CACHE)"));
    if (n < 0) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "n = %d is negative", n));
    int32_t k = 0;
    int st = tmeta_reserve(c, n < c->pool.num_evictable ? n : c->pool.num_evictable, 0);
    if (st < 0) CACHE_LEAVE(c, cache_fail(c, st, "evict: no memory for the transfer list"));
    for (; k < n; k++) {
        int32_t b = pool_evict_lru(&c->pool);
        if (b < 0) break;
        /* The block is free but its contents are intact until reused: offload now. */
        if (c->tiers.meta) tmeta_evicted(c, b);
        else if (c->tiers.n) tier_evicted(c, b);
        else prefix_forget(c->prefix, b);
    }
    if (evicted) *evicted = k;
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_prefix_reset(pkv_cache *c) {
    CACHE_ENTER(c);
    if (!c->prefix) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_MODE, "prefix caching is off (PKV_FLAG_PREFIX_CACHE)"));
    for (int32_t i = 0; i < c->seqs.seqs_cap; i++)
        if (c->seqs.seqs[i].live && c->seqs.seqs[i].nregistered)
            CACHE_LEAVE(c, cache_fail(c, PKV_ERR_STATE, "sequence record %d holds %d registered blocks", i,
                                      c->seqs.seqs[i].nregistered));
    int32_t ecap = prefix_ecap(c->prefix);
    for (int32_t e = 0; e < ecap; e++)
        if (prefix_entry_live(c->prefix, e) && prefix_entry_parent(c->prefix, e) < 0) {
            if (c->tiers.meta) tmeta_drop_tree(c, e);
            else tier_drop_tree(c, e);
        }
    CACHE_LEAVE(c, PKV_OK);
}

/* ---- KV events ---- */

int pkv_events_enable(pkv_cache *c, int32_t capacity) {
    CACHE_ENTER(c);
    if (!c->prefix) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_MODE, "prefix caching is off (PKV_FLAG_PREFIX_CACHE)"));
    if (capacity < 0) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "capacity %d is negative", capacity));
    int st = prefix_events_enable(c->prefix, &c->al, capacity);
    if (st < 0) CACHE_LEAVE(c, cache_fail(c, st, "no memory for %d events", capacity));
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_events_drain(pkv_cache *c, pkv_event *out, int32_t cap, int32_t *n, int64_t *dropped) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !n, "n");
    CACHE_NULL_IF(c, cap > 0 && !out, "out");
    if (cap < 0) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "cap %d is negative", cap));
    if (!c->prefix) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_MODE, "prefix caching is off (PKV_FLAG_PREFIX_CACHE)"));
    int st = prefix_events_drain(c->prefix, out, cap, n, dropped);
    if (st < 0) CACHE_LEAVE(c, cache_fail(c, st, "events are not enabled (pkv_events_enable)"));
    CACHE_LEAVE(c, PKV_OK);
}

/* ---- metadata-mode transfers and swap ---- */

int pkv_tier_transfers_drain(pkv_cache *c, pkv_tier_transfer *out, int32_t cap, int32_t *n) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !n, "n");
    CACHE_NULL_IF(c, cap > 0 && !out, "out");
    if (cap < 0) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_INVALID, "cap %d is negative", cap));
    CACHE_LEAVE(c, tmeta_drain(c, out, cap, n));
}

int pkv_seq_swap_out(pkv_cache *c, pkv_seq seq) {
    CACHE_ENTER(c);
    FORWARD_GROUPED(c, seq);
    pkv_seq_rec *r = live_seq(c, seq);
    if (!r) CACHE_LEAVE(c, PKV_ERR_NO_SEQ);
    int lst = cache_seq_loading(c, r, "swap out");
    if (lst < 0) CACHE_LEAVE(c, lst);
    CACHE_LEAVE(c, swap_out_op(c, r));
}

int pkv_seq_swap_in(pkv_cache *c, pkv_seq seq) {
    CACHE_ENTER(c);
    FORWARD_GROUPED(c, seq);
    pkv_seq_rec *r = live_seq(c, seq);
    if (!r) CACHE_LEAVE(c, PKV_ERR_NO_SEQ);
    CACHE_LEAVE(c, swap_in_op(c, r));
}

int pkv_seq_swapped(pkv_cache *c, pkv_seq seq, int32_t *out) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    pkv_seq_rec *r = live_seq(c, seq);
    if (r) *out = r->swapped;
    CACHE_LEAVE(c, r ? PKV_OK : PKV_ERR_NO_SEQ);
}

/* ---- asynchronous loads ---- */

int pkv_tier_async_start(pkv_cache *c, int32_t io_threads) {
    CACHE_ENTER(c);
    pkv_detail d = {{0}};
    int st = aio_start(c, io_threads, &d);
    if (st < 0) CACHE_LEAVE(c, cache_fail(c, st, "%s", d.text));
    CACHE_LEAVE(c, PKV_OK);
}

/* Tokens of r from its first loading block on (0: none loading). */
static int32_t loading_tokens(const pkv_cache *c, const pkv_seq_rec *r) {
    int32_t j = seq_loading_from(c, r);
    return j < 0 ? 0 : r->len - j * c->pool.block_size;
}

int pkv_prefix_lookup_async(pkv_cache *c, uint64_t ns, const int32_t *tokens, int32_t n,
                            const pkv_extra_keys *extra, pkv_seq *out, int32_t *ready_tokens,
                            int32_t *loading) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !out, "out");
    CACHE_NULL_IF(c, !ready_tokens, "ready_tokens");
    CACHE_NULL_IF(c, !loading, "loading_tokens");
    if (aio_inflight(c)) reap_loads(c, 0);
    int32_t cached;
    int st = prefix_lookup_op(c, ns, tokens, n, extra, out, &cached, c->aio != NULL, INT32_MAX);
    if (st < 0) CACHE_LEAVE(c, st);
    *loading = loading_tokens(c, seq_get(&c->seqs, *out));
    *ready_tokens = cached - *loading;
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_seq_load_poll(pkv_cache *c, pkv_seq seq, int32_t *loading, int32_t *length) {
    CACHE_ENTER(c);
    CACHE_NULL_IF(c, !loading, "loading_tokens");
    reap_loads(c, 0);
    pkv_seq_rec *r = live_seq(c, seq);
    if (!r) CACHE_LEAVE(c, PKV_ERR_NO_SEQ);
    *loading = loading_tokens(c, r);
    if (length) *length = r->len;
    if (!*loading) r->load_cut = 0; /* the length is reported */
    CACHE_LEAVE(c, PKV_OK);
}

int pkv_seq_load_wait(pkv_cache *c, pkv_seq seq, int32_t *length) {
    CACHE_ENTER(c);
    for (;;) {
        reap_loads(c, 0);
        pkv_seq_rec *r = live_seq(c, seq); /* another thread may free it while we wait */
        if (!r) CACHE_LEAVE(c, PKV_ERR_NO_SEQ);
        if (seq_loading_from(c, r) < 0) {
            if (length) *length = r->len;
            r->load_cut = 0;
            CACHE_LEAVE(c, PKV_OK);
        }
        if (c->thread_safe) { /* wait without holding the cache: other threads go on */
            cache_unlock(c);
            aio_wait(c, 10);
            cache_lock(c);
        } else {
            reap_loads(c, 1);
        }
    }
}
