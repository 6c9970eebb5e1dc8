/* init_tokenizer.c: a small byte-level BPE in Qwen2Tokenizer's file format, for qie-init.
 *
 * Vocabulary: the 256 byte tokens, spelled with GPT-2's byte-to-unicode map and numbered in the
 * order of that map's table (printable bytes first), as Qwen2's vocab.json numbers them ("!" is 0);
 * then a few merges of frequent English pairs; then Qwen2.5's 22 added tokens (<|endoftext|> ..
 * <|file_sep|>, the first 14 special) from `added_base`. Every byte has a token, so any UTF-8 text
 * encodes; the added tokens make the chat templates and <|image_pad|> expansion real. What the
 * C tokenizer (common/tokenizer.c) and transformers' Qwen2Tokenizer both read: vocab.json,
 * merges.txt ("#version: 0.2" header), tokenizer_config.json (added_tokens_decoder),
 * special_tokens_map.json, added_tokens.json. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "init_model.h"

#define SP "\xc4\xa0" /* 'Ġ': the byte-level spelling of a space */

/* merge rank order; each part is a byte or an earlier merge's result, each result is new */
static const char *const merges_[][2] = {
    {SP, "t"}, {"h", "e"}, {"i", "n"}, {"e", "r"}, {"a", "n"}, {SP, "a"}, {"o", "n"}, {SP "t", "he"},
    {"r", "e"}, {SP, "s"}, {"e", "n"}, {"a", "t"}, {"o", "r"}, {SP, "c"}, {"e", "s"}, {SP, "w"},
    {"i", "s"}, {SP, "b"}, {"i", "t"}, {SP, "o"}, {"e", "d"}, {"in", "g"}, {SP, "p"}, {SP, "m"},
    {"a", "r"}, {SP, "f"}, {SP, "d"}, {"a", "l"}, {"o", "u"}, {SP, "r"}, {"l", "e"}, {SP, "i"},
    {SP, "h"}, {"i", "c"}, {SP, "l"}, {SP, "e"}, {"a", "s"}, {SP, "g"}, {SP "t", "o"}, {SP "a", "n"},
    {SP "an", "d"}, {SP, "n"},
};
#define NMERGES ((int)(sizeof merges_ / sizeof *merges_))

/* the released Qwen2.5 added tokens in id order; the first 14 are special */
static const char *const added_[] = {
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>"};
#define NADDED ((int)(sizeof added_ / sizeof *added_))
#define NSPECIAL 14

int init_tokenizer_base_size(void) { return 256 + NMERGES; }

/* GPT-2 bytes_to_unicode: byte order[i] is spelled by code point cp[i] */
static void byte_table_(int order[256], int cp[256]) {
    int n = 0, is[256] = {0};
    for (int b = '!'; b <= '~'; b++) is[b] = 1;
    for (int b = 0xa1; b <= 0xac; b++) is[b] = 1;
    for (int b = 0xae; b <= 0xff; b++) is[b] = 1;
    for (int b = 0; b < 256; b++)
        if (is[b]) { order[n] = b; cp[n] = b; n++; }
    int extra = 0;
    for (int b = 0; b < 256; b++)
        if (!is[b]) { order[n] = b; cp[n] = 256 + extra++; n++; }
}

/* one code point < 0x800 as UTF-8, JSON-escaped where needed */
static void put_cp_json_(FILE *f, int c) {
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x80) fputc(c, f);
    else fprintf(f, "%c%c", 0xc0 | (c >> 6), 0x80 | (c & 0x3f));
}

