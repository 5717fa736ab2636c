"""On a CUDA GPU (skipped without one): the default recipe trains and tests with the dataset in device memory, in
fp32, bf16-mixed and 16-mixed, and the GPU benchmark runs. `pytest -m gpu` runs just these."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, need_real_data, real_data, run_cli, scalars

from lit_softmax import FashionMNISTDataModule, SoftmaxRegression

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ON_ONE_GPU = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--data.on_device", "true"]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_default_recipe_fits_and_tests_on_one_gpu(tmp_path: Path, precision: str) -> None:
    need_real_data()
    fit = run_cli("fit", "--config", str(REPO / "configs/fashion_mnist.yaml"), *ON_ONE_GPU,
                  "--trainer.precision", precision, "--data.data_dir", real_data(tmp_path), cwd=tmp_path)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = tmp_path / "logs" / "fashion_mnist" / "version_0"
    test_acc = scalars(run)["test/acc"][-1]
    print(f"{precision}: test/acc {test_acc:.4f}")
    assert test_acc >= 0.84
    for ckpt in (run / "checkpoints").iterdir():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values()), ckpt.name


def test_training_batches_are_cut_and_converted_in_gpu_memory(synthetic_dir: Path, tmp_path: Path) -> None:
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            seen.append((batch[0].device.type, batch[0].dtype, batch[1].device.type))

    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=32, download=False, on_device=True)
    trainer = L.Trainer(accelerator="gpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[Record()])  # fmt: skip
    trainer.fit(SoftmaxRegression(lr=0.5), datamodule=dm)
    assert dm.train_set.images.is_cuda  # moved once, in setup
    assert seen
    assert set(seen) == {("cuda", torch.float32, "cuda")}
    index = next(iter(dm.train_dataloader().sampler))
    assert index.is_cuda  # the permutation's slices live where the images do


def test_gpu_benchmark_runs(tmp_path: Path) -> None:
    need_real_data()
    only = ["--only", "bare loop, default recipe", "lit fashion_mnist"]
    command = [sys.executable, str(REPO / "benchmarks/bench.py"), "--gpu", "--repeats", "1",
               "--data-dir", real_data(tmp_path), *only]  # fmt: skip
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    print(out.stdout[-2500:])
    assert "| lit fashion_mnist |" in out.stdout


def test_no_device_sync_per_step_on_the_gpu(tmp_path: Path, monkeypatch) -> None:
    """On the device the counter was made for: no read of a tensor value on every step, <= 0.3 per step in all (the
    counter of tests/test_syncs.py). CUDA's own sync debug mode also reports what the counter cannot see (syncs
    inside C++ kernels); its count over the whole fit is printed for the README."""
    import warnings

    from probes import CountHostReads
    from test_syncs import assert_no_read_per_step

    from lit_softmax.cli import build

    need_real_data()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])
    counter = CountHostReads()
    args = ["fit", "--config", str(REPO / "configs/fashion_mnist.yaml"), *ON_ONE_GPU, "--trainer.max_epochs", "3",
            "--data.data_dir", real_data(tmp_path), "--test_after_fit", "false"]  # fmt: skip
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build(args, callbacks=[counter])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    print(f"CUDA sync debug mode: {len(syncs)} synchronizing calls in 3 epochs ({counter.steps} counted steps)")
    assert_no_read_per_step(counter.summary())


def test_resume_on_the_gpu_is_bit_exact(tmp_path: Path) -> None:
    """Stopped after 2 epochs and resumed to 4 == 4 epochs at once, on one GPU (deterministic kernels)."""
    need_real_data()
    base = ["--config", str(REPO / "configs/fashion_mnist.yaml"), *ON_ONE_GPU, "--data.data_dir", real_data(tmp_path),
            "--trainer.deterministic", "true", "--test_after_fit", "false"]  # fmt: skip
    for args in (["--trainer.max_epochs", "4", "--trainer.logger.name", "whole"],
                 ["--trainer.max_epochs", "2", "--trainer.logger.name", "parts"],
                 ["--trainer.max_epochs", "4", "--trainer.logger.name", "parts", "--ckpt_path", "last"]):  # fmt: skip
        result = run_cli("fit", *base, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    whole, parts = (torch.load(tmp_path / f"logs/{n}/version_0/checkpoints/last.ckpt", map_location="cpu",
                               weights_only=True)["state_dict"] for n in ("whole", "parts"))  # fmt: skip
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_with_nccl_train_the_model_of_one(tmp_path: Path) -> None:
    """configs/ddp.yaml on 2 GPUs (NCCL) against 1 GPU: the same global batches, weights within 1e-4."""
    need_real_data()
    base = ["--config", str(REPO / "configs/fashion_mnist.yaml"), "--data.data_dir", real_data(tmp_path),
            "--trainer.max_epochs", "3", "--test_after_fit", "false"]  # fmt: skip
    runs = {"one": [*ON_ONE_GPU], "two": ["--config", str(REPO / "configs/ddp.yaml"), "--trainer.devices", "2"]}
    for name, args in runs.items():
        result = run_cli("fit", *base, *args, "--trainer.logger.name", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (torch.load(tmp_path / f"logs/{n}/version_0/checkpoints/last.ckpt", map_location="cpu",
                           weights_only=True)["state_dict"] for n in runs)  # fmt: skip
    for key in one:
        assert (one[key] - two[key]).abs().max().item() <= 1e-4, key
