"""Tiers, extra keys and swap from Python (README.md's Python section)."""
import numpy as np
import pagedkv

# Host mode with a host-memory tier below a 4-block pool.
with pagedkv.Cache(num_blocks=4, block_size=4, storage="host", kv_dtype="f32", d=8, dv=8,
                   prefix_cache=True) as cache:
    cache.add_host_tier(16)                    # before any sequence
    prompt = list(range(8))
    s = cache.sequence()
    s.set_adapter(7)                           # LoRA adapter 7: an extra key of its blocks
    rows = np.arange(8 * 8, dtype=np.float32).reshape(8, 1, 8)
    cache.write(0, s.append(prompt), rows)
    s.register()
    s.free()
    print("evicted", cache.evict(2), "-> tier 0 holds", cache.tier_stats(0)["blocks"])
    print("peek, no adapter:", cache.peek(prompt), "adapter 7:", cache.peek(prompt, adapter=7))
    t, cached = cache.lookup(prompt, adapter=7)  # promoted back into the pool
    k, _ = cache.read(0, (t.blocks[:, None] * 4 + np.arange(4)).ravel())  # the slots of its 8 tokens
    print("cached", cached, "rows equal:", bool(np.array_equal(k, rows)))
    t.swap_out()                               # preemption: its blocks go back to the pool
    print("swapped", t.swapped, "used blocks", cache.stats()["used_blocks"])
    t.swap_in()
    print("back, len", len(t), "extra keys", t.extra_keys())

# Metadata mode: the library queues the copies, the engine performs them.
with pagedkv.Cache(num_blocks=4, block_size=4, prefix_cache=True) as cache:
    cache.add_host_tier(16)                    # 16 slots of pinned host memory, say
    s = cache.sequence()
    s.append([1, 2, 3, 4])
    s.register()
    s.free()
    cache.evict(1)
    for x in cache.drain_transfers():
        print(x["op"], "device block", x["block"], "-> tier", x["tier"], "slot", x["slot"])
