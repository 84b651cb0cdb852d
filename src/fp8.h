/* OCP FP8 e4m3 ("fn": bias 7, no infinities, 0x7f/0xff NaN, max 448) and
 * FlashMLA's 656-byte MLA row, for storage writes and the attention oracle. */
#ifndef PKV_FP8_H
#define PKV_FP8_H

#include <stdint.h>

#include "internal.h"

#define PKV_MLA656_BYTES 656
#define PKV_MLA656_LATENT 512 /* e4m3 values, bytes [0, 512) */
#define PKV_MLA656_TILE 128   /* values per float32 scale */
#define PKV_MLA656_SCALES 512 /* byte offset of the 4 little-endian float32 scales */
#define PKV_MLA656_ROPE 528   /* byte offset of the 64 little-endian bf16 RoPE values */
#define PKV_MLA656_DIM 576    /* dequantized values per row */

/* Exact value of an e4m3 code (NaN for 0x7f and 0xff). */
PKV_HIDDEN float fp8_e4m3_to_f32(uint8_t code);
/* Nearest e4m3 code to x, ties to even; |x| above 448 saturates to +-448.
 * x must not be NaN (callers refuse non-finite input first). */
PKV_HIDDEN uint8_t fp8_f32_to_e4m3(float x);
/* Dequantizes a 656-byte row into x[576] in double precision: latent values are
 * exactly fp8 * scale, RoPE values exactly the stored bfloat16. */
PKV_HIDDEN void fp8_mla656_dequant_f64(const uint8_t *row, double *x);

/* The scale of a tile whose largest |value| has float bits amax_bits: amax / 448,
 * or with pow2 2^ceil(log2(max(amax / 448, 1e-4))); 0 for an all-zero tile. */
PKV_HIDDEN float fp8_tile_scale(uint32_t amax_bits, int pow2);
/* pkv_mla656_quantize's portable body (x, row non-NULL). */
PKV_HIDDEN int fp8_quantize_portable(const float *x, uint8_t *row, int pow2_scale);
/* pkv_mla656_quantize's body for AVX2 CPUs (x, row non-NULL). Same results. */
PKV_HIDDEN int fp8_quantize_avx2(const float *x, uint8_t *row, int pow2_scale);
/* pkv_mla656_quantize's body for AVX-512 F/BW CPUs (x, row non-NULL). Same results. */
PKV_HIDDEN int fp8_quantize_avx512(const float *x, uint8_t *row, int pow2_scale);

#endif
