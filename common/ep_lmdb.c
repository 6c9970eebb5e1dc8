/* ep_lmdb.c: lmdb://DIR endpoints. Placeholder until the cache module lands (issue 4). */
#include "ep_internal.h"
#include "err.h"

int ep_lmdb_open(char *err, const char *url, EpMode mode, const EpOps **ops, void **state) {
    (void)mode; (void)ops; (void)state;
    qie_seterr(err, "lmdb://%s: the LMDB cache endpoint is not built into this qie", url);
    return QIE_EUNSUPPORTED;
}
