"""A callback the benchmark adds to `fit` (`--trainer.callbacks+=benchmarks.epoch_timer.EpochTimer`): wall time of
every epoch, training + validation + checkpointing + logging, from one epoch's start to the next one's.

The median over a run's epochs is robust to the noise of a shared machine, unlike one process's total."""

import statistics
import time

import lightning as L


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())
        epochs = [b - a for a, b in zip(self.starts, self.starts[1:])][1:]  # the first epoch warms caches up
        if epochs and trainer.is_global_zero:
            print(f"epoch_median={statistics.median(epochs):.4f} epochs={len(epochs)}", flush=True)
