/* The README's extra-keys example: one prompt served under two LoRA adapters and
 * with two different images; KV is shared only where adapter, image and tokens agree. */
#include <stdio.h>
#include "pagedkv.h"

/* Serves prompt[0..n) with extra keys x: returns the tokens found cached. */
static int32_t serve(pkv_cache *cache, const int32_t *prompt, int32_t n, const pkv_extra_keys *x) {
    pkv_seq seq;
    pkv_block_copy cow;
    int32_t cached = 0;
    if (pkv_prefix_lookup_ex(cache, 0, prompt, n, x, &seq, &cached) != PKV_OK) return -1;
    /* seq now carries x's adapter and image: the blocks it fills get them in their identity */
    if (pkv_seq_append(cache, seq, n - cached, prompt + cached, NULL, &cow) != PKV_OK) return -1;
    /* ... run the model (with the adapter and the image's embeddings), write K/V ... */
    pkv_prefix_register(cache, seq, NULL, NULL);
    pkv_seq_free(cache, seq);
    return cached;
}

int main(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.block_size = 16;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    pkv_cache *cache;
    if (pkv_cache_create(&cfg, &cache) != PKV_OK) return 1;

    enum { LEN = 64, IMG = 20, IMG_LEN = 32 };
    int32_t prompt[LEN]; /* text, 32 image placeholder tokens at [20, 52), text */
    for (int i = 0; i < LEN; i++) prompt[i] = i >= IMG && i < IMG + IMG_LEN ? 32000 : 100 + i;
    pkv_mm_range img = {IMG, IMG_LEN, {0}};
    const char *what[] = {"adapter 1, image A", "adapter 1, image A", "adapter 2, image A", "adapter 1, image B"};
    const uint64_t adapter[] = {1, 1, 2, 1};
    const int32_t want[] = {0, 64, 0, 16};
    int ok = 1;
    for (int r = 0; r < 4; r++) {
        for (int i = 0; i < 16; i++) img.hash[i] = (uint8_t)(r == 3 ? 0xb0 + i : 0xa0 + i); /* the engine's image hash */
        pkv_extra_keys x = PKV_EXTRA_KEYS_INIT;
        x.adapter_id = adapter[r];
        x.num_mm = 1;
        x.mm = &img;
        int32_t cached = serve(cache, prompt, LEN, &x);
        printf("%s: %d of %d prompt tokens cached\n", what[r], cached, LEN);
        ok = ok && cached == want[r];
    }
    pkv_cache_destroy(cache);
    return ok ? 0 : 1;
}
