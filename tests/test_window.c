/* Sliding-window caches (pkv_config.window): blocks that leave the window
 * are released, their table entries -1, and attention over what is left
 * equals attention with the same window over a cache that kept every block.
 *
 * - config: a negative window, or a window with prefix caching but not
 *   AUTO_REGISTER, is refused (prefix caching: tests/test_window_prefix.c);
 * - attention: host caches, one with window W and one full, fed the same
 *   rows; after every append the oracle over the window cache's table (with
 *   its -1 entries) equals the oracle over the full cache's table with window
 *   W, bit for bit, and pkv_attn (the fast path) agrees within its tolerance;
 *   a window-0 call over the window cache's table is refused (a -1 it reads);
 * - a model-based run: random appends (also lookahead drafts), accepts,
 *   truncations, forks and frees on several sequences, each call's outcome
 *   and every sequence's table checked against a shadow model (which blocks
 *   are released, which truncations are refused), with pkv_cache_check after
 *   every operation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

static pkv_cache *make(int32_t nb, int32_t bs, int32_t window, int host) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = bs;
    cfg.window = window;
    if (host) {
        cfg.storage = PKV_STORAGE_HOST;
        cfg.num_layers = 1;
        cfg.h_kv = 2;
        cfg.d = 8;
        cfg.dv = 8;
        cfg.v_separate = 1;
        cfg.kv_dtype = PKV_F32;
    }
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    return c;
}

static void test_config(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    pkv_cache *c = NULL;
    cfg.window = -1;
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
    CHECK(c == NULL);
    cfg.window = 64;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
    cfg.flags = 0;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    pkv_config back;
    memset(&back, 0, sizeof back);
    back.size = sizeof back;
    CHECK_OK(pkv_cache_config(c, &back));
    CHECK_INT(back.window, 64);
    pkv_cache_destroy(c);
    /* a caller built against the 1.0/1.1 header (no window field) gets full attention */
    pkv_config_init(&cfg);
    cfg.size = 88;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    memset(&back, 0, sizeof back);
    back.size = sizeof back;
    CHECK_OK(pkv_cache_config(c, &back));
    CHECK_INT(back.window, 0);
    pkv_cache_destroy(c);
}

/* K and V of token position p, head h, dim i: a pure function of them. */
static float kval(int32_t p, int32_t h, int32_t i) { return (float)((p * 37 + h * 11 + i * 5) % 97) / 48.0f - 1.0f; }
static float vval(int32_t p, int32_t h, int32_t i) { return (float)((p * 13 + h * 7 + i * 3) % 89) / 44.0f - 1.0f; }

static void append_rows(pkv_cache *c, pkv_seq s, int32_t at, int32_t n) {
    int64_t slots[64];
    float k[64 * 16], v[64 * 16];
    CHECK_OK(pkv_seq_append(c, s, n, NULL, slots, NULL));
    for (int32_t t = 0; t < n; t++)
        for (int32_t h = 0; h < 2; h++)
            for (int32_t i = 0; i < 8; i++) {
                k[(t * 2 + h) * 8 + i] = kval(at + t, h, i);
                v[(t * 2 + h) * 8 + i] = vval(at + t, h, i);
            }
    CHECK_OK(pkv_store_write(c, 0, slots, n, k, v, PKV_F32));
}

/* Attention of the last s_q tokens of s (causal) over c's table with window w. */
static int attend(pkv_cache *c, pkv_seq s, int32_t s_q, int32_t w, int fast, float *out, float *lse) {
    int32_t table[64], len, needed;
    CHECK_OK(pkv_seq_length(c, s, &len));
    CHECK_OK(pkv_export_flashmla(c, &s, 1, table, 64, &len, &needed));
    pkv_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.size = sizeof cfg;
    CHECK_OK(pkv_cache_config(c, &cfg));
    void *k, *v;
    CHECK_OK(pkv_store_arenas(c, 0, &k, &v));
    float q[8 * 4 * 8];
    for (int i = 0; i < s_q * 4 * 8; i++) q[i] = (float)((i * 29) % 23) / 11.0f - 1.0f;
    pkv_attn_args a;
    pkv_attn_args_init(&a);
    a.batch = 1;
    a.s_q = s_q;
    a.h_q = 4;
    a.h_kv = 2;
    a.d = a.dv = 8;
    a.block_size = cfg.block_size;
    a.max_blocks_per_seq = 64;
    a.num_blocks = cfg.num_blocks;
    a.causal = s_q > 1;
    a.softmax_scale = 0.35f;
    a.q_dtype = a.kv_dtype = PKV_F32;
    a.q = q;
    a.k_cache = k;
    a.v_cache = v;
    a.block_table = table;
    a.cache_seqlens = &len;
    a.out = out;
    a.lse = lse;
    a.window = w;
    return fast ? pkv_attn(&a, NULL) : pkv_attn_reference(&a);
}

