#!/usr/bin/env bash
# Does a student shaped for int8 speed learn from the teacher as well as the fast model's network
# (issue 25)? distill_temperature.sh's recipe and seed (SGD cosine over EPOCHS epochs, the teacher
# on its 6 views, weight 0.7, T = 1) for the depthwise-separable vgg_dw at SIDE px (default 48);
# compare with distill_temperature.sh's T1 run (vgg_fast at 40 px). Speed of the shapes as int8:
# benchmarks/bench_student_shapes.py.
#   benchmarks/distill_student_shapes.sh TEACHER OUT [EPOCHS] [SIDE]
set -euo pipefail
teacher=$1; out=$2; epochs=${3:-8}; side=${4:-48}
python -m pipelines.train_variant --features features/fer2013 --batch-size 128 --scratch-optimizer sgd --lr 0.02 \
  --lr-schedule cosine --weight-decay 5e-4 --augment-shift 4 --random-erase 0.1 --dropout 0.3 --epochs "$epochs" \
  --patience 1000 --seed 1 --label-smoothing 0 --teacher "$teacher" --teacher-views 6 --distill-weight 0.7 \
  --distill-temperature 1 --block vgg_dw --image-size "$side" --out "$out/vgg_dw_${side}px_T1" --resume
