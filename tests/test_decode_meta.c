/* test_decode_meta.c: the metadata scanner (whole-file validation with line/column, entry
 * iteration) and the per-entry parse (rejects, os.path.join, duplicate keys), on the fixtures
 * of tests/golden/decode/meta/. The expected line/column values are those Python's json
 * reports for the same files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode/metadata.h"
#include "err.h"
#include "testlib.h"

static void fixture_(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/decode/meta/%s", test_golden_dir(), name);
}

static void test_join(void) {
    static const char *cases[][3] = {
        {NULL, "a/b.png", "a/b.png"},         {"", "a/b.png", "a/b.png"},
        {"root", "a.png", "root/a.png"},      {"root/", "a.png", "root/a.png"},
        {"root", "/abs/a.png", "/abs/a.png"}, {"/", "a.png", "/a.png"},
        {"r//", "a.png", "r//a.png"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *s = meta_path_join(cases[i][0], cases[i][1]);
        CHECK(s && !strcmp(s, cases[i][2]), "join(%s, %s) = %s", cases[i][0] ? cases[i][0] : "None",
              cases[i][1], s ? s : "NULL");
        free(s);
    }
}

typedef struct {
    const char *file;
    const char *want; /* substring of the error */
} BadCase;

static void test_bad_files(void) {
    static const BadCase cases[] = {
        {"bad_trailing_comma.json", "line 4 column 1 (char 80): expecting value"},
        {"bad_truncated.json", "line 3 column 1 (char 40): expecting ',' or ']'"},
        {"bad_not_list.json", "line 1 column 1 (char 0): the top level must be a list"},
        {"bad_utf8.json", "line 2 column 35 (char 36): invalid UTF-8 byte"},
        {"bad_nan.json", "line 2 column 35 (char 36): expecting value"},
        {"bad_extra.json", "line 1 column 39 (char 38): extra data"},
        {"bad_missing_colon_comma.json", "line 2 column 25 (char 26): expecting ',' delimiter"},
        {"bad_control_char.json", "line 2 column 37 (char 38): invalid control character"},
        {"bad_empty.json", "line 1 column 1 (char 0): expecting value"},
        {"does_not_exist.json", "No such file"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[512], err[QIE_ERR_LEN] = "";
        fixture_(path, sizeof path, cases[i].file);
        MetaFile *m = NULL;
        int rc = meta_open(err, path, &m);
        CHECK(rc != 0 && m == NULL, "%s opened", cases[i].file);
        CHECK(strstr(err, cases[i].want) != NULL, "%s: err '%s' lacks '%s'", cases[i].file, err,
              cases[i].want);
        meta_close(&m);
    }
}

static void test_deep_nesting(void) {
    char dir[256], path[300], err[QIE_ERR_LEN] = "";
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/deep.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    for (int i = 0; i < 100000; i++) fputc('[', f);
    fclose(f);
    MetaFile *m = NULL;
    CHECK(meta_open(err, path, &m) == QIE_EFORMAT);
    CHECK(strstr(err, "nesting too deep") != NULL, "%s", err);
    remove(path);
    remove(dir);
}

static void test_empty_and_bom(void) {
    char path[512], err[QIE_ERR_LEN] = "";
    MetaFile *m = NULL;
    fixture_(path, sizeof path, "empty_list.json");
    CHECK_RC(meta_open(err, path, &m), err);
    if (m) {
        CHECK(meta_count(m) == 0);
        MetaCursor c = META_CURSOR_INIT;
        const char *js;
        size_t len;
        int64_t idx;
        CHECK(meta_next(err, m, &c, &js, &len, &idx) == QIE_EEOF);
    }
    meta_close(&m);
    fixture_(path, sizeof path, "bom.json");
    CHECK_RC(meta_open(err, path, &m), err);
    if (m) {
        CHECK(meta_count(m) == 1);
        MetaCursor c = META_CURSOR_INIT;
        const char *js;
        size_t len;
        int64_t idx;
        CHECK_RC(meta_next(err, m, &c, &js, &len, &idx), err);
        MetaEntry e;
        CHECK_RC(meta_entry_parse(err, js, len, "d", &e), err);
        CHECK(e.file_path && !strcmp(e.file_path, "d/bom.png"));
        CHECK(e.nsources == 1 && !strcmp(e.sources[0], "d/s.png"));
        meta_entry_free(&e);
    }
    meta_close(&m);
}

/* expected outcome of each entry of entries.json */
typedef struct {
    const char *reason; /* NULL: parses */
    const char *file_path;
    const char *text;
    int nsources;
} Want;

static void test_entries(void) {
    static const Want want[] = {
        {NULL, "R/t/0.png", "make it red", 1},
        {NULL, "/abs/1.png", "caf\xc3\xa9 \"quoted\" \xc3\xbcn\xc3\xaf", 1},
        {NULL, "R/t/2.png", "two sources", 2},
        {"video entry", "R/t/3.mp4", NULL, 0},
        {"missing text", "R/t/4.png", NULL, 0},
        {"missing file_path", NULL, NULL, 0},
        {"not a JSON object", NULL, NULL, 0},
        {NULL, "R/t/7.png", "no sources", 0},
        {"text is not a string", "R/t/8.png", NULL, 0},
        {"source_file_path[0] is not a string", "R/t/9.png", NULL, 0},
        {NULL, "R/t/10.png", "last wins", 1},
        {"type \"sketch\"", "R/t/11.png", NULL, 0},
        {"file_path is empty", NULL, NULL, 0},
        {"file_path is not a string", NULL, NULL, 0},
    };
    const int nwant = (int)(sizeof want / sizeof *want);
    char path[512], err[QIE_ERR_LEN] = "";
    MetaFile *m = NULL;
    fixture_(path, sizeof path, "entries.json");
    CHECK_RC(meta_open(err, path, &m), err);
    if (!m) return;
    CHECK(meta_count(m) == nwant, "count %lld", (long long)meta_count(m));
    MetaCursor c = META_CURSOR_INIT;
    const char *js;
    size_t len;
    int64_t idx;
    int n = 0, rc;
    while ((rc = meta_next(err, m, &c, &js, &len, &idx)) == 0) {
        CHECK(idx == n);
        if (n >= nwant) break;
        const Want *w = &want[n];
        MetaEntry e;
        err[0] = 0;
        int prc = meta_entry_parse(err, js, len, "R", &e);
        if (w->reason) {
            CHECK(prc == QIE_EFORMAT && strstr(err, w->reason), "entry %d: rc=%d err='%s'", n, prc, err);
        } else {
            CHECK(prc == 0, "entry %d: %s", n, err);
            CHECK(e.text && !strcmp(e.text, w->text), "entry %d text '%s'", n, e.text ? e.text : "NULL");
            CHECK(e.nsources == w->nsources, "entry %d nsources %d", n, e.nsources);
        }
        if (w->file_path)
            CHECK(e.file_path && !strcmp(e.file_path, w->file_path), "entry %d path %s", n,
                  e.file_path ? e.file_path : "NULL");
        meta_entry_free(&e);
        n++;
    }
    CHECK(rc == QIE_EEOF && n == nwant, "rc=%d n=%d", rc, n);
    /* the cursor stays at the end */
    CHECK(meta_next(err, m, &c, &js, &len, &idx) == QIE_EEOF);
    meta_close(&m);
}

/* sources: absolute replaces the root; no root leaves paths as written */
static void test_sources_no_root(void) {
    const char *js = "{\"file_path\":\"t.png\",\"text\":\"\",\"source_file_path\":[\"a.png\",\"/b.png\"]}";
    MetaEntry e;
    char err[QIE_ERR_LEN] = "";
    CHECK_RC(meta_entry_parse(err, js, strlen(js), NULL, &e), err);
    CHECK(!strcmp(e.file_path, "t.png") && !strcmp(e.text, ""));
    CHECK(e.nsources == 2 && !strcmp(e.sources[0], "a.png") && !strcmp(e.sources[1], "/b.png"));
    meta_entry_free(&e);
    CHECK_RC(meta_entry_parse(err, js, strlen(js), "/data", &e), err);
    CHECK(!strcmp(e.sources[0], "/data/a.png") && !strcmp(e.sources[1], "/b.png"));
    CHECK(!strcmp(e.sources_raw[0], "a.png"));
    meta_entry_free(&e);
    meta_entry_free(&e); /* twice is harmless */
}

/* a large metadata file: streaming over it must not grow the heap with the file */
static void test_many_entries(void) {
    char dir[256], path[300], err[QIE_ERR_LEN] = "";
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/many.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    const int N = 200000;
    fputc('[', f);
    for (int i = 0; i < N; i++)
        fprintf(f, "%s{\"file_path\":\"t/%d.jpg\",\"text\":\"caption %d\",\"source_file_path\":[\"s/%d.jpg\"]}\n",
                i ? "," : "", i, i, i);
    fputs("]\n", f);
    fclose(f);
    MetaFile *m = NULL;
    CHECK_RC(meta_open(err, path, &m), err);
    if (m) {
        CHECK(meta_count(m) == N);
        MetaCursor c = META_CURSOR_INIT;
        const char *js;
        size_t len;
        int64_t idx, seen = 0;
        int ok = 1;
        while (meta_next(err, m, &c, &js, &len, &idx) == 0) {
            if (idx % 9973 == 0) {
                MetaEntry e;
                char want[64];
                snprintf(want, sizeof want, "caption %lld", (long long)idx);
                if (meta_entry_parse(err, js, len, NULL, &e) || strcmp(e.text, want)) ok = 0;
                meta_entry_free(&e);
            }
            seen++;
        }
        CHECK(seen == N && ok, "seen %lld ok %d", (long long)seen, ok);
    }
    meta_close(&m);
    remove(path);
    remove(dir);
}

int main(void) {
    TEST_RUN(test_join);
    TEST_RUN(test_bad_files);
    TEST_RUN(test_deep_nesting);
    TEST_RUN(test_empty_and_bom);
    TEST_RUN(test_entries);
    TEST_RUN(test_sources_no_root);
    TEST_RUN(test_many_entries);
    return TEST_DONE();
}
