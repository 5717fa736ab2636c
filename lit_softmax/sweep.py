"""Hyper-parameter search with Optuna: `python -m lit_softmax sweep --config configs/sweep.yaml`.

Each trial is a normal `fit` of the base config(s) with the trial's values on top (its own run directory under
`logs/<study name>/`: TensorBoard events, checkpoints, config.yaml), run in this process; the objective is the
run's best `val/acc` (never test). Optuna's Lightning pruning callback stops trials that fall behind. The study
lives in an RDB storage (default: a SQLite file `logs/<study name>/study.db`; any SQLAlchemy URL, so sweep
processes on several machines can share one study). Crash-safe: a trial whose process died (kill -9, a lost
node) is marked failed once its heartbeat is stale and re-run with the same values; running the same command
again continues the study until it has `n_trials` finished (complete or pruned) trials.

Needs `pip install -e '.[sweep]'` (optuna, optuna-integration); the training code never imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import math
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from lit_softmax.callbacks import TrainingDiverged, TrainingInterrupted
from lit_softmax.checkpoints import atomic_write_bytes
from lit_softmax.errors import LitSoftmaxError

OBJECTIVE = "val/acc"  # the best value over the epochs of a trial (val/acc_best)
SECTIONS = ("model.", "data.", "trainer.")
# How often a running trial proves it is alive, and after how long without a sign it counts as dead. A rerun
# right after a crash may find the dead trial still "fresh"; Optuna checks again before every new trial.
HEARTBEAT_S, GRACE_S = 2, 6


class SweepError(LitSoftmaxError, ValueError):
    """The sweep config or its study storage cannot be used; the study (if any) is left as it was."""


def load_sweep_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(f"cannot read sweep config {path}: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("space"), dict) or not config["space"]:
        raise SweepError(f"{path} needs a `space:` mapping of parameters to ranges; see configs/sweep.yaml.")
    unknown = set(config) - {"base", "args", "study", "space"}
    if unknown:
        raise SweepError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: base, args, study, space.")
    return config


def parse_space(space: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate the search space; returns {key: {"type": float|int|categorical, ...}} in a canonical form."""
    parsed = {}
    for key, spec in space.items():
        if not key.startswith(SECTIONS) or not isinstance(spec, dict):
            raise SweepError(
                f"search space key {key!r}: expected `model.<arg>`, `data.<arg>` or `trainer.<arg>` mapped to a range "
                "such as {low: 0.01, high: 1.0, log: true}, {low: 10, high: 40, step: 10} or {choices: [...]}."
            )
        kind = spec.get("type") or (
            "categorical" if "choices" in spec
            else "int" if isinstance(spec.get("low"), int) and isinstance(spec.get("high"), int) and not spec.get("log")
            else "float"
        )  # fmt: skip
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise SweepError(f"search space {key}: `choices` must be a non-empty list, got {choices!r}.")
            parsed[key] = {"type": kind, "choices": choices}
            continue
        if kind not in ("float", "int"):
            raise SweepError(f"search space {key}: type must be float, int or categorical, got {kind!r}.")
        low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
            raise SweepError(f"search space {key}: needs numbers low < high, got low={low!r}, high={high!r}.")
        if log and low <= 0:
            raise SweepError(f"search space {key}: a log scale needs low > 0, got {low}.")
        parsed[key] = {"type": kind, "low": low, "high": high, "log": log}
        if "step" in spec:
            parsed[key]["step"] = spec["step"]
    return parsed


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    values = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec["log"])
        else:
            values[key] = trial.suggest_float(key, spec["low"], spec["high"], step=spec.get("step"), log=spec["log"])
    return values


def as_args(values: dict[str, Any]) -> list[str]:
    return [a for key, value in values.items() for a in (f"--{key}", json.dumps(value))]


def open_storage(url: str):
    import optuna
    import sqlalchemy.exc

    # SQLite: wait for another sweep process's write instead of failing with "database is locked".
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    # A trial found dead is re-run once with the same values (the argument's name changed in Optuna 4.9).
    if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters:
        retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    else:
        retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **retry
            )
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as e:
            # Two sweeps started together on a new database both create its schema; the loser sees "table
            # already exists" or a duplicate schema version, and finds the schema complete a moment later.
            # (An unreachable server also lands here: it is reported after the retries, ~2 s.)
            if attempt < 4:
                time.sleep(0.5)
                continue
            raise storage_error(url, e) from e
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
            raise storage_error(url, e) from e
    raise AssertionError("unreachable: the last attempt returns or raises")


