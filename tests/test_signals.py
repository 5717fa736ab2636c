"""Signals as a cluster sends them, to real processes: SIGTERM/SIGINT to a 2-process DDP run (to its whole process
group, as SLURM and torchrun do, or to one rank) at random steps, repeated so that a 1-in-10 hang fails; exact
resume after it; and signals during test/validate/predict and the final test of `fit`, which write nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, need_real_data, real_data, run_cli, start_slowed, wait_for_progress

CONFIG = str(REPO / "configs/fashion_mnist.yaml")
DDP = ["--config", CONFIG, "--config", str(REPO / "configs/ddp_cpu.yaml"), "--data.batch_size", "1024",
       "--trainer.max_epochs", "2", "--test_after_fit", "false"]  # fmt: skip
STEPS_PER_EPOCH = 54  # 55,000 / 1,024 global
SYNC = 10  # GracefulInterrupt's default sync_every_n_batches


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    """Wait for the process; a hang kills the whole group and fails."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("hung after the signal: " + proc.communicate()[0][-3000:]) from None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def ddp_uninterrupted(tmp_path_factory) -> Path:
    need_real_data()
    cwd = tmp_path_factory.mktemp("ddp_uninterrupted")
    fit = run_cli("fit", *DDP, "--data.data_dir", real_data(cwd), cwd=cwd)
    assert fit.returncode == 0, fit.stderr[-3000:]
    return cwd / "logs" / "fashion_mnist" / "version_0" / "checkpoints" / "last.ckpt"


# Ten tries: SIGTERM and Ctrl-C, to the whole process group and to either rank alone.
TRIES = [("group", signal.SIGTERM), ("rank0", signal.SIGTERM), ("rank1", signal.SIGTERM), ("group", signal.SIGINT),
         ("rank1", signal.SIGINT)] * 2  # fmt: skip


@pytest.mark.slow
def test_ddp_signals_at_random_steps_stop_every_process_then_resume_exactly(ddp_uninterrupted, tmp_path) -> None:
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    for i, (to, signum) in enumerate(TRIES):
        cwd = tmp_path / f"try{i}"
        cwd.mkdir()
        target = rng.randint(3, 2 * STEPS_PER_EPOCH - 15)
        where = f"try {i} (seed {seed}): {signal.Signals(signum).name} to {to} at step >= {target}"
        proc, progress = start_slowed(cwd, "fit", *DDP)
        wait_for_progress(proc, progress, target)
        if to == "group":
            os.killpg(proc.pid, signum)
        else:
            pid = proc.pid if to == "rank0" else int(Path(f"{progress}.rank1").read_text())
            os.kill(pid, signum)
        signalled = time.monotonic()
        output = finish(proc)
        assert proc.returncode == 128 + signum, f"{where}: exit {proc.returncode}\n{output[-3000:]}"
        while group_alive(proc.pid) and time.monotonic() - signalled < 20:
            time.sleep(0.1)
        assert not group_alive(proc.pid), f"{where}: a process of the run is still alive"
        assert time.monotonic() - signalled < 20, where
        assert "Traceback" not in output, f"{where}\n{output[-3000:]}"
        for rank in (0, 1):
            assert f"[rank {rank}] Interrupted by {signal.Signals(signum).name}" in output, where
        state = torch.load(cwd / "logs/fashion_mnist/version_0/checkpoints/last.ckpt", weights_only=True)
        step = state["global_step"]
        assert step >= target, where
        # where the processes agree: every SYNC batches of an epoch, and at its last batch
        assert step % STEPS_PER_EPOCH % SYNC == 0, f"{where}: stopped at step {step}"

    # The last try's checkpoint, resumed with the same 2-process config, ends where the uninterrupted run does.
    resumed = run_cli("fit", *DDP, "--data.data_dir", real_data(cwd), "--ckpt_path", "last", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(cwd / "logs/fashion_mnist/version_0/checkpoints/last.ckpt", weights_only=True)
    expected = torch.load(ddp_uninterrupted, weights_only=True)
    assert final["global_step"] == expected["global_step"] == 2 * STEPS_PER_EPOCH
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, final["state_dict"][key]), f"{key} differs after resume (seed {seed})"
    assert final["val_acc_best"] == expected["val_acc_best"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One epoch of the default recipe: a checkpoint to evaluate."""
    need_real_data()
    cwd = tmp_path_factory.mktemp("trained")
    fit = run_cli("fit", "--config", CONFIG, "--trainer.max_epochs", "1", "--test_after_fit", "false",
                  "--data.data_dir", real_data(cwd), cwd=cwd)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    return next((cwd / "logs/fashion_mnist/version_0/checkpoints").glob("epoch*.ckpt"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("subcommand", "signum"),
    [("test", signal.SIGTERM), ("validate", signal.SIGINT), ("predict", signal.SIGTERM), ("fit", signal.SIGTERM)],
)
def test_signals_outside_training_stop_without_writing_checkpoints(trained: Path, tmp_path: Path, subcommand,
                                                                    signum) -> None:  # fmt: skip
    small_batches = ["--data.eval_batch_size", "100"]  # many evaluation batches: time to signal in the middle
    if subcommand == "fit":  # the final test of fit: training is over, the test of the best checkpoint runs
        args = ["fit", "--config", CONFIG, "--trainer.max_epochs", "1", *small_batches]
        stage = "test"
    else:
        args = [subcommand, "--config", CONFIG, "--ckpt_path", str(trained), *small_batches]
        stage = subcommand
    proc, progress = start_slowed(tmp_path, *args, delay=0.05)
    wait_for_progress(proc, Path(f"{progress}.{stage}"), 5)
    proc.send_signal(signum)
    output = finish(proc)
    assert proc.returncode == 128 + signum, output[-3000:]
    assert f"Interrupted by {signal.Signals(signum).name} during {stage}: stopped, nothing written." in output
    assert "Traceback" not in output
    assert not list(tmp_path.rglob("predictions*.csv"))
    if subcommand == "fit":  # the training checkpoints are those of the finished epoch, none written after
        state = torch.load(tmp_path / "logs/fashion_mnist/version_0/checkpoints/last.ckpt", weights_only=True)
        assert state["global_step"] == 27  # 55,000 / 2,048 rounded up: one whole epoch
    else:  # nothing at all: no run directory for the stopped evaluation
        assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("*.ckpt"))
        assert not list((tmp_path / "logs").rglob("version_*")) if (tmp_path / "logs").exists() else True
