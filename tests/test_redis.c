/* The Redis tier (src/tier_redis.c) and shared tiers (PKV_TIER_SHARED).
 *
 * Every build: the cluster key slot function against Redis's published values,
 * and pkv_tier_redis_open's answer in a build without REDIS=1 (PKV_ERR_MODE).
 * With REDIS=1 the test starts its own redis-server processes on free loopback
 * ports in a temporary directory (so it can kill, pause and restart them), or
 * uses PKV_REDIS_URL / PKV_REDIS_CLUSTER_URL when set (tests/redis_env.sh):
 *   - two processes share a prefix: a child registers blocks, the parent's
 *     lookup promotes them from Redis and every byte equals the child's rows;
 *   - a chain of blocks over a 3-master cluster (its keys on every master);
 *   - forged (flipped byte), truncated, foreign-key (MAC under another hash
 *     key) values, another geometry (same and other blob size): misses;
 *   - namespaces never share; a cache with another hash key finds nothing;
 *   - a model-based run: two caches, random prompts written and looked up on
 *     either, every served value equal to what was written for its token;
 *   - faults: Redis absent at start, killed, restarted (the tier reconnects),
 *     paused with SIGSTOP (calls come back, errors counted, the pool serves). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "common/clirun.h"
#include "tier_redis.h"

static void test_key_slot(void) {
    /* Values from the Redis Cluster specification and `CLUSTER KEYSLOT`. */
    CHECK_INT(pkv__redis_key_slot("123456789", 9), 0x31c3 & 16383);
    CHECK_INT(pkv__redis_key_slot("foo", 3), 12182);
    CHECK_INT(pkv__redis_key_slot("{user1000}.following", 20), pkv__redis_key_slot("user1000", 8));
    CHECK_INT(pkv__redis_key_slot("foo{}{bar}", 10), pkv__redis_key_slot("foo{}{bar}", 10));
    CHECK_INT(pkv__redis_key_slot("foo{{bar}}zap", 13), pkv__redis_key_slot("{bar", 4));
}

#ifndef PKV_REDIS

int main(int argc, char **argv) {
    (void)argc;
    test_key_slot();
    uint8_t hk[16] = {0};
    pkv_tier_backend be;
    char detail[256] = "x";
    CHECK_STATUS(pkv_tier_redis_open("redis://127.0.0.1:6379", hk, NULL, 0, &be, detail), PKV_ERR_MODE);
    CHECK(strstr(detail, "REDIS=1") != NULL);
    /* pkv sim says so before any work */
    if (clirun_find_bin(argv[0], "test_redis") == 0) {
        run_out r = run("sim --requests 10 --no-progress --tier redis://127.0.0.1:6379");
        CHECK_RUN(r, 2, "built without the Redis tier (build it with make REDIS=1)");
        free(r.text);
    } else {
        CHECK(0);
    }
    printf("test_redis: built without REDIS=1, the server tests run under `make REDIS=1 test`\n");
    return test_report("test_redis");
}

#else

#include <hiredis/hiredis.h>

#define BS 4
#define LAYERS 2
#define HKV 1
#define D 8

static char g_tmp[256];

/* ---- private redis-server processes ---- */

typedef struct server {
    pid_t pid;
    int port;
    char dir[300];
    int cluster;
} server;

