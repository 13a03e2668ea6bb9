"""Why a job failed: one flat hierarchy, in the manner of httpx's `_exceptions.py`.

    JobError                  the base: a `code` for the job's error and `retryable`
    ├── DatasetError          dataset_unusable: the files are missing or unreadable
    ├── WeightsUnavailable    weights_unavailable: ImageNet weights are not in the cache
    ├── IncompatibleWeights   incompatible_weights: a base model's weights do not fit
    ├── ExportMismatch        export_mismatch: an exported file disagrees with the model
    ├── AdaptationNotApplicable  adaptation_not_applicable: the method cannot adapt it
    ├── ResourcesExhausted    out_of_memory: retryable, another worker may have room
    ├── DeviceFailure         device_failure: retryable, a data-parallel rank died
    ├── DevicesUnavailable    devices_unavailable: the worker has fewer devices than asked
    └── DatabaseUnavailable   database_unavailable: retryable, the connection was lost

The modules that detect a failure raise these; worker/runner.py maps them (and any
other exception) to the job's `error {code, message}` in one place.
"""

from __future__ import annotations


class JobError(Exception):
    """A job cannot finish. `retryable` says whether another attempt could help."""

    code = "internal_error"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class DatasetError(JobError):
    """The dataset's files cannot be used (missing, or changed since ingestion)."""

    code = "dataset_unusable"


class WeightsUnavailable(JobError):
    """The requested pretrained weights are not in the cache and cannot be downloaded."""

    code = "weights_unavailable"


class IncompatibleWeights(JobError):
    """The weights of the model a job continues from do not fit its architecture."""

    code = "incompatible_weights"


class ModelFilesMissing(JobError):
    """The model's files are not in the store (deleted, or the store was changed)."""

    code = "model_files_missing"


class ExportMismatch(JobError):
    """An exported model disagrees with the PyTorch model beyond the tolerance."""

    code = "export_mismatch"

    def __init__(self, message: str, *, max_abs_diff: float, top1_agreement: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.top1_agreement = top1_agreement


class AdaptationNotApplicable(JobError):
    """The method cannot adapt this model (e.g. AdaBN on a model without BatchNorm)."""

    code = "adaptation_not_applicable"


class ResourcesExhausted(JobError):
    """Out of memory: worth another attempt, possibly on a worker with more of it."""

    code = "out_of_memory"
    retryable = True


class DeviceFailure(JobError):
    """A rank of a data-parallel job died or lost its device: the job goes back to the
    queue (and resumes from its checkpoint), up to GRAFT_MAX_ATTEMPTS."""

    code = "device_failure"
    retryable = True


class DevicesUnavailable(JobError):
    """The job asks for more devices than the worker that took it has (a worker
    started with --queues naming another device count's queue by hand)."""

    code = "devices_unavailable"


class DatabaseUnavailable(JobError):
    """The database connection failed mid-job: the job goes back to the queue."""

    code = "database_unavailable"
    retryable = True
