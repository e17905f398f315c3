"""WebRTC through a real TURN server: coturn (Debian's /usr/bin/turnserver) on loopback with a static auth secret,
the server minting TURN REST credentials from it, and clients that may only use relayed candidates
(iceTransportPolicy "relay"): an aiortc client, and headless Chromium reading GET /v1/ice-servers as a web page would.
The selected candidate pair must be a relay one, and coturn's own log must show the relayed bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection, RTCSessionDescription

from avatarcast.realtime.settings import Settings
from tests.conftest import NOT_ABOUT_THE_DRAW, running_server

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
CHROMIUM = os.environ.get("AVATARCAST_CHROMIUM", "/usr/bin/chromium")
COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "docker-compose.yml"
SDP = {"Content-Type": "application/sdp"}

pytestmark = [
    pytest.mark.skipif(not Path(TURNSERVER).exists(), reason="no coturn (apt-get install coturn)"),
    pytest.mark.slow,
]


def free_udp_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (coturn listens on both)."""
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


class Coturn:
    """A running turnserver: its URL for --ice-server, the secret, and its log."""

    def __init__(self, port: int, secret: str, log: Path) -> None:
        self.port = port
        self.url = f"turn:127.0.0.1:{port}?transport=udp"
        self.secret = secret
        self.log = log

    def peer_usage(self) -> dict[str, int]:
        """Bytes each finished allocation relayed to and from its peers, by TURN username (coturn -v logs them)."""
        pattern = r"peer usage: realm=<[^>]*>, username=<([^>]*)>, rp=\d+, rb=(\d+), sp=\d+, sb=(\d+)"
        return {u: int(rb) + int(sb) for u, rb, sb in re.findall(pattern, self.log.read_text())}


@contextlib.contextmanager
def turnserver(d: Path, *flags: str) -> Iterator[Coturn]:
    """coturn on loopback with these flags, free ports, its files in `d`; yields once it accepts connections."""
    port, low = free_udp_tcp_port(), 49152 + secrets.randbelow(15000)
    p = subprocess.Popen(
        [
            TURNSERVER,
            *flags,
            "--verbose",  # logs each allocation and what it relayed
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={port}",
            f"--min-port={low}",
            f"--max-port={low + 200}",
            f"--log-file={d / 'turn.log'}",
            "--simple-log",
            f"--pidfile={d / 'turn.pid'}",
            f"--userdb={d / 'turndb'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert p.poll() is None and time.monotonic() < deadline, f"turnserver did not start ({p.poll()})"
                time.sleep(0.1)
        yield Coturn(port, "", d / "turn.log")
        assert p.poll() is None, "turnserver exited"
    finally:
        p.terminate()
        p.wait(10)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    secret = secrets.token_hex(16)
    flags = ["-n", "--no-cli", "--use-auth-secret", f"--static-auth-secret={secret}", "--realm=avatarcast.test"]
    flags += ["--allow-loopback-peers", "--no-tls", "--no-dtls", "--fingerprint"]  # relay and peers on this machine
    with turnserver(tmp_path_factory.mktemp("coturn"), *flags) as c:
        c.secret = secret
        yield c


@pytest.fixture(scope="module")
def turn_server(coturn: Coturn) -> Iterator[str]:
    """A server that gathers through coturn and mints its clients' TURN credentials (60 s)."""
    with running_server(
        admission=0, ladder=0, ice_servers=coturn.url, turn_secret=coturn.secret, turn_ttl_s=60, **NOT_ABOUT_THE_DRAW
    ) as (
        base,
        _,
    ):
        yield base


def test_the_ice_servers_endpoint_mints_short_lived_credentials(turn_server: str, coturn: Coturn) -> None:
    """GET /v1/ice-servers: the TURN URL with credentials minted for this request, good for turn_ttl_s (60 s)."""
    r = httpx.get(turn_server + "/v1/ice-servers")
    assert r.status_code == 200
    body = r.json()
    [entry] = body["iceServers"]
    assert entry["urls"] == [coturn.url]
    expiry, _, ident = entry["username"].partition(":")
    assert int(expiry) == body["expires_at"] and 55 <= body["expires_at"] - time.time() <= 61 and ident
    assert coturn.secret not in r.text


def relay_video_with_aiortc(base: str) -> tuple[int, str, list[str]]:
    """An aiortc viewer that may only use relayed candidates: (frames received, its session id, the Link headers)."""

    async def go() -> tuple[int, str, list[str]]:
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            ice = (await http.get("/v1/ice-servers")).json()["iceServers"]
            servers = [RTCIceServer(e["urls"], e.get("username"), e.get("credential")) for e in ice]
            pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY))
            pc.addTransceiver("video", direction="recvonly")
            video: asyncio.Future = asyncio.get_running_loop().create_future()
            pc.on("track", lambda t: video.done() or video.set_result(t))
            try:
                await pc.setLocalDescription(await pc.createOffer())
                offer = pc.localDescription.sdp
                types = set(re.findall(r"a=candidate:\S+ \d \S+ \d+ \S+ \d+ typ (\w+)", offer))
                assert types == {"relay"}, offer  # the policy left only coturn's relayed candidate
                r = await http.post("/v1/whep", content=offer, headers=SDP)
                assert r.status_code == 201, r.text
                await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
                track = await asyncio.wait_for(video, 15)
                frames = [await asyncio.wait_for(track.recv(), 5) for _ in range(10)]
                assert (frames[-1].width, frames[-1].height) == (640, 360)
                return len(frames), r.headers["x-session-id"], r.headers.get_list("link")
            finally:
                await pc.close()

    return asyncio.run(asyncio.wait_for(go(), 40))


