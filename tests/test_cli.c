/* The pkv program from the outside: every subcommand's --help, pkv sim (table,
 * determinism, --json, --sweep, --svg, --verify, --trace and malformed traces),
 * pkv attn on every case of the project's vectors (and the shared ones when
 * present) plus shape/dtype/file errors, sparse attention, every dtype pair,
 * output paths that would overwrite inputs; pkv info. PKV_BIN names the program
 * (make test sets it), PKV_VECTORS the shared vectors. */
#include <ctype.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "npy.h"
#include "internal.h"
#include "test.h"
#include "common/clirun.h"

static char tmpdir[256];







/* ---- a small strict JSON validator (the --json output must parse) ---- */
static const char *jv(const char *p, int depth);
static const char *jws(const char *p) {
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    return p;
}
static const char *jstr(const char *p) {
    if (*p++ != '"') return NULL;
    while (*p && *p != '"') {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p == '\\') p++;
        if (*p) p++;
    }
    return *p == '"' ? p + 1 : NULL;
}
static const char *jv(const char *p, int depth) {
    p = jws(p);
    if (depth > 32) return NULL;
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        int obj = *p == '{';
        p = jws(p + 1);
        if (*p == close) return p + 1;
        for (;;) {
            if (obj) {
                p = jstr(jws(p));
                if (!p) return NULL;
                p = jws(p);
                if (*p++ != ':') return NULL;
            }
            p = jv(p, depth + 1);
            if (!p) return NULL;
            p = jws(p);
            if (*p == ',') { p++; continue; }
            return *p == close ? p + 1 : NULL;
        }
    }
    if (*p == '"') return jstr(p);
    if (!strncmp(p, "true", 4)) return p + 4;
    if (!strncmp(p, "false", 5)) return p + 5;
    if (!strncmp(p, "null", 4)) return p + 4;
    char *end;
    strtod(p, &end);
    return end == p ? NULL : end;
}
static int json_valid(const char *s) {
    const char *p = jv(s, 0);
    return p && *jws(p) == 0;
}


static void test_help(void) {
    run_out r = run("--help");
    CHECK_RUN(r, 0, "usage: pkv");
    free(r.text);
    const char *cmds[] = {"sim", "attn", "info"};
    for (int i = 0; i < 3; i++) {
        r = run("%s --help", cmds[i]);
        CHECK_RUN(r, 0, "usage: pkv");
        free(r.text);
    }
    r = run("bogus");
    CHECK_RUN(r, 2, "unknown command");
    free(r.text);
    r = run("%s", "");
    CHECK_INT(r.status, 2);
    free(r.text);
}

static void test_info(void) {
    run_out r = run("info");
    CHECK_RUN(r, 0, "pagedkv " PKV_VERSION_STRING);
    CHECK(strstr(r.text, "pkv_attn uses:") != NULL);
    CHECK(strstr(r.text, "fp8") != NULL);
    CHECK(strstr(r.text, "656") != NULL);
    free(r.text);
    r = run("info --bogus");
    CHECK_RUN(r, 2, "unknown option");
    free(r.text);
    /* every level PKV_ISA takes is listed, amx included */
    r = run("info --help");
    CHECK_RUN(r, 0, "PKV_ISA=scalar|avx2|avx512|amx");
    free(r.text);
    /* an unknown PKV_ISA is reported, naming the value, not silently ignored */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "PKV_ISA=bogus %s info 2>&1", bin);
    r = run_sh(cmd);
    CHECK_RUN(r, 0, "warning: PKV_ISA=bogus is not one of scalar, avx2, avx512, amx");
    free(r.text);
    snprintf(cmd, sizeof cmd, "PKV_ISA=scalar %s info 2>&1", bin);
    r = run_sh(cmd);
    CHECK_RUN(r, 0, "pkv_attn uses: scalar (PKV_ISA=scalar)");
    CHECK(strstr(r.text, "warning") == NULL);
    free(r.text);
}

static void test_sim_table(void) {
    const char *small = "sim --requests 300 --no-progress";
    run_out a = run("%s", small), b = run("%s --seed 1", small), c = run("%s --seed 2", small);
    CHECK_RUN(a, 0, "requests done");
    char x[256], y[256];
    CHECK(strstr(row(a.text, "requests done", x, sizeof x), "300") != NULL);
    /* deterministic: every KV metric equal for the same seed, the workload differs for another */
    const char *rows_same[] = {"tokens generated", "evictions", "preemptions", "peak blocks",
                               "prefix hit rate", "copy-on-write copies", "steps", "TTFT p50 / p99 (ms)"};
    for (size_t i = 0; i < sizeof rows_same / sizeof rows_same[0]; i++) {
        row(a.text, rows_same[i], x, sizeof x);
        row(b.text, rows_same[i], y, sizeof y);
        CHECK(x[0] != 0);
        if (strcmp(x, y)) TEST_FAIL_("row %s differs between equal seeds: '%s' vs '%s'", rows_same[i], x, y);
    }
    CHECK(strcmp(row(a.text, "tokens generated", x, sizeof x), row(c.text, "tokens generated", y, sizeof y)) != 0);
    /* a prefix cache that works on this workload hits */
    row(a.text, "prefix hit rate", x, sizeof x);
    CHECK(atof(x) > 5.0);
    free(a.text);
    free(b.text);
    free(c.text);
    /* fp8 fits more tokens in the same memory */
    a = run("sim --requests 100 --no-progress --kv-dtype fp8 --kv-mem-gib 1");
    b = run("sim --requests 100 --no-progress --kv-dtype bf16 --kv-mem-gib 1");
    CHECK_RUN(a, 0, "fp8 (40016 B/token)");
    CHECK_RUN(b, 0, "bf16 (70272 B/token)");
    CHECK(atoi(row(a.text, "pool blocks", x, sizeof x)) > atoi(row(b.text, "pool blocks", y, sizeof y)));
    free(a.text);
    free(b.text);
    /* a tiny pool forces preemptions and evictions, and still finishes everything */
    a = run("sim --requests 200 --no-progress --pool-blocks 120 --rate 20");
    CHECK_RUN(a, 0, "requests done");
    CHECK(atoi(row(a.text, "preemptions", x, sizeof x)) > 0);
    CHECK(strstr(row(a.text, "requests done", x, sizeof x), "200") != NULL);
    free(a.text);
    /* a pool too small for some chats: those are refused, the rest finish */
    a = run("sim --requests 100 --no-progress --pool-blocks 20 --block-size 16");
    CHECK_RUN(a, 0, "rejected");
    free(a.text);
}

