#!/usr/bin/env bash
# Writes one self-contained HTML page that shows what attention does with a prompt, for one or
# more models side by side:
#
#   scripts/explore.sh -o attention.html -p "Fear is the crown" \
#       model/shakespeare-mha.bin model/shakespeare-gqa.bin model/shakespeare-mqa.bin
#
# For each MODEL it runs `./run MODEL -p TEXT --attn-dump FILE` and puts the dumps into the
# template scripts/explorer.html, in place of its /*DATA*/ marker. A DUMP.json argument (a file
# that --attn-dump wrote) is taken as it is, without running anything; -p is needed only for
# models. The page opens straight from disk and fetches nothing.
#
# Environment: RUN_BINARY (default ./run, built with make build).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: scripts/explore.sh -o OUT.html -p TEXT [--force] MODEL|DUMP.json [MODEL|DUMP.json...]"
RUN_BINARY=${RUN_BINARY:-$repo/run}
template=$repo/scripts/explorer.html

die() {
    echo "explore: $*" >&2
    exit 2
}

out=""
prompt=""
prompt_given=0
force=0
inputs=()
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        echo "$usage"
        exit 0
        ;;
    -o | -p)
        [ $# -ge 2 ] || die "$1 needs a value ($usage)"
        if [ "$1" = -o ]; then out=$2; else prompt=$2 prompt_given=1; fi
        shift 2
        ;;
    --force)
        force=1
        shift
        ;;
    --)
        shift
        inputs+=("$@")
        break
        ;;
    -*) die "unknown option $1 ($usage)" ;;
    *)
        inputs+=("$1")
        shift
        ;;
    esac
done

[ -n "$out" ] || die "-o OUT.html is required ($usage)"
[ ${#inputs[@]} -gt 0 ] || die "no model given ($usage)"
if [ -e "$out" ] && [ $force -eq 0 ]; then
    die "$out exists; pass --force to overwrite it"
fi
[ -d "$(dirname "$out")" ] || die "$(dirname "$out"): no such directory"
needs_run=0
for input in "${inputs[@]}"; do
    [ -f "$input" ] || die "$input: no such file"
    case "$input" in *.json) ;; *) needs_run=1 ;; esac
done
if [ $needs_run -eq 1 ]; then
    if [ $prompt_given -eq 0 ] || [ -z "$prompt" ]; then
        die "-p TEXT is required ($usage)"
    fi
    [ -x "$RUN_BINARY" ] || die "$RUN_BINARY not found: build it with make build"
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

dumps=()
for input in "${inputs[@]}"; do
    case "$input" in
    *.json)
        dumps+=("$input")
        continue
        ;;
    esac
    dump=$scratch/${#dumps[@]}.json
    if ! "$RUN_BINARY" "$input" -p "$prompt" --attn-dump "$dump" -q >/dev/null 2>"$scratch/stderr"; then
        reason=$(grep -m1 . "$scratch/stderr" || true)
        die "./run failed on $input: ${reason:-no message}"
    fi
    dumps+=("$dump")
done

# Fills in the template: the JSON goes inside a <script> element, so "</" (which could close
# it, as in a prompt holding "</script>") is written "<\/", and "<!--" as "<\u0021--"; both read
# back as the same strings in JavaScript.
/usr/bin/python3 - "$template" "$scratch/page.html" "$prompt" "${dumps[@]}" <<'EOF'
import json
import sys

template, page, prompt, dumps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
models = []
for path in dumps:
    try:
        with open(path, encoding="utf-8") as f:
            dump = json.load(f)
        for field in ("model", "n_layers", "n_heads", "n_kv_heads", "labels", "attention"):
            dump[field]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"explore: {path}: not an attention dump from run --attn-dump ({e})")
    dump.setdefault("prompt", prompt)
    models.append(dump)

data = json.dumps(models, ensure_ascii=False, separators=(",", ":"))
data = data.replace("</", "<\\/").replace("<!--", "<\\u0021--")
with open(template, encoding="utf-8") as f:
    html = f.read()
marker = "/*DATA*/null"
if html.count(marker) != 1:
    sys.exit(f"explore: {template}: expected one {marker} marker")
with open(page, "w", encoding="utf-8") as f:
    f.write(html.replace(marker, data))
EOF
mv -f "$scratch/page.html" "$out"
echo "explore: wrote $out"
