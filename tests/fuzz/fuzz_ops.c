/* Fuzz target: operation sequences. The bytes pick a small cache (1..16 blocks
 * of 1..8 slots; metadata or host mode; prefix cache with or without
 * auto-registration; thread-safe or not) and then a sequence of API calls, run
 * against the library and a naive model: per sequence its length, its known
 * token ids, its block list, and (host mode) the value written at every
 * position. After every call:
 *  - pkv_cache_check passes;
 *  - every block's refcount equals the number of model lists holding it, and
 *    free (+ evictable) blocks == num_blocks - blocks held;
 *  - each sequence's length and block list (pkv_seq_blocks) equal the model's;
 *  - a failed call left the canonical dump unchanged;
 *  - host mode: every position of every sequence reads back (pkv_store_read)
 *    the value the model expects.
 * Values: a position appended with recorded token ids holds a hash of (ns,
 * adapter, tokens and image labels up to it), the KV a real model would
 * compute, so prefix-cache sharing and deduplication keep them valid (and a
 * block shared across adapters or images would read back wrong values); other
 * positions hold unique values. Sequences and lookups carry random extra keys
 * (adapter ids, multimodal ranges), valid and invalid. */
#include "fuzz.h"

int fuzz_ops(const uint8_t *data, size_t size);

enum { OPS_MAXSEQ = 8, OPS_MAXLEN = 160, OPS_MAXSTALE = 8, OPS_MAXR = 4 };

/* A multimodal range; tag t stands for the content hash of image t. */
typedef struct ops_range {
    int32_t start, len, tag;
} ops_range;

typedef struct ops_seq {
    pkv_seq h;
    uint64_t ns, adapter;
    int32_t nr;
    ops_range r[OPS_MAXR];
    int32_t len, ntokens, nblocks, registered;
    int32_t last_start, last_n; /* the last append, for the slot mapping */
    int32_t tokens[OPS_MAXLEN];
    int32_t blocks[OPS_MAXLEN];
    float val[OPS_MAXLEN];
} ops_seq;

typedef struct ops_model {
    pkv_cache *c;
    pkv_config cfg;
    int host, prefix, autoreg;
    ops_seq seq[OPS_MAXSEQ];
    int nseq;
    pkv_seq stale[OPS_MAXSTALE];
    int nstale;
    uint32_t unique;
    long op;
} ops_model;

static int32_t ops_blocks_for(const ops_model *m, int64_t len) {
    return (int32_t)((len + m->cfg.block_size - 1) / m->cfg.block_size);
}

/* Value of position pos of sequence s whose tokens [0, pos] are known: what
 * its tokens, namespace, adapter and the images over them determine. */
static float ops_token_value(const ops_seq *s, const int32_t *tokens, int32_t pos) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ s->ns ^ (s->adapter * 0x2545f4914f6cdd1dull);
    for (int32_t i = 0; i <= pos; i++) {
        uint64_t label = 0;
        for (int32_t k = 0; k < s->nr; k++)
            if (i >= s->r[k].start && i < s->r[k].start + s->r[k].len)
                label = ((uint64_t)s->r[k].tag << 40) | ((uint64_t)(i - s->r[k].start) << 20) | (uint64_t)s->r[k].len;
        h ^= (uint32_t)tokens[i] ^ (label * 0x9e3779b97f4a7c15ull);
        h *= 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
    }
    return (float)(h % 1000003u);
}

static pkv_mm_range ops_mm(const ops_range *r) {
    pkv_mm_range x;
    x.start = r->start;
    x.len = r->len;
    for (int i = 0; i < 16; i++) x.hash[i] = (uint8_t)(r->tag * 31 + i);
    return x;
}

