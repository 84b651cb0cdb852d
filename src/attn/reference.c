/* The attention oracle (pkv_attn_reference): plain loops, double precision,
 * rows gathered one by one through the block table or the sparse indices.
 * Everything else (the fast path, GPU kernels) is checked against this, so it
 * favours being obviously right over being fast. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "attn.h"
#include "fp8.h"

typedef struct ref_scratch {
    int64_t *slots;  /* [max_keys] slots the current query row attends to */
    double *scores;  /* [max_keys] scaled scores of the current (row, head) */
    double *q;       /* [d] the current query head */
    double *row;     /* [max(d, dv, 576)] one K or V row of one head */
    double *acc;     /* [dv] weighted sum of V */
} ref_scratch;

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

/* Slots seen by query row (b, i); returns how many. */
static int32_t gather_slots(const pkv_attn_args *a, int32_t b, int32_t i, int64_t *slots) {
    int32_t n = 0;
    if (a->indices) {
        const int32_t *ix = a->indices + ((size_t)b * (size_t)a->s_q + (size_t)i) * (size_t)a->topk;
        for (int32_t t = 0; t < a->topk; t++)
            if (ix[t] != -1) slots[n++] = ix[t];
        return n;
    }
    const int32_t *table = a->block_table + (size_t)b * (size_t)a->max_blocks_per_seq;
    const int32_t keys = attn_visible_keys(a, a->cache_seqlens[b], i);
    for (int32_t t = 0; t < keys; t++)
        slots[n++] = (int64_t)table[t / a->block_size] * a->block_size + t % a->block_size;
    return n;
}

/* One (row, head): out_row[dv] and the returned lse. sink: NULL or the head's
 * extra logit, whose exp joins the denominator only (lse stays that of the keys). */
static double attend_head(const pkv_attn_args *a, ref_scratch *s, int32_t nkeys, int32_t kvh,
                          const float *sink, float *out_row) {
    if (nkeys == 0) {
        for (int32_t c = 0; c < a->dv; c++) out_row[c] = 0.0f;
        return INFINITY;
    }
    double mx = -INFINITY;
    for (int32_t t = 0; t < nkeys; t++) {
        load_k(a, s->slots[t], kvh, a->d, s->row);
        double dot = 0.0;
        for (int32_t c = 0; c < a->d; c++) dot += s->q[c] * s->row[c];
        s->scores[t] = dot * (double)a->softmax_scale;
        if (s->scores[t] > mx) mx = s->scores[t];
    }
    double sum = 0.0;
    for (int32_t c = 0; c < a->dv; c++) s->acc[c] = 0.0;
    for (int32_t t = 0; t < nkeys; t++) {
        const double p = exp(s->scores[t] - mx);
        sum += p;
        load_v(a, s->slots[t], kvh, s->row);
        for (int32_t c = 0; c < a->dv; c++) s->acc[c] += p * s->row[c];
    }
    const double lse = mx + log(sum);
    /* with a sink the weights are p / (sum + e^sink) = (p / sum) / (1 + e^(sink - lse)) */
    const double f = sink ? 1.0 / (1.0 + exp((double)*sink - lse)) : 1.0;
    for (int32_t c = 0; c < a->dv; c++) out_row[c] = (float)(s->acc[c] / sum * f);
    return lse;
}

static int32_t max_keys(const pkv_attn_args *a) {
    if (a->indices) return a->topk;
    int32_t m = 0;
    for (int32_t b = 0; b < a->batch; b++)
        if (a->cache_seqlens[b] > m) m = a->cache_seqlens[b];
    return m;
}

int pkv_attn_reference(const pkv_attn_args *args) {
    RETURN_IF(args == NULL, PKV_ERR_NULL);
    pkv_attn_args full, *a = &full;
    pkv_attn_args_init(a);
    FORWARD_IF_ERROR(pkv__struct_import(a, sizeof *a, args, PKV_ATTN_ARGS_SIZE_1_0));
    FORWARD_IF_ERROR(attn_validate(a));

    const size_t nk = (size_t)max_keys(a) + 1;
    /* one K row (d; a whole FP8 row is 576) or one V row (dv may exceed d with a V cache) */
    size_t nrow = (size_t)(a->d > a->dv ? a->d : a->dv);
    if (nrow < PKV_MLA656_DIM) nrow = PKV_MLA656_DIM;
    const size_t ndbl = (size_t)a->d + nrow + (size_t)a->dv;
    RETURN_IF(nk > (SIZE_MAX - ndbl * sizeof(double)) / 16, PKV_ERR_NOMEM); /* 32-bit hosts */
    char *mem = malloc(nk * (sizeof(int64_t) + sizeof(double)) + ndbl * sizeof(double));
    RETURN_IF(mem == NULL, PKV_ERR_NOMEM);
    ref_scratch s;
    s.slots = (int64_t *)(void *)mem;
    s.scores = (double *)(void *)(mem + nk * sizeof(int64_t));
    s.q = s.scores + nk;
    s.row = s.q + a->d;
    s.acc = s.row + nrow;

    const int32_t group = a->h_q / a->h_kv;
    for (int32_t b = 0; b < a->batch; b++) {
        for (int32_t i = 0; i < a->s_q; i++) {
            const int32_t nkeys = gather_slots(a, b, i, s.slots);
            const size_t qrow = ((size_t)b * (size_t)a->s_q + (size_t)i) * (size_t)a->h_q;
            for (int32_t h = 0; h < a->h_q; h++) {
                load_f64(a->q, a->q_dtype, (qrow + (size_t)h) * (size_t)a->d, a->d, s.q);
                float *out_row = a->out + (qrow + (size_t)h) * (size_t)a->dv;
                const float *sink = a->attn_sink ? a->attn_sink + h : NULL;
                const double lse = attend_head(a, &s, nkeys, h / group, sink, out_row);
                if (a->lse)
                    a->lse[((size_t)b * (size_t)a->h_q + (size_t)h) * (size_t)a->s_q + (size_t)i] =
                        (float)lse;
            }
        }
    }
    free(mem);
    return PKV_OK;
}
