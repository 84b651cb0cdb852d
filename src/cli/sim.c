/* `pkv sim`: options, sweeps and output of the serving simulator. */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/sim.h"

#define MAX_TIER_GIB 1048576.0

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
    "                          group prompt) and \"n\" (parallel samples, 1..4); or a Mooncake\n"
    "                          line {\"timestamp\": 27482 (ms), \"input_length\": 6955,\n"
    "                          \"output_length\": 52, \"hash_ids\": [46, 47, ...]} (one id per\n"
    "                          --trace-block prompt tokens; equal ids, equal tokens)\n"
    "  --trace-block N         prompt tokens per Mooncake hash id, 1..65536 (512)\n"
    "  --requests N            default workload size, 1..10000000 (3000)\n"
    "  --rate R                new conversations per second, Poisson (4)\n"
    "  --max-context N         longest prompt + output of a chat (16384)\n"
    "  --seed S                workload seed (1)\n"
    "\n"
    "cache:\n"
    "  --block-size N          tokens per block (64)\n"
    "  --kv-mem-gib G          KV memory budget per instance; blocks = G GiB / (block size *\n"
    "                          bytes per token per layer * layers) (4)\n"
    "  --pool-blocks N         pool size in blocks per instance, instead of --kv-mem-gib\n"
    "  --kv-dtype T            bf16 | fp8 | f16 | f32: 1152, 656, 1152, 2304 bytes per token\n"
    "                          per layer (MLA, d 576) (bf16)\n"
    "  --layers N              model layers (61, DeepSeek-V3)\n"
    "  --prefix-cache on|off   prefix caching (on)\n"
    "  --hybrid                a Gemma-3-like hybrid model: of the --layers L, ceil(L/6) full-\n"
    "                          attention layers and L - ceil(L/6) sliding-window layers (L >= 2),\n"
    "                          as two KV groups (pkv_groups), each a pool of blocks of its layers;\n"
    "                          --kv-mem-gib is split between them (pkv_groups_blocks_for_bytes) so\n"
    "                          both run out together at the workload's mean prompt + output; a\n"
    "                          window layer keeps and reads only the last W tokens. Prefix\n"
    "                          caching in the window group when the library allows it (a lookup\n"
    "                          hits the shorter of the groups' hits). Not with --pool-blocks,\n"
    "                          --tier, --preempt swap or --verify\n"
    "  --window W              the hybrid model's sliding window, tokens, 1..16777216 (1024)\n"
    "\n"
    "scheduler:\n"
    "  --max-batch-tokens N    token budget of a step: decodes + prefill chunks (2048)\n"
    "  --max-seqs N            running requests at most (256)\n"
    "  --watermark F           fraction of the pool kept available at admission (0.01)\n"
    "  --preempt P             recompute (the preempted request's blocks are freed and its\n"
    "                          tokens computed again) or swap (its sequence moves to tier 0\n"
    "                          and back; needs --tier; n > 1 requests recompute) (recompute)\n"
    "\n"
    "tiers (below each instance's pool; the library runs in metadata mode, so a tier is a\n"
    "set of slots and the simulator pays for the transfers the library lists):\n"
    "  --tier host:GIB         a host-memory tier of GIB GiB (given again: the next tier down;\n"
    "                          at most 3)\n"
    "  --tier file:DIR:GIB     a file tier (local SSD, 3FS) of GIB GiB; DIR must exist. Simulated\n"
    "                          as a tier of slots at --ssd-bw-gbs (no KV bytes are written)\n"
    "  --tier redis://HOST:PORT   a Redis tier shared by all the instances (also\n"
    "                          redis+cluster://HOST:PORT,...; a pkv built with make REDIS=1): a\n"
    "                          real one, so the caches run in host mode with tiny rows (--verify:\n"
    "                          its rows) and every instance finds the blocks the others stored;\n"
    "                          as tier 0 it is written through at registration, below a host\n"
    "                          tier it takes that tier's demotions. Each run uses its own keys\n"
    "                          (pkvsim:PID:...) unless --redis-prefix is given; the server's\n"
    "                          maxmemory bounds them\n"
    "  --redis-prefix P        key prefix of the Redis tier, 1..64 bytes: runs (and pkv processes)\n"
    "                          given the same prefix share their blocks (a second run of a\n"
    "                          workload is served from what the first stored)\n"
    "  --host-bw-gbs G         host tier transfer bandwidth, GB/s (25: PCIe 5 x16)\n"
    "  --ssd-bw-gbs G          file tier transfer bandwidth, GB/s (5: one NVMe SSD)\n"
    "  --net-bw-gbs G          Redis tier transfer bandwidth, GB/s (12.5: 100 Gb/s)\n"
    "\n"
    "cost model, per step: a + b * tokens + (KV bytes read) / bandwidth + tier transfers\n"
    "  --cost-a-ms A           fixed time per step (12)\n"
    "  --cost-b-us B           time per prefill or decode token (25)\n"
    "  --kv-bw-tbs W           KV read bandwidth, TB/s (3)\n"
    "\n"
    "fleet:\n"
    "  --instances N           engine instances, each with its own pool, 1..256 (1)\n"
    "  --router R              round-robin; least-loaded (fewest unfinished requests);\n"
    "                          prefix-aware (the longest cached prefix among the instances\n"
    "                          whose load is at most the least + max(2, least/4))\n"
    "                          (round-robin)\n"
    "\n"
    "output:\n"
    "  --sweep KEY=V1,V2,...   run the same workload for each value of KEY and print one\n"
    "                          comparison table; KEY: block-size, pool-blocks, kv-mem-gib,\n"
    "                          kv-dtype, prefix-cache, max-batch-tokens, max-seqs, watermark,\n"
    "                          instances, router, model (full or hybrid: --hybrid's model\n"
    "                          against all layers full attention)\n"
    "  --json                  JSON on stdout instead of the table\n"
    "  --svg FILE              SVG chart: blocks used / cached / free and hit rate over time;\n"
    "                          with --sweep kv-mem-gib or pool-blocks, the hit rate against\n"
    "                          capacity and the theoretical maximum (an infinite cache)\n"
    "  --verify                host-mode cache (h_kv 1, d 16, bf16) with K/V rows for every\n"
    "                          token; each step attention over the paged cache (oracle) is\n"
    "                          compared with attention over contiguous copies, and the cache\n"
    "                          invariants are checked; exit 1 on a mismatch\n"
    "  --verify-seqs N         sequences checked per step (4)\n"
    "  --verify-fast           with --verify, also compare pkv_attn with the oracle\n"
    "  --no-progress           no progress bar (it is drawn on stderr only when a TTY)\n"
    "\n"
    "The prefix hit rate counts each request's first admission; \"max\" beside it is the\n"
    "hit rate of an infinite cache under the same rules (full blocks only, the last prompt\n"
    "token always computed), requests in trace order.\n"
    "\n"
    "An option given twice, a knob both given and swept, or an option that has no effect\n"
    "(--requests with --trace, --verify-seqs without --verify, ...) is an error.\n"
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

