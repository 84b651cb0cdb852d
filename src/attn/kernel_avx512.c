/* AVX-512 kernels (F, BW, VL, DQ, BF16; compiled with ISA_AVX512 flags).
 *
 * Scores use "lanes over keys": load_tile transposes the tile's K once, so a
 * query element broadcast against one vector of K^T serves 16 keys, and every
 * query row of the group reuses the transposed tile (the MLA trick: each K row
 * loaded from the cache serves all heads sharing it). Two families:
 *  bf16dp  q bf16 with K/V bf16 or FP8_MLA656: scores by vdpbf16ps on bf16
 *          pairs. K^T is [dpad/2][64] dwords (a dword = two consecutive dims of
 *          one key); V is [32][dvpad] dwords (a dword = one dim of two
 *          consecutive keys). P V keeps P in float32: each V dword is widened
 *          exactly to the two keys' float32 values (shift, mask) and FMA'd, which
 *          measured faster than vdpbf16ps on P rounded to bf16 (whose 2^-9
 *          relative error per weight gave ~1e-3 in out on peaked attention,
 *          beyond FlashMLA's tolerance) and than a bf16 high + residual
 *          split. FP8 rows are expanded to their exact e4m3 values in bf16;
 *          the per-128 scales multiply the partial scores (K) and the weights
 *          (V), so dequantization costs no precision.
 *  f32     every other dtype pair: converted to float32 in load_tile, FMA.
 * Accumulators live in registers for blocks of 4 query rows x 64 keys (scores)
 * and 4 rows x 64 output dims (P V). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "simd_avx512.h"

#define RB 4 /* query rows per register block */

/* ---- conversions ---- */

AI __m512 bf16x16_f32(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

/* 16 values of a row (dtype F32/F16/BF16) as float32; lanes >= n read as 0. */
AI __m512 load16_f32(const void *row, int dtype, int32_t c, int32_t n) {
    const __mmask16 k = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n > 0 ? n : 0)) - 1u);
    if (dtype == PKV_F32) return _mm512_maskz_loadu_ps(k, (const float *)row + c);
    const __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t *)row + c);
    return dtype == PKV_F16 ? _mm512_cvtph_ps(h) : bf16x16_f32(h);
}

/* 16 e4m3 codes -> their values * 2^-8, as f16 bit patterns (exact; the caller
 * multiplies by 256 * scale); the NaN codes 0x7f / 0xff give f16 NaN. */
AI __m256i e4m3x16_f16bits(__m128i b) {
    const __m256i w = _mm256_cvtepu8_epi16(b);
    const __m256i sign = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8);
    const __m256i m7 = _mm256_and_si256(w, _mm256_set1_epi16(0x7f));
    __m256i mag = _mm256_slli_epi16(m7, 7);
    mag = _mm256_mask_mov_epi16(mag, _mm256_cmpeq_epi16_mask(m7, _mm256_set1_epi16(0x7f)), _mm256_set1_epi16(0x7e00));
    return _mm256_or_si256(sign, mag);
}

/* Scales of an FP8 row (little-endian floats at byte 512). */
AI void fp8_scales(const uint8_t *row, float sc[4]) { memcpy(sc, row + PKV_MLA656_SCALES, 4 * sizeof(float)); }

/* ---- exp2 for x <= 0 (relative error ~2e-7) ---- */
AI __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-127.0f));
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.5403530e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Online softmax over one tile (shared by both families; p is float32 [m][64]). */
void attn_avx512_softmax(const attn_geom *g, const float *s, int m, const int32_t *nfirst, const int32_t *nvalid,
                         float *mrun, float *lrun, float *alpha, void *pv) {
    float *p = (float *)pv;
    const __m512 sc = _mm512_set1_ps(g->scale_log2);
    for (int i = 0; i < m; i++) {
        const float *si = s + (size_t)i * ATTN_TILE;
        float *pi = p + (size_t)i * ATTN_TILE;
        const int n0 = nfirst[i], nv = nvalid[i];
        __mmask16 k[4], bad = 0;
        __m512 x[4];
        __m512 mx = _mm512_set1_ps(-INFINITY);
        UNROLL for (int v = 0; v < 4; v++) {
            const int left = nv - 16 * v;
            const int skip = n0 - 16 * v; /* lanes below the window's start */
            k[v] = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (left > 0 ? left : 0)) - 1u);
            if (skip > 0) k[v] &= skip >= 16 ? (__mmask16)0 : (__mmask16)~((1u << skip) - 1u);
            x[v] = _mm512_mul_ps(_mm512_loadu_ps(si + 16 * v), sc);
            bad |= _mm512_mask_fpclass_ps_mask(k[v], x[v], 0x99); /* QNaN, SNaN, +inf, -inf */
            mx = _mm512_mask_max_ps(mx, k[v], mx, x[v]);
        }
        float mnew = _mm512_reduce_max_ps(mx);
        if (mrun[i] > mnew) mnew = mrun[i];
        if (bad) lrun[i] = NAN; /* the driver recomputes this row (kernels.h) */
        if (mnew == -INFINITY) {
            alpha[i] = 1.0f;
            UNROLL for (int v = 0; v < 4; v++) _mm512_storeu_ps(pi + 16 * v, _mm512_setzero_ps());
            continue;
        }
        alpha[i] = exp2f(mrun[i] - mnew);
        const __m512 mb = _mm512_set1_ps(mnew);
        __m512 sum = _mm512_setzero_ps();
        UNROLL for (int v = 0; v < 4; v++) {
            const __m512 e = _mm512_maskz_mov_ps(k[v], exp2_ps(_mm512_sub_ps(x[v], mb)));
            _mm512_storeu_ps(pi + 16 * v, e);
            sum = _mm512_add_ps(sum, e);
        }
        lrun[i] = lrun[i] * alpha[i] + _mm512_reduce_add_ps(sum);
        mrun[i] = mnew;
    }
}

