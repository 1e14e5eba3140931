#!/usr/bin/env bash
# Which temperature of the teacher's soft targets helps the fast student (issue 25), measured:
# the fast model's recipe (vgg_fast at 40 px, SGD cosine) for a short, complete schedule of
# EPOCHS epochs, distilled from TEACHER on its 6 fixed views at T = 1, 2 and 4, beside the same
# schedule on hard labels (the release recipe's label smoothing 0.1). Same seed everywhere.
# The teacher's passes over the views are computed by the first run and cached for the others.
#   benchmarks/distill_temperature.sh TEACHER OUT [EPOCHS]
set -euo pipefail
teacher=$1; out=$2; epochs=${3:-8}
recipe=(--features features/fer2013 --block vgg_fast --image-size 40 --batch-size 128 --scratch-optimizer sgd
        --lr 0.02 --lr-schedule cosine --weight-decay 5e-4 --augment-shift 4 --random-erase 0.1 --dropout 0.3
        --epochs "$epochs" --patience 1000 --seed 1)
for t in 1 2 4; do
  python -m pipelines.train_variant "${recipe[@]}" --label-smoothing 0 --teacher "$teacher" --teacher-views 6 \
    --distill-weight 0.7 --distill-temperature "$t" --out "$out/T$t" --resume
done
python -m pipelines.train_variant "${recipe[@]}" --label-smoothing 0.1 --out "$out/hard" --resume
