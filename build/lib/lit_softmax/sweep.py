"""Hyper-parameter search with Optuna: `python -m lit_softmax sweep --config configs/sweep.yaml`.

Each trial is a normal `fit` of the base config(s) with the trial's values on top (its own run directory under
`logs/<study name>/`: TensorBoard events, checkpoints, config.yaml), run in this process; the objective is the
run's best `val/acc` (never test). Optuna's Lightning pruning callback stops trials that fall behind. The study
lives in an RDB storage: a SQLite file `logs/<study name>/study.db` by default, or any SQLAlchemy URL
(`postgresql://user@host/db`, password from PGPASSWORD or ~/.pgpass): any number of sweep processes on any
machines, started with the same command, share one study and divide its trials. Crash-safe: a trial whose
process died (kill -9, a lost node) is marked failed once its heartbeat is stale and re-run once with the same
values; running the same command again continues the study until it has `n_trials` finished trials.

Needs `pip install -e '.[sweep]'` (optuna, optuna-integration, psycopg2, optuna-dashboard); the training code never
imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import logging
import math
import random
import re
import signal
import socket
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from lit_softmax.callbacks import TrainingDiverged, TrainingInterrupted
from lit_softmax.checkpoints import atomic_write_bytes
from lit_softmax.errors import LitSoftmaxError

OBJECTIVE = "val/acc"  # the best value over the epochs of a trial (val/acc_best)
SECTIONS = ("model.", "data.", "trainer.")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# How often a running trial proves it is alive, and after how long without a sign it counts as dead. A rerun
# right after a crash may find the dead trial still "fresh"; Optuna checks again before every new trial.
HEARTBEAT_S, GRACE_S = 2, 6
# A study name is a directory under logs/ and a TensorBoard run name: one path component, no `..`.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# The sampler proposing only parameter sets already tried this many times in a row: the space is used up.
DUPLICATES_IN_A_ROW = 20
SPEC_KEYS = {"type", "low", "high", "log", "step", "choices"}


class SweepError(LitSoftmaxError, ValueError):
    """The sweep config or its study storage cannot be used; the study (if any) is left as it was."""


class DuplicateParameters(Exception):
    """The trial's parameter set is one another trial has (or is) evaluating: the trial fails without training."""


