/* The 1.1 calls of the extension: extra keys (adapters, multimodal ranges) and
 * the extended lookup / peek, prefix evict and reset, KV events, tiers (host,
 * file, metadata-mode transfers) and swap out / in; and the 1.3 asynchronous
 * loads from backend tiers (start, lookup_async, load_poll / load_wait).
 * Methods of Cache and Sequence, listed in their method tables (cache.c, seq.c). */
#include "_pagedkv.h"

/* mm: None or a sequence of (start, len, hash) with hash 16 bytes -> *out
 * (PyMem_Malloc'd, NULL when empty; free with PyMem_Free) and *n. 0 with an
 * exception set when malformed. */
int parse_mm(PyObject *mm, pkv_mm_range **out, int32_t *n) {
    *out = NULL;
    *n = 0;
    if (mm == NULL || mm == Py_None) return 1;
    PyObject *seq = PySequence_Fast(mm, "mm: expected a list of (start, len, hash16) tuples");
    if (!seq) {
        PyErr_Clear();
        raise_arg(PKV_ERR_INVALID, "mm: expected a list of (start, len, hash16) tuples");
        return 0;
    }
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    if (k > INT32_MAX) {
        Py_DECREF(seq);
        raise_arg(PKV_ERR_INVALID, "mm: too many ranges");
        return 0;
    }
    pkv_mm_range *r = k ? PyMem_Calloc((size_t)k, sizeof *r) : NULL;
    if (k && !r) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        long long start, len;
        const char *h;
        Py_ssize_t hl;
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 3 ||
            !PyArg_ParseTuple(it, "LLy#", &start, &len, &h, &hl) || hl != 16) {
            PyErr_Clear();
            raise_arg(PKV_ERR_INVALID, "mm[%zd]: expected (start, len, hash) with a 16-byte hash", i);
            PyMem_Free(r);
            Py_DECREF(seq);
            return 0;
        }
        r[i].start = start;
        r[i].len = len;
        memcpy(r[i].hash, h, 16);
    }
    Py_DECREF(seq);
    *out = r;
    *n = (int32_t)k;
    return 1;
}

static PyObject *mm_list(const pkv_mm_range *r, int32_t n) {
    PyObject *l = PyList_New(n);
    if (!l) return NULL;
    for (int32_t i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(LLy#)", (long long)r[i].start, (long long)r[i].len, (const char *)r[i].hash,
                                    (Py_ssize_t)16);
        if (!t) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, t);
    }
    return l;
}

/* ------------------------------------------------------------------ prefix */

/* The body of lookup and peek: tokens, namespace, adapter, mm parsed. */
typedef struct {
    PyArrayObject *t;
    unsigned long long ns, adapter;
    pkv_mm_range *mm;
    int32_t nmm;
    pkv_extra_keys ek;
    int has_extra;
} prompt_args;

static int prompt_parse(PyObject *args, PyObject *kw, prompt_args *p) {
    static char *kwlist[] = {"tokens", "namespace", "adapter", "mm", NULL};
    PyObject *tok, *mm = Py_None;
    memset(p, 0, sizeof *p);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|K$KO", kwlist, &tok, &p->ns, &p->adapter, &mm)) return 0;
    if (!parse_mm(mm, &p->mm, &p->nmm)) return 0;
    p->t = as_tokens(tok, "tokens");
    if (!p->t) {
        PyMem_Free(p->mm);
        return 0;
    }
    if (PyArray_DIM(p->t, 0) > INT32_MAX) {
        Py_DECREF(p->t);
        PyMem_Free(p->mm);
        raise_arg(PKV_ERR_INVALID, "tokens: too many");
        return 0;
    }
    p->ek = (pkv_extra_keys)PKV_EXTRA_KEYS_INIT;
    p->ek.adapter_id = p->adapter;
    p->ek.num_mm = p->nmm;
    p->ek.mm = p->mm;
    p->has_extra = p->adapter != 0 || p->nmm > 0;
    return 1;
}

static void prompt_done(prompt_args *p) {
    Py_XDECREF(p->t);
    PyMem_Free(p->mm);
}

