/* The serving simulator behind `pkv sim`: workload (workload.c), scheduler
 * (sched.c), attention verification (verify.c), output (report.c), options and
 * sweeps (sim.c). */
#ifndef PKV_CLI_SIM_H
#define PKV_CLI_SIM_H

#include <stdint.h>
#include <stdio.h>

#include "cli/cli.h"

#define SIM_VOCAB 32000
#define SIM_MAX_SAMPLES 4
#define SIM_MAX_TIERS 3

/* One request. A follow-up turn of a chat (parent >= 0) arrives `arrival`
 * seconds (think time) after its parent finished; others at `arrival`.
 * The prompt's token ids are either explicit (prompt != NULL) or synthesized
 * from Mooncake hash ids (prompt == NULL): token at position p is
 * SIM_VOCAB + ids[p / tblock] * tblock + p % tblock, where ids are the trace's
 * hash ids renumbered densely in order of first appearance. That map is
 * injective (equal hash ids give equal tokens, different ones never collide,
 * and none collides with an output token, all < SIM_VOCAB), and nothing is
 * expanded beyond what a running request needs. */
typedef struct sim_request {
    double arrival;
    int32_t parent;       /* previous turn, or -1 */
    int32_t next;         /* next turn, or -1 */
    int32_t prompt_len, output_len, n_samples;
    int32_t group;        /* system-prompt / prefix group, or -1 */
    int32_t *prompt;      /* token ids [prompt_len] (owned by the workload), or NULL */
    const int32_t *ids;   /* dense block ids [ceil(prompt_len / tblock)] when prompt is NULL */
    int32_t tblock;       /* tokens per id (--trace-block) */
    uint64_t out_salt;    /* output token i of sample s: sim_out_token(salt, s, i) */
} sim_request;

typedef struct sim_workload {
    sim_request *req;
    int32_t n, cap;
    int32_t conversations, with_system_prompt, multi_turn, parallel;
    int32_t mooncake;     /* requests read from Mooncake lines */
    int32_t distinct_ids; /* distinct hash ids of those lines */
    int32_t trace_block;
    int64_t prompt_tokens, output_tokens;
    int32_t *ids;         /* every Mooncake line's dense ids, concatenated */
    int64_t nids, ids_cap;
    char source[256];     /* "default workload" or the trace path */
} sim_workload;

typedef struct sim_workload_opts {
    int32_t requests;     /* requests to generate */
    double rate;          /* new conversations per second (Poisson) */
    uint64_t seed;
    int32_t max_context;  /* prompts are kept below this */
} sim_workload_opts;

static inline int32_t sim_out_token(uint64_t salt, int32_t sample, int32_t i) {
    return (int32_t)(cli_mix(salt, (uint64_t)sample, (uint64_t)i, 0x6f7574) % SIM_VOCAB);
}

/* Generates the embedded default workload. Returns 0, or EXIT_LIB on out of memory. */
int workload_default(const sim_workload_opts *o, sim_workload *w);
/* Reads a JSON-lines trace (pkv lines and Mooncake lines, told apart by their
 * keys); trace_block: tokens per Mooncake hash id. Errors print "--trace
 * PATH: reason" or "--trace PATH:LINE: column C: reason" and return EXIT_USAGE
 * (EXIT_LIB when out of memory). */
int workload_trace(const char *path, uint64_t seed, int32_t trace_block, sim_workload *w);
void workload_free(sim_workload *w);

/* Token id at position pos of sample s of request r. */
static inline int32_t sim_token(const sim_request *r, int32_t s, int32_t pos) {
    if (pos >= r->prompt_len) return sim_out_token(r->out_salt, s, pos - r->prompt_len);
    if (r->prompt) return r->prompt[pos];
    return SIM_VOCAB + r->ids[pos / r->tblock] * r->tblock + pos % r->tblock;
}
/* Tokens [start, start + n) of sample s of request r into out. */
void sim_tokens(const sim_request *r, int32_t s, int32_t start, int32_t n, int32_t *out);

/* Prefix hits of an infinite cache of block_size under the library's rules:
 * requests in trace order; each finds the longest chain of full blocks that an
 * earlier request computed (its prompt, and the output a chat's next turn
 * reuses) and a fully cached prompt still computes its last token. Sets
 * *hit_tokens and *query_tokens (the prompt tokens). Returns 0 or EXIT_LIB. */
int workload_hit_max(const sim_workload *w, int32_t block_size, int64_t *hit_tokens, int64_t *query_tokens);

