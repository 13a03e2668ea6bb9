"""Checks an uploaded safetensors file against the architecture it claims, without torch.

The expected tensors of every architecture (names, shapes, float or integer) come from
`app/data/architecture_tensors.json`, which worker/training/signatures.py computes from
torchvision. A `model` upload holds them all, its head sized for its classes; a
`backbone` upload holds them all but the head's (a job gives it a fresh head). The
first tensor that does not fit, in the architecture's own order, is named in the 422.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

from app.errors import InvalidInput

SIGNATURES = Path(__file__).resolve().parents[1] / "data" / "architecture_tensors.json"
Kind = Literal["model", "backbone"]

# safetensors dtypes a float tensor may be stored in (loaded as the model's dtype).
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_INT_DTYPES = frozenset({"I64", "I32"})
# BatchNorm's batch counter: torch fills it in when absent, so it may be left out.
_OPTIONAL_SUFFIX = ".num_batches_tracked"


@cache
def _signatures() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SIGNATURES.read_text("utf-8"))
    return data


def head_prefix(architecture: str) -> str:
    return str(_signatures()[architecture]["head"]) + "."


def _mismatch(message: str) -> InvalidInput:
    return InvalidInput(message, code="weights_mismatch", param="file")


def _shape_text(shape: list[Any]) -> str:
    return "[" + ", ".join("any" if d is None else str(d) for d in shape) + "]"


def check_tensors(
    header: dict[str, Any], architecture: str, kind: Kind, num_classes: int | None
) -> None:
    """Raise a 422 naming the first tensor of `header` (a parsed safetensors header)
    that does not fit `architecture` as a `kind` upload with `num_classes` classes."""
    head = head_prefix(architecture)
    given = {name: entry for name, entry in header.items() if name != "__metadata__"}
    in_head = sorted(name for name in given if name.startswith(head))
    if kind == "backbone" and in_head:
        raise _mismatch(
            f"Tensor `{in_head[0]}` is {architecture}'s classifier head: a backbone holds "
            "the feature extractor only. Upload it with kind=model (and its classes), or "
            "leave the head's tensors out."
        )
    known = set()
    for name, shape, dtype_kind in _signatures()[architecture]["tensors"]:
        known.add(name)
        if kind == "backbone" and name.startswith(head):
            continue
        entry = given.get(name)
        if entry is None:
            if name.endswith(_OPTIONAL_SUFFIX):
                continue
            hint = " (a backbone? upload it with kind=backbone)" if name.startswith(head) else ""
            raise _mismatch(f"Tensor `{name}` of {architecture} is missing from the file{hint}.")
        _check_one(name, entry, shape, dtype_kind, architecture, num_classes, head)
    unknown = sorted(set(given) - known)
    if unknown:
        raise _mismatch(
            f"Tensor `{unknown[0]}` is not one of {architecture}'s ({len(unknown)} unknown "
            "tensors in all): are the weights for another architecture?"
        )


def _check_one(
    name: str,
    entry: dict[str, Any],
    shape: list[Any],
    dtype_kind: str,
    architecture: str,
    num_classes: int | None,
    head: str,
) -> None:
    want = [num_classes if d == "classes" else d for d in shape]
    got = list(entry.get("shape", []))
    if len(got) != len(want) or any(
        w is not None and w != g for w, g in zip(want, got, strict=False)
    ):
        whose = (
            f"{architecture} with {num_classes} classes" if name.startswith(head) else architecture
        )
        raise _mismatch(
            f"Tensor `{name}` has shape {_shape_text(got)}; {whose} needs {_shape_text(want)}."
        )
    if entry.get("dtype") not in (_FLOAT_DTYPES if dtype_kind == "float" else _INT_DTYPES):
        needs = "a float type (F32, F16 or BF16)" if dtype_kind == "float" else "an integer type"
        raise _mismatch(
            f"Tensor `{name}` is stored as {entry.get('dtype')}; {architecture} needs {needs}."
        )
