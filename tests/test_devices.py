"""The data path is device-true: every tensor it makes lives on the data's device.

No GPU is needed to check that. The datasets go to PyTorch's `meta` device (shapes, no data) and every loader is
iterated under a `TorchFunctionMode` that fails when one op mixes tensors of two devices: an index made on the
CPU and used on meta images fails it exactly as CUDA's `index_select` fails ("Expected all tensors to be on the
same device"), which meta itself does not check.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.plugins import Precision
from torch.overrides import TorchFunctionMode

from lit_softmax import FashionMNISTDataModule
from lit_softmax.grouped import GroupedFashionMNIST
from lit_softmax.samplers import InMemoryDataset


def tensors(value):
    """Every tensor in nested lists/tuples/dicts of op arguments."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors(item)


class DeviceMixGuard(TorchFunctionMode):
    """Raises when an op gets tensors on two devices (0-dim CPU tensors excepted: PyTorch allows those as
    scalars on any device)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device.type for t in tensors((args, kwargs)) if not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            raise RuntimeError(f"{getattr(func, '__name__', func)} mixes tensors on devices {sorted(devices)}")
        return func(*args, **kwargs)


def trainer_on(device: str, training: bool = True, world_size: int = 1, rank: int = 0):
    """The few Trainer attributes the DataModule reads, with its root device where `on_device` puts the data."""
    strategy = SimpleNamespace(root_device=torch.device(device))
    return SimpleNamespace(world_size=world_size, global_rank=rank, strategy=strategy, training=training, loggers=[],
                           precision_plugin=Precision())  # fmt: skip


def every_batch(dm) -> list:
    """Every batch of every loader, after the DataModule's on-device conversion, as Lightning hands them over."""
    batches = []
    for name in ("train", "val", "test", "predict"):
        dm.trainer.training = name == "train"
        loader = getattr(dm, f"{name}_dataloader")()
        batches += [dm.on_after_batch_transfer(batch, 0) for batch in loader]
    return batches


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("grouped", [False, True], ids=["textbook", "grouped"])
def test_every_loader_stays_on_the_datas_device(synthetic_dir: Path, world: int, grouped: bool) -> None:
    kwargs = {"data_dir": str(synthetic_dir), "val_size": 20, "batch_size": 32, "eval_batch_size": 7,
              "download": False, "on_device": True}  # fmt: skip
    dm = GroupedFashionMNIST(steps_per_call=3, **kwargs) if grouped else FashionMNISTDataModule(**kwargs)
    dm.trainer = trainer_on("meta", world_size=world, rank=world - 1)
    dm.setup("fit")
    dm.setup("test")
    dm.setup("predict")
    assert dm.train_set.images.device.type == "meta"  # the on_device path moved them, once
    assert dm.predict_set is dm.test_set  # one copy of the test split on the device, not two
    with DeviceMixGuard():
        batches = every_batch(dm)
    leaves = [t for batch in batches for t in tensors(batch)]
    assert leaves
    assert all(t.device.type == "meta" for t in leaves)
    images = [t for batch in batches for t in tensors(batch) if t.dim() == 3]
    assert images
    assert all(t.dtype == torch.float32 for t in images)  # converted once, on the device


def test_the_guard_catches_an_index_made_on_the_wrong_device() -> None:
    """The bug the old training path had: indices built on the CPU (torch.cat of CPU tensors) used to gather
    from GPU-resident images. The guard fails it; meta alone would not."""
    images = torch.zeros(100, 28, 28, dtype=torch.uint8, device="meta")
    cpu_index = torch.cat([torch.arange(0, 16), torch.arange(16, 32)])
    assert images.index_select(0, cpu_index).shape == (32, 28, 28)  # meta does not mind...
    with (
        DeviceMixGuard(),
        pytest.raises(RuntimeError, match=r"index_select mixes tensors on devices \['cpu', 'meta'\]"),
    ):
        images.index_select(0, cpu_index)  # ...the guard does, as CUDA would


def test_the_guard_fails_a_dataset_that_builds_cpu_indices(synthetic_dir: Path) -> None:
    """A dataset that makes its index on the CPU (as the old grouped path did) is caught through a real loader."""

    class CpuIndexDataset(InMemoryDataset):
        def __getitem__(self, index):
            return super().__getitem__(torch.arange(len(index)))  # a fresh index, on the default (CPU) device

    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=32, download=False, on_device=True)
    dm.trainer = trainer_on("meta")
    dm.setup("fit")
    dm.train_set = CpuIndexDataset(dm.train_set.images, dm.train_set.labels)
    with DeviceMixGuard(), pytest.raises(RuntimeError, match=r"mixes tensors on devices \['cpu', 'meta'\]"):
        every_batch(dm)
