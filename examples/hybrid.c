/* The README's hybrid example: a Gemma-3-like model (5 sliding-window layers of
 * W = 1024 for every full-attention layer) as two KV groups in metadata mode.
 * One group sequence takes blocks in both groups at every append; the window
 * group releases what leaves the window, so it holds about W tokens however
 * long the sequence grows, while the full group holds them all. */
#include <stdio.h>
#include "pagedkv.h"

int main(void) {
    pkv_config full, win;
    pkv_config_init(&full);      /* metadata mode, block size 64 */
    full.num_blocks = 512;
    full.num_layers = 1;         /* per 6 layers: 1 full ... */
    pkv_config_init(&win);
    win.num_blocks = 128;
    win.num_layers = 5;          /* ... and 5 sliding-window layers */
    win.window = 1024;
    const pkv_config *cfgs[2] = {&full, &win};
    pkv_groups *g;
    if (pkv_groups_create(cfgs, 2, &g) != PKV_OK) return 1;

    pkv_seq s;
    pkv_block_copy cow[2];
    static int64_t full_slots[8192], win_slots[8192];
    int64_t *slots[2] = {full_slots, win_slots};
    pkv_groups_seq_create(g, 0, &s);
    int st = pkv_groups_append(g, s, 8000, NULL, slots, cow);          /* prefill */
    for (int t = 0; t < 100 && st == PKV_OK; t++) st = pkv_groups_append(g, s, 1, NULL, slots, cow); /* decode */
    int32_t len, held[2];
    pkv_groups_length(g, s, &len);
    for (int i = 0; i < 2; i++) {
        pkv_cache *c;
        pkv_seq m;
        pkv_stats stats = PKV_STATS_INIT;
        pkv_groups_cache(g, i, &c);
        pkv_groups_seq_handle(g, s, i, &m);   /* the member: exports and attention use it */
        pkv_cache_stats(c, &stats);
        held[i] = stats.used_blocks;
    }
    printf("%s: %d tokens; full group holds %d blocks, window group %d blocks\n", pkv_strerror(st), len, held[0],
           held[1]);
    /* the window group's pool is short of a second 8000-token prefill: neither group takes a block */
    pkv_seq t;
    pkv_groups_seq_create(g, 0, &t);
    st = pkv_groups_append(g, t, 8000, NULL, slots, cow);
    printf("second prefill: %s (%s)\n", pkv_strerror(st), pkv_groups_last_error(g));
    pkv_cache *fc;
    pkv_stats fs = PKV_STATS_INIT;
    pkv_groups_cache(g, 0, &fc);
    pkv_cache_stats(fc, &fs);
    printf("full group still holds %d blocks\n", fs.used_blocks);
    pkv_groups_destroy(g);
    return 0;
}
