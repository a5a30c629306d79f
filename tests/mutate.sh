#!/bin/sh
# Mutation testing: applies each semantic mutation of run.c in tests/mutations.txt, builds the
# mutant (./run, ./run-plain and the Check suite of each), runs the fast suites against it, and
# prints CAUGHT or SURVIVED. A mutation that survives is a missing test, unless it is listed
# below as equivalent.
# Not part of make test (about a minute per mutation on 2 cores): run it before resolving
# changes to run.c.
#
#   make mutate                  every mutation
#   tests/mutate.sh 3 7          mutations 3 and 7 only (numbers as printed)
#
# Equivalent mutations (none at present): a mutation listed here changes no observable result.
set -u
cd "$(dirname "$0")/.." || exit 1

CC=${CC:-gcc}
CFLAGS="-std=gnu11 -O2 -march=native -Wall -Wextra -fopenmp -isystem /usr/include/stb"
PLAIN_CFLAGS="-std=gnu11 -O2 -Wall -Wextra -fopenmp-simd -DRUN_PLAIN -isystem /usr/include/stb"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/tests"
cp tests/test_run.c "$work/tests/" # it includes ../run.c: the mutant beside it

caught=0
survived=0
number=0
grep -v '^#' tests/mutations.txt | grep -v '^$' >"$work/list"
while IFS= read -r script; do
    number=$((number + 1))
    if [ $# -gt 0 ] && ! echo " $* " | grep -q " $number "; then
        continue
    fi
    sed "$script" run.c >"$work/run.c"
    if cmp -s run.c "$work/run.c"; then
        echo "BROKEN    $number: the pattern matches nothing: $script"
        survived=$((survived + 1))
        continue
    fi
    if ! $CC $CFLAGS -o "$work/run" "$work/run.c" -lpcre2-8 -lm 2>/dev/null ||
        ! $CC $CFLAGS -Wno-unused-function $(pkg-config --cflags check) -o "$work/tests/test_run" \
            "$work/tests/test_run.c" $(pkg-config --libs check) -lpcre2-8 -lm 2>/dev/null ||
        ! $CC $PLAIN_CFLAGS -o "$work/run-plain" "$work/run.c" -lpcre2-8 -lm 2>/dev/null ||
        ! $CC $PLAIN_CFLAGS -Wno-unused-function $(pkg-config --cflags check) \
            -o "$work/tests/test_run_plain" "$work/tests/test_run.c" $(pkg-config --libs check) \
            -lpcre2-8 -lm 2>/dev/null; then
        echo "CAUGHT    $number (does not compile): $script"
        caught=$((caught + 1))
        continue
    fi
    # From the repository, so that the suites find the shipped models and ../shared.
    # The plain build's suites too: Part 1 is its code, and some of it only it runs.
    if RUN_BINARY="$work/run" CK_VERBOSITY=silent timeout 600 "$work/tests/test_run" \
        >/dev/null 2>&1 && RUN_BINARY="$work/run" timeout 600 tests/test_hostile.sh \
        >/dev/null 2>&1 && RUN_BINARY="$work/run-plain" CK_VERBOSITY=silent timeout 600 \
        "$work/tests/test_run_plain" >/dev/null 2>&1 &&
        timeout 600 /usr/bin/python3 tests/test_twin.py --run "$work/run-plain" >/dev/null 2>&1 &&
        timeout 600 /usr/bin/python3 tests/test_tokenizers.py --run "$work/run" >/dev/null 2>&1 &&
        timeout 600 /usr/bin/python3 tests/test_quants.py --run "$work/run" >/dev/null 2>&1 &&
        timeout 600 /usr/bin/python3 tests/test_quants.py --run "$work/run-plain" >/dev/null 2>&1 &&
        timeout 600 /usr/bin/python3 tests/test_arch.py --run "$work/run-plain" >/dev/null 2>&1 &&
        timeout 600 /usr/bin/python3 tests/test_arch.py --run "$work/run" >/dev/null 2>&1; then
        echo "SURVIVED  $number: $script"
        survived=$((survived + 1))
    else
        echo "CAUGHT    $number: $script"
        caught=$((caught + 1))
    fi
done <"$work/list"
echo "mutate: $caught caught, $survived survived"
[ "$survived" -eq 0 ]
