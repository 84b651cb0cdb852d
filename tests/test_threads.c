/* Threads: one cache created with PKV_FLAG_THREAD_SAFE, 8 threads doing random
 * operations (create, append + row writes, truncate, fork, free, content
 * checks, exports, stats, pkv_cache_check) on their own sequences and on
 * shared parent sequences that every thread forks and mutates, for a fixed
 * operation count (4M by default, times PKV_TEST_SCALE). Every thread keeps a
 * model of its sequences' lengths and contents and checks them through
 * pkv_store_read; at the end pkv_cache_check must pass and all blocks must be
 * free again. Then 8 threads serve prompts through one thread-safe prefix cache
 * (lookup, append, write, register, free) and check every hit's contents.
 * Then concurrent pkv_attn calls over one cache (no pool, a shared
 * pool, private pools) must give results identical to the same calls run
 * serially. Meant to be clean under `make tsan`. */
#include <pthread.h>
#include <stdint.h>

#include "test.h"

enum {
    NTHREADS = 8,
    NB = 96,
    BS = 4,
    D = 4,           /* row: v, -v, v, -v */
    MAXLEN = 48,
    OWN = 4,         /* own sequences per thread */
    NSHARED = 3,     /* shared parents */
    SHARED_TAG = 15  /* value tag of shared parents' rows */
};

/* A sequence and its model: the row value of every position. */
typedef struct mseq {
    pkv_seq h;
    int32_t len;
    float v[MAXLEN];
} mseq;

typedef struct shared_seq {
    pthread_rwlock_t lock; /* read: fork; write: append / truncate + row writes */
    mseq s;
    uint32_t counter;
} shared_seq;

static pkv_cache *g_cache;
static shared_seq g_shared[NSHARED];
static long g_ops_per_thread;

typedef struct worker {
    int id;
    test_rng rng;
    mseq own[OWN];
    int nown;
    uint32_t counter;
    long ops, capacity, fails, checks;
    char err[256];
} worker;

#define WFAIL(w, ...)                                                                \
    do {                                                                             \
        if (!(w)->fails++) snprintf((w)->err, sizeof (w)->err, __VA_ARGS__);         \
    } while (0)

static float next_value(uint32_t tag, uint32_t *counter) {
    *counter = (*counter + 1) & 0xfffff;
    return (float)((tag << 20) | *counter);
}

/* Appends n tokens to s, writes their rows with fresh values and records them. */
static int append_rows(worker *w, mseq *s, int32_t n, uint32_t tag, uint32_t *counter) {
    int64_t slots[MAXLEN];
    float rows[MAXLEN * D];
    int st = pkv_seq_append(g_cache, s->h, n, NULL, slots, NULL);
    if (st == PKV_ERR_CAPACITY) {
        w->capacity++;
        return st;
    }
    if (st != PKV_OK) {
        WFAIL(w, "append: %s", pkv_strerror(st));
        return st;
    }
    for (int32_t i = 0; i < n; i++) {
        float v = next_value(tag, counter);
        s->v[s->len + i] = v;
        rows[i * D + 0] = v; rows[i * D + 1] = -v; rows[i * D + 2] = v; rows[i * D + 3] = -v;
    }
    st = pkv_store_write(g_cache, 0, slots, n, rows, NULL, PKV_F32);
    if (st != PKV_OK) WFAIL(w, "store_write: %s", pkv_strerror(st));
    s->len += n;
    return PKV_OK;
}

static void truncate_to(worker *w, mseq *s, int32_t len) {
    int st = pkv_seq_truncate(g_cache, s->h, len);
    if (st != PKV_OK) WFAIL(w, "truncate: %s", pkv_strerror(st));
    else s->len = len;
}

/* Reads every row of s back and compares it with the model. */
static void verify(worker *w, const mseq *s) {
    int32_t blocks[MAXLEN], nb = -1, len = -1;
    int st = pkv_seq_length(g_cache, s->h, &len);
    if (st != PKV_OK || len != s->len) {
        WFAIL(w, "length: %s, %d vs model %d", pkv_strerror(st), len, s->len);
        return;
    }
    st = pkv_seq_blocks(g_cache, s->h, blocks, MAXLEN, &nb);
    if (st != PKV_OK || nb != (s->len + BS - 1) / BS) {
        WFAIL(w, "blocks: %s, %d blocks for %d tokens", pkv_strerror(st), nb, s->len);
        return;
    }
    int64_t slots[MAXLEN];
    float rows[MAXLEN * D];
    for (int32_t p = 0; p < s->len; p++) slots[p] = (int64_t)blocks[p / BS] * BS + p % BS;
    st = pkv_store_read(g_cache, 0, slots, s->len, rows, NULL);
    if (st != PKV_OK) {
        WFAIL(w, "store_read: %s", pkv_strerror(st));
        return;
    }
    w->checks++;
    for (int32_t p = 0; p < s->len; p++) {
        float v = s->v[p];
        if (rows[p * D] != v || rows[p * D + 1] != -v || rows[p * D + 2] != v || rows[p * D + 3] != -v) {
            WFAIL(w, "thread %d: position %d holds %g, model %g", w->id, p, (double)rows[p * D], (double)v);
            return;
        }
    }
}

