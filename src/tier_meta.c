/* Tiers in metadata mode: the engine holds the bytes (GPU pool, pinned host
 * memory, SSD); a tier here is a set of slots, and every data movement the
 * placement decides is queued as a transfer for the engine to perform.
 *
 * Placement is tier.c's (offload of a cached block the pool reclaims, promotion
 * on lookup, demotion of a full tier's least recently used entry to the next
 * tier, drop from the last one with the entries that chain below it); only the
 * data path differs: where tier.c packs a blob and calls a backend, this file
 * takes a slot and queues OFFLOAD (block -> slot), LOAD (slot -> block) or
 * DEMOTE (slot -> slot of the next tier). The queue is ordered: a transfer is
 * queued after every transfer that empties the slot or block it writes, so an
 * engine that performs them in order never overwrites data still needed.
 *
 * No blob, no checksum: the bytes never pass through the library, and an
 * entry's identity is the index's, so a slot holds exactly the KV of its entry
 * as long as the engine performs the queue.
 *
 * Memory per stored block, besides the prefix index entry: LRU links (8 B per
 * entry id and tier), its slot (4 B per entry id and tier), and a bit per slot
 * (free or not) with a summary bit per 64 of them; the lowest free slot is
 * taken, found through the summary from a low-water mark (a stack of free slots
 * would cost 4 B per slot).
 *
 * Swap. Tier 0's slots also serve swapped-out sequences (swap.c): such a slot
 * is outside the LRU and counted in `swapped`; placement makes room among the
 * cached entries only, so swapped data is never evicted. */
#include <string.h>

#include "internal.h"

/* Bytes of one block of KV in the engine's memory (the config's geometry;
 * counted in the stats, 0 when the geometry is not a valid one). */
static int64_t block_bytes(const pkv_cache *c) {
    const pkv_config *g = &c->cfg;
    size_t row = pkv_row_bytes(g->kv_dtype, g->h_kv, g->d);
    if (g->v_separate) row += pkv_row_bytes(g->kv_dtype, g->h_kv, g->dv);
    return (int64_t)row * g->block_size * (g->num_layers > 0 ? g->num_layers : 0);
}

void tmeta_push(pkv_cache *c, int op, int tier, int32_t block, int64_t slot, int64_t dst_slot, int32_t e) {
    pkv_tiers *ts = &c->tiers;
    pkv_assert(ts->nxfer < ts->xfer_cap);
    if (ts->nxfer >= ts->xfer_cap) {
        ts->xfer_lost++;
        return;
    }
    pkv_tier_transfer *x = &ts->xfer[ts->nxfer++];
    memset(x, 0, sizeof *x);
    x->op = op;
    x->tier = tier;
    x->block = block;
    x->slot = slot;
    x->dst_slot = dst_slot;
    if (e >= 0) {
        uint64_t key[2];
        prefix_entry_key(c->prefix, e, key);
        memcpy(x->key, key, 16);
    }
}

int tmeta_reserve(pkv_cache *c, int64_t blocks, int64_t extra) {
    pkv_tiers *ts = &c->tiers;
    if (!ts->meta) return PKV_OK;
    int64_t need = (int64_t)ts->nxfer + blocks * (ts->n + 1) + extra;
    if (need <= ts->xfer_cap) return PKV_OK;
    if (need > INT32_MAX / 2) return PKV_ERR_NOMEM;
    int32_t cap = ts->xfer_cap;
    return pkv_mem_grow(&c->al, (void **)&ts->xfer, &cap, (int32_t)need, sizeof *ts->xfer) == PKV_OK
               ? (ts->xfer_cap = cap, PKV_OK)
               : PKV_ERR_NOMEM;
}

