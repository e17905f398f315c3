"""ICE server configuration (realtime/ice.py): URL parsing, TURN REST credentials, the WHEP Link header, the flags.

The credentials' real check is coturn accepting them (tests/realtime/test_turn.py); the HMAC here is compared with
a value openssl computed (`printf '%s' '1700000600:abc' | openssl dgst -sha1 -hmac s3cret -binary | base64`).
"""

from __future__ import annotations

import pytest

from avatarcast.realtime.cli import build_parser
from avatarcast.realtime.ice import (
    IceConfigError,
    IceServer,
    IceServers,
    parse_ice_server,
    parse_ice_servers,
    rtc_ice_servers_json,
    turn_rest_credentials,
)
from avatarcast.realtime.settings import Settings


def test_urls_parse_with_and_without_credentials() -> None:
    assert parse_ice_server("stun:stun.example.org:3478") == IceServer("stun:stun.example.org:3478")
    s = parse_ice_server("turn:al%40ice:p%3Ass@turn.example.org:3478?transport=tcp")
    assert (s.url, s.username, s.credential, s.is_turn) == (
        "turn:turn.example.org:3478?transport=tcp",
        "al@ice",
        "p:ss",
        True,
    )
    assert "p:ss" not in repr(s)  # a password never reaches a log through repr
    assert parse_ice_server("turns:turn.example.org?transport=tcp").url == "turns:turn.example.org?transport=tcp"
    assert [x.url for x in parse_ice_servers("stun:a.example, turn:b.example:3478  turn:c.example")] == [
        "stun:a.example",
        "turn:b.example:3478",
        "turn:c.example",
    ]


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://turn.example.org", "bad ICE server URL"),
        ("stun:u:p@stun.example.org", "takes no credentials"),
        ("stun:stun.example.org?transport=udp", "takes no credentials"),
        ("turns:turn.example.org?transport=udp", "its transport is tcp"),
        ("turn:turn.example.org:99999", "bad port"),
        ("turn:turn.example.org?transport=sctp", "bad ICE server URL"),
        ("turn:us%0Aer:pw@turn.example.org", "printable ASCII"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(IceConfigError, match=message):
        parse_ice_server(url)


def test_turn_rest_credentials_are_coturns_hmac_scheme() -> None:
    assert turn_rest_credentials("s3cret", "abc", 600, now=1700000000) == (
        "1700000600:abc",
        "ruHZknQUqt/fGtalWsevnkxA2zI=",
        1700000600,
    )


def test_minted_credentials_fill_only_turn_urls_without_their_own() -> None:
    ice = IceServers.from_config(
        [
            "stun:s.example",
            "turn:t.example:3478?transport=udp",
            "turn:t.example:3478?transport=tcp",
            "turn:u:p@f.example",
        ],
        turn_secret="s3cret",
        turn_ttl_s=120,
    )
    servers, expires = ice.for_peer("sess1", now=1000)
    assert expires == 1120
    assert [(s.url, s.username) for s in servers] == [
        ("stun:s.example", ""),
        ("turn:t.example:3478?transport=udp", "1120:sess1"),
        ("turn:t.example:3478?transport=tcp", "1120:sess1"),
        ("turn:f.example", "u"),
    ]
    assert ice.fixed_turn_credentials and "s3cret" not in repr(ice) and "s3cret" not in ice.describe()
    # a browser's RTCConfiguration.iceServers: the two minted TURN URLs share one entry
    assert rtc_ice_servers_json(servers) == [
        {"urls": ["stun:s.example"]},
        {
            "urls": ["turn:t.example:3478?transport=udp", "turn:t.example:3478?transport=tcp"],
            "username": "1120:sess1",
            "credential": servers[1].credential,
        },
        {"urls": ["turn:f.example"], "username": "u", "credential": "p"},
    ]
    assert IceServers.from_config("stun:s.example").for_peer("x") == ((IceServer("stun:s.example"),), None)


def test_the_whep_link_header_has_the_drafts_form() -> None:
    assert IceServer("stun:s.example:3478").link_header() == '<stun:s.example:3478>; rel="ice-server"'
    assert IceServer("turn:t.example?transport=udp", "1:a", 'q"\\').link_header() == (
        '<turn:t.example?transport=udp>; rel="ice-server"; username="1:a"; credential="q\\"\\\\"; '
        'credential-type="password"'
    )


@pytest.mark.parametrize(
    "urls, secret, ttl, message",
    [
        ("turn:t.example", "", 600, "has no credentials: give --turn-secret"),
        ("stun:s.example", "s3cret", 600, "no turn:/turns: --ice-server without credentials uses it"),
        ("turn:t.example", "s3cret", 5, "turn_ttl_s must be >= 10"),
    ],
)
def test_turn_settings_that_cannot_work_are_refused(urls: str, secret: str, ttl: float, message: str) -> None:
    with pytest.raises(IceConfigError, match=message):
        IceServers.from_config(urls, secret, ttl)


def test_flags_repeat_and_the_env_var_lists() -> None:
    args = build_parser().parse_args(
        ["serve", "--ice-server", "stun:s.example", "--ice-server", "turn:t.example:3478", "--turn-secret", "k"]
    )
    s = Settings.from_args(args, env={})
    assert [x.url for x in s.ice().servers] == ["stun:s.example", "turn:t.example:3478"]
    assert "turn_secret" not in repr(s)
    env = {"AVATARCAST_ICE_SERVERS": "stun:a.example,turn:b.example", "AVATARCAST_TURN_SECRET": "k2"}
    s = Settings.from_args(build_parser().parse_args(["serve"]), env=env)
    assert [x.url for x in s.ice().servers] == ["stun:a.example", "turn:b.example"] and s.ice().turn_secret == "k2"
    # a flag replaces the variable's list
    s = Settings.from_args(build_parser().parse_args(["serve", "--ice-server", "turn:c.example"]), env=env)
    assert [x.url for x in s.ice().servers] == ["turn:c.example"]
    with pytest.raises(ValueError, match="bad ICE server URL"):
        Settings.from_args(build_parser().parse_args(["serve", "--ice-server", "turn://x"]), env={})
