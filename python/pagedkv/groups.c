/* KV groups (1.3): the Groups type (pkv_groups: one cache per group of layers,
 * full or sliding window, each with its own geometry, dtype, block size and
 * pool) and the GroupSequence type (a sequence held in every group, kept in
 * step: append takes blocks in all groups or in none).
 *
 * A group's cache is reached as a Cache object that borrows it
 * (Groups.cache(i), of the package's Cache class): it holds a reference to the
 * Groups object, shares its lock, never destroys the cache (its close() does
 * nothing) and raises StateError once Groups.close() ran. The Groups object
 * keeps a borrowed pointer to each live one, so cache(i) returns the same
 * object while someone holds it (the member sequences do). A member
 * (GroupSequence.member(i)) is a Sequence of that Cache object that keeps its
 * GroupSequence alive and is never freed alone; the library refuses the calls
 * that would change it alone with PKV_ERR_STATE. */
#include "_pagedkv.h"

/* The class of a group's Cache object: the package's Cache (set by
 * pagedkv/__init__.py, for write / read / drain_transfers(array=True)). */
static PyTypeObject *cache_class = &CacheType;

PyObject *mod_set_cache_class(PyObject *mod, PyObject *cls) {
    (void)mod;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &CacheType))
        return PyErr_Format(PyExc_TypeError, "expected a subclass of _pagedkv.Cache");
    Py_INCREF(cls);
    if (cache_class != &CacheType) Py_DECREF(cache_class);
    cache_class = (PyTypeObject *)cls;
    Py_RETURN_NONE;
}

static PyObject *groups_raise(GroupsObject *go, int st) {
    return raise_status(st, go && go->g ? pkv_groups_last_error(go->g) : NULL);
}

static int groups_open(GroupsObject *go) {
    if (go->closed || !go->g || !go->lock) {
        raise_status(PKV_ERR_STATE, "the groups object is closed");
        return 0;
    }
    return 1;
}

/* ---- lifetime ------------------------------------------------------------ */

static void groups_destroy_now(GroupsObject *go) {
    for (int32_t i = 0; i < go->n; i++)
        if (go->wrap[i]) go->wrap[i]->c = NULL, go->wrap[i]->closed = 1;
    if (go->g) {
        pkv_groups *g = go->g;
        go->g = NULL;
        Py_BEGIN_ALLOW_THREADS pkv_groups_destroy(g);
        Py_END_ALLOW_THREADS
    }
}

void groups_views_gone(GroupsObject *go) {
    if (!go->closed) return;
    for (int32_t i = 0; i < go->n; i++)
        if (go->wrap[i] && go->wrap[i]->views) return; /* when the last arena view goes */
    groups_destroy_now(go);
}

void groups_forget_cache(GroupsObject *go, CacheObject *co) {
    if (co->group >= 0 && co->group < go->n && go->wrap[co->group] == co) go->wrap[co->group] = NULL;
}

/* A " configs[i]: " prefix on the exception being raised (a pagedkv.Error keeps
 * its class and status; TypeError and the like theirs). */
static void error_prefix(Py_ssize_t i) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    PyObject *status = ev ? PyObject_GetAttrString(ev, "status") : NULL;
    PyObject *detail = status ? PyObject_GetAttrString(ev, "detail") : NULL;
    PyErr_Clear();
    if (status && detail && PyLong_Check(status) && PyUnicode_Check(detail)) {
        raise_arg((int)PyLong_AsLong(status), "configs[%zd]: %s", i, PyUnicode_AsUTF8(detail));
    } else if (et && ev) {
        PyErr_Format(et, "configs[%zd]: %S", i, ev);
    } else {
        PyErr_Restore(et, ev, tb);
        et = ev = tb = NULL;
    }
    Py_XDECREF(status);
    Py_XDECREF(detail);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(tb);
}

