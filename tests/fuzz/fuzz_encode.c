/*
 * Fuzz target: encoding prompt text with a real tokenizer, and decoding the ids back.
 *
 * The tokenizer is loaded once: $FUZZ_TOKENIZER (vocab_size taken from the file), else the
 * repository's tokenizer/shakespeare.tokenizer.bin, else ../shared/tokenizers/llama2.tokenizer.bin
 * (32000 pieces), each with BOS 1 and EOS 2; paths are tried from the working directory, then
 * from the repository that holds this binary (tests/fuzz/build/). The input is the prompt's bytes.
 *
 * Properties: encode gives at most max_encoded_tokens(size) ids, BOS first, every id in the
 * vocabulary; the decoded text is valid UTF-8 with no raw control byte but newline and tab; and
 * when the prompt itself is valid UTF-8, the decoded text is the prompt exactly, except that
 * control bytes read \xNN (both tokenizers fall back to bytes, so nothing is lost).
 * The merge is quadratic in the prompt's length: run with -max_len=4096 or so.
 */

#define RUN_NO_MAIN
#include "../../run.c"

#include <libgen.h>

#include "fuzz_common.h"

static Tokenizer tokenizer;

static int try_load(const char *path) {
    unsigned char *data;
    size_t size;
    if (access(path, R_OK) != 0 ||
        read_whole_file(path, MAX_TOKENIZER_BYTES, "-z", &data, &size) != 0) {
        return -1;
    }
    long long n_pieces;
    size_t text_bytes;
    int result = -1;
    if (scan_tokenizer(data, size, path, &n_pieces, &text_bytes) == 0 && n_pieces >= 3 &&
        n_pieces <= MAX_VOCAB) {
        result = build_tokenizer(&tokenizer, data, size, path, (int)n_pieces, 1, 2);
    }
    free(data);
    if (result == 0) {
        fprintf(fuzz_log, "fuzz_encode: tokenizer %s, %d pieces\n", path, tokenizer.vocab_size);
    }
    return result;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_silence_stdio();
    const char *candidates[] = {"tokenizer/shakespeare.tokenizer.bin",
                                "../shared/tokenizers/llama2.tokenizer.bin"};
    const char *chosen = getenv("FUZZ_TOKENIZER");
    if (chosen != NULL && chosen[0] != '\0') {
        if (try_load(chosen) == 0) {
            return 0;
        }
        fprintf(fuzz_log, "fuzz_encode: cannot load FUZZ_TOKENIZER=%s\n", chosen);
        abort();
    }
    char binary[4096];
    snprintf(binary, sizeof binary, "%s", *argc > 0 ? (*argv)[0] : ".");
    const char *directory = dirname(binary); // tests/fuzz/build
    for (int from_repository = 0; from_repository < 2; from_repository++) {
        for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
            char path[8192];
            snprintf(path, sizeof path, "%s%s%s", from_repository ? directory : "",
                     from_repository ? "/../../../" : "", candidates[i]);
            if (try_load(path) == 0) {
                return 0;
            }
        }
    }
    fprintf(fuzz_log, "fuzz_encode: no tokenizer found; run from the repository root\n");
    abort();
}

// What decoding the prompt must print when the prompt is valid UTF-8; NULL when it is not.
static char *expected_text(const uint8_t *data, size_t size, size_t *length) {
    char *text = malloc(4 * size + 1);
    size_t n = 0;
    for (size_t i = 0; i < size;) {
        size_t char_length = fuzz_utf8_char(data + i, size - i);
        if (char_length == 0) {
            free(text);
            return NULL;
        }
        if (char_length == 1 && fuzz_is_raw_control(data[i])) {
            n += (size_t)snprintf(text + n, 5, "\\x%02X", data[i]);
        } else {
            memcpy(text + n, data + i, char_length);
            n += char_length;
        }
        i += char_length;
    }
    *length = n;
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *prompt = (char *)fuzz_aligned_copy(data, size); // exactly size bytes, no terminator
    size_t capacity = max_encoded_tokens(size);
    int *ids = checked_calloc(capacity, sizeof(int), "fuzz ids");
    if (ids == NULL) {
        abort();
    }
    int n = encode(&tokenizer, prompt, size, true, ids);
    if (n < 1 || (size_t)n > capacity || ids[0] != tokenizer.bos_id) {
        fuzz_fail("encode gave %d ids for %zu bytes (room for %zu)", n, size, capacity);
    }
    if (size > 0 && n < 2) {
        fuzz_fail("encode gave no ids for %zu bytes", size);
    }
    size_t decoded_length;
    char *decoded = fuzz_decode("prompt", &tokenizer, ids, n, -1, &decoded_length);
    size_t expected_length;
    char *expected = expected_text(data, size, &expected_length);
    if (expected != NULL &&
        (decoded_length != expected_length || memcmp(decoded, expected, expected_length) != 0)) {
        fuzz_fail("decode(encode(prompt)) is %zu bytes '%.*s', expected %zu bytes '%.*s'",
                  decoded_length, (int)decoded_length, decoded, expected_length,
                  (int)expected_length, expected);
    }
    free(expected);
    free(decoded);
    free(ids);
    free(prompt);
    return 0;
}
