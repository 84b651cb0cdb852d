/* pkv_attn: the fast path. Scheduling, split-KV and the LSE combine live here;
 * the arithmetic lives in the per-ISA kernels (kernels.h).
 *
 * Work split (FlashMLA's scheduler, simplified): every group (batch entry [x
 * query token when sparse] x block of <= ATTN_MB query rows of its KV heads)
 * costs one unit per tile of ATTN_TILE keys it attends to. The units of the
 * whole call are laid end to end and cut at fixed boundaries into a few chunks
 * per worker, which the workers take dynamically, so a short batch of long
 * sequences still uses every core and a slow core does less. A group that a
 * chunk boundary cuts is computed in pieces: each piece writes a normalized
 * partial (out, lse) into its chunk's buffer, and after a barrier the chunk
 * holding the group's first unit combines the pieces by LSE. Groups a chunk
 * holds whole are written straight into out/lse. The chunks depend only on the
 * arguments and the number of workers, so results are bit-identical run to run.
 *
 * Memory: with a pool, scratch lives in the pool (grown once, under the pool's
 * call lock, when a call needs more; see workers.c) and a call allocates
 * nothing. With w == NULL each calling thread keeps its own scratch (a
 * thread-specific buffer, grown when a call needs more and freed when the
 * thread exits), so again only a thread's first call of a shape allocates. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* Thread-specific scratch for calls without a pool. The key is created once
 * per process (like the CPU dispatch, state set once and never changed). */
static pthread_key_t solo_key;
static pthread_once_t solo_once = PTHREAD_ONCE_INIT;
static int solo_key_ok;

static void solo_release(void *p) {
    attn_scratch *sc = p;
    free(sc->mem);
    free(sc);
}

static void solo_key_init(void) { solo_key_ok = pthread_key_create(&solo_key, solo_release) == 0; }

static attn_scratch *solo_scratch(size_t bytes) {
    pthread_once(&solo_once, solo_key_init);
    if (!solo_key_ok) return NULL;
    attn_scratch *sc = pthread_getspecific(solo_key);
    if (!sc) {
        sc = calloc(1, sizeof *sc);
        if (!sc) return NULL;
        if (pthread_setspecific(solo_key, sc) != 0) {
            free(sc);
            return NULL;
        }
    }
    if (sc->bytes < bytes) {
        void *mem = malloc(bytes);
        if (!mem) return NULL;
        free(sc->mem);
        sc->mem = mem;
        sc->bytes = bytes;
    }
    return sc;
}

#define ALIGN64(x) (((x) + 63u) & ~(size_t)63u)
#define LN2 0.69314718055994530942

typedef struct plan {
    const pkv_attn_args *a;
    const attn_ops *ops;
    attn_geom g;
    pkv_workers *w;
    attn_scratch *solo; /* scratch for w == NULL */
    int sparse;
    /* Row counts are 64-bit: h_q * s_q rows of one sequence may exceed 2^31. */
    int32_t hpg;        /* query heads per KV head */
    int64_t rph;        /* query rows per KV head in a unit: hpg * s_q (dense) or hpg (sparse) */
    int64_t rows;       /* query rows per unit (all KV heads): h_kv * rph */
    int32_t mb;         /* rows per group at most (a multiple of rph for multi_head kernels) */
    int64_t nrb;        /* row blocks per unit */
    int64_t ngroups;
    int64_t units;
    int nw;             /* workers taking part */
    int nchunks;        /* chunks of the units (1: no split) */
    attn_chunk *chunks;
    int *next_chunk;    /* the next chunk to take (atomic) */
    /* byte strides of the caches: per slot, per KV head; bytes of one head's row */
    size_t kslot, khead, krow, vslot, vhead, vrow;
} plan;

/* ---- scratch ---- */

static size_t mul_ok(size_t a, size_t b, int *ovf) {
    if (b && a > SIZE_MAX / b) { *ovf = 1; return 0; }
    return a * b;
}

