"""The latents-cache index shared by gateways and machines (`--redis-url`): who builds an entry, where it lives.

The one home of its key format. Under the SharedState prefix (`avatarcast:`), per weights hash:
- `latents:<weights>:<entry>`: the published entry, JSON {"url": where its artefact lives, avatar, emotion, ...};
- `latents:claim:<weights>:<entry>`: the process building it (SET NX with a lapse, as clip renders claim).
`<entry>` is the cache's reaction key (templates/cache.py), a hash of everything that shapes the entry; the
weights hash in front lets an operator list or drop one model's entries (SCAN avatarcast:latents:<weights>:*).
When the store fails, each call answers as one process alone would (SharedState logs the outage once).
"""

from __future__ import annotations

import json
import os
import secrets
import socket

from avatarcast.realtime.shared_state import SharedState, SharedStateError

CLAIM_TTL_S = 600.0  # a claim lapses after this (its process died); longer than any batch of first chunks takes
ENTRY_TTL_S = 30 * 86400.0  # the index forgets an entry after this; the artefact itself stays in its store


def entry_key(weights: str, key: str) -> str:
    return f"latents:{weights}:{key}"


def claim_key(weights: str, key: str) -> str:
    return f"latents:claim:{weights}:{key}"


def index_for(shared: SharedState) -> SharedLatentsIndex | None:
    """The shared index when the state is shared (--redis-url); None: the cache's own LocalIndex."""
    return SharedLatentsIndex(shared) if shared.shared else None


class SharedLatentsIndex:
    """A templates.cache.BuildIndex over SharedState: Redis across machines, or LocalState in one process."""

    def __init__(self, shared: SharedState, owner: str | None = None) -> None:
        self.shared = shared
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def where(self, weights: str, key: str) -> str | None:
        try:
            raw = self.shared.get(entry_key(weights, key))
        except SharedStateError:
            return None
        if raw is None:
            return None
        try:
            url = json.loads(raw)["url"]
        except (ValueError, KeyError, TypeError):  # written by something else: as if absent
            return None
        return url if isinstance(url, str) else None

    def claim(self, weights: str, key: str) -> bool:
        try:
            return self.shared.claim(claim_key(weights, key), self.owner, CLAIM_TTL_S)
        except SharedStateError:
            return True  # nobody to agree with: build it here

    def publish(self, weights: str, key: str, url: str, meta: dict) -> None:
        try:
            self.shared.put(entry_key(weights, key), json.dumps({**meta, "url": url}, sort_keys=True), ENTRY_TTL_S)
        except SharedStateError:
            return

    def release(self, weights: str, key: str) -> None:
        try:
            self.shared.release(claim_key(weights, key), self.owner)
        except SharedStateError:
            return
