/* rendezvous.c: see rendezvous.h. Wire format (all integers little-endian):
 *   hello  (peer -> rank 0): "QIERDZV1" u32 version u32 world u32 rank u32 pid char host[64]
 *   reply  (rank 0 -> peer): "QIERDZVA" u32 status (0 ok, 1 refused) u32 pid char host[64] char reason[256]
 *   bye    (both ways):      "QIEBYE!!"
 * Nothing here is secret or authenticated: the port is only reachable inside the job's network,
 * as torchrun's TCPStore. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "rendezvous.h"

#define RDZV_VERSION 1
#define RDZV_HELLO_LEN (8 + 16 + 64)
#define RDZV_REPLY_LEN (8 + 8 + 64 + 256)
#define RDZV_HOST_LEN 64

typedef struct {
    int fd;
    int pid;
    char host[RDZV_HOST_LEN];
    char desc[128];
} RdzvPeer;

struct Rendezvous {
    int world, rank;
    double timeout_s;
    RdzvPeer *peers; /* [world]; on rank 0 peers[1..W-1], elsewhere only peers[0] */
    /* watcher */
    pthread_t thread;
    int watching;
    int wake[2];
    RdzvLostFn lost_fn;
    void *lost_arg;
};

static double now_(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void put_u32_(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32_(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- timed I/O ------------------------------------------------------------------------------ */

/* Waits for `events` on fd for at most timeout_s: 1 ready, 0 timed out, or -errno. */
static int wait_fd_(int fd, short events, double timeout_s) {
    double end = now_() + timeout_s;
    for (;;) {
        double left = end - now_();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int ms = left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
        int r = poll(&p, 1, ms);
        if (r > 0) return 1; /* POLLERR/POLLHUP too: the next send/recv says what happened */
        if (r < 0 && errno != EINTR) return -errno;
    }
}

int rdzv_io_send(int fd, const void *buf, size_t n, double timeout_s) {
    const char *p = buf;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd_(fd, POLLOUT, timeout_s);
            if (r == 0) return QIE_ETIMEOUT;
            if (r < 0) return -r;
            continue;
        }
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)) return QIE_EPEER;
        return w < 0 ? errno : QIE_EIO;
    }
    return 0;
}

int rdzv_io_recv(int fd, void *buf, size_t n, double timeout_s) {
    char *p = buf;
    while (n) {
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0) return QIE_EPEER;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = wait_fd_(fd, POLLIN, timeout_s);
            if (w == 0) return QIE_ETIMEOUT;
            if (w < 0) return -w;
            continue;
        }
        if (errno == ECONNRESET || errno == ENOTCONN || errno == ETIMEDOUT) return QIE_EPEER;
        return errno;
    }
    return 0;
}

/* ---- sockets -------------------------------------------------------------------------------- */

static void tune_(int fd) {
    int one = 1, idle = 10, intvl = 5, cnt = 3;
    /* best effort: a failure only weakens the detection of vanished nodes */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    /* big buffers: the CPU collectives stream MBs through these sockets */
    int sz = 4 << 20;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int listen_(char *err, int port) {
    int e = 0;
    for (int fam = 0; fam < 2; fam++) {
        int fd = socket(fam == 0 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1, zero = 0;
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        int r;
        if (fam == 0) {
            (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero); /* dual stack */
            struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                                     .sin6_addr = IN6ADDR_ANY_INIT};
            r = bind(fd, (struct sockaddr *)&a, sizeof a);
        } else {
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                    .sin_addr = {htonl(INADDR_ANY)}};
            r = bind(fd, (struct sockaddr *)&a, sizeof a);
        }
        if (r == 0 && listen(fd, 1024) == 0) {
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0) (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
            return fd;
        }
        e = errno;
        close(fd);
        if (e == EADDRINUSE) break; /* IPv4 would say the same */
    }
    qie_seterr(err, "rendezvous: listen on port %d: %s%s", port, strerror(e),
               e == EADDRINUSE ? "\nhint: another job (or a leftover process) holds MASTER_PORT; pick another "
                                 "with --master_port or MASTER_PORT" : "");
    return -e;
}

