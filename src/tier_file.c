/* The file tier: blobs in fixed-size slots of slab files in one directory.
 *
 * Format (native byte order; version 1):
 *   slab-NNNN.pkv   a 4096-byte slab header (magic "PKVSLAB1", version, slot
 *                   header size, blob_size, stride, slab number, slot count,
 *                   checksum), then `nslots` slots of `stride` bytes each.
 *   slot            a 64-byte slot header (magic, version, blob_size, length,
 *                   write generation, the 16-byte key, the blob's checksum,
 *                   its own slab and slot number, the header's checksum) in a
 *                   header area (4096 bytes for blobs of 16 KiB or more, so blob
 *                   writes cover whole pages; else 64), then the blob.
 * An empty slot has a zero header. Every slot header names its slab, slot and
 * blob_size and is checksummed, so a header misplaced, torn or from another
 * tier never validates, and a valid header whose blob does not match its
 * checksum is dropped (a torn blob, a truncated file, flipped bytes).
 *
 * Writes: a put writes the blob, then the header, into a free slot, never over
 * the live slot of the key, which is invalidated only after the new one is
 * complete (and durable, with PKV_FILE_TIER_FSYNC). One fdatasync after both
 * writes suffices: the header carries the blob's checksum, so a header that
 * reaches the disk before its blob fails verification (a miss, never wrong
 * bytes). A crash at any point leaves the old blob, the new one, or both; on
 * open the newest generation of a key wins and the older copy is zeroed.
 *
 * The directory is locked (flock) while open: a second opener is refused.
 * Restart: a close that synced every slab leaves a file CLEAN; an open that
 * finds (and removes) it trusts the slot headers, else it also reads every
 * blob and checks its checksum (after a crash, torn slots are found then).
 * Either way every get checks the blob again. */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tier_file.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TF_X86 1
#endif

/* ---- format constants ---- */
#define SLAB_MAGIC "PKVSLAB1"
#define SLOT_MAGIC 0x544f4c53u /* "SLOT" */
#define TF_VERSION 1
#define SLOT_HDR 64
#define SLAB_TARGET_BYTES ((uint64_t)64 << 20) /* a slab holds about this much... */
#define MAX_SLABS 256                          /* ...unless that needs more files */
#define MAX_BLOB ((size_t)1 << 30)
#define MAX_SLOTS ((int64_t)1 << 28)
#define CLEAN_NAME "CLEAN"
#define HDR_SEED 0x5eedu
#define BLOB_SEED 0xb10bu

typedef struct slab_hdr {
    char magic[8];
    uint32_t version, slot_hdr;
    uint64_t blob_size, stride;
    uint32_t slab, nslots;
    uint64_t check; /* of the bytes above */
} slab_hdr;

typedef struct slot_hdr {
    uint32_t magic;
    uint16_t version, hdr_size;
    uint32_t blob_size, len;
    uint64_t gen;
    uint8_t key[16];
    uint64_t blob_check;
    uint32_t slab, index;
    uint64_t check; /* of the bytes above */
} slot_hdr;
_Static_assert(sizeof(slab_hdr) == 48, "slab header layout");
_Static_assert(sizeof(slot_hdr) == SLOT_HDR, "slot header layout");

/* ---- the I/O table ---- */
static int io_open(const char *path, int flags, mode_t mode) { return open(path, flags, mode); }
static int io_fsync(int fd) { return fdatasync(fd); }
const pkv__tier_file_io_t pkv__tier_file_io_default = {io_open, pread, pwrite, io_fsync, ftruncate};
pkv__tier_file_io_t pkv__tier_file_io = {io_open, pread, pwrite, io_fsync, ftruncate};

/* ---- checksum ---- */
static const uint64_t tf_secret[136] = {
    0x2cb0f69f4abea221ull, 0x9417034723148989ull, 0xdd555950609dfe03ull, 0xdbafb150deb12800ull,
    0x7e789b2e6c442cb6ull, 0xf41e5636c7e4f8c4ull, 0x0959d150f8fba7e4ull, 0xa97316f13cdb9eeaull,
    0x74cd8258f9520068ull, 0x55c74a62e116868bull, 0xd2f4c799a2023cbdull, 0xdf98cb79a37b51b9ull,
    0x396f5885524f3905ull, 0xaf1d56386ca3b276ull, 0xa9ffbe6b5104e85aull, 0x6bd0c51b9fd533b3ull,
    0x980ce91c50ab4b56ull, 0x28ac395780fe62c5ull, 0x768912e3a6bcedc7ull, 0x50b3e8c9332c7c88ull,
    0xce3bbfe520bd47daull, 0xcba6c8e8e0bb7c4full, 0xbf194db8434a346dull, 0x7d8f2a7b60416d7full,
    0x0849d1f6e0e10a5eull, 0x7654b590d064e22full, 0x16d1da9507df3af2ull, 0xf63aef1089ea30e4ull,
    0x9ade6673cc6c522bull, 0x4c75bc274e37087cull, 0xd35e12b49f51f27bull, 0x22ddf2ffcee481eaull,
    0x06007fb13c59a1f1ull, 0x8966a38c651ea4daull, 0x25242f018fc01ac6ull, 0xa73ec74fa31b717cull,
    0x7ee0abdd9797d3a2ull, 0x5c06ff7dc4ac1880ull, 0x8434e41042c28a7dull, 0x770a372d64327351ull,
    0xeed940dad9e9c06dull, 0x8977e93646524825ull, 0xa9897f0a62a51616ull, 0xa35d4250c53f2b3aull,
    0x4072542a94b9c33eull, 0x3154a7a62447e8abull, 0x686865712a1a245eull, 0x0fba67727d7b3b98ull,
    0x0634e2024536912full, 0xd9ff52a26cf9881aull, 0x9435dc0399f932daull, 0x18d39fc1af93e7f0ull,
    0x12f7147c1e7f46abull, 0xdedf66783eddb4a0ull, 0x6f75480614554798ull, 0xe40e95e8ef84bde2ull,
    0xbb41fe601fefb566ull, 0x5c3702e4c7bf19f1ull, 0x8c7d1d0d3d4a8ec5ull, 0xee779996ba62dccbull,
    0x80ccb15bf530844bull, 0xdf56e7dc4d57959cull, 0x9eb86a81fe90b68eull, 0x6a25741fa696fbd3ull,
    0x7009346385a45644ull, 0x8f4acc8c1520dd73ull, 0x75a59d61ae0f8464ull, 0xd9600a5f4b8b735cull,
    0x90ee70d4c2774058ull, 0x8a5f6c4b9a613341ull, 0xbae94e097390fd42ull, 0x653727708a8cae7cull,
    0x54a64593163b976full, 0x551fb9261926a565ull, 0x903b2aad4c38672aull, 0x83731d929aa1ff24ull,
    0x48311d2ec01f36edull, 0x53a5db5b92e313efull, 0xd3b8cb608aab8b70ull, 0x0f022cd022ea0cbfull,
    0xba7e97a12f21baa6ull, 0xb895acc1e36f3046ull, 0x88cb4b1adbf0f0c0ull, 0xa08f47edd89b430bull,
    0x4060ccb36efd6c18ull, 0x0dcf835fb6b9345eull, 0x38df4ac46ee5762bull, 0x986360357932dcbdull,
    0xbdeb8d63741fe7d9ull, 0x5d23cb0aedffc430ull, 0x6a5efe3a842100a4ull, 0x0d4cc01bf4e09a16ull,
    0x03dbef4217c97212ull, 0x3d8ded6c69c8b3acull, 0x53d290fa4dcee280ull, 0x00ce706478000997ull,
    0xbdf7b12c56756763ull, 0x06c99071719dc103ull, 0xd5897678e0df3feeull, 0x74429d9ac72f7146ull,
    0x9730ae769149cbbaull, 0x10ec1a636fd6612dull, 0x5dc5d9ea650fa766ull, 0xb360e068cac3adc2ull,
    0xf8df11cb5ce17a0cull, 0xa9292bbae2191df9ull, 0x3f3d169157da4aefull, 0x41d2dab33367f9dfull,
    0x95e671eefbd33caeull, 0xd5bedcacb64a8fa9ull, 0xe494760f1ba45656ull, 0x21b556b8b6ee2c5full,
    0xa1ed31d3d69b05ccull, 0x025819f971a39e83ull, 0xb9b3379a4081919aull, 0x550758640bf14a28ull,
    0x151feebb4e040f10ull, 0x423490df7adfc8b3ull, 0x8bae8d6e276c88e4ull, 0x526dd4f720811612ull,
    0xffd5fb93b0b2d28cull, 0xa9abb68f830215a8ull, 0x1751110c78d039feull, 0x103f09c76e08c0b5ull,
    0x2862583ce905324full, 0x939829751e945862ull, 0xfd2baf95439547eeull, 0x3f96e3e88a7e3ef0ull,
    0x3db34783d40d6e72ull, 0xb2fd49e41fa25861ull, 0x18d2c928bf0bc4a3ull, 0x2806ff0a63ce82b4ull,
    0x86748de3e14404e4ull, 0xa22ae3b5ff1a68ceull, 0x316214df224e0d71ull, 0xd8fb60f9bcdde6b5ull,
};
#define TF_PRIME32 0x9E3779B1u
#define TF_STRIPES 16 /* stripes per scramble block */

