/* Which kernels pkv_attn runs: the ISA level comes from the CPU feature module
 * (src/cpu.c: features, the level table, PKV_ISA); each level's file offers
 * kernels per dtype pair, and a level without kernels for a pair falls back to
 * the next lower one. */
#include "cpu.h"
#include "kernels.h"

const attn_ops *attn_ops_for(int isa, int q_dtype, int kv_dtype) {
    switch (isa) {
    case PKV_ISA_AMX: return attn_ops_amx(q_dtype, kv_dtype);
    case PKV_ISA_AVX512: return attn_ops_avx512(q_dtype, kv_dtype);
    case PKV_ISA_AVX2: return attn_ops_avx2(q_dtype, kv_dtype);
    case PKV_ISA_SCALAR: return attn_ops_scalar(q_dtype, kv_dtype);
    default: return NULL;
    }
}

const attn_ops *attn_ops_best(int q_dtype, int kv_dtype) {
    for (int isa = pkv_isa_active(); isa >= 0; isa--) {
        const attn_ops *o = attn_ops_for(isa, q_dtype, kv_dtype);
        if (o) return o;
    }
    return NULL;
}

static int q_ok(int t) { return t == PKV_F32 || t == PKV_F16 || t == PKV_BF16; }

const char *pkv_attn_kernel_name(int q_dtype, int kv_dtype) {
    if (!q_ok(q_dtype) || !(q_ok(kv_dtype) || kv_dtype == PKV_FP8_MLA656)) return NULL;
    const attn_ops *o = attn_ops_best(q_dtype, kv_dtype);
    return o ? o->name : NULL;
}