size_t attn_scratch_bytes(const attn_geom *g) {
    int ovf = 0;
    const size_t mb = ATTN_MB, t = ATTN_TILE, f = sizeof(float);
    size_t n = 0;
    n += ALIGN64(mul_ok(mul_ok(mb, (size_t)g->dpad, &ovf), f, &ovf));           /* qp */
    n += ALIGN64(mul_ok(mul_ok(t, (size_t)g->dpad + 16 + mb, &ovf), f, &ovf));  /* kt (+scales, S^T) */
    n += ALIGN64(mul_ok(mul_ok(t, (size_t)g->dvpad, &ovf), f, &ovf));           /* vt */
    n += 2 * ALIGN64(mb * t * f);                                               /* s, p */
    n += 3 * ALIGN64(mb * f) + 2 * ALIGN64(mb * sizeof(int32_t));               /* mrun lrun alpha nfirst nvalid */
    n += 2 * ALIGN64((t + ATTN_PF) * sizeof(void *)) + 2 * ALIGN64(mb * sizeof(void *)); /* row pointers */
    n += ALIGN64(mul_ok(pkv__attn_row_doubles(g->d, g->dv), sizeof(double), &ovf)); /* xs */
    n += 64;
    return ovf || n < 64 ? 0 : n;
}

void attn_scratch_carve(attn_scratch *s, void *mem, size_t bytes, const attn_geom *g) {
    const size_t mb = ATTN_MB, t = ATTN_TILE, f = sizeof(float);
    char *p = (char *)ALIGN64((uintptr_t)mem);
    s->mem = mem;
    s->bytes = bytes;
#define TAKE(field, type, sz) do { s->field = (type)(void *)p; p += ALIGN64(sz); } while (0)
    TAKE(qp, void *, mb * (size_t)g->dpad * f);
    TAKE(kt, void *, t * ((size_t)g->dpad + 16 + mb) * f);
    TAKE(vt, void *, t * (size_t)g->dvpad * f);
    TAKE(s, float *, mb * t * f);
    TAKE(p, void *, mb * t * f);
    TAKE(mrun, float *, mb * f);
    TAKE(lrun, float *, mb * f);
    TAKE(alpha, float *, mb * f);
    TAKE(nfirst, int32_t *, mb * sizeof(int32_t));
    TAKE(nvalid, int32_t *, mb * sizeof(int32_t));
    TAKE(krows, const void **, (t + ATTN_PF) * sizeof(void *));
    TAKE(vrows, const void **, (t + ATTN_PF) * sizeof(void *));
    TAKE(qrows, const void **, mb * sizeof(void *));
    TAKE(orows, float **, mb * sizeof(void *));
    TAKE(xs, double *, pkv__attn_row_doubles(g->d, g->dv) * sizeof(double));
#undef TAKE
}

/* ---- groups ---- */
/* A unit is a batch entry (dense) or a batch entry's query token (sparse); its
 * rows are ordered (KV head, query token, head in group), and a group is a block
 * of at most ATTN_MB consecutive rows of a unit. Within a group the tile loop
 * visits every KV head of the block for one tile before the next tile, so the
 * cache is read in token order even when several KV heads share a token row. */
typedef struct group {
    int32_t b, s;       /* s: query token (sparse only) */
    int64_t r0;         /* rows [r0, r0 + m) of the unit */
    int32_t m;
    int32_t k0;         /* dense: the first key any row of the group sees (a window's start); sparse: 0 */
    int32_t keys;       /* the keys [k0, keys) (dense) or index entries [0, keys) (sparse) the group spans */
} group;

