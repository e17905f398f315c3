"""Per-client rate limits: token buckets keyed by client IP, and by token subject when auth is on.

Three limits (realtime/settings.py): session creations per minute, /v1/ HTTP requests per second,
WebSocket messages per second. A request over a limit gets 429 with Retry-After (HTTP); a
WebSocket message over it is dropped with an error event, and a client that keeps flooding is
closed with 1008. A client is every key it has: its IP and, with auth, its token's subject (so a
token shared from many addresses is limited as one client too). A rate of 0 turns a limit off.
Buckets are created on first use and forgotten once full again, so memory follows the active
clients, not everyone ever seen. ClientSockets caps the sockets one client IP holds open at once.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from avatarcast.engines.errors import AvatarcastError, ErrorCode


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    __slots__ = ("rate", "burst", "tokens", "t")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, now

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now

    def wait_s(self, n: float = 1.0) -> float:
        """Seconds until n tokens are there (0: now)."""
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate


class RateLimiter:
    """Token buckets by key; `take(keys)` takes a token from each, or from none if any is empty."""

    def __init__(
        self, rate_per_s: float, burst: float, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = float(rate_per_s)
        self.burst = max(1.0, float(burst))
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, keys: Iterable[str]) -> float:
        """0.0 if allowed (a token was taken from every key's bucket), else seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        buckets = []
        for k in keys:
            b = self._buckets.get(k)
            if b is None:
                if len(self._buckets) >= self.max_keys:
                    self._forget_full(now)
                b = self._buckets[k] = TokenBucket(self.rate, self.burst, now)
            b.refill(now)
            buckets.append(b)
        wait = max((b.wait_s() for b in buckets), default=0.0)
        if wait > 0:
            return wait
        for b in buckets:
            b.tokens -= 1.0
        return 0.0

    def _forget_full(self, now: float) -> None:
        for k, b in list(self._buckets.items()):
            b.refill(now)
            if b.tokens >= b.burst:
                del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)


class Limits:
    """The server's three limiters, built from Settings."""

    def __init__(self, settings: Any, clock: Callable[[], float] = time.monotonic) -> None:
        s = settings
        self.sessions = RateLimiter(s.rate_sessions_per_min / 60.0, 20, clock=clock)
        self.http = RateLimiter(s.rate_http_per_s, 2 * s.rate_http_per_s, clock=clock)
        self.ws = RateLimiter(s.rate_ws_msgs_per_s, 2 * s.rate_ws_msgs_per_s, clock=clock)


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
