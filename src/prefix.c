/* The prefix cache: block keys, the index, registration with deduplication,
 * lookup of a prompt's longest cached prefix, and the eviction hook.
 *
 * Key. Block j of a sequence has the key
 *     K_j = SipHash-2-4-128(secret, tokens of block j || ns || K_{j-1}),  K_{-1} = 0,
 * (siphash.c). The tokens come first so that the token words of several
 * blocks can be absorbed in parallel lanes; only the 24-byte tail, which holds
 * the parent key, is chained. The secret is drawn per cache from the OS unless
 * the config gives one.
 *
 * Identity. A key only finds candidates. A cached block also stores its token
 * ids, its namespace and its parent block id, and a hit requires all three to
 * match: the parent block is itself the unique cached block of the parent's
 * identity, so by induction a hit means "the same tokens from position 0, in
 * the same namespace" and a hash collision can never hand out another
 * prompt's KV (tests build with PKV_WEAK_HASH=8 to prove it).
 *
 * Index. Open addressing with linear probing and backward-shift deletion, at
 * most half full: it holds at most num_blocks entries and its table has at
 * least 2 * num_blocks slots, all allocated at creation, so registration and
 * lookup never allocate. Each slot keeps the key's low word as a tag so that
 * probing touches the per-block arrays only on a likely hit.
 *
 * Lookup walks the prompt block by block and stops at the first miss. Below a
 * parent with few children (child_scan) it compares the children's tokens
 * directly: the keys of cached blocks are stored, so nothing needs hashing;
 * elsewhere (the first block, popular parents) it hashes and probes.
 *
 * Eviction. The pool reclaims the least recently released evictable block
 * (sequences release their blocks last first, so a chain is reclaimed from its
 * deepest block) and the cache layer calls prefix_forget. A block's cached
 * descendants would be unreachable without it, and their parent id would soon
 * name an unrelated block, so they are dropped from the index at once, leaf
 * first: an evictable one goes to the free list (counted in evictions), a used
 * one simply stops being cached (not an eviction: its holders keep it). This happens through the public API when forked sequences
 * share a block that one of them registered after deduplicating its parent:
 * the other keeps holding the block but not that parent. */
#include <string.h>


#include "internal.h"

typedef struct prefix_slot {
    uint64_t tag;  /* low word of the key */
    int32_t block; /* -1: empty */
    int32_t pad;
} prefix_slot;

struct pkv_prefix {
    pkv_pool *pool;
    uint8_t secret[16];
    uint64_t k[2];
    int32_t bs, nb;
    /* Per block, meaningful while pool.cached[b] is set. */
    uint64_t *key;    /* [2 * nb] low, high word */
    uint64_t *ns;     /* [nb] */
    int32_t *parent;  /* [nb] parent block, -1 for a chain's first block */
    int32_t *child;   /* [nb] first cached child, -1 none */
    int32_t *sib_next, *sib_prev; /* [nb] links among the children of one parent */
    int32_t *nchild;  /* [nb] length of the child list */
    int32_t child_scan; /* a parent with at most this many children is searched by its list */
    int32_t *toks;    /* [nb * bs] token ids */
    prefix_slot *tab; /* [mask + 1] */
    size_t mask;
    int shift;
    int32_t count;
    /* orphans: cached descendants dropped with a reclaimed block; orphan_frees:
     * those of them that were evictable (they count as evictions) */
    int64_t queries, query_tokens, hit_tokens, dedups, registrations, orphans, orphan_frees, collisions;
};

/* ---- keys ---- */

/* PKV_WEAK_HASH=b keeps b bits of every block key (a test build in which keys
 * collide everywhere; correctness must then rest on the identity checks). */
static inline void key_weaken(uint64_t k[2]) {
#if defined(PKV_WEAK_HASH)
#if PKV_WEAK_HASH < 1 || PKV_WEAK_HASH > 63
#error "PKV_WEAK_HASH must be in 1..63"
#endif
    k[0] &= (1ull << PKV_WEAK_HASH) - 1;
    k[1] = 0;
#else
    (void)k;
#endif
}

static inline void key_finish(const pkv_prefix *p, sip_state *st, const int32_t *toks, uint64_t ns,
                              const uint64_t parent[2], uint64_t out[2]) {
    sip_finish_block(st, toks, p->bs, ns, parent, out);
    key_weaken(out);
}

