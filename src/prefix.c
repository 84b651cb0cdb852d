/* The prefix index: entries with their own ids, block keys, registration with
 * deduplication, matching a prompt's longest cached prefix, and forgetting a
 * reclaimed block.
 *
 * Entry. A cached block of KV is an entry of its own: an id in [0, ecap), an
 * identity (namespace, parent entry, the block's token ids, stored here once
 * for every sequence that holds the block) and a location. Today the location
 * is a pool block (ent_of_block maps back); the tier issue adds others. When a
 * block is reclaimed the entry loses that location; an entry with no location
 * left is dropped.
 *
 * Layout, parallel arrays of ecap, 45 bytes per entry besides its token ids:
 * key 16, extras digest 8, links 8, parent 4, location 4, first child 4, bits 1.
 * A child is listed among its parent's children (links: next and previous
 * sibling, so that any child leaves in O(1)); a chain's first block is listed
 * nowhere and its links hold the chain's namespace instead: every block of a
 * chain is in its first block's namespace, so a child keeps none (the paths
 * that need it without knowing it, removal events and the tier layer's
 * identities, walk up the chain). No child count is kept (see Lookup).
 *
 * Key. Block j of a sequence has the key
 *     K_j = SipHash-2-4-128(secret, tokens of block j || ns || K_{j-1}),  K_{-1} = 0,
 * (siphash.c). The tokens come first so that the token words of several
 * blocks can be absorbed in parallel lanes; only the 24-byte tail, which holds
 * the parent key, is chained. The secret is drawn per cache from the OS unless
 * the config gives one. The key names the identity across processes (tiers,
 * events); inside the index a hit is confirmed by the identity itself.
 *
 * Identity. A key only finds candidates: a hit requires the token ids, the
 * namespace, the extras digest and the parent entry to match (the namespace is
 * compared at a chain's first block; below it the parent entry, found in the
 * same namespace, carries it). The parent entry
 * is itself the unique entry of the parent's identity, so by induction a hit
 * means "the same tokens from position 0, in the same namespace, with the same
 * extra keys on every block" and a hash collision can never hand out another
 * prompt's KV (tests build with PKV_WEAK_HASH=8 to prove it).
 *
 * Extra keys. A block's adapter id and the multimodal ranges overlapping it
 * (content hash, start relative to the block, length) are variable in size;
 * the entry stores their 64-bit digest xd (0: none), a SipHash chain under a
 * key derived from the cache's secret, and the block key absorbs xd after the
 * parent key when it is non-zero (so blocks without extras keep their keys).
 * The index key may be weakened (PKV_WEAK_HASH), xd never is: two different
 * extras share KV only if their digests collide, which for a keyed 128-bit
 * PRF chain cut to 64 bits is a 2^-64 event per pair of extras compared under
 * the same parent and tokens, and which an engine cannot aim at without the
 * secret. Storing the extras themselves would cost up to bs ranges of 32
 * bytes per entry; xd costs 8 bytes.
 *
 * Index. Open addressing with linear probing and backward-shift deletion, at
 * most 3/4 full: it holds at most ecap entries in ceil(4/3 ecap) slots (any
 * size: the home slot is the hash's high half scaled to the table) of 4 bytes:
 * the entry id + 1 in the low bits (0: empty), a tag from the key's hash in
 * the others (8 bits while ecap < 2^24), so a probe touches an entry only when
 * its tag agrees. All of it is allocated at creation (and rebuilt when tiers
 * grow the entries), so registration and lookup never allocate. 5.3 bytes per
 * entry, where 8-byte slots at most half full in a power-of-two table took
 * 16 to 32.
 *
 * Lookup walks the prompt block by block and stops at the first miss. Below a
 * parent it first walks at most child_scan of the parent's children comparing
 * their tokens directly (the keys of entries are stored, so nothing needs
 * hashing): a match is a hit, the end of the list a miss. Past child_scan
 * children (popular parents) and at the first block it hashes and probes.
 *
 * Eviction. The pool reclaims the least recently released evictable block
 * (sequences release their blocks last first, so a chain is reclaimed from its
 * deepest block) and the cache layer calls prefix_forget. An entry's
 * descendants would be unreachable without it, and their parent id would soon
 * name an unrelated entry, so they are dropped at once, leaf first: an
 * evictable block goes to the free list (counted in evictions), a used one
 * simply stops being cached (not an eviction: its holders keep it). Through
 * the public API this happens when forked sequences share a block that one of
 * them registered after deduplicating its parent: the other keeps holding the
 * block but not that parent.
 *
 * Window caches (prefix_set_window). A sliding window releases a sequence's
 * early blocks while it still appends, so chains lose their first blocks
 * first, and dropping descendants would lose every chain. There a reclaimed
 * block's entry with children stays as a ghost (no location, no tier; its
 * tokens and key kept), and a leaf goes with every ghost above it left
 * childless; a registration that finds a ghost's identity places its block
 * there (the ghost lives again). Lookup walks ghosts like other entries; the
 * cache layer picks the longest length whose window is in the pool. Ghosts
 * take ids beyond one per block, so this index grows (doubling) when a
 * registration finds no free id; if that fails the registration ends there.
 * KV events follow the KV: a block becoming a ghost is reported removed, a
 * ghost revived stored, a ghost dropped not again. */
#include <string.h>

#include "internal.h"

/* An entry's links: a child is listed among its parent's children; a chain's
 * first block is listed nowhere and holds the chain's namespace instead (every
 * block of a chain has its first block's: a child has no namespace of its own). */
typedef union prefix_link {
    struct {
        int32_t next, prev; /* next also chains free entry ids */
    } sib;
    uint64_t ns;
} prefix_link;

/* An index slot: the entry id + 1 in the bits of emk (0: empty), the key's
 * tag in the others (8 bits while ecap < 2^24). */
typedef uint32_t prefix_slot;

