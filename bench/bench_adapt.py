"""Domain adaptation benchmark (not a test): prints markdown tables.

Shifted digits (bench/domain_shift.py: UCI digits -> MNIST-M-style colour renderings),
in both target polarities: dark_on_light (inverted strokes, the MNIST-M-like default) and
light_on_dark (the source's polarity; a colour and texture shift only).
A source model (resnet18, weights none) is trained on the source digits under each
source recipe: `plain` (crop and flip augmentation) and `polarity` (strong augmentation
with random_invert 0.5, so the model sees both stroke polarities). Each method then
adapts a copy of it with the job spec's default options, through the same entry point
the worker calls (worker.adapt.adapt), and is scored on the labelled target test split,
which no method sees. By default the guard runs on unlabeled evidence only (no
target_eval), as it would for a team without target labels; --target-eval N gives it N
labelled target training images instead. Upper bound: the same source model fine-tuned
on the target training images *with* their labels, under the same recipe.

    .venv/bin/python bench/bench_adapt.py [--recipes plain] [--polarity dark_on_light]
        [--methods adabn tent] [--target-eval 50] [--size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.domain_shift import CLASS_NAMES, DomainShift, Polarity, build
from worker.adapt import adapt
from worker.training import engine, registry
from worker.training.types import Hooks, ImageSet, TrainConfig

CPU = torch.device("cpu")
METHODS = ("adabn", "tent", "dann", "mcc", "pseudo_label", "auto")
# Source training recipes: the job spec's hyperparameters that differ between them.
RECIPES: dict[str, dict[str, Any]] = {
    "plain": {"augmentation": "light"},
    "polarity": {"augmentation": "strong", "random_invert": 0.5},
}


def source_config(args: argparse.Namespace, recipe: str = "plain") -> TrainConfig:
    base = TrainConfig(
        architecture=args.arch,
        num_classes=10,
        strategy="full",
        epochs=args.epochs,
        batch_size=32,
        learning_rate=3e-3,
        image_size=args.size,
        seed=args.seed,
        mixed_precision="fp32",
    )
    return replace(base, **RECIPES[recipe])


def fit(
    model: torch.nn.Module, cfg: TrainConfig, train: ImageSet, val: ImageSet
) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as workdir:
        result = engine.fit(model, cfg, train, val, CLASS_NAMES, Hooks(), Path(workdir), CPU)
    return result.state_dict


def model_from(cfg: TrainConfig, state: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    if state is None:
        return registry.build_model(
            cfg.architecture,
            10,
            weights="none",
            cache_dir=Path("unused"),
            image_size=cfg.image_size,
        )
    return registry.build_from_state(cfg.architecture, 10, state, cfg.image_size)


def accuracy(model: torch.nn.Module, data: ImageSet, cfg: TrainConfig) -> float:
    return engine.evaluate(model, data, cfg, CPU)[1]


def run_method(
    method: str,
    cfg: TrainConfig,
    state: dict[str, torch.Tensor],
    d: DomainShift,
    target_eval: ImageSet | None = None,
) -> dict[str, Any]:
    model = model_from(cfg, state)
    start = time.perf_counter()
    result = adapt(
        model,
        {"method": method},
        cfg=cfg,
        source_val=d.source_val,
        source_train=d.source_train,
        target=d.target_train.images,
        target_eval=target_eval,
        device=CPU,
        hooks=Hooks(),
        class_names=CLASS_NAMES,
    )
    seconds = time.perf_counter() - start
    shipped = accuracy(model, d.target_test, cfg)
    return {
        "target": shipped,
        "source_val": result.report["source_val_accuracy"]["after"],
        "kept": result.kept,
        "seconds": seconds,
        "detail": _detail(method, result.history, result.report),
    }


def _detail(method: str, history: list[dict[str, Any]], report: dict[str, Any]) -> str:
    notes = []
    if method == "dann":
        notes.append("domain acc/epoch " + " ".join(f"{h['domain_accuracy']:.2f}" for h in history))
    if method == "pseudo_label":
        notes.append("pseudo-labels/round " + " ".join(str(h["pseudo_labels"]) for h in history))
    if method == "mcc":
        notes.append(
            f"class confusion {history[0]['class_confusion']:.3f} -> "
            f"{history[-1]['class_confusion']:.3f}"
        )
    if method == "tent":
        notes.append(f"entropy {history[0]['entropy']:.2f} -> {history[-1]['entropy']:.2f}")
    if method == "auto":
        a = report["auto"]
        scores = " ".join(
            f"{c['method']} {c['target_eval_accuracy']:.2f}"
            for c in a["candidates"]
            if "target_eval_accuracy" in c
        )
        test = a["paired_test"]
        notes.append(
            f"chose {a['chosen']} (labelled target acc: {scores}); paired test "
            f"+{test['gained']}/-{test['lost']}, p={test['p_value']:.2g} vs {test['alpha']:.2g}"
        )
    if "target_eval_accuracy" in report:
        acc = report["target_eval_accuracy"]
        notes.append(f"guard's target eval acc {acc['before']:.2f} -> {acc['after']:.2f}")
    return "; ".join(notes)


def upper_bound(cfg: TrainConfig, state: dict[str, torch.Tensor], d: DomainShift) -> float:
    """The source model fine-tuned on labelled target images (80/20 train/val split)."""
    n = len(d.target_train)
    order = np.random.default_rng(cfg.seed).permutation(n)
    cut = int(0.8 * n)
    t = d.target_train
    train, val = (
        ImageSet(t.images[i], t.labels[i], [t.paths[j] for j in i])
        for i in (order[:cut], order[cut:])
    )
    model = model_from(cfg, state)
    fit(model, cfg, train, val)
    return accuracy(model, d.target_test, cfg)


def labelled_sample(data: ImageSet, n: int) -> ImageSet | None:
    """The first n images of a split with their labels (None for n = 0)."""
    if n == 0:
        return None
    return ImageSet(data.images[:n], data.labels[:n], data.paths[:n])


def source_state(
    args: argparse.Namespace, cfg: TrainConfig, d: DomainShift, recipe: str
) -> dict[str, torch.Tensor]:
    """Train the source model, or reuse the one --cache saved (for tuning runs only)."""
    name = f"adapt_source_{args.arch}_{args.size}_{args.seed}_{recipe}.pt"
    path = Path(__file__).parent / "out" / name
    if args.cache and path.is_file():
        state: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
        return state
    state = fit(model_from(cfg, None), cfg, d.source_train, d.source_val)
    if args.cache:
        path.parent.mkdir(exist_ok=True)
        torch.save(state, path)
    return state


Row = tuple[str, float, float, str, float, str]
# For scale only: other data (the real MNIST-M), other network, full-size images.
PUBLISHED: list[Row] = [
    ("published: MNIST -> MNIST-M, source only", 0.5225, float("nan"), "-", float("nan"), ""),
    (
        "published: MNIST -> MNIST-M, DANN",
        0.7666,
        float("nan"),
        "-",
        float("nan"),
        "Ganin et al., JMLR 2016, Table 2",
    ),
]


def table(
    cfg: TrainConfig, state: dict[str, torch.Tensor], d: DomainShift, args: argparse.Namespace
) -> list[Row]:
    source_model = model_from(cfg, state)
    rows: list[Row] = [
        (
            "source only",
            accuracy(source_model, d.target_test, cfg),
            accuracy(source_model, d.source_val, cfg),
            "-",
            0.0,
            "",
        )
    ]
    target_eval = labelled_sample(d.target_train, args.target_eval)
    for method in args.methods:
        labelled = target_eval
        if method == "auto" and labelled is None:
            labelled = labelled_sample(d.target_train, args.auto_eval)
        r = run_method(method, cfg, state, d, labelled)
        rows.append((method, r["target"], r["source_val"], r["kept"], r["seconds"], r["detail"]))
        print(f"done {method}: {r}", file=sys.stderr, flush=True)
    if not args.no_upper_bound:
        start = time.perf_counter()
        acc = upper_bound(cfg, state, d)
        name = "upper bound (labelled target)"
        rows.append((name, acc, float("nan"), "-", time.perf_counter() - start, ""))
    return rows


def print_table(rows: list[Row], title: str) -> None:
    base = rows[0][1]
    print(f"\n{title}\n")
    print("| method | target test acc % | vs source only | source val acc % | kept | s | notes |")
    print("|---|---|---|---|---|---|---|")
    for name, tgt, src, kept, secs, notes in rows:
        source_val = "-" if np.isnan(src) else f"{100 * src:.1f}"
        gain = "-" if name.startswith("published") else f"{100 * (tgt - base):+.1f}"
        seconds = "-" if np.isnan(secs) else f"{secs:.0f}"
        print(
            f"| {name} | {100 * tgt:.1f} | {gain} | {source_val} | {kept} | {seconds} | {notes} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=8, help="source training epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    polarities = list(get_args(Polarity))
    p.add_argument("--polarity", nargs="*", default=polarities, choices=polarities)
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument(
        "--target-eval",
        type=int,
        default=0,
        help="give the guard this many labelled target training images (default: none)",
    )
    p.add_argument(
        "--auto-eval",
        type=int,
        default=200,
        help="labelled target training images for auto when --target-eval is 0",
    )
    p.add_argument("--no-upper-bound", action="store_true")
    p.add_argument("--cache", action="store_true", help="reuse the source model (bench/out/)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    guard = f"{args.target_eval} labelled target images" if args.target_eval else "no labels"
    for recipe in args.recipes:
        cfg = source_config(args, recipe)
        start = time.perf_counter()
        # The source splits do not depend on the target's rendering: one model serves both.
        state = source_state(args, cfg, build(args.size, args.seed), recipe)
        print(f"source model: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        for polarity in args.polarity:
            d = build(args.size, args.seed, polarity=polarity)
            rows = table(cfg, state, d, args)
            print_table(
                rows + (PUBLISHED if polarity == "mnist_m" else []),
                f"source recipe {recipe} ({RECIPES[recipe]}), target {polarity}, guard "
                f"with {guard}; {args.arch}, {args.size} px, seed {args.seed}; source "
                f"{len(d.source_train)} train / {len(d.source_val)} val, target "
                f"{len(d.target_train)} unlabeled / {len(d.target_test)} test",
            )


if __name__ == "__main__":
    main()
