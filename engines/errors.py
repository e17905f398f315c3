"""avatarcast's error vocabulary: one tree of exceptions, and one table of what each failure looks like
on the wire (the code in an HTTP error body or an `error` event, the HTTP status, the WebSocket close).

It lives at the bottom of the package graph (engines/ imports nothing from realtime/) so that engine
failures and the server's refusals share one root. docs/protocol.md prints the table.
"""

from __future__ import annotations

from enum import Enum

# WebSocket close codes (RFC 6455)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_POLICY = 1008  # the client broke a rule (bad request, rate limit, auth, origin)
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013


class ErrorCode(Enum):
    """Every failure a client can see: its code on the wire, its HTTP status, and the WebSocket close code
    when the failure ends (or refuses) a socket. None: never answered that way (an `error` event)."""

    #                    wire code             HTTP  WebSocket close
    # the server cannot take the session now
    STARTING = ("starting", 503, CLOSE_TRY_LATER)
    START_FAILED = ("start_failed", 503, CLOSE_INTERNAL)
    SHUTTING_DOWN = ("shutting_down", 503, CLOSE_TRY_LATER)
    BUSY = ("busy", 503, CLOSE_TRY_LATER)  # session slots or engine capacity
    RATE_LIMITED = ("rate_limited", 429, CLOSE_POLICY)  # over a limit; sockets get events first
    AVATARS_FULL = ("avatars_full", 503, CLOSE_TRY_LATER)  # every avatar slot is held by a live session
    TOO_MANY_CONNECTIONS = ("too_many_connections", 429, CLOSE_POLICY)  # per client IP
    TOO_MANY_VIEWERS = ("too_many_viewers", 429, CLOSE_TRY_LATER)  # sockets on one session
    TOO_MANY_CLIPS = ("too_many_clips", 429, None)  # clips of one session in decode/ASR at once
    INPUT_BUSY = ("input_busy", 429, None)  # `say` texts of one session waiting for the emotion reader
    IDLE = ("idle", None, CLOSE_POLICY)  # a socket that sent nothing (no message, no pong) for too long
    REQUEST_TIMEOUT = ("request_timeout", 408, None)  # request headers or body too slow (slowloris)
    # who may call
    UNAUTHORIZED = ("unauthorized", 401, CLOSE_POLICY)
    ORIGIN_NOT_ALLOWED = ("origin_not_allowed", 403, CLOSE_POLICY)  # handshake refused; no body
    # what was asked for
    NO_SESSION = ("no_session", 404, CLOSE_POLICY)
    NO_PEER = ("no_peer", 404, None)
    BAD_AVATAR = ("bad_avatar", 400, CLOSE_POLICY)
    BAD_IMAGE_FORMAT = ("bad_image_format", 400, CLOSE_POLICY)
    BAD_QUALITY = ("bad_quality", 400, CLOSE_POLICY)
    BAD_LANGUAGE = ("bad_language", 400, CLOSE_POLICY)
    UNKNOWN_EMOTION = ("unknown_emotion", 400, None)
    BAD_OFFER = ("bad_offer", 400, None)
    BAD_SDPFRAG = ("bad_sdpfrag", 400, None)  # a WHEP PATCH body that is not a trickle-ICE SDP fragment
    ICE_RESTART_UNSUPPORTED = ("ice_restart_unsupported", 422, None)  # aiortc cannot restart ICE
    ETAG_MISMATCH = ("etag_mismatch", 412, None)  # a WHEP PATCH for another ICE session (If-Match)
    BAD_CLIP_REQUEST = ("bad_clip_request", 400, None)
    # request bodies and messages
    EMPTY = ("empty", 400, None)  # an empty request body
    TOO_LARGE = ("too_large", 413, CLOSE_TOO_BIG)  # a body, clip or message over its limit
    TOO_BIG = ("too_big", None, None)  # a data channel message over the limit
    BAD_CONTENT_TYPE = ("bad_content_type", 415, None)  # a body of a media type the route does not take
    # HTTP method
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405, None)  # with an Allow header naming the methods there
    TOO_DEEP = ("too_deep", 400, CLOSE_POLICY)  # JSON nested deeper than the limit
    # audio that cannot be decoded (a clip's reason)
    AUDIO_EMPTY = ("empty", 422, None)  # decoded to zero samples
    TOO_LONG = ("too_long", 413, None)
    UNSUPPORTED = ("unsupported", 415, None)
    CORRUPT = ("corrupt", 422, None)
    NO_AUDIO = ("no_audio", 422, None)
    BAD_AUDIO = ("bad_audio", None, None)  # the event for any of them on a socket
    # commands and binary messages on a socket (error events; the socket stays open)
    BAD_JSON = ("bad_json", 422, None)  # over HTTP: a body that is not JSON
    BAD_MESSAGE = ("bad_message", 422, None)  # over HTTP: a request its schema refuses (/openapi.json)
    UNKNOWN_TYPE = ("unknown_type", None, None)
    BAD_SAY = ("bad_say", None, None)
    BAD_EMOTION = ("bad_emotion", None, None)
    BAD_INTENSITY = ("bad_intensity", None, None)
    BAD_CUE_SOURCE = ("bad_cue_source", None, None)
    BAD_PCM = ("bad_pcm", None, None)
    BAD_BINARY = ("bad_binary", None, None)
    # the session goes on without this input or reaction (error events)
    AUDIO_OVERRUN = ("audio_overrun", None, None)  # live audio faster than ASR: a chunk dropped
    AUDIO_TOO_FAST = ("audio_too_fast", None, None)  # live audio sent faster than it can be spoken: a chunk dropped
    ASR_BUSY = ("asr_busy", None, None)  # too many utterances of one session waiting for ASR: one dropped
    STALE_CUE = ("stale_cue", None, None)
    NO_CUE = ("no_cue", None, None)  # no emotion within the thinking timeout: back to idle
    EMOTION_FAILED = ("emotion_failed", None, None)
    CLIP_FAILED = ("clip_failed", None, None)
    ENGINE_FAILED = ("engine_failed", None, None)  # the reaction ends, the session goes on
    REACTION_SKIPPED = ("reaction_skipped", None, None)  # none of a reaction's frames was ready in time: it ends
    # the server failed
    ENGINE_UNAVAILABLE = ("engine_unavailable", 500, CLOSE_INTERNAL)
    INTERNAL = ("internal", 500, CLOSE_INTERNAL)  # an `error` event with fatal: true; the session ends

    def __init__(self, wire: str, status: int | None, close: int | None) -> None:
        self.wire = wire  # what clients see in {"error": ...} and in error events' "code"
        self.status = status
        self.close = close

    def __str__(self) -> str:
        return self.wire


class AvatarcastError(Exception):
    """Root of the errors avatarcast raises on purpose; `code` says how each transport answers it."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str = "", *, code: ErrorCode | None = None, retry_after: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        # the Retry-After header of a refusal the client may retry (429, 503)
        self.retry_after = retry_after if retry_after is not None else ("5" if self.status == 503 else None)

    @property
    def status(self) -> int:
        return self.code.status or 500

    @property
    def close_code(self) -> int:
        return self.code.close or CLOSE_INTERNAL

    def body(self) -> dict[str, str]:
        """The JSON body of an HTTP error answer."""
        return {"error": self.code.wire, "message": self.message}


class EngineError(AvatarcastError):
    """A model cannot load or run here: weights, checkpoint, backend, exported graphs."""

    code = ErrorCode.ENGINE_UNAVAILABLE


__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_LATER",
    "AvatarcastError",
    "EngineError",
    "ErrorCode",
]
