"""Shape priors evaluated at warped coordinates: p(Φ(x)), the template the flow deforms.

Coordinates are **normalised full-volume coordinates in array order**: voxel index i on an axis
of N voxels ↦ −1 + 2i/(N − 1). A patch at voxel ``offset`` inside a volume of ``full_shape``
evaluates the prior at the global index offset + local index (+ displacement), so the prior is
the same function on patches and on whole volumes.

* :class:`GeneralisedGaussianPrior` — analytic p(x) = exp(−(d²)^β · ln 2),
  d² = (x − μ)ᵀ Σ⁻¹ (x − μ); p = ½ on the ellipsoid d = 1 whatever β.
* :class:`ImagePrior` — a probability map (atlas, label image) resampled linearly.
* :class:`WorldEllipsoid`, :func:`from_world`, :func:`to_world` — the same prior as an
  ellipsoid in world millimetres (centre, semi-axes of the p = ½ contour, rotation angles, β).

Both offer ``prior(coords)`` and ``prior.on_grid(shape, offset, full_shape, displacement)``,
and ``to_dict()`` / :func:`prior_from_dict` for checkpoints (plain floats and lists).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from .flow.checks import check_field
from .flow.grid import affine_of_index, identity, normalised_per_voxel, sample, squared_length

__all__ = [
    "DEFAULT_BETA",
    "PARAMETERISATIONS",
    "GeneralisedGaussianPrior",
    "ImagePrior",
    "WorldEllipsoid",
    "euler_angles",
    "fit_to_mask",
    "from_display",
    "from_world",
    "grid_axes",
    "grid_coordinates",
    "prior_from_dict",
    "rotation_matrix",
    "to_display",
    "to_world",
]

PARAMETERISATIONS = ("fixed", "mean", "sigma", "diag", "full")
_LN2 = math.log(2.0)
# d² is clamped to this before the power: (d²)^β has an infinite derivative at 0 for β < 1,
# and ln d² (the power is exp(β ln d²)) is finite.
_MIN_D2 = 1e-12


def _log_smallest_normal(dtype: torch.dtype) -> float:
    """The exponent floor of p: exp of it is the dtype's smallest normal number or just above.
    Far outside the shape, p would be subnormal or 0, and a CPU's exp takes 6–8 × longer
    there (39 against 5 ms for a 128³ float32 volume on one thread): p stays ≥ this instead,
    which changes no value by more than the dtype's smallest normal number."""
    return float(math.ceil(math.log(torch.finfo(dtype).tiny)))


# β of the priors the template transformers start from (library, CLI, Train widget): a flat
# top and a sharp edge, so fitting a sharp organ boundary needs no extreme compression of the
# map there; chosen by measurement (docs/RESULTS.md, "the prior's shape").
DEFAULT_BETA = 4.0