def load_sweep_config(path: Path) -> dict[str, Any]:
    """The sweep config, with its `base:` paths resolved against the sweep config's own folder."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(f"cannot read sweep config {path}: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("space"), dict) or not config["space"]:
        raise SweepError(f"{path} needs a `space:` mapping of parameters to ranges; see configs/sweep.yaml.")
    unknown = set(config) - {"base", "args", "study", "space"}
    if unknown:
        raise SweepError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: base, args, study, space.")
    base = config.get("base") or []
    base = [base] if isinstance(base, str) else base
    if not isinstance(base, list) or not all(isinstance(b, str) for b in base):
        raise SweepError(f"{path}: `base:` must be a config path or a list of them, got {config.get('base')!r}.")
    # Relative to the sweep config, like `include`s elsewhere: the same file works from any working directory.
    config["base"] = [str(path.parent / Path(b).expanduser()) for b in base]
    missing = [b for b in config["base"] if not Path(b).is_file()]
    if missing:
        raise SweepError(f"{path}: base config(s) {missing} not found (`base:` paths are relative to {path.parent}).")
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
        if set(spec) - SPEC_KEYS:
            raise SweepError(f"search space {key}: unknown field(s) {sorted(set(spec) - SPEC_KEYS)}; "
                             f"allowed: {sorted(SPEC_KEYS)}.")  # fmt: skip
        ints = all(isinstance(spec.get(b), int) and not isinstance(spec.get(b), bool) for b in ("low", "high"))
        kind = spec.get("type") or ("categorical" if "choices" in spec else "int" if ints else "float")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise SweepError(f"search space {key}: `choices` must be a non-empty list, got {choices!r}.")
            if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise SweepError(f"search space {key}: choices must be numbers, strings, booleans or null "
                                 f"(Optuna stores them as such), got {choices!r}.")  # fmt: skip
            if len({json.dumps(c) for c in choices}) < len(choices):
                raise SweepError(f"search space {key}: `choices` lists a value twice: {choices!r}.")
            parsed[key] = {"type": kind, "choices": choices}
            continue
        if kind not in ("float", "int"):
            raise SweepError(f"search space {key}: type must be float, int or categorical, got {kind!r}.")
        low, high, log, step = spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("step")
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
            raise SweepError(f"search space {key}: needs numbers low < high, got low={low!r}, high={high!r}.")
        if kind == "int" and not ints:
            raise SweepError(f"search space {key}: an int range needs int bounds, got low={low!r}, high={high!r}.")
        if log and low <= 0:
            raise SweepError(f"search space {key}: a log scale needs low > 0, got {low}.")
        if step is not None and (
            not isinstance(step, (int, float)) or step <= 0 or (kind == "int" and not isinstance(step, int))
        ):
            raise SweepError(f"search space {key}: `step` must be a positive {kind}, got {step!r}.")
        if log and step not in (None, 1):
            raise SweepError(f"search space {key}: a log scale and a step cannot be combined (Optuna refuses it).")
        parsed[key] = {"type": kind, "low": low, "high": high, "log": log}
        if step is not None:
            parsed[key]["step"] = step
    return parsed


def space_size(space: dict[str, dict[str, Any]]) -> int | None:
    """How many distinct parameter sets the space holds; None when it is continuous."""
    size = 1
    for spec in space.values():
        if spec["type"] == "categorical":
            size *= len(spec["choices"])
        elif spec["type"] == "int" or "step" in spec:
            size *= int((spec["high"] - spec["low"]) // spec.get("step", 1)) + 1
        else:
            return None
    return size


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
    """Command-line arguments; a string goes as typed (JSON quotes would reach a Literal["sgd", ...] argument)."""
    return [a for key, value in values.items() for a in (f"--{key}", value if isinstance(value, str)
                                                         else json.dumps(value))]  # fmt: skip


def hide_password(text: str, url: str | None = None) -> str:
    """`text` with the password of `url` (default: every URL in `text`) replaced by ***."""
    if url is not None:
        with contextlib.suppress(Exception):
            from sqlalchemy.engine import make_url

            password = make_url(url).password
            if password:
                text = text.replace(str(password), "***")
    return re.sub(r"(\w[\w+.-]*://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """Optuna's TPE sampler for many workers on one study: `constant_liar` (Optuna's option for parallel
    optimisation) treats the trials other workers are running as bad results, so concurrent workers look
    elsewhere; and the random stream of each trial is seeded from (study seed, trial number). Trial numbers are
    unique in the study, so two workers with the same seed, or a worker restarted after a crash, never replay
    the same random draws, while a single worker reproduces the study from its seed."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._samplers: dict[int, optuna.samplers.TPESampler] = {}

    def _for(self, trial) -> optuna.samplers.TPESampler:
        if trial.number not in self._samplers:
            seed = (
                None
                if self.seed is None
                else int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
            )
            self._samplers = {trial.number: optuna.samplers.TPESampler(seed=seed, constant_liar=True)}
        return self._samplers[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def duplicate_of(trial) -> int | None:
    """The trial whose parameters this one repeats: a finished one, or one started earlier and still running (of
    two workers drawing the same values at once, the later trial gives way). A retry of a dead trial repeats
    only a failed one, so it never counts."""
    for other in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
        if (
            other.number != trial.number
            and other.params == trial.params
            and (other.state != TrialState.RUNNING or other.number < trial.number)
        ):
            return other.number
    return None


def open_storage(url: str):
    import sqlalchemy.exc

    # SQLite: wait for another sweep process's write instead of failing with "database is locked".
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    # A trial found dead is re-run once with the same values (the argument's name changed in Optuna 4.9).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters:
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
    # A bare postgresql:// means psycopg (3) in SQLAlchemy 2.1 and psycopg2 in 2.0: the `sweep` extra installs
    # psycopg, so the URL names it, whatever SQLAlchemy's version.
    given, url = url, re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)
    attempts = 10
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                # Heartbeats and stale-trial retries: still labelled experimental by Optuna (stable since 2.8/2.9).
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **retry
                )
        except sqlalchemy.exc.DBAPIError as e:
            # Workers started together on a new database all create its schema; the losers see "table already
            # exists", a duplicate schema version, or on PostgreSQL `type "studydirection" already exists`, and
            # find the schema complete a moment later. Jitter spreads the retries. (An unreachable server lands
            # here too: it is reported after the retries, ~5 s.)
            if attempt < attempts - 1:
                time.sleep(random.uniform(0.2, 0.8))
                continue
            raise storage_error(given, e) from e
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
            raise storage_error(given, e) from e
    raise AssertionError("unreachable: the last attempt returns or raises")