int tmeta_drain(pkv_cache *c, pkv_tier_transfer *out, int32_t cap, int32_t *n) {
    pkv_tiers *ts = &c->tiers;
    int32_t k = ts->nxfer < cap ? ts->nxfer : cap;
    if (k > 0) {
        memcpy(out, ts->xfer, (size_t)k * sizeof *out);
        memmove(ts->xfer, ts->xfer + k, (size_t)(ts->nxfer - k) * sizeof *out);
        ts->nxfer -= k;
    }
    *n = k;
    return PKV_OK;
}

/* ---- free slots: a bitmap and its summary ---- */

static int64_t slot_words(const pkv_tier *t) { return (t->capacity + 63) / 64; }

static void slot_give(pkv_tier *t, int64_t s) {
    int64_t w = s >> 6, nw = slot_words(t);
    pkv_assert(!tier_slot_free(t, s));
    t->free_bits[w] |= 1ull << (s & 63);
    t->free_bits[nw + (w >> 6)] |= 1ull << (w & 63);
    if ((w >> 6) < t->free_lo) t->free_lo = w >> 6;
    t->nfree++;
}

/* The lowest free slot, taken (nfree > 0). */
static int32_t slot_take(pkv_tier *t) {
    int64_t nw = slot_words(t), k = t->free_lo;
    uint64_t *sum = t->free_bits + nw;
    pkv_assert(t->nfree > 0);
    while (!sum[k]) k++;
    t->free_lo = k;
    int64_t w = k * 64 + __builtin_ctzll(sum[k]);
    int64_t s = w * 64 + __builtin_ctzll(t->free_bits[w]);
    t->free_bits[w] &= t->free_bits[w] - 1;
    if (!t->free_bits[w]) sum[k] &= ~(1ull << (w & 63));
    t->nfree--;
    return (int32_t)s;
}

/* Entry e leaves tier ti; its slot is free again. */
static void mt_remove(pkv_cache *c, int ti, int32_t e) {
    pkv_tier *t = &c->tiers.t[ti];
    slot_give(t, t->slot_of[e]);
    t->slot_of[e] = -1;
    tier_lru_unlink(t, e);
    prefix_set_tier(c->prefix, e, ti, 0);
}

static void mt_drop_tree(pkv_cache *c, int32_t e) { tier_drop_subtree(c, e, mt_remove); }

void tmeta_drop_tree(pkv_cache *c, int32_t e) { mt_drop_tree(c, e); }

static int mt_put(pkv_cache *c, int ti, int32_t e);

/* Tier ti's least recently used entry (not a pinned one) moves to the next
 * tier (a DEMOTE) or leaves. */
static void mt_evict_one(pkv_cache *c, int ti) {
    pkv_tier *t = &c->tiers.t[ti];
    int32_t x = tier_lru_victim(c, t);
    if (x < 0) return;
    t->evictions++;
    pkv_prefix *p = c->prefix;
    if (ti + 1 < c->tiers.n && !(prefix_tiers_of(p, x) & (2u << ti))) {
        int64_t src = t->slot_of[x];
        if (mt_put(c, ti + 1, x) == PKV_OK) {
            /* Queued after the transfers that emptied the destination slot. */
            tmeta_push(c, PKV_XFER_DEMOTE, ti, -1, src, c->tiers.t[ti + 1].slot_of[x], x);
            t->bytes_out += block_bytes(c);
        }
        if (!prefix_entry_live(p, x)) return; /* dropped with an ancestor to make room below */
    }
    mt_remove(c, ti, x);
    if (prefix_entry_block(p, x) < 0 && prefix_tiers_of(p, x) == 0) mt_drop_tree(c, x);
}

/* Entry e takes a slot of tier ti, evicting first when the tier is full. */
static int mt_put(pkv_cache *c, int ti, int32_t e) {
    pkv_tier *t = &c->tiers.t[ti];
    while (t->nfree == 0) {
        int64_t before = t->count;
        mt_evict_one(c, ti);
        if (t->count == before) return PKV_ERR_CAPACITY; /* only pinned entries and swap slots left */
    }
    if (!prefix_entry_live(c->prefix, e)) return PKV_ERR_NOT_FOUND;
    t->slot_of[e] = slot_take(t);
    tier_lru_push(t, e);
    prefix_set_tier(c->prefix, e, ti, 1);
    t->stores++;
    t->bytes_in += block_bytes(c);
    return PKV_OK;
}