class _Prior(nn.Module):
    """A probability map defined in normalised full-volume coordinates (array order)."""

    ndim: int

    def _reference(self) -> torch.Tensor:
        """A tensor whose device and dtype are the prior's defaults."""
        raise NotImplementedError

    def on_grid(
        self,
        shape: Sequence[int],
        offset: Sequence[int] | None = None,
        full_shape: Sequence[int] | None = None,
        displacement: torch.Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """p(Φ(x)) on a grid of ``shape`` → ``(B, 1, *shape)`` (B = 1 without a displacement).

        See :func:`grid_coordinates` for ``offset``, ``full_shape`` and ``displacement``.
        """
        if displacement is not None:
            _check_displacement(displacement, _shape("shape", shape))
            device, dtype = displacement.device, displacement.dtype
        like = self._reference()
        return self._on_grid(shape, offset, full_shape, displacement, device or like.device,
                             dtype or like.dtype)

    def _on_grid(self, shape, offset, full_shape, displacement, device, dtype) -> torch.Tensor:
        """:meth:`on_grid` with its arguments checked and the device and dtype resolved."""
        return self(grid_coordinates(shape, offset, full_shape, displacement, device=device,
                                     dtype=dtype))


class GeneralisedGaussianPrior(_Prior):
    """Generalised Gaussian p(x; μ, Σ, β) = exp(−(d²)^β · ln 2) in normalised coordinates.

    Arguments (normalised units, array order):

    * ``mean`` ``(n,)``, default the centre (zeros).
    * ``radii`` ``(n,)`` semi-axes of the ½-contour, default 0.5 on every axis (half the extent);
      ``rotation`` ``(n, n)`` orthogonal matrix whose columns are the principal axes, so
      Σ = R diag(radii²) Rᵀ. Or give ``covariance`` ``(n, n)`` directly (not with radii/rotation).
    * ``beta`` > 0: 1 is Gaussian, larger is flatter with a sharper edge.

    What is learnt (the paper's Table 3 rows are combinations of these):

    * ``parameterisation`` — the covariance model: ``"fixed"`` (frozen), ``"mean"`` (frozen Σ,
      the mean learnt), ``"sigma"`` (one learnt scale s, Σ = s²·Σ₀, i.e. σ²I for the default
      isotropic Σ₀), ``"diag"`` (learnt radii along frozen principal axes: diagonal Σ when
      ``rotation`` is None), ``"full"`` (learnt Cholesky factor, positive diagonal via exp).
    * ``train_mean`` — learn μ; default ``None`` means "every parameterisation except fixed".
    * ``train_beta`` — learn β > 0 (stored as log β).
    """

    def __init__(
        self,
        ndim: int,
        mean: Sequence[float] | None = None,
        radii: Sequence[float] | None = None,
        rotation: Sequence[Sequence[float]] | np.ndarray | None = None,
        beta: float = 1.0,
        parameterisation: str = "fixed",
        train_beta: bool = False,
        *,
        train_mean: bool | None = None,
        covariance: Sequence[Sequence[float]] | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}"
            )
        if train_mean is None:
            train_mean = parameterisation != "fixed"
        if parameterisation == "mean" and not train_mean:
            raise ValueError("parameterisation='mean' always learns the mean (train_mean=False)")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a positive finite number, got {beta!r}")
        self.ndim = ndim
        self.parameterisation = parameterisation
        self.train_mean = bool(train_mean)
        self.train_beta = bool(train_beta)

        mean_t = _vector("mean", mean, ndim, default=0.0)
        self._register("location", mean_t, self.train_mean)
        self._register("log_beta", torch.tensor(math.log(beta)), self.train_beta)

        axes, scales = _principal_axes(ndim, radii, rotation, covariance)
        if parameterisation == "diag":
            self._register("rotation", axes, False)
            self._register("log_radii", scales.log(), True)
        else:
            factor = torch.linalg.cholesky(axes @ torch.diag(scales**2) @ axes.T)
            if parameterisation == "full":
                raw = torch.tril(factor, -1) + torch.diag(factor.diagonal().log())
                self._register("cholesky_raw", raw, True)
            else:
                self._register("factor", factor, False)
            if parameterisation == "sigma":
                self._register("log_scale", torch.tensor(0.0), True)

    # ---------------------------------------------------------------- parameters
    @property
    def mean(self) -> torch.Tensor:
        """μ ``(n,)`` in normalised coordinates."""
        return self.location

    @property
    def beta(self) -> torch.Tensor:
        """β ``()`` > 0."""
        return self.log_beta.exp()

    @property
    def covariance(self) -> torch.Tensor:
        """Σ ``(n, n)`` in normalised units²; d = 1 (p = ½) on the ellipsoid (x−μ)ᵀΣ⁻¹(x−μ) = 1."""
        f = self._factor()
        return f @ f.T

    def _factor(self) -> torch.Tensor:
        """F with Σ = F Fᵀ."""
        if self.parameterisation == "diag":
            return self.rotation * self.log_radii.exp()
        if self.parameterisation == "full":
            raw = self.cholesky_raw
            return torch.tril(raw, -1) + torch.diag(raw.diagonal().exp())
        if self.parameterisation == "sigma":
            return self.factor * self.log_scale.exp()
        return self.factor

    def _whitening(self) -> torch.Tensor:
        """W with Σ⁻¹ = Wᵀ W, so d² = ‖W (x − μ)‖²."""
        if self.parameterisation == "diag":
            return self.rotation.T / self.log_radii.exp().unsqueeze(1)
        return torch.linalg.inv(self._factor())

    # ---------------------------------------------------------------- evaluation
    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """p at normalised ``coords`` ``(B, n, *S)`` (array order) → ``(B, 1, *S)`` in (0, 1]."""
        _check_coords(coords, self.ndim)
        centred = coords - self.mean.view(1, -1, *([1] * self.ndim)).to(coords.dtype)
        return self.probability(
            torch.einsum("ij,bj...->bi...", self._whitening().to(coords.dtype), centred)
        )

    def probability(self, white: torch.Tensor) -> torch.Tensor:
        """p from whitened offsets W (x − μ) ``(B, n, *S)`` (d² = their squared length) →
        ``(B, 1, *S)`` in (0, 1]."""
        d2 = squared_length(white).clamp_min(_MIN_D2)
        # (d²)^β as exp(β ln d²), d² > 0: three vectorised passes take 3.6 ms at 128³ on two
        # threads where pow's general path takes 6.2 (values within 4e-5 relative)
        exponent = torch.exp(self.beta.to(white.dtype) * d2.log()) * -_LN2
        return exponent.clamp_min_(_log_smallest_normal(white.dtype)).exp_()

    def _on_grid(self, shape, offset, full_shape, displacement, device, dtype) -> torch.Tensor:
        """One affine map of the voxel index (:meth:`index_whitening`): no coordinate grid."""
        matrix, bias = self.index_whitening(shape, offset, full_shape, device=device, dtype=dtype)
        return self.probability(affine_of_index(matrix, bias, shape, displacement))

    def index_whitening(
        self,
        shape: Sequence[int],
        offset: Sequence[int] | None = None,
        full_shape: Sequence[int] | None = None,
        pose: torch.Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M ``(B, n, n)``, b ``(B, n)``) with W (A(y(i)) − μ) = M i + b, where i is the local
        voxel index of a grid of ``shape`` at ``offset`` in a volume of ``full_shape`` and y(i)
        its normalised coordinates (:func:`grid_coordinates`), so d² = ‖M i + b‖² and
        ∇_i d² = 2 Mᵀ (M i + b) in voxel units. ``pose`` ``(B, n + 1, n + 1)`` = [[E, s], [0, 1]]
        is A(y) = μ + E (y − μ) + s (:mod:`core.pose`; its device and dtype win); None is the
        identity, B = 1."""
        scale, shift = _index_map(shape, offset, full_shape)
        if pose is not None:
            device, dtype = pose.device, pose.dtype
        like = self._reference()
        device, dtype = device or like.device, dtype or like.dtype
        whitening = self._whitening().to(device, dtype)
        centred = torch.tensor(shift, device=device, dtype=dtype) - self.mean.to(device, dtype)
        if pose is None:
            linear, moved = whitening[None], centred[None]
        else:  # W (E (y − μ) + s) with y = scale · i + shift
            n = self.ndim
            linear = whitening @ pose[:, :n, :n]
            moved = torch.einsum("bij,j->bi", pose[:, :n, :n], centred) + pose[:, :n, n]
        matrix = linear * torch.tensor(scale, device=device, dtype=dtype)
        return matrix, torch.einsum("ij,bj->bi", whitening, moved)

    def _reference(self) -> torch.Tensor:
        return self.log_beta

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """Plain-float description of the current prior; :func:`prior_from_dict` rebuilds it."""
        return {
            "type": "generalised_gaussian",
            "ndim": self.ndim,
            "mean": [float(v) for v in self.mean.detach().cpu()],
            "covariance": self.covariance.detach().cpu().double().tolist(),
            "beta": float(self.beta.detach()),
            "parameterisation": self.parameterisation,
            "train_mean": self.train_mean,
            "train_beta": self.train_beta,
        }

    @classmethod
    def from_dict(cls, data: dict) -> GeneralisedGaussianPrior:
        """Inverse of :meth:`to_dict`."""
        _check_type(data, "generalised_gaussian")
        try:
            return cls(
                int(data["ndim"]), mean=data["mean"], covariance=data["covariance"],
                beta=float(data["beta"]), parameterisation=data["parameterisation"],
                train_beta=bool(data["train_beta"]), train_mean=bool(data["train_mean"]),
            )
        except KeyError as missing:
            raise ValueError(f"prior description lacks the key {missing}") from None

    def extra_repr(self) -> str:
        return (f"ndim={self.ndim}, parameterisation={self.parameterisation!r}, "
                f"train_mean={self.train_mean}, train_beta={self.train_beta}")

    def _register(self, name: str, value: torch.Tensor, trainable: bool) -> None:
        value = value.to(torch.get_default_dtype())
        if trainable:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)


class ImagePrior(_Prior):
    """A probability map ``(*S_p)`` in [0, 1] over the full volume, resampled linearly.

    The map covers the normalised cube [−1, 1]ⁿ whatever its resolution (an atlas may be coarser
    than the volume); outside it the prior is 0. The map is a buffer: ``to_dict`` records only its
    shape and the module's ``state_dict`` carries the values.
    """

    def __init__(self, image: torch.Tensor | np.ndarray) -> None:
        super().__init__()
        image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
        if image.ndim not in (2, 3) or min(image.shape) < 2:
            raise ValueError(
                f"image must be a 2D or 3D probability map with >= 2 voxels per axis, got shape "
                f"{tuple(image.shape)}"
            )
        image = image.to(torch.get_default_dtype())
        if not bool(torch.isfinite(image).all()) or image.min() < 0 or image.max() > 1:
            raise ValueError("image must hold probabilities in [0, 1] (no NaN/Inf)")
        self.ndim = image.ndim
        self.register_buffer("image", image[None, None].clone())

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Probability at normalised ``coords`` ``(B, n, *S)`` (array order) → ``(B, 1, *S)``."""
        _check_coords(coords, self.ndim)
        grid = coords.flip(1).movedim(1, -1)  # grid_sample wants (x, y, z) channels-last
        image = self.image.to(coords.dtype).expand(coords.shape[0], *self.image.shape[1:])
        return sample(image, grid, padding="zeros")

    def _reference(self) -> torch.Tensor:
        return self.image

    def to_dict(self) -> dict:
        return {"type": "image", "ndim": self.ndim, "shape": list(self.image.shape[2:])}

    @classmethod
    def from_dict(cls, data: dict) -> ImagePrior:
        """An all-zero map of the recorded shape: load the module's state_dict for its values."""
        _check_type(data, "image")
        return cls(torch.zeros([int(s) for s in data["shape"]]))


