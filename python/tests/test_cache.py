"""Cache, Sequence, prefix cache, exports, host storage, errors: every function of
the package except attention (test_attention.py) and threads (test_threads.py)."""
import gc

import numpy as np
from helpers import pytest

import pagedkv


def test_config_defaults_and_kwargs():
    with pagedkv.Cache() as c:
        cfg = c.config
        assert cfg["num_blocks"] == 1024 and cfg["block_size"] == 64 and cfg["storage"] == "metadata"
        assert (cfg["h_kv"], cfg["d"], cfg["dv"], cfg["kv_dtype"]) == (1, 576, 512, "bf16")
        assert not cfg["thread_safe"] and not cfg["prefix_cache"]
    c = pagedkv.Cache(num_blocks=8, block_size=16, storage="host", num_layers=2, h_kv=2, d=32, dv=16,
                      v_separate=True, kv_dtype="f16", thread_safe=True, prefix_cache=True, auto_register=True,
                      hash_key=bytes(range(16)))
    cfg = c.config
    assert cfg == {"num_blocks": 8, "block_size": 16, "storage": "host", "num_layers": 2, "h_kv": 2, "d": 32,
                   "dv": 16, "v_separate": True, "kv_dtype": "f16", "thread_safe": True, "prefix_cache": True,
                   "auto_register": True, "fp8_pow2_scale": False, "window": 0}
    assert "8 blocks of 16" in repr(c)
    c.close()
    assert c.closed and "closed" in repr(c)
    c.close()  # twice is fine


def test_bad_config():
    with pytest.raises(pagedkv.InvalidError):
        pagedkv.Cache(num_blocks=0)
    with pytest.raises(pagedkv.InvalidError, match="storage"):
        pagedkv.Cache(storage="gpu")
    with pytest.raises(pagedkv.DTypeError, match="kv_dtype"):
        pagedkv.Cache(kv_dtype="int4")
    with pytest.raises(pagedkv.InvalidError, match="hash_key"):
        pagedkv.Cache(hash_key=b"short")
    with pytest.raises(TypeError):
        pagedkv.Cache(1024)  # keyword arguments only
    with pytest.raises(TypeError):
        pagedkv.Cache(bogus=1)


def test_window_cache_releases_blocks():
    # W = 6 tokens, blocks of 4: after 12 tokens the next token reads keys (6, 12], so
    # blocks 0 (tokens 0-3) leaves; the table shows -1 there.
    with pytest.raises(pagedkv.InvalidError):
        pagedkv.Cache(window=-1)
    with pytest.raises(pagedkv.InvalidError):
        pagedkv.Cache(window=8, prefix_cache=True)
    c = pagedkv.Cache(num_blocks=8, block_size=4, window=6)
    assert c.config["window"] == 6
    s = c.sequence()
    s.append(12)
    assert list(s.blocks) == [0, 1, 2]  # released at the next append, as of 12 settled tokens
    s.append(1)
    assert list(s.blocks)[:1] == [-1] and len(s.blocks) == 4
    table, lens = c.export_flashmla([s])
    assert table[0][0] == -1 and list(lens) == [13]
    with pytest.raises(pagedkv.StateError):
        s.truncate(4)  # its window would need block 0
    s.truncate(12)
    assert c.stats()["used_blocks"] == 2
    c.check()


def test_sequence_lifecycle_metadata():
    c = pagedkv.Cache(num_blocks=16, block_size=64)
    a = c.sequence()
    slots, cow = a.append(100)
    assert slots.dtype == np.int64 and list(slots) == list(range(100)) and cow is None
    assert len(a) == 100 and a.blocks.dtype == np.int32 and list(a.blocks) == [0, 1]
    assert a.namespace == 0 and a.handle > 0 and a.cache is c and not a.freed
    b = a.fork()
    assert len(b) == 100 and list(b.blocks) == [0, 1] and c.refcount(1) == 2
    assert b.blocks_needed(1) == 1  # the copy-on-write copy
    slots, cow = b.append(1)
    assert cow == (1, 2) and list(slots) == [2 * 64 + 36]
    assert list(b.slot_mapping()) == [164]
    slots, cow = a.append([5, 6, 7])  # token ids
    assert cow is None and list(slots) == [100, 101, 102]
    a.truncate(10)
    assert len(a) == 10 and list(a.blocks) == [0]
    a.free()
    assert a.freed
    with pytest.raises(pagedkv.NoSeqError):
        len(a)
    with pytest.raises(pagedkv.NoSeqError):
        a.append(1)
    st = c.stats()
    assert st["num_seqs"] == 1 and st["cow_copies"] == 1 and st["tokens"] == 101
    c.check()
    assert "len=101" in repr(b)


