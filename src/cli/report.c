/* Output of `pkv sim`: the comparison table, JSON, and the SVG chart. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "cli/sim.h"

const char *sim_dtype_name(int32_t dtype) {
    switch (dtype) {
    case PKV_F32: return "f32";
    case PKV_F16: return "f16";
    case PKV_BF16: return "bf16";
    case PKV_FP8_MLA656: return "fp8";
    default: return "?";
    }
}

typedef void (*cell_fn)(char *buf, size_t n, const sim_run_desc *r);

#define CELL(name, ...)                                                          \
    static void name(char *b, size_t n, const sim_run_desc *r) {                \
        const sim_result *x = &r->res;                                           \
        const sim_config *c = &r->cfg;                                           \
        (void)x;                                                                 \
        (void)c;                                                                 \
        __VA_ARGS__;                                                             \
    }

static double per_s(double v, double t) { return t > 0 ? v / t : 0; }

CELL(c_block, snprintf(b, n, "%d", c->block_size))
CELL(c_model, if (c->hybrid) snprintf(b, n, "hybrid: %d full + %d window (W %d)", sim_group_layers(c, 0),
                                      sim_group_layers(c, 1), c->window);
     else snprintf(b, n, "full: %d layers", c->layers))
/* hybrid: each group's pool, split for the workload's mean context */
CELL(c_pool, if (x->ngroups) snprintf(b, n, "full %d + window %d (at %d tokens)", x->group_blocks[0],
                                      x->group_blocks[1], x->split_tokens);
     else snprintf(b, n, "%d (%d tokens)", x->num_blocks, x->num_blocks * c->block_size))
/* hybrid: a token's bytes in the full layers, and in the window layers while it is in the window */
CELL(c_dtype, if (c->hybrid) snprintf(b, n, "%s (%lld B/token + %lld in W)", sim_dtype_name(c->kv_dtype),
                                      (long long)sim_token_bytes(c->kv_dtype) * sim_group_layers(c, 0),
                                      (long long)sim_token_bytes(c->kv_dtype) * sim_group_layers(c, 1));
     else snprintf(b, n, "%s (%lld B/token)", sim_dtype_name(c->kv_dtype),
                   (long long)sim_token_bytes(c->kv_dtype) * c->layers))
CELL(c_prefix, if (c->hybrid && c->prefix_cache && !x->window_prefix)
         snprintf(b, n, "on (window group: no prefix caching (library))");
     else snprintf(b, n, "%s", c->prefix_cache ? "on" : "off"))
CELL(c_done, if (x->rejected) snprintf(b, n, "%lld (+%lld rejected)", (long long)x->done, (long long)x->rejected);
     else snprintf(b, n, "%lld", (long long)x->done))
CELL(c_tokens, snprintf(b, n, "%lld", (long long)x->tokens_generated))
CELL(c_simtime, snprintf(b, n, "%.1f", x->sim_time))
CELL(c_tput, snprintf(b, n, "%.0f", per_s((double)x->tokens_generated, x->sim_time)))
CELL(c_rps, snprintf(b, n, "%.2f", per_s((double)x->done, x->sim_time)))
/* Percentiles are NaN when no request finished (or none had two tokens). */
CELL(c_ttft, if (isnan(x->ttft_p50)) snprintf(b, n, "n/a");
     else snprintf(b, n, "%.0f / %.0f", x->ttft_p50 * 1e3, x->ttft_p99 * 1e3))
CELL(c_tpot, if (isnan(x->tpot_p50)) snprintf(b, n, "n/a");
     else snprintf(b, n, "%.1f / %.1f", x->tpot_p50 * 1e3, x->tpot_p99 * 1e3))
CELL(c_e2e, if (isnan(x->e2e_p50)) snprintf(b, n, "n/a");
     else snprintf(b, n, "%.2f", x->e2e_p50))
CELL(c_util, snprintf(b, n, "%.1f%%", x->kv_util * 100))
CELL(c_waste, snprintf(b, n, "%.1f%%", x->waste * 100))
CELL(c_occ, snprintf(b, n, "%.1f%%", x->occupancy * 100))
CELL(c_hit, if (!c->prefix_cache) snprintf(b, n, "- (max %.1f%%)", x->hit_rate_max * 100);
     else snprintf(b, n, "%.1f%% (max %.1f%%)", x->hit_rate * 100, x->hit_rate_max * 100))
CELL(c_fleet, if (c->instances > 1) snprintf(b, n, "%d, %s", c->instances, sim_router_name(c->router));
     else snprintf(b, n, "1"))
