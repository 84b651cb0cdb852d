/* The README's tier example: a host-mode cache with a file tier below its pool.
 * Run it twice on the same directory: the first run computes a prompt's KV,
 * registers it and lets the pool evict it to the file tier; the second run (a
 * new process) finds the prompt's blocks in the directory and serves them.
 *   build/examples/tier_restart DIR */
#include <stdio.h>
#include <string.h>

#include "pagedkv.h"

enum { N = 200, D = 576 };

static float kv(int32_t token, int32_t pos, int i) { return (float)((token * 31 + pos * 7 + i) % 97) / 97.0f; }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    pkv_config cfg;
    pkv_config_init(&cfg); /* MLA geometry: 1 layer, h_kv 1, d 576, bf16 */
    cfg.num_blocks = 8;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.flags = PKV_FLAG_PREFIX_CACHE;
    cfg.hash_key_set = 1; /* the same key in every run: a deployment secret */
    memcpy(cfg.hash_key, "example-key-0001", 16);
    pkv_cache *c;
    if (pkv_cache_create(&cfg, &c) != PKV_OK) return 1;
    size_t blob;
    pkv_tier_blob_size(c, &blob);
    pkv_tier_backend file;
    char why[256] = "";
    if (pkv_tier_file_open(argv[1], 64 * (uint64_t)blob, blob, PKV_FILE_TIER_FSYNC, &file, why) != PKV_OK ||
        pkv_cache_add_tier(c, &file, 64, 0) != PKV_OK) {
        fprintf(stderr, "file tier: %s %s\n", why, pkv_cache_last_error(c));
        return 1;
    }
    pkv_tier_stats ts = PKV_TIER_STATS_INIT;
    pkv_tier_stats_get(c, 0, &ts);
    printf("file tier %s: %lld blocks of %zu bytes found\n", argv[1], (long long)ts.blocks, blob);

    int32_t prompt[N];
    for (int32_t i = 0; i < N; i++) prompt[i] = 1000 + i;
    pkv_seq s;
    int32_t cached;
    pkv_prefix_lookup(c, 0, prompt, N, &s, &cached);
    if (cached == 0) {
        /* Compute (here: make up) the prompt's KV, write it, register it. */
        int64_t slots[N];
        static float rows[N][D];
        pkv_seq_append(c, s, N, prompt, slots, NULL);
        for (int32_t t = 0; t < N; t++)
            for (int i = 0; i < D; i++) rows[t][i] = kv(prompt[t], t, i);
        pkv_store_write(c, 0, slots, N, rows, NULL, PKV_F32);
        pkv_prefix_register(c, s, NULL, NULL);
        pkv_seq_free(c, s);
        /* Other requests take the whole pool: the prompt's 3 full blocks go to the file tier. */
        pkv_seq other;
        pkv_seq_create(c, 0, &other);
        pkv_seq_append(c, other, 8 * 64, NULL, NULL, NULL);
        pkv_seq_free(c, other);
        pkv_tier_stats_get(c, 0, &ts);
        printf("computed %d tokens; %lld blocks written to the file tier\n", N, (long long)ts.stores);
    } else {
        /* Served from the file tier: check every value against what run 1 wrote. */
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
        printf("restarted: %d of %d prompt tokens served from the file tier (%lld blocks promoted, %d values off)\n",
               cached, N, (long long)ts.hits, bad);
        pkv_seq_free(c, s);
    }
    int st = pkv_cache_check(c);
    pkv_cache_destroy(c);
    return st == PKV_OK ? 0 : 1;
}
