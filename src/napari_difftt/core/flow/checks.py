"""Argument validation shared by the core: clear errors naming the argument, no broadcasting."""

from __future__ import annotations

import torch

__all__ = [
    "all_finite",
    "check_count",
    "check_device",
    "check_field",
    "check_image",
    "check_same_field",
    "check_squarings",
]


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no value of the floating ``tensor`` is NaN or ±Inf: its smallest and largest
    values (a NaN anywhere makes both NaN) are finite. One reduction without a bool per value:
    about 30 × faster on CPU than ``isfinite(tensor).all()`` (0.8 against 26 ms for
    ``(1, 3, 128, 128, 128)`` float32 on one thread), which every checked call paid."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_image(name: str, image: object, *, finite: bool = True) -> torch.Tensor:
    """Check ``image`` is a floating tensor ``(B, C, *S)``, B >= 1, with 2 or 3 spatial axes of
    size >= 2 (and finite values unless ``finite=False``)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (B, C, *S), got {type(image).__name__}"
        )
    if not image.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float32/float64), got {image.dtype}")
    if image.ndim not in (4, 5):
        raise ValueError(
            f"{name} must have shape (B, C, H, W) or (B, C, D, H, W), got {tuple(image.shape)} "
            f"({image.ndim} dimensions)"
        )
    if image.shape[0] < 1:
        raise ValueError(
            f"{name} has an empty batch (B = 0) in shape {tuple(image.shape)}; "
            "pass at least one item"
        )
    if min(image.shape[2:]) < 2:
        raise ValueError(
            f"{name} needs at least 2 voxels along every spatial axis, got {tuple(image.shape)}"
        )
    # a "meta" tensor carries no values to check (it is used to test device mismatches)
    if finite and image.device.type != "meta" and not all_finite(image):
        raise ValueError(f"{name} contains NaN or Inf values")
    return image


def check_field(name: str, field: object, *, finite: bool = True) -> torch.Tensor:
    """Check ``field`` is a vector field ``(B, n, *S)`` whose n matches its 2 or 3 spatial axes."""
    field = check_image(name, field, finite=finite)
    n = field.ndim - 2
    if field.shape[1] != n:
        raise ValueError(
            f"{name} must have {n} components for {n} spatial axes, i.e. shape (B, {n}, *S); "
            f"got {field.shape[1]} channels in shape {tuple(field.shape)}"
        )
    return field


def check_same_field(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Require two fields to share shape, dtype and device (no broadcasting)."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} is {a.dtype} but {name_b} is {b.dtype}")


def check_device(name: str, tensor: torch.Tensor, module: torch.nn.Module) -> None:
    """Require ``tensor`` on the device of ``module``'s parameters, naming both devices."""
    parameter = next(module.parameters(), None)
    if parameter is not None and tensor.device != parameter.device:
        raise ValueError(
            f"{name} is on {tensor.device} but the model {type(module).__name__} is on "
            f"{parameter.device}: move one of them (e.g. {name}.to('{parameter.device}'))"
        )


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """Check ``value`` is an int (not a bool) of at least ``minimum``; returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def check_squarings(squarings: object) -> int:
    """Check a fixed number of squarings is an int in 0..20."""
    if isinstance(squarings, bool) or not isinstance(squarings, int):
        raise TypeError(f"squarings must be an int in 0..20 or None, got {squarings!r}")
    if not 0 <= squarings <= 20:
        raise ValueError(f"squarings must be in 0..20, got {squarings}")
    return squarings
