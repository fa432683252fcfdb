"""Packaging: the bundled checkpoints are found from a plain source checkout, not only installed.

Each check copies ``src/`` and ``resources/`` to a temporary checkout and runs Python there with
``-S`` (no site-packages ``.pth`` files, so the editable install of this tree is invisible) and
``PYTHONPATH`` = that ``src`` plus the third-party site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import napari_difftt, napari_difftt.core.inference as inference\n"
    "print(napari_difftt.__file__)\n"
    "print(inference.default_checkpoint(3))\n"
    "print(inference.default_checkpoint(2))\n"
)


def _checkout(tmp_path: Path, *, link: bool) -> Path:
    """A copy of the source tree; ``link=False`` writes the resources link as Git does without
    symlink support (a plain file holding the target)."""
    root = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", root / "src", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "resources", root / "resources", ignore=ignore)
    linked = root / "src" / "napari_difftt" / "resources"
    assert linked.is_symlink() and linked.is_dir()
    if not link:
        linked.unlink()
        linked.write_text("../../resources")
    return root


def _probe(root: Path) -> list[Path]:
    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), *sorted(paths)])}
    done = subprocess.run(
        [sys.executable, "-S", "-c", PROBE], cwd=root, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [Path(line) for line in done.stdout.split()]


@pytest.mark.parametrize("link", [True, False], ids=["symlink", "no-symlink"])
def test_bundled_checkpoints_found_from_a_source_checkout(tmp_path, link):
    root = _checkout(tmp_path, link=link)
    package, model_3d, model_2d = _probe(root)
    assert package == root / "src" / "napari_difftt" / "__init__.py"  # not the installed tree
    for path, name in ((model_3d, "difftt_phantom_bch.pt"), (model_2d, "difftt_phantom2d_bch.pt")):
        assert path.is_file() and path.name == name
        assert path.resolve() == (root / "resources" / name).resolve()
