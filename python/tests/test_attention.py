"""pagedkv.attention against a float64 numpy computation on paged caches built by
the package (MLA and GQA shapes, causal, sparse, sink, empty sequences), the
shared test vectors, and argument errors."""
import os

import numpy as np
from helpers import attn_oracle, bf16_round, host_cache, pytest, vectors_dir

import pagedkv


def _close(out, lse, ref_out, ref_lse, fast):
    """pkv_attn's stated bound (2e-3 * max|out|, lse 1e-3); the oracle's float32 rounding."""
    scale = max(np.abs(ref_out).max(), 1e-30)
    tol_o, tol_l = (2e-3 * scale, 1e-3) if fast else (1e-5 * scale, 1e-5)
    assert np.abs(out - ref_out).max() <= tol_o, np.abs(out - ref_out).max()
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), fin)
    assert np.all(lse[~fin] == np.inf)
    assert np.abs(lse[fin] - ref_lse[fin]).max(initial=0) <= tol_l


@pytest.mark.parametrize("kv,fast,threads", [("f32", False, None), ("f32", True, None), ("bf16", True, 2),
                                             ("bf16", False, None)])
def test_mla_decode(kv, fast, threads):
    rng = np.random.default_rng(2)
    lens = [0, 70, 200]
    cache, seqs = host_cache(12, 64, 1, 576, 512, False, kv, lens, rng)
    table, seqlens = cache.export_flashmla(seqs)
    k_cache, v_cache = cache.arenas(0)
    assert v_cache is None
    h_q = 16
    q = rng.standard_normal((3, 1, h_q, 576)).astype(np.float32)
    scale = 1 / np.sqrt(192)
    if kv == "bf16":
        qb = pagedkv.f32_to_bf16(q)
        out, lse = pagedkv.attention(qb, k_cache, table, seqlens, scale, dv=512, fast=fast, threads=threads,
                                     dtype="bf16")
        kf = pagedkv.bf16_to_f32(k_cache)
        ref = attn_oracle(bf16_round(q), kf, table, seqlens, scale, dv=512)
    else:
        out, lse = pagedkv.attention(q, k_cache, table, seqlens, scale, dv=512, fast=fast, threads=threads)
        ref = attn_oracle(q, k_cache, table, seqlens, scale, dv=512)
    assert out.shape == (3, 1, h_q, 512) and out.dtype == np.float32 and lse.shape == (3, h_q, 1)
    assert np.all(out[0] == 0)  # an empty sequence
    _close(out, lse, ref[0], ref[1], fast)


@pytest.mark.parametrize("fast", [False, True])
def test_gqa_separate_v_causal_mtp(fast):
    rng = np.random.default_rng(3)
    lens = [5, 33, 64, 17]
    cache, seqs = host_cache(32, 16, 2, 64, 32, True, "f16", lens, rng)
    table, seqlens = cache.export_flashmla(seqs, max_blocks_per_seq=6)
    k_cache, v_cache = cache.arenas(0)
    q = rng.standard_normal((4, 3, 8, 64)).astype(np.float16)
    out, lse = pagedkv.attention(q, k_cache, table, seqlens, 0.125, causal=True, v_cache=v_cache, fast=fast)
    ref = attn_oracle(q, k_cache, table, seqlens, 0.125, causal=True, v_cache=v_cache)
    assert out.shape == (4, 3, 8, 32)
    _close(out, lse, ref[0], ref[1], fast)
    # the same through the threads pool, twice: bit-identical run to run
    if fast:
        o1, _ = pagedkv.attention(q, k_cache, table, seqlens, 0.125, causal=True, v_cache=v_cache, threads=2)
        o2, _ = pagedkv.attention(q, k_cache, table, seqlens, 0.125, causal=True, v_cache=v_cache, threads=2)
        assert np.array_equal(o1, o2)
        _close(o1, lse, ref[0], ref[1], True)


@pytest.mark.parametrize("fast", [False, True])
def test_sliding_window(fast):
    """window = W: each query row sees its last W keys (decode and causal MTP)."""
    rng = np.random.default_rng(5)
    lens = [3, 40, 130]
    cache, seqs = host_cache(16, 16, 2, 32, 32, True, "f32", lens, rng)
    table, seqlens = cache.export_flashmla(seqs)
    k_cache, v_cache = cache.arenas(0)
    for s_q, causal in ((1, False), (3, True)):
        q = rng.standard_normal((3, s_q, 4, 32)).astype(np.float32)
        for w in (1, 17, 200):
            out, lse = pagedkv.attention(q, k_cache, table, seqlens, 0.2, causal=causal, v_cache=v_cache, fast=fast,
                                         window=w)
            ref = attn_oracle(q, k_cache, table, seqlens, 0.2, causal=causal, v_cache=v_cache, window=w)
            _close(out, lse, ref[0], ref[1], fast)
    with pytest.raises(pagedkv.InvalidError, match="^window"):
        pagedkv.attention(q, k_cache, table, seqlens, 0.2, v_cache=v_cache, window=-1)


