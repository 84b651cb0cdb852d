/* `pkv sim`: options, sweeps and output of the serving simulator. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/sim.h"

static const char sim_help[] =
    "usage: pkv sim [options]\n"
    "\n"
    "Simulates a continuous-batching LLM server step by step. Every KV operation is a\n"
    "real pagedkv call (prefix lookup at admission, appends with token ids, prefix\n"
    "registration as blocks fill, forks for n > 1, frees); only the model's compute is\n"
    "replaced by a cost model. Deterministic for a given --seed.\n"
    "\n"
    "workload:\n"
    "  --trace FILE            JSON-lines trace instead of the embedded default, one object\n"
    "                          per line: {\"arrival\": 0.5, \"prompt_len\": 300, \"prefix_group\": 2,\n"
    "                          \"output_len\": 120} or {\"arrival\": 1.0, \"prompt\": [1,2,3],\n"
    "                          \"output_len\": 5}; optional \"prefix_len\" (shared part of a\n"
    "                          group prompt) and \"n\" (parallel samples, 1..4)\n"
    "  --requests N            default workload size (3000)\n"
    "  --rate R                new conversations per second, Poisson (4)\n"
    "  --max-context N         longest prompt + output of a chat (16384)\n"
    "  --seed S                workload seed (1)\n"
    "\n"
    "cache:\n"
    "  --block-size N          tokens per block (64)\n"
    "  --kv-mem-gib G          KV memory budget; blocks = G GiB / (block size * bytes per\n"
    "                          token per layer * layers) (4)\n"
    "  --pool-blocks N         pool size in blocks (overrides --kv-mem-gib)\n"
    "  --kv-dtype T            bf16 | fp8 | f16 | f32: 1152, 656, 1152, 2304 bytes per token\n"
    "                          per layer (MLA, d 576) (bf16)\n"
    "  --layers N              model layers (61, DeepSeek-V3)\n"
    "  --prefix-cache on|off   prefix caching (on)\n"
    "\n"
    "scheduler:\n"
    "  --max-batch-tokens N    token budget of a step: decodes + prefill chunks (2048)\n"
    "  --max-seqs N            running requests at most (256)\n"
    "  --watermark F           fraction of the pool kept available at admission (0.01)\n"
    "  --preempt recompute     preemption policy (swap needs a tier: not available yet)\n"
    "\n"
    "cost model, per step: a + b * tokens + (KV bytes read) / bandwidth\n"
    "  --cost-a-ms A           fixed time per step (12)\n"
    "  --cost-b-us B           time per prefill or decode token (25)\n"
    "  --kv-bw-tbs W           KV read bandwidth, TB/s (3)\n"
    "\n"
    "output:\n"
    "  --sweep KEY=V1,V2,...   run the same workload for each value of KEY and print one\n"
    "                          comparison table; KEY: block-size, pool-blocks, kv-mem-gib,\n"
    "                          kv-dtype, prefix-cache, max-batch-tokens, max-seqs, watermark\n"
    "  --json                  JSON on stdout instead of the table\n"
    "  --svg FILE              SVG chart: blocks used / cached / free and hit rate over time\n"
    "  --verify                host-mode cache (h_kv 1, d 16, bf16) with K/V rows for every\n"
    "                          token; each step attention over the paged cache (oracle) is\n"
    "                          compared with attention over contiguous copies, and the cache\n"
    "                          invariants are checked; exit 1 on a mismatch\n"
    "  --verify-seqs N         sequences checked per step (4)\n"
    "  --verify-fast           with --verify, also compare pkv_attn with the oracle\n"
    "  --no-progress           no progress bar (it is drawn on stderr only when a TTY)\n"
    "\n"
    "exit status: 0 ok, 1 verification mismatch, 2 bad usage or input, 3 library error\n";

static int parse_dtype(const char *s, int32_t *out) {
    if (!strcmp(s, "bf16")) *out = PKV_BF16;
    else if (!strcmp(s, "fp8")) *out = PKV_FP8_MLA656;
    else if (!strcmp(s, "f16")) *out = PKV_F16;
    else if (!strcmp(s, "f32")) *out = PKV_F32;
    else return -1;
    return 0;
}

static int parse_onoff(const char *s, int32_t *out) {
    if (!strcmp(s, "on") || !strcmp(s, "1") || !strcmp(s, "true")) *out = 1;
    else if (!strcmp(s, "off") || !strcmp(s, "0") || !strcmp(s, "false")) *out = 0;
    else return -1;
    return 0;
}

/* Applies KEY=value to cfg. Returns 0, or prints a message and returns EXIT_USAGE. */
static int set_knob(sim_config *c, const char *key, const char *v) {
    int64_t i;
    double d;
    if (!strcmp(key, "block-size")) {
        if (cli_parse_i64(v, 1, 4096, &i)) return cli_error("block-size: '%s' is not an integer in 1..4096", v);
        c->block_size = (int32_t)i;
    } else if (!strcmp(key, "pool-blocks")) {
        if (cli_parse_i64(v, 1, 1 << 30, &i)) return cli_error("pool-blocks: '%s' is not a positive integer", v);
        c->pool_blocks = (int32_t)i;
    } else if (!strcmp(key, "kv-mem-gib")) {
        if (cli_parse_f64(v, 1e-6, 1 << 20, &d)) return cli_error("kv-mem-gib: '%s' is not a positive number", v);
        c->kv_mem_gib = d;
        c->pool_blocks = 0;
    } else if (!strcmp(key, "kv-dtype")) {
        if (parse_dtype(v, &c->kv_dtype)) return cli_error("kv-dtype: '%s' is not bf16, fp8, f16 or f32", v);
    } else if (!strcmp(key, "prefix-cache")) {
        if (parse_onoff(v, &c->prefix_cache)) return cli_error("prefix-cache: '%s' is not on or off", v);
    } else if (!strcmp(key, "max-batch-tokens")) {
        if (cli_parse_i64(v, 1, 1 << 24, &i)) return cli_error("max-batch-tokens: '%s' is not a positive integer", v);
        c->max_batch_tokens = (int32_t)i;
    } else if (!strcmp(key, "max-seqs")) {
        if (cli_parse_i64(v, 1, 1 << 20, &i)) return cli_error("max-seqs: '%s' is not a positive integer", v);
        c->max_seqs = (int32_t)i;
    } else if (!strcmp(key, "watermark")) {
        if (cli_parse_f64(v, 0, 0.5, &d)) return cli_error("watermark: '%s' is not a fraction in [0, 0.5]", v);
        c->watermark = d;
    } else {
        return cli_error("--sweep: unknown key '%s' (block-size, pool-blocks, kv-mem-gib, kv-dtype, "
                         "prefix-cache, max-batch-tokens, max-seqs, watermark)", key);
    }
    return 0;
}

