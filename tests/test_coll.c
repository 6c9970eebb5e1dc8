/* test_coll.c: the CPU collectives, the rendezvous and dist_env across REAL processes (fork),
 * over TCP loopback (coll.h, rendezvous.h, dist_env.h).
 *   - W = 2 and 4: all_reduce (sum, avg, f32, bf16), reduce_scatter, all_gather, broadcast from
 *     every root, barrier, odd sizes and buffers of several MB (several chunks): each result equals
 *     bit for bit the rank-order sum computed locally, on every rank, twice;
 *   - failures end fast with a message naming the rank: a SIGKILLed peer (root or not), a stuck
 *     peer (timeout), mismatched calls, a rendezvous with a missing rank or a wrong world size, the
 *     NCCL-style watcher ending a process whose peer died, and no false alarm on a normal end;
 *   - dist_env: torchrun, Slurm, Open MPI and PMI variables, hostlists, errors.
 * `test_coll --worker` is the rank program t_launch.sh runs under qie-launch (QIE_TEST_FAIL_RANK=r:
 * rank r exits 1 after the first all_reduce); `test_coll --free-port` prints a free TCP port;
 * `test_coll --worker-nccl` (CUDA builds) checks the NCCL backend on 2+ GPUs under qie-launch. */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "coll.h"
#include "dist_env.h"
#include "err.h"
#include "log.h"
#include "rendezvous.h"
#include "testlib.h"

static double now_(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int free_port_(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr = {htonl(INADDR_LOOPBACK)}};
    socklen_t len = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- running W ranks ------------------------------------------------------------------------ */

typedef struct {
    int world, rank, port;
    double timeout_s, rdzv_timeout_s;
    int variant;
} Rank;

typedef int (*RankFn)(const Rank *r); /* returns the process's exit status */

/* Forks world ranks running fn, waits (killing everything after limit_s) and stores each wait
 * status. Returns the seconds it took. */
static double run_ranks_(int world, RankFn fn, int variant, double timeout_s, double rdzv_timeout_s, double limit_s,
                         int *status) {
    pid_t pid[16];
    int port = free_port_();
    double t0 = now_();
    fflush(NULL);
    for (int r = 0; r < world; r++) {
        pid[r] = fork();
        if (pid[r] == 0) {
            Rank rk = {world, r, port, timeout_s, rdzv_timeout_s, variant};
            log_set_rank(r);
            _exit(fn(&rk));
        }
    }
    int left = world;
    for (int r = 0; r < world; r++) status[r] = -1;
    while (left > 0) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0) {
            for (int r = 0; r < world; r++)
                if (pid[r] == p) status[r] = st;
            left--;
            continue;
        }
        if (now_() - t0 > limit_s) {
            for (int r = 0; r < world; r++)
                if (status[r] == -1) kill(pid[r], SIGKILL);
        }
        usleep(2000);
    }
    return now_() - t0;
}

static int open_(const Rank *r, Coll **c) {
    char err[QIE_ERR_LEN] = "";
    CollConfig cfg = {.backend = COLL_CPU, .world = r->world, .rank = r->rank, .master_addr = "127.0.0.1",
                      .master_port = r->port, .timeout_s = r->timeout_s, .rdzv_timeout_s = r->rdzv_timeout_s};
    int rc = coll_create(err, &cfg, c);
    if (rc) fprintf(stderr, "rank %d: coll_create: %s\n", r->rank, err);
    return rc;
}

/* deterministic, non-integer data: rank r, element i */
static float val_(int r, size_t i, int salt) {
    uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(r * 40503 + salt * 977);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return ((float)(h & 0xffffff) / 16777216.0f - 0.5f) * (1.0f + (float)r);
}

/* expected op over ranks of element i: ((x0 + x1) + x2) ..., then / W */
static float expect_(int world, size_t i, int salt, CollOp op) {
    float s = val_(0, i, salt);
    for (int r = 1; r < world; r++) s += val_(r, i, salt);
    return op == COLL_AVG ? s / (float)world : s;
}