static void group_at(const plan *pl, int64_t gi, group *gr) {
    const pkv_attn_args *a = pl->a;
    const int64_t rb = gi % pl->nrb;
    const int64_t u = gi / pl->nrb;
    if (pl->sparse) {
        gr->s = (int32_t)(u % a->s_q);
        gr->b = (int32_t)(u / a->s_q);
    } else {
        gr->s = 0;
        gr->b = (int32_t)u;
    }
    gr->r0 = rb * pl->mb;
    gr->m = pl->rows - gr->r0 < pl->mb ? (int32_t)(pl->rows - gr->r0) : pl->mb;
    if (pl->sparse) {
        gr->k0 = 0;
        gr->keys = a->topk;
    } else {
        /* the block's latest query token has the most visible keys (causal), its
         * earliest the first window start; tiles begin there, so keys before
         * every row's window are skipped, not masked */
        const int64_t first = gr->r0, last = gr->r0 + gr->m - 1;
        const int span = last / pl->rph != first / pl->rph; /* more than one KV head: all tokens */
        const int32_t smax = span ? a->s_q - 1 : (int32_t)(last % pl->rph / pl->hpg);
        const int32_t smin = span ? 0 : (int32_t)(first % pl->rph / pl->hpg);
        int32_t st, en;
        attn_key_range(a, a->cache_seqlens[gr->b], smin, &gr->k0, &en);
        attn_key_range(a, a->cache_seqlens[gr->b], smax, &st, &gr->keys);
    }
}

static int64_t group_tiles(const group *gr) { return ((int64_t)gr->keys - gr->k0 + ATTN_TILE - 1) / ATTN_TILE; }

/* Query token, query head and KV head of row r of a group. */
static void row_pos(const plan *pl, const group *gr, int32_t r, int32_t *s, int32_t *h, int32_t *kvh) {
    const int64_t rr = gr->r0 + r, x = rr % pl->rph;
    const int32_t g = (int32_t)(rr / pl->rph);
    *kvh = g;
    if (pl->sparse) {
        *s = gr->s;
        *h = g * pl->hpg + (int32_t)x;
    } else {
        *s = (int32_t)(x / pl->hpg);
        *h = g * pl->hpg + (int32_t)(x % pl->hpg);
    }
}

/* Prefetches the bytes [p, p + n) into the caches. */
static inline void prefetch_bytes(const char *p, size_t n) {
    for (size_t o = 0; o < n; o += 64) __builtin_prefetch(p + o, 0, 3);
}

/* Gathers the K/V rows of tile t of a group; returns how many (sparse tiles skip
 * -1). Paged rows of one KV head are scattered (blocks, and h_kv heads
 * interleaved per token), which the hardware prefetchers do not follow, so the
 * next rows are prefetched: for self-prefetching kernels, the next tile's first
 * ATTN_PF row pointers follow the tile's n (NULL past the group's keys); for the
 * others, the next tile's rows are prefetched here. */
