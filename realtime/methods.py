"""405 answers whose `Allow` header lists every method the path serves, with the JSON error body.

Starlette answers 405 from the first route whose path matches, so `Allow` named only that route's methods
(GET, and not DELETE, for /v1/sessions/{id}). Here every route of the path counts: each method is tried
against the app's routes (included routers too) with Starlette's own matching.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount
from starlette.types import Scope

from avatarcast.engines.errors import ErrorCode

METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods some route serves at this scope's path (mounted apps, which take any method, aside)."""
    routes = [r for r in app.router.routes if not isinstance(r, Mount)]
    return [m for m in METHODS if any(r.matches({**scope, "method": m})[0] == Match.FULL for r in routes)]


def install(app: FastAPI) -> None:
    """Answer every 405 with the full `Allow` list and a `method_not_allowed` JSON body."""

    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        own = (exc.headers or {}).get("Allow", "") if isinstance(exc, HTTPException) else ""
        allow = ", ".join(allowed_methods(app, request.scope)) or own
        body = {"error": ErrorCode.METHOD_NOT_ALLOWED.wire, "message": f"{request.method} is not served here"}
        if allow:
            body["message"] += f"; allowed: {allow}"
        return JSONResponse(body, status_code=405, headers={"Allow": allow} if allow else None)

    app.add_exception_handler(405, method_not_allowed)
