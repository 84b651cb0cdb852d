/* Prefix cache against a naive model, over a million operations (scaled by
 * PKV_TEST_SCALE): requests whose prompts come from a few shared stems (lookup,
 * then append the rest), decode appends with and without token ids,
 * registrations (explicit or automatic), forks, truncations and frees, in
 * pools small enough that evictions happen all the time.
 *
 * The model is deliberately plain: a block table mirroring the pool (refcount,
 * state, the LIFO free stack, a release stamp per evictable block: eviction
 * takes the smallest), and a map from (namespace, full token prefix) to the
 * block caching it, searched by linear scan. Every lookup must return exactly
 * the model's longest cached prefix and the same block ids; every allocation
 * the block the model predicts (so LRU order, deepest first, is checked block
 * by block); registrations report the model's counts; the counters agree after
 * every operation and pkv_cache_check passes every few operations. Orphans
 * (cached blocks whose parent is evicted) are dropped exactly as the model
 * predicts.
 *
 * Extra keys: requests and sequences carry random adapter ids and multimodal
 * ranges (each stem has its image; a request may show it, another image, the
 * same image shifted or longer, or none, and decodes add images). The model
 * knows nothing of digests: it labels every token position with (image, offset
 * in the image, image length) and a cached prefix matches when the tokens, the
 * adapter and the labels of every position agree; so sharing must happen
 * exactly when tokens, adapter and the ranges over each block agree. */
#include <stdint.h>

#include "internal.h"
#include "test.h"

enum { M_FREE = 0, M_USED = 1, M_EVICT = 2, MAXS = 12, MAXTOK = 160, MAXR = 8 };

/* A multimodal range; tag t stands for the content hash of image t (1..). */
typedef struct mrange {
    int32_t start, len, tag;
} mrange;

typedef struct mblock {
    int state, rc, cached;
    uint64_t stamp, ns;
    int32_t plen;   /* tokens of the prefix ending with this block */
    int32_t parent; /* block caching the prefix one block shorter, -1 for the first */
    uint64_t ins;   /* registration order */
    int32_t *prefix; /* [plen] while cached */
    uint64_t adapter;
    int64_t *labels; /* [plen] while cached: the image label of every position */
} mblock;

typedef struct mseq {
    pkv_seq h;
    uint64_t ns, adapter;
    int32_t nr;
    mrange r[MAXR];
    int32_t len, ntokens, nreg, nblocks;
    int32_t blocks[MAXTOK + 1], tokens[MAXTOK + 64];
} mseq;

typedef struct model {
    pkv_cache *c;
    int32_t nb, bs;
    int auto_reg;
    mblock *b;
    int32_t *free_stack, free_top, nevict;
    uint64_t clock;
    mseq s[MAXS];
    int ns_live;
    int64_t dedups, registrations, evictions, orphans;
    int64_t extra_hit_tokens; /* tokens hit by lookups with extra keys */
    int64_t extra_misses;     /* lookups whose tokens alone match longer than their extra keys do */
    uint64_t inserts;
    long bad; /* mismatches in this run */
} model;

#define MFAIL(m, ...)                                                  \
    do {                                                               \
        if ((m)->bad++ < 5) TEST_FAIL_(__VA_ARGS__);                   \
        else test_fails_++;                                            \
    } while (0)

/* ---- the model pool ---- */

/* The label of each position [0, plen) under ranges r[0..nr): 0 outside every
 * range, else (image, offset in it, its length) in one number. */
static void m_labels(const mrange *r, int32_t nr, int32_t plen, int64_t *out) {
    for (int32_t p = 0; p < plen; p++) out[p] = 0;
    for (int32_t k = 0; k < nr; k++)
        for (int32_t p = r[k].start; p < r[k].start + r[k].len && p < plen; p++)
            out[p] = (int64_t)r[k].tag * 1000000000 + (int64_t)(p - r[k].start) * 10000 + r[k].len;
}

static int32_t m_find(model *m, uint64_t ns, uint64_t adapter, const int64_t *labels, const int32_t *toks,
                      int32_t plen) {
    for (int32_t i = 0; i < m->nb; i++) {
        const mblock *x = &m->b[i];
        if (x->cached && x->ns == ns && x->adapter == adapter && x->plen == plen &&
            memcmp(x->prefix, toks, (size_t)plen * 4) == 0 && memcmp(x->labels, labels, (size_t)plen * 8) == 0)
            return i;
    }
    return -1;
}

