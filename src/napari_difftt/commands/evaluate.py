"""``napari-difftt evaluate``: compare predicted segmentations with reference labels.

Predictions in ``--pred`` are matched with ``NAME.nii[.gz]`` in ``--labels``: the outputs of
``predict`` and the Export widget (:data:`napari_difftt.pipeline.OUTPUTS`: ``NAME_seg.nii.gz``,
``NAME_displacement.npy``, ``NAME_jacdet.nii.gz``), the Export widget's files of earlier
versions (``NAME_segmentation.nii.gz``, ``NAME_displacement_{z,y,x}_mm.nii.gz``,
``NAME_jacobian.nii.gz``) or ``NAME.nii.gz``. Per case :func:`core.metrics.evaluate_case`:
Dice, Hausdorff distance and HD95 in mm (the reference file's spacing), connected components
of the prediction (face and full connectivity) and, when a displacement (or only a det J file)
lies beside it, the percentage of voxels with det ∇Φ ≤ 0 (central differences; digital too
when the displacement is there). Prints a table with mean ± std; ``--json`` writes
everything, each case's :func:`core.metrics.topology_report` under ``"topology"``.

Refused before any metric is computed, naming the files: reference labels with values other
than 0, 1 and the ignore value (an intensity image given as labels), references without a
labelled voxel (whose Dice would be a meaningless 1.0), predictions with values other than 0
and 1 (listed; a probability map is named as one), two files of one case (``L.nii`` and
``L.nii.gz``), the same folder for ``--pred`` and ``--labels``, ``--ignore-value`` 0 or 1, and
a prediction whose affine (voxel geometry) differs from its reference's — both printed;
``--ignore-affine`` compares them anyway. The JSON is strict (RFC 8259): a value that is not a
finite number (the Hausdorff distance of an empty mask, inf) is written as ``null``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.paths import is_nifti, nifti_stem
from ..pipeline import OUTPUTS

if TYPE_CHECKING:
    import numpy as np

HELP = "compute Dice, HD, HD95, folding (det J <= 0) and components of predictions against labels"

LEGACY_SEGMENTATION = "_segmentation"  # the Export widget's names before one contract
LEGACY_JACOBIAN = "_jacobian.nii.gz"
LEGACY_DISPLACEMENT = "_displacement_{axis}_mm.nii.gz"  # one file per array axis, in mm
# (core.metrics.METRIC_KEYS key, column title, format)
COLUMNS = (
    ("dice", "Dice", "{:.4f}"),
    ("hausdorff", "HD mm", "{:.2f}"),
    ("hd95", "HD95 mm", "{:.2f}"),
    ("folding_central", "%detJ<=0 central", "{:.4f}"),
    ("folding_digital", "%detJ<=0 digital", "{:.4f}"),
    ("components", "components (face)", "{:.0f}"),
    ("components_full", "components (full)", "{:.0f}"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pred",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder of predictions (NAME_seg.nii.gz from predict, or NAME.nii.gz)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder of reference labels NAME.nii[.gz] (255 = unlabelled, ignored)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="write per-case and summary metrics"
    )
    parser.add_argument(
        "--ignore-value",
        type=int,
        default=255,
        metavar="V",
        help="label value of unlabelled voxels (default 255)",
    )
    parser.add_argument(
        "--ignore-affine",
        action="store_true",
        help="compare predictions with references whose affines (voxel size, orientation, "
        "origin) differ; by default that is refused, since the voxels do not correspond",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..core.atomic import write_json
    from ..core.io import check_output_file, read_nifti
    from ..core.metrics import evaluate_case, summarise, topology_report
    from ._progress import ProgressBar

    for name, folder in (("pred", args.pred), ("labels", args.labels)):
        if not folder.is_dir():
            raise FileNotFoundError(f"--{name} {folder}: folder not found")
    if args.pred.resolve() == args.labels.resolve():
        raise ValueError(f"--pred and --labels are the same folder ({args.pred}): the labels "
                         "would be compared with themselves")
    if args.ignore_value in (0, 1) or not 0 <= args.ignore_value <= 255:
        raise ValueError(f"--ignore-value must be in 2..255 (0 and 1 are background and "
                         f"foreground), got {args.ignore_value}")
    if args.json is not None:
        check_output_file(args.json, overwrite=args.overwrite, what="--json")
    pairs = match_cases(args.pred, args.labels)
    cases = []
    bar = None if args.quiet else ProgressBar("evaluate")
    for index, (name, pred_path, label_path) in enumerate(pairs):
        if bar is not None:
            bar(index, len(pairs), name)
        pred, reference = read_nifti(pred_path), read_nifti(label_path)
        if pred.array.shape != reference.array.shape:
            raise ValueError(
                f"{pred_path} has shape {pred.array.shape} but {label_path} has "
                f"{reference.array.shape}"
            )
        check_reference(label_path, reference.array, args.ignore_value)
        check_prediction(pred_path, pred.array)
        if not args.ignore_affine:
            check_same_geometry(pred_path, pred.affine, label_path, reference.affine)
        displacement = read_displacement(args.pred, name, pred)
        det = read_det(args.pred, name) if displacement is None else None
        mask = pred.array != 0
        topology = topology_report(mask, displacement)
        metrics = evaluate_case(mask, reference.array, reference.spacing, displacement,
                                ignore_value=args.ignore_value, topology=topology, det=det)
        cases.append({"name": name, "prediction": str(pred_path), "labels": str(label_path),
                      **metrics, "topology": topology})
    if bar is not None:
        bar(len(pairs), len(pairs))
        bar.close()
    summary = summarise(cases, [key for key, _, _ in COLUMNS])
    print(format_table(cases, summary))
    if args.json is not None:
        write_json(args.json, {"cases": cases, "summary": summary}, overwrite=args.overwrite)
        print(f"wrote {args.json}")
    return 0


def match_cases(pred_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
    """(name, prediction, label) for every label file with a prediction; errors name the gaps."""
    files = [p for p in sorted(label_dir.iterdir()) if is_nifti(p)]
    if not files:
        raise FileNotFoundError(f"--labels {label_dir}: folder holds no .nii/.nii.gz files")
    labels = {nifti_stem(p): p for p in files}
    _refuse_ambiguous("--labels", files)
    pairs, missing = [], []
    for name, label_path in labels.items():
        candidates = [pred_dir / f"{name}{OUTPUTS['seg']}",
                      pred_dir / f"{name}{OUTPUTS['seg'].removesuffix('.gz')}",
                      pred_dir / f"{name}{LEGACY_SEGMENTATION}.nii.gz"]
        candidates += [pred_dir / f"{name}{ext}" for ext in (".nii.gz", ".nii")]
        found = [c for c in candidates if c.is_file()]
        _refuse_ambiguous("--pred", found)
        found = found[0] if found else None
        if found is None:
            missing.append(name)
        else:
            pairs.append((name, found, label_path))
    if not pairs:
        raise FileNotFoundError(
            f"--pred {pred_dir} holds no prediction for any label in {label_dir} "
            f"(expected e.g. {next(iter(labels))}{OUTPUTS['seg']})"
        )
    if missing:
        raise FileNotFoundError(
            f"--pred {pred_dir} lacks predictions for {len(missing)} label file(s): "
            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}"
        )
    return pairs


def check_reference(path: Path, labels, ignore_value: int) -> None:
    """Refuse reference labels outside {0, 1, ``ignore_value``} or without a labelled voxel."""
    import numpy as np

    from ..core.data import label_values_outside

    bad = label_values_outside(labels, ignore_value)
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:8]) + (" …" if bad.size > 8 else "")
        raise ValueError(
            f"reference {path} holds values other than 0, 1 and {ignore_value} (ignore): {shown} "
            f"({bad.size} in all) — is it an image rather than labels? (--ignore-value sets the "
            "unlabelled value)"
        )
    if not np.isin(labels, (0, 1)).any():
        raise ValueError(
            f"reference {path} has no labelled voxel (every voxel is {ignore_value}, ignore): "
            "there is nothing to compare with"
        )


def check_prediction(path: Path, prediction) -> None:
    """Refuse a prediction with values other than 0 and 1 (listed); a map of values in
    [0, 1] is named as a probability map to threshold."""
    import numpy as np

    values = np.unique(prediction)
    bad = values[~np.isin(values, (0, 1))]
    if not bad.size:
        return
    shown = ", ".join(f"{v:g}" for v in bad[:8]) + (" …" if bad.size > 8 else "")
    hint = ("; it looks like a probability map: evaluate its segmentation (predict writes "
            "NAME_seg.nii.gz), or threshold it at 0.5" if values.min() >= 0 and values.max() <= 1
            else "; a prediction is a 0/1 segmentation of one structure")
    raise ValueError(f"prediction {path} holds values other than 0 and 1: {shown} "
                     f"({bad.size} in all){hint}")


def _refuse_ambiguous(option: str, files: list[Path]) -> None:
    """Refuse two files of one case (``L.nii`` and ``L.nii.gz``): which one is meant?"""
    stems: dict[str, list[Path]] = {}
    for path in files:
        stems.setdefault(nifti_stem(path), []).append(path)
    for paths in stems.values():
        if len(paths) > 1:
            raise ValueError(f"{option}: {' and '.join(map(str, paths))} name the same case; "
                             "keep one of them")


def check_same_geometry(pred_path: Path, pred_affine, label_path: Path, label_affine) -> None:
    """Refuse a prediction whose affine differs from its reference's (1e-3 mm tolerance)."""
    import numpy as np

    from ..core.data import same_geometry

    if not same_geometry(pred_affine, label_affine):
        with np.printoptions(precision=4, suppress=True):
            raise ValueError(
                f"{pred_path} and {label_path} have different affines (voxel geometry), so "
                f"their voxels do not correspond:\n{pred_path.name}:\n{np.asarray(pred_affine)}"
                f"\n{label_path.name}:\n{np.asarray(label_affine)}\npass --ignore-affine to "
                "compare them voxel by voxel anyway"
            )


