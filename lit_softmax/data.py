"""FashionMNISTDataModule: Fashion-MNIST as in-memory uint8 tensors, batches cut by index.

The four IDX files are parsed once (`fashion_mnist.py`) into uint8 tensors, and each batch is one
`index_select` on them: no per-sample decoding, no worker processes. Batches stay uint8 until Lightning has
moved them to the training device; `on_after_batch_transfer` then scales them to [0, 1] floats, exactly as
`ToTensor` does: 4x fewer bytes through the loader and over the bus.

`batch_size` is the global batch, what one optimizer step sees, whatever the number of processes: every
process takes its share of the same global batches (see `TrainBatchSampler`), so one config trains the same
model on 1 CPU process, 2 CPU processes or N GPUs.
"""

from __future__ import annotations

import os
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler

from lit_softmax import fashion_mnist
from lit_softmax.errors import ConfigError
from lit_softmax.samplers import EvalSampler, InMemoryDataset, ResumableDataLoader, TrainBatchSampler, keep_batch


class FashionMNISTDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        eval_batch_size: int = 5000,
        val_size: int = 5000,
        split_seed: int = 42,
        download: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_device: bool = False,
        predict_dir: str | None = None,
        invert: Literal["auto", "yes", "no"] = "auto",
    ) -> None:
        """
        Args:
            data_dir: where IDX files are looked for first, and where decompressed copies/downloads go.
            batch_size: the global training batch: what one optimizer step sees, split evenly over the
                processes (it must divide by their number). The same config trains the same model on any number
                of devices.
            eval_batch_size: per-process batch for val/test/predict; only affects speed and memory, not results
                (5000: the validation split in one batch, Lightning's per-batch work paid once an epoch).
            val_size: images carved out of the 60,000 training images for validation.
            split_seed: seed of that carve-out; fixed so every run validates on the same images.
            download: try torchvision's downloader when no local copy is found.
            num_workers: DataLoader workers. 0 is fastest here: batches are one tensor index.
            pin_memory: page-locked host batches for faster GPU copies.
            on_device: keep the whole dataset (55 MB of uint8 for train+val+test) on the training device, so a
                GPU step reads its batch from device memory: no host-to-device copy, no pinned buffers.
                A no-op on CPU.
            predict_dir: a folder of PNG/JPEG/BMP/TIFF images to `predict` on, instead of the test split.
            invert: for predict_dir images. Fashion-MNIST is a light garment on black; "auto" inverts images
                whose border is light (dark-on-light photos), "yes"/"no" force it.
        """
        super().__init__()
        n_train = fashion_mnist.train_size()
        for name, value, example in (("batch_size", batch_size, 64), ("eval_batch_size", eval_batch_size, 5000)):
            if value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}. Set e.g. `--data.{name} {example}`.")
        if not 0 < val_size < n_train:
            raise ConfigError(
                f"data.val_size must be in 1..{n_train - 1} (the training set has {n_train} images), "
                f"got {val_size}. The default carves out 5000: `--data.val_size 5000`."
            )
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}.")
        if on_device and (num_workers > 0 or pin_memory):
            raise ConfigError(
                "data.on_device keeps the data on the GPU, so worker processes and pinned host memory cannot "
                "apply: set `--data.num_workers 0 --data.pin_memory false`, or `--data.on_device false`."
            )
        self.save_hyperparameters()
        self.train_set: InMemoryDataset | None = None
        self.val_set: InMemoryDataset | None = None
        self.test_set: InMemoryDataset | None = None
        self.predict_set: InMemoryDataset | None = None
        self.predict_files: list[str] | None = None  # file names of predict_dir images, in dataset order
        self.predict_failures: list[tuple[str, str]] = []  # (file name, why it was skipped)
        self._train_sampler: TrainBatchSampler | None = None
        self._resume_position: dict | None = None  # the training loader's position, from a checkpoint

    def prepare_data(self) -> None:
        # Runs on one process per node: decompress / download once, atomically.
        fashion_mnist.locate_raw_files(self.hparams.data_dir, self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage == "fit" and self.trainer is not None:
            per_process, world = self.per_process_batch_size(), self.trainer.world_size
            rank_zero_info(f"global batch {hp.batch_size} = {per_process} per process x {world} processes")
            for logger in self.trainer.loggers:  # hparams.yaml and TensorBoard's HParams tab record both
                logger.log_hyperparams({"world_size": world, "per_process_batch_size": per_process})
        if stage == "predict" and hp.predict_dir is not None:
            from lit_softmax.images import load_image_folder

            images, self.predict_files, labels, self.predict_failures = load_image_folder(hp.predict_dir, hp.invert)
            self.predict_set = InMemoryDataset(images, labels)  # -1: no label (not in a class folder)
        # All four files are read and verified in every stage (~0.2 s): a corrupt test file stops `fit` before it
        # trains, not after, when test_after_fit would read it.
        if self.train_set is None:
            images, labels = fashion_mnist.load_split(hp.data_dir, "train", hp.download)
            g = torch.Generator().manual_seed(hp.split_seed)
            perm = torch.randperm(len(labels), generator=g)
            val_idx, train_idx = perm[: hp.val_size], perm[hp.val_size :]
            # Contiguous copies: each batch then gathers from one compact block.
            self.train_set = InMemoryDataset(images[train_idx].contiguous(), labels[train_idx])
            self.val_set = InMemoryDataset(images[val_idx].contiguous(), labels[val_idx])
        if self.test_set is None:
            self.test_set = InMemoryDataset(*fashion_mnist.load_split(hp.data_dir, "test", hp.download))
        if self.predict_set is None:
            self.predict_set = self.test_set
        if hp.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device  # known here: the strategy set up its device before setup()
            moved: dict[int, InMemoryDataset] = {}  # predict_set is usually test_set: one copy on the device
            for name in ("train_set", "val_set", "test_set", "predict_set"):
                dataset = getattr(self, name)
                if dataset is not None and dataset.images.device != device:
                    setattr(self, name, moved.setdefault(id(dataset), dataset.to(device)))

    def normalization_stats(self, per_pixel: bool = True) -> tuple[Tensor, Tensor]:
        """Mean and std (784,) of the training split, in [0, 1] units: one per pixel, or one over all pixels
        (repeated 784 times)."""
        if self.train_set is None:
            self.setup("fit")
        x = self.train_set.images.reshape(len(self.train_set), -1).float().div_(255)
        if not per_pixel:
            std, mean = torch.std_mean(x)
            return mean.expand(x.shape[1]).clone(), std.expand(x.shape[1]).clone()
        std, mean = torch.std_mean(x, dim=0)
        return mean, std

    # ---- loaders -----------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_process_batch_size(self, world: int | None = None) -> int:
        """The global `batch_size` divided by the number of processes (the Trainer's, by default): it must divide."""
        world = world or self._world()[0]
        batch = self.hparams.batch_size
        if batch % world:
            lower = batch // world * world
            raise ConfigError(
                f"data.batch_size={batch} is the global batch and must split evenly over the {world} processes; "
                f"use a multiple of {world}, e.g. `--data.batch_size {lower or world}` or "
                f"`--data.batch_size {lower + world}`."
            )
        return batch // world

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        batch = self.per_process_batch_size()
        if getattr(self.trainer, "overfit_batches", 0):  # the same first batches every epoch: Lightning
            return self._loader(self.train_set, SequentialSampler(self.train_set), batch_size=batch)  # wants this
        # Seeded like the sampler Lightning would inject (seed_everything's seed), never from the global RNG.
        sampler = TrainBatchSampler(
            self.train_set, self.hparams.batch_size, num_replicas=world, rank=rank,
            seed=int(os.getenv("PL_GLOBAL_SEED", 0)), device=self.train_set.images.device,
        )  # fmt: skip
        return self._loader(self.train_set, self._resumable(sampler), ResumableDataLoader)

    def _resumable(self, sampler: TrainBatchSampler) -> TrainBatchSampler:
        """Make `sampler` the one whose position checkpoints record, starting where a resumed checkpoint stopped."""
        if self._resume_position is not None:
            sampler.load_state_dict(self._resume_position)
            self._resume_position = None
        self._train_sampler = sampler
        return sampler

    # Lightning saves a DataModule's state_dict() in every checkpoint and restores it, before the loaders are
    # made, when a run resumes (`fit --ckpt_path`).
    def state_dict(self) -> dict:
        return {"train_position": self._train_sampler.state_dict()} if self._train_sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._resume_position = state.get("train_position")

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_set)

    def _eval_loader(self, dataset: InMemoryDataset | None) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() first: the DataModule has not loaded this split.")
        world, rank = self._world()
        return self._loader(dataset, EvalSampler(dataset, world, rank), batch_size=self.hparams.eval_batch_size)

    def _loader(self, dataset: InMemoryDataset, sampler, loader_class=DataLoader, batch_size=None) -> DataLoader:
        # batch_size=None: the sampler already hands out whole batches of indices (training); otherwise
        # DataLoader batches the sampler's indices and the dataset gathers each batch at once (__getitems__).
        workers = self.hparams.num_workers
        return loader_class(dataset, batch_size=batch_size, sampler=sampler, collate_fn=keep_batch,
                            num_workers=workers, persistent_workers=workers > 0,
                            pin_memory=self.hparams.pin_memory)  # fmt: skip

    # ---- batches on the device ---------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if trainer is not None and trainer.training and self._train_sampler is not None:
            # The loader's position for a mid-epoch checkpoint: batches that reached the model, not the ones
            # fetched (Lightning fetches one batch ahead).
            self._train_sampler.batches_done += 1
        images, *rest = batch
        # The one place uint8 pixels become [0, 1] floats, on the device: ToTensor's own `to(float).div(255)`
        # (in place: one float batch allocated instead of two).
        images = images.to(torch.float32).div_(255)
        if trainer is not None:  # e.g. float64 for `trainer.precision 64`; a no-op for 32 and the mixed ones
            images = trainer.precision_plugin.convert_input(images)
        return (images, *rest)
