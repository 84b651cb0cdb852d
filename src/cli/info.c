/* `pkv info`: version, build, CPU features and the kernel each dtype uses.
 * Uses the public API only (the CPU features section of pagedkv.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

/* The build's debug level (the same flags build the library and pkv). */
#ifndef PKV_DEBUG
#define PKV_DEBUG 0
#endif

static const char info_help[] =
    "usage: pkv info\n"
    "\n"
    "Prints the library version, how it was built (compiler, flags), the CPU and the\n"
    "features pagedkv looks for, the ISA level pkv_attn and the FP8 quantizer\n"
    "dispatch to and the kernel each (q dtype, kv dtype) pair uses, and the KV dtypes\n"
    "with their bytes per token.\n"
    "\n"
    "Environment: PKV_ISA=scalar|avx2|avx512|amx caps the level (the best level the\n"
    "CPU supports not above it is used); any other value is reported and ignored.\n";

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
    char why[200];
    if (pkv_isa_status(why, sizeof why) != PKV_OK) fprintf(stderr, "pkv: warning: %s\n", why);
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
    const uint64_t feats = pkv_cpu_features();
    int any = 0;
    for (int bit = 0; pkv_cpu_feature_name(bit); bit++)
        if (feats >> bit & 1u) { printf(" %s", pkv_cpu_feature_name(bit)); any = 1; }
    printf("%s\n", any ? "" : " (none that pagedkv uses: scalar kernels)");
    printf("attention ISAs:");
    for (int isa = 0; pkv_isa_label(isa); isa++)
        printf(" %s%s", pkv_isa_label(isa), pkv_isa_supported(isa) ? "" : " (unsupported)");
    printf("\npkv_attn uses: %s", pkv_isa_name());
    const char *force = getenv("PKV_ISA");
    if (force && *force) printf(" (PKV_ISA=%s)", force);
    printf("\n\nkernels (q dtype x kv dtype; the oracle pkv_attn_reference is always scalar double):\n");
    static const struct { int dtype; const char *name; } kv[] = {
        {PKV_F32, "f32"}, {PKV_F16, "f16"}, {PKV_BF16, "bf16"}, {PKV_FP8_MLA656, "fp8 (MLA656)"}};
    printf("  %-14s", "kv \\ q");
    for (int qd = 0; qd < 3; qd++) printf("  %-18s", kv[qd].name);
    printf("\n");
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
        printf("  %-14s", kv[i].name);
        for (int qd = 0; qd < 3; qd++) {
            const char *n = pkv_attn_kernel_name(kv[qd].dtype, kv[i].dtype);
            printf("  %-18s", n ? n : "-");
        }
        printf("\n");
    }
    printf("\nKV dtypes (bytes per token per layer, MLA d 576 / h_kv 1):\n");
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        printf("  %-14s %zu\n", kv[i].name, pkv_row_bytes(kv[i].dtype, 1, 576));
    return 0;
}
