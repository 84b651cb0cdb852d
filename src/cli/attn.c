/* `pkv attn`: the attention oracle (or the fast path) on NumPy .npy files, so a
 * GPU-kernel author can dump tensors with numpy.save and check a kernel here. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "npy.h"

static const char attn_help[] =
    "usage: pkv attn --q q.npy --k-cache k.npy [--v-cache v.npy] --scale S\n"
    "                (--block-table bt.npy --seqlens sl.npy [--causal] | --indices ix.npy)\n"
    "                [--attn-sink sink.npy] [--dv N] [--dtype T] [--q-dtype T] [--kv-dtype T]\n"
    "                [--out out.npy] [--lse lse.npy] [--fast [--threads N]]\n"
    "                [--expect out.npy] [--expect-lse lse.npy] [--tol A] [--rtol R]\n"
    "\n"
    "Attention over a paged KV cache in FlashMLA's convention, from .npy files:\n"
    "  --q FILE            q[b][s_q][h_q][d]\n"
    "  --k-cache FILE      k_cache[num_blocks][block_size][h_kv][d]; uint8 with a last dim\n"
    "                      of 656 ([num_blocks][block_size][656] or [..][1][656]) is\n"
    "                      FlashMLA's FP8 MLA cache (d 576, dv 512)\n"
    "  --v-cache FILE      v_cache[num_blocks][block_size][h_kv][dv]; without it V is the\n"
    "                      first dv dims of K (MLA)\n"
    "  --block-table FILE  int32 [b][max_blocks_per_seq]; entries past a sequence's\n"
    "                      blocks are never read (pad with -1)\n"
    "  --seqlens FILE      int32 [b], cache_seqlens\n"
    "  --indices FILE      sparse attention (DeepSeek V3.2): int32 [b][s_q][topk] slot ids\n"
    "                      (block * block_size + offset), -1 skipped; replaces\n"
    "                      --block-table and --seqlens\n"
    "  --attn-sink FILE    float32 [h_q]: exp(sink) joins each head's denominator\n"
    "                      (out scaled by 1 / (1 + exp(sink - lse)); lse unchanged)\n"
    "  --scale S           softmax scale (e.g. 1/sqrt(192) = 0.07216878 for DeepSeek MLA)\n"
    "  --causal            query i of s_q sees keys [0, L - s_q + i]\n"
    "  --dv N              V head dim (default: v_cache's, else d)\n"
    "  --out FILE          writes out[b][s_q][h_q][dv] float32\n"
    "  --lse FILE          writes lse[b][h_q][s_q] float32 (natural log; +inf when empty)\n"
    "                      (an output may not be an input file or the other output)\n"
    "  --fast              the fast path (pkv_attn, all CPUs) instead of the oracle\n"
    "  --threads N         threads for --fast (default: all online CPUs)\n"
    "  --dtype T           element type of q and the caches: f32 ('<f4'), f16 ('<f2'),\n"
    "                      bf16 (raw bits as '<u2'); needed for bf16, checked otherwise\n"
    "  --q-dtype T         the same for q alone, --kv-dtype T for the caches alone: any\n"
    "                      pair works, e.g. a float32 q with a bf16 cache: --kv-dtype bf16\n"
    "  --expect FILE       compares out with FILE (float32 or float64, same shape); an\n"
    "                      element passes within --tol absolute or --rtol relative error\n"
    "                      (FlashMLA's test: 8e-4, 2.01/128); NaN/inf must match exactly\n"
    "  --expect-lse FILE   compares lse too (within 1e-6 absolute or 8.01/65536 relative)\n"
    "\n"
    "Environment: PKV_ISA=scalar|avx2|avx512|amx caps the kernels of --fast.\n"
    "exit status: 0 ok, 1 --expect mismatch, 2 bad usage, files or shapes, 3 library error\n";

typedef struct arr {
    const char *flag, *path;
    npy_array a;
    int loaded;
} arr;

static const char *npy_name(int t) {
    switch (t) {
    case NPY_F4: return "float32 ('<f4')";
    case NPY_F2: return "float16 ('<f2')";
    case NPY_U2: return "uint16 ('<u2')";
    case NPY_I4: return "int32 ('<i4')";
    case NPY_F8: return "float64 ('<f8')";
    case NPY_I8: return "int64 ('<i8')";
    case NPY_U1: return "uint8 ('|u1')";
    default: return "?";
    }
}

static void shape_str(const npy_array *a, char *buf, size_t n) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < a->ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)a->shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* Every file error reads "pkv: FLAG FILE: reason". */
static int load(arr *x) {
    struct stat st;
    if (stat(x->path, &st) != 0) return cli_error("%s %s: %s", x->flag, x->path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return cli_error("%s %s: %s", x->flag, x->path, strerror(EISDIR));
    char err[256];
    const int rc = npy_load(x->path, &x->a, err, sizeof err);
    if (rc != PKV_OK) {
        const char *why = err[0] ? err : pkv_strerror(rc);
        if (!strncmp(why, "npy: ", 5)) why += 5;
        return cli_error("%s %s: not a .npy file pkv reads: %s", x->flag, x->path, why);
    }
    x->loaded = 1;
    for (int i = 0; i < x->a.ndim; i++)
        if (x->a.shape[i] < 1) {
            char s[128];
            shape_str(&x->a, s, sizeof s);
            return cli_error("%s %s: shape %s has an empty dimension (every dimension must be >= 1)", x->flag,
                             x->path, s);
        }
    return 0;
}

static int want_ndim(const arr *x, int ndim, const char *layout) {
    if (x->a.ndim == ndim) return 0;
    char s[128];
    shape_str(&x->a, s, sizeof s);
    return cli_error("%s %s: expected %d dims %s, got shape %s", x->flag, x->path, ndim, layout, s);
}

static int parse_dtype(const char *s) {
    return !strcmp(s, "f32") ? PKV_F32 : !strcmp(s, "f16") ? PKV_F16 : !strcmp(s, "bf16") ? PKV_BF16 : -1;
}

/* pkv dtype of a float array (q or a cache). decl: the declared type name
 * (from decl_flag) or NULL; float32 / float16 files describe themselves, uint16
 * holds bfloat16 bits only when declared so. */
static int float_dtype(const arr *x, const char *decl, const char *decl_flag, const char *hint, int32_t *out) {
    const int t = x->a.dtype, want = decl ? parse_dtype(decl) : -1;
    if (t == NPY_F4) *out = PKV_F32;
    else if (t == NPY_F2) *out = PKV_F16;
    else if (t == NPY_U2 && want == PKV_BF16) *out = PKV_BF16;
    else if (t == NPY_U2 && want >= 0)
        return cli_error("%s %s: dtype %s does not match %s %s (bfloat16 bits need --dtype bf16)", x->flag, x->path,
                         npy_name(t), decl_flag, decl);
    else if (t == NPY_U2)
        return cli_error("%s %s: uint16 data: pass --dtype bf16 (or %s bf16) if it holds bfloat16 bits", x->flag,
                         x->path, hint);
    else
        return cli_error("%s %s: dtype %s; expected float32, float16, or bfloat16 bits as uint16", x->flag, x->path,
                         npy_name(t));
    if (want >= 0 && want != *out)
        return cli_error("%s %s: dtype %s does not match %s %s (for different q and cache types use --q-dtype "
                         "and --kv-dtype)",
                         x->flag, x->path, npy_name(t), decl_flag, decl);
    return 0;
}

static int want_i32(const arr *x) {
    if (x->a.dtype == NPY_I4) return 0;
    return cli_error("%s %s: dtype %s; expected int32 (numpy: .astype(np.int32))", x->flag, x->path,
                     npy_name(x->a.dtype));
}

/* ---- outputs must not overwrite inputs or each other ---- */
typedef struct file_id {
    int exists;
    dev_t dev;
    ino_t ino;
    char canon[PATH_MAX + 256];
} file_id;

/* Identity of path: its inode when it exists; always a canonical spelling (the
 * real path of its folder plus its name), which also tells two outputs apart
 * before either exists. */
static void identify(const char *path, file_id *f) {
    struct stat st;
    memset(f, 0, sizeof *f);
    if (stat(path, &st) == 0) {
        f->exists = 1;
        f->dev = st.st_dev;
        f->ino = st.st_ino;
    }
    char dir[PATH_MAX], real[PATH_MAX];
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path) > 0 ? (int)(slash - path) : 1, path);
    else snprintf(dir, sizeof dir, ".");
    if (realpath(dir, real)) snprintf(f->canon, sizeof f->canon, "%s/%s", real, base);
    else snprintf(f->canon, sizeof f->canon, "%s", path);
}