/* Drops block i from the map and, leaf first, every cached block registered
 * under it (newest child first, as the library walks its child lists): they
 * are unreachable now. An evictable one is freed, a used one keeps its holders.
 * Through the API this happens when forked sequences share a block that one of
 * them registered after deduplicating its parent, and that parent is evicted. */
static void m_drop(model *m, int32_t i, int orphan) {
    for (;;) {
        int32_t kid = -1;
        for (int32_t j = 0; j < m->nb; j++)
            if (m->b[j].cached && m->b[j].parent == i && (kid < 0 || m->b[j].ins > m->b[kid].ins)) kid = j;
        if (kid < 0) break;
        m_drop(m, kid, 1);
    }
    mblock *x = &m->b[i];
    free(x->prefix);
    free(x->labels);
    x->prefix = NULL;
    x->labels = NULL;
    x->cached = 0;
    if (!orphan) return;
    m->orphans++;
    /* A used orphan only leaves the index (its holders keep it): not an eviction. */
    if (x->state == M_EVICT) {
        m->evictions++;
        x->state = M_FREE;
        m->nevict--;
        m->free_stack[m->free_top++] = i;
    }
}

static int32_t m_alloc(model *m) {
    int32_t b;
    if (m->free_top > 0) {
        b = m->free_stack[--m->free_top];
    } else {
        b = -1;
        for (int32_t i = 0; i < m->nb; i++)
            if (m->b[i].state == M_EVICT && (b < 0 || m->b[i].stamp < m->b[b].stamp)) b = i;
        if (b < 0) {
            MFAIL(m, "model: allocation with nothing available");
            return 0;
        }
        m->nevict--;
        m_drop(m, b, 0);
        m->evictions++;
    }
    m->b[b].state = M_USED;
    m->b[b].rc = 1;
    return b;
}

static void m_ref(model *m, int32_t b) {
    if (m->b[b].state == M_EVICT) {
        m->nevict--;
        m->b[b].state = M_USED;
        m->b[b].rc = 1;
    } else {
        m->b[b].rc++;
    }
}

static void m_unref(model *m, int32_t b) {
    if (--m->b[b].rc > 0) return;
    if (m->b[b].cached) {
        m->b[b].state = M_EVICT;
        m->b[b].stamp = ++m->clock;
        m->nevict++;
    } else {
        m->b[b].state = M_FREE;
        m->free_stack[m->free_top++] = b;
    }
}

/* ---- the model sequence operations (mirroring the documented semantics) ---- */

static void m_register(model *m, mseq *s, int32_t written_len, int32_t *reg, int32_t *dd) {
    int32_t full = s->ntokens / m->bs;
    int64_t labels[MAXTOK + 64];
    m_labels(s->r, s->nr, full * m->bs, labels);
    *reg = *dd = 0;
    for (int32_t j = s->nreg; j < full; j++) {
        int32_t plen = (j + 1) * m->bs, own = s->blocks[j];
        int32_t f = m_find(m, s->ns, s->adapter, labels, s->tokens, plen);
        if (f >= 0 && f != own) {
            if (written_len >= 0 && plen > written_len) return;
            m_ref(m, f);
            m_unref(m, own);
            s->blocks[j] = f;
            (*dd)++;
            m->dedups++;
        } else if (f < 0) {
            if (m->b[own].cached) {
                MFAIL(m, "model: registering a block cached under another prefix");
                return;
            }
            mblock *x = &m->b[own];
            x->cached = 1;
            x->ns = s->ns;
            x->plen = plen;
            x->parent = j ? s->blocks[j - 1] : -1;
            x->ins = ++m->inserts;
            x->prefix = malloc((size_t)plen * 4);
            memcpy(x->prefix, s->tokens, (size_t)plen * 4);
            x->adapter = s->adapter;
            x->labels = malloc((size_t)plen * 8);
            memcpy(x->labels, labels, (size_t)plen * 8);
            (*reg)++;
            m->registrations++;
        }
        s->nreg = j + 1;
    }
}

