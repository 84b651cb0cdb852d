/* AVX2 + FMA + F16C kernels (compiled with ISA_AVX2 flags): one float32 family
 * for every dtype pair. Scores run "lanes over d" straight from the cache rows,
 * converted in registers (F16C for f16, a shift for bf16, a table-free e4m3
 * expansion for FP8 rows), for blocks of 4 query rows, and are summed 8 keys at
 * a time by a transposing add tree; P V reads the V rows directly for blocks of
 * 4 rows x 32 output dims. kt / vt hold the tile's row pointers; qp is f32. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

#define AI static inline __attribute__((always_inline))
#define RB 4
#define UNROLL _Pragma("GCC unroll 16")

/* 8 values [c, c+8) of a row of dtype as float32, lanes >= n zero. */
AI __m256 load8(const void *row, int dt, int32_t c, int32_t n) {
    if (n >= 8) {
        if (dt == PKV_F32) return _mm256_loadu_ps((const float *)row + c);
        const __m128i h = _mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)row + c));
        if (dt == PKV_F16) return _mm256_cvtph_ps(h);
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int32_t i = 0; i < n; i++) tmp[i] = pkv_load_elem(row, dt, (size_t)(c + i));
    return _mm256_loadu_ps(tmp);
}

/* 8 dims [c, c+8) of an FP8_MLA656 row, dequantized (c < 576, multiple of 8). */
AI __m256 load8_fp8(const uint8_t *row, int32_t c) {
    if (c >= PKV_MLA656_LATENT) {
        const __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(row + PKV_MLA656_ROPE + 2 * (c - PKV_MLA656_LATENT)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    float sc;
    memcpy(&sc, row + PKV_MLA656_SCALES + 4 * (c / 128), sizeof sc);
    const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)(row + c)));
    const __m128i sign = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8);
    const __m128i m7 = _mm_and_si128(w, _mm_set1_epi16(0x7f));
    /* e4m3 bits shifted into f16 bits: the value * 2^-8; the NaN codes give f16 NaN */
    const __m128i mag = _mm_blendv_epi8(_mm_slli_epi16(m7, 7), _mm_set1_epi16(0x7e00),
                                        _mm_cmpeq_epi16(m7, _mm_set1_epi16(0x7f)));
    return _mm256_mul_ps(_mm256_cvtph_ps(_mm_or_si128(sign, mag)), _mm256_set1_ps(sc * 256.0f));
}

AI __m256 loadkv(const void *row, int dt, int32_t c, int32_t n) {
    return dt == PKV_FP8_MLA656 ? load8_fp8((const uint8_t *)row, c) : load8(row, dt, c, n);
}

static void prep_q(const attn_geom *g, const void *const *qrows, int m, void *qp) {
    float *q = (float *)qp;
    for (int i = 0; i < m; i++)
        for (int32_t c = 0; c < g->dpad; c += 8)
            _mm256_storeu_ps(q + (size_t)i * (size_t)g->dpad + c, load8(qrows[i], g->q_dtype, c, g->d - c));
}

static void load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows, int n, void *ktv,
                      void *vtv) {
    (void)g;
    memcpy(ktv, krows, (size_t)n * sizeof(void *));
    memcpy(vtv, vrows, (size_t)n * sizeof(void *));
}

