"""The HTTP API's contract, in one home: the error answers each route gives (typed codes grouped by status, one
JSON body), the refusals any route meets before it runs (connection guard, rate limits, auth, JSON limits,
request validation), the bearer auth scheme, the limits that come from settings and the links from a new
session to its sub-resources. FastAPI writes /openapi.json from the routes; `describe` completes it from here,
so the description says what the server enforces (schemathesis checks it: tests/realtime/test_contract.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BeforeValidator, GetCoreSchemaHandler
from pydantic_core import core_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from avatarcast.engines.errors import ErrorCode
from avatarcast.realtime.auth import PROTECTED_PREFIX
from avatarcast.realtime.avatars import avatar_pattern

JSON = "application/json"
BEARER = "bearer"  # the security schemes' names in components.securitySchemes
QUERY_TOKEN = "query_token"

# refusals before any route runs (realtime/conn_guard.py): every request, every path
GUARD = (ErrorCode.REQUEST_TIMEOUT, ErrorCode.TOO_MANY_CONNECTIONS)
# RateLimitMiddleware: requests under /v1/
LIMITED = (ErrorCode.RATE_LIMITED,)
# JsonBodyLimits and request validation: routes that take a JSON body
JSON_BODY = (ErrorCode.TOO_LARGE, ErrorCode.TOO_DEEP, ErrorCode.BAD_JSON)
# what Hub.open_session refuses (realtime/hub.py), with the session rate limit of create_app
OPEN_SESSION = (
    ErrorCode.STARTING,
    ErrorCode.SHUTTING_DOWN,
    ErrorCode.BUSY,
    ErrorCode.AVATARS_FULL,
    ErrorCode.RATE_LIMITED,
    ErrorCode.BAD_AVATAR,
    ErrorCode.BAD_IMAGE_FORMAT,
    ErrorCode.BAD_QUALITY,
    ErrorCode.BAD_LANGUAGE,
)
# why a clip upload is refused: its size, its slot, and what decoding found (realtime/audio.py's reasons)
CLIP_UPLOAD = (
    ErrorCode.NO_SESSION,
    ErrorCode.TOO_MANY_CLIPS,
    ErrorCode.TOO_LARGE,
    ErrorCode.EMPTY,
    ErrorCode.AUDIO_EMPTY,
    ErrorCode.TOO_LONG,
    ErrorCode.UNSUPPORTED,
    ErrorCode.CORRUPT,
    ErrorCode.NO_AUDIO,
)

# A request that FastAPI's validation refuses: fields a lookup decides (names, languages) answer with that
# lookup's own code, as the same mistake does on a WebSocket; any other field with bad_message (422).
FIELD_CODES: dict[str, ErrorCode] = {
    "avatar": ErrorCode.BAD_AVATAR,
    "label": ErrorCode.UNKNOWN_EMOTION,
    "language": ErrorCode.BAD_LANGUAGE,
}
ROUTE_CODES: dict[str, ErrorCode] = {"/v1/clips": ErrorCode.BAD_CLIP_REQUEST}  # the renderer's one code


def invalid_code(path: str, field: str | None, kind: str = "") -> ErrorCode:
    """The code of a validation failure of `field` on the route at `path` (kind: pydantic's error type)."""
    if path in ROUTE_CODES:
        return ROUTE_CODES[path]
    if kind == "json_invalid":
        return ErrorCode.BAD_JSON
    return FIELD_CODES.get(field or "", ErrorCode.BAD_MESSAGE)


def error_schema(codes: Iterable[ErrorCode]) -> dict[str, Any]:
    """The JSON body of an error answer whose `error` is one of `codes`."""
    return {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "enum": sorted({c.wire for c in codes})},
            "message": {"type": "string"},
        },
    }


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}


