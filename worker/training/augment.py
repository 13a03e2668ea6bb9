"""Batch augmentation on the training device.

Images arrive decoded and resized once (uint8), so augmentation works on whole float
batches where they already are (the GPU in production) instead of per image in loader
workers. Random parameters come from a CPU generator seeded per step, which makes an
epoch's augmentation identical on CPU and CUDA and after a resume mid-epoch.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Mode = Literal["none", "light", "strong"]

CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.4  # brightness, contrast and saturation factors drawn from 1 +- JITTER


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, step), not on what ran before."""
    state = np.random.SeedSequence([seed, epoch, step]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def augment(x: torch.Tensor, mode: Mode, gen: torch.Generator, invert: float = 0.0) -> torch.Tensor:
    """Augment a float batch (B, 3, H, W) in [0, 1]; returns a new tensor.

    `invert` is the probability of inverting each image (mode "none" never inverts)."""
    if mode == "none":
        return x
    x = random_resized_crop_flip(x, gen)
    if mode == "strong":
        x = color_jitter(x, gen)
    if invert > 0:
        x = random_invert(x, invert, gen)
    return x


def random_resized_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-image random resized crop and horizontal flip, as one batched grid_sample."""
    b = x.shape[0]
    area = _uniform(b, *CROP_SCALE, gen)
    log_ratio = _uniform(b, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), gen)
    ratio = log_ratio.exp()
    # Crop width and height as fractions of the image side.
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    # Centres in affine_grid's [-1, 1] coordinates, keeping the crop inside the image.
    cx = (1 - w) * _uniform(b, -1.0, 1.0, gen)
    cy = (1 - h) * _uniform(b, -1.0, 1.0, gen)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    zero = torch.zeros(b)
    theta = torch.stack(
        [torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1
    ).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation jitter (torchvision's ColorJitter math)."""
    b = x.shape[0]
    factors = _uniform(3 * b, 1 - JITTER, 1 + JITTER, gen).view(3, b, 1, 1, 1)
    bright, contrast, sat = factors.to(device=x.device, dtype=x.dtype)
    x = (x * bright).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    gray = _gray(x)
    return ((x - gray) * sat + gray).clamp(0, 1)


def random_invert(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Per-image 1 - x with probability p (torchvision's RandomInvert): light strokes on
    dark become dark on light, so a model can learn both polarities."""
    flip = (torch.rand(x.shape[0], generator=gen) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, 1 - x, x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def gather(array: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """array[idx] on `device`; on CUDA through pinned memory so the copy is asynchronous."""
    if device.type != "cuda":
        return torch.from_numpy(np.take(array, idx, axis=0))
    buf = torch.empty(
        (len(idx), *array.shape[1:]), dtype=_TORCH_DTYPE[array.dtype], pin_memory=True
    )
    np.take(array, idx, axis=0, out=buf.numpy())
    return buf.to(device, non_blocking=True)


def to_model_input(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    mode: Mode,
    gen: torch.Generator,
    channels_last: bool,
    invert: float = 0.0,
) -> torch.Tensor:
    """uint8 (B, H, W, 3) on the device -> normalised float (B, 3, H, W), augmented."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    x = augment(x, mode, gen, invert)
    x = (x - mean) / std
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


_TORCH_DTYPE = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.float32): torch.float32,
}