static void test_attention(void) {
    enum { BS = 4, W = 10 };
    pkv_cache *win = make(8, BS, W, 1), *full = make(40, BS, 0, 1);
    pkv_seq sw, sf;
    CHECK_OK(pkv_seq_create(win, 0, &sw));
    CHECK_OK(pkv_seq_create(full, 0, &sf));
    int32_t len = 0, steps = 0;
    long differ = 0, fast_bad = 0, holes_seen = 0;
    static const int32_t chunks[] = {7, 1, 1, 3, 1, 1, 1, 5, 1, 1, 2, 1, 1, 1, 1, 4, 1, 1, 1, 1, 1, 6, 1, 1};
    for (size_t ci = 0; ci < sizeof chunks / sizeof chunks[0]; ci++) {
        int32_t n = chunks[ci];
        append_rows(win, sw, len, n);
        append_rows(full, sf, len, n);
        len += n;
        float o1[8 * 4 * 8], l1[4 * 8], o2[8 * 4 * 8], l2[4 * 8], o3[8 * 4 * 8], l3[4 * 8];
        int32_t s_q = n < 8 ? n : 8;
        CHECK_OK(attend(win, sw, s_q, W, 0, o1, l1));
        CHECK_OK(attend(full, sf, s_q, W, 0, o2, l2));
        CHECK_OK(attend(win, sw, s_q, W, 1, o3, l3));
        differ += memcmp(o1, o2, (size_t)s_q * 4 * 8 * sizeof(float)) != 0 ||
                  memcmp(l1, l2, (size_t)s_q * 4 * sizeof(float)) != 0;
        for (int i = 0; i < s_q * 4 * 8; i++) fast_bad += fabsf(o3[i] - o1[i]) > 2e-3f;
        int32_t blocks[64], nb;
        CHECK_OK(pkv_seq_blocks(win, sw, blocks, 64, &nb));
        for (int32_t j = 0; j < nb; j++) holes_seen += blocks[j] < 0;
        if (blocks[0] < 0) CHECK_STATUS(attend(win, sw, 1, 0, 0, o1, l1), PKV_ERR_BLOCK_ID);
        CHECK_OK(pkv_cache_check(win));
        steps++;
    }
    CHECK_INT(differ, 0);
    CHECK_INT(fast_bad, 0);
    CHECK(holes_seen > 0);
    /* The pool never held more than the window needs: 8 blocks served a sequence of 45 tokens. */
    CHECK(len > 8 * BS);
    pkv_stats st = PKV_STATS_INIT;
    CHECK_OK(pkv_cache_stats(win, &st));
    CHECK(st.used_blocks <= (W + BS - 1) / BS + 2);
    pkv_cache_destroy(win);
    pkv_cache_destroy(full);
}

/* ---- the model ---- */
enum { MS = 6 };
typedef struct mseq {
    pkv_seq h;
    int32_t len, look, rel; /* tokens, lookahead drafts, released blocks */
} mseq;

static int32_t keep_from(int32_t settled, int32_t w, int32_t bs) {
    int64_t first = (int64_t)settled + 1 - w;
    return first > 0 ? (int32_t)(first / bs) : 0;
}

static void check_tables(pkv_cache *c, const mseq *m, int n, int32_t bs, long *bad) {
    for (int i = 0; i < n; i++) {
        int32_t blocks[256], nb = 0, len = 0, look = 0;
        if (pkv_seq_blocks(c, m[i].h, blocks, 256, &nb) != PKV_OK || pkv_seq_length(c, m[i].h, &len) != PKV_OK ||
            pkv_seq_lookahead(c, m[i].h, &look) != PKV_OK) {
            ++*bad;
            continue;
        }
        *bad += len != m[i].len || look != m[i].look || nb != (m[i].len + bs - 1) / bs;
        for (int32_t j = 0; j < nb; j++) *bad += (blocks[j] < 0) != (j < m[i].rel);
    }
}

