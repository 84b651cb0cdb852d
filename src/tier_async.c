/* Asynchronous promotion: I/O threads load blobs of backend tiers (file,
 * Redis, a user's store) into pool blocks while the engine computes.
 *
 * Division of work. The caller's thread (under the cache's lock when the cache
 * is thread-safe) owns every structure of the cache: at submit time it takes
 * the pool block, places the entry there in the index, and copies into the
 * job everything the load needs to check the blob (key, parent key,
 * namespace, extras digest, token ids); the job holds its own pool reference
 * on the block, so the block is never reclaimed or handed out while the load
 * runs, even when every sequence that held it is freed. An I/O thread then
 * touches only the backend (through a per-tier mutex: a backend is called by
 * one thread at a time), its own blob buffer, the cache's immutable geometry
 * and the rows of that one block. Finished jobs wait in a done list until the
 * caller's thread reaps them (aio_reap): only then do stats, the index and the
 * sequences change, and the job's reference is given back.
 *
 * While a block is loading, its sequences refuse everything that would read or
 * extend it (the cache layer checks aio_is_loading); a load that fails (the
 * blob is gone, torn, foreign or corrupt) drops the entry and cuts every
 * sequence that holds the block back to the blocks before it. */
#include <string.h>
#include <time.h>

#include "internal.h"

#define AIO_MAX_JOBS 4096 /* loads in flight at most; past it lookups promote synchronously */

typedef struct aio_job {
    int32_t e, b, ti, state; /* state: 0 free, 1 queued or running, 2 done */
    int32_t st, ok;          /* outcome: backend status, identity and checksum held */
    int64_t bytes;
    double seconds;
    prefix_identity id;      /* id.toks points at toks */
    int32_t *toks;           /* [block_size] */
    int32_t next;            /* queue / done / free list link */
} aio_job;

/* A backend tier's calls serialized: the caller's thread and the I/O threads
 * both call it. */
typedef struct locked_be {
    pthread_mutex_t mu;
    pkv_tier_backend in;
} locked_be;

typedef struct aio_arg {
    pkv_cache *c;
    int idx;
} aio_arg;