/* The 16 bytes as two little-endian words, on every host. */
static inline uint64_t le64(const uint8_t *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* One block's key from bytes (tests compare it with pkv_siphash128 over the
 * message written out). */
void prefix_block_key(const uint8_t secret[16], const int32_t *toks, int32_t bs, uint64_t ns,
                      const uint8_t parent[16], uint8_t out[16]) {
    uint64_t k[2] = {le64(secret), le64(secret + 8)}, pk[2] = {le64(parent), le64(parent + 8)}, o[2];
    sip_state st;
    sip_absorb_blocks(k, toks, bs, 1, &st);
    sip_finish_block(&st, toks, bs, ns, pk, o);
    key_weaken(o);
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(o[0] >> (8 * i));
        out[8 + i] = (uint8_t)(o[1] >> (8 * i));
    }
}

static inline void key_to_bytes(const uint64_t k[2], uint8_t out[16]) { memcpy(out, k, 16); }
static inline void key_from_bytes(const uint8_t in[16], uint64_t k[2]) { memcpy(k, in, 16); }

/* ---- index ---- */

static inline size_t home_slot(const pkv_prefix *p, uint64_t tag) {
    /* Fibonacci hashing spreads even a weakened 8-bit tag over the table. */
    return (size_t)((tag * 0x9e3779b97f4a7c15ull) >> p->shift) & p->mask;
}

static inline const int32_t *block_toks(const pkv_prefix *p, int32_t b) { return p->toks + (size_t)b * (size_t)p->bs; }

/* The cached block of identity (key, parent, ns, toks), or -1. check_high = 0:
 * only key[0] is known (lookup); the identity decides alone. */
static int32_t index_find(pkv_prefix *p, const uint64_t key[2], int32_t parent, uint64_t ns, const int32_t *toks,
                          int count_collisions, int check_high) {
    size_t bytes = (size_t)p->bs * sizeof *toks;
    for (size_t i = home_slot(p, key[0]);; i = (i + 1) & p->mask) {
        const prefix_slot *s = &p->tab[i];
        if (s->block < 0) return -1;
        if (s->tag != key[0]) continue;
        int32_t b = s->block;
        if ((!check_high || p->key[2 * b + 1] == key[1]) && p->parent[b] == parent && p->ns[b] == ns &&
            memcmp(block_toks(p, b), toks, bytes) == 0)
            return b;
        if (count_collisions) p->collisions++;
    }
}

static void index_insert(pkv_prefix *p, int32_t b, const uint64_t key[2], int32_t parent, uint64_t ns,
                         const int32_t *toks) {
    size_t i = home_slot(p, key[0]);
    while (p->tab[i].block >= 0) i = (i + 1) & p->mask;
    p->tab[i].tag = key[0];
    p->tab[i].block = b;
    p->key[2 * b] = key[0];
    p->key[2 * b + 1] = key[1];
    p->ns[b] = ns;
    p->parent[b] = parent;
    p->child[b] = -1;
    p->nchild[b] = 0;
    p->sib_prev[b] = -1;
    p->sib_next[b] = -1;
    if (parent >= 0) {
        p->sib_next[b] = p->child[parent];
        if (p->child[parent] >= 0) p->sib_prev[p->child[parent]] = b;
        p->child[parent] = b;
        p->nchild[parent]++;
    }
    memcpy(p->toks + (size_t)b * (size_t)p->bs, toks, (size_t)p->bs * sizeof *toks);
    p->count++;
}

/* Removes b's slot (backward-shift deletion keeps every probe run unbroken)
 * and unlinks b from its parent's children. b's own children keep parent = b. */
