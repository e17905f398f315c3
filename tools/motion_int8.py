"""The motion decoder's part-mask network in int8, calibrated on the inputs the served engine gives it.

    python -m tools.motion_int8 FOLDER [--min-db 38]     # a folder written by tools.export_motion, in place
    python -m tools.export_motion ... --int8-decoder      # the same step at export

Why: convolutions are most of a served frame's time (58% on the 2-core machine, onnxruntime's profile of the
shipped decoder), and the part-mask U-Net (`/masks/...`, at a quarter resolution over 4 x 13 moved references) is
a third of them. Static int8 (QDQ: onnxruntime fuses each quantized pair into an integer convolution) of its
convolutions is about a fifth less time a frame there; everything else stays float32.

Which convolutions (each choice measured on the shipped decoder, int8 against float, held-out avatars; docs/
training/motion.md has the table):
- not the drawing network (`/g8 ... /out`): quantized, it leaves a faint haze where the float graph draws nothing
  (alpha 0.5% on average, 2% at the 99th percentile, over empty pixels inside the drawn box: a visible rectangle
  on a flat background) for little time, and `/out` alone costs 30 dB (its channels are colours in about [-1, 1]
  beside the copy mask's logit, tens, under one activation scale);
- not `/masks/out`: the part logits, whose softmax turns small steps into moved edges.
Weights are per output channel and 7-bit (`reduce_range`): on x86 without VNNI (AVX2, as here) onnxruntime sums
pairs of u8 x s8 products in 16 bits, which 8-bit weights can overflow.

Calibration: activation ranges from the decoder's own inputs as the served engine makes them (the folder's denoiser's
motions; built-in and training-range random avatars). The check, on avatars the calibration never saw
(`HELD_OUT`): PSNR against the float graph over the avatar's pixels (>= `--min-db`), and no haze: the pixels the
float graph leaves empty stay empty (99th percentile of their alpha under `MAX_HAZE`). Failing either, nothing is
written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from avatarcast.engines.tiny.motion_backends import OnnxMotionBackend
from avatarcast.engines.tiny.motion_engine import MotionEngine
from avatarcast.engines.tiny.motion_weights import GRAPHS, load_motion_manifest, write_motion_manifest
from tools.eval.fidelity_metrics import psnr_from_mse
from tools.export_tiny import fp16_initializers

INT8_PART = "/masks/"  # the part-mask U-Net's convolutions...
FLOAT_CONVS = ("/masks/out/Conv",)  # ...but its logits
MAX_HAZE = 0.002  # alpha (0..1) at the 99th percentile over the pixels the float graph leaves empty
# calibration: built-in avatars and random ones of the training range; the check: held-out random avatars
CALIBRATION = ((0, 5), (1, 6), (2, 5), ("random-11", 6), ("random-12", 5))
HELD_OUT = (("random-900001", 77), ("random-900002", 78), ("random-900003", 79))
EMOTIONS = ("happy", "excited", "sad", "angry", "laughing", "love", "confused", "sleepy", "surprised")


class _Recording(OnnxMotionBackend):
    """The folder's backend, keeping every decoder feed it runs."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.feeds: list[dict[str, np.ndarray]] = []

    def draw(self, ref, motions, ref_motion, box, cheaper=False):
        if not cheaper:  # the folder's own decoder: the one quantized
            self.feeds.append(self.decoder_feeds(ref, motions, ref_motion, box))
        return super().draw(ref, motions, ref_motion, box, cheaper)


def served_feeds(folder: Path, avatars, frames: int = 16, threads: int = 2) -> list[dict[str, np.ndarray]]:
    """The decoder's inputs while the folder's engine makes `frames` frames of each (avatar, seed)."""
    man = load_motion_manifest(folder)
    backend = _Recording(man, threads=threads)
    engine = MotionEngine(backend, man.mean, man.std, 2, man.weights_hash)
    for i, (avatar, seed) in enumerate(avatars):
        engine.generate_clip(avatar, EMOTIONS[i % len(EMOTIONS)], frames, seed=seed)
    return backend.feeds


def _unit(x: np.ndarray) -> np.ndarray:
    """A decoder output (premultiplied, about [-1, 1]) in [0, 1], as the engine clips it."""
    return (np.clip(x, -1, 1) + 1) / 2


