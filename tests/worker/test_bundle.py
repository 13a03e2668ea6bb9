"""The downloadable bundle: contents, and predict.py against the API's predictor."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from app import imaging
from app.architectures import ARCHITECTURES, preprocessing
from app.services.inference import Predictor
from worker.export.bundle import build_bundle
from worker.export.evaluate import Normalization
from worker.export.onnx_export import export_onnx
from worker.export.quantize import quantize_int8

SIZE = 16
MODEL_ID = "mdl_test123"
CLASSES = ["ant", "bee", "cat", "dog", "eel"]
PREP = preprocessing(ARCHITECTURES["mobilenet_v3_small"], SIZE)
# What the clean virtualenv must not be able to import: proof that the bundle stands alone.
FORBIDDEN = ("torch", "app", "worker")


def tiny_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, len(CLASSES)),
    ).eval()  # fmt: skip


def write_images(folder: Path) -> list[Path]:
    """Images in the modes app.imaging treats specially, plus one broken file."""
    folder.mkdir()
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65535, (18, 18)).astype(np.uint16)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    images = {
        "photo.jpg": Image.fromarray(rgb),
        "plain.png": Image.fromarray(rgb[::-1]),
        "alpha.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "deep.png": Image.fromarray(gray16),
        "palette.gif": palette,
    }
    paths = []
    for name, img in images.items():
        img.save(folder / name)
        paths.append(folder / name)
    broken = folder / "broken.jpg"
    broken.write_bytes((folder / "photo.jpg").read_bytes()[:60])
    return [*paths, broken]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, Path, dict[str, Path]]:
    work = tmp_path_factory.mktemp("bundle")
    fp32 = work / "model.onnx"
    int8 = work / "model-int8.onnx"
    norm = Normalization.of(PREP["mean"], PREP["std"])
    export_onnx(tiny_model(), fp32, image_size=SIZE)
    calibration = np.random.default_rng(0).integers(0, 256, (32, SIZE, SIZE, 3), dtype=np.uint8)
    quantize_int8(fp32, int8, calibration, norm)
    files = {"onnx": fp32, "onnx-int8": int8}
    zip_path = build_bundle(
        work / "bundle.zip",
        onnx_files=files,
        recommended="onnx-int8",
        class_names=CLASSES,
        preprocessing=PREP,
        model_id=MODEL_ID,
    )
    unpacked = work / "unpacked"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(unpacked)
    return zip_path, unpacked / MODEL_ID, files


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("imgs") / "in")


def run_predict(python: str, folder: Path, images: list[Path], *args: str) -> tuple[int, list]:
    # cwd outside the repository and no PYTHONPATH: predict.py cannot reach Graft.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [python, str(folder / "predict.py"), *map(str, images), *args],
        capture_output=True,
        text=True,
        cwd=images[0].parent,
        env=env,
        timeout=120,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def assert_same_as_predictor(got: list[dict], model: Path, images: list[Path], k: int) -> None:
    want = Predictor().predict(
        model, PREP, CLASSES, [(str(p), p.read_bytes()) for p in images], top_k=k
    )
    assert len(got) == len(want) == len(images)
    for g, w in zip(got, want, strict=True):
        assert g["filename"] == w["filename"]
        if "error" in w:
            assert g["error"]["code"] == w["error"]["code"] == "invalid_image"
            continue
        assert [p["label"] for p in g["predictions"]] == [p["label"] for p in w["predictions"]]
        np.testing.assert_allclose(
            [p["score"] for p in g["predictions"]],
            [p["score"] for p in w["predictions"]],
            atol=1e-5,
        )


def test_the_bundle_holds_models_labels_preprocessing_script_and_readme(bundle):
    zip_path, folder, files = bundle
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
    expected = ["README.md", "labels.json", "manifest.json", "model-int8.onnx", "model.onnx"]
    assert names == sorted(
        f"{MODEL_ID}/{n}" for n in [*expected, "predict.py", "preprocessing.json"]
    )

    assert json.loads((folder / "labels.json").read_text()) == CLASSES
    prep = json.loads((folder / "preprocessing.json").read_text())
    assert {k: prep[k] for k in PREP} == json.loads(json.dumps(PREP))
    assert prep["input_name"] == "input" and prep["input_shape"] == ["batch", 3, SIZE, SIZE]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["default_model"] == "model-int8.onnx"
    for entry in manifest["files"]:
        data = (folder / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() == _sha(files[entry["format"]])
    readme = (folder / "README.md").read_text()
    assert MODEL_ID in readme and "model-int8.onnx" in readme and "$" not in readme


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_inputs_give_a_byte_identical_bundle(bundle, tmp_path):
    zip_path, _, files = bundle
    again = build_bundle(
        tmp_path / "again.zip",
        onnx_files=files,
        recommended="onnx-int8",
        class_names=CLASSES,
        preprocessing=PREP,
        model_id=MODEL_ID,
    )
    assert _sha(again) == _sha(zip_path)


def test_predict_script_matches_the_api_predictor(bundle, images):
    _, folder, _ = bundle

    code, default = run_predict(sys.executable, folder, images, "--top-k", "3")
    assert code == 1  # the broken image
    assert_same_as_predictor(default, folder / "model-int8.onnx", images, 3)
    assert default[-1]["error"]["code"] == "invalid_image"

    code, fp32 = run_predict(sys.executable, folder, images[:2], "--model", "model.onnx")
    assert code == 0
    assert_same_as_predictor(fp32, folder / "model.onnx", images[:2], 5)


def load_template(folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bundle_predict", folder / "predict.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predict_script_decodes_exactly_like_app_imaging(bundle, images):
    _, folder, _ = bundle
    script = load_template(folder)
    for path in images[:-1]:
        want = imaging.to_array(imaging.load_rgb(str(path)), SIZE)
        assert np.array_equal(script.to_array(script.load_rgb(str(path)), SIZE), want), path.name


def _clean_venv(root: Path) -> str:
    """A virtualenv with only onnxruntime, numpy and Pillow; skips if pip has no index."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    python = str(root / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run(
        [python, "-m", "pip", "install", "-q", "onnxruntime", "numpy", "pillow"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if pip.returncode != 0:
        offline = ("No matching distribution", "Could not find a version", "NewConnectionError")
        if any(s in pip.stderr for s in offline):
            pytest.skip(
                "no network and no local package index: pip could not install onnxruntime, "
                f"numpy and Pillow into a clean virtualenv ({pip.stderr.strip()[-200:]})"
            )
        pytest.fail(f"pip install into the clean virtualenv failed:\n{pip.stderr}")
    return python


def test_the_bundle_runs_in_a_clean_virtualenv(bundle, images, tmp_path):
    _, folder, _ = bundle
    python = _clean_venv(tmp_path / "venv")
    for module in FORBIDDEN:
        probe = subprocess.run(
            [python, "-c", f"import {module}"], cwd=tmp_path, capture_output=True
        )
        assert probe.returncode != 0, f"{module} is importable in the clean virtualenv"

    code, got = run_predict(python, folder, images, "--top-k", "2")

    assert code == 1
    assert_same_as_predictor(got, folder / "model-int8.onnx", images, 2)