@pytest.mark.parametrize("fast", [False, True])
def test_sparse_indices_and_sink(fast):
    rng = np.random.default_rng(4)
    cache, seqs = host_cache(8, 8, 1, 32, 16, False, "f32", [20, 30], rng)
    k_cache, _ = cache.arenas(0)
    slots = np.concatenate([cache.slot_mapping([s]) for s in seqs])
    idx = np.full((2, 1, 12), -1, np.int32)
    idx[0, 0, :10] = rng.choice(slots, 10, replace=False)
    idx[1, 0, :5] = rng.choice(slots, 5, replace=False)
    q = rng.standard_normal((2, 1, 4, 32)).astype(np.float32)
    sink = rng.standard_normal(4).astype(np.float32)
    out, lse = pagedkv.attention(q, k_cache, None, None, 0.2, dv=16, indices=idx, attn_sink=sink, fast=fast)
    ref = attn_oracle(q, k_cache, None, None, 0.2, dv=16, indices=idx, sink=sink)
    _close(out, lse, ref[0], ref[1], fast)


def test_fp8_mla_cache():
    rng = np.random.default_rng(5)
    cache, seqs = host_cache(4, 64, 1, 576, 512, False, "fp8_mla656", [100, 30], rng)
    table, seqlens = cache.export_flashmla(seqs)
    k_cache, _ = cache.arenas(0)
    assert k_cache.shape == (4, 64, 1, 656)
    q = rng.standard_normal((2, 1, 8, 576)).astype(np.float32)
    with pytest.raises(pagedkv.DTypeError, match="k_cache"):
        pagedkv.attention(q, k_cache, table, seqlens, 0.07)
    out, lse = pagedkv.attention(q, k_cache, table, seqlens, 0.07, kv_dtype="fp8_mla656")
    kf = pagedkv.mla656_dequantize(k_cache.reshape(4, 64, 656)).reshape(4, 64, 1, 576)
    ref = attn_oracle(q, kf, table, seqlens, 0.07, dv=512)
    _close(out, lse, ref[0], ref[1], True)


def _load_case(d, name, meta):
    arr = {p: np.load(os.path.join(d, f"{name}.{p}.npy")) for p in
           ("q", "k_cache", "block_table", "cache_seqlens", "out", "lse")}
    for opt in ("v_cache", "indices", "attn_sink"):
        path = os.path.join(d, f"{name}.{opt}.npy")
        arr[opt] = np.load(path) if os.path.exists(path) else None
    if meta.get("kv_dtype") == "fp8":  # [num_blocks][block_size][656] rows -> one KV head
        arr["k_cache"] = arr["k_cache"].reshape(arr["k_cache"].shape[0], arr["k_cache"].shape[1], 1, 656)
    return arr


def test_shared_vectors():
    d = vectors_dir()
    if d is None:
        pytest.skip("no test vectors (tests/vectors or ../shared/vectors)")
    cases = 0
    for line in open(os.path.join(d, "cases.txt")):
        if not line.strip() or line.startswith("#"):
            continue
        name, *kv = line.split()
        meta = dict(x.split("=") for x in kv)
        a = _load_case(d, name, meta)
        dtype = "bf16" if meta["dtype"] == "bf16" else None
        kv_dtype = "fp8_mla656" if meta.get("kv_dtype") == "fp8" else None
        for fast in (False, True):
            out, lse = pagedkv.attention(a["q"], a["k_cache"], a["block_table"], a["cache_seqlens"],
                                         float(meta["softmax_scale"]), causal=meta["causal"] == "1",
                                         v_cache=a["v_cache"], dv=int(meta["dv"]), fast=fast, dtype=dtype,
                                         kv_dtype=kv_dtype, indices=a["indices"], attn_sink=a["attn_sink"])
            _close(out, lse, a["out"], a["lse"], fast)
        cases += 1
    assert cases >= 7