PyObject *cache_lookup(CacheObject *self, PyObject *args, PyObject *kw) {
    prompt_args p;
    if (!cache_open(self) || !prompt_parse(args, kw, &p)) return NULL;
    int32_t n = (int32_t)PyArray_DIM(p.t, 0), cached = 0;
    pkv_seq h;
    int st;
    CALL_IF(self, st,
            pkv_prefix_lookup_ex(self->c, (uint64_t)p.ns, PyArray_DATA(p.t), n, p.has_extra ? &p.ek : NULL, &h,
                                 &cached),
            n >= LONG_ITEMS);
    prompt_done(&p);
    if (st != PKV_OK) return cache_raise(self, st);
    PyObject *s = seq_new(self, h, (uint64_t)p.ns);
    if (!s) return NULL;
    return Py_BuildValue("(Ni)", s, cached);
}

PyObject *cache_peek(CacheObject *self, PyObject *args, PyObject *kw) {
    prompt_args p;
    if (!cache_open(self) || !prompt_parse(args, kw, &p)) return NULL;
    int32_t n = (int32_t)PyArray_DIM(p.t, 0), cached = 0, pool = 0;
    int st;
    CALL_IF(self, st,
            pkv_prefix_peek_ex(self->c, (uint64_t)p.ns, PyArray_DATA(p.t), n, p.has_extra ? &p.ek : NULL, &cached,
                               &pool),
            n >= LONG_ITEMS);
    prompt_done(&p);
    if (st != PKV_OK) return cache_raise(self, st);
    return Py_BuildValue("(ii)", cached, pool);
}

PyObject *cache_evict(CacheObject *self, PyObject *arg) {
    if (!cache_open(self)) return NULL;
    int32_t n;
    if (count_arg(arg, "n", "in [0, 2^31)", &n) < 0) return NULL;
    int32_t ev = 0;
    int st;
    CALL(self, st, pkv_prefix_evict(self->c, n, &ev));
    if (st != PKV_OK) return cache_raise(self, st);
    return PyLong_FromLong(ev);
}

PyObject *cache_reset_prefix(CacheObject *self, PyObject *unused) {
    (void)unused;
    if (!cache_open(self)) return NULL;
    int st;
    CALL(self, st, pkv_prefix_reset(self->c));
    if (st != PKV_OK) return cache_raise(self, st);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ events */

PyObject *cache_enable_events(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"capacity", NULL};
    int cap = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i", kwlist, &cap)) return NULL;
    if (!cache_open(self)) return NULL;
    if (cap < 0) return raise_arg(PKV_ERR_INVALID, "capacity: must be >= 0, got %d", cap);
    int st;
    CALL(self, st, pkv_events_enable(self->c, cap));
    if (st != PKV_OK) return cache_raise(self, st);
    Py_RETURN_NONE;
}

PyObject *cache_drain_events(CacheObject *self, PyObject *unused) {
    (void)unused;
    if (!cache_open(self)) return NULL;
    PyObject *l = PyList_New(0);
    if (!l) return NULL;
    pkv_event buf[256];
    long long dropped_all = 0;
    for (;;) {
        int32_t n = 0;
        int64_t dropped = 0;
        int st;
        CALL(self, st, pkv_events_drain(self->c, buf, 256, &n, &dropped));
        if (st != PKV_OK) {
            Py_DECREF(l);
            return cache_raise(self, st);
        }
        dropped_all += dropped;
        for (int32_t i = 0; i < n; i++) {
            const pkv_event *e = &buf[i];
            PyObject *parent = e->has_parent ? PyBytes_FromStringAndSize((const char *)e->parent_key, 16)
                                             : (Py_INCREF(Py_None), Py_None);
            PyObject *d = parent ? Py_BuildValue("{s:s,s:y#,s:N,s:K}", "kind",
                                                 e->kind == PKV_EVENT_STORED ? "stored" : "removed", "key",
                                                 (const char *)e->key, (Py_ssize_t)16, "parent_key", parent, "ns",
                                                 (unsigned long long)e->ns)
                                 : NULL;
            if (!d || PyList_Append(l, d) < 0) {
                Py_XDECREF(d);
                Py_DECREF(l);
                return NULL;
            }
            Py_DECREF(d);
        }
        if (n < 256) break;
    }
    return Py_BuildValue("(NL)", l, dropped_all);
}

