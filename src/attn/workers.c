/* pkv_workers: a fixed pool of threads for pkv_attn, plus each participant's
 * scratch. A call takes the pool's call lock for its whole duration, so calls
 * that share a pool run one after another (the pool's threads are all busy with
 * one call anyway); calls on different pools, or with w == NULL, run in
 * parallel. Scratch (per participant) and the split-KV partial buffers (per
 * chunk) only grow, under that same lock, the first time a call needs more:
 * later calls of the same or smaller shapes allocate nothing. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels.h"

struct pkv_workers {
    int n;                      /* participants, the caller included */
    pthread_t *threads;         /* n - 1 */
    pthread_mutex_t call;       /* held by the call using the pool */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long gen;          /* bumped for each phase */
    int running;                /* threads still inside the current phase */
    int stop;
    void (*fn)(void *ctx, int idx);
    void *ctx;
    attn_scratch *scratch;      /* [n] */
    attn_chunk chunks[ATTN_MAX_CHUNKS];
    float *parts;               /* the chunks' partial buffers */
    size_t parts_floats;        /* capacity of parts */
};

typedef struct worker_arg {
    pkv_workers *w;
    int idx;
} worker_arg;

static worker_arg *args_of(pkv_workers *w) { return (worker_arg *)(void *)(w->threads + w->n); }

static void *worker_main(void *p) {
    const worker_arg *wa = (const worker_arg *)p;
    pkv_workers *w = wa->w;
    unsigned long seen = 0;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->gen == seen && !w->stop) pthread_cond_wait(&w->go, &w->mu);
        if (w->stop) break;
        seen = w->gen;
        void (*fn)(void *, int) = w->fn;
        void *ctx = w->ctx;
        pthread_mutex_unlock(&w->mu);
        fn(ctx, wa->idx);
        pthread_mutex_lock(&w->mu);
        if (--w->running == 0) pthread_cond_signal(&w->done);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void stop_threads(pkv_workers *w, int started) {
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->go);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < started; i++) pthread_join(w->threads[i], NULL);
}

int pkv_workers_create(int num_threads, pkv_workers **out) {
    RETURN_IF(out == NULL, PKV_ERR_NULL);
    *out = NULL;
    if (num_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        num_threads = n < 1 ? 1 : (n > 1024 ? 1024 : (int)n);
    }
    RETURN_IF(num_threads > 1024, PKV_ERR_INVALID);
    pkv_workers *w = calloc(1, sizeof *w);
    RETURN_IF(w == NULL, PKV_ERR_NOMEM);
    w->n = num_threads;
    /* threads[n - 1], then the per-thread args[n - 1] (room for n of each) */
    w->threads = calloc((size_t)num_threads, sizeof(pthread_t) + sizeof(worker_arg));
    w->scratch = calloc((size_t)num_threads, sizeof(attn_scratch));
    if (!w->threads || !w->scratch) {
        free(w->threads);
        free(w->scratch);
        free(w);
        return PKV_ERR_NOMEM;
    }
    int inits = 0;
    if (pthread_mutex_init(&w->call, NULL) == 0) inits++;
    if (inits == 1 && pthread_mutex_init(&w->mu, NULL) == 0) inits++;
    if (inits == 2 && pthread_cond_init(&w->go, NULL) == 0) inits++;
    if (inits == 3 && pthread_cond_init(&w->done, NULL) == 0) inits++;
    if (inits < 4) {
        if (inits > 3) pthread_cond_destroy(&w->done);
        if (inits > 2) pthread_cond_destroy(&w->go);
        if (inits > 1) pthread_mutex_destroy(&w->mu);
        if (inits > 0) pthread_mutex_destroy(&w->call);
        free(w->threads);
        free(w->scratch);
        free(w);
        return PKV_ERR_THREAD;
    }
    int ok = 1, started = 0;
    for (int i = 1; ok && i < num_threads; i++) {
        worker_arg *wa = args_of(w) + (i - 1);
        wa->w = w;
        wa->idx = i;
        if (pthread_create(&w->threads[i - 1], NULL, worker_main, wa) != 0) ok = 0;
        else started++;
    }
    if (!ok) {
        w->n = started + 1;
        pkv_workers_destroy(w);
        return PKV_ERR_THREAD;
    }
    *out = w;
    return PKV_OK;
}

void pkv_workers_destroy(pkv_workers *w) {
    if (!w) return;
    stop_threads(w, w->n - 1);
    for (int i = 0; i < w->n; i++) free(w->scratch[i].mem);
    free(w->parts);
    pthread_cond_destroy(&w->done);
    pthread_cond_destroy(&w->go);
    pthread_mutex_destroy(&w->mu);
    pthread_mutex_destroy(&w->call);
    free(w->scratch);
    free(w->threads);
    free(w);
}

int workers_count(const pkv_workers *w) { return w->n; }

attn_scratch *workers_scratch(pkv_workers *w, int idx) { return &w->scratch[idx]; }

attn_chunk *workers_chunks(pkv_workers *w) { return w->chunks; }

int workers_begin(pkv_workers *w, size_t bytes, int nchunks, size_t part_floats) {
    pthread_mutex_lock(&w->call);
    if (nchunks > ATTN_MAX_CHUNKS) nchunks = ATTN_MAX_CHUNKS;
    const size_t need = part_floats && (size_t)nchunks > SIZE_MAX / 2 / part_floats / sizeof(float)
                            ? SIZE_MAX
                            : (size_t)nchunks * 2 * part_floats;
    if (need > w->parts_floats) {
        float *p = need == SIZE_MAX ? NULL : malloc(need * sizeof(float));
        if (!p) {
            pthread_mutex_unlock(&w->call);
            return PKV_ERR_NOMEM;
        }
        free(w->parts);
        w->parts = p;
        w->parts_floats = need;
    }
    for (int c = 0; c < nchunks; c++) {
        /* With no partials needed parts may still be NULL, and NULL + 0 is undefined. */
        w->chunks[c].part[0] = w->parts ? w->parts + (size_t)(2 * c) * part_floats : NULL;
        w->chunks[c].part[1] = w->parts ? w->parts + (size_t)(2 * c + 1) * part_floats : NULL;
        w->chunks[c].cut_group = -1;
        w->chunks[c].cut_slot = 0;
    }
    for (int i = 0; i < w->n; i++) {
        attn_scratch *s = &w->scratch[i];
        if (s->bytes >= bytes) continue;
        void *mem = malloc(bytes);
        if (!mem) {
            pthread_mutex_unlock(&w->call);
            return PKV_ERR_NOMEM;
        }
        free(s->mem);
        s->mem = mem;
        s->bytes = bytes;
    }
    return PKV_OK;
}

void workers_end(pkv_workers *w) { pthread_mutex_unlock(&w->call); }

void workers_run(pkv_workers *w, void (*fn)(void *ctx, int idx), void *ctx) {
    if (w->n > 1) {
        pthread_mutex_lock(&w->mu);
        w->fn = fn;
        w->ctx = ctx;
        w->running = w->n - 1;
        w->gen++;
        pthread_cond_broadcast(&w->go);
        pthread_mutex_unlock(&w->mu);
    }
    fn(ctx, 0);
    if (w->n > 1) {
        pthread_mutex_lock(&w->mu);
        while (w->running > 0) pthread_cond_wait(&w->done, &w->mu);
        pthread_mutex_unlock(&w->mu);
    }
}