static void free_own(worker *w, int i) {
    int st = pkv_seq_free(g_cache, w->own[i].h);
    if (st != PKV_OK) WFAIL(w, "free: %s", pkv_strerror(st));
    st = pkv_seq_free(g_cache, w->own[i].h);
    if (st != PKV_ERR_NO_SEQ) WFAIL(w, "double free gave %s", pkv_strerror(st));
    w->own[i] = w->own[--w->nown];
}

static void one_op(worker *w) {
    uint32_t op = test_below(&w->rng, 100);
    mseq *s = w->nown ? &w->own[test_below(&w->rng, (uint32_t)w->nown)] : NULL;
    if (!s || (op < 8 && w->nown < OWN)) { /* create */
        if (w->nown == OWN) return;
        mseq *n = &w->own[w->nown];
        memset(n, 0, sizeof *n);
        int st = pkv_seq_create(g_cache, (uint64_t)w->id, &n->h);
        if (st != PKV_OK) WFAIL(w, "create: %s", pkv_strerror(st));
        else w->nown++;
    } else if (op < 40) { /* append to an own sequence (copy-on-write when shared) */
        int32_t n = 1 + (int32_t)test_below(&w->rng, 9);
        if (s->len + n <= MAXLEN) append_rows(w, s, n, (uint32_t)w->id, &w->counter);
        else truncate_to(w, s, (int32_t)test_below(&w->rng, (uint32_t)s->len + 1));
    } else if (op < 50) {
        truncate_to(w, s, (int32_t)test_below(&w->rng, (uint32_t)s->len + 1));
    } else if (op < 58) {
        free_own(w, (int)(s - w->own));
    } else if (op < 64) { /* fork an own sequence */
        if (w->nown == OWN) free_own(w, (int)test_below(&w->rng, OWN));
        s = &w->own[test_below(&w->rng, (uint32_t)w->nown)];
        mseq *c = &w->own[w->nown];
        *c = *s;
        int st = pkv_seq_fork(g_cache, s->h, &c->h);
        if (st != PKV_OK) WFAIL(w, "fork: %s", pkv_strerror(st));
        else w->nown++;
    } else if (op < 72) { /* fork a shared parent */
        if (w->nown == OWN) free_own(w, (int)test_below(&w->rng, OWN));
        shared_seq *p = &g_shared[test_below(&w->rng, NSHARED)];
        mseq *c = &w->own[w->nown];
        pthread_rwlock_rdlock(&p->lock);
        *c = p->s;
        int st = pkv_seq_fork(g_cache, p->s.h, &c->h);
        pthread_rwlock_unlock(&p->lock);
        if (st != PKV_OK) WFAIL(w, "fork shared: %s", pkv_strerror(st));
        else w->nown++;
    } else if (op < 78) { /* mutate a shared parent */
        shared_seq *p = &g_shared[test_below(&w->rng, NSHARED)];
        pthread_rwlock_wrlock(&p->lock);
        int32_t n = 1 + (int32_t)test_below(&w->rng, 6);
        if (p->s.len + n <= MAXLEN && test_below(&w->rng, 3))
            append_rows(w, &p->s, n, SHARED_TAG, &p->counter);
        else
            truncate_to(w, &p->s, (int32_t)test_below(&w->rng, (uint32_t)p->s.len + 1));
        verify(w, &p->s);
        pthread_rwlock_unlock(&p->lock);
    } else if (op < 92) {
        verify(w, s);
    } else if (op < 95) { /* exports of own sequences */
        pkv_seq hs[OWN];
        int32_t table[OWN * (MAXLEN / BS)], lens[OWN], needed;
        for (int i = 0; i < w->nown; i++) hs[i] = w->own[i].h;
        int st = pkv_export_flashmla(g_cache, hs, w->nown, table, MAXLEN / BS, lens, &needed);
        if (st != PKV_OK) WFAIL(w, "export: %s", pkv_strerror(st));
        for (int i = 0; st == PKV_OK && i < w->nown; i++)
            if (lens[i] != w->own[i].len) WFAIL(w, "export length %d vs model %d", lens[i], w->own[i].len);
    } else if (op < 98) {
        pkv_stats stats = PKV_STATS_INIT;
        int st = pkv_cache_stats(g_cache, &stats);
        if (st != PKV_OK || stats.free_blocks + stats.used_blocks + stats.evictable_blocks != NB)
            WFAIL(w, "stats: %s, free %d used %d", pkv_strerror(st), stats.free_blocks, stats.used_blocks);
    } else {
        int st = pkv_cache_check(g_cache);
        if (st != PKV_OK) WFAIL(w, "check: %s", pkv_strerror(st));
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    for (long i = 0; i < g_ops_per_thread && !w->fails; i++) {
        one_op(w);
        w->ops++;
    }
    for (int i = 0; i < w->nown; i++) verify(w, &w->own[i]);
    while (w->nown) free_own(w, 0);
    return NULL;
}

static void test_random_ops(long total_ops) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = NB;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_THREAD_SAFE;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = 1;
    cfg.h_kv = 1;
    cfg.d = D;
    cfg.dv = D;
    cfg.kv_dtype = PKV_F32;
    CHECK_OK(pkv_cache_create(&cfg, &g_cache));
    if (!g_cache) return;
    worker setup_w;
    memset(&setup_w, 0, sizeof setup_w);
    for (int i = 0; i < NSHARED; i++) {
        shared_seq *p = &g_shared[i];
        memset(p, 0, sizeof *p);
        pthread_rwlock_init(&p->lock, NULL);
        CHECK_OK(pkv_seq_create(g_cache, 0, &p->s.h));
        CHECK_OK(append_rows(&setup_w, &p->s, 6 + 3 * i, SHARED_TAG, &p->counter));
    }
    g_ops_per_thread = total_ops / NTHREADS;
    worker *ws = calloc(NTHREADS, sizeof *ws);
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        ws[i].id = i;
        ws[i].rng.s = 0x5eed0000u + (uint64_t)i;
        CHECK_INT(pthread_create(&th[i], NULL, worker_main, &ws[i]), 0);
    }
    long ops = 0, capacity = 0, checks = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        ops += ws[i].ops;
        capacity += ws[i].capacity;
        checks += ws[i].checks;
        test_checks_++;
        if (ws[i].fails) TEST_FAIL_("thread %d: %ld failures, first: %s", i, ws[i].fails, ws[i].err);
    }
    CHECK_OK(pkv_cache_check(g_cache));
    pkv_stats stats = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(g_cache, &stats));
    CHECK_INT(stats.num_seqs, NSHARED);
    for (int i = 0; i < NSHARED; i++) {
        verify(&setup_w, &g_shared[i].s);
        CHECK_OK(pkv_seq_free(g_cache, g_shared[i].s.h));
        pthread_rwlock_destroy(&g_shared[i].lock);
    }
    CHECK_INT(setup_w.fails, 0);
    CHECK_OK(pkv_cache_check(g_cache));
    CHECK_OK(pkv_cache_stats(g_cache, &stats));
    CHECK_INT(stats.free_blocks, NB);
    CHECK_INT(stats.num_seqs, 0);
    printf("threads: %d threads, %ld operations on one thread-safe cache (%ld content checks, "
           "%ld appends refused for capacity, %lld copy-on-write copies)\n",
           NTHREADS, ops, checks, capacity, (long long)stats.cow_copies);
    free(ws);
    pkv_cache_destroy(g_cache);
    g_cache = NULL;
}

