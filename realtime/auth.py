"""Signed session tokens (JWT, HS256) for the API, the WebSocket and WebRTC signaling.

Off unless a secret is configured (`--auth-secret` / AVATARCAST_AUTH_SECRET). Then every /v1/
request needs `Authorization: Bearer <token>` or `?token=<token>` (browsers cannot set headers
on a WebSocket). Health, metrics and the demo page stay open; the demo forwards the `token` of
its own URL. `avatarcast token` mints one.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs, unquote_plus, unquote_to_bytes

import jwt

from avatarcast.engines.errors import AvatarcastError, ErrorCode

ALGORITHM = "HS256"
PROTECTED_PREFIX = "/v1/"


class AuthError(AvatarcastError):
    """A missing, expired or badly signed token."""

    code = ErrorCode.UNAUTHORIZED


def mint(secret: str, subject: str = "client", ttl_s: float = 3600.0, **claims: Any) -> str:
    """A token valid for ttl_s seconds."""
    if not secret:
        raise ValueError("a secret is needed to mint a token")
    now = int(time.time())
    return jwt.encode({"sub": subject, "iat": now, "exp": now + int(ttl_s), **claims}, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str | None) -> dict:
    """The token's claims; AuthError says why it is not accepted (missing, bad signature, expired)."""
    if not token:
        raise AuthError("missing token: send 'Authorization: Bearer <token>' or '?token=<token>'")
    try:
        return jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None


def token_from_scope(scope: dict) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            v = value.decode("latin-1")
            if v.lower().startswith("bearer "):
                return v[7:].strip()
    scrubbed = (scope.get("state") or {}).get(QUERY_TOKEN)
    if scrubbed is not None:  # QueryTokenScrub took it out of the query string
        return scrubbed
    q = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
    return (q.get("token") or [None])[0]


QUERY_TOKEN = "query_token"  # where QueryTokenScrub keeps a token it took out of the URL (scope["state"])
SECRET_PARAMS = (b"token", b"access_token")
REDACTED = b"REDACTED"


class QueryTokenScrub:
    """ASGI middleware, outermost: a `?token=` is moved out of the query string into scope["state"] before
    anything sees the URL. uvicorn's access log (and its WebSocket "[accepted]" line) prints the scope's
    query string, so the token never reaches a log, whatever the log configuration."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        qs: bytes = scope.get("query_string") or b""
        if scope["type"] in ("http", "websocket") and b"=" in qs:
            parts = qs.split(b"&")
            for i, part in enumerate(parts):
                name, eq, value = part.partition(b"=")
                key = unquote_to_bytes(name.replace(b"+", b" "))
                if eq and key in SECRET_PARAMS:
                    if key == b"token":  # what token_from_scope reads; the others are only kept out of logs
                        scope.setdefault("state", {}).setdefault(QUERY_TOKEN, unquote_plus(value.decode("latin-1")))
                    parts[i] = name + b"=" + REDACTED
            scope["query_string"] = b"&".join(parts)  # the same dict uvicorn logs from: changed in place
        await self.app(scope, receive, send)


class AuthMiddleware:
    """ASGI middleware: checks /v1/ HTTP requests and WebSocket handshakes before any route runs."""

    def __init__(self, app: Any, secret: str) -> None:
        self.app = app
        self.secret = secret

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            not self.secret
            or scope["type"] not in ("http", "websocket")
            or not scope.get("path", "").startswith(PROTECTED_PREFIX)
        ):
            return await self.app(scope, receive, send)
        try:
            scope.setdefault("state", {})["auth"] = verify(self.secret, token_from_scope(scope))
        except AuthError as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": exc.close_code, "reason": str(exc)[:120]})
                return
            body = json.dumps(exc.body()).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": exc.status,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
