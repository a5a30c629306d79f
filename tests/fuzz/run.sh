#!/bin/sh
# Replays and runs the fuzz targets; make fuzz calls it after building them.
#
# Usage: tests/fuzz/run.sh TARGET...      (targets: checkpoint tokenizer encode cli)
# Environment: FUZZ_SECONDS, how long each target fuzzes (default 60; 0 only replays).
#
# For each target, first every file in tests/fuzz/regressions/TARGET/ runs once (inputs that once
# crashed, leaked or broke a property: they must stay fixed); then libFuzzer runs for FUZZ_SECONDS
# from a scratch copy of tests/fuzz/corpus/TARGET/ (the committed corpus is never written), at
# nice 10, in one process. Whatever it finds is written to tests/fuzz/artifacts/TARGET/, and the
# script fails. Logs: tests/fuzz/build/logs/TARGET.log.
set -u
cd "$(dirname "$0")/../.." || exit 1

seconds=${FUZZ_SECONDS:-60}
build=tests/fuzz/build
mkdir -p "$build/logs"
failed=""

for target in "$@"; do
    binary=$build/fuzz_$target
    log=$build/logs/$target.log
    # The longest input worth trying: the merge in encode is quadratic in the prompt's length, and
    # checkpoint and tokenizer seeds carry the 12 KB Shakespeare tokenizer.
    case $target in
    checkpoint) max_len=65536 ;; # the block types need rows of 256
    tokenizer) max_len=16384 ;;
    encode) max_len=4096 ;;
    bpe) max_len=4096 ;;
    *) max_len=1024 ;;
    esac
    dictionary=""
    [ -f "tests/fuzz/$target.dict" ] && dictionary="-dict=tests/fuzz/$target.dict"

    regressions=$(find "tests/fuzz/regressions/$target" -type f 2>/dev/null | sort)
    if [ -n "$regressions" ]; then
        regression_log=$build/logs/$target.regressions.log
        : >"$regression_log"
        broken=0
        for input in $regressions; do
            if ! "$binary" "$input" >>"$regression_log" 2>&1; then
                broken=$((broken + 1))
                echo "fuzz_$target: FAIL: $input fails again:"
                "$binary" "$input" 2>&1 |
                    grep -E "ERROR: |property violated|^    #[0-9]+ .* in [a-z_]+ .*run\.c" |
                    head -n 12 | sed 's/^/    /'
            fi
        done
        if [ "$broken" -gt 0 ]; then
            echo "fuzz_$target: $broken of $(echo "$regressions" | wc -l) regression inputs fail" \
                "(the whole log: $regression_log)"
            failed="$failed $target"
            continue
        fi
        echo "fuzz_$target: $(echo "$regressions" | wc -l) regression inputs pass"
    fi
    [ "$seconds" -gt 0 ] || continue

    scratch=$(mktemp -d)
    cp tests/fuzz/corpus/"$target"/* "$scratch"/
    artifacts=tests/fuzz/artifacts/$target/
    mkdir -p "$artifacts"
    # An input runs in milliseconds; -timeout (wall clock) only has to tell a hang from a machine
    # busy with other work, where a starved process has stalled for over a minute.
    # shellcheck disable=SC2086 # $dictionary is one flag or nothing
    nice -n 10 "$binary" $dictionary -max_total_time="$seconds" -max_len="$max_len" -timeout=120 \
        -print_final_stats=1 -artifact_prefix="$artifacts" "$scratch" >"$log" 2>&1
    status=$?
    rm -rf "$scratch"
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    last=$(grep -E "^#[0-9]+" "$log" | tail -n 1 | grep -oE "cov: [0-9]+ ft: [0-9]+ corp: [0-9]+")
    if [ "$status" -ne 0 ]; then
        echo "fuzz_$target: FAIL (libFuzzer exit $status) after ${runs:-?} runs; input in $artifacts"
        grep -E "ERROR|SUMMARY|property violated|^    #[0-9] |Test unit written" "$log" |
            head -n 30 | sed 's/^/    /'
        failed="$failed $target"
    else
        echo "fuzz_$target: ok, $seconds s, $runs runs ($speed/s), $last"
    fi
done

if [ -n "$failed" ]; then
    echo "fuzz: failed:$failed (logs in $build/logs/)"
    exit 1
fi
echo "fuzz: $# targets clean"
