"""The event loop's handler for errors nobody awaited: aiortc's own connect tasks are logged at debug.

aiortc starts `RTCPeerConnection.__connect` as a free task once a peer has both descriptions. For some damaged
offers that the server then refuses (400 bad_offer) or whose peer it closes, that task fails (a transceiver left
without a transport) and nobody awaits it, so asyncio logged "Task exception was never retrieved" at ERROR, with
a traceback, for a client's bad input that was already answered. The SDP fuzz met about one in 150 offers. Every
other unretrieved error still goes to the previous handler (asyncio's default logs it at ERROR).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("avatarcast.webrtc")

_AIORTC_CONNECT = "RTCPeerConnection.__connect"


def _is_aiortc_connect(context: dict[str, Any]) -> bool:
    task = context.get("future") or context.get("task")
    get_coro = getattr(task, "get_coro", None)  # a Task; a plain Future has no coroutine
    coro = get_coro() if get_coro is not None else None
    return getattr(coro, "__qualname__", "") == _AIORTC_CONNECT


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Route aiortc's failed connect tasks to a debug line on this loop; keep every other error as it was."""
    previous = loop.get_exception_handler()

    def handle(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _is_aiortc_connect(context):
            log.debug("a closed peer's connect task failed: %r", context.get("exception"))
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handle)


__all__ = ["install"]
