/*
 * Shared by the fuzz targets, each of which defines RUN_NO_MAIN and includes run.c before this
 * header, so that they call the real static functions.
 *
 * run.c reports errors with one line on stderr; a fuzzer would print millions of them. The
 * targets point the stdio streams stdout and stderr at /dev/null (set FUZZ_VERBOSE=1 to keep
 * them). File descriptors 1 and 2 stay as they are, so libFuzzer's own output and the sanitizers'
 * reports, which write to the descriptors, still show.
 */

#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

static FILE *fuzz_log;  // the original stderr, for the targets' own failure messages
static FILE *fuzz_null; // /dev/null, for output nobody reads

static void fuzz_silence_stdio(void) {
    fuzz_log = stderr;
    fuzz_null = fopen("/dev/null", "w");
    if (fuzz_null == NULL) {
        perror("fuzz: /dev/null");
        abort();
    }
    const char *verbose = getenv("FUZZ_VERBOSE");
    if (verbose == NULL || verbose[0] == '\0' || verbose[0] == '0') {
        stdout = fuzz_null;
        stderr = fuzz_null;
    }
}

__attribute__((format(printf, 1, 2), noreturn)) static void fuzz_fail(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("fuzz: property violated: ", fuzz_log);
    vfprintf(fuzz_log, format, args);
    fputc('\n', fuzz_log);
    va_end(args);
    fflush(fuzz_log);
    abort();
}

// The input again, in memory of its own: 64-byte aligned like the mapped file run reads, and
// exactly size bytes long, so that AddressSanitizer catches a read one byte past the end.
static unsigned char *fuzz_aligned_copy(const uint8_t *data, size_t size) {
    void *copy = NULL;
    if (posix_memalign(&copy, 64, size > 0 ? size : 1) != 0) {
        abort();
    }
    if (size > 0) {
        memcpy(copy, data, size);
    }
    return copy;
}

// Length of the well-formed UTF-8 character at s[0..n) (shortest form, no surrogates, at most
// U+10FFFF), or 0. Written from RFC 3629's table, independently of run.c's decoder.
static size_t fuzz_utf8_char(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t length;
    unsigned char low = 0x80, high = 0xBF; // the range of the second byte
    if (c <= 0x7F) {
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        length = 2;
    } else if (c == 0xE0) {
        length = 3, low = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
        length = 3;
    } else if (c == 0xED) {
        length = 3, high = 0x9F;
    } else if (c == 0xF0) {
        length = 4, low = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
        length = 4;
    } else if (c == 0xF4) {
        length = 4, high = 0x8F;
    } else {
        return 0;
    }
    if (n < length || s[1] < low || s[1] > high) {
        return 0;
    }
    for (size_t i = 2; i < length; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF) {
            return 0;
        }
    }
    return length;
}

static bool fuzz_is_raw_control(unsigned char c) {
    return (c < 0x20 || c == 0x7F) && c != '\n' && c != '\t';
}

// What run promises about the text it prints: valid UTF-8, and no control byte but newline and
// tab. Aborts, naming the offending offset, when text breaks that promise.
static void fuzz_check_printable(const char *what, const char *text, size_t length) {
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < length;) {
        size_t n = fuzz_utf8_char(s + i, length - i);
        if (n == 0) {
            fuzz_fail("%s: output byte %zu (0x%02X) of %zu is not valid UTF-8", what, i, s[i],
                      length);
        }
        if (n == 1 && fuzz_is_raw_control(s[i])) {
            fuzz_fail("%s: output byte %zu is the raw control byte 0x%02X", what, i, s[i]);
        }
        i += n;
    }
}

// Decodes ids[0..n) the way generate prints them (each id after the one before it, the first after
// `previous`) through one Utf8Stream, flushes the stream, and checks the text. Returns the text
// (free it) and its length.
static char *fuzz_decode(const char *what, const Tokenizer *tok, const int *ids, int n,
                         int previous, size_t *length) {
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (out == NULL) {
        abort();
    }
    Utf8Stream stream = {0};
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->vocab_size) {
            fuzz_fail("%s: id %d at %d is outside the vocabulary of %d", what, ids[i], i,
                      tok->vocab_size);
        }
        if (write_token(out, tok, &stream, previous, ids[i]) != 0) {
            fuzz_fail("%s: write_token failed on a memory stream", what);
        }
        previous = ids[i];
    }
    char tail[4];
    size_t n_tail = utf8_flush(&stream, tail);
    fwrite(tail, 1, n_tail, out);
    fclose(out);
    fuzz_check_printable(what, text, size);
    *length = size;
    return text;
}

// Encodes text as a prompt (BOS as the vocabulary asks), checks the ids, decodes them and checks
// the text.
static void fuzz_encode_decode(const char *what, const Tokenizer *tok, const char *text,
                               size_t length) {
    size_t capacity = max_encoded_tokens(length);
    int *ids = checked_calloc(capacity, sizeof(int), "fuzz ids");
    if (ids == NULL) {
        abort();
    }
    int n = encode(tok, text, length, true, ids);
    if (n < 0) {
        fuzz_fail("%s: encode failed on %zu bytes", what, length);
    }
    // BOS first exactly when the vocabulary asks for it (sentencepiece's do, GPT-2's not)
    if ((size_t)n > capacity || (tok->add_bos && (n < 1 || ids[0] != tok->bos_id))) {
        fuzz_fail("%s: encode gave %d ids for %zu bytes (room for %zu), first %d", what, n, length,
                  capacity, n > 0 ? ids[0] : -1);
    }
    size_t decoded_length;
    char *decoded = fuzz_decode(what, tok, ids, n, -1, &decoded_length);
    free(decoded);
    free(ids);
}

#endif
