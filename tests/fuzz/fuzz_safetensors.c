/* fuzz_safetensors.c: libFuzzer target for the safetensors header parser and validator.
 *
 * Each input is tried two ways:
 *   1. as a whole file image [N][header][data], exactly as st_open would see it;
 *   2. as a header alone: the first input byte picks a data length (0..255), the rest is the
 *      header JSON, and N and the zero-filled data are put around it. This gets the fuzzer past
 *      the 8-byte length and the end-of-file rule, into the JSON and offset checks.
 * A successful parse is walked: every tensor's first and last byte are read (ASan catches a
 * pointer outside the buffer), st_find must return the same entry, metadata must be findable.
 * Buffers are exact-size heap copies so ASan sees reads past the end.
 * Run: make fuzz FUZZ_SECONDS=60 (seeds in tests/fuzz/seeds-fuzz_safetensors/). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "safetensors.h"

static void walk(const SafeTensors *st, const uint8_t *buf, size_t len) {
    volatile uint8_t sink = 0;
    uint64_t off = 0;
    for (size_t i = 0; i < st_count(st); i++) {
        const StTensor *t = st_tensor_at(st, i);
        if (t->offset != off) abort();              /* file order is contiguous */
        off += t->nbytes;
        if (st_find(st, t->name) != t) abort();
        if (t->nbytes) {
            const uint8_t *d = t->data;
            if (d < buf || d + t->nbytes > buf + len) abort();
            sink ^= d[0];
            sink ^= d[t->nbytes - 1];
        }
        uint64_t numel = 1;
        for (int k = 0; k < t->ndim; k++) numel *= t->shape[k];
        if (numel != t->numel || numel * dtype_bits(t->dtype) / 8 != t->nbytes) abort();
    }
    if (8 + st_header_len(st) + off != len) abort(); /* tensors end exactly at EOF */
    for (size_t i = 0; i < st_metadata_count(st); i++) {
        const char *k, *v;
        if (st_metadata_at(st, i, &k, &v) || st_metadata(st, k) != v) abort();
    }
    (void)sink;
}

static void try_parse(const uint8_t *buf, size_t len) {
    char err[QIE_ERR_LEN];
    SafeTensors *st = NULL;
    int rc = st_parse_header(err, buf, len, &st);
    if (rc == 0) {
        walk(st, buf, len);
    } else if (st != NULL || memchr(err, 0, sizeof err) == NULL) {
        abort(); /* failure must leave *out NULL and a terminated message */
    }
    st_close(&st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    try_parse(copy, size);
    free(copy);

    if (size >= 1) {
        size_t dlen = data[0], hlen = size - 1, len = 8 + hlen + dlen;
        uint8_t *b = calloc(1, len);
        if (!b) return 0;
        for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
        memcpy(b + 8, data + 1, hlen);
        try_parse(b, len);
        free(b);
    }
    return 0;
}
