"""pagedkv: a paged KV cache for LLM inference and attention over it, from Python.

    import pagedkv
    with pagedkv.Cache(num_blocks=1024, block_size=64) as cache:    # metadata mode
        seq = cache.sequence()
        slots, cow = seq.append(100)                                  # 100 slots to write
        block_table, cache_seqlens = cache.export_flashmla([seq])

Hybrid models (a full-attention group beside a sliding-window group, say) use
pagedkv.Groups: one cache per group, group sequences appended in all of them at once.

A thin layer over the C library (include/pagedkv.h) through a CPython extension.
Arrays are numpy arrays; PyTorch CPU tensors (any DLPack producer) are accepted
too, bfloat16 included; numpy bf16 data is uint16 with dtype="bf16". Every
failure raises a pagedkv.Error subclass named after the library's status.
"""
import sys

import numpy as np

from . import _pagedkv
from . import errors
from .errors import *  # noqa: F401,F403  (the exception classes are part of the API)
from .errors import BY_STATUS, DTypeError, Error, InvalidError, ShapeError

errors._complete(_pagedkv.strerror)
_pagedkv._set_errors(BY_STATUS)

__version__ = "1.3.0"
library_version = _pagedkv.library_version
Sequence = _pagedkv.Sequence
GroupSequence = _pagedkv.GroupSequence
strerror = _pagedkv.strerror
siphash128 = _pagedkv.siphash128

F32, F16, BF16, FP8_MLA656 = 0, 1, 2, 3
_DTYPE_CODES = {"f32": F32, "float32": F32, "f16": F16, "float16": F16, "bf16": BF16, "bfloat16": BF16,
                "fp8_mla656": FP8_MLA656}
_DTYPE_NAMES = {F32: "f32", F16: "f16", BF16: "bf16", FP8_MLA656: "fp8_mla656"}

# Metadata-mode tier transfers (pkv_tier_transfer): the op codes and the record of
# Cache.drain_transfers(array=True), field for field the C struct (48 bytes).
XFER_OFFLOAD, XFER_LOAD, XFER_DEMOTE = 1, 2, 3
TRANSFER_DTYPE = np.dtype([("op", "=i4"), ("tier", "=i4"), ("block", "=i4"), ("reserved", "=i4"), ("slot", "=i8"),
                           ("dst_slot", "=i8"), ("key", "V16")])


# --------------------------------------------------------------------------- arrays

def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch"


def _array(x, name):
    """x -> (ndarray without a copy where possible, is_bf16). DLPack producers
    (torch) come through _from_dlpack; lists and scalars through np.asarray."""
    if isinstance(x, np.ndarray):
        return x, False
    if hasattr(x, "__dlpack__"):
        try:
            return _pagedkv._from_dlpack(x)
        except Error as e:
            raise type(e)(f"{name}: {e.detail}", e.status, f"{name}: {e.detail}") from None
        except Exception as e:  # e.g. a tensor that requires grad, or on a GPU
            raise InvalidError(f"{name}: cannot import through DLPack: {e}") from None
    try:
        return np.asarray(x), False
    except Exception as e:
        raise InvalidError(f"{name}: expected an array, got {type(x).__name__} ({e})") from None


def _contiguous(a, name):
    if not a.flags.c_contiguous:
        raise InvalidError(f"{name}: the array is not C-contiguous (strides {a.strides}); pass np.ascontiguousarray(...)")
    return a


def _data(x, name, raw=(), allow=(F32, F16, BF16)):
    """A float/bf16/fp8 data array -> (contiguous ndarray, pkv dtype code).
    raw: the dtype names that uint16 / uint8 arrays may stand for ("bf16", "fp8_mla656")."""
    a, bf16 = _array(x, name)
    if isinstance(x, (list, tuple)) and a.dtype == np.float64:
        a = a.astype(np.float32)
    code = None
    if a.dtype == np.float32:
        code = F32
    elif a.dtype == np.float16:
        code = F16
    elif a.dtype == np.uint16 and (bf16 or "bf16" in raw):
        code = BF16
    elif a.dtype == np.uint8 and "fp8_mla656" in raw:
        code = FP8_MLA656
    if code is None or code not in allow:
        hint = " (bf16 data as uint16 needs dtype='bf16')" if a.dtype == np.uint16 else ""
        names = ", ".join(_DTYPE_NAMES[c] for c in allow)
        raise DTypeError(f"{name}: dtype {a.dtype} is not allowed here (expected {names}){hint}")
    return _contiguous(a, name), code


