/*
 * pagedkv — a paged KV cache for LLM inference, and attention over it.
 *
 * The one public header. Every function returns PKV_OK (0) or a negative status
 * code (see pkv_status); pkv_strerror() describes a code. Unless a contract says
 * otherwise, a call that fails leaves the cache exactly as it was.
 *
 * Concepts (docs/ARCHITECTURE.md in the source tree): a cache owns num_blocks blocks of block_size token
 * slots; a sequence is an ordered list of block ids plus a length; a token's slot
 * is block_id * block_size + offset. Storage is optional: in host mode the cache
 * owns per-layer arenas laid out as FlashMLA's k_cache[num_blocks][block_size]
 * [h_kv][d]; in metadata mode the engine owns the memory and data movements
 * (copy-on-write) are returned as (src, dst) block copies.
 */
#ifndef PAGEDKV_H
#define PAGEDKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define PKV_API
#elif defined(__GNUC__)
#define PKV_API __attribute__((visibility("default")))
#else
#define PKV_API
#endif

/* Versioning. The major version is the soname (libpagedkv.so.MAJOR): it changes
 * only when a binary built against an older header could break (a function or a
 * field removed or changed). The minor version grows when functions, enum values
 * or struct fields are added; binaries built against an older minor keep working.
 * `make check-abi` compares the exported symbols and every public struct's layout
 * with abi/pagedkv.abi and fails when they change without the matching bump. */
#define PKV_VERSION_MAJOR 1
#define PKV_VERSION_MINOR 3
#define PKV_VERSION_PATCH 0
#define PKV_VERSION_STRING "1.3.0"
#define PKV_VERSION_NUMBER (PKV_VERSION_MAJOR * 10000 + PKV_VERSION_MINOR * 100 + PKV_VERSION_PATCH)

/*! Returns the library's version string, e.g. "1.0.0". */
PKV_API const char *pkv_version(void);

/*! Returns the library's PKV_VERSION_NUMBER (major * 10000 + minor * 100 + patch)
 *  as it was built: compare with the header's to detect a mismatched library. */
PKV_API unsigned pkv_version_number(void);

/* Growable structs. Every public struct starts with `uint32_t size`: the
 * sizeof() of the struct as the caller's header defines it, set by its init
 * function (pkv_config_init, pkv_attn_args_init) or initializer (PKV_STATS_INIT).
 * A library newer than the caller reads only the first `size` bytes and gives
 * fields past them their defaults; a library older than the caller accepts a
 * larger struct only when every byte it does not know is zero (a field the
 * caller set that the library cannot honour is refused, PKV_ERR_INVALID).
 * Output structs (pkv_stats) are filled up to their `size`. A struct whose size
 * is smaller than the first released layout is refused with PKV_ERR_INVALID. */

/* ------------------------------------------------------------------------- */
/* Status codes: fixed values, never renumbered.                             */
/* ------------------------------------------------------------------------- */
typedef enum pkv_status {
    PKV_OK = 0,
    PKV_ERR_NULL = -1,          /* a required pointer argument is NULL */
    PKV_ERR_INVALID = -2,       /* an argument is out of its documented range */
    PKV_ERR_NOMEM = -3,         /* the allocator hook returned NULL */
    PKV_ERR_CAPACITY = -4,      /* not enough free (or evictable) blocks */
    PKV_ERR_BUFFER = -5,        /* an output buffer is too small; the size needed is reported */
    PKV_ERR_NO_SEQ = -6,        /* unknown, freed or stale sequence handle */
    PKV_ERR_BLOCK_ID = -7,      /* a block id outside [0, num_blocks) */
    PKV_ERR_SEQLEN = -8,        /* a length is negative or longer than its table row covers */
    PKV_ERR_HEADS = -9,         /* h_q is not a positive multiple of h_kv */
    PKV_ERR_DTYPE = -10,        /* unknown dtype, or a dtype not allowed here */
    PKV_ERR_MODE = -11,         /* the operation needs host storage (or prefix caching) */
    PKV_ERR_NONFINITE = -12,    /* an input value is NaN or infinite */
    PKV_ERR_CORRUPT = -13,      /* pkv_cache_check found an inconsistency */
    PKV_ERR_THREAD = -14,       /* a thread or lock could not be created */
    PKV_ERR_IO = -15,           /* a file could not be read or written */
    PKV_ERR_FORMAT = -16,       /* malformed input data (e.g. a .npy header) */
    PKV_ERR_STATE = -17,        /* the object is not in a state that allows this call */
    PKV_ERR_SHAPE = -18,        /* array shapes disagree with each other */
    PKV_ERR_SLOT = -19,         /* a slot id outside [0, num_blocks * block_size) */
    PKV_ERR_NOT_FOUND = -20     /* a tier holds nothing under the key (a miss, not a fault) */
} pkv_status;

/*! Returns a static, human-readable description of a status code (never NULL;
 *  unknown codes give "unknown status"). */
PKV_API const char *pkv_strerror(int status);

/* ------------------------------------------------------------------------- */
/* Data types                                                                */
/* ------------------------------------------------------------------------- */
typedef enum pkv_dtype {
    PKV_F32 = 0,
    PKV_F16 = 1,
    PKV_BF16 = 2,
    PKV_FP8_MLA656 = 3 /* KV only: FlashMLA's 656-byte MLA token (see pkv_mla656_quantize) */
} pkv_dtype;

/*! Bytes of one element of dtype (4, 2, 2), or 0 for an unknown dtype and for
 *  PKV_FP8_MLA656, whose unit is a whole 656-byte token row. */
PKV_API size_t pkv_dtype_size(int dtype);

/*! Bytes of one token row of one KV head: h_kv * d elements of dtype, or 656 for
 *  PKV_FP8_MLA656 (h_kv = 1, d = 576). 0 if the combination is invalid. */
PKV_API size_t pkv_row_bytes(int dtype, int32_t h_kv, int32_t d);

/* ------------------------------------------------------------------------- */
/* Cache configuration                                                       */
/* ------------------------------------------------------------------------- */

/* All memory of a cache comes through this hook (zstd's customMem). alloc
 * returns memory aligned for any C object (malloc's guarantee) or NULL; free
 * takes what alloc returned (NULL is never passed). The hook must not call
 * into the cache it serves (a thread-safe cache's lock is not recursive). */
typedef struct pkv_allocator {
    void *(*alloc)(void *opaque, size_t size);
    void (*free)(void *opaque, void *ptr);
    void *opaque;
} pkv_allocator;

enum pkv_storage_mode {
    PKV_STORAGE_METADATA = 0, /* no storage: block ids only; copies are returned */
    PKV_STORAGE_HOST = 1      /* per-layer arenas owned by the cache */
};

enum pkv_flags {
    PKV_FLAG_THREAD_SAFE = 1u << 0,    /* serialize every operation on the cache with a lock */
    PKV_FLAG_PREFIX_CACHE = 1u << 1,   /* enable the prefix cache (block keys, lookup, eviction) */
    PKV_FLAG_AUTO_REGISTER = 1u << 2,  /* append with token ids registers blocks as they fill */
    PKV_FLAG_FP8_POW2_SCALE = 1u << 3  /* FP8 row writes round scales up to a power of two */
};

typedef struct pkv_config {
    uint32_t size;       /* sizeof(pkv_config), set by pkv_config_init */
    int32_t num_blocks;  /* blocks in the pool, >= 1 */
    int32_t block_size;  /* token slots per block, 1..4096 (default 64) */
    uint32_t flags;      /* pkv_flags */
    int32_t storage;     /* pkv_storage_mode (default PKV_STORAGE_METADATA) */
    /* Host storage geometry (ignored in metadata mode). */
    int32_t num_layers;  /* >= 1 */
    int32_t h_kv;        /* KV heads, >= 1 */
    int32_t d;           /* K head dim, >= 1 */
    int32_t dv;          /* V head dim, 1..d when V is shared */
    int32_t v_separate;  /* 0: V = first dv dims of K (MLA); 1: a separate V arena */
    int32_t kv_dtype;    /* pkv_dtype of the arenas */
    /* Prefix-cache hash key. hash_key_set == 0: drawn from the OS (getrandom). */
    int32_t hash_key_set;
    uint8_t hash_key[16];
    pkv_allocator allocator; /* alloc == NULL: malloc/free */
    /* Since 1.2: a sliding-window cache (the blocks of a window attention
     * group, e.g. Gemma 3's local layers). 0: full attention (every block is
     * kept). W > 0: a token at position p attends to keys (p - W, p] (pkv_attn's
     * window W, FlashInfer's window_left = W - 1), so a block wholly before the
     * window of the next token to compute is released: each append first
     * settles its tokens, then releases the blocks j with (j + 1) * block_size
     * <= L + 1 - W, L the sequence's settled length (lookahead drafts not
     * counted) before that append. A released block's table entry is -1 in
     * pkv_seq_blocks and the exports (kernels given the window never read it;
     * pkv_attn refuses a table entry it would read that is -1). A truncation
     * whose new window needs a released block is refused (PKV_ERR_STATE);
     * dropping lookahead drafts never is. Swapping a sequence with released
     * blocks is refused (PKV_ERR_STATE). Since 1.3 with prefix caching when
     * PKV_FLAG_AUTO_REGISTER is set too (PKV_ERR_INVALID otherwise: blocks
     * register as they fill, before the window releases them); tiers are
     * refused (PKV_ERR_MODE). A released registered block stays cached
     * (evictable); a reclaimed one whose entry has children stays in the index
     * as a ghost (no KV, no event), so the chain below it is still found. A
     * lookup's hit is the longest length whose held blocks are all in the
     * pool: the window of its next token and of the one before, and its last
     * full block; the blocks before are -1 in the new sequence's table. */
    int32_t window;
} pkv_config;

