/* Fuzz target: the .npy reader (src/npy.c). Whatever the bytes, npy_parse
 * either refuses them with PKV_ERR_FORMAT and a reason, or describes an array
 * whose data lies inside the buffer and whose sizes agree; every data byte is
 * then read (ASan) and the array re-encoded with npy_format_header must parse
 * back to the same dtype, shape and bytes. */
#include "fuzz.h"
#include "npy.h"

int fuzz_npy(const uint8_t *data, size_t size);

int fuzz_npy(const uint8_t *data, size_t size) {
    /* A copy of exactly size bytes, so ASan sees any read past the end. */
    uint8_t *buf = malloc(size ? size : 1);
    FUZZ_CHECK(buf != NULL, "out of memory");
    if (size) memcpy(buf, data, size);
    npy_array a;
    char err[128] = "";
    int st = npy_parse(buf, size, &a, err, sizeof err);
    if (st != PKV_OK) {
        FUZZ_CHECK(st == PKV_ERR_FORMAT, "status %d (%s)", st, pkv_strerror(st));
        FUZZ_CHECK(err[0] != 0, "refused without a reason");
        FUZZ_CHECK(a.data == NULL && a.ndim == 0 && a.count == 0, "*out not zeroed on error");
        free(buf);
        return 0;
    }
    FUZZ_CHECK(a.owned == NULL, "npy_parse owns memory");
    FUZZ_CHECK(a.ndim >= 0 && a.ndim <= NPY_MAX_DIMS, "ndim %d", a.ndim);
    FUZZ_CHECK(a.elem_size == npy_dtype_size(a.dtype) && a.elem_size > 0, "elem size %zu", a.elem_size);
    size_t count = 1;
    for (int i = 0; i < a.ndim; i++) {
        FUZZ_CHECK(a.shape[i] >= 0, "negative dim");
        count *= (size_t)a.shape[i];
    }
    FUZZ_CHECK(count == a.count && a.nbytes == a.count * a.elem_size, "sizes disagree");
    const uint8_t *p = a.data;
    FUZZ_CHECK(p >= buf && p <= buf + size && a.nbytes <= (size_t)(buf + size - p), "data outside the buffer");
    FUZZ_CHECK(p + a.nbytes == buf + size, "trailing bytes accepted");
    unsigned sum = 0;
    for (size_t i = 0; i < a.nbytes; i++) sum += p[i];
    (void)sum;
    /* round trip through the writer's header */
    char hdr[NPY_HEADER_MAX];
    size_t hl = npy_format_header(hdr, sizeof hdr, a.dtype, a.ndim, a.shape);
    FUZZ_CHECK(hl > 0, "the writer cannot describe an array the reader accepted");
    uint8_t *re = malloc(hl + a.nbytes);
    FUZZ_CHECK(re != NULL, "out of memory");
    memcpy(re, hdr, hl);
    if (a.nbytes) memcpy(re + hl, p, a.nbytes);
    npy_array b;
    st = npy_parse(re, hl + a.nbytes, &b, err, sizeof err);
    FUZZ_CHECK(st == PKV_OK, "re-encoded array refused: %s", err);
    FUZZ_CHECK(b.dtype == a.dtype && b.ndim == a.ndim && b.count == a.count, "round trip changed the array");
    for (int i = 0; i < a.ndim; i++) FUZZ_CHECK(b.shape[i] == a.shape[i], "round trip changed dim %d", i);
    FUZZ_CHECK(a.nbytes == 0 || memcmp(b.data, p, a.nbytes) == 0, "round trip changed the data");
    free(re);
    free(buf);
    return 0;
}

#ifdef PKV_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_npy(data, size); }
#endif
