/* The README's Redis example: two processes share a prompt's KV through Redis.
 * Run it with the same URL in two processes (or on two machines): the first
 * finds nothing, computes the prompt's KV and registers it, which writes its
 * blocks to Redis (write-through); the second finds them there, promotes them
 * into its own pool and checks every value. Needs `make REDIS=1`.
 *   build/redis/examples/redis_share redis://127.0.0.1:6379 */
#include <stdio.h>
#include <string.h>

#include "pagedkv.h"

enum { N = 200, D = 576 };

static float kv(int32_t token, int32_t pos, int i) { return (float)((token * 31 + pos * 7 + i) % 97) / 97.0f; }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s redis://HOST:PORT | redis+cluster://HOST:PORT,...\n", argv[0]);
        return 2;
    }
    pkv_config cfg;
    pkv_config_init(&cfg); /* MLA geometry: 1 layer, h_kv 1, d 576, bf16 */
    cfg.num_blocks = 8;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    cfg.hash_key_set = 1; /* the same key in every process: a deployment secret */
    memcpy(cfg.hash_key, "example-key-0001", 16);
    pkv_cache *c;
    if (pkv_cache_create(&cfg, &c) != PKV_OK) return 1;
    pkv_tier_backend redis;
    char why[256] = "";
    int st = pkv_tier_redis_open(argv[1], cfg.hash_key, "example:", 1000, &redis, why);
    if (st != PKV_OK || pkv_cache_add_tier(c, &redis, 64, PKV_TIER_SHARED | PKV_TIER_WRITE_THROUGH) != PKV_OK) {
        fprintf(stderr, "redis tier: %s %s\n", why, st == PKV_OK ? pkv_cache_last_error(c) : "");
        pkv_cache_destroy(c);
        return 1;
    }
    int32_t prompt[N];
    for (int32_t i = 0; i < N; i++) prompt[i] = 1000 + i;
    pkv_seq s;
    int32_t cached;
    pkv_prefix_lookup(c, 0, prompt, N, &s, &cached);
    pkv_tier_stats ts = PKV_TIER_STATS_INIT;
    if (cached == 0) {
        /* Compute (here: make up) the prompt's KV, write it, register it. */
        int64_t slots[N];
        static float rows[N][D];
        pkv_seq_append(c, s, N, prompt, slots, NULL);
        for (int32_t t = 0; t < N; t++)
            for (int i = 0; i < D; i++) rows[t][i] = kv(prompt[t], t, i);
        pkv_store_write(c, 0, slots, N, rows, NULL, PKV_F32);
        pkv_prefix_register(c, s, NULL, NULL);
        pkv_tier_stats_get(c, 0, &ts);
        printf("computed %d tokens; %lld blocks written to Redis\n", N, (long long)ts.stores);
    } else {
        /* Served from Redis: check every value against what the other process wrote. */
        int32_t blocks[4], nb, bad = 0;
        pkv_seq_blocks(c, s, blocks, 4, &nb);
        static float back[N][D];
        int64_t slots[N];
        for (int32_t t = 0; t < cached; t++) slots[t] = (int64_t)blocks[t / 64] * 64 + t % 64;
        pkv_store_read(c, 0, slots, cached, &back[0][0], NULL);
        for (int32_t t = 0; t < cached; t++)
            for (int i = 0; i < D; i++) {
                float want = kv(prompt[t], t, i); /* as stored in bf16 */
                bad += (back[t][i] - want) * (back[t][i] - want) > 1e-4f;
            }
        pkv_tier_stats_get(c, 0, &ts);
        printf("%d of %d prompt tokens served from Redis (%lld blocks promoted, %d values off)\n", cached, N,
               (long long)ts.hits, bad);
    }
    pkv_seq_free(c, s);
    st = pkv_cache_check(c);
    pkv_cache_destroy(c);
    return st == PKV_OK ? 0 : 1;
}
