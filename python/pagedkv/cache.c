/* The Cache type: construction and close, sequences, the prefix cache, batch
 * append, page-table exports, host storage (write/read/arena views), stats. */
#include "_pagedkv.h"


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

/* The Cache keywords (args must be empty: keywords only) -> *cfg, from
 * pkv_config_init's defaults; *ts: thread_safe. Shared by Cache() and Groups()
 * (one call per group). 0 with an exception set. */
int config_parse(PyObject *args, PyObject *kw, pkv_config *cfg, int *ts) {
    static char *kwlist[] = {"num_blocks", "block_size", "storage", "num_layers", "h_kv", "d", "dv", "v_separate",
                             "kv_dtype", "thread_safe", "prefix_cache", "auto_register", "fp8_pow2_scale",
                             "hash_key", "window", NULL};
    pkv_config_init(cfg);
    PyObject *storage = NULL, *dtype = NULL, *key = Py_None;
    int vsep = 0, pc = 0, ar = 0, p2 = 0;
    *ts = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$iiOiiiipOppppOi", kwlist, &cfg->num_blocks, &cfg->block_size,
                                     &storage, &cfg->num_layers, &cfg->h_kv, &cfg->d, &cfg->dv, &vsep, &dtype, ts,
                                     &pc, &ar, &p2, &key, &cfg->window))
        return 0;
    if (storage && !name_index(storage, storage_names, "storage", &cfg->storage)) return 0;
    if (dtype && !name_index(dtype, dtype_names, "kv_dtype", &cfg->kv_dtype)) return 0;
    cfg->v_separate = vsep;
    cfg->flags = (*ts ? PKV_FLAG_THREAD_SAFE : 0) | (pc ? PKV_FLAG_PREFIX_CACHE : 0) |
                 (ar ? PKV_FLAG_AUTO_REGISTER : 0) | (p2 ? PKV_FLAG_FP8_POW2_SCALE : 0);
    if (key != Py_None) {
        if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != 16) {
            raise_arg(PKV_ERR_INVALID, "hash_key: expected 16 bytes or None");
            return 0;
        }
        memcpy(cfg->hash_key, PyBytes_AS_STRING(key), 16);
        cfg->hash_key_set = 1;
    }
    return 1;
}