/*! Fills cfg with defaults: size = sizeof(pkv_config), 1024 blocks of 64 slots,
 *  metadata mode, no flags, MLA geometry (1 layer, h_kv 1, d 576, dv 512, V
 *  shared, bf16), malloc/free. Start every config from it. */
PKV_API void pkv_config_init(pkv_config *cfg);

typedef struct pkv_cache pkv_cache;

/*! Creates a cache from cfg (copied; cfg may be freed afterwards).
 *  @return PKV_OK and *out set; PKV_ERR_NULL, PKV_ERR_INVALID (a field out of
 *  range, or arena size overflow), PKV_ERR_DTYPE, PKV_ERR_NOMEM, PKV_ERR_THREAD;
 *  on error *out is NULL and nothing is leaked. */
PKV_API int pkv_cache_create(const pkv_config *cfg, pkv_cache **out);

/*! Destroys a cache and every sequence in it. NULL is a no-op. */
PKV_API void pkv_cache_destroy(pkv_cache *cache);

/*! Copies the cache's configuration into *cfg. */
PKV_API int pkv_cache_config(pkv_cache *cache, pkv_config *cfg);

/*! Detail of the last failed call on this cache (e.g. "block_table needs 12
 *  entries, got 8"), or "" when the last call succeeded. Valid until the next call
 *  on the cache; a thread-safe cache keeps one text for all threads, so another
 *  thread's call may replace it (read it only where calls are not concurrent). */
PKV_API const char *pkv_cache_last_error(const pkv_cache *cache);

typedef struct pkv_stats {
    uint32_t size;             /* set by the caller: sizeof(pkv_stats) (PKV_STATS_INIT) */
    int32_t num_blocks;
    int32_t block_size;
    int32_t free_blocks;       /* on the free list */
    int32_t used_blocks;       /* refcount >= 1 */
    int32_t evictable_blocks;  /* refcount 0, cached, reclaimable */
    int32_t shared_blocks;     /* refcount >= 2 */
    int32_t num_seqs;
    int32_t peak_used_blocks;  /* high-water mark of used_blocks */
    int64_t tokens;            /* sum of sequence lengths */
    int64_t cow_copies;        /* copy-on-write block copies so far */
    /* prefix cache (zero unless PKV_FLAG_PREFIX_CACHE) */
    int32_t cached_blocks;     /* blocks in the prefix index (used or evictable) */
    int32_t reserved0;
    int64_t prefix_queries;    /* lookups */
    int64_t prefix_query_tokens; /* tokens asked for in lookups */
    int64_t prefix_hit_tokens; /* tokens served from cache */
    int64_t evictions;         /* cached blocks reclaimed, incl. orphans dropped with their parent */
    int64_t dedups;            /* registrations that moved a sequence onto a cached block */
    int64_t registrations;     /* blocks newly entered into the index */
} pkv_stats;

/* Initializer of a pkv_stats to pass to pkv_cache_stats:
 *     pkv_stats st = PKV_STATS_INIT; */
#ifdef __cplusplus
#define PKV_STATS_INIT {sizeof(pkv_stats)}
#else
#define PKV_STATS_INIT {.size = sizeof(pkv_stats)}
#endif

/*! Fills *out with the cache's counters, up to out->size bytes (the fields the
 *  caller's header knows). PKV_ERR_INVALID when out->size is below the first
 *  layout's size (an uninitialized struct). */
PKV_API int pkv_cache_stats(pkv_cache *cache, pkv_stats *out);

/*! Reference count of block id (0 for free or evictable blocks). */
PKV_API int pkv_block_refcount(pkv_cache *cache, int32_t block_id, int32_t *out);

/*! Walks all state and checks every invariant (free + used + evictable ==
 *  num_blocks, each refcount == number of sequence lists holding the block,
 *  the free list holds exactly the free blocks, each sequence's block count
 *  matches its length, prefix index entries match their blocks).
 *  @return PKV_OK, or PKV_ERR_CORRUPT with the detail in pkv_cache_last_error;
 *  PKV_ERR_NOMEM if its scratch (num_blocks counters) cannot be allocated. */
PKV_API int pkv_cache_check(pkv_cache *cache);

/* ------------------------------------------------------------------------- */
/* Sequences                                                                 */
/* ------------------------------------------------------------------------- */

/* A sequence handle. Handles of freed sequences are never reused by the same
 * cache (a generation is part of the value), so a stale handle is refused with
 * PKV_ERR_NO_SEQ; a per-cache random salt in the value makes another cache's
 * handles miss as well. Valid handles are > 0. */
typedef int64_t pkv_seq;

/* One block copy for the engine to perform (metadata mode): copy every slot of
 * block src to block dst, in every layer. */
typedef struct pkv_block_copy {
    int32_t src;
    int32_t dst;
} pkv_block_copy;

/*! Creates an empty sequence in namespace ns (prefix caching never shares
 *  blocks across namespaces; 0 is the default namespace).
 *  @return PKV_OK and *out; PKV_ERR_NULL, PKV_ERR_NOMEM. */
PKV_API int pkv_seq_create(pkv_cache *cache, uint64_t ns, pkv_seq *out);

/*! Appends n >= 0 tokens to seq. Fills the last block first, then takes new
 *  blocks. If the last block is partly filled and shared (refcount > 1), the
 *  sequence first moves onto a private copy (copy-on-write): in host mode the
 *  cache copies the block in every layer; in metadata mode the copy is written
 *  to *cow for the engine to perform (cow->src = -1 when no copy was needed).
 *  tokens: NULL, or n token ids (kept for prefix caching).
 *  slots: NULL, or room for n slot ids, written with each new token's slot.
 *  cow: may be NULL in host mode; required in metadata mode.
 *  @return PKV_OK; PKV_ERR_CAPACITY when blocks run out (nothing changed);
 *  PKV_ERR_NO_SEQ, PKV_ERR_INVALID, PKV_ERR_NULL, PKV_ERR_NOMEM. */
PKV_API int pkv_seq_append(pkv_cache *cache, pkv_seq seq, int32_t n, const int32_t *tokens,
                           int64_t *slots, pkv_block_copy *cow);

/*! Appends n draft tokens (speculative decoding) as pkv_seq_append does, but
 *  marks them lookahead: a block that holds a lookahead token is never
 *  registered nor deduplicated, so rejecting drafts costs no copy-on-write.
 *  Further lookahead appends extend the drafts; pkv_seq_append is refused
 *  (PKV_ERR_STATE) until pkv_seq_accept settles them.
 *  @return as pkv_seq_append. */
PKV_API int pkv_seq_append_lookahead(pkv_cache *cache, pkv_seq seq, int32_t n, const int32_t *tokens,
                                     int64_t *slots, pkv_block_copy *cow);

/*! Settles the lookahead tokens: the first `accepted` of them become ordinary
 *  tokens (with PKV_FLAG_AUTO_REGISTER, full blocks are registered now), the rest
 *  are truncated away. 0 <= accepted <= the lookahead count (*lookahead of
 *  pkv_seq_lookahead). @return PKV_OK; PKV_ERR_NO_SEQ, PKV_ERR_INVALID. */
PKV_API int pkv_seq_accept(pkv_cache *cache, pkv_seq seq, int32_t accepted);

/*! The number of lookahead (draft) tokens at the end of seq. */
PKV_API int pkv_seq_lookahead(pkv_cache *cache, pkv_seq seq, int32_t *out);

/*! Number of blocks an append of n tokens to seq would take from the pool,
 *  counting a copy-on-write copy. */
PKV_API int pkv_seq_blocks_needed(pkv_cache *cache, pkv_seq seq, int32_t n, int32_t *out);

/*! Shortens seq to new_len (0 <= new_len <= length); blocks past the new end
 *  are released. Truncating to the current length is a no-op. */
PKV_API int pkv_seq_truncate(pkv_cache *cache, pkv_seq seq, int32_t new_len);

/*! Creates a child that shares every block of parent (refcount + 1 each), with
 *  the same length, namespace and token ids. */
PKV_API int pkv_seq_fork(pkv_cache *cache, pkv_seq parent, pkv_seq *child);

/*! Frees seq and releases its blocks (last block first, so prefix chains
 *  are evicted from their end). The handle becomes stale. */
PKV_API int pkv_seq_free(pkv_cache *cache, pkv_seq seq);

