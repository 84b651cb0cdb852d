/* Bad input, table-driven: every public function of pagedkv.h called with NULL,
 * negative, oversized and stale arguments (a freed sequence, a recycled slot's
 * old handle, a handle from another or a destroyed cache, forged handles).
 * For each row: the exact documented status, a pkv_strerror text that is
 * non-empty and not "unknown status", every cache unchanged (canonical dump
 * compared) and pkv_cache_check passing. Prints the number of cases.
 *
 * Not called with NULL: pkv_siphash128 (void, its pointers are required by
 * contract and it has no status to return). */
#include <stdint.h>

#include "internal.h"
#include "test.h"

enum { NB = 8, BS = 4, LAYERS = 2, D = 8, DV = 4 };

typedef struct T {
    pkv_cache *h, *m, *f, *o, *p; /* host, metadata, FP8 host, "other", prefix-cache */
    pkv_seq hs, hs_empty, ms, fs, ps, pstale, stale, recycled, foreign, destroyed, forged_gen, forged_idx;
    pkv_cache *oc;            /* output of create cases (destroyed after each) */
    pkv_config hcfg;
    pkv_seq sq, seqs[4];
    int32_t i32, n, toks[16], table[4 * NB], lens[4], indptr[5], indices[4 * NB], last[4];
    int64_t slots_ok[2], slots[8], fslot[1];
    float krows[8 * 2 * D], vrows[8 * 2 * DV];
    float fp8_in[576];
    uint8_t fp8_row[656];
    pkv_stats stats;
    pkv_config cfg;
    pkv_block_copy cow;
    void *pk, *pv;
    /* attention */
    pkv_attn_args a;
    float q[2 * 2 * D], kc[NB * BS * D], vc[NB * BS * DV], out[2 * 2 * DV], lse[2 * 2];
    int32_t bt[2 * 2], sl[2], ix[2 * 2];
    float sink[2];
} T;

/* Allocator refusing anything over 64 MiB (the "oversized" creation cases). */
static void *small_alloc(void *o, size_t n) { (void)o; return n > (64u << 20) ? NULL : malloc(n); }
static void small_free(void *o, void *p) { (void)o; free(p); }

static pkv_config host_cfg(void) {
    pkv_config c;
    pkv_config_init(&c);
    c.num_blocks = NB;
    c.block_size = BS;
    c.storage = PKV_STORAGE_HOST;
    c.num_layers = LAYERS;
    c.h_kv = 1;
    c.d = D;
    c.dv = DV;
    c.v_separate = 1;
    c.kv_dtype = PKV_F32;
    return c;
}

static pkv_config meta_cfg(void) {
    pkv_config c;
    pkv_config_init(&c);
    c.num_blocks = NB;
    c.block_size = BS;
    return c;
}

/* Creates from cfg into t->oc; a cache that was created is destroyed again. */
static int create(T *t, pkv_config cfg) {
    t->oc = NULL;
    int st = pkv_cache_create(&cfg, &t->oc);
    if (st != PKV_OK && t->oc != NULL) st = -1000; /* contract: *out NULL on error */
    pkv_cache_destroy(t->oc);
    t->oc = NULL;
    return st;
}

static int zero_is_ok(size_t v) { return v == 0 ? PKV_OK : -1001; }

static pkv_workers *g_workers;

/* The oracle, pkv_attn on the calling thread and pkv_attn on a worker pool must
 * give the same status; returns it (or -1002 when they disagree). */
static int attn_all(const pkv_attn_args *a) {
    int r = pkv_attn_reference(a);
    int f1 = pkv_attn(a, NULL);
    int f2 = pkv_attn(a, g_workers);
    if (r != f1 || r != f2) {
        fprintf(stderr, "attention statuses disagree: reference %d, pkv_attn %d, with workers %d\n", r, f1, f2);
        return -1002;
    }
    return r;
}

static int workers_create(int n) {
    pkv_workers *w = (pkv_workers *)1;
    int st = pkv_workers_create(n, &w);
    if (st != PKV_OK && w != NULL) return -1000;
    pkv_workers_destroy(w);
    return st;
}

/* Valid dense attention arguments over T's small buffers. */
static void attn_base(T *t) {
    pkv_attn_args_init(&t->a);
    pkv_attn_args *a = &t->a;
    a->batch = 2;
    a->s_q = 1;
    a->h_q = 2;
    a->h_kv = 1;
    a->d = D;
    a->dv = DV;
    a->block_size = BS;
    a->max_blocks_per_seq = 2;
    a->num_blocks = NB;
    a->softmax_scale = 0.5f;
    a->q_dtype = a->kv_dtype = PKV_F32;
    a->q = t->q;
    a->k_cache = t->kc;
    a->v_cache = t->vc;
    t->bt[0] = 0; t->bt[1] = 1; t->bt[2] = 2; t->bt[3] = -1;
    t->sl[0] = 5; t->sl[1] = 3;
    a->block_table = t->bt;
    a->cache_seqlens = t->sl;
    a->out = t->out;
    a->lse = t->lse;
}

/* The same arguments in sparse mode. */
static pkv_attn_args *sparse(T *t) {
    attn_base(t);
    t->ix[0] = 0; t->ix[1] = -1; t->ix[2] = 5; t->ix[3] = NB * BS - 1;
    t->a.indices = t->ix;
    t->a.topk = 2;
    return &t->a;
}