static int parse_router(const char *s, int32_t *out) {
    for (int32_t r = SIM_ROUTER_ROUND_ROBIN; r <= SIM_ROUTER_PREFIX_AWARE; r++)
        if (!strcmp(s, sim_router_name(r))) {
            *out = r;
            return 0;
        }
    return -1;
}

/* --tier host:GIB, file:DIR:GIB, redis://... or redis+cluster://... into tier t of c. */
static int parse_tier(const char *v, sim_config *c, int32_t t) {
    double gib;
    const char *num;
    if (!strncmp(v, "redis://", 8) || !strncmp(v, "redis+cluster://", 16)) {
        for (int32_t u = 0; u < t; u++)
            if (c->tier_kind[u] == SIM_TIER_REDIS) return cli_error("--tier %s: at most one Redis tier", v);
        if (strlen(v) >= sizeof c->redis_url) return cli_error("--tier %s: url too long", v);
        /* Checked now, not after the work: the url's form, and a pkv built with the Redis tier. */
        static const uint8_t key[16];
        pkv_tier_backend be;
        char detail[256] = "";
        int st = pkv_tier_redis_open(v, key, NULL, 0, &be, detail);
        if (st == PKV_ERR_MODE)
            return cli_error("--tier %s: this pkv was built without the Redis tier (build it with make REDIS=1)", v);
        if (st != PKV_OK) return cli_error("--tier %s: %s%s%s", v, pkv_strerror(st), *detail ? ": " : "", detail);
        if (be.close) be.close(be.ctx);
        snprintf(c->redis_url, sizeof c->redis_url, "%s", v);
        c->tier_kind[t] = SIM_TIER_REDIS;
        return 0;
    }
    if (!strncmp(v, "host:", 5)) {
        c->tier_kind[t] = SIM_TIER_HOST;
        num = v + 5;
    } else if (!strncmp(v, "file:", 5) && (num = strrchr(v + 5, ':')) != NULL && num > v + 5) {
        char dir[4096];
        size_t len = (size_t)(num - (v + 5));
        if (len >= sizeof dir) return cli_error("--tier %s: directory name too long", v);
        memcpy(dir, v + 5, len);
        dir[len] = 0;
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return cli_error("--tier %s: %s is not a directory", v, dir);
        c->tier_kind[t] = SIM_TIER_FILE;
        num++;
    } else {
        return cli_error("--tier: '%s' is not host:GIB, file:DIR:GIB or redis://HOST:PORT", v);
    }
    if (cli_parse_f64(num, 1e-6, MAX_TIER_GIB, &gib))
        return cli_error("--tier %s: '%s' is not a number of GiB in 1e-06..%.0f", v, num, MAX_TIER_GIB);
    c->tier_gib[t] = gib;
    return 0;
}

