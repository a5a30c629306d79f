#!/bin/sh
# Runs run under valgrind's memcheck: generation with text, generation with a tokenizer given by
# -z, generation from GGUF files (F16 and Q8_0), and runs that fail (a truncated checkpoint, a
# truncated GGUF file, a bad flag). Any invalid read or write, use of uninitialised memory, or
# definitely or indirectly lost block fails the case, as does an exit status other than the one
# the case expects.
#
# Usage: tests/valgrind.sh           (from anywhere; make test-valgrind runs it)
# The program is $RUN_BINARY, else ./run. Build it without -march=native (make test-valgrind
# does): valgrind 3.19 cannot execute AVX-512 instructions, which -march=native may emit.
#
# valgrind reports its own errors with exit status 99, not the usual 1, because 1 is what run
# itself returns for bad data, which the truncated-checkpoint case expects.
set -u
cd "$(dirname "$0")/.." || exit 1

binary=${RUN_BINARY:-./run}
shared=../shared
if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind: not installed (scripts/install-deps.sh test installs it)" >&2
    exit 1
fi
if [ ! -x "$binary" ]; then
    echo "valgrind: $binary is not built" >&2
    exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT INT TERM
# OpenMP's workers spin while they wait; under valgrind, which runs one thread at a time, spinning
# only burns time.
export OMP_WAIT_POLICY=passive

passed=0
failed=0

# check NAME EXPECTED_STATUS ARGS...: runs "$binary ARGS..." under memcheck.
check() {
    name=$1
    expected=$2
    shift 2
    valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --error-exitcode=99 --log-file="$scratch/valgrind.log" \
        "$binary" "$@" >"$scratch/stdout" 2>"$scratch/stderr" </dev/null
    status=$?
    if [ "$status" -eq "$expected" ] && grep -q "ERROR SUMMARY: 0 errors" "$scratch/valgrind.log"; then
        passed=$((passed + 1))
        echo "valgrind: ok    $name"
    else
        failed=$((failed + 1))
        echo "valgrind: FAIL  $name (exit $status, expected $expected)"
        sed 's/^/    stderr: /' "$scratch/stderr" | tail -n 5
        grep -v '^==[0-9]*== *$' "$scratch/valgrind.log" | sed 's/^/    /' | tail -n 40
    fi
}

skip() {
    echo "valgrind: skip  $1"
}

# A small llama2.c checkpoint with random weights and the vocabulary of
# tokenizer/shakespeare.tokenizer.bin (1024 ids), for when ../shared has nothing that fits.
python=/usr/bin/python3
random_model=""
make_random_model() {
    [ -n "$random_model" ] && return 0
    [ -x "$python" ] && [ -f tokenizer/shakespeare.tokenizer.bin ] || return 1
    "$python" - "$scratch/random-legacy.bin" <<'PY' || return 1
import random, struct, sys
dim, hidden, layers, heads, kv_heads, vocab, seq_len = 64, 172, 2, 4, 2, 1024, 64
head_dim = dim // heads
kv_dim = kv_heads * head_dim
n = (vocab * dim + layers * dim + layers * dim * dim * 2 + layers * kv_dim * dim * 2
     + layers * dim + layers * hidden * dim * 3 + dim + seq_len * head_dim)
rng = random.Random(7)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq_len))
    f.write(struct.pack(f"<{n}f", *(rng.gauss(0.0, 0.1) for _ in range(n))))
PY
    random_model="$scratch/random-legacy.bin"
}

# How a case names a checkpoint: its path, or what the random one is.
describe() {
    if [ "$1" = "$random_model" ]; then
        echo "a random llama2.c checkpoint of 1024 ids"
    else
        echo "$1"
    fi
}