/* ======================= float32 family ======================= */
/* qp [m][dpad] f32; kt [dpad][64] f32; vt [64][dvpad] f32. */

static void f32_prep_q(const attn_geom *g, const void *const *qrows, int m, void *qp) {
    float *q = (float *)qp;
    for (int i = 0; i < m; i++)
        for (int32_t c = 0; c < g->dpad; c += 16)
            _mm512_storeu_ps(q + (size_t)i * (size_t)g->dpad + c, load16_f32(qrows[i], g->q_dtype, c, g->d - c));
}

/* 16 dims [c, c+16) of a K or V row as float32 (FP8 rows dequantized). */
AI __m512 kv16_f32(const attn_geom *g, const void *row, int32_t c, int32_t n) {
    if (g->kv_dtype != PKV_FP8_MLA656) return load16_f32(row, g->kv_dtype, c, n);
    const uint8_t *r8 = (const uint8_t *)row;
    if (c >= PKV_MLA656_LATENT) return load16_f32(r8 + PKV_MLA656_ROPE, PKV_BF16, c - PKV_MLA656_LATENT, n);
    float sc;
    memcpy(&sc, r8 + PKV_MLA656_SCALES + 4 * (c / 128), sizeof sc);
    const __m512 v = _mm512_cvtph_ps(e4m3x16_f16bits(_mm_loadu_si128((const __m128i *)(const void *)(r8 + c))));
    return _mm512_mul_ps(v, _mm512_set1_ps(sc * 256.0f));
}

static void f32_load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows, int n,
                          void *ktv, void *vtv) {
    float *kt = (float *)ktv, *vt = (float *)vtv;
    __m512 r[16];
    for (int jb = 0; jb < ATTN_TILE / 16; jb++) {
        for (int32_t c = 0; c < g->dpad; c += 16) {
            UNROLL for (int i = 0; i < 16; i++) {
                const int j = jb * 16 + i;
                r[i] = j < n ? kv16_f32(g, krows[j], c, g->d - c) : _mm512_setzero_ps();
            }
            transpose16(r);
            UNROLL for (int i = 0; i < 16; i++) _mm512_storeu_ps(kt + (size_t)(c + i) * ATTN_TILE + jb * 16, r[i]);
        }
    }
    for (int j = 0; j < ATTN_TILE; j++) {
        float *dst = vt + (size_t)j * (size_t)g->dvpad;
        for (int32_t c = 0; c < g->dvpad; c += 16)
            _mm512_storeu_ps(dst + c, j < n ? kv16_f32(g, vrows[j], c, g->dv - c) : _mm512_setzero_ps());
    }
}

