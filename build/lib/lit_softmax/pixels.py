"""An image file -> the 28x28 input the model expects. Torch-free (NumPy and Pillow only): `predict
--data.predict_dir` (lit_softmax/images.py) and the model server (lit_softmax/serve.py) share it, so both see the
same pixels for the same file."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
FORMATS = ("PNG", "JPEG", "BMP", "TIFF")  # what Pillow may decode here (the same formats as the suffixes)
# Refuse images above this many pixels before decoding them: a small file can decode to gigabytes
# (a "decompression bomb"). 40 MP is far above any photo of one garment.
MAX_IMAGE_PIXELS = 40_000_000


def read_image(source: bytes | str | Path, invert: Literal["auto", "yes", "no"] = "auto") -> np.ndarray:
    """A PNG/JPEG/BMP/TIFF file (a path, or its bytes) -> (28, 28) uint8. Raises ValueError (with the reason) for
    anything else: not an image, another format, truncated, or over `MAX_IMAGE_PIXELS` (checked before decoding)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream, formats=FORMATS) as image:  # reads the header only
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ValueError(
                        f"{image.width}x{image.height} pixels is over the {MAX_IMAGE_PIXELS:,} limit (decompression "
                        "bomb guard); downscale it first"
                    )
                image.load()  # decode now, so truncated files fail here
                return to_fashion_mnist(image, invert)
    except UnidentifiedImageError:
        raise ValueError(f"not a {'/'.join(FORMATS)} image (Pillow does not recognise the data)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"not a readable {'/'.join(FORMATS)} image ({type(e).__name__}: {e})") from None


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