static void index_remove(pkv_prefix *p, int32_t b) {
    size_t i = home_slot(p, p->key[2 * b]);
    while (p->tab[i].block != b) i = (i + 1) & p->mask;
    for (size_t j = i;;) {
        j = (j + 1) & p->mask;
        if (p->tab[j].block < 0) break;
        size_t h = home_slot(p, p->tab[j].tag);
        /* The entry at j may fill the hole at i unless its home lies in (i, j]. */
        int stays = (i <= j) ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            p->tab[i] = p->tab[j];
            i = j;
        }
    }
    p->tab[i].block = -1;
    int32_t par = p->parent[b], pr = p->sib_prev[b], nx = p->sib_next[b];
    if (pr >= 0) p->sib_next[pr] = nx;
    else if (par >= 0) p->child[par] = nx;
    if (nx >= 0) p->sib_prev[nx] = pr;
    if (par >= 0) p->nchild[par]--;
    p->sib_prev[b] = p->sib_next[b] = -1;
    p->count--;
}

void prefix_forget(pkv_prefix *p, int32_t b) {
    index_remove(p, b);
    int32_t x = b;
    for (;;) {
        if (p->child[x] >= 0) {
            x = p->child[x];
            continue;
        }
        if (x == b) break;
        int32_t up = p->parent[x];
        index_remove(p, x);
        p->orphan_frees += pool_uncache(p->pool, x);
        p->orphans++;
        x = up;
    }
    p->child[b] = -1;
    p->nchild[b] = 0;
}

/* ---- creation ---- */

static void prefix_free(const pkv_allocator *al, pkv_prefix *p) {
    if (!p) return;
    pkv_mem_free(al, p->key);
    pkv_mem_free(al, p->ns);
    pkv_mem_free(al, p->parent);
    pkv_mem_free(al, p->child);
    pkv_mem_free(al, p->sib_next);
    pkv_mem_free(al, p->sib_prev);
    pkv_mem_free(al, p->nchild);
    pkv_mem_free(al, p->toks);
    pkv_mem_free(al, p->tab);
    pkv_mem_free(al, p);
}

int prefix_create(const pkv_allocator *al, pkv_pool *pool, const uint8_t secret[16], pkv_prefix **out) {
    *out = NULL;
    pkv_prefix *p = pkv_mem_calloc(al, 1, sizeof *p);
    RETURN_IF(!p, PKV_ERR_NOMEM);
    size_t nb = (size_t)pool->num_blocks;
    p->pool = pool;
    p->nb = pool->num_blocks;
    p->bs = pool->block_size;
    size_t cap = 16;
    int lg = 4;
    while (cap < 2 * nb) {
        cap *= 2;
        lg++;
    }
    p->mask = cap - 1;
    p->shift = 64 - lg;
    p->key = pkv_mem_calloc(al, nb, 2 * sizeof(uint64_t));
    p->ns = pkv_mem_calloc(al, nb, sizeof(uint64_t));
    p->parent = pkv_mem_calloc(al, nb, sizeof(int32_t));
    p->child = pkv_mem_calloc(al, nb, sizeof(int32_t));
    p->sib_next = pkv_mem_calloc(al, nb, sizeof(int32_t));
    p->sib_prev = pkv_mem_calloc(al, nb, sizeof(int32_t));
    p->nchild = pkv_mem_calloc(al, nb, sizeof(int32_t));
    p->toks = pkv_mem_calloc(al, nb, (size_t)p->bs * sizeof(int32_t));
    p->tab = pkv_mem_calloc(al, cap, sizeof(prefix_slot));
    if (!p->key || !p->ns || !p->parent || !p->child || !p->sib_next || !p->sib_prev || !p->nchild || !p->toks ||
        !p->tab) {
        prefix_free(al, p);
        return PKV_ERR_NOMEM;
    }
    memcpy(p->secret, secret, 16);
    for (size_t i = 0; i < cap; i++) p->tab[i].block = -1;
    for (size_t b = 0; b < nb; b++) p->parent[b] = p->child[b] = p->sib_next[b] = p->sib_prev[b] = -1;
    p->child_scan = PREFIX_CHILD_SCAN;
    p->k[0] = le64(p->secret);
    p->k[1] = le64(p->secret + 8);
    *out = p;
    return PKV_OK;
}

void prefix_destroy(pkv_prefix *p, const pkv_allocator *al) { prefix_free(al, p); }

void prefix_get_secret(const pkv_prefix *p, uint8_t out[16]) { memcpy(out, p->secret, 16); }

int64_t prefix_get_collisions(const pkv_prefix *p) { return p->collisions; }

void prefix_child_scan(pkv_prefix *p, int32_t n) { p->child_scan = n; }

