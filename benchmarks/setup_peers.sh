#!/usr/bin/env bash
# Create .bench-venv (gitignored) with torch 2.13.0 (CPU wheel), the peer libraries the flow
# benchmark compares against (MONAI, voxelmorph with its PyTorch code, deepali) and this project.
# Usage (from anywhere): bash benchmarks/setup_peers.sh   then   .bench-venv/bin/python benchmarks/bench_flow.py
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.bench-venv"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)

# Never an unpinned torch: that could pull a multi-GB CUDA build. A local CPU wheel wins.
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    wheel_dirs=()
    for dir in /opt/wheels "${TORCH_WHEELS:-}"; do
        [[ -n "$dir" && -d "$dir" ]] && wheel_dirs+=(--find-links "$dir")
    done
    "${pip[@]}" "${wheel_dirs[@]}" "torch==2.13.0"
fi

# MONAI (DVF2DDF) and deepali (expv): plain installs; `hf-deepali` is the module `deepali`
# (the index's `deepali` is an unrelated package).
"${pip[@]}" "torch==2.13.0" monai hf-deepali
# voxelmorph >= 0.3 is PyTorch-only; its deps are light (neurite, pystrum, h5py, ...), no TensorFlow.
"${pip[@]}" "torch==2.13.0" voxelmorph
# This project, editable, without its GUI dependencies (napari, Qt): the benchmark needs only core.
"${pip[@]}" --no-deps -e "$root"
"${pip[@]}" numpy scipy

"$venv/bin/python" - <<'PY'
import importlib
for name in ("torch", "monai", "voxelmorph", "deepali", "napari_difftt"):
    module = importlib.import_module(name)
    print(f"{name:14s} {getattr(module, '__version__', '?')}")
PY