#define FAILF(...) do { fprintf(stderr, "rank %d: ", r->rank); fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); bad++; } while (0)

static int ranks_ops_(const Rank *r) {
    Coll *c = NULL;
    char err[QIE_ERR_LEN] = "";
    if (open_(r, &c)) return 10;
    const int W = r->world, me = r->rank;
    int bad = 0;
    /* all_reduce: sizes around the chunk boundary (1M elements) and tiny odd ones */
    const size_t sizes[] = {0, 1, 7, 1000, (size_t)COLL_CPU_CHUNK / 4 + 3, 1500007};
    float *buf = malloc(1600000 * W * sizeof(float));
    float *ref = malloc(1600000 * W * sizeof(float));
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si];
        for (int op = 0; op < 2; op++) {
            for (int rep = 0; rep < 2; rep++) { /* twice: the same bits again */
                for (size_t i = 0; i < n; i++) buf[i] = val_(me, i, (int)si);
                int rc = coll_all_reduce(err, c, buf, n, QIE_DT_F32, (CollOp)op);
                if (rc) { FAILF("all_reduce n=%zu: %s", n, err); goto out; }
                for (size_t i = 0; i < n; i++) ref[i] = expect_(W, i, (int)si, (CollOp)op);
                if (n && memcmp(buf, ref, n * 4)) FAILF("all_reduce n=%zu op=%d rep=%d differs", n, op, rep);
            }
        }
    }
    /* bf16 all_reduce: sum in f32, one rounding */
    {
        size_t n = 12345;
        uint16_t *b = malloc(n * 2);
        for (size_t i = 0; i < n; i++) b[i] = f32_to_bf16(val_(me, i, 99));
        if (coll_all_reduce(err, c, b, n, QIE_DT_BF16, COLL_SUM)) { FAILF("bf16 all_reduce: %s", err); free(b); goto out; }
        for (size_t i = 0; i < n; i++) {
            float s = bf16_to_f32(f32_to_bf16(val_(0, i, 99)));
            for (int q = 1; q < W; q++) s += bf16_to_f32(f32_to_bf16(val_(q, i, 99)));
            if (b[i] != f32_to_bf16(s)) { FAILF("bf16 all_reduce [%zu]", i); break; }
        }
        free(b);
    }
    /* reduce_scatter, out of place and in place */
    for (int inplace = 0; inplace < 2; inplace++) {
        size_t n = 300007;
        for (size_t i = 0; i < n * W; i++) buf[i] = val_(me, i, 7);
        float *recv = inplace ? buf + (size_t)me * n : ref;
        if (coll_reduce_scatter(err, c, recv, buf, n, QIE_DT_F32, COLL_AVG)) { FAILF("reduce_scatter: %s", err); goto out; }
        for (size_t i = 0; i < n; i++)
            if (recv[i] != expect_(W, (size_t)me * n + i, 7, COLL_AVG)) { FAILF("reduce_scatter [%zu] inplace=%d", i, inplace); break; }
    }
    /* all_gather, out of place and in place */
    for (int inplace = 0; inplace < 2; inplace++) {
        size_t n = 500009;
        float *send = inplace ? ref + (size_t)me * n : buf;
        for (size_t i = 0; i < n; i++) send[i] = val_(me, i, 3);
        if (coll_all_gather(err, c, ref, send, n, QIE_DT_F32)) { FAILF("all_gather: %s", err); goto out; }
        for (int q = 0; q < W; q++)
            for (size_t i = 0; i < n; i++)
                if (ref[(size_t)q * n + i] != val_(q, i, 3)) { FAILF("all_gather rank %d [%zu]", q, i); q = W; break; }
    }
    /* broadcast from every root */
    for (int root = 0; root < W; root++) {
        size_t n = 1300001;
        for (size_t i = 0; i < n; i++) buf[i] = val_(me, i, 11);
        if (coll_broadcast(err, c, buf, n, QIE_DT_F32, root)) { FAILF("broadcast: %s", err); goto out; }
        for (size_t i = 0; i < n; i++)
            if (buf[i] != val_(root, i, 11)) { FAILF("broadcast root %d [%zu]", root, i); break; }
    }
    if (coll_barrier(err, c)) FAILF("barrier: %s", err);
    if (coll_join(err, c) || coll_sync(err, c) || coll_group_begin(err, c) || coll_group_end(err, c)) FAILF("no-ops");