int cmd_sim(int argc, char **argv) {
    sim_config cfg = {
        .block_size = 64, .kv_mem_gib = 4.0, .kv_dtype = PKV_BF16, .layers = 61, .prefix_cache = 1,
        .max_batch_tokens = 2048, .max_seqs = 256, .watermark = 0.01, .cost_a = 12e-3, .cost_b = 25e-6,
        .kv_bw = 3e12, .verify_seqs = 4,
    };
    sim_workload_opts wo = {.requests = 3000, .rate = 4.0, .seed = 1, .max_context = 16384};
    const char *trace = NULL, *svg = NULL, *sweep = NULL;
    int json = 0, no_progress = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int64_t n;
        double d;
        int m;
        if (cli_flag(a, "--help") || cli_flag(a, "-h")) {
            fputs(sim_help, stdout);
            return 0;
        }
        if (cli_flag(a, "--json")) json = 1;
        else if (cli_flag(a, "--verify")) cfg.verify = 1;
        else if (cli_flag(a, "--verify-fast")) cfg.verify = cfg.verify_fast = 1;
        else if (cli_flag(a, "--no-progress")) no_progress = 1;
        else if ((m = cli_opt(argc, argv, &i, "--trace", &v))) { if (m < 0) return EXIT_USAGE; trace = v; }
        else if ((m = cli_opt(argc, argv, &i, "--svg", &v))) { if (m < 0) return EXIT_USAGE; svg = v; }
        else if ((m = cli_opt(argc, argv, &i, "--sweep", &v))) { if (m < 0) return EXIT_USAGE; sweep = v; }
        else if ((m = cli_opt(argc, argv, &i, "--requests", &v))) {
            if (m < 0 || cli_parse_i64(v, 1, 10000000, &n)) return cli_error("--requests: expected an integer in 1..10000000");
            wo.requests = (int32_t)n;
        } else if ((m = cli_opt(argc, argv, &i, "--rate", &v))) {
            if (m < 0 || cli_parse_f64(v, 1e-6, 1e6, &d)) return cli_error("--rate: expected a positive number");
            wo.rate = d;
        } else if ((m = cli_opt(argc, argv, &i, "--max-context", &v))) {
            if (m < 0 || cli_parse_i64(v, 64, 1 << 24, &n)) return cli_error("--max-context: expected an integer >= 64");
            wo.max_context = (int32_t)n;
        } else if ((m = cli_opt(argc, argv, &i, "--seed", &v))) {
            if (m < 0 || cli_parse_i64(v, 0, INT64_MAX, &n)) return cli_error("--seed: expected a non-negative integer");
            wo.seed = (uint64_t)n;
        } else if ((m = cli_opt(argc, argv, &i, "--layers", &v))) {
            if (m < 0 || cli_parse_i64(v, 1, 1000, &n)) return cli_error("--layers: expected an integer in 1..1000");
            cfg.layers = (int32_t)n;
        } else if ((m = cli_opt(argc, argv, &i, "--verify-seqs", &v))) {
            if (m < 0 || cli_parse_i64(v, 1, 4096, &n)) return cli_error("--verify-seqs: expected an integer in 1..4096");
            cfg.verify_seqs = (int32_t)n;
        } else if ((m = cli_opt(argc, argv, &i, "--cost-a-ms", &v))) {
            if (m < 0 || cli_parse_f64(v, 0, 1e6, &d)) return cli_error("--cost-a-ms: expected a number >= 0");
            cfg.cost_a = d * 1e-3;
        } else if ((m = cli_opt(argc, argv, &i, "--cost-b-us", &v))) {
            if (m < 0 || cli_parse_f64(v, 0, 1e9, &d)) return cli_error("--cost-b-us: expected a number >= 0");
            cfg.cost_b = d * 1e-6;
        } else if ((m = cli_opt(argc, argv, &i, "--kv-bw-tbs", &v))) {
            if (m < 0 || cli_parse_f64(v, 1e-6, 1e6, &d)) return cli_error("--kv-bw-tbs: expected a positive number");
            cfg.kv_bw = d * 1e12;
        } else if ((m = cli_opt(argc, argv, &i, "--preempt", &v))) {
            if (m < 0) return EXIT_USAGE;
            if (!strcmp(v, "swap")) return cli_error("--preempt swap needs a storage tier, which pagedkv does not have yet; use recompute");
            if (strcmp(v, "recompute")) return cli_error("--preempt: '%s' is not recompute or swap", v);
        } else {
            static const char *knobs[] = {"block-size", "pool-blocks", "kv-mem-gib", "kv-dtype", "prefix-cache",
                                          "max-batch-tokens", "max-seqs", "watermark"};
            int found = 0;
            for (size_t k = 0; k < sizeof knobs / sizeof knobs[0] && !found; k++) {
                char name[40];
                snprintf(name, sizeof name, "--%s", knobs[k]);
                if ((m = cli_opt(argc, argv, &i, name, &v))) {
                    if (m < 0) return EXIT_USAGE;
                    found = 1;
                    int rc = set_knob(&cfg, knobs[k], v);
                    if (rc) return rc;
                }
            }
            if (!found) return cli_error("sim: unknown option '%s' (see pkv sim --help)", a);
        }
    }
    if (cfg.verify && cfg.kv_dtype != PKV_BF16)
        return cli_error("--verify uses its own small bf16 heads; --kv-dtype only sizes the pool and is ignored, leave it out");
    /* the sweep: KEY=V1,V2,... */
    char key[40] = {0};
    char *values = NULL;
    char *vals[64];
    int nvals = 0;
    if (sweep) {
        const char *eq = strchr(sweep, '=');
        if (!eq || eq == sweep || (size_t)(eq - sweep) >= sizeof key || !eq[1])
            return cli_error("--sweep: expected KEY=V1,V2,... (e.g. block-size=16,64,256)");
        memcpy(key, sweep, (size_t)(eq - sweep));
        values = strdup(eq + 1);
        if (!values) return cli_error("out of memory");
        for (char *p = values, *tok; (tok = strsep(&p, ",")) != NULL;) {
            if (!*tok) { free(values); return cli_error("--sweep: empty value in '%s'", sweep); }
            if (nvals == 64) { free(values); return cli_error("--sweep: at most 64 values"); }
            vals[nvals++] = tok;
        }
    }
    sim_workload w;
    int rc = trace ? workload_trace(trace, wo.seed, &w) : workload_default(&wo, &w);
    if (rc) {
        free(values);
        if (rc == EXIT_LIB) cli_error("out of memory generating the workload");
        return rc;
    }
    int nruns = sweep ? nvals : 1;
    sim_run_desc *runs = calloc((size_t)nruns, sizeof *runs);
    if (!runs) { free(values); workload_free(&w); return cli_error("out of memory"); }
    int tty = !no_progress && isatty(2);
    char label[64];
    for (int j = 0; j < nruns && rc == 0; j++) {
        runs[j].cfg = cfg;
        if (sweep) {
            runs[j].label = vals[j];
            rc = set_knob(&runs[j].cfg, key, vals[j]);
            if (rc) break;
        }
        if (runs[j].cfg.verify && runs[j].cfg.kv_dtype != PKV_BF16) {
            rc = cli_error("--verify cannot sweep kv-dtype");
            break;
        }
        snprintf(label, sizeof label, "%s%s%s", sweep ? key : "sim", sweep ? "=" : "", sweep ? vals[j] : "");
        runs[j].cfg.progress = tty;
        runs[j].cfg.progress_label = label;
        rc = sim_run(&w, &runs[j].cfg, &runs[j].res);
        runs[j].cfg.progress_label = NULL;
    }
    if (rc == 0 || rc == EXIT_CHECK) {
        int done = rc == 0 ? nruns : 0;
        if (done) {
            if (json) report_json(stdout, &w, runs, nruns, sweep ? key : NULL);
            else report_table(stdout, &w, runs, nruns, sweep ? key : NULL);
            if (svg) rc = report_svg(svg, &w, runs, nruns, sweep ? key : NULL);
        }
    }
    for (int j = 0; j < nruns; j++) sim_result_free(&runs[j].res);
    free(runs);
    free(values);
    workload_free(&w);
    return rc;
}
