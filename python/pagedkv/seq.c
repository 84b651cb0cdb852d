/* The Sequence type: a handle of a Cache, freed by free() or when the object goes. */
#include "_pagedkv.h"


static void seq_dealloc(SeqObject *self) {
    CacheObject *co = self->cache;
    if (co && co->c && !co->closed && !self->freed && !self->group_seq) {
        /* A sequence nobody can name any more gives its blocks back (a group's
         * member goes with its GroupSequence instead). */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        int st;
        CALL(co, st, pkv_seq_free(co->c, self->h));
        (void)st;
        PyErr_Restore(et, ev, tb);
    }
    Py_XDECREF(self->group_seq);
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
        int32_t k;
        if (count_arg(arg, "n", "in [0, 2^31)", &k) < 0) return NULL;
        n = k;
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
    int32_t n;
    if (count_arg(arg, "new_len", "in [0, len(seq)]", &n) < 0) return NULL;
    int st;
    CALL(self->cache, st, pkv_seq_truncate(self->cache->c, self->h, n));
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
    int32_t n;
    if (count_arg(arg, "n", ">= 0", &n) < 0) return NULL;
    int32_t k = 0;
    int st;
    CALL(self->cache, st, pkv_seq_blocks_needed(self->cache->c, self->h, n, &k));
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
    {"set_adapter", (PyCFunction)seq_set_adapter, METH_O,
     "set_adapter(adapter_id): the LoRA adapter id, an extra key of the blocks it registers (empty sequence only)."},
    {"add_mm", (PyCFunction)(void (*)(void))seq_add_mm, METH_VARARGS | METH_KEYWORDS,
     "add_mm(start, len, hash): a multimodal range [start, start + len) with a 16-byte content hash; add it before "
     "appending its tokens, in order, without overlap."},
    {"extra_keys", (PyCFunction)seq_extra_keys, METH_NOARGS,
     "extra_keys() -> (adapter_id, [(start, len, hash16), ...])."},
    {"swap_out", (PyCFunction)seq_swap_out, METH_NOARGS,
     "swap_out(): moves the sequence out of the pool (host mode: into memory; metadata mode: to tier 0 slots, as "
     "queued transfers) and releases its blocks; append and the rest raise StateError until swap_in()."},
    {"swap_in", (PyCFunction)seq_swap_in, METH_NOARGS,
     "swap_in(): brings a swapped-out sequence back into new blocks (export the tables again)."},
    {"load_poll", (PyCFunction)seq_load_poll, METH_NOARGS,
     "load_poll() -> (loading_tokens, length): applies the finished loads of Cache.lookup_async without waiting; "
     "loading_tokens 0: the sequence is ready. length is shorter than the lookup said when a load failed."},
    {"load_wait", (PyCFunction)seq_load_wait, METH_NOARGS,
     "load_wait() -> length: waits (without the GIL) until none of the sequence's blocks is loading; append the "
     "prompt from there."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef seq_getset[] = {
    {"blocks", (getter)seq_get_blocks, NULL, "The block ids (int32 ndarray, a copy).", NULL},
    {"handle", (getter)seq_get_handle, NULL, "The library's pkv_seq handle.", NULL},
    {"namespace", (getter)seq_get_ns, NULL, "The prefix-cache namespace.", NULL},
    {"cache", (getter)seq_get_cache, NULL, "The owning Cache.", NULL},
    {"freed", (getter)seq_get_freed, NULL, "True after free().", NULL},
    {"swapped", (getter)seq_get_swapped, NULL, "True while swapped out.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PySequenceMethods seq_as_sequence = {.sq_length = (lenfunc)seq_len};

PyTypeObject SeqType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pagedkv.Sequence",
    .tp_basicsize = sizeof(SeqObject),
    .tp_dealloc = (destructor)seq_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A sequence of a Cache: made by Cache.sequence(), Cache.lookup(), Cache.lookup_async() or "
              "Sequence.fork(); freed by free() or when the object goes away.",
    .tp_methods = seq_methods,
    .tp_getset = seq_getset,
    .tp_as_sequence = &seq_as_sequence,
    .tp_repr = (reprfunc)seq_repr,
};
