/* The .npy reader and writer (src/npy.c):
 *  - files written by npy_save round-trip through npy_load and npy_parse for every
 *    dtype and for 0-d, empty, 1-d and 8-d shapes; headers are v1.0, 64-byte aligned;
 *  - header variants NumPy may write (key order, quotes, whitespace, v2.0/v3.0) parse;
 *  - a table of malformed headers is refused with PKV_ERR_FORMAT and a reason;
 *  - every truncation and a seeded byte-flip fuzz of a good file never read past an
 *    exact-size heap buffer (run under ASan) and give OK or PKV_ERR_FORMAT only;
 *  - data length must match exactly; misaligned data is realigned by npy_load;
 *  - I/O and argument errors. */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npy.h"
#include "test.h"

static char tmpdir[] = "/tmp/pkv_npy_XXXXXX";

/* A file image: preamble for version ver, the header text as given (not padded),
 * then nbytes of data (bytes 0, 1, 2, ...). */
static size_t build(unsigned char *buf, int ver, const char *hdr, size_t nbytes) {
    size_t hl = strlen(hdr), pre = ver == 1 ? 10 : 12;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)ver;
    buf[7] = 0;
    buf[8] = (unsigned char)(hl & 0xff);
    buf[9] = (unsigned char)(hl >> 8);
    if (ver != 1) { buf[10] = (unsigned char)(hl >> 16); buf[11] = 0; }
    memcpy(buf + pre, hdr, hl);
    for (size_t i = 0; i < nbytes; i++) buf[pre + hl + i] = (unsigned char)i;
    return pre + hl + nbytes;
}

/* Parses a heap copy of exactly len bytes, so ASan sees any read past the end. */
static int parse_exact(const unsigned char *img, size_t len, npy_array *a, char *err, size_t el) {
    unsigned char *copy = malloc(len ? len : 1);
    memcpy(copy, img, len);
    int st = npy_parse(copy, len, a, err, el);
    a->data = NULL; /* points into copy */
    free(copy);
    return st;
}