/* ---- prefix cache under threads ---- */

/* 8 threads serve prompts from a small shared table (common prefixes, two
 * namespaces) on one thread-safe prefix-cache cache: lookup, append the rest
 * with token ids, write the rows, register, decode a few tokens, check every
 * position, free. A position's value is a hash of (namespace, tokens up to it),
 * the KV a model would compute, so a cache hit must read back exactly the
 * values this thread expects: a hit on another prompt's block would show. */
enum { PNB = 64, PBS = 4, NPROMPTS = 6, PMAX = 40 };

static pkv_cache *g_pcache;
static int32_t g_prompts[NPROMPTS][PMAX];
static int32_t g_prompt_len[NPROMPTS];
static long g_prefix_iters;

static float token_value(uint64_t ns, const int32_t *toks, int32_t pos) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ns;
    for (int32_t i = 0; i <= pos; i++) {
        h ^= (uint32_t)toks[i];
        h *= 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
    }
    return (float)(h % 1000003u);
}

typedef struct pworker {
    int id;
    test_rng rng;
    long ops, hit_tokens, prompt_tokens, capacity, fails;
    char err[256];
} pworker;

static int pcheck(pworker *w, pkv_seq s, uint64_t ns, const int32_t *toks, int32_t len) {
    int32_t blocks[PMAX + 8], n = 0;
    int64_t slots[PMAX + 8];
    float rows[(PMAX + 8) * D];
    if (len > PMAX + 8 || pkv_seq_blocks(g_pcache, s, blocks, PMAX + 8, &n) != PKV_OK) return 0;
    for (int32_t p = 0; p < len; p++) slots[p] = (int64_t)blocks[p / PBS] * PBS + p % PBS;
    if (len && pkv_store_read(g_pcache, 0, slots, len, rows, NULL) != PKV_OK) return 0;
    w->ops += 2;
    for (int32_t p = 0; p < len; p++) {
        float v = token_value(ns, toks, p);
        if (rows[p * D] != v || rows[p * D + 1] != -v) {
            if (!w->fails++)
                snprintf(w->err, sizeof w->err, "thread %d: position %d of a %d-token prompt holds %g, want %g",
                         w->id, p, len, (double)rows[p * D], (double)v);
            return 0;
        }
    }
    return 1;
}

