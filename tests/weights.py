"""Safetensors files shaped like a registry architecture, without torch: zeros in every
tensor the API expects (app/data/architecture_tensors.json), for upload tests."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
from safetensors.numpy import save

from app.services.model_weights import _signatures, head_prefix


def tensors(
    architecture: str = "resnet18", *, classes: int = 2, kind: str = "model"
) -> dict[str, np.ndarray]:
    head = head_prefix(architecture)
    out = {}
    for name, shape, dtype_kind in _signatures()[architecture]["tensors"]:
        if kind == "backbone" and name.startswith(head):
            continue
        dims = [classes if d == "classes" else (197 if d is None else d) for d in shape]
        out[name] = np.zeros(dims, dtype=np.float32 if dtype_kind == "float" else np.int64)
    return out


@cache
def _weights(architecture: str, classes: int, kind: str) -> bytes:
    return save(tensors(architecture, classes=classes, kind=kind))


def weights(
    architecture: str = "resnet18",
    *,
    classes: int = 2,
    kind: str = "model",
    changed: Mapping[str, Any] | None = None,
) -> bytes:
    """The file's bytes; `changed` replaces (or, with None, removes) named tensors."""
    if not changed:
        return _weights(architecture, classes, kind)
    t = tensors(architecture, classes=classes, kind=kind)
    for name, value in changed.items():
        if value is None:
            t.pop(name, None)
        else:
            t[name] = value
    return save(t)