def avatar_psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """PSNR of b against a over the pixels either draws (alpha > 0.02), frames premultiplied in [-1, 1]."""
    se = n = 0.0
    for x, y in zip(a, b):
        x, y = _unit(x), _unit(y)
        m = np.broadcast_to(np.maximum(x[:, 3:4], y[:, 3:4]) > 0.02, x.shape)
        e = (x - y)[m]
        se, n = se + float((e * e).sum()), n + e.size
    return psnr_from_mse(se / n if n else 0.0)


def empty_haze(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """b's alpha (0..1) at the 99th percentile over the pixels a leaves empty (alpha under 0.001)."""
    v = np.concatenate([_unit(y[:, 3])[_unit(x[:, 3]) < 1e-3] for x, y in zip(a, b)])
    return float(np.percentile(v, 99)) if v.size else 0.0


def _float32_graph(src: Path, dst: Path) -> None:
    """The graph with its fp16 weights' Casts folded (the quantizer reads float32 initializers)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folding only: standard ops
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def run_graph(path: Path, feeds: list[dict]) -> list[np.ndarray]:
    """The graph's output for each feed, loaded as the server loads it."""
    from avatarcast.engines.backends.onnxruntime_backend import load_session

    s = load_session(path, 2, ["CPUExecutionProvider"])
    return [s.run(None, f)[0] for f in feeds]


def default_int8(name: str) -> bool:
    return name.startswith(INT8_PART) and name not in FLOAT_CONVS


def quantize_convs(src: Path, dst: Path, calibration: list[dict], int8=default_int8) -> list[str]:
    """Static int8 of `src`'s convolutions for which `int8(name)` into `dst`; the names quantized."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "decoder_f32.onnx"
        _float32_graph(src, f32)
        convs = [n.name for n in onnx.load(str(f32)).graph.node if n.op_type == "Conv"]
        chosen = [c for c in convs if int8(c)]
        if not chosen or any(c not in convs for c in FLOAT_CONVS):
            raise ValueError(f"{src}: not the motion decoder's graph (no {INT8_PART} convolutions to quantize)")
        quantize_static(
            str(f32),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_quantize=chosen,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False},
        )
    # the float weights left (the folded fp16 ones) back to fp16 + Cast: lossless, and the file stays small
    model = onnx.load(str(dst))
    fp16_initializers(model)
    onnx.save(model, str(dst))
    return chosen


def quantize_folder(
    folder: Path, min_db: float = 38.0, frames: int = 16, calibration_clips=CALIBRATION, held_out=HELD_OUT
) -> dict:
    """The folder's decoder.onnx replaced by its int8 version, and its manifest rewritten; what was measured.
    Raises (writing nothing) when the int8 graph scores under `min_db` against the float one, or draws a haze
    where the float one draws nothing."""
    folder = Path(folder)
    man = load_motion_manifest(folder)
    if man.source.get("int8_decoder"):
        raise ValueError(f"{folder}: the decoder is int8 already")
    dec = folder / GRAPHS["decoder"]
    calibration = served_feeds(folder, calibration_clips, frames)
    held = served_feeds(folder, held_out, frames)
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "decoder_int8.onnx"
        quantized = quantize_convs(dec, q, calibration)
        want, got = run_graph(dec, held), run_graph(q, held)
        db, haze = avatar_psnr(want, got), empty_haze(want, got)
        if not db >= min_db:
            raise RuntimeError(
                f"the int8 decoder scores {db:.1f} dB against the float one (under {min_db}): not written"
            )
        if not haze < MAX_HAZE:
            raise RuntimeError(f"the int8 decoder draws a haze (alpha {haze:.4f}) where the float one draws nothing")
        shutil.copyfile(q, dec)
    report = {
        "psnr_vs_float_db": round(db, 2),
        "empty_alpha_p99": round(haze, 5),
        "held_out": [a for a, _ in held_out],
        "calibration_batches": len(calibration),
        "quantized_convs": len(quantized),
        "int8_convs": quantized,
    }
    source = {**man.source, "int8_decoder": report}
    write_motion_manifest(
        folder, man.decoder_shape, man.denoiser_arch, man.mean, man.std, source, man.graphs_from, man.cheaper_draw
    )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a folder written by tools.export_motion (rewritten in place)")
    ap.add_argument("--min-db", type=float, default=38.0, help="least PSNR of int8 against float on held-out avatars")
    ap.add_argument("--frames", type=int, default=16, help="frames per calibration and check clip")
    args = ap.parse_args(argv)
    print(json.dumps(quantize_folder(args.folder, args.min_db, args.frames), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
