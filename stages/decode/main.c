/* qie-decode: metadata JSON -> decoded, bucketed, resized sample records (docs/decode.md).
 * Options, endpoints and the exit status only; the work is in decode_stage.c. */
#include <errno.h>
#include <libavutil/log.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "decode_stage.h"
#include "endpoint.h"
#include "err.h"
#include "image.h"
#include "log.h"
#include "metadata.h"
#include "progress.h"

static int sink_endpoint_(char *err, void *ctx, const void *buf, size_t len) {
    return ep_write(err, (Endpoint *)ctx, buf, len);
}

/* "-j N" / "-jN" -> "--jobs N" / "--jobs=N": the one short spelling the issue asks for; cli.c
 * only knows long names. */
static char **rewrite_short_(int argc, char **argv, char *jbuf, size_t cap) {
    char **v = malloc((size_t)(argc + 1) * sizeof *v);
    if (!v) return NULL;
    for (int i = 0; i < argc; i++) {
        v[i] = argv[i];
        if (!strcmp(argv[i], "-j")) v[i] = "--jobs";
        else if (!strncmp(argv[i], "-j", 2) && argv[i][2] >= '0' && argv[i][2] <= '9') {
            snprintf(jbuf, cap, "--jobs=%s", argv[i] + 2);
            v[i] = jbuf;
        }
    }
    v[argc] = NULL;
    return v;
}

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    const char *meta_path = NULL, *data_dir = NULL, *train_mode = NULL, *draws_path = NULL;
    const char *shard = NULL, *out_url = NULL, *rejects_path = NULL, *log_level = NULL, *skip_path = NULL;
    int64_t sample_size = 512, seed = -1, max_pixels = 0, jobs = 1, vae_area = 0, cond_area = 0;
    int enable_bucket = 0, hw_adapt = 0, strict = 0, progress = 1, random_ratio_crop = 0;
    CliStrs fix_sample_size = {0};
    const CliOpt opts[] = {
        {"train_data_meta", CLI_STR, &meta_path, NULL, "metadata JSON: a list of {file_path, text, source_file_path, type}", 0, 0},
        {"train_data_dir", CLI_STR, &data_dir, NULL, "root the metadata paths are joined to (os.path.join; absent: paths as written)", 0, 0},
        {"train_mode", CLI_STR, &train_mode, "qwen_image_edit", "qwen_image_edit (exactly one source) | qwen_image_edit_plus (one or more)", 0, 0},
        {"image_sample_size", CLI_INT, &sample_size, "512", "S: buckets are ASPECT_RATIO_512 scaled by S/512", 16, 65536},
        {"enable_bucket", CLI_BOOL, &enable_bucket, "false", "aspect-ratio buckets (off: centre-cropped S x S squares)", 0, 0},
        {"random_hw_adapt", CLI_BOOL, &hw_adapt, "false", "scale each sample's bucket down by d in {1,1.25,1.5,2,...} (p 0.9 for 1)", 0, 0},
        {"seed", CLI_INT, &seed, "-1", "seed of the --random_hw_adapt draws (-1: draw one and log it)", -1, 9.2e18},
        {"hw_adapt_draws", CLI_STR, &draws_path, NULL, "safetensors with random_hw_adapt [N] f64: d per metadata index (golden tests)", 0, 0},
        {"max_pixels", CLI_INT, &max_pixels, "178956970", "reject images (and cover resizes) above this many pixels (Pillow's bomb limit)", 1, 9e18},
        {"vae_image_area", CLI_INT, &vae_area, "1048576", "edit_plus: pixel area of each source's VAE input (the reference's 1024*1024; smaller only for quick CPU runs)", 1024, 1e9},
        {"condition_image_area", CLI_INT, &cond_area, "147456", "edit_plus: pixel area of each source's condition image for the text encoder (the reference's 384*384)", 1024, 1e9},
        {"jobs", CLI_INT, &jobs, "1", "decode threads (also -j N); output order is unspecified when > 1", 1, 1024},
        {"shard", CLI_STR, &shard, "0/1", "i/n: take the entries whose index % n == i", 0, 0},
        {"out", CLI_STR, &out_url, "-", "where records go: -, FILE, tcp://, ipc://", 0, 0},
        {"rejects", CLI_STR, &rejects_path, NULL, "write rejected entries here as JSON lines {index, path, reason}", 0, 0},
        {"skip_ids", CLI_STR, &skip_path, NULL, "skip entries whose record id is listed in FILE (one per line, e.g. `qie-cache ls DIR --ids_only`), before decoding them", 0, 0},
        {"strict", CLI_BOOL, &strict, "false", "exit non-zero when any entry was rejected", 0, 0},
        {"progress", CLI_BOOL, &progress, "true", "report progress on stderr", 0, 0},
        {"log_level", CLI_STR, &log_level, "info", "debug|info|warn|error|quiet", 0, 0},
        /* reference options that would change the pixels: refused rather than ignored */
        {"random_ratio_crop", CLI_BOOL, &random_ratio_crop, "false", "not supported by qie (refused)", 0, 0},
        {"fix_sample_size", CLI_STRS, &fix_sample_size, NULL, "not supported by qie (refused)", 0, 0},
        /* trainer options a shared launch line may carry; nothing to do with decoding */
        {"pretrained_model_name_or_path", CLI_IGNORED, NULL, NULL, "ignored", 0, 0},
        {"dataloader_num_workers", CLI_IGNORED, NULL, NULL, "ignored (use --jobs)", 0, 0},
        {"train_batch_size", CLI_IGNORED, NULL, NULL, "ignored", 0, 0},
        {"output_dir", CLI_IGNORED, NULL, NULL, "ignored", 0, 0},
    };
    const CliSpec spec = {
        "qie-decode", "--train_data_meta FILE [--train_data_dir DIR] [options]",
        "Decodes every metadata entry's target and source images exactly as VideoX-Fun's edit\n"
        "trainer prepares them (bucket, resize, crop, LANCZOS sources) and writes one record per\n"
        "good entry. Bad entries are reported, counted and skipped. See docs/decode.md.",
        opts, (int)(sizeof opts / sizeof *opts), 0};
    log_init("decode");
    av_log_set_level(AV_LOG_QUIET); /* FFmpeg would print its own lines; decode errors are reported as ours */
    /* Every sample allocates and frees the same few 3-30 MB buffers. Above glibc's mmap
     * threshold each would be a fresh mmap: page faults and kernel zeroing on every image
     * (~10% of the time in bench-decode). Keep them in the heap and keep freed memory. */
    if (!mallopt(M_MMAP_THRESHOLD, 32 << 20) || !mallopt(M_TRIM_THRESHOLD, 256 << 20))
        log_debug("mallopt failed; large buffers stay mmap'ed");
    char jbuf[64];
    char **av = rewrite_short_(argc, argv, jbuf, sizeof jbuf);
    if (!av) { log_error("out of memory"); return 2; }
    int rc = cli_parse(err, &spec, argc, av, NULL, NULL);
    free(av);
    if (rc == 1) return 0;
    if (rc) { log_error("%s", err); return 2; }
    LogLevel lv;
    if (log_parse_level(log_level, &lv)) {
        log_error("--log_level: '%s' is not debug|info|warn|error|quiet", log_level);
        return 2;
    }
    log_set_level(lv);

    DecodeRun run = {0};
    run.opts.sample_size = (int)sample_size;
    run.opts.enable_bucket = enable_bucket;
    run.opts.random_hw_adapt = hw_adapt;
    run.opts.max_pixels = max_pixels;
    run.opts.vae_area = vae_area;
    run.opts.cond_area = cond_area;
    run.opts.data_root = data_dir;
    run.jobs = (int)jobs;
    if (!meta_path) { log_error("--train_data_meta is required"); return 2; }
    if (!strcmp(train_mode, "qwen_image_edit")) run.opts.train_mode = DEC_EDIT;
    else if (!strcmp(train_mode, "qwen_image_edit_plus")) run.opts.train_mode = DEC_EDIT_PLUS;
    else {
        /* the reference treats any other value as plus; a typo must not change the pixels */
        log_error("--train_mode: '%s' is not qwen_image_edit or qwen_image_edit_plus", train_mode);
        return 2;
    }
    if (random_ratio_crop || fix_sample_size.n) {
        log_error("--random_ratio_crop and --fix_sample_size are not supported by qie-decode "
                  "(docs/decode.md)");
        return 2;
    }
    char tail = 0;
    long long si, sn;
    if (sscanf(shard, "%lld/%lld%c", &si, &sn, &tail) != 2 || sn < 1 || si < 0 || si >= sn) {
        log_error("--shard: '%s' is not i/n with 0 <= i < n", shard);
        return 2;
    }
    run.shard_i = si;
    run.shard_n = sn;
    if (draws_path && !hw_adapt) log_warn("--hw_adapt_draws without --random_hw_adapt: draws unused");
    if (hw_adapt && !draws_path) {
        if (seed < 0) {
            /* the reference draws from an unseeded worker RNG; logging the seed makes the run
             * repeatable */
            seed = (int64_t)(((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)clock()) & INT64_MAX;
            log_info("--random_hw_adapt: no --seed given, using --seed %lld", (long long)seed);
        }
    }
    run.opts.seed = seed < 0 ? 0 : (uint64_t)seed;
    if (run.opts.random_hw_adapt && run.opts.sample_size < 768)
        log_info("--random_hw_adapt: S=%d < 768 has the single choice d=1", run.opts.sample_size);
    cli_dump(&spec);

    MetaFile *m = NULL;
    Endpoint *out = NULL;
    FILE *rej = NULL;
    double *draws = NULL;
    DecIdSet *skip = NULL;
    Progress prog;
    DecodeStats st = {0};
    int64_t nd = 0;
    if (draws_path && hw_adapt &&
        (rc = dec_load_hw_draws(err, draws_path, run.opts.sample_size, &draws, &nd)))
        goto fail;
    run.opts.hw_draws = draws;
    run.opts.n_hw_draws = nd;
    if (skip_path) {
        if ((rc = dec_ids_load(err, skip_path, &skip))) goto fail;
        log_info("--skip_ids %s: %zu id(s) already done", skip_path, dec_ids_count(skip));
        run.skip = skip;
    }
    /* validate the whole metadata before the output exists: bad JSON emits nothing */
    if ((rc = meta_open(err, meta_path, &m))) goto fail;
    log_info("%s: %lld entries", meta_path, (long long)meta_count(m));
    if (rejects_path && !(rej = fopen(rejects_path, "w"))) {
        rc = errno;
        qie_seterr(err, "open %s: %s", rejects_path, strerror(rc));
        goto fail;
    }
    if ((rc = ep_open(err, out_url, EP_WRITE, &out))) goto fail;
    int64_t n = meta_count(m);
    progress_init(&prog, "decode", n > run.shard_i ? (uint64_t)((n - run.shard_i + run.shard_n - 1) / run.shard_n) : 0,
                  progress && lv <= LOG_INFO);
    run.sink = sink_endpoint_;
    run.sink_ctx = out;
    run.rejects = rej;
    run.progress = &prog;
    rc = dec_run(err, &run, m, &st);
    progress_end(&prog);
    if (rc) goto fail;
    if (rej && fclose(rej)) {
        rej = NULL;
        rc = QIE_EIO;
        qie_seterr(err, "writing %s failed", rejects_path);
        goto fail;
    }
    rej = NULL;
    if ((rc = ep_finish(err, out, 1, NULL))) goto fail;
    ep_close(&out);
    meta_close(&m);
    free(draws);
    dec_ids_free(&skip);
    /* the summary goes out even at --log_level quiet: it is the run's result */
    char skipped[64] = "";
    if (skip_path) snprintf(skipped, sizeof skipped, ", %lld skipped (--skip_ids)", (long long)st.skipped);
    fprintf(stderr, "qie-decode: %lld entries, %lld processed, %lld rejected%s%s\n", (long long)st.entries,
            (long long)st.emitted, (long long)st.rejected, skipped,
            st.rejected && rejects_path ? " (see --rejects file)" : "");
    return strict && st.rejected ? 3 : 0; /* 3: finished, but --strict and rejects */
fail:
    log_error("%s", err);
    if (out) ep_finish(err, out, 0, "qie-decode failed");
    ep_close(&out);
    if (rej) fclose(rej);
    meta_close(&m);
    free(draws);
    dec_ids_free(&skip);
    return 1;
}
