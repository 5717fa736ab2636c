"""The training data's order and position, and datasets held in memory: what `data.py`'s DataModule hands to
its DataLoaders.

`TrainBatchSampler` cuts a seeded permutation of each epoch into global batches and gives each process its share,
so one config trains the same model on any number of processes, and records how far an epoch has got, so a run
resumed mid-epoch continues with exactly the next batch (`ResumableDataLoader`). `EvalSampler` scores every
validation/test sample exactly once under DDP (no padding).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_softmax.errors import ConfigError


class InMemoryDataset(Dataset):
    """(images uint8 (N, 28, 28), labels int64 (N,)), indexed by one sample or by a tensor of indices."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def to(self, device: torch.device) -> InMemoryDataset:
        return InMemoryDataset(self.images.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(index, Tensor):  # a whole batch of indices, on the data's device (see the samplers)
            # index_select, not images[index]: ~25x faster for a (1024, 28, 28) uint8 gather on CPU.
            return self.images.index_select(0, index), self.labels.index_select(0, index)
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        # DataLoader's batched fetch: one gather for the whole batch instead of one __getitem__ per sample.
        return self[torch.as_tensor(indices, device=self.images.device)]


class TrainBatchSampler(DistributedSampler):
    """Batches of a shuffled epoch as index tensors: this process's share of each global batch.

    Epoch `e` is `randperm(N)` seeded with `seed + e`, as `DistributedSampler` draws it, cut into global batches
    of `batch_size`; with W processes, process r takes the r-th of W equal parts of each one. The samples of
    every optimizer step are therefore the same set for any W, and the order depends only on (seed, epoch), so a
    run resumed from a checkpoint sees exactly the batches the uninterrupted run would have.

    It subclasses `DistributedSampler` only so that Lightning, under DDP, keeps it instead of injecting its own.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 device: torch.device | None = None) -> None:  # fmt: skip
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.device = batch_size, device
        n = len(dataset)
        # A last batch smaller than the number of processes would leave one of them without data: dropped.
        self.num_batches = n // batch_size + (n % batch_size >= num_replicas)
        self.batches_done = 0  # of the current epoch: counted by the DataModule as batches reach the model
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained on) from a checkpoint

    def __iter__(self):
        # A generator: its body runs at the first next(), after Lightning has called set_epoch() for this epoch.
        first = self._first_batch()
        order = self._epoch_order()
        for b in range(first, self.num_batches):
            yield self._share(order, b)

    def __len__(self) -> int:
        return self.num_batches

    def _first_batch(self) -> int:
        """Where this epoch starts: after the batches a resumed checkpoint already trained on, else at 0."""
        resume, self._resume = self._resume, None
        first = resume[1] if resume is not None and resume[0] == self.epoch else 0
        self.batches_done = first
        return first

    def _epoch_order(self) -> Tensor:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        # Drawn on the CPU (the same order on every device), moved to the data's device once per epoch.
        return torch.randperm(len(self.dataset), generator=g).to(self.device)

    def _share(self, order: Tensor, b: int) -> Tensor:
        """This process's part of global batch `b`."""
        return order[b * self.batch_size : (b + 1) * self.batch_size].tensor_split(self.num_replicas)[self.rank]

    # Lightning saves a loader's state_dict() in checkpoints and restores it with load_state_dict().
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "num_batches": len(self),
                "batch_size": self.batch_size}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        mid_epoch = 0 < state["batches_done"] < state["num_batches"]
        if mid_epoch and state["batch_size"] != self.batch_size:
            raise ConfigError(
                f"the checkpoint stopped mid-epoch with data.batch_size={state['batch_size']}, but this run has "
                f"{self.batch_size}: resume with `--data.batch_size {state['batch_size']}` to continue exactly."
            )
        self._resume = (state["epoch"], state["batches_done"])  # consumed by the next __iter__


class EvalSampler(DistributedSampler):
    """This process's share of a split, in file order, without padding: every sample is scored exactly once.

    Lightning's `DistributedSampler` would pad the shares to equal length with repeated samples, so some test
    images would count twice; this one splits without padding (shares differ by at most one sample).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class ResumableDataLoader(DataLoader):
    """A DataLoader with Lightning's `state_dict` / `load_state_dict` protocol for loaders: its position inside
    an epoch (kept by its sampler). Lightning saves it in checkpoints, but does not give it back when the schedule
    asks for `trainer.estimated_stepping_batches` (Lightning issue #20550, open in 2.6), so the DataModule saves
    and restores the same position itself; this class tells Lightning the loader is resumable."""

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def keep_batch(batch):
    """collate_fn: the dataset already returned a stacked (images, labels) batch."""
    return batch
