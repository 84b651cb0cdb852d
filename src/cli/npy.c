/* .npy reader and writer (format description: numpy.lib.format). The header is
 * a Python dict literal; we accept the subset NumPy itself writes, parsed with a
 * bounded cursor, and refuse everything else with a reason. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "npy.h"

#define RETURN_IF(cond, status) \
    do { if (cond) return (status); } while (0)
#define FORWARD_IF_ERROR(expr) \
    do { int st_ = (expr); if (st_ < 0) return st_; } while (0)

static const struct {
    const char *descr;
    int dtype;
    size_t size;
} npy_types[] = {
    {"<f4", NPY_F4, 4}, {"<f2", NPY_F2, 2}, {"<u2", NPY_U2, 2}, {"<i4", NPY_I4, 4},
    {"<f8", NPY_F8, 8}, {"<i8", NPY_I8, 8}, {"|u1", NPY_U1, 1}, {"<u1", NPY_U1, 1},
};
#define NPY_NDESCR (sizeof npy_types / sizeof npy_types[0])

size_t npy_dtype_size(int dtype) {
    for (size_t i = 0; i < NPY_NDESCR; i++)
        if (npy_types[i].dtype == dtype) return npy_types[i].size;
    return 0;
}

static int fail(char *err, size_t errlen, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int status, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* ---- header dict parser ---- */

typedef struct cursor {
    const char *p, *end;
} cursor;

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static void skip_ws(cursor *c) { while (c->p < c->end && is_ws(*c->p)) c->p++; }
static int peek(const cursor *c) { return c->p < c->end ? (unsigned char)*c->p : -1; }
static int accept(cursor *c, char ch) {
    if (peek(c) != (unsigned char)ch) return 0;
    c->p++;
    return 1;
}

/* A quoted string without escapes into out[0..cap); 0 if malformed or too long. */
static int parse_string(cursor *c, char *out, size_t cap) {
    int q = peek(c);
    if (q != '\'' && q != '"') return 0;
    c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != (char)q) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '\\' || ch < 0x20 || ch > 0x7e || n + 1 >= cap) return 0;
        out[n++] = (char)ch;
        c->p++;
    }
    if (!accept(c, (char)q)) return 0;
    out[n] = '\0';
    return 1;
}

/* A bare word (True, False, ...) into out[0..cap). */
static int parse_word(cursor *c, char *out, size_t cap) {
    size_t n = 0;
    while (c->p < c->end && ((*c->p >= 'A' && *c->p <= 'Z') || (*c->p >= 'a' && *c->p <= 'z'))) {
        if (n + 1 >= cap) return 0;
        out[n++] = *c->p++;
    }
    out[n] = '\0';
    return n > 0;
}

/* A non-negative decimal integer as Python 3 writes it: no sign, no leading
 * zeros, no underscores or suffixes; at most INT64_MAX. */
static int parse_dim(cursor *c, int64_t *out) {
    int first = peek(c);
    if (first < '0' || first > '9') return 0;
    int64_t v = 0;
    int digits = 0;
    while (peek(c) >= '0' && peek(c) <= '9') {
        int dgt = *c->p++ - '0';
        if (v > (INT64_MAX - dgt) / 10) return 0;
        v = v * 10 + dgt;
        digits++;
    }
    if (first == '0' && digits > 1) return 0;
    *out = v;
    return 1;
}

/* '(' ')' | '(' dim ',' ')' | '(' dim (',' dim)+ [','] ')' — a tuple, so one
 * dim needs its comma ("(3)" is an int in Python). */
static int parse_shape(cursor *c, npy_array *a, char *err, size_t errlen) {
    if (!accept(c, '(')) return fail(err, errlen, PKV_ERR_FORMAT, "npy: shape is not a tuple");
    skip_ws(c);
    a->ndim = 0;
    if (accept(c, ')')) return PKV_OK;
    for (;;) {
        if (a->ndim == NPY_MAX_DIMS)
            return fail(err, errlen, PKV_ERR_FORMAT, "npy: more than %d dims", NPY_MAX_DIMS);
        if (!parse_dim(c, &a->shape[a->ndim]))
            return fail(err, errlen, PKV_ERR_FORMAT, "npy: bad dim %d in shape", a->ndim);
        a->ndim++;
        skip_ws(c);
        if (accept(c, ',')) {
            skip_ws(c);
            if (accept(c, ')')) return PKV_OK;
            continue;
        }
        if (a->ndim > 1 && accept(c, ')')) return PKV_OK;
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: malformed shape tuple");
    }
}

enum { KEY_DESCR = 1, KEY_FORTRAN = 2, KEY_SHAPE = 4 };

