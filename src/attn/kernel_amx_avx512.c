/* AMX-BF16 kernels for q bf16 with K/V bf16 (compiled with ISA_AVX512 flags,
 * which include -mamx-tile -mamx-bf16; used only when cpu.c found AMX usable
 * and the OS granted the tile state).
 *
 * They reuse the AVX-512 bf16 layouts, which are exactly AMX's operand forms:
 * qp [m][dpad] bf16 is the A operand of Q K^T, K^T [dpad/2][64] dwords (two
 * dims of one key) is its B operand in VNNI form, V [32][dvpad] dwords (one dim
 * of two keys) is the B operand of P V. Query rows go 16 at a time (one tile's
 * rows); a remainder of m % 16 rows, and P V when the output rows are not
 * equally spaced, fall back to the AVX-512 kernels. The online-softmax rescale
 * of O is an AVX-512 pass over the rows whose running max moved (alpha != 1),
 * which after the first tiles is rare. */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

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

/* S[16 rows][64 keys] = Q[16][dpad] . K^T for one row block: tiles 0-3 hold the
 * four 16-key column blocks, 4 the Q chunk, 5-6 the K^T chunks. */
static void amx_qk16(const uint16_t *q, size_t ldq_bytes, const uint32_t *kt, int32_t dpad, float *s) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int32_t c = 0; c < dpad; c += 32) {
        const uint32_t *kb = kt + (size_t)(c / 2) * ATTN_TILE;
        _tile_loadd(4, q + c, ldq_bytes);
        _tile_loadd(5, kb, ATTN_TILE * 4);
        _tile_loadd(6, kb + 16, ATTN_TILE * 4);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(5, kb + 32, ATTN_TILE * 4);
        _tile_loadd(6, kb + 48, ATTN_TILE * 4);
        _tile_dpbf16ps(2, 4, 5);
        _tile_dpbf16ps(3, 4, 6);
    }
    _tile_stored(0, s, ATTN_TILE * 4);
    _tile_stored(1, s + 16, ATTN_TILE * 4);
    _tile_stored(2, s + 32, ATTN_TILE * 4);
    _tile_stored(3, s + 48, ATTN_TILE * 4);
}

static void amx_qk(const attn_geom *g, const void *qp, int m, int n, const void *ktv, float *s) {
    const uint16_t *q = (const uint16_t *)qp;
    const size_t ldq = (size_t)g->dpad * 2;
    const int m16 = m / 16 * 16;
    if (m16) {
        tiles_on();
        for (int i = 0; i < m16; i += 16)
            amx_qk16(q + (size_t)i * (size_t)g->dpad, ldq, (const uint32_t *)ktv, g->dpad, s + (size_t)i * ATTN_TILE);
        _tile_release();
    }
    if (m > m16)
        attn_avx512_dp_qk(g, q + (size_t)m16 * (size_t)g->dpad, m - m16, n, ktv, s + (size_t)m16 * ATTN_TILE);
}

/* O rows r0..r0+16 (stride ldo floats) += P16 V over dims [0, dv) (dv % 16 == 0). */
static void amx_pv16(const uint16_t *p16, const uint32_t *vt, int32_t dvpad, float *o, size_t ldo_bytes,
                     int32_t dv) {
    const size_t ldv = (size_t)dvpad * 4;
    _tile_loadd(4, p16, ATTN_TILE * 2);      /* keys 0..31 */
    _tile_loadd(5, p16 + 32, ATTN_TILE * 2); /* keys 32..63 */
    int32_t c = 0;
    for (; c + 32 <= dv; c += 32) {
        _tile_loadd(0, o + c, ldo_bytes);
        _tile_loadd(1, o + c + 16, ldo_bytes);
        _tile_loadd(6, vt + c, ldv);
        _tile_loadd(7, vt + c + 16, ldv);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(6, vt + (size_t)16 * (size_t)dvpad + c, ldv);
        _tile_loadd(7, vt + (size_t)16 * (size_t)dvpad + c + 16, ldv);
        _tile_dpbf16ps(0, 5, 6);
        _tile_dpbf16ps(1, 5, 7);
        _tile_stored(0, o + c, ldo_bytes);
        _tile_stored(1, o + c + 16, ldo_bytes);
    }
    for (; c < dv; c += 16) {
        _tile_loadd(0, o + c, ldo_bytes);
        _tile_loadd(6, vt + c, ldv);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(6, vt + (size_t)16 * (size_t)dvpad + c, ldv);
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
        /* P rows as bf16 [16][64] behind V and its scales in the vt scratch */
        uint16_t *p16 = (uint16_t *)(void *)(vt + (size_t)(ATTN_TILE / 2) * (size_t)g->dvpad + 4 * ATTN_TILE);
        tiles_on();
        for (int i = 0; i < m16; i += 16) {
            for (int r = i; r < i + 16; r++) {
                if (alpha[r] != 1.0f) {
                    const __m512 a = _mm512_set1_ps(alpha[r]);
                    for (int32_t c = 0; c < dv; c += 16)
                        _mm512_storeu_ps(o[r] + c, _mm512_mul_ps(a, _mm512_loadu_ps(o[r] + c)));
                }
                const float *pr = p + (size_t)r * ATTN_TILE;
                uint16_t *dst = p16 + (size_t)(r - i) * ATTN_TILE;
                _mm512_storeu_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(pr + 16), _mm512_loadu_ps(pr)));
                _mm512_storeu_si512(dst + 32,
                                    (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(pr + 48), _mm512_loadu_ps(pr + 32)));
            }
            amx_pv16(p16, vt, g->dvpad, o[i], (size_t)ldo * sizeof(float), dv);
        }
        _tile_release();
    }
    if (m > m16) attn_avx512_dp_pv(g, p + (size_t)m16 * ATTN_TILE, m - m16, n, vtv, o + m16, alpha + m16);
}

