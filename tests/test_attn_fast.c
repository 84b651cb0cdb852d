/* pkv_attn against the oracle pkv_attn_reference, on every kernel path this CPU
 * supports, with and without worker pools; the project's vectors (tests/vectors)
 * and the shared ones when present (PKV_VECTORS) within FlashMLA's own tolerance
 * on every path; plus validation parity,
 * concurrency (bit-identical to serial runs) and the PKV_ISA override.
 * Random cases follow FlashMLA's tests: blocks permuted, unused table entries
 * 2147480000, unused cache filled with NaN (never read). */
#include <errno.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "attn/kernels.h"
#include "fp8.h"
#include "common/vectors.h"
#include "npy.h"
#include "test.h"

#define UNUSED_ENTRY 2147480000

typedef struct tcase {
    const char *name;
    int32_t batch, s_q, h_q, h_kv, d, dv, block_size, causal;
    int32_t q_dtype, kv_dtype;
    int v_shared;   /* V = first dv dims of K */
    int32_t mean_len;
    int sparse;     /* indices instead of the block table */
    int32_t topk;
    int sink;
    int empty_some; /* force some sequences to length 0 */
    int32_t window; /* sliding window W (dense): blocks before every row's window are released */
    int32_t min_len; /* 0, or each sequence at least this long (windows shorter than L) */
} tcase;

typedef struct tdata {
    pkv_attn_args a;
    void *q, *k, *v;
    int32_t *table, *lens, *indices;
    float *sink;
    float *out, *lse;
} tdata;

static void store_val(void *base, int dtype, size_t i, float x) {
    if (dtype == PKV_F32) ((float *)base)[i] = x;
    else if (dtype == PKV_BF16) ((uint16_t *)base)[i] = pkv_f32_to_bf16(x);
    else ((uint16_t *)base)[i] = pkv_f32_to_f16(x);
}

static void fill_nan(void *base, int dtype, size_t n) {
    if (dtype == PKV_F32) {
        for (size_t i = 0; i < n; i++) ((float *)base)[i] = NAN;
    } else if (dtype == PKV_FP8_MLA656) {
        memset(base, 0xff, n); /* e4m3 NaN, NaN scales */
    } else {
        for (size_t i = 0; i < n; i++) ((uint16_t *)base)[i] = 0x7fc0; /* NaN in bf16 and f16 */
    }
}

