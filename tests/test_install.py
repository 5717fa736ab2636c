"""Installs as users do them: a missing extra is one message naming the `pip install` command; a plain
`pip install .` (no extras) in a fresh virtualenv runs fit, test and predict from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, error_of, need_real_data


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


@pytest.mark.slow
def test_a_plain_install_runs_from_any_directory(tmp_path: Path) -> None:
    need_real_data()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", str(REPO)], capture_output=True, text=True,
                             timeout=1200)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
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
