"""KV groups (library 1.3): pagedkv.Groups and GroupSequence over a full and a
sliding-window group; group caches borrowed as Cache objects, member sequences,
all-or-nothing appends, fork / truncate / free, lookup across groups, errors,
close(), threads, and the README example (python/examples/hybrid.py)."""
import gc
import os
import subprocess
import sys
import threading
import weakref

import numpy as np
from helpers import pytest

import pagedkv

HERE = os.path.dirname(os.path.abspath(__file__))


def hybrid(win_blocks=5):
    """A full group and a window group (W = 6, blocks of 2), metadata mode."""
    return pagedkv.Groups([dict(num_blocks=64, block_size=2),
                           dict(num_blocks=win_blocks, block_size=2, window=6)])


def tables(gs):
    return [list(gs.member(i).blocks) for i in range(gs.groups.num_groups)]


def used(groups):
    return [groups.cache(i).stats()["used_blocks"] for i in range(groups.num_groups)]


def test_groups_config_and_caches():
    g = hybrid()
    assert g.num_groups == 2 and not g.closed
    cfgs = g.configs
    assert [c["num_blocks"] for c in cfgs] == [64, 5] and [c["window"] for c in cfgs] == [0, 6]
    assert cfgs[1]["block_size"] == 2 and cfgs[1]["storage"] == "metadata"
    c0, c1 = g.cache(0), g.cache(1)
    assert isinstance(c0, pagedkv.Cache) and c0.config == cfgs[0] and c1.config["window"] == 6
    assert g.cache(0) is c0  # the same object while it lives
    assert "64 blocks of 2" in repr(g) and "window 6" in repr(g)
    assert c0.stats()["num_blocks"] == 64 and c1.stats()["num_blocks"] == 5
    c0.check()
    # every Cache keyword works per group
    h = pagedkv.Groups([dict(num_blocks=8, block_size=16, storage="host", num_layers=2, h_kv=2, d=32, dv=16,
                             v_separate=True, kv_dtype="f16", prefix_cache=True, auto_register=True,
                             hash_key=bytes(range(16))),
                        dict(num_blocks=4, block_size=8, storage="host", kv_dtype="f32", d=8, dv=8, window=16)])
    assert h.configs[0] == {"num_blocks": 8, "block_size": 16, "storage": "host", "num_layers": 2, "h_kv": 2,
                            "d": 32, "dv": 16, "v_separate": True, "kv_dtype": "f16", "thread_safe": False,
                            "prefix_cache": True, "auto_register": True, "fp8_pow2_scale": False, "window": 0}
    assert h.configs[1]["kv_dtype"] == "f32" and h.configs[1]["window"] == 16
    h.close()


def test_append_takes_blocks_in_every_group_and_the_window_releases():
    g = hybrid()
    s = g.sequence()
    assert isinstance(s, pagedkv.GroupSequence) and s.groups is g and s.namespace == 0 and not s.freed
    assert len(s) == 0 and s.blocks_needed(4) == [2, 2]
    slots, cows = s.append(4)
    assert isinstance(slots, list) and len(slots) == 2 and cows == [None, None]
    assert all(a.dtype == np.int64 and list(a) == [0, 1, 2, 3] for a in slots)
    slots, cows = s.append(np.arange(4, dtype=np.int32))  # token ids, recorded in both groups
    assert [list(a) for a in slots] == [[4, 5, 6, 7]] * 2 and cows == [None, None]
    assert len(s) == 8 and tables(s) == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert s.blocks_needed(1) == [1, 1]
    slots, cows = s.append(1)
    # as of 8 settled tokens the next one reads keys 3..8: the window group releases block 0
    assert tables(s) == [[0, 1, 2, 3, 4], [-1, 1, 2, 3, 4]]
    assert used(g) == [5, 4]
    m0, m1 = s.member(0), s.member(1)
    assert isinstance(m1, pagedkv.Sequence) and m1.cache is g.cache(1) and m0.cache is g.cache(0)
    assert len(m0) == len(m1) == 9 and m1.namespace == 0
    table, lens = g.cache(1).export_flashmla([m1])
    assert list(table[0]) == [-1, 1, 2, 3, 4] and list(lens) == [9]
    table, lens = g.cache(0).export_flashmla([m0])
    assert list(table[0]) == [0, 1, 2, 3, 4]
    assert list(g.cache(1).slot_mapping([m1])) == [8] and list(m0.slot_mapping()) == [8]
    indptr, idx, last = g.cache(1).export_flashinfer([m1])
    assert list(idx) == [-1, 1, 2, 3, 4] and list(last) == [1]
    for i in range(2):
        g.cache(i).check()
    assert "len=9" in repr(s)


