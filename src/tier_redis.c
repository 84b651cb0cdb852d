/* The Redis tier: blobs as Redis strings, on one server or a Redis Cluster,
 * through hiredis (compiled in with `make REDIS=1`; otherwise the open says so).
 *
 * Keys. A block's Redis key is the prefix (default "pkv:") and the 32 lower-case
 * hex digits of its 16-byte identity key. Cluster slots: CRC16 of the key, or of
 * its first non-empty {hash tag} (a tag in the prefix puts all blocks on one
 * slot; without one, the blocks of a chain spread over the masters).
 *
 * Values. blob || MAC (value_mac below: NH, then a polynomial at a secret
 * point, then SipHash-128 with the length and the block's key; every key
 * derived from the caches' hash key). The library's own blob check
 * (tier.c) is an unkeyed checksum, which a third party writing to Redis could
 * forge; the MAC cannot be forged without the hash key and cannot be replayed
 * under another key.
 *
 * Connections. One per node (standalone: the server; cluster: each master met),
 * opened lazily with a connect timeout, then a command timeout (hiredis socket
 * timeouts). A failure closes it and schedules the next attempt after a backoff
 * (100 ms doubling to 5 s); until then calls to that node fail at once, so a
 * server that is down or paused costs one timeout per backoff period.
 *
 * Batches. get_many / put_many send every command for a node and then read
 * the replies: one round trip per node per batch. SETs are written with
 * writev from the caller's blobs, GET replies read into the caller's buffers.
 * A MOVED or ASK reply (slots moved) updates the slot map and that key is
 * retried alone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu.h"
#include "tier_redis.h"

#define CLUSTER_SLOTS 16384

unsigned pkv__redis_key_slot(const char *key, size_t len) {
    size_t s = 0, e = len;
    for (size_t i = 0; i < len; i++)
        if (key[i] == '{') {
            size_t j = i + 1;
            while (j < len && key[j] != '}') j++;
            if (j < len && j > i + 1) {
                s = i + 1;
                e = j;
            }
            break;
        }
    uint16_t crc = 0;
    for (size_t i = s; i < e; i++) {
        crc ^= (uint16_t)((uint8_t)key[i] << 8);
        for (int b = 0; b < 8; b++) crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc & (CLUSTER_SLOTS - 1);
}

#ifndef PKV_REDIS

int pkv_tier_redis_open(const char *url, const uint8_t hash_key[16], const char *key_prefix, int32_t timeout_ms,
                        pkv_tier_backend *out, char *detail) {
    (void)url, (void)hash_key, (void)key_prefix, (void)timeout_ms, (void)out;
    pkv_detail d;
    int st = pkv__fail(&d, PKV_ERR_MODE, "redis tier: this library was built without REDIS=1 (no hiredis)");
    if (detail) memcpy(detail, d.text, sizeof d.text);
    return st;
}

void pkv__tier_redis_info(void *ctx, pkv__tier_redis_info_t *out) {
    (void)ctx;
    memset(out, 0, sizeof *out);
}

#else

#include <errno.h>
#include <sys/uio.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define MAX_NODES 64
#define MAC_BYTES 16
#define KEY_MAX (64 + 32)
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0

/* The MAC (hash, then PRF; Carter and Wegman's shape, UMAC's layering).
 * 1. NH, in 1024-byte chunks: for each 64-byte block j of a chunk, its 32-bit
 *    words w[0..15] give sum_i (w[2i] + K[16j+2i]) * (w[2i+1] + K[16j+2i+1])
 *    (sums mod 2^32, products and total mod 2^64), twice: with K and with K
 *    shifted by 4 words (the Toeplitz pair), two 64-bit values per chunk.
 *    A last partial block is zero-padded (the length is authenticated in 3).
 *    NH is 2^-32-almost-universal on equal-length chunks; the pair 2^-64.
 * 2. A polynomial over GF(2^61 - 1) at a secret point r, over the 32-bit
 *    halves of those values (4 words per chunk): distinct chunk sequences of
 *    one length collide for at most (4 chunks) / 2^61 of the points.
 * 3. SipHash-128 of (that hash, the length, the block's key) under the MAC
 *    key: r and K never leave the PRF, so a forgery succeeds with about
 *    2^-64 + (4 len / 1024) / 2^61 chance per try, and a value moved to
 *    another key fails. Keys K, r and the MAC key derive from the hash key.
 * NH runs at tens of GB/s on AVX-512 (8 products per instruction), so the
 * check of a GET costs little beside the transfer; the polynomial and
 * SipHash see 16 bytes per KiB and 48 bytes per value. Every body (portable,
 * AVX2, AVX-512) gives the same bits: NH's sum is order-free mod 2^64. */
__extension__ typedef unsigned __int128 u128;
#define P61 ((1ull << 61) - 1)
#define NH_BLOCKS 16                 /* 64-byte blocks per chunk */
#define NH_WORDS (16 * NH_BLOCKS + 4) /* key words: a chunk's and the Toeplitz shift */

static inline uint64_t fold61(u128 x) { /* x < 2^125 -> a value < 2^62, congruent mod P61 */
    u128 y = (x & P61) + (x >> 61);
    return (uint64_t)((y & P61) + (y >> 61));
}

