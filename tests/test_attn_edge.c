/* Edges of pkv_attn that validation lets through, on every ISA level this CPU
 * runs (forced kernels, as the tests of the fast path do):
 *  1. h_q * s_q >= 2^31 query rows per sequence (int32 row arithmetic in the
 *     scheduler once divided by zero: SIGFPE). The arrays are huge but made of
 *     one small shared buffer mapped again and again, so every row computes the
 *     same value; a child process runs the call while the parent watches the
 *     shared buffer fill with the expected values, then stops it.
 *  2. Non-finite and overflowing inputs: NaN / +-Inf in q, K, V, scores that
 *     overflow float but not double, softmax_scale 3e38, the FP8 NaN code in a
 *     row written by someone else. Every path must give exactly what the
 *     oracle (double precision) gives: rows that meet a non-finite value are
 *     recomputed the oracle's way. */
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "attn/kernels.h"
#include "fp8.h"
#include "test.h"

/* The one place this file builds pkv_attn_args: geometry and dtypes; the
 * caller points the arrays. */
static void edge_args(pkv_attn_args *a, int32_t b, int32_t s_q, int32_t h_q, int32_t h_kv, int32_t d, int32_t dv,
                      int32_t block_size, int32_t mbps, int32_t num_blocks, int32_t causal, float scale, int32_t q_dtype,
                      int32_t kv_dtype) {
    pkv_attn_args_init(a);
    a->batch = b;
    a->s_q = s_q;
    a->h_q = h_q;
    a->h_kv = h_kv;
    a->d = d;
    a->dv = dv;
    a->block_size = block_size;
    a->max_blocks_per_seq = mbps;
    a->num_blocks = num_blocks;
    a->causal = causal;
    a->softmax_scale = scale;
    a->q_dtype = q_dtype;
    a->kv_dtype = kv_dtype;
}

/* ---------------- 1. 2^31 query rows ---------------- */

