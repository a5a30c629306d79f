#!/bin/sh
# Hostile inputs that only a whole process can meet: a FIFO where a file is expected, a huge
# sparse file, a model truncated while it is mapped, output to a full disk, an output file that
# is one of the run's inputs, and a run that fails halfway through writing --logits. Each case
# checks the exit status and the one line on stderr; a hang counts as a failure (every command
# runs under timeout).
#
# Usage: tests/test_hostile.sh          (make test runs it; RUN_BINARY names another build)
set -u
cd "$(dirname "$0")/.." || exit 1

binary=${RUN_BINARY:-./run}
model=model/shakespeare-gqa.bin
if [ ! -x "$binary" ]; then
    echo "hostile: $binary is not built" >&2
    exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT INT TERM
passed=0
failed=0

ok() {
    passed=$((passed + 1))
    echo "ok      $1"
}
not_ok() {
    failed=$((failed + 1))
    echo "FAILED  $1: $2"
}

# expect NAME STATUS NEEDLE COMMAND...: runs COMMAND (stderr captured) with a 20 s limit, and
# checks its exit status and that stderr is one line containing NEEDLE.
expect() {
    name=$1
    status=$2
    needle=$3
    shift 3
    timeout 20 "$@" >"$scratch/out" 2>"$scratch/err" </dev/null
    got=$?
    lines=$(wc -l <"$scratch/err")
    if [ "$got" -eq 124 ]; then
        not_ok "$name" "hung (killed after 20 s)"
    elif [ "$got" -ne "$status" ]; then
        not_ok "$name" "exit $got, expected $status; stderr: $(head -c 300 "$scratch/err")"
    elif ! grep -qF -- "$needle" "$scratch/err" || [ "$lines" -ne 1 ]; then
        not_ok "$name" "stderr lacks '$needle' or is not one line: $(head -c 300 "$scratch/err")"
    else
        ok "$name"
    fi
}

# expect_quiet NAME COMMAND...: COMMAND exits 0 with nothing on stderr.
expect_quiet() {
    name=$1
    shift
    timeout 20 "$@" >"$scratch/out" 2>"$scratch/err" </dev/null
    got=$?
    if [ "$got" -eq 0 ] && [ ! -s "$scratch/err" ]; then
        ok "$name"
    else
        not_ok "$name" "exit $got; stderr: $(head -c 300 "$scratch/err")"
    fi
}

# A FIFO with no writer: open() would wait forever.
mkfifo "$scratch/fifo"
expect "FIFO as MODEL" 1 "is not a regular file" "$binary" "$scratch/fifo" -p hi
expect "FIFO as -z" 1 "is not a regular file" "$binary" "$model" -z "$scratch/fifo" -p hi
expect "FIFO as --eval" 1 "is not a regular file" "$binary" "$model" --eval "$scratch/fifo"

# A 2 GiB sparse file: refused by its size, before a byte is read.
truncate -s 2G "$scratch/sparse"
start=$(date +%s)
expect "2 GiB --eval" 1 "--eval reads at most 1024 MiB" "$binary" "$model" --eval "$scratch/sparse"
expect "2 GiB -z" 1 "-z reads at most 256 MiB" "$binary" "$model" -z "$scratch/sparse" -p hi
elapsed=$(($(date +%s) - start))
if [ "$elapsed" -le 5 ]; then ok "huge files refused at once (${elapsed} s)"; else
    not_ok "huge files refused at once" "took $elapsed s"; fi

# An output file that is an input of the run: refused, and the model left intact.
cp "$model" "$scratch/model.bin"
before=$(cksum <"$scratch/model.bin")
expect "--logits naming the model" 2 "an input of this run" \
    "$binary" "$scratch/model.bin" -p hi -n 2 --logits "$scratch/model.bin" --force
expect "--attn-dump naming the model" 2 "an input of this run" \
    "$binary" "$scratch/model.bin" -p hi --attn-dump "$scratch/model.bin" --force
