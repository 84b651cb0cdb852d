/* DLPack import: a zero-copy numpy view of any producer's CPU tensor
 * (torch.Tensor.__dlpack__), bfloat16 included. */
#include "_pagedkv.h"


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
PyObject *mod_from_dlpack(PyObject *mod, PyObject *obj) {
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
