"""Training under faults: no space, failed saves, stale temporaries, degenerate data, broken
training states to resume."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_difftt.core import atomic
from napari_difftt.core.data import Sample, make_phantom, normalise_intensity
from napari_difftt.core.io import load_checkpoint, save_checkpoint
from napari_difftt.core.train import TrainConfig, Trainer
from napari_difftt.core.train import trainer as trainer_module
from napari_difftt.core.train.checkpoint import resumable
from napari_difftt.errors import CheckpointError, DiskFull, NoForegroundWarning, VolumeError

SHAPE = (32, 32)


def _samples(count: int = 1) -> list[Sample]:
    samples = []
    for index in range(count):
        phantom = make_phantom(SHAPE, seed=index)
        samples.append(Sample(normalise_intensity(phantom.image), phantom.labels.copy(),
                              phantom.spacing, f"case{index}"))
    return samples


def _config(tmp_path, **changes) -> TrainConfig:
    settings = dict(kind="bch", iterations=3, patch_size=(16, 16), width=2, pieces=2,
                    device="cpu", seed=1, checkpoint=str(tmp_path / "model.pt"))
    return TrainConfig(**{**settings, **changes})


def test_training_refuses_a_folder_without_room_for_the_checkpoint(tmp_path, monkeypatch):
    """A run trained to the end, then could not write its checkpoint: now it is refused before
    the first step, with the real size (Adam's moments included) and the space free."""
    done = Trainer(_config(tmp_path, iterations=1), _samples()).run()
    actual = os.path.getsize(done.checkpoint)
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 1000)
    trainer = Trainer(_config(tmp_path, checkpoint=str(tmp_path / "other.pt")), _samples())
    with pytest.raises(DiskFull) as caught:
        trainer.run()
    assert trainer.step == 0 and not (tmp_path / "other.pt").exists()
    assert actual <= caught.value.needed <= 1.35 * actual  # never below the real size
    assert str(caught.value) == (
        f"no space left on {atomic.mount_point(tmp_path)} writing {tmp_path / 'other.pt'} "
        f"(needed {caught.value.needed / 1e6:.1f} MB, free 0.0 MB)")


def _failing_saves(monkeypatch, fail_at: set[int], trainer_ref: list):
    """Make save_checkpoint of the run's own checkpoint fail (disk full) at these steps."""
    save = trainer_module.save_checkpoint

    def flaky(path, payload):
        if trainer_ref[0].step in fail_at and path.name == "model.pt":
            raise DiskFull("/", str(path), 10**6, 0)
        return save(path, payload)

    monkeypatch.setattr(trainer_module, "save_checkpoint", flaky)


def test_a_failed_periodic_save_keeps_training_and_retries(tmp_path, monkeypatch):
    logged: list[str] = []
    trainer = Trainer(_config(tmp_path, checkpoint_every=1), _samples(), log=logged.append)
    _failing_saves(monkeypatch, {1, 2}, [trainer])
    result = trainer.run()
    assert result.step == 3 and result.unsaved is None
    assert result.checkpoint == tmp_path / "model.pt"
    assert load_checkpoint(result.checkpoint)["training"]["step"] == 3
    assert sum("could not write the checkpoint" in m for m in logged) == 2


def test_a_failed_last_save_goes_to_the_temp_folder(tmp_path, monkeypatch):
    """Never silently lost: the last state lands in tempfile.gettempdir(), and the result and
    the log say where."""
    rescue_folder = tmp_path / "tmp"
    rescue_folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(rescue_folder))
    logged: list[str] = []
    trainer = Trainer(_config(tmp_path), _samples(), log=logged.append)
    _failing_saves(monkeypatch, {3}, [trainer])
    result = trainer.run()
    assert result.checkpoint.parent == rescue_folder and result.unsaved.startswith("no space")
    assert resumable(result.checkpoint, load_checkpoint(result.checkpoint))["step"] == 3
    assert any(f"saved at {result.checkpoint} instead" in m for m in logged)
    assert not (tmp_path / "model.pt").exists()


