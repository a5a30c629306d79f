/*
 * Fuzz target: tokenizer.bin files.
 *
 * The input is a whole tokenizer.bin. The model's vocab_size is taken to be the number of pieces
 * the file holds (so that a well-formed file is accepted); bytes 2 and 3, the high half of the
 * max_token_length field that run.c ignores, move BOS and EOS away from their usual ids 1 and 2.
 * An accepted tokenizer then encodes and decodes a few fixed texts, and decodes every one of its
 * pieces in a row; all of that output must be printable UTF-8.
 */

#define RUN_NO_MAIN
#include "../../run.c"

#include "fuzz_common.h"

static const char *const texts[] = {
    "",
    " ",
    "   ",
    "Fear is the mind-killer.",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "a\tb\r\nc",
    "h\xC3\xA9llo w\xC3\xB6rld \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82",
    "\xFF\xFE \xC3 \xE2\x82 \xF0\x9F\x99 \xED\xA0\x80 \xC0\xAF",
    "<0x41><s></s><unk>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
};

// Ids decoded in one run by the every-piece check; a bigger vocabulary is sampled with a stride.
#define MAX_DECODED_IDS 4096

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_silence_stdio();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    unsigned char *bytes = fuzz_aligned_copy(data, size);
    long long n_pieces = 0;
    size_t text_bytes;
    bool scanned = scan_tokenizer(bytes, size, "fuzz", &n_pieces, &text_bytes) == 0;
    if (!scanned) {
        n_pieces = 3; // rejected anyway; build_tokenizer must say so too
    }
    int vocab_size = (int)(n_pieces < 3 ? 3 : n_pieces > MAX_VOCAB ? MAX_VOCAB : n_pieces);
    int bos_id = (int)((1 + (size > 2 ? bytes[2] : 0)) % vocab_size);
    int eos_id = (int)((2 + (size > 3 ? bytes[3] : 0)) % vocab_size);

    Tokenizer tok;
    int built = build_tokenizer(&tok, bytes, size, "fuzz", vocab_size, bos_id, eos_id);
    if (built == 0) {
        if (tok.max_piece_length < 0 || tok.vocab_size != vocab_size) {
            fuzz_fail("build_tokenizer: max_piece_length %d, vocab_size %d", tok.max_piece_length,
                      tok.vocab_size);
        }
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
            fuzz_encode_decode("fixed text", &tok, texts[i], strlen(texts[i]));
        }
        int stride = vocab_size > MAX_DECODED_IDS ? vocab_size / MAX_DECODED_IDS + 1 : 1;
        int *ids = checked_calloc(MAX_DECODED_IDS, sizeof(int), "fuzz ids");
        int n = 0;
        for (int id = 0; id < vocab_size && n < MAX_DECODED_IDS; id += stride) {
            ids[n++] = id;
        }
        size_t length;
        free(fuzz_decode("every piece", &tok, ids, n, bos_id, &length));
        free(fuzz_decode("every piece", &tok, ids, n, -1, &length));
        free(ids);
        free_tokenizer(&tok);
    } else if (built != -1) {
        fuzz_fail("build_tokenizer returned %d", built);
    } else if (scanned && n_pieces == vocab_size) {
        fuzz_fail("build_tokenizer rejected a file scan_tokenizer accepts, with %d pieces",
                  vocab_size);
    }
    free(bytes);
    return 0;
}
