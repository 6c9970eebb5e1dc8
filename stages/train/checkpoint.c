/* checkpoint.c: checkpoints and final weights (trainer_behaviour.md §5; decisions.md "Checkpoints
 * and runs"), plus the small file helpers the trainer shares.
 *
 * OUTPUT_DIR/checkpoint-N/
 *   transformer/            config.json + diffusion_pytorch_model[-0000k-of-0000n].safetensors
 *                           (+ .index.json): bf16 from the fp32 master, diffusers names; what
 *                           QwenImageTransformer2DModel.from_pretrained loads
 *   optimizer/              optimizer[-0000k-of-0000n].safetensors (+ index): f32 tensors
 *                           master.<name>, exp_avg.<name>, exp_avg_sq.<name> (AdamW state by name,
 *                           so the file does not depend on qie's buffer padding)
 *   trainer_state.json      step, micro-batch counter (the RNG position), epoch and position in
 *                           it, seed, the data fingerprint, the settings resume must keep
 *   qie_checkpoint_complete written last; a folder without it is never `latest`
 * Several ranks (dist.c) write the sharded qie-zero/1 format instead of optimizer/: rank files,
 * layout.json, config.json (ckpt_shard.h), with the same transformer/, trainer_state.json and marker.
 *
 * Atomicity: everything is written into OUTPUT_DIR/.checkpoint-N.tmp.PID, every file and folder
 * fsync'ed, the marker written and fsync'ed, then one rename(2) to checkpoint-N and an fsync of
 * OUTPUT_DIR. A crash leaves at most a .tmp folder, which the next run deletes. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "err.h"
#include "log.h"
#include "safetensors.h"
#include "train.h"

#define CKPT_MARKER "qie_checkpoint_complete"
#define CKPT_FORMAT "qie-train-checkpoint/1"

/* ---- file helpers -------------------------------------------------------------------------- */

int train_rmtree(const char *path) {
    struct stat sb;
    if (lstat(path, &sb)) return errno == ENOENT ? 0 : errno;
    if (!S_ISDIR(sb.st_mode)) return unlink(path) ? errno : 0;
    DIR *d = opendir(path);
    if (!d) return errno;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char c[4096];
        snprintf(c, sizeof c, "%s/%s", path, de->d_name);
        int r = train_rmtree(c);
        if (r && !rc) rc = r;
    }
    closedir(d);
    if (rmdir(path) && !rc) rc = errno;
    return rc;
}

int train_fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return errno;
    int rc = fsync(fd) ? errno : 0;
    close(fd);
    return rc;
}

static int fsync_tree_(const char *path) {
    struct stat sb;
    if (stat(path, &sb)) return errno;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return errno;
        struct dirent *de;
        int rc = 0;
        while ((de = readdir(d)) && !rc) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            char c[4096];
            snprintf(c, sizeof c, "%s/%s", path, de->d_name);
            rc = fsync_tree_(c);
        }
        closedir(d);
        if (rc) return rc;
    }
    return train_fsync_path(path);
}

int train_write_file(char *err, const char *path, const void *buf, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) {
        int e = errno;
        qie_seterr(err, "create %s: %s", path, strerror(e));
        return e;
    }
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            qie_seterr(err, "write %s: %s", path, strerror(e));
            return e;
        }
        p += w;
        n -= (size_t)w;
    }
    if (fsync(fd) || close(fd)) {
        int e = errno;
        qie_seterr(err, "fsync %s: %s", path, strerror(e));
        return e;
    }
    return 0;
}

char *train_read_file(char *err, const char *path, size_t *n) {
    char *b = NULL;
    return fs_read_file(err, path, (size_t)1 << 30, &b, n) ? NULL : b;
}

/* ---- naming, latest, pruning --------------------------------------------------------------- */

