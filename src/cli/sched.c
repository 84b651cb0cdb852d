/* The scheduler of `pkv sim`: a discrete-step continuous-batching server.
 *
 * One step is one model iteration. In order:
 *  1. requests whose arrival time has come join the waiting queue (a chat's
 *     next turn arrives a think time after its previous turn finished);
 *  2. every running sequence past prefill appends one token (decode);
 *  3. running requests still in prefill get the next chunk of their prompt,
 *     then waiting requests are admitted, oldest first, while the step's token
 *     budget lasts, fewer than max_seqs are running, and the pool would keep
 *     more than the watermark available (free + evictable blocks) after the
 *     first chunk. Admission starts with pkv_prefix_lookup, so a cached prefix
 *     is neither recomputed nor stored twice; a prompt cached whole is
 *     truncated by one token, which is appended again (copy-on-write) to
 *     yield the first output, as the lookup's contract says;
 *  4. an append refused with PKV_ERR_CAPACITY preempts the newest running
 *     request (recompute policy, as vLLM v1): its sequences are freed, it goes
 *     back to the front of the queue and later prefills its prompt and the
 *     tokens it had generated again (n > 1 requests restart from scratch);
 *  5. the step's time comes from the cost model:
 *       t = a + b * (prefill tokens + decode tokens) + c * (context tokens read)
 *     a: fixed per-step time (weights read, launch), b: compute per token,
 *     c = bytes of one token's KV over all layers / KV read bandwidth. The
 *     defaults describe an 8-GPU node serving a DeepSeek-V3-class MLA model
 *     (a = 12 ms, b = 25 us, bandwidth 3 TB/s); they set the time axis only,
 *     KV behaviour does not depend on them.
 * Full blocks are registered in the prefix cache (pkv_prefix_register) as they
 * fill; a finished request's sequences are freed, and its registered blocks
 * stay findable (evictable) until the pool reclaims them, LRU.
 *
 * --hybrid (a Gemma-3-like model, hybrid.c): the L layers are two KV groups,
 * ceil(L / 6) full-attention layers and the rest sliding-window layers of W
 * tokens, and every sequence is a pkv_groups sequence: lookup, append
 * (AUTO_REGISTER registers as blocks fill), truncate, fork and free go through
 * pkv_groups_*, which take blocks in both pools or in neither. An append is
 * refused (PKV_ERR_CAPACITY: preemption as above) when either pool is short;
 * admission needs every pool above its own watermark after the first chunk
 * (pkv_groups_blocks_needed per group). One token's KV is the same bytes per
 * layer, but a window layer keeps and reads only its window, so the read term
 * becomes
 *       c_full * (context tokens read) + c_window * (window tokens read)
 *     c_full, c_window = bytes of one token's KV over the full / window
 *     layers / bandwidth; a decode reads min(context, W) window tokens, a
 *     prefill chunk of C tokens min(context, W + C - 1) (the union of its
 *     queries' windows).
 * This file is one engine instance; fleet.c runs one or more of them in
 * simulated time behind a router. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/engine.h"

int sim_cache_stats(pkv_cache *cache, pkv_stats *out) {
    memset(out, 0, sizeof *out);
    out->size = sizeof *out;
    return pkv_cache_stats(cache, out);
}

int64_t sim_token_bytes(int32_t kv_dtype) {
    switch (kv_dtype) {
    case PKV_F32: return 2304;
    case PKV_F16:
    case PKV_BF16: return 1152;
    case PKV_FP8_MLA656: return 656;
    default: return 0;
    }
}

int32_t sim_pool_blocks(const sim_config *cfg) {
    if (cfg->pool_blocks > 0) return cfg->pool_blocks;
    int32_t layers = cfg->layers;
    if (cfg->hybrid) { /* the split comes with the workload (hybrid.c); this bounds it */
        int32_t full = sim_group_layers(cfg, 0), window = sim_group_layers(cfg, 1);
        layers = full < window ? full : window;
        if (layers < 1) layers = 1;
    }
    double per_block = (double)cfg->block_size * (double)sim_token_bytes(cfg->kv_dtype) * layers;
    double b = floor(cfg->kv_mem_gib * 1073741824.0 / per_block);
    if (b > INT32_MAX) b = INT32_MAX;
    return b < 1 ? 1 : (int32_t)b;
}

double sim_cache_bytes(const sim_config *cfg) {
    /* The library's per-block metadata (pool state and LRU links; with prefix
     * caching the index entry, its hash-table slots and the block's token ids)
     * plus the token ids that sequences keep; --verify adds host arenas. */
    double nb = sim_pool_blocks(cfg), bs = cfg->block_size;
    double per_block = 24 + 4 * bs + (cfg->prefix_cache ? 128 + 4 * bs : 0);
    double rows = cfg->verify ? bs * 2.0 * VERIFY_H_KV * (VERIFY_D + VERIFY_DV) : sim_host_mode(cfg) ? bs * 8.0 : 0;
    per_block += rows;
    /* a tier's block: its index entry, slot and links (about 100 B) and token
     * ids; in host mode a host or file tier also holds the block's rows */
    double tiers = 0;
    for (int32_t t = 0; t < cfg->ntiers; t++)
        tiers += (double)sim_tier_blocks(cfg, t) * (112 + 4 * bs + (cfg->tier_kind[t] != SIM_TIER_REDIS ? rows : 0));
    return nb * per_block + tiers;
}

