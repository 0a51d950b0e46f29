/* sha256_ni.c - the SHA-256 compression function (FIPS 180-4 6.2.2) with the x86 SHA
 * extensions (Intel SHA Extensions white paper: SHA256RNDS2, SHA256MSG1, SHA256MSG2).
 *
 * Built with -msha -msse4.1 -mssse3; core/sha256.c calls it only after checking the CPU
 * at run time. Several blocks per call, so the state stays in registers between blocks.
 *
 * Register layout: SHA256RNDS2 wants the working variables split as ABEF and CDGH (a in
 * the highest dword), takes two rounds' W[t] + K[t] in the low two dwords of its third
 * operand, and returns the new ABEF when given (CDGH, ABEF): calling it twice with the
 * operands swapped performs four rounds. SHA256MSG1 / SHA256MSG2 compute the message
 * schedule four words at a time: for the group t..t+3,
 *   W[t] = MSG2(MSG1(W[t-16..t-13], W[t-12..t-9]) + W[t-7..t-4], W[t-4..t-1])
 * where MSG1 adds sigma0(W[t-15]) and MSG2 adds sigma1(W[t-2]). */
#include "core/sha256_int.h"

#include <immintrin.h>

/* FIPS 180-4 4.2.2; the same table as core/sha256.c, aligned for 16-byte loads. */
static const uint32_t sha256_ni_k[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* Four rounds: W[t..t+3] + K[t..t+3] through SHA256RNDS2 twice (low pair, then high). */
#define SHA_NI_ROUNDS4(w, t)                                                                       \
    do {                                                                                           \
        __m128i wk_ = _mm_add_epi32((w), _mm_load_si128((const __m128i *)&sha256_ni_k[t]));        \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk_);                                             \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk_, 0x0e));                    \
    } while (0)

/* Next schedule group from the last four: w0 = W[t-16..], ..., w3 = W[t-4..t-1]. */
#define SHA_NI_SCHEDULE(w0, w1, w2, w3)                                                            \
    _mm_sha256msg2_epu32(                                                                          \
        _mm_add_epi32(_mm_sha256msg1_epu32((w0), (w1)), _mm_alignr_epi8((w3), (w2), 4)), (w3))

/* 16 rounds t..t+15 that also replace m0..m3 with the next 16 schedule words. */
#define SHA_NI_ROUNDS16_NEXT(t)                                                                    \
    do {                                                                                           \
        SHA_NI_ROUNDS4(m0, (t));                                                                   \
        m0 = SHA_NI_SCHEDULE(m0, m1, m2, m3);                                                      \
        SHA_NI_ROUNDS4(m1, (t) + 4);                                                               \
        m1 = SHA_NI_SCHEDULE(m1, m2, m3, m0);                                                      \
        SHA_NI_ROUNDS4(m2, (t) + 8);                                                               \
        m2 = SHA_NI_SCHEDULE(m2, m3, m0, m1);                                                      \
        SHA_NI_ROUNDS4(m3, (t) + 12);                                                              \
        m3 = SHA_NI_SCHEDULE(m3, m0, m1, m2);                                                      \
    } while (0)

void core__sha256_blocks_ni(uint32_t h[8], const uint8_t *p, size_t n_blocks)
{
    /* byte-swaps each 32-bit word: the message is big-endian (FIPS 180-4 3.1) */
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);

    /* h[0..3] = a b c d, h[4..7] = e f g h (lane 0 lowest) -> ABEF and CDGH */
    __m128i dcba = _mm_loadu_si128((const __m128i *)&h[0]);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&h[4]);
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xb1);     /* lanes b a d c */
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1b);     /* lanes h g f e */
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);    /* lanes f e b a */
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xf0); /* lanes h g d c */

    for (; n_blocks; n_blocks--, p += 64) {
        __m128i abef_in = abef, cdgh_in = cdgh;
        /* unaligned: callers hand us any byte offset into their buffers */
        __m128i m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), bswap);
        __m128i m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), bswap);
        __m128i m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), bswap);
        __m128i m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), bswap);

        SHA_NI_ROUNDS16_NEXT(0);
        SHA_NI_ROUNDS16_NEXT(16);
        SHA_NI_ROUNDS16_NEXT(32);
        /* rounds 48..63 need no further schedule words */
        SHA_NI_ROUNDS4(m0, 48);
        SHA_NI_ROUNDS4(m1, 52);
        SHA_NI_ROUNDS4(m2, 56);
        SHA_NI_ROUNDS4(m3, 60);

        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
    }

    /* back to a..h order: the inverse of the shuffles above (names list dwords high to low,
     * as Intel does; the comments list lanes low to high) */
    __m128i feba = _mm_shuffle_epi32(abef, 0x1b);         /* lanes a b e f */
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xb1);         /* lanes g h c d */
    __m128i dcba_out = _mm_blend_epi16(feba, dchg, 0xf0); /* lanes a b c d */
    __m128i hgfe_out = _mm_alignr_epi8(dchg, feba, 8);    /* lanes e f g h */
    _mm_storeu_si128((__m128i *)&h[0], dcba_out);
    _mm_storeu_si128((__m128i *)&h[4], hgfe_out);
}
