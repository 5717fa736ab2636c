"""Multi-process correctness on CPU: DDP with 2 processes (gloo), 2 "nodes" via torchrun, mixed precision."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, need_real_data, real_data, run_cli, scalars

from lit_softmax import FashionMNISTDataModule, SoftmaxRegression
from lit_softmax.samplers import InMemoryDataset, keep_batch

CONFIG = str(REPO / "configs/fashion_mnist.yaml")
DDP_CPU = str(REPO / "configs/ddp_cpu.yaml")
N_TRAIN = 55000


def probe_config(tmp_path: Path, out_dir: Path) -> str:
    path = tmp_path / "probe.yaml"
    path.write_text(
        "trainer:\n  callbacks+:\n    - class_path: probes.RecordShards\n"
        f"      init_args:\n        out_dir: {out_dir}\n"
    )
    return str(path)


def read_shards(out_dir: Path) -> list[dict]:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


def assert_exact_shards(records: list[dict], epochs: int) -> None:
    for epoch in map(str, range(epochs)):
        shards = [set(r["epochs"][epoch]) for r in records]
        assert len(shards[0]) + len(shards[1]) == N_TRAIN, "a sample was repeated or dropped"
        assert shards[0].isdisjoint(shards[1])
        assert shards[0] | shards[1] == set(range(N_TRAIN))
    assert records[0]["epochs"]["0"] != records[0]["epochs"]["1"], "the order must change between epochs"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`fit --config fashion_mnist.yaml --config ddp_cpu.yaml`: 2 processes, 3 epochs, shards recorded."""
    need_real_data()
    cwd = tmp_path_factory.mktemp("ddp")
    probe = probe_config(cwd, cwd / "shards")
    fit = run_cli(
        "fit", "--config", CONFIG, "--config", DDP_CPU, "--config", probe,
        "--trainer.max_epochs", "3", "--data.data_dir", real_data(cwd), cwd=cwd,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    return cwd, fit


@pytest.mark.slow
def test_ddp_two_processes_train_with_one_set_of_outputs(ddp_run) -> None:
    cwd, fit = ddp_run
    records = read_shards(cwd / "shards")
    assert [r["world_size"] for r in records] == [2, 2]
    assert [r["global_rank"] for r in records] == [0, 1]
    assert_exact_shards(records, epochs=3)
    # The fast path survives DDP: same dataset, batch collation, float batches cut from the uint8 tensors.
    for r in records:
        assert (r["sampler"], r["dataset"], r["collate_fn"]) == ("TrainBatchSampler", "InMemoryDataset", "keep_batch")
        assert r["batch"] == {"dtype": "torch.float32", "shape": [1024, 28, 28]}  # half of the global batch
    assert "global batch 2048 = 1024 per process x 2 processes" in fit.stdout + fit.stderr

    # Only rank 0 wrote: one run directory, one config, one best + last checkpoint.
    runs = list((cwd / "logs" / "fashion_mnist").iterdir())
    assert [r.name for r in runs] == ["version_0"]
    assert sorted(p.name for p in runs[0].iterdir() if p.is_file() and not p.name.startswith("events")) == [
        "config.yaml", "hparams.yaml", "run.yaml",
    ]  # fmt: skip
    assert len(list((runs[0] / "checkpoints").iterdir())) == 2
    metrics = scalars(runs[0])
    assert metrics["test/acc"][-1] > 0.80  # 3 epochs: sane, not tuned
    hparams = (runs[0] / "hparams.yaml").read_text()
    assert "batch_size: 2048" in hparams
    assert "per_process_batch_size: 1024" in hparams
    assert "world_size: 2" in hparams


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """The same 3 epochs as `ddp_run`, in one process."""
    need_real_data()
    cwd = tmp_path_factory.mktemp("single")
    fit = run_cli(
        "fit", "--config", CONFIG, "--config", probe_config(cwd, cwd / "shards"), "--trainer.max_epochs", "3",
        "--data.data_dir", real_data(cwd), cwd=cwd,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    return cwd


@pytest.mark.slow
def test_one_config_trains_the_same_model_on_one_or_two_processes(ddp_run, single_run: Path) -> None:
    """data.batch_size is the global batch: every optimizer step sees the same samples with 1 or 2 processes."""
    one = json.loads((single_run / "shards" / "rank0.json").read_text())
    two = read_shards(ddp_run[0] / "shards")
    for epoch in map(str, range(3)):
        steps = one["shares"][epoch]
        assert len(steps) == len(two[0]["shares"][epoch]) == len(two[1]["shares"][epoch]) == 27
        for step, batch in enumerate(steps):
            halves = two[0]["shares"][epoch][step], two[1]["shares"][epoch][step]
            assert halves[0] + halves[1] == batch, f"epoch {epoch} step {step}: another set of samples"
            assert len(halves[0]) == len(halves[1])
    runs = single_run / "logs" / "fashion_mnist" / "version_0", ddp_run[0] / "logs" / "fashion_mnist" / "version_0"
    weights = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in runs]
    for key in weights[0]:
        difference = (weights[0][key] - weights[1][key]).abs().max().item()
        assert difference <= 1e-4, f"{key} differs by {difference} (only summation order may differ)"
    val = [scalars(r)["val/acc"] for r in runs]
    assert len(val[0]) == len(val[1]) == 3
    assert max(abs(a - b) for a, b in zip(*val)) <= 0.001  # within 0.1 point, every epoch


@pytest.mark.slow
def test_ddp_test_metrics_equal_single_process(default_run: Path, tmp_path: Path) -> None:
    """The same checkpoint scored by 2 processes and by 1: identical test/acc (no padded duplicates)."""
    best = next(p for p in (default_run / "checkpoints").iterdir() if p.name != "last.ckpt")
    test = run_cli(
        "test", "--config", CONFIG, "--config", DDP_CPU, "--ckpt_path", str(best),
        "--data.data_dir", real_data(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert test.returncode == 0, test.stderr[-3000:]
    two = scalars(tmp_path / "logs" / "fashion_mnist" / "version_0")
    one = scalars(default_run)
    assert two["test/acc"] == [one["test/acc"][-1]]
    assert two["test/loss"][0] == pytest.approx(one["test/loss"][-1], rel=1e-5)  # summation order differs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_with_torchrun_match_two_processes(ddp_run, tmp_path: Path) -> None:
    """Two `torchrun --nnodes=2 --node_rank=0/1` launches on loopback behave as the 2-process run."""
    port = free_port()
    probe = probe_config(tmp_path, tmp_path / "shards")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    procs = []
    for node_rank in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
            "-m", "lit_softmax", "fit", "--config", CONFIG, "--config", str(REPO / "configs/multinode.yaml"),
            "--config", probe, "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2",
            "--trainer.max_epochs", "3", "--data.data_dir", real_data(tmp_path),
            "--trainer.enable_progress_bar", "false",
            "--trainer.strategy.broadcast_buffers", "true",  # DDP's default; configs/ddp_cpu.yaml turns it off
        ]  # fmt: skip
        procs.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]

    records = read_shards(tmp_path / "shards")
    assert [r["world_size"] for r in records] == [2, 2]
    assert_exact_shards(records, epochs=3)
    # Same seed, same world size: the very same shards as the single-node 2-process run.
    ddp_records = read_shards(ddp_run[0] / "shards")
    assert [r["epochs"] for r in records] == [r["epochs"] for r in ddp_records]
    assert [r.name for r in (tmp_path / "logs" / "fashion_mnist").iterdir()] == ["version_0"]
    assert scalars(tmp_path / "logs" / "fashion_mnist" / "version_0")["test/acc"][-1] > 0.80
    # Buffers re-sent before every forward (here) or not (ddp_cpu.yaml): the same model, the buffers never change.
    runs = tmp_path / "logs/fashion_mnist/version_0", ddp_run[0] / "logs/fashion_mnist/version_0"
    weights = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in runs]
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], rtol=0, atol=1e-6), key


