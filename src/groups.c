/* KV groups: one sequence across several caches, one per group of layers
 * (a full-attention group and a sliding-window group of a hybrid model, or
 * DeepSeek V3.2's MLA cache beside its indexer-key cache). Each group is an
 * ordinary cache with its own geometry, dtype, block size, window and pool;
 * a group sequence holds one sequence in each, and every change goes through
 * here so the groups stay in step: an append prepares in every group (the
 * only step that can fail) before it commits in any, so it takes blocks in
 * all groups or in none. The member sequences are marked, and the per-group
 * calls that would change them alone are refused; the read-side calls
 * (exports, blocks, store, attention) work on each group's cache directly.
 *
 * Locking: a groups object whose caches are thread-safe has a lock of its
 * own, taken first, then each cache's in group order. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_GROUPS 8
#define GSEQ_GEN_MAX 0x7fffffffu

typedef struct grec {
    uint32_t gen;
    int32_t live, next_free;
    pkv_seq h[MAX_GROUPS];
} grec;

struct pkv_groups {
    int32_t n, thread_safe;
    pkv_allocator al; /* group 0's cache's: the object, its records, lookup scratch */
    pkv_cache *c[MAX_GROUPS];
    grec *recs;
    int32_t cap, free_head;
    pthread_mutex_t lock;
    pkv_detail err;
};

static int gfail(pkv_groups *g, int st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int gfail(pkv_groups *g, int st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err.text, sizeof g->err.text, fmt, ap);
    va_end(ap);
    return st;
}

/* A failure of group i's cache, with its detail. */
static int gfail_cache(pkv_groups *g, int32_t i, int st) {
    return gfail(g, st, "group %d: %s", (int)i, g->c[i]->err.text[0] ? g->c[i]->err.text : pkv_strerror(st));
}

static void enter(pkv_groups *g) {
    if (g->thread_safe) pthread_mutex_lock(&g->lock);
    for (int32_t i = 0; i < g->n; i++) {
        cache_lock(g->c[i]);
        g->c[i]->err.text[0] = 0;
    }
    g->err.text[0] = 0;
}

static int leave(pkv_groups *g, int st) {
    for (int32_t i = g->n - 1; i >= 0; i--) cache_unlock(g->c[i]);
    if (g->thread_safe) pthread_mutex_unlock(&g->lock);
    return st;
}

static pkv_seq ghandle(const pkv_groups *g, int32_t idx) { return ((pkv_seq)g->recs[idx].gen << 32) | idx; }

static grec *gget(pkv_groups *g, pkv_seq h) {
    if (h < 0) return NULL;
    int64_t idx = h & 0xffffffff;
    uint32_t gen = (uint32_t)(h >> 32);
    if (idx >= g->cap || !g->recs[idx].live || g->recs[idx].gen != gen) return NULL;
    return &g->recs[idx];
}

static grec *gseq(pkv_groups *g, pkv_seq h, int *st) {
    grec *r = gget(g, h);
    *st = r ? PKV_OK : gfail(g, PKV_ERR_NO_SEQ, "group sequence %lld is not live", (long long)h);
    return r;
}

/* A free record (growing the table), not yet taken. */
static int gslot_prepare(pkv_groups *g, int32_t *idx) {
    if (g->free_head < 0) {
        int32_t old = g->cap;
        if (old >= INT32_MAX / 2) return PKV_ERR_NOMEM;
        int32_t cap = old;
        if (pkv_mem_grow(&g->al, (void **)&g->recs, &cap, old ? 2 * old : 16, sizeof *g->recs) < 0)
            return PKV_ERR_NOMEM;
        memset(g->recs + old, 0, (size_t)(cap - old) * sizeof *g->recs);
        g->cap = cap;
        for (int32_t i = cap - 1; i >= old; i--) {
            g->recs[i].next_free = g->free_head;
            g->free_head = i;
        }
    }
    *idx = g->free_head;
    return PKV_OK;
}

static grec *gslot_commit(pkv_groups *g, int32_t idx) {
    grec *r = &g->recs[idx];
    g->free_head = r->next_free;
    r->gen++;
    r->live = 1;
    r->next_free = -1;
    return r;
}

static void gslot_release(pkv_groups *g, grec *r) {
    r->live = 0;
    if (r->gen >= GSEQ_GEN_MAX) return; /* exhausted: never reused */
    r->next_free = g->free_head;
    g->free_head = (int32_t)(r - g->recs);
}

