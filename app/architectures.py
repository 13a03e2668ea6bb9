"""The architectures Graft can fine-tune, and the preprocessing that travels with them.

Torch-free on purpose: the API validates job specs and serves predictions with this
module, while the worker's registry (worker/training/registry.py) maps the same names
to torchvision builders. A test checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Architecture:
    name: str
    # Default input size of its ImageNet weights; jobs may ask for another size.
    default_image_size: int
    # Some architectures only accept sizes that are a multiple of this (patch size).
    size_multiple: int = 1
    # Whether the architecture has BatchNorm layers (domain adaptation needs them).
    has_batchnorm: bool = True
    # Number of backbone blocks that `partial` with `unfreeze_last` can unfreeze.
    num_blocks: int = 4
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("resnet18", 224, num_blocks=4),
        Architecture("resnet50", 224, num_blocks=4),
        Architecture("mobilenet_v2", 224, num_blocks=18),
        Architecture("mobilenet_v3_small", 224, num_blocks=12),
        Architecture("mobilenet_v3_large", 224, num_blocks=16),
        Architecture("efficientnet_b0", 224, num_blocks=8),
        Architecture("convnext_tiny", 224, has_batchnorm=False, num_blocks=4),
        Architecture("vgg16", 224, has_batchnorm=False, num_blocks=5),
        Architecture("vit_b_16", 224, size_multiple=16, has_batchnorm=False, num_blocks=12),
    )
}


def preprocessing(arch: Architecture, image_size: int) -> dict[str, object]:
    """The exact inference preprocessing of a model, as written into its metadata.

    Training decodes every image once with the same steps (worker/training/data.py),
    so what a model saw in training and what `predict` feeds it are identical.
    """
    return {
        "resize": [image_size, image_size],
        "resample": "bilinear",
        "crop": None,
        "color_mode": "RGB",
        "channel_order": "NCHW",
        "scale": 1.0 / 255.0,
        "mean": list(arch.mean),
        "std": list(arch.std),
        "image_size": image_size,
    }
