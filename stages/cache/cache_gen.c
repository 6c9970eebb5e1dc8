/* cache_gen.c: synthetic records for the tests and the benchmark (qie-cache gen), and the
 * random-access read benchmark (qie-cache bench-read). Not for production data. */
#include "cache_cmd.h"
#include "cache_names.h"
#include "err.h"
#include "progress.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t xorshift_(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t name_hash_(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* bf16 tensor of deterministic content: the same (seed, record, name) gives the same bytes, so
 * a test can compare what comes out of the cache with a fresh generation */
static int gen_tensor_(char *err, Record *r, const char *name, int ndim, const int64_t *shape, uint64_t seed) {
    void *p;
    int rc = rec_new_tensor(err, r, name, QIE_DT_BF16, ndim, shape, &p);
    if (rc) return rc;
    size_t n = (size_t)rec_numel(ndim, shape) * 2, i = 0;
    uint64_t s = seed ^ name_hash_(name) ^ ((uint64_t)r->index * 0x9E3779B97F4A7C15ull);
    if (!s) s = 1;
    for (; i + 8 <= n; i += 8) {
        uint64_t x = xorshift_(&s);
        memcpy((char *)p + i, &x, 8);
    }
    for (; i < n; i++) ((unsigned char *)p)[i] = (unsigned char)xorshift_(&s);
    return 0;
}

static int parse_buckets_(char *err, const char *spec, int32_t (*b)[2], int cap, int *n) {
    *n = 0;
    const char *p = spec;
    while (*p) {
        int h, w, used;
        if (*n == cap || sscanf(p, "%dx%d%n", &h, &w, &used) != 2 || h < 8 || w < 8) {
            qie_seterr(err, "--buckets '%s': expected HxW[,HxW...] with H, W >= 8", spec);
            return QIE_EINVAL;
        }
        b[*n][0] = h;
        b[(*n)++][1] = w;
        p += used;
        if (*p == ',') p++;
    }
    if (!*n) {
        qie_seterr(err, "--buckets: empty");
        return QIE_EINVAL;
    }
    return 0;
}

