"""The run: one owner for a training run's identity and lifecycle.

A run is a directory `<save_dir>/<name>/version_N/` (for every logger, and without one: `logs/unlogged/`):

    config.yaml            the resolved config it started with (a valid `--config` for every subcommand)
    config.resumeK.yaml    the resolved config of its K-th resume
    run.yaml               lineage: the loggers' own run ids (MLflow, W&B) and each segment's starting checkpoint
    checkpoints/           last.ckpt (end of every epoch, any interrupt) and the best by val/acc
    events / metrics.csv / hparams.yaml / predictions.csv     the loggers' and writers' files

What this module guarantees, and where the CLI asks it to (`lit_softmax/cli.py`):
- `claim`: `version_N` is created with an atomic `mkdir` (two runs started together never share one) and handed to
  the processes Lightning's DDP launcher starts (they re-run the command line with `RUN_VERSION_ENV` set).
  TensorBoard/CSV loggers get it as their version; every other logger (MLflow, W&B, none) keeps its own ids and
  the run directory becomes the Trainer's root and the checkpoints' parent. A command that fails before its first
  checkpoint removes the directory it claimed.
- `--ckpt_path best|last`: the newest run whose model and data settings equal this command's (config files plus
  command-line overrides; trainer settings do not count; `model.lr` only when typed), and it says which.
- resume (`fit --ckpt_path`): the run's own latest config, with only what is typed on the command line on top;
  typed model/data settings other than `model.lr` that differ from the checkpoint are refused; a new lr takes
  effect (the optimizer state is scaled to it); the run goes on in its own directory, TensorBoard hides events
  logged after the checkpoint (`purge_step`), MLflow and W&B continue their own run.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lit_softmax.checkpoints import atomic_write_bytes, check_fits_model, load_checkpoint_safely
from lit_softmax.errors import CheckpointError, ConfigError, OutputError
from lit_softmax.fashion_mnist import CLASSES

# The run directory the launching process claimed, handed to the processes Lightning's DDP launcher starts.
RUN_VERSION_ENV = "LIT_SOFTMAX_RUN_VERSION"
LINEAGE = "run.yaml"
# What makes a recipe: `best`/`last` pick, and resume accepts, runs trained with the same values. The model's
# settings all count; of the data's, those that change what is trained on. model.lr may change on resume.
RECIPE_DATA_KEYS = ("batch_size", "val_size", "split_seed")
RESUMABLE_MODEL_KEYS = ("lr",)
# The arguments of the subcommand methods (Trainer.fit, ..., export): what one command does, not what the run is.
# A saved config leaves them out, so it is a valid --config for every subcommand.
ACTION_KEYS = (
    "ckpt_path",
    "weights_only",
    "return_predictions",
    "output",
    "atol",
    "host",
    "port",
    "max_batch_size",
    "batch_timeout",
)


@dataclass
class Command:
    """What the run owner knows of the command being run."""

    args: list[str]  # the command line as typed (LightningCLI does not keep it)
    checkpoint: dict | None = None  # the loaded --ckpt_path
    checkpoint_path: str | None = None  # its path, after `best`/`last` are resolved
    resumed: Path | None = None  # the run directory `fit --ckpt_path` continues
    claimed: Path | None = None  # logs/<name>/version_N, when this process created it
    existed: Path | None = None  # the nearest directory above it that existed before (cleanup stops there)
    pins: list = field(default_factory=list)  # (config namespace, key, value before) set to this run's ids
    scoped: bool = True  # inside `command()`, which cleans up; False for a SoftmaxCLI built directly
    started: float = field(default_factory=time.time)
    saved_config: Path | None = None  # the config.yaml / config.resumeK.yaml this command wrote


_command: Command | None = None


@contextlib.contextmanager
def command(args: list[str] | None):
    """The scope of one CLI command: records what the user typed, and on failure removes a run directory this
    command claimed but never saved a checkpoint in (a directory with a config.yaml would look like a real run)."""
    global _command
    _command = cmd = Command(list(sys.argv[1:] if args is None else args))
    inherited = os.environ.get(RUN_VERSION_ENV)  # set when this process is a DDP child of such a command
    try:
        typed_path = _typed_ckpt_path(cmd.args)
        if typed_path is not None and Path(typed_path).is_file():
            # LightningCLI loads a typed checkpoint file right after parsing, before any hook (`_parse_ckpt_path`,
            # with torch.load's raw errors): checked here first, so a corrupt, crafted or NaN file gets our message.
            cmd.checkpoint, cmd.checkpoint_path = load_checkpoint_safely(Path(typed_path)), typed_path
        yield cmd
    except BaseException:
        if cmd.claimed is not None and not any(cmd.claimed.glob("checkpoints/*.ckpt")):
            shutil.rmtree(cmd.claimed, ignore_errors=True)
        elif cmd.resumed is not None and cmd.saved_config is not None and not _saved_since(cmd):
            # A resume that failed before its first checkpoint (a refused setting, a crash) leaves the run as it
            # was: its config.resumeK.yaml would otherwise become the base of the next resume.
            cmd.saved_config.unlink(missing_ok=True)
            lineage = read_lineage(cmd.resumed)
            lineage["segments"] = [s for s in lineage.get("segments", []) if s["config"] != cmd.saved_config.name]
            atomic_write_bytes(yaml.safe_dump(lineage, sort_keys=False).encode(), cmd.resumed / LINEAGE)
        raise
    finally:
        _command = None
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            # W&B keeps one run per process and hands it to the next WandbLogger: the next command in this
            # process (a sweep's next trial, a notebook's next fit) must get its own run, or its resume's.
            wandb.finish()
        if inherited is None:
            os.environ.pop(RUN_VERSION_ENV, None)
        if cmd.claimed is not None:  # claimed but never written to (fast_dev_run logs nothing): remove it too
            for directory in (cmd.claimed, *cmd.claimed.parents):
                if directory == cmd.existed or (directory.is_dir() and any(directory.iterdir())):
                    break
                if directory.is_dir():
                    directory.rmdir()


def _saved_since(cmd: Command) -> bool:
    return any(p.stat().st_mtime >= cmd.started for p in cmd.resumed.glob("checkpoints/*.ckpt"))


def _current() -> Command:
    global _command
    if _command is None:  # SoftmaxCLI built directly, e.g. from a notebook: the command line is sys.argv
        _command = Command(sys.argv[1:], scoped=False)  # until after_instantiate, which ends such a command
    return _command


def typed_keys(args: list[str]) -> set[str]:
    """The config keys given on the command line (`--model.lr 0.1`, `--model.init_args.lr=0.1` -> `model.lr`)."""
    keys = set()
    for arg in args:
        if arg.startswith("--") and arg != "--config" and not arg.startswith("--config="):
            keys.add(arg[2:].split("=", 1)[0].replace(".init_args.", ".").replace(".dict_kwargs.", "."))
    return keys


def _typed_ckpt_path(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--ckpt_path" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--ckpt_path="):
            return arg.split("=", 1)[1]
    return None


def without_configs(args: list[str]) -> list[str]:
    """The command line without its `--config <file>` pairs and without `--ckpt_path`: what the user typed on top."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--config", "--ckpt_path"):
            skip = True
        elif not arg.startswith(("--config=", "--ckpt_path=")):
            out.append(arg)
    return out