typedef struct sim_config {
    int32_t block_size;
    int32_t pool_blocks;      /* 0: from kv_mem_gib */
    double kv_mem_gib;
    int32_t kv_dtype;         /* pkv_dtype */
    int32_t layers;
    int32_t prefix_cache;     /* 0/1 */
    int32_t max_batch_tokens; /* token budget per step (prefill chunks + decodes) */
    int32_t max_seqs;         /* running sequences */
    double watermark;         /* fraction of the pool kept free at admission */
    /* cost model (seconds): step = a + b * tokens + c * context tokens read */
    double cost_a, cost_b, kv_bw;  /* kv_bw bytes/s: c = bytes per token (all layers) / kv_bw */
    int32_t verify;           /* run attention checks each step */
    int32_t verify_seqs;      /* sequences checked per step */
    int32_t verify_fast;      /* also compare pkv_attn (when available) */
    int32_t progress;         /* progress bar on stderr */
    const char *progress_label;
    int32_t instances;        /* engine instances behind the router (1) */
    /* tiers below each instance's pool (--tier): host memory or a file tier; in
     * metadata mode both are tiers of slots (the sim holds no KV bytes), told
     * apart by their bandwidth in the cost model. A Redis tier (one at most) is
     * a real one, shared by every instance: the caches then run in host mode
     * with tiny rows (or --verify's), and the other tiers hold those rows. */
    int32_t ntiers;
    int32_t tier_kind[SIM_MAX_TIERS];  /* sim_tier_kind */
    double tier_gib[SIM_MAX_TIERS];    /* host and file tiers */
    char redis_url[512];               /* the Redis tier's url */
    char redis_prefix[65];             /* its key prefix ("": a fresh one per run) */
    double host_bw, ssd_bw, net_bw;   /* bytes/s of host (PCIe), file (SSD) and Redis (network) transfers */
    int32_t preempt_swap;     /* --preempt swap: preempted requests swap to tier 0 */
    int32_t router;           /* sim_router */
    /* --hybrid: a Gemma-3-like model, per 6 layers 1 full-attention and 5
     * sliding-window layers of `window` tokens, as two KV groups (hybrid.c) */
    int32_t hybrid;
    int32_t window;
} sim_config;

/* Groups of a hybrid model: group 0 full attention, group 1 sliding window. */
#define SIM_MAX_GROUPS 2
/* Layers of group g (0: full, 1: window) of cfg's hybrid model: the full
 * group has ceil(layers / 6), the window group the rest. */
static inline int32_t sim_group_layers(const sim_config *cfg, int32_t g) {
    int32_t full = (cfg->layers + 5) / 6;
    return g == 0 ? full : cfg->layers - full;
}

enum sim_tier_kind { SIM_TIER_HOST = 0, SIM_TIER_FILE = 1, SIM_TIER_REDIS = 2 };
/* "host", "file" or "redis", and the transfer bandwidth (bytes/s) of tier t. */
const char *sim_tier_name(const sim_config *cfg, int32_t t);
double sim_tier_bw(const sim_config *cfg, int32_t t);
/* 1 when cfg's caches run in host mode (--verify, or a Redis tier). */
int sim_host_mode(const sim_config *cfg);

/* How a fleet (instances > 1) sends each arriving request to an instance. */
enum sim_router {
    SIM_ROUTER_ROUND_ROBIN = 0, /* instance k % N for the k-th arrival */
    SIM_ROUTER_LEAST_LOADED,    /* fewest unfinished requests */
    SIM_ROUTER_PREFIX_AWARE     /* most of the prompt cached, among the instances whose load is
                                   at most the least load + max(2, least load / 4) */
};
const char *sim_router_name(int32_t router);

/* The one place the simulator reads a cache's counters. */
int sim_cache_stats(pkv_cache *cache, pkv_stats *out);
/* Estimated bytes of host memory a cache of cfg (per instance) needs. */
double sim_cache_bytes(const sim_config *cfg);

/* Bytes of one token of one layer for the simulated model (DeepSeek-V3-like
 * MLA: d 576): 1152 bf16/f16, 2304 f32, 656 FP8. */
int64_t sim_token_bytes(int32_t kv_dtype);
/* Blocks of tier t of cfg (its GiB over the bytes of one block, all layers). */
int64_t sim_tier_blocks(const sim_config *cfg, int32_t t);
/* Pool blocks for cfg (pool_blocks or the memory budget). Hybrid: an upper
 * bound of both groups' blocks together (the budget in blocks of the smaller
 * group's layers), for the memory check; the split comes with the workload. */
int32_t sim_pool_blocks(const sim_config *cfg);

/* One sample of the cache over time (one per step, for the SVG). */
typedef struct sim_sample {
    float t, used, cached, free_, hit;
} sim_sample;