/* The library's extra keys of s against the model's. */
static void ops_verify_extras(ops_model *m, const ops_seq *s) {
    uint64_t adapter = 0;
    int32_t n = -1;
    pkv_mm_range r[OPS_MAXR];
    int st = pkv_seq_extra_keys(m->c, s->h, &adapter, r, OPS_MAXR, &n);
    int same = st == PKV_OK && adapter == s->adapter && n == s->nr;
    for (int32_t k = 0; same && k < n; k++) {
        pkv_mm_range want = ops_mm(&s->r[k]);
        same = r[k].start == want.start && r[k].len == want.len && memcmp(r[k].hash, want.hash, 16) == 0;
    }
    FUZZ_CHECK(same, "op %ld: extra keys %llu with %d ranges, model %llu with %d", m->op, (unsigned long long)adapter, n,
               (unsigned long long)s->adapter, s->nr);
}

static float ops_unique_value(ops_model *m) { return (float)(2000000u + (m->unique++ % 8000000u)); }

/* Reads the library's view of s and compares it with the model. */
static void ops_verify_seq(ops_model *m, const ops_seq *s) {
    int32_t len = -1, n = -1, blocks[OPS_MAXLEN];
    FUZZ_CHECK(pkv_seq_length(m->c, s->h, &len) == PKV_OK && len == s->len, "op %ld: length %d, model %d", m->op,
               len, s->len);
    FUZZ_CHECK(pkv_seq_blocks(m->c, s->h, blocks, OPS_MAXLEN, &n) == PKV_OK && n == s->nblocks,
               "op %ld: %d blocks, model %d", m->op, n, s->nblocks);
    FUZZ_CHECK(n == ops_blocks_for(m, s->len), "op %ld: %d blocks for %d tokens", m->op, n, s->len);
    ops_verify_extras(m, s);
    for (int32_t j = 0; j < n; j++)
        FUZZ_CHECK(blocks[j] == s->blocks[j], "op %ld: block %d is %d, model %d", m->op, j, blocks[j], s->blocks[j]);
    if (!m->host || !s->len) return;
    int64_t slots[OPS_MAXLEN];
    float rows[OPS_MAXLEN * 2];
    int32_t bs = m->cfg.block_size;
    for (int32_t p = 0; p < s->len; p++) slots[p] = (int64_t)s->blocks[p / bs] * bs + p % bs;
    FUZZ_CHECK(pkv_store_read(m->c, 0, slots, s->len, rows, NULL) == PKV_OK, "op %ld: store_read", m->op);
    for (int32_t p = 0; p < s->len; p++)
        FUZZ_CHECK(rows[2 * p] == s->val[p] && rows[2 * p + 1] == -s->val[p],
                   "op %ld: position %d holds %g, model %g", m->op, p, (double)rows[2 * p], (double)s->val[p]);
}

/* Whole-cache checks after every call. */
static void ops_verify(ops_model *m) {
    int st = pkv_cache_check(m->c);
    FUZZ_CHECK(st == PKV_OK, "op %ld: pkv_cache_check: %s", m->op, pkv_cache_last_error(m->c));
    int32_t nb = m->cfg.num_blocks, held = 0;
    int32_t count[16] = {0};
    for (int i = 0; i < m->nseq; i++)
        for (int32_t j = 0; j < m->seq[i].nblocks; j++) count[m->seq[i].blocks[j]]++;
    for (int32_t b = 0; b < nb; b++) {
        int32_t rc = -1;
        FUZZ_CHECK(pkv_block_refcount(m->c, b, &rc) == PKV_OK && rc == count[b], "op %ld: block %d refcount %d, model %d",
                   m->op, b, rc, count[b]);
        held += count[b] > 0;
    }
    pkv_stats s = PKV_STATS_INIT;
    FUZZ_CHECK(pkv_cache_stats(m->c, &s) == PKV_OK, "stats");
    FUZZ_CHECK(s.used_blocks == held && s.free_blocks + s.evictable_blocks == nb - held && s.num_seqs == m->nseq,
               "op %ld: used %d free %d evictable %d seqs %d; model held %d seqs %d", m->op, s.used_blocks,
               s.free_blocks, s.evictable_blocks, s.num_seqs, held, m->nseq);
    if (!m->prefix) FUZZ_CHECK(s.evictable_blocks == 0 && s.cached_blocks == 0, "evictable blocks without a prefix cache");
    for (int i = 0; i < m->nseq; i++) ops_verify_seq(m, &m->seq[i]);
}

