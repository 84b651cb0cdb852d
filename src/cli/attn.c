/* `pkv attn`: the attention oracle (or the fast path) on NumPy .npy files, so a
 * GPU-kernel author can dump tensors with numpy.save and check a kernel here. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "npy.h"

static const char attn_help[] =
    "usage: pkv attn --q q.npy --k-cache k.npy [--v-cache v.npy] --block-table bt.npy\n"
    "                --seqlens sl.npy --scale S [--causal] [--dv N] --out out.npy\n"
    "                [--lse lse.npy] [--fast] [--dtype f32|f16|bf16]\n"
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
    "  --scale S           softmax scale (e.g. 1/sqrt(192) = 0.07216878 for DeepSeek MLA)\n"
    "  --causal            query i of s_q sees keys [0, L - s_q + i]\n"
    "  --dv N              V head dim (default: v_cache's, else d)\n"
    "  --out FILE          writes out[b][s_q][h_q][dv] float32\n"
    "  --lse FILE          writes lse[b][h_q][s_q] float32 (natural log; +inf when empty)\n"
    "  --fast              the fast path (pkv_attn, all CPUs) instead of the oracle\n"
    "  --threads N         threads for --fast (default: all online CPUs)\n"
    "  --dtype T           element type of q and the caches: f32 ('<f4'), f16 ('<f2'),\n"
    "                      bf16 (raw bits as '<u2'); needed for bf16, checked otherwise\n"
    "  --expect FILE       compares out with FILE (float32 or float64, same shape); an\n"
    "                      element passes within --tol absolute or --rtol relative error\n"
    "                      (FlashMLA's test: 8e-4, 2.01/128); NaN/inf must match exactly\n"
    "  --expect-lse FILE   compares lse too (within 1e-6 absolute or 8.01/65536 relative)\n"
    "\n"
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

static int load(arr *x) {
    char err[256];
    int st = npy_load(x->path, &x->a, err, sizeof err);
    if (st != PKV_OK) return cli_error("%s %s: %s", x->flag, x->path, err[0] ? err : pkv_strerror(st));
    x->loaded = 1;
    return 0;
}

static int want_ndim(const arr *x, int ndim, const char *layout) {
    if (x->a.ndim == ndim) return 0;
    char s[128];
    shape_str(&x->a, s, sizeof s);
    return cli_error("%s %s: expected %d dims %s, got shape %s", x->flag, x->path, ndim, layout, s);
}

/* pkv dtype of a float array (q or a cache). */
static int float_dtype(const arr *x, const char *dtype_opt, int32_t *out) {
    int t = x->a.dtype;
    int want = -1;
    if (dtype_opt) want = !strcmp(dtype_opt, "f32") ? PKV_F32 : !strcmp(dtype_opt, "f16") ? PKV_F16 : PKV_BF16;
    if (t == NPY_F4) *out = PKV_F32;
    else if (t == NPY_F2) *out = PKV_F16;
    else if (t == NPY_U2 && want == PKV_BF16) *out = PKV_BF16;
    else if (t == NPY_U2 && want >= 0)
        return cli_error("%s %s: dtype %s does not match --dtype %s (bfloat16 bits need --dtype bf16)", x->flag,
                         x->path, npy_name(t), dtype_opt);
    else if (t == NPY_U2)
        return cli_error("%s %s: uint16 data: pass --dtype bf16 if it holds bfloat16 bits", x->flag, x->path);
    else
        return cli_error("%s %s: dtype %s; expected float32, float16, or bfloat16 bits as uint16", x->flag,
                         x->path, npy_name(t));
    if (want >= 0 && want != *out)
        return cli_error("%s %s: dtype %s does not match --dtype %s", x->flag, x->path, npy_name(t), dtype_opt);
    return 0;
}

