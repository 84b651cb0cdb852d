/* Private types shared by the modules of pagedkv, and the assert levels.
 * Layering (docs/ARCHITECTURE.md): pool <- seq <- prefix <- store <- cache (the
 * handle, the only layer that orchestrates) <- export; attn stands alone. A
 * module calls only the modules to its left; failures come back as a status
 * and a pkv_detail, and only the cache records pkv_cache_last_error. */
#ifndef PKV_INTERNAL_H
#define PKV_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "pagedkv.h"

/* PKV_DEBUG: 0 none, 1 cheap internal asserts, 2 also expensive ones. */
#ifndef PKV_DEBUG
#define PKV_DEBUG 0
#endif
#if PKV_DEBUG >= 1
#include <assert.h>
#define pkv_assert(c) assert(c)
#else
#define pkv_assert(c) ((void)0)
#endif

#define PKV_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PKV_LIKELY(x) __builtin_expect(!!(x), 1)
#define PKV_HIDDEN __attribute__((visibility("hidden")))

/* Check-and-return: the one propagation idiom. */
#define RETURN_IF(cond, status) \
    do { if (PKV_UNLIKELY(cond)) return (status); } while (0)
#define FORWARD_IF_ERROR(expr) \
    do { int st_ = (expr); if (PKV_UNLIKELY(st_ < 0)) return st_; } while (0)

/* ---- growable public structs (the ABI rule in pagedkv.h) ----
 * Sizes of the first released layouts: a struct smaller than these is refused.
 * When a field is appended in a later minor version, these stay as they are
 * (they are the 1.0 sizes) and the new field must mean "default" when zero. */
#define PKV_CONFIG_SIZE_1_0 ((size_t)88)
#define PKV_STATS_SIZE_1_0 ((size_t)112)
#define PKV_TIER_STATS_SIZE_1_0 sizeof(pkv_tier_stats)
#define PKV_TIER_BACKEND_SIZE_1_0 ((size_t)64)
#define PKV_ATTN_ARGS_SIZE_1_0 ((size_t)144)
#define PKV_EXTRA_KEYS_SIZE_1_1 sizeof(pkv_extra_keys)
/* Copies a caller's struct (its first field the uint32_t size) into dst, which
 * holds the library's defaults and is dst_size bytes: PKV_ERR_INVALID when the
 * caller's size is below min_size, or above dst_size with a non-zero byte the
 * library does not know. dst->size becomes dst_size. */
int pkv__struct_import(void *dst, size_t dst_size, const void *src, size_t min_size);
/* Copies src (the library's struct, src_size bytes) into the caller's dst up to
 * dst's own size (already checked to be >= the 1.0 size), leaving dst->size. */
void pkv__struct_export(void *dst, const void *src, size_t src_size);

/* n random bytes from the OS (getrandom, else /dev/urandom). */
int pkv_os_random(void *out, size_t n);

/* ---- memory through the configured hook ---- */
void *pkv_mem_alloc(const pkv_allocator *al, size_t size);
void *pkv_mem_calloc(const pkv_allocator *al, size_t n, size_t size);
void pkv_mem_free(const pkv_allocator *al, void *p);
/* Grows *arr (element size esz) to hold at least need elements; amortized doubling.
 * On failure *arr and *cap are unchanged. */
int pkv_mem_grow(const pkv_allocator *al, void **arr, int32_t *cap, int32_t need, size_t esz);

/* ---- error detail ----
 * A lower layer that fails writes its reason into the pkv_detail it was handed
 * and returns the status; only the cache layer owns one (pkv_cache_last_error). */
