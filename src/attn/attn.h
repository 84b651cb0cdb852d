/* Internal header shared by the attention modules: the reference oracle
 * (reference.c) and the fast path (fast*.c). Validation lives in one place so
 * both paths refuse exactly the same arguments with exactly the same status. */
#ifndef PKV_ATTN_H
#define PKV_ATTN_H

#include "internal.h"

/* attn_validate — checks every field of a against pkv_attn_reference's contract
 * and returns PKV_OK or the first failing status. Reads a's arrays (block_table,
 * cache_seqlens, indices, not q/K/V) and writes nothing. Checks, in this order:
 *  PKV_ERR_NULL     a, q, k_cache, out; dense mode also block_table, cache_seqlens
 *                   (sparse mode: indices != NULL; lse, v_cache, attn_sink optional)
 *  PKV_ERR_INVALID  batch, s_q, h_q, h_kv, d, dv, block_size, num_blocks < 1;
 *                   max_blocks_per_seq < 1 (dense mode only); dv > d with
 *                   v_cache == NULL; causal not 0/1; causal == 1 in sparse mode;
 *                   topk < 1 in sparse mode; softmax_scale not finite; window < 0,
 *                   reserved != 0, window != 0 in sparse mode; any array
 *                   size (in bytes) above PTRDIFF_MAX
 *  PKV_ERR_HEADS    h_q % h_kv != 0
 *  PKV_ERR_DTYPE    q_dtype not F32/F16/BF16; kv_dtype not F32/F16/BF16/FP8_MLA656;
 *                   FP8_MLA656 unless h_kv == 1, d == 576, dv == 512, v_cache == NULL
 *  PKV_ERR_SEQLEN   dense: cache_seqlens[b] outside [0, max_blocks_per_seq*block_size]
 *  PKV_ERR_BLOCK_ID dense: one of the entries of row b covering the keys
 *                   [start, len) outside [0, num_blocks), start the first key of
 *                   query 0 (attn_key_range; 0 without a window): entries
 *                   [start / block_size, ceil(len / block_size)); the others
 *                   are never read
 *  PKV_ERR_SLOT     sparse: an index neither -1 nor in [0, num_blocks*block_size)
 * On PKV_OK, every index computed from the arguments (element offsets of q, out,
 * lse, the caches, table and indices) fits in ptrdiff_t, and every slot a kernel
 * would read lies inside the cache. attn_sink values are not checked (a NaN sink
 * gives NaN outputs, as NaN in q would). s_q == 1 with causal == 1 is accepted and
 * means the same as causal == 0 (query 0 sees all L keys). */
PKV_HIDDEN int attn_validate(const pkv_attn_args *a);

/* The oracle's computation of one query row: token i of sequence b, query head
 * h (reference.c). Writes out_row[0..dv) and returns the lse, exactly as
 * pkv_attn_reference does for that row (same double arithmetic, same rounding,
 * sink included). xs: pkv__attn_row_doubles(d, dv) doubles of scratch; scores: NULL, or
 * room for the row's keys (then each score is computed once instead of twice;
 * the results are the same). a must have passed attn_validate. The fast path
 * calls it for rows that met a non-finite value: its float arithmetic cannot
 * say what such a row should be, the oracle's definition can. */
PKV_HIDDEN float pkv__attn_ref_row(const pkv_attn_args *a, int32_t b, int32_t i, int32_t h, double *xs, double *scores,
                              float *out_row);
PKV_HIDDEN size_t pkv__attn_row_doubles(int32_t d, int32_t dv);
/* x rounded to float, saturating to +-inf beyond the float range (no
 * out-of-range conversion). */
PKV_HIDDEN float pkv__f32_sat(double x);

/* Bytes of one cache slot of K (all h_kv heads; 656 for FP8_MLA656). Valid after
 * attn_validate succeeded. */
static inline size_t attn_k_slot_bytes(const pkv_attn_args *a) {
    return pkv_row_bytes(a->kv_dtype, a->h_kv, a->d);
}

/* Number of keys query i (0 <= i < s_q) of a dense sequence of length len sees:
 * the keys [0, n). Causal with s_q > 1: n = clamp(len - s_q + i + 1, 0, len). */
static inline int32_t attn_visible_keys(const pkv_attn_args *a, int32_t len, int32_t i) {
    if (!a->causal || a->s_q <= 1) return len;
    int64_t n = (int64_t)len - a->s_q + i + 1;
    return n < 0 ? 0 : (n > len ? len : (int32_t)n);
}

/* The keys [*start, *end) query i (0 <= i < s_q) of a dense sequence of length
 * len attends to: end = attn_visible_keys, start = max(0, end - window) with a
 * sliding window (window > 0), else 0. Both grow with i, so query 0 has the
 * earliest start of a sequence: table entries of blocks wholly before it are
 * never read (an engine may have released them). */
static inline void attn_key_range(const pkv_attn_args *a, int32_t len, int32_t i, int32_t *start, int32_t *end) {
    const int32_t n = attn_visible_keys(a, len, i);
    *end = n;
    *start = a->window > 0 && n > a->window ? n - a->window : 0;
}

#endif