/* Refreshes s's block list from the library after a successful mutation and
 * checks how it may differ from before: only blocks the call was allowed to
 * change, and new blocks not held by any other sequence. */
static void ops_take_blocks(ops_model *m, ops_seq *s, int32_t keep_exact, int32_t may_dedup_below) {
    int32_t blocks[OPS_MAXLEN], n = 0;
    FUZZ_CHECK(pkv_seq_blocks(m->c, s->h, blocks, OPS_MAXLEN, &n) == PKV_OK, "blocks");
    int32_t old_n = s->nblocks;
    for (int32_t j = 0; j < n; j++) {
        int changed = j >= old_n || blocks[j] != s->blocks[j];
        if (!changed) continue;
        if (j < keep_exact) {
            /* Only deduplication (prefix cache) may move a kept full block, and
             * only onto one another sequence... or the index already holds. */
            FUZZ_CHECK(m->prefix && j < may_dedup_below, "op %ld: kept block %d changed %d -> %d", m->op, j,
                       s->blocks[j], blocks[j]);
            continue;
        }
        /* A new or copied block: nobody else may hold it. */
        for (int i = 0; i < m->nseq; i++) {
            const ops_seq *o = &m->seq[i];
            if (o == s) continue;
            for (int32_t k = 0; k < o->nblocks; k++)
                FUZZ_CHECK(o->blocks[k] != blocks[j] || (m->prefix && j < may_dedup_below),
                           "op %ld: new block %d of a sequence is held by another", m->op, blocks[j]);
        }
    }
    memcpy(s->blocks, blocks, (size_t)n * sizeof *blocks);
    s->nblocks = n;
}

/* Writes the model's values of positions [from, to) of s into the cache. */
static void ops_write(ops_model *m, ops_seq *s, int32_t from, int32_t to) {
    if (!m->host || from >= to) return;
    int64_t slots[OPS_MAXLEN];
    float rows[OPS_MAXLEN * 2];
    int32_t bs = m->cfg.block_size, n = to - from;
    for (int32_t i = 0; i < n; i++) {
        int32_t p = from + i;
        slots[i] = (int64_t)s->blocks[p / bs] * bs + p % bs;
        rows[2 * i] = s->val[p];
        rows[2 * i + 1] = -s->val[p];
    }
    FUZZ_CHECK(pkv_store_write(m->c, 0, slots, n, rows, NULL, PKV_F32) == PKV_OK, "op %ld: store_write", m->op);
}

static ops_seq *ops_pick(ops_model *m, fuzz_in *in) {
    return m->nseq ? &m->seq[fuzz_below(in, (uint32_t)m->nseq)] : NULL;
}

static void ops_remove(ops_model *m, ops_seq *s) {
    if (m->nstale < OPS_MAXSTALE) m->stale[m->nstale++] = s->h;
    else m->stale[m->op % OPS_MAXSTALE] = s->h;
    *s = m->seq[--m->nseq];
}

