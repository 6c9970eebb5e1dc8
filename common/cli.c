/* cli.c: see cli.h. */
#include "cli.h"
#include "err.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int name_eq_(const char *a, const char *b, size_t blen) {
    size_t i = 0;
    for (; a[i] && i < blen; i++) {
        char x = a[i] == '-' ? '_' : a[i], y = b[i] == '-' ? '_' : b[i];
        if (x != y) return 0;
    }
    return !a[i] && i == blen;
}

static const CliOpt *find_(const CliSpec *spec, const char *name, size_t len) {
    for (int i = 0; i < spec->nopts; i++)
        if (name_eq_(spec->opts[i].name, name, len)) return &spec->opts[i];
    return NULL;
}

static int parse_bool_(const char *v, int *out) {
    if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes")) { *out = 1; return 0; }
    if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no")) { *out = 0; return 0; }
    return -1;
}

static int set_value_(char *err, const CliOpt *o, const char *v) {
    char *end = NULL;
    switch (o->type) {
    case CLI_BOOL:
        if (parse_bool_(v, (int *)o->dst)) {
            qie_seterr(err, "--%s: '%s' is not a boolean (true/false/1/0)", o->name, v);
            return QIE_EINVAL;
        }
        return 0;
    case CLI_INT: {
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end) {
            /* accept integral floats such as "1e3" or "100.0": scripts write them */
            double d = strtod(v, &end);
            if (end == v || *end || d != floor(d) || fabs(d) > 9e18) {
                qie_seterr(err, "--%s: '%s' is not an integer", o->name, v);
                return QIE_EINVAL;
            }
            x = (long long)d;
        }
        if (o->min < o->max && (x < o->min || x > o->max)) {
            qie_seterr(err, "--%s: %lld is outside [%.0f, %.0f]", o->name, x, o->min, o->max);
            return QIE_EINVAL;
        }
        *(int64_t *)o->dst = x;
        return 0;
    }
    case CLI_FLOAT: {
        errno = 0;
        double x = strtod(v, &end);
        if (errno || end == v || *end || isnan(x)) {
            qie_seterr(err, "--%s: '%s' is not a number", o->name, v);
            return QIE_EINVAL;
        }
        if (o->min < o->max && (x < o->min || x > o->max)) {
            qie_seterr(err, "--%s: %g is outside [%g, %g]", o->name, x, o->min, o->max);
            return QIE_EINVAL;
        }
        *(double *)o->dst = x;
        return 0;
    }
    case CLI_STR:
        *(const char **)o->dst = v;
        return 0;
    case CLI_LOG_LEVEL:
        if (log_parse_level(v, (LogLevel *)o->dst)) {
            qie_seterr(err, "--%s: '%s' is not debug|info|warn|error|quiet", o->name, v);
            return QIE_EINVAL;
        }
        log_set_level(*(LogLevel *)o->dst);
        return 0;
    case CLI_STRS: {
        CliStrs *s = o->dst;
        if (s->n >= (int)(sizeof s->v / sizeof *s->v)) {
            qie_seterr(err, "--%s: too many values", o->name);
            return QIE_EINVAL;
        }
        s->v[s->n++] = v;
        return 0;
    }
    default:
        return 0;
    }
}

static int is_flag_token_(const char *s) { return s[0] == '-' && s[1] == '-' && s[2]; }