# ---- before LightningCLI instantiates anything (SoftmaxCLI.before_instantiate_classes) -------------------------
def prepare(cli: LightningCLI) -> None:
    """Resolve `--ckpt_path`, build a resume's config, and give the run its directory."""
    cmd = _current()
    subcommand = cli.subcommand
    config = cli.config[subcommand] if subcommand else cli.config  # run=False: no subcommand
    if subcommand and config.get("ckpt_path") is not None:
        # Why here: LightningCLI reads the model's hyper-parameters from `ckpt_path` right after parsing
        # (`_parse_ckpt_path`, no hook in between), only for an existing file, so `best`/`last` would get none and
        # a typed `--model.lr` would be overwritten. This hook runs after it (tests/test_run.py checks the order),
        # resolves the path and applies the checkpoint's settings the same way, keeping what the user typed.
        _use_checkpoint(cli, cmd, subcommand)
        config = cli.config[subcommand]
    _default_logger_settings(config)
    if subcommand not in ("export", "serve"):  # they write next to their checkpoint, never a run directory
        _pin_run_directory(config, cmd)


def _use_checkpoint(cli: LightningCLI, cmd: Command, subcommand: str) -> None:
    config = cli.config[subcommand]
    typed = typed_keys(cmd.args)
    ckpt_path = config["ckpt_path"]
    if ckpt_path in ("best", "last"):
        if subcommand == "fit" and ckpt_path == "best":
            raise CheckpointError("fit --ckpt_path best is not supported; resume with `--ckpt_path last`.")
        ignore = set(RESUMABLE_MODEL_KEYS) if "model.lr" in typed else set()
        path = find_run_checkpoint(runs_root(config), ckpt_path, lambda c: recipe_differences(c, config, ignore))
        rank_zero_info(f"--ckpt_path {ckpt_path}: {path} (the newest run trained with these model and data settings)")
    elif Path(ckpt_path).is_file():
        path = Path(ckpt_path)
    else:
        raise CheckpointError(
            f"checkpoint {ckpt_path} does not exist. Pass the path of a .ckpt file, or `best`/`last` "
            "for the newest run of this config."
        )
    if cmd.checkpoint_path != str(path):
        cmd.checkpoint, cmd.checkpoint_path = load_checkpoint_safely(path), str(path)
    run = path.resolve().parent.parent
    if subcommand == "fit" and (saved := latest_config(run)) is not None:
        # A resume starts from the run's own settings; only what is typed on this command line changes them.
        typed_args = without_configs(cmd.args[cmd.args.index(subcommand) + 1 :])
        cli.config = cli.parser.parse_args([subcommand, "--config", str(saved), *typed_args, "--ckpt_path", str(path)])
        config = cli.config[subcommand]
        if run.parent == runs_root(config).resolve():
            cmd.resumed = run  # fit goes on in this run's directory (see _pin_run_directory)
    config["ckpt_path"] = str(path)
    differences = recipe_differences(cmd.checkpoint, config, ignore=set(RESUMABLE_MODEL_KEYS))
    if subcommand == "fit" and (refused := [d for d in differences if f"{d[0]}.{d[1]}" in typed or d[1] == "class"]):
        raise CheckpointError(
            f"cannot resume {path} with these settings: {'; '.join(_describe(d) for d in refused)}. A resumed run "
            "keeps the model and data settings it was trained with (only model.lr and trainer settings such as "
            "max_epochs may change): drop those overrides, or start a new run without --ckpt_path."
        )
    # The checkpoint's settings win over the config files' (LightningCLI's rule for the model, here also for
    # `best`/`last` and for the recipe's data settings when resuming); a typed --model.lr wins over the checkpoint.
    for section, key, saved_value, _ in differences:
        if key != "class" and (section == "model" or subcommand == "fit"):
            config[section].init_args[key] = saved_value
    saved_lr = (cmd.checkpoint.get("hyper_parameters") or {}).get("lr")
    if "model.lr" not in typed and saved_lr is not None and "lr" in (config["model"].get("init_args") or {}):
        config["model"].init_args.lr = saved_lr


