/* test_cache.c: the LMDB latent cache API (common/cache.h), the lmdb:// endpoint and the
 * checks of qie-cache verify, in one process. Process-level behaviour (kill -9, concurrent
 * readers, disk full) is in tests/t_cache.sh. */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cache.h"
#include "cache/cache_cmd.h"
#include "cache_names.h"
#include "endpoint.h"
#include "err.h"
#include "log.h"
#include "record.h"
#include "testlib.h"

static char err[QIE_ERR_LEN];

/* every scratch folder, removed at the end (LMDB files of a few MB each) */
static char tmpdirs_[16][256];
static int ntmp_;
static void tmpdir_(char *out, size_t cap) {
    test_tmpdir(out, cap);
    if (ntmp_ < 16) snprintf(tmpdirs_[ntmp_++], sizeof tmpdirs_[0], "%s", out);
}
static void tmp_cleanup_(void) {
    for (int i = 0; i < ntmp_; i++) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdirs_[i]);
        if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdirs_[i]);
    }
}

/* a record with latents (parts & 1) and/or prompt embeddings (parts & 2); the payload bytes are
 * a function of (i, name) so reads can be compared */
static void make_rec_(Record *r, int i, int parts, int nsrc, int lat_hw, int L) {
    char s[64];
    rec_free(r);
    snprintf(s, sizeof s, "id%04d", i);
    rec_set_id(r, s);
    r->index = i;
    rec_set_text(r, "a caption");
    r->bucket[0] = lat_hw * 8;
    r->bucket[1] = lat_hw * 8;
    for (int k = 0; k < nsrc; k++) rec_add_source(r, "src.png");
    int64_t ls[4] = {16, 1, lat_hw, lat_hw}, ps[2] = {L, 32};
    void *p;
    if (parts & 1) {
        char m[64], l[64];
        rec_new_tensor(err, r, CACHE_T_TARGET_MEAN, QIE_DT_BF16, 4, ls, &p);
        memset(p, i & 0xff, (size_t)rec_numel(4, ls) * 2);
        rec_new_tensor(err, r, CACHE_T_TARGET_LOGVAR, QIE_DT_BF16, 4, ls, &p);
        for (int k = 0; k < nsrc; k++) {
            cache_name_k(m, sizeof m, CACHE_T_SOURCE_MEAN, k);
            cache_name_k(l, sizeof l, CACHE_T_SOURCE_LOGVAR, k);
            rec_new_tensor(err, r, m, QIE_DT_BF16, 4, ls, &p);
            rec_new_tensor(err, r, l, QIE_DT_BF16, 4, ls, &p);
        }
    }
    if (parts & 2) {
        rec_new_tensor(err, r, CACHE_T_PROMPT_EMBEDS, QIE_DT_BF16, 2, ps, &p);
        memset(p, (i * 7) & 0xff, (size_t)rec_numel(2, ps) * 2);
    }
}

/* make_rec_ into *r, then put it (the test fails on an error) */
static void put_rec_(Cache *c, Record *r, int i, int parts, int nsrc, int lat_hw, int L) {
    make_rec_(r, i, parts, nsrc, lat_hw, L);
    CHECK_RC(cache_put_record(err, c, r), err);
}

static Cache *open_(const char *dir, int ro, uint64_t map_size, int batch) {
    CacheOptions o;
    cache_options_init(&o);
    o.readonly = ro;
    o.map_size = map_size;
    o.batch_records = batch;
    o.sync = CACHE_SYNC_NONE; /* tests need no durability against OS crashes */
    Cache *c = NULL;
    int rc = cache_open(err, dir, &o, &c);
    CHECK(rc == 0, "open %s: %s", dir, err);
    return c;
}

