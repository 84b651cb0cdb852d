/* Private interface of the Redis tier (tier_redis.c): the key slot function
 * and counters for the tests and the benchmark. */
#ifndef PKV_TIER_REDIS_H
#define PKV_TIER_REDIS_H

#include "internal.h"

/* Redis Cluster's slot of a key: CRC16 (XMODEM) of the key, or of the text
 * inside its first non-empty {hash tag}, modulo 16384. */
unsigned pkv__redis_key_slot(const char *key, size_t len) PKV_HIDDEN;

/* Counters of an open Redis tier (its ctx); all zero in a build without REDIS=1. */
typedef struct pkv__tier_redis_info_t {
    int64_t errors;       /* commands or connections that failed (not "not found") */
    int64_t connects;     /* connections made (the first ones and reconnects) */
    int64_t refused;      /* calls answered at once while a node waited out its backoff */
    int64_t mac_failures; /* values that failed the MAC or length check (served as misses) */
    int64_t redirects;    /* MOVED / ASK replies followed */
    int64_t round_trips;  /* pipelines sent (one per node per batch call) */
    int32_t nodes;        /* nodes known (1 standalone; the masters of a cluster) */
} pkv__tier_redis_info_t;
void pkv__tier_redis_info(void *ctx, pkv__tier_redis_info_t *out) PKV_HIDDEN;

#ifdef PKV_REDIS
/* The MAC stored after a blob under block key `key` by caches of hash_key,
 * with NH body isa (0 portable, 1 AVX2, 2 AVX-512; capped to what this CPU
 * runs), for the tests: every body must give the same bits. */
void pkv__redis_value_mac(const uint8_t hash_key[16], const uint8_t key[16], const void *blob, size_t len, int isa,
                          uint8_t mac[16]) PKV_HIDDEN;
#endif

#endif
