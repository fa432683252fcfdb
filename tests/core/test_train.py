"""Trainer: masked loss, checkpoints (content, atomic stop), exact resume, sparse labels, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_difftt.core.data import Sample, make_phantom, normalise_intensity
from napari_difftt.core.io import load_checkpoint
from napari_difftt.core.prior import DEFAULT_BETA
from napari_difftt.core.slices import fit_to_slices
from napari_difftt.core.train import TrainConfig, Trainer, slim_checkpoint
from napari_difftt.errors import OutputPathError

SHAPE = (16, 32, 32)  # volumes
PATCH = (16, 16, 16)


def _samples(count: int, seed: int = 0, sparse: bool = False) -> list[Sample]:
    samples = []
    for index in range(count):
        phantom = make_phantom(SHAPE, seed=seed + index)
        labels = phantom.labels.copy()
        if sparse:  # one labelled axial slice through the organ, the rest unlabelled
            z = int(np.argmax(labels.sum((1, 2))))
            labels[:z] = 255
            labels[z + 1 :] = 255
        samples.append(
            Sample(
                normalise_intensity(phantom.image), labels, phantom.spacing, f"case{seed + index}"
            )
        )
    return samples


def _config(tmp_path, **changes) -> TrainConfig:
    settings = dict(
        kind="bch",
        iterations=4,
        patch_size=PATCH,
        width=4,
        pieces=2,
        device="cpu",
        seed=3,
        lr=1e-3,
        prior="diag",
        checkpoint=str(tmp_path / "model.pt"),
    )
    return TrainConfig(**{**settings, **changes})


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="kind"):
        TrainConfig(kind="vnet")
    with pytest.raises(ValueError, match="patch_size"):
        TrainConfig(patch_size=(32,))
    with pytest.raises(ValueError, match="iterations"):
        TrainConfig(iterations=0)
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"kind": "bch", "colour": 1})
    config = TrainConfig(kind="svf", patch_size=(16, 32))
    assert TrainConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_the_b_spline_lattice_is_recorded_resolved_and_old_records_keep_theirs():
    """Today's default spacing (DEFAULT_SPACE, 2 voxels; the factor where coarser) is written
    out; a run recorded with no spacing had VelocitySpace's default of its time, 4 voxels."""
    from napari_difftt.core.flow.velocity import DEFAULT_LATTICE, DEFAULT_SPACE

    config = TrainConfig()
    assert config.velocity_space() == DEFAULT_SPACE and DEFAULT_SPACE.lattice == 2
    assert config.to_dict()["velocity_lattice"] == 2
    assert TrainConfig(velocity_factor=4).velocity_space().lattice == 4
    assert TrainConfig(velocity="dense").to_dict()["velocity_lattice"] is None
    old = {**config.to_dict(), "velocity_lattice": None}
    assert TrainConfig.from_dict(old).velocity_space().lattice == DEFAULT_LATTICE == 4


def test_training_writes_a_safe_complete_checkpoint_and_validates(tmp_path):
    config = _config(tmp_path, iterations=2)
    events = list(Trainer(config, _samples(2), _samples(1, seed=10)).events())
    assert [e.step for e in events] == [1, 2] and events[-1].total == 2
    assert events[0].checkpoint is None and events[-1].checkpoint == tmp_path / "model.pt"
    assert 0.0 <= events[-1].val_dice <= 1.0
    assert events[-1].preview.shape == SHAPE and events[-1].preview.dtype == np.float32
    assert all(np.isfinite(e.loss) for e in events)

    checkpoint = load_checkpoint(tmp_path / "model.pt")  # weights_only=True inside
    assert checkpoint["model"]["kind"] == "bch"
    assert checkpoint["spacing"] == list(_samples(1)[0].spacing)
    training = checkpoint["training"]
    assert training["step"] == 2 and training["seed"] == 3
    assert training["config"]["patch_size"] == list(PATCH)
    assert training["metrics"]["val_dice"] == pytest.approx(events[-1].val_dice)
    assert [h["step"] for h in training["metrics"]["history"]] == [1, 2]
    assert set(checkpoint["versions"]) >= {"torch", "numpy", "napari_difftt"}
    assert checkpoint["prior"]["parameterisation"] == "diag"
    slim = slim_checkpoint(checkpoint)
    assert "optimizer" not in slim["training"] and "optimizer" in checkpoint["training"]


