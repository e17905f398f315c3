"""WebRTC via aiortc (placeholder interface; being written)."""

from __future__ import annotations

from typing import Any


class OfferError(ValueError):
    """A bad SDP offer (400)."""


async def answer_offer(hub: Any, runner: Any, sdp: str, *, owns_session: bool) -> tuple[str, str]:
    raise OfferError("WebRTC is not wired yet")


async def close_peer(hub: Any, resource: str) -> bool:
    return False


async def close_all(hub: Any) -> None:
    return None