static void make_case(const tcase *tc, uint64_t seed, tdata *t) {
    test_rng r = {seed};
    memset(t, 0, sizeof *t);
    pkv_attn_args *a = &t->a;
    pkv_attn_args_init(a);
    a->batch = tc->batch; a->s_q = tc->s_q; a->h_q = tc->h_q; a->h_kv = tc->h_kv;
    a->d = tc->d; a->dv = tc->dv; a->block_size = tc->block_size; a->causal = tc->causal;
    a->q_dtype = tc->q_dtype; a->kv_dtype = tc->kv_dtype;
    a->softmax_scale = (float)(1.0 / sqrt((double)tc->d));
    int32_t *lens = malloc(sizeof(int32_t) * (size_t)tc->batch);
    int32_t maxlen = 0;
    for (int32_t b = 0; b < tc->batch; b++) {
        double x = tc->mean_len + test_normal(&r) * tc->mean_len / 2.0;
        int32_t len = (int32_t)x;
        if (len < tc->s_q) len = tc->s_q;
        if (len < tc->min_len) len = tc->min_len + (int32_t)test_below(&r, 64);
        if (tc->empty_some && test_below(&r, 3) == 0) len = 0;
        lens[b] = len;
        if (len > maxlen) maxlen = len;
    }
    const int32_t bs = tc->block_size;
    a->max_blocks_per_seq = (maxlen + bs - 1) / bs + 1 + (int32_t)test_below(&r, 2);
    int32_t used = 0;
    for (int32_t b = 0; b < tc->batch; b++) used += (lens[b] + bs - 1) / bs;
    a->num_blocks = used + 2 + (int32_t)test_below(&r, 3);
    /* random permutation of block ids; the extra blocks stay unused (NaN) */
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)a->num_blocks);
    for (int32_t i = 0; i < a->num_blocks; i++) perm[i] = i;
    for (int32_t i = a->num_blocks - 1; i > 0; i--) {
        int32_t j = (int32_t)test_below(&r, (uint32_t)i + 1), x = perm[i];
        perm[i] = perm[j]; perm[j] = x;
    }
    t->table = malloc(sizeof(int32_t) * (size_t)tc->batch * (size_t)a->max_blocks_per_seq);
    int32_t next = 0;
    for (int32_t b = 0; b < tc->batch; b++)
        for (int32_t j = 0; j < a->max_blocks_per_seq; j++)
            t->table[b * a->max_blocks_per_seq + j] = j < (lens[b] + bs - 1) / bs ? perm[next++] : UNUSED_ENTRY;
    const size_t slots = (size_t)a->num_blocks * (size_t)bs;
    const int fp8 = tc->kv_dtype == PKV_FP8_MLA656;
    const size_t kbytes = fp8 ? slots * 656 : slots * (size_t)tc->h_kv * (size_t)tc->d * pkv_dtype_size(tc->kv_dtype);
    t->k = malloc(kbytes);
    fill_nan(t->k, tc->kv_dtype, fp8 ? kbytes : kbytes / pkv_dtype_size(tc->kv_dtype));
    if (!tc->v_shared) {
        const size_t nv = slots * (size_t)tc->h_kv * (size_t)tc->dv;
        t->v = malloc(nv * pkv_dtype_size(tc->kv_dtype));
        fill_nan(t->v, tc->kv_dtype, nv);
    }
    /* real data in every used slot */
    float *row = malloc(sizeof(float) * 576);
    for (int32_t b = 0; b < tc->batch; b++) {
        for (int32_t p = 0; p < lens[b]; p++) {
            const size_t slot = (size_t)t->table[b * a->max_blocks_per_seq + p / bs] * (size_t)bs + (size_t)(p % bs);
            if (fp8) {
                for (int c = 0; c < 576; c++) row[c] = (float)test_normal(&r);
                pkv_mla656_quantize(row, (uint8_t *)t->k + slot * 656, (int)test_below(&r, 2));
                continue;
            }
            for (int32_t h = 0; h < tc->h_kv; h++) {
                for (int32_t c = 0; c < tc->d; c++)
                    store_val(t->k, tc->kv_dtype, (slot * (size_t)tc->h_kv + (size_t)h) * (size_t)tc->d + (size_t)c,
                              (float)test_normal(&r));
                if (t->v)
                    for (int32_t c = 0; c < tc->dv; c++)
                        store_val(t->v, tc->kv_dtype, (slot * (size_t)tc->h_kv + (size_t)h) * (size_t)tc->dv + (size_t)c,
                                  (float)test_normal(&r));
            }
        }
    }
    free(row);
    if (tc->window > 0) {
        /* released blocks, as an engine leaves them: those wholly before query 0's
         * window start (the earliest key any row needs) turn NaN and their table
         * entries -1 or garbage (computed here from the definition) */
        a->window = tc->window;
        for (int32_t b = 0; b < tc->batch; b++) {
            const int32_t last0 = tc->causal ? lens[b] - tc->s_q : lens[b] - 1;
            const int32_t first = last0 - tc->window + 1;
            for (int32_t j = 0; (int64_t)(j + 1) * bs <= first; j++) {
                int32_t *e = &t->table[b * a->max_blocks_per_seq + j];
                const size_t s0 = (size_t)*e * (size_t)bs;
                if (fp8) {
                    fill_nan((uint8_t *)t->k + s0 * 656, tc->kv_dtype, (size_t)bs * 656);
                } else {
                    const size_t kr = (size_t)tc->h_kv * (size_t)tc->d, vr = (size_t)tc->h_kv * (size_t)tc->dv;
                    fill_nan((char *)t->k + s0 * kr * pkv_dtype_size(tc->kv_dtype), tc->kv_dtype, (size_t)bs * kr);
                    if (t->v)
                        fill_nan((char *)t->v + s0 * vr * pkv_dtype_size(tc->kv_dtype), tc->kv_dtype, (size_t)bs * vr);
                }
                *e = test_below(&r, 2) ? -1 : (int32_t)(0x7fff0000 + (int32_t)test_below(&r, 65536));
            }
        }
    }
    const size_t nq = (size_t)tc->batch * (size_t)tc->s_q * (size_t)tc->h_q * (size_t)tc->d;
    t->q = malloc(nq * pkv_dtype_size(tc->q_dtype));
    /* a few peaky rows make the softmax nearly one-hot */
    for (size_t i = 0; i < nq; i++) store_val(t->q, tc->q_dtype, i, (float)(test_normal(&r) * (i % 7 == 0 ? 3.0 : 1.0)));
    if (tc->sparse) {
        const size_t ni = (size_t)tc->batch * (size_t)tc->s_q * (size_t)tc->topk;
        t->indices = malloc(sizeof(int32_t) * ni);
        for (int32_t b = 0; b < tc->batch; b++)
            for (int32_t s = 0; s < tc->s_q; s++)
                for (int32_t k = 0; k < tc->topk; k++) {
                    int32_t v = -1;
                    if (lens[b] > 0 && test_below(&r, 5) != 0) {
                        int32_t p = (int32_t)test_below(&r, (uint32_t)lens[b]);
                        v = t->table[b * a->max_blocks_per_seq + p / bs] * bs + p % bs;
                    }
                    t->indices[((size_t)b * (size_t)tc->s_q + (size_t)s) * (size_t)tc->topk + (size_t)k] = v;
                }
        a->indices = t->indices;
        a->topk = tc->topk;
    }
    if (tc->sink) {
        t->sink = malloc(sizeof(float) * (size_t)tc->h_q);
        for (int32_t h = 0; h < tc->h_q; h++) t->sink[h] = (float)test_normal(&r);
        a->attn_sink = t->sink;
    }
    const size_t no = (size_t)tc->batch * (size_t)tc->s_q * (size_t)tc->h_q * (size_t)tc->dv;
    t->out = malloc(sizeof(float) * no);
    t->lse = malloc(sizeof(float) * (size_t)tc->batch * (size_t)tc->h_q * (size_t)tc->s_q);
    t->lens = lens;
    a->q = t->q; a->k_cache = t->k; a->v_cache = t->v;
    a->block_table = t->table; a->cache_seqlens = lens;
    a->out = t->out; a->lse = t->lse;
    free(perm);
}

