"""The worker's model registry: names, heads, blocks and weights loading."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from app.architectures import ARCHITECTURES
from worker.training import registry

# Building these for real initialises 25-140M parameters; on the meta device only shapes
# are computed, which is what the structural checks need.
BIG = {"resnet50", "convnext_tiny", "vgg16", "vit_b_16", "mobilenet_v3_large", "efficientnet_b0"}


def build(name: str, num_classes: int = 7, size: int = 32) -> nn.Module:
    return registry.build_model(
        name, num_classes, weights="none", cache_dir=Path("unused"), image_size=size
    )


def test_registry_names_are_the_api_architectures() -> None:
    assert set(registry.NAMES) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_builds_with_new_head_and_declared_blocks(name: str) -> None:
    device = "meta" if name in BIG else "cpu"
    with torch.device(device):
        model = build(name)
        x = torch.zeros(2, 3, 32, 32)
        logits = model(x)
        feats = registry.feature_extractor(model, name)(x)
    head = registry.head(model, name)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert logits.shape == (2, 7) and feats.shape == (2, head.in_features)
    arch = ARCHITECTURES[name]
    blocks = registry.backbone_blocks(model, name)
    assert len(blocks) == arch.num_blocks
    assert registry.has_batchnorm(model) == arch.has_batchnorm
    # Blocks are real, disjoint parts of the model that hold weights, head excluded.
    owned = {id(p) for p in model.parameters()}
    ids = [{id(p) for p in b.parameters()} for b in blocks]
    assert all(s and s <= owned for s in ids)
    assert sum(map(len, ids)) == len(set().union(*ids))
    assert not {id(p) for p in head.parameters()} & set().union(*ids)


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "convnext_tiny"]
)
def test_feature_extractor_then_head_is_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = build(name).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        via_features = registry.head(model, name)(registry.feature_extractor(model, name)(x))
        torch.testing.assert_close(via_features, model(x))


def test_replace_head_and_build_from_state_round_trip() -> None:
    torch.manual_seed(0)
    model = build("resnet18", num_classes=5, size=16)
    rebuilt = registry.build_from_state("resnet18", 5, model.state_dict(), 16)
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in model.state_dict().items())

    old_conv = model.conv1.weight.clone()
    registry.replace_head(model, "resnet18", 3)
    assert registry.head(model, "resnet18").out_features == 3  # type: ignore[operator]
    assert torch.equal(model.conv1.weight, old_conv)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 3)


def test_vit_sizes() -> None:
    with torch.device("meta"):
        assert build("vit_b_16", size=48)(torch.zeros(1, 3, 48, 48)).shape == (1, 7)
    with pytest.raises(ValueError, match="multiple of 16"):
        build("vit_b_16", size=40)
    with pytest.raises(ValueError, match="vit_b_16 with imagenet weights needs image_size 224"):
        registry.build_model(
            "vit_b_16", 3, weights="imagenet", cache_dir=Path("unused"), image_size=64
        )


def test_rejects_unknown_names_and_too_small_images() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'"):
        build("resnet9")
    with pytest.raises(ValueError, match="vgg16 needs image_size >= 32"):
        build("vgg16", size=16)


def test_missing_weights_offline_names_arch_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(registry.WeightsUnavailable) as err:
        registry.build_model(
            "resnet50",
            3,
            weights="imagenet",
            cache_dir=tmp_path,
            image_size=224,
            allow_download=False,
        )
    message = str(err.value)
    assert "resnet50" in message and "downloads are disabled" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert list(tmp_path.iterdir()) == []


def test_download_without_network_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever this sandbox's network does (no DNS, a black hole), the attempt is bounded.
    monkeypatch.setattr(registry, "DOWNLOAD_TIMEOUT_SECONDS", 3.0)
    start = time.monotonic()
    with pytest.raises(registry.WeightsUnavailable, match="download failed"):
        registry.build_model(
            "mobilenet_v3_small", 3, weights="imagenet", cache_dir=tmp_path, image_size=64
        )
    assert time.monotonic() - start < 15
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_imagenet_weights_load_from_the_cache(tmp_path: Path) -> None:
    # Stand-in for torchvision's file (real one is 10 MB and needs the network): same
    # name, same 1000-class layout; the loader must read it and keep all but the head.
    torch.manual_seed(1)
    source = registry._construct("mobilenet_v3_small", 1000, 64)
    path = registry.weights_path("mobilenet_v3_small", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)

    model = registry.build_model(
        "mobilenet_v3_small",
        4,
        weights="imagenet",
        cache_dir=tmp_path,
        image_size=64,
        allow_download=False,
    )

    loaded, expected = model.state_dict(), source.state_dict()
    assert registry.head(model, "mobilenet_v3_small").out_features == 4  # type: ignore[operator]
    body = [k for k in expected if not k.startswith("classifier.3.")]
    assert all(torch.equal(loaded[k], expected[k]) for k in body)