struct pkv_prefix {
    pkv_pool *pool;
    uint8_t secret[16];
    uint8_t xkey[16]; /* the extras digest's key: the secret, domain-separated */
    uint64_t k[2];
    int32_t bs, nb, ecap;
    int32_t *ent_of_block; /* [nb] the entry located at a pool block, -1 none */
    /* Entries, [ecap] each; meaningful while loc[e] >= 0. */
    uint64_t *key;    /* [2 * ecap] low, high word */
    uint64_t *xd;     /* extras digest, 0 none */
    int32_t *parent;  /* parent entry, -1 for a chain's first block */
    int32_t *loc;     /* pool block holding the KV, -1 none (free, or only in tiers) */
    uint8_t *emask;   /* bit 0: the id is in use; bit 1 + t: tier t holds the entry */
    int32_t *child;   /* first child, -1 none */
    prefix_link *link;
    int32_t *toks;    /* [ecap * bs] token ids */
    int32_t efree;    /* head of the free entry ids */
    /* Window caches (prefix_set_window): ghosts are entries whose KV is gone
     * (the block was reclaimed) kept while they have children, so that the
     * chain below them stays reachable; the index then grows on demand. */
    const pkv_allocator *al; /* non-NULL: a window cache's index */
    int32_t ghosts;
    int32_t child_scan; /* a parent's list is searched this many children deep before hashing */
    /* KV events: a ring of ev_cap, ev_n pending from ev_head; ev_dropped lost */
    pkv_event *ev;
    int32_t ev_cap, ev_head, ev_n;
    int64_t ev_dropped;
    prefix_slot *tab; /* [cap], at most 3/4 full */
    size_t cap;
    uint32_t emk;
    int32_t count;
    /* orphans: descendants dropped with a reclaimed block; orphan_frees: those
     * of them that were evictable (they count as evictions) */
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
                              const uint64_t parent[2], uint64_t xd, uint64_t out[2]) {
    sip_finish_block_x(st, toks, p->bs, ns, parent, xd, out);
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
                      const uint8_t parent[16], uint64_t xd, uint8_t out[16]) {
    uint64_t k[2] = {le64(secret), le64(secret + 8)}, pk[2] = {le64(parent), le64(parent + 8)}, o[2];
    sip_state st;
    sip_absorb_blocks(k, toks, bs, 1, &st);
    sip_finish_block_x(&st, toks, bs, ns, pk, xd, o);
    key_weaken(o);
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(o[0] >> (8 * i));
        out[8 + i] = (uint8_t)(o[1] >> (8 * i));
    }
}

static void put64_le(uint8_t *b, uint64_t v) {
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
}

uint64_t prefix_extras_digest(const pkv_prefix *p, const prefix_extras *x, int32_t j, int32_t *cursor) {
    if (!x || (x->adapter == 0 && x->nmm == 0)) return 0;
    int64_t lo = (int64_t)j * p->bs, hi = lo + p->bs;
    int32_t k = *cursor;
    while (k < x->nmm && x->mm[k].start + x->mm[k].len <= lo) k++;
    *cursor = k;
    if (x->adapter == 0 && (k == x->nmm || x->mm[k].start >= hi)) return 0;
    /* h = H(adapter), then h = H(h || hash || start - lo || len) per range over
     * the block: a chain of 128-bit PRF outputs, cut to 64 bits at the end. */
    uint8_t msg[48], h[16];
    put64_le(msg, x->adapter);
    pkv_siphash128(p->xkey, msg, 8, h);
    for (; k < x->nmm && x->mm[k].start < hi; k++) {
        memcpy(msg, h, 16);
        memcpy(msg + 16, x->mm[k].hash, 16);
        put64_le(msg + 32, (uint64_t)(x->mm[k].start - lo));
        put64_le(msg + 40, (uint64_t)x->mm[k].len);
        pkv_siphash128(p->xkey, msg, 48, h);
    }
    uint64_t d = le64(h);
    return d ? d : 1; /* 0 means "no extras" */
}

/* ---- entries and the index ---- */

/* Fibonacci hashing spreads even a weakened 8-bit key over the table: the
 * high half of h picks the home slot (any table size), the low half the tag. */
static inline uint64_t key_mix(uint64_t k0) { return k0 * 0x9e3779b97f4a7c15ull; }
static inline size_t home_of(const pkv_prefix *p, uint64_t h) { return (size_t)(((h >> 32) * p->cap) >> 32); }
static inline size_t next_slot(const pkv_prefix *p, size_t i) { return i + 1 == p->cap ? 0 : i + 1; }
static inline uint32_t slot_tag(const pkv_prefix *p, uint64_t h) { return (uint32_t)h & ~p->emk; }
static inline int32_t slot_ent(const pkv_prefix *p, prefix_slot s) { return (int32_t)(s & p->emk) - 1; }

/* The table for ecap entries: at most 3/4 full, and the mask of the bits an
 * entry id + 1 needs. */
static void table_geometry(int32_t ecap, size_t *cap, uint32_t *emk) {
    size_t c = ((size_t)ecap * 4 + 2) / 3;
    *cap = c < 16 ? 16 : c;
    uint32_t m = 1;
    while (m < (uint32_t)ecap) m = (m << 1) | 1;
    *emk = m;
}

static inline const int32_t *ent_toks(const pkv_prefix *p, int32_t e) { return p->toks + (size_t)e * (size_t)p->bs; }

/* An entry of a window cache's index whose KV is gone (no block, no tier). */
static inline int is_ghost(const pkv_prefix *p, int32_t e) { return p->al && p->loc[e] < 0 && p->emask[e] == 1; }

/* The namespace of e's chain, kept by its first block: a walk up the chain,
 * for the paths that do not already know it (events of removals, the tier
 * layer's identities, restores). */
static uint64_t entry_ns(const pkv_prefix *p, int32_t e) {
    while (p->parent[e] >= 0) e = p->parent[e];
    return p->link[e].ns;
}

/* The entry of identity (key, parent, ns, xd, toks), or -1. check_high = 0:
 * only key[0] is known (lookup); the identity decides alone. Below a parent
 * the namespace is the parent's (the caller found the parent in ns); a chain's
 * first block compares its own. */
