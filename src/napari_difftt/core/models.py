"""Template transformers: a U-Net predicts a flow that warps a shape prior into a segmentation.

``TemplateTransformer(kind)``:

* ``"bch"`` — T velocity fields (piecewise time-dependent flow), combined in a binary tree by BCH
  of ``bch_order`` then one exponential (or ``method="compose"``: exponentials composed);
* ``"svf"`` — one stationary velocity field, exponentiated by scaling and squaring;
* ``"stt"`` — the non-diffeomorphic template transformer (Lee et al. 2019): the network output
  is the displacement itself, topology not guaranteed;
* ``"unet"`` — direct estimation baseline: sigmoid of one output channel, no prior warp.

For the flows the output probability is the analytic prior at the warped coordinates, p(Φ(x)).
The network output becomes velocities (or, for stt, a displacement) on the coarse grid of a
:class:`~.velocity.VelocitySpace` — pooled, bounded by ``bound·tanh``, optionally a cubic
B-spline and smoothed — where all flow maths runs in coarse voxels; the displacement is then
upsampled once to the input grid (``(B, n, *S)`` voxels, the conventions of :mod:`.flow.grid`).
The last convolution starts at zero, so an untrained flow model returns the prior exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .flow import exp, gradient_penalty, integrate
from .flow.checks import check_device, check_image, check_squarings
from .flow.grid import affine_of_index, displaced
from .flow.velocity import DEFAULT_SPACE, LEGACY_SPACE, VelocitySpace
from .nets import UNet, check_feature_level
from .pose import MomentPose, boundary_force
from .prior import (
    DEFAULT_BETA,
    GeneralisedGaussianPrior,
    ImagePrior,
    grid_axes,
    prior_from_dict,
)

__all__ = ["KINDS", "TemplateResult", "TemplateTransformer", "check_heads",
           "pose_mask_on_image", "segmentation_loss"]

KINDS = ("bch", "svf", "stt", "unet")
METHODS = ("bch", "compose")
_EPS = 1e-6  # probabilities are clamped to [ε, 1 − ε] in the loss
# scale of the learnt boundary-force weights (per piece), so that Adam's ~lr steps reach the
# pre-bound values a push of a few voxels needs within a few hundred steps
FORCE_GAIN = 30.0


class TemplateResult(NamedTuple):
    """Everything one forward pass computed, so callers never recompute."""

    probability: torch.Tensor  # (B, 1, *S) in [0, 1]
    prior: torch.Tensor  # (B, 1, *S) the unwarped prior on the same grid
    # on the coarse grid S / factor, in coarse voxels (VelocitySpace.to_fine brings them back)
    velocities: torch.Tensor | None  # (B, T, n, *S/k) (svf: T = 1; stt/unet: None)
    velocity: torch.Tensor | None  # (B, n, *S/k), exp(velocity) = Φ (svf, bch+"bch")
    displacement: torch.Tensor | None  # (B, n, *S) voxels, Φ = id + displacement (not unet)
    # (B, n + 1, n + 1) homogeneous matrix of the pose A (core.pose); O(x) = S(A(Φ(x)))
    pose: torch.Tensor | None = None
    # (B, 1, *S / 2^L) the moment pose's soft mask (core.pose) on the features' grid
    # (L = feature_level; pose_mask_on_image brings it to the image grid)
    pose_mask: torch.Tensor | None = None
    # (B, n, *S/k) coarse voxels: the displacement as integrated, before VelocitySpace.to_fine
    coarse_displacement: torch.Tensor | None = None


class TemplateTransformer(nn.Module):
    """Image → segmentation as a deformed prior; see the module docstring for ``kind``.

    ``prior`` defaults to the centred :class:`GeneralisedGaussianPrior` with β = ``DEFAULT_BETA``;
    ``pieces`` = T (bch
    only; svf uses 1); ``velocity`` is where velocities live and their bound (default
    :data:`~.velocity.DEFAULT_SPACE`, chosen by the ablation in docs/RESULTS.md);
    ``width`` is the U-Net base width; ``smoothness`` λ ≥ 0 weights the λ‖∇u‖² penalty of
    :meth:`regularisation`; ``squarings`` fixes the number of squarings (None: chosen per field).
    ``image_channels`` is the number of image channels (the prior adds one more network input).
    ``pose`` adds the pose level (:mod:`.pose`; flow kinds with a generalised Gaussian prior
    only): an affine map A per image, from the moments of a soft mask the network predicts,
    places the prior, and the boundary force between that mask and the posed prior is added to
    the velocities with a learnt weight per piece; ``probability`` is then S(A(Φ(x))),
    ``prior`` the posed prior S∘A and ``pose_mask`` the soft mask (trained by its own loss).
    ``threshold`` is the level of ``probability`` above which a voxel is segmented (0.5 unless
    calibrated: :mod:`.train.calibration`); every level of the deformed prior keeps its
    topology. ``feature_level`` L (flow kinds only) is the decoder level the heads read
    (:class:`~.nets.UNet`): at L = 1 the velocities, the pose mask and the boundary force are
    computed on a grid of 2 image voxels per voxel (block centres), which the velocity space's
    blocks must be multiples of; the prior and the output stay on the image grid.
    ``fine_skips`` (L > 0) folds the finer encoder levels into the heads' grid
    (:class:`~.nets.UNet`); configs written before it existed rebuild without.
    """

    def __init__(
        self,
        kind: str = "bch",
        ndim: int = 3,
        prior: GeneralisedGaussianPrior | ImagePrior | None = None,
        pieces: int = 4,
        bch_order: int = 2,
        velocity: VelocitySpace | None = None,
        width: int = 8,
        smoothness: float = 0.0,
        *,
        method: str = "bch",
        squarings: int | None = None,
        image_channels: int = 1,
        pose: bool = False,
        threshold: float = 0.5,
        feature_level: int = 0,
        fine_skips: bool = True,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1:
            raise ValueError(f"pieces must be a positive int, got {pieces!r}")
        if isinstance(bch_order, bool) or not isinstance(bch_order, int) or not 1 <= bch_order <= 4:
            raise ValueError(f"bch_order must be an int in 1..4, got {bch_order!r}")
        velocity = DEFAULT_SPACE if velocity is None else velocity
        if not isinstance(velocity, VelocitySpace):
            raise TypeError(f"velocity must be a VelocitySpace, got {type(velocity).__name__}")
        if not smoothness >= 0:
            raise ValueError(f"smoothness must be >= 0, got {smoothness!r}")
        if squarings is not None:
            check_squarings(squarings)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
                0 < threshold < 1):
            raise ValueError(f"threshold must be a probability strictly between 0 and 1, got "
                             f"{threshold!r}")
        check_heads(kind, feature_level, velocity)
        prior = GeneralisedGaussianPrior(ndim, beta=DEFAULT_BETA) if prior is None else prior
        if getattr(prior, "ndim", None) != ndim:
            raise ValueError(f"prior is {getattr(prior, 'ndim', '?')}D but ndim={ndim}")
        self.kind, self.ndim, self.method, self.squarings = kind, ndim, method, squarings
        self.pieces = pieces if kind == "bch" else 1
        self.bch_order, self.velocity_space, self.width = bch_order, velocity, width
        self.smoothness, self.image_channels = float(smoothness), image_channels
        self.threshold = float(threshold)  # segmentation = probability > threshold
        self.prior = prior
        out_channels = {"bch": ndim * self.pieces, "svf": ndim, "stt": ndim, "unet": 1}[kind]
        self.feature_level = feature_level
        self.net = UNet(ndim, image_channels + 1, out_channels, width, zero_head=kind != "unet",
                        feature_level=feature_level, fine_skips=fine_skips)
        if not isinstance(pose, bool):
            raise ValueError(f"pose must be True or False, got {pose!r}")
        if pose and (kind == "unet" or not isinstance(prior, GeneralisedGaussianPrior)):
            raise ValueError("pose needs a flow kind (bch, svf, stt) and a generalised Gaussian "
                             f"prior, got kind={kind!r} with {type(prior).__name__}")
        self.pose_head = MomentPose(ndim, width * 2**feature_level) if pose else None
        # per piece, the weight of the boundary force (core.pose) in the pre-bound velocities
        self.force_gain = nn.Parameter(torch.zeros(self.pieces)) if pose else None

    def forward(
        self,
        image: torch.Tensor,
        offset: tuple[int, ...] | None = None,
        full_shape: tuple[int, ...] | None = None,
        *,
        prior: GeneralisedGaussianPrior | ImagePrior | None = None,
    ) -> TemplateResult:
        """Segment ``image`` ``(B, C, *S)`` (S multiples of 16), a patch at voxel ``offset`` of a
        volume of ``full_shape`` (default: the whole volume) — the prior is evaluated there.
        An image of another floating dtype than the model's weights (float64 for a float32
        model) is cast to theirs.

        ``prior`` replaces the model's own prior for this call only (same ``ndim``, on the
        image's device; a generalised Gaussian for a model with a pose level): the module is
        never changed, so calls with different priors can run at once on one model."""
        check_image("image", image)
        check_device("image", image, self)
        weight = next(self.net.parameters(), None)
        if weight is not None:
            image = image.to(weight.dtype)
        if image.ndim - 2 != self.ndim or image.shape[1] != self.image_channels:
            raise ValueError(
                f"image must have shape (B, {self.image_channels}, *S) with {self.ndim} spatial "
                f"axes, got {tuple(image.shape)}"
            )
        template = self.prior if prior is None else prior
        if getattr(template, "ndim", None) != self.ndim:
            raise ValueError(f"prior is {getattr(template, 'ndim', '?')}D but the model is "
                             f"{self.ndim}D")
        if self.pose_head is not None and not isinstance(template, GeneralisedGaussianPrior):
            raise ValueError("a model with a pose level needs a generalised Gaussian prior, got "
                             f"{type(template).__name__}")
        batch, shape = image.shape[0], tuple(image.shape[2:])
        prior = template.on_grid(shape, offset, full_shape, device=image.device,
                                 dtype=image.dtype)
        prior = prior.expand(batch, *prior.shape[1:])
        features = self.net.features(torch.cat([image, prior], dim=1))
        if self.kind == "unet":
            return TemplateResult(torch.sigmoid(self.net.head(features)), prior, None, None, None)
        pose = pose_mask = force = posed = None
        step = 2**self.feature_level  # image voxels per feature voxel
        if self.pose_head is not None:
            axes = grid_axes(shape, offset, full_shape, device=image.device, dtype=image.dtype)
            seen, planes = _block_means(prior, axes, step)  # on the features' grid
            pose, pose_mask = self.pose_head(features, planes, seen, template.mean)
            posed = template.index_whitening(shape, offset, full_shape, pose)  # S∘A on the grid
            white = affine_of_index(*posed, shape)
            prior = template.probability(white)
            if step == 1:
                force = boundary_force(pose_mask, prior, white, posed[0])
            else:  # on the features' grid: S∘A at the centres of their blocks
                centres = _block_centres(*posed, shape, step)
                force = boundary_force(pose_mask, template.probability(centres), centres,
                                       posed[0])
        # the 1×1 head commutes with the space's block means: pool the width channels first
        space = self.velocity_space
        raw = self.net.head(space.pool(features, step))
        if force is not None:
            gain = FORCE_GAIN * self.force_gain.view(1, -1, 1, *([1] * self.ndim))
            pushed = gain * space.pool(force, step)[:, None]
            raw = raw + pushed.flatten(1, 2)
        fields = space.velocities_from_pooled(raw, self.pieces, shape)  # (B, T, n, *S/k) coarse
        velocities = velocity = None
        if self.kind == "stt":
            coarse = fields[:, 0]
        elif self.kind == "svf":
            velocities, velocity = fields, fields[:, 0]
            coarse = exp(velocity, self.squarings)
        else:
            velocities = fields
            flow = integrate(velocities, self.method, self.bch_order, self.squarings)
            coarse, velocity = flow.displacement, flow.velocity
        displacement = self.velocity_space.to_fine(coarse, shape)
        if posed is None:
            probability = template.on_grid(shape, offset, full_shape, displacement)
        else:
            probability = template.probability(displaced(white, posed[0], displacement))
        return TemplateResult(probability, prior, velocities, velocity, displacement, pose,
                              pose_mask, coarse)

    def regularisation(self, result: TemplateResult) -> torch.Tensor:
        """λ · mean over voxels of ‖∇u‖² (Frobenius, voxel units) of the displacement; 0 for unet
        or λ = 0. A scalar tensor to add to the loss."""
        u = result.displacement
        if u is None or self.smoothness == 0:
            return result.probability.new_zeros(())
        return self.smoothness * gradient_penalty(u)

    def config(self) -> dict:
        """Plain-dict description (checkpoint-safe); :meth:`from_config` rebuilds the module."""
        return {
            "kind": self.kind, "ndim": self.ndim, "prior": self.prior.to_dict(),
            "pieces": self.pieces, "bch_order": self.bch_order,
            "velocity": self.velocity_space.to_dict(), "width": self.width,
            "smoothness": self.smoothness, "method": self.method,
            "squarings": self.squarings, "image_channels": self.image_channels,
            "pose": self.pose_head is not None, "threshold": self.threshold,
            "feature_level": self.feature_level, "fine_skips": self.net.fine_skips,
        }

    @classmethod
    def from_config(cls, config: dict) -> TemplateTransformer:
        """A fresh module from :meth:`config` output (load the state_dict for the weights).

        A config written before velocity spaces existed (an ``alpha`` entry, no ``velocity``)
        rebuilds the model it described: full-resolution velocities bounded by α voxels.
        """
        if not isinstance(config, dict) or "kind" not in config:
            raise ValueError("model config must be a dict with a 'kind' entry")
        if config["kind"] not in KINDS:
            raise ValueError(f"unknown model kind {config['kind']!r}; this version knows {KINDS}")
        options = dict(config)
        prior = options.pop("prior", None)
        if "velocity" in options:
            if "alpha" in options:
                raise ValueError("model config has both 'alpha' (old) and 'velocity' entries")
            space = options.pop("velocity")
            if not isinstance(space, dict):
                raise ValueError(f"model config 'velocity' must be a dict, got {space!r}")
            unknown = sorted(set(space) - set(DEFAULT_SPACE.to_dict()))
            if unknown:
                raise ValueError(f"model config 'velocity' has unknown entries {unknown}")
            options["velocity"] = VelocitySpace(**space)
        else:
            alpha = float(options.pop("alpha", LEGACY_SPACE.bound))
            options["velocity"] = VelocitySpace(factor=1, bound=alpha)
        options.setdefault("fine_skips", False)  # written before the finer levels were folded
        known = {"kind", "ndim", "pieces", "bch_order", "velocity", "width", "smoothness",
                 "method", "squarings", "image_channels", "pose", "threshold", "feature_level",
                 "fine_skips"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"model config has unknown entries {unknown}")
        return cls(prior=None if prior is None else prior_from_dict(prior), **options)


def check_heads(kind: str, feature_level: int, velocity: VelocitySpace) -> None:
    """Refuse a ``feature_level`` that ``kind`` cannot read its output from: not one of
    :data:`~.nets.FEATURE_LEVELS`, above 0 for ``"unet"`` (its output is the segmentation on the
    image grid), or a step 2^level that does not divide ``velocity``'s blocks (flow kinds)."""
    check_feature_level(feature_level)
    if kind == "unet":
        if feature_level:
            raise ValueError("feature_level must be 0 for kind='unet' (its output is the "
                             f"segmentation on the image grid), got {feature_level!r}")
        return
    velocity.check_step(2**feature_level)