/* One connection attempt to every address of addr:port, each bounded by `slice` seconds.
 * Returns the fd or -errno of the last failure. */
static int connect_once_(const char *addr, int port, double slice, int *gai_err) {
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(addr, ps, &hints, &res);
    if (g) {
        *gai_err = g;
        return -EHOSTUNREACH;
    }
    int e = ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            freeaddrinfo(res);
            return fd;
        }
        if (errno == EINPROGRESS) {
            int w = wait_fd_(fd, POLLOUT, slice);
            int so = 0;
            socklen_t sl = sizeof so;
            if (w == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) == 0 && so == 0) {
                freeaddrinfo(res);
                return fd;
            }
            e = w == 0 ? ETIMEDOUT : w < 0 ? -w : so;
        } else {
            e = errno;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return -e;
}

static void describe_(RdzvPeer *p, int rank) {
    if (p->host[0])
        snprintf(p->desc, sizeof p->desc, "rank %d (host %s, pid %d)", rank, p->host, p->pid);
    else
        snprintf(p->desc, sizeof p->desc, "rank %d", rank);
}

static void hello_pack_(unsigned char *b, int world, int rank) {
    memset(b, 0, RDZV_HELLO_LEN);
    memcpy(b, "QIERDZV1", 8);
    put_u32_(b + 8, RDZV_VERSION);
    put_u32_(b + 12, (uint32_t)world);
    put_u32_(b + 16, (uint32_t)rank);
    put_u32_(b + 20, (uint32_t)getpid());
    char host[RDZV_HOST_LEN] = "";
    gethostname(host, sizeof host - 1);
    memcpy(b + 24, host, RDZV_HOST_LEN - 1);
}

static void reply_send_(int fd, int status, const char *reason, double timeout_s) {
    unsigned char b[RDZV_REPLY_LEN] = {0};
    memcpy(b, "QIERDZVA", 8);
    put_u32_(b + 8, (uint32_t)status);
    put_u32_(b + 12, (uint32_t)getpid());
    gethostname((char *)b + 16, RDZV_HOST_LEN - 1);
    snprintf((char *)b + 16 + RDZV_HOST_LEN, 256, "%s", reason ? reason : "");
    (void)rdzv_io_send(fd, b, sizeof b, timeout_s); /* a refusal is best effort */
}

static const char *io_what_(int rc) {
    return rc == QIE_EPEER ? "the connection closed" : rc == QIE_ETIMEOUT ? "timed out" : qie_strerror(rc);
}