def storage_error(url: str, e: Exception) -> SweepError:
    reason = hide_password(str(e).strip().splitlines()[0][:300] if str(e).strip() else "", url)
    return SweepError(
        f"cannot open the study storage {hide_password(url, url)} ({type(e).__name__}: {reason}). Check the URL, "
        "that the database server is reachable and its driver installed (`pip install -e '.[sweep]'` has psycopg2 "
        "for postgresql://; other databases need theirs, e.g. pymysql for mysql+pymysql://)."
    )


class LogSearchedTrainerArgs(L.Callback):
    """Adds the searched `trainer.*` values to the loggers' hyper-parameters (Lightning logs only the model's and
    the datamodule's), so TensorBoard's HParams table shows every searched key."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = {k: v for k, v in values.items() if k.startswith("trainer.")}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.values:
            for logger in trainer.loggers:
                logger.log_hyperparams(self.values)


def run_trial(base_args: list[str], values: dict[str, Any], callbacks: list) -> tuple[float | None, Path]:
    """One `fit` in this process; returns (best val/acc, run directory)."""
    from lit_softmax.cli import build
    from lit_softmax.run import run_directory

    cli = build(["fit", *base_args, *as_args(values)], callbacks=[*callbacks, LogSearchedTrainerArgs(values)])
    best = cli.trainer.callback_metrics.get(f"{OBJECTIVE}_best")
    return (None if best is None else float(best)), Path(run_directory(cli.trainer)).resolve()


def validate_trial_args(base_args: list[str], space: dict[str, dict[str, Any]]) -> None:
    """Builds the base config with the space's first values, then with each other choice and each range's upper
    end, without running anything: an unknown key or a value the classes refuse fails here, before the study
    records anything (a trial would otherwise die with a usage dump and stay RUNNING)."""
    from lit_softmax.cli import build

    first = {k: s["choices"][0] if s["type"] == "categorical" else s["low"] for k, s in space.items()}
    variants = [(None, first)] + [
        (key, {**first, key: value})
        for key, spec in space.items()
        for value in (spec["choices"][1:] if spec["type"] == "categorical" else [spec["high"]])
    ]
    for key, values in variants:
        output = io.StringIO()
        try:
            with contextlib.redirect_stderr(output):
                cli = build([*base_args, *as_args(values)], run_subcommand=False)
        except (SystemExit, LitSoftmaxError, ValueError, TypeError) as e:
            reason = output.getvalue().split("error:", 1)[-1] if isinstance(e, SystemExit) else str(e)
            # jsonargparse explains a refused value through every Union member (the class, or None): keep the
            # lines about the class.
            noise = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Problem with given", "tip:", "usage:")
            lines = [line.strip().removeprefix("- ") for line in reason.splitlines()]
            reason = " ".join(x for x in lines if x and not x.startswith(noise) and "NoneType" not in x)[:500]
            where = "the base config plus the space's first values" if key is None else f"{key}={values[key]!r}"
            raise SweepError(f"search space: {where} is refused before any trial: {reason}") from None
        if key is not None:
            continue
        if cli.trainer.fast_dev_run:
            raise SweepError(
                "fast_dev_run keeps no run directory and no validation score, so trials would have nothing to "
                "compare: for a quick sweep use e.g. `--trainer.max_epochs 1 --trainer.limit_train_batches 20` in "
                "`args`."
            )
        if cli.trainer.world_size > 1:
            raise SweepError(
                "trials run in the sweep's process, one device each: remove devices/strategy from the base config "
                "and start one sweep process per device instead (they share the study)."
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
    with quiet():
        run_sweep(options)


@contextlib.contextmanager
def quiet():
    """Each trial (and each check of the space) would repeat Lightning's start-up lines, and Optuna its own: the
    progress line per trial says what matters; warnings and errors still show."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels, verbosity = [q.level for q in loggers], optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for q in loggers:
        q.setLevel(logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
        for q, level in zip(loggers, levels):
            q.setLevel(level)


def run_sweep(options: argparse.Namespace) -> None:
    from optuna_integration import PyTorchLightningPruningCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats etc., see above
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # trials get their args from here
    warnings.filterwarnings("ignore", message=".*LeafSpec")  # Lightning 2.6 on torch >= 2.9 (see README)
    config = load_sweep_config(options.config)
    space = parse_space(config["space"])
    study_cfg = config.get("study") or {}
    name = str(options.study_name or study_cfg.get("name") or options.config.stem)
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise SweepError(f"study name {name!r}: use letters, digits, '_', '-' and '.' (it becomes the folder "
                         "logs/<name>/ and the TensorBoard run name), e.g. sweep_fashion_mnist.")  # fmt: skip
    n_trials = options.n_trials if options.n_trials is not None else study_cfg.get("n_trials", 20)
    timeout = options.timeout if options.timeout is not None else study_cfg.get("timeout")
    if n_trials < 1 or (timeout is not None and timeout <= 0):
        raise SweepError(f"n_trials must be >= 1 and timeout > 0, got n_trials={n_trials}, timeout={timeout}.")
    size = space_size(space)
    if size is not None and size < n_trials:
        raise SweepError(f"the search space holds {size} distinct parameter sets, fewer than n_trials={n_trials}: "
                         "widen the space or lower n_trials.")  # fmt: skip
    root = Path("logs") / name
    base_args = [a for c in config["base"] for a in ("--config", c)]
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
    shown = hide_password(storage_url, storage_url)  # what the output says: never the password
    storage = open_storage(storage_url)
    pruner = optuna.pruners.MedianPruner(**(study_cfg.get("pruner") or {"n_startup_trials": 5, "n_warmup_steps": 5}))
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner,
                                    sampler=TrialSeededTPE(study_cfg.get("seed")), load_if_exists=True)  # fmt: skip
    except ValueError as e:  # e.g. an existing study with another direction
        raise SweepError(f"study {name!r} in {shown} cannot be continued: {hide_password(str(e), storage_url)}") from e
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise SweepError(
            f"study {name!r} in {shown} cannot be continued: it minimises, and a sweep maximises {OBJECTIVE}. "
            "The study is left as it was; pass --study_name for a new study."
        )
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", space)
        study.set_user_attr("objective", f"max {OBJECTIVE}")
        study.set_metric_names([OBJECTIVE])  # optuna-dashboard's axes say val/acc, not "Objective 0"
    elif recorded != json.loads(json.dumps(space)):
        raise SweepError(
            f"study {name!r} in {shown} was created with another search space:\n  there: {recorded}\n  here:  "
            f"{space}\nthe study is left as it was. Continue it with its own sweep config, or pass --study_name for "
            "a new study."
        )

    started = time.monotonic()
    stopped: list[str] = []  # why the sweep stopped early, if it did
    in_a_row = [0]  # duplicates proposed in a row by the sampler

    def objective(trial) -> float:
        values = suggest(trial, space)  # a re-run of a crashed trial gets that trial's values back
        trial.set_user_attr("args", as_args(values))
        same = duplicate_of(trial)
        if same is not None:
            trial.set_user_attr("duplicate_of", same)
            raise DuplicateParameters(f"the parameters of trial {same}")
        pruning = PyTorchLightningPruningCallback(trial, monitor=OBJECTIVE)
        try:
            best, run = run_trial(base_args, values, [pruning])
        except TrainingDiverged as e:
            raise optuna.TrialPruned(f"diverged: {e}") from None
        finally:
            # Where it ran, and its whole config: enough for any worker to write best.yaml, whoever ran it.
            trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("run", str(run))
        from lit_softmax.run import latest_config

        trial.set_user_attr("config", latest_config(run).read_text())
        if best is None or math.isnan(best):
            raise optuna.TrialPruned("no validation ran")
        return best

    def progress(study, trial) -> None:
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        if "duplicate_of" in trial.user_attrs:
            in_a_row[0] += 1
            print(f"trial {trial.number:3d} repeats trial {trial.user_attrs['duplicate_of']}'s parameters: not run",
                  flush=True)  # fmt: skip
            if in_a_row[0] >= DUPLICATES_IN_A_ROW:
                stopped.append(f"the sampler proposed only parameter sets already tried, {in_a_row[0]} times in a "
                               "row: the space is (nearly) used up; widen it or lower n_trials")  # fmt: skip
                study.stop()
            return
        in_a_row[0] = 0
        value = "" if trial.value is None else f"{OBJECTIVE} {trial.value:.4f}  "
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        print(f"trial {trial.number:3d} {trial.state.name.lower():8s} {value}[{params}]  {best}  "
              f"{done}/{n_trials} finished, {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip

    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    print(f"study {name!r} in {shown}: {done}/{n_trials} trials finished so far", flush=True)
    why, waiting_shown = None, False
    try:
        while why is None:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again (WAITING)
            states = Counter(t.state for t in study.get_trials(deepcopy=False))
            finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
            running, queued = states[TrialState.RUNNING], states[TrialState.WAITING]
            if stopped:
                why = stopped[0]
            elif timeout is not None and time.monotonic() - started >= timeout:
                why = f"timeout of {timeout:g} s reached; run the same command again to continue the study"
            elif queued or finished + running < n_trials:
                # One trial (a queued retry first); counting the trials other workers run keeps the study at
                # n_trials (two workers deciding at the same instant may still add one more).
                study.optimize(objective, n_trials=1, catch=(DuplicateParameters,), callbacks=[progress])
            elif running:
                # The last trials run on other workers: wait for them (a dead one turns stale within GRACE_S and is
                # queued again, for this worker to run), so every worker writes the same, final best.yaml.
                if not waiting_shown:
                    print(f"waiting for {running} trial(s) running on other workers, then best.yaml", flush=True)
                    waiting_shown = True
                time.sleep(1)
            else:
                why = "n_trials reached" if finished > done else "the study already has n_trials finished trials"
    except (TrainingInterrupted, KeyboardInterrupt) as e:  # Ctrl-C / SIGTERM: Optuna marked the trial under way failed
        signum = getattr(e, "signum", signal.SIGINT)
        raise TrainingInterrupted(
            signum,
            f"sweep stopped: interrupted by {signal.Signals(signum).name}; the trial under way (if any) is marked "
            "failed (its run directory keeps what it saved). Run the same command again to continue the study.",
        ) from None
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    print(f"sweep stopped: {why} ({finished}/{n_trials} finished, {time.monotonic() - started:.0f} s)", flush=True)
    write_best(study, root, name)


def write_best(study, root: Path, name: str) -> None:
    """best.yaml: the best trial's full config (stored in the study by the worker that ran it), ready for
    `fit --config`, written by every worker on its own machine."""
    try:
        best = study.best_trial
    except ValueError:
        print("no trial completed: no best.yaml written.", flush=True)
        return
    run, host = best.user_attrs.get("run", "?"), best.user_attrs.get("host", "?")
    text = best.user_attrs.get("config")
    if text is None:  # a study from before trials stored their config: only the machine that ran it has it
        from lit_softmax.run import latest_config

        try:
            text = latest_config(Path(run)).read_text()
        except (OSError, LitSoftmaxError) as e:
            raise SweepError(
                f"the best trial ({best.number}) stored no config in the study and its run {run} is not readable "
                f"here ({e}): run the sweep once on {host} to write best.yaml."
            ) from None
    config = yaml.safe_load(text)
    config["trainer"]["logger"]["init_args"]["name"] = f"{name}_best"
    config["trainer"]["enable_model_summary"] = None  # Lightning's default again
    config["test_after_fit"] = True
    header = (
        f"# Best of study {name!r} (trial {best.number}): {OBJECTIVE} {best.value:.4f}, run {host}:{run}\n"
        f"# {', '.join(f'{k}={v}' for k, v in best.params.items())}\n"
        f"#   python -m lit_softmax fit --config {root / 'best.yaml'}\n"
    )
    atomic_write_bytes((header + yaml.safe_dump(config, sort_keys=False)).encode(), root / "best.yaml")
    print(f"best: trial {best.number}, {OBJECTIVE} {best.value:.4f}, {best.params}\nwrote {root / 'best.yaml'}")
