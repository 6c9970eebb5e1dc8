/* metadata.c: a validating JSON scanner over the mapped metadata file, and the per-entry parse.
 * The scanner only finds where values start and end and checks the grammar; it builds nothing,
 * so pass 1 over a large file costs a read of it and no allocation. */
#include "metadata.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

struct MetaFile {
    char *path;
    const unsigned char *b; /* mapping (or a static "" for an empty file) */
    size_t n;
    size_t arr_start;       /* offset just after the top-level '[' */
    int64_t count;
    int mapped;
};

/* ---------------------------------------------------------------------------------------------
 * scanner */

typedef struct {
    const unsigned char *b;
    size_t n, pos;
    const char *what; /* set on error; pos then points at the offending byte */
} Scan;

static int scan_fail_(Scan *s, const char *what) {
    s->what = what;
    return QIE_EFORMAT;
}

static void scan_ws_(Scan *s) {
    while (s->pos < s->n) {
        unsigned char c = s->b[s->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        s->pos++;
    }
}

static int hexval_(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* one UTF-8 sequence starting at s->pos (lead byte >= 0x80): shortest form, no surrogates,
 * at most U+10FFFF. Python's utf-8 codec refuses the same sequences. */
static int scan_utf8_(Scan *s) {
    const unsigned char *p = s->b + s->pos;
    size_t left = s->n - s->pos;
    unsigned c = p[0], need;
    unsigned cp;
    if (c >= 0xc2 && c <= 0xdf) { need = 1; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { need = 2; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { need = 3; cp = c & 0x07; }
    else return scan_fail_(s, "invalid UTF-8 byte");
    if (left <= need) return scan_fail_(s, "truncated UTF-8 sequence");
    for (unsigned i = 1; i <= need; i++) {
        if ((p[i] & 0xc0) != 0x80) return scan_fail_(s, "invalid UTF-8 sequence");
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return scan_fail_(s, "invalid UTF-8 sequence");
    s->pos += need + 1;
    return 0;
}

static int scan_string_(Scan *s) {
    s->pos++; /* opening quote */
    for (;;) {
        if (s->pos >= s->n) return scan_fail_(s, "unterminated string");
        unsigned char c = s->b[s->pos];
        if (c == '"') { s->pos++; return 0; }
        if (c < 0x20) return scan_fail_(s, "invalid control character in string");
        if (c == '\\') {
            if (s->pos + 1 >= s->n) return scan_fail_(s, "unterminated string");
            unsigned char e = s->b[s->pos + 1];
            if (e == 'u') {
                if (s->pos + 6 > s->n) return scan_fail_(s, "invalid \\uXXXX escape");
                for (int i = 2; i < 6; i++)
                    if (hexval_(s->b[s->pos + i]) < 0) return scan_fail_(s, "invalid \\uXXXX escape");
                s->pos += 6;
            } else if (strchr("\"\\/bfnrt", e) && e) {
                s->pos += 2;
            } else {
                return scan_fail_(s, "invalid escape");
            }
            continue;
        }
        if (c >= 0x80) {
            int rc = scan_utf8_(s);
            if (rc) return rc;
            continue;
        }
        s->pos++;
    }
}

static int isdigit_(unsigned char c) { return c >= '0' && c <= '9'; }

static int scan_number_(Scan *s) {
    if (s->b[s->pos] == '-') s->pos++;
    if (s->pos >= s->n || !isdigit_(s->b[s->pos])) return scan_fail_(s, "expecting value");
    if (s->b[s->pos] == '0') s->pos++;
    else while (s->pos < s->n && isdigit_(s->b[s->pos])) s->pos++;
    if (s->pos < s->n && s->b[s->pos] == '.') {
        s->pos++;
        if (s->pos >= s->n || !isdigit_(s->b[s->pos])) return scan_fail_(s, "expecting digits after '.'");
        while (s->pos < s->n && isdigit_(s->b[s->pos])) s->pos++;
    }
    if (s->pos < s->n && (s->b[s->pos] == 'e' || s->b[s->pos] == 'E')) {
        s->pos++;
        if (s->pos < s->n && (s->b[s->pos] == '+' || s->b[s->pos] == '-')) s->pos++;
        if (s->pos >= s->n || !isdigit_(s->b[s->pos])) return scan_fail_(s, "expecting exponent digits");
        while (s->pos < s->n && isdigit_(s->b[s->pos])) s->pos++;
    }
    return 0;
}

static int scan_value_(Scan *s, int depth);

static int scan_container_(Scan *s, int depth, int is_obj) {
    unsigned char close = is_obj ? '}' : ']';
    if (depth >= META_MAX_DEPTH) return scan_fail_(s, "nesting too deep");
    s->pos++;
    scan_ws_(s);
    if (s->pos < s->n && s->b[s->pos] == close) { s->pos++; return 0; }
    for (;;) {
        int rc;
        if (is_obj) {
            if (s->pos >= s->n || s->b[s->pos] != '"')
                return scan_fail_(s, "expecting property name enclosed in double quotes");
            if ((rc = scan_string_(s))) return rc;
            scan_ws_(s);
            if (s->pos >= s->n || s->b[s->pos] != ':') return scan_fail_(s, "expecting ':' delimiter");
            s->pos++;
            scan_ws_(s);
        }
        if ((rc = scan_value_(s, depth + 1))) return rc;
        scan_ws_(s);
        if (s->pos >= s->n) return scan_fail_(s, is_obj ? "expecting ',' or '}'" : "expecting ',' or ']'");
        unsigned char c = s->b[s->pos];
        if (c == close) { s->pos++; return 0; }
        if (c != ',') return scan_fail_(s, is_obj ? "expecting ',' delimiter" : "expecting ',' delimiter");
        s->pos++;
        scan_ws_(s);
    }
}

static int scan_literal_(Scan *s, const char *lit) {
    size_t l = strlen(lit);
    if (s->n - s->pos < l || memcmp(s->b + s->pos, lit, l)) return scan_fail_(s, "expecting value");
    s->pos += l;
    return 0;
}

static int scan_value_(Scan *s, int depth) {
    if (s->pos >= s->n) return scan_fail_(s, "expecting value");
    unsigned char c = s->b[s->pos];
    switch (c) {
    case '{': return scan_container_(s, depth, 1);
    case '[': return scan_container_(s, depth, 0);
    case '"': return scan_string_(s);
    case 't': return scan_literal_(s, "true");
    case 'f': return scan_literal_(s, "false");
    case 'n': return scan_literal_(s, "null");
    default:
        if (c == '-' || isdigit_(c)) return scan_number_(s);
        return scan_fail_(s, "expecting value");
    }
}

/* line and column (1-based, in characters as Python counts them) of byte offset pos */
static void line_col_(const unsigned char *b, size_t pos, long *line, long *col) {
    long l = 1, c = 1;
    for (size_t i = 0; i < pos; i++) {
        if (b[i] == '\n') { l++; c = 1; }
        else if ((b[i] & 0xc0) != 0x80) c++;
    }
    *line = l;
    *col = c;
}

/* ---------------------------------------------------------------------------------------------
 * file */

int meta_open(char *err, const char *path, MetaFile **out) {
    int rc = 0, fd = -1;
    MetaFile *m = calloc(1, sizeof *m);
    if (!m) { qie_seterr(err, "meta_open %s: out of memory", path); return QIE_ENOMEM; }
    m->path = strdup(path);
    if (!m->path) { rc = QIE_ENOMEM; qie_seterr(err, "meta_open %s: out of memory", path); goto fail; }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { rc = errno; qie_seterr(err, "open %s: %s", path, strerror(rc)); goto fail; }
    struct stat st;
    if (fstat(fd, &st)) { rc = errno; qie_seterr(err, "stat %s: %s", path, strerror(rc)); goto fail; }
    if (!S_ISREG(st.st_mode)) {
        rc = QIE_EINVAL;
        qie_seterr(err, "%s: not a regular file (the metadata is mapped, not streamed)", path);
        goto fail;
    }
    m->n = (size_t)st.st_size;
    if (m->n) {
        void *p = mmap(NULL, m->n, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) { rc = errno; qie_seterr(err, "mmap %s: %s", path, strerror(rc)); goto fail; }
        m->b = p;
        m->mapped = 1;
        /* pass 1 reads front to back once; tell the kernel so it reads ahead */
        (void)madvise(p, m->n, MADV_SEQUENTIAL);
    } else {
        m->b = (const unsigned char *)"";
    }
    close(fd);
    fd = -1;

    Scan s = {m->b, m->n, 0, NULL};
    if (s.n >= 3 && !memcmp(s.b, "\xef\xbb\xbf", 3)) s.pos = 3; /* UTF-8 BOM */
    scan_ws_(&s);
    if (s.pos >= s.n) { rc = scan_fail_(&s, "expecting value"); goto bad; }
    if (s.b[s.pos] != '[') {
        /* check that it is JSON at all, to tell "not JSON" from "not a list" */
        size_t at = s.pos;
        if ((rc = scan_value_(&s, 0))) goto bad;
        s.pos = at;
        rc = scan_fail_(&s, "the top level must be a list of entries");
        goto bad;
    }
    s.pos++;
    m->arr_start = s.pos;
    scan_ws_(&s);
    if (s.pos < s.n && s.b[s.pos] == ']') {
        s.pos++;
    } else {
        for (;;) {
            if ((rc = scan_value_(&s, 1))) goto bad;
            m->count++;
            scan_ws_(&s);
            if (s.pos >= s.n) { rc = scan_fail_(&s, "expecting ',' or ']'"); goto bad; }
            if (s.b[s.pos] == ']') { s.pos++; break; }
            if (s.b[s.pos] != ',') { rc = scan_fail_(&s, "expecting ',' delimiter"); goto bad; }
            s.pos++;
            scan_ws_(&s);
        }
    }
    scan_ws_(&s);
    if (s.pos < s.n) { rc = scan_fail_(&s, "extra data after the top-level list"); goto bad; }
    if (m->mapped) (void)madvise((void *)m->b, m->n, MADV_NORMAL);
    *out = m;
    return 0;
bad: {
        long line, col;
        line_col_(s.b, s.pos, &line, &col);
        qie_seterr(err, "%s: line %ld column %ld (char %zu): %s", path, line, col, s.pos, s.what);
        rc = QIE_EFORMAT;
    }
fail:
    if (fd >= 0) close(fd);
    meta_close(&m);
    return rc;
}

void meta_close(MetaFile **mp) {
    if (!mp || !*mp) return;
    MetaFile *m = *mp;
    if (m->mapped) munmap((void *)m->b, m->n);
    free(m->path);
    free(m);
    *mp = NULL;
}

int64_t meta_count(const MetaFile *m) { return m->count; }

int meta_next(char *err, const MetaFile *m, MetaCursor *c, const char **json, size_t *len,
              int64_t *index) {
    Scan s = {m->b, m->n, c->off ? c->off : m->arr_start, NULL};
    scan_ws_(&s);
    if (s.pos < s.n && s.b[s.pos] == ',') { s.pos++; scan_ws_(&s); }
    if (s.pos >= s.n || s.b[s.pos] == ']') { c->off = s.pos; return QIE_EEOF; }
    size_t start = s.pos;
    /* meta_open validated the file, so this only finds the end; an error means the file
     * changed under the mapping */
    if (scan_value_(&s, 1)) {
        qie_seterr(err, "%s: entry %lld changed since it was validated", m->path, (long long)c->index);
        return QIE_EFORMAT;
    }
    *json = (const char *)m->b + start;
    *len = s.pos - start;
    *index = c->index++;
    c->off = s.pos;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * entries */

char *meta_path_join(const char *root, const char *p) {
    if (!root || !*root || p[0] == '/') return strdup(p);
    size_t lr = strlen(root), lp = strlen(p);
    int slash = root[lr - 1] != '/';
    char *s = malloc(lr + (size_t)slash + lp + 1);
    if (!s) return NULL;
    memcpy(s, root, lr);
    if (slash) s[lr] = '/';
    memcpy(s + lr + slash, p, lp + 1);
    return s;
}

/* Python's json keeps the last of duplicated keys; cJSON's lookup returns the first and
 * ignores case, so walk the children ourselves. */
static const cJSON *get_last_(const cJSON *o, const char *key) {
    const cJSON *hit = NULL, *c;
    cJSON_ArrayForEach(c, o)
        if (c->string && !strcmp(c->string, key)) hit = c;
    return hit;
}

static int add_source_(MetaEntry *e, const char *raw, const char *root) {
    char **r = realloc(e->sources_raw, (size_t)(e->nsources + 1) * sizeof *r);
    if (!r) return QIE_ENOMEM;
    e->sources_raw = r;
    char **q = realloc(e->sources, (size_t)(e->nsources + 1) * sizeof *q);
    if (!q) return QIE_ENOMEM;
    e->sources = q;
    e->sources_raw[e->nsources] = strdup(raw);
    e->sources[e->nsources] = meta_path_join(root, raw);
    e->nsources++; /* counted before the check so meta_entry_free releases a half pair */
    if (!e->sources_raw[e->nsources - 1] || !e->sources[e->nsources - 1]) return QIE_ENOMEM;
    return 0;
}

int meta_entry_parse(char *err, const char *json, size_t len, const char *root, MetaEntry *e) {
    memset(e, 0, sizeof *e);
    int rc = QIE_EFORMAT;
    cJSON *o = cJSON_ParseWithLength(json, len);
    if (!o) {
        /* pass 1 accepted it: cJSON's own limits (nesting 1000, lone \\u surrogates) */
        qie_seterr(err, "entry not parseable by cJSON");
        return QIE_EFORMAT;
    }
    if (!cJSON_IsObject(o)) { qie_seterr(err, "entry is not a JSON object"); goto out; }

    const cJSON *fp = get_last_(o, "file_path");
    if (!fp || cJSON_IsNull(fp)) { qie_seterr(err, "missing file_path"); goto out; }
    if (!cJSON_IsString(fp)) { qie_seterr(err, "file_path is not a string"); goto out; }
    if (!*fp->valuestring) { qie_seterr(err, "file_path is empty"); goto out; }
    e->file_path_raw = strdup(fp->valuestring);
    e->file_path = meta_path_join(root, fp->valuestring);
    if (!e->file_path_raw || !e->file_path) goto nomem;

    const cJSON *ty = get_last_(o, "type");
    if (ty) {
        if (!cJSON_IsString(ty)) { qie_seterr(err, "type is not a string"); goto out; }
        if (!strcmp(ty->valuestring, "video")) {
            qie_seterr(err, "video entry: the edit trainer trains on images only");
            goto out;
        }
        if (strcmp(ty->valuestring, "image")) {
            qie_seterr(err, "type \"%.64s\" is not \"image\"", ty->valuestring);
            goto out;
        }
    }

    const cJSON *tx = get_last_(o, "text");
    if (!tx || cJSON_IsNull(tx)) { qie_seterr(err, "missing text"); goto out; }
    if (!cJSON_IsString(tx)) { qie_seterr(err, "text is not a string"); goto out; }
    e->text = strdup(tx->valuestring);
    if (!e->text) goto nomem;

    /* source_file_path: a list of strings, a bare string, or absent (= []) */
    const cJSON *sp = get_last_(o, "source_file_path");
    if (sp && !cJSON_IsNull(sp)) {
        if (cJSON_IsString(sp)) {
            if (!*sp->valuestring) { qie_seterr(err, "source_file_path is empty"); goto out; }
            if (add_source_(e, sp->valuestring, root)) goto nomem;
        } else if (cJSON_IsArray(sp)) {
            const cJSON *c;
            int k = 0;
            cJSON_ArrayForEach(c, sp) {
                if (!cJSON_IsString(c)) {
                    qie_seterr(err, "source_file_path[%d] is not a string", k);
                    goto out;
                }
                if (!*c->valuestring) { qie_seterr(err, "source_file_path[%d] is empty", k); goto out; }
                if (k >= META_MAX_SOURCES) {
                    qie_seterr(err, "more than %d sources", META_MAX_SOURCES);
                    goto out;
                }
                if (add_source_(e, c->valuestring, root)) goto nomem;
                k++;
            }
        } else {
            qie_seterr(err, "source_file_path is neither a string nor a list of strings");
            goto out;
        }
    }
    rc = 0;
    goto out;
nomem:
    qie_seterr(err, "out of memory");
    rc = QIE_ENOMEM;
out:
    cJSON_Delete(o);
    return rc;
}

void meta_entry_free(MetaEntry *e) {
    if (!e) return;
    free(e->file_path_raw);
    free(e->file_path);
    free(e->text);
    for (int i = 0; i < e->nsources; i++) {
        free(e->sources_raw ? e->sources_raw[i] : NULL);
        free(e->sources ? e->sources[i] : NULL);
    }
    free(e->sources_raw);
    free(e->sources);
    memset(e, 0, sizeof *e);
}
