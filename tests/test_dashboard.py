"""TensorBoard dashboards: every tag is written with sane values, and TensorBoard itself serves them."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, scalars
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_softmax.dashboard import (
    CalibrationBins,
    confusion_matrix,
    expected_calibration_error,
    misclassified_grid,
    reliability_diagram,
    weight_templates,
)
from lit_softmax.fashion_mnist import CLASSES

CLASS_TAGS = [name.replace("/", "_") for name in CLASSES]


def images(run_dir: Path) -> dict[str, list]:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def rendered(figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())


def test_figures_are_labelled_and_drawn() -> None:
    w = torch.zeros(10, 784)
    w[3, :392] = 1.0
    templates = weight_templates(w)
    assert [t.get_text() for t in templates.axes[0].texts] == list(CLASSES)  # each heat map named
    counts = torch.diag(torch.full((10,), 100))
    counts[6, 0] = 100  # half the shirts called T-shirts
    matrix = confusion_matrix(counts)
    ax = matrix.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)  # full names, "T-shirt/top" included
    assert [t.get_text() for t in ax.get_yticklabels()] == list(CLASSES)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert "0.50" in [t.get_text() for t in ax.texts]  # the shirts' confusion is written in its cell
    bins = CalibrationBins()
    bins.update(torch.randn(1000, 10) * 3, torch.randint(0, 10, (1000,)))
    diagram = reliability_diagram(bins.compute())
    ax = diagram.axes[0]
    assert ax.get_xlabel().startswith("confidence")
    assert ax.get_ylabel() == "accuracy"
    assert ax.get_title().startswith("ECE ")
    grid = misclassified_grid(torch.rand(9, 28, 28), torch.zeros(9), torch.ones(9))
    captions = [t.get_text() for t in grid.axes[0].texts]
    assert captions == [CLASSES[0], CLASSES[1]] * 9  # true over predicted, for each of the 9 images
    for figure in (templates, matrix, diagram, grid):
        pixels = rendered(figure)
        assert min(pixels.shape[:2]) > 150
        assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 20, "blank figure"


def test_calibration_bins_give_torchmetrics_ece_and_add_up_across_batches() -> None:
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(3000, 10, generator=g) * 4, torch.randint(0, 10, (3000,), generator=g)
    logits[:5] = torch.tensor([1e4] + [0.0] * 9)  # confidence exactly 1.0: torchmetrics' extra last slot
    bins, reference = CalibrationBins(n_bins=15), MulticlassCalibrationError(10, n_bins=15)
    for part in range(3):  # three batches, as in an epoch
        bins.update(logits[part * 1000 : (part + 1) * 1000], target[part * 1000 : (part + 1) * 1000])
    reference.update(logits, target)
    assert expected_calibration_error(bins.compute()).item() == pytest.approx(reference.compute().item(), abs=1e-6)
    assert bins.compute()["count"].sum() == 3000


@pytest.mark.slow
def test_event_files_hold_every_dashboard(default_run: Path) -> None:
    metrics = scalars(default_run)
    epochs = yaml.safe_load((REPO / "configs/fashion_mnist.yaml").read_text())["trainer"]["max_epochs"]
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "lr-SGD/pg1", "test/loss",
                "test/acc", "val/ece", "test/ece", "hp_metric"):  # fmt: skip
        assert tag in metrics, tag
    assert all(0 < v < 1 for v in metrics["val/ece"])
    assert metrics["val/ece"][-1] < 0.05  # once converged, softmax regression is well calibrated
    assert 0 < metrics["test/ece"][-1] < 0.05
    assert metrics["hp_metric"][-1] == pytest.approx(max(metrics["val/acc"]))  # a real hp_metric, never -1
    assert -1 not in metrics["hp_metric"]
    per_class = [metrics[f"test/acc_per_class/{name}"][-1] for name in CLASS_TAGS]
    # The test set is balanced (1,000 per class), so the mean per-class accuracy is the accuracy.
    assert sum(per_class) / 10 == pytest.approx(metrics["test/acc"][-1], abs=1e-6)
    assert min(per_class) == metrics["test/acc_per_class/Shirt"][-1]  # the famously hard class
    assert len(metrics["val/ece"]) == epochs
    assert len(metrics["val/acc_per_class/Trouser"]) == 1  # figures and per-class accuracy: the last validation

    logged = images(default_run)
    assert [image.step for image in logged["val/weight_templates"]] == [epochs * 27]
    for tag in ("val/confusion_matrix", "val/reliability_diagram", "test/confusion_matrix",
                "test/reliability_diagram", "test/misclassified"):  # fmt: skip
        picture = Image.open(io.BytesIO(logged[tag][-1].encoded_image_string))
        assert picture.size[0] > 400, tag
        assert len(set(picture.convert("L").getdata())) > 10, f"{tag} is blank"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_serves_the_run(default_run: Path) -> None:
    logdir = default_run.parents[1]  # logs/, as a user points TensorBoard at it
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 60
        runs = None
        while time.monotonic() < deadline:
            try:
                runs = get_json(f"{base}/runs")
                if runs:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        assert runs, "TensorBoard did not come up with the run within 60 s"
        run = "fashion_mnist/version_0"
        assert run in runs
        scalar_tags = get_json(f"{base}/plugin/scalars/tags")[run]
        assert {"val/acc", "train/loss", "test/acc", "val/ece"} <= set(scalar_tags)
        values = get_json(f"{base}/plugin/scalars/scalars?run={run}&tag=val/acc")
        assert 0.8 < values[-1][2] < 1.0  # [wall_time, step, value]
        image_tags = get_json(f"{base}/plugin/images/tags")[run]
        assert {"val/weight_templates", "test/confusion_matrix", "test/misclassified"} <= set(image_tags)
        entries = get_json(f"{base}/plugin/images/images?run={run}&tag=test/confusion_matrix")
        with urllib.request.urlopen(
            f"{base}/plugin/images/individualImage?{entries[-1]['query']}", timeout=10
        ) as response:
            assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
        # HPARAMS tab: the run's hyper-parameters and a real hp_metric (the best val/acc, not -1).
        body = {
            "experimentName": "", "startIndex": 0, "sliceSize": 10,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"metric": {"tag": "hp_metric"}}],
        }  # fmt: skip
        request = urllib.request.Request(
            f"{base}/plugin/hparams/session_groups", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            group = json.loads(response.read())["sessionGroups"][0]
        assert group["hparams"]["lr"] == 0.4
        assert group["hparams"]["batch_size"] == 2048
        assert group["hparams"]["per_process_batch_size"] == 2048
        assert group["metricValues"][0]["value"] == pytest.approx(max(scalars(default_run)["val/acc"]))
    finally:
        server.terminate()
        server.wait(timeout=30)