static int free_port_any(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &l) != 0) {
        perror("free_port");
        exit(2);
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Every server started, killed at exit (also when a check exits early). */
static pid_t g_pids[8];
static void kill_servers(void) {
    for (int i = 0; i < 8; i++)
        if (g_pids[i] > 0) {
            kill(g_pids[i], SIGCONT);
            kill(g_pids[i], SIGKILL);
            waitpid(g_pids[i], NULL, 0);
            g_pids[i] = 0;
        }
}

/* A free loopback port below 55000 (a cluster node also listens on port + 10000). */
static int free_port(void) {
    for (int tries = 0; tries < 100; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons((uint16_t)(20000 + (getpid() * 7919 + tries * 104729) % 35000));
        int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        if (fd >= 0) close(fd);
        if (ok) return ntohs(a.sin_port);
    }
    return free_port_any();
}


static redisContext *connect_to(int port) {
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static void server_start(server *s) {
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    mkdir(s->dir, 0700);
    s->pid = fork();
    if (s->pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) {
            dup2(nul, 1);
            dup2(nul, 2);
        }
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", s->dir, "--save", "",
               "--appendonly", "no", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru",
               "--cluster-enabled", s->cluster ? "yes" : "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 8; i++)
        if (g_pids[i] <= 0) {
            g_pids[i] = s->pid;
            break;
        }
    for (int i = 0; i < 200; i++) { /* up to 10 s */
        redisContext *c = connect_to(s->port);
        if (c) {
            redisFree(c);
            return;
        }
        usleep(50000);
    }
    fprintf(stderr, "redis-server on port %d did not start (is redis-server installed?)\n", s->port);
    exit(2);
}

static void server_stop(server *s) {
    if (s->pid <= 0) return;
    kill(s->pid, SIGCONT);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    for (int i = 0; i < 8; i++)
        if (g_pids[i] == s->pid) g_pids[i] = 0;
    s->pid = 0;
}

static void redis_cmd(int port, const char *cmd) {
    redisContext *c = connect_to(port);
    if (!c) return;
    redisReply *r = redisCommand(c, cmd);
    if (r) freeReplyObject(r);
    redisFree(c);
}

/* ---- caches ---- */

static uint8_t g_key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static pkv_cache *make_cache_flags(const uint8_t key[16], int32_t d, int32_t h_kv, int nb, uint32_t flags) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    cfg.num_blocks = nb;
    cfg.block_size = BS;
    cfg.flags = PKV_FLAG_PREFIX_CACHE | flags;
    cfg.storage = PKV_STORAGE_HOST;
    cfg.num_layers = LAYERS;
    cfg.h_kv = h_kv;
    cfg.d = d;
    cfg.dv = d;
    cfg.v_separate = 1;
    cfg.kv_dtype = PKV_F32;
    cfg.hash_key_set = 1;
    memcpy(cfg.hash_key, key, 16);
    pkv_cache *c = NULL;
    if (pkv_cache_create(&cfg, &c) != PKV_OK) exit(2);
    return c;
}

static pkv_cache *make_cache(const uint8_t key[16], int32_t d, int32_t h_kv, int nb) {
    return make_cache_flags(key, d, h_kv, nb, 0);
}

/* Adds a shared, write-through Redis tier; returns the backend's ctx. */
static void *add_redis(pkv_cache *c, const char *url, const uint8_t key[16], const char *prefix, int32_t timeout_ms) {
    pkv_tier_backend be;
    char detail[256];
    int st = pkv_tier_redis_open(url, key, prefix, timeout_ms, &be, detail);
    CHECK_OK(st);
    if (st != PKV_OK) {
        fprintf(stderr, "open %s: %s\n", url, detail);
        exit(2);
    }
    CHECK_OK(pkv_cache_add_tier(c, &be, 1024, PKV_TIER_SHARED | PKV_TIER_WRITE_THROUGH));
    return be.ctx;
}

static float row_val(uint32_t seed, int32_t layer, int32_t pos, int32_t i, int v) {
    uint32_t x = seed * 2654435761u ^ (uint32_t)(layer * 7919 + pos * 131 + i * 17 + v * 100003);
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    return (float)(x % 20001) / 1000.0f - 10.0f;
}

static void prompt(int32_t *toks, int32_t n, uint32_t seed) {
    for (int32_t i = 0; i < n; i++) toks[i] = (int32_t)((seed * 1000003u + (uint32_t)i * 7u) % 50000u);
}

/* The LoRA adapter of the prompts write_prompt writes and lookup_check looks up
 * (0: none; the extra keys of a block's identity). */
static uint64_t g_adapter;

/* Appends the prompt with its rows (seed) in ns, registers it (written through
 * to the shared tier) and frees the sequence. */
static void write_prompt(pkv_cache *c, uint64_t ns, const int32_t *toks, int32_t n, uint32_t seed, int32_t d) {
    pkv_seq s;
    CHECK_OK(pkv_seq_create(c, ns, &s));
    if (g_adapter) CHECK_OK(pkv_seq_set_adapter(c, s, g_adapter));
    int64_t *slots = malloc((size_t)n * sizeof *slots);
    float *k = malloc((size_t)n * HKV * (size_t)d * sizeof *k), *v = malloc((size_t)n * HKV * (size_t)d * sizeof *v);
    CHECK_OK(pkv_seq_append(c, s, n, toks, slots, NULL));
    for (int32_t l = 0; l < LAYERS; l++) {
        for (int32_t p = 0; p < n; p++)
            for (int32_t i = 0; i < HKV * d; i++) {
                k[p * HKV * d + i] = row_val(seed, l, p, i, 0);
                v[p * HKV * d + i] = row_val(seed, l, p, i, 1);
            }
        CHECK_OK(pkv_store_write(c, l, slots, n, k, v, PKV_F32));
    }
    CHECK_OK(pkv_prefix_register(c, s, NULL, NULL));
    CHECK_OK(pkv_seq_free(c, s));
    free(slots), free(k), free(v);
}

/* Looks the prompt up; returns the tokens cached and checks that every row of
 * them equals the seed's (0 mismatches). */
static int32_t lookup_check(pkv_cache *c, uint64_t ns, const int32_t *toks, int32_t n, uint32_t seed, int32_t d) {
    pkv_seq s;
    int32_t got = -1;
    pkv_extra_keys x = PKV_EXTRA_KEYS_INIT;
    x.adapter_id = g_adapter;
    CHECK_OK(pkv_prefix_lookup_ex(c, ns, toks, n, g_adapter ? &x : NULL, &s, &got));
    if (got > 0) {
        int32_t blocks[256], nb = 0;
        CHECK_OK(pkv_seq_blocks(c, s, blocks, 256, &nb));
        int64_t *slots = malloc((size_t)got * sizeof *slots);
        for (int32_t p = 0; p < got; p++) slots[p] = (int64_t)blocks[p / BS] * BS + p % BS;
        float *k = malloc((size_t)got * HKV * (size_t)d * sizeof *k);
        float *v = malloc((size_t)got * HKV * (size_t)d * sizeof *v);
        long bad = 0;
        for (int32_t l = 0; l < LAYERS; l++) {
            CHECK_OK(pkv_store_read(c, l, slots, got, k, v));
            for (int32_t p = 0; p < got; p++)
                for (int32_t i = 0; i < HKV * d; i++)
                    bad += k[p * HKV * d + i] != row_val(seed, l, p, i, 0) || v[p * HKV * d + i] != row_val(seed, l, p, i, 1);
        }
        CHECK_INT(bad, 0);
        free(slots), free(k), free(v);
    }
    CHECK_OK(pkv_seq_free(c, s));
    CHECK_OK(pkv_cache_check(c));
    return got;
}

static pkv_tier_stats tier0(pkv_cache *c) {
    pkv_tier_stats st = PKV_TIER_STATS_INIT;
    CHECK_OK(pkv_tier_stats_get(c, 0, &st));
    return st;
}

/* Process A (a child) writes the prompt; process B (this one) finds it. */
static void test_two_processes(const char *url, const char *prefix, int32_t nblocks) {
    int32_t n = nblocks * BS + 2, toks[1024];
    prompt(toks, n, 11);
    pid_t pid = fork();
    if (pid == 0) {
        pkv_cache *a = make_cache(g_key, D, HKV, 256);
        void *actx = add_redis(a, url, g_key, prefix, 2000);
        write_prompt(a, 0, toks, n, 11, D);
        pkv_tier_stats st = tier0(a);
        pkv__tier_redis_info_t ai;
        pkv__tier_redis_info(actx, &ai);
        /* The registration's blocks went out pipelined: a round trip per node per 32. */
        int ok = st.stores == nblocks && st.errors == 0 && test_fails_ == 0 &&
                 ai.round_trips <= (int64_t)ai.nodes * ((nblocks + 31) / 32);
        if (!ok)
            fprintf(stderr, "writer (%s): %lld stores, %lld errors, %ld failed checks\n", url, (long long)st.stores,
                    (long long)st.errors, test_fails_);
        pkv_cache_destroy(a);
        _exit(ok ? 0 : 1);
    }
    int wst = 0;
    waitpid(pid, &wst, 0);
    CHECK(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    pkv_cache *b = make_cache(g_key, D, HKV, 256);
    void *ctx = add_redis(b, url, g_key, prefix, 2000);
    CHECK_INT(lookup_check(b, 0, toks, n, 11, D), nblocks * BS);
    pkv_tier_stats st = tier0(b);
    CHECK_INT(st.hits, nblocks);
    CHECK_INT(st.errors, 0);
    pkv__tier_redis_info_t info;
    pkv__tier_redis_info(ctx, &info);
    CHECK_INT(info.mac_failures, 0);
    /* One round trip per node for the chain (32 blocks per batch). */
    CHECK(info.round_trips <= (int64_t)info.nodes * ((nblocks + 31) / 32));
    /* Found again from the pool: no more Redis reads. */
    CHECK_INT(lookup_check(b, 0, toks, n, 11, D), nblocks * BS);
    CHECK_INT(tier0(b).hits, nblocks);
    /* Another namespace shares nothing. */
    CHECK_INT(lookup_check(b, 7, toks, n, 11, D), 0);
    pkv_cache_destroy(b);
    /* A cache with another hash key finds nothing (other keys, other MAC). */
    uint8_t other[16];
    memcpy(other, g_key, 16);
    other[0] ^= 0x80;
    pkv_cache *f = make_cache(other, D, HKV, 256);
    add_redis(f, url, other, prefix, 2000);
    CHECK_INT(lookup_check(f, 0, toks, n, 11, D), 0);
    pkv_cache_destroy(f);
}

/* Extra keys through the shared tier: process A writes a prompt under a LoRA
 * adapter; process B finds it under that adapter only (the keys B computes for
 * the blocks it asks Redis for carry the adapter, and each blob's identity is
 * checked with it). */
static void test_shared_extras(const char *url, const char *prefix, int32_t nblocks) {
    int32_t n = nblocks * BS, toks[1024];
    prompt(toks, n, 23);
    pid_t pid = fork();
    if (pid == 0) {
        pkv_cache *a = make_cache(g_key, D, HKV, 256);
        add_redis(a, url, g_key, prefix, 2000);
        g_adapter = 5;
        write_prompt(a, 0, toks, n, 23, D);
        int ok = tier0(a).stores == nblocks && test_fails_ == 0;
        pkv_cache_destroy(a);
        _exit(ok ? 0 : 1);
    }
    int wst = 0;
    waitpid(pid, &wst, 0);
    CHECK(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    pkv_cache *b = make_cache(g_key, D, HKV, 256);
    add_redis(b, url, g_key, prefix, 2000);
    g_adapter = 0; /* the same tokens without the adapter: other keys, nothing found */
    CHECK_INT(lookup_check(b, 0, toks, n, 23, D), 0);
    g_adapter = 6;
    CHECK_INT(lookup_check(b, 0, toks, n, 23, D), 0);
    g_adapter = 5; /* under the adapter: every block, with A's bytes */
    CHECK_INT(lookup_check(b, 0, toks, n, 23, D), n);
    CHECK_INT(tier0(b).hits, nblocks);
    CHECK_INT(tier0(b).corrupt, 0);
    g_adapter = 0;
    pkv_cache_destroy(b);
}

static void test_cluster_spread(const char *url, const int *ports, int nports) {
    test_two_processes(url, "pkvc:", 40);
    /* The chain's keys landed on every master. */
    for (int i = 0; i < nports; i++) {
        redisContext *c = connect_to(ports[i]);
        CHECK(c != NULL);
        if (!c) continue;
        redisReply *r = redisCommand(c, "DBSIZE");
        CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer > 0);
        if (r) freeReplyObject(r);
        redisFree(c);
    }
}

/* Values that lie: each is a miss at its block, and the chain stops there. */
static void test_bad_values(const char *url, int port) {
    redis_cmd(port, "FLUSHALL");
    int32_t n = 4 * BS, toks[64];
    prompt(toks, n, 21);
    pkv_cache *a = make_cache(g_key, D, HKV, 64);
    void *actx = add_redis(a, url, g_key, "bad:", 2000);
    write_prompt(a, 0, toks, n, 21, D);
    /* The Redis keys in chain order, from the events of a fresh cache's lookup. */
    pkv_cache *b = make_cache(g_key, D, HKV, 64);
    add_redis(b, url, g_key, "bad:", 2000);
    CHECK_OK(pkv_events_enable(b, 64));
    CHECK_INT(lookup_check(b, 0, toks, n, 21, D), n);
    pkv_event ev[64];
    int32_t ne = 0;
    CHECK_OK(pkv_events_drain(b, ev, 64, &ne, NULL));
    CHECK_INT(ne, 4);
    pkv_cache_destroy(b);
    char key[4][64];
    for (int i = 0; i < 4 && i < ne; i++) {
        int o = snprintf(key[i], sizeof key[i], "bad:");
        for (int j = 0; j < 16; j++) o += snprintf(key[i] + o, sizeof key[i] - (size_t)o, "%02x", ev[i].key[j]);
    }
    redisContext *rc = connect_to(port);
    CHECK(rc != NULL);
    if (!rc || ne != 4) {
        pkv_cache_destroy(a);
        return;
    }
    /* 1. A flipped byte inside block 2's rows (the MAC no longer matches). */
    redisReply *r = redisCommand(rc, "GET %s", key[2]);
    CHECK(r && r->type == REDIS_REPLY_STRING);
    size_t vlen = r ? r->len : 0;
    char *val = malloc(vlen + 1);
    memcpy(val, r->str, vlen);
    freeReplyObject(r);
    val[vlen / 2] ^= 1;
    freeReplyObject(redisCommand(rc, "SET %s %b", key[2], val, vlen));
    b = make_cache(g_key, D, HKV, 64);
    add_redis(b, url, g_key, "bad:", 2000);
    CHECK_INT(lookup_check(b, 0, toks, n, 21, D), 2 * BS);
    CHECK_INT(tier0(b).corrupt, 1);
    pkv_cache_destroy(b);
    /* 2. Truncated block 1. */
    val[vlen / 2] ^= 1;
    freeReplyObject(redisCommand(rc, "SET %s %b", key[2], val, vlen)); /* block 2 restored */
    r = redisCommand(rc, "GET %s", key[1]);
    CHECK(r && r->type == REDIS_REPLY_STRING);
    freeReplyObject(redisCommand(rc, "SET %s %b", key[1], r->str, r->len - 40));
    freeReplyObject(r);
    b = make_cache(g_key, D, HKV, 64);
    add_redis(b, url, g_key, "bad:", 2000);
    CHECK_INT(lookup_check(b, 0, toks, n, 21, D), 1 * BS);
    pkv_cache_destroy(b);
    /* 3. Block 0's own blob put back under a MAC of another hash key (a writer
     *    without the secret); then the right one again. */
    uint8_t other[16];
    memcpy(other, g_key, 16);
    other[15] ^= 1;
    pkv_tier_backend fbe;
    CHECK_OK(pkv_tier_redis_open(url, other, "bad:", 2000, &fbe, NULL));
    size_t blob_size = 0, len = 0;
    CHECK_OK(pkv_tier_blob_size(a, &blob_size));
    uint8_t *blob = malloc(blob_size);
    /* The right backend reads block 0; the foreign one writes it back. */
    pkv_tier_backend gbe;
    CHECK_OK(pkv_tier_redis_open(url, g_key, "bad:", 2000, &gbe, NULL));
    CHECK_OK(gbe.get(gbe.ctx, ev[0].key, blob, blob_size, &len));
    CHECK_INT(len, blob_size);
    CHECK_OK(fbe.put(fbe.ctx, ev[0].key, blob, len));
    CHECK_STATUS(gbe.get(gbe.ctx, ev[0].key, blob, blob_size, &len), PKV_ERR_CORRUPT);
    b = make_cache(g_key, D, HKV, 64);
    add_redis(b, url, g_key, "bad:", 2000);
    CHECK_INT(lookup_check(b, 0, toks, n, 21, D), 0);
    pkv_cache_destroy(b);
    fbe.close(fbe.ctx);
    gbe.close(gbe.ctx);
    free(blob);
    free(val);
    redisFree(rc);
    /* 4. Another geometry: the same hash key and prefix, another d (another
     *    blob size) and h_kv / d swapped (the same size, other geometry). */
    redis_cmd(port, "FLUSHALL");
    pkv_cache_destroy(a);
    a = make_cache(g_key, D, HKV, 64);
    actx = add_redis(a, url, g_key, "bad:", 2000);
    write_prompt(a, 0, toks, n, 21, D);
    pkv_cache *g = make_cache(g_key, 2 * D, HKV, 64);
    add_redis(g, url, g_key, "bad:", 2000);
    CHECK_INT(lookup_check(g, 0, toks, n, 21, 2 * D), 0);
    CHECK(tier0(g).corrupt >= 1);
    pkv_cache_destroy(g);
    g = NULL;
    {
        pkv_config c2;
        pkv_config_init(&c2);
        CHECK_OK(pkv_cache_config(a, &c2));
        c2.h_kv = D;
        c2.d = HKV;
        c2.dv = HKV;
        CHECK_OK(pkv_cache_create(&c2, &g));
    }
    add_redis(g, url, g_key, "bad:", 2000);
    size_t s1 = 0, s2 = 0;
    CHECK_OK(pkv_tier_blob_size(a, &s1));
    CHECK_OK(pkv_tier_blob_size(g, &s2));
    CHECK_INT(s1, s2);
    pkv_seq s;
    int32_t got = -1;
    CHECK_OK(pkv_prefix_lookup(g, 0, toks, n, &s, &got));
    CHECK_INT(got, 0);
    CHECK_OK(pkv_seq_free(g, s));
    CHECK(tier0(g).corrupt >= 1);
    pkv_cache_destroy(g);
    pkv__tier_redis_info_t info;
    pkv__tier_redis_info(actx, &info);
    CHECK_INT(info.errors, 0);
    pkv_cache_destroy(a);
}

/* Faults on a private server: absent at start, killed, restarted, paused. */
static void test_faults(void) {
    server s = {0};
    s.port = free_port();
    snprintf(s.dir, sizeof s.dir, "%s/fault", g_tmp);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", s.port);
    int32_t n = 3 * BS, toks[64], toks2[64];
    prompt(toks, n, 31);
    prompt(toks2, n, 32);

    /* Absent at start: the open succeeds, the cache serves from its pool,
     * failures are counted, and the backoff answers most calls at once. */
    pkv_cache *a = make_cache(g_key, D, HKV, 64);
    void *ctx = add_redis(a, url, g_key, "f:", 200);
    write_prompt(a, 0, toks, n, 31, D);
    for (int i = 0; i < 20; i++) CHECK_INT(lookup_check(a, 0, toks, n, 31, D), n);
    CHECK_INT(lookup_check(a, 0, toks2, n, 32, D), 0);
    pkv_tier_stats st = tier0(a);
    CHECK(st.errors >= 1);
    CHECK_INT(st.degraded, 1);
    pkv__tier_redis_info_t info;
    pkv__tier_redis_info(ctx, &info);
    CHECK_INT(info.connects, 0);

    /* Started: after the backoff (at most 5 s) the tier reconnects by itself. */
    server_start(&s);
    int ok = 0;
    for (int i = 0; i < 150 && !ok; i++) { /* up to ~15 s */
        pkv_cache *b = make_cache(g_key, D, HKV, 64);
        add_redis(b, url, g_key, "f:", 200);
        pkv_seq sq;
        int32_t got = 0;
        pkv_cache *w = make_cache(g_key, D, HKV, 64);
        add_redis(w, url, g_key, "f:", 200);
        write_prompt(w, 0, toks2, n, 32, D);
        pkv_cache_destroy(w);
        CHECK_OK(pkv_prefix_lookup(b, 0, toks2, n, &sq, &got));
        ok = got == n;
        pkv_cache_destroy(b);
        if (!ok) usleep(100000);
    }
    CHECK(ok);
    /* The first cache's tier reconnects too (its backoff ends). */
    ok = 0;
    for (int i = 0; i < 150 && !ok; i++) {
        int64_t before = tier0(a).hits;
        pkv_cache *w = make_cache(g_key, D, HKV, 64);
        int32_t t3[64];
        prompt(t3, n, 100 + (uint32_t)i);
        add_redis(w, url, g_key, "f:", 200);
        write_prompt(w, 0, t3, n, 100 + (uint32_t)i, D);
        pkv_cache_destroy(w);
        CHECK_INT(lookup_check(a, 0, t3, n, 100 + (uint32_t)i, D) >= 0, 1);
        ok = tier0(a).hits > before;
        if (!ok) usleep(100000);
    }
    CHECK(ok);
    pkv__tier_redis_info(ctx, &info);
    CHECK(info.connects >= 1);

    /* Paused (SIGSTOP): calls come back after the timeout, errors are
     * counted, the pool keeps serving what it holds. */
    int64_t err_before = tier0(a).errors;
    kill(s.pid, SIGSTOP);
    int32_t t4[64];
    prompt(t4, n, 41);
    CHECK_INT(lookup_check(a, 0, t4, n, 41, D), 0); /* one timeout */
    for (int i = 0; i < 20; i++) CHECK_INT(lookup_check(a, 0, toks, n, 31, D), n);
    write_prompt(a, 0, t4, n, 41, D);
    CHECK(tier0(a).errors > err_before);
    kill(s.pid, SIGCONT);

    /* Killed mid-run, then restarted empty on the same port: misses and
     * errors meanwhile, then the tier serves again. */
    server_stop(&s);
    err_before = tier0(a).errors;
    int32_t t5[64];
    prompt(t5, n, 51);
    CHECK_INT(lookup_check(a, 0, t5, n, 51, D), 0);
    CHECK(tier0(a).errors > err_before);
    server_start(&s);
    ok = 0;
    for (int i = 0; i < 150 && !ok; i++) {
        pkv_cache *w = make_cache(g_key, D, HKV, 64);
        add_redis(w, url, g_key, "f:", 200);
        write_prompt(w, 0, t5, n, 51, D);
        pkv_cache_destroy(w);
        ok = lookup_check(a, 0, t5, n, 51, D) == n;
        if (!ok) usleep(100000);
    }
    CHECK(ok);
    pkv__tier_redis_info(ctx, &info);
    CHECK(info.connects >= 2);
    CHECK(info.refused >= 1);
    printf("faults: tier errors %lld, connects %lld, refused during backoff %lld\n", (long long)tier0(a).errors,
           (long long)info.connects, (long long)info.refused);
    pkv_cache_destroy(a);
    server_stop(&s);
}

/* A Redis tier that is not shared behaves as a private tier: capacity 3, a
 * registration of 6 blocks written through in one batch evicts as it goes,
 * and Redis ends up holding exactly the blocks the tier indexes. */
static void test_unshared(const char *url, int port) {
    redis_cmd(port, "FLUSHALL");
    pkv_cache *c = make_cache(g_key, D, HKV, 64);
    pkv_tier_backend be;
    CHECK_OK(pkv_tier_redis_open(url, g_key, "priv:", 2000, &be, NULL));
    void *ctx = be.ctx;
    CHECK_OK(pkv_cache_add_tier(c, &be, 3, PKV_TIER_WRITE_THROUGH));
    int32_t n = 6 * BS, toks[64];
    prompt(toks, n, 61);
    write_prompt(c, 0, toks, n, 61, D);
    pkv_tier_stats st = tier0(c);
    CHECK_INT(st.blocks, 3);
    CHECK_INT(st.errors, 0);
    CHECK_OK(pkv_cache_check(c));
    pkv__tier_redis_info_t info;
    pkv__tier_redis_info(ctx, &info);
    redisContext *rc = connect_to(port);
    redisReply *r = rc ? redisCommand(rc, "DBSIZE") : NULL;
    CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer == 3);
    if (r) freeReplyObject(r);
    if (rc) redisFree(rc);
    /* Evicted from the pool and found again through the tier (indexed locally). */
    CHECK_OK(pkv_prefix_evict(c, 64, NULL));
    CHECK_INT(lookup_check(c, 0, toks, n, 61, D), 3 * BS);
    pkv_cache_destroy(c);
}

/* A model-based run: two caches with small pools and small local indexes share
 * one Redis; random prompts (common stems, random tails) are registered on
 * either and looked up on either, and every token a lookup serves must carry
 * the KV written for its token id and position (whoever wrote it), with both
 * caches' invariants checked as it goes. */
static float kv_tok(int32_t tok, int32_t pos, int32_t l, int32_t i) {
    return (float)((tok * 131 + pos * 17 + l * 7 + i) % 4099) * 0.25f;
}

/* The model's two operations count their failures into *bad (no CHECK: the
 * threaded run calls them from several threads). A write that finds no room
 * (another thread took it) is not a failure. */
static void model_write(pkv_cache *c, const int32_t *toks, int32_t n, long *bad) {
    pkv_seq s;
    int64_t slots[64];
    float k[64 * HKV * D], v[64 * HKV * D];
    if (pkv_seq_create(c, 0, &s) != PKV_OK) {
        ++*bad;
        return;
    }
    int st = pkv_seq_append(c, s, n, toks, slots, NULL);
    *bad += st != PKV_OK && st != PKV_ERR_CAPACITY;
    for (int32_t l = 0; l < LAYERS && st == PKV_OK; l++) {
        for (int32_t p = 0; p < n; p++)
            for (int32_t i = 0; i < HKV * D; i++) {
                k[p * HKV * D + i] = kv_tok(toks[p], p, l, i);
                v[p * HKV * D + i] = kv_tok(toks[p], p, l, 1000 + i);
            }
        *bad += pkv_store_write(c, l, slots, n, k, v, PKV_F32) != PKV_OK;
    }
    if (st == PKV_OK) *bad += pkv_prefix_register(c, s, NULL, NULL) != PKV_OK;
    *bad += pkv_seq_free(c, s) != PKV_OK;
}

static int32_t model_lookup(pkv_cache *c, const int32_t *toks, int32_t n, long *bad) {
    pkv_seq s;
    int32_t got = 0, blocks[64], nb = 0;
    int st = pkv_prefix_lookup(c, 0, toks, n, &s, &got);
    if (st != PKV_OK) {
        *bad += st != PKV_ERR_CAPACITY;
        return 0;
    }
    *bad += pkv_seq_blocks(c, s, blocks, 64, &nb) != PKV_OK;
    int64_t slots[64];
    float k[64 * HKV * D], v[64 * HKV * D];
    for (int32_t p = 0; p < got; p++) slots[p] = (int64_t)blocks[p / BS] * BS + p % BS;
    for (int32_t l = 0; l < LAYERS && got > 0; l++) {
        *bad += pkv_store_read(c, l, slots, got, k, v) != PKV_OK;
        for (int32_t p = 0; p < got; p++)
            for (int32_t i = 0; i < HKV * D; i++)
                *bad += k[p * HKV * D + i] != kv_tok(toks[p], p, l, i) ||
                        v[p * HKV * D + i] != kv_tok(toks[p], p, l, 1000 + i);
    }
    *bad += pkv_seq_free(c, s) != PKV_OK;
    return got;
}

/* A random prompt of the model: 16 ids from one of 6 stems, then some of 3. */
static int32_t model_prompt(test_rng *rng, int32_t toks[32]) {
    int32_t n = 4 + (int32_t)test_below(rng, 28), stem = (int32_t)test_below(rng, 6);
    for (int32_t i = 0; i < n; i++) toks[i] = i < 16 ? stem * 100 + i : (int32_t)test_below(rng, 3) * 1000 + i;
    return n;
}

/* After a model run: invariants hold, Redis served hits, nothing failed or lied. */
static pkv_tier_stats check_shared(pkv_cache *c) {
    CHECK_OK(pkv_cache_check(c));
    pkv_tier_stats st = tier0(c);
    CHECK(st.hits > 0);
    CHECK_INT(st.errors, 0);
    CHECK_INT(st.corrupt, 0);
    return st;
}

static void test_model(const char *url, const char *prefix) {
    pkv_cache *c[2];
    for (int i = 0; i < 2; i++) {
        c[i] = make_cache(g_key, D, HKV, 12);
        pkv_tier_backend be;
        CHECK_OK(pkv_tier_redis_open(url, g_key, prefix, 2000, &be, NULL));
        CHECK_OK(pkv_cache_add_tier(c[i], &be, 8, PKV_TIER_SHARED | PKV_TIER_WRITE_THROUGH));
    }
    test_rng rng = {0x12ed15};
    long ops = test_scaled(2000);
    if (ops < 200) ops = 200;
    int64_t served[2] = {0, 0};
    for (long op = 0; op < ops; op++) {
        int w = (int)test_below(&rng, 2);
        int32_t toks[32], n = model_prompt(&rng, toks);
        long bad = 0;
        if (test_below(&rng, 3)) {
            served[w] += model_lookup(c[w], toks, n, &bad);
        } else {
            pkv_stats st = PKV_STATS_INIT;
            CHECK_OK(pkv_cache_stats(c[w], &st));
            if (st.free_blocks + st.evictable_blocks >= (n + BS - 1) / BS) model_write(c[w], toks, n, &bad);
        }
        CHECK_INT(bad, 0);
        if (op % 25 == 0)
            for (int i = 0; i < 2; i++)
                if (pkv_cache_check(c[i]) != PKV_OK) {
                    TEST_FAIL_("op %ld, cache %d: %s", op, i, pkv_cache_last_error(c[i]));
                    op = ops;
                }
    }
    for (int i = 0; i < 2; i++) {
        pkv_tier_stats st = check_shared(c[i]);
        printf("model: cache %d served %lld tokens, %lld promoted from Redis, %lld written\n", i,
               (long long)served[i], (long long)st.hits, (long long)st.stores);
        pkv_cache_destroy(c[i]);
    }
}

/* The model on thread-safe caches (make tsan-redis runs it under TSan):
 * two threads share cache 0, a third uses cache 1; all three share Redis. */
typedef struct mt_arg {
    pkv_cache *c;
    uint64_t seed;
    long ops, bad;
    int64_t served;
} mt_arg;

static void *mt_run(void *p) {
    mt_arg *a = p;
    test_rng rng = {a->seed};
    for (long op = 0; op < a->ops; op++) {
        int32_t toks[32], n = model_prompt(&rng, toks);
        if (test_below(&rng, 3)) a->served += model_lookup(a->c, toks, n, &a->bad);
        else model_write(a->c, toks, n, &a->bad);
    }
    return NULL;
}

static void test_model_threads(const char *url, const char *prefix) {
    pkv_cache *c[2];
    for (int i = 0; i < 2; i++) {
        c[i] = make_cache_flags(g_key, D, HKV, 24, PKV_FLAG_THREAD_SAFE);
        pkv_tier_backend be;
        CHECK_OK(pkv_tier_redis_open(url, g_key, prefix, 2000, &be, NULL));
        CHECK_OK(pkv_cache_add_tier(c[i], &be, 16, PKV_TIER_SHARED | PKV_TIER_WRITE_THROUGH));
    }
    long ops = test_scaled(1500);
    if (ops < 150) ops = 150;
    mt_arg a[3] = {{c[0], 0x7a1, ops, 0, 0}, {c[0], 0x7a2, ops, 0, 0}, {c[1], 0x7a3, ops, 0, 0}};
    pthread_t th[3];
    for (int i = 0; i < 3; i++) CHECK_INT(pthread_create(&th[i], NULL, mt_run, &a[i]), 0);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 3; i++) CHECK_INT(a[i].bad, 0);
    for (int i = 0; i < 2; i++) {
        (void)check_shared(c[i]);
        pkv_cache_destroy(c[i]);
    }
    printf("model, 3 threads: %lld, %lld, %lld tokens served\n", (long long)a[0].served, (long long)a[1].served,
           (long long)a[2].served);
}