/* out[j] = sum of the lanes of v[j], j < 8. */
AI __m256 hsum8(const __m256 v[8]) {
    const __m256 a0 = _mm256_hadd_ps(v[0], v[1]), a1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 a2 = _mm256_hadd_ps(v[4], v[5]), a3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 b0 = _mm256_hadd_ps(a0, a1), b1 = _mm256_hadd_ps(a2, a3);
    /* b0 = [v0 v1 v2 v3 | v0 v1 v2 v3] halves, b1 likewise for v4..v7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

AI void qk_t(const attn_geom *g, const float *q, const void *const *kr, int n, float *s, int dt, int R) {
    const int32_t ldq = g->dpad, d = g->d;
    __m256 part[RB][8];
    for (int j0 = 0; j0 < ATTN_TILE; j0 += 8) {
        for (int jj = 0; jj < 8; jj++) {
            const int j = j0 + jj;
            __m256 acc[RB];
            UNROLL for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
            if (j < n)
                for (int32_t c = 0; c < d; c += 8) {
                    const __m256 kv = loadkv(kr[j], dt, c, d - c);
                    UNROLL for (int r = 0; r < R; r++)
                        acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)r * (size_t)ldq + c), kv, acc[r]);
                }
            UNROLL for (int r = 0; r < R; r++) part[r][jj] = acc[r];
        }
        UNROLL for (int r = 0; r < R; r++) _mm256_storeu_ps(s + (size_t)r * ATTN_TILE + j0, hsum8(part[r]));
    }
}

AI void qk_dt(const attn_geom *g, const float *q, int m, const void *const *kr, int n, float *s, int dt) {
    for (int i = 0; i < m; i += RB) {
        const float *qi = q + (size_t)i * (size_t)g->dpad;
        float *si = s + (size_t)i * ATTN_TILE;
        switch (m - i >= RB ? RB : m - i) {
        case 4: qk_t(g, qi, kr, n, si, dt, 4); break;
        case 3: qk_t(g, qi, kr, n, si, dt, 3); break;
        case 2: qk_t(g, qi, kr, n, si, dt, 2); break;
        default: qk_t(g, qi, kr, n, si, dt, 1); break;
        }
    }
}

static void qk(const attn_geom *g, const void *qp, int m, int n, const void *ktv, float *s) {
    const void *const *kr = (const void *const *)ktv;
    const float *q = (const float *)qp;
    switch (g->kv_dtype) {
    case PKV_F32: qk_dt(g, q, m, kr, n, s, PKV_F32); break;
    case PKV_F16: qk_dt(g, q, m, kr, n, s, PKV_F16); break;
    case PKV_BF16: qk_dt(g, q, m, kr, n, s, PKV_BF16); break;
    default: qk_dt(g, q, m, kr, n, s, PKV_FP8_MLA656); break;
    }
}

/* exp2 for x <= 0 (relative error ~2e-7). */
AI __m256 exp2_ps(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-126.0f));
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(1.5403530e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504109e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022651e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AI float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

AI float hadd8(__m256 v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static void softmax(const attn_geom *g, const float *s, int m, const int32_t *nfirst, const int32_t *nvalid,
                    float *mrun, float *lrun, float *alpha, void *pv) {
    float *p = (float *)pv;
    const __m256 sc = _mm256_set1_ps(g->scale_log2), ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int i = 0; i < m; i++) {
        const float *si = s + (size_t)i * ATTN_TILE;
        float *pi = p + (size_t)i * ATTN_TILE;
        const int n0 = nfirst[i], nv = nvalid[i];
        __m256 x[8], k[8];
        __m256 mx = ninf, bad = _mm256_setzero_ps();
        UNROLL for (int v = 0; v < 8; v++) {
            /* lanes with n0 <= 8v + lane < nv */
            const __m256i in = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(n0 - 8 * v), lane),
                                                   _mm256_cmpgt_epi32(_mm256_set1_epi32(nv - 8 * v), lane));
            k[v] = _mm256_castsi256_ps(in);
            const __m256 raw = _mm256_mul_ps(_mm256_loadu_ps(si + 8 * v), sc);
            /* x - x is NaN exactly when x is NaN or +-inf */
            bad = _mm256_or_ps(bad, _mm256_and_ps(k[v], _mm256_cmp_ps(_mm256_sub_ps(raw, raw), raw, _CMP_UNORD_Q)));
            x[v] = _mm256_blendv_ps(ninf, raw, k[v]);
            mx = _mm256_max_ps(mx, x[v]);
        }
        float mnew = hmax8(mx);
        if (mrun[i] > mnew) mnew = mrun[i];
        if (_mm256_movemask_ps(bad)) lrun[i] = NAN; /* the driver recomputes this row (kernels.h) */
        if (mnew == -INFINITY) {
            alpha[i] = 1.0f;
            UNROLL for (int v = 0; v < 8; v++) _mm256_storeu_ps(pi + 8 * v, _mm256_setzero_ps());
            continue;
        }
        alpha[i] = exp2f(mrun[i] - mnew);
        const __m256 mb = _mm256_set1_ps(mnew);
        __m256 sum = _mm256_setzero_ps();
        UNROLL for (int v = 0; v < 8; v++) {
            const __m256 e = _mm256_and_ps(exp2_ps(_mm256_sub_ps(x[v], mb)), k[v]);
            _mm256_storeu_ps(pi + 8 * v, e);
            sum = _mm256_add_ps(sum, e);
        }
        lrun[i] = lrun[i] * alpha[i] + hadd8(sum);
        mrun[i] = mnew;
    }
}

