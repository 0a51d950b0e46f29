/* tok_bpe.c - the BPE model: open-addressing hash maps (string -> id, pair -> merge) and
 * the merge loop of one pre-token, written to follow HF tokenizers' Word::merge_all (a
 * min-heap on (rank, position) with stale entries skipped) so results match it exactly,
 * including words of many thousand symbols (sentencepiece-style files have no pre-tokenizer,
 * so a whole paragraph is one word).
 * Tables are read-only after load; scratch belongs to the calling thread. */
#include <stdlib.h>
#include <string.h>

#include "core/tok_int.h"
#include "core/unicode.h"

struct core__tok_pair_slot {
    uint64_t key; /* ((a + 1) << 32) | (b + 1); 0 = empty */
    int32_t rank;
    int32_t merged;
};

struct core__tok_sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    uint32_t len;       /* bytes covered; 0 once merged into its left neighbour */
};

struct core__tok_merge {
    int32_t rank, pos, merged;
};

bool core__tok_grow(void *pp, size_t *cap, size_t need, size_t elem)
{
    void **p = pp;
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 16;
    while (n < need) {
        if (n > SIZE_MAX / 2)
            return false;
        n *= 2;
    }
    if (n > SIZE_MAX / elem)
        return false;
    void *q = realloc(*p, n * elem);
    if (!q)
        return false;
    *p = q;
    *cap = n;
    return true;
}

static uint32_t tok_hash(const char *s, size_t len)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ len; /* FNV-style, 64-bit state */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001B3ull;
    h ^= h >> 29;
    return (uint32_t)(h ^ (h >> 32));
}

static size_t pow2_for(size_t n)
{
    size_t cap = 64;
    while (cap < n * 2 + 1)
        cap *= 2;
    return cap;
}

rc_t core__tok_strmap_init(core__tok_strmap_t *m, size_t n_expected)
{
    m->cap = pow2_for(n_expected);
    m->n = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots ? RC_OK : RC_NOMEM;
}

void core__tok_strmap_free(core__tok_strmap_t *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

/* Slot index holding s, or the empty slot where it would go. */
static size_t strmap_find(const core__tok_strmap_t *m, const core__tok_strings_t *strs,
                          const char *s, size_t len, uint32_t h)
{
    size_t mask = m->cap - 1, i = h & mask;
    for (;;) {
        uint64_t v = m->slots[i];
        if (v == 0)
            return i;
        if ((uint32_t)(v >> 32) == h) {
            int32_t id = (int32_t)(uint32_t)v - 1;
            if (strs->len[id] == len && memcmp(strs->arena + strs->off[id], s, len) == 0)
                return i;
        }
        i = (i + 1) & mask;
    }
}

bool core__tok_strmap_put(core__tok_strmap_t *m, const core__tok_strings_t *strs, int32_t id)
{
    const char *s = strs->arena + strs->off[id];
    size_t len = strs->len[id];
    uint32_t h = tok_hash(s, len);
    size_t i = strmap_find(m, strs, s, len, h);
    if (m->slots[i] != 0)
        return false;
    /* Sized at init for the expected count; never exceeds half full. */
    m->slots[i] = ((uint64_t)h << 32) | (uint32_t)(id + 1);
    m->n++;
    return true;
}

int32_t core__tok_strmap_get(const core__tok_strmap_t *m, const core__tok_strings_t *strs,
                             const char *s, size_t len)
{
    if (!m->slots)
        return -1;
    size_t i = strmap_find(m, strs, s, len, tok_hash(s, len));
    uint64_t v = m->slots[i];
    return v ? (int32_t)(uint32_t)v - 1 : -1;
}

rc_t core__tok_pairmap_init(core__tok_pairmap_t *m, size_t n_expected)
{
    m->cap = pow2_for(n_expected);
    m->n = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots ? RC_OK : RC_NOMEM;
}

void core__tok_pairmap_free(core__tok_pairmap_t *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

static size_t pair_slot(const core__tok_pairmap_t *m, uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t mask = m->cap - 1, i = (size_t)(h >> 32) & mask;
    while (m->slots[i].key != 0 && m->slots[i].key != key)
        i = (i + 1) & mask;
    return i;
}

void core__tok_pairmap_put(core__tok_pairmap_t *m, int32_t a, int32_t b, int32_t rank,
                           int32_t merged)
{
    uint64_t key = ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1);
    size_t i = pair_slot(m, key);
    if (m->slots[i].key != 0)
        return;
    m->slots[i].key = key;
    m->slots[i].rank = rank;
    m->slots[i].merged = merged;
    m->n++;
}

bool core__tok_pairmap_get(const core__tok_pairmap_t *m, int32_t a, int32_t b, int32_t *rank,
                           int32_t *merged)
{
    uint64_t key = ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1);
    const struct core__tok_pair_slot *sl = &m->slots[pair_slot(m, key)];
    if (sl->key == 0)
        return false;
    *rank = sl->rank;
    *merged = sl->merged;
    return true;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes
 * to U+0100.. in byte order. */
uint32_t core__tok_byte_to_cp(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return b;
    uint32_t k = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE))
            k++;
    return 0x100 + k;
}

