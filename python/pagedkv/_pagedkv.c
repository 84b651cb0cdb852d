/* The CPython extension behind the pagedkv package: Cache and Sequence types,
 * batch bookkeeping, exports, host storage, attention and a DLPack importer,
 * all over the public C API (include/pagedkv.h) of the statically linked library.
 *
 * Why C and not ctypes: one decode step for 256 sequences is 256 appends plus an
 * export; ctypes costs about a microsecond per call, this costs tens of nanoseconds.
 *
 * Threads. A cache that is not thread-safe is driven with the GIL held (one Python
 * thread at a time, which is its contract). On a thread-safe cache every library
 * call runs with the GIL released: the library takes the cache's lock, and a call
 * that held the GIL while waiting for that lock could deadlock with one that holds
 * the lock while waiting for the GIL. Attention always runs without the GIL. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <stdint.h>
#include <string.h>

#include "pagedkv.h"

#define NSTATUS 20 /* -PKV_ERR_SLOT + 1 */

static PyObject *error_classes[NSTATUS + 1]; /* [0] is the Error base; [-status] a subclass */

/* ------------------------------------------------------------------------- */
/* Errors                                                                    */
/* ------------------------------------------------------------------------- */

static PyObject *err_class(int st) {
    PyObject *cls = (st < 0 && -st <= NSTATUS) ? error_classes[-st] : NULL;
    if (!cls) cls = error_classes[0];
    return cls ? cls : PyExc_RuntimeError;
}

/* Raises the error class of st with "<strerror>: <detail>" and returns NULL. */
static PyObject *raise_status(int st, const char *detail) {
    PyObject *cls = err_class(st);
    const char *what = pkv_strerror(st);
    PyObject *msg = (detail && detail[0]) ? PyUnicode_FromFormat("%s: %s", what, detail)
                                          : PyUnicode_FromString(what);
    if (!msg) return NULL;
    PyObject *exc = PyObject_CallFunction(cls, "Ois", msg, st, detail ? detail : "");
    Py_DECREF(msg);
    if (!exc) return NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

/* An argument error of a given status, with the argument's name in the text. */
static PyObject *raise_arg(int st, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    PyOS_vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return raise_status(st, buf);
}

/* ------------------------------------------------------------------------- */
/* Cache and Sequence objects                                                */
/* ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    pkv_cache *c;
    pkv_config cfg;
    int ts;        /* thread-safe: call with the GIL released */
    PyThread_type_lock lock; /* serializes calls on a cache that is not thread-safe */
    int closed;
    int busy;      /* calls in flight without the GIL */
    int views;     /* live arena views: destruction waits for them */
    int32_t last_mbps; /* the FlashMLA table width of the last export */
    PyObject *weakrefs;
} CacheObject;

typedef struct {
    PyObject_HEAD
    CacheObject *cache;
    pkv_seq h;
    uint64_t ns;
    int freed;
} SeqObject;

static PyTypeObject CacheType, SeqType, ArenaRefType;

/* Runs one library call. A thread-safe cache: always without the GIL (the
 * library's lock serializes). Any other cache: under co->lock, which no thread
 * ever waits for while holding the GIL; short calls keep the GIL (releasing it
 * costs more than they do), long ones (is_long) release it. busy counts the
 * calls that may run or wait without the GIL, so close() can refuse them. */
#define CALL_IF(co, st, expr, is_long)                                      \
    do {                                                                    \
        if ((co)->ts || (is_long)) {                                        \
            (co)->busy++;                                                   \
            Py_BEGIN_ALLOW_THREADS                                          \
            if (!(co)->ts) PyThread_acquire_lock((co)->lock, WAIT_LOCK);    \
            (st) = (expr);                                                  \
            if (!(co)->ts) PyThread_release_lock((co)->lock);               \
            Py_END_ALLOW_THREADS                                            \
            (co)->busy--;                                                   \
        } else {                                                            \
            if (!PyThread_acquire_lock((co)->lock, NOWAIT_LOCK)) {          \
                (co)->busy++;                                               \
                Py_BEGIN_ALLOW_THREADS                                      \
                PyThread_acquire_lock((co)->lock, WAIT_LOCK);               \
                Py_END_ALLOW_THREADS                                        \
                (co)->busy--;                                               \
            }                                                               \
            (st) = (expr);                                                  \
            PyThread_release_lock((co)->lock);                              \
        }                                                                   \
    } while (0)
#define CALL(co, st, expr) CALL_IF(co, st, expr, 0)
/* A call is long when it moves this many bytes or items. */
#define LONG_BYTES (64 * 1024)
#define LONG_ITEMS 4096

static PyObject *cache_raise(CacheObject *co, int st) {
    return raise_status(st, co && co->c ? pkv_cache_last_error(co->c) : NULL);
}

static int cache_open(CacheObject *co) {
    if (co->closed || !co->c || !co->lock) {
        raise_status(PKV_ERR_STATE, "the cache is closed");
        return 0;
    }
    return 1;
}

static PyObject *seq_new(CacheObject *co, pkv_seq h, uint64_t ns) {
    SeqObject *s = PyObject_New(SeqObject, &SeqType);
    if (!s) return NULL;
    Py_INCREF(co);
    s->cache = co;
    s->h = h;
    s->ns = ns;
    s->freed = 0;
    return (PyObject *)s;
}

/* Resolves a list/tuple of Sequence objects into handles. buf has room for
 * `cap`; larger batches get *heap (freed by the caller). */
static pkv_seq *seq_handles(CacheObject *co, PyObject *seqs, pkv_seq *buf, Py_ssize_t cap, Py_ssize_t *n,
                            pkv_seq **heap) {
    *heap = NULL;
    PyObject *fast = PySequence_Fast(seqs, "seqs must be a sequence of pagedkv.Sequence");
    if (!fast) return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (len > INT32_MAX) {
        Py_DECREF(fast);
        raise_arg(PKV_ERR_INVALID, "seqs: %zd sequences is too many", len);
        return NULL;
    }
    pkv_seq *out = buf;
    if (len > cap) {
        out = *heap = PyMem_Malloc((size_t)len * sizeof *out);
        if (!out) {
            Py_DECREF(fast);
            PyErr_NoMemory();
            return NULL;
        }
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < len; i++) {
        if (Py_TYPE(items[i]) != &SeqType) {
            Py_DECREF(fast);
            raise_arg(PKV_ERR_INVALID, "seqs[%zd]: expected a pagedkv.Sequence, got %s", i,
                      Py_TYPE(items[i])->tp_name);
            return NULL;
        }
        SeqObject *s = (SeqObject *)items[i];
        if (s->cache != co) {
            Py_DECREF(fast);
            raise_arg(PKV_ERR_NO_SEQ, "seqs[%zd] belongs to another cache", i);
            return NULL;
        }
        out[i] = s->h;
    }
    Py_DECREF(fast);
    *n = len;
    return out;
}

/* Token ids -> a C-contiguous int32 array (new reference). ndarrays must be
 * contiguous and of an integer dtype whose values fit int32. */
