/* The file tier backend (src/tier_file.c): round trips against a reference map,
 * capacity, restart, corruption (flipped bytes, truncation, foreign files),
 * I/O failure injection through pkv__tier_file_io, and a crash test that kills
 * a writing child with SIGKILL and checks every restart. The crash loop is
 * shared with tests/stress/stress_tier_file.c (which defines
 * TIER_FILE_TEST_NO_MAIN before including this file). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "tier_file.h"

/* ---- helpers ---- */
static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) rm_tree(path);
        else unlink(path);
    }
    closedir(d);
    rmdir(dir);
}
static char *make_tmp(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/pkv_tier_XXXXXX");
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        exit(2);
    }
    return buf;
}
static void key_of(uint32_t i, uint8_t key[16]) {
    test_rng r = {0x4b45590000000000ull ^ i};
    uint64_t a = test_next(&r), b = test_next(&r);
    memcpy(key, &a, 8);
    memcpy(key + 8, &b, 8);
}
/* The blob (key i, seed s, len): its first bytes name key, seed and length so
 * a blob read back identifies itself; the rest is a seeded stream. */
static void blob_of(uint32_t i, uint64_t seed, size_t len, uint8_t *out) {
    test_rng r = {seed * 0x9e3779b97f4a7c15ull ^ i};
    uint8_t head[16];
    uint64_t l = len;
    memcpy(head, &seed, 8);
    memcpy(head + 8, &l, 4);
    memcpy(head + 12, &i, 4);
    for (size_t k = 0; k < len; k += 8) {
        uint64_t v = test_next(&r);
        memcpy(out + k, &v, len - k < 8 ? len - k : 8);
    }
    memcpy(out, head, len < 16 ? len : 16);
}
static int open_tier(const char *dir, uint64_t cap, size_t bs, uint32_t flags, pkv_tier_backend *t) {
    char detail[256];
    const int st = pkv_tier_file_open(dir, cap, bs, flags, t, detail);
    if (st != PKV_OK) fprintf(stderr, "(open %s: %s: %s)\n", dir, pkv_strerror(st), detail);
    return st;
}
static void info(pkv_tier_backend *t, pkv__tier_file_info_t *inf) { pkv__tier_file_info(t->ctx, inf); }

/* Tests of logic rather than durability skip the disk flushes (fdatasync
 * costs milliseconds here); the FSYNC model run and the crash test keep them. */
static int nop_fsync(int fd) {
    (void)fd;
    return 0;
}
static void disk_sync(int on) {
    pkv__tier_file_io = pkv__tier_file_io_default;
    if (!on) pkv__tier_file_io.fsync = nop_fsync;
}

/* ---- reference model: key i holds (seed, len) or nothing ---- */
typedef struct ref_ent {
    int present;
    uint64_t seed;
    size_t len;
} ref_ent;

/* Every key of the model: present ones read back exactly, absent ones miss. */
static void check_all(pkv_tier_backend *t, const ref_ent *ref, uint32_t nkeys, size_t bs, uint8_t *buf,
                      uint8_t *want) {
    int32_t live = 0;
    for (uint32_t i = 0; i < nkeys; i++) {
        uint8_t key[16];
        key_of(i, key);
        size_t len = 12345;
        const int st = t->get(t->ctx, key, buf, bs, &len);
        CHECK_INT(t->exists(t->ctx, key), ref[i].present);
        if (!ref[i].present) {
            CHECK_STATUS(st, PKV_ERR_NOT_FOUND);
            continue;
        }
        live++;
        CHECK_OK(st);
        CHECK_INT(len, ref[i].len);
        blob_of(i, ref[i].seed, ref[i].len, want);
        CHECK(st == PKV_OK && memcmp(buf, want, ref[i].len) == 0);
    }
    pkv__tier_file_info_t inf;
    info(t, &inf);
    CHECK_INT(inf.live, live);
}

typedef struct scan_acc {
    uint32_t count;
    const ref_ent *ref;
    uint32_t nkeys, bad;
} scan_acc;
static int scan_fn(void *arg, const uint8_t key[16], size_t len) {
    scan_acc *a = arg;
    a->count++;
    for (uint32_t i = 0; i < a->nkeys; i++) {
        uint8_t k[16];
        key_of(i, k);
        if (memcmp(k, key, 16) == 0) {
            if (!a->ref[i].present || a->ref[i].len != len) a->bad++;
            return 0;
        }
    }
    a->bad++;
    return 0;
}