/* rank 0: accept world-1 peers */
static int serve_(char *err, Rendezvous *r, int port, double deadline) {
    int lfd = listen_(err, port);
    if (lfd < 0) return -lfd;
    int got = 0, rc = 0;
    while (got < r->world - 1) {
        double left = deadline - now_();
        if (left <= 0) {
            char missing[256] = "";
            size_t m = 0;
            for (int i = 1; i < r->world && m + 16 < sizeof missing; i++)
                if (r->peers[i].fd < 0) m += (size_t)snprintf(missing + m, sizeof missing - m, "%s%d", m ? "," : "", i);
            qie_seterr(err, "rendezvous: only %d of %d ranks arrived at port %d within %.0f s (missing: %s)\n"
                       "hint: were all processes started, with the same MASTER_ADDR/MASTER_PORT and WORLD_SIZE?",
                       got + 1, r->world, port, r->timeout_s, missing);
            rc = QIE_ETIMEOUT;
            goto out;
        }
        int w = wait_fd_(lfd, POLLIN, left);
        if (w <= 0) continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        tune_(fd);
        unsigned char b[RDZV_HELLO_LEN];
        int io = rdzv_io_recv(fd, b, sizeof b, left < 10 ? left : 10);
        if (io || memcmp(b, "QIERDZV1", 8)) {
            log_warn("rendezvous: ignoring a connection that did not say hello (%s)", io ? io_what_(io) : "bad magic");
            close(fd);
            continue;
        }
        uint32_t ver = get_u32_(b + 8), world = get_u32_(b + 12), rank = get_u32_(b + 16);
        RdzvPeer p = {.fd = fd, .pid = (int)get_u32_(b + 20)};
        memcpy(p.host, b + 24, RDZV_HOST_LEN - 1);
        p.host[RDZV_HOST_LEN - 1] = 0;
        char why[256] = "";
        if (ver != RDZV_VERSION)
            snprintf(why, sizeof why, "rendezvous protocol %u, rank 0 speaks %d (mixed qie versions?)", ver, RDZV_VERSION);
        else if ((int)world != r->world)
            snprintf(why, sizeof why, "world size %u, but rank 0 has %d", world, r->world);
        else if (rank == 0 || (int)rank >= r->world)
            snprintf(why, sizeof why, "rank %u is out of range 1..%d", rank, r->world - 1);
        else if (r->peers[rank].fd >= 0)
            snprintf(why, sizeof why, "rank %u arrived twice (host %s pid %d, then host %.64s pid %d): a leftover process "
                     "of another job?", rank, r->peers[rank].host, r->peers[rank].pid, p.host, p.pid);
        if (why[0]) {
            reply_send_(fd, 1, why, 2);
            close(fd);
            qie_seterr(err, "rendezvous: a peer (host %s, pid %d) was refused: %s", p.host, p.pid, why);
            rc = QIE_EMISMATCH;
            goto out;
        }
        describe_(&p, (int)rank);
        r->peers[rank] = p;
        got++;
        log_debug("rendezvous: %s arrived (%d of %d)", p.desc, got + 1, r->world);
    }
    for (int i = 1; i < r->world; i++) reply_send_(r->peers[i].fd, 0, "", r->timeout_s);
out:
    close(lfd);
    if (rc)
        for (int i = 1; i < r->world; i++)
            if (r->peers[i].fd >= 0) {
                reply_send_(r->peers[i].fd, 1, err, 1);
                close(r->peers[i].fd);
                r->peers[i].fd = -1;
            }
    return rc;
}

/* rank > 0: connect to rank 0 */
static int join_(char *err, Rendezvous *r, const char *addr, int port, double deadline) {
    double backoff = 0.05;
    int fd = -1, last = 0, gai = 0;
    while ((fd = connect_once_(addr, port, 2.0, &gai)) < 0) {
        last = -fd;
        if (gai && (gai != EAI_AGAIN)) {
            qie_seterr(err, "rendezvous: MASTER_ADDR %s: %s", addr, gai_strerror(gai));
            return QIE_EINVAL;
        }
        if (now_() + backoff > deadline) {
            qie_seterr(err, "rendezvous: could not reach rank 0 at %s:%d within %.0f s (%s)\n"
                       "hint: is rank 0 running, and MASTER_ADDR/MASTER_PORT right and reachable from this node?",
                       addr, port, r->timeout_s, strerror(last));
            return QIE_ETIMEOUT;
        }
        struct timespec ts = {(time_t)backoff, (long)((backoff - (double)(time_t)backoff) * 1e9)};
        nanosleep(&ts, NULL);
        backoff = backoff * 2 > 1.0 ? 1.0 : backoff * 2;
    }
    tune_(fd);
    unsigned char b[RDZV_HELLO_LEN], rep[RDZV_REPLY_LEN];
    hello_pack_(b, r->world, r->rank);
    /* wait for the reply a little longer than rank 0 waits for the others: when a rank is
     * missing, rank 0's refusal (naming it) arrives at rank 0's deadline */
    double left = deadline - now_() + 5;
    int io = rdzv_io_send(fd, b, sizeof b, left > 1 ? left : 1);
    if (!io) io = rdzv_io_recv(fd, rep, sizeof rep, left > 1 ? left : 1);
    if (io) {
        close(fd);
        qie_seterr(err, "rendezvous with rank 0 at %s:%d: %s while waiting for the other ranks%s", addr, port,
                   io_what_(io), io == QIE_EPEER ? " (rank 0 failed or refused us: see its log)" : "");
        return io == QIE_EPEER ? QIE_EPEER : io;
    }
    if (memcmp(rep, "QIERDZVA", 8) || get_u32_(rep + 8) != 0) {
        rep[RDZV_REPLY_LEN - 1] = 0;
        close(fd);
        qie_seterr(err, "rendezvous: rank 0 at %s:%d refused rank %d: %s", addr, port, r->rank,
                   memcmp(rep, "QIERDZVA", 8) ? "not a qie rendezvous" : (char *)rep + 16 + RDZV_HOST_LEN);
        return QIE_EPEER;
    }
    r->peers[0].fd = fd;
    r->peers[0].pid = (int)get_u32_(rep + 12);
    memcpy(r->peers[0].host, rep + 16, RDZV_HOST_LEN - 1);
    r->peers[0].host[RDZV_HOST_LEN - 1] = 0;
    describe_(&r->peers[0], 0);
    return 0;
}

