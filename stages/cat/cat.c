/* cat.c: copy records between endpoints, byte for byte; optionally decode and print them. */
#include "cat.h"
#include "err.h"
#include "record.h"

int cat_run(char *err, const CatOptions *opt, Endpoint *in, Endpoint *out, uint64_t *copied) {
    int rc = 0;
    int64_t seen = 0;
    uint64_t n = 0;
    Record r;
    rec_init(&r);
    for (;;) {
        if (opt->count >= 0 && (int64_t)n >= opt->count) break;
        const void *buf;
        size_t len;
        rc = ep_read(err, in, &buf, &len);
        if (rc == QIE_EEOF) { rc = 0; break; }
        if (rc) break;
        if (seen++ < opt->skip) continue;
        if (opt->print || opt->check) {
            /* the record is validated before it travels on, so qie-cat is also a checker */
            if ((rc = rec_decode(err, &r, buf, len))) {
                qie_preferr(err, "record %lld", (long long)(seen - 1));
                break;
            }
            if (opt->print) {
                char line[1024];
                rec_summary(&r, line, sizeof line);
                fprintf(opt->print_to, "%s\n", line);
            }
        }
        if (out && (rc = ep_write(err, out, buf, len))) break;
        n++;
    }
    rec_free(&r);
    *copied = n;
    return rc;
}