/* ---- tests ---- */
static void test_checksum(void) {
    uint8_t *b = malloc(1 << 16);
    test_rng r = {7};
    for (int i = 0; i < (1 << 16); i++) b[i] = (uint8_t)test_next(&r);
    for (int it = 0; it < 300; it++) {
        size_t n = it < 200 ? (size_t)it * 13 : test_below(&r, 1 << 16);
        size_t o = test_below(&r, 8);
        if (n + o > (1 << 16)) n = (1 << 16) - o;
        const uint64_t a = pkv__tier_checksum(b + o, n, 99, 0);
        CHECK(a == pkv__tier_checksum(b + o, n, 99, 1));
        CHECK(a == pkv__tier_checksum(b + o, n, 99, 2));
        CHECK(a == pkv__tier_checksum(b + o, n, 99, -1));
        if (n > 0) {
            const size_t at = test_below(&r, (uint32_t)n);
            b[o + at] ^= (uint8_t)(1u << test_below(&r, 8));
            CHECK(pkv__tier_checksum(b + o, n, 99, -1) != a);
            CHECK(pkv__tier_checksum(b + o, n, 99, 0) != a);
        }
        CHECK(pkv__tier_checksum(b + o, n, 98, -1) != pkv__tier_checksum(b + o, n, 99, -1));
    }
    /* Swapping two stripes, or extending by zeros, changes the sum. */
    uint8_t s[2048] = {0};
    for (int i = 0; i < 2048; i++) s[i] = (uint8_t)(i * 7 + (i >> 6));
    const uint64_t h = pkv__tier_checksum(s, 2048, 0, -1);
    uint8_t t2[2048];
    memcpy(t2, s, 2048);
    memcpy(t2, s + 64, 64);
    memcpy(t2 + 64, s, 64);
    CHECK(pkv__tier_checksum(t2, 2048, 0, -1) != h);
    memcpy(t2, s, 2048);
    memcpy(t2 + 64, s + 1088, 64);
    memcpy(t2 + 1088, s + 64, 64);
    CHECK(pkv__tier_checksum(t2, 2048, 0, -1) != h);
    uint8_t z[128] = {0};
    CHECK(pkv__tier_checksum(z, 64, 0, -1) != pkv__tier_checksum(z, 65, 0, -1));
    /* Streaming (init, updates at random points, final) gives the one-shot
     * value on every body. */
    long stream_bad = 0;
    for (int it = 0; it < 200; it++) {
        size_t n = test_below(&r, 1 << 16);
        for (int isa = 0; isa < 3; isa++) {
            pkv__cksum st;
            pkv__cksum_init(&st, 77, isa);
            size_t at = 0;
            while (at < n) {
                at += 1 + test_below(&r, 5000);
                if (at > n) at = n;
                pkv__cksum_update(&st, b, at);
            }
            stream_bad += pkv__cksum_final(&st, b, n) != pkv__tier_checksum(b, n, 77, isa);
        }
    }
    CHECK_INT(stream_bad, 0);
    /* Known answers (blobs on disk carry this checksum: it must not change). */
    static uint8_t k[5000];
    for (int i = 0; i < 5000; i++) k[i] = (uint8_t)(i * 31 + 7);
    static const struct { size_t n; uint64_t h; } kat[] = {
        {0, 0xeb6057245ebf7e71ull},    {1, 0x7802ab1bd5f64720ull},    {63, 0xc91c949cc4054b64ull},
        {64, 0xbd91fd714e01ccdfull},   {65, 0xfe6a73c9e969dd5aull},   {1023, 0xbcecdb030a64ebaeull},
        {1024, 0xf1cad1e66008d836ull}, {1025, 0xe0e84a51fe80ffa9ull}, {3000, 0xaca3456a23437678ull},
        {4999, 0xd3929b4f7c187c7aull}};
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++)
        for (int isa = 0; isa < 3; isa++) CHECK(pkv__tier_checksum(k, kat[i].n, 5, isa) == kat[i].h);
    free(b);
}

static void test_args(void) {
    char dir[64], sub[128], detail[256];
    pkv_tier_backend t;
    make_tmp(dir, sizeof dir);
    CHECK_STATUS(pkv_tier_file_open(NULL, 1 << 20, 100, 0, &t, detail), PKV_ERR_NULL);
    CHECK_STATUS(pkv_tier_file_open(dir, 1 << 20, 100, 0, NULL, NULL), PKV_ERR_NULL);
    CHECK_STATUS(pkv_tier_file_open(dir, 1 << 20, 0, 0, &t, detail), PKV_ERR_INVALID);
    CHECK(strstr(detail, "blob_size") != NULL);
    CHECK_STATUS(pkv_tier_file_open(dir, 1ull << 40, (size_t)1 << 31, 0, &t, detail), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_tier_file_open(dir, 100, 100, 0, &t, detail), PKV_ERR_INVALID);
    CHECK(strstr(detail, "capacity") != NULL);
    CHECK_STATUS(pkv_tier_file_open(dir, 1 << 20, 100, 0x80, &t, detail), PKV_ERR_INVALID);
    /* A missing directory is created one level deep; deeper is an I/O error with errno's text. */
    snprintf(sub, sizeof sub, "%s/new", dir);
    CHECK_OK(pkv_tier_file_open(sub, 1 << 20, 100, 0, &t, detail));
    CHECK_INT(t.size, sizeof t);
    /* The directory is locked while open. */
    pkv_tier_backend t2;
    CHECK_STATUS(pkv_tier_file_open(sub, 1 << 20, 100, 0, &t2, detail), PKV_ERR_IO);
    CHECK(strstr(detail, "in use") != NULL);
    t.close(t.ctx);
    CHECK_OK(pkv_tier_file_open(sub, 1 << 20, 100, 0, &t2, detail));
    t2.close(t2.ctx);
    snprintf(sub, sizeof sub, "%s/a/b", dir);
    CHECK_STATUS(pkv_tier_file_open(sub, 1 << 20, 100, 0, &t, detail), PKV_ERR_IO);
    CHECK(strstr(detail, strerror(ENOENT)) != NULL);
    /* A file where the directory should be. */
    snprintf(sub, sizeof sub, "%s/file", dir);
    FILE *f = fopen(sub, "w");
    fclose(f);
    CHECK_STATUS(pkv_tier_file_open(sub, 1 << 20, 100, 0, &t, detail), PKV_ERR_IO);
    CHECK(strstr(detail, "not a directory") != NULL);
    /* Argument checks of the calls. */
    CHECK_OK(pkv_tier_file_open(dir, 1 << 20, 100, 0, &t, detail));
    uint8_t key[16] = {1}, buf[200] = {0};
    size_t len = 0;
    CHECK_STATUS(t.put(t.ctx, key, buf, 101), PKV_ERR_INVALID);
    CHECK_STATUS(t.put(t.ctx, NULL, buf, 10), PKV_ERR_NULL);
    CHECK_STATUS(t.put(t.ctx, key, NULL, 10), PKV_ERR_NULL);
    CHECK_STATUS(t.get(t.ctx, key, buf, 100, &len), PKV_ERR_NOT_FOUND);
    CHECK_STATUS(t.del(t.ctx, key), PKV_ERR_NOT_FOUND);
    CHECK_OK(t.put(t.ctx, key, buf, 100));
    CHECK_STATUS(t.get(t.ctx, key, buf, 99, &len), PKV_ERR_BUFFER);
    CHECK_INT(len, 100);
    CHECK_OK(t.put(t.ctx, key, NULL, 0)); /* an empty blob is a blob */
    CHECK_OK(t.get(t.ctx, key, NULL, 0, &len));
    CHECK_INT(len, 0);
    t.close(t.ctx);
    rm_tree(dir);
}

