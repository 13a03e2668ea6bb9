"""Export a trained model to fp32 ONNX, and check that ONNX Runtime agrees with PyTorch.

The exported graph is the contract every consumer relies on: one input named "input"
(float32 NCHW, already normalised), one output "logits", a dynamic batch axis.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worker.errors import ExportMismatch
from worker.export.artifacts import INPUT_NAME, OUTPUT_NAME, atomic_output
from worker.export.evaluate import Normalization, compare_logits, onnx_logits

log = logging.getLogger(__name__)

OPSET = 18


def export_onnx(model: nn.Module, out_path: Path, *, image_size: int, opset: int = OPSET) -> str:
    """Write `model` (CPU, eval mode) as a single-file fp32 ONNX model; return the exporter used.

    The torch.export-based exporter is torch's supported path (the TorchScript one is
    deprecated); the TorchScript exporter stays as a fallback for models that
    torch.export cannot trace, so such a model still ships.
    """
    # Batch 2, not 1: torch.export specialises a dimension whose example size is 1.
    # Its own generator leaves the caller's RNG stream (and so its reproducibility) alone.
    gen = torch.Generator().manual_seed(0)
    example = (torch.randn(2, 3, image_size, image_size, generator=gen),)
    with atomic_output(out_path) as tmp:
        try:
            _export_dynamo(model, example, tmp, opset)
            return "dynamo"
        except Exception as exc:
            log.warning("torch.export-based ONNX export failed (%s); using TorchScript", exc)
            _export_torchscript(model, example, tmp, opset)
            return "torchscript"


def _export_dynamo(model: nn.Module, example: tuple[torch.Tensor], path: Path, opset: int) -> None:
    torch.onnx.export(
        model,
        example,
        str(path),
        dynamo=True,
        # One self-contained file: artifacts are downloaded and hashed as one file.
        external_data=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )


def _export_torchscript(
    model: nn.Module, example: tuple[torch.Tensor], path: Path, opset: int
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top1_agreement: float  # share of inputs whose top-1 class is the same
    num_inputs: int
    tolerance: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "num_inputs": self.num_inputs,
            "tolerance": self.tolerance,
        }


def check_parity(
    reference_logits: np.ndarray,
    candidate_logits: np.ndarray,
    *,
    tolerance: float = 1e-3,
    max_disagreement: float = 0.005,
) -> Parity:
    """Raise ExportMismatch unless ONNX logits match the PyTorch ones within tolerance.

    Within tolerance a top-1 flip can only be a near-tie; `max_disagreement` keeps a
    check on predictions when a caller loosens `tolerance` for a model with large logits.
    """
    agreement, max_diff = compare_logits(reference_logits, candidate_logits)
    parity = Parity(max_diff, agreement, int(reference_logits.shape[0]), tolerance)
    if not np.isfinite(max_diff) or max_diff > tolerance or 1.0 - agreement > max_disagreement:
        raise ExportMismatch(
            f"ONNX model differs from the PyTorch model: max |logit diff| {max_diff:.3g} "
            f"(tolerance {tolerance:.3g}, {max_diff / tolerance:.3g}x the tolerance), top-1 "
            f"agreement {agreement:.2%} on {parity.num_inputs} inputs",
            max_abs_diff=max_diff,
            top1_agreement=agreement,
        )
    return parity


def check_onnx_parity(
    onnx_path: Path,
    reference_logits: np.ndarray,
    images: np.ndarray,
    normalization: Normalization,
    *,
    tolerance: float = 1e-3,
    max_disagreement: float = 0.005,
) -> Parity:
    """check_parity for an ONNX file run on uint8 NHWC `images`."""
    candidate = onnx_logits(onnx_path, images, normalization)
    return check_parity(
        reference_logits, candidate, tolerance=tolerance, max_disagreement=max_disagreement
    )
