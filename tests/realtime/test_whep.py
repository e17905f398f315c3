"""WHEP conformance against the real server (draft-ietf-wish-whep, as WHIP's RFC 9725): media types, methods,
the 201's headers, and trickle ICE by PATCH with a real aiortc client whose offer carries no candidates."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

SDP = {"Content-Type": "application/sdp"}
FRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


def run(coro, timeout: float = 40.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_media_types_methods_and_options(base: str) -> None:
    with httpx.Client(base_url=base, timeout=20) as c:
        before = c.get("/v1/status").json()["sessions"]
        for headers in ({}, {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}):
            r = c.post("/v1/whep", content=b"v=0\r\n", headers=headers)
            assert r.status_code == 415 and r.json()["error"] == "bad_content_type", r.text
        assert c.get("/v1/status").json()["sessions"] == before  # no session was made for a refused offer
        # parameters after the media type are fine; a bad offer is then a 400, not a 415
        r = c.post("/v1/whep", content=b"v=0\r\n", headers={"Content-Type": "application/SDP; charset=utf-8"})
        assert r.status_code == 400 and r.json()["error"] == "bad_offer"
        r = c.post("/v1/whep", content=b"v=0\r\n" + b"a=x\r\n" * 20_000, headers=SDP)
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        assert c.get("/v1/status").json()["sessions"] == before  # nor for a refused offer's session

        r = c.options("/v1/whep")
        assert r.status_code == 204 and r.headers["allow"] == "OPTIONS, POST"
        assert r.headers["accept-post"] == "application/sdp"
        sid = c.post("/v1/sessions", json={}).json()["id"]
        try:
            assert c.options(f"/v1/sessions/{sid}/whep").headers["allow"] == "OPTIONS, POST"
            assert c.post(f"/v1/sessions/{sid}/whep", content=b"v=0").status_code == 415
            assert c.options("/v1/sessions/nope/whep").status_code == 404
            # 405 names every method of the path (Starlette named only the first route's)
            for method, path, allow in [
                ("PUT", f"/v1/sessions/{sid}", "DELETE, GET"),
                ("GET", "/v1/whep", "OPTIONS, POST"),
                ("DELETE", f"/v1/sessions/{sid}/whep", "OPTIONS, POST"),
                ("GET", "/v1/webrtc/anything", "DELETE, OPTIONS, PATCH"),
                ("POST", "/v1/ice-servers", "GET"),
            ]:
                r = c.request(method, path)
                assert r.status_code == 405 and r.headers["allow"] == allow, (method, path, r.headers, r.text)
                assert r.json()["error"] == "method_not_allowed"
        finally:
            c.delete(f"/v1/sessions/{sid}")
        r = c.patch("/v1/webrtc/nope", content=b"a=end-of-candidates\r\n", headers=FRAG)
        assert r.status_code == 404 and r.json()["error"] == "no_peer"
        assert c.options("/v1/webrtc/nope").status_code == 404
        # no STUN/TURN configured on this server: an empty list, and no Link headers below
        r = c.get("/v1/ice-servers")
        assert r.json() == {"iceServers": [], "expires_at": None} and r.headers["cache-control"] == "no-store"


def without_candidates(sdp: str) -> tuple[str, list[str]]:
    """The offer with its candidate lines taken out, and those lines."""
    lines = sdp.split("\r\n")
    cands = [ln for ln in lines if ln.startswith("a=candidate:")]
    return "\r\n".join(ln for ln in lines if ln not in cands and ln != "a=end-of-candidates"), cands


def test_trickle_ice_by_patch(base: str, server_hub) -> None:
    """The offer goes without candidates; they follow in a PATCH; the server's ICE agent then holds them
    as host candidates (signalled, not learned as peer-reflexive) and video arrives."""

    async def go() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("events")
        video: asyncio.Future = asyncio.get_running_loop().create_future()
        pc.on("track", lambda t: video.done() or video.set_result(t))
        await pc.setLocalDescription(await pc.createOffer())
        offer, cands = without_candidates(pc.localDescription.sdp)
        assert cands and "a=candidate" not in offer
        ufrag = re.search(r"a=ice-ufrag:(\S+)", offer)[1]
        pwd = re.search(r"a=ice-pwd:(\S+)", offer)[1]
        mid = re.search(r"a=mid:(\S+)", offer)[1]
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            r = await http.post("/v1/whep", content=offer, headers=SDP)
            assert r.status_code == 201, r.text
            loc, etag, answer = r.headers["location"], r.headers["etag"], r.text
            assert r.headers["accept-patch"] == "application/trickle-ice-sdpfrag" and etag.startswith('"')
            assert "link" not in r.headers
            assert (await http.options(loc)).headers["allow"] == "DELETE, OPTIONS, PATCH"
            try:
                frag = f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{mid}\r\n"
                body = frag + "".join(c + "\r\n" for c in cands)
                # refusals first: the wrong media type, a stale ETag, ICE restarts, junk
                assert (await http.patch(loc, content=body, headers=SDP)).status_code == 415
                r = await http.patch(loc, content=body, headers={**FRAG, "If-Match": '"other"'})
                assert r.status_code == 412 and r.json()["error"] == "etag_mismatch"
                r = await http.patch(loc, content=body, headers={**FRAG, "If-Match": "*"})
                assert r.status_code == 422 and r.json()["error"] == "ice_restart_unsupported"
                restart = body.replace(f"a=ice-ufrag:{ufrag}", "a=ice-ufrag:abcd")
                assert (await http.patch(loc, content=restart, headers=FRAG)).status_code == 422
                r = await http.patch(loc, content=b"hello\r\n", headers=FRAG)
                assert r.status_code == 400 and r.json()["error"] == "bad_sdpfrag"
                r = await http.patch(loc, content=f"a=mid:{mid}\r\na=candidate:1 1 udp\r\n", headers=FRAG)
                assert r.status_code == 400 and r.json()["error"] == "bad_sdpfrag"
                lines = "".join(
                    f"a=candidate:{i} 1 udp 2122260223 192.0.2.9 {40000 + i} typ host\r\n" for i in range(65)
                )
                many = f"a=mid:{mid}\r\n{lines}"
                assert (await http.patch(loc, content=many, headers=FRAG)).status_code == 413  # 64 per peer
                assert (await http.patch(loc, content="a=x\r\n" * 4000, headers=FRAG)).status_code == 413

                r = await http.patch(loc, content=body + "a=end-of-candidates\r\n", headers={**FRAG, "If-Match": etag})
                assert r.status_code == 204, r.text
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                track = await asyncio.wait_for(video, 15)
                frames = [await asyncio.wait_for(track.recv(), 5) for _ in range(3)]
                assert (frames[-1].width, frames[-1].height) == (640, 360)
                peer = server_hub.peers[loc.rsplit("/", 1)[1]]
                remote = peer.pc.getTransceivers()[0].receiver.transport.transport.getRemoteCandidates()
                ports = {int(c.split()[5]) for c in cands}
                assert {c.port for c in remote if c.type == "host"} >= ports, (remote, ports)
            finally:
                await http.delete(loc)
                await pc.close()

    run(go())


def test_an_offer_aiortc_takes_but_cannot_answer_is_a_bad_offer_and_leaves_no_session(base: str) -> None:
    """Found by the SDP fuzz: a real offer whose data-channel m-line names an unknown media passes
    setRemoteDescription, then aiortc fails inside createAnswer (AttributeError). That was a 500 and, on
    POST /v1/whep, a session that was never closed: the slots filled and every later client got 503."""

    async def go() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp.replace("m=application ", "m=RTP/AVP ")
        await pc.close()
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            before = (await http.get("/v1/status")).json()["sessions"]
            for path in ("/v1/whep", "/v1/whep", "/v1/whep"):
                r = await http.post(path, content=offer, headers=SDP)
                assert r.status_code == 400 and r.json()["error"] == "bad_offer", r.text
                assert "cannot answer" in r.json()["message"]
            assert (await http.get("/v1/status")).json()["sessions"] == before

    run(go())


def test_offers_that_fail_after_the_answer_leave_no_error_in_the_log(caplog: Any) -> None:
    """aiortc starts its own connect task once it has both descriptions; for some damaged offers that task then
    fails (a transceiver with no transport: AttributeError), with nobody to await it, and asyncio logged "Task
    exception was never retrieved" at ERROR (the SDP fuzz met about one in 150). The server logs those at
    debug now: a log that cries wolf hides real errors. Replays the SDP fuzz's first offers (tests/realtime/
    test_fuzz.py) against an in-process server, then one offer that makes the connect task fail every time.

    The fuzz offers alone do not always hold such an offer: real_offer() has random-length fields (SSRCs,
    session id), the mutations' random draws depend on the lengths, and for about one base offer in 15 none
    of the 150 fails that way (a CI run met it). The offer without its video m-section always does:
    aiortc takes it and schedules its connect task, the server refuses it (no video m-line), and the task
    runs before the peer is closed and fails on the video transceiver that got no transport."""
    import gc
    import logging
    import random

    from tests.conftest import NOT_ABOUT_THE_DRAW, running_server
    from tests.realtime.test_fuzz import SDP_TYPE, mutate_sdp, real_offer

    offer = real_offer()
    rng = random.Random(20261204)
    bodies = [mutate_sdp(offer, rng) for _ in range(150)]
    head, *sections = offer.split("\r\nm=")
    no_video = "\r\nm=".join([head, *(m for m in sections if not m.startswith("video "))]).encode()

    def logged() -> bool:
        return any("connect task" in r.getMessage() for r in caplog.records)

    async def go(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for body in bodies:
                r = await http.post("/v1/whep", content=body, headers=SDP_TYPE)
                if r.status_code == 201:
                    await http.delete(r.headers["location"])
            r = await http.post("/v1/whep", content=no_video, headers=SDP_TYPE)
            assert r.status_code == 400 and "no video m-line" in r.json()["message"], r.text
            # the failed task is logged when it is collected: wait for that (a loaded machine is slow), not a guess
            deadline = time.monotonic() + 30
            while not logged() and time.monotonic() < deadline:
                gc.collect()
                await asyncio.sleep(0.05)

    with (
        caplog.at_level(logging.DEBUG),
        running_server(rate_sessions_per_min=60000, rate_http_per_s=10000, **NOT_ABOUT_THE_DRAW) as (b, _),
    ):
        run(go(b), timeout=180)  # 151 offers, each gathering ICE candidates: minutes on a loaded 2-core machine
    for _ in range(3):  # tasks still pending at shutdown are collected here; none may reach asyncio's ERROR
        gc.collect()
        time.sleep(0.3)
    lost = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "asyncio"], lost
    assert logged(), "the failures are logged, at debug"