out:
    free(buf);
    free(ref);
    if (coll_destroy(&c) && !bad) FAILF("coll_destroy");
    return bad ? 1 : 0;
}

static void test_ops_w2(void) {
    int st[2];
    double t = run_ranks_(2, ranks_ops_, 0, 20, 20, 60, st);
    for (int r = 0; r < 2; r++) CHECK(st[r] == 0, "rank %d status %#x", r, st[r]);
    printf("   W=2: every collective, 1.5M-element buffers: %.2f s\n", t);
}

static void test_ops_w4(void) {
    int st[4];
    double t = run_ranks_(4, ranks_ops_, 0, 20, 20, 60, st);
    for (int r = 0; r < 4; r++) CHECK(st[r] == 0, "rank %d status %#x", r, st[r]);
    printf("   W=4: every collective, 1.5M-element buffers: %.2f s\n", t);
}

static void test_world1(void) {
    char err[QIE_ERR_LEN] = "";
    Coll *c = NULL;
    CollConfig cfg = {.backend = COLL_CPU, .world = 1};
    CHECK_RC(coll_create(err, &cfg, &c), err);
    if (!c) return;
    float a[4] = {1, 2, 3, 4}, b[4];
    CHECK_RC(coll_all_reduce(err, c, a, 4, QIE_DT_F32, COLL_AVG), err);
    CHECK(a[2] == 3);
    CHECK_RC(coll_reduce_scatter(err, c, b, a, 4, QIE_DT_F32, COLL_SUM), err);
    CHECK(!memcmp(a, b, sizeof a));
    CHECK_RC(coll_all_gather(err, c, b, a, 4, QIE_DT_F32), err);
    CHECK_RC(coll_broadcast(err, c, a, 4, QIE_DT_F32, 0), err);
    CHECK(coll_broadcast(err, c, a, 4, QIE_DT_F32, 1) == QIE_EINVAL);
    CHECK(coll_all_reduce(err, c, a, 4, QIE_DT_I32, COLL_SUM) == QIE_EUNSUPPORTED);
    CHECK_RC(coll_barrier(err, c), err);
    CHECK(coll_world(c) == 1 && coll_rank(c) == 0 && !strcmp(coll_backend_name(coll_backend(c)), "cpu"));
    CHECK(coll_destroy(&c) == 0 && c == NULL);
    CHECK(coll_destroy(&c) == 0);
#ifndef QIE_CUDA
    cfg.backend = COLL_NCCL;
    CHECK(coll_create(err, &cfg, &c) == QIE_EUNSUPPORTED && strstr(err, "CUDA"), "%s", err);
#endif
    cfg = (CollConfig){.backend = COLL_CPU, .world = 2, .rank = 0};
    CHECK(coll_create(err, &cfg, &c) == QIE_EINVAL && strstr(err, "MASTER_ADDR"), "%s", err);
}

/* ---- failures ------------------------------------------------------------------------------- */

