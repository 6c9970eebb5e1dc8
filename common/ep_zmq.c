/* ep_zmq.c: ZeroMQ endpoints with credit-based flow control and a counted end of stream.
 *
 * Sockets: the bound side is a ROUTER, the connecting side a DEALER with exactly one peer.
 * By default the reader (--in) binds and writers (--out) connect (fan-in); '@' / '>' in front of
 * the URL force bind / connect, so one bound writer can feed several connecting readers (fan-out).
 *
 * Messages (the ROUTER side sees an identity frame first):
 *   frame 0: 1 type byte, then for some types a u64 LE argument
 *     'H'      hello: the connecting side announces itself (first message it sends)
 *     'C' n    credit: the reader lets the writer send n more records
 *     'D'      data: frame 1 is one record
 *     'E' n    end of stream: the writer sent n records to this reader
 *     'A'      abort: frame 1 is the reason (the writer failed)
 *     'K'      end acknowledged: the reader has everything; the writer may exit
 * Credits, not high-water marks, bound what is in flight (at most `credit` records per
 * connection, ?credit=N, default 4): back-pressure in records, never gigabytes of queued tensors,
 * and no record stranded in the pipe of a slow or dead peer.
 * End of stream: the bound side waits for ?peers=N peers (default 1) to end (reader) or to
 * acknowledge the end (writer). A peer that disconnects before its end is a failed stage: the
 * socket monitor reports it and the stream fails with QIE_EPEER instead of hanging.
 * Tolerant mode (?rejoin=1, bound side): a peer that disconnects before its end is logged with the
 * number of records it had delivered and dropped instead of failing the stream; the stream still
 * ends when `peers` distinct peers have ended, and a restarted peer (a new ZeroMQ identity) counts
 * as a new one. The disconnect is tied to its peer through the connection's file descriptor: each
 * message records its source fd (ZMQ_SRCFD) and the monitor's DISCONNECTED event names the fd that
 * closed. What arrived from the dead peer stays delivered; what it had not sent is lost to this
 * stream, which is why the layers above re-send by id (docs/record.md). */
#include "ep_internal.h"
#include "err.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define ZMQ_MAX_PEERS 1024

typedef struct {
    unsigned char id[256];
    size_t idlen;
    int credit;
    int ended;  /* reader side: E received; writer side: E sent */
    int acked;  /* writer side: K received */
    uint64_t count; /* records received from / sent to this peer */
    int fd;         /* rejoin: the connection's fd as of its last message (-1: unknown) */
    int dying;      /* rejoin: its connection closed before its end; judged after a grace */
    int64_t dying_at;
    int gone;       /* rejoin: dropped (died before its end) */
} ZmqPeer;

typedef struct {
    void *ctx, *sock, *mon;
    EpMode mode;
    int bound;
    int expected; /* peers the bound side waits for */
    int window;   /* credit per connection */
    int timeout_ms;
    char name[300];
    ZmqPeer *peers;
    int npeers;
    int rr;       /* round-robin position among peers (bound writer) */
    int nended, nacked, ndisconnects, nconnected;
    int credit;   /* connecting writer: credit from its one reader */
    uint64_t received; /* connecting reader */
    zmq_msg_t cur;
    int have_cur;
    int cur_peer; /* bound reader: which peer sent cur */
    int eof;
    int64_t disc_at; /* a disconnect is judged only once the socket has been quiet a while:
                        messages sent before it (an end mark, an ack) may still be queued */
    int rejoin;      /* ?rejoin=1: a bound side tolerates peers that die before their end */
    int ngone;
} ZmqEp;

typedef struct {
    unsigned char id[256];
    size_t idlen;
    char type;
    uint64_t arg;
    zmq_msg_t payload;
    int has_payload;
    int fd;           /* source fd of the message (ZMQ_SRCFD), -1 when unknown */
} ZmqMsg;