#define MAX_POOL_BLOCKS (1 << 30)
#define MAX_KV_GIB 1048576.0
#define MAX_INSTANCES 256

/* The knobs of the cache, scheduler and fleet: options, and (without the
 * dashes) sweep keys. */
static const char *const knob_opts[] = {"--block-size", "--pool-blocks", "--kv-mem-gib", "--kv-dtype",
                                        "--prefix-cache", "--max-batch-tokens", "--max-seqs", "--watermark",
                                        "--instances", "--router"};
#define NKNOBS ((int)(sizeof knob_opts / sizeof knob_opts[0]))

/* Applies KEY=value to cfg. Returns 0, or prints a message and returns EXIT_USAGE. */
static int set_knob(sim_config *c, const char *key, const char *v) {
    int64_t i;
    double d;
    if (!strcmp(key, "block-size")) {
        if (cli_parse_i64(v, 1, 4096, &i)) return cli_error("block-size: '%s' is not an integer in 1..4096", v);
        c->block_size = (int32_t)i;
    } else if (!strcmp(key, "pool-blocks")) {
        if (cli_parse_i64(v, 1, MAX_POOL_BLOCKS, &i))
            return cli_error("pool-blocks: '%s' is not an integer in 1..%d", v, MAX_POOL_BLOCKS);
        c->pool_blocks = (int32_t)i;
    } else if (!strcmp(key, "kv-mem-gib")) {
        if (cli_parse_f64(v, 1e-6, MAX_KV_GIB, &d))
            return cli_error("kv-mem-gib: '%s' is not a number of GiB in 1e-06..%.0f", v, MAX_KV_GIB);
        c->kv_mem_gib = d;
        c->pool_blocks = 0;
    } else if (!strcmp(key, "kv-dtype")) {
        if (parse_dtype(v, &c->kv_dtype)) return cli_error("kv-dtype: '%s' is not bf16, fp8, f16 or f32", v);
    } else if (!strcmp(key, "prefix-cache")) {
        if (parse_onoff(v, &c->prefix_cache)) return cli_error("prefix-cache: '%s' is not on or off", v);
    } else if (!strcmp(key, "max-batch-tokens")) {
        if (cli_parse_i64(v, 1, 1 << 24, &i)) return cli_error("max-batch-tokens: '%s' is not an integer in 1..%d", v, 1 << 24);
        c->max_batch_tokens = (int32_t)i;
    } else if (!strcmp(key, "max-seqs")) {
        if (cli_parse_i64(v, 1, 1 << 20, &i)) return cli_error("max-seqs: '%s' is not an integer in 1..%d", v, 1 << 20);
        c->max_seqs = (int32_t)i;
    } else if (!strcmp(key, "watermark")) {
        if (cli_parse_f64(v, 0, 0.5, &d)) return cli_error("watermark: '%s' is not a fraction in [0, 0.5]", v);
        c->watermark = d;
    } else if (!strcmp(key, "instances")) {
        if (cli_parse_i64(v, 1, MAX_INSTANCES, &i)) return cli_error("instances: '%s' is not an integer in 1..%d", v, MAX_INSTANCES);
        c->instances = (int32_t)i;
    } else if (!strcmp(key, "router")) {
        if (parse_router(v, &c->router))
            return cli_error("router: '%s' is not round-robin, least-loaded or prefix-aware", v);
    } else if (!strcmp(key, "model")) { /* a sweep key only: the option is --hybrid */
        if (!strcmp(v, "full")) c->hybrid = 0;
        else if (!strcmp(v, "hybrid")) c->hybrid = 1;
        else return cli_error("model: '%s' is not full or hybrid", v);
    } else {
        return cli_error("--sweep: unknown key '%s' (block-size, pool-blocks, kv-mem-gib, kv-dtype, "
                         "prefix-cache, max-batch-tokens, max-seqs, watermark, instances, router, model)", key);
    }
    return 0;
}