/* Random put/get/exists/del/scan against the model, with restarts. */
static void test_model(size_t bs, uint32_t nkeys, uint64_t cap, long ops, uint64_t seed, uint32_t flags) {
    char dir[64];
    make_tmp(dir, sizeof dir);
    disk_sync(flags != 0);
    pkv_tier_backend t;
    CHECK_OK(open_tier(dir, cap, bs, flags, &t));
    pkv__tier_file_info_t inf;
    info(&t, &inf);
    const int32_t slots = inf.slots;
    ref_ent *ref = calloc(nkeys, sizeof *ref);
    uint8_t *buf = malloc(bs + 16), *want = malloc(bs + 16);
    test_rng r = {seed};
    int32_t live = 0;
    for (long op = 0; op < ops; op++) {
        const uint32_t i = test_below(&r, nkeys), what = test_below(&r, 100);
        uint8_t key[16];
        key_of(i, key);
        if (what < 45) {
            const uint64_t s = test_next(&r);
            const size_t len = test_below(&r, 4) ? bs : test_below(&r, (uint32_t)bs + 1);
            blob_of(i, s, len, want);
            const int st = t.put(t.ctx, key, want, len);
            /* A new key needs a free slot; so does a replacement (written beside the old). */
            if (live >= slots || (ref[i].present && live + 1 > slots)) {
                CHECK_STATUS(st, PKV_ERR_CAPACITY);
                CHECK(strstr(pkv__tier_file_last_error(t.ctx), "slots") != NULL);
            } else {
                CHECK_OK(st);
                if (st == PKV_OK) {
                    if (!ref[i].present) live++;
                    ref[i] = (ref_ent){1, s, len};
                }
            }
        } else if (what < 75) {
            size_t len = 0;
            const int st = t.get(t.ctx, key, buf, bs, &len);
            if (ref[i].present) {
                CHECK_OK(st);
                blob_of(i, ref[i].seed, ref[i].len, want);
                CHECK(len == ref[i].len && memcmp(buf, want, len) == 0);
            } else {
                CHECK_STATUS(st, PKV_ERR_NOT_FOUND);
            }
        } else if (what < 85) {
            CHECK_INT(t.exists(t.ctx, key), ref[i].present);
        } else if (what < 97) {
            const int st = t.del(t.ctx, key);
            CHECK_STATUS(st, ref[i].present ? PKV_OK : PKV_ERR_NOT_FOUND);
            if (ref[i].present) live--;
            ref[i].present = 0;
        } else if (what < 99) {
            scan_acc a = {0, ref, nkeys, 0};
            CHECK_OK(t.scan(t.ctx, scan_fn, &a));
            CHECK_INT(a.count, live);
            CHECK_INT(a.bad, 0);
        } else {
            t.close(t.ctx);
            CHECK_OK(open_tier(dir, cap, bs, flags, &t));
            check_all(&t, ref, nkeys, bs, buf, want);
        }
    }
    check_all(&t, ref, nkeys, bs, buf, want);
    t.close(t.ctx);
    CHECK_OK(open_tier(dir, cap, bs, 0, &t));
    check_all(&t, ref, nkeys, bs, buf, want);
    info(&t, &inf);
    CHECK_INT(inf.dropped, 0);
    CHECK_INT(inf.verified, 0); /* closed cleanly: the headers were enough */
    t.close(t.ctx);
    free(ref);
    free(buf);
    free(want);
    rm_tree(dir);
    disk_sync(1);
}

/* Fills a tier, damages its files, and checks that every key reads back
 * exactly or misses. mode 0: flipped bytes, 1: truncation. */