const char *sim_tier_name(const sim_config *cfg, int32_t t) {
    static const char *const names[] = {"host", "file", "redis"};
    return names[cfg->tier_kind[t]];
}

double sim_tier_bw(const sim_config *cfg, int32_t t) {
    return cfg->tier_kind[t] == SIM_TIER_REDIS ? cfg->net_bw : cfg->tier_kind[t] == SIM_TIER_FILE ? cfg->ssd_bw
                                                                                                   : cfg->host_bw;
}

int sim_host_mode(const sim_config *cfg) {
    for (int32_t t = 0; t < cfg->ntiers; t++)
        if (cfg->tier_kind[t] == SIM_TIER_REDIS) return 1;
    return cfg->verify;
}

int64_t sim_tier_blocks(const sim_config *cfg, int32_t t) {
    if (cfg->tier_kind[t] == SIM_TIER_REDIS) { /* the entries one cache indexes; Redis bounds the rest */
        int64_t b = 4 * (int64_t)sim_pool_blocks(cfg);
        return b < 4096 ? 4096 : b > INT32_MAX / 4 ? INT32_MAX / 4 : b;
    }
    double per_block = (double)cfg->block_size * (double)sim_token_bytes(cfg->kv_dtype) * cfg->layers;
    double b = floor(cfg->tier_gib[t] * 1073741824.0 / per_block);
    if (b > (double)(INT32_MAX / 4)) b = (double)(INT32_MAX / 4);
    return b < 1 ? 1 : (int64_t)b;
}

/* Counter k (0: hits, 1: stores) of tier t. */
static int64_t tier_counter(engine *e, int32_t t, int k) {
    pkv_tier_stats ts = PKV_TIER_STATS_INIT;
    if (LIB(e, pkv_tier_stats_get(e->cache, t, &ts)) != PKV_OK) return 0;
    return k ? ts.stores : ts.hits;
}

/* The engine's side of the tiers at the end of a step: the transfer list is
 * drained (metadata mode: these are the copies a GPU engine would launch
 * before the step's kernels) and the step pays for the blocks each tier moved
 * (promotions out of it, offloads and demotions into it, swaps) at its
 * bandwidth: host tiers --host-bw-gbs (PCIe), file tiers --ssd-bw-gbs. */
static double transfer_time(engine *e) {
    const sim_config *cfg = e->f->cfg;
    if (!cfg->ntiers) return 0;
    pkv_tier_transfer x[256];
    int32_t n;
    if (!sim_host_mode(cfg)) /* host mode: the library copies; there is no list */
        do {
            if (LIB(e, pkv_tier_transfers_drain(e->cache, x, 256, &n)) != PKV_OK) break;
        } while (n == 256);
    double block = (double)e->bs * (double)sim_token_bytes(cfg->kv_dtype) * cfg->layers, s = 0;
    for (int32_t t = 0; t < cfg->ntiers; t++) {
        int64_t hits = tier_counter(e, t, 0), stores = tier_counter(e, t, 1);
        int64_t out = hits - e->tier_last[t][0], in = stores - e->tier_last[t][1];
        e->tier_last[t][0] = hits;
        e->tier_last[t][1] = stores;
        e->res->tier_blocks_out[t] += out;
        e->res->tier_blocks_in[t] += in;
        s += (double)(out + in) * block / sim_tier_bw(cfg, t);
    }
    /* A swap goes to tier 0's slots (metadata mode) or to host memory (host mode). */
    s += (double)e->step_swap_blocks * block / (sim_host_mode(cfg) ? cfg->host_bw : sim_tier_bw(cfg, 0));
    e->step_swap_blocks = 0;
    return s;
}

static int lib_fail(engine *e, const char *what, int st) {
    const char *why = e->groups ? pkv_groups_last_error(e->groups) : pkv_cache_last_error(e->cache);
    fprintf(stderr, "pkv sim: %s failed: %s%s%s\n", what, pkv_strerror(st), *why ? ": " : "", why);
    e->f->fatal = EXIT_LIB;
    return EXIT_LIB;
}

/* ---- queues ---- */
void engine_enqueue(engine *e, int32_t id) {
    e->ring[(e->ring_head + e->ring_n++) % e->ring_cap] = id;
}
static void ring_push_front(engine *e, int32_t id) {
    e->ring_head = (e->ring_head + e->ring_cap - 1) % e->ring_cap;
    e->ring[e->ring_head] = id;
    e->ring_n++;
}
static int32_t ring_front(const engine *e) { return e->ring[e->ring_head]; }
static void ring_pop_front(engine *e) {
    e->ring_head = (e->ring_head + 1) % e->ring_cap;
    e->ring_n--;
}

