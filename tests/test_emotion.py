"""EmotionReader with the real all-MiniLM-L6-v2 weights, scored on the held-out CSV."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from avatarcast.realtime.audio import Prosody
from avatarcast.realtime.emotion import CUE_LABELS, PROTOTYPES, EmotionReader, MiniLMEncoder
from tools.eval_emotion import evaluate, load_rows, markdown

DATA = Path(__file__).parent / "data" / "emotion_utterances.csv"

CALM = Prosody(energy_db=-38.0, energy_var=3.0, pitch_hz_median=110.0, pitch_var=0.8, speech_rate_sps=2.0, voiced_fraction=0.3, duration_s=2.0)
ENERGETIC = Prosody(energy_db=-12.0, energy_var=9.0, pitch_hz_median=220.0, pitch_var=5.0, speech_rate_sps=5.5, voiced_fraction=0.6, duration_s=2.0)


@pytest.fixture(scope="module")
def reader() -> EmotionReader:
    return EmotionReader.load()


def test_held_out_accuracy(reader: EmotionReader) -> None:
    rows = load_rows(DATA)
    assert len(rows) >= 200 and sum(r["language"] == "zh" for r in rows) >= 60
    result = evaluate(reader, rows)
    assert result["accuracy"] >= 0.85, f"expected >= 0.85 top-1, got {result['accuracy']:.3f}"
    for lang, v in result["per_language"].items():
        assert v["accuracy"] >= 0.85, f"{lang}: expected >= 0.85, got {v['accuracy']:.3f}"
    for label, v in result["per_emotion"].items():
        assert v["accuracy"] >= 0.75, f"{label}: expected >= 0.75, got {v['accuracy']:.3f}"
    md = markdown(result, str(DATA))
    assert "| zh |" in md and "Confusion" in md


def test_test_set_is_disjoint_from_prototypes() -> None:
    def norm(s: str) -> str:
        return "".join(c for c in s.lower() if c.isalnum())

    protos = {norm(t) for ts in PROTOTYPES.values() for t in ts}
    overlap = [r["text"] for r in load_rows(DATA) if norm(r["text"]) in protos]
    assert overlap == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("I am not happy", "sad"),
        ("I'm not happy at all with this", "sad"),
        ("我一点都不开心", "sad"),
        ("我不开心", "sad"),
        ("I don't understand", "confused"),
        ("我不明白", "confused"),
        ("I can't stop laughing", "laughing"),
        ("I'm not sad anymore", "happy"),
        ("not bad at all", "happy"),
    ],
)
def test_negation(reader: EmotionReader, text: str, expected: str) -> None:
    cue = reader.read(text)
    assert cue.label == expected, (cue.label, cue.evidence)


@pytest.mark.parametrize("text,not_label", [("I'm not tired at all", "sleepy"), ("I am not angry", "angry"), ("It's not funny", "laughing"), ("我不困", "sleepy")])
def test_denied_emotion_is_not_shown(reader: EmotionReader, text: str, not_label: str) -> None:
    assert reader.read(text).label != not_label


def test_intensifiers_raise_intensity(reader: EmotionReader) -> None:
    plain, strong = reader.read("I am happy"), reader.read("I am so very happy!!")
    assert plain.label == strong.label == "happy"
    assert strong.intensity > plain.intensity + 0.1
    zh_plain, zh_strong = reader.read("我很开心"), reader.read("我超级开心！！")
    assert zh_plain.label == zh_strong.label == "happy"
    assert zh_strong.intensity > zh_plain.intensity + 0.1


@pytest.mark.parametrize(
    "text,expected",
    [("hahaha", "laughing"), ("哈哈哈哈", "laughing"), ("zzz", "sleepy"), ("好困", "sleepy"), ("😂😂", "laughing"), ("❤️", "love"), ("huh?", "confused"), ("什么意思？", "confused")],
)
def test_short_cues(reader: EmotionReader, text: str, expected: str) -> None:
    assert reader.read(text).label == expected


def test_prosody_moves_intensity_and_arousal_labels(reader: EmotionReader) -> None:
    assert ENERGETIC.arousal > 0.8 > 0.2 > CALM.arousal
    text = "I got the results"
    calm, energetic = reader.read(text, prosody=CALM), reader.read(text, prosody=ENERGETIC)
    assert energetic.intensity > calm.intensity + 0.2
    # an energetic voice favours excited/happy over sad/sleepy; a flat quiet one the reverse
    assert energetic.scores["excited"] > calm.scores["excited"]
    assert calm.scores["sleepy"] > energetic.scores["sleepy"]
    assert calm.scores["sad"] > energetic.scores["sad"]
    # clear words still win over the voice
    assert reader.read("I'm so sleepy", prosody=ENERGETIC).label == "sleepy"


def test_cue_shape(reader: EmotionReader) -> None:
    for text in ["", "ok", "I am so happy right now", "我现在超开心！", "What?!"]:
        cue = reader.read(text)
        assert cue.label in CUE_LABELS and cue.label != "listening"
        assert set(cue.scores) == set(CUE_LABELS)
        assert abs(sum(cue.scores.values()) - 1.0) < 1e-3
        assert 0.0 <= cue.intensity <= 1.0 and 0.0 <= cue.confidence <= 1.0
    assert reader.read("").label == "idle"
    assert reader.read("我现在超开心！").language == "zh"


def test_read_partial_decides_only_on_clear_words(reader: EmotionReader) -> None:
    assert reader.read_partial("I am so") is None
    assert reader.read_partial("I'm not") is None
    assert reader.read_partial("The meeting is") is None
    cue = reader.read_partial("I am so happy")
    assert cue is not None and cue.label == "happy"
    cue = reader.read_partial("我超开心")
    assert cue is not None and cue.label == "happy"
    assert reader.read_partial("I'm not happy") is None or reader.read_partial("I'm not happy").label == "sad"  # type: ignore[union-attr]


def test_latency_after_warmup(reader: EmotionReader) -> None:
    texts = [r["text"] for r in load_rows(DATA)][:60]
    times = []
    for t in texts:
        t0 = time.perf_counter()
        reader.read(t, prosody=ENERGETIC)
        times.append((time.perf_counter() - t0) * 1000)
    assert float(np.median(times)) < 30.0, f"median {np.median(times):.1f} ms, budget 30 ms"


def test_onnx_graph_matches_numpy_reference(reader: EmotionReader) -> None:
    assert reader.encoder is not None and reader.encoder.backend == "onnxruntime"
    ref = MiniLMEncoder.load(backend="numpy")
    texts = ["I am so happy right now", "This is terrible and I hate it", "What time is it?"]
    diff = np.abs(reader.encoder.encode(texts) - ref.encode(texts)).max()
    assert diff < 1e-4, f"onnxruntime vs numpy max abs diff {diff}"
    sims = reader.encoder.encode(["I am very happy", "I feel great joy", "The invoice is attached"])
    assert sims[0] @ sims[1] > sims[0] @ sims[2] + 0.2


def test_prototype_cache_round_trip(tmp_path: Path) -> None:
    first = EmotionReader.load(cache_dir=tmp_path)
    files = list(tmp_path.glob("emotion-prototypes-*.npz"))
    assert len(files) == 1
    second = EmotionReader.load(cache_dir=tmp_path)
    for k in PROTOTYPES:
        assert np.allclose(first._proto[k], second._proto[k])
    assert second.read("I am so happy").label == "happy"