static void ops_append(ops_model *m, fuzz_in *in, ops_seq *s) {
    int32_t bs = m->cfg.block_size;
    uint8_t b = fuzz_u8(in);
    int32_t n = (int32_t)(b % (uint32_t)(3 * bs + 2));
    if (b >= 250) n = m->cfg.num_blocks * bs + 1; /* surely too many */
    int with_tokens = fuzz_u8(in) & 3;           /* 0: no tokens */
    int32_t toks[OPS_MAXLEN + 64];
    int32_t nn = n < OPS_MAXLEN + 64 ? n : OPS_MAXLEN + 64;
    for (int32_t i = 0; i < nn; i++) toks[i] = (int32_t)(fuzz_u8(in) % 3); /* small alphabet: prefix hits */
    if (s->len + n > OPS_MAXLEN && n <= m->cfg.num_blocks * bs) return;
    int64_t slots[OPS_MAXLEN + 64];
    pkv_block_copy cow = {-7, -7};
    int32_t needed = -1;
    FUZZ_CHECK(pkv_seq_blocks_needed(m->c, s->h, n, &needed) == PKV_OK, "blocks_needed");
    size_t before_len;
    uint8_t *before = fuzz_dump(m->c, &before_len);
    int32_t old_last = s->nblocks ? s->blocks[s->nblocks - 1] : -1;
    int st = pkv_seq_append(m->c, s->h, n, with_tokens ? toks : NULL, n <= OPS_MAXLEN ? slots : NULL,
                            m->host && (fuzz_u8(in) & 1) ? NULL : &cow);
    if (st != PKV_OK) {
        FUZZ_CHECK(st == PKV_ERR_CAPACITY, "op %ld: append of %d: %s", m->op, n, pkv_strerror(st));
        pkv_stats stats = PKV_STATS_INIT;
        pkv_cache_stats(m->c, &stats);
        FUZZ_CHECK(needed > stats.free_blocks + stats.evictable_blocks, "op %ld: refused, needed %d, available %d",
                   m->op, needed, stats.free_blocks + stats.evictable_blocks);
        size_t after_len;
        uint8_t *after = fuzz_dump(m->c, &after_len);
        FUZZ_CHECK(after_len == before_len && memcmp(after, before, before_len) == 0, "op %ld: refused append changed state", m->op);
        free(after);
        free(before);
        return;
    }
    free(before);
    int32_t old_len = s->len, old_blocks = s->nblocks;
    int partial = old_len % bs != 0 && n > 0;
    int record = with_tokens && s->ntokens == s->len;
    if (record) memcpy(s->tokens + s->len, toks, (size_t)n * sizeof *toks);
    s->len += n;
    if (record) s->ntokens = s->len;
    /* Auto-registration may deduplicate full blocks filled before this call. */
    int32_t dedup_below = m->autoreg ? old_len / bs : 0;
    ops_take_blocks(m, s, partial ? old_blocks - 1 : old_blocks, dedup_below);
    if (cow.src != -7 && !m->host) {
        if (cow.src >= 0) {
            FUZZ_CHECK(partial && cow.src == old_last && cow.dst == s->blocks[old_blocks - 1] && cow.dst != cow.src,
                       "op %ld: copy %d -> %d, old last %d", m->op, cow.src, cow.dst, old_last);
        } else {
            FUZZ_CHECK(!partial || s->blocks[old_blocks - 1] == old_last, "op %ld: last block moved without a copy", m->op);
        }
    }
    if (!m->prefix && !m->autoreg) {
        int32_t fresh = s->nblocks - old_blocks + (partial && s->blocks[old_blocks - 1] != old_last);
        FUZZ_CHECK(fresh == needed, "op %ld: append took %d blocks, blocks_needed said %d", m->op, fresh, needed);
    }
    if (n <= OPS_MAXLEN)
        for (int32_t i = 0; i < n; i++) {
            int32_t p = old_len + i;
            FUZZ_CHECK(slots[i] == (int64_t)s->blocks[p / bs] * bs + p % bs, "op %ld: slot %d", m->op, i);
        }
    s->last_start = old_len;
    s->last_n = n;
    for (int32_t p = old_len; p < s->len; p++)
        s->val[p] = record ? ops_token_value(s, s->tokens, p) : ops_unique_value(m);
    ops_write(m, s, old_len, s->len);
    /* A copy-on-write copy carries the old contents (the copied positions
     * [old_len rounded down, old_len) are checked by ops_verify). */
}

