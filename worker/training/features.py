"""The linear probe's feature cache.

With the backbone frozen and in eval mode, its output for an image never changes, so a
linear probe runs the backbone once per job over the un-augmented images and trains the
head on the stored features for every epoch (augmentation does not apply: it would need
the backbone again each epoch). The features are kept in memory and written to the job's
workdir, so a resumed job does not recompute them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worker.training import augment, checkpoint
from worker.training.types import ImageSet

FILENAME = "features.pt"


@torch.no_grad()
def compute(
    extractor: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    channels_last: bool,
    autocast: Callable[[], AbstractContextManager[object]],
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Float32 features (N, D) on the device, from un-augmented images.

    on_batch(images in the batch) is called after each batch; it may raise to stop.
    """
    extractor.eval()
    gen = torch.Generator()  # unused: mode "none" draws nothing
    out = []
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        x = augment.to_model_input(
            augment.gather(images, idx, device), mean, std, "none", gen, channels_last
        )
        with autocast():
            out.append(extractor(x).float())
        if on_batch is not None:
            on_batch(len(idx))
    return torch.cat(out)


def batch_count(n: int, batch_size: int) -> int:
    """How many batches compute() runs over n images."""
    return -(-n // batch_size)


def load_or_compute(
    workdir: Path,
    sets: dict[str, ImageSet],
    compute_one: Callable[[np.ndarray], torch.Tensor],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Features of each named set, from workdir if a matching file is there."""
    path = Path(workdir) / FILENAME
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if set(cached) == set(sets) and all(len(cached[k]) == len(s) for k, s in sets.items()):
            return {k: v.to(device) for k, v in cached.items()}
    feats = {k: compute_one(s.images) for k, s in sets.items()}
    checkpoint.atomic_torch_save({k: v.cpu() for k, v in feats.items()}, path)
    return feats
