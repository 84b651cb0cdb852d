#!/usr/bin/env python3
"""Makes the attention test vectors in this folder: inputs in FlashMLA's argument
convention and the expected out / lse, computed here in float64 by a plain NumPy
implementation that shares nothing with the library.

    python3 tests/vectors/gen_vectors.py            # rewrites tests/vectors/*
    python3 tests/vectors/gen_vectors.py --check    # recomputes, compares with the files

Needs numpy (Debian: python3-numpy). Deterministic: every case has its own seed.
The files are committed; the tests only read them (no Python needed).

Format (the same as ../shared/vectors): cases.txt has one line per case,
"name key=value ..."; each array is <name>.<array>.npy. bf16 arrays are stored as
their raw bits ('<u2'); an FP8 cache (kv_dtype=fp8) is uint8
[num_blocks][block_size][656] in FlashMLA's layout (512 e4m3 latents in 4 tiles
of 128, 4 float32 scales, 64 bf16 RoPE values); v_shared=1 means V is the first
dv dims of K (no v_cache file). block_table pads with -1; cache blocks no
sequence uses are filled with NaN (FP8: 0xff bytes), as FlashMLA's tests do.
Optional arrays: indices (int32 [b][s_q][topk], slot ids, -1 skipped: sparse
attention; block_table and cache_seqlens are then not read) and attn_sink
(float32 [h_q]). out[b][s_q][h_q][dv] and lse[b][h_q][s_q] are float64 (natural
log; +inf and out 0 for a row that sees no key).
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# ---- number formats (independent of the library's C code) ----

def bf16_bits(x):
    """float array -> bfloat16 bits, round to nearest even."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def e4m3_table():
    """Value of every OCP e4m3 ('fn') code: bias 7, subnormals, 0x7f/0xff NaN."""
    vals = np.empty(256)
    for c in range(256):
        e, m = (c >> 3) & 15, c & 7
        v = m / 8.0 * 2.0 ** -6 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7)
        vals[c] = -v if c & 0x80 else v
    vals[0x7F] = vals[0xFF] = np.nan
    return vals


E4M3 = e4m3_table()
# the 127 non-negative finite codes in increasing value (code == index)
POS = E4M3[:0x7F]


def e4m3_encode(y):
    """Nearest e4m3 code to each y (|y| <= 448), ties to the even code."""
    a = np.abs(y)
    hi = np.clip(np.searchsorted(POS, a), 1, 0x7E)
    lo = hi - 1
    d_lo, d_hi = a - POS[lo], POS[hi] - a
    pick = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    pick = np.where(a >= 448.0, 0x7E, pick)
    return (pick | np.where(np.signbit(y), 0x80, 0)).astype(np.uint8)


def fp8_row(x):
    """576 values -> (656 bytes, the 576 values the row stands for, in float64)."""
    x = np.asarray(x, dtype=np.float32)
    row = np.zeros(656, dtype=np.uint8)
    deq = np.zeros(576)
    for t in range(4):
        seg = x[128 * t:128 * t + 128]
        scale = np.float32(np.max(np.abs(seg)) / np.float32(448.0))
        codes = e4m3_encode((seg / scale).astype(np.float64)) if scale > 0 else np.zeros(128, np.uint8)
        row[128 * t:128 * t + 128] = codes
        row[512 + 4 * t:516 + 4 * t] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
        deq[128 * t:128 * t + 128] = E4M3[codes] * np.float64(scale)
    rope = bf16_bits(x[512:])
    row[528:656] = np.frombuffer(rope.astype('<u2').tobytes(), np.uint8)
    deq[512:] = bf16_value(rope)
    return row, deq


def encode(x, dtype):
    """float64 values -> (array as stored, the values it holds in float64)."""
    if dtype == "f32":
        s = np.asarray(x, dtype=np.float32)
        return s, s.astype(np.float64)
    if dtype == "f16":
        s = np.asarray(x, dtype=np.float16)
        return s, s.astype(np.float64)
    s = bf16_bits(x)
    return s, bf16_value(s)


def nan_fill(shape, dtype):
    if dtype == "f32":
        return np.full(shape, np.nan, dtype=np.float32)
    if dtype == "f16":
        return np.full(shape, np.nan, dtype=np.float16)
    return np.full(shape, 0x7FC0, dtype=np.uint16)


# ---- the reference ----

