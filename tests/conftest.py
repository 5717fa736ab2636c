"""Shared fixtures: small synthetic IDX datasets written by the tests themselves, the real-data location."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from lit_softmax import data

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = {"train": 200, "test": 50}  # 20 / 5 per class


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (big-endian header), independently of torchvision."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels; image of class c is bright in row band c so a linear model can learn it."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c + 4 : 2 * c + 6, :] = 250
    return images, labels


@pytest.fixture
def synthetic_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of four synthetic IDX files (.gz), with `data.FILES` pointed at their sizes and hashes."""
    import gzip

    root = tmp_path / "idx"
    root.mkdir()
    files = {}
    for split, n in SYNTHETIC.items():
        images, labels = synthetic_arrays(n, seed=0 if split == "train" else 1)
        for kind, array in (("images", images), ("labels", labels)):
            raw = idx_bytes(array)
            real = data.FILES[f"{split}_{kind}"]
            (root / f"{real.filename}.gz").write_bytes(gzip.compress(raw))
            files[f"{split}_{kind}"] = data.IdxSpec(real.filename, array.shape, hashlib.sha256(raw).hexdigest())
    monkeypatch.setattr(data, "FILES", files)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-copy")  # keep the real copy out of view
    return root


def real_data_dir() -> Path | None:
    for d in (data.SYSTEM_DIR, REPO / "data" / "FashionMNIST" / "raw"):
        if (d / "train-images-idx3-ubyte.gz").is_file() or (d / "train-images-idx3-ubyte").is_file():
            return d
    return None