static void put_u64_(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static uint64_t get_u64_(const unsigned char *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

static int zerr_(char *err, ZmqEp *z, const char *what) {
    int e = zmq_errno();
    qie_seterr(err, "%s: %s: %s", z->name, what, zmq_strerror(e));
    return e == EHOSTUNREACH ? QIE_EPEER : (e ? e : QIE_EIO);
}

/* Sends a control message (and optional payload) to peer `p` (bound side) or the one peer. */
static int send_(char *err, ZmqEp *z, const ZmqPeer *p, char type, uint64_t arg, int has_arg, const void *payload,
                 size_t plen, int has_payload) {
    unsigned char head[9];
    head[0] = (unsigned char)type;
    if (has_arg) put_u64_(head + 1, arg);
    if (z->bound) {
        if (zmq_send(z->sock, p->id, p->idlen, ZMQ_SNDMORE) < 0) return zerr_(err, z, "send identity");
    }
    if (zmq_send(z->sock, head, has_arg ? 9 : 1, has_payload ? ZMQ_SNDMORE : 0) < 0) return zerr_(err, z, "send");
    if (has_payload && zmq_send(z->sock, payload, plen, 0) < 0) return zerr_(err, z, "send payload");
    return 0;
}

static int64_t now_ms_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Handles one monitor event; returns 1 when it was a disconnect (its fd into *fd). */
static int monitor_event_(ZmqEp *z, int *fd) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, z->mon, ZMQ_DONTWAIT) < 0) { zmq_msg_close(&m); return 0; }
    uint16_t ev = 0;
    uint32_t val = 0;
    if (zmq_msg_size(&m) >= 2) memcpy(&ev, zmq_msg_data(&m), 2);
    if (zmq_msg_size(&m) >= 6) memcpy(&val, (const char *)zmq_msg_data(&m) + 2, 4);
    *fd = (int)val;
    int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    while (more) { /* second frame: the address */
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, z->mon, 0) < 0) { zmq_msg_close(&m); break; }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    if (ev == ZMQ_EVENT_CONNECTED || ev == ZMQ_EVENT_ACCEPTED) z->nconnected++;
    if (ev == ZMQ_EVENT_DISCONNECTED) { z->ndisconnects++; return 1; }
    return 0;
}

#define ZMQ_DISC_GRACE_MS 300

/* rejoin: the peers whose connection (fd) just closed before their end start dying; their fd is
 * forgotten at once, so a new connection that reuses the number is not mistaken for them */
static void rejoin_disconnect_(ZmqEp *z, int fd) {
    for (int i = 0; i < z->npeers; i++) {
        ZmqPeer *p = &z->peers[i];
        if (p->fd == fd && !p->gone) {
            p->fd = -1;
            if (!p->ended && !p->acked) {
                p->dying = 1;
                p->dying_at = now_ms_();
            }
        }
    }
}

/* rejoin: dying peers whose grace is over and that did not end meanwhile are dropped, loudly.
 * Returns the time of the next judgement (or -1). */
static int64_t rejoin_judge_(ZmqEp *z) {
    int64_t next = -1, now = now_ms_();
    for (int i = 0; i < z->npeers; i++) {
        ZmqPeer *p = &z->peers[i];
        if (!p->dying) continue;
        if (p->ended || p->acked) { p->dying = 0; continue; }
        if (now - p->dying_at >= ZMQ_DISC_GRACE_MS) {
            p->dying = 0;
            p->gone = 1;
            z->ngone++;
            if (z->mode == EP_READ)
                log_warn("%s: a producer disconnected before its end of stream after delivering %llu record(s) "
                         "(it died; what it had not sent is lost to this stream): waiting for %d more end(s) "
                         "from the others or a restarted producer", z->name, (unsigned long long)p->count,
                         z->expected - z->nended > 0 ? z->expected - z->nended : 0);
            else
                log_warn("%s: a consumer disconnected before the end after taking %llu record(s) (it died; "
                         "they are lost to this stream): going on with the others", z->name,
                         (unsigned long long)p->count);
        } else if (next < 0 || p->dying_at + ZMQ_DISC_GRACE_MS < next) {
            next = p->dying_at + ZMQ_DISC_GRACE_MS;
        }
    }
    return next;
}