static void test_corruption(int mode, uint64_t seed) {
    char dir[64];
    make_tmp(dir, sizeof dir);
    const size_t bs = mode ? 20000 : 3000;
    const uint32_t nkeys = 48;
    const uint64_t cap = 64 * (bs + 4096);
    pkv_tier_backend t;
    CHECK_OK(open_tier(dir, cap, bs, 0, &t));
    ref_ent ref[48];
    uint8_t *buf = malloc(bs), *want = malloc(bs);
    test_rng r = {seed};
    for (uint32_t i = 0; i < nkeys; i++) {
        uint8_t key[16];
        key_of(i, key);
        ref[i] = (ref_ent){1, test_next(&r), bs - test_below(&r, 100)};
        blob_of(i, ref[i].seed, ref[i].len, want);
        CHECK_OK(t.put(t.ctx, key, want, ref[i].len));
    }
    pkv__tier_file_info_t inf;
    info(&t, &inf);
    t.close(t.ctx);
    char path[128];
    snprintf(path, sizeof path, "%s/slab-0000.pkv", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    const int fd = open(path, O_RDWR);
    if (mode == 0) {
        /* Flips anywhere past the magic (a damaged magic is refused like a foreign file). */
        for (int k = 0; k < 40; k++) {
            const off_t at = 8 + (off_t)(test_next(&r) % (uint64_t)(st.st_size - 8));
            uint8_t c;
            CHECK(pread(fd, &c, 1, at) == 1);
            c ^= (uint8_t)(1u << test_below(&r, 8));
            CHECK(pwrite(fd, &c, 1, at) == 1);
        }
        /* And one flip in the blob area of a known slot, and one in a header
         * (flips: writing a fixed byte changed nothing where it was already there). */
        const off_t slot3 = PKV_TIER_SLAB_HDR + 3 * (off_t)inf.stride;
        const off_t known[2] = {slot3 + (off_t)inf.hdr_area + 17, PKV_TIER_SLAB_HDR + 5 * (off_t)inf.stride + 20};
        for (int k = 0; k < 2; k++) {
            uint8_t c;
            CHECK(pread(fd, &c, 1, known[k]) == 1);
            c ^= 0x5a;
            CHECK(pwrite(fd, &c, 1, known[k]) == 1);
        }
    } else {
        CHECK(ftruncate(fd, PKV_TIER_SLAB_HDR + 20 * (off_t)inf.stride + 5000) == 0);
    }
    close(fd);
    if (seed & 1) { /* as after a crash: no CLEAN marker, every blob is read at open */
        snprintf(path, sizeof path, "%s/CLEAN", dir);
        CHECK(unlink(path) == 0);
    }
    CHECK_OK(open_tier(dir, cap, bs, 0, &t));
    info(&t, &inf);
    CHECK_INT(inf.verified, (int)(seed & 1));
    int found = 0;
    for (uint32_t i = 0; i < nkeys; i++) {
        uint8_t key[16];
        key_of(i, key);
        size_t len = 0;
        const int s = t.get(t.ctx, key, buf, bs, &len);
        CHECK(s == PKV_OK || s == PKV_ERR_NOT_FOUND);
        if (s == PKV_OK) {
            found++;
            blob_of(i, ref[i].seed, ref[i].len, want);
            CHECK(len == ref[i].len && memcmp(buf, want, len) == 0);
        }
        if (mode == 1) CHECK_INT(s == PKV_OK, i < 20); /* slots 0..19 are whole, 20 is cut */
        if (mode == 0 && (i == 3 || i == 5)) CHECK_STATUS(s, PKV_ERR_NOT_FOUND);
    }
    CHECK(found > 0);
    info(&t, &inf);
    CHECK(inf.dropped > 0);
    /* The tier keeps working over the damaged places. */
    for (uint32_t i = 0; i < nkeys; i++) {
        uint8_t key[16];
        key_of(i, key);
        blob_of(i, ref[i].seed + 1, ref[i].len, want);
        CHECK_OK(t.put(t.ctx, key, want, ref[i].len));
        ref[i].seed++;
    }
    t.close(t.ctx);
    CHECK_OK(open_tier(dir, cap, bs, 0, &t));
    check_all(&t, ref, nkeys, bs, buf, want);
    t.close(t.ctx);
    free(buf);
    free(want);
    rm_tree(dir);
}

/* Foreign files named like slabs, slabs of another blob_size, a damaged slab
 * header, an empty slab file, and a capacity change. */
static void test_foreign(void) {
    char dir[64], path[128], detail[256];
    make_tmp(dir, sizeof dir);
    pkv_tier_backend t;
    snprintf(path, sizeof path, "%s/slab-0000.pkv", dir);
    FILE *f = fopen(path, "w");
    fputs("not a slab, somebody's notes\n", f);
    fclose(f);
    CHECK_STATUS(pkv_tier_file_open(dir, 1 << 20, 1000, 0, &t, detail), PKV_ERR_FORMAT);
    CHECK(strstr(detail, "not a pagedkv slab") != NULL);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size == 29); /* left untouched */
    /* An empty file: a creation cut short; taken over. */
    f = fopen(path, "w");
    fclose(f);
    CHECK_OK(open_tier(dir, 1 << 20, 1000, 0, &t));
    uint8_t key[16], blob[1000], buf[2000];
    key_of(1, key);
    blob_of(1, 42, 1000, blob);
    CHECK_OK(t.put(t.ctx, key, blob, 1000));
    t.close(t.ctx);
    /* Another blob_size: refused, never misread, nothing overwritten. */
    CHECK_STATUS(pkv_tier_file_open(dir, 1 << 20, 1024, 0, &t, detail), PKV_ERR_FORMAT);
    CHECK(strstr(detail, "another tier") != NULL);
    size_t len = 0;
    CHECK_OK(open_tier(dir, 1 << 20, 1000, 0, &t));
    CHECK_OK(t.get(t.ctx, key, buf, sizeof buf, &len));
    CHECK(len == 1000 && memcmp(buf, blob, 1000) == 0);
    t.close(t.ctx);
    /* A damaged slab header (past its magic): the slots vouch for themselves. */
    int fd = open(path, O_RDWR);
    uint8_t c = 0x77;
    CHECK(pwrite(fd, &c, 1, 20) == 1);
    close(fd);
    CHECK_OK(open_tier(dir, 1 << 20, 1000, 0, &t));
    CHECK_OK(t.get(t.ctx, key, buf, sizeof buf, &len));
    CHECK(len == 1000 && memcmp(buf, blob, 1000) == 0);
    t.close(t.ctx);
    /* A smaller capacity keeps what fits (slot 0), a larger one grows the slab. */
    CHECK_OK(open_tier(dir, 4 * 1088, 1000, 0, &t));
    CHECK_OK(t.get(t.ctx, key, buf, sizeof buf, &len));
    t.close(t.ctx);
    CHECK_OK(open_tier(dir, 2 << 20, 1000, 0, &t));
    CHECK_OK(t.get(t.ctx, key, buf, sizeof buf, &len));
    CHECK(len == 1000 && memcmp(buf, blob, 1000) == 0);
    t.close(t.ctx);
    /* A slot header copied into another slot does not validate there. */
    fd = open(path, O_RDWR);
    uint8_t slot0[1088];
    CHECK(pread(fd, slot0, 1088, PKV_TIER_SLAB_HDR) == 1088);
    CHECK(pwrite(fd, slot0, 1088, PKV_TIER_SLAB_HDR + 7 * 1088) == 1088);
    close(fd);
    CHECK_OK(open_tier(dir, 2 << 20, 1000, 0, &t));
    pkv__tier_file_info_t inf;
    info(&t, &inf);
    CHECK_INT(inf.stride, 1088);
    CHECK_INT(inf.live, 1);
    CHECK_INT(inf.dropped, 1);
    t.close(t.ctx);
    rm_tree(dir);
}

