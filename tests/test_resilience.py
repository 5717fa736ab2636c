"""Not losing work: interrupt + exact resume, crash-safe checkpoints, concurrent runs, divergence."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, need_real_data, real_data, run_cli, scalars, start_slowed, wait_for_progress

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
# Two recipes, short enough to run three times each, long enough to interrupt mid-epoch: the textbook pair
# (one SGD step per training_step) and the seed recipe's opt-in grouped steps (16 SGD steps per call).
RECIPES = {
    "textbook": (str(REPO / "configs/fashion_mnist.yaml"), ["--data.batch_size", "1024"], "fashion_mnist", 54),
    "grouped": (str(REPO / "configs/seed_recipe.yaml"), ["--data.batch_size", "512"], "seed_recipe", 108),
}
SHORT = ["--trainer.max_epochs", "2", "--test_after_fit", "false"]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, Path]:
    need_real_data()
    done = {}
    for recipe, (config, batch, name, _) in RECIPES.items():
        cwd = tmp_path_factory.mktemp(f"uninterrupted_{recipe}")
        out = run_cli("fit", "--config", config, *batch, *SHORT, "--data.data_dir", real_data(cwd), cwd=cwd)
        assert out.returncode == 0, out.stderr[-3000:]
        done[recipe] = cwd / "logs" / name / "version_0" / "checkpoints" / "last.ckpt"
    return done


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "signum", "exit_code"),
    [("textbook", signal.SIGINT, 130), ("textbook", signal.SIGTERM, 143), ("grouped", signal.SIGINT, 130),
     ("grouped", signal.SIGTERM, 143)],
    ids=["textbook-SIGINT", "textbook-SIGTERM", "grouped-SIGINT", "grouped-SIGTERM"],
)  # fmt: skip
def test_interrupt_at_random_step_then_resume_is_bit_exact(
    uninterrupted, tmp_path: Path, recipe: str, signum, exit_code
) -> None:
    config, batch, name, steps_per_epoch = RECIPES[recipe]
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    epoch = rng.choice([0, 1])
    target = epoch * steps_per_epoch + rng.randint(5, steps_per_epoch - 25)  # somewhere inside an epoch
    print(f"random seed {seed}: signalling at step >= {target}")
    data = ["--data.data_dir", real_data(tmp_path)]
    proc, progress = start_slowed(tmp_path, "fit", "--config", config, *batch, *SHORT)
    wait_for_progress(proc, progress, target)
    proc.send_signal(signum)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == exit_code, output[-3000:]
    assert f"Interrupted by {signal.Signals(signum).name}" in output
    assert "--ckpt_path last" in output  # says how to resume

    saved = tmp_path / "logs" / name / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(saved, map_location="cpu", weights_only=True)
    assert state["global_step"] >= target
    assert state["global_step"] % steps_per_epoch != 0, "meant to test a mid-epoch stop"

    if recipe == "grouped" and signum == signal.SIGINT:  # resuming mid-epoch with another grouping cannot line up
        regrouped = run_cli("fit", "--config", config, *batch, *SHORT, *data, "--ckpt_path", "last",
                            "--data.steps_per_call", "4", cwd=tmp_path)  # fmt: skip
        assert regrouped.returncode == 2, regrouped.stderr[-3000:]
        assert "resume with `--data.steps_per_call 16`" in regrouped.stderr
        assert "Traceback" not in regrouped.stderr
        assert sorted(d.name for d in (tmp_path / "logs" / name).iterdir()) == ["version_0"]

    resumed = run_cli("fit", "--config", config, *batch, *SHORT, *data, "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    assert_resumed_run_equals(tmp_path / "logs" / name, uninterrupted[recipe], 2 * steps_per_epoch, seed)


def assert_resumed_run_equals(runs: Path, uninterrupted: Path, steps: int, seed: int) -> None:
    """The resumed run went on in its own directory and ended as the uninterrupted run did: weights, best score,
    best checkpoint."""
    assert sorted(d.name for d in runs.iterdir()) == ["version_0"]
    final = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    expected = torch.load(uninterrupted, weights_only=True)
    assert final["global_step"] == expected["global_step"] == steps
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, final["state_dict"][key]), f"{key} differs after resume (seed {seed})"
    assert final["val_acc_best"] == expected["val_acc_best"]
    best = sorted(p.name for p in (runs / "version_0" / "checkpoints").glob("epoch*"))
    assert best == sorted(p.name for p in uninterrupted.parent.glob("epoch*"))


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_at_most_the_epoch_under_way(uninterrupted, tmp_path: Path) -> None:
    """No handler runs on SIGKILL: what is on disk is what survives. last.ckpt is written at every epoch end."""
    config, batch, name, steps_per_epoch = RECIPES["textbook"]
    seed = random.randrange(10**6)
    target = random.Random(seed).randint(steps_per_epoch + 2, 2 * steps_per_epoch - 4)  # inside the second epoch
    data = ["--data.data_dir", real_data(tmp_path)]
    proc, progress = start_slowed(tmp_path, "fit", "--config", config, *batch, *SHORT)
    wait_for_progress(proc, progress, target)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    last = tmp_path / "logs" / name / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == steps_per_epoch, f"seed {seed}: not epoch 0's end"

    resumed = run_cli("fit", "--config", config, *batch, *SHORT, *data, "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_resumed_run_equals(tmp_path / "logs" / name, uninterrupted["textbook"], 2 * steps_per_epoch, seed)


CRASH = textwrap.dedent(
    """
    import os, signal, sys, torch
    from pathlib import Path
    from lit_softmax.checkpoints import AtomicCheckpointIO
    path, where = Path(sys.argv[1]), sys.argv[2]
    real_write = os.write
    if where == "write":  # die halfway through writing the bytes
        import io
        real_fdopen = os.fdopen
        def fdopen(fd, mode="r", *a, **k):
            f = real_fdopen(fd, mode, *a, **k)
            w = f.write
            def half(data):
                w(data[: len(data) // 2]); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
            f.write = half
            return f
        os.fdopen = fdopen
    else:  # die after writing, just before the rename
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((1000,), 2.0)}}, path)
    """
)


@pytest.mark.parametrize("where", ["write", "rename"])
def test_killed_while_writing_a_checkpoint_leaves_the_old_one_loadable(tmp_path: Path, where: str) -> None:
    from lit_softmax.checkpoints import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, path)
    crash = subprocess.run([sys.executable, "-c", CRASH, str(path), where], env=ENV, capture_output=True)
    assert crash.returncode == -signal.SIGKILL
    assert torch.equal(weights(path)["w"], torch.ones(1000))  # the previous checkpoint, intact
    assert [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"] in (
        [],
        [p.name for p in tmp_path.glob(".*tmp")],
    )
    assert oct(path.stat().st_mode & 0o777) != "0o600" or os.umask(0o022) == 0o077  # normal permissions


def test_concurrent_data_preparation_never_corrupts_the_cache(tmp_path: Path) -> None:
    """Two processes decompressing the same .gz files into one data_dir at once: both verify their data."""
    system = need_real_data()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for gz in system.glob("*.gz"):
        (data_dir / gz.name).symlink_to(gz)
    script = (
        "import sys; from lit_softmax import FashionMNISTDataModule as D; "
        "d = D(data_dir=sys.argv[1], download=False); d.prepare_data(); d.setup('fit'); d.setup('test'); print('ok')"
    )
    env = {**ENV, "XDG_CACHE_HOME": str(tmp_path / "xdg")}  # an empty cache: both processes decompress
    procs = [subprocess.Popen([sys.executable, "-c", script, str(data_dir)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    cache = tmp_path / "xdg" / "lit_softmax" / "fashion-mnist"
    assert sorted(p.name for p in cache.glob("*/*")) == sorted(gz.stem for gz in system.glob("*.gz"))  # no .tmp


@pytest.mark.slow
def test_two_runs_of_one_config_started_together_get_separate_directories(tmp_path: Path) -> None:
    need_real_data()
    args = ["fit", "--config", str(REPO / "configs/debug.yaml"), "--data.data_dir", real_data(tmp_path),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    command = [sys.executable, "-m", "lit_softmax", *args]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    runs = sorted((tmp_path / "logs" / "debug").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:
        assert (run / "config.yaml").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert len(list(run.glob("events.out.tfevents.*"))) == 1  # each run wrote only its own events


@pytest.mark.slow
def test_divergence_stops_with_the_step_and_keeps_good_checkpoints(tmp_path: Path) -> None:
    need_real_data()
    probe = tmp_path / "blow_up.yaml"
    probe.write_text("trainer:\n  callbacks+:\n    - class_path: probes.BlowUpAt\n      init_args:\n        epoch: 1\n")
    out = run_cli("fit", "--config", str(REPO / "configs/debug.yaml"), "--config", str(probe),
                  "--data.data_dir", real_data(tmp_path), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 3, out.stderr[-3000:]
    assert "training diverged: the training loss became NaN or infinite at epoch 1, between global steps" in out.stderr
    assert "Lower the learning rate (model.lr=0.1), e.g. `--model.lr 0.01`" in out.stderr
    hp_metric = scalars(tmp_path / "logs" / "debug" / "version_0")["hp_metric"]  # the HParams tab shows it too
    assert hp_metric[-1] > 0.5
    assert "Traceback" not in out.stderr
    checkpoints = list((tmp_path / "logs" / "debug" / "version_0" / "checkpoints").iterdir())
    assert len(checkpoints) == 2  # epoch 0's best and last, from before the divergence
    for ckpt in checkpoints:
        state = torch.load(ckpt, weights_only=True)
        assert state["epoch"] == 0
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values())


def _offline(self, *args, **kwargs):
    raise __import__("urllib.error").error.URLError("[Errno -3] Temporary failure in name resolution")


def _truncate_gz(d: Path) -> str:
    gz = d / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:300])
    return r"train-images-idx3-ubyte.gz is not a readable gzip file.*Delete it"


def _rewrite(d: Path, name: str, mangle) -> None:
    import gzip

    gz = d / f"{name}.gz"
    gz.write_bytes(gzip.compress(mangle(gzip.decompress(gz.read_bytes()))))


@pytest.mark.parametrize(
    "case",
    [
        "missing-offline",
        "truncated-gz",
        "wrong-magic",
        "label-out-of-range",
        "wrong-count",
        "test-images-corrupt",
        "test-labels-wrong",
    ],
)
def test_bad_data_exits_nonzero_with_one_message_and_no_run_left(
    case: str, synthetic_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import torchvision.datasets.mnist as tv_mnist

    from lit_softmax.cli import main

    monkeypatch.setattr(tv_mnist.MNIST, "download", _offline)
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])
    data_dir = synthetic_dir
    if case == "missing-offline":
        data_dir, message = tmp_path / "empty", r"(?s)downloading Fashion-MNIST .* failed.*apt-get install"
    elif case == "truncated-gz":
        message = _truncate_gz(data_dir)
    elif case == "wrong-magic":
        _rewrite(data_dir, "train-labels-idx1-ubyte", lambda raw: b"\x00\x00\x99\x01" + raw[4:])
        message = r"train-labels-idx1-ubyte is not a valid IDX file"
    elif case == "label-out-of-range":
        _rewrite(data_dir, "train-labels-idx1-ubyte", lambda raw: raw[:-1] + b"\x0b")
        message = r"train-labels-idx1-ubyte has label 11, expected labels in 0\.\.9"
    elif case == "wrong-count":
        _rewrite(data_dir, "train-images-idx3-ubyte", lambda raw: raw[: -784 * 5])
        message = r"train-images-idx3-ubyte is not a valid IDX file"  # the header promises 5 more images
    elif case == "test-images-corrupt":  # `fit` without a test still checks the test files, before training
        _rewrite(data_dir, "t10k-images-idx3-ubyte", lambda raw: b"\x00\x00\x99\x03" + raw[4:])
        message = r"t10k-images-idx3-ubyte is not a valid IDX file"
    else:
        _rewrite(data_dir, "t10k-labels-idx1-ubyte", lambda raw: raw[:-1] + bytes([(raw[-1] + 1) % 10]))
        message = r"t10k-labels-idx1-ubyte has class counts"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(REPO / "configs/debug.yaml"), "--data.data_dir", str(data_dir),
              "--data.val_size", "20", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err
    assert err.count("lit_softmax: error:") == 1
    assert "Traceback" not in err
    assert not list((tmp_path / "logs").glob("*/version_*")), "a failed run left a directory that looks like a run"


class _Stop(Exception):
    pass


class SaveAt(L.Callback):
    """Writes a checkpoint at the end of one global step, as `ModelCheckpoint(every_n_train_steps=...)` would,
    and with `stop=True` ends the run there, as an interrupt does."""

    def __init__(self, step: int, path: Path, stop: bool = False) -> None:
        self.step, self.path, self.stop = step, path, stop

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            if self.stop:
                raise _Stop


@pytest.mark.parametrize("step", [5, 12, 17])  # mid-epoch 0, the end of epoch 0, mid-epoch 1 (12 steps an epoch)
def test_mid_epoch_resume_is_exact_with_a_cosine_schedule(synthetic_dir: Path, tmp_path: Path, step: int) -> None:
    """The cosine schedule asks for `trainer.estimated_stepping_batches`, after which Lightning (2.6, issue #20550)
    never gives a stateful loader its saved position back: the DataModule restores it itself."""
    from lit_softmax import FashionMNISTDataModule, SoftmaxRegression

    def fit(*callbacks, ckpt_path=None) -> SoftmaxRegression:
        torch.manual_seed(0)
        model = SoftmaxRegression(normalize="none", lr=0.05, momentum=0.5, scheduler="cosine")
        dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=16, download=False)
        trainer = L.Trainer(
            max_epochs=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, callbacks=list(callbacks),
        )  # fmt: skip
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model

    whole = fit()
    ckpt = tmp_path / "stopped.ckpt"
    with pytest.raises(_Stop):
        fit(SaveAt(step, ckpt, stop=True))
    resumed = fit(ckpt_path=ckpt)
    assert torch.equal(resumed.linear.weight, whole.linear.weight)
    assert torch.equal(resumed.linear.bias, whole.linear.bias)


def test_nan_weights_are_never_saved_even_between_checks(synthetic_dir: Path, tmp_path: Path) -> None:
    """The guard looks rarely (here: not within the epoch); the check before each checkpoint write catches it."""
    from probes import BlowUpAt

    from lit_softmax import FashionMNISTDataModule, SoftmaxRegression
    from lit_softmax.callbacks import DivergenceGuard, TrainingDiverged

    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=16, download=False)
    good, bad = tmp_path / "epoch0.ckpt", tmp_path / "step15.ckpt"
    trainer = L.Trainer(
        max_epochs=3, default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[DivergenceGuard(check_every_n_batches=1000), BlowUpAt(epoch=1), SaveAt(12, good), SaveAt(15, bad)],
    )  # fmt: skip
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, between global steps 12 and 15"):
        trainer.fit(SoftmaxRegression(), datamodule=dm)
    assert not bad.exists(), "NaN weights were written"
    assert all(torch.isfinite(t).all() for t in torch.load(good, weights_only=True)["state_dict"].values())
