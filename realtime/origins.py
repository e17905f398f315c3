"""Which web origins may use the API from a browser: CORS for HTTP, an Origin check for WebSockets.

Browsers apply CORS to fetch/XHR but not to WebSockets: any page can open a socket to this
server, with the user's cookies and network position (cross-site WebSocket hijacking). So the
handshake's Origin header is checked here. A request without Origin (curl, apps, aiortc, the
Python client) is not a browser page and passes; a browser page passes when it is served by
this server itself (Origin matches Host) or its origin is in `--allowed-origins` (a comma list,
or `*` for any). The same list drives the CORS headers of /v1/ HTTP requests, so a web app on
another origin can call the API, and only the ones listed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from avatarcast.engines.errors import ErrorCode


def parse_origins(value: str) -> tuple[str, ...]:
    """'https://a.example, http://localhost:3000' -> normalized origins (scheme://host[:port])."""
    out = []
    for item in value.split(","):
        item = item.strip().rstrip("/")
        if item:
            out.append(item if item == "*" else item.lower())
    return tuple(out)


def _header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers") or []:
        if k == name:
            return v.decode("latin-1")
    return None


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    if origin is None:
        return True  # not a browser page
    origin = origin.strip().rstrip("/").lower()
    if "*" in allowed or origin in allowed:
        return True
    return bool(host and urlsplit(origin).netloc == host.strip().lower())  # served by this server


class OriginMiddleware:
    """ASGI middleware: refuses WebSocket handshakes from origins not allowed (HTTP 403, before any route)."""

    def __init__(self, app: Any, allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            origin = _header(scope, b"origin")
            if origin is not None and not origin_allowed(origin, _header(scope, b"host"), self.allowed):
                await send(
                    {
                        "type": "websocket.close",
                        "code": ErrorCode.ORIGIN_NOT_ALLOWED.close,
                        "reason": f"origin {origin[:60]} is not allowed (--allowed-origins)",
                    }
                )
                return
        await self.app(scope, receive, send)
