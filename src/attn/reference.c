/* The attention oracle (pkv_attn_reference): plain loops, double precision,
 * rows gathered one by one through the block table or the sparse indices.
 * Everything else (the fast path, GPU kernels) is checked against this, so it
 * favours being obviously right over being fast. The fast path calls its
 * per-row function too, for rows that meet a non-finite value (attn.h). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "attn.h"
#include "fp8.h"

static void load_f64(const void *base, int dtype, size_t off, int32_t n, double *dst) {
    for (int32_t i = 0; i < n; i++) dst[i] = (double)pkv_load_elem(base, dtype, off + (size_t)i);
}

/* dst[0..n) = K[slot][kvh][0..n) (n <= d; FP8 rows always give all 576). */
static void load_k(const pkv_attn_args *a, int64_t slot, int32_t kvh, int32_t n, double *dst) {
    if (a->kv_dtype == PKV_FP8_MLA656) {
        fp8_mla656_dequant_f64((const uint8_t *)a->k_cache + (size_t)slot * PKV_MLA656_BYTES, dst);
        return;
    }
    load_f64(a->k_cache, a->kv_dtype, ((size_t)slot * (size_t)a->h_kv + (size_t)kvh) * (size_t)a->d,
             n, dst);
}

/* dst[0..dv) = V[slot][kvh]: the separate V cache, or the first dv dims of K. */
static void load_v(const pkv_attn_args *a, int64_t slot, int32_t kvh, double *dst) {
    if (a->v_cache)
        load_f64(a->v_cache, a->kv_dtype,
                 ((size_t)slot * (size_t)a->h_kv + (size_t)kvh) * (size_t)a->dv, a->dv, dst);
    else
        load_k(a, slot, kvh, a->dv, dst);
}

/* Slot of the t-th key query row (b, i) sees (dense: key t of sequence b;
 * sparse: index entry t, -1 for a skipped entry). */
static int64_t key_slot(const pkv_attn_args *a, int32_t b, int32_t i, int32_t t) {
    if (a->indices) return a->indices[((size_t)b * (size_t)a->s_q + (size_t)i) * (size_t)a->topk + (size_t)t];
    const int32_t *table = a->block_table + (size_t)b * (size_t)a->max_blocks_per_seq;
    return (int64_t)table[t / a->block_size] * a->block_size + t % a->block_size;
}

/* Entries [*t0, *t1) of row (b, i)'s key list: the keys of its (windowed)
 * causal range (dense; attn_key_range) or all topk (sparse). Keys before t0 are
 * not gathered at all: their table entries may be released ones. */
static void key_span(const pkv_attn_args *a, int32_t b, int32_t i, int32_t *t0, int32_t *t1) {
    if (a->indices) {
        *t0 = 0;
        *t1 = a->topk;
        return;
    }
    attn_key_range(a, a->cache_seqlens[b], i, t0, t1);
}

static double dot(const double *q, const double *k, int32_t d) {
    double s = 0.0;
    for (int32_t c = 0; c < d; c++) s += q[c] * k[c];
    return s;
}

size_t pkv__attn_row_doubles(int32_t d, int32_t dv) {
    size_t nrow = (size_t)(d > dv ? d : dv);
    if (nrow < PKV_MLA656_DIM) nrow = PKV_MLA656_DIM; /* a whole FP8 row is dequantized */
    return (size_t)d + nrow + (size_t)dv;
}

float pkv__f32_sat(double x) {
    /* values from FLT_MAX up to the rounding midpoint round to FLT_MAX, beyond it to inf */
    if (x >= 0x1.ffffffp127) return INFINITY;
    if (x <= -0x1.ffffffp127) return -INFINITY;
    if (x > FLT_MAX) return FLT_MAX;
    if (x < -FLT_MAX) return -FLT_MAX;
    return (float)x;
}

