/* `pkv info`: version, build, CPU features and the kernel each dtype uses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attn/kernels.h"
#include "cli/cli.h"

static const char info_help[] =
    "usage: pkv info\n"
    "\n"
    "Prints the library version, how it was built (compiler, flags), the CPU and the\n"
    "features pagedkv looks for, the ISA pkv_attn dispatches to (PKV_ISA=scalar|avx2|\n"
    "avx512 forces a lower one) and the kernel each (q dtype, kv dtype) pair uses, and\n"
    "the KV dtypes with their bytes per token.\n";

static void cpu_model(char *buf, size_t n) {
    snprintf(buf, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            const char *p = strchr(line, ':');
            if (p) {
                p++;
                while (*p == ' ' || *p == '\t') p++;
                snprintf(buf, n, "%s", p);
                buf[strcspn(buf, "\n")] = 0;
            }
            break;
        }
    }
    fclose(f);
}

int cmd_info(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv[i], "--help") || cli_flag(argv[i], "-h")) {
            fputs(info_help, stdout);
            return 0;
        }
        return cli_error("info: unknown option '%s' (see pkv info --help)", argv[i]);
    }
    printf("pagedkv %s\n", pkv_version());
#if defined(__clang__)
    printf("compiler: clang %s\n", __clang_version__);
#elif defined(__GNUC__)
    printf("compiler: gcc %s\n", __VERSION__);
#else
    printf("compiler: unknown\n");
#endif
#ifdef PKV_BUILD_CFLAGS
    printf("CFLAGS: %s\n", PKV_BUILD_CFLAGS);
#endif
    printf("build: C%ld,%s%s PKV_DEBUG=%d, built %s %s\n", (long)__STDC_VERSION__,
#ifdef __OPTIMIZE__
           " optimized",
#else
           " not optimized",
#endif
#if defined(__SANITIZE_ADDRESS__)
           " ASan,",
#else
           "",
#endif
           PKV_DEBUG, __DATE__, __TIME__);
    char model[256];
    cpu_model(model, sizeof model);
    printf("cpu: %s, %ld online\n", model, sysconf(_SC_NPROCESSORS_ONLN));
    printf("cpu features:");
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    struct { const char *name; int on; } feats[] = {
        {"sse4.2", __builtin_cpu_supports("sse4.2")},
        {"avx", __builtin_cpu_supports("avx")},
        {"avx2", __builtin_cpu_supports("avx2")},
        {"fma", __builtin_cpu_supports("fma")},
        {"avx512f", __builtin_cpu_supports("avx512f")},
        {"avx512bw", __builtin_cpu_supports("avx512bw")},
        {"avx512vl", __builtin_cpu_supports("avx512vl")},
        {"avx512dq", __builtin_cpu_supports("avx512dq")},
        {"avx512bf16", __builtin_cpu_supports("avx512bf16")},
    };
    int any = 0;
    for (size_t i = 0; i < sizeof feats / sizeof feats[0]; i++)
        if (feats[i].on) { printf(" %s", feats[i].name); any = 1; }
    if (!any) printf(" (none of sse4.2 avx avx2 fma avx512*)");
    printf("\n");
#else
    printf(" (not an x86 CPU: scalar kernels)\n");
#endif
    printf("attention ISAs:");
    for (int isa = 0; isa < ATTN_ISA_COUNT; isa++)
        printf(" %s%s", attn_isa_label(isa), attn_isa_supported(isa) ? "" : " (unsupported)");
    printf("\npkv_attn uses: %s", attn_isa_name());
    const char *force = getenv("PKV_ISA");
    if (force) printf(" (PKV_ISA=%s)", force);
    printf("\n\nkernels (q dtype x kv dtype; the oracle pkv_attn_reference is always scalar double):\n");
    static const struct { int dtype; const char *name; } kv[] = {
        {PKV_F32, "f32"}, {PKV_F16, "f16"}, {PKV_BF16, "bf16"}, {PKV_FP8_MLA656, "fp8 (MLA656)"}};
    printf("  %-14s", "kv \\ q");
    for (int qd = 0; qd < 3; qd++) printf("  %-18s", kv[qd].name);
    printf("\n");
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
        printf("  %-14s", kv[i].name);
        for (int qd = 0; qd < 3; qd++) {
            const char *n = attn_kernel_name(kv[qd].dtype, kv[i].dtype);
            printf("  %-18s", n ? n : "-");
        }
        printf("\n");
    }
    printf("\nKV dtypes (bytes per token per layer, MLA d 576 / h_kv 1):\n");
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        printf("  %-14s %zu\n", kv[i].name, pkv_row_bytes(kv[i].dtype, 1, 576));
    return 0;
}
