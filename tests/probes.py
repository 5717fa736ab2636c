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
        # Lightning has called sampler.set_epoch(epoch) by now, so this is the order the epoch will use.
        self.record["epochs"][trainer.current_epoch] = [int(i) for i in loader.sampler]
        self.record.update(
            world_size=trainer.world_size,
            global_rank=trainer.global_rank,
            sampler=type(loader.sampler).__name__,
            dataset=type(loader.dataset).__name__,
            collate_fn=loader.collate_fn.__name__,
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self.record["batch"] = {"dtype": str(batch[0].dtype), "shape": list(batch[0].shape)}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))
