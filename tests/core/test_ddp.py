"""Multi-process training (DistributedDataParallel, gloo on the CPU) as torchrun would launch it."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

WORLD = 2
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, folder: str) -> None:
    """One rank, configured through the environment variables torchrun sets."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from napari_difftt.core.data import Sample, make_phantom, normalise_intensity
    from napari_difftt.core.train import TrainConfig, Trainer

    samples = []
    for seed in range(2):
        phantom = make_phantom((32, 32, 32), seed=seed)
        samples.append(
            Sample(
                normalise_intensity(phantom.image), phantom.labels, phantom.spacing, f"case{seed}"
            )
        )
    config = TrainConfig(
        kind="svf",
        iterations=STEPS,
        patch_size=(16, 16, 16),  # 1-voxel bottleneck: unused parameters
        width=4,
        device="cpu",
        seed=5,
        lr=1e-2,
        prior="mean",
        checkpoint=os.path.join(folder, "out", "model.pt"),
    )
    trainer = Trainer(config, samples)
    losses = [event.loss for event in trainer.events()]
    torch.save(
        {
            "state": trainer.model.state_dict(),
            "losses": losses,
            "world": trainer.world_size,
            "rank": trainer.rank,
        },
        os.path.join(folder, f"rank{rank}.pt"),
    )


def test_two_gloo_ranks_keep_identical_weights_and_write_one_checkpoint(tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["world"] for r in ranks] == [WORLD, WORLD] and [r["rank"] for r in ranks] == [0, 1]
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the mean over ranks, the same everywhere
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.pt"]

    from napari_difftt.core.io import load_checkpoint

    checkpoint = load_checkpoint(tmp_path / "out" / "model.pt")
    training = checkpoint["training"]
    assert training["world_size"] == WORLD and training["step"] == STEPS
    first, second = training["rng"]["numpy"]
    assert first != second  # each rank drew its own patches (seed + rank)
    for name, value in ranks[0]["state"].items():
        assert torch.equal(checkpoint["state_dict"][name], value), name
    # they were trained: the flow head starts at exactly zero
    assert ranks[0]["state"]["net.head.weight"].abs().sum() > 0