static void ops_lookup(ops_model *m, fuzz_in *in) {
    if (m->nseq == OPS_MAXSEQ) return;
    int32_t toks[OPS_MAXLEN];
    int32_t n = (int32_t)fuzz_below(in, OPS_MAXLEN / 2);
    uint64_t ns = fuzz_u8(in) % 3;
    ops_seq *src = ops_pick(m, in);
    int32_t expect_min = 0;
    ops_seq *s = &m->seq[m->nseq];
    memset(s, 0, sizeof *s);
    if (src && (fuzz_u8(in) & 1)) { /* a known prompt: must hit at least its registered blocks */
        ns = src->ns;
        n = src->ntokens < n ? src->ntokens : n;
        memcpy(toks, src->tokens, (size_t)n * sizeof *toks);
        s->adapter = src->adapter;
        s->nr = src->nr;
        memcpy(s->r, src->r, sizeof s->r);
        /* src holds its registered blocks, so they are cached and must be found
         * (unless the extra keys are changed: then anything may be found) */
        int32_t full = n / m->cfg.block_size;
        expect_min = (src->registered < full ? src->registered : full) * m->cfg.block_size;
        uint8_t tweak = fuzz_u8(in);
        if (tweak < 32) {
            s->adapter ^= 1 + (tweak & 1);
            expect_min = 0;
        } else if (tweak < 64 && s->nr) {
            s->r[tweak % s->nr].tag ^= 1 + (tweak & 3);
            expect_min = 0;
        }
    } else {
        for (int32_t i = 0; i < n; i++) toks[i] = (int32_t)(fuzz_u8(in) % 3);
        uint8_t e = fuzz_u8(in);
        s->adapter = e & 1 ? (e >> 1) % 3 : 0;
        for (int32_t k = 0, at = 0; k < (e >> 3) % 3; k++) {
            ops_range x = {at + (int32_t)fuzz_below(in, 6), 1 + (int32_t)fuzz_below(in, 6), 1 + (int32_t)fuzz_below(in, 3)};
            s->r[s->nr++] = x;
            at = x.start + x.len;
        }
    }
    pkv_mm_range mm[OPS_MAXR];
    for (int32_t k = 0; k < s->nr; k++) mm[k] = ops_mm(&s->r[k]);
    pkv_extra_keys x = PKV_EXTRA_KEYS_INIT;
    x.adapter_id = s->adapter;
    x.num_mm = s->nr;
    x.mm = mm;
    int32_t hit = -1, peek = -1;
    int plain = s->adapter == 0 && s->nr == 0 && (fuzz_u8(in) & 1);
    int st = plain ? pkv_prefix_peek(m->c, ns, toks, n, &peek, NULL) : pkv_prefix_peek_ex(m->c, ns, toks, n, &x, &peek, NULL);
    FUZZ_CHECK(st == (m->prefix ? PKV_OK : PKV_ERR_MODE), "op %ld: peek: %s", m->op, pkv_strerror(st));
    st = plain ? pkv_prefix_lookup(m->c, ns, toks, n, &s->h, &hit)
               : pkv_prefix_lookup_ex(m->c, ns, toks, n, &x, &s->h, &hit);
    if (!m->prefix) {
        FUZZ_CHECK(st == PKV_ERR_MODE, "op %ld: lookup without a prefix cache: %d", m->op, st);
        return;
    }
    FUZZ_CHECK(st == PKV_OK, "op %ld: lookup: %s", m->op, pkv_strerror(st));
    int32_t bs = m->cfg.block_size;
    FUZZ_CHECK(hit >= expect_min && hit <= n && hit % bs == 0, "op %ld: lookup hit %d of %d, expected at least %d",
               m->op, hit, n, expect_min);
    FUZZ_CHECK(peek == hit, "op %ld: peek found %d, lookup %d", m->op, peek, hit);
    m->nseq++;
    s->ns = ns;
    s->len = s->ntokens = hit;
    s->last_start = hit;
    s->registered = hit / bs;
    memcpy(s->tokens, toks, (size_t)hit * sizeof *toks);
    for (int32_t p = 0; p < hit; p++) s->val[p] = ops_token_value(s, toks, p);
    /* The hit blocks are cached ones; whatever they are, their contents must be
     * this prompt's (ops_verify reads them back). */
    int32_t blocks[OPS_MAXLEN], nb = 0;
    FUZZ_CHECK(pkv_seq_blocks(m->c, s->h, blocks, OPS_MAXLEN, &nb) == PKV_OK && nb == hit / bs, "lookup blocks");
    memcpy(s->blocks, blocks, (size_t)nb * sizeof *blocks);
    s->nblocks = nb;
}

