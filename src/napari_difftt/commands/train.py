"""``napari-difftt train``: train a template transformer on NIfTI folders.

Also works under ``torchrun --nproc_per_node N -m napari_difftt.cli train ...`` (one process per
GPU, DistributedDataParallel); only rank 0 prints and writes the checkpoint.

Ctrl-C (SIGINT) or SIGTERM during training finishes the step under way, writes the checkpoint
of that step atomically, says where, and exits 130 or 143; a second signal aborts at once.

Before training, ``--out``'s folder must have room for a checkpoint (free space and the
file-size limit). If a save still fails (a full disk, ``ulimit -f``, a permission changed), the
run goes on; when the last save fails too, the checkpoint goes into the system's temp folder,
a warning says where, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

HELP = "train a segmentation model (bch | svf | stt | unet) on NIfTI image/label folders"
BUNDLED = "bundled"  # --init bundled: the bundled model of the run's dimensionality


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train``; every default and choice comes from :class:`TrainConfig`."""
    from ..core.nets import FEATURE_LEVELS
    from ..core.train.config import (
        BCH_ORDERS,
        FINE_TUNE_SMOOTHNESS,
        FLOW_FEATURE_LEVELS,
        FRESH_SMOOTHNESS,
        FRESH_SMOOTHNESS_2D_HALF,
        KINDS,
        PARAMETERISATIONS,
        PRIOR_INITS,
        TUNES,
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        metavar="ROOT",
        help="data set root with imagesTr/ and labelsTr/ (and optionally imagesVal/, "
        "labelsVal/); instead of --images/--labels",
    )
    data.add_argument(
        "--images", type=Path, metavar="DIR", help="folder of training images (.nii/.nii.gz)"
    )
    data.add_argument(
        "--labels",
        type=Path,
        metavar="DIR",
        help="folder of label volumes with the same file names (0/1, 255 = unlabelled)",
    )
    data.add_argument("--val-images", type=Path, metavar="DIR", help="validation images")
    data.add_argument("--val-labels", type=Path, metavar="DIR", help="validation labels")
    data.add_argument(
        "--spacing",
        action=_Typed,
        type=float,
        metavar="MM",
        help="resample every volume to this isotropic spacing in mm (default: as stored)",
    )
    _option(data, "--ignore-value", "label value of unlabelled voxels, left out of the loss",
            type=int, metavar="V")
    model = parser.add_argument_group("model")
    _option(model, "--model", "bch: time-dependent flow (BCH); svf: stationary field; stt: "
            "displacement without integration; unet: direct estimation", dest="kind",
            choices=KINDS)
    _option(model, "--width", "U-Net channels at full resolution", type=int)
    _option(model, "--pieces", "velocity fields T for bch", type=int)
    _option(model, "--bch-order", "order of the BCH series", type=int, choices=BCH_ORDERS)
    add_velocity_arguments(model)
    _option(model, "--prior", "what the shape prior learns: fixed, mean (μ), sigma (μ, σ²), diag "
            "(μ, diagonal Σ), full (μ, full Σ)", choices=PARAMETERISATIONS)
    model.add_argument("--train-beta", action=_Typed, nargs=0, const=True, default=False,
                       help="also learn the prior's shape β")
    _option(model, "--prior-beta", "initial β: 1 is Gaussian, larger is flatter inside with a "
            "sharper edge", type=float)
    _option(model, "--prior-init", "labels: fit μ, Σ to the training masks; centre: centred, "
            "radii 0.5", choices=PRIOR_INITS)
    model.add_argument("--smoothness", action=_Typed, type=float, default=None, metavar="LAMBDA",
                       help=f"weight of the λ‖∇u‖² penalty (default {FRESH_SMOOTHNESS:g}; "
                       f"{FRESH_SMOOTHNESS_2D_HALF:g} for 2D heads at half resolution; "
                       f"{FINE_TUNE_SMOOTHNESS:g} with --init; as measured in docs/RESULTS.md)")
    _option(model, "--pose", "the pose level: an affine map per image, the exact flow of a "
            "linear velocity field, places the prior before the velocities deform it (flow "
            "models)", action=_TypedSwitch)
    _option(model, "--pose-loss", "weight of the pose level's soft-mask cross-entropy",
            type=float, metavar="W")
    model.add_argument("--feature-level", action=_Typed, type=int, choices=FEATURE_LEVELS,
                       default=None, metavar="L",
                       help="the U-Net decoder level a flow model's heads read: 0 the image "
                       "grid, 1 half its resolution (without the full-resolution decoder block, "
                       "the finer encoder features folded in; default for a fresh flow model: "
                       f"{FLOW_FEATURE_LEVELS[2]} in 2D, "
                       f"{FLOW_FEATURE_LEVELS[3]} in 3D; the init's with --init; as measured in "
                       "docs/RESULTS.md)")
    tune = parser.add_argument_group("fine-tuning and painted slices")
    tune.add_argument(
        "--init", metavar="CKPT", help="warm-start the network from this checkpoint (same "
        "--model kind and dimensionality), or 'bundled': the bundled model of the patches' "
        "dimensionality (the best start on painted slices, docs/RESULTS.md); its velocities "
        "are read in this run's velocity space (--velocity…, --alpha); the prior is "
        "re-fitted to the training labels (painted slices: as deep as the organ in the image) "
        "unless --keep-prior. Not with --resume")
    tune.add_argument("--keep-prior", action="store_true",
                      help="with --init: keep its prior instead of re-fitting it")
    _option(tune, "--tune", "with --init: train all of the model, or only its heads (the U-Net "
            "frozen; docs/RESULTS.md: less drift on one volume, worse on several)", choices=TUNES)
    tune.add_argument("--image-depth", action=_TypedSwitch, default=None,
                      help="painted slices: make the prior as deep as the organ seen in the "
                      "image; default: with --init, as measured in docs/RESULTS.md")
    tune.add_argument("--image-mask", action=_TypedSwitch, default=None,
                      help="a volume painted on one slice: the pose level's mask also learns "
                      "the organ seen in the image off it; default: with the image depth")
    tune.add_argument("--image-segmentation", action=_TypedSwitch, default=None,
                      help="... and the segmentation learns it too, leaving a margin of the "
                      "image's organ out of the background; default: with --image-mask")
    _option(tune, "--minutes", "time budget of the training steps; the run ends at it or at "
            "--iterations, whichever comes first, and the cosine schedule anneals lr to 0 over "
            "it", type=float, metavar="M")
    _option(tune, "--painted-axis", "the label files are painted slices along this array "
            "axis (0 = z, 1 = y, 2 = x; 2D: 0 rows, 1 columns): slices holding organ voxels count "
            "as fully annotated, all others as unlabelled", type=int, choices=(0, 1, 2),
            metavar="AXIS")
    run = parser.add_argument_group("optimisation")
    _option(run, "--iterations", "optimiser steps", type=int)
    _option(run, "--patch-size", "patch size D H W (3D) or H W (2D) in voxels", type=int,
            nargs="+", metavar="N")
    _option(run, "--batch-size", "patches per step", type=int)
    run.add_argument("--mirror", action=_TypedSwitch, default=None,
                     help="flip each training patch along each axis with probability 1/2 (not "
                     "for data whose sides differ); default: on for whole-volume patches with "
                     "--init or sparse labels, off otherwise, as measured in docs/RESULTS.md")
    run.add_argument("--calibrate", action=_TypedSwitch, default=None,
                     help="at the end, set the segmentation threshold to the level of the "
                     "probability that fits the validation (else training) labels best "
                     "(every level keeps the topology); default: for a fresh flow model on "
                     "dense labels, as measured in docs/RESULTS.md")
    _option(run, "--lr", "Adam learning rate", type=float)
    _option(run, "--seed", "random seed", type=int)
    _option(run, "--device", "auto | cpu | cuda | cuda:N | mps")
    run.add_argument("--threads", type=int, help="CPU threads for torch, >= 1 (default: torch's "
                     "choice)")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", type=Path, required=True, metavar="CKPT", help="checkpoint file to write"
    )
    out.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    out.add_argument(
        "--resume",
        type=Path,
        metavar="CKPT",
        help="continue a run from its checkpoint: model and optimisation settings come from it "
        "(options typed with other values are refused, each listed). With more --iterations "
        "than the first run, the cosine schedule restarts at the run's lr and anneals to 0 over "
        "the new steps; with the same --iterations an interrupted run continues exactly",
    )
    _option(out, "--checkpoint-every", "also save every N steps (0: only at the end)", type=int,
            metavar="N")
    _option(out, "--val-every", "validate every N steps (0: only at the end)", type=int,
            metavar="N")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(typed=frozenset())