typedef struct pkv_detail {
    char text[256];
} pkv_detail;
/* Formats the reason into d (d may be NULL) and returns status. */
int pkv__fail(pkv_detail *d, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- block pool (pool.c): the bottom layer ---- */
enum { BLOCK_FREE = 0, BLOCK_USED = 1, BLOCK_EVICTABLE = 2 };

typedef struct pkv_pool {
    int32_t num_blocks, block_size;
    int32_t *refcount;   /* [num_blocks] */
    uint8_t *state;      /* [num_blocks] BLOCK_* */
    uint8_t *cached;     /* [num_blocks] 1 = its contents are promised by the prefix index */
    int32_t *free_stack; /* [num_blocks] LIFO of free block ids */
    int32_t free_top;
    /* Evictable blocks: an intrusive doubly linked list, least recently used at
     * head (NULL arrays when no block can be cached). */
    int32_t *lru_prev, *lru_next;
    int32_t lru_head, lru_tail, num_evictable;
    int32_t used, shared, peak_used;
    int64_t evictions;
    /* NULL, or [num_blocks] 1 while an I/O thread fills the block (asynchronous
     * loads: tier_async.c owns the array); such a block holds no KV yet. */
    const uint8_t *loading;
} pkv_pool;

/* with_lru: blocks can be cached (a prefix index exists), so evictable ones
 * need the LRU list; without, pool_uncache and marking blocks cached are not used. */
int pool_init(pkv_pool *p, const pkv_allocator *al, int32_t num_blocks, int32_t block_size, int with_lru);
void pool_destroy(pkv_pool *p, const pkv_allocator *al);
/* Blocks an allocation can take right now (free + evictable). */
static inline int32_t pool_available(const pkv_pool *p) { return p->free_top + p->num_evictable; }
/* Takes a free block, else reclaims the LRU evictable one (*reclaimed = 1: the
 * caller must tell the prefix index, which still names it, before anything else
 * reads the index); refcount becomes 1. Returns the id, or -1 when none is
 * available (nothing changed). */
int32_t pool_alloc(pkv_pool *p, int *reclaimed);
/* One more holder of a used or evictable block (an evictable one is reclaimed). */
void pool_ref(pkv_pool *p, int32_t block);
/* One holder fewer; at 0 the block becomes evictable (cached) or free. */
void pool_unref(pkv_pool *p, int32_t block);
/* Reclaims the least recently used evictable block onto the free list (its
 * contents intact until reused; the caller tells the index). -1 when none. */
int32_t pool_evict_lru(pkv_pool *p);
/* Evictable block -> head of the LRU list (evicted next). */
void pool_evict_first(pkv_pool *p, int32_t block);
/* The index stops promising block's contents: an evictable block goes to the
 * free list (returns 1), a used one only loses its mark (returns 0). */
int pool_uncache(pkv_pool *p, int32_t block);
/* Pool invariants (states, counters, free stack, LRU list); seen: num_blocks
 * ints of scratch. */
int pool_check(const pkv_pool *p, int32_t *seen, pkv_detail *d);

/* ---- sequences (seq.c): block lists, lengths, token ids; above the pool ---- */
typedef struct pkv_seq_rec {
    int32_t len;          /* tokens */
    int32_t nblocks;      /* == ceil(len / block_size) */
    int32_t blocks_cap;
    int32_t *blocks;      /* [blocks_cap] */
    int32_t ntokens;      /* token ids known for positions [0, ntokens) */
    int32_t tok_base;     /* == nregistered * block_size: the ids of positions below it
                           * are the prefix index's (stored once, in the entries) */
    int32_t tokens_cap;
    int32_t *tokens;      /* [tokens_cap] ids of positions [tok_base, ntokens) */
    int32_t nregistered;  /* blocks [0, nregistered) are entries of the prefix index */
    int32_t last_start, last_n; /* range of the last append, for the slot mapping */
    int32_t lookahead;    /* the last lookahead tokens are drafts: never registered */
    int32_t nreleased;    /* window caches: blocks [0, nreleased) left the window, released
                           * (their entries in blocks[] are -1) */
    int32_t swapped;      /* 1: swapped out (swap.c): blocks[] holds tier-0 slots (metadata
                           * mode) or nothing (host mode: the rows are in swap_buf) */
    int32_t load_cut;     /* 1: a failed tier load cut it; calls refuse until pkv_seq_load_poll,
                           * _wait or pkv_seq_length has reported the new length */
    int32_t grouped;      /* 1: a sequence of a KV group (groups.c): changed only through pkv_groups_* */
    void *swap_buf;       /* host mode: the rows of a swapped-out sequence */
    size_t swap_size;     /* its size in bytes (at least the rows') */
    uint64_t ns;          /* namespace */
    uint64_t adapter;     /* extra key of every block (LoRA adapter id), 0 none */
    int32_t nmm, mm_cap;  /* multimodal ranges, by start, non-overlapping */
    pkv_mm_range *mm;     /* [mm_cap] */
    uint32_t gen;         /* generation of this record slot; part of the handle */
    int32_t live;         /* 1 in use; 0 on the free list */
    int32_t next_free;    /* free-list link of record slots */
} pkv_seq_rec;
/* A record slot whose generation reaches this is never reused (its handles
 * would repeat): it stays off the free list for the cache's lifetime. */
#define SEQ_GEN_MAX 0x7fffffffu

/* The table of sequence records. */
typedef struct pkv_seqtab {
    const pkv_allocator *al;
    pkv_pool *pool;       /* the blocks the records hold */
    pkv_seq_rec *seqs;
    int32_t seqs_cap, num_seqs, seq_free_head;
    uint32_t handle_salt; /* XORed into handles' index bits: another cache's handles miss */
    int32_t min_tokens_cap; /* block_size with prefix caching: a truncate into registered
                             * blocks restores one block's ids without allocating */
    int64_t tokens;       /* sum of lengths */
} pkv_seqtab;

void seq_init(pkv_seqtab *t, const pkv_allocator *al, pkv_pool *pool, uint32_t salt, int32_t min_tokens_cap);
void seq_destroy(pkv_seqtab *t);
/* Resolves a handle to its live record, or NULL. */
pkv_seq_rec *seq_get(pkv_seqtab *t, pkv_seq h);
pkv_seq seq_handle(const pkv_seqtab *t, const pkv_seq_rec *r);
static inline int32_t seq_blocks_for(const pkv_seqtab *t, int64_t len) {
    return (int32_t)((len + t->pool->block_size - 1) / t->pool->block_size);
}
/* Makes room for nblocks blocks and stored token ids (positions from tok_base
 * on; at least min_tokens_cap) without changing contents. */
int seq_reserve(pkv_seqtab *t, pkv_seq_rec *r, int32_t nblocks, int32_t stored_tokens);
/* The ids of positions [pos, ...) (pos >= r->tok_base). */
static inline const int32_t *seq_tokens_at(const pkv_seqtab *t, const pkv_seq_rec *r, int32_t pos) {
    (void)t;
    return r->tokens + (pos - r->tok_base);
}
/* Makes room for nmm multimodal ranges (all or nothing). */
int seq_reserve_mm(pkv_seqtab *t, pkv_seq_rec *r, int32_t nmm);
/* After registration moved nregistered up: the ids of registered blocks now
 * live in the index; the record keeps the rest. */
void seq_drop_registered_tokens(pkv_seqtab *t, pkv_seq_rec *r);
/* After registration dropped most of r's stored ids: moves them into buf (cap
 * ids, from the allocator) when they fit and returns 1 (the old array is
 * freed); returns 0 and leaves r as it was otherwise (the caller frees buf). */
int seq_swap_tokens(pkv_seqtab *t, pkv_seq_rec *r, int32_t *buf, int32_t cap);
/* A committed, reserved, empty record takes the m cached blocks[0..m) as its
 * registered prefix (one more holder each, unless the caller holds them
 * already for it: held). */
void seq_adopt_prefix(pkv_seqtab *t, pkv_seq_rec *r, const int32_t *blocks, int32_t m, int held);
/* Two-phase creation for calls that reserve before they commit (create, fork,
 * lookup): prepare finds a free record slot, growing the table if needed,
 * without taking it; its arrays may then be reserved; commit takes it. */
int seq_slot_prepare(pkv_seqtab *t, int32_t *idx);
pkv_seq_rec *seq_slot_commit(pkv_seqtab *t, int32_t idx, uint64_t ns);
/* Whether appending n tokens to r must first copy its last block: it is partly
 * filled and someone else holds it or the prefix index promises its contents. */
int seq_needs_cow(const pkv_seqtab *t, const pkv_seq_rec *r, int32_t n);
/* Moves r's block j onto block b (one more holder of b, one fewer of the old). */
void seq_replace_block(pkv_seqtab *t, pkv_seq_rec *r, int32_t j, int32_t b);
/* Appends n tokens (token ids when tokens != NULL and r knows all its ids so
 * far) on blocks already pushed: r must hold ceil((len + n) / bs) blocks and
 * room for the tokens (seq_reserve). Writes each token's slot into slots. */
void seq_extend(pkv_seqtab *t, pkv_seq_rec *r, int32_t n, const int32_t *tokens, int64_t *slots);
/* Window caches: releases r's blocks [nreleased, upto) (they left the window),
 * first to last, their entries becoming -1. */
void seq_release_before(pkv_seqtab *t, pkv_seq_rec *r, int32_t upto);
/* Shortens r to new_len, releasing blocks past it (last first). When new_len
 * falls inside a registered block that keeps some known ids, block_toks are
 * that block's ids (from the index) and are restored into the record. */
void seq_truncate(pkv_seqtab *t, pkv_seq_rec *r, int32_t new_len, const int32_t *block_toks);
/* Block index j such that truncating r to new_len needs block j's ids from the
 * index (seq_truncate's block_toks), or -1. */
int32_t seq_truncate_needs_tokens(const pkv_seqtab *t, const pkv_seq_rec *r, int32_t new_len);
/* Copies parent into the committed, reserved record child (sharing its blocks). */
void seq_copy(pkv_seqtab *t, const pkv_seq_rec *parent, pkv_seq_rec *child);
/* Releases r's blocks (last first) and returns its slot to the free list. */
void seq_retire(pkv_seqtab *t, pkv_seq_rec *r);
/* Sequence invariants and refcounts (every refcount == holders); count and
 * owner: num_blocks ints of scratch each. has_prefix: registered blocks allowed. */
/* count[num_blocks] holds the other holders' references on entry (zeroed by the caller). */
int seq_check(pkv_seqtab *t, int has_prefix, int32_t *count, int32_t *owner, pkv_detail *d);

/* ---- prefix index (prefix.c): above sequences ---- */
typedef struct pkv_prefix pkv_prefix; /* defined by prefix.c */

/* The extra keys of a prompt or sequence (adapter, multimodal ranges sorted by
 * start and non-overlapping); a block's share of them is its extras digest. */
typedef struct prefix_extras {
    uint64_t adapter;
    const pkv_mm_range *mm;
    int32_t nmm;
} prefix_extras;
/* The extras digest of block j (tokens [j * bs, (j + 1) * bs)) under x (NULL:
 * none): 0 when the block has no extra key (no adapter, no range overlaps it),
 * else a non-zero keyed 64-bit SipHash of the adapter and, for each range
 * overlapping the block in order, its hash, its start relative to the block
 * and its length. *cursor (start 0, j increasing between calls) skips the
 * ranges wholly before the block. */
uint64_t prefix_extras_digest(const pkv_prefix *p, const prefix_extras *x, int32_t j, int32_t *cursor);

/* NULL-free creation: secret = the 16-byte hash key. */
int prefix_create(const pkv_allocator *al, pkv_pool *pool, const uint8_t secret[16], pkv_prefix **out);
void prefix_destroy(pkv_prefix *p, const pkv_allocator *al);
/* Block b (was cached, now taken by pool_alloc) leaves the index, and with it,
 * leaf first, every cached descendant (unreachable without it). */
void prefix_forget(pkv_prefix *p, int32_t b);
/* Registers r's full blocks with known tokens past r->nregistered (cannot
 * fail). written_len < 0: all KV written, duplicates are deduplicated; else a
 * duplicate past written_len stops it. */
void prefix_register_seq(pkv_prefix *p, pkv_seqtab *t, pkv_seq_rec *r, int32_t written_len,
                         int32_t *registered, int32_t *deduped);
/* The longest chain of cached full blocks matching tokens[0..n) in ns: writes
 * its blocks into blocks[] (room for n / bs) and returns their count. Counts
 * the query in the statistics; changes nothing else. */
int32_t prefix_match(pkv_prefix *p, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n,
                     int32_t *blocks);
/* KV events (the queue lives with the index). */
int prefix_events_enable(pkv_prefix *p, const pkv_allocator *al, int32_t cap);
int prefix_events_drain(pkv_prefix *p, pkv_event *out, int32_t cap, int32_t *n, int64_t *dropped);
/* The token ids of cached block b (the entry located there), or NULL. */
const int32_t *prefix_block_tokens(const pkv_prefix *p, int32_t b);

/* Entries for the tier layer (an entry may live in the pool, in tiers, or both). */
typedef struct prefix_identity {
    uint64_t key[2], parent_key[2], ns;
    uint64_t xd;           /* extras digest, 0 none */
    int32_t parent;        /* parent entry, -1 for a chain's first block */
    const int32_t *toks;   /* [block_size] */
} prefix_identity;
/* Makes room for ecap entries in all (tiers hold entries the pool does not);
 * all or nothing. */
int prefix_grow(pkv_prefix *p, const pkv_allocator *al, int32_t ecap);
int32_t prefix_ecap(const pkv_prefix *p);
int32_t prefix_entry_of_block(const pkv_prefix *p, int32_t b);
int32_t prefix_entry_block(const pkv_prefix *p, int32_t e); /* pool block or -1 */
/* The identity's namespace is found by a walk up the chain (only a chain's
 * first block keeps it); prefix_entry_key is the key alone, without the walk. */
void prefix_identity_of(const pkv_prefix *p, int32_t e, prefix_identity *out);
void prefix_entry_key(const pkv_prefix *p, int32_t e, uint64_t key[2]);
/* Block b leaves the pool but its entry stays (it lives in a tier now). */
void prefix_unplace(pkv_prefix *p, int32_t b);
/* Entry e (not in the pool) is placed at pool block b (held by the caller). */
void prefix_place(pkv_prefix *p, int32_t e, int32_t b);
/* The first child of e, or -1; and the entry's removal (no children left; its
 * pool block, if any, stops being cached). Returns 1 when an evictable pool
 * block went to the free list. */
int32_t prefix_first_child(const pkv_prefix *p, int32_t e);
int32_t prefix_entry_parent(const pkv_prefix *p, int32_t e);
/* Whether id e names an entry (ids of dropped entries are not reused within a call). */
int prefix_entry_live(const pkv_prefix *p, int32_t e);
/* Tier membership of entry e (bit t: tier t holds it). */
uint8_t prefix_tiers_of(const pkv_prefix *p, int32_t e);
void prefix_set_tier(pkv_prefix *p, int32_t e, int t, int on);
int prefix_remove_entry(pkv_prefix *p, int32_t e);
/* A new entry of the identity id, at no location yet (restart); -1 when the
 * identity is already indexed or no entry id is free. */
int32_t prefix_insert_unplaced(pkv_prefix *p, const uint64_t key[2], int32_t parent, uint64_t ns, uint64_t xd,
                               const int32_t *toks);
/* The entry whose full key is key, or -1 (restart links chains by key). */
int32_t prefix_find_key(const pkv_prefix *p, const uint64_t key[2]);
/* The longest chain matching tokens[0..n) in ns, as entry ids (wherever they
 * live) into ents[] (room for n / bs); returns its length. No statistics. */
int32_t prefix_match_entries(pkv_prefix *p, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n,
                             int32_t *ents);
/* The chain's length as prefix_match_entries finds it, without writing it;
 * *pool_lead = how many of its first blocks are in the pool. */
int32_t prefix_peek(pkv_prefix *p, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n,
                    int32_t *pool_lead);
void prefix_count_query(pkv_prefix *p, int32_t n, int32_t hit_tokens);
/* Invariants of the index, and of the sequences' registered blocks against it. */
int prefix_check(pkv_prefix *p, pkv_seqtab *t, const pkv_allocator *al, pkv_detail *d);
/* No index: no block may be marked cached. */
int prefix_check_off(const pkv_pool *pool, pkv_detail *d);
/* Appends the prefix index's logical state to a canonical dump (tests). */
void prefix_dump(const pkv_prefix *p, void (*put)(void *w, const void *data, size_t n), void *w);
/* Fills the prefix fields of *out (evictions: adds orphans reclaimed with a block). */
void prefix_stats(const pkv_prefix *p, pkv_stats *out);
/* For tests: a block key from bytes, the cache's secret, key collisions seen. */
void prefix_block_key(const uint8_t secret[16], const int32_t *toks, int32_t bs, uint64_t ns,
                      const uint8_t parent[16], uint64_t xd, uint8_t out[16]);
/* Accessors for the cache's test hooks. */
void prefix_get_secret(const pkv_prefix *p, uint8_t out[16]);
int64_t prefix_get_collisions(const pkv_prefix *p);
void prefix_child_scan(pkv_prefix *p, int32_t n);
/* Makes p a window cache's index: entries whose block was reclaimed stay as
 * ghosts while they have children, and the index grows through al. */
void prefix_set_window(pkv_prefix *p, const pkv_allocator *al);
/* Lookup compares a parent's children directly when it has at most this many
 * (default PREFIX_CHILD_SCAN); tests set 0 to force the hashed path. */
#define PREFIX_CHILD_SCAN 8

/* ---- storage (store.c): KV arenas in host mode; above the prefix index ---- */
typedef struct pkv_store {
    int32_t enabled;
    const pkv_config *cfg;
    const pkv_allocator *al;
    const pkv_pool *pool;  /* slots are checked against the blocks in use */
    size_t k_row, v_row;   /* bytes per slot (all heads) */
    size_t k_block, v_block;
    void **k_raw, **v_raw; /* [num_layers] pointers from the allocator */
    uint8_t **k, **v;      /* [num_layers] 64-byte aligned arenas */
} pkv_store;

int store_init(pkv_store *s, const pkv_config *cfg, const pkv_allocator *al, const pkv_pool *pool);
void store_destroy(pkv_store *s);
/* Copies block src to dst in every layer (host mode; no-op otherwise). */
void store_copy_block(pkv_store *s, int32_t src, int32_t dst);
/* Bytes of block b's rows in every layer (K then V per layer), and copies of
 * them to o / from in (host mode). */
size_t store_block_bytes(const pkv_store *s);
/* piece (may be NULL): called with the end of the bytes copied so far (in o,
 * or read so far from in) after every piece of at most 4 KiB, so that a
 * checksum can follow the copy while the bytes are in L1. */
void store_block_out(const pkv_store *s, int32_t b, uint8_t *o, void (*piece)(void *, const uint8_t *), void *arg);
void store_block_in(pkv_store *s, int32_t b, const uint8_t *in, void (*piece)(void *, const uint8_t *), void *arg);
int store_write(pkv_store *s, int32_t layer, const int64_t *slots, int32_t n, const void *k_rows,
                const void *v_rows, int32_t src_dtype, pkv_detail *d);
int store_read(pkv_store *s, int32_t layer, const int64_t *slots, int32_t n, float *k_out, float *v_out,
               pkv_detail *d);
int store_arenas(pkv_store *s, int32_t layer, void **k, void **v, pkv_detail *d);

/* ---- tiers (tier.c): below the pool in placement, above the store in code ---- */
#define PKV_MAX_TIERS 3
typedef struct pkv_tier {
    pkv_tier_backend be;
    int64_t capacity, count;  /* entries, at most capacity */
    int32_t *prev, *next;     /* [ecap] LRU over the entries it holds, head = least recent */
    int32_t head, tail;
    int32_t host, degraded;
    int32_t shared;           /* PKV_TIER_SHARED: may hold blocks never indexed; never deleted from */
    /* Metadata mode (tier_meta.c): the tier hands out slots; the engine holds the bytes. */
    int32_t *slot_of;         /* [ecap] the slot of each entry it holds, -1 none */
    uint64_t *free_bits;      /* bit s: slot s is free ([words]), then bit w: word w has one */
    int64_t nfree, swapped;   /* free slots; slots held by swapped-out sequences */
    int64_t free_lo;          /* no summary word below it has a bit set */
    int64_t hits, misses, stores, evictions, errors, corrupt, restored, stray, bytes_in, bytes_out;
    double seconds_in, seconds_out;
} pkv_tier;

/* Whether slot s of a metadata-mode tier is free. */
static inline int tier_slot_free(const pkv_tier *t, int64_t s) { return (int)((t->free_bits[s >> 6] >> (s & 63)) & 1); }

/* A tier's LRU over the entries it holds (head = least recent); inline so that
 * tier.c and tier_meta.c, one layer, share it without calling each other. */
static inline void tier_lru_unlink(pkv_tier *t, int32_t e) {
    int32_t pr = t->prev[e], nx = t->next[e];
    if (pr >= 0) t->next[pr] = nx; else t->head = nx;
    if (nx >= 0) t->prev[nx] = pr; else t->tail = pr;
    t->prev[e] = t->next[e] = -1;
    t->count--;
}

static inline void tier_lru_push(pkv_tier *t, int32_t e) {
    t->prev[e] = t->tail;
    t->next[e] = -1;
    if (t->tail >= 0) t->next[t->tail] = e; else t->head = e;
    t->tail = e;
    t->count++;
}

typedef struct pkv_tiers {
    int n;
    int32_t pinned[2];        /* entries being moved (a promotion, an offload): eviction passes them over */
    pkv_tier t[PKV_MAX_TIERS];
    uint8_t *scratch[PKV_MAX_TIERS + 1]; /* blob buffers: one per level, one for promotion */
    int64_t dropped;          /* evictable pool blocks freed by dropping entries */
    int write_through;        /* PKV_TIER_WRITE_THROUGH on tier 0 */
    int shared;               /* 1 + the index of the PKV_TIER_SHARED tier, 0 when none */
    uint8_t *batch_buf;       /* blobs of a shared lookup's batch, kept between lookups */
    size_t batch_cap;
    int meta;                 /* metadata mode: slot tiers (tier_meta.c), transfers queued */
    pkv_tier_transfer *xfer;  /* [xfer_cap] transfers for the engine, oldest first */
    int32_t nxfer, xfer_cap;
    int64_t xfer_lost;        /* pushed without room: a missing reservation (a bug; check fails) */
} pkv_tiers;

struct pkv_cache;
/* Bytes of one blob of this cache's geometry. */
size_t tier_blob_size(const struct pkv_cache *c);
int tier_add(struct pkv_cache *c, const pkv_tier_backend *be, int64_t capacity_blocks, int host, uint32_t flags,
             pkv_detail *d);
/* Write-through: copies the entries at blocks[0..n) (just registered) into
 * tier 0 unless a tier holds them; a failure only counts (the pool keeps them). */
void tier_write_through(struct pkv_cache *c, const int32_t *blocks, int32_t n);
void tier_destroy(struct pkv_cache *c);
/* The pool reclaimed cached block b for a new owner: its entry moves to the
 * tiers (write-back) or, failing that, is dropped with its descendants. */
void tier_evicted(struct pkv_cache *c, int32_t b);
/* Copies entry e (in a tier, not the pool) into a block from take(c); 1 and
 * *block on success, 0 on a miss (the entry is dropped from that tier). */
int tier_promote(struct pkv_cache *c, int32_t e, int32_t (*take)(struct pkv_cache *), int32_t *block);
/* Shared tier: blocks[0..m) hold the pool blocks of the indexed chain of
 * tokens[0..n) in ns; asks the shared tier for the blocks that follow (keys
 * computed from the tokens), indexes and promotes each one that checks into a
 * block from take(c), appending it to blocks. Returns the new chain length. */
int32_t tier_shared_extend(struct pkv_cache *c, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n, int32_t m,
                           int32_t *blocks, int32_t (*take)(struct pkv_cache *));
int tier_check(struct pkv_cache *c, pkv_detail *d);
/* Drops entry e and its descendants from the index, the tiers and the pool's
 * cached marks (works without tiers too). */
void tier_drop_tree(struct pkv_cache *c, int32_t e);
void tier_stats(const struct pkv_cache *c, int ti, pkv_tier_stats *out);

/* Asynchronous promotion (tier_async.c; tier layer): I/O threads load
 * backend-tier blobs into pool blocks; the caller's thread reaps the results. */
typedef struct pkv_aio pkv_aio;
typedef struct aio_done {
    int32_t e, b, ti, st, ok; /* entry, pool block, tier; backend status; 1 when the block holds its KV */
    int64_t bytes;
    double seconds;
} aio_done;
/* Starts threads I/O threads and serializes each backend tier's calls. */
int aio_start(struct pkv_cache *c, int32_t threads, pkv_detail *d);
/* Runs what is queued, joins the threads, restores the backends (destroy). */
void aio_stop(struct pkv_cache *c);
/* Whether a job slot is free (aio_submit then succeeds). */
int aio_can_submit(const struct pkv_cache *c);
/* Queues the load of entry e from tier ti into block b (placed there by the
 * caller); the job holds a pool reference on b until it is reaped. */
void aio_submit(struct pkv_cache *c, int32_t e, int ti, int32_t b);
/* Up to cap finished loads into out (block != 0: waits for one when loads
 * are in flight and none has finished); the caller gives back each one's
 * pool reference. */
int32_t aio_reap(struct pkv_cache *c, aio_done *out, int32_t cap, int block);
/* Waits up to ms milliseconds for a finished load (no cache state touched:
 * callable without the cache's lock). */
void aio_wait(struct pkv_cache *c, int ms);
int aio_is_loading(const struct pkv_cache *c, int32_t b);
int64_t aio_inflight(const struct pkv_cache *c);
/* Adds the jobs' pool references to count[num_blocks] (pkv_cache_check). */
void aio_count_refs(const struct pkv_cache *c, int32_t *count);
/* I/O thread side: whether blob[0..len) is id's block; if so its rows are now
 * in pool block b (checked as they are copied). Reads only the blob, id and
 * the geometry; writes only block b. */
int tier_blob_load(const struct pkv_cache *c, const uint8_t *blob, size_t len, const prefix_identity *id, int32_t b);
/* The first tier that holds entry e, or -1. */
int tier_first_holding(const struct pkv_cache *c, int32_t e);
/* Applies a finished load: stats; on failure drops the entry (and what chains
 * below it). Returns dn->ok. The caller cuts the sequences that hold a failed block. */
int tier_load_done(struct pkv_cache *c, const aio_done *dn);

/* ---- metadata-mode tiers (tier_meta.c): slots and transfer lists ----
 * The same placement as tier.c (offload on pool reclaim, promotion on lookup,
 * demotion to the next tier, drop from the last), but a tier holds no bytes:
 * it hands out slots and queues the transfers the engine performs. */
int tmeta_add(struct pkv_cache *c, int64_t capacity_blocks, uint32_t flags, pkv_detail *d);
void tmeta_destroy(struct pkv_cache *c);
/* Room for the transfers of an operation that takes up to `blocks` pool blocks
 * (each may cascade through every tier) plus `extra` transfers: all or nothing. */
int tmeta_reserve(struct pkv_cache *c, int64_t blocks, int64_t extra);
void tmeta_evicted(struct pkv_cache *c, int32_t b);
int tmeta_promote(struct pkv_cache *c, int32_t e, int32_t (*take)(struct pkv_cache *), int32_t *block);
void tmeta_drop_tree(struct pkv_cache *c, int32_t e);
int tmeta_check(struct pkv_cache *c, pkv_detail *d);
/* Swap slots of tier 0: how many could be taken now (evicting cached entries
 * as needed), taking them (the caller checked), and giving one back. */
int64_t tmeta_swap_room(const struct pkv_cache *c);
void tmeta_swap_take(struct pkv_cache *c, int32_t n, int32_t *slots);
void tmeta_swap_give(struct pkv_cache *c, int32_t slot);
/* Queues one transfer (room reserved by tmeta_reserve). */
void tmeta_push(struct pkv_cache *c, int op, int tier, int32_t block, int64_t slot, int64_t dst_slot, int32_t e);
int tmeta_drain(struct pkv_cache *c, pkv_tier_transfer *out, int32_t cap, int32_t *n);

/* ---- the cache handle (cache.c, ops.c): the top, the only orchestrator ---- */
struct pkv_cache {
    pkv_config cfg;
    pkv_allocator al;
    int32_t thread_safe;
    pthread_mutex_t lock;
    pkv_pool pool;
    pkv_seqtab seqs;
    pkv_prefix *prefix;   /* NULL unless PKV_FLAG_PREFIX_CACHE */
    pkv_store store;
    pkv_tiers tiers;
    int64_t cow_copies;
    /* host mode: the largest buffer a swap-in gave back, kept for the next
     * swap-out (its pages are warm: fresh memory costs a page fault per 4 KiB) */
    void *swap_spare;
    size_t swap_spare_size;
    pkv_aio *aio;         /* NULL until pkv_tier_async_start */
    pkv_detail err;
};

/* The entry a full tier lets go first: its least recently used one that is
 * not pinned (-1 when only pinned entries are left). */
static inline int32_t tier_lru_victim(const pkv_cache *c, const pkv_tier *t) {
    int32_t x = t->head;
    /* pinned entries, and entries an I/O thread is loading (their blob is being read) */
    while (x >= 0 && (x == c->tiers.pinned[0] || x == c->tiers.pinned[1] ||
                      (c->pool.loading && prefix_entry_block(c->prefix, x) >= 0 &&
                       c->pool.loading[prefix_entry_block(c->prefix, x)])))
        x = t->next[x];
    return x;
}

/* Drops entry e and every descendant from the index, leaf first, taking each
 * out of the tiers that hold it with remove(c, ti, x) (the byte tiers' or the
 * slot tiers'); counts the evictable pool blocks freed. Inline: tier.c and
 * tier_meta.c, one layer, share it without calling each other. */
static inline void tier_drop_subtree(pkv_cache *c, int32_t e, void (*remove)(pkv_cache *, int, int32_t)) {
    pkv_prefix *p = c->prefix;
    int32_t x = e;
    for (;;) {
        int32_t kid = prefix_first_child(p, x);
        if (kid >= 0) {
            x = kid;
            continue;
        }
        int32_t parent = prefix_entry_parent(p, x);
        uint8_t tiers = prefix_tiers_of(p, x);
        for (int ti = 0; ti < c->tiers.n; ti++)
            if (tiers & (1u << ti)) remove(c, ti, x);
        c->tiers.dropped += prefix_remove_entry(p, x);
        if (x == e) return;
        x = parent;
    }
}

/* A block from the pool for a new owner (ops.c); a reclaimed cached block is
 * offloaded to the tiers or forgotten first. The caller checked availability. */
int32_t cache_take_block(pkv_cache *c);
/* Swap (swap.c): the bodies of pkv_seq_swap_out / _in on a live record; the
 * release of a swapped record's slots or buffer (free); buffers at destroy;
 * the invariants of swapped records. */
int swap_out_op(pkv_cache *c, pkv_seq_rec *r);
int swap_in_op(pkv_cache *c, pkv_seq_rec *r);
void swap_release(pkv_cache *c, pkv_seq_rec *r);
void swap_destroy(pkv_cache *c);
int swap_check(pkv_cache *c, pkv_detail *d);

/* An append split for KV groups (ops.c): prepare validates and reserves (the
 * only step that can fail), commit changes the cache, abandon releases what
 * a prepare reserved when the append is not committed. */
typedef struct append_plan {
    pkv_seq_rec *r;
    int32_t n, new_blocks, cow_needed, spare_cap;
    int32_t *spare;
    const int32_t *tokens;
    int64_t *slots;
    pkv_block_copy *cow;
    int record_tokens, auto_reg, lookahead;
} append_plan;
int cache_append_prepare(pkv_cache *c, pkv_seq h, int32_t n, const int32_t *tokens, int64_t *slots,
                         pkv_block_copy *cow, int lookahead, append_plan *pl);
void cache_append_commit(pkv_cache *c, append_plan *pl);
void cache_append_abandon(pkv_cache *c, append_plan *pl);
/* Fork and truncate split the same way (no abandon needed: a prepared record
 * slot is only capacity). */
int cache_fork_prepare(pkv_cache *c, pkv_seq parent, int32_t *idx);
pkv_seq cache_fork_commit(pkv_cache *c, pkv_seq parent, int32_t idx);
int cache_truncate_check(pkv_cache *c, pkv_seq seq, int32_t new_len);
void cache_truncate_commit(pkv_cache *c, pkv_seq seq, int32_t new_len);
/* The body of pkv_prefix_lookup (the caller holds the cache); a window
 * cache's hit is at most limit tokens. */
int cache_lookup(pkv_cache *c, uint64_t ns, const int32_t *tokens, int32_t n, int32_t limit, pkv_seq *out,
                 int32_t *cached);
/* Window caches with prefix caching (ops.c), given the chain of entries
 * prefix_match_entries found (ghosts included): the longest length at most
 * limit whose blocks a sequence would hold are all in the pool; a committed,
 * reserved, empty record made a sequence of that length from the chain (ents
 * is overwritten: it may be r->blocks). */
int32_t cache_window_fit(const pkv_cache *c, const int32_t *ents, int32_t m, int32_t limit);
void cache_window_adopt(pkv_cache *c, pkv_seq_rec *r, int32_t *ents, int32_t len);
/* PKV_OK, or PKV_ERR_STATE (recorded, naming what) when one of r's blocks is
 * still loading from a tier or a failed load cut r and its new length was not
 * reported yet (ops.c); loads that ended are applied first. */
int cache_seq_loading(pkv_cache *c, const pkv_seq_rec *r, const char *what);
/* Imports user_cfg into *cfg (checked geometry) and sets *block to the bytes
 * of one block in every layer (cache.c). */
int cache_block_bytes(const pkv_config *user_cfg, pkv_config *cfg, uint64_t *block);
/* Records err detail for pkv_cache_last_error and returns status. */
int cache_fail(pkv_cache *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Locks a thread-safe cache; a plain cache is not locked. Every public entry
 * point that takes a cache does CACHE_ENTER/CACHE_LEAVE around its body; a
 * failure that left no detail gets the status text with the function's name. */
static inline void cache_lock(pkv_cache *c) { if (c->thread_safe) pthread_mutex_lock(&c->lock); }
static inline void cache_unlock(pkv_cache *c) { if (c->thread_safe) pthread_mutex_unlock(&c->lock); }
int cache_leave(pkv_cache *c, int status, const char *func);
#define CACHE_ENTER(c)                 \
    do {                               \
        RETURN_IF(!(c), PKV_ERR_NULL); \
        cache_lock(c);                 \
        (c)->err.text[0] = 0;          \
    } while (0)
#define CACHE_LEAVE(c, st) return cache_leave((c), (st), __func__)
/* Inside CACHE_ENTER/LEAVE: a NULL pointer argument, with its name as the detail. */
#define CACHE_NULL_IF(c, cond, name) \
    do { if (PKV_UNLIKELY(cond)) CACHE_LEAVE(c, cache_fail(c, PKV_ERR_NULL, "%s is NULL", name)); } while (0)

/* Test hooks (tests only; hidden, not exported). */
void prefix_secret(const pkv_cache *c, uint8_t out[16]);
int64_t prefix_collisions(const pkv_cache *c);
void prefix_set_child_scan(pkv_cache *c, int32_t n);

/* ---- SipHash-2-4-128 (siphash.c) ---- */
#define SIP_LANES 6
typedef struct sip_state { uint64_t v0, v1, v2, v3; } sip_state;
void sip_init(sip_state *s, uint64_t k0, uint64_t k1);
/* Starts nblk (1..SIP_LANES) block keys: absorbs the whole token words of
 * blocks toks + i * bs, i < nblk, into st[i]. */
void sip_absorb_blocks(const uint64_t k[2], const int32_t *toks, int32_t bs, int nblk, sip_state *st);
/* Ends one block key: the rest of the message (an odd block's last token, ns,
 * the parent key) and the 128-bit finalization. */
void sip_finish_block(sip_state *s, const int32_t *toks, int32_t bs, uint64_t ns, const uint64_t parent[2],
                      uint64_t out[2]);
/* Only the key's low word (half the finalization): enough to probe the index,
 * whose hits are confirmed by comparing the block's identity. */
uint64_t sip_finish_block_lo(sip_state *s, const int32_t *toks, int32_t bs, uint64_t ns, const uint64_t parent[2]);
/* The same with a block's extras digest xd: xd != 0 appends its 8 bytes to the
 * message (xd == 0 gives the key above, so blocks without extra keys keep
 * their keys). */
void sip_finish_block_x(sip_state *s, const int32_t *toks, int32_t bs, uint64_t ns, const uint64_t parent[2],
                        uint64_t xd, uint64_t out[2]);
uint64_t sip_finish_block_lo_x(sip_state *s, const int32_t *toks, int32_t bs, uint64_t ns, const uint64_t parent[2],
                               uint64_t xd);
size_t cache_dump(pkv_cache *c, void *buf, size_t cap); /* canonical state dump, tests/common/dump.c */

/* ---- the dtype table (dtypes.c) ---- */
typedef struct pkv_dtype_traits {
    const char *name;
    size_t elem;          /* bytes per element; 0: the unit is a whole fixed row */
    size_t fixed_row;     /* bytes of its one row geometry (FP8 MLA656: 656), else 0 */
    int32_t h_kv, d, dv;  /* the geometry a fixed row requires */
    int plain;            /* element-wise: any geometry, usable for queries */
    /* n float32 values into a row of this dtype (NULL: a fixed row's encoder
     * needs options; the store calls it), and a row back into float32. */
    void (*from_f32)(void *dst, const float *src, size_t n);
    void (*to_f32)(float *dst, const void *src, size_t n);
    uint32_t accepts;     /* bit s: a cache of this dtype takes rows of dtype s */
} pkv_dtype_traits;
/* The entry of dtype, or NULL for an unknown one. */
const pkv_dtype_traits *pkv__dtype(int dtype);
/* Whether a cache of dtype can have this geometry. */
int pkv__dtype_geometry_ok(int dtype, int32_t h_kv, int32_t d, int32_t dv, int v_separate);

/* ---- dtype conversion (dtype.c) ---- */
float pkv_bf16_to_f32(uint16_t h);
uint16_t pkv_f32_to_bf16(float f);
float pkv_f16_to_f32(uint16_t h);
uint16_t pkv_f32_to_f16(float f);
/* Element i of a row of dtype (F32/F16/BF16) as float. */
static inline float pkv_load_elem(const void *row, int dtype, size_t i) {
    if (dtype == PKV_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return dtype == PKV_BF16 ? pkv_bf16_to_f32(h) : pkv_f16_to_f32(h);
}

#endif
