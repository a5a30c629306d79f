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
# Every dump is checked against the schema write_attention_json in run.c writes before anything
# is written: its sizes, the shape of every array, that every weight is a finite number in 0..1,
# that each query's weights sum to 1 and that masked (later) keys weigh 0. The page is written
# under a temporary name next to OUT and renamed to OUT only when complete; an existing OUT is
# replaced only with --force, and OUT may not be one of the inputs or the template.
#
# Exit status: 0 when the page is written; 1 on bad input (a dump or model that is missing, not a
# regular file or malformed, ./run failing on a model); 2 on bad usage (a flag, -o or -p missing,
# an OUT that exists or that names an input). Every error is one line on stderr,
# "explore: FILE: what is wrong".
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
# OUT may not be a file the page is made from (even through a link): it would be replaced.
for input in "${inputs[@]}" "$template"; do
    if [ "$out" = "$input" ] || [ "$out" -ef "$input" ]; then
        if [ "$input" = "$template" ]; then
            die "$out is the page template scripts/explorer.html; write the page somewhere else"
        fi
        die "$out is an input of this page ($input); write the page somewhere else"
    fi
done
if [ -d "$out" ]; then
    die "$out is a directory; -o names the page to write"
fi
if { [ -e "$out" ] || [ -L "$out" ]; } && [ $force -eq 0 ]; then
    die "$out exists; pass --force to overwrite it"
fi
[ -d "$(dirname "$out")" ] || die "$(dirname "$out"): no such directory"
needs_run=0
for input in "${inputs[@]}"; do
    case "$input" in *.json) ;; *) needs_run=1 ;; esac
done
if [ $needs_run -eq 1 ]; then
    if [ $prompt_given -eq 0 ] || [ -z "$prompt" ]; then
        die "-p TEXT is required ($usage)"
    fi
    [ -x "$RUN_BINARY" ] || die "$RUN_BINARY not found: build it with make build"
fi

# The rest, in Python: every DUMP.json is read and checked first, before ./run runs on any
# model; each dump ./run writes is checked the same way; only then is the page written. The JSON
# goes inside a <script> element, so "</" (which could close it, as in a prompt holding
# "</script>") is written "<\/", and "<!--" as "<\u0021--"; both read back as the same strings
# in JavaScript.
export RUN_BINARY
exec /usr/bin/python3 - "$template" "$out" "$force" "$prompt" "${inputs[@]}" <<'EOF'
import json
import math
import os
import signal
import stat
import subprocess
import sys
import tempfile

MAX_BYTES = 512 << 20  # a page larger than this does not open in a browser
TOLERANCE = 1e-3  # how far a query's weights may sum from 1 (run writes them with %.6g)
template, out, force, prompt, inputs = (sys.argv[1], sys.argv[2], sys.argv[3] == "1",
                                        sys.argv[4], sys.argv[5:])


class Refusal(Exception):
    """One line for stderr, after "explore: "; status is the exit status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class Malformed(Exception):
    """What is wrong with a dump, without its name."""


def on_signal(number, frame):
    raise SystemExit(128 + number)  # through the finally clauses that remove temporary files


for number in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, on_signal)


def describe(value):
    """A JSON value as a message shows it: short, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:38] + ("…\"" if isinstance(value, str) else "…")


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# ---------------------------------------------------------------------------------------------
# Reading: a regular file of UTF-8 JSON, no NaN or infinity, no key twice.


def reject_constant(name):
    raise Malformed(f"not JSON ({name} is not a JSON number)")


def finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise Malformed(f"not JSON for this page ({text} is too large for a double)")
    return value


def short_int(text):
    digits = len(text.lstrip("-"))
    if digits > 30:
        raise Malformed(f"not JSON for this page (an integer of {digits} digits)")
    return int(text)


def unique_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise Malformed(f"the key {describe(key)} appears twice in one object")
        seen[key] = value
    return seen


