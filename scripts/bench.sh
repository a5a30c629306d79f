#!/usr/bin/env bash
# Benchmarks ./run on random-weight models at the shapes of llama2.c's stories models, and sets
# decoding speed against the memory-bandwidth bound.
#
# Decoding one token reads every weight once, so tokens/s <= read bandwidth / weight bytes per
# token. The script builds ./run and scripts/stream.c, writes the models into bench-cache/
# (scripts/make_bench_models.py), measures read bandwidth, then for each model and thread count:
#   decode   ./run MODEL --tokens 1 -n 256 -t 0 --emit-ids     ("decode X tok/s" on stderr)
#   prefill  ./run MODEL --tokens "<256 ids>" -n 1             ("prefill X tok/s")
# each REPS times (median and min-max reported), every decode under /usr/bin/time -v for the
# peak resident set. The bandwidth probe runs again before each model, so every row's bound uses
# the bandwidth measured beside it (hosts drift from minute to minute), and scripts/peak.c
# measures the fused multiply-add peak, against which prefill's GFLOP/s are set (a prefilled
# token costs 2 floating-point operations per matmul weight).
# Busy core (BUSY=1, the default on 2 or more CPUs): decode again while a busy loop holds one
# core, with the default thread count and with --threads 1, to show what another program on
# the machine costs. It ends with Markdown tables on stdout; progress goes to stderr.
#
#   scripts/bench.sh                       # everything: about 15-30 minutes on 2 cores
#   QUICK=1 scripts/bench.sh               # smoke test: 15M only, 2 reps
#   MODELS="15M 15M-mqa" REPS=9 THREADS="1 2 4" scripts/bench.sh
#
# Environment:
#   REPS         runs per measurement (default 5; QUICK: 2)
#   THREADS      thread counts (default "1 2")
#   MODELS       subset of: 15M 15M-gqa 15M-mqa 42M 110M (default all; QUICK: 15M)
#   F16_MODELS   models also measured as GGUF F16 (default 110M; "" for none)
#   MODEL_FILES  further checkpoints to measure, e.g. model/shakespeare-gqa.bin
#   CACHE        where models and the stream binary live (default bench-cache)
#   STREAM_MIB   array size for the bandwidth probe in MiB (default 1024)
#   RUN_BINARY   program to measure (default ./run, built with make build)
#   BUSY         1: also measure decode with one core held by a busy loop (default 1 when
#                nproc >= 2; QUICK: 1)
#
# int8: each model NAME is also written as bench-cache/NAME-int8.bin (model/quantize.py) and
# measured beside its fp32 original. F16: each model of F16_MODELS (default 110M) is also written
# as a GGUF file, bench-cache/NAME-f16.gguf (tests/gguf_writer.py), and measured beside them. A
# file's format (the "format" column) comes from its name, and bytes_per_weight turns it into the
# bound.
set -euo pipefail

cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    REPS=${REPS:-2}
    MODELS=${MODELS:-15M}
fi
REPS=${REPS:-5}
THREADS=${THREADS:-"1 2"}
MODELS=${MODELS:-"15M 15M-gqa 15M-mqa 42M 110M"}
MODEL_FILES=${MODEL_FILES:-}
F16_MODELS=${F16_MODELS-110M}
CACHE=${CACHE:-bench-cache}
STREAM_MIB=${STREAM_MIB:-1024}
BUSY=${BUSY:-$([ "$(nproc)" -ge 2 ] && echo 1 || echo 0)}
DECODE_TOKENS=256
PREFILL_TOKENS=256
PYTHON=/usr/bin/python3

die() {
    echo "bench: $*" >&2
    exit 1
}
note() { echo "bench: $*" >&2; }

case "$REPS" in '' | *[!0-9]* | 0) die "REPS must be a positive integer, got '$REPS'" ;; esac
for t in $THREADS; do
    case "$t" in '' | *[!0-9]* | 0) die "THREADS must be positive integers, got '$t'" ;; esac
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- build --------------------------------------------------------------------------------------
if [ -n "${RUN_BINARY:-}" ]; then
    run_bin=$RUN_BINARY
else
    make --no-print-directory build >&2 || die "make build failed"
    run_bin=./run
fi
[ -x "$run_bin" ] || die "$run_bin is not an executable"
mkdir -p "$CACHE"
stream_bin=$CACHE/stream
if [ ! -x "$stream_bin" ] || [ scripts/stream.c -nt "$stream_bin" ]; then
    gcc -O3 -march=native -fopenmp -o "$stream_bin" scripts/stream.c || die "building $stream_bin failed"
