#!/usr/bin/env bash
# Compares checkpoints side by side, one Markdown table row each: attention kind, KV-cache size,
# speed and validation perplexity. Made for the MHA/GQA/MQA Shakespeare models:
#
#   scripts/compare.sh model/shakespeare-mha.bin model/shakespeare-gqa.bin model/shakespeare-mqa.bin
#
# Per checkpoint:
#   ./run MODEL --info                            attention kind, heads, parameters, KV cache
#   ./run MODEL -p "Fear is" -n 128 -t 0          decode tok/s, median of REPS runs
#   ./run MODEL --tokens "BOS + 99 ids" -n 1      prefill tok/s, median of REPS runs; the ids
#                                                 are the first 99 tokens of the validation text
#   ./run MODEL --eval VAL                        perplexity and nats per character on VAL, the
#                                                 validation split (scripts/val_split.sh)
# A checkpoint without a tokenizer (llama2.c files) decodes from BOS and prefills 99 fixed ids
# (marked *), and its evaluation columns read n/a.
#
# The seven checkpoints of make compare take about 2 minutes on 2 idle cores, most of it the seven
# --eval runs (10-15 seconds each). On a busy machine the speeds mean little and every run slows
# down: --eval runs with OMP_WAIT_POLICY=passive (unless set), because with libgomp's spinning
# wait one competing process slows it from 17 seconds to over a minute (see model/uptrain.sh).
#
# Environment: REPS (default 5), THREADS (--threads for every run; default all CPUs),
# DATA (text whose last 10% is the validation split; default ../shared/data/tinyshakespeare.txt),
# RUN_BINARY (default ./run, built with make build).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-5}
THREADS=${THREADS:-$(nproc)}
DATA=${DATA:-$repo/../shared/data/tinyshakespeare.txt}
DECODE_PROMPT="Fear is"
DECODE_TOKENS=128
PREFILL_TOKENS=100

die() {
    echo "compare: $*" >&2
    exit 1
}
note() { echo "compare: $*" >&2; }

if [ $# -eq 0 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    echo "usage: scripts/compare.sh MODEL..." >&2
    exit 2
fi
case "$REPS" in '' | *[!0-9]* | 0) die "REPS must be a positive integer, got '$REPS'" ;; esac
case "$THREADS" in '' | *[!0-9]* | 0) die "THREADS must be a positive integer, got '$THREADS'" ;; esac
for model in "$@"; do
    [ -f "$model" ] || die "$model: no such file"
done

if [ -n "${RUN_BINARY:-}" ]; then
    run_bin=$RUN_BINARY
else
    make -C "$repo" --no-print-directory build >&2 || die "make build failed"
    run_bin=$repo/run
fi
[ -x "$run_bin" ] || die "$run_bin is not an executable"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

val=""
if [ -f "$DATA" ]; then
    val=$tmp/val.txt
    "$repo/scripts/val_split.sh" "$DATA" >"$val" || die "scripts/val_split.sh $DATA failed"
else
    note "$DATA not found: no validation text, so prefill uses fixed ids and eval reads n/a"
fi

