"""Spatial transformer classifiers: a small CNN, TPS transformers and diffeomorphic transformers.

The paper's classification experiment (rotated digits) compares a plain CNN with the same CNN
behind a spatial transformer: thin-plate splines on an n×n control grid, a velocity field
integrated by scaling and squaring (diffeomorphic), the same field used directly as a
displacement (non-diffeomorphic), and the diffeomorphic one with a λ‖∇u‖² penalty.

Sizes follow the paper's parameter counts: the CNN is Conv(5)-pool-ReLU ×2 (20 channels) → 50
features → 10 classes (27 100 parameters); every localisation network is the same feature
extractor (26 590) plus a zero-initialised linear head (51 parameters per output), so a TPS
transformer with an n×n grid adds 26 590 + 51·2n² (26 998 for n = 2 … 52 702 for n = 16, as in
the paper) and a field transformer with a 5×5 coarse velocity grid adds 29 140 (paper: 29 552).
Zero heads make every transformer the identity at initialisation.

Transformer outputs are in normalised half-extent units (1 = half the image along that axis)
and converted to voxels, so a layer works at any resolution; every field it returns is
``(B, n, *S)`` in voxels (project convention) and the input is warped with
:func:`napari_difftt.core.flow.grid.warp` (zeros outside).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..flow import exp, gradient_penalty
from ..flow.checks import check_device, check_image, check_squarings
from ..flow.grid import normalised_per_voxel, warp
from ..flow.velocity import VelocitySpace
from .tps import ThinPlateSpline

__all__ = [
    "MIN_SIZE",
    "MODEL_LABELS",
    "MODEL_NAMES",
    "Classified",
    "ConvFeatures",
    "DiffeomorphicSTN",
    "STNClassifier",
    "STNOutput",
    "SmallCNN",
    "TPSTransformer",
    "build_classifier",
    "gradient_penalty",
]

FEATURES = 50  # width of the feature vector shared by the CNN and every localisation network
MIN_SIZE = 16  # smallest spatial size two Conv(5)+pool(2) blocks accept
PENALTY = 10.0  # the paper's λ for the regularised diffeomorphic transformer

MODEL_LABELS = {
    "cnn": "CNN",
    "tps2": "TPS-STN 2×2",
    "tps3": "TPS-STN 3×3",
    "tps5": "TPS-STN 5×5",
    "tps12": "TPS-STN 12×12",
    "tps16": "TPS-STN 16×16",
    "diffeo": "Diffeomorphic STN",
    "nondiffeo": "Non-diffeomorphic STN",
    "diffeo-reg": f"Diffeomorphic STN + λ‖∇u‖² (λ = {PENALTY:g})",
}
MODEL_NAMES = tuple(MODEL_LABELS)


class STNOutput(NamedTuple):
    """What a spatial transformer returns."""

    warped: torch.Tensor  # (B, C, *S) the input pulled back through id + displacement
    displacement: torch.Tensor  # (B, n, *S) voxels
    velocity: torch.Tensor | None  # (B, n, *S) voxels (field transformers), None for TPS


class Classified(NamedTuple):
    """What a classifier returns."""

    logits: torch.Tensor  # (B, classes)
    transform: STNOutput | None  # None for the plain CNN


class ConvFeatures(nn.Module):
    """Conv(5)→max-pool(2)→ReLU twice (20 channels), pooled to 4^n, → Linear → ReLU: ``(B, 50)``.

    Input ``(B, channels, *S)`` with n = ``ndim`` spatial axes of at least 16 voxels. For 28×28
    inputs the adaptive pool is the identity (the maps are already 4×4).
    """

    def __init__(self, ndim: int = 2, channels: int = 1) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        pool = nn.MaxPool2d if ndim == 2 else nn.MaxPool3d
        adaptive = nn.AdaptiveAvgPool2d if ndim == 2 else nn.AdaptiveAvgPool3d
        self.ndim = ndim
        self.layers = nn.Sequential(
            conv(channels, 20, 5), pool(2), nn.ReLU(),
            conv(20, 20, 5), pool(2), nn.ReLU(),
            adaptive(4), nn.Flatten(),
            nn.Linear(20 * 4**ndim, FEATURES), nn.ReLU(),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _check_input(image, self.ndim, self)
        return self.layers(image)


class SmallCNN(nn.Module):
    """The paper's small CNN classifier: :class:`ConvFeatures` → Linear(50, classes) logits."""

    def __init__(self, ndim: int = 2, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.features = ConvFeatures(ndim, channels)
        self.head = nn.Linear(FEATURES, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


class TPSTransformer(nn.Module):
    """Thin-plate-spline spatial transformer on a ``control``^n grid for inputs of ``shape``.

    ``forward(image (B, C, *shape)) -> STNOutput`` whose displacement is the dense TPS
    interpolant of the predicted control-point displacements (voxels); velocity is None.
    """

    def __init__(self, shape: Sequence[int], control: int, channels: int = 1) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        ndim = len(self.shape)
        self.localisation = ConvFeatures(ndim, channels)
        self.head = _zero_linear(FEATURES, ndim * control**ndim)
        self.spline = ThinPlateSpline(self.shape, control)
        self.control = control

    def forward(self, image: torch.Tensor) -> STNOutput:
        _check_input(image, len(self.shape), self)
        if tuple(image.shape[2:]) != self.shape:
            raise ValueError(f"image must have spatial shape {self.shape} (the TPS grid), got "
                             f"{tuple(image.shape[2:])}")
        ndim = len(self.shape)
        offsets = self.head(self.localisation(image))
        offsets = offsets.view(image.shape[0], ndim, *[self.control] * ndim)
        displacement = self.spline(_to_voxels(offsets, self.shape))
        return STNOutput(warp(image, displacement), displacement, None)


class DiffeomorphicSTN(nn.Module):
    """Field spatial transformer for 2D or 3D inputs ``(B, C, *S)``, usable in any network.

    A localisation network predicts a velocity on a coarse ``grid``^n lattice, upsampled
    (multi)linearly to S (align_corners=True) and converted to voxels. ``integrate=True``
    (diffeomorphic): displacement = exp(velocity) by scaling and squaring (``squarings`` fixed
    or None for the paper's ‖v‖/2^N ≤ ½-voxel rule). ``integrate=False`` (the non-diffeomorphic
    baseline): the field is used directly as the displacement. Returns
    ``STNOutput(warped, displacement, velocity)`` so callers can compute det J and penalties.

    ``velocity`` (a :class:`~napari_difftt.core.flow.velocity.VelocitySpace`, as the template
    transformers use): the upsampled lattice is the raw field of that space instead — pooled to
    its coarse grid, bounded by ``bound`` voxels (tanh), optionally smoothed, integrated there
    and brought back to S; the returned velocity is then on S in voxels too. None (default, the
    paper's protocol): the lattice values are half-extent units, unbounded, integrated on S.
    """

    def __init__(
        self,
        ndim: int,
        channels: int = 1,
        *,
        integrate: bool = True,
        grid: int = 5,
        squarings: int | None = None,
        velocity: VelocitySpace | None = None,
    ) -> None:
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
            raise ValueError(f"grid must be an int >= 2 (coarse velocity lattice), got {grid!r}")
        if squarings is not None:
            check_squarings(squarings)
        self.localisation = ConvFeatures(ndim, channels)
        self.head = _zero_linear(FEATURES, ndim * grid**ndim)
        if velocity is not None and not isinstance(velocity, VelocitySpace):
            raise TypeError(f"velocity must be a VelocitySpace or None, got {velocity!r}")
        self.ndim, self.grid, self.integrate, self.squarings = ndim, grid, integrate, squarings
        self.velocity_space = velocity

    def forward(self, image: torch.Tensor) -> STNOutput:
        _check_input(image, self.ndim, self)
        shape = tuple(image.shape[2:])
        lattice = self.head(self.localisation(image))
        lattice = lattice.view(image.shape[0], self.ndim, *[self.grid] * self.ndim)
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        fine = F.interpolate(lattice, size=shape, mode=mode, align_corners=True)
        space = self.velocity_space
        if space is None:
            velocity = _to_voxels(fine, shape)
            displacement = exp(velocity, self.squarings) if self.integrate else velocity
        else:
            coarse = space.velocities(fine, 1)[:, 0]  # (B, n, *S / factor) coarse voxels
            flow = exp(coarse, self.squarings) if self.integrate else coarse
            velocity, displacement = space.to_fine(coarse, shape), space.to_fine(flow, shape)
        return STNOutput(warp(image, displacement), displacement, velocity)

    def extra_repr(self) -> str:
        space = "" if self.velocity_space is None else f", velocity={self.velocity_space}"
        return f"ndim={self.ndim}, grid={self.grid}, integrate={self.integrate}{space}"


class STNClassifier(nn.Module):
    """A :class:`SmallCNN` behind an optional spatial transformer, with an optional penalty.

    ``forward(image) -> Classified``; :meth:`loss` is cross-entropy plus
    ``penalty`` · :func:`gradient_penalty` of the predicted displacement.
    """

    def __init__(self, transformer: nn.Module | None, classifier: SmallCNN,
                 penalty: float = 0.0) -> None:
        super().__init__()
        if penalty < 0:
            raise ValueError(f"penalty must be >= 0, got {penalty!r}")
        if penalty and transformer is None:
            raise ValueError("a gradient penalty needs a transformer")
        self.transformer = transformer
        self.classifier = classifier
        self.penalty = float(penalty)

    def forward(self, image: torch.Tensor) -> Classified:
        if self.transformer is None:
            return Classified(self.classifier(image), None)
        transform = self.transformer(image)
        return Classified(self.classifier(transform.warped), transform)

    def loss(self, output: Classified, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(output.logits, labels)
        if self.penalty and output.transform is not None:
            loss = loss + self.penalty * gradient_penalty(output.transform.displacement)
        return loss


def build_classifier(name: str, shape: Sequence[int] = (28, 28), channels: int = 1,
                     classes: int = 10, velocity: VelocitySpace | None = None) -> STNClassifier:
    """One of :data:`MODEL_NAMES` for images ``(B, channels, *shape)``; ``velocity`` is the
    velocity space of the field transformers (see :class:`DiffeomorphicSTN`)."""
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    classifier = SmallCNN(ndim, channels, classes)
    if name == "cnn":
        return STNClassifier(None, classifier)
    if name.startswith("tps") and name in MODEL_LABELS:
        return STNClassifier(TPSTransformer(shape, int(name[3:]), channels), classifier)
    if name in ("diffeo", "nondiffeo", "diffeo-reg"):
        transformer = DiffeomorphicSTN(
            ndim, channels, integrate=name != "nondiffeo", velocity=velocity
        )
        return STNClassifier(transformer, classifier, PENALTY if name == "diffeo-reg" else 0.0)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def _check_input(image: torch.Tensor, ndim: int, module: nn.Module) -> None:
    check_image("image", image, finite=False)
    check_device("image", image, module)
    if image.ndim != ndim + 2:
        raise ValueError(f"image must have shape (B, C, *S) with {ndim} spatial axes, got "
                         f"{tuple(image.shape)}")
    if min(image.shape[2:]) < MIN_SIZE:
        raise ValueError(f"image needs at least {MIN_SIZE} voxels along every spatial axis, got "
                         f"{tuple(image.shape)}")


def _to_voxels(field: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Half-extent units → voxels: component k times (S_k − 1)/2, for ``(B, n, …)`` fields."""
    per_voxel = normalised_per_voxel(shape)
    scale = torch.tensor([1 / step for step in per_voxel], dtype=field.dtype, device=field.device)
    return field * scale.view(1, -1, *[1] * (field.ndim - 2))


def _zero_linear(inputs: int, outputs: int) -> nn.Linear:
    """A linear layer starting at exactly zero output: the transformer starts as the identity."""
    layer = nn.Linear(inputs, outputs)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
