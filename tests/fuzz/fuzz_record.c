/* fuzz_record: libFuzzer target for the record decoder (rec_decode) and, on success, the
 * re-encode of what it decoded. Build and run: make fuzz (needs clang). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[QIE_ERR_LEN];
    Record r;
    rec_init(&r);
    /* a private copy, so that a read past `size` is caught by ASan rather than hidden */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    if (rec_decode(err, &r, buf, size) == 0) {
        void *out;
        size_t len;
        if (rec_encode(err, &r, &out, &len) == 0) {
            Record again;
            rec_init(&again);
            if (rec_decode(err, &again, out, len) != 0) abort(); /* what we write, we must read */
            rec_free(&again);
            free(out);
        }
        char line[512];
        rec_summary(&r, line, sizeof line);
    }
    rec_free(&r);
    free(buf);
    return 0;
}