CELL(c_balance, snprintf(b, n, "%.2f", x->load_balance))
CELL(c_computed, snprintf(b, n, "%lld", (long long)x->prompt_tokens_computed))
CELL(c_preempt, snprintf(b, n, "%lld", (long long)x->preemptions))
CELL(c_recomp, snprintf(b, n, "%lld", (long long)x->recomputed_tokens))
CELL(c_peak, if (x->ngroups) snprintf(b, n, "full %d (%.0f%%), window %d (%.0f%%)", x->group_peak[0],
                                      100.0 * x->group_peak[0] / (x->group_blocks[0] ? x->group_blocks[0] : 1),
                                      x->group_peak[1],
                                      100.0 * x->group_peak[1] / (x->group_blocks[1] ? x->group_blocks[1] : 1));
     else snprintf(b, n, "%d (%.0f%%)", x->peak_blocks, 100.0 * x->peak_blocks / (x->num_blocks ? x->num_blocks : 1)))
CELL(c_running, snprintf(b, n, "%d", x->peak_running))
CELL(c_evict, snprintf(b, n, "%lld", (long long)x->evictions))
CELL(c_dedup, snprintf(b, n, "%lld", (long long)x->dedups))
CELL(c_cow, snprintf(b, n, "%lld", (long long)x->cow_copies))
CELL(c_forks, snprintf(b, n, "%lld", (long long)x->forks))
CELL(c_steps, snprintf(b, n, "%lld", (long long)x->steps))
CELL(c_lib, snprintf(b, n, "%.2f", x->lib_us_per_step))
CELL(c_calls, snprintf(b, n, "%.1f", x->steps ? (double)x->lib_calls / (double)x->steps : 0.0))
CELL(c_call, snprintf(b, n, "%.1f (+%.0f clock)", x->lib_ns_per_call, x->clock_ns))
CELL(c_wall, snprintf(b, n, "%.2f", x->wall_s))
/* "pool 21.0% + host 14.2% + file 3.1%": the prompt tokens of first admissions
 * each level served. */
static void tier_hits(char *b, size_t n, const sim_run_desc *r) {
    const sim_result *x = &r->res;
    double q = x->query_tokens ? (double)x->query_tokens : 1;
    int64_t pool = x->hit_tokens;
    for (int32_t t = 0; t < r->cfg.ntiers; t++) pool -= x->tier_hit_tokens[t];
    int k = snprintf(b, n, "pool %.1f%%", 100.0 * (double)pool / q);
    for (int32_t t = 0; t < r->cfg.ntiers && k > 0 && (size_t)k < n; t++)
        k += snprintf(b + k, n - (size_t)k, " + %s %.1f%%", sim_tier_name(&r->cfg, t),
                      100.0 * (double)x->tier_hit_tokens[t] / q);
}
CELL(c_tierhit, if (!c->ntiers) snprintf(b, n, "-"); else tier_hits(b, n, r))
static void tier_moves(char *b, size_t n, const sim_run_desc *r) {
    int k = 0;
    b[0] = 0;
    for (int32_t t = 0; t < r->cfg.ntiers && k >= 0 && (size_t)k < n; t++)
        k += snprintf(b + k, n - (size_t)k, "%s%lld / %lld", t ? ", " : "", (long long)r->res.tier_blocks_in[t],
                      (long long)r->res.tier_blocks_out[t]);
}
CELL(c_tiermove, if (!c->ntiers) snprintf(b, n, "-"); else tier_moves(b, n, r))
CELL(c_tiercap, if (!c->ntiers) snprintf(b, n, "-");
     else { int k = 0; b[0] = 0;
            for (int32_t t = 0; t < c->ntiers && k >= 0 && (size_t)k < n; t++)
                k += c->tier_kind[t] == SIM_TIER_REDIS
                         ? snprintf(b + k, n - (size_t)k, "%sredis, shared (%lld indexed)", t ? ", " : "",
                                    (long long)x->tier_capacity[t])
                         : snprintf(b + k, n - (size_t)k, "%s%s %g GiB (%lld)", t ? ", " : "", sim_tier_name(c, t),
                                    c->tier_gib[t], (long long)x->tier_capacity[t]); })
CELL(c_xfer, snprintf(b, n, "%.2f", x->transfer_s))
CELL(c_swaps, if (!c->preempt_swap) snprintf(b, n, "-");
     else snprintf(b, n, "%lld / %lld (%lld recomputed)", (long long)x->swaps_out, (long long)x->swaps_in,
                   (long long)x->swap_fallbacks))
CELL(c_verify, if (!c->verify) snprintf(b, n, "-");
     else snprintf(b, n, "%lld ok, err %.1e", (long long)x->verify_checks, x->verify_max_err))

