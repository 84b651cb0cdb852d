/* Attention test vectors: the project's own (tests/vectors, made by
 * tests/vectors/gen_vectors.py) and, when present, the shared set beside the
 * repository (../shared/vectors, or PKV_VECTORS), which the tests cross-check
 * too. Where they are, how a line of cases.txt reads, and loading one array of
 * a case with its dtype and size checked. Used by the oracle's and the fast
 * path's tests. Failures come back as -1 with a message in err; the caller
 * records them. */
#ifndef PKV_TEST_VECTORS_H
#define PKV_TEST_VECTORS_H

#include <stddef.h>
#include <stdio.h>

#include "npy.h"

typedef struct vcase {
    char name[128];
    int b, s_q, h_q, h_kv, d, dv, v_shared, block_size, mbps, num_blocks, causal, dtype;
    int kv_dtype; /* the optional key kv_dtype=f32|f16|bf16|fp8; else dtype */
    double scale;
} vcase;

/* One line of cases.txt ("name key=value ..."): 1 for a case, 0 for a blank or
 * comment line, -1 for a malformed one. */
int vectors_parse(char *line, vcase *c, char *err, size_t errcap);

/* The project's vectors: PKV_OWN_VECTORS, else tests/vectors of the repository
 * (the working directory if it is the root, else the root found above this
 * executable). */
const char *vectors_own_dir(char *buf, size_t cap);
/* The shared vectors to cross-check: PKV_VECTORS, else ../shared/vectors beside
 * the repository. May not exist (vectors_for_each then skips them with a note). */
const char *vectors_shared_dir(char *buf, size_t cap);

/* Runs fn on every case of the project's vectors (their absence is a failure,
 * reported through err as -1), then of the shared vectors when their folder
 * exists (else prints "<who>: no shared vectors at DIR: cross-check skipped").
 * Returns the number of cases run, or -1 with err set. */
int vectors_for_each(const char *who, void (*fn)(const char *dir, const vcase *c, void *ctx), void *ctx, char *err,
                     size_t errcap);

/* Opens dir/cases.txt; NULL with the reason in err when it cannot. */
FILE *vectors_open(const char *dir, char *err, size_t errcap);

/* Loads dir/name.what.npy into out and checks its dtype (NPY_*) and element count
 * (count 0: any). Returns 1, 0 when absent and not required, -1 on failure. */
int vectors_load(const char *dir, const char *name, const char *what, int dtype, size_t count, npy_array *out,
                 int required, char *err, size_t errcap);

/* Zeroes *a and fills its geometry, scale, causal flag and dtypes from c. */
struct pkv_attn_args;
void vectors_geometry(const vcase *c, struct pkv_attn_args *a);


#endif
