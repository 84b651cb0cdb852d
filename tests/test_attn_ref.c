/* The attention oracle (pkv_attn_reference):
 *  1. against every case of the project's vectors (tests/vectors, a float64 NumPy
 *     reference) and of the shared ones when present (PKV_VECTORS, default
 *     ../shared/vectors; skipped with a note when absent);
 *  2. every validation failure, with out/lse left untouched;
 *  3. hand-made cases against a naive implementation written here independently
 *     (positions masked by predicate, long double, dtype decoding of its own):
 *     causal (including rows with no visible key), GQA (vs the same cache expanded
 *     to MHA), sparse with -1, attn_sink, all q x kv dtypes, unused table entries
 *     2147480000 with NaN in unused blocks. */
#include <errno.h>
#include <float.h>
#include <stdint.h>
#include <unistd.h>

#include "common/vectors.h"
#include "fp8.h"
#include "npy.h"
#include "internal.h"
#include "test.h"

/* ---------------- independent helpers ---------------- */

/* bf16 and f16 decoded from their definitions (not the library's bit tricks). */
static float my_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static float my_f16(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return (float)(s ? -v : v); /* no inf/NaN in our test data */
}
static float elem(const void *p, int dt, size_t i) {
    if (dt == PKV_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == PKV_BF16 ? my_bf16(h) : my_f16(h);
}
/* Library encoders (round to nearest even) make the data; the decode above is ours. */
static void put(void *p, int dt, size_t i, float x) {
    if (dt == PKV_F32) ((float *)p)[i] = x;
    else ((uint16_t *)p)[i] = dt == PKV_BF16 ? pkv_f32_to_bf16(x) : pkv_f32_to_f16(x);
}

static size_t esz(int dt) { return dt == PKV_F32 ? 4 : 2; }

/* ---------------- a hand-made case ---------------- */

typedef struct tcase {
    pkv_attn_args a;
    void *q, *k, *v;
    int32_t *table, *seqlens, *indices;
    float *out, *lse, *sink;
} tcase;

/* Random case: table rows are a random permutation of blocks, unused entries hold
 * pad, every block not used by any sequence is filled with NaN (f32/bf16/f16 NaN). */
static void tc_make(tcase *t, test_rng *r, int batch, int s_q, int h_q, int h_kv, int d, int dv,
                    int v_sep, int bs, int mbps, const int32_t *lens, int qdt, int kvdt,
                    int32_t pad) {
    memset(t, 0, sizeof *t);
    pkv_attn_args *a = &t->a;
    pkv_attn_args_init(a);
    a->batch = batch; a->s_q = s_q; a->h_q = h_q; a->h_kv = h_kv; a->d = d; a->dv = dv;
    a->block_size = bs; a->max_blocks_per_seq = mbps;
    int used = 0;
    for (int b = 0; b < batch; b++) used += (lens[b] + bs - 1) / bs;
    a->num_blocks = used + 3; /* three blocks nobody uses: NaN */
    a->softmax_scale = (float)(1.0 / sqrt((double)d));
    a->q_dtype = qdt; a->kv_dtype = kvdt;
    size_t nq = (size_t)batch * s_q * h_q * d, nslots = (size_t)a->num_blocks * bs;
    t->q = calloc(nq, esz(qdt));
    t->k = calloc(nslots * h_kv * d, esz(kvdt));
    t->v = v_sep ? calloc(nslots * h_kv * dv, esz(kvdt)) : NULL;
    t->table = malloc(sizeof(int32_t) * batch * mbps);
    t->seqlens = malloc(sizeof(int32_t) * batch);
    t->out = malloc(sizeof(float) * batch * s_q * h_q * dv);
    t->lse = malloc(sizeof(float) * batch * s_q * h_q);
    for (size_t i = 0; i < nq; i++) put(t->q, qdt, i, (float)test_normal(r));
    int32_t *perm = malloc(sizeof(int32_t) * a->num_blocks);
    for (int i = 0; i < a->num_blocks; i++) perm[i] = i;
    for (int i = a->num_blocks - 1; i > 0; i--) {
        int j = (int)test_below(r, (uint32_t)i + 1);
        int32_t tmp = perm[i]; perm[i] = perm[j]; perm[j] = tmp;
    }
    uint8_t *isused = calloc((size_t)a->num_blocks, 1);
    int next = 0;
    for (int b = 0; b < batch; b++) {
        t->seqlens[b] = lens[b];
        int nb = (lens[b] + bs - 1) / bs;
        for (int j = 0; j < mbps; j++) t->table[b * mbps + j] = j < nb ? perm[next++] : pad;
    }
    for (int b = 0; b < batch; b++)
        for (int j = 0; j < (lens[b] + bs - 1) / bs; j++) isused[t->table[b * mbps + j]] = 1;
    for (size_t s = 0; s < nslots; s++) {
        int live = isused[s / bs];
        for (int c = 0; c < h_kv * d; c++) {
            size_t i = s * h_kv * d + c;
            if (live) put(t->k, kvdt, i, (float)test_normal(r));
            else if (kvdt == PKV_F32) ((float *)t->k)[i] = NAN;
            else ((uint16_t *)t->k)[i] = 0x7fff; /* NaN in bf16 and f16 */
        }
        for (int c = 0; v_sep && c < h_kv * dv; c++) {
            size_t i = s * h_kv * dv + c;
            if (live) put(t->v, kvdt, i, (float)test_normal(r));
            else if (kvdt == PKV_F32) ((float *)t->v)[i] = NAN;
            else ((uint16_t *)t->v)[i] = 0x7fff;
        }
    }
    free(perm);
    free(isused);
    a->q = t->q; a->k_cache = t->k; a->v_cache = t->v;
    a->block_table = t->table; a->cache_seqlens = t->seqlens;
    a->out = t->out; a->lse = t->lse;
}

static void tc_free(tcase *t) {
    free(t->q); free(t->k); free(t->v); free(t->table); free(t->seqlens);
    free(t->indices); free(t->out); free(t->lse); free(t->sink);
}

/* The naive computation: for each query row, walk every logical key position (or
 * sparse index), keep it by the causal predicate t <= L - s_q + i, softmax in
 * long double. out_n/lse_n laid out like the library's. */
static void naive(const pkv_attn_args *a, double *out_n, double *lse_n) {
    long double *sc = malloc(sizeof(long double) * (a->indices ? a->topk : 1 << 16));
    int64_t *sl = malloc(sizeof(int64_t) * (a->indices ? a->topk : 1 << 16));
    for (int b = 0; b < a->batch; b++)
        for (int i = 0; i < a->s_q; i++)
            for (int h = 0; h < a->h_q; h++) {
                int kvh = h * a->h_kv / a->h_q; /* == h / (h_q / h_kv) when divisible */
                int n = 0;
                if (a->indices) {
                    for (int j = 0; j < a->topk; j++) {
                        int32_t s = a->indices[((size_t)b * a->s_q + i) * a->topk + j];
                        if (s >= 0) sl[n++] = s;
                    }
                } else {
                    int L = a->cache_seqlens[b];
                    int last = a->causal ? L - a->s_q + i : L - 1; /* the row's latest key */
                    for (int pos = 0; pos < L; pos++) {
                        if (pos > last) continue;
                        if (a->window > 0 && pos <= last - a->window) continue; /* outside the last W */
                        int blk = a->block_table[b * a->max_blocks_per_seq + pos / a->block_size];
                        sl[n++] = (int64_t)blk * a->block_size + pos % a->block_size;
                    }
                }
                double *o = out_n + (((size_t)b * a->s_q + i) * a->h_q + h) * a->dv;
                double *ls = &lse_n[((size_t)b * a->h_q + h) * a->s_q + i];
                if (n == 0) {
                    for (int c = 0; c < a->dv; c++) o[c] = 0;
                    *ls = INFINITY;
                    continue;
                }
                long double mx = -INFINITY, sum = 0;
                for (int j = 0; j < n; j++) {
                    long double dot = 0;
                    for (int c = 0; c < a->d; c++)
                        dot += (long double)elem(a->q, a->q_dtype,
                                                 (((size_t)b * a->s_q + i) * a->h_q + h) * a->d + c) *
                               elem(a->k_cache, a->kv_dtype, ((size_t)sl[j] * a->h_kv + kvh) * a->d + c);
                    sc[j] = dot * a->softmax_scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j < n; j++) sum += expl(sc[j] - mx);
                long double lse = mx + logl(sum);
                long double denom = sum;
                if (a->attn_sink) denom += expl((long double)a->attn_sink[h] - mx);
                for (int c = 0; c < a->dv; c++) {
                    long double acc = 0;
                    for (int j = 0; j < n; j++) {
                        float v = a->v_cache
                            ? elem(a->v_cache, a->kv_dtype, ((size_t)sl[j] * a->h_kv + kvh) * a->dv + c)
                            : elem(a->k_cache, a->kv_dtype, ((size_t)sl[j] * a->h_kv + kvh) * a->d + c);
                        acc += expl(sc[j] - mx) * v;
                    }
                    o[c] = (double)(acc / denom);
                }
                *ls = (double)lse;
            }
    free(sc);
    free(sl);
}

/* out/lse of a run vs naive: out to 2e-6 relative of max(|ref|, 1e-3 * row scale),
 * lse to 1e-6 absolute (values here are small), +inf exactly. */
static int compare_naive(const pkv_attn_args *a, const char *what) {
    size_t no = (size_t)a->batch * a->s_q * a->h_q * a->dv, nl = (size_t)a->batch * a->s_q * a->h_q;
    double *on = malloc(sizeof(double) * no), *ln = malloc(sizeof(double) * nl);
    naive(a, on, ln);
    int bad = 0;
    for (size_t i = 0; i < no && bad < 5; i++) {
        if (!(fabs(a->out[i] - on[i]) <= 2e-6 * fmax(fabs(on[i]), 1e-3))) {
            TEST_FAIL_("%s: out[%zu] = %.9g, naive %.9g", what, i, a->out[i], on[i]);
            bad++;
        }
    }
    for (size_t i = 0; i < nl && a->lse && bad < 5; i++) {
        int ok = isinf(ln[i]) ? (isinf(a->lse[i]) && a->lse[i] > 0) : fabs(a->lse[i] - ln[i]) <= 1e-6;
        if (!ok) {
            TEST_FAIL_("%s: lse[%zu] = %.9g, naive %.9g", what, i, a->lse[i], ln[i]);
            bad++;
        }
    }
    test_checks_++;
    free(on);
    free(ln);
    return bad == 0;
}

/* ---------------- 1. shared vectors ---------------- */

/* Loads dir/name.what.npy; required: a missing file fails. Checks dtype and shape. */
static int load_arr(const char *dir, const char *name, const char *what, int dtype, int ndim,
                    const int64_t *shape, npy_array *out, int required) {
    char err[1600];
    size_t count = ndim < 0 ? 0 : 1;
    for (int i = 0; i < ndim; i++) count *= (size_t)shape[i];
    int st = vectors_load(dir, name, what, dtype, count, out, required, err, sizeof err);
    if (st < 0) TEST_FAIL_("%s", err);
    if (st <= 0) return st;
    int ok = ndim < 0 || out->ndim == ndim;
    for (int i = 0; ok && ndim > 0 && i < ndim; i++) ok = out->shape[i] == shape[i];
    if (!ok) { TEST_FAIL_("%s.%s: unexpected shape", name, what); npy_free(out); return -1; }
    return 1;
}

static int npy_of(int dtype) { return dtype == PKV_F32 ? NPY_F4 : dtype == PKV_F16 ? NPY_F2 : NPY_U2; }

typedef struct worst { double rel, lse; int n; } worst;

static void run_vector_case(const char *dir, const vcase *c, void *ctx) {
    double *worst_rel = &((worst *)ctx)->rel, *worst_lse = &((worst *)ctx)->lse;
    ((worst *)ctx)->n++;
    const int fp8 = c->kv_dtype == PKV_FP8_MLA656;
    int64_t sq[] = {c->b, c->s_q, c->h_q, c->d}, sk[] = {c->num_blocks, c->block_size, c->h_kv, c->d},
            sk8[] = {c->num_blocks, c->block_size, PKV_MLA656_BYTES},
            sv[] = {c->num_blocks, c->block_size, c->h_kv, c->dv}, st[] = {c->b, c->mbps},
            ss[] = {c->b}, so[] = {c->b, c->s_q, c->h_q, c->dv}, sl[] = {c->b, c->h_q, c->s_q},
            sh[] = {c->h_q};
    npy_array q, k, v, bt, sls, out, lse, ix, sink;
    memset(&v, 0, sizeof v); memset(&ix, 0, sizeof ix); memset(&sink, 0, sizeof sink);
    if (load_arr(dir, c->name, "q", npy_of(c->dtype), 4, sq, &q, 1) < 0) return;
    if (fp8 ? load_arr(dir, c->name, "k_cache", NPY_U1, 3, sk8, &k, 1) < 0
            : load_arr(dir, c->name, "k_cache", npy_of(c->kv_dtype), 4, sk, &k, 1) < 0)
        goto q_;
    if (!c->v_shared && load_arr(dir, c->name, "v_cache", npy_of(c->kv_dtype), 4, sv, &v, 1) < 0) goto k_;
    if (load_arr(dir, c->name, "block_table", NPY_I4, 2, st, &bt, 1) < 0) goto v_;
    if (load_arr(dir, c->name, "cache_seqlens", NPY_I4, 1, ss, &sls, 1) < 0) goto bt_;
    if (load_arr(dir, c->name, "out", NPY_F8, 4, so, &out, 1) < 0) goto sls_;
    if (load_arr(dir, c->name, "lse", NPY_F8, 3, sl, &lse, 1) < 0) goto out_;
    /* optional sparse indices [b][s_q][topk] and attn_sink [h_q] */
    if (load_arr(dir, c->name, "indices", NPY_I4, -1, NULL, &ix, 0) < 0) goto lse_;
    if (load_arr(dir, c->name, "attn_sink", NPY_F4, 1, sh, &sink, 0) < 0) goto ix_;
    {
        pkv_attn_args a;
        vectors_geometry(c, &a);
        a.q = q.data; a.k_cache = k.data; a.v_cache = c->v_shared ? NULL : v.data;
        a.block_table = bt.data; a.cache_seqlens = sls.data;
        if (ix.data) {
            if (ix.ndim != 3 || ix.shape[0] != c->b || ix.shape[1] != c->s_q) {
                TEST_FAIL_("%s: indices shape", c->name);
                goto sink_;
            }
            a.indices = ix.data;
            a.topk = (int32_t)ix.shape[2];
        }
        a.attn_sink = sink.data;
        size_t no = out.count, nl = lse.count;
        a.out = malloc(no * sizeof(float));
        a.lse = malloc(nl * sizeof(float));
        CHECK_OK(pkv_attn_reference(&a));
        const double *ro = out.data, *rl = lse.data;
        int bad = 0;
        for (size_t i = 0; i < no && bad < 5; i++) {
            /* required bound: 1e-5 * max(1, |ref|). The oracle computes in double and
             * rounds once to float, so it also meets float rounding: 2^-24 relative
             * plus 1e-12 for the generator's own summation order. */
            double e = fabs(a.out[i] - ro[i]);
            if (fabs(ro[i]) > 1e-6) *worst_rel = fmax(*worst_rel, e / fabs(ro[i]));
            if (!(e <= 1e-5 * fmax(1.0, fabs(ro[i]))) || !(e <= 0x1p-24 * fabs(ro[i]) + 1e-12)) {
                TEST_FAIL_("%s: out[%zu] = %.9g, want %.9g", c->name, i, a.out[i], ro[i]);
                bad++;
            }
        }
        for (size_t i = 0; i < nl && bad < 5; i++) {
            int ok;
            if (isinf(rl[i])) {
                ok = isinf(a.lse[i]) && (a.lse[i] > 0) == (rl[i] > 0);
            } else {
                /* 1e-6 absolute; above |lse| = 16 a float cannot hold that, so there
                 * the bound is float rounding (half an ulp, 2^-24 relative) */
                double e = fabs(a.lse[i] - rl[i]);
                *worst_lse = fmax(*worst_lse, e);
                ok = e <= fmax(1e-6, 0x1p-24 * fabs(rl[i]));
            }
            if (!ok) {
                TEST_FAIL_("%s: lse[%zu] = %.9g, want %.9g", c->name, i, a.lse[i], rl[i]);
                bad++;
            }
        }
        /* rows of empty sequences: out exactly 0 */
        for (int b = 0; b < c->b; b++)
            if (!ix.data && ((const int32_t *)sls.data)[b] == 0)
                for (size_t i = 0; i < (size_t)c->s_q * c->h_q * c->dv; i++)
                    CHECK(a.out[(size_t)b * c->s_q * c->h_q * c->dv + i] == 0.0f);
        test_checks_++;
        free(a.out);
        free(a.lse);
    }
sink_: npy_free(&sink);
ix_: npy_free(&ix);
lse_: npy_free(&lse);
out_: npy_free(&out);
sls_: npy_free(&sls);
bt_: npy_free(&bt);
v_: npy_free(&v);
k_: npy_free(&k);
q_: npy_free(&q);
}

static void test_vectors(void) {
    char err[1300];
    worst w = {0, 0, 0};
    if (vectors_for_each("test_attn_ref", run_vector_case, &w, err, sizeof err) < 0) TEST_FAIL_("%s", err);
    printf("test_attn_ref: %d vector cases, worst out rel err %.3g, worst lse abs err %.3g\n", w.n, w.rel, w.lse);
}

/* ---------------- 2. validation ---------------- */

#define SENTINEL 12345.0f

static void expect_status(pkv_attn_args *a, int want, const char *what) {
    size_t no = (size_t)4 * 2 * 4 * 16; /* bigger than any out used below */
    float *lse = a->lse ? a->lse : a->out + 448; /* lse = NULL: check the tail of out */
    for (size_t i = 0; i < no; i++) a->out[i] = SENTINEL;
    for (size_t i = 0; i < 64; i++) lse[i] = SENTINEL;
    int st = pkv_attn_reference(a);
    test_checks_++;
    if (st != want) TEST_FAIL_("%s: got %d (%s), want %d", what, st, pkv_strerror(st), want);
    if (want != PKV_OK) {
        int touched = 0;
        for (size_t i = 0; i < no; i++) touched |= a->out[i] != SENTINEL;
        for (size_t i = 0; i < 64; i++) touched |= lse[i] != SENTINEL;
        CHECK(!touched);
    }
}

static void test_validation(void) {
    test_rng r = {42};
    const int32_t lens[2] = {5, 9}; /* block_size 4: 2 and 3 blocks used of 4 */
    tcase t;
    tc_make(&t, &r, 2, 2, 4, 2, 16, 8, 1, 4, 4, lens, PKV_F32, PKV_F32, 2147480000);
    float out[4 * 2 * 4 * 16], lse[64];
    t.a.out = out;
    t.a.lse = lse;
    pkv_attn_args good = t.a, a;
    int32_t ix[2 * 2 * 3] = {0, -1, 3, 7, -1, -1, 1, 2, 3, 4, 5, 6};

    expect_status(&good, PKV_OK, "good args");
    CHECK_STATUS(pkv_attn_reference(NULL), PKV_ERR_NULL);
#define TRY(field_change, want)                         \
    do { a = good; field_change; expect_status(&a, want, #field_change); } while (0)
    TRY(a.q = NULL, PKV_ERR_NULL);
    TRY(a.k_cache = NULL, PKV_ERR_NULL);
    TRY(a.block_table = NULL, PKV_ERR_NULL);
    TRY(a.cache_seqlens = NULL, PKV_ERR_NULL);
    TRY(a.lse = NULL, PKV_OK); /* lse is optional */
    a = good; a.out = NULL; CHECK_STATUS(pkv_attn_reference(&a), PKV_ERR_NULL);
    /* sparse mode reads neither block_table nor cache_seqlens */
    TRY((a.indices = ix, a.topk = 3, a.block_table = NULL, a.cache_seqlens = NULL), PKV_OK);
    TRY((a.indices = ix, a.topk = 3, a.max_blocks_per_seq = 0), PKV_OK);
    TRY(a.batch = 0, PKV_ERR_INVALID);
    TRY(a.batch = -1, PKV_ERR_INVALID);
    TRY(a.s_q = 0, PKV_ERR_INVALID);
    TRY(a.h_q = 0, PKV_ERR_INVALID);
    TRY(a.h_kv = 0, PKV_ERR_INVALID);
    TRY(a.d = 0, PKV_ERR_INVALID);
    TRY(a.dv = 0, PKV_ERR_INVALID);
    TRY(a.dv = -3, PKV_ERR_INVALID);
    TRY(a.block_size = 0, PKV_ERR_INVALID);
    TRY(a.num_blocks = 0, PKV_ERR_INVALID);
    TRY(a.max_blocks_per_seq = 0, PKV_ERR_INVALID);
    TRY((a.v_cache = NULL, a.dv = 17), PKV_ERR_INVALID); /* V shared: dv <= d */
    TRY((a.v_cache = NULL, a.dv = 16), PKV_OK);
    TRY(a.causal = 2, PKV_ERR_INVALID);
    TRY(a.causal = -1, PKV_ERR_INVALID);
    TRY((a.indices = ix, a.topk = 3, a.causal = 1), PKV_ERR_INVALID);
    TRY((a.indices = ix, a.topk = 0), PKV_ERR_INVALID);
    TRY(a.softmax_scale = NAN, PKV_ERR_INVALID);
    TRY(a.softmax_scale = INFINITY, PKV_ERR_INVALID);
    TRY(a.softmax_scale = -0.5f, PKV_OK);      /* any finite scale */
    TRY(a.window = -1, PKV_ERR_INVALID);
    TRY(a.window = INT32_MIN, PKV_ERR_INVALID);
    TRY(a.reserved = 1, PKV_ERR_INVALID);
    TRY((a.window = 3, a.reserved = -1), PKV_ERR_INVALID);
    TRY((a.indices = ix, a.topk = 3, a.window = 2), PKV_ERR_INVALID); /* windows are dense only */
    TRY((a.indices = ix, a.topk = 3, a.window = 0), PKV_OK);
    TRY(a.window = 1, PKV_OK);
    TRY(a.window = INT32_MAX, PKV_OK);
    TRY(a.h_q = 3, PKV_ERR_HEADS);
    TRY(a.h_kv = 3, PKV_ERR_HEADS);
    TRY(a.q_dtype = PKV_FP8_MLA656, PKV_ERR_DTYPE);
    TRY(a.q_dtype = 7, PKV_ERR_DTYPE);
    TRY(a.q_dtype = -1, PKV_ERR_DTYPE);
    TRY(a.kv_dtype = 9, PKV_ERR_DTYPE);
    TRY(a.kv_dtype = PKV_FP8_MLA656, PKV_ERR_DTYPE); /* h_kv 2, d 16 */
    /* sizes whose byte counts overflow are refused before any table is read */
    TRY((a.batch = 1 << 20, a.s_q = 1 << 20, a.h_q = 1 << 20, a.h_kv = 1, a.d = 1 << 20), PKV_ERR_INVALID);
    TRY((a.num_blocks = INT32_MAX, a.block_size = INT32_MAX, a.h_kv = 2, a.d = INT32_MAX / 2), PKV_ERR_INVALID);
    TRY((a.batch = INT32_MAX, a.max_blocks_per_seq = INT32_MAX, a.s_q = 1 << 30, a.h_q = 1 << 30), PKV_ERR_INVALID);

    int32_t sl[2], tb[8];
    memcpy(tb, t.table, sizeof tb);
    TRY((sl[0] = -1, sl[1] = 9, a.cache_seqlens = sl), PKV_ERR_SEQLEN);
    TRY((sl[0] = 5, sl[1] = 17, a.cache_seqlens = sl), PKV_ERR_SEQLEN); /* 4 blocks * 4 = 16 */
    int32_t full[2] = {5, 16};
    int32_t tb_full[8];
    memcpy(tb_full, t.table, sizeof tb_full);
    tb_full[7] = tb_full[6]; /* any valid id */
    TRY((a.cache_seqlens = full, a.block_table = tb_full), PKV_OK);
    TRY((memcpy(tb, t.table, sizeof tb), tb[1] = -1, a.block_table = tb), PKV_ERR_BLOCK_ID);
    TRY((memcpy(tb, t.table, sizeof tb), tb[6] = a.num_blocks, a.block_table = tb), PKV_ERR_BLOCK_ID);
    TRY((memcpy(tb, t.table, sizeof tb), tb[2] = -5, tb[3] = INT32_MAX, a.block_table = tb), PKV_OK);
    TRY((sl[0] = 0, sl[1] = 0, a.cache_seqlens = sl, memset(tb, 0xff, sizeof tb), a.block_table = tb), PKV_OK);
    /* windows: only the entries covering [query 0's window start, len) are checked.
     * Sequence 1 (len 9, blocks of 4): window 4 sees keys [5, 9), block 0 released. */
    TRY((memcpy(tb, t.table, sizeof tb), tb[4] = -1, a.block_table = tb), PKV_ERR_BLOCK_ID);
    TRY((memcpy(tb, t.table, sizeof tb), tb[4] = -1, a.block_table = tb, a.window = 4), PKV_OK);
    TRY((memcpy(tb, t.table, sizeof tb), tb[4] = INT32_MIN, a.block_table = tb, a.window = 4), PKV_OK);
    TRY((memcpy(tb, t.table, sizeof tb), tb[4] = -1, a.block_table = tb, a.window = 6), PKV_ERR_BLOCK_ID);
    TRY((memcpy(tb, t.table, sizeof tb), tb[5] = -1, a.block_table = tb, a.window = 4), PKV_ERR_BLOCK_ID);
    TRY((memcpy(tb, t.table, sizeof tb), tb[0] = -1, a.block_table = tb, a.window = 4), PKV_ERR_BLOCK_ID);
    /* causal s_q 2, window 2: query 0 sees [6, 8), query 1 [7, 9): block 0 released, 1 needed */
    TRY((memcpy(tb, t.table, sizeof tb), tb[4] = -1, a.block_table = tb, a.window = 2, a.causal = 1), PKV_OK);
    TRY((memcpy(tb, t.table, sizeof tb), tb[5] = -1, a.block_table = tb, a.window = 2, a.causal = 1),
        PKV_ERR_BLOCK_ID);

    int32_t bad_ix[12];
    const int32_t nslots = good.num_blocks * good.block_size;
    TRY((memcpy(bad_ix, ix, sizeof ix), bad_ix[5] = -2, a.indices = bad_ix, a.topk = 3), PKV_ERR_SLOT);
    TRY((memcpy(bad_ix, ix, sizeof ix), bad_ix[11] = nslots, a.indices = bad_ix, a.topk = 3), PKV_ERR_SLOT);
    TRY((memcpy(bad_ix, ix, sizeof ix), bad_ix[11] = nslots - 1, a.indices = bad_ix, a.topk = 3), PKV_OK);

    /* FP8 needs h_kv 1, d 576, dv 512 and no separate V */
    {
        uint8_t dummy[656 * 4] = {0};
        float q[576] = {0};
        int32_t tb1[1] = {0}, sl1[1] = {3};
        pkv_attn_args f;
        pkv_attn_args_init(&f);
        f.batch = 1; f.s_q = 1; f.h_q = 1; f.h_kv = 1; f.d = 576; f.dv = 512; f.block_size = 4;
        f.max_blocks_per_seq = 1; f.num_blocks = 1; f.softmax_scale = 0.1f;
        f.q_dtype = PKV_F32; f.kv_dtype = PKV_FP8_MLA656;
        f.q = q; f.k_cache = dummy; f.block_table = tb1; f.cache_seqlens = sl1;
        float o[512], l[1];
        f.out = o; f.lse = l;
        CHECK_OK(pkv_attn_reference(&f));
        pkv_attn_args g = f; g.dv = 256; CHECK_STATUS(pkv_attn_reference(&g), PKV_ERR_DTYPE);
        g = f; g.v_cache = dummy; CHECK_STATUS(pkv_attn_reference(&g), PKV_ERR_DTYPE);
        g = f; g.d = 512; CHECK_STATUS(pkv_attn_reference(&g), PKV_ERR_DTYPE);
        g = f; g.h_q = 2; g.h_kv = 2; CHECK_STATUS(pkv_attn_reference(&g), PKV_ERR_DTYPE);
    }
#undef TRY
    tc_free(&t);
}

/* ---------------- 3. hand-made cases ---------------- */

static void test_causal(void) {
    test_rng r = {7};
    /* s_q 4: sequence 0 (len 2) has two rows with no visible key; len 0 all empty */
    const int32_t lens[3] = {2, 13, 0};
    tcase t;
    tc_make(&t, &r, 3, 4, 4, 1, 24, 24, 0, 4, 5, lens, PKV_F32, PKV_F32, 2147480000);
    t.a.causal = 1;
    CHECK_OK(pkv_attn_reference(&t.a));
    CHECK(compare_naive(&t.a, "causal"));
    /* row (b=0, i=0/1) empty: out 0, lse +inf */
    for (int h = 0; h < 4; h++) {
        CHECK(isinf(t.lse[h * 4 + 0]) && isinf(t.lse[h * 4 + 1]));
        CHECK(!isinf(t.lse[h * 4 + 2]));
    }
    for (int i = 0; i < 2 * 4 * 24; i++) CHECK(t.out[i] == 0.0f);
    /* the last causal row sees every key: same as non-causal */
    float keep[4 * 24];
    memcpy(keep, t.out + ((size_t)1 * 4 + 3) * 4 * 24, sizeof keep);
    t.a.causal = 0;
    CHECK_OK(pkv_attn_reference(&t.a));
    CHECK(!memcmp(keep, t.out + ((size_t)1 * 4 + 3) * 4 * 24, sizeof keep));
    CHECK(compare_naive(&t.a, "non-causal"));
    tc_free(&t);

    /* s_q == 1: causal is the same as non-causal, bit for bit */
    const int32_t l1[2] = {7, 30};
    tc_make(&t, &r, 2, 1, 2, 2, 8, 8, 1, 8, 4, l1, PKV_F32, PKV_BF16, -1);
    float o1[2 * 2 * 8], s1[4];
    t.a.causal = 1;
    CHECK_OK(pkv_attn_reference(&t.a));
    memcpy(o1, t.out, sizeof o1);
    memcpy(s1, t.lse, sizeof s1);
    t.a.causal = 0;
    CHECK_OK(pkv_attn_reference(&t.a));
    CHECK(!memcmp(o1, t.out, sizeof o1) && !memcmp(s1, t.lse, sizeof s1));
    tc_free(&t);
}

/* GQA: h_q 6 over h_kv 2 must equal MHA (h_kv 6) over the cache with each KV head
 * copied to its group's three query heads. */
static void test_gqa(void) {
    test_rng r = {11};
    const int32_t lens[2] = {10, 3};
    tcase t;
    tc_make(&t, &r, 2, 2, 6, 2, 8, 4, 1, 4, 3, lens, PKV_F32, PKV_F32, 2147480000);
    t.a.causal = 1;
    CHECK_OK(pkv_attn_reference(&t.a));
    CHECK(compare_naive(&t.a, "gqa"));
    size_t nslots = (size_t)t.a.num_blocks * t.a.block_size;
    float *k6 = malloc(sizeof(float) * nslots * 6 * 8), *v6 = malloc(sizeof(float) * nslots * 6 * 4);
    for (size_t s = 0; s < nslots; s++)
        for (int h = 0; h < 6; h++) {
            memcpy(k6 + (s * 6 + h) * 8, (float *)t.k + (s * 2 + h / 3) * 8, 8 * sizeof(float));
            memcpy(v6 + (s * 6 + h) * 4, (float *)t.v + (s * 2 + h / 3) * 4, 4 * sizeof(float));
        }
    pkv_attn_args m = t.a;
    float o[2 * 2 * 6 * 4], l[2 * 6 * 2];
    m.h_kv = 6; m.k_cache = k6; m.v_cache = v6; m.out = o; m.lse = l;
    CHECK_OK(pkv_attn_reference(&m));
    CHECK(!memcmp(o, t.out, sizeof o));
    CHECK(!memcmp(l, t.lse, sizeof l));
    free(k6);
    free(v6);
    tc_free(&t);
    /* a separate V may be wider than K */
    tc_make(&t, &r, 2, 1, 2, 1, 4, 700, 1, 4, 3, lens, PKV_F32, PKV_BF16, -1);
    CHECK_OK(pkv_attn_reference(&t.a));
    CHECK(compare_naive(&t.a, "dv > d"));
    tc_free(&t);
}

/* Sparse: a permutation of a dense sequence's slots with -1 interleaved gives the
 * dense result; plus random indices (with repeats) vs naive. */
static void test_sparse(void) {
    test_rng r = {13};
    const int32_t lens[2] = {11, 6};
    tcase t;
    tc_make(&t, &r, 2, 2, 4, 1, 16, 12, 0, 4, 3, lens, PKV_BF16, PKV_F32, 2147480000);
    CHECK_OK(pkv_attn_reference(&t.a));
    float dense_o[2 * 2 * 4 * 12], dense_l[2 * 4 * 2];
    memcpy(dense_o, t.out, sizeof dense_o);
    memcpy(dense_l, t.lse, sizeof dense_l);
    const int topk = 16;
    t.indices = malloc(sizeof(int32_t) * 2 * 2 * topk);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 2; i++) {
            int32_t *row = t.indices + (b * 2 + i) * topk;
            for (int j = 0; j < topk; j++) row[j] = -1;
            for (int pos = 0; pos < lens[b]; pos++) {
                int j;
                do j = (int)test_below(&r, topk); while (row[j] != -1);
                row[j] = t.table[b * 3 + pos / 4] * 4 + pos % 4;
            }
        }
    pkv_attn_args s = t.a;
    s.indices = t.indices; s.topk = topk;
    s.block_table = NULL; s.cache_seqlens = NULL;
    CHECK_OK(pkv_attn_reference(&s));
    for (size_t i = 0; i < sizeof dense_o / sizeof dense_o[0]; i++)
        CHECK_NEAR(t.out[i], dense_o[i], 1e-6 * fmax(1, fabs(dense_o[i])));
    for (size_t i = 0; i < sizeof dense_l / sizeof dense_l[0]; i++)
        CHECK_NEAR(t.lse[i], dense_l[i], 1e-6);
    CHECK(compare_naive(&s, "sparse permuted"));
    /* random slots among the used blocks, repeats allowed; one row all -1 */
    for (int j = 0; j < 2 * 2 * topk; j++) {
        int b = (int)test_below(&r, 2);
        int pos = (int)test_below(&r, (uint32_t)lens[b]);
        t.indices[j] = test_below(&r, 4) == 0 ? -1 : t.table[b * 3 + pos / 4] * 4 + pos % 4;
    }
    for (int j = 0; j < topk; j++) t.indices[topk + j] = -1;
    CHECK_OK(pkv_attn_reference(&s));
    CHECK(compare_naive(&s, "sparse random"));
    for (int h = 0; h < 4; h++) CHECK(isinf(t.lse[h * 2 + 1]) && t.lse[h * 2 + 1] > 0);
    tc_free(&t);
}

static void test_sink(void) {
    test_rng r = {17};
    const int32_t lens[3] = {9, 0, 4};
    tcase t;
    tc_make(&t, &r, 3, 1, 4, 2, 16, 16, 1, 4, 3, lens, PKV_F16, PKV_F16, -1);
    CHECK_OK(pkv_attn_reference(&t.a));
    float lse0[3 * 4], out0[3 * 4 * 16];
    memcpy(lse0, t.lse, sizeof lse0);
    memcpy(out0, t.out, sizeof out0);
    t.sink = malloc(sizeof(float) * 4);
    t.sink[0] = -1.5f; t.sink[1] = 0.0f; t.sink[2] = 2.5f; t.sink[3] = -INFINITY;
    t.a.attn_sink = t.sink;
    CHECK_OK(pkv_attn_reference(&t.a));
    CHECK(compare_naive(&t.a, "sink"));
    CHECK(!memcmp(lse0, t.lse, sizeof lse0)); /* lse unchanged by the sink */
    for (int b = 0; b < 3; b++)
        for (int h = 0; h < 4; h++)
            for (int c = 0; c < 16; c++) {
                size_t i = ((size_t)b * 4 + h) * 16 + c;
                if (lens[b] == 0) { CHECK(t.out[i] == 0.0f); continue; }
                double f = 1.0 / (1.0 + exp((double)t.sink[h] - (double)lse0[b * 4 + h]));
                CHECK_NEAR(t.out[i], out0[i] * f, 1e-6 * fmax(1e-3, fabs(out0[i])));
            }
    for (int h = 0; h < 4; h++) CHECK(isinf(t.lse[4 + h]) && t.lse[4 + h] > 0);
    tc_free(&t);
}

static void test_dtypes(void) {
    test_rng r = {19};
    const int dts[3] = {PKV_F32, PKV_F16, PKV_BF16};
    const int32_t lens[2] = {21, 7};
    for (int qi = 0; qi < 3; qi++)
        for (int ki = 0; ki < 3; ki++)
            for (int vs = 0; vs < 2; vs++) {
                tcase t;
                tc_make(&t, &r, 2, 3, 4, 2, 20, vs ? 12 : 20, vs, 8, 4, lens, dts[qi], dts[ki],
                        2147480000);
                t.a.causal = 1;
                CHECK_OK(pkv_attn_reference(&t.a));
                char what[64];
                snprintf(what, sizeof what, "dtypes q %d kv %d vsep %d", dts[qi], dts[ki], vs);
                CHECK(compare_naive(&t.a, what));
                for (size_t i = 0; i < (size_t)2 * 3 * 4 * t.a.dv; i++) CHECK(isfinite(t.out[i]));
                tc_free(&t);
            }
}

/* Unused table entries hold 2147480000 (FlashMLA's tests) and every unused block
 * is NaN: nothing of either may leak into the result. Block size 1 and a large
 * odd block size as well. */
static void test_unused_entries(void) {
    test_rng r = {23};
    const int32_t lens[4] = {1, 64, 0, 33};
    const int bss[3] = {1, 64, 37};
    for (int k = 0; k < 3; k++) {
        tcase t;
        int bs = bss[k], mbps = (64 + bs - 1) / bs + 2;
        tc_make(&t, &r, 4, 2, 2, 1, 32, 16, 0, bs, mbps, lens, PKV_BF16, PKV_BF16, 2147480000);
        t.a.causal = 1;
        CHECK_OK(pkv_attn_reference(&t.a));
        CHECK(compare_naive(&t.a, "unused entries"));
        int finite = 1;
        for (size_t i = 0; i < (size_t)4 * 2 * 2 * 16; i++) finite &= isfinite(t.out[i]) != 0;
        CHECK(finite);
        tc_free(&t);
    }
}

/* ---------------- 4. sliding windows ---------------- */

/* What an engine does to a windowed sequence: every block wholly before the
 * earliest key any query row of it still needs (query 0's window start) is
 * released: its cache rows become NaN and its table entry -1 or garbage.
 * Computed here from the definition, not from the library's helper. */
static void release_outside_window(tcase *t, int garbage) {
    pkv_attn_args *a = &t->a;
    for (int b = 0; b < a->batch; b++) {
        int L = a->cache_seqlens[b];
        int last0 = a->causal ? L - a->s_q : L - 1; /* query 0's latest key */
        int first = last0 - a->window + 1;          /* and its earliest */
        if (first < 0) first = 0;
        for (int j = 0; (j + 1) * a->block_size <= first; j++) {
            int32_t *e = &t->table[b * a->max_blocks_per_seq + j];
            size_t s0 = (size_t)*e * a->block_size, n = (size_t)a->block_size;
            for (size_t i = s0 * a->h_kv * a->d; i < (s0 + n) * a->h_kv * a->d; i++) {
                if (a->kv_dtype == PKV_F32) ((float *)t->k)[i] = NAN;
                else ((uint16_t *)t->k)[i] = 0x7fff;
            }
            for (size_t i = s0 * a->h_kv * a->dv; t->v && i < (s0 + n) * a->h_kv * a->dv; i++) {
                if (a->kv_dtype == PKV_F32) ((float *)t->v)[i] = NAN;
                else ((uint16_t *)t->v)[i] = 0x7fff;
            }
            *e = garbage ? INT32_MAX - j * 977 : -1;
        }
    }
}

/* Windowed attention against the naive computation (which keeps a key when it
 * is among the row's last W): decode and causal s_q > 1, GQA with a separate V
 * and MLA-shaped (V = K's first dims), windows of 1, below, at and past the
 * length, block sizes 1, 16, 64, released blocks NaN with -1 or garbage entries. */
static void test_window(void) {
    test_rng r = {31};
    const int32_t lens[4] = {150, 37, 0, 64};
    const int bss[3] = {1, 16, 64};
    const int wins[6] = {1, 5, 37, 64, 100, 1000};
    const int sqs[3] = {1, 1, 4}; /* decode non-causal, decode causal, causal s_q 4 */
    int cases = 0;
    for (int k = 0; k < 3; k++)
        for (int wi = 0; wi < 6; wi++)
            for (int qi = 0; qi < 3; qi++)
                for (int mla = 0; mla < 2; mla++) {
                    if (mla && (wi % 2 || k == 0)) continue; /* MLA geometry is slow in long double */
                    tcase t;
                    const int bs = bss[k], mbps = (150 + bs - 1) / bs + 1;
                    if (mla)
                        tc_make(&t, &r, 4, sqs[qi], 4, 1, 576, 512, 0, bs, mbps, lens, PKV_BF16, PKV_BF16, 2147480000);
                    else
                        tc_make(&t, &r, 4, sqs[qi], 6, 2, 24, 16, 1, bs, mbps, lens, PKV_F32, PKV_F16, 2147480000);
                    t.a.causal = qi > 0;
                    t.a.window = wins[wi];
                    release_outside_window(&t, (wi + qi) % 2);
                    CHECK_OK(pkv_attn_reference(&t.a));
                    char what[96];
                    snprintf(what, sizeof what, "window %d bs %d s_q %d causal %d mla %d", wins[wi], bs, sqs[qi],
                             t.a.causal, mla);
                    CHECK(compare_naive(&t.a, what));
                    const size_t no = (size_t)4 * sqs[qi] * t.a.h_q * t.a.dv;
                    int finite = 1;
                    for (size_t i = 0; i < no; i++) finite &= isfinite(t.out[i]) != 0;
                    if (!finite) TEST_FAIL_("%s: NaN from a released block", what);
                    cases++;
                    tc_free(&t);
                }
    /* W = 1: each row is its latest key's V exactly, lse its score */
    {
        tcase t;
        const int32_t l2[2] = {9, 3};
        tc_make(&t, &r, 2, 3, 2, 1, 8, 8, 1, 4, 4, l2, PKV_F32, PKV_F32, -1);
        t.a.causal = 1;
        t.a.window = 1;
        release_outside_window(&t, 0);
        CHECK_OK(pkv_attn_reference(&t.a));
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < 3; i++)
                for (int h = 0; h < 2; h++) {
                    const int pos = l2[b] - 3 + i;
                    const int32_t blk = t.table[b * 4 + pos / 4];
                    const float *v = (const float *)t.v + ((size_t)blk * 4 + pos % 4) * 8;
                    const float *o = t.out + (((size_t)b * 3 + i) * 2 + h) * 8;
                    for (int c = 0; c < 8; c++) CHECK(o[c] == v[c]);
                }
        tc_free(&t);
    }
    /* a window at least the length equals full attention, bit for bit */
    {
        tcase t;
        const int32_t l3[2] = {40, 17};
        tc_make(&t, &r, 2, 2, 4, 2, 16, 16, 0, 16, 3, l3, PKV_BF16, PKV_BF16, 2147480000);
        t.a.causal = 1;
        float o[2 * 2 * 4 * 16], l[16];
        CHECK_OK(pkv_attn_reference(&t.a));
        memcpy(o, t.out, sizeof o);
        memcpy(l, t.lse, sizeof l);
        t.a.window = 40;
        CHECK_OK(pkv_attn_reference(&t.a));
        CHECK(!memcmp(o, t.out, sizeof o) && !memcmp(l, t.lse, sizeof l));
        tc_free(&t);
    }
    printf("test_attn_ref: %d windowed cases against the naive computation\n", cases);
}

int main(void) {
    test_vectors();
    test_validation();
    test_causal();
    test_gqa();
    test_sparse();
    test_sink();
    test_dtypes();
    test_unused_entries();
    test_window();
    return test_report("test_attn_ref");
}
