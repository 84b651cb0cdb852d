/* make stress: the window prefix-caching random run (tests/test_window_prefix.c)
 * at scale: seeds from --seed, pools from one that never reclaims (hits must
 * equal a full-attention cache's) to 24 blocks (constant reclaiming, ghosts,
 * revivals, index growth), every served row and pkv_cache_check after each call.
 * Usage: stress_window_prefix [--ops N] [--seed S]; N operations in all
 * (default 20 million / 100, see below). */
#define WINDOW_PREFIX_NO_MAIN
#include "../test_window_prefix.c"

#include <time.h>

int main(int argc, char **argv) {
    long ops = 20000000;
    uint64_t seed = (uint64_t)time(NULL) * 2654435761u;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ops")) ops = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 0);
    }
    /* Each operation checks every row a lookup serves and the whole cache: a
     * hundredth of N keeps `make stress` at a few minutes. */
    const long total = ops / 100 > 1000 ? ops / 100 : 1000;
    printf("stress_window_prefix: seed 0x%llx, %ld operations\n", (unsigned long long)seed, total);
    fflush(stdout);
    test_config();
    test_worked();
    test_registration_stops();
    test_groups();
    static const int32_t pools[] = {1 << 16, 24, 40, 60, 120};
    long done = 0;
    for (uint64_t k = 0; done < total && !test_fails_; k++) {
        const long n = total - done < 5000 ? total - done : 5000;
        const int32_t pool = pools[k % 5];
        random_run(seed + k, pool, n, pool == 1 << 16);
        done += n;
    }
    return test_report("stress_window_prefix");
}