static PyArrayObject *as_tokens(PyObject *obj, const char *name) {
    if (PyArray_Check(obj)) {
        PyArrayObject *a = (PyArrayObject *)obj;
        if (!PyArray_ISINTEGER(a))
            return (PyArrayObject *)raise_arg(PKV_ERR_DTYPE, "%s: expected integer token ids, got dtype %s", name,
                                              PyArray_DESCR(a)->typeobj->tp_name);
        if (PyArray_NDIM(a) != 1)
            return (PyArrayObject *)raise_arg(PKV_ERR_SHAPE, "%s: expected a 1-d array, got %d dimensions", name,
                                              PyArray_NDIM(a));
        if (!PyArray_IS_C_CONTIGUOUS(a))
            return (PyArrayObject *)raise_arg(PKV_ERR_INVALID, "%s: the array is not contiguous", name);
        if (PyArray_TYPE(a) == NPY_INT32) {
            Py_INCREF(a);
            return a;
        }
    }
    if (PyList_CheckExact(obj) || PyTuple_CheckExact(obj)) { /* the common small case, without numpy */
        PyObject **items = PySequence_Fast_ITEMS(obj);
        npy_intp n = PySequence_Fast_GET_SIZE(obj);
        PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT32);
        if (!out) return NULL;
        int32_t *dst = PyArray_DATA(out);
        for (npy_intp i = 0; i < n; i++) {
            long v = PyLong_Check(items[i]) ? PyLong_AsLong(items[i]) : (PyErr_SetNone(PyExc_TypeError), -1);
            if ((v == -1 && PyErr_Occurred()) || v < INT32_MIN || v > INT32_MAX) {
                PyErr_Clear();
                Py_DECREF(out);
                return (PyArrayObject *)raise_arg(PKV_ERR_INVALID, "%s[%zd]: expected an int32 token id", name,
                                                  (Py_ssize_t)i);
            }
            dst[i] = (int32_t)v;
        }
        return out;
    }
    PyArrayObject *wide = (PyArrayObject *)PyArray_FROMANY(obj, NPY_INT64, 1, 1, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!wide) {
        PyErr_Clear();
        return (PyArrayObject *)raise_arg(PKV_ERR_INVALID, "%s: expected an int, or a 1-d sequence of token ids", name);
    }
    npy_intp n = PyArray_DIM(wide, 0);
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT32);
    if (!out) {
        Py_DECREF(wide);
        return NULL;
    }
    const int64_t *src = PyArray_DATA(wide);
    int32_t *dst = PyArray_DATA(out);
    for (npy_intp i = 0; i < n; i++) {
        if (src[i] < INT32_MIN || src[i] > INT32_MAX) {
            Py_DECREF(wide);
            Py_DECREF(out);
            return (PyArrayObject *)raise_arg(PKV_ERR_INVALID, "%s[%zd] = %lld does not fit int32", name, (Py_ssize_t)i,
                                              (long long)src[i]);
        }
        dst[i] = (int32_t)src[i];
    }
    Py_DECREF(wide);
    return out;
}

/* ---- Cache --------------------------------------------------------------- */

static const char *const storage_names[] = {"metadata", "host", NULL};
static const char *const dtype_names[] = {"f32", "f16", "bf16", "fp8_mla656", NULL};

static int name_index(PyObject *obj, const char *const *names, const char *arg, int *out) {
    if (PyLong_Check(obj)) {
        long v = PyLong_AsLong(obj);
        for (int i = 0; names[i]; i++)
            if (v == i) { *out = i; return 1; }
    } else if (PyUnicode_Check(obj)) {
        const char *s = PyUnicode_AsUTF8(obj);
        if (!s) return 0;
        for (int i = 0; names[i]; i++)
            if (!strcmp(s, names[i])) { *out = i; return 1; }
        if (names == dtype_names) { /* numpy-style aliases */
            static const char *const alias[] = {"float32", "float16", "bfloat16", NULL};
            for (int i = 0; alias[i]; i++)
                if (!strcmp(s, alias[i])) { *out = i; return 1; }
        }
    }
    PyObject *r = PyObject_Repr(obj);
    raise_arg(names == dtype_names ? PKV_ERR_DTYPE : PKV_ERR_INVALID, "%s: unknown value %s", arg,
              r ? PyUnicode_AsUTF8(r) : "?");
    Py_XDECREF(r);
    return 0;
}

static int cache_init(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"num_blocks", "block_size", "storage", "num_layers", "h_kv", "d", "dv", "v_separate",
                             "kv_dtype", "thread_safe", "prefix_cache", "auto_register", "fp8_pow2_scale",
                             "hash_key", NULL};
    if (self->c) {
        PyErr_SetString(PyExc_RuntimeError, "Cache.__init__ called twice");
        return -1;
    }
    pkv_config cfg;
    pkv_config_init(&cfg);
    PyObject *storage = NULL, *dtype = NULL, *key = Py_None;
    int vsep = 0, ts = 0, pc = 0, ar = 0, p2 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$iiOiiiipOppppO", kwlist, &cfg.num_blocks, &cfg.block_size,
                                     &storage, &cfg.num_layers, &cfg.h_kv, &cfg.d, &cfg.dv, &vsep, &dtype, &ts, &pc,
                                     &ar, &p2, &key))
        return -1;
    if (storage && !name_index(storage, storage_names, "storage", &cfg.storage)) return -1;
    if (dtype && !name_index(dtype, dtype_names, "kv_dtype", &cfg.kv_dtype)) return -1;
    cfg.v_separate = vsep;
    cfg.flags = (ts ? PKV_FLAG_THREAD_SAFE : 0) | (pc ? PKV_FLAG_PREFIX_CACHE : 0) |
                (ar ? PKV_FLAG_AUTO_REGISTER : 0) | (p2 ? PKV_FLAG_FP8_POW2_SCALE : 0);
    if (key != Py_None) {
        if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != 16) {
            raise_arg(PKV_ERR_INVALID, "hash_key: expected 16 bytes or None");
            return -1;
        }
        memcpy(cfg.hash_key, PyBytes_AS_STRING(key), 16);
        cfg.hash_key_set = 1;
    }
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    pkv_cache *c = NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS st = pkv_cache_create(&cfg, &c);
    Py_END_ALLOW_THREADS
    if (st != PKV_OK) {
        const char *why = "";
        if (st == PKV_ERR_INVALID) why = "a configuration field is out of range (or the arenas would be too large)";
        raise_status(st, why);
        return -1;
    }
    self->c = c;
    self->cfg = cfg; /* size set; the library fills in what it resolved */
    pkv_cache_config(c, &self->cfg);
    self->ts = ts;
    self->closed = 0;
    return 0;
}

static void cache_destroy_now(CacheObject *self) {
    if (self->c) {
        pkv_cache *c = self->c;
        self->c = NULL;
        Py_BEGIN_ALLOW_THREADS pkv_cache_destroy(c);
        Py_END_ALLOW_THREADS
    }
}

