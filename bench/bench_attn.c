/* Benchmark of pkv_attn (the fast CPU path) against the machine's own ceilings.
 *
 *   build/bench/bench_attn [--quick] [--threads N] [--only NAME]   (or PKV_BENCH_QUICK=1)
 *
 * First measures the ceilings of each instruction kind the kernels execute
 * (FP32 FMA at 512 and 256 bits, vdpbf16ps, AMX tdpbf16ps where present: one
 * core and all cores, best and median of the runs) and the streaming-read
 * bandwidth, then for each shape and block size: median time, GFLOP/s
 * (2 * h_q * keys * (d + dv), causal rows counting the keys they see), the
 * kernel's roofline and its share of it, effective GB/s of KV read and % of the
 * bandwidth, speed-up over the oracle, and paged / contiguous time (the same
 * rows behind an identity table with one block per sequence).
 *
 * Roofline of a row: min(compute, bandwidth * FLOPs / KV bytes), where compute
 * is what the kernel's instruction mix allows on all cores: Q K^T FLOPs at the
 * ceiling of the instruction that computes them plus P V FLOPs at theirs (AMX
 * computes P V twice, a bf16 high and low part), i.e. FLOPs / (F_qk / C_qk +
 * m_pv * F_pv / C_pv). Ceilings are the best of their runs, so a loaded machine
 * lowers a kernel's share, never raises it. The oracle (double precision) is
 * timed once on a reduced shape (1 sequence, <= 256 keys, <= 2 query tokens)
 * and scaled by FLOPs. Then windowed decode (window W = 1024) at L = 4096,
 * 16384 and 65536, the blocks before the window released (table entries -1),
 * against full attention over the same cache: windowed time should be flat in L.
 * JSON lines on stdout, a table on stderr. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/kernels.h"
#include "common/bench.h"
#include "pagedkv.h"

typedef struct shape {
    const char *name;
    int32_t b, h_q, h_kv, d, dv, s_q, s_k, causal, q_dtype, kv_dtype, v_shared;
    int32_t prefill; /* chunked prefill: block size 64 only, 3 runs, no contiguous twin */
} shape;

static const shape shapes[] = {
    {"mla_bf16", 1, 128, 1, 576, 512, 1, 8192, 0, PKV_BF16, PKV_BF16, 1, 0},
    {"mla_bf16", 8, 128, 1, 576, 512, 1, 4096, 0, PKV_BF16, PKV_BF16, 1, 0},
    {"mla_bf16", 8, 16, 1, 576, 512, 1, 8192, 0, PKV_BF16, PKV_BF16, 1, 0},
    {"mla_bf16", 64, 16, 1, 576, 512, 1, 1024, 0, PKV_BF16, PKV_BF16, 1, 0},
    {"mla_bf16_mtp", 8, 64, 1, 576, 512, 2, 4096, 1, PKV_BF16, PKV_BF16, 1, 0},
    {"mla_fp8", 1, 128, 1, 576, 512, 1, 8192, 0, PKV_BF16, PKV_FP8_MLA656, 1, 0},
    {"mla_fp8", 8, 128, 1, 576, 512, 1, 4096, 0, PKV_BF16, PKV_FP8_MLA656, 1, 0},
    {"mla_fp8", 8, 16, 1, 576, 512, 1, 8192, 0, PKV_BF16, PKV_FP8_MLA656, 1, 0},
    {"mla_fp8", 64, 16, 1, 576, 512, 1, 1024, 0, PKV_BF16, PKV_FP8_MLA656, 1, 0},
    {"mla_fp8_mtp", 8, 64, 1, 576, 512, 2, 4096, 1, PKV_BF16, PKV_FP8_MLA656, 1, 0},
    {"gqa_f16", 1, 32, 8, 128, 128, 1, 16384, 0, PKV_F16, PKV_F16, 0, 0},
    {"gqa_f16", 16, 32, 8, 128, 128, 1, 2048, 0, PKV_F16, PKV_F16, 0, 0},
    /* causal chunked prefill: 1024 new tokens over a 4096-token sequence */
    {"mla_bf16_prefill", 1, 16, 1, 576, 512, 1024, 4096, 1, PKV_BF16, PKV_BF16, 1, 1},
    {"gqa_bf16_prefill", 1, 32, 8, 128, 128, 1024, 4096, 1, PKV_BF16, PKV_BF16, 0, 1},
};