def attention(q, K, V, lens, table, bs, scale, causal, indices=None, sink=None):
    """q [b][s_q][h_q][d], K [slots][h_kv][d], V [slots][h_kv][dv] (float64)."""
    b, s_q, h_q, _ = q.shape
    h_kv, dv = K.shape[1], V.shape[2]
    g = h_q // h_kv
    out = np.zeros((b, s_q, h_q, dv))
    lse = np.full((b, h_q, s_q), np.inf)
    for bi in range(b):
        for i in range(s_q):
            if indices is not None:
                slots = [s for s in indices[bi, i] if s != -1]
            else:
                n = lens[bi]
                if causal and s_q > 1:
                    n = min(max(lens[bi] - s_q + i + 1, 0), lens[bi])
                slots = [table[bi, t // bs] * bs + t % bs for t in range(n)]
            if not slots:
                continue
            slots = np.array(slots)
            for h in range(h_q):
                k, v = K[slots, h // g], V[slots, h // g]
                s = k @ q[bi, i, h] * scale
                m = s.max()
                p = np.exp(s - m)
                lse[bi, h, i] = m + np.log(p.sum())
                o = p @ v / p.sum()
                if sink is not None:
                    o = o / (1.0 + np.exp(float(sink[h]) - lse[bi, h, i]))
                out[bi, i, h] = o
    return out, lse


# ---- the cases ----

CASES = [
    # name, b, s_q, h_q, h_kv, d, dv, v_shared, block_size, num_blocks, lens, causal, dtype, kv_dtype, extra
    ("mla_decode_bf16", 2, 1, 16, 1, 576, 512, 1, 64, 5, [150, 97], 0, "bf16", "bf16", ""),
    ("mla_mtp_causal", 2, 2, 8, 1, 576, 512, 1, 32, 7, [2, 131], 1, "bf16", "bf16", ""),
    ("mla_peaky_f32", 1, 1, 4, 1, 576, 512, 1, 16, 6, [75], 0, "f32", "f32", "peaky"),
    ("gqa_sepv_f32", 2, 1, 8, 2, 64, 64, 0, 16, 8, [50, 33], 0, "f32", "f32", ""),
    ("mha_f16_empty", 3, 1, 4, 4, 32, 32, 0, 4, 8, [0, 13, 9], 0, "f16", "f16", ""),
    ("block1_causal_f32", 2, 3, 4, 2, 16, 8, 0, 1, 13, [7, 3], 1, "f32", "f32", ""),
    ("odd_block_bf16", 2, 1, 6, 3, 48, 48, 0, 24, 7, [71, 25], 0, "bf16", "bf16", ""),
    ("mla_fp8", 2, 1, 8, 1, 576, 512, 1, 32, 6, [70, 33], 0, "bf16", "fp8", ""),
    ("sparse_sink_bf16", 2, 2, 8, 1, 64, 64, 1, 16, 7, [60, 40], 0, "bf16", "bf16", "sparse sink"),
]


def make_case(idx, c):
    name, b, s_q, h_q, h_kv, d, dv, v_shared, bs, nb, lens, causal, dt, kvdt, extra = c
    rng = np.random.default_rng(1000 + idx)
    scale = float(np.float32((192.0 if d == 576 else d) ** -0.5))
    mbps = max(1, max((n + bs - 1) // bs for n in lens) + 1)
    # blocks of the sequences at permuted ids; the rest stay unused
    need = sum((n + bs - 1) // bs for n in lens)
    assert need <= nb, name
    perm = rng.permutation(nb)
    table = np.full((b, mbps), -1, dtype=np.int32)
    used, k = [], 0
    for bi, n in enumerate(lens):
        for j in range((n + bs - 1) // bs):
            table[bi, j] = perm[k]
            used.append(perm[k])
            k += 1
    slots = nb * bs
    used_slot = np.zeros(slots, bool)
    for blk in used:
        used_slot[blk * bs:(blk + 1) * bs] = True
    arrays = {}
    if kvdt == "fp8":
        kc = np.full((nb, bs, 656), 0xFF, dtype=np.uint8)
        K = np.full((slots, 1, 576), np.nan)
        for s in np.nonzero(used_slot)[0]:
            row, deq = fp8_row(rng.standard_normal(576))
            kc[s // bs, s % bs] = row
            K[s, 0] = deq
        arrays["k_cache"] = kc
    else:
        kx = rng.standard_normal((slots, h_kv, d))
        stored, K = encode(kx, kvdt)
        kc = nan_fill((slots, h_kv, d), kvdt)
        kc[used_slot] = stored[used_slot]
        K = np.where(used_slot[:, None, None], K, np.nan)
        arrays["k_cache"] = kc.reshape(nb, bs, h_kv, d)
    if v_shared:
        V = K[:, :, :dv]
    else:
        vx = rng.standard_normal((slots, h_kv, dv))
        stored, V = encode(vx, kvdt)
        vc = nan_fill((slots, h_kv, dv), kvdt)
        vc[used_slot] = stored[used_slot]
        V = np.where(used_slot[:, None, None], V, np.nan)
        arrays["v_cache"] = vc.reshape(nb, bs, h_kv, dv)
    qx = rng.standard_normal((b, s_q, h_q, d))
    if "peaky" in extra:
        # each head's query points along one key of its sequence: near one-hot weights
        for bi, n in enumerate(lens):
            for h in range(h_q):
                t = int(rng.integers(n))
                s = table[bi, t // bs] * bs + t % bs
                qx[bi, 0, h] = K[s, h // (h_q // h_kv)] * (0.08 * (1 + h) ** 2)
    qs, Q = encode(qx, dt)
    arrays["q"] = qs
    indices = sink = None
    if "sparse" in extra:
        topk = 24
        indices = np.full((b, s_q, topk), -1, dtype=np.int32)
        for bi, n in enumerate(lens):
            for i in range(s_q):
                picks = rng.choice(n, size=topk - 4, replace=False)
                slot_ids = [table[bi, t // bs] * bs + t % bs for t in picks]
                row = slot_ids + [-1] * 4
                rng.shuffle(row)
                indices[bi, i] = row
        arrays["indices"] = indices
    if "sink" in extra:
        sink = rng.standard_normal(h_q).astype(np.float32)
        arrays["attn_sink"] = sink
    lens_a = np.array(lens, dtype=np.int32)
    out, lse = attention(Q, K, V, lens_a, table, bs, np.float64(scale), causal, indices, sink)
    assert np.isfinite(out).all(), name
    arrays.update(block_table=table, cache_seqlens=lens_a, out=out, lse=lse)
    line = (f"{name} b={b} s_q={s_q} h_q={h_q} h_kv={h_kv} d={d} dv={dv} v_shared={v_shared} "
            f"block_size={bs} max_blocks_per_seq={mbps} num_blocks={nb} causal={causal} "
            f"softmax_scale={scale!r} dtype={dt}")
    if kvdt != dt:
        line += f" kv_dtype={kvdt}"
    return line, arrays


HEADER = """# pagedkv's own attention test vectors, made by gen_vectors.py (float64 NumPy reference).
# name then key=value; arrays are <name>.<array>.npy; bf16 stored as raw <u2 bits;
# kv_dtype (when not dtype): fp8 = uint8 [num_blocks][block_size][656] FlashMLA rows;
# v_shared=1: V is the first dv dims of K (MLA), no v_cache file; block_table pads with -1;
# optional indices (sparse, int32 [b][s_q][topk]) and attn_sink (float32 [h_q]);
# out[b][s_q][h_q][dv] and lse[b][h_q][s_q] are float64 (natural log; +inf for an empty row)
"""


def main():
    check = "--check" in sys.argv[1:]
    lines, bad = [], 0
    for i, c in enumerate(CASES):
        line, arrays = make_case(i, c)
        lines.append(line)
        for what, arr in arrays.items():
            path = os.path.join(HERE, f"{c[0]}.{what}.npy")
            if check:
                old = np.load(path)
                same = old.dtype == arr.dtype and old.shape == arr.shape and (
                    np.array_equal(old, arr) if arr.dtype.kind in "iu" else
                    np.allclose(old, arr, rtol=1e-12, atol=1e-12, equal_nan=True))
                if not same:
                    print(f"{path}: differs from a fresh run")
                    bad += 1
            else:
                np.save(path, arr)
    text = HEADER + "\n".join(lines) + "\n"
    cases = os.path.join(HERE, "cases.txt")
    if check:
        if open(cases).read() != text:
            print(f"{cases}: differs from a fresh run")
            bad += 1
        print(f"{len(CASES)} cases checked, {bad} files differ")
        return 1 if bad else 0
    with open(cases, "w") as f:
        f.write(text)
    total = sum(os.path.getsize(os.path.join(HERE, n)) for n in os.listdir(HERE))
    print(f"wrote {len(CASES)} cases to {HERE} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