static inline uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static inline uint64_t fmix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

static void stripe_portable(uint64_t acc[8], const uint8_t *p, const uint64_t *key) {
    for (int i = 0; i < 8; i++) {
        const uint64_t d = rd64(p + 8 * i), x = d ^ key[i];
        acc[i ^ 1] += d; /* the data itself survives a zero product */
        acc[i] += (x & 0xffffffffu) * (x >> 32);
    }
}

static void blocks_portable(uint64_t acc[8], const uint8_t *p, size_t nstripes) {
    for (size_t s = 0; s < nstripes; s++) {
        stripe_portable(acc, p + 64 * s, tf_secret + 8 * (s % TF_STRIPES));
        if (s % TF_STRIPES == TF_STRIPES - 1)
            for (int i = 0; i < 8; i++) acc[i] = (acc[i] ^ (acc[i] >> 47) ^ tf_secret[128 + i]) * TF_PRIME32;
    }
}

#ifdef TF_X86
/* nstripes: a multiple of TF_STRIPES. */
__attribute__((target("avx2"))) static void blocks_avx2(uint64_t acc[8], const uint8_t *p, size_t nstripes) {
    __m256i a0 = _mm256_loadu_si256((const __m256i *)acc), a1 = _mm256_loadu_si256((const __m256i *)(acc + 4));
    const __m256i prime = _mm256_set1_epi64x(TF_PRIME32);
    const __m256i k0 = _mm256_loadu_si256((const __m256i *)(tf_secret + 128));
    const __m256i k1 = _mm256_loadu_si256((const __m256i *)(tf_secret + 132));
    for (size_t b = 0; b < nstripes; b += TF_STRIPES, p += 64 * TF_STRIPES) {
        for (int s = 0; s < TF_STRIPES; s++) {
            const uint64_t *key = tf_secret + 8 * s;
            const __m256i d0 = _mm256_loadu_si256((const __m256i *)(p + 64 * s));
            const __m256i d1 = _mm256_loadu_si256((const __m256i *)(p + 64 * s + 32));
            const __m256i x0 = _mm256_xor_si256(d0, _mm256_loadu_si256((const __m256i *)key));
            const __m256i x1 = _mm256_xor_si256(d1, _mm256_loadu_si256((const __m256i *)(key + 4)));
            a0 = _mm256_add_epi64(a0, _mm256_shuffle_epi32(d0, 0x4e));
            a1 = _mm256_add_epi64(a1, _mm256_shuffle_epi32(d1, 0x4e));
            a0 = _mm256_add_epi64(a0, _mm256_mul_epu32(x0, _mm256_srli_epi64(x0, 32)));
            a1 = _mm256_add_epi64(a1, _mm256_mul_epu32(x1, _mm256_srli_epi64(x1, 32)));
        }
        a0 = _mm256_xor_si256(_mm256_xor_si256(a0, _mm256_srli_epi64(a0, 47)), k0);
        a1 = _mm256_xor_si256(_mm256_xor_si256(a1, _mm256_srli_epi64(a1, 47)), k1);
        a0 = _mm256_add_epi64(_mm256_mul_epu32(a0, prime),
                              _mm256_slli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a0, 32), prime), 32));
        a1 = _mm256_add_epi64(_mm256_mul_epu32(a1, prime),
                              _mm256_slli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a1, 32), prime), 32));
    }
    _mm256_storeu_si256((__m256i *)acc, a0);
    _mm256_storeu_si256((__m256i *)(acc + 4), a1);
}

