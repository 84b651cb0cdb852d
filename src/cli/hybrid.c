/* `pkv sim --hybrid`: the KV of a Gemma-3-like model as two pkv_groups
 * groups, a full-attention group of ceil(L / 6) layers and a sliding-window
 * group of the other layers (window W), each a metadata-mode cache whose
 * blocks carry its layers' bytes. sched.c drives the group sequences; this
 * file makes the groups and answers the scheduler's questions that involve
 * every pool: room for an append above each watermark, whether a request can
 * ever fit, cached prompt tokens, occupancy, final counters.
 *
 * The budget: --kv-mem-gib is split by pkv_groups_blocks_for_bytes so that
 * both pools run out at the same number of sequences of the workload's mean
 * context (prompt + output). The mean, not the longest: a window group needs
 * the blocks of min(context, W), so a split for the longest context would
 * starve the window pool of the many short sequences. A window sequence in
 * prefill holds more than its window: an append takes its chunk's blocks
 * before it releases what left the window, so a prefill of chunks of C
 * tokens peaks at W + 2C tokens. The window pool therefore first gets the
 * blocks of two steps' prefill (2 * --max-batch-tokens, and two for block
 * edges) off the top of the budget, and admission wants room in the window
 * pool for that peak (hybrid_room): without both, prefills run the window pool
 * dry while the full pool has room, and the newest request is preempted and
 * admitted again step after step.
 *
 * Prefix caching: both groups register as blocks fill (AUTO_REGISTER: groups
 * have no register call); a lookup hits the longest length both groups serve,
 * which in the window group needs that length's last window still in its
 * pool. A library that refuses prefix caching on a window cache
 * (PKV_ERR_INVALID, before 1.3's window prefix caching) gets a window group
 * without it, whose lookups hit 0 tokens, so every group sequence starts from
 * 0; the report says so. */
#include <math.h>
#include <string.h>

#include "cli/engine.h"

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int hybrid_init(engine *e) {
    const sim_config *cfg = e->f->cfg;
    const sim_workload *w = e->f->w;
    sim_result *res = e->res;
    int64_t sum = 0;
    for (int32_t i = 0; i < w->n; i++) sum += (int64_t)w->req[i].prompt_len + w->req[i].output_len;
    int64_t mean = w->n ? ceil_div(sum, w->n) : 1;
    if (mean < 1) mean = 1;
    if (mean > INT32_MAX) mean = INT32_MAX;
    pkv_config pc[SIM_MAX_GROUPS];
    const pkv_config *cp[SIM_MAX_GROUPS];
    for (int32_t g = 0; g < SIM_MAX_GROUPS; g++) {
        pkv_config_init(&pc[g]); /* metadata mode, MLA rows (d 576) as sim_token_bytes counts them */
        pc[g].block_size = cfg->block_size;
        pc[g].kv_dtype = cfg->kv_dtype;
        pc[g].num_layers = sim_group_layers(cfg, g);
        pc[g].window = g ? cfg->window : 0;
        pc[g].flags = e->prefix ? PKV_FLAG_PREFIX_CACHE | PKV_FLAG_AUTO_REGISTER : 0;
        pc[g].hash_key_set = 1;
        for (int i = 0; i < 16; i++) pc[g].hash_key[i] = (uint8_t)(0x5a + i);
        cp[g] = &pc[g];
    }
    double win_block = (double)cfg->block_size * (double)sim_token_bytes(cfg->kv_dtype) * pc[1].num_layers;
    int64_t reserve = ceil_div(2 * (int64_t)cfg->max_batch_tokens, cfg->block_size) + 2;
    double bytes = floor(cfg->kv_mem_gib * 1073741824.0) - (double)reserve * win_block;
    int32_t nb[SIM_MAX_GROUPS];
    int st = bytes < 1 ? PKV_ERR_INVALID
                       : pkv_groups_blocks_for_bytes(cp, SIM_MAX_GROUPS, (uint64_t)bytes, (int32_t)mean, nb);
    if (st == PKV_OK && nb[1] > INT32_MAX - reserve) st = PKV_ERR_INVALID;
    if (st == PKV_OK) nb[1] += (int32_t)reserve;
    if (st != PKV_OK)
        return cli_error("--kv-mem-gib %g: cannot be split between the hybrid model's pools (each needs 1..%d "
                         "blocks, the window pool %lld more for a step's prefill): %s",
                         cfg->kv_mem_gib, INT32_MAX, (long long)reserve, pkv_strerror(st));
    for (int32_t g = 0; g < SIM_MAX_GROUPS; g++) pc[g].num_blocks = nb[g];
    res->window_prefix = e->prefix;
    st = pkv_groups_create(cp, SIM_MAX_GROUPS, &e->groups);
    if (st == PKV_ERR_INVALID && e->prefix) { /* a library without prefix caching on window caches */
        pc[1].flags = 0;
        res->window_prefix = 0;
        st = pkv_groups_create(cp, SIM_MAX_GROUPS, &e->groups);
    }
    if (st != PKV_OK) {
        fprintf(stderr, "pkv sim: cannot create the hybrid model's groups (%d + %d blocks of %d): %s\n", nb[0], nb[1],
                e->bs, pkv_strerror(st));
        return EXIT_LIB;
    }
    e->num_blocks = e->watermark_blocks = 0;
    for (int32_t g = 0; g < SIM_MAX_GROUPS; g++) {
        pkv_groups_cache(e->groups, g, &e->gcache[g]);
        e->gblocks[g] = nb[g];
        e->gwatermark[g] = (int32_t)ceil(cfg->watermark * nb[g]);
        e->gbytes[g] = (double)e->bs * (double)sim_token_bytes(cfg->kv_dtype) * pc[g].num_layers;
        e->num_blocks += nb[g];
        e->watermark_blocks += e->gwatermark[g];
        res->group_blocks[g] = nb[g];
    }
    e->window = cfg->window;
    res->ngroups = SIM_MAX_GROUPS;
    res->num_blocks = e->num_blocks;
    res->split_tokens = (int32_t)mean;
    return 0;
}

