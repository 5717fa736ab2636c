"""The Trainer flags a Lightning user passes out of habit, and other loggers: each works, or fails before anything
runs with one clear message. One case a row of the README's table; the CLI is driven in-process, on small
synthetic data."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import DEBUG, need_real_data, real_data, run_cli


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize("value", ["true", "3"])
def test_fast_dev_run_tests_the_final_weights_and_leaves_no_run(cli, tmp_path: Path, capsys, caplog, value) -> None:
    cli("--trainer.fast_dev_run", value, "--test_after_fit", "true")
    assert "no best checkpoint in this run, so the final weights are tested" in caplog.text
    assert "test/acc" in capsys.readouterr().out
    assert not list(tmp_path.glob("logs/*/version_*")), "fast_dev_run logs nothing, so it leaves no run directory"


def test_logger_false_keeps_checkpoints_and_config_in_a_run_directory(cli, tmp_path: Path) -> None:
    cli("--trainer.logger", "false")
    run = tmp_path / "logs" / "unlogged" / "version_0"
    assert (run / "config.yaml").is_file()
    assert "last.ckpt" in checkpoints(run)
    assert not (tmp_path / "config.yaml").exists()  # not in the current directory
    two_epochs = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    cli("--trainer.logger", "false", "--ckpt_path", "last", "--trainer.max_epochs", "3")  # `last` finds it
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == two_epochs * 3 // 2
    assert (run / "config.resume1.yaml").is_file()  # the same run went on


def test_csv_logger_gets_scalars_hparams_config_and_checkpoints(cli, tmp_path: Path) -> None:
    cli("--trainer.logger", "CSVLogger", "--test_after_fit", "true")
    run = tmp_path / "logs" / "debug" / "version_0"
    with (run / "metrics.csv").open() as f:
        columns = set(next(csv.reader(f)))
    assert {"train/loss", "val/acc", "val/acc_best", "val/ece", "test/acc", "lr-SGD/pg1"} <= columns
    assert {"val/acc_per_class/Shirt", "test/acc_per_class/Shirt"} <= columns
    assert "per_process_batch_size: 32" in (run / "hparams.yaml").read_text()
    assert (run / "config.yaml").is_file()
    assert "last.ckpt" in checkpoints(run)
    cli("--trainer.logger", "CSVLogger", "--ckpt_path", "best", subcommand="test")  # `best` finds CSV runs too


def test_mlflow_logger_with_a_local_sqlite_store(cli, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    cli("--trainer.logger", "MLFlowLogger", "--trainer.logger.experiment_name", "smoke", "--test_after_fit", "true")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")  # the default store
    [run] = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert {"val/acc", "val/acc_best", "test/acc", "val/ece", "train/loss"} <= set(run.data.metrics)
    assert run.data.params["lr"] == "0.1"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "dashboard/test")}
    assert {"dashboard/test/confusion_matrix", "dashboard/test/misclassified"} <= figures
    assert "last.ckpt" in checkpoints(tmp_path / "logs" / "smoke" / "version_0")  # next to the other runs
    cli("--trainer.logger", "MLFlowLogger", "--trainer.logger.experiment_name", "smoke", "--ckpt_path", "best",
        subcommand="test")  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "tested"),
    [
        (["--trainer.enable_checkpointing", "false"], "final"),
        (["--trainer.max_epochs", "0"], "final"),
        (["--trainer.check_val_every_n_epoch", "3"], "final"),  # 2 epochs: never validated, so no best
        (["--trainer.max_steps", "5"], "final"),  # stops inside the first epoch, before any validation
    ],
    ids=["no-checkpointing", "max-epochs-0", "val-every-3", "max-steps"],
)
def test_runs_without_a_best_checkpoint_test_what_they_have(cli, tmp_path: Path, capsys, caplog, flags, tested) -> None:
    cli(*flags, "--test_after_fit", "true")
    assert "test/acc" in capsys.readouterr().out
    assert ("so the final weights are tested" in caplog.text) == (tested == "final")
    run = tmp_path / "logs" / "debug" / "version_0"
    if flags[0] == "--trainer.enable_checkpointing":
        assert checkpoints(run) == []
    if flags[0] == "--trainer.max_steps":
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


def test_val_check_interval_and_limits(cli, tmp_path: Path) -> None:
    from conftest import scalars

    cli("--trainer.val_check_interval", "0.5", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1")
    metrics = scalars(tmp_path / "logs" / "debug" / "version_0")
    assert len(metrics["val/acc"]) == 4  # twice an epoch, 2 epochs


@pytest.mark.parametrize("flag", [["--trainer.deterministic", "true"], ["--trainer.profiler", "simple"]])
def test_other_trainer_flags_run(cli, tmp_path: Path, capsys, caplog, flag: list[str]) -> None:
    cli(*flag)
    assert "last.ckpt" in checkpoints(tmp_path / "logs" / "debug" / "version_0")
    if "simple" in flag:
        assert "FIT Profiler Report" in capsys.readouterr().out + caplog.text


def test_precision_64_trains_in_double(cli, tmp_path: Path) -> None:
    cli("--trainer.precision", "64")
    state = torch.load(tmp_path / "logs/debug/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert state["linear.weight"].dtype == torch.float64


def test_devices_that_do_not_divide_the_global_batch_fail_before_launching(cli, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli("--trainer.accelerator", "cpu", "--trainer.devices", "3", "--trainer.strategy", "ddp")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("data.batch_size=32 is the global batch and must split evenly over the 3 processes") == 1
    assert "`--data.batch_size 30` or `--data.batch_size 33`" in err
    assert not list(tmp_path.glob("logs/*/version_*"))


@pytest.mark.slow
def test_three_cpu_processes_train_when_the_batch_divides(tmp_path: Path) -> None:
    need_real_data()
    out = run_cli("fit", "--config", DEBUG, "--data.data_dir", real_data(tmp_path), "--trainer.accelerator", "cpu",
                  "--trainer.devices", "3", "--trainer.strategy", "ddp", "--data.batch_size", "66",
                  "--trainer.limit_train_batches", "6", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "global batch 66 = 22 per process x 3 processes" in out.stdout + out.stderr


def test_a_chosen_run_directory_is_never_overwritten(cli, tmp_path: Path, capsys) -> None:
    cli("--trainer.logger.version", "mine")
    config = tmp_path / "logs" / "debug" / "mine" / "config.yaml"
    before = config.read_text()
    with pytest.raises(SystemExit) as info:
        cli("--trainer.logger.version", "mine", "--model.lr", "0.05")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "logs/debug/mine/config.yaml already exists: this run directory belongs to another run" in err
    assert "Choose another `--trainer.logger.version`" in err
    assert config.read_text() == before  # the first run's config is kept