static const char *dt_name(int t) {
    switch (t) {
    case PKV_F32: return "f32";
    case PKV_F16: return "f16";
    case PKV_BF16: return "bf16";
    case PKV_FP8_MLA656: return "fp8";
    default: return "?";
    }
}

static uint64_t rng_state = 0x1234567;
static float frand(void) { /* uniform [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static void fill(void *dst, int dtype, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float x = frand();
        if (dtype == PKV_F32) ((float *)dst)[i] = x;
        else if (dtype == PKV_BF16) ((uint16_t *)dst)[i] = pkv_f32_to_bf16(x);
        else ((uint16_t *)dst)[i] = pkv_f32_to_f16(x);
    }
}

/* The data of one shape: contiguous caches (one block per sequence) and the same
 * rows scattered over permuted blocks of block_size. */
typedef struct bdata {
    void *q, *kc, *vc, *kp, *vp;
    int32_t *tc, *tp, *lens;
    float *out, *lse;
    size_t krow, vrow; /* bytes per token of K (all heads) and V */
} bdata;

static void build(const shape *s, int32_t bs, bdata *d) {
    memset(d, 0, sizeof *d);
    const size_t tokens = (size_t)s->b * (size_t)s->s_k;
    const int fp8 = s->kv_dtype == PKV_FP8_MLA656;
    d->krow = fp8 ? 656 : (size_t)s->h_kv * (size_t)s->d * pkv_dtype_size(s->kv_dtype);
    d->vrow = s->v_shared ? 0 : (size_t)s->h_kv * (size_t)s->dv * pkv_dtype_size(s->kv_dtype);
    d->kc = malloc(tokens * d->krow);
    if (fp8) {
        float x[576];
        for (size_t t = 0; t < tokens; t++) {
            for (int c = 0; c < 576; c++) x[c] = frand();
            pkv_mla656_quantize(x, (uint8_t *)d->kc + t * 656, 0);
        }
    } else {
        fill(d->kc, s->kv_dtype, tokens * d->krow / pkv_dtype_size(s->kv_dtype));
    }
    if (d->vrow) {
        d->vc = malloc(tokens * d->vrow);
        fill(d->vc, s->kv_dtype, tokens * d->vrow / pkv_dtype_size(s->kv_dtype));
    }
    const size_t nq = (size_t)s->b * (size_t)s->s_q * (size_t)s->h_q * (size_t)s->d;
    d->q = malloc(nq * pkv_dtype_size(s->q_dtype));
    fill(d->q, s->q_dtype, nq);
    /* paged copy: blocks of each sequence at permuted ids */
    const int32_t per = (s->s_k + bs - 1) / bs, nblocks = per * s->b;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)nblocks);
    for (int32_t i = 0; i < nblocks; i++) perm[i] = i;
    for (int32_t i = nblocks - 1; i > 0; i--) {
        const int32_t j = (int32_t)((rng_state = rng_state * 6364136223846793005ull + 1) >> 33) % (i + 1);
        const int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    d->kp = calloc((size_t)nblocks * (size_t)bs, d->krow);
    if (d->vrow) d->vp = calloc((size_t)nblocks * (size_t)bs, d->vrow);
    d->tp = malloc(sizeof(int32_t) * (size_t)nblocks);
    d->tc = malloc(sizeof(int32_t) * (size_t)s->b);
    d->lens = malloc(sizeof(int32_t) * (size_t)s->b);
    for (int32_t b = 0; b < s->b; b++) {
        d->tc[b] = b;
        d->lens[b] = s->s_k;
        for (int32_t k = 0; k < per; k++) {
            const int32_t blk = perm[b * per + k];
            d->tp[b * per + k] = blk;
            const int32_t n = (k + 1) * bs <= s->s_k ? bs : s->s_k - k * bs;
            const size_t src = (size_t)b * (size_t)s->s_k + (size_t)k * (size_t)bs, dst = (size_t)blk * (size_t)bs;
            memcpy((char *)d->kp + dst * d->krow, (char *)d->kc + src * d->krow, (size_t)n * d->krow);
            if (d->vrow) memcpy((char *)d->vp + dst * d->vrow, (char *)d->vc + src * d->vrow, (size_t)n * d->vrow);
        }
    }
    free(perm);
    d->out = malloc(sizeof(float) * (size_t)s->b * (size_t)s->s_q * (size_t)s->h_q * (size_t)s->dv);
    d->lse = malloc(sizeof(float) * (size_t)s->b * (size_t)s->s_q * (size_t)s->h_q);
}

