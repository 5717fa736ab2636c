"""FashionMNISTDataModule on small synthetic IDX files: parsing, split, batches, every corruption, source order."""

from __future__ import annotations

import gzip
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC, idx_bytes, synthetic_arrays

from lit_softmax import fashion_mnist
from lit_softmax.data import FashionMNISTDataModule
from lit_softmax.errors import ConfigError, DataError
from lit_softmax.fashion_mnist import locate_raw_files, read_idx
from lit_softmax.samplers import EvalSampler, TrainBatchSampler


def make_dm(data_dir: Path, **kwargs) -> FashionMNISTDataModule:
    kwargs.setdefault("val_size", 20)
    kwargs.setdefault("download", False)
    return FashionMNISTDataModule(data_dir=str(data_dir), **kwargs)


def plain_copy(src: Path, dest: Path) -> Path:
    """Decompressed copies of the four synthetic files (the other accepted form)."""
    dest.mkdir(parents=True, exist_ok=True)
    for gz in src.glob("*.gz"):
        (dest / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    return dest


def test_parse_split_sizes_dtypes(synthetic_dir: Path) -> None:
    dm = make_dm(synthetic_dir)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    n_train = SYNTHETIC["train"]
    assert len(dm.train_set) == n_train - 20
    assert len(dm.val_set) == 20
    assert len(dm.test_set) == SYNTHETIC["test"]
    assert dm.train_set.images.dtype == torch.uint8
    assert dm.train_set.images.shape[1:] == (28, 28)
    assert dm.train_set.labels.dtype == torch.int64
    # Train and val partition the training file exactly: compare the image bytes against the source.
    images, labels = synthetic_arrays(n_train, seed=0)
    seen = torch.cat([dm.train_set.images, dm.val_set.images]).reshape(n_train, -1)
    assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, images.reshape(n_train, -1)))
    test_images, test_labels = synthetic_arrays(SYNTHETIC["test"], seed=1)
    assert np.array_equal(dm.test_set.images.numpy(), test_images)  # test keeps file order
    assert np.array_equal(dm.test_set.labels.numpy(), test_labels)


def test_split_is_fixed_by_split_seed(synthetic_dir: Path) -> None:
    def val_images(seed: int) -> torch.Tensor:
        dm = make_dm(synthetic_dir, split_seed=seed)
        dm.setup("fit")
        return dm.val_set.images

    assert torch.equal(val_images(0), val_images(0))
    assert not torch.equal(val_images(0), val_images(1))


def test_batches_are_index_cut_and_scaled_like_totensor(synthetic_dir: Path) -> None:
    dm = make_dm(synthetic_dir, batch_size=16, eval_batch_size=7)
    dm.setup("fit")
    dm.setup("test")
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [16] * 11 + [4]  # 180 = 11*16 + 4: no drop_last
    x, y = batches[0]
    assert x.dtype == torch.uint8  # through the loader (and to the device) as uint8: 4x fewer bytes
    assert x.shape == (16, 28, 28)
    assert y.dtype == torch.int64
    # Each batch row is a training row with its own label (the loader shuffles, so match by content).
    rows = {bytes(img.numpy()): int(lbl) for img, lbl in zip(dm.train_set.images, dm.train_set.labels)}
    assert all(rows[bytes(img.numpy())] == int(lbl) for img, lbl in zip(x, y))
    all_labels = torch.cat([b[1] for b in batches])
    assert torch.equal(all_labels.sort().values, dm.train_set.labels.sort().values)  # each sample once per epoch
    # On the device, Lightning's hook turns them into exactly what ToTensor gives: x / 255 as float32.
    x_float, y_same = dm.on_after_batch_transfer((x, y), 0)
    assert x_float.dtype == torch.float32
    assert torch.equal(x_float, torch.from_numpy(x.numpy().astype(np.float32) / 255))
    assert y_same is y
    # Every test sample exactly once, in order, in batches of eval_batch_size.
    test_batches = list(dm.test_dataloader())
    assert [len(b[1]) for b in test_batches] == [7] * 7 + [1]
    assert torch.equal(torch.cat([b[1] for b in test_batches]), dm.test_set.labels)
    assert torch.equal(torch.cat([b[0] for b in test_batches]), dm.test_set.images)


