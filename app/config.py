"""Configuration: one Settings class, read from the environment (prefix GRAFT_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRAFT_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Artifact store and embedded database")
    # Where datasets, checkpoints and models live for good: empty (data_dir), another
    # local path, or s3://bucket/prefix (any S3-compatible store, through s3fs). With a
    # bucket, data_dir holds only this process's cache of it (cache_max_bytes, LRU).
    storage_url: str = ""
    storage_endpoint_url: str = Field("", description="e.g. http://minio:9000; empty: AWS")
    storage_region: str = ""
    # Empty: botocore's own chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws,
    # an instance role).
    storage_access_key_id: str = ""
    storage_secret_access_key: SecretStr | None = None
    # How a model download leaves a bucket: streamed through the API (the default: the
    # bucket may be private to the cluster), or a 307 to a presigned URL.
    storage_downloads: Literal["stream", "redirect"] = "stream"
    storage_url_expiry_seconds: int = Field(3600, ge=60, le=7 * 86_400)
    cache_max_bytes: int = Field(20 * 1024**3, ge=0)
    # Empty means the embedded default: SQLite under data_dir.
    database_url: str = ""
    # Empty means the embedded default: kombu's filesystem transport under data_dir.
    broker_url: str = ""
    model_cache: Path | None = Field(None, description="torchvision weights cache")
    admin_key: SecretStr | None = None
    allow_weight_download: bool = True

    queue: str = "gpu"
    # Large archives are ingested by the workers, from this queue.
    ingest_queue: str = "ingest"
    max_upload_bytes: int = 2 * 1024**3
    # An archive of up to this size is ingested inside the request; a larger one
    # answers 202 at once and is ingested in the background.
    inline_ingest_bytes: int = 64 * 1024**2

    # Ingestion limits (see app/services/ingest.py for what each refuses).
    archive_max_total_bytes: int = 8 * 1024**3
    archive_max_file_bytes: int = 64 * 1024**2
    archive_max_entries: int = 200_000
    archive_max_ratio: float = 200.0
    max_image_pixels: int = 40_000_000
    min_image_side: int = 8
    max_image_bytes: int = 32 * 1024**2

    # Quotas per team: these defaults, unless the admin set the team's own
    # (PATCH /v1/teams/{id}). upload_bytes defaults to max_upload_bytes and cannot exceed it.
    quota_running_jobs: int = Field(2, ge=0)
    quota_queued_jobs: int = Field(50, ge=0)
    quota_stored_bytes: int = Field(50 * 1024**3, ge=0)
    quota_datasets: int = Field(200, ge=0)
    # The most trials one model search may ask for (budget.max_trials).
    search_max_trials: int = Field(100, ge=1, le=500)
    # A team's rotated webhook secret keeps signing (beside the new one) this long.
    webhook_secret_grace_seconds: float = 24 * 3600

    # Data-parallel jobs (`resources.devices`): the most devices one job may ask for,
    # and how many this worker has (empty: the visible CUDA devices, or 1 without CUDA;
    # on a CPU-only host a larger value means that many gloo processes). A worker takes
    # the jobs of every device count up to its own (app/queue.py: one queue per count).
    max_devices_per_job: int = Field(8, ge=1, le=64)
    worker_devices: int | None = Field(None, ge=1, le=64)

    lease_seconds: float = 60.0
    # How often a running job writes its progress (every epoch's end is written too).
    progress_interval_seconds: float = 1.0
    # Also how often a running job notices a cancel request.
    heartbeat_seconds: float = 2.0
    max_attempts: int = 3
    # Queued jobs nobody claimed within this long are sent to the broker again.
    redispatch_after_seconds: float = 120.0
    reaper_interval_seconds: float = 30.0

    webhook_timeout_seconds: float = 5.0
    webhook_max_attempts: int = 8
    # Retry n waits webhook_backoff_seconds x 2^(n-1), at most 10 minutes.
    webhook_backoff_seconds: float = 2.0
    # Let webhooks reach loopback, private, link-local and other non-public addresses
    # (receivers inside your network); off, they are refused (app/webhook_targets.py).
    webhook_allow_private: bool = False

    max_predict_images: int = 32
    max_predict_image_bytes: int = 20 * 1024**2

    # Request bounds (app/body_limits.py): a body that is not a multipart upload may
    # be this large at most; multipart uploads are bounded by max_upload_bytes.
    max_json_body_bytes: int = 1024**2
    # `GET /metrics` answers `Authorization: Bearer <this or the admin key>` only.
    metrics_token: SecretStr | None = None

    # uvicorn's line per request on stderr; off behind a proxy that logs requests itself
    # (it costs a tenth of a GET's time: bench/bench_api.py).
    access_log: bool = True
    # On SIGTERM the API finishes requests for this long, then closes what is still
    # open (event streams never end by themselves; their clients resume by event id).
    api_shutdown_seconds: int = Field(5, ge=0, le=300)
    # Threads that run GET requests' database reads (a pool of their own; writes use
    # the default one). A read is a millisecond of mostly Python under the GIL: with 32
    # concurrent polls, 40 threads contending for it served 697 requests/s at a p99 of
    # 156 ms on a 2-core machine, 2 threads 1,007 at 49 ms (bench/bench_api.py).
    read_threads: int = Field(2, ge=1, le=64)

    # Rate limits (app/rate_limits.py): a token bucket per API key (a burst of
    # rate_limit_burst, refilled at rate_limit_per_key a minute), and failed
    # authentications per client address. Storage: rate_limit_storage_url (redis://…,
    # or memory:// for in process); "" = the broker's Redis when the broker is Redis,
    # else in process.
    rate_limits_enabled: bool = True
    rate_limit_per_key: int = Field(1200, ge=1, description="Requests per minute per API key")
    rate_limit_burst: int = Field(200, ge=1, description="Requests a key may send at once")
    rate_limit_failed_auth: int = Field(
        20, ge=1, description="Failed authentications per minute per client address"
    )
    rate_limit_storage_url: str = ""

    @field_validator("storage_url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("", "file", "s3"):
            raise ValueError(
                f"the scheme {scheme!r} is not supported; use a local path or s3://bucket/prefix"
            )
        if scheme == "s3" and not url.removeprefix("s3://").strip("/"):
            raise ValueError("s3:// needs a bucket: s3://bucket/prefix")
        return url

    @property
    def is_remote_storage(self) -> bool:
        return self.storage_url.startswith("s3://")

    @property
    def storage_root(self) -> Path:
        """The local root of the artifact store (with a bucket: the cache of it)."""
        if self.storage_url and not self.is_remote_storage:
            return Path(self.storage_url.removeprefix("file://")).resolve()
        return self.resolved_data_dir

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'graft.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def is_embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def broker_folder(self) -> Path:
        return self.resolved_data_dir / "broker"

    @property
    def weights_cache(self) -> Path:
        return (self.model_cache or self.resolved_data_dir / "model-cache").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
