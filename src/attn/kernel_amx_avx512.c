/* AMX-BF16 kernels for q bf16 with bf16 or FP8_MLA656 KV (ISA_AVX512 flags,
 * which include -mamx-tile -mamx-bf16; used only when cpu.c found AMX usable
 * and the OS granted the tile state).
 *
 * Scores are computed transposed, S^T = K Q^T, so the tile's K rows (copied
 * into one contiguous block, or expanded there from FP8 rows) are the A operand
 * as they are and Q^T in pair form (prepared once per piece) the B operand;
 * the 16x16 blocks of S^T are transposed into S with AVX-512. P V uses the
 * AVX-512 layouts: V in bf16 pairs of keys (VNNI form) is the B operand and P,
 * split into a bf16 high part and a bf16 residual, two A operands (two tile
 * products into the same C, float32-accurate weights); O rows are accumulated
 * in place as C tiles.
 * Query rows go 16 at a time (rows past m are zero padding); P V falls back to
 * the AVX-512 kernel for the last m % 16 rows and when the output rows are not
 * equally spaced. The online-softmax rescale of O is an AVX-512 pass over the
 * rows whose running max moved (alpha != 1), which after the first tiles is
 * rare. */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "simd_avx512.h"

typedef struct tilecfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

/* All 8 tiles: 16 rows of 64 bytes. */
static void tiles_on(void) {
    tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; i++) {
        c.colsb[i] = 64;
        c.rows[i] = 16;
    }
    _tile_loadconfig(&c);
}

/* Scores as S^T = K Q^T, so K rows are tile operands as they are (no
 * transpose per tile): the tile's K rows are copied into kc [64][dpad] bf16
 * (for FP8 rows: expanded there, scales behind), Q is prepared once per piece
 * as Q^T in pair form, QT [m16][dpad/2][16] dwords (rows past m zero), and the
 * 16x16 blocks of S^T land in st [64][m16] f32 behind the scales, which is
 * transposed into s at the end. kt scratch: kc, then scales [4][64] f32, then st. */
static uint16_t *kc_of(void *kt) { return (uint16_t *)kt; }
static float *kscales_of(const attn_geom *g, void *kt) {
    return (float *)(void *)((char *)kt + (size_t)ATTN_TILE * (size_t)g->dpad * 2);
}
static float *st_of(const attn_geom *g, void *kt) { return kscales_of(g, kt) + 4 * ATTN_TILE; }

static int m16_of(int m) { return (m + 15) / 16 * 16; }

static void amx_prep_q(const attn_geom *g, const void *const *qrows, int m, void *qp) {
    uint32_t *qt = (uint32_t *)qp;
    const int32_t np = g->dpad / 2;
    __m512 r[16];
    for (int i0 = 0; i0 < m16_of(m); i0 += 16) {
        uint32_t *blk = qt + (size_t)(i0 / 16) * (size_t)np * 16;
        for (int32_t c = 0; c < g->dpad; c += 32) {
            UNROLL for (int i = 0; i < 16; i++)
                r[i] = i0 + i < m ? _mm512_castsi512_ps(bf16x32(qrows[i0 + i], c, g->d - c)) : _mm512_setzero_ps();
            transpose16(r);
            UNROLL for (int i = 0; i < 16; i++) _mm512_storeu_ps((float *)(void *)(blk + (size_t)(c / 2 + i) * 16), r[i]);
        }
    }
}

static void amx_load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows, int n, void *ktv,
                          void *vtv) {
    uint16_t *kc = kc_of(ktv);
    const int nz = (n + 15) / 16 * 16; /* rows of the last partial 16-key block are zeroed */
    for (int j = 0; j < nz; j++) {
        uint16_t *dst = kc + (size_t)j * (size_t)g->dpad;
        for (int32_t c = 0; c < g->dpad; c += 32)
            _mm512_storeu_si512(dst + c, j < n ? bf16x32(krows[j], c, g->d - c) : _mm512_setzero_si512());
    }
    attn_avx512_interleave_v(g, vrows, n, (uint32_t *)vtv);
}

