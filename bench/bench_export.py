"""Size, CPU latency and accuracy of the export variants (not a test; prints a table).

    .venv/bin/python bench/bench_export.py [--archs resnet18 mobilenet_v3_large]

For each architecture at 224 px: a torchvision model (weights=None: no internet here)
is briefly fitted to sklearn's digits upscaled to 224 px RGB, then exported through the
real pipeline (worker.export.pipeline.export_variants). Measured: PyTorch fp32 eager,
ONNX fp32, ONNX int8 (static QDQ) and ONNX fp16: file size, median latency at batch 1
and 32, top-1 on held-out digits.

The fit is a linear probe on random-init features, after recalibrating BatchNorm's
statistics on the data: a full fine-tune at 224 px is beyond a short CPU run, and this
still gives a model whose accuracy is far above chance, so a quantization loss shows.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.architectures import ARCHITECTURES
from worker.export.evaluate import Normalization, torch_latency, torch_logits
from worker.export.pipeline import export_variants
from worker.export.quantize import pick_calibration
from worker.training.types import ImageSet

SIZE = 224
NUM_CLASSES = 10


def digits_224(n_train: int, n_val: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))[: n_train + n_val]
    images = np.stack(
        [
            np.asarray(
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8))
                .resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                .convert("RGB")
            )
            for i in order
        ]
    )
    labels = digits.target[order].astype(np.int64)
    paths = [f"digits/{i}" for i in order]
    return (
        ImageSet(images[:n_train], labels[:n_train], paths[:n_train]),
        ImageSet(images[n_train:], labels[n_train:], paths[n_train:]),
    )


def head_of(model: nn.Module) -> nn.Linear:
    head = model.fc if hasattr(model, "fc") else model.classifier[-1]
    assert isinstance(head, nn.Linear)
    return head


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: np.ndarray, norm: Normalization) -> None:
    """Running statistics from the data (momentum None: a true average over batches)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for start in range(0, len(images), 32):
        model(torch.from_numpy(norm.apply(images[start : start + 32])))
    model.eval()


def linear_probe(model: nn.Module, train: ImageSet, norm: Normalization) -> None:
    head = head_of(model)
    features: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0]))
    torch_logits(model, train.images, norm, batch_size=32)
    hook.remove()
    x = torch.cat(features)
    x_mean, x_std = x.mean(0), x.std(0) + 1e-6
    y = torch.from_numpy(train.labels)
    probe = nn.Linear(x.shape[1], NUM_CLASSES)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        loss = nn.functional.cross_entropy(probe((x - x_mean) / x_std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Fold the feature standardisation into the head, so the model stays a plain model.
    with torch.no_grad():
        head.weight.copy_(probe.weight / x_std)
        head.bias.copy_(probe.bias - (probe.weight * x_mean / x_std).sum(1))


def fitted_model(arch: str, train: ImageSet, norm: Normalization) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=NUM_CLASSES)
    recalibrate_batchnorm(model, train.images[:256], norm)
    linear_probe(model, train, norm)
    return model.eval()


def state_dict_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def bench_arch(arch: str, train: ImageSet, val: ImageSet, threads: int, runs: int) -> list[dict]:
    a = ARCHITECTURES[arch]
    norm = Normalization.of(a.mean, a.std)
    t0 = time.perf_counter()
    model = fitted_model(arch, train, norm)
    fit_s = time.perf_counter() - t0
    calibration = train.images[pick_calibration(train.labels, n=128, seed=0)]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = export_variants(
            model, formats=["onnx", "onnx-int8", "onnx-fp16"], image_size=SIZE,
            mean=a.mean, std=a.std, class_names=[str(d) for d in range(NUM_CLASSES)],
            calibration_images=calibration, val=val, out_dir=Path(out),
            threads=threads, latency_runs=runs,
        )  # fmt: skip
        export_s = time.perf_counter() - t0
    eager = torch_latency(model, SIZE, threads=threads, runs=runs)
    print(f"# {arch}: fit {fit_s:.0f} s, export+evaluate {export_s:.0f} s", file=sys.stderr)
    rows = [
        {
            "variant": "torch fp32 eager",
            "size": state_dict_bytes(model),
            "b1": eager[1],
            "b32": eager[32],
            "acc": report.pytorch_accuracy,
        }
    ]
    for v in report.variants:
        rows.append(
            {
                "variant": v.format,
                "size": v.size_bytes,
                "b1": v.latency_ms["batch_1"],
                "b32": v.latency_ms["batch_32"],
                "acc": v.accuracy,
            }
        )
    for r in rows:
        r["arch"] = arch
        r["recommended"] = r["variant"] == report.recommended_artifact
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        "| model | variant | size MB | x fp32 size | b1 ms | b32 ms | b32 speed-up vs ONNX fp32"
        " | vs torch eager | top-1 % | drop pts |"
    )
    print(head)
    print("|---" * 10 + "|")
    for arch in dict.fromkeys(r["arch"] for r in rows):
        group = {r["variant"]: r for r in rows if r["arch"] == arch}
        fp32, eager = group["onnx"], group["torch fp32 eager"]
        for r in group.values():
            mark = " (recommended)" if r["recommended"] else ""
            print(
                f"| {arch} | {r['variant']}{mark} | {r['size'] / 1e6:.1f} "
                f"| {r['size'] / fp32['size']:.2f} | {r['b1']:.1f} | {r['b32']:.0f} "
                f"| {fp32['b32'] / r['b32']:.2f}x | {eager['b32'] / r['b32']:.2f}x "
                f"| {100 * r['acc']:.1f} | {100 * (eager['acc'] - r['acc']):+.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "mobilenet_v3_large"])
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, val = digits_224(args.train, args.val)
    rows = []
    for arch in args.archs:
        rows += bench_arch(arch, train, val, args.threads, args.runs)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
        f"train {len(train)} / val {len(val)} digits at {SIZE} px"
    )
    print_table(rows)


if __name__ == "__main__":
    main()
