/* fsutil.h: the filesystem steps that crash-safe writers share. */
#ifndef QIE_COMMON_FSUTIL_H
#define QIE_COMMON_FSUTIL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* mkdir -p. 0 or errno (err names the component that failed). */
int fs_mkdirs(char *err, const char *path);

/* Reads a whole file (at most max_bytes) into a new NUL-terminated buffer (*out, caller frees;
 * *len may be NULL). 0, errno, QIE_EFORMAT (not a regular file, or larger than max_bytes) or
 * QIE_ENOMEM; err names the file. */
int fs_read_file(char *err, const char *path, size_t max_bytes, char **out, size_t *len);

/* fsync of a directory, so that a rename or create inside it survives a crash. 0 or errno. */
int fs_sync_dir(char *err, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
