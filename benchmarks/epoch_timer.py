"""A callback the benchmark adds to `fit` (`--trainer.callbacks+=benchmarks.epoch_timer.EpochTimer`): wall time of
every epoch, training + validation + checkpointing + logging, from one epoch's start to the next one's; optimizer
steps per second; checkpoints written per epoch; the peak GPU memory.

The median over a run's epochs is robust to the noise of a shared machine, unlike one process's total."""

import statistics
import time

import lightning as L
import torch


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []
        self.steps: list[int] = []
        self.saves = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())
        self.steps.append(trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.saves += 1  # every checkpoint file written (best, last.ckpt)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())
        self.steps.append(trainer.global_step)
        epochs = [b - a for a, b in zip(self.starts, self.starts[1:])][1:]  # the first epoch warms caches up
        if epochs and trainer.is_global_zero:
            rate = (self.steps[-1] - self.steps[1]) / (self.starts[-1] - self.starts[1])
            memory = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
            print(f"epoch_median={statistics.median(epochs):.4f} epochs={len(epochs)} steps_per_s={rate:.1f} "
                  f"checkpoint_writes_per_epoch={self.saves / (len(epochs) + 1):.2f} gpu_peak_mb={memory:.1f}",
                  flush=True)  # fmt: skip