struct pkv_aio {
    pthread_mutex_t mu;
    pthread_cond_t work, done_cv;
    pthread_t *threads;
    int32_t nthreads, nbufs, stop;
    struct aio_arg *args;    /* [nthreads] */
    aio_job *jobs;
    int32_t njobs;
    int32_t free_head, q_head, q_tail, d_head, d_tail;
    int64_t inflight;        /* jobs not yet reaped */
    uint8_t *loading;        /* [num_blocks] 1 while a job holds the block */
    uint8_t **bufs;          /* [nthreads] blob buffers */
    locked_be *lbe[PKV_MAX_TIERS];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the locking backend wrapper ---- */

#define LB_CALL(ctx, call)                          \
    do {                                            \
        locked_be *lb_ = (locked_be *)(ctx);        \
        pthread_mutex_lock(&lb_->mu);               \
        int st_ = lb_->in.call;                     \
        pthread_mutex_unlock(&lb_->mu);             \
        return st_;                                 \
    } while (0)

static int lb_put(void *ctx, const uint8_t key[16], const void *blob, size_t len) {
    LB_CALL(ctx, put(((locked_be *)ctx)->in.ctx, key, blob, len));
}
static int lb_get(void *ctx, const uint8_t key[16], void *buf, size_t cap, size_t *len) {
    const locked_be *lb = ctx;
    if (lb->in.flags & PKV_BACKEND_CONCURRENT_GET) return lb->in.get(lb->in.ctx, key, buf, cap, len);
    LB_CALL(ctx, get(((locked_be *)ctx)->in.ctx, key, buf, cap, len));
}
static int lb_exists(void *ctx, const uint8_t key[16]) { LB_CALL(ctx, exists(((locked_be *)ctx)->in.ctx, key)); }
static int lb_del(void *ctx, const uint8_t key[16]) { LB_CALL(ctx, del(((locked_be *)ctx)->in.ctx, key)); }
static int lb_scan(void *ctx, int (*fn)(void *arg, const uint8_t key[16], size_t len), void *arg) {
    LB_CALL(ctx, scan(((locked_be *)ctx)->in.ctx, fn, arg));
}
static int lb_get_many(void *ctx, int32_t n, const uint8_t (*keys)[16], void *const *bufs, size_t cap, size_t *lens,
                       int *status) {
    LB_CALL(ctx, get_many(((locked_be *)ctx)->in.ctx, n, keys, bufs, cap, lens, status));
}
static int lb_put_many(void *ctx, int32_t n, const uint8_t (*keys)[16], const void *const *blobs, size_t len,
                       int *status) {
    LB_CALL(ctx, put_many(((locked_be *)ctx)->in.ctx, n, keys, blobs, len, status));
}
/* Closed by aio_stop (after the threads), which puts the inner backend back. */
static void lb_close(void *ctx) { (void)ctx; }

static void lb_wrap(locked_be *lb, pkv_tier_backend *be) {
    lb->in = *be;
    be->ctx = lb;
    be->put = lb_put;
    be->get = lb_get;
    be->exists = lb_exists;
    be->del = lb_del;
    be->scan = lb->in.scan ? lb_scan : NULL;
    be->close = lb_close;
    be->get_many = lb->in.get_many ? lb_get_many : NULL;
    be->put_many = lb->in.put_many ? lb_put_many : NULL;
}

/* ---- I/O threads ---- */


static void run_job(pkv_cache *c, aio_job *j, uint8_t *buf) {
    pkv_tier *t = &c->tiers.t[j->ti];
    size_t size = tier_blob_size(c), len = 0;
    double t0 = now_s();
    j->st = t->be.get(t->be.ctx, (const uint8_t *)j->id.key, buf, size, &len);
    j->ok = j->st == PKV_OK && tier_blob_load(c, buf, len, &j->id, j->b);
    j->bytes = (int64_t)len;
    j->seconds = now_s() - t0;
}

static void *aio_main(void *p) {
    aio_arg *a = p;
    pkv_cache *c = a->c;
    pkv_aio *io = c->aio;
    uint8_t *buf = io->bufs[a->idx];
    pthread_mutex_lock(&io->mu);
    for (;;) {
        while (!io->stop && io->q_head < 0) pthread_cond_wait(&io->work, &io->mu);
        /* stop: the cache is being destroyed (or was never used): the jobs
         * still queued are not read, their results would go nowhere */
        if (io->stop) break;
        int32_t ji = io->q_head;
        aio_job *j = &io->jobs[ji];
        io->q_head = j->next;
        if (io->q_head < 0) io->q_tail = -1;
        pthread_mutex_unlock(&io->mu);
        run_job(c, j, buf);
        pthread_mutex_lock(&io->mu);
        j->state = 2;
        j->next = -1;
        if (io->d_tail >= 0) io->jobs[io->d_tail].next = ji;
        else io->d_head = ji;
        io->d_tail = ji;
        pthread_cond_broadcast(&io->done_cv);
    }
    pthread_mutex_unlock(&io->mu);
    return NULL;
}

/* ---- the caller's side ---- */

static void aio_free(pkv_cache *c, pkv_aio *io) {
    if (!io) return;
    for (int i = 0; i < PKV_MAX_TIERS; i++) {
        if (!io->lbe[i]) continue;
        pthread_mutex_destroy(&io->lbe[i]->mu);
        pkv_mem_free(&c->al, io->lbe[i]);
    }
    for (int i = 0; io->bufs && i < io->nbufs; i++) pkv_mem_free(&c->al, io->bufs[i]);
    pkv_mem_free(&c->al, io->args);
    pkv_mem_free(&c->al, io->bufs);
    if (io->jobs)
        for (int32_t i = 0; i < io->njobs; i++) pkv_mem_free(&c->al, io->jobs[i].toks);
    pkv_mem_free(&c->al, io->jobs);
    pkv_mem_free(&c->al, io->loading);
    pkv_mem_free(&c->al, io->threads);
    pkv_mem_free(&c->al, io);
}

int aio_start(pkv_cache *c, int32_t threads, pkv_detail *d) {
    if (!c->store.enabled) return pkv__fail(d, PKV_ERR_MODE, "asynchronous loads need host storage (the engine moves metadata mode's bytes)");
    if (c->aio) return pkv__fail(d, PKV_ERR_STATE, "asynchronous loads are already started");
    if (threads < 1 || threads > 64) return pkv__fail(d, PKV_ERR_INVALID, "io_threads = %d outside [1, 64]", threads);
    int nbe = 0;
    for (int i = 0; i < c->tiers.n; i++) nbe += !c->tiers.t[i].host;
    if (!nbe) return pkv__fail(d, PKV_ERR_STATE, "no backend tier to load from (add a file, Redis or own tier first)");
    pkv_aio *io = pkv_mem_calloc(&c->al, 1, sizeof *io);
    if (!io) return pkv__fail(d, PKV_ERR_NOMEM, "no memory for the I/O state");
    int ok = 1;
    io->njobs = c->pool.num_blocks < AIO_MAX_JOBS ? c->pool.num_blocks : AIO_MAX_JOBS;
    io->jobs = pkv_mem_calloc(&c->al, (size_t)io->njobs, sizeof *io->jobs);
    io->loading = pkv_mem_calloc(&c->al, (size_t)c->pool.num_blocks, 1);
    io->threads = pkv_mem_calloc(&c->al, (size_t)threads, sizeof *io->threads);
    io->bufs = pkv_mem_calloc(&c->al, (size_t)threads, sizeof *io->bufs);
    io->args = pkv_mem_calloc(&c->al, (size_t)threads, sizeof *io->args);
    ok = io->jobs && io->loading && io->threads && io->bufs && io->args;
    io->nbufs = ok ? threads : 0;
    for (int i = 0; ok && i < threads; i++) ok = (io->bufs[i] = pkv_mem_alloc(&c->al, tier_blob_size(c))) != NULL;
    for (int32_t i = 0; ok && i < io->njobs; i++)
        ok = (io->jobs[i].toks = pkv_mem_alloc(&c->al, (size_t)c->cfg.block_size * sizeof(int32_t))) != NULL;
    for (int i = 0; ok && i < c->tiers.n; i++)
        if (!c->tiers.t[i].host) {
            io->lbe[i] = pkv_mem_calloc(&c->al, 1, sizeof *io->lbe[i]);
            ok = io->lbe[i] && pthread_mutex_init(&io->lbe[i]->mu, NULL) == 0;
            if (io->lbe[i] && !ok) {
                pkv_mem_free(&c->al, io->lbe[i]);
                io->lbe[i] = NULL;
            }
        }
    if (!ok) {
        aio_free(c, io);
        return pkv__fail(d, PKV_ERR_NOMEM, "no memory for %d I/O threads' buffers and %d jobs", threads,
                         c->pool.num_blocks < AIO_MAX_JOBS ? c->pool.num_blocks : AIO_MAX_JOBS);
    }
    io->free_head = 0;
    for (int32_t i = 0; i < io->njobs; i++) io->jobs[i].next = i + 1 < io->njobs ? i + 1 : -1;
    io->q_head = io->q_tail = io->d_head = io->d_tail = -1;
    pthread_mutex_init(&io->mu, NULL);
    pthread_cond_init(&io->work, NULL);
    pthread_cond_init(&io->done_cv, NULL);
    for (int i = 0; i < c->tiers.n; i++)
        if (io->lbe[i]) lb_wrap(io->lbe[i], &c->tiers.t[i].be);
    c->aio = io;
    c->pool.loading = io->loading;
    int started = 0;
    for (; started < threads; started++) {
        io->args[started] = (aio_arg){c, started};
        if (pthread_create(&io->threads[started], NULL, aio_main, &io->args[started]) != 0) break;
        io->nthreads = started + 1;
    }
    if (started < threads) {
        aio_stop(c);
        return pkv__fail(d, PKV_ERR_NOMEM, "could not start I/O thread %d of %d", started + 1, threads);
    }
    return PKV_OK;
}

void aio_stop(pkv_cache *c) {
    pkv_aio *io = c->aio;
    if (!io) return;
    pthread_mutex_lock(&io->mu);
    io->stop = 1;
    pthread_cond_broadcast(&io->work);
    pthread_mutex_unlock(&io->mu);
    int32_t n = io->nthreads;
    for (int32_t i = 0; i < n; i++) pthread_join(io->threads[i], NULL);
    /* No job runs any more (queued ones never will); the cache is being
     * destroyed or was never used. */
    for (int i = 0; i < PKV_MAX_TIERS; i++)
        if (io->lbe[i]) c->tiers.t[i].be = io->lbe[i]->in;
    pthread_cond_destroy(&io->work);
    pthread_cond_destroy(&io->done_cv);
    pthread_mutex_destroy(&io->mu);
    c->pool.loading = NULL;
    aio_free(c, io);
    c->aio = NULL;
}

/* The free list is the caller's: only aio_submit and aio_reap (both in the
 * caller's thread, under the cache's lock) change it. */
int aio_can_submit(const pkv_cache *c) { return c->aio && c->aio->free_head >= 0; }

void aio_submit(pkv_cache *c, int32_t e, int ti, int32_t b) {
    pkv_aio *io = c->aio;
    pthread_mutex_lock(&io->mu);
    int32_t ji = io->free_head;
    pkv_assert(ji >= 0);
    io->free_head = io->jobs[ji].next;
    pthread_mutex_unlock(&io->mu);
    aio_job *j = &io->jobs[ji];
    j->e = e;
    j->b = b;
    j->ti = ti;
    j->st = j->ok = 0;
    j->bytes = 0;
    j->seconds = 0;
    prefix_identity_of(c->prefix, e, &j->id);
    memcpy(j->toks, j->id.toks, (size_t)c->cfg.block_size * sizeof(int32_t));
    j->id.toks = j->toks;
    pool_ref(&c->pool, b);
    io->loading[b] = 1;
    io->inflight++;
    pthread_mutex_lock(&io->mu);
    j->state = 1;
    j->next = -1;
    if (io->q_tail >= 0) io->jobs[io->q_tail].next = ji;
    else io->q_head = ji;
    io->q_tail = ji;
    pthread_cond_signal(&io->work);
    pthread_mutex_unlock(&io->mu);
}

int32_t aio_reap(pkv_cache *c, aio_done *out, int32_t cap, int block) {
    pkv_aio *io = c->aio;
    if (!io || io->inflight == 0) return 0;
    int32_t n = 0;
    pthread_mutex_lock(&io->mu);
    while (block && io->d_head < 0) pthread_cond_wait(&io->done_cv, &io->mu);
    while (n < cap && io->d_head >= 0) {
        int32_t ji = io->d_head;
        aio_job *j = &io->jobs[ji];
        io->d_head = j->next;
        if (io->d_head < 0) io->d_tail = -1;
        out[n++] = (aio_done){j->e, j->b, j->ti, j->st, j->ok, j->bytes, j->seconds};
        j->state = 0;
        j->next = io->free_head;
        io->free_head = ji;
    }
    pthread_mutex_unlock(&io->mu);
    for (int32_t i = 0; i < n; i++) io->loading[out[i].b] = 0;
    io->inflight -= n;
    return n;
}

void aio_wait(pkv_cache *c, int ms) {
    pkv_aio *io = c->aio;
    if (!io) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&io->mu);
    if (io->d_head < 0) pthread_cond_timedwait(&io->done_cv, &io->mu, &ts);
    pthread_mutex_unlock(&io->mu);
}

int aio_is_loading(const pkv_cache *c, int32_t b) { return c->aio && c->aio->inflight && b >= 0 && c->aio->loading[b]; }

int64_t aio_inflight(const pkv_cache *c) { return c->aio ? c->aio->inflight : 0; }

void aio_count_refs(const pkv_cache *c, int32_t *count) {
    if (!c->aio || !c->aio->inflight) return;
    for (int32_t b = 0; b < c->pool.num_blocks; b++) count[b] += c->aio->loading[b];
}
