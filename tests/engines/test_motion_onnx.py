"""Architecture 3 served from exported graphs: onnxruntime draws what torch draws, without torch, behind the server.

The folder is exported here from a fresh decoder of the shipped folder's shape (default channels, the 11-face atlas:
at its start it copies the moved reference, so it draws the avatar) and a small random denoiser, so the graphs are
the shapes a trained folder has. The shipped folder itself is checked at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avatarcast.engines.avatar_world.skeleton import MOTION_DIM  # noqa: E402
from avatarcast.engines.tiny.config import TinyConfig  # noqa: E402
from avatarcast.engines.tiny.motion_weights import (  # noqa: E402
    GRAPHS,
    MANIFEST,
    SHIPPED,
    frames_hash,
    load_motion_manifest,
)
from avatarcast.engines.tiny.weights import WeightsError  # noqa: E402
from tests.engines.motion_folder_checks import CASES, assert_served_as_torch_draws  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _modules():
    from avatarcast.engines.tiny.motion import MotionDecoder, shape_from_dict
    from avatarcast.engines.tiny.motion_denoiser import build_denoiser

    torch.manual_seed(0)
    dec = MotionDecoder(shape_from_dict(load_motion_manifest(SHIPPED).decoder_shape))
    den = build_denoiser({"width": 96, "blocks": 2})
    with torch.no_grad():
        torch.nn.init.normal_(den.out.weight, std=0.05)  # a denoiser that moves the avatar
    return dec, den


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from tools.export_motion import export

    dec, den = _modules()
    out = tmp_path_factory.mktemp("motion_folder")
    mean = np.zeros(MOTION_DIM, np.float32)
    std = np.full(MOTION_DIM, 0.02, np.float32)  # the random denoiser's moves stay small in raw motion
    export(dec, den, mean, std, out, {"test": True})
    return out


def test_the_numpy_window_is_the_torch_one():
    """The engine's numpy window (frames in, RGBA out, a box's pixel centres) is model.py's and motion.py's."""
    from avatarcast.engines.tiny.model import frames_to_tensor, tensor_to_rgba
    from avatarcast.engines.tiny.motion import pixel_centres as torch_centres
    from avatarcast.engines.tiny.window import frames_to_window, pixel_centres, window_to_rgba

    cfg = TinyConfig()
    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (2, 360, 640, 4), dtype=np.uint8)
    f[..., 3][f[..., 3] < 60] = 0
    np.testing.assert_array_equal(frames_to_window(f, cfg), frames_to_tensor(torch.from_numpy(f), cfg).numpy())
    x = rng.random((2, 4, 40, 56), dtype=np.float32) * 2.2 - 1.1
    np.testing.assert_array_equal(window_to_rgba(x), tensor_to_rgba(torch.from_numpy(x)).numpy())
    want = torch_centres(40, 56, torch.zeros(1), (384, 448), (32, 96)).numpy()
    np.testing.assert_array_equal(pixel_centres(40, 56, (384, 448), (32, 96)), want)


def test_the_exported_engine_draws_what_torch_draws(folder):
    """Same weights (rounded to fp16 as exported), same streams: the onnxruntime engine's frames are the torch
    engine's to within one level, for boxes of other sizes and places than the traced one."""
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from avatarcast.engines.tiny.motion_torch import TorchMotionBackend
    from tools.export_tiny import round_module_to_fp16

    served = MotionEngine.from_folder(folder, threads=2)
    dec, den = _modules()
    man = load_motion_manifest(folder)
    ref = MotionEngine(TorchMotionBackend(round_module_to_fp16(dec), round_module_to_fp16(den)), man.mean, man.std)
    boxes = set()
    for av, emotion, seed in CASES:
        a, b = served.start_stream(av, emotion, seed=seed), ref.start_stream(av, emotion, seed=seed)
        for _ in range(2):
            la, lb = served.sample_chunks([a]), ref.sample_chunks([b])
            np.testing.assert_allclose(la, lb, atol=2e-3)
            fa, fb = served.decode_chunks([a], la)[0], ref.decode_chunks([b], la)[0]
            boxes.add(served.draw_box(la[0, :, :, 0, 0] * served.std + served.mean))
            d = np.abs(fa.astype(np.int16) - fb.astype(np.int16))
            assert d.max() <= 2 and (d > 1).mean() < 1e-4, (av, int(d.max()), float((d > 1).mean()))
            assert (fa[..., 3] > 127).mean() > 0.02  # an avatar is drawn
    assert len({(h, w) for _, _, h, w in boxes}) > 1, boxes  # the decoder's box size is dynamic


def test_an_exported_float_folder_reads_back_into_torch(folder):
    """The graphs' weights read back into torch (engines/tiny/motion_graph_weights.py; fp16 weights, no int8) draw
    what onnxruntime draws within two levels, and the fp16 denoiser gives its velocity."""
    from avatarcast.engines.tiny.motion_engine import MotionEngine

    served = MotionEngine.from_folder(folder, threads=2)
    on_torch = MotionEngine.from_folder(folder, threads=2, backend="torch", device="cpu")
    av, emotion, seed = CASES[0]
    a, b = served.start_stream(av, emotion, seed=seed), on_torch.start_stream(av, emotion, seed=seed)
    la, lb = served.sample_chunks([a]), on_torch.sample_chunks([b])
    np.testing.assert_allclose(la, lb, atol=1e-4)
    m = (la[0, :1, :, 0, 0] * served.std + served.mean).astype(np.float32)
    box = served.draw_box(m)
    ra, rb = served._avatar(av), on_torch._avatar(av)
    want = served.backend.draw(ra.ref, m, ra.ref_motion, box)
    got = on_torch.backend.draw(rb.ref, m, rb.ref_motion, box)
    assert np.abs(want - got).max() <= 2 * 2 / 255 and (want[:, 3] > 0).mean() > 0.05


