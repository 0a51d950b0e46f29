/* avx2_util.h - horizontal reductions shared by the AVX2 kernels (kernel_avx2.c,
 * attention_avx2.c). Include only from files compiled with -mavx2 -mfma. */
#ifndef CORE_AVX2_UTIL_H
#define CORE_AVX2_UTIL_H

#include <immintrin.h>

/* Sum of the 8 lanes of v. */
static inline __attribute__((always_inline)) float core__hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lane k of the result is the sum of the 8 lanes of v[k]. */
static inline __attribute__((always_inline)) __m256 core__hsum8x8(const __m256 *v)
{
    __m256 ab = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    __m256 cd = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20),
                         _mm256_permute2f128_ps(ab, cd, 0x31));
}

#endif