static void amx_fp8_load_tile(const attn_geom *g, const void *const *krows, const void *const *vrows, int n,
                              void *ktv, void *vtv) {
    (void)vrows;
    uint16_t *kc = kc_of(ktv);
    float *ks = kscales_of(g, ktv);
    float *vs = (float *)(void *)((uint32_t *)vtv + (size_t)(ATTN_TILE / 2) * (size_t)g->dvpad);
    const void *rows[ATTN_TILE];
    const int nz = (n + 15) / 16 * 16;
    for (int j = 0; j < nz; j++) {
        uint16_t *dst = kc + (size_t)j * PKV_MLA656_DIM;
        float sc[4] = {0, 0, 0, 0};
        if (j < n) {
            attn_avx512_fp8_expand((const uint8_t *)krows[j], dst);
            memcpy(sc, (const uint8_t *)krows[j] + PKV_MLA656_SCALES, sizeof sc);
        } else {
            for (int c = 0; c < PKV_MLA656_DIM; c += 32) _mm512_storeu_si512(dst + c, _mm512_setzero_si512());
        }
        rows[j] = dst;
        for (int t = 0; t < 4; t++) ks[t * ATTN_TILE + j] = vs[t * ATTN_TILE + j] = sc[t];
    }
    for (int j = nz; j < ATTN_TILE; j++)
        for (int t = 0; t < 4; t++) ks[t * ATTN_TILE + j] = vs[t * ATTN_TILE + j] = 0.0f;
    attn_avx512_interleave_v(g, rows, n, (uint32_t *)vtv);
}

/* st[keys of block kb..kb+nkb][16 query cols of block qb] (+)= (K Q^T) over dims
 * [c0, c1), times the keys' scales when ks != NULL. Tiles: 0-3 C (one per key
 * block), 4 Q^T chunk, 5-6 K chunks. */
static void amx_st_block(const uint16_t *kc, int32_t dpad, const uint32_t *qtb, int nkb, int32_t c0, int32_t c1,
                         const float *ks, float *st, int32_t ldst, int first) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const size_t ldk = (size_t)dpad * 2;
    for (int32_t c = c0; c < c1; c += 32) {
        _tile_loadd(4, qtb + (size_t)(c / 2) * 16, 64);
        _tile_loadd(5, kc + c, ldk);
        _tile_dpbf16ps(0, 5, 4);
        if (nkb > 1) {
            _tile_loadd(6, kc + (size_t)16 * (size_t)dpad + c, ldk);
            _tile_dpbf16ps(1, 6, 4);
        }
        if (nkb > 2) {
            _tile_loadd(5, kc + (size_t)32 * (size_t)dpad + c, ldk);
            _tile_dpbf16ps(2, 5, 4);
        }
        if (nkb > 3) {
            _tile_loadd(6, kc + (size_t)48 * (size_t)dpad + c, ldk);
            _tile_dpbf16ps(3, 6, 4);
        }
    }
    float tmp[4][256] __attribute__((aligned(64)));
    if (first && !ks) { /* straight into st */
        _tile_stored(0, st, (size_t)ldst * 4);
        if (nkb > 1) _tile_stored(1, st + (size_t)16 * (size_t)ldst, (size_t)ldst * 4);
        if (nkb > 2) _tile_stored(2, st + (size_t)32 * (size_t)ldst, (size_t)ldst * 4);
        if (nkb > 3) _tile_stored(3, st + (size_t)48 * (size_t)ldst, (size_t)ldst * 4);
        return;
    }
    _tile_stored(0, tmp[0], 64);
    if (nkb > 1) _tile_stored(1, tmp[1], 64);
    if (nkb > 2) _tile_stored(2, tmp[2], 64);
    if (nkb > 3) _tile_stored(3, tmp[3], 64);
    for (int kb = 0; kb < nkb; kb++)
        for (int k = 0; k < 16; k++) {
            const int key = kb * 16 + k;
            __m512 x = _mm512_load_ps(tmp[kb] + 16 * k);
            if (ks) x = _mm512_mul_ps(x, _mm512_set1_ps(ks[key]));
            float *dst = st + (size_t)key * (size_t)ldst;
            _mm512_storeu_ps(dst, first ? x : _mm512_add_ps(x, _mm512_loadu_ps(dst)));
        }
}

