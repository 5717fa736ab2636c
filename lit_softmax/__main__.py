"""Command line: LightningCLI over SoftmaxRegression + FashionMNISTDataModule.

python -m lit_softmax fit --config configs/fashion_mnist.yaml            # the tuned default
python -m lit_softmax fit --config configs/seed_recipe.yaml              # the original script's recipe
python -m lit_softmax fit --config configs/fashion_mnist.yaml --config configs/debug.yaml   # seconds-long smoke run
python -m lit_softmax fit --config configs/fashion_mnist.yaml --model.lr 0.05 --trainer.max_epochs 3
python -m lit_softmax test --config configs/fashion_mnist.yaml --ckpt_path best   # best of the latest run
python -m lit_softmax fit --config configs/fashion_mnist.yaml --ckpt_path last   # resume after Ctrl-C / SIGTERM
python -m lit_softmax predict --config configs/fashion_mnist.yaml --ckpt_path best   # CSV for the test split
python -m lit_softmax predict --config configs/fashion_mnist.yaml --ckpt_path best --data.predict_dir photos/
python -m lit_softmax fit --config configs/fashion_mnist.yaml --config configs/ddp_cpu.yaml  # 2 processes
python -m lit_softmax export --config configs/fashion_mnist.yaml --ckpt_path best  # model.onnx, verified
python -m lit_softmax fit --config configs/fashion_mnist.yaml --print_config      # the full resolved config
python -m lit_softmax fit --model.help SoftmaxRegression                          # the model's arguments
tensorboard --logdir logs
"""

from __future__ import annotations

import importlib
import itertools
import os
import shutil
import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_softmax.callbacks import (
    EXIT_SIGTERM,
    CSVPredictionWriter,
    DivergenceGuard,
    GracefulInterrupt,
    LearningRateMonitor,
    RunCheckpoint,
    TrainingInterrupted,
)
from lit_softmax.checkpoints import check_fits_model, claim_version_dir, find_run_checkpoint, load_checkpoint_safely
from lit_softmax.dashboard import TensorBoardDashboard
from lit_softmax.data import FashionMNISTDataModule
from lit_softmax.errors import CheckpointError, ConfigError, LitSoftmaxError
from lit_softmax.fashion_mnist import CLASSES
from lit_softmax.model import SoftmaxRegression

# The run directory the launching process claimed, handed to the processes Lightning's DDP launcher starts.
RUN_VERSION_ENV = "LIT_SOFTMAX_RUN_VERSION"