/*! Length of seq in tokens. */
PKV_API int pkv_seq_length(pkv_cache *cache, pkv_seq seq, int32_t *out);

/*! Copies seq's block ids into blocks[0..cap) and sets *n to the count. If
 *  cap < count: PKV_ERR_BUFFER, *n set to the count needed, nothing written. */
PKV_API int pkv_seq_blocks(pkv_cache *cache, pkv_seq seq, int32_t *blocks, int32_t cap,
                           int32_t *n);

/* Extra keys (vLLM's extra_keys): besides its namespace and the token ids from
 * position 0, a block's identity in the prefix cache holds the sequence's LoRA
 * adapter id and every multimodal range that overlaps the block (the item's
 * content hash, its start relative to the block and its length), so equal
 * token ids under another adapter or with another image never share KV, and
 * equal adapters, images and tokens do. A block without extra keys (adapter 0,
 * no range over it) has the identity and the key it had before extra keys. */

/* A multimodal item (an image, an audio clip) occupying the token positions
 * [start, start + len) of a sequence or prompt; hash is its content hash,
 * computed by the engine (e.g. a 128-bit hash of the pixels), compared as
 * bytes. */
typedef struct pkv_mm_range {
    int64_t start;    /* first token position, >= 0 */
    int64_t len;      /* tokens, >= 1; start + len <= INT32_MAX */
    uint8_t hash[16]; /* content hash of the item */
} pkv_mm_range;

/*! Sets seq's adapter id (0: none, the default), an extra key of every block
 *  the sequence registers. Only on an empty sequence (length 0); a fork
 *  inherits it, a sequence from pkv_prefix_lookup_ex takes its extra keys'.
 *  @return PKV_OK; PKV_ERR_NO_SEQ, PKV_ERR_STATE (seq is not empty).
 *  Unchanged on error. */
PKV_API int pkv_seq_set_adapter(pkv_cache *cache, pkv_seq seq, uint64_t adapter_id);

/*! Adds a multimodal range [start, start + len) with content hash hash[16]
 *  (copied) to seq: every block it overlaps carries the hash, the range's start
 *  relative to the block and len in its identity. Add it before appending its
 *  tokens: start must be >= seq's length and >= the end of seq's last range
 *  (ranges are added in order and never overlap). A fork inherits the ranges;
 *  a truncation to new_len drops the ranges that start at or past new_len
 *  (a range cut by it stays whole).
 *  @return PKV_OK; PKV_ERR_NULL (hash), PKV_ERR_NO_SEQ, PKV_ERR_INVALID
 *  (start or len out of range, overlap), PKV_ERR_NOMEM. Unchanged on error. */
PKV_API int pkv_seq_add_mm(pkv_cache *cache, pkv_seq seq, int64_t start, int64_t len, const uint8_t hash[16]);

/*! The extra keys of seq: *adapter_id (may be NULL) and *num_mm (may be NULL),
 *  its number of ranges, copied into mm[0..cap) when mm != NULL (cap >= the
 *  count, else PKV_ERR_BUFFER with *num_mm set and nothing copied).
 *  @return PKV_OK; PKV_ERR_NO_SEQ, PKV_ERR_NULL (mm with num_mm NULL), PKV_ERR_BUFFER. */
PKV_API int pkv_seq_extra_keys(pkv_cache *cache, pkv_seq seq, uint64_t *adapter_id, pkv_mm_range *mm, int32_t cap,
                               int32_t *num_mm);

/* ------------------------------------------------------------------------- */
/* Host storage                                                              */
/* ------------------------------------------------------------------------- */

/*! Writes n K (and V) rows into layer's arenas at the given slots.
 *  k_rows: [n][h_kv][d] of src_dtype; v_rows: [n][h_kv][dv] when V is separate,
 *  else ignored (may be NULL). src_dtype is the kv dtype (bytes copied) or
 *  PKV_F32 (converted, round-to-nearest-even); an FP8_MLA656 cache quantizes
 *  PKV_F32 or PKV_BF16 rows ([n][576]) and copies its own 656-byte rows.
 *  Each slot must lie in a block held by some sequence. Sharing is not checked
 *  here: write the slots your append returned, before forking the sequence or
 *  registering its blocks (copy-on-write protects the blocks others hold only
 *  on append).
 *  @return PKV_OK; PKV_ERR_MODE (metadata mode), PKV_ERR_SLOT, PKV_ERR_DTYPE,
 *  PKV_ERR_NONFINITE (FP8 quantization only), PKV_ERR_INVALID. Nothing is
 *  written unless every slot is valid. */
PKV_API int pkv_store_write(pkv_cache *cache, int32_t layer, const int64_t *slots, int32_t n,
                            const void *k_rows, const void *v_rows, int32_t src_dtype);

/*! Reads n K (and V) rows back, converted to float32 (k_out [n][h_kv][d],
 *  v_out [n][h_kv][dv] or NULL). */
PKV_API int pkv_store_read(pkv_cache *cache, int32_t layer, const int64_t *slots, int32_t n,
                           float *k_out, float *v_out);

/*! Pointers to layer's arenas for kernels: *k = k_cache, *v = v_cache or NULL
 *  when V is shared. */
PKV_API int pkv_store_arenas(pkv_cache *cache, int32_t layer, void **k, void **v);

/* ------------------------------------------------------------------------- */
/* Page-table export                                                         */
/* ------------------------------------------------------------------------- */

/*! FlashMLA's tables for seqs[0..b): block_table[b][max_blocks_per_seq] (int32,
 *  unused entries -1) and cache_seqlens[b]. A sequence with more blocks than
 *  max_blocks_per_seq is PKV_ERR_BUFFER; *needed (may be NULL) is then set to
 *  the max_blocks_per_seq required. On success *needed is that same value. */
PKV_API int pkv_export_flashmla(pkv_cache *cache, const pkv_seq *seqs, int32_t b,
                                int32_t *block_table, int32_t max_blocks_per_seq,
                                int32_t *cache_seqlens, int32_t *needed);

/*! FlashInfer's CSR form: kv_indptr[b+1], kv_indices[kv_indptr[b]] (capacity
 *  indices_cap), kv_last_page_len[b] (1..block_size; 0 for an empty sequence).
 *  Too small: PKV_ERR_BUFFER with *needed = the number of indices required. */
PKV_API int pkv_export_flashinfer(pkv_cache *cache, const pkv_seq *seqs, int32_t b,
                                  int32_t *kv_indptr, int32_t *kv_indices, int32_t indices_cap,
                                  int32_t *kv_last_page_len, int32_t *needed);

/*! The slots of the tokens appended by each sequence's last append (in seqs
 *  order, concatenated) into slots[0..cap); *n = the count. Too small:
 *  PKV_ERR_BUFFER with *n = the count required. */
PKV_API int pkv_export_slot_mapping(pkv_cache *cache, const pkv_seq *seqs, int32_t b,
                                    int64_t *slots, int32_t cap, int32_t *n);

/* ------------------------------------------------------------------------- */
/* Prefix cache (PKV_FLAG_PREFIX_CACHE)                                      */
/* ------------------------------------------------------------------------- */

/*! Registers every full, not yet registered block of seq in the prefix index
 *  (only blocks whose token ids are known, i.e. appended with tokens; the
 *  others are skipped and the call still succeeds). A block whose identity is
 *  already cached is deduplicated: seq is moved onto the cached block and its
 *  own block released (other holders of it are not moved). *registered /
 *  *deduped (may be NULL) count both kinds. Call it once the blocks' KV is
 *  written. With PKV_FLAG_AUTO_REGISTER, an append with token ids registers
 *  the full blocks right away, except that a block filled by that very append
 *  is never moved onto a cached copy (its slots were just handed out): the next
 *  append or an explicit call deduplicates it.
 *  @return PKV_OK; PKV_ERR_MODE (prefix caching off), PKV_ERR_NO_SEQ,
 *  PKV_ERR_NOMEM (nothing changed). */
PKV_API int pkv_prefix_register(pkv_cache *cache, pkv_seq seq, int32_t *registered,
                                int32_t *deduped);

/*! Starts a sequence from a prompt: finds the longest chain of cached full
 *  blocks matching tokens[0..n) in namespace ns, creates a new sequence sharing
 *  them (refcount + 1; evictable blocks are reclaimed) and holding their token
 *  ids, and sets *cached_tokens to its length (a multiple of block_size, up to
 *  n: for a fully cached prompt, an engine that needs the last token's logits
 *  truncates by one token and appends it again; copy-on-write keeps the cached
 *  block intact). The engine
 *  then appends tokens[*cached_tokens..n). Token ids, namespace and parent are
 *  compared on every hit, so a hash collision never shares KV. The prompt has
 *  no extra keys: blocks of an adapter or with an image are found by
 *  pkv_prefix_lookup_ex.
 *  @return PKV_OK (also on a miss: an empty sequence); PKV_ERR_MODE,
 *  PKV_ERR_NULL, PKV_ERR_INVALID (n < 0), PKV_ERR_NOMEM (nothing changed). */
