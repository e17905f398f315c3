"""Session state machine, frame clock and utterance timeline: plain calls with a fake clock."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

from avatarcast.realtime.clock import FrameClock
from avatarcast.realtime.emotion import EmotionCue
from avatarcast.realtime.messages import (
    AudioChunk,
    ChunkRequest,
    FrameRequest,
    SessionEvent,
    SpeechEvent,
    Transcript,
    VideoFrame,
)
from avatarcast.realtime.session import Session, SessionConfig
from avatarcast.realtime.timeline import UtteranceTimeline

T0 = 1000.0
DT = 0.125
HOLD = {"happy": 3.5, "sad": 4.5, "angry": 3.5, "surprised": 3.0, "excited": 3.5}


def cue(label: str, confidence: float = 0.9, intensity: float = 0.8) -> EmotionCue:
    return EmotionCue(label, intensity, confidence, {label: confidence})


class Driver:
    """Plays the transport: plans every frame at its due time and marks it sent `send_delay` later."""

    def __init__(self, session: Session, send_delay: float = 0.0) -> None:
        self.s = session
        self.send_delay = send_delay
        self.frames: list[FrameRequest] = []
        self.latency: list[SessionEvent] = []
        self.k = 0  # next frame to tick

    def tick(self, n: int = 1) -> list[FrameRequest]:
        out = []
        for _ in range(n):
            now = self.s.clock.time_of(self.k)
            self.k += 1
            for req in self.s.plan(now):
                out.append(req)
                ev = self.s.on_frame_sent(VideoFrame.from_request(req, now + self.send_delay), now + self.send_delay)
                if ev is not None:
                    self.latency.append(ev)
        self.frames.extend(out)
        return out

    def until(self, t: float) -> list[FrameRequest]:
        """Tick every frame due strictly before t."""
        out = []
        while self.s.clock.time_of(self.k) < t:
            out.extend(self.tick())
        return out

    @property
    def now(self) -> float:
        """A time just after the last ticked frame."""
        return self.s.clock.time_of(self.k - 1) + 0.01


def make(**kw) -> tuple[Session, Driver]:
    kw.setdefault("hold_s", HOLD)
    s = Session(T0, SessionConfig(**kw))
    return s, Driver(s)


def types(events: list[SessionEvent]) -> list[str]:
    return [e.type for e in events]


def states(events: list[SessionEvent]) -> list[str]:
    return [e.payload["to"] for e in events if e.type == "state_changed"]


# --- state machine ----------------------------------------------------------------------------


def test_full_turn_idle_listening_thinking_reacting_idle():
    s, d = make()
    assert [f.source for f in d.tick(4)] == ["idle"] * 4
    s.on_speech_start(d.now)
    assert s.state == "listening"
    d.tick(8)
    s.on_partial("I got the job", d.now)
    s.on_speech_end(d.now)
    assert s.state == "thinking"
    assert {f.source for f in d.tick(3)} == {"listening"}  # thinking keeps the listening pose
    s.on_final("I got the job!", d.now)
    s.on_cue(cue("happy"), d.now)
    assert s.state == "reacting"
    react = d.tick(28)
    assert [f.source for f in react] == ["cache"] * 4 + ["sampler"] * 24
    assert {f.emotion for f in react} == {"happy"}
    assert d.tick()[0].source == "idle"
    assert s.state == "idle"
    ev = s.events()
    assert states(ev) == ["listening", "thinking", "reacting", "idle"]
    assert types(ev).count("transcript_partial") == 1 and types(ev).count("transcript_final") == 1
    emo = [e for e in ev if e.type == "emotion"][0].payload
    assert emo["label"] == "happy" and emo["decided_by"] == "final" and emo["applied"] is True


@pytest.mark.parametrize("state_before", ["idle", "thinking", "reacting"])
def test_listening_is_the_very_next_frame_after_onset(state_before):
    rng = random.Random(7)
    for _ in range(200):
        s, d = make()
        d.tick(rng.randrange(2, 10))
        if state_before != "idle":
            s.on_speech_start(d.now)
            d.tick(3)
            s.on_speech_end(d.now)
            if state_before == "reacting":
                s.on_final("wow", d.now)
                s.on_cue(cue("surprised"), d.now)
            d.tick(rng.randrange(1, 9))
            assert s.state == state_before
        last_due = s.clock.time_of(d.k - 1)
        onset = last_due + rng.uniform(0.0, DT - 1e-6)  # anywhere inside the frame interval
        s.on_speech_start(onset)
        nxt = d.tick()[0]
        assert nxt.source == "listening", f"expected listening at frame {nxt.index}, got {nxt.source}"
        assert 0 <= nxt.t - onset <= DT + 1e-9, f"listening {1000 * (nxt.t - onset):.1f} ms after onset"
        if onset - last_due >= 0.04:  # the previous frame is old enough: listening is pulled in to now
            assert nxt.t == pytest.approx(onset)
        else:  # never closer than pull_in_s to the previous frame
            assert nxt.t == pytest.approx(last_due + 0.04)


def test_without_pull_in_listening_waits_for_the_next_tick():
    rng = random.Random(3)
    for _ in range(100):
        s, d = make(pull_in_s=None)
        d.tick(rng.randrange(2, 10))
        last_due = s.clock.time_of(d.k - 1)
        onset = last_due + rng.uniform(1e-6, DT - 1e-6)
        s.on_speech_start(onset)
        nxt = d.tick()[0]
        assert nxt.source == "listening" and nxt.t == pytest.approx(last_due + DT)


def test_pull_in_never_makes_an_interval_longer_than_a_frame():
    rng = random.Random(5)
    s, d = make()
    times = []
    for _ in range(300):
        if rng.random() < 0.2:
            s.on_speech_start(s.clock.time_of(d.k - 1) + rng.uniform(0.0, DT))
        elif rng.random() < 0.1:
            s.on_final("yay", d.now)
            s.on_cue(cue("happy"), s.clock.time_of(d.k - 1) + rng.uniform(0.0, DT))
        times += [r.t for r in d.tick()]
    gaps = np.diff(times)
    assert gaps.max() <= DT + 1e-9 and gaps.min() >= 0.04 - 1e-9
    assert (gaps < DT - 1e-6).any()  # some frames were pulled in


def test_chunk_queue_never_more_than_two_sampler_chunks_ahead():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(4)
    s.on_speech_end(d.now)
    s.on_final("yay", d.now)
    s.on_cue(cue("happy"), d.now)
    first = s.chunk_requests()
    assert [(r.chunk, r.source, r.previous_chunk) for r in first] == [
        (0, "cache", None),
        (1, "sampler", 0),
        (2, "sampler", 1),
    ]
    assert all(r.n_frames == 4 and r.first_frame == first[0].first_frame + 4 * r.chunk for r in first)
    requested = {r.chunk: r for r in first}
    while s.state == "reacting":
        f = d.tick()[0]
        for r in s.chunk_requests():
            requested[r.chunk] = r
            assert r.due_t - f.t >= 0.5 - 1e-9, "a sampler chunk is asked for at least one chunk before it plays"
        if f.is_reaction:
            ahead = [c for c, r in requested.items() if c > f.chunk and r.source == "sampler" and s.is_current(r)]
            assert len(ahead) <= 2, f"{len(ahead)} chunks queued at frame {f.index}"
    assert sorted(requested) == list(range(7))  # 3.5 s hold = 28 frames = 7 chunks, not one more


def test_no_cache_entry_starts_from_sampler():
    s, d = make(cached_emotions=frozenset({"sad"}))
    s.on_emotion("happy", 0.7, T0)
    reqs = s.chunk_requests()
    assert [(r.chunk, r.source, r.previous_chunk) for r in reqs] == [(0, "sampler", None), (1, "sampler", 0)]
    assert {f.source for f in d.tick(4)} == {"sampler"}


def test_back_to_idle_after_hold_time():
    s, d = make()
    s.on_emotion("sad", 0.6, T0 - 0.01)  # hold 4.5 s = 36 frames
    frames = d.tick(40)
    assert [f.source for f in frames[:36]] == ["cache"] * 4 + ["sampler"] * 32
    assert [f.source for f in frames[36:]] == ["idle"] * 4
    idle_ev = [e for e in s.events() if e.type == "state_changed" and e.payload["to"] == "idle"]
    assert len(idle_ev) == 1 and idle_ev[0].payload["from_frame"] == 36


def _fill_in_until(s: Session, shown_from: int, n: int) -> list[FrameRequest]:
    """Plan n frames; until frame `shown_from` the transport has none of the reaction's frames and sends the
    listening fill-in instead (realtime/playout.py: a late first chunk), as a loaded engine does."""
    planned = []
    for k in range(n):
        now = s.clock.time_of(k)
        for req in s.plan(now):
            planned.append(req)
            sent = VideoFrame.from_request(req, now)
            if req.is_reaction and k < shown_from:
                sent = dataclasses.replace(sent, source="listening", emotion="listening", utterance=None, reaction=None)
            s.on_frame_sent(sent, now)
    return planned


def test_a_reaction_whose_first_chunk_comes_late_is_held_for_all_of_its_hold_time():
    """Under load the engine may make a reaction's first chunk only after its hold time: the reaction keeps its
    place (the listening fill-in plays) and its hold counts from its first frame shown, so it is seen whole."""
    s, _ = make()
    s.on_emotion("surprised", 0.9, T0 - 0.01)  # hold 3 s = 24 frames
    frames = _fill_in_until(s, 40, 80)
    assert all(f.is_reaction and f.emotion == "surprised" for f in frames[:64]), "40 waiting + 24 shown"
    assert [f.source for f in frames[64:]] == ["idle"] * 16
    assert [e.payload["from_frame"] for e in s.events() if e.type == "state_changed" and e.payload["to"] == "idle"] == [
        64
    ]


def test_a_reaction_none_of_whose_frames_comes_in_time_is_skipped_and_says_so():
    s, _ = make(max_unshown_s=5.0)
    s.on_emotion("surprised", 0.9, T0 - 0.01)
    frames = _fill_in_until(s, 10**6, 60)
    ended = next(i for i, f in enumerate(frames) if not f.is_reaction)
    assert ended == 40 and all(f.source == "idle" for f in frames[ended:]), "5 s at 8 fps, then the idle loop"
    errors = [e.payload for e in s.events() if e.type == "error"]
    assert [(e["code"], e["reaction"]) for e in errors] == [("reaction_skipped", 1)]


def test_without_max_unshown_the_hold_counts_from_the_start():
    s, _ = make(max_unshown_s=0.0)
    s.on_emotion("surprised", 0.9, T0 - 0.01)
    frames = _fill_in_until(s, 10**6, 30)
    assert [f.is_reaction for f in frames] == [True] * 24 + [False] * 6


# --- mid-reaction switches ---------------------------------------------------------------------


def _reacting_happy(**kw):
    s, d = make(**kw)
    s.on_speech_start(T0)
    d.tick(4)
    s.on_speech_end(d.now)
    s.on_final("that is great", d.now)
    s.on_cue(cue("happy"), d.now)
    return s, d


def test_a_switch_to_a_cached_emotion_shows_from_the_next_frame():
    s, d = _reacting_happy()
    happy = s.chunk_requests()
    d.tick(happy[0].first_frame - d.k + 5)  # reaction frames 0..4 planned: chunk 1 is playing, mid-chunk
    happy += s.chunk_requests()
    before = s.clock.time_of(d.k - 1)
    s.on_emotion("angry", 0.9, d.now)
    new = s.chunk_requests()
    # a new reaction from the next frame: its cached first chunk needs nothing of the old stream
    assert (new[0].chunk, new[0].source, new[0].emotion, new[0].previous_chunk) == (0, "cache", "angry", None)
    assert new[0].reaction != happy[0].reaction and new[0].first_frame == d.k
    assert not any(s.is_wanted(r) for r in happy), "the old reaction's chunks are not made or shown any more"
    frames = d.tick(30)
    assert frames[0].index == new[0].first_frame and frames[0].emotion == "angry" and frames[0].source == "cache"
    assert frames[0].t == pytest.approx(before + 0.04), "pulled in, as a reaction start is"
    assert [f.source for f in frames[:6]] == ["cache"] * 4 + ["sampler"] * 2
    assert {f.emotion for f in frames[:28]} == {"angry"}, "the angry hold time (3.5 s) counts from the switch"
    assert {f.source for f in frames[28:]} == {"idle"}
    switch = [e.payload for e in s.events() if e.type == "state_changed" and e.payload.get("emotion") == "angry"]
    assert len(switch) == 1 and switch[0]["to"] == "reacting" and switch[0]["from_frame"] == frames[0].index


def test_a_calm_down_mid_reaction_still_waits_for_the_chunk_boundary():
    s, d = _reacting_happy()
    start = s.chunk_requests()[0].first_frame
    d.tick(start - d.k + 5)
    s.on_emotion("idle", 0.9, d.now)
    frames = d.tick(5)
    assert [f.emotion for f in frames] == ["happy"] * 3 + ["idle"] * 2
    assert frames[3].index == start + 8


def test_switch_without_cache_entry_continues_mid_stream():
    s, d = _reacting_happy(cached_emotions=frozenset({"happy"}))
    start = s.chunk_requests()[0].first_frame
    d.tick(start - d.k + 6)
    queued = s.chunk_requests()
    s.on_emotion("angry", 0.9, d.now)
    reissued = s.chunk_requests()
    # chunk 2 was queued as happy: it comes again as angry, revision 1, continuing chunk 1
    c2 = [r for r in reissued if r.chunk == 2][0]
    assert (c2.emotion, c2.source, c2.revision, c2.previous_chunk) == ("angry", "sampler", 1, 1)
    stale = [r for r in queued if r.chunk == 2]
    assert all(not s.is_current(r) for r in stale) and s.is_current(c2)
    frames = d.tick(4)
    assert [f.emotion for f in frames] == ["happy", "happy", "angry", "angry"]
    assert {f.source for f in frames} == {"sampler"}, "no restart from cache without an entry"


def test_same_emotion_cue_keeps_the_stream_going():
    s, d = _reacting_happy()
    d.tick(6)
    s.chunk_requests()
    s.on_emotion("happy", 1.0, d.now)
    frames = d.tick(8)
    assert {f.source for f in frames} == {"sampler"} and {f.emotion for f in frames} == {"happy"}
    assert all(r.revision == 0 for r in s.chunk_requests()), "nothing re-requested"


def test_explicit_overrides_later_asr_cue():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(4)
    s.on_speech_end(d.now)
    s.on_emotion("excited", 0.9, d.now)
    d.tick(4)
    s.on_final("this is so sad", d.now)
    s.on_cue(cue("sad"), d.now)
    assert {f.emotion for f in d.tick(8)} == {"excited"}
    emo = [e.payload for e in s.events() if e.type == "emotion"]
    assert emo[-1]["label"] == "sad" and emo[-1]["applied"] is False and emo[-1]["reason"] == "overridden_by_explicit"


# --- partial vs final -------------------------------------------------------------------------


def test_confident_partial_starts_reaction_at_speech_end_and_final_confirms():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(6)
    s.on_partial("I'm so happy", d.now)
    s.on_cue(cue("happy", confidence=0.8), d.now)
    assert s.state == "listening", "the person is still talking"
    d.tick(2)
    end = d.now
    s.on_speech_end(end)
    assert s.state == "reacting"
    d.tick(3)
    assert d.latency == [], "a partial decision waits for the final to confirm"
    s.on_final("I'm so happy today", end + 0.6)
    s.on_cue(cue("happy", confidence=0.95), end + 0.62)
    lat = [e for e in s.events() if e.type == "latency"]
    assert len(lat) == 1
    p = lat[0].payload
    assert p["first_decided_by"] == "partial" and p["decided_by"] == "final"
    assert p["ttff_ms"] == p["tter_ms"] == pytest.approx(1000 * (s.clock.time_of(d.k - 3) - end))
    assert p["ttff_ms"] <= 125.0


def test_a_pause_starts_the_reaction_only_when_the_emotion_is_known():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(6)
    assert s.on_pause(d.now) is False and s.state == "listening"  # nothing known yet: keep listening
    s.on_partial("I'm so happy", d.now)
    s.on_cue(cue("happy", confidence=0.8), d.now)
    d.tick(2)
    quiet_from = d.now - 0.2  # the silence began before the pause was noticed
    assert s.on_pause(d.now, at=quiet_from) is True and s.state == "reacting"
    assert s.timeline(0).origin == pytest.approx(quiet_from)  # TTER counts from the real end of speech
    s.on_speech_end(d.now + 0.15)  # the endpoint comes later: nothing changes
    assert s.state == "reacting"
    frames = d.tick(2)
    assert frames[0].source == "cache" and frames[0].emotion == "happy"


def test_unconfident_partial_waits_for_final():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(6)
    s.on_cue(cue("happy", confidence=0.4), d.now)
    s.on_speech_end(d.now)
    assert s.state == "thinking"
    ev = [e.payload for e in s.events() if e.type == "emotion"][0]
    assert ev["applied"] is False and ev["reason"] == "partial_not_confident"


def test_partial_and_final_disagree_tter_counts_final_emotion():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(6)
    s.on_cue(cue("happy", confidence=0.7), d.now)
    end = T0 + 1.0
    d.until(end)
    s.on_speech_end(end)
    first = d.tick()[0]
    assert first.emotion == "happy" and first.source == "cache"
    d.tick(1)
    before = s.clock.time_of(d.k - 1)  # the last frame sent
    s.on_final("I'm happy it's over, I'm so sad", d.now)
    s.on_cue(cue("sad"), d.now)
    frames = d.tick(6)
    switch = [f for f in frames if f.emotion == "sad"][0]
    assert switch.index == first.index + 2 and switch.source == "cache", "the very next frame, mid-chunk"
    assert switch.t == pytest.approx(before + 0.04)
    (lat,) = d.latency
    assert lat.payload["ttff_ms"] == pytest.approx(1000 * (first.t - end))
    assert lat.payload["tter_ms"] == pytest.approx(1000 * (switch.t - end))
    assert lat.payload["emotion"] == "sad" and lat.payload["decided_by"] == "final"


# --- timeline arithmetic -----------------------------------------------------------------------


def test_ttff_tter_and_stage_durations():
    s, d = make(pull_in_s=None)
    s.on_speech_start(T0 + 0.1)
    d.until(T0 + 2.0)
    s.stamp("decode", T0 + 1.95, T0 + 1.94)
    s.on_speech_end(T0 + 2.0)  # origin
    d.until(T0 + 2.45)
    s.on_final("hooray", T0 + 2.45, asr={"reused": False, "run_ms": 310.0})  # asr 450 ms after the endpoint
    s.on_cue(cue("excited"), T0 + 2.47)  # emotion 20 ms
    req = None
    while req is None or not req.is_reaction:
        now = s.clock.time_of(d.k)
        d.k += 1
        (req,) = s.plan(now)
    assert req.t == pytest.approx(T0 + 2.5) and req.source == "cache"
    frame = VideoFrame.from_request(
        req, T0 + 2.51, stamps={"cache": (T0 + 2.47, T0 + 2.472), "encode": (T0 + 2.5, T0 + 2.508)}
    )
    ev = s.on_frame_sent(frame, T0 + 2.512)
    assert ev is not None and ev.type == "latency"
    p = ev.payload
    assert p["ttff_ms"] == pytest.approx(512.0) and p["tter_ms"] == pytest.approx(512.0)
    assert p["stages_ms"]["asr"] == pytest.approx(450.0)
    assert p["final_asr"] == {"reused": False, "run_ms": 310.0}  # of the 450 ms, 140 waited for the model
    assert p["stages_ms"]["emotion"] == pytest.approx(20.0)
    assert p["stages_ms"]["cache"] == pytest.approx(2.0)
    assert p["stages_ms"]["encode"] == pytest.approx(8.0)
    assert p["stages_ms"]["send"] == pytest.approx(4.0)  # from the end of encode
    assert p["stages_ms"]["decode"] == pytest.approx(10.0)
    assert p["at_ms"]["decode"] == pytest.approx(-50.0)
    assert p["at_ms"]["send"] == pytest.approx(512.0)
    assert p["first_frame_source"] == "cache" and p["kind"] == "speech"
    assert s.on_frame_sent(frame, T0 + 2.6) is None, "reported once"


def test_timeline_alone():
    tl = UtteranceTimeline(3, "clip", origin=10.0)
    tl.stamp("decode", 10.05)
    tl.stamp("asr", 10.6)
    tl.decide("love", "final")
    f = VideoFrame(80, 80, 10.7, 10.69, "love", "cache", utterance=3)
    ev = tl.on_frame_sent(f, 10.75)
    assert ev.payload["stages_ms"] == {"decode": 50.0, "asr": 550.0, "send": 150.0}
    assert ev.payload["tter_ms"] == 750.0
    with pytest.raises(ValueError):
        tl.stamp("teleport", 11.0)


def test_clip_counts_from_clip_received():
    s, d = make()
    d.tick(3)
    got = d.now
    s.on_clip_received(got)
    assert s.state == "thinking"
    s.on_speech_start(got + 0.05)
    s.on_speech_end(got + 0.1)
    s.on_final("I love you", got + 0.5)
    s.on_cue(cue("love"), got + 0.52)
    d.until(got + 1.0)
    (lat,) = d.latency
    first = [f for f in d.frames if f.is_reaction][0]
    assert lat.payload["kind"] == "clip" and lat.payload["ttff_ms"] == pytest.approx(1000 * (first.t - got))


def test_live_speech_after_a_whole_clip_is_a_turn_of_its_own():
    """A clip transcribed whole (no VAD onset, as the runner does it) must not swallow the next live utterance."""
    s, d = make()
    d.tick(3)
    clip = s.on_clip_received(d.now)
    s.on_final("we got the keys", d.now + 0.3, utterance=clip)
    s.on_cue(cue("happy"), d.now + 0.35, utterance=clip, decided_by="final")
    d.until(d.now + 1.0)
    live = s.on_speech_start(d.now)
    assert live is not None and live != clip
    s.on_speech_end(d.now + 0.5, utterance=live)
    s.on_final("hello there", d.now + 0.8, utterance=live, language="en")
    s.on_cue(cue("sad"), d.now + 0.85, utterance=live, decided_by="final")
    ev = s.events()
    finals = [e.payload for e in ev if e.type == "transcript_final"]
    assert [(p["utterance"], p["source"]) for p in finals] == [(clip, "clip"), (live, "speech")]
    assert not [e for e in ev if e.type == "error"]
    assert s.state == "reacting"


def test_idle_cue_returns_to_idle_and_reports():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(4)
    s.on_speech_end(d.now)
    s.on_final("the bus comes at nine", d.now)
    s.on_cue(cue("idle"), d.now)
    assert s.state == "idle"
    f = d.tick()[0]
    assert f.source == "idle" and f.utterance == 0
    (lat,) = d.latency
    assert lat.payload["emotion"] == "idle" and lat.payload["tter_ms"] is not None


def test_say_then_text_cue():
    s, d = make()
    d.tick(2)
    u = s.on_say("Great news, you passed!", d.now)
    assert s.state == "thinking"
    s.on_cue(cue("happy"), d.now + 0.02, source="text")
    f = d.tick()[0]
    assert f.source == "cache" and f.utterance == u
    (lat,) = d.latency
    assert lat.payload["kind"] == "say" and lat.payload["decided_by"] == "text"


def test_thinking_timeout_goes_idle():
    s, d = make(thinking_timeout_s=2.0)
    s.on_speech_start(T0)
    d.tick(4)
    s.on_speech_end(d.now)
    d.until(d.now + 2.2)
    assert s.state == "idle"
    errs = [e.payload for e in s.events() if e.type == "error"]
    assert errs and errs[0]["code"] == "no_cue" and errs[0]["fatal"] is False


# --- frame clock --------------------------------------------------------------------------------


def test_frame_clock_is_drift_free_over_10000_frames():
    t0 = 86400.123456789
    c = FrameClock(t0)
    for k in range(10_000):
        due_t = c.time_of(k)
        assert due_t == t0 + k / 8
        assert c.due(due_t - 1e-6) == [], f"frame {k} came early"
        assert c.due(due_t) == [k]
        assert c.due(due_t + 0.06) == []
    assert c.time_of(10_000) - t0 == pytest.approx(1250.0, abs=1e-9)
    assert c.dropped == 0 and c.late_sent == 0
    assert c.index_at(c.time_of(9_999)) == 9_999 and c.pts_of(9_999) == 9_999


def test_late_loop_drops_frames_instead_of_bursting():
    c = FrameClock(0.0)
    assert c.due(0.0) == [0]
    assert c.due(0.51) == [4], "only the newest due frame: no catch-up burst"
    assert c.dropped == 3 and c.take_late() == (1, 3) and c.take_late() is None
    assert c.due(0.52) == []
    assert c.report_sent(4, 0.51) == pytest.approx(0.01) and c.late_sent == 0
    assert c.report_sent(5, 0.625 + 0.2) == pytest.approx(0.2) and c.late_sent == 1


def test_session_reports_late_frames():
    s, _ = make()
    assert [f.index for f in s.plan(T0)] == [0]
    assert [f.index for f in s.plan(T0 + 1.01)] == [8]
    (late,) = [e for e in s.events() if e.type == "frames_late"]
    assert late.payload == {"first": 1, "count": 7, "dropped_total": 7}


# --- messages and events -----------------------------------------------------------------------


def test_events_json_round_trip():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(4)
    s.on_partial("我现在超开心", d.now)
    s.on_speech_end(d.now)
    s.on_final("我现在超开心！", d.now)
    s.on_cue(EmotionCue("happy", 0.9, 0.97, {"happy": 0.97, "idle": 0.03}, "zh", 1.5, ("开心",)), d.now)
    d.tick(40)
    s.on_emotion("nope", 1.0, d.now)
    s.on_close(d.now)
    ev = s.events()
    assert {"state_changed", "transcript_partial", "transcript_final", "emotion", "latency", "error"} <= set(types(ev))
    for e in ev:
        text = e.to_json()
        assert SessionEvent.from_json(text) == e
        assert json.loads(text)["type"] == e.type
    assert "开心" in [e for e in ev if e.type == "transcript_final"][0].to_json()
    assert [e.seq for e in ev] == list(range(1, len(ev) + 1))


def test_messages_from_vad_and_audio():
    from avatarcast.realtime.asr import Transcript as AsrTranscript
    from avatarcast.realtime.asr import VadEvent

    asr = AsrTranscript("hi there", "en", (), 1.0, 300.0)
    final = Transcript.from_vad(VadEvent("final", 2, 3.0, 1.0, 2.5, asr), 50.0)
    assert (final.text, final.final, final.kind, final.utterance, final.t, final.asr) == (
        "hi there",
        True,
        "final",
        2,
        50.0,
        asr,
    )
    end = SpeechEvent.from_vad(VadEvent("speech_end", 2, 2.9, 1.0, 2.5), 49.0)
    assert (end.kind, end.stream_s) == ("end", 2.5)
    with pytest.raises(ValueError):
        SpeechEvent("middle", 0.0)
    assert AudioChunk(1.0, b"\x00" * 3200).duration_s == pytest.approx(0.1)
    req = FrameRequest(3, 3, 1.375, "happy", 0.8, "cache", 1, 1, 0, 3)
    frame = VideoFrame.from_request(req, 1.38)
    assert frame.is_reaction and req.from_cache and frame.t_capture == 1.38 and frame.time_base == 0.125


# --- out-of-order and hostile inputs -----------------------------------------------------------


def test_final_before_speech_end():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(4)
    s.on_final("hello", d.now)
    assert s.state == "thinking"
    ev = [e for e in s.events() if e.type == "state_changed"][-1]
    assert ev.payload["implied_end"] is True
    s.on_speech_end(d.now + 0.1)  # the late endpoint changes nothing
    assert s.state == "thinking" and s.events() == []
    s.on_cue(cue("happy"), d.now + 0.2)
    assert s.state == "reacting"


def test_cue_before_speech_start():
    s, d = make()
    s.on_cue(cue("happy"), T0)
    assert s.state == "idle"
    (err,) = s.events()
    assert err.type == "error" and err.payload["code"] == "stale_cue"
    s.on_speech_start(T0 + 0.1)
    assert s.state == "listening"
    s.on_cue(cue("sad"), T0 + 0.2, source="explicit")  # an explicit cue needs no utterance
    assert s.state == "reacting" and d.tick(2)[-1].emotion == "sad"


def test_stale_inputs_for_an_older_utterance():
    s, _ = make()
    u0 = s.on_speech_start(T0)
    s.on_speech_end(T0 + 0.5)
    u1 = s.on_speech_start(T0 + 0.7)
    assert u1 == u0 + 1
    s.events()
    s.on_final("old", T0 + 0.8, utterance=u0)
    s.on_cue(cue("angry"), T0 + 0.81, utterance=u0)
    assert s.state == "listening"
    assert [e.payload["code"] for e in s.events()] == ["stale_cue"]


def test_close_twice_and_stale_final_after_close():
    s, d = make()
    s.on_speech_start(T0)
    d.tick(3)
    s.on_speech_end(d.now)
    s.on_close(d.now)
    s.on_close(d.now + 1)
    assert states(s.events()) == ["listening", "thinking", "closed"]
    s.on_final("too late", d.now + 2)
    s.on_cue(cue("happy"), d.now + 2)
    s.on_speech_start(d.now + 3)
    assert s.events() == [] and s.state == "closed" and s.plan(d.now + 5) == []


def test_speech_end_and_partial_without_onset():
    s, _ = make()
    s.on_partial("hey", T0)
    assert s.state == "listening"
    s2, _ = make()
    s2.on_speech_end(T0)
    assert s2.state == "thinking"


def test_unknown_emotion_is_an_error_not_a_crash():
    s, _ = make()
    s.on_emotion("listening", 1.0, T0)
    s.on_emotion("ecstatic", 1.0, T0)
    s.on_emotion("happy", float("nan"), T0)
    assert s.state == "idle"
    assert [e.payload["code"] for e in s.events()] == ["unknown_emotion", "unknown_emotion", "bad_intensity"]


# --- bounded memory ----------------------------------------------------------------------------


def test_memory_stays_bounded_over_a_long_session():
    s, d = make(max_events=64, pull_in_s=None)  # a fixed 8 fps clock: exactly 8 * 3600 frames
    rng = random.Random(1)
    labels = ["happy", "sad", "angry", "surprised", "excited", "idle"]
    hour = 3600.0
    t_next = T0 + 1.0
    while s.clock.time_of(d.k) < T0 + hour:
        d.tick()
        if s.clock.time_of(d.k) >= t_next:
            now = d.now
            s.on_speech_start(now)
            s.on_partial("words " * 200, now + 0.3)  # long texts are not kept
            s.on_speech_end(now + 0.6)
            s.on_final("final words", now + 0.9)
            s.on_cue(cue(rng.choice(labels)), now + 0.92)
            if rng.random() < 0.3:
                s.on_emotion(rng.choice(labels[:-1]), 0.5, now + 1.5)
            t_next = now + rng.uniform(1.5, 8.0)
        for r in s.chunk_requests():
            assert isinstance(r, ChunkRequest)
        r = s._reaction
        if r is not None:
            assert len(r.segments) <= 3 and len(r.revisions) <= 4
    assert d.k == 8 * 3600
    assert len(s._events) <= 64 and s.events_dropped > 0
    assert len(s._turns) <= s.config.max_timelines
    assert s.utterance is not None and s.utterance > 500
    assert len(d.latency) > 500
    assert len(s._chunks) == 0


def test_random_input_orders_never_break_the_session():
    labels = ["happy", "sad", "idle", "angry", "love", "nope"]
    for seed in range(30):
        rng = random.Random(seed)
        s, d = make(max_events=32)
        last_index = -1
        for _ in range(400):
            now = d.now
            op = rng.randrange(12)
            if op == 0:
                s.on_speech_start(now)
            elif op == 1:
                s.on_partial("so happy", now)
            elif op == 2:
                s.on_speech_end(now)
            elif op == 3:
                s.on_final("so happy", now, utterance=rng.choice([None, s.utterance, 0]))
            elif op == 4:
                s.on_cue(cue(rng.choice(labels[:-1]), rng.random()), now, rng.choice(["asr", "text", "explicit"]))
            elif op == 5:
                s.on_clip_received(now)
            elif op == 6:
                s.on_say("hello", now)
            elif op == 7:
                s.on_emotion(rng.choice(labels), rng.uniform(-1, 2), now)
            elif op == 8 and rng.random() < 0.05:
                s.on_close(now)
            for f in d.tick(rng.randrange(0, 4)):
                assert f.index > last_index and f.source in ("idle", "listening", "cache", "sampler")
                last_index = f.index
            queued = [r for r in s.chunk_requests() if s.is_current(r) and r.source == "sampler"]
            assert len({r.chunk for r in queued}) <= 3  # <= 2 ahead plus the one playing
            for e in s.events():
                assert SessionEvent.from_json(e.to_json()) == e
        assert s.state in ("idle", "listening", "thinking", "reacting", "closed")
