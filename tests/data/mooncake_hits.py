#!/usr/bin/env python3
"""Prefix hits of an infinite cache on a Mooncake-format trace, computed
independently of pkv (tests/test_sim.c checks pkv sim against it).

Token at prompt position p of a line = (hash_ids[p // trace_block], p % trace_block):
equal ids give equal tokens, different ids never do. The cache keeps full
blocks of block_size tokens, each identified by its whole prefix; a request
finds the longest run of cached blocks from its start; a prompt cached whole
still computes its last token. Requests in trace order, each adding its
prompt's full blocks after its lookup.

    python3 tests/data/mooncake_hits.py tests/data/mooncake_small.jsonl --block-size 16 --trace-block 64
prints "hit_tokens query_tokens".
"""
import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--trace-block", type=int, default=512)
    a = ap.parse_args()
    bs, tb = a.block_size, a.trace_block
    cached = set()  # tuples of every token of a cached prefix of whole blocks
    hit = query = 0
    for line in open(a.trace):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        r = json.loads(line)
        n = r["input_length"]
        toks = [(r["hash_ids"][p // tb], p % tb) for p in range(n)]
        blocks = n // bs
        matched = 0
        while matched < blocks and tuple(toks[: (matched + 1) * bs]) in cached:
            matched += 1
        got = matched * bs
        if got == n:
            got -= 1
        hit += got
        query += n
        for b in range(1, blocks + 1):
            cached.add(tuple(toks[: b * bs]))
    print(hit, query)


if __name__ == "__main__":
    main()
