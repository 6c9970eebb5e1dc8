/* endpoint.h: where records come from and go to. Every stage takes --in URL and --out URL.
 *
 *   -                 stdin (reading) / stdout (writing): a length-framed record stream
 *   PATH              a file holding the same framed stream; written to PATH.tmp.<pid>, fsync'ed
 *                     and renamed to PATH only when the stream ends well (ep_finish ok=1)
 *   tcp://HOST:PORT   ZeroMQ. Rule: the side that receives (--in) binds and the side that sends
 *   ipc://PATH        (--out) connects, so many producers feed one consumer by default. Prefix
 *                     '@' to force bind ("@tcp://0.0.0.0:5555") or '>' to force connect, for one
 *                     producer feeding many consumers. The bound side expects ?peers=N peers
 *                     (default 1) and ends the stream only when all of them have.
 *   lmdb://DIR        the LMDB latent cache (common/ep_lmdb.c; see the cache docs)
 *
 * Stream semantics: a writer ends with ep_finish(ok=1), which sends an end-of-stream mark
 * carrying the number of records sent; a reader returns QIE_EEOF only after every peer's mark
 * arrived and the counts agree. A stream that stops without the mark (a stage died, a file was
 * truncated) or that carries an abort mark (ep_finish ok=0) makes ep_read return QIE_EPEER, so a
 * pipeline exits non-zero when any stage fails. docs/record.md describes the framing. */
#ifndef QIE_COMMON_ENDPOINT_H
#define QIE_COMMON_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "record.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Endpoint Endpoint;

typedef enum { EP_READ = 0, EP_WRITE = 1 } EpMode;

/* Opens url for reading or writing. *out must be NULL; free with ep_close. */
int ep_open(char *err, const char *url, EpMode mode, Endpoint **out);

/* Next record's bytes: borrowed, valid until the next ep_read or ep_close.
 * Returns 0, QIE_EEOF (clean end of stream), QIE_EPEER (the upstream failed or vanished), or an
 * I/O / format error. */
int ep_read(char *err, Endpoint *ep, const void **buf, size_t *len);

/* ep_read + rec_decode into r (rec_free'd first). Tensor payloads may borrow from the endpoint's
 * buffer: valid until the next ep_read/ep_read_record or ep_close. */
int ep_read_record(char *err, Endpoint *ep, Record *r);

/* Sends one record's bytes (copied or fully sent before returning). Blocks while downstream is
 * full: that is the back-pressure. QIE_EPEER when the downstream is gone. */
int ep_write(char *err, Endpoint *ep, const void *buf, size_t len);

/* rec_encode + ep_write. */
int ep_write_record(char *err, Endpoint *ep, const Record *r);

/* Writer: ends the stream. ok=1: end-of-stream mark (and, for files, the atomic rename);
 * ok=0: abort mark with `reason` (may be NULL), so readers fail too. Waits until readers have
 * the mark (ZeroMQ) or the data is durable (files). Call once; ep_close without it aborts. */
int ep_finish(char *err, Endpoint *ep, int ok, const char *reason);

/* Records read or written so far. */
uint64_t ep_count(const Endpoint *ep);

/* Closes and frees; *ep becomes NULL. NULL or *ep == NULL is a no-op. */
void ep_close(Endpoint **ep);

#ifdef __cplusplus
}
#endif
#endif
