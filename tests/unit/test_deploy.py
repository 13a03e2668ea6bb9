"""What can be checked of the Docker files without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_has_the_production_services() -> None:
    services = compose()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "minio",
        "createbucket",
        "migrate",
        "api",
        "worker",
    }
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in ("migrate", "api", "worker"):
        env = services[name]["environment"]
        assert env["GRAFT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["GRAFT_BROKER_URL"].startswith("redis://")
        assert env["GRAFT_STORAGE_URL"] == "s3://graft/artifacts"
        assert env["GRAFT_STORAGE_ENDPOINT_URL"] == "http://minio:9000"
    # No volume shared between the API and the worker: only the bucket.
    assert not set(services["api"]["volumes"]) & set(worker["volumes"])
    assert "mb --ignore-existing store/graft" in services["createbucket"]["command"][0]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["createbucket"]["condition"] == "service_completed_successfully"


def test_compose_commands_are_graft_commands_the_readme_uses() -> None:
    readme = (REPO / "README.md").read_text()
    parser = build_parser()
    for name in ("migrate", "api", "worker"):
        command = compose()["services"][name]["command"]
        assert command[0] == "graft"
        args = parser.parse_args(command[1:])
        assert args.command == command[1]
        assert f"graft {command[1]}" in readme


def test_dockerfile_runs_the_same_cli() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (.+)$", dockerfile, re.M)
    assert cmd is not None
    assert '"graft", "api"' in cmd.group(1)


def test_readme_has_the_two_commands_and_ci_calls_make_test() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    # CI runs exactly the README's test command.
    assert "make test" in (REPO / ".ci/run").read_text().splitlines()
