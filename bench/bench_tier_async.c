/* Asynchronous loads (pkv_tier_async_start, pkv_prefix_lookup_async): a
 * prompt whose blocks all sit in a file tier is looked up
 *  - synchronously (pkv_prefix_lookup: the call reads every blob), and
 *  - asynchronously with 1, 2 and 4 I/O threads: the time until the lookup
 *    returns (the engine can schedule other work from then on), and until
 *    pkv_seq_load_wait returns (every block checked and in the pool);
 *  - overlapped: the caller computes for as long as the synchronous load took,
 *    then waits: the total against load + compute run one after the other.
 * Page cache warm (the slabs were just written) and cold (evicted: root's
 * drop_caches, else posix_fadvise; the JSON says which). Each figure is the
 * median of --reps runs.
 *   build/bench/bench_tier_async [--dir D] [--tokens N] [--layers L] [--reps R] [--quick] */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/bench.h"
#include "pagedkv.h"

enum { BS = 64 };

typedef struct opts {
    const char *dir;
    int32_t tokens, layers, reps;
} opts;

/* A host-mode cache (bf16 MLA rows, 576 dims, `layers` layers) over a file tier
 * in o->dir, with the prompt's KV written, registered and evicted to the tier. */
static pkv_cache *make(const opts *o, const int32_t *toks, int threads) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    const int32_t nblocks = o->tokens / BS;
    cfg.num_blocks = nblocks + 8;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = o->layers;
    cfg.h_kv = 1;
    cfg.d = 576;
    cfg.dv = 512;
    cfg.kv_dtype = PKV_BF16;
    cfg.hash_key_set = 1;
    memset(cfg.hash_key, 7, 16);
    pkv_cache *c = NULL;
    int st = pkv_cache_create(&cfg, &c);
    if (st) bench_die("cache", st);
    size_t blob = 0;
    pkv_tier_blob_size(c, &blob);
    pkv_tier_backend fb;
    char detail[256];
    bench_rm_files(o->dir);
    st = pkv_tier_file_open(o->dir, (uint64_t)blob * (uint64_t)(nblocks + 8), blob, 0, &fb, detail);
    if (st) bench_die(detail, st);
    if ((st = pkv_cache_add_tier(c, &fb, nblocks + 8, 0))) bench_die("add tier", st);
    if (threads && (st = pkv_tier_async_start(c, threads))) bench_die("async start", st);
    pkv_seq s;
    int64_t *slots = malloc(sizeof(int64_t) * (size_t)o->tokens);
    uint16_t *row = calloc((size_t)o->tokens * 576, 2);
    for (size_t i = 0; i < (size_t)o->tokens * 576; i++) row[i] = (uint16_t)(0x3c00 + (i % 977));
    if ((st = pkv_seq_create(c, 0, &s)) || (st = pkv_seq_append(c, s, o->tokens, toks, slots, NULL))) bench_die("append", st);
    for (int32_t l = 0; l < o->layers; l++)
        if ((st = pkv_store_write(c, l, slots, o->tokens, row, NULL, PKV_BF16))) bench_die("write", st);
    if ((st = pkv_prefix_register(c, s, NULL, NULL)) || (st = pkv_seq_free(c, s))) bench_die("register", st);
    int32_t ev = 0;
    if ((st = pkv_prefix_evict(c, nblocks, &ev)) || ev != nblocks) bench_die("evict", st ? st : PKV_ERR_STATE);
    free(slots);
    free(row);
    return c;
}

/* Puts the prompt's blocks back into the tier only (the pool forgets them). */
static void back_to_tier(pkv_cache *c, int32_t nblocks) {
    int32_t ev = 0;
    int st = pkv_prefix_evict(c, nblocks, &ev);
    if (st) bench_die("evict", st);
}

static volatile double sink;
static void compute_for(double seconds) {
    double t0 = bench_now(), x = 1;
    while (bench_now() - t0 < seconds)
        for (int i = 0; i < 1000; i++) x = x * 1.0000001 + 1e-9;
    sink = x;
}