AI void f32_qk_block(const float *q, int32_t ldq, const float *kt, int32_t c0, int32_t c1, float *s, int R,
                     int first) {
    __m512 acc[RB][4];
    UNROLL for (int r = 0; r < R; r++)
        UNROLL for (int v = 0; v < 4; v++)
            acc[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(s + (size_t)r * ATTN_TILE + 16 * v);
    for (int32_t c = c0; c < c1; c++) {
        const float *kr = kt + (size_t)c * ATTN_TILE;
        const __m512 k0 = _mm512_loadu_ps(kr), k1 = _mm512_loadu_ps(kr + 16);
        const __m512 k2 = _mm512_loadu_ps(kr + 32), k3 = _mm512_loadu_ps(kr + 48);
        UNROLL for (int r = 0; r < R; r++) {
            const __m512 b = _mm512_set1_ps(q[(size_t)r * (size_t)ldq + (size_t)c]);
            acc[r][0] = _mm512_fmadd_ps(b, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(b, k1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(b, k2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(b, k3, acc[r][3]);
        }
    }
    UNROLL for (int r = 0; r < R; r++)
        UNROLL for (int v = 0; v < 4; v++) _mm512_storeu_ps(s + (size_t)r * ATTN_TILE + 16 * v, acc[r][v]);
}

static void f32_qk(const attn_geom *g, const void *qp, int m, int n, const void *ktv, float *s) {
    (void)n;
    const float *q = (const float *)qp, *kt = (const float *)ktv;
    /* dims in chunks of 64 so the chunk of K^T (16 KB) stays in L1 across row blocks */
    for (int32_t c0 = 0; c0 < g->dpad; c0 += 64) {
        const int32_t c1 = c0 + 64 < g->dpad ? c0 + 64 : g->dpad;
        for (int i = 0; i < m; i += RB) {
            const float *qi = q + (size_t)i * (size_t)g->dpad;
            float *si = s + (size_t)i * ATTN_TILE;
            switch (m - i >= RB ? RB : m - i) {
            case 4: f32_qk_block(qi, g->dpad, kt, c0, c1, si, 4, c0 == 0); break;
            case 3: f32_qk_block(qi, g->dpad, kt, c0, c1, si, 3, c0 == 0); break;
            case 2: f32_qk_block(qi, g->dpad, kt, c0, c1, si, 2, c0 == 0); break;
            default: f32_qk_block(qi, g->dpad, kt, c0, c1, si, 1, c0 == 0); break;
            }
        }
    }
}

AI __mmask16 tail_mask(int32_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (left > 0 ? left : 0)) - 1u);
}

/* o rows [c, c + 16 NV) of R rows: alpha * o + P V. */
AI void f32_pv_block(const float *p, int n, const float *vt, int32_t ldv, float *const *o, const float *alpha,
                     int32_t c, int32_t dv, int R, int NV) {
    __m512 acc[RB][4];
    __mmask16 km[4];
    UNROLL for (int v = 0; v < NV; v++) km[v] = tail_mask(dv - c - 16 * v);
    UNROLL for (int r = 0; r < R; r++) {
        const __m512 a = _mm512_set1_ps(alpha[r]);
        UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_mul_ps(a, _mm512_maskz_loadu_ps(km[v], o[r] + c + 16 * v));
    }
    for (int j = 0; j < n; j++) {
        const float *vr = vt + (size_t)j * (size_t)ldv + c;
        __m512 vv[4];
        UNROLL for (int v = 0; v < NV; v++) vv[v] = _mm512_loadu_ps(vr + 16 * v);
        UNROLL for (int r = 0; r < R; r++) {
            const __m512 b = _mm512_set1_ps(p[(size_t)r * ATTN_TILE + (size_t)j]);
            UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(b, vv[v], acc[r][v]);
        }
    }
    UNROLL for (int r = 0; r < R; r++)
        UNROLL for (int v = 0; v < NV; v++) _mm512_mask_storeu_ps(o[r] + c + 16 * v, km[v], acc[r][v]);
}

AI void f32_pv_rows(const attn_geom *g, const float *p, int n, const float *vt, float *const *o,
                    const float *alpha, int R) {
    int32_t c = 0;
    for (; c + 64 <= g->dvpad; c += 64) f32_pv_block(p, n, vt, g->dvpad, o, alpha, c, g->dv, R, 4);
    for (; c < g->dvpad; c += 16) f32_pv_block(p, n, vt, g->dvpad, o, alpha, c, g->dv, R, 1);
}

static void f32_pv(const attn_geom *g, const void *pp, int m, int n, const void *vtv, float *const *o,
                   const float *alpha) {
    const float *p = (const float *)pp, *vt = (const float *)vtv;
    for (int i = 0; i < m; i += RB) {
        const float *pi = p + (size_t)i * ATTN_TILE;
        switch (m - i >= RB ? RB : m - i) {
        case 4: f32_pv_rows(g, pi, n, vt, o + i, alpha + i, 4); break;
        case 3: f32_pv_rows(g, pi, n, vt, o + i, alpha + i, 3); break;
        case 2: f32_pv_rows(g, pi, n, vt, o + i, alpha + i, 2); break;
        default: f32_pv_rows(g, pi, n, vt, o + i, alpha + i, 1); break;
        }
    }
}

/* ======================= bf16 dot-product family ======================= */
/* qp [m][dpad] bf16; kt [dpad/2][64] dwords then (FP8) scales [4][64] f32;
 * vt [32][dvpad] dwords then (FP8) scales [4][64] f32. dpad, dvpad % 32 == 0. */

void attn_avx512_dp_prep_q(const attn_geom *g, const void *const *qrows, int m, void *qp) {
    uint16_t *q = (uint16_t *)qp;
    for (int i = 0; i < m; i++)
        for (int32_t c = 0; c < g->dpad; c += 32) {
            const int32_t left = g->d - c;
            const __mmask32 k = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (left > 0 ? left : 0)) - 1u);
            _mm512_storeu_si512(q + (size_t)i * (size_t)g->dpad + c,
                                _mm512_maskz_loadu_epi16(k, (const uint16_t *)qrows[i] + c));
        }
}

/* V in the bf16 pair layout from bf16 rows: dword (jp, c) = dim c of keys 2jp
 * and 2jp + 1 (rows >= n zero). */
void attn_avx512_interleave_v(const attn_geom *g, const void *const *vrows, int n, uint32_t *vt) {
    const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                         37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i ihi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54,
                                         22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
    for (int jp = 0; jp < ATTN_TILE / 2; jp++) {
        const int j0 = 2 * jp, j1 = 2 * jp + 1;
        uint32_t *dst = vt + (size_t)jp * (size_t)g->dvpad;
        for (int32_t c = 0; c < g->dvpad; c += 32) {
            const __m512i a = j0 < n ? bf16x32(vrows[j0], c, g->dv - c) : _mm512_setzero_si512();
            const __m512i b = j1 < n ? bf16x32(vrows[j1], c, g->dv - c) : _mm512_setzero_si512();
            _mm512_storeu_si512(dst + c, _mm512_permutex2var_epi16(a, ilo, b));
            _mm512_storeu_si512(dst + c + 16, _mm512_permutex2var_epi16(a, ihi, b));
        }
    }
}

/* The bf16 tile layouts from bf16 rows (d, dv dims; rows >= n zero). */
static void dp_tile_from_bf16(const attn_geom *g, const void *const *krows, const void *const *vrows, int n,
                              uint32_t *kt, uint32_t *vt) {
    __m512 r[16];
    for (int jb = 0; jb < ATTN_TILE / 16; jb++) {
        for (int32_t c = 0; c < g->dpad; c += 32) {
            UNROLL for (int i = 0; i < 16; i++) {
                const int j = jb * 16 + i;
                r[i] = j < n ? _mm512_castsi512_ps(bf16x32(krows[j], c, g->d - c)) : _mm512_setzero_ps();
            }
            transpose16(r);
            UNROLL for (int i = 0; i < 16; i++)
                _mm512_storeu_ps((float *)(void *)(kt + (size_t)(c / 2 + i) * ATTN_TILE + jb * 16), r[i]);
        }
    }
    attn_avx512_interleave_v(g, vrows, n, vt);
}

