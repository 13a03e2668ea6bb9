"""One file at a time: accepted formats decode to the same RGB, bad files get a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from app.imaging import load_rgb
from app.services import images
from app.services.images import ImageRejected, inspect_image, is_hidden
from tests.unit.archives import image_bytes, png_declaring

LIMITS = {"max_pixels": 40_000_000, "min_side": 8}

# A picture with every channel varying, so a swapped or dropped channel shows.
_Y, _X = np.mgrid[0:24, 0:32]
PICTURE = np.stack([_X * 8, _Y * 10, (_X + _Y) * 4], axis=-1).astype(np.uint8)
ALPHA = (_X * 8).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    img = load_rgb(io.BytesIO(data))
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.dtype == np.uint8
    assert arr.shape == (24, 32, 3)
    return arr


def rgb() -> Image.Image:
    return Image.fromarray(PICTURE, "RGB")


def max_error(data: bytes, expected: np.ndarray) -> int:
    return int(np.abs(decoded(data).astype(int) - expected.astype(int)).max())


# --- accepted formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("WEBP", {"quality": 95}, 40),
        ("JPEG", {"quality": 95}, 40),
    ],
)
def test_rgb_formats_decode_to_the_same_pixels(fmt, params, tolerance):
    data = encode(rgb(), fmt, **params)
    info = inspect_image(data, **LIMITS)
    assert (info.width, info.height) == (32, 24)
    assert max_error(data, PICTURE) <= tolerance


def test_gif_uses_its_palette_and_first_frame():
    first = rgb().quantize(256)
    second = Image.new("P", first.size, 0)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert inspect_image(data, **LIMITS).format == "GIF"
    assert np.array_equal(decoded(data), np.asarray(first.convert("RGB")))


def test_grayscale_becomes_three_equal_channels():
    gray = rgb().convert("L")
    out = decoded(encode(gray, "PNG"))
    for channel in range(3):
        assert np.array_equal(out[..., channel], np.asarray(gray))


def test_rgba_is_composited_on_black():
    rgba = rgb().copy()
    rgba.putalpha(Image.fromarray(ALPHA, "L"))
    data = encode(rgba, "PNG")
    inspect_image(data, **LIMITS)
    expected = PICTURE.astype(float) * ALPHA[..., None] / 255.0
    assert max_error(data, expected) <= 1


def test_palette_png_uses_its_palette():
    palette = rgb().quantize(64)
    assert palette.mode == "P"
    assert np.array_equal(decoded(encode(palette, "PNG")), np.asarray(palette.convert("RGB")))


def test_16_bit_png_is_scaled_by_range_not_clipped():
    values = (_X * 2000 + _Y * 60).astype(np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode.startswith("I;16")
    inspect_image(data, **LIMITS)
    expected = np.floor(values / 65535.0 * 255.0 + 0.5)
    out = decoded(data)
    assert max_error(data, np.repeat(expected[..., None], 3, axis=-1)) == 0
    assert out.max() > 200  # clipping at 255 of the raw values would give a flat image


def test_camera_jpeg_with_exif_is_accepted():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    data = encode(rgb(), "JPEG", exif=exif.tobytes())
    assert inspect_image(data, **LIMITS).format == "JPEG"


# --- rejections ------------------------------------------------------------------------


def reason(data: bytes, **limits: int) -> str:
    with pytest.raises(ImageRejected) as caught:
        inspect_image(data, **{**LIMITS, **limits})
    return caught.value.reason


def test_text_named_like_an_image_is_not_an_image():
    assert reason(b"name,label\ncat.jpg,cat\n") == "not_an_image"


@pytest.mark.parametrize("fmt", ["TIFF", "ICO"])
def test_other_image_formats_are_unsupported(fmt):
    with pytest.raises(ImageRejected) as caught:
        inspect_image(encode(rgb(), fmt), **LIMITS)
    assert caught.value.reason == "unsupported_format"
    assert "JPEG, PNG" in caught.value.detail


def test_truncated_jpeg_is_corrupt():
    data = image_bytes("JPEG", size=(64, 64))
    assert reason(data[: len(data) // 2]) == "corrupt_image"


def test_png_with_damaged_pixel_data_is_corrupt():
    data = bytearray(image_bytes("PNG", size=(64, 64)))
    start = data.find(b"IDAT") + 8
    data[start : start + 64] = bytes(64)
    assert reason(bytes(data)) == "corrupt_image"


def test_truncated_png_is_corrupt():
    data = image_bytes("PNG", size=(64, 64))
    assert reason(data[: len(data) * 2 // 3]) == "corrupt_image"


def test_truncation_check_refuses_to_run_when_pillow_would_hide_it(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError):
        inspect_image(image_bytes(), **LIMITS)


@pytest.fixture
def no_decoding(monkeypatch):
    def refuse(*args: object) -> None:
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(images, "load_rgb", refuse)


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize(
    "size",
    [(30000, 30000), (10000, 10000), (8000, 6000)],
    ids=["pillow-bomb-error", "pillow-bomb-warning", "over-ours"],
)
def test_too_many_pixels_is_read_from_the_header(size):
    data = png_declaring(*size)
    assert len(data) < 200
    assert reason(data) == "too_many_pixels"


@pytest.mark.usefixtures("no_decoding")
def test_pixel_limit_is_configurable():
    assert reason(image_bytes(size=(100, 100)), max_pixels=100 * 99) == "too_many_pixels"


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize("size", [(7, 100), (100, 4)])
def test_too_small(size):
    assert reason(image_bytes("PNG", size=size)) == "too_small"


def test_minimum_side_is_inclusive():
    assert inspect_image(image_bytes("PNG", size=(8, 8)), **LIMITS).width == 8


# --- hidden files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "__MACOSX/cat/._0.jpg",
        "pets/__MACOSX/0.jpg",
        ".DS_Store",
        "cat/.DS_Store",
        "cat/._0.jpg",
        ".git/objects/ab",
        "cat/Thumbs.db",
        "cat/thumbs.db",
        "desktop.ini",
    ],
)
def test_hidden(name):
    assert is_hidden(name)


@pytest.mark.parametrize("name", ["cat/0.jpg", "my.cat/0.jpg", "cat/0.thumbs.db.jpg"])
def test_not_hidden(name):
    assert not is_hidden(name)
