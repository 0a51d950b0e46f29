/* fuzz_safetensors.c - libFuzzer target: core_st_parse over the input as a whole file image
 * (RELIABILITY H15/F13). Every accepted file is also read back the way a loader does: each
 * tensor found by name and converted to f32, so a header that validates but describes bytes
 * outside the buffer shows up as an ASan report here rather than in an adapter load.
 * Rejections must carry a message (untrusted input errors name the file or tensor). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy sized exactly: reads past the image are caught by ASan. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    core_st_t *st = NULL;
    core_err_t err = {{0}};
    rc_t rc = core_st_parse(buf, size, "fuzz", &st, &err);
    if (rc != RC_OK) {
        if (err.msg[0] == '\0')
            abort(); /* an error without a message */
        goto out;
    }
    for (size_t i = 0; i < core_st_count(st); i++) {
        const core_st_tensor_t *t = core_st_at(st, i);
        if (core_st_find(st, t->name) != t)
            abort(); /* names are unique (duplicates are refused) */
        if (t->n_bytes && (t->data < buf + 8 || t->data + t->n_bytes > buf + size))
            abort();
        if (t->dtype == CORE_DTYPE_OTHER || t->n_elems > (1 << 20))
            continue;
        float *f = malloc((size_t)(t->n_elems ? t->n_elems : 1) * sizeof *f);
        bool finite;
        if (f)
            (void)core_st_to_f32_check(t, f, &finite, &err);
        free(f);
    }
out:
    core_st_free(st);
    free(buf);
    return 0;
}