/* One FP8_MLA656 row expanded to 576 exact bf16 values (latent unscaled). */
void attn_avx512_fp8_expand(const uint8_t *r8, uint16_t *dst) {
    UNROLL for (int c = 0; c < 512; c += 32)
        _mm512_storeu_si512(dst + c, e4m3x32_bf16(_mm256_loadu_si256((const __m256i *)(const void *)(r8 + c))));
    _mm512_storeu_si512(dst + 512, _mm512_loadu_si512(r8 + PKV_MLA656_ROPE));
    _mm512_storeu_si512(dst + 544, _mm512_loadu_si512(r8 + PKV_MLA656_ROPE + 64));
}

void attn_avx512_dp_load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows, int n,
                         void *ktv, void *vtv) {
    dp_tile_from_bf16(g, krows, vrows, n, (uint32_t *)ktv, (uint32_t *)vtv);
}

/* FP8_MLA656 rows: each row is expanded once to 576 exact bf16 values in a work
 * area behind K^T and its scales (the kt scratch holds (dpad + 16) * 64 floats:
 * K^T 288 * 64 dwords, scales 16 * 64, work 64 * 576 bf16), then laid out as
 * for bf16; K and V (its first 512 dims) share the expansion. */
void attn_avx512_fp8_load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows, int n,
                          void *ktv, void *vtv) {
    (void)vrows;
    uint32_t *kt = (uint32_t *)ktv, *vt = (uint32_t *)vtv;
    float *ks = (float *)(void *)(kt + (size_t)(g->dpad / 2) * ATTN_TILE);
    float *vs = (float *)(void *)(vt + (size_t)(ATTN_TILE / 2) * (size_t)g->dvpad);
    uint16_t *wk = (uint16_t *)(void *)(kt + (size_t)(g->dpad / 2 + 16) * ATTN_TILE);
    const void *rows[ATTN_TILE];
    for (int j = 0; j < n; j++) {
        const uint8_t *r8 = (const uint8_t *)krows[j];
        uint16_t *dst = wk + (size_t)j * PKV_MLA656_DIM;
        attn_avx512_fp8_expand(r8, dst);
        rows[j] = dst;
        float sc[4];
        fp8_scales(r8, sc);
        for (int t = 0; t < 4; t++) ks[t * ATTN_TILE + j] = vs[t * ATTN_TILE + j] = sc[t];
    }
    for (int j = n; j < ATTN_TILE; j++)
        for (int t = 0; t < 4; t++) ks[t * ATTN_TILE + j] = vs[t * ATTN_TILE + j] = 0.0f;
    dp_tile_from_bf16(g, rows, rows, n, kt, vt);
}

/* Pairs [p0, p1) of R rows into acc (zeroed first). */
AI void dp_qk_seg(const uint32_t *q, int32_t ldq, const uint32_t *kt, int32_t p0, int32_t p1, __m512 acc[RB][4],
                  int R) {
    UNROLL for (int r = 0; r < R; r++)
        UNROLL for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_ps();
    for (int32_t p = p0; p < p1; p++) {
        const uint32_t *kr = kt + (size_t)p * ATTN_TILE;
        const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kr), k1 = (__m512bh)_mm512_loadu_si512(kr + 16);
        const __m512bh k2 = (__m512bh)_mm512_loadu_si512(kr + 32), k3 = (__m512bh)_mm512_loadu_si512(kr + 48);
        UNROLL for (int r = 0; r < R; r++) {
            const __m512bh b = (__m512bh)_mm512_set1_epi32((int)q[(size_t)r * (size_t)ldq + (size_t)p]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], b, k0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], b, k1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], b, k2);
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], b, k3);
        }
    }
}

/* One segment of pairs for R rows, added into s (scaled per key when sc != NULL). */
AI void dp_qk_block(const uint32_t *q, int32_t ldq, const uint32_t *kt, int32_t p0, int32_t p1, const float *sc,
                    float *s, int R, int first) {
    __m512 acc[RB][4];
    dp_qk_seg(q, ldq, kt, p0, p1, acc, R);
    UNROLL for (int r = 0; r < R; r++)
        UNROLL for (int v = 0; v < 4; v++) {
            float *sp = s + (size_t)r * ATTN_TILE + 16 * v;
            __m512 x = acc[r][v];
            if (sc) x = _mm512_mul_ps(x, _mm512_loadu_ps(sc + 16 * v));
            if (!first) x = _mm512_add_ps(x, _mm512_loadu_ps(sp));
            _mm512_storeu_ps(sp, x);
        }
}

AI void dp_qk_rows(const attn_geom *g, const uint32_t *q, const uint32_t *kt, float *s, int R) {
    const int32_t ldq = g->dpad / 2;
    if (g->kv_dtype == PKV_FP8_MLA656) {
        const float *ks = (const float *)(const void *)(kt + (size_t)ldq * ATTN_TILE);
        for (int t = 0; t < 4; t++) dp_qk_block(q, ldq, kt, 64 * t, 64 * t + 64, ks + t * ATTN_TILE, s, R, t == 0);
        dp_qk_block(q, ldq, kt, 256, 288, NULL, s, R, 0);
        return;
    }
    /* chunks of 32 pairs: 8 KB of K^T stays in L1 while all rows use it */
    for (int32_t p0 = 0; p0 < ldq; p0 += 32)
        dp_qk_block(q, ldq, kt, p0, p0 + 32 < ldq ? p0 + 32 : ldq, NULL, s, R, p0 == 0);
}