/* Receives the next protocol message. QIE_ETIMEOUT after timeout_ms (when set). A disconnect
 * seen on the monitor returns QIE_EPEER when `premature` says it is premature (in rejoin mode the
 * peer is dropped instead, see rejoin_judge_). */
static int recv_(char *err, ZmqEp *z, ZmqMsg *out, int (*premature)(ZmqEp *)) {
    int64_t deadline = z->timeout_ms > 0 ? now_ms_() + z->timeout_ms : -1;
    for (;;) {
        zmq_pollitem_t items[2] = {{z->sock, 0, ZMQ_POLLIN, 0}, {z->mon, 0, ZMQ_POLLIN, 0}};
        int64_t now = now_ms_();
        long wait = deadline < 0 ? -1 : (long)(deadline - now);
        if (deadline >= 0 && wait <= 0) {
            qie_seterr(err, "%s: no message from any peer for %d ms", z->name, z->timeout_ms);
            return QIE_ETIMEOUT;
        }
        if (z->rejoin) {
            int64_t next = rejoin_judge_(z);
            if (next >= 0 && (wait < 0 || next - now < wait)) wait = (long)(next - now > 0 ? next - now : 0);
        }
        if (z->disc_at >= 0) {
            long grace = (long)(z->disc_at + 300 - now);
            if (grace <= 0) {
                if (premature && premature(z)) {
                    qie_seterr(err, "%s: a peer disconnected before the end of its stream (it died or failed)", z->name);
                    return QIE_EPEER;
                }
                z->disc_at = -1;
                continue;
            }
            if (wait < 0 || grace < wait) wait = grace;
        }
        int n = zmq_poll(items, 2, wait);
        if (n < 0) {
            if (zmq_errno() == EINTR) continue;
            return zerr_(err, z, "poll");
        }
        if (!(items[0].revents & ZMQ_POLLIN)) {
            int fd = -1;
            if ((items[1].revents & ZMQ_POLLIN) && monitor_event_(z, &fd)) {
                if (z->rejoin) rejoin_disconnect_(z, fd);
                else if (z->disc_at < 0) z->disc_at = now_ms_();
            }
            continue;
        }
        memset(out, 0, sizeof *out);
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (z->bound) {
            if (zmq_msg_recv(&f, z->sock, 0) < 0) { zmq_msg_close(&f); return zerr_(err, z, "recv identity"); }
            out->idlen = zmq_msg_size(&f) < sizeof out->id ? zmq_msg_size(&f) : sizeof out->id;
            memcpy(out->id, zmq_msg_data(&f), out->idlen);
            zmq_msg_close(&f);
            zmq_msg_init(&f);
        }
        if (zmq_msg_recv(&f, z->sock, 0) < 0) { zmq_msg_close(&f); return zerr_(err, z, "recv"); }
        out->fd = z->rejoin ? zmq_msg_get(&f, ZMQ_SRCFD) : -1;
        size_t hl = zmq_msg_size(&f);
        const unsigned char *h = zmq_msg_data(&f);
        int more = zmq_msg_more(&f);
        if (hl != 1 && hl != 9) {
            zmq_msg_close(&f);
            qie_seterr(err, "%s: a peer sent a message that is not qie's protocol", z->name);
            return QIE_EFORMAT;
        }
        out->type = (char)h[0];
        out->arg = hl == 9 ? get_u64_(h + 1) : 0;
        zmq_msg_close(&f);
        if (more) {
            zmq_msg_init(&out->payload);
            if (zmq_msg_recv(&out->payload, z->sock, 0) < 0) {
                zmq_msg_close(&out->payload);
                return zerr_(err, z, "recv payload");
            }
            out->has_payload = 1;
            while (zmq_msg_more(&out->payload)) { /* tolerate and drop extra frames */
                zmq_msg_t x;
                zmq_msg_init(&x);
                zmq_msg_recv(&x, z->sock, 0);
                int m2 = zmq_msg_more(&x);
                zmq_msg_close(&x);
                if (!m2) break;
            }
        }
        return 0;
    }
}

