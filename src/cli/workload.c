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
/* One object per line:
 *   {"arrival": 0.5, "prompt_len": 300, "prefix_group": 2, "output_len": 120}
 *   {"arrival": 1.0, "prompt": [1, 2, 3], "output_len": 5, "n": 2}
 * arrival: seconds (>= 0); prompt: token ids (0 <= id < 2^31); prompt_len with
 * an optional prefix_group g >= 0: the prompt's first prefix_len tokens
 * (default: all of them) are group g's shared text, the rest unique to the
 * line. n: parallel samples 1..4. Unknown keys are an error (typos should not
 * silently change a workload). Blank lines and lines starting with '#' are
 * skipped. */

typedef struct jparser {
    const char *s, *p;
    char err[160];
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

typedef struct trace_line {
    double arrival;
    int64_t prompt_len, prefix_group, prefix_len, output_len, n;
    int32_t *prompt;
    int32_t prompt_n, prompt_cap;
    int have_arrival, have_prompt, have_output;
} trace_line;

static int jprompt(jparser *j, trace_line *t) {
    jskip(j);
    if (*j->p != '[') return jfail(j, "\"prompt\" must be an array of token ids");
    j->p++;
    jskip(j);
    t->prompt_n = 0;
    if (*j->p == ']') {
        j->p++;
        return 0;
    }
    for (;;) {
        int64_t v;
        if (jint(j, 0, INT32_MAX, "a token id", &v)) return -1;
        if (t->prompt_n == t->prompt_cap) {
            int32_t cap = t->prompt_cap ? t->prompt_cap * 2 : 256;
            int32_t *p = realloc(t->prompt, (size_t)cap * sizeof *p);
            if (!p) return jfail(j, "out of memory");
            t->prompt = p;
            t->prompt_cap = cap;
        }
        t->prompt[t->prompt_n++] = (int32_t)v;
        jskip(j);
        if (*j->p == ',') { j->p++; continue; }
        if (*j->p == ']') { j->p++; return 0; }
        return jfail(j, "expected ',' or ']' in \"prompt\"");
    }
}

static int parse_trace_line(jparser *j, trace_line *t) {
    t->prompt_len = -1;
    t->prefix_group = -1;
    t->prefix_len = -1;
    t->n = 1;
    t->have_arrival = t->have_prompt = t->have_output = 0;
    jskip(j);
    if (*j->p != '{') return jfail(j, "expected a JSON object");
    j->p++;
    jskip(j);
    if (*j->p == '}') return jfail(j, "empty object");
    for (;;) {
        char key[32];
        if (jkey(j, key, sizeof key)) return -1;
        int64_t v;
        if (!strcmp(key, "arrival")) {
            if (jnumber(j, &t->arrival)) return -1;
            if (t->arrival < 0) return jfail(j, "arrival must be >= 0");
            t->have_arrival = 1;
        } else if (!strcmp(key, "prompt_len")) {
            if (jint(j, 1, 1 << 24, "prompt_len", &v)) return -1;
            t->prompt_len = v;
        } else if (!strcmp(key, "prefix_group")) {
            if (jint(j, 0, INT32_MAX, "prefix_group", &v)) return -1;
            t->prefix_group = v;
        } else if (!strcmp(key, "prefix_len")) {
            if (jint(j, 0, 1 << 24, "prefix_len", &v)) return -1;
            t->prefix_len = v;
        } else if (!strcmp(key, "output_len")) {
            if (jint(j, 1, 1 << 20, "output_len", &v)) return -1;
            t->output_len = v;
            t->have_output = 1;
        } else if (!strcmp(key, "n")) {
            if (jint(j, 1, SIM_MAX_SAMPLES, "n", &v)) return -1;
            t->n = v;
        } else if (!strcmp(key, "prompt")) {
            if (jprompt(j, t)) return -1;
            t->have_prompt = 1;
        } else {
            char msg[80];
            snprintf(msg, sizeof msg, "unknown key \"%s\"", key);
            return jfail(j, msg);
        }
        jskip(j);
        if (*j->p == ',') { j->p++; continue; }
        if (*j->p == '}') { j->p++; break; }
        return jfail(j, "expected ',' or '}'");
    }
    jskip(j);
    if (*j->p) return jfail(j, "trailing characters after the object");
    if (!t->have_arrival) return jfail(j, "missing \"arrival\"");
    if (!t->have_output) return jfail(j, "missing \"output_len\"");
    if (t->have_prompt == (t->prompt_len >= 0))
        return jfail(j, "give exactly one of \"prompt\" and \"prompt_len\"");
    if (t->have_prompt && t->prompt_n == 0) return jfail(j, "\"prompt\" is empty");
    if (t->have_prompt && (t->prefix_group >= 0 || t->prefix_len >= 0))
        return jfail(j, "\"prefix_group\"/\"prefix_len\" go with \"prompt_len\", not \"prompt\"");
    if (t->prefix_len >= 0 && t->prefix_group < 0) return jfail(j, "\"prefix_len\" needs \"prefix_group\"");
    if (t->prefix_len > t->prompt_len) return jfail(j, "\"prefix_len\" exceeds \"prompt_len\"");
    return 0;
}

int workload_trace(const char *path, uint64_t seed, sim_workload *w) {
    memset(w, 0, sizeof *w);
    snprintf(w->source, sizeof w->source, "trace %s", path);
    FILE *f = fopen(path, "r");
    if (!f) return cli_error("%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int rc = 0;
    trace_line t = {0};
    double last_arrival = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (memchr(line, 0, (size_t)len)) {
            rc = cli_error("%s:%ld: NUL byte in line", path, lineno);
            break;
        }
        const char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
        if (!*p || *p == '#') continue;
        jparser j = {line, line, {0}};
        if (parse_trace_line(&j, &t)) {
            fprintf(stderr, "%s:%ld: %s\n", path, lineno, j.err);
            rc = EXIT_USAGE;
            break;
        }
        if (w->n > 0 && t.arrival < last_arrival) {
            fprintf(stderr, "%s:%ld: arrival %g is earlier than the previous line's %g\n", path, lineno,
                    t.arrival, last_arrival);
            rc = EXIT_USAGE;
            break;
        }
        last_arrival = t.arrival;
        sim_request *r = workload_push(w);
        if (!r) { rc = cli_error("out of memory"); break; }
        int32_t idx = w->n - 1;
        r->arrival = t.arrival;
        r->output_len = (int32_t)t.output_len;
        r->n_samples = (int32_t)t.n;
        r->group = (int32_t)t.prefix_group;
        r->out_salt = cli_mix(seed, (uint64_t)idx, 0x74726163, 0);
        r->prompt_len = t.have_prompt ? t.prompt_n : (int32_t)t.prompt_len;
        r->prompt = malloc((size_t)r->prompt_len * sizeof *r->prompt);
        if (!r->prompt) { rc = cli_error("out of memory"); break; }
        if (t.have_prompt) {
            memcpy(r->prompt, t.prompt, (size_t)t.prompt_n * sizeof *r->prompt);
        } else {
            int32_t shared = r->group < 0 ? 0 : (t.prefix_len >= 0 ? (int32_t)t.prefix_len : r->prompt_len);
            for (int32_t i = 0; i < r->prompt_len; i++)
                r->prompt[i] = i < shared ? group_token(r->group, i)
                                          : (int32_t)(cli_mix(seed ^ 0x75736572, (uint64_t)idx, 1, (uint64_t)i) %
                                                      SIM_VOCAB);
        }
        w->conversations++;
        if (r->group >= 0) w->with_system_prompt++;
        if (r->n_samples > 1) w->parallel++;
        w->prompt_tokens += r->prompt_len;
        w->output_tokens += (int64_t)r->output_len * r->n_samples;
    }
    if (rc == 0 && ferror(f)) rc = cli_error("%s: read error", path);
    if (rc == 0 && w->n == 0) rc = cli_error("%s: no requests in the trace", path);
    free(t.prompt);
    free(line);
    fclose(f);
    if (rc) workload_free(w);
    return rc;
}
