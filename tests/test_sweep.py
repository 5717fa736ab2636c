"""`sweep`: Optuna over real SQLite and PostgreSQL studies. Workers on two "machines" (two directories) share a
PostgreSQL study through a SIGKILL without repeating a parameter set; a sweep killed mid-trial continues when run
again; best.yaml reproduces its val/acc wherever it is written; the password never shows; bad input leaves the
study as it was."""

from __future__ import annotations

import json
import math
import os
import shlex
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
        probe = where / "slow.yaml"  # progress: relative, so each worker's directory has its own
        probe.write_text(
            "trainer:\n  callbacks+:\n    - class_path: probes.SlowSteps\n      init_args:\n"
            f"        progress_file: progress\n        delay: {delay}\n"
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


def start(where: Path, config: Path, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "lit_softmax", "sweep", "--config", str(config), *flags]
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


def distinct(trials) -> int:
    return len({json.dumps(t.params, sort_keys=True) for t in trials})


def readme_commands(marker: str) -> list[str]:
    """The command lines of the README block between `<!-- marker -->` and `<!-- /marker -->`."""
    block = (REPO / "docs/sweeps.md").read_text().split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith(("#", "```"))]


@pytest.mark.slow
def test_workers_on_two_machines_share_a_postgresql_study_through_a_sigkill(tmp_path: Path, postgresql) -> None:
    """Two workers in two directories (two machines: each its own logs/) on one PostgreSQL study; worker A (the
    password in its URL) is killed with SIGKILL mid-trial and restarted; worker B runs the README's multi-machine
    command as written (PGPASSWORD). Every trial ends finished, or failed and retried with its values; no
    parameter set is evaluated twice; both machines write the same best.yaml, which reproduces the best val/acc on
    a third; the password shows nowhere; the README's optuna-dashboard command shows the study."""
    need_real_data()

    from servers import PASSWORD, USER, free_port

    url = postgresql.database("sweeps")  # the README's database name; the fixture made its user
    host = f"127.0.0.1:{postgresql.port}"
    commands = readme_commands("multi-machine")
    assert commands[0].startswith("sudo -u postgres createuser --pwprompt sweeper")  # done by the fixture
    assert commands[1].startswith("export PGPASSWORD=")
    readme_sweep, readme_dashboard = (shlex.split(c.replace("db-host", host)) for c in commands[2:4])
    assert readme_sweep[:6] == ["python", "-m", "lit_softmax", "sweep", "--config", "configs/sweep.yaml"]
    assert readme_dashboard[0] == "optuna-dashboard"
    assert f"{USER}@{host}/sweeps" in readme_sweep[-1]
    with_password = {**TEST_ENV, "PGPASSWORD": PASSWORD}

    config = sweep_config(tmp_path, n_trials=12, delay=0.1)  # ~2.5 s a trial
    a, b, c = (tmp_path / m for m in "abc")
    for machine in (a, b, c):
        machine.mkdir()
    started = time.monotonic()
    workers = {"a": start(a, config, "--storage", url)}
    workers["b"] = subprocess.Popen([sys.executable, *readme_sweep[1:5], str(config), *readme_sweep[6:]], cwd=b,
                                    env=with_password, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(a.glob("logs/small/version_*/checkpoints")):
        time.sleep(0.05)  # A's first trial has trained an epoch of two: kill it in the middle
    os.killpg(workers["a"].pid, signal.SIGKILL)
    workers["a"].wait(timeout=30)
    workers["a2"] = start(a, config, "--storage", url)  # the crashed job, restarted
    outputs = {name: p.communicate(timeout=400)[0] for name, p in workers.items() if name != "a"}
    elapsed = time.monotonic() - started
    assert [workers["a2"].returncode, workers["b"].returncode] == [0, 0], outputs

    study = optuna.load_study(study_name="small", storage=sweep.open_storage(url))
    trials = study.get_trials()
    states = [t.state for t in trials]
    finished = [t for t in trials if t.state in FINISHED]
    assert not {optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING} & set(states), states
    assert 12 <= len(finished) <= 13  # two workers deciding at the same instant may start one more
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len([t for t in failed if "duplicate_of" not in t.user_attrs]) == 1, failed  # the killed trial
    for dead in failed:
        if "duplicate_of" not in dead.user_attrs:
            retried = [t for t in finished if t.system_attrs.get("failed_trial") == dead.number]
            assert [t.params for t in retried] == [dead.params]  # run again, once, with its values
    assert distinct(finished) == len(finished)  # no parameter set evaluated twice
    ran = {t.number: Path(t.user_attrs["run"]) for t in finished}
    assert any(a in run.parents for run in ran.values())
    assert any(b in run.parents for run in ran.values())
    print(f"\n2 workers (+1 restart), {len(trials)} trials: {len(finished)} finished, {distinct(finished)} distinct, "
          f"{len(failed)} failed, {elapsed:.0f} s")  # fmt: skip

    best_yaml = {m: (m / "logs/small/best.yaml").read_text() for m in (a, b)}
    assert best_yaml[a] == best_yaml[b]  # the same file, whichever machine ran the best trial
    assert f"(trial {study.best_trial.number}): val/acc {study.best_value:.4f}" in best_yaml[a]
    (c / "best.yaml").write_text(best_yaml[b])
    refit = run_cli("fit", "--config", "best.yaml", cwd=c)  # a third machine
    assert refit.returncode == 0, refit.stderr[-3000:]
    assert scalars(c / "logs/small_best/version_0")["val/acc_best"][-1] == pytest.approx(study.best_value, abs=1e-6)

    assert any("sweep stopped: n_trials reached" in out for out in outputs.values())
    assert f"{USER}:***@{host}" in outputs["a2"]  # the storage line, masked
    texts = [*outputs.values(), *(f.read_text(errors="replace") for m in (a, b) for f in m.rglob("*.yaml"))]
    assert not [t for t in texts if PASSWORD in t]

    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / readme_dashboard[0]), *readme_dashboard[1:],
                                  "--host", "127.0.0.1", "--port", str(port)], env=with_password,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert read_studies(port, dashboard) == [("small", ["maximize"], len(trials))]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def read_studies(port: int, server: subprocess.Popen) -> list[tuple]:
    """(name, directions, number of trials) of each study optuna-dashboard serves on 127.0.0.1:`port`."""
    import urllib.request

    deadline, summaries = time.monotonic() + 60, None
    while summaries is None and time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                summaries = json.load(response)["study_summaries"]
        except OSError:
            time.sleep(0.2)
    assert summaries is not None, server.communicate(timeout=5)[0] if server.poll() is not None else "no answer"
    studies = []
    for summary in summaries:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}") as response:
            studies.append((summary["study_name"], summary["directions"], len(json.load(response)["trials"])))
    return studies


