"""The residual draw's cheaper decode: the shipped copy-only decoder, run from the residual engine's prepared avatars
(the degradation ladder's cheaper_decode rung; engines/tiny/motion_backends.py)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from avatarcast.engines.contract import CheaperDecode
from avatarcast.engines.tiny.motion_backends import OnnxMotionBackend
from avatarcast.engines.tiny.motion_engine import MotionEngine
from avatarcast.engines.tiny.motion_weights import GRAPHS, MANIFEST, SHIPPED, load_motion_manifest, motion_folder
from avatarcast.engines.tiny.weights import WeightsError


@pytest.fixture(scope="module")
def engines() -> tuple[MotionEngine, MotionEngine]:
    return MotionEngine.from_folder(None, threads=2, draw="residual"), MotionEngine.from_folder(None, threads=2)


def test_the_residual_engine_declares_the_copy_draw_and_the_copy_engine_nothing(engines) -> None:
    res, copy = engines
    assert load_motion_manifest(motion_folder(None, "residual")).cheaper_draw == "../motion"
    assert res.capabilities.cheaper_decode == CheaperDecode.COPY_DRAW
    assert copy.capabilities.cheaper_decode is None
    s = copy.start_stream("pip", "happy", seed=1)
    with pytest.raises(ValueError, match="no cheaper decode"):
        copy.decode_chunks([s], copy.sample_chunks([s]), cheaper=True)


def test_the_cheaper_decode_draws_what_the_copy_engine_draws(engines) -> None:
    """Both folders share the denoiser and the motion normalization, so the same seeds sample the same motions; the
    residual engine's cheaper decode then draws those frames as the copy engine does, and not as its own decoder."""
    res, copy = engines
    specs = [("pip", "happy", 3), ("bun", "surprised", 4)]
    rs = [res.start_stream(a, e, 0.9, seed) for a, e, seed in specs]
    cs = [copy.start_stream(a, e, 0.9, seed) for a, e, seed in specs]
    for _ in range(2):  # off the rest pose: a second chunk moves
        lat, lat_copy = res.sample_chunks(rs), copy.sample_chunks(cs)
    np.testing.assert_array_equal(lat, lat_copy)
    cheaper, want, full = (
        res.decode_chunks(rs, lat, cheaper=True),
        copy.decode_chunks(cs, lat),
        res.decode_chunks(rs, lat),
    )
    assert cheaper.shape == want.shape == (2, res.cfg.chunk_frames, 360, 640, 4)
    assert np.abs(cheaper.astype(np.int16) - want).max() <= 1  # float tolerance: one level of uint8
    assert np.abs(full.astype(np.int16) - want).max() > 8  # the residual's own draw is another picture
    # the copy-only decoder reads only what the residual engine's prepared avatar already holds: no second preparation
    held = res._avatar("pip").ref
    assert res.backend._inputs["cheaper"] - {"motion", "ref_motion", "centres"} <= set(held) - {"f2", "f4", "f8"}


def test_an_adopted_avatar_is_drawn_both_ways(engines) -> None:
    """realtime/prep.py's child prepares a client's avatar on its own copy of the residual engine and hands it over
    as arrays (prepared_avatar, pickled, adopt_avatar): the live engine keeps it without preparing it again, and its
    own decoder and the cheaper one both draw from it."""
    res, _ = engines
    other = MotionEngine.from_folder(None, threads=1, draw="residual")
    key, prepared = other.prepared_avatar("random-78")
    res.adopt_avatar(key, pickle.loads(pickle.dumps(prepared)))
    adopted = res._avatars[key]
    a, b = other.start_stream("random-78", "sad", seed=2), res.start_stream("random-78", "sad", seed=2)
    assert b.avatar_key == key and res._avatars[key] is adopted  # not prepared a second time
    lat = other.sample_chunks([a])
    np.testing.assert_array_equal(lat, res.sample_chunks([b]))
    full = other.decode_chunks([a], lat)
    assert np.abs(full.astype(np.int16) - res.decode_chunks([b], lat)).max() <= 1
    assert res.decode_chunks([b], lat, cheaper=True).shape == full.shape


def _folder(path: Path, body: dict, graphs_from: dict[str, Path], **extra) -> Path:
    path.mkdir(parents=True)
    rel = {g: os.path.relpath(d.resolve(), path.resolve()) for g, d in graphs_from.items()}
    (path / MANIFEST).write_text(json.dumps({**body, "graphs_from": rel, **extra}))
    return path


def test_a_cheaper_folder_must_draw_the_same_motions(tmp_path) -> None:
    """A cheaper_draw folder with another motion normalization (or denoiser, window, atlas) would draw other poses
    than the stream's: refused at load. One that holds the same is taken."""
    residual = motion_folder(None, "residual")
    res_body, copy_body = (json.loads((d / MANIFEST).read_text()) for d in (residual, SHIPPED))
    for k in ("graphs_from", "cheaper_draw"):
        res_body.pop(k)
    every = {g: SHIPPED for g in GRAPHS}
    own = {**every, "decoder": residual, "reference": residual}  # the residual folder's graphs, the copy's denoiser
    _folder(tmp_path / "good", copy_body, every)
    man = load_motion_manifest(_folder(tmp_path / "a", res_body, own, cheaper_draw="../good"))
    assert OnnxMotionBackend(man, threads=1).cheaper_draw
    shifted = {**copy_body, "std": [v * 2 for v in copy_body["std"]]}
    _folder(tmp_path / "shifted", shifted, every)
    man = load_motion_manifest(_folder(tmp_path / "b", res_body, own, cheaper_draw="../shifted"))
    with pytest.raises(WeightsError, match="another motion normalization"):
        OnnxMotionBackend(man, threads=1)
    # a decoder that reads reference features cannot draw from another folder's reference
    man = load_motion_manifest(
        _folder(
            tmp_path / "c",
            res_body,
            own,
            cheaper_draw=os.path.relpath(residual, tmp_path / "c"),
        )
    )
    with pytest.raises(WeightsError, match="only a copy-only decoder"):
        OnnxMotionBackend(man, threads=1)