static void test_roundtrip(void) {
    const int64_t shapes[][9] = {
        /* ndim, dims... */
        {0}, {1, 0}, {1, 5}, {2, 3, 4}, {3, 2, 0, 7}, {4, 3, 1, 16, 5}, {8, 2, 1, 2, 1, 3, 1, 1, 2},
        {2, 1000000, 0},
    };
    char path[256], err[256];
    for (int dt = 0; dt < NPY_NTYPES; dt++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int ndim = (int)shapes[s][0];
            const int64_t *shape = shapes[s] + 1;
            size_t count = 1, es = npy_dtype_size(dt);
            for (int i = 0; i < ndim; i++) count *= (size_t)shape[i];
            unsigned char *data = malloc(count * es + 1);
            for (size_t i = 0; i < count * es; i++) data[i] = (unsigned char)(i * 7 + dt);
            snprintf(path, sizeof path, "%s/a_%d_%zu.npy", tmpdir, dt, s);
            CHECK_OK(npy_save(path, dt, ndim, shape, data, err, sizeof err));
            npy_array a;
            CHECK_OK(npy_load(path, &a, err, sizeof err));
            CHECK_INT(a.dtype, dt);
            CHECK_INT(a.ndim, ndim);
            for (int i = 0; i < ndim; i++) CHECK_INT(a.shape[i], shape[i]);
            CHECK_INT(a.count, count);
            CHECK_INT(a.nbytes, count * es);
            CHECK(count == 0 || memcmp(a.data, data, count * es) == 0);
            CHECK(((uintptr_t)a.data % 8) == 0);
            npy_free(&a);
            CHECK(a.data == NULL && a.owned == NULL);
            /* the file: v1.0, data on a 64-byte boundary, header ends in '\n' */
            FILE *f = fopen(path, "rb");
            unsigned char img[NPY_HEADER_MAX + 64];
            size_t got = fread(img, 1, sizeof img, f);
            fclose(f);
            CHECK(got >= 10 && img[6] == 1 && img[7] == 0);
            size_t hl = (size_t)img[8] | (size_t)img[9] << 8;
            CHECK((10 + hl) % 64 == 0);
            CHECK(10 + hl <= got && img[10 + hl - 1] == '\n');
            free(data);
        }
    }
    npy_array a;
    snprintf(path, sizeof path, "%s/nope.npy", tmpdir);
    CHECK_STATUS(npy_load(path, &a, err, sizeof err), PKV_ERR_IO);
    CHECK_STATUS(npy_load(tmpdir, &a, err, sizeof err), PKV_ERR_IO); /* a directory */
    snprintf(path, sizeof path, "%s/fifo", tmpdir);
    if (mkfifo(path, 0600) == 0) CHECK_STATUS(npy_load(path, &a, err, sizeof err), PKV_ERR_IO);
    CHECK_STATUS(npy_load(NULL, &a, err, sizeof err), PKV_ERR_NULL);
    int64_t sh[2] = {2, 2}, neg[2] = {2, -1};
    float four[4] = {0};
    snprintf(path, sizeof path, "%s/w.npy", tmpdir);
    CHECK_STATUS(npy_save(path, NPY_NTYPES, 2, sh, four, err, sizeof err), PKV_ERR_INVALID);
    CHECK_STATUS(npy_save(path, -1, 2, sh, four, err, sizeof err), PKV_ERR_INVALID);
    CHECK_STATUS(npy_save(path, NPY_F4, 9, sh, four, err, sizeof err), PKV_ERR_INVALID);
    CHECK_STATUS(npy_save(path, NPY_F4, 2, neg, four, err, sizeof err), PKV_ERR_INVALID);
    CHECK_STATUS(npy_save(path, NPY_F4, 2, sh, NULL, err, sizeof err), PKV_ERR_NULL);
    snprintf(path, sizeof path, "%s/no/such/dir.npy", tmpdir);
    CHECK_STATUS(npy_save(path, NPY_F4, 2, sh, four, err, sizeof err), PKV_ERR_IO);
    CHECK_INT(npy_format_header((char *)four, 8, NPY_F4, 2, sh), 0); /* cap too small */
}

/* Headers a NumPy-compatible writer may produce: all accepted. */
static void test_good_variants(void) {
    static const struct { int ver; const char *hdr; int dtype; int ndim; int64_t d0; size_t nbytes; } ok[] = {
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }     \n", NPY_F4, 2, 2, 24},
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}\n", NPY_F4, 2, 2, 24},
        {1, "{'shape': (3,), 'fortran_order': False, 'descr': '<i8'}\n", NPY_I8, 1, 3, 24},
        {1, "{\"descr\": \"<u2\", \"fortran_order\": False, \"shape\": (4,)}\n", NPY_U2, 1, 4, 8},
        {1, "{ 'descr' : '<f2' ,\n 'fortran_order' :False,'shape':( 5 , ) , }\n", NPY_F2, 1, 5, 10},
        {1, "{'descr': '|u1', 'fortran_order': False, 'shape': (), }\n", NPY_U1, 0, 0, 1},
        {1, "{'descr': '<u1', 'fortran_order': False, 'shape': (0, 9), }\n", NPY_U1, 2, 0, 0},
        {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 2), }\n", NPY_F8, 8, 1, 16},
        {2, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }\n", NPY_I4, 1, 2, 8},
        {3, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 1,), }\t\r\n", NPY_I4, 2, 2, 8},
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }\n", NPY_F4, 1, 0, 0},
    };
    unsigned char img[512];
    char err[256];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        size_t len = build(img, ok[i].ver, ok[i].hdr, ok[i].nbytes);
        npy_array a;
        err[0] = 0;
        int st = parse_exact(img, len, &a, err, sizeof err);
        test_checks_++;
        if (st != PKV_OK) { TEST_FAIL_("good header %zu refused: %s", i, err); continue; }
        CHECK_INT(a.dtype, ok[i].dtype);
        CHECK_INT(a.ndim, ok[i].ndim);
        if (a.ndim) CHECK_INT(a.shape[0], ok[i].d0);
        CHECK_INT(a.nbytes, ok[i].nbytes);
    }
}

