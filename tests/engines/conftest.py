"""Fixtures shared by the engine test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.engines.wan_checkpoint import WAN_SHAPE


@pytest.fixture(scope="session")
def wan_exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict, Path]:
    """The tiny random Wan checkpoint at WAN_SHAPE and both its graphs exported to ONNX (engines/wan/export.py
    export_all): (checkpoint, the engine they were exported from, export_all's record, the export folder).
    test_wan_export.py checks the graphs against torch, test_wan_runtime.py serves them; exported once for both
    (the export is most of either module's time; the VAE has one residual block a stage, as the graphs' equality
    with torch does not depend on a second). Read only: a test that changes a folder copies it first."""
    pytest.importorskip("diffusers")
    from avatarcast.engines.wan.engine import WanEngine
    from avatarcast.engines.wan.export import export_all
    from tests.engines.wan_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("wan_export")
    ckpt = make_checkpoint(root / "ckpt", vae_res_blocks=0)  # one residual block a stage: a smaller graph to export
    eng = WanEngine.load(ckpt, **WAN_SHAPE)
    return ckpt, eng, export_all(eng, root / "onnx"), root / "onnx"


@pytest.fixture
def served_feeds_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """tools.motion_int8.served_feeds kept by the folder's bytes for one test: the int8 decoder test asks it for the
    same float folder's feeds six times (quantize_folder's calibration and held-out feeds in its refused call and in
    its real one, then its own comparison on a byte-for-byte copy of that folder), ~1.5 s each on 2 cores. The feeds
    are a pure function of the folder's files, the clips, frames and threads: each distinct one is still made by the
    real function (its engine on onnxruntime), then handed out again read-only (the quantizer and the graphs only
    read them). A folder whose graphs live elsewhere (graphs_from, cheaper_draw) is not kept."""
    import hashlib

    from avatarcast.engines.tiny.motion_weights import load_motion_manifest
    from tests.conftest import _kept
    from tools import motion_int8

    def key(folder: Path, avatars: Any, frames: int, threads: int) -> tuple:
        h = hashlib.sha256()
        for f in sorted(p for p in Path(folder).iterdir() if p.is_file()):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        return h.hexdigest(), tuple(avatars), frames, threads

    def read_only(feeds: list) -> None:
        for feed in feeds:
            for a in feed.values():
                a.flags.writeable = False

    draw = motion_int8.served_feeds
    kept = _kept(draw, 8, key, read_only)

    def served_feeds(folder: Path, avatars: Any, frames: int = 16, threads: int = 2) -> list:
        man = load_motion_manifest(folder)
        if man.graphs_from or man.cheaper_draw:
            return draw(folder, avatars, frames, threads)
        return kept(folder, avatars, frames, threads)

    monkeypatch.setattr(motion_int8, "served_feeds", served_feeds)
