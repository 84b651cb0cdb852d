/* `pkv sim --verify`: real attention over the real paged cache, every step.
 *
 * The simulator's cache then has host storage with small heads (h_kv 1,
 * d = dv = 16, separate V, bf16) and every appended token's K/V rows are
 * written at the slot the append returned; the rows are a pure function of
 * (token id, position), and their values are multiples of 1/64 in [-1, 1], so
 * bf16 stores them exactly. Each step a few running sequences are exported
 * with pkv_export_flashmla and attended with pkv_attn_reference (and pkv_attn
 * with --verify-fast); the result must match attention computed here, in
 * double precision, over contiguous rows regenerated from the sequence's token
 * ids. Any wrong block id, stale copy-on-write, bad eviction or dedup shows up
 * as a mismatch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/sim.h"


#define REF_TOL 1e-4
#define FAST_TOL 2e-3

struct sim_verify {
    int32_t cap_seqs, cap_blocks, max_ctx;
    int32_t *table, *seqlens;
    float *q, *out, *lse;
    double *scores;
    float *krows; /* [max_ctx][d + dv] */
};

void verify_rows(int32_t tok, int32_t pos, float *k, float *v) {
    uint64_t x = cli_mix((uint64_t)(uint32_t)tok, (uint64_t)pos, 0x6b76, 0) | 1;
    /* xorshift64: cheap, and 8 values of 8 bits from each draw */
    for (int i = 0; i < VERIFY_H_KV * (VERIFY_D + VERIFY_DV); i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for (int j = 0; j < 8 && i + j < VERIFY_H_KV * (VERIFY_D + VERIFY_DV); j++) {
            float val = (float)((int)((x >> (8 * j)) & 0x7f) - 64) / 64.0f;
            if (i + j < VERIFY_H_KV * VERIFY_D) k[i + j] = val;
            else v[i + j - VERIFY_H_KV * VERIFY_D] = val;
        }
    }
}

int verify_create(int32_t max_ctx, sim_verify **out) {
    sim_verify *v = calloc(1, sizeof *v);
    if (!v) return -1;
    v->max_ctx = max_ctx + 1;
    v->scores = malloc((size_t)v->max_ctx * sizeof *v->scores);
    v->krows = malloc((size_t)v->max_ctx * (VERIFY_D + VERIFY_DV) * sizeof *v->krows);
    if (!v->scores || !v->krows) {
        verify_destroy(v);
        return -1;
    }
    *out = v;
    return 0;
}

void verify_destroy(sim_verify *v) {
    if (!v) return;
    free(v->table);
    free(v->seqlens);
    free(v->q);
    free(v->out);
    free(v->lse);
    free(v->scores);
    free(v->krows);
    free(v);
}

static int reserve(sim_verify *v, int32_t nseq, int32_t max_blocks) {
    if (nseq <= v->cap_seqs && max_blocks <= v->cap_blocks) return 0;
    int32_t ns = nseq > v->cap_seqs ? nseq : v->cap_seqs;
    int32_t nb = max_blocks > v->cap_blocks ? max_blocks : v->cap_blocks;
    free(v->table);
    free(v->seqlens);
    free(v->q);
    free(v->out);
    free(v->lse);
    v->table = malloc((size_t)ns * nb * sizeof *v->table);
    v->seqlens = malloc((size_t)ns * sizeof *v->seqlens);
    v->q = malloc((size_t)ns * VERIFY_H_Q * VERIFY_D * sizeof *v->q);
    v->out = malloc((size_t)ns * VERIFY_H_Q * VERIFY_DV * sizeof *v->out);
    v->lse = malloc((size_t)ns * VERIFY_H_Q * sizeof *v->lse);
    v->cap_seqs = ns;
    v->cap_blocks = nb;
    return v->table && v->seqlens && v->q && v->out && v->lse ? 0 : -1;
}

/* Max abs difference of out/lse against the contiguous recomputation. */
static double compare(const sim_verify *v, int32_t b, const float *out, const float *lse, const double *ref_out,
                      const double *ref_lse) {
    double m = 0;
    for (int32_t h = 0; h < VERIFY_H_Q; h++) {
        double dl = fabs((double)lse[b * VERIFY_H_Q + h] - ref_lse[h]);
        if (isinf(ref_lse[h])) dl = isinf(lse[b * VERIFY_H_Q + h]) ? 0 : INFINITY;
        if (!(dl <= m)) m = dl;
        for (int32_t j = 0; j < VERIFY_DV; j++) {
            double d = fabs((double)out[((size_t)b * VERIFY_H_Q + h) * VERIFY_DV + j] - ref_out[h * VERIFY_DV + j]);
            if (!(d <= m)) m = d;
        }
    }
    (void)v;
    return m;
}