static int want_i32(const arr *x) {
    if (x->a.dtype == NPY_I4) return 0;
    return cli_error("%s %s: dtype %s; expected int32 (numpy: .astype(np.int32))", x->flag, x->path,
                     npy_name(x->a.dtype));
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

int cmd_attn(int argc, char **argv) {
    arr q = {"--q", 0, {0}, 0}, k = {"--k-cache", 0, {0}, 0}, v = {"--v-cache", 0, {0}, 0},
        bt = {"--block-table", 0, {0}, 0}, sl = {"--seqlens", 0, {0}, 0}, ex = {"--expect", 0, {0}, 0},
        exl = {"--expect-lse", 0, {0}, 0};
    const char *out_path = NULL, *lse_path = NULL, *dtype_opt = NULL;
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
        arr *files[] = {&q, &k, &v, &bt, &sl, &ex, &exl};
        int matched = 0;
        for (size_t f = 0; f < sizeof files / sizeof files[0] && !matched; f++) {
            if ((m = cli_opt(argc, argv, &i, files[f]->flag, &val))) {
                if (m < 0) return EXIT_USAGE;
                files[f]->path = val;
                matched = 1;
            }
        }
        if (matched) continue;
        if ((m = cli_opt(argc, argv, &i, "--out", &val))) { if (m < 0) return EXIT_USAGE; out_path = val; }
        else if ((m = cli_opt(argc, argv, &i, "--lse", &val))) { if (m < 0) return EXIT_USAGE; lse_path = val; }
        else if ((m = cli_opt(argc, argv, &i, "--dtype", &val))) {
            if (m < 0) return EXIT_USAGE;
            if (strcmp(val, "f32") && strcmp(val, "f16") && strcmp(val, "bf16"))
                return cli_error("--dtype: '%s' is not f32, f16 or bf16", val);
            dtype_opt = val;
        } else if ((m = cli_opt(argc, argv, &i, "--scale", &val))) {
            if (m < 0 || cli_parse_f64(val, -1e30, 1e30, &scale)) return cli_error("--scale: expected a finite number");
            have_scale = 1;
        } else if ((m = cli_opt(argc, argv, &i, "--dv", &val))) {
            if (m < 0 || cli_parse_i64(val, 1, 1 << 20, &dv_opt)) return cli_error("--dv: expected a positive integer");
        } else if ((m = cli_opt(argc, argv, &i, "--threads", &val))) {
            if (m < 0 || cli_parse_i64(val, 1, 1024, &threads)) return cli_error("--threads: expected an integer in 1..1024");
        } else if ((m = cli_opt(argc, argv, &i, "--tol", &val))) {
            if (m < 0 || cli_parse_f64(val, 0, 1e30, &atol)) return cli_error("--tol: expected a number >= 0");
        } else if ((m = cli_opt(argc, argv, &i, "--rtol", &val))) {
            if (m < 0 || cli_parse_f64(val, 0, 1e30, &rtol)) return cli_error("--rtol: expected a number >= 0");
        } else {
            return cli_error("attn: unknown option '%s' (see pkv attn --help)", a);
        }
    }
    if (!q.path || !k.path || !bt.path || !sl.path || !out_path || !have_scale) {
        return cli_error("attn: missing %s (see pkv attn --help)",
                         !q.path ? "--q" : !k.path ? "--k-cache" : !bt.path ? "--block-table"
                         : !sl.path ? "--seqlens" : !out_path ? "--out" : "--scale");
    }
    int rc = 0;
    float *out = NULL, *lse = NULL;
    pkv_workers *workers = NULL;
    arr *all[] = {&q, &k, &v, &bt, &sl, &ex, &exl};
    for (size_t f = 0; f < sizeof all / sizeof all[0] && !rc; f++)
        if (all[f]->path) rc = load(all[f]);
    if (rc) goto done;

    pkv_attn_args args;
    pkv_attn_args_init(&args);
    /* q [b][s_q][h_q][d] */
    if ((rc = want_ndim(&q, 4, "[b][s_q][h_q][d]")) || (rc = float_dtype(&q, dtype_opt, &args.q_dtype))) goto done;
    int64_t b = q.a.shape[0], s_q = q.a.shape[1], h_q = q.a.shape[2], d = q.a.shape[3];
    /* k_cache [num_blocks][block_size][h_kv][d], or FP8 MLA rows */
    int64_t nb, bs, h_kv, kd;
    int fp8 = k.a.dtype == NPY_U1;
    if (fp8) {
        if (!((k.a.ndim == 3 && k.a.shape[2] == 656) || (k.a.ndim == 4 && k.a.shape[2] == 1 && k.a.shape[3] == 656))) {
            char s[128];
            shape_str(&k.a, s, sizeof s);
            rc = cli_error("--k-cache %s: uint8 means FP8 MLA rows [num_blocks][block_size][656], got %s", k.path, s);
            goto done;
        }
        nb = k.a.shape[0], bs = k.a.shape[1], h_kv = 1, kd = 576;
        args.kv_dtype = PKV_FP8_MLA656;
    } else {
        if ((rc = want_ndim(&k, 4, "[num_blocks][block_size][h_kv][d]")) ||
            (rc = float_dtype(&k, dtype_opt, &args.kv_dtype)))
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
        if ((rc = float_dtype(&v, dtype_opt, &vt))) goto done;
        if (fp8) { rc = cli_error("--v-cache cannot go with an FP8 MLA k_cache (V is part of K)"); goto done; }
        if (vt != args.kv_dtype) {
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
    /* tables */
    if ((rc = want_ndim(&bt, 2, "[b][max_blocks_per_seq]")) || (rc = want_i32(&bt)) ||
        (rc = want_ndim(&sl, 1, "[b]")) || (rc = want_i32(&sl)))
        goto done;
    if (bt.a.shape[0] != b || sl.a.shape[0] != b) {
        rc = cli_error("batch mismatch: q has b = %lld, block_table %lld rows, seqlens %lld entries", (long long)b,
                       (long long)bt.a.shape[0], (long long)sl.a.shape[0]);
        goto done;
    }
    int64_t mb = bt.a.shape[1];
    if (b < 1 || s_q < 1 || h_q < 1 || d < 1 || nb < 1 || bs < 1 || mb < 1) {
        rc = cli_error("empty dimension: every dimension must be >= 1");
        goto done;
    }
    if (b > INT32_MAX || s_q > INT32_MAX || h_q > INT32_MAX || d > INT32_MAX || nb > INT32_MAX || bs > INT32_MAX || mb > INT32_MAX) {
        rc = cli_error("a dimension exceeds 2^31 - 1");
        goto done;
    }
    const int32_t *table = bt.a.data, *lens = sl.a.data;
    for (int64_t i = 0; i < b; i++) {
        if (lens[i] < 0 || lens[i] > mb * bs) {
            rc = cli_error("seqlens[%lld] = %d outside [0, %lld] (max_blocks_per_seq %lld * block_size %lld)",
                           (long long)i, lens[i], (long long)(mb * bs), (long long)mb, (long long)bs);
            goto done;
        }
        for (int64_t j = 0; j < (lens[i] + bs - 1) / bs; j++)
            if (table[i * mb + j] < 0 || table[i * mb + j] >= nb) {
                rc = cli_error("block_table[%lld][%lld] = %d outside [0, %lld) for a sequence of %d tokens",
                               (long long)i, (long long)j, table[i * mb + j], (long long)nb, lens[i]);
                goto done;
            }
    }
    args.batch = (int32_t)b;
    args.s_q = (int32_t)s_q;
    args.h_q = (int32_t)h_q;
    args.h_kv = (int32_t)h_kv;
    args.d = (int32_t)d;
    args.dv = (int32_t)dv;
    args.block_size = (int32_t)bs;
    args.max_blocks_per_seq = (int32_t)mb;
    args.num_blocks = (int32_t)nb;
    args.causal = causal;
    args.softmax_scale = (float)scale;
    args.q = q.a.data;
    args.k_cache = k.a.data;
    args.v_cache = v.path ? v.a.data : NULL;
    args.block_table = table;
    args.cache_seqlens = lens;
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
        goto done;
    }
    double keys = 0;
    for (int64_t i = 0; i < b; i++)
        for (int64_t j = 0; j < s_q; j++) {
            int64_t L = lens[i], n = L;
            if (causal && s_q > 1) n = L - s_q + j + 1 < 0 ? 0 : (L - s_q + j + 1 > L ? L : L - s_q + j + 1);
            keys += (double)n;
        }
    double flops = 2.0 * (double)h_q * keys * (double)(d + dv);
    static const char *dn[] = {"f32", "f16", "bf16", "fp8-mla656"};
    printf("attn (%s): b=%lld s_q=%lld h_q=%lld h_kv=%lld d=%lld dv=%lld block_size=%lld num_blocks=%lld "
           "max_blocks_per_seq=%lld causal=%d scale=%.9g q=%s kv=%s: %.3f ms, %.2f GFLOP/s\n",
           fast ? "fast" : "oracle", (long long)b, (long long)s_q, (long long)h_q, (long long)h_kv, (long long)d,
           (long long)dv, (long long)bs, (long long)nb, (long long)mb, causal, scale, dn[args.q_dtype],
           dn[args.kv_dtype], ms, ms > 0 ? flops / (ms * 1e6) : 0.0);
    char err[256];
    int64_t oshape[4] = {b, s_q, h_q, dv}, lshape[3] = {b, h_q, s_q};
    st = npy_save(out_path, NPY_F4, 4, oshape, out, err, sizeof err);
    if (st != PKV_OK) { rc = cli_error("--out %s: %s", out_path, err); goto done; }
    printf("wrote %s [%lld, %lld, %lld, %lld] float32\n", out_path, (long long)b, (long long)s_q, (long long)h_q, (long long)dv);
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
    for (size_t f = 0; f < sizeof all / sizeof all[0]; f++)
        if (all[f]->loaded) npy_free(&all[f]->a);
    return rc;
}