/* checkpoint-<digits> exactly: its N, else -1 */
static int64_t ckpt_step_(const char *name) {
    if (strncmp(name, "checkpoint-", 11) || !name[11]) return -1;
    int64_t v = 0;
    for (const char *p = name + 11; *p; p++) {
        if (*p < '0' || *p > '9' || v > INT64_MAX / 10 - 10) return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

int ckpt_complete(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, CKPT_MARKER);
    return access(p, F_OK) == 0;
}

typedef struct {
    int64_t step;
    char name[256];
} CkEnt;

static int ck_cmp_(const void *a, const void *b) {
    int64_t x = ((const CkEnt *)a)->step, y = ((const CkEnt *)b)->step;
    return x < y ? -1 : x > y;
}

/* complete checkpoints of dir, ascending; *out malloc'd */
static int list_(const char *dir, CkEnt **out, size_t *n) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : errno;
    size_t cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int64_t s = ckpt_step_(de->d_name);
        if (s < 0 || strlen(de->d_name) >= 256) continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (!ckpt_complete(p)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            CkEnt *e = realloc(*out, cap * sizeof *e);
            if (!e) {
                closedir(d);
                return ENOMEM;
            }
            *out = e;
        }
        (*out)[*n].step = s;
        snprintf((*out)[*n].name, 256, "%s", de->d_name);
        (*n)++;
    }
    closedir(d);
    if (*n) qsort(*out, *n, sizeof **out, ck_cmp_);
    return 0;
}

int ckpt_resolve(char *err, const char *output_dir, const char *spec, char *path, size_t cap) {
    if (!strcmp(spec, "latest")) {
        CkEnt *e;
        size_t n;
        int rc = list_(output_dir, &e, &n);
        if (rc) {
            qie_seterr(err, "list %s: %s", output_dir, strerror(rc));
            return rc;
        }
        if (!n) {
            free(e);
            qie_seterr(err, "no complete checkpoint in %s", output_dir);
            return QIE_ENOTFOUND;
        }
        snprintf(path, cap, "%s/%s", output_dir, e[n - 1].name);
        free(e);
        return 0;
    }
    /* decisions.md: an explicit path is used as given; a bare name is looked up in output_dir */
    struct stat sb;
    if (!stat(spec, &sb) && S_ISDIR(sb.st_mode)) snprintf(path, cap, "%s", spec);
    else if (!strchr(spec, '/')) snprintf(path, cap, "%s/%s", output_dir, spec);
    else snprintf(path, cap, "%s", spec);
    if (!ckpt_complete(path)) {
        qie_seterr(err, "--resume_from_checkpoint %s: %s is not a complete qie checkpoint (no %s)", spec, path,
                   CKPT_MARKER);
        return QIE_ENOTFOUND;
    }
    return 0;
}

int ckpt_prune(char *err, const char *output_dir, int64_t limit) {
    DIR *d = opendir(output_dir);
    if (d) { /* temp folders of saves that never finished */
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!strncmp(de->d_name, ".checkpoint-", 12) || !strncmp(de->d_name, ".transformer.", 13)) {
                char p[4096];
                snprintf(p, sizeof p, "%s/%s", output_dir, de->d_name);
                log_info("removing %s (left by an interrupted save)", p);
                train_rmtree(p);
            }
        }
        closedir(d);
    }
    if (limit <= 0) return 0;
    CkEnt *e;
    size_t n;
    int rc = list_(output_dir, &e, &n);
    if (rc) {
        qie_seterr(err, "list %s: %s", output_dir, strerror(rc));
        return rc;
    }
    if (n >= (size_t)limit) {
        size_t drop = n - (size_t)limit + 1;
        for (size_t i = 0; i < drop; i++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", output_dir, e[i].name);
            log_info0("checkpoints_total_limit %lld: removing %s", (long long)limit, p);
            /* the marker goes first, so a crash mid-delete never leaves a half folder `latest` takes */
            char m[4200];
            snprintf(m, sizeof m, "%s/%s", p, CKPT_MARKER);
            unlink(m);
            train_rmtree(p);
        }
    }
    free(e);
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------- */

