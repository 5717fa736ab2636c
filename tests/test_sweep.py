"""`sweep`: Optuna over a real SQLite study. A sweep killed with SIGKILL mid-trial continues when run again; two
sweep processes share one study; best.yaml reproduces its val/acc; bad input leaves the study as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO, TEST_ENV, need_real_data, real_data, run_cli, scalars

from lit_softmax import sweep
from lit_softmax.__main__ import main

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def sweep_config(where: Path, n_trials: int = 3, delay: float = 0.0, **space) -> Path:
    """A small sweep over the debug recipe on the real data; `delay` slows each step (probes.SlowSteps)."""
    args = ["--data.data_dir", real_data(where), "--trainer.limit_train_batches", "8", "--trainer.max_epochs", "2"]
    if delay:
        probe = where / "slow.yaml"
        probe.write_text(
            "trainer:\n  callbacks+:\n    - class_path: probes.SlowSteps\n      init_args:\n"
            f"        progress_file: {where / 'progress'}\n        delay: {delay}\n"
        )
        args += ["--config", str(probe)]
    config = {
        "base": [str(REPO / "configs/debug.yaml")],
        "args": args,
        "study": {"name": "small", "n_trials": n_trials, "seed": 0},
        "space": space
        or {"model.lr": {"low": 0.01, "high": 1.0, "log": True}, "data.batch_size": {"choices": [64, 256]}},
    }
    path = where / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def study(where: Path) -> optuna.Study:
    return optuna.load_study(study_name="small", storage=f"sqlite:///{where / 'logs/small/study.db'}")


def start(where: Path, config: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "lit_softmax", "sweep", "--config", str(config)]
    return subprocess.Popen(command, cwd=where, env=TEST_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip


@pytest.mark.slow
def test_sweep_writes_runs_a_study_and_a_best_yaml_that_reproduces_its_val_acc(tmp_path: Path) -> None:
    need_real_data()
    proc = start(tmp_path, sweep_config(tmp_path))
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3
    assert all("val/acc 0." in line and "best 0." in line and "model.lr=" in line for line in lines)
    trials = study(tmp_path).get_trials(states=FINISHED)
    assert len(trials) == 3
    for trial in trials:  # every trial is a normal run directory
        run = Path(trial.user_attrs["run"])
        assert (tmp_path / run / "config.yaml").is_file()
        assert (tmp_path / run / "checkpoints" / "last.ckpt").is_file()
        assert scalars(tmp_path / run)["val/acc_best"][-1] == pytest.approx(trial.value)
        assert "test/acc" not in scalars(tmp_path / run)  # the objective never looks at test
    best = tmp_path / "logs/small/best.yaml"
    assert best.is_file()
    refit = run_cli("fit", "--config", str(best), cwd=tmp_path)
    assert refit.returncode == 0, refit.stderr[-3000:]
    again = scalars(tmp_path / "logs/small_best/version_0")
    assert again["val/acc_best"][-1] == pytest.approx(study(tmp_path).best_value, abs=1e-6)
    assert "test/acc" in again  # the best config reports test, once


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_continues_when_run_again(tmp_path: Path) -> None:
    need_real_data()
    config = sweep_config(tmp_path, n_trials=4, delay=0.15)  # ~2.5 s a trial
    proc = start(tmp_path, config)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "logs/small/version_1/checkpoints").exists():
        time.sleep(0.05)  # trial 1 has trained an epoch: kill it in the middle of its second
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    states = [t.state for t in study(tmp_path).get_trials()]
    assert optuna.trial.TrialState.RUNNING in states, states  # the killed trial, as the crash left it

    time.sleep(sweep.GRACE_S)  # a restarted job comes later; a trial without heartbeat that long is dead
    rerun = start(tmp_path, config)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output[-3000:]
    trials = study(tmp_path).get_trials()
    assert len([t for t in trials if t.state in FINISHED]) == 4  # exactly the number requested
    killed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1  # marked failed, not lost, not left running
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert [t.params for t in retried] == [killed[0].params]  # run again with the same values
    runs = [t.user_attrs["run"] for t in trials if t.state in FINISHED]
    assert len(set(runs)) == len(runs)  # no run directory shared or overwritten


@pytest.mark.slow
def test_two_sweep_processes_share_one_sqlite_study(tmp_path: Path) -> None:
    need_real_data()
    config = sweep_config(tmp_path, n_trials=4, delay=0.05)
    (tmp_path / "logs/small").mkdir(parents=True)
    procs = [start(tmp_path, config) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = study(tmp_path).get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    # Each process stops once the study has 4; both can be mid-trial at that moment, so one may finish a 5th.
    assert 4 <= len(finished) <= 5
    assert len({t.number for t in trials}) == len(trials)
    assert all(any(line.startswith("trial ") for line in out.splitlines()) for out in outputs)  # both worked
    assert len({t.user_attrs["run"] for t in finished}) == len(finished)


@pytest.mark.slow
def test_sweeps_started_together_on_a_new_database_both_open_it(tmp_path: Path) -> None:
    """Both create the tables; the loser used to stop with "table studies already exists"."""
    script = (
        "import sys, time; from lit_softmax.sweep import open_storage\n"
        "time.sleep(max(0, float(sys.argv[2]) - time.time()))  # imports done: open at the same moment\n"
        "open_storage(sys.argv[1])"
    )
    for round_ in range(3):
        url, at = f"sqlite:///{tmp_path / f'round{round_}.db'}", str(time.time() + 10)
        command = [sys.executable, "-W", "ignore", "-c", script, url, at]
        procs = [subprocess.Popen(command, env=TEST_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]  # fmt: skip
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs


@pytest.fixture
def sweep_cli(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])

    def run(config: Path, *flags: str) -> str:
        with pytest.raises(SystemExit) as info:
            main(["sweep", "--config", str(config), *flags])
        assert info.value.code == 2
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return captured.out + captured.err

    return run


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.lr": {"low": 1.0, "high": 0.1}}, "search space model.lr: needs numbers low < high, got low=1.0"),
        ({"data.batch_size": {"choices": []}}, "search space data.batch_size: `choices` must be a non-empty list"),
        ({"model.lr": {"low": 0.0, "high": 1.0, "log": True}}, "a log scale needs low > 0"),
        ({"lr": {"low": 0.1, "high": 1.0}}, "search space key 'lr': expected `model.<arg>`"),
        ({"model.no_such_arg": {"low": 0.1, "high": 1.0}}, "no_such_arg"),
    ],
    ids=["empty-range", "no-choices", "log-of-zero", "no-section", "unknown-key"],
)  # fmt: skip
def test_bad_search_spaces_are_one_message_before_any_trial(sweep_cli, tmp_path: Path, space, message) -> None:
    need_real_data()
    out = sweep_cli(sweep_config(tmp_path, **space))
    assert message in out
    assert not (tmp_path / "logs/small/study.db").exists() or not study(tmp_path).trials


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n_trials", "0"], "n_trials must be >= 1"),
        (["--timeout", "-5"], "timeout > 0, got n_trials=3, timeout=-5.0"),
    ],
)
def test_bad_trial_counts_are_one_message(sweep_cli, tmp_path: Path, flags, message) -> None:
    need_real_data()
    assert message in sweep_cli(sweep_config(tmp_path), *flags)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--trainer.fast_dev_run", "true"], "fast_dev_run keeps no run directory"),
     (["--trainer.logger", "false"], "the sweep's trials need a logger")],
    ids=["fast_dev_run", "logger-false"],
)  # fmt: skip
def test_flags_that_leave_trials_nothing_to_compare_are_one_message(sweep_cli, tmp_path: Path, args, message) -> None:
    need_real_data()
    config = sweep_config(tmp_path)
    spec = yaml.safe_load(config.read_text())
    spec["args"] += args
    config.write_text(yaml.safe_dump(spec))
    assert message in sweep_cli(config)
    assert not (tmp_path / "logs/small/study.db").exists()


def test_an_unreachable_storage_is_one_message(sweep_cli, tmp_path: Path) -> None:
    need_real_data()
    out = sweep_cli(sweep_config(tmp_path), "--storage", "sqlite:////nonexistent/dir/study.db")
    assert "cannot open the study storage sqlite:////nonexistent/dir/study.db" in out


def test_continuing_a_study_with_another_space_or_direction_leaves_it_intact(sweep_cli, tmp_path: Path) -> None:
    need_real_data()
    url = f"sqlite:///{tmp_path / 'logs/small/study.db'}"
    (tmp_path / "logs/small").mkdir(parents=True)
    existing = optuna.create_study(study_name="small", storage=url, direction="maximize")
    existing.set_user_attr("space", {"model.lr": {"type": "float", "low": 0.5, "high": 0.9, "log": False}})
    out = sweep_cli(sweep_config(tmp_path))
    assert "study 'small' in" in out
    assert "was created with another search space" in out
    assert not study(tmp_path).trials  # nothing added
    optuna.create_study(study_name="other", storage=url, direction="minimize")
    out = sweep_cli(sweep_config(tmp_path), "--study_name", "other", "--storage", url)
    assert "study 'other' in" in out
    assert "cannot be continued: it minimises" in out
    assert not optuna.load_study(study_name="other", storage=url).trials


def test_the_shipped_sweep_config_is_valid(monkeypatch) -> None:
    """configs/sweep.yaml: its space parses and its base config takes the space's values (nothing runs)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])
    config = sweep.load_sweep_config(REPO / "configs/sweep.yaml")
    space = sweep.parse_space(config["space"])
    assert set(space) == {"model.lr", "model.momentum", "model.weight_decay", "data.batch_size", "trainer.max_epochs"}
    assert space["trainer.max_epochs"]["type"] == "int"
    assert space["model.lr"]["log"]
    sweep.validate_trial_args(["--config", str(REPO / "configs/fashion_mnist.yaml")], space)