def prior_from_dict(data: dict) -> GeneralisedGaussianPrior | ImagePrior:
    """Rebuild a prior from ``to_dict()`` output, whichever class wrote it."""
    kinds = {"generalised_gaussian": GeneralisedGaussianPrior, "image": ImagePrior}
    if not isinstance(data, dict) or data.get("type") not in kinds:
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"unknown prior type {found!r}; expected one of {sorted(kinds)}")
    return kinds[data["type"]].from_dict(data)


def grid_coordinates(
    shape: Sequence[int],
    offset: Sequence[int] | None = None,
    full_shape: Sequence[int] | None = None,
    displacement: torch.Tensor | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Normalised full-volume coordinates of a grid → ``(B, n, *shape)``, array order.

    Voxel i of the local grid sits at global index ``offset + i (+ displacement(i))`` of a
    volume of ``full_shape`` (default: the grid itself, offset 0), mapped by −1 + 2g/(N − 1).
    ``offset`` may be negative and the grid may extend past the volume (padding).
    ``displacement`` ``(B, n, *shape)`` is in voxels of the local grid; its device and dtype win.
    """
    shape = _shape("shape", shape)
    n = len(shape)
    offset, full_shape = _placement(shape, offset, full_shape)
    if displacement is not None:
        _check_displacement(displacement, shape)
        device, dtype = displacement.device, displacement.dtype
    index = identity(shape, device=device, dtype=dtype).unsqueeze(0)
    shift = index.new_tensor(offset).view(1, n, *([1] * n))
    index = index + shift if displacement is None else index + shift + displacement
    scale = index.new_tensor(normalised_per_voxel(full_shape))
    return index * scale.view(1, n, *([1] * n)) - 1.0


def grid_axes(
    shape: Sequence[int],
    offset: Sequence[int] | None = None,
    full_shape: Sequence[int] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, ...]:
    """The normalised coordinate of each plane of a grid, one ``(S_k,)`` tensor per axis k:
    :func:`grid_coordinates` (without a displacement) is their meshgrid."""
    scale, shift = _index_map(shape, offset, full_shape)
    return tuple(torch.arange(size, device=device, dtype=dtype or torch.get_default_dtype())
                 * step + start for size, step, start in zip(_shape("shape", shape), scale, shift,
                                                              strict=True))


def _placement(shape: tuple[int, ...], offset, full_shape) -> tuple[tuple[int, ...],
                                                                     tuple[int, ...]]:
    """``offset`` and ``full_shape`` of :func:`grid_coordinates` with their defaults, checked."""
    n = len(shape)
    offset = (0,) * n if offset is None else tuple(int(o) for o in offset)
    full_shape = shape if full_shape is None else _shape("full_shape", full_shape)
    if len(offset) != n or len(full_shape) != n:
        raise ValueError(f"offset {offset} and full_shape {full_shape} need {n} entries like shape")
    return offset, full_shape


def _index_map(shape, offset, full_shape) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(scale, shift) per axis with y = scale · i + shift: the normalised coordinate y of local
    voxel index i on a grid of :func:`grid_coordinates`."""
    offset, full_shape = _placement(_shape("shape", shape), offset, full_shape)
    scale = normalised_per_voxel(full_shape)
    return scale, tuple(o * step - 1.0 for o, step in zip(offset, scale, strict=True))


def _check_displacement(displacement: torch.Tensor, shape: tuple[int, ...]) -> None:
    check_field("displacement", displacement)
    if tuple(displacement.shape[2:]) != shape:
        raise ValueError(
            f"displacement {tuple(displacement.shape)} must have spatial shape {shape}"
        )


def rotation_matrix(angles_deg: float | Sequence[float], ndim: int) -> np.ndarray:
    """Rotation ``(n, n)`` in array order from angles in degrees.

    2D: one angle, rotating axis 0 towards axis 1. 3D: three angles (a₀, a₁, a₂) about array
    axes 0, 1, 2, combined as R = R₀ R₁ R₂ (R₂ applied to a vector first).
    """
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    expected = 1 if ndim == 2 else 3
    if ndim not in (2, 3) or angles.shape != (expected,):
        raise ValueError(
            f"rotation_deg needs {expected} angle(s) for ndim={ndim}, got {angles_deg!r}"
        )
    if ndim == 2:
        return Rotation.from_euler("z", angles[0], degrees=True).as_matrix()[:2, :2]
    # intrinsic X, Y, Z about array axes 0, 1, 2 is R₀ R₁ R₂; R₁ turns axis 0 towards axis 2,
    # the opposite of scipy's sense about its y axis
    return Rotation.from_euler("XYZ", angles * [1.0, -1.0, 1.0], degrees=True).as_matrix()


def from_world(
    mean_mm: Sequence[float],
    radii_mm: Sequence[float],
    rotation_deg: float | Sequence[float],
    beta: float,
    shape: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float] | None = None,
    **kwargs,
) -> GeneralisedGaussianPrior:
    """A prior from an ellipsoid in world millimetres (axis-aligned volume, array order).

    ``mean_mm`` is the world position of the centre, ``origin`` the world position of voxel 0
    (default zeros), ``spacing`` mm per array axis; ``radii_mm`` the semi-axes of the ½-contour,
    rotated by ``rotation_deg`` (see :func:`rotation_matrix`) in mm space. ``kwargs`` go to
    :class:`GeneralisedGaussianPrior` (parameterisation, train_beta, ...).
    """
    shape = _shape("shape", shape)
    n = len(shape)
    spacing = _positive_array("spacing", spacing, n)
    origin = np.zeros(n) if origin is None else _float_array("origin", origin, n)
    centre_index = (_float_array("mean_mm", mean_mm, n) - origin) / spacing
    to_norm = np.asarray(normalised_per_voxel(shape))
    radii = _positive_array("radii_mm", radii_mm, n)
    rot = rotation_matrix(rotation_deg, n)
    cov_mm = rot @ np.diag(radii**2) @ rot.T
    scale = to_norm / spacing  # mm → normalised, per axis
    return GeneralisedGaussianPrior(
        n, mean=centre_index * to_norm - 1.0, covariance=cov_mm * np.outer(scale, scale), beta=beta,
        **kwargs,
    )