void tmeta_evicted(pkv_cache *c, int32_t b) {
    pkv_prefix *p = c->prefix;
    int32_t e = prefix_entry_of_block(p, b);
    pkv_assert(e >= 0);
    uint8_t have = prefix_tiers_of(p, e);
    if (have) { /* a tier holds these bytes already: nothing to move */
        for (int ti = 0; ti < c->tiers.n; ti++)
            if (have & (1u << ti)) {
                tier_lru_unlink(&c->tiers.t[ti], e);
                tier_lru_push(&c->tiers.t[ti], e);
                break;
            }
        prefix_unplace(p, b);
        return;
    }
    c->tiers.pinned[1] = e;
    int st = mt_put(c, 0, e);
    c->tiers.pinned[1] = -1;
    if (st == PKV_OK) {
        tmeta_push(c, PKV_XFER_OFFLOAD, 0, b, c->tiers.t[0].slot_of[e], -1, e);
        prefix_unplace(p, b);
    } else if (prefix_entry_live(p, e)) {
        mt_drop_tree(c, e);
    }
}

int tmeta_promote(pkv_cache *c, int32_t e, int32_t (*take)(pkv_cache *), int32_t *block) {
    pkv_prefix *p = c->prefix;
    uint8_t have = prefix_tiers_of(p, e);
    int ti = 0;
    while (ti < c->tiers.n && !(have & (1u << ti))) ti++;
    if (ti == c->tiers.n) return 0;
    pkv_tier *t = &c->tiers.t[ti];
    t->hits++;
    t->bytes_out += block_bytes(c);
    tier_lru_unlink(t, e);
    tier_lru_push(t, e);
    c->tiers.pinned[0] = e;
    int32_t b = take(c); /* may queue an offload out of b: it comes before the load into b */
    c->tiers.pinned[0] = -1;
    tmeta_push(c, PKV_XFER_LOAD, ti, b, t->slot_of[e], -1, e);
    prefix_place(p, e, b);
    *block = b;
    return 1;
}

/* ---- swap slots of tier 0 ---- */

int64_t tmeta_swap_room(const pkv_cache *c) {
    if (!c->tiers.meta || c->tiers.n == 0) return 0;
    const pkv_tier *t = &c->tiers.t[0];
    return t->capacity - t->swapped; /* free slots, and those of cached entries (evictable) */
}

void tmeta_swap_take(pkv_cache *c, int32_t n, int32_t *slots) {
    pkv_tier *t = &c->tiers.t[0];
    while (t->nfree < n) {
        int64_t before = t->count;
        mt_evict_one(c, 0);
        if (t->count == before) break; /* cannot happen: the caller checked the room */
    }
    pkv_assert(t->nfree >= n);
    for (int32_t i = 0; i < n; i++) slots[i] = slot_take(t);
    t->swapped += n; /* not a store: stores count cached blocks (swap traffic is the caller's to count) */
}

void tmeta_swap_give(pkv_cache *c, int32_t slot) {
    pkv_tier *t = &c->tiers.t[0];
    slot_give(t, slot);
    t->swapped--;
}

/* ---- setup ---- */