static void release(bdata *d) {
    free(d->q); free(d->kc); free(d->vc); free(d->kp); free(d->vp);
    free(d->tc); free(d->tp); free(d->lens); free(d->out); free(d->lse);
}

static pkv_attn_args args_of(const shape *s, const bdata *d, int paged, int32_t bs) {
    pkv_attn_args a;
    pkv_attn_args_init(&a);
    a.batch = s->b; a.s_q = s->s_q; a.h_q = s->h_q; a.h_kv = s->h_kv; a.d = s->d; a.dv = s->dv;
    a.causal = s->causal;
    a.softmax_scale = 1.0f / sqrtf(192.0f);
    a.q_dtype = s->q_dtype; a.kv_dtype = s->kv_dtype;
    a.q = d->q;
    a.cache_seqlens = d->lens;
    a.out = d->out;
    a.lse = d->lse;
    if (paged) {
        a.block_size = bs;
        a.max_blocks_per_seq = (s->s_k + bs - 1) / bs;
        a.num_blocks = a.max_blocks_per_seq * s->b;
        a.k_cache = d->kp; a.v_cache = d->vp; a.block_table = d->tp;
    } else {
        a.block_size = s->s_k;
        a.max_blocks_per_seq = 1;
        a.num_blocks = s->b;
        a.k_cache = d->kc; a.v_cache = d->vc; a.block_table = d->tc;
    }
    return a;
}

/* Median seconds of pkv_attn over reps runs (after one warm-up), at least
 * min_reps and until about budget seconds have passed. */
/* The kernels to time: NULL for pkv_attn's own choice, else a forced set. */
static const attn_ops *forced_ops = NULL;

static int run_attn(const pkv_attn_args *a, pkv_workers *w) {
    return forced_ops ? attn_fast_run(a, w, forced_ops) : pkv_attn(a, w);
}

/* Timing cold: the KV bytes of a call are flushed from every cache level
 * before each timed run, so a decode reads them from DRAM as in an engine
 * (where one layer's KV is long gone from the caches when the next step comes
 * back to it). Without the flush, a KV cache smaller than the last-level cache
 * (260 MiB on some of these machines) is served from it, and a comparison with
 * the DRAM streaming bandwidth would report more than 100%. */
static int cold = 1;
static int bench_threads = 1;

/* Bytes of the K and V arrays of a call (all slots of its blocks). */
static void kv_arrays(const pkv_attn_args *a, size_t *kb, size_t *vb) {
    const size_t slots = (size_t)a->num_blocks * (size_t)a->block_size;
    *kb = slots * (a->kv_dtype == PKV_FP8_MLA656 ? 656 : (size_t)a->h_kv * (size_t)a->d * pkv_dtype_size(a->kv_dtype));
    *vb = a->v_cache ? slots * (size_t)a->h_kv * (size_t)a->dv * pkv_dtype_size(a->kv_dtype) : 0;
}

static void flush_kv(const pkv_attn_args *a) {
    size_t kb, vb;
    kv_arrays(a, &kb, &vb);
    bench_flush(a->k_cache, kb);
    if (vb) bench_flush(a->v_cache, vb);
}

/* Median seconds of a call (cold: see above); *tmin the fastest. paired (may
 * be NULL): before each timed run, the same K and V arrays are read
 * sequentially from DRAM (bench_read_buf_gbs) and *paired gets the median over
 * runs of (that read's seconds / the call's seconds): the share of the
 * streaming bandwidth of the very bytes, both measured under the same load
 * (this VM's bandwidth drifts by a third from minute to minute, so a ratio to
 * one figure measured at start is mostly noise). */