/* Groups(configs): configs is a list of dicts of Cache keywords, one per group. */
static int groups_init(GroupsObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"configs", NULL};
    PyObject *configs;
    if (self->g) {
        PyErr_SetString(PyExc_RuntimeError, "Groups.__init__ called twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &configs)) return -1;
    if (PyDict_Check(configs)) {
        raise_arg(PKV_ERR_INVALID, "configs: expected a list of dicts of Cache keywords (one per group), got a dict");
        return -1;
    }
    PyObject *fast = PySequence_Fast(configs, "configs");
    if (!fast) {
        PyErr_Clear();
        raise_arg(PKV_ERR_INVALID, "configs: expected a list of dicts of Cache keywords (one per group)");
        return -1;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    pkv_config cfg[PKVPY_MAX_GROUPS];
    const pkv_config *cp[PKVPY_MAX_GROUPS];
    int ts[PKVPY_MAX_GROUPS];
    PyObject *empty = NULL;
    if (n < 1 || n > PKVPY_MAX_GROUPS) {
        raise_arg(PKV_ERR_INVALID, "configs: expected 1 to %d groups, got %zd", PKVPY_MAX_GROUPS, n);
        goto fail;
    }
    if (!(empty = PyTuple_New(0))) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyDict_Check(d)) {
            raise_arg(PKV_ERR_INVALID, "configs[%zd]: expected a dict of Cache keywords, got %s", i,
                      Py_TYPE(d)->tp_name);
            goto fail;
        }
        if (!config_parse(empty, d, &cfg[i], &ts[i])) {
            error_prefix(i);
            goto fail;
        }
        cp[i] = &cfg[i];
        if (ts[i] != ts[0]) {
            raise_arg(PKV_ERR_INVALID, "configs[%zd]: thread_safe=%s but configs[0] has thread_safe=%s (all groups or "
                      "none)", i, ts[i] ? "True" : "False", ts[0] ? "True" : "False");
            goto fail;
        }
    }
    Py_CLEAR(empty);
    Py_CLEAR(fast);
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    pkv_groups *g = NULL;
    int st;
    Py_ssize_t bad = -1;
    Py_BEGIN_ALLOW_THREADS
    st = pkv_groups_create(cp, (int32_t)n, &g);
    /* pkv_groups_create says no more than its status: find the config that fails alone */
    for (Py_ssize_t i = 0; st != PKV_OK && st != PKV_ERR_NOMEM && bad < 0 && i < n; i++) {
        pkv_cache *c = NULL;
        int s = pkv_cache_create(cp[i], &c);
        if (s != PKV_OK) bad = i, st = s;
        pkv_cache_destroy(c);
    }
    Py_END_ALLOW_THREADS
    if (st != PKV_OK) {
        const char *why = st == PKV_ERR_INVALID ? ": a configuration field is out of range (or the arenas would be "
                                                  "too large)" : "";
        if (bad >= 0) raise_arg(st, "configs[%zd]%s", bad, why);
        else raise_status(st, "");
        return -1;
    }
    self->g = g;
    self->n = (int32_t)n;
    self->ts = ts[0];
    self->closed = 0;
    for (int32_t i = 0; i < self->n; i++) {
        pkv_cache *c = NULL;
        pkv_config_init(&self->cfg[i]);
        if (pkv_groups_cache(g, i, &c) == PKV_OK) pkv_cache_config(c, &self->cfg[i]); /* what the library resolved */
    }
    return 0;
fail:
    Py_XDECREF(empty);
    Py_XDECREF(fast);
    return -1;
}

