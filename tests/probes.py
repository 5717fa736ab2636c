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


class CountHostReads(L.Callback):
    """Counts host reads of tensor values (each one a device sync on a GPU) during training batches, with their call
    sites: from a batch's start to the next batch's start, validation and epoch ends left out. `steps` counts
    optimizer steps. Writes {"steps": ..., "reads": {site: count}} per rank to `out` (a .json path prefix)."""

    # Left out of `summary()`, by name only:
    EXCLUDED = (
        # torch's DataLoader draws a base seed each time an epoch's iterator is made: a CPU tensor, never a device sync
        "item at torch/utils/data/dataloader.py",
        # Lightning 2.6 broadcasts its SIGTERM flag from rank 0 after every training step under DDP
        # (`_broadcast_sigterm_tensor`, a collective and a read): Lightning issue #21487, open; PR #21640 would
        # make it every n steps.
        "item at lightning/pytorch/loops/training_epoch_loop.py",
    )
    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__format__", "nonzero", "cpu",
             "numpy", "unique"}  # fmt: skip

    def __init__(self, out: str = "", skip_epochs: int = 1, report: bool = False) -> None:
        self.out, self.skip_epochs, self.report = out, skip_epochs, report
        self.sites: dict[str, int] = {}
        self.steps = 0
        self._mode = None
        self._start_step = None

    def _start(self) -> None:
        if self._mode is None:
            self._mode = _HostReadMode(self)
            self._mode.__enter__()

    def _stop(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= self.skip_epochs:  # the first epoch warms up (lazy set-up, first logging)
            self._start_step = trainer.global_step
            self._start()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._start_step is not None and trainer.training:
            self._start()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()
        if self._start_step is not None:
            self.steps += trainer.global_step - self._start_step
            self._start_step = None

    def on_fit_end(self, trainer, pl_module) -> None:
        self._stop()
        if self.out:
            Path(f"{self.out}.rank{trainer.global_rank}.json").write_text(json.dumps(self.summary()))
        if self.report and trainer.is_global_zero and self.steps:  # benchmarks/bench.py reads this line
            print(f"host_reads_per_step={sum(self.summary()['reads'].values()) / self.steps:.3f}", flush=True)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def summary(self) -> dict:
        """{"steps": optimizer steps counted, "reads": {site: count}}, the EXCLUDED sites left out."""
        reads = {k: v for k, v in self.sites.items() if not k.startswith(self.EXCLUDED)}
        return {"steps": self.steps, "reads": dict(sorted(reads.items(), key=lambda kv: -kv[1]))}


def _call_site() -> str:
    """The innermost frame outside torch itself: whose code asked for the value."""
    import traceback

    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/torch/utils/data/" in frame.filename or not any(
            skip in frame.filename for skip in ("/torch/", "probes.py", "lightning_utilities/")
        ):
            where = frame.filename.split("site-packages/")[-1].split("/lit_softmax/")[-1]
            return f"{where}:{frame.lineno} {frame.name}"
    return "?"


class _HostReadMode:
    def __new__(cls, counter: CountHostReads):
        from torch.overrides import TorchFunctionMode

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if getattr(func, "__name__", "") in CountHostReads.READS:
                    site = f"{func.__name__} at {_call_site()}"
                    counter.sites[site] = counter.sites.get(site, 0) + 1
                return func(*args, **(kwargs or {}))

        return Mode()
