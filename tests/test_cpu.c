/* The CPU feature module (src/cpu.c) from the outside: its feature bits against
 * the flags the kernel reports in /proc/cpuinfo (an independent reading of the
 * same CPUID and OS state), the level table against the features, and PKV_ISA
 * handling in fresh processes (valid, unsupported, unknown, empty). */
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

#define CHECK_STR(a, b)                                                                    \
    do {                                                                                   \
        const char *a_ = (a), *b_ = (b);                                                   \
        test_checks_++;                                                                    \
        if (!a_ || strcmp(a_, b_) != 0) TEST_FAIL_("%s: got \"%s\", want \"%s\"", #a, a_ ? a_ : "(null)", b_); \
    } while (0)

/* 1 if the "flags" line of /proc/cpuinfo lists flag, 0 if not, -1 without it. */
static int cpuinfo_has(const char *flag) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return -1;
    static char line[16384];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0) continue;
        found = 0;
        for (char *save = NULL, *tok = strtok_r(strchr(line, ':') + 1, " \n", &save); tok;
             tok = strtok_r(NULL, " \n", &save))
            if (strcmp(tok, flag) == 0) found = 1;
        break;
    }
    fclose(f);
    return found;
}

static void test_features(void) {
    static const struct { int bit; const char *name, *flag; } map[] = {
        {PKV_CPU_SSE4_2, "sse4.2", "sse4_2"},       {PKV_CPU_AVX, "avx", "avx"},
        {PKV_CPU_AVX2, "avx2", "avx2"},             {PKV_CPU_FMA, "fma", "fma"},
        {PKV_CPU_F16C, "f16c", "f16c"},             {PKV_CPU_AVX512F, "avx512f", "avx512f"},
        {PKV_CPU_AVX512BW, "avx512bw", "avx512bw"}, {PKV_CPU_AVX512VL, "avx512vl", "avx512vl"},
        {PKV_CPU_AVX512DQ, "avx512dq", "avx512dq"}, {PKV_CPU_AVX512BF16, "avx512bf16", "avx512_bf16"},
        {PKV_CPU_AVX512FP16, "avx512fp16", "avx512_fp16"}, {PKV_CPU_AMX_TILE, "amx-tile", "amx_tile"},
        {PKV_CPU_AMX_BF16, "amx-bf16", "amx_bf16"},
    };
    const uint64_t f = pkv_cpu_features();
    CHECK(f == pkv_cpu_features()); /* read once */
    /* Under valgrind CPUID describes valgrind's emulated CPU (no AVX-512), not
     * the host's that /proc/cpuinfo lists. */
    const char *pre = getenv("LD_PRELOAD");
    const int emulated = pre && strstr(pre, "vgpreload") != NULL;
    int nnames = 0;
    while (pkv_cpu_feature_name(nnames)) nnames++;
    CHECK_INT(nnames, (int)(sizeof map / sizeof map[0]));
    CHECK(pkv_cpu_feature_name(-1) == NULL);
    printf("cpu features:");
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        int bit = 0;
        while ((1 << bit) != map[i].bit) bit++;
        CHECK_STR(pkv_cpu_feature_name(bit), map[i].name);
        const int have = (f & (uint64_t)map[i].bit) != 0, listed = cpuinfo_has(map[i].flag);
        if (have) printf(" %s", map[i].name);
        if (listed < 0 || emulated) continue; /* not Linux on x86, or valgrind's CPU: nothing to compare with */
        CHECK_INT(have, listed);
    }
    printf("\n");
    CHECK((f >> nnames) == 0); /* no bit without a name */
}

static void test_levels(void) {
    const uint64_t f = pkv_cpu_features();
    const uint64_t avx2 = PKV_CPU_AVX | PKV_CPU_AVX2 | PKV_CPU_FMA | PKV_CPU_F16C;
    const uint64_t avx512 = avx2 | PKV_CPU_AVX512F | PKV_CPU_AVX512BW | PKV_CPU_AVX512VL | PKV_CPU_AVX512DQ |
                            PKV_CPU_AVX512BF16;
    const uint64_t amx = avx512 | PKV_CPU_AMX_TILE | PKV_CPU_AMX_BF16;
    CHECK_STR(pkv_isa_label(PKV_ISA_SCALAR), "scalar");
    CHECK_STR(pkv_isa_label(PKV_ISA_AVX2), "avx2");
    CHECK_STR(pkv_isa_label(PKV_ISA_AVX512), "avx512");
    CHECK_STR(pkv_isa_label(PKV_ISA_AMX), "amx");
    CHECK(pkv_isa_label(4) == NULL && pkv_isa_label(-1) == NULL);
    CHECK_INT(pkv_isa_supported(PKV_ISA_SCALAR), 1);
    CHECK_INT(pkv_isa_supported(PKV_ISA_AVX2), (f & avx2) == avx2);
    CHECK_INT(pkv_isa_supported(PKV_ISA_AVX512), (f & avx512) == avx512);
    CHECK_INT(pkv_isa_supported(PKV_ISA_AMX), (f & amx) == amx);
    CHECK_INT(pkv_isa_supported(4), 0);
    CHECK_INT(pkv_isa_supported(-1), 0);
    CHECK_STR(pkv_isa_name(), pkv_isa_label(pkv_isa_active()));
    char buf[8] = "xxxxxxx";
    (void)pkv_isa_status(NULL, 0);
    (void)pkv_isa_status(buf, 1);
    CHECK_INT(buf[0], 0); /* truncated to cap, terminated */
}

/* Runs this binary with PKV_ISA=value (NULL: unset) and --child; returns its
 * exit status. The child checks active level and status (see child()). */
static int run_child(const char *self, const char *value) {
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid == 0) {
        if (value) setenv("PKV_ISA", value, 1);
        else unsetenv("PKV_ISA");
        execl(self, self, "--child", (char *)NULL);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int child(void) {
    const char *env = getenv("PKV_ISA");
    int best = 0;
    for (int i = 0; pkv_isa_label(i); i++)
        if (pkv_isa_supported(i)) best = i;
    int want = best, status = PKV_OK;
    if (env && *env) {
        status = PKV_ERR_INVALID; /* unless it names a level this CPU runs */
        for (int i = 0; pkv_isa_label(i); i++)
            if (strcmp(env, pkv_isa_label(i)) == 0) {
                want = i;
                while (want > 0 && !pkv_isa_supported(want)) want--;
                if (want == i) status = PKV_OK;
            }
    }
    char why[200];
    CHECK_INT(pkv_isa_status(why, sizeof why), status);
    CHECK_INT(pkv_isa_active(), want);
    if (status != PKV_OK) {
        CHECK(strstr(why, env) != NULL); /* names the value */
        CHECK(strstr(why, pkv_isa_name()) != NULL); /* and what is used instead */
    }
    printf("PKV_ISA=%s: %s%s%s\n", env ? env : "(unset)", pkv_isa_name(), *why ? "; " : "", why);
    return test_report("test_cpu --child") ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--child") == 0) return child();
    test_features();
    test_levels();
    /* The children run this binary by its path (valgrind refuses to start
     * "/proc/self/exe", which names valgrind itself when it is the wrapper). */
    static char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) self[n] = 0;
    else snprintf(self, sizeof self, "%s", argv[0]);
    const char *values[] = {NULL, "", "scalar", "avx2", "avx512", "amx", "bogus", "AVX2", "avx512 "};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        CHECK_INT(run_child(self, values[i]), 0);
    return test_report("test_cpu");
}