static void cache_dealloc(CacheObject *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    cache_destroy_now(self);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *cache_close(CacheObject *self, PyObject *unused) {
    (void)unused;
    if (self->busy) return raise_status(PKV_ERR_STATE, "close: another thread is inside a call on this cache");
    self->closed = 1;
    if (!self->views) cache_destroy_now(self); /* else when the last arena view goes */
    Py_RETURN_NONE;
}

static PyObject *cache_enter(CacheObject *self, PyObject *unused) {
    (void)unused;
    if (!cache_open(self)) return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *cache_exit(CacheObject *self, PyObject *args) {
    (void)args;
    PyObject *r = cache_close(self, NULL);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *cache_get_closed(CacheObject *self, void *unused) {
    (void)unused;
    return PyBool_FromLong(self->closed);
}

static PyObject *cache_get_config(CacheObject *self, void *unused) {
    (void)unused;
    const pkv_config *c = &self->cfg;
    return Py_BuildValue("{s:i,s:i,s:s,s:i,s:i,s:i,s:i,s:O,s:s,s:O,s:O,s:O,s:O}", "num_blocks", c->num_blocks,
                         "block_size", c->block_size, "storage", storage_names[c->storage], "num_layers",
                         c->num_layers, "h_kv", c->h_kv, "d", c->d, "dv", c->dv, "v_separate",
                         c->v_separate ? Py_True : Py_False, "kv_dtype", dtype_names[c->kv_dtype], "thread_safe",
                         (c->flags & PKV_FLAG_THREAD_SAFE) ? Py_True : Py_False, "prefix_cache",
                         (c->flags & PKV_FLAG_PREFIX_CACHE) ? Py_True : Py_False, "auto_register",
                         (c->flags & PKV_FLAG_AUTO_REGISTER) ? Py_True : Py_False, "fp8_pow2_scale",
                         (c->flags & PKV_FLAG_FP8_POW2_SCALE) ? Py_True : Py_False);
}

static PyObject *cache_get_last_error(CacheObject *self, void *unused) {
    (void)unused;
    return PyUnicode_FromString(self->c ? pkv_cache_last_error(self->c) : "");
}

static PyObject *cache_sequence(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"ns", NULL};
    unsigned long long ns = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|K", kwlist, &ns)) return NULL;
    if (!cache_open(self)) return NULL;
    pkv_seq h;
    int st;
    CALL(self, st, pkv_seq_create(self->c, (uint64_t)ns, &h));
    if (st != PKV_OK) return cache_raise(self, st);
    return seq_new(self, h, (uint64_t)ns);
}

static PyObject *cache_lookup(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tokens", "namespace", NULL};
    PyObject *tok;
    unsigned long long ns = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|K", kwlist, &tok, &ns)) return NULL;
    if (!cache_open(self)) return NULL;
    PyArrayObject *t = as_tokens(tok, "tokens");
    if (!t) return NULL;
    npy_intp n = PyArray_DIM(t, 0);
    if (n > INT32_MAX) {
        Py_DECREF(t);
        return raise_arg(PKV_ERR_INVALID, "tokens: too many");
    }
    pkv_seq h;
    int32_t cached = 0;
    int st;
    CALL_IF(self, st, pkv_prefix_lookup(self->c, (uint64_t)ns, PyArray_DATA(t), (int32_t)n, &h, &cached),
            n >= LONG_ITEMS);
    Py_DECREF(t);
    if (st != PKV_OK) return cache_raise(self, st);
    PyObject *s = seq_new(self, h, (uint64_t)ns);
    if (!s) return NULL;
    return Py_BuildValue("(Ni)", s, cached);
}

static PyObject *do_register(CacheObject *co, SeqObject *s) {
    int32_t reg = 0, dd = 0;
    int st;
    CALL(co, st, pkv_prefix_register(co->c, s->h, &reg, &dd));
    if (st != PKV_OK) return cache_raise(co, st);
    return Py_BuildValue("(ii)", reg, dd);
}

static PyObject *cache_register(CacheObject *self, PyObject *arg) {
    if (!cache_open(self)) return NULL;
    if (Py_TYPE(arg) != &SeqType || ((SeqObject *)arg)->cache != self)
        return raise_arg(PKV_ERR_NO_SEQ, "seq: expected a pagedkv.Sequence of this cache");
    return do_register(self, (SeqObject *)arg);
}

/* The body of append_batch, one library call sequence (run without the GIL on a
 * thread-safe cache). *at: the index reached; *need: the batch's block bound. */
static int batch_run(pkv_cache *c, const pkv_seq *hs, Py_ssize_t b, int n, const int32_t *tp, int64_t *sp,
                     pkv_block_copy *copies, Py_ssize_t *at, Py_ssize_t *ncow, int64_t *need, pkv_stats *stats,
                     int *phase) {
    int st = PKV_OK;
    Py_ssize_t i;
    *phase = 0; /* checking: nothing changed */
    for (i = 0; i < b; i++) {
        int32_t k = 0;
        *at = i;
        st = pkv_seq_blocks_needed(c, hs[i], n, &k);
        if (st != PKV_OK) return st;
        *need += k;
    }
    *at = -1;
    st = pkv_cache_stats(c, stats);
    if (st != PKV_OK) return st;
    if (*need > (int64_t)stats->free_blocks + stats->evictable_blocks) return PKV_ERR_CAPACITY;
    *phase = 1; /* appending */
    for (i = 0; i < b; i++) {
        pkv_block_copy cp = {-1, -1};
        *at = i;
        st = pkv_seq_append(c, hs[i], n, tp ? tp + (size_t)i * n : NULL, sp + (size_t)i * n, &cp);
        if (st != PKV_OK) return st;
        if (cp.src >= 0) copies[(*ncow)++] = cp;
    }
    *at = b;
    return PKV_OK;
}

/* append_batch(seqs, n=1, tokens=None) -> (slots int64 [b*n], cow int32 [k, 2]).
 * Checks capacity for the whole batch first (the sum of each append's need
 * against the free and evictable blocks, an upper bound), so a batch that runs
 * out of blocks changes nothing. */
static PyObject *cache_append_batch(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"seqs", "n", "tokens", NULL};
    PyObject *seqs, *tok = Py_None;
    int n = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|iO", kwlist, &seqs, &n, &tok)) return NULL;
    if (!cache_open(self)) return NULL;
    if (n < 0) return raise_arg(PKV_ERR_INVALID, "n: must be >= 0, got %d", n);
    pkv_seq buf[512], *heap;
    Py_ssize_t b = 0;
    pkv_seq *hs = seq_handles(self, seqs, buf, 512, &b, &heap);
    if (!hs) return NULL;
    PyArrayObject *t = NULL, *slots = NULL, *cow = NULL;
    PyObject *result = NULL;
    const int32_t *tp = NULL;
    if (tok != Py_None) {
        if (PyArray_Check(tok) && PyArray_NDIM((PyArrayObject *)tok) == 2 && PyArray_TYPE((PyArrayObject *)tok) == NPY_INT32 &&
            PyArray_IS_C_CONTIGUOUS((PyArrayObject *)tok)) {
            Py_INCREF(tok);
            t = (PyArrayObject *)tok;
        } else {
            PyObject *flat = PyArray_Check(tok) ? PyArray_Ravel((PyArrayObject *)tok, NPY_CORDER) : NULL;
            if (PyArray_Check(tok) && !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)tok)) {
                Py_XDECREF(flat);
                raise_arg(PKV_ERR_INVALID, "tokens: the array is not contiguous");
                goto done;
            }
            t = as_tokens(flat ? flat : tok, "tokens");
            Py_XDECREF(flat);
            if (!t) goto done;
        }
        if (PyArray_SIZE(t) != (npy_intp)b * n) {
            raise_arg(PKV_ERR_SHAPE, "tokens: expected %zd token ids (len(seqs) x n), got %zd", (Py_ssize_t)b * n,
                      (Py_ssize_t)PyArray_SIZE(t));
            goto done;
        }
        tp = PyArray_DATA(t);
    }
    npy_intp ns = (npy_intp)b * n, cdims[2] = {0, 2};
    slots = (PyArrayObject *)PyArray_SimpleNew(1, &ns, NPY_INT64);
    if (!slots) goto done;
    int64_t *sp = PyArray_DATA(slots);
    pkv_block_copy cbuf[512], *copies = cbuf;
    pkv_block_copy *cheap = NULL;
    if (b > 512) {
        copies = cheap = PyMem_Malloc((size_t)b * sizeof *copies);
        if (!copies) { PyErr_NoMemory(); goto done; }
    }
    int st;
    Py_ssize_t i = 0, ncow = 0;
    int64_t need = 0;
    pkv_stats stats = PKV_STATS_INIT;
    int phase = 0;
    CALL_IF(self, st, batch_run(self->c, hs, b, n, tp, sp, copies, &i, &ncow, &need, &stats, &phase),
            (int64_t)b * (n + 1) >= LONG_ITEMS);
    if (st != PKV_OK && phase == 0 && i < 0) {
        raise_arg(st, "the batch needs up to %lld blocks, %d free and %d evictable (nothing changed)",
                  (long long)need, stats.free_blocks, stats.evictable_blocks);
    } else if (st != PKV_OK) {
        char why[400];
        snprintf(why, sizeof why, "seqs[%zd]: %s%s", i, pkv_cache_last_error(self->c),
                 phase ? " (the sequences before it were appended; their copies are lost)" : " (nothing changed)");
        raise_status(st, why);
    } else {
        cdims[0] = ncow;
        cow = (PyArrayObject *)PyArray_SimpleNew(2, cdims, NPY_INT32);
        if (cow) {
            int32_t *cp = PyArray_DATA(cow);
            for (Py_ssize_t j = 0; j < ncow; j++) cp[2 * j] = copies[j].src, cp[2 * j + 1] = copies[j].dst;
            result = PyTuple_Pack(2, (PyObject *)slots, (PyObject *)cow);
        }
    }
    PyMem_Free(cheap);
