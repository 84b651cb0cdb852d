/* Attention test vectors: the project's own and the shared ones (see vectors.h). */
#include "vectors.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pagedkv.h"

int vectors_parse(char *line, vcase *c, char *err, size_t errcap) {
    memset(c, 0, sizeof *c);
    c->dtype = c->kv_dtype = -1;
    char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
    if (!tok || tok[0] == '#') return 0;
    snprintf(c->name, sizeof c->name, "%s", tok);
    int seen = 0;
    while ((tok = strtok_r(NULL, " \t\r\n", &save))) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            snprintf(err, errcap, "case %s: token '%s' is not key=value", c->name, tok);
            return -1;
        }
        *eq = 0;
        const char *k = tok, *v = eq + 1;
        const struct { const char *k; int *p; } ints[] = {
            {"b", &c->b}, {"s_q", &c->s_q}, {"h_q", &c->h_q}, {"h_kv", &c->h_kv}, {"d", &c->d},
            {"dv", &c->dv}, {"v_shared", &c->v_shared}, {"block_size", &c->block_size},
            {"max_blocks_per_seq", &c->mbps}, {"num_blocks", &c->num_blocks}, {"causal", &c->causal}};
        int found = 0;
        for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
            if (!strcmp(k, ints[i].k)) { *ints[i].p = atoi(v); found = 1; }
        if (!strcmp(k, "softmax_scale")) { c->scale = strtod(v, NULL); found = 1; }
        if (!strcmp(k, "dtype")) {
            c->dtype = !strcmp(v, "f32") ? PKV_F32 : !strcmp(v, "f16") ? PKV_F16 : !strcmp(v, "bf16") ? PKV_BF16 : -1;
            found = c->dtype >= 0;
        }
        if (!strcmp(k, "kv_dtype")) { /* optional: not counted among the 13 */
            c->kv_dtype = !strcmp(v, "f32") ? PKV_F32 : !strcmp(v, "f16") ? PKV_F16 : !strcmp(v, "bf16") ? PKV_BF16
                          : !strcmp(v, "fp8") ? PKV_FP8_MLA656 : -1;
            if (c->kv_dtype >= 0) continue;
        }
        if (!found) {
            snprintf(err, errcap, "case %s: unknown key or value '%s=%s' (teach the tests)", c->name, k, v);
            return -1;
        }
        seen++;
    }
    if (seen != 13) {
        snprintf(err, errcap, "case %s: %d of 13 keys", c->name, seen);
        return -1;
    }
    if (c->kv_dtype < 0) c->kv_dtype = c->dtype;
    return 1;
}

/* The repository root: "." when the working directory is it, else the folder
 * above this executable holding include/pagedkv.h; NULL when not found. */
static const char *repo_root(char *buf, size_t cap) {
    if (access("include/pagedkv.h", F_OK) == 0) return ".";
    char exe[900], probe[1000];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return NULL;
    exe[n] = 0;
    for (char *slash = strrchr(exe, '/'); slash && slash != exe; slash = strrchr(exe, '/')) {
        *slash = 0; /* exe is now a parent folder */
        snprintf(probe, sizeof probe, "%s/include/pagedkv.h", exe);
        if (access(probe, F_OK) == 0) {
            snprintf(buf, cap, "%s", exe);
            return buf;
        }
    }
    return NULL;
}

const char *vectors_own_dir(char *buf, size_t cap) {
    const char *env = getenv("PKV_OWN_VECTORS");
    if (env && *env) return env;
    char root[1000];
    const char *r = repo_root(root, sizeof root);
    snprintf(buf, cap, "%s/tests/vectors", r ? r : ".");
    return buf;
}

const char *vectors_shared_dir(char *buf, size_t cap) {
    const char *env = getenv("PKV_VECTORS");
    if (env && *env) return env;
    char root[1000];
    const char *r = repo_root(root, sizeof root);
    snprintf(buf, cap, "%s/../shared/vectors", r ? r : ".");
    return buf;
}

/* Runs fn on every case of dir/cases.txt; -1 with err set when it cannot be read
 * or a line is malformed. */
static int run_dir(const char *dir, void (*fn)(const char *dir, const vcase *c, void *ctx), void *ctx, char *err,
                   size_t errcap) {
    FILE *f = vectors_open(dir, err, errcap);
    if (!f) return -1;
    printf("vectors: %s\n", dir);
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        vcase c;
        const int st = vectors_parse(line, &c, err, errcap);
        if (st < 0) {
            fclose(f);
            return -1;
        }
        if (st == 0) continue;
        fn(dir, &c, ctx);
        n++;
    }
    fclose(f);
    if (n == 0) snprintf(err, errcap, "%s/cases.txt: no cases", dir);
    return n ? n : -1;
}

int vectors_for_each(const char *who, void (*fn)(const char *dir, const vcase *c, void *ctx), void *ctx, char *err,
                     size_t errcap) {
    char own[1100], shared[1100];
    const char *od = vectors_own_dir(own, sizeof own), *sd = vectors_shared_dir(shared, sizeof shared);
    const int n = run_dir(od, fn, ctx, err, errcap);
    if (n < 0) return -1;
    char probe[1200];
    snprintf(probe, sizeof probe, "%s/cases.txt", sd);
    if (access(probe, F_OK) != 0) {
        printf("%s: no shared vectors at %s: cross-check skipped\n", who, sd);
        return n;
    }
    const int m = run_dir(sd, fn, ctx, err, errcap);
    return m < 0 ? -1 : n + m;
}

FILE *vectors_open(const char *dir, char *err, size_t errcap) {
    char path[1200];
    snprintf(path, sizeof path, "%s/cases.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) snprintf(err, errcap, "cannot open %s: %s", path, strerror(errno));
    return f;
}

int vectors_load(const char *dir, const char *name, const char *what, int dtype, size_t count, npy_array *out,
                 int required, char *err, size_t errcap) {
    char path[1400], why[256];
    snprintf(path, sizeof path, "%s/%s.%s.npy", dir, name, what);
    const int st = npy_load(path, out, why, sizeof why);
    if (st == PKV_ERR_IO && !required) return 0;
    if (st != PKV_OK) {
        snprintf(err, errcap, "%s: %s", path, why);
        return -1;
    }
    if (out->dtype != dtype || (count && out->count != count)) {
        snprintf(err, errcap, "%s: unexpected dtype or size", path);
        npy_free(out);
        return -1;
    }
    return 1;
}

void vectors_geometry(const vcase *c, pkv_attn_args *a) {
    pkv_attn_args_init(a);
    a->batch = c->b;
    a->s_q = c->s_q;
    a->h_q = c->h_q;
    a->h_kv = c->h_kv;
    a->d = c->d;
    a->dv = c->dv;
    a->block_size = c->block_size;
    a->max_blocks_per_seq = c->mbps;
    a->num_blocks = c->num_blocks;
    a->causal = c->causal;
    a->softmax_scale = (float)c->scale;
    a->q_dtype = c->dtype;
    a->kv_dtype = c->kv_dtype;
}