int core__tok_cp_to_byte(uint32_t cp)
{
    if (cp < 0x100)
        return ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || cp >= 0xAE)
                   ? (int)cp
                   : -1;
    if (cp >= 0x100 + 68)
        return -1;
    uint32_t k = 0;
    for (unsigned x = 0; x < 256; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) {
            if (k == cp - 0x100)
                return (int)x;
            k++;
        }
    return -1;
}

void core__tok_bpe_scratch_free(core__tok_bpe_scratch_t *sc)
{
    free(sc->syms);
    free(sc->heap);
    free(sc->mapped);
    memset(sc, 0, sizeof *sc);
}

static bool push_id(int32_t **ids, size_t *n, size_t *cap, int32_t id)
{
    if (!core__tok_grow(ids, cap, *n + 1, sizeof **ids))
        return false;
    (*ids)[(*n)++] = id;
    return true;
}

/* Append a symbol for one character (len bytes) whose id is id, or its byte fallback, or
 * unk (fused with a preceding unk when fuse_unk), or nothing - the order HF uses. */
static void sym_push(const core__tok_bpe_t *bpe, core__tok_bpe_scratch_t *sc, size_t *n,
                     int32_t id, const unsigned char *bytes, uint32_t len)
{
    struct core__tok_sym *sy = sc->syms;
    if (id < 0 && bpe->byte_fallback) {
        bool all = true;
        for (uint32_t i = 0; i < len; i++)
            all = all && bpe->byte_ids[bytes[i]] >= 0;
        if (all) {
            for (uint32_t i = 0; i < len; i++)
                sy[(*n)++] = (struct core__tok_sym){bpe->byte_ids[bytes[i]], 0, 0, 1};
            return;
        }
    }
    if (id < 0) {
        if (bpe->unk_id < 0)
            return;
        if (bpe->fuse_unk && *n > 0 && sy[*n - 1].id == bpe->unk_id) {
            sy[*n - 1].len += len;
            return;
        }
        id = bpe->unk_id;
    }
    sy[(*n)++] = (struct core__tok_sym){id, 0, 0, len};
}