static void touch(engine *e, int32_t id) {
    rstate *st = &e->f->rs[id];
    if (!st->touched) {
        st->touched = 1;
        e->touched[e->ntouched++] = id;
    }
}

/* ---- sequences ---- */
static int32_t blocks_for(const engine *e, int64_t len) { return (int32_t)((len + e->bs - 1) / e->bs); }

static int32_t *scratch(engine *e, int32_t n) {
    if (n > e->scratch_cap) {
        int32_t *p = realloc(e->scratch, (size_t)n * sizeof *p);
        if (!p) return NULL;
        e->scratch = p;
        e->scratch_cap = n;
    }
    return e->scratch;
}

/* Appends tokens [len, len+n) of sample k of request id. Returns PKV_OK,
 * PKV_ERR_CAPACITY, or another status (fatal). */
static int append_tokens(engine *e, int32_t id, int32_t k, int32_t n) {
    const sim_request *r = &e->f->w->req[id];
    rstate *st = &e->f->rs[id];
    int32_t start = st->len[k];
    const int32_t *toks;
    int32_t one[1];
    if (r->prompt && start + n <= r->prompt_len) {
        toks = r->prompt + start;
    } else if (n == 1) {
        one[0] = sim_token(r, k, start);
        toks = one;
    } else {
        int32_t *buf = scratch(e, n);
        if (!buf) return PKV_ERR_NOMEM;
        sim_tokens(r, k, start, n, buf);
        toks = buf;
    }
    pkv_block_copy cow;
    int64_t slots_small[1];
    int64_t *slots = NULL;
    int64_t *slots_heap = NULL;
    if (e->verify) {
        slots = n == 1 ? slots_small : (slots_heap = malloc((size_t)n * sizeof *slots));
        if (!slots) return PKV_ERR_NOMEM;
    }
    pkv_block_copy gcow[SIM_MAX_GROUPS];
    int rc = e->groups ? LIB(e, pkv_groups_append(e->groups, st->seq[k], n, toks, NULL, gcow))
                       : LIB(e, pkv_seq_append(e->cache, st->seq[k], n, toks, slots, e->verify ? NULL : &cow));
    if (rc == PKV_OK && e->verify) {
        /* Host mode: the K/V rows every token would have, written at its slot. */
        float kv[VERIFY_H_KV * (VERIFY_D + VERIFY_DV)];
        for (int32_t i = 0; i < n && rc == PKV_OK; i++) {
            verify_rows(toks[i], start + i, kv, kv + VERIFY_H_KV * VERIFY_D);
            rc = LIB(e, pkv_store_write(e->cache, 0, &slots[i], 1, kv, kv + VERIFY_H_KV * VERIFY_D, PKV_F32));
        }
    }
    free(slots_heap);
    if (rc != PKV_OK) return rc;
    st->len[k] = start + n;
    st->shared_tail[k] = 0;
    if (e->prefix && !e->groups && (start + n) / e->bs > start / e->bs) {
        int32_t reg = 0, dedup = 0;
        rc = LIB(e, pkv_prefix_register(e->cache, st->seq[k], &reg, &dedup));
        if (rc != PKV_OK) return rc;
    }
    return PKV_OK;
}

static void free_request_seqs(engine *e, int32_t id) {
    rstate *st = &e->f->rs[id];
    for (int32_t k = 0; k < st->nseq; k++)
        LIB(e, e->groups ? pkv_groups_free(e->groups, st->seq[k]) : pkv_seq_free(e->cache, st->seq[k]));
    st->nseq = 0;
}

static void run_remove(engine *e, int32_t id) {
    for (int32_t i = 0; i < e->nrun; i++)
        if (e->run[i] == id) {
            memmove(e->run + i, e->run + i + 1, (size_t)(e->nrun - i - 1) * sizeof *e->run);
            e->nrun--;
            return;
        }
}

/* Swap preemption (--preempt swap) of running request id: its one sequence
 * goes to tier 0 and keeps its state. 0 when it was swapped out; -1 when it
 * cannot be (n > 1, or tier 0 is full of other swapped sequences): recompute. */
static int preempt_swap(engine *e, int32_t id) {
    rstate *st = &e->f->rs[id];
    if (!e->f->cfg->preempt_swap) return -1;
    if (st->nseq != 1 || LIB(e, pkv_seq_swap_out(e->cache, st->seq[0])) != PKV_OK) {
        e->res->swap_fallbacks++;
        return -1;
    }
    run_remove(e, id);
    st->state = R_WAITING;
    st->swapped = 1;
    st->preempted++;
    st->preempt_step = e->res->steps;
    e->res->preemptions++;
    e->res->swaps_out++;
    e->step_swap_blocks += blocks_for(e, st->len[0]);
    ring_push_front(e, id);
    return 0;
}

/* Brings swapped request id back when the pool has room for its blocks above
 * the watermark. Returns 1 (running again), 0 (must wait), or a negative
 * fatal status. */
