#!/usr/bin/env bash
# Decode and prefill speed of each GGUF architecture run.c reads, against the llama architecture
# at the same shape: random-weight files written by tests/gguf_writer.py write-arch into
# bench-cache/, all with 26 layers (gemma2 needs 26, 42 or 46 for llama.cpp), dim 256, 4 heads of
# 64 (MHA), feed-forward 768, an 8000-piece vocabulary and a 1024-token context; Gemma 2's
# sliding window is 4096, wider than the runs, so every architecture reads the same cache.
# Per file and round (REPS rounds, files in turn, so that a host whose speed drifts weighs on all
# alike):
#   decode   ./run FILE --tokens 1 -n 128 -t 0 --emit-ids
#   prefill  ./run FILE --tokens "<256 ids>" -n 1 -t 0 --emit-ids
# It prints a Markdown table of the medians and each architecture's ratio to llama's.
#
# Environment: REPS (default 3), TYPE (the matrices' type, default F32), CACHE (default
# bench-cache), THREADS (--threads for every run; default: run's own choice).
set -euo pipefail

cd "$(dirname "$0")/.."
REPS=${REPS:-3}
TYPE=${TYPE:-F32}
CACHE=${CACHE:-bench-cache}
ARCHS="llama qwen2 gemma gemma2 gpt2"
mkdir -p "$CACHE"
[ -x ./run ] || {
    echo "bench_arch: build ./run first (make build)" >&2
    exit 2
}
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")

for arch in $ARCHS; do
    file=$CACHE/arch-$arch-${TYPE,,}.gguf
    if [ ! -f "$file" ]; then
        echo "bench_arch: writing $file" >&2
        window=()
        [ "$arch" = gemma2 ] && window=(--window 4096)
        /usr/bin/python3 tests/gguf_writer.py write-arch "$arch" "$file.tmp" --type "$TYPE" \
            --dim 256 --layers 26 --heads 4 --kv-heads 4 --head-dim 64 --ffn 768 --vocab 8000 \
            --context 1024 "${window[@]}" >&2
        mv "$file.tmp" "$file"
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prompt=$(seq -s ' ' 3 258)
rate() { sed -n "s/.*$1 \([0-9.]*\) tok\/s.*/\1/p" "$2" | tail -n 1; }
for round in $(seq "$REPS"); do
    for arch in $ARCHS; do
        file=$CACHE/arch-$arch-${TYPE,,}.gguf
        ./run "$file" --tokens 1 -n 128 -t 0 --emit-ids "${threads[@]}" >/dev/null 2>"$tmp/log"
        rate decode "$tmp/log" >>"$tmp/$arch.decode"
        ./run "$file" --tokens "$prompt" -n 1 -t 0 --emit-ids "${threads[@]}" >/dev/null \
            2>"$tmp/log"
        rate prefill "$tmp/log" >>"$tmp/$arch.prefill"
    done
done
median() { sort -g "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo "| architecture | decode tok/s | / llama | prefill tok/s | / llama |"
echo "|---|---|---|---|---|"
base_decode=$(median "$tmp/llama.decode")
base_prefill=$(median "$tmp/llama.prefill")
for arch in $ARCHS; do
    d=$(median "$tmp/$arch.decode")
    p=$(median "$tmp/$arch.prefill")
    awk -v a="$arch" -v d="$d" -v p="$p" -v bd="$base_decode" -v bp="$base_prefill" \
        'BEGIN {printf "| %s | %.1f | %.2f | %.1f | %.2f |\n", a, d, d / bd, p, p / bp}'
done
echo
echo "Machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) CPUs;" \
    "$TYPE matrices; medians of $REPS rounds."
