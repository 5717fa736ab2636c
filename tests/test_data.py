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

from lit_softmax import data
from lit_softmax.data import FashionMNISTDataModule, locate_raw_files, read_idx
from lit_softmax.errors import ConfigError, DataError


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
    groups = list(dm.train_dataloader())
    assert all(len(g) == 1 for g in groups)  # steps_per_execution=1: one mini-batch per training_step
    batches = [g[0] for g in groups]
    assert [len(b[1]) for b in batches] == [16] * 11 + [4]  # 180 = 11*16 + 4: no drop_last
    x, y = batches[0]
    assert x.dtype == torch.float32  # training batches: [0, 1] floats, as ToTensor gives
    assert x.shape == (16, 28, 28)
    assert y.dtype == torch.int64
    # Each batch row is a training row / 255 with its own label (the loader shuffles, so match by content).
    pixels = (x * 255).round().to(torch.uint8)
    assert torch.equal(pixels.float() / 255, x)  # exactly ToTensor's x / 255
    rows = {bytes(img.numpy()): int(lbl) for img, lbl in zip(dm.train_set.images, dm.train_set.labels)}
    assert all(rows[bytes(img.numpy())] == int(lbl) for img, lbl in zip(pixels, y))
    x_eval, _ = next(iter(dm.test_dataloader()))
    assert x_eval.dtype == torch.uint8  # evaluation batches stay uint8: the model scales them in forward
    all_labels = torch.cat([b[1] for b in batches])
    assert torch.equal(all_labels.sort().values, dm.train_set.labels.sort().values)  # each sample once per epoch
    # Every test sample exactly once, in order.
    test_labels = torch.cat([b[1] for b in dm.test_dataloader()])
    assert torch.equal(test_labels, dm.test_set.labels)


def test_normalization_stats_are_per_pixel_of_train_split(synthetic_dir: Path) -> None:
    dm = make_dm(synthetic_dir)
    dm.setup("fit")
    mean, std = dm.normalization_stats()
    x = dm.train_set.images.reshape(-1, 784).double() / 255
    assert mean.shape == (784,)
    assert torch.allclose(mean.double(), x.mean(0), atol=1e-6)
    assert torch.allclose(std.double(), x.std(0), atol=1e-6)


def test_gz_is_decompressed_once_into_torchvision_layout(synthetic_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(synthetic_dir, work)
    paths = locate_raw_files(work, download=False)
    cache = work / "FashionMNIST" / "raw"
    assert all(p.parent == cache and p.suffix != ".gz" for p in paths.values())
    mtimes = {p: p.stat().st_mtime_ns for p in paths.values()}
    assert locate_raw_files(work, download=False) == paths
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == mtimes
    assert not list(cache.glob(".*tmp"))  # no temporary files left behind


# ---- corruption: each case names the file and the fix --------------------------------------------
def corrupt(directory: Path, key: str, content: bytes) -> Path:
    path = directory / data.FILES[key].filename
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
    path = work / data.FILES[key].filename
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
    x = read_idx(work / "t10k-images-idx3-ubyte", data.FILES["test_images"])
    assert x.shape == (50, 28, 28)
    assert x.dtype == torch.uint8


# ---- source order: data_dir, system copy, download; network absent ---------------------------------
def test_data_dir_wins_over_system_copy(synthetic_dir: Path, tmp_path: Path, monkeypatch) -> None:
    system = plain_copy(synthetic_dir, tmp_path / "system")
    monkeypatch.setattr(data, "SYSTEM_DIR", system)
    paths = locate_raw_files(synthetic_dir, download=False)
    assert all(p.is_relative_to(synthetic_dir) for p in paths.values())


def test_system_copy_used_when_data_dir_empty(synthetic_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data, "SYSTEM_DIR", synthetic_dir)
    empty = tmp_path / "empty"

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when the system copy exists")

    monkeypatch.setattr(data, "_download", no_download)
    dm = make_dm(empty, download=True)
    dm.setup("test")
    assert len(dm.test_set) == SYNTHETIC["test"]
    assert (empty / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()  # .gz decompressed here


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
        plain_copy(synthetic_dir, data.cache_dir(data_dir))

    monkeypatch.setattr(data, "_download", fake_download)
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


def flat_order(loader) -> list[list[int]]:
    """Labels of each mini-batch, in the order the loader hands them out (groups flattened)."""
    return [b[1].tolist() for group in loader for b in group]


def test_groups_of_minibatches_keep_the_order(synthetic_dir: Path) -> None:
    one = make_dm(synthetic_dir, batch_size=16)
    five = make_dm(synthetic_dir, batch_size=16, steps_per_execution=5)
    one.setup("fit")
    five.setup("fit")
    groups = list(five.train_dataloader())
    assert [len(g) for g in groups] == [5, 5, 2]  # 12 mini-batches
    assert len(five.train_dataloader()) == 3  # what Lightning counts as batches per epoch
    assert flat_order(five.train_dataloader()) == flat_order(one.train_dataloader())


def test_resume_position_is_in_minibatches_and_needs_the_same_grouping(synthetic_dir: Path) -> None:
    dm = make_dm(synthetic_dir, batch_size=16, steps_per_execution=5)
    dm.setup("fit")
    loader = dm.train_dataloader()
    full = flat_order(loader)
    loader.progress = lambda: 1  # the fit loop finished one group of this epoch
    state = loader.state_dict()
    assert state["batches_done"] == 5
    resumed = make_dm(synthetic_dir, batch_size=16, steps_per_execution=5)
    resumed.setup("fit")
    resumed_loader = resumed.train_dataloader()
    resumed_loader.load_state_dict(state)
    assert flat_order(resumed_loader) == full[5:]  # the rest of the epoch, nothing twice
    assert flat_order(resumed_loader) == full  # and the next epoch is whole again
    other = make_dm(synthetic_dir, batch_size=16, steps_per_execution=4)
    other.setup("fit")
    with pytest.raises(ConfigError, match=r"data.steps_per_execution=5, but this run has 4: resume with "
                                          r"`--data.steps_per_execution 5`"):  # fmt: skip
        other.train_dataloader().load_state_dict(state)
    # At the end of an epoch there is no position to keep: another grouping may go on from there.
    loader.progress = lambda: 3  # all three groups of the epoch
    end_of_epoch = loader.state_dict()
    assert end_of_epoch["batches_done"] == 12
    regrouped = other.train_dataloader()
    regrouped.load_state_dict(end_of_epoch)  # no error
    regrouped.sampler.set_epoch(1)  # what Lightning does next
    assert [len(g) for g in regrouped] == [4, 4, 4]