static double time_attn(const pkv_attn_args *a, pkv_workers *w, int min_reps, double budget, double *tmin,
                        double *paired) {
    double v[64], ratio[64];
    int n = 0;
    if (run_attn(a, w) != PKV_OK) return NAN;
    size_t kb, vb;
    kv_arrays(a, &kb, &vb);
    const double start = bench_now();
    while (n < 64 && (n < min_reps || bench_now() - start < budget)) {
        double ts = 0;
        if (paired) {
            ts = (double)kb / bench_read_buf_gbs(a->k_cache, kb, bench_threads) * 1e-9;
            if (vb) ts += (double)vb / bench_read_buf_gbs(a->v_cache, vb, bench_threads) * 1e-9;
        }
        if (cold) flush_kv(a);
        const double t0 = bench_now();
        run_attn(a, w);
        v[n] = bench_now() - t0;
        ratio[n] = ts / v[n];
        n++;
    }
    const double med = bench_median(v, n);
    if (tmin) *tmin = v[0];
    if (paired) *paired = bench_median(ratio, n);
    return med;
}

/* Keys the query rows of shape s see, summed over its query tokens (one sequence). */
static double seen_keys(int32_t s_q, int32_t s_k, int causal) {
    double keys = 0;
    for (int32_t i = 0; i < s_q; i++) keys += causal ? s_k - s_q + i + 1 : s_k;
    return keys;
}

/* Oracle seconds for the full shape, from one run on 1 sequence of <= 256 keys
 * and <= 2 query tokens, scaled by FLOPs. */
static double time_oracle(const shape *s, const bdata *d, double *scaled_from_keys) {
    const int32_t keys = s->s_k < 256 ? s->s_k : 256, sq = s->s_q < 2 ? s->s_q : 2;
    pkv_attn_args a = args_of(s, d, 0, 0);
    a.batch = 1;
    a.s_q = sq;
    int32_t len = keys;
    a.cache_seqlens = &len;
    a.block_size = s->s_k;
    const double t0 = bench_now();
    pkv_attn_reference(&a);
    const double t = bench_now() - t0;
    *scaled_from_keys = keys;
    return t * ((double)s->b * seen_keys(s->s_q, s->s_k, s->causal)) / seen_keys(sq, keys, s->causal);
}

/* The ceilings of one run (GFLOP/s, all threads; 0: kind not on this CPU). */
static double ceil_all[BENCH_KINDS];

/* What a kernel family executes: the instruction kind of Q K^T and of P V and
 * how many times P V's FLOPs are computed. */
static void kernel_mix(const char *name, int *kqk, int *kpv, double *mpv) {
    *mpv = 1;
    if (!strncmp(name, "amx", 3)) {
        *kqk = *kpv = BENCH_AMX_BF16;
        *mpv = 2; /* P as a bf16 high part and a residual */
    } else if (strstr(name, "bf16dp")) {
        *kqk = BENCH_DPBF16;
        *kpv = BENCH_FMA512;
    } else if (!strncmp(name, "avx512", 6)) {
        *kqk = *kpv = BENCH_FMA512;
    } else if (!strncmp(name, "avx2", 4)) {
        *kqk = *kpv = BENCH_FMA256;
    } else {
        *kqk = *kpv = BENCH_SCALAR;
    }
}

/* GFLOP/s the kernel's instruction mix allows on all threads (0 when a kind it
 * needs was not measured). */
static double compute_roof(const char *kernel, const shape *s) {
    int kqk, kpv;
    double mpv;
    kernel_mix(kernel, &kqk, &kpv, &mpv);
    if (ceil_all[kqk] <= 0 || ceil_all[kpv] <= 0) return 0;
    const double fqk = s->d, fpv = s->dv; /* per key and query row, up to the common factor */
    return (fqk + fpv) / (fqk / ceil_all[kqk] + mpv * fpv / ceil_all[kpv]);
}

/* The kernels pkv_attn runs for shape s (few rows per KV head: the rows variant). */
static const attn_ops *ops_for_shape(const shape *s, const attn_ops *forced) {
    const attn_ops *o = forced ? forced : attn_ops_best(s->q_dtype, s->kv_dtype);
    if (o && o->small_m && (int64_t)(s->h_q / s->h_kv) * s->s_q <= ATTN_SMALL_M) o = o->small_m;
    return o;
}

