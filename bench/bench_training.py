"""Training engine benchmark (not a test): prints a markdown table.

(a) images/s of the engine's `full` training phase against a plain hand-written PyTorch
    loop: same model, data, batch size, image size, threads and augmentation (the plain
    loop calls the same batch augmentation). The first epoch of each run is warm-up and
    is not counted; runs are interleaved and the best epoch of --repeats runs is kept,
    because this machine's cores are shared with other work.
(b) a 20-epoch linear probe with the feature cache against one that runs the frozen
    backbone every epoch: wall time ratio and accuracy.

    .venv/bin/python bench/bench_training.py [--device cpu] [--size 32] ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.worker.conftest import digits_images, imageset
from worker.training import augment, engine, registry
from worker.training.types import Hooks, ImageSet, Progress, TrainConfig

NAMES = [str(i) for i in range(10)]


def data(size: int, n_train: int, n_val: int) -> tuple[ImageSet, ImageSet]:
    images, labels = digits_images(size)
    order = np.random.default_rng(0).permutation(len(labels))
    return (
        imageset(images, labels, order[:n_train]),
        imageset(images, labels, order[n_train : n_train + n_val]),
    )


def new_model(cfg: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.build_model(
        cfg.architecture, 10, weights="none", cache_dir=Path("unused"), image_size=cfg.image_size
    )


def engine_images_per_second(
    cfg: TrainConfig, train: ImageSet, val: ImageSet, dev: torch.device
) -> list[float]:
    ends: list[Progress] = []
    hooks = Hooks(on_progress=lambda p: ends.append(p) if p.step == p.steps_per_epoch else None)
    with tempfile.TemporaryDirectory() as d:
        engine.fit(new_model(cfg), cfg, train, val, NAMES, hooks, Path(d), dev)
    # Throughput of the training phase of each epoch after the first (eval excluded).
    return [p.images_per_second or 0.0 for p in ends[1:]]


def plain_images_per_second(cfg: TrainConfig, train: ImageSet, dev: torch.device) -> list[float]:
    """What one would write by hand: shuffle, slice, augment, forward, backward, step."""
    model = new_model(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    mean = torch.tensor(cfg.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=dev).view(1, 3, 1, 1)
    labels = torch.from_numpy(train.labels)
    rates = []
    for epoch in range(1, cfg.epochs + 1):
        _sync(dev)
        start = time.perf_counter()
        order = torch.randperm(len(train))
        for i in range(0, len(train), cfg.batch_size):
            idx = order[i : i + cfg.batch_size].numpy()
            raw = torch.from_numpy(train.images[idx]).to(dev)
            gen = augment.step_generator(0, epoch, i)
            x = augment.to_model_input(raw, mean, std, cfg.augmentation, gen, False)
            loss = F.cross_entropy(model(x), labels[idx].to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
        _sync(dev)
        rates.append(len(train) / (time.perf_counter() - start))
    return rates[1:]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_full(args: argparse.Namespace, dev: torch.device) -> list[str]:
    train, val = data(args.size, args.train, 64)
    rows = []
    for aug in ("none", "light"):
        cfg = TrainConfig(
            architecture=args.arch,
            num_classes=10,
            strategy="full",
            epochs=args.epochs,
            batch_size=args.batch,
            image_size=args.size,
            augmentation=aug,
            mixed_precision="fp32",
        )
        eng: list[float] = []
        plain: list[float] = []
        for r in range(args.repeats):
            # Alternate which goes first, so neither always runs in the other's wake.
            if r % 2:
                plain += plain_images_per_second(cfg, train, dev)
            eng += engine_images_per_second(cfg, train, val, dev)
            if not r % 2:
                plain += plain_images_per_second(cfg, train, dev)
        rows.append(
            f"| full, augmentation {aug} | {max(eng):.1f} | {max(plain):.1f} | "
            f"{max(eng) / max(plain):.3f} | {np.median(eng) / np.median(plain):.3f} |"
        )
    return [
        f"(a) `full` training phase, {args.arch} at {args.size} px, batch {args.batch}, "
        f"{args.train} images, best epoch of 2-{args.epochs} over {args.repeats} runs each, "
        f"{torch.get_num_threads()} threads, {dev}",
        "",
        "| run | engine images/s (best) | plain loop images/s (best) | ratio | ratio of medians |",
        "|---|---|---|---|---|",
        *rows,
    ]


def bench_probe(args: argparse.Namespace, dev: torch.device) -> list[str]:
    train, val = data(args.probe_size, args.probe_train, args.probe_val)
    cfg = TrainConfig(
        architecture=args.arch,
        num_classes=10,
        strategy="linear_probe",
        epochs=20,
        batch_size=args.batch,
        image_size=args.probe_size,
        learning_rate=1e-2,
        mixed_precision="fp32",
    )
    rows, times, accs = [], {}, {}
    for cache in (True, False):
        with tempfile.TemporaryDirectory() as d:
            start = time.perf_counter()
            r = engine.fit(
                new_model(cfg), cfg, train, val, NAMES, Hooks(), Path(d), dev, feature_cache=cache
            )
            times[cache], accs[cache] = time.perf_counter() - start, r.report["accuracy"]
        rows.append(f"| feature_cache={cache} | {times[cache]:.1f} | {100 * accs[cache]:.1f} |")
    return [
        f"(b) linear_probe, 20 epochs, {args.arch} at {args.probe_size} px (weights none), "
        f"{args.probe_train} train / {args.probe_val} val images, {dev}",
        "",
        "| run | wall s | val accuracy % (kept epoch) |",
        "|---|---|---|",
        *rows,
        "",
        f"speed-up {times[False] / times[True]:.1f}x, accuracy difference "
        f"{100 * abs(accs[True] - accs[False]):.1f} points",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--train", type=int, default=384)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--probe-size", type=int, default=24)
    p.add_argument("--probe-train", type=int, default=800)
    p.add_argument("--probe-val", type=int, default=300)
    p.add_argument("--skip", choices=["full", "probe"], default=None)
    args = p.parse_args()
    dev = engine.select_device(args.device)
    out: list[str] = []
    if args.skip != "full":
        out += [*bench_full(args, dev), ""]
    if args.skip != "probe":
        out += bench_probe(args, dev)
    print("\n".join(out))


if __name__ == "__main__":
    main()