static int32_t index_find(pkv_prefix *p, const uint64_t key[2], int32_t parent, uint64_t ns, uint64_t xd,
                          const int32_t *toks, int count_collisions, int check_high) {
    size_t bytes = (size_t)p->bs * sizeof *toks;
    uint64_t h = key_mix(key[0]);
    uint32_t tag = slot_tag(p, h);
    for (size_t i = home_of(p, h);; i = next_slot(p, i)) {
        prefix_slot s = p->tab[i];
        if (!s) return -1;
        if ((s & ~p->emk) != tag) continue;
        int32_t e = slot_ent(p, s);
        if (p->key[2 * e] != key[0]) continue; /* the tag's few bits agreed, the key does not */
        /* Lookup knows only the key's low word: the identity decides. */
        if ((!check_high || p->key[2 * e + 1] == key[1]) && p->parent[e] == parent &&
            (parent >= 0 || p->link[e].ns == ns) && p->xd[e] == xd && memcmp(ent_toks(p, e), toks, bytes) == 0)
            return e;
        if (count_collisions) p->collisions++;
    }
}

static void event(pkv_prefix *p, int kind, int32_t e, uint64_t ns) {
    if (!p->ev) return;
    if (p->ev_n == p->ev_cap) {
        p->ev_dropped++;
        return;
    }
    pkv_event *x = &p->ev[(p->ev_head + p->ev_n++) % p->ev_cap];
    int32_t par = p->parent[e];
    x->kind = kind;
    x->has_parent = par >= 0;
    memcpy(x->key, p->key + 2 * e, 16);
    if (par >= 0) memcpy(x->parent_key, p->key + 2 * par, 16);
    else memset(x->parent_key, 0, 16);
    x->ns = ns;
}

/* A new entry at pool block b (cannot fail: at most ecap entries exist, one
 * per cached block). */
static int32_t entry_insert(pkv_prefix *p, int32_t b, const uint64_t key[2], int32_t parent, uint64_t ns,
                            uint64_t xd, const int32_t *toks) {
    int32_t e = p->efree;
    pkv_assert(e >= 0);
    p->efree = p->link[e].sib.next;
    uint64_t h = key_mix(key[0]);
    size_t i = home_of(p, h);
    while (p->tab[i]) i = next_slot(p, i);
    p->tab[i] = slot_tag(p, h) | (uint32_t)(e + 1);
    p->key[2 * e] = key[0];
    p->key[2 * e + 1] = key[1];
    p->xd[e] = xd;
    p->parent[e] = parent;
    p->loc[e] = b;
    p->emask[e] = 1;
    if (b >= 0) p->ent_of_block[b] = e;
    p->child[e] = -1;
    if (parent < 0) {
        p->link[e].ns = ns;
    } else {
        p->link[e].sib.prev = -1;
        p->link[e].sib.next = p->child[parent];
        if (p->child[parent] >= 0) p->link[p->child[parent]].sib.prev = e;
        p->child[parent] = e;
    }
    memcpy(p->toks + (size_t)e * (size_t)p->bs, toks, (size_t)p->bs * sizeof *toks);
    p->count++;
    event(p, PKV_EVENT_STORED, e, ns);
    return e;
}

/* Removes e's slot (backward-shift deletion keeps every probe run unbroken),
 * unlinks e from its parent's children and frees its id. e's own children
 * keep parent = e: the caller drops them first or right after. */
static void entry_remove(pkv_prefix *p, int32_t e) {
    if (is_ghost(p, e)) p->ghosts--; /* its removal was reported when it became one */
    else if (p->ev) event(p, PKV_EVENT_REMOVED, e, entry_ns(p, e));
    size_t i = home_of(p, key_mix(p->key[2 * e]));
    while (slot_ent(p, p->tab[i]) != e) i = next_slot(p, i);
    for (size_t j = i;;) {
        j = next_slot(p, j);
        if (!p->tab[j]) break;
        /* a slot keeps a few bits of the key: its home comes from the entry's key */
        size_t h = home_of(p, key_mix(p->key[2 * slot_ent(p, p->tab[j])]));
        /* The entry at j may fill the hole at i unless its home lies in (i, j]. */
        int stays = (i <= j) ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            p->tab[i] = p->tab[j];
            i = j;
        }
    }
    p->tab[i] = 0;
    int32_t par = p->parent[e];
    if (par >= 0) {
        int32_t pr = p->link[e].sib.prev, nx = p->link[e].sib.next;
        if (pr >= 0) p->link[pr].sib.next = nx;
        else p->child[par] = nx;
        if (nx >= 0) p->link[nx].sib.prev = pr;
    }
    if (p->loc[e] >= 0) p->ent_of_block[p->loc[e]] = -1;
    p->loc[e] = -1;
    p->emask[e] = 0;
    p->link[e].sib.prev = -1;
    p->link[e].sib.next = p->efree;
    p->efree = e;
    p->count--;
}

/* A window cache's reclaimed block: its entry stays as a ghost while it has
 * children (they are still reachable); a leaf goes, and with it every ghost
 * above it left without children. */
static void forget_window(pkv_prefix *p, int32_t b, int32_t e) {
    if (p->child[e] >= 0) {
        if (p->ev) event(p, PKV_EVENT_REMOVED, e, entry_ns(p, e));
        p->ent_of_block[b] = -1;
        p->loc[e] = -1;
        p->ghosts++;
        return;
    }
    for (;;) {
        int32_t up = p->parent[e];
        entry_remove(p, e);
        if (up < 0 || p->child[up] >= 0 || !is_ghost(p, up)) return;
        e = up;
    }
}

