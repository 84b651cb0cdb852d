/* Private interface of the fast attention path (pkv_attn): the per-ISA inner
 * kernels, the worker pool's scratch, and the run-time ISA dispatch.
 *
 * The work of one call is cut into groups (a batch entry [and for sparse calls
 * a query token]: at most ATTN_MB query rows, ordered by KV head, that share one
 * key list) and each group's keys into tiles of ATTN_TILE keys. For each tile
 * the driver (fast.c) gathers the K/V row pointers through the block table, then
 * calls the kernels: load_tile (converts / transposes the tile into scratch once,
 * so every query row of the group reuses it), qk (scores), softmax (online
 * softmax in float32) and pv (rescale + accumulate).
 *
 * Kernel families (pkv_attn_kernel_name() tells which one a dtype pair gets):
 *  scalar-f32         plain C, the reference semantics for the SIMD paths
 *  avx2-f32           AVX2+FMA+F16C, rows read in place, lanes over d
 *  avx512-f32         K^T tile (lanes over keys), FMA; any dtype pair
 *  avx512-f32-rows    few rows per KV head (GQA decode): lanes over d, no tile copy
 *  avx512-bf16dp      q bf16 with bf16 / FP8 KV: vdpbf16ps on bf16 pairs
 *  amx-bf16           AMX tiles (TDPBF16PS): S^T = K Q^T from contiguous K rows,
 *                     P V on the AVX-512 bf16 pair layout of V; FP8 variant too
 * ISA levels (pkv_isa, chosen by src/cpu.c): scalar < avx2 < avx512 < amx; a
 * level without kernels for a dtype pair falls back to the next lower one
 * (attn_ops_best). */
#ifndef PKV_ATTN_KERNELS_H
#define PKV_ATTN_KERNELS_H

#include "attn.h"
#include "fp8.h" /* PKV_MLA656_*: the FP8 row layout */

#define ATTN_TILE 64 /* keys per tile; also the granularity of split-KV */
#define ATTN_MB 128  /* query rows per group at most (MLA: all 128 heads at once) */
#define ATTN_SMALL_M 8 /* groups of at most this many rows may use ops->small_m */
#ifndef ATTN_PF
#define ATTN_PF 32 /* rows of the next tile the driver hands to self-prefetching kernels (tuned, T0 on Intel: 8 < 16 < 32 ~ 64; T1 on AMD Zen 4: 16 ~ 32 > 48 ~ 64) */
#endif

/* Geometry of one call as the kernels see it. */
typedef struct attn_geom {
    int32_t d, dv;         /* K and V head dims */
    int32_t dpad, dvpad;   /* d, dv rounded up to the kernel's pad */
    int32_t q_dtype, kv_dtype;
    float scale_log2;      /* softmax_scale * log2(e): scores live in the log2 domain */
    int32_t rph;           /* query rows per KV head in a group (multi_head kernels) */
    size_t khead, vhead;   /* bytes between the rows of consecutive KV heads of a token */
} attn_geom;

/* Kernels for one (ISA, q dtype, kv dtype). Scratch layouts are the kernel's own;
 * the driver only sizes them with attn_scratch_bytes(). Row pointers to K/V
 * point at one head's row (for FP8_MLA656, at the 656-byte token row). */
typedef struct attn_ops attn_ops;
struct attn_ops {
    const char *name;
    int32_t pad;    /* dpad and dvpad are multiples of this */
    int32_t qbytes; /* bytes per element of the prepared q rows ([m][dpad]) */
    int32_t qalign; /* prep_q of m rows takes room for m rounded up to this many rows */
    /* qp <- the m query rows qrows[0..m) (q_dtype, d elements each). */
    void (*prep_q)(const attn_geom *g, const void *const *qrows, int m, void *qp);
    /* kt, vt <- the n <= ATTN_TILE keys of a tile; rows past n read as zero.
     * krows / vrows hold n + ATTN_PF pointers: [n, n + ATTN_PF) are the next
     * tile's first rows (NULL where the group has no more keys), for kernels
     * with self_prefetch. */
    void (*load_tile)(const attn_geom *g, const void *const *krows, const void *const *vrows,
                      int n, void *kt, void *vt);
    /* s[m][ATTN_TILE] <- raw dot products q_i . k_j (unscaled), for j < n; s is
     * finite (any value) for n <= j < ATTN_TILE. */
    void (*qk)(const attn_geom *g, const void *qp, int m, int n, const void *kt, float *s);
    /* Online softmax over the tile: keys nfirst[i] <= j < nvalid[i] count for row i
     * (nfirst > 0 only where a sliding window starts inside the tile; nfirst >=
     * nvalid: none). Updates the running max mrun (log2 domain) and sum lrun,
     * writes alpha[i] (factor for the old accumulator) and the weights p (kernel's
     * format, zero outside [nfirst, nvalid)).
     * A scaled score of a counted key that is NaN or +-inf sets lrun[i] to NaN
     * for good: the driver then recomputes the row the oracle's way. */
    void (*softmax)(const attn_geom *g, const float *s, int m, const int32_t *nfirst, const int32_t *nvalid,
                    float *mrun, float *lrun, float *alpha, void *p);
    /* o[i][0..dv) <- alpha[i] * o[i] + sum_{j<n} p[i][j] * v_j. */
    void (*pv)(const attn_geom *g, const void *p, int m, int n, const void *vt, float *const *o,
               const float *alpha);
    /* NULL, or kernels for groups of at most ATTN_SMALL_M query rows (the same
     * results within tolerance; chosen per call by the driver). */
    const attn_ops *small_m;
    /* 1: the kernels take all rows of a group at once, even when they span KV
     * heads: row r reads KV head r / g->rph, counted from the head of the row
     * pointers (groups then start at a head boundary). 0: one head per call. */
    int32_t multi_head;
    /* 1: the kernels prefetch the rows they read next themselves (from the row
     * pointers, which then carry ATTN_PF more: see load_tile); 0: the driver
     * prefetches the next tile's rows before each tile. */
    int32_t self_prefetch;
};

