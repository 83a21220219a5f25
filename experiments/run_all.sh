#!/usr/bin/env bash
# Every table of docs/RESULTS.md, in priority order, on ../shared/data/cifar10-mini (500 train / 100 test images
# per class). Sized for a 2-core CPU: the default sections took about 100 minutes on a shared 2-core machine.
# Run from the repository root:
#   bash experiments/run_all.sh [section ...]
# Default sections: headline grid8 alpha convmixer. Optional, not in the default run for lack of CPU time:
# alpha-extra (alpha 0.1 and 0.3), sharpness (closed-form target mass, softmax scale).
# Runs land in runs/experiments/<section>/; rerunning reuses finished runs and resumes interrupted ones.
# Then: python experiments/tables.py; python experiments/attention_locality.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/experiments}
IA="$PY -m impulse_attn.cli compare"
DATA="--dataset folder --data-dir ../shared/data/cifar10-mini"
BUDGET="--epochs 10 --batch-size 128 --lr 1e-3 --no-progress"
# The paper's 16x16 token grid (patch 2 on 32x32), at a CPU width: dim 64, depth 2, 8 heads of 16, MLP 128.
VIT16="--model vit --patch-size 2 --dim 64 --depth 2 --num-heads 8 --head-dim 16 --mlp-dim 128 --fit-method closed_form"
VIT8="--model vit --patch-size 4 --dim 64 --depth 2 --num-heads 8 --head-dim 16 --mlp-dim 128 --fit-method closed_form"
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(headline grid8 alpha convmixer)

for s in "${sections[@]}"; do
  case $s in
    headline)   # random vs mimetic vs impulse (alpha 0.2), 3 seeds; one seed at a time so every init has the
                # same seeds done if the campaign is cut short
      for seeds in 0 0,1 0,1,2; do
        $IA $DATA $BUDGET $VIT16 --inits random,mimetic,impulse --seeds $seeds --alpha 0.2 \
            --title "ViT 16x16 grid: random vs mimetic vs impulse (alpha 0.2)" --out $OUT/headline
      done ;;
    alpha)      # Model I content weight at both ends of the published sweep; alpha 0.2 is the headline's impulse row
      $IA $DATA $BUDGET $VIT16 --seeds 0 --title "impulse init, alpha sweep (16x16 grid)" --out $OUT/alpha \
          --variants "alpha 0:init=impulse,alpha=0.0" "alpha 0.5:init=impulse,alpha=0.5" ;;
    alpha-extra)
      $IA $DATA $BUDGET $VIT16 --seeds 0 --title "impulse init, alpha sweep (16x16 grid)" --out $OUT/alpha \
          --variants "alpha 0:init=impulse,alpha=0.0" "alpha 0.1:init=impulse,alpha=0.1" \
                     "alpha 0.3:init=impulse,alpha=0.3" "alpha 0.5:init=impulse,alpha=0.5" ;;
    convmixer)  # the ConvMixer study: learned vs frozen filter banks (k=3), same data and budget
      $IA $DATA $BUDGET --model convmixer --patch-size 2 --dim 64 --depth 4 --kernel-size 3 --seeds 0 \
          --title "ConvMixer 64x4, k=3: learned vs frozen filter banks" --out $OUT/convmixer \
          --variants "learned:filters=learned" "frozen random:filters=random,freeze=1" \
                     "frozen impulse:filters=impulse,freeze=1" "frozen box:filters=box,freeze=1" ;;
    grid8)      # the same model on an 8x8 grid (patch 4): where the planning run saw no final gain
      $IA $DATA $BUDGET $VIT8 --inits random,mimetic,impulse --seeds 0 --alpha 0.2 \
          --title "ViT 8x8 grid: random vs mimetic vs impulse (alpha 0.2)" --out $OUT/grid8 ;;
    sharpness)  # impulse map sharpness (closed-form target mass) and the model's softmax scale
      $IA $DATA $BUDGET $VIT16 --seeds 0 --alpha 0.2 --title "impulse init: map sharpness and softmax scale" \
          --out $OUT/sharpness \
          --variants "mass 0.15:init=impulse,target_mass=0.15" "mass 0.6:init=impulse,target_mass=0.6" \
                     "scale 0.25:init=impulse,scale=0.25" ;;
    *) echo "unknown section $s" >&2; exit 2 ;;
  esac
done
