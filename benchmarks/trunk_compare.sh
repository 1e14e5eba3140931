#!/usr/bin/env bash
# Issue 12, part 3: candidate trunks and input sides by validation accuracy against training
# minutes, each a complete cosine schedule sized to ~35 minutes on one core of the 2-core Xeon,
# same recipe and seed as the release members otherwise. Run one after another on core 0
# (`taskset`), beside a member training on core 1.
#   usage: benchmarks/trunk_compare.sh OUT_DIR [CORE]
set -euo pipefail
out=${1:?usage: benchmarks/trunk_compare.sh OUT_DIR [CORE]}
core=${2:-0}
recipe="--features features/fer2013 --batch-size 128 --scratch-optimizer sgd --lr 0.02 --lr-schedule cosine \
  --weight-decay 5e-4 --label-smoothing 0.1 --augment-shift 4 --random-erase 0.1 --dropout 0.3 --seed 0"
run() {   # name block side epochs
  taskset -c "$core" env TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \
    python -m pipelines.train_variant $recipe --block "$2" --image-size "$3" --epochs "$4" --patience "$4" \
    --out "$out/$1"
}
run vgg_wide_40px vgg_wide 40 5
run vgg_fast_40px vgg_fast 40 11
run vgg_fast_48px vgg_fast 48 8