static int resume_swapped(engine *e, int32_t id) {
    rstate *st = &e->f->rs[id];
    int32_t need = blocks_for(e, st->len[0]);
    pkv_stats stats = PKV_STATS_INIT;
    LIB(e, sim_cache_stats(e->cache, &stats));
    if (stats.free_blocks + stats.evictable_blocks - need < e->watermark_blocks) return 0;
    int rc = LIB(e, pkv_seq_swap_in(e->cache, st->seq[0]));
    if (rc == PKV_ERR_CAPACITY) return 0;
    if (rc != PKV_OK) return lib_fail(e, "pkv_seq_swap_in", rc), -1;
    st->swapped = 0;
    st->state = R_RUNNING;
    st->admit = e->admit_counter++;
    e->run[e->nrun++] = id;
    e->res->swaps_in++;
    e->res->swap_blocks += 2 * need; /* out and back in */
    e->step_swap_blocks += need;
    /* Swapped out in the step that finished its prefill or its last token, it
     * missed that step's bookkeeping: this step's end does it. */
    touch(e, id);
    return 1;
}

/* Recompute preemption of running request id. */
static void preempt(engine *e, int32_t id) {
    const sim_request *r = &e->f->w->req[id];
    rstate *st = &e->f->rs[id];
    if (preempt_swap(e, id) == 0) return;
    int64_t kv = 0;
    for (int32_t k = 0; k < st->nseq; k++) kv += st->len[k];
    e->res->recomputed_tokens += kv;
    free_request_seqs(e, id);
    run_remove(e, id);
    st->state = R_WAITING;
    st->preempted++;
    st->preempt_step = e->res->steps;
    e->res->preemptions++;
    if (r->n_samples == 1 && st->gen[0] > 0) {
        st->target = r->prompt_len + st->gen[0] - 1;
    } else {
        st->target = r->prompt_len;
        for (int32_t k = 0; k < SIM_MAX_SAMPLES; k++) st->gen[k] = 0;
    }
    for (int32_t k = 0; k < SIM_MAX_SAMPLES; k++) st->len[k] = 0;
    st->prefilling = 1;
    ring_push_front(e, id);
}

/* Appends with preemption of the newest running request on PKV_ERR_CAPACITY.
 * Returns PKV_OK, 1 when request id itself was preempted, or a fatal status. */
static int append_or_preempt(engine *e, int32_t id, int32_t k, int32_t n) {
    for (;;) {
        int rc = append_tokens(e, id, k, n);
        if (rc != PKV_ERR_CAPACITY) return rc;
        int32_t victim = e->run[e->nrun - 1];
        preempt(e, victim);
        if (victim == id) return 1;
    }
}

/* Whether request r can ever run alone in the pool. */
static int fits_pool(const engine *e, const sim_request *r) {
    if (e->groups) return hybrid_fits(e, r);
    int64_t need = blocks_for(e, (int64_t)r->prompt_len + r->output_len) +
                   (int64_t)(r->n_samples - 1) * (blocks_for(e, r->output_len) + 1);
    return need <= e->num_blocks - e->watermark_blocks;
}

/* The first n tokens of sample 0 of request id (its prompt, and after a
 * preemption the tokens it had generated). NULL when out of memory. */
static const int32_t *prefix_tokens(engine *e, int32_t id, int32_t n) {
    const sim_request *r = &e->f->w->req[id];
    if (r->prompt && n <= r->prompt_len) return r->prompt;
    int32_t *buf = scratch(e, n);
    if (buf) sim_tokens(r, 0, 0, n, buf);
    return buf;
}

int engine_probe(engine *e, int32_t id, int32_t *cached) {
    *cached = 0;
    if (!e->prefix) return 0;
    const sim_request *r = &e->f->w->req[id];
    const int32_t *toks = prefix_tokens(e, id, r->prompt_len);
    if (!toks) return cli_error("out of memory");
    /* A peek: the router's question takes no references, touches no LRU order
     * and promotes nothing from the tiers. */
    int rc = e->groups ? hybrid_peek(e, toks, r->prompt_len, cached)
                       : LIB(e, pkv_prefix_peek(e->cache, 0, toks, r->prompt_len, cached, NULL));
    if (rc != PKV_OK) return lib_fail(e, "pkv_prefix_peek", rc);
    return 0;
}

/* Tries to admit the front waiting request with a first chunk of at most
 * budget tokens. Returns the tokens prefilled (> 0), 0 when it must wait, or
 * a negative fatal status. */
