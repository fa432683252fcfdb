#!/usr/bin/env bash
# Make the bundled default model resources/difftt_phantom_bch.pt (see resources/MODEL_CARD.md).
#
# Seeded 64³ phantoms (16 training volumes, seeds 0-15; 4 validation volumes, seeds 16-19), a bch
# template transformer (T = 4, BCH order 2, width 8, prior μ + diagonal Σ fitted to the training
# masks, smoothness penalty λ‖∇u‖² with λ = 0.01), 32³ patches, Adam lr 1e-3 with cosine
# annealing, seed 0, on the CPU. The final checkpoint is exported without optimizer state and
# with float16 weights (< 5 MB), then evaluated on the validation phantoms (MODEL_CARD.md).
#
# Usage: scripts/train_pretrained.sh [WORKDIR]   (default: a new temporary folder)
# Environment: PYTHON (default .venv/bin/python), ITERATIONS (default 150), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
ITERATIONS=${ITERATIONS:-150}
THREADS=${THREADS:-2}
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"

"$PYTHON" -c "
from napari_difftt.core.data import write_phantom_dataset
write_phantom_dataset('$WORK/data', n_train=16, n_test=4, shape=(64, 64, 64), seed=0)
"
nice "$PYTHON" -m napari_difftt.cli train \
    --images "$WORK/data/imagesTr" --labels "$WORK/data/labelsTr" \
    --val-images "$WORK/data/imagesTs" --val-labels "$WORK/data/labelsTs" \
    --model bch --width 8 --pieces 4 --bch-order 2 --prior diag --smoothness 0.01 \
    --iterations "$ITERATIONS" --patch-size 32 32 32 --lr 1e-3 --seed 0 --device cpu \
    --threads "$THREADS" --val-every 50 --checkpoint-every 25 \
    --out "$WORK/bch_full.pt" --overwrite
"$PYTHON" -c "
from napari_difftt.core.train import export_checkpoint
export_checkpoint('$WORK/bch_full.pt', 'resources/difftt_phantom_bch.pt', half=True, overwrite=True)
"
# measured on the exported file: the figures of the model card
nice "$PYTHON" -m napari_difftt.cli predict --checkpoint resources/difftt_phantom_bch.pt \
    "$WORK/data/imagesTs" --out "$WORK/pred" --jacobian --device cpu --overwrite --quiet
"$PYTHON" -m napari_difftt.cli evaluate --pred "$WORK/pred" --labels "$WORK/data/labelsTs" \
    --json "$WORK/validation.json" --overwrite
ls -l resources/difftt_phantom_bch.pt