/* variant = the rank that is SIGKILLed before the second all_reduce */
static int ranks_kill_(const Rank *r) {
    Coll *c = NULL;
    char err[QIE_ERR_LEN] = "";
    if (open_(r, &c)) return 10;
    float buf[1000] = {0};
    if (coll_all_reduce(err, c, buf, 1000, QIE_DT_F32, COLL_SUM)) return 11;
    if (r->rank == r->variant) raise(SIGKILL);
    double t0 = now_();
    int rc = coll_all_reduce(err, c, buf, 1000, QIE_DT_F32, COLL_SUM);
    double dt = now_() - t0;
    char want[32];
    snprintf(want, sizeof want, "rank %d", r->rank == 0 ? r->variant : 0);
    int ok = rc == QIE_EPEER && strstr(err, want) && strstr(err, "closed") && dt < 5;
    if (!ok) fprintf(stderr, "rank %d: rc %d after %.2f s: %s\n", r->rank, rc, dt, err);
    /* a second call repeats the failure instead of hanging */
    int rc2 = coll_barrier(err, c);
    ok = ok && rc2 == QIE_EPEER && strstr(err, "earlier failure");
    coll_destroy(&c); /* after a failure: no goodbye, no wait */
    return ok ? 0 : 1;
}

static void test_killed_rank(void) {
    for (int victim = 0; victim < 4; victim += 2) {
        int st[4];
        double t = run_ranks_(4, ranks_kill_, victim, 30, 20, 30, st);
        for (int r = 0; r < 4; r++) {
            if (r == victim) CHECK(WIFSIGNALED(st[r]) && WTERMSIG(st[r]) == SIGKILL, "victim %#x", st[r]);
            else CHECK(WIFEXITED(st[r]) && WEXITSTATUS(st[r]) == 0, "rank %d (victim %d) status %#x", r, victim, st[r]);
        }
        CHECK(t < 5, "%.2f s", t);
        printf("   rank %d killed: the others failed in %.2f s\n", victim, t);
    }
}

/* rank 1 hangs (alive, silent): rank 0 times out */
static int ranks_stuck_(const Rank *r) {
    Coll *c = NULL;
    char err[QIE_ERR_LEN] = "";
    if (open_(r, &c)) return 10;
    if (r->rank == 1) {
        usleep(1500000);
        return 0;
    }
    float buf[10] = {0};
    double t0 = now_();
    int rc = coll_all_reduce(err, c, buf, 10, QIE_DT_F32, COLL_SUM);
    int ok = rc == QIE_ETIMEOUT && strstr(err, "rank 1") && strstr(err, "no progress") && now_() - t0 < 2;
    if (!ok) fprintf(stderr, "rank 0: rc %d: %s\n", rc, err);
    coll_destroy(&c);
    return ok ? 0 : 1;
}

static void test_stuck_rank(void) {
    int st[2];
    run_ranks_(2, ranks_stuck_, 0, 0.5, 20, 30, st);
    CHECK(st[0] == 0, "%#x", st[0]);
}

/* rank 1 makes another call than rank 0. (A mismatch where both sides wait to receive, say
 * all_reduce against all_gather from rank 0, can only end by the timeout.) */
static int ranks_mismatch_(const Rank *r) {
    Coll *c = NULL;
    char err[QIE_ERR_LEN] = "";
    if (open_(r, &c)) return 10;
    float buf[20] = {0};
    int rc = r->rank == 0 ? coll_all_reduce(err, c, buf, 10, QIE_DT_F32, COLL_SUM)
                          : coll_reduce_scatter(err, c, buf, buf, 5, QIE_DT_F32, COLL_SUM);
    int ok = r->rank == 0 ? rc == QIE_EMISMATCH && strstr(err, "mismatch") && strstr(err, "reduce_scatter") &&
                                strstr(err, "all_reduce")
                          : rc != 0; /* rank 0 gives up and closes: rank 1 sees it */
    if (!ok) fprintf(stderr, "rank %d: rc %d: %s\n", r->rank, rc, err);
    coll_destroy(&c);
    return ok ? 0 : 1;
}

static void test_mismatch(void) {
    int st[2];
    run_ranks_(2, ranks_mismatch_, 0, 5, 20, 30, st);
    CHECK(st[0] == 0 && st[1] == 0, "%#x %#x", st[0], st[1]);
}

