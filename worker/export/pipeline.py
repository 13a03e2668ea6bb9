"""The export step of a job: ONNX variants of a trained model, checked and measured."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.storage import sha256_file
from worker.export.artifacts import FILE_NAMES, FORMATS, FP16, FP32, INT8
from worker.export.evaluate import (
    Normalization,
    compare_logits,
    onnx_latency,
    onnx_logits,
    top1_accuracy,
    torch_logits,
)
from worker.export.fp16 import convert_fp16
from worker.export.onnx_export import OPSET, ExportMismatch, Parity, check_parity, export_onnx
from worker.export.quantize import quantize_int8
from worker.export.report import (
    ExportReport,
    VariantReport,
    accuracy_drop_points,
    within_budget,
)
from worker.training.types import ImageSet

log = logging.getLogger(__name__)

LATENCY_BATCHES = (1, 32)


def resolve_formats(formats: Sequence[str]) -> list[str]:
    """Requested formats in canonical order; every derived variant needs the fp32 model."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; expected a subset of {FORMATS}")
    wanted = set(formats) | {FP32}
    return [f for f in FORMATS if f in wanted]


def export_variants(
    model: nn.Module,
    *,
    formats: list[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: list[str],
    calibration_images: np.ndarray,
    val: ImageSet,
    out_dir: Path,
    max_accuracy_drop: float = 1.0,
    parity_tolerance: float = 1e-3,
    threads: int | None = None,
    latency_runs: int = 5,
) -> ExportReport:
    """Write the requested ONNX variants into out_dir and report on each.

    `threads` (default: torch's) is what ONNX Runtime evaluates and is timed with.

    Raises ExportMismatch (and leaves no fp32 file behind) when ONNX Runtime does not
    reproduce the PyTorch model's logits within `parity_tolerance`.
    """
    wanted = resolve_formats(formats)
    norm = Normalization.of(mean, std)
    threads = threads or torch.get_num_threads()
    # Parity needs images; without a val set the calibration images stand in.
    check_images = val.images if len(val) else calibration_images
    fp32_path = out_dir / FILE_NAMES[FP32]
    checked = _export_checked(model, fp32_path, image_size, check_images, norm, threads)
    _check_classes(checked.torch_logits, class_names)
    parity = checked.parity(parity_tolerance)

    builders: dict[str, Callable[[Path], None]] = {
        INT8: lambda p: quantize_int8(fp32_path, p, calibration_images, norm),
        FP16: lambda p: convert_fp16(fp32_path, p),
    }
    for fmt in wanted:
        if fmt in builders:
            builders[fmt](out_dir / FILE_NAMES[fmt])

    labels = val.labels if len(val) else np.zeros(0, dtype=np.int64)
    measure = _Measurer(
        checked.torch_logits, labels, image_size, max_accuracy_drop, threads, latency_runs
    )
    report = ExportReport(
        pytorch_accuracy=measure.reference_accuracy,
        num_val=len(val),
        image_size=image_size,
        opset=OPSET,
        exporter=checked.exporter,
        parity=parity.as_dict(),
        max_accuracy_drop=max_accuracy_drop,
    )
    for fmt in wanted:
        path = out_dir / FILE_NAMES[fmt]
        logits = (
            checked.onnx_logits
            if fmt == FP32
            else onnx_logits(path, check_images, norm, threads=threads)
        )
        report.variants.append(measure.variant(fmt, path, logits))
    log.info("export report: %s", report.as_dict())
    return report


@dataclass(frozen=True)
class _CheckedExport:
    exporter: str
    path: Path
    torch_logits: np.ndarray
    onnx_logits: np.ndarray

    def parity(self, tolerance: float) -> Parity:
        # Kernels sum in different orders: the fp32 error grows with the logits' scale,
        # so the tolerance is relative to the largest logit (absolute below 1).
        scale = max(1.0, float(np.abs(self.torch_logits).max(initial=0.0)))
        try:
            return check_parity(self.torch_logits, self.onnx_logits, tolerance=tolerance * scale)
        except ExportMismatch:
            # A model that does not compute what was trained must never be served.
            self.path.unlink(missing_ok=True)
            raise


def _export_checked(
    model: nn.Module,
    path: Path,
    image_size: int,
    images: np.ndarray,
    norm: Normalization,
    threads: int,
) -> _CheckedExport:
    # A CPU copy: the caller's model (maybe on a GPU, maybe in train mode) is untouched,
    # and PyTorch's reference logits come from the same device ONNX Runtime runs on.
    reference = copy.deepcopy(model).cpu().eval()
    exporter = export_onnx(reference, path, image_size=image_size)
    return _CheckedExport(
        exporter=exporter,
        path=path,
        torch_logits=torch_logits(reference, images, norm),
        onnx_logits=onnx_logits(path, images, norm, threads=threads),
    )


def _check_classes(logits: np.ndarray, class_names: list[str]) -> None:
    if logits.size and logits.shape[1] != len(class_names):
        raise ValueError(
            f"the model outputs {logits.shape[1]} logits but there are "
            f"{len(class_names)} class names"
        )


@dataclass(frozen=True)
class _Measurer:
    """Measures variants against the PyTorch model's logits on the same images."""

    reference_logits: np.ndarray
    labels: np.ndarray
    image_size: int
    max_accuracy_drop: float
    threads: int
    runs: int

    @property
    def reference_accuracy(self) -> float | None:
        return top1_accuracy(self.reference_logits, self.labels)

    def variant(self, fmt: str, path: Path, logits: np.ndarray) -> VariantReport:
        accuracy = top1_accuracy(logits, self.labels)
        drop = accuracy_drop_points(self.reference_accuracy, accuracy)
        agreement, max_diff = compare_logits(self.reference_logits, logits)
        latency = onnx_latency(
            path, self.image_size, batch_sizes=LATENCY_BATCHES, threads=self.threads, runs=self.runs
        )
        return VariantReport(
            format=fmt,
            file=path.name,
            size_bytes=path.stat().st_size,
            sha256=sha256_file(path),
            accuracy=accuracy,
            accuracy_drop_points=drop,
            top1_agreement=agreement,
            max_abs_logit_diff=max_diff,
            latency_ms={f"batch_{b}": ms for b, ms in latency.items()},
            threads=self.threads,
            within_budget=within_budget(drop, self.max_accuracy_drop),
        )
