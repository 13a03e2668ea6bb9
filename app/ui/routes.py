"""Routes for the dashboard (/ui/) and the API reference (/docs), both offline.

The dashboard is one static page and its script (app/ui/static/); the reference is
Swagger UI from the pinned `swagger-ui-py` package, which vendors its assets and
licence. Nothing is fetched from another origin, and every page answers with a
Content-Security-Policy that allows only this one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

HERE = Path(__file__).resolve().parent


def _swagger_ui_assets() -> Path:
    """The static folder of the pinned `swagger-ui-py` package (Swagger UI 5, which
    renders OpenAPI 3.1; its Apache-2.0 LICENSE sits beside the assets). Found without
    importing the package, whose modules are framework handlers we do not use."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed: pip install '.[server]'")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


# blob: for images and downloads the page fetched with the key (an <img> cannot send
# the Authorization header); data: for the icons inside Swagger UI's stylesheet.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class PageFiles(StaticFiles):
    """Static files with the pages' security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def mount(app: FastAPI) -> None:
    """`/` → `/ui/`, the dashboard under `/ui/`, Swagger UI at `/docs`."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(HERE / "docs" / "index.html", headers=PAGE_HEADERS)

    @app.get("/docs/init.js", include_in_schema=False)
    async def docs_init() -> FileResponse:
        return FileResponse(HERE / "docs" / "init.js", headers=PAGE_HEADERS)

    app.mount("/docs/assets", PageFiles(directory=str(_swagger_ui_assets())), name="docs_assets")
    app.mount("/ui", PageFiles(directory=str(HERE / "static"), html=True), name="ui")