/* pkv__tier_file_trust_gets: the header is still checked, the blob is the caller's to check. */
static void test_trust_gets(void) {
    char dir[64], path[128];
    make_tmp(dir, sizeof dir);
    pkv_tier_backend t;
    const size_t bs = 20000;
    CHECK_OK(open_tier(dir, 8 * 24576, bs, 0, &t));
    uint8_t blob[20000], buf[20000], key[16];
    for (uint32_t i = 0; i < 2; i++) {
        key_of(i, key);
        blob_of(i, 9, bs, blob);
        CHECK_OK(t.put(t.ctx, key, blob, bs));
    }
    snprintf(path, sizeof path, "%s/slab-0000.pkv", dir);
    const int fd = open(path, O_RDWR);
    uint8_t c = 0xee;
    CHECK(pwrite(fd, &c, 1, PKV_TIER_SLAB_HDR + 4096 + 100) == 1);             /* slot 0's blob */
    CHECK(pwrite(fd, &c, 1, PKV_TIER_SLAB_HDR + 24576 + 30) == 1);             /* slot 1's header */
    close(fd);
    pkv__tier_file_trust_gets(t.ctx, 1);
    size_t len;
    key_of(0, key);
    blob_of(0, 9, bs, blob);
    CHECK_OK(t.get(t.ctx, key, buf, bs, &len)); /* the caller's check would catch it */
    CHECK(memcmp(buf, blob, bs) != 0 && buf[100] == 0xee);
    key_of(1, key);
    CHECK_STATUS(t.get(t.ctx, key, buf, bs, &len), PKV_ERR_NOT_FOUND);
    pkv__tier_file_trust_gets(t.ctx, 0);
    key_of(0, key);
    CHECK_STATUS(t.get(t.ctx, key, buf, bs, &len), PKV_ERR_NOT_FOUND);
    t.close(t.ctx);
    rm_tree(dir);
}

/* Capacity: a full tier refuses new keys and replacements but keeps serving. */
static void test_capacity(void) {
    char dir[64];
    make_tmp(dir, sizeof dir);
    pkv_tier_backend t;
    const size_t bs = 16384; /* page layout: stride 20480 */
    CHECK_OK(open_tier(dir, 5 * 20480 + 100, bs, 0, &t));
    pkv__tier_file_info_t inf;
    info(&t, &inf);
    CHECK_INT(inf.slots, 5);
    CHECK_INT(inf.stride, 20480);
    uint8_t *blob = malloc(bs), *buf = malloc(bs);
    uint8_t key[16];
    for (uint32_t i = 0; i < 5; i++) {
        key_of(i, key);
        blob_of(i, 1, bs, blob);
        CHECK_OK(t.put(t.ctx, key, blob, bs));
    }
    key_of(9, key);
    CHECK_STATUS(t.put(t.ctx, key, blob, bs), PKV_ERR_CAPACITY);
    key_of(0, key);
    CHECK_STATUS(t.put(t.ctx, key, blob, bs), PKV_ERR_CAPACITY);
    size_t len;
    blob_of(0, 1, bs, blob);
    CHECK_OK(t.get(t.ctx, key, buf, bs, &len));
    CHECK(memcmp(buf, blob, bs) == 0);
    CHECK_OK(t.del(t.ctx, key));
    key_of(1, key);
    blob_of(1, 2, bs, blob);
    CHECK_OK(t.put(t.ctx, key, blob, bs)); /* a replacement, now that a slot is free */
    CHECK_OK(t.get(t.ctx, key, buf, bs, &len));
    CHECK(memcmp(buf, blob, bs) == 0);
    t.close(t.ctx);
    free(blob);
    free(buf);
    rm_tree(dir);
}

/* A slab deleted while open: a clear error once, then the other slabs serve. */
static void test_deleted_slab(void) {
    char dir[64], path[128];
    make_tmp(dir, sizeof dir);
    pkv_tier_backend t;
    const size_t bs = 1 << 20;
    CHECK_OK(open_tier(dir, 130ull << 20, bs, 0, &t));
    pkv__tier_file_info_t inf;
    info(&t, &inf);
    CHECK(inf.slabs >= 2);
    uint8_t *blob = malloc(bs), *buf = malloc(bs);
    uint8_t key[16];
    for (uint32_t i = 0; i < 3; i++) {
        key_of(i, key);
        blob_of(i, 5, bs, blob);
        CHECK_OK(t.put(t.ctx, key, blob, bs));
    }
    snprintf(path, sizeof path, "%s/slab-0000.pkv", dir);
    CHECK(unlink(path) == 0);
    key_of(3, key);
    blob_of(3, 5, bs, blob);
    CHECK_STATUS(t.put(t.ctx, key, blob, bs), PKV_ERR_IO);
    CHECK(strstr(pkv__tier_file_last_error(t.ctx), "deleted") != NULL);
    CHECK_OK(t.put(t.ctx, key, blob, bs)); /* into slab 1 */
    size_t len;
    for (uint32_t i = 0; i < 4; i++) {
        key_of(i, key);
        blob_of(i, 5, bs, blob);
        CHECK_OK(t.get(t.ctx, key, buf, bs, &len));
        CHECK(memcmp(buf, blob, bs) == 0);
    }
    t.close(t.ctx);
    CHECK_OK(open_tier(dir, 130ull << 20, bs, 0, &t));
    key_of(3, key);
    CHECK_OK(t.get(t.ctx, key, buf, bs, &len));
    CHECK(memcmp(buf, blob, bs) == 0);
    key_of(0, key);
    CHECK_STATUS(t.get(t.ctx, key, buf, bs, &len), PKV_ERR_NOT_FOUND);
    t.close(t.ctx);
    /* A smaller capacity removes our slabs past it (their blobs would come back stale). */
    CHECK_OK(open_tier(dir, 40ull << 20, bs, 0, &t));
    info(&t, &inf);
    CHECK_INT(inf.slabs, 1);
    t.close(t.ctx);
    snprintf(path, sizeof path, "%s/slab-0001.pkv", dir);
    CHECK(access(path, F_OK) != 0);
    free(blob);
    free(buf);
    rm_tree(dir);
}

