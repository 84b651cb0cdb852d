/* A canonical dump of a cache's whole logical state, for tests: two caches (or
 * one cache at two moments) whose dumps are byte-for-byte equal behave the same
 * from then on. The fault-injection test compares the dump before and after a
 * failed call; it must be unchanged.
 *
 * What is in it: the configuration (without the allocator, whose opaque pointer
 * is the test's), the pool arrays (refcounts, states, cached marks, the free
 * stack in order, the LRU list in order) and counters, the sequence records
 * that are live (index, generation, lengths, blocks, the token ids they
 * store, registered blocks, last-append range, namespace, extra keys), the generations of recycled record
 * slots and the order in which they will be reused, the cache counters, the
 * host arenas' bytes, and the prefix index (prefix_dump in prefix.c).
 *
 * What is not: capacities of growable arrays and never-used record slots (a
 * failed call may have grown a table before failing; that changes no behaviour),
 * and the last-error text (a failed call sets it by design). */
#include <string.h>

#include "internal.h"

typedef struct dump_w {
    uint8_t *buf;
    size_t cap, len;
} dump_w;

static void put(dump_w *w, const void *p, size_t n) {
    if (n && w->len <= w->cap && n <= w->cap - w->len) memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void put_i32(dump_w *w, int32_t v) { put(w, &v, sizeof v); }
static void put_i64(dump_w *w, int64_t v) { put(w, &v, sizeof v); }
static void put_tag(dump_w *w, const char *tag) { put(w, tag, strlen(tag)); }

static void dump_config(dump_w *w, const pkv_config *cfg) {
    pkv_config k = *cfg;
    memset(&k.allocator, 0, sizeof k.allocator);
    /* Field by field: the struct's padding bytes are not state. */
    put_i32(w, k.num_blocks);
    put_i32(w, k.block_size);
    put_i32(w, (int32_t)k.flags);
    put_i32(w, k.storage);
    put_i32(w, k.num_layers);
    put_i32(w, k.h_kv);
    put_i32(w, k.d);
    put_i32(w, k.dv);
    put_i32(w, k.v_separate);
    put_i32(w, k.kv_dtype);
    put_i32(w, k.hash_key_set);
    put(w, k.hash_key, sizeof k.hash_key);
}

static void dump_pool(dump_w *w, const pkv_pool *p) {
    size_t n = (size_t)p->num_blocks;
    put_tag(w, "pool");
    put_i32(w, p->num_blocks);
    put_i32(w, p->block_size);
    put(w, p->refcount, n * sizeof *p->refcount);
    put(w, p->state, n);
    put(w, p->cached, n);
    put_i32(w, p->free_top);
    put(w, p->free_stack, (size_t)p->free_top * sizeof *p->free_stack);
    put_i32(w, p->num_evictable);
    int32_t steps = 0;
    for (int32_t b = p->lru_head; b >= 0 && b < p->num_blocks && steps <= p->num_blocks;
         b = p->lru_next[b], steps++)
        put_i32(w, b);
    put_i32(w, -1);
    if (p->lru_prev) put(w, p->lru_prev, n * sizeof *p->lru_prev);
    if (p->lru_next) put(w, p->lru_next, n * sizeof *p->lru_next);
    put_i32(w, p->lru_head);
    put_i32(w, p->lru_tail);
    put_i32(w, p->used);
    put_i32(w, p->shared);
    put_i32(w, p->peak_used);
    put_i64(w, p->evictions);
}

static void dump_seqs(dump_w *w, const pkv_cache *c) {
    put_tag(w, "seqs");
    const pkv_seqtab *t = &c->seqs;
    put_i32(w, t->num_seqs);
    put_i64(w, t->tokens);
    put_i64(w, c->cow_copies);
    for (int32_t i = 0; i < t->seqs_cap; i++) {
        const pkv_seq_rec *r = &t->seqs[i];
        if (!r->live) {
            /* A recycled slot: its generation decides its next handle. */
            if (r->gen) {
                put_i32(w, i);
                put_i32(w, (int32_t)r->gen);
            }
            continue;
        }
        put_i32(w, i);
        put_i32(w, (int32_t)r->gen);
        put_i32(w, r->len);
        put_i32(w, r->nblocks);
        put(w, r->blocks, (size_t)r->nblocks * sizeof *r->blocks);
        put_i32(w, r->ntokens);
        put_i32(w, r->tok_base);
        put(w, r->tokens, (size_t)(r->ntokens - r->tok_base) * sizeof *r->tokens);
        put_i32(w, r->nregistered);
        put_i32(w, r->last_start);
        put_i32(w, r->last_n);
        put_i32(w, r->lookahead);
        put_i64(w, (int64_t)r->ns);
        put_i64(w, (int64_t)r->adapter);
        put_i32(w, r->nmm);
        put(w, r->mm, (size_t)r->nmm * sizeof *r->mm);
    }
    /* Reuse order: recycled slots as listed; never-used slots follow in index
     * order, so only where they start matters (seqs_cap when none exist yet). */
    put_tag(w, "free");
    int32_t fresh = t->seqs_cap, steps = 0;
    for (int32_t i = t->seq_free_head; i >= 0 && i < t->seqs_cap && steps <= t->seqs_cap;
         i = t->seqs[i].next_free, steps++) {
        if (t->seqs[i].gen == 0) {
            fresh = i;
            break;
        }
        put_i32(w, i);
    }
    put_i32(w, -1);
    put_i32(w, fresh);
}

static void dump_store(dump_w *w, const pkv_cache *c) {
    const pkv_store *s = &c->store;
    put_tag(w, "store");
    put_i32(w, s->enabled);
    if (!s->enabled) return;
    size_t slots = (size_t)c->cfg.num_blocks * (size_t)c->cfg.block_size;
    for (int32_t l = 0; l < c->cfg.num_layers; l++) {
        put(w, s->k[l], slots * s->k_row);
        if (s->v_row) put(w, s->v[l], slots * s->v_row);
    }
}

static void put_cb(void *w, const void *p, size_t n) { put(w, p, n); }

size_t cache_dump(pkv_cache *c, void *buf, size_t cap) {
    dump_w w = {buf, buf ? cap : 0, 0};
    if (!c) return 0;
    cache_lock(c);
    put_tag(&w, "pkvdump1");
    dump_config(&w, &c->cfg);
    dump_pool(&w, &c->pool);
    dump_seqs(&w, c);
    dump_store(&w, c);
    put_tag(&w, "prefix");
    prefix_dump(c->prefix, put_cb, &w);
    cache_unlock(c);
    return w.len;
}