/* ---- FP8_MLA656 rows: per-128-dim scales of each key ---- */
/* Scores: each scale segment (4 x 128 latent dims, then 64 RoPE dims) is a
 * separate tile product, added into s times the keys' scales. */
static void amx_qk16_fp8(const uint16_t *q, size_t ldq_bytes, const uint32_t *kt, const float *ks, float *s) {
    float tmp[16 * ATTN_TILE] __attribute__((aligned(64)));
    for (int seg = 0; seg < 5; seg++) {
        const int32_t c0 = seg * 128, c1 = seg < 4 ? c0 + 128 : 576;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int32_t c = c0; c < c1; c += 32) {
            const uint32_t *kb = kt + (size_t)(c / 2) * ATTN_TILE;
            _tile_loadd(4, q + c, ldq_bytes);
            _tile_loadd(5, kb, ATTN_TILE * 4);
            _tile_loadd(6, kb + 16, ATTN_TILE * 4);
            _tile_dpbf16ps(0, 4, 5);
            _tile_dpbf16ps(1, 4, 6);
            _tile_loadd(5, kb + 32, ATTN_TILE * 4);
            _tile_loadd(6, kb + 48, ATTN_TILE * 4);
            _tile_dpbf16ps(2, 4, 5);
            _tile_dpbf16ps(3, 4, 6);
        }
        _tile_stored(0, tmp, ATTN_TILE * 4);
        _tile_stored(1, tmp + 16, ATTN_TILE * 4);
        _tile_stored(2, tmp + 32, ATTN_TILE * 4);
        _tile_stored(3, tmp + 48, ATTN_TILE * 4);
        for (int r = 0; r < 16; r++)
            for (int v = 0; v < 4; v++) {
                __m512 x = _mm512_load_ps(tmp + r * ATTN_TILE + 16 * v);
                if (seg < 4) x = _mm512_mul_ps(x, _mm512_loadu_ps(ks + seg * ATTN_TILE + 16 * v));
                float *sp = s + (size_t)r * ATTN_TILE + 16 * v;
                _mm512_storeu_ps(sp, seg ? _mm512_add_ps(x, _mm512_loadu_ps(sp)) : x);
            }
    }
}

static void amx_qk_fp8(const attn_geom *g, const void *qp, int m, int n, const void *ktv, float *s) {
    const uint16_t *q = (const uint16_t *)qp;
    const uint32_t *kt = (const uint32_t *)ktv;
    const float *ks = (const float *)(const void *)(kt + (size_t)(g->dpad / 2) * ATTN_TILE);
    const int m16 = m / 16 * 16;
    if (m16) {
        tiles_on();
        for (int i = 0; i < m16; i += 16)
            amx_qk16_fp8(q + (size_t)i * (size_t)g->dpad, (size_t)g->dpad * 2, kt, ks, s + (size_t)i * ATTN_TILE);
        _tile_release();
    }
    if (m > m16)
        attn_avx512_dp_qk(g, q + (size_t)m16 * (size_t)g->dpad, m - m16, n, ktv, s + (size_t)m16 * ATTN_TILE);
}

/* Index of the largest weight of a P row (the first one on ties). */
static int p_argmax(const float *pr) {
    const __m512 v0 = _mm512_loadu_ps(pr), v1 = _mm512_loadu_ps(pr + 16);
    const __m512 v2 = _mm512_loadu_ps(pr + 32), v3 = _mm512_loadu_ps(pr + 48);
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(v0, v1), _mm512_max_ps(v2, v3))));
    const uint64_t hit = (uint64_t)_mm512_cmpeq_ps_mask(v0, mx) | (uint64_t)_mm512_cmpeq_ps_mask(v1, mx) << 16 |
                         (uint64_t)_mm512_cmpeq_ps_mask(v2, mx) << 32 | (uint64_t)_mm512_cmpeq_ps_mask(v3, mx) << 48;
    return hit ? __builtin_ctzll(hit) : 0;
}

