/*
 * Fuzz target: checkpoint files, every format (GQAM, llama2.c's legacy layout, and GGUF).
 *
 * The input is a whole file. parse_checkpoint must reject it with a message or accept it; when it
 * accepts a small one, the model also runs (a block of up to three positions, then one step, so
 * that every tensor the layout points at is read, in any encoding, and must lie inside the file),
 * samples from the logits, and an embedded tokenizer is built and used.
 */

#define RUN_NO_MAIN
#include "../../run.c"

#include "fuzz_common.h"

// Models whose run state (activations and KV cache) is larger than this are parsed, not run.
#define FUZZ_MAX_RUN_STATE_BYTES (4u << 20)

static const char *const sample_texts[] = {"", "Fear is", " the\n\tmind-killer ", "h\xC3\xA9llo",
                                           "\xFF\xFE\x01"};

// Prefills up to three positions as one block (BOS, the last id, id 0), then samples a token from
// the last position's logits and runs it through the one-position step, with the copies the
// fast kernels make at load (Q4_0 rows eight at a time).
static void exercise_model(Checkpoint *ckpt, int *generated, int *n_generated) {
    *n_generated = 0;
    const Config *c = &ckpt->config;
    if (run_state_bytes(c, thread_count()) > FUZZ_MAX_RUN_STATE_BYTES) {
        return;
    }
    Transformer t = {.config = *c, .weights = ckpt->weights, .checkpoint = ckpt};
    if (build_run_state(&t.state, c, KV_F32) != 0) {
        return;
    }
    if (interleave_weights(&t, SIZE_MAX) != 0 ||
        kv_reserve(&t.state.kv, c->seq_len < 4 ? c->seq_len : 4)) {
        free_run_state(&t.state);
        return;
    }
    Sampler sampler;
    if (build_sampler(&sampler, c->vocab_size, 0.8f, 3, 0.9f, 7) != 0) {
        free_run_state(&t.state);
        return;
    }
    int prompt[3] = {c->bos_id, c->vocab_size - 1, 0};
    int n = c->seq_len < 3 ? c->seq_len : 3;
    float *logits = forward_block(&t, prompt, n, 0, LOGITS_ALL);
    int greedy = argmax(logits, c->vocab_size);
    int next = sample(&sampler, logits + (size_t)(n - 1) * c->vocab_size);
    if (greedy < 0 || greedy >= c->vocab_size || next < 0 || next >= c->vocab_size) {
        fuzz_fail("argmax gave id %d and sample id %d, outside the vocabulary of %d", greedy, next,
                  c->vocab_size);
    }
    generated[(*n_generated)++] = next;
    if (n < c->seq_len) {
        logits = forward(&t, next, n, true);
        generated[(*n_generated)++] = argmax(logits, c->vocab_size);
    }
    free_sampler(&sampler);
    free_run_state(&t.state);
}

// The vocabulary as load_tokenizer builds it: sentencepiece-style bytes, or a GGUF file's
// byte-level BPE.
static void exercise_tokenizer(const Checkpoint *ckpt, const int *generated, int n_generated) {
    const Config *c = &ckpt->config;
    Tokenizer tok;
    const GgufModel *gguf = ckpt->gguf;
    if (ckpt->tokenizer_bytes == NULL && (gguf == NULL || !gguf->byte_level)) {
        return;
    }
    int built =
        gguf != NULL && gguf->byte_level
            ? build_byte_level_tokenizer(&tok, &gguf->bpe, "fuzz", c, gguf->add_bos, gguf->add_eos)
            : build_tokenizer(&tok, ckpt->tokenizer_bytes, ckpt->tokenizer_size, "fuzz",
                              c->vocab_size, c->bos_id, c->eos_id);
    if (built != 0) {
        return;
    }
    for (size_t i = 0; i < sizeof sample_texts / sizeof sample_texts[0]; i++) {
        fuzz_encode_decode("embedded tokenizer", &tok, sample_texts[i], strlen(sample_texts[i]));
    }
    size_t length;
    free(fuzz_decode("generated ids", &tok, generated, n_generated, c->bos_id, &length));
    free_tokenizer(&tok);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_silence_stdio();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    unsigned char *file = fuzz_aligned_copy(data, size);
    Checkpoint ckpt;
    memset(&ckpt, 0, sizeof ckpt);
    int parsed = parse_checkpoint(file, size, "fuzz", &ckpt);
    if (parsed == 0 && ckpt.vocab_only) {
        if (ckpt.config.vocab_size < 1 || ckpt.config.bos_id < 0 ||
            ckpt.config.bos_id >= ckpt.config.vocab_size) {
            fuzz_fail("parse_checkpoint accepted a vocabulary of %d tokens, BOS %d",
                      ckpt.config.vocab_size, ckpt.config.bos_id);
        }
        exercise_tokenizer(&ckpt, NULL, 0); // a vocabulary with no tensors: nothing to run
        free_checkpoint(&ckpt);
    } else if (parsed == 0) {
        const Config *c = &ckpt.config;
        // GGUF files name their head_dim (Gemma's is not dim / n_heads); the others may not.
        bool head_dim_ok = ckpt.gguf != NULL ? c->head_dim >= 2 && c->head_dim % 2 == 0
                                             : c->n_heads * c->head_dim == c->dim;
        if (c->n_heads % c->n_kv_heads != 0 || !head_dim_ok || !(c->query_scale > 0.0f) ||
            !(c->rope_scale > 0.0f) || c->sliding_window < 0 || c->bos_id < 0 ||
            c->bos_id >= c->vocab_size || c->eos_id < 0 || c->eos_id >= c->vocab_size) {
            fuzz_fail("parse_checkpoint accepted an inconsistent config");
        }
        if (ckpt.tokenizer_bytes != NULL && ckpt.gguf == NULL &&
            (ckpt.tokenizer_bytes < file ||
             ckpt.tokenizer_bytes + ckpt.tokenizer_size > file + size)) {
            fuzz_fail("the tokenizer section lies outside the file");
        }
        // As load_checkpoint does: every weight checked (a refusal is a message, not a crash);
        // models that pass run, the others do not.
        int generated[3];
        int n_generated = 0;
        if (check_weights(c, &ckpt.weights, "fuzz") == 0) {
            exercise_model(&ckpt, generated, &n_generated);
        }
        if (ckpt.tokenizer_bytes != NULL || (ckpt.gguf != NULL && ckpt.gguf->byte_level)) {
            exercise_tokenizer(&ckpt, generated, n_generated);
        }
        free_checkpoint(&ckpt); // a GGUF file's tables (nothing is mapped here)
    }
    free(file);
    return 0;
}
