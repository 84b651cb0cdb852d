/* pkv sim from the outside: Mooncake traces (hit rates checked exactly against
 * tests/data/mooncake_hits.py), the theoretical hit rate, capacity sweeps and
 * their chart, fleets and their routers, refused trace lines, and the sharp
 * edges of issue 16 (options that would be ignored, misleading messages,
 * outputs checked first, trace file errors, the sweep table), and the hybrid
 * model (--hybrid: a full-attention and a sliding-window KV group).
 * PKV_BIN names the program (make test sets it); run from the repository root. */
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "common/clirun.h"

static char tmpdir[256];

#define SMALL "tests/data/mooncake_small.jsonl"
#define SMALL_ARGS "--trace " SMALL " --trace-block 64 --no-progress"
/* What tests/data/mooncake_hits.py prints for SMALL (hit tokens, prompt tokens). */
static const struct { int bs; long long hit, query; } small_hits[] = {{16, 1806, 3939}, {7, 1792, 3939}, {64, 1727, 3939}};



/* The value after the n-th (from 0) occurrence of "key": in text, or NULL. */
static const char *json_at(const char *text, const char *key, int nth) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = text;
    for (int i = 0; p && i <= nth; i++) {
        p = strstr(p, pat);
        if (p && i < nth) p += strlen(pat);
    }
    return p ? p + strlen(pat) : NULL;
}

/* The integer there, or -1. */
static long long json_int(const char *text, const char *key, int nth) {
    const char *p = json_at(text, key, nth);
    return p ? strtoll(p, NULL, 10) : -1;
}

/* Occurrences of needle in text. */
static int count(const char *text, const char *needle) {
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}



/* An unbounded pool on a trace served one request at a time reaches the
 * infinite cache's hits, and both equal the independent script's numbers. */
static void test_mooncake_exact(void) {
    int have_python = system("command -v python3 >/dev/null 2>&1") == 0;
    for (size_t i = 0; i < sizeof small_hits / sizeof small_hits[0]; i++) {
        run_out r = run(SMALL_ARGS " --block-size %d --pool-blocks 100000 --json", small_hits[i].bs);
        CHECK_RUN(r, 0, "\"mooncake_lines\": 20");
        CHECK_INT(json_int(r.text, "requests_done", 0), 20);
        CHECK_INT(json_int(r.text, "prefix_hit_tokens", 0), small_hits[i].hit);
        CHECK_INT(json_int(r.text, "prefix_query_tokens", 0), small_hits[i].query);
        CHECK_INT(json_int(r.text, "prefix_hit_tokens_max", 0), small_hits[i].hit);
        CHECK(strstr(r.text, "\"hit_rate_max\": ") != NULL);
        /* 3 distinct ids were given twice, 2 are 2^53 - 1 and 123456789012 */
        CHECK_INT(json_int(r.text, "distinct_hash_ids", 0), 36);
        free(r.text);
        if (have_python) {
            char cmd[512], out[128] = "";
            snprintf(cmd, sizeof cmd,
                     "python3 tests/data/mooncake_hits.py " SMALL " --block-size %d --trace-block 64",
                     small_hits[i].bs);
            FILE *p = popen(cmd, "r");
            CHECK(p != NULL);
            if (p) {
                if (!fgets(out, sizeof out, p)) out[0] = 0;
                pclose(p);
            }
            long long h = -1, q = -1;
            CHECK_INT(sscanf(out, "%lld %lld", &h, &q), 2);
            CHECK_INT(h, small_hits[i].hit);
            CHECK_INT(q, small_hits[i].query);
        }
    }
    /* the table shows both */
    run_out r = run(SMALL_ARGS " --block-size 16 --pool-blocks 100000");
    CHECK_RUN(r, 0, "45.8% (max 45.8%)");
    CHECK(strstr(r.text, "20 Mooncake lines, 36 distinct hash ids of 64 tokens") != NULL);
    free(r.text);
    /* the Mooncake ids are 512 tokens each by default: the same lines are then other prompts */
    r = run("--trace " SMALL " --no-progress --block-size 16 --pool-blocks 100000");
    CHECK_RUN(r, 2, "\"hash_ids\" has 7 ids, input_length 392 needs 1 (one per 512 tokens");
    free(r.text);
}

