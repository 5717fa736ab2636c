"""The run owner (lit_softmax/run.py) at the seams between features: saved configs in every subcommand, which run
`best`/`last` pick, what a resume may change, other loggers, Lightning's order of work that run.py relies on."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEBUG

from lit_softmax import run
from lit_softmax.cli import main

SUBCOMMANDS = ("fit", "validate", "test", "predict", "export")
RUNS = Path("logs/debug")


@pytest.fixture
def lit(synthetic_dir: Path, tmp_path: Path, monkeypatch, caplog):
    """`python -m lit_softmax <args>` in tmp_path on the synthetic data; `lit.common` are the debug flags."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])
    caplog.set_level(logging.INFO)

    class Lit:
        common = ["--data.data_dir", str(synthetic_dir), "--data.val_size", "20", "--data.batch_size", "32",
                  "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "2"]  # fmt: skip

        def __call__(self, subcommand: str, *args: str) -> None:
            main([subcommand, *args])

        def fit(self, *args: str) -> None:
            main(["fit", "--config", DEBUG, *self.common, *args])

    return Lit()


def hparams(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]


# ---- every saved config is a valid --config for every subcommand ------------------------------------------------
def test_every_saved_config_works_in_every_subcommand(lit, capsys, tmp_path: Path) -> None:
    lit.fit("--trainer.max_epochs", "1")
    lit.fit("--trainer.max_epochs", "2", "--ckpt_path", "last")  # a resume: config.resume1.yaml
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEBUG, *lit.common, "--print_config"])
    (tmp_path / "printed.yaml").write_text(capsys.readouterr().out)
    saved = [RUNS / "version_0/config.yaml", RUNS / "version_0/config.resume1.yaml", tmp_path / "printed.yaml"]
    for config in saved:
        text = config.read_text()
        assert "ckpt_path: logs" not in text, f"{config} pins its run"
        assert "version: 0" not in text, f"{config} pins its run"
        for subcommand in SUBCOMMANDS:
            ckpt = [] if subcommand == "fit" else ["--ckpt_path", "best"]
            lit(subcommand, "--config", str(config), *ckpt, "--trainer.enable_progress_bar", "false")
    assert list(RUNS.glob("version_*/checkpoints/model.onnx"))


