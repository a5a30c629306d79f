#!/usr/bin/env bash
# Tests scripts/explore.sh and the page it writes, opened in headless Chromium:
# - explore.sh's errors: missing -p, -o or model, a file that is no checkpoint, an existing OUT;
# - its refusals of malformed dumps (wrong sizes, shapes and types, weights that are no softmax,
#   NaN, files that are not JSON, empty, FIFOs, directories) and of an OUT that is an input: each
#   with its exit status and exact message, and no page written;
# - the page of the three shipped models at several URL fragments, checked by
#   tests/explorer_dom.py against ./run's own output: token labels, kv-head groups (from --info),
#   every weight of the selected head in every model (from --attn L:H), no script errors;
# - a page of a made-up dump with queries and keys, and a prompt holding "</script>": the hand
#   calculation against weights computed independently;
# - tests/explorer_harness.html: hashchange, clicks on heads and cells, the fragment they write;
# - pages whose data was edited by hand: the page's own check shows what is wrong, no error thrown.
# Needs ./run (make build; RUN_BINARY names another build) and chromium
# (scripts/install-deps.sh test); without chromium the checks in the browser are SKIPPED.
set -eu

cd "$(dirname "$0")/.."
export RUN_BINARY=${RUN_BINARY:-./run}
PROMPT="Fear is the crown"
MODELS=(model/shakespeare-mha.bin model/shakespeare-gqa.bin model/shakespeare-mqa.bin)
CHECK=tests/explorer_dom.py

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

# --- malformed dumps and outputs: exit status, exact message, no page -------------------------

refused=$scratch/refused.html

# refuse NAME STATUS MESSAGE COMMAND...: COMMAND must exit with STATUS, print MESSAGE (exactly,
# one line) on stderr and nothing on stdout, and leave no $refused nor temporary file beside it.
refuse() {
    local name=$1 want=$2 message=$3 status=0
    shift 3
    timeout 20 "$@" >"$scratch/out" 2>"$scratch/err" || status=$?
    local left
    left=$(find "$scratch" -maxdepth 1 -name "*refused.html*")
    if [ $status -eq "$want" ] && [ "$(cat "$scratch/err")" = "$message" ] &&
        [ "$(wc -l <"$scratch/err")" -eq 1 ] && [ ! -s "$scratch/out" ] && [ -z "$left" ]; then
        pass "$name ($status: $message)"
    else
        fail "$name: exit status $status (expected $want), stderr:"
        cat "$scratch/err"
        echo "     expected: $message"
        [ -z "$left" ] || echo "     left behind: $left"
        find "$scratch" -maxdepth 1 -name "*refused.html*" -delete # the next case meets no OUT
    fi
}

