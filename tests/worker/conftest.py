"""Real small images for the training tests: scikit-learn's UCI digits, upscaled to RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from worker.training.types import ImageSet, TrainConfig

CLASS_NAMES = [str(d) for d in range(10)]


def digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 (N, size, size, 3) RGB and int64 labels."""
    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    rgb = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    return rgb.permute(0, 2, 3, 1).contiguous().numpy(), d.target.astype(np.int64)


def imageset(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> ImageSet:
    return ImageSet(images[idx], labels[idx], [f"digits/{labels[i]}/{i}.png" for i in idx])


@pytest.fixture(scope="session")
def digits16() -> tuple[np.ndarray, np.ndarray]:
    return digits_images(16)


@pytest.fixture(scope="session")
def small_split(digits16: tuple[np.ndarray, np.ndarray]) -> tuple[ImageSet, ImageSet]:
    """A fixed 240 / 120 train / val split of all ten classes at 16 px."""
    images, labels = digits16
    order = np.random.default_rng(0).permutation(len(labels))
    return imageset(images, labels, order[:240]), imageset(images, labels, order[240:360])


@pytest.fixture(scope="session")
def tiny_split(small_split: tuple[ImageSet, ImageSet]) -> tuple[ImageSet, ImageSet]:
    """64 / 32 images of the same split: 2 steps per epoch at batch size 32."""
    train, val = small_split
    return (
        ImageSet(train.images[:64], train.labels[:64], train.paths[:64]),
        ImageSet(val.images[:32], val.labels[:32], val.paths[:32]),
    )


def tiny_config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "architecture": "resnet18",
        "num_classes": 10,
        "strategy": "full",
        "epochs": 3,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "image_size": 16,
        "augmentation": "none",
    }
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]
