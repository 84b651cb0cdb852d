/* Page tables for kernels: FlashMLA's padded block table, FlashInfer's CSR
 * form, and the slot mapping of the last appended tokens. Each export first
 * resolves every handle and sizes the output, so a bad handle or a small
 * buffer writes nothing. */
#include <string.h>

#include "internal.h"

/* Resolves seqs[0..b) and returns the largest block count and the sum of block
 * counts; fails on a NULL list, a bad count or a stale handle. */
static int resolve(pkv_cache *c, const pkv_seq *seqs, int32_t b, int32_t *max_blocks, int64_t *sum_blocks) {
    RETURN_IF(b < 0, PKV_ERR_INVALID);
    RETURN_IF(b > 0 && !seqs, PKV_ERR_NULL);
    int32_t mx = 0;
    int64_t sum = 0;
    for (int32_t i = 0; i < b; i++) {
        const pkv_seq_rec *r = seq_get(&c->seqs, seqs[i]);
        if (!r) return cache_fail(c, PKV_ERR_NO_SEQ, "seqs[%d] = %lld is not live", i, (long long)seqs[i]);
        if (r->swapped) return cache_fail(c, PKV_ERR_STATE, "seqs[%d] = %lld is swapped out", i, (long long)seqs[i]);
        FORWARD_IF_ERROR(cache_seq_loading(c, r, "export"));
        if (r->nblocks > mx) mx = r->nblocks;
        sum += r->nblocks;
    }
    *max_blocks = mx;
    *sum_blocks = sum;
    return PKV_OK;
}

static int export_flashmla(pkv_cache *c, const pkv_seq *seqs, int32_t b, int32_t *table, int32_t mbps,
                           int32_t *seqlens, int32_t *needed) {
    int32_t mx;
    int64_t sum;
    FORWARD_IF_ERROR(resolve(c, seqs, b, &mx, &sum));
    if (needed) *needed = mx;
    RETURN_IF(mbps < 0, PKV_ERR_INVALID);
    if (mx > mbps)
        return cache_fail(c, PKV_ERR_BUFFER, "block_table needs max_blocks_per_seq >= %d, got %d", mx, mbps);
    RETURN_IF(b > 0 && (!seqlens || (mbps > 0 && !table)), PKV_ERR_NULL);
    for (int32_t i = 0; i < b; i++) {
        const pkv_seq_rec *r = seq_get(&c->seqs, seqs[i]);
        seqlens[i] = r->len;
        if (mbps == 0) continue; /* table may be NULL: not even NULL + 0 */
        int32_t *row = table + (size_t)i * (size_t)mbps;
        if (r->nblocks) memcpy(row, r->blocks, (size_t)r->nblocks * sizeof *row);
        for (int32_t j = r->nblocks; j < mbps; j++) row[j] = -1;
    }
    return PKV_OK;
}

static int export_flashinfer(pkv_cache *c, const pkv_seq *seqs, int32_t b, int32_t *indptr, int32_t *indices,
                             int32_t cap, int32_t *last_len, int32_t *needed) {
    int32_t mx;
    int64_t sum;
    FORWARD_IF_ERROR(resolve(c, seqs, b, &mx, &sum));
    RETURN_IF(sum > INT32_MAX, PKV_ERR_INVALID);
    if (needed) *needed = (int32_t)sum;
    RETURN_IF(cap < 0, PKV_ERR_INVALID);
    if (sum > cap)
        return cache_fail(c, PKV_ERR_BUFFER, "kv_indices needs %lld entries, got %d", (long long)sum, cap);
    RETURN_IF(!indptr || (b > 0 && !last_len) || (sum > 0 && !indices), PKV_ERR_NULL);
    int32_t at = 0, bs = c->pool.block_size;
    indptr[0] = 0;
    for (int32_t i = 0; i < b; i++) {
        const pkv_seq_rec *r = seq_get(&c->seqs, seqs[i]);
        if (r->nblocks) memcpy(indices + at, r->blocks, (size_t)r->nblocks * sizeof *indices);
        at += r->nblocks;
        indptr[i + 1] = at;
        last_len[i] = r->len == 0 ? 0 : r->len - (r->nblocks - 1) * bs;
    }
    return PKV_OK;
}

static int export_slots(pkv_cache *c, const pkv_seq *seqs, int32_t b, int64_t *slots, int32_t cap, int32_t *n) {
    int32_t mx;
    int64_t sum;
    FORWARD_IF_ERROR(resolve(c, seqs, b, &mx, &sum));
    int64_t total = 0;
    for (int32_t i = 0; i < b; i++) total += seq_get(&c->seqs, seqs[i])->last_n;
    RETURN_IF(total > INT32_MAX, PKV_ERR_INVALID);
    *n = (int32_t)total;
    RETURN_IF(cap < 0, PKV_ERR_INVALID);
    if (total > cap)
        return cache_fail(c, PKV_ERR_BUFFER, "slot mapping needs %lld entries, got %d", (long long)total, cap);
    RETURN_IF(total > 0 && !slots, PKV_ERR_NULL);
    int32_t bs = c->pool.block_size, at = 0;
    for (int32_t i = 0; i < b; i++) {
        const pkv_seq_rec *r = seq_get(&c->seqs, seqs[i]);
        for (int32_t pos = r->last_start; pos < r->last_start + r->last_n; pos++)
            slots[at++] = (int64_t)r->blocks[pos / bs] * bs + pos % bs;
    }
    return PKV_OK;
}

int pkv_export_flashmla(pkv_cache *c, const pkv_seq *seqs, int32_t b, int32_t *block_table,
                        int32_t max_blocks_per_seq, int32_t *cache_seqlens, int32_t *needed) {
    CACHE_ENTER(c);
    CACHE_LEAVE(c, export_flashmla(c, seqs, b, block_table, max_blocks_per_seq, cache_seqlens, needed));
}

int pkv_export_flashinfer(pkv_cache *c, const pkv_seq *seqs, int32_t b, int32_t *kv_indptr, int32_t *kv_indices,
                          int32_t indices_cap, int32_t *kv_last_page_len, int32_t *needed) {
    CACHE_ENTER(c);
    CACHE_LEAVE(c, export_flashinfer(c, seqs, b, kv_indptr, kv_indices, indices_cap, kv_last_page_len, needed));
}

int pkv_export_slot_mapping(pkv_cache *c, const pkv_seq *seqs, int32_t b, int64_t *slots, int32_t cap,
                            int32_t *n) {
    RETURN_IF(!n, PKV_ERR_NULL);
    CACHE_ENTER(c);
    CACHE_LEAVE(c, export_slots(c, seqs, b, slots, cap, n));
}