static void test_put_get_roundtrip(void) {
    char dir[256];
    tmpdir_(dir, sizeof dir);
    Cache *c = open_(dir, 0, 0, 4);
    Record r;
    rec_init(&r);
    for (int i = 0; i < 10; i++) {
        put_rec_(c, &r, i, 3, i % 3, i % 2 ? 8 : 4, 10 + i);
    }
    CHECK_RC(cache_flush(err, c, 1), err);
    CHECK(cache_put_stats(c)->stored == 10);
    cache_close(&c);

    c = open_(dir, 1, 0, 0);
    uint64_t n = 0, seq = 0;
    CHECK_RC(cache_count(err, c, &n), err);
    CHECK(n == 10, "%llu", (unsigned long long)n);
    /* copy: usable after the txn; borrow: the same bytes, from inside the map */
    Record a, b;
    rec_init(&a);
    rec_init(&b);
    CHECK_RC(cache_get_id(err, c, "id0007", &a, 1), err);
    CHECK_RC(cache_read_begin(err, c), err);
    CHECK_RC(cache_seq(err, c, "id0007", &seq), err);
    CHECK_RC(cache_get(err, c, seq, &b, 0), err);
    const RecTensor *ta = rec_tensor(&a, CACHE_T_PROMPT_EMBEDS), *tb = rec_tensor(&b, CACHE_T_PROMPT_EMBEDS);
    CHECK(ta && tb && ta->nbytes == tb->nbytes && !memcmp(ta->data, tb->data, ta->nbytes));
    CHECK(ta && ((const unsigned char *)ta->data)[0] == 49, "7*7 = 49");
    CHECK(a.nsources == 1 && a.bucket[0] == 64 && !strcmp(a.text, "a caption"));
    CHECK(cache_get(err, c, 999, &b, 0) == QIE_ENOTFOUND);
    rec_free(&b);
    cache_read_end(c);
    CHECK(cache_get(err, c, seq, &b, 0) == QIE_EINVAL, "borrowing needs a read txn");
    CHECK(cache_get_id(err, c, "nope", &b, 1) == QIE_ENOTFOUND);
    CHECK(cache_put_record(err, c, &a) == QIE_EINVAL, "read-only");
    rec_free(&a);
    rec_free(&b);
    rec_free(&r);
    cache_close(&c);
}

static void test_map_full_grows(void) {
    char dir[256];
    tmpdir_(dir, sizeof dir);
    Cache *c = open_(dir, 0, 256 << 10, 16); /* 256 KiB map, ~2.5 MB of records */
    Record r;
    rec_init(&r);
    for (int i = 0; i < 40; i++) {
        put_rec_(c, &r, i, 3, 0, 4, 1000); /* ~66 KB */
    }
    CHECK_RC(cache_flush(err, c, 1), err);
    CHECK(cache_put_stats(c)->grows >= 3, "grows=%llu", (unsigned long long)cache_put_stats(c)->grows);
    CHECK(cache_put_stats(c)->stored == 40);
    cache_close(&c);
    c = open_(dir, 1, 0, 0);
    uint64_t n = 0;
    CHECK_RC(cache_count(err, c, &n), err);
    CHECK(n == 40);
    uint64_t bad = 99;
    FILE *devnull = fopen("/dev/null", "w");
    CHECK_RC(cache_cmd_verify(err, c, devnull, &bad), err);
    CHECK(bad == 0);
    fclose(devnull);
    rec_free(&r);
    cache_close(&c);
}

static void test_merge_skip_replace(void) {
    char dir[256];
    tmpdir_(dir, sizeof dir);
    Cache *c = open_(dir, 0, 0, 64);
    Record r;
    rec_init(&r);
    /* latents from one encoder, embeddings from another; the second part lands in the same
     * batch as the first for id0, in a later batch for id1 */
    put_rec_(c, &r, 0, 1, 1, 4, 8);
    put_rec_(c, &r, 0, 2, 1, 4, 8);
    put_rec_(c, &r, 1, 1, 0, 4, 8);
    CHECK_RC(cache_flush(err, c, 0), err);
    CacheList l;
    CHECK_RC(cache_list(err, c, NULL, &l), err);
    /* (bucket, nsources, seq) order: id0001 (no source) comes first */
    CHECK(l.n == 2 && !strcmp(l.items[1].id, "id0000") && l.items[1].complete && !l.items[0].complete, "n=%zu", l.n);
    cache_list_free(&l);
    put_rec_(c, &r, 1, 2, 0, 4, 8);
    put_rec_(c, &r, 1, 3, 0, 4, 8); /* everything again: already cached */
    CHECK_RC(cache_flush(err, c, 0), err);
    const CachePutStats *st = cache_put_stats(c);
    CHECK(st->stored == 2 && st->merged == 2 && st->skipped == 1, "%llu %llu %llu", (unsigned long long)st->stored,
          (unsigned long long)st->merged, (unsigned long long)st->skipped);
    CacheGroup *g = NULL;
    int ng = 0;
    CHECK_RC(cache_groups(err, c, &g, &ng), err);
    CHECK(ng == 2 && g[0].complete == 1 && g[1].complete == 1);
    free(g);
    cache_close(&c);

    /* skip_existing off: a re-put replaces the tensors it carries */
    CacheOptions o;
    cache_options_init(&o);
    o.skip_existing = 0;
    CHECK_RC(cache_open(err, dir, &o, &c), err);
    make_rec_(&r, 1, 2, 0, 4, 8);
    ((unsigned char *)rec_tensor(&r, CACHE_T_PROMPT_EMBEDS)->data)[0] = 0xAB;
    CHECK_RC(cache_put_record(err, c, &r), err);
    CHECK_RC(cache_flush(err, c, 0), err);
    CHECK(cache_put_stats(c)->merged == 1);
    Record got;
    rec_init(&got);
    CHECK_RC(cache_get_id(err, c, "id0001", &got, 1), err);
    const RecTensor *t = rec_tensor(&got, CACHE_T_PROMPT_EMBEDS);
    CHECK(t && ((const unsigned char *)t->data)[0] == 0xAB && rec_tensor(&got, CACHE_T_TARGET_MEAN));
    rec_free(&got);
    rec_free(&r);
    cache_close(&c);
}