void prefix_forget(pkv_prefix *p, int32_t b) {
    int32_t e = p->ent_of_block[b];
    pkv_assert(e >= 0);
    if (p->al) {
        forget_window(p, b, e);
        return;
    }
    /* Leaf first, newest child first: each dropped descendant's block leaves
     * the index (and, when evictable, the LRU list for the free list). */
    int32_t x = e;
    for (;;) {
        if (p->child[x] >= 0) {
            x = p->child[x];
            continue;
        }
        if (x == e) break;
        int32_t up = p->parent[x], xb = p->loc[x];
        entry_remove(p, x);
        p->orphan_frees += pool_uncache(p->pool, xb);
        p->orphans++;
        x = up;
    }
    entry_remove(p, e);
}

const int32_t *prefix_block_tokens(const pkv_prefix *p, int32_t b) {
    int32_t e = p->ent_of_block[b];
    return e >= 0 ? ent_toks(p, e) : NULL;
}

/* ---- entries for the tier layer ---- */

int32_t prefix_ecap(const pkv_prefix *p) { return p->ecap; }
int32_t prefix_entry_of_block(const pkv_prefix *p, int32_t b) { return p->ent_of_block[b]; }
int32_t prefix_entry_block(const pkv_prefix *p, int32_t e) { return p->loc[e]; }
int32_t prefix_first_child(const pkv_prefix *p, int32_t e) { return p->child[e]; }
int prefix_entry_live(const pkv_prefix *p, int32_t e) { return p->emask[e] & 1; }
int32_t prefix_entry_parent(const pkv_prefix *p, int32_t e) { return p->parent[e]; }
uint8_t prefix_tiers_of(const pkv_prefix *p, int32_t e) { return (uint8_t)(p->emask[e] >> 1); }

void prefix_set_tier(pkv_prefix *p, int32_t e, int t, int on) {
    uint8_t bit = (uint8_t)(2u << t);
    p->emask[e] = on ? (uint8_t)(p->emask[e] | bit) : (uint8_t)(p->emask[e] & ~bit);
}

void prefix_identity_of(const pkv_prefix *p, int32_t e, prefix_identity *out) {
    out->key[0] = p->key[2 * e];
    out->key[1] = p->key[2 * e + 1];
    out->parent = p->parent[e];
    out->parent_key[0] = out->parent >= 0 ? p->key[2 * out->parent] : 0;
    out->parent_key[1] = out->parent >= 0 ? p->key[2 * out->parent + 1] : 0;
    out->ns = entry_ns(p, e);
    out->xd = p->xd[e];
    out->toks = ent_toks(p, e);
}

void prefix_entry_key(const pkv_prefix *p, int32_t e, uint64_t key[2]) {
    key[0] = p->key[2 * e];
    key[1] = p->key[2 * e + 1];
}

void prefix_unplace(pkv_prefix *p, int32_t b) {
    int32_t e = p->ent_of_block[b];
    pkv_assert(e >= 0);
    p->ent_of_block[b] = -1;
    p->loc[e] = -1;
}

void prefix_place(pkv_prefix *p, int32_t e, int32_t b) {
    pkv_assert(p->loc[e] < 0 && p->ent_of_block[b] < 0);
    p->loc[e] = b;
    p->ent_of_block[b] = e;
    p->pool->cached[b] = 1;
}

int prefix_remove_entry(pkv_prefix *p, int32_t e) {
    pkv_assert(p->child[e] < 0);
    int32_t b = p->loc[e];
    entry_remove(p, e);
    return b >= 0 ? pool_uncache(p->pool, b) : 0;
}

int32_t prefix_insert_unplaced(pkv_prefix *p, const uint64_t key[2], int32_t parent, uint64_t ns, uint64_t xd,
                               const int32_t *toks) {
    if (p->efree < 0) return -1;
    uint64_t probe[2] = {key[0], key[1]};
    /* a chain has one namespace: a child's is its parent's */
    if (parent >= 0 && entry_ns(p, parent) != ns) return -1;
    if (index_find(p, probe, parent, ns, xd, toks, 0, 1) >= 0) return -1;
    return entry_insert(p, -1, key, parent, ns, xd, toks);
}

int32_t prefix_find_key(const pkv_prefix *p, const uint64_t key[2]) {
    uint64_t h = key_mix(key[0]);
    uint32_t tag = slot_tag(p, h);
    for (size_t i = home_of(p, h);; i = next_slot(p, i)) {
        prefix_slot s = p->tab[i];
        if (!s) return -1;
        int32_t e = slot_ent(p, s);
        if ((s & ~p->emk) == tag && p->key[2 * e] == key[0] && p->key[2 * e + 1] == key[1]) return e;
    }
}

int prefix_grow(pkv_prefix *p, const pkv_allocator *al, int32_t ecap) {
    if (ecap <= p->ecap) return PKV_OK;
    size_t ne = (size_t)ecap, old = (size_t)p->ecap, cap;
    uint32_t emk;
    table_geometry(ecap, &cap, &emk);
    /* New arrays first; the old ones are freed only when every one succeeded. */
    enum { NARR = 8 };
    void **fields[NARR] = {(void **)&p->key,   (void **)&p->xd,    (void **)&p->parent, (void **)&p->loc,
                           (void **)&p->emask, (void **)&p->child, (void **)&p->link,   (void **)&p->toks};
    const size_t size[NARR] = {2 * sizeof(uint64_t), sizeof(uint64_t), sizeof(int32_t),     sizeof(int32_t),
                               1,                    sizeof(int32_t),  sizeof(prefix_link), (size_t)p->bs * sizeof(int32_t)};
    void *a[NARR];
    int ok = 1;
    for (int i = 0; i < NARR; i++) ok = (a[i] = pkv_mem_calloc(al, ne, size[i])) != NULL && ok;
    prefix_slot *tab = pkv_mem_calloc(al, cap, sizeof *tab);
    if (!ok || !tab) {
        for (int i = 0; i < NARR; i++) pkv_mem_free(al, a[i]);
        pkv_mem_free(al, tab);
        return PKV_ERR_NOMEM;
    }
    for (int i = 0; i < NARR; i++) {
        memcpy(a[i], *fields[i], old * size[i]);
        pkv_mem_free(al, *fields[i]);
        *fields[i] = a[i];
    }
    /* The new ids join the free list in increasing order, after the old ones. */
    int32_t *tail = &p->efree;
    while (*tail >= 0) tail = &p->link[*tail].sib.next;
    for (size_t e = old; e < ne; e++) {
        p->parent[e] = p->child[e] = p->link[e].sib.prev = p->loc[e] = -1;
        p->emask[e] = 0;
        p->link[e].sib.next = -1;
        *tail = (int32_t)e;
        tail = &p->link[e].sib.next;
    }
    /* Every slot again: the table's size and the split of a slot's bits changed. */
    prefix_slot *old_tab = p->tab;
    size_t old_cap = p->cap;
    uint32_t old_emk = p->emk;
    p->tab = tab;
    p->cap = cap;
    p->emk = emk;
    p->ecap = ecap;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old_tab[i]) continue;
        int32_t e = (int32_t)(old_tab[i] & old_emk) - 1;
        uint64_t h = key_mix(p->key[2 * e]);
        size_t j = home_of(p, h);
        while (p->tab[j]) j = next_slot(p, j);
        p->tab[j] = slot_tag(p, h) | (uint32_t)(e + 1);
    }
    pkv_mem_free(al, old_tab);
    return PKV_OK;
}