PKV_API int pkv_prefix_lookup(pkv_cache *cache, uint64_t ns, const int32_t *tokens, int32_t n,
                              pkv_seq *out, int32_t *cached_tokens);

/*! Counts how many tokens of tokens[0..n) in namespace ns a lookup would find
 *  cached right now (a multiple of block_size), without taking references,
 *  touching the LRU order, promoting from tiers or counting a query: an
 *  admission check before a request is scheduled (vLLM's get_computed_blocks).
 *  *pool_tokens (may be NULL): of those, the tokens whose blocks are in the
 *  pool (the rest are in tiers and would be loaded).
 *  @return PKV_OK; PKV_ERR_MODE (prefix caching off), PKV_ERR_NULL, PKV_ERR_INVALID. */
PKV_API int pkv_prefix_peek(pkv_cache *cache, uint64_t ns, const int32_t *tokens, int32_t n,
                            int32_t *cached_tokens, int32_t *pool_tokens);

/* The extra keys of a prompt, for the _ex lookups (NULL there: none). */
typedef struct pkv_extra_keys {
    uint32_t size;           /* sizeof(pkv_extra_keys): start from PKV_EXTRA_KEYS_INIT */
    int32_t num_mm;          /* ranges in mm, >= 0 */
    uint64_t adapter_id;     /* LoRA adapter id, 0 none */
    const pkv_mm_range *mm;  /* [num_mm], sorted by start, non-overlapping; NULL when num_mm is 0 */
} pkv_extra_keys;

/* Initializer: pkv_extra_keys x = PKV_EXTRA_KEYS_INIT; then set the fields. */
#ifdef __cplusplus
#define PKV_EXTRA_KEYS_INIT {sizeof(pkv_extra_keys)}
#else
#define PKV_EXTRA_KEYS_INIT {.size = sizeof(pkv_extra_keys)}
#endif

/*! pkv_prefix_lookup with the prompt's extra keys (extra may be NULL: none,
 *  which is pkv_prefix_lookup): a cached block matches only when its adapter
 *  and the ranges overlapping it (hash, start relative to the block, length)
 *  are the prompt's, compared on every hit through a 64-bit digest of them
 *  under the cache's hash key, stored with each block (not through the index's
 *  hash: two different extras of the same tokens share KV only if their
 *  digests collide, probability 2^-64, and not by a choice of hashes made
 *  without the key). The new
 *  sequence takes extra->adapter_id and every range of extra (also those past
 *  the cached part), as pkv_seq_set_adapter and pkv_seq_add_mm would give it.
 *  @return as pkv_prefix_lookup; PKV_ERR_INVALID also for extra->size below
 *  the first layout's, num_mm < 0, a range out of range, unsorted or
 *  overlapping; PKV_ERR_NULL for mm NULL with num_mm > 0. Unchanged on error. */
PKV_API int pkv_prefix_lookup_ex(pkv_cache *cache, uint64_t ns, const int32_t *tokens, int32_t n,
                                 const pkv_extra_keys *extra, pkv_seq *out, int32_t *cached_tokens);

/*! pkv_prefix_peek with the prompt's extra keys (NULL: none), matched as
 *  pkv_prefix_lookup_ex matches them. @return as pkv_prefix_peek, and the
 *  extra-key errors of pkv_prefix_lookup_ex. */
PKV_API int pkv_prefix_peek_ex(pkv_cache *cache, uint64_t ns, const int32_t *tokens, int32_t n,
                               const pkv_extra_keys *extra, int32_t *cached_tokens, int32_t *pool_tokens);

/*! Evicts up to n evictable cached blocks (least recently used first; with tiers
 *  they move to tier 0 as the pool's own evictions do), returning them to the free
 *  list; *evicted (may be NULL) = how many. Blocks held by sequences are not
 *  touched. @return PKV_OK; PKV_ERR_MODE, PKV_ERR_INVALID (n < 0). */
PKV_API int pkv_prefix_evict(pkv_cache *cache, int32_t n, int32_t *evicted);

/*! Empties the prefix index: every cached block is forgotten (evictable ones go
 *  to the free list) and the tiers are emptied. Refused with PKV_ERR_STATE
 *  while a sequence holds registered blocks (free them first), as vLLM's
 *  reset_prefix_cache refuses while requests run. Statistics are kept.
 *  @return PKV_OK; PKV_ERR_MODE, PKV_ERR_STATE. */
PKV_API int pkv_prefix_reset(pkv_cache *cache);

/*! The number of blocks whose KV storage (every layer, K and V arenas) fits in
 *  bytes for cfg's geometry and dtype (host mode's arenas; for a GPU engine in
 *  metadata mode, the same arithmetic sizes its pool). Metadata is not counted.
 *  @return PKV_OK and *num_blocks (>= 1); PKV_ERR_NULL, PKV_ERR_DTYPE,
 *  PKV_ERR_INVALID (geometry, or bytes below one block, or over INT32_MAX blocks). */
PKV_API int pkv_config_blocks_for_bytes(const pkv_config *cfg, uint64_t bytes, int32_t *num_blocks);

/* KV events for external KV-aware routers (vLLM's BlockStored / BlockRemoved):
 * a bounded queue, filled as blocks enter and leave the prefix index (a block
 * that moves between the pool and the tiers stays stored), drained by the
 * engine. When the queue is full, new events are dropped and counted. */
enum pkv_event_kind { PKV_EVENT_STORED = 1, PKV_EVENT_REMOVED = 2 };
typedef struct pkv_event {
    int32_t kind;            /* pkv_event_kind */
    int32_t has_parent;      /* 0 for a chain's first block */
    uint8_t key[16];         /* the block's identity key (prefix key) */
    uint8_t parent_key[16];  /* its parent's key (zero without a parent) */
    uint64_t ns;             /* namespace */
} pkv_event;

/*! Starts recording events in a queue of capacity entries (allocated now);
 *  capacity 0 stops recording and frees the queue (pending events are lost).
 *  @return PKV_OK; PKV_ERR_MODE (prefix caching off), PKV_ERR_INVALID, PKV_ERR_NOMEM. */
PKV_API int pkv_events_enable(pkv_cache *cache, int32_t capacity);

/*! Moves up to cap pending events, oldest first, into out[0..cap) and sets *n;
 *  *dropped (may be NULL) = events lost to a full queue since the last drain
 *  (then reset to 0). A router that sees dropped > 0 resynchronizes.
 *  @return PKV_OK; PKV_ERR_NULL, PKV_ERR_INVALID (cap < 0), PKV_ERR_STATE (not enabled). */
PKV_API int pkv_events_drain(pkv_cache *cache, pkv_event *out, int32_t cap, int32_t *n, int64_t *dropped);

/*! SipHash-2-4 with a 128-bit output (the reference's siphash with outlen 16)
 *  of in[0..len) under key[16]; out[16]. Public so its test vectors can be
 *  checked; also handy for engines that key their own tables. */
PKV_API void pkv_siphash128(const uint8_t key[16], const void *in, size_t len, uint8_t out[16]);

/* ------------------------------------------------------------------------- */
/* KV tiers below the pool: the backend interface                            */
/* ------------------------------------------------------------------------- */

/* A tier backend is a store of blobs, each under the 16-byte identity key of a
 * cached block (its prefix key). The library decides what a blob holds (the
 * block's identity, a checksum and its rows in every layer) and checks it on
 * every load, so a backend only stores bytes: a torn, truncated, corrupted or
 * foreign blob is a miss, never wrong KV. The library calls a backend from one
 * thread at a time (its I/O threads or the caller's), so a backend need not
 * lock; calls may block. Every function returns PKV_OK or a negative status;
 * a failure other than PKV_ERR_NOT_FOUND marks the tier degraded in the stats
 * and is served as a miss.
 *
 * Writers of a backend: all blob sizes of one tier are equal (blob_size at
 * open), so fixed-size slots serve. */