def read_displacement(folder: Path, name: str, pred) -> np.ndarray | None:
    """The displacement ``(n, *S)`` voxels beside a prediction (a :class:`core.io.Volume`):
    ``NAME_displacement.npy``, else the per-axis mm files of earlier Export widgets; None."""
    import numpy as np

    from ..core.io import read_nifti

    shape = (pred.array.ndim, *pred.array.shape)
    path = folder / f"{name}{OUTPUTS['displacement']}"
    axes = ("z", "y", "x")[3 - pred.array.ndim :]
    legacy = [folder / f"{name}{LEGACY_DISPLACEMENT.format(axis=axis)}" for axis in axes]
    if path.is_file():
        try:
            displacement = np.load(path)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(f"cannot read {path}: it is truncated or not a .npy array "
                             f"({error})") from error
    elif all(p.is_file() for p in legacy):
        path = legacy[0]
        spacing = pred.spacing
        displacement = np.stack([read_nifti(p).array / spacing[k] for k, p in enumerate(legacy)])
    else:
        return None
    if displacement.shape != shape:
        raise ValueError(f"{path} has shape {displacement.shape}; expected {shape}")
    return displacement.astype(np.float32)


def read_det(folder: Path, name: str) -> np.ndarray | None:
    """det ∇Φ ``(*S)`` beside a prediction (``NAME_jacdet.nii.gz`` or the earlier
    ``NAME_jacobian.nii.gz``), None when there is neither."""
    from ..core.io import read_nifti

    for suffix in (OUTPUTS["jacdet"], LEGACY_JACOBIAN):
        if (folder / f"{name}{suffix}").is_file():
            return read_nifti(folder / f"{name}{suffix}").array
    return None


def format_table(cases: list[dict], summary: dict) -> str:
    """Plain-text table: one row per case and a mean ± std row."""
    keys = [(k, title, fmt) for k, title, fmt in COLUMNS if k in summary]
    header = ["case", *[title for _, title, _ in keys]]
    rows = [
        [c["name"], *[fmt.format(c[k]) if k in c else "-" for k, _, fmt in keys]] for c in cases
    ]
    rows.append(
        [
            "mean ± std",
            *[
                f"{fmt.format(summary[k]['mean'])} ± {fmt.format(summary[k]['std'])}"
                for k, _, fmt in keys
            ],
        ]
    )
    from .._tables import format_table as table

    return table(header, rows, style="text", footer=1)