static void free_case(tdata *t) {
    free(t->q); free(t->k); free(t->v); free(t->table); free(t->lens); free(t->indices);
    free(t->sink); free(t->out); free(t->lse);
}

static size_t out_count(const pkv_attn_args *a) { return (size_t)a->batch * (size_t)a->s_q * (size_t)a->h_q * (size_t)a->dv; }
static size_t lse_count(const pkv_attn_args *a) { return (size_t)a->batch * (size_t)a->h_q * (size_t)a->s_q; }

/* Compares a result with the oracle's; returns 0 when within tolerance. */
static int compare(const char *what, const pkv_attn_args *a, const float *out, const float *lse, const float *rout,
                   const float *rlse) {
    double maxref = 0, maxerr = 0, lerr = 0;
    size_t worst = 0;
    for (size_t i = 0; i < out_count(a); i++) {
        if (fabs(rout[i]) > maxref) maxref = fabs(rout[i]);
        const double e = fabs((double)out[i] - rout[i]);
        if (!(e <= maxerr)) { maxerr = isnan(e) ? INFINITY : e; worst = i; }
    }
    int bad_inf = 0;
    for (size_t i = 0; i < lse_count(a); i++) {
        if (isinf(rlse[i]) || isinf(lse[i])) { if (rlse[i] != lse[i]) bad_inf++; continue; }
        const double e = fabs((double)lse[i] - rlse[i]);
        if (!(e <= lerr)) lerr = isnan(e) ? INFINITY : e;
    }
    test_checks_++;
    if (maxerr > 2e-3 * maxref || lerr > 1e-3 || bad_inf) {
        TEST_FAIL_("%s: out err %.3g (max|out| %.3g, at %zu: %.6g vs %.6g), lse err %.3g, inf mismatches %d",
                   what, maxerr, maxref, worst, out[worst], rout[worst], lerr, bad_inf);
        return 1;
    }
    return 0;
}

static pkv_workers *pools[4]; /* 1, 2, 3 threads and all CPUs */

/* Runs one case through the oracle and every supported ISA path. */
static void run_case(const tcase *tc, uint64_t seed) {
    tdata t;
    make_case(tc, seed, &t);
    pkv_attn_args *a = &t.a;
    CHECK_OK(pkv_attn_reference(a));
    const size_t no = out_count(a), nl = lse_count(a);
    float *rout = malloc(sizeof(float) * no), *rlse = malloc(sizeof(float) * nl);
    memcpy(rout, t.out, sizeof(float) * no);
    memcpy(rlse, t.lse, sizeof(float) * nl);
    char what[256];
    for (int isa = 0; pkv_isa_label(isa); isa++) {
        if (!pkv_isa_supported(isa)) continue;
        const attn_ops *ops = attn_ops_for(isa, a->q_dtype, a->kv_dtype);
        if (!ops) continue;
        for (int pi = -1; pi < 4; pi++) {
            pkv_workers *w = pi < 0 ? NULL : pools[pi];
            memset(t.out, 0x7f, sizeof(float) * no);
            memset(t.lse, 0x7f, sizeof(float) * nl);
            CHECK_OK(attn_fast_run(a, w, ops));
            snprintf(what, sizeof what, "%s seed %llu %s pool %d", tc->name, (unsigned long long)seed, ops->name, pi);
            compare(what, a, t.out, t.lse, rout, rlse);
        }
    }
    /* the public entry point, dispatching by itself */
    CHECK_OK(pkv_attn(a, pools[1]));
    compare(tc->name, a, t.out, t.lse, rout, rlse);
    free(rout);
    free(rlse);
    free_case(&t);
}

/* ---- the shared vectors, within FlashMLA's tolerance on every path ---- */
/* Their check (tests/kernelkit/compare.py): each out element within 8e-4 abs or
 * 2.01/128 relative, and cos_diff = 1 - 2 sum(xy) / sum(x^2 + y^2) <= 5e-6
 * overall. lse: 1e-3 abs (as the bound above), +inf exactly. */
#define VEC_ATOL 8e-4
#define VEC_RTOL (2.01 / 128)
#define VEC_COS 5e-6

/* dir/name.what.npy of the given dtype and element count (see common/vectors.h). */
static int vec_load(const char *dir, const char *name, const char *what, int dtype, size_t count, npy_array *out,
                    int required) {
    char err[1600];
    const int st = vectors_load(dir, name, what, dtype, count, out, required, err, sizeof err);
    if (st < 0) TEST_FAIL_("%s", err);
    return st;
}

/* Checks out/lse of a fast run against the expected arrays; returns the max abs
 * error of out (for the summary line), or INFINITY after a failure. */