/* ---- creation ---- */

int prefix_events_enable(pkv_prefix *p, const pkv_allocator *al, int32_t cap) {
    pkv_event *ev = NULL;
    if (cap > 0 && !(ev = pkv_mem_alloc(al, (size_t)cap * sizeof *ev))) return PKV_ERR_NOMEM;
    pkv_mem_free(al, p->ev);
    p->ev = ev;
    p->ev_cap = cap;
    p->ev_head = p->ev_n = 0;
    p->ev_dropped = 0;
    return PKV_OK;
}

int prefix_events_drain(pkv_prefix *p, pkv_event *out, int32_t cap, int32_t *n, int64_t *dropped) {
    if (!p->ev) return PKV_ERR_STATE;
    int32_t k = 0;
    for (; k < cap && p->ev_n > 0; k++) {
        out[k] = p->ev[p->ev_head];
        p->ev_head = (p->ev_head + 1) % p->ev_cap;
        p->ev_n--;
    }
    *n = k;
    if (dropped) *dropped = p->ev_dropped;
    p->ev_dropped = 0;
    return PKV_OK;
}

static void prefix_free(const pkv_allocator *al, pkv_prefix *p) {
    if (!p) return;
    pkv_mem_free(al, p->ev);
    pkv_mem_free(al, p->ent_of_block);
    pkv_mem_free(al, p->key);
    pkv_mem_free(al, p->xd);
    pkv_mem_free(al, p->parent);
    pkv_mem_free(al, p->loc);
    pkv_mem_free(al, p->emask);
    pkv_mem_free(al, p->child);
    pkv_mem_free(al, p->link);
    pkv_mem_free(al, p->toks);
    pkv_mem_free(al, p->tab);
    pkv_mem_free(al, p);
}

