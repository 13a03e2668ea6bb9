"""The `graft` command as a user runs it: a subprocess against a real `graft serve`
(embedded defaults: SQLite, the file-system broker, a real worker process)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, digits_images
from tests.e2e.helpers import embedded_service

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`graft serve` on the embedded defaults, with a team and its key."""
    with embedded_service(tmp_path_factory.mktemp("cli"), "cli") as service:
        yield service


def graft(
    service: dict[str, Any], *args: str, key: str | None = None, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GRAFT_API_URL": service["url"],
        "GRAFT_API_KEY": key or service["key"],
        "GRAFT_CONFIG": str(service["root"] / "no-config.json"),
    }
    return subprocess.run(
        [python, "-m", "graft.cli", *args],
        env=env,
        cwd=service["root"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def image_folder(root: Path, per_class: int = 20) -> Path:
    """Real images (UCI digits) in class folders, as a team has them on disk."""
    for cls, images in digits_images(per_class=per_class).items():
        (root / cls).mkdir(parents=True)
        for i, img in enumerate(images):
            img.save(root / cls / f"{i:03d}.png")
    return root


def api_get(service: dict[str, Any], path: str) -> Any:
    headers = {"Authorization": f"Bearer {service['key']}"}
    return httpx.get(service["url"] + path, headers=headers).json()


def test_train_uploads_a_folder_trains_and_downloads_checked_files(
    service: dict[str, Any], tmp_path: Path
) -> None:
    data = image_folder(tmp_path / "digits")
    out = tmp_path / "out"
    r = graft(
        service,
        "train",
        str(data),
        "--model",
        "resnet18",
        "--pretrained-weights",
        "none",
        "--strategy",
        "full",
        "--epochs",
        "2",
        "--image-size",
        "16",
        "--batch-size",
        "16",
        "--augmentation",
        "none",
        "-o",
        str(out),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["job"]["status"] == "succeeded"
    assert result["dataset"]["num_images"] == 60
    model = api_get(service, f"/v1/models/{result['job']['result']['model_id']}")
    expected = {a["file"]: a["sha256"] for a in model["artifacts"]}
    files = sorted(Path(p).name for p in result["files"])
    assert files == sorted(["model.safetensors", "metadata.json"])
    for name in files:
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == expected[name]
    # The job's metrics table is printed for a person; the JSON is on stdout alone.
    shown = graft(service, "jobs", "show", result["job"]["id"])
    assert shown.returncode == 0 and "val_accuracy" in shown.stdout
    # The model scored by a worker on a labelled dataset: the scores and the confusion
    # matrix for a person, the evaluation as JSON for a program.
    model_id, dataset_id = result["job"]["result"]["model_id"], result["dataset"]["id"]
    scored = graft(service, "evaluations", "create", model_id, dataset_id)
    assert scored.returncode == 0, scored.stderr
    assert "accuracy" in scored.stdout and "confusion matrix" in scored.stdout
    ev_id = scored.stdout.split()[0]
    shown = graft(service, "evaluations", "show", ev_id, "--json")
    assert shown.returncode == 0, shown.stderr
    ev = json.loads(shown.stdout)
    assert (ev["status"], ev["model_id"], ev["result"]["num_samples"]) == (
        "succeeded",
        model_id,
        60,
    )
    assert sum(map(sum, ev["result"]["confusion_matrix"]["matrix"])) == 60


def test_lists_and_shows_print_json_a_program_can_read(
    service: dict[str, Any], tmp_path: Path
) -> None:
    up = graft(service, "datasets", "upload", str(image_folder(tmp_path / "d", 8)), "--json")
    assert up.returncode == 0, up.stderr
    dataset = json.loads(up.stdout)
    assert [c["name"] for c in dataset["classes"]] == ["digit_0", "digit_1", "digit_2"]
    listed = graft(service, "datasets", "list", "--json")
    assert dataset["id"] in [d["id"] for d in json.loads(listed.stdout)]
    shown = graft(service, "datasets", "show", dataset["id"])
    assert shown.returncode == 0 and "digit_1" in shown.stdout and "8" in shown.stdout


@pytest.mark.parametrize(
    ("args", "exit_code", "says"),
    [
        (["datasets", "show", "ds_missing"], 3, "ds_missing"),
        (["datasets", "upload", "no/such/folder"], 3, "no/such/folder"),
        (["jobs", "create", "--dataset", "ds_x", "--model", "resnet9000"], 4, "resnet9000"),
        (
            ["jobs", "create", "--dataset", "ds_x", "--model", "resnet18", "--epochs", "0"],
            4,
            "hyperparameters.epochs",
        ),
        (["jobs", "show", "job_missing"], 3, "job_missing"),
    ],
)
def test_bad_input_is_one_line_with_a_distinct_exit_code(
    service: dict[str, Any], args: list[str], exit_code: int, says: str
) -> None:
    r = graft(service, *args)
    assert r.returncode == exit_code, (r.returncode, r.stderr)
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_search_create_watch_show_and_a_bad_request(
    service: dict[str, Any], tmp_path: Path
) -> None:
    up = graft(service, "datasets", "upload", str(image_folder(tmp_path / "d", 12)), "--json")
    dataset = json.loads(up.stdout)
    request = {
        "space": {"learning_rate": {"low": 1e-3, "high": 1e-2}},
        "fixed": {
            "base_model": "resnet18",
            "pretrained_weights": "none",
            "image_size": 16,
            "epochs": 1,
        },
        "constraints": {"quantization": "int8", "max_size_mb": 100},
        "budget": {"max_trials": 2, "max_parallel": 1},
    }
    path = tmp_path / "search.json"
    path.write_text(json.dumps(request))
    made = graft(service, "search", "create", str(path), "--dataset", dataset["id"], "--json")
    assert made.returncode == 0, made.stderr
    search = json.loads(made.stdout)
    watched = graft(service, "search", "watch", search["id"])
    assert watched.returncode == 0, watched.stderr
    assert "leaderboard" in watched.stdout and "Pareto front" in watched.stdout
    shown = json.loads(graft(service, "search", "show", search["id"], "--json").stdout)
    assert shown == api_get(service, f"/v1/searches/{search['id']}")
    assert shown["status"] == "succeeded" and shown["recommended_model_id"] in watched.stdout
    listed = json.loads(graft(service, "search", "list", "--json").stdout)
    assert [s["id"] for s in listed] == [search["id"]]
    # A bad request: one line naming the field, exit code 4, nothing created.
    path.write_text(json.dumps({**request, "budget": {"max_trials": 0}}))
    bad = graft(service, "search", "create", str(path), "--dataset", dataset["id"])
    assert bad.returncode == 4 and "budget.max_trials" in bad.stderr, bad.stderr
    path.write_text("{not json")
    broken = graft(service, "search", "create", str(path))
    assert broken.returncode == 4 and "not a JSON request" in broken.stderr, broken.stderr
    assert len(json.loads(graft(service, "search", "list", "--json").stdout)) == 1


def test_a_wrong_key_or_a_bad_folder_creates_nothing(
    service: dict[str, Any], tmp_path: Path
) -> None:
    before = api_get(service, "/v1/datasets?limit=100")["data"]
    wrong = graft(service, "datasets", "list", key="graft_wrong")
    assert wrong.returncode == 5 and "Unknown or revoked API key" in wrong.stderr
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, img in enumerate(digits_images(per_class=4)["digit_0"]):
        img.save(flat / f"{i}.png")  # images, but no class folders
    r = graft(service, "train", str(flat), "--model", "resnet18", "-o", str(tmp_path / "o"))
    assert r.returncode == 4, r.stderr
    assert "class" in r.stderr.lower()
    unknown = graft(service, "train", str(flat), "--model", "resnet9000", "-o", str(tmp_path))
    assert unknown.returncode == 4 and "resnet9000" in unknown.stderr
    assert api_get(service, "/v1/datasets?limit=100")["data"] == before


def test_login_stores_the_key_for_this_user_only(service: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "conf" / "graft.json"
    env = {k: v for k, v in os.environ.items() if k not in ("GRAFT_API_URL", "GRAFT_API_KEY")}
    env["GRAFT_CONFIG"] = str(config)
    run = [sys.executable, "-m", "graft.cli"]
    login = subprocess.run(
        [*run, "login", "--url", service["url"]],
        input=service["key"] + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": service["url"], "api_key": service["key"]}
    listed = subprocess.run(
        [*run, "jobs", "list", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0 and isinstance(json.loads(listed.stdout), list)


def test_the_client_alone_installs_without_torch_and_lists_datasets(
    service: dict[str, Any], tmp_path: Path
) -> None:
    """A fresh virtualenv with `pip install .` only: no torch, no server drivers."""
    env_dir = tmp_path / "client-venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-cache-dir", str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    for module in ("torch", "sqlalchemy", "fastapi"):
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is installed with the client"
    r = graft(service, "datasets", "list", "--json", python=python)
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), list)
    server_only = graft(service, "worker", python=python)
    assert server_only.returncode == 2 and "graft[worker]" in server_only.stderr