/* The value MAC: the portable, AVX2 and AVX-512 bodies of NH give the same
 * bits at every length (partial blocks, partial and whole 1 KiB chunks), and
 * every flipped bit, another length, another block key or another hash key
 * changes it. */
static void test_value_mac(void) {
    enum { MAX = 4 * 1024 + 100 };
    static uint8_t buf[MAX];
    test_rng rng = {0x3ac};
    for (int i = 0; i < MAX; i++) buf[i] = (uint8_t)test_next(&rng);
    static const uint8_t bkey[16] = {9, 8, 7}, bkey2[16] = {9, 8, 6}, hk2[16] = {1, 2, 3};
    long disagree = 0, same = 0;
    for (size_t len = 0; len <= MAX; len += len < 200 ? 1 : 61) {
        uint8_t m[3][16];
        for (int isa = 0; isa < 3; isa++) pkv__redis_value_mac(g_key, bkey, buf, len, isa, m[isa]);
        disagree += memcmp(m[0], m[1], 16) != 0 || memcmp(m[0], m[2], 16) != 0;
        uint8_t x[16];
        if (len) {
            size_t at = (size_t)test_below(&rng, (uint32_t)len);
            uint8_t bit = (uint8_t)(1u << test_below(&rng, 8));
            buf[at] ^= bit;
            pkv__redis_value_mac(g_key, bkey, buf, len, 2, x);
            same += memcmp(x, m[0], 16) == 0;
            buf[at] ^= bit;
            pkv__redis_value_mac(g_key, bkey, buf, len - 1, 2, x);
            same += memcmp(x, m[0], 16) == 0;
        }
        pkv__redis_value_mac(g_key, bkey2, buf, len, 2, x);
        same += memcmp(x, m[0], 16) == 0;
        pkv__redis_value_mac(hk2, bkey, buf, len, 2, x);
        same += memcmp(x, m[0], 16) == 0;
    }
    CHECK_INT(disagree, 0);
    CHECK_INT(same, 0);
    /* zero padding is not ambiguous: a blob and the blob with a zero appended */
    uint8_t z[65] = {0}, a[16], b[16];
    pkv__redis_value_mac(g_key, bkey, z, 64, 0, a);
    pkv__redis_value_mac(g_key, bkey, z, 65, 0, b);
    CHECK(memcmp(a, b, 16) != 0);
}