/* ------------------------------------------------------------------- tiers */

PyObject *cache_add_host_tier(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"capacity_blocks", "write_through", NULL};
    long long cap;
    int wt = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L|$p", kwlist, &cap, &wt)) return NULL;
    if (!cache_open(self)) return NULL;
    int st;
    CALL_IF(self, st, pkv_cache_add_host_tier(self->c, (int64_t)cap, wt ? PKV_TIER_WRITE_THROUGH : 0), 1);
    if (st != PKV_OK) return cache_raise(self, st);
    Py_RETURN_NONE;
}

PyObject *cache_add_file_tier(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dir", "capacity_bytes", "fsync", "capacity_blocks", "write_through", NULL};
    PyObject *dir;
    long long bytes, blocks = -1;
    int fs = 0, wt = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&L|$pLp", kwlist, PyUnicode_FSConverter, &dir, &bytes, &fs, &blocks,
                                     &wt))
        return NULL;
    if (!cache_open(self)) {
        Py_DECREF(dir);
        return NULL;
    }
    if (bytes <= 0) {
        Py_DECREF(dir);
        return raise_arg(PKV_ERR_INVALID, "capacity_bytes: must be > 0, got %lld", bytes);
    }
    size_t blob = 0;
    int st;
    CALL(self, st, pkv_tier_blob_size(self->c, &blob));
    if (st != PKV_OK) {
        Py_DECREF(dir);
        return cache_raise(self, st);
    }
    if (blocks < 0) blocks = blob ? bytes / (long long)blob : 0;
    pkv_tier_backend be;
    memset(&be, 0, sizeof be);
    char detail[256] = "";
    const char *path = PyBytes_AS_STRING(dir);
    Py_BEGIN_ALLOW_THREADS st = pkv_tier_file_open(path, (uint64_t)bytes, blob, fs ? PKV_FILE_TIER_FSYNC : 0, &be,
                                                   detail);
    Py_END_ALLOW_THREADS
    Py_DECREF(dir);
    if (st != PKV_OK) return raise_status(st, detail[0] ? detail : "the file tier could not be opened");
    /* The cache owns the backend from here, also when the call fails. */
    CALL_IF(self, st, pkv_cache_add_tier(self->c, &be, (int64_t)blocks, wt ? PKV_TIER_WRITE_THROUGH : 0), 1);
    if (st != PKV_OK) return cache_raise(self, st);
    Py_RETURN_NONE;
}

PyObject *cache_tier_stats(CacheObject *self, PyObject *arg) {
    if (!cache_open(self)) return NULL;
    int32_t i;
    if (count_arg(arg, "tier", ">= 0", &i) < 0) return NULL;
    pkv_tier_stats s = PKV_TIER_STATS_INIT;
    int st;
    CALL(self, st, pkv_tier_stats_get(self->c, i, &s));
    if (st != PKV_OK) return cache_raise(self, st);
    return Py_BuildValue("{s:i,s:s,s:O,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:d,s:d}", "tier", s.tier, "kind",
                         s.kind == PKV_TIER_HOST ? "host" : "backend", "degraded", s.degraded ? Py_True : Py_False,
                         "capacity_blocks", (long long)s.capacity_blocks, "blocks", (long long)s.blocks, "hits",
                         (long long)s.hits, "misses", (long long)s.misses, "stores", (long long)s.stores,
                         "evictions", (long long)s.evictions, "errors", (long long)s.errors, "corrupt",
                         (long long)s.corrupt, "restored", (long long)s.restored, "bytes_in", (long long)s.bytes_in,
                         "bytes_out", (long long)s.bytes_out, "seconds_in", s.seconds_in, "seconds_out",
                         s.seconds_out);
}

static const char *const xfer_names[] = {"?", "offload", "load", "demote"};

