/* Running the pkv program from tests (test_cli.c, test_sim.c): the program
 * found next to the test binary, a command's exit status and output, checks
 * on them, and small readers of its table and JSON output. Include after
 * test.h (it counts checks in test.h's counters). */
#ifndef PKV_TESTS_CLIRUN_H
#define PKV_TESTS_CLIRUN_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct run_out {
    int status;  /* exit code, or -1 when killed */
    char *text;  /* stdout + stderr */
    size_t len;
    double secs; /* wall time of the command */
} run_out;

static const char *bin; /* the pkv program (clirun_find_bin) */

/* Runs a whole shell command line (environment assignments, redirections). */
static inline run_out run_sh(const char *cmd) {
    run_out r = {-1, NULL, 0, 0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    FILE *p = popen(cmd, "r");
    if (!p) return r;
    size_t cap = 0, n;
    char buf[8192];
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) {
        if (r.len + n + 1 > cap) {
            cap = (r.len + n + 1) * 2;
            r.text = realloc(r.text, cap);
        }
        memcpy(r.text + r.len, buf, n);
        r.len += n;
    }
    if (!r.text) r.text = calloc(1, 1);
    r.text[r.len] = 0;
    const int st = pclose(p);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r.secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

/* Runs "$bin args", stdout and stderr together. */
static inline run_out run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline run_out run(const char *fmt, ...) {
    char args[4096], cmd[4608];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", bin, args);
    return run_sh(cmd);
}

/* Exit status and (unless NULL) a piece of the output. */
static inline void check_run(const run_out *r, int want_status, const char *needle, const char *file, int line) {
    test_checks_++;
    if (r->status != want_status || (needle && !strstr(r->text, needle))) {
        test_fails_++;
        fprintf(stderr, "%s:%d: status %d (want %d)%s%s%s; output:\n%.2000s\n", file, line, r->status, want_status,
                needle ? ", want \"" : "", needle ? needle : "", needle ? "\"" : "", r->text);
    }
}
#define CHECK_RUN(r, want_status, needle) check_run(&(r), (want_status), (needle), __FILE__, __LINE__)

/* The text of table row `name` after the name, or "". */
static inline const char *row(const char *text, const char *name, char *buf, size_t n) {
    buf[0] = 0;
    size_t len = strlen(name);
    for (const char *p = text; (p = strstr(p, name)) != NULL; p += len)
        if ((p == text || p[-1] == '\n') && p[len] == ' ') {
            const char *e = strchr(p, '\n');
            size_t m = e ? (size_t)(e - p - len) : strlen(p + len);
            if (m >= n) m = n - 1;
            memcpy(buf, p + len, m);
            buf[m] = 0;
            break;
        }
    return buf;
}

static inline void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* Sets bin: PKV_BIN, else the pkv next to this build (BUILD/tests/x -> BUILD/pkv).
 * Returns 0, or prints why and returns 1. */
static inline int clirun_find_bin(const char *argv0, const char *test) {
    static char guess[1024];
    bin = getenv("PKV_BIN");
    if (!bin) {
        snprintf(guess, sizeof guess, "%s", argv0);
        char *slash = strrchr(guess, '/');
        if (slash) *slash = 0;
        slash = strrchr(guess, '/');
        if (slash && (size_t)(slash - guess) + 5 < sizeof guess) strcpy(slash + 1, "pkv");
        else snprintf(guess, sizeof guess, "build/pkv");
        bin = guess;
    }
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "%s: %s is not an executable (set PKV_BIN)\n", test, bin);
        return 1;
    }
    return 0;
}

#endif