static void ops_step(ops_model *m, fuzz_in *in) {
    uint8_t op = fuzz_u8(in) % 13;
    ops_seq *s = ops_pick(m, in);
    int st;
    switch (op) {
    case 0: /* create */
        if (m->nseq == OPS_MAXSEQ) break;
        s = &m->seq[m->nseq];
        memset(s, 0, sizeof *s);
        s->ns = fuzz_u8(in) % 3;
        FUZZ_CHECK(pkv_seq_create(m->c, s->ns, &s->h) == PKV_OK, "create");
        m->nseq++;
        break;
    case 1:
    case 2:
    case 3:
        if (s) ops_append(m, in, s);
        break;
    case 4: /* fork */
        if (!s || m->nseq == OPS_MAXSEQ) break;
        m->seq[m->nseq] = *s;
        m->seq[m->nseq].last_start = s->len;
        m->seq[m->nseq].last_n = 0;
        FUZZ_CHECK(pkv_seq_fork(m->c, s->h, &m->seq[m->nseq].h) == PKV_OK, "fork");
        m->nseq++;
        break;
    case 5: /* truncate */
        if (!s) break;
        {
            int32_t len = (int32_t)fuzz_below(in, (uint32_t)s->len + 2);
            st = pkv_seq_truncate(m->c, s->h, len);
            if (len > s->len) {
                FUZZ_CHECK(st == PKV_ERR_INVALID, "truncate past the end: %d", st);
                break;
            }
            FUZZ_CHECK(st == PKV_OK, "truncate: %s", pkv_strerror(st));
            s->len = len;
            while (s->nr > 0 && s->r[s->nr - 1].start >= len) s->nr--;
            if (s->ntokens > len) s->ntokens = len;
            if (s->registered > len / m->cfg.block_size) s->registered = len / m->cfg.block_size;
            s->nblocks = ops_blocks_for(m, len);
            if (s->last_start > len) s->last_start = len;
            if (s->last_start + s->last_n > len) s->last_n = len - s->last_start;
        }
        break;
    case 6: /* free */
        if (!s) break;
        FUZZ_CHECK(pkv_seq_free(m->c, s->h) == PKV_OK, "free");
        ops_remove(m, s);
        break;
    case 7: /* register */
        if (!s) break;
        {
            int32_t reg = -1, dd = -1;
            st = pkv_prefix_register(m->c, s->h, &reg, &dd);
            if (!m->prefix) {
                FUZZ_CHECK(st == PKV_ERR_MODE, "register without a prefix cache: %d", st);
                break;
            }
            FUZZ_CHECK(st == PKV_OK && reg >= 0 && dd >= 0, "register: %s", pkv_strerror(st));
            s->registered = s->ntokens / m->cfg.block_size;
            ops_take_blocks(m, s, s->nblocks, s->registered);
        }
        break;
    case 8:
        ops_lookup(m, in);
        break;
    case 9: /* a stale handle is refused everywhere, changing nothing */
        if (!m->nstale) break;
        {
            pkv_seq h = m->stale[fuzz_below(in, (uint32_t)m->nstale)];
            int32_t x;
            pkv_block_copy cow;
            FUZZ_CHECK(pkv_seq_append(m->c, h, 1, NULL, NULL, &cow) == PKV_ERR_NO_SEQ, "stale append");
            FUZZ_CHECK(pkv_seq_truncate(m->c, h, 0) == PKV_ERR_NO_SEQ, "stale truncate");
            FUZZ_CHECK(pkv_seq_length(m->c, h, &x) == PKV_ERR_NO_SEQ, "stale length");
            FUZZ_CHECK(pkv_seq_free(m->c, h) == PKV_ERR_NO_SEQ, "stale free");
            FUZZ_CHECK(pkv_seq_fork(m->c, h, &h) == PKV_ERR_NO_SEQ, "stale fork");
        }
        break;
    case 10: /* exports agree with the model */
        if (!m->nseq) break;
        {
            pkv_seq hs[OPS_MAXSEQ];
            int32_t table[OPS_MAXSEQ * 16], lens[OPS_MAXSEQ], needed = -1, indptr[OPS_MAXSEQ + 1];
            int32_t indices[OPS_MAXSEQ * 16], last[OPS_MAXSEQ];
            for (int i = 0; i < m->nseq; i++) hs[i] = m->seq[i].h;
            FUZZ_CHECK(pkv_export_flashmla(m->c, hs, m->nseq, table, 16, lens, &needed) == PKV_OK, "export");
            FUZZ_CHECK(pkv_export_flashinfer(m->c, hs, m->nseq, indptr, indices, OPS_MAXSEQ * 16, last, &needed) ==
                           PKV_OK, "export flashinfer");
            for (int i = 0; i < m->nseq; i++) {
                const ops_seq *q = &m->seq[i];
                FUZZ_CHECK(lens[i] == q->len && indptr[i + 1] - indptr[i] == q->nblocks, "export lengths");
                for (int32_t j = 0; j < 16; j++)
                    FUZZ_CHECK(table[i * 16 + j] == (j < q->nblocks ? q->blocks[j] : -1), "export table");
                for (int32_t j = 0; j < q->nblocks; j++) FUZZ_CHECK(indices[indptr[i] + j] == q->blocks[j], "csr");
                FUZZ_CHECK(last[i] == (q->len ? q->len - (q->nblocks - 1) * m->cfg.block_size : 0), "last page len");
            }
            int64_t slots[OPS_MAXSEQ * OPS_MAXLEN];
            int32_t ns = -1, at = 0, bs = m->cfg.block_size;
            FUZZ_CHECK(pkv_export_slot_mapping(m->c, hs, m->nseq, slots, OPS_MAXSEQ * OPS_MAXLEN, &ns) == PKV_OK,
                       "slot mapping");
            for (int i = 0; i < m->nseq; i++) {
                const ops_seq *q = &m->seq[i];
                for (int32_t p = q->last_start; p < q->last_start + q->last_n; p++, at++)
                    FUZZ_CHECK(at < ns && slots[at] == (int64_t)q->blocks[p / bs] * bs + p % bs,
                               "op %ld: slot mapping entry %d", m->op, at);
            }
            FUZZ_CHECK(at == ns, "op %ld: slot mapping has %d entries, model %d", m->op, ns, at);
        }
        break;
    case 11: /* extra keys: an adapter or an image, valid or not; a refused one changes nothing */
        if (!s) break;
        {
            uint8_t k = fuzz_u8(in);
            if (!(k & 1) && s->nr == OPS_MAXR) break; /* the model holds no more ranges */
            size_t bl, al;
            uint8_t *before = fuzz_dump(m->c, &bl);
            int32_t end = s->nr ? s->r[s->nr - 1].start + s->r[s->nr - 1].len : 0;
            int32_t min = s->len > end ? s->len : end, expect;
            if (k & 1) {
                uint64_t a = (k >> 1) % 3;
                st = pkv_seq_set_adapter(m->c, s->h, a);
                expect = s->len == 0 ? PKV_OK : PKV_ERR_STATE;
                if (st == PKV_OK) s->adapter = a;
            } else {
                ops_range x = {min - 2 + (int32_t)fuzz_below(in, 6), (int32_t)fuzz_below(in, 7), 1 + (int32_t)fuzz_below(in, 3)};
                pkv_mm_range r = ops_mm(&x);
                st = pkv_seq_add_mm(m->c, s->h, r.start, r.len, (k & 6) ? r.hash : NULL);
                expect = !(k & 6) ? PKV_ERR_NULL : x.start < min || x.len < 1 ? PKV_ERR_INVALID : PKV_OK;
                if (st == PKV_OK) s->r[s->nr++] = x;
            }
            FUZZ_CHECK(st == expect, "op %ld: extra keys call: %s, model %s", m->op, pkv_strerror(st), pkv_strerror(expect));
            if (st != PKV_OK) {
                uint8_t *after = fuzz_dump(m->c, &al);
                FUZZ_CHECK(al == bl && memcmp(before, after, bl) == 0, "op %ld: refused extra keys changed state", m->op);
                free(after);
            }
            free(before);
        }
        break;
    default: /* an invalid call: refused with the cache unchanged */
        if (!s) break;
        {
            size_t bl, al;
            uint8_t *before = fuzz_dump(m->c, &bl);
            pkv_block_copy cow;
            int32_t x;
            FUZZ_CHECK(pkv_seq_append(m->c, s->h, -1 - (int32_t)fuzz_u8(in), NULL, NULL, &cow) == PKV_ERR_INVALID, "n < 0");
            FUZZ_CHECK(pkv_seq_truncate(m->c, s->h, s->len + 1 + fuzz_u8(in)) == PKV_ERR_INVALID, "truncate > len");
            FUZZ_CHECK(pkv_seq_blocks(m->c, s->h, &x, s->nblocks > 1 ? 1 : -1, &x) == PKV_ERR_BUFFER, "small buffer");
            uint8_t *after = fuzz_dump(m->c, &al);
            FUZZ_CHECK(al == bl && memcmp(before, after, bl) == 0, "op %ld: refused call changed state", m->op);
            free(before);
            free(after);
        }
        break;
    }
}