static void test_open_errors(void) {
    pkv_tier_backend be;
    char detail[256];
    CHECK_STATUS(pkv_tier_redis_open(NULL, g_key, NULL, 0, &be, detail), PKV_ERR_NULL);
    CHECK_STATUS(pkv_tier_redis_open("http://x:1", g_key, NULL, 0, &be, detail), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_tier_redis_open("redis://host", g_key, NULL, 0, &be, detail), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_tier_redis_open("redis://h:0", g_key, NULL, 0, &be, detail), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_tier_redis_open("redis://a:1,b:2", g_key, NULL, 0, &be, detail), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_tier_redis_open("redis+cluster://a:1/3", g_key, NULL, 0, &be, detail), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_tier_redis_open("redis://h:1/x", g_key, NULL, 0, &be, detail), PKV_ERR_INVALID);
    CHECK_STATUS(pkv_tier_redis_open("redis://h:1", g_key, NULL, -1, &be, detail), PKV_ERR_INVALID);
    CHECK(strstr(detail, "timeout") != NULL);
    /* A shared tier must be a backend, and only one. */
    pkv_cache *c = make_cache(g_key, D, HKV, 16);
    CHECK_STATUS(pkv_cache_add_host_tier(c, 8, PKV_TIER_SHARED), PKV_ERR_INVALID);
    pkv_cache_destroy(c);
}

