"""Accuracy, agreement and CPU latency of a model in PyTorch or ONNX Runtime.

Every path feeds the same pixels: uint8 NHWC images normalised by
app.services.inference.normalize_batch, the function the API's predictor uses.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from app.services.inference import normalize_batch

EVAL_BATCH = 64


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))

    def apply(self, images: np.ndarray) -> np.ndarray:
        return normalize_batch(images, self.mean, self.std)


def _batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    # Slicing keeps a np.memmap lazy: only one batch is read and normalised at a time.
    for start in range(0, len(images), batch_size):
        yield np.asarray(images[start : start + batch_size])


def onnx_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_session(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    model_input = sess.get_inputs()[0]
    if model_input.type == "tensor(float16)":
        x = x.astype(np.float16)
    return np.asarray(sess.run(None, {model_input.name: x})[0], dtype=np.float32)


# Called after each batch with the images done so far; it may raise to stop the run.
OnBatch = Callable[[int], None]


def onnx_logits(
    model: Path | ort.InferenceSession,
    images: np.ndarray,
    normalization: Normalization,
    batch_size: int = EVAL_BATCH,
    threads: int | None = None,
    on_batch: OnBatch | None = None,
) -> np.ndarray:
    sess = model if isinstance(model, ort.InferenceSession) else onnx_session(model, threads)
    return _collect(lambda x: _run_session(sess, x), images, normalization, batch_size, on_batch)


def torch_logits(
    model: nn.Module,
    images: np.ndarray,
    normalization: Normalization,
    batch_size: int = EVAL_BATCH,
    on_batch: OnBatch | None = None,
) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        out: torch.Tensor = model(torch.from_numpy(x).to(device))
        return out.float().cpu().numpy()

    return _collect(run, images, normalization, batch_size, on_batch)


def _collect(
    run: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    normalization: Normalization,
    batch_size: int,
    on_batch: OnBatch | None = None,
) -> np.ndarray:
    outs: list[np.ndarray] = []
    done = 0
    for batch in _batches(images, batch_size):
        outs.append(run(normalization.apply(batch)))
        done += len(batch)
        if on_batch is not None:
            on_batch(done)
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outs)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of correct top-1 predictions; None for an empty set."""
    if len(labels) == 0:
        return None
    return float(np.mean(logits.argmax(axis=1) == np.asarray(labels)))


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(share of identical top-1 predictions, max absolute logit difference)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    if reference.size == 0:
        return 1.0, 0.0
    agree = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return agree, float(diff.max())


def median_ms(fn: Callable[[], object], *, runs: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds; warm-up runs absorb lazy allocations."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _random_input(batch: int, image_size: int) -> np.ndarray:
    # Latency does not depend on pixel values; a fixed seed keeps runs comparable.
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)


def onnx_latency(
    path: Path,
    image_size: int,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    threads: int,
    runs: int = 5,
) -> dict[int, float]:
    """Median ms per batch for each batch size, on `threads` intra-op threads."""
    sess = onnx_session(path, threads)
    result = {}
    for batch in batch_sizes:
        x = _random_input(batch, image_size)
        result[batch] = median_ms(functools.partial(_run_session, sess, x), runs=runs)
    return result


def torch_latency(
    model: nn.Module,
    image_size: int,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    threads: int,
    runs: int = 5,
) -> dict[int, float]:
    """Median ms per batch of the eager model on the CPU, on `threads` threads."""
    model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = {}
        with torch.inference_mode():
            for batch in batch_sizes:
                x = torch.from_numpy(_random_input(batch, image_size))
                result[batch] = median_ms(functools.partial(model, x), runs=runs)
        return result
    finally:
        torch.set_num_threads(previous)