static void m_release_tail(model *m, mseq *s, int32_t keep) {
    for (int32_t j = s->nblocks - 1; j >= keep; j--) m_unref(m, s->blocks[j]);
    s->nblocks = keep;
}

static int32_t blocks_for(const model *m, int32_t len) { return (len + m->bs - 1) / m->bs; }

/* ---- comparison with the library ---- */

static void compare_seq(model *m, const mseq *s) {
    int32_t got[MAXTOK + 1], n = 0, len = -1;
    int st = pkv_seq_blocks(m->c, s->h, got, MAXTOK + 1, &n);
    if (st != PKV_OK || n != s->nblocks || memcmp(got, s->blocks, (size_t)n * 4) != 0) {
        MFAIL(m, "sequence blocks differ from the model (%d vs %d blocks)", n, s->nblocks);
        return;
    }
    pkv_seq_length(m->c, s->h, &len);
    if (len != s->len) MFAIL(m, "sequence length %d, model %d", len, s->len);
    uint64_t adapter = 0;
    pkv_mm_range r[MAXR];
    st = pkv_seq_extra_keys(m->c, s->h, &adapter, r, MAXR, &n);
    int same = st == PKV_OK && adapter == s->adapter && n == s->nr;
    for (int32_t k = 0; same && k < n; k++)
        same = r[k].start == s->r[k].start && r[k].len == s->r[k].len && r[k].hash[0] == s->r[k].tag;
    if (!same) MFAIL(m, "extra keys: adapter %llu with %d ranges, model %llu with %d", (unsigned long long)adapter, n,
                     (unsigned long long)s->adapter, s->nr);
}

static void compare_stats(model *m) {
    pkv_stats st = PKV_STATS_INIT;
    pkv_cache_stats(m->c, &st);
    int32_t cached = 0, used = 0;
    for (int32_t i = 0; i < m->nb; i++) {
        cached += m->b[i].cached;
        used += m->b[i].state == M_USED;
    }
    if (st.free_blocks != m->free_top || st.evictable_blocks != m->nevict || st.used_blocks != used ||
        st.cached_blocks != cached || st.dedups != m->dedups || st.registrations != m->registrations ||
        st.evictions != m->evictions || st.num_seqs != m->ns_live)
        MFAIL(m,
              "stats free %d/%d evictable %d/%d used %d/%d cached %d/%d dedups %lld/%lld registrations "
              "%lld/%lld evictions %lld/%lld (library/model)",
              st.free_blocks, m->free_top, st.evictable_blocks, m->nevict, st.used_blocks, used, st.cached_blocks,
              cached, (long long)st.dedups, (long long)m->dedups, (long long)st.registrations,
              (long long)m->registrations, (long long)st.evictions, (long long)m->evictions);
}

/* ---- operations, each on both ---- */

static pkv_mm_range to_range(const mrange *x) {
    pkv_mm_range r;
    r.start = x->start;
    r.len = x->len;
    for (int i = 0; i < 16; i++) r.hash[i] = (uint8_t)(x->tag + i * 7); /* byte 0: the tag */
    return r;
}

/* Lookup of prompt[0..n) in ns with the adapter and ranges r[0..nr) (the plain
 * call when there are none, half the time); the model's longest cached prefix
 * must come back, from peek as well. */
