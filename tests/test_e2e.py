"""End to end on the real Fashion-MNIST: the README's main job reaches its promised accuracy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, real_data_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_softmax import FashionMNISTDataModule, SoftmaxRegression


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Read the run's TensorBoard events back with TensorBoard's own reader."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_default_config_reaches_target_accuracy(tmp_path: Path) -> None:
    assert real_data_dir() is not None, "real Fashion-MNIST missing: run `make data` (CI installs it)"
    fit = subprocess.run(
        [sys.executable, "-m", "lit_softmax", "fit", "--config", str(REPO / "configs/fashion_mnist.yaml"),
         "--data.data_dir", str(tmp_path / "data"), "--trainer.enable_progress_bar", "false"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = tmp_path / "logs" / "fashion_mnist" / "version_0"
    metrics = scalars(run)
    test_acc = metrics["test/acc"][-1]
    print(f"default config: test/acc={test_acc:.4f} best val/acc={max(metrics['val/acc']):.4f}")
    assert test_acc >= 0.845
    assert metrics["val/acc_best"][-1] == pytest.approx(max(metrics["val/acc"]))
    epochs = yaml.safe_load((REPO / "configs/fashion_mnist.yaml").read_text())["trainer"]["max_epochs"]
    assert len(metrics["val/acc"]) == epochs  # validated every epoch, sanity check not logged

    # The best checkpoint alone reproduces test/acc, independently of Lightning's test loop.
    best = next(p for p in (run / "checkpoints").iterdir() if p.name != "last.ckpt")
    model = SoftmaxRegression.load_from_checkpoint(best, map_location="cpu").eval()
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"))
    dm.setup("test")
    with torch.no_grad():
        predictions = model(dm.test_set.images.float() / 255).argmax(1)
    assert len(predictions) == 10000
    assert (predictions == dm.test_set.labels).float().mean().item() == pytest.approx(test_acc, abs=1e-6)