def fit_to_mask(
    mask: np.ndarray | torch.Tensor, beta: float = 1.0, **kwargs
) -> GeneralisedGaussianPrior:
    """A prior whose ½-contour matches ``mask`` ``(*S)`` (2D or 3D, nonzero = inside).

    Moments of the voxel coordinates: μ = centroid; Σ = (n + 2) · covariance, because a solid
    ellipsoid with semi-axes a has per-axis second moment a²/(n + 2) (a²/5 in 3D, a²/4 in 2D), so
    the fitted ellipsoid's surface is d = 1 (p = ½). Normalised coordinates are per-axis voxel
    indices, so the fit needs no spacing. ``kwargs`` go to :class:`GeneralisedGaussianPrior`.
    """
    mask = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask) != 0
    if mask.ndim not in (2, 3) or min(mask.shape) < 2:
        raise ValueError(f"mask must be 2D or 3D with >= 2 voxels per axis, got {mask.shape}")
    points = np.argwhere(mask).astype(np.float64)
    if len(points) < mask.ndim + 1:
        raise ValueError(f"mask needs at least {mask.ndim + 1} foreground voxels to fit a prior, "
                         f"got {len(points)}")
    to_norm = np.asarray(normalised_per_voxel(mask.shape))
    centred = points - points.mean(0)
    cov = (mask.ndim + 2) * (centred.T @ centred) / len(points)
    return GeneralisedGaussianPrior(
        mask.ndim, mean=points.mean(0) * to_norm - 1.0, covariance=cov * np.outer(to_norm, to_norm),
        beta=beta, **kwargs,
    )


