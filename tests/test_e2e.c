/* End to end: many sequences of random lengths grow, fork, copy-on-write and
 * shrink through the library in host mode; K/V rows are written through the
 * returned slots; the FlashMLA tables are exported and the oracle's output
 * over the paged cache is compared with attention computed here, naively,
 * over contiguous copies of each sequence's rows. */
#include "test.h"

#define MAXS 12
#define MAXLEN 300

typedef struct geom { int32_t h_kv, d, dv, sep, dtype, bs, h_q, s_q, causal; } geom;

typedef struct tseq {
    pkv_seq h;
    int32_t len;
    float *k, *v; /* contiguous copies: [MAXLEN][h_kv][d], [MAXLEN][h_kv][dv] */
} tseq;

/* Values that every dtype stores exactly: multiples of 1/64 in [-2, 2). */
static float exact_value(test_rng *r) { return (float)((int)test_below(r, 256) - 128) / 64.0f; }

/* Naive attention over contiguous rows for one sequence, in double. */
static void naive(const geom *g, const float *q, const tseq *s, float scale, double *out, double *lse) {
    int32_t group = g->h_q / g->h_kv;
    for (int32_t i = 0; i < g->s_q; i++)
        for (int32_t h = 0; h < g->h_q; h++) {
            int32_t kvh = h / group, keys = g->causal ? s->len - g->s_q + i + 1 : s->len;
            if (keys > s->len) keys = s->len;
            double *o = out + ((size_t)i * g->h_q + h) * g->dv, m = -INFINITY, sum = 0;
            for (int32_t e = 0; e < g->dv; e++) o[e] = 0;
            const float *qq = q + ((size_t)i * g->h_q + h) * g->d;
            double sc[MAXLEN];
            for (int32_t t = 0; t < keys; t++) {
                const float *kr = s->k + ((size_t)t * g->h_kv + kvh) * g->d;
                double dot = 0;
                for (int32_t e = 0; e < g->d; e++) dot += (double)qq[e] * kr[e];
                sc[t] = dot * scale;
                if (sc[t] > m) m = sc[t];
            }
            for (int32_t t = 0; t < keys; t++) {
                double w = exp(sc[t] - m);
                sum += w;
                const float *vr = g->sep ? s->v + ((size_t)t * g->h_kv + kvh) * g->dv
                                         : s->k + ((size_t)t * g->h_kv + kvh) * g->d;
                for (int32_t e = 0; e < g->dv; e++) o[e] += w * vr[e];
            }
            for (int32_t e = 0; e < g->dv && keys > 0; e++) o[e] /= sum;
            lse[(size_t)h * g->s_q + i] = keys > 0 ? m + log(sum) : INFINITY;
        }
}

static void write_rows(const geom *g, pkv_cache *c, tseq *s, const int64_t *slots, int32_t n, test_rng *r) {
    size_t kr = (size_t)g->h_kv * g->d, vr = (size_t)g->h_kv * g->dv;
    for (int32_t i = 0; i < n; i++) {
        for (size_t e = 0; e < kr; e++) s->k[(size_t)(s->len + i) * kr + e] = exact_value(r);
        for (size_t e = 0; g->sep && e < vr; e++) s->v[(size_t)(s->len + i) * vr + e] = exact_value(r);
    }
    CHECK_OK(pkv_store_write(c, 0, slots, n, s->k + (size_t)s->len * kr, g->sep ? s->v + (size_t)s->len * vr : NULL,
                             PKV_F32));
}

