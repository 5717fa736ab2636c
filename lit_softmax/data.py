"""Fashion-MNIST as in-memory tensors: find the IDX files, verify them, cut batches by index.

The original script decoded every sample through PIL + ``ToTensor`` on every epoch; here the four IDX
files are parsed once (torchvision's own reader) into uint8 tensors and each batch is one ``index_select``.
The loaders are plain ``DataLoader``s over a map-style dataset; the training one's sampler is a
``DistributedSampler`` (the one Lightning would inject, seeded the same way) that hands out groups of
mini-batches, so one ``training_step`` can take several SGD steps (``steps_per_execution``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from lit_softmax.errors import ConfigError, DataError

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Where Debian/Ubuntu's `dataset-fashion-mnist` package installs the four .gz files.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class IdxSpec:
    filename: str  # decompressed name; the .gz sibling is accepted too
    shape: tuple[int, ...]
    sha256: str  # of the decompressed bytes (Debian recompressed the .gz, so .gz checksums differ)


# The official release. Tests swap this table for small synthetic files.
FILES: dict[str, IdxSpec] = {
    "train_images": IdxSpec(
        "train-images-idx3-ubyte", (60000, 28, 28),
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": IdxSpec(
        "train-labels-idx1-ubyte", (60000,),
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": IdxSpec(
        "t10k-images-idx3-ubyte", (10000, 28, 28),
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": IdxSpec(
        "t10k-labels-idx1-ubyte", (10000,),
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}  # fmt: skip

HOW_TO_GET_DATA = (
    "Get the data one of two ways:\n"
    "  1. offline, from Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (puts the files in "
    f"{SYSTEM_DIR}), or without root: `apt-get download dataset-fashion-mnist && dpkg-deb -x "
    "dataset-fashion-mnist_*.deb /tmp/fm` and pass `--data.data_dir /tmp/fm/usr/share/datasets/fashion-mnist`;\n"
    "  2. online: keep `--data.download true` (the default) and torchvision downloads it into data_dir."
)


def cache_dir(data_dir: str | Path) -> Path:
    """torchvision's layout, so `torchvision.datasets.FashionMNIST(data_dir)` finds the same files."""
    return Path(data_dir) / "FashionMNIST" / "raw"


