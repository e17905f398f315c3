"""WHEP signaling (draft-ietf-wish-whep, after WHIP, RFC 9725) and the ICE servers clients read.

- `POST /v1/whep` (a session per peer) or `/v1/sessions/{id}/whep`, body `application/sdp` (else 415): 201 with the
  SDP answer, `Location` (the peer's resource), `ETag` (its ICE session), `Accept-Patch` and one
  `Link: <url>; rel="ice-server"` per STUN/TURN server, TURN credentials minted for this session.
- `PATCH` the resource, body `application/trickle-ice-sdpfrag`: trickle ICE, 204. An ICE restart answers 422
  (aiortc cannot restart ICE). `DELETE` ends the peer. `OPTIONS` on either names the methods (`Allow`).
- `GET /v1/ice-servers`: `{"iceServers": [...], "expires_at"}` for a browser's RTCPeerConnection, read before
  the offer (a Link header comes too late for the offer's own candidates). Same auth as every /v1/ route.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from avatarcast.engines.errors import AvatarcastError, ErrorCode
from avatarcast.realtime.http_contract import OPEN_SESSION, SessionAvatar, errors
from avatarcast.realtime.hub import Hub, HubError
from avatarcast.realtime.ice import IceServers, rtc_ice_servers_json
from avatarcast.realtime.ratelimit import client_keys
from avatarcast.realtime.runner import SessionRunner

log = logging.getLogger("avatarcast.whep")

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
MAX_OFFER_BYTES = 100_000
MAX_SDPFRAG_BYTES = 16_384
ENDPOINT_METHODS = "OPTIONS, POST"
RESOURCE_METHODS = "DELETE, OPTIONS, PATCH"


class ContentTypeError(AvatarcastError):
    """A request body of a media type the route does not take (HTTP 415)."""

    code = ErrorCode.BAD_CONTENT_TYPE


class IceServerEntry(BaseModel):
    urls: list[str] = Field(..., description="stun:, turn: or turns: URLs")
    username: str | None = Field(None, description="TURN only; minted: '<expiry-unix>:<id>'")
    credential: str | None = Field(None, description="TURN only; minted: base64(HMAC-SHA1(secret, username))")


class IceServersInfo(BaseModel):
    iceServers: list[IceServerEntry] = Field(..., description="pass as RTCConfiguration.iceServers")
    expires_at: int | None = Field(None, description="unix seconds after which minted TURN credentials open nothing")


def require_media_type(request: Request, expected: str) -> None:
    """ContentTypeError (415) unless the body is declared as `expected`."""
    got = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if got != expected:
        raise ContentTypeError(f"the body must be {expected} (Content-Type: {got or 'none'})")


async def read_body(request: Request, limit: int) -> str:
    """The body as text; AvatarcastError TOO_LARGE (413) past `limit` bytes, read no further."""
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise AvatarcastError(f"the body is over {limit} bytes", code=ErrorCode.TOO_LARGE)
    return body.decode("utf-8", "replace")


def whep_router(hub: Hub, ice: IceServers, limit_sessions: Callable[[Mapping[str, Any]], None]) -> APIRouter:
    """The WHEP and ICE server routes, each with the error answers it can give (realtime/http_contract.py)."""
    router = APIRouter(tags=["webrtc"])
    body = (ErrorCode.BAD_CONTENT_TYPE, ErrorCode.TOO_LARGE)
    offer_errors = (*body, ErrorCode.BAD_OFFER)
    sdp_offer: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {SDP: {"schema": {"type": "string", "minLength": 1, "maxLength": MAX_OFFER_BYTES}}},
        }
    }
    header = {"schema": {"type": "string"}, "required": True}
    sdp_answer: dict[int | str, Any] = {
        201: {
            "content": {SDP: {"schema": {"type": "string"}}},
            "description": "answer",
            "headers": {"Location": header, "ETag": header, "X-Session-Id": header},
        }
    }
    frag_body: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {SDPFRAG: {"schema": {"type": "string", "minLength": 1, "maxLength": MAX_SDPFRAG_BYTES}}},
        }
    }
    allow: dict[int | str, Any] = {204: {"description": "the methods served here", "headers": {"Allow": header}}}

    @router.get("/v1/ice-servers", response_model=IceServersInfo)
    async def ice_servers() -> Any:
        """STUN/TURN servers for a browser's RTCPeerConnection; TURN credentials minted for this request."""
        servers, expires = ice.for_peer(secrets.token_hex(4))
        body = {"iceServers": rtc_ice_servers_json(servers), "expires_at": expires}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})  # minted credentials: never from a cache

    @router.post(
        "/v1/sessions/{sid}/whep",
        status_code=201,
        responses={**errors(ErrorCode.NO_SESSION, *offer_errors), **sdp_answer},
        openapi_extra=sdp_offer,
    )
    async def whep(sid: str, request: Request) -> Response:
        require_media_type(request, SDP)
        return await offer(hub.get_session(sid), request, owns_session=False)

    @router.post(
        "/v1/whep",
        status_code=201,
        responses={**errors(*OPEN_SESSION, *offer_errors), **sdp_answer},
        openapi_extra=sdp_offer,
    )
    async def whep_new(request: Request, avatar: SessionAvatar = "", language: str | None = None) -> Response:
        """Creates a session for this peer; it ends when the peer goes away."""
        require_media_type(request, SDP)  # before a session is made for it
        limit_sessions(request.scope)
        runner = await hub.open_session(avatar, language=language, client=client_keys(request.scope)[0])
        return await offer(runner, request, owns_session=True)

    async def offer(runner: SessionRunner, request: Request, owns_session: bool) -> Response:
        from avatarcast.realtime import webrtc  # aiortc: imported at start-up (lifespan), not when this module is

        try:
            sdp = await read_body(request, MAX_OFFER_BYTES)
            servers, _ = ice.for_peer(runner.id)
            answer = await webrtc.answer_offer(hub, runner, sdp, owns_session=owns_session, ice_servers=servers)
        except BaseException:  # whatever went wrong (a refusal, a bug, the client gone): no session left behind
            if owns_session:
                await hub.close_session(runner.id)
            raise
        response = Response(
            answer.sdp,
            status_code=201,
            media_type=SDP,
            headers={
                "Location": f"/v1/webrtc/{answer.resource}",
                "X-Session-Id": runner.id,
                "ETag": answer.etag,
                "Accept-Patch": SDPFRAG,
            },
        )
        for server in servers:
            response.headers.append("Link", server.link_header())
        return response

    @router.options("/v1/whep", status_code=204, responses=allow)
    async def whep_options() -> Response:
        return Response(status_code=204, headers={"Allow": ENDPOINT_METHODS, "Accept-Post": SDP})

    @router.options("/v1/sessions/{sid}/whep", status_code=204, responses={**errors(ErrorCode.NO_SESSION), **allow})
    async def whep_session_options(sid: str) -> Response:
        hub.get_session(sid)  # 404 for no such session
        return Response(status_code=204, headers={"Allow": ENDPOINT_METHODS, "Accept-Post": SDP})

    @router.patch(
        "/v1/webrtc/{resource}",
        status_code=204,
        responses=errors(
            ErrorCode.NO_PEER,
            *body,
            ErrorCode.BAD_SDPFRAG,
            ErrorCode.ETAG_MISMATCH,
            ErrorCode.ICE_RESTART_UNSUPPORTED,
        ),
        openapi_extra=frag_body,
    )
    async def whep_patch(resource: str, request: Request) -> Response:
        """Trickle ICE: the client's candidates (RFC 8840 fragment). An ICE restart answers 422."""
        from avatarcast.realtime import webrtc  # aiortc: imported at start-up (lifespan), not when this module is

        if resource not in hub.peers:
            raise HubError(ErrorCode.NO_PEER, f"no WebRTC peer {resource!r}")
        require_media_type(request, SDPFRAG)
        frag = webrtc.parse_sdpfrag(await read_body(request, MAX_SDPFRAG_BYTES))
        await webrtc.add_candidates(hub, resource, frag, request.headers.get("if-match"))
        return Response(status_code=204)

    @router.delete("/v1/webrtc/{resource}", status_code=204, responses=errors(ErrorCode.NO_PEER))
    async def whep_delete(resource: str) -> Response:
        from avatarcast.realtime import webrtc  # aiortc: imported at start-up (lifespan), not when this module is

        if not await webrtc.close_peer(hub, resource):
            raise HubError(ErrorCode.NO_PEER, f"no WebRTC peer {resource!r}")
        return Response(status_code=204)

    @router.options("/v1/webrtc/{resource}", status_code=204, responses={**errors(ErrorCode.NO_PEER), **allow})
    async def whep_resource_options(resource: str) -> Response:
        if resource not in hub.peers:
            raise HubError(ErrorCode.NO_PEER, f"no WebRTC peer {resource!r}")
        return Response(status_code=204, headers={"Allow": RESOURCE_METHODS, "Accept-Patch": SDPFRAG})

    return router