static double vec_check(const char *what, const float *out, const float *lse, const double *eo, const double *el,
                        size_t no, size_t nl) {
    double max_abs = 0, sxy = 0, sxx = 0;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < no; i++) {
        const double x = out[i], y = eo[i], e = fabs(x - y);
        if (!(e <= VEC_ATOL) && !(e <= VEC_RTOL * fabs(y))) { if (!bad++) first = i; }
        if (!(e <= max_abs)) max_abs = isnan(e) ? INFINITY : e;
        sxy += x * y;
        sxx += x * x + y * y;
    }
    const double cos_diff = sxx > 0 ? 1 - 2 * sxy / sxx : 0;
    size_t lbad = 0, lfirst = 0;
    for (size_t i = 0; i < nl; i++) {
        const int ok = isinf(el[i]) ? (double)lse[i] == el[i] : fabs((double)lse[i] - el[i]) <= 1e-3;
        if (!ok && !lbad++) lfirst = i;
    }
    test_checks_++;
    if (bad || lbad || !(cos_diff <= VEC_COS)) {
        TEST_FAIL_("%s: %zu of %zu out elements beyond %.3g abs and %.3g rel (first [%zu] %.9g, want %.9g), "
                   "max abs err %.3g, cos_diff %.3g (max %.3g); %zu of %zu lse beyond 1e-3 (first [%zu] %.9g, want %.9g)",
                   what, bad, no, VEC_ATOL, VEC_RTOL, first, (double)out[first], eo[first], max_abs, cos_diff, VEC_COS,
                   lbad, nl, lfirst, nl ? (double)lse[lfirst] : 0.0, nl ? el[lfirst] : 0.0);
        return INFINITY;
    }
    return max_abs;
}

static void vec_run(const char *dir, const vcase *c, void *ctx) {
    (void)ctx;
    const int npy_q = c->dtype == PKV_F32 ? NPY_F4 : c->dtype == PKV_F16 ? NPY_F2 : NPY_U2;
    const int fp8 = c->kv_dtype == PKV_FP8_MLA656;
    const int npy_kv = fp8 ? NPY_U1 : c->kv_dtype == PKV_F32 ? NPY_F4 : c->kv_dtype == PKV_F16 ? NPY_F2 : NPY_U2;
    const size_t slots = (size_t)c->num_blocks * c->block_size;
    const size_t nq = (size_t)c->b * c->s_q * c->h_q * c->d, nk = fp8 ? slots * PKV_MLA656_BYTES : slots * c->h_kv * c->d,
                 nv = slots * c->h_kv * c->dv, no = (size_t)c->b * c->s_q * c->h_q * c->dv,
                 nl = (size_t)c->b * c->h_q * c->s_q;
    npy_array q, k, v, bt, sl, eo, el, ix, sk;
    memset(&q, 0, sizeof q); memset(&k, 0, sizeof k); memset(&v, 0, sizeof v); memset(&bt, 0, sizeof bt);
    memset(&sl, 0, sizeof sl); memset(&eo, 0, sizeof eo); memset(&el, 0, sizeof el);
    memset(&ix, 0, sizeof ix); memset(&sk, 0, sizeof sk);
    if (vec_load(dir, c->name, "q", npy_q, nq, &q, 1) < 0 || vec_load(dir, c->name, "k_cache", npy_kv, nk, &k, 1) < 0 ||
        (!c->v_shared && vec_load(dir, c->name, "v_cache", npy_kv, nv, &v, 1) < 0) ||
        vec_load(dir, c->name, "block_table", NPY_I4, (size_t)c->b * c->mbps, &bt, 1) < 0 ||
        vec_load(dir, c->name, "cache_seqlens", NPY_I4, (size_t)c->b, &sl, 1) < 0 ||
        vec_load(dir, c->name, "out", NPY_F8, no, &eo, 1) < 0 || vec_load(dir, c->name, "lse", NPY_F8, nl, &el, 1) < 0 ||
        vec_load(dir, c->name, "indices", NPY_I4, 0, &ix, 0) < 0 ||
        vec_load(dir, c->name, "attn_sink", NPY_F4, (size_t)c->h_q, &sk, 0) < 0)
        goto done;
    if (ix.data && (ix.ndim != 3 || ix.shape[0] != c->b || ix.shape[1] != c->s_q)) {
        TEST_FAIL_("%s: indices shape", c->name);
        goto done;
    }
    pkv_attn_args a;
    vectors_geometry(c, &a);
    a.q = q.data; a.k_cache = k.data; a.v_cache = c->v_shared ? NULL : v.data;
    a.block_table = bt.data; a.cache_seqlens = sl.data;
    if (ix.data) {
        a.indices = ix.data;
        a.topk = (int32_t)ix.shape[2];
    }
    a.attn_sink = sk.data;
    float *out = malloc(no * sizeof(float)), *lse = malloc(nl * sizeof(float));
    a.out = out; a.lse = lse;
    char what[320];
    printf("  %-18s", c->name);
    for (int isa = 0; pkv_isa_label(isa); isa++) {
        if (!pkv_isa_supported(isa)) continue;
        const attn_ops *ops = attn_ops_for(isa, a.q_dtype, a.kv_dtype);
        if (!ops) continue;
        double worst = 0;
        for (int pi = -1; pi < 2; pi += 2) { /* no pool, and 2 threads (split KV) */
            memset(out, 0x7f, no * sizeof(float));
            memset(lse, 0x7f, nl * sizeof(float));
            CHECK_OK(attn_fast_run(&a, pi < 0 ? NULL : pools[pi], ops));
            snprintf(what, sizeof what, "vector %s, %s kernels (%s), pool %d", c->name, pkv_isa_label(isa), ops->name, pi);
            const double e = vec_check(what, out, lse, eo.data, el.data, no, nl);
            if (!(e <= worst)) worst = e;
        }
        if (isinf(worst)) printf(" %s FAIL", pkv_isa_label(isa));
        else printf(" %s %.2g", pkv_isa_label(isa), worst);
    }
    printf("\n");
    free(out);
    free(lse);
done:
    npy_free(&q); npy_free(&k); npy_free(&v); npy_free(&bt); npy_free(&sl); npy_free(&eo); npy_free(&el);
    npy_free(&ix); npy_free(&sk);
}

