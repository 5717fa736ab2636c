"""The lesson stays a lesson: model.py, data.py and cli.py hold textbook Lightning, import only what the README's
map says, and the harness sits beside them with no import cycle (read from the source, like test_public_api.py)."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "lit_softmax"
MODULES = {p.stem: p for p in PACKAGE.glob("*.py")}
# What each lesson file may import from the package (README "Read the code in this order").
ALLOWED = {
    "model": {"errors"},
    "data": {"errors", "fashion_mnist", "images", "samplers"},
}
LIGHTNING_CLI_HOOKS = {"add_arguments_to_parser", "subcommands"}  # plus before_*/after_*
LESSON_LIMIT = 450  # code lines of model.py + data.py + cli.py


def package_imports(path: Path) -> set[str]:
    """The lit_softmax modules `path` imports, at any depth of the file (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lit_softmax":
            parts = node.module.split(".")
            found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names if a.name in MODULES])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lit_softmax."))
    return found & set(MODULES) - {path.stem}


def code_lines(path: Path) -> int:
    """Lines holding code: no blank lines, comments or docstrings."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(n for n in range(token.start[0], token.end[0] + 1) if n not in docstrings)
    return len(lines)


def test_lesson_files_import_only_what_the_map_says() -> None:
    for module, allowed in ALLOWED.items():
        extra = package_imports(MODULES[module]) - allowed
        assert not extra, f"lit_softmax/{module}.py imports {sorted(extra)}; the lesson allows only {sorted(allowed)}"


def test_no_import_cycle_in_the_package() -> None:
    graph = {m: package_imports(p) for m, p in MODULES.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph[start])

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_cli_uses_lightning_clis_documented_hooks_only() -> None:
    tree = ast.parse(MODULES["cli"].read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and any(
        getattr(b, "id", getattr(b, "attr", "")) == "LightningCLI" for b in n.bases)]  # fmt: skip
    assert len(classes) == 1, "one LightningCLI subclass, in cli.py"
    methods = [f.name for f in classes[0].body if isinstance(f, ast.FunctionDef)]
    odd = [m for m in methods if m not in LIGHTNING_CLI_HOOKS and not m.startswith(("before_", "after_"))]
    assert not odd, f"SoftmaxCLI overrides {odd}: use add_arguments_to_parser, subcommands, before_*/after_* only"


def test_the_lesson_is_small() -> None:
    sizes = {m: code_lines(MODULES[m]) for m in ("model", "data", "cli")}
    assert sum(sizes.values()) <= LESSON_LIMIT, f"the lesson grew to {sizes}: move harness code beside it"


def test_only_the_run_module_knows_the_run_directory_layout() -> None:
    """The names of a run's files and folders appear in code only in run.py (messages and docstrings aside)."""
    layout = ("version_", "config.yaml", "config.resume", "run.yaml")
    for name, path in MODULES.items():
        if name == "run":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "Path", "joinpath", "glob", "startswith"):  # fmt: skip
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        assert not any(k in arg.value for k in layout), f"{name}.py: {arg.value!r}"
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                for side in (node.left, node.right):
                    if isinstance(side, ast.Constant) and isinstance(side.value, str):
                        assert not any(k in side.value for k in layout), f"{name}.py builds a run path: {side.value!r}"
