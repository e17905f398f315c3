"""Connection bounds uvicorn lacks: time for a request's headers, a body's pace, connections per IP, silent sockets.

uvicorn bounds the gap between requests (timeout_keep_alive), message and header sizes, all clients
together (limit_concurrency: 503) and unanswered WebSocket pings (a 1011 close). Nothing times a request
from its first byte to the end of its headers: a client that connects and sends nothing, or one header
byte a second (slowloris), holds its connection forever; a body may trickle forever; one address may open
every connection the process can hold. The protocol classes here are uvicorn's own (httptools for HTTP/1.1,
websockets-sansio for WebSockets) with those timers and counts added; `protocol_classes` makes a pair per
server. They lean on uvicorn internals (tests/realtime/test_bounds.py pins the behaviour).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import Counter
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from avatarcast.engines.errors import CLOSE_POLICY, ErrorCode

log = logging.getLogger("avatarcast.conn")
IDLE_CLOSE_WAIT_S = 2.0  # after an idle close frame, how long a silent peer gets to answer it


def _raw_error(code: ErrorCode, message: str) -> bytes:
    """A whole HTTP/1.1 error response with the API's JSON body; the connection closes after it."""
    body = json.dumps({"error": code.wire, "message": message}).encode()
    head = (
        f"HTTP/1.1 {code.status} {'Request Timeout' if code.status == 408 else 'Too Many Requests'}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """One server's limits and its open connections per peer IP (trusted proxies are not counted: behind one,
    ClientSockets counts each client's sockets by X-Forwarded-For instead)."""

    def __init__(
        self,
        *,
        max_per_ip: int,
        header_timeout_s: float,
        body_min_bytes_per_s: float,
        ws_idle_s: float,
        trusted_proxies: str = "",
    ) -> None:
        self.max_per_ip = max_per_ip
        self.header_timeout_s = header_timeout_s
        self.body_min_bytes_per_s = body_min_bytes_per_s
        self.ws_idle_s = ws_idle_s
        self._trust_all, self._trusted = _parse_networks(trusted_proxies)
        self.per_ip: Counter[str] = Counter()
        self._ip_of: dict[Any, str] = {}  # transport -> the IP it was counted under
        self.cut: Counter[str] = Counter()  # connections this guard ended, by reason (for /metrics and tests)

    def trusted(self, ip: str) -> bool:
        if self._trust_all:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False  # a unix socket path: not a proxy we know
        return any(addr in net for net in self._trusted)

    def open(self, transport: Any, client: tuple[str, int] | None) -> bool:
        """Count a new connection; False when its IP already holds max_per_ip (it is then not counted)."""
        if client is None or self.trusted(client[0]):
            return True
        ip = client[0]
        if self.per_ip[ip] >= self.max_per_ip:
            return False
        self.per_ip[ip] += 1
        self._ip_of[transport] = ip
        return True

    def close(self, transport: Any) -> None:
        """Forget a connection (idempotent: both the HTTP and the WebSocket protocol of one may call it)."""
        ip = self._ip_of.pop(transport, None)
        if ip is not None:
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]

    @property
    def open_connections(self) -> int:
        return len(self._ip_of)


def _parse_networks(spec: str) -> tuple[bool, list[Any]]:
    nets = []
    for part in (p.strip() for p in spec.split(",")):
        if part == "*":
            return True, []
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                pass  # a host name or unix socket: uvicorn's proxy handling deals with those
    return False, nets


