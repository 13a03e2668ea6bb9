"""Fixtures of the browser tests: a real `graft serve` (embedded defaults, real worker)
and one headless Debian Chromium driven by Playwright, per module.

Without Playwright or /usr/bin/chromium the tests are skipped with the reason
printed; with CI=true that is a failure instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.helpers import embedded_service

CHROMIUM = os.environ.get("GRAFT_TEST_CHROMIUM", "/usr/bin/chromium")
# Playwright's own browser download cannot work offline: drive Debian's, quietly.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH = 1280


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing browser is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`graft serve` on the embedded defaults, with a team and its key."""
    # Every archive over 1 KiB is ingested by the worker, so a dataset's page shows
    # `processing` first and polls, as a large upload does.
    root = tmp_path_factory.mktemp("browser")
    with embedded_service(root, "browser", GRAFT_INLINE_INGEST_BYTES="1024") as service:
        yield service


def _local_only(route: Any) -> None:
    """Every request to another host fails: the dashboard and /docs must work offline."""
    if urlsplit(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


@pytest.fixture(scope="module")
def context(
    browser: Any, service: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    ctx = browser.new_context(
        viewport={"width": WIDTH, "height": 900},
        accept_downloads=True,
        base_url=service["url"],
    )
    ctx.route("**/*", _local_only)
    ctx.set_default_timeout(20_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def page(context: Any) -> Iterator[Any]:
    """One tab for the module; uncaught script errors and CSP violations are kept in
    `page.problems` (the last test asserts there were none)."""
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    tab.on(
        "console",
        lambda msg: (
            problems.append(f"console: {msg.text}")
            if "Content Security Policy" in msg.text or "Refused to" in msg.text
            else None
        ),
    )
    tab.problems = problems
    yield tab
    tab.close()


DOCS = Path(__file__).resolve().parents[2] / "docs"
