"""Run model on a folder of NIfTI volumes: the worker body (Qt-free) and its file names.

The outputs are those of ``napari-difftt predict --probabilities``: ``NAME_seg.nii.gz`` and
``NAME_prob.nii.gz`` for each ``NAME.nii[.gz]``, with the input's affine and header (the names
come from :data:`napari_difftt.pipeline.OUTPUTS`, the one place that defines them). Nothing is
overwritten: existing outputs are refused before any work. Cancel acts between torch
operations (:class:`core.interrupt.Interruptible`); files written before it are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BatchResult", "plan_folder", "predict_folder"]

OUTPUTS = ("seg", "prob")  # keys of pipeline.OUTPUTS, as `predict --probabilities` writes


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
    from ..pipeline import list_inputs, nifti_stem, output_paths

    if not folder.is_dir():
        raise FileNotFoundError(f"input folder not found: {folder}")
    planned = {path: output_paths(out, nifti_stem(path), OUTPUTS)
               for path in list_inputs([folder])}
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
    from ..pipeline import count_convolutions, export, load, nifti_stem, read_nifti, segment

    loaded = load(checkpoint, device=device)
    per_file = count_convolutions(loaded.model) + 1
    total = per_file * len(planned)
    written: list[Path] = []
    out = None
    for index, (path, outs) in enumerate(planned.items()):
        start = index * per_file
        label = f"[{index + 1}/{len(planned)}] {path.name}"
        progress(start, total, label)

        def report(done: int, _total: int, _message: str, start=start, label=label) -> None:
            progress(start + min(done, per_file - 1), total, f"{label}: layer {done}")

        volume = read_nifti(path)
        result = segment(volume, loaded, progress=report, should_stop=should_stop,
                         velocities=False)
        out = outs["seg"].parent
        written += export(result, volume, out, nifti_stem(path), OUTPUTS)
    progress(total, total, "done")
    return BatchResult(written, len(planned), out)
