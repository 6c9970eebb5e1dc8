/* coll.c: the collectives' front (coll.h): argument checks, then the backend's function. */
#include <stdlib.h>

#include "coll_internal.h"
#include "err.h"

const char *coll_backend_name(CollBackend b) { return b == COLL_NCCL ? "nccl" : "cpu"; }

int coll_create(char *err, const CollConfig *cfg, Coll **out) {
    if (!cfg || !out || *out || cfg->world < 1 || cfg->rank < 0 || cfg->rank >= cfg->world) {
        qie_seterr(err, "coll_create: bad arguments (world %d, rank %d)", cfg ? cfg->world : -1, cfg ? cfg->rank : -1);
        return QIE_EINVAL;
    }
    if (cfg->world > 1 && (!cfg->master_addr || !*cfg->master_addr || cfg->master_port < 1 ||
                           cfg->master_port > 65535)) {
        qie_seterr(err, "coll_create: world %d needs MASTER_ADDR and MASTER_PORT (1..65535), got %s:%d", cfg->world,
                   cfg->master_addr ? cfg->master_addr : "(none)", cfg->master_port);
        return QIE_EINVAL;
    }
    switch (cfg->backend) {
    case COLL_CPU: return coll_cpu_create_(err, cfg, out);
    case COLL_NCCL: return coll_nccl_create_(err, cfg, out);
    }
    qie_seterr(err, "coll_create: unknown backend %d", (int)cfg->backend);
    return QIE_EINVAL;
}

int coll_destroy(Coll **c) {
    if (!c || !*c) return 0;
    int rc = (*c)->vt->destroy(*c);
    *c = NULL;
    return rc;
}

int coll_world(const Coll *c) { return c->world; }
int coll_rank(const Coll *c) { return c->rank; }
CollBackend coll_backend(const Coll *c) { return c->backend; }

static int check_dt_(char *err, const char *what, QieDtype dt) {
    if (dt == QIE_DT_F32 || dt == QIE_DT_BF16) return 0;
    qie_seterr(err, "%s: dtype must be f32 or bf16", what);
    return QIE_EUNSUPPORTED;
}

int coll_all_reduce(char *err, Coll *c, void *buf, size_t n, QieDtype dt, CollOp op) {
    int rc = check_dt_(err, "coll_all_reduce", dt);
    return rc ? rc : c->vt->all_reduce(err, c, buf, n, dt, op);
}

int coll_reduce_scatter(char *err, Coll *c, void *recv, const void *send, size_t n, QieDtype dt, CollOp op) {
    int rc = check_dt_(err, "coll_reduce_scatter", dt);
    return rc ? rc : c->vt->reduce_scatter(err, c, recv, send, n, dt, op);
}

int coll_all_gather(char *err, Coll *c, void *recv, const void *send, size_t n, QieDtype dt) {
    int rc = check_dt_(err, "coll_all_gather", dt);
    return rc ? rc : c->vt->all_gather(err, c, recv, send, n, dt);
}

int coll_broadcast(char *err, Coll *c, void *buf, size_t n, QieDtype dt, int root) {
    int rc = check_dt_(err, "coll_broadcast", dt);
    if (rc) return rc;
    if (root < 0 || root >= c->world) {
        qie_seterr(err, "coll_broadcast: root %d outside 0..%d", root, c->world - 1);
        return QIE_EINVAL;
    }
    return c->vt->broadcast(err, c, buf, n, dt, root);
}

int coll_barrier(char *err, Coll *c) { return c->vt->barrier(err, c); }
int coll_group_begin(char *err, Coll *c) { return c->vt->group(err, c, 1); }
int coll_group_end(char *err, Coll *c) { return c->vt->group(err, c, 0); }
int coll_join(char *err, Coll *c) { return c->vt->join(err, c, 0); }
int coll_sync(char *err, Coll *c) { return c->vt->join(err, c, 1); }
