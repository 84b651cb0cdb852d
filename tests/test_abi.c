/* The public struct pkv_attn_args is an ABI that bindings mirror field by field:
 * its field order, types and therefore offsets on LP64 must never change. */
#include <stddef.h>

#include "test.h"

/* The growable-struct rule of pagedkv.h, seen from callers built against an
 * older header (a smaller size) and a newer one (a larger size). */
static void test_sizes(void) {
    CHECK_INT(pkv_version_number(), PKV_VERSION_NUMBER);
    CHECK(strcmp(pkv_version(), PKV_VERSION_STRING) == 0);
    /* A config from a newer header: unknown fields zero are defaults, else refused. */
    struct { pkv_config cfg; uint64_t newer[2]; } big;
    memset(&big, 0, sizeof big);
    pkv_config_init(&big.cfg);
    CHECK_INT(big.cfg.size, sizeof(pkv_config));
    big.cfg.size = sizeof big;
    pkv_cache *c = NULL;
    CHECK_OK(pkv_cache_create(&big.cfg, &c));
    pkv_cache_destroy(c);
    big.newer[1] = 1;
    CHECK_STATUS(pkv_cache_create(&big.cfg, &c), PKV_ERR_INVALID);
    CHECK(c == NULL);
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.size = 0; /* never initialized */
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
    cfg.size = 84; /* below the first layout's 88 bytes */
    CHECK_STATUS(pkv_cache_create(&cfg, &c), PKV_ERR_INVALID);
    cfg.size = 88; /* a 1.0 / 1.1 caller (no window field): accepted, full attention */
    CHECK_OK(pkv_cache_create(&cfg, &c));
    pkv_cache_destroy(c);
    c = NULL;
    pkv_config_init(&cfg);
    cfg.num_blocks = 7;
    CHECK_OK(pkv_cache_create(&cfg, &c));
    /* Output structs: filled up to the caller's size, never past it. */
    struct { pkv_stats st; uint64_t guard; } out;
    memset(&out, 0xab, sizeof out);
    out.st.size = sizeof out.st;
    CHECK_OK(pkv_cache_stats(c, &out.st));
    CHECK_INT(out.st.size, sizeof out.st);
    CHECK_INT(out.st.num_blocks, 7);
    CHECK(out.guard == 0xababababababababull);
    pkv_stats st = PKV_STATS_INIT;
    st.size = 8;
    CHECK_STATUS(pkv_cache_stats(c, &st), PKV_ERR_INVALID);
    struct { pkv_config cfg; uint64_t guard; } got;
    memset(&got, 0xcd, sizeof got);
    got.cfg.size = sizeof got.cfg;
    CHECK_OK(pkv_cache_config(c, &got.cfg));
    CHECK_INT(got.cfg.num_blocks, 7);
    CHECK(got.guard == 0xcdcdcdcdcdcdcdcdull);
    got.cfg.size = 0;
    CHECK_STATUS(pkv_cache_config(c, &got.cfg), PKV_ERR_INVALID);
    pkv_cache_destroy(c);
    /* Attention arguments: an uninitialized size is refused by both paths. */
    pkv_attn_args a;
    pkv_attn_args_init(&a);
    CHECK_INT(a.size, sizeof a);
    CHECK(a.q == NULL && a.batch == 0 && a.causal == 0);
    a.size = 0;
    CHECK_STATUS(pkv_attn_reference(&a), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_attn(&a, NULL), PKV_ERR_INVALID);
}

int main(void) {
    test_sizes();
#if UINTPTR_MAX == 0xffffffffffffffffu
    /* LP64: the size, nine int32 geometry fields, causal, scale, two dtypes, then
     * pointers (the size took what was padding before q: pointers kept their offsets). */
    CHECK_INT(offsetof(pkv_attn_args, size), 0);
    CHECK_INT(offsetof(pkv_attn_args, batch), 4);
    CHECK_INT(offsetof(pkv_attn_args, s_q), 8);
    CHECK_INT(offsetof(pkv_attn_args, h_q), 12);
    CHECK_INT(offsetof(pkv_attn_args, h_kv), 16);
    CHECK_INT(offsetof(pkv_attn_args, d), 20);
    CHECK_INT(offsetof(pkv_attn_args, dv), 24);
    CHECK_INT(offsetof(pkv_attn_args, block_size), 28);
    CHECK_INT(offsetof(pkv_attn_args, max_blocks_per_seq), 32);
    CHECK_INT(offsetof(pkv_attn_args, num_blocks), 36);
    CHECK_INT(offsetof(pkv_attn_args, causal), 40);
    CHECK_INT(offsetof(pkv_attn_args, softmax_scale), 44);
    CHECK_INT(offsetof(pkv_attn_args, q_dtype), 48);
    CHECK_INT(offsetof(pkv_attn_args, kv_dtype), 52);
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
    CHECK_INT(offsetof(pkv_attn_args, window), 136);
    CHECK_INT(sizeof(pkv_attn_args), 144);
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
