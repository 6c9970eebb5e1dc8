/* err.h: qie's error codes and the one-line error buffer every library call fills.
 *
 * Convention (LMDB/anet style): a function returns int: 0 on success, a negative QIE_E* code,
 * or a positive errno. Where a function can fail it takes `char *err` (QIE_ERR_LEN bytes) first
 * and writes one line naming the call and the object. Libraries never exit(); only main does. */
#ifndef QIE_COMMON_ERR_H
#define QIE_COMMON_ERR_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QIE_ERR_LEN 512

enum {
    QIE_OK = 0,
    QIE_EINVAL = -1000,   /* bad argument or option */
    QIE_EFORMAT = -1001,  /* malformed input: a record, a file header, JSON */
    QIE_EVERSION = -1002, /* a record or file of a schema version we do not know */
    QIE_EIO = -1003,      /* read/write failure (errno was lost or does not apply) */
    QIE_ENOMEM = -1004,
    QIE_EEOF = -1005,     /* clean end of stream */
    QIE_ENOTFOUND = -1006,
    QIE_EPEER = -1007,    /* an upstream or downstream stage failed or vanished */
    QIE_ELIMIT = -1008,   /* a configured limit was exceeded (sizes, pixel counts) */
    QIE_EUNSUPPORTED = -1009,
    QIE_ETIMEOUT = -1010,
    QIE_EMISMATCH = -1011, /* settings or shapes disagree with what is stored */
};

/* Name and sentence for a code; positive codes go through strerror. Never NULL. */
const char *qie_strerror(int rc);

/* Write a formatted line into err (may be NULL: then nothing is written). Returns void so it
 * can be used as a statement before `return rc` or `goto fail`. */
void qie_seterr(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void qie_vseterr(char *err, const char *fmt, va_list ap);

/* Prefix an existing message: "ctx: <old message>". Keeps context as an error travels up. */
void qie_preferr(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif
