"""Routes for the dashboard (/ui/) and the API reference (/docs), both offline.

The dashboard is one static page and its script (app/ui/static/); the reference is
Swagger UI from the pinned `swagger-ui-bundle` package, which vendors its assets and
licence. Nothing is fetched from another origin, and every page answers with a
Content-Security-Policy that allows only this one.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope
from swagger_ui_bundle import swagger_ui_path

HERE = Path(__file__).resolve().parent

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

    app.mount("/docs/assets", PageFiles(directory=str(swagger_ui_path)), name="docs_assets")
    app.mount("/ui", PageFiles(directory=str(HERE / "static"), html=True), name="ui")