static int cache_init(CacheObject *self, PyObject *args, PyObject *kw) {
    if (self->c || self->owner) {
        PyErr_SetString(PyExc_RuntimeError, self->owner ? "Cache.__init__ on a cache that a Groups object owns"
                                                        : "Cache.__init__ called twice");
        return -1;
    }
    pkv_config cfg;
    int ts = 0;
    if (!config_parse(args, kw, &cfg, &ts)) return -1;
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

/* Destroys the library cache; a cache a Groups object owns is only let go
 * (the Groups object destroys the caches once none of them has an arena view). */
static void cache_destroy_now(CacheObject *self) {
    if (self->owner) {
        self->c = NULL;
        groups_views_gone((GroupsObject *)self->owner);
        return;
    }
    if (self->c) {
        pkv_cache *c = self->c;
        self->c = NULL;
        Py_BEGIN_ALLOW_THREADS pkv_cache_destroy(c);
        Py_END_ALLOW_THREADS
    }
}

static void cache_dealloc(CacheObject *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    if (self->owner) { /* borrowed: the cache and the lock are the Groups object's */
        groups_forget_cache((GroupsObject *)self->owner, self);
        Py_CLEAR(self->owner);
    } else {
        cache_destroy_now(self);
        if (self->lock) PyThread_free_lock(self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *cache_close(CacheObject *self, PyObject *unused) {
    (void)unused;
    if (self->owner) Py_RETURN_NONE; /* a group's cache: Groups.close() closes it */
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

/* A configuration as the dict Cache.config and Groups.configs return. */
PyObject *config_dict(const pkv_config *c) {
    return Py_BuildValue("{s:i,s:i,s:s,s:i,s:i,s:i,s:i,s:O,s:s,s:O,s:O,s:O,s:O,s:i}", "num_blocks", c->num_blocks,
                         "block_size", c->block_size, "storage", storage_names[c->storage], "num_layers",
                         c->num_layers, "h_kv", c->h_kv, "d", c->d, "dv", c->dv, "v_separate",
                         c->v_separate ? Py_True : Py_False, "kv_dtype", dtype_names[c->kv_dtype], "thread_safe",
                         (c->flags & PKV_FLAG_THREAD_SAFE) ? Py_True : Py_False, "prefix_cache",
                         (c->flags & PKV_FLAG_PREFIX_CACHE) ? Py_True : Py_False, "auto_register",
                         (c->flags & PKV_FLAG_AUTO_REGISTER) ? Py_True : Py_False, "fp8_pow2_scale",
                         (c->flags & PKV_FLAG_FP8_POW2_SCALE) ? Py_True : Py_False, "window", c->window);
}

static PyObject *cache_get_config(CacheObject *self, void *unused) {
    (void)unused;
    return config_dict(&self->cfg);
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

PyObject *do_register(CacheObject *co, SeqObject *s) {
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
PyObject *cache_slot_mapping(CacheObject *self, PyObject *seqs) {
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
    {"close", (PyCFunction)cache_close, METH_NOARGS,
     "Destroys the cache (deferred while arena views live); does nothing on a group's cache (Groups.cache(i)), "
     "which Groups.close() closes."},
    {"__enter__", (PyCFunction)cache_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)cache_exit, METH_VARARGS, NULL},
    {"sequence", (PyCFunction)(void (*)(void))cache_sequence, METH_VARARGS | METH_KEYWORDS,
     "sequence(ns=0) -> a new empty Sequence in namespace ns."},
    {"lookup", (PyCFunction)(void (*)(void))cache_lookup, METH_VARARGS | METH_KEYWORDS,
     "lookup(tokens, namespace=0, *, adapter=0, mm=None) -> (Sequence, cached_tokens): a new sequence sharing the "
     "cached prefix. adapter: the LoRA adapter id; mm: None or a list of (start, len, hash16) multimodal ranges, "
     "sorted and non-overlapping (the new sequence takes both)."},
    {"peek", (PyCFunction)(void (*)(void))cache_peek, METH_VARARGS | METH_KEYWORDS,
     "peek(tokens, namespace=0, *, adapter=0, mm=None) -> (cached_tokens, pool_tokens): what lookup would find, "
     "taking nothing (pool_tokens: the part already in the pool, the rest is in tiers)."},
    {"evict", (PyCFunction)cache_evict, METH_O,
     "evict(n) -> evicted: evicts up to n evictable cached blocks, least recently used first (to tier 0 if any)."},
    {"reset_prefix", (PyCFunction)cache_reset_prefix, METH_NOARGS,
     "reset_prefix(): empties the prefix index and the tiers; StateError while sequences hold registered blocks."},
    {"enable_events", (PyCFunction)(void (*)(void))cache_enable_events, METH_VARARGS | METH_KEYWORDS,
     "enable_events(capacity=4096): records KV events (stored / removed) in a queue; 0 stops and frees it."},
    {"drain_events", (PyCFunction)cache_drain_events, METH_NOARGS,
     "drain_events() -> (events, dropped): events as dicts {kind: 'stored'|'removed', key: bytes16, parent_key: "
     "bytes16 or None, ns}, oldest first; dropped: events lost to a full queue since the last drain."},
    {"add_host_tier", (PyCFunction)(void (*)(void))cache_add_host_tier, METH_VARARGS | METH_KEYWORDS,
     "add_host_tier(capacity_blocks, *, write_through=False): a host-memory tier below the pool (the next one "
     "below the last). Metadata mode: a tier of slots whose data movements drain_transfers() returns. Only on a "
     "cache with prefix_cache=True that holds no sequences yet."},
    {"add_file_tier", (PyCFunction)(void (*)(void))cache_add_file_tier, METH_VARARGS | METH_KEYWORDS,
     "add_file_tier(dir, capacity_bytes, *, fsync=False, capacity_blocks=None, write_through=False): a tier of "
     "slab files in dir (host mode). A directory of an earlier run with the same hash_key and geometry is indexed "
     "again. capacity_blocks: default capacity_bytes // the blob size."},
    {"tier_stats", (PyCFunction)cache_tier_stats, METH_O, "tier_stats(tier) -> dict of the tier's counters."},
    {"start_async_loads", (PyCFunction)cache_start_async_loads, METH_O,
     "start_async_loads(io_threads): starts io_threads (1..64) I/O threads that load blocks from backend tiers "
     "(file tiers) in the background, for lookup_async (host mode, after the tiers are added; the threads stop "
     "when the cache is closed). StateError when already started or without a backend tier."},
    {"lookup_async", (PyCFunction)(void (*)(void))cache_lookup_async, METH_VARARGS | METH_KEYWORDS,
     "lookup_async(tokens, namespace=0, *, adapter=0, mm=None) -> (Sequence, ready_tokens, loading_tokens): lookup "
     "that does not wait for backend tiers. ready_tokens hold their KV now, the loading_tokens after them are still "
     "being read (ready + loading = len(seq)); until seq.load_wait() or seq.load_poll() sees them done, calls that "
     "read or extend the sequence raise StateError. Without start_async_loads it is lookup (loading 0)."},
    {"drain_transfers", (PyCFunction)cache_drain_transfers, METH_NOARGS,
     "drain_transfers() -> list of dicts {op: 'offload'|'load'|'demote', tier, block, slot, dst_slot, key: bytes16} "
     "in queue order (metadata mode with tiers): perform them in order after every call that may take blocks."},
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
    {"_drain_transfers_raw", (PyCFunction)cache_drain_transfers_raw, METH_NOARGS, NULL},
    {"_write", (PyCFunction)cache_write_raw, METH_VARARGS, NULL},
    {"_read", (PyCFunction)cache_read_raw, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef cache_getset[] = {
    {"closed", (getter)cache_get_closed, NULL, "True once close() was called.", NULL},
    {"config", (getter)cache_get_config, NULL, "The cache's configuration as a dict.", NULL},
    {"last_error", (getter)cache_get_last_error, NULL, "Detail of the last failed library call.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject CacheType = {
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

PyTypeObject ArenaRefType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pagedkv._ArenaRef",
    .tp_basicsize = sizeof(ArenaRef),
    .tp_dealloc = (destructor)arenaref_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
};
