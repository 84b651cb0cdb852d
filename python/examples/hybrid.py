"""The README's Python KV groups example (examples/hybrid.c in Python): a Gemma-3-like
model (per 6 layers: 1 full-attention layer, 5 with a sliding window of W = 1024) as two
groups in metadata mode. Every append takes blocks in both groups or in neither."""
import pagedkv

with pagedkv.Groups([dict(num_blocks=512, num_layers=1),                    # the full group
                     dict(num_blocks=128, num_layers=5, window=1024)]) as groups:
    s = groups.sequence()
    slots, cows = s.append(8000)               # prefill: one slots array per group
    for _ in range(100):
        slots, cows = s.append(1)              # decode steps; cows[i]: group i's copy or None
    full, win = groups.cache(0), groups.cache(1)
    print(f"{len(s)} tokens; full group holds {full.stats()['used_blocks']} blocks, "
          f"window group {win.stats()['used_blocks']}")
    table, lens = win.export_flashmla([s.member(1)])  # -1 where the window released a block
    print("window group table:", table[0, :2], "...", table[0, -2:], lens)
    try:
        groups.sequence().append(8000)         # the window group's pool is short
    except pagedkv.CapacityError as e:
        print("second prefill:", e.detail)
    print("full group still holds", full.stats()["used_blocks"], "blocks")
