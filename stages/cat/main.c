/* qie-cat: copies records from --in to --out (any endpoint kinds), optionally printing a
 * one-line summary of each. The tool for looking inside a stream. */
#include <stdio.h>
#include <string.h>

#include "cat.h"
#include "cli.h"
#include "err.h"
#include "log.h"

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    const char *in_url = NULL, *out_url = NULL;
    LogLevel lv = LOG_INFO;
    int64_t count = -1, skip = 0;
    int print = 0, check = 0;
    const CliOpt opts[] = {
        {"in", CLI_STR, &in_url, "-", "where records come from: -, FILE, tcp://, ipc://, lmdb://DIR", 0, 0},
        {"out", CLI_STR, &out_url, NULL, "where records go (default: - unless --print)", 0, 0},
        {"count", CLI_INT, &count, "-1", "copy at most N records (-1: all)", -1, 9e18},
        {"skip", CLI_INT, &skip, "0", "skip the first N records", 0, 9e18},
        {"print", CLI_BOOL, &print, "false", "print one summary line per record (to stdout when there is no --out)", 0, 0},
        {"check", CLI_BOOL, &check, "false", "decode and validate every record on the way", 0, 0},
        {"log_level", CLI_LOG_LEVEL, &lv, "info", "debug|info|warn|error|quiet", 0, 0},
    };
    const CliSpec spec = {"qie-cat", "[--in URL] [--out URL] [--count N] [--skip N] [--print]",
                          "Copies qie records between endpoints unchanged (the same bytes), e.g.\n"
                          "  qie-cat --in cache.qie --print          one line per record\n"
                          "  qie-decode ... | qie-cat --out tcp://encoder:5555",
                          opts, (int)(sizeof opts / sizeof *opts), 0};
    log_init("cat");
    int rc = cli_parse(err, &spec, argc, argv, NULL, NULL);
    if (rc == 1) return 0;
    if (rc) {
        log_error("%s", err);
        return 2;
    }
    if (!out_url && !print) out_url = "-";
    Endpoint *in = NULL, *out = NULL;
    if ((rc = ep_open(err, in_url, EP_READ, &in))) goto fail;
    if (out_url && (rc = ep_open(err, out_url, EP_WRITE, &out))) goto fail;
    CatOptions co = {count, skip, print, check, out ? stderr : stdout};
    if (out && out_url && !strcmp(out_url, "-") && print) co.print_to = stderr;
    uint64_t copied = 0;
    rc = cat_run(err, &co, in, out, &copied);
    if (rc) goto fail;
    if (out && (rc = ep_finish(err, out, 1, NULL))) goto fail;
    log_debug("%llu records", (unsigned long long)copied);
    ep_close(&out);
    ep_close(&in);
    return 0;
fail:
    log_error("%s", err);
    if (out) ep_finish(err, out, 0, "qie-cat failed");
    ep_close(&out);
    ep_close(&in);
    return 1;
}