static void mark(pkv_groups *g, grec *r, int on) {
    for (int32_t i = 0; i < g->n; i++) seq_get(&g->c[i]->seqs, r->h[i])->grouped = on;
}

/* Frees the member sequence of group i (unmarked first). */
static void member_free(pkv_groups *g, int32_t i, pkv_seq h) {
    pkv_seq_rec *r = seq_get(&g->c[i]->seqs, h);
    r->grouped = 0;
    swap_release(g->c[i], r);
    seq_retire(&g->c[i]->seqs, r);
}

/* ---- public ---- */

int pkv_groups_create(const pkv_config *const *cfgs, int32_t n, pkv_groups **out) {
    RETURN_IF(!out, PKV_ERR_NULL);
    *out = NULL;
    RETURN_IF(!cfgs, PKV_ERR_NULL);
    RETURN_IF(n < 1 || n > MAX_GROUPS, PKV_ERR_INVALID);
    for (int32_t i = 0; i < n; i++) RETURN_IF(!cfgs[i], PKV_ERR_NULL);
    /* The caches first: the object comes from group 0's allocator. */
    pkv_cache *c[MAX_GROUPS];
    int st = PKV_OK, ts = -1;
    int32_t made = 0;
    for (int32_t i = 0; i < n && st == PKV_OK; i++) {
        st = pkv_cache_create(cfgs[i], &c[i]);
        if (st == PKV_OK) {
            made = i + 1;
            const int t = (cfgs[i]->flags & PKV_FLAG_THREAD_SAFE) != 0;
            if (ts >= 0 && t != ts) st = PKV_ERR_INVALID; /* all thread-safe or none */
            ts = t;
        }
    }
    pkv_groups *g = st == PKV_OK ? pkv_mem_calloc(&c[0]->al, 1, sizeof *g) : NULL;
    if (!g) {
        for (int32_t i = 0; i < made; i++) pkv_cache_destroy(c[i]);
        return st == PKV_OK ? PKV_ERR_NOMEM : st;
    }
    g->al = c[0]->al;
    g->free_head = -1;
    g->n = n;
    memcpy(g->c, c, (size_t)n * sizeof *c);
    g->thread_safe = 0; /* set once its mutex exists: destroy destroys it */
    if (st == PKV_OK && ts == 1) {
        if (pthread_mutex_init(&g->lock, NULL) != 0) st = PKV_ERR_NOMEM;
        else g->thread_safe = 1;
    }
    if (st != PKV_OK) {
        pkv_groups_destroy(g);
        return st;
    }
    *out = g;
    return PKV_OK;
}

void pkv_groups_destroy(pkv_groups *g) {
    if (!g) return;
    pkv_allocator al = g->al;
    pkv_cache *c[MAX_GROUPS];
    int32_t n = g->n;
    memcpy(c, g->c, (size_t)n * sizeof *c);
    if (g->thread_safe) pthread_mutex_destroy(&g->lock);
    pkv_mem_free(&al, g->recs);
    pkv_mem_free(&al, g); /* before the caches: it came from group 0's allocator */
    for (int32_t i = 0; i < n; i++) pkv_cache_destroy(c[i]);
}

const char *pkv_groups_last_error(const pkv_groups *g) { return g ? g->err.text : ""; }

int pkv_groups_cache(pkv_groups *g, int32_t i, pkv_cache **out) {
    RETURN_IF(!g || !out, PKV_ERR_NULL);
    RETURN_IF(i < 0 || i >= g->n, PKV_ERR_INVALID);
    *out = g->c[i];
    return PKV_OK;
}

int pkv_groups_seq_create(pkv_groups *g, uint64_t ns, pkv_seq *out) {
    RETURN_IF(!g, PKV_ERR_NULL);
    enter(g);
    if (!out) return leave(g, gfail(g, PKV_ERR_NULL, "out is NULL"));
    int32_t gi, idx[MAX_GROUPS];
    int st = gslot_prepare(g, &gi);
    if (st < 0) return leave(g, gfail(g, st, "no memory for a group sequence record"));
    for (int32_t i = 0; i < g->n; i++)
        if ((st = seq_slot_prepare(&g->c[i]->seqs, &idx[i])) < 0)
            return leave(g, gfail(g, st, "group %d: no memory for a sequence record", (int)i));
    grec *r = gslot_commit(g, gi);
    for (int32_t i = 0; i < g->n; i++) r->h[i] = seq_handle(&g->c[i]->seqs, seq_slot_commit(&g->c[i]->seqs, idx[i], ns));
    mark(g, r, 1);
    *out = ghandle(g, gi);
    return leave(g, PKV_OK);
}