# --------------------------------------------------------------------------------------------
# helpers


def _principal_axes(ndim, radii, rotation, covariance) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, r) with Σ = R diag(r²) Rᵀ from radii/rotation or a covariance, in float64."""
    if covariance is not None:
        if radii is not None or rotation is not None:
            raise ValueError("give either covariance or radii/rotation, not both")
        cov = torch.as_tensor(np.asarray(covariance, dtype=np.float64))
        if cov.shape != (ndim, ndim) or not bool(torch.isfinite(cov).all()):
            raise ValueError(
                f"covariance must be a finite {ndim}×{ndim} matrix, got shape {tuple(cov.shape)}"
            )
        if not torch.allclose(cov, cov.T, rtol=1e-6, atol=1e-10):
            raise ValueError("covariance must be symmetric")
        values, vectors = torch.linalg.eigh(cov)
        if values.min() <= 0:
            raise ValueError(
                f"covariance must be positive definite, got eigenvalues {values.tolist()}"
            )
        return vectors, values.sqrt()
    radii = [0.5] * ndim if radii is None else radii
    scales = torch.as_tensor(_positive_array("radii", radii, ndim))
    if rotation is None:
        return torch.eye(ndim, dtype=torch.float64), scales
    rot = torch.as_tensor(np.asarray(rotation, dtype=np.float64))
    eye = torch.eye(ndim, dtype=rot.dtype)
    if rot.shape != (ndim, ndim) or not torch.allclose(rot.T @ rot, eye, atol=1e-5):
        raise ValueError(f"rotation must be an orthogonal {ndim}×{ndim} matrix, got {rot.tolist()}")
    return rot, scales


def _vector(name: str, value, n: int, default: float) -> torch.Tensor:
    if value is None:
        return torch.full((n,), default, dtype=torch.float64)
    return torch.as_tensor(_float_array(name, value, n))


def _float_array(name: str, value, n: int) -> np.ndarray:
    array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                       dtype=np.float64).reshape(-1)
    if array.shape != (n,) or not np.isfinite(array).all():
        raise ValueError(f"{name} must be {n} finite numbers, got {value!r}")
    return array


def _positive_array(name: str, value, n: int) -> np.ndarray:
    array = _float_array(name, value, n)
    if (array <= 0).any():
        raise ValueError(f"{name} must be positive, got {array.tolist()}")
    return array


def _shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise ValueError(f"{name} must have 2 or 3 axes of >= 2 voxels, got {shape}")
    return shape


def _check_coords(coords: torch.Tensor, ndim: int) -> None:
    if not isinstance(coords, torch.Tensor) or coords.ndim != ndim + 2 or coords.shape[1] != ndim:
        got = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__
        raise ValueError(f"coords must have shape (B, {ndim}, *S) for a {ndim}D prior, got {got}")


def _check_type(data: dict, expected: str) -> None:
    if not isinstance(data, dict) or data.get("type") != expected:
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"expected a prior description of type {expected!r}, got {found!r}")


# --------------------------------------------------------------------------------------------
# the same prior as an ellipsoid in world millimetres (axis-aligned volumes: world = origin +
# spacing · index per array axis), the inverse of from_world


@dataclass(frozen=True)
class WorldEllipsoid:
    """The prior's ½-contour in mm, array order (z, y, x)."""

    mean_mm: tuple[float, ...]  # (n,) world position of the centre
    radii_mm: tuple[float, ...]  # (n,) semi-axes, along the rotated array axes
    rotation_deg: tuple[float, ...]  # 1 angle in 2D, 3 in 3D (see core.prior.rotation_matrix)
    beta: float