PyObject *cache_drain_transfers(CacheObject *self, PyObject *unused) {
    (void)unused;
    if (!cache_open(self)) return NULL;
    PyObject *l = PyList_New(0);
    if (!l) return NULL;
    pkv_tier_transfer buf[256];
    for (;;) {
        int32_t n = 0;
        int st;
        CALL(self, st, pkv_tier_transfers_drain(self->c, buf, 256, &n));
        if (st != PKV_OK) {
            Py_DECREF(l);
            return cache_raise(self, st);
        }
        for (int32_t i = 0; i < n; i++) {
            const pkv_tier_transfer *x = &buf[i];
            PyObject *d = Py_BuildValue("{s:s,s:i,s:i,s:L,s:L,s:y#}", "op",
                                        xfer_names[x->op >= 1 && x->op <= 3 ? x->op : 0], "tier", x->tier, "block",
                                        x->block, "slot", (long long)x->slot, "dst_slot", (long long)x->dst_slot,
                                        "key", (const char *)x->key, (Py_ssize_t)16);
            if (!d || PyList_Append(l, d) < 0) {
                Py_XDECREF(d);
                Py_DECREF(l);
                return NULL;
            }
            Py_DECREF(d);
        }
        if (n < 256) break;
    }
    return l;
}

/* The queue as the raw pkv_tier_transfer records (bytes, 48 each), for the
 * package's structured-array form (pagedkv.TRANSFER_DTYPE mirrors the struct). */
_Static_assert(sizeof(pkv_tier_transfer) == 48, "pagedkv.TRANSFER_DTYPE mirrors pkv_tier_transfer");
PyObject *cache_drain_transfers_raw(CacheObject *self, PyObject *unused) {
    (void)unused;
    if (!cache_open(self)) return NULL;
    size_t cap = 256, len = 0;
    pkv_tier_transfer *buf = PyMem_Malloc(cap * sizeof *buf);
    if (!buf) return PyErr_NoMemory();
    for (;;) {
        if (cap - len < 256) {
            pkv_tier_transfer *nb = PyMem_Realloc(buf, 2 * cap * sizeof *buf);
            if (!nb) {
                /* the drained records are lost: report it rather than drop them silently */
                PyMem_Free(buf);
                return PyErr_NoMemory();
            }
            buf = nb;
            cap *= 2;
        }
        int32_t n = 0;
        int st;
        CALL(self, st, pkv_tier_transfers_drain(self->c, buf + len, 256, &n));
        if (st != PKV_OK) {
            PyMem_Free(buf);
            return cache_raise(self, st);
        }
        len += (size_t)n;
        if (n < 256) break;
    }
    PyObject *b = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)(len * sizeof *buf));
    PyMem_Free(buf);
    return b;
}

/* ------------------------------------------------------ asynchronous loads */

PyObject *cache_start_async_loads(CacheObject *self, PyObject *arg) {
    if (!cache_open(self)) return NULL;
    int32_t n;
    if (count_arg(arg, "io_threads", "in [1, 64]", &n) < 0) return NULL;
    int st;
    CALL_IF(self, st, pkv_tier_async_start(self->c, n), 1);
    if (st != PKV_OK) return cache_raise(self, st);
    Py_RETURN_NONE;
}

PyObject *cache_lookup_async(CacheObject *self, PyObject *args, PyObject *kw) {
    prompt_args p;
    if (!cache_open(self) || !prompt_parse(args, kw, &p)) return NULL;
    int32_t n = (int32_t)PyArray_DIM(p.t, 0), ready = 0, loading = 0;
    pkv_seq h;
    int st;
    CALL_IF(self, st,
            pkv_prefix_lookup_async(self->c, (uint64_t)p.ns, PyArray_DATA(p.t), n, p.has_extra ? &p.ek : NULL, &h,
                                    &ready, &loading),
            n >= LONG_ITEMS);
    prompt_done(&p);
    if (st != PKV_OK) return cache_raise(self, st);
    PyObject *s = seq_new(self, h, (uint64_t)p.ns);
    if (!s) return NULL;
    return Py_BuildValue("(Nii)", s, ready, loading);
}

/* --------------------------------------------------------- sequence calls */

static int seq_ok(SeqObject *s) { return cache_open(s->cache); }

PyObject *seq_set_adapter(SeqObject *self, PyObject *arg) {
    if (!seq_ok(self)) return NULL;
    unsigned long long a = PyLong_AsUnsignedLongLong(arg);
    if (a == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return raise_arg(PKV_ERR_INVALID, "adapter_id: expected an integer in [0, 2^64)");
    }
    int st;
    CALL(self->cache, st, pkv_seq_set_adapter(self->cache->c, self->h, (uint64_t)a));
    if (st != PKV_OK) return cache_raise(self->cache, st);
    Py_RETURN_NONE;
}

