"""Shared fixtures: small synthetic IDX datasets written by the tests themselves, the real-data location."""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from lit_softmax import fashion_mnist
from lit_softmax.cli import main

REPO = Path(__file__).resolve().parents[1]
# The tests' own user cache of decompressed data (inherited by the CLI subprocesses they start), removed at exit:
# ~80 MB a session, which on a small CI disk adds up.
if "XDG_CACHE_HOME" not in os.environ:
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="lit_softmax-test-cache-")
    atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
SYNTHETIC = {"train": 200, "test": 50}  # 20 / 5 per class


@pytest.fixture(autouse=True)
def _working_directory_restored():
    """A test that moves into its tmp_path must come back (monkeypatch.chdir does): the folder is removed when the test
    passes, and every later test would run in a deleted directory."""
    before = os.getcwd()
    yield
    try:
        now = os.getcwd()
    except FileNotFoundError:  # already removed
        now = None
    os.chdir(before)  # so that one leak fails one test, not every test after it
    assert now == before, "the test changed the working directory: use monkeypatch.chdir, which restores it"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (big-endian header), independently of torchvision."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels; image of class c is bright in row band c so a linear model can learn it."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c + 4 : 2 * c + 6, :] = 250
    return images, labels


@pytest.fixture
def synthetic_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of four synthetic IDX files (.gz), with `fashion_mnist.FILES` pointed at their sizes and hashes."""
    import gzip

    root = tmp_path / "idx"
    root.mkdir()
    files = {}
    for split, n in SYNTHETIC.items():
        images, labels = synthetic_arrays(n, seed=0 if split == "train" else 1)
        for kind, array in (("images", images), ("labels", labels)):
            raw = idx_bytes(array)
            real = fashion_mnist.FILES[f"{split}_{kind}"]
            (root / f"{real.filename}.gz").write_bytes(gzip.compress(raw))
            files[f"{split}_{kind}"] = fashion_mnist.IdxSpec(
                real.filename, array.shape, hashlib.sha256(raw).hexdigest()
            )
    monkeypatch.setattr(fashion_mnist, "FILES", files)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")  # keep the real copy out of view
    return root


def real_data_dir() -> Path | None:
    for d in (fashion_mnist.SYSTEM_DIR, REPO / "data" / "FashionMNIST" / "raw"):
        if (d / "train-images-idx3-ubyte.gz").is_file() or (d / "train-images-idx3-ubyte").is_file():
            return d
    return None


def run_cli(
    *args: str, cwd: Path, timeout: int = 600, launcher: list[str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m lit_softmax ...` (or a launcher in front of `-m lit_softmax`) as a user would."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    command = [sys.executable, *(launcher or []), "-m", "lit_softmax", *args, "--trainer.enable_progress_bar", "false"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


TEST_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


def start_slowed(cwd: Path, *args: str, delay: float = 0.02) -> tuple[subprocess.Popen, Path]:
    """`python -m lit_softmax <args>` in its own process group, slowed down by probes.SlowSteps."""
    progress = cwd / "progress"
    probe = cwd / "probe.yaml"
    probe.write_text(
        f"trainer:\n  callbacks+:\n    - class_path: probes.SlowSteps\n      init_args:\n"
        f"        progress_file: {progress}\n        delay: {delay}\n"
    )
    command = [sys.executable, "-m", "lit_softmax", *args, "--config", str(probe), "--data.data_dir", real_data(cwd),
               "--trainer.enable_progress_bar", "false"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=cwd, env=TEST_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    return proc, progress


def wait_for_progress(proc: subprocess.Popen, progress: Path, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        text = progress.read_text().strip() if progress.exists() else ""
        if text and int(text) >= at_least:
            return
        time.sleep(0.01)
    output = proc.communicate()[0] if proc.poll() is not None else ""
    raise AssertionError(f"never reached {progress.name} >= {at_least}: {output[-2000:]}")


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Read a run's TensorBoard events back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def need_real_data() -> Path:
    found = real_data_dir()
    assert found is not None, "real Fashion-MNIST missing: run `make data` (CI installs it)"
    return found


def real_data(where: Path) -> str:
    """A fresh data_dir under `where` that finds the real dataset: through the system copy when there is one,
    else through links to the copy `make data` unpacked into ./data (machines without root)."""
    source = need_real_data()
    data_dir = where / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if source != fashion_mnist.SYSTEM_DIR:
        for idx_file in source.glob("*-ubyte*"):  # .gz or already decompressed
            link = data_dir / idx_file.name
            if not link.exists():
                link.symlink_to(idx_file)
    return str(data_dir)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One single-process `fit --config configs/fashion_mnist.yaml` on the real data, shared by the slow tests."""
    need_real_data()
    cwd = tmp_path_factory.mktemp("default_run")
    fit = run_cli(
        "fit", "--config", str(REPO / "configs/fashion_mnist.yaml"), "--data.data_dir", real_data(cwd), cwd=cwd
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    (cwd / "fit_output.txt").write_text(fit.stdout + fit.stderr)
    return cwd / "logs" / "fashion_mnist" / "version_0"


DEBUG = str(REPO / "configs/debug.yaml")


@pytest.fixture
def cli(synthetic_dir: Path, tmp_path: Path, monkeypatch, caplog):
    """Runs `python -m lit_softmax fit --config configs/debug.yaml <flags>` in tmp_path on the synthetic data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])
    caplog.set_level(logging.INFO)  # Lightning's (and our) rank-zero info lines

    def run(*flags: str, subcommand: str = "fit") -> None:
        main([subcommand, "--config", DEBUG, "--data.data_dir", str(synthetic_dir), "--data.val_size", "20",
              "--data.batch_size", "32", "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "2",
              *flags])  # fmt: skip

    return run


def error_of(capsys, run, *flags: str, subcommand: str = "fit") -> str:
    """Run the `cli` fixture expecting a user error: exit 2, one message, no traceback; returns stderr."""
    with pytest.raises(SystemExit) as info:
        run(*flags, subcommand=subcommand)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="session")
def postgresql():
    """A real PostgreSQL server on 127.0.0.1 for this test session (servers.PostgreSQL); `.database(name)` -> URL."""
    from servers import PostgreSQL

    server = PostgreSQL()
    yield server
    server.stop()
