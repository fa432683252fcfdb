"""The import rules of docs/ARCHITECTURE.md, checked by parsing every module's imports (``ast``).

Imports under ``if TYPE_CHECKING:`` are type hints, not dependencies, and are not counted.
The widgets reach the core's computations through the pipeline's own functions (it serves no
name it does not define) and import from the core only the data types of :data:`CORE_TYPES`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_difftt"
GUI = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "napari", "magicgui", "vispy"}
# what the GUI-free layers outside core may use of the package
WIDGET_MAY_IMPORT = ("napari_difftt.pipeline", "napari_difftt.fine_tune",
                     "napari_difftt.errors",
                     "napari_difftt.layer_metadata", "napari_difftt.widgets",
                     "napari_difftt._resources")  # the bundled files (model card, checkpoints)
# the core's data types and constants the widgets use as they are (docs/ARCHITECTURE.md)
CORE_TYPES = {
    "napari_difftt.core.device": {"list_devices"},  # the devices offered in the combo boxes
    "napari_difftt.core.flow.frames": {"FlowFrames"},  # the lazy array of the Flow explorer
    "napari_difftt.core.interrupt": {"Interruptible"},  # cancel inside a worker's torch work
    "napari_difftt.core.prior": {"GeneralisedGaussianPrior"},  # the prior the Shape prior tunes
    "napari_difftt.core.train.config": {"DEFAULTS", "KINDS", "PARAMETERISATIONS", "TrainConfig"},
}
CORE_MAY_IMPORT = ("napari_difftt.core", "napari_difftt.errors", "napari_difftt._resources")
# the computation the pipeline wraps: the prediction commands reach it through the pipeline
PIPELINE_WRAPS = ("napari_difftt.core.inference", "napari_difftt.core.metrics",
                  "napari_difftt.core.flow", "napari_difftt.core.mesh",
                  "napari_difftt.core.prior", "napari_difftt.core.interrupt")
PREDICTION_COMMANDS = ("predict.py", "demo.py")


def imports(path: Path, root: Path = PACKAGE.parent) -> list[tuple[int, str]]:
    """(line, absolute module name) of every runtime import in ``path`` (a module under
    ``root``, the folder holding the package)."""
    return [(line, module) for line, module, _ in imported_names(path, root)]


def imported_names(path: Path, root: Path = PACKAGE.parent) -> list[tuple[int, str, list]]:
    """(line, absolute module name, names imported from it; [] for ``import module``) of every
    runtime import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    hints = {id(node) for block in ast.walk(tree) if _is_type_checking(block)
             for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module, [alias.name for alias in node.names]))
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


def test_widgets_reach_the_core_through_the_pipeline_and_import_only_its_data_types():
    served = set(pipeline_definitions()) & set(_declared(PACKAGE / "pipeline.py"))
    wrong = []
    for path in _modules("widgets"):
        for line, module, names in imported_names(path):
            where = f"{_name(path)}:{line}"
            if module == "napari_difftt.pipeline":
                wrong += [f"{where} {name} (not a use case the pipeline defines)"
                          for name in names if name not in served]
            elif module in CORE_TYPES:
                wrong += [f"{where} {module}.{name}" for name in names
                          if name not in CORE_TYPES[module]]
            elif module.split(".")[0] == "napari_difftt" and not _within(module, WIDGET_MAY_IMPORT):
                wrong.append(f"{where} {module}")
    assert wrong == []


def pipeline_definitions() -> dict[str, str]:
    """Module-level names that pipeline.py itself defines (def, class, assignment) → kind."""
    tree = ast.parse((PACKAGE / "pipeline.py").read_text())
    defined = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined[node.name] = type(node).__name__
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update({t.id: "Assign" for t in targets if isinstance(t, ast.Name)})
    return defined


def _declared(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    [value] = [node.value for node in tree.body if isinstance(node, ast.Assign)
               and any(getattr(t, "id", None) == "__all__" for t in node.targets)]
    return [element.value for element in value.elts]


def test_the_pipeline_serves_only_what_it_defines():
    """No ``__getattr__`` forwarding of core names: every public name is a typed function, a
    class or a constant of the pipeline itself."""
    defined = pipeline_definitions()
    assert "__getattr__" not in defined
    assert sorted(set(_declared(PACKAGE / "pipeline.py")) - set(defined)) == []
    functions = [name for name in _declared(PACKAGE / "pipeline.py")
                 if defined[name] == "FunctionDef"]
    tree = ast.parse((PACKAGE / "pipeline.py").read_text())
    untyped = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
               and node.name in functions and node.returns is None]
    assert len(functions) > 20 and untyped == []


def test_commands_import_no_widget_and_predict_through_the_pipeline():
    def allowed(path, module):
        if _within(module, ["napari_difftt.widgets"]):
            return False
        return path.name not in PREDICTION_COMMANDS or not _within(module, PIPELINE_WRAPS)

    assert _violations(_modules("commands"), allowed) == []

