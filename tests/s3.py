"""A local S3-compatible server for the bucket tests: moto's standalone server (the one
s3fs's own test suite runs), as a process of its own on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3

ACCESS_KEY = "graft-test"
SECRET_KEY = "graft-test-secret"
REGION = "us-east-1"


class S3Server:
    def __init__(self, log_path: Path, *, check_credentials: bool = False) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            # moto accepts any key unless told to authenticate from the first request.
            env={
                **os.environ,
                **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {}),
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"moto's S3 server did not start: {log_path.read_text()}")

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def new_bucket(self) -> str:
        name = f"graft-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def env(self, bucket: str) -> dict[str, str]:
        """A Graft process's settings for this bucket."""
        return {
            "GRAFT_STORAGE_URL": f"s3://{bucket}/graft",
            "GRAFT_STORAGE_ENDPOINT_URL": self.endpoint,
            "GRAFT_STORAGE_REGION": REGION,
            "GRAFT_STORAGE_ACCESS_KEY_ID": ACCESS_KEY,
            "GRAFT_STORAGE_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._log.close()
