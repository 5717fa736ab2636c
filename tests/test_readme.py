"""The quick-start block (docs/usage.md, linked from the README), run as written, in its order, on the real data:
each comment holds."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TEST_ENV, need_real_data

RUNS = Path("logs/fashion_mnist")


def quick_start() -> list[str]:
    readme = (REPO / "docs/usage.md").read_text()
    block = readme.split("<!-- quick-start -->")[1].split("<!-- /quick-start -->")[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("python -m lit_softmax")]


def epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


@pytest.mark.slow
def test_quick_start_runs_in_order_and_does_what_each_comment_says(tmp_path: Path, monkeypatch) -> None:
    need_real_data()
    for config in ("fashion_mnist.yaml", "debug.yaml"):  # the commands name configs/ relative to the project
        (tmp_path / "configs").mkdir(exist_ok=True)
        (tmp_path / "configs" / config).write_text((REPO / "configs" / config).read_text())
    outputs = []
    for line in quick_start():
        args = shlex.split(line)
        result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env={**TEST_ENV, "COLUMNS": "200"},
                                capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout + result.stderr)
    monkeypatch.chdir(tmp_path)  # restored before tmp_path is removed (a bare os.chdir left the next tests nowhere)
    fit, experiment, test_default, test_experiment, resume, test_path, export, test_saved, debug, printed, model_help, \
        data_help = outputs  # fmt: skip
    v0, v1 = RUNS / "version_0", RUNS / "version_1"
    assert epoch_of(v0 / "checkpoints/last.ckpt") == 40 - 1  # zero-based: the 40th epoch
    assert "test/acc" in fit
    assert yaml.safe_load((v1 / "config.yaml").read_text())["model"]["init_args"]["lr"] == 0.05  # the experiment
    assert "--ckpt_path best: logs/fashion_mnist/version_0/checkpoints/epoch" in test_default  # the config's lr
    assert "--ckpt_path best: logs/fashion_mnist/version_1/checkpoints/epoch" in test_experiment  # the typed lr
    assert "--ckpt_path last: logs/fashion_mnist/version_1/checkpoints/last.ckpt" in resume
    assert epoch_of(v1 / "checkpoints/last.ckpt") == 6 - 1  # resumed in its own directory, trained on to 6 epochs
    resumed = yaml.safe_load((v1 / "config.resume1.yaml").read_text())
    assert (resumed["model"]["init_args"]["lr"], resumed["trainer"]["max_epochs"]) == (0.05, 6)
    assert not [d for d in RUNS.iterdir() if d.name not in ("version_0", "version_1") and (d / "checkpoints").exists()]
    assert "test/acc" in test_path
    assert (v0 / "checkpoints/model.onnx").is_file()
    assert "same class for every image" in export
    assert "--ckpt_path best: logs/fashion_mnist/version_1/" in test_saved
    assert (Path("logs/debug/version_0/checkpoints/last.ckpt")).is_file()
    assert yaml.safe_load(printed)["model"]["init_args"]["lr"] == 0.4
    assert "--model.lr LR" in model_help
    assert "--data.batch_size BATCH_SIZE" in data_help