static void msg_release_(ZmqMsg *m) {
    if (m->has_payload) zmq_msg_close(&m->payload);
    m->has_payload = 0;
}

static int peer_find_(ZmqEp *z, const ZmqMsg *m) {
    for (int i = 0; i < z->npeers; i++)
        if (z->peers[i].idlen == m->idlen && !memcmp(z->peers[i].id, m->id, m->idlen)) return i;
    return -1;
}

static int peer_add_(char *err, ZmqEp *z, const ZmqMsg *m) {
    int i = peer_find_(z, m);
    if (i >= 0) return i;
    if (z->npeers >= ZMQ_MAX_PEERS) {
        qie_seterr(err, "%s: more than %d peers", z->name, ZMQ_MAX_PEERS);
        return QIE_ELIMIT;
    }
    ZmqPeer *p = realloc(z->peers, (size_t)(z->npeers + 1) * sizeof *p);
    if (!p) return QIE_ENOMEM;
    z->peers = p;
    memset(&p[z->npeers], 0, sizeof *p);
    memcpy(p[z->npeers].id, m->id, m->idlen);
    p[z->npeers].idlen = m->idlen;
    p[z->npeers].fd = -1;
    return z->npeers++;
}

/* peer_add_ plus, in rejoin mode, what the message says about the peer's connection */
static int peer_note_(char *err, ZmqEp *z, const ZmqMsg *m) {
    int i = peer_add_(err, z, m);
    if (i >= 0 && z->rejoin && m->fd >= 0 && !z->peers[i].dying && !z->peers[i].gone) z->peers[i].fd = m->fd;
    return i;
}

/* A send to a peer that is gone (ROUTER_MANDATORY: EHOSTUNREACH) is no failure in rejoin mode:
 * the monitor reports the disconnect and rejoin_judge_ drops the peer. */
static int send_peer_(char *err, ZmqEp *z, const ZmqPeer *p, char type, uint64_t arg, int has_arg, const void *payload,
                      size_t plen, int has_payload) {
    int rc = send_(err, z, p, type, arg, has_arg, payload, plen, has_payload);
    if (rc == QIE_EPEER && z->rejoin && z->bound) {
        log_debug("%s: '%c' to a peer that is gone: dropped", z->name, type);
        return 0;
    }
    return rc;
}

static char *abort_reason_(ZmqMsg *m, char *buf, size_t cap) {
    size_t n = m->has_payload ? zmq_msg_size(&m->payload) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(buf, zmq_msg_data(&m->payload), n);
    buf[n] = 0;
    return buf;
}

/* ---- reader ---- */

/* rejoin, at the end of the stream: the peers that never ended died (their disconnect may still
 * be unread behind the data that kept the socket busy); say what each had delivered */
static void rejoin_account_(ZmqEp *z) {
    for (int i = 0; i < z->npeers; i++) {
        ZmqPeer *p = &z->peers[i];
        if (p->ended || p->gone) continue;
        p->gone = 1;
        z->ngone++;
        log_warn("%s: a producer that delivered %llu record(s) never sent its end of stream (it died; what it had "
                 "not sent is lost to this stream)", z->name, (unsigned long long)p->count);
    }
    if (z->ngone)
        log_info("%s: %d producer(s) ended, %d died before their end", z->name, z->nended, z->ngone);
}

static int reader_premature_(ZmqEp *z) {
    return z->bound ? z->ndisconnects > z->nended : !z->eof;
}

