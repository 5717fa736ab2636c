"""End to end on the real Fashion-MNIST: the README's main job reaches its promised accuracy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TEST_ENV, real_data, run_cli, scalars

from lit_softmax import FashionMNISTDataModule, SoftmaxRegression


@pytest.mark.slow
def test_default_config_reaches_target_accuracy(default_run: Path) -> None:
    metrics = scalars(default_run)
    test_acc = metrics["test/acc"][-1]
    print(f"default config: test/acc={test_acc:.4f} best val/acc={max(metrics['val/acc']):.4f}")
    assert test_acc >= 0.845
    assert metrics["val/acc_best"][-1] == pytest.approx(max(metrics["val/acc"]))
    epochs = yaml.safe_load((REPO / "configs/fashion_mnist.yaml").read_text())["trainer"]["max_epochs"]
    assert len(metrics["val/acc"]) == epochs  # validated every epoch, sanity check not logged
    steps = epochs * -(-55000 // 2048)
    every = yaml.safe_load((REPO / "configs/fashion_mnist.yaml").read_text())["trainer"]["log_every_n_steps"]
    assert len(metrics["train/loss"]) == steps // every  # the step's loss, every log_every_n_steps
    assert metrics["train/loss"][-1] < metrics["train/loss"][0]
    assert len(metrics["lr-SGD/pg1"]) == steps // every
    assert metrics["lr-SGD/pg1"][-1] < 0.01 * max(metrics["lr-SGD/pg1"])  # cosine decayed to ~0

    # The best checkpoint alone reproduces test/acc, independently of Lightning's test loop.
    best = next(p for p in (default_run / "checkpoints").iterdir() if p.name != "last.ckpt")
    model = SoftmaxRegression.load_from_checkpoint(best, map_location="cpu").eval()
    dm = FashionMNISTDataModule(data_dir=str(default_run.parents[2] / "data"))
    dm.setup("test")
    with torch.no_grad():
        predictions = model(dm.test_set.images.float() / 255).argmax(1)
    assert len(predictions) == 10000
    assert (predictions == dm.test_set.labels).float().mean().item() == pytest.approx(test_acc, abs=1e-6)


# Library warnings a default `fit` still prints, each explained in the README ("Warnings").
KNOWN_LIBRARY_WARNINGS = ("`isinstance(treespec, LeafSpec)` is deprecated",)


def unexplained_warnings(output: str) -> list[str]:
    markers = ("warn", "deprecat", "defaulting to")  # Lightning also prints notes such as "... defaulting to False"
    warnings = [line for line in output.splitlines() if any(marker in line.lower() for marker in markers)]
    return [line for line in warnings if not any(known in line for known in KNOWN_LIBRARY_WARNINGS)]


@pytest.mark.slow
def test_default_fit_prints_no_warning_of_this_projects_making(default_run: Path) -> None:
    assert unexplained_warnings((default_run.parents[2] / "fit_output.txt").read_text()) == []


@pytest.mark.slow
def test_no_subcommand_prints_a_warning_of_this_projects_making(tmp_path: Path) -> None:
    """fit, then validate/test/predict/export with `--ckpt_path best`, and a one-trial sweep, as a user runs them."""
    data = ["--data.data_dir", real_data(tmp_path)]
    debug = ["--config", str(REPO / "configs/fashion_mnist.yaml"), "--config", str(REPO / "configs/debug.yaml")]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": [str(REPO / "configs/debug.yaml")], "args": data, "study": {"name": "quiet", "n_trials": 1},
        "space": {"model.lr": {"low": 0.05, "high": 0.5, "log": True}},
    }))  # fmt: skip
    commands = [["fit", *debug, *data]]
    commands += [[sub, *debug, *data, "--ckpt_path", "best"] for sub in ("validate", "test", "predict", "export")]
    commands += [["sweep", "--config", str(sweep)]]
    for args in commands:
        result = run_cli(*args, cwd=tmp_path) if args[0] != "sweep" else subprocess.run(
            [sys.executable, "-m", "lit_softmax", *args], cwd=tmp_path, env=TEST_ENV, capture_output=True, text=True,
            timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert unexplained_warnings(result.stdout + result.stderr) == [], args[0]
