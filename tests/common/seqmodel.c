/* Model-based test of sequences (see seqmodel.h).
 *
 * The model knows nothing of the library's internals: it keeps, per sequence,
 * a length, a list of *logical* block ids it hands out itself, and (host mode)
 * the value written at every position. The library's block ids are tied to
 * logical ids by a bijection that is built as blocks first appear and checked
 * on every use, so sharing, copy-on-write and reuse must agree exactly. */
#include "seqmodel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pagedkv.h"
#include "test.h"

#define MAX_SEQS 24
#define D 2 /* host mode: K rows of 2 floats encode a 40-bit write counter */

typedef struct mseq {
    pkv_seq h;
    int32_t len;
    int32_t nlb;
    int32_t *lb;      /* logical block ids */
    uint64_t *vals;   /* value written at each position (host mode) */
    int32_t last_start, last_n;
} mseq;

typedef struct model {
    test_rng rng;
    pkv_cache *c;
    int host;
    int32_t nb, bs;
    mseq seqs[MAX_SEQS];
    int nseqs;
    int32_t *mref;     /* [nb] refcount per logical id */
    int32_t *l2lib;    /* logical -> library block, -1 unbound */
    int32_t *lib2l;    /* library block -> logical, -1 unbound */
    uint64_t counter;
    seqmodel_result res;
} model;

#define FAIL(m, ...)                                                   \
    do {                                                               \
        (m)->res.failures++;                                           \
        if ((m)->res.failures <= 10) {                                 \
            fprintf(stderr, "seqmodel op %ld: ", (m)->res.ops);        \
            fprintf(stderr, __VA_ARGS__);                              \
            fputc('\n', stderr);                                       \
        }                                                              \
    } while (0)

static int32_t model_used(const model *m) {
    int32_t u = 0;
    for (int32_t l = 0; l < m->nb; l++) u += m->mref[l] > 0;
    return u;
}

/* A fresh logical id (naive linear search: the model is meant to be obvious). */
static int32_t logical_new(model *m) {
    for (int32_t l = 0; l < m->nb; l++)
        if (m->mref[l] == 0) { m->mref[l] = 1; return l; }
    return -1;
}

static void logical_unref(model *m, int32_t l) {
    if (--m->mref[l] == 0) {
        if (m->l2lib[l] >= 0) m->lib2l[m->l2lib[l]] = -1;
        m->l2lib[l] = -1;
    }
}

/* Ties library block b to logical l, or checks the existing tie. */
static void bind(model *m, int32_t l, int32_t b, const char *what) {
    if (b < 0 || b >= m->nb) { FAIL(m, "%s: block id %d out of range", what, b); return; }
    if (m->l2lib[l] < 0 && m->lib2l[b] < 0) {
        m->l2lib[l] = b;
        m->lib2l[b] = l;
    } else if (m->l2lib[l] != b || m->lib2l[b] != l) {
        FAIL(m, "%s: library block %d vs logical %d (bound to %d / %d)", what, b, l, m->l2lib[l], m->lib2l[b]);
    }
}

static void check_seq_blocks(model *m, mseq *s, const char *what) {
    int32_t got[4096], n = -1;
    int st = pkv_seq_blocks(m->c, s->h, got, 4096, &n);
    if (st != PKV_OK || n != s->nlb) { FAIL(m, "%s: blocks status %d n %d want %d", what, st, n, s->nlb); return; }
    for (int32_t j = 0; j < n; j++) bind(m, s->lb[j], got[j], what);
    int32_t len = -1;
    if (pkv_seq_length(m->c, s->h, &len) != PKV_OK || len != s->len)
        FAIL(m, "%s: length %d want %d", what, len, s->len);
}

static void grow(mseq *s, int32_t len, int32_t nlb) {
    s->lb = realloc(s->lb, (size_t)(nlb + 1) * sizeof *s->lb);
    s->vals = realloc(s->vals, (size_t)(len + 1) * sizeof *s->vals);
    if (!s->lb || !s->vals) abort();
}

static void row_of(uint64_t v, float *row) {
    row[0] = (float)(v >> 20);
    row[1] = (float)(v & 0xfffff);
}

