/* ep_internal.h: the backend table behind endpoint.h. Each backend (ep_stream.c for pipes and
 * files, ep_zmq.c for ZeroMQ, ep_lmdb.c for the cache) fills an EpOps and its own state; the
 * dispatcher in endpoint.c owns the Endpoint and counts records. Not for stages. */
#ifndef QIE_COMMON_EP_INTERNAL_H
#define QIE_COMMON_EP_INTERNAL_H

#include "endpoint.h"

typedef struct {
    const char *name;
    /* read: borrowed bytes valid until the next call; QIE_EEOF / QIE_EPEER as in endpoint.h */
    int (*read)(char *err, void *state, const void **buf, size_t *len);
    int (*write)(char *err, void *state, const void *buf, size_t len);
    /* finish: count = records written through this endpoint */
    int (*finish)(char *err, void *state, int ok, const char *reason, uint64_t count);
    void (*close)(void *state);
} EpOps;

/* Backend constructors: parse their own URL part (after the scheme, query string included). */
int ep_stream_open(char *err, const char *url, EpMode mode, const EpOps **ops, void **state);
int ep_zmq_open(char *err, const char *url, EpMode mode, const EpOps **ops, void **state);
int ep_lmdb_open(char *err, const char *url, EpMode mode, const EpOps **ops, void **state);

#endif