static void test_sim_outputs(void) {
    char svg[512];
    snprintf(svg, sizeof svg, "%s/chart.svg", tmpdir);
    run_out r = run("sim --requests 200 --no-progress --json --svg %s", svg);
    CHECK_RUN(r, 0, "\"runs\"");
    CHECK(json_valid(r.text));
    CHECK(strstr(r.text, "\"prefix_hit_rate\"") != NULL);
    CHECK(strstr(r.text, "\"library_us_per_step\"") != NULL);
    free(r.text);
    FILE *f = fopen(svg, "r");
    CHECK(f != NULL);
    if (f) {
        static char buf[1 << 20];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        CHECK(!strncmp(buf, "<svg xmlns=\"http://www.w3.org/2000/svg\"", 39));
        CHECK(n > 7 && !strcmp(buf + n - 7, "</svg>\n"));
        int lines = 0;
        for (const char *p = buf; (p = strstr(p, "<polyline")) != NULL; p++) lines++;
        CHECK_INT(lines, 4);
        CHECK(strstr(buf, "blocks cached") && strstr(buf, "simulated time (s)") && strstr(buf, "hit rate"));
    }
    /* a renderer, when there is one, must accept it */
    if (system("command -v rsvg-convert >/dev/null 2>&1") == 0) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rsvg-convert %s -o %s/chart.png", svg, tmpdir);
        CHECK_INT(system(cmd), 0);
    }
    /* sweeps: one table, one column per value */
    r = run("sim --requests 200 --no-progress --sweep block-size=1,16,64,256");
    CHECK_RUN(r, 0, "block-size");
    char x[512];
    row(r.text, "block-size", x, sizeof x);
    CHECK(strstr(x, "1") && strstr(x, "16") && strstr(x, "64") && strstr(x, "256"));
    row(r.text, "requests done", x, sizeof x);
    CHECK(!strcmp(x, "   200   200   200   200") || strstr(x, "200") != NULL);
    /* waste grows with the block size */
    row(r.text, "internal waste", x, sizeof x);
    double w[4];
    CHECK_INT(sscanf(x, " %lf%% %lf%% %lf%% %lf%%", &w[0], &w[1], &w[2], &w[3]), 4);
    CHECK(w[0] <= w[1] && w[1] <= w[2] && w[2] <= w[3]);
    free(r.text);
    r = run("sim --requests 200 --no-progress --sweep prefix-cache=on,off --json");
    CHECK_RUN(r, 0, "\"sweep\": \"prefix-cache\"");
    CHECK(json_valid(r.text));
    free(r.text);
    r = run("sim --requests 150 --no-progress --sweep pool-blocks=150,400");
    CHECK_RUN(r, 0, "pool-blocks");
    free(r.text);
}

static void test_sim_verify(void) {
    run_out r = run("sim --requests 150 --no-progress --verify --pool-blocks 150 --rate 10");
    CHECK_RUN(r, 0, "verify");
    char x[256];
    row(r.text, "verify", x, sizeof x);
    CHECK(strstr(x, " ok") != NULL);
    free(r.text);
    r = run("sim --requests 60 --no-progress --verify-fast --block-size 16 --pool-blocks 400 --rate 10");
    CHECK_RUN(r, 0, "verify");
    free(r.text);
}

static void test_sim_trace(void) {
    run_out r = run("sim --no-progress --trace tests/data/trace_small.jsonl --pool-blocks 200");
    CHECK_RUN(r, 0, "trace tests/data/trace_small.jsonl");
    char x[256];
    CHECK(strstr(row(r.text, "requests done", x, sizeof x), "200") != NULL);
    free(r.text);
    r = run("sim --no-progress --trace tests/data/trace_small.jsonl --verify --pool-blocks 200");
    CHECK_RUN(r, 0, "verify");
    free(r.text);
    static const struct { const char *text; const char *msg; } bad[] = {
        {"{\"arrival\": 0, \"prompt_len\": 5, \"output_len\": 3}\n{\"arrival\": 1, \"prompt_len\": 5}\n",
         ":2: column 33: missing \"output_len\""},
        {"\n\n{\"arrival\": 0.5, \"prompt_len\": 5, \"output_len\": 3, \"bogus\": 1}\n", ":3: column 60: unknown key \"bogus\""},
        {"{\"arrival\": -1, \"prompt_len\": 5, \"output_len\": 3}\n", ":1: column 15: arrival must be >= 0"},
        {"{\"arrival\": 0, \"prompt_len\": 2.5, \"output_len\": 3}\n", ":1: column 33: prompt_len must be an integer"},
        {"{\"arrival\": 0, \"prompt\": [1, 2,], \"output_len\": 3}\n", ":1: column 32: expected a number"},
        {"{\"arrival\": 0, \"prompt\": [], \"output_len\": 3}\n", ":1:"},
        {"{\"arrival\": 0, \"prompt_len\": 5, \"output_len\": 3} x\n", ":1: column 50: trailing characters"},
        {"{\"arrival\": 0, \"prompt_len\": 5, \"output_len\": 3\n", ":1:"},
        {"[1, 2]\n", ":1: column 1: expected a JSON object"},
        {"{\"arrival\": 2, \"prompt_len\": 5, \"output_len\": 3}\n{\"arrival\": 1, \"prompt_len\": 5, \"output_len\": 3}\n",
         ":2: arrival 1 is earlier"},
        {"{\"arrival\": 0, \"prompt_len\": 5, \"prompt\": [1], \"output_len\": 3}\n", ":1:"},
        {"{\"arrival\": 0, \"prompt_len\": 5, \"output_len\": 3, \"n\": 9}\n", ":1:"},
        {"# only a comment\n", "no requests"},
    };
    char path[512];
    snprintf(path, sizeof path, "%s/bad.jsonl", tmpdir);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, bad[i].text);
        r = run("sim --no-progress --trace %s", path);
        CHECK_RUN(r, 2, bad[i].msg);
        free(r.text);
    }
    r = run("sim --no-progress --trace %s/does-not-exist.jsonl", tmpdir);
    CHECK_RUN(r, 2, "cannot open");
    free(r.text);
}

