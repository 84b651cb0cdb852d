#!/usr/bin/env python3
"""Bindings mirror pkv_attn_args field by field: load libpagedkv.so with ctypes,
run the oracle on a test vector through a mirrored struct and compare with the
expected output. Exercises the exact public ABI, not the C header. The vector
comes from the project's own set (tests/vectors, or PKV_OWN_VECTORS) and, when
present, from the shared set too (PKV_VECTORS, default ../shared/vectors)."""
import ctypes, math, os, struct, sys

lib_path = os.environ.get("PKV_LIB", "build/libpagedkv.so")
own = os.environ.get("PKV_OWN_VECTORS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")
shared = os.environ.get("PKV_VECTORS") or "../shared/vectors"

def npy(path):
    """Minimal .npy read (v1 headers, little-endian, C order) -> (dtype, shape, bytes)."""
    raw = open(path, "rb").read()
    assert raw[:6] == b"\x93NUMPY", path
    hlen = struct.unpack("<H", raw[8:10])[0]
    header = eval(raw[10:10 + hlen].decode("latin1"))  # a Python dict literal by spec
    assert not header["fortran_order"]
    return header["descr"], tuple(header["shape"]), raw[10 + hlen:]

class Args(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32)] + [(n, ctypes.c_int32) for n in
                ("batch", "s_q", "h_q", "h_kv", "d", "dv", "block_size", "max_blocks_per_seq",
                 "num_blocks", "causal")] + [
        ("softmax_scale", ctypes.c_float), ("q_dtype", ctypes.c_int32), ("kv_dtype", ctypes.c_int32),
        ("q", ctypes.c_void_p), ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p),
        ("block_table", ctypes.c_void_p), ("cache_seqlens", ctypes.c_void_p),
        ("out", ctypes.c_void_p), ("lse", ctypes.c_void_p), ("indices", ctypes.c_void_p),
        ("topk", ctypes.c_int32), ("attn_sink", ctypes.c_void_p),
        ("window", ctypes.c_int32), ("reserved", ctypes.c_int32)]

def run(lib, vec):
    """The oracle on vec's gqa_sepv_f32 through the mirror; returns the number of checks."""
    name = "gqa_sepv_f32"
    bufs = {}
    for part in ("q", "k_cache", "v_cache", "block_table", "cache_seqlens", "out", "lse"):
        bufs[part] = npy(os.path.join(vec, f"{name}.{part}.npy"))
    b, s_q, h_q, d = bufs["q"][1]
    nb, bs, h_kv, _ = bufs["k_cache"][1]
    dv = bufs["v_cache"][1][3]
    keep = {k: ctypes.create_string_buffer(v[2], len(v[2])) for k, v in bufs.items()}
    out = (ctypes.c_float * (b * s_q * h_q * dv))()
    lse = (ctypes.c_float * (b * h_q * s_q))()
    a = Args(size=ctypes.sizeof(Args), batch=b, s_q=s_q, h_q=h_q, h_kv=h_kv, d=d, dv=dv, block_size=bs,
             max_blocks_per_seq=bufs["block_table"][1][1], num_blocks=nb, causal=0,
             softmax_scale=0.125, q_dtype=0, kv_dtype=0,
             q=ctypes.addressof(keep["q"]), k_cache=ctypes.addressof(keep["k_cache"]),
             v_cache=ctypes.addressof(keep["v_cache"]), block_table=ctypes.addressof(keep["block_table"]),
             cache_seqlens=ctypes.addressof(keep["cache_seqlens"]), out=ctypes.addressof(out),
             lse=ctypes.addressof(lse), indices=None, topk=0, attn_sink=None)
    st = lib.pkv_attn_reference(ctypes.byref(a))
    assert st == 0, lib.pkv_strerror(st)
    want_out = struct.unpack(f"<{len(out)}d", bufs["out"][2])
    want_lse = struct.unpack(f"<{len(lse)}d", bufs["lse"][2])
    err = max(abs(x - y) / max(1.0, abs(y)) for x, y in zip(out, want_out))
    lerr = max(abs(x - y) for x, y in zip(lse, want_lse))
    print(f"test_ctypes: {vec}/{name} through a ctypes mirror: out rel err {err:.2e}, lse abs err {lerr:.2e}")
    bad = Args.from_buffer_copy(a)
    bad.h_q = 7  # not a multiple of h_kv = 2
    assert lib.pkv_attn_reference(ctypes.byref(bad)) == -9
    assert err <= 1e-5 and lerr <= 1e-6
    return 3


def main():
    lib = ctypes.CDLL(lib_path)
    lib.pkv_attn_reference.argtypes = [ctypes.POINTER(Args)]
    lib.pkv_strerror.restype = ctypes.c_char_p
    assert ctypes.sizeof(Args) == 144, ctypes.sizeof(Args)
    checks = 1 + run(lib, own)
    if os.path.exists(os.path.join(shared, "cases.txt")):
        checks += run(lib, shared)
    else:
        print(f"test_ctypes: no shared vectors at {shared}: cross-check skipped")
    print(f"test_ctypes: {checks} checks, 0 failed")

if __name__ == "__main__":
    main()