int verify_step(sim_verify *v, pkv_cache *cache, const pkv_seq *seqs, int32_t nseq, verify_token_fn tok,
                void *ctx, int fast, double *max_err, double *max_err_fast) {
    pkv_config cfg;
    pkv_config_init(&cfg);
    pkv_cache_config(cache, &cfg);
    int32_t needed = 0;
    if (reserve(v, nseq, v->cap_blocks > 0 ? v->cap_blocks : 16)) return cli_error("out of memory");
    int st = pkv_export_flashmla(cache, seqs, nseq, v->table, v->cap_blocks, v->seqlens, &needed);
    if (st == PKV_ERR_BUFFER) {
        if (reserve(v, nseq, needed)) return cli_error("out of memory");
        st = pkv_export_flashmla(cache, seqs, nseq, v->table, v->cap_blocks, v->seqlens, &needed);
    }
    if (st != PKV_OK) {
        fprintf(stderr, "pkv sim: --verify: pkv_export_flashmla: %s: %s\n", pkv_strerror(st),
                pkv_cache_last_error(cache));
        return EXIT_LIB;
    }
    int32_t mb = v->cap_blocks;
    for (int32_t b = 0; b < nseq; b++) {
        cli_rng r = {(uint64_t)seqs[b] * 31 + (uint64_t)v->seqlens[b]};
        for (int32_t i = 0; i < VERIFY_H_Q * VERIFY_D; i++)
            v->q[(size_t)b * VERIFY_H_Q * VERIFY_D + i] = (float)(cli_rng_uniform(&r) * 2 - 1);
    }
    void *karena, *varena;
    pkv_store_arenas(cache, 0, &karena, &varena);
    pkv_attn_args a;
    memset(&a, 0, sizeof a);
    a.batch = nseq;
    a.s_q = 1;
    a.h_q = VERIFY_H_Q;
    a.h_kv = VERIFY_H_KV;
    a.d = VERIFY_D;
    a.dv = VERIFY_DV;
    a.block_size = cfg.block_size;
    a.max_blocks_per_seq = mb;
    a.num_blocks = cfg.num_blocks;
    a.softmax_scale = 0.25f;
    a.q_dtype = PKV_F32;
    a.kv_dtype = cfg.kv_dtype;
    a.q = v->q;
    a.k_cache = karena;
    a.v_cache = varena;
    a.block_table = v->table;
    a.cache_seqlens = v->seqlens;
    a.out = v->out;
    a.lse = v->lse;
    st = pkv_attn_reference(&a);
    if (st != PKV_OK) {
        fprintf(stderr, "pkv sim: --verify: pkv_attn_reference: %s\n", pkv_strerror(st));
        return EXIT_LIB;
    }
    /* Contiguous recomputation, one sequence at a time. */
    double ref_out[VERIFY_H_Q * VERIFY_DV], ref_lse[VERIFY_H_Q];
    for (int32_t b = 0; b < nseq; b++) {
        int32_t L = v->seqlens[b];
        if (L > v->max_ctx) return cli_error("--verify: sequence longer than the workload allows (%d)", L);
        for (int32_t p = 0; p < L; p++) {
            float *row = v->krows + (size_t)p * (VERIFY_D + VERIFY_DV);
            verify_rows(tok(ctx, b, p), p, row, row + VERIFY_D);
        }
        for (int32_t h = 0; h < VERIFY_H_Q; h++) {
            const float *q = v->q + ((size_t)b * VERIFY_H_Q + h) * VERIFY_D;
            double mx = -INFINITY;
            for (int32_t p = 0; p < L; p++) {
                const float *k = v->krows + (size_t)p * (VERIFY_D + VERIFY_DV);
                double sdot = 0;
                for (int32_t j = 0; j < VERIFY_D; j++) sdot += (double)q[j] * k[j];
                v->scores[p] = sdot * (double)a.softmax_scale;
                if (v->scores[p] > mx) mx = v->scores[p];
            }
            double sum = 0;
            double *o = ref_out + h * VERIFY_DV;
            for (int32_t j = 0; j < VERIFY_DV; j++) o[j] = 0;
            for (int32_t p = 0; p < L; p++) {
                double e = exp(v->scores[p] - mx);
                sum += e;
                const float *vr = v->krows + (size_t)p * (VERIFY_D + VERIFY_DV) + VERIFY_D;
                for (int32_t j = 0; j < VERIFY_DV; j++) o[j] += e * vr[j];
            }
            if (L == 0) {
                ref_lse[h] = INFINITY;
            } else {
                for (int32_t j = 0; j < VERIFY_DV; j++) o[j] /= sum;
                ref_lse[h] = mx + log(sum);
            }
        }
        double e = compare(v, b, v->out, v->lse, ref_out, ref_lse);
        if (e > *max_err) *max_err = e;
        if (!(e <= REF_TOL)) {
            fprintf(stderr,
                    "pkv sim: --verify: paged attention differs from the contiguous copy: sequence %lld "
                    "(length %d), max abs error %.3g > %.1g\n",
                    (long long)seqs[b], L, e, REF_TOL);
            return EXIT_CHECK;
        }
    }
    if (fast) {
        /* The fast path against the (now trusted) oracle output of this step. */
        float *ref = malloc((size_t)nseq * VERIFY_H_Q * (VERIFY_DV + 1) * sizeof *ref);
        if (!ref) return cli_error("out of memory");
        memcpy(ref, v->out, (size_t)nseq * VERIFY_H_Q * VERIFY_DV * sizeof *ref);
        memcpy(ref + (size_t)nseq * VERIFY_H_Q * VERIFY_DV, v->lse, (size_t)nseq * VERIFY_H_Q * sizeof *ref);
        st = pkv_attn(&a, NULL);
        if (st != PKV_OK) {
            free(ref);
            fprintf(stderr, "pkv sim: --verify: pkv_attn: %s\n", pkv_strerror(st));
            return EXIT_LIB;
        }
        double m = 0;
        size_t no = (size_t)nseq * VERIFY_H_Q * VERIFY_DV, nl = (size_t)nseq * VERIFY_H_Q;
        for (size_t i = 0; i < no + nl; i++) {
            float x = i < no ? v->out[i] : v->lse[i - no];
            double d = isinf(ref[i]) && isinf(x) ? 0 : fabs((double)x - ref[i]);
            if (!(d <= m)) m = d;
        }
        free(ref);
        if (m > *max_err_fast) *max_err_fast = m;
        if (!(m <= FAST_TOL)) {
            fprintf(stderr, "pkv sim: --verify: pkv_attn differs from the oracle by %.3g > %.1g\n", m, FAST_TOL);
            return EXIT_CHECK;
        }
    }
    return 0;
}
