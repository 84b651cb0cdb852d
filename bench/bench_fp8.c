/* FP8 MLA row quantization speed: pkv_mla656_quantize / _dequantize over `rows`
 * random N(0,1) rows, one core, best of `rounds`. 256 rows (590 KB in + 168 KB out)
 * stay in L2, as a freshly computed token's latent does; 4096 rows (9.4 MB) measure
 * the memory-bound case. Prints one JSON object per mode.
 * Usage: bench_fp8 [rounds [rows]] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "pagedkv.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 200, rows = argc > 2 ? atoi(argv[2]) : 256;
    float *x = malloc(sizeof(float) * 576 * (size_t)rows);
    uint8_t *out = malloc(656 * (size_t)rows);
    if (!x || !out || rounds < 1 || rows < 1) return 1;
    uint64_t s = 12345;
    for (size_t i = 0; i < 576 * (size_t)rows; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u = ((s >> 11) + 0.5) / 9007199254740992.0, v = (double)(s & 0xffff) / 65536.0;
        x[i] = (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
    }
    for (int pow2 = 0; pow2 < 2; pow2++) {
        double best = 1e30;
        for (int r = 0; r < rounds; r++) {
            double t0 = now_s();
            for (int i = 0; i < rows; i++)
                if (pkv_mla656_quantize(x + 576 * (size_t)i, out + 656 * (size_t)i, pow2)) return 1;
            double t = now_s() - t0;
            if (t < best) best = t;
        }
        printf("{\"bench\": \"fp8_mla656_quantize\", \"pow2_scale\": %d, \"rows\": %d, "
               "\"ns_per_token\": %.1f}\n", pow2, rows, best * 1e9 / rows);
    }
    double best = 1e30;
    for (int r = 0; r < rounds; r++) {
        double t0 = now_s();
        for (int i = 0; i < rows; i++)
            if (pkv_mla656_dequantize(out + 656 * (size_t)i, x + 576 * (size_t)i)) return 1;
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    printf("{\"bench\": \"fp8_mla656_dequantize\", \"rows\": %d, \"ns_per_token\": %.1f}\n", rows,
           best * 1e9 / rows);
    free(x);
    free(out);
    return 0;
}
