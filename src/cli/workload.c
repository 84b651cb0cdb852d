/* Workloads for `pkv sim`: the embedded default (ShareGPT-like chats) and
 * JSON-lines traces.
 *
 * Default workload. Conversations start as a Poisson process (--rate per
 * second). A conversation has 1..8 turns (geometric, mean about 2.5); 30% of
 * them open with one of five system prompts (256..1800 tokens) shared with
 * every other conversation of that group. Each turn's new user text and each
 * output length are lognormal and clipped, like ShareGPT's heavy tails
 * (user text: median 110 tokens, sigma 1.1, 4..3000; output: median 160,
 * sigma 0.9, 1..1500). Turn k+1's prompt is turn k's prompt + turn k's output
 * (sample 0) + new user text, so its prefix is exactly the KV of turn k, and it
 * arrives an exponential think time (mean 5 s) after turn k finished. 5% of
 * requests ask for n = 2..4 parallel samples (pkv_seq_fork). Token ids are
 * hashes of (group | conversation, turn, position), so equal content means
 * equal ids and prefix caching sees the real structure. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/sim.h"

static const int32_t system_prompt_len[] = {512, 1024, 256, 1800, 700};
#define NUM_GROUPS ((int32_t)(sizeof system_prompt_len / sizeof system_prompt_len[0]))

static int32_t group_token(int32_t group, int32_t i) {
    return (int32_t)(cli_mix(0x737973ull, (uint64_t)group, (uint64_t)i, 0) % SIM_VOCAB);
}

static int32_t lognormal_clip(cli_rng *r, double median, double sigma, int32_t lo, int32_t hi) {
    double x = median * exp(sigma * cli_rng_normal(r));
    if (x < lo) return lo;
    if (x > hi) return hi;
    return (int32_t)x;
}

static sim_request *workload_push(sim_workload *w) {
    if (w->n == w->cap) {
        int32_t cap = w->cap ? w->cap * 2 : 256;
        sim_request *p = realloc(w->req, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        w->req = p;
        w->cap = cap;
    }
    sim_request *r = &w->req[w->n++];
    memset(r, 0, sizeof *r);
    r->parent = r->next = r->group = -1;
    r->n_samples = 1;
    return r;
}

void workload_free(sim_workload *w) {
    for (int32_t i = 0; i < w->n; i++) free(w->req[i].prompt);
    free(w->req);
    free(w->ids);
    memset(w, 0, sizeof *w);
}

int workload_default(const sim_workload_opts *o, sim_workload *w) {
    memset(w, 0, sizeof *w);
    snprintf(w->source, sizeof w->source, "default workload (seed %llu)", (unsigned long long)o->seed);
    cli_rng rng = {o->seed * 0x2545f4914f6cdd1dull + 0x5ee1};
    double t = 0;
    int32_t conv = 0;
    while (w->n < o->requests) {
        t += cli_rng_exp(&rng, 1.0 / o->rate);
        int32_t group = cli_rng_uniform(&rng) < 0.30 ? (int32_t)(cli_rng_next(&rng) % NUM_GROUPS) : -1;
        int32_t turns = 1;
        while (turns < 8 && cli_rng_uniform(&rng) < 0.6) turns++;
        w->conversations++;
        if (group >= 0) w->with_system_prompt++;
        if (turns > 1) w->multi_turn++;
        int32_t prev = -1;
        for (int32_t k = 0; k < turns && w->n < o->requests; k++) {
            int32_t user = lognormal_clip(&rng, 110, 1.1, 4, 3000);
            int32_t out = lognormal_clip(&rng, 160, 0.9, 1, 1500);
            int32_t base = 0;
            if (prev >= 0) {
                const sim_request *p = &w->req[prev];
                base = p->prompt_len + p->output_len;
            } else if (group >= 0) {
                base = system_prompt_len[group];
            }
            if ((int64_t)base + user + out > o->max_context) break;
            sim_request *r = workload_push(w);
            if (!r) return EXIT_LIB;
            int32_t idx = w->n - 1;
            r->prompt_len = base + user;
            r->output_len = out;
            r->group = group;
            r->out_salt = cli_mix(o->seed, (uint64_t)conv, (uint64_t)k, 0x73616c74);
            if (cli_rng_uniform(&rng) < 0.05) {
                r->n_samples = 2 + (int32_t)(cli_rng_next(&rng) % 3);
                w->parallel++;
            }
            r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
            if (!r->prompt) return EXIT_LIB;
            int32_t pos = 0;
            if (prev >= 0) {
                const sim_request *p = &w->req[prev];
                memcpy(r->prompt, p->prompt, (size_t)p->prompt_len * sizeof *r->prompt);
                for (int32_t i = 0; i < p->output_len; i++)
                    r->prompt[p->prompt_len + i] = sim_out_token(p->out_salt, 0, i);
                pos = base;
                r->parent = prev;
                w->req[prev].next = idx;
                r->arrival = cli_rng_exp(&rng, 5.0);
            } else {
                for (; pos < base; pos++) r->prompt[pos] = group_token(group, pos);
                r->arrival = t;
            }
            for (int32_t i = 0; pos < r->prompt_len; pos++, i++)
                r->prompt[pos] = (int32_t)(cli_mix(o->seed ^ 0x75736572, (uint64_t)conv, (uint64_t)k,
                                                   (uint64_t)i) % SIM_VOCAB);
            w->prompt_tokens += r->prompt_len;
            w->output_tokens += (int64_t)r->output_len * r->n_samples;
            prev = idx;
        }
        conv++;
    }
    return 0;
}

/* ---- JSON-lines traces ------------------------------------------------- */
/* One object per line, in one of two forms told apart by their keys:
 *   {"arrival": 0.5, "prompt_len": 300, "prefix_group": 2, "output_len": 120}
 *   {"arrival": 1.0, "prompt": [1, 2, 3], "output_len": 5, "n": 2}
 *   {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}
 * pkv lines: arrival in seconds (>= 0); prompt: token ids (0 <= id < 2^31);
 * prompt_len with an optional prefix_group g >= 0: the prompt's first
 * prefix_len tokens (default: all of them) are group g's shared text, the rest
 * unique to the line. n: parallel samples 1..4.
 * Mooncake lines (FAST'25 traces): timestamp in milliseconds, one hash id per
 * trace_block prompt tokens (the last one partial), so exactly
 * ceil(input_length / trace_block) of them; equal ids mean equal content.
 * Unknown and repeated keys are an error (typos should not silently change a
 * workload). Blank lines and lines starting with '#' are skipped; a UTF-8 byte
 * order mark at the start of the file is skipped. */