/* Split the word into initial symbols. For byte-level files each byte is one mapped char. */
static rc_t word_symbols(const core__tok_bpe_t *bpe, core__tok_bpe_scratch_t *sc,
                         const char *s, size_t len, size_t *n_syms)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = 0;
    if (!core__tok_grow(&sc->syms, &sc->cap_syms, len + 1, sizeof *sc->syms))
        return RC_NOMEM;
    for (size_t i = 0; i < len;) {
        if (bpe->byte_level) {
            sym_push(bpe, sc, &n, bpe->bl_ids[u[i]], u + i, 1);
            i++;
            continue;
        }
        uint32_t cp;
        size_t cl = core_utf8_decode(u + i, len - i, &cp);
        if (cl == 0)
            cl = 1; /* input was validated; only reachable via internal misuse */
        int32_t id = core__tok_strmap_get(&bpe->vocab, &bpe->strs, s + i, cl);
        sym_push(bpe, sc, &n, id, u + i, (uint32_t)cl);
        i += cl;
    }
    for (size_t i = 0; i < n; i++) {
        sc->syms[i].prev = (int32_t)i - 1;
        sc->syms[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    *n_syms = n;
    return RC_OK;
}

static bool merge_less(const struct core__tok_merge *a, const struct core__tok_merge *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct core__tok_merge *h, size_t *n, struct core__tok_merge m)
{
    size_t i = (*n)++;
    while (i > 0 && merge_less(&m, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = m;
}

static struct core__tok_merge heap_pop(struct core__tok_merge *h, size_t *n)
{
    struct core__tok_merge top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && merge_less(&h[c + 1], &h[c]))
            c++;
        if (!merge_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void try_queue(const core__tok_bpe_t *bpe, core__tok_bpe_scratch_t *sc, size_t *nh,
                      int32_t pos)
{
    struct core__tok_sym *sy = sc->syms;
    int32_t rank, merged;
    if (pos < 0 || sy[pos].next < 0)
        return;
    if (core__tok_pairmap_get(&bpe->merges, sy[pos].id, sy[sy[pos].next].id, &rank, &merged))
        heap_push(sc->heap, nh, (struct core__tok_merge){rank, pos, merged});
}

/* HF Word::merge_all without dropout. Each merge removes one symbol and queues at most
 * two pairs, so the heap never holds more than 3n entries. */
static rc_t merge_all(const core__tok_bpe_t *bpe, core__tok_bpe_scratch_t *sc, size_t n)
{
    if (!core__tok_grow(&sc->heap, &sc->cap_heap, 3 * n + 1, sizeof *sc->heap))
        return RC_NOMEM;
    struct core__tok_sym *sy = sc->syms;
    size_t nh = 0;
    for (size_t i = 0; i + 1 < n; i++)
        try_queue(bpe, sc, &nh, (int32_t)i);
    while (nh > 0) {
        struct core__tok_merge top = heap_pop(sc->heap, &nh);
        struct core__tok_sym *l = &sy[top.pos];
        if (l->len == 0 || l->next < 0)
            continue;
        struct core__tok_sym *r = &sy[l->next];
        int32_t rank, merged;
        if (!core__tok_pairmap_get(&bpe->merges, l->id, r->id, &rank, &merged) ||
            merged != top.merged)
            continue; /* stale entry */
        l->id = merged;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            sy[r->next].prev = top.pos;
        try_queue(bpe, sc, &nh, l->prev);
        try_queue(bpe, sc, &nh, top.pos);
    }
    return RC_OK;
}

/* The byte-level mapped form of s, for the ignore_merges whole-word lookup. */
static rc_t map_bytes(core__tok_bpe_scratch_t *sc, const char *s, size_t len, size_t *out_len)
{
    if (!core__tok_grow(&sc->mapped, &sc->cap_mapped, 2 * len + 1, 1))
        return RC_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < len; i++)
        k += core_utf8_encode(core__tok_byte_to_cp((uint8_t)s[i]), sc->mapped + k);
    *out_len = k;
    return RC_OK;
}

rc_t core__tok_bpe_word(const core__tok_bpe_t *bpe, core__tok_bpe_scratch_t *sc,
                        const char *s, size_t len, int32_t **ids, size_t *n_ids,
                        size_t *cap_ids)
{
    if (len == 0)
        return RC_OK;
    if (bpe->ignore_merges) {
        const char *w = s;
        size_t wl = len;
        if (bpe->byte_level) {
            rc_t rc = map_bytes(sc, s, len, &wl);
            if (rc != RC_OK)
                return rc;
            w = sc->mapped;
        }
        int32_t id = core__tok_strmap_get(&bpe->vocab, &bpe->strs, w, wl);
        if (id >= 0)
            return push_id(ids, n_ids, cap_ids, id) ? RC_OK : RC_NOMEM;
    }
    size_t n = 0;
    rc_t rc = word_symbols(bpe, sc, s, len, &n);
    if (rc == RC_OK)
        rc = merge_all(bpe, sc, n);
    for (int32_t i = n ? 0 : -1; rc == RC_OK && i >= 0; i = sc->syms[i].next)
        if (!push_id(ids, n_ids, cap_ids, sc->syms[i].id))
            rc = RC_NOMEM;
    return rc;
}