void attn_avx512_dp_qk(const attn_geom *g, const void *qp, int m, int n, const void *ktv, float *s) {
    (void)n;
    const uint32_t *q = (const uint32_t *)qp, *kt = (const uint32_t *)ktv;
    const int32_t ldq = g->dpad / 2;
    for (int i = 0; i < m; i += RB) {
        const uint32_t *qi = q + (size_t)i * (size_t)ldq;
        float *si = s + (size_t)i * ATTN_TILE;
        switch (m - i >= RB ? RB : m - i) {
        case 4: dp_qk_rows(g, qi, kt, si, 4); break;
        case 3: dp_qk_rows(g, qi, kt, si, 3); break;
        case 2: dp_qk_rows(g, qi, kt, si, 2); break;
        default: dp_qk_rows(g, qi, kt, si, 1); break;
        }
    }
}

/* o = alpha * o + W V on dims [c, c + 16 NV), W float32 [R][64] (lanes over keys):
 * each V dword holds a dim of two keys as bf16, widened exactly to float32 by a
 * shift (even key) and a mask (odd key), so the weights keep float32 precision. */
AI void dp_pv_block_f32(const float *w, int np, const uint32_t *vt, int32_t ldv, float *const *o, const float *alpha,
                        int32_t c, int32_t dv, int R, int NV) {
    __m512 acc[RB][4];
    __mmask16 km[4];
    const __m512i hmask = _mm512_set1_epi32((int)0xffff0000u);
    UNROLL for (int v = 0; v < NV; v++) km[v] = tail_mask(dv - c - 16 * v);
    UNROLL for (int r = 0; r < R; r++) {
        const __m512 a = _mm512_set1_ps(alpha[r]);
        UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_mul_ps(a, _mm512_maskz_loadu_ps(km[v], o[r] + c + 16 * v));
    }
    for (int jp = 0; jp < np; jp++) {
        const uint32_t *vr = vt + (size_t)jp * (size_t)ldv + c;
        __m512 ve[4], vo[4];
        UNROLL for (int v = 0; v < NV; v++) {
            const __m512i x = _mm512_loadu_si512(vr + 16 * v);
            ve[v] = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
            vo[v] = _mm512_castsi512_ps(_mm512_and_si512(x, hmask));
        }
        UNROLL for (int r = 0; r < R; r++) {
            const __m512 be = _mm512_set1_ps(w[(size_t)r * ATTN_TILE + 2 * (size_t)jp]);
            const __m512 bo = _mm512_set1_ps(w[(size_t)r * ATTN_TILE + 2 * (size_t)jp + 1]);
            UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(be, ve[v], acc[r][v]);
            UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(bo, vo[v], acc[r][v]);
        }
    }
    UNROLL for (int r = 0; r < R; r++)
        UNROLL for (int v = 0; v < NV; v++) _mm512_mask_storeu_ps(o[r] + c + 16 * v, km[v], acc[r][v]);
}

AI void dp_pv_range_f32(const float *w, int np, const uint32_t *vt, const attn_geom *g, float *const *o,
                        const float *alpha, int32_t c0, int32_t c1, int R) {
    int32_t c = c0;
    for (; c + 64 <= c1; c += 64) dp_pv_block_f32(w, np, vt, g->dvpad, o, alpha, c, g->dv, R, 4);
    for (; c < c1; c += 16) dp_pv_block_f32(w, np, vt, g->dvpad, o, alpha, c, g->dv, R, 1);
}

AI void dp_pv_rows(const attn_geom *g, const float *p, int n, const uint32_t *vt, float *const *o,
                   const float *alpha, int R) {
    const int np = (n + 1) / 2;
    if (g->kv_dtype == PKV_FP8_MLA656) {
        /* weights P * (the keys' scale of the segment's 128 dims) */
        const float *vs = (const float *)(const void *)(vt + (size_t)(ATTN_TILE / 2) * (size_t)g->dvpad);
        float w[RB * ATTN_TILE] __attribute__((aligned(64)));
        for (int t = 0; t < 4; t++) {
            for (int r = 0; r < R; r++)
                UNROLL for (int v = 0; v < 4; v++)
                    _mm512_store_ps(w + r * ATTN_TILE + 16 * v,
                                    _mm512_mul_ps(_mm512_loadu_ps(p + (size_t)r * ATTN_TILE + 16 * v),
                                                  _mm512_loadu_ps(vs + t * ATTN_TILE + 16 * v)));
            dp_pv_range_f32(w, np, vt, g, o, alpha, 128 * t, 128 * t + 128, R);
        }
        return;
    }
    dp_pv_range_f32(p, np, vt, g, o, alpha, 0, g->dvpad, R);
}

void attn_avx512_dp_pv(const attn_geom *g, const void *pp, int m, int n, const void *vtv, float *const *o,
                  const float *alpha) {
    const float *p = (const float *)pp;
    const uint32_t *vt = (const uint32_t *)vtv;
    for (int i = 0; i < m; i += RB) {
        const float *pi = p + (size_t)i * ATTN_TILE;
        switch (m - i >= RB ? RB : m - i) {
        case 4: dp_pv_rows(g, pi, n, vt, o + i, alpha + i, 4); break;
        case 3: dp_pv_rows(g, pi, n, vt, o + i, alpha + i, 3); break;
        case 2: dp_pv_rows(g, pi, n, vt, o + i, alpha + i, 2); break;
        default: dp_pv_rows(g, pi, n, vt, o + i, alpha + i, 1); break;
        }
    }
}

/* ======================= few-rows family (GQA decode) ======================= */
/* With few query rows per KV head (m <= ATTN_SMALL_M) a transposed tile would
 * cost more than the rows reuse it, so scores run "lanes over d" straight from
 * the cache rows (converted in registers) and P V reads V rows directly.
 * kt holds the tile's K row pointers, vt its V row pointers (of the group's
 * first KV head: a group spans g->rph rows per KV head); qp is f32. */