/* An output file must be writable before any work starts. */
static int check_output(const char *opt, const char *path) {
    struct stat sb;
    if (!*path) return cli_error("%s: empty file name", opt);
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) return cli_error("%s %s: is a directory", opt, path);
        if (access(path, W_OK) != 0) return cli_error("%s %s: cannot open for writing: %s", opt, path, strerror(errno));
        return 0;
    }
    if (errno != ENOENT) return cli_error("%s %s: cannot open for writing: %s", opt, path, strerror(errno));
    char *copy = strdup(path);
    if (!copy) return cli_error("out of memory");
    const char *dir = dirname(copy);
    int rc = 0;
    if (stat(dir, &sb) != 0)
        rc = cli_error("%s %s: cannot open for writing: directory %s: %s", opt, path, dir, strerror(errno));
    else if (!S_ISDIR(sb.st_mode))
        rc = cli_error("%s %s: cannot open for writing: %s is not a directory", opt, path, dir);
    else if (access(dir, W_OK | X_OK) != 0)
        rc = cli_error("%s %s: cannot open for writing: directory %s: %s", opt, path, dir, strerror(errno));
    free(copy);
    return rc;
}

/* Refuses a pool the machine cannot hold, before allocating it. what names
 * the option that sized it. */
static int check_memory(const sim_config *c, const char *what) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return 0;
    double phys = (double)pages * (double)page;
    double need = sim_cache_bytes(c) * (c->instances > 0 ? c->instances : 1);
    if (need <= phys * 0.8) return 0;
    char times[40] = "";
    if (c->instances > 1) snprintf(times, sizeof times, " in each of %d instances", c->instances);
    return cli_error("%s: a pool of %d blocks of %d tokens%s needs about %.1f GiB of host memory for the cache "
                     "metadata; this machine has %.1f GiB",
                     what, sim_pool_blocks(c), c->block_size, times, need / 1073741824.0, phys / 1073741824.0);
}

/* Hit rate of an infinite cache per block size (a sweep reuses it). */
typedef struct hitmax_memo {
    int32_t bs[64];
    int64_t hit[64], query[64];
    int n;
} hitmax_memo;

static int hit_max(const sim_workload *w, int32_t bs, hitmax_memo *m, int64_t *hit, int64_t *query) {
    for (int i = 0; i < m->n; i++)
        if (m->bs[i] == bs) {
            *hit = m->hit[i];
            *query = m->query[i];
            return 0;
        }
    int rc = workload_hit_max(w, bs, hit, query);
    if (rc) return cli_error("out of memory computing the theoretical hit rate");
    if (m->n < 64) {
        m->bs[m->n] = bs;
        m->hit[m->n] = *hit;
        m->query[m->n++] = *query;
    }
    return 0;
}