/* Per-worker scratch, carved from one allocation. Sizes in floats: qp ATTN_MB *
 * dpad, kt ATTN_TILE * (dpad + 16 + ATTN_MB), vt ATTN_TILE * dvpad, s and p
 * ATTN_MB * ATTN_TILE; each kernel family lays these out as it documents. */
typedef struct attn_scratch {
    size_t bytes;          /* size of mem */
    void *mem;
    void *qp, *kt, *vt, *p;
    float *s;
    float *mrun, *lrun, *alpha;
    int32_t *nfirst, *nvalid;
    const void **krows, **vrows, **qrows;
    float **orows;
    double *xs;            /* pkv__attn_row_doubles(d, dv): a row recomputed by the oracle */
} attn_scratch;

/* A call's units are cut into at most ATTN_MAX_CHUNKS chunks at fixed
 * boundaries, which the workers take dynamically (a worker that runs slower,
 * e.g. on a busy core, takes fewer). A group cut by a chunk boundary leaves a
 * partial result per chunk; the chunk where it starts combines them. */
#define ATTN_MAX_CHUNKS 64
typedef struct attn_chunk {
    float *part[2];     /* partials [mb][dv] out then [mb] lse: [0] of the piece at the
                           chunk's start, [1] of the piece at its end */
    int64_t cut_group;  /* the group that starts in this chunk and runs past its end, or -1 */
    int32_t cut_slot;   /* which part[] holds this chunk's piece of cut_group */
} attn_chunk;

/* Bytes of scratch one worker needs for geometry g (0 on overflow). */
PKV_HIDDEN size_t attn_scratch_bytes(const attn_geom *g);
/* Points s's fields into mem (bytes from attn_scratch_bytes). */
PKV_HIDDEN void attn_scratch_carve(attn_scratch *s, void *mem, size_t bytes, const attn_geom *g);

/* ---- dispatch (dispatch.c) ---- */
/* Kernels for (isa, q_dtype, kv_dtype), isa a pkv_isa level; NULL if that level
 * has none for the pair (AMX: only q bf16 with bf16 or FP8 KV). */
PKV_HIDDEN const attn_ops *attn_ops_for(int isa, int q_dtype, int kv_dtype);
/* The kernels pkv_attn uses: the active level's, else the next lower level's. */
PKV_HIDDEN const attn_ops *attn_ops_best(int q_dtype, int kv_dtype);

PKV_HIDDEN const attn_ops *attn_ops_scalar(int q_dtype, int kv_dtype);
PKV_HIDDEN const attn_ops *attn_ops_avx2(int q_dtype, int kv_dtype);
PKV_HIDDEN const attn_ops *attn_ops_avx512(int q_dtype, int kv_dtype);
PKV_HIDDEN const attn_ops *attn_ops_amx(int q_dtype, int kv_dtype); /* NULL: not for these dtypes */

/* AVX-512 pieces the AMX kernels reuse (kernel_avx512.c). */
PKV_HIDDEN extern const attn_ops attn_avx512_ops_rows;
PKV_HIDDEN void attn_avx512_softmax(const attn_geom *g, const float *s, int m, const int32_t *nfirst,
                                    const int32_t *nvalid, float *mrun, float *lrun, float *alpha, void *p);
PKV_HIDDEN void attn_avx512_dp_prep_q(const attn_geom *g, const void *const *qrows, int m, void *qp);
PKV_HIDDEN void attn_avx512_dp_load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows,
                                         int n, void *kt, void *vt);
PKV_HIDDEN void attn_avx512_fp8_load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows,
                                          int n, void *kt, void *vt);
PKV_HIDDEN void attn_avx512_interleave_v(const attn_geom *g, const void *const *vrows, int n, uint32_t *vt);
PKV_HIDDEN void attn_avx512_fp8_expand(const uint8_t *row, uint16_t *dst);
PKV_HIDDEN void attn_avx512_dp_qk(const attn_geom *g, const void *qp, int m, int n, const void *kt, float *s);
PKV_HIDDEN void attn_avx512_dp_pv(const attn_geom *g, const void *p, int m, int n, const void *vt, float *const *o,
                                  const float *alpha);

/* ---- driver (fast.c) ---- */
/* pkv_attn with an explicit kernel set (tests run every ISA through this). */
PKV_HIDDEN int attn_fast_run(const pkv_attn_args *a, pkv_workers *w, const attn_ops *ops);

/* ---- worker pool (workers.c) ---- */
/* Number of participants (the calling thread is participant 0). */
PKV_HIDDEN int workers_count(const pkv_workers *w);
/* Takes the pool for one call (calls sharing a pool serialize here) and makes
 * sure every participant has at least bytes of scratch and that nchunks chunks
 * have partial buffers of part_floats floats each (grown, never shrunk). */
PKV_HIDDEN int workers_begin(pkv_workers *w, size_t bytes, int nchunks, size_t part_floats);
/* The pool's chunk records (ATTN_MAX_CHUNKS), valid between begin and end. */
PKV_HIDDEN attn_chunk *workers_chunks(pkv_workers *w);
PKV_HIDDEN void workers_end(pkv_workers *w);
PKV_HIDDEN attn_scratch *workers_scratch(pkv_workers *w, int idx);
/* Runs fn(ctx, idx) on every participant idx in [0, count) and waits for all. */
PKV_HIDDEN void workers_run(pkv_workers *w, void (*fn)(void *ctx, int idx), void *ctx);

#endif