/* Malformed headers: each refused with PKV_ERR_FORMAT (data sized for (2, 3) <f4). */
static void test_bad_headers(void) {
    static const char *const bad[] = {
        "",                                                                   /* empty */
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",        /* no newline */
        " {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n",     /* leading space */
        "{'descr': '<f4', 'fortran_order': False}\n",                         /* no shape */
        "{'fortran_order': False, 'shape': (2, 3)}\n",                        /* no descr */
        "{'descr': '<f4', 'shape': (2, 3)}\n",                                /* no fortran_order */
        "{}\n",
        "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}\n",
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3)}\n",        /* big-endian */
        "{'descr': '=f4', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': 'f4', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': '|f4', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': '<U1', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': '<f4 ', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': '<f4\", 'fortran_order': False, 'shape': (2, 3)}\n",       /* mixed quotes */
        "{'descr': '<f\\4', 'fortran_order': False, 'shape': (2, 3)}\n",      /* escape */
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': 'False', 'shape': (2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (6)}\n",           /* an int */
        "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, -3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (+2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (02, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3L)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2.0, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2_0, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (,)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': ((2, 3),)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775807,)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}x\n",       /* junk */
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}{}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3),,}\n",
        "{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}\n",         /* no comma */
        "{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3)}\n",         /* no colon */
        "{descr: '<f4', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)\n",         /* no brace */
        "'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr: '<f4', 'fortran_order': False, 'shape': (2, 3)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} \x01\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }  \n  x\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }\n",      /* data too short */
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n",      /* data too long */
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n",
    };
    unsigned char img[512];
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (int ver = 1; ver <= 3; ver += 2) {
            size_t len = build(img, ver, bad[i], 24);
            npy_array a;
            err[0] = 0;
            int st = parse_exact(img, len, &a, err, sizeof err);
            test_checks_++;
            if (st != PKV_ERR_FORMAT)
                TEST_FAIL_("bad header %zu (v%d) gave %d: %s", i, ver, st, bad[i]);
            else if (strncmp(err, "npy: ", 5) != 0)
                TEST_FAIL_("bad header %zu: no reason given", i);
            CHECK(a.data == NULL && a.ndim == 0 && a.nbytes == 0);
        }
    }
    /* preamble faults */
    const char *good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
    size_t len = build(img, 1, good, 24);
    npy_array a;
    CHECK_OK(parse_exact(img, len, &a, err, sizeof err));
    img[0] = 0x92;
    CHECK_STATUS(parse_exact(img, len, &a, err, sizeof err), PKV_ERR_FORMAT);
    img[0] = 0x93; img[3] = 'm';
    CHECK_STATUS(parse_exact(img, len, &a, err, sizeof err), PKV_ERR_FORMAT);
    img[3] = 'M';
    const unsigned char vers[][2] = {{0, 0}, {4, 0}, {1, 1}, {2, 1}, {255, 0}};
    for (size_t i = 0; i < sizeof vers / sizeof vers[0]; i++) {
        img[6] = vers[i][0]; img[7] = vers[i][1];
        CHECK_STATUS(parse_exact(img, len, &a, err, sizeof err), PKV_ERR_FORMAT);
    }
    img[6] = 1; img[7] = 0;
    img[8] = 0xff; img[9] = 0xff; /* header length past the end */
    CHECK_STATUS(parse_exact(img, len, &a, err, sizeof err), PKV_ERR_FORMAT);
    len = build(img, 2, good, 24);
    img[11] = 0x80; /* 2 GiB header length (v2 has 4 bytes) */
    CHECK_STATUS(parse_exact(img, len, &a, err, sizeof err), PKV_ERR_FORMAT);
    CHECK_STATUS(npy_parse(NULL, 10, &a, err, sizeof err), PKV_ERR_NULL);
    CHECK_STATUS(npy_parse(img, len, NULL, err, sizeof err), PKV_ERR_NULL);
    len = build(img, 1, good, 24);
    CHECK_STATUS(npy_parse(img, len, &a, NULL, 0), PKV_OK); /* err may be NULL */
    img[20] = '!';
    CHECK_STATUS(npy_parse(img, len, &a, NULL, 0), PKV_ERR_FORMAT);
}

