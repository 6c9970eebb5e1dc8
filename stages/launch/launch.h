/* launch.h: qie-launch, the torchrun of qie (docs/distributed.md "Launching").
 *
 * Two modes:
 *   spawn  one child per local rank (--nproc_per_node): RANK, WORLD_SIZE, LOCAL_RANK,
 *          LOCAL_WORLD_SIZE, GROUP_RANK, NODE_RANK, MASTER_ADDR, MASTER_PORT set for each (the
 *          torchrun names, which dist_env.h reads first). The node's place in the job comes from
 *          the flags, else from a launcher that started one qie-launch per node (Slurm srun
 *          --ntasks-per-node=1, mpirun --map-by node: SLURM_* / OMPI_* / PMI_*), else one node.
 *   join   no --nproc_per_node, and the environment already describes this process as one rank
 *          (torchrun, srun with a task per GPU, mpirun): the torchrun names are set from it and
 *          the program is exec'ed in place.
 * In spawn mode the launcher watches its children: when one exits non-zero or dies of a signal it
 * names the rank, SIGTERMs the others (their whole process groups), SIGKILLs what is left after
 * --grace_period seconds, and exits with that rank's status (128 + signal for a signal). SIGINT,
 * SIGTERM and SIGHUP are forwarded to every child the same way. Ranks on other nodes notice
 * through their collectives (coll.h: socket EOF, timeouts, the NCCL watcher).
 *
 * defines: LaunchConfig, LaunchPlan, launch_plan, launch_run, launch_count_gpus */
#ifndef QIE_STAGES_LAUNCH_H
#define QIE_STAGES_LAUNCH_H

#include <stdint.h>

#include "dist_env.h"

typedef struct {
    const char *nproc_per_node; /* "N", "auto" (GPUs, or 1 with --device cpu), "gpu" */
    int64_t nnodes, node_rank;  /* -1: from the environment */
    const char *master_addr;    /* NULL: from the environment, else 127.0.0.1 */
    int64_t master_port;        /* -1: from the environment, else 29500; 0: a free port (one node) */
    const char *device;         /* "cpu", "cuda" or NULL (auto: cuda when a GPU is visible) */
    double grace_s;             /* SIGTERM -> SIGKILL */
    double rdzv_timeout_s, coll_timeout_s; /* > 0: exported as QIE_RDZV_TIMEOUT / QIE_COLL_TIMEOUT */
    int nproc_given;            /* --nproc_per_node was on the command line */
} LaunchConfig;

typedef enum { LAUNCH_SPAWN = 0, LAUNCH_JOIN = 1 } LaunchMode;

typedef struct {
    LaunchMode mode;
    int nproc, nnodes, node_rank, world;
    char master_addr[256];
    int master_port;
    const char *device;   /* borrowed from the config; NULL when auto found no GPU: then "cpu" */
    DistEnv env;          /* join: this process's rank */
    const char *source;   /* where the node/rank information came from, for the log */
} LaunchPlan;

/* Number of GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else
 * /proc/driver/nvidia/gpus entries. */
int launch_count_gpus(void);

/* Resolves flags + environment (get/arg as dist_env_parse_with) into a plan. 0 or QIE_EINVAL. */
int launch_plan(char *err, const LaunchConfig *cfg, DistGetenv get, void *arg, LaunchPlan *plan);

/* Runs argv (argv[0] looked up in PATH) as the plan says. join: execs (returns only on failure).
 * spawn: returns the exit status qie-launch should have (0 when every rank exited 0). */
int launch_run(char *err, const LaunchConfig *cfg, const LaunchPlan *plan, char **argv);

#endif