static int32_t admit(engine *e, int32_t id, int32_t budget) {
    rstate *st = &e->f->rs[id];
    int32_t n = st->target;
    const int32_t *toks = prefix_tokens(e, id, n);
    if (!toks) return PKV_ERR_NOMEM;
    pkv_seq seq;
    int32_t cached = 0;
    int rc;
    int64_t tier_hits0[SIM_MAX_TIERS];
    for (int32_t t = 0; t < e->f->cfg->ntiers; t++) tier_hits0[t] = tier_counter(e, t, 0);
    if (e->groups) {
        rc = hybrid_lookup(e, toks, n, &seq, &cached);
        if (rc != PKV_OK) return lib_fail(e, e->prefix ? "pkv_groups_lookup" : "pkv_groups_seq_create", rc), -1;
    } else if (e->prefix) {
        rc = LIB(e, pkv_prefix_lookup(e->cache, 0, toks, n, &seq, &cached));
        if (rc != PKV_OK) return lib_fail(e, "pkv_prefix_lookup", rc), -1;
        if (cached == n) {
            /* The last prompt token is always computed: it yields the first output. */
            rc = LIB(e, pkv_seq_truncate(e->cache, seq, n - 1));
            if (rc != PKV_OK) return lib_fail(e, "pkv_seq_truncate", rc), -1;
            cached = n - 1;
        }
    } else {
        rc = LIB(e, pkv_seq_create(e->cache, 0, &seq));
        if (rc != PKV_OK) return lib_fail(e, "pkv_seq_create", rc), -1;
    }
    int32_t chunk = n - cached < budget ? n - cached : budget;
    if (e->groups) {
        if (!hybrid_room(e, seq, chunk, n)) {
            LIB(e, pkv_groups_free(e->groups, seq));
            return 0;
        }
    } else {
        int32_t needed = 0;
        pkv_stats stats = PKV_STATS_INIT;
        LIB(e, pkv_seq_blocks_needed(e->cache, seq, chunk, &needed));
        LIB(e, sim_cache_stats(e->cache, &stats));
        if (stats.free_blocks + stats.evictable_blocks - needed < e->watermark_blocks) {
            LIB(e, pkv_seq_free(e->cache, seq));
            return 0;
        }
    }
    st->seq[0] = seq;
    st->nseq = 1;
    st->len[0] = cached;
    rc = append_tokens(e, id, 0, chunk);
    if (rc == PKV_ERR_CAPACITY) { /* cannot happen after the check; stay safe */
        free_request_seqs(e, id);
        return 0;
    }
    if (rc != PKV_OK) return lib_fail(e, e->groups ? "pkv_groups_append" : "pkv_seq_append", rc), -1;
    if (!st->preempted) { /* a resumed request finding its own blocks is not a prefix hit */
        e->res->hit_tokens += cached;
        e->res->query_tokens += n;
        /* the lookup's promotions, per tier (a fully cached prompt's last block is
         * truncated and computed again: not a hit of any tier) */
        int64_t left = cached;
        for (int32_t t = e->f->cfg->ntiers - 1; t >= 0; t--) {
            int64_t got = (tier_counter(e, t, 0) - tier_hits0[t]) * e->bs;
            if (got > left) got = left;
            e->res->tier_hit_tokens[t] += got;
            left -= got;
        }
    }
    st->state = R_RUNNING;
    st->admit = e->admit_counter++;
    e->run[e->nrun++] = id;
    e->res->prompt_tokens_computed += chunk;
    if (st->len[0] == st->target) touch(e, id);
    return chunk;
}

/* Events of the step, stamped with its end time. */
static int finish_step(engine *e, double t_end) {
    fleet *f = e->f;
    for (int32_t i = 0; i < e->ntouched; i++) {
        int32_t id = e->touched[i];
        const sim_request *r = &f->w->req[id];
        rstate *st = &f->rs[id];
        st->touched = 0;
        if (st->state != R_RUNNING) continue;
        if (st->prefilling && st->len[0] == st->target) {
            st->prefilling = 0;
            if (st->gen[0] == 0) {
                if (st->first_token < 0) st->first_token = t_end;
                st->gen[0] = 1;
                for (int32_t k = 1; k < r->n_samples; k++) {
                    int rc = e->groups ? LIB(e, pkv_groups_fork(e->groups, st->seq[0], &st->seq[k]))
                                       : LIB(e, pkv_seq_fork(e->cache, st->seq[0], &st->seq[k]));
                    if (rc != PKV_OK) return lib_fail(e, e->groups ? "pkv_groups_fork" : "pkv_seq_fork", rc);
                    e->res->forks++;
                    st->nseq = k + 1;
                    st->len[k] = st->len[0];
                    st->gen[k] = 1;
                    st->shared_tail[k] = st->shared_tail[0] = (st->len[0] % e->bs) != 0;
                }
                if (r->n_samples > 1) st->nseq = r->n_samples;
            }
        }
        int done = !st->prefilling;
        for (int32_t k = 0; k < r->n_samples && done; k++) done = st->gen[k] >= r->output_len;
        if (done) {
            st->finish = t_end;
            free_request_seqs(e, id);
            run_remove(e, id);
            st->state = R_DONE;
            e->res->done++;
            f->done++;
            e->load--;
            if (r->next >= 0) fleet_push(f, r->next, t_end + f->w->req[r->next].arrival);
        }
    }
    e->ntouched = 0;
    return 0;
}