static void test_model(int32_t bs, int32_t w, uint64_t seed) {
    pkv_cache *c = make(40, bs, w, 0);
    mseq m[MS];
    int n = 0;
    test_rng rng = {seed};
    long ops = test_scaled(4000), bad = 0, refused = 0, released = 0;
    if (ops < 1500) ops = 1500; /* enough to release and refuse at any PKV_TEST_SCALE (valgrind: 0.02) */
    pkv_block_copy cow;
    for (long op = 0; op < ops; op++) {
        int k = n ? (int)test_below(&rng, (uint32_t)n) : 0;
        uint32_t what = test_below(&rng, 10);
        if (n == 0 || (what == 0 && n < MS)) { /* create */
            CHECK_OK(pkv_seq_create(c, 0, &m[n].h));
            m[n].len = m[n].look = m[n].rel = 0;
            n++;
        } else if (what <= 4) { /* append, sometimes drafts */
            int draft = what == 4, x = 1 + (int32_t)test_below(&rng, what == 1 ? 3 * (uint32_t)bs : 3);
            int st = draft ? pkv_seq_append_lookahead(c, m[k].h, x, NULL, NULL, &cow)
                           : pkv_seq_append(c, m[k].h, x, NULL, NULL, &cow);
            if (!draft && m[k].look) {
                bad += st != PKV_ERR_STATE;
            } else if (st == PKV_OK) {
                int32_t settled = m[k].len - m[k].look, nb = (m[k].len + x + bs - 1) / bs;
                int32_t keep = keep_from(settled, w, bs);
                if (keep > nb) keep = nb;
                if (keep > m[k].rel) released += keep - m[k].rel, m[k].rel = keep;
                m[k].len += x;
                if (draft) m[k].look += x;
            } else {
                bad += st != PKV_ERR_CAPACITY;
            }
        } else if (what == 5) { /* accept some drafts */
            int32_t a = m[k].look ? (int32_t)test_below(&rng, (uint32_t)m[k].look + 1) : 0;
            bad += pkv_seq_accept(c, m[k].h, a) != PKV_OK;
            m[k].len -= m[k].look - a;
            m[k].look = 0;
        } else if (what == 6) { /* truncate */
            int32_t to = m[k].len - (int32_t)test_below(&rng, (uint32_t)(m[k].len < 2 * bs ? m[k].len + 1 : 2 * bs));
            int st = pkv_seq_truncate(c, m[k].h, to);
            if (m[k].rel > keep_from(to, w, bs)) {
                bad += st != PKV_ERR_STATE;
                refused++;
            } else {
                bad += st != PKV_OK;
                m[k].look -= m[k].len - to;
                if (m[k].look < 0) m[k].look = 0;
                m[k].len = to;
                int32_t nb = (to + bs - 1) / bs;
                if (m[k].rel > nb) m[k].rel = nb;
            }
        } else if (what == 7 && n < MS) { /* fork */
            pkv_seq ch;
            int st = pkv_seq_fork(c, m[k].h, &ch);
            bad += st != PKV_OK;
            if (st == PKV_OK) {
                m[n] = m[k];
                m[n].h = ch;
                n++;
            }
        } else if (what == 8) { /* free */
            bad += pkv_seq_free(c, m[k].h) != PKV_OK;
            m[k] = m[--n];
        } else if (what == 9) { /* swap is refused once blocks are released */
            pkv_seq_swap_out(c, m[k].h) == PKV_ERR_STATE ? (void)0 : (void)(bad += m[k].rel > 0);
        }
        check_tables(c, m, n, bs, &bad);
        if (pkv_cache_check(c) != PKV_OK) {
            TEST_FAIL_("op %ld: %s", op, pkv_cache_last_error(c));
            break;
        }
    }
    CHECK_INT(bad, 0);
    CHECK(released > 0);
    CHECK(refused > 0);
    printf("window model (bs %d, W %d): %ld operations, %ld blocks released, %ld truncations refused\n", bs, w, ops,
           released, refused);
    pkv_cache_destroy(c);
}

int main(void) {
    test_config();
    test_attention();
    test_model(4, 10, 0x51d);
    test_model(4, 1, 0x51e);
    test_model(16, 48, 0x51f);
    return test_report("test_window");
}
