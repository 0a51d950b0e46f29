/* sampler.h - choosing the next token from logits.
 *
 * Greedy when temperature == 0; otherwise softmax(logits / temperature), then top-k (0 =
 * off), then top-p (1 = off) over the kept tokens, then a draw from a seeded PRNG
 * (splitmix64/xoshiro; same seed, same draws on every platform).
 * Threads: a sampler belongs to one sequence on one thread. */
#ifndef CORE_SAMPLER_H
#define CORE_SAMPLER_H

#include <stdint.h>

#include "core/rc.h"

typedef struct {
    float temperature; /* >= 0 */
    float top_p;       /* (0, 1] */
    int top_k;         /* >= 0, 0 = all */
    uint64_t seed;
} core_sampler_params_t;

core_sampler_params_t core_sampler_default_params(void); /* t=1, top_p=1, top_k=0, seed=0 */

typedef struct core_sampler core_sampler_t;
core_sampler_t *core_sampler_new(core_sampler_params_t p, int n_vocab);
void core_sampler_free(core_sampler_t *s);
/* Never modifies logits. Returns the chosen id. */
int32_t core_sampler_sample(core_sampler_t *s, const float *logits);

#endif
