"""State the gateways share: rate-limit buckets, clip-render claims and the clip result index.

`SharedState` is the contract. `LocalState` keeps it in this process (one machine: the default);
`RedisState` keeps it in Redis (`--redis-url`), so N gateways allow one budget, not N, and render
a clip once. When Redis stops answering in service, its calls raise `SharedStateError`; the callers
(realtime/ratelimit.py, realtime/clips.py) log it and fall back to this process's own state until
Redis answers again. At start-up an unreachable Redis fails the start (a wrong URL shows at once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from avatarcast.engines.errors import AvatarcastError
from avatarcast.realtime.buckets import RateLimiter

log = logging.getLogger("avatarcast.shared_state")
PREFIX = "avatarcast:"  # every key this project writes in Redis
RETRY_S = 5.0  # after a failed call, Redis is not asked again for this long (requests use local state meanwhile)


class SharedStateError(AvatarcastError):
    """The shared store (Redis) did not answer; the caller falls back to its process's own state."""


class SharedState(Protocol):
    """What the gateways share. Keys are short names; implementations add their own prefix."""

    shared: bool  # True: other processes see the same state

    def take_tokens(self, name: str, keys: Sequence[str], rate: float, burst: float) -> float:
        """Token buckets `name`/key: 0.0 if a token was taken from each key's bucket, else seconds to wait."""
        ...

    def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take `key` for `owner` unless someone holds it; it lapses after ttl_s (a crashed owner)."""
        ...

    def release(self, key: str, owner: str) -> None:
        """Give `key` back, only if `owner` still holds it."""
        ...

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str, ttl_s: float) -> None: ...

    def check(self) -> None:
        """Raises SharedStateError when the store cannot be reached (called at start-up)."""
        ...

    def close(self) -> None: ...


class LocalState:
    """The SharedState of one process: today's behaviour, nothing leaves it."""

    shared = False

    def __init__(self) -> None:
        self._limiters: dict[tuple[str, float, float], RateLimiter] = {}
        self._values: dict[str, tuple[str, float]] = {}  # key -> (value, expires at, monotonic)
        self._lock = threading.Lock()

    def take_tokens(self, name: str, keys: Sequence[str], rate: float, burst: float) -> float:
        lim = self._limiters.get((name, rate, burst))
        if lim is None:
            lim = self._limiters[(name, rate, burst)] = RateLimiter(rate, burst)
        return lim.take(keys)

    def _live(self, key: str) -> str | None:
        v = self._values.get(key)
        if v is not None and v[1] <= time.monotonic():
            del self._values[key]
            return None
        return v[0] if v else None

    def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._values[key] = (owner, time.monotonic() + ttl_s)
            return True

    def release(self, key: str, owner: str) -> None:
        with self._lock:
            if self._live(key) == owner:
                del self._values[key]

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key)

    def put(self, key: str, value: str, ttl_s: float) -> None:
        with self._lock:
            self._values[key] = (value, time.monotonic() + ttl_s)

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None


# One token bucket per key, all keys at once: either every bucket gives a token or none does (a client is
# every key it has). Redis's own clock, so gateways with skewed clocks share one time line. Returns the wait
# as a string (Lua numbers come back as integers).
TAKE_LUA = """
local rate, burst, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local wait, toks = 0, {}
for i, k in ipairs(KEYS) do
  local v = redis.call('HMGET', k, 'tokens', 't')
  local tokens, last = tonumber(v[1]), tonumber(v[2])
  if tokens == nil then tokens, last = burst, now end
  tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
  toks[i] = tokens
  if tokens < 1 then wait = math.max(wait, (1 - tokens) / rate) end
end
for i, k in ipairs(KEYS) do
  local tokens = toks[i]
  if wait == 0 then tokens = tokens - 1 end
  redis.call('HSET', k, 'tokens', string.format('%.6f', tokens), 't', string.format('%.6f', now))
  redis.call('PEXPIRE', k, ttl)
end
return string.format('%.6f', wait)
"""
# delete a claim only if its owner still holds it (a lapsed claim may belong to someone else by now)
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisState:
    """SharedState in Redis (one instance; all keys under `avatarcast:`). Needs redis-py (the `cluster` extra)."""

    shared = True

    def __init__(self, url: str, timeout_s: float = 0.25) -> None:
        import redis  # the `cluster` extra: only a server given --redis-url needs it

        self.url = url
        # a short timeout: rate limits are checked on the request path, and an outage must not stall requests
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )
        self._take = self.client.register_script(TAKE_LUA)
        self._release = self.client.register_script(RELEASE_LUA)
        self._errors = (redis.RedisError, OSError)
        # one breaker for every user of this connection: an outage costs one timeout per RETRY_S, not one per call
        self.breaker = Breaker(f"redis at {url}")

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        if not self.breaker.open():
            raise SharedStateError(f"redis at {self.url}: unavailable a moment ago; retried after {RETRY_S:g} s")
        try:
            out = fn(*args, **kw)
        except self._errors as exc:
            err = SharedStateError(f"redis at {self.url}: {type(exc).__name__}: {exc}")
            self.breaker.failed(err)
            raise err from exc
        self.breaker.ok()
        return out

    def take_tokens(self, name: str, keys: Sequence[str], rate: float, burst: float) -> float:
        ttl_ms = int(1000 * burst / rate) + 1000  # a bucket left alone this long is full: forget it
        rkeys = [f"{PREFIX}rl:{name}:{k}" for k in keys]
        return float(self._call(self._take, keys=rkeys, args=[rate, burst, ttl_ms]))

    def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        return bool(self._call(self.client.set, PREFIX + key, owner, nx=True, px=int(ttl_s * 1000)))

    def release(self, key: str, owner: str) -> None:
        self._call(self._release, keys=[PREFIX + key], args=[owner])

    def get(self, key: str) -> str | None:
        return self._call(self.client.get, PREFIX + key)

    def put(self, key: str, value: str, ttl_s: float) -> None:
        self._call(self.client.set, PREFIX + key, value, px=int(ttl_s * 1000))

    def check(self) -> None:
        self.breaker.down_until = 0.0  # asked on purpose: ask Redis now
        self._call(self.client.ping)

    def close(self) -> None:
        self.client.close()


class Breaker:
    """After a failed call, skip the shared store for RETRY_S (callers use their own state meanwhile), and
    log each outage once when it starts and once when it ends."""

    def __init__(self, what: str, clock: Any = time.monotonic) -> None:
        self.what, self.clock = what, clock
        self.down_until = 0.0
        self.down = False

    def open(self) -> bool:
        """True: try the shared store now."""
        return self.clock() >= self.down_until

    def failed(self, exc: SharedStateError) -> None:
        if not self.down:
            log.warning("shared state unavailable, each gateway uses its own until it answers: %s", exc)
        self.down = True
        self.down_until = self.clock() + RETRY_S

    def ok(self) -> None:
        if self.down:
            log.warning("shared state (%s) answers again", self.what)
        self.down = False


def make_shared_state(redis_url: str) -> SharedState:
    """RedisState for a URL (redis://host:port/db, rediss://, unix://), else LocalState."""
    return RedisState(redis_url) if redis_url else LocalState()
