"""The client against the real API, in process (its TestClient as the HTTP client):
every resource, and each exception raised by a real answer of the server."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from graft import (
    APIConnectionError,
    AuthenticationError,
    BadRequest,
    Client,
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
    ValidationError,
)
from graft._progress import job_line
from tests.conftest import ADMIN_KEY, Api, configure, digits_images, zip_dataset
from tests.weights import weights

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BASE_URL = "http://testserver"


def connect(api: Api, key: str, **kw: Any) -> Client:
    return Client(BASE_URL, key, http=api.client, **kw)


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


@pytest.fixture
def client(api: Api) -> Iterator[Client]:
    with connect(api, api.new_team()) as client:
        yield client


@pytest.fixture
def admin(api: Api) -> Client:
    return connect(api, ADMIN_KEY)


def zip_file(tmp_path: Path, name: str = "digits.zip", offset: int = 0) -> Path:
    path = tmp_path / name
    path.write_bytes(zip_dataset(digits_images(per_class=6, offset=offset)))
    return path


def spec(dataset_id: str) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "base_model": "resnet18",
        "pretrained_weights": "none",
        "hyperparameters": {"epochs": 1, "image_size": 16},
    }


@pytest.fixture
def dataset_id(client: Client, tmp_path: Path) -> str:
    return client.datasets.upload(zip_file(tmp_path)).id


def weights_file(tmp_path: Path) -> Path:
    path = tmp_path / "base.safetensors"
    path.write_bytes(weights())
    return path


def set_job(job_id: str, **values: Any) -> None:
    """Move a job as a worker would (no worker runs in these tests)."""
    from app.db.base import utcnow
    from app.db.models import Job
    from app.db.session import session_scope

    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(finished_at=utcnow(), **values))


# ---------------------------------------------------------------- datasets


def test_a_folder_is_zipped_on_the_fly_without_its_hidden_files(
    client: Client, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "digits"
    for cls, images in digits_images(per_class=6).items():
        (folder / cls).mkdir(parents=True)
        for i, image in enumerate(images):
            image.save(folder / cls / f"{i:04d}.png")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "digit_0" / "._0000.png").write_bytes(b"resource fork")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.png").write_bytes(b"not an image")

    ds = client.datasets.upload(folder, progress=True)

    assert ds.status == "ready" and ds.name == "digits" and ds.kind == "labeled"
    assert [(c.name, c.count) for c in ds.classes] == [(f"digit_{i}", 6) for i in range(3)]
    assert ds.rejected == []  # the hidden files never left the machine
    assert "upload digits.zip" in capfd.readouterr().err


def test_an_archive_uploads_as_it_is_and_reads_back(client: Client, tmp_path: Path) -> None:
    ds = client.datasets.upload(zip_file(tmp_path), name="pets", kind="labeled")
    assert ds.name == "pets" and ds.num_images == 18
    assert client.datasets.get(ds.id) == ds
    client.datasets.delete(ds.id)
    with pytest.raises(NotFound):
        client.datasets.get(ds.id)


@pytest.mark.parametrize("hidden_only", [False, True])
def test_a_folder_without_files_is_refused_before_any_request(
    tmp_path: Path, hidden_only: bool
) -> None:
    folder = tmp_path / "empty"
    (folder / "cat").mkdir(parents=True)
    if hidden_only:
        (folder / "cat" / ".DS_Store").write_bytes(b"x")
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    http = httpx.Client(transport=httpx.MockTransport(record))
    with pytest.raises(GraftError, match=f"The folder {folder} holds no files"):
        Client(BASE_URL, "graft_key", http=http).datasets.upload(folder)
    with pytest.raises(GraftError, match="No such file or folder"):
        Client(BASE_URL, "graft_key", http=http).datasets.upload(tmp_path / "missing")
    assert sent == []


def test_list_follows_the_cursor_across_pages(client: Client, tmp_path: Path) -> None:
    ids = [
        client.datasets.upload(zip_file(tmp_path, f"d{i}.zip", offset=6 * i)).id for i in range(3)
    ]
    assert [d.id for d in client.datasets.list(limit=1)] == ids[::-1]


# ---------------------------------------------------------------- jobs


def test_jobs_create_get_list_and_cancel(client: Client, dataset_id: str) -> None:
    first = client.jobs.create(**spec(dataset_id))
    second = client.jobs.create(spec=spec(dataset_id), strategy="full")
    assert first.status == second.status == "queued"
    assert second.spec["strategy"] == "full"
    assert client.jobs.get(first.id) == first
    assert [j.id for j in client.jobs.list()] == [second.id, first.id]

    cancelled = client.jobs.cancel(first.id)
    assert cancelled.status == "cancelled"
    assert [j.id for j in client.jobs.list(status="cancelled")] == [first.id]
    assert [j.id for j in client.jobs.list(status="queued", limit=1)] == [second.id]
    with pytest.raises(Conflict) as again:
        client.jobs.cancel(first.id)
    assert again.value.status_code == 409
    client.jobs.delete(first.id)
    with pytest.raises(NotFound):
        client.jobs.get(first.id)


def test_wait_raises_job_cancelled_for_a_cancelled_job(client: Client, dataset_id: str) -> None:
    job = client.jobs.create(**spec(dataset_id))
    client.jobs.cancel(job.id)
    with pytest.raises(JobCancelled, match=f"Job {job.id} was cancelled") as cancelled:
        client.jobs.wait(job.id, poll=0.01)
    assert cancelled.value.job.status == "cancelled"


def test_wait_raises_job_failed_with_the_jobs_error_and_draws_its_progress(
    client: Client, dataset_id: str, capfd: pytest.CaptureFixture[str]
) -> None:
    job = client.jobs.create(**spec(dataset_id))
    progress = {"epoch": 2, "total_epochs": 5, "step": 14, "steps_per_epoch": 40, "fraction": 0.3}
    metrics = [
        {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.9}
    ]
    error = {"code": "weights_unavailable", "message": "Put resnet18 weights in the cache."}
    set_job(job.id, status="failed", error=error, progress=progress, metrics=metrics)

    with pytest.raises(JobFailed, match="weights_unavailable") as failed:
        client.jobs.wait(job.id, progress=True)

    assert (failed.value.code, failed.value.message) == (error["code"], error["message"])
    line = job_line(failed.value.job)
    assert line == "failed · epoch 2/5 · step 14/40 · loss 0.5000 · val acc 90.0%"
    assert "epoch 2/5" in capfd.readouterr().err


def test_wait_returns_the_succeeded_job(client: Client, dataset_id: str) -> None:
    job = client.jobs.create(**spec(dataset_id))
    set_job(job.id, status="succeeded")
    assert client.jobs.wait(job.id).status == "succeeded"


def test_events_list_and_follow_a_finished_jobs_stream(client: Client, dataset_id: str) -> None:
    job = client.jobs.create(**spec(dataset_id))
    client.jobs.cancel(job.id)
    events = list(client.jobs.events(job.id))
    assert [(e.id, e.type) for e in events] == [(1, "job.queued"), (2, "job.cancelled")]
    assert [e.id for e in client.jobs.events(job.id, after=1)] == [2]
    # The stream of an ended job sends what is left and closes.
    assert list(client.jobs.events(job.id, follow=True)) == events
    assert list(client.jobs.events(job.id, follow=True, after=2)) == []


def test_evaluations_create_get_list_wait_and_cancel(
    client: Client, dataset_id: str, tmp_path: Path
) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(weights(classes=3))
    classes = ["digit_0", "digit_1", "digit_2"]
    model = client.models.upload(path, architecture="resnet18", classes=classes, image_size=16)
    first = client.evaluations.create(model.id, dataset_id)
    second = client.evaluations.create(model.id, dataset_id, artifact="safetensors")
    assert (first.status, first.model_id, first.dataset_id) == ("queued", model.id, dataset_id)
    assert client.evaluations.get(first.id) == first
    assert [e.id for e in client.evaluations.list()] == [second.id, first.id]
    assert list(client.jobs.list()) == []

    client.evaluations.cancel(first.id)
    with pytest.raises(JobCancelled, match=f"Evaluation {first.id} was cancelled"):
        client.evaluations.wait(first.id, poll=0.01)
    assert [e.id for e in client.evaluations.list(status="cancelled")] == [first.id]
    set_job(second.id, status="succeeded", report={"accuracy": 0.5, "num_samples": 18})
    assert client.evaluations.wait(second.id).result == {"accuracy": 0.5, "num_samples": 18}
    with pytest.raises(ValidationError) as bad:
        client.evaluations.create(model.id, dataset_id, artifact="onnx")
    assert bad.value.param == "artifact" and bad.value.code == "artifact_not_found"


# ---------------------------------------------------------------- models


def test_a_model_uploads_and_downloads_checked_against_its_sha256(
    client: Client, tmp_path: Path
) -> None:
    weights = weights_file(tmp_path)
    model = client.models.upload(weights, "resnet18", ["cat", "dog"], name="base", image_size=32)
    assert model.classes == ["cat", "dog"] and model.source == "upload"
    assert [m.id for m in client.models.list()] == [model.id]

    out = client.models.download(model.id, "safetensors", tmp_path / "out.safetensors")
    assert out.read_bytes() == weights.read_bytes()
    sha = next(a.sha256 for a in model.artifacts if a.format == "safetensors")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha
    into = tmp_path / "models"
    into.mkdir()
    assert client.models.download(model.id, "safetensors", into).parent == into

    with pytest.raises(NotFound) as missing:
        client.models.download(model.id, "onnx", tmp_path / "m.onnx")
    assert missing.value.code == "artifact_not_found"
    client.models.delete(model.id)
    with pytest.raises(NotFound):
        client.models.get(model.id)


def test_a_corrupted_download_raises_integrity_error_and_writes_nothing(
    client: Client, tmp_path: Path, pg_env: dict[str, str]
) -> None:
    model = client.models.upload(weights_file(tmp_path), "resnet18", ["cat", "dog"])
    artifact = next(a for a in model.artifacts if a.format == "safetensors")
    stored = Path(pg_env["GRAFT_DATA_DIR"]) / "models" / model.id / artifact.file
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    out = tmp_path / "downloads"
    out.mkdir()

    with pytest.raises(IntegrityError) as bad:
        client.models.download(model.id, "safetensors", out / "m.safetensors")

    assert bad.value.expected == artifact.sha256
    assert bad.value.actual == hashlib.sha256(data).hexdigest()
    assert list(out.iterdir()) == []  # neither the file nor its temporary part


def test_predict_sends_paths_and_bytes(client: Client, tmp_path: Path) -> None:
    model = client.models.upload(weights_file(tmp_path), "resnet18", ["cat", "dog"])
    image = tmp_path / "cat.png"
    digits_images(per_class=1)["digit_0"][0].save(image)
    # An uploaded model has safetensors only: predict answers 409 no_onnx_artifact.
    with pytest.raises(Conflict) as conflict:
        client.models.predict(model.id, [image, ("dog.png", image.read_bytes())], top_k=1)
    assert conflict.value.code == "no_onnx_artifact"


# ---------------------------------------------------------------- teams, keys, usage


def test_admin_manages_teams_and_keys_and_a_team_reads_its_own(api: Api, admin: Client) -> None:
    team = admin.teams.create("vision", quotas={"datasets": 5})
    assert admin.teams.get(team.id) == team and team.quotas == {"datasets": 5}
    updated = admin.teams.update(team.id, name="vision-2", quotas={"queued_jobs": 7})
    assert updated.name == "vision-2" and updated.quotas == {"datasets": 5, "queued_jobs": 7}

    created = admin.teams.keys.create(
        team.id,
        name="dashboard",
        scopes=["read"],
        expires_at=datetime.now(UTC) + timedelta(days=30),
    )
    assert created.key.startswith("graft_") and created.scopes == ["read"]
    assert [k.id for k in admin.teams.keys.list(team.id)] == [created.id]

    reader = connect(api, created.key)
    own = reader.team.get()
    assert own.id == team.id and own.webhook_secret
    assert reader.usage().quotas["queued_jobs"].limit == 7
    with pytest.raises(PermissionDenied):
        reader.team.rotate_webhook_secret()
    writer = connect(api, admin.teams.keys.create(team.id).key)
    assert writer.team.rotate_webhook_secret().webhook_secret != own.webhook_secret

    assert admin.teams.keys.revoke(team.id, created.id).revoked_at is not None
    with pytest.raises(AuthenticationError):
        reader.team.get()


# ---------------------------------------------------------------- errors from real answers


def test_errors_carry_the_servers_code_message_and_param(
    api: Api, client: Client, dataset_id: str
) -> None:
    with pytest.raises(NotFound) as missing:
        client.jobs.get("job_0193a1b2c3d4e5f6a7b8c9d0")
    assert missing.value.code == "job_not_found" and missing.value.status_code == 404
    assert str(missing.value) == missing.value.message

    with pytest.raises(ValidationError) as invalid:
        client.jobs.create(**spec(dataset_id) | {"hyperparameters": {"epochs": 0}})
    assert invalid.value.param == "hyperparameters.epochs"
    assert "`hyperparameters.epochs`" in str(invalid.value)

    with pytest.raises(AuthenticationError):
        connect(api, "graft_not_a_key").usage()

    with pytest.raises(BadRequest) as bad:
        client._request(
            "POST", "/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}
        )
    assert bad.value.code == "invalid_json"

    job = client.jobs.create(**spec(dataset_id))
    with pytest.raises(Conflict) as active:
        client.jobs.delete(job.id)
    assert active.value.code == "job_active"


def test_a_read_key_creating_a_job_is_permission_denied_and_a_quota_is_quota_exceeded(
    api: Api, admin: Client, tmp_path: Path
) -> None:
    team = admin.teams.create("quota")
    writer = connect(api, admin.teams.keys.create(team.id).key)
    reader = connect(api, admin.teams.keys.create(team.id, scopes=["read"]).key)
    ds = writer.datasets.upload(zip_file(tmp_path))

    with pytest.raises(PermissionDenied) as denied:
        reader.jobs.create(**spec(ds.id))
    assert not isinstance(denied.value, QuotaExceeded) and denied.value.status_code == 403

    admin.teams.update(team.id, quotas={"queued_jobs": 0})
    with pytest.raises(QuotaExceeded) as quota:
        writer.jobs.create(**spec(ds.id))
    assert quota.value.code == "quota_exceeded" and "`queued_jobs`" in str(quota.value)
    assert list(writer.jobs.list()) == []


def test_an_upload_over_the_limit_is_payload_too_large(
    pg_env: dict[str, str], make_api: Callable[[], Api], tmp_path: Path
) -> None:
    configure({"GRAFT_MAX_UPLOAD_BYTES": "1000"})
    api = make_api()
    with pytest.raises(PayloadTooLarge, match="1000") as large:
        connect(api, api.new_team()).datasets.upload(zip_file(tmp_path))
    assert large.value.status_code == 413


def test_a_key_over_its_rate_is_rate_limited_after_honouring_retry_after(
    pg_env: dict[str, str], make_api: Callable[[], Api]
) -> None:
    configure({"GRAFT_RATE_LIMIT_BURST": "2", "GRAFT_RATE_LIMIT_PER_KEY": "60"})
    api = make_api()
    key = api.new_team()
    client = connect(api, key, max_retries=0)
    client.usage()
    client.usage()
    with pytest.raises(RateLimited) as limited:
        client.usage()
    assert limited.value.code == "rate_limited" and limited.value.retry_after is not None
    assert 1 <= limited.value.retry_after <= 60

    patient = connect(api, key, max_retries=2)
    waits: list[float] = []
    patient._sleep = waits.append  # the bucket stays empty: no time passes
    with pytest.raises(RateLimited):
        patient.usage()
    assert len(waits) == 2 and all(1 <= w <= 60 for w in waits)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_that_cannot_be_reached_is_api_connection_error() -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", "graft_key", max_retries=1)
    waits: list[float] = []
    client._sleep = waits.append
    with client, pytest.raises(APIConnectionError, match="Could not connect"):
        client.jobs.get("job_1")
    assert len(waits) == 1


# ---------------------------------------------------------------- retries are idempotent


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets", "/v1/searches"])
def test_a_lost_answer_is_retried_with_the_same_idempotency_key_and_creates_one_object(
    api: Api, tmp_path: Path, path: str
) -> None:
    key = api.new_team()
    setup = connect(api, key)
    archive = zip_file(tmp_path)
    ds = setup.datasets.upload(archive, name="first") if path != "/v1/datasets" else None
    inner: httpx.BaseTransport = api.client._transport
    keys: list[str] = []

    def lose_the_first_answer(request: httpx.Request) -> httpx.Response:
        response = inner.handle_request(request)
        if request.method == "POST" and request.url.path == path:
            keys.append(request.headers["Idempotency-Key"])
            if len(keys) == 1:  # the server did the work; its answer is lost on the way back
                response.read()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response

    http = httpx.Client(transport=httpx.MockTransport(lose_the_first_answer))
    client = Client(BASE_URL, key, http=http, retry_backoff=0.001)
    if path == "/v1/searches":
        assert ds is not None
        search = client.searches.create(**search_request(ds.id))
        assert [s.id for s in setup.searches.list()] == [search.id]
        assert len(list(setup.jobs.list())) == 2  # its first trials, once
    elif ds is not None:
        job = client.jobs.create(**spec(ds.id))
        assert [j.id for j in setup.jobs.list()] == [job.id]
    else:
        made = client.datasets.upload(archive, name="digits")
        assert [d.id for d in setup.datasets.list()] == [made.id]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 36


# ---------------------------------------------------------------- searches


def search_request(dataset_id: str) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "space": {"learning_rate": {"low": 1e-4, "high": 1e-2}},
        "fixed": {"base_model": "resnet18", "pretrained_weights": "none", "image_size": 16},
        "budget": {"max_trials": 4, "max_parallel": 2},
    }


def test_searches_create_get_list_wait_and_cancel(client: Client, dataset_id: str) -> None:
    search = client.searches.create(**search_request(dataset_id))
    assert search.status == "running" and search.budget_used.trials == 2
    assert client.searches.get(search.id) == search
    assert [s.id for s in client.searches.list()] == [search.id]
    # Its trials are jobs of the team, each naming the search.
    trial_jobs = {t.job_id for t in search.leaderboard}
    assert {j.id for j in client.jobs.list() if j.search_id == search.id} == trial_jobs
    cancelled = client.searches.cancel(search.id)
    assert cancelled.status == "cancelled" and cancelled.trials == {"cancelled": 2}
    seen: list[str] = []
    assert client.searches.wait(search.id, poll=0.01, on_update=lambda s: seen.append(s.status))
    assert seen == ["cancelled"]
    with pytest.raises(Conflict) as again:
        client.searches.cancel(search.id)
    assert again.value.code == "search_finished"


def test_a_bad_search_raises_validation_error_naming_the_field(
    client: Client, dataset_id: str
) -> None:
    request = search_request(dataset_id)
    request["space"] = {"learning_rate": {"low": 0.1, "high": 0.01}}
    with pytest.raises(ValidationError) as bad:
        client.searches.create(**request)
    assert bad.value.param == "space.learning_rate"
    assert list(client.searches.list()) == []
