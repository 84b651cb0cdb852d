/* Run-time choice of the attention kernels: CPUID (and XGETBV for the OS's
 * register state), overridden by PKV_ISA=scalar|avx2|avx512. The choice is the
 * library's one piece of global mutable state: computed once, then read only. */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* Linux keeps AMX tile data off until a process asks (arch_prctl
 * ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); returns 1 when granted. */
static int amx_permitted(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
#else
    return 0;
#endif
}

static unsigned long long xgetbv0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

/* Bitmask of ATTN_ISA_* the CPU and OS support (scalar always). */
static unsigned detect(void) {
    unsigned m = 1u << ATTN_ISA_SCALAR;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return m;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx) return m;
    const unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 6) != 6) return m; /* XMM and YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return m;
    const int avx2 = (b >> 5) & 1;
    if (avx2 && fma && f16c) m |= 1u << ATTN_ISA_AVX2;
    const int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    unsigned a1 = 0, b1, c1, d1;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    const int bf16 = (a1 >> 5) & 1;
    /* opmask, ZMM_Hi256, Hi16_ZMM state */
    if ((m & (1u << ATTN_ISA_AVX2)) && f && dq && bw && vl && bf16 && (xcr0 & 0xe0) == 0xe0)
        m |= 1u << ATTN_ISA_AVX512;
    const int amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
    if ((m & (1u << ATTN_ISA_AVX512)) && amx_bf16 && amx_tile && (xcr0 & 0x60000) == 0x60000 && amx_permitted())
        m |= 1u << ATTN_ISA_AMX;
    return m;
}
#else
static unsigned detect(void) { return 1u << ATTN_ISA_SCALAR; }
#endif

static const char *const labels[ATTN_ISA_COUNT] = {"scalar", "avx2", "avx512", "amx"};

/* Set once; a racing first call computes the same value, so a relaxed store is enough. */
static int active_isa = -1;
static unsigned supported_mask;

static void init_once(void) {
    if (__atomic_load_n(&active_isa, __ATOMIC_ACQUIRE) >= 0) return;
    const unsigned m = detect();
    int best = ATTN_ISA_SCALAR;
    for (int i = 0; i < ATTN_ISA_COUNT; i++)
        if (m & (1u << i)) best = i;
    const char *env = getenv("PKV_ISA");
    if (env) {
        for (int i = 0; i < ATTN_ISA_COUNT; i++)
            if (strcmp(env, labels[i]) == 0) {
                /* an unsupported request falls back to the best supported path below it */
                int pick = i;
                while (pick > 0 && !(m & (1u << pick))) pick--;
                best = pick;
            }
    }
    __atomic_store_n(&supported_mask, m, __ATOMIC_RELAXED);
    __atomic_store_n(&active_isa, best, __ATOMIC_RELEASE);
}

int attn_isa_active(void) {
    init_once();
    return __atomic_load_n(&active_isa, __ATOMIC_ACQUIRE);
}

int attn_isa_supported(int isa) {
    init_once();
    return isa >= 0 && isa < ATTN_ISA_COUNT && ((__atomic_load_n(&supported_mask, __ATOMIC_RELAXED) >> isa) & 1u);
}

const char *attn_isa_label(int isa) {
    return isa >= 0 && isa < ATTN_ISA_COUNT ? labels[isa] : "unknown";
}

const char *attn_isa_name(void) { return attn_isa_label(attn_isa_active()); }

const attn_ops *attn_ops_for(int isa, int q_dtype, int kv_dtype) {
    switch (isa) {
    case ATTN_ISA_AMX: return attn_ops_amx(q_dtype, kv_dtype);
    case ATTN_ISA_AVX512: return attn_ops_avx512(q_dtype, kv_dtype);
    case ATTN_ISA_AVX2: return attn_ops_avx2(q_dtype, kv_dtype);
    case ATTN_ISA_SCALAR: return attn_ops_scalar(q_dtype, kv_dtype);
    default: return NULL;
    }
}

const attn_ops *attn_ops_best(int q_dtype, int kv_dtype) {
    for (int isa = attn_isa_active(); isa >= 0; isa--) {
        const attn_ops *o = attn_ops_for(isa, q_dtype, kv_dtype);
        if (o) return o;
    }
    return NULL;
}

const char *attn_kernel_name(int q_dtype, int kv_dtype) {
    const attn_ops *o = attn_ops_best(q_dtype, kv_dtype);
    return o ? o->name : "none";
}