static void test_sim_flags(void) {
    static const struct { const char *args; const char *msg; } bad[] = {
        {"--bogus", "unknown option"},
        {"--block-size 0", "block-size"},
        {"--block-size 5000", "block-size"},
        {"--block-size", "needs a value"},
        {"--kv-dtype int8", "kv-dtype"},
        {"--prefix-cache maybe", "prefix-cache"},
        {"--sweep block-size", "--sweep"},
        {"--sweep colour=1,2", "unknown key"},
        {"--sweep block-size=16,,64", "empty value"},
        {"--sweep block-size=16,x", "block-size"},
        {"--requests -3", "--requests"},
        {"--rate 0", "--rate"},
        {"--preempt swap", "tier"},
        {"--watermark 0.9", "watermark"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run_out r = run("sim --requests 10 --no-progress %s", bad[i].args);
        CHECK_RUN(r, 2, bad[i].msg);
        free(r.text);
    }
    run_out r = run("sim --requests 10 --no-progress --svg /nonexistent-dir/x.svg");
    CHECK_RUN(r, 2, "cannot open");
    free(r.text);
}

/* ---- pkv attn ---- */
typedef struct vcase {
    char name[64], dtype[8], kv_dtype[8];
    int v_shared, causal, dv, sparse, sink;
    char scale[40];
} vcase;

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

static int read_cases(const char *dir, vcase *cases, int cap) {
    char path[600];
    snprintf(path, sizeof path, "%s/cases.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < cap) {
        if (line[0] == '#' || isspace((unsigned char)line[0])) continue;
        vcase *c = &cases[n];
        memset(c, 0, sizeof *c);
        char *save = NULL, *tok = strtok_r(line, " \n", &save);
        snprintf(c->name, sizeof c->name, "%s", tok);
        while ((tok = strtok_r(NULL, " \n", &save)) != NULL) {
            char *eq = strchr(tok, '=');
            if (!eq) continue;
            *eq = 0;
            const char *v = eq + 1;
            if (!strcmp(tok, "v_shared")) c->v_shared = atoi(v);
            else if (!strcmp(tok, "causal")) c->causal = atoi(v);
            else if (!strcmp(tok, "dv")) c->dv = atoi(v);
            else if (!strcmp(tok, "softmax_scale")) snprintf(c->scale, sizeof c->scale, "%s", v);
            else if (!strcmp(tok, "dtype")) snprintf(c->dtype, sizeof c->dtype, "%s", v);
            else if (!strcmp(tok, "kv_dtype")) snprintf(c->kv_dtype, sizeof c->kv_dtype, "%s", v);
        }
        if (!c->kv_dtype[0]) snprintf(c->kv_dtype, sizeof c->kv_dtype, "%s", c->dtype);
        snprintf(path, sizeof path, "%s/%s.indices.npy", dir, c->name);
        c->sparse = file_exists(path);
        snprintf(path, sizeof path, "%s/%s.attn_sink.npy", dir, c->name);
        c->sink = file_exists(path);
        n++;
    }
    fclose(f);
    return n;
}

/* The pkv attn command line of a vector case (outputs in tmpdir), then extra. */
static void attn_args(char *buf, size_t n, const char *dir, const vcase *c, const char *extra) {
    size_t o = (size_t)snprintf(buf, n, "attn --q %s/%s.q.npy --k-cache %s/%s.k_cache.npy", dir, c->name, dir, c->name);
#define ADD(...) do { if (o < n) o += (size_t)snprintf(buf + o, n - o, __VA_ARGS__); } while (0)
    if (!c->v_shared) ADD(" --v-cache %s/%s.v_cache.npy", dir, c->name);
    if (c->sparse) ADD(" --indices %s/%s.indices.npy", dir, c->name);
    else ADD(" --block-table %s/%s.block_table.npy --seqlens %s/%s.cache_seqlens.npy", dir, c->name, dir, c->name);
    if (c->sink) ADD(" --attn-sink %s/%s.attn_sink.npy", dir, c->name);
    ADD(" --scale %s --dv %d%s --q-dtype %s", c->scale, c->dv, c->causal ? " --causal" : "", c->dtype);
    if (strcmp(c->kv_dtype, "fp8") != 0) ADD(" --kv-dtype %s", c->kv_dtype);
    ADD(" --out %s/out.npy --lse %s/lse.npy %s", tmpdir, tmpdir, extra);
#undef ADD
}

/* The project's vectors (tests/vectors) or the shared ones. */
static void vectors_dirs(char *own, char *shared, size_t n) {
    const char *env = getenv("PKV_OWN_VECTORS");
    if (env && *env) snprintf(own, n, "%s", env);
    else snprintf(own, n, "tests/vectors");
    env = getenv("PKV_VECTORS");
    snprintf(shared, n, "%s", env && *env ? env : "../shared/vectors");
}

/* Every case of dir through pkv attn (oracle: within 1e-5 of the float64 expected
 * values and the same numbers in the written file; fast: FlashMLA-sized bound). */
static void attn_vectors_dir(const char *dir) {
    vcase cases[32];
    int n = read_cases(dir, cases, 32);
    CHECK(n > 0);
    char args[8192], extra[1400];
    for (int i = 0; i < n; i++) {
        const vcase *c = &cases[i];
        snprintf(extra, sizeof extra, "--expect %s/%.63s.out.npy --expect-lse %s/%.63s.lse.npy", dir, c->name, dir, c->name);
        attn_args(args, sizeof args, dir, c, extra);
        run_out r = run("%s", args);
        CHECK_RUN(r, 0, "attn (oracle)");
        if (!strstr(r.text, "out vs") || !strstr(r.text, "lse vs") || strstr(r.text, "FAIL"))
            TEST_FAIL_("case %s: %s", c->name, r.text);
        free(r.text);
        /* the written files hold what --expect compared */
        char p[600];
        snprintf(p, sizeof p, "%s/out.npy", tmpdir);
        npy_array got = {0}, want = {0};
        char err[200];
        CHECK_OK(npy_load(p, &got, err, sizeof err));
        snprintf(p, sizeof p, "%s/%.63s.out.npy", dir, c->name);
        CHECK_OK(npy_load(p, &want, err, sizeof err));
        CHECK_INT(got.dtype, NPY_F4);
        CHECK_INT(got.count, want.count);
        if (got.count == want.count && got.dtype == NPY_F4 && want.dtype == NPY_F8) {
            double m = 0;
            for (size_t k = 0; k < got.count; k++) {
                double d = fabs((double)((const float *)got.data)[k] - ((const double *)want.data)[k]);
                if (d > m) m = d;
            }
            CHECK(m < 1e-5);
        }
        npy_free(&got);
        npy_free(&want);
        /* the fast path, within a bf16-sized tolerance */
        snprintf(extra, sizeof extra, "--fast --expect %s/%.63s.out.npy --tol 5e-3", dir, c->name);
        attn_args(args, sizeof args, dir, c, extra);
        r = run("%s", args);
        CHECK_RUN(r, 0, "attn (fast)");
        free(r.text);
    }
}

static void test_attn_vectors(void) {
    static char own[512], shared[512];
    vectors_dirs(own, shared, sizeof own);
    attn_vectors_dir(own);
    char probe[600];
    snprintf(probe, sizeof probe, "%s/cases.txt", shared);
    if (file_exists(probe)) attn_vectors_dir(shared);
    else printf("test_cli: no shared vectors at %s: attn cross-check skipped\n", shared);
    const char *dir = own;
    vcase cases[32];
    const int n = read_cases(dir, cases, 32);
    /* errors, each with a clear message and exit 2 (or 1 for a failed --expect) */
    const vcase *mla = NULL, *gqa = NULL;
    for (int i = 0; i < n; i++) {
        if (!strcmp(cases[i].name, "mla_decode_bf16")) mla = &cases[i];
        if (!strcmp(cases[i].name, "gqa_sepv_f32")) gqa = &cases[i];
    }
    CHECK(mla && gqa);
    if (!mla || !gqa) return;
    char args[8192], extra[1400];
    vcase c = *mla;
    snprintf(c.dtype, sizeof c.dtype, "f32");
    snprintf(c.kv_dtype, sizeof c.kv_dtype, "f32");
    attn_args(args, sizeof args, dir, &c, "");
    run_out r = run("%s", args);
    CHECK_RUN(r, 2, "does not match --q-dtype f32");
    free(r.text);
    snprintf(args, sizeof args, "attn --q %s/mla_decode_bf16.q.npy --k-cache %s/mla_decode_bf16.k_cache.npy "
             "--block-table %s/mla_decode_bf16.block_table.npy --seqlens %s/mla_decode_bf16.cache_seqlens.npy "
             "--scale 0.07 --dv 512 --dtype f32 --out %s/o.npy", dir, dir, dir, dir, tmpdir);
    r = run("%s", args);
    CHECK_RUN(r, 2, "does not match --dtype f32");
    free(r.text);
    /* bf16 bits without --dtype */
    snprintf(args, sizeof args, "attn --q %s/mla_decode_bf16.q.npy --k-cache %s/mla_decode_bf16.k_cache.npy "
             "--block-table %s/mla_decode_bf16.block_table.npy --seqlens %s/mla_decode_bf16.cache_seqlens.npy "
             "--scale 0.07 --dv 512 --out %s/o.npy", dir, dir, dir, dir, tmpdir);
    r = run("%s", args);
    CHECK_RUN(r, 2, "--dtype bf16");
    free(r.text);
    /* q of one case, cache of another: head dims differ */
    snprintf(args, sizeof args, "attn --q %s/gqa_sepv_f32.q.npy --k-cache %s/mla_peaky_f32.k_cache.npy "
             "--block-table %s/gqa_sepv_f32.block_table.npy --seqlens %s/gqa_sepv_f32.cache_seqlens.npy "
             "--scale 0.1 --out %s/o.npy", dir, dir, dir, dir, tmpdir);
    r = run("%s", args);
    CHECK_RUN(r, 2, "head dim mismatch");
    free(r.text);
    /* a float array as the block table */
    snprintf(args, sizeof args, "attn --q %s/gqa_sepv_f32.q.npy --k-cache %s/gqa_sepv_f32.k_cache.npy "
             "--block-table %s/gqa_sepv_f32.cache_seqlens.npy --seqlens %s/gqa_sepv_f32.cache_seqlens.npy "
             "--scale 0.1 --out %s/o.npy", dir, dir, dir, dir, tmpdir);
    r = run("%s", args);
    CHECK_RUN(r, 2, "expected 2 dims");
    free(r.text);
    /* the wrong batch of seqlens */
    snprintf(args, sizeof args, "attn --q %s/gqa_sepv_f32.q.npy --k-cache %s/gqa_sepv_f32.k_cache.npy "
             "--block-table %s/gqa_sepv_f32.block_table.npy --seqlens %s/mha_f16_empty.cache_seqlens.npy "
             "--scale 0.1 --out %s/o.npy", dir, dir, dir, dir, tmpdir);
    r = run("%s", args);
    CHECK_RUN(r, 2, "batch mismatch");
    free(r.text);
    /* a v_cache that does not match k_cache */
    snprintf(args, sizeof args, "attn --q %s/gqa_sepv_f32.q.npy --k-cache %s/gqa_sepv_f32.k_cache.npy "
             "--v-cache %s/block1_causal_f32.v_cache.npy --block-table %s/gqa_sepv_f32.block_table.npy "
             "--seqlens %s/gqa_sepv_f32.cache_seqlens.npy --scale 0.1 --out %s/o.npy", dir, dir, dir, dir, dir, tmpdir);
    r = run("%s", args);
    CHECK_RUN(r, 2, "must match k_cache");
    free(r.text);
    /* a missing flag, a non-.npy file */
    r = run("attn --q x.npy");
    CHECK_RUN(r, 2, "missing --k-cache");
    free(r.text);
    snprintf(args, sizeof args, "attn --q %s/cases.txt --k-cache %s/gqa_sepv_f32.k_cache.npy "
             "--block-table %s/gqa_sepv_f32.block_table.npy --seqlens %s/gqa_sepv_f32.cache_seqlens.npy "
             "--scale 0.1 --out %s/o.npy", dir, dir, dir, dir, tmpdir);
    r = run("%s", args);
    CHECK_RUN(r, 2, "--q");
    CHECK(strstr(r.text, "cases.txt: not a .npy file") != NULL);
    free(r.text);
    /* --expect against perturbed values fails with exit 1, a wrong shape with exit 2 */
    char p[600], q[600], e[200];
    snprintf(p, sizeof p, "%s/%s.out.npy", dir, gqa->name);
    npy_array want = {0};
    CHECK_OK(npy_load(p, &want, e, sizeof e));
    if (want.dtype == NPY_F8) {
        double *d = (double *)want.owned;
        d[want.count / 2] += 0.01;
        snprintf(q, sizeof q, "%s/perturbed.npy", tmpdir);
        CHECK_OK(npy_save(q, NPY_F8, want.ndim, want.shape, want.data, e, sizeof e));
        snprintf(extra, sizeof extra, "--expect %s", q);
        attn_args(args, sizeof args, dir, gqa, extra);
        r = run("%s", args);
        char needle[64];
        snprintf(needle, sizeof needle, "1 of %zu outside tolerance", want.count);
        const char *nd = needle;
        CHECK_RUN(r, 1, nd);
        free(r.text);
        snprintf(extra, sizeof extra, "--expect %s/mha_f16_empty.out.npy", dir);
        attn_args(args, sizeof args, dir, gqa, extra);
        r = run("%s", args);
        CHECK_RUN(r, 2, "but out is");
        free(r.text);
    }
    npy_free(&want);
}

/* The one place this file builds pkv_attn_args: one MLA sequence (d 576, dv
 * 512, h_kv 1, s_q 1, scale 0.0722); the caller points the arrays. */
static void mla_args(pkv_attn_args *a, int32_t h_q, int32_t bs, int32_t mbps, int32_t nb, int32_t q_dtype,
                     int32_t kv_dtype) {
    pkv_attn_args_init(a);
    a->batch = 1;
    a->s_q = 1;
    a->h_q = h_q;
    a->h_kv = 1;
    a->d = 576;
    a->dv = 512;
    a->block_size = bs;
    a->max_blocks_per_seq = mbps;
    a->num_blocks = nb;
    a->softmax_scale = 0.0722f;
    a->q_dtype = q_dtype;
    a->kv_dtype = kv_dtype;
}

/* Writes a small .npy into tmpdir/name.npy (path returned in buf). */
static const char *tmp_npy(char *buf, size_t n, const char *name, int dtype, int ndim, const int64_t *shape,
                           const void *data) {
    char e[200];
    snprintf(buf, n, "%s/%s.npy", tmpdir, name);
    CHECK_OK(npy_save(buf, dtype, ndim, shape, data, e, sizeof e));
    return buf;
}

/* A file's bytes, malloc'd (*len set); NULL when unreadable. */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, got;
    char tmp[4096];
    while ((got = fread(tmp, 1, sizeof tmp, f)) > 0) {
        if (n + got > cap) buf = realloc(buf, cap = (n + got) * 2);
        memcpy(buf + n, tmp, got);
        n += got;
    }
    fclose(f);
    *len = n;
    return buf ? buf : calloc(1, 1);
}

