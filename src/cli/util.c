/* Helpers shared by the pkv subcommands: messages, strict number parsing,
 * option matching, the clock and the deterministic generator. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"

int cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("pkv: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_USAGE;
}

int cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cli_parse_f64(const char *s, double lo, double hi, double *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cli_flag(const char *arg, const char *name) { return strcmp(arg, name) == 0; }

int cli_opt(int argc, char **argv, int *i, const char *name, const char **val) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != 0) return 0;
    if (*i + 1 >= argc) {
        cli_error("%s needs a value", name);
        return -1;
    }
    /* "--block-size --no-progress": the next option is not this one's value
     * (a value that starts with "--" can still be given as --name=--value). */
    if (!strncmp(argv[*i + 1], "--", 2)) {
        cli_error("%s needs a value, but is followed by the option '%s'", name, argv[*i + 1]);
        return -1;
    }
    *val = argv[++*i];
    return 1;
}

int64_t cli_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t cli_rng_next(cli_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double cli_rng_uniform(cli_rng *r) { return (double)(cli_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

double cli_rng_normal(cli_rng *r) {
    double u = cli_rng_uniform(r), v = cli_rng_uniform(r);
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

double cli_rng_exp(cli_rng *r, double mean) {
    double u = cli_rng_uniform(r);
    return -mean * log(1.0 - u);
}

uint64_t cli_mix(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    cli_rng r = {a * 0x9e3779b97f4a7c15ull ^ b};
    uint64_t h = cli_rng_next(&r);
    r.s ^= c * 0xc2b2ae3d27d4eb4full;
    h ^= cli_rng_next(&r);
    r.s ^= d * 0x165667b19e3779f9ull;
    return h ^ cli_rng_next(&r);
}
