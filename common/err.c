/* err.c: qie_strerror and the error-buffer helpers. */
#include "err.h"

#include <stdio.h>
#include <string.h>

const char *qie_strerror(int rc) {
    switch (rc) {
    case QIE_OK: return "QIE_OK: success";
    case QIE_EINVAL: return "QIE_EINVAL: invalid argument";
    case QIE_EFORMAT: return "QIE_EFORMAT: malformed input";
    case QIE_EVERSION: return "QIE_EVERSION: unknown schema version";
    case QIE_EIO: return "QIE_EIO: input/output error";
    case QIE_ENOMEM: return "QIE_ENOMEM: out of memory";
    case QIE_EEOF: return "QIE_EEOF: end of stream";
    case QIE_ENOTFOUND: return "QIE_ENOTFOUND: not found";
    case QIE_EPEER: return "QIE_EPEER: a peer stage failed";
    case QIE_ELIMIT: return "QIE_ELIMIT: limit exceeded";
    case QIE_EUNSUPPORTED: return "QIE_EUNSUPPORTED: unsupported";
    case QIE_ETIMEOUT: return "QIE_ETIMEOUT: timed out";
    case QIE_EMISMATCH: return "QIE_EMISMATCH: settings mismatch";
    }
    if (rc > 0) return strerror(rc);
    return "unknown qie error code";
}

void qie_vseterr(char *err, const char *fmt, va_list ap) {
    if (!err) return;
    vsnprintf(err, QIE_ERR_LEN, fmt, ap);
}

void qie_seterr(char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    qie_vseterr(err, fmt, ap);
    va_end(ap);
}

void qie_preferr(char *err, const char *fmt, ...) {
    if (!err) return;
    char old[QIE_ERR_LEN];
    memcpy(old, err, QIE_ERR_LEN);
    old[QIE_ERR_LEN - 1] = 0;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, QIE_ERR_LEN, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= QIE_ERR_LEN - 2) return;
    /* the context goes first; the old message fills what room is left */
    err[n] = ':';
    err[n + 1] = ' ';
    size_t room = QIE_ERR_LEN - (size_t)n - 3, len = strlen(old);
    if (len > room) len = room;
    memcpy(err + n + 2, old, len);
    err[n + 2 + len] = 0;
}