static void test_vectors(void) {
    char err[1300];
    printf("vectors (tests/vectors, then the shared ones when present), max abs err of out per ISA level:\n");
    if (vectors_for_each("test_attn_fast", vec_run, NULL, err, sizeof err) < 0) TEST_FAIL_("%s", err);
}

static const tcase shared_shapes[] = {
    /* the shapes of the shared vector files (vectors/cases.txt) */
    {"mla_decode_bf16", 3, 1, 16, 1, 576, 512, 64, 0, PKV_BF16, PKV_BF16, 1, 150, 0, 0, 0, 0, 0, 0},
    {"mla_mtp_causal", 2, 2, 16, 1, 576, 512, 64, 1, PKV_BF16, PKV_BF16, 1, 200, 0, 0, 0, 0, 0, 0},
    {"mla_peaky_f32", 2, 1, 8, 1, 576, 512, 64, 0, PKV_F32, PKV_F32, 1, 150, 0, 0, 0, 0, 0, 0},
    {"gqa_sepv_f32", 2, 1, 8, 2, 64, 64, 16, 0, PKV_F32, PKV_F32, 0, 40, 0, 0, 0, 0, 0, 0},
    {"mha_f16_empty", 3, 1, 4, 4, 32, 32, 4, 0, PKV_F16, PKV_F16, 0, 10, 0, 0, 0, 1, 0, 0},
    {"block1_causal_f32", 2, 3, 4, 2, 16, 8, 1, 1, PKV_F32, PKV_F32, 0, 6, 0, 0, 0, 0, 0, 0},
    {"odd_block_bf16", 2, 1, 6, 3, 48, 48, 24, 0, PKV_BF16, PKV_BF16, 0, 60, 0, 0, 0, 0, 0, 0},
    /* the benchmark's shapes, shortened */
    {"mla_h128", 1, 1, 128, 1, 576, 512, 64, 0, PKV_BF16, PKV_BF16, 1, 700, 0, 0, 0, 0, 0, 0},
    {"mla_h64_mtp", 2, 2, 64, 1, 576, 512, 64, 1, PKV_BF16, PKV_BF16, 1, 300, 0, 0, 0, 0, 0, 0},
    {"mla_h16_b16", 3, 1, 16, 1, 576, 512, 16, 0, PKV_BF16, PKV_BF16, 1, 300, 0, 0, 0, 0, 0, 0},
    {"gqa_f16_128", 2, 1, 32, 8, 128, 128, 16, 0, PKV_F16, PKV_F16, 0, 500, 0, 0, 0, 0, 0, 0},
    {"gqa_f16_128_b64", 2, 1, 32, 8, 128, 128, 64, 0, PKV_F16, PKV_F16, 0, 300, 0, 0, 0, 0, 0, 0},
    /* bf16 with many heads per KV head: tile kernels (AMX) with output rows not
     * equally spaced (s_q > 1, h_kv > 1) and a dv that is no multiple of 16 */
    {"gqa_bf16_h16_mtp", 2, 2, 32, 2, 128, 128, 16, 1, PKV_BF16, PKV_BF16, 0, 200, 0, 0, 0, 0, 0, 0},
    {"gqa_bf16_dv40", 2, 1, 34, 2, 96, 40, 64, 0, PKV_BF16, PKV_BF16, 0, 150, 0, 0, 1, 0, 0, 0},
    /* long sequences: more split-KV chunks than workers, taken dynamically */
    {"long_split_f32", 1, 1, 16, 1, 16, 16, 64, 0, PKV_F32, PKV_F32, 0, 20000, 0, 0, 0, 0, 0, 0},
    {"long_split_bf16_causal", 2, 3, 24, 2, 32, 32, 16, 1, PKV_BF16, PKV_BF16, 0, 9000, 0, 0, 1, 0, 0, 0},
    /* FP8 MLA rows */
    {"mla_fp8", 2, 1, 16, 1, 576, 512, 64, 0, PKV_BF16, PKV_FP8_MLA656, 1, 200, 0, 0, 0, 0, 0, 0},
    {"mla_fp8_h128", 1, 1, 128, 1, 576, 512, 64, 0, PKV_BF16, PKV_FP8_MLA656, 1, 300, 0, 0, 0, 0, 0, 0},
    {"mla_fp8_qf32_mtp", 2, 2, 16, 1, 576, 512, 16, 1, PKV_F32, PKV_FP8_MLA656, 1, 150, 0, 0, 1, 0, 0, 0},
    /* sparse (V3.2 style), sink */
    {"mla_sparse", 2, 2, 16, 1, 576, 512, 64, 0, PKV_BF16, PKV_BF16, 1, 300, 1, 100, 1, 0, 0, 0},
    {"gqa_sparse_f32", 2, 1, 8, 2, 64, 48, 24, 0, PKV_F32, PKV_F32, 0, 200, 1, 70, 0, 1, 0, 0},
};