def test_host_append_returns_slots_only():
    c = pagedkv.Cache(num_blocks=4, block_size=4, storage="host", h_kv=1, d=8, dv=8, kv_dtype="f32")
    s = c.sequence()
    slots = s.append(6)
    assert isinstance(slots, np.ndarray) and list(slots) == [0, 1, 2, 3, 4, 5]
    t = s.fork()
    assert list(t.append(1)) == [2 * 4 + 2]  # the cache copied block 1 to block 2 itself
    assert c.stats()["cow_copies"] == 1
    c.check()


def test_dropped_sequence_frees_its_blocks():
    c = pagedkv.Cache(num_blocks=4, block_size=4)
    s = c.sequence()
    s.append(16)
    assert c.stats()["free_blocks"] == 0
    del s
    gc.collect()
    assert c.stats()["free_blocks"] == 4 and c.stats()["num_seqs"] == 0


def test_capacity_all_or_nothing():
    c = pagedkv.Cache(num_blocks=2, block_size=4)
    s = c.sequence()
    s.append(5)
    with pytest.raises(pagedkv.CapacityError) as e:
        s.append(4)
    assert e.value.status == -4 and e.value.detail
    assert len(s) == 5
    with pytest.raises(pagedkv.CapacityError, match="nothing changed"):
        c.append_batch([s, s.fork()], n=4)
    assert len(s) == 5
    c.check()


def test_append_batch():
    c = pagedkv.Cache(num_blocks=64, block_size=4)
    seqs = [c.sequence() for _ in range(5)]
    for i, s in enumerate(seqs):
        s.append(i + 2)
    kids = [seqs[0].fork(), seqs[1].fork()]
    allseqs = seqs + kids
    slots, cow = c.append_batch(allseqs, n=2, tokens=np.arange(14, dtype=np.int32).reshape(7, 2))
    assert slots.shape == (14,) and cow.dtype == np.int32 and cow.shape[1] == 2
    assert len(cow) == 2  # seqs[0] and seqs[1] share their partly filled last block with a child
    for s, n in zip(allseqs, [4, 5, 6, 7, 8, 4, 5]):
        assert len(s) == n
    assert list(c.slot_mapping(allseqs)) == list(slots)
    slots, cow = c.append_batch(allseqs)  # one token each
    assert slots.shape == (7,) and len(cow) == 0
    with pytest.raises(pagedkv.ShapeError, match="tokens"):
        c.append_batch(allseqs, tokens=[1, 2])
    with pytest.raises(pagedkv.InvalidError, match=r"seqs\[1\]"):
        c.append_batch([allseqs[0], "x"])
    c.check()


