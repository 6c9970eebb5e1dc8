/* dist_env.h: who am I in a distributed job? Parses the environment that a launcher set for this
 * process (docs/distributed.md "Launching"). Sources, first match wins:
 *   torchrun / qie-launch  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK,
 *                          MASTER_ADDR, MASTER_PORT
 *   Slurm (srun)           SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS), SLURM_LOCALID,
 *                          SLURM_STEP_TASKS_PER_NODE (or SLURM_TASKS_PER_NODE), SLURM_NODEID,
 *                          SLURM_STEP_NUM_NODES (or SLURM_NNODES), master = first host of
 *                          SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST), port = MASTER_PORT or
 *                          20000 + SLURM_JOB_ID % 10000 (two jobs sharing a node do not collide)
 *   Open MPI (mpirun)      OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
 *   MPICH / Intel MPI      PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS
 * MASTER_ADDR / MASTER_PORT in the environment override what a source derives. Without
 * MASTER_ADDR, a job that fits one node uses 127.0.0.1; a multi-node MPI job must set it
 * (mpirun -x MASTER_ADDR=host). MASTER_PORT defaults to 29500 (torchrun's).
 * QIE_RDZV_TIMEOUT and QIE_COLL_TIMEOUT (seconds) set the rendezvous and collective timeouts.
 *
 * defines: DistSource, DistEnv, dist_env_parse, dist_env_parse_with, dist_source_name,
 *          dist_env_coll_config, dist_hostlist_first, dist_tasks_per_node */
#ifndef QIE_COMMON_DIST_ENV_H
#define QIE_COMMON_DIST_ENV_H

#include <stddef.h>

#include "coll.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DIST_DEFAULT_PORT 29500

typedef enum { DIST_NONE = 0, DIST_TORCHRUN, DIST_SLURM, DIST_OMPI, DIST_PMI } DistSource;

typedef struct {
    DistSource source;      /* DIST_NONE: a single process (world 1, rank 0) */
    int world, rank;        /* global */
    int local_world, local_rank; /* on this node: local_rank picks the GPU */
    int nnodes, node_rank;
    char master_addr[256];
    int master_port;
    double rdzv_timeout_s;  /* 0: the default (300 s) */
    double coll_timeout_s;  /* 0: the default (600 s) */
} DistEnv;

/* Reads the process environment. Returns 0, or QIE_EINVAL with err naming the variable that is
 * missing, malformed or inconsistent (RANK >= WORLD_SIZE, ...). */
int dist_env_parse(char *err, DistEnv *out);

/* The same with a lookup function (tests; the launcher reading a child's environment): get(name,
 * arg) returns the value or NULL. */
typedef const char *(*DistGetenv)(const char *name, void *arg);
int dist_env_parse_with(char *err, DistGetenv get, void *arg, DistEnv *out);

/* "none", "torchrun", "slurm", "openmpi", "pmi" */
const char *dist_source_name(DistSource s);

/* Fills a CollConfig for this process (world, rank, master, timeouts; device = local_rank). */
void dist_env_coll_config(const DistEnv *e, CollBackend backend, void *stream, CollConfig *out);

/* First host of a Slurm hostlist: "node[003-010,012],gpu-a" -> "node003";
 * "rack[1-2]-n[07-08]" -> "rack1-n07". 0 or QIE_EINVAL (malformed, or longer than cap-1). */
int dist_hostlist_first(char *err, const char *list, char *out, size_t cap);

/* Tasks on node `node` of a Slurm tasks-per-node list ("4(x2),3" -> 4, 4, 3). 0 or QIE_EINVAL. */
int dist_tasks_per_node(char *err, const char *list, int node, int *out);

#ifdef __cplusplus
}
#endif
#endif
