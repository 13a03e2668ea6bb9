"""torchvision builders for the architectures named in app/architectures.py.

Each entry knows where the classifier head sits, how the backbone splits into ordered
blocks (for `partial` with `unfreeze_last`), and which ImageNet weights Graft uses.
Weights are read from Graft's own cache directory (GRAFT_MODEL_CACHE, laid out like
$TORCH_HOME), never from torch.hub's global one, so an offline worker only ever loads
files an operator placed there.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import nn

from app.architectures import ARCHITECTURES
from worker.errors import WeightsUnavailable

Blocks = Callable[[nn.Module], list[nn.Module]]

# A download that cannot connect or stalls must fail, not hang a worker slot.
DOWNLOAD_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class _Spec:
    builder: Callable[..., nn.Module]
    weights: tvm.WeightsEnum
    # Dotted path of the final nn.Linear that a job replaces.
    head: str
    blocks: Blocks
    # Modules after the last block and before the head: they train with the last block.
    tail: Blocks
    # Smallest input the network accepts (each downsampling must leave >= 1 pixel).
    min_image_size: int
    # Pretrained position embeddings fix the input grid (ViT): no other size loads.
    pretrained_size_fixed: bool = False


def _children(*names: str) -> Blocks:
    return lambda m: [m.get_submodule(n) for n in names]


def _seq(m: nn.Module, path: str) -> nn.Sequential | nn.ModuleList:
    sub = m.get_submodule(path)
    assert isinstance(sub, nn.Sequential | nn.ModuleList), path
    return sub


def _features_from(start: int) -> Blocks:
    return lambda m: list(_seq(m, "features"))[start:]


def _classifier_but_head(m: nn.Module) -> list[nn.Module]:
    return list(_seq(m, "classifier"))[:-1]


def _none(m: nn.Module) -> list[nn.Module]:
    return []


def _convnext_stages(m: nn.Module) -> list[nn.Module]:
    # features = [stem, stage1, down, stage2, down, stage3, down, stage4]: each later
    # stage owns the downsampling layer in front of it.
    f = _seq(m, "features")
    return [f[1], f[2:4], f[4:6], f[6:8]]


def _vgg_stages(m: nn.Module) -> list[nn.Module]:
    # A stage ends at each max-pool; Sequential slices share the original layers.
    f = _seq(m, "features")
    ends = [i + 1 for i, layer in enumerate(f) if isinstance(layer, nn.MaxPool2d)]
    return [f[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _vit_blocks(m: nn.Module) -> list[nn.Module]:
    return list(_seq(m, "encoder.layers"))


_RESNET_BLOCKS = _children("layer1", "layer2", "layer3", "layer4")

_SPECS: dict[str, _Spec] = {
    "resnet18": _Spec(
        tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, "fc", _RESNET_BLOCKS, _none, 16
    ),
    "resnet50": _Spec(
        tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, "fc", _RESNET_BLOCKS, _none, 16
    ),
    "mobilenet_v2": _Spec(
        tvm.mobilenet_v2,
        tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
        "classifier.1",
        _features_from(1),
        _classifier_but_head,
        16,
    ),
    "mobilenet_v3_small": _Spec(
        tvm.mobilenet_v3_small,
        tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
        "classifier.3",
        _features_from(1),
        _classifier_but_head,
        16,
    ),
    "mobilenet_v3_large": _Spec(
        tvm.mobilenet_v3_large,
        tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V2,
        "classifier.3",
        _features_from(1),
        _classifier_but_head,
        16,
    ),
    "efficientnet_b0": _Spec(
        tvm.efficientnet_b0,
        tvm.EfficientNet_B0_Weights.IMAGENET1K_V1,
        "classifier.1",
        _features_from(1),
        _classifier_but_head,
        16,
    ),
    "convnext_tiny": _Spec(
        tvm.convnext_tiny,
        tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1,
        "classifier.2",
        _convnext_stages,
        _classifier_but_head,
        32,
    ),
    "vgg16": _Spec(
        tvm.vgg16,
        tvm.VGG16_Weights.IMAGENET1K_V1,
        "classifier.6",
        _vgg_stages,
        _classifier_but_head,
        32,
    ),
    "vit_b_16": _Spec(
        tvm.vit_b_16,
        tvm.ViT_B_16_Weights.IMAGENET1K_V1,
        "heads.head",
        _vit_blocks,
        _children("encoder.ln"),
        16,
        pretrained_size_fixed=True,
    ),
}

NAMES: tuple[str, ...] = tuple(_SPECS)


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(_SPECS))}"
        ) from None


def weights_path(name: str, cache_dir: Path) -> Path:
    """Where the ImageNet weights of `name` must sit in Graft's model cache.

    The cache is laid out like $TORCH_HOME: torch.hub keeps torchvision's weights in
    `$TORCH_HOME/hub/checkpoints/<file>`, so GRAFT_MODEL_CACHE may point at an existing
    torch cache (e.g. ~/.cache/torch).
    """
    filename = os.path.basename(urlparse(_spec(name).weights.url).path)
    return Path(cache_dir) / "hub" / "checkpoints" / filename


def build_model(
    name: str,
    num_classes: int,
    *,
    weights: Literal["imagenet", "none"],
    cache_dir: Path,
    image_size: int,
    allow_download: bool = True,
) -> nn.Module:
    """A torchvision model with a fresh `num_classes` head, optionally ImageNet-initialised."""
    spec = _spec(name)
    _check_image_size(name, image_size, pretrained=weights == "imagenet")
    if weights == "none":
        model = _construct(name, num_classes, image_size)
        _check_head(model, name, num_classes)
        return model
    if weights != "imagenet":
        raise ValueError(f"weights must be 'imagenet' or 'none', not {weights!r}")
    state = _load_imagenet_state(name, Path(cache_dir), allow_download)
    model = _construct(name, len(spec.weights.meta["categories"]), image_size)
    model.load_state_dict(state)
    return replace_head(model, name, num_classes)


def build_from_state(
    name: str, num_classes: int, state_dict: dict[str, Any], image_size: int
) -> nn.Module:
    """Rebuild a model that Graft saved earlier (same architecture, head and size)."""
    _check_image_size(name, image_size, pretrained=False)
    model = _construct(name, num_classes, image_size)
    model.load_state_dict(state_dict)
    return model


def build_from_backbone(
    name: str, num_classes: int, state_dict: dict[str, Any], image_size: int
) -> nn.Module:
    """A model whose every layer but the head comes from `state_dict` (backbone-only
    weights, checked at upload); the head is fresh, for `num_classes`. BatchNorm's
    batch counters may be absent (torch then starts them at 0)."""
    _check_image_size(name, image_size, pretrained=False)
    model = _construct(name, num_classes, image_size)
    result = model.load_state_dict(state_dict, strict=False)
    head = _spec(name).head + "."
    missing = [
        k for k in result.missing_keys
        if not k.startswith(head) and not k.endswith(".num_batches_tracked")
    ]  # fmt: skip
    if missing or result.unexpected_keys:
        raise ValueError(
            f"backbone weights do not fit {name}: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return model


def replace_head(model: nn.Module, name: str, num_classes: int) -> nn.Module:
    """Swap the final Linear for a freshly initialised one with `num_classes` outputs."""
    old = head(model, name)
    assert isinstance(old, nn.Linear)
    new = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
    parent_path, _, attr = _spec(name).head.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, new)
    return model


def head(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(_spec(name).head)


def backbone_blocks(model: nn.Module, name: str) -> list[nn.Module]:
    """Ordered backbone blocks, input side first; `partial` unfreezes the last N."""
    return _spec(name).blocks(model)


def tail_modules(model: nn.Module, name: str) -> list[nn.Module]:
    """Layers between the last backbone block and the head (e.g. a pre-logits Linear)."""
    return _spec(name).tail(model)


def feature_extractor(model: nn.Module, name: str) -> nn.Module:
    """The model up to the input of its head; shares the model's layers (no copy)."""
    if name in ("resnet18", "resnet50"):
        return nn.Sequential(
            *(model.get_submodule(n) for n in ("conv1", "bn1", "relu", "maxpool")),
            *backbone_blocks(model, name),
            model.get_submodule("avgpool"),
            nn.Flatten(1),
        )
    if name == "vit_b_16":
        return _ViTFeatures(model)
    tail = _classifier_but_head(model)
    # ConvNeXt's tail begins with a LayerNorm2d that wants the pooled 4-D map.
    flatten = [] if name == "convnext_tiny" else [nn.Flatten(1)]
    # MobileNetV2 pools in its forward(), with no module of its own for it.
    pool = model.get_submodule("avgpool") if hasattr(model, "avgpool") else nn.AdaptiveAvgPool2d(1)
    return nn.Sequential(model.get_submodule("features"), pool, *flatten, *tail)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _ViTFeatures(nn.Module):
    """torchvision's VisionTransformer.forward without the head: the class token."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit: Any = self.vit
        x = vit._process_input(x)
        x = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return vit.encoder(x)[:, 0]


def _construct(name: str, num_classes: int, image_size: int) -> nn.Module:
    extra = {"image_size": image_size} if name == "vit_b_16" else {}
    return _spec(name).builder(weights=None, num_classes=num_classes, **extra)


def _check_head(model: nn.Module, name: str, num_classes: int) -> None:
    h = head(model, name)
    assert isinstance(h, nn.Linear) and h.out_features == num_classes, h


def _check_image_size(name: str, image_size: int, *, pretrained: bool) -> None:
    spec, arch = _spec(name), ARCHITECTURES[name]
    if pretrained and spec.pretrained_size_fixed and image_size != arch.default_image_size:
        raise ValueError(
            f"{name} with imagenet weights needs image_size {arch.default_image_size}, "
            f"got {image_size}"
        )
    if image_size % arch.size_multiple:
        raise ValueError(
            f"{name} needs an image_size that is a multiple of {arch.size_multiple}, "
            f"got {image_size}"
        )
    if image_size < spec.min_image_size:
        raise ValueError(f"{name} needs image_size >= {spec.min_image_size}, got {image_size}")


def _load_imagenet_state(name: str, cache_dir: Path, allow_download: bool) -> dict[str, Any]:
    spec, path = _spec(name), weights_path(name, cache_dir)
    if not path.is_file():
        if not allow_download:
            raise WeightsUnavailable(_missing_message(name, path, "downloads are disabled"))
        try:
            _download(spec.weights.url, path)
        except OSError as exc:  # URLError, timeouts and refused connections are OSErrors
            raise WeightsUnavailable(
                _missing_message(name, path, f"download failed: {exc}")
            ) from exc
    # The file is in place, so torchvision's loader reads it without touching the network.
    return spec.weights.get_state_dict(progress=False, model_dir=str(path.parent))


def _missing_message(name: str, path: Path, why: str) -> str:
    url = _spec(name).weights.url
    return (
        f"ImageNet weights for {name} are not in the model cache ({why}). "
        f"Expected file: {path}. Download {url} on a machine with internet access "
        f"(or copy it from a torch hub cache, ~/.cache/torch/hub/checkpoints/) and "
        f"place it at that path, or set GRAFT_MODEL_CACHE to a torch cache directory "
        f"(like $TORCH_HOME, e.g. ~/.cache/torch) whose hub/checkpoints/ holds it."
    )


def _download(url: str, dest: Path) -> None:
    """Fetch `url` to `dest` atomically, checking torchvision's hash prefix in the name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = dest.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as resp,
        ):
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if not digest.hexdigest().startswith(expected):
            raise OSError(f"sha256 of {url} does not start with {expected}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
