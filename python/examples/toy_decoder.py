"""A toy one-layer decoder served from a pagedkv cache.

Two requests share a 40-token system prompt. Each is admitted with a prefix-cache
lookup, prefilled (only the tokens not found in the cache), then decodes 8 tokens
greedily: every step appends its token, writes K/V rows through the slots the cache
returned, exports the FlashMLA block table and runs paged attention. The second
request finds the system prompt's full blocks cached. Every logit is compared with
the same model computed in float64 without any cache.

    make python && PYTHONPATH=python /usr/bin/python3 python/examples/toy_decoder.py
"""
import numpy as np

import pagedkv

VOCAB, DIM, H_Q, H_KV, HEAD, BLOCK = 64, 32, 4, 2, 16, 16
rng = np.random.default_rng(0)
E = rng.standard_normal((VOCAB, DIM)).astype(np.float32)              # embedding (tied unembedding)
POS = rng.standard_normal((256, DIM)).astype(np.float32) * 0.5         # learned positions
WQ, WK, WV = (rng.standard_normal((DIM, h * HEAD)).astype(np.float32) / np.sqrt(DIM) for h in (H_Q, H_KV, H_KV))
WO = rng.standard_normal((H_Q * HEAD, DIM)).astype(np.float32) / np.sqrt(H_Q * HEAD)
SCALE = 1.0 / np.sqrt(HEAD)


def step(cache, seq, tokens):
    """Runs the model over `tokens` appended to seq; returns their logits."""
    start = len(seq)
    x = E[tokens] + POS[start:start + len(tokens)]
    slots = seq.append(tokens)                                           # host mode: the slots to fill
    cache.write(0, slots, (x @ WK).reshape(-1, H_KV, HEAD), (x @ WV).reshape(-1, H_KV, HEAD))
    q = (x @ WQ).reshape(1, len(tokens), H_Q, HEAD)
    block_table, cache_seqlens = cache.export_flashmla([seq])
    k_cache, v_cache = cache.arenas(0)
    out, _ = pagedkv.attention(q, k_cache, block_table, cache_seqlens, SCALE, causal=True, v_cache=v_cache)
    return (out[0].reshape(len(tokens), H_Q * HEAD) @ WO) @ E.T


def reference_logits(tokens):
    """The same model in float64 over the whole sequence, no cache."""
    x = E[tokens].astype(np.float64) + POS[:len(tokens)]
    q = (x @ WQ).reshape(-1, H_Q, HEAD)
    k = (x @ WK).reshape(-1, H_KV, HEAD)
    v = (x @ WV).reshape(-1, H_KV, HEAD)
    out = np.zeros((len(tokens), H_Q, HEAD))
    for h in range(H_Q):
        s = q[:, h] @ k[:, h // (H_Q // H_KV)].T * SCALE
        s[np.triu_indices(len(tokens), 1)] = -np.inf                   # causal
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h] = (p / p.sum(axis=1, keepdims=True)) @ v[:, h // (H_Q // H_KV)]
    return (out.reshape(len(tokens), -1) @ WO) @ E.T


def serve(cache, prompt, new_tokens=8):
    seq, cached = cache.lookup(prompt)
    if cached == len(prompt):                     # keep one token to compute the next logits from
        seq.truncate(cached - 1)
        cached -= 1
    logits = [step(cache, seq, prompt[cached:])[-1]]
    seq.register()                                # the prompt's full blocks become findable
    generated = []
    for _ in range(new_tokens):
        generated.append(int(np.argmax(logits[-1])))
        logits.append(step(cache, seq, [generated[-1]])[-1])
    seq.free()                                    # cached blocks stay, evictable
    return cached, generated, np.array(logits[:-1])


def main():
    system = [int(t) for t in rng.integers(0, VOCAB, 40)]
    prompts = [system + [int(t) for t in rng.integers(0, VOCAB, n)] for n in (10, 12)]
    worst = 0.0
    with pagedkv.Cache(num_blocks=32, block_size=BLOCK, storage="host", h_kv=H_KV, d=HEAD, dv=HEAD,
                       v_separate=True, kv_dtype="f32", prefix_cache=True) as cache:
        for r, prompt in enumerate(prompts):
            cached, generated, logits = serve(cache, prompt)
            ref = reference_logits(prompt + generated)[len(prompt) - 1:-1]
            assert [int(t) for t in ref.argmax(axis=1)] == generated
            worst = max(worst, float(np.abs(logits - ref).max() / np.abs(ref).max()))
            print(f"request {r + 1}: {len(prompt)} prompt tokens, {cached} cached, prefill {len(prompt) - cached}; "
                  f"generated {generated}")
        st = cache.stats()
        cache.check()
    print(f"prefix cache: {st['prefix_hit_tokens']} of {st['prefix_query_tokens']} prompt tokens hit, "
          f"{st['cached_blocks']} blocks cached")
    print(f"logits match the cache-free float64 model: {'yes' if worst < 1e-4 else 'NO'} "
          f"(relative error < 1e-4)")
    return worst


if __name__ == "__main__":
    main()
