"""The `graft` command: serve, api, worker, migrate."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from app.config import get_settings


def migrate(_: argparse.Namespace) -> int:
    from app.db.migrate import upgrade

    settings = get_settings()
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url)
    print(f"database at head: {_redact(settings.sqlalchemy_url)}")
    return 0


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


# The serving process's cyclic collector: a young-generation pass every 100,000
# allocations, not 700 (a request allocates thousands of short-lived objects, and the
# passes were a fifth of a poll's time), and full passes a fifth as often.
SERVING_GC_THRESHOLDS = (100_000, 20, 50)


def api(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    app = create_app()
    # What start-up built (routes, schemas, settings, the imported libraries) lives as
    # long as the process: frozen out of the collector's sight, a full pass no longer
    # walks it between requests (those pauses made the list's p99, bench/bench_api.py).
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=get_settings().access_log,
        timeout_graceful_shutdown=get_settings().api_shutdown_seconds,
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    from app.queue import worker_queues
    from worker.celery_app import app as celery_app
    from worker.launcher import worker_devices

    settings = get_settings()
    if settings.is_remote_storage:
        from app.object_store import StoreUnavailable, object_store

        try:
            object_store(settings).check()
        except StoreUnavailable as exc:
            # At start-up, not at the first job: nothing could be stored or fetched.
            log.error("GRAFT_STORAGE_URL %s: %s", settings.storage_url, exc)
            return 2
    devices = worker_devices(settings.worker_devices)
    # The worker announces its devices by the queues it consumes: those of every
    # device count up to its own (app/queue.py).
    queues = worker_queues(args.queues.split(","), devices, settings.ingest_queue)
    log.info("worker with %d device(s), consuming %s", devices, ",".join(queues))
    argv = [
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(args.concurrency),
        # One process per GPU: solo runs the job in the worker's own process, where
        # the SIGTERM and heartbeat handling live; more than one uses prefork.
        "--pool",
        "solo" if args.concurrency == 1 else "prefork",
        "--hostname",
        f"graft-{os.getpid()}@%h",
        "--loglevel",
        args.loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    celery_app.worker_main(argv)
    return 0


# How long `serve` waits for its worker to checkpoint and exit before killing it.
WORKER_STOP_SECONDS = 60
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
log = logging.getLogger(__name__)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(args: argparse.Namespace) -> int:
    """Migrate, start one worker process, and serve the API until interrupted.

    SIGTERM or SIGINT stops the API, then the worker (SIGTERM: it checkpoints and
    requeues its running job), waiting for it. uvicorn captures both signals and, once
    shut down, raises the captured one again under the handler it found: with the
    default SIGTERM handler that would end this process before the worker is stopped,
    so serve installs handlers of its own that unwind through the `finally` below.
    """
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in _STOP_SIGNALS}
    proc: subprocess.Popen[bytes] | None = None
    try:
        migrate(args)
        cmd = [sys.executable, "-m", "app.cli", "worker", "--queues", args.queues]
        cmd += ["--concurrency", "1"]
        proc = subprocess.Popen(cmd)
        return api(args)
    finally:
        if proc is not None:
            _stop_worker(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker and wait for it; a second signal, or the timeout, kills it."""

    def kill(signum: int, frame: object) -> None:
        log.warning("signal %d while the worker stops: killing worker %d", signum, proc.pid)
        proc.kill()

    for sig in _STOP_SIGNALS:
        signal.signal(sig, kill)
    if proc.poll() is None:
        log.info("stopping worker %d", proc.pid)
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=WORKER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        log.warning("worker %d still running after %ds: killing it", proc.pid, WORKER_STOP_SECONDS)
        proc.kill()
        proc.wait()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    settings = get_settings()
    default_queues = f"{settings.queue},{settings.ingest_queue}"

    def http(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    p = sub.add_parser("serve", help="API and one embedded worker (what `make run` starts)")
    http(p)
    p.add_argument("--queues", default=default_queues)
    p.set_defaults(func=serve)
    p = sub.add_parser("api", help="the HTTP API only")
    http(p)
    p.set_defaults(func=api)
    p = sub.add_parser("worker", help="a Celery worker that trains jobs")
    p.add_argument("--queues", default=default_queues, help="comma-separated queue names")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once (1 per GPU)")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=worker)
    p = sub.add_parser("migrate", help="apply the Alembic migrations")
    p.set_defaults(func=migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args = build_parser().parse_args(argv)  # reads the settings
    except ValidationError as exc:
        # A setting that cannot work stops the process at start-up, saying which.
        for problem in exc.errors():
            name = "GRAFT_" + "_".join(str(p) for p in problem["loc"]).upper()
            message = str(problem["msg"]).removeprefix("Value error, ")
            print(f"Invalid setting {name}: {message}", file=sys.stderr)
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