/* Every strict prefix of good files (v1 and v2), and a seeded byte-flip fuzz. */
static void test_truncation_and_fuzz(void) {
    unsigned char img[512];
    char err[256];
    const char *hdrs[] = {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n",
                          "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 1, 3), }\n"};
    for (int h = 0; h < 2; h++)
        for (int ver = 1; ver <= 2; ver++) {
            size_t len = build(img, ver, hdrs[h], 24);
            npy_array a;
            CHECK_OK(parse_exact(img, len, &a, err, sizeof err));
            int all = 1;
            for (size_t n = 0; n < len; n++)
                all &= parse_exact(img, n, &a, err, sizeof err) == PKV_ERR_FORMAT;
            CHECK(all);
        }
    test_rng r = {99};
    const size_t len = build(img, 1, hdrs[0], 24);
    long n_ok = 0, n_fmt = 0, n_other = 0;
    for (long it = 0; it < test_scaled(20000); it++) {
        unsigned char m[512];
        memcpy(m, img, len);
        int flips = 1 + (int)test_below(&r, 4);
        for (int f = 0; f < flips; f++) {
            size_t pos = test_below(&r, (uint32_t)len);
            m[pos] = test_below(&r, 2) ? (unsigned char)test_next(&r) : (unsigned char)"(),:' \n{}0123456789<|fiu"[test_below(&r, 25)];
        }
        size_t n = len - test_below(&r, 3);
        npy_array a;
        int st = parse_exact(m, n, &a, err, sizeof err);
        if (st == PKV_OK) {
            n_ok++;
            size_t pre = 10 + ((size_t)m[8] | (size_t)m[9] << 8);
            if (pre + a.nbytes != n) TEST_FAIL_("fuzz %ld: accepted with a wrong data length", it);
        } else if (st == PKV_ERR_FORMAT) {
            n_fmt++;
        } else {
            n_other++;
        }
    }
    CHECK_INT(n_other, 0);
    CHECK(n_ok > 0 && n_fmt > 0);
}

/* A header whose length leaves the data at an odd offset: npy_load realigns. */
static void test_misaligned(void) {
    unsigned char img[512];
    char path[256], err[256];
    const char *hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,)}\n"; /* odd total */
    size_t len = build(img, 1, hdr, 0);
    CHECK(len % 8 != 0);
    double v[3] = {1.5, -2.25, 1e300};
    memcpy(img + len, v, sizeof v);
    len += sizeof v;
    snprintf(path, sizeof path, "%s/odd.npy", tmpdir);
    FILE *f = fopen(path, "wb");
    fwrite(img, 1, len, f);
    fclose(f);
    npy_array a;
    CHECK_OK(npy_load(path, &a, err, sizeof err));
    CHECK(((uintptr_t)a.data % 8) == 0);
    CHECK(a.count == 3 && memcmp(a.data, v, sizeof v) == 0);
    npy_free(&a);
    npy_free(NULL);
    /* a truncated file on disk */
    f = fopen(path, "wb");
    fwrite(img, 1, len - 1, f);
    fclose(f);
    CHECK_STATUS(npy_load(path, &a, err, sizeof err), PKV_ERR_FORMAT);
    CHECK(strstr(err, "data") != NULL);
}

static void cleanup(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_roundtrip();
    test_good_variants();
    test_bad_headers();
    test_truncation_and_fuzz();
    test_misaligned();
    cleanup();
    return test_report("test_npy");
}