static void test_settings_mismatch(void) {
    char dir[256];
    tmpdir_(dir, sizeof dir);
    Cache *c = open_(dir, 0, 0, 64);
    Record r;
    rec_init(&r);
    make_rec_(&r, 0, 3, 0, 4, 8);
    rec_set_attr_str(&r, CACHE_CFG_PREFIX CACHE_CFG_VAE_HASH, "abc");
    rec_set_attr_float(&r, CACHE_CFG_PREFIX CACHE_CFG_TEXT_DROP_RATIO, 0.1);
    CHECK_RC(cache_put_record(err, c, &r), err);
    make_rec_(&r, 1, 3, 0, 4, 8);
    rec_set_attr_str(&r, CACHE_CFG_PREFIX CACHE_CFG_VAE_HASH, "xyz");
    CHECK(cache_put_record(err, c, &r) == QIE_EMISMATCH, "pending settings are checked too");
    CHECK(strstr(err, "vae_hash") && strstr(err, "abc"), "%s", err);
    CHECK_RC(cache_flush(err, c, 0), err);
    CHECK(cache_put_stats(c)->stored == 1);
    CHECK(cache_set_setting(err, c, CACHE_CFG_TEXT_DROP_RATIO, "0.2") == QIE_EMISMATCH);
    CHECK_RC(cache_set_setting(err, c, CACHE_CFG_TEXT_DROP_RATIO, "0.1"), err);
    CHECK(cache_need_empty(c) == 1);
    cache_close(&c);

    /* a second writer with other settings is refused at its first record */
    c = open_(dir, 0, 0, 64);
    make_rec_(&r, 2, 3, 0, 4, 8);
    rec_set_attr_str(&r, CACHE_CFG_PREFIX CACHE_CFG_VAE_HASH, "other");
    CHECK(cache_put_record(err, c, &r) == QIE_EMISMATCH);
    cache_close(&c);

    CacheOptions o;
    cache_options_init(&o);
    o.readonly = 1;
    o.nexpect = 2;
    o.expect[0] = "vae_hash=abc";
    o.expect[1] = "text_drop_ratio=0.1";
    CHECK_RC(cache_open(err, dir, &o, &c), err);
    char v[64];
    CHECK_RC(cache_setting(err, c, CACHE_CFG_VAE_HASH, v, sizeof v), err);
    CHECK(!strcmp(v, "abc"));
    /* text_drop_ratio > 0 makes prompt_embeds_empty part of completeness */
    CacheList l;
    CHECK_RC(cache_list(err, c, NULL, &l), err);
    CHECK(l.n == 1 && !l.items[0].complete);
    cache_list_free(&l);
    cache_close(&c);
    o.expect[1] = "text_drop_ratio=0";
    CHECK(cache_open(err, dir, &o, &c) == QIE_EMISMATCH && !c);
    o.expect[1] = "model=foo";
    CHECK(cache_open(err, dir, &o, &c) == QIE_EMISMATCH && strstr(err, "no setting 'model'"), "%s", err);
    rec_free(&r);
}