/* ---- I/O failure injection ---- */
enum { IO_NONE, IO_PWRITE, IO_PREAD, IO_FSYNC, IO_OPEN, IO_TRUNC, IO_KINDS };
static const char *io_names[IO_KINDS] = {"none", "pwrite", "pread", "fsync", "open", "ftruncate"};
static int inj_kind, inj_errno, inj_torn, inj_sticky;
static long inj_at, inj_calls[IO_KINDS];
static int inject(int kind) {
    if (kind != inj_kind) return 0;
    const long n = ++inj_calls[kind];
    return n == inj_at || (inj_sticky && n > inj_at);
}
static int w_open(const char *p, int fl, mode_t m) {
    if (inject(IO_OPEN)) return errno = inj_errno, -1;
    return pkv__tier_file_io_default.open(p, fl, m);
}
static ssize_t w_pread(int fd, void *b, size_t n, off_t o) {
    if (inject(IO_PREAD)) return errno = inj_errno, -1;
    return pread(fd, b, n, o);
}
static ssize_t w_pwrite(int fd, const void *b, size_t n, off_t o) {
    if (inject(IO_PWRITE)) {
        if (inj_torn && n > 1 && pwrite(fd, b, n / 2, o) < 0) return -1; /* half lands, then the error */
        return errno = inj_errno, -1;
    }
    return pwrite(fd, b, n, o);
}
static int w_fsync(int fd) {
    if (inject(IO_FSYNC)) return errno = inj_errno, -1;
    return nop_fsync(fd);
}
static int w_trunc(int fd, off_t l) {
    if (inject(IO_TRUNC)) return errno = inj_errno, -1;
    return ftruncate(fd, l);
}
static void inj_set(int kind, long at, int err, int torn, int sticky) {
    inj_kind = kind;
    inj_at = at;
    inj_errno = err;
    inj_torn = torn;
    inj_sticky = sticky;
    memset(inj_calls, 0, sizeof inj_calls);
    pkv__tier_file_io = (pkv__tier_file_io_t){w_open, w_pread, w_pwrite, w_fsync, w_trunc};
}
static void inj_off(void) {
    inj_kind = IO_NONE;
    disk_sync(0);
}

/* A scripted workload (opens with existing blobs, puts, replacements, gets,
 * deletes) with the at-th call of one kind failing; each failing call must
 * leave the store as it was, and the end state must survive a restart. Returns
 * 1 while the failure point was reached (a larger `at` is worth trying). */
static int inj_run(const char *dir, int kind, long at, int err, int torn) {
    const size_t bs = 5000;
    const uint32_t nkeys = 12;
    const uint64_t cap = 16 * 5120;
    ref_ent ref[12];
    uint8_t buf[5000], want[5000];
    memset(ref, 0, sizeof ref);
    rm_tree(dir);
    pkv_tier_backend t;
    /* A few blobs from before: the failure may hit the scan at open. */
    CHECK_OK(open_tier(dir, cap, bs, 0, &t));
    for (uint32_t i = 0; i < 4; i++) {
        uint8_t key[16];
        key_of(i, key);
        ref[i] = (ref_ent){1, 100 + i, bs};
        blob_of(i, ref[i].seed, bs, want);
        CHECK_OK(t.put(t.ctx, key, want, bs));
    }
    t.close(t.ctx);
    inj_set(kind, at, err, torn, 0);
    char detail[256];
    const uint32_t flags = kind == IO_FSYNC ? PKV_FILE_TIER_FSYNC : 0;
    int st = pkv_tier_file_open(dir, cap, bs, flags, &t, detail);
    if (st != PKV_OK) {
        CHECK(st == PKV_ERR_IO || st == PKV_ERR_CAPACITY);
        CHECK(detail[0] != 0);
        inj_off();
        CHECK_OK(open_tier(dir, cap, bs, flags, &t));
        inj_set(kind, at, err, torn, 0);
        inj_calls[kind] = at; /* spent */
    } else if (inj_calls[kind] >= at) {
        /* It failed during the scan: a slot it could not read is not served
         * now, but stays on disk for the next open. */
        inj_off();
        for (uint32_t i = 0; i < nkeys; i++) {
            uint8_t key[16];
            key_of(i, key);
            size_t len = 0;
            st = t.get(t.ctx, key, buf, bs, &len);
            CHECK(st == PKV_OK || st == PKV_ERR_NOT_FOUND);
            blob_of(i, ref[i].seed, ref[i].len, want);
            CHECK(st != PKV_OK || (len == ref[i].len && memcmp(buf, want, len) == 0));
        }
        t.close(t.ctx);
        CHECK_OK(open_tier(dir, cap, bs, 0, &t));
        check_all(&t, ref, nkeys, bs, buf, want);
        t.close(t.ctx);
        return 1;
    }
    test_rng r = {(uint64_t)kind * 1000 + (uint64_t)at};
    for (int op = 0; op < 60; op++) {
        const uint32_t i = test_below(&r, nkeys), what = test_below(&r, 10);
        uint8_t key[16];
        key_of(i, key);
        size_t len = 0;
        if (what < 5) {
            const uint64_t s = test_next(&r);
            const size_t l = bs - test_below(&r, 3) * 1000;
            blob_of(i, s, l, want);
            st = t.put(t.ctx, key, want, l);
            if (st == PKV_OK) ref[i] = (ref_ent){1, s, l};
            else CHECK(pkv__tier_file_last_error(t.ctx)[0] != 0);
            CHECK(st == PKV_OK || st == PKV_ERR_IO || st == (err == ENOSPC ? PKV_ERR_CAPACITY : PKV_ERR_IO));
        } else if (what < 8) {
            st = t.get(t.ctx, key, buf, bs, &len);
            if (st == PKV_OK) {
                CHECK(ref[i].present);
                blob_of(i, ref[i].seed, ref[i].len, want);
                CHECK(len == ref[i].len && memcmp(buf, want, len) == 0);
            } else {
                CHECK(st == PKV_ERR_IO || (st == PKV_ERR_NOT_FOUND && !ref[i].present));
            }
        } else {
            st = t.del(t.ctx, key);
            if (st == PKV_OK) {
                CHECK(ref[i].present);
                ref[i].present = 0;
            } else {
                CHECK(st == PKV_ERR_IO || (st == PKV_ERR_NOT_FOUND && !ref[i].present));
                if (st == PKV_ERR_IO) ref[i].present = t.exists(t.ctx, key); /* restored, or dropped */
            }
        }
    }
    const int reached = inj_calls[kind] >= at;
    inj_off();
    check_all(&t, ref, nkeys, bs, buf, want);
    t.close(t.ctx);
    CHECK_OK(open_tier(dir, cap, bs, 0, &t));
    check_all(&t, ref, nkeys, bs, buf, want);
    t.close(t.ctx);
    return reached;
}