def storage_error(url: str, e: Exception) -> SweepError:
    return SweepError(
        f"cannot open the study storage {url} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). Check the "
        "URL, that the database server is reachable and its driver installed (e.g. psycopg2 for PostgreSQL)."
    )


def run_trial(base_args: list[str], values: dict[str, Any], callbacks: list) -> tuple[float | None, str]:
    """One `fit` in this process; returns (best val/acc, run directory)."""
    from lit_softmax.cli import build
    from lit_softmax.run import run_directory

    cli = build(["fit", *base_args, *as_args(values)], callbacks=callbacks)
    best = cli.trainer.callback_metrics.get(f"{OBJECTIVE}_best")
    return (None if best is None else float(best)), str(run_directory(cli.trainer))


def validate_trial_args(base_args: list[str], space: dict[str, dict[str, Any]]) -> None:
    """Parse the base config with the first value of every range, without running anything: an unknown key or a
    value the classes refuse fails here, before the study records anything."""
    from lit_softmax.cli import build

    first = {k: s["choices"][0] if s["type"] == "categorical" else s["low"] for k, s in space.items()}
    try:
        cli = build([*base_args, *as_args(first)], run_subcommand=False)
    except SystemExit as e:  # jsonargparse printed what is wrong
        raise SweepError("the base config plus the search space do not parse (see the message above).") from e
    if cli.trainer.fast_dev_run:
        raise SweepError(
            "fast_dev_run keeps no run directory and no validation score, so trials would have nothing to compare: "
            "for a quick sweep use e.g. `--trainer.max_epochs 1 --trainer.limit_train_batches 20` in `args`."
        )
    if cli.trainer.world_size > 1:
        raise SweepError(
            "trials run in the sweep's process, one device each: remove devices/strategy from the base config and "
            "start one sweep process per device instead (they share the study)."
        )


def _without_logger(config: dict[str, Any]) -> bool:
    """Whether the base configs or args switch the logger off (`trainer.logger: false`)."""
    values = []
    for path in config.get("base") or []:
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):  # the parser reports those itself
            values.append(((yaml.safe_load(Path(path).read_text()) or {}).get("trainer") or {}).get("logger"))
    args = [str(a) for a in config.get("args") or []]
    values += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--trainer.logger"]
    return any(str(v).lower() in ("false", "none", "null") for v in values if v is not None)