typedef struct sim_result {
    int32_t num_blocks;
    int64_t steps, done, rejected, tokens_generated, prompt_tokens_computed;
    double sim_time;                 /* seconds */
    double ttft_p50, ttft_p99, tpot_p50, tpot_p99, e2e_p50;   /* seconds */
    double kv_util, waste, occupancy; /* step averages */
    double hit_rate;                 /* prefix hit tokens / prompt tokens, first admissions */
    int64_t hit_tokens, query_tokens;
    double hit_rate_max;             /* an infinite cache's (workload_hit_max) */
    int64_t hit_max_tokens, hit_max_query;
    int64_t routed;                  /* requests routed to this instance */
    int64_t tokens_computed;         /* prefill + decode tokens */
    double load_balance;             /* fleet: max / mean tokens computed per instance */
    int32_t ninst;                   /* fleet: per-instance results in inst[0..ninst) */
    struct sim_result *inst;
    int64_t preemptions, recomputed_tokens, evictions, cow_copies, forks, dedups;
    /* tiers: prompt tokens of first admissions served by each tier (the rest of
     * hit_tokens came from the pool), blocks moved to and from it, its capacity */
    int64_t tier_hit_tokens[SIM_MAX_TIERS], tier_blocks_in[SIM_MAX_TIERS], tier_blocks_out[SIM_MAX_TIERS];
    int64_t tier_capacity[SIM_MAX_TIERS];
    int64_t tier_errors[SIM_MAX_TIERS];  /* backend calls that failed (a Redis tier that is down) */
    int64_t swaps_out, swaps_in, swap_blocks, swap_fallbacks; /* swap fallbacks: recomputed instead */
    double transfer_s;               /* time the tier transfers added to steps */
    int32_t peak_blocks;
    int64_t lib_calls;
    double lib_us_per_step, lib_ns_per_call, wall_s;
    double clock_ns;                 /* clock_gettime overhead subtracted per call */
    int32_t peak_running;            /* most requests running at once (a fleet: in one instance) */
    /* hybrid: each group's pool (0 full, 1 window), split from --kv-mem-gib by
     * pkv_groups_blocks_for_bytes for split_tokens (the workload's mean
     * prompt + output, rounded up); num_blocks is their sum, peak_blocks the
     * sum of their peaks */
    int32_t ngroups;
    int32_t group_blocks[SIM_MAX_GROUPS], group_peak[SIM_MAX_GROUPS];
    int64_t group_evictions[SIM_MAX_GROUPS];
    int32_t split_tokens;
    int32_t window_prefix;           /* 1: the window group has prefix caching (the library allows it) */
    int64_t verify_checks;
    double verify_max_err, verify_fast_max_err;
    sim_sample *series;
    int64_t nseries;
} sim_result;

/* Runs the workload through cfg (cfg->instances engines behind cfg->router,
 * each with its own cache). res->hit_max_* are kept (set them before). Returns
 * 0; EXIT_CHECK when --verify found a mismatch; EXIT_LIB (message printed) on
 * an unexpected library error. */
int sim_run(const sim_workload *w, const sim_config *cfg, sim_result *res);
void sim_result_free(sim_result *r);

/* ---- verify.c: real attention over the paged cache ---- */
typedef struct sim_verify sim_verify;
#define VERIFY_H_KV 1
#define VERIFY_H_Q 2
#define VERIFY_D 16
#define VERIFY_DV 16
/* K row (d values) and V row (dv values) of token tok at position pos. */
void verify_rows(int32_t tok, int32_t pos, float *k, float *v);
int verify_create(int32_t max_ctx, sim_verify **out);
void verify_destroy(sim_verify *v);
/* Checks attention over seqs (with tokens given by the callback) against the
 * contiguous recomputation. Returns 0, EXIT_CHECK (message printed) or EXIT_LIB. */
typedef int32_t (*verify_token_fn)(void *ctx, int32_t i, int32_t pos);
int verify_step(sim_verify *v, pkv_cache *cache, const pkv_seq *seqs, int32_t nseq,
                verify_token_fn tok, void *ctx, int fast, double *max_err, double *max_err_fast);

/* ---- report.c ---- */
typedef struct sim_run_desc {
    const char *label;   /* sweep value, or NULL */
    sim_config cfg;
    sim_result res;
} sim_run_desc;
void report_table(FILE *f, const sim_workload *w, const sim_run_desc *runs, int nruns,
                  const char *sweep_key);
void report_json(FILE *f, const sim_workload *w, const sim_run_desc *runs, int nruns,
                 const char *sweep_key);
int report_svg(const char *path, const sim_workload *w, const sim_run_desc *runs, int nruns,
               const char *sweep_key);
const char *sim_dtype_name(int32_t dtype);

#endif