static void test_auth(server *s) {
    redis_cmd(s->port, "CONFIG SET requirepass s3cret");
    char url[128];
    snprintf(url, sizeof url, "redis://:s3cret@127.0.0.1:%d/2", s->port);
    test_two_processes(url, "auth:", 3);
    snprintf(url, sizeof url, "redis://:wrong@127.0.0.1:%d", s->port);
    pkv_cache *c = make_cache(g_key, D, HKV, 16);
    add_redis(c, url, g_key, "auth:", 500);
    int32_t toks[64];
    prompt(toks, 3 * BS, 11);
    CHECK_INT(lookup_check(c, 0, toks, 3 * BS, 11, D), 0);
    CHECK(tier0(c).errors >= 1);
    pkv_cache_destroy(c);
    redisContext *rc = connect_to(s->port);
    if (rc) {
        freeReplyObject(redisCommand(rc, "AUTH s3cret"));
        freeReplyObject(redisCommand(rc, "CONFIG SET requirepass %s", ""));
        redisFree(rc);
    }
}

static int start_cluster(server *cs, char *url, size_t cap) {
    int o = snprintf(url, cap, "redis+cluster://");
    char cmd[1024];
    int co = snprintf(cmd, sizeof cmd, "redis-cli --cluster create");
    for (int i = 0; i < 3; i++) {
        cs[i].port = free_port();
        cs[i].cluster = 1;
        snprintf(cs[i].dir, sizeof cs[i].dir, "%s/cluster%d", g_tmp, i);
        server_start(&cs[i]);
        o += snprintf(url + o, cap - (size_t)o, "%s127.0.0.1:%d", i ? "," : "", cs[i].port);
        co += snprintf(cmd + co, sizeof cmd - (size_t)co, " 127.0.0.1:%d", cs[i].port);
    }
    snprintf(cmd + co, sizeof cmd - (size_t)co, " --cluster-replicas 0 --cluster-yes >/dev/null 2>&1");
    if (system(cmd) != 0) return 0;
    for (int i = 0; i < 200; i++) { /* until every node says cluster_state:ok */
        int okn = 0;
        for (int j = 0; j < 3; j++) {
            redisContext *c = connect_to(cs[j].port);
            redisReply *r = c ? redisCommand(c, "CLUSTER INFO") : NULL;
            okn += r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok") != NULL;
            if (r) freeReplyObject(r);
            if (c) redisFree(c);
        }
        if (okn == 3) return 1;
        usleep(50000);
    }
    return 0;
}