def sweep_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_softmax sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", required=True, type=Path, help="the sweep config (see configs/sweep.yaml)")
    parser.add_argument("--n_trials", type=int, help="finished trials wanted in the study (overrides the config)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--storage", help="SQLAlchemy URL of the study storage (default: SQLite in the sweep dir)")
    parser.add_argument("--study_name", help="the study's name (default: the config's, else its file name)")
    options = parser.parse_args(argv)

    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from optuna_integration import PyTorchLightningPruningCallback

    # Heartbeats and stale-trial retries are still labelled experimental by Optuna (stable since 2.8/2.9).
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # trials get their args from here
    warnings.filterwarnings("ignore", message=".*LeafSpec")  # Lightning 2.6 on torch >= 2.9 (see README)
    config = load_sweep_config(options.config)
    space = parse_space(config["space"])
    study_cfg = config.get("study") or {}
    name = options.study_name or study_cfg.get("name") or options.config.stem
    n_trials = options.n_trials if options.n_trials is not None else study_cfg.get("n_trials", 20)
    timeout = options.timeout if options.timeout is not None else study_cfg.get("timeout")
    if n_trials < 1 or (timeout is not None and timeout <= 0):
        raise SweepError(f"n_trials must be >= 1 and timeout > 0, got n_trials={n_trials}, timeout={timeout}.")
    root = Path("logs") / name
    base_args = [a for c in config.get("base") or [] for a in ("--config", str(c))]
    base_args += [str(a) for a in config.get("args") or []]
    if _without_logger(config):
        raise SweepError(
            "the sweep's trials need a logger (each trial is a TensorBoard run under logs/<study>/, compared in the "
            "HParams tab): remove `trainer.logger: false` from the base config / args."
        )
    # Trials: one process, no test (the objective is validation), runs under logs/<study name>/, quiet.
    base_args += ["--test_after_fit", "false", "--trainer.logger.name", name, "--trainer.logger.save_dir", "logs",
                  "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]  # fmt: skip
    validate_trial_args(base_args, space)

    storage_url = options.storage or study_cfg.get("storage")
    if storage_url is None:
        root.mkdir(parents=True, exist_ok=True)
        storage_url = f"sqlite:///{(root / 'study.db').resolve()}"
    storage = open_storage(storage_url)
    pruner = optuna.pruners.MedianPruner(**(study_cfg.get("pruner") or {"n_startup_trials": 5, "n_warmup_steps": 5}))
    sampler = optuna.samplers.TPESampler(seed=study_cfg.get("seed"))
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)  # fmt: skip
    except ValueError as e:  # e.g. an existing study with another direction
        raise SweepError(f"study {name!r} in {storage_url} cannot be continued: {e}") from e
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise SweepError(
            f"study {name!r} in {storage_url} cannot be continued: it minimises, and a sweep maximises {OBJECTIVE}. "
            "The study is left as it was; pass --study_name for a new study."
        )
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", space)
        study.set_user_attr("objective", f"max {OBJECTIVE}")
    elif recorded != json.loads(json.dumps(space)):
        raise SweepError(
            f"study {name!r} in {storage_url} was created with another search space:\n  there: {recorded}\n  here:  "
            f"{space}\nthe study is left as it was. Continue it with its own sweep config, or pass --study_name for "
            "a new study."
        )

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    started = time.monotonic()

    def objective(trial) -> float:
        values = suggest(trial, space)  # a re-run of a crashed trial gets that trial's values back
        trial.set_user_attr("args", as_args(values))
        pruning = PyTorchLightningPruningCallback(trial, monitor=OBJECTIVE)
        try:
            best, run = run_trial(base_args, values, [pruning])
        except TrainingDiverged as e:
            raise optuna.TrialPruned(f"diverged: {e}") from None
        trial.set_user_attr("run", run)
        if best is None or math.isnan(best):
            raise optuna.TrialPruned("no validation ran")
        return best

    def progress(study, trial) -> None:
        done = len(study.get_trials(deepcopy=False, states=finished))
        value = "" if trial.value is None else f"{OBJECTIVE} {trial.value:.4f}  "
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        print(f"trial {trial.number:3d} {trial.state.name.lower():8s} {value}[{params}]  {best}  "
              f"{done}/{n_trials} finished, {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress line reports each trial; errors propagate
    # Each trial would repeat Lightning's start-up lines; the progress line says what matters.
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    done = len(study.get_trials(deepcopy=False, states=finished))
    print(f"study {name!r} in {storage_url}: {done}/{n_trials} trials finished so far", flush=True)
    try:
        if done < n_trials:
            optuna.storages.fail_stale_trials(study)  # trials of a crashed earlier run: failed, then re-run
            study.optimize(objective, timeout=timeout, callbacks=[MaxTrialsCallback(n_trials, states=finished),
                                                                  progress])  # fmt: skip
    except TrainingInterrupted as e:  # Ctrl-C / SIGTERM: Optuna has marked the trial under way failed
        raise TrainingInterrupted(
            e.signum,
            f"sweep interrupted by {signal.Signals(e.signum).name}: the trial under way is marked failed "
            "(its run directory keeps what it saved). Run the same command again to continue the study.",
        ) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    write_best(study, root, name)


def write_best(study, root: Path, name: str) -> None:
    """best.yaml: the best trial's full config (its run's config.yaml), ready for `fit --config`."""
    try:
        best = study.best_trial
    except ValueError:
        print("no trial completed: no best.yaml written.", flush=True)
        return
    run = Path(best.user_attrs["run"])
    from lit_softmax.run import latest_config

    config = yaml.safe_load(latest_config(run).read_text())
    config["trainer"]["logger"]["init_args"]["name"] = f"{name}_best"
    config["trainer"]["enable_model_summary"] = None  # Lightning's default again
    config["test_after_fit"] = True
    header = (
        f"# Best of study {name!r} (trial {best.number}): {OBJECTIVE} {best.value:.4f} in {run}\n"
        f"# {', '.join(f'{k}={v}' for k, v in best.params.items())}\n"
        f"#   python -m lit_softmax fit --config {root / 'best.yaml'}\n"
    )
    atomic_write_bytes((header + yaml.safe_dump(config, sort_keys=False)).encode(), root / "best.yaml")
    print(f"best: trial {best.number}, {OBJECTIVE} {best.value:.4f}, {best.params}\nwrote {root / 'best.yaml'}")