def errors(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses` for these error codes: one response per HTTP status, its body's codes enumerated."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in codes:
        if code.status is None:
            raise ValueError(f"{code.wire} is never an HTTP answer")
        by_status.setdefault(code.status, []).append(code)
    out: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        response: dict[str, Any] = {
            "description": ", ".join(sorted({c.wire for c in group})),
            "content": {JSON: {"schema": error_schema(group)}},
        }
        if status in (429, 503):
            response["headers"] = RETRY_AFTER
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string", "enum": ["Bearer"]}}}
        out[status] = response
    return out


def _add_errors(op: dict[str, Any], codes: Iterable[ErrorCode]) -> None:
    """Merge these codes into the operation's documented error responses."""
    responses = op.setdefault("responses", {})
    for status, new in errors(*codes).items():
        old = responses.get(str(status))
        old_codes = ((old or {}).get("content") or {}).get(JSON, {}).get("schema", {}).get("properties", {})
        known = old_codes.get("error", {}).get("enum")
        if old is None or known is None:
            responses[str(status)] = new
            continue
        merged = sorted({*known, *new["content"][JSON]["schema"]["properties"]["error"]["enum"]})
        old["content"][JSON]["schema"] = error_schema(c for c in ErrorCode if c.wire in merged)
        old["description"] = ", ".join(merged)
        if "headers" in new:
            old.setdefault("headers", new["headers"])


def _fields(spec: dict[str, Any], op: dict[str, Any]) -> list[str]:
    """The names of an operation's parameters and its JSON body's properties."""
    names = [p["name"] for p in op.get("parameters", []) if p.get("in") in ("query", "path")]
    body = op.get("requestBody", {}).get("content", {}).get(JSON, {}).get("schema", {})
    ref = body.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        body = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return names + list(body.get("properties", {}))


def _validated(op: dict[str, Any]) -> bool:
    """Whether FastAPI validates something of this operation (it documented a 422 HTTPValidationError)."""
    ref = op.get("responses", {}).get("422", {}).get("content", {}).get(JSON, {}).get("schema", {}).get("$ref", "")
    return ref.endswith("/HTTPValidationError")


LINKS_FROM_SESSION: dict[str, tuple[str, str]] = {  # link name -> (method, path) of the new session's resources
    "GetSession": ("get", "/v1/sessions/{sid}"),
    "DeleteSession": ("delete", "/v1/sessions/{sid}"),
    "Say": ("post", "/v1/sessions/{sid}/say"),
    "SetEmotion": ("post", "/v1/sessions/{sid}/emotion"),
    "UploadClip": ("post", "/v1/sessions/{sid}/clips"),
    "OfferWhep": ("post", "/v1/sessions/{sid}/whep"),
    "WhepOptions": ("options", "/v1/sessions/{sid}/whep"),
}


def describe(
    spec: dict[str, Any], *, auth: bool, limits: dict[tuple[str, str], dict[str, Any]], languages: list[str] | None
) -> dict[str, Any]:
    """Complete FastAPI's description in place: error answers of the middleware and of validation, auth, the
    settings' limits (`limits`: (schema, property) -> keywords), the ASR languages and the session links."""
    comps = spec.setdefault("components", {})
    schemas = comps.setdefault("schemas", {})
    comps["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "`avatarcast token`"},
        QUERY_TOKEN: {"type": "apiKey", "in": "query", "name": "token", "description": "for WebSocket URLs"},
    }
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            codes: list[ErrorCode] = list(GUARD)
            if path.startswith(PROTECTED_PREFIX):
                codes += LIMITED
                if auth:
                    codes.append(ErrorCode.UNAUTHORIZED)
                    op["security"] = [{BEARER: []}, {QUERY_TOKEN: []}]
            if JSON in op.get("requestBody", {}).get("content", {}):
                codes += JSON_BODY
            if _validated(op):
                del op["responses"]["422"]
                codes += {invalid_code(path, f) for f in _fields(spec, op)} | {invalid_code(path, None)}
            _add_errors(op, codes)
            if path == "/v1/sessions" and method == "post":
                op["responses"]["201"]["links"] = {
                    name: {
                        "operationId": item_op(spec, m, p)["operationId"],
                        "parameters": {"sid": "$response.body#/id"},
                    }
                    for name, (m, p) in LINKS_FROM_SESSION.items()
                }
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for (schema, prop), keywords in limits.items():
        _property(schemas[schema], prop).update(keywords)
    if languages is not None:
        for schema in schemas.values():
            if "language" in schema.get("properties", {}):
                _property(schema, "language").update(enum=languages)
        for item in spec.get("paths", {}).values():
            for op in item.values():
                for p in op.get("parameters", []):
                    if p["name"] == "language":
                        _property({"properties": {"x": p["schema"]}}, "x").update(enum=languages)
    return spec


def item_op(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return spec["paths"][path][method]


def _property(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The string/number branch of a property (its non-null alternative when it is nullable)."""
    prop = schema["properties"][name]
    for branch in prop.get("anyOf", []):
        if branch.get("type") != "null":
            return branch
    return prop


def install(app: FastAPI, complete: Callable[[dict[str, Any]], dict[str, Any]], stable: Callable[[], bool]) -> None:
    """Validation failures answer with the API's error body; /openapi.json is FastAPI's description completed by
    `complete` (kept once `stable()`: the ASR languages are known when the models are loaded)."""

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        errs = exc.errors() if isinstance(exc, RequestValidationError) else []
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ())]
        route = request.scope.get("route")
        code = invalid_code(getattr(route, "path", ""), loc[-1] if len(loc) > 1 else None, first.get("type", ""))
        message = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in errs[:5])
        return JSONResponse(
            {"error": code.wire, "message": message or "invalid request"}, status_code=code.status or 422
        )

    async def unparsable(request: Request, exc: Exception) -> Response:
        """FastAPI's 400 for a body it cannot even decode (not UTF-8): the API's bad_json answer."""
        if not isinstance(exc, StarletteHTTPException) or exc.status_code != 400:
            return await http_exception_handler(request, exc)  # type: ignore[arg-type]
        code = ErrorCode.BAD_JSON
        return JSONResponse(
            {"error": code.wire, "message": f"the body cannot be read: {exc.detail}"}, code.status or 422
        )

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, unparsable)
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = complete(plain())
        if not stable():
            app.openapi_schema = None  # described again once the models are loaded
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


@dataclass(frozen=True)
class OneOf:
    """`Annotated[str, OneOf(values)]`: a string that must be one of `values`; the schema lists them (enum)."""

    values: tuple[str, ...]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.literal_schema(list(self.values))


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# `Annotated[int, Field(...), WHOLE]` (after the constraints, or the schema loses them): JSON Schema counts 83.0 as
# an integer, so a strict model's integer field takes it too
WHOLE = BeforeValidator(_whole)


@dataclass(frozen=True)
class Pattern:
    """`Annotated[str, Pattern(p)]`: a string in which `p` is found, by Python's re.search as JSON Schema consumers
    in Python search it (a query parameter's or body field's `pattern` means the same to both sides)."""

    pattern: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.str_schema(pattern=self.pattern, regex_engine="python-re")


# the avatar a new session asks for (HTTP body or WHEP query): a choice of avatar_pattern, or "" for the server's
SessionAvatar = Annotated[str, Pattern(avatar_pattern(default=True))]
