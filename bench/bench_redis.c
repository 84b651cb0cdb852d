/* The Redis tier over loopback (make REDIS=1), against redis-benchmark in the
 * same run with the same value size, pipeline depth and one connection:
 *  - put / get GB/s: put_many / get_many of --pipeline blobs per call (the
 *    value is the blob plus its 16-byte MAC), vs. redis-benchmark -t set,get
 *    -d <value bytes> -P <pipeline> -c 1 run right after each of ours with as
 *    many requests (the median of the per-pair ratios; target >= 0.8);
 *  - chain lookup: a fresh lookup (pkv_prefix_reset between runs) of a prompt
 *    of --chain blocks that another cache registered: its keys computed,
 *    fetched in one pipeline per 32 blocks, checked and promoted (median);
 *  - the cost of a miss: a lookup of a prompt Redis does not hold (median).
 * Blobs: --layers layers of a 64-token block of FlashMLA bf16 MLA rows (576 x
 * 2 B), 4 layers by default (about 295 KB). Server: PKV_REDIS_URL (a redis://
 * URL of a server on this host), else a private redis-server on a free port.
 *   build/redis/bench/bench_redis [--layers L] [--blocks N] [--pipeline P] [--chain C] [--reps R] */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/bench.h"
#include "pagedkv.h"

#ifndef PKV_REDIS
int main(void) {
    bench_json j;
    json_begin(&j, stdout);
    json_str(&j, "bench", "redis");
    json_str(&j, "skipped", "built without REDIS=1");
    json_end(&j);
    return 0;
}
#else

static pid_t g_server;

static void stop_server(void) {
    if (g_server > 0) {
        kill(g_server, SIGKILL);
        waitpid(g_server, NULL, 0);
        g_server = 0;
    }
}

static int start_server(char *dir, int port) {
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    g_server = fork();
    if (g_server == 0) {
        if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(127);
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--dir", dir, "--save", "",
               "--appendonly", "no", "--maxmemory", "2gb", "--maxmemory-policy", "allkeys-lru", (char *)NULL);
        _exit(127);
    }
    atexit(stop_server);
    for (int i = 0; i < 100; i++) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "redis-cli -h 127.0.0.1 -p %d ping >/dev/null 2>&1", port);
        if (system(cmd) == 0) return 1;
        usleep(100000);
    }
    return 0;
}

static pkv_cache *make_cache(int layers, int nblocks) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nblocks;
    cfg.block_size = 64;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = layers;
    cfg.hash_key_set = 1;
    for (int i = 0; i < 16; i++) cfg.hash_key[i] = (uint8_t)(i * 37 + 1);
    pkv_cache *c = NULL;
    if (pkv_cache_create(&cfg, &c) != PKV_OK) exit(1);
    return c;
}

static void add_tier(pkv_cache *c, const char *url) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    pkv_cache_config(c, &cfg);
    pkv_tier_backend be;
    char detail[256];
    if (pkv_tier_redis_open(url, cfg.hash_key, "bench:", 5000, &be, detail) != PKV_OK ||
        pkv_cache_add_tier(c, &be, 1 << 16, PKV_TIER_SHARED | PKV_TIER_WRITE_THROUGH) != PKV_OK) {
        fprintf(stderr, "bench_redis: %s\n", detail);
        exit(1);
    }
}

/* redis-benchmark's requests per second for SET and GET (its CSV). */
static void redis_benchmark(int port, size_t value, int pipeline, int n, double *set_rps, double *get_rps) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "redis-benchmark -h 127.0.0.1 -p %d -t set,get -n %d -d %zu -P %d -c 1 --csv 2>/dev/null",
             port, n, value, pipeline);
    *set_rps = *get_rps = 0;
    FILE *f = popen(cmd, "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        double rps = 0;
        char name[32];
        if (sscanf(line, "\"%31[^\"]\",\"%lf\"", name, &rps) == 2) {
            if (!strcmp(name, "SET")) *set_rps = rps;
            if (!strcmp(name, "GET")) *get_rps = rps;
        }
    }
    if (f) pclose(f);
}

