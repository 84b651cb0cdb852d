/* Attention (pkv_attn / pkv_attn_reference, without the GIL, with cached worker
 * pools) and FP8 MLA rows. */
#include "_pagedkv.h"


#define MAX_POOLS 16
static struct {
    int threads;
    pkv_workers *w;
} pools[MAX_POOLS];

/* The cached pool for a thread count (0: all CPUs), created on first use. */
static pkv_workers *get_pool(int threads) {
    for (int i = 0; i < MAX_POOLS; i++)
        if (pools[i].w && pools[i].threads == threads) return pools[i].w;
    for (int i = 0; i < MAX_POOLS; i++)
        if (!pools[i].w) {
            pkv_workers *w = NULL;
            int st = pkv_workers_create(threads, &w);
            if (st != PKV_OK) return (pkv_workers *)raise_status(st, "pkv_workers_create");
            pools[i].threads = threads, pools[i].w = w;
            return w;
        }
    return (pkv_workers *)raise_arg(PKV_ERR_INVALID, "threads: at most %d different pool sizes", MAX_POOLS);
}

static const void *opt_data(PyObject *o) { return o == Py_None ? NULL : PyArray_DATA((PyArrayObject *)o); }

/* _attn(q, k, v, table, seqlens, indices, sink, out, lse, geom, fast, threads):
 * geom = (batch, s_q, h_q, h_kv, d, dv, block_size, max_blocks, num_blocks,
 * causal, softmax_scale, q_dtype, kv_dtype, topk, window). The Python layer derived geom
 * from the shapes; each buffer is checked here to be large enough for it. */
PyObject *mod_attn(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *q, *k, *v, *table, *lens, *idx, *sink, *out, *lse, *threads_o;
    pkv_attn_args a;
    pkv_attn_args_init(&a);
    int fast;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO(iiiiiiiiiifiiii)pO", &q, &k, &v, &table, &lens, &idx, &sink, &out, &lse,
                          &a.batch, &a.s_q, &a.h_q, &a.h_kv, &a.d, &a.dv, &a.block_size, &a.max_blocks_per_seq,
                          &a.num_blocks, &a.causal, &a.softmax_scale, &a.q_dtype, &a.kv_dtype, &a.topk, &a.window,
                          &fast, &threads_o))
        return NULL;
    if (a.batch < 0 || a.s_q < 0 || a.h_q < 0 || a.h_kv < 0 || a.d < 0 || a.dv < 0 || a.block_size < 0 ||
        a.max_blocks_per_seq < 0 || a.num_blocks < 0 || a.topk < 0)
        return raise_arg(PKV_ERR_INVALID, "negative dimension");
    size_t B = (size_t)a.batch, S = (size_t)a.s_q, H = (size_t)a.h_q;
    size_t qs = pkv_dtype_size(a.q_dtype);
    size_t krow = pkv_row_bytes(a.kv_dtype, a.h_kv, a.d);
    if (!qs) return raise_arg(PKV_ERR_DTYPE, "q: unsupported dtype");
    if (!krow) return raise_arg(PKV_ERR_DTYPE, "k_cache: dtype and geometry do not fit (h_kv %d, d %d)", a.h_kv, a.d);
    size_t slots_n = (size_t)a.num_blocks * (size_t)a.block_size;
    if (!buf_ok(q, "q", B * S * H * (size_t)a.d * qs, 0) || !buf_ok(k, "k_cache", slots_n * krow, 0) ||
        !buf_ok(out, "out", B * S * H * (size_t)a.dv * 4, 1))
        return NULL;
    if (v != Py_None && !buf_ok(v, "v_cache", slots_n * pkv_row_bytes(a.kv_dtype, a.h_kv, a.dv), 0)) return NULL;
    if (idx == Py_None) {
        if (!buf_ok(table, "block_table", B * (size_t)a.max_blocks_per_seq * 4, 0) ||
            !buf_ok(lens, "cache_seqlens", B * 4, 0))
            return NULL;
    } else {
        if (!buf_ok(idx, "indices", B * S * (size_t)a.topk * 4, 0)) return NULL;
        if (table != Py_None && !buf_ok(table, "block_table", B * (size_t)a.max_blocks_per_seq * 4, 0)) return NULL;
        if (lens != Py_None && !buf_ok(lens, "cache_seqlens", B * 4, 0)) return NULL;
    }
    if (sink != Py_None && !buf_ok(sink, "attn_sink", H * 4, 0)) return NULL;
    if (lse != Py_None && !buf_ok(lse, "lse", B * S * H * 4, 1)) return NULL;
    a.q = opt_data(q), a.k_cache = opt_data(k), a.v_cache = opt_data(v);
    a.block_table = opt_data(table), a.cache_seqlens = opt_data(lens), a.indices = opt_data(idx);
    a.attn_sink = opt_data(sink);
    a.out = (float *)opt_data(out), a.lse = (float *)opt_data(lse);
    pkv_workers *w = NULL;
    if (threads_o != Py_None) {
        long t = PyLong_AsLong(threads_o);
        if (t == -1 && PyErr_Occurred()) return NULL;
        if (t < 0 || t > 4096) return raise_arg(PKV_ERR_INVALID, "threads: expected 0 (all CPUs) .. 4096, got %ld", t);
        if (!fast) return raise_arg(PKV_ERR_INVALID, "threads: the reference (fast=False) is single-threaded");
        w = get_pool((int)t);
        if (!w) return NULL;
    }
    int st;
    Py_BEGIN_ALLOW_THREADS st = fast ? pkv_attn(&a, w) : pkv_attn_reference(&a);
    Py_END_ALLOW_THREADS
    if (st != PKV_OK) {
        const char *why = "";
        switch (st) {
        case PKV_ERR_BLOCK_ID: why = "block_table: a used entry lies outside [0, num_blocks)"; break;
        case PKV_ERR_SEQLEN: why = "cache_seqlens: a length is negative or longer than its block_table row covers"; break;
        case PKV_ERR_SLOT: why = "indices: a slot lies outside the cache"; break;
        case PKV_ERR_HEADS: why = "q: h_q is not a positive multiple of h_kv"; break;
        default: break;
        }
        return raise_status(st, why);
    }
    Py_RETURN_NONE;
}

/* _mla656(x, out, quantize, pow2): row-wise over n rows (checked by Python). */
PyObject *mod_mla656(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *x, *y;
    int quant, pow2;
    if (!PyArg_ParseTuple(args, "OOpp", &x, &y, &quant, &pow2)) return NULL;
    size_t isz = quant ? 576 * 4 : 656, osz = quant ? 656 : 576 * 4;
    if (!buf_ok(x, "x", 0, 0) || !buf_ok(y, "out", 0, 1)) return NULL;
    size_t n = (size_t)PyArray_NBYTES((PyArrayObject *)x) / isz;
    if ((size_t)PyArray_NBYTES((PyArrayObject *)y) < n * osz) return raise_arg(PKV_ERR_SHAPE, "out: too small");
    const char *ip = PyArray_DATA((PyArrayObject *)x);
    char *op = PyArray_DATA((PyArrayObject *)y);
    int st = PKV_OK;
    size_t i;
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < n && st == PKV_OK; i++)
        st = quant ? pkv_mla656_quantize((const float *)(ip + i * isz), (uint8_t *)(op + i * osz), pow2)
                   : pkv_mla656_dequantize((const uint8_t *)(ip + i * isz), (float *)(op + i * osz));
    Py_END_ALLOW_THREADS
    if (st != PKV_OK) return raise_arg(st, "row %zu", i - 1);
    Py_RETURN_NONE;
}