done:
    PyMem_Free(heap);
    Py_XDECREF(t);
    Py_XDECREF(slots);
    Py_XDECREF(cow);
    return result;
}

/* Fetches an optional preallocated output: an int32 (or int64) C-contiguous
 * ndarray of exactly `count` elements; NULL with no error set when obj is None. */
static PyArrayObject *out_array(PyObject *obj, const char *name, int typenum, int nd, const npy_intp *dims) {
    if (obj && obj != Py_None) {
        if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != typenum ||
            !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj) || !PyArray_ISWRITEABLE((PyArrayObject *)obj))
            return (PyArrayObject *)raise_arg(PKV_ERR_DTYPE, "%s: expected a writable C-contiguous %s ndarray", name,
                                              typenum == NPY_INT32 ? "int32" : "int64");
        PyArrayObject *a = (PyArrayObject *)obj;
        int ok = PyArray_NDIM(a) == nd;
        for (int i = 0; ok && i < nd; i++) ok = PyArray_DIM(a, i) == dims[i];
        if (!ok) {
            if (nd == 2)
                return (PyArrayObject *)raise_arg(PKV_ERR_SHAPE, "%s: expected shape (%zd, %zd)", name,
                                                  (Py_ssize_t)dims[0], (Py_ssize_t)dims[1]);
            return (PyArrayObject *)raise_arg(PKV_ERR_SHAPE, "%s: expected shape (%zd,)", name, (Py_ssize_t)dims[0]);
        }
        Py_INCREF(a);
        return a;
    }
    return (PyArrayObject *)PyArray_SimpleNew(nd, (npy_intp *)dims, typenum);
}

/* export_flashmla(seqs, max_blocks_per_seq=None, out=None) -> (block_table, cache_seqlens). */
static PyObject *cache_export_flashmla(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"seqs", "max_blocks_per_seq", "out", NULL};
    PyObject *seqs, *mbo = Py_None, *out = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OO", kwlist, &seqs, &mbo, &out)) return NULL;
    if (!cache_open(self)) return NULL;
    int fixed = mbo != Py_None;
    long mb = fixed ? PyLong_AsLong(mbo) : self->last_mbps;
    if (mb == -1 && PyErr_Occurred()) return NULL;
    if (mb < 0 || mb > INT32_MAX) return raise_arg(PKV_ERR_INVALID, "max_blocks_per_seq: must be >= 0");
    PyObject *out_t = NULL, *out_l = NULL;
    if (out != Py_None) {
        if (!PyTuple_Check(out) || PyTuple_GET_SIZE(out) != 2)
            return raise_arg(PKV_ERR_INVALID, "out: expected a (block_table, cache_seqlens) tuple");
        out_t = PyTuple_GET_ITEM(out, 0), out_l = PyTuple_GET_ITEM(out, 1);
        if (!fixed && PyArray_Check(out_t) && PyArray_NDIM((PyArrayObject *)out_t) == 2)
            mb = PyArray_DIM((PyArrayObject *)out_t, 1), fixed = 1;
    }
    pkv_seq buf[512], *heap;
    Py_ssize_t b = 0;
    pkv_seq *hs = seq_handles(self, seqs, buf, 512, &b, &heap);
    if (!hs) return NULL;
    PyObject *result = NULL;
    PyArrayObject *table = NULL, *lens = NULL;
    npy_intp ld = b;
    lens = out_array(out_l, "out[1] (cache_seqlens)", NPY_INT32, 1, &ld);
    if (!lens) goto done;
    for (int attempt = 0; attempt < 2; attempt++) {
        npy_intp td[2] = {b, mb};
        Py_XDECREF(table);
        table = out_array(out_t, "out[0] (block_table)", NPY_INT32, 2, td);
        if (!table) goto done;
        int32_t needed = 0;
        int st;
        CALL_IF(self, st, pkv_export_flashmla(self->c, hs, (int32_t)b, PyArray_DATA(table), (int32_t)mb,
                                              PyArray_DATA(lens), &needed), (int64_t)b * (mb + 1) >= 4 * LONG_ITEMS);
        if (st == PKV_OK && (fixed || needed == mb)) {
            if (!fixed) self->last_mbps = needed;
            result = PyTuple_Pack(2, (PyObject *)table, (PyObject *)lens);
            goto done;
        }
        if ((st != PKV_OK && st != PKV_ERR_BUFFER) || fixed) {
            cache_raise(self, st);
            goto done;
        }
        mb = needed; /* the exact width, then once more */
    }
    raise_status(PKV_ERR_STATE, "export_flashmla: the table width changed between two calls");
done:
    PyMem_Free(heap);
    Py_XDECREF(table);
    Py_XDECREF(lens);
    return result;
}

/* export_flashinfer(seqs) -> (kv_indptr [b+1], kv_indices [nnz], kv_last_page_len [b]). */
static PyObject *cache_export_flashinfer(CacheObject *self, PyObject *seqs) {
    if (!cache_open(self)) return NULL;
    pkv_seq buf[512], *heap;
    Py_ssize_t b = 0;
    pkv_seq *hs = seq_handles(self, seqs, buf, 512, &b, &heap);
    if (!hs) return NULL;
    PyObject *result = NULL;
    npy_intp d1 = b + 1, d2 = b, cap = 0;
    PyArrayObject *indptr = (PyArrayObject *)PyArray_SimpleNew(1, &d1, NPY_INT32);
    PyArrayObject *last = (PyArrayObject *)PyArray_SimpleNew(1, &d2, NPY_INT32);
    PyArrayObject *idx = NULL;
    if (!indptr || !last) goto done;
    int32_t needed = 0, st, probe[1];
    CALL(self, st, pkv_export_flashinfer(self->c, hs, (int32_t)b, PyArray_DATA(indptr), probe, 0,
                                         PyArray_DATA(last), &needed));
    if (st != PKV_OK && st != PKV_ERR_BUFFER) {
        cache_raise(self, st);
        goto done;
    }
    cap = needed;
    idx = (PyArrayObject *)PyArray_SimpleNew(1, &cap, NPY_INT32);
    if (!idx) goto done;
    CALL(self, st, pkv_export_flashinfer(self->c, hs, (int32_t)b, PyArray_DATA(indptr), PyArray_DATA(idx),
                                         (int32_t)cap, PyArray_DATA(last), &needed));
    if (st != PKV_OK) {
        cache_raise(self, st);
        goto done;
    }
    result = PyTuple_Pack(3, (PyObject *)indptr, (PyObject *)idx, (PyObject *)last);
done:
    PyMem_Free(heap);
    Py_XDECREF(indptr);
    Py_XDECREF(last);
    Py_XDECREF(idx);
    return result;
}