/* The same with all 8 lanes in one register. */
__attribute__((target("avx512f"))) static void blocks_avx512(uint64_t acc[8], const uint8_t *p, size_t nstripes) {
    __m512i a = _mm512_loadu_si512(acc);
    const __m512i prime = _mm512_set1_epi64(TF_PRIME32);
    const __m512i k = _mm512_loadu_si512(tf_secret + 128);
    for (size_t b = 0; b < nstripes; b += TF_STRIPES, p += 64 * TF_STRIPES) {
        for (int s = 0; s < TF_STRIPES; s++) {
            const __m512i d = _mm512_loadu_si512(p + 64 * s);
            const __m512i x = _mm512_xor_si512(d, _mm512_loadu_si512(tf_secret + 8 * s));
            a = _mm512_add_epi64(a, _mm512_shuffle_epi32(d, (_MM_PERM_ENUM)0x4e));
            a = _mm512_add_epi64(a, _mm512_mul_epu32(x, _mm512_srli_epi64(x, 32)));
        }
        a = _mm512_xor_si512(_mm512_xor_si512(a, _mm512_srli_epi64(a, 47)), k);
        a = _mm512_add_epi64(_mm512_mul_epu32(a, prime),
                             _mm512_slli_epi64(_mm512_mul_epu32(_mm512_srli_epi64(a, 32), prime), 32));
    }
    _mm512_storeu_si512(acc, a);
}
#endif

/* The best body this CPU runs: 2 AVX-512F, 1 AVX2, 0 portable (PKV_ISA=scalar|avx2 caps it). */
static int checksum_isa(void) {
    static int state = -1; /* racing first calls store the same value */
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (s < 0) {
        s = 0;
#ifdef TF_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2")) s = 1;
        if (s == 1 && __builtin_cpu_supports("avx512f")) s = 2;
        const char *env = getenv("PKV_ISA");
        if (env && strcmp(env, "scalar") == 0) s = 0;
        if (env && strcmp(env, "avx2") == 0 && s > 1) s = 1;
#endif
        __atomic_store_n(&state, s, __ATOMIC_RELAXED);
    }
    return s;
}

void pkv__cksum_init(pkv__cksum *s, uint64_t seed, int isa) {
    for (int i = 0; i < 8; i++) s->acc[i] = tf_secret[i] ^ seed;
    s->seed = seed;
    s->done = 0;
    const int best = checksum_isa();
    s->isa = isa < 0 || isa > best ? best : isa;
}

void pkv__cksum_update(pkv__cksum *s, const void *p, size_t avail) {
    const size_t blk = 64 * TF_STRIPES;
    if (avail < s->done + blk) return;
    const uint8_t *b = (const uint8_t *)p + s->done;
    const size_t whole = (avail - s->done) / blk * TF_STRIPES; /* stripes */
#ifdef TF_X86
    if (s->isa == 2) blocks_avx512(s->acc, b, whole);
    else if (s->isa == 1) blocks_avx2(s->acc, b, whole);
    else blocks_portable(s->acc, b, whole);
#else
    blocks_portable(s->acc, b, whole);
#endif
    s->done += whole * 64;
}

uint64_t pkv__cksum_final(pkv__cksum *s, const void *p, size_t n) {
    pkv__cksum_update(s, p, n);
    const uint8_t *b = p;
    /* Whole scramble blocks are done; the stripes after them, then the rest. */
    const size_t full = n / 64;
    for (size_t st = s->done / 64; st < full; st++)
        stripe_portable(s->acc, b + 64 * st, tf_secret + 8 * (st % TF_STRIPES));
    if (n % 64) {
        uint8_t last[64] = {0};
        memcpy(last, b + 64 * full, n % 64);
        stripe_portable(s->acc, last, tf_secret + 8 * (full % TF_STRIPES));
    }
    uint64_t h = fmix64(s->seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ull));
    for (int i = 0; i < 8; i++) h = fmix64(h ^ s->acc[i]) + tf_secret[i + 8];
    return h;
}

uint64_t pkv__tier_checksum(const void *p, size_t n, uint64_t seed, int isa) {
    pkv__cksum s;
    pkv__cksum_init(&s, seed, isa);
    return pkv__cksum_final(&s, p, n);
}

/* ---- the store ---- */
enum { SLOT_FREE = 0, SLOT_LIVE = 1, SLOT_STALE = 2, SLOT_BAD = 3 };

typedef struct slot_meta {
    uint8_t key[16];
    uint64_t blob_check, gen;
    uint32_t len;
    uint8_t state; /* SLOT_*; STALE: its header may still be valid on disk, BAD: unreadable */
} slot_meta;

typedef struct tf_slab {
    int fd;
    int32_t gone; /* the file was deleted while open: no more writes into it */
} tf_slab;

typedef struct tier_file {
    char *dir;
    int dirfd;
    uint32_t flags;
    size_t blob_size;
    uint64_t hdr_area, stride;
    int32_t nslots, per_slab, nslabs;
    tf_slab *slabs;
    slot_meta *meta;  /* [nslots] */
    int32_t *map;     /* open addressing, linear probing: slot or -1 */
    uint32_t map_mask;
    int32_t *free_stack, free_top;
    int32_t *stale, nstale; /* slots whose invalidation failed: retried */
    int32_t live;
    uint64_t next_gen, dropped;
    int32_t opened;   /* open completed: close may mark the directory clean */
    int32_t verified; /* the open read and checked every blob (no CLEAN marker) */
    int32_t trust_gets; /* the caller checks what get returns: skip the blob checksum there */
    uint8_t *hdr_buf; /* hdr_area bytes: a slot header followed by zeros */
    pkv_detail err;
    /* Held by every call but scan (which runs when a cache adds the tier, before
     * any I/O thread exists); get drops it while it reads, so that gets from
     * several threads read in parallel (PKV_BACKEND_CONCURRENT_GET). */
    pthread_mutex_t mu;
    int32_t mu_ok;
} tier_file;

static inline int32_t slot_slab(const tier_file *tf, int32_t s) { return s / tf->per_slab; }
static inline uint64_t slot_off(const tier_file *tf, int32_t s) {
    return PKV_TIER_SLAB_HDR + (uint64_t)(s % tf->per_slab) * tf->stride;
}
static void slab_name(const tier_file *tf, int32_t i, char *buf, size_t n) {
    snprintf(buf, n, "%s/slab-%04d.pkv", tf->dir, (int)i);
}

/* Bytes read (fewer only at the end of the file) or -errno. */
static int64_t tf_pread(int fd, void *p, size_t n, uint64_t off) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = pkv__tier_file_io.pread(fd, (uint8_t *)p + done, n - done, (off_t)(off + done));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -(errno ? errno : EIO);
        if (r == 0) break;
        done += (size_t)r;
    }
    return (int64_t)done;
}
/* 0 or -errno. */
static int tf_pwrite(int fd, const void *p, size_t n, uint64_t off) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = pkv__tier_file_io.pwrite(fd, (const uint8_t *)p + done, n - done, (off_t)(off + done));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -(errno ? errno : EIO);
        if (w == 0) return -EIO;
        done += (size_t)w;
    }
    return 0;
}
static int tf_sync(int fd) {
    if (pkv__tier_file_io.fsync(fd) == 0) return 0;
    return -(errno ? errno : EIO);
}
/* A full disk or quota is a capacity problem; the rest is I/O. */
static int errno_status(int e) { return (e == ENOSPC || e == EDQUOT || e == EFBIG) ? PKV_ERR_CAPACITY : PKV_ERR_IO; }