/* kt and vt both get the tile's row pointers, K then V, each ATTN_TILE +
 * ATTN_PF long (the next tile's first K / V rows at [n, n + ATTN_PF)): the
 * kernels prefetch along the order the cache is read, K rows of the tile, then
 * its V rows, then the next tile's K rows, ATTN_PF rows ahead. */
#define RP (ATTN_TILE + ATTN_PF)
static void rows_load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows, int n,
                           void *ktv, void *vtv) {
    (void)g;
    const void **kt = (const void **)ktv, **vt = (const void **)vtv;
    memcpy(kt, krows, (size_t)(n + ATTN_PF) * sizeof(void *));
    memcpy(kt + RP, vrows, (size_t)(n + ATTN_PF) * sizeof(void *));
    memcpy(vt, kt, (size_t)(RP + n + ATTN_PF) * sizeof(void *));
}

#ifndef ATTN_PF_HINT
#define ATTN_PF_HINT _MM_HINT_T1 /* into L2: on AMD Zen 4 cold GQA decode 15.9 -> 25-30 GB/s against T0; on Intel within the spread */
#endif
/* Prefetches bytes [off, off + len) of row p (NULL: nothing) into L1. */
AI void pf_row(const void *p, size_t off, size_t len) {
    if (!p) return;
    for (size_t o = 0; o < len; o += 64) _mm_prefetch((const char *)p + off + o, ATTN_PF_HINT);
}

/* Lane 4 L + k = sum of the lanes of v[4 k + L], L, k < 4 (a transposing add tree). */
AI __m512 hsum16_t(const __m512 v[16]) {
    __m512 x[8], y[4];
    UNROLL for (int i = 0; i < 8; i++)
        x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    UNROLL for (int i = 0; i < 4; i++) /* lane L of y[i]: partials of v[4i + L] */
        y[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xdd));
    const __m512 z0 = _mm512_add_ps(_mm512_unpacklo_ps(y[0], y[1]), _mm512_unpackhi_ps(y[0], y[1]));
    const __m512 z1 = _mm512_add_ps(_mm512_unpacklo_ps(y[2], y[3]), _mm512_unpackhi_ps(y[2], y[3]));
    return _mm512_add_ps(_mm512_shuffle_ps(z0, z1, 0x44), _mm512_shuffle_ps(z0, z1, 0xee));
}

/* out[j] = sum of the lanes of v[j], j < 16 (a transposing add tree: ~3 ops per sum). */
AI __m512 hsum16(const __m512 v[16]) {
    /* lane 4L + k of hsum16_t holds the sum of v[4k + L] */
    const __m512i idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(idx, hsum16_t(v));
}

/* 16 keys [j0, j0 + 16) of R rows (K rows at kr[j] + koff): s[r][j0..j0+16).
 * pf: also prefetch, per key, the row read ATTN_PF rows later: a K row of this
 * head, or past the tile's keys its V rows (at kr[RP + j] + voff). */
AI void rows_qk_batch(const float *q, int32_t ldq, const void *const *kr, size_t koff, size_t voff, int pf, int j0,
                      int n, float *s, int32_t d, int32_t dv, int dt, int R) {
    __m512 part[RB][16];
    const size_t es = dt == PKV_F32 ? 4 : 2;
    UNROLL for (int jj = 0; jj < 16; jj++) {
        const int j = j0 + jj;
        if (pf && j < n) {
            const int nx = j + ATTN_PF;
            if (nx < n) pf_row(kr[nx], koff, (size_t)d * es);
            else if (nx - n < n) pf_row(kr[RP + nx - n], voff, (size_t)dv * es);
        }
        __m512 acc[RB];
        UNROLL for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
        if (j < n) {
            const char *row = (const char *)kr[j] + koff;
            for (int32_t c = 0; c < d; c += 16) {
                const __m512 kv = load16_f32(row, dt, c, d - c);
                UNROLL for (int r = 0; r < R; r++)
                    acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + (size_t)r * (size_t)ldq + c), kv, acc[r]);
            }
        }
        UNROLL for (int r = 0; r < R; r++) part[r][jj] = acc[r];
    }
    UNROLL for (int r = 0; r < R; r++) _mm512_storeu_ps(s + (size_t)r * ATTN_TILE + j0, hsum16(part[r]));
}

/* 4 rows x 16 keys [j0, j0 + 16), all < n, as four 4 x 4 blocks: 16
 * accumulators (key kk, row r at 4 kk + r) stay in registers and each chunk of
 * the 4 query rows is loaded once per 4 keys (rows_qk_batch keeps 16 keys'
 * partials per row: 64 vectors, spilled, and loads q once per key). One
 * reduction per block gives lane 4 r + kk = s[r][j0 + kk]. Prefetches as
 * rows_qk_batch. */