static void put_str_json_(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static int close_(char *err, FILE *f, const char *path) {
    int bad = ferror(f);
    if (fclose(f) || bad) {
        qie_seterr(err, "write %s failed", path);
        return QIE_EIO;
    }
    return 0;
}

static FILE *open_(char *err, const char *dir, const char *name, char *path, size_t cap, int *rc) {
    snprintf(path, cap, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        *rc = errno;
        qie_seterr(err, "open %s: %s", path, strerror(errno));
    }
    return f;
}

int init_tokenizer_write(char *err, const char *dir, int added_base, int *nids) {
    char path[4200];
    int rc = 0, order[256], cp[256];
    if (added_base < 256 + NMERGES) {
        qie_seterr(err, "tokenizer: added tokens from id %d would overlap the %d-id vocabulary", added_base, 256 + NMERGES);
        return QIE_EINVAL;
    }
    byte_table_(order, cp);
    FILE *f = open_(err, dir, "vocab.json", path, sizeof path, &rc);
    if (!f) return rc;
    fputc('{', f);
    for (int i = 0; i < 256; i++) {
        fputs(i ? ",\"" : "\"", f);
        put_cp_json_(f, cp[i]);
        fprintf(f, "\":%d", i);
    }
    for (int m = 0; m < NMERGES; m++) {
        fputs(",", f);
        char tok[64];
        snprintf(tok, sizeof tok, "%s%s", merges_[m][0], merges_[m][1]);
        put_str_json_(f, tok);
        fprintf(f, ":%d", 256 + m);
    }
    fputs("}\n", f);
    if ((rc = close_(err, f, path))) return rc;

    if (!(f = open_(err, dir, "merges.txt", path, sizeof path, &rc))) return rc;
    fputs("#version: 0.2\n", f);
    for (int m = 0; m < NMERGES; m++) fprintf(f, "%s %s\n", merges_[m][0], merges_[m][1]);
    if ((rc = close_(err, f, path))) return rc;

    if (!(f = open_(err, dir, "added_tokens.json", path, sizeof path, &rc))) return rc;
    fputs("{\n", f);
    for (int i = 0; i < NADDED; i++) fprintf(f, "  \"%s\": %d%s\n", added_[i], added_base + i, i + 1 < NADDED ? "," : "");
    fputs("}\n", f);
    if ((rc = close_(err, f, path))) return rc;

    /* what transformers' Qwen2Tokenizer.save_pretrained writes for Qwen2.5-VL */
    if (!(f = open_(err, dir, "tokenizer_config.json", path, sizeof path, &rc))) return rc;
    fputs("{\n  \"add_bos_token\": false,\n  \"add_prefix_space\": false,\n  \"added_tokens_decoder\": {\n", f);
    for (int i = 0; i < NADDED; i++)
        fprintf(f,
                "    \"%d\": {\n      \"content\": \"%s\",\n      \"lstrip\": false,\n      \"normalized\": false,\n"
                "      \"rstrip\": false,\n      \"single_word\": false,\n      \"special\": %s\n    }%s\n",
                added_base + i, added_[i], i < NSPECIAL ? "true" : "false", i + 1 < NADDED ? "," : "");
    fputs("  },\n  \"additional_special_tokens\": [", f);
    for (int i = 1; i < NSPECIAL; i++) fprintf(f, "%s\"%s\"", i > 1 ? ", " : "", added_[i]);
    fputs("],\n  \"bos_token\": null,\n  \"clean_up_tokenization_spaces\": false,\n  \"eos_token\": \"<|im_end|>\",\n"
          "  \"errors\": \"replace\",\n  \"model_max_length\": 131072,\n  \"pad_token\": \"<|endoftext|>\",\n"
          "  \"split_special_tokens\": false,\n  \"tokenizer_class\": \"Qwen2Tokenizer\",\n  \"unk_token\": null\n}\n",
          f);
    if ((rc = close_(err, f, path))) return rc;

    if (!(f = open_(err, dir, "special_tokens_map.json", path, sizeof path, &rc))) return rc;
    fputs("{\n  \"additional_special_tokens\": [", f);
    for (int i = 1; i < NSPECIAL; i++) fprintf(f, "%s\"%s\"", i > 1 ? ", " : "", added_[i]);
    fputs("],\n  \"eos_token\": \"<|im_end|>\",\n  \"pad_token\": \"<|endoftext|>\"\n}\n", f);
    if ((rc = close_(err, f, path))) return rc;
    *nids = added_base + NADDED;
    return 0;
}