int tmeta_add(pkv_cache *c, int64_t capacity_blocks, uint32_t flags, pkv_detail *d) {
    pkv_tiers *ts = &c->tiers;
    if (ts->n >= PKV_MAX_TIERS) return pkv__fail(d, PKV_ERR_INVALID, "at most %d tiers", PKV_MAX_TIERS);
    if (flags & PKV_TIER_WRITE_THROUGH)
        return pkv__fail(d, PKV_ERR_MODE, "write-through needs host storage: in metadata mode the engine writes");
    if (flags) return pkv__fail(d, PKV_ERR_INVALID, "unknown tier flags 0x%x", flags);
    if (!c->prefix) return pkv__fail(d, PKV_ERR_MODE, "tiers need prefix caching (PKV_FLAG_PREFIX_CACHE)");
    if (c->seqs.num_seqs || c->pool.used || c->pool.num_evictable)
        return pkv__fail(d, PKV_ERR_STATE, "tiers are added to a cache before it holds sequences or cached blocks");
    int32_t old = prefix_ecap(c->prefix);
    if (capacity_blocks < 1 || capacity_blocks > INT32_MAX / 2 - old)
        return pkv__fail(d, PKV_ERR_INVALID, "tier capacity %lld blocks outside [1, %d]", (long long)capacity_blocks,
                         INT32_MAX / 2 - old);
    int32_t ecap = old + (int32_t)capacity_blocks, n = ts->n;
    /* Everything that can fail, first: every tier's per-entry arrays, the new
     * free stack, and last the index's entries (the one step that changes the cache). */
    int st = PKV_OK;
    int32_t *arr[3 * PKV_MAX_TIERS] = {0};
    uint64_t *bits = NULL;
    int64_t nw = (capacity_blocks + 63) / 64, nsum = (nw + 63) / 64;
    pkv_tier_transfer *q = NULL;
    for (int i = 0; st == PKV_OK && i <= n; i++)
        for (int j = 0; j < 3; j++)
            if (!(arr[3 * i + j] = pkv_mem_alloc(&c->al, (size_t)ecap * sizeof(int32_t)))) st = PKV_ERR_NOMEM;
    if (st == PKV_OK && !(bits = pkv_mem_alloc(&c->al, (size_t)(nw + nsum) * sizeof *bits))) st = PKV_ERR_NOMEM;
    if (st == PKV_OK && !ts->xfer && !(q = pkv_mem_alloc(&c->al, 64 * sizeof *q))) st = PKV_ERR_NOMEM;
    if (st == PKV_OK) st = prefix_grow(c->prefix, &c->al, ecap);
    if (st != PKV_OK) {
        for (int i = 0; i < 3 * PKV_MAX_TIERS; i++) pkv_mem_free(&c->al, arr[i]);
        pkv_mem_free(&c->al, bits);
        pkv_mem_free(&c->al, q);
        return pkv__fail(d, st, "adding a tier: no memory for its index");
    }
    for (int i = 0; i <= n; i++) {
        pkv_tier *t = &ts->t[i];
        int32_t *pv = arr[3 * i], *nx = arr[3 * i + 1], *so = arr[3 * i + 2];
        for (int32_t e = 0; e < ecap; e++) pv[e] = nx[e] = so[e] = -1;
        if (i < n) {
            memcpy(pv, t->prev, (size_t)old * sizeof *pv);
            memcpy(nx, t->next, (size_t)old * sizeof *nx);
            memcpy(so, t->slot_of, (size_t)old * sizeof *so);
            pkv_mem_free(&c->al, t->prev);
            pkv_mem_free(&c->al, t->next);
            pkv_mem_free(&c->al, t->slot_of);
        }
        t->prev = pv;
        t->next = nx;
        t->slot_of = so;
    }
    pkv_tier *t = &ts->t[n];
    memset(&t->be, 0, sizeof t->be);
    t->capacity = capacity_blocks;
    t->count = t->swapped = 0;
    t->head = t->tail = -1;
    t->host = 1;
    /* every slot free: all bits of the words, the last one's up to capacity */
    for (int64_t w = 0; w < nw + nsum; w++) {
        int64_t ones = w < nw ? capacity_blocks - 64 * w : nw - 64 * (w - nw);
        bits[w] = ones >= 64 ? ~0ull : (1ull << ones) - 1;
    }
    t->free_bits = bits;
    t->nfree = capacity_blocks;
    t->free_lo = 0;
    if (q) {
        ts->xfer = q;
        ts->xfer_cap = 64;
    }
    ts->n++;
    ts->meta = 1;
    ts->pinned[0] = ts->pinned[1] = -1;
    return PKV_OK;
}