static void *pworker_main(void *arg) {
    pworker *w = arg;
    for (long it = 0; it < g_prefix_iters && !w->fails; it++) {
        int pi = (int)test_below(&w->rng, NPROMPTS);
        uint64_t ns = test_below(&w->rng, 2);
        int32_t toks[PMAX + 8];
        int32_t len = g_prompt_len[pi];
        memcpy(toks, g_prompts[pi], (size_t)len * sizeof *toks);
        pkv_seq s;
        int32_t hit = -1;
        int st = pkv_prefix_lookup(g_pcache, ns, toks, len, &s, &hit);
        w->ops++;
        if (st != PKV_OK) {
            if (!w->fails++) snprintf(w->err, sizeof w->err, "lookup: %s", pkv_strerror(st));
            break;
        }
        w->hit_tokens += hit;
        w->prompt_tokens += len;
        pcheck(w, s, ns, toks, hit);
        /* the rest of the prompt, then a few decoded tokens */
        int32_t dec = (int32_t)test_below(&w->rng, 8);
        for (int32_t i = 0; i < dec; i++) toks[len + i] = 100 + (int32_t)test_below(&w->rng, 3);
        int32_t total = len + dec, n = total - hit;
        int64_t slots[PMAX + 8];
        st = pkv_seq_append(g_pcache, s, n, toks + hit, slots, NULL);
        w->ops++;
        if (st == PKV_OK) {
            float rows[(PMAX + 8) * D];
            for (int32_t i = 0; i < n; i++) {
                float v = token_value(ns, toks, hit + i);
                rows[i * D] = v; rows[i * D + 1] = -v; rows[i * D + 2] = v; rows[i * D + 3] = -v;
            }
            st = pkv_store_write(g_pcache, 0, slots, n, rows, NULL, PKV_F32);
            if (st == PKV_OK) st = pkv_prefix_register(g_pcache, s, NULL, NULL);
            w->ops += 2;
            if (st != PKV_OK && !w->fails++) snprintf(w->err, sizeof w->err, "write/register: %s", pkv_strerror(st));
            pcheck(w, s, ns, toks, total);
        } else if (st == PKV_ERR_CAPACITY) {
            w->capacity++;
        } else if (!w->fails++) {
            snprintf(w->err, sizeof w->err, "append: %s", pkv_strerror(st));
        }
        st = pkv_seq_free(g_pcache, s);
        w->ops++;
        if (st != PKV_OK && !w->fails++) snprintf(w->err, sizeof w->err, "free: %s", pkv_strerror(st));
        if (test_below(&w->rng, 64) == 0) {
            st = pkv_cache_check(g_pcache);
            w->ops++;
            if (st != PKV_OK && !w->fails++) snprintf(w->err, sizeof w->err, "check: %s", pkv_cache_last_error(g_pcache));
        }
    }
    return NULL;
}

