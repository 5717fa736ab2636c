"""Callbacks the CLI adds to every run: stop cleanly on Ctrl-C/SIGTERM, stop on a diverging loss, write
predictions to CSV. Each is a plain Lightning `Callback` using public hooks only."""

from __future__ import annotations

import csv
import io
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from lit_softmax.checkpoints import atomic_write_bytes
from lit_softmax.errors import ConfigError, LitSoftmaxError
from lit_softmax.fashion_mnist import CLASSES

# Exit codes of an interrupted `fit` (documented in the README): the shell convention 128 + signal number.
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_DIVERGED = 3


class TrainingInterrupted(LitSoftmaxError):
    """Training stopped at a step boundary after SIGINT (Ctrl-C) or SIGTERM; a checkpoint was saved."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


class TrainingDiverged(LitSoftmaxError):
    """The training loss became NaN or infinite."""

    exit_code = EXIT_DIVERGED


class GracefulInterrupt(L.Callback):
    """On SIGINT/SIGTERM: finish the current step, save `last.ckpt` (mid-epoch included), and exit.

    SIGTERM is Lightning's own: it sets `trainer.received_sigterm` and raises `SIGTERMException` after the step.
    SIGINT (Ctrl-C) would otherwise raise KeyboardInterrupt wherever Python happens to be; here it only sets a
    flag, and the end of a step raises `TrainingInterrupted`. Either way `on_exception` saves the checkpoint,
    and `fit --ckpt_path last` continues exactly where training stopped.

    With several processes, all must stop after the same step or the others wait forever in the next
    all-reduce; they agree with one tiny collective every `sync_every_n_batches` batches, not every step.
    """

    def __init__(self, sync_every_n_batches: int = 10) -> None:
        """
        Args:
            sync_every_n_batches: with several processes, how often they agree on stopping (a small all-reduce):
                Ctrl-C takes effect within this many training batches.
        """
        if sync_every_n_batches < 1:
            raise ConfigError(f"interrupt.sync_every_n_batches must be >= 1, got {sync_every_n_batches}; e.g. 10.")
        self.sync_every_n_batches = sync_every_n_batches
        self._signum: int | None = None
        self._previous = None
        self._batch = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._signum = None
        try:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        if self._signum is not None:  # second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        self._signum = signum
        rank_zero_info("\nCtrl-C: stopping after this step and saving a checkpoint (press again to abort) ...")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # At the end of the step, so that the checkpoint holds this step's update and the loader's position
        # after this batch: a resumed run starts with the next batch.
        self._batch = batch_idx + 1
        stop = self._signum is not None
        if trainer.world_size > 1:
            last = self._batch == trainer.num_training_batches
            if self._batch % self.sync_every_n_batches and not last:
                return  # every process has the same batch count, so they all reach the same agreement points
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            raise TrainingInterrupted(self._signum or signal.SIGINT)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            signum = signal.SIGTERM
        elif isinstance(exception, TrainingInterrupted):
            signum = exception.signum
        else:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full state: training resumes from it
        message = (
            f"Interrupted by {signal.Signals(signum).name} at epoch {trainer.current_epoch}, after batch "
            f"{self._batch} of {trainer.num_training_batches} (global step {trainer.global_step}). Saved {path}.\n"
            "Resume exactly where it stopped with the same command plus `--ckpt_path last` "
            "(or `--ckpt_path <that file>`)."
        )
        if isinstance(exception, TrainingInterrupted):
            exception.args = (message,)  # main() prints it
        else:
            rank_zero_info(message)
        self._restore()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class DivergenceGuard(L.Callback):
    """Stops training when the training loss becomes NaN or infinite, and never lets NaN weights be saved.

    Every step's loss is checked on the device (no waiting); the host reads the result every
    `check_every_n_batches` training batches, at the end of every epoch and before every checkpoint is
    written. Checkpoints saved before the divergence (best and `last.ckpt`) stay untouched and finite.
    """

    def __init__(self, check_every_n_batches: int = 10) -> None:
        """
        Args:
            check_every_n_batches: how often the host looks at the device-side flag (each look waits for the
                device, and with several processes is a small all-reduce, so every step would cost).
        """
        if check_every_n_batches < 1:
            raise ConfigError(
                f"divergence_guard.check_every_n_batches must be >= 1, got {check_every_n_batches}; e.g. 10."
            )
        self.check_every_n_batches = check_every_n_batches
        self._nonfinite: Tensor | None = None  # on the device: has any loss since the last check been NaN/inf?
        self._checked_step = 0  # the global step of the last check that found everything finite

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._nonfinite, self._checked_step = None, trainer.global_step

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad  # device ops, no sync

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.check_every_n_batches == 0:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._check(trainer, pl_module)  # called before the checkpoint is written: a NaN never reaches the disk

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        diverged = self._nonfinite is not None and bool(self._nonfinite)  # bool(): waits for the device
        if trainer.world_size > 1:  # all processes stop together (their losses can turn NaN a step apart)
            diverged = trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if not diverged:
            self._nonfinite, self._checked_step = None, trainer.global_step
            return
        lr = pl_module.hparams.get("lr", trainer.optimizers[0].param_groups[0]["lr"])
        raise TrainingDiverged(
            f"training diverged: the training loss became NaN or infinite at epoch {trainer.current_epoch}, between "
            f"global steps {self._checked_step} and {trainer.global_step}. Training stopped; checkpoints saved "
            f"before (best and last.ckpt) are untouched and finite. Lower the learning rate (model.lr={lr:g}), "
            f"e.g. `--model.lr {lr / 10:g}`, and start again."
        )


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with `last.ckpt` written at the end of every training epoch.

    Lightning (2.6) rewrites `last.ckpt` only when it also saves a top-k checkpoint, so after a run whose best
    epoch was 36 of 40, `last.ckpt` held epoch 36 and `fit --ckpt_path last` retrained epochs 37-39. Here it is
    the end of the latest epoch (validation included), so a crash loses at most the epoch under way.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and self.dirpath and not trainer.fast_dev_run and not trainer.sanity_checking:
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
    """Writes `predictions.csv` into the run directory: one row per input, the predicted class, its probability
    and all class probabilities; the true label for dataset inputs, the file name (or why it was skipped) for
    image folders."""

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
            self._rows.append([index, label, CLASSES[best], f"{probs[best]:.6f}", *(f"{p:.6f}" for p in probs)])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        files = getattr(datamodule, "predict_files", None)
        header = ["predicted", "probability", *(f"p_{name}" for name in CLASSES)]
        if files is None:  # the test split
            header = ["index", "true_label", *header]
            rows = [[index, CLASSES[label], *rest] for index, label, *rest in self._rows]
        else:
            header = ["file", *header, "error"]
            rows = [[files[index], *rest, ""] for index, _, *rest in self._rows]
            rows += [[name, *[""] * (len(header) - 2), reason] for name, reason in datamodule.predict_failures]
        rows.sort(key=lambda row: row[0])
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        out = Path(trainer.log_dir or ".") / (Path(self.filename).stem + suffix + Path(self.filename).suffix)
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(header)
        writer.writerows(rows)
        atomic_write_bytes(text.getvalue().encode(), out)  # a crash never leaves half a CSV
        rank_zero_info(f"wrote {len(rows)} predictions to {out}")
        for name, reason in getattr(datamodule, "predict_failures", []) or []:
            rank_zero_warn(f"could not predict {name}: {reason}")