static mseq *op_lookup(model *m, uint64_t ns, uint64_t adapter, const mrange *r, int32_t nr, const int32_t *prompt,
                       int32_t n, int plain) {
    mseq *s = NULL;
    for (int i = 0; i < MAXS; i++)
        if (!m->s[i].h) {
            s = &m->s[i];
            break;
        }
    if (!s) return NULL;
    int32_t cached = -1, peeked = -1;
    pkv_seq h = 0;
    pkv_mm_range rr[MAXR];
    for (int32_t k = 0; k < nr; k++) rr[k] = to_range(&r[k]);
    pkv_extra_keys x = PKV_EXTRA_KEYS_INIT;
    x.adapter_id = adapter;
    x.num_mm = nr;
    x.mm = nr ? rr : NULL;
    plain = plain && adapter == 0 && nr == 0;
    int st = plain ? pkv_prefix_peek(m->c, ns, prompt, n, &peeked, NULL)
                   : pkv_prefix_peek_ex(m->c, ns, prompt, n, &x, &peeked, NULL);
    if (st == PKV_OK)
        st = plain ? pkv_prefix_lookup(m->c, ns, prompt, n, &h, &cached)
                   : pkv_prefix_lookup_ex(m->c, ns, prompt, n, &x, &h, &cached);
    if (st != PKV_OK) {
        MFAIL(m, "lookup: %s (%s)", pkv_strerror(st), pkv_cache_last_error(m->c));
        return NULL;
    }
    int64_t labels[MAXTOK + 64];
    m_labels(r, nr, n, labels);
    int32_t mm = 0;
    while ((mm + 1) * m->bs <= n && m_find(m, ns, adapter, labels, prompt, (mm + 1) * m->bs) >= 0) mm++;
    int32_t by_tokens = 0;
    for (int found = 1; found && (by_tokens + 1) * m->bs <= n;) {
        found = 0;
        for (int32_t i = 0; i < m->nb && !found; i++) {
            const mblock *b = &m->b[i];
            found = b->cached && b->ns == ns && b->plen == (by_tokens + 1) * m->bs &&
                    memcmp(b->prefix, prompt, (size_t)b->plen * 4) == 0;
        }
        by_tokens += found;
    }
    if (adapter || nr) m->extra_hit_tokens += (int64_t)mm * m->bs;
    m->extra_misses += by_tokens > mm;
    if (cached != mm * m->bs || peeked != cached)
        MFAIL(m, "lookup of %d tokens (adapter %llu, %d ranges): %d cached (peek %d), model %d", n,
              (unsigned long long)adapter, nr, cached, peeked, mm * m->bs);
    memset(s, 0, sizeof *s);
    s->h = h;
    s->ns = ns;
    s->adapter = adapter;
    s->nr = nr;
    memcpy(s->r, r, (size_t)nr * sizeof *r);
    for (int32_t j = 0; j < mm; j++) {
        s->blocks[j] = m_find(m, ns, adapter, labels, prompt, (j + 1) * m->bs);
        m_ref(m, s->blocks[j]);
    }
    s->nblocks = s->nreg = mm;
    s->len = s->ntokens = mm * m->bs;
    memcpy(s->tokens, prompt, (size_t)s->len * 4);
    m->ns_live++;
    compare_seq(m, s);
    return s;
}

static int op_append(model *m, mseq *s, int32_t n, const int32_t *toks) {
    if (s->len + n > MAXTOK) return PKV_ERR_INVALID;
    pkv_block_copy cow;
    int st = pkv_seq_append(m->c, s->h, n, toks, NULL, &cow);
    int32_t new_blocks = blocks_for(m, s->len + n) - s->nblocks;
    int32_t last = s->nblocks ? s->blocks[s->nblocks - 1] : -1;
    int cow_needed = n > 0 && s->len % m->bs != 0 && (m->b[last].rc > 1 || m->b[last].cached);
    int expect = new_blocks + cow_needed > m->free_top + m->nevict ? PKV_ERR_CAPACITY : PKV_OK;
    if (st != expect) {
        MFAIL(m, "append of %d: %s, model expects %s", n, pkv_strerror(st), pkv_strerror(expect));
        return st;
    }
    if (st != PKV_OK) return st;
    if (cow_needed) {
        int32_t dst = m_alloc(m);
        m_unref(m, last);
        s->blocks[s->nblocks - 1] = dst;
        if (cow.src != last || cow.dst != dst) MFAIL(m, "copy-on-write %d->%d, model %d->%d", cow.src, cow.dst, last, dst);
    } else if (cow.src != -1) {
        MFAIL(m, "unexpected copy-on-write");
    }
    for (int32_t j = 0; j < new_blocks; j++) s->blocks[s->nblocks++] = m_alloc(m);
    if (toks && s->ntokens == s->len) {
        memcpy(s->tokens + s->len, toks, (size_t)n * 4);
        s->ntokens = s->len + n;
    }
    int32_t old_len = s->len;
    s->len += n;
    if (m->auto_reg) {
        int32_t r, d;
        m_register(m, s, old_len, &r, &d);
    }
    compare_seq(m, s);
    return PKV_OK;
}