int fuzz_ops(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size, 0};
    static ops_model model; /* large: not on the stack */
    ops_model *m = &model;
    memset(m, 0, sizeof *m);
    uint8_t f = fuzz_u8(&in);
    pkv_config_init(&m->cfg);
    m->cfg.num_blocks = 1 + (int32_t)(fuzz_u8(&in) % 16);
    m->cfg.block_size = 1 + (int32_t)(fuzz_u8(&in) % 8);
    m->host = f & 1;
    m->prefix = (f >> 1) & 1;
    m->autoreg = m->prefix && ((f >> 2) & 1);
    m->cfg.flags = (m->prefix ? PKV_FLAG_PREFIX_CACHE : 0u) | (m->autoreg ? PKV_FLAG_AUTO_REGISTER : 0u) |
                   ((f >> 3) & 1 ? PKV_FLAG_THREAD_SAFE : 0u);
    m->cfg.hash_key_set = 1;
    for (int i = 0; i < 16; i++) m->cfg.hash_key[i] = (uint8_t)(f + i);
    if (m->host) {
        m->cfg.storage = PKV_STORAGE_HOST;
        m->cfg.num_layers = 1;
        m->cfg.h_kv = 1;
        m->cfg.d = 2;
        m->cfg.dv = 1;
        m->cfg.kv_dtype = PKV_F32;
    }
    FUZZ_CHECK(pkv_cache_create(&m->cfg, &m->c) == PKV_OK, "create");
    while (!fuzz_done(&in) && m->op < 4000) {
        ops_step(m, &in);
        m->op++;
        ops_verify(m);
    }
    for (int i = 0; i < m->nseq; i++) FUZZ_CHECK(pkv_seq_free(m->c, m->seq[i].h) == PKV_OK, "final free");
    m->nseq = 0;
    ops_verify(m);
    pkv_cache_destroy(m->c);
    return 0;
}

#ifdef PKV_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_ops(data, size); }
#endif