static const struct row {
    const char *name;
    cell_fn fn;
} rows[] = {
    {"model (layers)", c_model},
    {"block size", c_block},
    {"pool blocks", c_pool},
    {"kv dtype", c_dtype},
    {"prefix cache", c_prefix},
    {"instances, router", c_fleet},
    {"", NULL},
    {"requests done", c_done},
    {"tokens generated", c_tokens},
    {"simulated time (s)", c_simtime},
    {"throughput (tokens/s)", c_tput},
    {"requests/s", c_rps},
    {"TTFT p50 / p99 (ms)", c_ttft},
    {"TPOT p50 / p99 (ms)", c_tpot},
    {"latency p50 (s)", c_e2e},
    {"KV utilization", c_util},
    {"internal waste", c_waste},
    {"pool occupancy", c_occ},
    {"prefix hit rate", c_hit},
    {"tiers (blocks)", c_tiercap},
    {"hits by level", c_tierhit},
    {"tier blocks in / out", c_tiermove},
    {"tier transfer time (s)", c_xfer},
    {"swaps out / in", c_swaps},
    {"load balance (max/mean)", c_balance},
    {"prompt tokens computed", c_computed},
    {"preemptions", c_preempt},
    {"recomputed tokens", c_recomp},
    {"peak blocks", c_peak},
    {"peak running requests", c_running},
    {"evictions", c_evict},
    {"prefix dedups", c_dedup},
    {"copy-on-write copies", c_cow},
    {"forks (n > 1)", c_forks},
    {"steps", c_steps},
    {"library us/step", c_lib},
    {"library calls/step", c_calls},
    {"library ns/call", c_call},
    {"wall time (s)", c_wall},
    {"verify", c_verify},
};

/* The row that shows a knob's value: left out when the sweep header shows it. */
static cell_fn knob_row(const char *key) {
    if (!key) return NULL;
    if (!strcmp(key, "block-size")) return c_block;
    if (!strcmp(key, "pool-blocks")) return c_pool;
    if (!strcmp(key, "kv-dtype")) return c_dtype;
    if (!strcmp(key, "prefix-cache")) return c_prefix;
    if (!strcmp(key, "instances") || !strcmp(key, "router")) return c_fleet;
    if (!strcmp(key, "model")) return c_model;
    return NULL;
}

static int any_hybrid(const sim_run_desc *runs, int nruns) {
    for (int j = 0; j < nruns; j++)
        if (runs[j].cfg.hybrid) return 1;
    return 0;
}

static int any_fleet(const sim_run_desc *runs, int nruns) {
    for (int j = 0; j < nruns; j++)
        if (runs[j].cfg.instances > 1) return 1;
    return 0;
}

/* Per instance of each fleet run: requests, hit rate, TTFT, work. */
static void instance_table(FILE *f, const sim_run_desc *runs, int nruns, const char *sweep_key) {
    for (int j = 0; j < nruns; j++) {
        const sim_result *x = &runs[j].res;
        if (x->ninst < 2) continue;
        if (sweep_key)
            fprintf(f, "\nper instance, %s=%s (%d instances, %s):\n", sweep_key, runs[j].label, x->ninst,
                    sim_router_name(runs[j].cfg.router));
        else
            fprintf(f, "\nper instance (%d instances, %s):\n", x->ninst, sim_router_name(runs[j].cfg.router));
        fprintf(f, "%8s %9s %9s %15s %20s %16s %12s %10s\n", "instance", "routed", "done", "hit rate",
                "TTFT p50 / p99 (ms)", "tokens computed", "peak blocks", "evictions");
        for (int32_t i = 0; i < x->ninst; i++) {
            const sim_result *y = &x->inst[i];
            char ttft[40], hit[24];
            if (isnan(y->ttft_p50)) snprintf(ttft, sizeof ttft, "n/a");
            else snprintf(ttft, sizeof ttft, "%.0f / %.0f", y->ttft_p50 * 1e3, y->ttft_p99 * 1e3);
            if (runs[j].cfg.prefix_cache) snprintf(hit, sizeof hit, "%.1f%%", y->hit_rate * 100);
            else snprintf(hit, sizeof hit, "-");
            fprintf(f, "%8d %9lld %9lld %15s %20s %16lld %12d %10lld\n", i, (long long)y->routed,
                    (long long)y->done, hit, ttft, (long long)y->tokens_computed, y->peak_blocks,
                    (long long)y->evictions);
        }
    }
}