def test_serving_from_a_folder_keeps_torch_out(folder):
    """The CPU serving path is onnxruntime and numpy: drawing a chunk from the folder imports no torch."""
    code = (
        "import sys\n"
        "from avatarcast.engines.tiny.motion_engine import MotionEngine\n"
        f"e = MotionEngine.from_folder({str(folder)!r}, threads=1)\n"
        "s = e.start_stream('pip', 'excited', seed=1)\n"
        "f = e.next_chunk([s])[0]\n"
        "assert f.shape == (4, 360, 640, 4), f.shape\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_a_damaged_or_foreign_folder_is_refused(folder, tmp_path):
    import shutil

    from avatarcast.engines.tiny.motion_engine import MotionEngine

    with pytest.raises(WeightsError, match="not a motion engine folder"):
        MotionEngine.from_folder(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    with open(bad / GRAPHS["decoder"], "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsError, match="does not match the sha256"):
        MotionEngine.from_folder(bad)
    (bad / GRAPHS["decoder"]).unlink()
    with pytest.raises(WeightsError, match="is missing"):
        MotionEngine.from_folder(bad)
    body = json.loads((folder / MANIFEST).read_text())
    body["emotions"] = list(reversed(body["emotions"]))
    (bad / MANIFEST).write_text(json.dumps(body))
    with pytest.raises(WeightsError, match="exported for the emotions"):
        load_motion_manifest(bad)


def test_settings_take_the_shipped_folder_or_ask_for_one_and_the_cpu(tmp_path, monkeypatch):
    from avatarcast.engines.tiny import motion_weights
    from avatarcast.realtime.settings import Settings, SettingValueError

    Settings(engine="motion").validate()  # the shipped folder
    monkeypatch.setattr(motion_weights, "SHIPPED", tmp_path / "none")
    with pytest.raises(SettingValueError, match="give --weights DIR"):
        Settings(engine="motion").validate()
    Settings(engine="motion", weights="/x").validate()  # a folder given: read at start-up
    Settings(engine="motion", weights="/x", backend="torch").validate()  # its graphs read into torch
    with pytest.raises(SettingValueError, match="onnxruntime on the CPU or on torch"):
        Settings(engine="motion", weights="/x", backend="tensorrt").validate()
    with pytest.raises(SettingValueError, match="engine must be one of tiny, wan, motion"):
        Settings(engine="motionless").validate()


def test_the_server_streams_the_motion_engine(folder):
    """`serve --engine motion --weights DIR [--motion-draw cutout]`: the session streams 8 fps frames of the avatar
    and reacts, drawn by the folder's decoder, or (the CPU's default draw) by the cut-out draw from its motions."""
    for draw in ("copy", "cutout"):
        _streams(folder, draw)


def _streams(folder, draw: str) -> None:
    import websockets

    from tests.conftest import WsRecorder, running_server

    with running_server(engine="motion", weights=str(folder), avatars="pip", threads=2, motion_draw=draw) as (
        base,
        hub,
    ):

        async def go() -> WsRecorder:
            url = base.replace("http://", "ws://") + "/v1/ws?avatar=pip"
            async with websockets.connect(url) as ws:
                c = WsRecorder(ws)

                async def pump(seconds: float, until=None) -> None:
                    end = asyncio.get_running_loop().time() + seconds
                    while (left := end - asyncio.get_running_loop().time()) > 0:
                        try:
                            c.take(await asyncio.wait_for(ws.recv(), left))
                        except TimeoutError:
                            return
                        if until is not None and until():
                            return

                await pump(2.0)
                await ws.send(json.dumps({"type": "say", "text": "I am so happy right now!"}))
                await pump(20.0, until=lambda: any(h.source == "sampler" for _, h, _ in c.frames))
                return c

        c = asyncio.run(go())
        live = hub.services.engine
        folder_hash = load_motion_manifest(folder).weights_hash
        assert live.weights_hash == frames_hash(folder_hash, draw)
        assert live.backend.draws_layers == (draw == "cutout")
        # clients' new avatars are prepared in a process of its own (realtime/prep.py), handed to the live engine
        assert hub.prep is not None and hub.prep.pid not in (None, os.getpid())
    hello = next(e["payload"] for e in c.events if e["type"] == "hello")
    assert hello["fps"] == 8
    heads = [h for _, h, _ in c.frames]
    assert len(heads) >= 12 and [h.index for h in heads] == sorted({h.index for h in heads})
    assert ("sampler", "happy") in [(h.source, h.emotion) for h in heads]
    assert not [e for e in c.events if e["type"] == "error"]


def test_an_avatar_prepared_by_another_engine_is_the_live_ones(folder):
    """realtime/prep.py's child prepares an avatar on its own copy of the engine and hands it over as plain arrays
    (prepared_avatar, pickled, adopt_avatar): the live engine then holds it (the same object, no second
    preparation), and both draw the same frames."""
    import pickle

    from avatarcast.engines.tiny.motion_engine import MotionEngine

    live = MotionEngine.from_folder(folder, threads=2)
    assert live.capabilities.shared_prep
    other = MotionEngine.from_folder(folder, threads=1)
    key, prepared = other.prepared_avatar("random-77")
    live.adopt_avatar(key, pickle.loads(pickle.dumps(prepared)))
    adopted = live._avatars[key]
    a, b = other.start_stream("random-77", "happy", seed=1), live.start_stream("random-77", "happy", seed=1)
    assert b.avatar_key == key and live._avatars[key] is adopted and len(live._avatars) == 1
    motion = other.sample_chunks([a])
    np.testing.assert_array_equal(motion, live.sample_chunks([b]))
    fa, fb = other.decode_chunks([a], motion), live.decode_chunks([b], motion)
    assert np.abs(fa.astype(int) - fb.astype(int)).max() <= 1  # one thread or two: the same graphs


def test_bench_engine_measures_the_motion_engine(folder):
    """`avatarcast bench engine --engine motion --weights DIR` (the README's speed figures for architecture 3)."""
    from avatarcast.realtime.bench.engine import run_bench

    r = run_bench("motion", sessions=2, seconds=0.5, threads=2, weights=str(folder), warmup=0, min_chunks=1)
    assert r["engine"] == "motion" and r["frames"] >= 8 and r["fps"] > 0 and r["decode_ms_per_frame"] > 0
    # the draw `avatarcast serve` runs on the CPU: the folder's motions, cut out
    assert r["weights_hash"] == frames_hash(load_motion_manifest(folder).weights_hash, "cutout")
    copy = run_bench(
        "motion", sessions=1, seconds=0.2, threads=2, weights=str(folder), warmup=0, min_chunks=1,
        backend_options={"draw": "copy"},
    )  # fmt: skip
    assert copy["weights_hash"] == frames_hash(load_motion_manifest(folder).weights_hash, "copy")
    from avatarcast.engines.backends import BackendError

    with pytest.raises(BackendError, match=r"onnxruntime \(the CPU\) or torch"):
        run_bench("motion", seconds=0.1, backend="tensorrt")


def test_the_clip_eval_runs_the_exported_engine(folder):
    """`avatarcast eval --engine motion --weights DIR` scores architecture 3 as served (emotion, identity)."""
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from tools.eval.evaluate import load_engine

    e = load_engine("motion", threads=2, weights=str(folder), draw="copy")
    assert isinstance(e, MotionEngine)
    assert e.weights_hash == frames_hash(load_motion_manifest(folder).weights_hash, "copy")
    clip = e.generate_clip("bun", "sad", 4, seed=2)
    assert clip.shape == (4, 360, 640, 4) and (clip[..., 3] > 127).mean() > 0.02
    # by default the CPU's default draw, the cut-out draw, of the shipped folder's motions
    shipped = load_motion_manifest(SHIPPED).weights_hash
    assert load_engine("motion", threads=1).weights_hash == frames_hash(shipped, "cutout")


def test_prepared_avatars_are_bounded_and_come_back(folder):
    """Each prepared avatar holds ~55 MB and random avatars are endless: the engine keeps MAX_AVATARS, least
    recently used out, and a stream whose avatar was pushed out is drawn again after preparing it anew. The server's
    engine keeps as many as its avatar slots and preparations (--max-avatars bounds this memory too)."""
    from avatarcast.engines.tiny import motion_engine

    e = motion_engine.MotionEngine.from_folder(folder, threads=2, max_avatars=2)
    first = e.start_stream("random-3", "happy", seed=1)
    want = e.next_chunk([first.copy()])[0]
    for name in ("random-4", "random-5"):
        e.start_stream(name, "sad")
    assert len(e._avatars) == 2 and first.avatar_key not in e._avatars
    got = e.next_chunk([first])[0]
    np.testing.assert_array_equal(got, want)  # the same stream, the same frames, from the avatar prepared again
    assert len(e._avatars) == 2 and first.avatar_key in e._avatars


def test_the_servers_motion_engine_keeps_as_many_avatars_as_its_slots():
    from avatarcast.realtime.engine_loader import load_engine as load_server_engine
    from avatarcast.realtime.settings import Settings

    e = load_server_engine(Settings(engine="motion", max_avatars=3, max_preparing_avatars=1, threads=1))
    assert e.max_avatars == 4


def test_the_shipped_folder_is_whole_and_draws_the_avatar():
    """The folder `--engine motion` serves by default: every graph matches its sha256, the manifest says which
    checkpoints it came from, and it draws a held-out frame of a built-in avatar from the frame's true motion
    close to the renderer's (trained weights, not random ones: those score under 10 dB)."""
    from avatarcast.engines.avatar_world.render import landmarks
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from tools.eval import holdout
    from tools.eval.fidelity import frame_scores, pose_at, render_frame, sample_variation

    man = load_motion_manifest(SHIPPED)
    for g in GRAPHS:
        man.graph(g, verify=True)
    assert set(man.source) >= {"decoder", "denoiser"}
    if "copy_only" in man.source:  # exported without its generator: only where its copy mask was checked to be 1
        from tools.motion_copy import COPY_LOGIT_MIN

        assert man.source["copy_only"]["copy_logit_min"] >= COPY_LOGIT_MIN and man.source["copy_only"]["frames"] >= 100
    e = MotionEngine.from_folder(None, threads=2)
    s = holdout.reconstruction_frames(holdout.eval_avatars(1, 0), 2)[1]
    q = pose_at(s.emotion, s.time, sample_variation(s.seed), s.intensity)
    ref = render_frame(s.avatar, q)
    got = e.draw(s.avatar, e.motion(s.avatar, q)[None])[0]
    scores = frame_scores(ref, got, landmarks(s.avatar, q).head)
    assert scores["avatar_psnr_db"] > 19.0 and scores["alpha_iou"] > 0.95, scores


def test_an_int8_denoiser_is_a_quarter_of_the_bytes_and_moves_little(tmp_path):
    """`tools.export_motion --int8-denoiser` (how the shipped folder was written): the denoiser's weight matrices
    as int8 with a scale per row. Its file is about a quarter of float32's; its velocity moves by under 2% of its
    spread at export; a stream's motion stays within a small fraction of a pixel of float32's over two chunks."""
    from avatarcast.engines.tiny.motion_denoiser import build_denoiser
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from tools.export_motion import export

    dec, _ = _modules()
    torch.manual_seed(1)
    den = build_denoiser({"width": 256, "blocks": 2})
    with torch.no_grad():
        torch.nn.init.normal_(den.out.weight, std=0.05)
    mean, std = np.zeros(MOTION_DIM, np.float32), np.full(MOTION_DIM, 0.02, np.float32)
    f32 = export(dec, den, mean, std, tmp_path / "f32", {"test": True}, fp16=False)
    q8 = export(dec, den, mean, std, tmp_path / "q8", {"test": True}, fp16=False, int8_denoiser=True)
    size = [(m.path / GRAPHS["denoiser"]).stat().st_size for m in (f32, q8)]
    assert size[1] < 0.3 * size[0], size
    assert q8.source["int8_denoiser"] and q8.source["onnx_vs_torch_max_abs"]["denoiser_int8_relative_rms"] < 0.02
    a, b = MotionEngine.from_folder(f32.path, threads=1), MotionEngine.from_folder(q8.path, threads=1)
    sa, sb = a.start_stream("bun", "excited", seed=4), b.start_stream("bun", "excited", seed=4)
    for _ in range(2):
        la, lb = a.sample_chunks([sa]), b.sample_chunks([sb])
        px = np.abs((la - lb)[0, :, : 2 * 21, 0, 0] * std[: 2 * 21]).max() * 224  # window half-width in pixels
        assert px < 0.5, px


def test_a_new_decoder_ships_beside_a_kept_denoiser_graph(folder, tmp_path):
    """`tools.export_motion DECODER.pt OUT --denoiser-from FOLDER`: the denoiser graph is the folder's byte for byte,
    with its architecture, normalization and provenance; the decoder (another shape here) is the new one's, and the
    engine serves the pair. The source folder is never written over."""
    import dataclasses

    from avatarcast.engines.tiny.motion import SHAPES, MotionDecoder
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from tools.export_motion import export_with_denoiser_from

    old = load_motion_manifest(folder)
    torch.manual_seed(5)
    other = next(v for v in SHAPES.values() if list(v.mask_channels) != old.decoder_shape["mask_channels"])
    dec = MotionDecoder(dataclasses.replace(other, atlas=old.atlas))
    with pytest.raises(ValueError, match="elsewhere"):
        export_with_denoiser_from(dec, folder, folder, {"decoder": {"file": "x.pt"}})
    assert load_motion_manifest(folder).files == old.files
    new = export_with_denoiser_from(dec, folder, tmp_path, {"decoder": {"file": "x.pt"}}, fp16=False)
    den = GRAPHS["denoiser"]
    assert (tmp_path / den).read_bytes() == (folder / den).read_bytes()
    assert new.denoiser_arch == old.denoiser_arch
    np.testing.assert_array_equal(new.mean, old.mean)
    np.testing.assert_array_equal(new.std, old.std)
    assert new.source["denoiser"]["graph_from"] == old.files[den] and new.source["decoder"] == {"file": "x.pt"}
    assert new.decoder_shape["mask_channels"] == list(other.mask_channels)
    assert new.files[GRAPHS["decoder"]] != old.files[GRAPHS["decoder"]]
    a, b = MotionEngine.from_folder(folder, threads=1), MotionEngine.from_folder(tmp_path, threads=1)
    sa, sb = a.start_stream("bun", "happy", seed=2), b.start_stream("bun", "happy", seed=2)
    np.testing.assert_array_equal(a.sample_chunks([sa]), b.sample_chunks([sb]))  # the same motion
    assert b.decode_chunks([sb], b.sample_chunks([sb]))[0].shape[1:] == (360, 640, 4)


def _subnormal_sources(folder: Path) -> dict[str, str]:
    """Run the decoder graph unoptimized on its engine's own feeds with every tensor as an output: the tensors
    holding float32 subnormals, with the node that made each and the ops that read it."""
    import onnx
    import onnxruntime as ort

    from tools.motion_int8 import served_feeds

    m = onnx.load(str(folder / GRAPHS["decoder"]))
    names = [o for n in m.graph.node for o in n.output if o]
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    made_by = {o: n.op_type for n in m.graph.node for o in n.output}
    read_by: dict[str, set] = {}
    for n in m.graph.node:
        for i in n.input:
            read_by.setdefault(i, set()).add(n.op_type)
    tiny = np.finfo(np.float32).tiny
    found = {}
    for feeds in served_feeds(folder, [("luna", 3), ("random-900001", 4)], frames=4, threads=1)[:2]:
        for name, out in zip(names, sess.run(None, feeds)):
            if isinstance(out, np.ndarray) and out.dtype == np.float32:
                a = np.abs(out)
                if ((a > 0) & (a < tiny)).any():
                    found[name] = f"{made_by[name]} -> {sorted(read_by.get(name, ()))}"
    return found


@pytest.mark.parametrize("which", ["exported", "shipped"])
def test_the_decoder_computes_on_no_subnormals(which, folder):
    """x86 CPUs compute on float32 subnormals (under 1.2e-38) up to a hundred times slower: far from its keypoint a
    heat map's Gaussian, and far from its bone a part's softmax share, fall there, and they made the first heat-map
    convolution a quarter of the small decoder's time. Each such value is set to 0 where it is made
    (motion._flush): the only tensors holding subnormals are an exp's or a softmax's raw output, read by nothing but
    the comparison and the Where that flush it."""
    found = _subnormal_sources(folder if which == "exported" else SHIPPED)
    assert found, "no subnormals at all: the feeds no longer reach the flushed ops, and the test checks nothing"
    bad = {k: v for k, v in found.items() if v not in ("Exp -> ['Less', 'Where']", "Softmax -> ['Less', 'Where']")}
    assert not bad, bad


@pytest.mark.parametrize("which", ["exported", "shipped"])
def test_the_decoder_graph_has_no_slow_layouts(which, folder):
    """tools/onnx_rewrites.py at export: no convolution reads an input channel count onnxruntime's blocked layout
    skips (73 and 85 before, 1.5x the time each), and no softmax runs over the channel axis (onnxruntime transposes
    it there and back: 7x the written-out form's time). One written-out softmax over the part logits, read by both
    mix_grid and the underlay: three in all, with the atlas faces' and the canonical prior's."""
    import onnx

    from tools.onnx_rewrites import channel_softmaxes, odd_convs

    m = onnx.load(str((folder if which == "exported" else SHIPPED) / GRAPHS["decoder"]))
    assert odd_convs(m) == [] and channel_softmaxes(m) == []
    assert sum(n.op_type == "Exp" and n.name.startswith("/Softmax") for n in m.graph.node) == 3


def test_the_rewrites_keep_the_numbers():
    """A concatenation of 85 channels into a convolution, padded to 88, and a softmax over channels written out:
    the same outputs to float rounding, and an exp's output that never falls under float32's normal range."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from tools.onnx_rewrites import channel_softmaxes, odd_convs, pad_conv_inputs, write_out_softmax

    r = np.random.default_rng(0)
    w = numpy_helper.from_array(r.standard_normal((16, 85, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["x"], name="cat", axis=1),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Softmax", ["c"], ["y"], name="softmax", axis=1),
    ]
    ins = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, c, None, None]) for n, c in (("a", 64), ("b", 21))
    ]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16, None, None])]
    graph = helper.make_graph(nodes, "g", ins, out, [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"a": r.standard_normal((2, 64, 6, 5)).astype(np.float32), "b": r.standard_normal((2, 21, 6, 5))}
    feeds = {k: v.astype(np.float32) * 30 for k, v in feeds.items()}  # logits far apart: exp underflows

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    want = run(model)
    assert odd_convs(model) == [("conv", 85)] and channel_softmaxes(model) == ["softmax"]
    assert pad_conv_inputs(model) == ["conv"] and write_out_softmax(model) == ["softmax"]
    onnx.checker.check_model(model)
    assert odd_convs(model) == [] and channel_softmaxes(model) == []
    got = run(model)
    np.testing.assert_allclose(got, want, atol=1e-6)
    tiny = np.finfo(np.float32).tiny
    assert (want < tiny).any() and not ((got > 0) & (got < tiny)).any()


def test_merging_sibling_convolutions_keeps_the_outputs_and_the_weights_names():
    """tools/onnx_rewrites.merge_sibling_convs (the residual decoder's `/out` and `/res`, both over one full-size
    concatenation): one convolution of their weights concatenated, split back; the same outputs, and the stored
    weights keep their names (fp16 + Cast here, as exported), so the torch backend still reads them."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from tools.onnx_rewrites import merge_sibling_convs

    r = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(r.standard_normal((5, 12, 3, 3)).astype(np.float16), "out.weight"),
        numpy_helper.from_array(r.standard_normal(5).astype(np.float32), "out.bias"),
        numpy_helper.from_array(r.standard_normal((4, 12, 3, 3)).astype(np.float16), "res.weight"),
        numpy_helper.from_array(r.standard_normal(4).astype(np.float32), "res.bias"),
    ]
    nodes = [
        helper.make_node("Cast", ["res.weight"], ["rw"], name="cast_r", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "rw", "res.bias"], ["r"], name="/res/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["out.weight"], ["ow"], name="cast_o", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "ow", "out.bias"], ["o"], name="/out/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["o"], ["s"], name="sig"),
    ]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 12, None, None])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, c, None, None]) for n, c in (("s", 5), ("r", 4))]
    model = helper.make_model(
        helper.make_graph(nodes, "g", ins, outs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    feeds = {"x": r.standard_normal((2, 12, 16, 24)).astype(np.float32)}

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    want = run(model)
    assert merge_sibling_convs(model) == [["/res/Conv", "/out/Conv"]]
    onnx.checker.check_model(model)
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 1
    assert {i.name for i in model.graph.initializer} >= {"out.weight", "out.bias", "res.weight", "res.bias"}
    for a, b in zip(run(model), want):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert merge_sibling_convs(model) == []  # nothing left to merge


def test_an_int8_decoder_keeps_the_frames_and_draws_no_haze(tmp_path, served_feeds_kept):
    """`tools.motion_int8` (how the shipped decoder was written): the part-mask U-Net's convolutions in int8,
    calibrated on the folder's own engine, checked on held-out avatars against the float graph (PSNR, and no haze
    where the float graph draws nothing). The rewritten manifest verifies and the engine draws. The output
    convolution's copy-mask logit is scaled here as a trained decoder's is (tens, beside colours in [-1, 1]):
    quantized with one scale it rounds the colours away, one reason the drawing network stays float."""
    import shutil

    import onnx

    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from tools import motion_int8 as mi
    from tools.export_motion import export

    dec, den = _modules()
    with torch.no_grad():
        torch.nn.init.normal_(dec.out.weight, std=0.05)
        dec.out.weight[4] *= 40.0
        dec.out.bias[4] = 0.0
        for m in dec.modules():  # zero at init (the U-Net's output, the residual blocks' second convolutions):
            if isinstance(m, torch.nn.Conv2d) and not m.weight.any():  # they would not count, and the export
                torch.nn.init.normal_(m.weight, std=0.05)  # would share one zero tensor between them
    mean, std = np.zeros(MOTION_DIM, np.float32), np.full(MOTION_DIM, 0.02, np.float32)
    man = export(dec, den, mean, std, tmp_path, {"test": True}, fp16=False)
    float_bytes = (tmp_path / GRAPHS["decoder"]).stat().st_size
    cal, held = mi.CALIBRATION[:2], mi.HELD_OUT[:1]
    again = tmp_path / "again"  # the float folder as exported, kept for the all-int8 comparison at the end
    again.mkdir()
    for f in tmp_path.iterdir():
        if f.is_file():
            shutil.copy2(f, again / f.name)

    with pytest.raises(RuntimeError, match="not written"):
        mi.quantize_folder(tmp_path, min_db=200.0, frames=8, calibration_clips=cal, held_out=held)
    assert load_motion_manifest(tmp_path).files == man.files  # nothing written

    report = mi.quantize_folder(tmp_path, frames=8, calibration_clips=cal, held_out=held)
    assert report["psnr_vs_float_db"] > 45.0 and report["empty_alpha_p99"] < mi.MAX_HAZE, report
    assert len(report["int8_convs"]) == 11
    assert (tmp_path / GRAPHS["decoder"]).stat().st_size < float_bytes
    g = onnx.load(str(tmp_path / GRAPHS["decoder"])).graph
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    for conv in (n for n in g.node if n.op_type == "Conv"):
        assert (conv.input[1] in dq_out) == (conv.name.startswith("/masks/") and conv.name != "/masks/out/Conv")
    with pytest.raises(ValueError, match="int8 already"):
        mi.quantize_folder(tmp_path, frames=8, calibration_clips=cal, held_out=held)

    q = load_motion_manifest(tmp_path)
    assert q.source["int8_decoder"]["int8_convs"] == report["int8_convs"]
    e = MotionEngine.from_folder(tmp_path, threads=2)  # every sha256 verified
    frames = e.generate_clip("luna", "happy", 8, seed=3)
    assert frames.shape[1:] == (360, 640, 4) and frames[..., 3].max() == 255

    # every convolution in int8, /out too: tens of dB lost on these very feeds
    # (the motions come from the denoiser, the same in both folders, so the held-out feeds are the same too)
    f32, q_all = again / GRAPHS["decoder"], tmp_path / "all.onnx"
    mi.quantize_convs(f32, q_all, mi.served_feeds(again, cal, 8), int8=lambda name: True)
    feeds = mi.served_feeds(again, held, 8)
    assert mi.avatar_psnr(mi.run_graph(f32, feeds), mi.run_graph(q_all, feeds)) < report["psnr_vs_float_db"] - 20.0


def test_a_decoder_that_only_copies_ships_without_its_generator(folder, tmp_path):
    """`tools.export_motion --copy-only`: where the copy mask is 1 on held-out frames (tools/motion_copy.py), the
    decoder graph leaves the generator out (none of its convolutions, no use for the reference's features) and the
    engine draws the same frames. A decoder whose generator still draws is refused."""
    import onnx

    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from tools.export_motion import export_with_denoiser_from
    from tools.motion_copy import COPY_LOGIT_MIN, copy_margin
    from tools.train_motion import heldout

    dec, _ = _modules()
    # the held-out frames copy_margin(per_avatar=1) renders: once for 3 decoders; without the 12 avatars' effect
    # sprites (~10 s to draw), which copy_margin never reads (it measures the decoder's outputs, effects not laid)
    rows = heldout(6, 6, per_avatar=1, sprites=False)
    fresh = copy_margin(dec, rows=rows)  # a fresh decoder's copy logit starts at 3: its generator draws
    assert fresh["copy_logit_min"] < COPY_LOGIT_MIN and fresh["copy_only_max_abs"] > 1e-3, fresh
    with torch.no_grad():  # as training left the shipped decoders: the copy logit far past sigmoid's range
        torch.nn.init.normal_(dec.out.weight, std=0.05)
        dec.out.bias[4] = 40.0
    saturated = copy_margin(dec, rows=rows)
    assert saturated["copy_logit_min"] >= COPY_LOGIT_MIN and saturated["copy_only_max_abs"] < 1e-6, saturated
    # the same weights with a residual that draws (MotionShape.residual): the mask is saturated, the draw is not a copy
    import dataclasses

    from avatarcast.engines.tiny.motion import MotionDecoder
    from tools.motion_copy import COPY_ONLY_MAX_ABS

    res = MotionDecoder(dataclasses.replace(dec.shape, residual=True))
    res.load_state_dict(dec.state_dict(), strict=False)
    with torch.no_grad():
        torch.nn.init.normal_(res.res.weight, std=0.05)
    drawn = copy_margin(res, rows=rows)
    assert drawn["copy_logit_min"] >= COPY_LOGIT_MIN and drawn["copy_only_max_abs"] > COPY_ONLY_MAX_ABS, drawn
    full = export_with_denoiser_from(dec, folder, tmp_path / "full", {"decoder": {"file": "x.pt"}}, fp16=False)
    lean = export_with_denoiser_from(
        dec, folder, tmp_path / "lean", {"decoder": {"file": "x.pt"}}, fp16=False, copy_only=True
    )
    graphs = {p: onnx.load(str(m.graph("decoder"))).graph for p, m in (("full", full), ("lean", lean))}
    convs = {p: {n.name for n in g.node if n.op_type == "Conv"} for p, g in graphs.items()}
    assert {"/out/Conv", "/g8_in/Conv", "/up1/up1.1/Conv"} <= convs["full"]
    assert convs["lean"] == {c for c in convs["full"] if c.startswith("/masks/")}  # the part masks' U-Net alone
    assert {i.name for i in graphs["lean"].input}.isdisjoint({"f2", "f4", "f8"})
    a, b = MotionEngine.from_folder(full.path, threads=2), MotionEngine.from_folder(lean.path, threads=2)
    for avatar, emotion, seed in CASES:
        sa, sb = a.start_stream(avatar, emotion, seed=seed), b.start_stream(avatar, emotion, seed=seed)
        motion = a.sample_chunks([sa])
        fa, fb = a.decode_chunks([sa], motion), b.decode_chunks([sb], motion)
        assert fa[..., 3].max() == 255
        assert np.abs(fa.astype(int) - fb.astype(int)).max() <= 1


def test_a_shared_denoiser_graph_is_read_where_it_is(folder, tmp_path):
    """`--denoiser-from FOLDER --share-denoiser`: the new folder holds no copy of the denoiser graph; its manifest
    names the folder it is in (relative), still checks its sha256, and the engine serves the pair."""
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from tools.export_motion import export_with_denoiser_from

    dec, _ = _modules()
    out = tmp_path / "shared"
    out.mkdir()
    man = export_with_denoiser_from(dec, folder, out, {"decoder": {"file": "x.pt"}}, fp16=False, share=True)
    assert not (out / GRAPHS["denoiser"]).exists()
    shared = json.loads((out / MANIFEST).read_text())["graphs_from"]
    assert list(shared) == ["denoiser"] and not Path(shared["denoiser"]).is_absolute()
    assert (out / shared["denoiser"]).resolve() == folder.resolve()
    assert man.graph("denoiser").resolve() == (folder / GRAPHS["denoiser"]).resolve()
    e = MotionEngine.from_folder(out, threads=1)
    st = e.start_stream("pip", "happy", seed=1)
    assert e.decode_chunks([st], e.sample_chunks([st])).shape[-1] == 4
    bad = tmp_path / "elsewhere" / "deeper"  # the manifest away from the folder its graphs_from is relative to
    bad.mkdir(parents=True)
    (bad / MANIFEST).write_text((out / MANIFEST).read_text())
    with pytest.raises(WeightsError, match="missing"):
        load_motion_manifest(bad).graph("denoiser")


def test_an_exported_folder_steps_down_to_the_copy_only_folder_it_names(folder, tmp_path):
    """`--denoiser-from COPY_FOLDER --cheaper-draw`: the manifest names that folder (relative) as its cheaper_draw, and
    the engine's cheaper decode draws what the copy-only folder's engine draws; a folder whose decoder reads reference
    features cannot be one."""
    from avatarcast.engines.contract import CheaperDecode
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from tools.export_motion import export_with_denoiser_from

    dec, _ = _modules()
    copy_dir, out = tmp_path / "copy", tmp_path / "full"
    copy_dir.mkdir(), out.mkdir()
    export_with_denoiser_from(dec, folder, copy_dir, {"decoder": {"file": "x.pt"}}, fp16=False, copy_only=True)
    man = export_with_denoiser_from(dec, copy_dir, out, {"decoder": {"file": "x.pt"}}, fp16=False, cheaper=True)
    assert man.cheaper_draw == "../copy"
    e, c = MotionEngine.from_folder(out, threads=1), MotionEngine.from_folder(copy_dir, threads=1)
    assert e.capabilities.cheaper_decode == CheaperDecode.COPY_DRAW and c.capabilities.cheaper_decode is None
    se, sc = e.start_stream("pip", "happy", seed=2), c.start_stream("pip", "happy", seed=2)
    lat = e.sample_chunks([se])
    np.testing.assert_array_equal(lat, c.sample_chunks([sc]))
    got, want = e.decode_chunks([se], lat, cheaper=True), c.decode_chunks([sc], lat)
    assert np.abs(got.astype(int) - want).max() <= 1
    with pytest.raises(WeightsError, match="only a copy-only decoder"):
        export_with_denoiser_from(dec, folder, tmp_path / "x", {"decoder": {"file": "x.pt"}}, fp16=False, cheaper=True)


def test_the_shipped_residual_folder_draws_over_the_copy():
    """`--motion-draw residual` (engines/tiny/weights/motion_residual): a decoder with a residual generator that
    shares the shipped denoiser graph; every graph matches its sha256, and on a held-out frame of a built-in avatar
    it draws close to the renderer, and not what the copy-only folder draws."""
    from avatarcast.engines.avatar_world.render import landmarks
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from avatarcast.engines.tiny.motion_weights import motion_folder
    from tools.eval import holdout
    from tools.eval.fidelity import frame_scores, pose_at, render_frame, sample_variation

    man = load_motion_manifest(motion_folder(None, "residual"))
    for g in GRAPHS:
        man.graph(g, verify=True)
    assert man.decoder_shape["residual"] and man.graphs_from == {"denoiser": "../motion"}
    assert man.graph("denoiser").resolve() == (SHIPPED / GRAPHS["denoiser"]).resolve()
    assert "copy_only" not in man.source and man.source["int8_decoder"]["psnr_vs_float_db"] >= 38
    s = holdout.reconstruction_frames(holdout.eval_avatars(1, 0), 2)[1]
    q = pose_at(s.emotion, s.time, sample_variation(s.seed), s.intensity)
    ref = render_frame(s.avatar, q)
    res, copy = (MotionEngine.from_folder(None, threads=2, draw=d) for d in ("residual", "copy"))
    got = res.draw(s.avatar, res.motion(s.avatar, q)[None])[0]
    other = copy.draw(s.avatar, copy.motion(s.avatar, q)[None])[0]
    scores = frame_scores(ref, got, landmarks(s.avatar, q).head)
    assert scores["avatar_psnr_db"] > 19.0 and scores["alpha_iou"] > 0.95, scores
    assert np.abs(got.astype(int) - other.astype(int)).max() > 8  # the residual draws
    assert res.weights_hash != copy.weights_hash  # each keys its own latents cache


def test_motion_draw_chooses_a_shipped_folder():
    from avatarcast.realtime.settings import Settings, SettingValueError

    Settings(engine="motion", motion_draw="residual").validate()
    with pytest.raises(SettingValueError, match="no shipped motion decoder draws 'paint'"):
        Settings(engine="motion", motion_draw="paint").validate()
    with pytest.raises(SettingValueError, match="with --weights DIR"):
        Settings(engine="motion", weights="/x", motion_draw="residual").validate()
    # adaptive: the residual folder, admission at its copy draw; with --weights DIR, that folder at its cheaper draw
    adaptive = Settings(engine="motion", motion_draw="adaptive")
    adaptive.validate()
    assert (adaptive.motion_folder_draw, adaptive.admits_at_cheaper_decode) == ("residual", True)
    assert not Settings(engine="motion", motion_draw="residual").admits_at_cheaper_decode
    assert not Settings(engine="tiny", motion_draw="adaptive").admits_at_cheaper_decode
    Settings(engine="motion", weights="/x", motion_draw="adaptive").validate()  # the folder decides its draws


def test_the_adaptive_draw_measures_its_decodes_and_prices_admission_at_the_copy_draw():
    """`serve --motion-draw adaptive`: the residual engine, its copy draw's cost measured against its own at start-up
    (the ladder steps up from the copy draw by it, admission prices the load at it); `residual` measures the same
    ratio for its ladder but admits at full quality; the copy draw has no cheaper decode to measure."""
    from tests.conftest import app_in_process

    with app_in_process(engine="motion", motion_draw="adaptive", avatars="pip", threads=2) as (_, hub):
        load = hub.status()["load"]
        ratio = hub.cheaper_ratio
        assert load["cheaper_decode"] == "copy_draw" and load["admission_prices_at"] == "cheaper_decode", load
        assert ratio is not None and 0.0 < ratio and load["cheaper_cost_ratio"] == round(ratio, 3)
        assert hub.services.scheduler.ladder.cost_ratio == ratio
        assert "cheaper_decode" in hub.load_s
        v = hub.admission()
        assert v.admit and v.added is not None
        per = hub.services.scheduler.stream_chunk_s
        assert v.added == pytest.approx(per * ratio / hub.chunk_s)  # a reaction priced at the copy draw
    with app_in_process(engine="motion", motion_draw="residual", avatars="pip", threads=2) as (_, hub):
        load = hub.status()["load"]
        assert load["admission_prices_at"] == "full" and hub.cheaper_ratio is not None, load
        assert hub.admission().added == pytest.approx(hub.services.scheduler.stream_chunk_s / hub.chunk_s)


def test_a_half_size_tail_exports_serves_and_reads_back(folder, tmp_path):
    """MotionShape.half_tail (SHAPES small_half): the generator ends at 1/2 size, one pixel shuffle of 4 channels. Its
    graph has no full-size convolution; onnxruntime and the graph's weights read back into torch draw what torch
    draws; the manifest records the shape. Shapes without it are written as before (no new key)."""
    import dataclasses

    import onnx

    from avatarcast.engines.tiny.motion import SHAPES, MotionDecoder, shape_from_dict, shape_to_dict
    from tools.export_motion import export_with_denoiser_from

    assert "half_tail" not in shape_to_dict(shape_from_dict(load_motion_manifest(SHIPPED).decoder_shape))
    torch.manual_seed(1)
    dec = MotionDecoder(dataclasses.replace(SHAPES["small_half"], atlas=11)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(dec.tail.weight, std=0.05)
    man = export_with_denoiser_from(dec, folder, tmp_path / "half", {"decoder": {"file": "x.pt"}}, fp16=False)
    assert man.decoder_shape["half_tail"] is True
    graph = onnx.load(str(man.graph("decoder"))).graph
    convs = {n.name for n in graph.node if n.op_type == "Conv"}
    assert "/tail/Conv" in convs and not any(c.startswith(("/out", "/res", "/up1")) for c in convs)
    assert [n.op_type for n in graph.node].count("DepthToSpace") == 3  # up4, up2 and the tail's one
    _, den = _modules()
    assert_served_as_torch_draws(man.path, dec, den)


def test_a_half_size_tail_starts_from_a_full_size_one():
    """init_from (train_motion --init-from): a half-size tail from a residual decoder's full-size one.
    The moved pixels' part is exact; with up1's kernel at its centre tap only, so is all of it (else its outer ring
    is folded in)."""
    import dataclasses

    from avatarcast.engines.tiny.motion import SHAPES, MotionDecoder, init_from

    torch.manual_seed(2)
    full = MotionDecoder(dataclasses.replace(SHAPES["small"], residual=True)).eval()
    with torch.no_grad():
        for m in (full.out, full.res):
            torch.nn.init.normal_(m.weight, std=0.05)
        w = full.up1[1].weight
        w.copy_(w * (torch.arange(9).reshape(3, 3) == 4))
    half = MotionDecoder(SHAPES["small_half"]).eval()
    assert init_from(half, full.state_dict()) == []
    x = torch.randn(2, 16, 12, 16)
    moved = torch.rand(2, 4, 24, 32) * 2 - 1
    last = torch.cat([full.up1(x), moved], 1)
    want = full.res(last)
    logit = full.out(last)[:, 4:5]
    F = torch.nn.functional
    z = F.pixel_shuffle(half.tail(torch.cat([F.silu(x), F.pixel_unshuffle(moved, 2)], 1)), 2)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # at the border, up1's bias met zero padding
    torch.testing.assert_close(z[:, :4][inner], want[inner], atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, 4:][inner], logit[inner], atol=1e-5, rtol=0)