@pytest.mark.slow
def test_workers_started_together_on_a_new_postgresql_database_all_open_it(postgresql) -> None:
    """32 workers opening a fresh database at once all create its schema: without the retry most of them fail
    (`relation "studies" already exists`, a duplicate `studydirection` type)."""
    import threading

    import psycopg  # noqa: F401  (imported once here: 32 threads importing it at the same time can fail)

    for round_ in range(3):
        url, errors = postgresql.database(f"fresh{round_}"), []

        def open_storage(url=url, errors=errors) -> None:
            try:
                sweep.open_storage(url)
            except Exception as e:  # noqa: BLE001  (any failure is what the test reports)
                errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=open_storage) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[:3]


def test_a_storage_that_refuses_the_login_is_one_message_without_the_password(sweep_cli, tmp_path, postgresql):
    from servers import PASSWORD

    need_real_data()
    url = postgresql.database("refused").replace(PASSWORD, PASSWORD + "-wrong")
    out = sweep_cli(sweep_config(tmp_path), "--storage", url)
    assert "cannot open the study storage postgresql://sweeper:***@127.0.0.1" in out
    assert "password authentication failed" in out
    assert PASSWORD not in out


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
        ({"model.optimizer": {"choices": ["sgd", "adamw", "lbfgs"]}},
         "model.optimizer='lbfgs' is refused before any trial"),
        ({"model.momentum": {"low": 0.5, "high": 1.0}},
         "model.momentum=1.0 is refused before any trial: model.momentum must be in [0, 1)"),
        ({"data.batch_size": {"low": 64, "high": 4096, "log": True, "step": 64}},
         "a log scale and a step cannot be combined"),
        ({"model.lr": {"low": 0.1, "high": 1.0, "scale": "log"}}, "search space model.lr: unknown field(s) ['scale']"),
        ({"data.batch_size": {"choices": [64, 128, 64]}}, "`choices` lists a value twice"),
        ({"data.batch_size": {"choices": [64, 128]}},
         "the search space holds 2 distinct parameter sets, fewer than n_trials=3"),
    ],
    ids=["empty-range", "no-choices", "log-of-zero", "no-section", "unknown-key", "refused-choice", "refused-high",
         "log-and-step", "unknown-field", "repeated-choice", "smaller-than-n_trials"],
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


