"""``napari-difftt evaluate``: compare predicted segmentations with reference labels.

Predictions ``NAME_seg.nii.gz`` (or ``NAME.nii.gz``) in ``--pred`` are matched with
``NAME.nii[.gz]`` in ``--labels``. Per case: Dice, Hausdorff distance and HD95 in mm (the
reference file's spacing), connected components of the prediction (face connectivity), and —
when ``predict --jacobian`` left ``NAME_displacement.npy`` (or only ``NAME_jacdet.nii.gz``)
beside it — the percentage of voxels with det ∇Φ ≤ 0 (central differences; digital too when the
displacement is there). Prints a table with mean ± std; ``--json`` writes everything.
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
    ("components", "components", "{:.0f}"),
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.io import read_nifti
    from ..core.progress import ProgressBar

    for name, folder in (("pred", args.pred), ("labels", args.labels)):
        if not folder.is_dir():
            raise FileNotFoundError(f"--{name} {folder}: folder not found")
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise FileExistsError(f"{args.json} exists; pass --overwrite to replace it")
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


def case_metrics(
    pred, reference, spacing, displacement=None, jacdet=None, ignore_value: int = 255
) -> dict:
    """Metrics of one case; unlabelled voxels (``ignore_value``) are left out of Dice."""
    import numpy as np

    from ..core.metrics import components, dice, folding_percent, hausdorff, hd95

    pred = np.asarray(pred) > 0
    known = reference != ignore_value
    target = reference == 1
    result = {"dice": dice(pred[known], target[known])}
    if known.all():
        result["hausdorff"] = hausdorff(pred, target, spacing)
        result["hd95"] = hd95(pred, target, spacing)
    result["components"] = components(pred)
    if displacement is not None:
        result["folding_central"] = folding_percent(displacement, "central")
        result["folding_digital"] = folding_percent(displacement, "digital")
    elif jacdet is not None:
        result["folding_central"] = 100 * float(np.mean(jacdet <= 0))
    return {k: float(v) for k, v in result.items()}


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