/* ---- windowed decode: time flat in L beyond the window ---- */
typedef struct wshape {
    const char *name;
    int32_t b, h_q, h_kv, d, dv, q_dtype, kv_dtype, v_shared, window, bs;
} wshape;

static const wshape wshapes[] = {
    {"mla_bf16_win", 4, 16, 1, 576, 512, PKV_BF16, PKV_BF16, 1, 1024, 64},
    {"mla_fp8_win", 4, 16, 1, 576, 512, PKV_BF16, PKV_FP8_MLA656, 1, 1024, 64},
    {"gqa_f16_win", 1, 32, 8, 128, 128, PKV_F16, PKV_F16, 0, 1024, 16},
};
static const int32_t wlens[] = {4096, 16384, 65536};

/* Times windowed decode of ws at each length of wlens (and full attention over
 * the same cache for contrast): one JSON line and one table row per length. */
static void bench_window(const wshape *ws, pkv_workers *w, int reps, double budget) {
    double t_first = 0;
    for (size_t li = 0; li < sizeof wlens / sizeof wlens[0]; li++) {
        const int32_t L = wlens[li], bs = ws->bs, per = (L + bs - 1) / bs, nblocks = per * ws->b;
        const int fp8 = ws->kv_dtype == PKV_FP8_MLA656;
        const size_t krow = fp8 ? 656 : (size_t)ws->h_kv * (size_t)ws->d * pkv_dtype_size(ws->kv_dtype);
        const size_t vrow = ws->v_shared ? 0 : (size_t)ws->h_kv * (size_t)ws->dv * pkv_dtype_size(ws->kv_dtype);
        const size_t slots = (size_t)nblocks * (size_t)bs;
        void *k = malloc(slots * krow), *v = vrow ? malloc(slots * vrow) : NULL;
        const size_t nq = (size_t)ws->b * (size_t)ws->h_q * (size_t)ws->d;
        void *q = malloc(nq * pkv_dtype_size(ws->q_dtype));
        float *out = malloc(sizeof(float) * (size_t)ws->b * (size_t)ws->h_q * (size_t)ws->dv);
        float *lse = malloc(sizeof(float) * (size_t)ws->b * (size_t)ws->h_q);
        int32_t *full = malloc(sizeof(int32_t) * (size_t)nblocks), *win = malloc(sizeof(int32_t) * (size_t)nblocks);
        int32_t *lens = malloc(sizeof(int32_t) * (size_t)ws->b);
        if (!k || (vrow && !v) || !q || !out || !lse || !full || !win || !lens) {
            fprintf(stderr, "%s: out of memory at L = %d\n", ws->name, L);
            free(k); free(v); free(q); free(out); free(lse); free(full); free(win); free(lens);
            return;
        }
        if (fp8) {
            float x[576];
            for (size_t t = 0; t < slots; t++) {
                for (int c = 0; c < 576; c++) x[c] = frand();
                pkv_mla656_quantize(x, (uint8_t *)k + t * 656, 0);
            }
        } else {
            fill(k, ws->kv_dtype, slots * krow / pkv_dtype_size(ws->kv_dtype));
            if (v) fill(v, ws->kv_dtype, slots * vrow / pkv_dtype_size(ws->kv_dtype));
        }
        fill(q, ws->q_dtype, nq);
        for (int32_t i = 0; i < nblocks; i++) full[i] = i;
        for (int32_t i = nblocks - 1; i > 0; i--) { /* scattered blocks */
            const int32_t j = (int32_t)((rng_state = rng_state * 6364136223846793005ull + 1) >> 33) % (i + 1);
            const int32_t t = full[i];
            full[i] = full[j];
            full[j] = t;
        }
        /* an engine's windowed table: blocks wholly before the window released */
        const int32_t first = L > ws->window ? (L - ws->window) / bs : 0;
        for (int32_t b = 0; b < ws->b; b++) {
            lens[b] = L;
            for (int32_t j = 0; j < per; j++) win[b * per + j] = j < first ? -1 : full[b * per + j];
        }
        pkv_attn_args a;
        pkv_attn_args_init(&a);
        a.batch = ws->b; a.s_q = 1; a.h_q = ws->h_q; a.h_kv = ws->h_kv; a.d = ws->d; a.dv = ws->dv;
        a.block_size = bs; a.max_blocks_per_seq = per; a.num_blocks = nblocks;
        a.softmax_scale = 1.0f / sqrtf(192.0f);
        a.q_dtype = ws->q_dtype; a.kv_dtype = ws->kv_dtype;
        a.q = q; a.k_cache = k; a.v_cache = v; a.cache_seqlens = lens; a.out = out; a.lse = lse;
        a.block_table = win;
        a.window = ws->window;
        double tmin = 0;
        const double tw = time_attn(&a, w, reps, budget, &tmin, NULL);
        a.block_table = full;
        a.window = 0;
        const double tf = time_attn(&a, w, reps, budget, NULL, NULL);
        if (li == 0) t_first = tw;
        const attn_ops *o = attn_ops_best(ws->q_dtype, ws->kv_dtype);
        if (o && o->small_m && ws->h_q / ws->h_kv <= ATTN_SMALL_M) o = o->small_m;
        const char *kname = o ? o->name : "?";
        bench_json j;
        json_begin(&j, stdout);
        json_str(&j, "bench", "attn_window");
        json_str(&j, "shape", ws->name);
        json_int(&j, "b", ws->b); json_int(&j, "h_q", ws->h_q); json_int(&j, "h_kv", ws->h_kv);
        json_int(&j, "d", ws->d); json_int(&j, "dv", ws->dv); json_int(&j, "s_q", 1);
        json_int(&j, "s_k", L); json_int(&j, "window", ws->window); json_int(&j, "block_size", bs);
        json_str(&j, "q_dtype", dt_name(ws->q_dtype)); json_str(&j, "kv_dtype", dt_name(ws->kv_dtype));
        json_str(&j, "kernel", kname);
        json_int(&j, "threads", workers_count(w));
        json_num(&j, "time_ms", tw * 1e3);
        json_num(&j, "time_ms_min", tmin * 1e3);
        json_num(&j, "full_time_ms", tf * 1e3);
        json_num(&j, "time_over_first_length", tw / t_first);
        json_end(&j);
        fprintf(stderr, "%-14s %3d %4d %6d %5d %3d %-17s %9.3f %9.3f %11.2f %8.2f\n", ws->name, ws->b, ws->h_q, L,
                ws->window, bs, kname, tw * 1e3, tf * 1e3, tw / t_first, tf / tw);
        free(k); free(v); free(q); free(out); free(lse); free(full); free(win); free(lens);
    }
}