/* A bounded pool evicts, and finds less. */
static void test_mooncake_bounded(void) {
    run_out r = run(SMALL_ARGS " --block-size 16 --pool-blocks 40 --json");
    CHECK_RUN(r, 0, "\"runs\"");
    long long hit = json_int(r.text, "prefix_hit_tokens", 0);
    CHECK(hit >= 0 && hit < small_hits[0].hit);
    CHECK(json_int(r.text, "evictions", 0) > 0);
    CHECK_INT(json_int(r.text, "requests_done", 0) + json_int(r.text, "rejected", 0), 20);
    CHECK_INT(json_int(r.text, "prefix_hit_tokens_max", 0), small_hits[0].hit);
    free(r.text);
    /* the measured rate never exceeds the theoretical one (default workload, LRU pool) */
    r = run("--requests 300 --no-progress --json");
    CHECK_RUN(r, 0, "\"runs\"");
    long long h = json_int(r.text, "prefix_hit_tokens", 0), m = json_int(r.text, "prefix_hit_tokens_max", 0);
    CHECK(h > 0 && m > 0 && h <= m);
    free(r.text);
}

/* Capacity curves: one column per capacity, the chart of hit rate against
 * capacity with the theoretical line. */
static void test_capacity_sweep(void) {
    char svg[512];
    snprintf(svg, sizeof svg, "%s/capacity.svg", tmpdir);
    run_out r = run(SMALL_ARGS " --block-size 16 --sweep pool-blocks=30,60,100000 --svg %s", svg);
    CHECK_RUN(r, 0, "pool-blocks");
    char x[512];
    row(r.text, "prefix hit rate", x, sizeof x);
    CHECK_INT(count(x, "(max 45.8%)"), 3);
    CHECK(strstr(x, "45.8% (max 45.8%)") != NULL);
    CHECK(row(r.text, "TTFT p50 / p99 (ms)", x, sizeof x)[0] != 0);
    CHECK(row(r.text, "throughput (tokens/s)", x, sizeof x)[0] != 0);
    free(r.text);
    FILE *f = fopen(svg, "r");
    CHECK(f != NULL);
    if (f) {
        static char buf[1 << 16];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        CHECK(!strncmp(buf, "<svg xmlns=\"http://www.w3.org/2000/svg\"", 39));
        CHECK_INT(count(buf, "<circle"), 3);
        CHECK(strstr(buf, "theoretical maximum (infinite cache): 45.8%") != NULL);
        CHECK(strstr(buf, "KV cache capacity (blocks, log scale)") != NULL);
        if (system("command -v rsvg-convert >/dev/null 2>&1") == 0) {
            char cmd[1200];
            snprintf(cmd, sizeof cmd, "rsvg-convert %s -o %s/capacity.png", svg, tmpdir);
            CHECK_INT(system(cmd), 0);
        }
    }
}

/* Every router serves the same requests; prefix-aware finds what one big
 * cache would on a trace served one request at a time. */
static void test_fleet(void) {
    static const char *routers[] = {"round-robin", "least-loaded", "prefix-aware"};
    long long done[3], gen[3], query[3];
    for (int i = 0; i < 3; i++) {
        run_out r = run("--requests 150 --no-progress --instances 3 --router %s --json", routers[i]);
        CHECK_RUN(r, 0, "\"per_instance\"");
        done[i] = json_int(r.text, "requests_done", 0);
        gen[i] = json_int(r.text, "tokens_generated", 0);
        query[i] = json_int(r.text, "prefix_query_tokens", 0);
        long long routed = 0, inst_done = 0;
        for (int k = 0; k < 3; k++) {
            routed += json_int(r.text, "routed", k);
            inst_done += json_int(r.text, "requests_done", k + 1);
        }
        CHECK_INT(routed, 150);
        CHECK_INT(inst_done, done[i]);
        CHECK(json_int(r.text, "instance", 3) == -1); /* three entries */
        free(r.text);
    }
    for (int i = 1; i < 3; i++) {
        CHECK_INT(done[i], done[0]);
        CHECK_INT(gen[i], gen[0]);
        CHECK_INT(query[i], query[0]);
    }
    CHECK_INT(done[0], 150);
    run_out r = run(SMALL_ARGS " --block-size 16 --pool-blocks 100000 --instances 3 --router prefix-aware --json");
    CHECK_RUN(r, 0, "\"router\": \"prefix-aware\"");
    CHECK_INT(json_int(r.text, "prefix_hit_tokens", 0), small_hits[0].hit);
    free(r.text);
    r = run(SMALL_ARGS " --block-size 16 --pool-blocks 100000 --instances 3 --router round-robin --json");
    CHECK_RUN(r, 0, "\"router\": \"round-robin\"");
    CHECK(json_int(r.text, "prefix_hit_tokens", 0) < small_hits[0].hit);
    free(r.text);
    /* the table: global rows, then one row per instance */
    r = run("--requests 100 --no-progress --instances 2 --router least-loaded");
    CHECK_RUN(r, 0, "per instance (2 instances, least-loaded):");
    char x[256];
    CHECK(strstr(row(r.text, "instances, router", x, sizeof x), "2, least-loaded") != NULL);
    CHECK(row(r.text, "load balance (max/mean)", x, sizeof x)[0] != 0);
    free(r.text);
    r = run("--requests 50 --no-progress --sweep instances=1,2 --router prefix-aware");
    CHECK_RUN(r, 0, "per instance, instances=2 (2 instances, prefix-aware):");
    free(r.text);
}