def test_aiortc_relay_only_client_gets_video_through_coturn(turn_server: str, coturn: Coturn) -> None:
    n, sid, links = relay_video_with_aiortc(turn_server)
    assert n == 10
    [link] = links
    assert link.startswith(f'<{coturn.url}>; rel="ice-server"; username="') and 'credential-type="password"' in link
    assert f':{sid}"' in link  # minted for this session: username "<expiry>:<session id>"
    # coturn logs an allocation's usage when it ends: the client's (not the server's own, named after the session)
    # relayed the video, not only ICE checks
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        relayed = {u: n for u, n in coturn.peer_usage().items() if not u.endswith(":" + sid)}
        if relayed and max(relayed.values()) > 10_000:  # 10 VP8 frames: ~30 kB; ICE checks alone: ~100 B
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no client allocation relayed the video: {coturn.peer_usage()}")


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

# WHEP from a web page: ICE servers from GET /v1/ice-servers, relay only, offer after gathering; then the stats
PAGE_JS = """
async () => {
  const ice = await (await fetch('/v1/ice-servers')).json();
  const pc = new RTCPeerConnection({iceServers: ice.iceServers, iceTransportPolicy: 'relay'});
  pc.addTransceiver('video', {direction: 'recvonly'});
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; document.body.appendChild(video);
  pc.ontrack = (e) => { video.srcObject = e.streams[0] || new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
    setTimeout(done, 8000);
  });
  const r = await fetch('/v1/whep', {method: 'POST', headers: {'Content-Type': 'application/sdp'},
                                     body: pc.localDescription.sdp});
  if (r.status !== 201) return {status: r.status, body: await r.text()};
  await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
  const out = {status: 201, offer: pc.localDescription.sdp, frames: 0};
  const t0 = performance.now();
  while (performance.now() - t0 < 20000) {
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') out.frames = s.framesDecoded || 0;
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
        out.local = local.candidateType; out.relayProtocol = local.relayProtocol; out.remote = remote.candidateType;
        out.bytes = pair.bytesReceived;
      }
    });
    if (out.frames >= 8 && out.local) break;
    await new Promise((ok) => setTimeout(ok, 250));
  }
  out.width = video.videoWidth;
  await fetch(r.headers.get('Location'), {method: 'DELETE'});
  pc.close();
  return out;
}
"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
def test_chromium_relay_only_gets_video_through_coturn(turn_server: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(turn_server + "/healthz")  # same origin as the API: no CORS in the way
            out = page.evaluate(PAGE_JS)
        finally:
            browser.close()
    assert out["status"] == 201, out
    types = set(re.findall(r"a=candidate:\S+ \d \S+ \d+ \S+ \d+ typ (\w+)", out["offer"]))
    assert types == {"relay"}, out["offer"]
    assert out["frames"] >= 8 and out["width"] == 640, out
    # the pair Chromium selected: its own side is coturn's relayed address, reached over UDP
    assert out["local"] == "relay" and out["relayProtocol"] == "udp" and out["bytes"] > 10_000, out


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, nested ones from the inside out."""
    inner = re.compile(r"\$\{(\w+)(?::([-?])([^${}]*))?\}")

    def one(m: re.Match) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        assert op != "?", f"compose needs {name}: {arg}"
        return arg or ""

    while (out := inner.sub(one, text)) != text:
        text = out
    return text


def test_the_compose_files_coturn_and_server_settings_work(tmp_path: Path) -> None:
    """deploy/compose: coturn 4.6 takes its flags and relays only to this host, the server's environment validates,
    and credentials the server mints from it open an allocation (the deployment itself needs Docker: not run here)."""
    yaml = pytest.importorskip("yaml")
    from aioice import stun, turn

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    env = {"PUBLIC_IP": "127.0.0.1", "TURN_SECRET": secrets.token_hex(32), "HOST_IP": "10.9.8.7"}
    settings = Settings.from_env(
        {k: interpolate(str(v), env) for k, v in services["avatarcast"]["environment"].items()}
    )
    settings.validate()
    assert settings.turn_secret == env["TURN_SECRET"]
    ice = settings.ice()
    assert [s.url for s in ice.servers] == [f"turn:127.0.0.1:3478?transport={t}" for t in ("udp", "tcp")]
    # this machine's coturn in place of the container's: loopback, free ports, files in tmp_path
    here = ("--listening-port", "--min-port", "--max-port", "--pidfile", "--userdb", "--log-file")
    flags = [interpolate(a, env) for a in services["coturn"]["command"] if not a.startswith(here)]
    assert f"--static-auth-secret={env['TURN_SECRET']}" in flags and "--use-auth-secret" in flags

    async def go(port: int) -> None:
        [minted, _], _ = ice.for_peer("compose")
        username, credential = minted.username, minted.credential
        t, _ = await turn.create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), username, credential)
        inner = t._TurnTransport__inner_protocol  # a raw CreatePermission: what coturn lets this allocation reach

        async def permit(ip: str) -> bool:
            req = stun.Message(message_method=stun.Method.CREATE_PERMISSION, message_class=stun.Class.REQUEST)
            req.attributes["XOR-PEER-ADDRESS"] = (ip, 9)
            try:
                await inner.request_with_retry(req)
                return True
            except stun.TransactionFailed:
                return False

        try:
            assert await permit("10.9.8.7")  # HOST_IP: this host, allowed
            assert not await permit("10.9.8.8") and not await permit("192.168.1.1")  # the rest of the LAN: refused
        finally:
            t.close()
        with pytest.raises(stun.TransactionFailed):  # a wrong credential opens nothing
            await turn.create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), username, "x" + credential)

    with turnserver(tmp_path, *flags) as c:
        asyncio.run(asyncio.wait_for(go(c.port), 20))