SPACE = {"model.lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
         "data.batch_size": {"type": "int", "low": 64, "high": 4096, "log": True},
         "model.optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]}}  # fmt: skip


def ask(study: optuna.Study, score: bool = True) -> dict:
    """One trial through the sweep's sampler, scored by a made-up smooth function (no training needed here)."""
    trial = study.ask()
    values = sweep.suggest(trial, SPACE)
    if score:
        study.tell(trial, -abs(math.log10(values["model.lr"]) + 1) - abs(math.log2(values["data.batch_size"]) - 9))
    return values


def worker(storage, seed: int | None = 0) -> optuna.Study:
    """What each sweep process builds: the study, loaded through its own sampler."""
    return optuna.create_study(study_name="s", storage=storage, direction="maximize", load_if_exists=True,
                               sampler=sweep.TrialSeededTPE(seed))  # fmt: skip


def test_workers_with_one_seed_draw_different_values_and_a_restart_does_not_repeat(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'shared.db'}")
    a, b = worker(storage), worker(storage)  # two processes started with the same command (same seed)
    drawn = [ask(a if i % 2 else b) for i in range(16)]  # random start-up trials, then TPE with the constant liar
    restarted = worker(storage)  # a worker restarted after a crash: a new sampler with the same seed
    drawn += [ask(restarted) for _ in range(4)]
    assert len({json.dumps(v, sort_keys=True) for v in drawn}) == len(drawn) == 20
    # Concurrent: three trials running at once (nobody has told a result) still get three parameter sets.
    running = [ask(w, score=False) for w in (a, b, restarted)]
    assert len({json.dumps(v, sort_keys=True) for v in running}) == 3


def test_one_worker_reproduces_a_study_from_its_seed(tmp_path: Path) -> None:
    def study_values(name: str, seed: int) -> list[dict]:
        study = worker(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / name}"), seed)
        return [ask(study) for _ in range(14)]  # 10 random start-up trials, then 4 TPE ones

    first = study_values("one.db", 0)
    assert study_values("two.db", 0) == first
    assert study_values("three.db", 1) != first
    assert all(isinstance(v["data.batch_size"], int) for v in first)  # an int range with log: true stays int


def test_a_repeated_parameter_set_is_found_a_retry_is_not(tmp_path: Path) -> None:
    study = worker(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'dup.db'}"))
    params = {"model.lr": 0.1, "data.batch_size": 256, "model.optimizer": "sgd"}
    for _ in range(2):
        study.enqueue_trial(params)
    first = study.ask()
    sweep.suggest(first, SPACE)
    second = study.ask()
    sweep.suggest(second, SPACE)
    # Both running: the later one gives way (the earlier one is not a duplicate of it).
    assert sweep.duplicate_of(first) is None
    assert sweep.duplicate_of(second) == first.number
    study.tell(first, 0.5)
    assert sweep.duplicate_of(second) == first.number  # a finished trial's parameters
    study.tell(second, state=optuna.trial.TrialState.FAIL)
    # A trial that died is retried with its values: that repeats only a failed trial.
    study.enqueue_trial({**params, "model.lr": 0.2})
    dead = study.ask()
    sweep.suggest(dead, SPACE)
    study.tell(dead, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(dead.params)
    retry = study.ask()
    sweep.suggest(retry, SPACE)
    assert sweep.duplicate_of(retry) is None


def test_string_choices_int_log_ranges_and_trainer_keys_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """The reported failures: a Literal argument's choices, an int range on a log scale (was a float), and a
    searched trainer.* key (was missing from HParams); the end of the sweep says why it stopped."""
    need_real_data()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])
    space = {"model.optimizer": {"choices": ["sgd", "adamw"]}, "data.batch_size": {"low": 64, "high": 4096,
             "log": True}, "trainer.max_epochs": {"low": 1, "high": 2}}  # fmt: skip
    main(["sweep", "--config", str(sweep_config(tmp_path, n_trials=2, **space))])
    out = capsys.readouterr().out
    assert "sweep stopped: n_trials reached (2/2 finished" in out
    trials = study(tmp_path).get_trials(states=FINISHED)
    assert len(trials) == 2
    for trial in trials:
        assert trial.params["model.optimizer"] in ("sgd", "adamw")
        assert isinstance(trial.params["data.batch_size"], int)
        hparams = yaml.safe_load((Path(trial.user_attrs["run"]) / "hparams.yaml").read_text())
        assert hparams["optimizer"] == trial.params["model.optimizer"]
        assert hparams["batch_size"] == trial.params["data.batch_size"]
        assert hparams["trainer.max_epochs"] == trial.params["trainer.max_epochs"]  # in the HParams table
        assert Path(trial.user_attrs["run"]).is_absolute()
        assert trial.user_attrs["host"]
        assert (
            yaml.safe_load(trial.user_attrs["config"])["model"]["init_args"]["optimizer"]
            == (trial.params["model.optimizer"])
        )


