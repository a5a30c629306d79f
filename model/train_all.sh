#!/bin/sh
# Retrain everything shipped in model/: the tokenizer (if missing), then the
# MHA, GQA and MQA checkpoints (identical except n_kv_heads), then export them.
# Run from anywhere; paths are relative to the repo root. Takes ~1.5 hours on
# a 2-core machine. Runs resume from model/runs/<name>/ckpt.pt if present.
#   PYTHON=/usr/bin/python3 DATA=../shared/data/tinyshakespeare.txt model/train_all.sh
set -eu
cd "${REPO_ROOT:-$(dirname "$0")/..}"
PYTHON=${PYTHON:-/usr/bin/python3}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
STEPS=${STEPS:-600}

if [ ! -f tokenizer/shakespeare.model ] || [ ! -f tokenizer/shakespeare.tokenizer.bin ]; then
    "$PYTHON" tokenizer/train_tokenizer.py --data "$DATA"
fi

# the shared hyperparameters: only --n-kv-heads differs between the three runs
COMMON="--data $DATA --dim 192 --hidden-dim 512 --n-layers 6 --n-heads 8 --seq-len 256
        --batch-size 8 --lr 2e-3 --min-lr 1e-4 --warmup-steps 40 --weight-decay 0.1
        --dropout 0.1 --max-steps $STEPS --eval-interval 100 --eval-train-windows 16
        --ckpt-interval 50 --seed 1337 --max-minutes 40 --threads 1"

for spec in mha:8 gqa:2 mqa:1; do
    name=${spec%%:*}
    kv=${spec##*:}
    mkdir -p model/runs/$name
    echo "== training $name (n_kv_heads=$kv) $(date)"
    # shellcheck disable=SC2086
    "$PYTHON" model/train.py --run-dir model/runs/$name --n-kv-heads $kv $COMMON \
        >>model/runs/$name/train.log 2>&1
    tail -n 1 model/runs/$name/train.log
done

for name in mha gqa mqa; do
    "$PYTHON" model/export.py --ckpt model/runs/$name/best.pt \
        --tokenizer tokenizer/shakespeare.tokenizer.bin \
        --out model/shakespeare-$name.bin --force
    cp model/runs/$name/loss.csv model/shakespeare-$name.loss.csv
    cp model/runs/$name/loss.png model/shakespeare-$name.loss.png
done
"$PYTHON" model/plot_losses.py --out model/shakespeare-loss.png \
    mha=model/shakespeare-mha.loss.csv gqa=model/shakespeare-gqa.loss.csv \
    mqa=model/shakespeare-mqa.loss.csv
echo "== all done $(date)"
