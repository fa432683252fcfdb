"""Nothing is lost or left half-written when the space runs out.

A full disk is simulated with a file-size limit (RLIMIT_FSIZE, set in the child process with
SIGXFSZ ignored, as ``ulimit -f`` would): no root, no real full disk.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from napari_difftt.core.data import write_phantom_dataset
from napari_difftt.core.io import load_checkpoint, write_nifti
from napari_difftt.core.train.checkpoint import resumable

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file-size limits")

MESSAGE = re.compile(r"no space left on \S+ writing (\S+) \(needed [\d.]+ MB, free [\d.]+ MB\)")
TINY = ["--patch-size", "16", "16", "16", "--width", "4", "--pieces", "2", "--device", "cpu",
        "--quiet", "--threads", "1"]
# the CLI, with the file-size limit set once training reaches its last step (the disk fills up
# while the run trains, after the check before training passed)
FILLS_AT_THE_END = """
import resource, sys
from napari_difftt.cli import main
from napari_difftt.core.train.trainer import Trainer
step = Trainer._train_step
def last_step_fills_the_disk(self):
    if self.step == self.config.iterations - 1:
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
    return step(self)
Trainer._train_step = last_step_fills_the_disk
sys.exit(main(sys.argv[2:]))
"""


def _limited(limit: int | None):
    """preexec_fn: ignore SIGXFSZ (writes then fail with EFBIG) and cap file sizes at ``limit``
    bytes (soft limit; the hard one stays, as after ``ulimit -S -f``)."""

    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return setup


def _run(argv: list[str], tmp_path, limit: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=_limited(limit))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(root, n_train=1, n_test=1, shape=(16, 16, 16), seed=0)


def test_a_disk_full_at_the_end_of_training_leaves_a_loadable_checkpoint(dataset, tmp_path):
    """`train --out` on a full disk trained to the end, then lost the whole run to torch's
    `unexpected pos` error: now the last state is saved in the temp folder, and said where."""
    out = tmp_path / "runs" / "model.pt"
    argv = [sys.executable, "-c", FILLS_AT_THE_END, "4096", "train", "--data", str(dataset),
            "--iterations", "2", "--out", str(out), *TINY]
    done = _run(argv, tmp_path)
    assert done.returncode == 1, done.stderr  # finished, but not where asked
    assert "Traceback" not in done.stderr
    rescued = re.search(r"is saved at (\S+\.pt) instead", done.stderr)
    assert rescued is not None, done.stderr
    assert f"could not write --out {out}" in done.stderr
    assert MESSAGE.search(done.stderr).group(1) == str(out)
    path = tmp_path / "tmp" / os.path.basename(rescued.group(1))
    checkpoint = load_checkpoint(path)
    assert resumable(path, checkpoint)["step"] == 2
    assert not out.exists() and os.listdir(out.parent) == []  # nothing partial left


def test_train_refuses_a_folder_that_cannot_hold_the_checkpoint(dataset, tmp_path):
    out = tmp_path / "model.pt"
    argv = [sys.executable, "-m", "napari_difftt.cli", "train", "--data", str(dataset),
            "--iterations", "1000000", "--out", str(out), *TINY]
    done = _run(argv, tmp_path, limit=20_000)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert MESSAGE.search(line).group(1) == str(out), line
    assert "free 0.0 MB" in line and "Traceback" not in done.stderr
    assert os.listdir(tmp_path) == ["tmp"]


WRITERS = """
import sys, torch, numpy as np
from napari_difftt.core import atomic, io
from napari_difftt.errors import DiskFull
folder = sys.argv[1]
writers = {
    "nifti": lambda: io.write_nifti(f"{folder}/a.nii.gz", np.random.rand(32, 32, 32)),
    "checkpoint": lambda: io.save_checkpoint(f"{folder}/b.pt", {"w": torch.rand(40000)}),
    "torch.save": lambda: atomic.atomic_write(
        f"{folder}/c.pt", lambda tmp: torch.save({"w": torch.rand(40000)}, tmp), overwrite=True),
    "json": lambda: atomic.write_json(f"{folder}/d.json", {"x": list(range(9000))},
                                      overwrite=True),
}
for name, write in writers.items():
    try:
        write()
    except DiskFull as error:
        print(name, "|", error)
    else:
        print(name, "| written")
"""


def test_every_writer_raises_disk_full_and_leaves_nothing(tmp_path):
    """NIfTI, checkpoints, torch.save (whose short write is a RuntimeError) and JSON."""
    folder = tmp_path / "out"
    folder.mkdir()
    done = _run([sys.executable, "-c", WRITERS, str(folder)], tmp_path, limit=10_000)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" | ") for line in done.stdout.strip().splitlines())
    assert set(lines) == {"nifti", "checkpoint", "torch.save", "json"}
    for name, text in lines.items():
        assert MESSAGE.fullmatch(text), (name, text)
    assert "needed 0.2 MB" in lines["checkpoint"]  # the exact size, known before writing
    assert os.listdir(folder) == []


def test_evaluate_json_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path):
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    write_nifti(labels / "case.nii.gz", mask, labels=True)
    write_nifti(preds / "case_seg.nii.gz", mask, labels=True)
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "napari_difftt.cli", "evaluate", "--pred", str(preds),
            "--labels", str(labels), "--json", str(report), "--quiet"]
    done = _run(argv, tmp_path, limit=200)
    assert done.returncode == 2, done.stderr
    assert MESSAGE.search(done.stderr).group(1) == str(report)
    assert "Traceback" not in done.stderr
    assert not report.exists() and sorted(os.listdir(tmp_path)) == ["labels", "preds", "tmp"]
    done = _run(argv, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["cases"][0]["dice"] == 1.0
