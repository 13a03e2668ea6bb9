"""The artifact store with a bucket (moto's S3 server): what a process publishes another
fetches, verified, into a cache of bounded size; a broken or absent bucket is a clear
error at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.storage import MANIFEST, CorruptDownload, Storage, storage_for
from tests.conftest import REPO, Api, api_factory
from tests.s3 import S3Server


def bucket_storage(s3: S3Server, bucket: str, root: Path, cache_max_bytes: int = 10**9) -> Storage:
    env = s3.env(bucket)
    settings = Settings(
        data_dir=root,
        storage_url=env["GRAFT_STORAGE_URL"],
        storage_endpoint_url=env["GRAFT_STORAGE_ENDPOINT_URL"],
        storage_region=env["GRAFT_STORAGE_REGION"],
        storage_access_key_id=env["GRAFT_STORAGE_ACCESS_KEY_ID"],
        storage_secret_access_key=env["GRAFT_STORAGE_SECRET_ACCESS_KEY"],  # type: ignore[arg-type]
        cache_max_bytes=cache_max_bytes,
    )
    return storage_for(settings)


def a_dataset(storage: Storage, dataset_id: str, size: int) -> Path:
    d = storage.dataset_dir(dataset_id)
    (d / "cat").mkdir(parents=True)
    (d / "manifest.json").write_text('{"items": []}')
    (d / "cat" / "1.png").write_bytes(bytes(range(256)) * (size // 256))
    storage.publish(d)
    return d


def test_what_one_host_publishes_another_fetches_verified(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    writer = bucket_storage(s3, bucket, tmp_path / "writer")
    a_dataset(writer, "ds_1", 4096)
    assert s3.keys(bucket) == [
        "graft/datasets/ds_1/.complete.json",
        "graft/datasets/ds_1/cat/1.png",
        "graft/datasets/ds_1/manifest.json",
    ]
    reader = bucket_storage(s3, bucket, tmp_path / "reader")
    got = reader.fetch(reader.dataset_dir("ds_1"))
    assert (got / "cat" / "1.png").read_bytes() == bytes(range(256)) * 16
    assert (got / MANIFEST).exists()
    # A directory whose manifest never arrived (its writer died uploading) is not there.
    s3.client().put_object(Bucket=bucket, Key="graft/models/mdl_half/model.safetensors", Body=b"x")
    assert not reader.fetch(reader.model_dir("mdl_half")).exists()
    reader.remove_tree(got)
    assert not got.exists() and s3.keys(bucket, "graft/datasets/") == []


def test_a_file_that_differs_from_its_manifest_is_refused_and_nothing_is_left(
    s3: S3Server, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    a_dataset(bucket_storage(s3, bucket, tmp_path / "writer"), "ds_1", 1024)
    s3.client().put_object(Bucket=bucket, Key="graft/datasets/ds_1/cat/1.png", Body=b"tampered")
    reader = bucket_storage(s3, bucket, tmp_path / "reader")
    with pytest.raises(CorruptDownload, match=r"datasets/ds_1/cat/1\.png: sha256 differs"):
        reader.fetch(reader.dataset_dir("ds_1"))
    assert not reader.dataset_dir("ds_1").exists()
    assert list(reader.tmp_dir().iterdir()) == []


def test_the_cache_keeps_the_most_recently_used_within_its_size(
    s3: S3Server, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    writer = bucket_storage(s3, bucket, tmp_path / "writer")
    for name in ("ds_1", "ds_2", "ds_3"):
        a_dataset(writer, name, 10_240)
    # Room for two datasets of about 10 KB each, not three.
    cache = bucket_storage(s3, bucket, tmp_path / "cache", cache_max_bytes=25_000)
    here = {name: cache.dataset_dir(name) for name in ("ds_1", "ds_2", "ds_3")}
    cache.fetch(here["ds_1"])
    cache.fetch(here["ds_2"])
    cache.fetch(here["ds_1"])  # used again: now ds_2 is the least recently used
    cache.fetch(here["ds_3"])
    assert {n for n, p in here.items() if p.exists()} == {"ds_1", "ds_3"}
    cache.fetch(here["ds_2"])  # fetched again on a miss
    assert {n for n, p in here.items() if p.exists()} == {"ds_3", "ds_2"}


def test_an_unknown_scheme_is_refused_when_the_settings_load(
    sqlite_env: dict[str, str],
) -> None:
    with pytest.raises(ValidationError, match="the scheme 'gs' is not supported"):
        Settings(storage_url="gs://bucket/graft")
    with pytest.raises(ValidationError, match="s3:// needs a bucket"):
        Settings(storage_url="s3://")
    api = subprocess.run(
        [sys.executable, "-m", "app.cli", "api"],
        env={**os.environ, **sqlite_env, "GRAFT_STORAGE_URL": "gs://bucket/graft"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert api.returncode == 2
    assert api.stderr.strip() == (
        "Invalid setting GRAFT_STORAGE_URL: the scheme 'gs' is not supported; "
        "use a local path or s3://bucket/prefix"
    )


def test_a_missing_bucket_fails_readyz_and_the_worker_at_start_up(
    s3: S3Server, sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**sqlite_env, **s3.env("no-such-bucket")}
    with api_factory(env) as make_api:
        api: Api = make_api()
        r = api.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["storage"] == "error: bucket 'no-such-bucket' does not exist"
    worker = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker"],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == 2
    assert "bucket 'no-such-bucket' does not exist" in worker.stderr


def test_credentials_the_store_refuses_fail_readyz(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    strict = S3Server(tmp_path / "moto.log", check_credentials=True)
    try:
        with api_factory({**sqlite_env, **strict.env("graft")}) as factory:
            r = factory().client.get("/readyz")
    finally:
        strict.stop()
    assert r.status_code == 503
    assert r.json()["checks"]["storage"] == "error: bucket 'graft' refused the credentials"


def test_readyz_checks_a_bucket_that_exists(s3: S3Server, sqlite_env: dict[str, str]) -> None:
    with api_factory({**sqlite_env, **s3.env(s3.new_bucket())}) as factory:
        r = factory().client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["storage"] == "ok"
