/* The block pool: block ids, reference counts, O(1) allocation and release.
 *
 * Free blocks sit on a LIFO stack (recently freed blocks are warm in cache).
 * Blocks registered in the prefix index whose refcount falls to 0 are not
 * freed but become evictable: they sit on an intrusive doubly linked LRU list
 * (head = least recently used) and keep their contents until an allocation finds
 * the free stack empty and reclaims the head; the caller then tells the index
 * (the pool knows nothing above it). Every operation here is O(1) and
 * allocates nothing. */
#include <string.h>

#include "internal.h"

int pool_init(pkv_pool *p, const pkv_allocator *al, int32_t num_blocks, int32_t block_size, int with_lru) {
    memset(p, 0, sizeof *p);
    p->num_blocks = num_blocks;
    p->block_size = block_size;
    size_t n = (size_t)num_blocks;
    p->refcount = pkv_mem_calloc(al, n, sizeof(int32_t));
    p->state = pkv_mem_calloc(al, n, 1);
    p->cached = pkv_mem_calloc(al, n, 1);
    p->free_stack = pkv_mem_alloc(al, n * sizeof(int32_t));
    /* Only cached blocks become evictable: without a prefix index no LRU list. */
    if (with_lru) {
        p->lru_prev = pkv_mem_alloc(al, n * sizeof(int32_t));
        p->lru_next = pkv_mem_alloc(al, n * sizeof(int32_t));
    }
    if (!p->refcount || !p->state || !p->cached || !p->free_stack || (with_lru && (!p->lru_prev || !p->lru_next))) {
        pool_destroy(p, al);
        return PKV_ERR_NOMEM;
    }
    /* Block 0 on top: allocation hands out ids in increasing order on a new pool. */
    for (int32_t i = 0; i < num_blocks; i++) p->free_stack[i] = num_blocks - 1 - i;
    p->free_top = num_blocks;
    if (with_lru)
        for (int32_t i = 0; i < num_blocks; i++) p->lru_prev[i] = p->lru_next[i] = -1;
    p->lru_head = p->lru_tail = -1;
    return PKV_OK;
}

void pool_destroy(pkv_pool *p, const pkv_allocator *al) {
    pkv_mem_free(al, p->refcount);
    pkv_mem_free(al, p->state);
    pkv_mem_free(al, p->cached);
    pkv_mem_free(al, p->free_stack);
    pkv_mem_free(al, p->lru_prev);
    pkv_mem_free(al, p->lru_next);
    memset(p, 0, sizeof *p);
}

static void lru_unlink(pkv_pool *p, int32_t b) {
    int32_t pr = p->lru_prev[b], nx = p->lru_next[b];
    if (pr >= 0) p->lru_next[pr] = nx; else p->lru_head = nx;
    if (nx >= 0) p->lru_prev[nx] = pr; else p->lru_tail = pr;
    p->lru_prev[b] = p->lru_next[b] = -1;
    p->num_evictable--;
}

static void lru_push_tail(pkv_pool *p, int32_t b) {
    p->lru_prev[b] = p->lru_tail;
    p->lru_next[b] = -1;
    if (p->lru_tail >= 0) p->lru_next[p->lru_tail] = b; else p->lru_head = b;
    p->lru_tail = b;
    p->num_evictable++;
}

static void lru_push_head(pkv_pool *p, int32_t b) {
    p->lru_next[b] = p->lru_head;
    p->lru_prev[b] = -1;
    if (p->lru_head >= 0) p->lru_prev[p->lru_head] = b; else p->lru_tail = b;
    p->lru_head = b;
    p->num_evictable++;
}

static void mark_used(pkv_pool *p, int32_t b) {
    p->state[b] = BLOCK_USED;
    p->refcount[b] = 1;
    if (++p->used > p->peak_used) p->peak_used = p->used;
}

int32_t pool_alloc(pkv_pool *p, int *reclaimed) {
    int32_t b;
    *reclaimed = 0;
    if (p->free_top > 0) {
        b = p->free_stack[--p->free_top];
    } else if (p->lru_head >= 0) {
        b = p->lru_head;
        lru_unlink(p, b);
        p->cached[b] = 0;
        p->evictions++;
        *reclaimed = 1;
    } else {
        return -1;
    }
    mark_used(p, b);
    return b;
}

void pool_ref(pkv_pool *p, int32_t b) {
    pkv_assert(b >= 0 && b < p->num_blocks && p->state[b] != BLOCK_FREE);
    if (p->state[b] == BLOCK_EVICTABLE) {
        lru_unlink(p, b);
        mark_used(p, b);
        return;
    }
    if (++p->refcount[b] == 2) p->shared++;
}

