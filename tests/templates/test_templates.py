"""Emotion templates and the latents cache, with the shipped tiny engine and a temporary cache dir."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading

import numpy as np
import pytest

from avatarcast.engines.tiny.engine import TinyEngine
from avatarcast.templates import DEFAULT_PATH, load_templates, template_hash
from avatarcast.templates.cache import LatentsCache, reaction_key, variant_seed


@pytest.fixture(scope="module")
def engine():
    return TinyEngine.load(backend="onnxruntime", steps=1)


@pytest.fixture(scope="module")
def templates():
    return load_templates()


@pytest.fixture
def sample_calls(engine, monkeypatch):
    """Counts sampler runs (batch sizes) through a wrapper around the real sample_chunks."""
    calls: list[int] = []
    real = engine.sample_chunks

    def counting(states):
        calls.append(len(states))
        return real(states)

    monkeypatch.setattr(engine, "sample_chunks", counting)
    return calls


def alpha(frame: np.ndarray) -> np.ndarray:
    return frame[..., 3].astype(np.float32) / 255.0


# --- templates -------------------------------------------------------------------------------


def test_shipped_templates_cover_every_engine_emotion(engine, templates):
    assert tuple(templates) == engine.emotions
    for t in templates.values():
        lo, hi = t.intensity_range
        assert 0.0 <= lo <= t.default_intensity <= hi <= 1.0
        assert t.prompt and t.motion and t.keywords_en and t.keywords_zh and t.variants >= 1
    assert len({template_hash(t) for t in templates.values()}) == len(templates)


def _shipped_doc() -> dict:
    return json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("prompt", "", "prompt must be a non-empty string"),
        ("intensity_range", [0.9, 0.2], "intensity_range must have lo <= hi"),
        ("intensity_range", [0.0, 1.5], "intensity_range must be a number"),
        ("default_intensity", 0.1, "default_intensity must be a number in \\[0.4, 1.0\\]"),
        ("variants", 0, "variants must be an integer"),
        ("keywords_zh", [], "keywords_zh must be a non-empty list"),
        ("hold_seconds", -1, "hold_seconds must be a number"),
        ("name", "Happy Face", "name must be a lowercase identifier"),
        ("colour", "red", "unknown field\\(s\\) colour"),
    ],
)
def test_invalid_template_names_the_bad_field(tmp_path, field, value, message):
    doc = _shipped_doc()
    doc["emotions"][2][field] = value  # happy
    p = tmp_path / "t.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        load_templates(p)


def test_missing_field_duplicate_name_and_bad_json_are_rejected(tmp_path):
    p = tmp_path / "t.json"
    doc = _shipped_doc()
    del doc["emotions"][3]["motion"]
    p.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"emotions\[3\] \('excited'\): missing field\(s\) motion"):
        load_templates(p)
    doc = _shipped_doc()
    doc["emotions"][4]["name"] = "happy"
    p.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="duplicate name 'happy'"):
        load_templates(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_templates(p)


def test_template_hash_follows_what_shapes_the_reaction(templates):
    t = templates["happy"]
    assert template_hash(dataclasses.replace(t, prompt=t.prompt + " ")) != template_hash(t)
    assert template_hash(dataclasses.replace(t, default_intensity=0.5)) != template_hash(t)
    # how many variants to cache and how long to hold are playback settings, not content
    assert template_hash(dataclasses.replace(t, variants=5, hold_seconds=9.0)) == template_hash(t)
    assert template_hash(dataclasses.replace(t, keywords_en=("glad",), keywords_zh=("开心",))) == template_hash(t)


# --- keys ------------------------------------------------------------------------------------


def test_key_changes_with_every_component(engine, templates, tmp_path):
    cache = LatentsCache(engine, templates, tmp_path)
    base = cache.key(0, "happy", 0)
    assert cache.key("pip", "happy", 0) == base  # same avatar, by name
    others = {
        "avatar": cache.key(1, "happy", 0),
        "variant": cache.key(0, "happy", 1),
        "emotion": cache.key(0, "sad", 0),
    }
    edited = dict(templates, happy=dataclasses.replace(templates["happy"], prompt="A cartoon character grins."))
    others["template"] = LatentsCache(engine, edited, tmp_path).key(0, "happy", 0)
    steps = engine.steps
    try:
        engine.steps = steps + 1
        others["steps"] = cache.key(0, "happy", 0)
    finally:
        engine.steps = steps

    class OtherWeights:  # the same engine, as if its weights were retrained
        weights_hash = "0" * 16

        def __getattr__(self, name):
            return getattr(engine, name)

    others["weights"] = LatentsCache(OtherWeights(), templates, tmp_path).key(0, "happy", 0)
    assert base not in others.values(), others
    assert len(set(others.values())) == len(others)
    args = ("w", "t", "a", 2, 7)
    assert reaction_key(*args) != reaction_key(*args, fmt=999)
    assert variant_seed("happy", 0) != variant_seed("sad", 0) != variant_seed("sad", 1)


# --- cache -----------------------------------------------------------------------------------


def test_precompute_batches_then_a_new_cache_loads_without_sampling(engine, templates, tmp_path, sample_calls):
    keys = {"avatars": [0, 1], "emotions": ["happy", "sad"], "variants": 1}
    first = LatentsCache(engine, templates, tmp_path)
    stats = first.precompute(**keys, batch=3)
    assert (stats["entries"], stats["computed"], stats["loaded"]) == (4, 4, 0), stats
    assert sample_calls == [3, 1], "expected one sampler run per batch of 3"
    assert len(list(tmp_path.glob("*.npz"))) == 4
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"
    assert first.precompute(**keys)["in_memory"] == 4

    sample_calls.clear()
    second = LatentsCache(engine, templates, tmp_path)  # as after a restart, or in another replica
    stats = second.precompute(**keys)
    assert (stats["computed"], stats["loaded"]) == (0, 4), stats
    assert sample_calls == []
    a, b = first.get(1, "sad"), second.get(1, "sad")
    assert a.key == b.key
    np.testing.assert_array_equal(a.latents, b.latents)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.ctx, b.ctx)

    # any change of what shapes the entry misses: here, the sampler's step count
    steps = engine.steps
    try:
        engine.steps = steps + 1
        stats = LatentsCache(engine, templates, tmp_path).precompute(avatars=[0], emotions=["happy"], variants=1)
    finally:
        engine.steps = steps
    assert (stats["computed"], stats["loaded"]) == (1, 0), stats


def test_cached_frames_are_the_decoded_cached_latents(engine, templates, tmp_path):
    entry = LatentsCache(engine, templates, tmp_path).get(2, "surprised", 0)
    cfg = engine.cfg
    T, C, K = cfg.chunk_frames, cfg.latent_channels, cfg.context_frames
    assert entry.latents.dtype == np.float16 and entry.latents.shape == (T, C, *cfg.latent_hw)
    assert entry.frames.dtype == np.uint8 and entry.frames.shape == (T, 360, 640, 4)
    np.testing.assert_array_equal(engine.decode(entry.latents.astype(np.float32)), entry.frames)
    # the context is the last K latent frames (kept at full precision for the sampler)
    last = entry.latents[T - K :].astype(np.float32).reshape(K * C, *cfg.latent_hw)
    np.testing.assert_allclose(entry.ctx, last, rtol=2e-3, atol=2e-3)


def test_start_from_cache_continues_the_reaction_without_a_seam(engine, templates, tmp_path):
    cache = LatentsCache(engine, templates, tmp_path)
    t = templates["happy"]
    frames, state = cache.start_from_cache(0, "happy", 0, seed=7)
    cont = engine.next_chunk([state])[0]
    assert state.frames_done == 2 * len(frames)

    # same frames as an uncached stream that sampled the first chunk itself
    ref = engine.start_stream(0, "happy", t.default_intensity, variant_seed("happy", 0))
    engine.sample_chunks([ref])
    ref.rng = np.random.default_rng(7)
    expected = engine.next_chunk([ref])[0]
    diff = np.abs(cont.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 2, f"expected the uncached continuation within 2 levels, got max {diff.max()}"

    # the seam (last cached -> first continued frame) moves like any step inside a chunk, while
    # restarting from rest would jump (measured, 1 step: seam 0.017, within 0.022, from rest 0.037)
    within = np.mean([np.abs(alpha(c[i + 1]) - alpha(c[i])).mean() for c in (frames, cont) for i in range(len(c) - 1)])
    seam = np.abs(alpha(cont[0]) - alpha(frames[-1])).mean()
    rest = engine.next_chunk([engine.start_stream(0, "happy", t.default_intensity, 7)])[0]
    jump = np.abs(alpha(rest[0]) - alpha(frames[-1])).mean()
    assert seam <= 1.5 * within + 0.005, f"seam {seam:.4f} > 1.5 x within-chunk step {within:.4f} + 0.005"
    assert seam < jump, f"seam {seam:.4f} should be smaller than restarting from rest ({jump:.4f})"


def test_corrupt_or_partial_file_is_a_miss_and_is_rewritten(engine, templates, tmp_path, sample_calls, caplog):
    good = LatentsCache(engine, templates, tmp_path).get(3, "angry", 0)
    path = tmp_path / f"{good.key}.npz"

    def flip_middle(b: bytes) -> bytes:  # bit rot inside the compressed frames
        m = len(b) // 2
        return b[:m] + bytes(x ^ 0xFF for x in b[m : m + 64]) + b[m + 64 :]

    for damage in (lambda b: b[: len(b) // 2], lambda b: b"garbage" * 10, flip_middle):
        path.write_bytes(damage(path.read_bytes()))
        sample_calls.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="avatarcast.templates.cache"):
            entry = LatentsCache(engine, templates, tmp_path).get(3, "angry", 0)
        assert sample_calls == [1], "a damaged entry should be recomputed once"
        assert "ignoring unreadable entry" in caplog.text
        np.testing.assert_array_equal(entry.frames, good.frames)
        sample_calls.clear()
        LatentsCache(engine, templates, tmp_path).get(3, "angry", 0)
        assert sample_calls == [], "the recomputed entry should have been written back"


def test_concurrent_gets_compute_once(engine, templates, tmp_path, sample_calls):
    cache = LatentsCache(engine, templates, tmp_path)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(4, "love", 1))) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sample_calls == [1]
    assert len({id(e) for e in got}) == 1


def test_unknown_emotion_is_a_clear_error(engine, templates, tmp_path):
    with pytest.raises(ValueError, match="no template for emotion 'bored'"):
        LatentsCache(engine, templates, tmp_path).get(0, "bored")


def test_precompute_cli_prints_stats(tmp_path, capsys):
    from avatarcast.realtime.precompute import main

    argv = [
        "--avatars",
        "luna",
        "--emotions",
        "happy",
        "--variants",
        "1",
        "--cache-dir",
        str(tmp_path),
        "--steps",
        "1",
        "--json",
    ]
    assert main(argv) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["computed"], stats["loaded"], stats["steps"]) == (1, 0, 1), stats
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["loaded"] == 1