# The cases: NAME, a Python statement that spoils d (the MHA model's dump; or sets t, the text
# to write, or b, its bytes), and the message after "explore: FILE: ".
base=$scratch/base.json
"$RUN_BINARY" "${MODELS[0]}" -p "$PROMPT" --attn-dump "$base" -q >/dev/null
cases=(
    "n_layers 100" 'd["n_layers"] = 100' "attention has 6 layers, expected 100 (n_layers)"
    "attention a string" 'd["attention"] = "x"' 'attention is "x", expected a list of 6 layers'
    "attention null" 'd["attention"] = None' "attention is null, expected a list of 6 layers"
    "n_heads null" 'd["n_heads"] = None' "n_heads is null, not a positive integer"
    "n_layers negative" 'd["n_layers"] = -2' "n_layers is -2, not a positive integer"
    "n_layers 0" 'd["n_layers"] = 0' "n_layers is 0, not a positive integer"
    "n_layers 2.5" 'd["n_layers"] = 2.5' "n_layers is 2.5, not a positive integer"
    "n_layers 6.0" 'd["n_layers"] = 6.0' "n_layers is 6.0, not a positive integer"
    "n_layers a string" 'd["n_layers"] = "6"' 'n_layers is "6", not a positive integer'
    "n_layers true" 'd["n_layers"] = True' "n_layers is true, not a positive integer"
    "head_dim negative" 'd["head_dim"] = -24' "head_dim is -24, not a positive integer"
    "n_kv_heads not dividing" 'd["n_kv_heads"] = 3' "n_kv_heads 3 does not divide n_heads 8"
    "group_size wrong" 'd["group_size"] = 2' "group_size is 2, but n_heads 8 / n_kv_heads 8 is 1"
    "kind wrong" 'd["kind"] = "GQA"' 'kind is "GQA", but n_heads 8 and n_kv_heads 8 make MHA'
    "required keys missing" 'del d["n_heads"], d["attention"]' "not an attention dump: no n_heads, attention"
    "model a number" 'd["model"] = 5' "model is 5, not a string"
    "prompt a list" 'd["prompt"] = [1]' "prompt is a list, not a string"
    "row not summing to 1" 'd["attention"][0][0][1][:2] = [0.5, 0.1]'
    "attention[0][0][1] sums to 0.6 over keys 0..1, not 1 (a row of softmax weights)"
    "weight above 1" 'd["attention"][0][0][1][:2] = [1.5, -0.5]'
    "attention[0][0][1][0] is 1.5, outside 0..1"
    "weight negative" 'd["attention"][3][2][1][:2] = [-0.25, 1.25]'
    "attention[3][2][1][0] is -0.25, outside 0..1"
    "masked weight" 'd["attention"][0][0][0][:2] = [0.5, 0.5]'
    "attention[0][0][0][1] is 0.5, but key 1 comes after query 0: a masked weight must be 0"
    "weight NaN" 'd["attention"][0][0][0][0] = float("nan")' "not JSON (NaN is not a JSON number)"
    "weight -Infinity" 'd["attention"][1][1][1][1] = float("-inf")'
    "not JSON (-Infinity is not a JSON number)"
    "weight 1e999" 't = json.dumps(d).replace("[[[[1, ", "[[[[1e999, ", 1)'
    "not JSON for this page (1e999 is too large for a double)"
    "an integer of 5000 digits" 't = json.dumps(d).replace("[[[[1, ", "[[[[" + "1" * 5000 + ", ", 1)'
    "not JSON for this page (an integer of 5000 digits)"
    "weight a string" 'd["attention"][0][0][0][0] = "1"' 'attention[0][0][0][0] is "1", not a number'
    "weight null" 'd["attention"][5][7][6][6] = None' "attention[5][7][6][6] is null, not a number"
    "weight a list" 'd["attention"][0][0][0][0] = [1]' "attention[0][0][0][0] is a list, not a number"
    "ragged query rows" 'd["attention"][2][3].pop()'
    "attention[2][3] has 6 query rows, expected 7 (one per label)"
    "ragged weights" 'd["attention"][0][0][3].pop()'
    "attention[0][0][3] has 6 weights, expected 7 (one per label)"
    "a head missing" 'd["attention"][1].pop()' "attention[1] has 7 heads, expected 8 (n_heads)"
    "a label not a string" 'd["labels"][2] = 5' "labels[2] is 5, not a string"
    "a label null" 'd["labels"][0] = None' "labels[0] is null, not a string"
    "labels a string" 'd["labels"] = "abc"' 'labels is "abc", expected a non-empty list of strings'
    "labels empty" 'd["labels"] = []' "labels is an empty list, expected a non-empty list of strings"
    "a label more than attention has" 'd["labels"].append("x"); del d["tokens"]'
    "attention[0][0] has 7 query rows, expected 8 (one per label)"
    "a token negative" 'd["tokens"][1] = -1' "tokens[1] is -1, not a token id (an integer from 0)"
    "a token missing" 'd["tokens"].pop()' "tokens has 6 ids, expected 7 (one per label)"
    "a query short" 'd["queries"][0][0][0].pop()'
    "queries[0][0][0] has 23 values, expected 24 (head_dim)"
    "a kv head missing" 'd["keys"][4].pop()' "keys[4] has 7 kv heads, expected 8 (n_kv_heads)"
    "a key NaN" 'd["keys"][1][2][3][4] = float("nan")' "not JSON (NaN is not a JSON number)"
    "queries without keys" 'del d["keys"]' "queries without keys (run --attn-dump writes both)"
    "queries without head_dim" 'del d["head_dim"]'
    "queries and keys without head_dim (run --attn-dump writes all three)"
    "a key twice" 't = json.dumps(d).replace("{", "{\"n_layers\": 6, ", 1)'
    'the key "n_layers" appears twice in one object'
    "an array" 'd = [d]' "not an attention dump (a JSON array, not an object)"
    "null" 'd = None' "not an attention dump (JSON null, not an object)"
    "not JSON" 'b = b"hello\n"' "not JSON (Expecting value at line 1 column 1)"
    "cut short" 't = json.dumps(d)[:300]'
    "not JSON (Expecting ',' delimiter at line 1 column 301)"
    "not UTF-8" 'b = b"{\"model\": \"\xff\"}"' "not JSON (not UTF-8 text)"
    "empty" 'b = b""' "empty file, not an attention dump"
    "white space only" 'b = b"\n  \n"' "only white space, not an attention dump"
    "nested too deeply" 'b = b"[" * 100000' "not JSON for this page (arrays or objects nested too deeply)"
)
mkdir "$scratch/bad"
printf '%s\0' "${cases[@]}" | /usr/bin/python3 -c '
import json, sys
fields = sys.stdin.buffer.read().split(b"\0")[:-1]
with open(sys.argv[1], encoding="utf-8") as f:
    base = f.read()