/* Malformed Mooncake lines are refused with their line and column. */
static void test_bad_lines(void) {
    static const struct { const char *text; const char *msg; } bad[] = {
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2]}\n"
         "{\"timestamp\": 5, \"input_length\": 100, \"output_length\": 3}\n",
         ":2: column 59: missing \"hash_ids\""},
        {"{\"timestamp\": 0, \"output_length\": 3, \"hash_ids\": [1, 2]}\n", ":1: column 58: missing \"input_length\""},
        {"{\"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2]}\n", ":1: column 63: missing \"timestamp\""},
        {"{\"timestamp\": 0, \"input_length\": -100, \"output_length\": 3, \"hash_ids\": [1, 2]}\n",
         ":1: column 38: input_length must be an integer in [1, 16777216]"},
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": -3, \"hash_ids\": [1, 2]}\n",
         ":1: column 58: output_length must be an integer in [1, 1048576]"},
        {"{\"timestamp\": -1, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2]}\n",
         ":1: column 17: timestamp must be >= 0"},
        {"\n# c\n{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1]}\n",
         ":3: column 76: \"hash_ids\" has 1 ids, input_length 100 needs 2 (one per 64 tokens"},
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2, 3]}\n",
         ":1: column 82: \"hash_ids\" has 3 ids, input_length 100 needs 2"},
        {"{\"timestamp\": 0, \"input_length\": 100.5, \"output_length\": 3, \"hash_ids\": [1, 2]}\n",
         ":1: column 39: input_length must be an integer"},
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2.5]}\n",
         ":1: column 78: an entry of \"hash_ids\" must be an integer in [0, 9007199254740991]"},
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, -2]}\n",
         ":1: column 77: an entry of \"hash_ids\" must be an integer"},
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, \"a\"]}\n",
         ":1: column 75: expected a number"},
        {"{\"timestamp\": 0, \"input_length\": \"100\", \"output_length\": 3, \"hash_ids\": [1, 2]}\n",
         ":1: column 34: expected a number"},
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": 7}\n",
         ":1: column 71: \"hash_ids\" must be an array of integers"},
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2], \"arrival\": 0}\n",
         ":1: column 93: mixes pkv keys"},
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2], \"session_id\": 4}\n",
         ":1: column 92: unknown key \"session_id\""},
        {"{\"timestamp\": 9, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2]}\n"
         "{\"timestamp\": 8, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2]}\n",
         ":2: arrival 0.008 is earlier than the previous line's 0.009"},
        {"{\"timestamp\": 0, \"input_length\": 100, \"output_length\": 3, \"hash_ids\": [1, 2]}\n",
         NULL},
    };
    char path[512];
    snprintf(path, sizeof path, "%s/bad.jsonl", tmpdir);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, bad[i].text);
        run_out r = run("--trace %s --trace-block 64 --no-progress", path);
        if (bad[i].msg) {
            CHECK_RUN(r, 2, bad[i].msg);
            char want[700];
            snprintf(want, sizeof want, "pkv: --trace %s:", path);
            CHECK(!strncmp(r.text, want, strlen(want)));
        } else {
            CHECK_RUN(r, 0, "requests done");
        }
        free(r.text);
    }
}