ln -s model.bin "$scratch/link.bin"
expect "--logits naming the model through a link" 2 "an input of this run" \
    "$binary" "$scratch/model.bin" -p hi -n 2 --logits "$scratch/link.bin" --force
head -c 3000 "$model" >/dev/null
if [ "$(cksum <"$scratch/model.bin")" = "$before" ]; then ok "model untouched"; else
    not_ok "model untouched" "the model file changed"; fi

# A model truncated by another program while the run reads it: SIGBUS becomes one line.
head -c 300000 ../shared/data/tinyshakespeare.txt >"$scratch/text.txt" 2>/dev/null ||
    head -c 300000 README.md >"$scratch/text.txt"
timeout 60 "$binary" "$scratch/model.bin" --eval "$scratch/text.txt" --threads 1 \
    >"$scratch/out" 2>"$scratch/err" &
runner=$!
sleep 0.5
truncate -s 4096 "$scratch/model.bin"
wait "$runner"
got=$?
if [ "$got" -eq 1 ] && grep -q "changed while it was being read" "$scratch/err" &&
    [ "$(wc -l <"$scratch/err")" -eq 1 ]; then
    ok "model truncated during a run"
else
    not_ok "model truncated during a run" "exit $got; stderr: $(head -c 300 "$scratch/err")"
fi

# Output into a full disk: one line naming the error, exit 1, for every mode.
head -c 20000 "$scratch/text.txt" >"$scratch/short.txt"
if [ -w /dev/full ]; then
    for mode in "--info" "--encode -p hello" "-p hello --attn 0:0" "-p hello --explain 1" \
        "--eval $scratch/short.txt" "-p hello -n 30 -t 0"; do
        # shellcheck disable=SC2086 # the mode's words are separate arguments
        timeout 60 "$binary" "$model" $mode >/dev/full 2>"$scratch/err"
        got=$?
        if [ "$got" -eq 1 ] && grep -q "No space left on device" "$scratch/err" &&
            [ "$(wc -l <"$scratch/err")" -eq 1 ]; then
            ok "$mode > /dev/full"
        else
            not_ok "$mode > /dev/full" "exit $got; stderr: $(head -c 300 "$scratch/err")"
        fi
    done
    long=$(head -c 300 README.md | tr -cd 'a-zA-Z \n')
    expect "--attn-dump /dev/full" 1 "cannot write /dev/full: No space left on device" \
        "$binary" "$model" -p "$long" --attn-dump /dev/full --force
else
    echo "SKIPPED /dev/full cases: /dev/full is not writable here"
fi

# A run that fails after writing some --logits rows leaves no file behind, and an existing file
# (with --force) keeps its old bytes. rms_att of layer 0 set to 3e38 overflows float32.
/usr/bin/python3 - "$model" "$scratch/overflow.bin" <<'EOF'
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
dim, = struct.unpack_from("<I", data, 8)
vocab, = struct.unpack_from("<I", data, 32)
weights, = struct.unpack_from("<Q", data, 80)
rms_att = weights + vocab * dim * 4  # after the token embedding
struct.pack_into("<%df" % dim, data, rms_att, *([3e38] * dim))
open(sys.argv[2], "wb").write(data)
EOF
expect "overflowing weights, generation" 1 "overflow float32" \
    "$binary" "$scratch/overflow.bin" -p hello -n 5 --logits "$scratch/new.f32"
if [ ! -e "$scratch/new.f32" ] && [ -z "$(find "$scratch" -name 'new.f32.tmp-*')" ]; then
    ok "failed run leaves no --logits file"
else
    not_ok "failed run leaves no --logits file" "$(ls "$scratch")"
fi
echo keep >"$scratch/old.f32"
expect "overflowing weights, --force over a file" 1 "overflow float32" \
    "$binary" "$scratch/overflow.bin" -p hello -n 5 --logits "$scratch/old.f32" --force
if [ "$(cat "$scratch/old.f32")" = keep ]; then ok "failed run keeps the old --logits file"; else
    not_ok "failed run keeps the old --logits file" "it changed"; fi