/* Runs case i; sets *expect and *what; returns its status. *what = NULL past the end. */
static int run_case(T *t, int i, int *expect, const char **what) {
    int k = 0;
    pkv_config c;
    pkv_attn_args *A = &t->a;
    attn_base(t);
#define CASE(exp, expr)          \
    if (i == k++) {              \
        *expect = (exp);         \
        *what = #expr;           \
        return (expr);           \
    }
    /* ---- status texts, sizes, version ---- */
    CASE(PKV_OK, zero_is_ok(pkv_dtype_size(-1)))
    CASE(PKV_OK, zero_is_ok(pkv_dtype_size(99)))
    CASE(PKV_OK, zero_is_ok(pkv_dtype_size(PKV_FP8_MLA656)))
    CASE(PKV_OK, zero_is_ok(pkv_row_bytes(PKV_F32, 0, 8)))
    CASE(PKV_OK, zero_is_ok(pkv_row_bytes(PKV_F32, -1, 8)))
    CASE(PKV_OK, zero_is_ok(pkv_row_bytes(PKV_F32, 1, -8)))
    CASE(PKV_OK, zero_is_ok(pkv_row_bytes(77, 1, 8)))
    CASE(PKV_OK, zero_is_ok(pkv_row_bytes(PKV_FP8_MLA656, 2, 576)))
    CASE(PKV_OK, zero_is_ok(pkv_row_bytes(PKV_FP8_MLA656, 1, 512)))
    CASE(PKV_OK, zero_is_ok(strcmp(pkv_strerror(-9999), "unknown status")))
    CASE(PKV_OK, zero_is_ok(strcmp(pkv_strerror(12345), "unknown status")))
    CASE(PKV_OK, zero_is_ok(pkv_version() == NULL))
    CASE(PKV_OK, (pkv_config_init(NULL), PKV_OK))
    /* ---- cache creation ---- */
    CASE(PKV_ERR_NULL, pkv_cache_create(NULL, &t->oc))
    CASE(PKV_ERR_NULL, pkv_cache_create(&t->hcfg, NULL))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.num_blocks = 0, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.num_blocks = -5, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.num_blocks = INT32_MIN, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.block_size = 0, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.block_size = -64, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.block_size = 4097, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.flags = 1u << 20, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.flags = PKV_FLAG_AUTO_REGISTER, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.storage = 2, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.storage = -1, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.hash_key_set = 2, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.allocator.alloc = small_alloc, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = meta_cfg(), c.allocator.free = small_free, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = host_cfg(), c.num_layers = 0, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = host_cfg(), c.num_layers = -1, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = host_cfg(), c.h_kv = 0, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = host_cfg(), c.d = -1, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = host_cfg(), c.dv = 0, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = host_cfg(), c.v_separate = 2, create(t, c)))
    CASE(PKV_ERR_INVALID, (c = host_cfg(), c.v_separate = 0, c.dv = D + 1, create(t, c)))
    CASE(PKV_ERR_DTYPE, (c = host_cfg(), c.kv_dtype = 42, create(t, c)))
    CASE(PKV_ERR_DTYPE, (c = host_cfg(), c.kv_dtype = -1, create(t, c)))
    CASE(PKV_ERR_DTYPE, (c = host_cfg(), c.kv_dtype = PKV_FP8_MLA656, create(t, c)))
    CASE(PKV_ERR_DTYPE, (c = host_cfg(), c.kv_dtype = PKV_FP8_MLA656, c.h_kv = 1, c.d = 576, c.dv = 512,
                         c.v_separate = 1, create(t, c)))
    /* arena bytes overflow size_t */
    CASE(PKV_ERR_INVALID, (c = host_cfg(), c.num_blocks = INT32_MAX, c.block_size = 4096, c.h_kv = INT32_MAX,
                           c.d = INT32_MAX, create(t, c)))
    /* oversized but representable: the allocator refuses, nothing leaks */
    CASE(PKV_ERR_NOMEM, (c = meta_cfg(), c.num_blocks = INT32_MAX, c.allocator.alloc = small_alloc,
                         c.allocator.free = small_free, create(t, c)))
    CASE(PKV_ERR_NOMEM, (c = host_cfg(), c.num_blocks = 1 << 20, c.block_size = 4096,
                         c.allocator.alloc = small_alloc, c.allocator.free = small_free, create(t, c)))
    CASE(PKV_OK, (pkv_cache_destroy(NULL), PKV_OK))
    /* ---- cache queries ---- */
    CASE(PKV_ERR_NULL, pkv_cache_config(NULL, &t->cfg))
    CASE(PKV_ERR_NULL, pkv_cache_config(t->h, NULL))
    CASE(PKV_OK, zero_is_ok(strcmp(pkv_cache_last_error(NULL), "") == 0))
    CASE(PKV_ERR_NULL, pkv_cache_stats(NULL, &t->stats))
    CASE(PKV_ERR_NULL, pkv_cache_stats(t->h, NULL))
    CASE(PKV_ERR_NULL, pkv_block_refcount(NULL, 0, &t->i32))
    CASE(PKV_ERR_NULL, pkv_block_refcount(t->h, 0, NULL))
    CASE(PKV_ERR_BLOCK_ID, pkv_block_refcount(t->h, -1, &t->i32))
    CASE(PKV_ERR_BLOCK_ID, pkv_block_refcount(t->h, NB, &t->i32))
    CASE(PKV_ERR_BLOCK_ID, pkv_block_refcount(t->h, INT32_MAX, &t->i32))
    CASE(PKV_ERR_BLOCK_ID, pkv_block_refcount(t->m, INT32_MIN, &t->i32))
    CASE(PKV_ERR_NULL, pkv_cache_check(NULL))
    /* ---- sequences: NULL ---- */
    CASE(PKV_ERR_NULL, pkv_seq_create(NULL, 0, &t->sq))
    CASE(PKV_ERR_NULL, pkv_seq_create(t->h, 0, NULL))
    CASE(PKV_ERR_NULL, pkv_seq_append(NULL, t->hs, 1, NULL, NULL, NULL))
    CASE(PKV_ERR_NULL, pkv_seq_append(t->m, t->ms, 1, NULL, NULL, NULL)) /* metadata mode needs cow */
    CASE(PKV_ERR_NULL, pkv_seq_blocks_needed(NULL, t->hs, 1, &t->i32))
    CASE(PKV_ERR_NULL, pkv_seq_blocks_needed(t->h, t->hs, 1, NULL))
    CASE(PKV_ERR_NULL, pkv_seq_truncate(NULL, t->hs, 0))
    CASE(PKV_ERR_NULL, pkv_seq_fork(NULL, t->hs, &t->sq))
    CASE(PKV_ERR_NULL, pkv_seq_fork(t->h, t->hs, NULL))
    CASE(PKV_ERR_NULL, pkv_seq_free(NULL, t->hs))
    CASE(PKV_ERR_NULL, pkv_seq_length(NULL, t->hs, &t->i32))
    CASE(PKV_ERR_NULL, pkv_seq_length(t->h, t->hs, NULL))
    CASE(PKV_ERR_NULL, pkv_seq_blocks(NULL, t->hs, t->table, NB, &t->n))
    CASE(PKV_ERR_NULL, pkv_seq_blocks(t->h, t->hs, t->table, NB, NULL))
    CASE(PKV_ERR_NULL, pkv_seq_blocks(t->h, t->hs, NULL, NB, &t->n))
    /* ---- sequences: negative and oversized ---- */
    CASE(PKV_ERR_INVALID, pkv_seq_append(t->h, t->hs, -1, NULL, NULL, NULL))
    CASE(PKV_ERR_INVALID, pkv_seq_append(t->h, t->hs, INT32_MIN, NULL, NULL, NULL))
    CASE(PKV_ERR_INVALID, pkv_seq_append(t->h, t->hs, INT32_MAX, NULL, NULL, NULL)) /* length overflows */
    CASE(PKV_ERR_CAPACITY, pkv_seq_append(t->h, t->hs_empty, INT32_MAX, NULL, NULL, NULL))
    CASE(PKV_ERR_CAPACITY, pkv_seq_append(t->h, t->hs, NB * BS, NULL, NULL, NULL))
    CASE(PKV_ERR_CAPACITY, pkv_seq_append(t->m, t->ms, 1000, NULL, NULL, &t->cow))
    CASE(PKV_ERR_INVALID, pkv_seq_blocks_needed(t->h, t->hs, -1, &t->i32))
    CASE(PKV_ERR_INVALID, pkv_seq_blocks_needed(t->h, t->hs, INT32_MAX, &t->i32))
    CASE(PKV_ERR_INVALID, pkv_seq_truncate(t->h, t->hs, -1))
    CASE(PKV_ERR_INVALID, pkv_seq_truncate(t->h, t->hs, 7))
    CASE(PKV_ERR_INVALID, pkv_seq_truncate(t->h, t->hs, INT32_MAX))
    CASE(PKV_ERR_INVALID, pkv_seq_truncate(t->h, t->hs_empty, 1))
    CASE(PKV_ERR_BUFFER, pkv_seq_blocks(t->h, t->hs, t->table, 1, &t->n))
    CASE(PKV_ERR_BUFFER, pkv_seq_blocks(t->h, t->hs, t->table, -1, &t->n))
    CASE(PKV_ERR_BUFFER, pkv_seq_blocks(t->h, t->hs, t->table, INT32_MIN, &t->n))
    /* ---- sequences: stale and forged handles, on every call that takes one ---- */
