"""Convolutional networks for 2D and 3D images: a 4-level U-Net and a small feature CNN.

Tensors are ``(B, C, *S)`` with ``S`` = (D, H, W) or (H, W). Normalisation is instance norm
(per sample and channel, with affine parameters), activations LeakyReLU(0.2), up-sampling
linear (bi/trilinear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DIVISOR", "FEATURE_LEVELS", "ConvBlock", "FeatureCNN", "OneDNN", "Pointwise", "UNet",
    "check_divisible", "check_feature_level", "convolution", "onednn_convolution", "pointwise",
    "space_to_depth",
]

LEVELS = 4
DIVISOR = 2**LEVELS  # every spatial size must be a multiple of this


class ConvBlock(nn.Sequential):
    """Two (3×3[×3] conv → instance norm → LeakyReLU(0.2)) layers; keeps the spatial size."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers += [convolution(ndim, channels, out_channels, 3, padding=1),
                       _instance_norm(out_channels),
                       nn.LeakyReLU(0.2)]
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net with 4 down/up levels and skip connections: ``(B, in, *S)`` → ``(B, out, *S)``.

    Widths are ``width · 2^level`` (level 0…4, 4 = bottleneck at S/16). Down-sampling is max
    pooling, up-sampling linear interpolation followed by a :class:`ConvBlock` on the
    concatenated skip. ``head`` is the final 1×1 convolution; ``zero_head=True`` initialises it to
    zero so the output starts at exactly 0. Every spatial size must be a multiple of 16.

    ``feature_level`` L > 0 stops the decoder at S / 2^L. With ``fine_skips`` the finer encoder
    levels are folded into that grid (:func:`space_to_depth`: each voxel's 2^(L−k) × … block of
    level k's features becomes channels) and merged with the decoder's output by a 1×1
    convolution → instance norm → LeakyReLU(0.2) (``fuse``), so the heads still see every
    image voxel's own features; without, the heads read the decoder's output alone.
    """

    def __init__(
        self, ndim: int, in_channels: int = 2, out_channels: int = 1, width: int = 8,
        *, zero_head: bool = False, feature_level: int = 0, fine_skips: bool = True,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        check_feature_level(feature_level)
        if not isinstance(fine_skips, bool):
            raise ValueError(f"fine_skips must be True or False, got {fine_skips!r}")
        self.ndim, self.in_channels, self.out_channels = ndim, in_channels, out_channels
        self.feature_level = feature_level
        widths = [width * 2**level for level in range(LEVELS + 1)]
        self.down = nn.ModuleList([ConvBlock(ndim, in_channels, widths[0])])
        self.down.extend(ConvBlock(ndim, widths[k - 1], widths[k]) for k in range(1, LEVELS + 1))
        self.up = nn.ModuleList(
            ConvBlock(ndim, widths[k + 1] + widths[k], widths[k])
            for k in reversed(range(feature_level, LEVELS))
        )
        self.fuse = None
        if fine_skips and feature_level > 0:
            folded = sum(widths[k] * 2 ** (ndim * (feature_level - k))
                         for k in range(feature_level))
            self.fuse = nn.Sequential(
                pointwise(ndim, widths[feature_level] + folded, widths[feature_level]),
                _instance_norm(widths[feature_level]), nn.LeakyReLU(0.2))
        self.head = pointwise(ndim, widths[feature_level], out_channels)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def fine_skips(self) -> bool:
        """Whether the finer encoder levels are folded into the heads' grid (level > 0 only)."""
        return self.fuse is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the 1×1 ``head`` reads, ``(B, width · 2^L, *S / 2^L)`` (L =
        ``feature_level``): the last decoder block's output, merged with the folded finer
        encoder levels when ``fine_skips``.

        ``head`` is affine per voxel, so it commutes with averaging over voxels: a caller that
        only needs the output's block means may pool these features first (fewer channels)."""
        check_divisible(x, self.ndim, self.in_channels)
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else pool(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
            x = block(torch.cat([x, skips.pop()], dim=1))
        if self.fuse is None:
            return x
        level = self.feature_level
        folded = [space_to_depth(skip, 2 ** (level - k)) for k, skip in enumerate(skips)]
        return self.fuse(torch.cat([x, *folded], dim=1))


class FeatureCNN(nn.Module):
    """Small CNN: ``levels`` × (:class:`ConvBlock`, 2× max pool), global mean → ``(B, features)``.

    Widths double per level from ``width``; a linear layer maps to ``features``. For classifiers
    and localisation heads (e.g. predicting transform parameters).
    """

    def __init__(
        self, ndim: int, in_channels: int = 1, features: int = 10, width: int = 8, levels: int = 3
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels!r}")
        self.ndim = ndim
        widths = [width * 2**k for k in range(levels)]
        self.blocks = nn.ModuleList(
            ConvBlock(ndim, [in_channels, *widths][k], widths[k]) for k in range(levels)
        )
        self.linear = nn.Linear(widths[-1], features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        for block in self.blocks:
            x = pool(block(x), 2)
        return self.linear(x.flatten(2).mean(2))


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, C, *S)`` → ``(B, C · factor^n, *S / factor)``: each ``factor`` × … block of voxels
    becomes channels, ordered channel-major then by the offsets within the block (row-major);
    every spatial size must be a multiple of ``factor``."""
    if any(s % factor for s in x.shape[2:]):
        raise ValueError(f"space_to_depth needs sizes that are multiples of {factor}, got "
                         f"{tuple(x.shape[2:])}")
    n = x.ndim - 2
    coarse = [s // factor for s in x.shape[2:]]
    split = x.reshape(*x.shape[:2], *[d for c in coarse for d in (c, factor)])
    order = [0, 1, *range(3, 2 + 2 * n, 2), *range(2, 2 + 2 * n, 2)]
    return split.permute(order).reshape(x.shape[0], x.shape[1] * factor**n, *coarse)


FEATURE_LEVELS = (0, 1, 2)  # decoder levels a UNet may stop at (2: a quarter of the resolution)


def check_feature_level(level: object) -> int:
    """``level`` if it is one of :data:`FEATURE_LEVELS`, else ValueError naming the valid ones."""
    if isinstance(level, bool) or level not in FEATURE_LEVELS:
        raise ValueError(f"feature_level must be one of {FEATURE_LEVELS} (the decoder level the "
                         f"heads read: 0 the image grid, 1 half its resolution), got {level!r}")
    return level


def check_divisible(x: torch.Tensor, ndim: int, channels: int) -> None:
    """Require ``x`` ``(B, channels, *S)`` with every spatial size a positive multiple of 16."""
    if not isinstance(x, torch.Tensor) or x.ndim != ndim + 2 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"input must have shape (B, {channels}, *S) with {ndim} spatial axes, got {got}"
        )
    bad = [s for s in x.shape[2:] if s < DIVISOR or s % DIVISOR]
    if bad:
        needed = tuple(max(DIVISOR, -(-s // DIVISOR) * DIVISOR) for s in x.shape[2:])
        raise ValueError(
            f"the U-Net needs every spatial size to be a multiple of {DIVISOR} (and at least "
            f"{DIVISOR}); got {tuple(x.shape[2:])}: pad to {needed} (inference pads automatically)"
        )


class Pointwise:
    """A 1×1 convolution computed as one matrix product over the voxels, with the parameters
    (and checkpoint keys) of the convolution it stands for: ATen's CPU convolution takes ~60×
    longer for the few channels of these heads (118 ms against 2 ms for 4 → 1 channels at 128³
    on two threads). Mixed into :class:`torch.nn.Conv2d` / ``Conv3d`` by :func:`pointwise`."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        if x.ndim != weight.ndim:  # unbatched input: ATen's own path
            return super()._conv_forward(x, weight, bias)
        out = torch.matmul(weight.flatten(1), x.flatten(2))  # (B, out, voxels)
        if bias is not None:
            out = out + bias.view(1, -1, 1)
        return out.view(x.shape[0], -1, *x.shape[2:])


class _Pointwise2d(Pointwise, nn.Conv2d):
    pass


class _Pointwise3d(Pointwise, nn.Conv3d):
    pass


def pointwise(ndim: int, in_channels: int, out_channels: int) -> nn.Module:
    """A 1×1 convolution ``(B, in, *S)`` → ``(B, out, *S)`` (:class:`Pointwise`)."""
    return (_Pointwise2d if ndim == 2 else _Pointwise3d)(in_channels, out_channels, 1)


class OneDNN:
    """A convolution that takes oneDNN's kernel for float32 on the CPU whatever the batch size,
    with the parameters (and checkpoint keys) of the convolution it stands for. For a batch of
    one, ATen takes its native kernel instead when channels × the first two spatial sizes are
    at most 20480 — 5–15 × slower for the 32³ and 64³ levels of a width-4 U-Net on a 128³
    volume; elsewhere ATen takes oneDNN itself, and the results are the same. Other dtypes and
    devices, and builds without oneDNN, take ATen's own path. Mixed into
    :class:`torch.nn.Conv2d` / ``Conv3d`` by :func:`convolution`."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        if not _takes_onednn(x, weight, self.padding_mode, self.padding):
            return super()._conv_forward(x, weight, bias)
        return onednn_convolution(x, weight, bias, self.stride, self.padding, self.dilation,
                                  self.groups)


def onednn_convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       stride, padding, dilation, groups: int) -> torch.Tensor:
    """oneDNN's convolution with ``F.conv3d``'s argument order (``x`` may be a view, e.g. one
    of :class:`~napari_difftt.core.interrupt.Interruptible`'s slabs)."""
    return torch.mkldnn_convolution(x.contiguous(), weight, bias, padding, stride, dilation,
                                    groups)


def _takes_onednn(x: torch.Tensor, weight: torch.Tensor, padding_mode: str, padding) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.ndim == weight.ndim and padding_mode == "zeros"
            and not isinstance(padding, str) and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


class _OneDNN2d(OneDNN, nn.Conv2d):
    pass


class _OneDNN3d(OneDNN, nn.Conv3d):
    pass


def convolution(ndim: int, in_channels: int, out_channels: int, kernel: int,
                padding: int = 0) -> nn.Module:
    """A ``kernel``-wide convolution ``(B, in, *S)`` → ``(B, out, *S')`` (:class:`OneDNN`)."""
    return (_OneDNN2d if ndim == 2 else _OneDNN3d)(in_channels, out_channels, kernel,
                                                   padding=padding)


def _instance_norm(channels: int) -> nn.Module:
    return _InstanceNorm(channels, channels)


class _InstanceNorm(nn.GroupNorm):
    """Instance norm with affine parameters (GroupNorm with one group per channel).

    torch refuses to normalise a single voxel; its normalised value is exactly 0, so the output
    is the bias. That case is the bottleneck of a 16-voxel input.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0, 0].numel() > 1:
            return super().forward(x)
        return self.bias.view(1, -1, *([1] * (x.ndim - 2))).expand_as(x)