/* Sliding windows: released blocks NaN behind -1 or garbage entries; windows of
 * 1, below and past a tile, past the length; decode, MTP and longer causal runs
 * whose rows start their windows at different keys of one tile. */
static const tcase window_shapes[] = {
    {"win_mla_decode_bf16", 3, 1, 16, 1, 576, 512, 64, 0, PKV_BF16, PKV_BF16, 1, 300, 0, 0, 0, 0, 100, 200},
    {"win_mla_w1_b16", 2, 1, 16, 1, 576, 512, 16, 1, PKV_BF16, PKV_BF16, 1, 200, 0, 0, 0, 0, 1, 100},
    {"win_mla_mtp_causal", 2, 2, 16, 1, 576, 512, 64, 1, PKV_BF16, PKV_BF16, 1, 300, 0, 0, 0, 0, 70, 150},
    {"win_mla_h128_split", 1, 1, 128, 1, 576, 512, 64, 0, PKV_BF16, PKV_BF16, 1, 3000, 0, 0, 0, 0, 1500, 2000},
    {"win_mla_f32_sink", 2, 1, 8, 1, 576, 512, 16, 0, PKV_F32, PKV_F32, 1, 300, 0, 0, 1, 0, 129, 150},
    {"win_mla_fp8", 2, 1, 16, 1, 576, 512, 64, 0, PKV_BF16, PKV_FP8_MLA656, 1, 400, 0, 0, 0, 0, 130, 200},
    {"win_mla_fp8_qf32_mtp", 2, 2, 16, 1, 576, 512, 16, 1, PKV_F32, PKV_FP8_MLA656, 1, 200, 0, 0, 0, 0, 50, 100},
    {"win_gqa_f16_128", 3, 1, 32, 8, 128, 128, 16, 0, PKV_F16, PKV_F16, 0, 400, 0, 0, 0, 0, 64, 100},
    {"win_gqa_f32_b1_causal", 2, 3, 8, 2, 64, 64, 1, 1, PKV_F32, PKV_F32, 0, 100, 0, 0, 0, 0, 33, 40},
    {"win_gqa_bf16_h16_mtp", 2, 2, 32, 2, 128, 128, 16, 1, PKV_BF16, PKV_BF16, 0, 300, 0, 0, 0, 0, 90, 100},
    {"win_gqa_bf16_s5", 3, 5, 4, 2, 48, 40, 16, 1, PKV_BF16, PKV_BF16, 0, 120, 0, 0, 0, 1, 7, 0},
    {"win_rows_causal_f16", 2, 3, 4, 2, 64, 64, 16, 1, PKV_F16, PKV_F16, 0, 150, 0, 0, 0, 0, 5, 80},
    {"win_prefill_f16", 2, 40, 4, 2, 32, 32, 16, 1, PKV_F16, PKV_F16, 0, 100, 0, 0, 0, 0, 20, 0},
    {"win_prefill_mla", 1, 24, 8, 1, 576, 512, 64, 1, PKV_BF16, PKV_BF16, 1, 200, 0, 0, 0, 0, 50, 100},
    {"win_long_split_f32", 1, 1, 16, 1, 16, 16, 64, 0, PKV_F32, PKV_F32, 0, 20000, 0, 0, 0, 0, 3000, 10000},
    {"win_past_len", 3, 2, 6, 3, 40, 24, 24, 1, PKV_F16, PKV_BF16, 0, 80, 0, 0, 0, 1, 50000, 0},
};

static const int32_t dts[3] = {PKV_F32, PKV_F16, PKV_BF16};

/* A random case of moderate size. */
static void random_case(test_rng *r, tcase *tc) {
    static const int32_t bss[] = {1, 16, 24, 64, 7};
    memset(tc, 0, sizeof *tc);
    tc->name = "random";
    tc->batch = 1 + (int32_t)test_below(r, 4);
    tc->s_q = 1 + (int32_t)test_below(r, 3);
    tc->h_kv = 1 + (int32_t)test_below(r, 3);
    tc->h_q = tc->h_kv * (1 + (int32_t)test_below(r, 6));
    tc->block_size = bss[test_below(r, 5)];
    tc->causal = (int32_t)test_below(r, 2);
    tc->q_dtype = dts[test_below(r, 3)];
    tc->kv_dtype = dts[test_below(r, 3)];
    tc->v_shared = (int)test_below(r, 2);
    tc->d = 1 + (int32_t)test_below(r, 140);
    tc->dv = tc->v_shared ? 1 + (int32_t)test_below(r, (uint32_t)tc->d) : 1 + (int32_t)test_below(r, 140);
    tc->mean_len = 1 + (int32_t)test_below(r, 300);
    tc->sparse = test_below(r, 5) == 0;
    if (tc->sparse) { tc->causal = 0; tc->topk = 1 + (int32_t)test_below(r, 150); }
    tc->sink = test_below(r, 4) == 0;
    tc->empty_some = test_below(r, 4) == 0;
    if (test_below(r, 6) == 0) { /* MLA geometry, sometimes FP8 */
        tc->h_kv = 1; tc->d = 576; tc->dv = 512; tc->v_shared = 1;
        tc->h_q = 1 + (int32_t)test_below(r, 140);
        if (test_below(r, 2)) tc->kv_dtype = PKV_FP8_MLA656;
    }
    if (!tc->sparse && test_below(r, 3) == 0) /* a sliding window, often shorter than L */
        tc->window = 1 + (int32_t)test_below(r, (uint32_t)tc->mean_len + 64);
}