static int same_file(const file_id *a, const file_id *b) {
    if (a->exists && b->exists) return a->dev == b->dev && a->ino == b->ino;
    return strcmp(a->canon, b->canon) == 0;
}

static int check_outputs(const char *const *oflags, const char *const *opaths, int nout, arr *const *ins, int nin) {
    for (int o = 0; o < nout; o++) {
        if (!opaths[o]) continue;
        file_id fo, fx;
        identify(opaths[o], &fo);
        for (int i = 0; i < nin; i++) {
            if (!ins[i]->path) continue;
            identify(ins[i]->path, &fx);
            if (same_file(&fo, &fx))
                return cli_error("%s %s: the same file as %s %s (an output must not overwrite an input)", oflags[o],
                                 opaths[o], ins[i]->flag, ins[i]->path);
        }
        for (int p = 0; p < o; p++) {
            if (!opaths[p]) continue;
            identify(opaths[p], &fx);
            if (same_file(&fo, &fx))
                return cli_error("%s %s: the same file as %s %s (each output needs its own file)", oflags[o],
                                 opaths[o], oflags[p], opaths[p]);
        }
    }
    return 0;
}

/* Compares got (float32) with an expected float32/float64 array. */
static int compare(const char *what, const arr *e, const float *got, size_t count, int ndim, const int64_t *shape,
                   double atol, double rtol) {
    char s1[128], s2[128];
    npy_array g = {.ndim = ndim};
    for (int i = 0; i < ndim; i++) g.shape[i] = shape[i];
    shape_str(&e->a, s1, sizeof s1);
    shape_str(&g, s2, sizeof s2);
    if (e->a.dtype != NPY_F4 && e->a.dtype != NPY_F8)
        return cli_error("%s %s: dtype %s; expected float32 or float64", e->flag, e->path, npy_name(e->a.dtype));
    int same = e->a.ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = e->a.shape[i] == shape[i];
    if (!same) return cli_error("%s %s: shape %s, but %s is %s", e->flag, e->path, s1, what, s2);
    double max_abs = 0, max_rel = 0, sxy = 0, sxx = 0;
    size_t bad = 0, first_bad = 0, special_mismatch = 0;
    for (size_t i = 0; i < count; i++) {
        double x = got[i];
        double y = e->a.dtype == NPY_F4 ? ((const float *)e->a.data)[i] : ((const double *)e->a.data)[i];
        if (!isfinite(x) || !isfinite(y)) {
            int match = (isnan(x) && isnan(y)) || (isinf(x) && isinf(y) && (x > 0) == (y > 0));
            if (!match) {
                if (!bad++) first_bad = i;
                special_mismatch++;
            }
            continue;
        }
        double d = fabs(x - y), rel = d / (fabs(y) > 1e-30 ? fabs(y) : 1e-30);
        if (d > max_abs) max_abs = d;
        if (d > atol && rel > max_rel) max_rel = rel;
        if (d > atol && rel > rtol && !bad++) first_bad = i;
        sxy += x * y;
        sxx += x * x + y * y;
    }
    double cos_diff = sxx > 0 ? 1 - 2 * sxy / sxx : 0;
    printf("%s vs %s: max abs err %.3g, max rel err (beyond abs tol) %.3g, cos_diff %.3g, %zu of %zu outside "
           "tolerance (%.3g abs or %.3g rel)",
           what, e->path, max_abs, max_rel, cos_diff, bad, count, atol, rtol);
    if (special_mismatch) printf(", %zu NaN/inf mismatches", special_mismatch);
    if (bad) {
        printf(": FAIL (first at flat index %zu: got %.9g)\n", first_bad, (double)got[first_bad]);
        return EXIT_CHECK;
    }
    printf(": PASS\n");
    return 0;
}