# Prints "median" of the numbers on stdin, one per line.
median() {
    sort -g | awk '{ v[NR] = $1 }
        END {
            if (NR == 0) { print "n/a"; exit }
            printf "%.1f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

info_field() { awk -v k="$2" '$1 == k { print $2; exit }' <<<"$1"; }

# Runs REPS times: run MODEL ARGS..., and prints the median of "WHAT X tok/s" in the summary.
median_rate() {
    local what=$1 model=$2
    shift 2
    : >"$tmp/rates"
    for ((r = 0; r < REPS; r++)); do
        "$run_bin" "$model" "$@" --threads "$THREADS" >/dev/null 2>"$tmp/err" || {
            cat "$tmp/err" >&2
            die "$run_bin $model $* failed"
        }
        sed -n "s/.*[ ;,]$what \([0-9.]*\) tok\/s.*/\1/p" "$tmp/err" | tail -n 1 >>"$tmp/rates"
    done
    median <"$tmp/rates"
}

rows=()
footnote=""
for model in "$@"; do
    info=$("$run_bin" "$model" --info 2>"$tmp/err") || {
        cat "$tmp/err" >&2
        die "$model: ./run --info cannot read it"
    }
    heads=$(info_field "$info" n_heads)
    kv_heads=$(info_field "$info" n_kv_heads)
    vocab=$(info_field "$info" vocab_size)
    seq=$(info_field "$info" seq_len)
    params=$(info_field "$info" parameters)
    kind=$(awk '$1 == "attention" { sub(":", "", $2); print $2; exit }' <<<"$info")
    read -r kv_token kv_full < <(awk '$1 == "kv" && $2 == "cache" { print $3, $7; exit }' <<<"$info")
    bos=1 # llama2.c files have no header field for it
    if [ "$(od -An -tx1 -N4 "$model" | tr -d ' \n')" = 4751414d ]; then # "GQAM"
        bos=$(od -An -tu4 -j52 -N4 "$model" | tr -d ' ')
    fi
    n_prompt=$((PREFILL_TOKENS < seq ? PREFILL_TOKENS : seq))

    mark=""
    ppl=n/a
    npc=n/a
    if "$run_bin" "$model" --encode -p "x" >/dev/null 2>&1; then
        note "$model: decode x$REPS"
        decode=$(median_rate decode "$model" -p "$DECODE_PROMPT" -n "$DECODE_TOKENS" -t 0)
        ids=""
        if [ -n "$val" ]; then
            # The first lines of the validation text, encoded, cut to n_prompt - 1 ids.
            encoded=$("$run_bin" "$model" --encode -p "$(head -c 4000 "$val")") ||
                die "$model: --encode of the validation text failed"
            ids=$(awk -v n=$((n_prompt - 1)) '{
                for (i = 1; i <= NF && c < n; i++) { printf "%s ", $i; c++ } }' <<<"$encoded")
        fi
    else
        mark="*"
        footnote="* no tokenizer: decode from BOS alone, prefill on fixed ids, no evaluation."
        note "$model: no tokenizer; decode x$REPS from BOS"
        decode=$(median_rate decode "$model" --tokens "$bos" -n "$DECODE_TOKENS" -t 0 --emit-ids)
        ids=""
    fi
    if [ -z "$ids" ]; then
        ids=$(awk -v n="$n_prompt" -v V="$vocab" 'BEGIN {
            for (i = 1; i < n; i++) printf "%d ", 3 + (i * 7919) % (V - 3) }')
    fi
    note "$model: prefill of $n_prompt tokens x$REPS"
    prefill=$(median_rate prefill "$model" --tokens "$bos $ids" -n 1 -t 0 --emit-ids)

    if [ -z "$mark" ] && [ -n "$val" ]; then
        note "$model: --eval on the validation split"
        if OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} "$run_bin" "$model" --eval "$val" \
            --threads "$THREADS" >"$tmp/eval" 2>"$tmp/err"; then
            ppl=$(sed -n 's/^loss .*perplexity \([0-9.]*\).*/\1/p' "$tmp/eval")
            npc=$(sed -n 's/^per char *\([0-9.]*\) nats.*/\1/p' "$tmp/eval")
        else
            note "$model: --eval failed: $(cat "$tmp/err")"
        fi
        ppl=${ppl:-n/a}
        npc=${npc:-n/a}
    fi

    rows+=("$(awk -v f="$model" -v kind="$kind" -v h="$heads" -v kvh="$kv_heads" \
        -v p="$params" -v kvt="$kv_token" -v kvf="$kv_full" -v S="$seq" -v d="$decode" \
        -v pf="$prefill" -v m="$mark" -v ppl="$ppl" -v npc="$npc" 'BEGIN {
            printf "| %s | %s | %s/%s | %.2fM | %d | %.2f MiB (%d tokens) | %s%s | %s%s | %s | %s |",
                f, kind, h, kvh, p / 1e6, kvt, kvf / 1048576, S, d, m, pf, m, ppl, npc
        }')")
done

echo "| file | attention | heads/kv heads | parameters | KV cache bytes/token | KV cache at full context | decode tok/s | prefill tok/s | val perplexity | val nats/char |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
[ -z "$footnote" ] || echo "$footnote"
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
echo "Machine: $cpu, $(nproc) CPUs; --threads $THREADS; speeds are medians of $REPS runs (decode: $DECODE_TOKENS tokens greedy from \"$DECODE_PROMPT\"; prefill: $PREFILL_TOKENS-token prompt); validation: last 10% of $(basename "$DATA")."