def test_capacity_all_or_nothing():
    g = hybrid()
    s = g.sequence()
    s.append(8)
    before, used_before = tables(s), used(g)
    # 4 more tokens: the window group holds 4 blocks of its 5 and would need 2 more
    assert s.blocks_needed(4) == [2, 2]
    with pytest.raises(pagedkv.CapacityError, match="group 1") as e:
        s.append(4)
    assert e.value.status == -4 and e.value.detail.startswith("group 1: ") and g.last_error == e.value.detail
    assert len(s) == 8 and tables(s) == before and used(g) == used_before  # the full group took nothing
    t = g.sequence()
    with pytest.raises(pagedkv.CapacityError):
        t.append(12)  # a prefill the window pool cannot hold
    assert len(t) == 0 and tables(t) == [[], []] and used(g) == used_before
    s.append(1)  # one at a time it fits: the window releases as the sequence grows
    s.append(3)
    assert len(s) == 12 and used(g)[1] <= 5
    for i in range(2):
        g.cache(i).check()


def test_member_refuses_changes_made_to_it_alone():
    g = hybrid()
    s = g.sequence()
    s.append(3)
    m = s.member(0)
    for call in (lambda: m.append(1), lambda: m.free(), lambda: m.truncate(1), lambda: m.fork(),
                 lambda: m.swap_out()):
        with pytest.raises(pagedkv.StateError, match="group"):
            call()
    with pytest.raises(pagedkv.StateError):
        g.cache(1).append_batch([s.member(1)])
    assert len(s) == 3 and len(m) == 3 and not m.freed
    del m
    gc.collect()  # a dropped member frees nothing
    assert len(s) == 3 and used(g) == [2, 2]
    # a member keeps its group sequence alive
    m = g.sequence().member(1)
    gc.collect()
    assert len(m) == 0
    assert g.cache(0).stats()["num_seqs"] == 2
    del m
    gc.collect()
    assert g.cache(0).stats()["num_seqs"] == 1 and g.cache(1).stats()["num_seqs"] == 1
    # an ordinary sequence of a group's cache is allowed beside the members
    o = g.cache(0).sequence()
    o.append(2)
    o.free()


def test_fork_truncate_free():
    g = hybrid()
    s = g.sequence(ns=5)
    s.append(8)
    s.append(1)
    t = s.fork()
    assert t.namespace == 5 and len(t) == 9 and tables(t) == tables(s)
    assert used(g) == [5, 4] and g.cache(0).refcount(4) == 2
    assert t.blocks_needed(1) == [1, 1]  # copy-on-write of the shared partial block
    slots, cows = t.append(1)
    assert cows[0] == (4, 5) and cows[1] is not None and cows[1][0] == 4
    assert [list(a) for a in slots] == [[11], [cows[1][1] * 2 + 1]]
    assert len(t) == 10 and len(s) == 9 and used(g) == [6, 5]
    with pytest.raises(pagedkv.StateError, match="group 1"):
        t.truncate(2)  # the window group released the blocks that window needs
    assert len(t) == 10 and used(g) == [6, 5]  # nothing changed in either group
    t.truncate(9)
    assert len(t) == 9 and tables(t)[0] == [0, 1, 2, 3, 5]
    t.free()
    assert t.freed and used(g) == [5, 4]
    with pytest.raises(pagedkv.NoSeqError):
        len(t)
    with pytest.raises(pagedkv.NoSeqError):
        t.append(1)
    with pytest.raises(pagedkv.NoSeqError):
        t.member(0)
    with pytest.raises(pagedkv.NoSeqError):
        t.free()
    assert "freed" in repr(t)
    with pytest.raises(pagedkv.StateError):
        s.truncate(4)  # its window would need block 0, released
    s.truncate(7)
    assert len(s) == 7 and tables(s) == [[0, 1, 2, 3], [-1, 1, 2, 3]] and used(g) == [4, 3]
    del s
    gc.collect()  # a dropped group sequence frees its members
    assert used(g) == [0, 0] and g.cache(0).stats()["num_seqs"] == 0 and g.cache(1).stats()["num_seqs"] == 0
    for i in range(2):
        g.cache(i).check()


