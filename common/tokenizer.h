/* tokenizer.h: Qwen2's byte-level BPE tokenizer (model.md §3.2), the encode direction only.
 *
 * What HF tokenizers does with Qwen2's tokenizer.json, and what this module reproduces id for id:
 *   1. split the raw text on the added tokens (<|im_start|>, <|image_pad|>, ...; exact match,
 *      leftmost-longest, no stripping around them); each maps to its id;
 *   2. every other segment: Unicode NFC, then the Qwen2 pre-tokenizer regex
 *        (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 *        \s*[\r\n]+|\s+(?!\S)|\s+
 *      written out by hand over code points (tokenizer.c says how each alternative backtracks),
 *      with \p{L}, \p{N}, \s from common/unicode_tables.h (generated from Python's unicodedata);
 *   3. BPE by merge rank over the piece's UTF-8 bytes (GPT-2 byte-to-unicode alphabet in the
 *      files), lowest rank first, leftmost on ties (tokenizers' Word::merge_all);
 *   4. no BOS/EOS.
 * What it is not: a decoder, a chat-template engine, or a general HF tokenizer (other
 * normalisers, pre-tokenisers, dropout or byte fallback are not supported).
 *
 * Files read from the tokenizer folder: vocab.json + merges.txt when both exist, else the
 * "model" of tokenizer.json; added tokens from tokenizer.json "added_tokens", else
 * tokenizer_config.json "added_tokens_decoder", else added_tokens.json.
 *
 * defines: Tokenizer, tok_create/tok_destroy, tok_encode, tok_token_id, tok_vocab_size,
 *          tok_nfc (exposed for tests) */
#ifndef QIE_COMMON_TOKENIZER_H
#define QIE_COMMON_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Tokenizer Tokenizer;

/* Loads the tokenizer in folder `dir`. *out must be NULL; free with tok_destroy.
 * Returns 0, QIE_ENOTFOUND (no vocabulary files), QIE_EFORMAT (malformed JSON or merges), an
 * errno, or QIE_ENOMEM. */
int tok_create(char *err, const char *dir, Tokenizer **out);
void tok_destroy(Tokenizer **t); /* NULL-safe; nulls *t */

/* Encodes len bytes of UTF-8 text. *ids is malloc'd (caller frees; NULL when *n == 0).
 * Returns 0, QIE_EFORMAT (invalid UTF-8: the reference only ever sees valid Python strings),
 * QIE_ENOTFOUND (a byte without a vocabulary entry) or QIE_ENOMEM. Thread-safe: the
 * Tokenizer is read-only after tok_create. */
int tok_encode(char *err, const Tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n);

/* Id of a vocabulary entry or added token given as its text (e.g. "<|image_pad|>"); -1 when
 * absent. Added tokens win over vocabulary entries of the same text. */
int32_t tok_token_id(const Tokenizer *t, const char *token);

/* Largest id + 1 over the vocabulary and the added tokens. */
size_t tok_vocab_size(const Tokenizer *t);

/* NFC of code points in[0..n) into out (cap >= 4 * n is always enough: the canonical
 * decomposition of one code point has at most 4 code points and composition only shrinks;
 * QIE_ELIMIT when cap is too small). *nout gets the length. Exposed for tests. */
int tok_nfc(const Tokenizer *t, const uint32_t *in, size_t n, uint32_t *out, size_t cap, size_t *nout);

#ifdef __cplusplus
}
#endif
#endif