void report_table(FILE *f, const sim_workload *w, const sim_run_desc *runs, int nruns, const char *sweep_key) {
    if (w->mooncake)
        fprintf(f, "pkv sim: %s: %d requests (%d Mooncake lines, %d distinct hash ids of %d tokens), "
                   "%lld prompt + %lld output tokens\n",
                w->source, w->n, w->mooncake, w->distinct_ids, w->trace_block, (long long)w->prompt_tokens,
                (long long)w->output_tokens);
    else
        fprintf(f, "pkv sim: %s: %d requests (%d conversations, %d multi-turn, %d with a shared system prompt, "
                   "%d with n > 1), %lld prompt + %lld output tokens\n",
                w->source, w->n, w->conversations, w->multi_turn, w->with_system_prompt, w->parallel,
                (long long)w->prompt_tokens, (long long)w->output_tokens);
    const sim_config *c = &runs[0].cfg;
    fprintf(f, "scheduler: %d tokens/step, <= %d running, watermark %.0f%%, %s preemption; "
               "cost: %.1f ms + %.0f us/token + KV reads at %.1f TB/s, %d layers",
            c->max_batch_tokens, c->max_seqs, c->watermark * 100, c->preempt_swap ? "swap" : "recompute",
            c->cost_a * 1e3, c->cost_b * 1e6, c->kv_bw * 1e-12, c->layers);
    if (any_hybrid(runs, nruns))
        fprintf(f, "; hybrid: the full layers keep every token, the window layers the last %d, pools split from "
                   "--kv-mem-gib for the workload's mean prompt + output",
                c->window);
    if (c->ntiers) {
        fputs("; tier transfers at", f);
        for (int32_t t = 0; t < c->ntiers; t++)
            fprintf(f, "%s %.3g GB/s (%s)", t ? "," : "", sim_tier_bw(c, t) * 1e-9, sim_tier_name(c, t));
    }
    fputs("\n\n", f);
    int width[65];
    char cell[64][64];
    int namew = 24;
    width[0] = namew;
    for (int j = 0; j < nruns && j < 64; j++) width[j + 1] = 10;
    /* column widths: widest cell of each run */
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        if (!rows[i].fn) continue;
        for (int j = 0; j < nruns && j < 64; j++) {
            char b[64];
            rows[i].fn(b, sizeof b, &runs[j]);
            int l = (int)strlen(b);
            if (l > width[j + 1]) width[j + 1] = l;
        }
    }
    if (sweep_key) {
        fprintf(f, "%-*s", namew, sweep_key);
        for (int j = 0; j < nruns && j < 64; j++) fprintf(f, "  %*s", width[j + 1], runs[j].label);
        fputc('\n', f);
    }
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        if (!rows[i].fn) {
            fputc('\n', f);
            continue;
        }
        if (rows[i].fn == c_verify && !runs[0].cfg.verify) continue;
        if (rows[i].fn == knob_row(sweep_key)) continue;
        if ((rows[i].fn == c_fleet || rows[i].fn == c_balance) && !any_fleet(runs, nruns)) continue;
        if (rows[i].fn == c_model && !any_hybrid(runs, nruns)) continue;
        if ((rows[i].fn == c_tiercap || rows[i].fn == c_tierhit || rows[i].fn == c_tiermove || rows[i].fn == c_xfer) &&
            !runs[0].cfg.ntiers)
            continue;
        if (rows[i].fn == c_swaps && !runs[0].cfg.preempt_swap) continue;
        for (int j = 0; j < nruns && j < 64; j++) rows[i].fn(cell[j], sizeof cell[j], &runs[j]);
        fprintf(f, "%-*s", namew, rows[i].name);
        for (int j = 0; j < nruns && j < 64; j++) fprintf(f, "  %*s", width[j + 1], cell[j]);
        fputc('\n', f);
    }
    instance_table(f, runs, nruns, sweep_key);
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "%.6g", v);
    else fputs("null", f);
}