/* The one place pkv attn builds pkv_attn_args: geometry, scale and dtypes (the
 * caller points the arrays). */
static void fill_args(pkv_attn_args *a, int64_t b, int64_t s_q, int64_t h_q, int64_t h_kv, int64_t d, int64_t dv,
                      int64_t bs, int64_t mb, int64_t nb, int causal, double scale, int32_t q_dtype, int32_t kv_dtype) {
    pkv_attn_args_init(a);
    a->batch = (int32_t)b;
    a->s_q = (int32_t)s_q;
    a->h_q = (int32_t)h_q;
    a->h_kv = (int32_t)h_kv;
    a->d = (int32_t)d;
    a->dv = (int32_t)dv;
    a->block_size = (int32_t)bs;
    a->max_blocks_per_seq = (int32_t)mb;
    a->num_blocks = (int32_t)nb;
    a->causal = causal;
    a->softmax_scale = (float)scale;
    a->q_dtype = q_dtype;
    a->kv_dtype = kv_dtype;
}

/* An option's value; a value that looks like another option is refused
 * ("--out --lse x" would otherwise write a file named --lse). */
static int opt(int argc, char **argv, int *i, const char *name, const char **val) {
    const size_t n = strlen(name);
    const int inline_val = !strncmp(argv[*i], name, n) && argv[*i][n] == '=';
    const int m = cli_opt(argc, argv, i, name, val);
    if (m > 0 && !inline_val && !strncmp(*val, "--", 2)) {
        cli_error("%s needs a value, got the option %s", name, *val);
        return -1;
    }
    return m;
}

