#!/usr/bin/env bash
# Probes of the Dice gap at 32³ (docs/RESULTS.md, "What stands in the way of the Dice target"):
# the Table 3 phantoms (8 training / 6 test, seeds 100-113, made by segmentation.py) and its
# protocol (bch, width 4, 200 iterations, whole volumes, lr 1e-3, seed 0, 1 thread) through the
# CLI, with other model flags. Writes scripts/experiments/results/dice_gap32/NAME.json.
#   bash scripts/experiments/dice_gap32.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
WORK=${1:-$(mktemp -d)}
DATA=scripts/experiments/results/table3_defaults/data32
RESULTS=scripts/experiments/results/dice_gap32
mkdir -p "$RESULTS" "$WORK"
[ -d "$DATA/labelsTs" ] || "$PYTHON" -c "
from napari_difftt.core.data import write_phantom_dataset
write_phantom_dataset('$DATA', n_train=8, n_test=6, shape=(32, 32, 32), seed=100)
"
# shellcheck source=scripts/experiments/variants.sh
source scripts/experiments/variants.sh
run_variants "$DATA" "$RESULTS" "$WORK" "--width 4 --iterations 200 --patch-size 32 32 32" \
  "default:" \
  "pieces8:--pieces 8" \
  "bound32:--alpha 32" \
  "bound32_full:--alpha 32 --prior full" \
  "order3:--bch-order 3"
