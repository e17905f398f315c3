"""Per-client rate limits: token buckets keyed by client IP, and by token subject when auth is on.

Three limits (realtime/settings.py): session creations per minute, /v1/ HTTP requests per second,
WebSocket messages per second. A request over a limit gets 429 with Retry-After (HTTP); a
WebSocket message over it is dropped with an error event, and a client that keeps flooding is
closed with 1008. A client is every key it has: its IP and, with auth, its token's subject (so a
token shared from many addresses is limited as one client too). A rate of 0 turns a limit off.
Buckets are created on first use and forgotten once full again, so memory follows the active
clients, not everyone ever seen. With --redis-url the buckets live in Redis (realtime/shared_state.py),
so every gateway draws on one budget per client. ClientSockets caps the sockets one client IP holds open at once.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from avatarcast.engines.errors import AvatarcastError, ErrorCode
from avatarcast.realtime.buckets import RateLimiter, TokenBucket
from avatarcast.realtime.shared_state import SharedState, SharedStateError

__all__ = [
    "ClientSockets",
    "FloodGuard",
    "Limits",
    "RateLimiter",
    "SharedRateLimiter",
    "TokenBucket",
    "client_keys",
    "retry_after",
]


class SharedRateLimiter(RateLimiter):
    """The same buckets kept in a SharedState (Redis: one budget across gateways). When the store fails
    (SharedStateError, logged there), this process's own buckets (the parent class) answer."""

    def __init__(self, name: str, shared: SharedState, rate_per_s: float, burst: float, **kw: Any) -> None:
        super().__init__(rate_per_s, burst, **kw)
        self.name, self.shared = name, shared

    def take(self, keys: Iterable[str]) -> float:
        if not self.enabled:
            return 0.0
        keys = list(keys)
        try:
            return self.shared.take_tokens(self.name, keys, self.rate, self.burst)
        except SharedStateError:
            return super().take(keys)


class Limits:
    """The server's three limiters, built from Settings; shared across gateways when `shared` is."""

    def __init__(
        self, settings: Any, clock: Callable[[], float] = time.monotonic, shared: SharedState | None = None
    ) -> None:
        s = settings

        def limiter(name: str, rate: float, burst: float) -> RateLimiter:
            if shared is not None and shared.shared:
                return SharedRateLimiter(name, shared, rate, burst, clock=clock)
            return RateLimiter(rate, burst, clock=clock)

        self.sessions = limiter("sessions", s.rate_sessions_per_min / 60.0, 20)
        self.http = limiter("http", s.rate_http_per_s, 2 * s.rate_http_per_s)
        self.ws = limiter("ws", s.rate_ws_msgs_per_s, 2 * s.rate_ws_msgs_per_s)


def client_keys(scope: Mapping[str, Any]) -> list[str]:
    """The keys one client is limited by: its IP, and its token's subject when auth checked one."""
    client = scope.get("client")
    keys = [f"ip:{client[0] if client else 'unknown'}"]
    auth = (scope.get("state") or {}).get("auth")
    if isinstance(auth, dict) and auth.get("sub") is not None:
        keys.append(f"sub:{auth['sub']}")
    return keys


def retry_after(wait_s: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))


class FloodGuard:
    """One WebSocket's verdict over time: drop messages over the limit, close once it keeps flooding.

    Flooding = more than `max_dropped` messages dropped within `window_s`. An error event goes out
    at most once per `notify_s`, so the answer to a flood is not a flood."""

    def __init__(
        self,
        limiter: RateLimiter,
        keys: list[str],
        *,
        window_s: float = 2.0,
        notify_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter, self.keys = limiter, keys
        self.window_s, self.notify_s = window_s, notify_s
        self.max_dropped = max(1, int(limiter.burst))
        self.clock = clock
        self._dropped: deque[float] = deque()
        self._notified = -math.inf
        self.dropped = 0

    def check(self) -> tuple[str, float]:
        """("ok" | "drop" | "notify" | "close", retry-after seconds) for one incoming message."""
        wait = self.limiter.take(self.keys)
        if wait <= 0:
            return "ok", 0.0
        now = self.clock()
        self.dropped += 1
        self._dropped.append(now)
        while self._dropped and self._dropped[0] < now - self.window_s:
            self._dropped.popleft()
        if len(self._dropped) > self.max_dropped:
            return "close", wait
        if now - self._notified >= self.notify_s:
            self._notified = now
            return "notify", wait
        return "drop", wait


class ClientSockets:
    """Open WebSockets per client IP as the app sees it (a trusted proxy's X-Forwarded-For names the client),
    so clients behind one proxy are each held to the limit too."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()

    def _refusal(self, key: str) -> AvatarcastError | None:
        if self.open[key] >= self.limit:
            return AvatarcastError(
                f"this client already has {self.limit} open sockets; close one first",
                code=ErrorCode.TOO_MANY_CONNECTIONS,
            )
        return None

    def full(self, scope: Mapping[str, Any]) -> AvatarcastError | None:
        """Why one more socket from this client is refused, or None (nothing is taken)."""
        return self._refusal(client_keys(scope)[0])

    def take(self, scope: Mapping[str, Any]) -> AvatarcastError | None:
        """Count one more socket of this client, or say why not (then nothing is counted)."""
        key = client_keys(scope)[0]
        refusal = self._refusal(key)
        if refusal is None:
            self.open[key] += 1
        return refusal

    def give_back(self, scope: Mapping[str, Any]) -> None:
        key = client_keys(scope)[0]
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


class RateLimitMiddleware:
    """ASGI middleware: /v1/ HTTP requests per client over the limit get 429 with Retry-After.

    WebSocket messages are limited in realtime/ws.py (FloodGuard); health, metrics and the demo
    page are not limited."""

    def __init__(self, app: Any, hub: Any) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            return await self.app(scope, receive, send)
        wait = self.hub.limits.http.take(client_keys(scope))
        if wait <= 0:
            return await self.app(scope, receive, send)
        self.hub.metrics.rate_limited.labels("http").inc()
        code = ErrorCode.RATE_LIMITED
        body = json.dumps(
            {"error": code.wire, "message": f"over {self.hub.limits.http.rate:g} requests/s from this client"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": code.status,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", retry_after(wait).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
