#!/usr/bin/env bash
# What makes the convolutional prior pay off (docs/RESULTS.md, "What makes it pay off"): at the data size where
# the data-efficiency study (experiments/data_efficiency.sh) found the largest gain, the same model, data and
# budget, 3 seeds, one factor changed at a time. Random init and the default impulse init come from the study's
# runs at that size (same seeds, same data order); the default impulse init is also rerun here as a control.
#
#   bash experiments/what_pays_off.sh               # at the size the study picks (see what_pays_off.py)
#   SIZE=50 SEEDS="0" bash experiments/what_pays_off.sh
#   ONLY="9 heads|value" bash experiments/what_pays_off.sh   # the variants whose label matches (grep -E)
#   python experiments/what_pays_off.py             # table + plot from whatever runs exist
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STUDY=${STUDY:-runs/study}
SIZE=${SIZE:-$($PY experiments/what_pays_off.py --pick-size --study "$STUDY")}
OUT=${OUT:-runs/pays_off}
DATA=${DATA:-../shared/data/cifar10-mini}
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-800}
MODEL="--model vit --patch-size 4 --dim 128 --depth 4 --num-heads 8 --head-dim 16 --mlp-dim 256 --mode I --alpha 0.2"
OPT="--optimizer adamw --lr 1e-3 --weight-decay 0.05 --batch-size 128 --eval-batch-size 500 --steps $STEPS"
IMP="init=impulse,fit_method=closed_form,fit_target=laplace,target_mass=0.1"
# Model II (queries and keys from P alone) is not a variant of its own: it is Model I at alpha 0 (X_qk = P), the
# same function of the same parameters (tests/test_models.py); run at 100/class, seed 0, the two trained alike to
# rounding (train loss within 5e-7, the same val and test accuracy at every evaluation).
VARIANTS=(
  "impulse (default):$IMP"
  "impulse k3, 8 heads, cycled:$IMP,kernel_size=3,fit_offsets=cycle"
  "impulse k3, 9 heads, cycled:$IMP,kernel_size=3,num_heads=9,fit_offsets=cycle"
  "random, 9 heads:init=random,num_heads=9"
  "impulse, mass 0.03:init=impulse,fit_method=closed_form,fit_target=laplace,target_mass=0.03"
  "impulse, mass 0.3:init=impulse,fit_method=closed_form,fit_target=laplace,target_mass=0.3"
  "impulse, alpha 0:$IMP,alpha=0.0"
  "impulse, mode III:$IMP,mode=III"
  "impulse + value/proj:$IMP,value_init=mimetic"
  "random + value/proj:init=random,value_init=mimetic"
)
if [ -n "${ONLY:-}" ]; then
  picked=()
  for v in "${VARIANTS[@]}"; do
    if printf '%s\n' "${v%%:*}" | grep -Eq -- "$ONLY"; then picked+=("$v"); fi
  done
  [ ${#picked[@]} -gt 0 ] || { echo "ONLY=$ONLY matches no variant" >&2; exit 2; }
  VARIANTS=("${picked[@]}")
fi
epochs=$(( (STEPS * 128 + SIZE * 10 - 1) / (SIZE * 10) ))
every=$(( epochs / 4 > 0 ? epochs / 4 : 1 ))
all_seeds=$(echo $SEEDS | tr ' ' ',')
for seed in $SEEDS; do
  $PY -m impulse_attn.cli compare --dataset folder --data-dir "$DATA" --per-class "$SIZE" --augment flip-crop \
      $MODEL $OPT --eval-every "$every" --no-progress --seeds "$seed" --out "$OUT/pc$SIZE" \
      --title "what pays off, $SIZE images per class" --variants "${VARIANTS[@]}"
done
$PY -m impulse_attn.cli compare --dataset folder --data-dir "$DATA" --per-class "$SIZE" --augment flip-crop \
    $MODEL $OPT --eval-every "$every" --no-progress --seeds "$all_seeds" --out "$OUT/pc$SIZE" \
    --title "what pays off, $SIZE images per class" --variants "${VARIANTS[@]}"
$PY experiments/what_pays_off.py --runs "$OUT" --study "$STUDY"