int pkv_groups_seq_handle(pkv_groups *g, pkv_seq seq, int32_t i, pkv_seq *out) {
    RETURN_IF(!g, PKV_ERR_NULL);
    enter(g);
    int st;
    grec *r = gseq(g, seq, &st);
    if (r && (i < 0 || i >= g->n)) st = gfail(g, PKV_ERR_INVALID, "group %d outside [0, %d)", (int)i, (int)g->n);
    else if (r && !out) st = gfail(g, PKV_ERR_NULL, "out is NULL");
    else if (r) *out = r->h[i];
    return leave(g, st);
}

int pkv_groups_length(pkv_groups *g, pkv_seq seq, int32_t *out) {
    RETURN_IF(!g, PKV_ERR_NULL);
    enter(g);
    int st;
    grec *r = gseq(g, seq, &st);
    if (r && !out) st = gfail(g, PKV_ERR_NULL, "out is NULL");
    else if (r) *out = seq_get(&g->c[0]->seqs, r->h[0])->len;
    return leave(g, st);
}

int pkv_groups_append(pkv_groups *g, pkv_seq seq, int32_t n, const int32_t *tokens, int64_t *const *slots,
                      pkv_block_copy *cow) {
    RETURN_IF(!g, PKV_ERR_NULL);
    enter(g);
    int st;
    grec *r = gseq(g, seq, &st);
    if (!r) return leave(g, st);
    append_plan pl[MAX_GROUPS];
    int32_t i = 0;
    for (; i < g->n; i++) {
        st = cache_append_prepare(g->c[i], r->h[i], n, tokens, slots ? slots[i] : NULL, cow ? &cow[i] : NULL, 0,
                                  &pl[i]);
        if (st < 0) break;
    }
    if (st < 0) { /* nothing was committed: every group is as it was */
        for (int32_t k = 0; k < i; k++) cache_append_abandon(g->c[k], &pl[k]);
        return leave(g, gfail_cache(g, i, st));
    }
    for (i = 0; i < g->n; i++) cache_append_commit(g->c[i], &pl[i]);
    return leave(g, PKV_OK);
}

int pkv_groups_blocks_needed(pkv_groups *g, pkv_seq seq, int32_t n, int32_t *per_group) {
    RETURN_IF(!g, PKV_ERR_NULL);
    enter(g);
    int st;
    grec *r = gseq(g, seq, &st);
    if (!r) return leave(g, st);
    if (!per_group) return leave(g, gfail(g, PKV_ERR_NULL, "per_group is NULL"));
    for (int32_t i = 0; i < g->n; i++) {
        pkv_cache *c = g->c[i];
        const pkv_seq_rec *x = seq_get(&c->seqs, r->h[i]);
        if (x->swapped || n < 0 || n > INT32_MAX - x->len)
            return leave(g, gfail(g, PKV_ERR_INVALID, "n = %d outside [0, %d]", n, INT32_MAX - x->len));
        per_group[i] = seq_blocks_for(&c->seqs, (int64_t)x->len + n) - x->nblocks + seq_needs_cow(&c->seqs, x, n);
    }
    return leave(g, PKV_OK);
}

int pkv_groups_truncate(pkv_groups *g, pkv_seq seq, int32_t new_len) {
    RETURN_IF(!g, PKV_ERR_NULL);
    enter(g);
    int st;
    grec *r = gseq(g, seq, &st);
    if (!r) return leave(g, st);
    for (int32_t i = 0; i < g->n; i++)
        if ((st = cache_truncate_check(g->c[i], r->h[i], new_len)) < 0) return leave(g, gfail_cache(g, i, st));
    for (int32_t i = 0; i < g->n; i++) cache_truncate_commit(g->c[i], r->h[i], new_len);
    return leave(g, PKV_OK);
}