/* Issue 16, item 9: options that would be ignored or overridden are refused, named. */
static void test_ignored_options(void) {
    static const struct { const char *args; const char *msg; } bad[] = {
        {"--trace " SMALL " --requests 10", "--requests shapes the default workload and has no effect with --trace"},
        {"--trace " SMALL " --rate 3", "--rate shapes the default workload and has no effect with --trace"},
        {"--trace " SMALL " --max-context 1000", "--max-context shapes the default workload"},
        {"--requests 10 --trace-block 64", "--trace-block applies to Mooncake traces and has no effect without --trace"},
        {"--requests 10 --verify-seqs 8", "--verify-seqs has no effect without --verify"},
        {"--requests 10 --sweep block-size=16 --sweep block-size=64", "--sweep given twice"},
        {"--requests 10 --block-size 16 --block-size 64", "--block-size given twice"},
        {"--requests 10 --kv-dtype fp8 --sweep kv-dtype=bf16,fp8", "--kv-dtype and --sweep kv-dtype=... both set kv-dtype"},
        {"--requests 10 --block-size 32 --sweep block-size=16,64", "--block-size and --sweep block-size=... both"},
        {"--requests 10 --pool-blocks 100 --kv-mem-gib 2", "--pool-blocks and --kv-mem-gib both size the pool"},
        {"--requests 10 --pool-blocks 100 --sweep kv-mem-gib=1,2", "both size the pool; leave --pool-blocks out"},
        {"--requests 10 --router prefix-aware", "--router has no effect with one instance"},
        {"--requests 10 --sweep router=round-robin,prefix-aware", "--sweep router=... has no effect with one instance"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run_out r = run("--no-progress %s", bad[i].args);
        CHECK_RUN(r, 2, bad[i].msg);
        free(r.text);
    }
    /* a duplicate key in a trace line */
    char path[512];
    snprintf(path, sizeof path, "%s/dup.jsonl", tmpdir);
    write_file(path, "{\"arrival\": 0, \"prompt_len\": 5, \"output_len\": 3, \"prompt_len\": 7}\n");
    run_out r = run("--trace %s --no-progress", path);
    CHECK_RUN(r, 2, ":1: column 63: duplicate key \"prompt_len\"");
    free(r.text);
    write_file(path, "{\"timestamp\": 0, \"input_length\": 9, \"output_length\": 3, \"hash_ids\": [1], \"timestamp\": 4}\n");
    r = run("--trace %s --no-progress", path);
    CHECK_RUN(r, 2, ":1: column 86: duplicate key \"timestamp\"");
    free(r.text);
}

/* Issue 16, item 10: messages say the allowed range; a following option is
 * not a value; a pool the machine cannot hold is refused before allocating. */
static void test_messages(void) {
    static const struct { const char *args; const char *msg; } bad[] = {
        {"--pool-blocks 2147483647", "pool-blocks: '2147483647' is not an integer in 1..1073741824"},
        {"--kv-mem-gib 1e30", "kv-mem-gib: '1e30' is not a number of GiB in 1e-06..1048576"},
        {"--block-size --no-progress", "--block-size needs a value, but is followed by the option '--no-progress'"},
        {"--instances 0", "instances: '0' is not an integer in 1..256"},
        {"--router fastest --instances 2", "router: 'fastest' is not round-robin, least-loaded or prefix-aware"},
        {"--trace-block 0 --trace " SMALL, "--trace-block: '0' is not an integer in 1..65536"},
        {"--requests 0", "--requests: '0' is not an integer in 1..10000000"},
        {"--pool-blocks 1073741824 --block-size 4096",
         "--pool-blocks 1073741824: a pool of 1073741824 blocks of 4096 tokens needs about"},
        {"--sweep pool-blocks=100,1073741824 --block-size 4096", "--sweep pool-blocks=1073741824: a pool of"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run_out r = run("--no-progress %s", bad[i].args);
        CHECK_RUN(r, 2, bad[i].msg);
        if (strstr(bad[i].msg, "a pool of")) {
            CHECK(strstr(r.text, "GiB of host memory") != NULL);
            CHECK(r.secs < 5); /* refused, not allocated */
        }
        free(r.text);
    }
    /* --name=--value is still a value (then refused as a number) */
    run_out r = run("--requests 10 --no-progress --block-size=--no-progress");
    CHECK_RUN(r, 2, "block-size: '--no-progress' is not an integer in 1..4096");
    free(r.text);
}

/* Issue 16, item 11: output paths are checked before the work. */
static void test_outputs_first(void) {
    run_out r = run("--requests 3000 --no-progress --verify --svg /nonexistent-dir/x.svg");
    CHECK_RUN(r, 2, "--svg /nonexistent-dir/x.svg: cannot open for writing");
    CHECK(strstr(r.text, "requests done") == NULL); /* nothing ran */
    CHECK(r.secs < 5);
    free(r.text);
    r = run("--requests 3000 --no-progress --svg %s", tmpdir);
    CHECK_RUN(r, 2, "is a directory");
    CHECK(strstr(r.text, "requests done") == NULL);
    free(r.text);
    char path[600];
    snprintf(path, sizeof path, "%s/file", tmpdir);
    write_file(path, "x");
    r = run("--requests 3000 --no-progress --svg %s/file/x.svg", tmpdir);
    CHECK_RUN(r, 2, "cannot open for writing");
    CHECK(strstr(r.text, "requests done") == NULL);
    free(r.text);
}

/* Issue 16, item 12: trace file errors in one form: the option, the file, the reason. */
static void test_trace_files(void) {
    run_out r = run("--no-progress --trace %s", tmpdir);
    char want[700];
    snprintf(want, sizeof want, "pkv: --trace %s: is a directory", tmpdir);
    CHECK_RUN(r, 2, want);
    free(r.text);
    r = run("--no-progress --trace %s/none.jsonl", tmpdir);
    snprintf(want, sizeof want, "pkv: --trace %s/none.jsonl: cannot open: No such file or directory", tmpdir);
    CHECK_RUN(r, 2, want);
    free(r.text);
    char path[512];
    snprintf(path, sizeof path, "%s/empty.jsonl", tmpdir);
    write_file(path, "\n# nothing\n");
    r = run("--no-progress --trace %s", path);
    snprintf(want, sizeof want, "pkv: --trace %s: no requests in the trace", path);
    CHECK_RUN(r, 2, want);
    free(r.text);
    /* a UTF-8 byte order mark at the start is skipped; elsewhere it is named */
    snprintf(path, sizeof path, "%s/bom.jsonl", tmpdir);
    write_file(path, "\xef\xbb\xbf{\"arrival\": 0, \"prompt_len\": 50, \"output_len\": 3}\n");
    r = run("--no-progress --trace %s --json", path);
    CHECK_RUN(r, 0, "\"requests_done\": 1");
    free(r.text);
    write_file(path, "{\"arrival\": 0, \"prompt_len\": 50, \"output_len\": 3}\n\xef\xbb\xbf{\"arrival\": 1, "
                     "\"prompt_len\": 5, \"output_len\": 3}\n");
    r = run("--no-progress --trace %s", path);
    CHECK_RUN(r, 2, ":2: column 1: a UTF-8 byte order mark, allowed only at the start of the file");
    free(r.text);
}

/* Issue 16, item 13: the swept knob is printed once; nothing finished is n/a. */
static void test_table(void) {
    run_out r = run("--requests 100 --no-progress --sweep block-size=16,64");
    CHECK_RUN(r, 0, "block-size");
    CHECK_INT(count(r.text, "\nblock-size "), 1);
    CHECK_INT(count(r.text, "\nblock size "), 0);
    free(r.text);
    r = run("--requests 100 --no-progress --sweep kv-dtype=bf16,fp8");
    CHECK_RUN(r, 0, "kv-dtype");
    CHECK_INT(count(r.text, "\nkv dtype "), 0);
    free(r.text);
    /* a pool of one block admits nothing: every request is refused */
    r = run("--requests 20 --no-progress --pool-blocks 1");
    CHECK_RUN(r, 0, "rejected");
    char x[256];
    CHECK(strstr(row(r.text, "TTFT p50 / p99 (ms)", x, sizeof x), "n/a") != NULL);
    CHECK(strstr(row(r.text, "TPOT p50 / p99 (ms)", x, sizeof x), "n/a") != NULL);
    CHECK(strstr(r.text, "0 / 0") == NULL);
    free(r.text);
    r = run("--requests 20 --no-progress --pool-blocks 1 --json");
    CHECK_RUN(r, 0, "\"ttft_p50_s\": null");
    free(r.text);
}

/* Element idx of the JSON integer array after the first "key". */
static long long json_arr(const char *text, const char *key, int idx) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": [", key);
    const char *p = strstr(text, pat);
    if (!p) return -1;
    p += strlen(pat);
    for (int i = 0; i < idx; i++) {
        p = strchr(p, ',');
        if (!p) return -1;
        p++;
    }
    return strtoll(p, NULL, 10);
}

