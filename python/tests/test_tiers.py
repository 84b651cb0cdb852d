"""The 1.1 API from Python: extra keys (adapters, multimodal ranges) in lookup and
peek, prefix evict / reset, KV events, host and file tiers, metadata-mode
transfers replayed on numpy "device" and "host" arrays, and swap out / in."""
import tempfile

import numpy as np
from helpers import pytest

import pagedkv

BS = 4
KEY = bytes(range(16))


def host_cache(num_blocks=4, **kw):
    return pagedkv.Cache(num_blocks=num_blocks, block_size=BS, storage="host", num_layers=2, h_kv=1, d=8, dv=8,
                         kv_dtype="f32", prefix_cache=True, **kw)


def arena_bytes(c, blocks):
    """The bytes of `blocks` in every layer's K arena (V is shared), as one array."""
    return np.concatenate([np.array(c.arenas(layer)[0][list(blocks)]).ravel() for layer in range(2)])


def fill(c, seq, slots, seed):
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal((len(slots), 1, 8)).astype(np.float32) for _ in range(2)]
    for layer in range(2):
        c.write(layer, slots, rows[layer])
    return rows


def scribble(c, n_blocks, value=7.0):
    """Takes every free block, overwrites it with `value`, frees it: stale bytes cannot pass for restored ones."""
    s = c.sequence()
    slots = s.append(n_blocks * BS)
    for layer in range(2):
        c.write(layer, slots, np.full((len(slots), 1, 8), value, np.float32))
    s.free()


# --------------------------------------------------------------------------- extra keys

def test_adapter_shares_only_under_equal_adapter():
    c = pagedkv.Cache(num_blocks=16, block_size=BS, prefix_cache=True)
    toks = list(range(100, 108))
    s = c.sequence()
    s.set_adapter(7)
    s.append(toks)
    assert s.register() == (2, 0)
    assert s.extra_keys() == (7, [])
    assert c.peek(toks) == (0, 0)
    assert c.peek(toks, adapter=7) == (8, 8)
    assert c.peek(toks, adapter=8) == (0, 0)
    plain, n = c.lookup(toks)
    assert n == 0 and len(plain) == 0
    other, n = c.lookup(toks, adapter=8)
    assert n == 0
    same, n = c.lookup(toks, 0, adapter=7)  # namespace positional, as before
    assert n == 8 and list(same.blocks) == list(s.blocks) and same.extra_keys() == (7, [])
    assert c.refcount(int(s.blocks[0])) == 2
    # a fork inherits the adapter
    assert s.fork().extra_keys()[0] == 7


def test_mm_ranges_share_only_under_equal_images():
    c = pagedkv.Cache(num_blocks=16, block_size=BS, prefix_cache=True)
    h1, h2 = b"\x01" * 16, b"\x02" * 16
    toks = [9] * 8
    s = c.sequence()
    s.add_mm(1, 2, h1)  # positions 1, 2: inside block 0
    s.append(toks)
    assert s.register() == (2, 0)
    assert s.extra_keys() == (0, [(1, 2, h1)])
    assert c.peek(toks, mm=[(1, 2, h1)])[0] == 8
    assert c.peek(toks, mm=[(1, 2, h2)])[0] == 0   # another image
    assert c.peek(toks, mm=[(0, 2, h1)])[0] == 0   # same image, other place
    assert c.peek(toks)[0] == 0                     # no image
    assert c.peek(toks, mm=[(1, 2, h1), (6, 1, h2)])[0] == 4  # an image in block 1 changes block 1 only
    t, n = c.lookup(toks, mm=[(1, 2, h1), (8, 3, h2)])
    assert n == 8 and list(t.blocks) == list(s.blocks)
    assert t.extra_keys() == (0, [(1, 2, h1), (8, 3, h2)])  # also the range past the cached part
    u, n = c.lookup(toks, mm=[(1, 2, h2)])
    assert n == 0 and u.extra_keys() == (0, [(1, 2, h2)])


def test_extra_key_errors():
    c = pagedkv.Cache(num_blocks=16, block_size=BS, prefix_cache=True)
    s = c.sequence()
    s.add_mm(0, 4, b"a" * 16)
    with pytest.raises(pagedkv.InvalidError):
        s.add_mm(2, 4, b"b" * 16)  # overlaps
    with pytest.raises(pagedkv.InvalidError, match="hash"):
        s.add_mm(8, 4, b"short")
    s.append(4)
    with pytest.raises(pagedkv.StateError):
        s.set_adapter(3)  # not empty
    assert s.extra_keys() == (0, [(0, 4, b"a" * 16)])
    with pytest.raises(pagedkv.InvalidError, match="mm"):
        c.lookup([1, 2, 3, 4], mm=[(0, 4)])
    with pytest.raises(pagedkv.InvalidError, match="mm"):
        c.peek([1, 2, 3, 4], mm=5)
    with pytest.raises(pagedkv.InvalidError):
        c.lookup([1, 2, 3, 4], mm=[(2, 2, b"x" * 16), (0, 2, b"y" * 16)])  # unsorted
    before = c.stats()
    with pytest.raises(pagedkv.InvalidError):
        c.lookup([1] * 8, mm=[(0, 0, b"x" * 16)])  # len 0
    assert c.stats()["used_blocks"] == before["used_blocks"]
    with pytest.raises(pagedkv.ModeError):
        pagedkv.Cache(num_blocks=4).peek([1, 2])