static int zmq_read_(char *err, void *state, const void **buf, size_t *len) {
    ZmqEp *z = state;
    int rc;
    if (z->have_cur) { /* the previous record is consumed: one more credit to its sender */
        zmq_msg_close(&z->cur);
        z->have_cur = 0;
        const ZmqPeer *p = z->bound ? &z->peers[z->cur_peer] : NULL;
        if (!z->bound || (!p->ended && !p->gone))
            if ((rc = send_peer_(err, z, p, 'C', 1, 1, NULL, 0, 0))) return rc;
    }
    for (;;) {
        if (z->eof) return QIE_EEOF;
        if (z->bound && z->nended >= z->expected) {
            z->eof = 1;
            if (z->rejoin) rejoin_account_(z);
            return QIE_EEOF;
        }
        ZmqMsg m;
        if ((rc = recv_(err, z, &m, reader_premature_))) return rc;
        int pi = -1;
        if (z->bound) {
            if ((pi = peer_note_(err, z, &m)) < 0) { msg_release_(&m); return pi; }
        }
        switch (m.type) {
        case 'H':
            msg_release_(&m);
            if (z->bound && (rc = send_peer_(err, z, &z->peers[pi], 'C', (uint64_t)z->window, 1, NULL, 0, 0))) return rc;
            break;
        case 'D':
            if (!m.has_payload) {
                qie_seterr(err, "%s: a data message without a record", z->name);
                return QIE_EFORMAT;
            }
            z->cur = m.payload;
            z->have_cur = 1;
            if (z->bound) {
                z->cur_peer = pi;
                z->peers[pi].count++;
            } else {
                z->received++;
            }
            *buf = zmq_msg_data(&z->cur);
            *len = zmq_msg_size(&z->cur);
            return 0;
        case 'E': {
            msg_release_(&m);
            uint64_t got = z->bound ? z->peers[pi].count : z->received;
            if (got != m.arg) {
                qie_seterr(err, "%s: a peer ended after sending %llu records but %llu arrived", z->name,
                           (unsigned long long)m.arg, (unsigned long long)got);
                return QIE_EPEER;
            }
            if ((rc = send_peer_(err, z, z->bound ? &z->peers[pi] : NULL, 'K', 0, 0, NULL, 0, 0))) return rc;
            if (z->bound) {
                ZmqPeer *p = &z->peers[pi];
                if (!p->ended) { p->ended = 1; z->nended++; }
                if (p->gone) { /* its end was queued behind other traffic: it did not die */
                    p->gone = 0;
                    z->ngone--;
                    log_warn("%s: the producer reported dead above ended after all (%llu records)", z->name,
                             (unsigned long long)p->count);
                }
            } else {
                z->eof = 1;
            }
            break;
        }
        case 'A': {
            char why[256];
            abort_reason_(&m, why, sizeof why);
            msg_release_(&m);
            qie_seterr(err, "%s: the upstream stage failed: %s", z->name, why);
            return QIE_EPEER;
        }
        default:
            msg_release_(&m);
            qie_seterr(err, "%s: unexpected message '%c' for a reader (are two writers connected to each other?)", z->name, m.type);
            return QIE_EFORMAT;
        }
    }
}

/* ---- writer ---- */

static int writer_premature_(ZmqEp *z) {
    return z->bound ? z->ndisconnects > z->nacked : 1;
}

/* Processes one incoming message on the writer side (credits, hellos, acks). */
static int writer_pump_(char *err, ZmqEp *z) {
    ZmqMsg m;
    int rc = recv_(err, z, &m, writer_premature_);
    if (rc) return rc;
    msg_release_(&m);
    int pi = -1;
    if (z->bound && (pi = peer_note_(err, z, &m)) < 0) return pi;
    switch (m.type) {
    case 'H':
        return 0;
    case 'C':
        if (z->bound) z->peers[pi].credit += (int)m.arg;
        else z->credit += (int)m.arg;
        return 0;
    case 'K':
        if (z->bound) {
            if (!z->peers[pi].acked) { z->peers[pi].acked = 1; z->nacked++; }
        } else {
            z->nacked = 1;
        }
        return 0;
    default:
        qie_seterr(err, "%s: unexpected message '%c' for a writer (are two readers connected to each other?)", z->name, m.type);
        return QIE_EFORMAT;
    }
}