/* A hit rate in percent from a table row of pkv sim ("51.7% (max 76.1%)"). */
static double row_percent(const char *text, const char *name) {
    char buf[256];
    double v = -1;
    if (sscanf(row(text, name, buf, sizeof buf), "%lf%%", &v) != 1) return -1;
    return v;
}

/* pkv sim --tier redis://: the instances of a fleet share one Redis. Round
 * robin sends a conversation's turns to different instances, so without the
 * shared tier each turn finds only what its own instance saw; with it (and
 * --verify: attention over every promoted block checked against rows computed
 * from the token ids) the hit rate reaches the infinite cache's. A Redis that
 * is not there changes nothing but the warning. */
static void test_sim_fleet(const char *url, int dead_port) {
    const char *w = "sim --requests 200 --instances 2 --no-progress";
    run_out base = run("%s", w);
    run_out shared = run("%s --verify --tier %s", w, url);
    run_out dead = run("%s --tier redis://127.0.0.1:%d", w, dead_port);
    CHECK_RUN(base, 0, NULL);
    CHECK_RUN(shared, 0, "redis, shared");
    CHECK_RUN(dead, 0, "warning: the redis tier failed");
    CHECK(strstr(shared.text, "warning") == NULL);
    double hb = row_percent(base.text, "prefix hit rate"), hs = row_percent(shared.text, "prefix hit rate"),
           hd = row_percent(dead.text, "prefix hit rate");
    fprintf(stderr, "test_redis: sim, 2 instances: hit rate %.1f%% alone, %.1f%% sharing Redis\n", hb, hs);
    CHECK(hb > 0 && hs > hb + 10);
    CHECK(hd == hb);
    char lv[256], vf[256];
    double pool = -1, red = -1;
    CHECK(sscanf(row(shared.text, "hits by level", lv, sizeof lv), " pool %lf%% + redis %lf%%", &pool, &red) == 2);
    CHECK(red > 5 && pool + red > hs - 0.2 && pool + red < hs + 0.2);
    long long ok = 0;
    CHECK(sscanf(row(shared.text, "verify", vf, sizeof vf), " %lld ok", &ok) == 1 && ok > 1000);
    free(base.text);
    free(shared.text);
    free(dead.text);
    /* Two pkv processes given one key prefix: the second run of a workload is
     * served from what the first stored (and --verify checks every such block). */
    char pfx[64];
    snprintf(pfx, sizeof pfx, "two-runs-%ld:", (long)getpid());
    run_out first = run("sim --requests 120 --no-progress --verify --tier %s --redis-prefix %s", url, pfx);
    run_out second = run("sim --requests 120 --no-progress --verify --tier %s --redis-prefix %s", url, pfx);
    run_out nopfx = run("sim --requests 12 --no-progress --redis-prefix %s", pfx);
    CHECK_RUN(first, 0, "redis, shared");
    CHECK_RUN(second, 0, "redis, shared");
    CHECK_RUN(nopfx, 2, "--redis-prefix has no effect without --tier redis://HOST:PORT");
    double r1 = -1, r2 = -1, p1 = -1, p2 = -1;
    CHECK(sscanf(row(first.text, "hits by level", lv, sizeof lv), " pool %lf%% + redis %lf%%", &p1, &r1) == 2);
    CHECK(sscanf(row(second.text, "hits by level", lv, sizeof lv), " pool %lf%% + redis %lf%%", &p2, &r2) == 2);
    double h1 = row_percent(first.text, "prefix hit rate"), h2 = row_percent(second.text, "prefix hit rate");
    fprintf(stderr, "test_redis: two pkv processes, one prefix: hit rate %.1f%% then %.1f%% (redis %.1f%% then %.1f%%)\n",
            h1, h2, r1, r2);
    CHECK(r2 > r1 + 10 && h2 > h1 + 10);
    CHECK(strstr(second.text, "verify") && strstr(second.text, " ok"));
    free(first.text);
    free(second.text);
    free(nopfx.text);
}

