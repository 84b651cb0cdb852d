/* Fuzz target: arbitrary pkv_attn_args over small buffers. The library cannot
 * know buffer sizes, so the target builds arguments whose arrays are exactly as
 * large as the arguments say (each its own allocation, so ASan flags a read
 * one element past the end), with arbitrary block-table contents, lengths,
 * sparse indices, dtypes, head counts, scales and values (NaN and infinities
 * included). pkv_attn_reference, pkv_attn without workers and pkv_attn on a
 * 2-thread pool must return the same status; on error none of them may write
 * out or lse; on success with tame inputs (finite, small) the fast results
 * must agree with the oracle's within a loose tolerance. A quarter of the
 * inputs (by their last byte, read apart from the stream so that the other
 * fields of older corpus files decode as before) set a sliding window: small
 * ones against short sequences, or wild values (negative, huge). */
#include <math.h>

#include "fuzz.h"

int fuzz_attn(const uint8_t *data, size_t size);
void fuzz_attn_cleanup(void);

static pkv_workers *attn_pool;

void fuzz_attn_cleanup(void) {
    pkv_workers_destroy(attn_pool);
    attn_pool = NULL;
}

/* Element count of an array with these dims; 0 if any dim is < 1; saturates
 * at 2^40 (such inputs are skipped). */
static size_t attn_count(int n, const int32_t *dims) {
    size_t c = 1;
    for (int i = 0; i < n; i++)
        if (dims[i] < 1) return 0;
    for (int i = 0; i < n; i++) {
        c *= (size_t)dims[i];
        if (c > ((size_t)1 << 40)) return (size_t)1 << 40;
    }
    return c;
}

static void *attn_alloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    FUZZ_CHECK(p != NULL, "out of memory (%zu bytes)", bytes);
    return p;
}

/* Fills n elements of dtype: tame values in [-1, 1], or raw bits. */
static void attn_fill(fuzz_in *in, void *buf, size_t n, int dtype, int tame) {
    for (size_t i = 0; i < n; i++) {
        float x = ((float)fuzz_u8(in) - 128.0f) / 128.0f;
        if (dtype == PKV_F16 || dtype == PKV_BF16) {
            uint16_t h = tame ? (dtype == PKV_BF16 ? pkv_f32_to_bf16(x) : pkv_f32_to_f16(x)) : fuzz_u16(in);
            ((uint16_t *)buf)[i] = h;
        } else {
            uint32_t bits = fuzz_u32(in);
            float f;
            memcpy(&f, &bits, sizeof f);
            ((float *)buf)[i] = tame ? x : f;
        }
    }
}

/* A table entry: mostly near the valid range, sometimes far outside. */
static int32_t attn_entry(fuzz_in *in, int64_t valid) {
    uint8_t v = fuzz_u8(in);
    if (valid < 0) valid = 0;
    if (valid > 1 << 20) valid = 1 << 20;
    if (v < 240) return (int32_t)(v % (uint32_t)(valid + 2)) - 1;
    static const int32_t far[] = {2147480000, INT32_MAX, INT32_MIN, -2, 65536, -65536,
                                  1 << 30, -(1 << 30), 4096, 100, 7, -100, 3, 1, 0, -1};
    return far[v - 240];
}

static int attn_dim(fuzz_in *in, int wild, int32_t lo, int32_t span) {
    uint8_t v = fuzz_u8(in);
    if (wild && v >= 248) {
        static const int32_t odd[] = {0, -1, INT32_MIN, INT32_MAX, 1 << 20, 65536, 0, -7};
        return odd[v - 248];
    }
    return lo + (int32_t)(v % (uint32_t)span);
}

static int attn_same_bytes(const void *a, const void *b, size_t n) { return n == 0 || memcmp(a, b, n) == 0; }