static int zmq_write_(char *err, void *state, const void *buf, size_t len) {
    ZmqEp *z = state;
    int rc;
    /* a bound writer waits for all its expected readers before the first record, so that the
       first to connect does not take the whole head of the stream (the slow-joiner problem) */
    while (z->bound && z->npeers - z->ngone < z->expected)
        if ((rc = writer_pump_(err, z))) return rc;
    for (;;) {
        if (!z->bound) {
            if (z->credit > 0) {
                if ((rc = send_(err, z, NULL, 'D', 0, 0, buf, len, 1))) return rc;
                z->credit--;
                return 0;
            }
        } else {
            for (int k = 0; k < z->npeers; k++) {
                int i = (z->rr + k) % z->npeers;
                ZmqPeer *p = &z->peers[i];
                if (p->credit > 0 && !p->ended && !p->gone && !p->dying) {
                    if ((rc = send_(err, z, p, 'D', 0, 0, buf, len, 1))) {
                        /* rejoin: the reader died with this record's credit; try the others */
                        if (rc == QIE_EPEER && z->rejoin) { p->credit = 0; continue; }
                        return rc;
                    }
                    p->credit--;
                    p->count++;
                    z->rr = (i + 1) % z->npeers;
                    return 0;
                }
            }
        }
        if ((rc = writer_pump_(err, z))) return rc;
    }
}

static int zmq_finish_(char *err, void *state, int ok, const char *reason, uint64_t count) {
    ZmqEp *z = state;
    int rc;
    const char *why = reason ? reason : "aborted";
    if (!ok) { /* best effort: tell every known reader, do not wait */
        if (!z->bound) return send_(err, z, NULL, 'A', 0, 0, why, strlen(why), 1);
        for (int i = 0; i < z->npeers; i++) send_(err, z, &z->peers[i], 'A', 0, 0, why, strlen(why), 1);
        return 0;
    }
    if (!z->bound) {
        if ((rc = send_(err, z, NULL, 'E', count, 1, NULL, 0, 0))) return rc;
        while (!z->nacked)
            if ((rc = writer_pump_(err, z))) return rc;
        return 0;
    }
    /* bound writer: every reader that ever appears gets its own count; wait for `expected` acks */
    for (;;) {
        for (int i = 0; i < z->npeers; i++) {
            ZmqPeer *p = &z->peers[i];
            if (!p->ended && !p->gone) {
                if ((rc = send_peer_(err, z, p, 'E', p->count, 1, NULL, 0, 0))) return rc;
                p->ended = 1;
            }
        }
        if (z->nacked >= z->expected) return 0;
        if ((rc = writer_pump_(err, z))) return rc;
    }
}

static void zmq_close_(void *state) {
    ZmqEp *z = state;
    if (!z) return;
    if (z->have_cur) zmq_msg_close(&z->cur);
    if (z->mon) zmq_close(z->mon);
    if (z->sock) zmq_close(z->sock);
    if (z->ctx) zmq_ctx_term(z->ctx);
    free(z->peers);
    free(z);
}

static const EpOps zmq_ops_ = {"zmq", zmq_read_, zmq_write_, zmq_finish_, zmq_close_};

/* Parses "?peers=N&credit=N&timeout=SECONDS" off the end of addr (in place). */
static int parse_query_(char *err, ZmqEp *z, char *addr) {
    char *q = strchr(addr, '?');
    if (!q) return 0;
    *q++ = 0;
    for (char *tok = strtok(q, "&"); tok; tok = strtok(NULL, "&")) {
        char *eq = strchr(tok, '=');
        char *end = NULL;
        long v = eq ? strtol(eq + 1, &end, 10) : 0;
        if (!eq || !*(eq + 1) || *end || v < 0) {
            qie_seterr(err, "%s: bad query parameter '%s'", z->name, tok);
            return QIE_EINVAL;
        }
        *eq = 0;
        if (!strcmp(tok, "peers") && v >= 1 && v <= ZMQ_MAX_PEERS) z->expected = (int)v;
        else if (!strcmp(tok, "credit") && v >= 1 && v <= 1024) z->window = (int)v;
        else if (!strcmp(tok, "timeout")) z->timeout_ms = (int)(v * 1000);
        else if (!strcmp(tok, "rejoin") && v <= 1) z->rejoin = (int)v;
        else {
            qie_seterr(err, "%s: unknown or out-of-range parameter '%s' (peers=1..%d, credit=1..1024, timeout=seconds, "
                       "rejoin=0|1)",
                       z->name, tok, ZMQ_MAX_PEERS);
            return QIE_EINVAL;
        }
    }
    return 0;
}

