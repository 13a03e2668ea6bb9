"""Classify images with the ONNX model in this folder.

    python predict.py image1.jpg [image2.png ...] [--model model.onnx] [--top-k 5]

Prints one JSON object per image and line: {"filename", "predictions": [{"label",
"score"}, ...]} or {"filename", "error": {"code", "message"}}. Exits with 1 when an
image could not be read. Needs only onnxruntime, numpy and Pillow.

The decoding below repeats the service's (app/imaging.py) line for line, so this
script sees exactly the pixels the model was trained and evaluated on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageSequence

HERE = Path(__file__).resolve().parent
BATCH = 32


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


def normalize(images: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    """uint8 NHWC -> float32 in the model's layout, scaled and normalised per channel."""
    scaled = images.astype(np.float32) * np.float32(prep["scale"])
    x = (scaled - np.asarray(prep["mean"], dtype=np.float32)) / np.asarray(
        prep["std"], dtype=np.float32
    )
    if prep.get("channel_order", "NCHW") == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[list[dict[str, Any]]]:
    k = max(1, min(k, len(labels)))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [{"label": labels[int(i)], "score": float(row[int(i)])} for i in idx]
        for row, idx in zip(probabilities, order, strict=True)
    ]


def run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    model_input = session.get_inputs()[0]
    if model_input.type == "tensor(float16)":
        x = x.astype(np.float16)
    return np.asarray(session.run(None, {model_input.name: x})[0], dtype=np.float32)


def default_model() -> Path:
    manifest = HERE / "manifest.json"
    if manifest.exists():
        return HERE / json.loads(manifest.read_text())["default_model"]
    return HERE / "model.onnx"


def resolve_model(model: Path | None) -> Path:
    if model is None:
        return default_model()
    # "--model model-int8.onnx" should work from any directory, not only this one.
    if not model.exists() and (HERE / model).exists():
        return HERE / model
    return model


def classify(paths: list[str], model: Path, k: int) -> list[dict[str, Any]]:
    prep = json.loads((HERE / "preprocessing.json").read_text())
    labels = json.loads((HERE / "labels.json").read_text())
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    results: dict[int, dict[str, Any]] = {}
    decoded: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(paths):
        try:
            decoded.append((i, to_array(load_rgb(path), int(prep["image_size"]))))
        except Exception as exc:  # Pillow raises many exception types for bad files
            message = f"{path} could not be decoded as an image: {exc}"
            results[i] = {"filename": path, "error": {"code": "invalid_image", "message": message}}
    for start in range(0, len(decoded), BATCH):
        chunk = decoded[start : start + BATCH]
        logits = run(session, normalize(np.stack([a for _, a in chunk]), prep))
        for (i, _), preds in zip(chunk, top_k(softmax(logits), labels, k), strict=True):
            results[i] = {"filename": paths[i], "predictions": preds}
    return [results[i] for i in range(len(paths))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with this ONNX model.")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, WebP, ...)")
    parser.add_argument("--model", type=Path, default=None, help="ONNX file to run")
    parser.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    args = parser.parse_args(argv)
    results = classify(args.images, resolve_model(args.model), args.top_k)
    for result in results:
        print(json.dumps(result))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