/* Same status as the oracle on malformed arguments. */
static void test_validation(void) {
    tcase tc = shared_shapes[3];
    tdata t;
    make_case(&tc, 5, &t);
    pkv_attn_args bad = t.a;
    CHECK_STATUS(pkv_attn(NULL, NULL), PKV_ERR_NULL);
    bad.h_q = 7; CHECK_STATUS(pkv_attn(&bad, pools[1]), pkv_attn_reference(&bad)); bad = t.a;
    bad.q_dtype = 9; CHECK_STATUS(pkv_attn(&bad, NULL), pkv_attn_reference(&bad)); bad = t.a;
    bad.kv_dtype = PKV_FP8_MLA656; CHECK_STATUS(pkv_attn(&bad, NULL), PKV_ERR_DTYPE); bad = t.a;
    int32_t lens[2] = {t.lens[0], 100000};
    bad.cache_seqlens = lens; CHECK_STATUS(pkv_attn(&bad, pools[1]), PKV_ERR_SEQLEN); bad = t.a;
    int32_t saved = t.table[0];
    t.table[0] = -1; CHECK_STATUS(pkv_attn(&t.a, pools[1]), PKV_ERR_BLOCK_ID); t.table[0] = saved;
    bad.out = NULL; CHECK_STATUS(pkv_attn(&bad, NULL), PKV_ERR_NULL); bad = t.a;
    bad.softmax_scale = NAN; CHECK_STATUS(pkv_attn(&bad, NULL), PKV_ERR_INVALID); bad = t.a;
    bad.window = -1; CHECK_STATUS(pkv_attn(&bad, pools[1]), PKV_ERR_INVALID); bad = t.a;
    bad.reserved = 1; CHECK_STATUS(pkv_attn(&bad, NULL), PKV_ERR_INVALID); bad = t.a;
    int32_t ix[2] = {0, -1};
    bad.indices = ix; bad.topk = 1; bad.window = 4;
    CHECK_STATUS(pkv_attn(&bad, NULL), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_attn_reference(&bad), PKV_ERR_INVALID); bad = t.a;
    /* a released entry before every window is not read; one inside a window is refused */
    if (t.lens[0] > 16) {
        saved = t.table[0];
        t.table[0] = -1;
        bad.window = t.lens[0] - 16;
        CHECK_STATUS(pkv_attn(&bad, pools[1]), PKV_OK);
        bad.window = t.lens[0];
        CHECK_STATUS(pkv_attn(&bad, pools[1]), PKV_ERR_BLOCK_ID);
        t.table[0] = saved;
        bad = t.a;
    }
    free_case(&t);
}

/* ---- concurrency: several threads, one shared pool or one pool each ---- */
typedef struct conc_arg {
    pkv_attn_args a;
    pkv_workers *w;
    int iters, status;
} conc_arg;

static void *conc_main(void *p) {
    conc_arg *c = (conc_arg *)p;
    for (int i = 0; i < c->iters; i++) {
        int st = pkv_attn(&c->a, c->w);
        if (st) c->status = st;
    }
    return NULL;
}

static void test_concurrency(void) {
    enum { NT = 4 };
    tcase tc = shared_shapes[1];
    tc.batch = 3;
    tdata t;
    make_case(&tc, 77, &t);
    const size_t no = out_count(&t.a), nl = lse_count(&t.a);
    CHECK_OK(pkv_attn(&t.a, pools[1]));
    float *sout = malloc(sizeof(float) * no), *slse = malloc(sizeof(float) * nl);
    memcpy(sout, t.out, sizeof(float) * no);
    memcpy(slse, t.lse, sizeof(float) * nl);
    for (int mode = 0; mode < 2; mode++) { /* 0: one shared 2-thread pool, 1: a pool each */
        conc_arg ca[NT];
        pthread_t th[NT];
        float *outs[NT], *lses[NT];
        for (int i = 0; i < NT; i++) {
            outs[i] = malloc(sizeof(float) * no);
            lses[i] = malloc(sizeof(float) * nl);
            ca[i].a = t.a;
            ca[i].a.out = outs[i];
            ca[i].a.lse = lses[i];
            ca[i].iters = (int)test_scaled(6);
            ca[i].status = 0;
            ca[i].w = pools[1];
            if (mode == 1) CHECK_OK(pkv_workers_create(2, &ca[i].w));
            CHECK(pthread_create(&th[i], NULL, conc_main, &ca[i]) == 0);
        }
        for (int i = 0; i < NT; i++) {
            pthread_join(th[i], NULL);
            CHECK_OK(ca[i].status);
            CHECK(memcmp(outs[i], sout, sizeof(float) * no) == 0);
            CHECK(memcmp(lses[i], slse, sizeof(float) * nl) == 0);
            if (mode == 1) pkv_workers_destroy(ca[i].w);
            free(outs[i]);
            free(lses[i]);
        }
    }
    free(sout);
    free(slse);
    free_case(&t);
}

