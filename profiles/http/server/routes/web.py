"""The web page of ``profiles serve``: ``/`` and its files under ``/web/``.

Plain HTML, CSS and JavaScript modules shipped in the package (``profiles/http/server/web``),
no build step and nothing fetched from elsewhere. The files hold no data and need no key:
the page asks the API for everything, with the key the person signs in with (kept in the
tab's ``sessionStorage``, sent as ``Authorization: Bearer``). They are read once, served
from memory, under a strict Content-Security-Policy (this origin only, no inline script or
style, no framing), and are not counted by the per-address rate limit (a page load would
otherwise spend the budget a stranger's wrong keys are counted against).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final

from fastapi import APIRouter
from fastapi.responses import Response

from profiles.errors import NotFound

__all__ = ["SECURITY_HEADERS", "WEB_FILES", "WEB_PREFIX", "router"]

router = APIRouter(include_in_schema=False)

WEB_PREFIX: Final = "/web/"

#: The page's files and their media types: nothing else is served.
WEB_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


@cache
def _read(name: str) -> bytes:
    return (resources.files("profiles.http.server") / "web" / name).read_bytes()


def _file(name: str) -> Response:
    media_type = WEB_FILES.get(name)
    if media_type is None:
        raise NotFound("Not found: no such route.", resource="route")
    return Response(_read(name), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
def index() -> Response:
    """The web page."""
    return _file("index.html")


@router.get(WEB_PREFIX + "{name}")
def web_file(name: str) -> Response:
    """One of the page's files."""
    return _file(name)
