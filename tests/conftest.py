"""Shared fixtures and markers for the whole test suite (keep minimal; additions welcome)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` when no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def threads():
    """Set torch's CPU thread count inside a test: ``threads(2)``; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def linear_field():
    """Factory for the linear field v(x) = A·(x − c) in voxels: ``linear_field(A, shape, c=None)``.

    ``A`` is ``(n, n)`` in array order, ``shape`` the spatial shape, ``c`` the centre (default:
    the grid centre). Returns a float64 tensor ``(1, n, *shape)``.
    """
    import numpy as np
    import torch

    from napari_difftt.core.flow.grid import identity

    def make(matrix, shape, centre=None) -> torch.Tensor:
        matrix = torch.as_tensor(np.asarray(matrix), dtype=torch.float64)
        if centre is None:
            centre = [(size - 1) / 2 for size in shape]
        x = identity(shape, dtype=torch.float64)
        x = x - torch.tensor(centre, dtype=torch.float64).view(-1, *[1] * len(shape))
        return torch.einsum("ij,j...->i...", matrix, x).unsqueeze(0)

    return make
