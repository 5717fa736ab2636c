"""Command line: LightningCLI over SoftmaxRegression + FashionMNISTDataModule.

python -m lit_softmax fit --config configs/fashion_mnist.yaml            # the tuned default
python -m lit_softmax fit --config configs/seed_recipe.yaml              # the original script's recipe
python -m lit_softmax fit --config configs/debug.yaml                    # seconds-long smoke run
python -m lit_softmax fit --config configs/fashion_mnist.yaml --model.lr 0.05 --trainer.max_epochs 3
python -m lit_softmax test --config configs/fashion_mnist.yaml --ckpt_path best   # best of the latest run
python -m lit_softmax fit --config configs/fashion_mnist.yaml --print_config      # the full resolved config
tensorboard --logdir logs
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_softmax.data import FashionMNISTDataModule
from lit_softmax.errors import CheckpointError, LitSoftmaxError
from lit_softmax.model import SoftmaxRegression


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
        parser.add_argument(
            "--test_after_fit", type=bool, default=False,
            help="After fit, evaluate the best checkpoint (by val/acc) on the test split, in the same run.",
        )  # fmt: skip

    def before_fit(self) -> None:
        self._resolve_ckpt_path("fit")

    def after_fit(self) -> None:
        if self.config["fit"]["test_after_fit"] and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")

    def before_validate(self) -> None:
        self._resolve_ckpt_path("validate")

    def before_test(self) -> None:
        self._resolve_ckpt_path("test")

    def before_predict(self) -> None:
        self._resolve_ckpt_path("predict")

    def _resolve_ckpt_path(self, subcommand: str) -> None:
        """`best`/`last` mean "of the newest earlier run of this config", not of this fresh process."""
        config = self.config_init[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None:
            return
        if ckpt_path in ("best", "last"):
            if subcommand == "fit" and ckpt_path == "best":
                raise CheckpointError("fit --ckpt_path best is not supported; resume with `--ckpt_path last`.")
            config["ckpt_path"] = str(find_run_checkpoint(self._runs_root(), ckpt_path))
        elif not Path(ckpt_path).is_file():
            raise CheckpointError(
                f"checkpoint {ckpt_path} does not exist. Pass the path of a .ckpt file, or `best`/`last` "
                f"for the newest run under {self._runs_root()}."
            )

    def _runs_root(self) -> Path:
        logger = self.trainer.logger
        if logger is None or getattr(logger, "root_dir", None) is None:
            raise CheckpointError("`best`/`last` need a logger to find earlier runs; pass the .ckpt path instead.")
        return Path(logger.root_dir)


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


def main(args: list[str] | None = None) -> None:
    try:
        SoftmaxCLI(
            SoftmaxRegression,
            FashionMNISTDataModule,
            seed_everything_default=42,
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "logs", "name": "fashion_mnist"},
                },
            },
            args=args,
        )
    except LitSoftmaxError as e:
        if os.environ.get("LIT_SOFTMAX_TRACEBACK"):
            raise
        print(f"lit_softmax: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