class RunConfig(SaveConfigCallback):
    """Lightning's SaveConfigCallback, for any logger: config.yaml goes into the run directory (the logger's,
    or the Trainer's root directory when the logger has none, as MLflow's), and to MLflow as an artifact."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})
        self.resumed_run: Path | None = None  # set by the CLI for `fit --ckpt_path` into an existing run

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts rank 0's directory: a collective, so every rank asks, here, not in
        # save_config (rank 0 only, where it would pair with another broadcast and desynchronise the ranks).
        self._run = Path(trainer.log_dir or trainer.default_root_dir)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        run = self._run
        path = run / self.config_filename
        if path.exists() and stage == "fit" and self.resumed_run == run.resolve():
            # A resumed run: config.yaml stays what the run started with; each resume adds its own next to it.
            path = next(p for k in itertools.count(1) if not (p := run / f"config.resume{k}.yaml").exists())
        elif path.exists() and not self.overwrite:
            raise ConfigError(
                f"{path} already exists: this run directory belongs to another run, which is left as it is. "
                "Choose another `--trainer.logger.version`, or leave it unset for a fresh `version_N`."
            )
        run.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # skip_none=False keeps explicit nulls, as Lightning's own SaveConfigCallback does; jsonargparse >= 4.49
            # calls the argument deprecated, but its replacement does not exist in the older releases we support.
            warnings.filterwarnings("ignore", message="(?s).*skip_none")
            self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path))


class Trainer(L.Trainer):
    """Lightning's Trainer plus `export`, which LightningCLI offers as a subcommand next to fit/validate/test/
    predict (a CLI subcommand is a Trainer method; see `SoftmaxCLI.subcommands`)."""

    def export(
        self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None, ckpt_path: str = "best",
        output: str | None = None, atol: float = 1e-5,
    ) -> Path:  # fmt: skip
        """Write the checkpoint's model as ONNX, after checking with onnxruntime on the test split that it
        predicts the same class for every image, with probabilities within `atol`.

        Args:
            ckpt_path: `best` or `last` (of the newest run of this config), or a .ckpt path.
            output: where to write; default `model.onnx` next to the checkpoint.
            atol: the largest difference in any probability between PyTorch and onnxruntime.
        """
        from lit_softmax import export  # onnx and onnxruntime only when exporting

        if not atol > 0:
            raise ConfigError(f"--atol must be > 0, got {atol}; e.g. 1e-5.")

        checkpoint = load_checkpoint_safely(Path(ckpt_path))
        model.load_state_dict(checkpoint["state_dict"])
        datamodule.prepare_data()
        datamodule.setup("test")
        dest = Path(output) if output else Path(ckpt_path).parent / "model.onnx"
        scores = [s.get("current_score") for s in checkpoint.get("callbacks", {}).values() if isinstance(s, dict)]
        val_acc = next((float(s) for s in scores if s is not None), None)
        metadata = {
            "checkpoint": str(Path(ckpt_path).resolve()),
            "epoch": str(checkpoint.get("epoch")),
            "global_step": str(checkpoint.get("global_step")),
            "val_acc": "unknown" if val_acc is None else f"{val_acc:.4f}",
        }
        test = datamodule.test_set
        result = export.export(model, dest, test.images, test.labels, metadata, atol)
        rank_zero_info(
            f"wrote {dest}: onnxruntime on the {result.images} test images: same class for every image, "
            f"probabilities within {result.max_abs_diff:.1e} of PyTorch, accuracy {result.onnx_acc:.4f} "
            f"(val_acc of the checkpoint: {metadata['val_acc']})."
        )
        return dest


class SoftmaxCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # name -> Trainer method arguments the CLI fills in itself (the instantiated model and datamodule)
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}

    def __init__(self, *args, **kwargs) -> None:
        self.claimed_run: Path | None = None  # logs/<name>/version_N, when this process created it
        self._resume_run: Path | None = None  # the run directory `fit --ckpt_path` continues
        self._user_lr: float | None = None
        self._pinned: list | None = None  # (config namespace, key) set to this run's directory, see below
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # A run that failed before saving any checkpoint leaves nothing worth keeping; a directory with a
            # config.yaml would only look like a real run. Runs with checkpoints (interrupted, diverged) are kept.
            if self.claimed_run is not None and not any(self.claimed_run.glob("checkpoints/*.ckpt")):
                shutil.rmtree(self.claimed_run, ignore_errors=True)
            raise
        finally:
            if self.claimed_run is not None or self._resume_run is not None:
                os.environ.pop(RUN_VERSION_ENV, None)
            if self.claimed_run is not None:
                # Claimed but never written to (fast_dev_run logs nothing, a bad value stopped the run): remove it
                # and the parents this run created, so a failed command leaves no trace.
                for directory in (self.claimed_run, *self.claimed_run.parents):
                    if directory == self._existed or (directory.is_dir() and any(directory.iterdir())):
                        break
                    if directory.is_dir():
                        directory.rmdir()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model and data classes are chosen by config (`model.class_path`), defaulting to the textbook pair;
        # configs/seed_recipe.yaml selects the opt-in grouped-steps pair from lit_softmax/grouped.py.
        parser.set_defaults(
            {
                "model": {"class_path": "lit_softmax.SoftmaxRegression"},
                "data": {"class_path": "lit_softmax.FashionMNISTDataModule"},
            }
        )
        # Always-on callbacks get their own config section (`checkpoint.*`, `lr_monitor.*`), so a config
        # that lists extra `trainer.callbacks` cannot silently drop them.
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:02d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(TensorBoardDashboard, "dashboard")
        parser.add_lightning_class_args(CSVPredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(GracefulInterrupt, "interrupt")
        parser.add_lightning_class_args(DivergenceGuard, "divergence_guard")
        parser.add_argument(
            "--test_after_fit", type=bool, default=False,
            help="After fit, evaluate the best checkpoint (by val/acc) on the test split, in the same run.",
        )  # fmt: skip

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # Before LightningCLI reads the model's hyper-parameters from `ckpt_path` (so `best`/`last` get them too)
        # and before anything is instantiated or written.
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path") is not None:
            self._resolve_ckpt_path(self.config[subcommand], subcommand)
            # LightningCLI next replaces the model's settings with the checkpoint's; a new lr must survive that.
            self._user_lr = self.config[subcommand]["model"].init_args.get("lr")

    def _resolve_ckpt_path(self, config, subcommand: str) -> None:
        """`best`/`last` mean "of the newest earlier run of this recipe", not of this fresh process."""
        ckpt_path = config["ckpt_path"]
        if ckpt_path in ("best", "last"):
            if subcommand == "fit" and ckpt_path == "best":
                raise CheckpointError("fit --ckpt_path best is not supported; resume with `--ckpt_path last`.")
            path = find_run_checkpoint(runs_root(config), ckpt_path, lambda c: recipe_differences(c, config))
            config["ckpt_path"] = str(path)
        elif not Path(ckpt_path).is_file():
            raise CheckpointError(
                f"checkpoint {ckpt_path} does not exist. Pass the path of a .ckpt file, or `best`/`last` "
                "for the newest run of this config."
            )
        # Checked once here; the model's shape is compared in before_<subcommand>, once it exists.
        self._checkpoint = load_checkpoint_safely(Path(config["ckpt_path"]))
        if subcommand != "fit":
            return
        if differences := recipe_differences(self._checkpoint, config):
            raise CheckpointError(
                f"cannot resume {config['ckpt_path']} with these settings: {'; '.join(differences)}. A resumed run "
                "keeps the model and data settings it was trained with (only model.lr and trainer settings such "
                "as max_epochs may change): drop those overrides, or start a new run without --ckpt_path."
            )
        run = Path(config["ckpt_path"]).resolve().parent.parent
        if (run / "config.yaml").is_file() and run.parent == runs_root(config).resolve():
            self._resume_run = run  # fit goes on in this run's directory (see _pin_run_directory)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
        if self._user_lr is not None:  # the model's on_load_checkpoint moves the optimizer state to it
            config["model"].init_args.lr = self._user_lr
        logger = config["trainer"].get("logger")
        if getattr(logger, "class_path", "").endswith("MLFlowLogger") and not logger.init_args.get("tracking_uri"):
            # MLflow 3 refuses its file store; a SQLite file next to the other runs is the local default.
            save_dir = Path(logger.init_args.get("save_dir") or "logs")
            save_dir.mkdir(parents=True, exist_ok=True)
            logger.init_args.tracking_uri = f"sqlite:///{save_dir.resolve() / 'mlflow.db'}"
            if logger.init_args.get("artifact_location") is None:
                logger.init_args.artifact_location = str((save_dir / "mlartifacts").resolve())
        if self.subcommand != "export":  # export writes next to its checkpoint, never a run directory
            self._pin_run_directory(config)
        if config["trainer"].get("enable_checkpointing") is False and "checkpoint" in config:
            # The `checkpoint` section always adds a ModelCheckpoint, which Lightning refuses next to
            # enable_checkpointing=False; one that saves nothing is what the flag asks for.
            config["checkpoint"]["save_top_k"], config["checkpoint"]["save_last"] = 0, False
            config["trainer"]["enable_checkpointing"] = True
        if config["trainer"].get("enable_progress_bar") is False and config["trainer"].get("callbacks"):
            # A config may bring its own progress bar (configs/fashion_mnist.yaml redraws every 10th batch);
            # `--trainer.enable_progress_bar false` then means "no bar" rather than Lightning's conflict error.
            config["trainer"]["callbacks"] = [
                c for c in config["trainer"]["callbacks"] if not _is_progress_bar(getattr(c, "class_path", ""))
            ]

    def _pin_run_directory(self, config) -> None:
        """Give the run a `version_N` directory claimed atomically, so that two runs started together never share
        one, and every DDP process Lightning launches writes into the same one. TensorBoard and CSV loggers get it
        as their version; without a logger, or with MLflow (whose runs live in its store), it becomes the
        Trainer's root directory and the checkpoint directory's parent, and config.yaml goes there too."""
        trainer = config["trainer"]
        logger = trainer.get("logger")
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "version" in init_args:
            if init_args.version is not None:
                return  # a version the user chose
            pins = [(init_args, "version")]
        elif trainer.get("default_root_dir") is None:
            pins = [(trainer, "default_root_dir")]
            if "checkpoint" in config and config["checkpoint"].get("dirpath") is None:
                pins.append((config["checkpoint"], "dirpath"))
        else:
            return  # the user chose where the run goes
        version = os.environ.get(RUN_VERSION_ENV)
        if version is None and self._resume_run is not None and self._resume_run.name.startswith("version_"):
            version = self._resume_run.name.split("_", 1)[1]
            os.environ[RUN_VERSION_ENV] = version  # for the processes Lightning's DDP launcher starts
            if pins[0][1] == "version" and getattr(logger, "class_path", "").endswith("TensorBoardLogger"):
                # Events the interrupted run logged after its checkpoint are hidden, so the curves continue
                # without a doubled stretch (TensorBoard's SummaryWriter purge_step).
                logger["dict_kwargs"] = {"purge_step": self._checkpoint["global_step"] + 1}
        if version is None:
            if rank_zero_only.rank != 0:
                return  # torchrun/SLURM ranks > 0 write nothing; Lightning broadcasts rank 0's directories
            root = runs_root(config)
            self._existed = next(p for p in (root, *root.parents) if p.exists())  # cleanup stops there
            version = str(claim_version_dir(root))
            self.claimed_run = root / f"version_{version}"
            os.environ[RUN_VERSION_ENV] = version  # inherited by the processes Lightning's DDP launcher starts
        run = runs_root(config) / f"version_{version}"
        values = {"version": int(version), "default_root_dir": str(run), "dirpath": str(run / "checkpoints")}
        for target, key in pins:
            target[key] = values[key]
        self._pinned = pins

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunConfig):
                callback.resumed_run = self._resume_run
        if self._resume_run is not None:  # the run's own checkpoints are there: expected, not worth a warning
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # The run has its directory now; config.yaml must not pin it, or `fit --config <run>/config.yaml`
        # would try to write into the old run.
        for target, key in self._pinned or []:
            target[key] = None

    def after_fit(self) -> None:
        trainer = self.trainer
        if not self.config["fit"]["test_after_fit"] or trainer.interrupted:
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and not trainer.fast_dev_run:
            trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")
            return
        # fast_dev_run, max_epochs 0, no validation ran, checkpointing off: there is no best checkpoint.
        rank_zero_info("test_after_fit: no best checkpoint in this run, so the final weights are tested.")
        trainer.test(self.model, datamodule=self.datamodule)

    def before_fit(self) -> None:
        if hasattr(self.datamodule, "per_process_batch_size"):  # before any process is launched: one message
            self.datamodule.per_process_batch_size(self.trainer.world_size)
        self._check_fits_model("fit")
        ckpt_path, max_epochs = self.config_init["fit"].get("ckpt_path"), self.trainer.max_epochs
        # Lightning's own rule (a traceback otherwise): the checkpoint's epoch counter may not exceed max_epochs.
        if ckpt_path is not None and max_epochs not in (None, -1) and self._checkpoint["epoch"] > max_epochs:
            epoch = self._checkpoint["epoch"]
            if self.trainer.fast_dev_run:
                raise ConfigError(
                    f"fast_dev_run runs one epoch, but {ckpt_path} was saved at epoch {epoch}: Lightning cannot "
                    "resume it there. fast_dev_run checks the code from fresh weights: drop `--ckpt_path`."
                )
            raise ConfigError(
                f"--trainer.max_epochs {max_epochs} ends before {ckpt_path}, which was saved at epoch {epoch}: "
                f"resume with `--trainer.max_epochs {epoch}` or more (more epochs than before train further)."
            )

    def before_validate(self) -> None:
        self._check_fits_model("validate")

    def before_test(self) -> None:
        self._check_fits_model("test")

    def before_predict(self) -> None:
        self._check_fits_model("predict")

    def before_export(self) -> None:
        self._check_fits_model("export")

    def _check_fits_model(self, subcommand: str) -> None:
        num_classes = self.model.hparams.get("num_classes", len(CLASSES))
        if num_classes != len(CLASSES):
            raise ConfigError(
                f"model.num_classes={num_classes}, but Fashion-MNIST has {len(CLASSES)} classes (labels 0-9, "
                f"{', '.join(CLASSES)}): leave model.num_classes at {len(CLASSES)}."
            )
        ckpt_path = self.config_init[subcommand].get("ckpt_path")
        if ckpt_path is not None:
            check_fits_model(self._checkpoint, Path(ckpt_path), self.model)


def _is_progress_bar(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module else None
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


# What makes a recipe: a run resumed or evaluated with `best`/`last` must have been trained with the same values.
# model.lr may change on resume (SoftmaxRegression.on_load_checkpoint moves the optimizer state to the new value).
RESUMABLE_MODEL_KEYS = ("lr",)
RECIPE_DATA_KEYS = ("batch_size", "val_size", "split_seed")


def recipe_differences(checkpoint: dict, config) -> list[str]:
    """The settings in `config` that differ from those `checkpoint` was trained with, as "key: there, here"."""
    differences = []
    for section, saved, keys in (
        ("model", checkpoint.get("hyper_parameters") or {}, None),
        ("data", checkpoint.get("datamodule_hyper_parameters") or {}, RECIPE_DATA_KEYS),
    ):
        here = config[section]
        saved_class, class_path = saved.get("_class_path"), getattr(here, "class_path", None)
        if saved_class and class_path and saved_class.rsplit(".", 1)[-1] != class_path.rsplit(".", 1)[-1]:
            differences.append(f"{section} class {saved_class} in the checkpoint, {class_path} here")
            continue
        init_args = getattr(here, "init_args", None) or {}
        for key, value in saved.items():
            if key.startswith("_") or (keys is not None and key not in keys) or key in RESUMABLE_MODEL_KEYS:
                continue
            if key in init_args and init_args[key] != value:
                differences.append(f"{section}.{key} is {value!r} in the checkpoint, {init_args[key]!r} here")
    return differences


def runs_root(config) -> Path:
    """Where the runs of this config live: logs/<name> of a TensorBoard or CSV logger, logs/<experiment_name> of
    an MLflow logger, logs/unlogged without a logger."""
    logger = config["trainer"].get("logger")
    if logger in (False, None):
        return Path("logs") / "unlogged"
    init_args = getattr(logger, "init_args", None)
    if init_args is None:
        raise CheckpointError("`best`/`last` need the logger's settings to find earlier runs; pass the .ckpt path.")
    name = init_args.get("name") or init_args.get("experiment_name") or ""
    return Path(init_args.get("save_dir") or "logs") / name


# Defaults for every run; configs and the command line override them.
TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # default_hp_metric=False: no placeholder hp_metric=-1; the dashboard logs the real one (best val/acc).
        "init_args": {"save_dir": "logs", "name": "fashion_mnist", "default_hp_metric": False},
    },
    "plugins": [{"class_path": "lit_softmax.checkpoints.AtomicCheckpointIO"}],
}


def build_cli(args: list[str], callbacks: list[L.Callback] | None = None, run: bool = True) -> SoftmaxCLI:
    """The command line, as `python -m lit_softmax <args>` runs it; `callbacks` are added to the Trainer's
    (the sweep adds Optuna's pruning callback to each trial this way)."""
    defaults = {**TRAINER_DEFAULTS, "callbacks": callbacks} if callbacks else TRAINER_DEFAULTS
    return SoftmaxCLI(
        SoftmaxRegression,
        FashionMNISTDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=42,
        trainer_defaults=defaults,
        save_config_callback=RunConfig,
        trainer_class=Trainer,
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    try:
        if args[:1] == ["sweep"]:  # hyper-parameter search: its own small command (lit_softmax/sweep.py)
            from lit_softmax.sweep import sweep_main

            sweep_main(args[1:])
        else:
            build_cli(args)
    except SIGTERMException:
        sys.exit(EXIT_SIGTERM)  # GracefulInterrupt saved a checkpoint and said how to resume
    except Exception as e:
        error = user_error(e)
        if error is None or os.environ.get("LIT_SOFTMAX_TRACEBACK"):
            raise
        kind = "" if isinstance(error, TrainingInterrupted) else "error: "
        print(f"lit_softmax: {kind}{error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))


def user_error(exception: BaseException | None) -> LitSoftmaxError | None:
    """The LitSoftmaxError behind `exception`, if any: jsonargparse re-raises an error from a model or data
    `__init__` as a ValueError listing every class it tried, with the original as its cause."""
    while exception is not None and not isinstance(exception, LitSoftmaxError):
        exception = exception.__cause__
    return exception


if __name__ == "__main__":
    main()