float pkv__attn_ref_row(const pkv_attn_args *a, int32_t b, int32_t i, int32_t h, double *xs, double *scores,
                   float *out_row) {
    double *q = xs, *row = xs + a->d, *acc = row + (pkv__attn_row_doubles(a->d, a->dv) - (size_t)a->d - (size_t)a->dv);
    const int32_t kvh = h / (a->h_q / a->h_kv);
    int32_t t0, t1;
    key_span(a, b, i, &t0, &t1);
    const size_t qrow = ((size_t)b * (size_t)a->s_q + (size_t)i) * (size_t)a->h_q + (size_t)h;
    load_f64(a->q, a->q_dtype, qrow * (size_t)a->d, a->d, q);
    /* pass 1: scores and their max (kept in scores[] when the caller has room) */
    const double scale = (double)a->softmax_scale;
    double mx = -INFINITY;
    int32_t seen = 0;
    for (int32_t t = t0; t < t1; t++) {
        const int64_t slot = key_slot(a, b, i, t);
        if (slot < 0) continue;
        load_k(a, slot, kvh, a->d, row);
        const double sc = dot(q, row, a->d) * scale;
        if (scores) scores[seen] = sc;
        seen++;
        if (sc > mx) mx = sc;
    }
    if (seen == 0) { /* nothing to attend to */
        for (int32_t c = 0; c < a->dv; c++) out_row[c] = 0.0f;
        return INFINITY;
    }
    /* pass 2: weights exp(score - max) and the weighted sum of V (scores recomputed
     * the same way when not kept: the same double values) */
    double sum = 0.0;
    for (int32_t c = 0; c < a->dv; c++) acc[c] = 0.0;
    for (int32_t t = t0, j = 0; t < t1; t++) {
        const int64_t slot = key_slot(a, b, i, t);
        if (slot < 0) continue;
        double sc;
        if (scores) {
            sc = scores[j++];
        } else {
            load_k(a, slot, kvh, a->d, row);
            sc = dot(q, row, a->d) * scale;
        }
        const double p = exp(sc - mx);
        sum += p;
        load_v(a, slot, kvh, row);
        for (int32_t c = 0; c < a->dv; c++) acc[c] += p * row[c];
    }
    const double lse = mx + log(sum);
    /* with a sink the weights are p / (sum + e^sink) = (p / sum) / (1 + e^(sink - lse)) */
    const double f = a->attn_sink ? 1.0 / (1.0 + exp((double)a->attn_sink[h] - lse)) : 1.0;
    for (int32_t c = 0; c < a->dv; c++) out_row[c] = pkv__f32_sat(acc[c] / sum * f);
    return pkv__f32_sat(lse);
}

static int32_t max_keys(const pkv_attn_args *a) {
    if (a->indices) return a->topk;
    int32_t m = 0;
    for (int32_t b = 0; b < a->batch; b++)
        if (a->cache_seqlens[b] > m) m = a->cache_seqlens[b];
    return a->window > 0 && m > a->window ? a->window : m; /* a row sees at most window keys */
}

int pkv_attn_reference(const pkv_attn_args *args) {
    RETURN_IF(args == NULL, PKV_ERR_NULL);
    pkv_attn_args full, *a = &full;
    pkv_attn_args_init(a);
    FORWARD_IF_ERROR(pkv__struct_import(a, sizeof *a, args, PKV_ATTN_ARGS_SIZE_1_0));
    FORWARD_IF_ERROR(attn_validate(a));

    const size_t nk = (size_t)max_keys(a) + 1, ndbl = pkv__attn_row_doubles(a->d, a->dv);
    RETURN_IF(nk > SIZE_MAX / sizeof(double) - ndbl, PKV_ERR_NOMEM); /* 32-bit hosts */
    double *mem = malloc((nk + ndbl) * sizeof(double));
    RETURN_IF(mem == NULL, PKV_ERR_NOMEM);
    for (int32_t b = 0; b < a->batch; b++)
        for (int32_t i = 0; i < a->s_q; i++) {
            const size_t qrow = ((size_t)b * (size_t)a->s_q + (size_t)i) * (size_t)a->h_q;
            for (int32_t h = 0; h < a->h_q; h++) {
                const float lse = pkv__attn_ref_row(a, b, i, h, mem + nk, mem, a->out + (qrow + (size_t)h) * (size_t)a->dv);
                if (a->lse) a->lse[((size_t)b * (size_t)a->h_q + (size_t)h) * (size_t)a->s_q + (size_t)i] = lse;
            }
        }
    free(mem);
    return PKV_OK;
}