class _Typed(argparse.Action):
    """Store the option's value (``const`` for a flag) and record in ``typed`` that it was
    given on the command line, whatever its value."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.typed = getattr(namespace, "typed", frozenset()) | {self.dest}


class _TypedSwitch(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, recorded in ``typed`` like :class:`_Typed`."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        namespace.typed = getattr(namespace, "typed", frozenset()) | {self.dest}


def _option(
    group: argparse._ArgumentGroup, flag: str, help: str, *, dest: str | None = None, **kwargs
) -> None:
    """Add ``flag`` for the :class:`TrainConfig` field ``dest`` (default: the flag's name), with
    that field's default, stated at the end of ``help``."""
    from ..core.train.config import DEFAULTS

    dest = dest or flag.removeprefix("--").replace("-", "_")
    default = getattr(DEFAULTS, dest)
    if isinstance(default, tuple):
        default, shown = list(default), " ".join(map(str, default))
    else:
        shown = f"{default:g}" if isinstance(default, float) else str(default)
    kwargs.setdefault("action", _Typed)
    group.add_argument(flag, dest=dest, default=default, help=f"{help} (default {shown})",
                       **kwargs)


def add_velocity_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of :class:`core.velocity.VelocitySpace`, defaults from :class:`TrainConfig`."""
    from ..core.flow.velocity import DEFAULT_SPACE, FACTORS, SPACE_KINDS
    from ..core.train.config import DEFAULTS as default
    from ..core.train.config import FINE_TUNE_BOUND

    group.add_argument(
        "--velocity", action=_Typed, choices=SPACE_KINDS, default=default.velocity,
        help="dense: velocities on a grid `--velocity-factor` times coarser than the image; "
        "bspline: a cubic B-spline with control points every `--velocity-lattice` voxels, "
        f"evaluated on that grid (default {default.velocity})",
    )
    group.add_argument(
        "--velocity-factor", action=_Typed, type=int, choices=FACTORS,
        default=default.velocity_factor,
        metavar="K", help="integrate the flow on a grid K times coarser than the image, then "
        f"upsample the displacement (1, 2 or 4; default {default.velocity_factor})",
    )
    group.add_argument(
        "--velocity-lattice", action=_Typed, type=int, default=default.velocity_lattice,
        metavar="S",
        help="B-spline control-point spacing in image voxels (bspline only; default "
        f"{DEFAULT_SPACE.lattice}, or K where coarser)",
    )
    group.add_argument(
        "--velocity-sigma", action=_Typed, type=float, default=default.velocity_sigma,
        metavar="SIGMA",
        help="Gaussian smoothing of each velocity, in coarse voxels "
        f"(0: none; default {default.velocity_sigma:g})",
    )
    group.add_argument(
        "--alpha", action=_Typed, type=float, default=default.alpha, metavar="VOXELS",
        help=f"largest velocity of one piece in image voxels (default {DEFAULT_SPACE.bound:g}, "
        f"or {FINE_TUNE_BOUND:g} with --init, as measured in docs/RESULTS.md)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..core.data import load_nifti_folder
    from ..core.io import check_output_file, load_checkpoint
    from ..core.train import TrainConfig, Trainer
    from ..core.train.checkpoint import resumable
    from ._progress import ProgressBar

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.resume is not None and args.init is not None:
        raise ValueError("give either --resume CKPT (continue a run) or --init CKPT (warm-start "
                         "a new one), not both")
    images, labels, val_images, val_labels = _data_folders(args)
    out = args.out
    resuming_in_place = args.resume is not None and args.resume.resolve() == out.resolve()
    check_output_file(out, overwrite=args.overwrite or resuming_in_place, what="--out")
    if out.suffix != ".pt":
        raise ValueError(f"--out {out}: checkpoint files end in .pt")

    # every TrainConfig field has its option (same name); the checkpoint is --out
    settings = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name in args}
    settings.update(patch_size=tuple(args.patch_size), checkpoint=str(out))
    if settings.get("init") == BUNDLED:
        from ..core.inference import default_checkpoint

        settings["init"] = str(default_checkpoint(len(settings["patch_size"])))
    if args.resume is not None:
        previous = resumable(args.resume, load_checkpoint(args.resume))["config"]
        if "kind" not in args.typed:
            settings["kind"] = previous["kind"]
        elif args.kind != previous["kind"]:
            raise ValueError(
                f"--resume {args.resume} holds a {previous['kind']!r} model but --model "
                f"{args.kind} was given; resume with --model {previous['kind']}"
            )
        _refuse_conflicts(args.resume, previous, TrainConfig(**settings).to_dict(), args.typed)
        config = TrainConfig.from_dict(previous, **{k: settings[k] for k in _RUNTIME})
    else:
        config = TrainConfig(**settings)

    rank = int(os.environ.get("RANK", "0"))
    say = print if rank == 0 else (lambda *a, **k: None)
    train = load_nifti_folder(
        images, labels, spacing=config.spacing, ignore_value=config.ignore_value
    )
    val = (
        load_nifti_folder(
            val_images, val_labels, spacing=config.spacing, ignore_value=config.ignore_value
        )
        if val_images
        else []
    )
    say(
        f"training {config.kind} on {len(train)} volume(s)"
        + (f", validating on {len(val)}" if val else "")
        + f"; checkpoint → {out}"
    )
    trainer = Trainer(
        config,
        train,
        val,
        resume=args.resume,
        log=(lambda m: say(m, file=sys.stderr)) if not args.quiet else None,
    )
    bar = ProgressBar("train") if rank == 0 and not args.quiet else None

    def report(event) -> None:
        if bar is not None:
            extra = f"loss {event.loss:.4f}"
            if event.val_dice is not None:
                extra += f" val Dice {event.val_dice:.4f}"
            bar(event.step, event.total, extra)

    with _stop_on_signals(trainer, say) as received:
        try:
            result = trainer.run(callback=report)
        finally:
            if bar is not None:
                bar.close()
    val_text = f", validation Dice {result.val_dice:.4f}" if result.val_dice is not None else ""
    state = "stopped" if result.stopped else "finished"
    say(
        f"{state} at step {result.step}/{result.total} in {result.seconds:.1f} s: "
        f"loss {result.loss:.4f}{val_text}; saved {result.checkpoint}"
    )
    status = 0
    if result.unsaved is not None and result.checkpoint is not None:
        print(f"warning: could not write --out {out} ({result.unsaved}); the checkpoint of step "
              f"{result.step} is saved at {result.checkpoint} instead: move it where you want it, "
              f"or continue with --resume {result.checkpoint}", file=sys.stderr)
        status = 1
    if received:
        name = signal.Signals(received[0]).name
        say(
            f"interrupted by {name}: the checkpoint of step {result.step} is {result.checkpoint}; "
            f"continue with --resume {result.checkpoint}",
            file=sys.stderr,
        )
        return 128 + received[0]
    return status


# settings a resumed run takes from the command line; every other one comes from the checkpoint
_RUNTIME = ("iterations", "device", "checkpoint", "checkpoint_every", "val_every")
_FLAGS = {"kind": "--model", "checkpoint": "--out"}


def _refuse_conflicts(resume: Path, previous: dict, requested: dict, typed: frozenset) -> None:
    """Refuse options typed on the command line with values other than the checkpoint's,
    listing each one (whatever their value: a typed default counts); options not typed take
    the checkpoint's values."""
    from ..errors import ConfigConflict

    conflicts = [
        f"{_FLAGS.get(key, '--' + key.replace('_', '-'))} {_show(value)} "
        f"(checkpoint: {_show(previous.get(key))})"
        for key, value in requested.items()
        if key not in _RUNTIME and key in typed and value != previous.get(key)
    ]
    if conflicts:
        raise ConfigConflict(
            f"--resume {resume}: these options contradict the checkpoint, whose settings a "
            f"resumed run keeps: {'; '.join(conflicts)}. Drop them, or start a new run without "
            "--resume"
        )


def _show(value: object) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


@contextlib.contextmanager
def _stop_on_signals(trainer, say) -> Iterator[list[int]]:
    """SIGINT/SIGTERM ask ``trainer`` to stop after its current step (which saves); a second
    signal raises KeyboardInterrupt. Yields the list of signals received."""
    received: list[int] = []

    def handle(number: int, frame) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(number)
        trainer.stop()
        say(
            f"{signal.Signals(number).name}: saving the checkpoint after the current step "
            "(signal again to abort without saving)",
            file=sys.stderr,
        )

    previous = {number: signal.signal(number, handle) for number in _SIGNALS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _data_folders(args: argparse.Namespace) -> tuple[Path, Path, Path | None, Path | None]:
    """(images, labels, val_images, val_labels) from --data or the explicit folders."""
    if args.data is not None:
        if args.images or args.labels:
            raise ValueError("give either --data ROOT or --images/--labels, not both")
        root = args.data
        if not root.is_dir():
            raise FileNotFoundError(f"--data {root}: folder not found")
        images, labels = root / "imagesTr", root / "labelsTr"
        val_images = args.val_images or (
            root / "imagesVal" if (root / "imagesVal").is_dir() else None
        )
        val_labels = args.val_labels or (
            root / "labelsVal" if (root / "labelsVal").is_dir() else None
        )
    else:
        if args.images is None or args.labels is None:
            raise ValueError(
                "give --images DIR and --labels DIR (or --data ROOT with imagesTr/labelsTr)"
            )
        images, labels = args.images, args.labels
        val_images, val_labels = args.val_images, args.val_labels
    for name, folder in (
        ("images", images),
        ("labels", labels),
        ("val-images", val_images),
        ("val-labels", val_labels),
    ):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"--{name} {folder}: folder not found")
    if (val_images is None) != (val_labels is None):
        raise ValueError("give both --val-images and --val-labels, or neither")
    return images, labels, val_images, val_labels
