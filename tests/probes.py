"""Callbacks the tests add to real CLI runs (via an extra --config) to see inside every process."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class RecordShards(L.Callback):
    """Writes, per rank, the training indices its sampler hands out each epoch and what a batch looks like."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict = {"epochs": {}}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        # Lightning has called sampler.set_epoch(epoch) by now, so this is the order the epoch will use. The sampler
        # hands out this process's share of each global batch as a tensor of indices.
        shares = list(loader.sampler)
        self.record["epochs"][trainer.current_epoch] = [int(i) for share in shares for i in share]
        self.record.setdefault("shares", {})[trainer.current_epoch] = [share.tolist() for share in shares]
        self.record.update(
            world_size=trainer.world_size,
            global_rank=trainer.global_rank,
            sampler=type(loader.sampler).__name__,
            dataset=type(loader.dataset).__name__,
            collate_fn=loader.collate_fn.__name__,
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            x = batch[0]  # what training_step gets: after Lightning's transfer and the DataModule's conversion
            self.record["batch"] = {"dtype": str(x.dtype), "shape": list(x.shape)}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


class SlowSteps(L.Callback):
    """Sleeps after every training step and writes the step count to a file (rank 0), and each process's pid
    to `<progress_file>.rank<N>`: lets a test signal a real `fit` process, or one rank of it, at a chosen step."""

    def __init__(self, progress_file: str, delay: float = 0.005) -> None:
        self.progress_file = Path(progress_file)
        self.delay = delay

    def on_train_start(self, trainer, pl_module) -> None:
        import os

        Path(f"{self.progress_file}.rank{trainer.global_rank}").write_text(str(os.getpid()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        import time

        if trainer.global_rank == 0:
            self.progress_file.write_text(str(trainer.global_step))
        time.sleep(self.delay)

    def _evaluation_batch_end(self, trainer, batch_idx: int) -> None:
        import time

        if trainer.global_rank == 0 and not trainer.sanity_checking:  # <progress_file>.test: test batches done
            Path(f"{self.progress_file}.{trainer.state.stage.value}").write_text(str(batch_idx + 1))
        time.sleep(self.delay)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._evaluation_batch_end(trainer, batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._evaluation_batch_end(trainer, batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._evaluation_batch_end(trainer, batch_idx)


class BlowUpAt(L.Callback):
    """Sets the learning rate absurdly high from a given epoch on: a run that diverges after good epochs."""

    def __init__(self, epoch: int = 1, lr: float = 1e38) -> None:
        self.epoch, self.lr = epoch, lr

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= self.epoch:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = self.lr