/* s[m][64] <- st[64][m16] for the first n keys (keys past n: 0). */
static void st_to_s(const float *st, int32_t ldst, int m, int n, float *s) {
    __m512 r[16];
    for (int i0 = 0; i0 < m; i0 += 16) {
        for (int kb = 0; kb < ATTN_TILE / 16; kb++) {
            if (kb * 16 < n) {
                UNROLL for (int k = 0; k < 16; k++) r[k] = _mm512_loadu_ps(st + (size_t)(kb * 16 + k) * (size_t)ldst + i0);
                transpose16(r);
            } else {
                UNROLL for (int k = 0; k < 16; k++) r[k] = _mm512_setzero_ps();
            }
            for (int i = 0; i < 16 && i0 + i < m; i++) _mm512_storeu_ps(s + (size_t)(i0 + i) * ATTN_TILE + kb * 16, r[i]);
        }
    }
}

static void amx_qk_any(const attn_geom *g, const void *qp, int m, int n, void *ktv, float *s, int fp8) {
    const uint32_t *qt = (const uint32_t *)qp;
    const uint16_t *kc = kc_of(ktv);
    const float *ks = kscales_of(g, ktv);
    float *st = st_of(g, ktv);
    const int32_t m16 = m16_of(m), np = g->dpad / 2;
    const int nkb = (n + 15) / 16;
    tiles_on();
    for (int i0 = 0; i0 < m16; i0 += 16) {
        const uint32_t *qtb = qt + (size_t)(i0 / 16) * (size_t)np * 16;
        if (fp8) {
            for (int seg = 0; seg < 5; seg++)
                amx_st_block(kc, g->dpad, qtb, nkb, seg * 128, seg < 4 ? seg * 128 + 128 : PKV_MLA656_DIM,
                             seg < 4 ? ks + seg * ATTN_TILE : NULL, st + i0, m16, seg == 0);
        } else {
            amx_st_block(kc, g->dpad, qtb, nkb, 0, g->dpad, NULL, st + i0, m16, 1);
        }
    }
    _tile_release();
    st_to_s(st, m16, m, n, s);
}

static void amx_qk(const attn_geom *g, const void *qp, int m, int n, const void *ktv, float *s) {
    amx_qk_any(g, qp, m, n, (void *)(uintptr_t)ktv, s, 0);
}

static void amx_qk_fp8(const attn_geom *g, const void *qp, int m, int n, const void *ktv, float *s) {
    amx_qk_any(g, qp, m, n, (void *)(uintptr_t)ktv, s, 1);
}

/* P = hi + lo to about 2^-18 relative: hi = bf16(P) (nearest even), lo =
 * bf16(P - hi), the difference being exact in float32. 32 floats (a: the first
 * 16, b: the next 16) -> 32 bf16 each. P V then costs two bf16 tile products
 * sharing the V tiles, but keeps float32 accuracy in the weights (a bf16 P
 * alone errs by up to 2^-9 of each weight: ~1e-3 in out for peaked attention). */
AI void split_bf16x32(__m512 a, __m512 b, __m512i *hi, __m512i *lo) {
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a);
    const __m512 ha = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
    const __m512 hb = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
    *hi = h;
    *lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, hb), _mm512_sub_ps(a, ha));
}

/* Row r of 16: 64 weights w (float32) -> ph[r][0..64) high parts, pl[r][0..64) residuals. */
AI void split_row(const float *w, uint16_t *ph, uint16_t *pl) {
    __m512i h, l;
    split_bf16x32(_mm512_loadu_ps(w), _mm512_loadu_ps(w + 16), &h, &l);
    _mm512_store_si512(ph, h);
    _mm512_store_si512(pl, l);
    split_bf16x32(_mm512_loadu_ps(w + 32), _mm512_loadu_ps(w + 48), &h, &l);
    _mm512_store_si512(ph + 32, h);
    _mm512_store_si512(pl + 32, l);
}

/* O rows r0..r0+16 (stride ldo floats) += (Ph + Pl) V over dims [0, dv) (dv % 16 == 0);
 * ph, pl: [16][64] bf16. Tiles: 0-1 C, 2-3 Ph (keys 0..31, 32..63), 4-5 Pl, 6-7 V. */
/* O[:, c..c+32) += P_hi V + P_lo V over 32 keys: P's high and low bf16 parts sit
 * in tiles 2/3 and 4/5 (keys 0-15 / 16-31), V rows come from vt in pairs. */
