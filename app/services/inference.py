"""Predictions from exported ONNX models, for the API's predict endpoint.

Torch-free on purpose (the API never imports torch): ONNX Runtime runs the model, and
the pixels go through app.imaging exactly as in training. The worker's export
evaluation reuses `normalize_batch`, so the accuracy in a model's report is measured on
the same input the API feeds.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort

from app.imaging import to_array
from app.services.images import ImageRejected, check_header, decode_rgb

DEFAULT_SCALE = 1.0 / 255.0


def normalize_batch(
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float = DEFAULT_SCALE,
) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW, scaled and normalised per channel."""
    scaled: np.ndarray = images.astype(np.float32) * np.float32(scale)
    x: np.ndarray = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(
        std, dtype=np.float32
    )
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, so scores agree across float32 and float16 models."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return cast(np.ndarray, e / e.sum(axis=1, keepdims=True))


def top_k_predictions(
    probabilities: np.ndarray, class_names: Sequence[str], top_k: int
) -> list[list[dict[str, Any]]]:
    """Per row, the top_k (capped at the number of classes) labels and scores, best first."""
    k = max(1, min(top_k, len(class_names)))
    # A stable sort on the negated scores keeps ties in class order, as predict.py does.
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [{"label": class_names[int(i)], "score": float(row[int(i)])} for i in idx]
        for row, idx in zip(probabilities, order, strict=True)
    ]


@dataclass(frozen=True)
class Preprocessing:
    """The fields of a model's preprocessing.json / metadata that inference needs."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = DEFAULT_SCALE
    input_name: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        size = d.get("image_size")
        if size is None:
            size = d["resize"][0]
        return cls(
            image_size=int(size),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            scale=float(d.get("scale", DEFAULT_SCALE)),
            input_name=d.get("input_name"),
        )


@dataclass(frozen=True)
class ImageLimits:
    """What one image sent to predict may be; None: no limit of that kind."""

    max_bytes: int | None = None
    max_pixels: int | None = None


# The form field the images come in, named in every per-image message.
FILES_FIELD = "files"


def file_error(filename: str, code: str, message: str) -> dict[str, Any]:
    """One image's result when it could not be classified: the error shape, per file."""
    return {"filename": filename, "error": {"code": code, "message": message}}


def load_image(data: bytes, limits: ImageLimits, size: int) -> np.ndarray:
    """uint8 HWC RGB of size x size; the byte and pixel limits are checked, the latter
    from the header, before any pixel is decoded. Raises ImageRejected."""
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise ImageRejected(
            "image_too_large",
            f"larger than the limit of {limits.max_bytes} bytes (GRAFT_MAX_PREDICT_IMAGE_BYTES)",
        )
    check_header(data, max_pixels=limits.max_pixels)
    return to_array(decode_rgb(data), size)


def rejected_image(filename: str, exc: ImageRejected) -> dict[str, Any]:
    """`files`: photo.png: not an image Graft can read (JPEG, PNG, WebP, BMP, GIF)."""
    code = exc.reason if exc.reason in ("image_too_large", "too_many_pixels") else "invalid_image"
    return file_error(filename, code, f"`{FILES_FIELD}`: {filename}: {exc.detail}.")


class Predictor:
    """Runs ONNX models with a bounded LRU cache of InferenceSessions.

    Sessions are keyed by path, modification time and size, so a replaced file is
    reloaded rather than served from a stale session. Thread-safe: FastAPI runs sync
    endpoints in a thread pool.
    """

    def __init__(self, max_sessions: int = 4, intra_op_threads: int | None = None) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.intra_op_threads = intra_op_threads
        self._sessions: OrderedDict[tuple[str, int, int], ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def session(self, onnx_path: Path) -> ort.InferenceSession:
        resolved = Path(onnx_path).resolve()
        st = os.stat(resolved)
        key = (str(resolved), st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._sessions.get(key)
            if cached is not None:
                self._sessions.move_to_end(key)
                self.hits += 1
                return cached
            self.misses += 1
            # An older version of the same file can never be asked for again.
            for stale in [k for k in self._sessions if k[0] == key[0]]:
                del self._sessions[stale]
            # Loading under the lock means two requests for a cold model load it once.
            sess = self._load(resolved)
            self._sessions[key] = sess
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return sess

    def _load(self, path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def predict(
        self,
        onnx_path: Path,
        preprocessing: Mapping[str, Any],
        class_names: list[str],
        images: list[tuple[str, bytes]],
        top_k: int,
        limits: ImageLimits | None = None,
    ) -> list[dict[str, Any]]:
        """One result per image, in order; an image over a limit or that cannot be
        decoded gets its own error (invalid_image, image_too_large, too_many_pixels),
        not a 4xx, and the others are answered."""
        prep = Preprocessing.from_dict(preprocessing)
        results: list[dict[str, Any] | None] = [None] * len(images)
        arrays: list[np.ndarray] = []
        positions: list[int] = []
        for i, (filename, data) in enumerate(images):
            try:
                arrays.append(load_image(data, limits or ImageLimits(), prep.image_size))
            except ImageRejected as exc:
                results[i] = rejected_image(filename, exc)
                continue
            positions.append(i)
        if arrays:
            logits = self.logits(onnx_path, np.stack(arrays), prep)
            ranked = top_k_predictions(softmax(logits), class_names, top_k)
            for pos, predictions in zip(positions, ranked, strict=True):
                results[pos] = {"filename": images[pos][0], "predictions": predictions}
        return [r for r in results if r is not None]

    def logits(self, onnx_path: Path, images: np.ndarray, prep: Preprocessing) -> np.ndarray:
        """Raw model outputs for uint8 NHWC images of the model's size."""
        sess = self.session(onnx_path)
        model_input = sess.get_inputs()[0]
        x = normalize_batch(images, prep.mean, prep.std, prep.scale)
        if model_input.type == "tensor(float16)":
            x = x.astype(np.float16)
        outputs = sess.run(None, {prep.input_name or model_input.name: x})
        return np.asarray(outputs[0], dtype=np.float32)
