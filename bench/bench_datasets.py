"""Datasets benchmark: memory of a 1 GiB upload, and what the decode-once cache saves.

(i) Upload: a real `graft api` process (embedded defaults, fresh GRAFT_DATA_DIR) receives
    a 1 GiB multipart upload that httpx streams from a file on disk. The file is a zip of
    stored (uncompressed) random bytes, so its size on disk is its size on the wire.
    Reported: the API's RSS before, its peak during the upload (VmRSS sampled every 10 ms,
    and VmHWM), the growth, the upload size, and the peak bytes in the process's TMPDIR
    (where Starlette spools multipart files) and in the data dir's tmp/. A second run with
    GRAFT_MAX_UPLOAD_BYTES under the upload size times the 413.
(ii) Epochs: photo-like 256 px JPEGs are zipped and ingested (ingestion throughput), then
    trained at 64 px with one plain loop, fed either from the decode-once cache
    (worker.training.data.decoded_images: uint8 arrays, memory-mapped) or by decoding and
    resizing every JPEG every epoch (app.imaging.load_rgb + to_array, what the cache does
    once). Seconds per epoch are for epochs after the first; the loop is the same.

    .venv/bin/python bench/bench_datasets.py                # both parts, a few minutes
    .venv/bin/python bench/bench_datasets.py --part upload  # or --part epochs
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.imaging import load_rgb, to_array  # noqa: E402
from app.services.ingest import IngestLimits, ingest  # noqa: E402
from bench.bench_ingest import CLASSES, photo_like  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
ADMIN_KEY = "bench-admin-key"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


# -- (i) upload memory ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_noise_zip(path: Path, total: int, entry: int = 16 * MiB) -> int:
    """A zip of stored entries of random bytes, `total` bytes of payload in all."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(max(1, total // entry)):
            folder = CLASSES[i % 2]
            with zf.open(f"noise/{folder}/{i:04d}.bin", "w") as out:
                for _ in range(entry // MiB):
                    out.write(os.urandom(MiB))
    return path.stat().st_size


def tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with suppress(FileNotFoundError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def open_file_bytes(pid: int, under: Path) -> int:
    """Bytes in the unnamed files `pid` holds open under a folder: Python's TemporaryFile
    (where Starlette spools uploads) uses O_TMPFILE, which no directory listing shows."""
    total = 0
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except FileNotFoundError:
        return 0
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
            # Named files are counted by tree_bytes; only unnamed or unlinked ones here.
            if target.startswith(str(under)) and target.endswith(" (deleted)"):
                total += os.stat(f"{fd_dir}/{fd}").st_size
        except OSError:
            pass
    return total


def proc_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


@dataclass
class Sampler:
    """Samples the API's VmRSS (10 ms) and the bytes under some folders (100 ms), files
    the API holds open there included."""

    pid: int
    folders: dict[str, Path]
    peak_rss_kib: int = 0
    peak_bytes: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self.peak_bytes = dict.fromkeys(self.folders, 0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self.peak_rss_kib = max(self.peak_rss_kib, proc_kib(self.pid, "VmRSS"))
            if tick % 10 == 0:
                for name, folder in self.folders.items():
                    now = tree_bytes(folder) + open_file_bytes(self.pid, folder)
                    self.peak_bytes[name] = max(self.peak_bytes[name], now)
            tick += 1
            time.sleep(0.01)


def graft_command() -> list[str]:
    """`.venv/bin/graft`, or `python -m app.cli` (the same main) where that script cannot
    import the project (an editable install made before the packages existed)."""
    script = REPO / ".venv" / "bin" / "graft"
    probe = subprocess.run([str(script), "--help"], capture_output=True, cwd=REPO)
    if probe.returncode == 0:
        return [str(script)]
    print(
        f"note: {script} fails ({probe.stderr.decode().strip().splitlines()[-1]}); "
        "using `python -m app.cli` instead",
        flush=True,
    )
    return [sys.executable, "-m", "app.cli"]


class ApiProcess:
    """`graft migrate`, then `graft api` on a free port, with its own data dir and TMPDIR."""

    def __init__(self, root: Path, **extra_env: str) -> None:
        self.root = root
        self.data = root / "data"
        self.spool = root / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = {
            **os.environ,
            "GRAFT_DATA_DIR": str(self.data),
            "GRAFT_DATABASE_URL": "",
            "GRAFT_BROKER_URL": "",
            "GRAFT_ADMIN_KEY": ADMIN_KEY,
            "TMPDIR": str(self.spool),
            **extra_env,
        }
        graft = graft_command()
        subprocess.run([*graft, "migrate"], env=self.env, cwd=REPO, check=True)
        self.log = (root / "api.log").open("wb")
        self.proc = subprocess.Popen(
            [*graft, "api", "--port", str(self.port)],
            env=self.env,
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"the API did not start; see {root / 'api.log'}")

    def team_key(self) -> str:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        team = httpx.post(f"{self.url}/v1/teams", json={"name": "bench"}, headers=admin)
        key = httpx.post(f"{self.url}/v1/teams/{team.json()['id']}/keys", headers=admin)
        return str(key.json()["key"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass
class UploadRun:
    label: str
    size: int
    status: int
    code: str
    seconds: float
    rss_before: int
    rss_peak: int
    hwm: int
    spool_peak: int
    data_tmp_peak: int
    leftovers: int


def upload_once(root: Path, archive: Path, label: str, **extra_env: str) -> UploadRun:
    api = ApiProcess(root, **extra_env)
    try:
        key = api.team_key()
        headers = {"Authorization": f"Bearer {key}"}
        # A small upload first, so lazy imports and pools are in place before measuring.
        warm = io.BytesIO()
        with zipfile.ZipFile(warm, "w") as zf:
            for i, cls in enumerate(CLASSES[:2]):
                zf.writestr(f"{cls}/0.png", png_bytes(i))
        files = {"file": ("warm.zip", warm.getvalue(), "application/zip")}
        httpx.post(f"{api.url}/v1/datasets", files=files, headers=headers, timeout=60)
        time.sleep(0.5)
        rss_before = proc_kib(api.proc.pid, "VmRSS")
        folders = {"spool": api.spool, "data_tmp": api.data / "tmp"}
        with Sampler(api.proc.pid, folders) as sampler, archive.open("rb") as fh:
            start = time.perf_counter()
            r = httpx.post(
                f"{api.url}/v1/datasets",
                files={"file": ("big.zip", fh, "application/zip")},
                data={"name": "big"},
                headers=headers,
                timeout=None,
            )
            seconds = time.perf_counter() - start
        body = r.json()
        code = body["error"]["code"] if body.get("error") else body["status"]
        hwm = proc_kib(api.proc.pid, "VmHWM")
        leftovers = tree_bytes(api.spool) + tree_bytes(api.data / "tmp")
        return UploadRun(
            label=label,
            size=archive.stat().st_size,
            status=r.status_code,
            code=code,
            seconds=seconds,
            rss_before=rss_before,
            rss_peak=max(sampler.peak_rss_kib, rss_before),
            hwm=hwm,
            spool_peak=sampler.peak_bytes["spool"],
            data_tmp_peak=sampler.peak_bytes["data_tmp"],
            leftovers=leftovers,
        )
    finally:
        api.stop()
        shutil.rmtree(root, ignore_errors=True)


def png_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bench_upload(work: Path, size: int) -> list[str]:
    free = shutil.disk_usage(work).free
    if free < 3 * size + GiB:
        raise SystemExit(f"need {3 * size + GiB} free bytes under {work}, have {free}")
    archive = work / "noise.zip"
    t = time.perf_counter()
    write_noise_zip(archive, size)
    print(
        f"built {archive.stat().st_size / MiB:.0f} MiB archive in {time.perf_counter() - t:.1f} s"
    )
    runs = [upload_once(work / "run-accept", archive, "default limits")]
    limit = size // 4
    runs.append(
        upload_once(
            work / "run-413",
            archive,
            f"GRAFT_MAX_UPLOAD_BYTES={limit // MiB} MiB",
            GRAFT_MAX_UPLOAD_BYTES=str(limit),
        )
    )
    archive.unlink()
    lines = [
        "| run | upload MiB | answer | seconds | RSS before MiB | RSS peak MiB (VmHWM) "
        "| growth MiB | TMPDIR spool peak MiB | data/tmp peak MiB | left behind |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| {r.label} | {r.size / MiB:.0f} | {r.status} {r.code} | {r.seconds:.1f} "
            f"| {r.rss_before / 1024:.1f} | {r.rss_peak / 1024:.1f} ({r.hwm / 1024:.1f}) "
            f"| {(r.rss_peak - r.rss_before) / 1024:.1f} | {r.spool_peak / MiB:.0f} "
            f"| {r.data_tmp_peak / MiB:.0f} | {r.leftovers} B |"
        )
    return lines


# -- (ii) decode once vs decode every epoch -------------------------------------


def build_dataset(work: Path, count: int, source_size: int) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "photos.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"{CLASSES[i % 4]}/{i:05d}.jpg", photo_like(rng, source_size))
    t = time.perf_counter()
    report = ingest(archive, work / "dataset", kind="labeled", limits=IngestLimits())
    seconds = time.perf_counter() - t
    mib = archive.stat().st_size / MiB
    archive.unlink()
    line = (
        f"| ingest() of a {mib:.1f} MiB zip | {report.num_images} images | {seconds:.2f} s "
        f"| {report.num_images / seconds:.0f} images/s | {mib / seconds:.1f} MiB/s |"
    )
    return work / "dataset", [line]


class TinyNet:
    """A two-conv network: a model whose step costs less than decoding its batch."""

    @staticmethod
    def build(num_classes: int) -> object:
        from torch import nn

        return nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, num_classes),
        )


def make_model(name: str, num_classes: int) -> object:
    import torchvision

    if name == "tiny":
        return TinyNet.build(num_classes)
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


Batches = Callable[[np.ndarray], np.ndarray]


@dataclass
class Run:
    """One model and optimizer, fed by one function that turns indices into a batch."""

    feed: str
    batch_of: Batches
    model: object
    opt: object
    epochs: list[tuple[float, float]] = field(default_factory=list)  # (seconds, data seconds)


def train_one_epoch(
    run: Run, order: np.ndarray, labels: np.ndarray, batch: int, norm: tuple[object, object]
) -> None:
    import torch

    model, opt = run.model, run.opt
    assert isinstance(model, torch.nn.Module) and isinstance(opt, torch.optim.Optimizer)
    mean, std = norm
    model.train()
    data_s = 0.0
    start = time.perf_counter()
    for i in range(0, len(order), batch):
        idx = np.sort(order[i : i + batch])
        t = time.perf_counter()
        x = torch.from_numpy(run.batch_of(idx)).permute(0, 3, 1, 2).float().div_(255)
        x = (x - mean) / std
        y = torch.from_numpy(labels[idx])
        data_s += time.perf_counter() - t
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    run.epochs.append((time.perf_counter() - start, data_s))


def compare_feeds(
    model_name: str, labels: np.ndarray, feeds: dict[str, Batches], epochs: int, batch: int
) -> list[Run]:
    """Same model, same initial weights, same batches; epochs alternate between the feeds so
    that drift in the machine's load hits both alike."""
    import torch

    runs = []
    for feed, fn in feeds.items():
        torch.manual_seed(0)
        model = make_model(model_name, int(labels.max()) + 1)
        assert isinstance(model, torch.nn.Module)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs.append(Run(feed, fn, model, opt))
    norm = (torch.from_numpy(MEAN), torch.from_numpy(STD))
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(labels))
        for run in runs:
            train_one_epoch(run, order, labels, batch, norm)
    return runs


def bench_epochs(
    work: Path,
    count: int,
    source_size: int,
    size: int,
    batch: int,
    models: list[tuple[str, int, int]],
) -> tuple[list[str], list[str]]:
    from worker.training.data import decoded_images, load_manifest

    dataset, ingest_lines = build_dataset(work, count, source_size)
    manifest = load_manifest(dataset)
    items = manifest["items"]
    labels_all = np.asarray([int(it["label"]) for it in items], dtype=np.int64)
    paths_all = [str(dataset / it["path"]) for it in items]
    t = time.perf_counter()
    cached = decoded_images(dataset, manifest, size)
    build_s = time.perf_counter() - t
    cache_mib = (dataset / "cache" / f"{size}.npy").stat().st_size / MiB
    ingest_lines.append(
        f"| cache build (decode + resize once, {size} px) | {len(items)} images "
        f"| {build_s:.2f} s | {len(items) / build_s:.0f} images/s | {cache_mib:.1f} MiB on disk |"
    )

    def from_cache(idx: np.ndarray) -> np.ndarray:
        return np.asarray(cached[idx])

    def decode(idx: np.ndarray) -> np.ndarray:
        return np.stack([to_array(load_rgb(paths_all[i]), size) for i in idx])

    feeds = {"decode-once cache": from_cache, "decode every epoch": decode}
    lines = [
        "| model | images | epochs | feed | s/epoch (median after 1st) | of which data s "
        "| cache speed-up |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for model_name, n, epochs in models:
        n = min(n, len(items))
        runs = compare_feeds(model_name, labels_all[:n], feeds, epochs, batch)
        medians = {
            run.feed: (
                float(np.median([s for s, _ in run.epochs[1:]])),
                float(np.median([d for _, d in run.epochs[1:]])),
            )
            for run in runs
        }
        fast, slow = medians["decode-once cache"][0], medians["decode every epoch"][0]
        for feed, (sec, data_s) in medians.items():
            ratio = f"{slow / fast:.2f}x" if feed == "decode-once cache" else ""
            lines.append(
                f"| {model_name} | {n} | {epochs} | {feed} | {sec:.2f} | {data_s:.2f} | {ratio} |"
            )
        print("\n".join(lines[-2:]), flush=True)
    return ingest_lines, lines


def machine() -> str:
    import torch

    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} CPU cores ({platform.processor() or 'unknown'}), "
        f"load average {load[0]:.1f} at the end, Python {platform.python_version()}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, CPU only"
    )


@contextmanager
def workdir(base: str | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="graft-bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["all", "upload", "epochs"], default="all")
    p.add_argument("--upload-mib", type=int, default=1024)
    p.add_argument("--images", type=int, default=2000, help="JPEGs for the epoch benchmark")
    p.add_argument("--source-size", type=int, default=256)
    p.add_argument("--size", type=int, default=64, help="training image size")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4, help="epochs per feed (the first is dropped)")
    p.add_argument("--resnet-images", type=int, default=640, help="images for resnet18")
    p.add_argument("--resnet-epochs", type=int, default=3)
    p.add_argument("--tmp", default=None, help="where the temporary files go")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; on an oversubscribed 2-core VM one thread is 2-10x faster "
        "per step than two, whose OpenMP barriers wait on descheduled threads",
    )
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out: list[str] = []
    started = time.perf_counter()
    with workdir(args.tmp) as work:
        if args.part in ("all", "upload"):
            out += ["### Upload memory (`graft api`, embedded defaults)", ""]
            out += bench_upload(work, args.upload_mib * MiB)
            out.append("")
            print("\n".join(out), flush=True)
        if args.part in ("all", "epochs"):
            models = [
                ("tiny", args.images, args.epochs),
                ("resnet18", args.resnet_images, args.resnet_epochs),
            ]
            ingest_lines, epoch_lines = bench_epochs(
                work / "epochs", args.images, args.source_size, args.size, args.batch, models
            )
            out += ["### Ingestion and cache build", ""]
            out += [
                "| step | images | seconds | images/s | size |",
                "| --- | ---: | ---: | ---: | ---: |",
            ]
            out += [*ingest_lines, ""]
            out += [f"### Epochs at {args.size} px, batch {args.batch}, SGD, fp32", ""]
            out += [*epoch_lines, ""]
    out.append(f"Machine: {machine()}. Total wall time {time.perf_counter() - started:.0f} s.")
    print()
    print("\n".join(out))


if __name__ == "__main__":
    main()