# --------------------------------------------------------------------------- evict, reset, events

def test_evict_reset_and_events():
    c = pagedkv.Cache(num_blocks=8, block_size=BS, prefix_cache=True)
    c.enable_events(16)
    toks = list(range(8))
    s = c.sequence(ns=3)
    s.append(toks)
    s.register()
    ev, dropped = c.drain_events()
    assert dropped == 0 and [e["kind"] for e in ev] == ["stored", "stored"]
    assert ev[0]["parent_key"] is None and ev[1]["parent_key"] == ev[0]["key"] and ev[0]["ns"] == 3
    with pytest.raises(pagedkv.StateError):
        c.reset_prefix()  # a sequence holds registered blocks
    assert c.evict(8) == 0  # held blocks are not evictable
    s.free()
    assert c.stats()["evictable_blocks"] == 2
    assert c.evict(1) == 1
    assert c.peek(toks, namespace=3) == (4, 4)  # the chain's leaf went first, its head stays
    assert c.drain_events()[0][0]["kind"] == "removed"
    c.reset_prefix()
    assert c.peek(toks, namespace=3) == (0, 0) and c.stats()["evictable_blocks"] == 0
    with pytest.raises(pagedkv.InvalidError):
        c.evict(-1)
    c.enable_events(0)
    with pytest.raises(pagedkv.StateError):
        c.drain_events()


# --------------------------------------------------------------------------- host and file tiers

def test_host_tier_promotes_evicted_blocks_with_equal_bytes():
    c = host_cache()
    c.add_host_tier(8)
    toks = list(range(50, 58))
    s = c.sequence()
    slots = s.append(toks)
    rows = fill(c, s, slots, 1)
    s.register()
    blocks = list(s.blocks)
    want = arena_bytes(c, blocks)
    s.free()
    assert c.evict(2) == 2
    st = c.tier_stats(0)
    assert st["kind"] == "host" and st["blocks"] == 2 and st["stores"] == 2 and st["capacity_blocks"] == 8
    assert c.peek(toks) == (8, 0)  # in the tier, not the pool
    scribble(c, 4)
    t, n = c.lookup(toks)
    assert n == 8
    assert c.tier_stats(0)["hits"] == 2
    assert np.array_equal(arena_bytes(c, t.blocks), want)
    for layer in range(2):
        k, _ = c.read(layer, _slots(t))
        assert np.array_equal(k, rows[layer])
    assert c.peek(toks) == (8, 8)


def _slots(seq):
    b = seq.blocks.astype(np.int64)
    return (b[:, None] * BS + np.arange(BS)).ravel()[:len(seq)]


def test_tier_errors():
    with pytest.raises(pagedkv.ModeError):
        pagedkv.Cache(num_blocks=4, storage="host", kv_dtype="f32", d=8, dv=8).add_host_tier(4)
    c = host_cache()
    with pytest.raises(pagedkv.InvalidError):
        c.add_host_tier(0)
    held = c.sequence()
    held.append(1)
    with pytest.raises(pagedkv.StateError):
        c.add_host_tier(4)  # the cache holds a sequence
    with pytest.raises(pagedkv.InvalidError):
        c.tier_stats(0)  # no tier
    m = pagedkv.Cache(num_blocks=4, block_size=BS, prefix_cache=True)
    with pytest.raises(pagedkv.ModeError):
        m.add_host_tier(4, write_through=True)  # metadata mode
    with pytest.raises(pagedkv.ModeError):
        m.add_file_tier(tempfile.gettempdir(), 1 << 20)
    with pytest.raises(pagedkv.IOFailedError):
        host_cache().add_file_tier("/proc/definitely/not/here", 1 << 20)
    with pytest.raises(pagedkv.InvalidError):
        host_cache().add_file_tier(tempfile.gettempdir(), 0)