#define STALE_CASES(S)                                                              \
    CASE(PKV_ERR_NO_SEQ, pkv_seq_append(t->h, S, 1, NULL, NULL, NULL))             \
    CASE(PKV_ERR_NO_SEQ, pkv_seq_blocks_needed(t->h, S, 1, &t->i32))               \
    CASE(PKV_ERR_NO_SEQ, pkv_seq_truncate(t->h, S, 0))                             \
    CASE(PKV_ERR_NO_SEQ, pkv_seq_fork(t->h, S, &t->sq))                            \
    CASE(PKV_ERR_NO_SEQ, pkv_seq_free(t->h, S))                                    \
    CASE(PKV_ERR_NO_SEQ, pkv_seq_length(t->h, S, &t->i32))                         \
    CASE(PKV_ERR_NO_SEQ, pkv_seq_blocks(t->h, S, t->table, NB, &t->n))             \
    CASE(PKV_ERR_NO_SEQ, (t->seqs[0] = t->hs, t->seqs[1] = S,                      \
                          pkv_export_flashmla(t->h, t->seqs, 2, t->table, NB, t->lens, &t->i32))) \
    CASE(PKV_ERR_NO_SEQ, (t->seqs[0] = S, pkv_export_flashinfer(t->h, t->seqs, 1, t->indptr,    \
                                                                t->indices, 4 * NB, t->last, &t->i32))) \
    CASE(PKV_ERR_NO_SEQ, (t->seqs[0] = t->hs, t->seqs[1] = S,                      \
                          pkv_export_slot_mapping(t->h, t->seqs, 2, t->slots, 8, &t->n)))
    STALE_CASES(t->stale)
    STALE_CASES(t->recycled)
    STALE_CASES(t->foreign)
    STALE_CASES(t->destroyed)
    STALE_CASES(t->forged_gen)
    STALE_CASES(t->forged_idx)
    STALE_CASES((pkv_seq)0)
    STALE_CASES((pkv_seq)-1)
    STALE_CASES((pkv_seq)INT64_MIN)
    STALE_CASES((pkv_seq)INT64_MAX)
    /* ---- host storage ---- */
    CASE(PKV_ERR_NULL, pkv_store_write(NULL, 0, t->slots_ok, 2, t->krows, t->vrows, PKV_F32))
    CASE(PKV_ERR_NULL, pkv_store_write(t->h, 0, NULL, 2, t->krows, t->vrows, PKV_F32))
    CASE(PKV_ERR_NULL, pkv_store_write(t->h, 0, t->slots_ok, 2, NULL, t->vrows, PKV_F32))
    CASE(PKV_ERR_NULL, pkv_store_write(t->h, 0, t->slots_ok, 2, t->krows, NULL, PKV_F32))
    CASE(PKV_ERR_MODE, pkv_store_write(t->m, 0, t->slots_ok, 2, t->krows, t->vrows, PKV_F32))
    CASE(PKV_ERR_INVALID, pkv_store_write(t->h, -1, t->slots_ok, 2, t->krows, t->vrows, PKV_F32))
    CASE(PKV_ERR_INVALID, pkv_store_write(t->h, LAYERS, t->slots_ok, 2, t->krows, t->vrows, PKV_F32))
    CASE(PKV_ERR_INVALID, pkv_store_write(t->h, 0, t->slots_ok, -1, t->krows, t->vrows, PKV_F32))
    CASE(PKV_ERR_SLOT, (t->slots[0] = t->slots_ok[0], t->slots[1] = -1,
                        pkv_store_write(t->h, 0, t->slots, 2, t->krows, t->vrows, PKV_F32)))
    CASE(PKV_ERR_SLOT, (t->slots[0] = t->slots_ok[0], t->slots[1] = (int64_t)NB * BS,
                        pkv_store_write(t->h, 0, t->slots, 2, t->krows, t->vrows, PKV_F32)))
    CASE(PKV_ERR_SLOT, (t->slots[0] = t->slots_ok[0], t->slots[1] = INT64_MAX,
                        pkv_store_write(t->h, 0, t->slots, 2, t->krows, t->vrows, PKV_F32)))
    CASE(PKV_ERR_SLOT, (t->slots[0] = t->slots_ok[0], t->slots[1] = (int64_t)(NB - 1) * BS, /* free block */
                        pkv_store_write(t->h, 0, t->slots, 2, t->krows, t->vrows, PKV_F32)))
    CASE(PKV_ERR_DTYPE, pkv_store_write(t->h, 0, t->slots_ok, 2, t->krows, t->vrows, 17))
    CASE(PKV_ERR_DTYPE, pkv_store_write(t->h, 0, t->slots_ok, 2, t->krows, t->vrows, -1))
    CASE(PKV_ERR_DTYPE, pkv_store_write(t->h, 0, t->slots_ok, 2, t->krows, t->vrows, PKV_BF16))
    CASE(PKV_ERR_DTYPE, pkv_store_write(t->f, 0, t->fslot, 1, t->fp8_in, NULL, PKV_F16))
    CASE(PKV_ERR_NONFINITE, (t->fp8_in[17] = NAN, pkv_store_write(t->f, 0, t->fslot, 1, t->fp8_in, NULL, PKV_F32)))
    CASE(PKV_ERR_NONFINITE, (t->fp8_in[17] = 0, t->fp8_in[570] = -INFINITY,
                             pkv_store_write(t->f, 0, t->fslot, 1, t->fp8_in, NULL, PKV_F32)))
    CASE(PKV_ERR_NULL, pkv_store_read(NULL, 0, t->slots_ok, 2, t->krows, t->vrows))
    CASE(PKV_ERR_NULL, pkv_store_read(t->h, 0, NULL, 2, t->krows, t->vrows))
    CASE(PKV_ERR_NULL, pkv_store_read(t->h, 0, t->slots_ok, 2, NULL, t->vrows))
    CASE(PKV_ERR_MODE, pkv_store_read(t->m, 0, t->slots_ok, 2, t->krows, t->vrows))
    CASE(PKV_ERR_INVALID, pkv_store_read(t->h, -1, t->slots_ok, 2, t->krows, t->vrows))
    CASE(PKV_ERR_INVALID, pkv_store_read(t->h, INT32_MAX, t->slots_ok, 2, t->krows, t->vrows))
    CASE(PKV_ERR_INVALID, pkv_store_read(t->h, 0, t->slots_ok, INT32_MIN, t->krows, t->vrows))
    CASE(PKV_ERR_SLOT, (t->slots[0] = INT64_MIN, pkv_store_read(t->h, 0, t->slots, 1, t->krows, t->vrows)))
    CASE(PKV_ERR_SLOT, (t->slots[0] = (int64_t)(NB - 1) * BS + 3,
                        pkv_store_read(t->h, 1, t->slots, 1, t->krows, t->vrows)))
    CASE(PKV_ERR_NULL, pkv_store_arenas(NULL, 0, &t->pk, &t->pv))
    CASE(PKV_ERR_NULL, pkv_store_arenas(t->h, 0, NULL, &t->pv))
    CASE(PKV_ERR_MODE, pkv_store_arenas(t->m, 0, &t->pk, &t->pv))
    CASE(PKV_ERR_INVALID, pkv_store_arenas(t->h, -1, &t->pk, &t->pv))
    CASE(PKV_ERR_INVALID, pkv_store_arenas(t->h, LAYERS, &t->pk, &t->pv))
    /* ---- exports ---- */
    CASE(PKV_ERR_NULL, pkv_export_flashmla(NULL, &t->hs, 1, t->table, NB, t->lens, &t->i32))
    CASE(PKV_ERR_NULL, pkv_export_flashmla(t->h, NULL, 1, t->table, NB, t->lens, &t->i32))
    CASE(PKV_ERR_NULL, pkv_export_flashmla(t->h, &t->hs, 1, NULL, NB, t->lens, &t->i32))
    CASE(PKV_ERR_NULL, pkv_export_flashmla(t->h, &t->hs, 1, t->table, NB, NULL, &t->i32))
    CASE(PKV_ERR_INVALID, pkv_export_flashmla(t->h, &t->hs, -1, t->table, NB, t->lens, &t->i32))
    CASE(PKV_ERR_INVALID, pkv_export_flashmla(t->h, &t->hs, INT32_MIN, t->table, NB, t->lens, &t->i32))
    CASE(PKV_ERR_INVALID, pkv_export_flashmla(t->h, &t->hs_empty, 1, t->table, -1, t->lens, &t->i32))
    CASE(PKV_ERR_BUFFER, pkv_export_flashmla(t->h, &t->hs, 1, t->table, 1, t->lens, &t->i32))
    CASE(PKV_ERR_INVALID, pkv_export_flashmla(t->h, &t->hs, 1, t->table, -1, t->lens, NULL))
    CASE(PKV_ERR_NULL, pkv_export_flashinfer(NULL, &t->hs, 1, t->indptr, t->indices, NB, t->last, &t->i32))
    CASE(PKV_ERR_NULL, pkv_export_flashinfer(t->h, NULL, 1, t->indptr, t->indices, NB, t->last, &t->i32))
    CASE(PKV_ERR_NULL, pkv_export_flashinfer(t->h, &t->hs, 1, NULL, t->indices, NB, t->last, &t->i32))
    CASE(PKV_ERR_NULL, pkv_export_flashinfer(t->h, &t->hs, 1, t->indptr, NULL, NB, t->last, &t->i32))
    CASE(PKV_ERR_NULL, pkv_export_flashinfer(t->h, &t->hs, 1, t->indptr, t->indices, NB, NULL, &t->i32))
    CASE(PKV_ERR_INVALID, pkv_export_flashinfer(t->h, &t->hs, -1, t->indptr, t->indices, NB, t->last, &t->i32))
    CASE(PKV_ERR_INVALID, pkv_export_flashinfer(t->h, &t->hs_empty, 1, t->indptr, t->indices, -1, t->last, NULL))
    CASE(PKV_ERR_BUFFER, pkv_export_flashinfer(t->h, &t->hs, 1, t->indptr, t->indices, 1, t->last, &t->i32))
    CASE(PKV_ERR_NULL, pkv_export_slot_mapping(NULL, &t->hs, 1, t->slots, 8, &t->n))
    CASE(PKV_ERR_NULL, pkv_export_slot_mapping(t->h, NULL, 1, t->slots, 8, &t->n))
    CASE(PKV_ERR_NULL, pkv_export_slot_mapping(t->h, &t->hs, 1, NULL, 8, &t->n))
    CASE(PKV_ERR_NULL, pkv_export_slot_mapping(t->h, &t->hs, 1, t->slots, 8, NULL))
    CASE(PKV_ERR_INVALID, pkv_export_slot_mapping(t->h, &t->hs, -1, t->slots, 8, &t->n))
    CASE(PKV_ERR_INVALID, pkv_export_slot_mapping(t->h, &t->hs_empty, 1, t->slots, -1, &t->n))
    CASE(PKV_ERR_BUFFER, pkv_export_slot_mapping(t->h, &t->hs, 1, t->slots, 1, &t->n))
    /* ---- prefix cache ---- */
    CASE(PKV_ERR_NULL, pkv_prefix_register(NULL, t->ps, &t->i32, &t->n))
    CASE(PKV_ERR_MODE, pkv_prefix_register(t->h, t->hs, &t->i32, &t->n))
    CASE(PKV_ERR_MODE, pkv_prefix_register(t->m, t->ms, NULL, NULL))
    CASE(PKV_ERR_NO_SEQ, pkv_prefix_register(t->p, t->pstale, &t->i32, &t->n))
    CASE(PKV_ERR_NO_SEQ, pkv_prefix_register(t->p, t->foreign, NULL, NULL))
    CASE(PKV_ERR_NO_SEQ, pkv_prefix_register(t->p, (pkv_seq)0, NULL, NULL))
    CASE(PKV_ERR_NO_SEQ, pkv_prefix_register(t->p, (pkv_seq)-7, NULL, NULL))
    CASE(PKV_ERR_NO_SEQ, pkv_prefix_register(t->p, t->ps + ((pkv_seq)3 << 32), NULL, NULL))
    CASE(PKV_ERR_NULL, pkv_prefix_lookup(NULL, 0, t->toks, 8, &t->sq, &t->n))
    CASE(PKV_ERR_NULL, pkv_prefix_lookup(t->p, 0, t->toks, 8, NULL, &t->n))
    CASE(PKV_ERR_NULL, pkv_prefix_lookup(t->p, 0, t->toks, 8, &t->sq, NULL))
    CASE(PKV_ERR_NULL, pkv_prefix_lookup(t->p, 0, NULL, 8, &t->sq, &t->n))
    CASE(PKV_ERR_MODE, pkv_prefix_lookup(t->h, 0, t->toks, 8, &t->sq, &t->n))
    CASE(PKV_ERR_MODE, pkv_prefix_lookup(t->m, 0, t->toks, 8, &t->sq, &t->n))
    CASE(PKV_ERR_INVALID, pkv_prefix_lookup(t->p, 0, t->toks, -1, &t->sq, &t->n))
    CASE(PKV_ERR_INVALID, pkv_prefix_lookup(t->p, 0, t->toks, INT32_MIN, &t->sq, &t->n))
    /* ---- FP8 rows ---- */
    CASE(PKV_ERR_NULL, pkv_mla656_quantize(NULL, t->fp8_row, 0))
    CASE(PKV_ERR_NULL, pkv_mla656_quantize(t->fp8_in, NULL, 1))
    CASE(PKV_ERR_NONFINITE, (t->fp8_in[3] = INFINITY, pkv_mla656_quantize(t->fp8_in, t->fp8_row, 0)))
    CASE(PKV_ERR_NONFINITE, (t->fp8_in[3] = 0, t->fp8_in[575] = NAN, pkv_mla656_quantize(t->fp8_in, t->fp8_row, 0)))
    CASE(PKV_ERR_NULL, pkv_mla656_dequantize(NULL, t->fp8_in))
    CASE(PKV_ERR_NULL, pkv_mla656_dequantize(t->fp8_row, NULL))
    /* ---- attention: the oracle and pkv_attn (without and with workers) agree on every row;
     * each row breaks one field of valid arguments ---- */
    CASE(PKV_OK, attn_all(A))
    CASE(PKV_OK, attn_all(sparse(t)))
    CASE(PKV_ERR_NULL, pkv_attn_reference(NULL))
    CASE(PKV_ERR_NULL, pkv_attn(NULL, NULL))
    CASE(PKV_ERR_NULL, pkv_attn(NULL, g_workers))
    CASE(PKV_ERR_NULL, pkv_workers_create(2, NULL))
    CASE(PKV_ERR_INVALID, workers_create(1025))
    CASE(PKV_ERR_INVALID, workers_create(INT32_MAX))
    CASE(PKV_OK, workers_create(-1))
    CASE(PKV_OK, (pkv_workers_destroy(NULL), PKV_OK))
    CASE(PKV_ERR_NULL, (A->q = NULL, attn_all(A)))
    CASE(PKV_ERR_NULL, (A->k_cache = NULL, attn_all(A)))
    CASE(PKV_ERR_NULL, (A->out = NULL, attn_all(A)))
    CASE(PKV_ERR_NULL, (A->block_table = NULL, attn_all(A)))
    CASE(PKV_ERR_NULL, (A->cache_seqlens = NULL, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->batch = 0, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->batch = -1, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->s_q = 0, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->h_q = -2, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->h_kv = 0, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->d = 0, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->dv = -4, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->block_size = 0, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->max_blocks_per_seq = 0, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->num_blocks = INT32_MIN, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->v_cache = NULL, A->dv = D + 1, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->causal = 2, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->softmax_scale = NAN, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->softmax_scale = -INFINITY, attn_all(A)))
    CASE(PKV_ERR_INVALID, (A->batch = INT32_MAX, A->s_q = INT32_MAX, A->h_q = INT32_MAX, A->d = INT32_MAX,
                           attn_all(A)))
    CASE(PKV_ERR_INVALID, (sparse(t), A->causal = 1, attn_all(A)))
    CASE(PKV_ERR_INVALID, (sparse(t), A->topk = 0, attn_all(A)))
    CASE(PKV_ERR_HEADS, (A->h_kv = 3, A->h_q = 2, A->v_cache = NULL, attn_all(A)))
    CASE(PKV_ERR_DTYPE, (A->q_dtype = PKV_FP8_MLA656, attn_all(A)))
    CASE(PKV_ERR_DTYPE, (A->q_dtype = -1, attn_all(A)))
    CASE(PKV_ERR_DTYPE, (A->kv_dtype = 4, attn_all(A)))
    CASE(PKV_ERR_DTYPE, (A->kv_dtype = PKV_FP8_MLA656, attn_all(A)))
    CASE(PKV_ERR_SEQLEN, (t->sl[1] = -1, attn_all(A)))
    CASE(PKV_ERR_SEQLEN, (t->sl[0] = 2 * BS + 1, attn_all(A)))
    CASE(PKV_ERR_SEQLEN, (t->sl[0] = INT32_MAX, attn_all(A)))
    CASE(PKV_ERR_BLOCK_ID, (t->bt[1] = NB, attn_all(A)))
    CASE(PKV_ERR_BLOCK_ID, (t->bt[2] = -1, attn_all(A)))
    CASE(PKV_ERR_BLOCK_ID, (t->bt[0] = 2147480000, attn_all(A)))
    CASE(PKV_OK, (t->bt[3] = 2147480000, attn_all(A))) /* padding past the length is never read */
    CASE(PKV_ERR_SLOT, (sparse(t), t->ix[1] = -2, attn_all(A)))
    CASE(PKV_ERR_SLOT, (sparse(t), t->ix[3] = NB * BS, attn_all(A)))
    CASE(PKV_ERR_SLOT, (sparse(t), t->ix[0] = INT32_MAX, attn_all(A)))
    CASE(PKV_OK, (sparse(t), A->attn_sink = t->sink, attn_all(A)))