typedef struct jparser {
    const char *s, *p;
    char err[320];
} jparser;

static void jskip(jparser *j) {
    while (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n') j->p++;
}

static int jfail(jparser *j, const char *msg) {
    if (!j->err[0]) snprintf(j->err, sizeof j->err, "column %d: %s", (int)(j->p - j->s) + 1, msg);
    return -1;
}

static int jnumber(jparser *j, double *out) {
    jskip(j);
    const char *start = j->p;
    if (*j->p == '-') j->p++;
    if (!isdigit((unsigned char)*j->p)) return jfail(j, "expected a number");
    while (isdigit((unsigned char)*j->p)) j->p++;
    if (*j->p == '.') {
        j->p++;
        if (!isdigit((unsigned char)*j->p)) return jfail(j, "malformed number");
        while (isdigit((unsigned char)*j->p)) j->p++;
    }
    if (*j->p == 'e' || *j->p == 'E') {
        j->p++;
        if (*j->p == '+' || *j->p == '-') j->p++;
        if (!isdigit((unsigned char)*j->p)) return jfail(j, "malformed number");
        while (isdigit((unsigned char)*j->p)) j->p++;
    }
    char buf[64];
    size_t n = (size_t)(j->p - start);
    if (n >= sizeof buf) return jfail(j, "number too long");
    memcpy(buf, start, n);
    buf[n] = 0;
    errno = 0;
    *out = strtod(buf, NULL);
    if (errno || !isfinite(*out)) return jfail(j, "number out of range");
    return 0;
}

static int jint(jparser *j, int64_t lo, int64_t hi, const char *what, int64_t *out) {
    double v;
    if (jnumber(j, &v)) return -1;
    if (v != floor(v) || v < (double)lo || v > (double)hi) {
        char msg[120];
        snprintf(msg, sizeof msg, "%s must be an integer in [%lld, %lld]", what, (long long)lo,
                 (long long)hi);
        return jfail(j, msg);
    }
    *out = (int64_t)v;
    return 0;
}

static int jkey(jparser *j, char *key, size_t cap) {
    jskip(j);
    if (*j->p != '"') return jfail(j, "expected a key in double quotes");
    j->p++;
    size_t n = 0;
    while (*j->p && *j->p != '"') {
        if (*j->p == '\\' || (unsigned char)*j->p < 0x20) return jfail(j, "unsupported character in key");
        if (n + 1 < cap) key[n++] = *j->p;
        j->p++;
    }
    if (*j->p != '"') return jfail(j, "unterminated key");
    j->p++;
    key[n] = 0;
    jskip(j);
    if (*j->p != ':') return jfail(j, "expected ':' after a key");
    j->p++;
    return 0;
}

/* The keys of both forms; a line's form is the one its keys belong to. */
enum {
    K_ARRIVAL, K_PROMPT_LEN, K_PREFIX_GROUP, K_PREFIX_LEN, K_OUTPUT_LEN, K_N, K_PROMPT, /* pkv */
    K_TIMESTAMP, K_INPUT_LENGTH, K_OUTPUT_LENGTH, K_HASH_IDS,                          /* Mooncake */
    K_COUNT
};
static const char *const key_names[K_COUNT] = {
    "arrival", "prompt_len", "prefix_group", "prefix_len", "output_len", "n", "prompt",
    "timestamp", "input_length", "output_length", "hash_ids",
};
#define PKV_KEYS ((1u << K_TIMESTAMP) - 1)
#define MOONCAKE_KEYS ((1u << K_COUNT) - 1 - PKV_KEYS)
/* Hash ids are read as JSON numbers (doubles): integers up to 2^53 are exact. */
#define MAX_HASH_ID 9007199254740991.0

typedef struct i64vec {
    int64_t *v;
    int64_t n, cap;
} i64vec;

typedef struct trace_line {
    uint32_t seen;        /* bit per key */
    double arrival;       /* seconds (timestamp / 1000 for Mooncake lines) */
    int64_t prompt_len, prefix_group, prefix_len, output_len, n;
    i64vec arr;           /* "prompt" token ids or "hash_ids" */
} trace_line;

static int jarray(jparser *j, trace_line *t, const char *name, double hi) {
    jskip(j);
    char msg[120];
    if (*j->p != '[') {
        snprintf(msg, sizeof msg, "\"%s\" must be an array of integers", name);
        return jfail(j, msg);
    }
    j->p++;
    jskip(j);
    t->arr.n = 0;
    if (*j->p == ']') {
        j->p++;
        return 0;
    }
    snprintf(msg, sizeof msg, "an entry of \"%s\"", name);
    for (;;) {
        int64_t v;
        if (jint(j, 0, (int64_t)hi, msg, &v)) return -1;
        if (t->arr.n == t->arr.cap) {
            int64_t cap = t->arr.cap ? t->arr.cap * 2 : 256;
            int64_t *p = realloc(t->arr.v, (size_t)cap * sizeof *p);
            if (!p) return jfail(j, "out of memory");
            t->arr.v = p;
            t->arr.cap = cap;
        }
        t->arr.v[t->arr.n++] = v;
        jskip(j);
        if (*j->p == ',') { j->p++; continue; }
        if (*j->p == ']') { j->p++; return 0; }
        snprintf(msg, sizeof msg, "expected ',' or ']' in \"%s\"", name);
        return jfail(j, msg);
    }
}

static int parse_trace_line(jparser *j, trace_line *t, int32_t trace_block) {
    t->seen = 0;
    t->prompt_len = -1;
    t->prefix_group = -1;
    t->prefix_len = -1;
    t->n = 1;
    t->arr.n = 0;
    jskip(j);
    if (*j->p != '{') return jfail(j, "expected a JSON object");
    j->p++;
    jskip(j);
    if (*j->p == '}') return jfail(j, "empty object");
    for (;;) {
        char key[32];
        if (jkey(j, key, sizeof key)) return -1;
        int k = 0;
        while (k < K_COUNT && strcmp(key, key_names[k])) k++;
        char msg[120];
        if (k == K_COUNT) {
            snprintf(msg, sizeof msg, "unknown key \"%s\"", key);
            return jfail(j, msg);
        }
        if (t->seen & (1u << k)) {
            snprintf(msg, sizeof msg, "duplicate key \"%s\"", key);
            return jfail(j, msg);
        }
        t->seen |= 1u << k;
        int64_t v;
        double d;
        switch (k) {
        case K_ARRIVAL:
            if (jnumber(j, &t->arrival)) return -1;
            if (t->arrival < 0) return jfail(j, "arrival must be >= 0");
            break;
        case K_TIMESTAMP:
            if (jnumber(j, &d)) return -1;
            if (d < 0) return jfail(j, "timestamp must be >= 0 (milliseconds)");
            t->arrival = d / 1000.0;
            break;
        case K_PROMPT_LEN:
        case K_INPUT_LENGTH:
            if (jint(j, 1, 1 << 24, key_names[k], &v)) return -1;
            t->prompt_len = v;
            break;
        case K_PREFIX_GROUP:
            if (jint(j, 0, INT32_MAX, "prefix_group", &v)) return -1;
            t->prefix_group = v;
            break;
        case K_PREFIX_LEN:
            if (jint(j, 0, 1 << 24, "prefix_len", &v)) return -1;
            t->prefix_len = v;
            break;
        case K_OUTPUT_LEN:
        case K_OUTPUT_LENGTH:
            if (jint(j, 1, 1 << 20, key_names[k], &v)) return -1;
            t->output_len = v;
            break;
        case K_N:
            if (jint(j, 1, SIM_MAX_SAMPLES, "n", &v)) return -1;
            t->n = v;
            break;
        case K_PROMPT:
            if (jarray(j, t, "prompt", INT32_MAX)) return -1;
            break;
        case K_HASH_IDS:
            if (jarray(j, t, "hash_ids", MAX_HASH_ID)) return -1;
            break;
        }
        jskip(j);
        if (*j->p == ',') { j->p++; continue; }
        if (*j->p == '}') { j->p++; break; }
        return jfail(j, "expected ',' or '}'");
    }
    jskip(j);
    if (*j->p) return jfail(j, "trailing characters after the object");
    char msg[160];
    if ((t->seen & PKV_KEYS) && (t->seen & MOONCAKE_KEYS))
        return jfail(j, "mixes pkv keys (arrival, prompt_len, prompt, output_len, ...) with Mooncake keys "
                        "(timestamp, input_length, output_length, hash_ids)");
    if (t->seen & MOONCAKE_KEYS) {
        for (int k = K_TIMESTAMP; k < K_COUNT; k++)
            if (!(t->seen & (1u << k))) {
                snprintf(msg, sizeof msg, "missing \"%s\" (a Mooncake line has timestamp, input_length, "
                                          "output_length and hash_ids)", key_names[k]);
                return jfail(j, msg);
            }
        int64_t want = (t->prompt_len + trace_block - 1) / trace_block;
        if (t->arr.n != want) {
            snprintf(msg, sizeof msg, "\"hash_ids\" has %lld ids, input_length %lld needs %lld (one per %d tokens, "
                     "--trace-block)", (long long)t->arr.n, (long long)t->prompt_len, (long long)want, trace_block);
            return jfail(j, msg);
        }
        return 0;
    }
    if (!(t->seen & (1u << K_ARRIVAL))) return jfail(j, "missing \"arrival\"");
    if (!(t->seen & (1u << K_OUTPUT_LEN))) return jfail(j, "missing \"output_len\"");
    int have_prompt = (t->seen >> K_PROMPT) & 1;
    if (have_prompt == (t->prompt_len >= 0))
        return jfail(j, "give exactly one of \"prompt\" and \"prompt_len\"");
    if (have_prompt && t->arr.n == 0) return jfail(j, "\"prompt\" is empty");
    if (have_prompt && t->arr.n > (1 << 24)) return jfail(j, "\"prompt\" is longer than 16777216 tokens");
    if (have_prompt && (t->prefix_group >= 0 || t->prefix_len >= 0))
        return jfail(j, "\"prefix_group\"/\"prefix_len\" go with \"prompt_len\", not \"prompt\"");
    if (t->prefix_len >= 0 && t->prefix_group < 0) return jfail(j, "\"prefix_len\" needs \"prefix_group\"");
    if (t->prefix_len > t->prompt_len) return jfail(j, "\"prefix_len\" exceeds \"prompt_len\"");
    return 0;
}

/* Hash ids to dense ids, in order of first appearance (open addressing). */
typedef struct id_map {
    int64_t *key;
    int32_t *val;
    size_t cap, n;
} id_map;

static size_t id_slot(const id_map *m, int64_t key) {
    uint64_t h = (uint64_t)key * 0x9e3779b97f4a7c15ull;
    size_t i = (size_t)(h ^ (h >> 29)) & (m->cap - 1);
    while (m->val[i] >= 0 && m->key[i] != key) i = (i + 1) & (m->cap - 1);
    return i;
}

/* Dense id of key (a new one gets the next number). Returns -1 when out of memory. */
static int32_t id_get(id_map *m, int64_t key) {
    if (2 * (m->n + 1) > m->cap) {
        id_map g = {NULL, NULL, m->cap ? m->cap * 2 : 1024, m->n};
        g.key = malloc(g.cap * sizeof *g.key);
        g.val = malloc(g.cap * sizeof *g.val);
        if (!g.key || !g.val) {
            free(g.key);
            free(g.val);
            return -1;
        }
        for (size_t i = 0; i < g.cap; i++) g.val[i] = -1;
        for (size_t i = 0; i < m->cap; i++)
            if (m->val[i] >= 0) {
                size_t s = id_slot(&g, m->key[i]);
                g.key[s] = m->key[i];
                g.val[s] = m->val[i];
            }
        free(m->key);
        free(m->val);
        *m = g;
    }
    size_t s = id_slot(m, key);
    if (m->val[s] < 0) {
        m->key[s] = key;
        m->val[s] = (int32_t)m->n++;
    }
    return m->val[s];
}

void sim_tokens(const sim_request *r, int32_t s, int32_t start, int32_t n, int32_t *out) {
    int32_t pos = start, end = start + n;
    if (r->prompt) {
        int32_t m = end < r->prompt_len ? end : r->prompt_len;
        if (m > pos) {
            memcpy(out, r->prompt + pos, (size_t)(m - pos) * sizeof *out);
            out += m - pos;
            pos = m;
        }
    } else {
        int32_t tb = r->tblock;
        while (pos < end && pos < r->prompt_len) {
            int32_t b = pos / tb, off = pos % tb;
            int32_t m = (b + 1) * tb;
            if (m > end) m = end;
            if (m > r->prompt_len) m = r->prompt_len;
            int32_t base = SIM_VOCAB + r->ids[b] * tb;
            for (; pos < m; pos++) *out++ = base + off++;
        }
    }
    for (; pos < end; pos++) *out++ = sim_out_token(r->out_salt, s, pos - r->prompt_len);
}

#define TRACE_FAIL(...) (fprintf(stderr, "pkv: --trace " __VA_ARGS__), fputc('\n', stderr), EXIT_USAGE)

int workload_trace(const char *path, uint64_t seed, int32_t trace_block, sim_workload *w) {
    memset(w, 0, sizeof *w);
    w->trace_block = trace_block;
    snprintf(w->source, sizeof w->source, "trace %s", path);
    struct stat sb;
    if (stat(path, &sb) != 0) return TRACE_FAIL("%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return TRACE_FAIL("%s: is a directory, not a trace file", path);
    FILE *f = fopen(path, "r");
    if (!f) return TRACE_FAIL("%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int rc = 0;
    trace_line t = {0};
    id_map ids = {0};
    int64_t *ids_off = NULL; /* per request: offset of its ids in w->ids, or -1 */
    double last_arrival = 0;
    /* Largest number of distinct ids whose tokens stay below 2^31. */
    int64_t max_ids = ((int64_t)INT32_MAX + 1 - SIM_VOCAB) / trace_block;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (memchr(line, 0, (size_t)len)) {
            rc = TRACE_FAIL("%s:%ld: NUL byte in the line (not a text file?)", path, lineno);
            break;
        }
        char *p = line;
        if (lineno == 1 && !memcmp(p, "\xef\xbb\xbf", 3)) p += 3; /* UTF-8 byte order mark */
        const char *q = p;
        while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n') q++;
        if (!*q || *q == '#') continue;
        if (!memcmp(q, "\xef\xbb\xbf", 3)) {
            rc = TRACE_FAIL("%s:%ld: column %d: a UTF-8 byte order mark, allowed only at the start of the file",
                            path, lineno, (int)(q - line) + 1);
            break;
        }
        jparser j = {p, p, {0}};
        if (parse_trace_line(&j, &t, trace_block)) {
            rc = TRACE_FAIL("%s:%ld: %s", path, lineno, j.err);
            break;
        }
        if (w->n > 0 && t.arrival < last_arrival) {
            rc = TRACE_FAIL("%s:%ld: arrival %g is earlier than the previous line's %g (seconds)", path, lineno,
                            t.arrival, last_arrival);
            break;
        }
        last_arrival = t.arrival;
        int mooncake = (t.seen & MOONCAKE_KEYS) != 0;
        sim_request *r = workload_push(w);
        int64_t *po = r ? realloc(ids_off, (size_t)w->cap * sizeof *po) : NULL;
        if (!po) { rc = EXIT_LIB; break; }
        ids_off = po;
        int32_t idx = w->n - 1;
        ids_off[idx] = -1;
        r->arrival = t.arrival;
        r->output_len = (int32_t)t.output_len;
        r->n_samples = (int32_t)t.n;
        r->group = (int32_t)t.prefix_group;
        r->out_salt = cli_mix(seed, (uint64_t)idx, 0x74726163, 0);
        r->prompt_len = (t.seen >> K_PROMPT) & 1 ? (int32_t)t.arr.n : (int32_t)t.prompt_len;
        r->tblock = trace_block;
        if (mooncake) {
            if (w->nids + t.arr.n > w->ids_cap) {
                int64_t c2 = w->ids_cap ? w->ids_cap * 2 : 4096;
                while (c2 < w->nids + t.arr.n) c2 *= 2;
                int32_t *np = realloc(w->ids, (size_t)c2 * sizeof *np);
                if (!np) { rc = EXIT_LIB; break; }
                w->ids = np;
                w->ids_cap = c2;
            }
            ids_off[idx] = w->nids;
            for (int64_t i = 0; i < t.arr.n; i++) {
                int32_t d = id_get(&ids, t.arr.v[i]);
                if (d < 0) { rc = EXIT_LIB; break; }
                if (d >= max_ids) {
                    rc = TRACE_FAIL("%s:%ld: more than %lld distinct hash ids: their tokens (%d per id, "
                                    "--trace-block) would not fit in 31 bits", path, lineno,
                                    (long long)max_ids, trace_block);
                    break;
                }
                w->ids[w->nids++] = d;
            }
            if (rc) break;
            w->mooncake++;
        } else {
            r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
            if (!r->prompt) { rc = EXIT_LIB; break; }
            if ((t.seen >> K_PROMPT) & 1) {
                for (int32_t i = 0; i < r->prompt_len; i++) r->prompt[i] = (int32_t)t.arr.v[i];
            } else {
                int32_t shared = r->group < 0 ? 0 : (t.prefix_len >= 0 ? (int32_t)t.prefix_len : r->prompt_len);
                for (int32_t i = 0; i < r->prompt_len; i++)
                    r->prompt[i] = i < shared ? group_token(r->group, i)
                                              : (int32_t)(cli_mix(seed ^ 0x75736572, (uint64_t)idx, 1, (uint64_t)i) %
                                                          SIM_VOCAB);
            }
        }
        w->conversations++;
        if (r->group >= 0) w->with_system_prompt++;
        if (r->n_samples > 1) w->parallel++;
        w->prompt_tokens += r->prompt_len;
        w->output_tokens += (int64_t)r->output_len * r->n_samples;
    }
    if (rc == 0 && ferror(f)) rc = TRACE_FAIL("%s: read error: %s", path, strerror(errno));
    if (rc == 0 && w->n == 0) rc = TRACE_FAIL("%s: no requests in the trace", path);
    if (rc == EXIT_LIB) cli_error("--trace %s:%ld: out of memory", path, lineno);
    if (rc == 0) {
        w->distinct_ids = (int32_t)ids.n;
        for (int32_t i = 0; i < w->n; i++)
            if (ids_off[i] >= 0) w->req[i].ids = w->ids + ids_off[i];
    }
    free(ids.key);
    free(ids.val);
    free(ids_off);
    free(t.arr.v);
    free(line);
    fclose(f);
    if (rc) workload_free(w);
    return rc;
}