int rdzv_create(char *err, const char *addr, int port, int world, int rank, double timeout_s, Rendezvous **out) {
    if (!out || *out || world < 2 || rank < 0 || rank >= world || port < 1 || port > 65535 || !addr || !*addr) {
        qie_seterr(err, "rdzv_create: bad arguments (world %d, rank %d, %s:%d)", world, rank, addr ? addr : "(null)",
                   port);
        return QIE_EINVAL;
    }
    Rendezvous *r = calloc(1, sizeof *r);
    if (r) r->peers = calloc((size_t)world, sizeof *r->peers);
    if (!r || !r->peers) {
        if (r) free(r);
        qie_seterr(err, "rdzv_create: out of memory");
        return QIE_ENOMEM;
    }
    r->world = world;
    r->rank = rank;
    r->timeout_s = timeout_s > 0 ? timeout_s : 300;
    r->wake[0] = r->wake[1] = -1;
    for (int i = 0; i < world; i++) {
        r->peers[i].fd = -1;
        describe_(&r->peers[i], i);
    }
    snprintf(r->peers[0].host, sizeof r->peers[0].host, "%s", addr);
    describe_(&r->peers[0], 0);
    double deadline = now_() + r->timeout_s;
    int rc = rank == 0 ? serve_(err, r, port, deadline) : join_(err, r, addr, port, deadline);
    if (rc) {
        free(r->peers);
        free(r);
        return rc;
    }
    *out = r;
    return 0;
}

int rdzv_fd(const Rendezvous *r, int peer) {
    if (!r || peer < 0 || peer >= r->world || peer == r->rank) return -1;
    if (r->rank != 0 && peer != 0) return -1;
    return r->peers[peer].fd;
}
int rdzv_world(const Rendezvous *r) { return r->world; }
int rdzv_rank(const Rendezvous *r) { return r->rank; }
const char *rdzv_peer_desc(const Rendezvous *r, int peer) {
    return peer >= 0 && peer < r->world ? r->peers[peer].desc : "rank ?";
}

int rdzv_broadcast(char *err, Rendezvous *r, void *buf, size_t n) {
    if (r->rank == 0) {
        for (int i = 1; i < r->world; i++) {
            int rc = rdzv_io_send(r->peers[i].fd, buf, n, r->timeout_s);
            if (rc) {
                qie_seterr(err, "rendezvous broadcast to %s: %s", r->peers[i].desc, io_what_(rc));
                return rc;
            }
        }
        return 0;
    }
    int rc = rdzv_io_recv(r->peers[0].fd, buf, n, r->timeout_s);
    if (rc) qie_seterr(err, "rendezvous broadcast from rank 0: %s", io_what_(rc));
    return rc;
}

/* ---- watcher -------------------------------------------------------------------------------- */