static void test_prefix_threads(long iters) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = PNB;
    cfg.block_size = PBS;
    cfg.flags = PKV_FLAG_THREAD_SAFE | PKV_FLAG_PREFIX_CACHE;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = 1;
    cfg.h_kv = 1;
    cfg.d = D;
    cfg.dv = D;
    cfg.kv_dtype = PKV_F32;
    CHECK_OK(pkv_cache_create(&cfg, &g_pcache));
    if (!g_pcache) return;
    test_rng rng = {7};
    for (int i = 0; i < NPROMPTS; i++) {
        /* prompts share prefixes: each starts as a copy of an earlier one */
        g_prompt_len[i] = 3 + (int32_t)test_below(&rng, PMAX - 3);
        int from = i ? (int)test_below(&rng, (uint32_t)i) : 0;
        int32_t keep = i ? (int32_t)test_below(&rng, (uint32_t)g_prompt_len[from] + 1) : 0;
        for (int32_t p = 0; p < g_prompt_len[i]; p++)
            g_prompts[i][p] = p < keep ? g_prompts[from][p] : (int32_t)test_below(&rng, 4);
    }
    g_prefix_iters = iters / NTHREADS;
    pworker *ws = calloc(NTHREADS, sizeof *ws);
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        ws[i].id = i;
        ws[i].rng.s = 0xabc00u + (uint64_t)i;
        CHECK_INT(pthread_create(&th[i], NULL, pworker_main, &ws[i]), 0);
    }
    long ops = 0, hit = 0, prompt = 0, cap = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        ops += ws[i].ops;
        hit += ws[i].hit_tokens;
        prompt += ws[i].prompt_tokens;
        cap += ws[i].capacity;
        test_checks_++;
        if (ws[i].fails) TEST_FAIL_("prefix thread %d: %ld failures, first: %s", i, ws[i].fails, ws[i].err);
    }
    CHECK_OK(pkv_cache_check(g_pcache));
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(g_pcache, &st));
    CHECK_INT(st.num_seqs, 0);
    CHECK_INT(st.used_blocks, 0);
    CHECK_INT(st.free_blocks + st.evictable_blocks, PNB);
    printf("threads: %d threads, %ld operations on one thread-safe prefix cache (%.0f%% of prompt tokens hit, "
           "%lld evictions, %lld dedups, %ld appends refused for capacity)\n",
           NTHREADS, ops, prompt ? 100.0 * (double)hit / (double)prompt : 0.0, (long long)st.evictions,
           (long long)st.dedups, cap);
    free(ws);
    pkv_cache_destroy(g_pcache);
    g_pcache = NULL;
}

/* ---- concurrent attention ---- */

enum { AB = 4, AHQ = 4, AHKV = 2, AD = 32, ADV = 32, ABS = 16, ANB = 64, AMB = 16, ASQ = 2 };

typedef struct attn_job {
    const pkv_attn_args *base;
    pkv_workers *w;
    int reps;
    float out[AB * ASQ * AHQ * ADV], lse[AB * AHQ * ASQ];
    const float *want_out, *want_lse;
    int status, mismatches;
} attn_job;

static void *attn_main(void *arg) {
    attn_job *j = arg;
    for (int r = 0; r < j->reps; r++) {
        pkv_attn_args a = *j->base;
        a.out = j->out;
        a.lse = j->lse;
        int st = pkv_attn(&a, j->w);
        if (st != PKV_OK) j->status = st;
        if (memcmp(j->out, j->want_out, sizeof j->out) || memcmp(j->lse, j->want_lse, sizeof j->lse))
            j->mismatches++;
    }
    return NULL;
}

