"""Data-parallel training behind one helper: a process's place in a ``torchrun`` launch.

Launched under ``torchrun`` (environment RANK/WORLD_SIZE/LOCAL_RANK), :class:`Distributed` joins
the process group (nccl on CUDA, gloo on the CPU), wraps the model in DistributedDataParallel
and offers the few collectives the trainer needs. In a single process every operation is the
identity, so the trainer never branches on the world size itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["Distributed"]


class Distributed:
    """Rank, world size and local rank of this process (0, 1, 0 without ``torchrun``)."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.world_size = int(environ.get("WORLD_SIZE", "1"))
        if self.world_size > 1:
            self.rank, self.local_rank = int(environ["RANK"]), int(environ.get("LOCAL_RANK", "0"))
        else:
            self.world_size, self.rank, self.local_rank = 1, 0, 0
        self.device = torch.device("cpu")
        self._own_group = False

    @property
    def is_main(self) -> bool:
        """True on the process that validates, prints and writes checkpoints (rank 0)."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """The device of this rank: its own GPU (``cuda:LOCAL_RANK``) when training on CUDA."""
        if self.world_size > 1 and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
        self.device = device
        return device

    def join(self) -> None:
        """Join the process group (once; only when launched with several processes)."""
        import torch.distributed as dist

        if self.world_size == 1 or dist.is_initialized():
            return
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self._own_group = True

    def leave(self) -> None:
        """Destroy the process group this helper created (if any)."""
        if self._own_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._own_group = False

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel when there are several ranks, else itself."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # a U-Net bottleneck of one voxel (16-voxel patches) gets no gradient: instance norm of
        # a single value is constant, so those parameters must be allowed
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def accumulating(
        self, network: torch.nn.Module, last: bool
    ) -> contextlib.AbstractContextManager:
        """Context for one backward pass of a batch: no gradient all-reduce but on the ``last``."""
        if last or self.world_size == 1:
            return contextlib.nullcontext()
        return network.no_sync()

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (every rank gets the same answer)."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def mean(self, value: float) -> float:
        """``value`` averaged over ranks (e.g. the loss the all-reduced gradients optimise)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        total = torch.tensor([value], device=self.device, dtype=torch.float64)
        dist.all_reduce(total)
        return float(total.item()) / self.world_size

    def gather(self, item: Any) -> list[Any]:
        """Every rank's ``item`` (picklable), in rank order."""
        if self.world_size == 1:
            return [item]
        import torch.distributed as dist

        items: list[Any] = [None] * self.world_size
        dist.all_gather_object(items, item)
        return items