typedef struct pkv_tier_backend {
    uint32_t size;  /* sizeof(pkv_tier_backend) */
    void *ctx;      /* the backend's state, passed to every call */
    /* Stores blob[0..len) under key, replacing an older blob of that key.
     * PKV_ERR_CAPACITY when full (the library evicts first, so this is rare). */
    int (*put)(void *ctx, const uint8_t key[16], const void *blob, size_t len);
    /* Copies the blob of key into buf[0..cap) and sets *len; PKV_ERR_NOT_FOUND
     * when there is none; PKV_ERR_BUFFER when cap < its length. */
    int (*get)(void *ctx, const uint8_t key[16], void *buf, size_t cap, size_t *len);
    /* 1 when a blob of key is stored, 0 when not, or a negative status. */
    int (*exists)(void *ctx, const uint8_t key[16]);
    /* Removes the blob of key (PKV_ERR_NOT_FOUND when there is none). */
    int (*del)(void *ctx, const uint8_t key[16]);
    /* Calls fn(arg, key, len) once per stored blob (restart: the library
     * re-indexes what survived); fn returning non-zero stops the scan. */
    int (*scan)(void *ctx, int (*fn)(void *arg, const uint8_t key[16], size_t len), void *arg);
    /* Releases the backend (files stay on disk). NULL: nothing to release. */
    void (*close)(void *ctx);
    /* Optional batch calls (since 1.1; NULL: the library calls get or put once
     * per key). get_many: the blobs of keys[0..n) in as few round trips as the
     * store allows; keys[i]'s blob into bufs[i] (cap bytes each), its length
     * into lens[i], and what get would have returned for it into status[i].
     * put_many: n puts of blobs[i] (len bytes each) under keys[i], status[i] as
     * put would return. Both return PKV_OK when every key was tried (the
     * outcome is in status[]), or a negative status when none could be. */
    int (*get_many)(void *ctx, int32_t n, const uint8_t (*keys)[16], void *const *bufs, size_t cap, size_t *lens,
                    int *status);
    int (*put_many)(void *ctx, int32_t n, const uint8_t (*keys)[16], const void *const *blobs, size_t len,
                    int *status);
    /* Since 1.3: pkv_backend_flags. PKV_BACKEND_CONCURRENT_GET: get may run
     * while other calls of this backend run in other threads (the I/O threads
     * of asynchronous loads then read in parallel; every other call stays one
     * thread at a time). A get that races a put or del of the same key may
     * return a torn blob or a miss, never crash: the library checks every blob.
     * The file tier sets it. */
    uint32_t flags;
} pkv_tier_backend;
enum pkv_backend_flags { PKV_BACKEND_CONCURRENT_GET = 1u << 0 };

/* The file tier: a directory (local disk, or a 3FS / NFS mount) of fixed-size
 * slab files holding blobs of blob_size bytes, capacity_bytes in all. Opening a
 * directory that holds slabs of the same blob_size finds their blobs again
 * (each verified: a torn or corrupted slot is dropped, never returned).
 * flags: PKV_FILE_TIER_FSYNC makes every put durable before it returns.
 * @return PKV_OK and *out filled (close it with out->close(out->ctx), or hand
 * it to a cache, which then owns it); PKV_ERR_NULL, PKV_ERR_INVALID (sizes),
 * PKV_ERR_IO (with errno's reason in detail, when detail != NULL: 256 bytes). */
enum { PKV_FILE_TIER_FSYNC = 1 };
PKV_API int pkv_tier_file_open(const char *dir, uint64_t capacity_bytes, size_t blob_size, uint32_t flags,
                               pkv_tier_backend *out, char *detail);

/* Tiers of a cache. Tiers need prefix caching (backend tiers also host storage;
 * metadata mode takes host tiers of slots: see pkv_tier_transfers_drain), and are added
 * to a new cache before it holds sequences (tier 0 first, just below the pool;
 * at most 3). Placement: a cached block the pool reclaims is written to tier 0
 * (write-back; with PKV_TIER_WRITE_THROUGH also when registered), stays findable, and a
 * lookup that runs past the pool's chain continues through the tiers and
 * copies each block found back into the pool (the tier keeps its copy). A full
 * tier moves its least recently used block to the next tier, or, from the
 * last, drops it (and the blocks that chain below it). Every block read back
 * is checked (geometry, identity, checksum): a bad one is a miss. */
enum pkv_tier_kind { PKV_TIER_HOST = 0, PKV_TIER_BACKEND = 1 };
/* Tier flags. PKV_TIER_WRITE_THROUGH (tier 0 only): a block is written to the
 * tier when it is registered, not only when the pool evicts it, so that it
 * survives a crash or restart of the process (at the cost of a write per
 * registered block). */
/* PKV_TIER_SHARED (a backend tier; since 1.1): the backend may hold blocks
 * this cache never indexed, written by other caches (other processes or
 * machines) configured with the same hash key and geometry, e.g. the Redis
 * tier. A lookup that runs past the pool's chain and the indexed tier entries
 * computes the keys of the prompt's next full blocks (namespace, parent key,
 * token ids, under the hash key) and asks the shared tier for them (get_many:
 * one round trip per batch of 32 blocks), promoting every block whose blob
 * checks into the pool. The cache never deletes a shared tier's blobs (other
 * caches may use them; the store's own eviction bounds it) and does not scan
 * it when added; its capacity_blocks bounds only the entries this cache
 * indexes. pkv_prefix_peek counts only indexed blocks. At most one shared tier. */
enum pkv_tier_flags { PKV_TIER_WRITE_THROUGH = 1u << 0, PKV_TIER_SHARED = 1u << 1 };

/*! Adds a host-memory tier of capacity_blocks blocks (each pkv_tier_blob_size
 *  bytes, allocated now through the cache's allocator). flags: pkv_tier_flags.
 *  In metadata mode the tier holds no bytes: it hands out slots and queues
 *  transfers (see pkv_tier_transfers_drain); PKV_TIER_WRITE_THROUGH is then
 *  refused (PKV_ERR_MODE).
 *  @return PKV_OK; PKV_ERR_MODE (no prefix caching),
 *  PKV_ERR_STATE (the cache already holds sequences or cached blocks),
 *  PKV_ERR_INVALID (capacity, or 3 tiers already), PKV_ERR_NOMEM. Unchanged on error. */
PKV_API int pkv_cache_add_host_tier(pkv_cache *cache, int64_t capacity_blocks, uint32_t flags);

/*! Adds a tier on a backend (the cache takes it over and closes it when it is
 *  destroyed, also when this call fails). Host mode only: in metadata mode the
 *  library holds no bytes to store (PKV_ERR_MODE; use host tiers of slots). Blobs the backend already holds
 *  (a file tier opened on the directory of an earlier run with the same hash
 *  key and geometry) are checked and indexed again: their prefixes are found.
 *  @return as pkv_cache_add_host_tier; PKV_ERR_INVALID when a required
 *  function is NULL or backend->size is not set. */
PKV_API int pkv_cache_add_tier(pkv_cache *cache, const pkv_tier_backend *backend, int64_t capacity_blocks,
                               uint32_t flags);

/* The Redis tier (a build with `make REDIS=1`, on hiredis): blobs as Redis
 * strings, for a tier shared by many caches (add it with PKV_TIER_SHARED and,
 * so that others see a block as soon as it is registered, on tier 0 with
 * PKV_TIER_WRITE_THROUGH).
 * url: "redis://[[user]:password@]host:port[/db]" (one server; AUTH with the
 *   password, SELECT db), or "redis+cluster://[[user]:password@]host:port[,host:port...]"
 *   (seed nodes of a Redis Cluster: the slot map comes from CLUSTER SLOTS,
 *   MOVED and ASK replies are followed, one connection per master, a batch is
 *   one pipeline per node). No TLS: Debian's hiredis 0.14 has none.
 * hash_key: the caches' prefix hash key (pkv_config.hash_key: a deployment
 *   secret shared by the caches that share blocks). Each value is the blob
 *   followed by a 16-byte MAC under keys derived from it, bound to the block's
 *   key (UMAC's shape: NH over 1 KiB chunks, a polynomial over GF(2^61 - 1)
 *   at a secret point over their outputs, then SipHash-128 of that hash, the
 *   length and the key; values of 1.1.0 fail it: a miss), so a value written
 *   without the hash key, moved to another key, truncated or overwritten is
 *   a miss (get: PKV_ERR_CORRUPT).
 * key_prefix: NULL for "pkv:", else up to 64 bytes put before the 32 hex
 *   digits of the block's identity key (a {hash tag} in it puts every block
 *   in one cluster slot).
 * timeout_ms: bound of a connect and of each command's wait, 1..600000
 *   (0: 1000). No call blocks much past it.
 * A connection that fails is closed and retried after a backoff (100 ms,
 * doubling to 5 s; calls meanwhile fail at once with PKV_ERR_IO), so a Redis
 * that is down costs one timeout per backoff period, not per call. The open
 * itself does not fail when the server is unreachable (it is retried later).
 * @return PKV_OK and *out filled (close it with out->close(out->ctx), or hand
 * it to a cache, which then owns it); PKV_ERR_NULL, PKV_ERR_INVALID (url,
 * prefix, timeout; the reason in detail when detail != NULL: 256 bytes),
 * PKV_ERR_NOMEM, PKV_ERR_MODE (a library built without REDIS=1). */
PKV_API int pkv_tier_redis_open(const char *url, const uint8_t hash_key[16], const char *key_prefix,
                                int32_t timeout_ms, pkv_tier_backend *out, char *detail);

/*! Bytes of one block's blob in this cache's tiers (what pkv_tier_file_open
 *  takes as blob_size). PKV_ERR_MODE in metadata mode. */
PKV_API int pkv_tier_blob_size(pkv_cache *cache, size_t *out);

typedef struct pkv_tier_stats {
    uint32_t size;            /* set by the caller: sizeof(pkv_tier_stats) */
    int32_t tier;             /* 0 = just below the pool */
    int32_t kind;             /* pkv_tier_kind */
    int32_t degraded;         /* 1 after a backend error (it keeps being used) */
    int64_t capacity_blocks, blocks;
    int64_t hits, misses;     /* promotions served; promised blocks that failed to load */
    int64_t stores;           /* blocks written (offload and demotion into it) */
    int64_t evictions;        /* blocks it let go to make room */
    int64_t errors;           /* backend calls that failed (not counting "not found") */
    int64_t corrupt;          /* blobs that failed the checks on load */
    int64_t restored;         /* blobs indexed again when it was added */
    int64_t bytes_in, bytes_out; /* written to it, read from it */
    double seconds_in, seconds_out; /* time in its backend's calls */
} pkv_tier_stats;

