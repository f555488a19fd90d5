"""The dashboard's files: ``/`` and ``/ui/...``, served from the package's ``web/`` folder.

The dashboard is plain ES modules (no build step); its one third-party package, uPlot, is
installed from the npm registry through ``web/package-lock.json`` (``npm ci``, done by
``make up``/``make test``) and served from ``node_modules`` at ``/ui/vendor/uplot/``.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_ROOT = Path(__file__).with_name("web")
UPLOT_DIST = WEB_ROOT / "node_modules" / "uplot" / "dist"

# The dashboard builds every element with text nodes; the policy makes sure nothing else runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _Files(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response


async def _index(request: Request) -> Response:
    return FileResponse(WEB_ROOT / "index.html", headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


def dashboard_routes(web_root: Path = WEB_ROOT) -> list[BaseRoute]:
    """Routes for the dashboard; the uPlot mount is present only once ``npm ci`` has run."""
    routes: list[BaseRoute] = [
        Route("/", _index, methods=["GET", "HEAD"]),
        Mount("/ui/src", app=_Files(directory=web_root / "src"), name="dashboard-src"),
    ]
    dist = web_root / "node_modules" / "uplot" / "dist"
    if dist.is_dir():
        routes.append(Mount("/ui/vendor/uplot", app=_Files(directory=dist), name="dashboard-uplot"))
    return routes
