/* cat.h: qie-cat's loop, separate from main.c so tests can drive it. */
#ifndef QIE_STAGES_CAT_H
#define QIE_STAGES_CAT_H

#include <stdint.h>
#include <stdio.h>

#include "endpoint.h"

typedef struct {
    int64_t count;  /* records to copy; -1: all */
    int64_t skip;   /* records to skip first */
    int print;      /* one summary line per record on `print_to` */
    int check;      /* decode every record (always on with print) */
    FILE *print_to;
} CatOptions;

/* Copies records from `in` to `out` (out may be NULL with print). Stops early after `count`
 * records: then the input is not drained, and the upstream sees the reader go away. Returns 0
 * or the first error; *copied gets the number of records written or printed. */
int cat_run(char *err, const CatOptions *opt, Endpoint *in, Endpoint *out, uint64_t *copied);

#endif
