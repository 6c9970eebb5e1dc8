/* endpoint.c: URL dispatch to the backends, record counting and the record helpers. */
#include "endpoint.h"
#include "ep_internal.h"
#include "err.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

struct Endpoint {
    const EpOps *ops;
    void *state;
    EpMode mode;
    uint64_t count;
    int finished;
    char *url;
};

int ep_open(char *err, const char *url, EpMode mode, Endpoint **out) {
    if (!url || !*url) {
        qie_seterr(err, "endpoint: empty URL");
        return QIE_EINVAL;
    }
    /* a vanished reader must surface as EPIPE from write(), not kill the writer silently */
    signal(SIGPIPE, SIG_IGN);
    const EpOps *ops = NULL;
    void *state = NULL;
    const char *u = url;
    int rc;
    const char *z = (u[0] == '@' || u[0] == '>') ? u + 1 : u;
    if (!strncmp(z, "tcp://", 6) || !strncmp(z, "ipc://", 6) || !strncmp(z, "inproc://", 9))
        rc = ep_zmq_open(err, u, mode, &ops, &state);
    else if (!strncmp(u, "lmdb://", 7))
        rc = ep_lmdb_open(err, u + 7, mode, &ops, &state);
    else if (strstr(u, "://")) {
        qie_seterr(err, "endpoint '%s': unknown scheme (use -, a file path, tcp://, ipc:// or lmdb://)", url);
        return QIE_EINVAL;
    } else
        rc = ep_stream_open(err, u, mode, &ops, &state);
    if (rc) return rc;
    Endpoint *ep = calloc(1, sizeof *ep);
    char *dup = strdup(url);
    if (!ep || !dup) {
        free(ep);
        free(dup);
        ops->close(state);
        qie_seterr(err, "endpoint '%s': out of memory", url);
        return QIE_ENOMEM;
    }
    ep->ops = ops;
    ep->state = state;
    ep->mode = mode;
    ep->url = dup;
    *out = ep;
    return 0;
}

int ep_read(char *err, Endpoint *ep, const void **buf, size_t *len) {
    if (ep->mode != EP_READ) {
        qie_seterr(err, "endpoint '%s': opened for writing, not reading", ep->url);
        return QIE_EINVAL;
    }
    int rc = ep->ops->read(err, ep->state, buf, len);
    if (rc == 0) ep->count++;
    return rc;
}

int ep_read_record(char *err, Endpoint *ep, Record *r) {
    const void *buf;
    size_t len;
    int rc = ep_read(err, ep, &buf, &len);
    if (rc) {
        rec_free(r);
        return rc;
    }
    if ((rc = rec_decode(err, r, buf, len)))
        qie_preferr(err, "%s: record %llu", ep->url, (unsigned long long)ep->count);
    return rc;
}

int ep_write(char *err, Endpoint *ep, const void *buf, size_t len) {
    if (ep->mode != EP_WRITE || ep->finished) {
        qie_seterr(err, "endpoint '%s': not open for writing", ep->url);
        return QIE_EINVAL;
    }
    int rc = ep->ops->write(err, ep->state, buf, len);
    if (rc == 0) ep->count++;
    return rc;
}

int ep_write_record(char *err, Endpoint *ep, const Record *r) {
    void *buf;
    size_t len;
    int rc = rec_encode(err, r, &buf, &len);
    if (rc) return rc;
    rc = ep_write(err, ep, buf, len);
    free(buf);
    return rc;
}

int ep_finish(char *err, Endpoint *ep, int ok, const char *reason) {
    if (ep->finished) return 0;
    ep->finished = 1;
    if (ep->mode != EP_WRITE) return 0;
    return ep->ops->finish(err, ep->state, ok, reason, ep->count);
}

uint64_t ep_count(const Endpoint *ep) { return ep->count; }

void ep_close(Endpoint **epp) {
    if (!epp || !*epp) return;
    Endpoint *ep = *epp;
    if (ep->mode == EP_WRITE && !ep->finished) {
        char err[QIE_ERR_LEN];
        ep->finished = 1;
        ep->ops->finish(err, ep->state, 0, "writer closed without finishing", ep->count);
    }
    ep->ops->close(ep->state);
    free(ep->url);
    free(ep);
    *epp = NULL;
}
