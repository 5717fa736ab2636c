"""The command line as a user drives it: configs parse, compose and override; bad values fail before training."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, need_real_data, real_data, run_cli

from lit_softmax.cli import main

CONFIGS = sorted(c for c in (REPO / "configs").glob("*.yaml") if c.name != "sweep.yaml")  # sweep: test_sweep.py


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch) -> None:
    # main(args) is the whole command line; pytest's own argv must not look like extra CLI arguments.
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])


def print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as info:
        main([*args, "--print_config"])
    assert info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses(capsys, config: Path) -> None:
    resolved = print_config(capsys, "fit", "--config", str(config))
    mine = yaml.safe_load(config.read_text())
    # Every value the file sets is in the resolved config, unchanged.
    for section in ("model", "data"):
        given = mine.get(section) or {}
        if "class_path" in given:  # the grouped-steps classes (configs/seed_recipe.yaml)
            assert resolved[section]["class_path"] == given["class_path"]
            given = given.get("init_args") or {}
        for key, value in given.items():
            assert resolved[section]["init_args"][key] == value, f"{config.name}: {section}.{key}"
    for key, value in (mine.get("trainer") or {}).items():
        if isinstance(value, dict) and "class_path" in value and key != "logger":  # e.g. the DDP strategy
            assert resolved["trainer"][key]["class_path"] == value["class_path"], f"{config.name}: trainer.{key}"
            for arg, arg_value in (value.get("init_args") or {}).items():
                assert resolved["trainer"][key]["init_args"][arg] == arg_value, f"{config.name}: trainer.{key}.{arg}"
        elif key not in ("logger", "callbacks"):
            assert resolved["trainer"][key] == value, f"{config.name}: trainer.{key}"
        elif key == "callbacks":
            assert [c["class_path"] for c in resolved["trainer"][key]] == [c["class_path"] for c in value]


def test_print_config_round_trips(capsys, tmp_path: Path) -> None:
    first = print_config(capsys, "fit", "--config", str(REPO / "configs/fashion_mnist.yaml"))
    saved = tmp_path / "full.yaml"
    saved.write_text(yaml.safe_dump(first))
    assert print_config(capsys, "fit", "--config", str(saved)) == first


def test_configs_compose_and_command_line_overrides(capsys) -> None:
    resolved = print_config(
        capsys, "fit",
        "--config", str(REPO / "configs/fashion_mnist.yaml"),
        "--config", str(REPO / "configs/debug.yaml"),
        "--model.lr", "0.05", "--trainer.max_epochs", "3",
    )  # fmt: skip
    assert resolved["model"]["init_args"]["lr"] == 0.05
    assert resolved["trainer"]["max_epochs"] == 3
    assert resolved["model"]["init_args"]["weight_decay"] == 0.002  # from the first file
    assert resolved["trainer"]["limit_train_batches"] == 20  # from the second
    assert resolved["trainer"]["logger"]["init_args"]["name"] == "debug"  # the later file wins
    assert resolved["checkpoint"]["monitor"] == "val/acc"
    assert resolved["checkpoint"]["save_last"] is True


def test_defaults_are_the_classes_signatures(capsys) -> None:
    import inspect

    from lit_softmax import FashionMNISTDataModule, SoftmaxRegression

    resolved = print_config(capsys, "fit")
    for section, cls in (("model", SoftmaxRegression), ("data", FashionMNISTDataModule)):
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        assert resolved[section]["class_path"] == f"lit_softmax.{cls.__name__}"  # the textbook pair by default
        assert resolved[section]["init_args"] == defaults


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.batch_size", "0"], r"data.batch_size must be >= 1, got 0"),
        (["--data.val_size", "60000"], r"data.val_size must be in 1..59999"),
        (["--model.lr", "-0.1"], r"model.lr must be a positive number, got -0.1"),
        (["--model.no_such_key", "1"], r"no_such_key"),
        (
            ["--model.lr", "fast"],
            r"(?s)Parser key \"model\".*Parser key \"lr\".*Expected a <class 'float'>. Got value: fast",
        ),
        (["--model.optimizer", "rmsprop"], r"rmsprop"),
        (
            [
                "--model.class_path",
                "lit_softmax.grouped.GroupedSoftmaxRegression",
                "--data.class_path",
                "lit_softmax.grouped.GroupedFashionMNIST",
                "--data.steps_per_call",
                "0",
            ],
            r"data.steps_per_call must be >= 1, got 0",
        ),
        (["--interrupt.sync_every_n_batches", "0"], r"interrupt.sync_every_n_batches must be >= 1, got 0"),
        (["--divergence_guard.check_every_n_batches", "0"], r"divergence_guard.check_every_n_batches must be >= 1"),
        (["--dashboard.every_n_val_epochs", "-1"], r"dashboard.every_n_val_epochs must be >= 0, got -1"),
    ],
    ids=[
        "batch-size-0",
        "val-size-too-big",
        "negative-lr",
        "unknown-key",
        "wrong-type",
        "bad-choice",
        "group-0",
        "interrupt-sync-0",
        "divergence-check-0",
        "dashboard-negative",
    ],
)
def test_bad_values_fail_before_training(capsys, tmp_path: Path, monkeypatch, args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(REPO / "configs/debug.yaml"), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "logs").exists(), "nothing may be written before the config is valid"


def test_unknown_key_in_config_file(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  learning_rate: 0.1\n")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(bad)])
    assert info.value.code == 2
    assert "learning_rate" in capsys.readouterr().err


def test_fit_then_test_best_in_subprocesses(tmp_path: Path) -> None:
    """`python -m lit_softmax fit` as a user runs it, on the real data; then `test --ckpt_path best`."""
    need_real_data()
    common = ["--config", str(REPO / "configs/debug.yaml"), "--data.data_dir", real_data(tmp_path)]
    fit = run_cli("fit", *common, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = tmp_path / "logs" / "debug" / "version_0"
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts, ckpts
    assert len(ckpts) == 2, ckpts
    assert (run / "config.yaml").is_file()
    assert (run / "hparams.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))

    test = run_cli("test", *common, "--ckpt_path", "best", cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    best = next(p for p in (run / "checkpoints").iterdir() if p.name != "last.ckpt")
    assert str(best.relative_to(tmp_path)) in test.stdout + test.stderr
    assert "test/acc" in test.stdout
    # A second run never lands in the first one's directory.
    assert (tmp_path / "logs" / "debug" / "version_1" / "config.yaml").is_file()


def test_best_without_any_run_is_a_clear_error(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["test", "--config", str(REPO / "configs/debug.yaml"), "--ckpt_path", "best"])
    assert info.value.code == 2
    assert "no run with checkpoints under logs/debug: train first" in capsys.readouterr().err


def test_missing_checkpoint_path_is_a_clear_error(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["test", "--config", str(REPO / "configs/debug.yaml"), "--ckpt_path", "nope.ckpt"])
    assert info.value.code == 2
    assert "checkpoint nope.ckpt does not exist" in capsys.readouterr().err


class _Payload:
    """Unpickling this runs code: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _ckpt_error(capsys, tmp_path: Path, ckpt: Path) -> str:
    with pytest.raises(SystemExit) as info:
        main(["test", "--config", str(REPO / "configs/debug.yaml"), "--ckpt_path", str(ckpt)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "logs").exists(), "refused before anything was written"
    return err


def test_corrupt_checkpoint_is_a_clear_error(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    assert "broken.ckpt cannot be read as a checkpoint" in _ckpt_error(capsys, tmp_path, bad)


def test_checkpoint_with_code_payload_is_refused_not_run(capsys, tmp_path: Path, monkeypatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, evil)
    err = _ckpt_error(capsys, tmp_path, evil)
    assert "refusing to load" in err
    assert "weights_only=True" in err
    assert not marker.exists(), "the payload ran"


def test_checkpoint_of_another_model_shape_is_a_clear_error(capsys, tmp_path: Path, monkeypatch) -> None:
    import torch

    from lit_softmax import SoftmaxRegression

    monkeypatch.chdir(tmp_path)
    other = tmp_path / "five_classes.ckpt"
    torch.save({"state_dict": SoftmaxRegression(num_classes=5).state_dict()}, other)
    err = _ckpt_error(capsys, tmp_path, other)
    assert "does not fit this model: linear.weight is shape (5, 784), expected shape (10, 784)" in err


@pytest.mark.parametrize(
    ("args", "refresh_rate"),
    [
        ([], 10),  # the config's bar: redrawn every 10th batch instead of every batch
        # Another callback added to the config's list keeps the config's bar.
        (["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/acc"], 10),
        (["--trainer.enable_progress_bar", "false"], None),  # works although the config lists a bar
    ],
    ids=["default", "other-callback", "disabled"],
)
def test_progress_bar_comes_from_the_config(args: list[str], refresh_rate) -> None:
    from lit_softmax import FashionMNISTDataModule, SoftmaxRegression
    from lit_softmax.cli import TRAINER_DEFAULTS, SoftmaxCLI

    cli = SoftmaxCLI(SoftmaxRegression, FashionMNISTDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     trainer_defaults=TRAINER_DEFAULTS, run=False,
                     args=["--config", str(REPO / "configs/fashion_mnist.yaml"), *args])  # fmt: skip
    bar = cli.trainer.progress_bar_callback
    assert (bar.refresh_rate if bar is not None else None) == refresh_rate
