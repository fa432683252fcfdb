"""Where the bundled files are (pretrained checkpoints, the model card): the one lookup.

They live in ``resources/`` at the repository root, shipped as the package
``napari_difftt.resources`` (``src/napari_difftt/resources`` is a link to ``../../resources``, so
``packages.find`` and a plain ``PYTHONPATH=src`` checkout both see it). A checkout where that
link is a plain file (Git without symlink support) falls back to ``<repo>/resources``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["REPOSITORY_RESOURCES", "resource_path"]

REPOSITORY_RESOURCES = Path(__file__).resolve().parents[2] / "resources"


def resource_path(name: str) -> Path:
    """Path of the bundled file ``name`` (not checked: callers say what is missing)."""
    try:
        folder = Path(str(resources.files("napari_difftt.resources")))
    except ModuleNotFoundError:
        folder = REPOSITORY_RESOURCES
    return folder / name
