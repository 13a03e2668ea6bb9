"""The downloadable bundle: ONNX model(s), labels, preprocessing, predict.py and a README.

Torch-free, so the API could build it on demand as well as the worker.
"""

from __future__ import annotations

import json
import string
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.storage import sha256_file
from worker.export.artifacts import FILE_NAMES, INPUT_NAME, OUTPUT_NAME, atomic_output

TEMPLATES = Path(__file__).resolve().parent / "templates"
# A fixed timestamp makes the same inputs give a byte-identical zip (and sha256).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def bundle_preprocessing(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    """The model's preprocessing plus what a caller needs to build its input tensor."""
    d = dict(preprocessing)
    size = int(d.get("image_size") or d["resize"][0])
    d.setdefault("image_size", size)
    d.setdefault("resize", [size, size])
    d.setdefault("crop", None)
    d.setdefault("scale", 1.0 / 255.0)
    d.setdefault("color_mode", "RGB")
    d.setdefault("channel_order", "NCHW")
    d.update(
        input_name=INPUT_NAME,
        input_shape=["batch", 3, size, size],
        input_dtype="float32",
        output_name=OUTPUT_NAME,
    )
    return d


def build_bundle(
    out_path: Path,
    *,
    onnx_files: Mapping[str, Path],
    recommended: str,
    class_names: list[str],
    preprocessing: Mapping[str, Any],
    model_id: str,
) -> Path:
    """Write the bundle zip to out_path (atomically); its entries sit under `model_id/`."""
    if recommended not in onnx_files:
        raise ValueError(f"recommended format {recommended!r} is not among {sorted(onnx_files)}")
    files = {fmt: _describe(fmt, path) for fmt, path in onnx_files.items()}
    prep = bundle_preprocessing(preprocessing)
    manifest = {
        "model_id": model_id,
        "default_model": files[recommended]["file"],
        "recommended_artifact": recommended,
        "files": list(files.values()),
    }
    texts = {
        "labels.json": json.dumps(class_names, indent=2),
        "preprocessing.json": json.dumps(prep, indent=2),
        "manifest.json": json.dumps(manifest, indent=2),
        "predict.py": (TEMPLATES / "predict.py").read_text(),
        "README.md": _readme(model_id, manifest, prep, len(class_names)),
    }
    with atomic_output(out_path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for fmt, path in onnx_files.items():
            _add(zf, f"{model_id}/{files[fmt]['file']}", path.read_bytes())
        for name, text in texts.items():
            _add(zf, f"{model_id}/{name}", text.encode())
    return out_path


def _describe(fmt: str, path: Path) -> dict[str, Any]:
    return {
        "format": fmt,
        "file": FILE_NAMES.get(fmt, path.name),
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _readme(
    model_id: str, manifest: Mapping[str, Any], prep: Mapping[str, Any], num_classes: int
) -> str:
    rows = "\n".join(
        f"| `{f['file']}` | {f['format']} | {f['size_bytes'] / 1e6:.2f} MB | `{f['sha256']}` |"
        for f in manifest["files"]
    )
    template = string.Template((TEMPLATES / "README.md").read_text())
    return template.safe_substitute(
        model_id=model_id,
        num_classes=num_classes,
        files_table=rows,
        default_model=manifest["default_model"],
        image_size=prep["image_size"],
        mean=", ".join(f"{v:g}" for v in prep["mean"]),
        std=", ".join(f"{v:g}" for v in prep["std"]),
    )
