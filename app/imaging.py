"""Decoding and resizing of images, the one definition shared by every consumer.

Ingestion, the worker's decode-once cache and the API's predict endpoint all go
through these two functions, so a model sees the same pixels in training and in
serving. The exported bundle's predict.py repeats them (it must run without Graft).
"""

from __future__ import annotations

from typing import IO

import numpy as np
from PIL import Image, ImageSequence


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded image to 8-bit RGB, the same way for every format.

    - animated images (GIF, WebP): the first frame
    - 16-bit and 32-bit grayscale: scaled to 8 bits by range, not clipped
    - transparency (RGBA, LA, palette with transparency): composited on black,
      which is what dropping the alpha channel of premultiplied data gives
    """
    if getattr(img, "is_animated", False):
        img = next(iter(ImageSequence.Iterator(img)))
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(fp: str | IO[bytes]) -> Image.Image:
    """Open, fully decode and convert one image to RGB (raises on a bad file)."""
    with Image.open(fp) as img:
        img.load()
        return to_rgb(img)


def to_array(img: Image.Image, size: int) -> np.ndarray:
    """Resize to size x size (bilinear) and return uint8 HWC RGB."""
    resized = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)
