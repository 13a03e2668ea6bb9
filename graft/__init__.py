"""Graft's Python client: datasets, fine-tuning jobs and models over the API v1.

    from graft import Client, JobFailed
    with Client("http://127.0.0.1:8000", api_key="graft_…") as graft:
        dataset = graft.datasets.upload("pets/", name="pets", progress=True)
        job = graft.jobs.create(dataset_id=dataset.id, base_model="resnet18",
                                hyperparameters={"epochs": 5}, export=["onnx"])
        try:
            job = graft.jobs.wait(job.id, progress=True)
        except JobFailed as failed:
            raise SystemExit(f"{failed.code}: {failed.message}")
        graft.models.download(job.result.model_id, "onnx", "model.onnx")

Results are the API's own pydantic models (app.schemas: DatasetRead, JobRead, …);
errors are the exceptions below, all subclasses of GraftError.
"""

from graft._client import Client
from graft._exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    GraftError,
    IntegrityError,
    JobCancelled,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServerError,
    ValidationError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "BadRequest",
    "Client",
    "Conflict",
    "GraftError",
    "IntegrityError",
    "JobCancelled",
    "JobFailed",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "ServerError",
    "ValidationError",
]
