"""Names of the export artifacts and how they are written; torch-free like app.storage."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.storage import fsync_dir

# The exported graph's interface, the contract of every variant and of predict.py.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

FP32 = "onnx"
INT8 = "onnx-int8"
FP16 = "onnx-fp16"
FORMATS = (FP32, INT8, FP16)
FILE_NAMES = {FP32: "model.onnx", INT8: "model-int8.onnx", FP16: "model-fp16.onnx"}


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success fsync it and rename it into place.

    app.storage.atomic_writer hands out a file object; the ONNX tools (exporter,
    quantizer) insist on writing to a path themselves, hence this twin.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)