def order_of(epoch: int, n: int, seed: int = 0) -> torch.Tensor:
    """The independent reference: torch's own DistributedSampler order for one process."""
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_global_batch_is_the_same_set_on_any_number_of_processes(world: int) -> None:
    data = torch.utils.data.TensorDataset(torch.arange(1003))
    ranks = [TrainBatchSampler(data, 96, num_replicas=world, rank=r, seed=7) for r in range(world)]
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        single = order_of(epoch, 1003, seed=7).split(96)  # 10 full global batches + one of 43
        shares = [list(s) for s in ranks]
        assert all(len(s) == len(single) == 11 for s in shares)  # every process takes the same number of steps
        for step, batch in enumerate(single):
            parts = [share[step] for share in shares]
            assert torch.equal(torch.cat(parts), batch)  # the same samples, in the same order, split W ways
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_last_batch_smaller_than_the_process_count_is_dropped() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(97))  # 96 + 1: one sample cannot feed 2 processes
    sampler = TrainBatchSampler(data, 32, num_replicas=2, rank=0)
    assert len(sampler) == len(list(sampler)) == 3
    assert len(TrainBatchSampler(data, 32, num_replicas=1, rank=0)) == 4


def test_eval_shares_cover_every_sample_exactly_once() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10))
    shares = [list(EvalSampler(data, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(10))  # no padding, nothing twice
    assert [len(EvalSampler(data, num_replicas=3, rank=r)) for r in range(3)] == [4, 3, 3]


def test_training_order_depends_only_on_seed_and_epoch(synthetic_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # what seed_everything(5) sets, and Lightning's samplers read
    dm = make_dm(synthetic_dir, batch_size=16)
    dm.setup("fit")

    def epoch_order(epoch: int) -> torch.Tensor:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b[1] for b in loader])

    torch.manual_seed(123)  # the global RNG must not matter
    first = epoch_order(1)
    torch.manual_seed(456)
    assert torch.equal(epoch_order(1), first)
    assert not torch.equal(epoch_order(0), first)
    assert torch.equal(first, dm.train_set.labels[order_of(1, len(dm.train_set), seed=5)])


def test_resume_position_skips_what_was_trained(synthetic_dir: Path) -> None:
    dm = make_dm(synthetic_dir, batch_size=16)
    dm.setup("fit")
    loader = dm.train_dataloader()
    full = [b[1] for b in loader]
    loader.sampler.batches_done = 5  # what the DataModule counts as batches reach the model
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches_done": 5, "num_batches": 12, "batch_size": 16}
    resumed = make_dm(synthetic_dir, batch_size=16)
    resumed.setup("fit")
    resumed_loader = resumed.train_dataloader()
    resumed_loader.load_state_dict(state)
    rest = [b[1] for b in resumed_loader]
    assert len(rest) == 7
    assert all(torch.equal(a, b) for a, b in zip(rest, full[5:]))  # the rest of the epoch, nothing twice
    assert len(list(resumed_loader)) == 12  # and the next pass is whole again
    other = make_dm(synthetic_dir, batch_size=32)
    other.setup("fit")
    with pytest.raises(ConfigError, match=r"mid-epoch with data.batch_size=16, but this run has 32: resume with "
                                          r"`--data.batch_size 16`"):  # fmt: skip
        other.train_dataloader().load_state_dict(state)
    # At the end of an epoch there is no position to keep: another batch size may go on from there.
    other.train_dataloader().load_state_dict({**state, "batches_done": 12})


def test_normalization_stats_are_per_pixel_of_train_split(synthetic_dir: Path) -> None:
    dm = make_dm(synthetic_dir)
    dm.setup("fit")
    mean, std = dm.normalization_stats()
    x = dm.train_set.images.reshape(-1, 784).double() / 255
    assert mean.shape == (784,)
    assert torch.allclose(mean.double(), x.mean(0), atol=1e-6)
    assert torch.allclose(std.double(), x.std(0), atol=1e-6)


def test_gz_is_decompressed_once_into_the_user_cache(synthetic_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "work"
    shutil.copytree(synthetic_dir, work)
    paths = locate_raw_files(work, download=False)
    cache = tmp_path / "xdg" / "lit_softmax" / "fashion-mnist"
    assert all(p.parent.parent == cache and p.suffix != ".gz" for p in paths.values())
    assert not (work / "FashionMNIST").exists()  # nothing in the data directory (or the working directory)
    other = tmp_path / "elsewhere"  # another working directory, data_dir with ~ and $VARS: the same copies
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WORK_NAME", "work")
    assert locate_raw_files("~/$WORK_NAME", download=False) == paths
    assert not other.exists()
    mtimes = {p: p.stat().st_mtime_ns for p in paths.values()}
    assert locate_raw_files(work, download=False) == paths
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == mtimes
    assert not list(cache.glob("*/.*tmp"))  # no temporary files left behind


# ---- corruption: each case names the file and the fix --------------------------------------------
def corrupt(directory: Path, key: str, content: bytes) -> Path:
    path = directory / fashion_mnist.FILES[key].filename
    path.write_bytes(content)
    return path


def test_truncated_gz(synthetic_dir: Path) -> None:
    gz = synthetic_dir / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:500])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is not a readable gzip file.*Delete it"):
        make_dm(synthetic_dir).setup("fit")