legacy_models=$( (ls "$shared"/models/*.bin; ls "$shared"/golden/tiny-*.bin) 2>/dev/null)
# The shipped GQA model, else any shipped model.
shipped=model/shakespeare-gqa.bin
if [ ! -f "$shipped" ]; then
    for candidate in model/shakespeare-*.bin; do
        shipped=$candidate
        break
    done
fi
model=""
if [ -f "$shipped" ]; then
    model=$shipped
    check "generate text: $shipped -p 'Fear is' -n 24" 0 \
        "$model" -p "Fear is" -n 24 -s 7 --threads 2
else
    model=$(echo "$legacy_models" | head -n 1)
    if [ -z "$model" ] && make_random_model; then
        model=$random_model
    fi
    if [ -n "$model" ]; then
        check "generate ids: $(describe "$model") --tokens '1 300 310' --emit-ids -n 24" 0 \
            "$model" --tokens "1 300 310" --emit-ids -n 24 -s 7 --threads 2
    else
        skip "generation: no model/shakespeare-*.bin, no checkpoint in $shared/models, no python3"
    fi
fi

# -z with a text prompt on a llama2.c checkpoint: the first pair whose vocabularies match (the
# program itself says whether they do), else the random checkpoint above with the Shakespeare
# tokenizer.
pair_model=""
pair_tokenizer=""
for candidate in $legacy_models; do
    for tokenizer in tokenizer/*.tokenizer.bin "$shared"/tokenizers/*.tokenizer.bin; do
        [ -f "$tokenizer" ] || continue
        if "$binary" "$candidate" -z "$tokenizer" --encode -p a >/dev/null 2>&1; then
            pair_model=$candidate
            pair_tokenizer=$tokenizer
            break 2
        fi
    done
done
if [ -z "$pair_model" ] && make_random_model; then
    pair_model=$random_model
    pair_tokenizer=tokenizer/shakespeare.tokenizer.bin
fi
if [ -n "$pair_model" ]; then
    check "generate text with -z: $(describe "$pair_model") -z $pair_tokenizer -p 'Once upon a time'" 0 \
        "$pair_model" -z "$pair_tokenizer" -p "Once upon a time" -n 24 -s 7 --threads 2
else
    skip "generation with -z: no llama2.c checkpoint and tokenizer.bin whose vocabularies match"
fi

# Errors: a checkpoint cut short (exit 1, bad data) and an unknown flag (exit 2, bad usage).
if [ -n "$model" ]; then
    head -c 1000 "$model" >"$scratch/truncated.bin"
    check "truncated checkpoint: the first 1000 bytes of $(describe "$model")" 1 "$scratch/truncated.bin" -n 4
    check "bad flag: $(describe "$model") --no-such-flag" 2 "$model" --no-such-flag
else
    skip "error runs: no checkpoint to truncate"
fi

# GGUF: the shipped model written as F16 and Q8_0 by tests/gguf_writer.py, generating text
# through the vocabulary inside the file (run then reads F16 and Q8_0 with the portable kernels),
# and a GGUF file cut short.
if [ -f "$shipped" ] && "$python" -c "import numpy" 2>/dev/null; then
    for type in f16 q8_0; do
        gguf=$scratch/shakespeare.$type.gguf
        if "$python" tests/gguf_writer.py write "$shipped" "$gguf" --type "$type" >/dev/null; then
            check "GGUF $type: $shipped written as GGUF, -p 'Fear is' -n 24" 0 \
                "$gguf" -p "Fear is" -n 24 -s 7 --threads 2
        else
            failed=$((failed + 1))
            echo "valgrind: FAIL  tests/gguf_writer.py could not write $gguf"
        fi
    done
    head -c 100000 "$scratch/shakespeare.f16.gguf" >"$scratch/truncated.gguf"
    check "truncated GGUF: the first 100000 bytes of the F16 file" 1 "$scratch/truncated.gguf" -n 4
else
    skip "GGUF: no $shipped, or no numpy for tests/gguf_writer.py"
fi

# No allocation per token: generating 60 tokens makes exactly as many heap allocations as 5.
# The KV cache grows in pages of 256 positions, all reserved before the first token for the
# prompt and every step; both runs (3 + 5 and 3 + 60 positions) fit in the first page, so the
# counts compare the steady state, not the number of pages.
heap_allocs() {
    valgrind --tool=memcheck "$binary" "$@" 2>&1 >/dev/null </dev/null |
        sed -n 's/.*total heap usage: \([0-9,]*\) allocs.*/\1/p'
}
if [ -n "$model" ] && "$binary" "$model" -p "Fear is" -n 1 -q >/dev/null 2>&1; then
    for threads in 1 2; do
        few=$(heap_allocs "$model" -p "Fear is" -n 5 -t 0.8 -s 3 -q --threads "$threads")
        many=$(heap_allocs "$model" -p "Fear is" -n 60 -t 0.8 -s 3 -q --threads "$threads")
        if [ -n "$few" ] && [ "$few" = "$many" ]; then
            passed=$((passed + 1))
            echo "valgrind: ok    no allocation per token, $threads thread(s): $few allocations for 5 tokens and for 60"
        else
            failed=$((failed + 1))
            echo "valgrind: FAIL  allocation per token, $threads thread(s): $few allocations for 5 tokens, $many for 60"
        fi
    done
else
    skip "allocations per token: no checkpoint that generates text from a prompt"
fi

echo "valgrind: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
