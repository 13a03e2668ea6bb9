"""Static int8 post-training quantization of an fp32 ONNX model with ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from worker.export.artifacts import INPUT_NAME, atomic_output
from worker.export.evaluate import Normalization

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 16
CALIBRATION_PERCENTILE = 99.99
MAX_BATCHES_IN_MEMORY = 4
# The first Conv stays fp32 when at most this share of all Conv multiply-adds.
FIRST_CONV_MAX_SHARE = 0.05


def pick_calibration(labels: np.ndarray, n: int = 256, seed: int = 0) -> np.ndarray:
    """Indices of up to n samples, as balanced over classes as their counts allow.

    Classes take turns, so a rare class is represented rather than crowded out by a
    frequent one; quantization ranges then cover every class's activations.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    rounds = max((len(ix) for ix in per_class), default=0)
    order = [int(ix[r]) for r in range(rounds) for ix in per_class if r < len(ix)]
    return np.sort(np.asarray(order[:n], dtype=np.int64))


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds uint8 NHWC images, normalised like training, to the calibrator in batches.

    Supports ONNX Runtime's strided calibration (`__len__` and `set_range`, in batches):
    the calibrator otherwise keeps every batch's activations in memory until the end,
    gigabytes for 256 images of a large model at 224 px.
    """

    def __init__(
        self,
        images: np.ndarray,
        normalization: Normalization,
        *,
        input_name: str = INPUT_NAME,
        batch_size: int = CALIBRATION_BATCH,
    ) -> None:
        self.images = images
        self.normalization = normalization
        self.input_name = input_name
        self.batch_size = batch_size
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        start = self._next * self.batch_size
        batch = np.asarray(self.images[start : start + self.batch_size])
        self._next += 1
        return {self.input_name: self.normalization.apply(batch)}


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration_images: np.ndarray,
    normalization: Normalization,
) -> None:
    """QDQ int8: weights int8 per channel, activations uint8 from calibrated ranges.

    uint8 activations x int8 weights is the combination ONNX Runtime's x86 kernels
    (VNNI) run fast: with int8 activations the model measured slower than fp32
    (bench/RESULTS_export.md). Ranges come from the 99.99th percentile of activations,
    not their min/max, so a few outliers do not stretch the scale for every value.
    The final classifier, and a cheap first convolution, stay in fp32
    (`sensitive_nodes`): little compute, much of the accuracy loss.
    On pre-VNNI CPUs (AVX2 only) ONNX Runtime's u8 x s8 kernels can saturate; its docs
    suggest reduce_range there, at some accuracy cost. Not done: servers have VNNI.
    """
    if len(calibration_images) == 0:
        raise ValueError("int8 quantization needs at least one calibration image")
    with tempfile.TemporaryDirectory(prefix="graft-quant-") as tmp_dir:
        source = _preprocess(fp32_path, Path(tmp_dir) / "preprocessed.onnx")
        reader = ImageCalibrationReader(calibration_images, normalization)
        exclude = sensitive_nodes(onnx.load(str(source), load_external_data=False))
        with atomic_output(out_path) as tmp:
            try:
                _quantize(source, tmp, reader, CalibrationMethod.Percentile, exclude)
            except ValueError as exc:
                # numpy cannot bin a tensor whose values are (nearly) constant, which
                # untrained or dead channels produce; min/max ranges always work.
                log.warning("percentile calibration failed (%s); using min/max ranges", exc)
                reader.set_range(0, len(reader))
                _quantize(source, tmp, reader, CalibrationMethod.MinMax, exclude)


def sensitive_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes kept in fp32: the final classifier, and maybe the first Conv.

    The classifier's Gemm/MatMul produces the logits directly, so its rounding error is
    not averaged out by later layers, and it costs next to nothing in fp32. The first
    Conv sees raw normalised pixels; kept in fp32 it gained accuracy on MobileNetV3
    (top-1 agreement with fp32 0.930 -> 0.943) for ~3% latency, but on ResNet-18 (a 7x7
    conv whose fp32 output then runs through MaxPool in fp32) it cost 1.7x latency for
    no gain. So it stays fp32 only when it is a small share of the Conv compute.
    """
    graph = model.graph
    names: list[str] = []
    convs = [n for n in graph.node if n.op_type == "Conv"]  # nodes are topologically sorted
    macs = _conv_macs(model, convs)
    if convs and convs[0].name and macs and 0 < macs[0] <= FIRST_CONV_MAX_SHARE * sum(macs):
        names.append(convs[0].name)
    head = _classifier(graph)
    if head is not None and head.name:
        names.append(head.name)
    return names


def _conv_macs(model: onnx.ModelProto, convs: list[onnx.NodeProto]) -> list[int] | None:
    """Multiply-adds per sample of each Conv, from inferred shapes; None if unknown."""
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.value_info, *model.graph.output)
    }
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    macs = []
    for conv in convs:
        out, weight = shapes.get(conv.output[0]), weights.get(conv.input[1])
        if not out or weight is None or 0 in out[1:]:
            return None
        macs.append(int(np.prod(out[1:])) * int(np.prod(weight[1:])))
    return macs


_PASS_THROUGH = {"Identity", "Flatten", "Reshape", "Squeeze", "Softmax", "Cast"}


def _classifier(graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """The Gemm/MatMul (maybe followed by Add and shape-only ops) behind an output."""
    producer = {out: n for n in graph.node for out in n.output}
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None:
            if node.op_type in ("Gemm", "MatMul"):
                return node
            if node.op_type not in _PASS_THROUGH | {"Add"}:
                break
            node = producer.get(node.input[0])
    return None


def _quantize(
    source: Path,
    out: Path,
    reader: ImageCalibrationReader,
    method: CalibrationMethod,
    exclude: list[str],
) -> None:
    # The calibrator prints progress on stdout; a worker's stdout is its log.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            source,
            out,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=exclude,
            extra_options={
                "CalibPercentile": CALIBRATION_PERCENTILE,
                # Collect a few batches at a time, merging ranges in between: memory
                # stays at a stride's activations, not the whole set's.
                "CalibStridedMinMax": _stride(len(reader)),
            },
        )


def _stride(num_batches: int, most: int = MAX_BATCHES_IN_MEMORY) -> int:
    """The largest stride <= most that divides num_batches (ONNX Runtime requires it)."""
    return max(s for s in range(1, min(most, num_batches) + 1) if num_batches % s == 0)


def _preprocess(fp32_path: Path, out: Path) -> Path:
    """Shape inference and graph fusions (e.g. Conv+BatchNorm) before quantization.

    Without them the quantizer misses tensor shapes and quantizes unfused ops, which
    costs both speed and accuracy. It is an optimisation, so a failure is not fatal.
    """
    try:
        quant_pre_process(fp32_path, out)
    except Exception as exc:
        log.warning("quantization pre-processing failed (%s); quantizing the raw graph", exc)
        return fp32_path
    return out
