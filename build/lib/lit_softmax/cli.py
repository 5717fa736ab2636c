"""The command line: LightningCLI over SoftmaxRegression + FashionMNISTDataModule.

python -m lit_softmax fit --config configs/fashion_mnist.yaml            # the tuned default
python -m lit_softmax fit --config configs/fashion_mnist.yaml --model.lr 0.05 --trainer.max_epochs 3
python -m lit_softmax test --config configs/fashion_mnist.yaml --ckpt_path best   # best of the newest such run
python -m lit_softmax fit --config configs/fashion_mnist.yaml --ckpt_path last   # resume after Ctrl-C / SIGTERM
python -m lit_softmax predict --config configs/fashion_mnist.yaml --ckpt_path best --data.predict_dir photos/
python -m lit_softmax export --config configs/fashion_mnist.yaml --ckpt_path best  # model.onnx, verified
python -m lit_softmax fit --config configs/fashion_mnist.yaml --config configs/ddp_cpu.yaml  # 2 processes
python -m lit_softmax fit --config configs/fashion_mnist.yaml --print_config      # the full resolved config

LightningCLI builds the command line from the typed `__init__` arguments of the model, the DataModule and the
Trainer; this subclass only uses its documented extension points: `add_arguments_to_parser` (callbacks every run
gets, with their own config section), `subcommands` (`export` next to fit/validate/test/predict) and the
`before_*`/`after_*` hooks. Where a run's files go, and what `--ckpt_path best|last` and resuming mean, is the run
owner's job (`lit_softmax/run.py`); this file only tells it when.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lit_softmax import flags, run
from lit_softmax.callbacks import (
    CSVPredictionWriter,
    DivergenceGuard,
    GracefulInterrupt,
    LearningRateMonitor,
    RunCheckpoint,
)
from lit_softmax.dashboard import TensorBoardDashboard
from lit_softmax.data import FashionMNISTDataModule
from lit_softmax.errors import exit_on_user_error
from lit_softmax.model import SoftmaxRegression


class Trainer(L.Trainer):
    """Lightning's Trainer plus `export` and `serve`: every Trainer method in `SoftmaxCLI.subcommands` is a
    subcommand."""

    def export(
        self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None, ckpt_path: str = "best",
        output: str | None = None, atol: float = 1e-5, weights_only: bool | None = None,
    ) -> Path:  # fmt: skip
        """Write the checkpoint's model as ONNX, after checking with onnxruntime on the test split that it
        predicts the same class for every image, with probabilities within `atol`.

        Args:
            ckpt_path: `best` or `last` (of the newest run of this config), or a .ckpt path.
            output: where to write; default `model.onnx` next to the checkpoint.
            atol: the least difference in any probability allowed between onnxruntime and the model in float64
                (more is allowed where PyTorch's own float32 rounding is larger).
            weights_only: accepted so that any saved config works here; checkpoints are always loaded safely.
        """
        from lit_softmax.export import export_checkpoint  # onnx and onnxruntime only when exporting

        return export_checkpoint(model, datamodule, Path(ckpt_path), output, atol)

    def serve(
        self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None, ckpt_path: str = "best",
        host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 16, batch_timeout: float = 0.0,
        weights_only: bool | None = None,
    ) -> None:  # fmt: skip
        """Serve the checkpoint's model over HTTP (LitServe): POST /predict, a page to try it at /, GET /health.

        Args:
            ckpt_path: `best` or `last` (of the newest run of this config), or a .ckpt path.
            host: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface).
            max_batch_size: requests that arrive together are answered by one model call, up to this many.
            batch_timeout: seconds to wait for more requests to join a batch (0: only those already waiting).
            weights_only: accepted so that any saved config works here; checkpoints are always loaded safely.
        """
        from lit_softmax.serve import serve_checkpoint  # litserve only when serving

        serve_checkpoint(model, datamodule, Path(ckpt_path), host, port, max_batch_size, batch_timeout)


class SoftmaxCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # name -> the method's arguments the CLI fills in itself (the instantiated model and datamodule)
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}, "serve": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model and data classes default to the textbook pair; a config may pick subclasses by `class_path`
        # (configs/seed_recipe.yaml selects the opt-in grouped-steps pair of lit_softmax/grouped.py).
        parser.set_defaults({"model": {"class_path": "lit_softmax.SoftmaxRegression"},
                             "data": {"class_path": "lit_softmax.FashionMNISTDataModule"}})  # fmt: skip
        # Callbacks every run gets, each with its own config section (`checkpoint.*`, `interrupt.*`, ...): a config
        # that lists its own `trainer.callbacks` cannot drop them by accident.
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

    def before_instantiate_classes(self) -> None:
        run.prepare(self)  # resolve --ckpt_path best/last, a resume's config, the run's directory
        flags.reconcile(self.config[self.subcommand] if self.subcommand else self.config)  # habit flags

    def after_instantiate_classes(self) -> None:
        run.after_instantiate(self)  # the checkpoint fits the model; the saved config will not pin this run
        flags.check_with_model(self.model, self.trainer)

    def before_fit(self) -> None:
        # The global batch must split over the processes: checked here, once, before DDP starts them.
        self.datamodule.per_process_batch_size(self.trainer.world_size)

    def after_fit(self) -> None:
        trainer = self.trainer
        if not self.config["fit"]["test_after_fit"] or trainer.interrupted:
            return
        if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path and not trainer.fast_dev_run:
            trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")
            return
        # fast_dev_run, max_epochs 0, no validation ran, checkpointing off: there is no best checkpoint.
        rank_zero_info("test_after_fit: no best checkpoint in this run, so the final weights are tested.")
        trainer.test(self.model, datamodule=self.datamodule)


# Every run's defaults; configs and the command line override them.
TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # default_hp_metric=False: no placeholder hp_metric=-1; the dashboard logs the real one (best val/acc).
        "init_args": {"save_dir": "logs", "name": "fashion_mnist", "default_hp_metric": False},
    },
    "plugins": [{"class_path": "lit_softmax.checkpoints.AtomicCheckpointIO"}],
}


DESCRIPTION = "Softmax regression on Fashion-MNIST with Lightning: train, evaluate, predict, export and serve."
# `sweep` has its own small command line (lit_softmax/sweep.py); --help lists it beside the Trainer's subcommands.
SWEEP_HELP = "Also: sweep  Hyper-parameter search with Optuna (python -m lit_softmax sweep --help)."


def build(args: list[str] | None = None, callbacks: list[L.Callback] | None = None, run_subcommand: bool = True
          ) -> SoftmaxCLI:  # fmt: skip
    """The CLI for `args` (None: `sys.argv`, as from the shell); `callbacks` go to the Trainer as well (the sweep
    adds Optuna's pruning callback to each trial this way); `run_subcommand=False` parses and instantiates only."""
    with run.command(args):
        return SoftmaxCLI(
            SoftmaxRegression,  # the defaults; `model.class_path` in a config picks a subclass (subclass mode)
            FashionMNISTDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=42,
            trainer_defaults={**TRAINER_DEFAULTS, "callbacks": [run.ResumeLineage(), *(callbacks or [])]},
            save_config_callback=run.RunConfig,
            trainer_class=Trainer,
            auto_configure_optimizers=False,  # the model's own `optimizer`/`lr` arguments, recorded in hparams.yaml
            args=args,
            run=run_subcommand,
            parser_kwargs={"description": DESCRIPTION, "epilog": SWEEP_HELP},  # the top-level --help
        )


def main(args: list[str] | None = None) -> None:
    """`python -m lit_softmax fit|validate|test|predict|export ...`: a user's mistake is one line, not a traceback."""
    with exit_on_user_error():
        build(args)