AI void rows_qk_4x16(const float *q, int32_t ldq, const void *const *kr, size_t koff, size_t voff, int pf, int j0,
                     int n, float *s, int32_t d, int32_t dv, int dt) {
    const size_t es = dt == PKV_F32 ? 4 : 2;
    for (int b = 0; b < 4; b++) {
        const int jb = j0 + 4 * b;
        const char *row[4];
        UNROLL for (int kk = 0; kk < 4; kk++) {
            const int j = jb + kk;
            if (pf) {
                const int nx = j + ATTN_PF;
                if (nx < n) pf_row(kr[nx], koff, (size_t)d * es);
                else if (nx - n < n) pf_row(kr[RP + nx - n], voff, (size_t)dv * es);
            }
            row[kk] = (const char *)kr[j] + koff;
        }
        __m512 acc[16];
        UNROLL for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        for (int32_t c = 0; c < d; c += 16) {
            __m512 qv[4];
            UNROLL for (int r = 0; r < 4; r++) qv[r] = _mm512_loadu_ps(q + (size_t)r * (size_t)ldq + c);
            UNROLL for (int kk = 0; kk < 4; kk++) {
                const __m512 kv = load16_f32(row[kk], dt, c, d - c);
                UNROLL for (int r = 0; r < 4; r++) acc[4 * kk + r] = _mm512_fmadd_ps(qv[r], kv, acc[4 * kk + r]);
            }
        }
        const __m512 w = hsum16_t(acc); /* lane 4 r + kk: sum of acc[4 kk + r] */
        _mm_storeu_ps(s + jb, _mm512_extractf32x4_ps(w, 0));
        _mm_storeu_ps(s + ATTN_TILE + jb, _mm512_extractf32x4_ps(w, 1));
        _mm_storeu_ps(s + 2 * ATTN_TILE + jb, _mm512_extractf32x4_ps(w, 2));
        _mm_storeu_ps(s + 3 * ATTN_TILE + jb, _mm512_extractf32x4_ps(w, 3));
    }
}

/* Rows [0, m) of a group; row r reads KV head (r / rph) relative to the row
 * pointers, whose heads lie khead bytes apart. Keys go 16 at a time through all
 * heads, so a token's rows of every head are read close together in time. */
AI void rows_qk_dt(const attn_geom *g, const float *q, int m, const void *const *kr, int n, float *s, int dt,
                   int32_t d, int32_t dv) {
    const int32_t ldq = g->dpad, rph = g->rph;
    for (int j0 = 0; j0 < ATTN_TILE; j0 += 16) {
        if (j0 >= n) { /* keys past n: finite scores, masked by softmax */
            for (int r = 0; r < m; r++)
                for (int j = j0; j < ATTN_TILE; j++) s[(size_t)r * ATTN_TILE + (size_t)j] = 0.0f;
            break;
        }
        for (int h0 = 0, hk = 0; h0 < m; h0 += rph, hk++) {
            const int h1 = h0 + rph < m ? h0 + rph : m;
            const size_t koff = (size_t)hk * g->khead, voff = (size_t)hk * g->vhead;
            for (int i = h0; i < h1; i += RB) {
                const float *qi = q + (size_t)i * (size_t)ldq;
                float *si = s + (size_t)i * ATTN_TILE;
                const int pf = i == h0;
                switch (h1 - i >= RB ? RB : h1 - i) {
                case 4:
                    if (j0 + 16 <= n) rows_qk_4x16(qi, ldq, kr, koff, voff, pf, j0, n, si, d, dv, dt);
                    else rows_qk_batch(qi, ldq, kr, koff, voff, pf, j0, n, si, d, dv, dt, 4);
                    break;
                case 3: rows_qk_batch(qi, ldq, kr, koff, voff, pf, j0, n, si, d, dv, dt, 3); break;
                case 2: rows_qk_batch(qi, ldq, kr, koff, voff, pf, j0, n, si, d, dv, dt, 2); break;
                default: rows_qk_batch(qi, ldq, kr, koff, voff, pf, j0, n, si, d, dv, dt, 1); break;
                }
            }
        }
    }
}

static void rows_qk(const attn_geom *g, const void *qp, int m, int n, const void *ktv, float *s) {
    const void *const *kr = (const void *const *)ktv;
    const float *q = (const float *)qp;
    /* d = dv = 128 (most GQA models) compiled apart: constant masks and trip counts */
    const int d128 = g->d == 128 && g->dv == 128;
    switch (g->kv_dtype) {
    case PKV_F32: rows_qk_dt(g, q, m, kr, n, s, PKV_F32, g->d, g->dv); break;
    case PKV_F16:
        if (d128) rows_qk_dt(g, q, m, kr, n, s, PKV_F16, 128, 128);
        else rows_qk_dt(g, q, m, kr, n, s, PKV_F16, g->d, g->dv);
        break;
    default:
        if (d128) rows_qk_dt(g, q, m, kr, n, s, PKV_BF16, 128, 128);
        else rows_qk_dt(g, q, m, kr, n, s, PKV_BF16, g->d, g->dv);
        break;
    }
}

/* Dims [c, c + 16 NV) of R rows over keys [j0, j1) (V rows at vr[RP + j] + voff);
 * scale: the softmax rescale factors (first key batch of the tile), or NULL.
 * pf (> 0: bytes of a K row of this head, at koff): per key, prefetch the row
 * read ATTN_PF rows later: a V row, or past the tile's keys the next tile's K
 * row (vr[j + ATTN_PF]). */
AI void rows_pv_block(const float *p, int j0, int j1, int n, const void *const *vr, size_t voff, size_t koff,
                      size_t pf, float *const *o, const float *scale, int32_t c, int32_t dv, int dt, int R, int NV) {
    __m512 acc[RB][4];
    __mmask16 km[4];
    UNROLL for (int v = 0; v < NV; v++) km[v] = tail_mask(dv - c - 16 * v);
    UNROLL for (int r = 0; r < R; r++) {
        UNROLL for (int v = 0; v < NV; v++) {
            acc[r][v] = _mm512_maskz_loadu_ps(km[v], o[r] + c + 16 * v);
            if (scale) acc[r][v] = _mm512_mul_ps(_mm512_set1_ps(scale[r]), acc[r][v]);
        }
    }
    const size_t es = dt == PKV_F32 ? 4 : 2;
    for (int j = j0; j < j1; j++) {
        if (pf) {
            const int nx = j + ATTN_PF;
            if (nx < n) pf_row(vr[RP + nx], voff, (size_t)dv * es);
            else pf_row(vr[nx], koff, pf);
        }
        const char *row = (const char *)vr[RP + j] + voff;
        __m512 vv[4];
        UNROLL for (int v = 0; v < NV; v++) vv[v] = load16_f32(row, dt, c + 16 * v, dv - c - 16 * v);
        UNROLL for (int r = 0; r < R; r++) {
            const __m512 b = _mm512_set1_ps(p[(size_t)r * ATTN_TILE + (size_t)j]);
            UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(b, vv[v], acc[r][v]);
        }
    }
    UNROLL for (int r = 0; r < R; r++)
        UNROLL for (int v = 0; v < NV; v++) _mm512_mask_storeu_ps(o[r] + c + 16 * v, km[v], acc[r][v]);
}

