#!/usr/bin/env bash
# The prior on data (docs/RESULTS.md, "The prior on data"): standard ViTs' impulse init with the position scale fixed
# at the paper's 18 against the scale calibrated to the model (--position-share) and the query/key fit on the blocks'
# own inputs (--fit-input data), on ../shared/data/cifar10-mini with the family study's protocol (800 steps, AdamW
# 1e-3, wd 0.05, batch 128, flip-crop), val/ reported, evaluated at init and at the end.
#
#   SWEEP=1 bash experiments/prior_on_data.sh      # first: the calibrated default, chosen on val/ (timm and HF ViT,
#                                                   # width 64, 100 images per class, seed 0)
#   bash experiments/prior_on_data.sh               # the grid: timm and HF ViTs, width 64 and 128 (4 heads), 25 and
#                                                   # 100 images per class, seeds 0-2, inits own / x18 / calibrated /
#                                                   # mimetic (resumes finished runs)
#   WIDER=1 bash experiments/prior_on_data.sh       # Swin, MLP-Mixer and Simple ViT at a second, wider size
#   python experiments/prior_on_data.py             # tables from the runs that exist
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/prior}
DATA=${DATA:-../shared/data/cifar10-mini}
SEEDS=${SEEDS:-"0 1 2"}
SIZES=${SIZES:-"25 100"}
DIMS=${DIMS:-"64 128"}
STEPS=${STEPS:-800}
FAMILIES=${FAMILIES:-"timm_vit hf_vit"}
JOBS=${JOBS:-1}
OPT="--optimizer adamw --lr 1e-3 --weight-decay 0.05 --batch-size 128 --eval-batch-size 500 --steps $STEPS"
model() {  # family, width
  case $1 in
    timm_vit) echo "--model timm:vit_tiny_patch16_224 --image-size 32 --patch-size 4 --dim $2 --depth 4 --num-heads 4 --mlp-dim $((2 * $2))";;
    hf_vit) echo "--model hf:vit --image-size 32 --patch-size 4 --dim $2 --depth 4 --num-heads 4 --mlp-dim $((2 * $2))";;
  esac
}
run() {  # family, width, images per class, seed, title, variants...
  local fam=$1 dim=$2 n=$3 seed=$4 title=$5; shift 5
  local epochs=$(( (STEPS * 128 + n * 10 - 1) / (n * 10) ))
  # shellcheck disable=SC2046
  $PY -m impulse_attn.cli compare --dataset folder --data-dir "$DATA" --per-class "$n" --augment flip-crop \
      $(model "$fam" "$dim") $OPT --eval-every "$epochs" --no-progress --seeds "$seed" \
      --out "$OUT/$fam/d$dim/pc$n" --title "$title" --variants "$@"
}
if [ -n "${RUN1:-}" ]; then   # one run of the grid, as LIST=1 prints it: family|width|size|seed|init
  IFS='|' read -r fam dim n seed init <<< "$RUN1"
  run "$fam" "$dim" "$n" "$seed" "$fam width $dim, $n images per class, $STEPS steps" "$init"
  exit 0
fi
SWEEPS="x18:init=impulse,pos_scale=18 s80d:init=impulse,position_share=0.8,fit_input=data \
s94p:init=impulse,position_share=0.94,fit_input=position s94d:init=impulse,position_share=0.94,fit_input=data \
s98p:init=impulse,position_share=0.98,fit_input=position s98d:init=impulse,position_share=0.98,fit_input=data"
if [ -n "${SWEEP:-}" ]; then
  for fam in $FAMILIES; do
    # shellcheck disable=SC2086
    run "$fam" 64 100 0 "$fam width 64: calibrated default sweep, 100 images per class" $SWEEPS &
    [ "$JOBS" -gt 1 ] || wait
  done
  wait
  exit 0
fi
# Each family at a second size, 1.5x the width of the size its default was chosen at (RESULTS "Every family":
# Swin dim 32 with (2, 4) heads, Mixer dim 64 with one round of shifts, Simple ViT dim 128 with 8 heads), own init
# against the default impulse init, 25 images per class (WIDER=1; with LIST=1 one command per run).
declare -A WIDE=(
  [swin]="--model timm:swin_tiny_patch4_window7_224 --image-size 32 --patch-size 4 --dim 48 --model-kwargs depths=(2,2);num_heads=(3,6);window_size=4"
  [mixer]="--model timm:mixer_s16_224 --image-size 32 --patch-size 4 --dim 96 --depth 4 --model-kwargs mlp_ratio=(2.0,4.0)"
  [vit]="--model vit --patch-size 4 --dim 192 --depth 4 --num-heads 12 --head-dim 16 --mlp-dim 384 --mode I --alpha 0.2"
)
wide() {  # family, seed, variant
  local n=${WIDE_SIZE:-25}
  local epochs=$(( (STEPS * 128 + n * 10 - 1) / (n * 10) ))
  # shellcheck disable=SC2086
  $PY -m impulse_attn.cli compare --dataset folder --data-dir "$DATA" --per-class "$n" --augment flip-crop \
      ${WIDE[$1]} $OPT --eval-every "$epochs" --no-progress --seeds "$2" --out "$OUT/wide/$1/pc$n" \
      --title "$1 at the wider size, $n images per class, $STEPS steps" --variants "$3"
}
if [ -n "${RUNW:-}" ]; then
  IFS='|' read -r fam seed init <<< "$RUNW"
  wide "$fam" "$seed" "$init"
  exit 0
fi
if [ -n "${WIDER:-}" ]; then
  for seed in $SEEDS; do
    for fam in ${WIDE_FAMILIES:-swin mixer vit}; do
      for init in ${WIDE_INITS:-own:init=default impulse:init=impulse}; do
        if [ -n "${LIST:-}" ]; then
          printf '%q ' env OMP_NUM_THREADS=1 "RUNW=$fam|$seed|$init" bash
          printf '%q\n' "$SELF"
        else
          wide "$fam" "$seed" "$init"
        fi
      done
    done
  done
  exit 0
fi
INITS=${INITS:-"own:init=default x18:init=impulse,pos_scale=18 calibrated:init=impulse mimetic:init=mimetic"}
# LIST=1: print one command line per run (one init each) instead of running them, for a queue, e.g.
#   LIST=1 bash experiments/prior_on_data.sh | xargs -P 2 -I{} sh -c {}      (two runs at a time on two cores)
for n in $SIZES; do
  for seed in $SEEDS; do
    for dim in $DIMS; do
      for fam in $FAMILIES; do
        for init in $INITS; do
          if [ -n "${LIST:-}" ]; then
            printf '%q ' env OMP_NUM_THREADS=1 "RUN1=$fam|$dim|$n|$seed|$init" bash
            printf '%q\n' "$SELF"
          else
            run "$fam" "$dim" "$n" "$seed" "$fam width $dim, $n images per class, $STEPS steps" "$init"
          fi
        done
      done
    done
  done
done
