/* A strict reader and a writer for NumPy .npy files (format versions 1.0, 2.0,
 * 3.0), for test vectors and the CLI. Only what pagedkv exchanges is accepted:
 * little-endian (or byte-order-free) f4 f2 u2 i4 f8 i8 u1, C order, at most 8
 * dims. The reader never reads outside the buffer it is given, whatever the bytes. */
#ifndef PKV_NPY_H
#define PKV_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "pagedkv.h"

#define NPY_MAX_DIMS 8

typedef enum npy_dtype {
    NPY_F4 = 0, /* '<f4' float32 */
    NPY_F2,     /* '<f2' float16 */
    NPY_U2,     /* '<u2' uint16 (also bfloat16 bits) */
    NPY_I4,     /* '<i4' int32 */
    NPY_F8,     /* '<f8' float64 */
    NPY_I8,     /* '<i8' int64 */
    NPY_U1,     /* '|u1' uint8 (also raw FP8 rows) */
    NPY_NTYPES
} npy_dtype;

typedef struct npy_array {
    int dtype;                     /* npy_dtype */
    size_t elem_size;              /* bytes per element */
    int ndim;                      /* 0..NPY_MAX_DIMS; 0 is a scalar (count 1) */
    int64_t shape[NPY_MAX_DIMS];
    size_t count;                  /* product of shape */
    size_t nbytes;                 /* count * elem_size */
    const void *data;              /* the elements (8-byte aligned after npy_load) */
    void *owned;                   /* memory npy_free releases (npy_load only) */
} npy_array;

/* Bytes of one element of dtype, 0 for an unknown dtype. */
size_t npy_dtype_size(int dtype);

/* Parses a whole .npy file held in buf[0..len). On success *out describes it and
 * out->data points into buf (alignment is the file's; out->owned is NULL).
 * @return PKV_OK; PKV_ERR_NULL; PKV_ERR_FORMAT (bad magic, version, header dict,
 * descr, fortran_order, shape, size overflow, or data length != the shape's) with
 * a one-line reason in err[0..errlen) (err may be NULL). *out is zeroed on error. */
int npy_parse(const void *buf, size_t len, npy_array *out, char *err, size_t errlen);

/* Reads and parses the file at path; the data is copied to malloc'ed, 8-byte
 * aligned memory that npy_free releases. Statuses as npy_parse, plus PKV_ERR_IO
 * (cannot open / not a regular file / short read) and PKV_ERR_NOMEM. */
int npy_load(const char *path, npy_array *out, char *err, size_t errlen);

/* Releases what npy_load allocated and zeroes *a. NULL is a no-op. */
void npy_free(npy_array *a);

/* Formats a version 1.0 header (magic .. '\n', padded with spaces so the data
 * starts at a multiple of 64) into buf[0..cap). Returns its length, or 0 if the
 * arguments are invalid or cap is too small (NPY_HEADER_MAX always suffices). */
#define NPY_HEADER_MAX 256
size_t npy_format_header(char *buf, size_t cap, int dtype, int ndim,
                                    const int64_t *shape);

/* Writes data (C order, count * elem_size bytes) as a version 1.0 .npy file.
 * @return PKV_OK; PKV_ERR_NULL (path, or data when the array is not empty, or
 * shape when ndim > 0); PKV_ERR_INVALID (dtype, ndim, a negative dim, size
 * overflow); PKV_ERR_IO. err as npy_parse. */
int npy_save(const char *path, int dtype, int ndim, const int64_t *shape,
                        const void *data, char *err, size_t errlen);

#endif
