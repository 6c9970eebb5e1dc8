/* coll.h: collectives for data-parallel training (docs/distributed.md), one small interface over
 * two backends:
 *   COLL_NCCL  GPUs: device buffers, NCCL on its own CUDA stream (common/coll_nccl.c, QIE_CUDA
 *              builds only). Each call is ordered after the work already queued on the compute
 *              stream with a cudaEvent (no host sync) and returns at once; coll_join makes the
 *              compute stream wait for the communication (again an event), coll_sync waits on the
 *              host. llm.c zero.cuh: "by using an event instead of cudaSyncStream, we avoid having
 *              to synchronize the host".
 *   COLL_CPU   host buffers, real processes over TCP (common/coll_cpu.c): a star through rank 0,
 *              which reduces in rank order 0, 1, ..., W-1, so every rank gets the same bits and a
 *              rerun gets them again. For tests and CPU runs; not fast (rank 0 moves W× the data).
 *              Calls are synchronous; coll_join and coll_sync do nothing.
 * Both meet through the rendezvous at MASTER_ADDR:MASTER_PORT (rendezvous.h): the NCCL unique id
 * travels over it, the CPU backend keeps its sockets as the data path.
 *
 * Failure: a peer that dies makes the others fail within seconds, never hang. CPU backend: its
 * socket closes (EOF/ECONNRESET) and the call returns QIE_EPEER naming the rank; a peer that stops
 * answering hits the timeout (QIE_ETIMEOUT). NCCL backend: NCCL would wait forever, so a watcher
 * thread polls the rendezvous sockets (TCP keepalive covers vanished nodes) and ends the process
 * with a message naming the lost rank (rendezvous.h, rdzv_watch_start). NCCL errors are fatal
 * (NCCL_CHECK): the device state is unknown after one.
 *
 * Sizes: element counts are size_t; buffers of any size work (the CPU backend moves them in
 * chunks of COLL_CPU_CHUNK bytes; NCCL takes size_t counts).
 *
 * defines: CollBackend, CollOp, CollConfig, Coll, coll_create/destroy, coll_all_reduce,
 *          coll_reduce_scatter, coll_all_gather, coll_broadcast, coll_barrier, coll_group_begin/end,
 *          coll_join, coll_sync, coll_world, coll_rank, coll_backend_name */
#ifndef QIE_COMMON_COLL_H
#define QIE_COMMON_COLL_H

#include <stddef.h>

#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

#define COLL_CPU_CHUNK (4u << 20) /* bytes per message of the CPU backend */

typedef enum { COLL_CPU = 0, COLL_NCCL = 1 } CollBackend;
typedef enum { COLL_SUM = 0, COLL_AVG = 1 } CollOp; /* AVG = SUM / world (ncclAvg) */

typedef struct {
    CollBackend backend;
    int world, rank;           /* 0 <= rank < world */
    const char *master_addr;   /* rendezvous host (rank 0 listens on every interface) */
    int master_port;
    double rdzv_timeout_s;     /* rendezvous: how long to wait for every rank (<= 0: 300) */
    double timeout_s;          /* CPU backend: longest wait for a peer inside a call (<= 0: 600) */
    /* NCCL only */
    int device;                /* CUDA ordinal (normally LOCAL_RANK) */
    void *stream;              /* cudaStream_t of the compute work (NULL: the legacy stream) */
} CollConfig;

typedef struct Coll Coll;

/* Rendezvous with every rank and sets the backend up. *out must be NULL; on success the caller
 * owns *out and frees it with coll_destroy. world == 1 needs no rendezvous (every call is a copy
 * or nothing). Returns 0, QIE_EUNSUPPORTED (COLL_NCCL in a CPU-only build), QIE_ETIMEOUT (a rank
 * never came), QIE_EMISMATCH (a rank with another world size or a duplicate rank), or an errno. */
int coll_create(char *err, const CollConfig *cfg, Coll **out);

/* Says goodbye to every rank (so that no watcher mistakes a normal end for a death), then frees.
 * NULL-safe; nulls the pointer. Returns 0 or the error of the goodbye (logged, nothing to undo). */
int coll_destroy(Coll **c);

int coll_world(const Coll *c);
int coll_rank(const Coll *c);
CollBackend coll_backend(const Coll *c);
const char *coll_backend_name(CollBackend b); /* "cpu" or "nccl" */

/* Buffers: host memory for COLL_CPU, device memory for COLL_NCCL. dt is QIE_DT_F32 or QIE_DT_BF16
 * (the CPU backend sums bf16 in f32 in rank order and rounds once). Every rank must make the same
 * calls in the same order with the same counts; the CPU backend checks and returns QIE_EMISMATCH
 * naming both calls when they differ.
 *
 * buf[0..n) = op over ranks of buf[0..n). */
int coll_all_reduce(char *err, Coll *c, void *buf, size_t n, QieDtype dt, CollOp op);
/* recv[0..n) = op over ranks of send[rank·n .. rank·n + n): send holds world·n elements.
 * recv may be send + rank·n (in place, as ZeRO does with its gradient buffer). */
int coll_reduce_scatter(char *err, Coll *c, void *recv, const void *send, size_t n, QieDtype dt, CollOp op);
/* recv[r·n .. r·n + n) = send of rank r: recv holds world·n elements. send may be recv + rank·n
 * (in place). */
int coll_all_gather(char *err, Coll *c, void *recv, const void *send, size_t n, QieDtype dt);
/* buf[0..n) of every rank = buf of root. */
int coll_broadcast(char *err, Coll *c, void *buf, size_t n, QieDtype dt, int root);
/* Returns when every rank has called it. NCCL: also waits on the host for the queued work. */
int coll_barrier(char *err, Coll *c);

/* NCCL: ncclGroupStart/End around several calls (FSDP: one block's gathers at once). CPU: nothing. */
int coll_group_begin(char *err, Coll *c);
int coll_group_end(char *err, Coll *c);
/* NCCL: the compute stream waits (an event, no host sync) for everything queued so far; call it
 * before the compute stream reads a result. CPU: nothing. */
int coll_join(char *err, Coll *c);
/* NCCL: the host waits for everything queued so far. CPU: nothing. */
int coll_sync(char *err, Coll *c);

#ifdef __cplusplus
}
#endif
#endif
