"""Ingestion throughput: how many images per second ingest() turns into a dataset.

Builds an archive of small photo-like JPEGs (smooth gradients plus noise, so they
compress like photographs, not like flat colour), then times ingest() on it:
extraction, per-image checks (full decode), dedupe, manifest, fsync and rename.

    .venv/bin/python bench/bench_ingest.py --images 3000 --size 256
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.services.ingest import DEFAULT_THREADS, IngestLimits, ingest

CLASSES = ("cat", "dog", "owl", "fox")
ROW = "| {:7} | {:>6} | {:>7} | {:>7} | {:>8} | {:>6} |"


def photo_like(rng: np.random.Generator, size: int) -> bytes:
    """Smooth gradients plus noise: compresses like a photograph, not like flat colour."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0, 255, 3) * x[..., None] + rng.uniform(0, 255, 3) * y[..., None]
    pixels = np.clip(base / 2 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def build_images(count: int, size: int) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        f"pets/{CLASSES[i % len(CLASSES)]}/{i:05d}.jpg": photo_like(rng, size) for i in range(count)
    }


def write_archive(path: Path, images: dict[str, bytes], fmt: str) -> Path:
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in images.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in images.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def time_ingest(archive: Path, work: Path, threads: int, repeats: int) -> float:
    best = float("inf")
    for i in range(repeats):
        dest = work / f"ds-{threads}-{i}"
        start = time.perf_counter()
        report = ingest(archive, dest, kind="labeled", limits=IngestLimits(), threads=threads)
        best = min(best, time.perf_counter() - start)
        assert report.num_images > 0 and not report.rejected
        shutil.rmtree(dest)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=256, help="side of each JPEG, px")
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs")
    parser.add_argument("--formats", default="zip,tar.gz")
    parser.add_argument("--threads", default=f"1,{DEFAULT_THREADS}")
    args = parser.parse_args()

    images = build_images(args.images, args.size)
    mean_kib = sum(len(d) for d in images.values()) / len(images) / 1024
    print(
        f"{args.images} JPEGs {args.size}x{args.size} px, {mean_kib:.1f} KiB each; "
        f"cpu_count={os.cpu_count()}, best of {args.repeats}"
    )
    print(ROW.format("archive", "MiB", "threads", "seconds", "images/s", "MiB/s"))
    print(ROW.format(*["---"] * 6))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        for fmt in args.formats.split(","):
            archive = write_archive(work / f"upload.{fmt}", images, fmt)
            mib = archive.stat().st_size / 2**20
            for threads in sorted({int(t) for t in args.threads.split(",")}):
                seconds = time_ingest(archive, work, threads, args.repeats)
                row = (fmt, f"{mib:.1f}", threads, f"{seconds:.2f}")
                print(ROW.format(*row, f"{args.images / seconds:.0f}", f"{mib / seconds:.1f}"))


if __name__ == "__main__":
    main()