static void sample(engine *e, const pkv_stats *stats, double t) {
    sim_result *res = e->res;
    if (res->nseries == e->series_cap) {
        int64_t cap = e->series_cap ? e->series_cap * 2 : 4096;
        sim_sample *p = realloc(res->series, (size_t)cap * sizeof *p);
        if (!p) return; /* the chart gets fewer points; the run goes on */
        res->series = p;
        e->series_cap = cap;
    }
    sim_sample *x = &res->series[res->nseries++];
    x->t = (float)t;
    x->used = (float)stats->used_blocks;
    x->cached = (float)stats->evictable_blocks;
    x->free_ = (float)stats->free_blocks;
    x->hit = res->query_tokens ? (float)((double)res->hit_tokens / (double)res->query_tokens) : 0.f;
}

static int32_t verify_token_cb(void *ctx, int32_t i, int32_t pos) {
    engine *e = ctx;
    return sim_token(&e->f->w->req[e->vreq[i]], e->vsample[i], pos);
}

/* Window tokens a read of sequence length len covers for a chunk of n (hybrid). */
static int64_t window_read(const engine *e, int32_t len, int32_t n) {
    int64_t w = (int64_t)e->window + n - 1;
    return len < w ? len : w;
}

static int verify_now(engine *e) {
    int32_t m = 0;
    const sim_config *cfg = e->f->cfg;
    for (int32_t j = 0; j < e->nrun && m < cfg->verify_seqs; j++) {
        int32_t id = e->run[(e->verify_cursor + j) % e->nrun];
        rstate *st = &e->f->rs[id];
        for (int32_t k = 0; k < st->nseq && m < cfg->verify_seqs; k++) {
            e->vseqs[m] = st->seq[k];
            e->vreq[m] = id;
            e->vsample[m] = k;
            m++;
        }
    }
    if (e->nrun) e->verify_cursor = (e->verify_cursor + 1) % e->nrun;
    if (!m) return 0;
    int rc = verify_step(e->verify, e->cache, e->vseqs, m, verify_token_cb, e, cfg->verify_fast,
                         &e->res->verify_max_err, &e->res->verify_fast_max_err);
    e->res->verify_checks += m;
    if (rc) return rc;
    int st = pkv_cache_check(e->cache);
    if (st != PKV_OK) {
        fprintf(stderr, "pkv sim: --verify: pkv_cache_check: %s: %s\n", pkv_strerror(st),
                pkv_cache_last_error(e->cache));
        return EXIT_CHECK;
    }
    return 0;
}

