"""ICE servers (STUN/TURN): what `--ice-server` and `--turn-secret` configure, and what peers are handed.

One list serves both ends: the server's own aiortc peer and every client (the WHEP 201's `Link` headers,
`GET /v1/ice-servers`). A TURN URL either carries fixed credentials (`turn:USER:PASS@host:3478`), handed to
clients as given, or none, and then each peer and each request gets TURN REST credentials minted from
`--turn-secret` (coturn's `use-auth-secret`): username `<expiry-unix>:<id>`, credential
base64(HMAC-SHA1(secret, username)), valid for `--turn-ttl-s`. The secret itself never leaves the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from avatarcast.engines.errors import AvatarcastError, ErrorCode

# what browsers and aiortc both take: host (a name or IPv4), an optional port, and for TURN ?transport=udp|tcp
_URL = re.compile(
    r"(?P<scheme>stun|turns?):(?:(?P<user>[^:@/?\s]*):(?P<pw>[^@/?\s]*)@)?"
    r"(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?"
)
_PRINTABLE = re.compile(r"[\x21-\x7e]+")  # a credential goes into an HTTP header


class IceConfigError(AvatarcastError, ValueError):
    """A bad --ice-server URL or TURN setting (the CLI prints it and exits)."""

    code = ErrorCode.START_FAILED


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN URL, with the credentials a peer logs in with (empty for STUN)."""

    url: str  # without credentials: stun:host[:port], turn[s]:host[:port][?transport=udp|tcp]
    username: str = ""
    credential: str = field(default="", repr=False)

    @property
    def is_turn(self) -> bool:
        return self.url.startswith("turn")

    def link_header(self) -> str:
        """This server as a WHEP `Link: <url>; rel="ice-server"` value (draft-ietf-wish-whep, RFC 9725 4.6)."""
        value = f'<{self.url}>; rel="ice-server"'
        if self.is_turn:
            value += f'; username="{_quote(self.username)}"; credential="{_quote(self.credential)}"'
            value += '; credential-type="password"'
        return value


def _quote(s: str) -> str:
    """An HTTP quoted-string's content (RFC 9110 5.6.4)."""
    return s.replace("\\", "\\\\").replace('"', '\\"')


def parse_ice_server(text: str) -> IceServer:
    """'turn:user:pass@host:3478?transport=udp' -> IceServer; IceConfigError says what is wrong."""
    m = _URL.fullmatch(text.strip())
    if m is None:
        raise IceConfigError(
            f"bad ICE server URL {text!r}: use stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp] or "
            "turns:HOST[:PORT]?transport=tcp, with USER:PASSWORD@ before HOST for fixed TURN credentials"
        )
    scheme, user, pw, transport = m["scheme"], m["user"], m["pw"], m["transport"]
    if scheme == "stun" and (user is not None or transport):
        raise IceConfigError(f"a stun: URL takes no credentials and no ?transport: {text!r}")
    if scheme == "turns" and transport == "udp":
        raise IceConfigError(f"turns: runs over TLS, so its transport is tcp: {text!r}")
    if m["port"] and not 0 < int(m["port"]) < 65536:
        raise IceConfigError(f"bad port in {text!r}")
    url = text.strip()
    if user is not None:
        url = url.replace(f"{user}:{pw}@", "", 1)
        user, pw = unquote(user), unquote(pw)
        if not (_PRINTABLE.fullmatch(user) and _PRINTABLE.fullmatch(pw)):
            raise IceConfigError(f"TURN username and password must be printable ASCII (percent-encoded): {url!r}")
    return IceServer(url, user or "", pw or "")


def parse_ice_servers(values: Iterable[str] | str) -> tuple[IceServer, ...]:
    """URLs from --ice-server flags, or one AVATARCAST_ICE_SERVERS string (comma or space separated)."""
    items = values.replace(",", " ").split() if isinstance(values, str) else [v for v in values if v.strip()]
    return tuple(parse_ice_server(v) for v in items)


def turn_rest_credentials(secret: str, ident: str, ttl_s: float, now: float | None = None) -> tuple[str, str, int]:
    """TURN REST API credentials (coturn use-auth-secret): (username, credential, expiry in unix seconds)."""
    expires = int(time.time() if now is None else now) + max(1, int(ttl_s))
    username = f"{expires}:{ident}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii"), expires


@dataclass(frozen=True)
class IceServers:
    """The configured servers; `for_peer` fills in minted TURN credentials where the URL has none."""

    servers: tuple[IceServer, ...] = ()
    turn_secret: str = field(default="", repr=False)
    turn_ttl_s: float = 600.0

    @classmethod
    def from_config(cls, urls: Iterable[str] | str, turn_secret: str = "", turn_ttl_s: float = 600.0) -> IceServers:
        """Parsed and checked: a TURN URL without credentials needs the secret, and the secret a TURN URL."""
        servers = parse_ice_servers(urls)
        minted = [s for s in servers if s.is_turn and not s.username]
        if minted and not turn_secret:
            raise IceConfigError(
                f"TURN server {minted[0].url} has no credentials: give --turn-secret (coturn static-auth-secret) "
                "or USER:PASSWORD@ in its URL"
            )
        if turn_secret and not minted:
            raise IceConfigError("--turn-secret is set but no turn:/turns: --ice-server without credentials uses it")
        if not turn_ttl_s >= 10:
            raise IceConfigError(f"turn_ttl_s must be >= 10 seconds, got {turn_ttl_s}")
        return cls(servers, turn_secret, turn_ttl_s)

    @property
    def fixed_turn_credentials(self) -> bool:
        """True when a long-lived TURN password from the configuration is handed to every client."""
        return any(s.is_turn and s.username for s in self.servers)

    def for_peer(self, ident: str, now: float | None = None) -> tuple[tuple[IceServer, ...], int | None]:
        """The servers with credentials for one peer or request (ident: who, in the TURN username), and
        when minted credentials expire (unix seconds; None when none were minted)."""
        if not any(s.is_turn and not s.username for s in self.servers):
            return self.servers, None
        username, credential, expires = turn_rest_credentials(self.turn_secret, ident, self.turn_ttl_s, now)
        out = tuple(IceServer(s.url, username, credential) if s.is_turn and not s.username else s for s in self.servers)
        return out, expires

    def describe(self) -> str:
        """For the start-up log: URLs and where TURN credentials come from, never a secret or password."""
        if not self.servers:
            return "none (host candidates only: clients must reach this machine directly)"
        parts = [
            s.url + (" (fixed credentials)" if s.username else f" (minted, {self.turn_ttl_s:g} s)" if s.is_turn else "")
            for s in self.servers
        ]
        return ", ".join(parts)


def rtc_ice_servers_json(servers: Iterable[IceServer]) -> list[dict]:
    """RTCConfiguration.iceServers for browsers: TURN URLs sharing credentials grouped in one entry."""
    groups: dict[tuple[str, str], list[str]] = {}
    for s in servers:
        groups.setdefault((s.username, s.credential) if s.is_turn else ("", ""), []).append(s.url)
    out = []
    for (username, credential), urls in groups.items():
        entry: dict = {"urls": urls}
        if username:
            entry |= {"username": username, "credential": credential}
        out.append(entry)
    return out