static int tf_fail_errno(tier_file *tf, int neg_errno, const char *what, int32_t slot) {
    const int e = -neg_errno;
    return pkv__fail(&tf->err, errno_status(e), "file tier %s: %s slot %d (slab-%04d.pkv): %s", tf->dir, what,
                     (int)slot, (int)slot_slab(tf, slot), strerror(e));
}

/* ---- key -> slot map ---- */
static inline uint32_t key_hash(const uint8_t key[16]) {
    const uint64_t h = (rd64(key) ^ (rd64(key + 8) * 0x9e3779b97f4a7c15ull)) * 0xbf58476d1ce4e5b9ull;
    return (uint32_t)(h >> 32);
}
/* The map position holding key, or -1. */
static int64_t map_find(const tier_file *tf, const uint8_t key[16]) {
    for (uint32_t i = key_hash(key) & tf->map_mask;; i = (i + 1) & tf->map_mask) {
        const int32_t s = tf->map[i];
        if (s < 0) return -1;
        if (memcmp(tf->meta[s].key, key, 16) == 0) return i;
    }
}
static void map_insert(tier_file *tf, int32_t slot) {
    uint32_t i = key_hash(tf->meta[slot].key) & tf->map_mask;
    while (tf->map[i] >= 0) i = (i + 1) & tf->map_mask;
    tf->map[i] = slot;
}
/* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
static void map_remove(tier_file *tf, uint32_t i) {
    for (uint32_t j = (i + 1) & tf->map_mask;; j = (j + 1) & tf->map_mask) {
        const int32_t s = tf->map[j];
        if (s < 0) break;
        const uint32_t home = key_hash(tf->meta[s].key) & tf->map_mask;
        /* s may fill hole i when i lies cyclically in [home, j). */
        if (((j - home) & tf->map_mask) >= ((j - i) & tf->map_mask)) {
            tf->map[i] = s;
            i = j;
        }
    }
    tf->map[i] = -1;
}

/* ---- slots ---- */
static void make_slot_hdr(const tier_file *tf, int32_t slot, const slot_meta *m, slot_hdr *h) {
    memset(h, 0, sizeof *h);
    h->magic = SLOT_MAGIC;
    h->version = TF_VERSION;
    h->hdr_size = SLOT_HDR;
    h->blob_size = (uint32_t)tf->blob_size;
    h->len = m->len;
    h->gen = m->gen;
    memcpy(h->key, m->key, 16);
    h->blob_check = m->blob_check;
    h->slab = (uint32_t)slot_slab(tf, slot);
    h->index = (uint32_t)(slot % tf->per_slab);
    h->check = pkv__tier_checksum(h, offsetof(slot_hdr, check), HDR_SEED, -1);
}

/* Zeroes slot's header on disk (and syncs with FSYNC): 0 or -errno. */
static int zero_slot_hdr(tier_file *tf, int32_t slot) {
    static const uint8_t zeros[SLOT_HDR];
    const int fd = tf->slabs[slot_slab(tf, slot)].fd;
    int e = tf_pwrite(fd, zeros, SLOT_HDR, slot_off(tf, slot));
    if (e == 0 && (tf->flags & PKV_FILE_TIER_FSYNC)) e = tf_sync(fd);
    return e;
}

static void slot_free(tier_file *tf, int32_t slot) {
    tf->meta[slot].state = SLOT_FREE;
    tf->free_stack[tf->free_top++] = slot;
}
/* A slot whose on-disk header should stop being valid: freed once zeroed, else
 * kept off the free list and retried (its old header could win at restart). */
static void slot_retire(tier_file *tf, int32_t slot) {
    if (zero_slot_hdr(tf, slot) == 0) {
        slot_free(tf, slot);
    } else {
        tf->meta[slot].state = SLOT_STALE;
        tf->stale[tf->nstale++] = slot;
    }
}
/* Retries the stale slots; 0 when none is left. */
static int retry_stale(tier_file *tf) {
    while (tf->nstale > 0) {
        const int32_t s = tf->stale[tf->nstale - 1];
        if (zero_slot_hdr(tf, s) != 0) return -1;
        tf->nstale--;
        slot_free(tf, s);
    }
    return 0;
}

/* The key's live slot leaves the map (mapped at map position pos). */
static void drop_live(tier_file *tf, uint32_t pos) {
    const int32_t slot = tf->map[pos];
    map_remove(tf, pos);
    tf->live--;
    tf->dropped++;
    slot_retire(tf, slot);
}

/* A free slot in a slab that still exists, or -1. */
static int32_t pop_free(tier_file *tf) {
    while (tf->free_top > 0) {
        const int32_t s = tf->free_stack[--tf->free_top];
        if (!tf->slabs[slot_slab(tf, s)].gone) return s;
        tf->meta[s].state = SLOT_BAD;
    }
    return -1;
}

