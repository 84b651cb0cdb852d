/* The dtype table: everything the library knows about a storage type in one
 * entry (ggml's type_traits): element or row size, the geometry it requires,
 * the conversions of a row to and from float32, which source rows a cache of
 * it accepts, and whether its rows may be copied as bytes. A new dtype is one
 * entry here (and its kernels in src/attn/). */
#include <string.h>

#include "fp8.h"
#include "internal.h"

static void f32_in(void *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }
static void f32_out(float *dst, const void *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }
static void f16_in(void *dst, const float *src, size_t n) {
    uint16_t *o = dst;
    for (size_t i = 0; i < n; i++) o[i] = pkv_f32_to_f16(src[i]);
}
static void f16_out(float *dst, const void *src, size_t n) {
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = pkv_f16_to_f32(s[i]);
}
static void bf16_in(void *dst, const float *src, size_t n) {
    uint16_t *o = dst;
    for (size_t i = 0; i < n; i++) o[i] = pkv_f32_to_bf16(src[i]);
}
static void bf16_out(float *dst, const void *src, size_t n) {
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = pkv_bf16_to_f32(s[i]);
}
/* A whole 656-byte MLA row: n is always PKV_MLA656_DIM. Writes quantize with
 * amax / 448 scales here; the store passes the power-of-two choice itself. */
static void mla656_out(float *dst, const void *src, size_t n) {
    (void)n;
    (void)pkv_mla656_dequantize(src, dst);
}

#define BIT(t) (1u << (t))

static const pkv_dtype_traits table[] = {
    [PKV_F32] = {"f32", 4, 0, 0, 0, 0, 1, f32_in, f32_out, BIT(PKV_F32)},
    [PKV_F16] = {"f16", 2, 0, 0, 0, 0, 1, f16_in, f16_out, BIT(PKV_F16) | BIT(PKV_F32)},
    [PKV_BF16] = {"bf16", 2, 0, 0, 0, 0, 1, bf16_in, bf16_out, BIT(PKV_BF16) | BIT(PKV_F32)},
    [PKV_FP8_MLA656] = {"fp8_mla656", 0, PKV_MLA656_BYTES, 1, PKV_MLA656_DIM, 512, 0, NULL, mla656_out,
                        BIT(PKV_FP8_MLA656) | BIT(PKV_F32) | BIT(PKV_BF16)},
};

const pkv_dtype_traits *pkv__dtype(int dtype) {
    if (dtype < 0 || dtype >= (int)(sizeof table / sizeof table[0]) || !table[dtype].name) return NULL;
    return &table[dtype];
}

size_t pkv_dtype_size(int dtype) {
    const pkv_dtype_traits *t = pkv__dtype(dtype);
    return t ? t->elem : 0;
}

size_t pkv_row_bytes(int dtype, int32_t h_kv, int32_t d) {
    const pkv_dtype_traits *t = pkv__dtype(dtype);
    if (!t || h_kv <= 0 || d <= 0) return 0;
    if (t->fixed_row) return (h_kv == t->h_kv && d == t->d) ? t->fixed_row : 0;
    return t->elem * (size_t)h_kv * (size_t)d;
}

int pkv__dtype_geometry_ok(int dtype, int32_t h_kv, int32_t d, int32_t dv, int v_separate) {
    const pkv_dtype_traits *t = pkv__dtype(dtype);
    if (!t || pkv_row_bytes(dtype, h_kv, d) == 0) return 0;
    /* A fixed row holds K and V (V = its first dv values): no V arena. */
    return !t->fixed_row || (!v_separate && dv == t->dv);
}