/* variant 0: rank 2 never comes (rank 0 times out, naming it); variant 1: rank 1 claims world 3 */
static int ranks_rdzv_(const Rank *r) {
    char err[QIE_ERR_LEN] = "";
    Rendezvous *z = NULL;
    if (r->variant == 0 && r->rank == 2) return 0;
    int world = r->variant == 1 && r->rank == 1 ? 3 : r->world;
    double t0 = now_();
    int rc = rdzv_create(err, "127.0.0.1", r->port, world, r->rank, r->rdzv_timeout_s, &z);
    double dt = now_() - t0;
    int ok;
    if (r->variant == 0)
        ok = r->rank == 0 ? rc == QIE_ETIMEOUT && strstr(err, "missing: 2") : rc == QIE_EPEER && strstr(err, "refused");
    else
        ok = rc != 0 && strstr(err, "world size 3");
    ok = ok && dt < 5;
    if (!ok) fprintf(stderr, "rank %d: rc %d after %.2f s: %s\n", r->rank, rc, dt, err);
    rdzv_destroy(&z);
    return ok ? 0 : 1;
}

static void test_rendezvous_failures(void) {
    int st[3];
    run_ranks_(3, ranks_rdzv_, 0, 5, 1.0, 30, st);
    CHECK(st[0] == 0 && st[1] == 0, "missing rank: %#x %#x", st[0], st[1]);
    run_ranks_(2, ranks_rdzv_, 1, 5, 5, 30, st);
    CHECK(st[0] == 0 && st[1] == 0, "world mismatch: %#x %#x", st[0], st[1]);
    char err[QIE_ERR_LEN] = "";
    Rendezvous *z = NULL;
    double t0 = now_();
    CHECK(rdzv_create(err, "127.0.0.1", free_port_(), 2, 1, 0.5, &z) == QIE_ETIMEOUT && strstr(err, "could not reach"),
          "%s", err);
    CHECK(now_() - t0 < 3);
}

/* the NCCL heartbeat: variant 0: rank 2 is killed, the watchers end ranks 0 and 1;
 * variant 1: a normal end (goodbye) is no alarm */
static int ranks_watch_(const Rank *r) {
    char err[QIE_ERR_LEN] = "";
    Rendezvous *z = NULL;
    if (rdzv_create(err, "127.0.0.1", r->port, r->world, r->rank, 10, &z)) return 10;
    if (rdzv_watch_start(err, z, NULL, NULL)) return 11;
    if (r->variant == 0) {
        if (r->rank == 2) raise(SIGKILL);
        sleep(10); /* "stuck in NCCL": only the watcher can end this */
        return 0;
    }
    usleep((useconds_t)(r->rank * 200000)); /* ranks end at different times */
    return rdzv_destroy(&z) ? 12 : 0;
}

static void test_watcher(void) {
    int st[3];
    double t = run_ranks_(3, ranks_watch_, 0, 5, 10, 30, st);
    CHECK(WIFEXITED(st[0]) && WEXITSTATUS(st[0]) == RDZV_EXIT_PEER, "%#x", st[0]);
    CHECK(WIFEXITED(st[1]) && WEXITSTATUS(st[1]) == RDZV_EXIT_PEER, "%#x", st[1]);
    CHECK(t < 5, "%.2f s", t);
    run_ranks_(3, ranks_watch_, 1, 5, 10, 30, st);
    CHECK(st[0] == 0 && st[1] == 0 && st[2] == 0, "%#x %#x %#x", st[0], st[1], st[2]);
}

/* ---- dist_env ------------------------------------------------------------------------------- */

static const char *fake_get_(const char *name, void *arg) {
    for (const char *const *kv = arg; *kv; kv += 2)
        if (!strcmp(kv[0], name)) return kv[1];
    return NULL;
}

static int parse_(const char *const *kv, DistEnv *e, char *err) { return dist_env_parse_with(err, fake_get_, (void *)kv, e); }