static void check_contents(model *m, mseq *s) {
    if (!m->host || s->len == 0) return;
    int64_t *slots = malloc((size_t)s->len * sizeof *slots);
    float *rows = malloc((size_t)s->len * D * sizeof *rows);
    for (int32_t p = 0; p < s->len; p++) slots[p] = (int64_t)m->l2lib[s->lb[p / m->bs]] * m->bs + p % m->bs;
    int st = pkv_store_read(m->c, 0, slots, s->len, rows, NULL);
    if (st != PKV_OK) FAIL(m, "store_read: %s", pkv_strerror(st));
    for (int32_t p = 0; st == PKV_OK && p < s->len; p++) {
        float want[D];
        row_of(s->vals[p], want);
        if (rows[p * D] != want[0] || rows[p * D + 1] != want[1]) {
            FAIL(m, "contents: seq pos %d holds (%g,%g) want (%g,%g)", p, rows[p * D], rows[p * D + 1], want[0],
                 want[1]);
            break;
        }
    }
    free(slots);
    free(rows);
}

static void check_exports(model *m) {
    pkv_seq hs[MAX_SEQS];
    int32_t table[MAX_SEQS * 128], seqlens[MAX_SEQS], need = -1, n = m->nseqs, mx = 0;
    int64_t want_slots = 0;
    for (int i = 0; i < n; i++) {
        hs[i] = m->seqs[i].h;
        if (m->seqs[i].nlb > mx) mx = m->seqs[i].nlb;
        want_slots += m->seqs[i].last_n;
    }
    if (mx > 128) return;
    if (mx > 0 && pkv_export_flashmla(m->c, hs, n, table, mx - 1, seqlens, &need) != PKV_ERR_BUFFER)
        FAIL(m, "flashmla: small table accepted");
    int st = pkv_export_flashmla(m->c, hs, n, table, 128, seqlens, &need);
    if (st != PKV_OK || need != mx) FAIL(m, "flashmla export %d need %d want %d", st, need, mx);
    int32_t indptr[MAX_SEQS + 1], indices[MAX_SEQS * 128], last[MAX_SEQS];
    st = pkv_export_flashinfer(m->c, hs, n, indptr, indices, MAX_SEQS * 128, last, &need);
    if (st != PKV_OK) FAIL(m, "flashinfer export %d", st);
    int64_t slots[8192];
    int32_t nslots = -1;
    int sst = want_slots <= 8192 ? pkv_export_slot_mapping(m->c, hs, n, slots, 8192, &nslots) : -999;
    int64_t at = 0;
    for (int i = 0; i < n && st == PKV_OK; i++) {
        mseq *s = &m->seqs[i];
        if (seqlens[i] != s->len) FAIL(m, "flashmla seqlen %d want %d", seqlens[i], s->len);
        if (indptr[i + 1] - indptr[i] != s->nlb) FAIL(m, "flashinfer indptr");
        int32_t want_last = s->len == 0 ? 0 : (s->len - 1) % m->bs + 1;
        if (last[i] != want_last) FAIL(m, "flashinfer last_page_len %d want %d", last[i], want_last);
        for (int32_t j = 0; j < 128; j++) {
            int32_t want = j < s->nlb ? m->l2lib[s->lb[j]] : -1;
            if (table[i * 128 + j] != want) { FAIL(m, "flashmla table[%d][%d]", i, j); break; }
            if (j < s->nlb && indices[indptr[i] + j] != want) { FAIL(m, "flashinfer indices"); break; }
        }
        for (int32_t p = s->last_start; sst == PKV_OK && p < s->last_start + s->last_n; p++, at++)
            if (slots[at] != (int64_t)m->l2lib[s->lb[p / m->bs]] * m->bs + p % m->bs) {
                FAIL(m, "slot mapping seq %d pos %d", i, p);
                break;
            }
    }
    if (sst != -999 && (sst != PKV_OK || nslots != want_slots))
        FAIL(m, "slot mapping status %d n %d want %lld", sst, nslots, (long long)want_slots);
}

static void full_check(model *m) {
    m->res.full_checks++;
    int st = pkv_cache_check(m->c);
    if (st != PKV_OK) FAIL(m, "pkv_cache_check: %s: %s", pkv_strerror(st), pkv_cache_last_error(m->c));
    for (int i = 0; i < m->nseqs; i++) {
        check_seq_blocks(m, &m->seqs[i], "full");
        check_contents(m, &m->seqs[i]);
    }
    for (int32_t l = 0; l < m->nb; l++) {
        if (m->mref[l] == 0) continue;
        int32_t rc = -1;
        if (m->l2lib[l] < 0) { FAIL(m, "logical %d unbound", l); continue; }
        pkv_block_refcount(m->c, m->l2lib[l], &rc);
        if (rc != m->mref[l]) FAIL(m, "block %d refcount %d want %d", m->l2lib[l], rc, m->mref[l]);
    }
    pkv_stats stats = PKV_STATS_INIT;
    pkv_cache_stats(m->c, &stats);
    if (stats.free_blocks != m->nb - model_used(m) || stats.num_seqs != m->nseqs)
        FAIL(m, "stats free %d want %d, seqs %d want %d", stats.free_blocks, m->nb - model_used(m), stats.num_seqs,
             m->nseqs);
    check_exports(m);
}