def test_lookup_shortest_hit_across_groups():
    g = pagedkv.Groups([dict(num_blocks=32, block_size=4, prefix_cache=True, auto_register=True),
                        dict(num_blocks=32, block_size=8, prefix_cache=True, auto_register=True)])
    prompt = list(range(100, 130))  # 30 tokens: 7 full blocks of 4, 3 of 8
    a, cached = g.lookup(prompt)
    assert cached == 0 and len(a) == 0
    a.append(prompt)  # registered automatically in both groups
    assert [g.cache(i).stats()["cached_blocks"] for i in range(2)] == [7, 3]
    assert g.cache(0).peek(prompt)[0] == 28 and g.cache(1).peek(prompt)[0] == 24
    b, cached = g.lookup(np.array(prompt, np.int32))
    assert cached == 24 and len(b) == 24  # the shortest of the hits, every member cut to it
    assert [len(b.member(i)) for i in range(2)] == [24, 24]
    assert tables(b) == [tables(a)[0][:6], tables(a)[1][:3]]
    slots, _ = b.append(prompt[24:])
    assert len(b) == 30 and [len(x) for x in slots] == [6, 6]
    a.free()
    b.free()
    c, cached = g.lookup(prompt, namespace=3)
    assert cached == 0 and c.namespace == 3
    d, cached = g.lookup(prompt)
    assert cached == 24
    # a group without prefix caching hits 0, so the group sequence starts from 0
    h = pagedkv.Groups([dict(num_blocks=16, block_size=4, prefix_cache=True, auto_register=True),
                        dict(num_blocks=16, block_size=4)])
    x = h.sequence()
    x.append(prompt)
    y, cached = h.lookup(prompt)
    assert cached == 0 and len(y) == 0
    with pytest.raises(pagedkv.InvalidError, match="tokens"):
        g.lookup([1, "a"])
    with pytest.raises(pagedkv.DTypeError, match="tokens"):
        g.lookup(np.zeros(3, np.float32))


def test_lookup_with_a_window_group():
    # a window group caches prefixes too (it registers as it appends): 40 tokens,
    # blocks of 4, W = 8; the lookup holds only the window's blocks, -1 before
    g = pagedkv.Groups([dict(num_blocks=64, block_size=4, prefix_cache=True, auto_register=True),
                        dict(num_blocks=64, block_size=4, prefix_cache=True, auto_register=True, window=8)])
    prompt = list(range(200, 240))
    a = g.sequence()
    a.append(prompt)
    a.append([7])  # the window moves past the prompt's start
    a.free()
    b, cached = g.lookup(prompt)
    assert cached == 40
    table = tables(b)[1]
    # tokens 39 and 40 see keys from 32 and 33 on: blocks 8 and 9; 0..7 are -1
    assert table[:8] == [-1] * 8 and all(x >= 0 for x in table[8:])
    b.truncate(39)  # the whole-prompt hit recomputes its last token
    b.free()
    # without AUTO_REGISTER a window cache refuses prefix caching
    with pytest.raises(pagedkv.InvalidError):
        pagedkv.Groups([dict(num_blocks=8, block_size=4, prefix_cache=True, window=8)])
    for i in range(2):
        g.cache(i).check()