static void op_register(model *m, mseq *s) {
    int32_t reg = -1, dd = -1, mr, md;
    int st = pkv_prefix_register(m->c, s->h, &reg, &dd);
    m_register(m, s, -1, &mr, &md);
    if (st != PKV_OK || reg != mr || dd != md)
        MFAIL(m, "register: %s, %d registered %d deduped, model %d %d", pkv_strerror(st), reg, dd, mr, md);
    compare_seq(m, s);
}

static void op_fork(model *m, mseq *p) {
    mseq *s = NULL;
    for (int i = 0; i < MAXS; i++)
        if (!m->s[i].h) {
            s = &m->s[i];
            break;
        }
    if (!s) return;
    pkv_seq h = 0;
    int st = pkv_seq_fork(m->c, p->h, &h);
    if (st != PKV_OK) {
        MFAIL(m, "fork: %s", pkv_strerror(st));
        return;
    }
    *s = *p;
    s->h = h;
    for (int32_t j = 0; j < s->nblocks; j++) m_ref(m, s->blocks[j]);
    m->ns_live++;
    compare_seq(m, s);
}

static void op_truncate(model *m, mseq *s, int32_t new_len) {
    int st = pkv_seq_truncate(m->c, s->h, new_len);
    if (st != PKV_OK) {
        MFAIL(m, "truncate: %s", pkv_strerror(st));
        return;
    }
    m_release_tail(m, s, blocks_for(m, new_len));
    while (s->nr > 0 && s->r[s->nr - 1].start >= new_len) s->nr--;
    s->len = new_len;
    if (s->ntokens > new_len) s->ntokens = new_len;
    if (s->nreg > new_len / m->bs) s->nreg = new_len / m->bs;
    compare_seq(m, s);
}

/* An image added while decoding, at or past the length and the last range;
 * sometimes one that must be refused (before the length, or overlapping). */
static void op_add_mm(model *m, mseq *s, test_rng *rng) {
    int32_t end = s->nr ? s->r[s->nr - 1].start + s->r[s->nr - 1].len : 0, min = s->len > end ? s->len : end;
    mrange x = {min + (int32_t)test_below(rng, 3), 1 + (int32_t)test_below(rng, 2 * (uint32_t)m->bs), 1 + (int32_t)test_below(rng, 4)};
    int bad = test_below(rng, 6) == 0 && min > 0;
    if (bad) x.start = min - 1 - (int32_t)test_below(rng, (uint32_t)min);
    pkv_mm_range r = to_range(&x);
    int st = pkv_seq_add_mm(m->c, s->h, r.start, r.len, r.hash);
    int expect = bad ? PKV_ERR_INVALID : PKV_OK;
    if (st != expect) MFAIL(m, "add_mm [%d, +%d): %s, model %s", x.start, x.len, pkv_strerror(st), pkv_strerror(expect));
    if (st == PKV_OK) s->r[s->nr++] = x; /* the caller left room (nr < MAXR) */
    compare_seq(m, s);
}

static void op_free(model *m, mseq *s) {
    int st = pkv_seq_free(m->c, s->h);
    if (st != PKV_OK) MFAIL(m, "free: %s", pkv_strerror(st));
    m_release_tail(m, s, 0);
    s->h = 0;
    m->ns_live--;
}

/* ---- the run ---- */

typedef struct run_stats {
    long ops, lookups, hit_tokens, evictions, orphans, dedups, capacity, collisions, extra_hit_tokens, extra_misses;
} run_stats;

static mseq *pick_live(model *m, test_rng *rng) {
    int idx[MAXS], n = 0;
    for (int i = 0; i < MAXS; i++)
        if (m->s[i].h) idx[n++] = i;
    return n ? &m->s[idx[test_below(rng, (uint32_t)n)]] : NULL;
}