/* P V for 16 rows: per scale segment t the weights are P * s_t / ref_r (ref_r:
 * the scale of row r's heaviest key, so that weight is exact in bf16); the tile
 * product for the segment's dims is then folded into O as
 * O = alpha * O + ref * (P' V), which also applies the softmax rescale. */
static void amx_pv16_fp8(const float *p, const uint32_t *vt, int32_t dvpad, const float *vs, float *const *o,
                         const float *alpha, uint16_t *p16) {
    float tmp[16 * 32] __attribute__((aligned(64)));
    float ref[16];
    int jm[16];
    for (int r = 0; r < 16; r++) jm[r] = p_argmax(p + (size_t)r * ATTN_TILE);
    const size_t ldv = (size_t)dvpad * 4;
    for (int t = 0; t < 4; t++) {
        const float *sc = vs + t * ATTN_TILE;
        for (int r = 0; r < 16; r++) {
            ref[r] = sc[jm[r]] > 0.0f ? sc[jm[r]] : 1.0f;
            const __m512 inv = _mm512_set1_ps(1.0f / ref[r]);
            const float *pr = p + (size_t)r * ATTN_TILE;
            uint16_t *dst = p16 + (size_t)r * ATTN_TILE;
            for (int h = 0; h < 2; h++) {
                const __m512 lo = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(pr + 32 * h), _mm512_loadu_ps(sc + 32 * h)), inv);
                const __m512 hi =
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(pr + 32 * h + 16), _mm512_loadu_ps(sc + 32 * h + 16)), inv);
                _mm512_storeu_si512(dst + 32 * h, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            }
        }
        _tile_loadd(4, p16, ATTN_TILE * 2);
        _tile_loadd(5, p16 + 32, ATTN_TILE * 2);
        for (int32_t c = 128 * t; c < 128 * t + 128; c += 32) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_loadd(6, vt + c, ldv);
            _tile_loadd(7, vt + c + 16, ldv);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_loadd(6, vt + (size_t)16 * (size_t)dvpad + c, ldv);
            _tile_loadd(7, vt + (size_t)16 * (size_t)dvpad + c + 16, ldv);
            _tile_dpbf16ps(0, 5, 6);
            _tile_dpbf16ps(1, 5, 7);
            _tile_stored(0, tmp, 32 * 4);
            _tile_stored(1, tmp + 16, 32 * 4);
            for (int r = 0; r < 16; r++) {
                const __m512 a = _mm512_set1_ps(alpha[r]), f = _mm512_set1_ps(ref[r]);
                for (int v = 0; v < 2; v++) {
                    float *op = o[r] + c + 16 * v;
                    _mm512_storeu_ps(op, _mm512_fmadd_ps(f, _mm512_load_ps(tmp + r * 32 + 16 * v),
                                                         _mm512_mul_ps(a, _mm512_loadu_ps(op))));
                }
            }
        }
    }
}

static void amx_pv_fp8(const attn_geom *g, const void *pp, int m, int n, const void *vtv, float *const *o,
                       const float *alpha) {
    const float *p = (const float *)pp;
    const uint32_t *vt = (const uint32_t *)vtv;
    const float *vs = (const float *)(const void *)(vt + (size_t)(ATTN_TILE / 2) * (size_t)g->dvpad);
    uint16_t *p16 = (uint16_t *)(void *)(vt + (size_t)(ATTN_TILE / 2) * (size_t)g->dvpad + 4 * ATTN_TILE);
    const int m16 = m / 16 * 16;
    if (m16) {
        tiles_on();
        for (int i = 0; i < m16; i += 16)
            amx_pv16_fp8(p + (size_t)i * ATTN_TILE, vt, g->dvpad, vs, o + i, alpha + i, p16);
        _tile_release();
    }
    if (m > m16) attn_avx512_dp_pv(g, p + (size_t)m16 * ATTN_TILE, m - m16, n, vtv, o + m16, alpha + m16);
}

const attn_ops *attn_ops_amx(int q_dtype, int kv_dtype) {
    static const attn_ops ops = {"amx-bf16", 32, 2, attn_avx512_dp_prep_q, attn_avx512_dp_load_tile, amx_qk,
                                 attn_avx512_softmax, amx_pv, &attn_avx512_ops_rows, 0};
    static const attn_ops ops_fp8 = {"amx-fp8-bf16", 32, 2, attn_avx512_dp_prep_q, attn_avx512_fp8_load_tile,
                                     amx_qk_fp8, attn_avx512_softmax, amx_pv_fp8, NULL, 0};
    if (q_dtype == PKV_BF16 && kv_dtype == PKV_BF16) return &ops;
    if (q_dtype == PKV_BF16 && kv_dtype == PKV_FP8_MLA656) return &ops_fp8;
    return NULL;
}
