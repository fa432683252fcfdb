"""core.interrupt: cancel between torch operations, big convolutions in exact slabs."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from napari_difftt.core.inference import Cancelled
from napari_difftt.core.interrupt import Interruptible, count_convolutions


@pytest.mark.parametrize("ndim, padding", [(3, 1), (3, (1, 1, 1)), (2, 2), (3, 0)])
def test_slabs_equal_the_whole_convolution(ndim, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 23, 9, 7) if ndim == 3 else torch.randn(2, 3, 29, 11)
    kernel = 3 if padding in (1, (1, 1, 1), 0) else 5
    weight = torch.randn(4, 3, *(kernel,) * ndim)
    bias = torch.randn(4)
    conv = F.conv3d if ndim == 3 else F.conv2d
    expected = conv(x, weight, bias, 1, padding)
    calls = []

    def never() -> bool:
        calls.append(1)
        return False

    with Interruptible(never, max_flops=1e3) as mode:
        got = conv(x, weight, bias, 1, padding)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert mode.convolutions == 1 and len(calls) > 5  # many slabs, each checked


def test_onednn_convolutions_are_split_and_counted_like_atens():
    from napari_difftt.core.nets import convolution

    torch.manual_seed(0)
    layer = convolution(3, 3, 4, 3, padding=1)
    x = torch.randn(1, 3, 23, 9, 7)
    with torch.inference_mode():
        expected = layer(x)
        polls: list[int] = []

        def never() -> bool:
            polls.append(1)
            return False

        with Interruptible(never, max_flops=1e3) as mode:
            got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert mode.convolutions == 1 and len(polls) > 5  # many slabs, each checked


def test_stop_raises_cancelled_at_the_next_operation_and_only_in_its_thread():
    stop = threading.Event()
    other: list[float] = []
    with Interruptible(stop.is_set):
        torch.ones(3).sum()  # runs: not stopped yet
        stop.set()
        worker = threading.Thread(target=lambda: other.append(float(torch.ones(2).sum())))
        worker.start()
        worker.join()
        with pytest.raises(Cancelled):
            torch.ones(3).sum()
    assert other == [2.0]  # another thread's torch calls are not watched


def test_progress_counts_each_convolution_module_once():
    from napari_difftt.core.nets import UNet

    net = UNet(3, 2, 3, width=2)
    seen = []
    with torch.inference_mode(), Interruptible(lambda: False, seen.append):
        net(torch.zeros(1, 2, 16, 16, 16))
    assert seen == list(range(1, count_convolutions(net) + 1))
