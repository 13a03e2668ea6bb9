"""Size, CPU latency and accuracy of the export variants (not a test; prints a table).

    .venv/bin/python bench/bench_export.py [--archs resnet18 mobilenet_v3_large]

For each architecture at 224 px: a torchvision model (weights=None: no internet here)
is trained on sklearn's digits upscaled to 224 px RGB (see fitted_model), then exported through the
real pipeline (worker.export.pipeline.export_variants). Measured: PyTorch fp32 eager,
ONNX fp32, ONNX int8 (static QDQ) and ONNX fp16: file size, median latency at batch 1
and 32, top-1 on held-out digits.

Every layer is trained (from scratch at 64 px, then BatchNorm recalibrated and the last
stage fine-tuned at 224 px), so int8 is measured on learned features, as it would be on
a real fine-tuned model, not on random ones; a full fine-tune at 224 px is beyond a
short CPU run.
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
from worker.export.evaluate import Normalization, torch_latency
from worker.export.pipeline import export_variants
from worker.export.quantize import pick_calibration
from worker.training.types import ImageSet

SIZE = 224
PRETRAIN_SIZE = 64
PRETRAIN_EPOCHS = 6
FINETUNE_EPOCHS = 4
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


def split_at_stage(arch: str, model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(frozen stem, trainable tail) of the model; tail(stem(x)) == model(x).

    The tail is the last stage, which runs at 7x7 at 224 px: cheap to train on CPU.
    """
    if arch.startswith("resnet"):
        r = model
        stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
        tail = nn.Sequential(r.layer4, r.avgpool, nn.Flatten(1), r.fc)
    elif arch.startswith("mobilenet_v3"):
        m = model
        stem = m.features[:13]
        tail = nn.Sequential(m.features[13:], m.avgpool, nn.Flatten(1), m.classifier)
    else:
        raise ValueError(f"no stage split for {arch}")
    return stem, tail


def resized(images: np.ndarray, norm: Normalization, size: int) -> torch.Tensor:
    x = torch.from_numpy(norm.apply(images))
    return nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def train_epochs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int = 0
) -> None:
    """AdamW with a one-cycle schedule, batches of 32, in train mode (BatchNorm too)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    steps = epochs * -(-len(x) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), 32):
            i = perm[start : start + 32]
            loss = nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


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


def fitted_model(arch: str, train: ImageSet, norm: Normalization) -> nn.Module:
    """A model that learned the task, in a few CPU minutes and without downloaded weights.

    1. Train every layer from scratch at PRETRAIN_SIZE px (cheap: ~1/12 of 224 px work).
    2. Recalibrate BatchNorm statistics at 224 px (activations' scale changes with size).
    3. Fine-tune the last stage and the head at 224 px on cached stem features.
    """
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=NUM_CLASSES)
    y = torch.from_numpy(train.labels)
    train_epochs(model, resized(train.images, norm, PRETRAIN_SIZE), y, PRETRAIN_EPOCHS, 2e-3)
    recalibrate_batchnorm(model, train.images[:256], norm)
    stem, tail = split_at_stage(arch, model)
    with torch.inference_mode():
        features = torch.cat(
            [
                stem(torch.from_numpy(norm.apply(b)))
                for b in np.split(train.images, range(32, len(train), 32))
            ]
        )
    for p in stem.parameters():
        p.requires_grad_(False)
    train_epochs(tail, features.clone(), y, FINETUNE_EPOCHS, 1e-3)
    for p in stem.parameters():
        p.requires_grad_(True)
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