static int gather(const plan *pl, const group *gr, int32_t kvh, int32_t nheads, int64_t t, attn_scratch *sc) {
    const pkv_attn_args *a = pl->a;
    const int self = pl->ops->self_prefetch;
    const int64_t k0 = gr->k0 + t * ATTN_TILE;
    const int64_t k1 = k0 + ATTN_TILE < gr->keys ? k0 + ATTN_TILE : gr->keys;
    const int64_t k2 = self ? (k1 + ATTN_PF < gr->keys ? k1 + ATTN_PF : gr->keys)
                            : (k1 + ATTN_TILE < gr->keys ? k1 + ATTN_TILE : gr->keys);
    const char *kbase = (const char *)a->k_cache + (size_t)kvh * pl->khead;
    const char *vbase = a->v_cache ? (const char *)a->v_cache + (size_t)kvh * pl->vhead : kbase;
    const size_t ks = pl->kslot, vs = a->v_cache ? pl->vslot : pl->kslot;
    /* nheads consecutive heads of a token are contiguous: prefetch them together */
    const size_t kb = (size_t)(nheads - 1) * pl->khead + pl->krow;
    const size_t vb = a->v_cache ? (size_t)(nheads - 1) * pl->vhead + pl->vrow : 0;
    int n = 0, nx = 0;
    if (pl->sparse) {
        const int32_t *ix = a->indices + ((size_t)gr->b * (size_t)a->s_q + (size_t)gr->s) * (size_t)a->topk;
        for (int64_t k = k0; k < k1; k++) {
            if (ix[k] == -1) continue;
            sc->krows[n] = kbase + (size_t)ix[k] * ks;
            sc->vrows[n] = vbase + (size_t)ix[k] * vs;
            n++;
        }
        for (int64_t k = k1; k < k2; k++) {
            if (ix[k] == -1) continue;
            if (self) {
                sc->krows[n + nx] = kbase + (size_t)ix[k] * ks;
                sc->vrows[n + nx] = vbase + (size_t)ix[k] * vs;
                nx++;
                continue;
            }
            prefetch_bytes(kbase + (size_t)ix[k] * ks, kb);
            if (vb) prefetch_bytes(vbase + (size_t)ix[k] * vs, vb);
        }
    } else {
        const int32_t *table = a->block_table + (size_t)gr->b * (size_t)a->max_blocks_per_seq;
        const int64_t bs = a->block_size;
        int64_t bi = k0 / bs, off = k0 % bs;
        size_t slot = (size_t)table[bi] * (size_t)bs + (size_t)off;
        for (int64_t k = k0; k < k2; k++) {
            if (k < k1) {
                sc->krows[n] = kbase + slot * ks;
                sc->vrows[n] = vbase + slot * vs;
                n++;
            } else if (self) {
                sc->krows[n + nx] = kbase + slot * ks;
                sc->vrows[n + nx] = vbase + slot * vs;
                nx++;
            } else {
                prefetch_bytes(kbase + slot * ks, kb);
                if (vb) prefetch_bytes(vbase + slot * vs, vb);
            }
            if (++off == bs && k + 1 < k2) {
                off = 0;
                slot = (size_t)table[++bi] * (size_t)bs;
            } else {
                slot++;
            }
        }
    }
    for (int i = n + nx; self && i < n + ATTN_PF; i++) sc->krows[i] = sc->vrows[i] = NULL;
    return n;
}

/* Computes tiles [t0, t1) of a group. dst_part: NULL to write out/lse directly
 * (the whole group), else a partial buffer [m][dv] + [m] lse (natural log,
 * -inf for a row that saw no key). */
