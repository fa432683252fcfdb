"""Run model on a folder of NIfTI volumes: the worker body (Qt-free) and its file names.

The outputs are those of ``napari-difftt predict --probabilities``: ``NAME_seg.nii.gz`` and
``NAME_prob.nii.gz`` for each ``NAME.nii[.gz]``, with the input's affine and header (the names
come from :mod:`napari_difftt.commands.predict`, the one place that defines them). Nothing is
overwritten: existing outputs are refused before any work. Cancel acts between torch
operations (:class:`core.interrupt.Interruptible`); files written before it are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BatchResult", "plan_folder", "predict_folder"]


@dataclass(frozen=True)
class BatchResult:
    """What a folder run wrote."""

    written: list[Path]  # every file written, in order
    files: int  # volumes segmented
    folder: Path  # where


def plan_folder(folder: Path, out: Path) -> dict[Path, dict[str, Path]]:
    """``{input: {"seg": path, "prob": path}}`` for every NIfTI file in ``folder``.

    Raises FileNotFoundError for a missing or empty folder, FileExistsError naming the first
    output that exists (and how many do).
    """
    from ..commands.predict import _outputs, list_inputs

    if not folder.is_dir():
        raise FileNotFoundError(f"input folder not found: {folder}")
    planned = {path: _outputs(out, path, True, False) for path in list_inputs([folder])}
    existing = [p for outs in planned.values() for p in outs.values() if p.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} exists ({len(existing)} output(s) in all) in {out}")
    return planned


def predict_folder(
    planned: dict[Path, dict[str, Path]],
    checkpoint: Path,
    device: str,
    progress: Callable[[int, int, str], None],
    should_stop: Callable[[], bool],
) -> BatchResult:
    """Segment every planned volume with one loaded model; progress is per file and layer."""
    from ..core.inference import load_model, predict_volume
    from ..core.interrupt import Interruptible, count_convolutions
    from ..core.io import read_nifti, write_nifti

    loaded = load_model(checkpoint, device=device)
    per_file = count_convolutions(loaded.model) + 1
    total = per_file * len(planned)
    written: list[Path] = []
    out = None
    for index, (path, outs) in enumerate(planned.items()):
        start = index * per_file
        label = f"[{index + 1}/{len(planned)}] {path.name}"
        progress(start, total, label)

        def convolved(done: int, start=start, label=label) -> None:
            progress(start + min(done, per_file - 1), total, f"{label}: layer {done}")

        volume = read_nifti(path)
        with Interruptible(should_stop, convolved):
            prediction = predict_volume(loaded.model, volume.array, device=loaded.device,
                                        should_stop=should_stop)
        written.append(write_nifti(outs["seg"], prediction.segmentation, like=volume,
                                   labels=True))
        written.append(write_nifti(outs["prob"], prediction.probability, like=volume))
        out = outs["seg"].parent
    progress(total, total, "done")
    return BatchResult(written, len(planned), out)
