"""Unit tests of the API-side building blocks (no server needed)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.architectures import ARCHITECTURES, preprocessing
from app.errors import InvalidInput
from app.ids import new_id
from app.schemas.jobs import JobCreate
from app.security import generate_key, hash_key
from app.services.models import read_safetensors_header
from app.storage import atomic_writer


def test_job_spec_defaults_and_unknown_fields() -> None:
    spec = JobCreate.model_validate({"dataset_id": "ds_1", "base_model": "resnet18"})
    assert spec.strategy == "linear_probe"
    assert spec.hyperparameters.epochs == 5 and spec.hyperparameters.image_size == 224
    assert spec.validation_split == 0.2
    with pytest.raises(ValidationError) as exc:
        JobCreate.model_validate({"dataset_id": "ds_1", "base_model": "resnet18", "epochs": 3})
    assert exc.value.errors()[0]["type"] == "extra_forbidden"
    with pytest.raises(ValidationError):
        JobCreate.model_validate(
            {"dataset_id": "d", "base_model": "resnet18", "hyperparameters": {"epochs": 0}}
        )


def test_ids_are_prefixed_unique_and_time_ordered() -> None:
    ids = [new_id("job") for _ in range(50)]
    assert all(i.startswith("job_") for i in ids)
    assert len(set(ids)) == 50
    first = new_id("ds")
    import time

    time.sleep(0.002)
    assert new_id("ds") > first


def test_keys_are_random_and_hashed() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and a.startswith("graft_") and len(a) > 40
    assert hash_key(a) == hash_key(a) != hash_key(b)


def test_registry_has_the_required_architectures() -> None:
    required = {
        "resnet18",
        "resnet50",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "convnext_tiny",
        "vgg16",
        "vit_b_16",
    }
    assert required <= set(ARCHITECTURES)
    prep = preprocessing(ARCHITECTURES["resnet18"], 64)
    assert prep["resize"] == [64, 64] and prep["mean"] == [0.485, 0.456, 0.406]


def _safetensors(header: dict, payload: bytes = b"\0" * 16) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def test_safetensors_header_is_checked_without_unpickling(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    good.write_bytes(_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}))
    assert "w" in read_safetensors_header(good)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(
        _safetensors({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}})
    )
    with pytest.raises(InvalidInput, match="outside"):
        read_safetensors_header(outside)
    pickle = tmp_path / "model.pt"
    import pickle as pk

    pickle.write_bytes(pk.dumps({"w": [1.0, 2.0]}))
    with pytest.raises(InvalidInput) as exc:
        read_safetensors_header(pickle)
    assert exc.value.code == "invalid_checkpoint" and "pickle" in exc.value.message


def test_atomic_writer_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_writer(target) as fh:
        fh.write(b"half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_writer(target) as fh:
        fh.write(b"whole")
    assert target.read_bytes() == b"whole"


def test_the_api_never_imports_torch() -> None:
    import subprocess

    code = (
        "import sys, app.main, app.cli, app.services.datasets, app.services.jobs;"
        "app.main.create_app();"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_worker_consumes_the_queues_of_every_device_count_up_to_its_own() -> None:
    from app.queue import devices_of, queue_for, worker_queues

    assert queue_for("gpu", 1) == "gpu" and queue_for("gpu", 4) == "gpu.x4"
    assert worker_queues(["gpu", "ingest"], 1, "ingest") == ["gpu", "ingest"]
    assert worker_queues(["gpu", "ingest"], 3, "ingest") == ["gpu", "gpu.x2", "gpu.x3", "ingest"]
    assert devices_of({"resources": {"devices": 2}}) == 2
    assert devices_of({"resources": None}) == devices_of({}) == 1


def test_the_cli_asks_for_devices_as_resources_devices() -> None:
    from click.testing import CliRunner

    from graft.cli import build_spec, main

    spec = build_spec(None, {"spec__devices": 2, "spec__epochs": 3})
    assert spec == {"resources": {"devices": 2}, "hyperparameters": {"epochs": 3}}
    shown = CliRunner().invoke(main, ["jobs", "create", "--help"])
    assert "--devices" in shown.output and "resources.devices" in shown.output
    assert "--resources" not in shown.output