/* Outputs that would overwrite an input or each other are refused before any
 * work, inputs untouched; --expect needs no --out; one form for file errors;
 * --threads without --fast and PKV_ISA=bogus are reported. */
static void test_attn_cli_edges(void) {
    char own[512], shared[512];
    vectors_dirs(own, shared, sizeof own);
    vcase cases[32];
    const int n = read_cases(own, cases, 32);
    const vcase *gqa = NULL;
    for (int i = 0; i < n; i++)
        if (!strcmp(cases[i].name, "gqa_sepv_f32")) gqa = &cases[i];
    CHECK(gqa != NULL);
    if (!gqa) return;
    /* copies of the inputs in tmpdir, so a failing check cannot damage the vectors */
    const char *parts[5] = {"q", "k_cache", "v_cache", "block_table", "cache_seqlens"};
    char src[700], dst[700], cmd[2000];
    for (int i = 0; i < 5; i++) {
        snprintf(src, sizeof src, "%s/gqa_sepv_f32.%s.npy", own, parts[i]);
        snprintf(dst, sizeof dst, "%s/in_%s.npy", tmpdir, parts[i]);
        snprintf(cmd, sizeof cmd, "cp '%s' '%s'", src, dst);
        CHECK_INT(system(cmd), 0);
    }
    char base[1800];
    snprintf(base, sizeof base, "attn --q %s/in_q.npy --k-cache %s/in_k_cache.npy --v-cache %s/in_v_cache.npy "
             "--block-table %s/in_block_table.npy --seqlens %s/in_cache_seqlens.npy --scale 0.125",
             tmpdir, tmpdir, tmpdir, tmpdir, tmpdir);
    size_t qlen0 = 0, qlen1 = 0;
    snprintf(src, sizeof src, "%s/in_q.npy", tmpdir);
    char *q0 = slurp(src, &qlen0);
    /* the same path, another spelling of it, a hard link, and --out == --lse */
    snprintf(dst, sizeof dst, "%s/link_q.npy", tmpdir);
    CHECK_INT(link(src, dst), 0);
    const char *outs[4][2] = {{"--out", "in_q.npy"}, {"--lse", "./in_block_table.npy"}, {"--out", "link_q.npy"},
                              {"--lse", "o.npy --out o.npy"}};
    const char *needles[4] = {"the same file as --q", "the same file as --block-table", "the same file as --q",
                              "the same file as --out"};
    for (int i = 0; i < 4; i++) {
        char tail[1200];
        if (i == 1) snprintf(tail, sizeof tail, "%s %s/../%s/%s", outs[i][0], tmpdir, strrchr(tmpdir, '/') + 1, outs[i][1] + 2);
        else if (i == 3) snprintf(tail, sizeof tail, "--lse %s/o.npy --out %s/./o.npy", tmpdir, tmpdir);
        else snprintf(tail, sizeof tail, "%s %s/%s", outs[i][0], tmpdir, outs[i][1]);
        run_out r = run("%s %s", base, tail);
        CHECK_RUN(r, 2, needles[i]);
        free(r.text);
    }
    char *q1 = slurp(src, &qlen1);
    CHECK(q0 && q1 && qlen0 == qlen1 && memcmp(q0, q1, qlen0) == 0); /* the input survived */
    free(q0);
    free(q1);
    /* --expect alone: a check, no output file */
    snprintf(dst, sizeof dst, "%s/none.npy", tmpdir);
    run_out r = run("%s --expect %s/gqa_sepv_f32.out.npy --expect-lse %s/gqa_sepv_f32.lse.npy", base, own, own);
    CHECK_RUN(r, 0, "out vs");
    CHECK(strstr(r.text, "PASS") != NULL && strstr(r.text, "wrote") == NULL);
    free(r.text);
    /* --threads without --fast names it; with --fast it is fine */
    r = run("%s --threads 2", base);
    CHECK_RUN(r, 2, "--threads 2 applies to --fast only");
    free(r.text);
    r = run("%s --threads 2 --fast", base);
    CHECK_RUN(r, 0, "attn (fast)");
    free(r.text);
    /* an unknown PKV_ISA is reported by the fast path */
    snprintf(cmd, sizeof cmd, "PKV_ISA=bogus %s %s --fast 2>&1", bin, base);
    r = run_sh(cmd);
    CHECK_RUN(r, 0, "warning: PKV_ISA=bogus is not one of scalar, avx2, avx512, amx");
    free(r.text);
    /* file errors: "FLAG FILE: reason" */
    r = run("attn --q %s/nope.npy --k-cache x --block-table x --seqlens x --scale 1 --out %s/o.npy", tmpdir, tmpdir);
    CHECK_RUN(r, 2, "--q");
    CHECK(strstr(r.text, "nope.npy: No such file or directory") != NULL);
    free(r.text);
    r = run("attn --q %s --k-cache x --block-table x --seqlens x --scale 1", tmpdir);
    CHECK(strstr(r.text, ": Is a directory") != NULL);
    free(r.text);
    const int32_t none[1] = {0};
    const int64_t shape20[2] = {2, 0};
    char bt[700];
    tmp_npy(bt, sizeof bt, "bt20", NPY_I4, 2, shape20, none);
    r = run("attn --q %s/in_q.npy --k-cache %s/in_k_cache.npy --v-cache %s/in_v_cache.npy --block-table %s "
            "--seqlens %s/in_cache_seqlens.npy --scale 0.125", tmpdir, tmpdir, tmpdir, bt, tmpdir);
    CHECK_RUN(r, 2, "--block-table");
    CHECK(strstr(r.text, "bt20.npy: shape [2, 0] has an empty dimension") != NULL);
    free(r.text);
    /* an option where a value belongs */
    r = run("%s --out --lse", base);
    CHECK_RUN(r, 2, "--out needs a value, but is followed by the option '--lse'");
    free(r.text);
}