/* slot_mapping(seqs) -> int64 slots of each sequence's last append, concatenated. */
static PyObject *cache_slot_mapping(CacheObject *self, PyObject *seqs) {
    if (!cache_open(self)) return NULL;
    pkv_seq buf[512], *heap;
    Py_ssize_t b = 0;
    pkv_seq *hs = seq_handles(self, seqs, buf, 512, &b, &heap);
    if (!hs) return NULL;
    PyObject *result = NULL;
    int32_t n = 0, st;
    int64_t probe[1];
    CALL(self, st, pkv_export_slot_mapping(self->c, hs, (int32_t)b, probe, 0, &n));
    if (st != PKV_OK && st != PKV_ERR_BUFFER) {
        cache_raise(self, st);
    } else {
        npy_intp d = n;
        PyArrayObject *s = (PyArrayObject *)PyArray_SimpleNew(1, &d, NPY_INT64);
        if (s) {
            CALL(self, st, pkv_export_slot_mapping(self->c, hs, (int32_t)b, PyArray_DATA(s), n, &n));
            if (st != PKV_OK) cache_raise(self, st);
            else result = (PyObject *)s, s = NULL;
            Py_XDECREF(s);
        }
    }
    PyMem_Free(heap);
    return result;
}

static PyObject *cache_stats(CacheObject *self, PyObject *unused) {
    (void)unused;
    if (!cache_open(self)) return NULL;
    pkv_stats s = PKV_STATS_INIT;
    int st;
    CALL(self, st, pkv_cache_stats(self->c, &s));
    if (st != PKV_OK) return cache_raise(self, st);
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:L,s:L,s:i,s:L,s:L,s:L,s:L,s:L,s:L}", "num_blocks",
                         s.num_blocks, "block_size", s.block_size, "free_blocks", s.free_blocks, "used_blocks",
                         s.used_blocks, "evictable_blocks", s.evictable_blocks, "shared_blocks", s.shared_blocks,
                         "num_seqs", s.num_seqs, "peak_used_blocks", s.peak_used_blocks, "tokens",
                         (long long)s.tokens, "cow_copies", (long long)s.cow_copies, "cached_blocks",
                         s.cached_blocks, "prefix_queries", (long long)s.prefix_queries, "prefix_query_tokens",
                         (long long)s.prefix_query_tokens, "prefix_hit_tokens", (long long)s.prefix_hit_tokens,
                         "evictions", (long long)s.evictions, "dedups", (long long)s.dedups, "registrations",
                         (long long)s.registrations);
}

static PyObject *cache_check(CacheObject *self, PyObject *unused) {
    (void)unused;
    if (!cache_open(self)) return NULL;
    int st;
    CALL_IF(self, st, pkv_cache_check(self->c), 1);
    if (st != PKV_OK) return cache_raise(self, st);
    Py_RETURN_NONE;
}

static PyObject *cache_refcount(CacheObject *self, PyObject *arg) {
    if (!cache_open(self)) return NULL;
    long id = PyLong_AsLong(arg);
    if (id == -1 && PyErr_Occurred()) return NULL;
    if (id < INT32_MIN || id > INT32_MAX) return raise_arg(PKV_ERR_BLOCK_ID, "block %ld is out of range", id);
    int32_t rc = 0;
    int st;
    CALL(self, st, pkv_block_refcount(self->c, (int32_t)id, &rc));
    if (st != PKV_OK) return cache_raise(self, st);
    return PyLong_FromLong(rc);
}

/* Checks that a C-contiguous ndarray holds at least `bytes` bytes. */
static int buf_ok(PyObject *o, const char *name, size_t bytes, int writable) {
    if (!PyArray_Check(o) || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)o)) {
        raise_arg(PKV_ERR_INVALID, "%s: expected a C-contiguous ndarray", name);
        return 0;
    }
    if (writable && !PyArray_ISWRITEABLE((PyArrayObject *)o)) {
        raise_arg(PKV_ERR_INVALID, "%s: the array is read-only", name);
        return 0;
    }
    if ((size_t)PyArray_NBYTES((PyArrayObject *)o) < bytes) {
        raise_arg(PKV_ERR_SHAPE, "%s: holds %zd bytes, needs %zu", name, (Py_ssize_t)PyArray_NBYTES((PyArrayObject *)o),
                  bytes);
        return 0;
    }
    return 1;
}

/* _write(layer, slots int64 [n], k, v or None, src_dtype): shapes were checked by
 * the Python layer; here only that every buffer is large enough. */
static PyObject *cache_write_raw(CacheObject *self, PyObject *args) {
    int layer, sdt;
    PyObject *slots, *k, *v;
    if (!PyArg_ParseTuple(args, "iOOOi", &layer, &slots, &k, &v, &sdt)) return NULL;
    if (!cache_open(self)) return NULL;
    if (!buf_ok(slots, "slots", 0, 0) || PyArray_TYPE((PyArrayObject *)slots) != NPY_INT64)
        return PyErr_Occurred() ? NULL : raise_arg(PKV_ERR_DTYPE, "slots: expected int64");
    npy_intp n = PyArray_SIZE((PyArrayObject *)slots);
    if (n > INT32_MAX) return raise_arg(PKV_ERR_INVALID, "slots: too many");
    const pkv_config *c = &self->cfg;
    size_t krow = c->kv_dtype == PKV_FP8_MLA656 && sdt != PKV_FP8_MLA656 ? pkv_dtype_size(sdt) * 576
                                                                        : pkv_row_bytes(sdt, c->h_kv, c->d);
    if (krow == 0) return raise_arg(PKV_ERR_DTYPE, "k: dtype %d does not fit this cache", sdt);
    if (!buf_ok(k, "k", (size_t)n * krow, 0)) return NULL;
    const void *vp = NULL;
    if (v != Py_None) {
        if (!buf_ok(v, "v", (size_t)n * pkv_row_bytes(sdt, c->h_kv, c->dv), 0)) return NULL;
        vp = PyArray_DATA((PyArrayObject *)v);
    }
    int st;
    CALL_IF(self, st, pkv_store_write(self->c, layer, PyArray_DATA((PyArrayObject *)slots), (int32_t)n,
                                   PyArray_DATA((PyArrayObject *)k), vp, sdt), (size_t)n * krow >= LONG_BYTES);
    if (st != PKV_OK) return cache_raise(self, st);
    Py_RETURN_NONE;
}

/* _read(layer, slots int64 [n], k_out float32, v_out float32 or None). */
static PyObject *cache_read_raw(CacheObject *self, PyObject *args) {
    int layer;
    PyObject *slots, *k, *v;
    if (!PyArg_ParseTuple(args, "iOOO", &layer, &slots, &k, &v)) return NULL;
    if (!cache_open(self)) return NULL;
    if (!buf_ok(slots, "slots", 0, 0) || PyArray_TYPE((PyArrayObject *)slots) != NPY_INT64)
        return PyErr_Occurred() ? NULL : raise_arg(PKV_ERR_DTYPE, "slots: expected int64");
    npy_intp n = PyArray_SIZE((PyArrayObject *)slots);
    if (n > INT32_MAX) return raise_arg(PKV_ERR_INVALID, "slots: too many");
    const pkv_config *c = &self->cfg;
    if (!buf_ok(k, "k_out", (size_t)n * c->h_kv * c->d * 4, 1)) return NULL;
    float *vp = NULL;
    if (v != Py_None) {
        if (!buf_ok(v, "v_out", (size_t)n * c->h_kv * c->dv * 4, 1)) return NULL;
        vp = PyArray_DATA((PyArrayObject *)v);
    }
    int st;
    CALL_IF(self, st, pkv_store_read(self->c, layer, PyArray_DATA((PyArrayObject *)slots), (int32_t)n,
                                  PyArray_DATA((PyArrayObject *)k), vp),
            (size_t)n * c->h_kv * c->d * 4 >= LONG_BYTES);
    if (st != PKV_OK) return cache_raise(self, st);
    Py_RETURN_NONE;
}

