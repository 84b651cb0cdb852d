/* KV tiers below the pool: offload of cached blocks the pool reclaims, their
 * promotion back on lookup, demotion from one tier to the next, and the blob
 * that carries a block out of memory.
 *
 * Placement. Tiers form a chain below the pool (tier 0 just below it). A block
 * of KV is a prefix-index entry; it may live in the pool, in tiers, or both.
 * When the pool reclaims a cached block (write-back) its entry is written to
 * tier 0 unless a tier holds it already, and stays findable. When a tier is
 * full its least recently used entry moves to the next tier, or, from the last
 * one, leaves: an entry that then lives nowhere is dropped with its
 * descendants (they cannot be reached without it). A lookup that runs past
 * the pool's chain continues through entries in tiers and copies each back
 * into a pool block (the tier keeps its copy: tiers are inclusive).
 *
 * Blob. What leaves memory is self-describing and checked when it comes back:
 *   magic, blob size, geometry (block size, layers, heads, dims, dtype),
 *   key, parent key, namespace, extras digest, the block's token ids, its rows
 *   in every layer (K then V), a 64-bit checksum of all of it.
 * A load whose geometry, identity (key, parent key, namespace, extras digest,
 * token ids) or checksum disagrees is a miss: a torn file, a crash, a foreign
 * writer or a cache of another model never yields wrong KV. Blobs are in the host's byte
 * order, marked by the magic (a host of the other order sees a bad magic).
 *
 * Errors. A backend failure other than "not found" counts as an error and
 * marks the tier degraded; the operation that needed it degrades to a miss (a
 * failed offload drops the entry as a pool without tiers would). */
#include <string.h>
#include <time.h>

#include "internal.h"
#include "tier_file.h"

#define BLOB_MAGIC 0x34424f4c42564b50ull /* "PKVBLOB4" little-endian (2: the extras digest; 3: the
                                           * checksum is pkv__tier_checksum; 4: rows and size
                                           * 64-byte aligned) */
#define BLOB_HEAD 104
#define BLOB_ALIGN 64 /* the rows start, and the blob ends, on a multiple of this */

/* Where the rows start in a blob: after the header and the token ids, rounded
 * up so that copies in and out of an aligned slot are aligned (a copy to an
 * address 40 bytes off a cache line ran 25 % slower here). Zero padding. */
