/* KV storage in host mode: one arena per layer in FlashMLA's layout
 * k_cache[num_blocks][block_size][h_kv][d] (plus v_cache[...][dv] when V is
 * separate), row writes with dtype conversion, and block copies for
 * copy-on-write. In metadata mode nothing here holds memory. */
#include <string.h>

#include "fp8.h"
#include "internal.h"

#define ARENA_ALIGN 64

static int arena_bytes(size_t row, int32_t num_blocks, int32_t block_size, size_t *out) {
    size_t slots = (size_t)num_blocks * (size_t)block_size;
    RETURN_IF(row && slots > (SIZE_MAX - ARENA_ALIGN) / row, PKV_ERR_INVALID);
    *out = slots * row;
    return PKV_OK;
}

int store_init(pkv_store *s, const pkv_config *cfg, const pkv_allocator *al, const pkv_pool *pool) {
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    s->al = al;
    s->pool = pool;
    if (cfg->storage != PKV_STORAGE_HOST) return PKV_OK;
    s->k_row = pkv_row_bytes(cfg->kv_dtype, cfg->h_kv, cfg->d);
    s->v_row = cfg->v_separate ? pkv_row_bytes(cfg->kv_dtype, cfg->h_kv, cfg->dv) : 0;
    s->k_block = s->k_row * (size_t)cfg->block_size;
    s->v_block = s->v_row * (size_t)cfg->block_size;
    size_t kbytes, vbytes;
    FORWARD_IF_ERROR(arena_bytes(s->k_row, cfg->num_blocks, cfg->block_size, &kbytes));
    FORWARD_IF_ERROR(arena_bytes(s->v_row, cfg->num_blocks, cfg->block_size, &vbytes));
    size_t L = (size_t)cfg->num_layers;
    s->k_raw = pkv_mem_calloc(al, L, sizeof(void *));
    s->v_raw = pkv_mem_calloc(al, L, sizeof(void *));
    s->k = pkv_mem_calloc(al, L, sizeof(uint8_t *));
    s->v = pkv_mem_calloc(al, L, sizeof(uint8_t *));
    s->enabled = 1; /* so that store_destroy frees what was allocated */
    RETURN_IF(!s->k_raw || !s->v_raw || !s->k || !s->v, PKV_ERR_NOMEM);
    for (size_t l = 0; l < L; l++) {
        /* Zeroed so that a slot read before it is written is 0, not garbage. */
        s->k_raw[l] = pkv_mem_calloc(al, 1, kbytes + ARENA_ALIGN);
        RETURN_IF(!s->k_raw[l], PKV_ERR_NOMEM);
        s->k[l] = (uint8_t *)(((uintptr_t)s->k_raw[l] + ARENA_ALIGN - 1) & ~(uintptr_t)(ARENA_ALIGN - 1));
        if (!vbytes) continue;
        s->v_raw[l] = pkv_mem_calloc(al, 1, vbytes + ARENA_ALIGN);
        RETURN_IF(!s->v_raw[l], PKV_ERR_NOMEM);
        s->v[l] = (uint8_t *)(((uintptr_t)s->v_raw[l] + ARENA_ALIGN - 1) & ~(uintptr_t)(ARENA_ALIGN - 1));
    }
    return PKV_OK;
}

void store_destroy(pkv_store *s) {
    if (!s->enabled) return;
    const pkv_allocator *al = s->al;
    for (int32_t l = 0; l < s->cfg->num_layers; l++) {
        if (s->k_raw) pkv_mem_free(al, s->k_raw[l]);
        if (s->v_raw) pkv_mem_free(al, s->v_raw[l]);
    }
    pkv_mem_free(al, s->k_raw);
    pkv_mem_free(al, s->v_raw);
    pkv_mem_free(al, s->k);
    pkv_mem_free(al, s->v);
    memset(s, 0, sizeof *s);
}

void store_copy_block(pkv_store *s, int32_t src, int32_t dst) {
    if (!s->enabled) return;
    for (int32_t l = 0; l < s->cfg->num_layers; l++) {
        memcpy(s->k[l] + (size_t)dst * s->k_block, s->k[l] + (size_t)src * s->k_block, s->k_block);
        if (s->v_block)
            memcpy(s->v[l] + (size_t)dst * s->v_block, s->v[l] + (size_t)src * s->v_block, s->v_block);
    }
}

size_t store_block_bytes(const pkv_store *s) {
    return (size_t)s->cfg->num_layers * (s->k_block + s->v_block);
}

