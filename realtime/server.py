"""`avatarcast serve`: the HTTP API, the WebSocket endpoint, WebRTC signaling and the demo page.

FastAPI gives the OpenAPI description (/openapi.json, /docs) from the same code that serves.
The Hub loads models in the background: /healthz answers at once, /readyz once it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from avatarcast.engines.errors import CLOSE_INTERNAL, AvatarcastError, ErrorCode
from avatarcast.realtime import allocator, events
from avatarcast.realtime import http_contract as contract
from avatarcast.realtime.auth import AuthMiddleware, QueryTokenScrub
from avatarcast.realtime.avatars import avatar_names, avatar_pattern
from avatarcast.realtime.clips import FORMATS, ClipRequest
from avatarcast.realtime.commands import DEFAULT_INTENSITY, MAX_SAY_CHARS, TEXT_PATTERN
from avatarcast.realtime.conn_guard import ConnectionGuard, protocol_classes
from avatarcast.realtime.hub import Hub, HubError
from avatarcast.realtime.json_limits import JsonBodyLimits, JsonLimits
from avatarcast.realtime.logs import setup_logging
from avatarcast.realtime.methods import install as install_allow
from avatarcast.realtime.origins import OriginMiddleware, parse_origins
from avatarcast.realtime.ratelimit import RateLimitMiddleware, client_keys, retry_after
from avatarcast.realtime.session import REACTION_EMOTIONS
from avatarcast.realtime.settings import Settings
from avatarcast.realtime.whep import whep_router
from avatarcast.realtime.wire_fields import payload_model
from avatarcast.realtime.ws import serve_socket
from avatarcast.vocabulary import DEFAULT_AVATAR, EMOTIONS, IMAGE_FORMATS

log = logging.getLogger("avatarcast.server")
STATIC = Path(__file__).parent / "static"
# routes whose request body is not JSON (audio clips, SDP, trickle ICE): JsonBodyLimits leaves them alone
RAW_BODY_PATHS = re.compile(r"^/v1/sessions/[^/]+/clips$|/whep$|^/v1/webrtc/")


# A request body is what its schema says, no more: no "5" for 5 (strict), patterns searched as JSON Schema
# consumers in Python search them (python-re), so the description and the server agree on every value.
STRICT = ConfigDict(strict=True, regex_engine="python-re")
AVATAR = "a built-in name (pip, bun, tok, mo, luna, kiko), its index, or random-<seed>"
ImageFormat = Annotated[str, contract.OneOf(tuple(IMAGE_FORMATS))]


class SessionCreate(BaseModel):
    model_config = STRICT
    avatar: contract.SessionAvatar = Field("", description=AVATAR + "; empty: the server's")
    image_format: ImageFormat | None = Field(None, description="WebSocket frame format; webp keeps alpha")
    quality: Annotated[int, Field(ge=1, le=100), contract.WHOLE] | None = None
    language: str | None = Field(
        None,
        description="what the person speaks: auto (found per utterance) or a Whisper code (en, zh, ...) to force it",
    )


class SessionInfo(BaseModel):
    id: str
    avatar: str
    state: str
    emotion: str
    image_format: str
    language: str | None
    frames_sent: int
    frames_dropped: int
    clients: int
    age_s: float
    ws_url: str | None = None
    whep_url: str | None = None


class SayRequest(BaseModel):
    model_config = STRICT
    text: str = Field(..., min_length=1, max_length=MAX_SAY_CHARS, pattern=TEXT_PATTERN)


class EmotionRequest(BaseModel):
    model_config = STRICT
    label: Annotated[str, contract.OneOf(REACTION_EMOTIONS)]
    intensity: float = Field(DEFAULT_INTENSITY, ge=0.0, le=1.0)


# the clip's result over HTTP is the `clip` event's payload over the WebSocket
ClipResult = payload_model(events.Clip, "ClipResult")


class RenderRequest(BaseModel):
    """Exactly one of emotion and text; `seconds` at most the server's --max-render-seconds."""

    model_config = ConfigDict(
        strict=True,
        regex_engine="python-re",
        json_schema_extra={
            "oneOf": [{"required": [k], "properties": {k: {"type": "string"}}} for k in ("emotion", "text")]
        },
    )
    avatar: Annotated[str, contract.Pattern(avatar_pattern())] = Field(DEFAULT_AVATAR, description=AVATAR)
    emotion: Annotated[str, contract.OneOf(EMOTIONS)] | None = Field(None, description="or give text")
    text: str | None = Field(
        None, min_length=1, max_length=MAX_SAY_CHARS, pattern=TEXT_PATTERN, description="the emotion is read from it"
    )
    seconds: float = Field(3.0, gt=0)
    format: Annotated[str, contract.OneOf(tuple(FORMATS))] = "mp4"
    intensity: float | None = Field(None, ge=0.0, le=1.0)
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), contract.WHOLE] = Field(0, description="the sampler's random seed")