def _describe(difference: tuple) -> str:
    section, key, saved, here = difference
    if key == "class":
        return f"{section} class {saved} in the checkpoint, {here} here"
    return f"{section}.{key} is {saved!r} in the checkpoint, {here!r} here"


def recipe_differences(checkpoint: dict, config, ignore: set[str] = frozenset()) -> list[tuple]:
    """The recipe settings in `config` that differ from those `checkpoint` was trained with:
    (section, key, checkpoint's value, config's value); key "class" for another model/data class."""
    differences = []
    for section, saved, keys in (
        ("model", checkpoint.get("hyper_parameters") or {}, None),
        ("data", checkpoint.get("datamodule_hyper_parameters") or {}, RECIPE_DATA_KEYS),
    ):
        here = config[section]
        saved_class, class_path = saved.get("_class_path"), getattr(here, "class_path", None)
        if saved_class and class_path and saved_class.rsplit(".", 1)[-1] != class_path.rsplit(".", 1)[-1]:
            differences.append((section, "class", saved_class, class_path))
            continue
        init_args = getattr(here, "init_args", None) or {}
        for key, value in saved.items():
            if key.startswith("_") or (keys is not None and key not in keys) or (section == "model" and key in ignore):
                continue
            if key in init_args and init_args[key] != value:
                differences.append((section, key, value, init_args[key]))
    return differences