def test_file_tier_survives_a_restart():
    toks = list(range(200, 208))
    with tempfile.TemporaryDirectory() as d:
        with host_cache(hash_key=KEY) as c:
            c.add_file_tier(d, 1 << 20, fsync=True)
            assert c.tier_stats(0)["kind"] == "backend"
            s = c.sequence()
            slots = s.append(toks)
            rows = fill(c, s, slots, 2)
            s.register()
            s.free()
            assert c.evict(2) == 2 and c.tier_stats(0)["stores"] == 2
        with host_cache(hash_key=KEY) as c:
            c.add_file_tier(d, 1 << 20)
            st = c.tier_stats(0)
            assert st["restored"] == 2 and st["blocks"] == 2
            assert c.peek(toks) == (8, 0)
            t, n = c.lookup(toks)
            assert n == 8 and c.tier_stats(0)["hits"] == 2
            for layer in range(2):
                k, _ = c.read(layer, _slots(t))
                assert np.array_equal(k, rows[layer])
        with host_cache(hash_key=bytes(16)) as c:  # another hash key: nothing found
            c.add_file_tier(d, 1 << 20)
            assert c.peek(toks) == (0, 0)


# --------------------------------------------------------------------------- metadata-mode transfers

def test_metadata_transfers_replayed_on_numpy_arrays():
    nb, slots_n, row = 4, 8, 6
    c = pagedkv.Cache(num_blocks=nb, block_size=BS, prefix_cache=True)
    c.add_host_tier(slots_n)
    device = np.zeros((nb, BS, row), np.float32)
    host = np.full((slots_n, BS, row), np.nan, np.float32)

    def replay():
        xs = c.drain_transfers()
        for x in xs:
            if x["op"] == "offload":
                host[x["slot"]] = device[x["block"]]
            elif x["op"] == "load":
                device[x["block"]] = host[x["slot"]]
            else:
                raise AssertionError(f"unexpected {x}")
        return xs

    toks = list(range(300, 308))
    s = c.sequence()
    _, cow = s.append(toks)
    assert cow is None
    blocks = [int(b) for b in s.blocks]
    rng = np.random.default_rng(3)
    for b in blocks:
        device[b] = rng.standard_normal((BS, row))
    want = device[blocks].copy()
    s.register()
    s.free()
    assert replay() == []
    # pool pressure: a 4-block sequence reclaims the two cached blocks -> two offloads
    p = c.sequence()
    p.append(nb * BS)
    xs = replay()
    assert sorted(x["block"] for x in xs) == sorted(blocks)
    assert all(x["op"] == "offload" and x["tier"] == 0 and 0 <= x["slot"] < slots_n and x["dst_slot"] == -1
               for x in xs)
    assert len({x["slot"] for x in xs}) == 2
    keys = {x["block"]: x["key"] for x in xs}
    device[:] = -1.0  # the new owner writes the blocks
    p.free()
    assert c.peek(toks) == (8, 0)
    t, n = c.lookup(toks)
    assert n == 8
    xs = replay()
    assert [x["op"] for x in xs] == ["load", "load"]
    assert [x["block"] for x in xs] == [int(b) for b in t.blocks]
    assert [x["key"] for x in xs] == [keys[b] for b in blocks]  # the same blocks, in chain order
    assert np.array_equal(device[[int(b) for b in t.blocks]], want)
    assert c.tier_stats(0)["hits"] == 2


def test_metadata_swap_queues_transfers():
    c = pagedkv.Cache(num_blocks=4, block_size=BS, prefix_cache=True)
    with pytest.raises(pagedkv.ModeError):
        c.sequence().swap_out()  # metadata mode without a tier
    c = pagedkv.Cache(num_blocks=4, block_size=BS, prefix_cache=True)
    c.add_host_tier(4)
    s = c.sequence()
    s.append(6)
    old = [int(b) for b in s.blocks]
    s.swap_out()
    out = c.drain_transfers()
    assert [x["op"] for x in out] == ["offload", "offload"] and sorted(x["block"] for x in out) == sorted(old)
    assert all(x["key"] == bytes(16) for x in out)
    slot_of = {x["block"]: x["slot"] for x in out}
    assert len(set(slot_of.values())) == 2
    s.swap_in()
    back = c.drain_transfers(array=True)  # the structured-array form
    assert back.dtype == pagedkv.TRANSFER_DTYPE and back.dtype.itemsize == 48
    assert list(back["op"]) == [pagedkv.XFER_LOAD] * 2 and len(s) == 6
    assert list(back["tier"]) == [0, 0] and list(back["dst_slot"]) == [-1, -1] and list(back["reserved"]) == [0, 0]
    assert all(bytes(k) == bytes(16) for k in back["key"])
    # block i of the sequence is loaded from the slot block i went to
    load_of = {int(b): int(sl) for b, sl in zip(back["block"], back["slot"])}
    assert [load_of[int(b)] for b in s.blocks] == [slot_of[b] for b in old]
    assert len(c.drain_transfers(array=True)) == 0 and c.drain_transfers() == []