def _err(code: ErrorCode, message: str) -> JSONResponse:
    return JSONResponse({"error": code.wire, "message": message}, status_code=code.status or 500)


def create_app(settings: Settings | None = None, hub: Hub | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    hub = hub or Hub(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # aiortc takes ~0.7 s to import: pay it before serving, not on the loop at the first WHEP offer (and not
        # when this module is imported: the CLI and the tests build apps that never serve WebRTC)
        from avatarcast.realtime import webrtc

        task = asyncio.create_task(hub.start(), name="hub-start")

        def done(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("start-up failed: %r", t.exception())
                hub.start_error = f"{type(t.exception()).__name__}: {t.exception()}"
                on_failed = app.state.on_start_failed
                if on_failed is not None:  # `avatarcast serve`: exit with the error, do not serve 503s forever
                    on_failed()

        task.add_done_callback(done)
        app.state.start_task = task
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            from avatarcast.realtime import webrtc  # aiortc: imported at start-up above, not when this module is

            await webrtc.close_all(hub)
            await hub.close()

    app = FastAPI(
        title="avatarcast",
        version="0.1.0",
        lifespan=lifespan,
        description="A cartoon avatar that reacts, live, to what a person says. "
        "WebSocket protocol: see realtime/protocol.py and the README.",
    )
    app.state.hub = hub
    app.state.on_start_failed = None  # `avatarcast serve`: stop serving when start-up fails (serve() sets it)
    errors = contract.errors
    no_session = errors(ErrorCode.NO_SESSION)
    ice = settings.ice()
    log.info("ICE servers: %s", ice.describe())
    if ice.fixed_turn_credentials:
        log.warning("a TURN password from --ice-server is handed to every client; --turn-secret mints short-lived ones")

    @app.exception_handler(AvatarcastError)
    async def avatarcast_error(request: Request, exc: AvatarcastError) -> JSONResponse:
        return JSONResponse(
            exc.body(), status_code=exc.status, headers={"Retry-After": exc.retry_after} if exc.retry_after else None
        )

    def limit_sessions(scope: Mapping[str, Any]) -> None:
        """Session creations per client (realtime/ratelimit.py): HubError 429 over the limit."""
        wait = hub.limits.sessions.take(client_keys(scope))
        if wait > 0:
            hub.metrics.rate_limited.labels("sessions").inc()
            hub._reject("rate_limit")
            raise HubError(
                ErrorCode.RATE_LIMITED,
                f"too many new sessions from this client; retry in {wait:.0f} s",
                retry_after(wait),
            )

    def urls(request: Request, sid: str) -> dict:
        base = str(request.base_url).rstrip("/")
        ws = base.replace("http://", "ws://").replace("https://", "wss://")
        return {"ws_url": f"{ws}/v1/sessions/{sid}/ws", "whep_url": f"{base}/v1/sessions/{sid}/whep"}

    # -- health --

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"ok": True}

    @app.get(
        "/readyz",
        tags=["health"],
        responses=errors(ErrorCode.SHUTTING_DOWN, ErrorCode.STARTING, ErrorCode.START_FAILED),
    )
    async def readyz() -> Any:
        if hub.draining:  # a load balancer stops sending new clients here while the sessions drain
            return _err(ErrorCode.SHUTTING_DOWN, "the server is draining its sessions")
        if not hub.ready.is_set():
            err = hub.start_error
            return _err(ErrorCode.START_FAILED if err else ErrorCode.STARTING, err or "models are loading")
        return {"ready": True}

    @app.get("/v1/status", tags=["health"])
    async def status() -> dict:
        return hub.status()

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def metrics() -> Response:
        return Response(hub.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/avatars", tags=["catalog"])
    async def avatars() -> dict:
        return {"avatars": avatar_names(), "random": "random-<seed>"}

    @app.get("/v1/emotions", tags=["catalog"])
    async def emotions() -> dict:
        return {"emotions": list(hub.emotions)}

    # -- sessions --

    @app.post(
        "/v1/sessions",
        status_code=201,
        response_model=SessionInfo,
        tags=["sessions"],
        responses=errors(*contract.OPEN_SESSION),
    )
    async def create_session(body: SessionCreate, request: Request) -> Any:
        limit_sessions(request.scope)
        r = await hub.open_session(
            body.avatar,
            image_format=body.image_format,
            quality=body.quality,
            language=body.language,
            client=client_keys(request.scope)[0],
        )
        return {**r.info(), **urls(request, r.id)}

    @app.get("/v1/sessions/{sid}", response_model=SessionInfo, tags=["sessions"], responses=no_session)
    async def get_session(sid: str, request: Request) -> Any:
        return {**hub.get_session(sid).info(), **urls(request, sid)}

    @app.delete("/v1/sessions/{sid}", status_code=204, tags=["sessions"], responses=no_session)
    async def delete_session(sid: str) -> Response:
        if not await hub.close_session(sid):
            raise HubError(ErrorCode.NO_SESSION, f"no session {sid!r}")
        return Response(status_code=204)

    @app.post(
        "/v1/sessions/{sid}/clips",
        response_model=ClipResult,
        tags=["input"],
        responses=errors(*contract.CLIP_UPLOAD),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    media: {
                        "schema": {
                            "type": "string",
                            "format": "binary",
                            "minLength": 1,
                            "maxLength": settings.max_clip_bytes,
                        }
                    }
                    for media in ("audio/*", "application/octet-stream")
                },
            }
        },
    )
    async def upload_clip(sid: str, request: Request) -> Any:
        """A recorded voice clip (wav, mp3, ogg/opus, webm, m4a, flac) as the raw request body."""
        r = hub.get_session(sid)
        limit = hub.settings.max_clip_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _err(ErrorCode.TOO_LARGE, f"clip is {declared} bytes; the limit is {limit}")
        with r.clip_slot():  # taken before the body is read: 429 too_many_clips, and no body buffered
            body = bytearray()
            try:
                async for part in request.stream():
                    body += part
                    if len(body) > limit:
                        return _err(ErrorCode.TOO_LARGE, f"clip is over the {limit}-byte limit")
            except ClientDisconnect:  # the client left, or its body came too slowly (conn_guard cut it)
                return Response(status_code=400)  # nobody reads this: the connection is gone
            if not body:
                return _err(ErrorCode.EMPTY, "the request body is empty; send the audio file as the body")
            return await r.clip(bytes(body))  # an AudioDecodeError answers with its reason's code

    @app.post(
        "/v1/sessions/{sid}/say",
        status_code=202,
        tags=["input"],
        responses=errors(ErrorCode.NO_SESSION, ErrorCode.INPUT_BUSY),
    )
    async def say(sid: str, body: SayRequest) -> dict:
        turn = hub.get_session(sid).say(body.text)
        return {"utterance": turn}

    @app.post(
        "/v1/sessions/{sid}/emotion",
        status_code=202,
        tags=["input"],
        responses=errors(ErrorCode.NO_SESSION, ErrorCode.UNKNOWN_EMOTION),
    )
    async def emotion(sid: str, body: EmotionRequest) -> Any:
        if body.label not in hub.emotions or body.label == "listening":
            return _err(ErrorCode.UNKNOWN_EMOTION, f"unknown emotion {body.label!r}; known: {', '.join(hub.emotions)}")
        hub.get_session(sid).set_emotion(body.label, body.intensity)
        return {"label": body.label, "intensity": body.intensity}

    # -- WebRTC: WHEP signaling and the ICE servers clients use (realtime/whep.py) --

    app.include_router(whep_router(hub, ice, limit_sessions))

    # -- clip API --

    @app.post(
        "/v1/clips",
        tags=["clips"],
        responses={
            **errors(ErrorCode.STARTING, ErrorCode.BAD_CLIP_REQUEST, ErrorCode.AVATARS_FULL),
            200: {"content": {m: {} for m in FORMATS.values()}, "description": "the rendered clip"},
        },
    )
    async def render_clip(body: RenderRequest) -> Any:
        if not hub.ready.is_set():
            raise HubError(ErrorCode.STARTING, "the server is still loading its models")
        assert hub.clips is not None  # made at start-up, before ready
        out = await hub.clips.render(ClipRequest(**body.model_dump()))  # a ClipError answers 400
        return FileResponse(
            out.path,
            media_type=out.media_type,
            headers={
                "X-Avatarcast-Emotion": out.emotion,
                "X-Avatarcast-Frames": str(out.frames),
                "X-Cache": "hit" if out.cached else "miss",
                "ETag": f'"{out.key}"',
            },
        )

    # -- WebSocket --

    @app.websocket("/v1/sessions/{sid}/ws")
    async def ws_attach(ws: WebSocket, sid: str) -> None:
        r = hub.sessions.get(sid)
        await ws.accept()  # accept first: a close code with a reason says more than an HTTP 403
        if r is None:
            await ws.close(ErrorCode.NO_SESSION.close or CLOSE_INTERNAL, f"no session {sid!r}")
            return
        await serve_socket(ws, hub, r, owns_session=False)

    @app.websocket("/v1/ws")
    async def ws_new(
        ws: WebSocket,
        avatar: str = "",
        image_format: str | None = None,
        language: str | None = None,
        quality: int | None = None,
    ) -> None:
        """A session that lives as long as this socket."""
        await ws.accept()
        try:
            refusal = hub.sockets.full(ws.scope)  # over the client's sockets: no session made for it
            if refusal is not None:
                raise refusal
            limit_sessions(ws.scope)
            r = await hub.open_session(
                avatar,
                image_format=image_format,
                quality=quality,
                language=language,
                client=client_keys(ws.scope)[0],
            )
        except AvatarcastError as exc:
            # busy, shutting down, avatars full: 1013 try again later; limits and bad requests: 1008 policy
            await ws.close(exc.close_code, exc.message[:120])
            return
        await serve_socket(ws, hub, r, owns_session=True)

    # -- demo page --

    @app.get("/", include_in_schema=False)
    async def demo() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def describe(spec: dict[str, Any]) -> dict[str, Any]:
        """The description completed with what this server enforces: auth, its render limit, its ASR languages."""
        sv = hub.services if hub.ready.is_set() else None
        return contract.describe(
            spec,
            auth=bool(settings.auth_secret),
            limits={("RenderRequest", "seconds"): {"maximum": settings.max_render_seconds}},
            languages=sv.transcriber.language_choices() if sv is not None else None,
        )

    contract.install(app, describe, hub.ready.is_set)
    limits = JsonLimits(settings.max_json_bytes, settings.max_json_depth)
    app.add_middleware(JsonBodyLimits, limits=limits, raw_paths=RAW_BODY_PATHS)  # before FastAPI parses a body
    install_allow(app)  # 405: Allow lists every method of the path
    app.add_middleware(RateLimitMiddleware, hub=hub)  # inside auth: it sees the token's subject
    if settings.auth_secret:
        app.add_middleware(AuthMiddleware, secret=settings.auth_secret)
    allowed = parse_origins(settings.allowed_origins)
    app.add_middleware(OriginMiddleware, allowed=allowed)  # outside auth: a foreign page learns nothing
    if allowed:  # outermost: a preflight carries no token and must not meet auth
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(allowed),
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-Session-Id", "If-Match"],
            expose_headers=["Location", "Retry-After", "X-Session-Id", "Link", "ETag", "Accept-Patch", "Allow"],
        )
    app.add_middleware(QueryTokenScrub)  # outermost: no ?token= left in the URL that uvicorn logs
    return app


