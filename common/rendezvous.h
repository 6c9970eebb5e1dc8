/* rendezvous.h: how the ranks of a job find each other (docs/distributed.md "Rendezvous").
 *
 * Rank 0 listens on MASTER_PORT (every interface); ranks 1..W-1 connect to MASTER_ADDR:MASTER_PORT,
 * retrying until the timeout, and say hello (magic, version, world, rank, pid, host name). Rank 0
 * accepts until it has every rank, refuses another world size or a rank seen twice (a stale
 * process of an earlier job, usually) with a message the peer prints too, then answers each with
 * an ACK. The result is a star of TCP connections: rank 0 holds one socket per peer, a peer holds
 * one socket to rank 0. Keepalive is on (a node that vanishes is noticed within ~30 s), Nagle off.
 * The sockets are then
 *   - the data path of the CPU collectives (coll_cpu.c; rdzv_fd), or
 *   - a heartbeat for NCCL, which cannot notice a dead peer by itself (rdzv_watch_start).
 * rdzv_destroy says goodbye first (every peer, then rank 0), so that a normal end never looks like
 * a death to a watcher.
 *
 * defines: Rendezvous, rdzv_create/destroy/abort, rdzv_fd, rdzv_peer_desc, rdzv_broadcast,
 *          rdzv_watch_start/stop, rdzv_io_* (timed socket I/O shared with coll_cpu.c) */
#ifndef QIE_COMMON_RENDEZVOUS_H
#define QIE_COMMON_RENDEZVOUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Rendezvous Rendezvous;

/* Exit status for a rank that stops because ANOTHER rank failed (a collective reported
 * QIE_EPEER / QIE_ETIMEOUT, or the watcher lost a peer). qie-launch names a rank with any other
 * failure first: that one is the cause, this one the echo. Trainers should use it too. */
#define RDZV_EXIT_PEER 86

/* world >= 2. addr/port: MASTER_ADDR/MASTER_PORT (addr may be a name or an IPv4/IPv6 literal).
 * timeout_s: for the whole rendezvous (<= 0: 300). *out must be NULL; the caller frees it with
 * rdzv_destroy. Returns 0, QIE_ETIMEOUT, QIE_EMISMATCH (world sizes differ, duplicate rank),
 * QIE_EPEER (rank 0 refused us: err has its reason), or an errno (bind: EADDRINUSE ...). */
int rdzv_create(char *err, const char *addr, int port, int world, int rank, double timeout_s, Rendezvous **out);

/* Goodbye (bounded by the timeout: a peer that died is not waited for), stops a watcher, closes.
 * NULL-safe; nulls the pointer. Returns 0 or the goodbye's error. */
int rdzv_destroy(Rendezvous **r);
/* Closes without a goodbye (after a failure: the peers may be gone or stuck mid-collective, and
 * a goodbye would wait for them). NULL-safe; nulls the pointer. */
void rdzv_abort(Rendezvous **r);

/* The socket to rank `peer`: on rank 0 any peer 1..W-1, elsewhere only 0. -1 otherwise. The fd is
 * non-blocking and stays owned by r. */
int rdzv_fd(const Rendezvous *r, int peer);
int rdzv_world(const Rendezvous *r);
int rdzv_rank(const Rendezvous *r);
/* "rank 3 (host gpu-b, pid 4242)": for messages. Borrowed, valid until rdzv_destroy. */
const char *rdzv_peer_desc(const Rendezvous *r, int peer);

/* Rank 0 sends n bytes to every peer; peers receive them (the NCCL unique id). Same n everywhere. */
int rdzv_broadcast(char *err, Rendezvous *r, void *buf, size_t n);

/* Called from the watcher thread when a peer's socket closes or fails. The default (NULL) logs
 * "lost <peer desc>: ..." and ends the process with _exit(RDZV_EXIT_PEER): the job cannot go on, and a process
 * stuck in NCCL cannot be unblocked otherwise. */
typedef void (*RdzvLostFn)(int peer, const char *why, void *arg);
/* Starts a thread that polls every socket of r. The sockets must carry no other traffic while it
 * runs (NCCL backend). 0 or an errno. */
int rdzv_watch_start(char *err, Rendezvous *r, RdzvLostFn fn, void *arg);
void rdzv_watch_stop(Rendezvous *r); /* joins the thread; no-op when none runs */

/* ---- timed socket I/O on non-blocking fds (shared with coll_cpu.c) ------------------------- */

/* Sends / receives exactly n bytes within timeout_s of no progress. Returns 0, QIE_EPEER (the peer
 * closed the connection or reset it), QIE_ETIMEOUT, or an errno. MSG_NOSIGNAL: never SIGPIPE. */
int rdzv_io_send(int fd, const void *buf, size_t n, double timeout_s);
int rdzv_io_recv(int fd, void *buf, size_t n, double timeout_s);

#ifdef __cplusplus
}
#endif
#endif