int pkv_groups_fork(pkv_groups *g, pkv_seq parent, pkv_seq *child) {
    RETURN_IF(!g, PKV_ERR_NULL);
    enter(g);
    int st;
    grec *r = gseq(g, parent, &st);
    if (!r) return leave(g, st);
    if (!child) return leave(g, gfail(g, PKV_ERR_NULL, "child is NULL"));
    int32_t gi, idx[MAX_GROUPS];
    const int32_t pidx = (int32_t)(r - g->recs);
    if ((st = gslot_prepare(g, &gi)) < 0) return leave(g, gfail(g, st, "no memory for a group sequence record"));
    r = &g->recs[pidx]; /* the table may have moved */
    for (int32_t i = 0; i < g->n; i++)
        if ((st = cache_fork_prepare(g->c[i], r->h[i], &idx[i])) < 0) return leave(g, gfail_cache(g, i, st));
    grec *k = gslot_commit(g, gi);
    r = &g->recs[pidx];
    for (int32_t i = 0; i < g->n; i++) k->h[i] = cache_fork_commit(g->c[i], r->h[i], idx[i]);
    mark(g, k, 1);
    *child = ghandle(g, gi);
    return leave(g, PKV_OK);
}

int pkv_groups_free(pkv_groups *g, pkv_seq seq) {
    RETURN_IF(!g, PKV_ERR_NULL);
    enter(g);
    int st;
    grec *r = gseq(g, seq, &st);
    if (!r) return leave(g, st);
    for (int32_t i = 0; i < g->n; i++) member_free(g, i, r->h[i]);
    gslot_release(g, r);
    return leave(g, PKV_OK);
}

/* The hit of a group sequence: the shortest of the full groups' hits, then
 * lowered until every window group can serve it (a window group's hits are
 * not prefix-closed: a shorter length needs other blocks of its window). The
 * window groups' chains are walked once, without side effects, before any
 * group changes; ents[i] (NULL for other groups) are freed by the caller. */
static int window_hit(pkv_groups *g, uint64_t ns, const int32_t *tokens, int32_t n, int32_t *ents[], int32_t *m) {
    int32_t chain[MAX_GROUPS];
    for (int32_t i = 0; i < g->n; i++) {
        pkv_cache *c = g->c[i];
        if (!c->prefix || c->cfg.window <= 0) continue;
        ents[i] = pkv_mem_alloc(&g->al, ((size_t)n / (size_t)c->pool.block_size + 1) * sizeof *ents[i]);
        if (!ents[i]) return gfail(g, PKV_ERR_NOMEM, "group %d: no memory for a %d-token prompt's chain", (int)i, n);
        chain[i] = prefix_match_entries(c->prefix, ns, NULL, tokens, n, ents[i]);
    }
    for (int changed = 1; changed;) {
        changed = 0;
        for (int32_t i = 0; i < g->n; i++) {
            if (!ents[i]) continue;
            int32_t f = cache_window_fit(g->c[i], ents[i], chain[i], *m);
            if (f < *m) {
                *m = f;
                changed = 1;
            }
        }
    }
    return PKV_OK;
}

/* Group i's member for a lookup whose hit is at most limit tokens (a window
 * group's is exactly that when window_hit chose it). */
static int member_lookup(pkv_groups *g, int32_t i, uint64_t ns, const int32_t *tokens, int32_t n, int32_t limit,
                         pkv_seq *h, int32_t *got) {
    pkv_cache *c = g->c[i];
    int st;
    *got = 0;
    if (c->prefix) {
        st = cache_lookup(c, ns, tokens, n, limit, h, got);
    } else {
        int32_t idx;
        st = seq_slot_prepare(&c->seqs, &idx);
        if (st == PKV_OK) *h = seq_handle(&c->seqs, seq_slot_commit(&c->seqs, idx, ns));
        else cache_fail(c, st, "lookup: no memory for a sequence record");
    }
    return st < 0 ? gfail_cache(g, i, st) : PKV_OK;
}