static void op_create(model *m) {
    if (m->nseqs >= MAX_SEQS) return;
    mseq *s = &m->seqs[m->nseqs];
    memset(s, 0, sizeof *s);
    int st = pkv_seq_create(m->c, 0, &s->h);
    if (st != PKV_OK) { FAIL(m, "create: %s", pkv_strerror(st)); return; }
    grow(s, 0, 0);
    m->nseqs++;
}

static void op_append(model *m, mseq *s, int32_t n) {
    int32_t bs = m->bs;
    int cow = n > 0 && s->len % bs != 0 && m->mref[s->lb[s->nlb - 1]] > 1;
    int32_t new_nlb = (int32_t)(((int64_t)s->len + n + bs - 1) / bs);
    int32_t needed = new_nlb - s->nlb + cow, got_needed = -1;
    int32_t avail = m->nb - model_used(m);
    if (pkv_seq_blocks_needed(m->c, s->h, n, &got_needed) != PKV_OK || got_needed != needed)
        FAIL(m, "blocks_needed %d want %d", got_needed, needed);
    int64_t *slots = malloc((size_t)(n + 1) * sizeof *slots);
    int32_t *tokens = malloc((size_t)(n + 1) * sizeof *tokens);
    for (int32_t i = 0; i < n; i++) tokens[i] = (int32_t)test_below(&m->rng, 50000);
    pkv_block_copy cc = {-7, -7};
    int st = pkv_seq_append(m->c, s->h, n, tokens, slots, &cc);
    if (needed > avail) {
        m->res.capacity_hits++;
        if (st != PKV_ERR_CAPACITY) FAIL(m, "append %d with %d needed, %d free: %s", n, needed, avail, pkv_strerror(st));
        check_seq_blocks(m, s, "after capacity failure");
        goto out;
    }
    if (st != PKV_OK) { FAIL(m, "append %d: %s", n, pkv_strerror(st)); goto out; }
    int32_t got[4096], nb = -1;
    pkv_seq_blocks(m->c, s->h, got, 4096, &nb);
    if (nb != new_nlb) { FAIL(m, "append: %d blocks want %d", nb, new_nlb); goto out; }
    grow(s, s->len + n, new_nlb);
    if (cow) {
        int32_t old = s->lb[s->nlb - 1], fresh = logical_new(m);
        if (cc.src != m->l2lib[old]) FAIL(m, "cow src %d want %d", cc.src, m->l2lib[old]);
        logical_unref(m, old);
        s->lb[s->nlb - 1] = fresh;
        bind(m, fresh, got[s->nlb - 1], "cow block");
        if (cc.dst != got[s->nlb - 1]) FAIL(m, "cow dst %d want %d", cc.dst, got[s->nlb - 1]);
        m->res.cow_copies++;
    } else if (cc.src != -1 || cc.dst != -1) {
        FAIL(m, "unexpected copy %d -> %d", cc.src, cc.dst);
    }
    for (int32_t j = s->nlb; j < new_nlb; j++) {
        s->lb[j] = logical_new(m);
        bind(m, s->lb[j], got[j], "new block");
    }
    s->nlb = new_nlb;
    for (int32_t i = 0; i < n; i++) {
        int32_t p = s->len + i;
        if (slots[i] != (int64_t)got[p / bs] * bs + p % bs) { FAIL(m, "slot %d of append", i); break; }
    }
    if (m->host && n > 0) {
        float *rows = malloc((size_t)n * D * sizeof *rows);
        for (int32_t i = 0; i < n; i++) {
            s->vals[s->len + i] = ++m->counter;
            row_of(m->counter, rows + i * D);
        }
        st = pkv_store_write(m->c, 0, slots, n, rows, NULL, PKV_F32);
        if (st != PKV_OK) FAIL(m, "store_write: %s", pkv_strerror(st));
        free(rows);
    }
    s->last_start = s->len;
    s->last_n = n;
    s->len += n;
    check_seq_blocks(m, s, "after append");
out:
    free(slots);
    free(tokens);
}

static void op_fork(model *m, mseq *p) {
    if (m->nseqs >= MAX_SEQS) return;
    mseq *s = &m->seqs[m->nseqs];
    memset(s, 0, sizeof *s);
    int st = pkv_seq_fork(m->c, p->h, &s->h);
    if (st != PKV_OK) { FAIL(m, "fork: %s", pkv_strerror(st)); return; }
    grow(s, p->len, p->nlb);
    s->len = p->len;
    s->nlb = p->nlb;
    for (int32_t j = 0; j < p->nlb; j++) m->mref[s->lb[j] = p->lb[j]]++;
    memcpy(s->vals, p->vals, (size_t)p->len * sizeof *s->vals);
    s->last_start = s->len;
    m->nseqs++;
    check_seq_blocks(m, s, "fork child");
}

