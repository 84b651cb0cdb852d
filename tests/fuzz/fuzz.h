/* Shared by the fuzz targets (fuzz_*.c). Each target defines one entry point
 * `int fuzz_<name>(const uint8_t *data, size_t size)`; built with
 * -DPKV_LIBFUZZER it also defines LLVMFuzzerTestOneInput (make fuzz), and
 * tests/test_fuzz_replay.c includes all of them to run the corpus in make test.
 * A failed expectation prints what and where, then aborts: libFuzzer saves the
 * input as a crash, the replay test dies with the file name printed. */
#ifndef PKV_FUZZ_H
#define PKV_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The input being replayed (test_fuzz_replay.c sets it), for the abort message. */
static const char *fuzz_input_name = NULL;

#define FUZZ_CHECK(cond, ...)                                                          \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed", __FILE__, __LINE__, #cond); \
            if (fuzz_input_name) fprintf(stderr, " on input %s", fuzz_input_name);    \
            fprintf(stderr, ": ");                                                     \
            fprintf(stderr, __VA_ARGS__);                                              \
            fputc('\n', stderr);                                                       \
            abort();                                                                   \
        }                                                                              \
    } while (0)

/* Bytes of the input, consumed front to back; zeros once exhausted. */
typedef struct fuzz_in {
    const uint8_t *d;
    size_t n, i;
} fuzz_in;

static inline int fuzz_done(const fuzz_in *in) { return in->i >= in->n; }
static inline uint8_t fuzz_u8(fuzz_in *in) { return in->i < in->n ? in->d[in->i++] : 0; }
static inline uint16_t fuzz_u16(fuzz_in *in) {
    uint16_t lo = fuzz_u8(in);
    return (uint16_t)(lo | (uint16_t)fuzz_u8(in) << 8);
}
static inline uint32_t fuzz_u32(fuzz_in *in) {
    uint32_t lo = fuzz_u16(in);
    return lo | (uint32_t)fuzz_u16(in) << 16;
}
/* A value in [0, n) (n >= 1). */
static inline uint32_t fuzz_below(fuzz_in *in, uint32_t n) { return n <= 256 ? fuzz_u8(in) % n : fuzz_u32(in) % n; }

/* The cache's canonical dump in a malloc'ed buffer (cache_dump, src/dump.c). */
static inline uint8_t *fuzz_dump(pkv_cache *c, size_t *len) {
    size_t n = cache_dump(c, NULL, 0);
    uint8_t *b = malloc(n ? n : 1);
    FUZZ_CHECK(b != NULL, "out of memory");
    FUZZ_CHECK(cache_dump(c, b, n) == n, "dump size changed");
    *len = n;
    return b;
}

#endif
