/* Status texts, version, and memory through the configured allocator hook. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/random.h>
#endif

#include "internal.h"

const char *pkv_version(void) { return PKV_VERSION_STRING; }

int pkv__fail(pkv_detail *d, int status, const char *fmt, ...) {
    if (d) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->text, sizeof d->text, fmt, ap);
        va_end(ap);
    }
    return status;
}

unsigned pkv_version_number(void) { return PKV_VERSION_NUMBER; }

int pkv__struct_import(void *dst, size_t dst_size, const void *src, size_t min_size) {
    uint32_t size;
    memcpy(&size, src, sizeof size);
    RETURN_IF(size < min_size, PKV_ERR_INVALID);
    if (size > dst_size) {
        /* A newer caller's fields this library does not know: only zeros (their
         * defaults) can be honoured. */
        const unsigned char *tail = (const unsigned char *)src + dst_size;
        for (size_t i = 0; i < size - dst_size; i++) RETURN_IF(tail[i] != 0, PKV_ERR_INVALID);
    }
    memcpy(dst, src, size < dst_size ? size : dst_size);
    memcpy(dst, &(uint32_t){(uint32_t)dst_size}, sizeof(uint32_t));
    return PKV_OK;
}

void pkv__struct_export(void *dst, const void *src, size_t src_size) {
    uint32_t size;
    memcpy(&size, dst, sizeof size);
    memcpy((char *)dst + sizeof size, (const char *)src + sizeof size,
           (size < src_size ? size : src_size) - sizeof size);
}

const char *pkv_strerror(int status) {
    switch (status) {
    case PKV_OK: return "ok";
    case PKV_ERR_NULL: return "a required pointer argument is NULL";
    case PKV_ERR_INVALID: return "an argument is out of range";
    case PKV_ERR_NOMEM: return "out of memory (the allocator returned NULL)";
    case PKV_ERR_CAPACITY: return "not enough free blocks in the pool";
    case PKV_ERR_BUFFER: return "output buffer too small (the size needed is reported)";
    case PKV_ERR_NO_SEQ: return "unknown, freed or stale sequence handle";
    case PKV_ERR_BLOCK_ID: return "block id outside [0, num_blocks)";
    case PKV_ERR_SEQLEN: return "sequence length negative or longer than its block-table row covers";
    case PKV_ERR_HEADS: return "h_q is not a positive multiple of h_kv";
    case PKV_ERR_DTYPE: return "unknown or unsupported dtype";
    case PKV_ERR_MODE: return "operation not available in this cache mode";
    case PKV_ERR_NONFINITE: return "input value is NaN or infinite";
    case PKV_ERR_CORRUPT: return "cache state is inconsistent";
    case PKV_ERR_THREAD: return "thread or lock creation failed";
    case PKV_ERR_IO: return "file read or write failed";
    case PKV_ERR_FORMAT: return "malformed input data";
    case PKV_ERR_STATE: return "object state does not allow this call";
    case PKV_ERR_SHAPE: return "array shapes disagree";
    case PKV_ERR_SLOT: return "slot id outside the cache";
    case PKV_ERR_NOT_FOUND: return "not found in the tier";
    default: return "unknown status";
    }
}

void *pkv_mem_alloc(const pkv_allocator *al, size_t size) {
    if (size == 0) size = 1;
    if (al && al->alloc) return al->alloc(al->opaque, size);
    return malloc(size);
}

void *pkv_mem_calloc(const pkv_allocator *al, size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = pkv_mem_alloc(al, n * size);
    if (p && n && size) memset(p, 0, n * size);
    return p;
}

void pkv_mem_free(const pkv_allocator *al, void *p) {
    if (!p) return;
    if (al && al->alloc) {
        if (al->free) al->free(al->opaque, p);
    } else {
        free(p);
    }
}

int pkv_mem_grow(const pkv_allocator *al, void **arr, int32_t *cap, int32_t need, size_t esz) {
    if (need <= *cap) return PKV_OK;
    int64_t ncap = *cap < 4 ? 4 : *cap;
    while (ncap < need) ncap *= 2;
    if (ncap > INT32_MAX) ncap = INT32_MAX;
    void *p = pkv_mem_alloc(al, (size_t)ncap * esz);
    if (!p) return PKV_ERR_NOMEM;
    if (*arr && *cap) memcpy(p, *arr, (size_t)*cap * esz);
    pkv_mem_free(al, *arr);
    *arr = p;
    *cap = (int32_t)ncap;
    return PKV_OK;
}

int pkv_os_random(void *out, size_t n) {
    uint8_t *o = out;
    size_t got = 0;
#if defined(__linux__)
    while (got < n) {
        ssize_t r = getrandom(o + got, n - got, 0);
        if (r <= 0) break;
        got += (size_t)r;
    }
#endif
    if (got == n) return PKV_OK;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f) return PKV_ERR_IO;
    got = fread(o, 1, n, f);
    fclose(f);
    return got == n ? PKV_OK : PKV_ERR_IO;
}