PyObject *seq_add_mm(SeqObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"start", "len", "hash", NULL};
    long long start, len;
    const char *h;
    Py_ssize_t hl;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLy#", kwlist, &start, &len, &h, &hl)) return NULL;
    if (!seq_ok(self)) return NULL;
    if (hl != 16) return raise_arg(PKV_ERR_INVALID, "hash: expected 16 bytes, got %zd", hl);
    int st;
    CALL(self->cache, st, pkv_seq_add_mm(self->cache->c, self->h, start, len, (const uint8_t *)h));
    if (st != PKV_OK) return cache_raise(self->cache, st);
    Py_RETURN_NONE;
}

PyObject *seq_extra_keys(SeqObject *self, PyObject *unused) {
    (void)unused;
    if (!seq_ok(self)) return NULL;
    CacheObject *co = self->cache;
    uint64_t adapter = 0;
    int32_t n = 0;
    int st;
    CALL(co, st, pkv_seq_extra_keys(co->c, self->h, &adapter, NULL, 0, &n));
    if (st != PKV_OK) return cache_raise(co, st);
    for (int attempt = 0; attempt < 2; attempt++) {
        pkv_mm_range *r = PyMem_Calloc(n ? (size_t)n : 1, sizeof *r);
        if (!r) return PyErr_NoMemory();
        int32_t got = 0;
        CALL(co, st, pkv_seq_extra_keys(co->c, self->h, &adapter, r, n, &got));
        if (st == PKV_OK) {
            PyObject *l = mm_list(r, got);
            PyMem_Free(r);
            return l ? Py_BuildValue("(KN)", (unsigned long long)adapter, l) : NULL;
        }
        PyMem_Free(r);
        if (st != PKV_ERR_BUFFER) return cache_raise(co, st);
        n = got; /* another thread added a range in between */
    }
    return raise_status(PKV_ERR_STATE, "extra_keys: the sequence changed during the call");
}

/* seq.swap_out() / seq.swap_in(): fn on the sequence, None or the mapped error. */
static PyObject *seq_swap(SeqObject *self, int (*fn)(pkv_cache *, pkv_seq)) {
    if (!seq_ok(self)) return NULL;
    int st;
    CALL_IF(self->cache, st, fn(self->cache->c, self->h), 1);
    if (st != PKV_OK) return cache_raise(self->cache, st);
    Py_RETURN_NONE;
}

PyObject *seq_swap_out(SeqObject *self, PyObject *unused) {
    (void)unused;
    return seq_swap(self, pkv_seq_swap_out);
}

PyObject *seq_swap_in(SeqObject *self, PyObject *unused) {
    (void)unused;
    return seq_swap(self, pkv_seq_swap_in);
}

PyObject *seq_get_swapped(SeqObject *self, void *unused) {
    (void)unused;
    if (!seq_ok(self)) return NULL;
    int32_t v = 0;
    int st;
    CALL(self->cache, st, pkv_seq_swapped(self->cache->c, self->h, &v));
    if (st != PKV_OK) return cache_raise(self->cache, st);
    return PyBool_FromLong(v);
}

PyObject *seq_load_poll(SeqObject *self, PyObject *unused) {
    (void)unused;
    if (!seq_ok(self)) return NULL;
    int32_t loading = 0, len = 0;
    int st;
    CALL(self->cache, st, pkv_seq_load_poll(self->cache->c, self->h, &loading, &len));
    if (st != PKV_OK) return cache_raise(self->cache, st);
    return Py_BuildValue("(ii)", loading, len);
}

/* Blocks until the I/O threads are done with the sequence: always without the GIL. */
PyObject *seq_load_wait(SeqObject *self, PyObject *unused) {
    (void)unused;
    if (!seq_ok(self)) return NULL;
    int32_t len = 0;
    int st;
    CALL_IF(self->cache, st, pkv_seq_load_wait(self->cache->c, self->h, &len), 1);
    if (st != PKV_OK) return cache_raise(self->cache, st);
    return PyLong_FromLong(len);
}
