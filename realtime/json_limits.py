"""Bounds on the JSON clients send: its size and its nesting, checked before any parser sees it.

Python's json module recurses once per level of nesting, so 100k levels of `[` raise RecursionError
(a WebSocket 1011, an HTTP 500) instead of a clear refusal. The depth is found here without
recursion or a parse: strings are cut out with one regular expression, and the running count of
brackets left over gives the deepest level (C-speed passes over at most `max_bytes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatarcast.engines.errors import AvatarcastError, ErrorCode

# A JSON string (its brackets are not structure). Possessive, and an unterminated string runs to the end: every
# attempt from a quote matches, so the scan stays linear (the plain pattern is quadratic on '"\\"\\"\\...').
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = np.zeros(256, np.int8)
_OPEN[list(b"[{")] = 1
_OPEN[list(b"]}")] = -1


class JsonLimitError(AvatarcastError):
    """JSON over the size limit (too_large: 413, close 1009) or nested too deep (too_deep: 400, close 1008)."""


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in `data` (0 for a scalar), counted without recursing."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return int(np.cumsum(_OPEN[np.frombuffer(brackets, np.uint8)], dtype=np.int64).max())


@dataclass(frozen=True)
class JsonLimits:
    max_bytes: int = 65_536
    max_depth: int = 32

    def check(self, text: str | bytes) -> bytes:
        """The UTF-8 bytes of `text`, or JsonLimitError saying which limit it breaks."""
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        if len(data) > self.max_bytes:
            raise JsonLimitError(f"JSON over {self.max_bytes} bytes", code=ErrorCode.TOO_LARGE)
        # a message with few brackets cannot be deep: skip the scan for the common, small command
        if data.count(b"[") + data.count(b"{") > self.max_depth and json_depth(data) > self.max_depth:
            raise JsonLimitError(f"JSON nested deeper than {self.max_depth} levels", code=ErrorCode.TOO_DEEP)
        return data

    def loads(self, text: str | bytes) -> Any:
        """json.loads within the limits: JsonLimitError, or ValueError for text that is not JSON."""
        data = self.check(text)
        try:
            return json.loads(text if isinstance(text, str) else data)
        except RecursionError:  # the scan above should make this unreachable; never let it escape as a 1011
            raise JsonLimitError(f"JSON nested deeper than {self.max_depth} levels", code=ErrorCode.TOO_DEEP) from None


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def _json_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """FastAPI parses a body as JSON when its Content-Type is JSON, or when it has none."""
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


class JsonBodyLimits:
    """ASGI middleware: a request body the app would parse as JSON is read here first and refused over the
    size limit (413 too_large, before reading it when Content-Length says so) or too deep (400 too_deep),
    with the API's error body. `raw_paths` matches routes whose body is not JSON (audio clips, SDP)."""

    def __init__(self, app: Any, limits: JsonLimits, raw_paths: re.Pattern[str]) -> None:
        self.app, self.limits, self.raw_paths = app, limits, raw_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE")
            or self.raw_paths.search(scope["path"])
            or not _json_body(scope["headers"])
        ):
            return await self.app(scope, receive, send)
        limit = self.limits.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await _refuse(
                    send, ErrorCode.TOO_LARGE, f"JSON body of {int(value)} bytes; the limit is {limit}"
                )
        body = bytearray()
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return  # the client left (or the server cut a body too slow): nobody to answer
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > limit:
                return await _refuse(send, ErrorCode.TOO_LARGE, f"JSON body over the {limit}-byte limit")
        try:
            self.limits.check(bytes(body))
        except JsonLimitError as exc:
            return await _refuse(send, exc.code, exc.message)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes

        await self.app(scope, replay, send)


async def _refuse(send: Send, code: ErrorCode, message: str) -> None:
    body = json.dumps({"error": code.wire, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the rest of a body it did not read is not worth reading
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
