"""The API's table of architecture tensors is what torchvision builds, and a job from an
uploaded backbone gets its layers and a fresh head."""

from __future__ import annotations

import json

import pytest
import torch

from app.services.model_weights import SIGNATURES, check_tensors
from worker.training import registry
from worker.training.signatures import all_signatures


def test_the_committed_table_is_what_the_registry_builds() -> None:
    committed = json.loads(SIGNATURES.read_text("utf-8"))
    # Regenerate with `python -m worker.training.signatures` when this fails.
    assert committed == json.loads(json.dumps(all_signatures()))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_b_16"])
def test_real_state_dicts_pass_the_upload_check(name: str) -> None:
    size = 32 if name != "vit_b_16" else 64
    model = registry._construct(name, 5, size)
    header = {
        k: {"dtype": {torch.float32: "F32", torch.int64: "I64"}[v.dtype], "shape": list(v.shape)}
        for k, v in model.state_dict().items()
    }
    check_tensors(header, name, "model", 5)
    head = registry._spec(name).head + "."
    backbone = {k: v for k, v in header.items() if not k.startswith(head)}
    check_tensors(backbone, name, "backbone", None)


def test_a_backbone_keeps_its_layers_and_gets_a_fresh_head() -> None:
    torch.manual_seed(0)
    source = registry._construct("mobilenet_v2", 1000, 32)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    model = registry.build_from_backbone("mobilenet_v2", 3, state, 32)
    assert registry.head(model, "mobilenet_v2").out_features == 3  # type: ignore[operator]
    for k, v in model.state_dict().items():
        if not k.startswith("classifier."):
            assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="missing"):
        registry.build_from_backbone(
            "mobilenet_v2", 3, {k: v for k, v in state.items() if "features.18" not in k}, 32
        )