# --------------------------------------------------------------------------- swap (host mode)

def test_host_swap_preserves_bytes_and_refuses_append():
    c = host_cache()
    s = c.sequence()
    slots = s.append(6)
    rows = fill(c, s, slots, 4)
    assert not s.swapped
    s.swap_out()
    assert s.swapped and len(s) == 6 and c.stats()["used_blocks"] == 0
    with pytest.raises(pagedkv.StateError):
        s.append(1)
    with pytest.raises(pagedkv.StateError):
        s.fork()
    with pytest.raises(pagedkv.StateError):
        s.swap_out()
    scribble(c, 4)
    s.swap_in()
    assert not s.swapped and len(s) == 6
    for layer in range(2):
        k, _ = c.read(layer, _slots(s))
        assert np.array_equal(k, rows[layer])
    with pytest.raises(pagedkv.StateError):
        s.swap_in()
    s.append(1)  # allowed again


def test_swap_in_without_room_changes_nothing():
    c = host_cache()
    s = c.sequence()
    s.append(8)
    s.swap_out()
    hog = c.sequence()
    hog.append(3 * BS + 1)
    with pytest.raises(pagedkv.CapacityError):
        s.swap_in()
    assert s.swapped and len(hog) == 3 * BS + 1
    hog.free()
    s.swap_in()
    assert not s.swapped
    s.free()
    with pytest.raises(pagedkv.NoSeqError):
        s.swap_out()


def test_metadata_two_tiers_demote_and_long_queues():
    nb, row = 4, 3
    c = pagedkv.Cache(num_blocks=nb, block_size=BS, prefix_cache=True)
    c.add_host_tier(1)
    c.add_host_tier(4)
    device = np.zeros((nb, BS, row), np.float32)
    tiers = [np.full((1, BS, row), np.nan, np.float32), np.full((4, BS, row), np.nan, np.float32)]
    seen = []

    def replay():
        for x in c.drain_transfers():
            seen.append(x["op"])
            if x["op"] == "offload":
                tiers[x["tier"]][x["slot"]] = device[x["block"]]
            elif x["op"] == "load":
                device[x["block"]] = tiers[x["tier"]][x["slot"]]
            else:
                assert x["block"] == -1
                tiers[x["tier"] + 1][x["dst_slot"]] = tiers[x["tier"]][x["slot"]]

    toks = list(range(400, 408))
    s = c.sequence()
    s.append(toks)
    blocks = [int(b) for b in s.blocks]
    device[blocks] = np.random.default_rng(5).standard_normal((2, BS, row))
    want = device[blocks].copy()
    s.register()
    s.free()
    assert c.evict(2) == 2
    replay()
    assert "demote" in seen  # tier 0 holds one block: the other went down to tier 1
    assert c.tier_stats(0)["blocks"] + c.tier_stats(1)["blocks"] == 2
    device[:] = 0
    t, n = c.lookup(toks)
    replay()
    assert n == 8 and np.array_equal(device[[int(b) for b in t.blocks]], want)

    # queues longer than one internal batch (256) come back whole, in both forms
    big = pagedkv.Cache(num_blocks=600, block_size=1, prefix_cache=True)
    big.add_host_tier(600)
    a = big.sequence()
    a.append(list(range(600)))
    a.register()
    a.free()
    assert big.evict(600) == 600
    xs = big.drain_transfers(array=True)
    assert len(xs) == 600 and set(xs["op"]) == {pagedkv.XFER_OFFLOAD} and len(set(xs["slot"])) == 600
    assert big.lookup(list(range(600)))[1] == 600
    loads = big.drain_transfers()
    assert len(loads) == 600 and {x["op"] for x in loads} == {"load"}


@pytest.mark.parametrize("thread_safe", [False, True])
def test_new_calls_from_threads_keep_the_cache_consistent(thread_safe):
    import threading
    c = pagedkv.Cache(num_blocks=64, block_size=BS, storage="host", kv_dtype="f32", d=8, dv=8, prefix_cache=True,
                      thread_safe=thread_safe)
    c.add_host_tier(32)
    c.enable_events(64)
    errors = []

    def work(w):
        try:
            for i in range(60):
                toks = [w, i % 5] * 4
                s, n = c.lookup(toks, adapter=w % 2, mm=[(0, 1, bytes([i % 3]) * 16)])
                s.append(toks[n:])
                s.register()
                s.swap_out()
                assert s.swapped
                s.swap_in()
                assert len(s) == 8 and not s.swapped
                c.peek(toks)
                s.free()
                c.evict(2)
                c.drain_events()
        except Exception as e:  # reported below, with the thread
            errors.append((w, e))

    ts = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    c.check()
    assert c.stats()["used_blocks"] == 0 and c.tier_stats(0)["stores"] > 0