/* ---- registration ---- */

/* Registers r's full blocks with known tokens from r->nregistered on; r->keys
 * must hold room for them (reserved by the caller, so this cannot fail).
 * written_len < 0: every block's KV is written and a duplicate is deduplicated.
 * Otherwise only blocks inside [0, written_len) are (their slots were handed
 * out by an earlier append); a block filled after that whose identity is
 * already cached ends the registration, to be deduplicated by a later call
 * once its KV is written. */
void prefix_register_seq(pkv_prefix *p, pkv_seqtab *t, pkv_seq_rec *r, int32_t written_len,
                         int32_t *registered, int32_t *deduped) {
    int32_t bs = p->bs, full = r->ntokens / bs, j = r->nregistered, reg = 0, dd = 0;
    uint64_t pk[2] = {0, 0};
    int32_t pb = -1;
    if (j > 0) {
        key_from_bytes(r->keys[j - 1], pk);
        pb = r->blocks[j - 1];
    }
    /* As in lookup: below a parent with few children its child list decides
     * (a duplicate is found there with its stored key, nothing to hash);
     * otherwise the key is computed, token words a window of blocks at a time. */
    sip_state st[SIP_LANES];
    int32_t win = 0, nwin = 0;
    size_t bytes = (size_t)bs * sizeof(int32_t);
    for (; j < full; j++) {
        const int32_t *tk = r->tokens + (size_t)j * (size_t)bs;
        uint64_t key[2];
        int32_t own = r->blocks[j], found = -1;
        int scan = pb >= 0 && p->nchild[pb] <= p->child_scan;
        if (scan)
            for (int32_t x = p->child[pb]; x >= 0; x = p->sib_next[x])
                if (p->ns[x] == r->ns && memcmp(block_toks(p, x), tk, bytes) == 0) {
                    found = x;
                    break;
                }
        if (found >= 0) {
            key[0] = p->key[2 * found];
            key[1] = p->key[2 * found + 1];
        } else {
            if (j >= win + nwin) {
                win = j;
                nwin = full - j < SIP_LANES ? full - j : SIP_LANES;
                sip_absorb_blocks(p->k, tk, bs, nwin, st);
            }
            key_finish(p, &st[j - win], tk, r->ns, pk, key);
            /* A scanned child list is complete: a miss there is a miss. */
            if (!scan) found = index_find(p, key, pb, r->ns, tk, 1, 1);
        }
        if (found >= 0 && found != own) {
            if (written_len >= 0 && (int64_t)(j + 1) * bs > written_len) goto done;
            seq_replace_block(t, r, j, found);
            dd++;
        } else if (found < 0) {
            /* A block cached under another identity cannot sit here (a
             * cached block is full and every holder has the same tokens
             * before it); stop rather than index it twice. */
            pkv_assert(!p->pool->cached[own]);
            if (p->pool->cached[own]) goto done;
            index_insert(p, own, key, pb, r->ns, tk);
            p->pool->cached[own] = 1;
            reg++;
        }
        key_to_bytes(key, r->keys[j]);
        r->nregistered = j + 1;
        pk[0] = key[0];
        pk[1] = key[1];
        pb = r->blocks[j];
    }
done:
    p->registrations += reg;
    p->dedups += dd;
    if (registered) *registered = reg;
    if (deduped) *deduped = dd;
}

/* ---- lookup ---- */