static inline __attribute__((always_inline)) void amx_pv_cols32(float *o, int32_t c, const uint32_t *vt,
                                                                 int32_t dvpad, size_t ldv, size_t ldo_bytes) {
    _tile_loadd(0, o + c, ldo_bytes);
    _tile_loadd(1, o + c + 16, ldo_bytes);
    _tile_loadd(6, vt + c, ldv);
    _tile_loadd(7, vt + c + 16, ldv);
    _tile_dpbf16ps(0, 2, 6);
    _tile_dpbf16ps(1, 2, 7);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(6, vt + (size_t)16 * (size_t)dvpad + c, ldv);
    _tile_loadd(7, vt + (size_t)16 * (size_t)dvpad + c + 16, ldv);
    _tile_dpbf16ps(0, 3, 6);
    _tile_dpbf16ps(1, 3, 7);
    _tile_dpbf16ps(0, 5, 6);
    _tile_dpbf16ps(1, 5, 7);
    _tile_stored(0, o + c, ldo_bytes);
    _tile_stored(1, o + c + 16, ldo_bytes);
}

static void amx_pv16(const uint16_t *ph, const uint16_t *pl, const uint32_t *vt, int32_t dvpad, float *o,
                     size_t ldo_bytes, int32_t dv) {
    const size_t ldv = (size_t)dvpad * 4;
    _tile_loadd(2, ph, ATTN_TILE * 2);
    _tile_loadd(3, ph + 32, ATTN_TILE * 2);
    _tile_loadd(4, pl, ATTN_TILE * 2);
    _tile_loadd(5, pl + 32, ATTN_TILE * 2);
    int32_t c = 0;
    for (; c + 32 <= dv; c += 32) {
        amx_pv_cols32(o, c, vt, dvpad, ldv, ldo_bytes);
    }
    for (; c < dv; c += 16) {
        _tile_loadd(0, o + c, ldo_bytes);
        _tile_loadd(6, vt + c, ldv);
        _tile_dpbf16ps(0, 2, 6);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(6, vt + (size_t)16 * (size_t)dvpad + c, ldv);
        _tile_dpbf16ps(0, 3, 6);
        _tile_dpbf16ps(0, 5, 6);
        _tile_stored(0, o + c, ldo_bytes);
    }
}

static void amx_pv(const attn_geom *g, const void *pp, int m, int n, const void *vtv, float *const *o,
                   const float *alpha) {
    const float *p = (const float *)pp;
    const uint32_t *vt = (const uint32_t *)vtv;
    const int32_t dv = g->dv;
    /* output rows must be equally spaced to be one tile's rows */
    const ptrdiff_t ldo = m > 1 ? o[1] - o[0] : dv;
    int uniform = dv % 16 == 0 && ldo >= dv;
    for (int r = 2; uniform && r < m; r++) uniform = o[r] - o[r - 1] == ldo;
    const int m16 = uniform ? m / 16 * 16 : 0;
    if (m16) {
        uint16_t ph[16 * ATTN_TILE] __attribute__((aligned(64))), pl[16 * ATTN_TILE] __attribute__((aligned(64)));
        tiles_on();
        for (int i = 0; i < m16; i += 16) {
            for (int r = i; r < i + 16; r++) {
                if (alpha[r] != 1.0f) {
                    const __m512 a = _mm512_set1_ps(alpha[r]);
                    for (int32_t c = 0; c < dv; c += 16)
                        _mm512_storeu_ps(o[r] + c, _mm512_mul_ps(a, _mm512_loadu_ps(o[r] + c)));
                }
                split_row(p + (size_t)r * ATTN_TILE, ph + (size_t)(r - i) * ATTN_TILE, pl + (size_t)(r - i) * ATTN_TILE);
            }
            amx_pv16(ph, pl, vt, g->dvpad, o[i], (size_t)ldo * sizeof(float), dv);
        }
        _tile_release();
    }
    if (m > m16) attn_avx512_dp_pv(g, p + (size_t)m16 * ATTN_TILE, m - m16, n, vtv, o + m16, alpha + m16);
}

