#!/usr/bin/env bash
# A timm ViT, unmodified, initialized through impulse_attn.timm.init_ (docs/RESULTS.md, "A timm ViT"): timm's own
# init vs mimetic vs impulse (our closed form, and the structured-init paper's own fit) on cifar10-mini, at the
# data size and budget of the data-efficiency study, 2 seeds. vit_tiny_patch16_224 with timm's overrides sized
# like the study's Simple ViT (dim 128, depth 4, 4 heads of 32, MLP 256, patch 4: an 8x8 grid).
#
#   SIZE=50 bash experiments/timm_comparison.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SIZE=${SIZE:-500}
OUT=${OUT:-runs/timm}
DATA=${DATA:-../shared/data/cifar10-mini}
SEEDS=${SEEDS:-"0 1"}
STEPS=${STEPS:-800}
MODEL="--model timm:vit_tiny_patch16_224 --image-size 32 --patch-size 4 --dim 128 --depth 4 --num-heads 4 --mlp-dim 256"
OPT="--optimizer adamw --lr 1e-3 --weight-decay 0.05 --batch-size 128 --eval-batch-size 500 --steps $STEPS"
VARIANTS=(
  "timm init:init=random"
  "mimetic:init=mimetic,fit_method=official"
  "impulse (closed form):init=impulse,fit_method=closed_form"
  "impulse (official fit):init=impulse,fit_method=official"
)
epochs=$(( (STEPS * 128 + SIZE * 10 - 1) / (SIZE * 10) ))
every=$(( epochs / 4 > 0 ? epochs / 4 : 1 ))
all_seeds=$(echo $SEEDS | tr ' ' ',')
for seed in $SEEDS $all_seeds; do
  $PY -m impulse_attn.cli compare --dataset folder --data-dir "$DATA" --per-class "$SIZE" --augment flip-crop \
      $MODEL $OPT --eval-every "$every" --no-progress --seeds "$seed" --out "$OUT/pc$SIZE" \
      --title "timm ViT (dim 128, depth 4), $SIZE images per class" --variants "${VARIANTS[@]}"
done
