"""Cancel and follow a long torch computation between its operations, without changing its code.

:class:`Interruptible` is a ``TorchFunctionMode`` (thread-local: it sees only the torch calls
of the thread that entered it). Inside it every torch operation first polls ``should_stop()``
and raises :class:`~napari_difftt.core.inference.Cancelled` when it returns True, so a cancel
takes effect after the operation running at that moment instead of after a whole forward pass.
Convolutions (``F.conv2d``/``F.conv3d`` and the oneDNN ones of :class:`core.nets.OneDNN`) too
large to finish quickly (more than ``max_flops`` multiply-adds) are computed in slabs along
the first spatial axis, each slab with the halo its kernel needs, so they can be interrupted
too; the result equals the unsplit convolution to float rounding. ``on_conv(done)``
is called after each convolution with the number finished so far (a progress count: a U-Net's
forward pass runs each of its convolution modules once).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .nets import Pointwise, onednn_convolution

__all__ = ["MAX_FLOPS", "Interruptible", "count_convolutions"]

MAX_FLOPS = 2e9  # multiply-adds per convolution slab: ~0.1–0.3 s on two CPU cores
_CONVS = {F.conv2d: 2, F.conv3d: 3}


class Interruptible(TorchFunctionMode):
    """Poll ``should_stop`` before every torch operation; split big convolutions into slabs."""

    def __init__(
        self,
        should_stop: Callable[[], bool],
        on_conv: Callable[[int], None] | None = None,
        max_flops: float = MAX_FLOPS,
    ) -> None:
        super().__init__()
        self.should_stop = should_stop
        self.on_conv = on_conv
        self.max_flops = float(max_flops)
        self.convolutions = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._check()
        if func is torch.mkldnn_convolution:  # core.nets.OneDNN: (…, padding, stride, …)
            x, weight, bias, padding, stride, dilation, groups = args
            result = self._convolution(onednn_convolution, weight.ndim - 2, x, weight, bias,
                                       stride, padding, dilation, groups)
        elif func in _CONVS:
            result = self._convolution(func, _CONVS[func], *args, **kwargs)
        else:
            return func(*args, **kwargs)
        self.convolutions += 1
        if self.on_conv is not None:
            self.on_conv(self.convolutions)
        return result

    def _check(self) -> None:
        if self.should_stop():
            from .inference import Cancelled

            raise Cancelled("cancelled between torch operations")

    def _convolution(self, func, ndim, x, weight, bias=None, stride=1, padding=0, dilation=1,
                     groups=1):
        plain = (stride, dilation) in ((1, 1), ((1,) * ndim, (1,) * ndim))
        if not plain or isinstance(padding, str) or x.ndim != ndim + 2:
            return func(x, weight, bias, stride, padding, dilation, groups)
        pads = (padding,) * ndim if isinstance(padding, int) else tuple(padding)
        depth, kernel = x.shape[2], weight.shape[2]
        out_depth = depth + 2 * pads[0] - kernel + 1
        flops = x.shape[0] * weight.numel() * math.prod(x.shape[2:])
        slabs = min(out_depth, math.ceil(flops / self.max_flops))
        if slabs <= 1:
            return func(x, weight, bias, stride, padding, dilation, groups)
        inner = (0, *pads[1:])
        step = math.ceil(out_depth / slabs)
        pieces = []
        for start in range(0, out_depth, step):
            self._check()
            stop = min(start + step, out_depth)
            low, high = start - pads[0], stop - pads[0] + kernel - 1  # input rows [low, high)
            part = x[:, :, max(low, 0) : min(high, depth)]
            before, after = max(0, -low), max(0, high - depth)
            if before or after:
                part = F.pad(part, (0, 0) * (ndim - 1) + (before, after))
            pieces.append(func(part, weight, bias, stride, inner, dilation, groups))
        return torch.cat(pieces, dim=2)


def count_convolutions(module: torch.nn.Module) -> int:
    """Number of 2D/3D convolution modules in ``module`` that call ``F.conv2d``/``F.conv3d`` or
    oneDNN's (:class:`~napari_difftt.core.nets.OneDNN`): the progress total of one pass;
    :class:`~napari_difftt.core.nets.Pointwise` ones (matrix products) do not count."""
    return sum(isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d) and not isinstance(m, Pointwise)
               for m in module.modules())
