/* sha256_int.h - private interface between core/sha256.c and core/sha256_ni.c.
 * Not part of the contract (core/sha256.h); nothing outside core/sha256*.c and its unit
 * test includes it. */
#ifndef CORE_SHA256_INT_H
#define CORE_SHA256_INT_H

#include <stddef.h>
#include <stdint.h>

/* Compress n_blocks whole 64-byte blocks at p (any alignment) into the state h (FIPS 180-4
 * 6.2.2, h[0] = a ... h[7] = h) with the x86 SHA extensions. core/sha256_ni.c is compiled
 * with -msha -msse4.1 -mssse3: call it only when the CPU has SHA and SSE4.1. */
void core__sha256_blocks_ni(uint32_t h[8], const uint8_t *p, size_t n_blocks);

#endif
