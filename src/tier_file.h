/* Private interface of the file tier (tier_file.c): the I/O table tests replace
 * to inject failures, the blob checksum, and accessors for the cache's tier
 * logic and the tests. The on-disk format is described in tier_file.c. */
#ifndef PKV_TIER_FILE_H
#define PKV_TIER_FILE_H

#include <sys/types.h>

#include "internal.h"

/* Every file operation of the tier goes through this table (SQLite's VFS in
 * miniature): tests swap an entry to make the n-th write, read, fsync or open
 * fail and check that the store stays consistent. Entries follow POSIX: -1 and
 * errno on failure. fsync is fdatasync by default. */
typedef struct pkv__tier_file_io_t {
    int (*open)(const char *path, int flags, mode_t mode);
    ssize_t (*pread)(int fd, void *buf, size_t n, off_t off);
    ssize_t (*pwrite)(int fd, const void *buf, size_t n, off_t off);
    int (*fsync)(int fd);
    int (*ftruncate)(int fd, off_t len);
} pkv__tier_file_io_t;
extern pkv__tier_file_io_t pkv__tier_file_io PKV_HIDDEN;
/* The table as the library sets it (restore it after a test). */
extern const pkv__tier_file_io_t pkv__tier_file_io_default PKV_HIDDEN;

/* The 64-bit checksum of blobs and headers: 8 lanes of 32x32->64 multiply-add
 * per 64-byte stripe with a per-stripe key, scrambled every KiB (xxh3's
 * accumulator shape), then mixed. Bodies: 0 portable, 1 AVX2, 2 AVX-512F, all
 * giving the same value; isa < 0 (or above what the CPU has): the best one. */
uint64_t pkv__tier_checksum(const void *p, size_t n, uint64_t seed, int isa) PKV_HIDDEN;
/* The same checksum over bytes that arrive in order (a blob being packed or
 * unpacked piece by piece, hashed while the piece is still in L1): init, then
 * update(p, avail) whenever p[0..avail) is complete (whole KiB scramble blocks
 * are hashed, the rest waits), then final(p, n) over all n bytes. The result
 * equals pkv__tier_checksum(p, n, seed, isa) for any sequence of updates. */
typedef struct pkv__cksum {
    uint64_t acc[8];
    uint64_t seed;
    size_t done; /* bytes hashed: a multiple of the scramble block */
    int isa;
} pkv__cksum;
void pkv__cksum_init(pkv__cksum *s, uint64_t seed, int isa) PKV_HIDDEN;
void pkv__cksum_update(pkv__cksum *s, const void *p, size_t avail) PKV_HIDDEN;
uint64_t pkv__cksum_final(pkv__cksum *s, const void *p, size_t n) PKV_HIDDEN;

/* For a caller that checks every blob it loads itself (the cache's tier logic
 * does: identity and checksum): get then verifies the slot header (key,
 * generation, length) but not the blob's checksum, which costs about a quarter
 * of a warm read (bench/README.md). Restart still verifies blobs after a crash.
 * Off by default: the backend alone never returns other bytes. */
void pkv__tier_file_trust_gets(void *ctx, int on) PKV_HIDDEN;
/* Whether be is a file tier (pkv_tier_file_open's functions). */
int pkv__tier_file_is(const pkv_tier_backend *be) PKV_HIDDEN;

/* The reason of the last failure of a file tier call (its ctx), "" if none. */
const char *pkv__tier_file_last_error(void *ctx) PKV_HIDDEN;

/* Geometry and counts of an open file tier (tests, benchmarks). */
typedef struct pkv__tier_file_info_t {
    int32_t slots, slabs, slots_per_slab, live, free, stale;
    uint64_t stride;     /* bytes per slot (header area + blob, padded) */
    uint64_t hdr_area;   /* bytes before the blob in a slot */
    uint64_t dropped;    /* slots found invalid at open or at a get, since open */
    int32_t verified;    /* 1: the open read every blob (no clean close before it) */
} pkv__tier_file_info_t;
void pkv__tier_file_info(void *ctx, pkv__tier_file_info_t *out) PKV_HIDDEN;

/* Bytes of a slab file's own header (slots start there). */
#define PKV_TIER_SLAB_HDR 4096

#endif
