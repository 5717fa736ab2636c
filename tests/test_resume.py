"""Resume continues the run: same directory, the whole run's best, a new lr that takes effect, other settings
refused, `--ckpt_path last` never picking another recipe's run; and the bad inputs of resuming and saving.
The CLI is driven in-process (the `cli` fixture) on small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_of, scalars
from PIL import Image

from lit_softmax import checkpoints
from lit_softmax.images import to_fashion_mnist

RUN = Path("logs/debug/version_0")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def best_score(state: dict) -> float:
    return next(float(s["best_model_score"]) for s in state["callbacks"].values() if "best_model_score" in s)


def test_resume_continues_the_run_in_its_directory_with_the_whole_runs_best(cli, tmp_path: Path) -> None:
    cli("--trainer.max_epochs", "4", "--trainer.logger.name", "whole")  # the uninterrupted reference
    cli("--trainer.max_epochs", "2")
    cli("--trainer.max_epochs", "4", "--ckpt_path", "last")
    assert sorted(p.name for p in RUN.parent.iterdir()) == ["version_0"]  # no second run directory
    assert (RUN / "config.yaml").is_file()
    assert (RUN / "config.resume1.yaml").is_file()
    assert "max_epochs: 2" in (RUN / "config.yaml").read_text()  # what the run started with, kept
    assert "max_epochs: 4" in (RUN / "config.resume1.yaml").read_text()

    whole = Path("logs/whole/version_0")
    resumed, reference = load(RUN / "checkpoints" / "last.ckpt"), load(whole / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == reference["global_step"]
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key  # the debug recipe has no schedule: exact
    # The best is the whole run's: the same score, checkpoint and hp_metric as without the interruption.
    assert resumed["val_acc_best"] == reference["val_acc_best"] == pytest.approx(best_score(reference))
    assert best_score(resumed) == best_score(reference)
    assert [p.name for p in (RUN / "checkpoints").glob("epoch*")] == [
        p.name for p in (whole / "checkpoints").glob("epoch*")
    ]
    curves, expected = scalars(RUN), scalars(whole)
    assert curves["val/acc"] == expected["val/acc"]  # one point an epoch: the curve continues, nothing doubled
    assert curves["val/acc_best"] == expected["val/acc_best"]
    assert max(curves["val/acc"]) == pytest.approx(resumed["val_acc_best"])


def test_events_logged_after_the_checkpoint_are_hidden_on_resume(cli, tmp_path: Path) -> None:
    """A crash after last.ckpt leaves events past it; the resumed run purges them, so no step appears twice."""
    cli("--trainer.max_epochs", "2")
    stale = torch.load(RUN / "checkpoints" / "last.ckpt", weights_only=True)
    cli("--trainer.max_epochs", "3", "--ckpt_path", "last")  # events of epoch 2 now exist
    checkpoints.atomic_write_bytes(_saved(stale), RUN / "checkpoints" / "last.ckpt")  # as if it crashed there
    cli("--trainer.max_epochs", "3", "--ckpt_path", "last")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(RUN), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("val/acc")]
    assert steps == sorted(set(steps))
    assert len(steps) == 3


def _saved(state: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_a_new_lr_on_resume_takes_effect(cli, tmp_path: Path, caplog) -> None:
    cli("--trainer.max_epochs", "2")
    cli("--trainer.max_epochs", "3", "--ckpt_path", "last", "--model.lr", "0.01")
    state = load(RUN / "checkpoints" / "last.ckpt")
    assert state["hyper_parameters"]["lr"] == 0.01
    assert [g["lr"] for g in state["optimizer_states"][0]["param_groups"]] == [0.01, 0.01]
    assert "model.lr 0.01 replaces the checkpoint's 0.1" in caplog.text
    assert scalars(RUN)["lr-SGD/pg1"][-1] == pytest.approx(0.01)  # what LearningRateMonitor saw after resuming


@pytest.mark.parametrize("how", ["last", "path"])
def test_other_settings_on_resume_are_refused(cli, tmp_path: Path, capsys, how: str) -> None:
    cli("--trainer.max_epochs", "2")
    before = sorted(p.name for p in RUN.rglob("*"))
    ckpt = "last" if how == "last" else str(RUN / "checkpoints" / "last.ckpt")
    err = error_of(capsys, cli, "--trainer.max_epochs", "3", "--ckpt_path", ckpt, "--model.weight_decay", "0.01")
    assert "model.weight_decay is 0.0 in the checkpoint, 0.01 here" in err
    assert "only model.lr" in err
    assert sorted(p.name for p in RUN.rglob("*")) == before  # nothing written into the run


def test_last_never_resumes_a_run_of_another_recipe(cli, tmp_path: Path, capsys) -> None:
    cli("--trainer.max_epochs", "1")  # version_0: the debug recipe
    cli("--trainer.max_epochs", "1", "--model.label_smoothing", "0.1")  # version_1, newer: another recipe
    cli("--trainer.max_epochs", "2", "--ckpt_path", "last")
    steps = [load(RUN.parent / f"version_{v}" / "checkpoints" / "last.ckpt")["global_step"] for v in (0, 1)]
    assert steps[0] == 2 * steps[1]  # version_0 trained its second epoch; version_1 is untouched
    err = error_of(capsys, cli, "--ckpt_path", "last", "--data.batch_size", "16", subcommand="test")
    assert "no run under logs/debug was trained with this config" in err
    assert "data.batch_size is 32 in the checkpoint, 16 here" in err


def test_max_epochs_below_the_checkpoint_is_one_message(cli, tmp_path: Path, capsys) -> None:
    cli("--trainer.max_epochs", "3")
    saved = load(RUN / "checkpoints" / "last.ckpt")["epoch"]
    err = error_of(capsys, cli, "--trainer.max_epochs", "1", "--ckpt_path", "last")
    assert "--trainer.max_epochs 1 ends before" in err
    assert f"resume with `--trainer.max_epochs {saved}` or more" in err
    err = error_of(capsys, cli, "--trainer.fast_dev_run", "true", "--ckpt_path", "last")  # max_epochs 1 inside
    assert "fast_dev_run runs one epoch" in err
    assert "drop `--ckpt_path`" in err
    cli("--trainer.max_epochs", "3", "--ckpt_path", "last")  # a finished run: restores, trains nothing more
    cli("--trainer.max_epochs", "3", "--ckpt_path", "last")  # and again


def test_a_checkpoint_with_nan_weights_is_refused(cli, tmp_path: Path, capsys) -> None:
    cli("--trainer.max_epochs", "1")
    state = load(RUN / "checkpoints" / "last.ckpt")
    state["state_dict"]["linear.weight"][3, 5] = float("nan")
    broken = tmp_path / "broken.ckpt"
    torch.save(state, broken)
    err = error_of(capsys, cli, "--ckpt_path", str(broken), subcommand="test")
    assert f"refusing {broken}: linear.weight holds NaN or infinite values" in err


def test_num_classes_other_than_ten_is_one_message(cli, tmp_path: Path, capsys) -> None:
    err = error_of(capsys, cli, "--model.num_classes", "12")
    assert "model.num_classes=12, but Fashion-MNIST has 10 classes" in err
    assert not Path("logs").exists()  # nothing left behind


def test_a_run_directory_that_cannot_be_created_is_one_message(cli, tmp_path: Path, capsys) -> None:
    Path("in_the_way").write_text("a file where the logs should go")
    err = error_of(capsys, cli, "--trainer.logger.save_dir", "in_the_way/logs")
    assert "cannot create a run directory under in_the_way/logs/debug (Not a directory)" in err
    if os.geteuid() != 0:  # root writes into read-only directories anyway
        Path("readonly").mkdir(mode=0o555)
        err = error_of(capsys, cli, "--trainer.logger.save_dir", "readonly")
        assert "(Permission denied)" in err


def test_a_full_disk_keeps_the_earlier_checkpoints_and_says_so(cli, tmp_path: Path, capsys, monkeypatch) -> None:
    cli("--trainer.max_epochs", "1")
    before = {p.name: p.read_bytes() for p in (RUN / "checkpoints").iterdir()}
    real_mkstemp = checkpoints.tempfile.mkstemp

    def full_disk(*args, **kwargs):  # the temporary file exists, but every write to it hits a full disk (ENOSPC)
        fd, name = real_mkstemp(*args, **kwargs)
        if ".ckpt." not in kwargs.get("prefix", ""):  # the small config files still fit; the checkpoint does not
            return fd, name
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(checkpoints.tempfile, "mkstemp", full_disk)
    err = error_of(capsys, cli, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert "(No space left on device): the earlier" in err
    assert "is intact" in err
    assert "free some space" in err.lower()
    assert {p.name: p.read_bytes() for p in (RUN / "checkpoints").iterdir()} == before  # no .tmp, nothing lost


def test_sixteen_bit_images_keep_their_grey_levels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    eight = np.zeros((40, 40), np.uint8)
    eight[8:32, 10:30] = rng.integers(60, 250, (24, 20))  # a garment-like blob on black
    sixteen = eight.astype(np.uint16) * 257  # the same picture, 16 bits per pixel
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    with Image.open(tmp_path / "eight.png") as a, Image.open(tmp_path / "sixteen.png") as b:
        assert b.mode.startswith("I")  # really read as a 16-bit image
        got, expected = to_fashion_mnist(b), to_fashion_mnist(a)
    assert len(np.unique(got)) > 20  # grey levels, not black and white
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