/* Loose agreement with the oracle (a gross-error detector, not the accuracy test). */
static void attn_compare(const pkv_attn_args *a, const float *out, const float *lse, const float *rout,
                         const float *rlse, size_t no, size_t nl, const char *what) {
    double maxref = 0, maxerr = 0;
    for (size_t i = 0; i < no; i++) {
        if (fabs(rout[i]) > maxref) maxref = fabs(rout[i]);
        double e = fabs((double)out[i] - (double)rout[i]);
        if (!(e <= maxerr)) maxerr = isnan(e) ? INFINITY : e;
    }
    int exact = a->q_dtype == PKV_F32 && a->kv_dtype == PKV_F32;
    double tol = (exact ? 2e-3 : 3e-2) * maxref + 1e-4;
    FUZZ_CHECK(maxerr <= tol, "%s: out differs from the oracle by %g (max |out| %g)", what, maxerr, maxref);
    for (size_t i = 0; lse && i < nl; i++) {
        if (isinf(rlse[i]) || isinf(lse[i])) {
            FUZZ_CHECK(rlse[i] == lse[i], "%s: lse[%zu] %g vs oracle %g", what, i, (double)lse[i], (double)rlse[i]);
            continue;
        }
        double e = fabs((double)lse[i] - (double)rlse[i]);
        FUZZ_CHECK(e <= (exact ? 1e-3 : 3e-2) * (1 + fabs((double)rlse[i])), "%s: lse[%zu] %g vs oracle %g", what,
                   i, (double)lse[i], (double)rlse[i]);
    }
}

/* NaN and inf where the oracle has them, and only there (any inputs: a row that
 * meets a non-finite value is recomputed the oracle's way). */
static void attn_same_nonfinite(const float *x, const float *ref, size_t n, const char *what, const char *arr) {
    for (size_t i = 0; x && i < n; i++) {
        const int ok = isnan(ref[i]) ? isnan(x[i]) != 0 : isinf(ref[i]) ? x[i] == ref[i] : isfinite(x[i]) != 0;
        FUZZ_CHECK(ok, "%s: %s[%zu] = %g, the oracle's %g", what, arr, i, (double)x[i], (double)ref[i]);
    }
}

