#!/usr/bin/env bash
# Tests scripts/explore.sh and the page it writes, opened in headless Chromium:
# - explore.sh's errors: missing -p, -o or model, a file that is no checkpoint, an existing OUT;
# - the page of the three shipped models at several URL fragments, checked by
#   tests/explorer_dom.py against ./run's own output: token labels, kv-head groups (from --info),
#   every weight of the selected head in every model (from --attn L:H), no script errors;
# - a page of a made-up dump with queries and keys, and a prompt holding "</script>": the hand
#   calculation against weights computed independently;
# - tests/explorer_harness.html: hashchange, clicks on heads and cells, the fragment they write.
# Needs ./run (make build; RUN_BINARY names another build) and chromium
# (scripts/install-deps.sh test).
set -eu

cd "$(dirname "$0")/.."
export RUN_BINARY=${RUN_BINARY:-./run}
PROMPT="Fear is the crown"
MODELS=(model/shakespeare-mha.bin model/shakespeare-gqa.bin model/shakespeare-mqa.bin)
CHECK=tests/explorer_dom.py

if ! command -v chromium >/dev/null; then
    echo "test_explorer: chromium not found (scripts/install-deps.sh test)" >&2
    exit 1
fi
if [ ! -x "$RUN_BINARY" ]; then
    echo "test_explorer: $RUN_BINARY not found (make build)" >&2
    exit 1
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0
checks=0

pass() {
    checks=$((checks + 1))
    echo "ok   $1"
}

fail() {
    checks=$((checks + 1))
    failures=$((failures + 1))
    echo "FAIL $1"
}

# Chromium without the background services that would try to reach the network. Each call gets a
# fresh profile; the page's console goes to stderr (--enable-logging), kept in $scratch/console.
browse() {
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$(mktemp -d -p "$scratch")" --virtual-time-budget=5000 \
        --enable-logging=stderr --v=0 "$@" 2>"$scratch/console"
}

# dump_dom URL OUT [FLAG...]: the DOM after the page's scripts ran; fails on an uncaught error.
dump_dom() {
    browse "${@:3}" --dump-dom "$1" >"$2"
    if grep -q "Uncaught" "$scratch/console"; then
        grep "Uncaught" "$scratch/console"
        return 1
    fi
}

# --- explore.sh's command line ------------------------------------------------------------------

# expect_error NAME COMMAND...: COMMAND must exit non-zero with one line on stderr, starting
# with "explore:".
expect_error() {
    local name=$1 status=0
    shift
    "$@" >"$scratch/out" 2>"$scratch/err" || status=$?
    local lines
    lines=$(wc -l <"$scratch/err")
    if [ $status -ne 0 ] && [ "$lines" -eq 1 ] && grep -q "^explore: " "$scratch/err"; then
        pass "$name ($(cat "$scratch/err"))"
    else
        fail "$name: exit status $status, stderr:"
        cat "$scratch/err"
    fi
}

page=$scratch/page.html
expect_error "missing -p" scripts/explore.sh -o "$page" "${MODELS[0]}"
expect_error "missing -o" scripts/explore.sh -p "$PROMPT" "${MODELS[0]}"
expect_error "no model" scripts/explore.sh -o "$page" -p "$PROMPT"
expect_error "missing model" scripts/explore.sh -o "$page" -p "$PROMPT" model/no-such-model.bin
echo "not a checkpoint" >"$scratch/bad.bin"
expect_error "./run fails" scripts/explore.sh -o "$page" -p "$PROMPT" "$scratch/bad.bin"
echo '{"model": "x"}' >"$scratch/bad.json"
expect_error "not a dump" scripts/explore.sh -o "$page" "$scratch/bad.json"
if [ -e "$page" ]; then
    fail "a failed explore.sh left $page"
else
    pass "no page after an error"
fi

scripts/explore.sh -o "$page" -p "$PROMPT" "${MODELS[@]}" >/dev/null
cp "$page" "$scratch/first.html"
expect_error "existing OUT" scripts/explore.sh -o "$page" -p "other" "${MODELS[0]}"
if cmp -s "$page" "$scratch/first.html"; then
    pass "existing OUT left as it was"
else
    fail "existing OUT changed"
fi
if scripts/explore.sh -o "$page" -p "$PROMPT" --force "${MODELS[@]}" >/dev/null; then
    pass "--force overwrites"
else
    fail "--force did not overwrite"
fi
if grep -qE "https?://" "$page"; then
    fail "the page names a network address:"
    grep -noE "https?://[^\"' ]*" "$page" | head -5
else
    pass "the page names no network address"
fi

# --- the page of the shipped models, at several fragments --------------------------------------

for fragment in "model=1&layer=2&head=3" "model=0&layer=0&head=0" \
    "model=2&layer=5&head=7&query=4&key=2" "model=1&layer=3&head=6&query=6&key=0"; do
    if dump_dom "file://$page#$fragment" "$scratch/dom.html" &&
        $CHECK page "$scratch/dom.html" "$fragment" "$PROMPT" "${MODELS[@]}"; then
        pass "page #$fragment"
    else
        fail "page #$fragment"
    fi
done

# A fragment out of range falls back to the first model's layer 0, head 0.
if dump_dom "file://$page#model=9&layer=99&head=x" "$scratch/dom.html" &&
    $CHECK page "$scratch/dom.html" "model=0&layer=0&head=0" "$PROMPT" "${MODELS[@]}"; then
    pass "page with a bad fragment"
else
    fail "page with a bad fragment"
fi

# --- the hand calculation, on a made-up dump with queries and keys ------------------------------

$CHECK mock "$scratch/mock.json"
# Its prompt and labels hold "</script>" and "<!--", which must not end the page's data early.
mock_prompt='</script><!-- "quoted" & more'
scripts/explore.sh -o "$scratch/mock.html" -p "$mock_prompt" "$scratch/mock.json" >/dev/null
for fragment in "model=0&layer=1&head=3&query=4&key=2" "model=0&layer=0&head=1&query=2&key=2"; do
    if dump_dom "file://$scratch/mock.html#$fragment" "$scratch/dom.html" &&
        $CHECK page-mock "$scratch/dom.html" "$fragment" "$scratch/mock.json" "$mock_prompt"; then
        pass "hand calculation #$fragment"
    else
        fail "hand calculation #$fragment"
    fi
done

# --- interaction: hashchange and clicks ---------------------------------------------------------

mkdir "$scratch/harness"
cp "$page" "$scratch/harness/page.html"
cp tests/explorer_harness.html "$scratch/harness/harness.html"
if dump_dom "file://$scratch/harness/harness.html" "$scratch/dom.html" --allow-file-access-from-files &&
    $CHECK harness "$scratch/dom.html"; then
    pass "hashchange and clicks"
else
    fail "hashchange and clicks"
fi

echo "test_explorer: $((checks - failures)) of $checks checks passed"
[ $failures -eq 0 ]
