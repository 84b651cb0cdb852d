/* The fuzz targets as ordinary regression tests (zstd's way): every file in
 * tests/fuzz/corpus/<target>/ (seeds, and every input that once found a bug)
 * runs through its target, then a number of seeded random inputs per target
 * (2000 by default, times PKV_TEST_SCALE). A failed expectation aborts with
 * the input's name. PKV_FUZZ_CORPUS overrides the corpus directory;
 * PKV_FUZZ_LAST=path keeps the last random input in path. */
#include <dirent.h>
#include <stdint.h>

#include "fuzz/fuzz_attn.c"
#include "fuzz/fuzz_npy.c"
#include "fuzz/fuzz_ops.c"
#include "test.h"

typedef int (*fuzz_fn)(const uint8_t *, size_t);

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Runs every regular file of dir through fn; returns how many, or -1 if dir is unreadable. */
static long run_dir(const char *dir, fuzz_fn fn) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, cap * sizeof *names);
            if (!names) exit(2);
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, by_name);
    long ran = 0;
    for (size_t i = 0; i < n; i++) {
        char path[8192];
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path) exit(2);
        FILE *f = fopen(path, "rb");
        if (f) {
            uint8_t *buf = NULL;
            size_t len = 0, bcap = 0, got;
            do {
                if (len == bcap) {
                    bcap = bcap ? 2 * bcap : 4096;
                    buf = realloc(buf, bcap);
                    if (!buf) exit(2);
                }
                got = fread(buf + len, 1, bcap - len, f);
                len += got;
            } while (got > 0);
            fclose(f);
            fuzz_input_name = path;
            fn(buf, len);
            fuzz_input_name = NULL;
            free(buf);
            ran++;
        }
        free(names[i]);
    }
    free(names);
    return ran;
}

/* PKV_FUZZ_LAST=path: each random input is written there before it runs, so an
 * input that crashes is left behind (to add to the corpus). */
static void save_last(const uint8_t *buf, size_t len) {
    const char *path = getenv("PKV_FUZZ_LAST");
    if (!path) return;
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(buf, 1, len, f);
    fclose(f);
}

/* count seeded random inputs of 1..maxlen bytes. */
static void run_random(fuzz_fn fn, uint64_t seed, long count, size_t maxlen) {
    test_rng rng = {seed};
    uint8_t *buf = malloc(maxlen);
    if (!buf) exit(2);
    char name[64];
    for (long i = 0; i < count; i++) {
        size_t len = 1 + test_below(&rng, (uint32_t)maxlen);
        for (size_t j = 0; j < len; j++) buf[j] = (uint8_t)test_next(&rng);
        snprintf(name, sizeof name, "random input %ld of seed %llu", i, (unsigned long long)seed);
        fuzz_input_name = name;
        save_last(buf, len);
        fn(buf, len);
    }
    fuzz_input_name = NULL;
    free(buf);
}

int main(void) {
    const char *root = getenv("PKV_FUZZ_CORPUS");
    if (!root) root = "tests/fuzz/corpus";
    static const struct {
        const char *name;
        fuzz_fn fn;
        size_t maxlen;
    } targets[] = {{"ops", fuzz_ops, 2048}, {"attn", fuzz_attn, 4096}, {"npy", fuzz_npy, 512}};
    long random = test_scaled(2000);
    for (size_t t = 0; t < sizeof targets / sizeof *targets; t++) {
        char dir[4096];
        if (snprintf(dir, sizeof dir, "%s/%s", root, targets[t].name) >= (int)sizeof dir) exit(2);
        long files = run_dir(dir, targets[t].fn);
        test_checks_++;
        if (files <= 0) TEST_FAIL_("no corpus in %s (run from the repository root)", dir);
        run_random(targets[t].fn, 1000 + t, random, targets[t].maxlen);
        printf("fuzz replay: %-4s %ld corpus files, %ld random inputs\n", targets[t].name, files, random);
    }
    fuzz_attn_cleanup();
    return test_report("test_fuzz_replay");
}