def to_world(
    prior, shape: Sequence[int], spacing: Sequence[float], origin: Sequence[float] | None = None
) -> WorldEllipsoid:
    """Describe a :class:`GeneralisedGaussianPrior` on a volume of ``shape`` in mm.

    Inverse of ``from_world(mean_mm, radii_mm, rotation_deg, beta, shape, spacing, origin)``
    up to the choice of principal axes (any order/sign gives the same ellipsoid).
    """
    n = len(shape)
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.zeros(n) if origin is None else np.asarray(origin, dtype=np.float64)
    to_norm = np.asarray(normalised_per_voxel(shape))
    mean = prior.mean.detach().cpu().double().numpy()
    covariance = prior.covariance.detach().cpu().double().numpy()
    scale = to_norm / spacing  # mm → normalised per axis
    cov_mm = covariance / np.outer(scale, scale)
    values, vectors = np.linalg.eigh((cov_mm + cov_mm.T) / 2)
    # order the principal axes like the array axes they are closest to, right-handed
    order = _closest_axes(vectors)
    vectors, values = vectors[:, order], values[order]
    vectors = vectors * np.where(np.diag(vectors) < 0, -1.0, 1.0)
    if np.linalg.det(vectors) < 0:
        vectors[:, -1] *= -1
    return WorldEllipsoid(
        mean_mm=tuple(float(v) for v in origin + (mean + 1.0) / to_norm * spacing),
        radii_mm=tuple(float(math.sqrt(max(v, 0.0))) for v in values),
        rotation_deg=euler_angles(vectors),
        beta=float(prior.beta.detach()),
    )


