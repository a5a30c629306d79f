#!/usr/bin/env bash
# Decoding speed at length: MHA, GQA and MQA models with random weights, at contexts from 256 to
# 32k positions, with an fp32, fp16 and q8 KV cache.
#
# At length, decoding one token reads every weight once and every cached key and value once:
#   bytes per token = weight bytes + context * KV bytes per token
#   KV bytes per token = 2 (keys and values) * n_layers * n_kv_heads * head_dim * bytes per entry
# so tokens/s <= read bandwidth / bytes per token, and the fewer kv heads, the later the cache
# outweighs the weights. For each model, format and context the script runs
#   ./run MODEL --tokens "<context ids>" -n DECODE -t 0 --emit-ids --kv-cache FORMAT
# under /usr/bin/time -v (peak RSS), and reads "prefill X tok/s, decode Y tok/s" from the summary.
# The bandwidth probe (scripts/stream.c, as scripts/bench.sh runs it) runs before each model, so
# the bound of each row comes from a probe taken beside it. It writes CONTEXT_CSV, a Markdown
# table on stdout, and a plot of decode tok/s against context (scripts/plot_context.py).
#
#   scripts/bench_context.sh              # everything: long (hours on 2 cores; see CONTEXTS_110M)
#   QUICK=1 scripts/bench_context.sh      # a few minutes: the KV-dominated models up to 4k
#
# Environment:
#   MODELS         subset of kv-mha kv-gqa kv-mqa 110M-32k 110M-gqa-32k 110M-mqa-32k
#                  (default all; QUICK: the kv-* three)
#   CONTEXTS       contexts for the kv-* models (default 256 1024 4096 16384; QUICK 256 1024 4096);
#                  a context that leaves no room for DECODE tokens is cut to seq_len - DECODE
#   CONTEXTS_110M  contexts for the 110M-shape models (default 256 1024 4096: a 32k prompt through
#                  the 110M shape takes about an hour on 2 cores; add 16384 32768 to measure them)
#   FORMATS        KV cache formats (default f32 f16 q8)
#   THREADS        thread count (default 2)
#   DECODE         tokens generated per run (default 32)
#   REPS           runs per measurement; the fastest is kept (default 2): on a machine shared
#                  with other work a run that lost its cores says little about the code
#   CACHE          where models and the stream binary live (default bench-cache)
#   STREAM_MIB     array size for the bandwidth probe in MiB (default 512; QUICK 256)
#   CONTEXT_CSV    results file (default $CACHE/context.csv)
#   PLOT           the PNG to write (default $CACHE/context.png; "" for none)
#   RUN_BINARY     program to measure (default ./run, built with make build)
set -euo pipefail

cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    MODELS=${MODELS:-"kv-mha kv-gqa kv-mqa"}
    CONTEXTS=${CONTEXTS:-"256 1024 4096"}
    STREAM_MIB=${STREAM_MIB:-256}
fi
MODELS=${MODELS:-"kv-mha kv-gqa kv-mqa 110M-32k 110M-gqa-32k 110M-mqa-32k"}
CONTEXTS=${CONTEXTS:-"256 1024 4096 16384"}
CONTEXTS_110M=${CONTEXTS_110M:-"256 1024 4096"}
FORMATS=${FORMATS:-"f32 f16 q8"}
THREADS=${THREADS:-2}
DECODE=${DECODE:-32}
REPS=${REPS:-2}
CACHE=${CACHE:-bench-cache}
STREAM_MIB=${STREAM_MIB:-512}
CONTEXT_CSV=${CONTEXT_CSV:-$CACHE/context.csv}
PLOT=${PLOT-$CACHE/context.png}
PYTHON=/usr/bin/python3

die() {
    echo "bench_context: $*" >&2
    exit 1
}
note() { echo "bench_context: $*" >&2; }

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
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (Debian package 'time')"

"$PYTHON" scripts/make_bench_models.py --out "$CACHE" --models "$MODELS" >&2 ||
    die "making the benchmark models failed"

# --- helpers ------------------------------------------------------------------------------------
info_field() { awk -v k="$2" '$1 == k { print $2; exit }' <<<"$1"; }
summary_rate() { sed -n "s/.*[ ;,]$2 \([0-9.]*\) tok\/s.*/\1/p" "$1" | tail -n 1; }

# The read bandwidth in GB/s with THREADS threads, one probe.
bandwidth_now() {
    "$stream_bin" --mib "$STREAM_MIB" "$THREADS" |
        awk -v t="threads=$THREADS" '$1 == "read_bandwidth_gbs" && $2 == t { sub("value=", "", $3); print $3 }'
}

# A prompt of n ids below 100 (three bytes each, so that 32k of them fit in one argument).
prompt_of() { awk -v n="$1" 'BEGIN { s = "1"; for (i = 1; i < n; i++) s = s " " (3 + (i * 7919) % 97); print s }'; }