fi
peak_bin=$CACHE/peak
if [ ! -x "$peak_bin" ] || [ scripts/peak.c -nt "$peak_bin" ]; then
    gcc -O3 -march=native -fopenmp -o "$peak_bin" scripts/peak.c || die "building $peak_bin failed"
fi

if [ ! -x /usr/bin/time ]; then
    note "/usr/bin/time is missing; installing the Debian package 'time'"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get install -y time >&2 || note "could not install 'time'; peak RSS will read n/a"
fi

# --- models -------------------------------------------------------------------------------------
"$PYTHON" scripts/make_bench_models.py --out "$CACHE" --models "$MODELS" --int8 >&2 ||
    die "making the benchmark models failed"
files=()
for name in $MODELS; do
    files+=("$CACHE/$name.bin")
    if [ -f "$CACHE/$name-int8.bin" ]; then
        files+=("$CACHE/$name-int8.bin")
    fi
    for f16 in $F16_MODELS; do
        [ "$f16" = "$name" ] || continue
        gguf=$CACHE/$name-f16.gguf
        if [ ! -f "$gguf" ] || [ "$CACHE/$name.bin" -nt "$gguf" ]; then
            note "writing $gguf"
            "$PYTHON" tests/gguf_writer.py write "$CACHE/$name.bin" "$gguf" --type f16 >&2 ||
                die "writing $gguf failed"
        fi
        files+=("$gguf")
    done
done
for f in $MODEL_FILES; do
    [ -f "$f" ] || die "$f: no such checkpoint (from MODEL_FILES)"
    files+=("$f")
done

# The format of a checkpoint, from its name: NAME-int8.bin holds int8 weights, NAME-f16.gguf F16
# ones, the rest fp32.
format_of() {
    case "$1" in
    *-int8.bin) echo int8 ;;
    *-f16.gguf) echo f16 ;;
    *) echo fp32 ;;
    esac
}

# Bytes one matmul weight costs to read: fp32 4; F16 2; int8 1, plus a 4-byte scale per group
# of 32.
bytes_per_weight() {
    case "$1" in
    fp32) echo 4 ;;
    f16) echo 2 ;;
    int8) awk 'BEGIN { print 1 + 4 / 32 }' ;;
    *) die "unknown format '$1'" ;;
    esac
}