int prefix_create(const pkv_allocator *al, pkv_pool *pool, const uint8_t secret[16], pkv_prefix **out) {
    *out = NULL;
    pkv_prefix *p = pkv_mem_calloc(al, 1, sizeof *p);
    RETURN_IF(!p, PKV_ERR_NOMEM);
    size_t nb = (size_t)pool->num_blocks, ne = nb;
    p->pool = pool;
    p->nb = pool->num_blocks;
    p->ecap = (int32_t)ne;
    p->bs = pool->block_size;
    table_geometry(p->ecap, &p->cap, &p->emk);
    p->ent_of_block = pkv_mem_alloc(al, nb * sizeof(int32_t));
    p->key = pkv_mem_calloc(al, ne, 2 * sizeof(uint64_t));
    p->xd = pkv_mem_calloc(al, ne, sizeof(uint64_t));
    p->parent = pkv_mem_alloc(al, ne * sizeof(int32_t));
    p->loc = pkv_mem_alloc(al, ne * sizeof(int32_t));
    p->emask = pkv_mem_calloc(al, ne, 1);
    p->child = pkv_mem_alloc(al, ne * sizeof(int32_t));
    p->link = pkv_mem_alloc(al, ne * sizeof *p->link);
    p->toks = pkv_mem_calloc(al, ne, (size_t)p->bs * sizeof(int32_t));
    p->tab = pkv_mem_calloc(al, p->cap, sizeof(prefix_slot));
    if (!p->ent_of_block || !p->key || !p->xd || !p->parent || !p->loc || !p->emask || !p->child || !p->link ||
        !p->toks || !p->tab) {
        prefix_free(al, p);
        return PKV_ERR_NOMEM;
    }
    memcpy(p->secret, secret, 16);
    /* A key of its own for the extras digest, so that no digest is ever a block key. */
    static const uint8_t xdom[16] = "pkv extra keys.";
    for (int i = 0; i < 16; i++) p->xkey[i] = (uint8_t)(secret[i] ^ xdom[i]);
    for (size_t b = 0; b < nb; b++) p->ent_of_block[b] = -1;
    /* Free ids in increasing order: entry ids follow registration order on a new index. */
    for (size_t e = 0; e < ne; e++) {
        p->parent[e] = p->child[e] = p->link[e].sib.prev = p->loc[e] = -1;
        p->link[e].sib.next = e + 1 < ne ? (int32_t)e + 1 : -1;
    }
    p->efree = 0;
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

void prefix_set_window(pkv_prefix *p, const pkv_allocator *al) { p->al = al; }

/* The child of entry pe (-1: roots are not listed) with tokens t, looked
 * for among the first child_scan children of pe's list: the child, or -1 with
 * *scanned = 1 when the list ended (a miss in a complete list is a miss), or -1
 * with *scanned = 0 when it is longer (the caller hashes). No count is kept:
 * the walk itself finds out whether the parent has few children. */
static int32_t scan_children(const pkv_prefix *p, int32_t pe, uint64_t xd, const int32_t *t, int *scanned) {
    *scanned = 0;
    if (pe < 0) return -1;
    size_t bytes = (size_t)p->bs * sizeof *t;
    int32_t x = p->child[pe];
    for (int32_t k = 0; x >= 0 && k < p->child_scan; k++, x = p->link[x].sib.next)
        if (p->xd[x] == xd && memcmp(ent_toks(p, x), t, bytes) == 0) {
            *scanned = 1;
            return x;
        }
    *scanned = x < 0;
    return -1;
}

/* ---- registration ---- */

/* Registers r's full blocks with known tokens from r->nregistered on (cannot
 * fail; the sequence's tokens of registered blocks are then dropped, the
 * entries hold them). written_len < 0: every block's KV is written and a
 * duplicate is deduplicated. Otherwise only blocks inside [0, written_len) are
 * (their slots were handed out by an earlier append); a block filled after
 * that whose identity is already cached ends the registration, to be
 * deduplicated by a later call once its KV is written. */
void prefix_register_seq(pkv_prefix *p, pkv_seqtab *t, pkv_seq_rec *r, int32_t written_len,
                         int32_t *registered, int32_t *deduped) {
    /* Only tokens known and not drafts: a block holding a lookahead token waits. */
    int32_t settled = r->len - r->lookahead < r->ntokens ? r->len - r->lookahead : r->ntokens;
    int32_t bs = p->bs, full = settled / bs, j = r->nregistered, reg = 0, dd = 0;
    int32_t first = j;
    uint64_t pk[2] = {0, 0};
    int32_t pe = -1;
    /* A window may have released the next block, or the last registered one
     * (whose entry the chain continues from): nothing more can register. */
    if (j < r->nreleased || (j > 0 && r->blocks[j - 1] < 0)) full = j;
    if (j > 0 && j < full) {
        pe = p->ent_of_block[r->blocks[j - 1]];
        pkv_assert(pe >= 0);
        pk[0] = p->key[2 * pe];
        pk[1] = p->key[2 * pe + 1];
    }
    /* As in lookup: below a parent with few children its child list decides
     * (a duplicate is found there with its stored key, nothing to hash);
     * otherwise the key is computed, token words a window of blocks at a time. */
    sip_state st[SIP_LANES];
    int32_t win = 0, nwin = 0, cursor = 0;
    prefix_extras x = {r->adapter, r->mm, r->nmm};
    int extras = r->adapter || r->nmm;
    for (; j < full; j++) {
        const int32_t *tk = seq_tokens_at(t, r, j * bs);
        uint64_t key[2], xd = extras ? prefix_extras_digest(p, &x, j, &cursor) : 0;
        int32_t own = r->blocks[j], scanned;
        int32_t found = scan_children(p, pe, xd, tk, &scanned);
        if (found >= 0) {
            key[0] = p->key[2 * found];
            key[1] = p->key[2 * found + 1];
        } else {
            if (j >= win + nwin) {
                win = j;
                nwin = full - j < SIP_LANES ? full - j : SIP_LANES;
                sip_absorb_blocks(p->k, tk, bs, nwin, st);
            }
            key_finish(p, &st[j - win], tk, r->ns, pk, xd, key);
            if (!scanned) found = index_find(p, key, pe, r->ns, xd, tk, 1, 1);
        }
        if (found >= 0 && p->loc[found] < 0) {
            /* The identity lives only in a tier, or is a window cache's ghost:
             * the pool holds it again here. */
            pkv_assert(!p->pool->cached[own]);
            if (p->pool->cached[own]) break;
            int ghost = is_ghost(p, found);
            prefix_place(p, found, own);
            if (ghost) {
                p->ghosts--;
                event(p, PKV_EVENT_STORED, found, r->ns);
            }
        } else if (found >= 0 && p->loc[found] != own) {
            if (written_len >= 0 && (int64_t)(j + 1) * bs > written_len) break;
            /* a block still loading holds no KV yet: deduplicate later */
            if (p->pool->loading && p->pool->loading[p->loc[found]]) break;
            seq_replace_block(t, r, j, p->loc[found]);
            dd++;
        } else if (found < 0) {
            /* A block cached under another identity cannot sit here (a
             * cached block is full and every holder has the same tokens
             * before it); stop rather than index it twice. */
            pkv_assert(!p->pool->cached[own]);
            if (p->pool->cached[own]) break;
            /* A window cache's ghosts take ids beyond one per block: its index
             * grows; without memory the registration ends here. */
            if (p->efree < 0 &&
                (!p->al || p->ecap == INT32_MAX ||
                 prefix_grow(p, p->al, p->ecap > INT32_MAX / 2 ? INT32_MAX : 2 * p->ecap) != PKV_OK))
                break;
            found = entry_insert(p, own, key, pe, r->ns, xd, tk);
            p->pool->cached[own] = 1;
            reg++;
        }
        r->nregistered = j + 1;
        pk[0] = key[0];
        pk[1] = key[1];
        pe = found;
    }
    if (r->nregistered > first) seq_drop_registered_tokens(t, r);
    p->registrations += reg;
    p->dedups += dd;
    if (registered) *registered = reg;
    if (deduped) *deduped = dd;
}

/* ---- lookup ---- */

/* The chain walk: entry ids into ents (NULL: not written), and the length of
 * its leading run of pool-resident entries into *lead (may be NULL). */
static int32_t match_walk(pkv_prefix *p, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n,
                          int32_t *ents, int32_t *lead) {
    int32_t bs = p->bs, full = n / bs, in_pool = 1;
    if (lead) *lead = 0;
    /* Below a parent with few children the children's tokens are compared
     * directly (the chain's keys are stored, nothing to hash); elsewhere the
     * block's key is computed and probed. Token words are absorbed a window of
     * blocks at a time so that consecutive hashed levels run in parallel lanes. */
    int32_t pe = -1, m = 0, win = 0, nwin = 0, cursor = 0;
    int extras = x && (x->adapter || x->nmm); /* without, every digest is 0: no call per block */
    sip_state lanes[SIP_LANES];
    while (m < full) {
        const int32_t *t = tokens + (size_t)m * (size_t)bs;
        uint64_t xd = extras ? prefix_extras_digest(p, x, m, &cursor) : 0;
        int scanned;
        int32_t e = scan_children(p, pe, xd, t, &scanned);
        if (!scanned) {
            if (m >= win + nwin) {
                win = m;
                nwin = m == 0 ? 1 : (full - m < SIP_LANES ? full - m : SIP_LANES);
                sip_absorb_blocks(p->k, t, bs, nwin, lanes);
            }
            /* The low word probes; a hit is confirmed by the identity and its
             * full key is the stored one, so the high word is not computed. */
            uint64_t pk[2] = {0, 0}, key[2];
            if (pe >= 0) {
                pk[0] = p->key[2 * pe];
                pk[1] = p->key[2 * pe + 1];
            }
            key[0] = sip_finish_block_lo_x(&lanes[m - win], t, bs, ns, pk, xd);
            key[1] = 0;
            key_weaken(key);
            e = index_find(p, key, pe, ns, xd, t, 1, 0);
        }
        if (e < 0) break;
        if (ents) ents[m] = e;
        in_pool = in_pool && p->loc[e] >= 0;
        if (lead && in_pool) *lead = m + 1;
        m++;
        pe = e;
    }
    return m;
}

int32_t prefix_match_entries(pkv_prefix *p, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n,
                             int32_t *ents) {
    return match_walk(p, ns, x, tokens, n, ents, NULL);
}

int32_t prefix_peek(pkv_prefix *p, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n,
                    int32_t *pool_lead) {
    return match_walk(p, ns, x, tokens, n, NULL, pool_lead);
}

void prefix_count_query(pkv_prefix *p, int32_t n, int32_t hit_tokens) {
    p->queries++;
    p->query_tokens += n;
    p->hit_tokens += hit_tokens;
}

int32_t prefix_match(pkv_prefix *p, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n,
                     int32_t *blocks) {
    int32_t m = prefix_match_entries(p, ns, x, tokens, n, blocks), k = 0;
    while (k < m && p->loc[blocks[k]] >= 0) {
        blocks[k] = p->loc[blocks[k]];
        k++;
    }
    prefix_count_query(p, n, k * p->bs);
    return k;
}

/* ---- statistics and checks ---- */

void prefix_stats(const pkv_prefix *p, pkv_stats *out) {
    if (!p) return;
    out->cached_blocks = p->count - p->ghosts;
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
    int64_t ctr[12] = {p->count, p->queries, p->query_tokens, p->hit_tokens, p->dedups,   p->registrations,
                       p->orphans, p->orphan_frees, p->child_scan, p->efree, p->ghosts, p->ecap};
    put(w, ctr, sizeof ctr);
    put(w, p->tab, p->cap * sizeof *p->tab);
    for (int32_t e = 0; e < p->ecap; e++) {
        int32_t links[7] = {e, p->loc[e], p->emask[e], p->parent[e], p->child[e], p->link[e].sib.next, p->link[e].sib.prev};
        put(w, links, sizeof links);
        if (!p->emask[e]) continue;
        put(w, p->key + 2 * e, 2 * sizeof *p->key);
        put(w, p->xd + e, sizeof *p->xd);
        put(w, ent_toks(p, e), (size_t)p->bs * sizeof(int32_t));
    }
}

/* Every live entry's parent chain (live entries, no cycle) and its namespace,
 * the first block's, into nsof; state: 0 not seen, 1 on the walk, 2 done. */
static int check_chains(const pkv_prefix *p, uint8_t *state, uint64_t *nsof, pkv_detail *d) {
    for (int32_t e = 0; e < p->ecap; e++) {
        if (!(p->emask[e] & 1) || state[e] == 2) continue;
        int32_t x = e;
        while (state[x] == 0 && p->parent[x] >= 0) {
            int32_t par = p->parent[x];
            if (par >= p->ecap || !(p->emask[par] & 1))
                return pkv__fail(d, PKV_ERR_CORRUPT, "entry %d has parent %d not cached here", x, par);
            state[x] = 1;
            x = par;
        }
        if (state[x] == 1) return pkv__fail(d, PKV_ERR_CORRUPT, "entry %d: its parent chain has a cycle", e);
        uint64_t ns = state[x] == 2 ? nsof[x] : p->link[x].ns;
        for (int32_t y = e;; y = p->parent[y]) {
            nsof[y] = ns;
            state[y] = 2;
            if (y == x) break;
        }
    }
    return PKV_OK;
}

/* The index against the entries and the pool's cached bits, each entry against
 * its recomputed key and its parent, the child lists and the free ids. */
static int check_index(pkv_prefix *p, uint8_t *seen, const uint64_t *nsof, pkv_detail *d) {
    const pkv_pool *pool = p->pool;
    int32_t n = 0, with_parent = 0, ghosts = 0;
    for (size_t i = 0; i < p->cap; i++) {
        if (!p->tab[i]) continue;
        int32_t e = slot_ent(p, p->tab[i]);
        if (e < 0 || e >= p->ecap || !(p->emask[e] & 1) || seen[e]++)
            return pkv__fail(d, PKV_ERR_CORRUPT, "index slot %zu holds entry %d (free or twice)", i, e);
        int32_t b = p->loc[e];
        if (b < 0 && p->emask[e] == 1) {
            if (!p->al || p->child[e] < 0)
                return pkv__fail(d, PKV_ERR_CORRUPT, "entry %d lives nowhere (no block, no tier)%s", e,
                                 p->al ? " and has no children" : "");
            ghosts++;
        }
        if (b >= p->nb || (b >= 0 && (!pool->cached[b] || p->ent_of_block[b] != e)))
            return pkv__fail(d, PKV_ERR_CORRUPT, "entry %d is located at block %d, which is not its cached block", e,
                             b);
        uint64_t h = key_mix(p->key[2 * e]);
        if ((p->tab[i] & ~p->emk) != slot_tag(p, h))
            return pkv__fail(d, PKV_ERR_CORRUPT, "index slot %zu: tag disagrees with entry %d's key", i, e);
        for (size_t k = home_of(p, h); k != i; k = next_slot(p, k))
            if (!p->tab[k])
                return pkv__fail(d, PKV_ERR_CORRUPT, "index: entry %d unreachable from its home slot", e);
        int32_t par = p->parent[e];
        uint64_t pk[2] = {0, 0}, key[2];
        if (par >= 0) {
            pk[0] = p->key[2 * par];
            pk[1] = p->key[2 * par + 1];
            with_parent++;
        }
        sip_state st;
        sip_absorb_blocks(p->k, ent_toks(p, e), p->bs, 1, &st);
        key_finish(p, &st, ent_toks(p, e), nsof[e], pk, p->xd[e], key);
        if (key[0] != p->key[2 * e] || key[1] != p->key[2 * e + 1])
            return pkv__fail(d, PKV_ERR_CORRUPT, "entry %d: key differs from its recomputed key", e);
        if (index_find(p, key, par, nsof[e], p->xd[e], ent_toks(p, e), 0, 1) != e)
            return pkv__fail(d, PKV_ERR_CORRUPT, "entry %d: its identity is indexed twice", e);
        n++;
    }
    if (n != p->count) return pkv__fail(d, PKV_ERR_CORRUPT, "index holds %d entries, count says %d", n, p->count);
    if (ghosts != p->ghosts)
        return pkv__fail(d, PKV_ERR_CORRUPT, "index holds %d ghost entries, count says %d", ghosts, p->ghosts);
    for (int32_t b = 0; b < p->nb; b++) {
        int32_t e = p->ent_of_block[b];
        if (pool->cached[b] != (e >= 0))
            return pkv__fail(d, PKV_ERR_CORRUPT, "block %d: cached %d but entry %d", b, pool->cached[b], e);
        if (e >= 0 && (e >= p->ecap || !seen[e]))
            return pkv__fail(d, PKV_ERR_CORRUPT, "block %d is marked cached but its entry %d is not indexed", b, e);
    }
    int32_t linked = 0, nfree = 0;
    for (int32_t e = 0; e < p->ecap; e++) {
        if (!(p->emask[e] & 1)) continue;
        for (int32_t x = p->child[e], prev = -1; x >= 0; prev = x, x = p->link[x].sib.next)
            if (x >= p->ecap || !(p->emask[x] & 1) || p->parent[x] != e || p->link[x].sib.prev != prev || ++linked > n)
                return pkv__fail(d, PKV_ERR_CORRUPT, "child list of entry %d broken at %d", e, x);
    }
    if (linked != with_parent)
        return pkv__fail(d, PKV_ERR_CORRUPT, "%d entries have a parent, child lists hold %d", with_parent, linked);
    for (int32_t e = p->efree; e >= 0; e = p->link[e].sib.next)
        if (e >= p->ecap || p->emask[e] || ++nfree > p->ecap - n)
            return pkv__fail(d, PKV_ERR_CORRUPT, "free entry list broken at %d", e);
    if (nfree != p->ecap - n)
        return pkv__fail(d, PKV_ERR_CORRUPT, "%d free entry ids listed, %d expected", nfree, p->ecap - n);
    return PKV_OK;
}

/* Each sequence's registered blocks are cached, chained through their parents
 * in the sequence's namespace, with the extras digest of its extra keys. */
static int check_seq_entries(pkv_prefix *p, const pkv_seqtab *t, const uint64_t *nsof, pkv_detail *d) {
    for (int32_t i = 0; i < t->seqs_cap; i++) {
        const pkv_seq_rec *r = &t->seqs[i];
        if (!r->live) continue;
        prefix_extras x = {r->adapter, r->mm, r->nmm};
        int32_t cursor = 0;
        for (int32_t j = 0; j < r->nregistered; j++) {
            uint64_t xd = prefix_extras_digest(p, &x, j, &cursor);
            /* a window released the blocks before nreleased (their entries may be ghosts) */
            if (j < r->nreleased) continue;
            int32_t b = r->blocks[j], e = b >= 0 ? p->ent_of_block[b] : -1;
            int32_t want_parent = j ? (r->blocks[j - 1] >= 0 ? p->ent_of_block[r->blocks[j - 1]] : -2) : -1;
            if (e < 0 || (want_parent != -2 && p->parent[e] != want_parent) || nsof[e] != r->ns || p->xd[e] != xd)
                return pkv__fail(d, PKV_ERR_CORRUPT, "sequence %d: registered block %d (#%d) disagrees with the index",
                                 i, b, j);
        }
    }
    return PKV_OK;
}

int prefix_check(pkv_prefix *p, pkv_seqtab *t, const pkv_allocator *al, pkv_detail *d) {
    uint8_t *seen = pkv_mem_calloc(al, (size_t)p->ecap, 2); /* [ecap] slots seen, [ecap] chain states */
    uint64_t *nsof = pkv_mem_alloc(al, (size_t)p->ecap * sizeof *nsof);
    int st = seen && nsof ? PKV_OK : PKV_ERR_NOMEM;
    if (st == PKV_OK) st = check_chains(p, seen + p->ecap, nsof, d);
    if (st == PKV_OK) st = check_index(p, seen, nsof, d);
    if (st == PKV_OK) st = check_seq_entries(p, t, nsof, d);
    pkv_mem_free(al, seen);
    pkv_mem_free(al, nsof);
    return st;
}

int prefix_check_off(const pkv_pool *pool, pkv_detail *d) {
    for (int32_t b = 0; b < pool->num_blocks; b++)
        if (pool->cached[b]) return pkv__fail(d, PKV_ERR_CORRUPT, "block %d is cached but prefix caching is off", b);
    return PKV_OK;
}
