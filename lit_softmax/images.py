"""User image files -> Fashion-MNIST-like inputs: what `predict --data.predict_dir` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_softmax.errors import DataError
from lit_softmax.fashion_mnist import CLASSES
from lit_softmax.pixels import IMAGE_SUFFIXES, read_image, to_fashion_mnist  # noqa: F401  (to_fashion_mnist: public here too)


def class_of_folder(name: str) -> int:
    """The class a folder name stands for (-1 for none): a class name in any case and punctuation ("Sandal",
    "ankle_boot", "T-shirt_top"), or either half of "T-shirt/top", which no folder can be called."""
    key = "".join(c for c in name.lower() if c.isalnum())
    for index, class_name in enumerate(CLASSES):
        names = {class_name, *class_name.split("/")}
        if key in {"".join(c for c in n.lower() if c.isalnum()) for n in names}:
            return index
    return -1


def load_image_folder(folder: str | Path, invert: Literal["auto", "yes", "no"] = "auto"):
    """Read every file in `folder` and its subfolders (sorted by path). A file under a subfolder named after a class
    (`Sandal/x.png`, what sorting photos by hand gives) is labelled with that class; other files are not (-1).

    Returns (images uint8 (N, 28, 28), their paths relative to `folder`, labels int64 (N,),
    [(path, reason)] for files that could not be used).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"predict_dir {folder} is not a directory. Pass a folder of PNG/JPEG/BMP/TIFF images.")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip
    if not files:
        raise DataError(f"predict_dir {folder} is empty. Put PNG/JPEG/BMP/TIFF images of garments in it.")
    images, names, labels, failures = [], [], [], []
    for path in files:
        name = path.relative_to(folder).as_posix()
        try:
            images.append(_read_one(path, invert))
            names.append(name)
            parts = path.relative_to(folder).parts
            labels.append(class_of_folder(parts[0]) if len(parts) > 1 else -1)
        except (OSError, ValueError) as e:  # read_image says every decoding failure as a ValueError
            failures.append((name, f"{type(e).__name__}: {e}"))
            rank_zero_warn(f"skipping {path}: {e}")
    if not images:
        raise DataError(
            f"none of the {len(files)} files in {folder} is a readable image (first: {failures[0][0]}: "
            f"{failures[0][1]}). Supported: {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    folders = len({Path(n).parent for n in names})
    labelled = sum(label >= 0 for label in labels)
    rank_zero_info(
        f"predict_dir {folder}: {len(images)} images in {folders} folder(s), subfolders included"
        + (f"; {labelled} labelled by their class folder" if labelled else "")
    )
    return torch.from_numpy(np.stack(images)), names, torch.tensor(labels, dtype=torch.int64), failures


def _read_one(path: Path, invert) -> np.ndarray:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"not an image file type we read ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return read_image(path, invert)