# --- helpers ------------------------------------------------------------------------------------
# Prints "median min max" of the numbers on stdin, one per line.
summarize() {
    sort -g | awk '{ v[NR] = $1 }
        END {
            if (NR == 0) { print "n/a n/a n/a"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.1f %.1f %.1f\n", m, v[1], v[NR]
        }'
}

# Field of ./run --info: the first word after the name ("dim 288" -> 288).
info_field() { awk -v k="$2" '$1 == k { print $2; exit }' <<<"$1"; }

# A number from run's stderr summary line: "... prefill 502.9 tok/s, decode 112.3 tok/s; ...".
summary_rate() { sed -n "s/.*[ ;,]$2 \([0-9.]*\) tok\/s.*/\1/p" "$1" | tail -n 1; }

# Runs ./run with the given arguments; its stderr goes to $tmp/err, stdout is dropped.
# Under /usr/bin/time -v when it exists, which adds $tmp/time.
run_model() {
    local status=0
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -v -o "$tmp/time" "$run_bin" "$@" >/dev/null 2>"$tmp/err" || status=$?
    else
        "$run_bin" "$@" >/dev/null 2>"$tmp/err" || status=$?
    fi
    if [ "$status" -ne 0 ]; then
        cat "$tmp/err" >&2
        die "$run_bin $1 failed (exit $status)"
    fi
}

# --- bandwidth and peak probes -----------------------------------------------------------------
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
cpus=$(nproc)
declare -A bandwidth peak
bandwidth_seen=""
# Measures read bandwidth for every thread count into bandwidth[], and remembers each reading.
probe_bandwidth() {
    note "measuring read bandwidth ($STREAM_MIB MiB, threads $THREADS)"
    # shellcheck disable=SC2086 # THREADS is a list of numbers
    "$stream_bin" --mib "$STREAM_MIB" $THREADS >"$tmp/stream" || die "$stream_bin failed"
    while read -r key threads value; do
        [ "$key" = read_bandwidth_gbs ] || continue
        threads=${threads#threads=}
        value=${value#value=}
        bandwidth[$threads]=$value
        bandwidth_seen+=" $threads:$value"
    done <"$tmp/stream"
}
# Each thread count's lowest and highest reading over the run, as text.
bandwidth_range() {
    for t in $THREADS; do
        tr ' ' '\n' <<<"$bandwidth_seen" | awk -F: -v t="$t" '$1 == t {
            v = $2 + 0; if (n++ == 0 || v < lo) lo = v; if (v > hi) hi = v }
            END { if (n) printf "%s thread(s) %.1f-%.1f GB/s (%d readings); ", t, lo, hi, n }'
    done
}
note "measuring the fused multiply-add peak (threads $THREADS)"
# shellcheck disable=SC2086 # THREADS is a list of numbers
"$peak_bin" $THREADS >"$tmp/peak" || die "$peak_bin failed"
peak_text=""
while read -r key threads value; do
    [ "$key" = fma_peak_gflops ] || continue
    threads=${threads#threads=}
    value=${value#value=}
    peak[$threads]=$value
    peak_text+="${peak_text:+, }$threads thread(s) $value GFLOP/s"
done <"$tmp/peak"

# A busy loop on one core, as another program would be: started in the background, stopped by
# stop_hog (and on exit).
hog_pid=""
start_hog() {
    bash -c 'while :; do :; done' &
    hog_pid=$!
}
stop_hog() {
    if [ -n "$hog_pid" ]; then
        kill "$hog_pid" 2>/dev/null || true
        wait "$hog_pid" 2>/dev/null || true
        hog_pid=""
    fi
}
trap 'stop_hog; rm -rf "$tmp"' EXIT

# --- runs ---------------------------------------------------------------------------------------
rows=()
kv_rows=()
busy_rows=()
for file in "${files[@]}"; do
    # Every model is read from a fresh copy: on some virtual machines the page-cache pages of a
    # file left unread for a while come back slower to read (measured on the 110M shape: 34 tok/s
    # decoding from such a file, 52 to 55 from a copy of it), which would make rows incomparable.
    rm -rf "$tmp/fresh" && mkdir "$tmp/fresh" && cp "$file" "$tmp/fresh/" || die "copying $file failed"
    file=$tmp/fresh/$(basename "$file")
    probe_bandwidth
    info=$("$run_bin" "$file" --info) || die "$run_bin $file --info failed"
    dim=$(info_field "$info" dim)
    hidden=$(info_field "$info" hidden_dim)
    layers=$(info_field "$info" n_layers)
    heads=$(info_field "$info" n_heads)
    kv_heads=$(info_field "$info" n_kv_heads)
    head_dim=$(info_field "$info" head_dim)
    vocab=$(info_field "$info" vocab_size)
    seq=$(info_field "$info" seq_len)
    params=$(info_field "$info" parameters)
    kv_per_token=$(awk '$1 == "kv" && $2 == "cache" { print $3; exit }' <<<"$info")
    format=$(format_of "$file")
    bpw=$(bytes_per_weight "$format")
    # Read per generated token: every matmul weight (wq, wk, wv, wo, w1, w2, w3 of each layer and
    # the vocab x dim classifier) at bpw bytes, plus in fp32 the RMSNorm weights (2 per layer
    # and a final one) and the one embedding row looked up. KV-cache reads are counted apart.
    weight_bytes=$(awk -v D="$dim" -v F="$hidden" -v L="$layers" -v H="$heads" \
        -v KVH="$kv_heads" -v hd="$head_dim" -v V="$vocab" -v bpw="$bpw" 'BEGIN {
            per_layer = H * hd * D + 2 * KVH * hd * D + D * H * hd + 3 * F * D
            printf "%.0f\n", bpw * (L * per_layer + V * D) + 4 * ((2 * L + 1) * D + D)
        }')
    name=$(basename "$file")
    name=${name%.bin}
    name=${name%.gguf}
    n_decode=$((DECODE_TOKENS < seq - 1 ? DECODE_TOKENS : seq - 1))
    n_prompt=$((PREFILL_TOKENS < seq ? PREFILL_TOKENS : seq))
    prompt=$(awk -v n="$n_prompt" -v V="$vocab" 'BEGIN {
            s = "1"; for (i = 1; i < n; i++) s = s " " (3 + (i * 7919) % (V - 3)); print s }')
    # Mean KV-cache bytes read per decoded token: position p attends to p + 1 cached positions.
    kv_rows+=("| $name | $(awk -v w="$weight_bytes" -v kv="$kv_per_token" -v n="$n_decode" \
        'BEGIN { printf "%.2f | %.2f | %.1f%%", w / 1e6, kv * (n + 1) / 2 / 1e6,
                 100 * kv * (n + 1) / 2 / w }') |")

    for t in $THREADS; do
        note "$name, $t thread(s): decode x$REPS"
        : >"$tmp/decode"
        rss_kb=0
        for ((r = 0; r < REPS; r++)); do
            run_model "$file" --tokens 1 -n "$DECODE_TOKENS" -t 0 --emit-ids --threads "$t"
            generated=$(sed -n 's/.*generated \([0-9]*\);.*/\1/p' "$tmp/err" | tail -n 1)
            if [ -n "$generated" ] && [ "$generated" -lt "$n_decode" ]; then
                note "warning: $name generated $generated of $n_decode tokens (EOS or BOS)"
            fi
            rate=$(summary_rate "$tmp/err" decode)
            [ -n "$rate" ] || die "no 'decode X tok/s' in the summary of $file: $(cat "$tmp/err")"
            echo "$rate" >>"$tmp/decode"
            if [ -f "$tmp/time" ]; then
                kb=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$tmp/time")
                if [ -n "$kb" ] && [ "$kb" -gt "$rss_kb" ]; then
                    rss_kb=$kb
                fi
            fi
        done
        note "$name, $t thread(s): prefill of $n_prompt tokens x$REPS"
        : >"$tmp/prefill"
        for ((r = 0; r < REPS; r++)); do
            run_model "$file" --tokens "$prompt" -n 1 -t 0 --emit-ids --threads "$t"
            rate=$(summary_rate "$tmp/err" prefill)
            [ -n "$rate" ] || die "no 'prefill X tok/s' in the summary of $file: $(cat "$tmp/err")"
            echo "$rate" >>"$tmp/prefill"
        done
        read -r d_med d_min d_max < <(summarize <"$tmp/decode")
        read -r p_med p_min p_max < <(summarize <"$tmp/prefill")
        bw=${bandwidth[$t]:-}
        # Prefill FLOPs per token: 2 per weight of every layer's matrices (the bytes read per token
        # less the fp32 norms and the classifier, which prefill runs for the last position only).
        row=$(awk -v name="$name" -v fmt="$format" -v params="$params" -v t="$t" \
            -v dm="$d_med" -v dl="$d_min" -v dh="$d_max" \
            -v pm="$p_med" -v pl="$p_min" -v ph="$p_max" -v bpw="$bpw" \
            -v D="$dim" -v L="$layers" -v V="$vocab" -v pk="${peak[$t]:-}" \
            -v bw="$bw" -v wb="$weight_bytes" -v rss="$rss_kb" 'BEGIN {
                ratio = dm > 0 ? sprintf("%.1f", pm / dm) : "n/a"
                if (bw != "") {
                    bound = bw * 1e9 / wb
                    b = sprintf("%.1f", bound); frac = sprintf("%.2f", dm / bound)
                } else { b = "n/a"; frac = "n/a" }
                weights = (wb - 4 * (2 * L + 2) * D) / bpw - V * D
                gflops = 2 * weights * pm / 1e9
                of_peak = pk != "" && pk > 0 ? sprintf("%.2f", gflops / pk) : "n/a"
                mem = rss > 0 ? sprintf("%.0f", rss / 1024) : "n/a"
                printf "| %s | %s | %.1fM | %s | %s (%s-%s) | %s (%s-%s) | %s | %.1f | %s | %s | %s | %s | %s |",
                    name, fmt, params / 1e6, t, dm, dl, dh, pm, pl, ph, ratio, gflops, of_peak,
                    bw, b, frac, mem
            }')
        rows+=("$row")
    done

    if [ "$BUSY" = 1 ]; then
        # Default threads against --threads 1, alternating, while one core is held.
        note "$name: decode x$REPS with a busy loop on one core (default threads, then --threads 1)"
        : >"$tmp/busy_default"
        : >"$tmp/busy_one"
        start_hog
        for ((r = 0; r < REPS; r++)); do
            run_model "$file" --tokens 1 -n "$DECODE_TOKENS" -t 0 --emit-ids
            summary_rate "$tmp/err" decode >>"$tmp/busy_default"
            run_model "$file" --tokens 1 -n "$DECODE_TOKENS" -t 0 --emit-ids --threads 1
            summary_rate "$tmp/err" decode >>"$tmp/busy_one"
        done
        stop_hog
        read -r b_med b_min b_max < <(summarize <"$tmp/busy_default")
        read -r o_med o_min o_max < <(summarize <"$tmp/busy_one")
        busy_rows+=("$(awk -v name="$name" -v fmt="$format" -v bm="$b_med" -v bl="$b_min" \
            -v bh="$b_max" -v om="$o_med" -v ol="$o_min" -v oh="$o_max" 'BEGIN {
                printf "| %s | %s | %s (%s-%s) | %s (%s-%s) | %s |", name, fmt, bm, bl, bh,
                    om, ol, oh, (om > 0 ? sprintf("%.2f", bm / om) : "n/a") }')")
    fi
done
probe_bandwidth

# --- report -------------------------------------------------------------------------------------
echo
echo "CPU: $cpu, $cpus CPUs; read bandwidth (scripts/stream, best of 10 passes over $STREAM_MIB MiB, before every model and at the end): $(bandwidth_range)FMA peak (scripts/peak): $peak_text"
echo "Each speed is the median (min-max) of $REPS runs; decode: $DECODE_TOKENS tokens greedy from BOS (clamped to the context); prefill: a $PREFILL_TOKENS-token prompt. Bound = the bandwidth read just before the row's runs / weight bytes read per token. Prefill GFLOP/s = 2 x the layers' matmul weights x prefill tok/s (attention and the last position's classifier not counted)."
echo
echo "| model | format | params | threads | decode tok/s | prefill tok/s | prefill/decode | prefill GFLOP/s | of FMA peak | GB/s probed | bound tok/s | of bound | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ "${#busy_rows[@]}" -gt 0 ]; then
    echo
    echo "Decode with one core held by a busy loop (median (min-max) of $REPS, alternating):"
    echo
    echo "| model | format | default threads tok/s | --threads 1 tok/s | default / one |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${busy_rows[@]}"
fi
echo
echo "Bytes read per decoded token (the bound counts weights only):"
echo
echo "| model | weights MB | KV cache MB (mean over the decode) | KV / weights |"
echo "|---|---|---|---|"
printf '%s\n' "${kv_rows[@]}"

# --- the tokenizer ------------------------------------------------------------------------------
# Encoding tinyshakespeare.txt (1.1 MB) with GPT-2's byte-level vocabulary, the whole process
# (loading the 50,257 tokens and 50,000 merges included), as llama.cpp's llama-tokenize is timed.
vocab=../shared/golden/tokenizers/ggml-vocab-gpt-2.gguf
corpus=../shared/data/tinyshakespeare.txt
if [ -f "$vocab" ] && [ -f "$corpus" ]; then
    : >"$tmp/encode"
    for ((r = 0; r < REPS; r++)); do
        start=$(date +%s.%N)
        ./run "$vocab" --encode -f "$corpus" >"$tmp/ids"
        end=$(date +%s.%N)
        awk -v s="$start" -v e="$end" 'BEGIN { printf "%.0f\n", (e - s) * 1000 }' >>"$tmp/encode"
    done
    read -r e_med e_min e_max < <(summarize <"$tmp/encode")
    echo
    echo "Encoding $corpus ($(wc -c <"$corpus") bytes) with GPT-2's vocabulary, the whole process:" \
        "$e_med ms ($e_min-$e_max), $(wc -w <"$tmp/ids") ids."
fi

# --- the product kernels, pattern by pattern ----------------------------------------------------
# Which access pattern this host serves fastest (scripts/kernel_bench.c): run.c's one-position
# products over matrices far past the caches, against a plain read of the same bytes.
kernel_bin=$CACHE/kernel_bench
if [ ! -x "$kernel_bin" ] || [ scripts/kernel_bench.c -nt "$kernel_bin" ] ||
    [ run.c -nt "$kernel_bin" ]; then
    gcc -O3 -march=native -fopenmp -Wno-unused-function -isystem /usr/include/stb \
        -o "$kernel_bin" scripts/kernel_bench.c -lpcre2-8 -lm || die "building $kernel_bin failed"
fi
echo
echo "One-position products on this host (scripts/kernel_bench.c, best of 5 passes over 256 MiB):"
echo
"$kernel_bin"