#ifdef __cplusplus
#define PKV_TIER_STATS_INIT {sizeof(pkv_tier_stats)}
#else
#define PKV_TIER_STATS_INIT {.size = sizeof(pkv_tier_stats)}
#endif

/*! Counters of tier `tier` (0-based) into *out (up to out->size bytes).
 *  Metadata mode: bytes count blocks of the config's geometry (num_layers,
 *  kv_dtype, h_kv, d, dv; 0 when it is not a valid one), the seconds stay 0
 *  (the engine moves the bytes), and slots held by swapped-out sequences are
 *  not counted in blocks nor stores. */
PKV_API int pkv_tier_stats_get(pkv_cache *cache, int32_t tier, pkv_tier_stats *out);

/* Tiers in metadata mode. The engine owns the KV memory of the pool (GPU) and
 * of the tiers (pinned host memory, SSD); the library decides placement and
 * queues the data movements for the engine, as copy-on-write returns copies.
 * pkv_cache_add_host_tier in metadata mode adds a tier of capacity_blocks
 * *slots* (slot ids 0..capacity_blocks-1 of that tier, one block of KV each,
 * in every layer); at most 3 such tiers, with the placement of host mode
 * (offload on pool reclaim, promotion on lookup, demotion to the next tier, drop
 * from the last; each tier its own LRU). Transfers, in the order queued:
 *   PKV_XFER_OFFLOAD: device block `block` -> slot `slot` of tier `tier`;
 *   PKV_XFER_LOAD:    slot `slot` of tier `tier` -> device block `block`;
 *   PKV_XFER_DEMOTE:  slot `slot` of tier `tier` -> slot `dst_slot` of tier + 1.
 * Ordering contract (vLLM's KV offloading connector works the same way): the
 * engine drains the queue after every call that may take pool blocks (append,
 * lookup, pkv_prefix_evict, swap in and out) and performs the transfers in
 * queue order, before the copy-on-write copy that call returned and before
 * launching any kernel that reads or writes the blocks involved. Then an
 * offload reads a reclaimed block before its new owner writes it, a slot is
 * read before it is reused, and a block a lookup (or swap-in) returned is
 * filled by its LOAD before attention reads it. key is the block's identity
 * key (zero for the slots of a swapped-out sequence). */
enum pkv_transfer_op { PKV_XFER_OFFLOAD = 1, PKV_XFER_LOAD = 2, PKV_XFER_DEMOTE = 3 };
typedef struct pkv_tier_transfer {
    int32_t op;       /* pkv_transfer_op */
    int32_t tier;     /* OFFLOAD: destination tier; LOAD, DEMOTE: source tier */
    int32_t block;    /* OFFLOAD: source device block; LOAD: destination; DEMOTE: -1 */
    int32_t reserved; /* 0 */
    int64_t slot;     /* the tier's slot: OFFLOAD destination; LOAD, DEMOTE source */
    int64_t dst_slot; /* DEMOTE: the slot in tier + 1; else -1 */
    uint8_t key[16];  /* the block's prefix key; zero for a swapped sequence's slot */
} pkv_tier_transfer;

/*! Moves up to cap queued transfers, oldest first, into out[0..cap) and sets
 *  *n (0 when none are pending; call again while *n == cap). Host mode and
 *  caches without tiers never queue any (*n = 0).
 *  @return PKV_OK; PKV_ERR_NULL (n, or out with cap > 0), PKV_ERR_INVALID (cap < 0). */
PKV_API int pkv_tier_transfers_drain(pkv_cache *cache, pkv_tier_transfer *out, int32_t cap, int32_t *n);

/*! Preemption: moves the whole of seq (partial last block included) out of the
 *  pool and releases its blocks (registered full blocks stay in the prefix
 *  cache as evictable blocks). The handle stays live: pkv_seq_length and
 *  pkv_seq_free work; append, lookahead, truncate, fork, register, blocks and
 *  the exports are refused with PKV_ERR_STATE until pkv_seq_swap_in.
 *  Metadata mode: the rows go to slots of tier 0 (queued OFFLOAD transfers);
 *  these slots are pinned, never evicted, until swap-in or free (cached
 *  entries of tier 0 are demoted or dropped to make room), so swap-in never
 *  loses data. Host mode: the rows are copied into memory from the cache's
 *  allocator (no tier needed); the cache keeps the largest buffer a swap-in
 *  or free gives back for the next swap-out (its pages are warm), until the
 *  cache is destroyed.
 *  @return PKV_OK; PKV_ERR_NO_SEQ; PKV_ERR_STATE (already swapped out, or
 *  lookahead tokens pending); PKV_ERR_MODE (metadata mode without a tier);
 *  PKV_ERR_CAPACITY (tier 0 has fewer slots than the sequence's blocks that
 *  are not already held by other swaps); PKV_ERR_NOMEM. Unchanged on error. */
PKV_API int pkv_seq_swap_out(pkv_cache *cache, pkv_seq seq);

/*! Brings a swapped-out seq back: takes its blocks from the pool (all or
 *  nothing) and restores its rows (host mode: copied; metadata mode: queued
 *  LOAD transfers, performed before attention reads the blocks). With
 *  PKV_FLAG_AUTO_REGISTER its full blocks are registered again (moved onto
 *  cached duplicates where they exist). New block ids: export the page tables
 *  again. @return PKV_OK; PKV_ERR_NO_SEQ; PKV_ERR_STATE (not swapped out);
 *  PKV_ERR_CAPACITY (fewer available pool blocks than it needs); PKV_ERR_NOMEM.
 *  Unchanged on error. */
PKV_API int pkv_seq_swap_in(pkv_cache *cache, pkv_seq seq);

/*! 1 in *out when seq is swapped out, else 0. */
PKV_API int pkv_seq_swapped(pkv_cache *cache, pkv_seq seq, int32_t *out);

/* Asynchronous loads (host mode; since 1.3). A lookup that finds a prompt's
 * blocks in a backend tier (file, Redis, a user's store) need not wait for
 * the reads: with I/O threads started, pkv_prefix_lookup_async takes the pool
 * blocks, indexes them at once and returns, while the threads read, check
 * (identity and checksum) and copy each blob into its block. The engine runs
 * other work meanwhile and polls or waits. Until a sequence's loads end, every
 * call that would read or extend its blocks is refused with PKV_ERR_STATE
 * (append, lookahead, accept, truncate, fork, register, blocks, the exports,
 * swap out, and pkv_store_read / _write of those blocks' slots; each applies
 * the loads that have ended first): no block is handed out for reading before
 * its load ends. pkv_seq_length and
 * pkv_seq_free work (a freed sequence's loads finish in the background; the
 * blocks are then evictable or free). Another lookup of the same prefix shares
 * the loading blocks (an async one counts them as loading; a synchronous
 * pkv_prefix_lookup waits for them before it returns, holding a thread-safe
 * cache meanwhile). A load that fails (blob
 * gone, torn, foreign or corrupt; counted as a tier miss and error) drops that
 * block's cache entry with what chains below it, and cuts every sequence that
 * holds the block back to the blocks before it: the engine sees a shorter
 * cached prefix and computes the rest (until pkv_seq_load_poll, _wait or
 * pkv_seq_length has reported the new length, calls on a cut sequence are
 * refused with PKV_ERR_STATE, so an append never lands at a length the engine
 * was not told). A block still loading is never the target of another
 * sequence's deduplication, written through, or evicted from its tier. Blocks found in the pool or in host
 * tiers are ready at once; a shared tier's blocks not yet indexed by this
 * cache are still fetched synchronously. At most 4096 loads are in flight; past
 * that a lookup promotes synchronously. */

/*! Starts io_threads (1..64) I/O threads for asynchronous loads; from now on
 *  each backend tier's functions are called under a lock of their own (still
 *  one thread at a time: a get that takes long also holds off the caller's
 *  offloads to that tier meanwhile). The threads stop when the cache is destroyed (each
 *  ends the read it is in; loads still queued are dropped unread). @return PKV_OK; PKV_ERR_MODE (metadata mode),
 *  PKV_ERR_STATE (already started, or no backend tier), PKV_ERR_INVALID,
 *  PKV_ERR_NOMEM. Unchanged on error. */
PKV_API int pkv_tier_async_start(pkv_cache *cache, int32_t io_threads);

/*! pkv_prefix_lookup_ex that does not wait for backend tiers: *ready_tokens =
 *  the leading tokens whose blocks hold their KV now, *loading_tokens = the
 *  tokens after them still being loaded (ready + loading = the sequence's
 *  length; both multiples of block_size). Without pkv_tier_async_start it is
 *  pkv_prefix_lookup_ex (loading 0). extra may be NULL.
 *  @return as pkv_prefix_lookup_ex; PKV_ERR_NULL for NULL outputs. */
