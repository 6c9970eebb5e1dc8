/* dist_env.c: see dist_env.h. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist_env.h"
#include "err.h"

const char *dist_source_name(DistSource s) {
    switch (s) {
    case DIST_TORCHRUN: return "torchrun";
    case DIST_SLURM: return "slurm";
    case DIST_OMPI: return "openmpi";
    case DIST_PMI: return "pmi";
    default: return "none";
    }
}

static const char *env_getenv_(const char *name, void *arg) {
    (void)arg;
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* Integer variable: 0 and *out set, 1 when absent, QIE_EINVAL when malformed or outside [lo, hi]. */
static int int_var_(char *err, DistGetenv get, void *arg, const char *name, long lo, long hi, int *out) {
    const char *v = get(name, arg);
    if (!v) return 1;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    while (*end == ' ') end++;
    if (errno || end == v || *end || x < lo || x > hi) {
        qie_seterr(err, "%s=%s: expected an integer in %ld..%ld", name, v, lo, hi);
        return QIE_EINVAL;
    }
    *out = (int)x;
    return 0;
}

static int dbl_var_(char *err, DistGetenv get, void *arg, const char *name, double *out) {
    const char *v = get(name, arg);
    if (!v) return 0;
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !(x > 0)) {
        qie_seterr(err, "%s=%s: expected a positive number of seconds", name, v);
        return QIE_EINVAL;
    }
    *out = x;
    return 0;
}

int dist_hostlist_first(char *err, const char *list, char *out, size_t cap) {
    size_t n = 0;
    const char *p = list;
    while (*p == ' ') p++;
    for (; *p && *p != ',' && *p != ' '; p++) {
        if (*p == '[') {
            /* the first value of the range list: "[003-010,012]" -> "003" */
            p++;
            if (!isdigit((unsigned char)*p)) goto bad;
            while (isdigit((unsigned char)*p)) {
                if (n + 1 >= cap) goto bad;
                out[n++] = *p++;
            }
            while (*p && *p != ']') p++;
            if (*p != ']') goto bad;
            continue;
        }
        if (*p == ']') goto bad;
        if (n + 1 >= cap) goto bad;
        out[n++] = *p;
    }
    if (!n) goto bad;
    out[n] = 0;
    return 0;
bad:
    qie_seterr(err, "Slurm node list \"%s\": cannot read its first host name", list);
    return QIE_EINVAL;
}

int dist_tasks_per_node(char *err, const char *list, int node, int *out) {
    const char *p = list;
    int idx = 0;
    while (*p) {
        char *end;
        long t = strtol(p, &end, 10);
        if (end == p || t < 0) goto bad;
        long rep = 1;
        p = end;
        if (*p == '(') {
            if (p[1] != 'x') goto bad;
            rep = strtol(p + 2, &end, 10);
            if (end == p + 2 || *end != ')' || rep < 1) goto bad;
            p = end + 1;
        }
        if (node < idx + rep) {
            *out = (int)t;
            return 0;
        }
        idx += (int)rep;
        if (*p == ',') p++;
        else if (*p) goto bad;
    }
    qie_seterr(err, "Slurm tasks-per-node list \"%s\" has no entry for node %d", list, node);
    return QIE_EINVAL;
bad:
    qie_seterr(err, "Slurm tasks-per-node list \"%s\": malformed", list);
    return QIE_EINVAL;
}