/* What the hybrid model (hybrid.c) does not support, refused by name; what:
 * "--hybrid" or "--sweep model=hybrid". Returns 0 or EXIT_USAGE. */
static int check_hybrid(const sim_config *c, const char *what) {
    if (c->layers < 2)
        return cli_error("%s needs --layers >= 2 (one full-attention and one sliding-window layer at least)", what);
    if (c->pool_blocks)
        return cli_error("%s splits --kv-mem-gib between the groups' pools; --pool-blocks (or --sweep pool-blocks) "
                         "sizes one pool: leave it out", what);
    if (c->ntiers) return cli_error("%s does not support --tier (the groups have no tiers here)", what);
    if (c->preempt_swap) return cli_error("%s does not support --preempt swap (it needs --tier)", what);
    if (c->verify) return cli_error("%s does not support --verify (--verify-fast)", what);
    return 0;
}

/* Options given once at most (a second one would silently win). */
typedef struct seen_opts {
    const char *name[64];
    int n;
} seen_opts;

static int once(seen_opts *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->name[i], name)) return cli_error("%s given twice", name);
    if (s->n < 64) s->name[s->n++] = name;
    return 0;
}

static int given(const seen_opts *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->name[i], name)) return 1;
    return 0;
}

/* cli_opt for an option given once at most: 1 matched (*v set), 0 not this
 * option, -1 an error (message printed). */
static int opt_once(int argc, char **argv, int *i, const char *name, const char **v, seen_opts *seen) {
    int m = cli_opt(argc, argv, i, name, v);
    if (m <= 0) return m;
    return once(seen, name) ? -1 : 1;
}