def _find(directory: Path, spec: IdxSpec) -> Path | None:
    for name in (spec.filename, spec.filename + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def atomic_write_bytes(data: bytes, dest: Path) -> None:
    """Write next to `dest`, fsync, and rename: a crash or a concurrent process never sees half a file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _decompress(gz: Path, dest: Path) -> None:
    try:
        with gzip.open(gz, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{gz} is not a readable gzip file ({type(e).__name__}: {e}); it is truncated or corrupt. "
            "Delete it (or reinstall: `sudo apt-get install --reinstall dataset-fashion-mnist`) and run again."
        ) from e
    try:
        atomic_write_bytes(data, dest)
    except OSError as e:
        raise DataError(
            f"cannot write the decompressed copy {dest} ({e}). Point `--data.data_dir` at a writable directory."
        ) from e


def locate_raw_files(data_dir: str | Path, download: bool = True) -> dict[str, Path]:
    """Return the decompressed IDX file for each entry of FILES, making it if needed.

    Looks, in order, in `data_dir` (plain or torchvision layout), the system copy, then downloads.
    """
    data_dir = Path(data_dir)
    cache = cache_dir(data_dir)
    candidates = [data_dir, cache, SYSTEM_DIR]
    for directory in candidates:
        found = {key: _find(directory, spec) for key, spec in FILES.items()}
        if all(found.values()):
            break
    else:
        if download:
            _download(data_dir)
            found = {key: _find(cache, spec) for key, spec in FILES.items()}
        if not download or not all(found.values()):
            looked = "\n".join(f"  - {d}" for d in candidates)
            raise DataError(
                f"Fashion-MNIST not found. Looked for {[s.filename + '[.gz]' for s in FILES.values()]} in:\n"
                f"{looked}\n"
                + ("" if download else "and download is off (`--data.download false`).\n")
                + HOW_TO_GET_DATA
            )
    paths = {}
    for key, path in found.items():
        if path.suffix == ".gz":
            dest = cache / FILES[key].filename
            if not dest.is_file():
                _decompress(path, dest)
            path = dest
        paths[key] = path
    return paths


def _download(data_dir: Path) -> None:
    from torchvision.datasets import FashionMNIST

    try:
        for train in (True, False):
            FashionMNIST(str(data_dir), train=train, download=True)
    except Exception as e:  # URLError, HTTPError, timeouts, checksum failures: all mean "no data this way"
        raise DataError(
            f"downloading Fashion-MNIST into {cache_dir(data_dir)} failed ({type(e).__name__}: {e}).\n"
            + HOW_TO_GET_DATA
        ) from e


def read_idx(path: Path, spec: IdxSpec, num_classes: int = len(CLASSES)) -> Tensor:
    """Parse one IDX file with torchvision's reader and check it is exactly what `spec` describes."""
    fix = f"Delete {path} and run again (it is re-made from the source), or reinstall the dataset."
    try:
        x = read_sn3_pascalvincent_tensor(str(path), strict=True)
    except (AssertionError, RuntimeError, ValueError, KeyError, IndexError) as e:
        raise DataError(
            f"{path} is not a valid IDX file (bad magic number or truncated: {type(e).__name__} {e}). {fix}"
        ) from e
    if x.dtype != torch.uint8:
        raise DataError(f"{path} holds {x.dtype}, expected torch.uint8. {fix}")
    if tuple(x.shape) != spec.shape:
        raise DataError(f"{path} has shape {tuple(x.shape)}, expected {spec.shape}. {fix}")
    if x.dim() == 1:  # labels
        if int(x.max()) >= num_classes:
            raise DataError(f"{path} has label {int(x.max())}, expected labels in 0..{num_classes - 1}. {fix}")
        counts = torch.bincount(x.long(), minlength=num_classes)
        expected = spec.shape[0] // num_classes
        if not bool((counts == expected).all()):
            raise DataError(f"{path} has class counts {counts.tolist()}, expected {expected} per class. {fix}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != spec.sha256:
        raise DataError(
            f"{path} parses but its SHA-256 is {digest}, not the official release's {spec.sha256}: "
            f"the file was modified or is another dataset. {fix}"
        )
    return x


class InMemoryDataset(Dataset):
    """(images uint8 (N, 28, 28), labels int64 (N,)). `__getitems__` serves a whole batch in one index op (uint8,
    for evaluation); `__getitem__` with a tuple of index tensors a group of training mini-batches (float)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def to(self, device: torch.device) -> InMemoryDataset:
        return InMemoryDataset(self.images.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if isinstance(i, tuple):  # a group of mini-batches from MiniBatchSampler: one gather, then views
            flat = torch.cat(i)
            # Scaled to [0, 1] floats exactly as ToTensor does (x / 255), once for the whole group: per mini-batch
            # the model then runs the bare linear layer, with no conversion op in its forward or backward.
            images = self.images.index_select(0, flat).to(torch.float32).div_(255)
            sizes = [len(b) for b in i]
            return list(zip(images.split(sizes), self.labels.index_select(0, flat).split(sizes)))
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        # DataLoader calls this with the sampler's batch of indices; see torch's _MapDatasetFetcher.
        idx = torch.as_tensor(indices, device=self.images.device)  # a few KB of indices, not the images
        # index_select, not images[idx]: ~25x faster for a (1024, 28, 28) uint8 gather on CPU.
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


class MiniBatchSampler(DistributedSampler):
    """This process's shard of a shuffled epoch, exactly as `DistributedSampler` draws it, cut into mini-batches
    of `batch_size` and handed out `steps_per_execution` mini-batches at a time (a tuple of index tensors).

    Why groups: at batch 64 this model's SGD step costs ~0.3 ms, and Lightning's machinery around one
    `training_step` call (hooks, closure, logging, progress) costs more than that. Grouping, like Keras'
    `steps_per_execution`, pays that once per group while the model still takes one SGD step per mini-batch,
    on the same samples in the same order, so the result does not depend on the group size.
    """

    def __init__(self, dataset, batch_size: int, steps_per_execution: int = 1, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.batch_size, self.steps_per_execution = batch_size, steps_per_execution
        self.num_batches = -(-self.num_samples // batch_size)  # mini-batches (= SGD steps) per epoch
        self._skip: tuple[int, int] | None = None  # (epoch, mini-batches already trained on), see skip()

    def skip(self, epoch: int, batches: int) -> None:
        """Leave out the first `batches` mini-batches of `epoch` (resuming mid-epoch); other epochs are whole."""
        self._skip = (epoch, batches)

    def __iter__(self):
        # A generator: its body runs at the first next(), after Lightning has called set_epoch() for this
        # epoch, so the (seed, epoch) order is the one the interrupted run used.
        skip, self._skip = self._skip, None
        first = skip[1] if skip is not None and skip[0] == self.epoch else 0
        batches = torch.tensor(list(super().__iter__())).split(self.batch_size)[first:]
        for i in range(0, len(batches), self.steps_per_execution):
            yield batches[i : i + self.steps_per_execution]

    def __len__(self) -> int:
        return -(-self.num_batches // self.steps_per_execution)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position inside an epoch is saved in checkpoints (Lightning's `state_dict` /
    `load_state_dict` protocol for loaders), so a run interrupted mid-epoch resumes at the next mini-batch.

    The position is counted from the groups the fit loop has finished this epoch: counting the groups handed
    out would be off by the one Lightning prefetches.
    """

    sampler: MiniBatchSampler

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress = None  # set by the DataModule: () -> groups finished in the current epoch

    def state_dict(self) -> dict:
        sampler = self.sampler
        groups = self.progress() if self.progress else 0
        return {
            "epoch": sampler.epoch,
            "batches_done": min(groups * sampler.steps_per_execution, sampler.num_batches),
            "batches_in_epoch": sampler.num_batches,
            "batch_size": sampler.batch_size,
            "steps_per_execution": sampler.steps_per_execution,
        }

    def load_state_dict(self, state: dict) -> None:
        sampler = self.sampler
        # Mid-epoch, Lightning restores its own count of finished groups, so the grouping must match to stay in
        # step. At an epoch boundary there is no position to keep, and any grouping may go on from there.
        mid_epoch = 0 < state["batches_done"] < state.get("batches_in_epoch", sampler.num_batches)
        for key in ("batch_size", "steps_per_execution") if mid_epoch else ():
            if state.get(key, 1 if key == "steps_per_execution" else sampler.batch_size) != getattr(sampler, key):
                raise ConfigError(
                    f"the checkpoint stopped mid-epoch with data.{key}={state[key]}, but this run has "
                    f"{getattr(sampler, key)}: resume with `--data.{key} {state[key]}` to continue exactly."
                )
        sampler.skip(state["epoch"], state["batches_done"])


def keep_batch(batch):
    """collate_fn: `__getitems__` already returned stacked tensors."""
    return batch


class FashionMNISTDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        steps_per_execution: int = 1,
        eval_batch_size: int = 1000,
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
            batch_size: training batch size *per process* (Lightning's convention); under DDP the
                effective batch is batch_size x world size.
            steps_per_execution: mini-batches per `training_step` call; the model takes one SGD step on each,
                so results do not depend on it, only speed does: >1 spreads Lightning's fixed per-call cost
                (~0.7 ms here, more than a whole SGD step at batch 64) over several steps. Lightning's batch
                counters then count groups: progress bar, `log_every_n_steps`, `limit_train_batches`,
                `val_check_interval`. `trainer.global_step` and `max_steps` still count SGD steps.
            eval_batch_size: per-process batch for val/test/predict; only affects speed, not results.
            val_size: images carved out of the 60,000 training images for validation.
            split_seed: seed of that carve-out; fixed so every run validates on the same images.
            download: try torchvision's downloader when no local copy is found.
            num_workers: DataLoader workers. 0 is fastest here: batches are one tensor index.
            pin_memory: page-locked host batches for faster GPU copies.
            on_device: keep the whole dataset (55 MB of uint8 for train+val+test) on the training device, so a
                GPU step reads its batch from device memory: no host-to-device copy, no pinned buffers.
                A no-op on CPU.
            predict_dir: a folder of PNG/JPEG/BMP images to `predict` on, instead of the test split.
            invert: for predict_dir images. Fashion-MNIST is a light garment on black; "auto" inverts images
                whose border is light (dark-on-light photos), "yes"/"no" force it.
        """
        super().__init__()
        n_train = FILES["train_labels"].shape[0]
        sizes = (("batch_size", batch_size, 64), ("steps_per_execution", steps_per_execution, 16),
                 ("eval_batch_size", eval_batch_size, 1000))  # fmt: skip
        for name, value, example in sizes:
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

    def prepare_data(self) -> None:
        # Runs on one process per node: decompress / download once, atomically.
        locate_raw_files(self.hparams.data_dir, self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.hparams.predict_dir is not None:
            from lit_softmax.predict import load_image_folder

            images, self.predict_files, self.predict_failures = load_image_folder(
                self.hparams.predict_dir, self.hparams.invert
            )
            self.predict_set = InMemoryDataset(images, torch.full((len(images),), -1))  # no labels
            return
        paths = locate_raw_files(self.hparams.data_dir, self.hparams.download)
        if stage in ("fit", "validate", None) and self.train_set is None:
            images = read_idx(paths["train_images"], FILES["train_images"])
            labels = read_idx(paths["train_labels"], FILES["train_labels"]).long()
            g = torch.Generator().manual_seed(self.hparams.split_seed)
            perm = torch.randperm(len(labels), generator=g)
            val_idx, train_idx = perm[: self.hparams.val_size], perm[self.hparams.val_size :]
            # Contiguous copies: each batch then gathers from one compact block.
            self.train_set = InMemoryDataset(images[train_idx].contiguous(), labels[train_idx])
            self.val_set = InMemoryDataset(images[val_idx].contiguous(), labels[val_idx])
        if stage in ("test", "predict", None) and self.test_set is None:
            images = read_idx(paths["test_images"], FILES["test_images"])
            labels = read_idx(paths["test_labels"], FILES["test_labels"]).long()
            self.test_set = InMemoryDataset(images, labels)
            self.predict_set = self.test_set
        if self.hparams.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device  # known here: the strategy set up its device before setup()
            for name in ("train_set", "val_set", "test_set", "predict_set"):
                dataset = getattr(self, name)
                if dataset is not None and dataset.images.device != device:
                    setattr(self, name, dataset.to(device))

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

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # The shuffle order is a function of (seed, epoch) alone, never of the global RNG's state, so an
        # interrupted run resumed from a checkpoint sees exactly the order the uninterrupted run would have.
        # With several processes this is the sampler Lightning would inject (same seed, same shards).
        sampler = MiniBatchSampler(
            self.train_set, self.hparams.batch_size, self.hparams.steps_per_execution,
            num_replicas=world, rank=rank, shuffle=True, seed=int(os.getenv("PL_GLOBAL_SEED", 0)),
        )  # fmt: skip
        # batch_size=None: the sampler already hands out whole groups of index tensors.
        loader = self._loader(self.train_set, None, sampler=sampler, resumable=True)
        if trainer is not None:
            loader.progress = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, self.hparams.eval_batch_size)

    def _loader(self, dataset, batch_size: int | None, sampler=None, resumable: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() first: the DataModule has not loaded this split.")
        trainer = self.trainer
        if sampler is None and trainer is not None and trainer.world_size > 1:
            # Lightning would inject a DistributedSampler, which pads ranks with repeated samples and so
            # scores some test images twice. This one splits the set without padding: exact metrics.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        workers = self.hparams.num_workers
        loader_class = ResumableDataLoader if resumable else DataLoader
        return loader_class(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=keep_batch,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.hparams.pin_memory,
        )