int engine_step(engine *e) {
    fleet *f = e->f;
    const sim_config *cfg = f->cfg;
    int32_t budget = cfg->max_batch_tokens;
    int64_t tokens = 0, ctx = 0, ctx_window = 0;
    int rc;
    /* 2. decode: one token per running sequence past prefill, oldest first */
    for (int32_t i = 0; i < e->nrun; i++) {
        int32_t id = e->run[i];
        rstate *st = &f->rs[id];
        const sim_request *r = &f->w->req[id];
        if (st->prefilling) continue;
        int self_preempted = 0;
        for (int32_t k = 0; k < st->nseq; k++) {
            if (st->gen[k] >= r->output_len) continue;
            rc = append_or_preempt(e, id, k, 1);
            if (rc == 1) { self_preempted = 1; break; }
            if (rc != PKV_OK) return lib_fail(e, e->groups ? "pkv_groups_append" : "pkv_seq_append", rc);
            st->gen[k]++;
            tokens++;
            budget--;
            ctx += st->len[k];
            if (e->groups) ctx_window += window_read(e, st->len[k], 1);
            touch(e, id);
        }
        if (self_preempted) i--; /* it was the newest: nothing after it, loop ends */
    }
    /* 3a. continue chunked prefills */
    for (int32_t i = 0; i < e->nrun && budget > 0; i++) {
        int32_t id = e->run[i];
        rstate *st = &f->rs[id];
        if (!st->prefilling) continue;
        int32_t chunk = st->target - st->len[0];
        if (chunk > budget) chunk = budget;
        rc = append_or_preempt(e, id, 0, chunk);
        if (rc == 1) break;
        if (rc != PKV_OK) return lib_fail(e, e->groups ? "pkv_groups_append" : "pkv_seq_append", rc);
        budget -= chunk;
        tokens += chunk;
        ctx += st->len[0];
        if (e->groups) ctx_window += window_read(e, st->len[0], chunk);
        e->res->prompt_tokens_computed += chunk;
        if (st->len[0] == st->target) touch(e, id);
    }
    /* 3b. admission */
    while (e->ring_n > 0 && budget > 0 && e->nrun < cfg->max_seqs) {
        int32_t id = ring_front(e);
        if (f->rs[id].preempt_step == e->res->steps) break; /* not back in the step that evicted it */
        if (f->rs[id].swapped) {
            int got = resume_swapped(e, id);
            if (got < 0) return EXIT_LIB;
            if (got == 0) break;
            ring_pop_front(e);
            continue;
        }
        if (!fits_pool(e, &f->w->req[id])) {
            ring_pop_front(e);
            f->rs[id].state = R_REJECTED;
            e->res->rejected++;
            f->rejected++;
            e->load--;
            int32_t next = f->w->req[id].next;
            /* the chat goes on; its next turn (longer still) will be refused too */
            if (next >= 0) fleet_push(f, next, e->now + f->w->req[next].arrival);
            continue;
        }
        int32_t got = admit(e, id, budget);
        if (got < 0) return EXIT_LIB;
        if (got == 0) break;
        ring_pop_front(e);
        budget -= got;
        tokens += got;
        ctx += f->rs[id].len[0];
        if (e->groups) ctx_window += window_read(e, f->rs[id].len[0], got);
    }
    if (e->nrun > e->res->peak_running) e->res->peak_running = e->nrun;
    /* 5. time */
    double c = (double)sim_token_bytes(cfg->kv_dtype) * cfg->layers / cfg->kv_bw;
    double dt = cfg->cost_a + cfg->cost_b * (double)tokens + c * (double)ctx;
    if (e->groups) {
        double row = (double)sim_token_bytes(cfg->kv_dtype) / cfg->kv_bw;
        dt = cfg->cost_a + cfg->cost_b * (double)tokens + row * sim_group_layers(cfg, 0) * (double)ctx +
             row * sim_group_layers(cfg, 1) * (double)ctx_window;
    }
    if (tokens == 0) dt = 0;
    double xfer = transfer_time(e);
    dt += xfer;
    e->res->transfer_s += xfer;
    e->last_tokens = tokens;
    e->res->tokens_computed += tokens;
    double t_end = e->now + dt;
    rc = finish_step(e, t_end);
    if (rc) return rc;
    e->now = t_end;
    e->res->steps++;

    pkv_stats stats = PKV_STATS_INIT;
    double occupancy = 0;
    int32_t full_used = 0; /* hybrid: utilization and waste are the full group's (it holds every token) */
    if (e->groups) hybrid_stats(e, &stats, &occupancy, &full_used);
    else LIB(e, sim_cache_stats(e->cache, &stats));
    int64_t waste = 0;
    for (int32_t i = 0; i < e->nrun; i++) {
        rstate *st = &f->rs[e->run[i]];
        for (int32_t k = 0; k < st->nseq; k++)
            if (!st->shared_tail[k] || k == 0) waste += (int64_t)blocks_for(e, st->len[k]) * e->bs - st->len[k];
    }
    int64_t slots = (int64_t)(e->groups ? full_used : stats.used_blocks) * e->bs;
    if (slots > 0) {
        e->waste_sum += (double)waste / (double)slots;
        e->util_sum += 1.0 - (double)waste / (double)slots;
    }
    e->occ_sum += e->groups ? occupancy : (double)stats.used_blocks / (double)stats.num_blocks;
    sample(e, &stats, t_end);
    if (cfg->verify) {
        rc = verify_now(e);
        if (rc) return rc;
    }
    return 0;
}

/* The engine's one cache (not hybrid) and its tiers. */
static int cache_init(engine *e, sim_result *res) {
    const sim_config *cfg = e->f->cfg;
    fleet *f = e->f;
    e->num_blocks = sim_pool_blocks(cfg);
    e->watermark_blocks = (int32_t)ceil(cfg->watermark * e->num_blocks);
    res->num_blocks = e->num_blocks;

    pkv_config pc;
    pkv_config_init(&pc);
    pc.num_blocks = e->num_blocks;
    pc.block_size = cfg->block_size;
    pc.flags = e->prefix ? PKV_FLAG_PREFIX_CACHE : 0;
    pc.hash_key_set = 1;
    for (int i = 0; i < 16; i++) pc.hash_key[i] = (uint8_t)(0x5a + i);
    if (cfg->verify) {
        pc.storage = PKV_STORAGE_HOST;
        pc.num_layers = 1;
        pc.h_kv = VERIFY_H_KV;
        pc.d = VERIFY_D;
        pc.dv = VERIFY_DV;
        pc.v_separate = 1;
        pc.kv_dtype = PKV_BF16;
    } else if (sim_host_mode(cfg)) { /* a Redis tier stores bytes: rows of 4 bf16, never written */
        pc.storage = PKV_STORAGE_HOST;
        pc.num_layers = 1;
        pc.h_kv = 1;
        pc.d = pc.dv = 4;
        pc.v_separate = 0;
        pc.kv_dtype = PKV_BF16;
    }
    int st = pkv_cache_create(&pc, &e->cache);
    if (st != PKV_OK) {
        fprintf(stderr, "pkv sim: cannot create a cache of %d blocks of %d: %s\n", e->num_blocks, e->bs,
                pkv_strerror(st));
        return EXIT_LIB;
    }
    for (int32_t t = 0; t < cfg->ntiers; t++) {
        int64_t cap = sim_tier_blocks(cfg, t);
        if (cfg->tier_kind[t] == SIM_TIER_REDIS) {
            /* Shared; on tier 0 also written through, so the other instances
             * see a block as soon as it is registered. */
            pkv_tier_backend be;
            char detail[256] = "";
            st = pkv_tier_redis_open(cfg->redis_url, pc.hash_key, f->redis_prefix, 0, &be, detail);
            if (st != PKV_OK) {
                fprintf(stderr, "pkv sim: cannot open the Redis tier %s: %s%s%s\n", cfg->redis_url, pkv_strerror(st),
                        *detail ? ": " : "", detail);
                return EXIT_LIB;
            }
            st = pkv_cache_add_tier(e->cache, &be, cap, PKV_TIER_SHARED | (t == 0 ? PKV_TIER_WRITE_THROUGH : 0));
        } else {
            st = pkv_cache_add_host_tier(e->cache, cap, 0);
        }
        if (st != PKV_OK) {
            fprintf(stderr, "pkv sim: cannot add tier %d (%s) of %lld blocks: %s: %s\n", t, sim_tier_name(cfg, t),
                    (long long)cap, pkv_strerror(st), pkv_cache_last_error(e->cache));
            return EXIT_LIB;
        }
        res->tier_capacity[t] = cap;
    }
    return 0;
}