def test_a_stale_temporary_of_a_killed_save_is_removed_on_the_next_save(tmp_path):
    """kill -9 mid-save left a hidden ~3 MB temporary that nothing ever removed."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".model.pt.{int(dead.stdout)}-0123abcd.tmp.pt"
    stale.write_bytes(b"PK partial")
    alive = tmp_path / f".model.pt.{os.getppid()}-0123abcd.tmp.pt"  # a live process's write
    alive.write_bytes(b"PK writing")
    logged: list[str] = []
    Trainer(_config(tmp_path, iterations=1), _samples(), log=logged.append).run()
    assert not stale.exists() and alive.exists()
    assert any(f"removed {stale}" in m for m in logged)


def test_a_constant_image_is_refused_naming_the_sample(tmp_path):
    samples = _samples(2)
    samples[1] = Sample(np.zeros(SHAPE, np.float32), samples[1].labels, (1.0, 1.0), "blank")
    with pytest.raises(VolumeError, match="train sample 'blank' has no contrast"):
        Trainer(_config(tmp_path), samples)


def test_labels_without_foreground_are_refused_or_named(tmp_path):
    """All-0 labels trained to the end without a word and wrote a checkpoint."""
    samples = _samples(2)
    empty = [Sample(s.image, np.zeros_like(s.labels), s.spacing, s.name) for s in samples]
    with pytest.raises(ValueError, match="no train sample has a foreground voxel"):
        Trainer(_config(tmp_path), empty)
    with pytest.warns(NoForegroundWarning, match="train sample 'case1' has no foreground"):
        Trainer(_config(tmp_path), [samples[0], empty[1]])


def _resumable_checkpoint(tmp_path) -> dict:
    path = Trainer(_config(tmp_path, iterations=1), _samples()).run().checkpoint
    return load_checkpoint(path)


@pytest.mark.parametrize(("change", "field"), [
    (lambda t: t.pop("step"), "'training.step' is missing"),
    (lambda t: t.pop("scheduler"), "'training.scheduler' is missing"),
    (lambda t: t["config"].update(lr="fast"), "'training.config.lr' must be float, got str"),
    (lambda t: t.update(step=1.5), "'training.step' must be int, got float"),
    (lambda t: t["optimizer"].update(state=[1]), "'training.optimizer' cannot be restored"),
    ("a string", "'training' must be a dict, got str"),
])
def test_a_broken_training_state_is_named_with_its_file(tmp_path, change, field):
    """KeyError tracebacks (no step, no scheduler), lr='fast' with neither file nor key named,
    AttributeError for a string."""
    checkpoint = _resumable_checkpoint(tmp_path)
    if callable(change):
        change(checkpoint["training"])
    else:
        checkpoint["training"] = change
    broken = save_checkpoint(tmp_path / "broken.pt", checkpoint)  # a valid checksum
    trainer = Trainer(_config(tmp_path, iterations=2, checkpoint=None), _samples(),
                      resume=broken)
    with pytest.raises(CheckpointError, match=rf"broken\.pt: field {field}"):
        trainer.run()


def test_resume_still_continues_exactly(tmp_path):
    """The checks reject nothing a real run wrote."""
    first = Trainer(_config(tmp_path, iterations=1), _samples()).run()
    resumed = Trainer(_config(tmp_path, iterations=2), _samples(), resume=first.checkpoint)
    assert resumed.run().step == 2
    assert torch.load(first.checkpoint, weights_only=True)["training"]["step"] == 2


def test_a_stop_right_after_a_failed_save_rescues_that_step(tmp_path, monkeypatch):
    """Ctrl-C just after a periodic save failed: the step's state is kept, not reported as
    saved at an --out that was never written."""
    rescue_folder = tmp_path / "tmp"
    rescue_folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(rescue_folder))
    trainer = Trainer(_config(tmp_path, iterations=10, checkpoint_every=1), _samples())
    _failing_saves(monkeypatch, {2}, [trainer])
    result = trainer.run(should_stop=lambda: trainer.step >= 2)
    assert result.stopped and result.step == 2
    assert result.checkpoint.parent == rescue_folder
    assert load_checkpoint(result.checkpoint)["training"]["step"] == 2
    assert load_checkpoint(tmp_path / "model.pt")["training"]["step"] == 1
