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
python -m lit_softmax fit --config configs/fashion_mnist.yaml --print_config      # the full resolved config
python -m lit_softmax fit --model.help SoftmaxRegression                          # the model's arguments
tensorboard --logdir logs
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_softmax.callbacks import (
    EXIT_SIGTERM,
    CSVPredictionWriter,
    DivergenceGuard,
    GracefulInterrupt,
    TrainingInterrupted,
)
from lit_softmax.checkpoints import check_fits_model, claim_version_dir, find_run_checkpoint, load_checkpoint_safely
from lit_softmax.dashboard import TensorBoardDashboard
from lit_softmax.data import FashionMNISTDataModule
from lit_softmax.errors import CheckpointError, LitSoftmaxError
from lit_softmax.model import SoftmaxRegression

# The run directory the launching process claimed, handed to the processes Lightning's DDP launcher starts.
RUN_VERSION_ENV = "LIT_SOFTMAX_RUN_VERSION"


class SoftmaxCLI(LightningCLI):
    def __init__(self, *args, **kwargs) -> None:
        self.claimed_run: Path | None = None  # logs/<name>/version_N, when this process created it
        self._pinned = None
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # A run that failed before saving any checkpoint leaves nothing worth keeping; a directory with a
            # config.yaml would only look like a real run. Runs with checkpoints (interrupted, diverged) are kept.
            if self.claimed_run is not None and not any(self.claimed_run.glob("checkpoints/*.ckpt")):
                shutil.rmtree(self.claimed_run, ignore_errors=True)
            raise
        finally:
            if self.claimed_run is not None:
                os.environ.pop(RUN_VERSION_ENV, None)
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
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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

    def _resolve_ckpt_path(self, config, subcommand: str) -> None:
        """`best`/`last` mean "of the newest earlier run of this config", not of this fresh process."""
        ckpt_path = config["ckpt_path"]
        if ckpt_path in ("best", "last"):
            if subcommand == "fit" and ckpt_path == "best":
                raise CheckpointError("fit --ckpt_path best is not supported; resume with `--ckpt_path last`.")
            config["ckpt_path"] = str(find_run_checkpoint(runs_root(config), ckpt_path))
        elif not Path(ckpt_path).is_file():
            raise CheckpointError(
                f"checkpoint {ckpt_path} does not exist. Pass the path of a .ckpt file, or `best`/`last` "
                "for the newest run of this config."
            )
        # Checked once here; the model's shape is compared in before_<subcommand>, once it exists.
        self._checkpoint = load_checkpoint_safely(Path(config["ckpt_path"]))

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
        self._pin_run_directory(config)
        if config["trainer"].get("enable_progress_bar") is False and config["trainer"].get("callbacks"):
            # A config may bring its own progress bar (configs/fashion_mnist.yaml redraws every 10th batch);
            # `--trainer.enable_progress_bar false` then means "no bar" rather than Lightning's conflict error.
            config["trainer"]["callbacks"] = [
                c for c in config["trainer"]["callbacks"] if not _is_progress_bar(getattr(c, "class_path", ""))
            ]

    def _pin_run_directory(self, config) -> None:
        """Give the logger a `version_N` directory claimed atomically, so that two runs started together never
        share one, and every DDP process Lightning launches writes into the same one."""
        logger = config["trainer"].get("logger")
        init_args = getattr(logger, "init_args", None)
        if init_args is None or "version" not in init_args or init_args.version is not None:
            return  # no logger, a logger without version directories, or a version the user chose
        version = os.environ.get(RUN_VERSION_ENV)
        if version is None:
            if rank_zero_only.rank != 0:
                return  # torchrun/SLURM ranks > 0 write no logs; Lightning broadcasts rank 0's directory
            root = Path(init_args.save_dir) / (init_args.get("name") or "")
            self._existed = next(p for p in (root, *root.parents) if p.exists())  # cleanup stops there
            version = str(claim_version_dir(root))
            self.claimed_run = root / f"version_{version}"
            os.environ[RUN_VERSION_ENV] = version  # inherited by the processes Lightning's DDP launcher starts
        init_args.version = int(version)
        self._pinned = init_args

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # The logger has its directory now; config.yaml must not pin it, or `fit --config <run>/config.yaml`
        # would try to write into the old run.
        if getattr(self, "_pinned", None) is not None:
            self._pinned.version = None

    def after_fit(self) -> None:
        if self.config["fit"]["test_after_fit"] and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")

    def before_fit(self) -> None:
        self._check_fits_model("fit")

    def before_validate(self) -> None:
        self._check_fits_model("validate")

    def before_test(self) -> None:
        self._check_fits_model("test")

    def before_predict(self) -> None:
        self._check_fits_model("predict")

    def _check_fits_model(self, subcommand: str) -> None:
        ckpt_path = self.config_init[subcommand].get("ckpt_path")
        if ckpt_path is not None:
            check_fits_model(self._checkpoint, Path(ckpt_path), self.model)


def _is_progress_bar(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module else None
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def runs_root(config) -> Path:
    """logs/<name> of the configured TensorBoard (or CSV) logger: where earlier runs of this config live."""
    logger = config["trainer"].get("logger")
    init_args = getattr(logger, "init_args", None)
    if init_args is None or getattr(init_args, "save_dir", None) is None:
        raise CheckpointError("`best`/`last` need a logger to find earlier runs; pass the .ckpt path instead.")
    return Path(init_args.save_dir) / (getattr(init_args, "name", None) or "")


# Defaults for every run; configs and the command line override them.
TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # default_hp_metric=False: no placeholder hp_metric=-1; the dashboard logs the real one (best val/acc).
        "init_args": {"save_dir": "logs", "name": "fashion_mnist", "default_hp_metric": False},
    },
    "plugins": [{"class_path": "lit_softmax.checkpoints.AtomicCheckpointIO"}],
}


def main(args: list[str] | None = None) -> None:
    try:
        SoftmaxCLI(
            SoftmaxRegression,
            FashionMNISTDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=42,
            trainer_defaults=TRAINER_DEFAULTS,
            args=args,
        )
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