int cache_cmd_gen(char *err, const CacheGenOptions *o, Endpoint *out) {
    int32_t buckets[32][2];
    int nb, rc;
    if ((rc = parse_buckets_(err, o->buckets, buckets, 32, &nb))) return rc;
    int lat = !strcmp(o->parts, "all") || !strcmp(o->parts, "latents");
    int pro = !strcmp(o->parts, "all") || !strcmp(o->parts, "prompt");
    if (!lat && !pro) {
        qie_seterr(err, "--parts '%s': all, latents or prompt", o->parts);
        return QIE_EINVAL;
    }
    Record r;
    rec_init(&r);
    for (int64_t i = o->start; i < o->start + o->count; i++) {
        if (o->delay_ms > 0) {
            struct timespec ts = {o->delay_ms / 1000, (o->delay_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (o->bad_every > 0 && i % o->bad_every == o->bad_every - 1) {
            static const unsigned char junk[32] = {0xc1, 0xc1, 0xc1, 0xc1}; /* 0xc1: never used by msgpack */
            if ((rc = ep_write(err, out, junk, sizeof junk))) break;
            continue;
        }
        rec_free(&r);
        char s[128];
        snprintf(s, sizeof s, "s%06" PRId64, i);
        rc = rec_set_id(&r, s);
        r.index = i;
        snprintf(s, sizeof s, "caption %" PRId64, i);
        rc = rc ? rc : rec_set_text(&r, s);
        snprintf(s, sizeof s, "t/%" PRId64 ".png", i);
        rc = rc ? rc : rec_set_target(&r, s);
        int ns = (int)(i % (o->sources_max + 1));
        for (int k = 0; k < ns && !rc; k++) {
            snprintf(s, sizeof s, "s/%" PRId64 "_%d.png", i, k);
            rc = rec_add_source(&r, s);
        }
        r.bucket[0] = buckets[i % nb][0];
        r.bucket[1] = buckets[i % nb][1];
        for (int k = 0; k < o->nsettings && !rc; k++) {
            const char *eq = strchr(o->settings[k], '=');
            if (!eq) {
                qie_seterr(err, "--setting '%s': not KEY=VALUE", o->settings[k]);
                rc = QIE_EINVAL;
                break;
            }
            snprintf(s, sizeof s, "%s%.*s", CACHE_CFG_PREFIX, (int)(eq - o->settings[k]), o->settings[k]);
            rc = rec_set_attr_str(&r, s, eq + 1);
        }
        if (rc) break;
        int64_t ls[4] = {16, 1, r.bucket[0] / 8, r.bucket[1] / 8};
        int64_t lat_bytes = 2 * (1 + ns) * rec_numel(4, ls) * 2;
        int64_t per_l = 64 * 2 * (o->empty ? 2 : 1);
        int64_t L = (o->size - lat_bytes) / per_l;
        int64_t ps[2] = {L > 0 ? L : 1, 64};
        if (lat) {
            char m[64], l[64];
            rc = gen_tensor_(err, &r, CACHE_T_TARGET_MEAN, 4, ls, (uint64_t)o->seed);
            if (!rc) rc = gen_tensor_(err, &r, CACHE_T_TARGET_LOGVAR, 4, ls, (uint64_t)o->seed);
            for (int k = 0; k < ns && !rc; k++) {
                cache_name_k(m, sizeof m, CACHE_T_SOURCE_MEAN, k);
                cache_name_k(l, sizeof l, CACHE_T_SOURCE_LOGVAR, k);
                rc = gen_tensor_(err, &r, m, 4, ls, (uint64_t)o->seed);
                if (!rc) rc = gen_tensor_(err, &r, l, 4, ls, (uint64_t)o->seed);
            }
        }
        if (pro && !rc) rc = gen_tensor_(err, &r, CACHE_T_PROMPT_EMBEDS, 2, ps, (uint64_t)o->seed);
        if (pro && !rc && o->empty) rc = gen_tensor_(err, &r, CACHE_T_PROMPT_EMBEDS_EMPTY, 2, ps, (uint64_t)o->seed);
        if (rc || (rc = ep_write_record(err, out, &r))) break;
    }
    rec_free(&r);
    return rc;
}

int cache_cmd_bench_read(char *err, Cache *c, int64_t reads, int64_t seed, FILE *out) {
    CacheGroup *g = NULL;
    int ng = 0, rc;
    if ((rc = cache_groups(err, c, &g, &ng))) return rc;
    if (!ng) {
        free(g);
        qie_seterr(err, "%s: empty cache", cache_dir(c));
        return QIE_ENOTFOUND;
    }
    CacheList *lists = calloc((size_t)ng, sizeof *lists);
    if (!lists) { free(g); return QIE_ENOMEM; }
    double t_list = progress_now();
    for (int i = 0; i < ng && !rc; i++) {
        CacheFilter f;
        cache_filter_init(&f);
        f.bucket[0] = g[i].bucket[0];
        f.bucket[1] = g[i].bucket[1];
        f.nsources = g[i].nsources;
        rc = cache_list(err, c, &f, &lists[i]);
    }
    t_list = progress_now() - t_list;
    Record r;
    rec_init(&r);
    uint64_t s = (uint64_t)seed | 1, bytes = 0, sum = 0;
    double t0 = progress_now();
    for (int64_t n = 0; n < reads && !rc; n++) {
        /* like the trainer's sampler: pick a (bucket, sources) group, then a record in it */
        const CacheList *l = &lists[xorshift_(&s) % (uint64_t)ng];
        const CacheItem *it = &l->items[xorshift_(&s) % l->n];
        if ((rc = cache_read_begin(err, c))) break;
        rc = cache_get(err, c, it->seq, &r, 0);
        for (int t = 0; !rc && t < r.ntensors; t++) {
            const unsigned char *p = r.tensors[t].data;
            /* one byte per page, so every page of the value is really read */
            for (size_t o = 0; o < r.tensors[t].nbytes; o += 4096) sum += p[o];
            bytes += r.tensors[t].nbytes;
        }
        rec_free(&r);
        cache_read_end(c);
    }
    double dt = progress_now() - t0;
    if (!rc)
        fprintf(out, "random reads by bucket: %" PRId64 " records over %d groups, %.1f MB in %.2f s: %.0f records/s, %.0f MB/s "
                "(listing the groups took %.1f ms; checksum %" PRIu64 ")\n", reads, ng, bytes / 1e6, dt, reads / dt,
                bytes / 1e6 / dt, t_list * 1e3, sum);
    for (int i = 0; i < ng; i++) cache_list_free(&lists[i]);
    free(lists);
    free(g);
    return rc;
}