static void test_dist_env(void) {
    char err[QIE_ERR_LEN] = "";
    DistEnv e;
    const char *none[] = {NULL};
    CHECK_RC(parse_(none, &e, err), err);
    CHECK(e.source == DIST_NONE && e.world == 1 && e.rank == 0 && e.master_port == 29500);

    const char *tr[] = {"RANK", "5", "WORLD_SIZE", "8", "LOCAL_RANK", "1", "LOCAL_WORLD_SIZE", "4", "MASTER_ADDR", "n0",
                        "MASTER_PORT", "1234", "QIE_COLL_TIMEOUT", "30", NULL};
    CHECK_RC(parse_(tr, &e, err), err);
    CHECK(e.source == DIST_TORCHRUN && e.rank == 5 && e.world == 8 && e.local_rank == 1 && e.local_world == 4 &&
          e.nnodes == 2 && e.node_rank == 1 && !strcmp(e.master_addr, "n0") && e.master_port == 1234 &&
          e.coll_timeout_s == 30);
    CollConfig cc;
    dist_env_coll_config(&e, COLL_CPU, NULL, &cc);
    CHECK(cc.world == 8 && cc.rank == 5 && cc.device == 1 && cc.master_port == 1234 && cc.timeout_s == 30);

    const char *tr_bad[] = {"RANK", "8", "WORLD_SIZE", "8", NULL};
    CHECK(parse_(tr_bad, &e, err) == QIE_EINVAL && strstr(err, "rank 8"), "%s", err);
    const char *tr_nomaster[] = {"RANK", "0", "WORLD_SIZE", "8", "LOCAL_WORLD_SIZE", "4", NULL};
    CHECK(parse_(tr_nomaster, &e, err) == QIE_EINVAL && strstr(err, "MASTER_ADDR"), "%s", err);
    const char *tr_port[] = {"RANK", "0", "WORLD_SIZE", "2", "MASTER_PORT", "99999", NULL};
    CHECK(parse_(tr_port, &e, err) == QIE_EINVAL && strstr(err, "MASTER_PORT"), "%s", err);

    const char *sl[] = {"SLURM_PROCID", "6", "SLURM_NTASKS", "8", "SLURM_LOCALID", "2", "SLURM_NODEID", "1",
                        "SLURM_NNODES", "2", "SLURM_STEP_TASKS_PER_NODE", "4(x2)", "SLURM_JOB_ID", "123456",
                        "SLURM_STEP_NODELIST", "gpu-[007-008]", NULL};
    CHECK_RC(parse_(sl, &e, err), err);
    CHECK(e.source == DIST_SLURM && e.rank == 6 && e.world == 8 && e.local_rank == 2 && e.local_world == 4 &&
          e.node_rank == 1 && e.nnodes == 2 && !strcmp(e.master_addr, "gpu-007") && e.master_port == 23456,
          "%s:%d", e.master_addr, e.master_port);

    const char *om[] = {"OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "4", "OMPI_COMM_WORLD_LOCAL_RANK", "3",
                        "OMPI_COMM_WORLD_LOCAL_SIZE", "4", NULL};
    CHECK_RC(parse_(om, &e, err), err);
    CHECK(e.source == DIST_OMPI && e.rank == 3 && e.local_rank == 3 && !strcmp(e.master_addr, "127.0.0.1"));
    const char *pm[] = {"PMI_RANK", "1", "PMI_SIZE", "4", "MPI_LOCALRANKID", "1", "MPI_LOCALNRANKS", "2", NULL};
    CHECK(parse_(pm, &e, err) == QIE_EINVAL && strstr(err, "MASTER_ADDR"), "%s", err);

    char h[64];
    CHECK_RC(dist_hostlist_first(err, "node[003-010,012],gpu-a", h, sizeof h), err);
    CHECK(!strcmp(h, "node003"), "%s", h);
    CHECK_RC(dist_hostlist_first(err, "rack[1-2]-n[07-08]", h, sizeof h), err);
    CHECK(!strcmp(h, "rack1-n07"), "%s", h);
    CHECK_RC(dist_hostlist_first(err, "solo", h, sizeof h), err);
    CHECK(!strcmp(h, "solo"));
    CHECK(dist_hostlist_first(err, "bad[x]", h, sizeof h) == QIE_EINVAL);
    int t;
    CHECK(!dist_tasks_per_node(err, "4(x2),3", 2, &t) && t == 3);
    CHECK(!dist_tasks_per_node(err, "4(x2),3", 1, &t) && t == 4);
    CHECK(dist_tasks_per_node(err, "4(x2),3", 3, &t) == QIE_EINVAL);
}