/* Sparse attention and attn_sink through pkv attn, and its refusals. */
static void test_attn_sparse(void) {
    char own[512], shared[512];
    vectors_dirs(own, shared, sizeof own);
    char base[1500];
    snprintf(base, sizeof base, "attn --q %s/sparse_sink_bf16.q.npy --k-cache %s/sparse_sink_bf16.k_cache.npy "
             "--scale 0.125 --dtype bf16", own, own);
    run_out r = run("%s --indices %s/sparse_sink_bf16.indices.npy --attn-sink %s/sparse_sink_bf16.attn_sink.npy "
                    "--expect %s/sparse_sink_bf16.out.npy --expect-lse %s/sparse_sink_bf16.lse.npy", base, own, own,
                    own, own);
    CHECK_RUN(r, 0, "topk=24 attn_sink");
    CHECK(strstr(r.text, "FAIL") == NULL);
    free(r.text);
    /* without the sink the expected out differs (the sink matters), lse does not */
    r = run("%s --indices %s/sparse_sink_bf16.indices.npy --expect-lse %s/sparse_sink_bf16.lse.npy --expect "
            "%s/sparse_sink_bf16.out.npy", base, own, own, own);
    CHECK_RUN(r, 1, "lse vs");
    CHECK(strstr(r.text, "lse vs") && strstr(strstr(r.text, "lse vs"), "PASS"));
    free(r.text);
    r = run("%s --indices %s/sparse_sink_bf16.indices.npy --block-table %s/sparse_sink_bf16.block_table.npy", base,
            own, own);
    CHECK_RUN(r, 2, "--block-table: not read with --indices");
    free(r.text);
    r = run("%s --indices %s/sparse_sink_bf16.indices.npy --causal", base, own);
    CHECK_RUN(r, 2, "--causal does not apply to --indices");
    free(r.text);
    /* indices of the wrong shape, and one outside the cache */
    char p[700];
    int32_t ix[2 * 2 * 3] = {0, 1, -1, 2, 3, 4, 5, 6, 7, 8, 9, 200000};
    const int64_t s223[3] = {2, 2, 3}, s13[2] = {1, 3};
    r = run("%s --indices %s", base, tmp_npy(p, sizeof p, "ix_bad", NPY_I4, 3, s223, ix));
    CHECK_RUN(r, 2, "--indices");
    CHECK(strstr(r.text, "indices[1][1][2] = 200000 is neither -1 nor a slot in [0, 112)") != NULL);
    free(r.text);
    r = run("%s --indices %s", base, tmp_npy(p, sizeof p, "ix_2d", NPY_I4, 2, s13, ix));
    CHECK_RUN(r, 2, "expected 3 dims [b][s_q][topk]");
    free(r.text);
    const float sink[3] = {0, 0, 0};
    const int64_t s3[1] = {3};
    r = run("%s --indices %s/sparse_sink_bf16.indices.npy --attn-sink %s", base, own,
            tmp_npy(p, sizeof p, "sink3", NPY_F4, 1, s3, sink));
    CHECK_RUN(r, 2, "expected float32 [8] (one logit per query head)");
    free(r.text);
}