/* ---- backend calls ---- */
static int tf_put_body(tier_file *tf, const uint8_t key[16], const void *blob, size_t len) {
    tf->err.text[0] = 0;
    if (len > tf->blob_size)
        return pkv__fail(&tf->err, PKV_ERR_INVALID, "file tier: blob of %zu bytes, slots hold %zu", len,
                         tf->blob_size);
    (void)retry_stale(tf);
    const int64_t pos = map_find(tf, key);
    const int32_t slot = pop_free(tf);
    if (slot < 0)
        return pkv__fail(&tf->err, PKV_ERR_CAPACITY, "file tier %s: all %d slots are in use", tf->dir,
                         (int)tf->nslots);
    tf_slab *sb = &tf->slabs[slot_slab(tf, slot)];
    struct stat st;
    if (fstat(sb->fd, &st) == 0 && st.st_nlink == 0) {
        sb->gone = 1;
        tf->meta[slot].state = SLOT_BAD;
        return pkv__fail(&tf->err, PKV_ERR_IO,
                         "file tier %s: slab-%04d.pkv was deleted while open; its blobs are served until "
                         "close, new ones go to the other slabs",
                         tf->dir, (int)slot_slab(tf, slot));
    }
    slot_meta m;
    memset(&m, 0, sizeof m);
    memcpy(m.key, key, 16);
    m.len = (uint32_t)len;
    m.gen = tf->next_gen++;
    m.blob_check = pkv__tier_checksum(blob, len, BLOB_SEED, -1);
    m.state = SLOT_LIVE;
    const uint64_t off = slot_off(tf, slot);
    int e = tf_pwrite(sb->fd, blob, len, off + tf->hdr_area);
    if (e) {
        slot_free(tf, slot); /* its header is still zero */
        return tf_fail_errno(tf, e, "writing the blob into", slot);
    }
    make_slot_hdr(tf, slot, &m, (slot_hdr *)tf->hdr_buf);
    e = tf_pwrite(sb->fd, tf->hdr_buf, tf->hdr_area, off);
    if (!e && (tf->flags & PKV_FILE_TIER_FSYNC)) e = tf_sync(sb->fd);
    if (e) {
        const int rc = tf_fail_errno(tf, e, "writing the header of", slot);
        slot_retire(tf, slot);
        return rc;
    }
    tf->meta[slot] = m;
    if (pos >= 0) {
        const int32_t old = tf->map[pos];
        tf->map[pos] = slot;
        slot_retire(tf, old); /* a failure here is harmless: the newer generation wins */
    } else {
        map_insert(tf, slot);
        tf->live++;
    }
    return PKV_OK;
}

static int tf_put(void *ctx, const uint8_t key[16], const void *blob, size_t len) {
    tier_file *tf = ctx;
    RETURN_IF(!tf || !key || (!blob && len), PKV_ERR_NULL);
    pthread_mutex_lock(&tf->mu);
    const int st = tf_put_body(tf, key, blob, len);
    pthread_mutex_unlock(&tf->mu);
    return st;
}

/* Reads the slot of key without holding the store: what it read is checked
 * against the slot's header and checksum, so a put or del that reuses the
 * slot meanwhile gives a miss, never another blob; the slot is dropped only
 * if it still holds what was read. */
static int tf_get(void *ctx, const uint8_t key[16], void *buf, size_t cap, size_t *len) {
    tier_file *tf = ctx;
    RETURN_IF(!tf || !key || !len || (!buf && cap), PKV_ERR_NULL);
    pthread_mutex_lock(&tf->mu);
    tf->err.text[0] = 0;
    const int64_t pos = map_find(tf, key);
    if (pos < 0) {
        pthread_mutex_unlock(&tf->mu);
        return PKV_ERR_NOT_FOUND;
    }
    const int32_t slot = tf->map[pos];
    const slot_meta m = tf->meta[slot];
    *len = m.len;
    if (cap < m.len) {
        const int st = pkv__fail(&tf->err, PKV_ERR_BUFFER, "file tier: blob of %u bytes, buffer of %zu",
                                 (unsigned)m.len, cap);
        pthread_mutex_unlock(&tf->mu);
        return st;
    }
    const int fd = tf->slabs[slot_slab(tf, slot)].fd;
    const uint64_t off = slot_off(tf, slot);
    const int trust = tf->trust_gets;
    slot_hdr want, have;
    make_slot_hdr(tf, slot, &m, &want);
    pthread_mutex_unlock(&tf->mu);
    int64_t r = tf_pread(fd, &have, SLOT_HDR, off);
    int64_t rb = r == SLOT_HDR ? tf_pread(fd, buf, m.len, off + tf->hdr_area) : 0;
    if (r < 0 || rb < 0) {
        *len = 0;
        pthread_mutex_lock(&tf->mu);
        const int st = tf_fail_errno(tf, r < 0 ? (int)r : (int)rb, "reading", slot);
        pthread_mutex_unlock(&tf->mu);
        return st;
    }
    if (r != SLOT_HDR || rb != (int64_t)m.len || memcmp(&want, &have, SLOT_HDR) != 0 ||
        (!trust && pkv__tier_checksum(buf, m.len, BLOB_SEED, -1) != m.blob_check)) {
        /* Truncated, overwritten or corrupted behind our back: a miss, and the
         * caller's buffer does not keep the wrong bytes. */
        if (m.len) memset(buf, 0, m.len);
        *len = 0;
        pthread_mutex_lock(&tf->mu);
        const int64_t now = map_find(tf, key);
        if (now >= 0 && tf->map[now] == slot && tf->meta[slot].gen == m.gen) {
            pkv__fail(&tf->err, PKV_ERR_NOT_FOUND, "file tier %s: slot %d failed verification; dropped", tf->dir,
                      (int)slot);
            drop_live(tf, (uint32_t)now);
        }
        pthread_mutex_unlock(&tf->mu);
        return PKV_ERR_NOT_FOUND;
    }
    return PKV_OK;
}

static int tf_exists(void *ctx, const uint8_t key[16]) {
    tier_file *tf = ctx;
    RETURN_IF(!tf || !key, PKV_ERR_NULL);
    pthread_mutex_lock(&tf->mu);
    const int r = map_find(tf, key) >= 0;
    pthread_mutex_unlock(&tf->mu);
    return r;
}

static int tf_del_body(tier_file *tf, const uint8_t key[16]);
static int tf_del(void *ctx, const uint8_t key[16]) {
    tier_file *tf = ctx;
    RETURN_IF(!tf || !key, PKV_ERR_NULL);
    pthread_mutex_lock(&tf->mu);
    const int st = tf_del_body(tf, key);
    pthread_mutex_unlock(&tf->mu);
    return st;
}

static int tf_del_body(tier_file *tf, const uint8_t key[16]) {
    tf->err.text[0] = 0;
    const int64_t pos = map_find(tf, key);
    if (pos < 0) return PKV_ERR_NOT_FOUND;
    /* An older copy of this key whose invalidation failed would come back at
     * restart: it goes first. */
    if (retry_stale(tf) != 0)
        for (int32_t i = 0; i < tf->nstale; i++)
            if (memcmp(tf->meta[tf->stale[i]].key, key, 16) == 0)
                return pkv__fail(&tf->err, PKV_ERR_IO, "file tier %s: an older copy of the key cannot be erased",
                                 tf->dir);
    const int32_t slot = tf->map[pos];
    const int e = zero_slot_hdr(tf, slot);
    if (e) {
        /* The header may be half erased, or erased but not durable: put it
         * back so the blob stays stored; failing that, the key is gone (its
         * slot is retried as stale) and the store still agrees with itself. */
        const int rc = pkv__fail(&tf->err, PKV_ERR_IO, "file tier %s: erasing slot %d (slab-%04d.pkv): %s",
                                 tf->dir, (int)slot, (int)slot_slab(tf, slot), strerror(-e));
        slot_hdr h, have;
        make_slot_hdr(tf, slot, &tf->meta[slot], &h);
        const int fd = tf->slabs[slot_slab(tf, slot)].fd;
        int e2 = tf_pread(fd, &have, SLOT_HDR, slot_off(tf, slot)) == SLOT_HDR && memcmp(&h, &have, SLOT_HDR) == 0
                     ? 0 : tf_pwrite(fd, &h, SLOT_HDR, slot_off(tf, slot));
        if (!e2 && (tf->flags & PKV_FILE_TIER_FSYNC)) e2 = tf_sync(fd);
        if (e2) {
            map_remove(tf, (uint32_t)pos);
            tf->live--;
            tf->meta[slot].state = SLOT_STALE;
            tf->stale[tf->nstale++] = slot;
        }
        return rc;
    }
    map_remove(tf, (uint32_t)pos);
    tf->live--;
    slot_free(tf, slot);
    return PKV_OK;
}