/* ---- the rank program of t_launch.sh ---------------------------------------------------------- */

static int worker_(void) {
    char err[QIE_ERR_LEN] = "";
    DistEnv e;
    if (dist_env_parse(err, &e)) {
        fprintf(stderr, "worker: %s\n", err);
        return 2;
    }
    log_set_rank(e.rank);
    CollConfig cfg;
    dist_env_coll_config(&e, COLL_CPU, NULL, &cfg);
    Coll *c = NULL;
    if (coll_create(err, &cfg, &c)) {
        fprintf(stderr, "worker rank %d: %s\n", e.rank, err);
        return 3;
    }
    float v = (float)(e.rank + 1);
    int rc = coll_all_reduce(err, c, &v, 1, QIE_DT_F32, COLL_SUM);
    const char *fail = getenv("QIE_TEST_FAIL_RANK");
    if (!rc && fail && atoi(fail) == e.rank) {
        fprintf(stderr, "worker rank %d: failing on purpose\n", e.rank);
        fflush(NULL);
        _exit(1); /* like a crash: no goodbye, no leak report; the others are in the next collective */
    }
    if (!rc) rc = coll_barrier(err, c);
    if (rc) {
        fprintf(stderr, "worker rank %d: %s\n", e.rank, err);
        coll_destroy(&c);
        return rc == QIE_EPEER || rc == QIE_ETIMEOUT ? RDZV_EXIT_PEER : 4;
    }
    printf("rank %d of %d (local %d of %d): sum %g\n", e.rank, e.world, e.local_rank, e.local_world, v);
    fflush(stdout);
    return coll_destroy(&c) ? 5 : 0;
}


#ifdef QIE_CUDA
/* ---- the NCCL backend on GPUs (not run by the suite; needs 2+ GPUs):
 *   qie-launch --nproc_per_node 2 build-cuda/tests/test_coll --worker-nccl
 * Integer-valued data, so NCCL's summation order does not matter and results are exact. The
 * uploads, the collectives and the downloads are all queued on the compute stream's side of the
 * events (coll_join), with one host sync at the end: the ordering coll.h promises. */
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); return 6; } } while (0)

