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

/* One request. A follow-up turn of a chat (parent >= 0) arrives `arrival`
 * seconds (think time) after its parent finished; others at `arrival`. */
typedef struct sim_request {
    double arrival;
    int32_t parent;       /* previous turn, or -1 */
    int32_t next;         /* next turn, or -1 */
    int32_t prompt_len, output_len, n_samples;
    int32_t group;        /* system-prompt / prefix group, or -1 */
    int32_t *prompt;      /* token ids [prompt_len] (owned by the workload) */
    uint64_t out_salt;    /* output token i of sample s: sim_out_token(salt, s, i) */
} sim_request;

typedef struct sim_workload {
    sim_request *req;
    int32_t n, cap;
    int32_t conversations, with_system_prompt, multi_turn, parallel;
    int64_t prompt_tokens, output_tokens;
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
/* Reads a JSON-lines trace. Errors print "path:LINE: message" and return EXIT_USAGE. */
int workload_trace(const char *path, uint64_t seed, sim_workload *w);
void workload_free(sim_workload *w);

/* Token id at position pos of sample s of request r. */
static inline int32_t sim_token(const sim_request *r, int32_t s, int32_t pos) {
    return pos < r->prompt_len ? r->prompt[pos] : sim_out_token(r->out_salt, s, pos - r->prompt_len);
}

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
} sim_config;

/* Bytes of one token of one layer for the simulated model (DeepSeek-V3-like
 * MLA: d 576): 1152 bf16/f16, 2304 f32, 656 FP8. */
int64_t sim_token_bytes(int32_t kv_dtype);
/* Pool blocks for cfg (pool_blocks or the memory budget). */
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
    double hit_rate;                 /* prefix hit tokens / tokens looked up */
    int64_t hit_tokens, query_tokens;
    int64_t preemptions, recomputed_tokens, evictions, cow_copies, forks, dedups;
    int32_t peak_blocks;
    int64_t lib_calls;
    double lib_us_per_step, lib_ns_per_call, wall_s;
    double clock_ns;                 /* clock_gettime overhead subtracted per call */
    int64_t verify_checks;
    double verify_max_err, verify_fast_max_err;
    sim_sample *series;
    int64_t nseries;
} sim_result;

/* Runs the workload through cfg. Returns 0; EXIT_CHECK when --verify found a
 * mismatch; EXIT_LIB (message printed) on an unexpected library error. */
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