int main(int argc, char **argv) {
    int quick = getenv("PKV_BENCH_QUICK") != NULL, threads = 0;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) quick = 1;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
    }
    const int cpus = bench_cpus();
    const int nthreads = threads > 0 ? threads : cpus;
    bench_threads = nthreads;
    const int reps = quick ? 3 : 7;
    bench_json j;
    json_begin(&j, stdout);
    json_str(&j, "bench", "ceilings");
    json_str(&j, "cpu", bench_cpu_model());
    json_int(&j, "cpus", cpus);
    json_int(&j, "threads", nthreads);
    fprintf(stderr, "CPU: %s, %d threads; attention ISA %s\n", bench_cpu_model(), nthreads, pkv_isa_name());
    fprintf(stderr, "ceilings, GFLOP/s (best / median of %d runs of ~0.1 s):\n", reps);
    for (int k = 0; k < BENCH_KINDS; k++) {
        if (!bench_kind_available(k)) continue;
        double m1, mn;
        const double c1 = bench_ceiling(k, 1, reps, &m1);
        ceil_all[k] = bench_ceiling(k, nthreads, reps, &mn);
        char key[64];
        snprintf(key, sizeof key, "%s_gflops_1core", bench_kind_name(k));
        json_num(&j, key, c1);
        snprintf(key, sizeof key, "%s_gflops_all", bench_kind_name(k));
        json_num(&j, key, ceil_all[k]);
        snprintf(key, sizeof key, "%s_gflops_all_median", bench_kind_name(k));
        json_num(&j, key, mn);
        fprintf(stderr, "  %-14s one core %7.1f / %7.1f   all cores %7.1f / %7.1f\n", bench_kind_name(k), c1, m1,
                ceil_all[k], mn);
    }
    double bw_best = 0;
    const double bw_med = bench_read_gbs((size_t)1 << 30, nthreads, quick ? 3 : 5, &bw_best);
    const double bw = bw_best;
    json_num(&j, "read_gbs", bw);
    json_num(&j, "read_gbs_median", bw_med);
    json_str(&j, "read_reference", bench_read_reference(nthreads) ? "software prefetch" : "plain");
    json_str(&j, "attn_isa", pkv_isa_name());
    json_end(&j);
    fprintf(stderr, "  streaming read %.1f GB/s (best), %.1f (median; reference: the %s read)\n\n", bw, bw_med,
            bench_read_reference(nthreads) ? "software-prefetching" : "plain");
    fprintf(stderr, "%-16s %3s %4s %4s %6s %3s %-17s %9s %8s %8s %5s %7s %5s %5s %6s %9s %7s\n", "shape", "b", "h_q", "sq",
            "s_k", "bs", "kernel", "time_ms", "GFLOP/s", "roof", "%roof", "GB/s", "%bw", "%st", "B/tok", "x_oracle", "pg/ct");

    pkv_workers *w = NULL, *w1 = NULL;
    if (pkv_workers_create(nthreads, &w) != PKV_OK || pkv_workers_create(1, &w1) != PKV_OK) return 1;
    const int32_t bss[2] = {64, 16};
    const size_t nshapes = sizeof shapes / sizeof shapes[0];
    /* the oracle's time depends on neither the block size nor the kernels */
    double oracle_t[sizeof shapes / sizeof shapes[0]], oracle_from[sizeof shapes / sizeof shapes[0]];
    /* pass 1: with AMX active, the AVX-512 (vdpbf16ps) kernels on the h_q = 128
     * MLA shapes too, for comparison */
    const int passes = pkv_isa_active() == PKV_ISA_AMX ? 2 : 1;
    for (size_t pi = 0; pi < passes * nshapes; pi++) {
        const size_t si = pi % nshapes;
        const shape *s = &shapes[si];
        if (only && !strstr(s->name, only)) continue;
        forced_ops = NULL;
        if (pi >= nshapes) {
            if (s->h_q != 128 || s->s_q != 1) continue;
            forced_ops = attn_ops_for(PKV_ISA_AVX512, s->q_dtype, s->kv_dtype);
        }
        for (int bi = 0; bi < (quick || forced_ops || s->prefill ? 1 : 2); bi++) {
            const int32_t bs = bss[bi];
            bdata d;
            build(s, bs, &d);
            pkv_attn_args ap = args_of(s, &d, 1, bs), ac = args_of(s, &d, 0, bs);
            const double budget = quick || s->prefill ? 0.3 : 1.0;
            const int nrep = s->prefill ? 3 : reps;
            double tpmin = 0, paired = NAN;
            const double tp = time_attn(&ap, w, nrep, budget, &tpmin, s->prefill ? NULL : &paired);
            const double tc = s->prefill ? NAN : time_attn(&ac, w, reps, budget, NULL, NULL);
            const double flops = 2.0 * s->b * s->h_q * seen_keys(s->s_q, s->s_k, s->causal) * (s->d + s->dv);
            const double tok_bytes = (double)(d.krow + d.vrow);
            const double kv_bytes = (double)s->b * s->s_k * tok_bytes;
            if (bi == 0 && !forced_ops) oracle_t[si] = time_oracle(s, &d, &oracle_from[si]);
            const double to = oracle_t[si], from = oracle_from[si];
            double t1 = NAN;
            if (s->b == 1 && s->h_q == 128 && bi == 0 && !forced_ops) t1 = time_attn(&ap, w1, quick ? 2 : 3, budget, NULL, NULL);
            const attn_ops *kops = ops_for_shape(s, forced_ops);
            const char *kname = kops ? kops->name : "?";
            const double croof = compute_roof(kname, s), mroof = bw * flops / kv_bytes;
            const double roof = croof > 0 && croof < mroof ? croof : mroof;
            const double gflops = flops / tp * 1e-9;
            json_begin(&j, stdout);
            json_str(&j, "bench", "attn");
            json_str(&j, "shape", s->name);
            json_int(&j, "b", s->b); json_int(&j, "h_q", s->h_q); json_int(&j, "h_kv", s->h_kv);
            json_int(&j, "d", s->d); json_int(&j, "dv", s->dv); json_int(&j, "s_q", s->s_q);
            json_int(&j, "s_k", s->s_k); json_int(&j, "causal", s->causal); json_int(&j, "block_size", bs);
            json_str(&j, "q_dtype", dt_name(s->q_dtype)); json_str(&j, "kv_dtype", dt_name(s->kv_dtype));
            json_str(&j, "kernel", kname);
            json_int(&j, "threads", nthreads);
            json_num(&j, "time_ms", tp * 1e3);
            json_num(&j, "time_ms_min", tpmin * 1e3);
            json_num(&j, "gflops", gflops);
            json_num(&j, "roof_compute_gflops", croof);
            json_num(&j, "roof_memory_gflops", mroof);
            json_num(&j, "roof_gflops", roof);
            json_num(&j, "pct_roof", 100.0 * gflops / roof);
            json_num(&j, "kv_bytes_per_token", tok_bytes);
            json_num(&j, "kv_gbs", kv_bytes / tp * 1e-9);
            json_num(&j, "pct_bw", 100.0 * kv_bytes / tp * 1e-9 / bw);
            json_str(&j, "cache_state", cold ? "cold: K and V flushed from every cache level before each run" : "warm");
            if (!isnan(paired)) json_num(&j, "pct_stream_paired", 100.0 * paired);
            if (!s->prefill) {
                json_num(&j, "contig_time_ms", tc * 1e3);
                json_num(&j, "paged_over_contig", tp / tc);
            }
            json_num(&j, "oracle_ms_est", to * 1e3);
            json_str(&j, "oracle_method", "one run on 1 sequence of oracle_scaled_from_keys keys, scaled by FLOPs");
            json_num(&j, "oracle_scaled_from_keys", from);
            json_num(&j, "speedup_vs_oracle", to / tp);
            if (!isnan(t1)) {
                json_num(&j, "time_ms_1thread", t1 * 1e3);
                json_num(&j, "scaling_vs_1thread", t1 / tp);
            }
            json_end(&j);
            fprintf(stderr, "%-16s %3d %4d %4d %6d %3d %-17s %9.2f %8.1f %7.0f%c %4.0f%% %7.1f %4.0f%% %4.0f%% %6.0f %9.0f %7.3f",
                    s->name, s->b, s->h_q, s->s_q, s->s_k, bs, kname, tp * 1e3, gflops, roof, roof == mroof ? 'm' : 'c',
                    100.0 * gflops / roof, kv_bytes / tp * 1e-9, 100.0 * kv_bytes / tp * 1e-9 / bw, 100.0 * paired, tok_bytes, to / tp,
                    s->prefill ? 0.0 : tp / tc);
            if (!isnan(t1)) fprintf(stderr, "  (1 thread %.2f ms: x%.2f)", t1 * 1e3, t1 / tp);
            fputc('\n', stderr);
            release(&d);
        }
    }
    fprintf(stderr, "\nwindowed decode (blocks before the window released, table entries -1) vs full attention:\n");
    fprintf(stderr, "%-14s %3s %4s %6s %5s %3s %-17s %9s %9s %11s %8s\n", "shape", "b", "h_q", "s_k", "W", "bs",
            "kernel", "win_ms", "full_ms", "win/first", "full/win");
    for (size_t i = 0; i < sizeof wshapes / sizeof wshapes[0]; i++) {
        if (only && !strstr(wshapes[i].name, only)) continue;
        forced_ops = NULL;
        bench_window(&wshapes[i], w, reps, quick ? 0.3 : 1.0);
    }
    pkv_workers_destroy(w);
    pkv_workers_destroy(w1);
    return 0;
}
