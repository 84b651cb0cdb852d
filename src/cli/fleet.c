/* `pkv sim` in simulated time: one engine, or a fleet of engines behind a
 * router, each with its own cache.
 *
 * Every engine has its own clock (the end of its last step). Events are taken
 * in time order: an arrival (a trace line, or a chat's next turn a think time
 * after its previous turn finished) is routed once every busy engine's clock
 * has reached its time, so the router sees each engine as it is then; else
 * the busy engine with the earliest clock runs its next step. An idle engine
 * that receives a request starts at the arrival time. With one engine this is
 * the plain continuous-batching loop.
 *
 * Routers: round-robin; least-loaded (fewest unfinished requests routed
 * there); prefix-aware: among the engines whose load is at most the least
 * load + max(2, least load / 4), the one holding the longest cached prefix of
 * the prompt, found by a real pkv_prefix_lookup on each (then freed; like a
 * router that asks each engine, it refreshes the LRU position of what it finds
 * there), ties to the less loaded. Where a shared tier comes in later, it is a
 * fleet resource: the engines' caches would offload to it and the prefix-aware
 * router would count what it holds. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/engine.h"

const char *sim_router_name(int32_t router) {
    switch (router) {
    case SIM_ROUTER_ROUND_ROBIN: return "round-robin";
    case SIM_ROUTER_LEAST_LOADED: return "least-loaded";
    case SIM_ROUTER_PREFIX_AWARE: return "prefix-aware";
    default: return "?";
    }
}

/* ---- pending arrivals: a binary min-heap of request ids by (ready, id) ---- */
static int heap_less(const fleet *f, int32_t a, int32_t b) {
    double ra = f->rs[a].ready, rb = f->rs[b].ready;
    return ra < rb || (ra == rb && a < b);
}

void fleet_push(fleet *f, int32_t id, double t) {
    f->rs[id].ready = t;
    int32_t i = f->nheap++;
    f->heap[i] = id;
    while (i > 0) {
        int32_t p = (i - 1) / 2;
        if (!heap_less(f, f->heap[i], f->heap[p])) break;
        int32_t x = f->heap[p]; f->heap[p] = f->heap[i]; f->heap[i] = x;
        i = p;
    }
}

static int32_t heap_pop(fleet *f) {
    int32_t top = f->heap[0];
    f->heap[0] = f->heap[--f->nheap];
    int32_t i = 0;
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < f->nheap && heap_less(f, f->heap[l], f->heap[m])) m = l;
        if (r < f->nheap && heap_less(f, f->heap[r], f->heap[m])) m = r;
        if (m == i) break;
        int32_t x = f->heap[m]; f->heap[m] = f->heap[i]; f->heap[i] = x;
        i = m;
    }
    return top;
}

/* ---- routing ---- */
/* The engine for request id, or -1 (fatal, message printed). */
static int32_t route(fleet *f, int32_t id) {
    if (f->n == 1) return 0;
    int32_t router = f->cfg->router, best = 0;
    if (router == SIM_ROUTER_ROUND_ROBIN) return (int32_t)(f->rr++ % f->n);
    int32_t least = f->eng[0].load;
    for (int32_t i = 1; i < f->n; i++)
        if (f->eng[i].load < least) {
            least = f->eng[i].load;
            best = i;
        }
    if (router == SIM_ROUTER_LEAST_LOADED || !f->cfg->prefix_cache) return best;
    int32_t bound = least + (least / 4 > 2 ? least / 4 : 2), best_cached = -1;
    for (int32_t i = 0; i < f->n; i++) {
        engine *e = &f->eng[i];
        if (e->load > bound) continue;
        int32_t cached;
        if (engine_probe(e, id, &cached)) return -1;
        if (cached > best_cached || (cached == best_cached && e->load < f->eng[best].load)) {
            best = i;
            best_cached = cached;
        }
    }
    return best;
}

