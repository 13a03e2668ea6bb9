"""The `graft` command: the client's commands (login, datasets, jobs, models, predict,
train) over the public API, and the server's (serve, api, worker, migrate).

Every client command takes `--json` (the API's objects on stdout; progress, if any, on
stderr) and exits non-zero on failure with the error's code and message on stderr; the
exit code says what kind of failure it was (EXIT_CODES). Progress bars are drawn only
when stderr is a terminal.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from pydantic import ValidationError as SchemaError
from rich.console import Console
from rich.table import Table

from graft._exceptions import (
    APIConnectionError,
    AuthenticationError,
    BadRequest,
    Conflict,
    GraftError,
    JobCancelled,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ValidationError,
)

if typing.TYPE_CHECKING:
    from graft import Client

INVALID, NOT_FOUND, AUTH = 4, 3, 5


class CommandError(GraftError):
    """A problem found before anything was sent (a bad option, a missing login)."""

    def __init__(
        self, message: str, *, code: str, exit_code: int, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.exit_code, self.param = code, exit_code, param


# Distinct exit codes, checked in this order (a subclass before its base).
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (NotFound, 3),
    (ValidationError, 4),
    (BadRequest, 4),
    (PayloadTooLarge, 4),
    (QuotaExceeded, 8),
    (AuthenticationError, 5),
    (PermissionDenied, 5),
    (JobFailed, 6),
    (JobCancelled, 6),
    (Conflict, 7),
    (RateLimited, 8),
    (APIConnectionError, 9),
    (GraftError, 1),
    (FileNotFoundError, 3),
    (OSError, 4),  # an unreadable file or folder: the message names it
]
EXIT_INTERRUPTED = 130

# No markup: names and messages come from users and the server, and "[x]" is text.
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------- configuration


def config_path() -> Path:
    """`$GRAFT_CONFIG`, else `$XDG_CONFIG_HOME/graft/config.json` (~/.config by default)."""
    if os.environ.get("GRAFT_CONFIG"):
        return Path(os.environ["GRAFT_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "graft" / "config.json"


def read_config() -> dict[str, str]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise GraftError(f"Cannot read {path}: {exc}; run `graft login` again.") from exc
    return {k: str(v) for k, v in data.items() if k in ("url", "api_key")}


def write_config(url: str, api_key: str) -> Path:
    """Write the URL and key readable by this user only (0600), atomically."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "api_key": api_key}, fh)
    os.replace(tmp, path)
    return path


def make_client() -> Client:
    """A Client from GRAFT_API_URL / GRAFT_API_KEY, else from `graft login`'s file."""
    from graft import Client

    saved = read_config()
    url = os.environ.get("GRAFT_API_URL") or saved.get("url")
    key = os.environ.get("GRAFT_API_KEY") or saved.get("api_key")
    if not url or not key:
        raise CommandError(
            "Not logged in: run `graft login --url URL`, or set GRAFT_API_URL and GRAFT_API_KEY.",
            code="not_logged_in",
            exit_code=AUTH,
        )
    return Client(base_url=url, api_key=key)


# ---------------------------------------------------------------- output and errors


def fail(exc: BaseException) -> int:
    if isinstance(exc, CommandError):
        code = exc.exit_code
    else:
        code = next((n for kind, n in EXIT_CODES if isinstance(exc, kind)), 1)
    where = getattr(exc, "param", None)
    tag = getattr(exc, "code", None) or type(exc).__name__
    err.print(f"error: {tag}: {exc}" + (f" (field `{where}`)" if where else ""), markup=False)
    return code