/* The metrics of one run or one instance (no braces). */
static void json_metrics(FILE *f, const sim_result *x) {
    fprintf(f, "\"requests_done\": %lld, \"rejected\": %lld, \"tokens_generated\": %lld, \"steps\": %lld, "
               "\"prompt_tokens_computed\": %lld, \"preemptions\": %lld, \"recomputed_tokens\": %lld, "
               "\"peak_blocks\": %d, \"evictions\": %lld, \"dedups\": %lld, \"cow_copies\": %lld, \"forks\": %lld, "
               "\"prefix_hit_tokens\": %lld, \"prefix_query_tokens\": %lld, "
               "\"library_calls\": %lld, \"peak_running\": %d",
            (long long)x->done, (long long)x->rejected, (long long)x->tokens_generated, (long long)x->steps,
            (long long)x->prompt_tokens_computed, (long long)x->preemptions,
            (long long)x->recomputed_tokens, x->peak_blocks, (long long)x->evictions, (long long)x->dedups,
            (long long)x->cow_copies, (long long)x->forks, (long long)x->hit_tokens,
            (long long)x->query_tokens, (long long)x->lib_calls, x->peak_running);
    if (x->ngroups)
        fprintf(f, ", \"group_peak_blocks\": [%d, %d], \"group_evictions\": [%lld, %lld]", x->group_peak[0],
                x->group_peak[1], (long long)x->group_evictions[0], (long long)x->group_evictions[1]);
    const struct { const char *k; double v; } d[] = {
        {"sim_time_s", x->sim_time},
        {"throughput_tokens_per_s", per_s((double)x->tokens_generated, x->sim_time)},
        {"requests_per_s", per_s((double)x->done, x->sim_time)},
        {"ttft_p50_s", x->ttft_p50},
        {"ttft_p99_s", x->ttft_p99},
        {"tpot_p50_s", x->tpot_p50},
        {"tpot_p99_s", x->tpot_p99},
        {"latency_p50_s", x->e2e_p50},
        {"kv_utilization", x->kv_util},
        {"internal_waste", x->waste},
        {"pool_occupancy", x->occupancy},
        {"prefix_hit_rate", x->hit_rate},
        {"library_us_per_step", x->lib_us_per_step},
        {"library_ns_per_call", x->lib_ns_per_call},
        {"wall_s", x->wall_s},
        {"clock_overhead_ns", x->clock_ns},
    };
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
        fprintf(f, ", \"%s\": ", d[i].k);
        json_num(f, d[i].v);
    }
    fprintf(f, ", \"prefix_hit_tokens_max\": %lld, \"hit_rate_max\": ", (long long)x->hit_max_tokens);
    json_num(f, x->hit_rate_max);
    int64_t pool = x->hit_tokens;
    for (int t = 0; t < SIM_MAX_TIERS; t++) pool -= x->tier_hit_tokens[t];
    fprintf(f, ", \"pool_hit_tokens\": %lld, \"tier_hit_tokens\": [%lld, %lld, %lld], \"tier_hit_rate\": [",
            (long long)pool, (long long)x->tier_hit_tokens[0], (long long)x->tier_hit_tokens[1],
            (long long)x->tier_hit_tokens[2]);
    for (int t = 0; t < SIM_MAX_TIERS; t++) {
        if (t) fputs(", ", f);
        json_num(f, x->query_tokens ? (double)x->tier_hit_tokens[t] / (double)x->query_tokens : 0);
    }
    fprintf(f, "], \"tier_blocks_in\": [%lld, %lld, %lld], \"tier_blocks_out\": [%lld, %lld, %lld], "
               "\"swaps_out\": %lld, \"swaps_in\": %lld, \"swap_blocks\": %lld, \"swap_fallbacks\": %lld, "
               "\"tier_transfer_s\": ",
            (long long)x->tier_blocks_in[0], (long long)x->tier_blocks_in[1], (long long)x->tier_blocks_in[2],
            (long long)x->tier_blocks_out[0], (long long)x->tier_blocks_out[1], (long long)x->tier_blocks_out[2],
            (long long)x->swaps_out, (long long)x->swaps_in, (long long)x->swap_blocks, (long long)x->swap_fallbacks);
    json_num(f, x->transfer_s);
}