int dist_env_parse_with(char *err, DistGetenv get, void *arg, DistEnv *out) {
    DistEnv e = {.world = 1, .local_world = 1, .local_rank = -1, .nnodes = 1, .master_port = DIST_DEFAULT_PORT};
    snprintf(e.master_addr, sizeof e.master_addr, "127.0.0.1");
    int rc, have_node_rank = 0, have_nnodes = 0;
    const char *src_vars = "";
    if (get("RANK", arg) && get("WORLD_SIZE", arg)) {
        e.source = DIST_TORCHRUN;
        src_vars = "RANK/WORLD_SIZE (torchrun)";
        if ((rc = int_var_(err, get, arg, "WORLD_SIZE", 1, 1 << 20, &e.world)) < 0) return rc;
        if ((rc = int_var_(err, get, arg, "RANK", 0, 1 << 20, &e.rank)) < 0) return rc;
        e.local_world = e.world; /* no LOCAL_WORLD_SIZE: one node */
        if ((rc = int_var_(err, get, arg, "LOCAL_RANK", 0, 1 << 20, &e.local_rank)) < 0) return rc;
        if ((rc = int_var_(err, get, arg, "LOCAL_WORLD_SIZE", 1, 1 << 20, &e.local_world)) < 0) return rc;
        if ((rc = int_var_(err, get, arg, "GROUP_RANK", 0, 1 << 20, &e.node_rank)) < 0) return rc;
        have_node_rank = rc == 0;
    } else if (get("SLURM_PROCID", arg) && (get("SLURM_STEP_NUM_TASKS", arg) || get("SLURM_NTASKS", arg))) {
        e.source = DIST_SLURM;
        src_vars = "SLURM_* (srun)";
        if ((rc = int_var_(err, get, arg, "SLURM_PROCID", 0, 1 << 20, &e.rank)) < 0) return rc;
        if ((rc = int_var_(err, get, arg, "SLURM_STEP_NUM_TASKS", 1, 1 << 20, &e.world)) < 0) return rc;
        if (rc == 1 && (rc = int_var_(err, get, arg, "SLURM_NTASKS", 1, 1 << 20, &e.world)) < 0) return rc;
        if ((rc = int_var_(err, get, arg, "SLURM_NODEID", 0, 1 << 20, &e.node_rank)) < 0) return rc;
        have_node_rank = rc == 0;
        if ((rc = int_var_(err, get, arg, "SLURM_STEP_NUM_NODES", 1, 1 << 20, &e.nnodes)) < 0) return rc;
        if (rc == 1 && (rc = int_var_(err, get, arg, "SLURM_NNODES", 1, 1 << 20, &e.nnodes)) < 0) return rc;
        have_nnodes = rc == 0;
        e.local_world = e.world;
        if ((rc = int_var_(err, get, arg, "SLURM_LOCALID", 0, 1 << 20, &e.local_rank)) < 0) return rc;
        const char *tpn = get("SLURM_STEP_TASKS_PER_NODE", arg);
        if (!tpn) tpn = get("SLURM_TASKS_PER_NODE", arg);
        if (tpn && (rc = dist_tasks_per_node(err, tpn, e.node_rank, &e.local_world))) return rc;
        else if (!tpn && have_nnodes) e.local_world = (e.world + e.nnodes - 1) / e.nnodes;
        const char *nl = get("SLURM_STEP_NODELIST", arg);
        if (!nl) nl = get("SLURM_JOB_NODELIST", arg);
        if (!nl) nl = get("SLURM_NODELIST", arg);
        if (nl && (rc = dist_hostlist_first(err, nl, e.master_addr, sizeof e.master_addr))) return rc;
        int job;
        if ((rc = int_var_(err, get, arg, "SLURM_JOB_ID", 0, 2147483647, &job)) < 0) return rc;
        if (rc == 0) e.master_port = 20000 + job % 10000;
    } else if (get("OMPI_COMM_WORLD_RANK", arg) && get("OMPI_COMM_WORLD_SIZE", arg)) {
        e.source = DIST_OMPI;
        src_vars = "OMPI_COMM_WORLD_* (Open MPI)";
        if ((rc = int_var_(err, get, arg, "OMPI_COMM_WORLD_SIZE", 1, 1 << 20, &e.world)) < 0) return rc;
        if ((rc = int_var_(err, get, arg, "OMPI_COMM_WORLD_RANK", 0, 1 << 20, &e.rank)) < 0) return rc;
        e.local_world = e.world;
        if ((rc = int_var_(err, get, arg, "OMPI_COMM_WORLD_LOCAL_RANK", 0, 1 << 20, &e.local_rank)) < 0) return rc;
        if ((rc = int_var_(err, get, arg, "OMPI_COMM_WORLD_LOCAL_SIZE", 1, 1 << 20, &e.local_world)) < 0) return rc;
    } else if (get("PMI_RANK", arg) && get("PMI_SIZE", arg)) {
        e.source = DIST_PMI;
        src_vars = "PMI_RANK/PMI_SIZE (MPICH, Intel MPI)";
        if ((rc = int_var_(err, get, arg, "PMI_SIZE", 1, 1 << 20, &e.world)) < 0) return rc;
        if ((rc = int_var_(err, get, arg, "PMI_RANK", 0, 1 << 20, &e.rank)) < 0) return rc;
        e.local_world = e.world;
        if ((rc = int_var_(err, get, arg, "MPI_LOCALRANKID", 0, 1 << 20, &e.local_rank)) < 0) return rc;
        if ((rc = int_var_(err, get, arg, "MPI_LOCALNRANKS", 1, 1 << 20, &e.local_world)) < 0) return rc;
    }
    if (e.local_rank < 0) e.local_rank = e.rank % e.local_world; /* no local-rank variable: ranks fill nodes in order */
    if (e.rank >= e.world || e.local_world > e.world || e.local_rank >= e.local_world) {
        qie_seterr(err, "inconsistent %s: rank %d, world %d, local rank %d, local world %d (need rank < world, "
                   "local rank < local world <= world)", src_vars, e.rank, e.world, e.local_rank, e.local_world);
        return QIE_EINVAL;
    }
    if (!have_nnodes) e.nnodes = (e.world + e.local_world - 1) / e.local_world;
    if (!have_node_rank) e.node_rank = e.rank / e.local_world;
    if (e.node_rank >= e.nnodes) {
        qie_seterr(err, "inconsistent %s: node %d of %d nodes", src_vars, e.node_rank, e.nnodes);
        return QIE_EINVAL;
    }
    const char *ma = get("MASTER_ADDR", arg);
    if (ma) {
        if (strlen(ma) >= sizeof e.master_addr) {
            qie_seterr(err, "MASTER_ADDR is too long");
            return QIE_EINVAL;
        }
        snprintf(e.master_addr, sizeof e.master_addr, "%s", ma);
    } else if (e.nnodes > 1 && e.source != DIST_SLURM) {
        qie_seterr(err, "%s describes %d nodes but MASTER_ADDR is not set\nhint: export MASTER_ADDR=<host of rank 0> "
                   "(mpirun -x MASTER_ADDR=...)", src_vars, e.nnodes);
        return QIE_EINVAL;
    }
    if ((rc = int_var_(err, get, arg, "MASTER_PORT", 1, 65535, &e.master_port)) < 0) return rc;
    if ((rc = dbl_var_(err, get, arg, "QIE_RDZV_TIMEOUT", &e.rdzv_timeout_s)) ||
        (rc = dbl_var_(err, get, arg, "QIE_COLL_TIMEOUT", &e.coll_timeout_s)))
        return rc;
    *out = e;
    return 0;
}

int dist_env_parse(char *err, DistEnv *out) { return dist_env_parse_with(err, env_getenv_, NULL, out); }

void dist_env_coll_config(const DistEnv *e, CollBackend backend, void *stream, CollConfig *out) {
    *out = (CollConfig){
        .backend = backend,
        .world = e->world,
        .rank = e->rank,
        .master_addr = e->master_addr,
        .master_port = e->master_port,
        .rdzv_timeout_s = e->rdzv_timeout_s,
        .timeout_s = e->coll_timeout_s,
        .device = e->local_rank,
        .stream = stream,
    };
}