static void test_concurrent_attn(int reps) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = ANB;
    cfg.block_size = ABS;
    cfg.flags = PKV_FLAG_THREAD_SAFE;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = 1;
    cfg.h_kv = AHKV;
    cfg.d = AD;
    cfg.dv = ADV;
    cfg.v_separate = 1;
    cfg.kv_dtype = PKV_BF16;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    if (!c) return;
    test_rng rng = {42};
    pkv_seq seqs[AB];
    int32_t lens[AB] = {1, 37, 200, 97};
    static float krow[256 * AHKV * AD], vrow[256 * AHKV * ADV];
    int64_t slots[256];
    for (int b = 0; b < AB; b++) {
        CHECK_OK(pkv_seq_create(c, 0, &seqs[b]));
        CHECK_OK(pkv_seq_append(c, seqs[b], lens[b], NULL, slots, NULL));
        for (int i = 0; i < lens[b] * AHKV * AD; i++) krow[i] = (float)test_normal(&rng);
        for (int i = 0; i < lens[b] * AHKV * ADV; i++) vrow[i] = (float)test_normal(&rng);
        CHECK_OK(pkv_store_write(c, 0, slots, lens[b], krow, vrow, PKV_F32));
    }
    static int32_t table[AB * AMB];
    int32_t seqlens[AB], needed;
    CHECK_OK(pkv_export_flashmla(c, seqs, AB, table, AMB, seqlens, &needed));
    static float q[AB * ASQ * AHQ * AD];
    for (size_t i = 0; i < sizeof q / sizeof *q; i++) q[i] = (float)test_normal(&rng);
    void *kc, *vc;
    CHECK_OK(pkv_store_arenas(c, 0, &kc, &vc));
    pkv_attn_args a;
    pkv_attn_args_init(&a);
    a.batch = AB;
    a.s_q = ASQ;
    a.h_q = AHQ;
    a.h_kv = AHKV;
    a.d = AD;
    a.dv = ADV;
    a.block_size = ABS;
    a.max_blocks_per_seq = AMB;
    a.num_blocks = ANB;
    a.causal = 1;
    a.softmax_scale = 0.17f;
    a.q_dtype = PKV_F32;
    a.kv_dtype = PKV_BF16;
    a.q = q;
    a.k_cache = kc;
    a.v_cache = vc;
    a.block_table = table;
    a.cache_seqlens = seqlens;

    pkv_workers *shared = NULL, *priv[NTHREADS] = {0};
    CHECK_OK(pkv_workers_create(2, &shared));
    attn_job *jobs = calloc(NTHREADS, sizeof *jobs);
    attn_job *serial = calloc(NTHREADS, sizeof *serial);
    for (int i = 0; i < NTHREADS; i++) {
        /* thread i: no pool (i % 3 == 0), the shared pool (1), a private pool (2) */
        pkv_workers *w = NULL;
        if (i % 3 == 1) w = shared;
        if (i % 3 == 2) {
            CHECK_OK(pkv_workers_create(2, &priv[i]));
            w = priv[i];
        }
        /* the serial result of the same call */
        pkv_attn_args s = a;
        s.out = serial[i].out;
        s.lse = serial[i].lse;
        CHECK_OK(pkv_attn(&s, w));
        jobs[i].base = &a;
        jobs[i].w = w;
        jobs[i].reps = reps;
        jobs[i].want_out = serial[i].out;
        jobs[i].want_lse = serial[i].lse;
    }
    /* the oracle agrees with the serial result (sanity; tolerance as FlashMLA's) */
    attn_job ref;
    pkv_attn_args r = a;
    r.out = ref.out;
    r.lse = ref.lse;
    CHECK_OK(pkv_attn_reference(&r));
    for (size_t i = 0; i < sizeof ref.out / sizeof *ref.out; i++)
        CHECK_NEAR(serial[0].out[i], ref.out[i], 8e-4 + 2.01 / 128 * fabs(ref.out[i]));
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) CHECK_INT(pthread_create(&th[i], NULL, attn_main, &jobs[i]), 0);
    /* meanwhile the cache keeps changing elsewhere (other sequences only) */
    pkv_seq other;
    CHECK_OK(pkv_seq_create(c, 1, &other));
    for (int i = 0; i < 50; i++) {
        CHECK_OK(pkv_seq_append(c, other, 3, NULL, slots, NULL));
        CHECK_OK(pkv_store_write(c, 0, slots, 3, krow, vrow, PKV_F32));
        if (i % 10 == 9) CHECK_OK(pkv_seq_truncate(c, other, 0));
    }
    long calls = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_OK(jobs[i].status);
        CHECK_INT(jobs[i].mismatches, 0);
        calls += jobs[i].reps;
    }
    CHECK_OK(pkv_cache_check(c));
    printf("threads: %ld concurrent pkv_attn calls on %d threads, identical to serial runs\n", calls, NTHREADS);
    for (int i = 0; i < NTHREADS; i++) pkv_workers_destroy(priv[i]);
    pkv_workers_destroy(shared);
    free(jobs);
    free(serial);
    pkv_cache_destroy(c);
}

int main(void) {
    test_random_ops(test_scaled(4000000));
    test_prefix_threads(test_scaled(300000));
    test_concurrent_attn((int)test_scaled(40));
    return test_report("test_threads");
}