static int worker_nccl_(void) {
    char err[QIE_ERR_LEN] = "";
    DistEnv e;
    if (dist_env_parse(err, &e)) {
        fprintf(stderr, "worker: %s\n", err);
        return 2;
    }
    log_set_rank(e.rank);
    CK(cudaSetDevice(e.local_rank));
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    CollConfig cfg;
    dist_env_coll_config(&e, COLL_NCCL, s, &cfg);
    Coll *c = NULL;
    if (coll_create(err, &cfg, &c)) {
        fprintf(stderr, "worker rank %d: %s\n", e.rank, err);
        return 3;
    }
    const int W = e.world, me = e.rank;
    const size_t n = (size_t)64 << 20; /* 256 MB of f32 */
    float *h = malloc(n * sizeof(float)), *d = NULL;
    CK(cudaMalloc((void **)&d, n * sizeof(float)));
    int bad = 0;
    /* all_reduce sum and avg */
    for (int op = 0; op < 2; op++) {
        for (size_t i = 0; i < n; i++) h[i] = (float)((i % 251) * (size_t)(me + 1));
        CK(cudaMemcpyAsync(d, h, n * 4, cudaMemcpyHostToDevice, s));
        cudaEvent_t t0, t1;
        cudaEventCreate(&t0);
        cudaEventCreate(&t1);
        cudaEventRecord(t0, s);
        if (coll_all_reduce(err, c, d, n, QIE_DT_F32, (CollOp)op) || coll_join(err, c)) bad++;
        cudaEventRecord(t1, s);
        CK(cudaMemcpyAsync(h, d, n * 4, cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        float ms = 0;
        cudaEventElapsedTime(&ms, t0, t1);
        float k = (float)(W * (W + 1) / 2) / (op ? (float)W : 1.0f);
        for (size_t i = 0; i < n; i++)
            if (h[i] != (float)(i % 251) * k) { fprintf(stderr, "rank %d: all_reduce op %d [%zu] %g\n", me, op, i, h[i]); bad++; break; }
        if (me == 0) printf("all_reduce %s of 256 MB: %.2f ms\n", op ? "avg" : "sum", ms);
    }
    /* reduce_scatter in place, then all_gather in place: slice r of every rank is r + 1 */
    size_t m = n / (size_t)W;
    for (size_t i = 0; i < m * (size_t)W; i++) h[i] = (float)(i / m + 1);
    CK(cudaMemcpyAsync(d, h, m * W * 4, cudaMemcpyHostToDevice, s));
    if (coll_reduce_scatter(err, c, d + (size_t)me * m, d, m, QIE_DT_F32, COLL_SUM)) bad++;
    if (coll_all_gather(err, c, d, d + (size_t)me * m, m, QIE_DT_F32) || coll_join(err, c)) bad++;
    CK(cudaMemcpyAsync(h, d, m * W * 4, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    for (size_t i = 0; i < m * (size_t)W; i++)
        if (h[i] != (float)((i / m + 1) * (size_t)W)) { fprintf(stderr, "rank %d: rs+ag [%zu] %g\n", me, i, h[i]); bad++; break; }
    /* broadcast from the last rank, bf16 */
    uint16_t *hb = (uint16_t *)h;
    for (size_t i = 0; i < 4096; i++) hb[i] = f32_to_bf16((float)(me * 7 + (int)(i % 13)));
    CK(cudaMemcpyAsync(d, hb, 4096 * 2, cudaMemcpyHostToDevice, s));
    if (coll_broadcast(err, c, d, 4096, QIE_DT_BF16, W - 1) || coll_join(err, c)) bad++;
    CK(cudaMemcpyAsync(hb, d, 4096 * 2, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    for (size_t i = 0; i < 4096; i++)
        if (bf16_to_f32(hb[i]) != (float)((W - 1) * 7 + (int)(i % 13))) { fprintf(stderr, "rank %d: broadcast [%zu]\n", me, i); bad++; break; }
    if (coll_barrier(err, c)) bad++;
    if (bad) fprintf(stderr, "rank %d: %d failures (%s)\n", me, bad, err);
    else printf("rank %d of %d: nccl ok\n", me, W);
    fflush(stdout);
    cudaFree(d);
    free(h);
    int rc = coll_destroy(&c);
    cudaStreamDestroy(s);
    return bad || rc ? 1 : 0;
}
#endif

int main(int argc, char **argv) {
    log_init("test-coll");
#ifdef QIE_CUDA
    if (argc > 1 && !strcmp(argv[1], "--worker-nccl")) return worker_nccl_();
#endif
    if (argc > 1 && !strcmp(argv[1], "--worker")) return worker_();
    if (argc > 1 && !strcmp(argv[1], "--free-port")) return printf("%d\n", free_port_()) < 0;
    log_set_level(LOG_QUIET); /* the failure tests provoke errors on purpose */
    signal(SIGPIPE, SIG_IGN);
    TEST_RUN(test_world1);
    TEST_RUN(test_dist_env);
    TEST_RUN(test_ops_w2);
    TEST_RUN(test_ops_w4);
    TEST_RUN(test_killed_rank);
    TEST_RUN(test_stuck_rank);
    TEST_RUN(test_mismatch);
    TEST_RUN(test_rendezvous_failures);
    TEST_RUN(test_watcher);
    return TEST_DONE();
}
