"""The Fashion-MNIST release: its four IDX files, where to find them, and how to check them.

Everything here is about files on disk: looking in `data_dir`, then in Debian/Ubuntu's system copy, then
downloading with torchvision; decompressing `.gz` files once; parsing the IDX format and verifying shape,
labels and SHA-256. The DataModule (`data.py`) only asks for tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lit_softmax.checkpoints import atomic_write_bytes
from lit_softmax.errors import DataError

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


def train_size() -> int:
    """Images in the training file (60,000 for the real release)."""
    return FILES["train_labels"].shape[0]


def cache_dir(data_dir: str | Path) -> Path:
    """torchvision's layout, where its downloader puts the files: `torchvision.datasets.FashionMNIST(data_dir)`."""
    return expand(data_dir) / "FashionMNIST" / "raw"


def expand(path: str | Path) -> Path:
    """`~` and environment variables expanded, as a shell would: `data_dir: ~/fmdata` is not `./~/fmdata`."""
    return Path(os.path.expandvars(os.fspath(path))).expanduser()


def user_cache() -> Path:
    """One place per user for decompressed copies, whatever the working directory: $XDG_CACHE_HOME/lit_softmax
    (~/.cache/lit_softmax by default)."""
    return expand(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "lit_softmax" / "fashion-mnist"


def _cached_copy(gz: Path, spec: IdxSpec) -> Path:
    """The decompressed copy of `gz` in the user cache, named after the source file (path, size, time): another
    source, or a changed one, gets its own copy, so copies of different files never mix."""
    stat = gz.stat()
    key = hashlib.sha256(f"{gz.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return user_cache() / key / spec.filename


def _find(directory: Path, spec: IdxSpec) -> Path | None:
    for name in (spec.filename, spec.filename + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


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
            f"cannot write the decompressed copy {dest} ({e}). Make it writable, or set XDG_CACHE_HOME to a "
            "writable directory (decompressed copies go to $XDG_CACHE_HOME/lit_softmax)."
        ) from e


def locate_raw_files(data_dir: str | Path, download: bool = True) -> dict[str, Path]:
    """Return the decompressed IDX file for each entry of FILES, making it if needed.

    Looks, in order, in `data_dir` (plain or torchvision layout), the system copy, then downloads. A `.gz` is
    decompressed once into the user cache (`user_cache()`), shared by runs from every working directory.
    """
    data_dir = expand(data_dir)
    candidates = [data_dir, cache_dir(data_dir), SYSTEM_DIR]
    for directory in candidates:
        found = {key: _find(directory, spec) for key, spec in FILES.items()}
        if all(found.values()):
            break
    else:
        if download:
            _download(data_dir)
            found = {key: _find(cache_dir(data_dir), spec) for key, spec in FILES.items()}
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
            dest = _cached_copy(path, FILES[key])
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


def parse_idx(raw: bytes) -> Tensor:
    """The IDX format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 = uint8), the number
    of dimensions, each dimension as a big-endian uint32, then the data. Only uint8 files are Fashion-MNIST."""
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise ValueError(f"bad magic number {raw[:4].hex()} (expected 000008 followed by 01..04)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"the header needs {header} bytes, the file has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(shape)
    if len(raw) != header + size:
        raise ValueError(
            f"the header promises {size} bytes of data for shape {shape}, the file has {len(raw) - header}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def read_idx(path: Path, spec: IdxSpec, num_classes: int = len(CLASSES)) -> Tensor:
    """Parse one IDX file and check it is exactly what `spec` describes."""
    fix = f"Delete {path} and run again (it is re-made from the source), or reinstall the dataset."
    raw = path.read_bytes()
    try:
        x = parse_idx(raw)
    except ValueError as e:
        raise DataError(f"{path} is not a valid IDX file (bad magic number or truncated: {e}). {fix}") from e
    if tuple(x.shape) != spec.shape:
        raise DataError(f"{path} has shape {tuple(x.shape)}, expected {spec.shape}. {fix}")
    if x.dim() == 1:  # labels
        if int(x.max()) >= num_classes:
            raise DataError(f"{path} has label {int(x.max())}, expected labels in 0..{num_classes - 1}. {fix}")
        counts = torch.bincount(x.long(), minlength=num_classes)
        expected = spec.shape[0] // num_classes
        if not bool((counts == expected).all()):
            raise DataError(f"{path} has class counts {counts.tolist()}, expected {expected} per class. {fix}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise DataError(
            f"{path} parses but its SHA-256 is {digest}, not the official release's {spec.sha256}: "
            f"the file was modified or is another dataset. {fix}"
        )
    return x


def load_split(data_dir: str | Path, split: str, download: bool = True) -> tuple[Tensor, Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the "train" or "test" file pair, verified."""
    paths = locate_raw_files(data_dir, download)
    images = read_idx(paths[f"{split}_images"], FILES[f"{split}_images"])
    labels = read_idx(paths[f"{split}_labels"], FILES[f"{split}_labels"]).long()
    return images, labels
