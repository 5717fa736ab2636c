"""Callbacks the CLI adds to every run: stop cleanly on Ctrl-C/SIGTERM, stop on a diverging loss, write
predictions to CSV. Each is a plain Lightning `Callback` using public hooks only."""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from lit_softmax.checkpoints import atomic_write_bytes
from lit_softmax.errors import ConfigError, LitSoftmaxError
from lit_softmax.fashion_mnist import CLASSES
from lit_softmax.run import run_directory

# Exit codes of an interrupted `fit` (documented in the README): the shell convention 128 + signal number.
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_DIVERGED = 3


class TrainingInterrupted(LitSoftmaxError):
    """A stage stopped at a batch boundary after SIGINT (Ctrl-C) or SIGTERM; `fit` saved a checkpoint first."""

    prefix = ""  # not an error: the message says where it stopped and how to resume

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


class TrainingDiverged(LitSoftmaxError):
    """The training loss became NaN or infinite."""

    exit_code = EXIT_DIVERGED


class GracefulInterrupt(L.Callback):
    """On SIGINT (Ctrl-C) or SIGTERM (`kill`, SLURM, torchrun): stop at a batch boundary; in `fit`, save
    `last.ckpt` (mid-epoch included) so that `fit --ckpt_path last` continues exactly; exit 130 / 143.

    The signal handler only records the signal; the stop happens in the hooks below, at points where every
    process is (a batch end), never inside whatever the process was doing when the signal came. Lightning's own
    SIGTERM handler is replaced while a loop runs: under DDP it runs a collective *inside the handler* (Lightning
    2.6), which pairs with whatever collective the other processes are in and hangs them all. Lightning installs
    its handlers just before a stage's loop starts and restores the previous ones when the stage ends, so ours go
    in at the loop's first hook and Lightning's restore removes them.

    With several processes, the signal may reach all of them (SLURM, torchrun, a process group) or one: they
    agree with one small all-reduce every `sync_every_n_batches` training batches (the same batches on every
    process), so all stop after the same step. Validation/test/predict batches can differ in number between
    processes, so there they agree once, at the end of the epoch.
    """

    def __init__(self, sync_every_n_batches: int = 10) -> None:
        """
        Args:
            sync_every_n_batches: with several processes, how often they agree on stopping (a small all-reduce):
                a signal takes effect within this many training batches.
        """
        if sync_every_n_batches < 1:
            raise ConfigError(f"interrupt.sync_every_n_batches must be >= 1, got {sync_every_n_batches}; e.g. 10.")
        self.sync_every_n_batches = sync_every_n_batches
        self._signum = 0  # the signal received, 0 for none
        self._rank = ""
        self._batch = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank = f"[rank {trainer.global_rank}] " if trainer.world_size > 1 else ""

    # The first hook of each loop: Lightning has installed its handlers by then (see the class docstring).
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_signals()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_signals()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_signals()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_signals()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_signals()

    def _take_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; leave them alone
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self._signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user really wants out, now
        if not self._signum:
            self._signum = signum
            again = " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
            # os.write, not print: a handler can run in the middle of a print() to the same stream
            os.write(
                2, f"\n{self._rank}{signal.Signals(signum).name}: stopping at the next batch boundary{again}\n".encode()
            )

    def _agreed_signal(self, trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        """The signal any process received (all processes must call this at the same point)."""
        if trainer.world_size == 1:
            return self._signum
        flag = torch.tensor(float(self._signum), device=pl_module.device)
        return int(trainer.strategy.reduce(flag, reduce_op="max").item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # At the end of the step, so that the checkpoint holds this step's update and the loader's position
        # after this batch: a resumed run starts with the next batch.
        self._batch = batch_idx + 1
        if trainer.world_size > 1:
            last = self._batch == trainer.num_training_batches
            if self._batch % self.sync_every_n_batches and not last:
                return  # every process has the same batch count, so they all reach the same agreement points
        if signum := self._agreed_signal(trainer, pl_module):
            raise TrainingInterrupted(signum)

    def _evaluation_batch_end(self, trainer: L.Trainer) -> None:
        if trainer.world_size == 1 and self._signum and trainer.state.fn != "fit":
            raise TrainingInterrupted(self._signum)  # in fit, training batch ends decide (validation is short)

    def _evaluation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        in_fit = trainer.state.fn == "fit"
        if trainer.world_size > 1 and not in_fit and (signum := self._agreed_signal(trainer, pl_module)):
            raise TrainingInterrupted(signum)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._evaluation_batch_end(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._evaluation_batch_end(trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._evaluation_batch_end(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_epoch_end(trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_epoch_end(trainer, pl_module)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_epoch_end(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, TrainingInterrupted):
            signum = exception.signum
        elif isinstance(exception, SIGTERMException):  # Lightning's handler, in the moment before ours took over
            signum = signal.SIGTERM
        else:
            return
        name = signal.Signals(signum).name
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            # Nothing was trained, so no training checkpoint is written (and no `last.ckpt` to resume by mistake);
            # predictions.csv and the like are written whole at the end, so none was written either.
            message = f"{self._rank}Interrupted by {name} during {trainer.state.fn.value}: stopped, nothing written."
        else:
            path = last_checkpoint_path(trainer)
            trainer.save_checkpoint(path, weights_only=False)  # the full state: training resumes from it
            message = (
                f"{self._rank}Interrupted by {name} at epoch {trainer.current_epoch}, after batch {self._batch} of "
                f"{trainer.num_training_batches} (global step {trainer.global_step}). Saved {path}.\n"
                "Resume exactly where it stopped with the same command plus `--ckpt_path last` "
                "(or `--ckpt_path <that file>`)."
            )
        if isinstance(exception, TrainingInterrupted):
            exception.args = (message,)  # main() prints it
        else:
            rank_zero_info(message)


class DivergenceGuard(L.Callback):
    """Stops training when the training loss becomes NaN or infinite, and never lets NaN weights be saved.

    Every step's loss is added up on the device (no waiting); the host reads the sum every
    `check_every_n_batches` training batches, at the end of every epoch and before every checkpoint is written:
    a NaN or infinite loss makes the sum NaN or infinite. The same read gives the mean training loss since the
    previous check (`mean_loss`), which the progress bar shows, so the bar costs no read of its own. Checkpoints
    saved before the divergence (best and `last.ckpt`) stay untouched and finite.
    """

    def __init__(self, check_every_n_batches: int = 10) -> None:
        """
        Args:
            check_every_n_batches: how often the host reads the summed loss (each read waits for the device, and
                with several processes is a small all-reduce, so every step would cost).
        """
        if check_every_n_batches < 1:
            raise ConfigError(
                f"divergence_guard.check_every_n_batches must be >= 1, got {check_every_n_batches}; e.g. 10."
            )
        self.check_every_n_batches = check_every_n_batches
        self.mean_loss: float | None = None  # the mean training loss between the last two checks (all processes)
        self._loss_sum: Tensor | None = None  # on the device: the losses since the last check, added up
        self._losses = 0
        self._checked_step = 0  # the global step of the last check that found everything finite

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._losses, self._checked_step = None, 0, trainer.global_step

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        loss = loss.detach().float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss  # a device op, no sync
        self._losses += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.check_every_n_batches == 0:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._check(trainer, pl_module)  # called before the checkpoint is written: a NaN never reaches the disk

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._loss_sum is None:
            return
        total, count = self._loss_sum, self._losses
        if trainer.world_size > 1:  # all processes stop together (their losses can turn NaN a step apart)
            total = trainer.strategy.reduce(total, reduce_op="sum")
            count *= trainer.world_size
        total = float(total)  # the one read: waits for the device
        if math.isfinite(total):
            self.mean_loss = total / count
            self._loss_sum, self._losses, self._checked_step = None, 0, trainer.global_step
            return
        lr = pl_module.hparams.get("lr", trainer.optimizers[0].param_groups[0]["lr"])
        raise TrainingDiverged(
            f"training diverged: the training loss became NaN or infinite at epoch {trainer.current_epoch}, between "
            f"global steps {self._checked_step} and {trainer.global_step}. Training stopped; checkpoints saved "
            f"before (best and last.ckpt) are untouched and finite. Lower the learning rate (model.lr={lr:g}), "
            f"e.g. `--model.lr {lr / 10:g}`, and start again."
        )


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the mean training loss the DivergenceGuard read at its last check: a
    loss logged with `prog_bar=True` would be read from the device after every step (Lightning converts progress-bar
    values each batch, whatever the refresh rate), a device sync per step on a GPU."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        guard = next((c for c in trainer.callbacks if isinstance(c, DivergenceGuard)), None)
        if guard is not None and guard.mean_loss is not None:
            metrics["train/loss"] = f"{guard.mean_loss:.3f}"
        return metrics


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with `last.ckpt` written once at the end of every training epoch.

    Lightning (2.6) writes `last.ckpt` when it validates, and only when it also saves a top-k checkpoint, so after
    a run whose best epoch was 36 of 40, `last.ckpt` held epoch 36 and `fit --ckpt_path last` retrained epochs
    37-39. Here it is the end of the latest epoch (validation included), so a crash loses at most the epoch under
    way; `save_last` is this class's alone, so Lightning's own write of the same weights a moment earlier is not
    made (2 writes an improving epoch instead of 3: benchmarks/bench.py prints them).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(self, "_write_last"):  # once: setup runs again for the final test
            self._write_last, self.save_last = self.save_last, False
        super().setup(trainer, pl_module, stage)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._write_last and self.dirpath and not trainer.fast_dev_run and not trainer.sanity_checking:
            trainer.save_checkpoint(last_checkpoint_path(trainer), weights_only=False)  # all of it, to resume


class LearningRateMonitor(callbacks.LearningRateMonitor):
    """Lightning's LearningRateMonitor, idle when the run has no logger (`--trainer.logger false`) instead of
    stopping it with an error: there is nowhere to write the learning rate, and nothing else is lost."""

    def on_train_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "last.ckpt"


class CSVPredictionWriter(BasePredictionWriter):
    """Writes `predictions.csv` into the run directory: one row per input, the predicted class, its probability and
    all class probabilities; the true label for the test split and for images in class-named folders, the file name
    (or why it was skipped) for image folders. With labels, the accuracy overall and per class goes to the log and to
    the loggers (`predict/acc`, `predict/acc_<class>`). Under DDP the processes' rows are gathered into one file."""

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self._rows: list[list] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def write_on_batch_end(self, trainer, pl_module, prediction: Tensor, batch_indices, batch, batch_idx, dl_idx):
        labels = batch[1].tolist()
        for index, label, probs in zip(batch_indices, labels, prediction.float().cpu().tolist()):
            best = max(range(len(probs)), key=probs.__getitem__)
            self._rows.append([index, label, best, f"{probs[best]:.6f}", *(f"{p:.6f}" for p in probs)])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = run_directory(trainer) / self.filename  # a collective under DDP: every process asks
        rows = self._rows
        if trainer.world_size > 1:  # every sample was predicted by exactly one process (EvalSampler)
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if trainer.global_rank != 0:
            return
        datamodule = trainer.datamodule
        files = getattr(datamodule, "predict_files", None)
        labelled = [(label, best) for _, label, best, *_ in rows if label >= 0]
        header = ["predicted", "probability", *(f"p_{name}" for name in CLASSES)]
        name = lambda label: CLASSES[label] if label >= 0 else ""  # noqa: E731
        if files is None:  # the test split
            header = ["index", "true_label", *header]
            table = [[index, name(label), CLASSES[best], *rest] for index, label, best, *rest in rows]
        else:
            header = ["file", *(["true_label"] if labelled else []), *header, "error"]
            table = [[files[index], *([name(label)] if labelled else []), CLASSES[best], *rest, ""]
                     for index, label, best, *rest in rows]  # fmt: skip
            table += [[file, *[""] * (len(header) - 2), reason] for file, reason in datamodule.predict_failures]
        table.sort(key=lambda row: row[0])
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(header)
        writer.writerows(table)
        atomic_write_bytes(text.getvalue().encode(), out)  # a crash never leaves half a CSV
        rank_zero_info(f"wrote {len(table)} predictions to {out}")
        for file, reason in getattr(datamodule, "predict_failures", []) or []:
            rank_zero_warn(f"could not predict {file}: {reason}")
        if labelled:
            self._report_accuracy(trainer, labelled)

    @staticmethod
    def _report_accuracy(trainer: L.Trainer, labelled: list[tuple[int, int]]) -> None:
        metrics = {"predict/acc": sum(label == best for label, best in labelled) / len(labelled)}
        lines = [f"accuracy on the {len(labelled)} labelled images: {metrics['predict/acc']:.4f}"]
        for index, class_name in enumerate(CLASSES):
            hits = [label == best for label, best in labelled if label == index]
            if hits:
                metrics[f"predict/acc_{class_name}"] = sum(hits) / len(hits)
                lines.append(f"  {class_name:12s} {metrics[f'predict/acc_{class_name}']:.4f}  ({len(hits)} images)")
        rank_zero_info("\n".join(lines))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)