void report_json(FILE *f, const sim_workload *w, const sim_run_desc *runs, int nruns, const char *sweep_key) {
    fputs("{\"workload\": {\"source\": ", f);
    json_str(f, w->source);
    fprintf(f, ", \"requests\": %d, \"conversations\": %d, \"multi_turn\": %d, \"with_system_prompt\": %d, "
               "\"parallel\": %d, \"mooncake_lines\": %d, \"distinct_hash_ids\": %d, \"trace_block\": %d, "
               "\"prompt_tokens\": %lld, \"output_tokens\": %lld},\n",
            w->n, w->conversations, w->multi_turn, w->with_system_prompt, w->parallel, w->mooncake,
            w->distinct_ids, w->trace_block, (long long)w->prompt_tokens, (long long)w->output_tokens);
    fputs(" \"sweep\": ", f);
    if (sweep_key) json_str(f, sweep_key);
    else fputs("null", f);
    fputs(",\n \"runs\": [", f);
    for (int j = 0; j < nruns; j++) {
        const sim_config *c = &runs[j].cfg;
        const sim_result *x = &runs[j].res;
        fputs(j ? ",\n  {" : "\n  {", f);
        fputs("\"label\": ", f);
        if (runs[j].label) json_str(f, runs[j].label);
        else fputs("null", f);
        fprintf(f, ",\n   \"config\": {\"block_size\": %d, \"pool_blocks\": %d, \"kv_dtype\": \"%s\", "
                   "\"bytes_per_token\": %lld, \"layers\": %d, \"prefix_cache\": %s, \"max_batch_tokens\": %d, "
                   "\"max_seqs\": %d, \"watermark\": ",
                c->block_size, x->num_blocks, sim_dtype_name(c->kv_dtype),
                (long long)sim_token_bytes(c->kv_dtype) * c->layers, c->layers,
                c->prefix_cache ? "true" : "false", c->max_batch_tokens, c->max_seqs);
        json_num(f, c->watermark);
        fputs(", \"cost_a_s\": ", f);
        json_num(f, c->cost_a);
        fputs(", \"cost_b_s_per_token\": ", f);
        json_num(f, c->cost_b);
        fputs(", \"kv_bandwidth_bytes_per_s\": ", f);
        json_num(f, c->kv_bw);
        fprintf(f, ", \"verify\": %s, \"instances\": %d, \"router\": \"%s\", \"preempt\": \"%s\", \"tiers\": [",
                c->verify ? "true" : "false", c->instances, sim_router_name(c->router),
                c->preempt_swap ? "swap" : "recompute");
        for (int32_t t = 0; t < c->ntiers; t++) {
            fprintf(f, "%s{\"kind\": \"%s\", \"gib\": ", t ? ", " : "", sim_tier_name(c, t));
            if (c->tier_kind[t] == SIM_TIER_REDIS) fputs("null, \"shared\": true", f);
            else json_num(f, c->tier_gib[t]);
            fprintf(f, ", \"blocks\": %lld, \"bandwidth_bytes_per_s\": ", (long long)x->tier_capacity[t]);
            json_num(f, sim_tier_bw(c, t));
            fprintf(f, ", \"errors\": %lld}", (long long)x->tier_errors[t]);
        }
        fprintf(f, "], \"model\": \"%s\"", c->hybrid ? "hybrid" : "full");
        if (c->hybrid)
            fprintf(f, ", \"window\": %d, \"full_layers\": %d, \"window_layers\": %d, \"group_pool_blocks\": [%d, %d], "
                       "\"split_seq_tokens\": %d, \"window_prefix_cache\": %s",
                    c->window, sim_group_layers(c, 0), sim_group_layers(c, 1), x->group_blocks[0], x->group_blocks[1],
                    x->split_tokens, c->prefix_cache && x->window_prefix ? "true" : "false");
        else
            fputs(", \"window\": null", f);
        fputs("},\n   \"metrics\": {", f);
        json_metrics(f, x);
        if (x->ninst > 1) {
            fputs(", \"load_balance\": ", f);
            json_num(f, x->load_balance);
            fputs(",\n    \"per_instance\": [", f);
            for (int32_t i = 0; i < x->ninst; i++) {
                fprintf(f, "%s{\"instance\": %d, \"routed\": %lld, \"tokens_computed\": %lld, ", i ? ",\n     " : "",
                        i, (long long)x->inst[i].routed, (long long)x->inst[i].tokens_computed);
                json_metrics(f, &x->inst[i]);
                fputc('}', f);
            }
            fputs("]", f);
        }
        if (c->verify) {
            fprintf(f, ", \"verify_checks\": %lld, \"verify_max_abs_err\": ", (long long)x->verify_checks);
            json_num(f, x->verify_max_err);
        }
        fputs("}}", f);
    }

    fputs("\n ]\n}\n", f);
}

/* ---- SVG ---------------------------------------------------------------- */
#define SVG_W 960
#define PANEL_H 330
#define PL 70  /* plot area inside a panel */
#define PR 70
#define PT 52
#define PB 50
#define MAX_POINTS 800

static double nice_step(double range, int ticks) {
    double raw = range / ticks, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
}

static void polyline(FILE *f, const sim_result *x, int which, double x0, double y0, double w, double h,
                     double tmax, double ymax, const char *color, const char *extra) {
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s points=\"", color, extra);
    int64_t n = x->nseries, npts = n < MAX_POINTS ? n : MAX_POINTS;
    for (int64_t i = 0; i < npts; i++) {
        /* each point is the mean of its bucket of steps */
        int64_t a = i * n / npts, b = (i + 1) * n / npts;
        double sum = 0;
        for (int64_t k = a; k < b; k++) {
            const sim_sample *s = &x->series[k];
            sum += which == 0 ? s->used : which == 1 ? s->cached : which == 2 ? s->free_ : s->hit;
        }
        double v = b > a ? sum / (double)(b - a) : 0;
        double t = x->series[b - 1].t;
        fprintf(f, "%.1f,%.1f ", x0 + w * (tmax > 0 ? t / tmax : 0), y0 + h - h * (ymax > 0 ? v / ymax : 0));
    }
    fputs("\"/>\n", f);
}

