"""No host read of a tensor value on every training step (on a GPU each is a device sync: the host could not run
ahead of the device), counted during real `fit`s with a TorchFunctionMode (tests/probes.py CountHostReads)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, need_real_data, real_data, run_cli
from probes import CountHostReads

from lit_softmax.cli import build

BUDGET = 0.3  # host reads per optimizer step, all call sites together
RECIPES = {
    "default": ["--config", str(REPO / "configs/fashion_mnist.yaml")],
    "seed": ["--config", str(REPO / "configs/seed_recipe.yaml")],
    "bf16": ["--config", str(REPO / "configs/fashion_mnist.yaml"), "--config", str(REPO / "configs/bf16.yaml")],
}


def assert_no_read_per_step(summary: dict) -> None:
    steps, reads = summary["steps"], summary["reads"]  # CountHostReads.EXCLUDED already left out
    assert steps > 0
    print(f"{sum(reads.values()) / steps:.3f} reads per step over {steps} steps: {reads}")
    every_step = {site: n for site, n in reads.items() if n >= steps}
    assert not every_step, f"read on every step: {every_step}"
    assert sum(reads.values()) / steps <= BUDGET, reads


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_training_reads_the_device_less_than_once_in_three_steps(recipe: str, tmp_path: Path, monkeypatch) -> None:
    need_real_data()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])
    counter = CountHostReads()
    build(["fit", *RECIPES[recipe], "--data.data_dir", real_data(tmp_path), "--trainer.max_epochs", "3",
           "--test_after_fit", "false", "--trainer.enable_progress_bar", "true"], callbacks=[counter])  # fmt: skip
    assert_no_read_per_step(counter.summary())


@pytest.mark.slow
def test_ddp_training_reads_the_device_less_than_once_in_three_steps(tmp_path: Path) -> None:
    need_real_data()
    probe = tmp_path / "count.yaml"
    probe.write_text(f"trainer:\n  callbacks+:\n    - class_path: probes.CountHostReads\n      init_args:\n"
                     f"        out: {tmp_path / 'reads'}\n")  # fmt: skip
    fit = run_cli("fit", *RECIPES["default"], "--config", str(REPO / "configs/ddp_cpu.yaml"), "--config", str(probe),
                  "--data.data_dir", real_data(tmp_path), "--trainer.max_epochs", "3", "--test_after_fit", "false",
                  cwd=tmp_path)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    for rank in (0, 1):
        summary = json.loads((tmp_path / f"reads.rank{rank}.json").read_text())
        assert_no_read_per_step(summary)