class GuardedHttpProtocol(HttpToolsProtocol):
    """HTTP/1.1: headers within header_timeout_s of the request's first byte (of the connection, for the first
    request), a body at body_min_bytes_per_s or faster, at most max_per_ip connections per address."""

    guard: ConnectionGuard  # set by protocol_classes()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0
        self._body_t0 = 0.0
        self._over = not self.guard.open(transport, self.client)
        if self._over:
            self.guard.cut["per_ip"] += 1
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self.guard.close(self.transport)
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for t in (self._header_timer, self._body_timer):
            if t is not None:
                t.cancel()
        self._header_timer = self._body_timer = None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self.guard.cut["header_timeout"] += 1
        log.info(
            "closed a connection from %s: no complete request headers in %g s",
            _ip(self.client),
            self.guard.header_timeout_s,
        )
        if self.cycle is None or self.cycle.response_complete:  # nothing of ours is on the wire: say why
            self.transport.write(
                _raw_error(
                    ErrorCode.REQUEST_TIMEOUT,
                    f"request headers not complete within {self.guard.header_timeout_s:g} s",
                )
            )
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()  # a keep-alive connection's next request: its own header time

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._over:
            self.app = _too_many_connections(self.guard.max_per_ip)  # this connection's requests: 429, close
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        if _has_body(self.headers):
            self._body_bytes, self._body_t0 = 0, self.loop.time()
            self._body_timer = self.loop.call_later(self.guard.header_timeout_s, self._check_body_pace)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def _check_body_pace(self) -> None:
        """After a grace of header_timeout_s, the body must have come at body_min_bytes_per_s on average;
        time the app holds it back (flow control: it is not reading) is not the client's fault."""
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body or cycle.response_complete:
            return
        elapsed = self.loop.time() - self._body_t0
        need = self.guard.body_min_bytes_per_s * elapsed
        if self.flow.read_paused or self._body_bytes >= need:
            self._body_timer = self.loop.call_later(1.0, self._check_body_pace)
            return
        self.guard.cut["body_too_slow"] += 1
        rate = self._body_bytes / max(elapsed, 1e-9)
        log.info(
            "closed a connection from %s: request body at %.0f B/s, under the %g B/s minimum",
            _ip(self.client),
            rate,
            self.guard.body_min_bytes_per_s,
        )
        if not cycle.response_started:
            self.transport.write(
                _raw_error(
                    ErrorCode.REQUEST_TIMEOUT,
                    f"request body at {rate:.0f} bytes/s; the minimum is {self.guard.body_min_bytes_per_s:g}",
                )
            )
        cycle.disconnected = True  # the app's receive() now answers http.disconnect, its sends do nothing
        cycle.message_event.set()
        self.transport.close()

    def handle_websocket_upgrade(self) -> None:
        if self._over:  # the handshake is refused before the WebSocket protocol (and the app) sees it
            self.transport.write(
                _raw_error(ErrorCode.TOO_MANY_CONNECTIONS, f"over {self.guard.max_per_ip} connections from this IP")
            )
            self.transport.close()
            return
        super().handle_websocket_upgrade()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


def _ip(client: tuple[str, int] | None) -> str:
    return client[0] if client else "?"


def _too_many_connections(limit: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps(
            {"error": ErrorCode.TOO_MANY_CONNECTIONS.wire, "message": f"over {limit} connections from this IP"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": ErrorCode.TOO_MANY_CONNECTIONS.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"5"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """WebSockets: closed with 1008 `idle` when nothing (no message, no pong, no ping) came for ws_idle_s; the
    server pings every ws_idle_s / 3 (uvicorn's own keepalive, with its 1011 pong timeout turned off)."""

    guard: ConnectionGuard  # set by protocol_classes()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_heard = self.loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.guard.close(self.transport)
        super().connection_lost(exc)

    # every whole frame from the peer is a sign of life
    def _heard(self) -> None:
        self.last_heard = self.loop.time()

    def handle_text(self, event: Any) -> None:
        self._heard()
        super().handle_text(event)

    def handle_bytes(self, event: Any) -> None:
        self._heard()
        super().handle_bytes(event)

    def handle_cont(self, event: Any) -> None:
        self._heard()
        super().handle_cont(event)

    def handle_ping(self) -> None:
        self._heard()
        super().handle_ping()

    def handle_pong(self, event: Any) -> None:
        self._heard()
        super().handle_pong(event)

    def start_keepalive(self) -> None:  # the handshake is done: the silence clock starts
        super().start_keepalive()
        self._heard()
        self._idle_timer = self.loop.call_later(self.guard.ws_idle_s, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self.close_sent or self.transport.is_closing():
            return
        idle = self.loop.time() - self.last_heard
        # read_paused: a message waits for the app, so the peer's later frames are unread, not missing
        if idle < self.guard.ws_idle_s or self.read_paused:
            self._idle_timer = self.loop.call_later(max(0.05, self.guard.ws_idle_s - idle), self._check_idle)
            return
        self.guard.cut["ws_idle"] += 1
        reason = f"idle: nothing received for {idle:.0f} s (no message, no pong)"
        log.info("closed a WebSocket from %s: %s", _ip(self.client), reason)
        self._idle_closed = True
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CLOSE_POLICY, "reason": reason})
        self.conn.send_close(CLOSE_POLICY, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(IDLE_CLOSE_WAIT_S, self.transport.close)

    async def send(self, message: Any) -> None:
        if self._idle_closed and message["type"] in ("websocket.send", "websocket.close"):
            raise ClientDisconnected()  # the app learns the socket is gone, as when the peer leaves
        await super().send(message)


def protocol_classes(guard: ConnectionGuard) -> tuple[type, type]:
    """(HTTP, WebSocket) protocol classes for one server, sharing `guard`."""
    http = type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"guard": guard})
    ws = type("GuardedWebSocketProtocol", (GuardedWebSocketProtocol,), {"guard": guard})
    return http, ws