/* Every (q dtype, kv dtype) pair the library supports, through pkv attn, against
 * the oracle called directly on the same data. */
static void test_attn_dtype_pairs(void) {
    enum { B = 1, HQ = 4, D = 576, DV = 512, BS = 16, NB = 3, L = 40 };
    static const int qdts[3] = {PKV_F32, PKV_F16, PKV_BF16}, kvdts[4] = {PKV_F32, PKV_F16, PKV_BF16, PKV_FP8_MLA656};
    static const char *const names[4] = {"f32", "f16", "bf16", "fp8"};
    static const int npys[3] = {NPY_F4, NPY_F2, NPY_U2};
    static float qf[B * HQ * D], kf[NB * BS * D], out[B * HQ * DV], lse[B * HQ];
    static uint16_t q16[B * HQ * D];
    static uint8_t k8[NB * BS * 656];
    test_rng rng = {99};
    for (int i = 0; i < B * HQ * D; i++) qf[i] = (float)test_normal(&rng);
    for (int i = 0; i < NB * BS * D; i++) kf[i] = (float)test_normal(&rng);
    for (int t = 0; t < NB * BS; t++) CHECK_OK(pkv_mla656_quantize(kf + (size_t)t * D, k8 + (size_t)t * 656, 0));
    int32_t table[3] = {2, 0, 1}, lens[1] = {L};
    char pq[700], pk[700], pt[700], pl[700], pe[700];
    const int64_t st[2] = {1, 3}, sl[1] = {1}, so[4] = {B, 1, HQ, DV};
    tmp_npy(pt, sizeof pt, "pair_bt", NPY_I4, 2, st, table);
    tmp_npy(pl, sizeof pl, "pair_sl", NPY_I4, 1, sl, lens);
    int pairs = 0;
    for (int qi = 0; qi < 3; qi++)
        for (int ki = 0; ki < 4; ki++) {
            const int qd = qdts[qi], kd = kvdts[ki];
            const void *qdata = qf, *kdata = kf;
            if (qd != PKV_F32) {
                for (int i = 0; i < B * HQ * D; i++) q16[i] = qd == PKV_F16 ? pkv_f32_to_f16(qf[i]) : pkv_f32_to_bf16(qf[i]);
                qdata = q16;
            }
            const int64_t sq[4] = {B, 1, HQ, D}, sk[4] = {NB, BS, 1, D}, sk8[3] = {NB, BS, 656};
            static uint16_t kk[NB * BS * D];
            if (kd == PKV_F16 || kd == PKV_BF16) {
                for (int i = 0; i < NB * BS * D; i++) kk[i] = kd == PKV_F16 ? pkv_f32_to_f16(kf[i]) : pkv_f32_to_bf16(kf[i]);
                kdata = kk;
            } else if (kd == PKV_FP8_MLA656) {
                kdata = k8;
            }
            tmp_npy(pq, sizeof pq, "pair_q", npys[qi], 4, sq, qdata);
            if (kd == PKV_FP8_MLA656) tmp_npy(pk, sizeof pk, "pair_k", NPY_U1, 3, sk8, kdata);
            else tmp_npy(pk, sizeof pk, "pair_k", npys[ki], 4, sk, kdata);
            pkv_attn_args a;
            mla_args(&a, HQ, BS, 3, NB, qd, kd);
            a.q = qdata, a.k_cache = kdata, a.block_table = table, a.cache_seqlens = lens, a.out = out, a.lse = lse;
            CHECK_OK(pkv_attn_reference(&a));
            tmp_npy(pe, sizeof pe, "pair_expect", NPY_F4, 4, so, out);
            char dts[64] = "";
            if (qd == PKV_BF16) strcat(dts, " --q-dtype bf16");
            if (kd == PKV_BF16) strcat(dts, " --kv-dtype bf16");
            for (int fast = 0; fast < 2; fast++) {
                run_out r = run("attn --q %s --k-cache %s --block-table %s --seqlens %s --scale 0.0722 --dv 512%s "
                                "--expect %s %s", pq, pk, pt, pl, dts, pe, fast ? "--fast --tol 5e-3" : "--tol 1e-6 --rtol 0");
                char needle[64];
                snprintf(needle, sizeof needle, "q=%s kv=%s", names[qi], kd == PKV_FP8_MLA656 ? "fp8-mla656" : names[ki]);
                const char *nd = needle;
                CHECK_RUN(r, 0, nd);
                if (!strstr(r.text, "PASS")) TEST_FAIL_("q %s, kv %s: %s", names[qi], names[ki], r.text);
                free(r.text);
            }
            pairs++;
        }
    CHECK_INT(pairs, 12);
}

