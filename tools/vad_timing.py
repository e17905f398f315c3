"""Where the live path's silence timers start and what they would split: Silero's view of the speech clips.

    python -m tools.vad_timing [tests/data/speech/en tests/data/speech/zh]

Per folder: how far the VAD's end of speech (the server's origin) lies after the energy-based one the
latency bench counts from; the quiet runs between a clip's first onset and its last end (one sentence
each), so the clips each endpoint length would split; and how many pause speculations
(realtime/live.py) each pause length would waste on pauses inside an utterance. No timing: counts only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from avatarcast.realtime.asr import VAD_WINDOW, StreamingTranscriber
from avatarcast.realtime.bench.latency import load_clips, speech_bounds

CHUNK = 320  # the bench's 20 ms PCM chunks
PAUSES_MS = (96, 128, 160, 224)
ENDPOINTS_MS = (224, 256, 288, 320, 352)


def folder_report(folder: Path) -> dict:
    lags, longest, wasted, utterances = [], [], {t: 0 for t in PAUSES_MS}, 0
    for clip in load_clips(folder):
        x = np.concatenate([clip.pcm.astype(np.float32) / 32768.0, np.zeros(16000, np.float32)])
        vad = StreamingTranscriber(None, min_speech_ms=64, speculative_silence_ms=None, partial_interval_ms=None)
        events = vad.feed(x)
        probs = np.array(vad.speech_probs)
        starts = [e for e in events if e.kind == "speech_start"]
        ends = {e.utterance: e for e in events if e.kind == "speech_end"}
        utterances += len(starts)
        _, last = speech_bounds(clip.pcm, CHUNK)
        lags.append((int(round(ends[starts[-1].utterance].end_s * 16000)) // CHUNK - last) * CHUNK / 16.0)
        runs, quiet = [], 0
        a = int(starts[0].start_s * 16000) // VAD_WINDOW
        b = int(ends[starts[-1].utterance].end_s * 16000) // VAD_WINDOW
        for p in probs[a:b]:  # LiveAudio's pause count: quiet windows, reset only by speech
            if p < vad.neg_threshold:
                quiet += 1
            elif p >= vad.threshold:
                if quiet:
                    runs.append(quiet * 32)
                quiet = 0
        longest.append(max(runs, default=0))
        for t in PAUSES_MS:  # a run the endpoint ended is no waste: count the ones under it
            wasted[t] += sum(t <= r < 352 for r in runs)
    return {
        "clips": len(lags),
        "utterances": utterances,
        "clips_split_by_endpoint_ms": {e: int(sum(m >= e for m in longest)) for e in ENDPOINTS_MS},
        "vad_end_after_energy_end_ms": {q: float(np.percentile(lags, q)) for q in (5, 50, 95)},
        "longest_inner_quiet_ms": {
            "p50": float(np.percentile(longest, 50)),
            "p95": float(np.percentile(longest, 95)),
            "max": float(max(longest)),
        },
        "wasted_speculations_by_pause_ms": wasted,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", default=["tests/data/speech/en", "tests/data/speech/zh"])
    for f in ap.parse_args().folders:
        print(f, folder_report(Path(f)))


if __name__ == "__main__":
    main()
