"""``napari-difftt evaluate``: compare predicted segmentations with reference labels.

Predictions ``NAME_seg.nii.gz`` (or ``NAME.nii.gz``) in ``--pred`` are matched with
``NAME.nii[.gz]`` in ``--labels``. Per case: Dice, Hausdorff distance and HD95 in mm (the
reference file's spacing), connected components of the prediction (face connectivity), and —
when ``predict --jacobian`` left ``NAME_displacement.npy`` (or only ``NAME_jacdet.nii.gz``)
beside it — the percentage of voxels with det ∇Φ ≤ 0 (central differences; digital too when the
displacement is there), as the topology report of :func:`core.metrics.topology_report`
(components with face and full connectivity too). Prints a table with mean ± std; ``--json``
writes everything, each case's report under ``"topology"``.

Refused before any metric is computed, naming the files: reference labels with values other
than 0, 1 and the ignore value (an intensity image given as labels), references without a
labelled voxel (whose Dice would be a meaningless 1.0), and a prediction whose affine (voxel
geometry) differs from its reference's — both printed; ``--ignore-affine`` compares them anyway.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .predict import DISPLACEMENT_SUFFIX, JACOBIAN_SUFFIX, SEGMENTATION_SUFFIX, nifti_stem

HELP = "compute Dice, HD, HD95, folding (det J <= 0) and components of predictions against labels"

# (key, column title, format)
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
    import numpy as np

    from ..core.io import check_output_file, read_nifti
    from ..core.progress import ProgressBar

    for name, folder in (("pred", args.pred), ("labels", args.labels)):
        if not folder.is_dir():
            raise FileNotFoundError(f"--{name} {folder}: folder not found")
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
        if not args.ignore_affine:
            check_same_geometry(pred_path, pred.affine, label_path, reference.affine)
        displacement_path = args.pred / f"{name}{DISPLACEMENT_SUFFIX}.npy"
        jacdet_path = args.pred / f"{name}{JACOBIAN_SUFFIX}.nii.gz"
        displacement = np.load(displacement_path) if displacement_path.is_file() else None
        if displacement is not None and displacement.shape != (pred.array.ndim, *pred.array.shape):
            raise ValueError(
                f"{displacement_path} has shape {displacement.shape}; expected "
                f"{(pred.array.ndim, *pred.array.shape)}"
            )
        jacdet = read_nifti(jacdet_path).array if jacdet_path.is_file() else None
        metrics = case_metrics(
            pred.array, reference.array, reference.spacing, displacement, jacdet, args.ignore_value
        )
        cases.append(
            {"name": name, "prediction": str(pred_path), "labels": str(label_path), **metrics}
        )
    if bar is not None:
        bar(len(pairs), len(pairs))
        bar.close()
    summary = summarise(cases)
    print(format_table(cases, summary))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cases": cases, "summary": summary}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def match_cases(pred_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
    """(name, prediction, label) for every label file with a prediction; errors name the gaps."""
    labels = {
        nifti_stem(p): p
        for p in sorted(label_dir.iterdir())
        if p.is_file() and p.name.endswith((".nii", ".nii.gz"))
    }
    if not labels:
        raise FileNotFoundError(f"--labels {label_dir}: folder holds no .nii/.nii.gz files")
    pairs, missing = [], []
    for name, label_path in labels.items():
        candidates = [pred_dir / f"{name}{SEGMENTATION_SUFFIX}{ext}" for ext in (".nii.gz", ".nii")]
        candidates += [pred_dir / f"{name}{ext}" for ext in (".nii.gz", ".nii")]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(name)
        else:
            pairs.append((name, found, label_path))
    if not pairs:
        raise FileNotFoundError(
            f"--pred {pred_dir} holds no prediction for any label in {label_dir} "
            f"(expected e.g. {next(iter(labels))}{SEGMENTATION_SUFFIX}.nii.gz)"
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


def case_metrics(
    pred, reference, spacing, displacement=None, jacdet=None, ignore_value: int = 255
) -> dict:
    """Metrics of one case; unlabelled voxels (``ignore_value``) are left out of Dice."""
    import numpy as np

    from ..core.metrics import dice, hausdorff, hd95, topology_report

    pred = np.asarray(pred) > 0
    known = reference != ignore_value
    target = reference == 1
    result = {"dice": dice(pred[known], target[known])}
    if known.all():
        result["hausdorff"] = hausdorff(pred, target, spacing)
        result["hd95"] = hd95(pred, target, spacing)
    topology = topology_report(pred, displacement)
    if topology["folding_central"] is None and jacdet is not None:
        topology["folding_central"] = 100 * float(np.mean(jacdet <= 0))
    result.update(
        {k: topology[k] for k in ("components", "components_full", "folding_central",
                                  "folding_digital") if topology[k] is not None}
    )
    return {**{k: float(v) for k, v in result.items()}, "topology": topology}


def summarise(cases: list[dict]) -> dict:
    """Mean, std (population) and count of every metric over the cases that have it."""
    import numpy as np

    summary = {}
    for key, _, _ in COLUMNS:
        values = np.array([c[key] for c in cases if key in c], dtype=np.float64)
        if values.size:
            finite = values[np.isfinite(values)]
            summary[key] = {
                "mean": float(finite.mean()) if finite.size == values.size else math.inf,
                "std": float(finite.std()) if finite.size == values.size else math.nan,
                "n": int(values.size),
            }
    return summary


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
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)