/* ---- FP8_MLA656 rows: per-128-dim scales of each key ---- */
/* O rows r0..r0+16 (stride ldo floats) += sum_t W_t V over the dims [128 t,
 * 128 t + 128) of scale segment t, W_t = P * (the keys' scales of segment t),
 * split into high parts and residuals (split_bf16x32), so the weights keep
 * float32 accuracy and the products accumulate in place in O's C tiles. */
static void amx_pv16_fp8(const float *p, const uint32_t *vt, int32_t dvpad, const float *vs, float *o,
                         size_t ldo_bytes) {
    uint16_t ph[16 * ATTN_TILE] __attribute__((aligned(64))), pl[16 * ATTN_TILE] __attribute__((aligned(64)));
    float w[ATTN_TILE] __attribute__((aligned(64)));
    const size_t ldv = (size_t)dvpad * 4;
    for (int t = 0; t < 4; t++) {
        const float *sc = vs + t * ATTN_TILE;
        for (int r = 0; r < 16; r++) {
            const float *pr = p + (size_t)r * ATTN_TILE;
            UNROLL for (int v = 0; v < 4; v++)
                _mm512_store_ps(w + 16 * v, _mm512_mul_ps(_mm512_loadu_ps(pr + 16 * v), _mm512_loadu_ps(sc + 16 * v)));
            split_row(w, ph + (size_t)r * ATTN_TILE, pl + (size_t)r * ATTN_TILE);
        }
        _tile_loadd(2, ph, ATTN_TILE * 2);
        _tile_loadd(3, ph + 32, ATTN_TILE * 2);
        _tile_loadd(4, pl, ATTN_TILE * 2);
        _tile_loadd(5, pl + 32, ATTN_TILE * 2);
        for (int32_t c = 128 * t; c < 128 * t + 128; c += 32) {
            amx_pv_cols32(o, c, vt, dvpad, ldv, ldo_bytes);
        }
    }
}

static void amx_pv_fp8(const attn_geom *g, const void *pp, int m, int n, const void *vtv, float *const *o,
                       const float *alpha) {
    const float *p = (const float *)pp;
    const uint32_t *vt = (const uint32_t *)vtv;
    const float *vs = (const float *)(const void *)(vt + (size_t)(ATTN_TILE / 2) * (size_t)g->dvpad);
    const int32_t dv = g->dv;
    /* output rows must be equally spaced to be one tile's rows */
    const ptrdiff_t ldo = m > 1 ? o[1] - o[0] : dv;
    int uniform = dv == 512 && ldo >= dv;
    for (int r = 2; uniform && r < m; r++) uniform = o[r] - o[r - 1] == ldo;
    const int m16 = uniform ? m / 16 * 16 : 0;
    if (m16) {
        for (int r = 0; r < m16; r++)
            if (alpha[r] != 1.0f) {
                const __m512 a = _mm512_set1_ps(alpha[r]);
                for (int32_t c = 0; c < dv; c += 16) _mm512_storeu_ps(o[r] + c, _mm512_mul_ps(a, _mm512_loadu_ps(o[r] + c)));
            }
        tiles_on();
        for (int i = 0; i < m16; i += 16)
            amx_pv16_fp8(p + (size_t)i * ATTN_TILE, vt, g->dvpad, vs, o[i], (size_t)ldo * sizeof(float));
        _tile_release();
    }
    if (m > m16) attn_avx512_dp_pv(g, p + (size_t)m16 * ATTN_TILE, m - m16, n, vtv, o + m16, alpha + m16);
}

const attn_ops *attn_ops_amx(int q_dtype, int kv_dtype) {
    static const attn_ops ops = {"amx-bf16", 32, 2, 16, amx_prep_q, amx_load_tile, amx_qk,
                                 attn_avx512_softmax, amx_pv, &attn_avx512_ops_rows, 0, 0};
    static const attn_ops ops_fp8 = {"amx-fp8-bf16", 32, 2, 16, amx_prep_q, amx_fp8_load_tile,
                                     amx_qk_fp8, attn_avx512_softmax, amx_pv_fp8, NULL, 0, 0};
    if (q_dtype == PKV_BF16 && kv_dtype == PKV_BF16) return &ops;
    if (q_dtype == PKV_BF16 && kv_dtype == PKV_FP8_MLA656) return &ops_fp8;
    return NULL;
}
