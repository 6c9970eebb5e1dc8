/* fsutil.c: see fsutil.h. */
#include "fsutil.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
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