static void run_piece(const plan *pl, const group *gr, int64_t t0, int64_t t1, attn_scratch *sc,
                      float *dst_part) {
    const pkv_attn_args *a = pl->a;
    const attn_ops *ops = pl->ops;
    const int32_t m = gr->m, dv = a->dv;
    const size_t qes = pkv_dtype_size(a->q_dtype);
    /* each row's keys [kst, ken) of the sequence, found once: the tile loop only clamps them */
    int32_t kst[ATTN_MB], ken[ATTN_MB];
    for (int32_t r = 0; r < m; r++) {
        int32_t s, h, kvh;
        row_pos(pl, gr, r, &s, &h, &kvh);
        if (!pl->sparse) attn_key_range(a, a->cache_seqlens[gr->b], s, &kst[r], &ken[r]);
        const size_t qrow = ((size_t)gr->b * (size_t)a->s_q + (size_t)s) * (size_t)a->h_q + (size_t)h;
        sc->qrows[r] = (const char *)a->q + qrow * (size_t)a->d * qes;
        sc->orows[r] = dst_part ? dst_part + (size_t)r * (size_t)dv : a->out + qrow * (size_t)dv;
        memset(sc->orows[r], 0, (size_t)dv * sizeof(float));
        sc->mrun[r] = -INFINITY;
        sc->lrun[r] = 0.0f;
    }
    const size_t qrow_bytes = (size_t)pl->g.dpad * (size_t)ops->qbytes;
    for (int64_t t = t0; t < t1; t++) {
        size_t qoff = 0; /* prepared rows before this segment (each segment's rows rounded up to qalign) */
        for (int32_t ra = 0; ra < m;) {
            /* the rows of one KV head, or all rows for multi_head kernels */
            const int32_t kvh = (int32_t)((gr->r0 + ra) / pl->rph);
            const int64_t hend64 = (kvh + 1) * pl->rph - gr->r0;
            const int32_t hend = hend64 < m ? (int32_t)hend64 : m;
            const int32_t rb = ops->multi_head ? m : hend;
            const int32_t nheads = ops->multi_head ? (int32_t)((gr->r0 + m - 1) / pl->rph) - kvh + 1 : 1;
            const int n = gather(pl, gr, kvh, nheads, t, sc);
            for (int32_t r = ra; r < rb; r++) {
                int32_t lo = 0, hi = n;
                if (!pl->sparse) {
                    /* the row's keys [kst, ken) within this tile's [base, base + n) */
                    const int64_t base = gr->k0 + t * ATTN_TILE, left = ken[r] - base, skip = kst[r] - base;
                    hi = left < 0 ? 0 : (left < n ? (int32_t)left : n);
                    lo = skip < 0 ? 0 : (skip < hi ? (int32_t)skip : hi);
                }
                sc->nfirst[r] = lo;
                sc->nvalid[r] = hi;
            }
            const int mm = rb - ra;
            void *qseg = (char *)sc->qp + qoff * qrow_bytes;
            qoff += (size_t)((mm + ops->qalign - 1) / ops->qalign * ops->qalign);
            if (t == t0) ops->prep_q(&pl->g, sc->qrows + ra, mm, qseg);
            if (n > 0) {
                float *srow = sc->s + (size_t)ra * ATTN_TILE;
                void *prow = (char *)sc->p + (size_t)ra * ATTN_TILE * sizeof(float);
                ops->load_tile(&pl->g, sc->krows, sc->vrows, n, sc->kt, sc->vt);
                ops->qk(&pl->g, qseg, mm, n, sc->kt, srow);
                ops->softmax(&pl->g, srow, mm, sc->nfirst + ra, sc->nvalid + ra, sc->mrun + ra, sc->lrun + ra,
                             sc->alpha + ra, prow);
                ops->pv(&pl->g, prow, mm, n, sc->vt, sc->orows + ra, sc->alpha + ra);
            }
            ra = rb;
        }
    }
    /* normalize; lse in natural log */
    for (int32_t r = 0; r < m; r++) {
        float *o = sc->orows[r];
        const float l = sc->lrun[r];
        float lse;
        int bad = isnan(l); /* a non-finite score was seen (softmax) */
        if (!bad && l > 0.0f) {
            const float inv = 1.0f / l;
            for (int32_t c = 0; c < dv; c++) {
                o[c] *= inv;
                bad |= !isfinite(o[c]); /* a non-finite V value, or float overflow */
            }
            lse = (float)(((double)sc->mrun[r] + log2((double)l)) * LN2);
        } else {
            /* no key: out 0 (whatever 0 * V gave for keys masked in a shared tile) */
            if (!bad) memset(o, 0, (size_t)dv * sizeof(float));
            lse = -INFINITY;
        }
        if (dst_part) { /* a NaN lse tells the combine to recompute the row */
            dst_part[(size_t)m * (size_t)dv + (size_t)r] = bad ? NAN : lse;
            continue;
        }
        int32_t s, h, kvh;
        row_pos(pl, gr, r, &s, &h, &kvh);
        if (bad) lse = pkv__attn_ref_row(a, gr->b, s, h, sc->xs, NULL, o);
        else if (lse == -INFINITY) lse = INFINITY; /* nothing to attend to */
        else if (a->attn_sink) {
            const float f = (float)(1.0 / (1.0 + exp((double)a->attn_sink[h] - (double)lse)));
            for (int32_t c = 0; c < dv; c++) o[c] *= f;
        }
        if (a->lse) a->lse[((size_t)gr->b * (size_t)a->h_q + (size_t)h) * (size_t)a->s_q + (size_t)s] = lse;
    }
}

static attn_scratch *scratch_of(const plan *pl, int idx) {
    return pl->w ? workers_scratch(pl->w, idx) : pl->solo;
}

static int64_t chunk_start(const plan *pl, int c) { return pl->units * c / pl->nchunks; }

