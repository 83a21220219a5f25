#!/usr/bin/env bash
# Everything that runs after the data-efficiency study, one training process at a time (see docs/RESULTS.md):
# the mechanism ablations' remaining seeds, what makes the prior pay off, and the timm comparison.
#   SIZE=<images per class with the largest gain> bash experiments/queue_after_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
: "${SIZE:?set SIZE}"
$PY experiments/init_mechanism.py --seeds 0 --variants recipe-rowspace recipe-resplit-complement \
    closed-laplace-0.1-0.4-c
$PY experiments/init_mechanism.py --seeds 1,2 --variants random recipe closed-separable-0.3-0.1 \
    closed-laplace-0.1-0.4 recipe-resplit
SIZE=$SIZE bash experiments/what_pays_off.sh
SIZE=$SIZE bash experiments/timm_comparison.sh