/* ---- arena views --------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    CacheObject *cache;
} ArenaRef;

static void arenaref_dealloc(ArenaRef *self) {
    CacheObject *co = self->cache;
    if (co && --co->views == 0 && co->closed) cache_destroy_now(co);
    Py_XDECREF(co);
    PyObject_Free(self);
}

static PyObject *arena_view(CacheObject *co, void *p, int dv) {
    const pkv_config *c = &co->cfg;
    int nd = 4, typenum;
    npy_intp dims[4] = {c->num_blocks, c->block_size, c->h_kv, dv};
    switch (c->kv_dtype) {
    case PKV_F32: typenum = NPY_FLOAT32; break;
    case PKV_F16: typenum = NPY_FLOAT16; break;
    case PKV_BF16: typenum = NPY_UINT16; break;
    default: typenum = NPY_UINT8, dims[3] = 656; break;
    }
    PyObject *a = PyArray_SimpleNewFromData(nd, dims, typenum, p);
    if (!a) return NULL;
    ArenaRef *r = PyObject_New(ArenaRef, &ArenaRefType);
    if (!r) {
        Py_DECREF(a);
        return NULL;
    }
    Py_INCREF(co);
    r->cache = co;
    co->views++;
    if (PyArray_SetBaseObject((PyArrayObject *)a, (PyObject *)r) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

/* arenas(layer) -> (k_cache, v_cache or None): zero-copy views of the host
 * arenas in FlashMLA's layout [num_blocks][block_size][h_kv][d] (bf16 as
 * uint16; FP8 MLA as uint8 [..][656]). The cache's memory lives as long as a view. */
static PyObject *cache_arenas(CacheObject *self, PyObject *arg) {
    if (!cache_open(self)) return NULL;
    long layer = PyLong_AsLong(arg);
    if (layer == -1 && PyErr_Occurred()) return NULL;
    if (layer < 0 || layer > INT32_MAX) return raise_arg(PKV_ERR_INVALID, "layer %ld is out of range", layer);
    void *k = NULL, *v = NULL;
    int st;
    CALL(self, st, pkv_store_arenas(self->c, (int32_t)layer, &k, &v));
    if (st != PKV_OK) return cache_raise(self, st);
    PyObject *kv = arena_view(self, k, self->cfg.d);
    if (!kv) return NULL;
    PyObject *vv = v ? arena_view(self, v, self->cfg.dv) : (Py_INCREF(Py_None), Py_None);
    if (!vv) {
        Py_DECREF(kv);
        return NULL;
    }
    return Py_BuildValue("(NN)", kv, vv);
}

static PyMethodDef cache_methods[] = {
    {"close", (PyCFunction)cache_close, METH_NOARGS, "Destroys the cache (deferred while arena views live)."},
    {"__enter__", (PyCFunction)cache_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)cache_exit, METH_VARARGS, NULL},
    {"sequence", (PyCFunction)(void (*)(void))cache_sequence, METH_VARARGS | METH_KEYWORDS,
     "sequence(ns=0) -> a new empty Sequence in namespace ns."},
    {"lookup", (PyCFunction)(void (*)(void))cache_lookup, METH_VARARGS | METH_KEYWORDS,
     "lookup(tokens, namespace=0) -> (Sequence, cached_tokens): a new sequence sharing the cached prefix."},
    {"register", (PyCFunction)cache_register, METH_O,
     "register(seq) -> (registered, deduped): enter seq's full blocks into the prefix index."},
    {"append_batch", (PyCFunction)(void (*)(void))cache_append_batch, METH_VARARGS | METH_KEYWORDS,
     "append_batch(seqs, n=1, tokens=None) -> (slots int64 [len(seqs)*n], cow int32 [k, 2])."},
    {"export_flashmla", (PyCFunction)(void (*)(void))cache_export_flashmla, METH_VARARGS | METH_KEYWORDS,
     "export_flashmla(seqs, max_blocks_per_seq=None, out=None) -> (block_table int32 [b, m], cache_seqlens int32 [b])."},
    {"export_flashinfer", (PyCFunction)cache_export_flashinfer, METH_O,
     "export_flashinfer(seqs) -> (kv_indptr, kv_indices, kv_last_page_len), int32."},
    {"slot_mapping", (PyCFunction)cache_slot_mapping, METH_O,
     "slot_mapping(seqs) -> int64 slots of each sequence's last append, concatenated."},
    {"stats", (PyCFunction)cache_stats, METH_NOARGS, "stats() -> dict of the cache's counters."},
    {"check", (PyCFunction)cache_check, METH_NOARGS, "check(): walks every invariant; raises CorruptError."},
    {"refcount", (PyCFunction)cache_refcount, METH_O, "refcount(block_id) -> int."},
    {"arenas", (PyCFunction)cache_arenas, METH_O, "arenas(layer) -> (k_cache, v_cache or None), zero-copy views."},
    {"_write", (PyCFunction)cache_write_raw, METH_VARARGS, NULL},
    {"_read", (PyCFunction)cache_read_raw, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef cache_getset[] = {
    {"closed", (getter)cache_get_closed, NULL, "True once close() was called.", NULL},
    {"config", (getter)cache_get_config, NULL, "The cache's configuration as a dict.", NULL},
    {"last_error", (getter)cache_get_last_error, NULL, "Detail of the last failed library call.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

/* ---- Sequence ------------------------------------------------------------ */

static void seq_dealloc(SeqObject *self) {
    CacheObject *co = self->cache;
    if (co && co->c && !co->closed && !self->freed) {
        /* A sequence nobody can name any more gives its blocks back. */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        int st;
        CALL(co, st, pkv_seq_free(co->c, self->h));
        (void)st;
        PyErr_Restore(et, ev, tb);
    }
    Py_XDECREF(co);
    PyObject_Free(self);
}

static int seq_ready(SeqObject *s) { return cache_open(s->cache); }

static PyObject *seq_append(SeqObject *self, PyObject *arg) {
    if (!seq_ready(self)) return NULL;
    CacheObject *co = self->cache;
    PyArrayObject *t = NULL;
    long n;
    if (PyLong_Check(arg)) {
        n = PyLong_AsLong(arg);
        if (n == -1 && PyErr_Occurred()) return NULL;
        if (n < 0 || n > INT32_MAX) return raise_arg(PKV_ERR_INVALID, "n: must be in [0, 2^31), got %ld", n);
    } else {
        t = as_tokens(arg, "tokens");
        if (!t) return NULL;
        n = (long)PyArray_DIM(t, 0);
    }
    npy_intp d = n;
    PyArrayObject *slots = (PyArrayObject *)PyArray_SimpleNew(1, &d, NPY_INT64);
    if (!slots) {
        Py_XDECREF(t);
        return NULL;
    }
    pkv_block_copy cow = {-1, -1};
    int st;
    CALL_IF(co, st, pkv_seq_append(co->c, self->h, (int32_t)n, t ? PyArray_DATA(t) : NULL, PyArray_DATA(slots), &cow),
            n >= LONG_ITEMS);
    Py_XDECREF(t);
    if (st != PKV_OK) {
        Py_DECREF(slots);
        return cache_raise(co, st);
    }
    if (co->cfg.storage == PKV_STORAGE_HOST) return (PyObject *)slots;
    if (cow.src < 0) return Py_BuildValue("(NO)", slots, Py_None);
    return Py_BuildValue("(N(ii))", slots, cow.src, cow.dst);
}

static PyObject *seq_fork(SeqObject *self, PyObject *unused) {
    (void)unused;
    if (!seq_ready(self)) return NULL;
    pkv_seq child;
    int st;
    CALL(self->cache, st, pkv_seq_fork(self->cache->c, self->h, &child));
    if (st != PKV_OK) return cache_raise(self->cache, st);
    return seq_new(self->cache, child, self->ns);
}

static PyObject *seq_truncate(SeqObject *self, PyObject *arg) {
    if (!seq_ready(self)) return NULL;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > INT32_MAX) return raise_arg(PKV_ERR_INVALID, "new_len: must be in [0, len(seq)], got %ld", n);
    int st;
    CALL(self->cache, st, pkv_seq_truncate(self->cache->c, self->h, (int32_t)n));
    if (st != PKV_OK) return cache_raise(self->cache, st);
    Py_RETURN_NONE;
}

static PyObject *seq_free(SeqObject *self, PyObject *unused) {
    (void)unused;
    if (!seq_ready(self)) return NULL;
    int st;
    CALL(self->cache, st, pkv_seq_free(self->cache->c, self->h));
    if (st != PKV_OK) return cache_raise(self->cache, st);
    self->freed = 1;
    Py_RETURN_NONE;
}

static PyObject *seq_blocks_needed(SeqObject *self, PyObject *arg) {
    if (!seq_ready(self)) return NULL;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > INT32_MAX) return raise_arg(PKV_ERR_INVALID, "n: must be >= 0, got %ld", n);
    int32_t k = 0;
    int st;
    CALL(self->cache, st, pkv_seq_blocks_needed(self->cache->c, self->h, (int32_t)n, &k));
    if (st != PKV_OK) return cache_raise(self->cache, st);
    return PyLong_FromLong(k);
}

static PyObject *seq_register(SeqObject *self, PyObject *unused) {
    (void)unused;
    if (!seq_ready(self)) return NULL;
    return do_register(self->cache, self);
}

static PyObject *seq_slot_mapping(SeqObject *self, PyObject *unused) {
    (void)unused;
    PyObject *l = PyList_New(1);
    if (!l) return NULL;
    Py_INCREF(self);
    PyList_SET_ITEM(l, 0, (PyObject *)self);
    PyObject *r = cache_slot_mapping(self->cache, l);
    Py_DECREF(l);
    return r;
}

static Py_ssize_t seq_len(SeqObject *self) {
    if (!seq_ready(self)) return -1;
    int32_t n = 0;
    int st;
    CALL(self->cache, st, pkv_seq_length(self->cache->c, self->h, &n));
    if (st != PKV_OK) {
        cache_raise(self->cache, st);
        return -1;
    }
    return n;
}

static PyObject *seq_get_blocks(SeqObject *self, void *unused) {
    (void)unused;
    Py_ssize_t len = seq_len(self);
    if (len < 0) return NULL;
    CacheObject *co = self->cache;
    int32_t cap = (int32_t)((len + co->cfg.block_size - 1) / co->cfg.block_size), n = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        npy_intp d = cap;
        PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(1, &d, NPY_INT32);
        if (!a) return NULL;
        int st;
        CALL(co, st, pkv_seq_blocks(co->c, self->h, PyArray_DATA(a), cap, &n));
        if (st == PKV_OK && n == cap) return (PyObject *)a;
        Py_DECREF(a);
        if (st != PKV_OK && st != PKV_ERR_BUFFER) return cache_raise(co, st);
        cap = n; /* another thread changed it in between */
    }
    return raise_status(PKV_ERR_STATE, "blocks: the sequence changed during the call");
}

