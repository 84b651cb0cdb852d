"""The README's Python quickstart: metadata-mode bookkeeping, then attention over a host cache."""
import numpy as np
import pagedkv

with pagedkv.Cache(num_blocks=1024, block_size=64) as cache:   # metadata mode: block ids only
    a = cache.sequence()
    slots, cow = a.append(100)                 # prefill: 100 slots to write
    b = a.fork()                               # b shares a's 2 blocks
    slots, cow = b.append(1)                   # copy-on-write of block 1
    print("append:", slots, "copy", cow)
    block_table, cache_seqlens = cache.export_flashmla([a, b])
    print(block_table, cache_seqlens)
    slots, copies = cache.append_batch([a, b])  # one decode step for the whole batch
    print("decode step slots", slots, "copies", copies.tolist())

# Attention over a host cache (MLA: V is the first 512 dims of K), bf16 as uint16.
with pagedkv.Cache(num_blocks=8, block_size=64, storage="host", kv_dtype="bf16") as cache:
    s = cache.sequence()
    rows = np.random.default_rng(0).standard_normal((100, 1, 576)).astype(np.float32)
    cache.write(0, s.append(100), rows)        # float32 rows, stored as bf16
    k_cache, _ = cache.arenas(0)               # zero-copy [8, 64, 1, 576] uint16 view
    block_table, cache_seqlens = cache.export_flashmla([s])
    q = pagedkv.f32_to_bf16(np.ones((1, 1, 16, 576), np.float32))
    out, lse = pagedkv.attention(q, k_cache, block_table, cache_seqlens, 192 ** -0.5, dv=512, dtype="bf16")
    print(out.shape, lse.shape, cache.stats()["used_blocks"], "blocks used")