def open_regular(path):
    """path opened for reading (without waiting on a FIFO), or Malformed naming why not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise Malformed("no such file") from None
    except IsADirectoryError:
        raise Malformed("is a directory") from None
    except OSError as e:
        raise Malformed(f"cannot read it ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Malformed("is a directory" if stat.S_ISDIR(mode) else
                        "not a regular file (a FIFO, device or socket)")
    return os.fdopen(fd, "rb")


def read_json(path):
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BYTES:
            raise Malformed(f"{size} bytes; explore.sh reads dumps of at most {MAX_BYTES >> 20} "
                            "MiB (a larger page would not open in a browser)")
        try:
            data = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise Malformed(f"cannot read it ({e.strerror})") from None
    if not data.strip():
        raise Malformed("empty file, not an attention dump" if not data else
                        "only white space, not an attention dump")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("not JSON (not UTF-8 text)") from None
    try:
        return json.loads(text, parse_constant=reject_constant, parse_float=finite_float,
                          parse_int=short_int, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise Malformed(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise Malformed("not JSON for this page (arrays or objects nested too deeply)") from None


# ---------------------------------------------------------------------------------------------
# The schema of write_attention_json in run.c


def check_array(name, value, levels, leaf):
    """value must be nested lists of the sizes levels gives, (count, unit, why) outermost first;
    leaf(path, x) checks each innermost value."""
    def walk(path, value, depth):
        count, unit, why = levels[depth]
        if not isinstance(value, list):
            raise Malformed(f"{path} is {describe(value)}, expected a list of {count} {unit}")
        if len(value) != count:
            raise Malformed(f"{path} has {len(value)} {unit}, expected {count} ({why})")
        for i, item in enumerate(value):
            if depth + 1 < len(levels):
                walk(f"{path}[{i}]", item, depth + 1)
            else:
                leaf(f"{path}[{i}]", item)
    walk(name, value, 0)


def check_number(path, value):
    if not is_number(value):
        raise Malformed(f"{path} is {describe(value)}, not a number")


def check_weights(attention, n):
    """Each query row: weights in 0..1, 0 after the query (the causal mask), sum 1."""
    for layer, heads in enumerate(attention):
        for head, rows in enumerate(heads):
            for query, row in enumerate(rows):
                path = f"attention[{layer}][{head}][{query}]"
                for key, w in enumerate(row):
                    if not 0.0 <= w <= 1.0:
                        raise Malformed(f"{path}[{key}] is {describe(w)}, outside 0..1")
                    if key > query and w != 0:
                        raise Malformed(f"{path}[{key}] is {describe(w)}, but key {key} comes "
                                        f"after query {query}: a masked weight must be 0")
                total = math.fsum(row[:query + 1])
                if abs(total - 1.0) > TOLERANCE:
                    raise Malformed(f"{path} sums to {total:.6g} over keys 0..{query}, not 1 "
                                    "(a row of softmax weights)")


REQUIRED = ("model", "n_layers", "n_heads", "n_kv_heads", "labels", "attention")


def check_dump(dump):
    """Malformed naming the first thing in dump that is not as run --attn-dump writes it."""
    if not isinstance(dump, dict):
        kind = "JSON null" if dump is None else "a JSON " + (
            "array" if isinstance(dump, list) else "string" if isinstance(dump, str) else
            "boolean" if isinstance(dump, bool) else "number")
        raise Malformed(f"not an attention dump ({kind}, not an object)")
    missing = [key for key in REQUIRED if key not in dump]
    if missing:
        raise Malformed(f"not an attention dump: no {', '.join(missing)}")
    for key in ("model", "kind", "prompt"):
        if key in dump and not isinstance(dump[key], str):
            raise Malformed(f"{key} is {describe(dump[key])}, not a string")
    for key in ("n_layers", "n_heads", "n_kv_heads", "group_size", "head_dim"):
        if key in dump and not is_count(dump[key]):
            raise Malformed(f"{key} is {describe(dump[key])}, not a positive integer")
    n_layers, n_heads, n_kv_heads = dump["n_layers"], dump["n_heads"], dump["n_kv_heads"]
    if n_heads % n_kv_heads:
        raise Malformed(f"n_kv_heads {n_kv_heads} does not divide n_heads {n_heads}")
    group = n_heads // n_kv_heads
    if "group_size" in dump and dump["group_size"] != group:
        raise Malformed(f"group_size is {dump['group_size']}, but n_heads {n_heads} / "
                        f"n_kv_heads {n_kv_heads} is {group}")
    kind = "MHA" if n_kv_heads == n_heads else "MQA" if n_kv_heads == 1 else "GQA"
    if "kind" in dump and dump["kind"] != kind:
        raise Malformed(f"kind is {describe(dump['kind'])}, but n_heads {n_heads} and "
                        f"n_kv_heads {n_kv_heads} make {kind}")

    labels = dump["labels"]
    if not isinstance(labels, list) or not labels:
        raise Malformed(f"labels is {describe(labels)}, expected a non-empty list of strings")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise Malformed(f"labels[{i}] is {describe(label)}, not a string")
    n = len(labels)
    if "tokens" in dump:
        tokens = dump["tokens"]
        if not isinstance(tokens, list):
            raise Malformed(f"tokens is {describe(tokens)}, expected a list of {n} token ids")
        if len(tokens) != n:
            raise Malformed(f"tokens has {len(tokens)} ids, expected {n} (one per label)")
        for i, token in enumerate(tokens):
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise Malformed(f"tokens[{i}] is {describe(token)}, not a token id "
                                "(an integer from 0)")

    layers = (n_layers, "layers", "n_layers")
    per_label = "one per label"
    check_array("attention", dump["attention"],
                [layers, (n_heads, "heads", "n_heads"), (n, "query rows", per_label),
                 (n, "weights", per_label)], check_number)
    check_weights(dump["attention"], n)

    # queries[layer][head][position] and keys[layer][kv head][position], head_dim values each.
    if ("queries" in dump) != ("keys" in dump):
        have, lack = ("queries", "keys") if "queries" in dump else ("keys", "queries")
        raise Malformed(f"{have} without {lack} (run --attn-dump writes both)")
    if "queries" in dump:
        if "head_dim" not in dump:
            raise Malformed("queries and keys without head_dim (run --attn-dump writes all three)")
        values = (dump["head_dim"], "values", "head_dim")
        check_array("queries", dump["queries"],
                    [layers, (n_heads, "heads", "n_heads"), (n, "vectors", per_label), values],
                    check_number)
        check_array("keys", dump["keys"],
                    [layers, (n_kv_heads, "kv heads", "n_kv_heads"), (n, "vectors", per_label),
                     values], check_number)


def load_dump(path, name):
    """The dump at path, checked; Refusal naming name when it is not usable."""
    try:
        dump = read_json(path)
        check_dump(dump)
    except Malformed as e:
        raise Refusal(f"{name}: {e}") from None
    return dump


# ---------------------------------------------------------------------------------------------


def run_model(model, scratch, index):
    """./run's dump of model on the prompt, checked."""
    try:
        open_regular(model).close()
    except Malformed as e:
        raise Refusal(f"{model}: {e}") from None
    path = os.path.join(scratch, f"{index}.json")
    run = os.environ["RUN_BINARY"]
    result = subprocess.run([run, model, "-p", prompt, "--attn-dump", path, "-q"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise Refusal(f"{model}: ./run failed ({lines[0] if lines else 'no message'})")
    return load_dump(path, f"{model} (./run's --attn-dump)")


def page_html(models):
    try:
        with open(template, encoding="utf-8") as f:
            html = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise Refusal(f"{template}: cannot read the template ({e})") from None
    marker = "/*DATA*/null"
    if html.count(marker) != 1:
        raise Refusal(f"{template}: expected one {marker} marker")
    data = json.dumps(models, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data = data.replace("</", "<\\/").replace("<!--", "<\\u0021--")
    data = data.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return html.replace(marker, data)


def publish(html):
    """Writes html under a temporary name next to out, then puts it in place: without --force
    with a hard link, which fails if out appeared meanwhile; with --force by renaming over it."""
    directory = os.path.dirname(out) or "."
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp",
                                         dir=directory)
    except OSError as e:
        raise Refusal(f"{out}: cannot write it ({e.strerror})") from None
    try:
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fd, 0o666 & ~mask)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(html)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise Refusal(f"{out}: cannot write it ({e.strerror})") from None
        if force:
            try:
                os.replace(temporary, out)
            except IsADirectoryError:
                raise Refusal(f"{out} is a directory; -o names the page to write", 2) from None
            except OSError as e:
                raise Refusal(f"{out}: cannot write it ({e.strerror})") from None
            return
        try:
            os.link(temporary, out)
        except FileExistsError:
            raise Refusal(f"{out} exists; pass --force to overwrite it", 2) from None
        except OSError:  # a file system without hard links
            if os.path.lexists(out):
                raise Refusal(f"{out} exists; pass --force to overwrite it", 2) from None
            try:
                os.replace(temporary, out)
            except OSError as e:
                raise Refusal(f"{out}: cannot write it ({e.strerror})") from None
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def main():
    models = [None] * len(inputs)
    for i, path in enumerate(inputs):  # the dumps given first: no ./run before they pass
        if path.endswith(".json"):
            models[i] = load_dump(path, path)
    with tempfile.TemporaryDirectory(prefix="explore.") as scratch:
        for i, path in enumerate(inputs):
            if not path.endswith(".json"):
                models[i] = run_model(path, scratch, i)
    for dump in models:
        dump.setdefault("prompt", prompt)
    publish(page_html(models))
    print(f"explore: wrote {out}")


try:
    main()
except Refusal as e:
    print(f"explore: {e}", file=sys.stderr)
    sys.exit(e.status)
except KeyboardInterrupt:
    sys.exit(130)
EOF