def pose_mask_on_image(result: TemplateResult) -> torch.Tensor | None:
    """``result.pose_mask`` on the image grid ``(B, 1, *S)``: as it is for feature level 0,
    else linearly interpolated from its block centres (``align_corners=False``, edges held)."""
    mask, shape = result.pose_mask, tuple(result.probability.shape[2:])
    if mask is None or tuple(mask.shape[2:]) == shape:
        return mask
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(mask, size=shape, mode=mode, align_corners=False)


def _block_means(prior: torch.Tensor, axes: tuple[torch.Tensor, ...], step: int
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The prior map ``(1, 1, *S)`` and the grid's plane coordinates (one ``(S_k,)`` per axis)
    averaged over blocks of ``step`` voxels per axis: what a feature grid of ``step`` image
    voxels per voxel sees (the same tensors for ``step`` = 1)."""
    if step == 1:
        return prior, axes
    pool = F.avg_pool2d if prior.ndim == 4 else F.avg_pool3d
    return pool(prior, step), tuple(a.view(-1, step).mean(1) for a in axes)


def _block_centres(matrix: torch.Tensor, bias: torch.Tensor, shape: tuple[int, ...], step: int
                   ) -> torch.Tensor:
    """M i + b at the centre i = step·j + (step − 1)/2 of each block j of ``step`` voxels per
    axis of a grid of ``shape`` → ``(B, m, *shape / step)`` (``matrix`` M ``(B, m, n)``, ``bias``
    b ``(B, m)``)."""
    centre = torch.full((matrix.shape[2],), (step - 1) / 2, dtype=matrix.dtype,
                        device=matrix.device)
    return affine_of_index(matrix * step, bias + matrix @ centre, tuple(s // step for s in shape))


def segmentation_loss(
    probability: torch.Tensor, target: torch.Tensor, ignore_value: int = 255
) -> torch.Tensor:
    """Binary cross-entropy of ``probability`` ``(B, 1, *S)`` against ``target`` (same shape,
    values 0/1, ``ignore_value`` = unlabelled), averaged over the labelled voxels only.

    Sparse annotation (e.g. one labelled slice) marks every other voxel ``ignore_value``; those
    give neither loss nor gradient. With no labelled voxel the loss is 0.
    """
    if probability.shape != target.shape:
        raise ValueError(
            f"probability {tuple(probability.shape)} and target {tuple(target.shape)} must have "
            "the same shape"
        )
    known = target != ignore_value
    labels = torch.where(known, target, torch.zeros_like(target)).to(probability.dtype)
    if bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError(f"target must hold 0, 1 or ignore_value={ignore_value}")
    # saturated probabilities would give gradients of ~1/ε through torch's BCE
    clamped = probability.clamp(_EPS, 1.0 - _EPS)
    losses = F.binary_cross_entropy(clamped, labels, reduction="none")
    return torch.where(known, losses, torch.zeros_like(losses)).sum() / known.sum().clamp_min(1)