static void run(uint64_t seed, long ops, run_stats *rs) {
    test_rng rng = {seed};
    static const int32_t sizes[] = {1, 2, 3, 4, 5, 8, 16};
    model m;
    memset(&m, 0, sizeof m);
    m.bs = sizes[test_below(&rng, sizeof sizes / sizeof *sizes)];
    m.nb = 8 + (int32_t)test_below(&rng, 3 * MAXTOK / m.bs + 8);
    m.auto_reg = test_below(&rng, 2) == 0;
    uint32_t alph = test_below(&rng, 3) == 0 ? 2 + test_below(&rng, 3) : 1000;
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = m.nb;
    cfg.block_size = m.bs;
    cfg.flags = PKV_FLAG_PREFIX_CACHE | (m.auto_reg ? PKV_FLAG_AUTO_REGISTER : 0);
    cfg.hash_key_set = test_below(&rng, 2);
    for (int i = 0; i < 16; i++) cfg.hash_key[i] = (uint8_t)test_next(&rng);
    CHECK_OK(pkv_cache_create(&cfg, &m.c));
    /* 0: every level hashed; else a parent's few children are compared directly. */
    static const int32_t scans[] = {0, 1, PREFIX_CHILD_SCAN, 1000};
    prefix_set_child_scan(m.c, scans[test_below(&rng, 4)]);
    m.b = calloc((size_t)m.nb, sizeof *m.b);
    m.free_stack = malloc((size_t)m.nb * sizeof *m.free_stack);
    for (int32_t i = 0; i < m.nb; i++) m.free_stack[i] = m.nb - 1 - i;
    m.free_top = m.nb;

    int32_t stems[4][MAXTOK];
    int32_t stem_len[4];
    mrange stem_img[4]; /* each stem's image (len 0: none), inside the stem */
    for (int s = 0; s < 4; s++) {
        stem_len[s] = (int32_t)test_below(&rng, MAXTOK / 2);
        for (int i = 0; i < MAXTOK; i++) stems[s][i] = (int32_t)test_below(&rng, alph);
        stem_img[s].tag = 1 + s;
        stem_img[s].start = (int32_t)test_below(&rng, (uint32_t)stem_len[s] + 1);
        stem_img[s].len = (int32_t)test_below(&rng, (uint32_t)(stem_len[s] - stem_img[s].start) + 1);
    }
    /* How often requests carry extra keys: never in some runs (the old identity alone). */
    uint32_t extra_pct = test_below(&rng, 4) == 0 ? 0 : 20 + test_below(&rng, 60);
    static const uint64_t spaces[] = {0, 1, 0x8000000000000000ull};
    for (long i = 0; i < ops && !m.bad; i++) {
        uint32_t r = test_below(&rng, 100);
        mseq *s = pick_live(&m, &rng);
        if (r < 30 || !s) { /* a request: lookup, then append the rest of its prompt */
            if (m.ns_live == MAXS) {
                op_free(&m, s);
                continue;
            }
            int32_t prompt[MAXTOK], n;
            int st = (int)test_below(&rng, 4);
            n = stem_len[st] + (int32_t)test_below(&rng, 3 * (uint32_t)m.bs + 1);
            if (n > MAXTOK) n = MAXTOK;
            memcpy(prompt, stems[st], sizeof prompt);
            for (int32_t k = stem_len[st]; k < n; k++) prompt[k] = (int32_t)test_below(&rng, alph);
            uint64_t ns = spaces[test_below(&rng, 8) == 0 ? 1 + test_below(&rng, 2) : 0];
            uint64_t adapter = 0;
            mrange rg[3];
            int32_t nr = 0;
            if (test_below(&rng, 100) < extra_pct) {
                static const uint64_t adapters[] = {0, 0, 0, 5, 6, 0xfedcba9876543210ull};
                adapter = adapters[test_below(&rng, 6)];
                mrange img = stem_img[st];
                uint32_t how = test_below(&rng, 10);
                if (how == 6) img.tag = 1 + (int32_t)test_below(&rng, 6);      /* maybe another image */
                else if (how == 7 && img.start > 0) img.start--;                 /* the same image shifted */
                else if (how == 8 && img.start + img.len < stem_len[st]) img.len++; /* longer */
                if (how != 9 && img.len > 0) rg[nr++] = img;
                if (test_below(&rng, 3) == 0) { /* an image in the request's own tail */
                    mrange t = {stem_len[st] + (int32_t)test_below(&rng, 2 * (uint32_t)m.bs + 1),
                                1 + (int32_t)test_below(&rng, (uint32_t)m.bs + 1), 1 + (int32_t)test_below(&rng, 6)};
                    if (nr == 0 || t.start >= rg[0].start + rg[0].len) rg[nr++] = t;
                }
            }
            mseq *q = op_lookup(&m, ns, adapter, rg, nr, prompt, n, (int)test_below(&rng, 2));
            if (!q) continue;
            rs->lookups++;
            rs->hit_tokens += q->len;
            int32_t rest = n - q->len;
            if (op_append(&m, q, rest, prompt + q->len) == PKV_ERR_CAPACITY) {
                rs->capacity++;
                if (test_below(&rng, 2)) op_free(&m, q);
            } else if (test_below(&rng, 3) == 0) {
                op_free(&m, q); /* a lookup that only looked */
            }
        } else if (r < 45) { /* decode, sometimes after an image */
            if (s->nr < MAXR && test_below(&rng, 100) < extra_pct / 4) op_add_mm(&m, s, &rng);
            int32_t n = 1 + (int32_t)test_below(&rng, (uint32_t)m.bs + 2), t[32];
            for (int32_t k = 0; k < n; k++) t[k] = (int32_t)test_below(&rng, alph);
            if (op_append(&m, s, n, test_below(&rng, 5) ? t : NULL) == PKV_ERR_CAPACITY) rs->capacity++;
        } else if (r < 60) {
            op_register(&m, s);
        } else if (r < 68) {
            op_fork(&m, s);
        } else if (r < 75) {
            op_truncate(&m, s, (int32_t)test_below(&rng, (uint32_t)s->len + 1));
        } else {
            op_free(&m, s);
        }
        compare_stats(&m);
        if (i % 8 == 7 || m.bad) {
            int st = pkv_cache_check(m.c);
            if (st != PKV_OK) MFAIL(&m, "pkv_cache_check after op %ld: %s", i, pkv_cache_last_error(m.c));
        }
        rs->ops++;
    }
    for (int i = 0; i < MAXS; i++)
        if (m.s[i].h) op_free(&m, &m.s[i]);
    compare_stats(&m);
    CHECK_OK(pkv_cache_check(m.c));
    if (m.bad) fprintf(stderr, "  (run seed %llu: bs %d, %d blocks, auto %d)\n", (unsigned long long)seed, m.bs, m.nb, m.auto_reg);
    rs->evictions += m.evictions;
    rs->orphans += m.orphans;
    rs->collisions += (long)prefix_collisions(m.c);
    rs->dedups += m.dedups;
    rs->extra_hit_tokens += m.extra_hit_tokens;
    rs->extra_misses += m.extra_misses;
    for (int32_t i = 0; i < m.nb; i++) {
        free(m.b[i].prefix);
        free(m.b[i].labels);
    }
    free(m.b);
    free(m.free_stack);
    pkv_cache_destroy(m.c);
}

