"""Ablation of the velocity parameterisation (issue 10): factor k / B-spline lattice × Gaussian
smoothing × bound × λ, for svf and bch, U-Net beside them; one JSON file per run.

    python scripts/experiments/velocity_ablation.py phantom32 --out R      # 3D, 32³ volumes
    python scripts/experiments/velocity_ablation.py phantom64 --out R --only ...  # 3D, 64³
    python scripts/experiments/velocity_ablation.py silhouettes --out R    # 2D Fashion-MNIST
    python scripts/experiments/velocity_ablation.py report --out R         # Markdown tables

Every row of a data set gets the same budget: ``--iterations`` Adam steps on whole volumes
(patch = volume), batch 1, lr 1e-3 with cosine annealing, seed ``--seed`` (0), width
``--width``, the prior (μ, diagonal Σ learnt; β = 1, no pose level and the heads on the image
grid, ``feature_level`` 0, unless the row says otherwise) fitted to the training masks first.
Each test volume is predicted whole and scored with the topology report: Dice, HD95 (mm), % det
J ≤ 0 over the whole grid by central differences and by the digital test, connected components
with face connectivity (6 in 3D, 4 in 2D) and with full connectivity (26 / 8).
A run whose JSON exists is skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from napari_difftt.core.data import load_nifti_folder, write_phantom_dataset
from napari_difftt.core.inference import predict_volume
from napari_difftt.core.metrics import evaluate_case
from napari_difftt.core.train import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from segmentation import machine, train_timed

# name → TrainConfig overrides; "legacy" is the parameterisation before issue 10
ROWS = {
    "unet": {"kind": "unet"},
    "legacy": {"velocity_factor": 1, "alpha": 256.0},
    "legacy_l0.01": {"velocity_factor": 1, "alpha": 256.0, "smoothness": 0.01},
    "k2_b256": {"velocity_factor": 2, "alpha": 256.0},
    "k2_b16": {"velocity_factor": 2, "alpha": 16.0},
    "k2_b16_s1": {"velocity_factor": 2, "alpha": 16.0, "velocity_sigma": 1.0},
    "k2_b8_s1": {"velocity_factor": 2, "alpha": 8.0, "velocity_sigma": 1.0},
    "k4_b16": {"velocity_factor": 4, "alpha": 16.0},
    "k4_b16_s1": {"velocity_factor": 4, "alpha": 16.0, "velocity_sigma": 1.0},
    "k1_b16_s2": {"velocity_factor": 1, "alpha": 16.0, "velocity_sigma": 2.0},
    "bs4_k2_b16": {"velocity": "bspline", "velocity_lattice": 4, "velocity_factor": 2,
                   "alpha": 16.0},
    "bs8_k2_b16": {"velocity": "bspline", "velocity_lattice": 8, "velocity_factor": 2,
                   "alpha": 16.0},
    "k2_b32_s1": {"velocity_factor": 2, "alpha": 32.0, "velocity_sigma": 1.0},
    "k2_b64_s1": {"velocity_factor": 2, "alpha": 64.0, "velocity_sigma": 1.0},
    "bs4_k2_b32": {"velocity": "bspline", "velocity_lattice": 4, "velocity_factor": 2,
                   "alpha": 32.0},
    "bs4_k2_b64": {"velocity": "bspline", "velocity_lattice": 4, "velocity_factor": 2,
                   "alpha": 64.0},
    "bs3_k1_b32": {"velocity": "bspline", "velocity_lattice": 3, "velocity_factor": 1,
                   "alpha": 32.0},
    "bs4_k2_b16_beta2": {"velocity": "bspline", "velocity_lattice": 4, "velocity_factor": 2,
                         "alpha": 16.0, "prior_beta": 2.0},
    "bs4_k2_b16_beta4": {"velocity": "bspline", "velocity_lattice": 4, "velocity_factor": 2,
                         "alpha": 16.0, "prior_beta": 4.0},
    "k2_b16_s1_l0.001": {"velocity_factor": 2, "alpha": 16.0, "velocity_sigma": 1.0,
                         "smoothness": 0.001},
}
# issue 17 (accuracy under the guarantee): the library's velocity space (B-spline s = 4, k = 2,
# bound 16, β = 4) with a full-Σ prior and/or the pose level (core.pose), then its budget
_SPACE = {"velocity": "bspline", "velocity_lattice": 4, "velocity_factor": 2, "alpha": 16.0,
          "prior_beta": 4.0}
_POSE = {**_SPACE, "prior": "full", "pose": True}  # the pose level with a full-Σ prior
_POSE_BS2 = {**_POSE, "velocity_lattice": 2}  # ... on lattice 2, today's default space
ROWS.update({
    "space_diag": {**_SPACE, "prior": "diag"},
    "space_full": {**_SPACE, "prior": "full"},
    "pose_diag": {**_SPACE, "prior": "diag", "pose": True},
    "pose_full": _POSE,
    "pose_full_T8": {**_POSE, "pieces": 8},
    "pose_full_b32": {**_POSE, "alpha": 32.0},
    "pose_full_bs2": _POSE_BS2,
    # the segmentation threshold calibrated on the training volumes (core.train.calibration)
    "pose_full_bs2_cal": {**_POSE_BS2, "calibrate": True},
    "pose_full_bs2_half": {**_POSE_BS2, "calibrate": False},  # ½, now that calibrating is default
    "unet_cal": {"kind": "unet", "calibrate": True},
    # session 10, the 2D HD95 gap: finer integration grids and the prior's kurtosis
    "pose_full_k1_bs2": {**_POSE_BS2, "velocity_factor": 1},
    "pose_full_k1_bs1": {**_POSE, "velocity_factor": 1, "velocity_lattice": 1},
    "pose_full_bs2_beta2": {**_POSE_BS2, "prior_beta": 2.0},
    "pose_full_bs2_beta8": {**_POSE_BS2, "prior_beta": 8.0},
    "pose_full_bs2_T8": {**_POSE_BS2, "pieces": 8},
    # the fine-tune's bound (session 10) for fresh models, calibrated like the default
    "pose_full_bs2_b8": {**_POSE_BS2, "alpha": 8.0},
    "pose_full_bs2_b6": {**_POSE_BS2, "alpha": 6.0},
    "pose_full_bs2_b4": {**_POSE_BS2, "alpha": 4.0},
    # the fine-tune's smoothness (session 8) for fresh models
    "pose_full_bs2_l01": {**_POSE_BS2, "smoothness": 0.1},
    "pose_full_bs2_l003": {**_POSE_BS2, "smoothness": 0.03},
    # session 12: the heads read the decoder at half resolution (core.nets.UNet feature_level)
    "pose_full_bs2_l003_f1": {**_POSE_BS2, "smoothness": 0.03, "feature_level": 1},
    # session 13: half-resolution heads in 2D with more smoothness (folds at λ 0.03)
    "pose_full_bs2_l01_f1": {**_POSE_BS2, "smoothness": 0.1, "feature_level": 1},
    "pose_full_bs2_l03_f1": {**_POSE_BS2, "smoothness": 0.3, "feature_level": 1},
})
DATASETS = ("phantom32", "phantom64", "lobed48", "silhouettes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=(*DATASETS, "report"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON results")
    parser.add_argument("--models", nargs="+", default=["bch", "svf"], help="flow model kinds")
    parser.add_argument("--only", nargs="*", help="run only these rows (names of ROWS)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="training seed (data stay the same)")
    args = parser.parse_args()
    if args.dataset == "report":
        return report(args.out)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = load(args.dataset, args.out)
    for row, settings in ROWS.items():
        if args.only is not None and row not in args.only:
            continue
        kinds = ["unet"] if row.startswith("unet") else args.models
        for kind in kinds:
            stem = (f"{args.dataset}_{row}" if row.startswith("unet")
                    else f"{args.dataset}_{kind}_{row}")
            path = args.out / f"{stem}.json"
            if path.exists():
                print(f"{path} exists: skipped", flush=True)
                continue
            record = run(stem, {"kind": kind, **settings}, train, test, args)
            record.update(dataset=args.dataset, row=row, command=" ".join(sys.argv))
            path.write_text(json.dumps(record, indent=2) + "\n")
            s = record["summary"]
            print(f"{stem}: Dice {s['dice']:.3f} central {s['central_max']:.4f}% digital "
                  f"{s['digital_max']:.4f}% one-component {s['single_face']}/{len(test)} "
                  f"({record['train_seconds']:.0f} s)", flush=True)


def load(dataset: str, out: Path) -> tuple[list, list]:
    """Training and test samples of ``dataset`` (phantoms written under ``out`` once)."""
    if dataset == "silhouettes":
        from silhouettes import silhouettes  # same folder

        options = argparse.Namespace(data="/usr/share/datasets/fashion-mnist", threshold=0.05,
                                     classes=[0, 1, 2, 3, 4, 6, 8])
        return (silhouettes(options, "train", 300, 0)[0], silhouettes(options, "test", 100, 1)[0])
    if dataset == "lobed48":
        folder = out / "data_lobed48"
        if not (folder / "imagesTs").is_dir():
            write_phantom_dataset(folder, n_train=8, n_test=4, shape=(48,) * 3, seed=200,
                                  organ="lobed")
        return (load_nifti_folder(folder / "imagesTr", folder / "labelsTr"),
                load_nifti_folder(folder / "imagesTs", folder / "labelsTs"))
    size = 32 if dataset == "phantom32" else 64
    folder = out / f"data{size}"
    if not (folder / "imagesTs").is_dir():
        write_phantom_dataset(folder, n_train=8, n_test=6 if size == 32 else 4,
                              shape=(size,) * 3, seed=100)
    return (load_nifti_folder(folder / "imagesTr", folder / "labelsTr"),
            load_nifti_folder(folder / "imagesTs", folder / "labelsTs"))


def run(stem: str, settings: dict, train: list, test: list, args) -> dict:
    """Train one row on whole volumes, test it on every volume; the JSON record."""
    config = row_config(settings, tuple(train[0].image.shape), args.iterations, args.width,
                        args.seed)
    trainer, result, seconds = train_timed(stem, config, train)
    model = trainer.model
    cases = []
    for sample in test:
        prediction = predict_volume(model, sample.image, normalise=False)
        cases.append({"name": sample.name, **score(prediction, sample)})
    return {"config": trainer.config.to_dict(), "threshold": model.threshold,
            "train_seconds": seconds, "final_loss": result.loss,
            "cases": cases, "summary": summarise(cases), "machine": machine()}


def row_config(settings: dict, shape: tuple[int, ...], iterations: int, width: int,
               seed: int = 0) -> TrainConfig:
    """The protocol's TrainConfig for a row's ``settings`` on whole volumes of ``shape``."""
    return TrainConfig(**{"iterations": iterations, "patch_size": shape, "width": width,
                          "lr": 1e-3, "prior": "diag", "seed": seed, "device": "cpu",
                          "prior_beta": 1.0, "pose": False, "feature_level": 0, **settings})


def score(prediction, sample) -> dict:
    """:func:`core.metrics.evaluate_case` of one prediction against its labels (its topology
    report as ``predict_volume`` filled it in)."""
    return evaluate_case(prediction.segmentation, sample.labels, sample.spacing,
                         prediction.displacement, ignore_value=255, topology=prediction.topology)


def summarise(cases: list[dict]) -> dict:
    """Means and worst cases over the test volumes."""
    def mean(key: str) -> float:
        return statistics.fmean(c[key] for c in cases)

    summary = {"dice": mean("dice"), "dice_std": statistics.pstdev(c["dice"] for c in cases),
               "hd95": mean("hd95"),
               "single_face": sum(c["components"] == 1 for c in cases),
               "single_full": sum(c["components_full"] == 1 for c in cases),
               "central_max": 0.0, "digital_max": 0.0, "central_mean": 0.0, "digital_mean": 0.0}
    if "folding_central" in cases[0]:
        for scheme in ("central", "digital"):
            values = [c[f"folding_{scheme}"] for c in cases]
            summary[f"{scheme}_max"], summary[f"{scheme}_mean"] = max(values), statistics.fmean(
                values)
    return summary


def report(folder: Path) -> None:
    """One Markdown table per data set and model, every number from the JSON files."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    records = [r for r in records if "dataset" in r]
    for dataset in DATASETS:
        rows = [r for r in records if r["dataset"] == dataset]
        if not rows:
            continue
        tests = len(rows[0]["cases"])
        print(f"#### {dataset} ({tests} test volumes, {rows[0]['config']['iterations']} "
              "iterations)\n")
        print("| model | row | k | lattice | σ | bound | λ | β | prior | pose | T | Dice | "
              "HD95 mm | max % det J ≤ 0 central | max % digital | 1 component (face) | "
              "1 component (full) | train s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        order = list(ROWS)
        rows.sort(key=lambda r: (r["config"]["kind"] != "unet", r["config"]["kind"],
                                 order.index(r["row"]) if r["row"] in order else 99))
        for r in rows:
            c, s = r["config"], r["summary"]
            flow = c["kind"] != "unet"
            space = (f"{c['velocity_factor']} | {c['velocity_lattice'] or '-'} | "
                     f"{c['velocity_sigma']:g} | {c['alpha']:g} | {c['smoothness']:g} | "
                     f"{c['prior_beta']:g} | {c['prior']} | {_pose(c.get('pose'))} | "
                     f"{c['pieces']}" if flow else "- | - | - | - | - | - | - | - | -")
            folds = (f"{s['central_max']:.4f} | {s['digital_max']:.4f}" if flow else "n/a | n/a")
            print(f"| {c['kind']} | {r['row']} | {space} | {s['dice']:.3f} ± {s['dice_std']:.3f} "
                  f"| {s['hd95']:.2f} | {folds} | {s['single_face']}/{tests} | "
                  f"{s['single_full']}/{tests} | {r['train_seconds']:.0f} |")
        print()


def _pose(value) -> str:
    """The pose column: yes / no, or the name of a pose variant no longer in the code."""
    return {True: "yes", False: "no", None: "no"}.get(value, str(value))


if __name__ == "__main__":
    main()