int ep_zmq_open(char *err, const char *url, EpMode mode, const EpOps **ops, void **state) {
    ZmqEp *z = calloc(1, sizeof *z);
    if (!z) return QIE_ENOMEM;
    int rc = 0;
    char addr[300], mon_addr[64];
    z->mode = mode;
    z->disc_at = -1;
    z->expected = 1;
    z->window = 4;
    snprintf(z->name, sizeof z->name, "%s", url);
    const char *u = url;
    z->bound = mode == EP_READ;
    if (*u == '@') { z->bound = 1; u++; }
    else if (*u == '>') { z->bound = 0; u++; }
    if (snprintf(addr, sizeof addr, "%s", u) >= (int)sizeof addr) {
        qie_seterr(err, "%s: address too long", url);
        rc = QIE_EINVAL;
        goto fail;
    }
    if ((rc = parse_query_(err, z, addr))) goto fail;
    if (z->rejoin && !z->bound) {
        qie_seterr(err, "%s: rejoin=1 is for the bound side (the one that waits for ?peers=N)", url);
        rc = QIE_EINVAL;
        goto fail;
    }
    if (!(z->ctx = zmq_ctx_new())) { rc = zerr_(err, z, "zmq_ctx_new"); goto fail; }
    if (!(z->sock = zmq_socket(z->ctx, z->bound ? ZMQ_ROUTER : ZMQ_DEALER))) { rc = zerr_(err, z, "zmq_socket"); goto fail; }
    int hwm = 4 * z->window + 64, linger = 2000, one = 1;
    /* credits bound the data in flight; the HWM only has to leave room for control messages */
    if (zmq_setsockopt(z->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) || zmq_setsockopt(z->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger)) {
        rc = zerr_(err, z, "zmq_setsockopt");
        goto fail;
    }
    if (z->bound && zmq_setsockopt(z->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one)) {
        rc = zerr_(err, z, "zmq_setsockopt ROUTER_MANDATORY");
        goto fail;
    }
    /* heartbeats notice a peer host that vanished without closing its TCP connection */
    int ivl = 5000, hto = 60000; /* generous: a stage stalled by a loaded host is not a dead one */
    if (zmq_setsockopt(z->sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl) || zmq_setsockopt(z->sock, ZMQ_HEARTBEAT_TIMEOUT, &hto, sizeof hto)) {
        rc = zerr_(err, z, "zmq_setsockopt HEARTBEAT");
        goto fail;
    }
    snprintf(mon_addr, sizeof mon_addr, "inproc://qie-monitor-%p", (void *)z);
    if (zmq_socket_monitor(z->sock, mon_addr, ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECTED | ZMQ_EVENT_ACCEPTED)) {
        rc = zerr_(err, z, "zmq_socket_monitor");
        goto fail;
    }
    if (!(z->mon = zmq_socket(z->ctx, ZMQ_PAIR)) || zmq_connect(z->mon, mon_addr)) {
        rc = zerr_(err, z, "monitor socket");
        goto fail;
    }
    if (z->bound ? zmq_bind(z->sock, addr) : zmq_connect(z->sock, addr)) {
        rc = zerr_(err, z, z->bound ? "bind" : "connect");
        goto fail;
    }
    if (!z->bound) { /* queued until the connection is up: the bound side may start later */
        if ((rc = send_(err, z, NULL, 'H', 0, 0, NULL, 0, 0))) goto fail;
        if (mode == EP_READ && (rc = send_(err, z, NULL, 'C', (uint64_t)z->window, 1, NULL, 0, 0))) goto fail;
    }
    *ops = &zmq_ops_;
    *state = z;
    return 0;
fail:
    zmq_close_(z);
    return rc;
}