void tmeta_destroy(pkv_cache *c) {
    pkv_tiers *ts = &c->tiers;
    for (int i = 0; i < ts->n; i++) {
        pkv_mem_free(&c->al, ts->t[i].slot_of);
        pkv_mem_free(&c->al, ts->t[i].free_bits);
        ts->t[i].slot_of = NULL;
        ts->t[i].free_bits = NULL;
    }
    pkv_mem_free(&c->al, ts->xfer);
    ts->xfer = NULL;
    ts->nxfer = ts->xfer_cap = 0;
}

/* Slots: each entry a tier holds has one, the free stack the others, swap
 * slots the rest; no slot twice. */
int tmeta_check(pkv_cache *c, pkv_detail *d) {
    pkv_tiers *ts = &c->tiers;
    if (!ts->meta) return PKV_OK;
    if (ts->xfer_lost)
        return pkv__fail(d, PKV_ERR_CORRUPT, "%lld transfers were queued without room", (long long)ts->xfer_lost);
    int32_t ecap = prefix_ecap(c->prefix);
    for (int ti = 0; ti < ts->n; ti++) {
        pkv_tier *t = &ts->t[ti];
        uint8_t *seen = pkv_mem_calloc(&c->al, (size_t)t->capacity, 1);
        if (!seen) return PKV_ERR_NOMEM;
        int st = PKV_OK;
        int64_t held = 0;
        for (int32_t e = 0; e < ecap && st == PKV_OK; e++) {
            int in = prefix_entry_live(c->prefix, e) && (prefix_tiers_of(c->prefix, e) & (1u << ti));
            int32_t s = t->slot_of[e];
            if (!in && s != -1) st = pkv__fail(d, PKV_ERR_CORRUPT, "tier %d: entry %d not held has slot %d", ti, e, s);
            else if (in && (s < 0 || s >= t->capacity || seen[s]++))
                st = pkv__fail(d, PKV_ERR_CORRUPT, "tier %d: entry %d has slot %d (bad or shared)", ti, e, s);
            held += in;
        }
        int64_t nfree = 0, nw = slot_words(t);
        for (int64_t s = 0; s < t->capacity && st == PKV_OK; s++)
            if (tier_slot_free(t, s) && (nfree++, seen[s]++))
                st = pkv__fail(d, PKV_ERR_CORRUPT, "tier %d: free slot %lld in use", ti, (long long)s);
        for (int64_t w = 0; w < nw && st == PKV_OK; w++) {
            int sum = (int)((t->free_bits[nw + (w >> 6)] >> (w & 63)) & 1);
            if (sum != (t->free_bits[w] != 0) || (sum && (w >> 6) < t->free_lo) ||
                (w == nw - 1 && (t->capacity & 63) && (t->free_bits[w] >> (t->capacity & 63))))
                st = pkv__fail(d, PKV_ERR_CORRUPT, "tier %d: free-slot bitmap word %lld disagrees with its summary",
                               ti, (long long)w);
        }
        if (st == PKV_OK && nfree != t->nfree)
            st = pkv__fail(d, PKV_ERR_CORRUPT, "tier %d: %lld free slots marked, %lld counted", ti, (long long)nfree,
                           (long long)t->nfree);
        pkv_mem_free(&c->al, seen);
        if (st != PKV_OK) return st;
        if (held != t->count || t->count + t->nfree + t->swapped != t->capacity || (ti > 0 && t->swapped))
            return pkv__fail(d, PKV_ERR_CORRUPT, "tier %d: %lld entries (counted %lld), %lld free, %lld swapped, capacity %lld",
                             ti, (long long)t->count, (long long)held, (long long)t->nfree, (long long)t->swapped,
                             (long long)t->capacity);
    }
    return PKV_OK;
}