/* ---- results ---- */
static double pct(const double *v, int64_t n, double p) {
    if (n == 0) return NAN;
    double idx = p * (double)(n - 1);
    int64_t lo = (int64_t)idx;
    int64_t hi = lo + 1 < n ? lo + 1 : lo;
    return v[lo] + (v[hi] - v[lo]) * (idx - (double)lo);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Latencies and tokens generated of the finished requests of instance inst
 * (-1: all). Percentiles are NaN when no request finished. */
static int latencies(const fleet *f, int32_t inst, sim_result *res) {
    int32_t n = f->w->n;
    double *ttft = malloc(((size_t)n + 1) * sizeof *ttft), *tpot = malloc(((size_t)n + 1) * sizeof *tpot),
           *e2e = malloc(((size_t)n + 1) * sizeof *e2e);
    if (!ttft || !tpot || !e2e) {
        free(ttft);
        free(tpot);
        free(e2e);
        return cli_error("out of memory"), EXIT_LIB;
    }
    int64_t a = 0, b = 0;
    res->tokens_generated = 0;
    for (int32_t i = 0; i < n; i++) {
        const rstate *r = &f->rs[i];
        if (r->state != R_DONE || (inst >= 0 && r->inst != inst)) continue;
        res->tokens_generated += (int64_t)f->w->req[i].output_len * f->w->req[i].n_samples;
        ttft[a] = r->first_token - r->ready;
        e2e[a++] = r->finish - r->ready;
        if (f->w->req[i].output_len > 1)
            tpot[b++] = (r->finish - r->first_token) / (f->w->req[i].output_len - 1);
    }
    qsort(ttft, (size_t)a, sizeof *ttft, cmp_double);
    qsort(tpot, (size_t)b, sizeof *tpot, cmp_double);
    qsort(e2e, (size_t)a, sizeof *e2e, cmp_double);
    res->ttft_p50 = pct(ttft, a, 0.5);
    res->ttft_p99 = pct(ttft, a, 0.99);
    res->tpot_p50 = pct(tpot, b, 0.5);
    res->tpot_p99 = pct(tpot, b, 0.99);
    res->e2e_p50 = pct(e2e, a, 0.5);
    free(ttft);
    free(tpot);
    free(e2e);
    return 0;
}

/* The fleet's totals from its instances' results. */
static void aggregate(const fleet *f, const sim_result *inst, sim_result *g) {
    double util = 0, waste = 0, occ = 0, lib_ns = 0, max_tokens = 0, sum_tokens = 0;
    for (int32_t i = 0; i < f->n; i++) {
        const sim_result *x = &inst[i];
        g->num_blocks = x->num_blocks;
        g->steps += x->steps;
        g->done += x->done;
        g->rejected += x->rejected;
        g->prompt_tokens_computed += x->prompt_tokens_computed;
        g->tokens_computed += x->tokens_computed;
        g->hit_tokens += x->hit_tokens;
        g->query_tokens += x->query_tokens;
        g->preemptions += x->preemptions;
        g->recomputed_tokens += x->recomputed_tokens;
        for (int t = 0; t < SIM_MAX_TIERS; t++) {
            g->tier_hit_tokens[t] += x->tier_hit_tokens[t];
            g->tier_blocks_in[t] += x->tier_blocks_in[t];
            g->tier_blocks_out[t] += x->tier_blocks_out[t];
            g->tier_capacity[t] = x->tier_capacity[t];
            g->tier_errors[t] += x->tier_errors[t];
        }
        g->swaps_out += x->swaps_out;
        g->swaps_in += x->swaps_in;
        g->swap_blocks += x->swap_blocks;
        g->swap_fallbacks += x->swap_fallbacks;
        if (x->transfer_s > g->transfer_s) g->transfer_s = x->transfer_s;
        g->evictions += x->evictions;
        g->cow_copies += x->cow_copies;
        g->forks += x->forks;
        g->dedups += x->dedups;
        g->lib_calls += x->lib_calls;
        g->routed += x->routed;
        g->verify_checks += x->verify_checks;
        if (x->verify_max_err > g->verify_max_err) g->verify_max_err = x->verify_max_err;
        if (x->verify_fast_max_err > g->verify_fast_max_err) g->verify_fast_max_err = x->verify_fast_max_err;
        if (x->peak_blocks > g->peak_blocks) g->peak_blocks = x->peak_blocks;
        if (x->peak_running > g->peak_running) g->peak_running = x->peak_running;
        g->ngroups = x->ngroups;
        g->split_tokens = x->split_tokens;
        g->window_prefix = x->window_prefix;
        for (int32_t k = 0; k < x->ngroups; k++) {
            g->group_blocks[k] = x->group_blocks[k];
            if (x->group_peak[k] > g->group_peak[k]) g->group_peak[k] = x->group_peak[k];
            g->group_evictions[k] += x->group_evictions[k];
        }
        if (x->sim_time > g->sim_time) g->sim_time = x->sim_time;
        g->clock_ns = x->clock_ns;
        util += x->kv_util * (double)x->steps;
        waste += x->waste * (double)x->steps;
        occ += x->occupancy * (double)x->steps;
        lib_ns += x->lib_ns_per_call * (double)x->lib_calls;
        if ((double)x->tokens_computed > max_tokens) max_tokens = (double)x->tokens_computed;
        sum_tokens += (double)x->tokens_computed;
    }
    if (g->steps) {
        g->kv_util = util / (double)g->steps;
        g->waste = waste / (double)g->steps;
        g->occupancy = occ / (double)g->steps;
        g->lib_us_per_step = lib_ns * 1e-3 / (double)g->steps;
    }
    g->lib_ns_per_call = g->lib_calls ? lib_ns / (double)g->lib_calls : 0;
    g->hit_rate = g->query_tokens ? (double)g->hit_tokens / (double)g->query_tokens : 0;
    g->load_balance = sum_tokens > 0 ? max_tokens / (sum_tokens / f->n) : 1;
}

static void progress(const fleet *f, double now, int force) {
    static int64_t last;
    int64_t t = cli_now_ns();
    if (!force && t - last < 100000000) return;
    last = t;
    int32_t n = f->w->n;
    int64_t done = f->done + f->rejected;
    int width = 30, fill = (int)(width * done / (n ? n : 1));
    const char *label = f->cfg->progress_label;
    fprintf(stderr, "\r%s%s[", label ? label : "", label ? " " : "");
    for (int i = 0; i < width; i++) fputc(i < fill ? '#' : '.', stderr);
    fprintf(stderr, "] %lld/%d requests, t=%.0fs ", (long long)done, n, now);
    if (force) fputs("\r\033[K", stderr);
    fflush(stderr);
}

/* The busy engine (running or waiting requests) with the earliest clock. */
static engine *next_busy(fleet *f) {
    engine *best = NULL;
    for (int32_t i = 0; i < f->n; i++) {
        engine *e = &f->eng[i];
        if ((e->nrun || e->ring_n) && (!best || e->now < best->now)) best = e;
    }
    return best;
}

static int run_loop(fleet *f) {
    const sim_config *cfg = f->cfg;
    int32_t n = f->w->n;
    double now = 0;
    while (f->done + f->rejected < n) {
        engine *e = next_busy(f);
        if (f->nheap > 0 && (!e || f->rs[f->heap[0]].ready <= e->now)) {
            int32_t id = heap_pop(f);
            double t = f->rs[id].ready;
            int32_t i = route(f, id);
            if (i < 0) return f->fatal ? f->fatal : EXIT_LIB;
            engine *to = &f->eng[i];
            if (!to->nrun && !to->ring_n && to->now < t) to->now = t;
            f->rs[id].state = R_WAITING;
            f->rs[id].inst = i;
            to->load++;
            to->res->routed++;
            engine_enqueue(to, id);
            continue;
        }
        if (!e) break; /* cannot happen: every request is accounted for */
        int rc = engine_step(e);
        if (rc) return rc;
        if (f->fatal) return f->fatal;
        if (e->now > now) now = e->now;
        if (e->last_tokens == 0 && e->nrun == 0 && e->ring_n > 0 &&
            f->rs[e->ring[e->ring_head]].preempt_step != e->res->steps - 1) {
            /* Nothing could be admitted into an idle pool: wait for the next arrival. */
            if (f->nheap == 0)
                return cli_error("sim: request %d cannot be admitted into an idle pool of %d blocks",
                                 e->ring[e->ring_head], e->num_blocks);
            if (f->rs[f->heap[0]].ready > e->now) e->now = f->rs[f->heap[0]].ready;
        }
        if (cfg->progress) progress(f, now, 0);
    }
    if (cfg->progress) progress(f, now, 1);
    return 0;
}

int sim_run(const sim_workload *w, const sim_config *cfg, sim_result *res) {
    int64_t hit_max = res->hit_max_tokens, hit_query = res->hit_max_query;
    memset(res, 0, sizeof *res);
    res->hit_max_tokens = hit_max;
    res->hit_max_query = hit_query;
    res->hit_rate_max = hit_query ? (double)hit_max / (double)hit_query : 0;
    fleet f;
    memset(&f, 0, sizeof f);
    f.w = w;
    f.cfg = cfg;
    f.n = cfg->instances > 0 ? cfg->instances : 1;
    /* Each run's keys apart from every other run's (earlier ones, other
     * processes, the other runs of a sweep): a run starts with an empty share. */
    static int32_t run_counter;
    if (cfg->redis_prefix[0])
        snprintf(f.redis_prefix, sizeof f.redis_prefix, "%s", cfg->redis_prefix);
    else
        snprintf(f.redis_prefix, sizeof f.redis_prefix, "pkvsim:%ld:%llx:%d:", (long)getpid(),
                 (unsigned long long)cli_now_ns(), run_counter++);
    int32_t n = w->n;
    f.rs = calloc((size_t)n, sizeof *f.rs);
    f.heap = malloc((size_t)n * sizeof *f.heap);
    f.eng = calloc((size_t)f.n, sizeof *f.eng);
    sim_result *inst = calloc((size_t)f.n, sizeof *inst);
    int rc = 0;
    if (!f.rs || !f.heap || !f.eng || !inst) {
        rc = cli_error("out of memory");
        goto out;
    }
    for (int32_t i = 0; i < f.n && !rc; i++) rc = engine_init(&f.eng[i], &f, i, &inst[i]);
    if (rc) goto out;
    for (int32_t i = 0; i < n; i++) {
        f.rs[i].first_token = -1;
        f.rs[i].target = w->req[i].prompt_len;
        f.rs[i].prefilling = 1;
        f.rs[i].preempt_step = -1;
        f.rs[i].inst = -1;
        if (w->req[i].parent < 0) fleet_push(&f, i, w->req[i].arrival);
    }
    int64_t t0 = cli_now_ns();
    rc = run_loop(&f);
    if (rc) goto out;
    res->wall_s = (double)(cli_now_ns() - t0) * 1e-9;
    for (int32_t i = 0; i < f.n; i++) engine_finish(&f.eng[i]);
    aggregate(&f, inst, res);
    rc = latencies(&f, -1, res);
    for (int32_t i = 0; i < f.n && !rc; i++) {
        rc = latencies(&f, i, &inst[i]);
        inst[i].wall_s = res->wall_s;
        inst[i].hit_rate_max = res->hit_rate_max;
        inst[i].hit_max_tokens = res->hit_max_tokens;
        inst[i].hit_max_query = res->hit_max_query;
    }
    if (rc) goto out;
    if (f.n == 1) { /* the one instance's chart is the run's */
        res->series = inst[0].series;
        res->nseries = inst[0].nseries;
        inst[0].series = NULL;
    } else {
        res->ninst = f.n;
        res->inst = inst;
        inst = NULL;
    }
out:
    if (rc && cfg->progress) fputs("\r\033[K", stderr);
    for (int32_t i = 0; f.eng && i < f.n; i++) engine_destroy(&f.eng[i]);
    if (inst)
        for (int32_t i = 0; i < f.n; i++) free(inst[i].series);
    free(inst);
    free(f.eng);
    free(f.rs);
    free(f.heap);
    return rc;
}

void sim_result_free(sim_result *r) {
    for (int32_t i = 0; i < r->ninst; i++) sim_result_free(&r->inst[i]);
    free(r->inst);
    free(r->series);
    r->inst = NULL;
    r->ninst = 0;
    r->series = NULL;
    r->nseries = 0;
}