static void *watch_main_(void *arg) {
    Rendezvous *r = arg;
    int n = r->world + 1;
    struct pollfd *p = calloc((size_t)n, sizeof *p);
    char *done = calloc((size_t)r->world, 1); /* said goodbye (or reported): not watched any more */
    if (!p || !done) {
        free(p);
        free(done);
        return NULL;
    }
    for (;;) {
        p[0] = (struct pollfd){.fd = r->wake[0], .events = POLLIN};
        for (int i = 0; i < r->world; i++)
            p[i + 1] = (struct pollfd){.fd = done[i] ? -1 : rdzv_fd(r, i), .events = POLLIN};
        int k = poll(p, (nfds_t)n, -1);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 || (p[0].revents & POLLIN)) break;
        for (int i = 0; i < r->world; i++) {
            if (p[i + 1].fd < 0 || !p[i + 1].revents) continue;
            char c;
            ssize_t got = recv(p[i + 1].fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
            if (got > 0) { /* the peer is saying goodbye: data for rdzv_destroy, not a death */
                done[i] = 1;
                continue;
            }
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            char why[128];
            snprintf(why, sizeof why, "%s", got == 0 ? "its connection closed" : strerror(errno));
            done[i] = 1;
            if (r->lost_fn) {
                r->lost_fn(i, why, r->lost_arg);
            } else {
                log_error("lost %s: %s. It died, was killed or its node went down; this rank cannot go on "
                          "(a collective would wait forever) and exits", r->peers[i].desc, why);
                _exit(RDZV_EXIT_PEER);
            }
        }
    }
    free(p);
    free(done);
    return NULL;
}

int rdzv_watch_start(char *err, Rendezvous *r, RdzvLostFn fn, void *arg) {
    if (r->watching) return 0;
    if (pipe2(r->wake, O_CLOEXEC)) {
        int e = errno;
        qie_seterr(err, "rdzv_watch_start: pipe: %s", strerror(e));
        return e;
    }
    r->lost_fn = fn;
    r->lost_arg = arg;
    int e = pthread_create(&r->thread, NULL, watch_main_, r);
    if (e) {
        close(r->wake[0]);
        close(r->wake[1]);
        r->wake[0] = r->wake[1] = -1;
        qie_seterr(err, "rdzv_watch_start: pthread_create: %s", strerror(e));
        return e;
    }
    r->watching = 1;
    return 0;
}

void rdzv_watch_stop(Rendezvous *r) {
    if (!r || !r->watching) return;
    char c = 1;
    while (write(r->wake[1], &c, 1) < 0 && errno == EINTR) {}
    pthread_join(r->thread, NULL);
    close(r->wake[0]);
    close(r->wake[1]);
    r->wake[0] = r->wake[1] = -1;
    r->watching = 0;
}

/* ---- goodbye -------------------------------------------------------------------------------- */

static void close_all_(Rendezvous *r) {
    for (int i = 0; i < r->world; i++)
        if (r->peers[i].fd >= 0) close(r->peers[i].fd);
    free(r->peers);
    free(r);
}

void rdzv_abort(Rendezvous **rp) {
    if (!rp || !*rp) return;
    rdzv_watch_stop(*rp);
    close_all_(*rp);
    *rp = NULL;
}

int rdzv_destroy(Rendezvous **rp) {
    if (!rp || !*rp) return 0;
    Rendezvous *r = *rp;
    rdzv_watch_stop(r);
    static const char bye[8] = "QIEBYE!!";
    char got[8];
    int rc = 0;
    if (r->rank == 0) {
        for (int i = 1; i < r->world; i++) {
            int io = rdzv_io_recv(r->peers[i].fd, got, sizeof got, r->timeout_s);
            if (!io && memcmp(got, bye, 8)) io = QIE_EMISMATCH;
            if (io && !rc) {
                rc = io;
                log_warn("rendezvous goodbye from %s: %s", r->peers[i].desc,
                         io == QIE_EMISMATCH ? "unexpected data (a collective left unfinished?)" : io_what_(io));
            }
        }
        for (int i = 1; i < r->world; i++) (void)rdzv_io_send(r->peers[i].fd, bye, sizeof bye, 5);
    } else {
        int io = rdzv_io_send(r->peers[0].fd, bye, sizeof bye, r->timeout_s);
        if (!io) io = rdzv_io_recv(r->peers[0].fd, got, sizeof got, r->timeout_s);
        if (!io && memcmp(got, bye, 8)) io = QIE_EMISMATCH;
        if (io) {
            rc = io;
            log_warn("rendezvous goodbye from rank 0: %s", io == QIE_EMISMATCH ? "unexpected data" : io_what_(io));
        }
    }
    close_all_(r);
    *rp = NULL;
    return rc;
}