void pool_unref(pkv_pool *p, int32_t b) {
    pkv_assert(b >= 0 && b < p->num_blocks && p->state[b] == BLOCK_USED && p->refcount[b] > 0);
    int32_t rc = --p->refcount[b];
    if (rc == 1) p->shared--;
    if (rc > 0) return;
    p->used--;
    if (p->cached[b]) {
        p->state[b] = BLOCK_EVICTABLE;
        lru_push_tail(p, b);
    } else {
        p->state[b] = BLOCK_FREE;
        p->free_stack[p->free_top++] = b;
    }
}

int32_t pool_evict_lru(pkv_pool *p) {
    int32_t b = p->lru_head;
    if (b < 0) return -1;
    lru_unlink(p, b);
    p->cached[b] = 0;
    p->evictions++;
    p->state[b] = BLOCK_FREE;
    p->free_stack[p->free_top++] = b;
    return b;
}

void pool_evict_first(pkv_pool *p, int32_t b) {
    if (p->state[b] != BLOCK_EVICTABLE) return;
    lru_unlink(p, b);
    lru_push_head(p, b);
}

int pool_uncache(pkv_pool *p, int32_t b) {
    p->cached[b] = 0;
    if (p->state[b] != BLOCK_EVICTABLE) return 0;
    lru_unlink(p, b);
    p->state[b] = BLOCK_FREE;
    p->free_stack[p->free_top++] = b;
    return 1;
}

int pool_check(const pkv_pool *p, int32_t *seen, pkv_detail *d) {
    int32_t nfree = 0, nused = 0, nevict = 0, nshared = 0;
    for (int32_t b = 0; b < p->num_blocks; b++) {
        switch (p->state[b]) {
        case BLOCK_FREE:
            nfree++;
            if (p->refcount[b] != 0 || p->cached[b])
                return pkv__fail(d, PKV_ERR_CORRUPT, "free block %d has refcount %d cached %d", b, p->refcount[b],
                                 p->cached[b]);
            break;
        case BLOCK_USED:
            nused++;
            if (p->refcount[b] < 1)
                return pkv__fail(d, PKV_ERR_CORRUPT, "used block %d has refcount %d", b, p->refcount[b]);
            if (p->refcount[b] >= 2) nshared++;
            break;
        case BLOCK_EVICTABLE:
            nevict++;
            if (p->refcount[b] != 0 || !p->cached[b])
                return pkv__fail(d, PKV_ERR_CORRUPT, "evictable block %d has refcount %d cached %d", b,
                                 p->refcount[b], p->cached[b]);
            break;
        default:
            return pkv__fail(d, PKV_ERR_CORRUPT, "block %d has unknown state %d", b, p->state[b]);
        }
    }
    if (nfree != p->free_top || nused != p->used || nevict != p->num_evictable || nshared != p->shared)
        return pkv__fail(d, PKV_ERR_CORRUPT, "counts free %d/%d used %d/%d evictable %d/%d shared %d/%d disagree",
                         nfree, p->free_top, nused, p->used, nevict, p->num_evictable, nshared, p->shared);
    if (nfree + nused + nevict != p->num_blocks)
        return pkv__fail(d, PKV_ERR_CORRUPT, "free + used + evictable != num_blocks");
    /* Counts agree, so a repeated entry (a double free) would hide a lost block. */
    memset(seen, 0, (size_t)p->num_blocks * sizeof *seen);
    for (int32_t i = 0; i < p->free_top; i++) {
        int32_t b = p->free_stack[i];
        if (b < 0 || b >= p->num_blocks || p->state[b] != BLOCK_FREE)
            return pkv__fail(d, PKV_ERR_CORRUPT, "free stack entry %d holds block %d not free", i, b);
        if (seen[b]++) return pkv__fail(d, PKV_ERR_CORRUPT, "block %d is on the free stack twice", b);
    }
    if (p->peak_used < p->used)
        return pkv__fail(d, PKV_ERR_CORRUPT, "peak used %d below used %d", p->peak_used, p->used);
    int32_t walked = 0, prev = -1;
    for (int32_t b = p->lru_head; b >= 0; b = p->lru_next[b]) {
        if (b >= p->num_blocks || p->state[b] != BLOCK_EVICTABLE || p->lru_prev[b] != prev || ++walked > nevict)
            return pkv__fail(d, PKV_ERR_CORRUPT, "LRU list broken at block %d", b);
        prev = b;
    }
    if (walked != nevict || p->lru_tail != prev)
        return pkv__fail(d, PKV_ERR_CORRUPT, "LRU list holds %d blocks, %d evictable", walked, nevict);
    return PKV_OK;
}
