"""User image files -> Fashion-MNIST-like inputs: what `predict --data.predict_dir` reads."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image, ImageOps, UnidentifiedImageError

from lit_softmax.errors import DataError
from lit_softmax.fashion_mnist import CLASSES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
# Refuse images above this many pixels before decoding them: a small file can decode to gigabytes
# (a "decompression bomb"). 40 MP is far above any photo of one garment.
MAX_IMAGE_PIXELS = 40_000_000


def to_fashion_mnist(image: Image.Image, invert: Literal["auto", "yes", "no"] = "auto") -> np.ndarray:
    """Any PIL image -> (28, 28) uint8, made the way Fashion-MNIST was: light object on a black background,
    trimmed to the object, longest edge resized to 28, centred.

    `invert="auto"` inverts when the image border is light (a dark garment photographed on a light background).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas are background: put them on white, which "auto" then treats as a light background.
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    gray = grey_levels(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if invert == "yes" or (invert == "auto" and np.median(border) > 127):
        gray, border = 255 - gray, 255 - border
    background = float(np.median(border))
    gray = np.clip(gray - background, 0, 255)  # background to black, as in the dataset
    rows, cols = np.nonzero(gray > 20)  # the object: clearly brighter than the background
    if len(rows):
        gray = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = gray.shape
    scale = 28 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(gray.astype(np.uint8)).resize(size, Image.LANCZOS)
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(resized, ((28 - size[0]) // 2, (28 - size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def grey_levels(image: Image.Image) -> np.ndarray:
    """The image's grey levels as float32 in [0, 255], whatever its bit depth.

    PIL's `convert("L")` clips 16-bit and 32-bit integer pixels at 255 instead of scaling them, which turns a
    16-bit PNG into black and white (74.6% instead of 84.0% on the test images); those are scaled here.
    """
    if image.mode.startswith("I"):  # "I;16", "I;16B", ... (16-bit files) and "I" (32-bit, holding 16-bit PNGs)
        return np.asarray(image, dtype=np.float32) * (255.0 / 65535.0)
    if image.mode == "F":  # 32-bit float: [0, 1] when it looks like it, else already in grey levels
        values = np.asarray(image, dtype=np.float32)
        return np.clip(values * 255.0 if values.max() <= 1.0 else values, 0, 255)
    return np.asarray(image.convert("L"), dtype=np.float32)


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
        raise DataError(f"predict_dir {folder} is not a directory. Pass a folder of PNG/JPEG/BMP images.")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip
    if not files:
        raise DataError(f"predict_dir {folder} is empty. Put PNG/JPEG/BMP images of garments in it.")
    images, names, labels, failures = [], [], [], []
    for path in files:
        name = path.relative_to(folder).as_posix()
        try:
            images.append(_read_one(path, invert))
            names.append(name)
            parts = path.relative_to(folder).parts
            labels.append(class_of_folder(parts[0]) if len(parts) > 1 else -1)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
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
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:  # reads the header only
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{image.width}x{image.height} pixels is over the {MAX_IMAGE_PIXELS:,} limit (decompression "
                    "bomb guard); downscale it first"
                )
            image.load()  # decode now, so truncated files fail here
            return to_fashion_mnist(image, invert)