def euler_angles(rotation: np.ndarray) -> tuple[float, ...]:
    """Angles in degrees with ``core.prior.rotation_matrix(angles, n) == rotation``.

    2D: one angle; 3D: (a₀, a₁, a₂) with R = R₀ R₁ R₂ (R_k rotates about array axis k).
    """
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape == (2, 2):
        return (math.degrees(math.atan2(r[1, 0], r[0, 0])),)
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be a 2×2 or 3×3 matrix, got shape {r.shape}")
    with warnings.catch_warnings():  # gimbal lock (a₁ = ±90°): scipy puts a₀ ± a₂ in a₀
        warnings.simplefilter("ignore", UserWarning)
        a0, a1, a2 = Rotation.from_matrix(r).as_euler("XYZ", degrees=True)
    return (float(a0), -float(a1), float(a2))


def _closest_axes(vectors: np.ndarray) -> list[int]:
    """Permutation of the eigenvector columns that best matches them to array axes 0…n−1."""
    from itertools import permutations

    n = vectors.shape[0]
    weight = np.abs(vectors)
    return list(max(permutations(range(n)), key=lambda p: sum(weight[k, p[k]] for k in range(n))))


def from_display(
    mean_mm: Sequence[float],
    radii_mm: Sequence[float],
    rotation_deg: Sequence[float],
    beta: float,
    shape: Sequence[int],
    scale: Sequence[float],
    translate: Sequence[float],
) -> GeneralisedGaussianPrior:
    """:func:`from_world` in a viewer's world, ``world = translate + scale · index`` per array
    axis, where a negative ``scale`` flips its axis (napari allows it)."""
    spacing, origin, flips = _display_geometry(scale, translate)
    return from_world(_flip(mean_mm, flips), radii_mm, _flip_angles(rotation_deg, flips), beta,
                      shape, spacing, _flip(origin, flips))