/* Copies n bytes from src to dst in pieces of at most STORE_PIECE (4 KiB
 * copies ran faster here than one large memcpy), calling piece(arg, end of the
 * bytes done so far), when not NULL, after each (to checksum what was just
 * copied while it is in L1): the end in dst (out) or in src (in). */
#define STORE_PIECE 4096
static void copy_pieces(uint8_t *dst, const uint8_t *src, size_t n, void (*piece)(void *, const uint8_t *),
                        void *arg, int report_src) {
    for (size_t at = 0; at < n; at += STORE_PIECE) {
        size_t k = n - at < STORE_PIECE ? n - at : STORE_PIECE;
        memcpy(dst + at, src + at, k);
        if (piece) piece(arg, (report_src ? src : dst) + at + k);
    }
}

void store_block_out(const pkv_store *s, int32_t b, uint8_t *o, void (*piece)(void *, const uint8_t *), void *arg) {
    for (int32_t l = 0; l < s->cfg->num_layers; l++) {
        copy_pieces(o, s->k[l] + (size_t)b * s->k_block, s->k_block, piece, arg, 0);
        o += s->k_block;
        if (s->v_block) {
            copy_pieces(o, s->v[l] + (size_t)b * s->v_block, s->v_block, piece, arg, 0);
            o += s->v_block;
        }
    }
}

void store_block_in(pkv_store *s, int32_t b, const uint8_t *in, void (*piece)(void *, const uint8_t *), void *arg) {
    for (int32_t l = 0; l < s->cfg->num_layers; l++) {
        copy_pieces(s->k[l] + (size_t)b * s->k_block, in, s->k_block, piece, arg, 1);
        in += s->k_block;
        if (s->v_block) {
            copy_pieces(s->v[l] + (size_t)b * s->v_block, in, s->v_block, piece, arg, 1);
            in += s->v_block;
        }
    }
}

static int nonfinite(const float *x, size_t count) {
    for (size_t i = 0; i < count; i++)
        if (!(x[i] - x[i] == 0.0f)) return 1;
    return 0;
}

/* Writes one token row (all heads, row_bytes in the arena) of K or V from src
 * (src_dtype, accepted by the cache's dtype) into dst. */
static void write_row(const pkv_store *s, uint8_t *dst, const uint8_t *src, int src_dtype, size_t elems,
                      size_t row_bytes) {
    const pkv_dtype_traits *kt = pkv__dtype(s->cfg->kv_dtype);
    if (src_dtype == s->cfg->kv_dtype) {
        memcpy(dst, src, row_bytes); /* rows in the arena's format (FP8: ready-made rows) */
    } else if (kt->from_f32 && src_dtype == PKV_F32) {
        kt->from_f32(dst, (const float *)src, elems);
    } else {
        /* A fixed row (FP8 MLA656) from float32 or another plain dtype. */
        float x[PKV_MLA656_DIM];
        const float *in = (const float *)src;
        if (src_dtype != PKV_F32) {
            pkv__dtype(src_dtype)->to_f32(x, src, elems);
            in = x;
        }
        /* Inputs were checked to be finite, so this cannot fail. */
        (void)pkv_mla656_quantize(in, dst, (s->cfg->flags & PKV_FLAG_FP8_POW2_SCALE) != 0);
    }
}

static int store_check_slots(const pkv_store *s, int32_t layer, const int64_t *slots, int32_t n, pkv_detail *d) {
    if (!s->enabled) return pkv__fail(d, PKV_ERR_MODE, "metadata mode has no storage");
    if (layer < 0 || layer >= s->cfg->num_layers)
        return pkv__fail(d, PKV_ERR_INVALID, "layer %d outside [0, %d)", layer, s->cfg->num_layers);
    if (n < 0) return pkv__fail(d, PKV_ERR_INVALID, "n = %d is negative", n);
    if (n > 0 && !slots) return pkv__fail(d, PKV_ERR_NULL, "slots is NULL");
    const pkv_pool *pool = s->pool;
    int64_t total = (int64_t)pool->num_blocks * pool->block_size;
    for (int32_t i = 0; i < n; i++) {
        if (slots[i] < 0 || slots[i] >= total)
            return pkv__fail(d, PKV_ERR_SLOT, "slot %lld (index %d) outside [0, %lld)", (long long)slots[i], i,
                             (long long)total);
        int32_t b = (int32_t)(slots[i] / pool->block_size);
        if (pool->state[b] != BLOCK_USED)
            return pkv__fail(d, PKV_ERR_SLOT, "slot %lld (index %d) lies in block %d, held by no sequence",
                             (long long)slots[i], i, b);
    }
    return PKV_OK;
}

