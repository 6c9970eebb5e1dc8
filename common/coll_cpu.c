/* coll_cpu.c: the CPU backend of coll.h: host buffers, real processes, a star of TCP sockets
 * through rank 0 (rendezvous.h). What it is: a correct, deterministic reference that tests run
 * across processes (and a CPU multi-process run can use). What it is not: fast (rank 0 moves every
 * byte; a ring would spread the load but sum in a rotated order per chunk).
 *
 * Determinism: rank 0 sums every element as ((x0 + x1) + x2) + ... + x(W-1) in f32 (bf16 inputs
 * are widened, rounded once at the end), then divides by W for COLL_AVG, and sends the same bits
 * to every rank. A test can compute the same sum locally and compare bit for bit.
 *
 * Every message is a 32-byte header plus data: magic, the call's kind (operation, dtype, op or
 * root), its sequence number, its element count and the bytes that follow. A rank that is in a
 * different call (a bug in the caller) is reported naming both calls instead of reducing garbage.
 * Messages are at most COLL_CPU_CHUNK bytes, so memory stays bounded for any n. After any failure
 * the object is unusable (the streams are out of step) and every call repeats the first error. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll_internal.h"
#include "err.h"
#include "log.h"
#include "rendezvous.h"

#define MSG_MAGIC 0x4c4f4351u /* "QCOL" */
#define CHUNK_ELEMS ((size_t)COLL_CPU_CHUNK / 4)

enum { OP_ALL_REDUCE = 1, OP_REDUCE_SCATTER, OP_ALL_GATHER, OP_BROADCAST, OP_BARRIER };

typedef struct {
    Coll base;
    Rendezvous *rdzv; /* NULL when world == 1 */
    double timeout_s;
    uint64_t seq;
    float *acc;       /* f32 [CHUNK_ELEMS]: rank 0's running sum */
    void *tmp;        /* [COLL_CPU_CHUNK]: a peer's chunk */
    void *res;        /* [COLL_CPU_CHUNK]: a reduced chunk on its way to a peer */
    int broken;       /* an earlier call failed */
    char broken_msg[QIE_ERR_LEN];
} CollCpu;

typedef struct {
    uint32_t kind; /* op << 16 | dtype << 8 | (redop or root) */
    uint64_t seq, n;
    const char *name;
} Call;

static const char *op_name_(uint32_t op) {
    switch (op) {
    case OP_ALL_REDUCE: return "all_reduce";
    case OP_REDUCE_SCATTER: return "reduce_scatter";
    case OP_ALL_GATHER: return "all_gather";
    case OP_BROADCAST: return "broadcast";
    case OP_BARRIER: return "barrier";
    }
    return "?";
}

static void call_desc_(char *s, size_t cap, uint32_t kind, uint64_t seq, uint64_t n) {
    snprintf(s, cap, "%s #%llu (n=%llu, %s, %s %u)", op_name_(kind >> 16), (unsigned long long)seq,
             (unsigned long long)n, dtype_name((QieDtype)((kind >> 8) & 0xff)) ? dtype_name((QieDtype)((kind >> 8) & 0xff)) : "?",
             (kind >> 16) == OP_BROADCAST ? "root" : "op", kind & 0xff);
}

static size_t es_(QieDtype dt) { return dt == QIE_DT_BF16 ? 2 : 4; }

