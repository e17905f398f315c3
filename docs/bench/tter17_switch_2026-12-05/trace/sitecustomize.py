"""Diagnostic tracer for issue 17's "frame slot" (not shipped): what a decided emotion waits on before its first frame.

Active only when SWITCH_TRACE names an output prefix; the server writes JSON lines to `prefix.<pid>`:
- "decide": every Session._start_or_switch (a cue that starts or changes a reaction), with the reaction's chunk
  grid at that moment (start frame, the next frame to plan, the chunk playing, the next chunk boundary and its time);
- "latency": every latency event (joins a decision to the bench's clip by session, utterance and TTER);
- "request": every chunk request the runner takes (reaction, chunk, revision, emotion, source, deadline);
- "stored": a chunk's frames ready in the playout (cache lookup or sampler), with the frames queued after it;
- "shown": every planned frame and what it showed (late: a reaction frame was due and none was ready), with the
  frames still queued and the degradation ladder's level.
Times are time.monotonic() seconds, the server's own clock.
"""

import os

if os.environ.get("SWITCH_TRACE"):
    import functools
    import importlib.abc
    import json
    import sys
    import threading
    import time

    _out = open(os.environ["SWITCH_TRACE"] + f".{os.getpid()}", "a", buffering=1)
    _lock = threading.Lock()

    def rec(**kw):
        with _lock:
            _out.write(json.dumps(kw, default=str) + "\n")

    def patch_session(m):
        orig = m.Session._start_or_switch

        @functools.wraps(orig)
        def sos(self, d, turn, now):
            r = self._reaction
            c = self.config
            info = {
                "k": "decide",
                "sid": self.session_id,
                "t": now,
                "state": str(self._state),
                "label": d.cue.label,
                "by": d.decided_by,
                "turn": turn.id,
                "origin": turn.timeline.origin,
                "next_index": self.clock.next_index,
                "upcoming": self.clock.upcoming(now),
            }
            if r is not None:
                nxt = self.clock.upcoming(now) - r.start_frame
                boundary = max(0, -(-nxt // c.chunk_frames))
                bf = r.start_frame + boundary * c.chunk_frames
                info.update(
                    reaction=r.id,
                    start_frame=r.start_frame,
                    playing=r.playing,
                    next_request=r.next_request,
                    playing_emotion=r.segments[-1].emotion,
                    boundary=boundary,
                    boundary_frame=bf,
                    boundary_t=self.clock.time_of(bf),
                    next_t=self.clock.time_of(self.clock.upcoming(now)),
                )
            orig(self, d, turn, now)
            r2 = self._reaction
            info["after_reaction"] = None if r2 is None else r2.id
            info["after_start_frame"] = None if r2 is None else r2.start_frame
            rec(**info)

        m.Session._start_or_switch = sos
        push = m.Session._push

        def _push(self, ev):
            if ev.type == "latency":
                p = ev.payload
                rec(
                    k="latency",
                    sid=self.session_id,
                    t=ev.t,
                    utterance=p.get("utterance"),
                    tter_ms=p.get("tter_ms"),
                    emotion=p.get("emotion"),
                    decided_by=p.get("decided_by"),
                    first=p.get("first_decided_by"),
                    origin=p.get("origin_t"),
                )
            return push(self, ev)

        m.Session._push = _push

    def patch_runner(m):
        cls = m.SessionRunner
        init = cls.__init__

        def __init__(self, *a, **k):
            init(self, *a, **k)
            self.playout._sid = self.id
            self.playout._ladder = self.services.scheduler.ladder

        cls.__init__ = __init__

    def patch_playout(m):
        P = m.Playout
        show, on_request, store = P.show, P.on_request, P.store

        def _show(self, req):
            q = len(self._ready)
            s = show(self, req)
            lad = getattr(self, "_ladder", None)
            rec(
                k="shown",
                sid=getattr(self, "_sid", "?"),
                t=time.monotonic(),
                index=req.index,
                due=req.t,
                req_emotion=req.emotion,
                req_source=str(req.source),
                reaction=req.reaction,
                chunk=req.chunk,
                emotion=s.emotion,
                source=str(s.source),
                late=s.late,
                queued_before=q,
                queued_after=len(self._ready),
                ladder=None if lad is None else lad.level,
            )
            return s

        def _on_request(self, req):
            rec(
                k="request",
                sid=getattr(self, "_sid", "?"),
                t=time.monotonic(),
                reaction=req.reaction,
                chunk=req.chunk,
                revision=req.revision,
                emotion=req.emotion,
                source=str(req.source),
                due=req.due_t,
                first_frame=req.first_frame,
                prev=req.previous_chunk,
                queued=len(self._ready),
            )
            return on_request(self, req)

        def _store(self, req, frames, state, source=None):
            store(self, req, frames, state, source)
            rec(
                k="stored",
                sid=getattr(self, "_sid", "?"),
                t=time.monotonic(),
                reaction=req.reaction,
                chunk=req.chunk,
                revision=req.revision,
                emotion=req.emotion,
                source=str(source or req.source),
                due=req.due_t,
                queued=len(self._ready),
            )

        P.show, P.on_request, P.store = _show, _on_request, _store

    PATCHES = {
        "avatarcast.realtime.session": patch_session,
        "avatarcast.realtime.runner": patch_runner,
        "avatarcast.realtime.playout": patch_playout,
    }

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in PATCHES:
                return None
            for f in sys.meta_path:
                if f is self:
                    continue
                spec = f.find_spec(name, path, target) if hasattr(f, "find_spec") else None
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            orig = loader.exec_module

            def exec_module(module, orig=orig, name=name):
                orig(module)
                PATCHES[name](module)

            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Hook())