int cli_parse(char *err, const CliSpec *spec, int argc, char **argv, const char **pos, int *npos) {
    int rc;
    if (npos) *npos = 0;
    for (int i = 0; i < spec->nopts; i++) {
        const CliOpt *o = &spec->opts[i];
        if (o->type == CLI_STRS && o->dst) ((CliStrs *)o->dst)->n = 0;
        if (o->def && o->dst && o->type != CLI_STRS && (rc = set_value_(err, o, o->def))) {
            qie_preferr(err, "default of --%s (bug in %s's option table)", o->name, spec->prog);
            return rc;
        }
    }
    int strs_defaulted[256] = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cli_usage(spec);
            return 1;
        }
        if (!is_flag_token_(a)) {
            if (strcmp(a, "-") && a[0] == '-' && a[1]) {
                qie_seterr(err, "%s: unknown option '%s' (options are spelled --name)", spec->prog, a);
                return QIE_EINVAL;
            }
            if (!pos || !npos || *npos >= spec->npositional_max) {
                qie_seterr(err, "%s: unexpected argument '%s'", spec->prog, a);
                return QIE_EINVAL;
            }
            pos[(*npos)++] = a;
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const CliOpt *o = find_(spec, name, nlen);
        if (!o) {
            qie_seterr(err, "%s: unknown option '--%.*s'\nhint: %s --help lists every option", spec->prog, (int)nlen, name, spec->prog);
            return QIE_EINVAL;
        }
        const char *val = eq ? eq + 1 : NULL;
        switch (o->type) {
        case CLI_BOOL:
            if ((rc = set_value_(err, o, val ? val : "true"))) return rc;
            break;
        case CLI_IGNORED_FLAG:
            log_warn("--%s is accepted for compatibility and ignored by %s", o->name, spec->prog);
            break;
        case CLI_IGNORED:
            if (!val && i + 1 < argc && !is_flag_token_(argv[i + 1])) i++;
            log_warn("--%s is accepted for compatibility and ignored by %s", o->name, spec->prog);
            break;
        case CLI_STRS: {
            int oi = (int)(o - spec->opts);
            if (oi < 256 && !strs_defaulted[oi]) strs_defaulted[oi] = 1;
            if (val) {
                if ((rc = set_value_(err, o, val))) return rc;
                break;
            }
            int took = 0;
            while (i + 1 < argc && !is_flag_token_(argv[i + 1])) {
                if ((rc = set_value_(err, o, argv[++i]))) return rc;
                took++;
            }
            if (!took) {
                qie_seterr(err, "--%s needs at least one value", o->name);
                return QIE_EINVAL;
            }
            break;
        }
        default:
            if (!val) {
                if (i + 1 >= argc) {
                    qie_seterr(err, "--%s needs a value", o->name);
                    return QIE_EINVAL;
                }
                val = argv[++i];
            }
            if ((rc = set_value_(err, o, val))) return rc;
        }
    }
    /* a CLI_STRS default applies only when the flag was never given */
    for (int i = 0; i < spec->nopts && i < 256; i++) {
        const CliOpt *o = &spec->opts[i];
        if (o->type == CLI_STRS && o->def && o->dst && !strs_defaulted[i] && (rc = set_value_(err, o, o->def))) return rc;
    }
    return 0;
}

static const char *type_hint_(CliType t) {
    switch (t) {
    case CLI_INT: return " N";
    case CLI_FLOAT: return " X";
    case CLI_STR: case CLI_LOG_LEVEL: return " S";
    case CLI_STRS: return " S...";
    case CLI_IGNORED: return " [S]";
    default: return "";
    }
}

void cli_usage(const CliSpec *spec) {
    printf("usage: %s %s\n", spec->prog, spec->usage ? spec->usage : "[options]");
    if (spec->about) printf("\n%s\n", spec->about);
    printf("\noptions:\n");
    for (int i = 0; i < spec->nopts; i++) {
        const CliOpt *o = &spec->opts[i];
        char left[96];
        snprintf(left, sizeof left, "--%s%s", o->name, type_hint_(o->type));
        if (o->type == CLI_IGNORED || o->type == CLI_IGNORED_FLAG)
            printf("  %-34s accepted for compatibility, ignored%s%s\n", left, o->help ? ": " : "", o->help ? o->help : "");
        else
            printf("  %-34s %s%s%s%s\n", left, o->help ? o->help : "", o->def ? " (default: " : "", o->def ? o->def : "",
                   o->def ? ")" : "");
    }
    printf("  %-34s %s\n", "--help", "show this help and exit");
}

void cli_dump(const CliSpec *spec) {
    if (log_level_ > LOG_INFO) return;
    log_info("%s settings:", spec->prog);
    for (int i = 0; i < spec->nopts; i++) {
        const CliOpt *o = &spec->opts[i];
        if (!o->dst) continue;
        switch (o->type) {
        case CLI_BOOL: log_info("  --%s = %s", o->name, *(int *)o->dst ? "true" : "false"); break;
        case CLI_INT: log_info("  --%s = %" PRId64, o->name, *(int64_t *)o->dst); break;
        case CLI_FLOAT: log_info("  --%s = %g", o->name, *(double *)o->dst); break;
        case CLI_STR: log_info("  --%s = %s", o->name, *(const char **)o->dst ? *(const char **)o->dst : "(none)"); break;
        case CLI_LOG_LEVEL: {
            static const char *names[] = {"debug", "info", "warn", "error", "quiet"};
            log_info("  --%s = %s", o->name, names[*(LogLevel *)o->dst]);
            break;
        }
        case CLI_STRS: {
            const CliStrs *s = o->dst;
            char line[512] = "";
            size_t n = 0;
            for (int k = 0; k < s->n && n < sizeof line; k++) {
                int w = snprintf(line + n, sizeof line - n, "%s%s", k ? " " : "", s->v[k]);
                if (w > 0) n += (size_t)w;
            }
            log_info("  --%s = %s", o->name, s->n ? line : "(none)");
            break;
        }
        default: break;
        }
    }
}

int cli_parse_size(const char *s, uint64_t *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0 || isnan(v)) return QIE_EINVAL;
    while (*end == ' ') end++;
    static const struct { const char *u; double m; } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
        {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0},
        {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
    };
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (!strcasecmp(end, units[i].u)) {
            double b = v * units[i].m;
            if (b > 1.8e19) return QIE_EINVAL;
            *out = (uint64_t)b;
            return 0;
        }
    return QIE_EINVAL;
}