static int write_weights_(char *err, const char *dir, const char *config_json, const DitLayout *lay,
                          const float *master, const char *max_shard_size) {
    int rc = fs_mkdirs(err, dir);
    if (rc) return rc;
    char p[4096];
    snprintf(p, sizeof p, "%s/config.json", dir);
    if ((rc = train_write_file(err, p, config_json, strlen(config_json)))) return rc;
    uint16_t *bf = malloc(sizeof *bf * (lay->num_params ? lay->num_params : 1));
    StWriter *w = NULL;
    if (!bf) return QIE_ENOMEM;
    for (size_t i = 0; i < lay->num_params; i++) bf[i] = f32_to_bf16(master[i]);
    if (!(rc = st_writer_create(err, &w)) && !(rc = dit_writer_add(err, w, lay, "", QIE_DT_BF16, bf)))
        rc = st_writer_write_sharded(err, w, dir, "diffusion_pytorch_model", max_shard_size, NULL);
    st_writer_destroy(&w);
    free(bf);
    return rc;
}

static int write_optimizer_(char *err, const char *dir, const DitLayout *lay, const float *master, const float *m,
                            const float *v, const char *max_shard_size) {
    int rc = fs_mkdirs(err, dir);
    if (rc) return rc;
    StWriter *w = NULL;
    if ((rc = st_writer_create(err, &w))) return rc;
    const float *bufs[3] = {master, m, v};
    static const char *pre[3] = {"master.", "exp_avg.", "exp_avg_sq."};
    for (int b = 0; b < 3 && !rc; b++) rc = dit_writer_add(err, w, lay, pre[b], QIE_DT_F32, bufs[b]);
    if (!rc) rc = st_writer_write_sharded(err, w, dir, "optimizer", max_shard_size, NULL);
    st_writer_destroy(&w);
    return rc;
}

static int write_state_(char *err, const char *path, const TrainState *st, const char *extra) {
    char buf[8192];
    int n = snprintf(buf, sizeof buf,
                     "{\n  \"format\": \"%s\",\n  \"global_step\": %" PRId64 ",\n  \"micro\": %" PRId64
                     ",\n  \"epoch\": %" PRId64 ",\n  \"batch_pos\": %" PRId64 ",\n  \"seed\": \"%" PRIu64
                     "\",\n  \"data_fingerprint\": \"%016" PRIx64 "\",\n  \"data_count\": %u,\n"
                     "  \"max_train_steps\": %" PRId64 ",\n  \"train_batch_size\": %" PRId64
                     ",\n  \"gradient_accumulation_steps\": %" PRId64 ",\n  \"world\": %" PRId64 ",\n  \"run\": %s\n}\n",
                     CKPT_FORMAT, st->global_step, st->micro, st->epoch, st->batch_pos, st->seed, st->data_fingerprint,
                     st->data_count, st->max_train_steps, st->train_batch_size, st->gradient_accumulation_steps,
                     st->world, extra && *extra ? extra : "{}");
    if (n < 0 || n >= (int)sizeof buf) {
        qie_seterr(err, "trainer_state.json: too long");
        return QIE_ELIMIT;
    }
    return train_write_file(err, path, buf, (size_t)n);
}

static int publish_(char *err, const char *tmp, const char *final, const char *parent) {
    /* an older folder of the same name (a previous run's) is moved aside, then deleted */
    char old[4200];
    struct stat sb;
    int rc = 0;
    if (!stat(final, &sb)) {
        snprintf(old, sizeof old, "%s.old.%d", tmp, (int)getpid());
        if (rename(final, old)) {
            rc = errno;
            qie_seterr(err, "rename %s: %s", final, strerror(rc));
            return rc;
        }
    } else {
        old[0] = 0;
    }
    if (rename(tmp, final)) {
        rc = errno;
        qie_seterr(err, "rename %s -> %s: %s", tmp, final, strerror(rc));
        return rc;
    }
    if ((rc = train_fsync_path(parent))) {
        qie_seterr(err, "fsync %s: %s", parent, strerror(rc));
        return rc;
    }
    if (old[0]) train_rmtree(old);
    return 0;
}

int ckpt_write_state(char *err, const char *dir, const TrainState *st, const char *extra) {
    char p[4200];
    snprintf(p, sizeof p, "%s/trainer_state.json", dir);
    return write_state_(err, p, st, extra);
}