PKV_API int pkv_prefix_lookup_async(pkv_cache *cache, uint64_t ns, const int32_t *tokens, int32_t n,
                                    const pkv_extra_keys *extra, pkv_seq *out, int32_t *ready_tokens,
                                    int32_t *loading_tokens);

/*! Applies the loads that have finished (never blocks) and sets
 *  *loading_tokens to seq's tokens still loading (0: the sequence is ready)
 *  and *length (may be NULL) to its length (shorter than the lookup said when
 *  a load failed). @return PKV_OK; PKV_ERR_NULL, PKV_ERR_NO_SEQ. */
PKV_API int pkv_seq_load_poll(pkv_cache *cache, pkv_seq seq, int32_t *loading_tokens, int32_t *length);

/*! Waits until none of seq's blocks is loading; *length (may be NULL) = its
 *  length then (the engine appends the prompt from there). A thread-safe cache
 *  is not held while waiting. @return PKV_OK; PKV_ERR_NO_SEQ (also when
 *  another thread frees seq meanwhile). */
PKV_API int pkv_seq_load_wait(pkv_cache *cache, pkv_seq seq, int32_t *length);

/* ------------------------------------------------------------------------- */
/* KV groups (since 1.3)                                                     */
/* ------------------------------------------------------------------------- */

/* Hybrid models keep several kinds of KV: Gemma 3 interleaves sliding-window
 * layers (W = 1024) with full-attention ones, DeepSeek V3.2 keeps an indexer
 * key cache beside its MLA cache. A groups object holds one cache per group
 * (each with its own layers, geometry, dtype, block size, pool, and window:
 * pkv_config.window > 0 makes a sliding-window group, whose blocks that leave
 * the window are released, -1 in its tables), and a group sequence holds one
 * sequence in each, kept in step:
 *  - pkv_groups_append takes blocks in every group or in none: it checks and
 *    reserves in all groups (capacity, memory) before it changes any;
 *  - truncate and fork likewise; free frees all members;
 *  - pkv_groups_lookup starts a group sequence from a prompt: the hit is the
 *    longest length every group can serve (a group without prefix caching
 *    hits 0; a window group serves a length when it holds that length's
 *    window, see pkv_config.window).
 * Everything that reads a group's blocks works on that group's cache with the
 * member's handle (pkv_groups_cache, pkv_groups_seq_handle): exports, blocks,
 * slot mappings, pkv_store_write at the slots an append returned, attention.
 * Calls that would change a member alone (append, lookahead, accept,
 * truncate, fork, free, swap) are refused on it with PKV_ERR_STATE.
 * Thread safety: all groups' configs PKV_FLAG_THREAD_SAFE or none; the
 * groups object then serializes its calls and takes the caches' locks. */
typedef struct pkv_groups pkv_groups;

/*! Creates n (1..8) group caches from cfgs[0..n) (each as pkv_cache_create
 *  takes it). @return PKV_OK; PKV_ERR_NULL, PKV_ERR_INVALID (n, a config, or
 *  thread safety mixed), PKV_ERR_NOMEM. Nothing is left on error. */
PKV_API int pkv_groups_create(const pkv_config *const *cfgs, int32_t n, pkv_groups **out);
/*! Destroys the groups object and its caches (NULL is ignored). */
PKV_API void pkv_groups_destroy(pkv_groups *groups);
/*! The reason for the last failed call on groups ("group i: ..." when a
 *  group's cache refused), "" after a success. */
PKV_API const char *pkv_groups_last_error(const pkv_groups *groups);
/*! Group i's cache (owned by groups: never destroy it). @return PKV_OK;
 *  PKV_ERR_NULL, PKV_ERR_INVALID (i). */
PKV_API int pkv_groups_cache(pkv_groups *groups, int32_t i, pkv_cache **out);
/*! A new empty group sequence in namespace ns. @return PKV_OK; PKV_ERR_NULL, PKV_ERR_NOMEM. */
PKV_API int pkv_groups_seq_create(pkv_groups *groups, uint64_t ns, pkv_seq *out);
/*! The handle of seq's member in group i's cache. @return PKV_OK;
 *  PKV_ERR_NULL, PKV_ERR_NO_SEQ, PKV_ERR_INVALID (i). */
PKV_API int pkv_groups_seq_handle(pkv_groups *groups, pkv_seq seq, int32_t i, pkv_seq *out);
/*! Tokens of seq (the same in every group). */
PKV_API int pkv_groups_length(pkv_groups *groups, pkv_seq seq, int32_t *out);
/*! pkv_seq_append in every group, all or nothing: slots (may be NULL) holds
 *  one output array per group (each NULL or [n]: that group's slots), cow (may
 *  be NULL in host mode) one pkv_block_copy per group. tokens as
 *  pkv_seq_append takes them (recorded in every group).
 *  @return PKV_OK; PKV_ERR_NO_SEQ; the first group's refusal (PKV_ERR_CAPACITY
 *  when a group's pool is short, ...), with no group changed. */
PKV_API int pkv_groups_append(pkv_groups *groups, pkv_seq seq, int32_t n, const int32_t *tokens,
                              int64_t *const *slots, pkv_block_copy *cow);
/*! Blocks an append of n tokens would take in each group: per_group[0..n_groups). */
PKV_API int pkv_groups_blocks_needed(pkv_groups *groups, pkv_seq seq, int32_t n, int32_t *per_group);
/*! pkv_seq_truncate in every group, all or nothing (a window group refuses a
 *  length whose window needs blocks it released). */
PKV_API int pkv_groups_truncate(pkv_groups *groups, pkv_seq seq, int32_t new_len);
/*! pkv_seq_fork in every group, all or nothing. */
PKV_API int pkv_groups_fork(pkv_groups *groups, pkv_seq parent, pkv_seq *child);
/*! Frees seq in every group. @return PKV_OK; PKV_ERR_NO_SEQ. */
PKV_API int pkv_groups_free(pkv_groups *groups, pkv_seq seq);
/*! Sizes the groups' pools from one byte budget (KV storage of every layer,
 *  as pkv_config_blocks_for_bytes counts it): num_blocks[i] for cfgs[i] such
 *  that all groups run out at the same number of sequences of seq_tokens
 *  tokens, a window group needing only the blocks of its window plus the one
 *  being filled (ceil(W / block_size) + 1), a full group all of them. E.g. a
 *  Gemma-3-like split (1 full layer, 5 layers of W = 1024, bf16 MLA rows,
 *  block size 64) holds 68 sequences of 8192 tokens in 1 GiB where six full
 *  layers hold 18. @return PKV_OK; PKV_ERR_NULL, PKV_ERR_INVALID (n, tokens,
 *  a config, or a group that would get no block or more than INT32_MAX),
 *  PKV_ERR_DTYPE. */
PKV_API int pkv_groups_blocks_for_bytes(const pkv_config *const *cfgs, int32_t n, uint64_t bytes,
                                        int32_t seq_tokens, int32_t *num_blocks);
/*! A group sequence from a prompt: pkv_prefix_lookup in every group with
 *  prefix caching, an empty member elsewhere; *cached_tokens = the longest
 *  length every group serves (the shortest full-group hit, lowered until
 *  every window group holds that length's window), every member at it. @return as pkv_prefix_lookup; on error
 *  no group sequence is made (blocks a lookup promoted from tiers stay cached). */
PKV_API int pkv_groups_lookup(pkv_groups *groups, uint64_t ns, const int32_t *tokens, int32_t n, pkv_seq *out,
                              int32_t *cached_tokens);

/* ------------------------------------------------------------------------- */
/* Attention (FlashMLA argument convention)                                  */
/* ------------------------------------------------------------------------- */
typedef struct pkv_attn_args {
    uint32_t size;             /* sizeof(pkv_attn_args), set by pkv_attn_args_init */
    int32_t batch, s_q, h_q, h_kv, d, dv;
    int32_t block_size, max_blocks_per_seq, num_blocks;
    int32_t causal;            /* 0 or 1 */
    float   softmax_scale;
    int32_t q_dtype, kv_dtype; /* pkv_dtype values */
    const void *q;             /* [batch][s_q][h_q][d] */
    const void *k_cache;       /* [num_blocks][block_size][h_kv][d] */
    const void *v_cache;       /* NULL: V = first dv dims of K; else [num_blocks][block_size][h_kv][dv] */
    const int32_t *block_table;   /* [batch][max_blocks_per_seq] */
    const int32_t *cache_seqlens; /* [batch] */
    float *out;                /* [batch][s_q][h_q][dv] */
    float *lse;                /* [batch][h_q][s_q], may be NULL */
    const int32_t *indices;    /* NULL: dense over block_table; else sparse (below) */
    int32_t topk;              /* entries per query row of indices */
    const float *attn_sink;    /* NULL, or [h_q]: one extra logit per head in the denominator */
    int32_t window;            /* 0: full attention; W > 0: sliding window, a query row sees
                                * only the last W of the keys it would see (decode: keys
                                * [L - W, L); causal s_q > 1: each row its own last W;
                                * FlashInfer's window_left = W - 1). Dense mode only. Table
                                * entries of blocks wholly before query 0's window are
                                * never read (released blocks may hold -1 there). */
    int32_t reserved;          /* 0 */
} pkv_attn_args;