expect "overflowing weights, --eval" 1 "overflow float32" \
    "$binary" "$scratch/overflow.bin" --eval "$scratch/short.txt"
expect "overflowing weights, --attn" 1 "overflow float32" \
    "$binary" "$scratch/overflow.bin" -p hello --attn 0:0

# ---- Round 3: closed descriptors, signals, races, ignored flags, messages

# A closed stdout must not hand fd 1 to --logits' file: exactly the logits land there.
rm -f "$scratch/closed.f32"
timeout 20 "$binary" "$model" -p "Fear is" -n 20 -t 0 -q --logits "$scratch/closed.f32" >&- 2>/dev/null
size=$(stat -c %s "$scratch/closed.f32" 2>/dev/null || echo 0)
# BOS and 3 prompt tokens, then 20 generated: 23 rows of the 1024 logits
if [ "$size" -eq $((23 * 1024 * 4)) ]; then ok "closed stdout: --logits holds only logits"; else
    not_ok "closed stdout: --logits holds only logits" "$size bytes, expected $((23 * 1024 * 4))"; fi
timeout 20 "$binary" "$model" -p "Fear is" -n 5 -t 0 -q --logits "$scratch/closed2.f32" <&- 2>&- \
    >/dev/null
[ $? -eq 0 ] && ok "closed stdin and stderr: the run completes" ||
    not_ok "closed stdin and stderr: the run completes" "exit $?"

# SIGINT, SIGTERM and SIGHUP while --logits is written: the signal's exit, no temporary file.
# A race against the run: the signal is sent as soon as the temporary file appears.
/usr/bin/python3 - "$binary" "$model" "$scratch" <<'PY' && ok "signals leave no temporary file" || not_ok "signals leave no temporary file" "see above"
import glob, os, signal, subprocess, sys, time
binary, model, scratch = sys.argv[1:]
failures = 0
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    for attempt in range(40):
        out = os.path.join(scratch, f"sig{int(sig)}.f32")
        p = subprocess.Popen([binary, model, "-p", "Fear", "-n", "250", "--threads", "1",
                              "--logits", out], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, restore_signals=True)
        while p.poll() is None and not glob.glob(out + ".tmp-*"):
            time.sleep(0.0005)
        if p.poll() is not None:  # finished before the signal could be sent: again
            p.communicate()
            os.remove(out)
            continue
        p.send_signal(sig)
        err = p.communicate()[1].decode()
        left = glob.glob(out + "*")
        if p.returncode != -sig or left:
            print(f"  {sig.name}: exit {p.returncode}, left {left}, stderr {err.strip()[:200]}")
            failures += 1
        break
    else:
        print(f"  {sig.name}: the run always finished first")
        failures += 1
sys.exit(1 if failures else 0)
PY