static void test_bad_input_and_foreign(void) {
    char dir[256], path[300];
    tmpdir_(dir, sizeof dir);
    Cache *c = open_(dir, 0, 0, 64);
    CHECK(cache_put(err, c, "\xc1\xc1\xc1", 3) == QIE_EFORMAT);
    Record r;
    rec_init(&r);
    put_rec_(c, &r, 0, 3, 0, 4, 8); /* still usable */
    CHECK_RC(cache_flush(err, c, 0), err);
    cache_close(&c);

    /* a plain LMDB environment that some other program wrote */
    char foreign[256];
    tmpdir_(foreign, sizeof foreign);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    CHECK(mdb_env_create(&env) == 0);
    CHECK(mdb_env_open(env, foreign, 0, 0644) == 0);
    CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    CHECK(mdb_dbi_open(txn, NULL, 0, &dbi) == 0);
    MDB_val k = {3, "key"}, v = {5, "value"};
    CHECK(mdb_put(txn, dbi, &k, &v, 0) == 0);
    CHECK(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
    CacheOptions o;
    cache_options_init(&o);
    CHECK(cache_open(err, foreign, &o, &c) == QIE_EFORMAT && strstr(err, "not a qie cache"), "%s", err);
    o.readonly = 1;
    CHECK(cache_open(err, foreign, &o, &c) == QIE_EFORMAT);
    /* garbage in data.mdb */
    char junk[256];
    tmpdir_(junk, sizeof junk);
    snprintf(path, sizeof path, "%s/data.mdb", junk);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 20000; i++) fputc(i * 131 % 251, f);
    fclose(f);
    CHECK(cache_open(err, junk, &o, &c) == QIE_EFORMAT && strstr(err, "not an LMDB"), "%s", err);
    snprintf(path, sizeof path, "%s/missing", dir);
    CHECK(cache_open(err, path, &o, &c) == QIE_ENOTFOUND);
    rec_free(&r);
}

static void test_filters_and_iter(void) {
    char dir[256];
    tmpdir_(dir, sizeof dir);
    Cache *c = open_(dir, 0, 0, 5);
    Record r;
    rec_init(&r);
    for (int i = 0; i < 12; i++) {
        put_rec_(c, &r, i, i == 11 ? 1 : 3, i % 2, i % 3 ? 4 : 6, 4);
    }
    CHECK_RC(cache_flush(err, c, 0), err);
    CHECK_RC(cache_rm(err, c, "id0004"), err);
    CHECK(cache_rm(err, c, "id0004") == QIE_ENOTFOUND);
    cache_close(&c);
    c = open_(dir, 1, 0, 0);
    /* bucket 32x32 (lat 4): i%3 != 0 -> 1,2,4,5,7,8,10,11 minus 4 = 7; with 1 source: 1,5,7,11 */
    CacheFilter f;
    cache_filter_init(&f);
    f.bucket[0] = f.bucket[1] = 32;
    f.nsources = 1;
    CacheList l;
    CHECK_RC(cache_list(err, c, &f, &l), err);
    CHECK(l.n == 4 && !strcmp(l.items[0].id, "id0001") && !strcmp(l.items[3].id, "id0011"), "n=%zu", l.n);
    cache_list_free(&l);
    f.complete_only = 1;
    CHECK_RC(cache_list(err, c, &f, &l), err);
    CHECK(l.n == 3, "id0011 has no prompt: n=%zu", l.n);
    cache_list_free(&l);
    CacheIter *it = NULL;
    const void *buf;
    size_t len;
    uint64_t seq;
    int n = 0;
    CHECK_RC(cache_iter_begin(err, c, &f, &it), err);
    while (cache_iter_next(err, it, &buf, &len, &seq) == 0) n++;
    cache_iter_destroy(&it);
    CHECK(n == 3);
    /* whole cache in commit order */
    CHECK_RC(cache_iter_begin(err, c, NULL, &it), err);
    n = 0;
    uint64_t last = 0;
    int ordered = 1;
    while (cache_iter_next(err, it, &buf, &len, &seq) == 0) {
        ordered &= seq > last;
        last = seq;
        n++;
    }
    cache_iter_destroy(&it);
    CHECK(n == 11 && ordered);
    /* id range, inclusive */
    cache_filter_init(&f);
    f.id_from = "id0003";
    f.id_to = "id0006";
    CHECK_RC(cache_iter_begin(err, c, &f, &it), err);
    n = 0;
    while (cache_iter_next(err, it, &buf, &len, &seq) == 0) n++;
    cache_iter_destroy(&it);
    CHECK(n == 3, "3, 5, 6: n=%d", n);
    /* an explicit list keeps its order; a missing id is an error */
    const char *ids[3] = {"id0009", "id0000", "id0004"};
    cache_filter_init(&f);
    f.ids = ids;
    f.nids = 3;
    Record got;
    rec_init(&got);
    CHECK_RC(cache_iter_begin(err, c, &f, &it), err);
    CHECK_RC(cache_iter_next(err, it, &buf, &len, &seq), err);
    CHECK(rec_decode(err, &got, buf, len) == 0 && !strcmp(got.id, "id0009"));
    CHECK_RC(cache_iter_next(err, it, &buf, &len, &seq), err);
    CHECK(cache_iter_next(err, it, &buf, &len, &seq) == QIE_ENOTFOUND && strstr(err, "id0004"), "%s", err);
    cache_iter_destroy(&it);
    rec_free(&got);
    rec_free(&r);
    cache_close(&c);
}