def _default_logger_settings(config) -> None:
    logger = config["trainer"].get("logger")
    if getattr(logger, "class_path", "").endswith("MLFlowLogger") and not logger.init_args.get("tracking_uri"):
        # MLflow 3 refuses its file store; a SQLite file next to the other runs is the local default.
        save_dir = Path(logger.init_args.get("save_dir") or "logs")
        save_dir.mkdir(parents=True, exist_ok=True)
        logger.init_args.tracking_uri = f"sqlite:///{save_dir.resolve() / 'mlflow.db'}"
        if logger.init_args.get("artifact_location") is None:
            logger.init_args.artifact_location = str((save_dir / "mlartifacts").resolve())


def class_of(section) -> type | None:
    """The class a config section names (`class_path: package.module.Class`), or None."""
    module, _, name = (getattr(section, "class_path", None) or "").rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module else None
    return cls if isinstance(cls, type) else None


def _names_its_directory(logger) -> bool:
    """TensorBoard and CSV loggers write into `<save_dir>/<name>/version_<version>`: the run directory."""
    cls = class_of(logger)
    return cls is not None and issubclass(cls, (TensorBoardLogger, CSVLogger))


def _pin_run_directory(config, cmd: Command) -> None:
    """Give the run its `version_N` directory (see the module docstring)."""
    trainer = config["trainer"]
    logger = trainer.get("logger")
    init_args = getattr(logger, "init_args", None)
    if _names_its_directory(logger):
        if init_args.get("version") is not None:
            return  # a version the user chose
        pins = [(init_args, "version")]
    elif trainer.get("default_root_dir") is None:
        pins = [(trainer, "default_root_dir")]
        if "checkpoint" in config and config["checkpoint"].get("dirpath") is None:
            pins.append((config["checkpoint"], "dirpath"))
    else:
        return  # the user chose where the run goes
    version = os.environ.get(RUN_VERSION_ENV)
    if version is None and cmd.resumed is not None and cmd.resumed.name.startswith("version_"):
        version = cmd.resumed.name.split("_", 1)[1]
    if version is None:
        if rank_zero_only.rank != 0:
            return  # torchrun/SLURM ranks > 0 write nothing; Lightning broadcasts rank 0's directories
        root = runs_root(config)
        cmd.existed = next(p for p in (root, *root.parents) if p.exists())
        version = str(claim_version_dir(root))
        cmd.claimed = root / f"version_{version}"
    if cmd.scoped:  # inherited by the processes Lightning's DDP launcher starts; `command()` removes it at the end
        os.environ[RUN_VERSION_ENV] = version
    run = runs_root(config) / f"version_{version}"
    values = {"version": int(version), "default_root_dir": str(run), "dirpath": str(run / "checkpoints")}
    cmd.pins = [_pin(target, key, values[key]) for target, key in pins]
    if cmd.resumed is not None and cmd.checkpoint is not None:
        cmd.pins += _continue_logger_runs(logger, cmd)


