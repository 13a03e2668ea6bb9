"""The API-side predictor, on a hand-built ONNX model (no torch needed)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from app.architectures import ARCHITECTURES, preprocessing
from app.imaging import load_rgb, to_array
from app.services.inference import Predictor, normalize_batch

SIZE = 16
CLASSES = ["red", "green", "blue"]
PREP = preprocessing(ARCHITECTURES["resnet18"], SIZE)
# Logits are a linear map of the per-channel mean of the normalised input.
WEIGHTS = np.array([[2.0, -1.0, -1.0], [-1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]], np.float32)
BIAS = np.array([0.1, 0.0, -0.1], np.float32)


def write_model(path: Path, weights: np.ndarray = WEIGHTS) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1),
        ],
        "colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(BIAS, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def expected_scores(data: bytes) -> np.ndarray:
    """The model's softmax computed by hand from app.imaging's pixels."""
    x = normalize_batch(to_array(load_rgb(io.BytesIO(data)), SIZE)[None], PREP["mean"], PREP["std"])
    logits = x.mean(axis=(2, 3)).astype(np.float64) @ WEIGHTS.T.astype(np.float64) + BIAS
    e = np.exp(logits - logits.max())
    return (e / e.sum())[0]


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model.onnx")


@pytest.fixture
def images() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    noisy_green = rng.integers(0, 120, (20, 30, 3), dtype=np.uint8)
    noisy_green[..., 1] = 230
    rgba = Image.new("RGBA", (12, 12), (10, 20, 240, 200))
    return [
        ("red.png", encode(Image.new("RGB", (24, 24), (250, 10, 10)))),
        ("green.jpg", encode(Image.fromarray(noisy_green), "JPEG")),
        ("blue-alpha.png", encode(rgba)),
    ]


def test_predictions_follow_the_shared_preprocessing(model_path, images):
    results = Predictor().predict(model_path, PREP, CLASSES, images, top_k=3)

    assert [r["filename"] for r in results] == [name for name, _ in images]
    assert [r["predictions"][0]["label"] for r in results] == ["red", "green", "blue"]
    for (_, data), result in zip(images, results, strict=True):
        want = expected_scores(data)
        got = {p["label"]: p["score"] for p in result["predictions"]}
        np.testing.assert_allclose([got[c] for c in CLASSES], want, atol=1e-5)


def test_a_bad_image_gets_its_own_error_and_the_others_are_answered(model_path, images):
    good = images[0]
    truncated = ("cut.png", good[1][: len(good[1]) // 2])
    batch = [good, ("notes.txt", b"this is not an image"), truncated, images[2]]

    results = Predictor().predict(model_path, PREP, CLASSES, batch, top_k=2)

    assert [r["filename"] for r in results] == ["red.png", "notes.txt", "cut.png", "blue-alpha.png"]
    for bad in results[1:3]:
        assert "predictions" not in bad
        assert bad["error"]["code"] == "invalid_image"
        assert bad["filename"] in bad["error"]["message"]
    assert results[0]["predictions"][0]["label"] == "red"
    assert results[3]["predictions"][0]["label"] == "blue"


def test_top_k_is_capped_at_the_number_of_classes_and_sorted(model_path, images):
    predictor = Predictor()
    many = predictor.predict(model_path, PREP, CLASSES, images[:1], top_k=50)[0]["predictions"]
    one = predictor.predict(model_path, PREP, CLASSES, images[:1], top_k=1)[0]["predictions"]

    assert len(many) == len(CLASSES)
    scores = [p["score"] for p in many]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-9)
    assert one == many[:1]


def test_sessions_are_cached_per_file_version_and_bounded(tmp_path, images):
    paths = [write_model(tmp_path / f"m{i}.onnx") for i in range(3)]
    predictor = Predictor(max_sessions=2)

    first = predictor.session(paths[0])
    predictor.predict(paths[0], PREP, CLASSES, images, top_k=1)
    assert predictor.session(paths[0]) is first
    assert (predictor.hits, predictor.misses) == (2, 1)

    predictor.session(paths[1])
    predictor.session(paths[2])  # evicts paths[0], the least recently used
    assert len(predictor) == 2
    assert predictor.session(paths[0]) is not first
    assert predictor.misses == 4

    # A replaced file is reloaded, never served from the old session. Same size, so
    # the mtime (bumped in case the clock is coarse) is what tells the versions apart.
    stat = paths[0].stat()
    write_model(paths[0], weights=np.roll(WEIGHTS, 1, axis=0))
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    top = predictor.predict(paths[0], PREP, CLASSES, images[:1], top_k=1)[0]["predictions"]
    assert top[0]["label"] == "green"  # rows rolled: the red detector now scores "green"
    assert len(predictor) == 2


def test_the_inference_module_does_not_import_torch():
    code = "import sys, app.services.inference; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