int32_t prefix_match(pkv_prefix *p, uint64_t ns, const int32_t *tokens, int32_t n, int32_t *blocks,
                     uint8_t (*keys)[16]) {
    int32_t bs = p->bs, full = n / bs;
    /* Below a parent with few children the children's tokens are compared
     * directly (the chain's keys are stored, nothing to hash); elsewhere the
     * block's key is computed and probed. Token words are absorbed a window of
     * blocks at a time so that consecutive hashed levels run in parallel lanes. */
    int32_t pb = -1, m = 0, win = 0, nwin = 0;
    sip_state lanes[SIP_LANES];
    size_t bytes = (size_t)bs * sizeof *tokens;
    while (m < full) {
        const int32_t *t = tokens + (size_t)m * (size_t)bs;
        int32_t b = -1;
        if (pb >= 0 && p->nchild[pb] <= p->child_scan) {
            for (int32_t x = p->child[pb]; x >= 0; x = p->sib_next[x])
                if (p->ns[x] == ns && memcmp(block_toks(p, x), t, bytes) == 0) {
                    b = x;
                    break;
                }
        } else {
            if (m >= win + nwin) {
                win = m;
                nwin = m == 0 ? 1 : (full - m < SIP_LANES ? full - m : SIP_LANES);
                sip_absorb_blocks(p->k, t, bs, nwin, lanes);
            }
            /* The low word probes; a hit is confirmed by the identity and its
             * full key is the stored one, so the high word is not computed. */
            uint64_t pk[2] = {0, 0}, key[2];
            if (pb >= 0) {
                pk[0] = p->key[2 * pb];
                pk[1] = p->key[2 * pb + 1];
            }
            key[0] = sip_finish_block_lo(&lanes[m - win], t, bs, ns, pk);
            key[1] = 0;
            key_weaken(key);
            b = index_find(p, key, pb, ns, t, 1, 0);
        }
        if (b < 0) break;
        blocks[m] = b;
        key_to_bytes(p->key + 2 * b, keys[m]);
        pb = b;
        m++;
    }
    p->queries++;
    p->query_tokens += n;
    p->hit_tokens += (int64_t)m * bs;
    return m;
}

/* ---- statistics and checks ---- */

void prefix_stats(const pkv_prefix *p, pkv_stats *out) {
    if (!p) return;
    out->cached_blocks = p->count;
    out->prefix_queries = p->queries;
    out->prefix_query_tokens = p->query_tokens;
    out->prefix_hit_tokens = p->hit_tokens;
    out->evictions += p->orphan_frees;
    out->dedups = p->dedups;
    out->registrations = p->registrations;
}

void prefix_dump(const pkv_prefix *p, void (*put)(void *w, const void *data, size_t n), void *w) {
    int32_t on = p != NULL;
    put(w, &on, sizeof on);
    if (!p) return;
    put(w, p->secret, sizeof p->secret);
    int64_t ctr[9] = {p->count, p->queries, p->query_tokens, p->hit_tokens, p->dedups,
                      p->registrations, p->orphans, p->orphan_frees, p->child_scan};
    put(w, ctr, sizeof ctr);
    for (size_t i = 0; i <= p->mask; i++) {
        put(w, &p->tab[i].block, sizeof p->tab[i].block);
        if (p->tab[i].block >= 0) put(w, &p->tab[i].tag, sizeof p->tab[i].tag);
    }
    for (int32_t b = 0; b < p->nb; b++) {
        if (!p->pool->cached[b]) continue;
        int32_t links[5] = {b, p->parent[b], p->child[b], p->sib_next[b], p->sib_prev[b]};
        put(w, links, sizeof links);
        put(w, p->key + 2 * b, 2 * sizeof *p->key);
        put(w, p->ns + b, sizeof *p->ns);
        put(w, block_toks(p, b), (size_t)p->bs * sizeof(int32_t));
    }
}

/* The index against the pool's cached bits, each entry against its recomputed
 * key and its parent, the child lists, and each sequence's registered blocks
 * against the index. */
