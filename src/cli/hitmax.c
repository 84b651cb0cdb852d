/* The theoretical prefix hit rate of a workload: an infinite cache under the
 * library's rules (only full blocks are cached and found, chained by their
 * parent; a prompt whose every block is cached still computes its last token,
 * as pkv_prefix_lookup's contract has the engine truncate by one and append it).
 *
 * Requests are taken in trace order. Each one first finds the longest chain of
 * blocks that earlier requests computed, then adds its own: the full blocks of
 * its prompt, and, when a chat's next turn will reuse it, the full blocks of
 * prompt + output (sample 0; the last output token is never appended as KV).
 * The simulated engine can only do worse: it sees the same blocks at best,
 * and later than this, and a bounded pool evicts some.
 *
 * A node is one block of one chain: (parent node, the block's tokens). Nodes
 * keep no tokens of their own: a node refers to the request and position that
 * created it, and the tokens are regenerated for the exact comparison that
 * follows every hash match (so a hash collision never counts as a hit). */
#include <stdlib.h>
#include <string.h>

#include "cli/sim.h"

typedef struct hnode {
    int32_t parent, req, pos;
} hnode;

typedef struct htab {
    const sim_workload *w;
    int32_t bs;
    hnode *node;
    int64_t nnode, node_cap;
    uint64_t *hash; /* per slot: hash of the node, or 0 (empty) */
    int32_t *slot;  /* per slot: node index */
    size_t cap;
    int32_t *tmp;   /* bs tokens of a node being compared */
} htab;

static uint64_t block_hash(int32_t parent, const int32_t *tok, int32_t n) {
    uint64_t h = 0x6a09e667f3bcc909ull ^ ((uint64_t)(uint32_t)parent * 0x9e3779b97f4a7c15ull);
    int32_t i = 0;
    for (; i + 1 < n; i += 2) {
        h ^= (uint64_t)(uint32_t)tok[i] | (uint64_t)(uint32_t)tok[i + 1] << 32;
        h *= 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
    }
    if (i < n) {
        h ^= (uint32_t)tok[i];
        h *= 0xbf58476d1ce4e5b9ull;
    }
    h ^= h >> 29;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 32;
    return h ? h : 1;
}

static int grow(htab *t) {
    size_t cap = t->cap ? t->cap * 2 : 1 << 16;
    uint64_t *hash = calloc(cap, sizeof *hash);
    int32_t *slot = malloc(cap * sizeof *slot);
    if (!hash || !slot) {
        free(hash);
        free(slot);
        return -1;
    }
    for (size_t i = 0; i < t->cap; i++)
        if (t->hash[i]) {
            size_t j = (size_t)t->hash[i] & (cap - 1);
            while (hash[j]) j = (j + 1) & (cap - 1);
            hash[j] = t->hash[i];
            slot[j] = t->slot[i];
        }
    free(t->hash);
    free(t->slot);
    t->hash = hash;
    t->slot = slot;
    t->cap = cap;
    return 0;
}

/* The node (parent, tok) or -1. */
static int32_t find(htab *t, uint64_t h, int32_t parent, const int32_t *tok) {
    for (size_t i = (size_t)h & (t->cap - 1); t->hash[i]; i = (i + 1) & (t->cap - 1)) {
        if (t->hash[i] != h) continue;
        const hnode *x = &t->node[t->slot[i]];
        if (x->parent != parent) continue;
        sim_tokens(&t->w->req[x->req], 0, x->pos, t->bs, t->tmp);
        if (!memcmp(t->tmp, tok, (size_t)t->bs * sizeof *tok)) return t->slot[i];
    }
    return -1;
}

static int32_t insert(htab *t, uint64_t h, int32_t parent, int32_t req, int32_t pos) {
    if (t->nnode == t->node_cap) {
        int64_t cap = t->node_cap ? t->node_cap * 2 : 1 << 16;
        if (cap > INT32_MAX) return -1;
        hnode *p = realloc(t->node, (size_t)cap * sizeof *p);
        if (!p) return -1;
        t->node = p;
        t->node_cap = cap;
    }
    if (2 * (size_t)(t->nnode + 1) > t->cap && grow(t)) return -1;
    int32_t id = (int32_t)t->nnode++;
    t->node[id] = (hnode){parent, req, pos};
    size_t i = (size_t)h & (t->cap - 1);
    while (t->hash[i]) i = (i + 1) & (t->cap - 1);
    t->hash[i] = h;
    t->slot[i] = id;
    return id;
}

int workload_hit_max(const sim_workload *w, int32_t bs, int64_t *hit_tokens, int64_t *query_tokens) {
    htab t = {.w = w, .bs = bs};
    int32_t *buf = malloc((size_t)bs * sizeof *buf);
    t.tmp = malloc((size_t)bs * sizeof *t.tmp);
    int rc = !buf || !t.tmp || grow(&t) ? EXIT_LIB : 0;
    int64_t hit = 0, query = 0;
    for (int32_t r = 0; r < w->n && !rc; r++) {
        const sim_request *q = &w->req[r];
        int64_t kv = q->prompt_len + (q->next >= 0 ? (int64_t)q->output_len - 1 : 0);
        int32_t lookup_blocks = q->prompt_len / bs, blocks = (int32_t)(kv / bs);
        int32_t parent = -1, matched = 0, missed = 0;
        for (int32_t b = 0; b < blocks; b++) {
            sim_tokens(q, 0, b * bs, bs, buf);
            uint64_t h = block_hash(parent, buf, bs);
            if (!missed) {
                int32_t x = find(&t, h, parent, buf);
                if (x >= 0) {
                    parent = x;
                    if (b < lookup_blocks) matched++;
                    continue;
                }
                missed = 1; /* every later block has a new parent: new nodes */
            }
            parent = insert(&t, h, parent, r, b * bs);
            if (parent < 0) {
                rc = EXIT_LIB;
                break;
            }
        }
        int64_t got = (int64_t)matched * bs;
        if (got == q->prompt_len) got--; /* the last token is computed for the first output */
        hit += got;
        query += q->prompt_len;
    }
    free(buf);
    free(t.tmp);
    free(t.node);
    free(t.hash);
    free(t.slot);
    *hit_tokens = rc ? 0 : hit;
    *query_tokens = rc ? 0 : query;
    return rc;
}
