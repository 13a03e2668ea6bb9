"""Suspected label errors against labels planted wrong, through the training engine.

Run from the repository root (needs `apt-get install dataset-fashion-mnist`):

    .venv/bin/python bench/bench_label_issues.py

Fashion-MNIST: 2,000 training images (200 per class, seeded) with 5 % of their labels
changed to another class at random (seeded), and a clean validation set of 500 other
training images. Each model is fitted by the engine as a job would be, and its
report's `label_issues` (every suspect, not only the 100 listed) are scored against
the flipped set:

- the ImageNet MobileNetV2 backbone of bench/backbones.py, `linear_probe`, 64 px;
- the same architecture from scratch, `full`, 64 px, 10 epochs.

The same on scikit-learn's digits (1,797 images, 8 px upscaled to 32): resnet18 from
scratch, `full`. Prints a table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from backbones import convert, fetch_checkpoint
from fashion_mnist import CLASSES as FASHION_CLASSES
from fashion_mnist import load, pick
from PIL import Image
from safetensors.torch import load_file

from worker.training import engine, label_issues, registry
from worker.training.types import Hooks, ImageSet, TrainConfig

RATE = 0.05
CPU = torch.device("cpu")


def to_rgb(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack(
        [
            np.asarray(Image.fromarray(im).convert("RGB").resize((size, size), Image.BILINEAR))
            for im in images
        ]
    )


def flip(labels: np.ndarray, num_classes: int, seed: int) -> tuple[np.ndarray, set[int]]:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(labels), int(RATE * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + rng.integers(1, num_classes, len(chosen))) % num_classes
    return noisy, set(chosen.tolist())


Score = tuple[float, float, int, float, float]


def score(
    model: torch.nn.Module,
    cfg: TrainConfig,
    train: ImageSet,
    val: ImageSet,
    classes: list[str],
    flipped: set[int],
) -> Score:
    label_issues.MAX_LISTED = len(train)  # score every suspect, not only the first 100
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = engine.fit(model, cfg, train, val, classes, Hooks(), Path(tmp), CPU)
    seconds = time.perf_counter() - start
    index = {p: i for i, p in enumerate(train.paths)}
    suspects = {index[s["path"]] for s in result.report["label_issues"]}
    hits = len(suspects & flipped)
    precision = hits / len(suspects) if suspects else 0.0
    val_acc = max(m.val_accuracy for m in result.history)
    return hits / len(flipped), precision, len(suspects), val_acc, seconds


def fashion(rows: list[list[str]]) -> None:
    images, labels = load("train")
    keep = pick(labels, 250, seed=0)
    rng = np.random.default_rng(1)
    rng.shuffle(keep)
    train_idx, val_idx = keep[:2000], keep[2000:2500]
    size = 64
    x_train, x_val = to_rgb(images[train_idx], size), to_rgb(images[val_idx], size)
    noisy, flipped = flip(labels[train_idx].astype(np.int64), 10, seed=2)
    classes = list(FASHION_CLASSES)
    train = ImageSet(x_train, noisy, [f"train/{i}" for i in range(len(noisy))])
    val = ImageSet(x_val, labels[val_idx].astype(np.int64), [f"val/{i}" for i in range(500)])
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "mnv2.safetensors"
        convert(fetch_checkpoint(Path(tmp)), weights)
        state = load_file(str(weights))
    torch.manual_seed(0)
    backbone = registry.build_from_backbone("mobilenet_v2", 10, state, size)
    probe = TrainConfig("mobilenet_v2", 10, strategy="linear_probe", epochs=20,
                        learning_rate=1e-2, image_size=size, batch_size=64)  # fmt: skip
    rows.append(["Fashion-MNIST", "ImageNet mobilenet_v2, linear_probe",
                 *fmt(score(backbone, probe, train, val, classes, flipped))])  # fmt: skip
    torch.manual_seed(0)
    scratch = registry._construct("mobilenet_v2", 10, size)
    full = TrainConfig("mobilenet_v2", 10, strategy="full", epochs=10, learning_rate=3e-3,
                       image_size=size, batch_size=64, augmentation="none")  # fmt: skip
    rows.append(["Fashion-MNIST", "mobilenet_v2 from scratch, full",
                 *fmt(score(scratch, full, train, val, classes, flipped))])  # fmt: skip


def digits(rows: list[list[str]]) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    size = 32
    imgs = (data.images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(3)
    order = rng.permutation(len(imgs))
    train_idx, val_idx = order[:1500], order[1500:]
    x = to_rgb(imgs, size)
    noisy, flipped = flip(data.target[train_idx].astype(np.int64), 10, seed=4)
    classes = [f"digit_{i}" for i in range(10)]
    train = ImageSet(x[train_idx], noisy, [f"train/{i}" for i in range(len(noisy))])
    val = ImageSet(x[val_idx], data.target[val_idx].astype(np.int64),
                   [f"val/{i}" for i in range(len(val_idx))])  # fmt: skip
    torch.manual_seed(0)
    model = registry._construct("resnet18", 10, size)
    cfg = TrainConfig("resnet18", 10, strategy="full", epochs=10, learning_rate=3e-3,
                      image_size=size, batch_size=64, augmentation="none")  # fmt: skip
    rows.append(["digits", "resnet18 from scratch, full",
                 *fmt(score(model, cfg, train, val, classes, flipped))])  # fmt: skip


def fmt(r: Score) -> list[str]:
    recall, precision, n, val_acc, seconds = r
    return [f"{recall:.2f}", f"{precision:.2f}", str(n), f"{100 * val_acc:.1f}", f"{seconds:.0f}"]


def main() -> None:
    rows: list[list[str]] = []
    fashion(rows)
    digits(rows)
    header = ["data", "model", "recall", "precision", "suspects", "best val acc %", "fit s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
