/* The CPU feature module: the features of this CPU (and what the OS enables)
 * read once into a bitmask, the table of ISA levels with the features each
 * needs, and the one reader of PKV_ISA. Every dispatcher (attention kernels,
 * FP8 quantization) asks this module; none reads CPUID or PKV_ISA itself.
 *
 * Porting to another architecture: give pkv__cpu_detect() a body for it (the
 * bits it can set are the public PKV_CPU_* values; add new ones at the end) and
 * add its levels to the table in cpu.c; the dispatchers need no change. */
#ifndef PKV_CPU_H
#define PKV_CPU_H

#include <stdint.h>

#include "internal.h"

/* Levels in the table of cpu.c (pkv_isa values 0 .. PKV__ISA_COUNT - 1). */
#define PKV__ISA_COUNT 4

/* Features of this CPU whose register state the OS enables (AMX: also with
 * the tile-data permission granted to this process): a PKV_CPU_* bitmask.
 * Reads CPUID / XGETBV once; later calls return the cached mask. */
PKV_HIDDEN uint64_t pkv__cpu_detect(void);

/* The highest level allowed by PKV_ISA (PKV_ISA_COUNT - 1 when it is unset or
 * names no level), for dispatchers whose bodies need fewer features than the
 * level of the same name (the FP8 quantizer): they take the best body whose
 * features are present and whose level is at most this cap. */
PKV_HIDDEN int pkv__isa_cap(void);

#endif
