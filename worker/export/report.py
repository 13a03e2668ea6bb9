"""What each exported variant costs and how accurate it is, as stored with the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from worker.export.artifacts import FP32


@dataclass(frozen=True)
class VariantReport:
    format: str  # "onnx" | "onnx-int8" | "onnx-fp16"
    file: str  # name inside the export directory
    size_bytes: int
    sha256: str
    accuracy: float | None  # val top-1, 0..1; None without a val set
    accuracy_drop_points: float | None  # PyTorch accuracy minus this one, in points
    top1_agreement: float  # share of val images with the PyTorch model's top-1 class
    max_abs_logit_diff: float  # against the PyTorch model's logits on val
    latency_ms: dict[str, float]  # median per batch: {"batch_1": ..., "batch_32": ...}
    threads: int  # intra-op threads the latency was measured with
    within_budget: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportReport:
    pytorch_accuracy: float | None
    num_val: int
    image_size: int
    opset: int
    exporter: str  # which torch.onnx exporter produced the fp32 model
    parity: dict[str, float | int]
    max_accuracy_drop: float  # points
    variants: list[VariantReport] = field(default_factory=list)

    @property
    def recommended_artifact(self) -> str:
        return recommend(self.variants)

    def variant(self, fmt: str) -> VariantReport:
        for v in self.variants:
            if v.format == fmt:
                return v
        raise KeyError(fmt)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = [v.as_dict() for v in self.variants]
        d["recommended_artifact"] = self.recommended_artifact
        return d


def accuracy_drop_points(reference: float | None, accuracy: float | None) -> float | None:
    if reference is None or accuracy is None:
        return None
    return (reference - accuracy) * 100.0


def within_budget(drop_points: float | None, max_accuracy_drop: float) -> bool:
    # Without a measured drop there is no evidence either way; only the fp32 fallback
    # (parity-checked against PyTorch) is then recommended.
    return drop_points is not None and drop_points <= max_accuracy_drop


def recommend(variants: list[VariantReport]) -> str:
    """The smallest variant within the accuracy budget, else the fp32 model."""
    fitting = [v for v in variants if v.within_budget]
    if not fitting:
        return FP32
    return min(fitting, key=lambda v: v.size_bytes).format