def test_host_groups_write_read_through_group_caches():
    g = pagedkv.Groups([dict(num_blocks=8, block_size=4, storage="host", kv_dtype="f32", d=8, dv=8),
                        dict(num_blocks=4, block_size=4, storage="host", kv_dtype="f32", d=8, dv=8, window=4)])
    s = g.sequence()
    slots = s.append(6)  # host storage in every group: the slots only
    assert isinstance(slots, list) and [list(a) for a in slots] == [list(range(6))] * 2
    rows = np.arange(6 * 8, dtype=np.float32).reshape(6, 1, 8)
    for i in range(2):
        g.cache(i).write(0, slots[i], rows)
        k, _ = g.cache(i).read(0, slots[i])
        assert np.array_equal(k, rows)
    t = s.fork()
    slots = t.append(1)  # the caches copied the shared partial block themselves
    assert [len(a) for a in slots] == [1, 1]
    assert np.array_equal(g.cache(0).read(0, slots[0] - 2)[0], rows[4:5])
    karena, _ = g.cache(0).arenas(0)
    assert karena.shape == (8, 4, 1, 8)
    g.close()  # deferred while the arena view lives: its memory stays
    assert karena.reshape(-1, 8)[1][0] == 8.0
    with pytest.raises(pagedkv.StateError, match="closed"):
        g.cache(0)
    del karena
    gc.collect()


def test_mixed_storage_reports_cows_per_group():
    g = pagedkv.Groups([dict(num_blocks=8, block_size=4),
                        dict(num_blocks=8, block_size=4, storage="host", kv_dtype="f32", d=8, dv=8)])
    s = g.sequence()
    s.append(2)
    t = s.fork()
    slots, cows = t.append(1)
    assert cows[0] == (0, 1) and cows[1] is None  # the host group copied it itself
    assert g.cache(1).stats()["cow_copies"] == 1


def test_argument_errors():
    with pytest.raises(pagedkv.InvalidError, match="configs"):
        pagedkv.Groups([])
    with pytest.raises(pagedkv.InvalidError, match="1 to 8"):
        pagedkv.Groups([dict(num_blocks=4)] * 9)
    with pytest.raises(pagedkv.InvalidError, match="got a dict"):
        pagedkv.Groups(dict(num_blocks=4))
    with pytest.raises(pagedkv.InvalidError, match="configs"):
        pagedkv.Groups(5)
    with pytest.raises(pagedkv.InvalidError, match=r"configs\[1\]: expected a dict"):
        pagedkv.Groups([dict(num_blocks=4), 7])
    with pytest.raises(pagedkv.InvalidError, match=r"configs\[1\]: storage"):
        pagedkv.Groups([dict(num_blocks=4), dict(storage="gpu")])
    with pytest.raises(pagedkv.DTypeError, match=r"configs\[0\]: kv_dtype"):
        pagedkv.Groups([dict(kv_dtype="int4")])
    with pytest.raises(pagedkv.InvalidError, match=r"configs\[0\]: hash_key"):
        pagedkv.Groups([dict(hash_key=b"short")])
    with pytest.raises(TypeError, match=r"configs\[1\]"):
        pagedkv.Groups([dict(num_blocks=4), dict(bogus=1)])
    with pytest.raises(pagedkv.InvalidError, match=r"configs\[1\]: a configuration field"):
        pagedkv.Groups([dict(num_blocks=4), dict(num_blocks=0)])
    with pytest.raises(pagedkv.InvalidError, match=r"configs\[1\]"):
        pagedkv.Groups([dict(num_blocks=4), dict(window=8, prefix_cache=True)])
    with pytest.raises(pagedkv.InvalidError, match="thread_safe"):
        pagedkv.Groups([dict(num_blocks=4, thread_safe=True), dict(num_blocks=4)])
    with pytest.raises(TypeError):
        pagedkv.Groups()
    g = hybrid()
    s = g.sequence()
    with pytest.raises(pagedkv.InvalidError, match="group 2 outside"):
        g.cache(2)
    with pytest.raises(pagedkv.InvalidError, match="outside"):
        g.cache(-1)
    with pytest.raises(TypeError):
        g.cache("0")
    with pytest.raises(pagedkv.InvalidError, match="outside"):
        s.member(5)
    with pytest.raises(pagedkv.InvalidError, match="n:"):
        s.append(-1)
    with pytest.raises(pagedkv.InvalidError, match="tokens"):
        s.append([1, "a"])
    with pytest.raises(pagedkv.InvalidError, match="new_len"):
        s.truncate(-1)
    with pytest.raises(pagedkv.InvalidError):
        s.truncate(3)  # past its length
    with pytest.raises(pagedkv.InvalidError, match="n:"):
        s.blocks_needed(-2)
    with pytest.raises(pagedkv.NoSeqError, match="another cache"):
        g.cache(0).export_flashmla([s.member(1)])
    assert len(s) == 0 and used(g) == [0, 0]