static void run(const geom *g, uint64_t seed, int rounds) {
    test_rng r = {seed};
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_blocks = MAXS * (MAXLEN / g->bs + 2);
    cfg.block_size = g->bs;
    cfg.h_kv = g->h_kv;
    cfg.d = g->d;
    cfg.dv = g->dv;
    cfg.v_separate = g->sep;
    cfg.kv_dtype = g->dtype;
    pkv_cache *c;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    tseq s[MAXS];
    size_t kr = (size_t)g->h_kv * g->d, vr = (size_t)g->h_kv * g->dv;
    for (int i = 0; i < MAXS; i++) {
        s[i].k = calloc(MAXLEN * kr, sizeof(float));
        s[i].v = calloc(MAXLEN * vr, sizeof(float));
        CHECK_OK(pkv_seq_create(c, 0, &s[i].h));
        s[i].len = 0;
    }
    int64_t slots[MAXLEN];
    int32_t mbps = MAXLEN / g->bs + 1;
    int32_t *table = malloc(sizeof(int32_t) * MAXS * mbps), lens[MAXS];
    pkv_seq hs[MAXS];
    float *q = malloc(sizeof(float) * MAXS * g->s_q * g->h_q * g->d);
    float *out = malloc(sizeof(float) * MAXS * g->s_q * g->h_q * g->dv), *lse = malloc(sizeof(float) * MAXS * g->h_q * g->s_q);
    double *want = malloc(sizeof(double) * g->s_q * g->h_q * g->dv), wlse[64 * 4];
    long compared = 0;
    for (int round = 0; round < rounds; round++) {
        /* churn: grow, fork over, shrink */
        for (int i = 0; i < MAXS; i++) {
            uint32_t op = test_below(&r, 10);
            if (op < 6) {
                int32_t n = (int32_t)test_below(&r, (uint32_t)(MAXLEN - s[i].len + 1) / 2 + 1);
                CHECK_OK(pkv_seq_append(c, s[i].h, n, NULL, slots, NULL));
                write_rows(g, c, &s[i], slots, n, &r);
                s[i].len += n;
            } else if (op < 8) {
                int j = (int)test_below(&r, MAXS);
                if (j == i) continue;
                CHECK_OK(pkv_seq_free(c, s[i].h));
                CHECK_OK(pkv_seq_fork(c, s[j].h, &s[i].h)); /* i now shares j's blocks */
                memcpy(s[i].k, s[j].k, MAXLEN * kr * sizeof(float));
                memcpy(s[i].v, s[j].v, MAXLEN * vr * sizeof(float));
                s[i].len = s[j].len;
            } else {
                s[i].len = (int32_t)test_below(&r, (uint32_t)s[i].len + 1);
                CHECK_OK(pkv_seq_truncate(c, s[i].h, s[i].len));
            }
        }
        CHECK_OK(pkv_cache_check(c));
        for (int i = 0; i < MAXS; i++) hs[i] = s[i].h;
        int32_t need;
        CHECK_OK(pkv_export_flashmla(c, hs, MAXS, table, mbps, lens, &need));
        /* FlashMLA's tests fill unused entries with garbage: never read */
        for (int i = 0; i < MAXS; i++)
            for (int32_t j = 0; j < mbps; j++)
                if (table[i * mbps + j] < 0) table[i * mbps + j] = 2147480000;
        for (size_t e = 0; e < (size_t)MAXS * g->s_q * g->h_q * g->d; e++) q[e] = exact_value(&r);
        void *ka, *va;
        CHECK_OK(pkv_store_arenas(c, 0, &ka, &va));
        pkv_attn_args a;
        pkv_attn_args_init(&a);
        a.batch = MAXS; a.s_q = g->s_q; a.h_q = g->h_q; a.h_kv = g->h_kv; a.d = g->d; a.dv = g->dv;
        a.block_size = g->bs; a.max_blocks_per_seq = mbps; a.num_blocks = cfg.num_blocks;
        a.causal = g->causal; a.softmax_scale = 1.0f / sqrtf((float)g->d);
        a.q_dtype = PKV_F32; a.kv_dtype = g->dtype;
        a.q = q; a.k_cache = ka; a.v_cache = va; a.block_table = table; a.cache_seqlens = lens;
        a.out = out; a.lse = lse;
        int st = pkv_attn_reference(&a);
        /* causal rows need len >= s_q... a shorter sequence simply has empty rows */
        CHECK_OK(st);
        if (st != PKV_OK) break;
        for (int i = 0; i < MAXS; i++) {
            CHECK_INT(lens[i], s[i].len);
            naive(g, q + (size_t)i * g->s_q * g->h_q * g->d, &s[i], a.softmax_scale, want, wlse);
            size_t no = (size_t)g->s_q * g->h_q * g->dv;
            double maxerr = 0, maxabs = 0;
            for (size_t e = 0; e < no; e++) {
                double d = fabs(out[i * no + e] - want[e]);
                if (d > maxerr) maxerr = d;
                if (fabs(want[e]) > maxabs) maxabs = fabs(want[e]);
            }
            CHECK(maxerr <= 1e-5 * (maxabs > 1 ? maxabs : 1));
            for (int32_t e = 0; e < g->h_q * g->s_q; e++) {
                double w = wlse[e], got = lse[(size_t)i * g->h_q * g->s_q + e];
                if (isinf(w)) CHECK(isinf(got) && got > 0);
                else CHECK_NEAR(got, w, 1e-5 * fabs(w) + 1e-6);
            }
            compared++;
        }
    }
    CHECK(compared == (long)rounds * MAXS);
    for (int i = 0; i < MAXS; i++) { free(s[i].k); free(s[i].v); }
    free(table); free(q); free(out); free(lse); free(want);
    pkv_cache_destroy(c);
}

int main(void) {
    static const geom gs[] = {
        {1, 72, 64, 0, PKV_BF16, 64, 8, 1, 0},  /* MLA-like: V = first dv dims of K */
        {1, 72, 64, 0, PKV_F32, 16, 4, 2, 1},   /* MTP: causal s_q = 2 */
        {2, 16, 8, 1, PKV_F16, 7, 6, 1, 0},     /* GQA, separate V, odd block size */
        {4, 8, 8, 1, PKV_BF16, 1, 4, 3, 1},     /* block size 1, causal s_q = 3 */
    };
    int rounds = (int)test_scaled(30);
    for (size_t i = 0; i < sizeof gs / sizeof gs[0]; i++) run(&gs[i], 0xe2e0 + i, rounds);
    return test_report("test_e2e");
}