/* An FP8 MLA cache as uint8 [num_blocks][block_size][656] through pkv attn, against
 * the oracle called directly. */
static void test_attn_fp8(void) {
    enum { NB = 3, BS = 16, HQ = 4, D = 576, DV = 512 };
    static float q[HQ * D];
    static uint8_t k[NB * BS * 656];
    int32_t table[2] = {2, 0}, lens[1] = {27};
    test_rng rng = {42};
    for (int i = 0; i < HQ * D; i++) q[i] = (float)(test_uniform(&rng) * 2 - 1);
    float row[D];
    for (int t = 0; t < NB * BS; t++) {
        for (int i = 0; i < D; i++) row[i] = (float)(test_normal(&rng));
        CHECK_OK(pkv_mla656_quantize(row, k + (size_t)t * 656, 0));
    }
    char path[5][600], e[200];
    const char *names[5] = {"q", "k", "bt", "sl", "ref"};
    for (int i = 0; i < 5; i++) snprintf(path[i], sizeof path[i], "%s/fp8_%s.npy", tmpdir, names[i]);
    int64_t qs[4] = {1, 1, HQ, D}, ks[3] = {NB, BS, 656}, bs[2] = {1, 2}, ls[1] = {1};
    CHECK_OK(npy_save(path[0], NPY_F4, 4, qs, q, e, sizeof e));
    CHECK_OK(npy_save(path[1], NPY_U1, 3, ks, k, e, sizeof e));
    CHECK_OK(npy_save(path[2], NPY_I4, 2, bs, table, e, sizeof e));
    CHECK_OK(npy_save(path[3], NPY_I4, 1, ls, lens, e, sizeof e));
    static float out[HQ * DV], lse[HQ];
    pkv_attn_args a;
    mla_args(&a, HQ, BS, 2, NB, PKV_F32, PKV_FP8_MLA656);
    a.q = q, a.k_cache = k, a.block_table = table, a.cache_seqlens = lens, a.out = out, a.lse = lse;
    CHECK_OK(pkv_attn_reference(&a));
    int64_t os[4] = {1, 1, HQ, DV};
    CHECK_OK(npy_save(path[4], NPY_F4, 4, os, out, e, sizeof e));
    run_out r = run("attn --q %s --k-cache %s --block-table %s --seqlens %s --scale 0.0722 --out %s/fp8_out.npy "
                    "--expect %s --tol 1e-6 --rtol 0", path[0], path[1], path[2], path[3], tmpdir, path[4]);
    CHECK_RUN(r, 0, "kv=fp8-mla656");
    CHECK(strstr(r.text, "PASS") != NULL);
    free(r.text);
    r = run("attn --q %s --k-cache %s --block-table %s --seqlens %s --scale 0.0722 --out %s/fp8_out.npy "
            "--expect %s --fast --tol 5e-3", path[0], path[1], path[2], path[3], tmpdir, path[4]);
    CHECK_RUN(r, 0, "PASS");
    free(r.text);
    r = run("attn --q %s --k-cache %s --block-table %s --seqlens %s --scale 0.0722 --dv 128 --out %s/o.npy",
            path[0], path[1], path[2], path[3], tmpdir);
    CHECK_RUN(r, 2, "dv = 512");
    free(r.text);
}

int main(int argc, char **argv) {
    (void)argc;
    if (clirun_find_bin(argv[0], "test_cli")) return 1;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/pkv_test_cli.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_help();
    test_info();
    test_sim_table();
    test_sim_outputs();
    test_sim_verify();
    test_sim_trace();
    test_sim_flags();
    test_attn_vectors();
    test_attn_fp8();
    test_attn_cli_edges();
    test_attn_sparse();
    test_attn_dtype_pairs();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "test_cli: could not remove %s\n", tmpdir);
    return test_report("test_cli");
}
