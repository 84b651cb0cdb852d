/* The model-based sequence test at `make test` scale: at least 1 million
 * operations over many seeded cache configurations, host and metadata mode. */
#include <time.h>

#include "common/seqmodel.h"
#include "test.h"

int main(void) {
    long total = test_scaled(1000000), per_run = 25000, ops = 0, cap = 0, cow = 0, checks = 0;
    uint64_t seed0 = 0x5eed0000ull;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t run = 0; ops < total; run++) {
        long n = total - ops < per_run ? total - ops : per_run;
        seqmodel_result r = seqmodel_run(seed0 + run, n, (int)(run & 1));
        CHECK_INT(r.failures, 0);
        if (r.failures) fprintf(stderr, "replay: seed 0x%llx, host %d\n", (unsigned long long)(seed0 + run), (int)(run & 1));
        ops += r.ops;
        cap += r.capacity_hits;
        cow += r.cow_copies;
        checks += r.full_checks;
        if (r.failures) break;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("model: %ld operations (%ld capacity refusals, %ld copy-on-write, %ld full sweeps) in %.2f s\n", ops,
           cap, cow, checks, s);
    CHECK(ops >= total);
    CHECK(cap > 0);
    CHECK(cow > 0);
    return test_report("test_model");
}