static int tf_scan(void *ctx, int (*fn)(void *arg, const uint8_t key[16], size_t len), void *arg) {
    tier_file *tf = ctx;
    RETURN_IF(!tf || !fn, PKV_ERR_NULL);
    /* By slot, not by map position: fn may delete the key it is handed. */
    for (int32_t s = 0; s < tf->nslots; s++)
        if (tf->meta[s].state == SLOT_LIVE && fn(arg, tf->meta[s].key, tf->meta[s].len)) break;
    return PKV_OK;
}

/* Syncs every slab and, when all of it is on disk, leaves the CLEAN marker
 * that lets the next open skip reading every blob. */
static void mark_clean(tier_file *tf) {
    if (retry_stale(tf) != 0) return;
    for (int32_t i = 0; i < tf->nslabs; i++)
        if (tf->slabs[i].gone || tf_sync(tf->slabs[i].fd) != 0) return;
    const int fd = openat(tf->dirfd, CLEAN_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return;
    const int ok = pkv__tier_file_io.fsync(fd) == 0;
    close(fd);
    if (!ok || pkv__tier_file_io.fsync(tf->dirfd) != 0) unlinkat(tf->dirfd, CLEAN_NAME, 0);
}

static void tf_close(void *ctx) {
    tier_file *tf = ctx;
    if (!tf) return;
    if (tf->opened) mark_clean(tf);
    if (tf->slabs)
        for (int32_t i = 0; i < tf->nslabs; i++)
            if (tf->slabs[i].fd >= 0) close(tf->slabs[i].fd);
    if (tf->dirfd >= 0) close(tf->dirfd); /* releases the lock */
    free(tf->dir);
    free(tf->slabs);
    free(tf->meta);
    free(tf->map);
    free(tf->free_stack);
    free(tf->stale);
    free(tf->hdr_buf);
    if (tf->mu_ok) pthread_mutex_destroy(&tf->mu);
    free(tf);
}

void pkv__tier_file_trust_gets(void *ctx, int on) { ((tier_file *)ctx)->trust_gets = on != 0; }

int pkv__tier_file_is(const pkv_tier_backend *be) { return be && be->get == tf_get; }

const char *pkv__tier_file_last_error(void *ctx) { return ctx ? ((tier_file *)ctx)->err.text : ""; }

void pkv__tier_file_info(void *ctx, pkv__tier_file_info_t *out) {
    const tier_file *tf = ctx;
    memset(out, 0, sizeof *out);
    out->slots = tf->nslots;
    out->slabs = tf->nslabs;
    out->slots_per_slab = tf->per_slab;
    out->live = tf->live;
    out->free = tf->free_top;
    out->stale = tf->nstale;
    out->stride = tf->stride;
    out->hdr_area = tf->hdr_area;
    out->dropped = tf->dropped;
    out->verified = tf->verified;
}

/* ---- open ---- */
static void make_slab_hdr(const tier_file *tf, int32_t i, int32_t nslots, slab_hdr *h) {
    memset(h, 0, sizeof *h);
    memcpy(h->magic, SLAB_MAGIC, 8);
    h->version = TF_VERSION;
    h->slot_hdr = SLOT_HDR;
    h->blob_size = tf->blob_size;
    h->stride = tf->stride;
    h->slab = (uint32_t)i;
    h->nslots = (uint32_t)nslots;
    h->check = pkv__tier_checksum(h, offsetof(slab_hdr, check), HDR_SEED, -1);
}

/* Checks slot s's header h (read from disk) and its blob (read into scratch);
 * 1 when it is a complete blob of this tier. */
static int slot_valid(tier_file *tf, int32_t s, const slot_hdr *h, int verify, uint8_t *scratch, int *io_err) {
    if (h->magic != SLOT_MAGIC || h->version != TF_VERSION || h->hdr_size != SLOT_HDR ||
        h->blob_size != tf->blob_size || h->len > tf->blob_size || h->slab != (uint32_t)slot_slab(tf, s) ||
        h->index != (uint32_t)(s % tf->per_slab) ||
        h->check != pkv__tier_checksum(h, offsetof(slot_hdr, check), HDR_SEED, -1))
        return 0;
    if (!verify) return 1; /* a clean close: the headers are enough */
    const int64_t r = tf_pread(tf->slabs[slot_slab(tf, s)].fd, scratch, h->len, slot_off(tf, s) + tf->hdr_area);
    if (r < 0) *io_err = 1;
    return r == (int64_t)h->len && pkv__tier_checksum(scratch, h->len, BLOB_SEED, -1) == h->blob_check;
}

/* Finds the valid slots of slab i (its first `have` slots exist on disk);
 * verify: read and check every blob too. */
static int scan_slab(tier_file *tf, int32_t i, int32_t have, int verify, uint8_t *scratch, pkv_detail *d) {
    static const uint8_t zeros[SLOT_HDR];
    const int32_t first = i * tf->per_slab;
    const int32_t count = (i == tf->nslabs - 1) ? tf->nslots - first : tf->per_slab;
    for (int32_t s = first; s < first + count; s++) {
        slot_hdr h;
        if (s - first >= have) {
            tf->meta[s].state = SLOT_FREE;
            continue;
        }
        const int64_t r = tf_pread(tf->slabs[i].fd, &h, SLOT_HDR, slot_off(tf, s));
        if (r < 0) {
            tf->meta[s].state = SLOT_BAD; /* unreadable: never used, the rest serves */
            continue;
        }
        if (r < SLOT_HDR) memset((uint8_t *)&h + r, 0, SLOT_HDR - (size_t)r);
        if (memcmp(&h, zeros, SLOT_HDR) == 0) {
            tf->meta[s].state = SLOT_FREE;
            continue;
        }
        int io_err = 0;
        if (!slot_valid(tf, s, &h, verify, scratch, &io_err)) {
            if (io_err) {
                tf->meta[s].state = SLOT_BAD;
                continue;
            }
            tf->dropped++;
            const int e = zero_slot_hdr(tf, s);
            if (e) return pkv__fail(d, PKV_ERR_IO, "file tier %s: erasing invalid slot %d: %s", tf->dir, (int)s,
                                    strerror(-e));
            tf->meta[s].state = SLOT_FREE;
            continue;
        }
        slot_meta *m = &tf->meta[s];
        memcpy(m->key, h.key, 16);
        m->blob_check = h.blob_check;
        m->gen = h.gen;
        m->len = h.len;
        m->state = SLOT_LIVE;
        if (h.gen >= tf->next_gen) tf->next_gen = h.gen + 1;
        const int64_t pos = map_find(tf, h.key);
        if (pos < 0) {
            map_insert(tf, s);
            tf->live++;
            continue;
        }
        /* Two copies of a key (a crash between writing the new one and erasing
         * the old): the newer generation wins. */
        const int32_t other = tf->map[pos];
        const int32_t loser = tf->meta[other].gen > m->gen ? s : other;
        if (loser == other) tf->map[pos] = s;
        const int e = zero_slot_hdr(tf, loser);
        if (e) return pkv__fail(d, PKV_ERR_IO, "file tier %s: erasing an older copy in slot %d: %s", tf->dir,
                                (int)loser, strerror(-e));
        tf->meta[loser].state = SLOT_FREE;
    }
    return PKV_OK;
}

/* Opens (creating when absent) slab i and finds its blobs. */
static int open_slab(tier_file *tf, int32_t i, uint8_t *scratch, pkv_detail *d) {
    char path[4096 + 32];
    slab_name(tf, i, path, sizeof path);
    const int32_t count = (i == tf->nslabs - 1) ? tf->nslots - i * tf->per_slab : tf->per_slab;
    const uint64_t size = PKV_TIER_SLAB_HDR + (uint64_t)count * tf->stride;
    const int fd = pkv__tier_file_io.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) return pkv__fail(d, PKV_ERR_IO, "file tier: cannot open %s: %s", path, strerror(errno));
    tf->slabs[i].fd = fd;
    struct stat st;
    if (fstat(fd, &st) != 0) return pkv__fail(d, PKV_ERR_IO, "file tier: %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return pkv__fail(d, PKV_ERR_IO, "file tier: %s is not a regular file", path);
    slab_hdr h;
    memset(&h, 0, sizeof h);
    int64_t r = tf_pread(fd, &h, sizeof h, 0);
    if (r < 0) return pkv__fail(d, PKV_ERR_IO, "file tier: reading %s: %s", path, strerror((int)-r));
    /* Ours when its first bytes are (a prefix of) our magic; an empty file is
     * one whose creation was cut short. Anything else is not ours to touch. */
    const size_t cmp = r < 8 ? (size_t)r : 8;
    if (memcmp(h.magic, SLAB_MAGIC, cmp) != 0)
        return pkv__fail(d, PKV_ERR_FORMAT,
                         "file tier: %s is not a pagedkv slab file (foreign or damaged beginning); move it away "
                         "or use another directory",
                         path);
    int32_t have = 0; /* slots on disk that may hold blobs of ours */
    const int hdr_ok = r == (int64_t)sizeof h && h.check == pkv__tier_checksum(&h, offsetof(slab_hdr, check),
                                                                               HDR_SEED, -1);
    if (hdr_ok && (h.version != TF_VERSION || h.slot_hdr != SLOT_HDR))
        return pkv__fail(d, PKV_ERR_FORMAT, "file tier: %s has format version %u, this library writes %u", path,
                         (unsigned)h.version, (unsigned)TF_VERSION);
    if (hdr_ok && (h.blob_size != tf->blob_size || h.stride != tf->stride || h.slab != (uint32_t)i))
        return pkv__fail(d, PKV_ERR_FORMAT,
                         "file tier: %s holds blobs of %llu bytes (slab %u), this tier %zu (slab %d): another "
                         "tier's directory",
                         path, (unsigned long long)h.blob_size, (unsigned)h.slab, tf->blob_size, (int)i);
    if ((uint64_t)st.st_size > PKV_TIER_SLAB_HDR) {
        /* A slot cut by the end of the file is scanned too: it fails verification and is erased. */
        uint64_t on_disk = ((uint64_t)st.st_size - PKV_TIER_SLAB_HDR + tf->stride - 1) / tf->stride;
        if (hdr_ok && on_disk > h.nslots) on_disk = h.nslots;
        have = on_disk < (uint64_t)count ? (int32_t)on_disk : count;
        /* A damaged slab header: the slot headers still vouch for themselves. */
    }
    /* A slab not as its last close left it is read in full even after a clean close. */
    const int verify = tf->verified || !hdr_ok || h.nslots != (uint32_t)count || (uint64_t)st.st_size != size;
    if (!hdr_ok || h.nslots != (uint32_t)count || (uint64_t)st.st_size != size) {
        slab_hdr nh;
        make_slab_hdr(tf, i, count, &nh);
        if (pkv__tier_file_io.ftruncate(fd, (off_t)size) != 0)
            return pkv__fail(d, PKV_ERR_IO, "file tier: sizing %s to %llu bytes: %s", path,
                             (unsigned long long)size, strerror(errno));
        int e = tf_pwrite(fd, &nh, sizeof nh, 0);
        if (!e) e = tf_sync(fd);
        if (e) return pkv__fail(d, PKV_ERR_IO, "file tier: writing the header of %s: %s", path, strerror(-e));
    }
    return scan_slab(tf, i, have, verify, scratch, d);
}

/* Slabs of ours past the capacity (it shrank) go: their blobs could come back,
 * outdated, when it grows again. A file that is not ours stops the sweep. */
static void remove_extra_slabs(tier_file *tf) {
    char path[4096 + 32], magic[8];
    for (int32_t i = tf->nslabs;; i++) {
        slab_name(tf, i, path, sizeof path);
        const int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return;
        const int ours = pread(fd, magic, 8, 0) == 8 && memcmp(magic, SLAB_MAGIC, 8) == 0;
        close(fd);
        if (!ours || unlink(path) != 0) return;
    }
}

static int tier_open(tier_file *tf, const char *dir, uint64_t capacity, pkv_detail *d) {
    tf->dir = strdup(dir);
    RETURN_IF(!tf->dir, PKV_ERR_NOMEM);
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT || mkdir(dir, 0777) != 0)
            return pkv__fail(d, PKV_ERR_IO, "file tier: cannot create directory %s: %s", dir, strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        return pkv__fail(d, PKV_ERR_IO, "file tier: %s is not a directory", dir);
    }
    tf->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (tf->dirfd < 0) return pkv__fail(d, PKV_ERR_IO, "file tier: cannot open %s: %s", dir, strerror(errno));
    if (flock(tf->dirfd, LOCK_EX | LOCK_NB) != 0)
        return pkv__fail(d, PKV_ERR_IO, "file tier: %s is in use by another tier (%s)", dir,
                         errno == EWOULDBLOCK ? "locked" : strerror(errno));
    /* The marker goes (durably) before anything is written: a crash from
     * here on must make the next open verify everything. */
    tf->verified = 1;
    if (unlinkat(tf->dirfd, CLEAN_NAME, 0) == 0 && pkv__tier_file_io.fsync(tf->dirfd) == 0) tf->verified = 0;

    const int64_t nslots = (int64_t)(capacity / tf->stride);
    tf->nslots = (int32_t)nslots;
    int64_t per = (int64_t)(SLAB_TARGET_BYTES / tf->stride);
    if (per < (nslots + MAX_SLABS - 1) / MAX_SLABS) per = (nslots + MAX_SLABS - 1) / MAX_SLABS;
    if (per < 1) per = 1;
    if (per > nslots) per = nslots;
    tf->per_slab = (int32_t)per;
    tf->nslabs = (int32_t)((nslots + per - 1) / per);
    uint32_t map_size = 16;
    while (map_size < 2 * (uint64_t)nslots) map_size *= 2;
    tf->map_mask = map_size - 1;
    tf->slabs = malloc(sizeof *tf->slabs * (size_t)tf->nslabs);
    tf->meta = calloc((size_t)nslots, sizeof *tf->meta);
    tf->map = malloc(sizeof *tf->map * map_size);
    tf->free_stack = malloc(sizeof *tf->free_stack * (size_t)nslots);
    tf->stale = malloc(sizeof *tf->stale * (size_t)nslots);
    tf->hdr_buf = calloc(1, tf->hdr_area);
    uint8_t *scratch = malloc(tf->blob_size);
    if (!tf->slabs || !tf->meta || !tf->map || !tf->free_stack || !tf->stale || !tf->hdr_buf || !scratch) {
        free(scratch);
        return pkv__fail(d, PKV_ERR_NOMEM, "file tier: no memory for %lld slots", (long long)nslots);
    }
    memset(tf->map, 0xff, sizeof *tf->map * map_size);
    for (int32_t i = 0; i < tf->nslabs; i++) tf->slabs[i] = (tf_slab){-1, 0};
    tf->next_gen = 1;
    int rc = PKV_OK;
    for (int32_t i = 0; i < tf->nslabs && rc == PKV_OK; i++) rc = open_slab(tf, i, scratch, d);
    free(scratch);
    FORWARD_IF_ERROR(rc);
    remove_extra_slabs(tf);
    if (tf->flags & PKV_FILE_TIER_FSYNC) (void)pkv__tier_file_io.fsync(tf->dirfd); /* new slab names are durable */
    for (int32_t s = tf->nslots - 1; s >= 0; s--)
        if (tf->meta[s].state == SLOT_FREE) tf->free_stack[tf->free_top++] = s;
    tf->opened = 1;
    return PKV_OK;
}