def test_gz_that_is_not_gzip(synthetic_dir: Path) -> None:
    (synthetic_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is not a readable gzip file"):
        make_dm(synthetic_dir).setup("test")


@pytest.mark.parametrize(
    ("key", "mangle", "message"),
    [
        ("train_images", lambda raw: raw[: len(raw) // 2], r"not a valid IDX file"),
        ("train_images", lambda raw: b"\x00\x00\x99\x03" + raw[4:], r"not a valid IDX file"),
        ("train_labels", lambda raw: raw[:-1] + b"\x0c", r"has label 12, expected labels in 0\.\.9"),
        ("train_labels", lambda raw: raw[:8] + b"\x00" + raw[9:], r"has class counts .* expected 20 per class"),
        ("train_images", lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), r"SHA-256 .* not the official release"),
    ],
    ids=["truncated", "wrong-magic", "label-out-of-range", "unbalanced", "checksum"],
)
def test_corrupt_idx(synthetic_dir: Path, tmp_path: Path, key: str, mangle, message: str) -> None:
    work = plain_copy(synthetic_dir, tmp_path / "plain")
    path = work / fashion_mnist.FILES[key].filename
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(DataError, match=rf"{path}.*{message}.*Delete .* and run again"):
        make_dm(work).setup("fit")


def test_wrong_image_count(synthetic_dir: Path, tmp_path: Path) -> None:
    work = plain_copy(synthetic_dir, tmp_path / "plain")
    images, _ = synthetic_arrays(SYNTHETIC["train"] - 10, seed=0)
    corrupt(work, "train_images", idx_bytes(images))
    with pytest.raises(DataError, match=r"has shape \(190, 28, 28\), expected \(200, 28, 28\)"):
        make_dm(work).setup("fit")


def test_read_idx_accepts_the_real_layout(synthetic_dir: Path, tmp_path: Path) -> None:
    work = plain_copy(synthetic_dir, tmp_path / "plain")
    x = read_idx(work / "t10k-images-idx3-ubyte", fashion_mnist.FILES["test_images"])
    assert x.shape == (50, 28, 28)
    assert x.dtype == torch.uint8


# ---- source order: data_dir, system copy, download; network absent ---------------------------------
def test_data_dir_wins_over_system_copy(synthetic_dir: Path, tmp_path: Path, monkeypatch) -> None:
    system = plain_copy(synthetic_dir, tmp_path / "system")
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", system)
    paths = locate_raw_files(synthetic_dir, download=False)
    for key, path in paths.items():  # the copies decompressed from data_dir's files, not the system's
        assert path == fashion_mnist._cached_copy(synthetic_dir / f"{path.name}.gz", fashion_mnist.FILES[key])


def test_system_copy_used_when_data_dir_empty(synthetic_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", synthetic_dir)
    empty = tmp_path / "empty"

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when the system copy exists")

    monkeypatch.setattr(fashion_mnist, "_download", no_download)
    dm = make_dm(empty, download=True)
    dm.setup("test")
    assert len(dm.test_set) == SYNTHETIC["test"]
    assert not empty.exists()  # .gz decompressed into the user cache, not here
    assert list(fashion_mnist.user_cache().glob("*/t10k-images-idx3-ubyte"))


def test_download_is_last_resort_and_offline_error_lists_places(synthetic_dir: Path, tmp_path: Path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    calls = []

    def offline(self, *args, **kwargs):
        calls.append(self.root)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_mnist.MNIST, "download", offline)
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        make_dm(empty, download=True).prepare_data()
    message = str(info.value)
    assert calls, "torchvision's downloader was not tried"
    assert "downloading Fashion-MNIST" in message
    assert "Temporary failure" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data.download true" in message


def test_missing_data_without_download(tmp_path: Path, synthetic_dir: Path) -> None:
    empty = tmp_path / "empty"
    with pytest.raises(DataError, match=r"(?s)Fashion-MNIST not found.*empty.*no-system-copy.*download is off"):
        make_dm(empty, download=False).setup("fit")


def test_download_result_is_used(tmp_path: Path, synthetic_dir: Path, monkeypatch) -> None:
    def fake_download(data_dir: Path) -> None:  # what torchvision leaves behind: raw/ with .gz and plain
        plain_copy(synthetic_dir, fashion_mnist.cache_dir(data_dir))

    monkeypatch.setattr(fashion_mnist, "_download", fake_download)
    paths = locate_raw_files(tmp_path / "dl", download=True)
    assert all(p.parent == tmp_path / "dl" / "FashionMNIST" / "raw" for p in paths.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"data.batch_size must be >= 1, got 0"),
        ({"eval_batch_size": -5}, r"data.eval_batch_size must be >= 1"),
        ({"val_size": 60000}, r"data.val_size must be in 1\.\.59999 .* got 60000"),
        ({"val_size": 0}, r"data.val_size must be in 1\.\.59999"),
        ({"num_workers": -1}, r"data.num_workers must be >= 0"),
        ({"on_device": True, "num_workers": 2}, r"data.on_device keeps the data on the GPU.*--data.num_workers 0"),
        ({"on_device": True, "pin_memory": True}, r"data.on_device .* --data.pin_memory false"),
    ],
)
def test_bad_datamodule_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FashionMNISTDataModule(**kwargs)


def test_global_batch_must_split_evenly_over_the_processes(synthetic_dir: Path) -> None:
    from types import SimpleNamespace

    dm = make_dm(synthetic_dir, batch_size=64)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=3, global_rank=0)  # what Lightning sets; only these two are read
    message = r"data.batch_size=64 is the global batch and must split evenly over the 3 processes; "
    with pytest.raises(ConfigError, match=message + r".*`--data.batch_size 63` or `--data.batch_size 66`"):
        dm.train_dataloader()
    dm.trainer = SimpleNamespace(world_size=4, global_rank=1)
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [16, 16, 13]  # 180 = 2 x 64 + 52: rank 1 takes a quarter of each