def emit(obj: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """The object as JSON on stdout, or rendered for a person."""
    if as_json:
        if isinstance(obj, BaseModel):
            out.print_json(obj.model_dump_json())
        else:
            out.print_json(json.dumps(_plain(obj)))
        return
    render(obj)


def _plain(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, list | tuple):
        return [_plain(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the API's JSON on stdout.")(
        func
    )


class GraftGroup(click.Group):
    """Turns the client's exceptions into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (GraftError, OSError) as exc:
            ctx.exit(fail(exc))


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    out.print(t)


def show_dataset(ds: Any) -> None:
    out.print(f"{ds.id} {ds.name}: {ds.status}, {ds.num_images} images")
    if ds.classes:
        table(None, ["class", "images"], [[c.name, c.count] for c in ds.classes])
    if ds.rejected:
        rows = [[r.path, r.reason, getattr(r, "detail", None)] for r in ds.rejected]
        table(f"{len(ds.rejected)} files rejected", ["file", "reason", "detail"], rows)
    if ds.error:
        err.print(f"ingestion failed: {ds.error.get('code')}: {ds.error.get('message')}")


def show_job(job: Any) -> None:
    line = f"{job.id} {job.status} (attempt {job.attempt})"
    if job.result:
        line += f" → model {job.result.model_id}"
    out.print(line)
    if job.error:
        err.print(f"{job.error.code}: {job.error.message}", markup=False)
    if job.metrics:
        keys = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
        rows = [[_fmt(m.get(k)) for k in keys] for m in job.metrics]
        table("metrics", keys, rows)


def show_model(model: Any) -> None:
    out.print(
        f"{model.id} {model.name}: {model.architecture}, "
        f"{len(model.classes)} classes, recommended {model.recommended_artifact or '-'}"
    )
    rows = [[a.format, a.file, f"{a.size_bytes:,}", a.sha256[:16] + "…"] for a in model.artifacts]
    table("artifacts", ["format", "file", "bytes", "sha256"], rows)


def print_lines(lines: list[Any]) -> None:
    for line in lines:
        out.print(line, markup=False)


def _fmt(v: Any) -> Any:
    return f"{v:.4f}" if isinstance(v, float) else v


def check_upload_path(path: Path, kind: str) -> None:
    """Refuse, before any request, a path that is missing or a labeled folder with no
    class folders (the server would refuse it after the whole upload)."""
    from graft._archive import visible_files

    if not path.exists():
        raise CommandError(
            f"No such file or folder: {path}", code="path_not_found", exit_code=NOT_FOUND
        )
    if path.is_dir() and kind == "labeled":
        files = visible_files(path)
        if files and all(f.parent == path for f in files):
            raise CommandError(
                f"The folder {path} has no class folders: put each class's images in a "
                "folder of its own (cat/001.jpg, dog/002.jpg), or pass --kind unlabeled.",
                code="no_class_folders",
                exit_code=INVALID,
                param="path",
            )


# ---------------------------------------------------------------- the job spec as options


def _spec_fields() -> list[tuple[str, str | None, Any, str]]:
    """(field, parent or None, annotation, description) of every scalar or list field
    of the spec (domain_adaptation, nested, comes from --spec)."""
    from app.schemas.jobs import Hyperparameters, JobCreate, Resources

    nested: dict[str, type[BaseModel]] = {
        "hyperparameters": Hyperparameters,
        "resources": Resources,
    }
    fields: list[tuple[str, str | None, Any, str]] = []
    for name, info in JobCreate.model_fields.items():
        if name not in (*nested, "domain_adaptation"):
            fields.append((name, None, info.annotation, info.description or ""))
    for parent, model in nested.items():
        for name, info in model.model_fields.items():
            fields.append((name, parent, info.annotation, info.description or ""))
    return fields


# Short names for the two fields every job names, beside the spec's own.
ALIASES = {"dataset_id": ["--dataset"], "base_model": ["--model"], "quantization": ["--quantize"]}


def _click_type(annotation: Any) -> tuple[click.ParamType[Any], bool]:
    """The click type of a field, and whether it takes several values."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is list:
        inner, _ = _click_type(args[0])
        return inner, True
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if args and origin is not None and origin is not list:  # X | None, Annotated[X, ...]
        return _click_type(args[0])
    if annotation is int:
        return click.INT, False
    if annotation is float:
        return click.FLOAT, False
    return click.STRING, False


def spec_options(*, with_dataset: bool) -> Callable[[F], F]:
    """Every job-spec field as an option named as in the spec (`--image-size 32`)."""

    def decorate(func: F) -> F:
        for name, parent, annotation, description in reversed(_spec_fields()):
            if name == "dataset_id" and not with_dataset:
                continue
            kind, multiple = _click_type(annotation)
            flags = [f"--{name.replace('_', '-')}", *ALIASES.get(name, [])]
            where = f"{parent}.{name}" if parent else name
            func = click.option(
                *flags,
                f"spec__{name}",
                type=kind,
                multiple=multiple,
                default=None,
                help=f"`{where}`: {description}" if description else f"The spec's `{where}`.",
            )(func)
        return click.option(
            "--spec",
            "spec_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="A JSON job spec; options given beside it override its fields.",
        )(func)

    return decorate


def read_json_object(
    path: Path, what: str = "valid JSON", param: str | None = None
) -> dict[str, Any]:
    """The JSON object in `path`, or a CommandError saying what is wrong with it."""
    try:
        found = json.loads(path.read_text())
    except ValueError as exc:  # not UTF-8, or not JSON
        raise CommandError(
            f"{path} is not {what}: {exc}", code="invalid_spec", exit_code=INVALID, param=param
        ) from exc
    if not isinstance(found, dict):
        raise CommandError(
            f"{path} must hold a JSON object.", code="invalid_spec", exit_code=INVALID, param=param
        )
    return found


def build_spec(spec_file: Path | None, options: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {} if spec_file is None else read_json_object(spec_file)
    parents = {name: parent for name, parent, _, _ in _spec_fields()}
    for key, value in options.items():
        if not key.startswith("spec__") or value is None or value == ():
            continue
        name = key.removeprefix("spec__")
        parent = parents[name]
        target = spec.setdefault(parent, {}) if parent else spec
        target[name] = list(value) if isinstance(value, tuple) else value
    return spec


def check_spec(spec: dict[str, Any]) -> None:
    """Validate a spec here, before anything is sent (a bad option creates nothing)."""
    from app.architectures import ARCHITECTURES
    from app.schemas.jobs import JobCreate

    try:
        parsed = JobCreate.model_validate({"dataset_id": "ds_check", **spec})
    except SchemaError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise CommandError(
            f"Invalid `{where}`: {problem['msg']}.",
            code="invalid_spec",
            exit_code=INVALID,
            param=where,
        ) from exc
    model = parsed.base_model
    if not model.startswith("mdl_") and model not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CommandError(
            f"Unknown model {model!r}: use one of {known}, or a model id (mdl_…).",
            code="unknown_base_model",
            exit_code=INVALID,
            param="base_model",
        )


# ---------------------------------------------------------------- commands


@click.group(cls=GraftGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Graft: transfer learning on images as a service."""


@main.command()
@click.option("--url", required=True, help="The API's base URL, e.g. http://graft:8000")
@click.option("--key", "api_key", help="The API key (asked for when not given).")
def login(url: str, api_key: str | None) -> None:
    """Store the API URL and key for this user (GRAFT_API_URL / GRAFT_API_KEY win)."""
    from graft import Client

    api_key = api_key or click.prompt("API key", hide_input=True)
    with Client(base_url=url, api_key=api_key) as client:
        team = client.team.get()
    path = write_config(url, api_key)
    err.print(f"Logged in to {url} as team {team.name} ({team.id}); saved in {path}.")


# -- datasets


@main.group(cls=GraftGroup)
def datasets() -> None:
    """Upload, list, show and delete datasets."""


@datasets.command("upload")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="The dataset's name (default: the folder or file name).")
@click.option("--kind", type=click.Choice(["labeled", "unlabeled"]), default="labeled")
@json_option
def datasets_upload(path: Path, name: str | None, kind: str, as_json: bool) -> None:
    """Upload a folder of class folders, or a zip / tar.gz of one."""
    check_upload_path(path, kind)
    with make_client() as client:
        ds = client.datasets.upload(path, name=name, kind=kind, progress=err.is_terminal)
    emit(ds, as_json, show_dataset)


@datasets.command("list")
@json_option
def datasets_list(as_json: bool) -> None:
    """The team's datasets, newest first."""
    with make_client() as client:
        found = list(client.datasets.list())
    emit(
        found,
        as_json,
        lambda items: table(
            None,
            ["id", "name", "kind", "status", "images"],
            [[d.id, d.name, d.kind, d.status, d.num_images] for d in items],
        ),
    )


@datasets.command("show")
@click.argument("dataset_id")
@json_option
def datasets_show(dataset_id: str, as_json: bool) -> None:
    """One dataset: its classes, counts and rejected files."""
    with make_client() as client:
        emit(client.datasets.get(dataset_id), as_json, show_dataset)


@datasets.command("delete")
@click.argument("dataset_id")
def datasets_delete(dataset_id: str) -> None:
    """Delete a dataset and its files."""
    with make_client() as client:
        client.datasets.delete(dataset_id)
    err.print(f"Deleted {dataset_id}.")


# -- jobs


@main.group(cls=GraftGroup)
def jobs() -> None:
    """Create, list, show, watch and cancel jobs."""


@jobs.command("create")
@spec_options(with_dataset=True)
@json_option
def jobs_create(spec_file: Path | None, as_json: bool, **options: Any) -> None:
    """Create a job from options named as the spec's fields, or --spec FILE."""
    spec = build_spec(spec_file, options)
    if "dataset_id" not in spec:
        raise CommandError(
            "Missing `--dataset`: the id of a dataset (ds_…).",
            code="invalid_spec",
            exit_code=INVALID,
            param="dataset_id",
        )
    check_spec(spec)
    with make_client() as client:
        emit(client.jobs.create(spec=spec), as_json, show_job)


@jobs.command("list")
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled", "pruned"]),
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
def jobs_list(status: str | None, limit: int, as_json: bool) -> None:
    """The team's jobs, newest first."""
    with make_client() as client:
        found = []
        for job in client.jobs.list(status=status):
            found.append(job)
            if len(found) >= limit:
                break
    emit(
        found,
        as_json,
        lambda items: table(
            None,
            ["id", "status", "model", "dataset", "created"],
            [
                [j.id, j.status, j.spec.get("base_model"), j.spec.get("dataset_id"), j.created_at]
                for j in items
            ],
        ),
    )


@jobs.command("show")
@click.argument("job_id")
@json_option
def jobs_show(job_id: str, as_json: bool) -> None:
    """One job: status, progress, metrics, result or error."""
    with make_client() as client:
        emit(client.jobs.get(job_id), as_json, show_job)


@jobs.command("cancel")
@click.argument("job_id")
@json_option
def jobs_cancel(job_id: str, as_json: bool) -> None:
    """Cancel a job (a running one stops at its next step)."""
    with make_client() as client:
        emit(client.jobs.cancel(job_id), as_json, show_job)


@jobs.command("watch")
@click.argument("job_id")
@click.option("--cancel-on-interrupt", is_flag=True, help="Ctrl-C cancels the job too.")
@json_option
def jobs_watch(job_id: str, cancel_on_interrupt: bool, as_json: bool) -> None:
    """Live progress until the job ends; then its metrics."""
    with make_client() as client, watching(client, job_id, cancel_on_interrupt):
        job = _wait(client, job_id)
    emit(job, as_json, show_job)


@contextmanager
def watching(client: Client, job_id: str, cancel: bool) -> Iterator[None]:
    """Ctrl-C stops watching (and cancels the job only when asked to)."""
    try:
        yield
    except KeyboardInterrupt:
        if cancel:
            client.jobs.cancel(job_id)
            err.print(f"\nCancelled {job_id}.")
        else:
            err.print(
                f"\nStopped watching; {job_id} goes on. Watch it again: graft jobs watch {job_id}"
            )
        raise SystemExit(EXIT_INTERRUPTED) from None


def _wait(client: Client, job_id: str) -> Any:
    try:
        return client.jobs.wait(job_id, progress=err.is_terminal)
    except (JobFailed, JobCancelled) as exc:
        job = getattr(exc, "job", None)
        if job is not None:
            show_job(job)
        raise


# -- models


@main.group(cls=GraftGroup)
def models() -> None:
    """List, show and download models."""


@models.command("list")
@json_option
def models_list(as_json: bool) -> None:
    """The team's models, newest first."""
    with make_client() as client:
        found = list(client.models.list())
    emit(
        found,
        as_json,
        lambda items: table(
            None,
            ["id", "name", "architecture", "classes", "recommended"],
            [[m.id, m.name, m.architecture, len(m.classes), m.recommended_artifact] for m in items],
        ),
    )


@models.command("show")
@click.argument("model_id")
@json_option
def models_show(model_id: str, as_json: bool) -> None:
    """One model: its artifacts, sizes and checksums."""
    with make_client() as client:
        emit(client.models.get(model_id), as_json, show_model)


@models.command("download")
@click.argument("model_id")
@click.option("--format", "fmt", default=None, help="An artifact format (default: recommended).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@json_option
def models_download(model_id: str, fmt: str | None, output: Path, as_json: bool) -> None:
    """Download an artifact (checked against its sha256) into a folder."""
    with make_client() as client:
        paths = download(client, model_id, [fmt] if fmt else None, output)
    emit([str(p) for p in paths], as_json, print_lines)


def download(client: Client, model_id: str, formats: list[str] | None, output: Path) -> list[Path]:
    """Each format's file into `output` (default: the recommended one and metadata)."""
    model = client.models.get(model_id)
    wanted = formats or [model.recommended_artifact or "safetensors", "metadata"]
    by_format = {a.format: a for a in model.artifacts}
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in dict.fromkeys(wanted):
        if fmt not in by_format:
            raise CommandError(
                f"Model {model_id} has no {fmt!r} artifact; it has: {', '.join(by_format)}.",
                code="artifact_not_found",
                exit_code=NOT_FOUND,
                param="format",
            )
        paths.append(client.models.download(model_id, fmt, output / by_format[fmt].file))
    return paths


@main.command()
@click.argument("model_id")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--top-k", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--artifact", help="An ONNX variant (default: the recommended one).")
@json_option
def predict(
    model_id: str, images: tuple[Path, ...], top_k: int, artifact: str | None, as_json: bool
) -> None:
    """Classify images with a model: a table of the top-k labels."""
    with make_client() as client:
        answer = client.models.predict(model_id, list(images), top_k=top_k, artifact=artifact)

    def render(a: Any) -> None:
        rows = []
        for r in a.results:
            if r.error:
                rows.append([r.filename, "error", r.error.message])
            else:
                rows.append(
                    [r.filename, *(", ".join(f"{p.label} {p.score:.3f}" for p in r.predictions),)]
                )
        table(f"{a.model_id} ({a.artifact})", ["image", "top labels"], rows)

    emit(answer, as_json, render)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@spec_options(with_dataset=False)
@click.option("--name", help="The dataset's name (default: the folder name).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--cancel-on-interrupt", is_flag=True, help="Ctrl-C cancels the job too.")
@json_option
def train(
    path: Path,
    spec_file: Path | None,
    name: str | None,
    output: Path,
    cancel_on_interrupt: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Upload PATH, train, watch, and download the model into --output, in one command."""
    spec = build_spec(spec_file, options)
    check_spec(spec)  # before the upload: a bad option creates nothing
    check_upload_path(path, "labeled")
    with make_client() as client:
        ds = client.datasets.upload(path, name=name, progress=err.is_terminal)
        if not as_json:
            show_dataset(ds)
        if ds.status == "failed":
            raise CommandError(
                f"Dataset {ds.id} could not be ingested.", code="dataset_failed", exit_code=INVALID
            )
        job = client.jobs.create(spec={**spec, "dataset_id": ds.id})
        err.print(f"Job {job.id} queued.")
        with watching(client, job.id, cancel_on_interrupt):
            job = _wait(client, job.id)
        if not as_json:
            show_job(job)
        assert job.result is not None
        paths = download(client, job.result.model_id, None, output)
    emit(
        {"dataset": ds, "job": job, "files": [str(p) for p in paths]},
        as_json,
        lambda _: print_lines([f"saved {p}" for p in paths]),
    )


@main.group(cls=GraftGroup)
def evaluations() -> None:
    """Score a model on a labelled dataset (a worker runs it)."""


@evaluations.command("create")
@click.argument("model_id")
@click.argument("dataset_id")
@click.option(
    "--artifact",
    type=click.Choice(["safetensors", "onnx", "onnx-int8", "onnx-fp16"]),
    default="safetensors",
    show_default=True,
    help="Which of the model's files to score.",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the result.")
@json_option
def evaluations_create(
    model_id: str, dataset_id: str, artifact: str, wait: bool, as_json: bool
) -> None:
    """Score MODEL_ID on every image of DATASET_ID (same classes, matched by name)."""
    with make_client() as client:
        ev = client.evaluations.create(model_id, dataset_id, artifact=artifact)
        if wait:
            err.print(f"Evaluation {ev.id} queued.")
            ev = client.evaluations.wait(ev.id)
    emit(ev, as_json, show_evaluation)


@evaluations.command("show")
@click.argument("evaluation_id")
@json_option
def evaluations_show(evaluation_id: str, as_json: bool) -> None:
    """One evaluation: status, and its scores once it succeeded."""
    with make_client() as client:
        emit(client.evaluations.get(evaluation_id), as_json, show_evaluation)


def show_evaluation(ev: Any) -> None:
    out.print(f"{ev.id} {ev.status}: {ev.model_id} ({ev.artifact}) on {ev.dataset_id}")
    if ev.error:
        err.print(f"{ev.error.code}: {ev.error.message}", markup=False)
    r = ev.result
    if not r:
        return
    out.print(
        f"accuracy {r['accuracy']:.4f}, balanced accuracy {r['balanced_accuracy']:.4f}, "
        f"macro F1 {r['macro_f1']:.4f} over {r['num_samples']} images"
    )
    keys = ["precision", "recall", "f1", "support"]
    table(
        "per class",
        ["class", *keys],
        [[c["name"], *(_fmt(c[k]) for k in keys)] for c in r["per_class"]],
    )
    cm = r["confusion_matrix"]
    rows = [[name, *row] for name, row in zip(cm["labels"], cm["matrix"], strict=True)]
    table("confusion matrix (rows: true class)", ["", *cm["labels"]], rows)


# -- model searches


@main.group("search", cls=GraftGroup)
def search() -> None:
    """Model search: Graft picks the architecture, strategy and learning rate."""


@search.command("create")
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", "dataset_id", help="The dataset (ds_…), over the file's dataset_id.")
@click.option("--watch", is_flag=True, help="Show the leaderboard live until the search ends.")
@json_option
def search_create(request_file: Path, dataset_id: str | None, watch: bool, as_json: bool) -> None:
    """Start a search from REQUEST_FILE, a JSON request as POST /v1/searches takes it
    (dataset_id, space, fixed, objective, constraints, budget)."""
    request = read_json_object(request_file, "a JSON request", param="request_file")
    if dataset_id:
        request["dataset_id"] = dataset_id
    with make_client() as client:
        found = client.searches.create(spec=request)
        if watch:
            err.print(f"Search {found.id} started.")
            found = _watch_search(client, found.id)
    emit(found, as_json, show_search)


@search.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def search_list(limit: int, as_json: bool) -> None:
    """The team's searches, newest first."""
    with make_client() as client:
        found = []
        for item in client.searches.list():
            found.append(item)
            if len(found) >= limit:
                break
    emit(
        found,
        as_json,
        lambda items: table(
            None,
            ["id", "status", "trials", "epochs", "recommended", "created"],
            [
                [
                    s.id,
                    s.status,
                    s.budget_used.trials,
                    s.budget_used.epochs,
                    s.recommended_model_id,
                    s.created_at,
                ]
                for s in items
            ],
        ),
    )


@search.command("show")
@click.argument("search_id")
@json_option
def search_show(search_id: str, as_json: bool) -> None:
    """One search: its leaderboard, Pareto front and recommended model."""
    with make_client() as client:
        emit(client.searches.get(search_id), as_json, show_search)


@search.command("watch")
@click.argument("search_id")
@json_option
def search_watch(search_id: str, as_json: bool) -> None:
    """The leaderboard, live, until the search ends."""
    with make_client() as client:
        emit(_watch_search(client, search_id), as_json, show_search)


@search.command("cancel")
@click.argument("search_id")
@json_option
def search_cancel(search_id: str, as_json: bool) -> None:
    """Cancel a search: queued trials never start, running ones stop."""
    with make_client() as client:
        emit(client.searches.cancel(search_id), as_json, show_search)


def _watch_search(client: Client, search_id: str) -> Any:
    seen: list[tuple[int, int]] = []

    def progress(s: Any) -> None:
        now = (s.budget_used.trials, s.budget_used.epochs)
        if not seen or seen[-1] != now:
            seen.append(now)
            counts = ", ".join(f"{n} {status}" for status, n in sorted(s.trials.items()))
            err.print(f"{s.id}: {now[0]} trials, {now[1]} epochs ({counts})", markup=False)

    try:
        return client.searches.wait(search_id, on_update=progress)
    except KeyboardInterrupt:
        err.print(f"\nStopped watching; {search_id} goes on: graft search watch {search_id}")
        raise SystemExit(EXIT_INTERRUPTED) from None


def show_search(s: Any) -> None:
    spec = s.spec
    line = f"{s.id} {s.status}: {s.budget_used.trials}/{spec['budget']['max_trials']} trials"
    out.print(line + f", {s.budget_used.epochs} epochs", markup=False)
    if s.error:
        err.print(f"{s.error.code}: {s.error.message}", markup=False)
    objective = spec.get("objective", "val_accuracy")
    rows = []
    for t in s.leaderboard:
        artifact = t.artifact
        rows.append(
            [
                t.number,
                t.status,
                ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()),
                _fmt(t.value),
                t.epochs,
                f"{artifact.size_mb:.2f}" if artifact else None,
                _fmt(artifact.latency_ms) if artifact else None,
                {True: "yes", False: "no"}.get(t.meets_constraints),
                t.model_id,
            ]
        )
    columns = ["trial", "status", "params", objective, "epochs", "MB", "ms", "meets", "model"]
    table("leaderboard", columns, rows)
    if s.pareto_front:
        front = [
            [p.number, _fmt(p.value), _fmt(p.latency_ms), _fmt(p.size_mb)] for p in s.pareto_front
        ]
        table("Pareto front", ["trial", objective, "ms", "MB"], front)
    out.print(f"recommended: {s.recommended_model_id or '-'}. {s.recommendation}", markup=False)


# -- the server's commands (they need the server's extras)


def _server_command(name: str, help_text: str) -> None:
    @main.command(
        name,
        help=help_text,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    @click.pass_context
    def run(ctx: click.Context) -> None:
        try:
            from app.cli import main as server_main
        except ImportError as exc:
            err.print(
                f"`graft {name}` needs the server: pip install 'graft[worker]' "
                f"(missing: {exc.name})."
            )
            ctx.exit(2)
        ctx.exit(server_main([name, *ctx.args]))


for _name, _help in (
    ("serve", "Migrate, start one worker, serve the API (what `make run` starts)."),
    ("api", "The HTTP API only."),
    ("worker", "A Celery worker that trains jobs."),
    ("migrate", "Apply the database migrations."),
):
    _server_command(_name, _help)


if __name__ == "__main__":
    main()