def _ints(x, name, dtype, ndim=None, optional=False):
    """An index array of exactly `dtype` (int32 tables, int64 slots); lists are converted,
    ndarrays of another dtype are refused (a silent cast could truncate ids)."""
    if x is None:
        if optional:
            return None
        raise InvalidError(f"{name}: required")
    a, _ = _array(x, name)
    if not isinstance(x, np.ndarray) and not hasattr(x, "__dlpack__"):
        a = np.asarray(x, dtype=dtype)
    if a.dtype != dtype:
        raise DTypeError(f"{name}: expected {np.dtype(dtype).name}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    return _contiguous(a, name)


def _raw_names(dtype):
    if dtype is None:
        return ()
    if isinstance(dtype, str):
        if dtype not in _DTYPE_CODES:
            raise DTypeError(f"dtype: unknown value {dtype!r} (expected one of {sorted(_DTYPE_CODES)})")
        return (_DTYPE_NAMES[_DTYPE_CODES[dtype]],)
    return tuple(dtype)


def _out(a, like):
    """numpy out; a torch tensor when the caller passed torch tensors."""
    if like is not None:
        import torch
        return torch.from_numpy(a)
    return a


# --------------------------------------------------------------------------- cache

class Cache(_pagedkv.Cache):
    """A paged KV cache.

    Cache(num_blocks=1024, block_size=64, storage="metadata"|"host", num_layers=1, h_kv=1,
          d=576, dv=512, v_separate=False, kv_dtype="bf16"|"f16"|"f32"|"fp8_mla656",
          thread_safe=False, prefix_cache=False, auto_register=False, fp8_pow2_scale=False,
          hash_key=None (16 bytes; None: random), window=0 (a sliding-window cache: blocks
          that leave the window of the next token are released, -1 in the tables))

    Keyword arguments only; defaults are pkv_config_init's. Use as a context manager
    or call close(). Methods: sequence(ns=0), lookup(tokens, namespace=0, adapter=0, mm=None),
    peek(tokens, namespace=0, adapter=0, mm=None), register(seq), evict(n), reset_prefix(),
    enable_events(capacity=4096), drain_events(), append_batch(seqs, n=1, tokens=None),
    export_flashmla(seqs), export_flashinfer(seqs), slot_mapping(seqs), write(layer, slots, k, v=None),
    read(layer, slots), arenas(layer), add_host_tier(capacity_blocks, write_through=False),
    add_file_tier(dir, capacity_bytes, fsync=False), tier_stats(tier), drain_transfers(array=False),
    start_async_loads(io_threads), lookup_async(tokens, namespace=0, adapter=0, mm=None),
    stats(), check(), refcount(block_id); properties config, closed, last_error.

    Asynchronous loads (host mode, file tiers): after start_async_loads(n), lookup_async returns
    (seq, ready_tokens, loading_tokens) at once while n I/O threads read the blocks found in
    backend tiers; seq.load_poll() -> (loading_tokens, length) and seq.load_wait() -> length
    tell when they are in. Until then calls that read or extend seq raise StateError.
    """

    def drain_transfers(self, array=False):
        """The queued tier transfers of a metadata-mode cache, oldest first (empty in host
        mode or without tiers). Perform them in this order after every call that may take
        pool blocks (append, lookup, evict, swap_out, swap_in), before its copy-on-write
        copy and before any kernel reads the blocks:
          offload: device block `block` -> slot `slot` of tier `tier`;
          load:    slot `slot` of tier `tier` -> device block `block`;
          demote:  slot `slot` of tier `tier` -> slot `dst_slot` of tier + 1.
        array=False: a list of dicts {op: "offload"|"load"|"demote", tier, block, slot,
        dst_slot, key: bytes16}; array=True: a numpy array of TRANSFER_DTYPE records (op
        as XFER_OFFLOAD / XFER_LOAD / XFER_DEMOTE), cheaper for long queues.
        """
        if not array:
            return super().drain_transfers()
        return np.frombuffer(bytearray(self._drain_transfers_raw()), TRANSFER_DTYPE)

    def write(self, layer, slots, k, v=None, dtype=None):
        """Writes K (and V, when v_separate) rows for `slots` into `layer` (host mode).

        k: [n, h_kv, d] (or [n, h_kv * d]) of float32 (converted to the cache's dtype) or of
        the cache's own dtype (copied; bf16 as uint16 with dtype="bf16" or a torch bfloat16
        tensor). An FP8 MLA cache takes float32 or bf16 [n, 576] (quantized) or its own
        uint8 [n, 656] rows with dtype="fp8_mla656". v: [n, h_kv, dv], required exactly when
        the cache has a separate V arena. Nothing is written unless every slot is valid.
        """
        cfg = self.config
        s = _ints(slots, "slots", np.int64, ndim=1)
        n = s.shape[0]
        raw = _raw_names(dtype) + (cfg["kv_dtype"],)
        a, code = _data(k, "k", raw=raw, allow=(F32, F16, BF16, FP8_MLA656))
        kv = _DTYPE_CODES[cfg["kv_dtype"]]
        if code not in (F32, kv) and not (kv == FP8_MLA656 and code == BF16):
            raise DTypeError(f"k: dtype {_DTYPE_NAMES[code]} does not fit a {cfg['kv_dtype']} cache "
                             f"(pass float32 or {cfg['kv_dtype']})")
        row = 656 if code == FP8_MLA656 else (576 if kv == FP8_MLA656 else cfg["h_kv"] * cfg["d"])
        if a.ndim < 1 or a.shape[0] != n or a.size != n * row:
            want = "[n, 656]" if code == FP8_MLA656 else ("[n, 576]" if kv == FP8_MLA656 else "[n, h_kv, d]")
            raise ShapeError(f"k: expected {want} = {n} rows of {row} values, got shape {a.shape}")
        vv = None
        if cfg["v_separate"]:
            if v is None:
                raise InvalidError("v: required (the cache has a separate V arena)")
            vv, vcode = _data(v, "v", raw=raw)
            if vcode != code:
                raise DTypeError(f"v: dtype {_DTYPE_NAMES[vcode]} differs from k's {_DTYPE_NAMES[code]}")
            vrow = cfg["h_kv"] * cfg["dv"]
            if vv.ndim < 1 or vv.shape[0] != n or vv.size != n * vrow:
                raise ShapeError(f"v: expected [n, h_kv, dv] = {n} rows of {vrow} values, got shape {vv.shape}")
        elif v is not None:
            raise InvalidError("v: this cache keeps V as the first dv dims of K (v_separate=False); pass v=None")
        self._write(layer, s, a, vv, code)

    def read(self, layer, slots):
        """Reads rows back as float32: (k [n, h_kv, d], v [n, h_kv, dv]); with V shared,
        v holds the first dv dims of k."""
        cfg = self.config
        s = _ints(slots, "slots", np.int64, ndim=1)
        n = s.shape[0]
        k = np.empty((n, cfg["h_kv"], cfg["d"]), np.float32)
        v = np.empty((n, cfg["h_kv"], cfg["dv"]), np.float32)
        self._read(layer, s, k, v)
        return _out(k, slots if _is_torch(slots) else None), _out(v, slots if _is_torch(slots) else None)

    def __repr__(self):
        if self.closed:
            return "<pagedkv.Cache (closed)>"
        c = self.config
        return (f"<pagedkv.Cache {c['num_blocks']} blocks of {c['block_size']}, {c['storage']}, "
                f"{c['kv_dtype']}>")


_pagedkv._set_cache_class(Cache)  # the class of a group's cache (Groups.cache(i))


# --------------------------------------------------------------------------- groups

class Groups(_pagedkv.Groups):
    """KV groups (library 1.3): one cache per group of layers of a hybrid model, and
    group sequences kept in step across them.

    Groups(configs): configs is a list of 1 to 8 dicts of Cache keywords, one per group,
    e.g. [dict(num_blocks=512, num_layers=1), dict(num_blocks=128, num_layers=5,
    window=1024)] for a Gemma-3-like model (a full group and a sliding-window group).
    thread_safe must be the same in every group. Use as a context manager or call close().

    sequence(ns=0) -> GroupSequence; lookup(tokens, namespace=0) -> (GroupSequence,
    cached_tokens), the shortest of the groups' prefix hits (0 when a group has no prefix
    cache; window groups have none); cache(i) -> group i's Cache, owned by the groups (its
    close() does nothing; after Groups.close() it raises StateError); properties
    num_groups, configs, closed, last_error.

    GroupSequence: append(n or tokens) takes blocks in every group or in none and
    returns one slots array per group (with host storage in every group), else
    (slots, cows) with cows[i] None or group i's (src, dst) copy-on-write copy;
    fork(), truncate(n), free(), len(), blocks_needed(n) -> a list, member(i) -> the
    Sequence of group i (for blocks, exports, slot_mapping and write / read on
    cache(i); it refuses append, truncate, fork, free and swap with StateError).
    """

    def __repr__(self):
        if self.closed:
            return "<pagedkv.Groups (closed)>"
        parts = [f"{c['num_blocks']} blocks of {c['block_size']}, {c['storage']}"
                 + (f", window {c['window']}" if c["window"] else "") for c in self.configs]
        return f"<pagedkv.Groups {'; '.join(parts)}>"


# --------------------------------------------------------------------------- attention

def attention(q, k_cache, block_table, cache_seqlens, softmax_scale, causal=False, v_cache=None, dv=None,
              indices=None, attn_sink=None, fast=True, threads=None, dtype=None, kv_dtype=None, window=0):
    """Attention over a paged KV cache (FlashMLA's convention) -> (out, lse).

    q: [b, s_q, h_q, d] float32 / float16 / bf16 (uint16 with dtype="bf16", or torch bfloat16).
    k_cache: [num_blocks, block_size, h_kv, d] of the same kinds, or FP8 MLA rows uint8
      [num_blocks, block_size, 1, 656] with kv_dtype="fp8_mla656" (d = 576).
    block_table: int32 [b, max_blocks_per_seq]; cache_seqlens: int32 [b] (both may be None
      with indices).
    v_cache: None (V = the first dv dims of K, MLA) or [num_blocks, block_size, h_kv, dv].
    dv: V's head dim (default: v_cache's, else d; 512 for FP8 MLA).
    indices: None, or int32 [b, s_q, topk] slot ids (sparse attention, -1 skipped; causal off).
    attn_sink: None or float32 [h_q]. window: 0 (full attention) or W > 0, a sliding window:
    a query row sees only the last W keys it would see (FlashInfer's window_left = W - 1;
    dense only). fast: pkv_attn (else the float64 oracle,
    pkv_attn_reference). threads: None (the calling thread), 0 (all CPUs) or a count: a
    worker pool per count, created once and reused. The GIL is released during the call.

    Returns out float32 [b, s_q, h_q, dv] and lse float32 [b, h_q, s_q] (natural log, +inf for
    a row with no key); torch tensors when q is one.
    """
    raw = _raw_names(dtype) + _raw_names(kv_dtype)
    qa, qcode = _data(q, "q", raw=raw, allow=(F32, F16, BF16))
    if qa.ndim != 4:
        raise ShapeError(f"q: expected [b, s_q, h_q, d], got shape {qa.shape}")
    ka, kcode = _data(k_cache, "k_cache", raw=raw, allow=(F32, F16, BF16, FP8_MLA656))
    b, s_q, h_q, d = qa.shape
    if kcode == FP8_MLA656:
        if ka.ndim == 3:
            ka = ka.reshape(ka.shape[0], ka.shape[1], 1, ka.shape[2])
        if ka.ndim != 4 or ka.shape[2:] != (1, 656):
            raise ShapeError(f"k_cache: FP8 MLA rows are [num_blocks, block_size, 1, 656], got shape {ka.shape}")
        h_kv, kd = 1, 576
    else:
        if ka.ndim != 4:
            raise ShapeError(f"k_cache: expected [num_blocks, block_size, h_kv, d], got shape {ka.shape}")
        h_kv, kd = ka.shape[2], ka.shape[3]
    if kd != d:
        raise ShapeError(f"q: head dim {d} differs from k_cache's {kd}")
    num_blocks, block_size = ka.shape[0], ka.shape[1]
    va = None
    if v_cache is not None:
        va, vcode = _data(v_cache, "v_cache", raw=raw, allow=(F32, F16, BF16))
        if vcode != kcode:
            raise DTypeError(f"v_cache: dtype {_DTYPE_NAMES[vcode]} differs from k_cache's {_DTYPE_NAMES[kcode]}")
        if va.ndim != 4 or va.shape[:3] != ka.shape[:3]:
            raise ShapeError(f"v_cache: expected [{num_blocks}, {block_size}, {h_kv}, dv], got shape {va.shape}")
        if dv is not None and dv != va.shape[3]:
            raise ShapeError(f"dv: {dv} differs from v_cache's head dim {va.shape[3]}")
        dv = va.shape[3]
    elif dv is None:
        dv = 512 if kcode == FP8_MLA656 else d
    if indices is None:
        table = _ints(block_table, "block_table", np.int32, ndim=2)
        lens = _ints(cache_seqlens, "cache_seqlens", np.int32, ndim=1)
        if table.shape[0] != b:
            raise ShapeError(f"block_table: {table.shape[0]} rows for a batch of {b}")
        if lens.shape[0] != b:
            raise ShapeError(f"cache_seqlens: {lens.shape[0]} lengths for a batch of {b}")
        idx, topk, mbps = None, 0, table.shape[1]
    else:
        idx = _ints(indices, "indices", np.int32, ndim=3)
        if idx.shape[:2] != (b, s_q):
            raise ShapeError(f"indices: expected [{b}, {s_q}, topk], got shape {idx.shape}")
        topk = idx.shape[2]
        table = _ints(block_table, "block_table", np.int32, ndim=2, optional=True)
        lens = _ints(cache_seqlens, "cache_seqlens", np.int32, ndim=1, optional=True)
        mbps = table.shape[1] if table is not None else 0
    sink = None
    if attn_sink is not None:
        sink = _ints(attn_sink, "attn_sink", np.float32, ndim=1) if not isinstance(attn_sink, (list, tuple)) \
            else np.asarray(attn_sink, np.float32)
        if sink.shape != (h_q,):
            raise ShapeError(f"attn_sink: expected [{h_q}], got shape {sink.shape}")
    try:
        softmax_scale = float(softmax_scale)
    except (TypeError, ValueError):
        raise InvalidError(f"softmax_scale: expected a number, got {softmax_scale!r}") from None
    # The library's range rules (pkv_attn_reference), checked here to name the argument.
    if min(qa.shape) < 1:
        raise InvalidError(f"q: every dimension must be >= 1, got shape {qa.shape}")
    if min(ka.shape) < 1:
        raise InvalidError(f"k_cache: every dimension must be >= 1, got shape {ka.shape}")
    if dv < 1 or (va is None and dv > d):
        raise InvalidError(f"dv: {dv} must be in [1, d = {d}] when V is the first dv dims of K")
    if kcode == FP8_MLA656 and (dv != 512 or va is not None):
        raise InvalidError("dv: FP8 MLA caches have dv = 512 and no v_cache")
    if idx is None and mbps < 1:
        raise InvalidError(f"block_table: needs at least one column, got shape {table.shape}")
    if idx is not None and causal:
        raise InvalidError("causal: sparse attention (indices) is not causal; pass causal=False")
    if idx is not None and topk < 1:
        raise InvalidError(f"indices: topk must be >= 1, got shape {idx.shape}")
    if window < 0 or (idx is not None and window):
        raise InvalidError(f"window: must be 0 or positive, and 0 with indices; got {window}")
    if not np.isfinite(softmax_scale):
        raise InvalidError(f"softmax_scale: must be finite, got {softmax_scale}")
    out = np.empty((b, s_q, h_q, dv), np.float32)
    lse = np.empty((b, h_q, s_q), np.float32)
    geom = (b, s_q, h_q, h_kv, d, dv, block_size, mbps, num_blocks, 1 if causal else 0, softmax_scale,
            qcode, kcode, topk, int(window))
    _pagedkv._attn(qa, ka, va, table, lens, idx, sink, out, lse, geom, bool(fast), threads)
    like = q if _is_torch(q) else None
    return _out(out, like), _out(lse, like)


# --------------------------------------------------------------------------- FP8 MLA rows

def mla656_quantize(x, pow2_scale=False):
    """float32 [..., 576] -> uint8 [..., 656]: FlashMLA's FP8 MLA rows (pkv_mla656_quantize)."""
    a, code = _data(x, "x", allow=(F32,))
    if a.ndim < 1 or a.shape[-1] != 576:
        raise ShapeError(f"x: expected [..., 576], got shape {a.shape}")
    out = np.empty(a.shape[:-1] + (656,), np.uint8)
    _pagedkv._mla656(a, out, True, bool(pow2_scale))
    return out


def mla656_dequantize(rows):
    """uint8 [..., 656] -> float32 [..., 576] (pkv_mla656_dequantize)."""
    a, _ = _data(rows, "rows", raw=("fp8_mla656",), allow=(FP8_MLA656,))
    if a.ndim < 1 or a.shape[-1] != 656:
        raise ShapeError(f"rows: expected [..., 656], got shape {a.shape}")
    out = np.empty(a.shape[:-1] + (576,), np.float32)
    _pagedkv._mla656(a, out, False, False)
    return out


def bf16_to_f32(x):
    """bf16 bits (uint16) -> float32."""
    return (np.asarray(x, np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    """float32 -> bf16 bits (uint16), round to nearest even (NaN kept NaN)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, np.float32))
    r[nan] = 0x7FC0
    return r


__all__ = ["Cache", "Sequence", "Groups", "GroupSequence", "attention", "TRANSFER_DTYPE", "XFER_OFFLOAD",
           "XFER_LOAD", "XFER_DEMOTE", "mla656_quantize", "mla656_dequantize", "bf16_to_f32", "f32_to_bf16",
           "strerror", "siphash128", "library_version", "Error"] + [c.__name__ for c in BY_STATUS.values()
                                                                     if c is not Error]
del sys
