"""What each sent frame really shows: the playout rules as pure code (no asyncio, no threads, no clock).

The Session plans which frame is due and what it should show (realtime/session.py); the engine makes
reaction chunks when it can. Playout reconciles the two, and the runner only waits, threads and sends:

- reaction frames play from a queue in the order they were made, so a chunk that comes late is shown
  late, never skipped or reordered;
- while a reaction's queue is empty, its last frame holds (a brief freeze reads better than a cut
  back to the listening pose); before it has shown anything, the listening loop fills in, or, when it
  replaced a playing reaction (a switch to a cached emotion whose chunk is not in memory), that
  reaction's last frame holds; all count as late frames;
- frames left from an earlier reaction are dropped when a newer one plays, and every queued frame when
  an idle or listening frame plays;
- an emotion switch (a chunk request with a revision) drops what the old emotion made from that chunk on;
- under the degradation ladder's cached loops, a reaction that starts from the cache plays its cached
  chunk forward, then backward, and so on, instead of sampling.

Frames always report what they really show, so TTFF/TTER stay honest.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from avatarcast.realtime.messages import ChunkRequest, FrameRequest, FrameSource, VideoFrame

MAX_READY = 64  # frames queued ahead (16 chunks of the tiny engine): memory stays flat
MAX_STATES = 8  # stream states kept: a few chunks around the playing one
MAX_LOOPS = 4  # reactions playing cached loops


@dataclass(frozen=True)
class ReadyFrame:
    """A reaction frame waiting to play."""

    reaction: int
    chunk: int
    pixels: Any  # (360, 640, 4) uint8 RGBA
    source: FrameSource
    emotion: str


@dataclass(frozen=True)
class Shown:
    """What a planned frame shows."""

    source: FrameSource
    emotion: str
    pixels: Any = None  # a reaction frame; None: the avatar's idle or listening loop (`source`)
    late: bool = False  # a reaction frame was due and none was ready: held, or the listening loop
    reaction: int | None = None  # the reaction whose frame this is (None: the idle or listening loop)


@dataclass(frozen=True)
class CachedLoop:
    """A reaction that plays its cached first chunk back and forth (the ladder's cached loops)."""

    start_chunk: int
    emotion: str
    frames: Any  # (T, 360, 640, 4) uint8


class Playout:
    """One session's reaction frames between the engine and the frame loop."""

    def __init__(self, max_ready: int = MAX_READY, max_states: int = MAX_STATES, max_loops: int = MAX_LOOPS) -> None:
        self.max_ready, self.max_states, self.max_loops = max_ready, max_states, max_loops
        self._ready: deque[ReadyFrame] = deque()
        self._last: ReadyFrame | None = None  # the reaction frame shown last
        self._last_was_reaction = False  # the frame shown last was a reaction frame (not idle / listening)
        self._states: OrderedDict[tuple[int, int], Any] = OrderedDict()  # (reaction, chunk) -> state after it
        self._loops: OrderedDict[int, CachedLoop] = OrderedDict()

    @property
    def queued(self) -> int:
        """Reaction frames ready to play."""
        return len(self._ready)

    def show(self, req: FrameRequest) -> Shown:
        """What the planned frame `req` shows; takes a queued reaction frame when it is a reaction's."""
        if not req.is_reaction:
            self._ready.clear()
            self._last_was_reaction = False
            return Shown(req.source, req.emotion)
        ready = self._ready
        while ready and ready[0].reaction != req.reaction:
            ready.popleft()  # left over from an earlier reaction
        if ready:
            f = self._last = ready.popleft()
            self._last_was_reaction = True
            return Shown(f.source, f.emotion, f.pixels, reaction=f.reaction)
        last = self._last
        if last is not None and (last.reaction == req.reaction or self._last_was_reaction):
            return Shown(last.source, last.emotion, last.pixels, late=True, reaction=last.reaction)
        return Shown(FrameSource.LISTENING, "listening", late=True)

    def on_request(self, req: ChunkRequest) -> None:
        """The Session asked for a chunk: a revision (an emotion switch) replaces what the old one made."""
        if req.revision > 0:
            self._ready = deque(f for f in self._ready if not (f.reaction == req.reaction and f.chunk >= req.chunk))

    def store(self, req: ChunkRequest, frames: Any, state: Any, source: FrameSource | None = None) -> None:
        """A chunk's frames are ready to play, and the stream state after it (None: a looped chunk)."""
        self._states[(req.reaction, req.chunk)] = state
        while len(self._states) > self.max_states:
            self._states.popitem(last=False)
        src = source or req.source
        self._ready.extend(ReadyFrame(req.reaction, req.chunk, f, src, req.emotion) for f in frames)
        while len(self._ready) > self.max_ready:
            self._ready.popleft()

    def store_cached(self, req: ChunkRequest, frames: Any, state: Any, cached_loops: bool) -> None:
        """A cached first chunk; with the ladder at cached loops, a new reaction loops it from here on."""
        self.store(req, frames, state)
        if cached_loops and (req.chunk == 0 or req.reaction in self._loops):
            self._loops[req.reaction] = CachedLoop(req.chunk, req.emotion, frames)
            while len(self._loops) > self.max_loops:
                self._loops.popitem(last=False)

    def store_looped(self, req: ChunkRequest) -> bool:
        """Serve a chunk of a looping reaction from its cached chunk (forward, then backward: no seam at the
        turn-arounds); False when this reaction does not loop (or has switched emotion since)."""
        loop = self._loops.get(req.reaction)
        if loop is None or loop.emotion != req.emotion:
            return False
        frames = loop.frames if (req.chunk - loop.start_chunk) % 2 == 0 else loop.frames[::-1]
        self.store(req, frames, None, source=FrameSource.CACHE)
        return True

    def state_after(self, reaction: int, chunk: int | None) -> Any | None:
        """The stream state after a chunk, if it is still kept (a later chunk continues from it)."""
        return None if chunk is None else self._states.get((reaction, chunk))

    def clear(self) -> None:
        self._ready.clear()
        self._states.clear()
        self._last_was_reaction = False


def sent_frame(req: FrameRequest, shown: Shown, encoded_from: float, encoded_at: float) -> VideoFrame:
    """The record of a sent frame for the Session: it answers the planned turn only if it shows what was planned."""
    return VideoFrame(
        req.index,
        req.pts,
        encoded_at,
        encoded_from,
        shown.emotion,
        shown.source,
        req.intensity,
        req.utterance if shown.source == req.source else None,
        shown.reaction,  # what it really shows: an earlier reaction's held frame is not this reaction's
        {"encode": (encoded_from, encoded_at)},
    )
