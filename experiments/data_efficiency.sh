#!/usr/bin/env bash
# The data-efficiency study (docs/RESULTS.md, "Data efficiency"): final accuracy vs images per class, for each
# query/key init, on ../shared/data/cifar10-mini, at a fixed budget of optimizer steps at every size (smaller sets
# are seen for more epochs), with augmentation, 3 seeds; settings chosen on val/, test/ reported beside it.
#
#   bash experiments/data_efficiency.sh            # the whole study (about 5-6 hours on 2 CPU cores)
#   SEEDS="0" SIZES="25 500" bash experiments/data_efficiency.sh   # a part of it
#   MODEL="--model vit --patch-size 2 ..." STEPS=5000 OUT=runs/gpu bash experiments/data_efficiency.sh  # other model
#   python experiments/data_efficiency.py          # table + plot from whatever runs exist
#
# Model: Simple ViT on an 8x8 token grid (patch 4 on 32x32 images), dim 128, depth 4, 8 heads of 16, MLP 256,
# mode I, alpha 0.2: on a 16x16 grid the same model trains about 6 times slower here (64 vs 379 images/s), which
# would put this study at days instead of hours. AdamW lr 1e-3, weight decay 0.05, cosine, batch 128, 800 steps.
# Runs are resumed or reused when rerun; seeds go outermost so a partial study has every size and init.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/study}
DATA=${DATA:-../shared/data/cifar10-mini}
SEEDS=${SEEDS:-"0 1 2"}
SIZES=${SIZES:-"25 50 100 250 500"}
STEPS=${STEPS:-800}
SMALL_VIT="--model vit --patch-size 4 --dim 128 --depth 4 --num-heads 8 --head-dim 16 --mlp-dim 256 --mode I --alpha 0.2"
MODEL=${MODEL:-$SMALL_VIT}
OPT="--optimizer adamw --lr 1e-3 --weight-decay 0.05 --batch-size 128 --eval-batch-size 500 --steps $STEPS"
INITS=(
  "random:init=random"
  "mimetic:init=mimetic"
  "impulse (closed form):init=impulse,fit_method=closed_form,fit_target=laplace,target_mass=0.1"
  "impulse (iterative recipe):init=impulse,fit_method=iterative"
)
all_seeds=$(echo $SEEDS | tr ' ' ',')
for seed in $SEEDS; do
  for n in $SIZES; do
    epochs=$(( (STEPS * 128 + n * 10 - 1) / (n * 10) ))
    every=$(( epochs / 4 > 0 ? epochs / 4 : 1 ))
    $PY -m impulse_attn.cli compare --dataset folder --data-dir "$DATA" --per-class "$n" --augment flip-crop \
        $MODEL $OPT --eval-every "$every" --no-progress --seeds "$seed" --out "$OUT/pc$n" \
        --title "$n images per class, $STEPS steps" --variants "${INITS[@]}"
  done
done
# the tables over every seed that has run (reuses the runs)
for n in $SIZES; do
  epochs=$(( (STEPS * 128 + n * 10 - 1) / (n * 10) ))
  every=$(( epochs / 4 > 0 ? epochs / 4 : 1 ))
  $PY -m impulse_attn.cli compare --dataset folder --data-dir "$DATA" --per-class "$n" --augment flip-crop \
      $MODEL $OPT --eval-every "$every" --no-progress --seeds "$all_seeds" --out "$OUT/pc$n" \
      --title "$n images per class, $STEPS steps" --variants "${INITS[@]}" > /dev/null
done
$PY experiments/data_efficiency.py --runs "$OUT"
