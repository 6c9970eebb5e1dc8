/* launch.c: see launch.h. */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "launch.h"
#include "log.h"
#include "rendezvous.h"

int launch_count_gpus(void) {
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    if (cvd) {
        int n = 0;
        for (const char *p = cvd; *p;) {
            while (*p == ' ' || *p == ',') p++;
            if (!*p) break;
            if (*p == '-') break; /* "-1": none, and nothing after it counts (CUDA's rule) */
            n++;
            while (*p && *p != ',') p++;
        }
        return n;
    }
    DIR *d = opendir("/proc/driver/nvidia/gpus");
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* A free TCP port on this host (bind 0, read it back, close): for single-node runs only. */
static int free_port_(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr = {htonl(INADDR_LOOPBACK)}};
    socklen_t len = sizeof a;
    int port = -1;
    if (!bind(fd, (struct sockaddr *)&a, sizeof a) && !getsockname(fd, (struct sockaddr *)&a, &len))
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int launch_plan(char *err, const LaunchConfig *cfg, DistGetenv get, void *arg, LaunchPlan *plan) {
    memset(plan, 0, sizeof *plan);
    plan->device = cfg->device;
    if (cfg->device && strcmp(cfg->device, "cpu") && strcmp(cfg->device, "cuda")) {
        qie_seterr(err, "--device %s: expected cpu or cuda", cfg->device);
        return QIE_EINVAL;
    }
    DistEnv e;
    int rc = dist_env_parse_with(err, get, arg, &e);
    if (rc) return rc;
    int flags_node = cfg->nnodes >= 0 || cfg->node_rank >= 0;
    if (!cfg->nproc_given && !flags_node && e.source != DIST_NONE) {
        plan->mode = LAUNCH_JOIN;
        plan->env = e;
        plan->world = e.world;
        plan->nproc = 1;
        plan->nnodes = e.nnodes;
        plan->node_rank = e.node_rank;
        snprintf(plan->master_addr, sizeof plan->master_addr, "%s",
                 cfg->master_addr ? cfg->master_addr : e.master_addr);
        plan->master_port = cfg->master_port > 0 ? (int)cfg->master_port : e.master_port;
        plan->source = dist_source_name(e.source);
        return 0;
    }
    plan->mode = LAUNCH_SPAWN;
    /* processes on this node */
    const char *np = cfg->nproc_per_node ? cfg->nproc_per_node : "auto";
    if (!strcmp(np, "auto") || !strcmp(np, "gpu")) {
        int g = launch_count_gpus();
        if (cfg->device && !strcmp(cfg->device, "cpu")) plan->nproc = 1;
        else if (g > 0) plan->nproc = g;
        else if (!strcmp(np, "gpu")) {
            qie_seterr(err, "--nproc_per_node gpu: no GPU is visible (CUDA_VISIBLE_DEVICES, /proc/driver/nvidia)");
            return QIE_EINVAL;
        } else {
            plan->nproc = 1;
            if (!cfg->device) plan->device = "cpu";
        }
    } else {
        char *end;
        long v = strtol(np, &end, 10);
        if (end == np || *end || v < 1 || v > 4096) {
            qie_seterr(err, "--nproc_per_node %s: expected a number >= 1, auto or gpu", np);
            return QIE_EINVAL;
        }
        plan->nproc = (int)v;
    }
    /* this node's place in the job */
    plan->nnodes = 1;
    plan->node_rank = 0;
    snprintf(plan->master_addr, sizeof plan->master_addr, "%s", e.master_addr);
    plan->master_port = e.master_port;
    plan->source = "flags";
    if (e.source != DIST_NONE) {
        if (e.local_world != 1) {
            qie_seterr(err, "%s started %d processes on this node, and --nproc_per_node asks each to start %d more\n"
                       "hint: start one qie-launch per node (srun --ntasks-per-node=1, mpirun --map-by ppr:1:node), "
                       "or drop --nproc_per_node to use the launcher's processes as the ranks",
                       dist_source_name(e.source), e.local_world, plan->nproc);
            return QIE_EINVAL;
        }
        plan->nnodes = e.world;
        plan->node_rank = e.rank;
        plan->source = dist_source_name(e.source);
    }
    if (cfg->nnodes >= 0) plan->nnodes = (int)cfg->nnodes;
    if (cfg->node_rank >= 0) plan->node_rank = (int)cfg->node_rank;
    if (cfg->master_addr) snprintf(plan->master_addr, sizeof plan->master_addr, "%s", cfg->master_addr);
    if (cfg->master_port >= 0) plan->master_port = (int)cfg->master_port;
    if (plan->nnodes < 1 || plan->node_rank < 0 || plan->node_rank >= plan->nnodes) {
        qie_seterr(err, "--node_rank %d is not in 0..%d (--nnodes %d)", plan->node_rank, plan->nnodes - 1, plan->nnodes);
        return QIE_EINVAL;
    }
    if (plan->nnodes > 1 && !cfg->master_addr && !get("MASTER_ADDR", arg) && e.source != DIST_SLURM) {
        qie_seterr(err, "%d nodes need --master_addr (the host of node 0) on every node", plan->nnodes);
        return QIE_EINVAL;
    }
    if (plan->master_port == 0) {
        if (plan->nnodes > 1) {
            qie_seterr(err, "--master_port 0 (any free port) works on one node only: the other nodes cannot know it");
            return QIE_EINVAL;
        }
        if ((plan->master_port = free_port_()) < 0) {
            qie_seterr(err, "--master_port 0: could not find a free port");
            return QIE_EIO;
        }
    }
    plan->world = plan->nnodes * plan->nproc;
    return 0;
}

/* ---- running -------------------------------------------------------------------------------- */

static double now_(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void setenv_int_(const char *k, long v) {
    char b[32];
    snprintf(b, sizeof b, "%ld", v);
    setenv(k, b, 1);
}

/* the torchrun variables of one rank, in this process's environment */
static void set_rank_env_(const LaunchConfig *cfg, const LaunchPlan *p, int rank, int local_rank, int local_world,
                          int node_rank) {
    setenv_int_("RANK", rank);
    setenv_int_("WORLD_SIZE", p->world);
    setenv_int_("LOCAL_RANK", local_rank);
    setenv_int_("LOCAL_WORLD_SIZE", local_world);
    setenv_int_("GROUP_RANK", node_rank);
    setenv_int_("NODE_RANK", node_rank);
    setenv("MASTER_ADDR", p->master_addr, 1);
    setenv_int_("MASTER_PORT", p->master_port);
    if (p->device) setenv("QIE_LAUNCH_DEVICE", p->device, 1);
    char b[32];
    if (cfg->rdzv_timeout_s > 0) {
        snprintf(b, sizeof b, "%g", cfg->rdzv_timeout_s);
        setenv("QIE_RDZV_TIMEOUT", b, 1);
    }
    if (cfg->coll_timeout_s > 0) {
        snprintf(b, sizeof b, "%g", cfg->coll_timeout_s);
        setenv("QIE_COLL_TIMEOUT", b, 1);
    }
}

static void describe_status_(char *s, size_t cap, int st) {
    if (WIFEXITED(st) && WEXITSTATUS(st) == RDZV_EXIT_PEER)
        snprintf(s, cap, "exited with status %d (another rank failed first)", WEXITSTATUS(st));
    else if (WIFEXITED(st)) snprintf(s, cap, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(s, cap, "was killed by signal %d (%s)%s", WTERMSIG(st), strsignal(WTERMSIG(st)),
                 WCOREDUMP(st) ? ", core dumped" : "");
    else snprintf(s, cap, "ended with wait status %d", st);
}

/* a failure the launcher did not cause itself, and not the echo of another rank's failure */
/* A rank is the cause of a failure unless it only followed another: it exited with
 * RDZV_EXIT_PEER, or died of a signal the launcher itself sent (SIGTERM, then SIGKILL after the
 * grace period). Judging by the signal, not by the order in which waitpid reports the ranks,
 * names the rank that was killed even when a survivor's exit 86 is reaped first. */
static int is_cause_(int st, int we_signalled, int we_killed) {
    if (WIFEXITED(st)) return WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != RDZV_EXIT_PEER;
    if (WIFSIGNALED(st)) {
        int s = WTERMSIG(st);
        return !we_signalled || !(s == SIGTERM || (s == SIGKILL && we_killed));
    }
    return 1;
}

static int status_code_(int st) {
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return 1;
}

typedef struct {
    pid_t pid;
    int rank;
    int running;
    int status;
} Child;

int launch_run(char *err, const LaunchConfig *cfg, const LaunchPlan *p, char **argv) {
    if (p->mode == LAUNCH_JOIN) {
        set_rank_env_(cfg, p, p->env.rank, p->env.local_rank, p->env.local_world, p->env.node_rank);
        log_info("joining as rank %d of %d (from %s; master %s:%d): exec %s", p->env.rank, p->world, p->source,
                 p->master_addr, p->master_port, argv[0]);
        fflush(NULL);
        execvp(argv[0], argv);
        int e = errno;
        qie_seterr(err, "exec %s: %s", argv[0], strerror(e));
        return 127;
    }
    const int n = p->nproc;
    Child *ch = calloc((size_t)n, sizeof *ch);
    if (!ch) {
        qie_seterr(err, "out of memory");
        return 1;
    }
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, &old);
    log_info("starting %d process%s: ranks %d..%d of %d (node %d of %d, from %s), master %s:%d%s%s", n,
             n == 1 ? "" : "es", p->node_rank * n, p->node_rank * n + n - 1, p->world, p->node_rank, p->nnodes,
             p->source, p->master_addr, p->master_port, p->device ? ", device " : "", p->device ? p->device : "");
    const pid_t me = getpid();
    int started = 0, result = 0;
    for (int i = 0; i < n; i++) {
        ch[i].rank = p->node_rank * n + i;
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            int e = errno;
            qie_seterr(err, "fork for rank %d: %s", ch[i].rank, strerror(e));
            result = 1;
            break;
        }
        if (pid == 0) {
            /* own process group: the launcher signals the rank and whatever it started, and a
             * terminal's Ctrl-C reaches the ranks once, through the launcher */
            setpgid(0, 0);
            prctl(PR_SET_PDEATHSIG, SIGTERM); /* the launcher was SIGKILLed: do not linger */
            if (getppid() != me) _exit(1);
            set_rank_env_(cfg, p, ch[i].rank, i, n, p->node_rank);
            sigprocmask(SIG_SETMASK, &old, NULL);
            execvp(argv[0], argv);
            fprintf(stderr, "qie-launch: rank %d: exec %s: %s\n", ch[i].rank, argv[0], strerror(errno));
            _exit(127);
        }
        setpgid(pid, pid); /* both sides: whichever runs first */
        ch[i].pid = pid;
        ch[i].running = 1;
        started++;
    }
    /* failed: the first failure seen (it stops the others); cause: the one to name, the first
     * that is neither an echo (RDZV_EXIT_PEER) nor our own SIGTERM/SIGKILL. Reaping order is not
     * death order: a rank's exit is reported after its sockets close, so its peers' echoes can
     * arrive first. */
    int running = started, failed = -1, cause = -1, sig_got = 0;
    double deadline = result ? now_() + cfg->grace_s : -1;
    if (result)
        for (int i = 0; i < n; i++)
            if (ch[i].running) kill(-ch[i].pid, SIGTERM);
    int killed = 0;
    while (running > 0) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        siginfo_t si;
        int s = sigtimedwait(&set, &si, &ts);
        if (s == SIGINT || s == SIGTERM || s == SIGHUP) {
            if (!sig_got) {
                log_warn("received %s: forwarding it to %d rank%s", strsignal(s), running, running == 1 ? "" : "s");
                sig_got = s;
                deadline = now_() + cfg->grace_s;
            } else {
                log_warn("received %s again: killing the ranks now", strsignal(s));
                deadline = now_();
            }
            for (int i = 0; i < n; i++)
                if (ch[i].running) kill(-ch[i].pid, s);
        }
        int st;
        pid_t pid;
        /* the child whose SIGCHLD woke us first: when a failure cascades (its peers fail on the
         * closed connection a moment later) the first death is the cause worth naming */
        pid_t first = s == SIGCHLD ? si.si_pid : -1;
        while ((pid = first > 0 ? waitpid(first, &st, WNOHANG) : waitpid(-1, &st, WNOHANG)) > 0 || first > 0) {
            if (first > 0) {
                first = -1;
                if (pid <= 0) continue;
            }
            for (int i = 0; i < n; i++) {
                if (ch[i].pid != pid || !ch[i].running) continue;
                ch[i].running = 0;
                ch[i].status = st;
                running--;
                char d[128];
                describe_status_(d, sizeof d, st);
                if (cause < 0 && !sig_got && is_cause_(st, failed >= 0, killed)) cause = i;
                if (st == 0) {
                    log_debug("rank %d (pid %d) %s", ch[i].rank, (int)pid, d);
                } else if (failed < 0 && !sig_got) {
                    failed = i;
                    log_error("rank %d (pid %d) %s; stopping the other %d rank%s of this node", ch[i].rank, (int)pid, d,
                              running, running == 1 ? "" : "s");
                    for (int k = 0; k < n; k++)
                        if (ch[k].running) kill(-ch[k].pid, SIGTERM);
                    deadline = now_() + cfg->grace_s;
                } else {
                    log_info("rank %d (pid %d) %s", ch[i].rank, (int)pid, d);
                }
                /* whatever the rank left behind in its group goes too once the job is ending */
                if (failed >= 0 || sig_got) kill(-pid, SIGKILL);
            }
        }
        if (running > 0 && deadline >= 0 && now_() >= deadline && !killed) {
            log_warn("%d rank%s still running %.0f s after SIGTERM: sending SIGKILL", running, running == 1 ? "" : "s",
                     cfg->grace_s);
            for (int i = 0; i < n; i++)
                if (ch[i].running) kill(-ch[i].pid, SIGKILL);
            killed = 1;
        }
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (failed >= 0) {
        char d[128];
        if (cause >= 0) failed = cause;
        describe_status_(d, sizeof d, ch[failed].status);
        qie_seterr(err, "rank %d %s (the job failed; the other ranks of this node were stopped)", ch[failed].rank, d);
        result = status_code_(ch[failed].status);
    } else if (sig_got) {
        qie_seterr(err, "stopped by %s", strsignal(sig_got));
        result = 128 + sig_got;
    } else if (result) {
        /* fork failed */
    }
    free(ch);
    return result;
}