int cmd_sim(int argc, char **argv) {
    sim_config cfg = {
        .block_size = 64, .kv_mem_gib = 4.0, .kv_dtype = PKV_BF16, .layers = 61, .prefix_cache = 1,
        .max_batch_tokens = 2048, .max_seqs = 256, .watermark = 0.01, .cost_a = 12e-3, .cost_b = 25e-6,
        .kv_bw = 3e12, .verify_seqs = 4, .instances = 1, .router = SIM_ROUTER_ROUND_ROBIN,
        .host_bw = 25e9, .ssd_bw = 5e9, .net_bw = 12.5e9, .window = 1024,
    };
    sim_workload_opts wo = {.requests = 3000, .rate = 4.0, .seed = 1, .max_context = 16384};
    const char *trace = NULL, *svg = NULL, *sweep = NULL;
    int json = 0, no_progress = 0;
    int64_t trace_block = 512;
    seen_opts seen = {{0}, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int64_t n;
        double d;
        int m;
        if (cli_flag(a, "--help") || cli_flag(a, "-h")) {
            fputs(sim_help, stdout);
            return 0;
        }
#define OPT(name) ((m = opt_once(argc, argv, &i, name, &v, &seen)) != 0)
        if (cli_flag(a, "--json")) json = 1;
        else if (cli_flag(a, "--verify")) cfg.verify = 1;
        else if (cli_flag(a, "--verify-fast")) cfg.verify = cfg.verify_fast = 1;
        else if (cli_flag(a, "--no-progress")) no_progress = 1;
        else if (cli_flag(a, "--hybrid")) {
            if (once(&seen, "--hybrid")) return EXIT_USAGE;
            cfg.hybrid = 1;
        }
        else if (OPT("--trace")) { if (m < 0) return EXIT_USAGE; trace = v; }
        else if (OPT("--svg")) { if (m < 0) return EXIT_USAGE; svg = v; }
        else if (OPT("--sweep")) { if (m < 0) return EXIT_USAGE; sweep = v; }
        else if (OPT("--trace-block")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_i64(v, 1, 65536, &trace_block))
                return cli_error("--trace-block: '%s' is not an integer in 1..65536", v);
        } else if (OPT("--requests")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_i64(v, 1, 10000000, &n)) return cli_error("--requests: '%s' is not an integer in 1..10000000", v);
            wo.requests = (int32_t)n;
        } else if (OPT("--rate")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_f64(v, 1e-6, 1e6, &d)) return cli_error("--rate: '%s' is not a number in 1e-06..1e+06", v);
            wo.rate = d;
        } else if (OPT("--max-context")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_i64(v, 64, 1 << 24, &n)) return cli_error("--max-context: '%s' is not an integer in 64..%d", v, 1 << 24);
            wo.max_context = (int32_t)n;
        } else if (OPT("--seed")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_i64(v, 0, INT64_MAX, &n)) return cli_error("--seed: '%s' is not an integer in 0..%lld", v, (long long)INT64_MAX);
            wo.seed = (uint64_t)n;
        } else if (OPT("--layers")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_i64(v, 1, 1000, &n)) return cli_error("--layers: '%s' is not an integer in 1..1000", v);
            cfg.layers = (int32_t)n;
        } else if (OPT("--window")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_i64(v, 1, 1 << 24, &n)) return cli_error("--window: '%s' is not an integer in 1..%d", v, 1 << 24);
            cfg.window = (int32_t)n;
        } else if (OPT("--verify-seqs")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_i64(v, 1, 4096, &n)) return cli_error("--verify-seqs: '%s' is not an integer in 1..4096", v);
            cfg.verify_seqs = (int32_t)n;
        } else if (OPT("--cost-a-ms")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_f64(v, 0, 1e6, &d)) return cli_error("--cost-a-ms: '%s' is not a number in 0..1e+06", v);
            cfg.cost_a = d * 1e-3;
        } else if (OPT("--cost-b-us")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_f64(v, 0, 1e9, &d)) return cli_error("--cost-b-us: '%s' is not a number in 0..1e+09", v);
            cfg.cost_b = d * 1e-6;
        } else if (OPT("--kv-bw-tbs")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_f64(v, 1e-6, 1e6, &d)) return cli_error("--kv-bw-tbs: '%s' is not a number in 1e-06..1e+06", v);
            cfg.kv_bw = d * 1e12;
        } else if (OPT("--preempt")) {
            if (m < 0) return EXIT_USAGE;
            if (!strcmp(v, "swap")) cfg.preempt_swap = 1;
            else if (strcmp(v, "recompute")) return cli_error("--preempt: '%s' is not recompute or swap", v);
        } else if ((m = cli_opt(argc, argv, &i, "--tier", &v)) != 0) {
            if (m < 0) return EXIT_USAGE;
            if (cfg.ntiers == SIM_MAX_TIERS) return cli_error("--tier: at most %d tiers", SIM_MAX_TIERS);
            int rc = parse_tier(v, &cfg, cfg.ntiers);
            if (rc) return rc;
            cfg.ntiers++;
        } else if (OPT("--host-bw-gbs")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_f64(v, 1e-3, 1e6, &d)) return cli_error("--host-bw-gbs: '%s' is not a number in 0.001..1e+06", v);
            cfg.host_bw = d * 1e9;
        } else if (OPT("--ssd-bw-gbs")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_f64(v, 1e-3, 1e6, &d)) return cli_error("--ssd-bw-gbs: '%s' is not a number in 0.001..1e+06", v);
            cfg.ssd_bw = d * 1e9;
        } else if (OPT("--redis-prefix")) {
            if (m < 0) return EXIT_USAGE;
            if (!*v || strlen(v) > 64) return cli_error("--redis-prefix: '%s' is not 1..64 bytes", v);
            snprintf(cfg.redis_prefix, sizeof cfg.redis_prefix, "%s", v);
        } else if (OPT("--net-bw-gbs")) {
            if (m < 0) return EXIT_USAGE;
            if (cli_parse_f64(v, 1e-3, 1e6, &d)) return cli_error("--net-bw-gbs: '%s' is not a number in 0.001..1e+06", v);
            cfg.net_bw = d * 1e9;
        } else {
            int k = 0;
            while (k < NKNOBS && !OPT(knob_opts[k])) k++;
            if (k == NKNOBS) return cli_error("sim: unknown option '%s' (see pkv sim --help)", a);
            if (m < 0) return EXIT_USAGE;
            int rc = set_knob(&cfg, knob_opts[k] + 2, v);
            if (rc) return rc;
        }