int store_write(pkv_store *s, int32_t layer, const int64_t *slots, int32_t n, const void *k_rows,
                const void *v_rows, int32_t src_dtype, pkv_detail *d) {
    FORWARD_IF_ERROR(store_check_slots(s, layer, slots, n, d));
    const pkv_config *cfg = s->cfg;
    const pkv_dtype_traits *kt = pkv__dtype(cfg->kv_dtype);
    int fixed = kt->fixed_row != 0;
    if (src_dtype < 0 || src_dtype > 31 || !(kt->accepts & (1u << src_dtype)))
        return pkv__fail(d, PKV_ERR_DTYPE, "rows of dtype %d cannot be written into a %s cache", src_dtype, kt->name);
    if (n == 0) return PKV_OK;
    if (!k_rows || (cfg->v_separate && !v_rows))
        return pkv__fail(d, PKV_ERR_NULL, "%s is NULL", k_rows ? "v_rows (V is separate)" : "k_rows");
    size_t ke = (size_t)cfg->h_kv * (size_t)cfg->d, ve = (size_t)cfg->h_kv * (size_t)cfg->dv;
    /* Source row sizes: the arena's own when the rows are in its format (an
     * FP8 row is 656 bytes, not elements times an element size). */
    int raw = src_dtype == cfg->kv_dtype;
    size_t k_src = raw ? s->k_row : ke * pkv_dtype_size(src_dtype);
    size_t v_src = raw ? s->v_row : ve * pkv_dtype_size(src_dtype);
    if (fixed && src_dtype == PKV_F32 && nonfinite(k_rows, ke * (size_t)n))
        return pkv__fail(d, PKV_ERR_NONFINITE, "FP8 rows must be finite");
    if (fixed && src_dtype == PKV_BF16)
        for (size_t i = 0; i < ke * (size_t)n; i++)
            if ((((const uint16_t *)k_rows)[i] & 0x7f80u) == 0x7f80u)
                return pkv__fail(d, PKV_ERR_NONFINITE, "FP8 rows must be finite");
    for (int32_t i = 0; i < n; i++) {
        write_row(s, s->k[layer] + (size_t)slots[i] * s->k_row, (const uint8_t *)k_rows + (size_t)i * k_src,
                  src_dtype, ke, s->k_row);
        if (cfg->v_separate)
            write_row(s, s->v[layer] + (size_t)slots[i] * s->v_row,
                      (const uint8_t *)v_rows + (size_t)i * v_src, src_dtype, ve, s->v_row);
    }
    return PKV_OK;
}

static void read_row(const pkv_store *s, float *out, const uint8_t *row, size_t elems) {
    pkv__dtype(s->cfg->kv_dtype)->to_f32(out, row, elems);
}

int store_read(pkv_store *s, int32_t layer, const int64_t *slots, int32_t n, float *k_out, float *v_out,
               pkv_detail *d) {
    FORWARD_IF_ERROR(store_check_slots(s, layer, slots, n, d));
    if (n > 0 && !k_out) return pkv__fail(d, PKV_ERR_NULL, "k_out is NULL");
    const pkv_config *cfg = s->cfg;
    size_t ke = (size_t)cfg->h_kv * (size_t)cfg->d, ve = (size_t)cfg->h_kv * (size_t)cfg->dv;
    for (int32_t i = 0; i < n; i++) {
        read_row(s, k_out + (size_t)i * ke, s->k[layer] + (size_t)slots[i] * s->k_row, ke);
        if (!v_out) continue;
        if (cfg->v_separate) {
            read_row(s, v_out + (size_t)i * ve, s->v[layer] + (size_t)slots[i] * s->v_row, ve);
        } else { /* V is the first dv dims of each head's K row */
            for (int32_t h = 0; h < cfg->h_kv; h++)
                memcpy(v_out + (size_t)i * ve + (size_t)h * cfg->dv, k_out + (size_t)i * ke + (size_t)h * cfg->d,
                       (size_t)cfg->dv * sizeof(float));
        }
    }
    return PKV_OK;
}

int store_arenas(pkv_store *s, int32_t layer, void **k, void **v, pkv_detail *d) {
    if (!k) return pkv__fail(d, PKV_ERR_NULL, "k is NULL");
    if (!s->enabled) return pkv__fail(d, PKV_ERR_MODE, "metadata mode has no storage");
    if (layer < 0 || layer >= s->cfg->num_layers)
        return pkv__fail(d, PKV_ERR_INVALID, "layer %d outside [0, %d)", layer, s->cfg->num_layers);
    *k = s->k[layer];
    if (v) *v = s->cfg->v_separate ? s->v[layer] : NULL;
    return PKV_OK;
}