static void test_injection(void) {
    char dir[64], sub[96];
    make_tmp(dir, sizeof dir);
    disk_sync(0);
    snprintf(sub, sizeof sub, "%s/t", dir);
    int runs = 0;
    for (int kind = IO_PWRITE; kind < IO_KINDS; kind++)
        for (int variant = 0; variant < (kind == IO_PWRITE ? 3 : 1); variant++)
            for (long at = 1; at < 400; at++) {
                const int err = variant == 2 ? ENOSPC : EIO;
                runs++;
                const long fails0 = test_fails_;
                const int reached = inj_run(sub, kind, at, err, variant == 1);
                if (test_fails_ != fails0)
                    fprintf(stderr, "  (with the %s call #%ld failing: %s%s)\n", io_names[kind], at, strerror(err),
                            variant == 1 ? ", torn" : "");
                if (!reached) break;
            }
    CHECK(runs > 100);
    if (getenv("PKV_TIER_TIMES")) fprintf(stderr, "  injection: %d runs\n", runs);
    /* Writes failing for good (a full disk): puts say so, reads go on. */
    rm_tree(sub);
    pkv_tier_backend t;
    CHECK_OK(open_tier(sub, 16 * 5120, 5000, 0, &t));
    uint8_t key[16], blob[5000], buf[5000];
    key_of(1, key);
    blob_of(1, 1, 5000, blob);
    CHECK_OK(t.put(t.ctx, key, blob, 5000));
    inj_set(IO_PWRITE, 1, ENOSPC, 0, 1);
    for (int k = 0; k < 20; k++) {
        key_of(2 + k % 3, key);
        CHECK_STATUS(t.put(t.ctx, key, blob, 5000), PKV_ERR_CAPACITY);
        CHECK(strstr(pkv__tier_file_last_error(t.ctx), strerror(ENOSPC)) != NULL);
    }
    key_of(1, key);
    size_t len;
    CHECK_OK(t.get(t.ctx, key, buf, 5000, &len));
    CHECK(memcmp(buf, blob, 5000) == 0);
    CHECK_STATUS(t.del(t.ctx, key), PKV_ERR_IO);
    CHECK_INT(t.exists(t.ctx, key), 1);
    inj_off();
    pkv__tier_file_info_t inf;
    info(&t, &inf);
    CHECK_INT(inf.free + inf.live + inf.stale, inf.slots); /* no slot leaked */
    t.close(t.ctx);
    /* A read-only file system: open fails with errno's text. */
    inj_set(IO_OPEN, 1, EROFS, 0, 1);
    char detail[256];
    CHECK_STATUS(pkv_tier_file_open(sub, 16 * 5120, 5000, 0, &t, detail), PKV_ERR_IO);
    CHECK(strstr(detail, strerror(EROFS)) != NULL);
    inj_off();
    disk_sync(1);
    rm_tree(dir);
}

/* ---- crash test ---- */
typedef struct crash_rec {
    uint32_t kind; /* 1 put intent, 2 put done, 3 del intent, 4 del done */
    uint32_t key;
    uint64_t seed;
} crash_rec;

#define CRASH_KEYS 40
#define CRASH_BS 20000

/* In some children the tear_at-th write lands only in part (a random prefix)
 * and the process dies right there: a torn write, as a power cut leaves it. */
static long tear_at, tear_calls;
static uint64_t tear_seed;
static ssize_t tear_pwrite(int fd, const void *b, size_t n, off_t o) {
    if (++tear_calls == tear_at) {
        test_rng r = {tear_seed};
        const size_t part = n > 1 ? test_below(&r, (uint32_t)(n > 0xffffffffu ? 0xffffffffu : n)) : 0;
        if (part && pwrite(fd, b, part, o) < 0) _exit(7);
        raise(SIGKILL);
    }
    return pwrite(fd, b, n, o);
}

/* The child: puts and deletes forever, logging intent and completion. */
static void crash_child(const char *dir, const char *log, uint32_t flags, uint64_t seed) {
    test_rng tr = {seed ^ 0x7ea5};
    if (test_below(&tr, 2)) {
        tear_at = 1 + test_below(&tr, 3000);
        tear_seed = test_next(&tr);
        pkv__tier_file_io.pwrite = tear_pwrite;
    }
    pkv_tier_backend t;
    if (open_tier(dir, 64 * (CRASH_BS + 4096), CRASH_BS, flags, &t) != PKV_OK) _exit(3);
    const int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) _exit(4);
    uint8_t *blob = malloc(CRASH_BS);
    test_rng r = {seed};
    for (;;) {
        crash_rec rec = {0, test_below(&r, CRASH_KEYS), test_next(&r)};
        uint8_t key[16];
        key_of(rec.key, key);
        const int del = test_below(&r, 8) == 0;
        rec.kind = del ? 3 : 1;
        if (write(fd, &rec, sizeof rec) != sizeof rec) _exit(5);
        int st;
        if (del) {
            st = t.del(t.ctx, key);
            if (st == PKV_ERR_NOT_FOUND) st = PKV_OK;
        } else {
            const size_t len = CRASH_BS - (size_t)(rec.seed % 64) * 100;
            blob_of(rec.key, rec.seed, len, blob);
            st = t.put(t.ctx, key, blob, len);
        }
        if (st != PKV_OK) _exit(6);
        rec.kind++;
        if (write(fd, &rec, sizeof rec) != sizeof rec) _exit(5);
    }
}