def test_close_then_use_raises_state_error():
    g = hybrid()
    s = g.sequence()
    s.append(3)
    m = s.member(1)
    c = g.cache(1)
    c.close()  # a group's cache: closed by the Groups object only
    assert not c.closed and c.stats()["used_blocks"] == 2
    with c:
        pass
    assert not c.closed
    g.close()
    assert g.closed and c.closed and "closed" in repr(g) and "freed" in repr(s)
    calls = (lambda: s.append(1), lambda: len(s), lambda: s.fork(), lambda: s.truncate(0), lambda: s.free(),
             lambda: s.member(0), lambda: s.blocks_needed(1), lambda: g.sequence(), lambda: g.lookup([1]),
             lambda: g.cache(0), lambda: c.stats(), lambda: c.sequence(), lambda: c.export_flashmla([m]),
             lambda: len(m), lambda: m.blocks, lambda: c.check())
    for call in calls:
        with pytest.raises(pagedkv.StateError, match="closed"):
            call()
    g.close()  # twice is fine
    with pytest.raises(pagedkv.StateError):
        with g:
            pass
    del s, m, c
    gc.collect()
    with hybrid() as h:
        h.sequence().append(2)
    assert h.closed


def test_group_cache_keeps_groups_alive():
    g = hybrid()
    s = g.sequence()
    s.append(4)
    c = g.cache(0)
    w = weakref.ref(g)
    del g, s
    gc.collect()
    assert w() is not None  # the borrowed cache holds its Groups object
    assert c.stats()["used_blocks"] == 0  # the dropped group sequence freed its members
    c.sequence().append(2)
    del c
    gc.collect()
    assert w() is None
    # a dropped group Cache object does not destroy the group's cache
    g = hybrid()
    s = g.sequence()
    s.append(4)
    g.cache(0).close()
    del_ = weakref.ref(g.cache(0))
    gc.collect()
    assert del_() is None  # nobody holds it: gone, the cache stays
    assert g.cache(0).stats()["used_blocks"] == 2 and list(s.member(0).blocks) == [0, 1]


def test_thread_safe_groups_from_threads():
    g = pagedkv.Groups([dict(num_blocks=512, block_size=4, thread_safe=True),
                        dict(num_blocks=256, block_size=4, window=8, thread_safe=True)])
    assert all(c["thread_safe"] for c in g.configs)
    errors = []

    def worker(seed):
        try:
            rng = np.random.default_rng(seed)
            mine = [g.sequence()]
            for _ in range(200):
                op = int(rng.integers(0, 5))
                s = mine[int(rng.integers(0, len(mine)))]
                if op <= 1:
                    slots, _ = s.append(int(rng.integers(1, 6)))
                    assert len(slots) == 2
                elif op == 2 and len(mine) < 6:
                    mine.append(s.fork())
                elif op == 3 and len(s) > 0:
                    try:
                        s.truncate(len(s) - 1)
                    except pagedkv.StateError:
                        pass  # the window released what that length needs
                elif op == 4:
                    g.cache(0).export_flashmla([x.member(0) for x in mine])
                    g.cache(1).export_flashmla([x.member(1) for x in mine])
            for s in mine:
                s.free()
        except BaseException as e:  # noqa: B902  (reported by the main thread)
            errors.append(e)
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    assert used(g) == [0, 0]
    for i in range(2):
        g.cache(i).check()


def test_hybrid_example_prints_the_readme_output():
    path = os.path.join(HERE, "..", "examples", "hybrid.py")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pagedkv.__file__)))  # the one under test
    out = subprocess.run([sys.executable, path], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == [
        "8100 tokens; full group holds 127 blocks, window group 17",
        "window group table: [-1 -1] ... [125 109] [8100]",
        "second prefill: group 1: append of 8000 tokens needs 125 blocks, 111 available",
        "full group still holds 127 blocks",
    ]