def test_a_sweep_stopped_by_its_timeout_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    need_real_data()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_softmax"])
    main(["sweep", "--config", str(sweep_config(tmp_path, n_trials=50)), "--timeout", "0.5"])
    out = capsys.readouterr().out
    assert "sweep stopped: timeout of 0.5 s reached; run the same command again to continue the study (1/50" in out
    assert (tmp_path / "logs/small/best.yaml").is_file()


def test_base_paths_are_relative_to_the_sweep_config(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "sweeps"
    folder.mkdir()
    (folder / "recipe.yaml").write_text((REPO / "configs/debug.yaml").read_text())
    (folder / "sweep.yaml").write_text("base: recipe.yaml\nspace:\n  model.lr: {low: 0.1, high: 1.0}\n")
    monkeypatch.chdir(REPO)  # anywhere but the config's folder
    assert sweep.load_sweep_config(folder / "sweep.yaml")["base"] == [str(folder / "recipe.yaml")]
    (folder / "sweep.yaml").write_text("base: [nothere.yaml]\nspace:\n  model.lr: {low: 0.1, high: 1.0}\n")
    with pytest.raises(sweep.SweepError, match=r"base config\(s\) .*nothere.yaml.* not found \(`base:` paths are"):
        sweep.load_sweep_config(folder / "sweep.yaml")


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "x" * 101])
def test_a_study_name_that_is_not_one_folder_is_refused(sweep_cli, tmp_path: Path, name: str) -> None:
    need_real_data()
    out = sweep_cli(sweep_config(tmp_path), "--study_name", name)
    assert f"study name {name!r}: use letters, digits" in out
    assert not (tmp_path / "logs").exists()
    assert not (tmp_path / "escape").exists()


def test_passwords_are_hidden_in_urls() -> None:
    url = "postgresql+psycopg://sweeper:p%40ss:w0rd@db.example:5432/sweeps"
    assert sweep.hide_password(url, url) == "postgresql+psycopg://sweeper:***@db.example:5432/sweeps"
    text = f"cannot reach {url} (password p@ss:w0rd)"
    assert "w0rd" not in sweep.hide_password(text, url)
    assert sweep.hide_password("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"


def test_optuna_dashboard_serves_the_study(tmp_path: Path) -> None:
    """`optuna-dashboard <storage>` (the README's command) on 127.0.0.1, read back over HTTP."""
    import urllib.request

    from servers import free_port

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = worker(optuna.storages.RDBStorage(url))
    study.set_user_attr("space", SPACE)
    values = [ask(study) for _ in range(3)]
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen([str(dashboard), url, "--host", "127.0.0.1", "--port", str(port)], env=TEST_ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert read_studies(port, server) == [("s", ["maximize"], 3)]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/1") as response:
            trials = json.load(response)["trials"]
        shown = [{p["name"]: p["param_external_value"] for p in t["params"]} for t in trials]
        expected = [{k: str(v) if not isinstance(v, str) else v for k, v in d.items()} for d in values]
        assert [{k: str(v) for k, v in d.items()} for d in shown] == expected
        assert [t["values"][0] for t in trials] == pytest.approx([t.value for t in study.trials])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_help_lists_sweep_beside_the_trainer_subcommands(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["lit_softmax", "--help"])
    with pytest.raises(SystemExit) as info:
        main(None)
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "{fit,validate,test,predict,export,serve}" in out
    assert "Also: sweep Hyper-parameter search with Optuna (python -m lit_softmax sweep --help)" in out