static void put64_(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t get64_(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Marks c broken with err's message (which must already be filled) and returns rc. */
static int fail_(CollCpu *c, char *err, int rc) {
    c->broken = 1;
    snprintf(c->broken_msg, sizeof c->broken_msg, "%s", err ? err : "collective failed");
    return rc;
}

static int io_fail_(CollCpu *c, char *err, const Call *k, int peer, int rc, const char *dir) {
    char d[160];
    call_desc_(d, sizeof d, k->kind, k->seq, k->n);
    const char *who = rdzv_peer_desc(c->rdzv, peer);
    if (rc == QIE_EPEER)
        qie_seterr(err, "%s: %s %s: the connection closed: it died, was killed or failed (see its log)", d, dir, who);
    else if (rc == QIE_ETIMEOUT)
        qie_seterr(err, "%s: %s %s: no progress for %.0f s (stuck or its node unreachable; QIE_COLL_TIMEOUT sets the "
                   "limit)", d, dir, who, c->timeout_s);
    else
        qie_seterr(err, "%s: %s %s: %s", d, dir, who, qie_strerror(rc));
    return fail_(c, err, rc == QIE_ETIMEOUT ? QIE_ETIMEOUT : QIE_EPEER);
}

static int send_(CollCpu *c, char *err, const Call *k, int peer, const void *data, size_t bytes) {
    unsigned char h[32];
    put64_(h, MSG_MAGIC | (uint64_t)k->kind << 32);
    put64_(h + 8, k->seq);
    put64_(h + 16, k->n);
    put64_(h + 24, bytes);
    int fd = rdzv_fd(c->rdzv, peer);
    int rc = rdzv_io_send(fd, h, sizeof h, c->timeout_s);
    if (!rc && bytes) rc = rdzv_io_send(fd, data, bytes, c->timeout_s);
    return rc ? io_fail_(c, err, k, peer, rc, "sending to") : 0;
}

static int recv_(CollCpu *c, char *err, const Call *k, int peer, void *data, size_t bytes) {
    unsigned char h[32];
    int fd = rdzv_fd(c->rdzv, peer);
    int rc = rdzv_io_recv(fd, h, sizeof h, c->timeout_s);
    if (rc) return io_fail_(c, err, k, peer, rc, "receiving from");
    uint64_t w0 = get64_(h), seq = get64_(h + 8), n = get64_(h + 16), nb = get64_(h + 24);
    if (!memcmp(h, "QIEBYE!!", 8)) { /* rendezvous.c's goodbye */
        char mine[160];
        call_desc_(mine, sizeof mine, k->kind, k->seq, k->n);
        qie_seterr(err, "%s: %s called coll_destroy while this rank is in this call\n"
                   "hint: every rank must make the same collective calls in the same order",
                   mine, rdzv_peer_desc(c->rdzv, peer));
        return fail_(c, err, QIE_EMISMATCH);
    }
    if ((uint32_t)w0 != MSG_MAGIC) {
        qie_seterr(err, "%s: garbage on the connection to %s (not a qie collective message)", k->name,
                   rdzv_peer_desc(c->rdzv, peer));
        return fail_(c, err, QIE_EFORMAT);
    }
    uint32_t kind = (uint32_t)(w0 >> 32);
    if (kind != k->kind || seq != k->seq || n != k->n || nb != bytes) {
        char mine[160], theirs[160];
        call_desc_(mine, sizeof mine, k->kind, k->seq, k->n);
        call_desc_(theirs, sizeof theirs, kind, seq, n);
        qie_seterr(err, "collective mismatch: %s is in %s while this rank is in %s\n"
                   "hint: every rank must make the same collective calls in the same order with the same sizes",
                   rdzv_peer_desc(c->rdzv, peer), theirs, mine);
        return fail_(c, err, QIE_EMISMATCH);
    }
    rc = bytes ? rdzv_io_recv(fd, data, bytes, c->timeout_s) : 0;
    return rc ? io_fail_(c, err, k, peer, rc, "receiving from") : 0;
}

static void widen_(float *dst, const void *src, size_t n, QieDtype dt) {
    if (dt == QIE_DT_F32) {
        memcpy(dst, src, n * 4);
        return;
    }
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
}

static void add_(float *acc, const void *src, size_t n, QieDtype dt) {
    if (dt == QIE_DT_F32) {
        const float *s = src;
        for (size_t i = 0; i < n; i++) acc[i] += s[i];
        return;
    }
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) acc[i] += bf16_to_f32(s[i]);
}

static void narrow_(void *dst, const float *src, size_t n, QieDtype dt) {
    if (dt == QIE_DT_F32) {
        memcpy(dst, src, n * 4);
        return;
    }
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
}

/* rank 0: out[0..cnt) = own + peers' chunks, in rank order (out may be own). */
static int root_reduce_(CollCpu *c, char *err, const Call *k, const void *own, void *out, size_t cnt, QieDtype dt,
                        CollOp op) {
    size_t bytes = cnt * es_(dt);
    widen_(c->acc, own, cnt, dt);
    for (int p = 1; p < c->base.world; p++) {
        int rc = recv_(c, err, k, p, c->tmp, bytes);
        if (rc) return rc;
        add_(c->acc, c->tmp, cnt, dt);
    }
    if (op == COLL_AVG) {
        const float w = (float)c->base.world;
        for (size_t i = 0; i < cnt; i++) c->acc[i] /= w;
    }
    narrow_(out, c->acc, cnt, dt);
    return 0;
}

static int begin_(CollCpu *c, char *err, Call *k, uint32_t op, QieDtype dt, uint32_t arg, size_t n) {
    k->kind = op << 16 | (uint32_t)dt << 8 | (arg & 0xff);
    k->seq = ++c->seq;
    k->n = n;
    k->name = op_name_(op);
    if (c->broken) {
        qie_seterr(err, "%s: collectives are unusable after an earlier failure: %s", k->name, c->broken_msg);
        return QIE_EPEER;
    }
    return 0;
}

#define NCHUNKS(n) ((n) ? ((n) + CHUNK_ELEMS - 1) / CHUNK_ELEMS : 1)
#define CHUNK_LEN(n, off) ((n) - (off) < CHUNK_ELEMS ? (n) - (off) : CHUNK_ELEMS)

static int cpu_all_reduce_(char *err, Coll *base, void *buf, size_t n, QieDtype dt, CollOp op) {
    CollCpu *c = (CollCpu *)base;
    Call k;
    int rc = begin_(c, err, &k, OP_ALL_REDUCE, dt, (uint32_t)op, n);
    if (rc || base->world == 1) return rc;
    const size_t es = es_(dt);
    for (size_t i = 0, off = 0; i < NCHUNKS(n); i++, off += CHUNK_ELEMS) {
        size_t cnt = CHUNK_LEN(n, off);
        char *p = (char *)buf + off * es;
        if (base->rank == 0) {
            if ((rc = root_reduce_(c, err, &k, p, p, cnt, dt, op))) return rc;
            for (int q = 1; q < base->world; q++)
                if ((rc = send_(c, err, &k, q, p, cnt * es))) return rc;
        } else {
            if ((rc = send_(c, err, &k, 0, p, cnt * es)) || (rc = recv_(c, err, &k, 0, p, cnt * es))) return rc;
        }
    }
    return 0;
}

static int cpu_reduce_scatter_(char *err, Coll *base, void *recv, const void *send, size_t n, QieDtype dt, CollOp op) {
    CollCpu *c = (CollCpu *)base;
    Call k;
    int rc = begin_(c, err, &k, OP_REDUCE_SCATTER, dt, (uint32_t)op, n);
    if (rc) return rc;
    const size_t es = es_(dt);
    if (base->world == 1) {
        if (recv != send) memmove(recv, send, n * es);
        return 0;
    }
    /* slice d of every rank's send buffer is reduced at rank 0 and goes to rank d; slices in
     * rank order, each in chunks */
    for (int d = 0; d < base->world; d++) {
        for (size_t i = 0, off = 0; i < NCHUNKS(n); i++, off += CHUNK_ELEMS) {
            size_t cnt = CHUNK_LEN(n, off);
            const char *src = (const char *)send + ((size_t)d * n + off) * es;
            char *dst = (char *)recv + off * es;
            if (base->rank == 0) {
                if ((rc = root_reduce_(c, err, &k, src, d == 0 ? dst : c->res, cnt, dt, op))) return rc;
                if (d != 0 && (rc = send_(c, err, &k, d, c->res, cnt * es))) return rc;
            } else {
                if ((rc = send_(c, err, &k, 0, src, cnt * es))) return rc;
                if (d == base->rank && (rc = recv_(c, err, &k, 0, dst, cnt * es))) return rc;
            }
        }
    }
    return 0;
}

static int cpu_all_gather_(char *err, Coll *base, void *recv, const void *send, size_t n, QieDtype dt) {
    CollCpu *c = (CollCpu *)base;
    Call k;
    int rc = begin_(c, err, &k, OP_ALL_GATHER, dt, 0, n);
    if (rc) return rc;
    const size_t es = es_(dt);
    const int me = base->rank, W = base->world;
    if (W == 1) {
        if (recv != send) memmove(recv, send, n * es);
        return 0;
    }
    for (int s = 0; s < W; s++) {
        for (size_t i = 0, off = 0; i < NCHUNKS(n); i++, off += CHUNK_ELEMS) {
            size_t cnt = CHUNK_LEN(n, off), bytes = cnt * es;
            char *dst = (char *)recv + ((size_t)s * n + off) * es;
            if (s == me) {
                const char *src = (const char *)send + off * es;
                if (dst != src) memmove(dst, src, bytes);
            }
            if (me == 0) {
                if (s != 0 && (rc = recv_(c, err, &k, s, dst, bytes))) return rc;
                for (int q = 1; q < W; q++)
                    if (q != s && (rc = send_(c, err, &k, q, dst, bytes))) return rc;
            } else if (s == me) {
                if ((rc = send_(c, err, &k, 0, dst, bytes))) return rc;
            } else {
                if ((rc = recv_(c, err, &k, 0, dst, bytes))) return rc;
            }
        }
    }
    return 0;
}

static int cpu_broadcast_(char *err, Coll *base, void *buf, size_t n, QieDtype dt, int root) {
    CollCpu *c = (CollCpu *)base;
    Call k;
    int rc = begin_(c, err, &k, OP_BROADCAST, dt, (uint32_t)root, n);
    if (rc || base->world == 1) return rc;
    const size_t es = es_(dt);
    const int me = base->rank, W = base->world;
    for (size_t i = 0, off = 0; i < NCHUNKS(n); i++, off += CHUNK_ELEMS) {
        size_t bytes = CHUNK_LEN(n, off) * es;
        char *p = (char *)buf + off * es;
        if (me == 0) {
            if (root != 0 && (rc = recv_(c, err, &k, root, p, bytes))) return rc;
            for (int q = 1; q < W; q++)
                if (q != root && (rc = send_(c, err, &k, q, p, bytes))) return rc;
        } else if (me == root) {
            if ((rc = send_(c, err, &k, 0, p, bytes))) return rc;
        } else {
            if ((rc = recv_(c, err, &k, 0, p, bytes))) return rc;
        }
    }
    return 0;
}

static int cpu_barrier_(char *err, Coll *base) {
    CollCpu *c = (CollCpu *)base;
    Call k;
    int rc = begin_(c, err, &k, OP_BARRIER, QIE_DT_F32, 0, 0);
    if (rc || base->world == 1) return rc;
    if (base->rank == 0) {
        for (int q = 1; q < base->world; q++)
            if ((rc = recv_(c, err, &k, q, NULL, 0))) return rc;
        for (int q = 1; q < base->world; q++)
            if ((rc = send_(c, err, &k, q, NULL, 0))) return rc;
        return 0;
    }
    if ((rc = send_(c, err, &k, 0, NULL, 0))) return rc;
    return recv_(c, err, &k, 0, NULL, 0);
}

static int cpu_group_(char *err, Coll *c, int begin) {
    (void)err, (void)c, (void)begin;
    return 0;
}

static int cpu_join_(char *err, Coll *c, int host) {
    (void)err, (void)c, (void)host;
    return 0;
}

static int cpu_destroy_(Coll *base) {
    CollCpu *c = (CollCpu *)base;
    int rc = 0;
    if (c->broken) rdzv_abort(&c->rdzv);
    else rc = rdzv_destroy(&c->rdzv);
    free(c->acc);
    free(c->tmp);
    free(c->res);
    free(c);
    return rc;
}

static const CollVtbl cpu_vtbl_ = {cpu_all_reduce_, cpu_reduce_scatter_, cpu_all_gather_, cpu_broadcast_,
                                   cpu_barrier_,    cpu_group_,          cpu_join_,       cpu_destroy_};

int coll_cpu_create_(char *err, const CollConfig *cfg, Coll **out) {
    CollCpu *c = calloc(1, sizeof *c);
    if (!c) {
        qie_seterr(err, "coll_create: out of memory");
        return QIE_ENOMEM;
    }
    c->base = (Coll){&cpu_vtbl_, COLL_CPU, cfg->world, cfg->rank};
    c->timeout_s = cfg->timeout_s > 0 ? cfg->timeout_s : 600;
    if (cfg->world > 1) {
        c->acc = malloc(CHUNK_ELEMS * sizeof(float));
        c->tmp = malloc(COLL_CPU_CHUNK);
        c->res = malloc(COLL_CPU_CHUNK);
        if (!c->acc || !c->tmp || !c->res) {
            cpu_destroy_(&c->base);
            qie_seterr(err, "coll_create: out of memory");
            return QIE_ENOMEM;
        }
        int rc = rdzv_create(err, cfg->master_addr, cfg->master_port, cfg->world, cfg->rank, cfg->rdzv_timeout_s,
                             &c->rdzv);
        if (rc) {
            cpu_destroy_(&c->base);
            qie_preferr(err, "coll_create (cpu, rank %d of %d)", cfg->rank, cfg->world);
            return rc;
        }
    }
    *out = &c->base;
    return 0;
}
