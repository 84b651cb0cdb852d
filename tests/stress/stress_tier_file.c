/* make stress: the file tier's crash test at large scale. A child stores and
 * deletes blobs (half the rounds with PKV_FILE_TIER_FSYNC) and is killed with
 * SIGKILL at a random instant; every restart must show, for every key, the
 * last acknowledged blob or the one in flight, byte for byte, and never lose an
 * acknowledged one. Then the random-operation model with restarts.
 * Usage: stress_tier_file [--ops N] [--seed S] [--kills K]
 *   N: acknowledged operations to reach (default 20 million / 20, see below),
 *   K: at least K kills (default 200). */
#define TIER_FILE_TEST_NO_MAIN
#include "test_tier_file.c"

int main(int argc, char **argv) {
    long ops = 20000000, kills = 200;
    uint64_t seed = (uint64_t)time(NULL) * 2654435761u;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ops")) ops = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--kills")) kills = atol(argv[i + 1]);
    }
    /* An acknowledged put here costs a 20 KB write (and an fdatasync in FSYNC
     * rounds): the default 20 million of `make stress` would take hours, so a
     * twentieth of N is the target (1 million: a few minutes). */
    const long acked = ops / 20;
    printf("stress_tier_file: seed 0x%llx, >= %ld kills, >= %ld acknowledged operations\n",
           (unsigned long long)seed, kills, acked);
    fflush(stdout);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    test_checksum();
    test_args();
    test_capacity();
    test_trust_gets();
    for (uint64_t s = 0; s < 40; s++) test_corruption((int)(s & 1), seed + s);
    test_foreign();
    test_deleted_slab();
    test_injection();
    const long failures = crash_test(kills, acked, seed, 1);
    test_rng r = {seed};
    for (int i = 0; i < 4 && !test_fails_; i++)
        test_model(i & 1 ? 20000 : 1000, 200, (i & 1 ? 24576 : 1088) * (uint64_t)(150 + 50 * i), ops / 200,
                   test_next(&r), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("stress_tier_file: %ld crash failures, %.1f s (seed 0x%llx)\n", failures,
           (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9, (unsigned long long)seed);
    return test_report("stress_tier_file");
}
