"""The settings of a training run: :class:`TrainConfig`, its defaults and its validation.

The one place training defaults are written: the CLI's ``train`` options and the Train widget
read theirs from :data:`DEFAULTS` (``TrainConfig()``), and every checkpoint stores
:meth:`TrainConfig.to_dict`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..flow.checks import check_count
from ..flow.velocity import DEFAULT_LATTICE, DEFAULT_SPACE, VelocitySpace
from ..models import KINDS, check_heads
from ..nets import DIVISOR
from ..prior import DEFAULT_BETA, PARAMETERISATIONS

__all__ = [
    "BCH_ORDERS",
    "DEFAULTS",
    "KINDS",
    "LATER_FIELDS",
    "PARAMETERISATIONS",
    "PRIOR_INITS",
    "TUNES",
    "TrainConfig",
]

# what a warm-started run trains: "all" its parameters, or "heads" — the 1×1 velocity and pose
# mask heads, the force gains and the prior, the U-Net frozen (docs/RESULTS.md, "Fine-tuning the
# heads alone": less drift on a volume the init nearly fits, worse on the dock's 128³ brain and
# on 8 painted volumes, so fine-tunes train "all" by default)
TUNES = ("all", "heads")
PRIOR_INITS = ("labels", "centre")  # labels: μ, Σ fitted to the training masks; centre: default
BCH_ORDERS = (1, 2, 3, 4)
FINE_TUNE_SMOOTHNESS = 0.1  # λ of a fine-tune left at smoothness=None (docs/RESULTS.md)
# λ of a fresh flow model left at smoothness=None: without it 3 of 5 seeds of the 2D silhouettes
# fold digitally (docs/RESULTS.md, "Fresh models and the digital test")
FRESH_SMOOTHNESS = 0.03
# λ of a fresh 2D model whose heads read half resolution: 0.03 folds on 2 of 5 silhouette seeds
# (docs/RESULTS.md, "The finer encoder levels folded into the half-resolution heads")
FRESH_SMOOTHNESS_2D_HALF = 0.1
FINE_TUNE_BOUND = 6.0  # bound (image voxels) of a fine-tune left at alpha=None (docs/RESULTS.md)
# fields added after the first release: a run recorded before them has none (resume and
# from_dict take them as the behaviour of that time, not today's defaults)
LATER_FIELDS = ("pose", "pose_loss", "mirror", "image_depth", "image_mask",
                "image_segmentation", "calibrate", "feature_level", "tune")
# the U-Net decoder level a fresh flow model's heads read, per dimensionality (core.nets.UNet,
# feature_level, with the finer encoder levels folded in; docs/RESULTS.md, "The heads at half
# resolution")
FLOW_FEATURE_LEVELS = {2: 1, 3: 1}
# … and of one trained on sparse labels (painted slices; never above the default): in 3D level 1
# tied on the mean of 3 seeds but lost 0.02–0.03 Dice with three slices, in 2D it gained
# 0.03–0.04 on painted rows (the same section)
SPARSE_FLOW_FEATURE_LEVELS = {2: 1, 3: 0}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint)."""

    kind: str = "bch"  # bch | svf | stt | unet
    iterations: int = 1000
    patch_size: tuple[int, ...] = (64, 64, 64)  # (D, H, W) or (H, W) voxels
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 1
    seed: int = 0
    device: str = "auto"
    spacing: float | None = None  # mm; data resampled to this isotropic spacing (None: as is)
    prior: str = "full"  # fixed | mean | sigma | diag | full (GeneralisedGaussianPrior)
    train_beta: bool = False
    prior_beta: float = DEFAULT_BETA  # initial β of the prior (core.prior.DEFAULT_BETA)
    prior_init: str = "labels"  # "labels": fit μ, Σ to the training masks; "centre": default
    width: int = 8
    pieces: int = 4
    bch_order: int = 2
    # where velocities live (core.velocity.VelocitySpace; defaults from its ablation); a
    # fine-tune (``init``) takes them too: the space holds no weights (docs/RESULTS.md, "The
    # fine-tune's velocity space"; runs recorded before kept their init's)
    velocity: str = DEFAULT_SPACE.parameterisation  # dense | bspline
    velocity_factor: int = DEFAULT_SPACE.factor  # image voxels per coarse voxel: 1, 2 or 4
    # B-spline control spacing, voxels (None: DEFAULT_SPACE's, or the factor where coarser)
    velocity_lattice: int | None = None
    velocity_sigma: float = DEFAULT_SPACE.sigma  # Gaussian smoothing, coarse voxels
    # bound of each velocity, image voxels; None: DEFAULT_SPACE's (16) for a fresh model,
    # FINE_TUNE_BOUND when fine-tuning
    alpha: float | None = None
    # λ of the λ‖∇u‖² penalty; None: fresh_smoothness() for a fresh model, FINE_TUNE_SMOOTHNESS
    # when fine-tuning (``init``), as measured in docs/RESULTS.md ("Fresh models and the digital
    # test", "Smoothness when fine-tuning")
    smoothness: float | None = None
    pose_loss: float = 1.0  # weight of the BCE of the moment pose's soft mask (core.pose)
    pose: bool = True  # the pose level: an affine map per image placing the prior (core.pose)
    # the decoder level the heads of a flow model read (core.models.TemplateTransformer); None:
    # FLOW_FEATURE_LEVELS[ndim] for a fresh flow model, 0 for unet, the init's when fine-tuning
    feature_level: int | None = None
    # flip each training patch along each axis with probability ½; None: the Trainer decides
    # (core.train.resolve_mirror: whole-volume patches of a fine-tune or of sparse labels;
    # docs/RESULTS.md, "Mirrored patches")
    mirror: bool | None = None
    # painted slices: deepen the slices' prior to the organ seen in the image
    # (core.slices.fit_to_slices); None: when fine-tuning (``init``), as measured in
    # docs/RESULTS.md, "The organ's depth from the image"
    image_depth: bool | None = None
    # a volume painted on one slice: the pose level's mask also learns the organ seen in the
    # image off it (core.train.trainer.with_image_targets); None: with image_depth, as measured in
    # docs/RESULTS.md, "The pose mask from the image"
    image_mask: bool | None = None
    # ... and the segmentation learns it too (core.slices.image_segmentation_targets); None:
    # with image_mask, as measured in docs/RESULTS.md, "The segmentation from the image"
    image_segmentation: bool | None = None
    # at the end, set the model's segmentation threshold to the level that fits the validation
    # labels (or, with none, the training labels) best (core.train.calibration); None: for a
    # fresh flow model on dense labels, as measured in docs/RESULTS.md, "The segmentation
    # threshold"
    calibrate: bool | None = None
    checkpoint: str | None = None  # path of the checkpoint file (None: nothing written)
    checkpoint_every: int = 0  # steps between periodic checkpoints (0: only the final one)
    val_every: int = 0  # steps between validations (0: only at the end, when val is given)
    ignore_value: int = 255
    # fine-tuning and sparse labels (docs/RESULTS.md, "Sparse annotations")
    init: str | None = None  # checkpoint whose network warm-starts the run (None: fresh)
    keep_prior: bool = False  # with init: keep its prior instead of re-fitting it to the labels
    tune: str = "all"  # with init: train "all" parameters or only the "heads" (TUNES)
    minutes: float | None = None  # time budget of the training steps (None: iterations only)
    painted_axis: int | None = None  # labels are painted slices along this axis (None: as is)

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(s) for s in self.patch_size)
        self.betas = tuple(float(b) for b in self.betas)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.patch_size) not in (2, 3) or any(s < DIVISOR or s % DIVISOR
                                                     for s in self.patch_size):
            raise ValueError(
                f"patch_size must be (D, H, W) or (H, W), each a multiple of {DIVISOR} voxels "
                f"(the U-Net's), got {self.patch_size}"
            )
        for name in ("iterations", "batch_size", "width", "pieces"):
            check_count(name, getattr(self, name))
        for name in ("checkpoint_every", "val_every"):
            check_count(name, getattr(self, name), minimum=0)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.spacing is not None and not self.spacing > 0:
            raise ValueError(
                f"spacing must be a positive number of mm or None, got {self.spacing!r}"
            )
        if self.prior not in PARAMETERISATIONS:
            raise ValueError(f"prior must be one of {PARAMETERISATIONS}, got {self.prior!r}")
        if self.bch_order not in BCH_ORDERS:
            raise ValueError(f"bch_order must be one of {BCH_ORDERS}, got {self.bch_order!r}")
        if self.prior_init not in PRIOR_INITS:
            raise ValueError(f"prior_init must be one of {PRIOR_INITS}, got {self.prior_init!r}")
        if check_count("ignore_value", self.ignore_value, minimum=2) > 255:
            raise ValueError(f"ignore_value must be in 2..255 (labels are uint8), got "
                             f"{self.ignore_value}")
        if not (math.isfinite(self.prior_beta) and self.prior_beta > 0):
            raise ValueError(f"prior_beta must be a positive number, got {self.prior_beta!r}")
        if self.smoothness is not None and not (
                isinstance(self.smoothness, int | float) and self.smoothness >= 0):
            raise ValueError(f"smoothness must be >= 0 (or None: {FRESH_SMOOTHNESS}, "
                             f"{FRESH_SMOOTHNESS_2D_HALF} for 2D heads at half resolution, or "
                             f"{FINE_TUNE_SMOOTHNESS} when fine-tuning), got {self.smoothness!r}")
        if not self.pose_loss >= 0:
            raise ValueError(f"pose_loss must be >= 0, got {self.pose_loss!r}")
        for name in ("pose", "keep_prior"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("mirror", "image_depth", "image_mask", "image_segmentation", "calibrate"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                when = ("for a fresh flow model on dense labels" if name == "calibrate"
                        else "on when fine-tuning")
                raise ValueError(f"{name} must be True, False or None ({when}), got {value!r}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ValueError(f"minutes must be a positive number of minutes (the time budget), "
                             f"got {self.minutes!r}; leave it out to train for iterations only")
        if self.painted_axis is not None and self.painted_axis not in range(self.ndim):
            raise ValueError(f"painted_axis must be one of 0…{self.ndim - 1} for "
                             f"{self.ndim}D patches, got {self.painted_axis!r}")
        if self.keep_prior and self.init is None:
            raise ValueError("keep_prior needs init: the prior kept is the init checkpoint's")
        if self.tune not in TUNES:
            raise ValueError(f"tune must be one of {TUNES}, got {self.tune!r}")
        if self.tune == "heads" and (self.init is None or self.kind == "unet"):
            raise ValueError("tune='heads' needs init and a flow model (bch, svf, stt): it trains "
                             "the heads of a warm-started network, which stays frozen")
        space = self.velocity_space()  # validates the velocity settings
        if self.feature_level is not None:
            check_heads(self.kind, self.feature_level, space)

    def resolved_feature_level(self) -> int:
        """The decoder level a fresh model of these settings reads: ``feature_level``, or for
        None :data:`FLOW_FEATURE_LEVELS` of the dimensionality where the velocity space's blocks
        are whole multiples of its step (0 for the U-Net and for spaces of 1-voxel blocks)."""
        if self.feature_level is not None:
            return self.feature_level
        level = 0 if self.kind == "unet" else FLOW_FEATURE_LEVELS[self.ndim]
        return level if self.velocity_space().block % 2**level == 0 else 0

    def fresh_smoothness(self) -> float:
        """λ of a fresh model of these settings left at ``smoothness=None``:
        :data:`FRESH_SMOOTHNESS_2D_HALF` for 2D heads at half resolution, else
        :data:`FRESH_SMOOTHNESS`."""
        half = self.resolved_feature_level() > 0
        return FRESH_SMOOTHNESS_2D_HALF if self.ndim == 2 and half else FRESH_SMOOTHNESS

    def velocity_space(self) -> VelocitySpace:
        """The :class:`VelocitySpace` these settings describe."""
        lattice = self.velocity_lattice
        if self.velocity == "bspline" and lattice is None:
            lattice = max(DEFAULT_SPACE.lattice, self.velocity_factor)
        bound = self.alpha
        if bound is None:
            bound = FINE_TUNE_BOUND if self.init is not None else DEFAULT_SPACE.bound
        return VelocitySpace(self.velocity, self.velocity_factor, lattice, self.velocity_sigma,
                             bound)

    @property
    def ndim(self) -> int:
        return len(self.patch_size)

    def to_dict(self) -> dict:
        """Plain dict (lists instead of tuples) for checkpoints and JSON."""
        data = asdict(self)
        space = self.velocity_space()
        data["velocity_lattice"], data["alpha"] = space.lattice, space.bound  # as resolved
        data["patch_size"] = list(self.patch_size)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict, **overrides: Any) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys are refused), then apply overrides."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}")
        # a run recorded before the pose level (mirroring, the image's depth, mask, segmentation)
        # existed had none, whatever today's default; one recorded with no B-spline lattice had
        # VelocitySpace's (DEFAULT_LATTICE), not today's
        recorded = {"pose": False, "mirror": False, "image_depth": False, "image_mask": False,
                    "image_segmentation": False, "calibrate": False, "feature_level": 0, **data}
        if recorded.get("velocity") == "bspline" and recorded.get("velocity_lattice") is None:
            recorded["velocity_lattice"] = DEFAULT_LATTICE
        return cls(**{**recorded, **overrides})


DEFAULTS = TrainConfig()  # the defaults, for option parsers and forms
