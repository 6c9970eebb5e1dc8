/* qie-launch: starts one qie process per GPU (or CPU rank) and watches them (launch.h,
 * docs/distributed.md "Launching"). The flags are torchrun's; the program and its arguments
 * follow them:
 *   qie-launch --nproc_per_node 8 qie-train --pretrained_model_name_or_path ... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "err.h"
#include "launch.h"
#include "log.h"

static const char *getenv_(const char *name, void *arg) {
    (void)arg;
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* Index of the program in argv: the first token that is neither a flag nor a flag's value. */
static int program_index_(int argc, char **argv) {
    static const char *const no_value[] = {"help", "standalone"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) return i + 1;
        if (!strcmp(a, "-h")) continue;
        if (strncmp(a, "--", 2) || !a[2]) return i;
        if (strchr(a, '=')) continue;
        int flag = 0;
        for (size_t k = 0; k < sizeof no_value / sizeof *no_value; k++) flag |= !strcmp(a + 2, no_value[k]);
        if (!flag) i++;
    }
    return argc;
}

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    LaunchConfig cfg = {0};
    LogLevel lv = LOG_INFO;
    const char *rdzv_endpoint = NULL;
    int standalone = 0;
    const CliOpt opts[] = {
        {"nproc_per_node", CLI_STR, &cfg.nproc_per_node, "auto",
         "processes on this node: N, gpu (one per visible GPU) or auto (GPUs, or 1 with --device cpu)", 0, 0},
        {"nnodes", CLI_INT, &cfg.nnodes, "-1", "nodes in the job (-1: from Slurm/MPI, else 1)", -1, 65536},
        {"node_rank", CLI_INT, &cfg.node_rank, "-1", "this node's index (-1: from Slurm/MPI, else 0)", -1, 65535},
        {"master_addr", CLI_STR, &cfg.master_addr, NULL,
         "host of rank 0 (default: MASTER_ADDR, Slurm's first node, else 127.0.0.1)", 0, 0},
        {"master_port", CLI_INT, &cfg.master_port, "-1",
         "rendezvous port (default: MASTER_PORT, else 29500; 0: any free port, one node only)", -1, 65535},
        {"rdzv_endpoint", CLI_STR, &rdzv_endpoint, NULL, "HOST:PORT, the same as --master_addr/--master_port", 0, 0},
        {"standalone", CLI_BOOL, &standalone, "false", "one node, any free port (torchrun --standalone)", 0, 0},
        {"device", CLI_STR, &cfg.device, NULL, "cpu or cuda (default: cuda when a GPU is visible); exported as "
         "QIE_LAUNCH_DEVICE", 0, 0},
        {"grace_period", CLI_FLOAT, &cfg.grace_s, "10", "seconds between SIGTERM and SIGKILL when the job ends early",
         0, 3600},
        {"rdzv_timeout", CLI_FLOAT, &cfg.rdzv_timeout_s, "0",
         "seconds the ranks wait for each other at the start (0: 300; exported as QIE_RDZV_TIMEOUT)", 0, 1e6},
        {"coll_timeout", CLI_FLOAT, &cfg.coll_timeout_s, "0",
         "CPU collectives: seconds without progress before failing (0: 600; QIE_COLL_TIMEOUT)", 0, 1e6},
        {"rdzv_backend", CLI_IGNORED, NULL, NULL, "torchrun's; qie has one rendezvous", 0, 0},
        {"rdzv_id", CLI_IGNORED, NULL, NULL, "torchrun's", 0, 0},
        {"max_restarts", CLI_IGNORED, NULL, NULL, "torchrun's; qie never restarts ranks (resume from a checkpoint)",
         0, 0},
        {"monitor_interval", CLI_IGNORED, NULL, NULL, "torchrun's", 0, 0},
        {"log_level", CLI_LOG_LEVEL, &lv, "info", "debug|info|warn|error|quiet", 0, 0},
    };
    const CliSpec spec = {
        "qie-launch", "[options] PROGRAM [ARGS...]",
        "Starts PROGRAM once per GPU (or --nproc_per_node times) with RANK, WORLD_SIZE, LOCAL_RANK,\n"
        "LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as torchrun does, and watches the ranks:\n"
        "one failing stops the others, and qie-launch exits with its status. Multi-node: the same\n"
        "command on every node with --nnodes, --node_rank and --master_addr, or under Slurm\n"
        "(srun --ntasks-per-node=1 qie-launch ...) with none of them. Without --nproc_per_node inside\n"
        "a torchrun, srun or mpirun job, this process is one rank and PROGRAM is exec'ed in place.\n"
        "  qie-launch --nproc_per_node 8 qie-train --pretrained_model_name_or_path M ...\n"
        "  qie-launch --device cpu --nproc_per_node 4 qie-train --device cpu ...",
        opts, (int)(sizeof opts / sizeof *opts), 0};
    log_init("launch");
    int pi = program_index_(argc, argv);
    int rc = cli_parse(err, &spec, pi, argv, NULL, NULL);
    if (rc == 1) return 0;
    if (rc) {
        log_error("%s", err);
        return 2;
    }
    if (pi >= argc) {
        log_error("no program to launch\nhint: qie-launch [options] qie-train [its options]");
        return 2;
    }
    for (int i = 1; i < pi; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--nproc_per_node", 16) || !strncmp(a, "--nproc-per-node", 16)) cfg.nproc_given = 1;
    }
    static char ep_host[256];
    if (rdzv_endpoint) {
        const char *colon = strrchr(rdzv_endpoint, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : -1;
        if (!colon || colon == rdzv_endpoint || !end || *end || port < 0 || port > 65535 ||
            (size_t)(colon - rdzv_endpoint) >= sizeof ep_host) {
            log_error("--rdzv_endpoint %s: expected HOST:PORT", rdzv_endpoint);
            return 2;
        }
        snprintf(ep_host, sizeof ep_host, "%.*s", (int)(colon - rdzv_endpoint), rdzv_endpoint);
        if (!cfg.master_addr) cfg.master_addr = ep_host;
        if (cfg.master_port < 0) cfg.master_port = port;
    }
    if (standalone) {
        if (cfg.nnodes > 1) {
            log_error("--standalone is for one node; drop it or --nnodes");
            return 2;
        }
        cfg.nnodes = 1;
        cfg.node_rank = 0;
        if (!cfg.master_addr) cfg.master_addr = "127.0.0.1";
        if (cfg.master_port < 0) cfg.master_port = 0;
    }
    LaunchPlan plan;
    if ((rc = launch_plan(err, &cfg, getenv_, NULL, &plan))) {
        log_error("%s", err);
        return 2;
    }
    rc = launch_run(err, &cfg, &plan, argv + pi);
    if (rc) log_error("%s", err);
    return rc;
}