/* A bigger shape grows a pool's scratch once; the pool keeps working afterwards. */
static void test_pool_reuse(void) {
    pkv_workers *w;
    CHECK_OK(pkv_workers_create(2, &w));
    for (int i = 0; i < 3; i++) {
        tcase tc = shared_shapes[i == 1 ? 0 : 3];
        tdata t;
        make_case(&tc, 100 + (uint64_t)i, &t);
        const size_t no = out_count(&t.a), nl = lse_count(&t.a);
        CHECK_OK(pkv_attn_reference(&t.a));
        float *rout = malloc(sizeof(float) * no), *rlse = malloc(sizeof(float) * nl);
        memcpy(rout, t.out, sizeof(float) * no);
        memcpy(rlse, t.lse, sizeof(float) * nl);
        CHECK_OK(pkv_attn(&t.a, w));
        compare("pool reuse", &t.a, t.out, t.lse, rout, rlse);
        free(rout);
        free(rlse);
        free_case(&t);
    }
    pkv_workers_destroy(w);
    pkv_workers_destroy(NULL);
    CHECK_STATUS(pkv_workers_create(1, NULL), PKV_ERR_NULL);
}

static void test_isa_env(void) {
    const char *env = getenv("PKV_ISA");
    char why[200];
    const int st = pkv_isa_status(why, sizeof why);
    printf("attention ISA: %s (PKV_ISA=%s%s%s); kernels: bf16/bf16 %s, f16/f16 %s, f32/f32 %s, bf16/fp8 %s\n",
           pkv_isa_name(), env ? env : "", st ? ": " : "", why, pkv_attn_kernel_name(PKV_BF16, PKV_BF16),
           pkv_attn_kernel_name(PKV_F16, PKV_F16), pkv_attn_kernel_name(PKV_F32, PKV_F32),
           pkv_attn_kernel_name(PKV_BF16, PKV_FP8_MLA656));
    CHECK(pkv_isa_supported(PKV_ISA_SCALAR));
    CHECK(pkv_isa_supported(pkv_isa_active()));
    int best = 0;
    for (int i = 0; pkv_isa_label(i); i++)
        if (pkv_isa_supported(i)) best = i;
    int want = best, known = 0, status = PKV_OK;
    if (env && *env)
        for (int i = 0; pkv_isa_label(i); i++)
            if (strcmp(env, pkv_isa_label(i)) == 0) { /* the best supported level not above the request */
                known = 1;
                want = i;
                while (want > 0 && !pkv_isa_supported(want)) want--;
                if (want != i) status = PKV_ERR_INVALID;
            }
    if (env && *env && !known) status = PKV_ERR_INVALID; /* reported, not silently ignored */
    CHECK_INT(pkv_isa_active(), want);
    CHECK_INT(st, status);
    if (status != PKV_OK) CHECK(strstr(why, env) != NULL && strstr(why, pkv_isa_name()) != NULL);
    else CHECK_INT((int)strlen(why), 0);
    /* the kernels follow the level */
    CHECK(attn_ops_best(PKV_F32, PKV_F32) == attn_ops_for(want, PKV_F32, PKV_F32));
    CHECK(pkv_attn_kernel_name(PKV_F32, PKV_FP8_MLA656) != NULL);
    CHECK(pkv_attn_kernel_name(PKV_FP8_MLA656, PKV_F32) == NULL);
    CHECK(pkv_attn_kernel_name(PKV_F32, 7) == NULL);
}

/* PKV_ISA is read once per process: check each value in a fresh process. */
static void test_isa_override(const char *self) {
    static const char *const values[] = {"scalar", "avx2", "avx512", "amx", "bogus"};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("PKV_ISA", values[i], 1);
            execl(self, self, "--isa-only", (char *)NULL);
            _exit(127);
        }
        int st = 0;
        CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--isa-only") == 0) {
        test_isa_env();
        return test_report("test_attn_fast --isa-only");
    }
    CHECK_OK(pkv_workers_create(1, &pools[0]));
    CHECK_OK(pkv_workers_create(2, &pools[1]));
    CHECK_OK(pkv_workers_create(3, &pools[2]));
    CHECK_OK(pkv_workers_create(0, &pools[3]));
    test_isa_env();
    test_validation();
    test_vectors();
    for (size_t i = 0; i < sizeof shared_shapes / sizeof shared_shapes[0]; i++) {
        tcase tc = shared_shapes[i];
        if (test_scaled(100) < 50 && tc.mean_len > 100) tc.mean_len /= 4;
        run_case(&tc, 1000 + i);
    }
    for (size_t i = 0; i < sizeof window_shapes / sizeof window_shapes[0]; i++) {
        tcase tc = window_shapes[i];
        if (test_scaled(100) < 50 && tc.mean_len > 1000) { tc.mean_len /= 4; tc.min_len /= 4; }
        run_case(&tc, 3000 + i);
    }
    test_rng r = {42};
    const long n = test_scaled(60);
    for (long i = 0; i < n; i++) {
        tcase tc;
        random_case(&r, &tc);
        run_case(&tc, 2000 + (uint64_t)i);
    }
    test_concurrency();
    test_pool_reuse();
    for (int i = 0; i < 4; i++) pkv_workers_destroy(pools[i]);
    if (!getenv("PKV_ISA")) test_isa_override("/proc/self/exe");
    return test_report("test_attn_fast");
}