static void op_truncate(model *m, mseq *s, int32_t new_len) {
    int st = pkv_seq_truncate(m->c, s->h, new_len);
    if (st != PKV_OK) { FAIL(m, "truncate: %s", pkv_strerror(st)); return; }
    int32_t keep = (new_len + m->bs - 1) / m->bs;
    for (int32_t j = s->nlb - 1; j >= keep; j--) logical_unref(m, s->lb[j]);
    s->nlb = keep;
    s->len = new_len;
    if (s->last_start > new_len) s->last_start = new_len;
    if (s->last_start + s->last_n > new_len) s->last_n = new_len - s->last_start;
    check_seq_blocks(m, s, "after truncate");
}

static void op_free(model *m, int i) {
    mseq *s = &m->seqs[i];
    int st = pkv_seq_free(m->c, s->h);
    if (st != PKV_OK) FAIL(m, "free: %s", pkv_strerror(st));
    if (pkv_seq_free(m->c, s->h) != PKV_ERR_NO_SEQ) FAIL(m, "double free accepted");
    int32_t len;
    if (pkv_seq_length(m->c, s->h, &len) != PKV_ERR_NO_SEQ) FAIL(m, "stale handle accepted");
    for (int32_t j = s->nlb - 1; j >= 0; j--) logical_unref(m, s->lb[j]);
    free(s->lb);
    free(s->vals);
    m->seqs[i] = m->seqs[--m->nseqs];
}

seqmodel_result seqmodel_run(uint64_t seed, long ops, int host_mode) {
    static const int32_t sizes[] = {1, 2, 3, 4, 5, 8, 16, 64};
    model m;
    memset(&m, 0, sizeof m);
    m.rng.s = seed;
    m.host = host_mode;
    m.bs = sizes[test_below(&m.rng, 8)];
    m.nb = 8 + (int32_t)test_below(&m.rng, 90);
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = m.nb;
    cfg.block_size = m.bs;
    if (host_mode) {
        cfg.storage = PKV_STORAGE_HOST;
        cfg.h_kv = 1;
        cfg.d = D;
        cfg.dv = D;
        cfg.kv_dtype = PKV_F32;
    }
    if (pkv_cache_create(&cfg, &m.c) != PKV_OK) {
        m.res.failures = 1;
        return m.res;
    }
    m.mref = calloc((size_t)m.nb, sizeof *m.mref);
    m.l2lib = malloc((size_t)m.nb * sizeof *m.l2lib);
    m.lib2l = malloc((size_t)m.nb * sizeof *m.lib2l);
    for (int32_t i = 0; i < m.nb; i++) m.l2lib[i] = m.lib2l[i] = -1;
    long check_every = 64 + test_below(&m.rng, 512);
    for (m.res.ops = 0; m.res.ops < ops && m.res.failures == 0; m.res.ops++) {
        uint32_t r = test_below(&m.rng, 100);
        if (m.nseqs == 0 || r < 8) {
            op_create(&m);
            continue;
        }
        int i = (int)test_below(&m.rng, (uint32_t)m.nseqs);
        mseq *s = &m.seqs[i];
        if (r < 60) {
            int32_t n = test_below(&m.rng, 30) == 0 ? (int32_t)test_below(&m.rng, (uint32_t)(m.nb * m.bs / 2 + 1))
                                                     : (int32_t)test_below(&m.rng, (uint32_t)(2 * m.bs + 1));
            if (s->len + n <= 4096 * m.bs) op_append(&m, s, n);
        } else if (r < 72) {
            op_fork(&m, s);
        } else if (r < 84) {
            op_truncate(&m, s, (int32_t)test_below(&m.rng, (uint32_t)s->len + 1));
        } else if (r < 96) {
            op_free(&m, i);
        } else {
            check_contents(&m, s);
        }
        if (m.res.ops % check_every == 0) full_check(&m);
    }
    full_check(&m);
    while (m.nseqs) op_free(&m, m.nseqs - 1);
    pkv_stats st = PKV_STATS_INIT;
    pkv_cache_stats(m.c, &st);
    if (st.free_blocks != m.nb) FAIL(&m, "after freeing all: %d free of %d", st.free_blocks, m.nb);
    pkv_cache_destroy(m.c);
    free(m.mref);
    free(m.l2lib);
    free(m.lib2l);
    return m.res;
}