def _pin(target, key: str, value) -> tuple:
    """Set target[key] = value; returns what `after_instantiate` needs to put the earlier value back."""
    before = (target, key, target.get(key), key in target)
    target[key] = value
    return before


def _continue_logger_runs(logger, cmd: Command) -> list:
    """A resumed run writes into the same logger run: TensorBoard hides events the interrupted process logged after
    its checkpoint (SummaryWriter's purge_step), MLflow and W&B continue the run id recorded in run.yaml."""
    cls = class_of(logger)
    if cls is None:
        return []
    if issubclass(cls, TensorBoardLogger):
        purge = {**(logger.get("dict_kwargs") or {}), "purge_step": cmd.checkpoint["global_step"] + 1}
        return [_pin(logger, "dict_kwargs", purge)]
    ids = (read_lineage(cmd.resumed).get("loggers") or {}).get(cls.__name__) or {}
    key = "run_id" if issubclass(cls, MLFlowLogger) else "id" if issubclass(cls, WandbLogger) else None
    if key is None or not ids.get(key) or logger.init_args.get(key) is not None:
        return []
    return [_pin(logger.init_args, key, ids[key])]


# ---- after instantiation (SoftmaxCLI.after_instantiate_classes) -------------------------------------------------
def after_instantiate(cli: LightningCLI) -> None:
    """Hand the instantiated run what it needs, and unpin the run's ids from the config that will be saved."""
    global _command
    cmd = _current()
    for callback in cli.trainer.callbacks:
        if isinstance(callback, RunConfig):
            callback.command = cmd
    if cmd.resumed is not None:  # the run's own checkpoints are there: expected, not worth a warning
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    for target, key, value, existed in cmd.pins:  # config.yaml must not pin this run (`fit --config` of it would
        if existed:  # write into this run)
            target[key] = value
        else:
            del target[key]
    if not cmd.scoped:  # no `command()` scope to end it
        _command = None
    _check_fits_model(cli, cmd)


def _check_fits_model(cli: LightningCLI, cmd: Command) -> None:
    num_classes = cli.model.hparams.get("num_classes", len(CLASSES))
    if num_classes != len(CLASSES):
        raise ConfigError(
            f"model.num_classes={num_classes}, but Fashion-MNIST has {len(CLASSES)} classes (labels 0-9, "
            f"{', '.join(CLASSES)}): leave model.num_classes at {len(CLASSES)}."
        )
    if cmd.checkpoint is None:
        return
    path = Path(cli.config[cli.subcommand]["ckpt_path"])
    check_fits_model(cmd.checkpoint, path, cli.model)
    max_epochs, epoch = cli.trainer.max_epochs, cmd.checkpoint["epoch"]
    # Lightning's own rule (a traceback otherwise): the checkpoint's epoch counter may not exceed max_epochs.
    if cli.subcommand == "fit" and max_epochs not in (None, -1) and epoch > max_epochs:
        if cli.trainer.fast_dev_run:
            raise ConfigError(
                f"fast_dev_run runs one epoch, but {path} was saved at epoch {epoch}: Lightning cannot resume it "
                "there. fast_dev_run checks the code from fresh weights: drop `--ckpt_path`."
            )
        raise ConfigError(
            f"--trainer.max_epochs {max_epochs} ends before {path}, which was saved at epoch {epoch}: resume with "
            f"`--trainer.max_epochs {epoch}` or more (more epochs than before train further)."
        )


# ---- the run's files ---------------------------------------------------------------------------------------------
def run_directory(trainer: L.Trainer) -> Path:
    """Where this run's files go: the TensorBoard/CSV logger's version directory, else the Trainer's root (pinned
    to the run directory by `prepare`). Every process must call it: `trainer.log_dir` is a collective."""
    if trainer.loggers and isinstance(trainer.loggers[0], (TensorBoardLogger, CSVLogger)):
        return Path(trainer.log_dir)
    return Path(trainer.default_root_dir)