/* Computes the units of chunk c with scratch sc. */
static void compute_chunk(const plan *pl, int c, attn_scratch *sc) {
    attn_chunk *ch = &pl->chunks[c];
    const int64_t u0 = chunk_start(pl, c), u1 = chunk_start(pl, c + 1);
    const int last = c == pl->nchunks - 1;
    ch->cut_group = -1;
    int64_t pos = 0;
    group gr;
    for (int64_t gi = 0; gi < pl->ngroups && pos <= u1; gi++) {
        group_at(pl, gi, &gr);
        const int64_t nt = group_tiles(&gr), g0 = pos, g1 = pos + nt;
        pos = g1;
        if (nt == 0) {
            /* empty groups belong to the chunk holding their position */
            if ((g0 >= u0 && g0 < u1) || (last && g0 == u1)) run_piece(pl, &gr, 0, 0, sc, NULL);
            continue;
        }
        const int64_t p0 = g0 > u0 ? g0 : u0, p1 = g1 < u1 ? g1 : u1;
        if (p0 >= p1) continue;
        if (p0 == g0 && p1 == g1) {
            run_piece(pl, &gr, 0, nt, sc, NULL);
            continue;
        }
        const int slot = p0 == u0 ? 0 : 1;
        run_piece(pl, &gr, p0 - g0, p1 - g0, sc, ch->part[slot]);
        if (p0 == g0) { /* the group starts here: this chunk combines it */
            ch->cut_group = gi;
            ch->cut_slot = slot;
        }
    }
}

/* Phase 1: worker idx takes chunks until none is left. */
static void phase_compute(void *ctx, int idx) {
    const plan *pl = (const plan *)ctx;
    if (idx >= pl->nw) return;
    attn_scratch *sc = scratch_of(pl, idx);
    for (;;) {
        const int c = __atomic_fetch_add(pl->next_chunk, 1, __ATOMIC_RELAXED);
        if (c >= pl->nchunks) break;
        compute_chunk(pl, c, sc);
    }
}

/* Combines the pieces of the group chunk c starts (if one is cut). */
static void combine_chunk(const plan *pl, int c, attn_scratch *sc) {
    const pkv_attn_args *a = pl->a;
    const attn_chunk *ch = &pl->chunks[c];
    if (ch->cut_group < 0) return;
    group gr;
    group_at(pl, ch->cut_group, &gr);
    int64_t pos = 0;
    for (int64_t gi = 0; gi < ch->cut_group; gi++) {
        group g2;
        group_at(pl, gi, &g2);
        pos += group_tiles(&g2);
    }
    const int64_t gend = pos + group_tiles(&gr);
    /* pieces: this chunk's slot, then slot 0 of the following chunks */
    const float *parts[ATTN_MAX_CHUNKS];
    int np = 0;
    int ci = c;
    parts[np++] = ch->part[ch->cut_slot];
    while (chunk_start(pl, ci + 1) < gend && np < ATTN_MAX_CHUNKS) {
        ci++;
        parts[np++] = pl->chunks[ci].part[0];
    }
    const int32_t m = gr.m, dv = a->dv;
    for (int32_t r = 0; r < m; r++) {
        float mx = -INFINITY;
        int bad = 0;
        for (int i = 0; i < np; i++) {
            const float l = parts[i][(size_t)m * (size_t)dv + (size_t)r];
            bad |= isnan(l);
            if (l > mx) mx = l;
        }
        int32_t s, h, kvh;
        row_pos(pl, &gr, r, &s, &h, &kvh);
        const size_t qrow = ((size_t)gr.b * (size_t)a->s_q + (size_t)s) * (size_t)a->h_q + (size_t)h;
        float *o = a->out + qrow * (size_t)dv;
        float lse;
        if (bad) {
            lse = pkv__attn_ref_row(a, gr.b, s, h, sc->xs, NULL, o);
        } else if (mx == -INFINITY) {
            memset(o, 0, (size_t)dv * sizeof(float));
            lse = INFINITY;
        } else {
            double sum = 0.0;
            float wgt[ATTN_MAX_CHUNKS];
            for (int i = 0; i < np; i++) {
                wgt[i] = (float)exp((double)parts[i][(size_t)m * (size_t)dv + (size_t)r] - mx);
                sum += wgt[i];
            }
            const float inv = (float)(1.0 / sum);
            for (int i = 0; i < np; i++) wgt[i] *= inv;
            for (int32_t cc = 0; cc < dv; cc++) {
                float acc = 0.0f;
                for (int i = 0; i < np; i++) /* an empty piece's out is not read (0 * NaN) */
                    if (wgt[i] != 0.0f) acc += wgt[i] * parts[i][(size_t)r * (size_t)dv + (size_t)cc];
                o[cc] = acc;
                bad |= !isfinite(acc);
            }
            lse = pkv__f32_sat((double)mx + log(sum));
            if (bad) {
                lse = pkv__attn_ref_row(a, gr.b, s, h, sc->xs, NULL, o);
            } else if (a->attn_sink) {
                const float f = (float)(1.0 / (1.0 + exp((double)a->attn_sink[h] - (double)lse)));
                for (int32_t cc = 0; cc < dv; cc++) o[cc] *= f;
            }
        }
        if (a->lse) a->lse[((size_t)gr.b * (size_t)a->h_q + (size_t)h) * (size_t)a->s_q + (size_t)s] = lse;
    }
}