/* kills SIGKILLed children at random instants; after each, every blob found
 * must be one written for its key (the last acknowledged one, or the one in
 * flight), and every acknowledged blob must be found. Returns failures. */
static long crash_test(long kills, long min_acked, uint64_t seed, int verbose) {
    char dir[64], sub[96], log[96];
    make_tmp(dir, sizeof dir);
    snprintf(sub, sizeof sub, "%s/t", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    const long fails0 = test_fails_;
    ref_ent ref[CRASH_KEYS];
    memset(ref, 0, sizeof ref);
    uint8_t *buf = malloc(CRASH_BS), *want = malloc(CRASH_BS);
    test_rng r = {seed};
    long acked = 0, torn_seen = 0, found_total = 0;
    long k;
    /* Slow builds (sanitizers) may see children killed before their first
     * put: the loop goes on until some operations were acknowledged. */
    for (k = 0; (k < kills || acked < min_acked || acked == 0) && k < 100 * (kills + 1) && test_fails_ == fails0;
         k++) {
        const uint32_t flags = (k & 1) ? PKV_FILE_TIER_FSYNC : 0;
        const uint64_t cseed = test_next(&r);
        unlink(log); /* a child killed inside its open writes no log */
        fflush(NULL);
        const pid_t pid = fork();
        if (pid == 0) crash_child(sub, log, flags, cseed);
        CHECK(pid > 0);
        struct timespec ts = {0, (long)(1000000 + test_below(&r, flags ? 60000000 : 20000000))};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        /* Replay the log: acknowledged state, and the one operation in flight. */
        int pend_kind = 0;
        uint32_t pend_key = 0;
        uint64_t pend_seed = 0;
        FILE *f = fopen(log, "rb");
        crash_rec rec;
        long nrec = 0;
        while (f && fread(&rec, sizeof rec, 1, f) == 1) {
            nrec++;
            if (rec.kind == 1 || rec.kind == 3) {
                pend_kind = (int)rec.kind;
                pend_key = rec.key;
                pend_seed = rec.seed;
            } else if (rec.key < CRASH_KEYS) {
                pend_kind = 0;
                acked++;
                if (rec.kind == 2) ref[rec.key] = (ref_ent){1, rec.seed, CRASH_BS - (size_t)(rec.seed % 64) * 100};
                else ref[rec.key].present = 0;
            }
        }
        if (f) fclose(f);
        pkv_tier_backend t;
        CHECK_OK(open_tier(sub, 64 * (CRASH_BS + 4096), CRASH_BS, 0, &t));
        pkv__tier_file_info_t inf;
        info(&t, &inf);
        /* No clean close; a child killed before its open removed the marker wrote nothing. */
        CHECK(inf.verified == 1 || nrec == 0);
        for (uint32_t i = 0; i < CRASH_KEYS; i++) {
            uint8_t key[16];
            key_of(i, key);
            size_t len = 0;
            const int st = t.get(t.ctx, key, buf, CRASH_BS, &len);
            const int in_flight = pend_kind && pend_key == i;
            if (st == PKV_OK) {
                found_total++;
                uint64_t s;
                memcpy(&s, buf, 8);
                const int ok_acked = ref[i].present && s == ref[i].seed;
                const int ok_flight = in_flight && pend_kind == 1 && s == pend_seed;
                CHECK(ok_acked || ok_flight);
                const size_t l = CRASH_BS - (size_t)(s % 64) * 100;
                blob_of(i, s, l, want);
                CHECK(len == l && memcmp(buf, want, l) == 0);
                ref[i] = (ref_ent){1, s, l};
            } else {
                CHECK_STATUS(st, PKV_ERR_NOT_FOUND);
                /* Acknowledged blobs survive a process kill (the page cache
                 * keeps them; with FSYNC they also survive power loss). */
                CHECK(!ref[i].present || (in_flight && pend_kind == 3));
                ref[i].present = 0;
            }
        }
        info(&t, &inf);
        torn_seen += (long)inf.dropped;
        t.close(t.ctx);
        if (verbose && (k + 1) % 100 == 0) {
            printf("  %ld kills, %ld acknowledged ops, %ld blobs checked, %ld torn slots dropped\n", k + 1, acked,
                   found_total, torn_seen);
            fflush(stdout);
        }
    }
    if (verbose)
        printf("crash test: %ld kills, %ld acknowledged ops, %ld blobs checked, %ld torn slots dropped\n", k,
               acked, found_total, torn_seen);
    CHECK(acked > 0);
    free(buf);
    free(want);
    rm_tree(dir);
    return test_fails_ - fails0;
}

#ifndef TIER_FILE_TEST_NO_MAIN
static double t_last;
static void lap(const char *what) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const double now = ts.tv_sec + ts.tv_nsec * 1e-9;
    if (getenv("PKV_TIER_TIMES") && t_last > 0) fprintf(stderr, "  %-12s %.2f s\n", what, now - t_last);
    t_last = now;
}
int main(void) {
    lap("");
    test_checksum();
    test_args();
    lap("args");
    test_model(1000, 80, 64 * 1088, test_scaled(20000), 1, 0);
    test_model(20000, 40, 32 * 24576, test_scaled(5000), 2, 0);
    test_model(700, 30, 20 * 768, test_scaled(20000), 3, 0); /* often full */
    test_model(1000, 40, 48 * 1088, test_scaled(1000), 4, PKV_FILE_TIER_FSYNC); /* fdatasync: slow disks */
    lap("model");
    test_capacity();
    test_trust_gets();
    for (int m = 0; m < 2; m++)
        for (uint64_t s = 1; s <= 5; s++) test_corruption(m, s * 31 + (uint64_t)m);
    lap("corruption");
    test_foreign();
    test_deleted_slab();
    lap("foreign");
    test_injection();
    lap("injection");
    crash_test(test_scaled(20), 0, 0xc0ffee, getenv("PKV_TIER_TIMES") != NULL);
    lap("crash");
    return test_report("test_tier_file");
}
#endif