#undef STALE_CASES
#undef CASE
    *what = NULL;
    return PKV_OK;
}

/* ---- fixture ---- */

static pkv_cache *make(pkv_config cfg) {
    pkv_cache *c = NULL;
    if (pkv_cache_create(&cfg, &c) != PKV_OK) {
        fprintf(stderr, "fixture: cache creation failed\n");
        exit(1);
    }
    return c;
}

static void setup(T *t) {
    memset(t, 0, sizeof *t);
    t->hcfg = host_cfg();
    t->h = make(t->hcfg);
    t->m = make(meta_cfg());
    pkv_config f = host_cfg();
    f.num_layers = 1;
    f.num_blocks = 2;
    f.h_kv = 1;
    f.d = 576;
    f.dv = 512;
    f.v_separate = 0;
    f.kv_dtype = PKV_FP8_MLA656;
    t->f = make(f);
    t->o = make(meta_cfg());
    pkv_config pc = meta_cfg();
    pc.flags = PKV_FLAG_PREFIX_CACHE;
    pc.hash_key_set = 1;
    t->p = make(pc);
    for (int i = 0; i < 16; i++) t->toks[i] = 11 * i;
    int32_t toks[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    pkv_seq tmp;
    CHECK_OK(pkv_seq_create(t->h, 0, &t->stale));
    CHECK_OK(pkv_seq_append(t->h, t->stale, 2, toks, NULL, NULL));
    CHECK_OK(pkv_seq_create(t->h, 0, &t->hs));
    CHECK_OK(pkv_seq_append(t->h, t->hs, 6, toks, t->slots, NULL));
    t->slots_ok[0] = t->slots[0];
    t->slots_ok[1] = t->slots[5];
    CHECK_OK(pkv_seq_create(t->h, 3, &t->hs_empty));
    CHECK_OK(pkv_seq_free(t->h, t->stale));
    /* A slot freed and reused: the old handle's generation is behind. */
    CHECK_OK(pkv_seq_create(t->h, 0, &t->recycled));
    CHECK_OK(pkv_seq_create(t->h, 0, &tmp));
    CHECK_OK(pkv_seq_free(t->h, t->recycled));
    CHECK_OK(pkv_seq_create(t->h, 0, &tmp));
    CHECK(tmp != t->recycled);
    CHECK_OK(pkv_seq_append(t->h, tmp, 1, NULL, NULL, NULL));
    /* A handle of another cache (and of a destroyed one): the per-cache salt in
     * handles makes them miss even where slot and generation match. */
    for (int i = 0; i < 40; i++) CHECK_OK(pkv_seq_create(t->o, 0, &t->foreign));
    pkv_cache *gone = make(meta_cfg());
    for (int i = 0; i < 20; i++) CHECK_OK(pkv_seq_create(gone, 0, &t->destroyed));
    pkv_cache_destroy(gone);
    t->forged_gen = t->hs + ((pkv_seq)1 << 32);
    t->forged_idx = t->hs + 1000;
    CHECK_OK(pkv_seq_create(t->m, 0, &t->ms));
    CHECK_OK(pkv_seq_create(t->m, 0, &tmp));
    CHECK_OK(pkv_seq_create(t->m, 0, &tmp));
    CHECK_OK(pkv_seq_append(t->m, t->ms, 5, toks, NULL, &t->cow));
    CHECK_OK(pkv_seq_create(t->p, 0, &t->pstale));
    CHECK_OK(pkv_seq_create(t->p, 0, &t->ps));
    CHECK_OK(pkv_seq_append(t->p, t->ps, 9, t->toks, NULL, &t->cow));
    CHECK_OK(pkv_prefix_register(t->p, t->ps, NULL, NULL));
    CHECK_OK(pkv_seq_free(t->p, t->pstale));
    CHECK_OK(pkv_seq_create(t->f, 0, &t->fs));
    CHECK_OK(pkv_seq_append(t->f, t->fs, 1, NULL, t->fslot, NULL));
    for (int i = 0; i < 576; i++) t->fp8_in[i] = (float)(i % 13) - 6.0f;
    for (size_t i = 0; i < sizeof t->krows / sizeof *t->krows; i++) t->krows[i] = (float)i;
    for (size_t i = 0; i < sizeof t->vrows / sizeof *t->vrows; i++) t->vrows[i] = -(float)i;
    for (size_t i = 0; i < sizeof t->q / sizeof *t->q; i++) t->q[i] = 0.25f * (float)(i % 7);
    for (size_t i = 0; i < sizeof t->kc / sizeof *t->kc; i++) t->kc[i] = 0.125f * (float)(i % 11);
    for (size_t i = 0; i < sizeof t->vc / sizeof *t->vc; i++) t->vc[i] = (float)(i % 5);
    t->sink[0] = 0.5f;
    t->sink[1] = -1.0f;
    CHECK_OK(pkv_cache_check(t->h));
}

enum { NCACHES = 5 };

typedef struct snap {
    uint8_t *d[NCACHES];
    size_t n[NCACHES];
} snap;

static void take(T *t, snap *s) {
    pkv_cache *cs[NCACHES] = {t->h, t->m, t->f, t->o, t->p};
    for (int i = 0; i < NCACHES; i++) {
        s->n[i] = cache_dump(cs[i], NULL, 0);
        s->d[i] = malloc(s->n[i]);
        if (!s->d[i] || cache_dump(cs[i], s->d[i], s->n[i]) != s->n[i]) exit(2);
    }
}

static void drop(snap *s) {
    for (int i = 0; i < NCACHES; i++) free(s->d[i]);
}

/* pkv_cache_check must see each of these corruptions (made through the
 * internal structs, then undone). Returns the number of cases. */
static int check_detects(void) {
    pkv_config cfg = meta_cfg();
    pkv_cache *c = make(cfg);
    pkv_seq a, b;
    pkv_block_copy cow;
    CHECK_OK(pkv_seq_create(c, 0, &a));
    CHECK_OK(pkv_seq_append(c, a, 2 * BS + 1, NULL, NULL, &cow));
    CHECK_OK(pkv_seq_fork(c, a, &b));
    CHECK_OK(pkv_seq_create(c, 0, &b));
    CHECK_OK(pkv_seq_free(c, b));
    CHECK_OK(pkv_cache_check(c));
    pkv_seq_rec *r = seq_get(&c->seqs, a);
    pkv_pool *p = &c->pool;
    int n = 0;
    int32_t save, save2;
#define DETECT(corrupt, undo)                                                        \
    do {                                                                             \
        corrupt;                                                                     \
        n++;                                                                         \
        CHECK_STATUS(pkv_cache_check(c), PKV_ERR_CORRUPT);                           \
        CHECK(pkv_cache_last_error(c)[0] != 0);                                      \
        undo;                                                                        \
        CHECK_OK(pkv_cache_check(c));                                                \
    } while (0)
    DETECT((save = p->free_stack[0], p->free_stack[0] = p->free_stack[1]), p->free_stack[0] = save);
    DETECT(p->refcount[r->blocks[0]]++, p->refcount[r->blocks[0]]--);
    DETECT(p->used++, p->used--);
    DETECT(p->shared--, p->shared++);
    DETECT(p->free_top--, p->free_top++);
    DETECT((save = r->blocks[1], r->blocks[1] = r->blocks[0]), r->blocks[1] = save);
    DETECT(r->len++, r->len--);
    DETECT(r->nblocks--, r->nblocks++);
    DETECT(r->ntokens = r->len + 1, r->ntokens = 0);
    DETECT(r->nregistered = 1, r->nregistered = 0);
    DETECT(r->last_n = r->len + 1, r->last_n = r->len);
    DETECT(c->seqs.tokens++, c->seqs.tokens--);
    DETECT(c->seqs.num_seqs++, c->seqs.num_seqs--);
    DETECT((save = c->seqs.seqs[c->seqs.seq_free_head].next_free, c->seqs.seqs[c->seqs.seq_free_head].next_free = c->seqs.seq_free_head),
           c->seqs.seqs[c->seqs.seq_free_head].next_free = save);
    DETECT((save = p->state[r->blocks[0]], p->state[r->blocks[0]] = BLOCK_FREE), p->state[r->blocks[0]] = (uint8_t)save);
    DETECT(p->state[p->free_stack[0]] = 7, p->state[p->free_stack[0]] = BLOCK_FREE);
    DETECT(p->cached[p->free_stack[0]] = 1, p->cached[p->free_stack[0]] = 0);
    DETECT(p->peak_used = 0, p->peak_used = p->used);
    /* an evictable block off the LRU list */
    DETECT((save = p->lru_head, save2 = p->num_evictable, p->num_evictable = 1), (p->lru_head = save, p->num_evictable = save2));
#undef DETECT
    pkv_cache_destroy(c);
    return n;
}

int main(void) {
    T *t = calloc(1, sizeof *t);
    if (!t) return 2;
    setup(t);
    CHECK_OK(pkv_workers_create(2, &g_workers));
    int ncases = 0;
    for (int i = 0;; i++) {
        int expect = 0;
        const char *what = NULL;
        snap before, after;
        take(t, &before);
        int st = run_case(t, i, &expect, &what);
        if (!what) {
            drop(&before);
            break;
        }
        ncases++;
        test_checks_++;
        if (st != expect)
            TEST_FAIL_("case %d: %s returned %d (%s), want %d (%s)", i, what, st, pkv_strerror(st), expect,
                       pkv_strerror(expect));
        const char *txt = pkv_strerror(st);
        test_checks_++;
        if (!txt || !txt[0] || strcmp(txt, "unknown status") == 0)
            TEST_FAIL_("case %d: %s: status %d has no text", i, what, st);
        take(t, &after);
        pkv_cache *cs[NCACHES] = {t->h, t->m, t->f, t->o, t->p};
        for (int j = 0; j < NCACHES; j++) {
            test_checks_ += 2;
            if (before.n[j] != after.n[j] || memcmp(before.d[j], after.d[j], before.n[j]) != 0)
                TEST_FAIL_("case %d: %s changed cache %d", i, what, j);
            int cst = pkv_cache_check(cs[j]);
            if (cst != PKV_OK) TEST_FAIL_("case %d: %s: check of cache %d: %s", i, what, j, pkv_cache_last_error(cs[j]));
        }
        drop(&before);
        drop(&after);
    }
    printf("badinput: %d cases (each: exact status, status text, 5 caches unchanged, check passes)\n", ncases);
    printf("badinput: pkv_cache_check detects %d kinds of corruption\n", check_detects());
    pkv_cache_destroy(t->h);
    pkv_cache_destroy(t->m);
    pkv_cache_destroy(t->f);
    pkv_cache_destroy(t->o);
    pkv_cache_destroy(t->p);
    pkv_workers_destroy(g_workers);
    free(t);
    return test_report("test_badinput");
}
