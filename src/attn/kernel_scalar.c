/* Portable kernels: plain C on float32, the semantics every SIMD path matches.
 * Layouts: qp [m][dpad] f32; kt [ATTN_TILE][dpad] f32 (rows, not transposed);
 * vt [ATTN_TILE][dvpad] f32; p [m][ATTN_TILE] f32. */
#include <math.h>
#include <string.h>

#include "fp8.h"
#include "kernels.h"

/* Row of n values of dtype (F32/F16/BF16) as float32. */
static void to_f32(const void *row, int dtype, int32_t n, float *dst) {
    for (int32_t i = 0; i < n; i++) dst[i] = pkv_load_elem(row, dtype, (size_t)i);
}

/* One FP8_MLA656 token row dequantized to float32 (first n of 576 values). */
static void fp8_row_f32(const uint8_t *row, int32_t n, float *dst) {
    float sc[4];
    memcpy(sc, row + PKV_MLA656_SCALES, sizeof sc); /* little-endian hosts only (x86) */
    for (int32_t i = 0; i < n && i < PKV_MLA656_LATENT; i++) dst[i] = fp8_e4m3_to_f32(row[i]) * sc[i / PKV_MLA656_TILE];
    for (int32_t i = PKV_MLA656_LATENT; i < n; i++) {
        uint16_t h;
        memcpy(&h, row + PKV_MLA656_ROPE + 2 * (i - PKV_MLA656_LATENT), 2);
        dst[i] = pkv_bf16_to_f32(h);
    }
}

static void prep_q(const attn_geom *g, const void *const *qrows, int m, void *qp) {
    float *q = (float *)qp;
    for (int i = 0; i < m; i++) {
        float *dst = q + (size_t)i * (size_t)g->dpad;
        to_f32(qrows[i], g->q_dtype, g->d, dst);
        for (int32_t c = g->d; c < g->dpad; c++) dst[c] = 0.0f;
    }
}

static void load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows, int n,
                      void *kt, void *vt) {
    float *k = (float *)kt, *v = (float *)vt;
    for (int j = 0; j < ATTN_TILE; j++) {
        float *kd = k + (size_t)j * (size_t)g->dpad, *vd = v + (size_t)j * (size_t)g->dvpad;
        if (j >= n) {
            memset(kd, 0, (size_t)g->dpad * sizeof(float));
            memset(vd, 0, (size_t)g->dvpad * sizeof(float));
            continue;
        }
        if (g->kv_dtype == PKV_FP8_MLA656) {
            fp8_row_f32((const uint8_t *)krows[j], g->d, kd);
            fp8_row_f32((const uint8_t *)vrows[j], g->dv, vd);
        } else {
            to_f32(krows[j], g->kv_dtype, g->d, kd);
            to_f32(vrows[j], g->kv_dtype, g->dv, vd);
        }
        for (int32_t c = g->d; c < g->dpad; c++) kd[c] = 0.0f;
        for (int32_t c = g->dv; c < g->dvpad; c++) vd[c] = 0.0f;
    }
}

static void qk(const attn_geom *g, const void *qp, int m, int n, const void *kt, float *s) {
    (void)n;
    const float *q = (const float *)qp, *k = (const float *)kt;
    for (int i = 0; i < m; i++) {
        const float *qi = q + (size_t)i * (size_t)g->dpad;
        for (int j = 0; j < ATTN_TILE; j++) {
            const float *kj = k + (size_t)j * (size_t)g->dpad;
            float acc = 0.0f;
            for (int32_t c = 0; c < g->d; c++) acc += qi[c] * kj[c];
            s[(size_t)i * ATTN_TILE + (size_t)j] = acc;
        }
    }
}

static void softmax(const attn_geom *g, const float *s, int m, const int32_t *nfirst, const int32_t *nvalid,
                    float *mrun, float *lrun, float *alpha, void *pv) {
    float *p = (float *)pv;
    for (int i = 0; i < m; i++) {
        const float *si = s + (size_t)i * ATTN_TILE;
        float *pi = p + (size_t)i * ATTN_TILE;
        const int n0 = nfirst[i], nv = nvalid[i];
        float mx = mrun[i];
        int bad = 0;
        for (int j = n0; j < nv; j++) {
            const float x = si[j] * g->scale_log2;
            bad |= !isfinite(x);
            if (x > mx) mx = x;
        }
        if (bad) lrun[i] = NAN; /* the driver recomputes this row (kernels.h) */
        if (mx == -INFINITY) { /* nothing seen yet: keep the (zero) accumulator */
            alpha[i] = 1.0f;
            for (int j = 0; j < ATTN_TILE; j++) pi[j] = 0.0f;
            continue;
        }
        alpha[i] = exp2f(mrun[i] - mx);
        float sum = 0.0f;
        for (int j = 0; j < ATTN_TILE; j++) {
            const float e = j >= n0 && j < nv ? exp2f(si[j] * g->scale_log2 - mx) : 0.0f;
            pi[j] = e;
            sum += e;
        }
        lrun[i] = lrun[i] * alpha[i] + sum;
        mrun[i] = mx;
    }
}

static void pv(const attn_geom *g, const void *pp, int m, int n, const void *vt, float *const *o,
               const float *alpha) {
    const float *p = (const float *)pp, *v = (const float *)vt;
    for (int i = 0; i < m; i++) {
        float *oi = o[i];
        const float a = alpha[i];
        for (int32_t c = 0; c < g->dv; c++) oi[c] *= a;
        for (int j = 0; j < n; j++) {
            const float w = p[(size_t)i * ATTN_TILE + (size_t)j];
            const float *vj = v + (size_t)j * (size_t)g->dvpad;
            for (int32_t c = 0; c < g->dv; c++) oi[c] += w * vj[c];
        }
    }
}

static const attn_ops scalar_ops = {"scalar-f32", 1, 4, 1, prep_q, load_tile, qk, softmax, pv, NULL, 0, 0};

const attn_ops *attn_ops_scalar(int q_dtype, int kv_dtype) {
    (void)q_dtype;
    (void)kv_dtype;
    return &scalar_ops;
}
