/* Argument validation shared by every attention path (contract in attn.h). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "attn.h"
#include "fp8.h"

/* Product of the factors (each >= 1) times elem_bytes, or 0 when it exceeds
 * PTRDIFF_MAX: then some pointer offset into that array could not be formed. */
static size_t checked_bytes(size_t elem_bytes, int n, const int64_t *factors) {
    size_t total = elem_bytes;
    for (int i = 0; i < n; i++) {
        uint64_t f = (uint64_t)factors[i];
        if (f != 0 && total > (size_t)PTRDIFF_MAX / f) return 0;
        total *= (size_t)f;
    }
    return total;
}

static int is_plain_dtype(int32_t t) { return t == PKV_F32 || t == PKV_F16 || t == PKV_BF16; }

static int check_shapes(const pkv_attn_args *a, int sparse) {
    RETURN_IF(a->batch < 1 || a->s_q < 1 || a->h_q < 1 || a->h_kv < 1, PKV_ERR_INVALID);
    RETURN_IF(a->d < 1 || a->dv < 1 || a->block_size < 1 || a->num_blocks < 1, PKV_ERR_INVALID);
    RETURN_IF(!sparse && a->max_blocks_per_seq < 1, PKV_ERR_INVALID);
    RETURN_IF(a->v_cache == NULL && a->dv > a->d, PKV_ERR_INVALID);
    RETURN_IF(a->causal != 0 && a->causal != 1, PKV_ERR_INVALID);
    RETURN_IF(sparse && a->causal != 0, PKV_ERR_INVALID);
    RETURN_IF(sparse && a->topk < 1, PKV_ERR_INVALID);
    RETURN_IF(!isfinite(a->softmax_scale), PKV_ERR_INVALID);
    RETURN_IF(a->window < 0 || a->reserved != 0 || (sparse && a->window != 0), PKV_ERR_INVALID);
    return PKV_OK;
}

static int check_dtypes(const pkv_attn_args *a) {
    RETURN_IF(!is_plain_dtype(a->q_dtype), PKV_ERR_DTYPE);
    if (a->kv_dtype == PKV_FP8_MLA656) {
        RETURN_IF(a->h_kv != 1 || a->d != PKV_MLA656_DIM || a->dv != PKV_MLA656_LATENT || a->v_cache != NULL,
                  PKV_ERR_DTYPE);
        return PKV_OK;
    }
    RETURN_IF(!is_plain_dtype(a->kv_dtype), PKV_ERR_DTYPE);
    return PKV_OK;
}

/* Every array's byte size fits in ptrdiff_t (dtypes already checked). */
static int check_sizes(const pkv_attn_args *a, int sparse) {
    size_t qes = pkv_dtype_size(a->q_dtype);
    int64_t q[] = {a->batch, a->s_q, a->h_q, a->d};
    int64_t o[] = {a->batch, a->s_q, a->h_q, a->dv};
    int64_t k[] = {a->num_blocks, a->block_size};
    int64_t v[] = {a->num_blocks, a->block_size, a->h_kv, a->dv};
    RETURN_IF(checked_bytes(qes, 4, q) == 0, PKV_ERR_INVALID);
    RETURN_IF(checked_bytes(sizeof(float), 4, o) == 0, PKV_ERR_INVALID);
    size_t slot = pkv_row_bytes(a->kv_dtype, a->h_kv, a->d);
    RETURN_IF(slot == 0 || checked_bytes(slot, 2, k) == 0, PKV_ERR_INVALID);
    if (a->v_cache)
        RETURN_IF(checked_bytes(pkv_dtype_size(a->kv_dtype), 4, v) == 0, PKV_ERR_INVALID);
    if (sparse) {
        int64_t ix[] = {a->batch, a->s_q, a->topk};
        RETURN_IF(checked_bytes(sizeof(int32_t), 3, ix) == 0, PKV_ERR_INVALID);
    } else {
        int64_t bt[] = {a->batch, a->max_blocks_per_seq};
        RETURN_IF(checked_bytes(sizeof(int32_t), 2, bt) == 0, PKV_ERR_INVALID);
    }
    return PKV_OK;
}

static int check_dense_tables(const pkv_attn_args *a) {
    const int64_t cap = (int64_t)a->max_blocks_per_seq * a->block_size;
    for (int32_t b = 0; b < a->batch; b++) {
        const int32_t len = a->cache_seqlens[b];
        RETURN_IF(len < 0 || len > cap, PKV_ERR_SEQLEN);
        const int32_t *row = a->block_table + (size_t)b * (size_t)a->max_blocks_per_seq;
        const int32_t used = (int32_t)(((int64_t)len + a->block_size - 1) / a->block_size);
        int32_t start, end;
        attn_key_range(a, len, 0, &start, &end); /* query 0 starts first (attn.h) */
        for (int32_t j = start / a->block_size; j < used; j++)
            RETURN_IF(row[j] < 0 || row[j] >= a->num_blocks, PKV_ERR_BLOCK_ID);
    }
    return PKV_OK;
}

static int check_indices(const pkv_attn_args *a) {
    const int64_t slots = (int64_t)a->num_blocks * a->block_size;
    const size_t n = (size_t)a->batch * (size_t)a->s_q * (size_t)a->topk;
    for (size_t i = 0; i < n; i++) {
        const int32_t s = a->indices[i];
        RETURN_IF(s != -1 && (s < 0 || s >= slots), PKV_ERR_SLOT);
    }
    return PKV_OK;
}

int attn_validate(const pkv_attn_args *a) {
    RETURN_IF(a == NULL, PKV_ERR_NULL);
    const int sparse = a->indices != NULL;
    RETURN_IF(a->q == NULL || a->k_cache == NULL || a->out == NULL, PKV_ERR_NULL);
    RETURN_IF(!sparse && (a->block_table == NULL || a->cache_seqlens == NULL), PKV_ERR_NULL);
    FORWARD_IF_ERROR(check_shapes(a, sparse));
    RETURN_IF(a->h_q % a->h_kv != 0, PKV_ERR_HEADS);
    FORWARD_IF_ERROR(check_dtypes(a));
    FORWARD_IF_ERROR(check_sizes(a, sparse));
    return sparse ? check_indices(a) : check_dense_tables(a);
}
