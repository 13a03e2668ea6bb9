"""float16 conversion of an fp32 ONNX model, keeping a float32 interface."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from worker.export.artifacts import atomic_output


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """Weights and activations in float16; input and output stay float32.

    keep_io_types inserts Casts at the boundary so every caller keeps feeding float32
    and reading float32 logits, whichever variant it loaded. The converter's default
    block list leaves ops without a float16 definition in float32. The file is half the
    size; on a CPU without float16 kernels ONNX Runtime computes such nodes in float32
    behind inserted casts, so it is no faster there (it is for GPUs).
    """
    model = onnx.load(str(fp32_path))
    converted = convert_float_to_float16(model, keep_io_types=True)
    # The converter appends its boundary Casts at the end of the node list; the ONNX
    # spec (and strict consumers) want nodes in topological order.
    OnnxModel(converted).topological_sort()
    onnx.checker.check_model(converted)
    with atomic_output(out_path) as tmp:
        onnx.save(converted, str(tmp))