/* An fd of `bytes` of shared memory (memfd, else an unlinked file in /tmp). */
static int shared_fd(size_t bytes) {
    int fd = -1;
#ifdef SYS_memfd_create
    fd = (int)syscall(SYS_memfd_create, "pkv_test", 0);
#endif
    if (fd < 0) {
        char path[] = "/tmp/pkv_test_edge.XXXXXX";
        fd = mkstemp(path);
        if (fd >= 0) unlink(path);
    }
    if (fd >= 0 && ftruncate(fd, (off_t)bytes) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* total bytes of address space whose every window of `win` bytes maps the
 * same window of fd; NULL on failure. */
static void *alias_map(int fd, size_t win, size_t total) {
    char *base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return NULL;
    for (size_t off = 0; off < total; off += win)
        if (mmap(base + off, win, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
            munmap(base, total);
            return NULL;
        }
    return base;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 1 when every float of w[0..n) is within tol of want. */
static int all_near(const volatile float *w, size_t n, float want, float tol) {
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(w[i] - want) <= tol)) return 0;
    return 1;
}

/* lse[h][s] of the rows computed first (query tokens s < 8 of every head),
 * as they fall into the 2^18 floats of the lse window. */
static int lse_filled(const volatile float *lse, float want) {
    for (int h = 0; h < 4; h++)
        if (!all_near(lse + (size_t)h * (1u << 16), 8, want, 1e-6f)) return 0;
    return 1;
}

/* b = 1, h_q = 2^15, s_q = 2^16 (2^31 query rows), h_kv = 1, d = dv = 1, one key:
 * every row's out is V = 2 and lse = q.k * scale = 1. */
static void test_huge_rows(void) {
    if (test_scaled(100) < 5) { /* valgrind runs: skipped */
        printf("test_attn_edge: 2^31-row case skipped at this PKV_TEST_SCALE\n");
        return;
    }
    enum { HQ = 1 << 15, SQ = 1 << 16 };
    const size_t rows = (size_t)HQ * SQ, win = (size_t)1 << 20;
    const int dts[2] = {PKV_F32, PKV_BF16};
    for (int di = 0; di < 2; di++) {
        const int dt = dts[di];
        const size_t esz = pkv_dtype_size(dt);
        int fq = shared_fd(win), fo = shared_fd(win), fl = shared_fd(win);
        CHECK(fq >= 0 && fo >= 0 && fl >= 0);
        if (fq < 0 || fo < 0 || fl < 0) return;
        void *q = alias_map(fq, win, rows * esz);
        float *out = alias_map(fo, win, rows * sizeof(float)), *lse = alias_map(fl, win, rows * sizeof(float));
        CHECK(q && out && lse);
        if (!q || !out || !lse) return;
        for (size_t i = 0; i < win / esz; i++) {
            if (dt == PKV_F32) ((float *)q)[i] = 1.0f;
            else ((uint16_t *)q)[i] = 0x3f80; /* 1.0 */
        }
        float kf = 2.0f;
        uint16_t kb = 0x4000; /* 2.0 */
        int32_t table = 0, len = 1;
        pkv_attn_args a;
        edge_args(&a, 1, SQ, HQ, 1, 1, 1, 1, 1, 1, 0, 0.5f, dt, dt);
        a.q = q, a.k_cache = dt == PKV_F32 ? (const void *)&kf : (const void *)&kb;
        a.block_table = &table, a.cache_seqlens = &len, a.out = out, a.lse = lse;
        CHECK_OK(attn_validate(&a));
        /* the oracle on one of these rows: the expected values */
        pkv_attn_args one = a;
        one.h_q = one.s_q = 1;
        float o1 = 0, l1 = 0;
        one.out = &o1, one.lse = &l1;
        CHECK_OK(pkv_attn_reference(&one));
        CHECK(o1 == 2.0f && fabsf(l1 - 1.0f) < 1e-6f);
        for (int isa = 0; pkv_isa_label(isa); isa++) {
            const attn_ops *ops = pkv_isa_supported(isa) ? attn_ops_for(isa, dt, dt) : NULL;
            if (!ops) continue;
            for (size_t i = 0; i < win / 4; i++) out[i] = lse[i] = -7.0f;
            fflush(stdout);
            const pid_t pid = fork();
            if (pid == 0) { /* the best level also with a pool of 2 (split into chunks) */
                pkv_workers *w = NULL;
                if (isa == pkv_isa_active() && pkv_workers_create(2, &w) != PKV_OK) _exit(4);
                _exit(attn_fast_run(&a, w, ops) == PKV_OK ? 0 : 3);
            }
            CHECK(pid > 0);
            if (pid <= 0) continue;
            const double t0 = now_s();
            int st = 0, done = 0, filled = 0;
            while (!done && now_s() - t0 < 60) {
                filled = all_near(out, win / 4, o1, 0) && lse_filled(lse, l1);
                if (filled) break;
                done = waitpid(pid, &st, WNOHANG) == pid;
                if (!done) usleep(20000);
            }
            if (!done) {
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
            } else if (WIFSIGNALED(st)) {
                TEST_FAIL_("%s: the child died of signal %d (%s)", ops->name, WTERMSIG(st), strsignal(WTERMSIG(st)));
            } else {
                CHECK_INT(WEXITSTATUS(st), 0);
            }
            if (!filled) filled = all_near(out, win / 4, o1, 0) && lse_filled(lse, l1);
            if (!filled)
                TEST_FAIL_("%s: 2^31 rows: out[0] %.9g lse[0] %.9g after %.1f s, want %.9g and %.9g", ops->name,
                           (double)out[0], (double)lse[0], now_s() - t0, (double)o1, (double)l1);
            else
                printf("2^31 query rows, %s: the first %zu rows right after %.2f s\n", ops->name, win / 4, now_s() - t0);
            test_checks_++;
        }
        munmap(q, rows * esz);
        munmap(out, rows * sizeof(float));
        munmap(lse, rows * sizeof(float));
        close(fq), close(fo), close(fl);
    }
}

/* ---------------- 2. non-finite and overflowing inputs ---------------- */

typedef struct ecase {
    pkv_attn_args a;
    void *q, *k, *v;
    int32_t *table, *lens, *ix;
    float *sink, *out, *lse;
} ecase;

static void put(void *base, int dt, size_t i, float x) {
    if (dt == PKV_F32) ((float *)base)[i] = x;
    else if (dt == PKV_BF16) ((uint16_t *)base)[i] = pkv_f32_to_bf16(x);
    else ((uint16_t *)base)[i] = pkv_f32_to_f16(x);
}

/* b sequences of lengths len0, len0 + 37, ... (contiguous blocks), N(0, 1) data
 * (FP8 rows quantized from it); sparse: topk = 48 slots of each sequence. */
static void ec_make(ecase *e, int32_t b, int32_t s_q, int32_t h_q, int32_t h_kv, int32_t d, int32_t dv, int v_shared,
                    int32_t bs, int32_t len0, int32_t causal, int32_t qdt, int32_t kvdt, int sparse, uint64_t seed) {
    test_rng r = {seed};
    memset(e, 0, sizeof *e);
    e->lens = malloc(sizeof(int32_t) * (size_t)b);
    int32_t maxlen = 0;
    for (int32_t i = 0; i < b; i++) {
        e->lens[i] = len0 + 37 * i;
        if (e->lens[i] > maxlen) maxlen = e->lens[i];
    }
    const int32_t mbps = (maxlen + bs - 1) / bs, nb = mbps * b;
    edge_args(&e->a, b, s_q, h_q, h_kv, d, dv, bs, mbps, nb, causal, (float)(1.0 / sqrt((double)d)), qdt, kvdt);
    e->table = malloc(sizeof(int32_t) * (size_t)nb);
    for (int32_t i = 0; i < nb; i++) e->table[i] = i;
    const size_t slots = (size_t)nb * (size_t)bs;
    const int fp8 = kvdt == PKV_FP8_MLA656;
    if (fp8) {
        e->k = malloc(slots * PKV_MLA656_BYTES);
        float row[PKV_MLA656_DIM];
        for (size_t t = 0; t < slots; t++) {
            for (int c = 0; c < PKV_MLA656_DIM; c++) row[c] = (float)test_normal(&r);
            CHECK_OK(pkv_mla656_quantize(row, (uint8_t *)e->k + t * PKV_MLA656_BYTES, 0));
        }
    } else {
        const size_t nk = slots * (size_t)h_kv * (size_t)d;
        e->k = malloc(nk * pkv_dtype_size(kvdt));
        for (size_t i = 0; i < nk; i++) put(e->k, kvdt, i, (float)test_normal(&r));
        if (!v_shared) {
            const size_t nv = slots * (size_t)h_kv * (size_t)dv;
            e->v = malloc(nv * pkv_dtype_size(kvdt));
            for (size_t i = 0; i < nv; i++) put(e->v, kvdt, i, (float)test_normal(&r));
        }
    }
    const size_t nq = (size_t)b * (size_t)s_q * (size_t)h_q * (size_t)d;
    e->q = malloc(nq * pkv_dtype_size(qdt));
    for (size_t i = 0; i < nq; i++) put(e->q, qdt, i, (float)test_normal(&r));
    if (sparse) {
        enum { TOPK = 48 };
        e->ix = malloc(sizeof(int32_t) * (size_t)b * (size_t)s_q * TOPK);
        for (int32_t i = 0; i < b; i++)
            for (int32_t t = 0; t < s_q * TOPK; t++)
                e->ix[(size_t)i * (size_t)s_q * TOPK + (size_t)t] = t % 5 == 4 ? -1 : i * mbps * bs + t * 7 % e->lens[i];
        e->a.indices = e->ix;
        e->a.topk = TOPK;
        e->a.causal = 0;
    }
    e->out = malloc(sizeof(float) * nq / (size_t)d * (size_t)dv);
    e->lse = malloc(sizeof(float) * (size_t)b * (size_t)h_q * (size_t)s_q);
    e->a.q = e->q, e->a.k_cache = e->k, e->a.v_cache = e->v, e->a.block_table = e->table;
    e->a.cache_seqlens = e->lens, e->a.out = e->out, e->a.lse = e->lse;
}

static void ec_free(ecase *e) {
    free(e->q); free(e->k); free(e->v); free(e->table); free(e->lens); free(e->ix);
    free(e->sink); free(e->out); free(e->lse);
}

/* Element index of K (or V when v) value c of KV head kvh at key t of sequence b. */
static size_t kv_index(const ecase *e, int v, int32_t b, int32_t t, int32_t kvh, int32_t c) {
    const pkv_attn_args *a = &e->a;
    const size_t slot = (size_t)e->table[b * a->max_blocks_per_seq + t / a->block_size] * (size_t)a->block_size +
                        (size_t)(t % a->block_size);
    return (slot * (size_t)a->h_kv + (size_t)kvh) * (size_t)(v ? a->dv : a->d) + (size_t)c;
}

static size_t q_index(const ecase *e, int32_t b, int32_t s, int32_t h, int32_t c) {
    const pkv_attn_args *a = &e->a;
    return (((size_t)b * (size_t)a->s_q + (size_t)s) * (size_t)a->h_q + (size_t)h) * (size_t)a->d + (size_t)c;
}

static size_t out_n(const pkv_attn_args *a) { return (size_t)a->batch * (size_t)a->s_q * (size_t)a->h_q * (size_t)a->dv; }
static size_t lse_n(const pkv_attn_args *a) { return (size_t)a->batch * (size_t)a->s_q * (size_t)a->h_q; }

/* x agrees with the oracle's y: the same NaN / inf, else within tol. */
static int agrees(float x, float y, double tol) {
    if (isnan(y)) return isnan(x);
    if (isinf(y)) return x == y;
    return isfinite(x) && fabs((double)x - y) <= tol;
}

static pkv_workers *pool2;

/* Runs the oracle (results in ro / rl, caller frees), then every ISA level's
 * kernels with no pool and a 2-thread pool, each required to agree with it. */
static void ec_check(ecase *e, const char *what, float **ro, float **rl) {
    pkv_attn_args *a = &e->a;
    const size_t no = out_n(a), nl = lse_n(a);
    CHECK_OK(pkv_attn_reference(a));
    *ro = malloc(no * sizeof(float));
    *rl = malloc(nl * sizeof(float));
    memcpy(*ro, e->out, no * sizeof(float));
    memcpy(*rl, e->lse, nl * sizeof(float));
    double maxref = 0;
    for (size_t i = 0; i < no; i++)
        if (isfinite((*ro)[i]) && fabs((*ro)[i]) > maxref) maxref = fabs((*ro)[i]);
    for (int isa = 0; pkv_isa_label(isa); isa++) {
        const attn_ops *ops = pkv_isa_supported(isa) ? attn_ops_for(isa, a->q_dtype, a->kv_dtype) : NULL;
        if (!ops) continue;
        for (int pi = 0; pi < 2; pi++) {
            memset(e->out, 0x55, no * sizeof(float));
            memset(e->lse, 0x55, nl * sizeof(float));
            CHECK_OK(attn_fast_run(a, pi ? pool2 : NULL, ops));
            size_t bad = 0, first = 0, lbad = 0, lfirst = 0;
            for (size_t i = 0; i < no; i++)
                if (!agrees(e->out[i], (*ro)[i], 2e-3 * maxref) && !bad++) first = i;
            for (size_t i = 0; i < nl; i++)
                if (!agrees(e->lse[i], (*rl)[i], 1e-3 * fmax(1.0, fabs((*rl)[i]))) && !lbad++) lfirst = i;
            test_checks_++;
            if (bad || lbad)
                TEST_FAIL_("%s, %s kernels (%s), %s: %zu of %zu out differ from the oracle (first [%zu] %.9g, "
                           "oracle %.9g), %zu of %zu lse (first [%zu] %.9g, oracle %.9g)",
                           what, pkv_isa_label(isa), ops->name, pi ? "2-thread pool" : "no pool", bad, no, first,
                           (double)e->out[first], (double)(*ro)[first], lbad, nl, lfirst, (double)e->lse[lfirst],
                           (double)(*rl)[lfirst]);
        }
    }
    /* the public entry point too */
    CHECK_OK(pkv_attn(a, pool2));
    for (size_t i = 0; i < no; i++)
        if (!agrees(e->out[i], (*ro)[i], 2e-3 * maxref)) {
            TEST_FAIL_("%s, pkv_attn: out[%zu] %.9g, oracle %.9g", what, i, (double)e->out[i], (double)(*ro)[i]);
            break;
        }
}

/* Counts NaN / inf values of out row (b, s, h) and whether its lse is NaN. */
static int row_nans(const ecase *e, const float *ro, int32_t b, int32_t s, int32_t h) {
    const pkv_attn_args *a = &e->a;
    const float *o = ro + (((size_t)b * (size_t)a->s_q + (size_t)s) * (size_t)a->h_q + (size_t)h) * (size_t)a->dv;
    int n = 0;
    for (int32_t c = 0; c < a->dv; c++) n += isnan(o[c]);
    return n;
}

static float lse_at(const ecase *e, const float *rl, int32_t b, int32_t s, int32_t h) {
    return rl[((size_t)b * (size_t)e->a.h_q + (size_t)h) * (size_t)e->a.s_q + (size_t)s];
}

/* Geometries the cases run on: each reaches different kernels (many rows per
 * KV head: K^T tiles, bf16 pairs, AMX; few: the rows kernels; one long
 * sequence: split over the pool and combined). */
typedef struct geo {
    const char *name;
    int32_t b, s_q, h_q, h_kv, d, dv, v_shared, bs, len0, causal, qdt, kvdt, sparse;
} geo;

static const geo geos[] = {
    {"mla-like bf16, causal s_q 2", 2, 2, 16, 1, 64, 48, 1, 16, 150, 1, PKV_BF16, PKV_BF16, 0},
    {"gqa f16, separate V", 3, 1, 8, 4, 32, 32, 0, 16, 100, 0, PKV_F16, PKV_F16, 0},
    {"gqa f32, causal s_q 3, block 1", 2, 3, 4, 2, 16, 8, 0, 1, 70, 1, PKV_F32, PKV_F32, 0},
    {"q f32 with bf16 cache", 2, 1, 16, 1, 64, 64, 1, 64, 130, 0, PKV_F32, PKV_BF16, 0},
    {"one long sequence, split", 1, 1, 16, 1, 64, 64, 1, 64, 4000, 0, PKV_BF16, PKV_BF16, 0},
    {"sparse bf16", 2, 2, 16, 1, 64, 64, 1, 16, 100, 0, PKV_BF16, PKV_BF16, 1},
};

typedef enum { NAN_Q, NINF_Q, NAN_K, PINF_K, NAN_V, PINF_V, NAN_K_HIDDEN, OVERFLOW, HUGE_SCALE, NCASES } kind;
static const char *const kind_names[NCASES] = {
    "NaN in q", "-inf in q", "NaN in K", "+inf in K", "NaN in V", "+inf in V",
    "NaN in K/V of a key only later query tokens see", "q.k beyond float, not double", "softmax_scale 3e38"};

static void test_nonfinite(void) {
    int nrun = 0;
    for (size_t gi = 0; gi < sizeof geos / sizeof geos[0]; gi++) {
        const geo *g = &geos[gi];
        for (int k = 0; k < NCASES; k++) {
            if (k == NAN_K_HIDDEN && (!g->causal || g->sparse)) continue;
            ecase e;
            ec_make(&e, g->b, g->s_q, g->h_q, g->h_kv, g->d, g->dv, g->v_shared, g->bs, g->len0, g->causal, g->qdt,
                    g->kvdt, g->sparse, 100 + gi);
            void *vbase = g->v_shared ? e.k : e.v;
            const int32_t L = e.lens[0], key = g->sparse ? e.ix[3] : L / 2; /* sparse: slot of entry 3 */
            const int32_t last = L - 1; /* causal: only query token s_q - 1 sees it */
            switch (k) {
            case NAN_Q: put(e.q, g->qdt, q_index(&e, 0, 0, 1, 5), NAN); break;
            case NINF_Q: put(e.q, g->qdt, q_index(&e, 0, 0, 1, 5), -INFINITY); break;
            case NAN_K: put(e.k, g->kvdt, g->sparse ? (size_t)key * g->d + 3 : kv_index(&e, 0, 0, key, 0, 3), NAN); break;
            case PINF_K: put(e.k, g->kvdt, g->sparse ? (size_t)key * g->d + 3 : kv_index(&e, 0, 0, key, 0, 3), INFINITY); break;
            case NAN_V: put(vbase, g->kvdt, g->sparse ? (size_t)key * (g->v_shared ? g->d : g->dv) + 2 : kv_index(&e, !g->v_shared, 0, key, 0, 2), NAN); break;
            case PINF_V: put(vbase, g->kvdt, g->sparse ? (size_t)key * (g->v_shared ? g->d : g->dv) + 2 : kv_index(&e, !g->v_shared, 0, key, 0, 2), INFINITY); break;
            case NAN_K_HIDDEN:
                put(e.k, g->kvdt, kv_index(&e, 0, 0, last, 0, 1), NAN);
                if (!g->v_shared) put(e.v, g->kvdt, kv_index(&e, 1, 0, last, 0, 1), NAN);
                break;
            case OVERFLOW: /* one row's q and one key: q.k ~ 1e39 in double, inf in float */
                if (g->qdt == PKV_F16 || g->kvdt == PKV_F16) { ec_free(&e); continue; }
                for (int32_t c = 0; c < g->d; c++) put(e.q, g->qdt, q_index(&e, 0, 0, 0, c), 3e19f);
                for (int32_t c = 0; c < g->d; c++)
                    put(e.k, g->kvdt, g->sparse ? (size_t)key * g->d + (size_t)c : kv_index(&e, 0, 0, key, 0, c), 3e19f);
                e.a.softmax_scale = 1e-39f;
                break;
            case HUGE_SCALE: e.a.softmax_scale = 3e38f; break;
            }
            char what[200];
            snprintf(what, sizeof what, "%s: %s", g->name, kind_names[k]);
            float *ro, *rl;
            ec_check(&e, what, &ro, &rl);
            nrun++;
            /* what the oracle defines, checked independently of the kernels */
            const int32_t gsz = g->h_q / g->h_kv;
            switch (g->sparse ? NCASES : k) { /* sparse: who sees the key depends on the lists */
            case NAN_Q: /* that row only: out NaN, lse NaN (never the empty-row 0 / +inf) */
                CHECK_INT(row_nans(&e, ro, 0, 0, 1), g->dv);
                CHECK(isnan(lse_at(&e, rl, 0, 0, 1)));
                CHECK_INT(row_nans(&e, ro, 0, 0, 0), 0);
                break;
            case NAN_K: /* every row of KV head 0 that sees the key: all NaN */
                for (int32_t h = 0; h < g->h_q; h++) {
                    CHECK_INT(row_nans(&e, ro, 0, g->s_q - 1, h), h < gsz ? g->dv : 0);
                    CHECK(isnan(lse_at(&e, rl, 0, g->s_q - 1, h)) == (h < gsz));
                }
                if (g->b > 1) CHECK_INT(row_nans(&e, ro, 1, 0, 0), 0);
                break;
            case NAN_V: /* one dim of the rows that see the key: NaN there, lse finite
                           (V shared with K: a NaN in K, the whole row) */
                for (int32_t h = 0; h < g->h_q; h++) {
                    CHECK_INT(row_nans(&e, ro, 0, g->s_q - 1, h), h < gsz ? (g->v_shared ? g->dv : 1) : 0);
                    CHECK(isfinite(lse_at(&e, rl, 0, g->s_q - 1, h)) == (!g->v_shared || h >= gsz));
                }
                break;
            case NAN_K_HIDDEN: /* query tokens before the last do not see the key */
                for (int32_t h = 0; h < g->h_q; h++) {
                    CHECK_INT(row_nans(&e, ro, 0, 0, h), 0);
                    CHECK(isfinite(lse_at(&e, rl, 0, 0, h)));
                    CHECK_INT(row_nans(&e, ro, 0, g->s_q - 1, h), h < gsz ? g->dv : 0);
                }
                break;
            case OVERFLOW: /* finite in double: the row is finite, its lse about q.k * scale */
                CHECK_INT(row_nans(&e, ro, 0, 0, 0), 0);
                CHECK(isfinite(lse_at(&e, rl, 0, 0, 0)) && lse_at(&e, rl, 0, 0, 0) > 1.0f);
                break;
            default: break;
            }
            free(ro);
            free(rl);
            ec_free(&e);
        }
    }
    printf("non-finite inputs: %d cases, each on every ISA level with and without a pool, agree with the oracle\n",
           nrun);
}

/* FP8 rows written by someone else may hold the e4m3 NaN codes 0x7f / 0xff (and
 * scales that are not finite): the oracle reads NaN, so must every kernel. */
static void test_fp8_nan(void) {
    const uint8_t codes[2] = {0x7f, 0xff};
    for (int qi = 0; qi < 2; qi++) {
        const int32_t qdt = qi ? PKV_F32 : PKV_BF16;
        for (int ci = 0; ci < 3; ci++) {
            ecase e;
            ec_make(&e, 2, 2, 16, 1, PKV_MLA656_DIM, PKV_MLA656_LATENT, 1, 16, 90, 1, qdt, PKV_FP8_MLA656, 0, 7);
            const size_t slot = (size_t)e.table[0] * 16 + 40;
            uint8_t *row = (uint8_t *)e.k + slot * PKV_MLA656_BYTES;
            if (ci < 2) {
                row[300] = codes[ci]; /* in the latent part: K and V */
            } else {
                const float inf = INFINITY;
                memcpy(row + PKV_MLA656_SCALES + 4, &inf, 4); /* a scale of +inf */
            }
            char what[160];
            snprintf(what, sizeof what, "FP8 cache, q %s: %s", qi ? "f32" : "bf16",
                     ci == 0 ? "code 0x7f" : ci == 1 ? "code 0xff" : "scale +inf");
            float *ro, *rl;
            ec_check(&e, what, &ro, &rl);
            for (int32_t h = 0; h < 16; h++) {
                CHECK(isnan(lse_at(&e, rl, 0, 1, h)));
                CHECK(row_nans(&e, ro, 0, 1, h) > 0);
                CHECK_INT(row_nans(&e, ro, 1, 1, h), 0);
            }
            free(ro);
            free(rl);
            ec_free(&e);
        }
    }
}

int main(void) {
    CHECK_OK(pkv_workers_create(2, &pool2));
    test_nonfinite();
    test_fp8_nan();
    pkv_workers_destroy(pool2);
    test_huge_rows();
    return test_report("test_attn_edge");
}
