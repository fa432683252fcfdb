"""The import rules of docs/ARCHITECTURE.md, checked by parsing every module's imports (``ast``).

Imports under ``if TYPE_CHECKING:`` are type hints, not dependencies, and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_difftt"
GUI = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "napari", "magicgui", "vispy"}
# what the GUI-free layers outside core may use of the package
WIDGET_MAY_IMPORT = ("napari_difftt.pipeline", "napari_difftt.fine_tune", "napari_difftt.errors",
                     "napari_difftt.layer_metadata", "napari_difftt.widgets")
CORE_MAY_IMPORT = ("napari_difftt.core", "napari_difftt.errors", "napari_difftt._resources")
# the computation the pipeline wraps: the prediction commands reach it through the pipeline
PIPELINE_WRAPS = ("napari_difftt.core.inference", "napari_difftt.core.metrics",
                  "napari_difftt.core.flow", "napari_difftt.core.mesh",
                  "napari_difftt.core.prior", "napari_difftt.core.interrupt")
PREDICTION_COMMANDS = ("predict.py", "evaluate.py", "demo.py")
# modules not yet moved to the rules, with the issue that moves them (remove when done)
def imports(path: Path, root: Path = PACKAGE.parent) -> list[tuple[int, str]]:
    """(line, absolute module name) of every runtime import in ``path`` (a module under
    ``root``, the folder holding the package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    hints = {id(node) for block in ast.walk(tree) if _is_type_checking(block)
             for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
    return found


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _modules(folder: str = "") -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _violations(paths, allowed) -> list[str]:
    return [f"{_name(path)}:{line} imports {module}" for path in paths
            for line, module in imports(path) if not allowed(path, module)]


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_parser_sees_relative_lazy_and_hinted_imports(tmp_path):
    module = tmp_path / "napari_difftt" / "widgets" / "example.py"
    module.parent.mkdir(parents=True)
    module.write_text("from typing import TYPE_CHECKING\nimport qtpy\nfrom ..core.io import x\n"
                      "def f():\n    from . import _state\n    from ..pipeline import segment\n"
                      "if TYPE_CHECKING:\n    from ..core.inference import Prediction\n")
    assert [m for _, m in sorted(imports(module, tmp_path))] == [
        "typing", "qtpy", "napari_difftt.core.io", "napari_difftt.widgets",
        "napari_difftt.pipeline"]


def test_core_imports_no_gui_and_nothing_above_it():
    def allowed(path, module):
        top = module.split(".")[0]
        if top in GUI:
            return False
        # the package itself (its __init__ holds the version) is the only other module
        return top != "napari_difftt" or module == top or _within(module, CORE_MAY_IMPORT)

    assert _violations(_modules("core"), allowed) == []


@pytest.mark.parametrize("name", ["pipeline.py", "fine_tune.py", "layer_metadata.py", "errors.py",
                                  "_reader.py", "_writer.py", "_sample_data.py"])
def test_the_qt_free_modules_import_no_gui_and_no_widget(name):
    def allowed(path, module):
        return module.split(".")[0] not in GUI and not _within(module, ["napari_difftt.widgets"])

    assert _violations([PACKAGE / name], allowed) == []


def test_widgets_reach_the_core_through_the_pipeline():
    def allowed(path, module):
        return module.split(".")[0] != "napari_difftt" or _within(module, WIDGET_MAY_IMPORT)

    assert _violations(_modules("widgets"), allowed) == []


def test_commands_import_no_widget_and_predict_through_the_pipeline():
    def allowed(path, module):
        if _within(module, ["napari_difftt.widgets"]):
            return False
        return path.name not in PREDICTION_COMMANDS or not _within(module, PIPELINE_WRAPS)

    assert _violations(_modules("commands"), allowed) == []