/* Issue 11: tiers below the pool (metadata mode: slots and transfer lists)
 * and swap preemption. A host tier recovers hits the pool lost on a long
 * multi-turn workload; the levels' hits add up to the total; swap preemption
 * brings every swapped request back and finishes the workload. */
static void test_tiers(void) {
    run_out a = run("--requests 600 --no-progress --kv-mem-gib 2 --json");
    run_out b = run("--requests 600 --no-progress --kv-mem-gib 2 --tier host:16 --json");
    CHECK_RUN(a, 0, "\"tiers\": []");
    CHECK_RUN(b, 0, "\"kind\": \"host\"");
    long long hit_a = json_int(a.text, "prefix_hit_tokens", 0), hit_b = json_int(b.text, "prefix_hit_tokens", 0);
    long long max = json_int(b.text, "prefix_hit_tokens_max", 0);
    CHECK(hit_b > hit_a + hit_a / 5); /* clearly more: the tier keeps what the pool evicted */
    CHECK(hit_b <= max);
    long long t0 = json_arr(b.text, "tier_hit_tokens", 0), pool = json_int(b.text, "pool_hit_tokens", 0);
    CHECK(t0 > 0);
    CHECK_INT(pool + t0, hit_b);
    CHECK_INT(json_arr(a.text, "tier_hit_tokens", 0), 0);
    CHECK(json_arr(b.text, "tier_blocks_in", 0) > 0 && json_arr(b.text, "tier_blocks_out", 0) > 0);
    CHECK_INT(json_int(a.text, "requests_done", 0), json_int(b.text, "requests_done", 0));
    printf("test_sim: 600 requests, 2 GiB pool: prefix hit tokens %lld without a tier, %lld with host:16 "
           "(%lld from the tier; max %lld)\n", hit_a, hit_b, t0, max);
    free(a.text);
    free(b.text);
    /* the SVG's title names each level's share */
    char svg[512], buf[4096];
    snprintf(svg, sizeof svg, "%s/tiers.svg", tmpdir);
    a = run("--requests 200 --no-progress --tier host:8 --svg %s", svg);
    CHECK_RUN(a, 0, "hits by level");
    free(a.text);
    FILE *f = fopen(svg, "r");
    CHECK(f != NULL);
    if (f) {
        size_t got = fread(buf, 1, sizeof buf - 1, f);
        buf[got] = 0;
        fclose(f);
        CHECK(strstr(buf, "; hits: pool ") != NULL && strstr(buf, "% + host ") != NULL);
    }
    /* two levels: a small host tier, then a file tier (simulated at SSD bandwidth) */
    a = run("--requests 600 --no-progress --kv-mem-gib 2 --tier host:2 --tier file:%s:32 --json", tmpdir);
    CHECK_RUN(a, 0, "\"kind\": \"file\"");
    CHECK(json_arr(a.text, "tier_hit_tokens", 0) > 0 && json_arr(a.text, "tier_hit_tokens", 1) > 0);
    free(a.text);
    /* swap preemption on a pool too small for the load: every swapped request
     * comes back, everything finishes */
    a = run("--requests 1500 --no-progress --kv-mem-gib 1 --tier host:8 --preempt swap --json");
    CHECK_RUN(a, 0, "\"preempt\": \"swap\"");
    long long out = json_int(a.text, "swaps_out", 0), in = json_int(a.text, "swaps_in", 0);
    CHECK(out > 0);
    CHECK_INT(in, out);
    /* 1500: a request swapped out in the step that finished it once never came back (a hang) */
    CHECK_INT(json_int(a.text, "requests_done", 0) + json_int(a.text, "rejected", 0), 1500);
    free(a.text);
    /* the same with --verify: host mode, attention over swapped-in and promoted blocks */
    a = run("--requests 120 --no-progress --kv-mem-gib 0.5 --tier host:0.5 --preempt swap --verify");
    CHECK_RUN(a, 0, "swaps out / in");
    char x[256];
    CHECK(strstr(row(a.text, "verify", x, sizeof x), "ok") != NULL);
    CHECK(strstr(row(a.text, "hits by level", x, sizeof x), "+ host") != NULL);
    free(a.text);
    static const struct { const char *args; const char *msg; } bad[] = {
        {"--tier ram:3", "--tier: 'ram:3' is not host:GIB, file:DIR:GIB or redis://HOST:PORT"},
        {"--tier host:1 --net-bw-gbs 3", "--net-bw-gbs has no effect without --tier redis://HOST:PORT"},
        {"--tier host:0", "--tier host:0: '0' is not a number of GiB"},
        {"--tier file:/nonexistent-pkv:3", "/nonexistent-pkv is not a directory"},
        {"--preempt swap", "--preempt swap moves preempted sequences to tier 0: add --tier host:GIB"},
        {"--tier host:1 --prefix-cache off", "--tier needs the prefix cache"},
        {"--tier host:1 --ssd-bw-gbs 3", "--ssd-bw-gbs has no effect without --tier file:DIR:GIB"},
        {"--host-bw-gbs 3", "--host-bw-gbs has no effect without --tier host:GIB"},
        {"--tier host:1 --tier host:1 --tier host:1 --tier host:1", "--tier: at most 3 tiers"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run_out r = run("--requests 10 --no-progress %s", bad[i].args);
        CHECK_RUN(r, 2, bad[i].msg);
        free(r.text);
    }
}

/* JSON number after the n-th (from 0) "key" (a double), or -1. */
static double json_num_at(const char *text, const char *key, int nth) {
    const char *p = json_at(text, key, nth);
    return p ? strtod(p, NULL) : -1;
}

/* Issue 14, item 6: --hybrid, a Gemma-3-like model (1 full-attention layer of
 * every 6, the rest sliding-window layers of W = 1024) as two KV groups. On
 * long contexts the same memory holds more sequences than all layers full
 * attention, so more run at once and the workload finishes sooner; the
 * window group runs without prefix caching while the library refuses it. */
static void test_hybrid(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/long.jsonl", tmpdir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    for (int i = 0; i < 24; i++) fprintf(f, "{\"arrival\": %.2f, \"prompt_len\": 6000, \"output_len\": 64}\n", i * 0.05);
    fclose(f);
    run_out full = run("--trace %s --kv-mem-gib 1 --json --no-progress", path);
    run_out hyb = run("--trace %s --kv-mem-gib 1 --json --no-progress --hybrid", path);
    CHECK_RUN(full, 0, "\"model\": \"full\", \"window\": null");
    CHECK_RUN(hyb, 0, "\"model\": \"hybrid\", \"window\": 1024, \"full_layers\": 11, \"window_layers\": 50");
    CHECK_INT(json_int(hyb.text, "requests_done", 0), 24);
    long long fb = json_arr(hyb.text, "group_pool_blocks", 0), wb = json_arr(hyb.text, "group_pool_blocks", 1);
    CHECK(fb > 0 && wb > 0);
    CHECK_INT(json_int(hyb.text, "pool_blocks", 0), fb + wb);
    CHECK_INT(json_int(hyb.text, "split_seq_tokens", 0), 6064); /* the mean prompt + output */
    /* A block of the full group holds 64 tokens of context in 11 layers, one of
     * the all-full model in 61: the same GiB holds more of them. */
    CHECK(fb > 2 * json_int(full.text, "pool_blocks", 0));
    CHECK(json_arr(hyb.text, "group_peak_blocks", 0) > 0 && json_arr(hyb.text, "group_peak_blocks", 1) > 0);
    CHECK(json_arr(hyb.text, "group_peak_blocks", 1) <= wb);
    /* more requests at once, sooner done, higher throughput */
    CHECK(json_int(hyb.text, "peak_running", 0) > json_int(full.text, "peak_running", 0));
    CHECK(json_num_at(hyb.text, "sim_time_s", 0) < json_num_at(full.text, "sim_time_s", 0));
    CHECK(json_num_at(hyb.text, "throughput_tokens_per_s", 0) > json_num_at(full.text, "throughput_tokens_per_s", 0));
    CHECK(strstr(hyb.text, "\"window_prefix_cache\": true") != NULL); /* the window group caches prefixes */
    free(full.text);
    free(hyb.text);
    /* Chats (the default workload) with room for cached prefixes: the window
     * group serves hits, up to the workload's maximum with enough memory. */
    hyb = run("--requests 300 --no-progress --hybrid --kv-mem-gib 16 --json");
    CHECK_RUN(hyb, 0, "\"window_prefix_cache\": true");
    long long hits = json_int(hyb.text, "prefix_hit_tokens", 0);
    CHECK(hits > 0);
    CHECK_INT(hits, json_int(hyb.text, "prefix_hit_tokens_max", 0));
    free(hyb.text);

    /* the table, both models side by side */
    run_out r = run("--requests 200 --no-progress --sweep model=full,hybrid --kv-mem-gib 1");
    CHECK_RUN(r, 0, "\nmodel ");
    char x[256];
    CHECK(strstr(row(r.text, "pool blocks", x, sizeof x), "full ") != NULL);
    CHECK(strstr(x, " + window ") != NULL);
    CHECK(strstr(row(r.text, "peak blocks", x, sizeof x), "window") != NULL);
    CHECK(strstr(r.text, "window layers the last 1024") != NULL);
    CHECK(strstr(row(r.text, "prefix cache", x, sizeof x), "on") != NULL);
    CHECK(strstr(r.text, "no prefix caching (library)") == NULL);
    free(r.text);
    /* a smaller window, a fleet behind the prefix-aware router */
    r = run("--requests 150 --no-progress --hybrid --window 256 --layers 12 --instances 2 --router prefix-aware --json");
    CHECK_RUN(r, 0, "\"window\": 256, \"full_layers\": 2, \"window_layers\": 10");
    CHECK_INT(json_int(r.text, "requests_done", 0), 150);
    free(r.text);

    static const struct { const char *args; const char *msg; } bad[] = {
        {"--window 512", "--window sets the hybrid model's sliding window and has no effect without --hybrid"},
        {"--hybrid --window 0", "--window: '0' is not an integer in 1..16777216"},
        {"--hybrid --layers 1", "--hybrid needs --layers >= 2"},
        {"--hybrid --pool-blocks 100", "--pool-blocks (or --sweep pool-blocks) sizes one pool"},
        {"--hybrid --sweep pool-blocks=100,200", "--pool-blocks (or --sweep pool-blocks) sizes one pool"},
        {"--sweep model=full,hybrid --pool-blocks 100", "--sweep model=hybrid splits --kv-mem-gib"},
        {"--hybrid --tier host:1", "--hybrid does not support --tier"},
        {"--hybrid --preempt swap", "--hybrid does not support --preempt swap"},
        {"--hybrid --verify", "--hybrid does not support --verify"},
        {"--hybrid --sweep model=full,hybrid", "--hybrid and --sweep model=... both choose the model"},
        {"--sweep model=full,gemma", "model: 'gemma' is not full or hybrid"},
        {"--hybrid --hybrid", "--hybrid given twice"},
        {"--hybrid --kv-mem-gib 0.001", "--kv-mem-gib 0.001: cannot be split between the hybrid model's pools"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = run("--requests 20 --no-progress %s", bad[i].args);
        CHECK_RUN(r, 2, bad[i].msg);
        CHECK(strstr(r.text, "requests done") == NULL);
        free(r.text);
    }
}

int main(int argc, char **argv) {
    (void)argc;
    if (clirun_find_bin(argv[0], "test_sim")) return 1;
    static char cmdbin[1200];
    snprintf(cmdbin, sizeof cmdbin, "%s sim", bin);
    bin = cmdbin;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/pkv_test_sim.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_mooncake_exact();
    test_mooncake_bounded();
    test_capacity_sweep();
    test_fleet();
    test_bad_lines();
    test_ignored_options();
    test_messages();
    test_outputs_first();
    test_trace_files();
    test_table();
    test_tiers();
    test_hybrid();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "test_sim: could not remove %s\n", tmpdir);
    return test_report("test_sim");
}