static int parse_value(cursor *c, int key, npy_array *a, char *err, size_t errlen) {
    char buf[32];
    if (key == KEY_DESCR) {
        if (!parse_string(c, buf, sizeof buf))
            return fail(err, errlen, PKV_ERR_FORMAT, "npy: descr is not a plain string");
        for (size_t i = 0; i < NPY_NDESCR; i++) {
            if (strcmp(buf, npy_types[i].descr) == 0) {
                a->dtype = npy_types[i].dtype;
                a->elem_size = npy_types[i].size;
                return PKV_OK;
            }
        }
        if (buf[0] == '>')
            return fail(err, errlen, PKV_ERR_FORMAT, "npy: big-endian descr '%s' refused", buf);
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: unsupported descr '%s'", buf);
    }
    if (key == KEY_FORTRAN) {
        if (!parse_word(c, buf, sizeof buf) || (strcmp(buf, "False") && strcmp(buf, "True")))
            return fail(err, errlen, PKV_ERR_FORMAT, "npy: fortran_order is not True/False");
        if (strcmp(buf, "True") == 0)
            return fail(err, errlen, PKV_ERR_FORMAT, "npy: fortran_order True refused");
        return PKV_OK;
    }
    return parse_shape(c, a, err, errlen);
}

static int parse_dict(const char *h, size_t n, npy_array *a, char *err, size_t errlen) {
    if (n == 0 || h[n - 1] != '\n')
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: header does not end with a newline");
    cursor c = {h, h + n};
    if (!accept(&c, '{')) return fail(err, errlen, PKV_ERR_FORMAT, "npy: header is not a dict");
    int seen = 0;
    for (;;) {
        skip_ws(&c);
        if (accept(&c, '}')) break; /* empty dict, or after a trailing comma */
        char key[32];
        if (!parse_string(&c, key, sizeof key))
            return fail(err, errlen, PKV_ERR_FORMAT, "npy: header key is not a string");
        int k = !strcmp(key, "descr") ? KEY_DESCR
              : !strcmp(key, "fortran_order") ? KEY_FORTRAN
              : !strcmp(key, "shape") ? KEY_SHAPE : 0;
        if (k == 0) return fail(err, errlen, PKV_ERR_FORMAT, "npy: unknown header key '%s'", key);
        if (seen & k) return fail(err, errlen, PKV_ERR_FORMAT, "npy: duplicate key '%s'", key);
        seen |= k;
        skip_ws(&c);
        if (!accept(&c, ':')) return fail(err, errlen, PKV_ERR_FORMAT, "npy: missing ':'");
        skip_ws(&c);
        FORWARD_IF_ERROR(parse_value(&c, k, a, err, errlen));
        skip_ws(&c);
        if (accept(&c, ',')) continue;
        if (accept(&c, '}')) break;
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: expected ',' or '}' in header");
    }
    skip_ws(&c);
    if (c.p != c.end) return fail(err, errlen, PKV_ERR_FORMAT, "npy: junk after the header dict");
    if (seen != (KEY_DESCR | KEY_FORTRAN | KEY_SHAPE))
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: header lacks descr, fortran_order or shape");
    return PKV_OK;
}

/* ---- whole file ---- */

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

int npy_parse(const void *buf, size_t len, npy_array *out, char *err, size_t errlen) {
    RETURN_IF(out == NULL, PKV_ERR_NULL);
    memset(out, 0, sizeof *out);
    RETURN_IF(buf == NULL, PKV_ERR_NULL);
    const unsigned char *b = buf;
    if (len < 10 || memcmp(b, npy_magic, 6) != 0)
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: bad magic");
    if (b[6] < 1 || b[6] > 3 || b[7] != 0)
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: unsupported version %u.%u", b[6], b[7]);
    size_t pre, hlen;
    if (b[6] == 1) {
        pre = 10;
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
    } else {
        if (len < 12) return fail(err, errlen, PKV_ERR_FORMAT, "npy: truncated preamble");
        pre = 12;
        hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    }
    if (hlen > len - pre)
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: header length %zu past the end", hlen);

    npy_array a;
    memset(&a, 0, sizeof a);
    a.dtype = -1;
    int st = parse_dict((const char *)b + pre, hlen, &a, err, errlen);
    if (st < 0) return st;

    size_t count = 1;
    for (int i = 0; i < a.ndim; i++) {
        uint64_t d = (uint64_t)a.shape[i];
        if (d != 0 && count > (size_t)PTRDIFF_MAX / d)
            return fail(err, errlen, PKV_ERR_FORMAT, "npy: shape size overflows");
        count *= (size_t)d;
    }
    if (count > (size_t)PTRDIFF_MAX / a.elem_size)
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: shape size overflows");
    a.count = count;
    a.nbytes = count * a.elem_size;
    if (len - pre - hlen != a.nbytes)
        return fail(err, errlen, PKV_ERR_FORMAT, "npy: data is %zu bytes, shape needs %zu",
                    len - pre - hlen, a.nbytes);
    a.data = b + pre + hlen;
    *out = a;
    return PKV_OK;
}