static void test_endpoint(void) {
    char dir[256], url[400];
    tmpdir_(dir, sizeof dir);
    snprintf(url, sizeof url, "lmdb://%s?batch=3&set=model=tiny&sync=none", dir);
    Endpoint *ep = NULL;
    CHECK_RC(ep_open(err, url, EP_WRITE, &ep), err);
    Record r;
    rec_init(&r);
    for (int i = 0; i < 7; i++) {
        make_rec_(&r, i, 3, 0, i % 2 ? 4 : 6, 4);
        CHECK_RC(ep_write_record(err, ep, &r), err);
    }
    CHECK_RC(ep_finish(err, ep, 1, NULL), err);
    ep_close(&ep);
    snprintf(url, sizeof url, "lmdb://%s?bucket=32x32&expect=model=tiny", dir);
    CHECK_RC(ep_open(err, url, EP_READ, &ep), err);
    int n = 0;
    while (ep_read_record(err, ep, &r) == 0) n++;
    CHECK(n == 3, "1, 3, 5: n=%d", n);
    ep_close(&ep);
    snprintf(url, sizeof url, "lmdb://%s?expect=model=big", dir);
    CHECK(ep_open(err, url, EP_READ, &ep) == QIE_EMISMATCH);
    snprintf(url, sizeof url, "lmdb://%s?color=blue", dir);
    CHECK(ep_open(err, url, EP_READ, &ep) == QIE_EINVAL && strstr(err, "unknown query key"));
    rec_free(&r);
}

static void test_verify_finds_corruption(void) {
    char dir[256];
    tmpdir_(dir, sizeof dir);
    Cache *c = open_(dir, 0, 0, 64);
    Record r;
    rec_init(&r);
    for (int i = 0; i < 4; i++) {
        put_rec_(c, &r, i, 3, 0, 4, 4);
    }
    CHECK_RC(cache_flush(err, c, 1), err);
    cache_close(&c);
    /* overwrite seq 2 behind the cache's back */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    CHECK(mdb_env_create(&env) == 0 && mdb_env_set_maxdbs(env, 4) == 0);
    CHECK(mdb_env_open(env, dir, 0, 0644) == 0);
    CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    CHECK(mdb_dbi_open(txn, "rec", 0, &dbi) == 0);
    unsigned char k8[8] = {0, 0, 0, 0, 0, 0, 0, 2};
    MDB_val k = {8, k8}, v = {4, "junk"};
    CHECK(mdb_put(txn, dbi, &k, &v, 0) == 0);
    CHECK(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
    c = open_(dir, 1, 0, 0);
    char *text = NULL;
    size_t tlen = 0;
    FILE *out = open_memstream(&text, &tlen);
    uint64_t bad = 0;
    CHECK_RC(cache_cmd_verify(err, c, out, &bad), err);
    fclose(out);
    CHECK(bad == 1 && strstr(text, "seq 2: does not decode"), "%s", text);
    free(text);
    rec_free(&r);
    cache_close(&c);
}

int main(void) {
    log_init("test_cache");
    log_set_level(LOG_WARN);
    TEST_RUN(test_put_get_roundtrip);
    TEST_RUN(test_map_full_grows);
    TEST_RUN(test_merge_skip_replace);
    TEST_RUN(test_settings_mismatch);
    TEST_RUN(test_bad_input_and_foreign);
    TEST_RUN(test_filters_and_iter);
    TEST_RUN(test_endpoint);
    TEST_RUN(test_verify_finds_corruption);
    tmp_cleanup_();
    return TEST_DONE();
}
