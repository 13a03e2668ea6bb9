"""Exported variants through the whole service: a job asks for ONNX, int8 and fp16; the
test downloads each file and recomputes what the model object reports, then checks
that /predict answers exactly what the downloaded bundle's predict.py answers, and that
an evaluation of the files on a held-out set matches scikit-learn's scores of them."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from app.imaging import load_rgb, to_array
from tests.conftest import Api, digits_images, wait_for
from tests.e2e.helpers import train_job, upload, wait_done

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

SIZE = 32


@pytest.fixture(scope="module")
def exported(pg_stack: dict[str, str], make_api_module: Any) -> dict[str, Any]:
    api: Api = make_api_module()
    key = api.new_team()
    ds = upload(api, key, digits_images((0, 1, 2), per_class=30, size=SIZE))
    job = train_job(
        api,
        key,
        ds["id"],
        hyperparameters={"epochs": 3, "image_size": SIZE, "batch_size": 16, "augmentation": "none"},
        export=["onnx"],
        quantization=["int8", "fp16"],
        calibration_images=32,
    )
    job = wait_done(api, key, job["id"], timeout=400)
    assert job["status"] == "succeeded", job
    model = api.as_team(key, "GET", f"/v1/models/{job['result']['model_id']}").json()
    return {"api": api, "key": key, "job": job, "model": model, "dataset": ds}


def download(ctx: dict[str, Any], fmt: str) -> bytes:
    r = ctx["api"].as_team(ctx["key"], "GET", f"/v1/models/{ctx['model']['id']}/artifacts/{fmt}")
    assert r.status_code == 200, r.text
    return bytes(r.content)


def val_images(ctx: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    from app.config import get_settings

    meta = json.loads(download(ctx, "metadata"))
    root = get_settings().resolved_data_dir / "datasets" / ctx["dataset"]["id"]
    paths = [root / p for p in meta["validation_set"]["paths"]]
    x = np.stack([to_array(load_rgb(str(p)), SIZE) for p in paths])
    return x, np.asarray(meta["validation_set"]["labels"]), paths


def test_every_variant_is_produced_with_its_report(exported: dict[str, Any]) -> None:
    model = exported["model"]
    artifacts = {a["format"]: a for a in model["artifacts"]}
    assert {"safetensors", "metadata", "onnx", "onnx-int8", "onnx-fp16", "bundle"} <= set(artifacts)
    for fmt in ("onnx", "onnx-int8", "onnx-fp16"):
        raw = download(exported, fmt)
        assert hashlib.sha256(raw).hexdigest() == artifacts[fmt]["sha256"]
        assert len(raw) == artifacts[fmt]["size_bytes"]
        report = artifacts[fmt]["report"]
        assert {"accuracy", "top1_agreement", "max_abs_logit_diff", "latency_ms", "threads"} <= set(
            report
        )
        assert report["latency_ms"]["batch_1"] > 0 and report["latency_ms"]["batch_32"] > 0
        assert isinstance(report["within_budget"], bool)
    assert artifacts["onnx-int8"]["size_bytes"] < artifacts["onnx"]["size_bytes"]
    assert model["recommended_artifact"] in {"onnx", "onnx-int8", "onnx-fp16"}
    fitting = [
        f for f in ("onnx", "onnx-int8", "onnx-fp16") if artifacts[f]["report"]["within_budget"]
    ]
    if fitting:
        smallest = min(fitting, key=lambda f: artifacts[f]["size_bytes"])
        assert model["recommended_artifact"] == smallest


def test_reported_accuracies_are_recomputed_from_the_files(exported: dict[str, Any]) -> None:
    x, labels, _ = val_images(exported)
    prep = exported["model"]["preprocessing"]
    batch = (x.astype(np.float32) / 255.0 - np.asarray(prep["mean"], np.float32)) / np.asarray(
        prep["std"], np.float32
    )
    batch = batch.transpose(0, 3, 1, 2).astype(np.float32)
    for artifact in exported["model"]["artifacts"]:
        if not artifact["format"].startswith("onnx"):
            continue
        session = ort.InferenceSession(download(exported, artifact["format"]))
        inp = session.get_inputs()[0]
        feed = batch.astype(np.float16) if inp.type == "tensor(float16)" else batch
        logits = session.run(None, {inp.name: feed})[0].astype(np.float32)
        accuracy = float((logits.argmax(1) == labels).mean())
        # The worker ran the file in its own batches and threads: exact, but for an image
        # whose two largest logits are within rounding (fp16 rounds to ~1e-2 here; usually
        # there is none), which may fall either way.
        top2 = np.sort(logits, axis=1)[:, -2:]
        near_ties = float(np.mean(top2[:, 1] - top2[:, 0] <= 0.02))
        assert accuracy == pytest.approx(artifact["report"]["accuracy"], abs=near_ties + 1e-9), (
            artifact["format"]
        )


def test_predict_matches_the_bundle(exported: dict[str, Any], tmp_path: Path) -> None:
    _, _, paths = val_images(exported)
    sample = paths[:5]
    api, key, model = exported["api"], exported["key"], exported["model"]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in sample]
    r = api.as_team(
        key, "POST", f"/v1/models/{model['id']}/predict", files=files, data={"top_k": "2"}
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["artifact"] == model["recommended_artifact"]
    with zipfile.ZipFile(io.BytesIO(download(exported, "bundle"))) as zf:
        zf.extractall(tmp_path)
    bundle = next(tmp_path.glob("*/predict.py")).parent
    out = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), *map(str, sample), "--top-k", "2"],
        capture_output=True,
        text=True,
        check=True,
        cwd=bundle,
    )
    from_bundle = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(from_bundle) == len(answer["results"]) == 5
    for api_result, bundle_result in zip(answer["results"], from_bundle, strict=True):
        api_labels = [p["label"] for p in api_result["predictions"]]
        bundle_labels = [p["label"] for p in bundle_result["predictions"]]
        assert api_labels == bundle_labels
        for a, b in zip(api_result["predictions"], bundle_result["predictions"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_predict_errors(exported: dict[str, Any]) -> None:
    api, key, model = exported["api"], exported["key"], exported["model"]
    good = io.BytesIO()
    Image.new("RGB", (20, 20), (255, 255, 255)).save(good, format="PNG")
    files = [
        ("files", ("broken.png", b"not an image", "image/png")),
        ("files", ("ok.png", good.getvalue(), "image/png")),
    ]
    r = api.as_team(
        key,
        "POST",
        f"/v1/models/{model['id']}/predict",
        files=files,
        data={"artifact": "onnx-int8"},
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["error"]["code"] == "invalid_image" and first["predictions"] is None
    assert len(second["predictions"]) == 3  # top_k 5, capped at the 3 classes
    wrong = api.as_team(
        key, "POST", f"/v1/models/{model['id']}/predict", files=files, data={"artifact": "tflite"}
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["param"] == "artifact"
    # A model without ONNX variants: a clear 409.
    plain = train_job(
        api, key, exported["dataset"]["id"], hyperparameters={"epochs": 1, "image_size": SIZE}
    )
    plain = wait_done(api, key, plain["id"])
    r = api.as_team(key, "POST", f"/v1/models/{plain['result']['model_id']}/predict", files=files)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_onnx_artifact"


def test_an_evaluation_matches_scikit_learn_on_the_downloaded_files(
    exported: dict[str, Any],
) -> None:
    """A held-out labelled set of the same classes (other digits), scored by a worker
    from the PyTorch weights and from the int8 graph; each confusion matrix and score
    equals scikit-learn's from the downloaded file run here."""
    from safetensors.torch import load
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    from app.config import get_settings
    from app.services.inference import normalize_batch
    from worker.training import registry

    api, key, model = exported["api"], exported["key"], exported["model"]
    test_set = upload(api, key, digits_images((0, 1, 2), per_class=20, size=SIZE, offset=60))
    manifest = json.loads(
        (
            get_settings().resolved_data_dir / "datasets" / test_set["id"] / "manifest.json"
        ).read_text()
    )
    root = get_settings().resolved_data_dir / "datasets" / test_set["id"]
    x = np.stack([to_array(load_rgb(str(root / it["path"])), SIZE) for it in manifest["items"]])
    order = {name: i for i, name in enumerate(model["classes"])}
    y = np.asarray([order[manifest["classes"][it["label"]]] for it in manifest["items"]])
    batch = normalize_batch(x, model["preprocessing"]["mean"], model["preprocessing"]["std"])

    net = registry.build_from_state("resnet18", 3, load(download(exported, "safetensors")), SIZE)
    with torch.inference_mode():
        here = {"safetensors": net.eval()(torch.from_numpy(batch)).numpy()}
    session = ort.InferenceSession(download(exported, "onnx-int8"))
    here["onnx-int8"] = session.run(None, {session.get_inputs()[0].name: batch})[0]

    for artifact, logits in here.items():
        r = api.as_team(
            key, "POST", f"/v1/models/{model['id']}/evaluations",
            json={"dataset_id": test_set["id"], "artifact": artifact},
        )  # fmt: skip
        assert r.status_code == 202, r.text

        def finished(url: str = r.headers["location"]) -> dict[str, Any] | None:
            ev = api.as_team(key, "GET", url).json()
            return ev if ev["status"] in ("succeeded", "failed", "cancelled") else None

        ev = wait_for(finished, 120, f"the {artifact} evaluation")
        assert ev["status"] == "succeeded", ev
        result = ev["result"]
        assert result["artifact"] == artifact and result["num_samples"] == len(y) == 60
        assert ev["progress"]["images_done"] == ev["progress"]["images_total"] == 60
        pred = logits.argmax(1)
        # Exact, but for an image whose two largest logits tie within rounding (usually
        # none): the worker ran the same file in its own batches and threads.
        top2 = np.sort(logits, axis=1)[:, -2:]
        near_ties = int(np.sum(top2[:, 1] - top2[:, 0] <= 1e-4))
        expected = confusion_matrix(y, pred, labels=[0, 1, 2])
        got = np.asarray(result["confusion_matrix"]["matrix"])
        assert result["confusion_matrix"]["labels"] == model["classes"]
        assert np.abs(got - expected).sum() <= 2 * near_ties, (artifact, got, expected)
        if near_ties == 0:
            assert result["accuracy"] == pytest.approx(accuracy_score(y, pred))
            assert result["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert result["misclassified_total"] == int(got.sum() - np.trace(got))
