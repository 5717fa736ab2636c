"""lit_softmax/ uses only the public API of the libraries it builds on: no imported or accessed name starting with
`_` from them, no internal module, no reading of another object's private state. Lightning's versioning policy
says underscore names "may be changed or removed at any time"; this is the code people learn from."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "lit_softmax"
# Modules the code may import from, per library: the documented public namespaces.
PUBLIC_MODULES = {
    "lightning": {
        "lightning", "lightning.pytorch", "lightning.pytorch.callbacks", "lightning.pytorch.cli",
        "lightning.pytorch.loggers", "lightning.pytorch.plugins.io", "lightning.pytorch.plugins.environments",
        "lightning.pytorch.utilities",
        "lightning.pytorch.utilities.exceptions",
    },
    "torchmetrics": {"torchmetrics", "torchmetrics.classification"},
    "torch": {"torch", "torch.nn", "torch.nn.functional", "torch.utils.data"},
    "torchvision": {"torchvision.datasets"},
}  # fmt: skip
# Public attributes that lead into a library's private machinery (Lightning's loop and progress objects).
INTERNALS = {"fit_loop", "epoch_loop", "batch_progress", "_logger_connector", "_results"}


def own_private_names(trees: dict[Path, ast.Module]) -> set[str]:
    """Every `_name` this package defines itself: functions, classes, attributes it assigns, parameters."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_")}


def violations(trees: dict[Path, ast.Module]) -> list[str]:
    own = own_private_names(trees)
    found = []
    for path, tree in trees.items():
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                library = node.module.split(".")[0]
                if library in PUBLIC_MODULES and node.module not in PUBLIC_MODULES[library]:
                    found.append(f"{where}:{node.lineno} imports from internal module {node.module}")
                for alias in node.names:
                    if library != "lit_softmax" and alias.name.startswith("_"):
                        found.append(f"{where}:{node.lineno} imports private {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    library = alias.name.split(".")[0]
                    if library in PUBLIC_MODULES and alias.name not in PUBLIC_MODULES[library]:
                        found.append(f"{where}:{node.lineno} imports internal module {alias.name}")
            elif isinstance(node, ast.Attribute):
                attr = node.attr
                dunder = attr.startswith("__") and attr.endswith("__")
                if attr in INTERNALS or (attr.startswith("_") and not dunder and attr not in own):
                    found.append(f"{where}:{node.lineno} reads {attr}, another package's private state")
    return found


def test_no_private_api_of_other_packages() -> None:
    trees = {path: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}
    assert violations(trees) == []


def test_the_check_catches_what_the_old_code_did() -> None:
    """The checker is not vacuous: each private use the issue listed is caught."""
    old = {
        REPO / "lit_softmax" / "old.py": ast.parse(
            "from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler\n"
            "from lightning.fabric.utilities.logger import _convert_params\n"
            "from torchmetrics.functional.classification.calibration_error import _binning_bucketize\n"
            "a = trainer._logger_connector.should_update_logs\n"
            "b = trainer.fit_loop.epoch_loop.batch_progress.current.completed\n"
            "c = writer._get_file_writer()\n"
        )
    }
    found = violations(old)
    assert sorted({int(v.split(":")[1].split()[0]) for v in found}) == [1, 2, 3, 4, 5, 6]  # every line
    assert sum("fit_loop" in v or "epoch_loop" in v or "batch_progress" in v for v in found) == 3