int main(int argc, char **argv) {
    bench_set_name(argv[0]);
    opts o = {"/tmp/pkv_bench_async", 16384, 8, 5};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc) o.dir = argv[++i];
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) o.tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) o.layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) o.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) {
            o.tokens = 4096;
            o.reps = 3;
        } else {
            fprintf(stderr, "usage: bench_tier_async [--dir D] [--tokens N] [--layers L] [--reps R] [--quick]\n");
            return 2;
        }
    }
    if (o.tokens < BS || o.tokens % BS || o.layers < 1 || o.reps < 1 || o.reps > 32) {
        fprintf(stderr, "bench_tier_async: tokens a multiple of %d, layers >= 1, reps 1..32\n", BS);
        return 2;
    }
    mkdir(o.dir, 0700);
    const int32_t nblocks = o.tokens / BS;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)o.tokens);
    for (int32_t i = 0; i < o.tokens; i++) toks[i] = 17 + i * 7;
    fprintf(stderr, "prompt of %d tokens (%d blocks, %d layers of bf16 MLA rows) in a file tier at %s\n", o.tokens,
            nblocks, o.layers, o.dir);
    fprintf(stderr, "%-5s %-8s %7s %10s %10s %9s %10s %10s\n", "cache", "mode", "threads", "return_ms", "ready_ms",
            "GB/s", "overlap_ms", "serial_ms");
    const int threads_list[] = {0, 1, 2, 4};
    for (int cold = 0; cold < 2; cold++) {
        double sync_ms = 0;
        for (int ti = 0; ti < 4; ti++) {
            const int threads = threads_list[ti];
            pkv_cache *c = make(&o, toks, threads);
            size_t blob = 0;
            pkv_tier_blob_size(c, &blob);
            double ret[32], ready[32], over[32];
            const char *how = "warm";
            for (int r = 0; r < o.reps; r++) {
                for (int pass = 0; pass < 2; pass++) { /* pass 1: overlapped with compute */
                    back_to_tier(c, nblocks);
                    if (cold) how = bench_evict_files(o.dir);
                    pkv_seq s;
                    int32_t rd = 0, ld = 0, len = 0;
                    double t0 = bench_now();
                    int st = pkv_prefix_lookup_async(c, 0, toks, o.tokens, NULL, &s, &rd, &ld);
                    double t1 = bench_now();
                    if (st) bench_die("lookup", st);
                    if (pass && sync_ms > 0) compute_for(sync_ms * 1e-3);
                    if ((st = pkv_seq_load_wait(c, s, &len))) bench_die("wait", st);
                    double t2 = bench_now();
                    if (len != o.tokens) bench_die("lookup incomplete", PKV_ERR_STATE);
                    pkv_seq_free(c, s);
                    if (pass) over[r] = (t2 - t0) * 1e3;
                    else {
                        ret[r] = (t1 - t0) * 1e3;
                        ready[r] = (t2 - t0) * 1e3;
                    }
                }
            }
            const double mret = bench_median(ret, o.reps), mready = bench_median(ready, o.reps);
            const double mover = bench_median(over, o.reps);
            if (threads == 0) sync_ms = mready;
            const double gbs = (double)blob * nblocks / (mready * 1e-3) / 1e9;
            fprintf(stderr, "%-5s %-8s %7d %10.2f %10.2f %9.2f %10.2f %10.2f\n", cold ? "cold" : "warm",
                    threads ? "async" : "sync", threads, mret, mready, gbs, threads ? mover : 0.0,
                    threads ? sync_ms + sync_ms : 0.0);
            bench_json j;
            json_begin(&j, stdout);
            json_str(&j, "bench", "tier_async");
            json_str(&j, "page_cache", cold ? how : "warm");
            json_str(&j, "mode", threads ? "async" : "sync");
            json_int(&j, "io_threads", threads);
            json_int(&j, "tokens", o.tokens);
            json_int(&j, "layers", o.layers);
            json_int(&j, "blob_bytes", (long long)blob);
            json_num(&j, "lookup_return_ms", mret);
            json_num(&j, "ready_ms", mready);
            json_num(&j, "load_gbs", gbs);
            if (threads) {
                json_num(&j, "overlapped_total_ms", mover);
                json_num(&j, "serial_total_ms", 2 * sync_ms);
            }
            json_end(&j);
            pkv_cache_destroy(c);
        }
    }
    bench_rm_files(o.dir);
    rmdir(o.dir);
    free(toks);
    return 0;
}
