"""Checks one file of an uploaded dataset (or sent to predict): is it an image we can use?

A file that fails is rejected with a reason code and the rest of the dataset is
kept. The decode goes through app.imaging.load_rgb, the same conversion training
and serving use, so an image accepted here is one the worker can read. The predict
endpoint runs the same header check and decode (app/services/inference.py).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace

from PIL import Image, ImageFile, UnidentifiedImageError

from app.imaging import load_rgb
from app.services.near_duplicates import phash

# Pillow openers to try; the JPEG one also opens the MPO files many cameras write.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
ACCEPTED_NAMES = "JPEG, PNG, WebP, BMP, GIF"

HIDDEN_FOLDERS = frozenset({"__MACOSX"})
HIDDEN_FILES = frozenset({"thumbs.db", "desktop.ini"})

# Images in formats we do not take, told apart from files that are no image at all,
# so the user learns to convert rather than that the file is garbage.
_OTHER_IMAGE_MAGIC = (
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    phash: str | None = None  # perceptual hash, from a full decode (inspect_image)


@dataclass(frozen=True)
class Rejection:
    """One file left out of a dataset: its path in the archive, a code, and why."""

    path: str
    reason: str
    detail: str


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_hidden(name: str) -> bool:
    """OS litter (__MACOSX/, .DS_Store, Thumbs.db, ...) and anything under a dot folder."""
    parts = name.split("/")
    if parts[-1].lower() in HIDDEN_FILES:
        return True
    return any(part.startswith(".") or part in HIDDEN_FOLDERS for part in parts)


def inspect_image(data: bytes, *, max_pixels: int, min_side: int) -> ImageInfo:
    """Check one image fully, its size from the header before any pixel is decoded.

    Raises ImageRejected with reason not_an_image, unsupported_format,
    too_many_pixels, too_small or corrupt_image.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone in this process turned it on; truncated files would then pass as good.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False for ingestion")
    info = check_header(data, max_pixels=max_pixels, min_side=min_side)
    return replace(info, phash=phash(decode_rgb(data)))


def check_header(data: bytes, *, max_pixels: int | None, min_side: int = 1) -> ImageInfo:
    """The image's format and size from its header alone (no pixel is decoded), checked
    against the limits: what to call before decoding anything a client sent.

    Raises ImageRejected with reason not_an_image, unsupported_format, too_many_pixels,
    too_small or corrupt_image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        info = _read_header(data)
    _check_size(info, max_pixels=max_pixels, min_side=min_side)
    return info


def _read_header(data: bytes) -> ImageInfo:
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            return ImageInfo(width=img.width, height=img.height, format=img.format or "")
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from None
    except Exception as exc:  # Pillow raises many types on a malformed header
        raise ImageRejected("corrupt_image", _describe(exc)) from None


def _unidentified(data: bytes) -> ImageRejected:
    for offset, magic, name in _OTHER_IMAGE_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return ImageRejected(
                "unsupported_format", f"{name} is not accepted; use {ACCEPTED_NAMES}"
            )
    return ImageRejected("not_an_image", f"not an image Graft can read ({ACCEPTED_NAMES})")


def _check_size(info: ImageInfo, *, max_pixels: int | None, min_side: int) -> None:
    pixels = info.width * info.height
    if max_pixels is not None and pixels > max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"{info.width}x{info.height} is {pixels} pixels, over the limit of {max_pixels} "
            "(GRAFT_MAX_IMAGE_PIXELS)",
        )
    if min(info.width, info.height) < min_side:
        raise ImageRejected(
            "too_small",
            f"{info.width}x{info.height} has a side under min_image_side={min_side} px",
        )


def decode_rgb(data: bytes) -> Image.Image:
    """Decode the whole image to RGB (app.imaging.load_rgb); a failure is ImageRejected."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return load_rgb(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from None
    except Exception as exc:  # a damaged file can make any decoder raise anything
        raise ImageRejected("corrupt_image", _describe(exc)) from None


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