def to_display(
    prior, shape: Sequence[int], scale: Sequence[float], translate: Sequence[float]
) -> WorldEllipsoid:
    """:func:`to_world` in a viewer's world (see :func:`from_display`; the inverse of it)."""
    spacing, origin, flips = _display_geometry(scale, translate)
    world = to_world(prior, shape, spacing, _flip(origin, flips))
    return WorldEllipsoid(_flip(world.mean_mm, flips), world.radii_mm,
                          _flip_angles(world.rotation_deg, flips), world.beta)


def _display_geometry(scale, translate) -> tuple[tuple[float, ...], tuple[float, ...],
                                                 tuple[bool, ...]]:
    """(spacing > 0, origin, flipped axes) of world = translate + scale · index."""
    scale = np.asarray(scale, dtype=float)
    return (tuple(np.abs(scale)), tuple(float(t) for t in translate),
            tuple(bool(s < 0) for s in scale))


def _flip(values, flips) -> tuple[float, ...]:
    """Negate world coordinates on flipped axes: there world = t − |s|·i = −((−t) + |s|·i)."""
    return tuple(-float(v) if f else float(v) for v, f in zip(values, flips, strict=True))


def _flip_angles(angles, flips) -> tuple[float, ...]:
    """Angles of F R F (F = diag(±1) for flipped axes), the same rotation seen in flipped axes."""
    if not any(flips) or not any(angles):
        return tuple(float(a) for a in angles)
    f = np.diag([-1.0 if flip else 1.0 for flip in flips])
    return euler_angles(f @ rotation_matrix(angles, len(flips)) @ f)