for i in range(0, len(fields), 3):
    scope = {"d": json.loads(base), "json": json}
    exec(fields[i + 1].decode(), scope)
    data = scope.get("b")
    if data is None:
        data = scope.get("t", json.dumps(scope["d"], ensure_ascii=False)).encode()
    with open(f"{sys.argv[2]}/{i // 3}.json", "wb") as f:
        f.write(data)
' "$base" "$scratch/bad"
for ((i = 0; i < ${#cases[@]}; i += 3)); do
    file=$scratch/bad/$((i / 3)).json
    refuse "${cases[i]}" 1 "explore: $file: ${cases[i + 2]}" scripts/explore.sh -o "$refused" "$file"
done

# Files that are no dump at all; a FIFO must be refused at once, not waited on.
mkfifo "$scratch/fifo.json" "$scratch/fifo.bin"
mkdir "$scratch/dir.json" "$scratch/dir.bin"
truncate -s 600M "$scratch/huge.json"
refuse "a FIFO as dump" 1 "explore: $scratch/fifo.json: not a regular file (a FIFO, device or socket)" \
    scripts/explore.sh -o "$refused" "$scratch/fifo.json"
refuse "a FIFO as model" 1 "explore: $scratch/fifo.bin: not a regular file (a FIFO, device or socket)" \
    scripts/explore.sh -o "$refused" -p "$PROMPT" "$scratch/fifo.bin"
refuse "a directory as dump" 1 "explore: $scratch/dir.json: is a directory" \
    scripts/explore.sh -o "$refused" "$scratch/dir.json"
refuse "a directory as model" 1 "explore: $scratch/dir.bin: is a directory" \
    scripts/explore.sh -o "$refused" -p "$PROMPT" "$scratch/dir.bin"
refuse "a missing dump" 1 "explore: $scratch/none.json: no such file" \
    scripts/explore.sh -o "$refused" "$scratch/none.json"
refuse "a 600 MiB dump" 1 "explore: $scratch/huge.json: 629145600 bytes; explore.sh reads dumps of at most 512 MiB (a larger page would not open in a browser)" \
    scripts/explore.sh -o "$refused" "$scratch/huge.json"
rm "$scratch/huge.json"
# One bad dump among good ones refuses the page, before ./run runs on any model.
refuse "a bad dump after a model" 1 "explore: $scratch/bad/0.json: ${cases[2]}" \
    env RUN_BINARY=/bin/false scripts/explore.sh -o "$refused" -p "$PROMPT" "${MODELS[0]}" "$base" \
    "$scratch/bad/0.json"
refuse "./run fails: exit 1" 1 "explore: $scratch/bad.bin: ./run failed (run: $scratch/bad.bin: file is 17 bytes, too short for any checkpoint header)" \
    scripts/explore.sh -o "$refused" -p "$PROMPT" "$scratch/bad.bin"

# OUT that is an input or the template, or a directory, is refused even with --force; the
# input is left as it was.
cp "$base" "$scratch/input.json"
ln -s input.json "$scratch/link.html"
refuse "OUT is the input" 2 "explore: $scratch/input.json is an input of this page ($scratch/input.json); write the page somewhere else" \
    scripts/explore.sh --force -o "$scratch/input.json" "$scratch/input.json"
refuse "OUT is a link to the input" 2 "explore: $scratch/link.html is an input of this page ($scratch/input.json); write the page somewhere else" \
    scripts/explore.sh --force -o "$scratch/link.html" "$scratch/input.json"
# (through a link, so that a regression replaces the link, not the template)
ln -s "$PWD/scripts/explorer.html" "$scratch/template.html"
refuse "OUT is the template" 2 "explore: $scratch/template.html is the page template scripts/explorer.html; write the page somewhere else" \
    scripts/explore.sh --force -o "$scratch/template.html" "$scratch/input.json"
refuse "OUT is a directory" 2 "explore: $scratch/dir.json is a directory; -o names the page to write" \
    scripts/explore.sh --force -o "$scratch/dir.json" "$scratch/input.json"
if cmp -s "$base" "$scratch/input.json" && [ -z "$(ls -A "$scratch/dir.json")" ]; then
    pass "an input named as OUT left as it was"
else
    fail "an input named as OUT changed"
fi
# A refused dump leaves an existing OUT as it was, even with --force; a page written leaves no
# temporary file beside it.
mkdir "$scratch/outdir"
cp "$page" "$scratch/outdir/page.html"
refuse "a bad dump with --force" 1 "explore: $scratch/bad/0.json: ${cases[2]}" \
    scripts/explore.sh --force -o "$scratch/outdir/page.html" "$scratch/bad/0.json"
if cmp -s "$page" "$scratch/outdir/page.html"; then
    pass "a refused dump left OUT as it was"
else
    fail "a refused dump changed OUT"
fi
scripts/explore.sh --force -o "$scratch/outdir/page.html" "$base" >/dev/null
scripts/explore.sh -o "$scratch/outdir/new.html" "$base" >/dev/null
beside=$(find "$scratch/outdir" -mindepth 1 -printf "%f\n" | sort | tr "\n" " ")
if [ "$beside" = "new.html page.html " ]; then
    pass "no temporary file left beside OUT"
else
    fail "files beside OUT: $beside"
fi

if ! command -v chromium >/dev/null; then
    echo "SKIPPED the checks in the browser: chromium not found (scripts/install-deps.sh test)"
    echo "test_explorer: $((checks - failures)) of $checks checks passed"
    [ $failures -eq 0 ]
    exit
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

# --- pages edited by hand after explore.sh wrote them ------------------------------------------

# edit_page OUT STATEMENT: the page of the three models with STATEMENT applied to its data, d
# (a list of dumps), or with t, the data's text, set.
edit_page() {
    /usr/bin/python3 -c '
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    html = f.read()
start = html.index("const MODELS = ") + len("const MODELS = ")
end = html.index(";</script>", start)
scope = {"d": json.loads(html[start:end]), "json": json}
exec(sys.argv[3], scope)
text = scope.get("t", json.dumps(scope["d"], ensure_ascii=False))
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write(html[:start] + text + html[end:])
' "$page" "$1" "$2"
}

edited=(
    "n_layers 100" 'd[1]["n_layers"] = 100' "model 1: attention has 6 layers, expected 100 (n_layers)"
    "attention a string" 'd[2]["attention"] = "x"' 'model 2: attention is "x", expected a list of 6 layers'
    "a label not a string" 'd[0]["labels"][2] = 5' "model 0: labels[2] is 5, not a string"
    "a weight NaN" 'd[0]["attention"][0][0][0][0] = float("nan")'
    "model 0: attention[0][0][0][0] is NaN, not a number"
    "a row not summing to 1" 'd[1]["attention"][2][3][1][:2] = [0.5, 0.1]'
    "model 1: attention[2][3][1] sums to 0.6 over keys 0..1, not 1 (a row of softmax weights)"
    "no models" 'd = {}' "the data is an object, not a non-empty list of models"
)
for ((i = 0; i < ${#edited[@]}; i += 3)); do
    edit_page "$scratch/edited.html" "${edited[i + 1]}"
    message="This page's data is malformed (edited after scripts/explore.sh wrote it?): ${edited[i + 2]}. Write the page again with scripts/explore.sh."
    if dump_dom "file://$scratch/edited.html" "$scratch/dom.html" &&
        $CHECK refused "$scratch/dom.html" "$message"; then
        pass "edited page: ${edited[i]}"
    else
        fail "edited page: ${edited[i]}"
    fi
done
# Data that no longer parses: the browser reports the syntax error, the page says what happened.
edit_page "$scratch/edited.html" 't = json.dumps(d)[:-20]'
browse --dump-dom "file://$scratch/edited.html" >"$scratch/dom.html"
if $CHECK refused "$scratch/dom.html" "This page's data does not parse as JavaScript: it was edited after scripts/explore.sh wrote it. Write the page again with scripts/explore.sh."; then
    pass "edited page: data cut short"
else
    fail "edited page: data cut short"
fi

echo "test_explorer: $((checks - failures)) of $checks checks passed"
[ $failures -eq 0 ]
