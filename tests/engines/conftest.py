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
