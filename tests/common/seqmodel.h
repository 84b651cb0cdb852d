/* The randomized model-based test of sequences: a long random run of create /
 * append / fork / truncate / free against the library and a deliberately naive
 * model, checked after every step. Shared by tests/test_model.c (make test)
 * and tests/stress/stress_seq.c (make stress). */
#ifndef PKV_SEQMODEL_H
#define PKV_SEQMODEL_H

#include <stdint.h>

typedef struct seqmodel_result {
    long ops;           /* operations run */
    long capacity_hits; /* appends refused for lack of blocks (and checked unchanged) */
    long cow_copies;    /* copy-on-write copies observed */
    long full_checks;   /* full content + invariant sweeps */
    long failures;      /* mismatches found (0 on success) */
} seqmodel_result;

/* Runs ops operations from seed on one cache configuration drawn from the
 * seed (host mode: contents checked; or metadata mode: copies checked).
 * Prints the first mismatches to stderr. */
seqmodel_result seqmodel_run(uint64_t seed, long ops, int host_mode);

#endif
