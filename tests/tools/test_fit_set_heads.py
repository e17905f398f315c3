"""tools/fit_set_heads.py: heads fitted on spent held-out sets join a reader's own, named apart from the e5 view they
read (realtime/emotion/classifier.py's head_views), with the real encoder, lexicon and reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatarcast.realtime.emotion.classifier import WEIGHTS_DIR, EmotionClassifier, Head, NgramHead
from avatarcast.realtime.emotion.cue import CUE_LABELS
from avatarcast.realtime.emotion.reader import EmotionReader
from tools.eval_emotion import CLEAN, held_out
from tools.fit_set_heads import main


@pytest.fixture(scope="module")
def with_d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped reader with heads fitted on set D (the smallest spent set: 20 lines a language) at weight 4."""
    out = tmp_path_factory.mktemp("set_heads")
    assert main(["--sets", "D", "--weight", "4", "--out", str(out), "--threads", "1"]) == 0
    return out


def test_the_heads_join_the_shipped_ones(with_d: Path) -> None:
    base = json.loads((WEIGHTS_DIR / "manifest.json").read_text(encoding="utf-8"))
    got = json.loads((with_d / "manifest.json").read_text(encoding="utf-8"))
    own = [k for k in base["features"]["heads"] if not k.endswith("_sets")]  # the shipped set heads are replaced
    assert got["features"]["heads"] == [*own, "query_sets", "passage_sets", "ngram_sets"]
    assert got["features"]["head_views"]["query_sets"] == "query" and got["head_weights"]["ngram_sets"] == 4.0
    assert got["set_heads"]["sets"] == "D" and got["set_heads"]["lines"] == len(held_out("D"))
    assert got["partial"] == base["partial"] and got["encoder"] == base["encoder"]  # only heads added
    assert (with_d / "layers.e5l").read_bytes() == (WEIGHTS_DIR / "layers.e5l").read_bytes()
    clf = EmotionClassifier.load(CUE_LABELS, with_d)
    assert clf.embedding_kinds == ("query", "passage")  # two heads a view: each view still encoded once
    sets = {h.kind: h for h in clf.heads if h.kind.endswith("_sets")}
    assert isinstance(sets["ngram_sets"], NgramHead) and isinstance(sets["passage_sets"], Head)
    assert sets["passage_sets"].reads == "passage"
    # the shipped reader's own heads' arrays are carried over unchanged; its set heads' are D's now
    with np.load(WEIGHTS_DIR / "classifier.npz") as a, np.load(with_d / "classifier.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files if "_sets_" not in k)
        assert not np.array_equal(a["query_sets_W"], b["query_sets_W"])


def test_the_reader_reads_with_them(with_d: Path) -> None:
    """The reader with the added heads reads set D's lines (which the heads were fitted on: they must read them
    nearly all right, where the shipped reader reads them as it does) and new lines in both languages."""
    rows = held_out("D")
    shipped, added = EmotionReader.load(), EmotionReader.load(weights=with_d)
    right = [added.read(r["text"], language=r["language"]).label == r["emotion"] for r in rows]
    before = [shipped.read(r["text"], language=r["language"]).label == r["emotion"] for r in rows]
    assert np.mean(right) >= 0.95 and np.mean(right) >= np.mean(before)
    for text in ("我现在超开心！", "Nobody came to my birthday party"):
        cue = added.read(text)
        assert cue.label in CUE_LABELS and abs(sum(cue.scores.values()) - 1.0) < 0.01


def test_it_refuses_the_clean_set_and_replaces_set_heads(with_d: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=f"set {CLEAN} is this round's clean set"):
        main(["--sets", f"D{CLEAN}", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no held-out sets"):
        main(["--sets", "DZ", "--out", str(tmp_path / "x")])
    # on a reader that has set heads (D's), fitting again replaces them: the same heads, the same files
    assert main(["--base", str(with_d), "--sets", "D", "--out", str(tmp_path / "again"), "--threads", "1"]) == 0
    with np.load(with_d / "classifier.npz") as a, np.load(tmp_path / "again" / "classifier.npz") as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    got = json.loads((tmp_path / "again" / "manifest.json").read_text(encoding="utf-8"))
    assert got["features"]["heads"].count("query_sets") == 1