# ---- mixed precision ------------------------------------------------------------------------------
class RecordDtype(SoftmaxRegression):
    def training_step(self, batch, batch_idx):
        self.seen_dtype = self(batch[0]).dtype  # inside the step: under the precision plugin's autocast
        return super().training_step(batch, batch_idx)


def fit_synthetic(synthetic_dir: Path, tmp_path: Path, precision: str) -> tuple[L.Trainer, RecordDtype]:
    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=32, download=False)
    model = RecordDtype(lr=0.5)
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return trainer, model


def test_bf16_mixed_on_cpu_really_autocasts(synthetic_dir: Path, tmp_path: Path) -> None:
    trainer, model = fit_synthetic(synthetic_dir, tmp_path, "bf16-mixed")
    assert model.seen_dtype == torch.bfloat16
    assert model.linear.weight.dtype == torch.float32  # master weights stay fp32
    assert torch.isfinite(model.linear.weight).all()
    assert trainer.callback_metrics["val/acc"] > 0.9


def test_fp16_on_cpu_warns_and_uses_bf16(synthetic_dir: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="bf16-mixed"):
        trainer, model = fit_synthetic(synthetic_dir, tmp_path, "16-mixed")
    assert trainer.precision == "bf16-mixed"
    assert model.seen_dtype == torch.bfloat16


@pytest.mark.slow
def test_bf16_accuracy_within_half_a_point_of_fp32(default_run: Path, tmp_path: Path) -> None:
    fit = run_cli(
        "fit", "--config", CONFIG, "--config", str(REPO / "configs/bf16.yaml"),
        "--data.data_dir", real_data(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    bf16 = scalars(tmp_path / "logs" / "fashion_mnist" / "version_0")
    fp32 = scalars(default_run)
    assert all(map(torch.isfinite, map(torch.tensor, bf16["val/loss"])))
    assert abs(bf16["test/acc"][-1] - fp32["test/acc"][-1]) <= 0.005


@pytest.mark.parametrize("name", ["ddp", "fp16", "multinode"])
def test_gpu_configs_parse_and_validate(capsys, monkeypatch, name: str) -> None:
    """GPU configs cannot run here, but they must parse against the real schema and compose with the default."""
    import yaml

    from lit_softmax.cli import main

    monkeypatch.setattr(sys, "argv", ["lit_softmax"])
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", CONFIG, "--config", str(REPO / f"configs/{name}.yaml"), "--print_config"])
    assert info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    for key, value in yaml.safe_load((REPO / f"configs/{name}.yaml").read_text())["trainer"].items():
        if isinstance(value, dict):  # the DDP strategy: its class and the arguments the file sets
            assert resolved["trainer"][key]["class_path"] == value["class_path"]
            assert value["init_args"].items() <= resolved["trainer"][key]["init_args"].items()
        else:
            assert resolved["trainer"][key] == value
    assert resolved["model"]["init_args"]["lr"] == 0.4  # composed on top of the default


# ---- data resident on the device (GPU tests: tests/test_gpu.py) ---------------------------------------
def test_on_device_is_a_no_op_on_cpu(synthetic_dir: Path, tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, download=False, on_device=True)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_train_batches=2, limit_val_batches=1)  # fmt: skip
    trainer.fit(SoftmaxRegression(), datamodule=dm)
    assert isinstance(dm.train_set, InMemoryDataset)
    assert dm.train_dataloader().collate_fn is keep_batch
    assert dm.train_set.images.device.type == "cpu"