AI void rows_pv_rows(const float *p, int j0, int j1, int n, const void *const *vr, size_t voff, size_t koff,
                     size_t pf, float *const *o, const float *scale, int32_t dv, int dt, int R) {
    int32_t c = 0;
    for (; c + 64 <= dv; c += 64, pf = 0) rows_pv_block(p, j0, j1, n, vr, voff, koff, pf, o, scale, c, dv, dt, R, 4);
    for (; c < dv; c += 16, pf = 0) rows_pv_block(p, j0, j1, n, vr, voff, koff, pf, o, scale, c, dv, dt, R, 1);
}

AI void rows_pv_dt(const attn_geom *g, const float *p, int m, int n, const void *const *vr, float *const *o,
                   const float *alpha, int dt, int32_t d, int32_t dv) {
    const int32_t rph = g->rph;
    for (int j0 = 0; j0 < n; j0 += 16) {
        const int j1 = j0 + 16 < n ? j0 + 16 : n;
        for (int h0 = 0, hk = 0; h0 < m; h0 += rph, hk++) {
            const int h1 = h0 + rph < m ? h0 + rph : m;
            const size_t voff = (size_t)hk * g->vhead, koff = (size_t)hk * g->khead;
            const size_t kbytes = (size_t)d * (dt == PKV_F32 ? 4 : 2);
            for (int i = h0; i < h1; i += RB) {
                const float *pi = p + (size_t)i * ATTN_TILE;
                const float *sc = j0 == 0 ? alpha + i : NULL;
                const size_t pf = i == h0 ? kbytes : 0;
                switch (h1 - i >= RB ? RB : h1 - i) {
                case 4: rows_pv_rows(pi, j0, j1, n, vr, voff, koff, pf, o + i, sc, dv, dt, 4); break;
                case 3: rows_pv_rows(pi, j0, j1, n, vr, voff, koff, pf, o + i, sc, dv, dt, 3); break;
                case 2: rows_pv_rows(pi, j0, j1, n, vr, voff, koff, pf, o + i, sc, dv, dt, 2); break;
                default: rows_pv_rows(pi, j0, j1, n, vr, voff, koff, pf, o + i, sc, dv, dt, 1); break;
                }
            }
        }
    }
}

static void rows_pv(const attn_geom *g, const void *pp, int m, int n, const void *vtv, float *const *o,
                    const float *alpha) {
    const void *const *vr = (const void *const *)vtv;
    const float *p = (const float *)pp;
    const int d128 = g->d == 128 && g->dv == 128;
    switch (g->kv_dtype) {
    case PKV_F32: rows_pv_dt(g, p, m, n, vr, o, alpha, PKV_F32, g->d, g->dv); break;
    case PKV_F16:
        if (d128) rows_pv_dt(g, p, m, n, vr, o, alpha, PKV_F16, 128, 128);
        else rows_pv_dt(g, p, m, n, vr, o, alpha, PKV_F16, g->d, g->dv);
        break;
    default:
        if (d128) rows_pv_dt(g, p, m, n, vr, o, alpha, PKV_BF16, 128, 128);
        else rows_pv_dt(g, p, m, n, vr, o, alpha, PKV_BF16, g->d, g->dv);
        break;
    }
}

const attn_ops attn_avx512_ops_rows = {"avx512-f32-rows", 16, 4, 1, f32_prep_q, rows_load_tile, rows_qk, attn_avx512_softmax, rows_pv, NULL, 1, 1};
static const attn_ops ops_f32 = {"avx512-f32", 16, 4, 1, f32_prep_q, f32_load_tile, f32_qk, attn_avx512_softmax, f32_pv, &attn_avx512_ops_rows, 0, 0};
static const attn_ops ops_fp8f32 = {"avx512-fp8-f32", 16, 4, 1, f32_prep_q, f32_load_tile, f32_qk, attn_avx512_softmax, f32_pv, NULL, 0, 0};
static const attn_ops ops_bf16dp = {"avx512-bf16dp", 32, 2, 1, attn_avx512_dp_prep_q, attn_avx512_dp_load_tile, attn_avx512_dp_qk, attn_avx512_softmax, attn_avx512_dp_pv, &attn_avx512_ops_rows, 0, 0};
static const attn_ops ops_fp8dp = {"avx512-fp8-bf16dp", 32, 2, 1, attn_avx512_dp_prep_q, attn_avx512_fp8_load_tile, attn_avx512_dp_qk, attn_avx512_softmax, attn_avx512_dp_pv, NULL, 0, 0};

const attn_ops *attn_ops_avx512(int q_dtype, int kv_dtype) {
    if (q_dtype == PKV_BF16 && kv_dtype == PKV_BF16) return &ops_bf16dp;
    if (q_dtype == PKV_BF16 && kv_dtype == PKV_FP8_MLA656) return &ops_fp8dp;
    return kv_dtype == PKV_FP8_MLA656 ? &ops_fp8f32 : &ops_f32;
}