static PyObject *seq_get_handle(SeqObject *self, void *unused) {
    (void)unused;
    return PyLong_FromLongLong(self->h);
}
static PyObject *seq_get_ns(SeqObject *self, void *unused) {
    (void)unused;
    return PyLong_FromUnsignedLongLong(self->ns);
}
static PyObject *seq_get_cache(SeqObject *self, void *unused) {
    (void)unused;
    Py_INCREF(self->cache);
    return (PyObject *)self->cache;
}
static PyObject *seq_get_freed(SeqObject *self, void *unused) {
    (void)unused;
    return PyBool_FromLong(self->freed);
}

static PyObject *seq_repr(SeqObject *self) {
    if (self->freed || self->cache->closed) return PyUnicode_FromFormat("<pagedkv.Sequence %lld (freed)>", (long long)self->h);
    int32_t n = -1;
    int st;
    CALL(self->cache, st, pkv_seq_length(self->cache->c, self->h, &n));
    (void)st;
    return PyUnicode_FromFormat("<pagedkv.Sequence %lld len=%d ns=%llu>", (long long)self->h, n,
                                (unsigned long long)self->ns);
}

static PyMethodDef seq_methods[] = {
    {"append", (PyCFunction)seq_append, METH_O,
     "append(n or tokens) -> slots int64 [n] (host mode), or (slots, cow) in metadata mode where cow is None or "
     "the (src, dst) block copy the engine must perform first."},
    {"fork", (PyCFunction)seq_fork, METH_NOARGS, "fork() -> a child Sequence sharing every block."},
    {"truncate", (PyCFunction)seq_truncate, METH_O, "truncate(new_len): release blocks past new_len."},
    {"free", (PyCFunction)seq_free, METH_NOARGS, "free(): release every block; the handle becomes stale."},
    {"blocks_needed", (PyCFunction)seq_blocks_needed, METH_O, "blocks_needed(n) -> blocks an append of n takes."},
    {"register", (PyCFunction)seq_register, METH_NOARGS, "register() -> (registered, deduped)."},
    {"slot_mapping", (PyCFunction)seq_slot_mapping, METH_NOARGS, "slot_mapping() -> the slots of the last append."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef seq_getset[] = {
    {"blocks", (getter)seq_get_blocks, NULL, "The block ids (int32 ndarray, a copy).", NULL},
    {"handle", (getter)seq_get_handle, NULL, "The library's pkv_seq handle.", NULL},
    {"namespace", (getter)seq_get_ns, NULL, "The prefix-cache namespace.", NULL},
    {"cache", (getter)seq_get_cache, NULL, "The owning Cache.", NULL},
    {"freed", (getter)seq_get_freed, NULL, "True after free().", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PySequenceMethods seq_as_sequence = {.sq_length = (lenfunc)seq_len};

/* ------------------------------------------------------------------------- */
/* Attention                                                                 */
/* ------------------------------------------------------------------------- */

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
 * causal, softmax_scale, q_dtype, kv_dtype, topk). The Python layer derived geom
 * from the shapes; each buffer is checked here to be large enough for it. */
static PyObject *mod_attn(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *q, *k, *v, *table, *lens, *idx, *sink, *out, *lse, *threads_o;
    pkv_attn_args a;
    pkv_attn_args_init(&a);
    int fast;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO(iiiiiiiiiifiii)pO", &q, &k, &v, &table, &lens, &idx, &sink, &out, &lse,
                          &a.batch, &a.s_q, &a.h_q, &a.h_kv, &a.d, &a.dv, &a.block_size, &a.max_blocks_per_seq,
                          &a.num_blocks, &a.causal, &a.softmax_scale, &a.q_dtype, &a.kv_dtype, &a.topk, &fast,
                          &threads_o))
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

/* ------------------------------------------------------------------------- */
/* DLPack import (any producer, bfloat16 included)                           */
/* ------------------------------------------------------------------------- */

typedef struct { int32_t device_type, device_id; } DLDevice;
typedef struct { uint8_t code, bits; uint16_t lanes; } DLDataType;
typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape, *strides;
    uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

static void dl_owner_free(PyObject *cap) {
    DLManagedTensor *m = PyCapsule_GetPointer(cap, "pagedkv.dlpack_owner");
    if (m && m->deleter) m->deleter(m);
}

/* _from_dlpack(obj) -> (ndarray, is_bf16): a zero-copy numpy view of a DLPack
 * tensor on the CPU; bfloat16 comes back as uint16 with is_bf16 True. */
static PyObject *mod_from_dlpack(PyObject *mod, PyObject *obj) {
    (void)mod;
    PyObject *cap = PyCapsule_CheckExact(obj) ? (Py_INCREF(obj), obj) : PyObject_CallMethod(obj, "__dlpack__", NULL);
    if (!cap) return NULL;
    DLManagedTensor *m = PyCapsule_GetPointer(cap, "dltensor");
    if (!m) {
        Py_DECREF(cap);
        return NULL;
    }
    DLTensor *t = &m->dl_tensor;
    int typenum = -1, bf16 = 0;
    if (t->device.device_type != 1 /* kDLCPU */) {
        Py_DECREF(cap);
        return raise_arg(PKV_ERR_INVALID, "the tensor is not on the CPU (DLPack device %d)", t->device.device_type);
    }
    if (t->dtype.lanes == 1) {
        switch (t->dtype.code * 1000 + t->dtype.bits) {
        case 2032: typenum = NPY_FLOAT32; break;
        case 2016: typenum = NPY_FLOAT16; break;
        case 2064: typenum = NPY_FLOAT64; break;
        case 4016: typenum = NPY_UINT16, bf16 = 1; break;
        case 8: typenum = NPY_INT8; break;
        case 16: typenum = NPY_INT16; break;
        case 32: typenum = NPY_INT32; break;
        case 64: typenum = NPY_INT64; break;
        case 1008: typenum = NPY_UINT8; break;
        case 1016: typenum = NPY_UINT16; break;
        case 1032: typenum = NPY_UINT32; break;
        case 1064: typenum = NPY_UINT64; break;
        default: break;
        }
    }
    if (typenum < 0 || t->ndim > NPY_MAXDIMS || t->ndim < 0) {
        Py_DECREF(cap);
        return raise_arg(PKV_ERR_DTYPE, "unsupported DLPack dtype (code %d, %d bits, %d lanes)", t->dtype.code,
                         t->dtype.bits, t->dtype.lanes);
    }
    npy_intp dims[NPY_MAXDIMS], strides[NPY_MAXDIMS];
    int es = t->dtype.bits / 8;
    for (int i = 0; i < t->ndim; i++) dims[i] = (npy_intp)t->shape[i];
    if (t->strides) {
        for (int i = 0; i < t->ndim; i++) strides[i] = (npy_intp)t->strides[i] * es;
    } else {
        npy_intp s = es;
        for (int i = t->ndim - 1; i >= 0; i--) strides[i] = s, s *= dims[i];
    }
    PyObject *arr = PyArray_New(&PyArray_Type, t->ndim, dims, typenum, strides, (char *)t->data + t->byte_offset, 0,
                                NPY_ARRAY_WRITEABLE, NULL);
    if (!arr) {
        Py_DECREF(cap);
        return NULL;
    }
    /* The consumer owns the tensor now: rename the producer's capsule (so it
     * does not free it) and let a capsule of ours call the deleter. */
    PyObject *owner = PyCapsule_New(m, "pagedkv.dlpack_owner", dl_owner_free);
    if (!owner || PyCapsule_SetName(cap, "used_dltensor") < 0) {
        Py_XDECREF(owner);
        Py_DECREF(arr);
        Py_DECREF(cap);
        return NULL;
    }
    Py_DECREF(cap);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, owner) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return Py_BuildValue("(NO)", arr, bf16 ? Py_True : Py_False);
}

/* ------------------------------------------------------------------------- */
/* Module functions                                                          */
/* ------------------------------------------------------------------------- */

static PyObject *mod_set_errors(PyObject *mod, PyObject *arg) {
    (void)mod;
    if (!PyDict_Check(arg)) return PyErr_Format(PyExc_TypeError, "expected a dict");
    for (int i = 0; i <= NSTATUS; i++) {
        PyObject *key = PyLong_FromLong(-i);
        if (!key) return NULL;
        PyObject *cls = PyDict_GetItem(arg, key); /* borrowed */
        Py_DECREF(key);
        Py_XINCREF(cls);
        Py_XSETREF(error_classes[i], cls);
    }
    Py_RETURN_NONE;
}

static PyObject *mod_strerror(PyObject *mod, PyObject *arg) {
    (void)mod;
    long st = PyLong_AsLong(arg);
    if (st == -1 && PyErr_Occurred()) return NULL;
    return PyUnicode_FromString(pkv_strerror((int)st));
}

static PyObject *mod_siphash128(PyObject *mod, PyObject *args) {
    (void)mod;
    Py_buffer key, data;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &data)) return NULL;
    PyObject *r = NULL;
    if (key.len != 16) {
        raise_arg(PKV_ERR_INVALID, "key: expected 16 bytes, got %zd", key.len);
    } else {
        uint8_t out[16];
        pkv_siphash128(key.buf, data.buf, (size_t)data.len, out);
        r = PyBytes_FromStringAndSize((const char *)out, 16);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return r;
}