int ckpt_commit(char *err, const char *output_dir, const char *tmp, const char *final, int64_t step) {
    char p[4200];
    int rc;
    if ((rc = fsync_tree_(tmp))) {
        qie_seterr(err, "fsync %s: %s", tmp, strerror(rc));
        return rc;
    }
    char mark[64];
    int mn = snprintf(mark, sizeof mark, "%" PRId64 "\n", step);
    snprintf(p, sizeof p, "%s/%s", tmp, CKPT_MARKER);
    if ((rc = train_write_file(err, p, mark, (size_t)mn))) return rc;
    if ((rc = train_fsync_path(tmp))) {
        qie_seterr(err, "fsync %s: %s", tmp, strerror(rc));
        return rc;
    }
    return publish_(err, tmp, final, output_dir);
}

int ckpt_save(char *err, const char *output_dir, const char *config_json, const DitLayout *lay, const float *master,
              const float *m, const float *v, const TrainState *st, const char *max_shard_size,
              const char *state_json_extra) {
    char tmp[4096], final[4096], p[4200];
    snprintf(final, sizeof final, "%s/checkpoint-%" PRId64, output_dir, st->global_step);
    snprintf(tmp, sizeof tmp, "%s/.checkpoint-%" PRId64 ".tmp.%d", output_dir, st->global_step, (int)getpid());
    train_rmtree(tmp);
    int rc = fs_mkdirs(err, tmp);
    if (rc) return rc;
    snprintf(p, sizeof p, "%s/transformer", tmp);
    if ((rc = write_weights_(err, p, config_json, lay, master, max_shard_size))) goto fail;
    snprintf(p, sizeof p, "%s/optimizer", tmp);
    if ((rc = write_optimizer_(err, p, lay, master, m, v, max_shard_size))) goto fail;
    if ((rc = ckpt_write_state(err, tmp, st, state_json_extra))) goto fail;
    if ((rc = ckpt_commit(err, output_dir, tmp, final, st->global_step))) goto fail;
    return 0;
fail:
    qie_preferr(err, "checkpoint %s", final);
    train_rmtree(tmp);
    return rc;
}

/* parent := the folder holding dir; tmp := a fresh temporary sibling of dir (removed if present) */
static void sibling_tmp_(const char *dir, char *parent, size_t np, char *tmp, size_t nt) {
    snprintf(parent, np, "%s", dir);
    char *slash = strrchr(parent, '/');
    const char *base = slash ? slash + 1 : parent;
    if (slash) *slash = 0;
    else snprintf(parent, np, ".");
    snprintf(tmp, nt, "%s/.%s.tmp.%d", parent, slash ? base : dir, (int)getpid());
    train_rmtree(tmp);
}

int ckpt_save_weights(char *err, const char *dir, const char *config_json, const DitLayout *lay, const float *master,
                      const char *max_shard_size) {
    char parent[4096], tmp[4200];
    sibling_tmp_(dir, parent, sizeof parent, tmp, sizeof tmp);
    int rc = write_weights_(err, tmp, config_json, lay, master, max_shard_size);
    if (!rc && (rc = fsync_tree_(tmp))) qie_seterr(err, "fsync %s: %s", tmp, strerror(rc));
    if (!rc) rc = publish_(err, tmp, dir, parent);
    if (rc) {
        qie_preferr(err, "final weights %s", dir);
        train_rmtree(tmp);
    }
    return rc;
}

int ckpt_save_weights_merged(char *err, const char *dir, const char *ckpt_dir, const char *max_shard_size) {
    char parent[4096], tmp[4200];
    sibling_tmp_(dir, parent, sizeof parent, tmp, sizeof tmp);
    int rc = ckpt_merge(err, ckpt_dir, tmp, max_shard_size, 0, NULL);
    if (!rc && (rc = fsync_tree_(tmp))) qie_seterr(err, "fsync %s: %s", tmp, strerror(rc));
    if (!rc) rc = publish_(err, tmp, dir, parent);
    if (rc) {
        qie_preferr(err, "final weights %s", dir);
        train_rmtree(tmp);
    }
    return rc;
}

