/* Shared declarations of the pkv program (src/cli/): one entry point per
 * subcommand and the small helpers they share. Not part of the library. */
#ifndef PKV_CLI_H
#define PKV_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "pagedkv.h"

/* Exit codes: 0 success, 1 a check failed (mismatch, --expect beyond --tol),
 * 2 bad usage or bad input (flags, files, shapes, trace lines), 3 a library
 * call failed unexpectedly. */
enum { EXIT_CHECK = 1, EXIT_USAGE = 2, EXIT_LIB = 3 };

int cmd_sim(int argc, char **argv);
int cmd_attn(int argc, char **argv);
int cmd_info(int argc, char **argv);

/* Prints "pkv: message" to stderr (with a newline) and returns EXIT_USAGE. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Strict number parsing: the whole string must be a number in [lo, hi].
 * Return 0 on success, -1 (nothing written) otherwise. */
int cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
int cli_parse_f64(const char *s, double lo, double hi, double *out);

/* Whether arg is "--name" or "--name=value"; *val gets the value (the inline one,
 * or the next argument, advancing *i). Returns 1 when matched, 0 when not,
 * -1 when the value is missing or the next argument is an option ("--...";
 * message printed). */
int cli_opt(int argc, char **argv, int *i, const char *name, const char **val);
int cli_flag(const char *arg, const char *name);

/* Monotonic clock in nanoseconds. */
int64_t cli_now_ns(void);

/* splitmix64: the program's one deterministic generator. */
typedef struct cli_rng { uint64_t s; } cli_rng;
uint64_t cli_rng_next(cli_rng *r);
double cli_rng_uniform(cli_rng *r);   /* [0, 1) */
double cli_rng_normal(cli_rng *r);    /* N(0, 1) */
double cli_rng_exp(cli_rng *r, double mean);
/* A stateless 64-bit mix of a few words (token ids, K/V contents). */
uint64_t cli_mix(uint64_t a, uint64_t b, uint64_t c, uint64_t d);

#endif