int main(int argc, char **argv) {
    (void)argc;
    signal(SIGPIPE, SIG_IGN);
    atexit(kill_servers);
    test_key_slot();
    test_value_mac();
    test_open_errors();
    snprintf(g_tmp, sizeof g_tmp, "/tmp/pkv_redis_XXXXXX");
    if (!mkdtemp(g_tmp)) return 2;
    server s = {0};
    const char *env = getenv("PKV_REDIS_URL");
    char url[256];
    int port;
    if (env && *env) {
        snprintf(url, sizeof url, "%s", env);
        const char *colon = strrchr(env, ':');
        port = colon ? atoi(colon + 1) : 6379;
    } else {
        s.port = port = free_port();
        snprintf(s.dir, sizeof s.dir, "%s/standalone", g_tmp);
        server_start(&s);
        snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    }
    fprintf(stderr, "test_redis: two processes on %s\n", url);
    test_two_processes(url, "pkv-test:", 5);
    fprintf(stderr, "test_redis: extra keys across processes\n");
    test_shared_extras(url, "pkv-extras:", 4);
    fprintf(stderr, "test_redis: values that lie\n");
    test_bad_values(url, port);
    fprintf(stderr, "test_redis: a model-based run of two caches\n");
    test_model(url, "model:");
    fprintf(stderr, "test_redis: the model on thread-safe caches, 3 threads\n");
    test_model_threads(url, "model-mt:");
    fprintf(stderr, "test_redis: an unshared Redis tier\n");
    test_unshared(url, port);
    fprintf(stderr, "test_redis: pkv sim, a fleet sharing Redis\n");
    if (clirun_find_bin(argv[0], "test_redis") == 0) test_sim_fleet(url, free_port());
    else CHECK(0);
    fprintf(stderr, "test_redis: AUTH\n");
    if (s.pid) test_auth(&s);
    fprintf(stderr, "test_redis: cluster\n");

    server cs[3] = {{0}};
    const char *cenv = getenv("PKV_REDIS_CLUSTER_URL");
    char curl[256];
    int cports[3] = {0};
    if (cenv && *cenv) {
        snprintf(curl, sizeof curl, "%s", cenv);
        const char *p = strstr(cenv, "://");
        if (p) p += 3;
        for (int i = 0; i < 3 && p; i++) {
            p = strchr(p, ':');
            if (p) cports[i] = atoi(++p);
        }
        test_cluster_spread(curl, cports, 3);
    } else if (start_cluster(cs, curl, sizeof curl)) {
        for (int i = 0; i < 3; i++) cports[i] = cs[i].port;
        test_cluster_spread(curl, cports, 3);
    } else {
        TEST_FAIL_("could not start a 3-master cluster (redis-cli --cluster create)");
    }
    for (int i = 0; i < 3; i++) server_stop(&cs[i]);
    server_stop(&s);
    fprintf(stderr, "test_redis: faults\n");
    test_faults();
    char rm[300];
    snprintf(rm, sizeof rm, "rm -rf %s", g_tmp);
    if (system(rm) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    return test_report("test_redis");
}

#endif
