/* CPU features and the choice of ISA level (contract in cpu.h and in the CPU
 * features section of pagedkv.h). The state is the library's one piece of
 * global mutable data: computed once under pthread_once, then only read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* Linux keeps AMX tile data off until a process asks (arch_prctl
 * ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); 1 when granted. */
static int amx_permitted(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
#else
    return 0;
#endif
}

static uint64_t xgetbv0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

#define BIT(reg, n) (((reg) >> (n)) & 1u)

static uint64_t detect_x86(void) {
    uint64_t f = 0;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (BIT(c, 20)) f |= PKV_CPU_SSE4_2;
    /* AVX-class features count only when the OS saves the registers (XCR0) */
    if (!BIT(c, 27) /* OSXSAVE */) return f;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 6) != 6 || !BIT(c, 28)) return f; /* XMM + YMM state, AVX */
    f |= PKV_CPU_AVX;
    if (BIT(c, 12)) f |= PKV_CPU_FMA;
    if (BIT(c, 29)) f |= PKV_CPU_F16C;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    const unsigned b7 = b, d7 = d;
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    if (BIT(b7, 5)) f |= PKV_CPU_AVX2;
    if ((xcr0 & 0xe0) == 0xe0) { /* opmask, ZMM_Hi256, Hi16_ZMM state */
        if (BIT(b7, 16)) f |= PKV_CPU_AVX512F;
        if (BIT(b7, 17)) f |= PKV_CPU_AVX512DQ;
        if (BIT(b7, 30)) f |= PKV_CPU_AVX512BW;
        if (BIT(b7, 31)) f |= PKV_CPU_AVX512VL;
        if (BIT(a1, 5)) f |= PKV_CPU_AVX512BF16;
        if (BIT(d7, 23)) f |= PKV_CPU_AVX512FP16;
    }
    /* tile config + tile data state, then the per-process permission */
    if (BIT(d7, 24) && (xcr0 & 0x60000) == 0x60000 && amx_permitted()) {
        f |= PKV_CPU_AMX_TILE;
        if (BIT(d7, 22)) f |= PKV_CPU_AMX_BF16;
    }
    return f;
}
#endif

/* ---- the table of levels: what each needs ---- */
#define X86_AVX2 (PKV_CPU_AVX | PKV_CPU_AVX2 | PKV_CPU_FMA | PKV_CPU_F16C)
#define X86_AVX512 (X86_AVX2 | PKV_CPU_AVX512F | PKV_CPU_AVX512BW | PKV_CPU_AVX512VL | PKV_CPU_AVX512DQ | \
                    PKV_CPU_AVX512BF16)
static const struct level {
    const char *name;
    uint64_t needs;
} levels[PKV__ISA_COUNT] = {
    [PKV_ISA_SCALAR] = {"scalar", 0},
    [PKV_ISA_AVX2] = {"avx2", X86_AVX2},
    [PKV_ISA_AVX512] = {"avx512", X86_AVX512},
    [PKV_ISA_AMX] = {"amx", X86_AVX512 | PKV_CPU_AMX_TILE | PKV_CPU_AMX_BF16},
};

static const char *const feature_names[] = {"sse4.2",     "avx",        "avx2",       "fma",
                                            "f16c",       "avx512f",    "avx512bw",   "avx512vl",
                                            "avx512dq",   "avx512bf16", "avx512fp16", "amx-tile",
                                            "amx-bf16"};

static struct {
    uint64_t features;
    int active, cap, status;
    char detail[160];
} state;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;

static int level_ok(uint64_t f, int isa) { return (f & levels[isa].needs) == levels[isa].needs; }

static void state_init(void) {
#if defined(__x86_64__) || defined(__i386__)
    state.features = detect_x86();
#else
    state.features = 0;
#endif
    int best = PKV_ISA_SCALAR;
    for (int i = 0; i < PKV__ISA_COUNT; i++)
        if (level_ok(state.features, i)) best = i;
    state.cap = PKV__ISA_COUNT - 1;
    state.status = PKV_OK;
    const char *env = getenv("PKV_ISA");
    if (env && *env) {
        int want = -1;
        for (int i = 0; i < PKV__ISA_COUNT; i++)
            if (strcmp(env, levels[i].name) == 0) want = i;
        if (want < 0) {
            state.status = PKV_ERR_INVALID;
            snprintf(state.detail, sizeof state.detail,
                     "PKV_ISA=%.40s is not one of scalar, avx2, avx512, amx: ignored, using %s", env,
                     levels[best].name);
        } else {
            state.cap = want;
            int pick = want;
            while (pick > 0 && !level_ok(state.features, pick)) pick--;
            if (pick != want) {
                state.status = PKV_ERR_INVALID;
                snprintf(state.detail, sizeof state.detail, "PKV_ISA=%s: this CPU cannot run %s, using %s", env, env,
                         levels[pick].name);
            }
            best = pick;
        }
    }
    state.active = best;
}

static void ensure(void) { pthread_once(&state_once, state_init); }

uint64_t pkv__cpu_detect(void) {
    ensure();
    return state.features;
}

int pkv__isa_cap(void) {
    ensure();
    return state.cap;
}

uint64_t pkv_cpu_features(void) { return pkv__cpu_detect(); }

const char *pkv_cpu_feature_name(int bit) {
    return bit >= 0 && (size_t)bit < sizeof feature_names / sizeof feature_names[0] ? feature_names[bit] : NULL;
}

const char *pkv_isa_label(int isa) { return isa >= 0 && isa < PKV__ISA_COUNT ? levels[isa].name : NULL; }

int pkv_isa_supported(int isa) {
    return isa >= 0 && isa < PKV__ISA_COUNT && level_ok(pkv__cpu_detect(), isa);
}

int pkv_isa_active(void) {
    ensure();
    return state.active;
}

const char *pkv_isa_name(void) { return levels[pkv_isa_active()].name; }

int pkv_isa_status(char *detail, size_t cap) {
    ensure();
    if (detail && cap) snprintf(detail, cap, "%s", state.detail);
    return state.status;
}
