"""Command line: LightningCLI over SoftmaxRegression + FashionMNISTDataModule.

python -m lit_softmax fit --config configs/fashion_mnist.yaml            # the tuned default
python -m lit_softmax fit --config configs/seed_recipe.yaml              # the original script's recipe
python -m lit_softmax fit --config configs/debug.yaml                    # seconds-long smoke run
python -m lit_softmax fit --config configs/fashion_mnist.yaml --model.lr 0.05 --trainer.max_epochs 3
python -m lit_softmax test --config configs/fashion_mnist.yaml --ckpt_path best   # best of the latest run
python -m lit_softmax fit --config configs/fashion_mnist.yaml --ckpt_path last   # resume after Ctrl-C / SIGTERM
python -m lit_softmax predict --config configs/fashion_mnist.yaml --ckpt_path best   # CSV for the test split
python -m lit_softmax predict --config configs/fashion_mnist.yaml --ckpt_path best --data.predict_dir photos/
python -m lit_softmax fit --config configs/fashion_mnist.yaml --config configs/ddp_cpu.yaml  # 2 processes
python -m lit_softmax fit --config configs/fashion_mnist.yaml --print_config      # the full resolved config
tensorboard --logdir logs
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_softmax.dashboard import TensorBoardDashboard
from lit_softmax.data import FashionMNISTDataModule
from lit_softmax.errors import CheckpointError, ConfigError, LitSoftmaxError
from lit_softmax.model import SoftmaxRegression
from lit_softmax.predict import CSVPredictionWriter
from lit_softmax.resilience import EXIT_SIGTERM, DivergenceGuard, GracefulInterrupt, TrainingInterrupted


class SoftmaxCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
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

    def instantiate_trainer(self, **kwargs):
        # Looked at before the Trainer exists: Lightning appends its default bar to this very list.
        configured = kwargs.get("callbacks") or self._get(self.config_init, "trainer", default={}).get("callbacks")
        configured_bar = any(isinstance(c, ProgressBar) for c in configured or [])
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default progress bar redraws after every batch: ~1-3 ms a redraw here, more than a whole
        # training_step. Redrawing every 10th batch looks the same and costs a tenth. A progress bar the config
        # sets itself (trainer.callbacks) is left alone.
        bar = trainer.progress_bar_callback
        if type(bar) is TQDMProgressBar and bar.refresh_rate == 1 and not configured_bar:
            trainer.callbacks[trainer.callbacks.index(bar)] = TQDMProgressBar(refresh_rate=10)
        if self.subcommand != "predict":
            # It only acts in `predict`; elsewhere it would just be called, like every callback, ~3 times per SGD
            # step for nothing.
            trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, CSVPredictionWriter)]
        return trainer

    def before_fit(self) -> None:
        self._check_fits_model("fit")
        # The model takes its SGD steps itself (manual optimization, one per mini-batch), where Lightning's
        # automatic clipping and accumulation do not apply; say what to do instead of Lightning's generic error.
        trainer = self.trainer
        if trainer.gradient_clip_val:
            raise ConfigError(
                f"trainer.gradient_clip_val={trainer.gradient_clip_val} is not supported: SoftmaxRegression takes its "
                "SGD steps itself (several per training_step). Its loss is convex and smooth, so clipping is not "
                "needed; if the loss diverges, lower the learning rate (e.g. `--model.lr 0.05`)."
            )
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} is not supported: "
                "SoftmaxRegression takes its SGD steps itself. Accumulating k batches is one step on k times the "
                "data: set `--data.batch_size` k times larger instead (the whole dataset fits in memory)."
            )

    def after_fit(self) -> None:
        if self.config["fit"]["test_after_fit"] and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")

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


def runs_root(config) -> Path:
    """logs/<name> of the configured TensorBoard (or CSV) logger: where earlier runs of this config live."""
    logger = config["trainer"].get("logger")
    init_args = getattr(logger, "init_args", None)
    if init_args is None or getattr(init_args, "save_dir", None) is None:
        raise CheckpointError("`best`/`last` need a logger to find earlier runs; pass the .ckpt path instead.")
    return Path(init_args.save_dir) / (getattr(init_args, "name", None) or "")


def find_run_checkpoint(root: Path, which: str) -> Path:
    """The `last.ckpt` or best checkpoint of the newest run under `root` (e.g. logs/fashion_mnist)."""
    runs = [d for d in root.glob("*") if (d / "checkpoints" / "last.ckpt").is_file()] if root.is_dir() else []
    if not runs:
        raise CheckpointError(
            f"no run with checkpoints under {root}: train first (`python -m lit_softmax fit --config ...`) "
            "or pass `--ckpt_path path/to/file.ckpt`."
        )
    run = max(runs, key=lambda d: (d / "checkpoints" / "last.ckpt").stat().st_mtime)
    last = run / "checkpoints" / "last.ckpt"
    if which == "last":
        return last
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
        best = next(s["best_model_path"] for k, s in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    except Exception as e:
        raise CheckpointError(f"cannot read the best checkpoint's name from {last} ({e}); pass its path.") from e
    best = run / "checkpoints" / Path(best).name  # the run directory may have moved since
    if not best.is_file():
        raise CheckpointError(f"{last} names best checkpoint {best}, which does not exist; pass a path instead.")
    return best


def load_checkpoint_safely(path: Path) -> dict:
    """Load with `weights_only=True` (tensors and plain containers only: a crafted pickle cannot run code),
    and turn every failure into a message that says what is wrong with the file."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects other than tensors and plain data, which "
                "could run arbitrary code when unpickled (loaded with weights_only=True). Only use checkpoints "
                "written by this project, from a source you trust."
            ) from e
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e)[:120]}); it is truncated or not "
            "a .ckpt file. Use another checkpoint of the run (e.g. last.ckpt) or retrain."
        ) from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt from `fit`.")
    return checkpoint


def check_fits_model(checkpoint: dict, path: Path, model: torch.nn.Module) -> None:
    state = checkpoint["state_dict"]
    for name, expected in model.state_dict().items():
        found = state.get(name)
        if found is None or found.shape != expected.shape:
            got = "missing" if found is None else f"shape {tuple(found.shape)}"
            raise CheckpointError(
                f"{path} does not fit this model: {name} is {got}, expected shape {tuple(expected.shape)}. "
                "Run with the config the checkpoint was trained with (its run directory holds config.yaml)."
            )


# Defaults for every run; configs and the command line override them.
TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lit_softmax.dashboard.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "fashion_mnist"},
    },
    "plugins": [{"class_path": "lit_softmax.resilience.AtomicCheckpointIO"}],
    "profiler": {"class_path": "lit_softmax.profiler.NoOpProfiler"},
}


def main(args: list[str] | None = None) -> None:
    try:
        SoftmaxCLI(
            SoftmaxRegression,
            FashionMNISTDataModule,
            seed_everything_default=42,
            trainer_defaults=TRAINER_DEFAULTS,
            args=args,
        )
    except SIGTERMException:
        sys.exit(EXIT_SIGTERM)  # GracefulInterrupt saved a checkpoint and said how to resume
    except LitSoftmaxError as e:
        if os.environ.get("LIT_SOFTMAX_TRACEBACK"):
            raise
        kind = "" if isinstance(e, TrainingInterrupted) else "error: "
        print(f"lit_softmax: {kind}{e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    main()
