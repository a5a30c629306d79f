#!/bin/sh
# Convert the shipped MHA model into GQA (2 kv heads) and MQA (1 kv head) by mean-pooling its
# key/value heads (model/convert.py), then uptrain each briefly: 30 steps, 5% of the 600
# pretraining steps, as the GQA paper (Ainslie et al. 2023) does. Writes
#   model/runs/mha-to-NAME.bin                converted, before uptraining
#   model/shakespeare-mha-to-NAME.bin         converted and uptrained
# and prints the validation loss of each with run --eval. About 6 minutes on 2 idle cores: two
# training runs of about 2 minutes each (train.py --threads 1), five --eval runs of 10-15 seconds,
# and the conversions and exports. Other jobs on the cores slow it down: 12.4 minutes measured
# with about four others running.
#   model/uptrain.sh [MHA.bin]      (default model/shakespeare-mha.bin)
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
SOURCE=${1:-model/shakespeare-mha.bin}
STEPS=${STEPS:-30}
[ -f "$SOURCE" ] || { echo "uptrain: $SOURCE: no such checkpoint" >&2; exit 1; }

# The pretraining shapes (model/train_all.sh) with a gentler schedule: a short warmup to a
# quarter of the pretraining peak learning rate, then cosine decay.
COMMON="--data $DATA --dim 192 --hidden-dim 512 --n-layers 6 --n-heads 8 --seq-len 256
        --batch-size 8 --lr 5e-4 --min-lr 1e-4 --warmup-steps 3 --weight-decay 0.1
        --dropout 0.1 --max-steps $STEPS --eval-interval $STEPS --eval-train-windows 16
        --ckpt-interval $STEPS --seed 1337 --max-minutes 15 --threads 1"

# ./run's OpenMP threads wait for each other passively. With libgomp's default spinning wait,
# --eval on both cores of a 2-core machine crawls as soon as one other process competes for a
# core: measured on the validation split, over 60 s instead of 17 s passive (and 8.5 s spinning
# against 13 s passive on idle cores).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

make --no-print-directory build >/dev/null
val=$(mktemp)
trap 'rm -f "$val"' EXIT
scripts/val_split.sh "$DATA" >"$val"

report() {
    printf '%-40s ' "$1"
    ./run "$1" --eval "$val" | awk '/^loss/ {printf "%s nats/token, perplexity %s; ", $2, $5}
                                    /^per char/ {printf "%s nats/char\n", $3}'
}

report "$SOURCE"
for spec in gqa:2 mqa:1; do
    name=${spec%%:*}
    kv=${spec##*:}
    converted=model/runs/mha-to-$name.bin
    run_dir=model/runs/mha-to-$name-uptrained
    mkdir -p "$run_dir"
    "$PYTHON" model/convert.py "$SOURCE" "$converted" --n-kv-heads "$kv" --force >/dev/null
    report "$converted"
    rm -f "$run_dir/ckpt.pt" "$run_dir/best.pt"
    # shellcheck disable=SC2086
    "$PYTHON" model/train.py --run-dir "$run_dir" --n-kv-heads "$kv" --init-from "$converted" \
        $COMMON >"$run_dir/train.log" 2>&1
    "$PYTHON" model/export.py --ckpt "$run_dir/ckpt.pt" \
        --tokenizer tokenizer/shakespeare.tokenizer.bin \
        --out "model/shakespeare-mha-to-$name.bin" --force >/dev/null
    report "model/shakespeare-mha-to-$name.bin"
done