int engine_init(engine *e, fleet *f, int32_t idx, sim_result *res) {
    const sim_config *cfg = f->cfg;
    memset(e, 0, sizeof *e);
    e->f = f;
    e->idx = idx;
    e->res = res;
    e->bs = cfg->block_size;
    e->prefix = cfg->prefix_cache;
    int rc = cfg->hybrid ? hybrid_init(e) : cache_init(e, res);
    if (rc) return rc;
    int32_t n = f->w->n;
    e->ring_cap = n;
    e->ring = malloc((size_t)n * sizeof *e->ring);
    e->run = malloc((size_t)n * sizeof *e->run);
    e->touched = malloc((size_t)n * sizeof *e->touched);
    if (!e->ring || !e->run || !e->touched) return cli_error("out of memory"), EXIT_LIB;
    if (cfg->verify) {
        int32_t max_ctx = 0;
        for (int32_t i = 0; i < n; i++)
            if (f->w->req[i].prompt_len + f->w->req[i].output_len > max_ctx)
                max_ctx = f->w->req[i].prompt_len + f->w->req[i].output_len;
        e->vseqs = malloc((size_t)cfg->verify_seqs * sizeof *e->vseqs);
        e->vreq = malloc((size_t)cfg->verify_seqs * sizeof *e->vreq);
        e->vsample = malloc((size_t)cfg->verify_seqs * sizeof *e->vsample);
        if (!e->vseqs || !e->vreq || !e->vsample || verify_create(max_ctx, &e->verify))
            return cli_error("out of memory"), EXIT_LIB;
    }
    return 0;
}

void engine_finish(engine *e) {
    sim_result *res = e->res;
    /* The clock's own cost, measured back to back, is not the library's. */
    int64_t overhead = INT64_MAX;
    for (int i = 0; i < 1000; i++) {
        int64_t a = cli_now_ns(), b = cli_now_ns();
        if (b - a < overhead) overhead = b - a;
    }
    int64_t lib_ns = e->lib_ns - overhead * e->lib_calls;
    if (lib_ns < 0) lib_ns = 0;
    res->clock_ns = (double)overhead;
    res->lib_calls = e->lib_calls;
    if (res->steps) res->lib_us_per_step = (double)lib_ns * 1e-3 / (double)res->steps;
    res->lib_ns_per_call = e->lib_calls ? (double)lib_ns / (double)e->lib_calls : 0;
    res->sim_time = e->now;
    if (res->steps) {
        res->kv_util = e->util_sum / (double)res->steps;
        res->waste = e->waste_sum / (double)res->steps;
        res->occupancy = e->occ_sum / (double)res->steps;
    }
    res->hit_rate = res->query_tokens ? (double)res->hit_tokens / (double)res->query_tokens : 0;
    if (e->groups) {
        hybrid_finish(e);
    } else {
        pkv_stats stats = PKV_STATS_INIT;
        sim_cache_stats(e->cache, &stats);
        res->peak_blocks = stats.peak_used_blocks;
        res->evictions = stats.evictions;
        res->cow_copies = stats.cow_copies;
        res->dedups = stats.dedups;
    }
    for (int32_t t = 0; t < e->f->cfg->ntiers; t++) {
        pkv_tier_stats ts = PKV_TIER_STATS_INIT;
        if (pkv_tier_stats_get(e->cache, t, &ts) == PKV_OK) res->tier_errors[t] = ts.errors;
    }
}

void engine_destroy(engine *e) {
    free(e->ring);
    free(e->run);
    free(e->touched);
    free(e->scratch);
    free(e->vseqs);
    free(e->vreq);
    free(e->vsample);
    verify_destroy(e->verify);
    pkv_groups_destroy(e->groups);
    pkv_cache_destroy(e->cache);
    memset(e, 0, sizeof *e);
}