echo "model,kind,format,context,threads,decode_tps,prefill_tps,kv_bytes_per_token,weight_bytes,bytes_per_token,effective_gbs,bandwidth_gbs,bound_tps,of_bound,peak_rss_mib" >"$CONTEXT_CSV"
probes=()
for name in $MODELS; do
    file=$CACHE/$name.bin
    # Every model is read from a fresh copy: on some virtual machines the page-cache pages of a
    # file left unread for a while come back slower to read (measured on the 110M shape: 34 tok/s
    # decoding from such a file, 52 to 55 from a copy of it), which would make rows incomparable.
    rm -rf "$tmp/fresh" && mkdir "$tmp/fresh" && cp "$file" "$tmp/fresh/" || die "copying $file failed"
    file=$tmp/fresh/$(basename "$file")
    info=$("$run_bin" "$file" --info) || die "$run_bin $file --info failed"
    seq=$(info_field "$info" seq_len)
    kind=$(awk '$1 == "attention" { sub(":", "", $2); print $2; exit }' <<<"$info")
    weight_bytes=$(awk '$1 == "weights" { print $3; exit }' <<<"$info")
    case "$name" in 110M*) contexts=$CONTEXTS_110M ;; *) contexts=$CONTEXTS ;; esac
    bw=$(bandwidth_now)
    probes+=("$bw")
    note "$name ($kind, seq_len $seq): read bandwidth now $bw GB/s"
    for format in $FORMATS; do
        kv=$("$run_bin" "$file" --info --kv-cache "$format" | awk '$1 == "kv" && $2 == "cache" { print $3; exit }')
        for context in $contexts; do
            [ "$context" -lt "$seq" ] || [ "$context" -eq "$seq" ] || continue
            n=$((context + DECODE <= seq ? context : seq - DECODE))
            note "$name $format: prompt $n, decode $DECODE"
            decode=0 prefill=0 rss=0
            for ((r = 0; r < REPS; r++)); do
                status=0
                /usr/bin/time -v -o "$tmp/time" "$run_bin" "$file" --tokens "$(prompt_of "$n")" \
                    -n "$DECODE" -t 0 --emit-ids --threads "$THREADS" --kv-cache "$format" \
                    >/dev/null 2>"$tmp/err" || status=$?
                [ "$status" -eq 0 ] || die "$name $format context $n failed (exit $status): $(tail -n 2 "$tmp/err")"
                read -r decode prefill rss < <(awk -v d="$decode" -v p="$prefill" -v r="$rss" \
                    -v d2="$(summary_rate "$tmp/err" decode)" -v p2="$(summary_rate "$tmp/err" prefill)" \
                    -v r2="$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$tmp/time")" \
                    'BEGIN { print (d2 > d ? d2 : d), (p2 > p ? p2 : p), (r2 > r ? r2 : r) }')
            done
            awk -v m="$name" -v k="$kind" -v f="$format" -v c="$n" -v t="$THREADS" -v d="$decode" \
                -v p="$prefill" -v kv="$kv" -v w="$weight_bytes" -v D="$DECODE" -v bw="$bw" -v rss="$rss" 'BEGIN {
                    bytes = w + kv * (c + D / 2)   # mean context over the decoded tokens
                    bound = bw * 1e9 / bytes
                    printf "%s,%s,%s,%d,%d,%s,%s,%d,%d,%.0f,%.2f,%s,%.1f,%.2f,%.0f\n",
                        m, k, f, c, t, d, p, kv, w, bytes, d * bytes / 1e9, bw, bound, d / bound, rss / 1024
                }' >>"$CONTEXT_CSV"
        done
    done
done

# --- report -------------------------------------------------------------------------------------
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
echo
echo "CPU: $cpu, $(nproc) CPUs, $THREADS threads; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "Read bandwidth probes (scripts/stream, $STREAM_MIB MiB, one before each model): ${probes[*]} GB/s"
echo "Decode: $DECODE greedy tokens after a prompt of 'context' tokens, the fastest of $REPS runs (prefill likewise; RSS the largest). Bytes per token = weights + KV bytes per token x (context + $DECODE / 2); bound = probe bandwidth / bytes per token."
echo
echo "| model | kind | KV cache | context | decode tok/s | prefill tok/s | KV B/token | GB/s read | of bound | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
awk -F, 'NR > 1 { printf "| %s | %s | %s | %d | %s | %s | %d | %s | %s | %s |\n", $1, $2, $3, $4, $6, $7, $8, $11, $14, $15 }' "$CONTEXT_CSV"
if [ -n "$PLOT" ]; then
    "$PYTHON" scripts/plot_context.py "$CONTEXT_CSV" "$PLOT" >&2 || note "plotting failed (python3-matplotlib?)"
fi