def test_resume_continues_the_step_count_and_reproduces_the_uninterrupted_run(tmp_path):
    train = _samples(2)
    straight = Trainer(_config(tmp_path / "a"), train)
    straight.run()

    first = Trainer(_config(tmp_path / "b"), train)
    assert first.run(should_stop=lambda: first.step == 2).step == 2
    path = tmp_path / "b" / "model.pt"
    resumed = Trainer(_config(tmp_path / "b"), train, resume=path)
    steps = [event.step for event in resumed.events()]
    assert steps == [3, 4]
    assert load_checkpoint(path)["training"]["step"] == 4
    for name, value in straight.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[name], atol=1e-6), name


def test_stop_saves_a_checkpoint_before_returning(tmp_path):
    config = _config(tmp_path, iterations=50)
    trainer = Trainer(config, _samples(1))
    seen = []

    def callback(event):
        seen.append(event.step)
        if event.step == 2:
            trainer.stop()

    result = trainer.run(callback=callback)
    assert result.stopped and result.step == 2 and seen == [1, 2, 2]
    assert result.checkpoint == tmp_path / "model.pt"
    assert load_checkpoint(result.checkpoint)["training"]["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary files left

    # should_stop works the same, and closing the event stream early also keeps the work
    calls = iter([False, True])
    result = Trainer(_config(tmp_path / "s", iterations=50), _samples(1)).run(
        should_stop=lambda: next(calls)
    )
    assert result.stopped and result.step == 1
    stream = Trainer(_config(tmp_path / "c", iterations=50), _samples(1)).events()
    next(stream)
    stream.close()
    assert load_checkpoint(tmp_path / "c" / "model.pt")["training"]["step"] == 1


def test_sparse_annotations_train_without_nan_and_the_loss_sees_only_the_labelled_slice(tmp_path):
    samples = _samples(1, sparse=True)
    # no pose level: its mask's loss would add to the one this test computes; no mirroring:
    # a mirrored first patch would move the labelled slice away from where it was fitted
    trainer = Trainer(_config(tmp_path, iterations=3, patch_size=SHAPE, pose=False,
                              mirror=False), samples)
    result = trainer.run()
    assert np.isfinite([h["loss"] for h in result.history]).all()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # step 1: an untrained flow model returns its prior exactly (zero last layer); with
    # unlabelled voxels the prior is fitted to the labelled slice (core.slices.fit_to_slices)
    fitted = fit_to_slices(samples[0].labels, 0, samples[0].spacing, beta=DEFAULT_BETA)
    prior = fitted.on_grid(SHAPE)[0, 0].double()
    labels = torch.from_numpy(samples[0].labels)
    known = labels != 255
    expected = F.binary_cross_entropy(prior[known], labels[known].double())
    everywhere = F.binary_cross_entropy(prior, (labels == 1).double())
    assert result.history[0]["loss"] == pytest.approx(float(expected), rel=1e-4)  # float32
    assert abs(float(everywhere) - float(expected)) > 1e-2


def test_errors_name_the_problem(tmp_path):
    train = _samples(1)
    Trainer(_config(tmp_path, iterations=1), train).run()
    with pytest.raises(ValueError, match="holds a 'bch' model but kind='svf'"):
        Trainer(_config(tmp_path, kind="svf"), train, resume=tmp_path / "model.pt").run()
    with pytest.raises(RuntimeError, match="CUDA"):
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        Trainer(_config(tmp_path, device="cuda"), train)
    bad = Sample(train[0].image, train[0].labels[:-1], train[0].spacing, "bad")
    with pytest.raises(ValueError, match=r"'bad'.*differ in shape"):
        Trainer(_config(tmp_path), [bad])
    with pytest.raises(ValueError, match="2D but patch_size is 3D"):
        Trainer(
            _config(tmp_path), [Sample(train[0].image[0], train[0].labels[0], (1.0, 1.0), "flat")]
        )


def test_resuming_a_finished_run_with_more_iterations_restarts_the_cosine(tmp_path):
    """The old schedule ended at lr 0 and kept its length: an extension trained at lr 0 and the
    weights equalled the checkpoint's. Now the cosine restarts at ``lr`` over the new steps."""
    train = _samples(1)
    first = Trainer(_config(tmp_path, iterations=2), train)
    first.run()
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    logged: list[str] = []
    resumed = Trainer(
        _config(tmp_path, iterations=6), train, resume=tmp_path / "model.pt", log=logged.append
    )
    rates = []
    for _ in resumed.events():
        rates.append(resumed.optimizer.param_groups[0]["lr"])
    assert resumed.step == 6 and any("restarts at lr 0.001" in m for m in logged)
    # lr after each of the 4 new steps: a cosine from 1e-3 to 0 over those 4 steps
    expected = [1e-3 * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(1, 5)]
    assert rates == pytest.approx(expected, abs=1e-12)
    changed = [k for k, v in resumed.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("net" in name for name in changed)
    # the extended run's own checkpoint resumes its restarted schedule exactly
    assert load_checkpoint(tmp_path / "model.pt")["training"]["config"]["iterations"] == 6


def test_all_ignore_training_labels_are_refused_naming_the_sample(tmp_path):
    """Such labels trained with loss 0.0000 and wrote a checkpoint without a word."""
    good = _samples(1)[0]
    empty = Sample(good.image, np.full_like(good.labels, 255), good.spacing, "case_unlabelled")
    with pytest.raises(ValueError, match=r"train sample 'case_unlabelled' has no labelled voxel"):
        Trainer(_config(tmp_path), [good, empty])
    with pytest.raises(ValueError, match=r"val sample 'case_unlabelled' has no labelled voxel"):
        Trainer(_config(tmp_path), [good], [empty])
    assert not (tmp_path / "model.pt").exists()


def test_a_checkpoint_path_that_is_a_folder_is_refused_before_training(tmp_path):
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(OutputPathError, match=r"checkpoint .*model\.pt is a folder"):
        Trainer(_config(tmp_path), _samples(1))


def test_mirroring_is_decided_by_the_measured_rule_and_recorded():
    """None mirrors whole-volume patches of a fine-tune or of sparse labels, nothing else; an
    explicit choice is kept; the record says what the run did; a run recorded before the field
    existed did not mirror."""
    from napari_difftt.core.train.trainer import resolve_mirror

    dense, sparse = _samples(1), _samples(1, sparse=True)
    messages = []

    def decided(samples, patch=SHAPE, **fields):
        config = TrainConfig(patch_size=patch, **fields)
        return resolve_mirror(config, samples, messages.append).mirror

    assert TrainConfig().mirror is None
    assert decided(dense, init="model.pt") is True
    assert decided(sparse) is True
    assert decided(dense) is False
    assert decided(sparse, kind="unet") is False
    assert decided(sparse, init="model.pt", mirror=False) is False
    assert decided(dense, mirror=True) is True
    assert not messages
    assert decided(sparse, patch=(16, 16, 16)) is False  # sub-volume patches of (16, 32, 32)
    assert "not mirrored" in messages[-1]
    assert TrainConfig(mirror=True).to_dict()["mirror"] is True
    old = {k: v for k, v in TrainConfig(init="model.pt").to_dict().items() if k != "mirror"}
    assert TrainConfig.from_dict(old).mirror is False
    with pytest.raises(ValueError, match="mirror must be True, False or None"):
        TrainConfig(mirror="yes")


def test_mirrored_training_steps_see_flipped_patches(tmp_path, monkeypatch):
    """A fresh run on dense labels (mirror None) never mirrors; mirror=True passes every patch
    through core.data.mirrored, which flips some of them."""
    from napari_difftt.core.train import trainer as module

    flipped = []
    original = module.mirrored

    def recording(patch, rng):
        out = original(patch, rng)
        flipped.append(not np.array_equal(out.image, patch.image))
        return out

    monkeypatch.setattr(module, "mirrored", recording)
    for mirror, steps in ((None, 0), (True, 6)):
        flipped.clear()
        Trainer(_config(tmp_path, iterations=6, mirror=mirror, checkpoint=None),
                _samples(1)).run()
        assert len(flipped) == steps
    assert any(flipped)


def test_cli_train_options_are_the_config_fields_with_its_defaults():
    import argparse
    from dataclasses import fields

    from napari_difftt.commands.train import add_arguments
    from napari_difftt.core.train import DEFAULTS

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = vars(parser.parse_args(["--out", "x.pt"]))
    names = {f.name for f in fields(TrainConfig)}
    assert names - set(args) == {"betas", "checkpoint"}  # checkpoint is --out
    for name in names & set(args):
        value = tuple(args[name]) if name == "patch_size" else args[name]
        assert value == getattr(DEFAULTS, name), name


@pytest.mark.parametrize(
    ("change", "message"),
    [({"prior": "bogus"}, "prior must be one of"), ({"bch_order": 5}, "bch_order must be one of"),
     ({"ignore_value": 1}, "ignore_value must be an int >= 2"),
     ({"ignore_value": 256}, r"ignore_value must be in 2\.\.255")],
)
def test_config_refuses_unknown_prior_bch_order_and_ignore_value(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


def test_distributed_reads_torchrun_and_is_the_identity_in_one_process():
    from napari_difftt.core.train.distributed import Distributed

    launched = Distributed({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "1"})
    assert (launched.rank, launched.world_size, launched.local_rank) == (2, 4, 1)
    assert not launched.is_main
    assert launched.place(torch.device("cuda")) == torch.device("cuda", 1)  # its own GPU
    alone = Distributed({})
    assert (alone.rank, alone.world_size, alone.local_rank) == (0, 1, 0) and alone.is_main
    assert alone.place(torch.device("cpu")) == torch.device("cpu")
    model = torch.nn.Linear(2, 2)
    alone.join()  # no process group for one process
    assert alone.wrap(model) is model
    assert alone.any(True) and not alone.any(False)
    assert alone.mean(0.25) == 0.25 and alone.gather({"a": 1}) == [{"a": 1}]
    with alone.accumulating(model, last=False):
        pass
    alone.leave()


def test_sparse_labels_get_the_coarser_lattice_unless_one_was_chosen(tmp_path):
    """A fresh run on painted slices trains with control points every 4 voxels (the default 2
    folds there), recorded in its config and said in the log; dense labels keep the default,
    and so does a lattice given explicitly or a warm start."""
    messages = []
    sparse = Trainer(_config(tmp_path), _samples(2, sparse=True), log=messages.append)
    assert sparse.config.velocity_lattice == 4
    assert sparse.config.to_dict()["velocity_lattice"] == 4
    assert any("sparse labels" in m and "every 4 voxels" in m for m in messages)
    assert Trainer(_config(tmp_path), _samples(2)).config.velocity_space().lattice == 2
    chosen = Trainer(_config(tmp_path, velocity_lattice=2), _samples(2, sparse=True))
    assert chosen.config.velocity_lattice == 2
    factor4 = Trainer(_config(tmp_path, velocity_factor=4), _samples(2, sparse=True))
    assert factor4.config.velocity_lattice == 4