def test_argument_errors_name_the_argument():
    rng = np.random.default_rng(6)
    kc = rng.standard_normal((4, 4, 2, 8)).astype(np.float32)
    q = rng.standard_normal((1, 1, 4, 8)).astype(np.float32)
    table = np.array([[0, 1]], np.int32)
    lens = np.array([6], np.int32)
    pagedkv.attention(q, kc, table, lens, 0.3)  # fine
    cases = [
        (dict(q=q.astype(np.float64)), pagedkv.DTypeError, "^q: dtype float64"),
        (dict(q=pagedkv.f32_to_bf16(q)), pagedkv.DTypeError, "^q: .*dtype='bf16'"),
        (dict(q=q[0]), pagedkv.ShapeError, "^q: expected"),
        (dict(q=np.zeros((1, 1, 8, 4), np.float32)[..., ::1].transpose(0, 1, 3, 2)), pagedkv.InvalidError,
         "^q: the array is not C-contiguous"),
        (dict(k_cache=kc[..., :4]), pagedkv.InvalidError, "^k_cache: the array is not C-contiguous"),
        (dict(k_cache=kc.astype(np.float16)), None, None),  # q f32 with f16 KV is allowed
        (dict(block_table=table.astype(np.int64)), pagedkv.DTypeError, "^block_table: expected int32"),
        (dict(block_table=np.array([0, 1], np.int32)), pagedkv.ShapeError, "^block_table: expected 2"),
        (dict(cache_seqlens=np.array([6, 1], np.int32)), pagedkv.ShapeError, "^cache_seqlens"),
        (dict(cache_seqlens=np.array([9], np.int32)), pagedkv.SeqLenError, "cache_seqlens"),
        (dict(block_table=np.array([[0, 7]], np.int32)), pagedkv.BlockIdError, "block_table"),
        (dict(q=np.zeros((1, 1, 3, 8), np.float32)), pagedkv.HeadsError, "h_q"),
        (dict(v_cache=np.zeros((4, 4, 1, 8), np.float32)), pagedkv.ShapeError, "^v_cache"),
        (dict(attn_sink=np.zeros(3, np.float32)), pagedkv.ShapeError, "^attn_sink"),
        (dict(threads=-1), pagedkv.InvalidError, "threads"),
        (dict(q=np.zeros((0, 1, 4, 8), np.float32), block_table=np.zeros((0, 2), np.int32),
              cache_seqlens=np.zeros(0, np.int32)), pagedkv.InvalidError, "^q: every dimension"),
        (dict(block_table=np.zeros((1, 0), np.int32)), pagedkv.InvalidError, "^block_table: needs"),
        (dict(dv=9), pagedkv.InvalidError, "^dv"),
        (dict(softmax_scale=float("nan")), pagedkv.InvalidError, "^softmax_scale"),
        (dict(softmax_scale="a"), pagedkv.InvalidError, "^softmax_scale"),
        (dict(indices=np.zeros((1, 1, 2), np.int32), causal=True), pagedkv.InvalidError, "^causal"),
        (dict(indices=np.zeros((1, 1, 0), np.int32)), pagedkv.InvalidError, "^indices"),
        (dict(dtype="int4"), pagedkv.DTypeError, "dtype"),
    ]
    base = dict(q=q, k_cache=kc, block_table=table, cache_seqlens=lens, softmax_scale=0.3)
    for change, exc, match in cases:
        args = dict(base, **change)
        if exc is None:
            pagedkv.attention(**args)
            continue
        with pytest.raises(exc, match=match):
            pagedkv.attention(**args)
    with pytest.raises(pagedkv.InvalidError, match="threads"):
        pagedkv.attention(q, kc, table, lens, 0.3, fast=False, threads=2)


class _DLPackOnly:
    """A producer that offers nothing but __dlpack__ (numpy's), to test the importer without torch."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()


def test_any_dlpack_producer_without_copies():
    rng = np.random.default_rng(10)
    kc = rng.standard_normal((4, 4, 2, 8)).astype(np.float32)
    q = rng.standard_normal((1, 2, 4, 8)).astype(np.float32)
    table = np.array([[2, 0, 3]], np.int32)
    lens = np.array([10], np.int32)
    want = pagedkv.attention(q, kc, table, lens, 0.3)
    got = pagedkv.attention(_DLPackOnly(q), _DLPackOnly(kc), _DLPackOnly(table), _DLPackOnly(lens), 0.3)
    assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    view, is_bf16 = pagedkv._pagedkv._from_dlpack(_DLPackOnly(kc))
    assert not is_bf16 and view.shape == kc.shape
    assert view.__array_interface__["data"][0] == kc.__array_interface__["data"][0]  # the same memory
    with pytest.raises(pagedkv.InvalidError, match="^q: the array is not C-contiguous"):
        pagedkv.attention(_DLPackOnly(q[:, :, ::2]), kc, table, lens, 0.3)
    with pytest.raises(pagedkv.DTypeError, match="^k_cache"):
        pagedkv.attention(q, _DLPackOnly(kc.astype(np.float64)), table, lens, 0.3)
