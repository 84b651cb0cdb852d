"""Shared by python/tests: pytest (or the stand-in), the float64 attention
oracle in numpy, bf16 conversions and paged-cache builders."""
import os

import numpy as np

try:
    import pytest  # noqa: F401
except ImportError:  # the plain runner
    import minipytest as pytest  # noqa: F401

import pagedkv

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def vectors_dir():
    for d in (os.environ.get("PKV_VECTORS"), os.path.join(ROOT, "tests", "vectors"),
              os.path.join(ROOT, "..", "shared", "vectors")):
        if d and os.path.exists(os.path.join(d, "cases.txt")):
            return d
    return None


def bf16_round(x):
    """float -> the float64 value of its bf16 rounding."""
    return pagedkv.bf16_to_f32(pagedkv.f32_to_bf16(np.asarray(x, np.float32))).astype(np.float64)


def attn_oracle(q, k_cache, block_table, seqlens, scale, causal=False, v_cache=None, dv=None, indices=None,
                sink=None, window=0):
    """Attention over a paged cache in float64, straight from DESIGN.md section 4."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k_cache, np.float64)
    b, s_q, h_q, d = q.shape
    nb, bs, h_kv, _ = k.shape
    if dv is None:
        dv = v_cache.shape[-1] if v_cache is not None else d
    fk = k.reshape(nb * bs, h_kv, d)
    fv = np.asarray(v_cache, np.float64).reshape(nb * bs, h_kv, dv) if v_cache is not None else fk[..., :dv]
    g = h_q // h_kv
    out = np.zeros((b, s_q, h_q, dv))
    lse = np.full((b, h_q, s_q), np.inf)
    for i in range(b):
        if indices is None:
            n_i = int(seqlens[i])
            slots = np.array([block_table[i][p // bs] * bs + p % bs for p in range(n_i)], np.int64)
        for t in range(s_q):
            if indices is not None:
                sl = np.array([x for x in indices[i][t] if x >= 0], np.int64)
            else:
                n = min(n_i - s_q + t + 1, n_i) if causal else n_i
                sl = slots[max(n - window, 0) if window else 0:max(n, 0)]
            if len(sl) == 0:
                continue
            for h in range(h_q):
                s = fk[sl, h // g] @ q[i, t, h] * scale
                m = s.max()
                e = np.exp(s - m)
                z = e.sum()
                lse[i, h, t] = m + np.log(z)
                den = z + (np.exp(sink[h] - m) if sink is not None else 0.0)
                out[i, t, h] = (e / den) @ fv[sl, h // g]
    return out, lse


def host_cache(num_blocks, block_size, h_kv, d, dv, v_separate, kv_dtype, lens, rng, **kw):
    """A host cache holding len(lens) sequences of random rows; returns
    (cache, seqs, k_values, v_values) with the float rows written per slot."""
    cache = pagedkv.Cache(num_blocks=num_blocks, block_size=block_size, storage="host", h_kv=h_kv, d=d, dv=dv,
                          v_separate=v_separate, kv_dtype=kv_dtype, **kw)
    seqs = []
    for n in lens:
        s = cache.sequence()
        slots = s.append(int(n))
        k = rng.standard_normal((n, h_kv, d)).astype(np.float32)
        v = rng.standard_normal((n, h_kv, dv)).astype(np.float32) if v_separate else None
        cache.write(0, slots, k, v)
        seqs.append(s)
    return cache, seqs
