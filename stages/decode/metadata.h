/* metadata.h: the VideoX-Fun metadata JSON (trainer_behaviour.md §1), read without loading it.
 *
 * The file is one top-level array of entry objects. meta_open maps it and runs one cheap pass
 * that checks the whole JSON syntax (RFC 8259, UTF-8) and counts the entries, so bad JSON is
 * reported with line and column before anything is emitted. Entries are then handed out one at
 * a time as byte ranges (meta_next) and parsed by cJSON individually (meta_entry_parse), so a
 * million-entry file costs the page cache, not the heap.
 *
 * What is and is not an error:
 *   whole file (meta_open fails, nothing emitted): not JSON, not UTF-8, top level not an array,
 *     trailing garbage, nesting deeper than META_MAX_DEPTH. NaN/Infinity, which Python's json
 *     accepts, are rejected here (RFC JSON). A UTF-8 byte-order mark is skipped.
 *   one entry (meta_entry_parse fails, the entry is rejected, the run goes on): not an object,
 *     missing or non-string file_path/text, type other than "image", source_file_path neither a
 *     string nor a list of strings. Keys are case-sensitive; a duplicated key takes its last
 *     value, as Python's json does. */
#ifndef QIE_STAGES_DECODE_METADATA_H
#define QIE_STAGES_DECODE_METADATA_H

#include <stddef.h>
#include <stdint.h>

#define META_MAX_DEPTH 512
#define META_MAX_SOURCES 64

typedef struct MetaFile MetaFile;

/* Position of the next entry; start from META_CURSOR_INIT. */
typedef struct {
    size_t off;
    int64_t index;
} MetaCursor;
#define META_CURSOR_INIT {0, 0}

/* One parsed entry; every string is owned (meta_entry_free). Paths are resolved against the
 * data root with os.path.join rules (meta_path_join); *_raw keep the metadata spelling. */
typedef struct {
    char *file_path_raw;
    char *file_path;      /* resolved */
    char *text;
    int nsources;
    char **sources_raw;
    char **sources;       /* resolved */
} MetaEntry;

/* Maps and validates path. *out must be NULL; free with meta_close. Errors: positive errno
 * (open/mmap), QIE_EFORMAT with "PATH: line L column C: what" in err. */
int meta_open(char *err, const char *path, MetaFile **out);
void meta_close(MetaFile **m);

/* Number of top-level entries (known after meta_open). */
int64_t meta_count(const MetaFile *m);

/* Next entry's bytes (borrowed from the mapping, valid until meta_close) and its index.
 * Returns 0, or QIE_EEOF after the last entry. Not thread-safe: callers share a cursor under
 * a lock; the parse itself (meta_entry_parse) can then run unlocked. */
int meta_next(char *err, const MetaFile *m, MetaCursor *c, const char **json, size_t *len,
              int64_t *index);

/* Parses one entry object. data_root NULL means --train_data_dir was not given (paths used as
 * written); "" and any other string are joined with os.path.join. Returns 0, QIE_EFORMAT with
 * the reason for the reject in err (one short sentence, no index), or QIE_ENOMEM. On error
 * `out` holds whatever was parsed so far (file_path may be set, for the reject report); call
 * meta_entry_free either way. */
int meta_entry_parse(char *err, const char *json, size_t len, const char *data_root, MetaEntry *out);
void meta_entry_free(MetaEntry *e);

/* os.path.join(root, p) for one component: p absolute -> p; root empty -> p; root ending in
 * '/' -> root + p; else root + '/' + p. Returns a malloc'd string (NULL on ENOMEM). */
char *meta_path_join(const char *root, const char *p);

#endif
