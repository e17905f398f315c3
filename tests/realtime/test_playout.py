"""The playout rules (realtime/playout.py) with plain calls: which pixels each planned frame shows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from avatarcast.realtime.messages import ChunkRequest, FrameRequest, FrameSource
from avatarcast.realtime.playout import Playout, Shown, sent_frame

S = FrameSource


def planned(
    index: int,
    reaction: int | None = None,
    source: FrameSource = S.SAMPLER,
    emotion: str = "happy",
    utterance: int | None = 0,
) -> FrameRequest:
    if reaction is None:
        return FrameRequest(index, index, index / 8, "idle", 0.2, S.IDLE, None)
    return FrameRequest(index, index, index / 8, emotion, 0.8, source, utterance, reaction, index // 4, index % 4)


def chunk(
    reaction: int,
    k: int,
    revision: int = 0,
    emotion: str = "happy",
    source: FrameSource = S.SAMPLER,
    previous: int | None = None,
) -> ChunkRequest:
    return ChunkRequest(0.0, reaction, k, revision, 4 * k, 4, k / 2, emotion, 0.8, source, previous, 0)


def frames(reaction: int, k: int, n: int = 4) -> list[str]:
    return [f"r{reaction}c{k}f{i}" for i in range(n)]  # stand-ins for pixel arrays


def test_reaction_frames_play_in_order_and_a_late_chunk_holds_the_last_frame() -> None:
    p = Playout()
    p.store(chunk(1, 0, source=S.CACHE), frames(1, 0), "state0")
    shown = [p.show(planned(i, 1)) for i in range(6)]
    assert [s.pixels for s in shown[:4]] == frames(1, 0) and all(s.source == S.CACHE for s in shown[:4])
    assert shown[4] == shown[5] == Shown(S.CACHE, "happy", "r1c0f3", late=True, reaction=1)  # chunk 1 late: hold
    p.store(chunk(1, 1, previous=0), frames(1, 1), "state1")
    assert p.show(planned(6, 1)).pixels == "r1c1f0"  # late chunks play late, from their first frame
    assert p.state_after(1, 0) == "state0" and p.state_after(1, None) is None


def test_before_anything_is_ready_the_listening_loop_fills_in() -> None:
    assert Playout().show(planned(0, 1)) == Shown(S.LISTENING, "listening", None, late=True)


def test_a_reaction_that_replaced_a_playing_one_holds_its_last_frame_until_its_own_come() -> None:
    p = Playout()
    p.store(chunk(1, 0, source=S.CACHE), frames(1, 0), None)
    p.show(planned(0, 1))
    # a switch to another emotion restarts the reaction (realtime/session.py); its cached chunk is not ready yet
    held = p.show(planned(1, 2, S.CACHE, "sad"))
    assert held == Shown(S.CACHE, "happy", "r1c0f0", late=True, reaction=1), "a freeze, not a cut to the listening pose"
    assert p.queued == 0, "the old reaction's unsent frames are gone"
    p.store(chunk(2, 0, emotion="sad", source=S.CACHE), frames(2, 0), None)
    assert p.show(planned(2, 2, S.CACHE, "sad")) == Shown(S.CACHE, "sad", "r2c0f0", reaction=2)
    p.show(planned(3))  # the idle loop played in between: a new reaction starts from the listening pose again
    assert p.show(planned(4, 3)) == Shown(S.LISTENING, "listening", None, late=True)


def test_idle_frames_show_the_loop_and_drop_queued_reaction_frames() -> None:
    p = Playout()
    p.store(chunk(1, 0), frames(1, 0), None)
    assert p.show(planned(0)) == Shown(S.IDLE, "idle")
    assert p.queued == 0


def test_a_newer_reaction_drops_the_frames_an_earlier_one_left() -> None:
    p = Playout()
    p.store(chunk(1, 0), frames(1, 0), None)
    p.store(chunk(2, 0), frames(2, 0), None)
    assert p.show(planned(0, 2)).pixels == "r2c0f0"
    assert p.queued == 3


def test_a_switch_drops_what_the_old_emotion_made_from_its_chunk_on() -> None:
    p = Playout()
    for k in range(3):
        p.store(chunk(1, k), frames(1, k), None)
    p.on_request(chunk(1, 1, revision=1, emotion="sad"))
    assert [p.show(planned(i, 1)).pixels for i in range(4)] == frames(1, 0)
    assert p.show(planned(4, 1)).late  # chunk 1 (sad) is not made yet: the last happy frame holds
    p.on_request(chunk(1, 5, revision=0))  # a first request of a chunk changes nothing
    p.store(chunk(1, 1, revision=1, emotion="sad"), frames(1, 1), None)
    assert p.show(planned(5, 1, emotion="sad")) == Shown(S.SAMPLER, "sad", "r1c1f0", reaction=1)


def test_cached_loops_play_the_cached_chunk_forward_then_backward() -> None:
    p = Playout()
    assert not p.store_looped(chunk(1, 1))  # not looping: the engine makes it
    p.store_cached(chunk(1, 0, source=S.CACHE), frames(1, 0), "s", cached_loops=True)
    assert p.store_looped(chunk(1, 1)) and p.store_looped(chunk(1, 2))
    assert not p.store_looped(chunk(1, 3, revision=1, emotion="sad"))  # switched: sampled again
    shown = [p.show(planned(i, 1)) for i in range(12)]
    assert [s.pixels for s in shown] == frames(1, 0) + frames(1, 0)[::-1] + frames(1, 0)
    assert {s.source for s in shown} == {S.CACHE} and p.state_after(1, 1) is None


def test_without_the_ladder_a_cached_chunk_does_not_loop() -> None:
    p = Playout()
    p.store_cached(chunk(1, 0, source=S.CACHE), frames(1, 0), "s", cached_loops=False)
    assert not p.store_looped(chunk(1, 1))
    p.store_cached(chunk(2, 1, source=S.CACHE), frames(2, 1), "s", cached_loops=True)
    assert not p.store_looped(chunk(2, 2))  # only a reaction that starts under load loops


def test_memory_stays_flat() -> None:
    p = Playout(max_ready=6, max_states=2, max_loops=1)
    for k in range(5):
        p.store(chunk(1, k), frames(1, k), f"s{k}")
        p.store_cached(chunk(10 + k, 0, source=S.CACHE), frames(10 + k, 0, 1), "c", cached_loops=True)
    assert p.queued == 6 and p.state_after(1, 3) is None and p.state_after(14, 0) == "c"
    assert [p.store_looped(chunk(10 + k, 1)) for k in range(5)] == [False] * 4 + [True]


def test_a_sent_frame_answers_its_turn_only_if_it_shows_what_was_planned() -> None:
    req = planned(3, 1, source=S.SAMPLER, utterance=7)
    ok = sent_frame(req, Shown(S.SAMPLER, "happy", "px", reaction=1), 1.0, 1.5)
    fallback = sent_frame(req, Shown(S.LISTENING, "listening", late=True), 1.0, 1.5)
    held = sent_frame(req, Shown(S.SAMPLER, "sad", "px", late=True, reaction=0), 1.0, 1.5)  # an earlier reaction's
    assert (ok.utterance, ok.source, ok.t, ok.t_capture, ok.stamps) == (7, S.SAMPLER, 1.5, 1.0, {"encode": (1.0, 1.5)})
    assert ok.reaction == 1, "the session counts the reaction as shown (its hold starts)"
    assert (fallback.utterance, fallback.emotion, fallback.reaction) == (None, "listening", None)
    assert held.reaction == 0, "another reaction's held frame does not count as this one's"


# A reaction's chunks arrive in order, interleaved at random with the frames the clock plans.
@given(st.lists(st.sampled_from(["chunk", "frame"]), max_size=60), st.integers(1, 6))
def test_reaction_frames_never_reorder_and_never_skip(steps: list[str], per_chunk: int) -> None:
    # no cap here (up to 60 x 6 frames can queue): the MAX_READY bound drops frames by design, tested on its own
    p = Playout(max_ready=10_000)
    made: list[str] = []
    shown: list[Shown] = []
    for step in steps:
        if step == "chunk":
            k = len(made) // per_chunk
            p.store(chunk(1, k), frames(1, k, per_chunk), None)
            made += frames(1, k, per_chunk)
        else:
            shown.append(p.show(planned(len(shown), 1)))
    fresh = [s.pixels for s in shown if not s.late]
    assert fresh == made[: len(fresh)]  # every made frame, in order, none skipped
    assert p.queued == len(made) - len(fresh)
    for before, s in zip([None, *shown], shown):  # a late frame holds the last one (or listens before any)
        if s.late:
            assert s.pixels == (before.pixels if before is not None and before.pixels is not None else None)


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 4)), max_size=30))
def test_a_reaction_never_shows_an_earlier_reactions_frames(plays: list[tuple[int, int]]) -> None:
    p = Playout()
    for r in (1, 2, 3):
        for k in range(2):
            p.store(chunk(r, k), frames(r, k), None)
    newest = 0
    for r, _ in plays:
        s = p.show(planned(0, r))
        newest = max(newest, r)
        if not s.late:
            assert s.pixels.startswith(f"r{r}c")
            assert r == newest  # once a newer reaction played, an older one has nothing left
