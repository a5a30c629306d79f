#!/usr/bin/env bash
# Two builds of run side by side: prefill and decode speed of each, run by run in turn, so that a
# host whose speed drifts from minute to minute weighs on both alike, and the ratio between them
# is the number to trust (on a shared machine absolute speeds move by tens of percent).
#
#   scripts/bench_against.sh OLD_BINARY [NEW_BINARY]
#
# For example, against the build of an earlier commit:
#   git worktree add /tmp/old <commit> && make -C /tmp/old build
#   scripts/bench_against.sh /tmp/old/run
#
# Per model (from bench-cache/, written by scripts/make_bench_models.py as make bench does) and
# thread count, REPS rounds of
#   prefill  BIN MODEL --tokens "<256 ids>" -n 1 -t 0 --emit-ids --threads T
#   decode   BIN MODEL --tokens 1 -n 256 -t 0 --emit-ids --threads T
# with OLD then NEW in each round. It prints a Markdown table: the median tok/s of each and
# NEW / OLD.
#
# Environment: MODELS (default "42M 110M 42M-int8 110M-int8"), THREADS (default "1 2"),
# REPS (default 5), CACHE (default bench-cache).
set -euo pipefail

cd "$(dirname "$0")/.."
[ $# -ge 1 ] && [ $# -le 2 ] || {
    echo "usage: scripts/bench_against.sh OLD_BINARY [NEW_BINARY]" >&2
    exit 2
}
old=$1
new=${2:-./run}
MODELS=${MODELS:-"42M 110M 42M-int8 110M-int8"}
THREADS=${THREADS:-"1 2"}
REPS=${REPS:-5}
CACHE=${CACHE:-bench-cache}
for bin in "$old" "$new"; do
    [ -x "$bin" ] || {
        echo "bench_against: $bin is not an executable" >&2
        exit 2
    }
done

fp32_models=""
int8_models=""
for name in $MODELS; do
    case "$name" in
    *-int8) int8_models+="${int8_models:+,}${name%-int8}" ;;
    *) fp32_models+="${fp32_models:+,}$name" ;;
    esac
done
if [ -n "$fp32_models" ]; then
    /usr/bin/python3 scripts/make_bench_models.py --out "$CACHE" --models "$fp32_models" >&2
fi
if [ -n "$int8_models" ]; then
    /usr/bin/python3 scripts/make_bench_models.py --out "$CACHE" --models "$int8_models" --int8 >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# "prefill X tok/s" or "decode X tok/s" from a run's summary line.
rate() { sed -n "s/.*$1 \([0-9.]*\) tok\/s.*/\1/p" "$2" | tail -n 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

echo "| model | threads | prefill old | prefill new | new/old | decode old | decode new | new/old |"
echo "|---|---|---|---|---|---|---|---|"
for name in $MODELS; do
    file=$CACHE/$name.bin
    # Every model is read from a fresh copy: on some virtual machines the page-cache pages of a
    # file left unread for a while come back slower to read (measured on the 110M shape: 34 tok/s
    # decoding from such a file, 52 to 55 from a copy of it), which would make rows incomparable.
    rm -rf "$tmp/fresh" && mkdir "$tmp/fresh" && cp "$file" "$tmp/fresh/" || exit 1
    file=$tmp/fresh/$(basename "$file")
    vocab=$("$new" "$file" --info | awk '$1 == "vocab_size" { print $2; exit }')
    prompt=$(awk -v n=256 -v V="${vocab:-32000}" 'BEGIN {
        s = "1"; for (i = 1; i < n; i++) s = s " " (3 + (i * 7919) % (V - 3)); print s }')
    for t in $THREADS; do
        : >"$tmp/po" && : >"$tmp/pn" && : >"$tmp/do" && : >"$tmp/dn"
        for ((r = 0; r < REPS; r++)); do
            for which in o n; do
                bin=$old
                [ "$which" = n ] && bin=$new
                "$bin" "$file" --tokens "$prompt" -n 1 -t 0 --emit-ids --threads "$t" \
                    >/dev/null 2>"$tmp/err"
                rate prefill "$tmp/err" >>"$tmp/p$which"
                "$bin" "$file" --tokens 1 -n 256 -t 0 --emit-ids --threads "$t" \
                    >/dev/null 2>"$tmp/err"
                rate decode "$tmp/err" >>"$tmp/d$which"
            done
        done
        po=$(median <"$tmp/po") pn=$(median <"$tmp/pn") do_=$(median <"$tmp/do") dn=$(median <"$tmp/dn")
        awk -v m="$name" -v t="$t" -v po="$po" -v pn="$pn" -v do_="$do_" -v dn="$dn" 'BEGIN {
            printf "| %s | %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f |\n",
                m, t, po, pn, pn / po, do_, dn, dn / do_ }'
        echo "bench_against: $name, $t thread(s) done" >&2
    done
done
