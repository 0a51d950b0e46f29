/* kv.c - the paged KV cache (contract in core/model.h; layout in core/forward_int.h).
 *
 * KV pool: one arena of n_blocks fixed-size blocks, mapped once (pages cost nothing until
 * first written), and a stack of free block ids. Block b holds, for every layer l, K then
 * V of block_tokens consecutive positions (kv_dim floats each). A cache is a block table;
 * position p lives in block table[p / block_tokens] at row p % block_tokens.
 *
 * Threads: a pool and its caches belong to one thread at a time (the engine thread). */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/forward_int.h"

rc_t core_kv_pool_new(const core_config_t *cfg, size_t budget_bytes, int block_tokens,
                      core_kv_pool_t **out, core_err_t *err)
{
    *out = NULL;
    if (!cfg || cfg->n_layers < 1 || cfg->n_kv_heads < 1 || cfg->head_dim < 1 ||
        cfg->max_pos < 1)
        return core_err(err, RC_INVALID, "kv pool: bad model config");
    if (block_tokens < 1 || block_tokens > (1 << 16))
        return core_err(err, RC_INVALID, "kv pool: block_tokens %d outside 1..65536",
                        block_tokens);
    size_t kvd = (size_t)cfg->n_kv_heads * (size_t)cfg->head_dim;
    size_t per_layer = 2 * (size_t)block_tokens * kvd;
    if (per_layer > SIZE_MAX / sizeof(float) / (size_t)cfg->n_layers)
        return core_err(err, RC_LIMIT, "kv pool: block size overflows");
    size_t block_floats = per_layer * (size_t)cfg->n_layers;
    size_t block_bytes = block_floats * sizeof(float);
    size_t n = budget_bytes / block_bytes;
    if (n == 0)
        return core_err(err, RC_LIMIT,
                        "kv budget of %zu bytes holds no block of %zu bytes (%d tokens)",
                        budget_bytes, block_bytes, block_tokens);
    if (n > INT_MAX)
        n = INT_MAX;
    core_kv_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return core_err(err, RC_NOMEM, "kv pool: out of memory");
    p->n_layers = cfg->n_layers;
    p->kv_dim = (int)kvd;
    p->max_pos = cfg->max_pos;
    p->block_tokens = block_tokens;
    p->block_floats = block_floats;
    p->n_blocks = p->n_free = (int)n;
    p->arena_bytes = n * block_bytes;
    p->free_ids = malloc(n * sizeof *p->free_ids);
    /* mmap, not malloc: the budget is reserved address space, only written pages cost */
    void *a = mmap(NULL, p->arena_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    p->arena = a == MAP_FAILED ? NULL : a;
    if (!p->free_ids || !p->arena) {
        core_kv_pool_free(p);
        return core_err(err, RC_NOMEM, "kv pool: cannot map %zu bytes", n * block_bytes);
    }
    for (size_t i = 0; i < n; i++) /* block 0 on top: a fresh pool hands out 0, 1, 2... */
        p->free_ids[i] = (int)(n - 1 - i);
    *out = p;
    return RC_OK;
}

void core_kv_pool_free(core_kv_pool_t *p)
{
    if (!p)
        return;
    if (p->arena)
        munmap(p->arena, p->arena_bytes);
    free(p->free_ids);
    free(p);
}

int core_kv_pool_n_blocks(const core_kv_pool_t *p)
{
    return p->n_blocks;
}

int core_kv_pool_n_free(const core_kv_pool_t *p)
{
    return p->n_free;
}

int core_kv_pool_block_tokens(const core_kv_pool_t *p)
{
    return p->block_tokens;
}

size_t core_kv_pool_block_bytes(const core_kv_pool_t *p)
{
    return p->block_floats * sizeof(float);
}

int core_kv_pool_blocks_for(const core_kv_pool_t *p, int n_tokens)
{
    return n_tokens <= 0 ? 0 : (n_tokens - 1) / p->block_tokens + 1;
}

/* K of block b, layer l: (block_tokens, kv_dim); V follows at + block_tokens * kv_dim. */
core_kv_t *core_kv_new(core_kv_pool_t *pool)
{
    if (!pool)
        return NULL;
    core_kv_t *kv = calloc(1, sizeof *kv);
    if (kv)
        kv->pool = pool;
    return kv;
}

void core_kv_free(core_kv_t *kv)
{
    if (!kv)
        return;
    core_kv_reset(kv);
    free(kv->table);
    free(kv);
}

int core_kv_len(const core_kv_t *kv)
{
    return kv->len;
}

int core_kv_n_blocks(const core_kv_t *kv)
{
    return kv->n_blocks;
}

int core_kv_blocks_needed(const core_kv_t *kv, int n_new)
{
    long long want = (long long)kv->len + (n_new > 0 ? n_new : 0);
    if (want > INT_MAX)
        want = INT_MAX;
    int need = core_kv_pool_blocks_for(kv->pool, (int)want) - kv->n_blocks;
    return need > 0 ? need : 0;
}

/* Room in the table for n block ids (doubling, capped at what max_pos can use). Holds
 * no blocks, so failing here changes nothing visible. */
static rc_t kv_table_grow(core_kv_t *kv, int n)
{
    if (n <= kv->cap)
        return RC_OK;
    int most = core_kv_pool_blocks_for(kv->pool, kv->pool->max_pos);
    int cap = kv->cap ? kv->cap : 4;
    while (cap < n)
        cap = cap > most / 2 ? most : cap * 2;
    if (cap < n)
        cap = n;
    int *t = realloc(kv->table, (size_t)cap * sizeof *t);
    if (!t)
        return RC_NOMEM;
    kv->table = t;
    kv->cap = cap;
    return RC_OK;
}

/* Pop need blocks into the table; the caller checked the pool and grew the table. */
static void kv_take(core_kv_t *kv, int need)
{
    core_kv_pool_t *p = kv->pool;
    for (int i = 0; i < need; i++)
        kv->table[kv->n_blocks++] = p->free_ids[--p->n_free];
}

rc_t core_kv_reserve(core_kv_t *kv, int n_new)
{
    if (n_new < 0)
        return RC_INVALID;
    if (n_new > kv->pool->max_pos - kv->len)
        return RC_LIMIT;
    int need = core_kv_blocks_needed(kv, n_new);
    if (need == 0)
        return RC_OK;
    if (need > kv->pool->n_free)
        return RC_BUSY;
    rc_t rc = kv_table_grow(kv, kv->n_blocks + need);
    if (rc)
        return rc;
    kv_take(kv, need);
    return RC_OK;
}

void core_kv_reset(core_kv_t *kv)
{
    core_kv_pool_t *p = kv->pool;
    /* pushed last-first so the next sequence gets them back in the same order */
    while (kv->n_blocks > 0)
        p->free_ids[p->n_free++] = kv->table[--kv->n_blocks];
    kv->len = 0;
}

rc_t core__kv_reserve_all(core_kv_t **kv, const int *nt, int n, core_err_t *err)
{
    for (int i = 0; i < n; i++)
        if (kv_table_grow(kv[i], kv[i]->n_blocks + core_kv_blocks_needed(kv[i], nt[i])))
            return core_err(err, RC_NOMEM, "cache %d: out of memory for its block table", i);
    for (int i = 0; i < n; i++) {
        const core_kv_pool_t *p = kv[i]->pool;
        int j = 0, need = 0;
        while (kv[j]->pool != p) /* count each pool once, at its first cache */
            j++;
        if (j < i)
            continue;
        for (; j < n; j++)
            if (kv[j]->pool == p)
                need += core_kv_blocks_needed(kv[j], nt[j]);
        if (need > p->n_free)
            return core_err(err, RC_BUSY, "kv pool: the step needs %d blocks, %d are free",
                            need, p->n_free);
    }
    for (int i = 0; i < n; i++)
        kv_take(kv[i], core_kv_blocks_needed(kv[i], nt[i]));
    return RC_OK;
}