int pkv_tier_file_open(const char *dir, uint64_t capacity_bytes, size_t blob_size, uint32_t flags,
                       pkv_tier_backend *out, char *detail) {
    pkv_detail d;
    d.text[0] = 0;
    int rc = PKV_OK;
    if (!dir || !out) {
        rc = pkv__fail(&d, PKV_ERR_NULL, "file tier: %s is NULL", dir ? "out" : "dir");
    } else if (!dir[0] || strlen(dir) > 4000) {
        rc = pkv__fail(&d, PKV_ERR_INVALID, "file tier: directory name empty or too long");
    } else if (blob_size == 0 || blob_size > MAX_BLOB) {
        rc = pkv__fail(&d, PKV_ERR_INVALID, "file tier: blob_size %zu outside [1, %zu]", blob_size, MAX_BLOB);
    } else if (flags & ~(uint32_t)PKV_FILE_TIER_FSYNC) {
        rc = pkv__fail(&d, PKV_ERR_INVALID, "file tier: unknown flags 0x%x", (unsigned)flags);
    }
    tier_file *tf = NULL;
    if (rc == PKV_OK) {
        /* Blobs of 16 KiB and more start on a page of their own. */
        const uint64_t area = blob_size >= 16384 ? 4096 : SLOT_HDR;
        const uint64_t stride = (area + blob_size + area - 1) / area * area;
        if (capacity_bytes < stride || capacity_bytes / stride > (uint64_t)MAX_SLOTS) {
            rc = pkv__fail(&d, PKV_ERR_INVALID, "file tier: capacity %llu bytes holds %llu slots of %llu bytes "
                            "(1 to %lld allowed)", (unsigned long long)capacity_bytes,
                            (unsigned long long)(capacity_bytes / stride), (unsigned long long)stride,
                            (long long)MAX_SLOTS);
        } else if (!(tf = calloc(1, sizeof *tf))) {
            rc = pkv__fail(&d, PKV_ERR_NOMEM, "file tier: no memory");
        } else if (pthread_mutex_init(&tf->mu, NULL) != 0) {
            free(tf);
            tf = NULL;
            rc = pkv__fail(&d, PKV_ERR_NOMEM, "file tier: no mutex");
        } else {
            tf->mu_ok = 1;
            tf->dirfd = -1;
            tf->flags = flags;
            tf->blob_size = blob_size;
            tf->hdr_area = area;
            tf->stride = stride;
            rc = tier_open(tf, dir, capacity_bytes, &d);
            if (rc != PKV_OK && !d.text[0]) pkv__fail(&d, rc, "file tier %s: %s", dir, pkv_strerror(rc));
        }
    }
    if (rc != PKV_OK) {
        tf_close(tf);
        if (detail) memcpy(detail, d.text, sizeof d.text);
        return rc;
    }
    if (detail) detail[0] = 0;
    memset(out, 0, sizeof *out);
    out->size = sizeof *out;
    out->ctx = tf;
    out->put = tf_put;
    out->get = tf_get;
    out->exists = tf_exists;
    out->del = tf_del;
    out->scan = tf_scan;
    out->close = tf_close;
    out->flags = PKV_BACKEND_CONCURRENT_GET;
    return PKV_OK;
}
