"""The tensors of every registry architecture, written for the API to check uploads by.

The API never imports torch, yet must refuse at upload a safetensors file that does
not fit the architecture it claims. So the expected names, shapes and kinds of every
architecture's tensors are computed here, from torchvision, and committed as
`app/data/architecture_tensors.json`; `tests/worker/test_signatures.py` fails when
the registry and the file disagree. Regenerate with:

    .venv/bin/python -m worker.training.signatures
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from worker.training import registry

OUT = Path(__file__).resolve().parents[2] / "app" / "data" / "architecture_tensors.json"


def signature(name: str) -> dict[str, Any]:
    """{"head": prefix, "tensors": [[name, shape, "float"|"int"], ...]} in state-dict
    order. In a shape, "classes" is the class count (the head's first dimension) and
    null a size that depends on the image size (ViT's position embeddings)."""
    head = registry._spec(name).head
    # Built at two image sizes: a dimension that differs follows the image size.
    states = [registry._construct(name, 1, size).state_dict() for size in (224, 64)]
    tensors = []
    for key, value in states[0].items():
        other = states[1][key].shape
        shape: list[int | str | None] = [
            None if dim != other[i] else dim for i, dim in enumerate(value.shape)
        ]
        if key.startswith(head + "."):
            shape[0] = "classes"
        kind = "float" if torch.is_floating_point(value) else "int"
        tensors.append([key, shape, kind])
    return {"head": head, "tensors": tensors}


def all_signatures() -> dict[str, Any]:
    return {name: signature(name) for name in registry.NAMES}


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(all_signatures(), separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