/*! Zeroes *args and sets args->size; then fill the fields. Every pkv_attn_args
 *  passed to the library starts here (a NULL args is ignored). */
PKV_API void pkv_attn_args_init(pkv_attn_args *args);

/*! The oracle: attention over the paged cache, gathered through the block
 *  table and accumulated in double precision.
 *  Query head h uses KV head h / (h_q / h_kv). Causal with s_q > 1: query i of
 *  a sequence of length L sees keys [0, L - s_q + i]. Sliding window W > 0:
 *  a query row that would see keys [0, n) sees [max(0, n - W), n) (decode:
 *  [L - W, L)); a row whose window is empty is a row with no key; window 0 is
 *  full attention. out[b][s_q][h_q][dv]
 *  (float32); lse[b][h_q][s_q] natural-log log-sum-exp of the scaled scores;
 *  a row with no key gives out = 0, lse = +inf.
 *  Sparse mode (indices != NULL): indices[batch][s_q][topk] holds slot ids,
 *  -1 skipped; block_table and cache_seqlens are not read; causal must be 0.
 *  attn_sink[h]: exp(sink) joins head h's denominator; lse is unchanged.
 *  Table entries past a sequence's used blocks are never read, nor, with a
 *  window, those of blocks wholly before query 0's window start (the earliest
 *  key any row of the sequence sees): only entries [start / block_size,
 *  ceil(L / block_size)) are checked and read.
 *  Non-finite values are computed through, not refused: per row, in double,
 *  score_t = (q . k_t) * softmax_scale, m = max score (NaN scores skipped),
 *  p_t = exp(score_t - m), out = (sum p_t v_t) / (sum p_t), lse = m + log(sum
 *  p_t), each rounded to float (beyond float range: +-inf). So a NaN in a row's
 *  q or in a K value of a key it sees (FP8: also a 0x7f / 0xff code or a
 *  non-finite scale) gives that row NaN out and NaN lse, never the empty-row
 *  0 / +inf; a NaN in V gives NaN in that out column only; infinities follow
 *  IEEE arithmetic of the same steps (e.g. +inf in K: inf - inf = NaN).
 *  @return PKV_OK; PKV_ERR_NULL, PKV_ERR_INVALID (also: window < 0, window != 0
 *  in sparse mode, reserved != 0), PKV_ERR_HEADS, PKV_ERR_DTYPE,
 *  PKV_ERR_BLOCK_ID (a used table entry outside [0, num_blocks)),
 *  PKV_ERR_SEQLEN (negative, or longer than the table row covers),
 *  PKV_ERR_SLOT (a sparse index outside the cache); PKV_ERR_NOMEM (per-call
 *  scratch of O(keys) doubles, from malloc). Nothing is written on error. */
PKV_API int pkv_attn_reference(const pkv_attn_args *args);

/* A reusable pool of worker threads for pkv_attn. */
typedef struct pkv_workers pkv_workers;

/*! Starts num_threads workers (<= 0: all online CPUs; the calling thread counts
 *  as one of them). */
PKV_API int pkv_workers_create(int num_threads, pkv_workers **out);

/*! Stops and frees the pool. NULL is a no-op. */
PKV_API void pkv_workers_destroy(pkv_workers *w);

/*! Fast attention: same arguments, validation and results (within out max abs
 *  error <= 2e-3 * max|out| and lse abs error <= 1e-3 of pkv_attn_reference).
 *  With a window, work starts at each row's window: keys before it cost
 *  nothing, so windowed decode time is flat in L beyond W.
 *  w == NULL: the calling thread only. Scratch lives in the pool (or, without
 *  one, in a per-thread buffer freed at thread exit) and grows only when a call
 *  needs more than before: calls of a seen shape allocate nothing. A row that
 *  meets a non-finite value (in q, K or V, or a score or out value beyond float
 *  range) is recomputed the oracle's way, so it equals pkv_attn_reference's row
 *  exactly (at the oracle's speed; finite inputs never take that path unless
 *  q . k * scale overflows float). Calls that
 *  share a pool run one after another; calls with different pools or without
 *  one run in parallel. Results are bit-identical run to run for a given pool.
 *  @return as pkv_attn_reference; PKV_ERR_NOMEM if scratch cannot grow. */
PKV_API int pkv_attn(const pkv_attn_args *args, pkv_workers *w);

/*! Name of the kernel family pkv_attn uses for q_dtype with kv_dtype on this
 *  CPU (after PKV_ISA), e.g. "amx-bf16", "avx512-bf16dp", "avx512-f32",
 *  "avx2-f32", "scalar-f32"; groups of at most 8 query rows per KV head may use
 *  a variant for few rows ("avx512-f32-rows"). NULL if the pair is not a valid
 *  one (q_dtype F32/F16/BF16; kv_dtype F32/F16/BF16/FP8_MLA656). Static string. */
PKV_API const char *pkv_attn_kernel_name(int q_dtype, int kv_dtype);

/* ------------------------------------------------------------------------- */
/* FP8 MLA rows (FlashMLA's 656-byte layout)                                 */
/* ------------------------------------------------------------------------- */

/* x[0..511] -> 4 tiles of e4m3 + 4 float32 scales; x[512..575] -> bfloat16 (nearest even).
   pow2_scale != 0 rounds each scale up to a power of two. Returns PKV_OK or a status. */
PKV_API int pkv_mla656_quantize(const float *x /* [576] */, uint8_t *row /* [656] */, int pow2_scale);
PKV_API int pkv_mla656_dequantize(const uint8_t *row /* [656] */, float *x /* [576] */);

/* ------------------------------------------------------------------------- */
/* CPU features                                                              */
/* ------------------------------------------------------------------------- */

/* Features the library looks for: bits of pkv_cpu_features(). A bit is set
 * when the CPU has the feature and the OS enables its register state (AMX:
 * and granted this process the tile data). Fixed values; new ones are added. */
enum pkv_cpu_feature {
    PKV_CPU_SSE4_2 = 1u << 0,
    PKV_CPU_AVX = 1u << 1,
    PKV_CPU_AVX2 = 1u << 2,
    PKV_CPU_FMA = 1u << 3,
    PKV_CPU_F16C = 1u << 4,
    PKV_CPU_AVX512F = 1u << 5,
    PKV_CPU_AVX512BW = 1u << 6,
    PKV_CPU_AVX512VL = 1u << 7,
    PKV_CPU_AVX512DQ = 1u << 8,
    PKV_CPU_AVX512BF16 = 1u << 9,
    PKV_CPU_AVX512FP16 = 1u << 10,
    PKV_CPU_AMX_TILE = 1u << 11,
    PKV_CPU_AMX_BF16 = 1u << 12
};

/* ISA levels of the kernels, in order; each needs the features of the one
 * below it and more (scalar: none; avx2: AVX2, FMA, F16C; avx512: also
 * AVX-512 F/BW/VL/DQ/BF16; amx: also AMX-TILE and AMX-BF16). */
typedef enum pkv_isa { PKV_ISA_SCALAR = 0, PKV_ISA_AVX2 = 1, PKV_ISA_AVX512 = 2, PKV_ISA_AMX = 3 } pkv_isa;

/*! Bitmask of pkv_cpu_feature bits of this CPU, read once (CPUID, XGETBV). */
PKV_API uint64_t pkv_cpu_features(void);

/*! Name of the feature with bit value 1 << bit ("avx2", "amx-bf16", ...), or
 *  NULL when no feature has that bit. Static string. */
PKV_API const char *pkv_cpu_feature_name(int bit);

/*! Name of ISA level isa ("scalar", "avx2", "avx512", "amx"), or NULL for a
 *  value that is no level (so `for (i = 0; pkv_isa_label(i); i++)` lists them). */
PKV_API const char *pkv_isa_label(int isa);

/*! 1 if this CPU (and OS) can run level isa's kernels, else 0. */
PKV_API int pkv_isa_supported(int isa);

/*! The level pkv_attn and the FP8 quantizer dispatch to: the best supported
 *  one, or, with the environment variable PKV_ISA set to a level's name when
 *  the library first asks, the best supported level not above it. Decided
 *  once per process. */
PKV_API int pkv_isa_active(void);

/*! pkv_isa_label(pkv_isa_active()). */
PKV_API const char *pkv_isa_name(void);

/*! How PKV_ISA was taken. detail (may be NULL when cap is 0) receives a
 *  sentence such as "PKV_ISA=bogus is not one of scalar, avx2, avx512, amx:
 *  ignored, using avx512" ("" when there is nothing to say), truncated to cap.
 *  @return PKV_OK when PKV_ISA is unset, empty or names a level this CPU runs;
 *  PKV_ERR_INVALID when it names no level (ignored) or a level this CPU cannot
 *  run (the best level below it is used). */
PKV_API int pkv_isa_status(char *detail, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* PAGEDKV_H */
