/* coll_internal.h: what the collectives' front (coll.c) and its backends (coll_cpu.c,
 * coll_nccl.c) share. Not for callers: they see Coll as an opaque handle (coll.h). */
#ifndef QIE_COMMON_COLL_INTERNAL_H
#define QIE_COMMON_COLL_INTERNAL_H

#include "coll.h"

typedef struct CollVtbl {
    int (*all_reduce)(char *err, Coll *c, void *buf, size_t n, QieDtype dt, CollOp op);
    int (*reduce_scatter)(char *err, Coll *c, void *recv, const void *send, size_t n, QieDtype dt, CollOp op);
    int (*all_gather)(char *err, Coll *c, void *recv, const void *send, size_t n, QieDtype dt);
    int (*broadcast)(char *err, Coll *c, void *buf, size_t n, QieDtype dt, int root);
    int (*barrier)(char *err, Coll *c);
    int (*group)(char *err, Coll *c, int begin);
    int (*join)(char *err, Coll *c, int host);
    int (*destroy)(Coll *c); /* frees c */
} CollVtbl;

struct Coll {
    const CollVtbl *vt;
    CollBackend backend;
    int world, rank;
};

int coll_cpu_create_(char *err, const CollConfig *cfg, Coll **out);
int coll_nccl_create_(char *err, const CollConfig *cfg, Coll **out);

#endif