/* o[r][c, c + 8 NV) = alpha * o + P V for R rows; dims past dv untouched. */
AI void pv_block(const float *p, int n, const void *const *vr, float *const *o, const float *alpha, int32_t c,
                 int32_t dv, int dt, int R, int NV) {
    __m256 acc[RB][4];
    const int full = c + 8 * NV <= dv;
    UNROLL for (int r = 0; r < R; r++) {
        const __m256 a = _mm256_set1_ps(alpha[r]);
        UNROLL for (int v = 0; v < NV; v++) {
            __m256 ov;
            if (full) {
                ov = _mm256_loadu_ps(o[r] + c + 8 * v);
            } else {
                float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (int32_t i = 0; i < 8 && c + 8 * v + i < dv; i++) tmp[i] = o[r][c + 8 * v + i];
                ov = _mm256_loadu_ps(tmp);
            }
            acc[r][v] = _mm256_mul_ps(a, ov);
        }
    }
    for (int j = 0; j < n; j++) {
        __m256 vv[4];
        UNROLL for (int v = 0; v < NV; v++) vv[v] = loadkv(vr[j], dt, c + 8 * v, dv - c - 8 * v);
        UNROLL for (int r = 0; r < R; r++) {
            const __m256 b = _mm256_set1_ps(p[(size_t)r * ATTN_TILE + (size_t)j]);
            UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm256_fmadd_ps(b, vv[v], acc[r][v]);
        }
    }
    UNROLL for (int r = 0; r < R; r++)
        UNROLL for (int v = 0; v < NV; v++) {
            if (full) {
                _mm256_storeu_ps(o[r] + c + 8 * v, acc[r][v]);
            } else {
                float tmp[8];
                _mm256_storeu_ps(tmp, acc[r][v]);
                for (int32_t i = 0; i < 8 && c + 8 * v + i < dv; i++) o[r][c + 8 * v + i] = tmp[i];
            }
        }
}

AI void pv_rows(const float *p, int n, const void *const *vr, float *const *o, const float *alpha, int32_t dv,
                int dt, int R) {
    int32_t c = 0;
    for (; c + 32 <= dv; c += 32) pv_block(p, n, vr, o, alpha, c, dv, dt, R, 4);
    for (; c < dv; c += 8) pv_block(p, n, vr, o, alpha, c, dv, dt, R, 1);
}

AI void pv_dt(const float *p, int m, int n, const void *const *vr, float *const *o, const float *alpha, int32_t dv,
              int dt) {
    for (int i = 0; i < m; i += RB) {
        const float *pi = p + (size_t)i * ATTN_TILE;
        switch (m - i >= RB ? RB : m - i) {
        case 4: pv_rows(pi, n, vr, o + i, alpha + i, dv, dt, 4); break;
        case 3: pv_rows(pi, n, vr, o + i, alpha + i, dv, dt, 3); break;
        case 2: pv_rows(pi, n, vr, o + i, alpha + i, dv, dt, 2); break;
        default: pv_rows(pi, n, vr, o + i, alpha + i, dv, dt, 1); break;
        }
    }
}

static void pv(const attn_geom *g, const void *pp, int m, int n, const void *vtv, float *const *o,
               const float *alpha) {
    const void *const *vr = (const void *const *)vtv;
    const float *p = (const float *)pp;
    switch (g->kv_dtype) {
    case PKV_F32: pv_dt(p, m, n, vr, o, alpha, g->dv, PKV_F32); break;
    case PKV_F16: pv_dt(p, m, n, vr, o, alpha, g->dv, PKV_F16); break;
    case PKV_BF16: pv_dt(p, m, n, vr, o, alpha, g->dv, PKV_BF16); break;
    default: pv_dt(p, m, n, vr, o, alpha, g->dv, PKV_FP8_MLA656); break;
    }
}

static const attn_ops ops = {"avx2-f32", 8, 4, 1, prep_q, load_tile, qk, softmax, pv, NULL, 0, 0};

const attn_ops *attn_ops_avx2(int q_dtype, int kv_dtype) {
    (void)q_dtype;
    (void)kv_dtype;
    return &ops;
}
