/* The README's prefix-caching example, built and run with the tests: two
 * requests share a 200-token system prompt; the second finds its full blocks
 * cached (3 blocks of 64 = 192 tokens) and prefills only the rest. */
#include <stdio.h>

#include "pagedkv.h"

int main(void) {
    pkv_config cfg;
    pkv_config_init(&cfg); /* 1024 blocks of 64 tokens, metadata mode */
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    pkv_cache *cache;
    if (pkv_cache_create(&cfg, &cache) != PKV_OK) return 1;

    enum { SYSTEM = 200, LEN = 300 };
    int32_t prompt[2][LEN]; /* the same system prompt, then each user's question */
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < LEN; i++) prompt[r][i] = i < SYSTEM ? 1000 + i : 7000 * (r + 1) + i;

    int32_t cached = 0;
    for (int r = 0; r < 2; r++) {
        pkv_seq seq;
        pkv_block_copy cow;
        if (pkv_prefix_lookup(cache, 0 /* namespace */, prompt[r], LEN, &seq, &cached) != PKV_OK) return 1;
        printf("request %d: %d of %d prompt tokens cached, prefill %d\n", r + 1, cached, LEN, LEN - cached);
        /* Slots for the tokens to compute (pass a slots array to get them). */
        if (pkv_seq_append(cache, seq, LEN - cached, prompt[r] + cached, NULL, &cow) != PKV_OK) return 1;
        /* ... run the model over the new tokens, write their K/V rows ... */
        pkv_prefix_register(cache, seq, NULL, NULL); /* its full blocks become findable */
        pkv_seq_free(cache, seq);                    /* cached blocks stay, evictable */
    }
    pkv_stats st = PKV_STATS_INIT;
    pkv_cache_stats(cache, &st);
    printf("hit rate %.0f%%, %d blocks cached\n", 100.0 * st.prefix_hit_tokens / st.prefix_query_tokens,
           st.cached_blocks);
    pkv_cache_destroy(cache);
    return cached == 192 ? 0 : 1;
}
