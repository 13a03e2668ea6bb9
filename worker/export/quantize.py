"""Static int8 post-training quantization of an fp32 ONNX model with ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
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
    On pre-VNNI CPUs (AVX2 only) ONNX Runtime's u8 x s8 kernels can saturate; its docs
    suggest reduce_range there, at some accuracy cost. Not done: servers have VNNI.
    """
    if len(calibration_images) == 0:
        raise ValueError("int8 quantization needs at least one calibration image")
    with tempfile.TemporaryDirectory(prefix="graft-quant-") as tmp_dir:
        source = _preprocess(fp32_path, Path(tmp_dir) / "preprocessed.onnx")
        reader = ImageCalibrationReader(calibration_images, normalization)
        with atomic_output(out_path) as tmp:
            try:
                _quantize(source, tmp, reader, CalibrationMethod.Percentile)
            except ValueError as exc:
                # numpy cannot bin a tensor whose values are (nearly) constant, which
                # untrained or dead channels produce; min/max ranges always work.
                log.warning("percentile calibration failed (%s); using min/max ranges", exc)
                reader.set_range(0, len(reader))
                _quantize(source, tmp, reader, CalibrationMethod.MinMax)


def _quantize(
    source: Path, out: Path, reader: ImageCalibrationReader, method: CalibrationMethod
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
