/* The public struct pkv_attn_args is an ABI that bindings mirror field by field:
 * its field order, types and therefore offsets on LP64 must never change. */
#include <stddef.h>

#include "test.h"

int main(void) {
#if UINTPTR_MAX == 0xffffffffffffffffu
    /* LP64: nine int32 geometry fields, causal, scale, two dtypes, then pointers. */
    CHECK_INT(offsetof(pkv_attn_args, batch), 0);
    CHECK_INT(offsetof(pkv_attn_args, s_q), 4);
    CHECK_INT(offsetof(pkv_attn_args, h_q), 8);
    CHECK_INT(offsetof(pkv_attn_args, h_kv), 12);
    CHECK_INT(offsetof(pkv_attn_args, d), 16);
    CHECK_INT(offsetof(pkv_attn_args, dv), 20);
    CHECK_INT(offsetof(pkv_attn_args, block_size), 24);
    CHECK_INT(offsetof(pkv_attn_args, max_blocks_per_seq), 28);
    CHECK_INT(offsetof(pkv_attn_args, num_blocks), 32);
    CHECK_INT(offsetof(pkv_attn_args, causal), 36);
    CHECK_INT(offsetof(pkv_attn_args, softmax_scale), 40);
    CHECK_INT(offsetof(pkv_attn_args, q_dtype), 44);
    CHECK_INT(offsetof(pkv_attn_args, kv_dtype), 48);
    CHECK_INT(offsetof(pkv_attn_args, q), 56);
    CHECK_INT(offsetof(pkv_attn_args, k_cache), 64);
    CHECK_INT(offsetof(pkv_attn_args, v_cache), 72);
    CHECK_INT(offsetof(pkv_attn_args, block_table), 80);
    CHECK_INT(offsetof(pkv_attn_args, cache_seqlens), 88);
    CHECK_INT(offsetof(pkv_attn_args, out), 96);
    CHECK_INT(offsetof(pkv_attn_args, lse), 104);
    CHECK_INT(offsetof(pkv_attn_args, indices), 112);
    CHECK_INT(offsetof(pkv_attn_args, topk), 120);
    CHECK_INT(offsetof(pkv_attn_args, attn_sink), 128);
    CHECK_INT(sizeof(pkv_attn_args), 136);
#endif
    CHECK_INT(sizeof(pkv_seq), 8);
    CHECK_INT(sizeof(pkv_block_copy), 8);
    /* fixed status and dtype values */
    CHECK_INT(PKV_OK, 0);
    CHECK_INT(PKV_ERR_NULL, -1);
    CHECK_INT(PKV_ERR_NOMEM, -3);
    CHECK_INT(PKV_ERR_CAPACITY, -4);
    CHECK_INT(PKV_F32, 0);
    CHECK_INT(PKV_F16, 1);
    CHECK_INT(PKV_BF16, 2);
    CHECK_INT(PKV_FP8_MLA656, 3);
    return test_report("test_abi");
}
