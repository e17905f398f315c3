"""`avatarcast bench latency`: clip generation, the bench client's and the report's helpers, and one real
end-to-end run.

The end-to-end test makes 3 espeak-ng clips, runs the bench as a subprocess against a server it
starts itself, and checks the JSON report's shape (transcript, emotion, TTFF <= TTER, summary
percentiles) and the chart. It asserts no timing targets: those belong to the benchmark's report.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from avatarcast.realtime.bench import client as bc
from avatarcast.realtime.bench import latency as bl

REPO = Path(__file__).resolve().parents[2]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path_factory.mktemp("clips")
    r = subprocess.run(
        [sys.executable, "realtime/bench/clips.py", "--out", str(out), "--n", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return out


@needs_espeak
def test_make_clips_writes_labelled_16k_clips_of_2_to_4_s(clips: Path) -> None:
    with open(clips / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [list(r) for r in rows][0] == ["file", "emotion", "text"]
    assert len(rows) == 3
    assert len({r["emotion"] for r in rows}) == 3  # round-robin over the emotions
    for r in rows:
        with wave.open(str(clips / r["file"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert 2.0 <= w.getnframes() / 16000 <= 4.0
        assert r["text"]


def test_plan_covers_every_emotion_before_repeating() -> None:
    from avatarcast.realtime.bench.clips import EMOTION_ORDER, plan
    from avatarcast.vocabulary import EMOTIONS

    first = plan(len(EMOTION_ORDER))
    assert sorted(e for e, _ in first) == sorted(EMOTION_ORDER)
    assert set(EMOTION_ORDER) == set(EMOTIONS) - {"listening"}  # every emotion a sentence can call for
    assert len(plan(24)) == 24


def test_speech_bounds_finds_the_loud_part() -> None:
    sr, chunk = 16000, 320
    pcm = np.zeros(sr * 2, np.int16)
    t = np.arange(sr // 2) / sr
    pcm[sr // 2 : sr] = (8000 * np.sin(2 * np.pi * 200 * t)).astype(np.int16)  # 0.5 .. 1.0 s
    first, last = bc.speech_bounds(pcm, chunk)
    assert first == 25 and last == 49


def test_client_times_from_frames() -> None:
    frames = [
        (0.0, 0, "idle", "idle"),
        (1.0, 8, "idle", "idle"),
        (1.1, 9, "listening", "listening"),
        (1.9, 15, "cache", "sad"),
        (2.0, 16, "cache", "happy"),
        (2.5, 20, "sampler", "happy"),
    ]
    t = bc.client_times(frames, 1.05, "happy", 1.8, None)
    assert t["ttff_ms"] == pytest.approx(50.0) and t["ttff_source"] == "listening"
    assert t["tter_ms"] == pytest.approx(950.0)  # the first frame showing the decided emotion
    assert t["first_reaction_ms"] == pytest.approx(850.0)
    idle = bc.client_times(frames, 1.05, "idle", 1.8, None)
    assert idle["tter_ms"] == idle["ttff_ms"]
    stream = bc.client_times(frames, 1.5, "happy", 1.8, onset=0.5)
    assert stream["listening_ms"] == pytest.approx(600.0)


def test_conn_reads_the_last_utterance_latency_and_its_decision() -> None:
    """The latency event of the newest utterance finalized after the origin, and the emotion it decided."""
    conn = bc.Conn(None, [])
    ev = [
        (1.0, "transcript_final", {"utterance": 1, "source": "clip", "text": "old"}),
        (1.2, "latency", {"utterance": 1, "kind": "clip", "emotion": "sad"}),
        (2.0, "emotion", {"utterance": 2, "label": "happy", "applied": False}),
        (2.1, "emotion", {"utterance": 2, "label": "happy", "applied": True}),
        (2.2, "transcript_final", {"utterance": 2, "source": "clip", "text": "new"}),
        (2.3, "transcript_final", {"utterance": 3, "source": "speech", "text": "mic"}),
        (2.4, "latency", {"utterance": 2, "kind": "clip", "emotion": "happy"}),
    ]
    conn.events = [(t, {"type": kind, "payload": p}) for t, kind, p in ev]
    latency, finals = conn.latency_for(("clip",), 1.5)
    assert latency == {"utterance": 2, "kind": "clip", "emotion": "happy"} and len(finals) == 2
    assert conn.decided(latency, 2) == ("happy", 2.1)
    assert conn.decided(None, 2) == ("happy", 2.1)  # no latency event yet: the last applied cue
    assert conn.latency_for(("clip",), 3.0) == (None, finals)
    assert conn.decided(None, 7) == (None, None)


def test_breakdown_sums_to_the_client_tter() -> None:
    server = {
        "ttff_ms": 1155.6,
        "tter_ms": 1155.6,
        "stages_ms": {
            "decode": 22.5,
            "vad": 0.0,
            "asr": 968.7,
            "emotion": 22.7,
            "cache": 1.2,
            "encode": 44.7,
            "send": 0.04,
        },
        "at_ms": {
            "decode": 22.5,
            "vad": 991.2,
            "asr": 991.2,
            "emotion": 1013.9,
            "cache": 1015.3,
            "encode": 1155.5,
            "send": 1155.6,
        },
    }
    b = bl.breakdown(server, 1160.0)
    assert b["decode"] == 22.5 and b["asr"] == pytest.approx(968.7) and b["encode"] == pytest.approx(44.7, abs=0.2)
    assert b["frame slot"] == pytest.approx(1155.5 - 44.7 - 1015.3, abs=0.2)
    assert sum(b.values()) == pytest.approx(1160.0, abs=0.5)
    assert bl.breakdown(None, 100.0) is None


def test_summary_percentiles_and_accuracy() -> None:
    rows = [
        {
            "ttff_ms": 100.0 + i,
            "tter_ms": 1000.0 + 10 * i,
            "first_reaction_ms": 1000.0,
            "expected": "happy",
            "correct": i % 2 == 0,
            "server": {"ttff_ms": 1.0, "tter_ms": 2.0},
            "breakdown_ms": None,
            "frames_late": 0,
            "error": None,
        }
        for i in range(4)
    ]
    s = bl.summarize(rows, [[0.125, 0.125, 0.2], [0.125]], "clip")
    assert s["accuracy"] == {"labelled": 4, "correct": 2, "accuracy": 0.5}
    assert s["ttff_ms"]["p50"] == pytest.approx(101.5) and s["tter_ms"]["p95"] is not None
    fi = s["frame_interval_ms"]
    assert fi["overall"]["n"] == 4 and fi["overall"]["over_160ms"] == 1 and len(fi["per_session"]) == 2


@pytest.mark.slow
@needs_espeak
def test_bench_latency_end_to_end(clips: Path, tmp_path: Path) -> None:
    chart = tmp_path / "latency.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "avatarcast.realtime.bench.latency",
            "--clips",
            str(clips),
            "--json",
            "--chart",
            str(chart),
            "--linger",
            "0.5",
            "--warmup",
            "0.6",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        # as a script's background job starts it: SIGINT ignored, and inherited by the server, which must still stop
        # on the signal the bench sends and say so (exit 130; it exited 0 before DrainingServer.handle_exit)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)  # stdout holds the JSON only; logs went to stderr
    assert report["mode"] == "clip" and report["server_started"] is True
    assert len(report["clips"]) == 3
    for c in report["clips"]:
        assert c["error"] is None, c
        assert isinstance(c["transcript"], str) and c["transcript"].strip()
        assert isinstance(c["emotion"], str) and c["emotion"]
        assert isinstance(c["ttff_ms"], float) and isinstance(c["tter_ms"], float)
        assert 0 < c["ttff_ms"] <= c["tter_ms"]
        assert c["server"] and "stages_ms" in c["server"]
    s = report["summary"]
    for key in ("ttff_ms", "tter_ms"):
        assert s[key]["p50"] is not None and s[key]["p95"] is not None
    assert s["accuracy"]["labelled"] == 3
    assert s["frame_interval_ms"]["overall"]["p99"] is not None
    assert report["machine"]["cpu_count"] == __import__("os").cpu_count()
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the server it started stopped as Ctrl-C stops it: drained, exit 130, no traceback in its log
    assert report["server_exit"]["clean"] and report["server_exit"]["code"] == 130, report["server_exit"]