static int check_index(pkv_prefix *p, uint8_t *seen, pkv_detail *d) {
    const pkv_pool *pool = p->pool;
    int32_t n = 0, with_parent = 0;
    for (size_t i = 0; i <= p->mask; i++) {
        int32_t b = p->tab[i].block;
        if (b < 0) continue;
        if (b >= p->nb || !pool->cached[b] || seen[b]++)
            return pkv__fail(d, PKV_ERR_CORRUPT, "index slot %zu holds block %d (not cached or twice)", i, b);
        if (p->tab[i].tag != p->key[2 * b])
            return pkv__fail(d, PKV_ERR_CORRUPT, "index slot %zu: tag disagrees with block %d's key", i, b);
        for (size_t k = home_slot(p, p->tab[i].tag); k != i; k = (k + 1) & p->mask)
            if (p->tab[k].block < 0)
                return pkv__fail(d, PKV_ERR_CORRUPT, "index: block %d unreachable from its home slot", b);
        int32_t par = p->parent[b];
        uint64_t pk[2] = {0, 0}, key[2];
        if (par >= 0) {
            if (par >= p->nb || !pool->cached[par] || p->ns[par] != p->ns[b])
                return pkv__fail(d, PKV_ERR_CORRUPT, "cached block %d has parent %d not cached here", b, par);
            pk[0] = p->key[2 * par];
            pk[1] = p->key[2 * par + 1];
            with_parent++;
        }
        sip_state st;
        sip_absorb_blocks(p->k, block_toks(p, b), p->bs, 1, &st);
        key_finish(p, &st, block_toks(p, b), p->ns[b], pk, key);
        if (key[0] != p->key[2 * b] || key[1] != p->key[2 * b + 1])
            return pkv__fail(d, PKV_ERR_CORRUPT, "cached block %d: key differs from its recomputed key", b);
        if (index_find(p, key, par, p->ns[b], block_toks(p, b), 0, 1) != b)
            return pkv__fail(d, PKV_ERR_CORRUPT, "cached block %d: its identity is indexed twice", b);
        n++;
    }
    if (n != p->count) return pkv__fail(d, PKV_ERR_CORRUPT, "index holds %d entries, count says %d", n, p->count);
    int32_t linked = 0;
    for (int32_t b = 0; b < p->nb; b++) {
        if (pool->cached[b] && !seen[b])
            return pkv__fail(d, PKV_ERR_CORRUPT, "block %d is marked cached but not indexed", b);
        if (!pool->cached[b]) continue;
        int32_t kids = 0;
        for (int32_t x = p->child[b], prev = -1; x >= 0; prev = x, x = p->sib_next[x]) {
            if (x >= p->nb || !pool->cached[x] || p->parent[x] != b || p->sib_prev[x] != prev || ++linked > n)
                return pkv__fail(d, PKV_ERR_CORRUPT, "child list of block %d broken at %d", b, x);
            kids++;
        }
        if (kids != p->nchild[b])
            return pkv__fail(d, PKV_ERR_CORRUPT, "block %d has %d children, count says %d", b, kids, p->nchild[b]);
    }
    if (linked != with_parent)
        return pkv__fail(d, PKV_ERR_CORRUPT, "%d cached blocks have a parent, child lists hold %d", with_parent,
                          linked);
    return PKV_OK;
}

static int check_seq_keys(pkv_prefix *p, const pkv_seqtab *t, pkv_detail *d) {
    for (int32_t i = 0; i < t->seqs_cap; i++) {
        const pkv_seq_rec *r = &t->seqs[i];
        if (!r->live || r->nregistered == 0) continue;
        if (!r->keys || r->keys_cap < r->nregistered || (int64_t)r->nregistered * p->bs > r->ntokens)
            return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: %d registered blocks without keys or tokens", i,
                              r->nregistered);
        for (int32_t j = 0; j < r->nregistered; j++) {
            int32_t b = r->blocks[j];
            uint64_t k[2];
            key_from_bytes(r->keys[j], k);
            if (!p->pool->cached[b] || p->key[2 * b] != k[0] || p->key[2 * b + 1] != k[1] ||
                p->parent[b] != (j ? r->blocks[j - 1] : -1) || p->ns[b] != r->ns ||
                memcmp(block_toks(p, b), r->tokens + (size_t)j * (size_t)p->bs, (size_t)p->bs * sizeof(int32_t)))
                return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: registered block %d (#%d) disagrees with the index",
                                  i, b, j);
        }
    }
    return PKV_OK;
}

int prefix_check(pkv_prefix *p, pkv_seqtab *t, const pkv_allocator *al, pkv_detail *d) {
    uint8_t *seen = pkv_mem_calloc(al, (size_t)p->nb, 1);
    RETURN_IF(!seen, PKV_ERR_NOMEM);
    int st = check_index(p, seen, d);
    pkv_mem_free(al, seen);
    return st == PKV_OK ? check_seq_keys(p, t, d) : st;
}

int prefix_check_off(const pkv_pool *pool, pkv_detail *d) {
    for (int32_t b = 0; b < pool->num_blocks; b++)
        if (pool->cached[b]) return pkv__fail(d, PKV_ERR_CORRUPT, "block %d is cached but prefix caching is off", b);
    return PKV_OK;
}