int cmd_attn(int argc, char **argv) {
    arr q = {"--q", 0, {0}, 0}, k = {"--k-cache", 0, {0}, 0}, v = {"--v-cache", 0, {0}, 0},
        bt = {"--block-table", 0, {0}, 0}, sl = {"--seqlens", 0, {0}, 0}, ix = {"--indices", 0, {0}, 0},
        sk = {"--attn-sink", 0, {0}, 0}, ex = {"--expect", 0, {0}, 0}, exl = {"--expect-lse", 0, {0}, 0};
    arr *all[] = {&q, &k, &v, &bt, &sl, &ix, &sk, &ex, &exl};
    const int nall = (int)(sizeof all / sizeof all[0]);
    const char *out_path = NULL, *lse_path = NULL, *dtype_opt = NULL, *qdt_opt = NULL, *kvdt_opt = NULL;
    const char *threads_opt = NULL;
    double scale = NAN, atol = 8e-4, rtol = 2.01 / 128;
    int64_t dv_opt = -1, threads = 0;
    int causal = 0, fast = 0, have_scale = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        int m;
        if (cli_flag(a, "--help") || cli_flag(a, "-h")) {
            fputs(attn_help, stdout);
            return 0;
        }
        if (cli_flag(a, "--causal")) { causal = 1; continue; }
        if (cli_flag(a, "--fast")) { fast = 1; continue; }
        int matched = 0;
        for (int f = 0; f < nall && !matched; f++) {
            if ((m = opt(argc, argv, &i, all[f]->flag, &val))) {
                if (m < 0) return EXIT_USAGE;
                all[f]->path = val;
                matched = 1;
            }
        }
        if (matched) continue;
        const char **dts[3] = {&dtype_opt, &qdt_opt, &kvdt_opt};
        const char *dtn[3] = {"--dtype", "--q-dtype", "--kv-dtype"};
        for (int t = 0; t < 3 && !matched; t++)
            if ((m = opt(argc, argv, &i, dtn[t], &val))) {
                if (m < 0) return EXIT_USAGE;
                if (parse_dtype(val) < 0 && !(t == 2 && !strcmp(val, "fp8")))
                    return cli_error("%s: '%s' is not f32, f16 or bf16%s", dtn[t], val, t == 2 ? " (or fp8)" : "");
                *dts[t] = val;
                matched = 1;
            }
        if (matched) continue;
        if ((m = opt(argc, argv, &i, "--out", &val))) { if (m < 0) return EXIT_USAGE; out_path = val; }
        else if ((m = opt(argc, argv, &i, "--lse", &val))) { if (m < 0) return EXIT_USAGE; lse_path = val; }
        else if ((m = cli_opt(argc, argv, &i, "--scale", &val))) {
            if (m < 0 || cli_parse_f64(val, -1e30, 1e30, &scale)) return cli_error("--scale: expected a finite number");
            have_scale = 1;
        } else if ((m = cli_opt(argc, argv, &i, "--dv", &val))) {
            if (m < 0 || cli_parse_i64(val, 1, 1 << 20, &dv_opt)) return cli_error("--dv: expected an integer in 1..1048576");
        } else if ((m = cli_opt(argc, argv, &i, "--threads", &val))) {
            if (m < 0 || cli_parse_i64(val, 1, 1024, &threads)) return cli_error("--threads: expected an integer in 1..1024");
            threads_opt = val;
        } else if ((m = cli_opt(argc, argv, &i, "--tol", &val))) {
            if (m < 0 || cli_parse_f64(val, 0, 1e30, &atol)) return cli_error("--tol: expected a number >= 0");
        } else if ((m = cli_opt(argc, argv, &i, "--rtol", &val))) {
            if (m < 0 || cli_parse_f64(val, 0, 1e30, &rtol)) return cli_error("--rtol: expected a number >= 0");
        } else {
            return cli_error("attn: unknown option '%s' (see pkv attn --help)", a);
        }
    }
    const int sparse = ix.path != NULL;
    if (!q.path || !k.path || (!sparse && (!bt.path || !sl.path)) || !have_scale) {
        return cli_error("attn: missing %s (see pkv attn --help)",
                         !q.path ? "--q" : !k.path ? "--k-cache" : !have_scale ? "--scale"
                         : !bt.path ? "--block-table (or --indices)" : "--seqlens");
    }
    if (sparse && (bt.path || sl.path))
        return cli_error("%s: not read with --indices (sparse attention addresses slots directly): drop it",
                         bt.path ? "--block-table" : "--seqlens");
    if (sparse && causal) return cli_error("--causal does not apply to --indices (sparse rows list their keys)");
    if (threads_opt && !fast)
        return cli_error("--threads %s applies to --fast only (the oracle runs on one thread)", threads_opt);
    char why[200];
    if (fast && pkv_isa_status(why, sizeof why) != PKV_OK) fprintf(stderr, "pkv: warning: %s\n", why);
    {
        const char *oflags[2] = {"--out", "--lse"}, *opaths[2] = {out_path, lse_path};
        const int rc0 = check_outputs(oflags, opaths, 2, all, nall);
        if (rc0) return rc0;
    }
    int rc = 0;
    float *out = NULL, *lse = NULL;
    pkv_workers *workers = NULL;
    for (int f = 0; f < nall && !rc; f++)
        if (all[f]->path) rc = load(all[f]);
    if (rc) goto done;

    /* q [b][s_q][h_q][d] */
    int32_t q_dtype, kv_dtype;
    const char *qdecl = qdt_opt ? qdt_opt : dtype_opt, *qflag = qdt_opt ? "--q-dtype" : "--dtype";
    const char *kvdecl = kvdt_opt ? kvdt_opt : dtype_opt, *kvflag = kvdt_opt ? "--kv-dtype" : "--dtype";
    if ((rc = want_ndim(&q, 4, "[b][s_q][h_q][d]")) || (rc = float_dtype(&q, qdecl, qflag, "--q-dtype", &q_dtype)))
        goto done;
    int64_t b = q.a.shape[0], s_q = q.a.shape[1], h_q = q.a.shape[2], d = q.a.shape[3];
    /* k_cache [num_blocks][block_size][h_kv][d], or FP8 MLA rows */
    int64_t nb, bs, h_kv, kd;
    const int fp8 = k.a.dtype == NPY_U1;
    if (fp8) {
        if (!((k.a.ndim == 3 && k.a.shape[2] == 656) || (k.a.ndim == 4 && k.a.shape[2] == 1 && k.a.shape[3] == 656))) {
            char s[128];
            shape_str(&k.a, s, sizeof s);
            rc = cli_error("--k-cache %s: uint8 means FP8 MLA rows [num_blocks][block_size][656], got %s", k.path, s);
            goto done;
        }
        if (kvdt_opt && strcmp(kvdt_opt, "fp8") != 0) {
            rc = cli_error("--k-cache %s: FP8 MLA rows (uint8), but --kv-dtype %s", k.path, kvdt_opt);
            goto done;
        }
        nb = k.a.shape[0], bs = k.a.shape[1], h_kv = 1, kd = 576;
        kv_dtype = PKV_FP8_MLA656;
    } else {
        if (kvdt_opt && !strcmp(kvdt_opt, "fp8")) {
            rc = cli_error("--k-cache %s: --kv-dtype fp8 needs uint8 FP8 MLA rows, got %s", k.path, npy_name(k.a.dtype));
            goto done;
        }
        if ((rc = want_ndim(&k, 4, "[num_blocks][block_size][h_kv][d]")) ||
            (rc = float_dtype(&k, kvdecl, kvflag, "--kv-dtype", &kv_dtype)))
            goto done;
        nb = k.a.shape[0], bs = k.a.shape[1], h_kv = k.a.shape[2], kd = k.a.shape[3];
    }
    char s1[128], s2[128];
    shape_str(&q.a, s1, sizeof s1);
    shape_str(&k.a, s2, sizeof s2);
    if (kd != d) {
        rc = cli_error("head dim mismatch: q %s has d = %lld, k_cache %s has d = %lld", s1, (long long)d, s2, (long long)kd);
        goto done;
    }
    if (h_kv < 1 || h_q % h_kv != 0) {
        rc = cli_error("heads: q has h_q = %lld, not a multiple of k_cache's h_kv = %lld", (long long)h_q, (long long)h_kv);
        goto done;
    }
    /* v's shape is read only once it is known to have 4 dims */
    if (v.path && (rc = want_ndim(&v, 4, "[num_blocks][block_size][h_kv][dv]"))) goto done;
    int64_t dv = dv_opt > 0 ? dv_opt : (v.path ? v.a.shape[3] : (fp8 ? 512 : d));
    if (v.path) {
        int32_t vt;
        if (fp8) { rc = cli_error("--v-cache cannot go with an FP8 MLA k_cache (V is part of K)"); goto done; }
        if ((rc = float_dtype(&v, kvdecl, kvflag, "--kv-dtype", &vt))) goto done;
        if (vt != kv_dtype) {
            rc = cli_error("--v-cache %s: dtype %s differs from k_cache's %s", v.path, npy_name(v.a.dtype), npy_name(k.a.dtype));
            goto done;
        }
        shape_str(&v.a, s1, sizeof s1);
        if (v.a.shape[0] != nb || v.a.shape[1] != bs || v.a.shape[2] != h_kv) {
            rc = cli_error("v_cache %s must match k_cache %s in [num_blocks][block_size][h_kv]", s1, s2);
            goto done;
        }
        if (dv_opt > 0 && dv_opt != v.a.shape[3]) {
            rc = cli_error("--dv %lld, but v_cache %s has dv = %lld", (long long)dv_opt, s1, (long long)v.a.shape[3]);
            goto done;
        }
    } else if (dv > d) {
        rc = cli_error("--dv %lld exceeds d = %lld (without --v-cache, V is the first dv dims of K)", (long long)dv, (long long)d);
        goto done;
    } else if (fp8 && dv != 512) {
        rc = cli_error("an FP8 MLA cache has dv = 512, not %lld", (long long)dv);
        goto done;
    }
    if (b > INT32_MAX || s_q > INT32_MAX || h_q > INT32_MAX || d > INT32_MAX || nb > INT32_MAX || bs > INT32_MAX) {
        rc = cli_error("a dimension exceeds 2^31 - 1");
        goto done;
    }
    /* tables: block_table + seqlens, or sparse indices */
    int64_t mb = 0, topk = 0;
    const int32_t *table = NULL, *lens = NULL, *idx = NULL;
    if (sparse) {
        if ((rc = want_ndim(&ix, 3, "[b][s_q][topk]")) || (rc = want_i32(&ix))) goto done;
        if (ix.a.shape[0] != b || ix.a.shape[1] != s_q || ix.a.shape[2] > INT32_MAX) {
            shape_str(&ix.a, s2, sizeof s2);
            rc = cli_error("--indices %s: shape %s, but q %s needs [%lld, %lld, topk]", ix.path, s2, s1, (long long)b,
                           (long long)s_q);
            goto done;
        }
        topk = ix.a.shape[2];
        idx = ix.a.data;
        const int64_t slots = nb * bs;
        for (size_t i = 0; i < ix.a.count; i++)
            if (idx[i] != -1 && (idx[i] < 0 || idx[i] >= slots)) {
                const int64_t t = (int64_t)i % topk, s = (int64_t)i / topk % s_q, bb = (int64_t)i / topk / s_q;
                rc = cli_error("--indices %s: indices[%lld][%lld][%lld] = %d is neither -1 nor a slot in [0, %lld) "
                               "(num_blocks %lld * block_size %lld)",
                               ix.path, (long long)bb, (long long)s, (long long)t, idx[i], (long long)slots,
                               (long long)nb, (long long)bs);
                goto done;
            }
    } else {
        if ((rc = want_ndim(&bt, 2, "[b][max_blocks_per_seq]")) || (rc = want_i32(&bt)) ||
            (rc = want_ndim(&sl, 1, "[b]")) || (rc = want_i32(&sl)))
            goto done;
        if (bt.a.shape[0] != b || sl.a.shape[0] != b) {
            rc = cli_error("batch mismatch: q has b = %lld, block_table %lld rows, seqlens %lld entries", (long long)b,
                           (long long)bt.a.shape[0], (long long)sl.a.shape[0]);
            goto done;
        }
        mb = bt.a.shape[1];
        if (mb > INT32_MAX) {
            rc = cli_error("--block-table %s: max_blocks_per_seq exceeds 2^31 - 1", bt.path);
            goto done;
        }
        table = bt.a.data, lens = sl.a.data;
        for (int64_t i = 0; i < b; i++) {
            if (lens[i] < 0 || lens[i] > mb * bs) {
                rc = cli_error("--seqlens %s: seqlens[%lld] = %d outside [0, %lld] (max_blocks_per_seq %lld * "
                               "block_size %lld)",
                               sl.path, (long long)i, lens[i], (long long)(mb * bs), (long long)mb, (long long)bs);
                goto done;
            }
            for (int64_t j = 0; j < (lens[i] + bs - 1) / bs; j++)
                if (table[i * mb + j] < 0 || table[i * mb + j] >= nb) {
                    rc = cli_error("--block-table %s: block_table[%lld][%lld] = %d outside [0, %lld) for a sequence "
                                   "of %d tokens",
                                   bt.path, (long long)i, (long long)j, table[i * mb + j], (long long)nb, lens[i]);
                    goto done;
                }
        }
    }
    if (sk.path) {
        if ((rc = want_ndim(&sk, 1, "[h_q]"))) goto done;
        if (sk.a.dtype != NPY_F4 || sk.a.shape[0] != h_q) {
            shape_str(&sk.a, s2, sizeof s2);
            rc = cli_error("--attn-sink %s: %s %s, expected float32 [%lld] (one logit per query head)", sk.path,
                           npy_name(sk.a.dtype), s2, (long long)h_q);
            goto done;
        }
    }
    pkv_attn_args args;
    fill_args(&args, b, s_q, h_q, h_kv, d, dv, bs, mb, nb, causal, scale, q_dtype, kv_dtype);
    args.q = q.a.data;
    args.k_cache = k.a.data;
    args.v_cache = v.path ? v.a.data : NULL;
    args.block_table = table;
    args.cache_seqlens = lens;
    args.indices = idx;
    args.topk = (int32_t)topk;
    args.attn_sink = sk.path ? sk.a.data : NULL;
    size_t nout = (size_t)(b * s_q * h_q * dv), nlse = (size_t)(b * h_q * s_q);
    out = malloc(nout * sizeof *out);
    lse = malloc(nlse * sizeof *lse);
    if (!out || !lse) { rc = cli_error("out of memory"); goto done; }
    args.out = out;
    args.lse = lse;
    int64_t t0 = cli_now_ns();
    int st;
    if (fast) {
        st = pkv_workers_create((int)threads, &workers);
        if (st != PKV_OK) { rc = cli_error("pkv_workers_create: %s", pkv_strerror(st)); rc = EXIT_LIB; goto done; }
        t0 = cli_now_ns();
        st = pkv_attn(&args, workers);
    } else {
        st = pkv_attn_reference(&args);
    }
    double ms = (double)(cli_now_ns() - t0) * 1e-6;
    if (st != PKV_OK) {
        rc = cli_error("%s: %s", fast ? "pkv_attn" : "pkv_attn_reference", pkv_strerror(st));
        rc = EXIT_LIB;
        goto done;
    }
    double keys = 0;
    for (int64_t i = 0; i < b; i++)
        for (int64_t j = 0; j < s_q; j++) {
            if (sparse) {
                for (int64_t t = 0; t < topk; t++) keys += idx[(i * s_q + j) * topk + t] != -1;
                continue;
            }
            int64_t L = lens[i], n = L;
            if (causal && s_q > 1) n = L - s_q + j + 1 < 0 ? 0 : (L - s_q + j + 1 > L ? L : L - s_q + j + 1);
            keys += (double)n;
        }
    double flops = 2.0 * (double)h_q * keys * (double)(d + dv);
    static const char *dn[] = {"f32", "f16", "bf16", "fp8-mla656"};
    printf("attn (%s): b=%lld s_q=%lld h_q=%lld h_kv=%lld d=%lld dv=%lld block_size=%lld num_blocks=%lld ",
           fast ? "fast" : "oracle", (long long)b, (long long)s_q, (long long)h_q, (long long)h_kv, (long long)d,
           (long long)dv, (long long)bs, (long long)nb);
    if (sparse) printf("topk=%lld%s ", (long long)topk, sk.path ? " attn_sink" : "");
    else printf("max_blocks_per_seq=%lld causal=%d%s ", (long long)mb, causal, sk.path ? " attn_sink" : "");
    printf("scale=%.9g q=%s kv=%s: %.3f ms, %.2f GFLOP/s\n", scale, dn[q_dtype], dn[kv_dtype], ms,
           ms > 0 ? flops / (ms * 1e6) : 0.0);
    char err[256];
    int64_t oshape[4] = {b, s_q, h_q, dv}, lshape[3] = {b, h_q, s_q};
    if (out_path) {
        st = npy_save(out_path, NPY_F4, 4, oshape, out, err, sizeof err);
        if (st != PKV_OK) { rc = cli_error("--out %s: %s", out_path, err); goto done; }
        printf("wrote %s [%lld, %lld, %lld, %lld] float32\n", out_path, (long long)b, (long long)s_q, (long long)h_q,
               (long long)dv);
    }
    if (lse_path) {
        st = npy_save(lse_path, NPY_F4, 3, lshape, lse, err, sizeof err);
        if (st != PKV_OK) { rc = cli_error("--lse %s: %s", lse_path, err); goto done; }
        printf("wrote %s [%lld, %lld, %lld] float32\n", lse_path, (long long)b, (long long)h_q, (long long)s_q);
    }
    if (ex.path) {
        int r = compare("out", &ex, out, nout, 4, oshape, atol, rtol);
        if (r == EXIT_USAGE) { rc = r; goto done; }
        if (r) rc = r;
    }
    if (exl.path) {
        int r = compare("lse", &exl, lse, nlse, 3, lshape, 1e-6, 8.01 / 65536);
        if (r == EXIT_USAGE) { rc = r; goto done; }
        if (r) rc = r;
    }
done:
    pkv_workers_destroy(workers);
    free(out);
    free(lse);
    for (int f = 0; f < nall; f++)
        if (all[f]->loaded) npy_free(&all[f]->a);
    return rc;
}