def serve(settings: Settings) -> None:
    """Run the server in this process until interrupted (or until start-up fails: StartupError)."""
    setup_logging(settings.log_level, settings.log_format)
    trimmer = None
    if settings.malloc_tune:  # before the models' and the pools' threads exist: the arena cap applies to them
        plan = allocator.AllocatorPlan()
        allocator.tune(plan)
        trimmer = allocator.Trimmer(plan.trim_every_s).start()
    app = create_app(settings)
    hub: Hub = app.state.hub
    server = DrainingServer(uvicorn_config(app, settings), hub)
    app.state.on_start_failed = lambda: setattr(server, "should_exit", True)
    try:
        server.run()
    finally:
        if trimmer is not None:
            trimmer.stop()
    err = hub.start_error
    if err:
        raise StartupError(f"start-up failed: {err}")
    if server.interrupted:  # stopped by Ctrl-C, its KeyboardInterrupt lost on the way out (DrainingServer.handle_exit)
        raise KeyboardInterrupt


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How uvicorn serves the app (`avatarcast serve` and the tests alike): the WebSocket size limit,
    TLS, which reverse proxies may name the client (X-Forwarded-For: rate limits and logs), and the
    connection bounds of realtime/conn_guard.py (its guard is app.state.conn_guard)."""
    tls = (
        {"ssl_certfile": settings.ssl_certfile, "ssl_keyfile": settings.ssl_keyfile or None}
        if settings.ssl_certfile
        else {}
    )
    guard = ConnectionGuard(
        max_per_ip=settings.max_connections_per_ip,
        header_timeout_s=settings.header_timeout_s,
        body_min_bytes_per_s=settings.body_min_bytes_per_s,
        ws_idle_s=settings.ws_idle_s,
        trusted_proxies=settings.forwarded_allow_ips or "",
    )
    app.state.conn_guard = guard
    hub = getattr(app.state, "hub", None)
    if hub is not None:
        hub.metrics.bind_connections(lambda: guard.open_connections, guard.cut)
    http, ws = protocol_classes(guard)
    kw = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        ws_max_size=settings.max_message_bytes + 64,
        http=http,
        ws=ws,
        # pings keep a quiet but live socket heard; silence is closed by the guard (1008), not uvicorn (1011)
        ws_ping_interval=settings.ws_idle_s / 3,
        ws_ping_timeout=None,
        timeout_graceful_shutdown=5,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        **tls,
    )
    return uvicorn.Config(app, **{**kw, **overrides})


class StartupError(AvatarcastError, RuntimeError):
    """The models could not be loaded: `avatarcast serve` exits non-zero with this message."""

    code = ErrorCode.START_FAILED


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, draining the sessions first on shutdown (SIGINT/SIGTERM): each client gets a
    `closing` event and its WebSocket a 1001 close before uvicorn closes the connections."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub
        self.interrupted = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        # uvicorn raises a caught SIGINT again once it has shut down, under the handler it found at start. A server
        # started with SIGINT ignored (a background job of a script: bash ignores SIGINT there, and children inherit
        # it) was still stopped by Ctrl-C's signal, but that raise did nothing and `avatarcast serve` exited 0, not
        # 130 (measured: the latency bench's test, run from such a job). serve() raises the KeyboardInterrupt then.
        if sig == signal.SIGINT:
            self.interrupted = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: Any = None) -> None:
        try:
            await asyncio.wait_for(self.hub.drain(), 5.0)
        except Exception:
            log.exception("draining the sessions failed")
        await super().shutdown(sockets)
