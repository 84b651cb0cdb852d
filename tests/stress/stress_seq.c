/* make stress: the model-based sequence test at large scale with a printed seed.
 * Usage: stress_seq [--ops N] [--seed S]  (default 20 million, seed from time). */
#include <string.h>
#include <time.h>

#include "common/seqmodel.h"
#include "test.h"

int main(int argc, char **argv) {
    long total = 20000000;
    uint64_t seed = (uint64_t)time(NULL) * 2654435761u;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ops")) total = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 0);
    }
    printf("stress_seq: seed 0x%llx, %ld operations\n", (unsigned long long)seed, total);
    fflush(stdout);
    long ops = 0, failures = 0;
    test_rng rng = {seed};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long run = 0; ops < total && !failures; run++) {
        uint64_t s = test_next(&rng);
        long n = total - ops < 200000 ? total - ops : 200000;
        seqmodel_result r = seqmodel_run(s, n, (int)(run & 1));
        if (r.failures) fprintf(stderr, "FAILED: run seed 0x%llx host %d\n", (unsigned long long)s, (int)(run & 1));
        ops += r.ops;
        failures += r.failures;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("stress_seq: %ld operations, %ld failures, %.1f s (seed 0x%llx)\n", ops, failures,
           (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9, (unsigned long long)seed);
    return failures ? 1 : 0;
}