/* ---- loading ------------------------------------------------------------------------------- */

static int load_buf_(char *err, const StModel *st, const DitLayout *lay, const char *prefix, float *out) {
    memset(out, 0, sizeof *out * lay->num_params);
    for (int k = 0; k < lay->ntensors; k++) {
        const DitTensorInfo *ti = &lay->tensors[k];
        char name[192];
        snprintf(name, sizeof name, "%s%s", prefix, ti->name);
        const StTensor *t = st_model_find(st, name);
        if (!t) {
            qie_seterr(err, "optimizer state has no tensor %s (a different model?)", name);
            return QIE_EMISMATCH;
        }
        if (t->dtype != QIE_DT_F32 || t->numel != ti->numel) {
            qie_seterr(err, "optimizer tensor %s: %s with %llu elements, expected f32 with %zu", name,
                       dtype_name(t->dtype), (unsigned long long)t->numel, ti->numel);
            return QIE_EMISMATCH;
        }
        memcpy(out + ti->offset, t->data, ti->numel * sizeof(float));
    }
    return 0;
}

static int64_t jint_(const cJSON *o, const char *k, int *ok) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v)) {
        *ok = 0;
        return 0;
    }
    return (int64_t)v->valuedouble;
}

int ckpt_load(char *err, const char *path, const DitLayout *lay, float *master, float *m, float *v, TrainState *st) {
    int rc = ckpt_load_state(err, path, st);
    return rc ? rc : ckpt_load_optimizer(err, path, lay, master, m, v);
}

int ckpt_load_state(char *err, const char *path, TrainState *st) {
    char p[4200];
    snprintf(p, sizeof p, "%s/trainer_state.json", path);
    char *txt = train_read_file(err, p, NULL);
    if (!txt) return QIE_ENOTFOUND;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    const cJSON *fmt = j ? cJSON_GetObjectItemCaseSensitive(j, "format") : NULL;
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, CKPT_FORMAT)) {
        cJSON_Delete(j);
        qie_seterr(err, "%s: not a %s state file", p, CKPT_FORMAT);
        return QIE_EFORMAT;
    }
    int ok = 1;
    memset(st, 0, sizeof *st);
    st->global_step = jint_(j, "global_step", &ok);
    st->micro = jint_(j, "micro", &ok);
    st->epoch = jint_(j, "epoch", &ok);
    st->batch_pos = jint_(j, "batch_pos", &ok);
    st->data_count = (uint32_t)jint_(j, "data_count", &ok);
    st->max_train_steps = jint_(j, "max_train_steps", &ok);
    st->train_batch_size = jint_(j, "train_batch_size", &ok);
    st->gradient_accumulation_steps = jint_(j, "gradient_accumulation_steps", &ok);
    st->world = jint_(j, "world", &ok);
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(j, "seed"), *fp = cJSON_GetObjectItemCaseSensitive(j, "data_fingerprint");
    if (!cJSON_IsString(seed) || !cJSON_IsString(fp)) ok = 0;
    else {
        st->seed = strtoull(seed->valuestring, NULL, 10);
        st->data_fingerprint = strtoull(fp->valuestring, NULL, 16);
    }
    cJSON_Delete(j);
    if (!ok) {
        qie_seterr(err, "%s: a field is missing or malformed", p);
        return QIE_EFORMAT;
    }
    return 0;
}

int ckpt_load_optimizer(char *err, const char *path, const DitLayout *lay, float *master, float *m, float *v) {
    char p[4200];
    StModel *sm = NULL;
    snprintf(p, sizeof p, "%s/optimizer", path);
    int rc = st_model_open(err, p, &sm);
    if (!rc) rc = load_buf_(err, sm, lay, "master.", master);
    if (!rc) rc = load_buf_(err, sm, lay, "exp_avg.", m);
    if (!rc) rc = load_buf_(err, sm, lay, "exp_avg_sq.", v);
    st_model_close(&sm);
    if (rc) qie_preferr(err, "checkpoint %s", path);
    return rc;
}