#undef OPT
    }
    /* Options that would be ignored or overridden are refused, named. */
    if (cfg.hybrid) {
        int rc = check_hybrid(&cfg, "--hybrid");
        if (rc) return rc;
    }
    if (trace) {
        static const char *const gen_only[] = {"--requests", "--rate", "--max-context"};
        for (size_t k = 0; k < sizeof gen_only / sizeof gen_only[0]; k++)
            if (given(&seen, gen_only[k]))
                return cli_error("%s shapes the default workload and has no effect with --trace; leave it out",
                                 gen_only[k]);
    } else if (given(&seen, "--trace-block")) {
        return cli_error("--trace-block applies to Mooncake traces and has no effect without --trace");
    }
    if (cfg.preempt_swap && !cfg.ntiers)
        return cli_error("--preempt swap moves preempted sequences to tier 0: add --tier host:GIB");
    {
        int kinds[3] = {0, 0, 0};
        for (int32_t t = 0; t < cfg.ntiers; t++) kinds[cfg.tier_kind[t]]++;
        /* in host mode a swap goes to host memory at --host-bw-gbs */
        if (given(&seen, "--host-bw-gbs") && !kinds[SIM_TIER_HOST] && !(kinds[SIM_TIER_REDIS] && cfg.preempt_swap))
            return cli_error("--host-bw-gbs has no effect without --tier host:GIB");
        if (given(&seen, "--ssd-bw-gbs") && !kinds[SIM_TIER_FILE])
            return cli_error("--ssd-bw-gbs has no effect without --tier file:DIR:GIB");
        if (given(&seen, "--net-bw-gbs") && !kinds[SIM_TIER_REDIS])
            return cli_error("--net-bw-gbs has no effect without --tier redis://HOST:PORT");
        if (given(&seen, "--redis-prefix") && !kinds[SIM_TIER_REDIS])
            return cli_error("--redis-prefix has no effect without --tier redis://HOST:PORT");
    }
    if (given(&seen, "--verify-seqs") && !cfg.verify)
        return cli_error("--verify-seqs has no effect without --verify (or --verify-fast)");
    if (given(&seen, "--pool-blocks") && given(&seen, "--kv-mem-gib"))
        return cli_error("--pool-blocks and --kv-mem-gib both size the pool; give one");
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
        int k = 0;
        while (k < NKNOBS && strcmp(key, knob_opts[k] + 2)) k++;
        if (!strcmp(key, "model")) {
            if (cfg.hybrid) return cli_error("--hybrid and --sweep model=... both choose the model; leave --hybrid out");
        } else if (k == NKNOBS) {
            sim_config tmp = cfg;
            return set_knob(&tmp, key, "");
        } else if (given(&seen, knob_opts[k])) {
            return cli_error("--%s and --sweep %s=... both set %s; leave one out", key, key, key);
        }
        if ((!strcmp(key, "kv-mem-gib") && given(&seen, "--pool-blocks")) ||
            (!strcmp(key, "pool-blocks") && given(&seen, "--kv-mem-gib")))
            return cli_error("--sweep %s=... and --%s both size the pool; leave --%s out", key,
                             key[0] == 'k' ? "pool-blocks" : "kv-mem-gib", key[0] == 'k' ? "pool-blocks" : "kv-mem-gib");
        values = strdup(eq + 1);
        if (!values) return cli_error("out of memory");
        for (char *p = values, *tok; (tok = strsep(&p, ",")) != NULL;) {
            if (!*tok) { free(values); return cli_error("--sweep: empty value in '%s'", sweep); }
            if (nvals == 64) { free(values); return cli_error("--sweep: at most 64 values"); }
            vals[nvals++] = tok;
        }
    }
    if (given(&seen, "--window") && !cfg.hybrid && strcmp(key, "model")) {
        free(values);
        return cli_error("--window sets the hybrid model's sliding window and has no effect without --hybrid "
                         "(or --sweep model=full,hybrid)");
    }
    if (given(&seen, "--router") && cfg.instances == 1 && strcmp(key, "instances")) {
        free(values);
        return cli_error("--router has no effect with one instance; add --instances N");
    }
    if (!strcmp(key, "router") && cfg.instances == 1) {
        free(values);
        return cli_error("--sweep router=... has no effect with one instance; add --instances N");
    }
    int nruns = sweep ? nvals : 1;
    sim_run_desc *runs = calloc((size_t)nruns, sizeof *runs);
    if (!runs) { free(values); return cli_error("out of memory"); }
    /* Every run's configuration is checked before any work. */
    int rc = 0;
    for (int j = 0; j < nruns && rc == 0; j++) {
        runs[j].cfg = cfg;
        if (sweep) {
            runs[j].label = vals[j];
            rc = set_knob(&runs[j].cfg, key, vals[j]);
            if (rc) break;
        }
        if (runs[j].cfg.ntiers && !runs[j].cfg.prefix_cache) {
            rc = cli_error("--tier needs the prefix cache (blocks are offloaded and found again by their prefix)");
            break;
        }
        if (runs[j].cfg.verify && runs[j].cfg.kv_dtype != PKV_BF16) {
            rc = cli_error("--verify cannot sweep kv-dtype");
            break;
        }
        if (runs[j].cfg.hybrid && (rc = check_hybrid(&runs[j].cfg, sweep && !strcmp(key, "model")
                                                                         ? "--sweep model=hybrid" : "--hybrid")))
            break;
        char what[96];
        if (sweep) snprintf(what, sizeof what, "--sweep %s=%s", key, vals[j]);
        else if (cfg.pool_blocks) snprintf(what, sizeof what, "--pool-blocks %d", cfg.pool_blocks);
        else snprintf(what, sizeof what, "--kv-mem-gib %g", cfg.kv_mem_gib);
        rc = check_memory(&runs[j].cfg, what);
    }
    if (rc == 0 && svg) rc = check_output("--svg", svg);
    sim_workload w;
    memset(&w, 0, sizeof w);
    if (rc == 0) {
        rc = trace ? workload_trace(trace, wo.seed, (int32_t)trace_block, &w) : workload_default(&wo, &w);
        if (rc == EXIT_LIB && !trace) cli_error("out of memory generating the workload");
    }
    int tty = !no_progress && isatty(2);
    char label[64];
    hitmax_memo memo = {{0}, {0}, {0}, 0};
    for (int j = 0; j < nruns && rc == 0; j++) {
        rc = hit_max(&w, runs[j].cfg.block_size, &memo, &runs[j].res.hit_max_tokens, &runs[j].res.hit_max_query);
        if (rc) break;
        snprintf(label, sizeof label, "%s%s%s", sweep ? key : "sim", sweep ? "=" : "", sweep ? vals[j] : "");
        runs[j].cfg.progress = tty;
        runs[j].cfg.progress_label = label;
        rc = sim_run(&w, &runs[j].cfg, &runs[j].res);
        runs[j].cfg.progress_label = NULL;
        for (int32_t t = 0; rc == 0 && t < runs[j].cfg.ntiers; t++)
            if (runs[j].res.tier_errors[t])
                fprintf(stderr, "pkv sim: warning: the %s tier failed %lld calls (served as misses; is %s up?)\n",
                        sim_tier_name(&runs[j].cfg, t), (long long)runs[j].res.tier_errors[t],
                        runs[j].cfg.tier_kind[t] == SIM_TIER_REDIS ? runs[j].cfg.redis_url : "its store");
    }
    if (rc == 0) {
        if (json) report_json(stdout, &w, runs, nruns, sweep ? key : NULL);
        else report_table(stdout, &w, runs, nruns, sweep ? key : NULL);
        if (svg) rc = report_svg(svg, &w, runs, nruns, sweep ? key : NULL);
    }
    for (int j = 0; j < nruns; j++) sim_result_free(&runs[j].res);
    free(runs);
    free(values);
    workload_free(&w);
    return rc;
}
