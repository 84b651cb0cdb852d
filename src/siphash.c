/* SipHash-2-4 with a 128-bit output (Aumasson & Bernstein, "SipHash: a fast
 * short-input PRF", 2012; the 128-bit variant of the reference implementation),
 * written from the specification and checked against the reference's
 * published test vectors in tests/test_prefix.c.
 *
 * Two entry points:
 *  - pkv_siphash128: the plain function over a byte string.
 *  - sip_absorb_blocks / sip_finish_block: the prefix-cache block key
 *    SipHash-128(secret, tokens || ns || parent key [|| extras digest]), split so that the token
 *    words of up to SIP_LANES consecutive blocks, which do not depend on each
 *    other, are absorbed in interleaved lanes (one SipHash state is a chain of
 *    dependent additions and rotations; several states keep the ALUs busy).
 *    Only the 24-byte tail that holds the parent key is chained block by block.
 *    The message bytes are little-endian: a token id is 4 bytes, ns 8, the
 *    parent key its 16 output bytes, the extras digest (only when non-zero) 8. */
#include <string.h>

#include "internal.h"

static inline uint64_t rotl64(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

static inline uint64_t load64_le(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline void store64_le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static inline void sipround(sip_state *s) {
    s->v0 += s->v1; s->v1 = rotl64(s->v1, 13); s->v1 ^= s->v0; s->v0 = rotl64(s->v0, 32);
    s->v2 += s->v3; s->v3 = rotl64(s->v3, 16); s->v3 ^= s->v2;
    s->v0 += s->v3; s->v3 = rotl64(s->v3, 21); s->v3 ^= s->v0;
    s->v2 += s->v1; s->v1 = rotl64(s->v1, 17); s->v1 ^= s->v2; s->v2 = rotl64(s->v2, 32);
}

static inline void sip_compress(sip_state *s, uint64_t m) {
    s->v3 ^= m;
    sipround(s);
    sipround(s);
    s->v0 ^= m;
}

void sip_init(sip_state *s, uint64_t k0, uint64_t k1) {
    s->v0 = k0 ^ 0x736f6d6570736575ull;
    s->v1 = k1 ^ 0x646f72616e646f6dull ^ 0xee; /* 0xee: the 128-bit output variant */
    s->v2 = k0 ^ 0x6c7967656e657261ull;
    s->v3 = k1 ^ 0x7465646279746573ull;
}

/* Absorbs the last partial word (tail[0..tail_len), tail_len < 8) with the
 * total length and runs the finalizations of the 128-bit variant: the first
 * nout (1 or 2) output words. */
static inline __attribute__((always_inline)) void sip_final(sip_state *s, const uint8_t *tail, size_t tail_len,
                                                            uint64_t total_len, uint64_t out[2], int nout) {
    uint64_t b = total_len << 56;
    for (size_t i = 0; i < tail_len; i++) b |= (uint64_t)tail[i] << (8 * i);
    sip_compress(s, b);
    s->v2 ^= 0xee;
    for (int i = 0; i < 4; i++) sipround(s);
    out[0] = s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
    if (nout < 2) return;
    s->v1 ^= 0xdd;
    for (int i = 0; i < 4; i++) sipround(s);
    out[1] = s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

void pkv_siphash128(const uint8_t key[16], const void *in, size_t len, uint8_t out[16]) {
    if (!key || !out || (!in && len)) return;
    const uint8_t *p = in;
    sip_state s;
    sip_init(&s, load64_le(key), load64_le(key + 8));
    size_t words = len / 8;
    for (size_t i = 0; i < words; i++) sip_compress(&s, load64_le(p + 8 * i));
    uint64_t h[2];
    sip_final(&s, p + 8 * words, len % 8, len, h, 2);
    store64_le(out, h[0]);
    store64_le(out + 8, h[1]);
}

/* Word w of a block's tokens: token ids 2w and 2w+1, little-endian. Compilers
 * fuse this into one 64-bit load on little-endian targets. */
static inline uint64_t token_word(const int32_t *t, int32_t w) {
    return (uint64_t)(uint32_t)t[2 * w] | ((uint64_t)(uint32_t)t[2 * w + 1] << 32);
}

/* One SipRound on four words held in the caller's locals (always inlined, so
 * they stay in registers). */
static inline __attribute__((always_inline)) void round4(uint64_t *v0, uint64_t *v1, uint64_t *v2, uint64_t *v3) {
    *v0 += *v1; *v1 = rotl64(*v1, 13); *v1 ^= *v0; *v0 = rotl64(*v0, 32);
    *v2 += *v3; *v3 = rotl64(*v3, 16); *v3 ^= *v2;
    *v0 += *v3; *v3 = rotl64(*v3, 21); *v3 ^= *v0;
    *v2 += *v1; *v1 = rotl64(*v1, 17); *v1 ^= *v2; *v2 = rotl64(*v2, 32);
}

static void absorb1(sip_state *s, const int32_t *t, int32_t words) {
    uint64_t a0 = s->v0, a1 = s->v1, a2 = s->v2, a3 = s->v3;
    for (int32_t w = 0; w < words; w++) {
        uint64_t m = token_word(t, w);
        a3 ^= m;
        round4(&a0, &a1, &a2, &a3);
        round4(&a0, &a1, &a2, &a3);
        a0 ^= m;
    }
    s->v0 = a0; s->v1 = a1; s->v2 = a2; s->v3 = a3;
}

/* Independent blocks interleaved: each state is one long dependency chain,
 * two or three of them fill the ALUs (measured on one core: one lane ~2.6 GB/s,
 * two ~3.6, three ~3.7 with gcc and ~4.2 with clang; more would spill). */
static void absorb2(sip_state *s, const int32_t *t, const int32_t *u, int32_t words) {
    uint64_t a0 = s[0].v0, a1 = s[0].v1, a2 = s[0].v2, a3 = s[0].v3;
    uint64_t b0 = s[1].v0, b1 = s[1].v1, b2 = s[1].v2, b3 = s[1].v3;
    for (int32_t w = 0; w < words; w++) {
        uint64_t m = token_word(t, w), n = token_word(u, w);
        a3 ^= m;
        b3 ^= n;
        round4(&a0, &a1, &a2, &a3);
        round4(&b0, &b1, &b2, &b3);
        round4(&a0, &a1, &a2, &a3);
        round4(&b0, &b1, &b2, &b3);
        a0 ^= m;
        b0 ^= n;
    }
    s[0].v0 = a0; s[0].v1 = a1; s[0].v2 = a2; s[0].v3 = a3;
    s[1].v0 = b0; s[1].v1 = b1; s[1].v2 = b2; s[1].v3 = b3;
}

static void absorb3(sip_state *s, const int32_t *t, const int32_t *u, const int32_t *x, int32_t words) {
    uint64_t a0 = s[0].v0, a1 = s[0].v1, a2 = s[0].v2, a3 = s[0].v3;
    uint64_t b0 = s[1].v0, b1 = s[1].v1, b2 = s[1].v2, b3 = s[1].v3;
    uint64_t c0 = s[2].v0, c1 = s[2].v1, c2 = s[2].v2, c3 = s[2].v3;
    for (int32_t w = 0; w < words; w++) {
        uint64_t m = token_word(t, w), n = token_word(u, w), o = token_word(x, w);
        a3 ^= m;
        b3 ^= n;
        c3 ^= o;
        round4(&a0, &a1, &a2, &a3);
        round4(&b0, &b1, &b2, &b3);
        round4(&c0, &c1, &c2, &c3);
        round4(&a0, &a1, &a2, &a3);
        round4(&b0, &b1, &b2, &b3);
        round4(&c0, &c1, &c2, &c3);
        a0 ^= m;
        b0 ^= n;
        c0 ^= o;
    }
    s[0].v0 = a0; s[0].v1 = a1; s[0].v2 = a2; s[0].v3 = a3;
    s[1].v0 = b0; s[1].v1 = b1; s[1].v2 = b2; s[1].v3 = b3;
    s[2].v0 = c0; s[2].v1 = c1; s[2].v2 = c2; s[2].v3 = c3;
}

void sip_absorb_blocks(const uint64_t k[2], const int32_t *toks, int32_t bs, int nblk, sip_state *st) {
    int32_t words = bs / 2;
    int l = 0;
    for (; l < nblk; l++) sip_init(&st[l], k[0], k[1]);
    const int32_t *t = toks;
    size_t b = (size_t)bs;
    for (l = 0; l + 3 <= nblk; l += 3) absorb3(st + l, t + l * b, t + (l + 1) * b, t + (l + 2) * b, words);
    if (l + 2 <= nblk) absorb2(st + l, t + l * b, t + (l + 1) * b, words);
    else if (l < nblk) absorb1(st + l, t + l * b, words);
}

static inline __attribute__((always_inline)) void finish_block(sip_state *s, const int32_t *toks, int32_t bs,
                                                               uint64_t ns, const uint64_t parent[2], uint64_t xd,
                                                               uint64_t out[2], int nout) {
    uint64_t total = (uint64_t)bs * 4 + 24 + (xd ? 8 : 0);
    if (!(bs & 1)) { /* the tail is three (with extras four) whole words */
        sip_compress(s, ns);
        sip_compress(s, parent[0]);
        sip_compress(s, parent[1]);
        if (xd) sip_compress(s, xd);
        sip_final(s, NULL, 0, total, out, nout);
        return;
    }
    /* An odd block's last token, ns, the parent key (and the extras digest):
     * 28 (36) bytes. */
    uint8_t tail[40];
    uint32_t t = (uint32_t)toks[bs - 1];
    for (int i = 0; i < 4; i++) tail[i] = (uint8_t)(t >> (8 * i));
    store64_le(tail + 4, ns);
    store64_le(tail + 12, parent[0]);
    store64_le(tail + 20, parent[1]);
    store64_le(tail + 28, xd);
    size_t words = xd ? 4 : 3;
    for (size_t i = 0; i < words; i++) sip_compress(s, load64_le(tail + 8 * i));
    sip_final(s, tail + 8 * words, 4, total, out, nout);
}

void sip_finish_block(sip_state *s, const int32_t *toks, int32_t bs, uint64_t ns, const uint64_t parent[2],
                      uint64_t out[2]) {
    finish_block(s, toks, bs, ns, parent, 0, out, 2);
}

uint64_t sip_finish_block_lo(sip_state *s, const int32_t *toks, int32_t bs, uint64_t ns, const uint64_t parent[2]) {
    uint64_t out[2];
    finish_block(s, toks, bs, ns, parent, 0, out, 1);
    return out[0];
}

void sip_finish_block_x(sip_state *s, const int32_t *toks, int32_t bs, uint64_t ns, const uint64_t parent[2],
                        uint64_t xd, uint64_t out[2]) {
    finish_block(s, toks, bs, ns, parent, xd, out, 2);
}

uint64_t sip_finish_block_lo_x(sip_state *s, const int32_t *toks, int32_t bs, uint64_t ns, const uint64_t parent[2],
                               uint64_t xd) {
    uint64_t out[2];
    finish_block(s, toks, bs, ns, parent, xd, out, 1);
    return out[0];
}