def test_exports():
    c = pagedkv.Cache(num_blocks=32, block_size=8)
    seqs = [c.sequence() for _ in range(3)]
    for s, n in zip(seqs, [0, 9, 30]):
        s.append(n)
    table, lens = c.export_flashmla(seqs)
    assert table.dtype == np.int32 and lens.dtype == np.int32 and table.shape == (3, 4)
    assert list(lens) == [0, 9, 30]
    for s, row in zip(seqs, table):
        nb = len(s.blocks)
        assert list(row[:nb]) == list(s.blocks) and all(row[nb:] == -1)
    table, _ = c.export_flashmla(seqs, max_blocks_per_seq=6)
    assert table.shape == (3, 6)
    with pytest.raises(pagedkv.BufferTooSmallError, match="max_blocks_per_seq"):
        c.export_flashmla(seqs, max_blocks_per_seq=2)
    out = (np.empty((3, 5), np.int32), np.empty(3, np.int32))
    t2, l2 = c.export_flashmla(seqs, out=out)
    assert t2 is out[0] and l2 is out[1] and list(l2) == [0, 9, 30]
    with pytest.raises(pagedkv.DTypeError, match="block_table"):
        c.export_flashmla(seqs, out=(np.empty((3, 5), np.int64), np.empty(3, np.int32)))
    indptr, idx, last = c.export_flashinfer(seqs)
    assert list(indptr) == [0, 0, 2, 6] and list(last) == [0, 1, 6]
    assert list(idx) == list(seqs[1].blocks) + list(seqs[2].blocks)
    assert list(c.slot_mapping(seqs[1:2])) == [int(seqs[1].blocks[p // 8]) * 8 + p % 8 for p in range(9)]
    t0, l0 = c.export_flashmla([])
    assert t0.shape == (0, 0) and l0.shape == (0,)
    other = pagedkv.Cache(num_blocks=4, block_size=8)
    with pytest.raises(pagedkv.NoSeqError, match="another cache"):
        other.export_flashmla(seqs)


def test_prefix_cache_lookup_register():
    c = pagedkv.Cache(num_blocks=16, block_size=4, prefix_cache=True, hash_key=bytes(16))
    prompt = list(range(100, 110))
    s, cached = c.lookup(prompt)
    assert cached == 0 and len(s) == 0
    s.append(prompt)
    assert c.register(s) == (2, 0)
    s.free()
    assert c.stats()["evictable_blocks"] == 2
    t, cached = c.lookup(np.array(prompt, np.int32))
    assert cached == 8 and len(t) == 8
    u, cached = c.lookup(prompt, namespace=7)
    assert cached == 0 and u.namespace == 7
    t.append(prompt[8:])
    assert t.register() == (0, 0)
    st = c.stats()
    assert st["prefix_queries"] == 3 and st["prefix_hit_tokens"] == 8 and st["registrations"] == 2
    with pytest.raises(pagedkv.ModeError):
        pagedkv.Cache(num_blocks=4).lookup([1, 2])
    with pytest.raises(pagedkv.InvalidError, match="tokens"):
        c.lookup([1, "a"])
    with pytest.raises(pagedkv.DTypeError, match="tokens"):
        c.lookup(np.zeros(3, np.float32))
    with pytest.raises(pagedkv.InvalidError, match="contiguous"):
        c.lookup(np.arange(20, dtype=np.int32)[::2])
    c.check()


def test_auto_register_and_dedup():
    c = pagedkv.Cache(num_blocks=16, block_size=4, prefix_cache=True, auto_register=True)
    a = c.sequence()
    a.append(list(range(8)))
    assert c.stats()["cached_blocks"] == 2
    b = c.sequence()
    b.append(list(range(8)))
    assert c.register(b) == (0, 2) and list(b.blocks) == list(a.blocks)
    c.check()


def test_write_read_dtypes():
    rng = np.random.default_rng(0)
    for kv in ("f32", "f16", "bf16"):
        c = pagedkv.Cache(num_blocks=4, block_size=4, storage="host", num_layers=2, h_kv=2, d=8, dv=4,
                          v_separate=True, kv_dtype=kv)
        s = c.sequence()
        slots = s.append(6)
        k = rng.standard_normal((6, 2, 8)).astype(np.float32)
        v = rng.standard_normal((6, 2, 4)).astype(np.float32)
        c.write(1, slots, k, v)
        rk, rv = c.read(1, slots)
        tol = {"f32": 0, "f16": 1e-3, "bf16": 1e-2}[kv]
        assert rk.dtype == np.float32 and rk.shape == (6, 2, 8) and rv.shape == (6, 2, 4)
        assert np.allclose(rk, k, atol=tol * 4, rtol=tol) and np.allclose(rv, v, atol=tol * 4, rtol=tol)
        # the cache's own dtype is copied bit for bit
        if kv == "f16":
            c.write(0, slots, k.astype(np.float16), v.astype(np.float16))
            assert np.array_equal(c.read(0, slots)[0], k.astype(np.float16).astype(np.float32))
        if kv == "bf16":
            kb, vb = pagedkv.f32_to_bf16(k), pagedkv.f32_to_bf16(v)
            with pytest.raises(pagedkv.DTypeError, match="bf16"):
                c.write(0, slots, kb.astype(np.int16), vb)
            c.write(0, slots, kb, vb, dtype="bf16")
            assert np.array_equal(c.read(0, slots)[0], pagedkv.bf16_to_f32(kb))
            karena, varena = c.arenas(0)
            assert karena.dtype == np.uint16 and karena.shape == (4, 4, 2, 8) and varena.shape == (4, 4, 2, 4)
            blk = s.blocks
            assert np.array_equal(karena[blk[0], 0], kb[0])  # zero-copy view of the arena
        c.check()


def test_write_shared_v_and_arenas_view():
    c = pagedkv.Cache(num_blocks=4, block_size=4, storage="host", h_kv=1, d=8, dv=6, kv_dtype="f32")
    s = c.sequence()
    slots = s.append(3)
    k = np.arange(24, dtype=np.float32).reshape(3, 8)  # [n, h_kv*d] is accepted too
    c.write(0, slots, k)
    rk, rv = c.read(0, slots)
    assert np.array_equal(rk.reshape(3, 8), k) and np.array_equal(rv.reshape(3, 6), k[:, :6])
    karena, varena = c.arenas(0)
    assert varena is None and np.array_equal(karena.reshape(-1, 8)[slots], k)
    karena[0, 0, 0, 0] = 42.0  # a view: writes land in the cache
    assert c.read(0, slots[:1])[0][0, 0, 0] == 42.0
    with pytest.raises(pagedkv.InvalidError, match="v:"):
        c.write(0, slots, k, k)
    c.close()
    assert karena[0, 0, 0, 0] == 42.0  # the memory outlives close() while a view lives
    with pytest.raises(pagedkv.StateError, match="closed"):
        c.read(0, slots)
    del karena
    gc.collect()


def test_write_errors_name_the_argument():
    c = pagedkv.Cache(num_blocks=4, block_size=4, storage="host", h_kv=2, d=8, dv=8, v_separate=True,
                      kv_dtype="f32")
    s = c.sequence()
    slots = s.append(2)
    k = np.zeros((2, 2, 8), np.float32)
    with pytest.raises(pagedkv.DTypeError, match="^k: dtype float64"):
        c.write(0, slots, k.astype(np.float64), k)
    with pytest.raises(pagedkv.ShapeError, match="^k: expected"):
        c.write(0, slots, np.zeros((2, 1, 8), np.float32), k)
    with pytest.raises(pagedkv.InvalidError, match="^k: the array is not C-contiguous"):
        c.write(0, slots, np.zeros((2, 2, 16), np.float32)[:, :, ::2], k)
    with pytest.raises(pagedkv.InvalidError, match="^v: required"):
        c.write(0, slots, k)
    with pytest.raises(pagedkv.DTypeError, match="^slots"):
        c.write(0, slots.astype(np.int32), k, k)
    with pytest.raises(pagedkv.SlotError):
        c.write(0, np.array([1000], np.int64), k[:1], k[:1])
    with pytest.raises(pagedkv.InvalidError, match="layer"):
        c.write(5, slots, k, k)
    with pytest.raises(pagedkv.ModeError):
        pagedkv.Cache(num_blocks=4).read(0, [0])
    c.check()


def test_fp8_cache():
    rng = np.random.default_rng(1)
    c = pagedkv.Cache(num_blocks=2, block_size=4, storage="host", kv_dtype="fp8_mla656")
    s = c.sequence()
    slots = s.append(3)
    x = rng.standard_normal((3, 576)).astype(np.float32)
    c.write(0, slots, x)
    rk, rv = c.read(0, slots)
    assert rk.shape == (3, 1, 576)
    rows = pagedkv.mla656_quantize(x)
    assert rows.shape == (3, 656) and rows.dtype == np.uint8
    assert np.array_equal(rk.reshape(3, 576), pagedkv.mla656_dequantize(rows))
    assert np.abs(rk.reshape(3, 576) - x).max() < 0.1 * np.abs(x).max()
    c.write(0, slots, rows, dtype="fp8_mla656")  # its own rows, copied
    assert np.array_equal(c.arenas(0)[0].reshape(-1, 656)[slots], rows)
    with pytest.raises(pagedkv.NonFiniteError):
        c.write(0, slots[:1], np.full((1, 576), np.nan, np.float32))


def test_errors_carry_status_and_detail():
    assert pagedkv.strerror(0) == "ok" and pagedkv.strerror(-4) and pagedkv.strerror(-99) == "unknown status"
    assert issubclass(pagedkv.DTypeError, TypeError) and issubclass(pagedkv.ShapeError, ValueError)
    statuses = {cls.status for cls in pagedkv.errors.BY_STATUS.values() if cls is not pagedkv.Error}
    assert set(range(-19, 0)) <= statuses
    for st in range(-1, -64, -1):  # every status the library describes has its class
        assert st in statuses or pagedkv.strerror(st) == "unknown status", st
    c = pagedkv.Cache(num_blocks=4, block_size=4)
    s = c.sequence()
    try:
        s.truncate(9)
    except pagedkv.InvalidError as e:
        assert e.status == -2 and "truncate" in e.detail and e.detail in str(e)
        assert c.last_error == e.detail
    with pytest.raises(pagedkv.BlockIdError):
        c.refcount(99)
    with pytest.raises(pagedkv.InvalidError, match="n:"):
        s.append(-1)


def test_check_and_closed_cache():
    c = pagedkv.Cache(num_blocks=4, block_size=4)
    s = c.sequence()
    s.append(3)
    assert c.check() is None
    c.close()
    for call in (lambda: s.append(1), lambda: c.sequence(), lambda: c.stats(), lambda: c.check(), lambda: len(s)):
        with pytest.raises(pagedkv.StateError):
            call()
    del s
    gc.collect()


def test_siphash_vector():
    # SipHash-2-4-128 reference vector: key 00..0f, empty input.
    assert pagedkv.siphash128(bytes(range(16)), b"").hex() == "a3817f04ba25a8e66df67214c7550293"
    with pytest.raises(pagedkv.InvalidError):
        pagedkv.siphash128(b"k", b"")


def test_bf16_helpers():
    x = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    assert np.array_equal(pagedkv.bf16_to_f32(pagedkv.f32_to_bf16(x))[:3], x[:3])
    assert pagedkv.f32_to_bf16(np.float32(1.0)).item() == 0x3F80
