"""Opt-in speed-up for small batches: several SGD steps per `training_step` call.

At batch 64 this model's SGD step costs ~0.3 ms on a CPU, and Lightning's machinery around one
`training_step` call (hooks, closure, logging, progress bar) costs more than that. Grouping, like Keras'
`steps_per_execution`, hands `steps_per_call` mini-batches to one call and pays that machinery once per
group, while the model still takes one SGD step per mini-batch, on the same samples in the same order: the
weights are those of one step per call (tested: bit-identical, and equal to a plain PyTorch loop).

Selected by config, as `configs/seed_recipe.yaml` does:

    model:
      class_path: lit_softmax.grouped.GroupedSoftmaxRegression
    data:
      class_path: lit_softmax.grouped.GroupedFashionMNIST
      init_args:
        steps_per_call: 16

Nothing in the rest of the package imports this module. What grouping costs: Lightning's batch counters count
groups (progress bar, `log_every_n_steps`, `limit_train_batches`, `val_check_interval`, the logging x-axis);
`trainer.global_step` and `max_steps` still count SGD steps. The model drives the optimizer itself (Lightning's
manual optimization), so Lightning's automatic gradient clipping and accumulation do not apply.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from lit_softmax.data import FashionMNISTDataModule
from lit_softmax.errors import ConfigError
from lit_softmax.model import SoftmaxRegression
from lit_softmax.samplers import ResumableDataLoader, TrainBatchSampler


class GroupedBatchSampler(TrainBatchSampler):
    """`TrainBatchSampler`'s batches, `steps_per_call` at a time: each item is the concatenated indices of a group
    of consecutive mini-batches (this process's shares). Lightning counts groups as its batches."""

    def __init__(self, *args, steps_per_call: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps_per_call = steps_per_call
        self.num_minibatches = self.num_batches  # SGD steps per epoch

    def __iter__(self):
        first = self._first_batch()  # in groups
        order = self._epoch_order()
        k = self.steps_per_call
        for group in range(first, len(self)):
            yield torch.cat([self._share(order, b) for b in range(group * k, min((group + 1) * k, self.num_batches))])

    def __len__(self) -> int:
        return -(-self.num_batches // self.steps_per_call)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps_per_call": self.steps_per_call}

    def load_state_dict(self, state: dict) -> None:
        # Mid-epoch, Lightning restores its own count of finished groups, so the grouping must match to stay in
        # step. At an epoch boundary there is no position to keep, and any grouping may go on from there.
        saved = state.get("steps_per_call", 1)
        if 0 < state["batches_done"] < state["num_batches"] and saved != self.steps_per_call:
            raise ConfigError(
                f"the checkpoint stopped mid-epoch with data.steps_per_call={saved}, but this run has "
                f"{self.steps_per_call}: resume with `--data.steps_per_call {saved}` to continue exactly."
            )
        super().load_state_dict(state)


class GroupedFashionMNIST(FashionMNISTDataModule):
    def __init__(self, steps_per_call: int = 16, **kwargs) -> None:
        """
        Args:
            steps_per_call: mini-batches (SGD steps) per `training_step` call; only speed depends on it.
            **kwargs: FashionMNISTDataModule's arguments.
        """
        if steps_per_call < 1:
            raise ConfigError(f"data.steps_per_call must be >= 1, got {steps_per_call}. Set e.g. 16.")
        super().__init__(**kwargs)

    def train_dataloader(self):
        world, rank = self._world()
        grouped = GroupedBatchSampler(
            self.train_set, self.per_process_batch_size() * world, num_replicas=world, rank=rank,
            seed=int(os.getenv("PL_GLOBAL_SEED", 0)), device=self.train_set.images.device,
            steps_per_call=self.hparams.steps_per_call,
        )  # fmt: skip
        return self._loader(self.train_set, self._resumable(grouped), ResumableDataLoader)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = super().on_after_batch_transfer(batch, dataloader_idx)  # to [0, 1] floats, once for the group
        if not self.trainer.training:
            return x, y
        # A training group -> its list of (x, y) mini-batches, views into the group's tensors.
        per_process = self.hparams.batch_size // self.trainer.world_size
        return list(zip(x.split(per_process), y.split(per_process)))


class GroupedSoftmaxRegression(SoftmaxRegression):
    """SoftmaxRegression taking one SGD step per mini-batch of a group (GroupedFashionMNIST's batches)."""

    def __init__(self, **kwargs) -> None:
        """
        Args:
            **kwargs: SoftmaxRegression's arguments.
        """
        super().__init__(**kwargs)
        self.automatic_optimization = False  # several optimizer steps per training_step

    def training_step(self, batch: list[tuple[Tensor, Tensor]], batch_idx: int) -> None:
        trainer = self.trainer
        if trainer.max_steps >= 0:  # max_steps counts SGD steps, so a run may end in the middle of a group
            batch = batch[: max(0, trainer.max_steps - self.global_step)]
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        losses, logits, labels = [], [], []
        for minibatch in batch:
            loss, z, y = self.model_step(minibatch)
            optimizer.zero_grad()
            self.manual_backward(loss)  # precision scaling and DDP's gradient all-reduce, as in automatic mode
            optimizer.step()  # also counts the global step and runs on_before_optimizer_step hooks
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
            logits.append(z.detach())
            labels.append(y)
        if not losses:
            return
        # Once per group rather than per step: one metric update, one logged value (the group's mean loss).
        self.train_acc.update(torch.cat(logits), torch.cat(labels))
        self.log("train/loss", torch.stack(losses).mean())
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        """The schedule is counted in SGD steps: Lightning's `estimated_stepping_batches` counts groups."""
        trainer = self.trainer
        groups = trainer.estimated_stepping_batches  # also sets up the train loader, read below
        sampler = trainer.train_dataloader.sampler
        if not isinstance(sampler, GroupedBatchSampler) or trainer.max_epochs in (None, -1):
            return self.optimizer_config(groups * getattr(sampler, "steps_per_call", 1))
        per_epoch = min(int(trainer.num_training_batches) * sampler.steps_per_call, sampler.num_minibatches)
        steps = per_epoch * trainer.max_epochs
        return self.optimizer_config(min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps)
