#!/usr/bin/env bash
# Which integration grid keeps the 2D bundled model fold-free: the bundled 2D recipe
# (scripts/train_pretrained.sh: 32 training / 8 validation phantoms of 128², seeds 0-39, bch,
# width 8, 400 iterations, lr 1e-3, seed 0) with other velocity spaces, 1 thread each.
# Writes scripts/experiments/results/velocity2d/NAME.json (evaluate's JSON on the 8 phantoms).
#   bash scripts/experiments/velocity2d.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
WORK=${1:-$(mktemp -d)}
RESULTS=scripts/experiments/results/velocity2d
DATA=$RESULTS/data128
mkdir -p "$RESULTS" "$WORK"
[ -d "$DATA/labelsTs" ] || "$PYTHON" -c "
from napari_difftt.core.data import write_phantom_dataset
write_phantom_dataset('$DATA', n_train=32, n_test=8, shape=(128, 128), seed=0)
"
# shellcheck source=scripts/experiments/variants.sh
source scripts/experiments/variants.sh
run_variants "$DATA" "$RESULTS" "$WORK" "--width 8 --iterations 400 --patch-size 128 128" \
  "k2_s8:--velocity-factor 2 --velocity-lattice 8" \
  "k4_s4:--velocity-factor 4 --velocity-lattice 4" \
  "k2_s4_b8:--alpha 8"