/* Phase 2: worker idx combines the cut groups of chunks idx, idx + nw, ... */
static void phase_combine(void *ctx, int idx) {
    const plan *pl = (const plan *)ctx;
    if (idx >= pl->nw) return;
    for (int c = idx; c < pl->nchunks; c += pl->nw) combine_chunk(pl, c, scratch_of(pl, idx));
}

static int pad_to(int32_t x, int32_t p) { return (int32_t)(((int64_t)x + p - 1) / p * p); }

/* The call after validation. */
static int run_validated(const pkv_attn_args *a, pkv_workers *w, const attn_ops *ops) {
    RETURN_IF(ops == NULL, PKV_ERR_DTYPE);
    const int64_t rows = a->indices ? a->h_q / a->h_kv : (int64_t)(a->h_q / a->h_kv) * a->s_q;
    if (ops->small_m && rows <= ATTN_SMALL_M) ops = ops->small_m;
    plan pl;
    memset(&pl, 0, sizeof pl);
    pl.a = a;
    pl.ops = ops;
    pl.w = w;
    pl.sparse = a->indices != NULL;
    pl.hpg = a->h_q / a->h_kv;
    pl.rph = pl.sparse ? pl.hpg : (int64_t)pl.hpg * a->s_q;
    pl.rows = pl.rph * a->h_kv;
    pl.mb = ops->multi_head && pl.rph <= ATTN_MB ? (int32_t)(ATTN_MB / pl.rph * pl.rph) : ATTN_MB;
    pl.nrb = (pl.rows + pl.mb - 1) / pl.mb;
    pl.ngroups = (int64_t)a->batch * (pl.sparse ? a->s_q : 1) * pl.nrb;
    pl.g.d = a->d;
    pl.g.dv = a->dv;
    pl.g.dpad = pad_to(a->d, ops->pad);
    pl.g.dvpad = pad_to(a->dv, ops->pad);
    pl.g.q_dtype = a->q_dtype;
    pl.g.kv_dtype = a->kv_dtype;
    pl.g.scale_log2 = pkv__f32_sat((double)a->softmax_scale * 1.4426950408889634); /* inf: every row exact */
    if (a->kv_dtype == PKV_FP8_MLA656) {
        pl.kslot = pl.krow = PKV_MLA656_BYTES;
        pl.khead = 0;
    } else {
        const size_t es = pkv_dtype_size(a->kv_dtype);
        pl.khead = pl.krow = (size_t)a->d * es;
        pl.kslot = pl.krow * (size_t)a->h_kv;
        pl.vhead = pl.vrow = (size_t)a->dv * es;
        pl.vslot = pl.vrow * (size_t)a->h_kv;
    }
    pl.g.rph = pl.rph < INT32_MAX ? (int32_t)pl.rph : INT32_MAX; /* multi_head kernels: rph <= ATTN_SMALL_M */
    pl.g.khead = pl.khead;
    pl.g.vhead = a->v_cache ? pl.vhead : pl.khead;
    group gr;
    for (int64_t gi = 0; gi < pl.ngroups; gi++) {
        group_at(&pl, gi, &gr);
        pl.units += group_tiles(&gr);
    }
    const size_t bytes = attn_scratch_bytes(&pl.g);
    RETURN_IF(bytes == 0, PKV_ERR_NOMEM);

    attn_chunk solo_chunk = {{NULL, NULL}, -1, 0};
    int next_chunk = 0;
    pl.next_chunk = &next_chunk;
    if (!w) {
        /* No pool: the calling thread alone, with its own thread's scratch. */
        attn_scratch *sc = solo_scratch(bytes);
        RETURN_IF(sc == NULL, PKV_ERR_NOMEM);
        attn_scratch_carve(sc, sc->mem, sc->bytes, &pl.g);
        pl.solo = sc;
        pl.nw = pl.nchunks = 1;
        pl.chunks = &solo_chunk;
        compute_chunk(&pl, 0, sc); /* one chunk: no group is cut */
        return PKV_OK;
    }
    pl.nw = workers_count(w);
    if (pl.units < pl.nw) pl.nw = pl.units < 1 ? 1 : (int)pl.units;
    /* a few chunks per worker balance cores that run at different speeds; each
     * chunk keeps >= 32 tiles, as every piece costs a partial write and combine */
    int64_t nch = pl.nw == 1 ? 1 : (int64_t)pl.nw * (pl.nw <= 4 ? 4 : 2);
    if (nch > pl.units / 32) nch = pl.units / 32 > pl.nw ? pl.units / 32 : pl.nw;
    if (nch > pl.units) nch = pl.units < 1 ? 1 : pl.units;
    if (nch > ATTN_MAX_CHUNKS) nch = ATTN_MAX_CHUNKS;
    pl.nchunks = (int)nch;
    if (pl.nw > pl.nchunks) pl.nw = pl.nchunks;
    const size_t part_floats = pl.nchunks > 1 ? (size_t)pl.mb * ((size_t)a->dv + 1) : 0;
    FORWARD_IF_ERROR(workers_begin(w, bytes, pl.nchunks, part_floats));
    for (int i = 0; i < workers_count(w); i++) {
        attn_scratch *sc = workers_scratch(w, i);
        attn_scratch_carve(sc, sc->mem, sc->bytes, &pl.g);
    }
    pl.chunks = workers_chunks(w);
    if (pl.nchunks == 1) {
        compute_chunk(&pl, 0, workers_scratch(w, 0));
    } else {
        workers_run(w, phase_compute, &pl);
        workers_run(w, phase_combine, &pl);
    }
    workers_end(w);
    return PKV_OK;
}

int attn_fast_run(const pkv_attn_args *a, pkv_workers *w, const attn_ops *ops) {
    FORWARD_IF_ERROR(attn_validate(a));
    return run_validated(a, w, ops);
}

void pkv_attn_args_init(pkv_attn_args *args) {
    if (!args) return;
    memset(args, 0, sizeof *args);
    args->size = sizeof *args;
}

int pkv_attn(const pkv_attn_args *args, pkv_workers *w) {
    RETURN_IF(args == NULL, PKV_ERR_NULL);
    pkv_attn_args full;
    pkv_attn_args_init(&full);
    FORWARD_IF_ERROR(pkv__struct_import(&full, sizeof full, args, PKV_ATTN_ARGS_SIZE_1_0));
    FORWARD_IF_ERROR(attn_validate(&full));
    return run_validated(&full, w, attn_ops_best(full.q_dtype, full.kv_dtype));
}
