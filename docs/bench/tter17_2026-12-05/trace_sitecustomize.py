"""Diagnostic tracer for issue 17 (not shipped): time stamps of every CPU-heavy unit in the server process.
Active only when TTER_TRACE names an output file."""

import os

if os.environ.get("TTER_TRACE"):
    import functools
    import importlib.abc
    import importlib.util
    import sys
    import threading
    import time

    _out = open(os.environ["TTER_TRACE"] + f".{os.getpid()}", "a", buffering=1)
    _tl = threading.local()
    _wlock = threading.Lock()

    def rec(kind, tag, t0, t1, cpu, pcpu):
        with _wlock:
            _out.write(
                f"{kind}\t{tag}\t{threading.get_native_id()}\t{t0:.6f}\t{t1:.6f}\t{cpu * 1000:.2f}\t{pcpu * 1000:.2f}\n"
            )

    def wrap(fn, kind, tagf=None):
        @functools.wraps(fn)
        def w(*a, **k):
            t0, c0, p0 = time.monotonic(), time.thread_time(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                tag = tagf(a, k) if tagf else ""
                rec(kind, tag, t0, time.monotonic(), time.thread_time() - c0, time.process_time() - p0)

        return w

    def patch_asr(m):
        dw = m.decode_window
        m.decode_window = wrap(dw, "whisper", lambda a, k: f"{getattr(_tl, 'kind', '?')}:{a[1].size / 16000:.2f}")
        ts = m.Transcriber._transcribe_short

        def ts2(self, audio, language, task, urgent, owner, yield_to):
            _tl.kind = ("urgent" if urgent else "routine") + ("" if yield_to is None else "Y")
            return ts(self, audio, language, task, urgent, owner, yield_to)

        m.Transcriber._transcribe_short = ts2

    def patch_reader(m):
        m.EmotionReader.read = wrap(m.EmotionReader.read, "read")
        m.EmotionReader.read_partial = wrap(m.EmotionReader.read_partial, "read_partial")

    def patch_encoder(m):
        m.E5Encoder.encode = wrap(m.E5Encoder.encode, "e5", lambda a, k: a[2] if len(a) > 2 else k.get("kind", "query"))

    def patch_ort(m):
        cls = m.InferenceSession
        orig = cls.run

        def run(self, *a, **k):
            t0, c0, p0 = time.monotonic(), time.thread_time(), time.process_time()
            try:
                return orig(self, *a, **k)
            finally:
                rec(
                    "ort",
                    os.path.basename(str(getattr(self, "_model_path", "") or "mem")),
                    t0,
                    time.monotonic(),
                    time.thread_time() - c0,
                    time.process_time() - p0,
                )

        cls.run = run

    def patch_runner(m):
        m.encode_image = wrap(m.encode_image, "encode_img", lambda a, k: a[1])

    def patch_live(m):
        m.prosody = wrap(m.prosody, "prosody")
        orig = m.LiveAudio._check_pause

        def cp(self, probs):
            before = getattr(self._utt, "get", lambda *_: None)("pauses") if self._utt else None
            orig(self, probs)
            after = self._utt.get("pauses") if self._utt else None
            if after != before and after is not None:
                t = time.monotonic()
                rec("pause", str(self.owner), t, t, 0, 0)

        m.LiveAudio._check_pause = cp
        origv = m.LiveAudio._on_vad

        def ov(self, ev):
            t = time.monotonic()
            rec("vad_" + ev.kind, str(self.owner), t, t, 0, 0)
            return origv(self, ev)

        m.LiveAudio._on_vad = ov
        orige = m.LiveAudio._emit

        def em(self, ev):
            t = time.monotonic()
            if ev.kind in ("final", "partial"):
                rec("ev_" + ev.kind, f"{self.owner}:{int(ev.speculative)}:{int(ev.reused)}", t, t, 0, 0)
            return orige(self, ev)

        m.LiveAudio._emit = em

    def patch_sched(m):  # the gate's deadline room (engine_yields_to_asr.patch); main has no `room`
        if not hasattr(m, "room"):
            return
        orig_room = m.room

        def room(jobs, now, est):
            v = orig_room(jobs, now, est)
            rec("room", f"{v:.4f}:{est.batch_s:.3f}:{min(j.due_t for j in jobs) - now:.3f}", now, now, 0, 0)
            return v

        m.room = room

    PATCHES = {
        "avatarcast.realtime.scheduler": patch_sched,
        "avatarcast.realtime.asr": patch_asr,
        "avatarcast.realtime.emotion.reader": patch_reader,
        "avatarcast.realtime.emotion.encoder": patch_encoder,
        "onnxruntime.capi.onnxruntime_inference_collection": patch_ort,
        "avatarcast.realtime.runner": patch_runner,
        "avatarcast.realtime.live": patch_live,
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