static void svg_escaped(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '>') fputs("&gt;", f);
        else fputc(*s, f);
    }
}

/* One panel: blocks used / cached / free and the cumulative hit rate over
 * simulated time, at height offset oy. */
static void time_panel(FILE *f, double oy, const sim_result *x, const sim_config *c, const char *sweep_key,
                       const char *label, int inst) {
    static const char *colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"};
    static const char *names[] = {"blocks used", "blocks cached (evictable)", "blocks free", "prefix hit rate (cumulative)"};
    double x0 = PL, y0 = oy + PT, pw = SVG_W - PL - PR, ph = PANEL_H - PT - PB;
    double tmax = x->nseries ? x->series[x->nseries - 1].t : 1;
    if (tmax <= 0) tmax = 1;
    double ymax = x->num_blocks;
    fprintf(f, "<text x=\"%d\" y=\"%.0f\" font-size=\"14\" font-weight=\"bold\">", PL, oy + 20);
    fprintf(f, "pkv sim: block size %d, %d blocks, %s, prefix cache %s", c->block_size, x->num_blocks,
            sim_dtype_name(c->kv_dtype), c->prefix_cache ? "on" : "off");
    if (x->ngroups)
        fprintf(f, ", hybrid (W %d): full %d + window %d blocks, summed", c->window, x->group_blocks[0],
                x->group_blocks[1]);
    if (inst >= 0) fprintf(f, ", instance %d of %d (%s)", inst, c->instances, sim_router_name(c->router));
    if (c->ntiers && c->prefix_cache) {
        char hits[160];
        sim_run_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.cfg = *c;
        rd.res = *x;
        tier_hits(hits, sizeof hits, &rd);
        fprintf(f, "; hits: %s", hits);
    }
    if (sweep_key && label) {
        fprintf(f, " (sweep %s=", sweep_key);
        svg_escaped(f, label);
        fputc(')', f);
    }
    fputs("</text>\n", f);
    /* grid and axes */
    double ys = nice_step(ymax, 5);
    for (double v = 0; v <= ymax + 1e-9; v += ys) {
        double y = y0 + ph - ph * v / ymax;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, y, x0 + pw, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", x0 - 6, y + 4, v);
    }
    for (int p = 0; p <= 100; p += 25) {
        double y = y0 + ph - ph * p / 100.0;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%d%%</text>\n", x0 + pw + 6, y + 4, colors[3], p);
    }
    double ts = nice_step(tmax, 8);
    for (double t = 0; t <= tmax + 1e-9; t += ts) {
        double xx = x0 + pw * t / tmax;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", xx, y0, xx, y0 + ph);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", xx, y0 + ph + 16, t);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", x0, y0, pw, ph);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">simulated time (s)</text>\n", x0 + pw / 2, y0 + ph + 34);
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">blocks</text>\n", x0 - 48, y0 + ph / 2);
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(90)\" text-anchor=\"middle\" fill=\"%s\">hit rate</text>\n",
            x0 + pw + 48, y0 + ph / 2, colors[3]);
    if (x->nseries > 0) {
        for (int k = 0; k < 3; k++) polyline(f, x, k, x0, y0, pw, ph, tmax, ymax, colors[k], "");
        if (c->prefix_cache)
            polyline(f, x, 3, x0, y0, pw, ph, tmax, 1.0, colors[3], " stroke-dasharray=\"5,3\"");
    }
    /* legend: one row between the title and the plot */
    double lx = x0, ly = oy + 38;
    static const double lw[] = {130, 215, 120, 230};
    for (int k = 0; k < 4; k++) {
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", lx,
                ly - 4, lx + 24, ly - 4, colors[k], k == 3 ? " stroke-dasharray=\"5,3\"" : "");
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", lx + 30, ly, names[k]);
        lx += lw[k];
    }
}

#define CAP_H 440

/* Hit rate against cache capacity (Mooncake FAST'25, figure 9): the measured
 * rate per swept capacity and the infinite cache's as a dashed line. The x
 * axis is logarithmic when the capacities span 8x or more. */