# Two runs for one new --logits path: the one that finishes last must not replace the other's.
/usr/bin/python3 - "$binary" "$model" "$scratch" <<'PY' && ok "a --logits path taken meanwhile is not replaced" || not_ok "a --logits path taken meanwhile is not replaced" "see above"
import glob, os, subprocess, sys, time
binary, model, scratch = sys.argv[1:]
for attempt in range(40):
    out = os.path.join(scratch, "race.f32")
    p = subprocess.Popen([binary, model, "-p", "Fear", "-n", "250", "--threads", "1",
                          "--logits", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while p.poll() is None and not glob.glob(out + ".tmp-*"):
        time.sleep(0.0005)
    if p.poll() is not None:
        p.communicate()
        os.remove(out)
        continue
    with open(out, "w") as f:
        f.write("theirs")
    err = p.communicate()[1].decode()
    kept = open(out).read() == "theirs"
    if p.returncode == 1 and kept and "exists" in err and not glob.glob(out + ".tmp-*"):
        sys.exit(0)
    print(f"  exit {p.returncode}, kept {kept}, stderr {err.strip()[:200]}")
    sys.exit(1)
print("  the run always finished first")
sys.exit(1)
PY

# Flags a mode would ignore are refused, not dropped.
expect "--logits with --eval" 2 "--logits writes the logits of generation" \
    "$binary" "$model" --eval "$scratch/short.txt" --logits "$scratch/x.f32"
expect "--logits with --encode" 2 "--logits writes the logits of generation" \
    "$binary" "$model" -p hi --encode --logits "$scratch/x.f32"
expect "--logits with --attn" 2 "--logits writes the logits of generation" \
    "$binary" "$model" -p hi --attn 0 --logits "$scratch/x.f32"
expect "--logits with --attn-dump" 2 "--logits writes the logits of generation" \
    "$binary" "$model" -p hi --attn-dump "$scratch/d.json" --logits "$scratch/x.f32"
expect "--logits with --explain" 2 "--logits writes the logits of generation" \
    "$binary" "$model" -p hi --explain 1 --logits "$scratch/x.f32"
expect "--stride without --eval" 2 "--stride sets the windows of --eval" \
    "$binary" "$model" -p hi --stride 4
expect "-n with --attn" 2 "--steps counts generated tokens; --attn generates none" \
    "$binary" "$model" -p hi --attn 0 -n 5
expect "--no-special with --tokens" 2 "--no-special changes how text is encoded" \
    "$binary" "$model" --tokens "1 2" --no-special
expect "--force without an output" 2 "--force lets --logits or --attn-dump overwrite a file" \
    "$binary" "$model" -p hi -n 2 --force
[ ! -e "$scratch/x.f32" ] && ok "no --logits file from a refused combination" ||
    not_ok "no --logits file from a refused combination" "x.f32 exists"

# Messages that said the wrong thing.
timeout 20 "$binary" "$model" -p hi -n 1 -t 0 >/dev/null 2>"$scratch/err"
if grep -q "generated 1;" "$scratch/err" && ! grep -q "decode" "$scratch/err"; then
    ok "-n 1 reports no decode rate"; else not_ok "-n 1 reports no decode rate" "$(cat "$scratch/err")"; fi
m32=$("$binary" "$model" --info --kv-cache f32 | grep '^memory')
m16=$("$binary" "$model" --info --kv-cache f16 | grep '^memory')
[ "$m32" != "$m16" ] && ok "--info's memory line counts the KV cache's format" ||
    not_ok "--info's memory line counts the KV cache's format" "$m32"
expect "OMP_NUM_THREADS=100000" 2 "OMP_NUM_THREADS asks for 100000 threads" \
    env OMP_NUM_THREADS=100000 "$binary" "$model" -p hi -n 2
expect "--logits /dev/full" 1 "--logits: cannot write /dev/full" \
    "$binary" "$model" -p hi -n 300 --logits /dev/full --force -q
expect_quiet "-t 1e-45 is in range" "$binary" "$model" -p hi -n 2 -t 1e-45 -q
# keys and values beyond fp16's 65504: the fp16 cache is named (wk of every layer times 1e5)
/usr/bin/python3 - "$model" "$scratch/hot.gguf" <<'PY'
import sys
sys.path.insert(0, "tests")
import gguf_writer as gw
weights, c, vocab = gw.read_model(sys.argv[1])
weights["wk"] = weights["wk"] * 1e5
kvs, tensors = gw.llama_gguf(weights, c, vocab)
gw.write_gguf(sys.argv[2], kvs, tensors)
PY
expect "an fp16 cache that overflows" 1 "exceeds the fp16 KV cache's largest number, 65504" \
    "$binary" "$scratch/hot.gguf" -p "Fear is the" -n 3 -q --kv-cache f16
expect_quiet "the same model in fp32 runs" "$binary" "$scratch/hot.gguf" -p "Fear is the" -n 3 -q

# A stack too small for the kernels: one line before anything runs, not a segmentation fault.
expect "ulimit -s 64" 2 "the stack limit (ulimit -s) is below the 256 KiB" \
    sh -c "ulimit -s 64 && exec \"\$0\" \"\$1\" -p hi -n 5" "$binary" "$model"
echo "hostile: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
