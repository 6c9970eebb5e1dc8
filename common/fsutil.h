/* fsutil.h: the filesystem steps that crash-safe writers share. */
#ifndef QIE_COMMON_FSUTIL_H
#define QIE_COMMON_FSUTIL_H

#ifdef __cplusplus
extern "C" {
#endif

/* mkdir -p. 0 or errno (err names the component that failed). */
int fs_mkdirs(char *err, const char *path);

/* fsync of a directory, so that a rename or create inside it survives a crash. 0 or errno. */
int fs_sync_dir(char *err, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
