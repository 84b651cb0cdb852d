#!/usr/bin/env python3
"""A synthetic trace in the Mooncake (FAST'25) format, shaped like their
conversation trace: 12,000 requests (chats starting over an hour, later turns
until about 70 minutes), ~11,800 prompt tokens and ~350 output tokens on
average, one hash id per 512 prompt tokens.

Chats start as a Poisson process; a chat opens with one of 40 shared system
prompts (1,000-4,000 tokens), then a long first user message (documents,
lognormal, median 6,000 tokens); each next turn arrives a think time later and
extends the previous prompt by its output and a new user message, so its hash
ids start with the previous turn's full blocks. Ids are numbered in order of
first use, as in the published traces. Deterministic for a given --seed.

    python3 tests/data/gen_mooncake.py --requests 12000 --out /tmp/mooncake_12k.jsonl
    build/pkv sim --trace /tmp/mooncake_12k.jsonl --kv-mem-gib 64 --no-progress
"""
import argparse
import json
import math
import random


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--block", type=int, default=512, help="tokens per hash id (--trace-block)")
    ap.add_argument("--hours", type=float, default=1.0, help="span of the chat starts")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    B = a.block
    next_id = [0]

    def new_ids(k):
        ids = list(range(next_id[0], next_id[0] + k))
        next_id[0] += k
        return ids

    def lognormal(median, sigma, lo, hi):
        return int(min(hi, max(lo, median * math.exp(sigma * rng.gauss(0, 1)))))

    # System prompts: whole blocks, so that the user text starts a new block.
    systems = [new_ids(rng.randint(2, 8)) for _ in range(40)]
    reqs = []  # (timestamp ms, input_length, output_length, hash_ids)
    mean_turns = 2.0
    chats = int(a.requests / mean_turns) + 1
    span_ms = a.hours * 3600e3
    t = 0.0
    while len(reqs) < a.requests:
        t += rng.expovariate(chats / span_ms)
        sysids = systems[min(int(rng.paretovariate(1.2)) - 1, len(systems) - 1)]
        ids = list(sysids)
        length = len(ids) * B  # tokens before the new user text
        keep = len(ids)        # blocks whose content an earlier prompt had
        user = lognormal(6000, 0.8, 50, 60000)
        when = t
        for turn in range(12):
            total = length + user
            # new ids from the first block with new content (the previous
            # prompt's partial last block now holds more tokens, the output
            # was in no prompt)
            ids = ids[:keep] + new_ids(math.ceil(total / B) - keep)
            keep = total // B
            out = lognormal(250, 0.8, 1, 4000)
            reqs.append((int(when), total, out, ids))
            if len(reqs) >= a.requests or rng.random() > 1 - 1 / mean_turns or total > 100000:
                break
            length = total + out
            user = lognormal(600, 1.0, 5, 8000)
            when += rng.expovariate(1 / 60e3) + 5e3  # think time, mean 65 s
    reqs.sort(key=lambda r: r[0])
    reqs = reqs[: a.requests]
    with open(a.out, "w") as f:
        for ts, inp, out, ids in reqs:
            f.write(json.dumps({"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": ids}) + "\n")
    n = len(reqs)
    print(f"{a.out}: {n} requests over {reqs[-1][0] / 60e3:.0f} min, {sum(r[1] for r in reqs) / n:.0f} prompt "
          f"and {sum(r[2] for r in reqs) / n:.0f} output tokens on average, {next_id[0]} hash ids")


if __name__ == "__main__":
    main()
