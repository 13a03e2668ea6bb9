"""An S3-compatible bucket (GRAFT_STORAGE_URL=s3://bucket/prefix) through fsspec's s3fs.

The artifact store's durable copy when Graft runs on several hosts (app/storage.py keeps
a local cache of it). Keys mirror the paths under the local root: `datasets/<id>/…`,
`models/<id>/…`, `jobs/<id>/attempt-<n>/checkpoint.pt`, `uploads/<id>.archive`. An S3
object appears whole or not at all once its upload completes; a directory of objects is
complete once its manifest (MANIFEST, written last) is there, and nothing points at it
before that.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from app.config import Settings
from app.storage import MANIFEST

CHUNK = 1024 * 1024


class StoreUnavailable(Exception):
    """The bucket cannot be used: it does not exist, or refuses the credentials."""


class ObjectStore:
    def __init__(self, url: str, settings: Settings) -> None:
        self.base = url.removeprefix("s3://").strip("/")
        self.bucket = self.base.split("/", 1)[0]
        options: dict[str, Any] = {
            # Other processes write the bucket: never answer from a stale listing.
            "use_listings_cache": False,
            "skip_instance_cache": True,
            "config_kwargs": {
                "connect_timeout": 5,
                "read_timeout": 60,
                "retries": {"max_attempts": 3},
            },
        }
        if settings.storage_endpoint_url:
            options["endpoint_url"] = settings.storage_endpoint_url
        if settings.storage_region:
            options["client_kwargs"] = {"region_name": settings.storage_region}
        if settings.storage_access_key_id and settings.storage_secret_access_key:
            # Else botocore's own chain: AWS_ACCESS_KEY_ID, ~/.aws, an instance role.
            options["key"] = settings.storage_access_key_id
            options["secret"] = settings.storage_secret_access_key.get_secret_value()
        self.fs = fsspec.filesystem("s3", **options)

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def check(self) -> None:
        """StoreUnavailable, saying why, unless the bucket can be listed."""
        try:
            self.fs.ls(self.bucket, refresh=True)
        except FileNotFoundError as exc:
            raise StoreUnavailable(f"bucket {self.bucket!r} does not exist") from exc
        except PermissionError as exc:
            raise StoreUnavailable(f"bucket {self.bucket!r} refused the credentials") from exc
        except Exception as exc:
            raise StoreUnavailable(f"bucket {self.bucket!r}: {type(exc).__name__}: {exc}") from exc

    def put_file(self, local: Path, rel: str) -> None:
        self.fs.put_file(str(local), self.key(rel))

    def get_file(self, rel: str, local: Path) -> None:
        self.fs.get_file(self.key(rel), str(local))

    def put_tree(self, local: Path, rel: str, manifest: dict[str, Any]) -> None:
        """Every file of `local`, then the manifest that makes the tree visible."""
        files = sorted(manifest["files"])
        self.fs.put([str(local / f) for f in files], [self.key(f"{rel}/{f}") for f in files])
        self.write_json(f"{rel}/{MANIFEST}", manifest)

    def get_tree(self, rel: str, files: list[str], local: Path) -> None:
        for f in files:
            (local / f).parent.mkdir(parents=True, exist_ok=True)
        self.fs.get([self.key(f"{rel}/{f}") for f in files], [str(local / f) for f in files])

    def read_json(self, rel: str) -> Any | None:
        try:
            return json.loads(self.fs.cat_file(self.key(rel)))
        except FileNotFoundError:
            return None

    def write_json(self, rel: str, data: Any) -> None:
        self.fs.pipe_file(self.key(rel), json.dumps(data, sort_keys=True).encode())

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.key(rel)))

    def listdir(self, rel: str) -> list[str]:
        """The names directly under `rel` (none if it does not exist)."""
        try:
            entries = self.fs.ls(self.key(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def remove(self, rel: str) -> None:
        """The object or every object under `rel`; nothing if there is none."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.key(rel), recursive=True)

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.key(rel)))

    def chunks(self, rel: str) -> Iterator[bytes]:
        """The object's bytes, a megabyte at a time (a download streams, never buffers)."""
        with self.fs.open(self.key(rel), "rb", block_size=CHUNK) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def url(self, rel: str, expires: int) -> str:
        """A presigned GET URL for the object, valid `expires` seconds."""
        return str(self.fs.url(self.key(rel), expires=expires))


_STORES: dict[tuple[str, ...], ObjectStore] = {}


def object_store(settings: Settings) -> ObjectStore:
    """One client per process and bucket settings (s3fs keeps its connections)."""
    key = (
        settings.storage_url,
        settings.storage_endpoint_url,
        settings.storage_region,
        settings.storage_access_key_id,
    )
    if key not in _STORES:
        _STORES[key] = ObjectStore(settings.storage_url, settings)
    return _STORES[key]
