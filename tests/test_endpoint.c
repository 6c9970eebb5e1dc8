/* test_endpoint: file endpoints in-process: round trip, atomic rename, truncation and abort
 * detection, bad URLs. Process-level and ZeroMQ tests are in tests/t_endpoints.sh. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "endpoint.h"
#include "err.h"
#include "testlib.h"

static char err[QIE_ERR_LEN];
static char dir[256];

static int write_n_(const char *path, int n, int ok) {
    Endpoint *ep = NULL;
    int rc = ep_open(err, path, EP_WRITE, &ep);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        Record r;
        rec_init(&r);
        char id[32];
        snprintf(id, sizeof id, "r%d", i);
        rec_set_id(&r, id);
        r.index = i;
        int64_t shape[1] = {i + 1};
        float x[64] = {0};
        x[0] = (float)i;
        rec_set_tensor(err, &r, "x", QIE_DT_F32, 1, shape, x, 0);
        rc = ep_write_record(err, ep, &r);
        rec_free(&r);
        if (rc) break;
    }
    if (!rc) rc = ep_finish(err, ep, ok, "test abort");
    ep_close(&ep);
    return rc;
}

static int read_all_(const char *path, int *n) {
    Endpoint *ep = NULL;
    *n = 0;
    int rc = ep_open(err, path, EP_READ, &ep);
    if (rc) return rc;
    Record r;
    rec_init(&r);
    while ((rc = ep_read_record(err, ep, &r)) == 0) {
        if (r.index != *n || ((const float *)rec_tensor(&r, "x")->data)[0] != (float)*n) { rc = -1; break; }
        (*n)++;
    }
    rec_free(&r);
    ep_close(&ep);
    return rc;
}

static void test_file_round_trip(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/a.qie", dir);
    CHECK_RC(write_n_(path, 25, 1), err);
    int n;
    CHECK(read_all_(path, &n) == QIE_EEOF && n == 25, "n=%d %s", n, err);
    /* a failed writer leaves no file at all */
    snprintf(path, sizeof path, "%s/b.qie", dir);
    CHECK(write_n_(path, 5, 0) == 0);
    CHECK(access(path, F_OK) != 0, "aborted file exists");
    /* nor does a writer closed without finishing */
    Endpoint *ep = NULL;
    CHECK_RC(ep_open(err, path, EP_WRITE, &ep), err);
    ep_close(&ep);
    CHECK(access(path, F_OK) != 0);
}

static void test_truncated(void) {
    char path[300], cut[300];
    snprintf(path, sizeof path, "%s/t.qie", dir);
    snprintf(cut, sizeof cut, "%s/t-cut.qie", dir);
    CHECK_RC(write_n_(path, 10, 1), err);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    /* cut at several places: every cut file ends in QIE_EPEER, never QIE_EEOF */
    int bad = 0;
    for (off_t len = 0; len < st.st_size; len += 97) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "head -c %lld '%s' > '%s'", (long long)len, path, cut);
        if (system(cmd)) { bad++; continue; }
        int n;
        int rc = read_all_(cut, &n);
        if (rc != QIE_EPEER) bad++;
    }
    CHECK(bad == 0, "%d cuts were not reported as a failed upstream", bad);
    /* without the END frame only */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "head -c %lld '%s' > '%s'", (long long)st.st_size - 24, path, cut);
    CHECK(system(cmd) == 0);
    int n;
    CHECK(read_all_(cut, &n) == QIE_EPEER && n == 10 && strstr(err, "end-of-stream"), "%s", err);
    /* garbage */
    FILE *f = fopen(cut, "w");
    fputs("this is not a record stream at all", f);
    fclose(f);
    CHECK(read_all_(cut, &n) == QIE_EFORMAT);
}

static void test_bad_urls(void) {
    Endpoint *ep = NULL;
    CHECK(ep_open(err, "", EP_READ, &ep) == QIE_EINVAL);
    CHECK(ep_open(err, "http://x", EP_READ, &ep) == QIE_EINVAL);
    CHECK(ep_open(err, "/nonexistent/dir/file.qie", EP_READ, &ep) == ENOENT && strstr(err, "/nonexistent"));
    CHECK(ep_open(err, "tcp://127.0.0.1:1?bogus=1", EP_READ, &ep) == QIE_EINVAL && strstr(err, "bogus"), "%s", err);
    CHECK(ep_open(err, "tcp://127.0.0.1:1?peers=0", EP_READ, &ep) == QIE_EINVAL);
    CHECK(ep == NULL);
}

int main(void) {
    test_tmpdir(dir, sizeof dir);
    TEST_RUN(test_file_round_trip);
    TEST_RUN(test_truncated);
    TEST_RUN(test_bad_urls);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) return 2;
    return TEST_DONE();
}
