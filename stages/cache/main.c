/* qie-cache: the LMDB latent cache tool. Subcommands put, cat, ls, stats, verify, rm (and the
 * hidden gen and bench-read for tests and the benchmark); the logic is in cache_cmd.c and
 * cache_gen.c, the cache itself in common/cache.c. docs/cache.md is the manual. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cache.h"
#include "cache_cmd.h"
#include "cli.h"
#include "err.h"
#include "log.h"

static const char *about_ =
    "The LMDB latent cache: built once, read by many trainer jobs at once.\n"
    "  qie-cache put DIR --in URL        records from --in into the cache (re-runs skip what is cached)\n"
    "  qie-cache cat DIR [filters]       records out to --out (default -)\n"
    "  qie-cache ls DIR [filters]        id, bucket HxW, sources, bytes, complete|incomplete\n"
    "  qie-cache stats DIR [--json]      counts, bytes, groups, tensors, completeness, settings\n"
    "  qie-cache verify DIR              decode and cross-check every record; exit 1 on a bad one\n"
    "  qie-cache rm DIR ID... [--ids F]  remove records by id\n"
    "Filters: --bucket HxW --sources N --complete --ids FILE --from ID --to ID (inclusive).\n"
    "DIR comes before options that take several values (--setting, --expect).\n"
    "Testing: qie-cache gen --count N --size BYTES --out URL; qie-cache bench-read DIR --reads N";

static int parse_bucket_(char *err, const char *s, int32_t *hw) {
    if (!s || !*s) return 0;
    if (sscanf(s, "%dx%d", &hw[0], &hw[1]) != 2 || hw[0] <= 0 || hw[1] <= 0) {
        qie_seterr(err, "--bucket '%s': expected HxW, e.g. 1024x768", s);
        return QIE_EINVAL;
    }
    return 0;
}

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    LogLevel lv = LOG_INFO;
    const char *in_url, *out_url, *sync_s, *map_size_s, *bucket_s, *ids_path, *from, *to, *parts, *buckets;
    int64_t batch, sources, count, start, size, sources_max, bad_every, seed, reads, delay_ms;
    double batch_mb;
    int skip_existing, complete, json, ids_only, progress, empty;
    CliStrs settings = {0}, expects = {0};
    const CliOpt opts[] = {
        {"in", CLI_STR, &in_url, "-", "put: where records come from (-, FILE, tcp://, ipc://, lmdb://)", 0, 0},
        {"out", CLI_STR, &out_url, "-", "cat, gen: where records go", 0, 0},
        {"batch", CLI_INT, &batch, "64", "put: commit after this many records", 1, 1e9},
        {"batch_mb", CLI_FLOAT, &batch_mb, "256", "put: ... or this many MB", 0.001, 1e7},
        {"sync", CLI_STR, &sync_s, "meta", "put: full (fsync each commit) | meta (MDB_NOMETASYNC + sync every 30 s) | none", 0, 0},
        {"map_size", CLI_STR, &map_size_s, "1TiB", "put: initial LMDB map size (sparse; doubles when full)", 0, 0},
        {"skip_existing", CLI_BOOL, &skip_existing, "true", "put: skip records whose id is cached with all their tensors", 0, 0},
        {"setting", CLI_STRS, &settings, NULL, "put: KEY=VALUE settings of this cache (checked like a record's cfg.KEY attrs); gen: cfg attrs", 0, 0},
        {"expect", CLI_STRS, &expects, NULL, "any: KEY=VALUE the cache must have been built with", 0, 0},
        {"bucket", CLI_STR, &bucket_s, "", "cat, ls: only bucket HxW", 0, 0},
        {"sources", CLI_INT, &sources, "-1", "cat, ls: only records with N sources (-1: any)", -1, 1e6},
        {"complete", CLI_BOOL, &complete, "false", "cat, ls: only records complete for training", 0, 0},
        {"ids", CLI_STR, &ids_path, "", "cat, rm: ids from FILE (one per line)", 0, 0},
        {"from", CLI_STR, &from, "", "cat: first id of an id range (inclusive)", 0, 0},
        {"to", CLI_STR, &to, "", "cat: last id of an id range (inclusive)", 0, 0},
        {"json", CLI_BOOL, &json, "false", "stats: JSON output", 0, 0},
        {"ids_only", CLI_BOOL, &ids_only, "false", "ls: ids only", 0, 0},
        {"progress", CLI_BOOL, &progress, "true", "put: progress on stderr", 0, 0},
        {"count", CLI_INT, &count, "100", "gen: records", 0, 1e12},
        {"start", CLI_INT, &start, "0", "gen: first record index", 0, 1e12},
        {"size", CLI_INT, &size, "65536", "gen: approximate record bytes", 0, 1e10},
        {"sources_max", CLI_INT, &sources_max, "2", "gen: record i has i % (N+1) sources", 0, 16},
        {"bad_every", CLI_INT, &bad_every, "0", "gen: every Nth record is garbage (0: none)", 0, 1e12},
        {"seed", CLI_INT, &seed, "1", "gen, bench-read: seed", 0, 9e18},
        {"parts", CLI_STR, &parts, "all", "gen: all | latents | prompt", 0, 0},
        {"buckets", CLI_STR, &buckets, "64x64,64x96,96x64", "gen: buckets, cycled", 0, 0},
        {"empty", CLI_BOOL, &empty, "false", "gen: also prompt_embeds_empty", 0, 0},
        {"delay_ms", CLI_INT, &delay_ms, "0", "gen: sleep between records", 0, 1e6},
        {"reads", CLI_INT, &reads, "1000", "bench-read: random reads", 1, 1e12},
        {"log_level", CLI_LOG_LEVEL, &lv, "info", "debug|info|warn|error|quiet", 0, 0},
    };
    const CliSpec spec = {"qie-cache", "put|cat|ls|stats|verify|rm DIR [options]", about_, opts,
                          (int)(sizeof opts / sizeof *opts), 65};
    log_init("cache");
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        cli_usage(&spec);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    const char *cmds[] = {"put", "cat", "ls", "stats", "verify", "rm", "gen", "bench-read"};
    int known = 0;
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) known |= !strcmp(cmd, cmds[i]);
    if (!known) {
        log_error("unknown subcommand '%s'\nhint: qie-cache --help", cmd);
        return 2;
    }
    const char *pos[65];
    int npos = 0;
    int rc = cli_parse(err, &spec, argc - 1, argv + 1, pos, &npos);
    if (rc == 1) return 0;
    int is_gen = !strcmp(cmd, "gen");
    if (!rc && !is_gen && npos < 1) {
        qie_seterr(err, "qie-cache %s: which cache? (qie-cache %s DIR ...)", cmd, cmd);
        rc = QIE_EINVAL;
    }
    if (!rc && npos > 1 && strcmp(cmd, "rm")) {
        qie_seterr(err, "qie-cache %s: unexpected argument '%s'", cmd, pos[1]);
        rc = QIE_EINVAL;
    }
    CacheOptions copt;
    cache_options_init(&copt);
    CacheFilter f;
    cache_filter_init(&f);
    if (!rc) {
        copt.readonly = strcmp(cmd, "put") && strcmp(cmd, "rm");
        copt.batch_records = (int)batch;
        copt.batch_bytes = (uint64_t)(batch_mb * 1e6);
        copt.skip_existing = skip_existing;
        if (!strcmp(sync_s, "full")) copt.sync = CACHE_SYNC_FULL;
        else if (!strcmp(sync_s, "meta")) copt.sync = CACHE_SYNC_META;
        else if (!strcmp(sync_s, "none")) copt.sync = CACHE_SYNC_NONE;
        else { qie_seterr(err, "--sync '%s': full, meta or none", sync_s); rc = QIE_EINVAL; }
        if (!rc && cli_parse_size(map_size_s, &copt.map_size)) {
            qie_seterr(err, "--map_size '%s': not a size", map_size_s);
            rc = QIE_EINVAL;
        }
        for (int i = 0; i < expects.n && i < CACHE_MAX_EXPECT; i++) copt.expect[copt.nexpect++] = expects.v[i];
        if (!rc) rc = parse_bucket_(err, bucket_s, f.bucket);
        f.nsources = (int)sources;
        f.complete_only = complete;
        f.id_from = *from ? from : NULL;
        f.id_to = *to ? to : NULL;
    }
    if (rc) {
        log_error("%s", err);
        return 2;
    }
    /* a disk-full test may cap the file size: let write() fail with EFBIG instead of a signal */
    signal(SIGXFSZ, SIG_IGN);

    Endpoint *in = NULL, *out = NULL;
    Cache *c = NULL;
    char **ids = NULL;
    size_t nids = 0;
    uint64_t n = 0;
    int status = 0;
    if (is_gen) {
        CacheGenOptions g = {count, start, size, sources_max, bad_every, seed, parts, buckets, empty, delay_ms, 0, {0}};
        for (int i = 0; i < settings.n && i < 32; i++) g.settings[g.nsettings++] = settings.v[i];
        if ((rc = ep_open(err, out_url, EP_WRITE, &out))) goto fail;
        if ((rc = cache_cmd_gen(err, &g, out))) goto fail;
        if ((rc = ep_finish(err, out, 1, NULL))) goto fail;
        goto done;
    }
    if (*ids_path) {
        if ((rc = cache_ids_load(err, ids_path, &ids, &nids))) goto fail;
        f.ids = (const char *const *)ids;
        f.nids = nids;
    }
    if ((rc = cache_open(err, pos[0], &copt, &c))) goto fail;
    if (!strcmp(cmd, "put")) {
        for (int i = 0; i < settings.n; i++) {
            char kv[1024];
            snprintf(kv, sizeof kv, "%s", settings.v[i]);
            char *eq = strchr(kv, '=');
            if (!eq || eq == kv) {
                qie_seterr(err, "--setting '%s': not KEY=VALUE", settings.v[i]);
                rc = QIE_EINVAL;
                goto fail;
            }
            *eq = 0;
            if ((rc = cache_set_setting(err, c, kv, eq + 1))) goto fail;
        }
        if ((rc = ep_open(err, in_url, EP_READ, &in))) goto fail;
        CachePutReport rep;
        if ((rc = cache_cmd_put(err, c, in, progress, &rep))) goto fail;
    } else if (!strcmp(cmd, "cat")) {
        if ((rc = ep_open(err, out_url, EP_WRITE, &out))) goto fail;
        if ((rc = cache_cmd_cat(err, c, &f, out, &n))) goto fail;
        if ((rc = ep_finish(err, out, 1, NULL))) goto fail;
        log_debug("%llu records", (unsigned long long)n);
    } else if (!strcmp(cmd, "ls")) {
        if ((rc = cache_cmd_ls(err, c, &f, ids_only, stdout))) goto fail;
    } else if (!strcmp(cmd, "stats")) {
        if ((rc = cache_cmd_stats(err, c, json, stdout))) goto fail;
    } else if (!strcmp(cmd, "verify")) {
        if ((rc = cache_cmd_verify(err, c, stdout, &n))) goto fail;
        if (n) status = 1;
    } else if (!strcmp(cmd, "rm")) {
        for (int i = 1; i < npos; i++)
            if ((rc = cache_rm(err, c, pos[i]))) goto fail;
        for (size_t i = 0; i < nids; i++)
            if ((rc = cache_rm(err, c, ids[i]))) goto fail;
        log_info("%s: removed %zu record(s)", pos[0], (size_t)(npos - 1) + nids);
    } else if (!strcmp(cmd, "bench-read")) {
        if ((rc = cache_cmd_bench_read(err, c, reads, seed, stdout))) goto fail;
    }
done:
    ep_close(&out);
    ep_close(&in);
    cache_close(&c);
    cache_ids_free(ids, nids);
    return status;
fail:
    log_error("%s", err);
    if (out) ep_finish(err, out, 0, "qie-cache failed");
    ep_close(&out);
    ep_close(&in);
    cache_close(&c);
    cache_ids_free(ids, nids);
    return 1;
}
