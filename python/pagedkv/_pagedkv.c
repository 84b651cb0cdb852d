/* The CPython extension behind the pagedkv package, over the public C API
 * (include/pagedkv.h) of the statically linked library. This file: errors,
 * argument helpers shared by the others, module functions and init; the file
 * map is in _pagedkv.h.
 *
 * Why C and not ctypes: one decode step for 256 sequences is 256 appends plus an
 * export; ctypes costs about half a microsecond per call, this tens of nanoseconds
 * (bench/README.md, "Python bookkeeping").
 *
 * Threads: see CALL_IF in _pagedkv.h. Attention always runs without the GIL. */
#define PKVPY_MAIN
#include "_pagedkv.h"

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
PyObject *raise_status(int st, const char *detail) {
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
PyObject *raise_arg(int st, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    PyOS_vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return raise_status(st, buf);
}

int count_arg(PyObject *arg, const char *name, const char *range, int32_t *out) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return -1;
    if (n < 0 || n > INT32_MAX) {
        raise_arg(PKV_ERR_INVALID, "%s: must be %s, got %ld", name, range, n);
        return -1;
    }
    *out = (int32_t)n;
    return 0;
}

PyObject *cache_raise(CacheObject *co, int st) {
    return raise_status(st, co && co->c ? pkv_cache_last_error(co->c) : NULL);
}

int cache_open(CacheObject *co) {
    if (co->closed || !co->c || !co->lock) {
        raise_status(PKV_ERR_STATE, co->owner ? "the cache's Groups object is closed" : "the cache is closed");
        return 0;
    }
    return 1;
}

PyObject *seq_new(CacheObject *co, pkv_seq h, uint64_t ns) {
    SeqObject *s = PyObject_New(SeqObject, &SeqType);
    if (!s) return NULL;
    Py_INCREF(co);
    s->cache = co;
    s->h = h;
    s->ns = ns;
    s->freed = 0;
    s->group_seq = NULL;
    return (PyObject *)s;
}

/* Resolves a list/tuple of Sequence objects into handles. buf has room for
 * `cap`; larger batches get *heap (freed by the caller). */
pkv_seq *seq_handles(CacheObject *co, PyObject *seqs, pkv_seq *buf, Py_ssize_t cap, Py_ssize_t *n,
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
PyArrayObject *as_tokens(PyObject *obj, const char *name) {
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

/* Checks that a C-contiguous ndarray holds at least `bytes` bytes. */
int buf_ok(PyObject *o, const char *name, size_t bytes, int writable) {
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

static PyMethodDef mod_methods[] = {
    {"_set_errors", mod_set_errors, METH_O, NULL},
    {"_set_cache_class", mod_set_cache_class, METH_O, NULL},
    {"_attn", mod_attn, METH_VARARGS, NULL},
    {"_from_dlpack", mod_from_dlpack, METH_O, NULL},
    {"_mla656", mod_mla656, METH_VARARGS, NULL},
    {"strerror", mod_strerror, METH_O, "strerror(status) -> the library's text for a status code."},
    {"siphash128", mod_siphash128, METH_VARARGS, "siphash128(key16, data) -> 16 bytes (SipHash-2-4-128)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_pagedkv", "pagedkv's C extension.", -1, mod_methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__pagedkv(void) {
    import_array();
    if (PyType_Ready(&CacheType) < 0 || PyType_Ready(&SeqType) < 0 || PyType_Ready(&ArenaRefType) < 0 ||
        PyType_Ready(&GroupsType) < 0 || PyType_Ready(&GroupSeqType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&CacheType);
    Py_INCREF(&SeqType);
    Py_INCREF(&GroupsType);
    Py_INCREF(&GroupSeqType);
    if (PyModule_AddObject(m, "Cache", (PyObject *)&CacheType) < 0 ||
        PyModule_AddObject(m, "Sequence", (PyObject *)&SeqType) < 0 ||
        PyModule_AddObject(m, "Groups", (PyObject *)&GroupsType) < 0 ||
        PyModule_AddObject(m, "GroupSequence", (PyObject *)&GroupSeqType) < 0 ||
        PyModule_AddStringConstant(m, "library_version", pkv_version()) < 0 ||
        PyModule_AddIntConstant(m, "library_version_number", (long)pkv_version_number()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