int npy_load(const char *path, npy_array *out, char *err, size_t errlen) {
    RETURN_IF(out == NULL, PKV_ERR_NULL);
    memset(out, 0, sizeof *out);
    RETURN_IF(path == NULL, PKV_ERR_NULL);
    struct stat sb;
    /* refuse FIFOs and devices before opening: fopen on a FIFO would block */
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return fail(err, errlen, PKV_ERR_IO, "npy: %s is not a readable regular file", path);
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, errlen, PKV_ERR_IO, "npy: cannot open %s: %s", path, strerror(errno));
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < 0 ||
        (uint64_t)sb.st_size > (uint64_t)PTRDIFF_MAX) {
        fclose(f);
        return fail(err, errlen, PKV_ERR_IO, "npy: %s is not a readable regular file", path);
    }
    const size_t len = (size_t)sb.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        return fail(err, errlen, PKV_ERR_NOMEM, "npy: no memory for %zu bytes", len);
    }
    const size_t got = fread(buf, 1, len, f);
    const int extra = got == len && fgetc(f) != EOF; /* the file grew under us */
    fclose(f);
    if (got != len || extra) {
        free(buf);
        return fail(err, errlen, PKV_ERR_IO, "npy: short read of %s", path);
    }
    npy_array a;
    int st = npy_parse(buf, len, &a, err, errlen);
    if (st < 0) {
        free(buf);
        return st;
    }
    /* The header length decides the data's alignment; callers cast to typed
     * pointers, so give them malloc's alignment when the file does not. */
    const size_t off = (size_t)((const unsigned char *)a.data - buf);
    if (off % 8 != 0) {
        memmove(buf, buf + off, a.nbytes);
        a.data = buf;
    }
    a.owned = buf;
    *out = a;
    return PKV_OK;
}

void npy_free(npy_array *a) {
    if (!a) return;
    free(a->owned);
    memset(a, 0, sizeof *a);
}

/* ---- writer ---- */

static const char *descr_of(int dtype) {
    for (size_t i = 0; i < NPY_NDESCR; i++)
        if (npy_types[i].dtype == dtype) return npy_types[i].descr;
    return NULL;
}

size_t npy_format_header(char *buf, size_t cap, int dtype, int ndim, const int64_t *shape) {
    const char *descr = descr_of(dtype);
    if (!buf || !descr || ndim < 0 || ndim > NPY_MAX_DIMS || (ndim > 0 && !shape)) return 0;
    char dict[NPY_HEADER_MAX];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     descr);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return 0;
        n += snprintf(dict + n, sizeof dict - (size_t)n, i ? ", %lld" : "%lld",
                      (long long)shape[i]);
    }
    n += snprintf(dict + n, sizeof dict - (size_t)n, ndim == 1 ? ",), }" : "), }");
    /* dict + padding + '\n' after the 10-byte preamble ends on a 64-byte boundary */
    const size_t total = ((size_t)10 + (size_t)n + 1 + 63) / 64 * 64;
    if (total > cap || total - 10 > 0xffff) return 0;
    memcpy(buf, npy_magic, 6);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (char)((total - 10) & 0xff);
    buf[9] = (char)((total - 10) >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', total - 10 - (size_t)n - 1);
    buf[total - 1] = '\n';
    return total;
}

int npy_save(const char *path, int dtype, int ndim, const int64_t *shape, const void *data,
             char *err, size_t errlen) {
    RETURN_IF(path == NULL || (ndim > 0 && shape == NULL), PKV_ERR_NULL);
    const size_t es = npy_dtype_size(dtype);
    if (!es || ndim < 0 || ndim > NPY_MAX_DIMS)
        return fail(err, errlen, PKV_ERR_INVALID, "npy: bad dtype %d or ndim %d", dtype, ndim);
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return fail(err, errlen, PKV_ERR_INVALID, "npy: negative dim");
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && count > (size_t)PTRDIFF_MAX / es / d)
            return fail(err, errlen, PKV_ERR_INVALID, "npy: shape size overflows");
        count *= (size_t)d;
    }
    const size_t nbytes = count * es;
    RETURN_IF(nbytes > 0 && data == NULL, PKV_ERR_NULL);
    char hdr[NPY_HEADER_MAX];
    const size_t hl = npy_format_header(hdr, sizeof hdr, dtype, ndim, shape);
    if (hl == 0) return fail(err, errlen, PKV_ERR_INVALID, "npy: cannot format the header");
    FILE *f = fopen(path, "wb");
    if (!f) return fail(err, errlen, PKV_ERR_IO, "npy: cannot create %s: %s", path, strerror(errno));
    int ok = fwrite(hdr, 1, hl, f) == hl && (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
    ok = (fclose(f) == 0) && ok;
    if (!ok) return fail(err, errlen, PKV_ERR_IO, "npy: write to %s failed", path);
    return PKV_OK;
}
