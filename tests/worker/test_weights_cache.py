"""GRAFT_MODEL_CACHE is laid out like $TORCH_HOME: weights in <cache>/hub/checkpoints/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.training import registry

ARCH = "resnet18"


def test_weights_path_is_torch_hubs_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Where torch.hub.load_state_dict_from_url keeps the file with TORCH_HOME=<cache>.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # no set_dir() override
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    assert registry.weights_path(ARCH, tmp_path) == hub_file
    assert hub_file == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


def test_imagenet_weights_load_from_hub_checkpoints(tmp_path: Path) -> None:
    # A stand-in for torchvision's file, same name and 1000-class layout. Its sha256 does
    # not match the name's hash prefix: torchvision checks that only when it downloads
    # (check_hash defaults to False), so a file already in place is read as it is.
    torch.manual_seed(3)
    source = registry._construct(ARCH, 1000, 64).state_dict()
    path = tmp_path / "hub" / "checkpoints" / registry.weights_path(ARCH, tmp_path).name
    path.parent.mkdir(parents=True)
    torch.save(source, path)

    model = registry.build_model(
        ARCH, 5, weights="imagenet", cache_dir=tmp_path, image_size=64, allow_download=False
    )

    loaded = model.state_dict()
    assert torch.equal(loaded["conv1.weight"], source["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_mean"], source["layer4.1.bn2.running_mean"])
    assert loaded["fc.weight"].shape == (5, 512)  # a fresh head for the job's classes
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == [
        Path("hub/checkpoints/resnet18-f37072fd.pth")
    ]


def test_missing_weights_name_the_hub_checkpoints_path(tmp_path: Path) -> None:
    # The file at the cache's top level (the old layout) is not where Graft looks.
    torch.save(registry._construct(ARCH, 1000, 64).state_dict(), tmp_path / "resnet18-f37072fd.pth")

    with pytest.raises(registry.WeightsUnavailable) as err:
        registry.build_model(
            ARCH, 5, weights="imagenet", cache_dir=tmp_path, image_size=64, allow_download=False
        )

    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "downloads are disabled" in message and "GRAFT_MODEL_CACHE" in message
    assert not (tmp_path / "hub").exists()