int pkv_groups_lookup(pkv_groups *g, uint64_t ns, const int32_t *tokens, int32_t n, pkv_seq *out, int32_t *cached) {
    RETURN_IF(!g, PKV_ERR_NULL);
    enter(g);
    if (!out || !cached) return leave(g, gfail(g, PKV_ERR_NULL, "%s is NULL", out ? "cached_tokens" : "out"));
    if (n < 0) return leave(g, gfail(g, PKV_ERR_INVALID, "prompt length %d is negative", n));
    if (n > 0 && !tokens) return leave(g, gfail(g, PKV_ERR_NULL, "tokens is NULL with n = %d", n));
    int32_t gi;
    int st = gslot_prepare(g, &gi);
    if (st < 0) return leave(g, gfail(g, st, "no memory for a group sequence record"));
    /* 1. Full groups with tiers look up first (what they promote is known only
     *    then); the other full groups' hits are known from a peek, and a group
     *    without prefix caching hits 0. */
    pkv_seq h[MAX_GROUPS];
    int32_t m = n, *ents[MAX_GROUPS] = {0}, made[MAX_GROUPS] = {0};
    for (int32_t i = 0; st == PKV_OK && i < g->n; i++) {
        pkv_cache *c = g->c[i];
        int32_t got = 0;
        if (!c->prefix) got = 0;
        else if (c->cfg.window > 0) continue;
        else if (c->tiers.n == 0) got = prefix_peek(c->prefix, ns, NULL, tokens, n, NULL) * c->pool.block_size;
        else if ((st = member_lookup(g, i, ns, tokens, n, n, &h[i], &got)) == PKV_OK) made[i] = 1;
        if (got < m) m = got;
    }
    /* 2. Window groups lower m until each can serve it. 3. The other members. */
    if (st == PKV_OK) st = window_hit(g, ns, tokens, n, ents, &m);
    for (int32_t i = 0; st == PKV_OK && i < g->n; i++) {
        int32_t got;
        if (!made[i] && (st = member_lookup(g, i, ns, tokens, n, m, &h[i], &got)) == PKV_OK) made[i] = 1;
    }
    for (int32_t k = 0; k < g->n; k++) pkv_mem_free(&g->al, ents[k]);
    if (st < 0) { /* no group sequence: the members made go (promoted blocks stay cached) */
        for (int32_t k = 0; k < g->n; k++)
            if (made[k]) member_free(g, k, h[k]);
        return leave(g, st);
    }
    /* Full members are cut to the group sequence's hit (never refused); window
     * members have it already. */
    for (int32_t i = 0; i < g->n; i++) {
        const pkv_seq_rec *x = seq_get(&g->c[i]->seqs, h[i]);
        pkv_assert(x->len >= m);
        if (x->len > m) {
            int tst = cache_truncate_check(g->c[i], h[i], m);
            pkv_assert(tst == PKV_OK);
            (void)tst;
            cache_truncate_commit(g->c[i], h[i], m);
        }
    }
    grec *r = gslot_commit(g, gi);
    memcpy(r->h, h, (size_t)g->n * sizeof *h);
    mark(g, r, 1);
    *out = ghandle(g, gi);
    *cached = m;
    return leave(g, PKV_OK);
}

int pkv_groups_blocks_for_bytes(const pkv_config *const *cfgs, int32_t n, uint64_t bytes, int32_t seq_tokens,
                                int32_t *num_blocks) {
    RETURN_IF(!cfgs || !num_blocks, PKV_ERR_NULL);
    RETURN_IF(n < 1 || n > MAX_GROUPS || seq_tokens < 1, PKV_ERR_INVALID);
    uint64_t need[MAX_GROUPS], per_seq = 0;
    for (int32_t i = 0; i < n; i++) {
        pkv_config cfg;
        uint64_t block;
        FORWARD_IF_ERROR(cache_block_bytes(cfgs[i], &cfg, &block));
        RETURN_IF(cfg.window < 0, PKV_ERR_INVALID);
        const uint64_t bs = (uint64_t)cfg.block_size;
        need[i] = ((uint64_t)seq_tokens + bs - 1) / bs;
        /* a window group holds the blocks of its window and the one being filled */
        if (cfg.window > 0 && ((uint64_t)cfg.window + bs - 1) / bs + 1 < need[i])
            need[i] = ((uint64_t)cfg.window + bs - 1) / bs + 1;
        RETURN_IF(block > UINT64_MAX / need[i] || per_seq > UINT64_MAX - block * need[i], PKV_ERR_INVALID);
        per_seq += block * need[i];
    }
    for (int32_t i = 0; i < n; i++) {
        /* bytes * need / per_seq without overflow: long double holds 64-bit integers exactly */
        const long double nb = (long double)bytes * (long double)need[i] / (long double)per_seq;
        RETURN_IF(nb < 1.0L || nb > (long double)INT32_MAX, PKV_ERR_INVALID);
    }
    for (int32_t i = 0; i < n; i++)
        num_blocks[i] = (int32_t)((long double)bytes * (long double)need[i] / (long double)per_seq);
    return PKV_OK;
}
