"""``/console``: the operator console, served by the daemon from files inside the package.

Plain ES modules and one stylesheet (no build step, nothing fetched from elsewhere). The page
itself holds no data: it asks the admin API with the token the operator types once (kept in
the tab's ``sessionStorage``, sent as ``Authorization: Bearer``, never in a URL). Every
response under ``/console`` carries a strict Content-Security-Policy (scripts, styles and
connections from this origin only; no inline script or style, no plugins, no framing),
``Referrer-Policy: no-referrer`` and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ...gateway import Gateway

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self' blob:; connect-src 'self'; worker-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
          ".txt": "text/plain; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the console, read once at start-up."""

    body: bytes
    content_type: str
    etag: str
    gzipped: bytes          # the same, compressed once (sent to browsers that accept gzip)


def load_assets(folder: Path = STATIC) -> dict[str, Asset]:
    """Every file of ``folder`` by name (no sub-folders: nothing else is reachable)."""
    assets = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] \
                or "application/octet-stream"
            assets[path.name] = Asset(body, kind, '"' + hashlib.sha256(body).hexdigest()[:20]
                                      + '"', gzip.compress(body, 9, mtime=0))
    return assets


def _answer(request: web.Request, asset: Asset, cache: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": asset.etag,
               "Vary": "Accept-Encoding"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.content_type
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        return web.Response(body=asset.gzipped, headers={**headers, "Content-Encoding": "gzip"})
    return web.Response(body=asset.body, headers=headers)


def console_routes(gw: Gateway) -> list[web.RouteDef]:
    """The console's routes, or none when no admin token is configured (it would have
    nothing to show)."""
    if not gw.config.admin.token:
        return []
    assets = load_assets()
    shell = assets.pop("index.html")

    async def index(request: web.Request) -> web.StreamResponse:
        return _answer(request, shell, "no-cache")

    async def static(request: web.Request) -> web.StreamResponse:
        asset = assets.get(request.match_info["name"])
        if asset is None:
            return web.json_response({"error": "no such file"}, status=404,
                                     headers=SECURITY_HEADERS)
        return _answer(request, asset, "no-cache")

    async def slash(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console")

    return [web.get("/console", index), web.get("/console/", slash),
            web.get("/console/static/{name}", static)]


__all__ = ["CSP", "SECURITY_HEADERS", "console_routes", "load_assets"]
