/* fsutil.c: see fsutil.h. */
#include "fsutil.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fs_mkdirs(char *err, const char *path) {
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) {
        qie_seterr(err, "%s: path too long", path);
        return ENAMETOOLONG;
    }
    for (char *s = p + 1;; s++) {
        if (*s == '/' || !*s) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0777) && errno != EEXIST) {
                int e = errno;
                qie_seterr(err, "mkdir %s: %s", p, strerror(e));
                return e;
            }
            *s = c;
            if (!c) break;
        }
    }
    return 0;
}

int fs_sync_dir(char *err, const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        qie_seterr(err, "open %s: %s", dir, strerror(e));
        return e;
    }
    int e = fsync(fd) ? errno : 0;
    if (close(fd) && !e) e = errno;
    if (e) qie_seterr(err, "fsync %s: %s", dir, strerror(e));
    return e;
}

int fs_read_file(char *err, const char *path, size_t max_bytes, char **out, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        qie_seterr(err, "open %s: %s", path, strerror(e));
        return e;
    }
    struct stat sb;
    if (fstat(fd, &sb)) {
        int e = errno;
        qie_seterr(err, "fstat %s: %s", path, strerror(e));
        close(fd);
        return e;
    }
    if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > max_bytes) {
        qie_seterr(err, "%s: not a regular file of at most %zu bytes", path, max_bytes);
        close(fd);
        return QIE_EFORMAT;
    }
    size_t n = (size_t)sb.st_size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        qie_seterr(err, "%s: out of memory", path);
        return QIE_ENOMEM;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : QIE_EIO;
            qie_seterr(err, "read %s: %s", path, r < 0 ? strerror(e) : "file shrank while reading");
            free(buf);
            close(fd);
            return e;
        }
        got += (size_t)r;
    }
    buf[n] = 0;
    if (close(fd)) {
        int e = errno;
        qie_seterr(err, "close %s: %s", path, strerror(e));
        free(buf);
        return e;
    }
    *out = buf;
    if (len) *len = n;
    return 0;
}