def test_a_sweeps_best_yaml_works_in_every_subcommand(lit, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lit_softmax.sweep import write_best

    lit.fit("--trainer.max_epochs", "1")
    trial = SimpleNamespace(number=3, value=0.5, params={"model.lr": 0.1}, user_attrs={"run": str(RUNS / "version_0")})
    write_best(SimpleNamespace(best_trial=trial), tmp_path / "logs/study", "study")
    best = tmp_path / "logs/study/best.yaml"
    for subcommand in SUBCOMMANDS:  # fit first: the other subcommands find its run through `best`
        ckpt = [] if subcommand == "fit" else ["--ckpt_path", "best"]
        lit(subcommand, "--config", str(best), *ckpt, "--trainer.enable_progress_bar", "false")
    assert (tmp_path / "logs/study_best/version_0/checkpoints/model.onnx").is_file()


# ---- best/last pick the run the user means -----------------------------------------------------------------------
def test_best_and_last_pick_the_run_with_these_model_and_data_settings(lit, caplog) -> None:
    lit.fit()  # version_0: the config's lr
    lit.fit("--model.lr", "0.05", "--trainer.max_epochs", "1")  # version_1: an experiment, newer
    caplog.clear()
    lit("test", "--config", DEBUG, *lit.common, "--ckpt_path", "best")
    picked = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--ckpt_path best:")]
    assert len(picked) == 1, picked
    assert "version_0" in picked[0], picked  # the config's lr is version_0's, and it says which it took
    caplog.clear()
    lit("test", "--config", DEBUG, *lit.common, "--ckpt_path", "best", "--model.lr", "0.05")
    assert any("--ckpt_path best: logs/debug/version_1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    lit("test", "--config", DEBUG, *lit.common, "--ckpt_path", "last", "--trainer.max_epochs", "7")
    assert any("--ckpt_path last: logs/debug/version_0" in r.getMessage() for r in caplog.records)  # trainer: no


def test_resume_takes_the_runs_own_settings_and_only_what_is_typed(lit) -> None:
    lit.fit("--model.lr", "0.05", "--trainer.max_epochs", "1")  # version_0: lr 0.05, 1 epoch; the file says 2
    last = RUNS / "version_0/checkpoints/last.ckpt"
    steps = torch.load(last, weights_only=True)["global_step"]
    # Neither the config file's lr nor its max_epochs replaces the run's own.
    lit.fit("--ckpt_path", str(last))
    resume1 = yaml.safe_load((RUNS / "version_0/config.resume1.yaml").read_text())
    assert resume1["model"]["init_args"]["lr"] == 0.05
    assert resume1["trainer"]["max_epochs"] == 1
    assert torch.load(last, weights_only=True)["global_step"] == steps  # nothing more to train
    # What is typed changes it: a longer run, at a new lr.
    lit.fit("--ckpt_path", str(last), "--trainer.max_epochs", "2", "--model.lr", "0.02")
    resume2 = yaml.safe_load((RUNS / "version_0/config.resume2.yaml").read_text())
    assert (resume2["trainer"]["max_epochs"], resume2["model"]["init_args"]["lr"]) == (2, 0.02)
    assert hparams(last)["lr"] == 0.02
    assert torch.load(last, weights_only=True)["global_step"] > steps
    lineage = yaml.safe_load((RUNS / "version_0/run.yaml").read_text())
    assert [s["config"] for s in lineage["segments"]] == ["config.yaml", "config.resume1.yaml", "config.resume2.yaml"]
    assert not list(RUNS.glob("version_1")), "a resume continues in the run's own directory"


def test_a_typed_recipe_change_on_resume_is_refused(lit, capsys) -> None:
    lit.fit("--trainer.max_epochs", "1")
    with pytest.raises(SystemExit) as info:
        lit.fit("--ckpt_path", "last", "--model.weight_decay", "0.5")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "no run under logs/debug was trained with this config" in err
    assert "model.weight_decay" in err
    with pytest.raises(SystemExit):
        lit.fit("--ckpt_path", str(RUNS / "version_0/checkpoints/last.ckpt"), "--model.weight_decay", "0.5")
    err = capsys.readouterr().err
    assert "cannot resume" in err
    assert "model.weight_decay is 0.0 in the checkpoint, 0.5 here" in err


def test_lightning_reads_checkpoint_hyper_parameters_before_the_run_owners_hook(lit, monkeypatch) -> None:
    """run.prepare applies a checkpoint's settings in before_instantiate_classes. Lightning >= 2.6 reads them itself
    right after parsing (`_parse_ckpt_path`, no hook in between; 2.5 does not read them at all): that must come
    before our hook, or a typed --model.lr would be overwritten again. If Lightning moves it after the hook, this
    fails, and lit_softmax/run.py's workaround must move with it; the typed lr winning is checked either way."""
    from lightning.pytorch.cli import LightningCLI

    order = []
    lightning_reads, prepare = getattr(LightningCLI, "_parse_ckpt_path", None), run.prepare
    if lightning_reads is not None:
        monkeypatch.setattr(
            LightningCLI, "_parse_ckpt_path", lambda cli: (order.append("lightning"), lightning_reads(cli))
        )
    monkeypatch.setattr(run, "prepare", lambda cli: (order.append("run.prepare"), prepare(cli)))
    lit.fit("--trainer.max_epochs", "1")
    order.clear()
    lit.fit("--ckpt_path", str(RUNS / "version_0/checkpoints/last.ckpt"), "--model.lr", "0.03",
            "--trainer.max_epochs", "2")  # fmt: skip
    assert order == (["lightning", "run.prepare"] if lightning_reads is not None else ["run.prepare"])
    assert hparams(RUNS / "version_0/checkpoints/last.ckpt")["lr"] == 0.03  # the typed lr won


# ---- other loggers -----------------------------------------------------------------------------------------------
def test_wandb_offline_runs_fit_resume_and_best_last(lit, monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="install the wandb extra: pip install -e '.[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = ["--trainer.logger", "WandbLogger"]
    lit.fit(*wandb, "--trainer.max_epochs", "1")
    run_dir = RUNS / "version_0"
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints/last.ckpt").is_file()
    run_id = yaml.safe_load((run_dir / "run.yaml").read_text())["loggers"]["WandbLogger"]["id"]
    assert isinstance(run_id, str)
    assert run_id
    time.sleep(1.1)  # W&B names its offline run directories by the second
    lit.fit(*wandb, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert (run_dir / "config.resume1.yaml").is_file()
    assert not (RUNS / "version_1").exists()
    offline = sorted(p.name for p in (tmp_path / "logs/wandb").glob("offline-run-*"))
    assert len(offline) == 2
    assert all(name.endswith(run_id) for name in offline)
    lit("test", "--config", DEBUG, *lit.common, *wandb, "--ckpt_path", "best")


def test_mlflow_resume_continues_the_same_mlflow_run(lit, tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="install the mlflow extra: pip install -e '.[mlflow]'")
    import sqlite3

    mlflow = ["--trainer.logger", "MLFlowLogger", "--trainer.logger.experiment_name", "debug"]
    lit.fit(*mlflow, "--trainer.max_epochs", "1")
    lit.fit(*mlflow, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    with sqlite3.connect(tmp_path / "logs/mlflow.db") as db:
        runs = db.execute("select run_uuid from runs").fetchall()
        epochs = db.execute("select step from metrics where key = 'val/acc' order by step").fetchall()
    assert len(runs) == 1, runs
    lineage = yaml.safe_load((RUNS / "version_0/run.yaml").read_text())
    assert lineage["loggers"]["MLFlowLogger"]["run_id"] == runs[0][0]
    assert len(epochs) == 2  # one metric history: epoch 1 from the first segment, epoch 2 from the resume


def test_grouped_checkpoints_load_with_the_readme_line(lit) -> None:
    """docs/usage.md "From Python": the one import line that lets Lightning load a seed_recipe.yaml checkpoint."""
    from conftest import REPO

    lit.fit("--config", str(REPO / "configs/seed_recipe.yaml"), "--config", DEBUG, "--trainer.max_epochs", "1")
    readme = (REPO / "docs/usage.md").read_text()
    snippet = readme.split("<!-- from-python -->")[1].split("```python")[1].split("```")[0]
    path = str(RUNS / "version_0/checkpoints/last.ckpt")
    namespace = {"images": torch.rand(3, 1, 28, 28)}
    exec(snippet.replace("logs/fashion_mnist/version_0/checkpoints/last.ckpt", path), namespace)
    assert namespace["probs"].shape == (3, 10)
    assert torch.allclose(namespace["probs"].sum(-1), torch.ones(3))


def files(run_dir: Path) -> list[str]:
    # TensorBoard opens an event file as its logger starts; what a failed segment logged there is hidden by the next
    # resume (purge_step), so event files are not compared.
    return sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("events."))


def test_a_failed_resume_leaves_the_run_as_it_was(lit, capsys) -> None:
    lit.fit("--trainer.max_epochs", "1")
    before = files(RUNS / "version_0")
    lineage = (RUNS / "version_0/run.yaml").read_text()
    with pytest.raises(SystemExit):  # refused after its config was saved: max_epochs below the checkpoint's epoch
        lit.fit("--ckpt_path", "last", "--trainer.max_epochs", "2", "--divergence_guard.check_every_n_batches", "0")
    assert "check_every_n_batches must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # fails in fit itself, after config.resume1.yaml was written
        lit.fit("--ckpt_path", "last", "--trainer.max_epochs", "2", "--data.batch_size", "32",
                "--trainer.limit_val_batches", "0.5", "--data.eval_batch_size", "5000")  # fmt: skip
    assert files(RUNS / "version_0") == before
    assert (RUNS / "version_0/run.yaml").read_text() == lineage
    lit.fit("--ckpt_path", "last", "--trainer.max_epochs", "2")  # the next resume starts from the run's own config
    assert (RUNS / "version_0/config.resume1.yaml").is_file()