static void capacity_chart(FILE *f, const sim_run_desc *runs, int nruns, const char *sweep_key) {
    const char *blue = "#1f77b4", *red = "#d62728";
    double x0 = PL, y0 = PT + 20, pw = SVG_W - PL - PR, ph = CAP_H - PT - 20 - PB - 10;
    double lo = INFINITY, hi = 0, top = 0;
    int gib = !strcmp(sweep_key, "kv-mem-gib");
    for (int j = 0; j < nruns; j++) {
        double v = gib ? runs[j].cfg.kv_mem_gib : runs[j].res.num_blocks;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
        if (runs[j].res.hit_rate > top) top = runs[j].res.hit_rate;
        if (runs[j].res.hit_rate_max > top) top = runs[j].res.hit_rate_max;
    }
    int logx = hi >= 8 * lo;
    if (hi <= lo) hi = lo + 1;
    double ymax = top > 0.5 ? 1.0 : top > 0.25 ? 0.5 : 0.25;
#define CX(v) (x0 + pw * (logx ? (log(v) - log(lo)) / (log(hi) - log(lo)) : ((v) - lo) / (hi - lo)))
#define CY(r) (y0 + ph - ph * (r) / ymax)
    const sim_config *c = &runs[0].cfg;
    fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"14\" font-weight=\"bold\">pkv sim: prefix hit rate against "
               "cache capacity (block size %d, %s, %d layers%s%s)</text>\n",
            PL, c->block_size, sim_dtype_name(c->kv_dtype), c->layers, c->instances > 1 ? ", per instance" : "",
            "");
    for (int p = 0; p <= 4; p++) {
        double r = ymax * p / 4, y = CY(r);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, y, x0 + pw, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.0f%%</text>\n", x0 - 6, y + 4, r * 100);
    }
    for (int j = 0; j < nruns; j++) {
        double v = gib ? runs[j].cfg.kv_mem_gib : runs[j].res.num_blocks, xx = CX(v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", xx, y0, xx, y0 + ph);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", xx, y0 + ph + 16, v);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", x0, y0, pw, ph);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s%s</text>\n", x0 + pw / 2, y0 + ph + 36,
            gib ? "KV cache capacity (GiB" : "KV cache capacity (blocks", logx ? ", log scale)" : ")");
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">prefix hit rate</text>\n",
            x0 - 48, y0 + ph / 2);
    /* the theoretical line (block size fixed along a capacity sweep) */
    double ymx = CY(runs[0].res.hit_rate_max);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\" "
               "stroke-dasharray=\"6,4\"/>\n", x0, ymx, x0 + pw, ymx, red);
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", blue);
    for (int j = 0; j < nruns; j++) {
        double v = gib ? runs[j].cfg.kv_mem_gib : runs[j].res.num_blocks;
        fprintf(f, "%.1f,%.1f ", CX(v), CY(runs[j].res.hit_rate));
    }
    fputs("\"/>\n", f);
    for (int j = 0; j < nruns; j++) {
        double v = gib ? runs[j].cfg.kv_mem_gib : runs[j].res.num_blocks;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", CX(v), CY(runs[j].res.hit_rate), blue);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"%s\">%.1f%%</text>\n", CX(v),
                CY(runs[j].res.hit_rate) - 8, blue, runs[j].res.hit_rate * 100);
    }
    double lx = x0 + 10, ly = y0 + 18;
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n", lx, ly - 4,
            lx + 24, ly - 4, blue);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">measured (first admissions, LRU pool)</text>\n", lx + 30, ly);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\" "
               "stroke-dasharray=\"6,4\"/>\n", lx, ly + 14, lx + 24, ly + 14, red);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">theoretical maximum (infinite cache): %.1f%%</text>\n", lx + 30, ly + 18,
            runs[0].res.hit_rate_max * 100);
#undef CX
#undef CY
}

int report_svg(const char *path, const sim_workload *w, const sim_run_desc *runs, int nruns,
               const char *sweep_key) {
    FILE *f = fopen(path, "w");
    if (!f) return cli_error("--svg %s: cannot open for writing: %s", path, strerror(errno));
    int capacity = sweep_key && (!strcmp(sweep_key, "kv-mem-gib") || !strcmp(sweep_key, "pool-blocks"));
    int panels = 0;
    for (int j = 0; j < nruns; j++) panels += runs[j].res.ninst > 1 ? runs[j].res.ninst : 1;
    int H = capacity ? CAP_H : PANEL_H * panels;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            SVG_W, H, SVG_W, H);
    if (capacity) {
        capacity_chart(f, runs, nruns, sweep_key);
    } else {
        int k = 0;
        for (int j = 0; j < nruns; j++) {
            const sim_result *x = &runs[j].res;
            if (x->ninst > 1)
                for (int32_t i = 0; i < x->ninst; i++)
                    time_panel(f, (double)PANEL_H * k++, &x->inst[i], &runs[j].cfg, sweep_key, runs[j].label, i);
            else
                time_panel(f, (double)PANEL_H * k++, x, &runs[j].cfg, sweep_key, runs[j].label, -1);
        }
    }
    fprintf(f, "<desc>");
    svg_escaped(f, w->source);
    fprintf(f, "</desc>\n</svg>\n");
    if (fclose(f) != 0) return cli_error("--svg %s: write error", path);
    return 0;
}