int fuzz_attn(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size, 0};
    if (!attn_pool && pkv_workers_create(2, &attn_pool) != PKV_OK) attn_pool = NULL;
    uint8_t f = fuzz_u8(&in);
    const int sparse = f & 1, vsep = (f >> 1) & 1, want_lse = (f >> 2) & 1, want_sink = (f >> 3) & 1;
    const int tame = (f >> 4) & 1, fp8 = ((f >> 5) & 3) == 3, wild = (f >> 7) & 1;
    pkv_attn_args a;
    pkv_attn_args_init(&a);
    a.batch = attn_dim(&in, wild, 1, 3);
    a.s_q = attn_dim(&in, wild, 1, 3);
    a.h_kv = fp8 ? 1 : attn_dim(&in, wild, 1, 2);
    int32_t group = 1 + (int32_t)fuzz_below(&in, 3);
    a.h_q = wild ? attn_dim(&in, wild, 0, 7) : a.h_kv * group;
    a.d = fp8 ? 576 : attn_dim(&in, wild, 1, 8);
    a.dv = fp8 ? 512 : attn_dim(&in, wild, 1, vsep ? 8 : (a.d > 0 && a.d < 8 ? a.d : 8) + wild);
    a.block_size = attn_dim(&in, wild, 1, 5);
    a.num_blocks = attn_dim(&in, wild, 1, 6);
    a.max_blocks_per_seq = attn_dim(&in, wild, 1, 4);
    a.causal = (int32_t)fuzz_below(&in, wild ? 3 : 2);
    a.topk = attn_dim(&in, wild, 1, 4);
    a.q_dtype = wild ? (int32_t)fuzz_below(&in, 6) - 1 : (int32_t)fuzz_below(&in, 3);
    a.kv_dtype = fp8 ? PKV_FP8_MLA656 : (wild ? (int32_t)fuzz_below(&in, 6) - 1 : (int32_t)fuzz_below(&in, 3));
    if (tame) {
        a.softmax_scale = ((float)fuzz_u8(&in) - 128.0f) / 256.0f;
    } else {
        uint32_t bits = fuzz_u32(&in);
        memcpy(&a.softmax_scale, &bits, sizeof bits);
    }
    /* Sizes exactly as the arguments claim (an unknown dtype: 4-byte elements). */
    size_t qes = pkv_dtype_size(a.q_dtype), kes = pkv_dtype_size(a.kv_dtype);
    if (!qes) qes = 4;
    if (!kes) kes = 4;
    int32_t qd[] = {a.batch, a.s_q, a.h_q, a.d}, od[] = {a.batch, a.s_q, a.h_q, a.dv};
    int32_t ld[] = {a.batch, a.h_q, a.s_q}, kd[] = {a.num_blocks, a.block_size, a.h_kv, a.d};
    int32_t vd[] = {a.num_blocks, a.block_size, a.h_kv, a.dv}, td[] = {a.batch, a.max_blocks_per_seq};
    int32_t id[] = {a.batch, a.s_q, a.topk}, hd[] = {a.h_q};
    size_t nq = attn_count(4, qd), no = attn_count(4, od), nl = attn_count(3, ld), nk = attn_count(4, kd);
    size_t nv = vsep ? attn_count(4, vd) : 0, nt = attn_count(2, td), ni = attn_count(3, id);
    size_t nh = attn_count(1, hd), nb = attn_count(1, &a.batch);
    /* Keep the fuzzer's memory small: arguments this large are refused or skipped. */
    if (nq > 65536 || no > 65536 || nl > 65536 || nk > 65536 || nv > 65536 || nt > 4096 || ni > 4096 ||
        nh > 65536 || nb > 4096 || attn_count(2, kd) > 65536)
        return 0;
    size_t kbytes = a.kv_dtype == PKV_FP8_MLA656 ? attn_count(2, kd) * 656 : nk * kes;
    void *q = attn_alloc(nq * qes), *k = attn_alloc(kbytes), *v = vsep ? attn_alloc(nv * kes) : NULL;
    int32_t *table = attn_alloc(nt * sizeof *table), *lens = attn_alloc(nb * sizeof *lens);
    int32_t *idx = sparse ? attn_alloc(ni * sizeof *idx) : NULL;
    float *sink = want_sink ? attn_alloc(nh * sizeof *sink) : NULL;
    float *outs[3], *lses[3];
    for (int i = 0; i < 3; i++) {
        outs[i] = attn_alloc(no * sizeof(float));
        lses[i] = want_lse ? attn_alloc(nl * sizeof(float)) : NULL;
    }
    float *sentinel_o = attn_alloc(no * sizeof(float)), *sentinel_l = attn_alloc(nl * sizeof(float));
    memset(sentinel_o, 0xa5, no * sizeof(float));
    memset(sentinel_l, 0x5a, nl * sizeof(float));

    int64_t cap = (int64_t)a.max_blocks_per_seq * a.block_size;
    for (size_t i = 0; i < nt; i++) table[i] = attn_entry(&in, a.num_blocks);
    for (size_t i = 0; i < nb; i++) lens[i] = attn_entry(&in, cap + 1);
    int64_t slots = (int64_t)a.num_blocks * a.block_size;
    for (size_t i = 0; idx && i < ni; i++) idx[i] = attn_entry(&in, slots);
    if (sink) attn_fill(&in, sink, nh, PKV_F32, tame);
    attn_fill(&in, q, nq, a.q_dtype, tame);
    if (a.kv_dtype == PKV_FP8_MLA656) {
        size_t rows = attn_count(2, kd);
        for (size_t r = 0; r < rows; r++) {
            uint8_t *row = (uint8_t *)k + r * 656;
            if (tame) {
                float x[576];
                for (int i = 0; i < 576; i++) x[i] = ((float)fuzz_u8(&in) - 128.0f) / 128.0f;
                FUZZ_CHECK(pkv_mla656_quantize(x, row, 0) == PKV_OK, "quantize");
            } else {
                for (int i = 0; i < 656; i++) row[i] = fuzz_u8(&in);
            }
        }
    } else {
        attn_fill(&in, k, nk, a.kv_dtype, tame);
    }
    if (v) attn_fill(&in, v, nv, a.kv_dtype, tame);

    a.q = q;
    a.k_cache = k;
    a.v_cache = v;
    a.block_table = table;
    a.cache_seqlens = lens;
    a.indices = idx;
    a.attn_sink = sink;
    /* NULL pointers now and then (each must be refused, or ignored where optional) */
    uint8_t nulls = fuzz_u8(&in);
    if (nulls == 1) a.q = NULL;
    if (nulls == 2) a.k_cache = NULL;
    if (nulls == 3) a.block_table = NULL;
    if (nulls == 4) a.cache_seqlens = NULL;
    if (nulls == 5) a.indices = NULL;
    uint8_t wb = size ? data[size - 1] : 0;
    if (wb >= 0xc0) {
        static const int32_t odd[] = {-1, INT32_MIN, INT32_MAX, 0};
        int64_t span = cap > 0 && cap < 64 ? cap + 1 : 64;
        a.window = wild && (wb & 0x3f) >= 60 ? odd[(wb & 0x3f) - 60] : 1 + (int32_t)((wb & 0x3f) % span);
    }

    int st[3];
    for (int i = 0; i < 3; i++) {
        memcpy(outs[i], sentinel_o, no * sizeof(float));
        if (lses[i]) memcpy(lses[i], sentinel_l, nl * sizeof(float));
        pkv_attn_args ai = a;
        ai.out = nulls == 6 ? NULL : outs[i];
        ai.lse = lses[i];
        st[i] = i == 0 ? pkv_attn_reference(&ai) : pkv_attn(&ai, i == 1 ? NULL : attn_pool);
        const char *txt = pkv_strerror(st[i]);
        FUZZ_CHECK(st[i] <= 0 && txt[0] && strcmp(txt, "unknown status") != 0, "status %d", st[i]);
        if (st[i] != PKV_OK) {
            FUZZ_CHECK(attn_same_bytes(outs[i], sentinel_o, no * sizeof(float)), "path %d wrote out on error %d", i, st[i]);
            FUZZ_CHECK(!lses[i] || attn_same_bytes(lses[i], sentinel_l, nl * sizeof(float)),
                       "path %d wrote lse on error %d", i, st[i]);
        }
    }
    FUZZ_CHECK(st[0] == st[1] && st[0] == st[2], "statuses differ: reference %d (%s), pkv_attn %d, with workers %d",
               st[0], pkv_strerror(st[0]), st[1], st[2]);
    int finite_sink = 1;
    for (size_t i = 0; sink && i < nh; i++) finite_sink &= isfinite(sink[i]) != 0;
    for (int i = 1; st[0] == PKV_OK && i < 3; i++) {
        const char *what = i == 1 ? "pkv_attn" : "pkv_attn with workers";
        attn_same_nonfinite(outs[i], outs[0], no, what, "out");
        attn_same_nonfinite(lses[i], lses[0], nl, what, "lse");
    }
    if (st[0] == PKV_OK && tame && finite_sink && a.kv_dtype != PKV_FP8_MLA656) {
        attn_compare(&a, outs[1], lses[1], outs[0], lses[0], no, nl, "pkv_attn");
        attn_compare(&a, outs[2], lses[2], outs[0], lses[0], no, nl, "pkv_attn with workers");
    }
    free(q); free(k); free(v); free(table); free(lens); free(idx); free(sink);
    for (int i = 0; i < 3; i++) {
        free(outs[i]);
        free(lses[i]);
    }
    free(sentinel_o);
    free(sentinel_l);
    return 0;
}

#ifdef PKV_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_attn(data, size); }
#endif