static inline uint64_t nh_word(const uint8_t *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}

/* NH of nblk blocks at p, key k (k[16 j ..] for block j), added into a[0], a[1]. */
static void nh_portable(const uint32_t *k, const uint8_t *p, size_t nblk, uint64_t a[2]) {
    for (size_t b = 0; b < nblk; b++, p += 64, k += 16)
        for (int i = 0; i < 16; i += 2) {
            const uint32_t x = (uint32_t)nh_word(p + 4 * i), y = (uint32_t)nh_word(p + 4 * i + 4);
            a[0] += (uint64_t)(uint32_t)(x + k[i]) * (uint32_t)(y + k[i + 1]);
            a[1] += (uint64_t)(uint32_t)(x + k[i + 4]) * (uint32_t)(y + k[i + 5]);
        }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NH_X86 1
/* Each 64-bit lane holds words (2i, 2i+1): mul_epu32 of x and x >> 32 is their product. */
__attribute__((target("avx2"))) static void nh_avx2(const uint32_t *k, const uint8_t *p, size_t nblk, uint64_t a[2]) {
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    for (size_t b = 0; b < nblk; b++, p += 64, k += 16)
        for (int h = 0; h < 16; h += 8) {
            const __m256i m = _mm256_loadu_si256((const __m256i *)(p + 4 * h));
            const __m256i x0 = _mm256_add_epi32(m, _mm256_loadu_si256((const __m256i *)(k + h)));
            const __m256i x1 = _mm256_add_epi32(m, _mm256_loadu_si256((const __m256i *)(k + h + 4)));
            s0 = _mm256_add_epi64(s0, _mm256_mul_epu32(x0, _mm256_srli_epi64(x0, 32)));
            s1 = _mm256_add_epi64(s1, _mm256_mul_epu32(x1, _mm256_srli_epi64(x1, 32)));
        }
    uint64_t l0[4], l1[4];
    _mm256_storeu_si256((__m256i *)l0, s0);
    _mm256_storeu_si256((__m256i *)l1, s1);
    a[0] += l0[0] + l0[1] + l0[2] + l0[3];
    a[1] += l1[0] + l1[1] + l1[2] + l1[3];
}

__attribute__((target("avx512f"))) static void nh_avx512(const uint32_t *k, const uint8_t *p, size_t nblk,
                                                         uint64_t a[2]) {
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    for (size_t b = 0; b < nblk; b++, p += 64, k += 16) {
        const __m512i m = _mm512_loadu_si512(p);
        const __m512i x0 = _mm512_add_epi32(m, _mm512_loadu_si512(k));
        const __m512i x1 = _mm512_add_epi32(m, _mm512_loadu_si512(k + 4));
        s0 = _mm512_add_epi64(s0, _mm512_mul_epu32(x0, _mm512_srli_epi64(x0, 32)));
        s1 = _mm512_add_epi64(s1, _mm512_mul_epu32(x1, _mm512_srli_epi64(x1, 32)));
    }
    a[0] += (uint64_t)_mm512_reduce_add_epi64(s0);
    a[1] += (uint64_t)_mm512_reduce_add_epi64(s1);
}
#endif

/* The NH body for this CPU and PKV_ISA: 2 AVX-512F, 1 AVX2, 0 portable. */
static int mac_isa(void) {
    const uint64_t cpu = pkv__cpu_detect();
    const int cap = pkv__isa_cap();
    if ((cpu & PKV_CPU_AVX512F) && cap >= PKV_ISA_AVX512) return 2;
    if ((cpu & PKV_CPU_AVX2) && cap >= PKV_ISA_AVX2) return 1;
    return 0;
}

/* The keys of the MAC, derived from the caches' hash key. */
typedef struct mac_keys {
    uint8_t sip[16];       /* SipHash-128's */
    uint64_t r;            /* the polynomial's point */
    uint32_t k[NH_WORDS];  /* NH's */
    int isa;               /* the NH body (mac_isa) */
} mac_keys;

static void mac_keys_init(mac_keys *m, const uint8_t hash_key[16], int isa) {
    static const char label[] = "pagedkv redis tier MAC v2";
    pkv_siphash128(hash_key, label, sizeof label - 1, m->sip);
    uint8_t in[48] = "pagedkv redis tier keys v2", out[16];
    pkv_siphash128(hash_key, in, sizeof in, out);
    uint64_t r;
    memcpy(&r, out, 8);
    r = (r & P61) % P61;
    m->r = r < 2 ? r + 2 : r;
    for (uint32_t i = 0; i < NH_WORDS; i += 4) { /* counter mode */
        memcpy(in + 40, &i, 4);
        pkv_siphash128(hash_key, in, sizeof in, out);
        memcpy(m->k + i, out, 16);
    }
    m->isa = isa;
}

/* A MAC over a value that arrives in pieces (whole 64-byte blocks, then the tail). */
typedef struct mac_state {
    uint64_t h;     /* the polynomial over the finished chunks */
    uint64_t a[2];  /* NH of the current chunk so far */
    int32_t j;      /* its blocks done */
} mac_state;

static void mac_flush(const mac_keys *m, mac_state *s) {
    if (!s->j) return;
    const uint64_t w[4] = {s->a[0] & 0xffffffffu, s->a[0] >> 32, s->a[1] & 0xffffffffu, s->a[1] >> 32};
    for (int i = 0; i < 4; i++) s->h = fold61((u128)s->h * m->r + w[i]);
    s->a[0] = s->a[1] = 0;
    s->j = 0;
}

static void mac_blocks(const mac_keys *m, mac_state *s, const uint8_t *p, size_t nblk) {
    while (nblk) {
        size_t take = (size_t)(NH_BLOCKS - s->j) < nblk ? (size_t)(NH_BLOCKS - s->j) : nblk;
        const uint32_t *k = m->k + 16 * s->j;
#ifdef NH_X86
        if (m->isa == 2) nh_avx512(k, p, take, s->a);
        else if (m->isa == 1) nh_avx2(k, p, take, s->a);
        else nh_portable(k, p, take, s->a);
#else
        nh_portable(k, p, take, s->a);
#endif
        s->j += (int32_t)take;
        p += 64 * take;
        nblk -= take;
        if (s->j == NH_BLOCKS) mac_flush(m, s);
    }
}

/* The tail (n < 64 bytes, zero-padded), then the PRF of the total length len. */
static void mac_final(const mac_keys *m, mac_state *s, const uint8_t *tail, size_t n, size_t len,
                      const uint8_t key[16], uint8_t mac[16]) {
    if (n) {
        uint8_t last[64] = {0};
        memcpy(last, tail, n);
        mac_blocks(m, s, last, 1);
    }
    mac_flush(m, s);
    uint64_t h = (s->h & P61) + (s->h >> 61);
    uint64_t msg[4] = {h >= P61 ? h - P61 : h, (uint64_t)len};
    memcpy(msg + 2, key, 16);
    pkv_siphash128(m->sip, msg, sizeof msg, mac);
}

static void value_mac(const mac_keys *m, const uint8_t key[16], const void *blob, size_t len, uint8_t mac[16]) {
    mac_state s = {0, {0, 0}, 0};
    mac_blocks(m, &s, blob, len / 64);
    mac_final(m, &s, (const uint8_t *)blob + len / 64 * 64, len % 64, len, key, mac);
}

void pkv__redis_value_mac(const uint8_t hash_key[16], const uint8_t key[16], const void *blob, size_t len, int isa,
                          uint8_t mac[16]) {
    mac_keys m;
    const int best = mac_isa();
    mac_keys_init(&m, hash_key, isa < 0 || isa > best ? best : isa);
    value_mac(&m, key, blob, len, mac);
}

typedef struct rnode {
    char host[128];
    int port;
    redisContext *rc;
    double retry_at, backoff; /* next connect attempt; current backoff (s) */
} rnode;

typedef struct rtier {
    int cluster;
    char user[128], password[128];
    int db;
    char prefix[65];
    size_t plen;
    mac_keys mac;
    struct timeval tv;
    int nnodes;
    rnode node[MAX_NODES];
    uint8_t slot_node[CLUSTER_SLOTS]; /* node index, 0xff unknown */
    int have_slots;
    double slots_retry_at;
    uint8_t rbuf[1 << 16]; /* replies of a batch of GETs, read past hiredis */
    size_t rpos, rlen;
    uint8_t *vbuf; /* one value (blob + MAC) for puts */
    size_t vcap;
    pkv__tier_redis_info_t info;
} rtier;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static size_t make_key(const rtier *t, const uint8_t key[16], char *out) {
    static const char hex[] = "0123456789abcdef";
    memcpy(out, t->prefix, t->plen);
    for (int i = 0; i < 16; i++) {
        out[t->plen + 2 * i] = hex[key[i] >> 4];
        out[t->plen + 2 * i + 1] = hex[key[i] & 15];
    }
    out[t->plen + 32] = 0;
    return t->plen + 32;
}

/* ---- connections ---- */

static void node_down(rtier *t, rnode *n) {
    if (n->rc) redisFree(n->rc);
    n->rc = NULL;
    n->backoff = n->backoff <= 0 ? BACKOFF_MIN : (n->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : n->backoff * 2);
    n->retry_at = now_s() + n->backoff;
    t->info.errors++;
}

static int reply_ok(redisReply *r) { return r && r->type != REDIS_REPLY_ERROR; }

/* The node's connection, connecting when its backoff allows; NULL when down. */
static redisContext *node_ctx(rtier *t, rnode *n) {
    if (n->rc) return n->rc;
    if (now_s() < n->retry_at) {
        t->info.refused++;
        return NULL;
    }
    n->rc = redisConnectWithTimeout(n->host, n->port, t->tv);
    if (!n->rc || n->rc->err || redisSetTimeout(n->rc, t->tv) != REDIS_OK) {
        node_down(t, n);
        return NULL;
    }
    t->info.connects++;
    /* Keep the reader's buffer between replies: the default frees it whenever it
     * empties, so every blob-sized reply would grow it again from 16 KiB. */
    n->rc->reader->maxbuf = 0;
    if (t->password[0]) {
        redisReply *r = t->user[0] ? redisCommand(n->rc, "AUTH %s %s", t->user, t->password)
                                   : redisCommand(n->rc, "AUTH %s", t->password);
        int ok = reply_ok(r);
        if (r) freeReplyObject(r);
        if (!ok) {
            node_down(t, n);
            return NULL;
        }
    }
    if (!t->cluster && t->db) {
        redisReply *r = redisCommand(n->rc, "SELECT %d", t->db);
        int ok = reply_ok(r);
        if (r) freeReplyObject(r);
        if (!ok) {
            node_down(t, n);
            return NULL;
        }
    }
    n->backoff = 0;
    return n->rc;
}

static int find_node(rtier *t, const char *host, size_t hlen, int port) {
    for (int i = 0; i < t->nnodes; i++)
        if (t->node[i].port == port && strlen(t->node[i].host) == hlen && memcmp(t->node[i].host, host, hlen) == 0)
            return i;
    if (t->nnodes == MAX_NODES || hlen == 0 || hlen >= sizeof t->node[0].host) return -1;
    rnode *n = &t->node[t->nnodes];
    memset(n, 0, sizeof *n);
    memcpy(n->host, host, hlen);
    n->host[hlen] = 0;
    n->port = port;
    return t->nnodes++;
}

/* Cluster: the slot map from CLUSTER SLOTS of the first node that answers. */
static int load_slots(rtier *t) {
    if (now_s() < t->slots_retry_at) return 0;
    for (int i = 0; i < t->nnodes; i++) {
        redisContext *rc = node_ctx(t, &t->node[i]);
        if (!rc) continue;
        redisReply *r = redisCommand(rc, "CLUSTER SLOTS");
        if (!r) {
            node_down(t, &t->node[i]);
            continue;
        }
        int ok = r->type == REDIS_REPLY_ARRAY && r->elements > 0;
        if (ok) memset(t->slot_node, 0xff, sizeof t->slot_node);
        for (size_t k = 0; ok && k < r->elements; k++) {
            redisReply *e = r->element[k];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
                e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
                e->element[2]->elements < 2 || e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
                e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
                continue;
            long long lo = e->element[0]->integer, hi = e->element[1]->integer;
            redisReply *h = e->element[2]->element[0];
            /* An empty host means "the address you reached me at". */
            const char *host = h->len ? h->str : t->node[i].host;
            size_t hlen = h->len ? h->len : strlen(t->node[i].host);
            int ni = find_node(t, host, hlen, (int)e->element[2]->element[1]->integer);
            if (ni < 0 || lo < 0 || hi >= CLUSTER_SLOTS || lo > hi) continue;
            for (long long s = lo; s <= hi; s++) t->slot_node[s] = (uint8_t)ni;
        }
        freeReplyObject(r);
        if (ok) {
            t->have_slots = 1;
            return 1;
        }
    }
    t->slots_retry_at = now_s() + BACKOFF_MIN;
    return 0;
}

/* The node that serves key (a Redis key), or -1. */
static int route(rtier *t, const char *key, size_t klen) {
    if (!t->cluster) return 0;
    if (!t->have_slots && !load_slots(t)) return -1;
    int ni = t->slot_node[pkv__redis_key_slot(key, klen)];
    return ni == 0xff ? -1 : ni;
}

/* A MOVED / ASK error reply: the node to ask instead (its slot now maps to it
 * after MOVED); -1 when the reply is no redirect. */
static int redirect(rtier *t, const redisReply *r, int *ask) {
    if (!r || r->type != REDIS_REPLY_ERROR) return -1;
    int moved = strncmp(r->str, "MOVED ", 6) == 0;
    *ask = strncmp(r->str, "ASK ", 4) == 0;
    if (!moved && !*ask) return -1;
    const char *p = strchr(r->str, ' ') + 1;
    long slot = strtol(p, (char **)&p, 10);
    while (*p == ' ') p++;
    const char *colon = strrchr(p, ':');
    if (!colon || slot < 0 || slot >= CLUSTER_SLOTS) return -1;
    int ni = find_node(t, p, (size_t)(colon - p), atoi(colon + 1));
    if (ni >= 0 && moved) t->slot_node[slot] = (uint8_t)ni;
    t->info.redirects++;
    return ni;
}

/* One command about one Redis key, following redirects. NULL on a failure
 * (counted; the node is down). The caller frees the reply. */
static redisReply *command(rtier *t, const char *key, size_t klen, int argc, const char **argv, const size_t *lens) {
    int ni = route(t, key, klen), ask = 0;
    for (int hop = 0; hop < 4 && ni >= 0; hop++) {
        rnode *n = &t->node[ni];
        redisContext *rc = node_ctx(t, n);
        if (!rc) return NULL;
        if (ask) {
            redisReply *a = redisCommand(rc, "ASKING");
            if (!a) {
                node_down(t, n);
                return NULL;
            }
            freeReplyObject(a);
        }
        t->info.round_trips++;
        redisReply *r = redisCommandArgv(rc, argc, argv, lens);
        if (!r) {
            node_down(t, n);
            return NULL;
        }
        int next = t->cluster ? redirect(t, r, &ask) : -1;
        if (next < 0) return r;
        freeReplyObject(r);
        ni = next;
    }
    if (ni < 0) t->info.errors++;
    return NULL;
}

/* ---- the backend calls ---- */

static int check_value(rtier *t, const uint8_t key[16], const redisReply *r, void *buf, size_t cap, size_t *len) {
    if (r->type == REDIS_REPLY_NIL) return PKV_ERR_NOT_FOUND;
    if (r->type != REDIS_REPLY_STRING) {
        t->info.errors++;
        return PKV_ERR_IO;
    }
    if (r->len < MAC_BYTES) {
        t->info.mac_failures++;
        return PKV_ERR_CORRUPT;
    }
    size_t n = r->len - MAC_BYTES;
    uint8_t mac[16];
    value_mac(&t->mac, key, (const uint8_t *)r->str, n, mac);
    if (memcmp(mac, r->str + n, MAC_BYTES) != 0) {
        t->info.mac_failures++;
        return PKV_ERR_CORRUPT;
    }
    *len = n;
    if (cap < n) return PKV_ERR_BUFFER;
    memcpy(buf, r->str, n);
    return PKV_OK;
}

static int r_get(void *ctx, const uint8_t key[16], void *buf, size_t cap, size_t *len) {
    rtier *t = ctx;
    char k[KEY_MAX + 1];
    size_t klen = make_key(t, key, k);
    const char *argv[2] = {"GET", k};
    size_t lens[2] = {3, klen};
    redisReply *r = command(t, k, klen, 2, argv, lens);
    if (!r) return PKV_ERR_IO;
    int st = check_value(t, key, r, buf, cap, len);
    freeReplyObject(r);
    return st;
}

static int fill_value(rtier *t, const uint8_t key[16], const void *blob, size_t len) {
    if (len > SIZE_MAX - MAC_BYTES) return PKV_ERR_INVALID;
    if (t->vcap < len + MAC_BYTES) {
        uint8_t *nb = realloc(t->vbuf, len + MAC_BYTES);
        if (!nb) return PKV_ERR_NOMEM;
        t->vbuf = nb;
        t->vcap = len + MAC_BYTES;
    }
    memcpy(t->vbuf, blob, len);
    value_mac(&t->mac, key, blob, len, t->vbuf + len);
    return PKV_OK;
}

static int r_put(void *ctx, const uint8_t key[16], const void *blob, size_t len) {
    rtier *t = ctx;
    FORWARD_IF_ERROR(fill_value(t, key, blob, len));
    char k[KEY_MAX + 1];
    size_t klen = make_key(t, key, k);
    const char *argv[3] = {"SET", k, (const char *)t->vbuf};
    size_t lens[3] = {3, klen, len + MAC_BYTES};
    redisReply *r = command(t, k, klen, 3, argv, lens);
    if (!r) return PKV_ERR_IO;
    int st = r->type == REDIS_REPLY_ERROR ? PKV_ERR_IO : PKV_OK;
    if (st != PKV_OK) t->info.errors++;
    freeReplyObject(r);
    return st;
}

static int key_command(rtier *t, const char *cmd, const uint8_t key[16], long long *out) {
    char k[KEY_MAX + 1];
    size_t klen = make_key(t, key, k);
    const char *argv[2] = {cmd, k};
    size_t lens[2] = {strlen(cmd), klen};
    redisReply *r = command(t, k, klen, 2, argv, lens);
    if (!r) return PKV_ERR_IO;
    int st = r->type == REDIS_REPLY_INTEGER ? PKV_OK : PKV_ERR_IO;
    if (st == PKV_OK) *out = r->integer;
    else t->info.errors++;
    freeReplyObject(r);
    return st;
}

static int r_exists(void *ctx, const uint8_t key[16]) {
    long long n = 0;
    FORWARD_IF_ERROR(key_command(ctx, "EXISTS", key, &n));
    return n > 0;
}

static int r_del(void *ctx, const uint8_t key[16]) {
    long long n = 0;
    FORWARD_IF_ERROR(key_command(ctx, "DEL", key, &n));
    return n > 0 ? PKV_OK : PKV_ERR_NOT_FOUND;
}

/* A SET written to the connection's socket with writev: the RESP header, the
 * blob from the caller's memory, then its MAC. The connection's output buffer
 * is empty here (hiredis flushes it before it reads a reply). A send timeout
 * (SO_SNDTIMEO, the command timeout) fails it. Returns 0 or -1. */
static int send_set(redisContext *rc, const char *key, size_t klen, const void *blob, size_t size,
                    const uint8_t mac[MAC_BYTES]) {
    char hdr[64 + KEY_MAX];
    int hl = snprintf(hdr, sizeof hdr, "*3\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%zu\r\n", klen, key, size + MAC_BYTES);
    uint8_t tail[MAC_BYTES + 2];
    memcpy(tail, mac, MAC_BYTES);
    tail[MAC_BYTES] = '\r';
    tail[MAC_BYTES + 1] = '\n';
    struct iovec iov[3] = {{hdr, (size_t)hl}, {(void *)(uintptr_t)blob, size}, {tail, sizeof tail}};
    struct iovec *v = iov;
    int cnt = 3;
    while (cnt > 0) {
        ssize_t w = writev(rc->fd, v, cnt);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        while (cnt > 0 && (size_t)w >= v->iov_len) {
            w -= (ssize_t)v->iov_len;
            v++;
            cnt--;
        }
        if (cnt > 0) {
            v->iov_base = (char *)v->iov_base + w;
            v->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* ---- replies of pipelined GETs, read straight into the caller's buffers ----
 * hiredis would copy each value twice (its input buffer, then the reply
 * object); this reader takes the RESP header from a small buffer and reads the
 * value's bytes from the socket into their destination. Used only while the
 * connection's hiredis reader holds nothing (its input is consumed whole). */

static int rd_fill(rtier *t, int fd) {
    if (t->rpos == t->rlen) {
        t->rpos = t->rlen = 0;
    } else if (t->rlen == sizeof t->rbuf) {
        memmove(t->rbuf, t->rbuf + t->rpos, t->rlen - t->rpos);
        t->rlen -= t->rpos;
        t->rpos = 0;
    }
    ssize_t g;
    do g = read(fd, t->rbuf + t->rlen, sizeof t->rbuf - t->rlen);
    while (g < 0 && errno == EINTR);
    if (g <= 0) return -1; /* closed, failed, or the command timeout (SO_RCVTIMEO) */
    t->rlen += (size_t)g;
    return 0;
}

/* One line without its CRLF into out (cap bytes, NUL-terminated). */
static int rd_line(rtier *t, int fd, char *out, size_t cap) {
    for (;;) {
        uint8_t *nl = memchr(t->rbuf + t->rpos, '\n', t->rlen - t->rpos);
        if (nl) {
            size_t n = (size_t)(nl - (t->rbuf + t->rpos));
            size_t m = n > 0 && t->rbuf[t->rpos + n - 1] == '\r' ? n - 1 : n;
            if (m >= cap) m = cap - 1;
            memcpy(out, t->rbuf + t->rpos, m);
            out[m] = 0;
            t->rpos += n + 1;
            return 0;
        }
        if (t->rlen - t->rpos > 4096 || rd_fill(t, fd) != 0) return -1;
    }
}

/* n bytes into dst (NULL: dropped). */
static int rd_exact(rtier *t, int fd, void *dst, size_t n) {
    size_t have = t->rlen - t->rpos, k = have < n ? have : n;
    if (dst) memcpy(dst, t->rbuf + t->rpos, k);
    t->rpos += k;
    for (size_t off = k; off < n;) {
        if (!dst) {
            if (rd_fill(t, fd) != 0) return -1;
            size_t take = t->rlen - t->rpos < n - off ? t->rlen - t->rpos : n - off;
            t->rpos += take;
            off += take;
            continue;
        }
        ssize_t g = read(fd, (uint8_t *)dst + off, n - off);
        if (g < 0 && errno == EINTR) continue;
        if (g <= 0) return -1;
        off += (size_t)g;
    }
    return 0;
}

/* The reply of GET keys[i]: its status, or 1 for a redirect (retried alone);
 * -100 when the connection failed or is out of step. */
static int rd_get_reply(rtier *t, int fd, const uint8_t key[16], void *buf, size_t cap, size_t *len) {
    char line[512];
    if (rd_line(t, fd, line, sizeof line) != 0) return -100;
    if (line[0] == '-') {
        redisReply fake;
        memset(&fake, 0, sizeof fake);
        fake.type = REDIS_REPLY_ERROR;
        fake.str = line;
        fake.len = strlen(line);
        int ask;
        if (t->cluster && redirect(t, &fake, &ask) >= 0) return 1;
        t->info.errors++;
        return PKV_ERR_IO;
    }
    if (line[0] != '$') return -100;
    char *end;
    long long v = strtoll(line + 1, &end, 10);
    if (*end) return -100;
    if (v < 0) return PKV_ERR_NOT_FOUND;
    size_t total = (size_t)v;
    if (total < MAC_BYTES || total - MAC_BYTES > cap) {
        if (rd_exact(t, fd, NULL, total + 2) != 0) return -100;
        if (total < MAC_BYTES) {
            t->info.mac_failures++;
            return PKV_ERR_CORRUPT;
        }
        *len = total - MAC_BYTES;
        return PKV_ERR_BUFFER;
    }
    size_t n = total - MAC_BYTES;
    uint8_t mac[MAC_BYTES + 2], want[MAC_BYTES], *d = buf;
    /* The MAC's polynomial runs over each 64 bytes as they arrive, while the
     * server sends the rest (the check costs no extra pass over the value). */
    size_t have = t->rlen - t->rpos, off = have < n ? have : n, hashed = 0;
    memcpy(d, t->rbuf + t->rpos, off);
    t->rpos += off;
    mac_state ms = {0, {0, 0}, 0};
    for (;;) {
        size_t blk = (off - hashed) / 64;
        mac_blocks(&t->mac, &ms, d + hashed, blk);
        hashed += blk * 64;
        if (off == n) break;
        ssize_t g = read(fd, d + off, n - off);
        if (g < 0 && errno == EINTR) continue;
        if (g <= 0) return -100;
        off += (size_t)g;
    }
    if (rd_exact(t, fd, mac, sizeof mac) != 0) return -100;
    *len = n;
    mac_final(&t->mac, &ms, d + hashed, n - hashed, n, key, want);
    if (memcmp(want, mac, MAC_BYTES) != 0) {
        t->info.mac_failures++;
        return PKV_ERR_CORRUPT;
    }
    return PKV_OK;
}

/* A batch: per node, every command appended, then every reply read (one
 * round trip per node). do_get selects GET (into bufs) or SET (of blobs). */
static int batch(rtier *t, int32_t n, const uint8_t (*keys)[16], void *const *bufs, const void *const *blobs,
                 size_t size, size_t *lens, int *status) {
    if (n < 0 || !keys || !status || (bufs && !lens)) return PKV_ERR_INVALID;
    if (n == 0) return PKV_OK;
    int *node_of = malloc((size_t)n * sizeof *node_of);
    char(*k)[KEY_MAX + 1] = malloc((size_t)n * sizeof *k);
    size_t *klen = malloc((size_t)n * sizeof *klen);
    uint8_t(*macs)[MAC_BYTES] = blobs ? malloc((size_t)n * MAC_BYTES) : NULL;
    if (!node_of || !k || !klen || (blobs && !macs)) {
        free(node_of), free(k), free(klen), free(macs);
        return PKV_ERR_NOMEM;
    }
    for (int32_t i = 0; i < n; i++) {
        klen[i] = make_key(t, keys[i], k[i]);
        node_of[i] = route(t, k[i], klen[i]);
        status[i] = PKV_ERR_IO;
        if (blobs) value_mac(&t->mac, keys[i], blobs[i], size, macs[i]);
    }
    int retry_alone = 0;
    for (int ni = 0; ni < t->nnodes; ni++) {
        int sent = 0;
        rnode *nd = &t->node[ni];
        redisContext *rc = NULL;
        int lost = 0;
        for (int32_t i = 0; i < n; i++) {
            if (node_of[i] != ni) continue;
            if (!rc && !(rc = node_ctx(t, nd))) break;
            if (blobs) {
                /* Straight to the socket (hiredis would copy the value twice). */
                if (send_set(rc, k[i], klen[i], blobs[i], size, macs[i]) != 0) {
                    lost = 1;
                    break;
                }
            } else {
                const char *argv[2] = {"GET", k[i]};
                size_t al[2] = {3, klen[i]};
                if (redisAppendCommandArgv(rc, 2, argv, al) != REDIS_OK) break;
            }
            sent++;
        }
        if (lost) { /* a command went out in part: the connection is out of step */
            node_down(t, nd);
            continue;
        }
        if (!sent) continue;
        t->info.round_trips++;
        int broken = 0;
        if (bufs) {
            int done = 0;
            while (!done && !broken) broken = redisBufferWrite(rc, &done) != REDIS_OK;
            t->rpos = t->rlen = 0;
            for (int32_t i = 0; i < n && sent > 0 && !broken; i++) {
                if (node_of[i] != ni) continue;
                sent--;
                int st = rd_get_reply(t, rc->fd, keys[i], bufs[i], size, &lens[i]);
                if (st == -100) broken = 1;
                else status[i] = st;
                retry_alone |= st == 1;
            }
            if (broken || t->rpos != t->rlen) node_down(t, nd); /* the keys not answered stay PKV_ERR_IO */
            continue;
        }
        for (int32_t i = 0; i < n && sent > 0; i++) {
            if (node_of[i] != ni) continue;
            sent--;
            void *rv = NULL;
            if (broken || redisGetReply(rc, &rv) != REDIS_OK || !rv) {
                broken = 1;
                continue;
            }
            redisReply *r = rv;
            int ask;
            if (t->cluster && redirect(t, r, &ask) >= 0) {
                status[i] = 1; /* retried alone below */
                retry_alone = 1;
            } else if (bufs) {
                status[i] = check_value(t, keys[i], r, bufs[i], size, &lens[i]);
            } else if (r->type == REDIS_REPLY_ERROR) {
                t->info.errors++;
            } else {
                status[i] = PKV_OK;
            }
            freeReplyObject(r);
        }
        if (broken) node_down(t, nd); /* the keys not answered stay PKV_ERR_IO */
    }
    for (int32_t i = 0; retry_alone && i < n; i++) {
        if (status[i] != 1) continue;
        status[i] = bufs ? r_get(t, keys[i], bufs[i], size, &lens[i])
                         : r_put(t, keys[i], blobs[i], size);
    }
    free(node_of), free(k), free(klen), free(macs);
    return PKV_OK;
}

static int r_get_many(void *ctx, int32_t n, const uint8_t (*keys)[16], void *const *bufs, size_t cap, size_t *lens,
                      int *status) {
    if (!bufs && n > 0) return PKV_ERR_INVALID;
    return batch(ctx, n, keys, bufs, NULL, cap, lens, status);
}

static int r_put_many(void *ctx, int32_t n, const uint8_t (*keys)[16], const void *const *blobs, size_t len,
                      int *status) {
    if (!blobs && n > 0) return PKV_ERR_INVALID;
    return batch(ctx, n, keys, NULL, blobs, len, NULL, status);
}

static void r_close(void *ctx) {
    rtier *t = ctx;
    for (int i = 0; i < t->nnodes; i++)
        if (t->node[i].rc) redisFree(t->node[i].rc);
    free(t->vbuf);
    free(t);
}

void pkv__tier_redis_info(void *ctx, pkv__tier_redis_info_t *out) {
    rtier *t = ctx;
    *out = t->info;
    out->nodes = t->nnodes;
}

/* ---- the URL ---- */

static int parse_url(rtier *t, const char *url, pkv_detail *d) {
    const char *p;
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncmp(url, "redis+cluster://", 16) == 0) {
        p = url + 16;
        t->cluster = 1;
    } else {
        return pkv__fail(d, PKV_ERR_INVALID, "redis tier: url \"%.64s\" starts with neither redis:// nor "
                         "redis+cluster://", url);
    }
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ul = colon ? (size_t)(colon - p) : 0, pl = colon ? (size_t)(at - colon - 1) : (size_t)(at - p);
        const char *pw = colon ? colon + 1 : p;
        if (ul >= sizeof t->user || pl >= sizeof t->password || pl == 0)
            return pkv__fail(d, PKV_ERR_INVALID, "redis tier: user or password empty or too long");
        memcpy(t->user, p, ul);
        memcpy(t->password, pw, pl);
        p = at + 1;
    }
    while (*p && *p != '/') {
        const char *end = p + strcspn(p, ",/");
        const char *colon = NULL;
        for (const char *q = p; q < end; q++)
            if (*q == ':') colon = q;
        char *pe;
        long port = colon ? strtol(colon + 1, &pe, 10) : -1;
        if (!colon || colon == p || pe != end || port < 1 || port > 65535)
            return pkv__fail(d, PKV_ERR_INVALID, "redis tier: \"%.*s\" is not host:port", (int)(end - p), p);
        if (find_node(t, p, (size_t)(colon - p), (int)port) < 0)
            return pkv__fail(d, PKV_ERR_INVALID, "redis tier: too many nodes or host name too long");
        p = *end == ',' ? end + 1 : end;
    }
    if (t->nnodes == 0) return pkv__fail(d, PKV_ERR_INVALID, "redis tier: url names no host:port");
    if (!t->cluster && t->nnodes > 1)
        return pkv__fail(d, PKV_ERR_INVALID, "redis tier: several hosts need redis+cluster://");
    if (*p == '/') {
        char *pe;
        long db = strtol(p + 1, &pe, 10);
        if (t->cluster || *pe || pe == p + 1 || db < 0 || db > 1 << 20)
            return pkv__fail(d, PKV_ERR_INVALID, "redis tier: database \"%.16s\" invalid%s", p + 1,
                             t->cluster ? " (a cluster has only database 0)" : "");
        t->db = (int)db;
    }
    return PKV_OK;
}

int pkv_tier_redis_open(const char *url, const uint8_t hash_key[16], const char *key_prefix, int32_t timeout_ms,
                        pkv_tier_backend *out, char *detail) {
    pkv_detail d;
    d.text[0] = 0;
    int st = PKV_OK;
    rtier *t = NULL;
    if (!url || !hash_key || !out) {
        st = pkv__fail(&d, PKV_ERR_NULL, "redis tier: %s is NULL", !url ? "url" : !hash_key ? "hash_key" : "out");
    } else if (key_prefix && strlen(key_prefix) > 64) {
        st = pkv__fail(&d, PKV_ERR_INVALID, "redis tier: key prefix longer than 64 bytes");
    } else if (timeout_ms < 0 || timeout_ms > 600000) {
        st = pkv__fail(&d, PKV_ERR_INVALID, "redis tier: timeout %d ms outside [0, 600000]", timeout_ms);
    } else if (!(t = calloc(1, sizeof *t))) {
        st = pkv__fail(&d, PKV_ERR_NOMEM, "redis tier: no memory");
    } else {
        st = parse_url(t, url, &d);
    }
    if (st != PKV_OK) {
        free(t);
        if (detail) memcpy(detail, d.text, sizeof d.text);
        return st;
    }
    snprintf(t->prefix, sizeof t->prefix, "%s", key_prefix ? key_prefix : "pkv:");
    t->plen = strlen(t->prefix);
    mac_keys_init(&t->mac, hash_key, mac_isa());
    if (timeout_ms == 0) timeout_ms = 1000;
    t->tv.tv_sec = timeout_ms / 1000;
    t->tv.tv_usec = (timeout_ms % 1000) * 1000;
    memset(t->slot_node, 0xff, sizeof t->slot_node);
    /* Connect now when the server is there; when not, the first call retries. */
    if (t->cluster) (void)load_slots(t);
    else (void)node_ctx(t, &t->node[0]);
    memset(out, 0, sizeof *out);
    out->size = sizeof *out;
    out->ctx = t;
    out->put = r_put;
    out->get = r_get;
    out->exists = r_exists;
    out->del = r_del;
    out->close = r_close;
    out->get_many = r_get_many;
    out->put_many = r_put_many;
    if (detail) detail[0] = 0;
    return PKV_OK;
}

#endif
