"""The one device chooser of the project: ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"``.

Everything that puts tensors somewhere (CLI, trainer, inference, widgets) resolves the user's
choice here, so a missing GPU gives the same clear error everywhere.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch

__all__ = ["DeviceInfo", "describe", "list_devices", "resolve_device"]

_CUDA = re.compile(r"cuda(?::(\d+))?")


class DeviceInfo(NamedTuple):
    """A choice to offer the user: ``spec`` for :func:`resolve_device`, ``label`` to show."""

    spec: str  # "auto", "cpu", "cuda:0", "mps"
    label: str  # "CPU (2 threads)", "cuda:0 · NVIDIA H100 · 70.2 GiB free"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn a device spec into a :class:`torch.device` that exists on this machine.

    "auto" → the first CUDA device if there is one, else Apple's mps if available, else cpu.
    Asking for a device that is not there raises RuntimeError saying what is available.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {spec!r}")
    text = spec.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise RuntimeError(
                "Apple mps was requested but is not available on this machine; use 'cpu'"
            )
        return torch.device("mps")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise ValueError(f"unknown device {spec!r}: use 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
    index = int(match.group(1) or 0)
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"CUDA was requested ({text}) but no CUDA device is available "
            f"(PyTorch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
            "use 'cpu' or 'auto'"
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise RuntimeError(
            f"CUDA was requested (cuda:{index}) but only {count} CUDA device(s) exist "
            f"(cuda:0…cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def list_devices() -> list[DeviceInfo]:
    """Every device this machine offers, "auto" first (its label says what it resolves to)."""
    devices = [DeviceInfo("cpu", f"CPU ({torch.get_num_threads()} threads)")]
    if torch.cuda.is_available():
        devices += [
            DeviceInfo(f"cuda:{i}", _cuda_label(i, free=True))
            for i in range(torch.cuda.device_count())
        ]
    if _mps_available():
        devices.append(DeviceInfo("mps", "mps · Apple GPU"))
    auto = resolve_device("auto")
    return [DeviceInfo("auto", f"auto ({describe(auto)})"), *devices]


def describe(device: str | torch.device) -> str:
    """Short human description, e.g. "cpu (2 threads)" or "cuda:0 · NVIDIA H100"."""
    device = resolve_device(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        return _cuda_label(device.index or 0, free=False)
    return f"{device.type} · Apple GPU" if device.type == "mps" else str(device)


def _cuda_label(index: int, free: bool) -> str:
    label = f"cuda:{index} · {torch.cuda.get_device_name(index)}"
    if not free:
        return label
    try:
        free_bytes, _ = torch.cuda.mem_get_info(index)
    except RuntimeError:  # a busy or exclusive-mode device may refuse a new context
        return label
    return f"{label} · {free_bytes / 2**30:.1f} GiB free"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
