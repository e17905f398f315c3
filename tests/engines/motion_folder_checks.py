"""Checks shared by the tests that export a motion decoder of a new shape (tests/engines/test_motion_onnx.py,
test_motion_quarter_tail.py): the folder served on onnxruntime, and read back into torch, draws what torch draws."""

from __future__ import annotations

import numpy as np

CASES = (("luna", "happy", 3), ("random-900008", "love", 5))  # a built-in avatar and a parametric one


def assert_served_as_torch_draws(folder, decoder, denoiser) -> None:
    """`folder` (an exported motion folder of `decoder` and `denoiser`) on onnxruntime and read back into torch
    draws the torch networks' frames, within the export's rounding (2 levels, on under 1e-4 of the values)."""
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from avatarcast.engines.tiny.motion_torch import TorchMotionBackend

    served = MotionEngine.from_folder(folder, threads=2)
    read_back = MotionEngine.from_folder(folder, threads=2, backend="torch", device="cpu")
    ref = MotionEngine(TorchMotionBackend(decoder, denoiser), served.mean, served.std)
    for av, emotion, seed in CASES:
        a, b, c = (e.start_stream(av, emotion, seed=seed) for e in (served, ref, read_back))
        motion = served.sample_chunks([a])
        fa, fb = served.decode_chunks([a], motion)[0], ref.decode_chunks([b], motion)[0]
        fc = read_back.decode_chunks([c], motion)[0]
        for other in (fb, fc):
            d = np.abs(fa.astype(np.int16) - other.astype(np.int16))
            assert d.max() <= 2 and (d > 1).mean() < 1e-4, (av, int(d.max()))
        assert (fa[..., 3] > 127).mean() > 0.02
