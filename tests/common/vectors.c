/* The shared attention test vectors (see vectors.h). */
#include "vectors.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pagedkv.h"

int vectors_parse(char *line, vcase *c, char *err, size_t errcap) {
    memset(c, 0, sizeof *c);
    c->dtype = -1;
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
    return 1;
}

const char *vectors_dir(char *buf, size_t cap) {
    const char *env = getenv("PKV_VECTORS");
    if (env && *env) return env;
    if (access("include/pagedkv.h", F_OK) == 0) return "../shared/vectors";
    char exe[900];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return "../shared/vectors";
    exe[n] = 0;
    for (char *slash = strrchr(exe, '/'); slash && slash != exe; slash = strrchr(exe, '/')) {
        *slash = 0; /* exe is now a parent folder */
        snprintf(buf, cap, "%s/include/pagedkv.h", exe);
        if (access(buf, F_OK) == 0) {
            snprintf(buf, cap, "%s/../shared/vectors", exe);
            return buf;
        }
    }
    return "../shared/vectors";
}

FILE *vectors_open(const char *dir, char *err, size_t errcap) {
    char path[1200];
    snprintf(path, sizeof path, "%s/cases.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) snprintf(err, errcap, "cannot open %s: %s (set PKV_VECTORS, or PKV_VECTORS_OPTIONAL=1)", path,
                     strerror(errno));
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

int vectors_optional(void) {
    const char *opt = getenv("PKV_VECTORS_OPTIONAL");
    return opt && !strcmp(opt, "1");
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
    a->q_dtype = a->kv_dtype = c->dtype;
}
