/* gen_records: writes N deterministic test records to an endpoint (for process-level tests).
 *   gen_records --n N --out URL [--seed S] [--bytes B] [--prefix P] [--die_after K] [--sleep_ms M]
 * Record i has id "<prefix>-<i>", index i, bucket [16*(1+i%3), 32], and tensor "x" of B bytes of
 * Philox data from (seed, i). --die_after K kills the process (SIGKILL) after K records, with no
 * end-of-stream: the "peer dies mid-stream" case. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli.h"
#include "endpoint.h"
#include "err.h"
#include "log.h"
#include "rng.h"

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    int64_t n = 10, seed = 1, bytes = 1024, die_after = -1, sleep_ms = 0;
    const char *out_url = "-", *prefix = "rec";
    const CliOpt opts[] = {
        {"n", CLI_INT, &n, "10", "records", 0, 1e9},
        {"out", CLI_STR, &out_url, "-", "endpoint", 0, 0},
        {"seed", CLI_INT, &seed, "1", "seed", 0, 1e18},
        {"bytes", CLI_INT, &bytes, "1024", "payload bytes per record (multiple of 4)", 0, 1e10},
        {"prefix", CLI_STR, &prefix, "rec", "id prefix", 0, 0},
        {"die_after", CLI_INT, &die_after, "-1", "SIGKILL self after K records", -1, 1e9},
        {"sleep_ms", CLI_INT, &sleep_ms, "0", "sleep between records", 0, 1e6},
    };
    const CliSpec spec = {"gen_records", "[options]", NULL, opts, (int)(sizeof opts / sizeof *opts), 0};
    log_init("gen");
    int rc = cli_parse(err, &spec, argc, argv, NULL, NULL);
    if (rc == 1) return 0;
    if (rc) { log_error("%s", err); return 2; }
    Endpoint *out = NULL;
    if ((rc = ep_open(err, out_url, EP_WRITE, &out))) { log_error("%s", err); return 1; }
    size_t nf = (size_t)bytes / 4;
    float *x = malloc(nf ? nf * 4 : 4);
    for (int64_t i = 0; i < n; i++) {
        if (i == die_after) kill(getpid(), SIGKILL);
        Record r;
        rec_init(&r);
        char id[128];
        snprintf(id, sizeof id, "%s-%lld", prefix, (long long)i);
        rec_set_id(&r, id);
        r.index = i;
        r.bucket[0] = 16 * (1 + (int)(i % 3));
        r.bucket[1] = 32;
        rec_set_text(&r, "a test record");
        rec_set_type(&r, "image");
        rng_uniform_cpu(x, nf, (uint64_t)seed, (uint64_t)i, 0);
        int64_t shape[1] = {(int64_t)nf};
        if ((rc = rec_set_tensor(err, &r, "x", QIE_DT_F32, 1, shape, x, 0)) || (rc = ep_write_record(err, out, &r))) {
            log_error("%s", err);
            rec_free(&r);
            ep_close(&out);
            free(x);
            return 1;
        }
        rec_free(&r);
        if (sleep_ms) usleep((useconds_t)sleep_ms * 1000);
    }
    free(x);
    rc = ep_finish(err, out, 1, NULL);
    if (rc) log_error("%s", err);
    ep_close(&out);
    return rc ? 1 : 0;
}