def latest_config(run: Path) -> Path | None:
    """The run's most recent saved config: config.resumeK.yaml of its latest resume, else config.yaml."""
    latest = run / "config.yaml"
    if not latest.is_file():
        return None
    for k in itertools.count(1):
        if not (run / f"config.resume{k}.yaml").is_file():
            return latest
        latest = run / f"config.resume{k}.yaml"
    raise AssertionError("unreachable")


def read_lineage(run: Path) -> dict:
    try:
        return yaml.safe_load((run / LINEAGE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


class RunConfig(SaveConfigCallback):
    """Lightning's SaveConfigCallback, for any logger: the resolved config goes into the run directory
    (config.yaml, or config.resumeK.yaml when a resume continues the run), without the subcommand's own arguments
    (ckpt_path, ...), so it is a valid `--config` for every subcommand; to MLflow as an artifact; and the loggers'
    run ids go to run.yaml, so a resume continues the same MLflow/W&B run."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})
        self.command: Command | None = None  # set by after_instantiate

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._run = run_directory(trainer)  # a collective: every rank asks, here (save_config runs on rank 0 only)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        run, cmd = self._run, self.command
        path = run / self.config_filename
        resumed = cmd is not None and cmd.resumed is not None and cmd.resumed == run.resolve()
        if path.exists() and stage == "fit" and resumed:
            path = next(p for k in itertools.count(1) if not (p := run / f"config.resume{k}.yaml").exists())
        elif path.exists() and not self.overwrite:
            raise ConfigError(
                f"{path} already exists: this run directory belongs to another run, which is left as it is. "
                "Choose another `--trainer.logger.version`, or leave it unset for a fresh `version_N`."
            )
        with warnings.catch_warnings():
            # skip_none=False keeps explicit nulls, as Lightning's own SaveConfigCallback does; jsonargparse >= 4.49
            # calls the argument deprecated, but its replacement does not exist in the older releases we support.
            warnings.filterwarnings("ignore", message="(?s).*skip_none")
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_link_targets=False))
        for key in ACTION_KEYS:
            config.pop(key, None)
        atomic_write_bytes(yaml.safe_dump(config, sort_keys=False).encode(), path)
        if cmd is not None:
            cmd.saved_config = path
        lineage = read_lineage(run)
        if stage == "fit":  # each segment of the run: the config it ran with, the checkpoint it started from
            start = cmd.checkpoint_path if cmd is not None else None
            lineage.setdefault("segments", []).append({"config": path.name, "resumed_from": start})
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path))
                lineage.setdefault("loggers", {})["MLFlowLogger"] = {"run_id": logger.run_id}
            elif isinstance(logger, WandbLogger):
                lineage.setdefault("loggers", {})["WandbLogger"] = {"id": logger.version}
        if lineage:
            atomic_write_bytes(yaml.safe_dump(lineage, sort_keys=False).encode(), run / LINEAGE)


class ResumeLineage(L.Callback):
    """`fit --ckpt_path ... --model.lr X`: the optimizer and schedule states in the checkpoint hold the old lr and
    would silently win over the new one (Lightning restores them after this hook); they are scaled so the run goes
    on at X on the same schedule. A no-op otherwise."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        old, new = (checkpoint.get("hyper_parameters") or {}).get("lr"), pl_module.hparams.get("lr")
        if not old or new is None or old == new:
            return
        for state in checkpoint.get("optimizer_states", []):
            for group in state["param_groups"]:
                for key in ("lr", "initial_lr"):
                    if key in group:
                        group[key] = group[key] * new / old
        for state in checkpoint.get("lr_schedulers", []):
            if "base_lrs" in state:  # LambdaLR: lr = base_lr * factor(step)
                state["base_lrs"] = [lr * new / old for lr in state["base_lrs"]]
        checkpoint["hyper_parameters"]["lr"] = new
        rank_zero_info(f"model.lr {new:g} replaces the checkpoint's {old:g} from here on (the schedule is kept).")


# ---- finding runs ------------------------------------------------------------------------------------------------
def runs_root(config) -> Path:
    """Where the runs of this config live: `<save_dir>/<name>` of the logger (TensorBoard/CSV `name`, MLflow
    `experiment_name`, W&B `project`), `logs/unlogged` without a logger."""
    logger = config["trainer"].get("logger")
    if logger in (False, None):
        return Path("logs") / "unlogged"
    init_args = getattr(logger, "init_args", None)
    if init_args is None:
        raise CheckpointError("`best`/`last` need the logger's settings to find earlier runs; pass the .ckpt path.")
    name = init_args.get("name") or init_args.get("experiment_name") or init_args.get("project") or "lightning_logs"
    return Path(init_args.get("save_dir") or "logs") / name


def find_run_checkpoint(root: Path, which: str, differences=lambda checkpoint: []) -> Path:
    """The `last.ckpt` or best checkpoint of the newest run under `root` (e.g. logs/fashion_mnist) whose checkpoint
    `differences(checkpoint)` finds no different setting in: runs of other recipes logged under the same name
    (e.g. smoke runs of several configs composed with configs/debug.yaml) are passed over."""
    runs = [d for d in root.glob("*") if (d / "checkpoints" / "last.ckpt").is_file()] if root.is_dir() else []
    if not runs:
        raise CheckpointError(
            f"no run with checkpoints under {root}: train first (`python -m lit_softmax fit --config ...`) "
            "or pass `--ckpt_path path/to/file.ckpt`."
        )
    runs.sort(key=lambda d: (d / "checkpoints" / "last.ckpt").stat().st_mtime, reverse=True)
    newest_differs = None
    for run in runs:
        last = run / "checkpoints" / "last.ckpt"
        state = load_checkpoint_safely(last)
        found = differences(state)
        if not found:
            break
        newest_differs = newest_differs or (run, found)
    else:
        run, found = newest_differs
        raise CheckpointError(
            f"no run under {root} was trained with this config; the newest, {run}, differs: "
            f"{'; '.join(_describe(d) for d in found)}. A run is resumed or evaluated with the settings it was "
            f"trained with (only model.lr may change): use its config (`--config {latest_config(run) or run}`), "
            "or pass a .ckpt path."
        )
    if which == "last":
        return last
    try:
        best = next(s["best_model_path"] for s in state["callbacks"].values() if s.get("best_model_path"))
    except Exception as e:
        raise CheckpointError(f"cannot read the best checkpoint's name from {last} ({e}); pass its path.") from e
    best = run / "checkpoints" / Path(best).name  # the run directory may have moved since
    if not best.is_file():
        raise CheckpointError(f"{last} names best checkpoint {best}, which does not exist; pass a path instead.")
    return best


def claim_version_dir(root: Path) -> int:
    """Create `root/version_N` for the smallest free N >= every existing version, and return N.

    `mkdir` is atomic, so two runs started at the same moment never pick the same directory (listing the
    directory and taking max + 1, as the loggers do by default, lets both pick it).
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(d.name.split("_", 1)[1]) for d in root.glob("version_*") if d.name.split("_", 1)[1].isdigit()]
        version = max(taken, default=-1) + 1
        while True:
            try:
                (root / f"version_{version}").mkdir()
                return version
            except FileExistsError:
                version += 1
    except OSError as e:
        raise OutputError(
            f"cannot create a run directory under {root} ({e.strerror or e}). Make it writable, or put runs "
            "somewhere else with `--trainer.logger.save_dir <dir>` (`--trainer.default_root_dir <dir>` without a "
            "logger)."
        ) from e
