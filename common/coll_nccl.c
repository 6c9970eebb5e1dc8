/* coll_nccl.c: the NCCL backend of coll.h (QIE_CUDA builds; elsewhere coll_create says the build
 * has no NCCL). Device buffers; every call is enqueued on the backend's own stream after an event
 * recorded on the compute stream, so communication overlaps whatever the compute stream does
 * next (llm.c zero.cuh: "by using an event instead of cudaSyncStream, we avoid having to
 * synchronize the host"). coll_join makes the compute stream wait for the communication stream
 * the same way.
 *
 * Setup: rank 0 makes the ncclUniqueId, the rendezvous (rendezvous.h) carries it to the others,
 * then ncclCommInitRank. The rendezvous sockets stay open as a heartbeat: NCCL waits forever for a
 * peer that died, so a watcher thread ends this process when a socket closes (rdzv_watch_start).
 * NCCL failures are fatal (NCCL_CHECK, check_nccl.h). Link with -lnccl. */
#include <stdlib.h>

#include "coll_internal.h"
#include "err.h"

#ifndef QIE_CUDA

int coll_nccl_create_(char *err, const CollConfig *cfg, Coll **out) {
    (void)cfg, (void)out;
    qie_seterr(err, "coll_create: the NCCL backend needs a CUDA build (make CUDA=1)");
    return QIE_EUNSUPPORTED;
}

#else

#include <cuda_runtime.h>

#include "check_cuda.h"
#include "check_nccl.h"
#include "log.h"
#include "rendezvous.h"

typedef struct {
    Coll base;
    Rendezvous *rdzv;  /* NULL when world == 1 */
    ncclComm_t comm;
    cudaStream_t compute;
    cudaStream_t stream; /* communication */
    cudaEvent_t ev_compute, ev_comm;
    float *d_scratch;    /* one float for the barrier */
} CollNccl;

static ncclDataType_t nccl_dt_(QieDtype dt) { return dt == QIE_DT_BF16 ? ncclBfloat16 : ncclFloat32; }
static ncclRedOp_t nccl_op_(CollOp op) { return op == COLL_AVG ? ncclAvg : ncclSum; }

/* The communication stream waits for everything queued on the compute stream so far. */
static void after_compute_(CollNccl *c) {
    CUDA_CHECK(cudaEventRecord(c->ev_compute, c->compute));
    CUDA_CHECK(cudaStreamWaitEvent(c->stream, c->ev_compute, 0));
}

static int nccl_all_reduce_(char *err, Coll *base, void *buf, size_t n, QieDtype dt, CollOp op) {
    (void)err;
    CollNccl *c = (CollNccl *)base;
    after_compute_(c);
    NCCL_CHECK(ncclAllReduce(buf, buf, n, nccl_dt_(dt), nccl_op_(op), c->comm, c->stream));
    return 0;
}

static int nccl_reduce_scatter_(char *err, Coll *base, void *recv, const void *send, size_t n, QieDtype dt,
                                CollOp op) {
    (void)err;
    CollNccl *c = (CollNccl *)base;
    after_compute_(c);
    NCCL_CHECK(ncclReduceScatter(send, recv, n, nccl_dt_(dt), nccl_op_(op), c->comm, c->stream));
    return 0;
}

static int nccl_all_gather_(char *err, Coll *base, void *recv, const void *send, size_t n, QieDtype dt) {
    (void)err;
    CollNccl *c = (CollNccl *)base;
    after_compute_(c);
    NCCL_CHECK(ncclAllGather(send, recv, n, nccl_dt_(dt), c->comm, c->stream));
    return 0;
}

static int nccl_broadcast_(char *err, Coll *base, void *buf, size_t n, QieDtype dt, int root) {
    (void)err;
    CollNccl *c = (CollNccl *)base;
    after_compute_(c);
    NCCL_CHECK(ncclBroadcast(buf, buf, n, nccl_dt_(dt), root, c->comm, c->stream));
    return 0;
}

static int nccl_barrier_(char *err, Coll *base) {
    (void)err;
    CollNccl *c = (CollNccl *)base;
    after_compute_(c);
    NCCL_CHECK(ncclAllReduce(c->d_scratch, c->d_scratch, 1, ncclFloat32, ncclSum, c->comm, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return 0;
}

static int nccl_group_(char *err, Coll *base, int begin) {
    (void)err, (void)base;
    if (begin) NCCL_CHECK(ncclGroupStart());
    else NCCL_CHECK(ncclGroupEnd());
    return 0;
}

static int nccl_join_(char *err, Coll *base, int host) {
    (void)err;
    CollNccl *c = (CollNccl *)base;
    if (host) {
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        return 0;
    }
    CUDA_CHECK(cudaEventRecord(c->ev_comm, c->stream));
    CUDA_CHECK(cudaStreamWaitEvent(c->compute, c->ev_comm, 0));
    return 0;
}

static int nccl_destroy_(Coll *base) {
    CollNccl *c = (CollNccl *)base;
    if (c->comm) {
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        NCCL_CHECK(ncclCommDestroy(c->comm));
    }
    if (c->ev_compute) CUDA_CHECK(cudaEventDestroy(c->ev_compute));
    if (c->ev_comm) CUDA_CHECK(cudaEventDestroy(c->ev_comm));
    if (c->stream) CUDA_CHECK(cudaStreamDestroy(c->stream));
    if (c->d_scratch) CUDA_CHECK(cudaFree(c->d_scratch));
    int rc = rdzv_destroy(&c->rdzv);
    free(c);
    return rc;
}

static const CollVtbl nccl_vtbl_ = {nccl_all_reduce_, nccl_reduce_scatter_, nccl_all_gather_, nccl_broadcast_,
                                    nccl_barrier_,    nccl_group_,          nccl_join_,       nccl_destroy_};

int coll_nccl_create_(char *err, const CollConfig *cfg, Coll **out) {
    CollNccl *c = calloc(1, sizeof *c);
    if (!c) {
        qie_seterr(err, "coll_create: out of memory");
        return QIE_ENOMEM;
    }
    c->base = (Coll){&nccl_vtbl_, COLL_NCCL, cfg->world, cfg->rank};
    c->compute = (cudaStream_t)cfg->stream;
    CUDA_CHECK(cudaSetDevice(cfg->device));
    ncclUniqueId id;
    if (cfg->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    if (cfg->world > 1) {
        int rc = rdzv_create(err, cfg->master_addr, cfg->master_port, cfg->world, cfg->rank, cfg->rdzv_timeout_s,
                             &c->rdzv);
        if (!rc) rc = rdzv_broadcast(err, c->rdzv, &id, sizeof id);
        if (rc) {
            rdzv_abort(&c->rdzv);
            free(c);
            qie_preferr(err, "coll_create (nccl, rank %d of %d)", cfg->rank, cfg->world);
            return rc;
        }
    }
    NCCL_CHECK(ncclCommInitRank(&c->comm, cfg->world, id, cfg->rank));
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&c->ev_compute, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&c->ev_comm, cudaEventDisableTiming));
    CUDA_CHECK(cudaMalloc((void **)&c->d_scratch, sizeof(float)));
    if (c->rdzv) {
        int rc = rdzv_watch_start(err, c->rdzv, NULL, NULL);
        if (rc) {
            nccl_destroy_(&c->base);
            return rc;
        }
    }
    int v = 0;
    ncclGetVersion(&v);
    log_debug("coll: NCCL %d, rank %d of %d on cuda:%d", v, cfg->rank, cfg->world, cfg->device);
    *out = &c->base;
    return 0;
}

#endif