int hybrid_lookup(engine *e, const int32_t *toks, int32_t n, pkv_seq *seq, int32_t *cached) {
    *cached = 0;
    if (!e->prefix) return LIB(e, pkv_groups_seq_create(e->groups, 0, seq));
    int rc = LIB(e, pkv_groups_lookup(e->groups, 0, toks, n, seq, cached));
    if (rc != PKV_OK || *cached < n) return rc;
    /* The last prompt token is always computed: it yields the first output. */
    rc = LIB(e, pkv_groups_truncate(e->groups, *seq, n - 1));
    if (rc == PKV_OK) *cached = n - 1;
    if (rc != PKV_ERR_STATE) return rc;
    /* A window group that released a block the shorter window needs: the
     * prompt less its last token is looked up instead. */
    LIB(e, pkv_groups_free(e->groups, *seq));
    return LIB(e, pkv_groups_lookup(e->groups, 0, toks, n - 1, seq, cached));
}

/* Window blocks a prefill to target tokens holds at its peak (chunks of at
 * most --max-batch-tokens). */
static int64_t window_peak(const engine *e, int64_t target) {
    int64_t w = (int64_t)e->window + 2 * (int64_t)e->f->cfg->max_batch_tokens;
    return ceil_div(target < w ? target : w, e->bs) + 1;
}

int hybrid_room(engine *e, pkv_seq seq, int32_t n, int32_t target) {
    int32_t need[SIM_MAX_GROUPS];
    if (LIB(e, pkv_groups_blocks_needed(e->groups, seq, n, need)) != PKV_OK) return 0;
    if (need[1] < window_peak(e, target)) need[1] = (int32_t)window_peak(e, target);
    for (int32_t g = 0; g < SIM_MAX_GROUPS; g++) {
        pkv_stats s = PKV_STATS_INIT;
        LIB(e, sim_cache_stats(e->gcache[g], &s));
        if (s.free_blocks + s.evictable_blocks - need[g] < e->gwatermark[g]) return 0;
    }
    return 1;
}

int hybrid_fits(const engine *e, const sim_request *r) {
    int64_t bs = e->bs, total = (int64_t)r->prompt_len + r->output_len;
    int64_t full = ceil_div(total, bs) + (int64_t)(r->n_samples - 1) * (ceil_div(r->output_len, bs) + 1);
    /* A window sequence holds at most its prefill's peak, one more for a
     * copy-on-write; a forked sample its window and the edges: a bound. */
    int64_t cap1 = ceil_div((int64_t)e->window + 1, bs) + 2;
    int64_t s0 = window_peak(e, total) + 1;
    int64_t s1 = ceil_div(r->output_len, bs) + 1 < cap1 ? ceil_div(r->output_len, bs) + 1 : cap1;
    int64_t win = s0 + (int64_t)(r->n_samples - 1) * s1;
    return full <= e->gblocks[0] - e->gwatermark[0] && win <= e->gblocks[1] - e->gwatermark[1];
}

int hybrid_peek(engine *e, const int32_t *toks, int32_t n, int32_t *cached) {
    *cached = n;
    for (int32_t g = 0; g < SIM_MAX_GROUPS; g++) {
        int32_t got = 0;
        int rc = LIB(e, pkv_prefix_peek(e->gcache[g], 0, toks, n, &got, NULL));
        if (rc == PKV_ERR_MODE) got = 0; /* no prefix caching in this group: no hit */
        else if (rc != PKV_OK) return rc;
        if (got < *cached) *cached = got;
    }
    return PKV_OK;
}

void hybrid_stats(engine *e, pkv_stats *out, double *occupancy, int32_t *full_used) {
    double used = 0, all = 0;
    memset(out, 0, sizeof *out);
    out->size = sizeof *out;
    for (int32_t g = 0; g < SIM_MAX_GROUPS; g++) {
        pkv_stats s = PKV_STATS_INIT;
        LIB(e, sim_cache_stats(e->gcache[g], &s));
        out->num_blocks += s.num_blocks;
        out->used_blocks += s.used_blocks;
        out->free_blocks += s.free_blocks;
        out->evictable_blocks += s.evictable_blocks;
        used += (double)s.used_blocks * e->gbytes[g];
        all += (double)s.num_blocks * e->gbytes[g];
        if (g == 0) *full_used = s.used_blocks;
    }
    *occupancy = all > 0 ? used / all : 0;
}

void hybrid_finish(engine *e) {
    sim_result *res = e->res;
    res->peak_blocks = 0;
    for (int32_t g = 0; g < SIM_MAX_GROUPS; g++) {
        pkv_stats s = PKV_STATS_INIT;
        sim_cache_stats(e->gcache[g], &s);
        res->group_peak[g] = s.peak_used_blocks;
        res->group_evictions[g] = s.evictions;
        res->peak_blocks += s.peak_used_blocks;
        res->evictions += s.evictions;
        res->cow_copies += s.cow_copies;
        res->dedups += s.dedups;
    }
}