static void groups_dealloc(GroupsObject *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    groups_destroy_now(self); /* its caches' Cache objects hold it: none is left */
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *groups_close(GroupsObject *self, PyObject *unused) {
    (void)unused;
    int busy = self->busy;
    for (int32_t i = 0; i < self->n; i++)
        if (self->wrap[i]) busy += self->wrap[i]->busy;
    if (busy) return raise_status(PKV_ERR_STATE, "close: another thread is inside a call on these groups");
    self->closed = 1;
    for (int32_t i = 0; i < self->n; i++)
        if (self->wrap[i]) self->wrap[i]->closed = 1;
    groups_views_gone(self); /* now, or when the last arena view of a group's cache goes */
    Py_RETURN_NONE;
}

static PyObject *groups_enter(GroupsObject *self, PyObject *unused) {
    (void)unused;
    if (!groups_open(self)) return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *groups_exit(GroupsObject *self, PyObject *args) {
    (void)args;
    PyObject *r = groups_close(self, NULL);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

/* ---- a group's cache ------------------------------------------------------ */

/* The group index i of an argument; -1 with an exception set. */
static int32_t group_index(GroupsObject *go, PyObject *arg) {
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) return -1;
    if (i < 0 || i >= go->n) {
        raise_arg(PKV_ERR_INVALID, "i: group %ld outside [0, %d)", i, (int)go->n);
        return -1;
    }
    return (int32_t)i;
}

/* Group i's Cache object (a new reference): the live one, else a new one. */
static CacheObject *group_cache(GroupsObject *go, int32_t i) {
    if (go->wrap[i]) {
        Py_INCREF(go->wrap[i]);
        return go->wrap[i];
    }
    pkv_cache *c = NULL;
    int st = pkv_groups_cache(go->g, i, &c);
    if (st != PKV_OK) return (CacheObject *)groups_raise(go, st);
    CacheObject *co = (CacheObject *)cache_class->tp_alloc(cache_class, 0); /* zeroed */
    if (!co) return NULL;
    co->c = c;
    co->cfg = go->cfg[i];
    co->ts = go->ts;
    co->lock = go->lock;
    co->closed = 0;
    Py_INCREF(go);
    co->owner = (PyObject *)go;
    co->group = i;
    go->wrap[i] = co;
    return co;
}

static PyObject *groups_cache(GroupsObject *self, PyObject *arg) {
    if (!groups_open(self)) return NULL;
    int32_t i = group_index(self, arg);
    if (i < 0) return NULL;
    return (PyObject *)group_cache(self, i);
}

/* ---- group sequences ------------------------------------------------------ */

static PyObject *gseq_new(GroupsObject *go, pkv_seq h, uint64_t ns) {
    GroupSeqObject *s = PyObject_New(GroupSeqObject, &GroupSeqType);
    if (!s) {
        /* nobody could free it later */
        int st;
        CALL(go, st, pkv_groups_free(go->g, h));
        (void)st;
        return NULL;
    }
    Py_INCREF(go);
    s->groups = go;
    s->h = h;
    s->ns = ns;
    s->freed = 0;
    return (PyObject *)s;
}

static PyObject *groups_sequence(GroupsObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"ns", NULL};
    unsigned long long ns = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|K", kwlist, &ns)) return NULL;
    if (!groups_open(self)) return NULL;
    pkv_seq h;
    int st;
    CALL(self, st, pkv_groups_seq_create(self->g, (uint64_t)ns, &h));
    if (st != PKV_OK) return groups_raise(self, st);
    return gseq_new(self, h, (uint64_t)ns);
}

/* lookup(tokens, namespace=0) -> (GroupSequence, cached_tokens). */
static PyObject *groups_lookup(GroupsObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tokens", "namespace", NULL};
    PyObject *tok;
    unsigned long long ns = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|K", kwlist, &tok, &ns)) return NULL;
    if (!groups_open(self)) return NULL;
    PyArrayObject *t = as_tokens(tok, "tokens");
    if (!t) return NULL;
    if (PyArray_DIM(t, 0) > INT32_MAX) {
        Py_DECREF(t);
        return raise_arg(PKV_ERR_INVALID, "tokens: too many");
    }
    const int32_t n = (int32_t)PyArray_DIM(t, 0);
    int32_t cached = 0;
    pkv_seq h;
    int st;
    CALL_IF(self, st, pkv_groups_lookup(self->g, (uint64_t)ns, PyArray_DATA(t), n, &h, &cached), n >= LONG_ITEMS);
    Py_DECREF(t);
    if (st != PKV_OK) return groups_raise(self, st);
    PyObject *s = gseq_new(self, h, (uint64_t)ns);
    if (!s) return NULL;
    return Py_BuildValue("(Ni)", s, cached);
}

static PyObject *groups_get_closed(GroupsObject *self, void *unused) {
    (void)unused;
    return PyBool_FromLong(self->closed);
}

static PyObject *groups_get_num_groups(GroupsObject *self, void *unused) {
    (void)unused;
    return PyLong_FromLong(self->n);
}

static PyObject *groups_get_configs(GroupsObject *self, void *unused) {
    (void)unused;
    PyObject *l = PyList_New(self->n);
    if (!l) return NULL;
    for (int32_t i = 0; i < self->n; i++) {
        PyObject *d = config_dict(&self->cfg[i]);
        if (!d) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, d);
    }
    return l;
}