static size_t blob_rows_off(const pkv_cache *c) {
    size_t h = BLOB_HEAD + (size_t)c->cfg.block_size * sizeof(int32_t);
    return (h + BLOB_ALIGN - 1) & ~(size_t)(BLOB_ALIGN - 1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The blob's checksum (not a MAC): the file tier's, AVX-512 / AVX2 where the CPU
 * has them (25-36 GB/s here, against ~4 GB/s for a serial multiply-xor chain,
 * which took a third of a host tier's copy time). Packing and unpacking the
 * rows hash each 4 KiB piece right after copying it (store_block_out/in's
 * piece callback), while it is in L1, instead of a second pass over the blob. */
static uint64_t checksum64(const uint8_t *p, size_t n) { return pkv__tier_checksum(p, n, 0, -1); }

typedef struct blob_hash {
    pkv__cksum ck;
    const uint8_t *blob;
} blob_hash;

static void blob_hash_piece(void *arg, const uint8_t *end) {
    blob_hash *h = arg;
    pkv__cksum_update(&h->ck, h->blob, (size_t)(end - h->blob));
}

size_t tier_blob_size(const pkv_cache *c) {
    const pkv_store *s = &c->store;
    size_t n = blob_rows_off(c) + (size_t)c->cfg.num_layers * (s->k_block + s->v_block) + 8;
    return (n + BLOB_ALIGN - 1) & ~(size_t)(BLOB_ALIGN - 1); /* the checksum in the last 8 bytes */
}

static void blob_geometry(const pkv_cache *c, uint32_t g[8]) {
    const pkv_config *cfg = &c->cfg;
    g[0] = (uint32_t)cfg->block_size;
    g[1] = (uint32_t)cfg->num_layers;
    g[2] = (uint32_t)cfg->h_kv;
    g[3] = (uint32_t)cfg->d;
    g[4] = (uint32_t)cfg->dv;
    g[5] = (uint32_t)cfg->v_separate;
    g[6] = (uint32_t)cfg->kv_dtype;
    g[7] = 0;
}

/* Block b's KV with entry e's identity into blob (tier_blob_size bytes). */
static void blob_pack(const pkv_cache *c, int32_t e, int32_t b, uint8_t *blob) {
    size_t size = tier_blob_size(c), bs = (size_t)c->cfg.block_size;
    prefix_identity id;
    prefix_identity_of(c->prefix, e, &id);
    uint64_t head[2] = {BLOB_MAGIC, size};
    uint32_t g[8];
    blob_geometry(c, g);
    memcpy(blob, head, 16);
    memcpy(blob + 16, g, 32);
    memcpy(blob + 48, id.key, 16);
    memcpy(blob + 64, id.parent_key, 16);
    memcpy(blob + 80, &id.ns, 8);
    uint32_t flags[2] = {id.parent >= 0, 0};
    memcpy(blob + 88, flags, 8);
    memcpy(blob + 96, &id.xd, 8);
    memcpy(blob + BLOB_HEAD, id.toks, bs * sizeof(int32_t));
    size_t ro = blob_rows_off(c), rows_end = ro + store_block_bytes(&c->store);
    memset(blob + BLOB_HEAD + bs * sizeof(int32_t), 0, ro - BLOB_HEAD - bs * sizeof(int32_t));
    memset(blob + rows_end, 0, size - 8 - rows_end);
    blob_hash h = {.blob = blob};
    pkv__cksum_init(&h.ck, 0, -1);
    store_block_out(&c->store, b, blob + ro, blob_hash_piece, &h);
    uint64_t sum = pkv__cksum_final(&h.ck, blob, size - 8);
    memcpy(blob + size - 8, &sum, 8);
}

/* Whether blob[0..len) is a sound blob of this cache's geometry; fills the
 * identity it carries (toks points into the blob). sum: also check the
 * checksum (0: the caller checks it while it unpacks the rows). */
static int blob_parse(const pkv_cache *c, const uint8_t *blob, size_t len, uint64_t key[2], uint64_t parent_key[2],
                      uint64_t *ns, uint64_t *xd, int *has_parent, const int32_t **toks, int sum_check) {
    size_t size = tier_blob_size(c);
    if (len != size) return 0;
    uint64_t head[2], sum;
    memcpy(head, blob, 16);
    uint32_t g[8];
    blob_geometry(c, g);
    if (head[0] != BLOB_MAGIC || head[1] != size || memcmp(blob + 16, g, 32) != 0) return 0;
    memcpy(&sum, blob + size - 8, 8);
    if (sum_check && sum != checksum64(blob, size - 8)) return 0;
    memcpy(key, blob + 48, 16);
    memcpy(parent_key, blob + 64, 16);
    memcpy(ns, blob + 80, 8);
    memcpy(xd, blob + 96, 8);
    uint32_t flags[2];
    memcpy(flags, blob + 88, 8);
    *has_parent = flags[0] == 1;
    if (flags[0] > 1 || flags[1] != 0) return 0;
    *toks = (const int32_t *)(const void *)(blob + BLOB_HEAD);
    return 1;
}

/* The blob carries identity id exactly (key, parent key, namespace, extras,
 * token ids); sum_check as blob_parse's. Reads only the blob, id and the
 * cache's geometry: the I/O threads call it. */
static int blob_is_identity(const pkv_cache *c, const uint8_t *blob, size_t len, const prefix_identity *idp,
                            int sum_check) {
    uint64_t key[2], pkey[2], ns, xd;
    int has_parent;
    const int32_t *toks;
    if (!blob_parse(c, blob, len, key, pkey, &ns, &xd, &has_parent, &toks, sum_check)) return 0;
    const prefix_identity id = *idp;
    return key[0] == id.key[0] && key[1] == id.key[1] && pkey[0] == id.parent_key[0] &&
           pkey[1] == id.parent_key[1] && ns == id.ns && xd == id.xd && has_parent == (id.parent >= 0) &&
           memcmp(toks, id.toks, (size_t)c->cfg.block_size * sizeof(int32_t)) == 0;
}

/* The blob matches entry e exactly (its identity and its parent's key). */
static int blob_is_entry(const pkv_cache *c, const uint8_t *blob, size_t len, int32_t e, int sum_check) {
    prefix_identity id;
    prefix_identity_of(c->prefix, e, &id);
    return blob_is_identity(c, blob, len, &id, sum_check);
}

static void blob_unpack_rows(pkv_cache *c, const uint8_t *blob, int32_t b) {
    store_block_in(&c->store, b, blob + blob_rows_off(c), NULL, NULL);
}

/* Unpacks the rows of a blob whose header and identity were checked, hashing
 * them as they are copied: whether the checksum holds (if not, block b holds
 * garbage and the caller gives it back). */
static int blob_unpack_checked(pkv_cache *c, const uint8_t *blob, int32_t b) {
    size_t size = tier_blob_size(c);
    blob_hash h = {.blob = blob};
    pkv__cksum_init(&h.ck, 0, -1);
    pkv__cksum_update(&h.ck, blob, blob_rows_off(c));
    store_block_in(&c->store, b, blob + blob_rows_off(c), blob_hash_piece, &h);
    uint64_t sum;
    memcpy(&sum, blob + size - 8, 8);
    return pkv__cksum_final(&h.ck, blob, size - 8) == sum;
}

int tier_blob_load(const pkv_cache *c, const uint8_t *blob, size_t len, const prefix_identity *id, int32_t b) {
    /* blob_unpack_checked writes only block b's rows of the store */
    return blob_is_identity(c, blob, len, id, 0) && blob_unpack_checked((pkv_cache *)c, blob, b);
}

static void key_bytes(const pkv_cache *c, int32_t e, uint8_t out[16]) {
    prefix_identity id;
    prefix_identity_of(c->prefix, e, &id);
    memcpy(out, id.key, 16);
}

/* ---- per-tier state (the LRU lives in internal.h) ---- */

static void tier_error(pkv_tier *t, int st) {
    if (st == PKV_OK || st == PKV_ERR_NOT_FOUND) return;
    t->errors++;
    t->degraded = 1;
}

/* Entry e leaves tier ti (blob deleted). */
static void tier_remove(pkv_cache *c, int ti, int32_t e) {
    pkv_tier *t = &c->tiers.t[ti];
    uint8_t key[16];
    key_bytes(c, e, key);
    if (!t->shared) { /* other caches may use a shared tier's blobs */
        double t0 = now_s();
        int st = t->be.del(t->be.ctx, key);
        t->seconds_in += now_s() - t0;
        tier_error(t, st);
    }
    tier_lru_unlink(t, e);
    prefix_set_tier(c->prefix, e, ti, 0);
}

/* Drops entry e and every descendant from the index, the tiers and the pool's
 * cached marks (leaf first). */
static void drop_tree(pkv_cache *c, int32_t e) { tier_drop_subtree(c, e, tier_remove); }

void tier_drop_tree(pkv_cache *c, int32_t e) { drop_tree(c, e); }

static int tier_put(pkv_cache *c, int ti, int32_t e, const uint8_t *blob);

/* Makes room in tier ti: its least recently used entry (not the pinned one)
 * moves to the next tier or leaves. */
static void tier_evict_one(pkv_cache *c, int ti) {
    pkv_tier *t = &c->tiers.t[ti];
    int32_t x = tier_lru_victim(c, t);
    if (x < 0) return;
    t->evictions++;
    pkv_prefix *p = c->prefix;
    if (ti + 1 < c->tiers.n && !(prefix_tiers_of(p, x) & (2u << ti))) {
        uint8_t *blob = c->tiers.scratch[ti + 1];
        uint8_t key[16];
        key_bytes(c, x, key);
        size_t len = 0, size = tier_blob_size(c);
        double t0 = now_s();
        int st = t->be.get(t->be.ctx, key, blob, size, &len);
        t->seconds_out += now_s() - t0;
        if (st == PKV_OK && blob_is_entry(c, blob, len, x, 1)) {
            t->bytes_out += (int64_t)len;
            tier_put(c, ti + 1, x, blob);
            /* Making room below may have dropped x with an ancestor. */
            if (!prefix_entry_live(p, x)) return;
        } else {
            tier_error(t, st);
        }
    }
    tier_remove(c, ti, x);
    if (prefix_entry_block(p, x) < 0 && prefix_tiers_of(p, x) == 0) drop_tree(c, x);
}

/* Room in tier ti for entry e: evicts first when full. PKV_ERR_CAPACITY when
 * only pinned entries are left; PKV_ERR_NOT_FOUND when making room dropped e
 * (evicting an ancestor of e from the last tier drops e with it). */
static int tier_room(pkv_cache *c, int ti, int32_t e) {
    pkv_tier *t = &c->tiers.t[ti];
    while (t->count >= t->capacity) {
        int64_t before = t->count;
        tier_evict_one(c, ti);
        if (t->count == before) return PKV_ERR_CAPACITY;
    }
    return prefix_entry_live(c->prefix, e) ? PKV_OK : PKV_ERR_NOT_FOUND;
}

/* Entry e is now stored in tier ti (size bytes). */
static void tier_stored(pkv_cache *c, int ti, int32_t e, size_t size) {
    pkv_tier *t = &c->tiers.t[ti];
    t->bytes_in += (int64_t)size;
    t->stores++;
    tier_lru_push(t, e);
    prefix_set_tier(c->prefix, e, ti, 1);
}

/* Writes blob (entry e's) into tier ti, evicting first when full. */
static int tier_put(pkv_cache *c, int ti, int32_t e, const uint8_t *blob) {
    pkv_tier *t = &c->tiers.t[ti];
    int st = tier_room(c, ti, e);
    if (st != PKV_OK) return st;
    uint8_t key[16];
    key_bytes(c, e, key);
    size_t size = tier_blob_size(c);
    double t0 = now_s();
    st = t->be.put(t->be.ctx, key, blob, size);
    t->seconds_in += now_s() - t0;
    if (st != PKV_OK) {
        tier_error(t, st);
        return st;
    }
    tier_stored(c, ti, e, size);
    return PKV_OK;
}

static uint8_t *hb_reserve(void *ctx, const uint8_t key[16]);
static const uint8_t *hb_peek(void *ctx, const uint8_t key[16]);

/* Writes pool block b (entry e's) into tier ti. A host tier's blob is packed
 * straight into its slot (one pass over the rows instead of three: pack into
 * scratch, checksum, copy into the slot). */
static int tier_put_block(pkv_cache *c, int ti, int32_t e, int32_t b) {
    pkv_tier *t = &c->tiers.t[ti];
    if (!t->host) {
        uint8_t *blob = c->tiers.scratch[ti];
        blob_pack(c, e, b, blob);
        return tier_put(c, ti, e, blob);
    }
    int st = tier_room(c, ti, e);
    if (st != PKV_OK) return st;
    uint8_t key[16];
    key_bytes(c, e, key);
    double t0 = now_s();
    uint8_t *slot = hb_reserve(t->be.ctx, key);
    if (!slot) { /* not reached: tier_room made room */
        tier_error(t, PKV_ERR_CAPACITY);
        return PKV_ERR_CAPACITY;
    }
    blob_pack(c, e, b, slot);
    t->seconds_in += now_s() - t0;
    tier_stored(c, ti, e, tier_blob_size(c));
    return PKV_OK;
}

void tier_evicted(pkv_cache *c, int32_t b) {
    pkv_prefix *p = c->prefix;
    int32_t e = prefix_entry_of_block(p, b);
    pkv_assert(e >= 0);
    uint8_t have = prefix_tiers_of(p, e);
    if (have) {
        for (int ti = 0; ti < c->tiers.n; ti++)
            if (have & (1u << ti)) { /* most recently used there now */
                tier_lru_unlink(&c->tiers.t[ti], e);
                tier_lru_push(&c->tiers.t[ti], e);
                break;
            }
        prefix_unplace(p, b);
        return;
    }
    c->tiers.pinned[1] = e;
    int st = tier_put_block(c, 0, e, b);
    c->tiers.pinned[1] = -1;
    if (st == PKV_OK) prefix_unplace(p, b);
    else if (prefix_entry_live(p, e)) drop_tree(c, e);
}

static int write_through_many(pkv_cache *c, const int32_t *blocks, int32_t n);

void tier_write_through(pkv_cache *c, const int32_t *blocks, int32_t n) {
    pkv_prefix *p = c->prefix;
    if (n > 1 && !c->pool.loading && c->tiers.t[0].be.put_many && write_through_many(c, blocks, n)) return;
    for (int32_t j = 0; j < n; j++) {
        int32_t e = prefix_entry_of_block(p, blocks[j]);
        if (e < 0 || prefix_tiers_of(p, e)) continue;
        if (c->pool.loading && c->pool.loading[blocks[j]]) continue; /* no KV in it yet */
        c->tiers.pinned[1] = e;
        (void)tier_put_block(c, 0, e, blocks[j]); /* a failure is counted; the pool still holds the block */
        c->tiers.pinned[1] = -1;
    }
}

int tier_promote(pkv_cache *c, int32_t e, int32_t (*take)(pkv_cache *), int32_t *block) {
    pkv_prefix *p = c->prefix;
    uint8_t have = prefix_tiers_of(p, e);
    int ti = 0;
    while (ti < c->tiers.n && !(have & (1u << ti))) ti++;
    if (ti == c->tiers.n) return 0;
    pkv_tier *t = &c->tiers.t[ti];
    const uint8_t *blob = c->tiers.scratch[c->tiers.n];
    uint8_t key[16];
    key_bytes(c, e, key);
    size_t len = 0, size = tier_blob_size(c);
    double t0 = now_s();
    int st;
    if (t->host) { /* checked and unpacked in its slot: e is pinned, so the slot stays */
        blob = hb_peek(t->be.ctx, key);
        st = blob ? PKV_OK : PKV_ERR_NOT_FOUND;
        len = size;
    } else {
        st = t->be.get(t->be.ctx, key, c->tiers.scratch[c->tiers.n], size, &len);
    }
    t->seconds_out += now_s() - t0;
    int ok = st == PKV_OK && blob_is_entry(c, blob, len, e, 0), b = -1;
    if (ok) {
        /* The rows are checked as they are copied into a pool block; a bad
         * checksum gives the block back. */
        c->tiers.pinned[0] = e;
        b = take(c);
        c->tiers.pinned[0] = -1;
        t0 = now_s();
        /* take may have offloaded another block under a colliding key into
         * the same host slot: the identity is checked again before the rows. */
        ok = blob_is_entry(c, blob, len, e, 0) && blob_unpack_checked(c, blob, b);
        t->seconds_out += now_s() - t0;
        if (!ok) pool_unref(&c->pool, b);
    }
    if (!ok) {
        /* A miss where the index promised a block: the blob is gone or bad. */
        tier_error(t, st == PKV_OK ? PKV_ERR_CORRUPT : st);
        t->misses++;
        if (st == PKV_OK) t->corrupt++;
        if (prefix_entry_live(p, e)) {
            tier_remove(c, ti, e);
            if (prefix_entry_block(p, e) < 0 && prefix_tiers_of(p, e) == 0) drop_tree(c, e);
        }
        return 0;
    }
    t->hits++;
    t->bytes_out += (int64_t)len;
    tier_lru_unlink(t, e);
    tier_lru_push(t, e);
    prefix_place(p, e, b);
    *block = b;
    return 1;
}

int tier_first_holding(const pkv_cache *c, int32_t e) {
    uint8_t have = prefix_tiers_of(c->prefix, e);
    int ti = 0;
    while (ti < c->tiers.n && !(have & (1u << ti))) ti++;
    return ti < c->tiers.n ? ti : -1;
}

int tier_load_done(pkv_cache *c, const aio_done *dn) {
    pkv_tier *t = &c->tiers.t[dn->ti];
    pkv_prefix *p = c->prefix;
    t->seconds_out += dn->seconds;
    /* The entry may have been dropped meanwhile (an ancestor reclaimed); then
     * the block is an orphan of its sequences and only the bytes count. */
    const int placed = prefix_entry_of_block(p, dn->b) == dn->e;
    if (dn->ok) {
        t->hits++;
        t->bytes_out += dn->bytes;
        if (placed && (prefix_tiers_of(p, dn->e) & (1u << dn->ti))) {
            tier_lru_unlink(t, dn->e);
            tier_lru_push(t, dn->e);
        }
        return 1;
    }
    tier_error(t, dn->st == PKV_OK ? PKV_ERR_CORRUPT : dn->st);
    t->misses++;
    if (dn->st == PKV_OK) t->corrupt++;
    /* The block holds no KV of this entry: the entry and what chains below it go. */
    if (placed) drop_tree(c, dn->e);
    return 0;
}

/* ---- shared tiers: blocks that other caches wrote ---- */

#define SHARED_BATCH 32

/* Whether blob (got for key, the child of parent_key) is the block of toks in ns. */
static int blob_is_block(const pkv_cache *c, const uint8_t *blob, size_t len, const uint8_t key[16],
                         const uint8_t parent_key[16], int has_parent, uint64_t ns, uint64_t xd, const int32_t *toks) {
    uint64_t k[2], pk[2], bns, bxd, want[2], wantp[2];
    int hp;
    const int32_t *bt;
    if (!blob_parse(c, blob, len, k, pk, &bns, &bxd, &hp, &bt, 1) || bxd != xd) return 0;
    memcpy(want, key, 16);
    memcpy(wantp, parent_key, 16);
    return k[0] == want[0] && k[1] == want[1] && pk[0] == wantp[0] && pk[1] == wantp[1] && bns == ns &&
           hp == has_parent && memcmp(bt, toks, (size_t)c->cfg.block_size * sizeof(int32_t)) == 0;
}

/* One batch: the keys of blocks m..m+want of the prompt, fetched in one call
 * (get_many, or get per key), then indexed and promoted in order until the
 * first block that is missing or fails its checks. */
static int32_t shared_batch(pkv_cache *c, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t m,
                            int32_t want, int32_t *blocks, int32_t (*take)(pkv_cache *), int *stop) {
    pkv_prefix *p = c->prefix;
    int ti = c->tiers.shared - 1;
    pkv_tier *t = &c->tiers.t[ti];
    size_t size = tier_blob_size(c), bs = (size_t)c->cfg.block_size;
    uint8_t(*keys)[16] = pkv_mem_alloc(&c->al, (size_t)(want + 1) * 16);
    /* The blobs' buffer stays for the next lookup (a fresh one of many MB
     * would be faulted in page by page every time). */
    if (c->tiers.batch_cap < (size_t)want * size) {
        pkv_mem_free(&c->al, c->tiers.batch_buf);
        c->tiers.batch_buf = pkv_mem_alloc(&c->al, (size_t)want * size);
        c->tiers.batch_cap = c->tiers.batch_buf ? (size_t)want * size : 0;
    }
    uint8_t *bufs = c->tiers.batch_buf;
    void **ptrs = pkv_mem_alloc(&c->al, (size_t)want * sizeof *ptrs);
    size_t *lens = pkv_mem_alloc(&c->al, (size_t)want * sizeof *lens);
    int *status = pkv_mem_alloc(&c->al, (size_t)want * sizeof *status);
    uint64_t *xds = pkv_mem_alloc(&c->al, (size_t)want * sizeof *xds);
    int32_t got = 0;
    *stop = 1;
    if (!keys || !bufs || !ptrs || !lens || !status || !xds) goto out;
    int32_t parent = m ? prefix_entry_of_block(p, blocks[m - 1]) : -1;
    /* keys[0] is the parent's key (zero for a chain's first block); keys[j + 1] block m + j's. */
    memset(keys[0], 0, 16);
    if (parent >= 0) key_bytes(c, parent, keys[0]);
    uint8_t secret[16];
    prefix_get_secret(p, secret);
    int32_t cursor = 0;
    for (int32_t j = 0; j < want; j++) {
        xds[j] = prefix_extras_digest(p, x, m + j, &cursor);
        prefix_block_key(secret, tokens + (size_t)(m + j) * bs, (int32_t)bs, ns, keys[j], xds[j], keys[j + 1]);
        ptrs[j] = bufs + (size_t)j * size;
        lens[j] = 0;
    }
    double t0 = now_s();
    int st = PKV_OK;
    if (t->be.get_many) {
        st = t->be.get_many(t->be.ctx, want, (const uint8_t(*)[16])(keys + 1), ptrs, size, lens, status);
    } else {
        for (int32_t j = 0; j < want; j++) {
            status[j] = t->be.get(t->be.ctx, keys[j + 1], ptrs[j], size, &lens[j]);
            if (status[j] != PKV_OK) break; /* the chain ends at the first miss */
        }
    }
    t->seconds_out += now_s() - t0;
    if (st != PKV_OK) {
        tier_error(t, st);
        goto out;
    }
    for (int32_t j = 0; j < want; j++) {
        const int32_t *toks = tokens + (size_t)(m + j) * bs;
        if (status[j] != PKV_OK) {
            /* Failed the backend's MAC, or a blob of another size (another geometry). */
            if (status[j] == PKV_ERR_CORRUPT || status[j] == PKV_ERR_BUFFER) t->corrupt++;
            else tier_error(t, status[j]);
            goto out;
        }
        uint64_t key[2];
        memcpy(key, keys[j + 1], 16);
        if (!blob_is_block(c, ptrs[j], lens[j], keys[j + 1], keys[j], parent >= 0, ns, xds[j], toks)) {
            t->corrupt++; /* another geometry, a collision, or a blob that lies */
            goto out;
        }
        if (pool_available(&c->pool) == 0 || prefix_find_key(p, key) >= 0) goto out;
        while (t->count >= t->capacity) {
            int64_t before = t->count;
            tier_evict_one(c, ti);
            if (t->count == before) goto out;
        }
        /* Making room may drop entries without a location, never the chain's
         * (its blocks are held in the pool). */
        int32_t e = prefix_insert_unplaced(p, key, parent, ns, xds[j], toks);
        if (e < 0) goto out;
        tier_lru_push(t, e);
        prefix_set_tier(p, e, ti, 1);
        c->tiers.pinned[0] = e;
        int32_t b = take(c);
        c->tiers.pinned[0] = -1;
        blob_unpack_rows(c, ptrs[j], b);
        prefix_place(p, e, b);
        blocks[m + got++] = b;
        t->hits++;
        t->bytes_out += (int64_t)lens[j];
        parent = e;
    }
    *stop = 0;
out:
    pkv_mem_free(&c->al, keys);
    pkv_mem_free(&c->al, ptrs);
    pkv_mem_free(&c->al, lens);
    pkv_mem_free(&c->al, status);
    pkv_mem_free(&c->al, xds);
    return got;
}

int32_t tier_shared_extend(pkv_cache *c, uint64_t ns, const prefix_extras *x, const int32_t *tokens, int32_t n,
                           int32_t m, int32_t *blocks, int32_t (*take)(pkv_cache *)) {
    int32_t full = n / c->cfg.block_size;
    int stop = 0;
    while (!stop && m < full) {
        int32_t want = full - m < SHARED_BATCH ? full - m : SHARED_BATCH;
        if (want > pool_available(&c->pool)) want = pool_available(&c->pool);
        if (want <= 0) break;
        m += shared_batch(c, ns, x, tokens, m, want, blocks, take, &stop);
    }
    return m;
}

/* Write-through of a registration's blocks with the backend's put_many: up
 * to SHARED_BATCH blobs per call (one round trip to a remote store). Entries
 * join tier 0 before the call and leave it again where their put failed.
 * Returns 0 (nothing done) when its buffers cannot be allocated. */
static int write_through_many(pkv_cache *c, const int32_t *blocks, int32_t n) {
    pkv_prefix *p = c->prefix;
    pkv_tier *t = &c->tiers.t[0];
    size_t size = tier_blob_size(c);
    int32_t cap = n < SHARED_BATCH ? n : SHARED_BATCH;
    int32_t *ents = pkv_mem_alloc(&c->al, (size_t)cap * sizeof *ents);
    uint8_t(*keys)[16] = pkv_mem_alloc(&c->al, (size_t)cap * 16);
    uint8_t *bufs = pkv_mem_alloc(&c->al, (size_t)cap * size);
    const void **ptrs = pkv_mem_alloc(&c->al, (size_t)cap * sizeof *ptrs);
    int *status = pkv_mem_alloc(&c->al, (size_t)cap * sizeof *status);
    int ok = ents && keys && bufs && ptrs && status;
    for (int32_t j = 0; ok && j < n;) {
        int32_t k = 0;
        for (; j < n && k < cap; j++) {
            int32_t e = prefix_entry_of_block(p, blocks[j]);
            if (e < 0 || prefix_tiers_of(p, e)) continue;
            int full = 0;
            while (!full && t->count >= t->capacity) {
                int64_t before = t->count;
                tier_evict_one(c, 0);
                full = t->count == before;
            }
            if (full) break;
            ptrs[k] = bufs + (size_t)k * size;
            blob_pack(c, e, blocks[j], bufs + (size_t)k * size);
            key_bytes(c, e, keys[k]);
            ents[k++] = e;
            tier_lru_push(t, e);
            prefix_set_tier(p, e, 0, 1);
        }
        if (k == 0) break;
        double t0 = now_s();
        int st = t->be.put_many(t->be.ctx, k, (const uint8_t(*)[16])keys, ptrs, size, status);
        t->seconds_in += now_s() - t0;
        for (int32_t i = 0; i < k; i++) {
            int32_t e = ents[i];
            int in_tier = prefix_entry_live(p, e) && (prefix_tiers_of(p, e) & 1u);
            int put = st == PKV_OK && status[i] == PKV_OK;
            if (put) {
                t->stores++;
                t->bytes_in += (int64_t)size;
            } else {
                tier_error(t, st != PKV_OK ? st : status[i]);
            }
            if (!put && in_tier) {
                tier_lru_unlink(t, e);
                prefix_set_tier(p, e, 0, 0);
            } else if (put && !in_tier && !t->shared) {
                (void)t->be.del(t->be.ctx, keys[i]); /* evicted meanwhile: no stray blob */
            }
        }
    }
    pkv_mem_free(&c->al, ents);
    pkv_mem_free(&c->al, keys);
    pkv_mem_free(&c->al, bufs);
    pkv_mem_free(&c->al, ptrs);
    pkv_mem_free(&c->al, status);
    return ok;
}

/* ---- restart: re-index what a backend holds ---- */

typedef struct scan_ctx {
    pkv_cache *c;
    int ti;
    int32_t found, kept;
    int pass_progress;
} scan_ctx;

static int scan_one(void *arg, const uint8_t key_b[16], size_t len) {
    scan_ctx *sc = arg;
    pkv_cache *c = sc->c;
    pkv_tier *t = &c->tiers.t[sc->ti];
    uint8_t *blob = c->tiers.scratch[0];
    size_t size = tier_blob_size(c), got = 0;
    uint64_t want[2];
    memcpy(want, key_b, 16);
    if (prefix_find_key(c->prefix, want) >= 0) return 0; /* already indexed */
    if (len != size || t->be.get(t->be.ctx, key_b, blob, size, &got) != PKV_OK) return 0;
    uint64_t key[2], pkey[2], ns, xd;
    int has_parent;
    const int32_t *toks;
    if (!blob_parse(c, blob, got, key, pkey, &ns, &xd, &has_parent, &toks, 1) || key[0] != want[0] || key[1] != want[1])
        return 0;
    int32_t parent = -1;
    if (has_parent && (parent = prefix_find_key(c->prefix, pkey)) < 0) return 0; /* parent not yet indexed */
    if (t->count >= t->capacity) return 1;
    int32_t e = prefix_insert_unplaced(c->prefix, key, parent, ns, xd, toks);
    if (e < 0) return 0;
    tier_lru_push(t, e);
    prefix_set_tier(c->prefix, e, sc->ti, 1);
    sc->kept++;
    sc->pass_progress = 1;
    return 0;
}

/* Blobs left unindexed after the scans (orphans, corrupt, foreign, over
 * capacity) are deleted so that they do not take the tier's room. */
typedef struct stray_ctx {
    pkv_cache *c;
    int ti;
    int64_t n, cap;
    uint8_t (*keys)[16];
} stray_ctx;

static int find_stray(void *arg, const uint8_t key_b[16], size_t len) {
    stray_ctx *sc = arg;
    uint64_t key[2];
    memcpy(key, key_b, 16);
    (void)len;
    int32_t e = prefix_find_key(sc->c->prefix, key);
    if (e >= 0 && (prefix_tiers_of(sc->c->prefix, e) & (1u << sc->ti))) return 0;
    if (sc->keys && sc->n < sc->cap) memcpy(sc->keys[sc->n], key_b, 16);
    sc->n++;
    return 0;
}

static void restore(pkv_cache *c, int ti) {
    pkv_tier *t = &c->tiers.t[ti];
    if (!t->be.scan) return;
    scan_ctx sc = {c, ti, 0, 0, 1};
    /* Parents before children: repeat while a pass indexed something. */
    while (sc.pass_progress) {
        sc.pass_progress = 0;
        int st = t->be.scan(t->be.ctx, scan_one, &sc);
        if (st < 0) {
            tier_error(t, st);
            break;
        }
    }
    t->restored = sc.kept;
    stray_ctx st = {c, ti, 0, 0, NULL};
    (void)t->be.scan(t->be.ctx, find_stray, &st);
    if (st.n == 0) return;
    st.cap = st.n;
    st.n = 0;
    st.keys = pkv_mem_alloc(&c->al, (size_t)st.cap * 16);
    if (!st.keys) return; /* they stay; the backend refuses puts when full (an error, a miss) */
    (void)t->be.scan(t->be.ctx, find_stray, &st);
    for (int64_t i = 0; i < st.n && i < st.cap; i++) (void)t->be.del(t->be.ctx, st.keys[i]);
    t->stray = st.n;
    pkv_mem_free(&c->al, st.keys);
}

/* ---- setup ---- */

static void *host_be_create(const pkv_allocator *al, int64_t capacity, size_t blob_size, pkv_tier_backend *out);

int tier_add(pkv_cache *c, const pkv_tier_backend *be, int64_t capacity_blocks, int host, uint32_t flags,
             pkv_detail *d) {
    pkv_tiers *ts = &c->tiers;
    if (ts->n >= PKV_MAX_TIERS) return pkv__fail(d, PKV_ERR_INVALID, "at most %d tiers", PKV_MAX_TIERS);
    if (flags & ~(uint32_t)(PKV_TIER_WRITE_THROUGH | PKV_TIER_SHARED))
        return pkv__fail(d, PKV_ERR_INVALID, "unknown tier flags 0x%x", flags);
    if ((flags & PKV_TIER_WRITE_THROUGH) && ts->n != 0)
        return pkv__fail(d, PKV_ERR_INVALID, "write-through applies to tier 0 only");
    if ((flags & PKV_TIER_SHARED) && (host || ts->shared))
        return pkv__fail(d, PKV_ERR_INVALID, host ? "a host tier cannot be shared" : "at most one shared tier");
    if (!c->store.enabled) return pkv__fail(d, PKV_ERR_MODE, "tiers need host storage (PKV_STORAGE_HOST)");
    if (c->aio) return pkv__fail(d, PKV_ERR_STATE, "tiers are added before pkv_tier_async_start");
    if (!c->prefix) return pkv__fail(d, PKV_ERR_MODE, "tiers need prefix caching (PKV_FLAG_PREFIX_CACHE)");
    if (c->seqs.num_seqs || c->pool.used || c->pool.num_evictable)
        return pkv__fail(d, PKV_ERR_STATE, "tiers are added to a cache before it holds sequences or cached blocks");
    int32_t old = prefix_ecap(c->prefix);
    if (capacity_blocks < 1 || capacity_blocks > INT32_MAX - old)
        return pkv__fail(d, PKV_ERR_INVALID, "tier capacity %lld blocks outside [1, %d]", (long long)capacity_blocks,
                          INT32_MAX - old);
    size_t size = tier_blob_size(c);
    pkv_tier_backend hb;
    memset(&hb, 0, sizeof hb);
    if (host) {
        if (!host_be_create(&c->al, capacity_blocks, size, &hb))
            return pkv__fail(d, PKV_ERR_NOMEM, "host tier of %lld blocks of %zu bytes: no memory",
                              (long long)capacity_blocks, size);
        be = &hb;
    } else {
        /* A backend of an older header lacks the batch calls: they read as NULL. */
        if (!be || be->size < PKV_TIER_BACKEND_SIZE_1_0 ||
            pkv__struct_import(&hb, sizeof hb, be, PKV_TIER_BACKEND_SIZE_1_0) != PKV_OK || !hb.put || !hb.get ||
            !hb.exists || !hb.del)
            return pkv__fail(d, PKV_ERR_INVALID, "backend: put, get, exists and del are required, size set "
                             "(unknown trailing fields zero)");
        if (hb.flags & ~(uint32_t)PKV_BACKEND_CONCURRENT_GET)
            return pkv__fail(d, PKV_ERR_INVALID, "backend: unknown flags 0x%x", (unsigned)hb.flags);
        be = &hb;
    }
    int32_t ecap = old + (int32_t)capacity_blocks;
    /* Everything that can fail, first: every tier's LRU arrays, scratch, and
     * last the index's entries (the one step that changes the cache). */
    int st = PKV_OK;
    int32_t *arr[2 * (PKV_MAX_TIERS + 1)] = {0};
    uint8_t *scratch[2] = {NULL, NULL};
    int k = 0, nscratch = ts->n == 0 ? 2 : 1; /* scratch[0..n]: one per level and one for promotion */
    for (int i = 0; st == PKV_OK && i <= ts->n; i++) {
        arr[k] = pkv_mem_alloc(&c->al, (size_t)ecap * sizeof(int32_t));
        arr[k + 1] = pkv_mem_alloc(&c->al, (size_t)ecap * sizeof(int32_t));
        if (!arr[k] || !arr[k + 1]) st = PKV_ERR_NOMEM;
        k += 2;
    }
    for (int i = 0; st == PKV_OK && i < nscratch; i++)
        if (!(scratch[i] = pkv_mem_alloc(&c->al, size))) st = PKV_ERR_NOMEM;
    if (st == PKV_OK) st = prefix_grow(c->prefix, &c->al, ecap);
    if (st != PKV_OK) {
        for (int i = 0; i < k; i++) pkv_mem_free(&c->al, arr[i]);
        for (int i = 0; i < 2; i++) pkv_mem_free(&c->al, scratch[i]);
        if (host && hb.close) hb.close(hb.ctx);
        return pkv__fail(d, st, "adding a tier: no memory for its index");
    }
    for (int i = 0; i <= ts->n; i++) {
        pkv_tier *t = &ts->t[i];
        int32_t *pv = arr[2 * i], *nx = arr[2 * i + 1];
        for (int32_t e = 0; e < ecap; e++) pv[e] = nx[e] = -1;
        if (i < ts->n) {
            memcpy(pv, t->prev, (size_t)old * sizeof *pv);
            memcpy(nx, t->next, (size_t)old * sizeof *nx);
            pkv_mem_free(&c->al, t->prev);
            pkv_mem_free(&c->al, t->next);
        }
        t->prev = pv;
        t->next = nx;
    }
    pkv_tier *t = &ts->t[ts->n];
    t->be = *be;
    /* Every blob a tier returns is checked here (identity, checksum): the file
     * tier need not checksum it a second time (a quarter of a warm read). */
    if (pkv__tier_file_is(be)) pkv__tier_file_trust_gets(be->ctx, 1);
    t->capacity = capacity_blocks;
    t->count = 0;
    t->head = t->tail = -1;
    t->host = host;
    t->shared = (flags & PKV_TIER_SHARED) != 0;
    if (ts->n == 0) {
        ts->scratch[0] = scratch[0];
        ts->scratch[1] = scratch[1];
    } else {
        ts->scratch[ts->n + 1] = scratch[0];
    }
    ts->n++;
    ts->pinned[0] = ts->pinned[1] = -1;
    if (flags & PKV_TIER_WRITE_THROUGH) ts->write_through = 1;
    if (t->shared) ts->shared = ts->n; /* found by lookups, not by a scan */
    else restore(c, ts->n - 1);
    return PKV_OK;
}

void tier_destroy(pkv_cache *c) {
    pkv_tiers *ts = &c->tiers;
    for (int i = 0; i < ts->n; i++) {
        pkv_tier *t = &ts->t[i];
        if (t->be.close) t->be.close(t->be.ctx);
        pkv_mem_free(&c->al, t->prev);
        pkv_mem_free(&c->al, t->next);
    }
    for (int i = 0; i <= PKV_MAX_TIERS; i++) pkv_mem_free(&c->al, ts->scratch[i]);
    pkv_mem_free(&c->al, ts->batch_buf);
    memset(ts, 0, sizeof *ts);
}

int tier_check(pkv_cache *c, pkv_detail *d) {
    pkv_tiers *ts = &c->tiers;
    int32_t ecap = c->prefix ? prefix_ecap(c->prefix) : 0;
    for (int ti = 0; ti < ts->n; ti++) {
        pkv_tier *t = &ts->t[ti];
        int64_t n = 0;
        for (int32_t e = t->head, prev = -1; e >= 0; prev = e, e = t->next[e]) {
            if (e >= ecap || t->prev[e] != prev || !(prefix_tiers_of(c->prefix, e) & (1u << ti)) || ++n > t->count)
                return pkv__fail(d, PKV_ERR_CORRUPT, "tier %d: LRU list broken at entry %d", ti, e);
        }
        if (n != t->count || t->count > t->capacity)
            return pkv__fail(d, PKV_ERR_CORRUPT, "tier %d holds %lld entries, counted %lld (capacity %lld)", ti,
                             (long long)t->count, (long long)n, (long long)t->capacity);
    }
    return PKV_OK;
}

void tier_stats(const pkv_cache *c, int ti, pkv_tier_stats *o) {
    const pkv_tier *t = &c->tiers.t[ti];
    o->tier = ti;
    o->kind = t->host ? PKV_TIER_HOST : PKV_TIER_BACKEND;
    o->capacity_blocks = t->capacity;
    o->blocks = t->count;
    o->hits = t->hits;
    o->misses = t->misses;
    o->stores = t->stores;
    o->evictions = t->evictions;
    o->errors = t->errors;
    o->corrupt = t->corrupt;
    o->restored = t->restored;
    o->bytes_in = t->bytes_in;
    o->bytes_out = t->bytes_out;
    o->seconds_in = t->seconds_in;
    o->seconds_out = t->seconds_out;
    o->degraded = t->degraded;
}

/* ---- the host-memory backend: an arena of fixed-size slots ---- */

typedef struct host_be {
    pkv_allocator al;
    size_t blob_size;
    int64_t cap, nfree;
    uint8_t *arena;        /* [cap][blob_size], BLOB_ALIGN-aligned inside arena_raw */
    uint8_t *arena_raw;
    uint8_t (*keys)[16];   /* [cap] */
    int64_t *free_slots;   /* [cap] */
    int64_t *tab;          /* [mask + 1] slot ids, -1 empty */
    size_t mask;
} host_be;

static size_t hb_home(const host_be *h, const uint8_t key[16]) {
    uint64_t k;
    memcpy(&k, key, 8);
    return (size_t)((k * 0x9e3779b97f4a7c15ull) >> 17) & h->mask;
}

static int64_t hb_find(const host_be *h, const uint8_t key[16], size_t *pos) {
    for (size_t i = hb_home(h, key);; i = (i + 1) & h->mask) {
        if (h->tab[i] < 0) {
            *pos = i;
            return -1;
        }
        if (memcmp(h->keys[h->tab[i]], key, 16) == 0) {
            *pos = i;
            return h->tab[i];
        }
    }
}

static int hb_put(void *ctx, const uint8_t key[16], const void *blob, size_t len) {
    host_be *h = ctx;
    if (len != h->blob_size) return PKV_ERR_INVALID;
    uint8_t *slot = hb_reserve(h, key);
    if (!slot) return PKV_ERR_CAPACITY;
    memcpy(slot, blob, len);
    return PKV_OK;
}

/* The slot of key for a blob about to be written there (taking a free slot for
 * a new key); NULL when full. */
static uint8_t *hb_reserve(void *ctx, const uint8_t key[16]) {
    host_be *h = ctx;
    size_t pos;
    int64_t s = hb_find(h, key, &pos);
    if (s < 0) {
        if (h->nfree == 0) return NULL;
        s = h->free_slots[--h->nfree];
        memcpy(h->keys[s], key, 16);
        h->tab[pos] = s;
    }
    return h->arena + (size_t)s * h->blob_size;
}

/* The stored blob of key in place (blob_size bytes), NULL when none. */
static const uint8_t *hb_peek(void *ctx, const uint8_t key[16]) {
    host_be *h = ctx;
    size_t pos;
    int64_t s = hb_find(h, key, &pos);
    return s < 0 ? NULL : h->arena + (size_t)s * h->blob_size;
}

static int hb_get(void *ctx, const uint8_t key[16], void *buf, size_t cap, size_t *len) {
    host_be *h = ctx;
    size_t pos;
    int64_t s = hb_find(h, key, &pos);
    if (s < 0) return PKV_ERR_NOT_FOUND;
    *len = h->blob_size;
    if (cap < h->blob_size) return PKV_ERR_BUFFER;
    memcpy(buf, h->arena + (size_t)s * h->blob_size, h->blob_size);
    return PKV_OK;
}

static int hb_exists(void *ctx, const uint8_t key[16]) {
    size_t pos;
    return hb_find(ctx, key, &pos) >= 0;
}

static int hb_del(void *ctx, const uint8_t key[16]) {
    host_be *h = ctx;
    size_t i;
    int64_t s = hb_find(h, key, &i);
    if (s < 0) return PKV_ERR_NOT_FOUND;
    h->free_slots[h->nfree++] = s;
    /* backward-shift deletion */
    for (size_t j = i;;) {
        j = (j + 1) & h->mask;
        if (h->tab[j] < 0) break;
        size_t home = hb_home(h, h->keys[h->tab[j]]);
        int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            h->tab[i] = h->tab[j];
            i = j;
        }
    }
    h->tab[i] = -1;
    return PKV_OK;
}

static int hb_scan(void *ctx, int (*fn)(void *arg, const uint8_t key[16], size_t len), void *arg) {
    host_be *h = ctx;
    for (size_t i = 0; i <= h->mask; i++)
        if (h->tab[i] >= 0 && fn(arg, h->keys[h->tab[i]], h->blob_size)) break;
    return PKV_OK;
}

static void hb_close(void *ctx) {
    host_be *h = ctx;
    pkv_allocator al = h->al;
    pkv_mem_free(&al, h->arena_raw);
    pkv_mem_free(&al, h->keys);
    pkv_mem_free(&al, h->free_slots);
    pkv_mem_free(&al, h->tab);
    pkv_mem_free(&al, h);
}

static void *host_be_create(const pkv_allocator *al, int64_t capacity, size_t blob_size, pkv_tier_backend *out) {
    if ((uint64_t)capacity > SIZE_MAX / blob_size / 2) return NULL;
    host_be *h = pkv_mem_calloc(al, 1, sizeof *h);
    if (!h) return NULL;
    h->al = *al;
    h->blob_size = blob_size;
    h->cap = h->nfree = capacity;
    size_t tsize = 16;
    while (tsize < 2 * (size_t)capacity) tsize *= 2;
    h->mask = tsize - 1;
    h->arena_raw = pkv_mem_alloc(al, (size_t)capacity * blob_size + BLOB_ALIGN);
    h->arena = h->arena_raw ? (uint8_t *)(((uintptr_t)h->arena_raw + BLOB_ALIGN - 1) & ~(uintptr_t)(BLOB_ALIGN - 1))
                            : NULL;
    h->keys = pkv_mem_alloc(al, (size_t)capacity * 16);
    h->free_slots = pkv_mem_alloc(al, (size_t)capacity * sizeof(int64_t));
    h->tab = pkv_mem_alloc(al, tsize * sizeof(int64_t));
    if (!h->arena || !h->keys || !h->free_slots || !h->tab) {
        hb_close(h);
        return NULL;
    }
    for (int64_t i = 0; i < capacity; i++) h->free_slots[i] = capacity - 1 - i;
    for (size_t i = 0; i < tsize; i++) h->tab[i] = -1;
    memset(out, 0, sizeof *out);
    out->size = sizeof *out;
    out->ctx = h;
    out->put = hb_put;
    out->get = hb_get;
    out->exists = hb_exists;
    out->del = hb_del;
    out->scan = hb_scan;
    out->close = hb_close;
    return h;
}
