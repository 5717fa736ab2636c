"""Not losing work: stop cleanly on SIGINT/SIGTERM, write checkpoints atomically, stop on a diverging loss."""

from __future__ import annotations

import io
import math
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_softmax.data import atomic_write_bytes
from lit_softmax.errors import LitSoftmaxError

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


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the same directory, then rename over the target.

    A process killed mid-write (SIGKILL, power loss) leaves the previous checkpoint intact plus at most a
    stray `.tmp` file; it never leaves a truncated `last.ckpt` or best checkpoint.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # ~40 KB here; serialising first keeps the file write a single step
        atomic_write_bytes(buffer.getvalue(), Path(path))


class GracefulInterrupt(L.Callback):
    """On SIGINT/SIGTERM: finish the current step, save `last.ckpt` (mid-epoch included), and exit.

    SIGTERM is Lightning's own: it sets `trainer.received_sigterm` and raises `SIGTERMException` after the step.
    SIGINT (Ctrl-C) would otherwise raise KeyboardInterrupt wherever Python happens to be; here it only sets a
    flag, and the next step boundary raises `TrainingInterrupted`. Either way `on_exception` saves the
    checkpoint, and `fit --ckpt_path last` continues exactly where training stopped.
    """

    def __init__(self) -> None:
        self._signum: int | None = None
        self._previous = None

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

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        stop = self._signum is not None
        if trainer.world_size > 1:  # every process must stop at the same step, or the others hang
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
        path = _last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        progress = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        message = (
            f"Interrupted by {signal.Signals(signum).name} at epoch {trainer.current_epoch}, after batch {progress} "
            f"of {trainer.num_training_batches} (global step {trainer.global_step}). Saved {path}.\n"
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
    """Stops training at the first step whose loss is NaN/inf, before that step's update is applied.

    The weights at that point are the last good ones; they are saved as `last.ckpt` only if finite, and the
    best checkpoint (by val/acc) is never touched, so no NaN weights are ever saved.
    """

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        loss = getattr(pl_module, "_loss_window", {}).get("last")  # this step's loss, set by training_step
        if loss is None or math.isfinite(float(loss)):  # float(): one host sync per step, free on CPU
            return
        lr = optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(
            f"training diverged: the loss is {float(loss)} at epoch {trainer.current_epoch}, global step "
            f"{trainer.global_step} (learning rate {lr:g}). Training stopped before applying this step; the "
            "checkpoints already saved (best and last.ckpt) are untouched and finite. Lower the learning rate, "
            f"e.g. `--model.lr {lr / 10:g}`."
        )


def _last_checkpoint_path(trainer: L.Trainer) -> Path:
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "last.ckpt"