static PyObject *groups_get_last_error(GroupsObject *self, void *unused) {
    (void)unused;
    return PyUnicode_FromString(self->g ? pkv_groups_last_error(self->g) : "");
}

static PyMethodDef groups_methods[] = {
    {"close", (PyCFunction)groups_close, METH_NOARGS,
     "Destroys the groups and their caches (deferred while an arena view of a group's cache lives); the group's "
     "Cache objects and the sequences raise StateError from then on."},
    {"__enter__", (PyCFunction)groups_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)groups_exit, METH_VARARGS, NULL},
    {"cache", (PyCFunction)groups_cache, METH_O,
     "cache(i) -> group i's Cache, owned by the groups (its close() does nothing): exports, blocks, stats, "
     "write / read at the slots an append returned, arenas, with the member sequences (GroupSequence.member(i))."},
    {"sequence", (PyCFunction)(void (*)(void))groups_sequence, METH_VARARGS | METH_KEYWORDS,
     "sequence(ns=0) -> a new empty GroupSequence in namespace ns (one member sequence in every group)."},
    {"lookup", (PyCFunction)(void (*)(void))groups_lookup, METH_VARARGS | METH_KEYWORDS,
     "lookup(tokens, namespace=0) -> (GroupSequence, cached_tokens): a prefix lookup in every group with "
     "prefix_cache=True; cached_tokens is the shortest of the groups' hits (0 when a group has no prefix cache, "
     "as window groups have not), every member cut to it."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef groups_getset[] = {
    {"closed", (getter)groups_get_closed, NULL, "True once close() was called.", NULL},
    {"num_groups", (getter)groups_get_num_groups, NULL, "The number of groups.", NULL},
    {"configs", (getter)groups_get_configs, NULL, "Each group's configuration as a dict (Cache.config's form).",
     NULL},
    {"last_error", (getter)groups_get_last_error, NULL,
     "Detail of the last failed groups call (\"group i: ...\" when a group's cache refused).", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject GroupsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pagedkv._pagedkv.Groups",
    .tp_basicsize = sizeof(GroupsObject),
    .tp_dealloc = (destructor)groups_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "KV groups: one cache per group of layers (see pagedkv.Groups).",
    .tp_methods = groups_methods,
    .tp_getset = groups_getset,
    .tp_init = (initproc)groups_init,
    .tp_new = PyType_GenericNew,
    .tp_weaklistoffset = offsetof(GroupsObject, weakrefs),
};

/* ---- the GroupSequence type ----------------------------------------------- */

static void gseq_dealloc(GroupSeqObject *self) {
    GroupsObject *go = self->groups;
    if (go && go->g && !go->closed && !self->freed) {
        /* a group sequence nobody can name any more gives its blocks back, in every group */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        int st;
        CALL(go, st, pkv_groups_free(go->g, self->h));
        (void)st;
        PyErr_Restore(et, ev, tb);
    }
    Py_XDECREF(go);
    PyObject_Free(self);
}

static int gseq_ready(GroupSeqObject *s) { return groups_open(s->groups); }

/* append(n or tokens): host storage in every group -> [slots per group];
 * otherwise ([slots per group], [cow per group]) with cow None or (src, dst). */
static PyObject *gseq_append(GroupSeqObject *self, PyObject *arg) {
    if (!gseq_ready(self)) return NULL;
    GroupsObject *go = self->groups;
    PyArrayObject *t = NULL;
    long n;
    if (PyLong_Check(arg)) {
        int32_t k;
        if (count_arg(arg, "n", "in [0, 2^31)", &k) < 0) return NULL;
        n = k;
    } else {
        t = as_tokens(arg, "tokens");
        if (!t) return NULL;
        if (PyArray_DIM(t, 0) > INT32_MAX) {
            Py_DECREF(t);
            return raise_arg(PKV_ERR_INVALID, "tokens: too many");
        }
        n = (long)PyArray_DIM(t, 0);
    }
    PyObject *slots = PyList_New(go->n);
    if (!slots) {
        Py_XDECREF(t);
        return NULL;
    }
    int64_t *sp[PKVPY_MAX_GROUPS];
    pkv_block_copy cow[PKVPY_MAX_GROUPS];
    int all_host = 1;
    npy_intp d = n;
    for (int32_t i = 0; i < go->n; i++) {
        PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(1, &d, NPY_INT64);
        if (!a) {
            Py_XDECREF(t);
            Py_DECREF(slots);
            return NULL;
        }
        PyList_SET_ITEM(slots, i, (PyObject *)a);
        sp[i] = PyArray_DATA(a);
        cow[i].src = cow[i].dst = -1;
        all_host &= go->cfg[i].storage == PKV_STORAGE_HOST;
    }
    int st;
    CALL_IF(go, st, pkv_groups_append(go->g, self->h, (int32_t)n, t ? PyArray_DATA(t) : NULL, sp, cow),
            n >= LONG_ITEMS);
    Py_XDECREF(t);
    if (st != PKV_OK) {
        Py_DECREF(slots);
        return groups_raise(go, st);
    }
    if (all_host) return slots;
    PyObject *cows = PyList_New(go->n);
    if (!cows) {
        Py_DECREF(slots);
        return NULL;
    }
    for (int32_t i = 0; i < go->n; i++) {
        PyObject *c = (go->cfg[i].storage == PKV_STORAGE_HOST || cow[i].src < 0)
                          ? (Py_INCREF(Py_None), Py_None)
                          : Py_BuildValue("(ii)", cow[i].src, cow[i].dst);
        if (!c) {
            Py_DECREF(slots);
            Py_DECREF(cows);
            return NULL;
        }
        PyList_SET_ITEM(cows, i, c);
    }
    return Py_BuildValue("(NN)", slots, cows);
}

static PyObject *gseq_fork(GroupSeqObject *self, PyObject *unused) {
    (void)unused;
    if (!gseq_ready(self)) return NULL;
    pkv_seq child;
    int st;
    CALL(self->groups, st, pkv_groups_fork(self->groups->g, self->h, &child));
    if (st != PKV_OK) return groups_raise(self->groups, st);
    return gseq_new(self->groups, child, self->ns);
}

static PyObject *gseq_truncate(GroupSeqObject *self, PyObject *arg) {
    if (!gseq_ready(self)) return NULL;
    int32_t n;
    if (count_arg(arg, "new_len", "in [0, len(seq)]", &n) < 0) return NULL;
    int st;
    CALL(self->groups, st, pkv_groups_truncate(self->groups->g, self->h, n));
    if (st != PKV_OK) return groups_raise(self->groups, st);
    Py_RETURN_NONE;
}

static PyObject *gseq_free(GroupSeqObject *self, PyObject *unused) {
    (void)unused;
    if (!gseq_ready(self)) return NULL;
    int st;
    CALL(self->groups, st, pkv_groups_free(self->groups->g, self->h));
    if (st != PKV_OK) return groups_raise(self->groups, st);
    self->freed = 1;
    Py_RETURN_NONE;
}

static PyObject *gseq_blocks_needed(GroupSeqObject *self, PyObject *arg) {
    if (!gseq_ready(self)) return NULL;
    int32_t n;
    if (count_arg(arg, "n", ">= 0", &n) < 0) return NULL;
    GroupsObject *go = self->groups;
    int32_t k[PKVPY_MAX_GROUPS];
    int st;
    CALL(go, st, pkv_groups_blocks_needed(go->g, self->h, n, k));
    if (st != PKV_OK) return groups_raise(go, st);
    PyObject *l = PyList_New(go->n);
    if (!l) return NULL;
    for (int32_t i = 0; i < go->n; i++) {
        PyObject *v = PyLong_FromLong(k[i]);
        if (!v) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

/* member(i) -> the member Sequence of group i (on groups.cache(i)). */
static PyObject *gseq_member(GroupSeqObject *self, PyObject *arg) {
    if (!gseq_ready(self)) return NULL;
    GroupsObject *go = self->groups;
    int32_t i = group_index(go, arg);
    if (i < 0) return NULL;
    pkv_seq m;
    int st;
    CALL(go, st, pkv_groups_seq_handle(go->g, self->h, i, &m));
    if (st != PKV_OK) return groups_raise(go, st);
    CacheObject *co = group_cache(go, i);
    if (!co) return NULL;
    SeqObject *s = (SeqObject *)seq_new(co, m, self->ns);
    Py_DECREF(co);
    if (!s) return NULL;
    Py_INCREF(self);
    s->group_seq = (PyObject *)self;
    return (PyObject *)s;
}

static Py_ssize_t gseq_len(GroupSeqObject *self) {
    if (!gseq_ready(self)) return -1;
    int32_t n = 0;
    int st;
    CALL(self->groups, st, pkv_groups_length(self->groups->g, self->h, &n));
    if (st != PKV_OK) {
        groups_raise(self->groups, st);
        return -1;
    }
    return n;
}

static PyObject *gseq_get_handle(GroupSeqObject *self, void *unused) {
    (void)unused;
    return PyLong_FromLongLong(self->h);
}
static PyObject *gseq_get_ns(GroupSeqObject *self, void *unused) {
    (void)unused;
    return PyLong_FromUnsignedLongLong(self->ns);
}
static PyObject *gseq_get_groups(GroupSeqObject *self, void *unused) {
    (void)unused;
    Py_INCREF(self->groups);
    return (PyObject *)self->groups;
}
static PyObject *gseq_get_freed(GroupSeqObject *self, void *unused) {
    (void)unused;
    return PyBool_FromLong(self->freed);
}

static PyObject *gseq_repr(GroupSeqObject *self) {
    GroupsObject *go = self->groups;
    if (self->freed || go->closed || !go->g)
        return PyUnicode_FromFormat("<pagedkv.GroupSequence %lld (freed)>", (long long)self->h);
    int32_t n = -1;
    int st;
    CALL(go, st, pkv_groups_length(go->g, self->h, &n));
    (void)st;
    return PyUnicode_FromFormat("<pagedkv.GroupSequence %lld len=%d ns=%llu groups=%d>", (long long)self->h, n,
                                (unsigned long long)self->ns, (int)go->n);
}

static PyMethodDef gseq_methods[] = {
    {"append", (PyCFunction)gseq_append, METH_O,
     "append(n or tokens) -> in every group or in none (CapacityError when a group's pool is short, no group "
     "changed): a list of slots (int64 [n], one array per group) when every group has host storage, else (slots, "
     "cows) with cows[i] None or the (src, dst) block copy the engine performs first in group i."},
    {"fork", (PyCFunction)gseq_fork, METH_NOARGS,
     "fork() -> a child GroupSequence sharing every block in every group."},
    {"truncate", (PyCFunction)gseq_truncate, METH_O,
     "truncate(new_len): in every group or in none (a window group refuses a length whose window needs blocks it "
     "released: StateError)."},
    {"free", (PyCFunction)gseq_free, METH_NOARGS, "free(): frees the member in every group; the handle becomes stale."},
    {"blocks_needed", (PyCFunction)gseq_blocks_needed, METH_O,
     "blocks_needed(n) -> [blocks an append of n takes in group i, for each group]."},
    {"member", (PyCFunction)gseq_member, METH_O,
     "member(i) -> the member Sequence in group i (of groups.cache(i)): blocks, exports, slot_mapping, register; "
     "calls that would change it alone (append, truncate, fork, free, swap) raise StateError."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef gseq_getset[] = {
    {"handle", (getter)gseq_get_handle, NULL, "The library's group-sequence handle.", NULL},
    {"namespace", (getter)gseq_get_ns, NULL, "The prefix-cache namespace.", NULL},
    {"groups", (getter)gseq_get_groups, NULL, "The owning Groups.", NULL},
    {"freed", (getter)gseq_get_freed, NULL, "True after free().", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PySequenceMethods gseq_as_sequence = {.sq_length = (lenfunc)gseq_len};

PyTypeObject GroupSeqType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pagedkv.GroupSequence",
    .tp_basicsize = sizeof(GroupSeqObject),
    .tp_dealloc = (destructor)gseq_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A sequence held in every group of a Groups object, kept in step: made by Groups.sequence(), "
              "Groups.lookup() or GroupSequence.fork(); freed by free() or when the object (and its members) go.",
    .tp_methods = gseq_methods,
    .tp_getset = gseq_getset,
    .tp_as_sequence = &gseq_as_sequence,
    .tp_repr = (reprfunc)gseq_repr,
};