int main(int argc, char **argv) {
    int layers = 4, blocks = 256, pipeline = 32, chain = 32, reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--layers")) layers = v;
        else if (!strcmp(argv[i], "--blocks")) blocks = v;
        else if (!strcmp(argv[i], "--pipeline")) pipeline = v;
        else if (!strcmp(argv[i], "--chain")) chain = v;
        else if (!strcmp(argv[i], "--reps")) reps = v;
    }
    if (layers < 1 || blocks < 1 || pipeline < 1 || chain < 1 || reps < 1 || reps > 100) return 2;
    signal(SIGPIPE, SIG_IGN);
    char url[256], dir[] = "/tmp/pkv_bench_redis_XXXXXX";
    int port;
    const char *env = getenv("PKV_REDIS_URL");
    if (env && !strncmp(env, "redis://127.0.0.1:", 18)) {
        snprintf(url, sizeof url, "%s", env);
        port = atoi(env + 18);
    } else {
        if (!mkdtemp(dir)) return 1;
        port = 20000 + (int)(getpid() % 30000);
        if (!start_server(dir, port)) {
            fprintf(stderr, "bench_redis: could not start redis-server on port %d\n", port);
            return 1;
        }
        snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    }

    pkv_cache *w = make_cache(layers, chain + 8);
    size_t blob = 0;
    pkv_tier_blob_size(w, &blob);
    size_t value = blob + 16;

    /* ---- put / get GB/s through the backend's batch calls ---- */
    pkv_config cfg;
    pkv_config_init(&cfg);
    pkv_cache_config(w, &cfg);
    pkv_tier_backend be;
    if (pkv_tier_redis_open(url, cfg.hash_key, "raw:", 5000, &be, NULL) != PKV_OK) return 1;
    uint8_t(*keys)[16] = malloc((size_t)pipeline * 16);
    uint8_t *bufs = malloc((size_t)pipeline * blob);
    void **ptrs = malloc((size_t)pipeline * sizeof *ptrs);
    size_t *lens = malloc((size_t)pipeline * sizeof *lens);
    int *status = malloc((size_t)pipeline * sizeof *status);
    for (size_t i = 0; i < (size_t)pipeline * blob; i++) bufs[i] = (uint8_t)(i * 2654435761u >> 13);
    for (int i = 0; i < pipeline; i++) ptrs[i] = bufs + (size_t)i * blob;
    double put_s[100], get_s[100], rb_set[100], rb_get[100], put_ratio[100], get_ratio[100];
    int rounds = (blocks + pipeline - 1) / pipeline, bad = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        for (int k = 0; k < rounds; k++) {
            for (int i = 0; i < pipeline; i++) {
                uint32_t id = (uint32_t)(k * pipeline + i);
                memset(keys[i], 0, 16);
                memcpy(keys[i], &id, 4);
            }
            be.put_many(be.ctx, pipeline, (const uint8_t(*)[16])keys, (const void *const *)ptrs, blob, status);
            for (int i = 0; i < pipeline; i++) bad += status[i] != PKV_OK;
        }
        put_s[r] = bench_now() - t0;
        t0 = bench_now();
        for (int k = 0; k < rounds; k++) {
            for (int i = 0; i < pipeline; i++) {
                uint32_t id = (uint32_t)(k * pipeline + i);
                memset(keys[i], 0, 16);
                memcpy(keys[i], &id, 4);
            }
            be.get_many(be.ctx, pipeline, (const uint8_t(*)[16])keys, ptrs, blob, lens, status);
            for (int i = 0; i < pipeline; i++) bad += status[i] != PKV_OK;
        }
        get_s[r] = bench_now() - t0;
        /* redis-benchmark right after, with as many requests: on a shared machine
         * the two see the same load, and the ratio is taken per pair. */
        redis_benchmark(port, value, pipeline, rounds * pipeline, &rb_set[r], &rb_get[r]);
        double bytes1 = (double)rounds * pipeline * (double)value;
        rb_set[r] *= (double)value / 1e9;
        rb_get[r] *= (double)value / 1e9;
        put_ratio[r] = rb_set[r] > 0 ? bytes1 / put_s[r] / 1e9 / rb_set[r] : 0;
        get_ratio[r] = rb_get[r] > 0 ? bytes1 / get_s[r] / 1e9 / rb_get[r] : 0;
    }
    double bytes = (double)rounds * pipeline * (double)value;
    double put_gbs = bytes / bench_median(put_s, reps) / 1e9, get_gbs = bytes / bench_median(get_s, reps) / 1e9;
    be.close(be.ctx);

    double rb_set_gbs = bench_median(rb_set, reps), rb_get_gbs = bench_median(rb_get, reps);
    double pr = bench_median(put_ratio, reps), gr = bench_median(get_ratio, reps);

    /* ---- chain lookup and miss through a cache ---- */
    int32_t n = chain * 64;
    int32_t *toks = malloc((size_t)n * sizeof *toks), *other = malloc((size_t)n * sizeof *other);
    for (int32_t i = 0; i < n; i++) {
        toks[i] = (int32_t)((i * 7919u) % 50000u);
        other[i] = toks[i] + 1;
    }
    add_tier(w, url);
    pkv_seq s;
    int64_t *slots = malloc((size_t)n * sizeof *slots);
    pkv_seq_create(w, 0, &s);
    pkv_seq_append(w, s, n, toks, slots, NULL);
    pkv_prefix_register(w, s, NULL, NULL);
    pkv_cache *r = make_cache(layers, chain + 8);
    add_tier(r, url);
    double hit_s[100], miss_s[100];
    int32_t got = 0;
    for (int k = 0; k < reps; k++) {
        pkv_prefix_reset(r);
        double t0 = bench_now();
        pkv_prefix_lookup(r, 0, toks, n, &s, &got);
        hit_s[k] = bench_now() - t0;
        bad += got != n;
        pkv_seq_free(r, s);
        t0 = bench_now();
        pkv_prefix_lookup(r, 0, other, n, &s, &got);
        miss_s[k] = bench_now() - t0;
        bad += got != 0;
        pkv_seq_free(r, s);
    }
    double hit_ms = 1e3 * bench_median(hit_s, reps), miss_ms = 1e3 * bench_median(miss_s, reps);
    pkv_cache_destroy(r);
    pkv_cache_destroy(w);

    bench_json j;
    json_begin(&j, stdout);
    json_str(&j, "bench", "redis");
    json_str(&j, "cpu", bench_cpu_model());
    json_int(&j, "value_bytes", (long long)value);
    json_int(&j, "pipeline", pipeline);
    json_int(&j, "blocks", rounds * pipeline);
    json_num(&j, "put_gbs", put_gbs);
    json_num(&j, "get_gbs", get_gbs);
    json_num(&j, "redis_benchmark_set_gbs", rb_set_gbs);
    json_num(&j, "redis_benchmark_get_gbs", rb_get_gbs);
    json_num(&j, "put_ratio", pr); /* median of the per-pair ratios */
    json_num(&j, "get_ratio", gr);
    json_int(&j, "chain_blocks", chain);
    json_num(&j, "chain_lookup_ms", hit_ms);
    json_num(&j, "chain_lookup_gbs", (double)chain * (double)value / (hit_ms / 1e3) / 1e9);
    json_num(&j, "miss_lookup_ms", miss_ms);
    json_int(&j, "errors", bad);
    json_end(&j);
    fprintf(stderr, "redis tier, %zu-byte values, pipeline %d, one connection:\n", value, pipeline);
    fprintf(stderr, "  put %.2f GB/s vs redis-benchmark SET %.2f GB/s (median ratio of %d pairs %.2f)\n", put_gbs,
            rb_set_gbs, reps, pr);
    fprintf(stderr, "  get %.2f GB/s vs redis-benchmark GET %.2f GB/s (median ratio of %d pairs %.2f)\n", get_gbs,
            rb_get_gbs, reps, gr);
    fprintf(stderr, "  lookup of a %d-block chain from Redis %.2f ms; a miss %.3f ms; errors %d\n", chain, hit_ms,
            miss_ms, bad);
    free(keys), free(bufs), free(ptrs), free(lens), free(status), free(toks), free(other), free(slots);
    stop_server();
    if (dir[sizeof dir - 7] != 'X') rmdir(dir);
    return bad ? 1 : 0;
}
#endif
