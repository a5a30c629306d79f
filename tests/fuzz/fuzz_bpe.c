/*
 * Fuzz target: byte-level BPE vocabularies, their merges, pre-tokenization and decoding.
 *
 * The input: byte 0 picks one of run.c's pre-tokenizers; then three parts separated by NUL
 * bytes: extra tokens, one a line, after the 256 byte tokens of GPT-2's alphabet (a line
 * beginning "<" is a control token, one beginning "@" a user-defined one, the "@" dropped);
 * merges, one a line ("left right", as the alphabet spells the tokens); and a text. The last
 * token, BOS and EOS, is the control token <|endoftext|>. A vocabulary
 * that builds encodes the text and some fixed ones, and the properties are checked:
 *   - every id is in the vocabulary, and their decoded text is printable UTF-8;
 *   - with control tokens off (--no-special), the ids stand for exactly the text's bytes.
 */

#define RUN_NO_MAIN
#include "../../run.c"

#include "fuzz_common.h"

#define MAX_EXTRA 64

static const char *const texts[] = {
    "Hello, world! It's 12345 o'clock.\n\n  spaces   ",
    "I'M 日本語 👨\u200d👩\u200d👧 e\xCC\x81 \r\n\t<|endoftext|><s>",
    "\xFF\xFE \xC3 \xE2\x82 \xF0\x9F\x99 \xED\xA0\x80 \xC0\xAF",
};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_silence_stdio();
    return 0;
}

// The lines of part[0..n) as GGUF strings appended at out; returns the bytes written and the
// lines in *count (at most max). A line's first byte may set its type in types.
static size_t lines_as_strings(const unsigned char *part, size_t n, unsigned char *out,
                               int32_t *types, int max, int *count) {
    size_t written = 0;
    for (size_t start = 0; start < n && *count < max;) {
        const unsigned char *newline = memchr(part + start, '\n', n - start);
        size_t end = newline != NULL ? (size_t)(newline - part) : n;
        size_t skip = types != NULL && end > start && part[start] == '@' ? 1 : 0;
        uint64_t length = end - start - skip;
        if (types != NULL) {
            types[*count] = skip ? 4 : end > start && part[start] == '<' ? 3 : 1;
        }
        memcpy(out + written, &length, 8);
        memcpy(out + written + 8, part + start + skip, length);
        written += 8 + length;
        (*count)++;
        start = end + 1;
    }
    return written;
}

// The ids of text, checked; with round_trip, their bytes must be the text's.
static void check_text(const Tokenizer *tok, const char *text, size_t length, bool round_trip) {
    int *ids = checked_calloc(max_encoded_tokens(length), sizeof(int), "fuzz ids");
    int n = ids != NULL ? encode(tok, text, length, false, ids) : -1;
    if (n < 0 || (size_t)n > max_encoded_tokens(length)) {
        fuzz_fail("encode gave %d ids for %zu bytes", n, length);
    }
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->vocab_size) {
            fuzz_fail("id %d of %d is %d, outside the vocabulary", i, n, ids[i]);
        }
        const unsigned char *bytes;
        unsigned char storage;
        size_t k = token_bytes(tok, i > 0 ? ids[i - 1] : -1, ids[i], &bytes, &storage);
        if (round_trip && (at + k > length || memcmp(text + at, bytes, k) != 0)) {
            fuzz_fail("id %d of %d (%d) is not the text's bytes at %zu", i, n, ids[i], at);
        }
        at += k;
    }
    if (round_trip && at != length) {
        fuzz_fail("the ids stand for %zu bytes of the text's %zu", at, length);
    }
    size_t decoded_length;
    free(fuzz_decode("ids", tok, ids, n, -1, &decoded_length));
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    const unsigned char *parts[3] = {data + 1, NULL, NULL};
    size_t lengths[3] = {size - 1, 0, 0};
    for (int p = 0; p < 2 && parts[p] != NULL; p++) {
        const unsigned char *zero = memchr(parts[p], '\0', lengths[p]);
        if (zero != NULL) {
            parts[p + 1] = zero + 1;
            lengths[p + 1] = lengths[p] - (size_t)(zero + 1 - parts[p]);
            lengths[p] = (size_t)(zero - parts[p]);
        }
    }
    unsigned char *tokens = malloc(256 * 11 + size + 8 * MAX_EXTRA + 32);
    unsigned char *merges = malloc(9 * size + 8);
    int32_t types[256 + MAX_EXTRA];
    int count = 0, n_merges = 0;
    size_t at = 0;
    for (int b = 0; b < 256; b++) {
        char stand_in[3];
        uint64_t length = (uint64_t)small_code_point_utf8(byte_stand_in(b), stand_in);
        memcpy(tokens + at, &length, 8), memcpy(tokens + at + 8, stand_in, length);
        at += 8 + length;
        types[count++] = 1;
    }
    at += lines_as_strings(parts[0], lengths[0], tokens + at, types, 256 + MAX_EXTRA - 1, &count);
    const char *end_of_text = "<|endoftext|>"; // BOS and EOS, a control token as in GPT-2's
    uint64_t end_length = strlen(end_of_text);
    memcpy(tokens + at, &end_length, 8), memcpy(tokens + at + 8, end_of_text, end_length);
    types[count++] = 3;
    lines_as_strings(parts[1], parts[1] != NULL ? lengths[1] : 0, merges, NULL, (int)size + 1,
                     &n_merges);
    size_t n_kinds = sizeof PRE_TOKENIZERS / sizeof PRE_TOKENIZERS[0];
    const PreTokenizerKind *kind = &PRE_TOKENIZERS[data[0] % n_kinds];
    GgufByteVocabulary v = {.tokens = tokens,
                            .types = (const unsigned char *)types,
                            .merges = merges,
                            .n_merges = (uint64_t)n_merges,
                            .pre = kind->name,
                            .pre_length = strlen(kind->name)};
    Config c = {.vocab_size = count, .bos_id = count - 1, .eos_id = count - 1};
    Tokenizer tok;
    if (build_byte_level_tokenizer(&tok, &v, "fuzz", &c, -1, -1) == 0) {
        for (int pass = 0; pass < 2; pass++) { // control tokens found, then not (--no-special)
            tok.parse_specials = pass == 0;
            for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
                check_text(&tok, texts[i], strlen(texts[i]), pass == 1);
            }
            if (parts[2] != NULL) {
                check_text(&tok, (const char *)parts[2], lengths[2], pass == 1);
            }
        }
        free_tokenizer(&tok);
    }
    free(tokens), free(merges);
    return 0;
}