/* _mla656(x, out, quantize, pow2): row-wise over n rows (checked by Python). */
static PyObject *mod_mla656(PyObject *mod, PyObject *args) {
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

static PyMethodDef mod_methods[] = {
    {"_set_errors", mod_set_errors, METH_O, NULL},
    {"_attn", mod_attn, METH_VARARGS, NULL},
    {"_from_dlpack", mod_from_dlpack, METH_O, NULL},
    {"_mla656", mod_mla656, METH_VARARGS, NULL},
    {"strerror", mod_strerror, METH_O, "strerror(status) -> the library's text for a status code."},
    {"siphash128", mod_siphash128, METH_VARARGS, "siphash128(key16, data) -> 16 bytes (SipHash-2-4-128)."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject CacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pagedkv._pagedkv.Cache",
    .tp_basicsize = sizeof(CacheObject),
    .tp_dealloc = (destructor)cache_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A paged KV cache (see pagedkv.Cache).",
    .tp_methods = cache_methods,
    .tp_getset = cache_getset,
    .tp_init = (initproc)cache_init,
    .tp_new = PyType_GenericNew,
    .tp_weaklistoffset = offsetof(CacheObject, weakrefs),
};

static PyTypeObject SeqType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pagedkv.Sequence",
    .tp_basicsize = sizeof(SeqObject),
    .tp_dealloc = (destructor)seq_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A sequence of a Cache: made by Cache.sequence(), Cache.lookup() or Sequence.fork(); freed by free() "
              "or when the object goes away.",
    .tp_methods = seq_methods,
    .tp_getset = seq_getset,
    .tp_as_sequence = &seq_as_sequence,
    .tp_repr = (reprfunc)seq_repr,
};

static PyTypeObject ArenaRefType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pagedkv._ArenaRef",
    .tp_basicsize = sizeof(ArenaRef),
    .tp_dealloc = (destructor)arenaref_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_pagedkv", "pagedkv's C extension.", -1, mod_methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__pagedkv(void) {
    import_array();
    if (PyType_Ready(&CacheType) < 0 || PyType_Ready(&SeqType) < 0 || PyType_Ready(&ArenaRefType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&CacheType);
    Py_INCREF(&SeqType);
    if (PyModule_AddObject(m, "Cache", (PyObject *)&CacheType) < 0 ||
        PyModule_AddObject(m, "Sequence", (PyObject *)&SeqType) < 0 ||
        PyModule_AddStringConstant(m, "library_version", pkv_version()) < 0 ||
        PyModule_AddIntConstant(m, "library_version_number", (long)pkv_version_number()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
