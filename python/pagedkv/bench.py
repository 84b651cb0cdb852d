"""One decode step's bookkeeping from Python: append one token to each of B
sequences and export the FlashMLA table, timed per step; the median over the
steps. Prints one JSON line per variant.

    /usr/bin/python3 -m pagedkv.bench [--batch 256] [--steps 2000] [--lib build/libpagedkv.so]

Variants: "batch" (cache.append_batch + export_flashmla: one call each), "per_seq"
(seq.append(1) for each sequence, then export_flashmla), "per_seq_tokens"
(seq.append([token]) with the token id), and, when the shared library is found,
"ctypes" (the same C calls through ctypes, the alternative this package replaced).
"""
import argparse
import ctypes
import json
import os
import time

import numpy as np

import pagedkv


def _stats(times):
    t = np.array(times) * 1e6
    return {"median_us": round(float(np.median(t)), 2), "p10_us": round(float(np.percentile(t, 10)), 2),
            "p90_us": round(float(np.percentile(t, 90)), 2)}


def _setup(batch, rng, prefix_cache=False):
    cache = pagedkv.Cache(num_blocks=batch * 80, block_size=64, prefix_cache=prefix_cache)
    seqs = [cache.sequence() for _ in range(batch)]
    for s in seqs:
        s.append(int(rng.integers(1, 4096)))
    return cache, seqs


def run_variant(name, batch, steps, rng):
    cache, seqs = _setup(batch, rng)
    toks = rng.integers(0, 32000, size=batch).astype(np.int32)
    times = []
    for step in range(steps):
        if name == "batch":
            t0 = time.perf_counter()
            slots, cow = cache.append_batch(seqs)
            table, lens = cache.export_flashmla(seqs)
            t1 = time.perf_counter()
        elif name == "batch_tokens":
            t0 = time.perf_counter()
            slots, cow = cache.append_batch(seqs, tokens=toks.reshape(batch, 1))
            table, lens = cache.export_flashmla(seqs)
            t1 = time.perf_counter()
        elif name == "per_seq":
            t0 = time.perf_counter()
            for s in seqs:
                s.append(1)
            table, lens = cache.export_flashmla(seqs)
            t1 = time.perf_counter()
        else:  # per_seq_tokens
            t0 = time.perf_counter()
            for s, t in zip(seqs, toks.tolist()):
                s.append([t])
            table, lens = cache.export_flashmla(seqs)
            t1 = time.perf_counter()
        times.append(t1 - t0)
        if step % 500 == 499:  # keep lengths bounded: drop back the tokens appended
            for s in seqs:
                s.truncate(len(s) - 500)
    assert table.shape[0] == batch and int(lens.min()) >= 1
    cache.check()
    cache.close()
    return _stats(times[steps // 10:])


def run_ctypes(lib_path, batch, steps, rng):
    lib = ctypes.CDLL(lib_path)
    cfg = (ctypes.c_byte * 256)()  # pkv_config is smaller; the library reads cfg.size bytes
    lib.pkv_config_init(cfg)
    ctypes.c_int32.from_buffer(cfg, 4).value = batch * 80  # num_blocks (after uint32 size)
    cache = ctypes.c_void_p()
    assert lib.pkv_cache_create(cfg, ctypes.byref(cache)) == 0
    seqs = (ctypes.c_int64 * batch)()
    append, export = lib.pkv_seq_append, lib.pkv_export_flashmla
    append.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p]
    export.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32,
                       ctypes.c_void_p, ctypes.c_void_p]
    slot, cow = ctypes.c_int64(), (ctypes.c_int32 * 2)()
    for i in range(batch):
        h = ctypes.c_int64()
        assert lib.pkv_seq_create(cache, ctypes.c_uint64(0), ctypes.byref(h)) == 0
        seqs[i] = h.value
        assert append(cache, h.value, int(rng.integers(1, 4096)), None, None, cow) == 0
    need = ctypes.c_int32()
    times = []
    handles = list(seqs)
    for step in range(steps):
        t0 = time.perf_counter()
        for h in handles:
            append(cache, h, 1, None, ctypes.byref(slot), cow)
        export(cache, seqs, batch, None, 0, None, ctypes.byref(need))  # sizes the table
        table = np.empty((batch, need.value), np.int32)
        lens = np.empty(batch, np.int32)
        st = export(cache, seqs, batch, table.ctypes.data, need.value, lens.ctypes.data, None)
        t1 = time.perf_counter()
        assert st == 0
        times.append(t1 - t0)
        if step % 500 == 499:
            lens_now = lens.tolist()
            for h, n in zip(handles, lens_now):
                lib.pkv_seq_truncate(cache, ctypes.c_int64(h), n - 500)
    lib.pkv_cache_destroy(cache)
    return _stats(times[steps // 10:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--lib", default=os.environ.get("PKV_LIB", os.path.join(here, "..", "..", "build",
                                                                              "libpagedkv.so")))
    args = ap.parse_args(argv)
    variants = ["batch", "batch_tokens", "per_seq", "per_seq_tokens"]
    results = {}
    for v in variants:
        r = run_variant(v, args.batch, args.steps, np.random.default_rng(args.seed))
        results[v] = r
        print(json.dumps({"bench": "python_decode_step", "variant": v, "batch": args.batch, "steps": args.steps,
                          **r}), flush=True)
    if os.path.exists(args.lib):
        r = run_ctypes(args.lib, args.batch, args.steps, np.random.default_rng(args.seed))
        results["ctypes"] = r
        print(json.dumps({"bench": "python_decode_step", "variant": "ctypes", "batch": args.batch,
                          "steps": args.steps, **r}), flush=True)
    return results


if __name__ == "__main__":
    main()
