"""Installs as users do them: a missing extra is one message naming the `pip install` command; a plain
`pip install .` (no extras) in a fresh virtualenv runs fit, test and predict from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO, error_of, need_real_data
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


@pytest.mark.parametrize(("module", "subcommand", "extra"), [("onnxruntime", "export", "onnx"),
                                                             ("optuna", "sweep", "sweep")])  # fmt: skip
def test_a_missing_extra_is_one_message_naming_the_install(cli, capsys, monkeypatch, module, subcommand, extra):
    cli("--trainer.max_epochs", "1")
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now fails as if it were not installed
    if subcommand == "sweep":
        from lit_softmax.__main__ import main

        with pytest.raises(SystemExit) as info:
            main(["sweep", "--config", str(REPO / "configs/sweep.yaml")])
        assert info.value.code == 2
        err = capsys.readouterr().err
    else:
        err = error_of(capsys, cli, "--ckpt_path", "last", subcommand=subcommand)
    assert f"This needs the `{extra}` extra: `pip install 'lit_softmax[{extra}]'`" in err
    assert "Traceback" not in err


def base_dependencies_view(view: Path) -> Path:
    """A folder of links to this environment's files of lit_softmax's base requirements and theirs, recursively
    (extras only where a requirement asks for one): what `pip install lit_softmax` without extras installs."""
    view.mkdir()
    todo, seen = [Requirement(r) for r in metadata.requires("lit_softmax") or []], set()
    todo = [r for r in todo if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, *sorted(requirement.extras)) in seen:
            continue
        seen.add((name, *sorted(requirement.extras)))
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            sub = Requirement(line)
            extras = [""] + sorted(requirement.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (view / top).exists():
                (view / top).symlink_to(source)
    return view


@pytest.mark.slow
def test_a_plain_install_runs_from_any_directory(tmp_path: Path) -> None:
    need_real_data()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # The dependencies a plain install pulls in, and only those, come from this virtualenv through a .pth file:
    # pip finds them installed, so the test costs one small wheel instead of a second 5.6 GB torch on the disk.
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(site) / "base-dependencies.pth").write_text(f"{base_dependencies_view(tmp_path / 'deps')}\n")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", str(REPO)], capture_output=True, text=True,
                             timeout=1200)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    assert not (Path(site) / "torch").exists(), "pip installed a second torch: the .pth view missed a requirement"
    anywhere = tmp_path / "somewhere" / "else"
    anywhere.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    configs = ["--config", str(REPO / "configs/fashion_mnist.yaml"), "--config", str(REPO / "configs/debug.yaml")]

    def lit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "lit_softmax", *args, "--trainer.enable_progress_bar", "false"],
                              cwd=anywhere, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip

    for args in (["fit", *configs], ["test", *configs, "--ckpt_path", "best"],
                 ["predict", *configs, "--ckpt_path", "best"]):  # fmt: skip
        result = lit(*args)
        assert result.returncode == 0, f"{args[0]}: {result.stderr[-3000:]}"
    imported = subprocess.run([python, "-c", "import lit_softmax; print(lit_softmax.__file__)"], cwd=anywhere,
                              env=env, capture_output=True, text=True)  # fmt: skip
    assert str(venv) in imported.stdout  # the installed package, not the checkout
    assert sorted(p.name for p in anywhere.iterdir()) == ["logs"]  # no data copy in the working directory
    assert list((tmp_path / "cache" / "lit_softmax" / "fashion-mnist").glob("*/train-images-idx3-ubyte"))
    exported = lit("export", *configs, "--ckpt_path", "best")
    assert exported.returncode == 2
    assert "pip install 'lit_softmax[onnx]'" in exported.stderr