/* Usage: test_prefix_model [--ops N] [--seed S]  (a failing run prints its seed). */
int main(int argc, char **argv) {
    long total = test_scaled(1000000), per_run = 20000;
    uint64_t seed0 = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--ops") == 0) total = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--seed") == 0) seed0 = strtoull(argv[i + 1], NULL, 0);
    }
    run_stats rs = {0};
    for (uint64_t seed = seed0; rs.ops < total && test_fails_ == 0; seed++)
        run(seed, total - rs.ops < per_run ? total - rs.ops : per_run, &rs);
    printf("prefix model: %ld operations, %ld lookups (%ld tokens hit), %ld evictions (%ld orphans), %ld dedups, "
           "%ld capacity refusals\n",
           rs.ops, rs.lookups, rs.hit_tokens, rs.evictions, rs.orphans, rs.dedups, rs.capacity);
    CHECK(rs.ops >= total);
    printf("prefix model: %ld tokens hit with extra keys, %ld lookups matched shorter for their extra keys than for "
           "their tokens\n",
           rs.extra_hit_tokens, rs.extra_misses);
    CHECK(rs.evictions > 0 && rs.dedups > 0 && rs.hit_tokens > 0);
    CHECK(rs.extra_hit_tokens > 0 && rs.extra_misses > 0);
    /* orphans are rare (fork + dedup): a short scaled run (valgrind's 0.02) may see none */
    if (total >= 200000) CHECK(rs.orphans > 0);
    printf("prefix model: %ld key collisions rejected by the identity check\n", rs.collisions);
#if defined(PKV_WEAK_HASH)
    CHECK(rs.collisions > 0); /* 8-bit keys: the token comparison did the work */
#endif
    return test_report("test_prefix_model");
}
