/* The README's example: a metadata-mode cache for a GPU engine. */
#include <stdio.h>
#include "pagedkv.h"

int main(void) {
    pkv_config cfg;
    pkv_config_init(&cfg);               /* 1024 blocks of 64 slots, metadata mode */
    pkv_cache *cache;
    if (pkv_cache_create(&cfg, &cache) != PKV_OK) return 1;

    pkv_seq a, b;
    pkv_block_copy cow;
    int64_t slots[100];
    pkv_seq_create(cache, 0, &a);
    pkv_seq_append(cache, a, 100, NULL, slots, &cow);   /* prefill: 100 slots to write */
    pkv_seq_fork(cache, a, &b);                         /* b shares a's 2 blocks */
    int st = pkv_seq_append(cache, b, 1, NULL, slots, &cow); /* copy-on-write of block 1 */
    printf("append: %s, copy block %d -> %d, new slot %lld\n", pkv_strerror(st), cow.src, cow.dst,
           (long long)slots[0]);

    pkv_seq batch[2] = {a, b};
    int32_t table[2 * 4], seqlens[2], need;
    pkv_export_flashmla(cache, batch, 2, table, 4, seqlens, &need);
    printf("block_table = [[%d %d %d] [%d %d %d]], cache_seqlens = [%d %d]\n", table[0], table[1], table[2],
           table[4], table[5], table[6], seqlens[0], seqlens[1]);
    pkv_cache_destroy(cache);
    return 0;
}
