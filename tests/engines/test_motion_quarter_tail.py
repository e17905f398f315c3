"""MotionShape.quarter_tail (SHAPES small_q4*): a residual generator that ends at 1/4 size (issue 16's cheaper
residual draw, docs/training/motion.md "A generator at 1/4 size").

Shapes written before its fields are written the same; at first it draws the copy; another run's weights load where
they fit; exported, it reads no 1/2-size features, serves on onnxruntime and reads back into torch as torch draws."""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")

from avatarcast.engines.avatar_world.skeleton import MOTION_DIM  # noqa: E402
from avatarcast.engines.tiny.motion import SHAPES, MotionDecoder, init_from, shape_from_dict, shape_to_dict  # noqa: E402
from avatarcast.engines.tiny.motion_weights import SHIPPED, load_motion_manifest  # noqa: E402
from tests.engines.motion_folder_checks import assert_served_as_torch_draws  # noqa: E402


def test_older_shapes_are_written_as_before_and_the_new_ones_round_trip():
    for name in ("default", "small", "small_half"):
        d = shape_to_dict(SHAPES[name])
        assert not {"quarter_tail", "tail_moved", "tail_hidden", "tail_full", "g8_blocks"} & set(d), name
    shipped = load_motion_manifest(SHIPPED).decoder_shape
    assert json.loads(json.dumps(shape_to_dict(shape_from_dict(shipped)))) == shipped  # the manifest's lists
    for name in ("small_q4", "small_q4m", "small_q4s", "small_q4sm", "small_q4smh", "small_q4sf"):
        s = SHAPES[name]
        assert s.quarter_tail and s.residual and shape_from_dict(shape_to_dict(s)) == s
    with pytest.raises(ValueError, match="one at most"):
        MotionDecoder(dataclasses.replace(SHAPES["small_q4"], half_tail=True))


def _inputs(dec: MotionDecoder, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = dec.shape
    ref = torch.rand(1, 4, s.pad_height, s.window_width, generator=g) * 2 - 1
    motion = torch.randn(n, MOTION_DIM, generator=g) * 0.02
    feats = tuple(f.expand(n, -1, -1, -1) for f in dec.encode_reference(ref))
    return motion, ref.expand(n, -1, -1, -1), feats


def test_a_fresh_quarter_tail_draws_the_copy_and_its_layers_get_a_gradient():
    torch.manual_seed(0)
    dec = MotionDecoder(SHAPES["small_q4sm"]).eval()
    assert not hasattr(dec, "up2") and not hasattr(dec, "out") and len(dec.g8) == 1
    assert dec.last_layer is dec.tail
    motion, ref, feats = _inputs(dec)
    box = (96, 128, 96, 64)
    with torch.no_grad():
        out, parts = dec(motion, motion, ref, feats, box=box, return_parts=True)
    assert out.shape == (2, 4, 96, 64)
    torch.testing.assert_close(out, parts["moved"], atol=0, rtol=0)  # zero residual at first: the copy draw
    # the 1/2-size features are not read
    f2, f4, f8 = feats
    with torch.no_grad():
        again = dec(motion, motion, ref, (f2 * 0 + 5, f4, f8), box=box)
    torch.testing.assert_close(again, out, atol=0, rtol=0)
    dec.train()
    dec(motion, motion, ref, feats, box=box).square().mean().backward()
    assert dec.tail.weight.grad is not None and dec.tail.weight.grad.abs().sum() > 0
    assert dec.tail_px.weight.grad is not None and dec.tail_px.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["small_q4smh", "small_q4sf"])
def test_a_hidden_tail_layer_or_a_full_size_residual_starts_at_the_copy_too(name):
    torch.manual_seed(4)
    dec = MotionDecoder(SHAPES[name]).eval()
    if name == "small_q4smh":
        assert dec.tail.kernel_size == (1, 1) and dec.tail_in.out_channels == dec.tail_px.out_channels == 64
    else:  # 4 channels laid out at full size, then one 3 x 3 convolution with the moved pixels: the last layer
        assert dec.tail.out_channels == 64 and dec.res.in_channels == 8 and dec.last_layer is dec.res
    motion, ref, feats = _inputs(dec, seed=1)
    with torch.no_grad():
        out, parts = dec(motion, motion, ref, feats, box=(64, 160, 64, 96), return_parts=True)
    torch.testing.assert_close(out, parts["moved"], atol=0, rtol=0)


def test_a_quarter_tail_starts_from_a_residual_decoders_weights_where_they_fit():
    torch.manual_seed(1)
    full = MotionDecoder(dataclasses.replace(SHAPES["small"], residual=True)).state_dict()
    same_width = MotionDecoder(SHAPES["small_q4m"])
    assert set(init_from(same_width, full)) == {"tail.weight", "tail.bias", "tail_px.weight", "tail_px.bias"}
    torch.testing.assert_close(same_width.state_dict()["g4.a.weight"], full["g4.a.weight"])
    narrow = MotionDecoder(SHAPES["small_q4sm"])
    fresh = init_from(narrow, full)
    assert all(k.startswith(("g8", "up4", "g4", "tail")) for k in fresh), fresh  # the masks, encoder, cond load
    torch.testing.assert_close(narrow.state_dict()["masks.out.weight"], full["masks.out.weight"])


def test_a_quarter_tail_exports_serves_and_reads_back(tmp_path):
    import onnx

    from avatarcast.engines.tiny.motion_graph_weights import denoiser_from_folder
    from tools.export_motion import export_with_denoiser_from

    torch.manual_seed(3)
    dec = MotionDecoder(dataclasses.replace(SHAPES["small_q4sm"], atlas=11)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(dec.tail.weight, std=0.05)
        torch.nn.init.normal_(dec.tail_px.weight, std=0.05)
    man = export_with_denoiser_from(dec, SHIPPED, tmp_path / "q4", {"decoder": {"file": "x.pt"}}, fp16=False)
    assert man.decoder_shape["quarter_tail"] is True and man.decoder_shape["g8_blocks"] == 1
    graph = onnx.load(str(man.graph("decoder"))).graph
    assert "f2" not in {i.name for i in graph.input}
    convs = {n.name for n in graph.node if n.op_type == "Conv"}
    assert {"/tail/Conv", "/tail_px/Conv"} <= convs and not any(
        c.startswith(("/out", "/res", "/up1", "/g2")) for c in convs
    )
    assert [n.op_type for n in graph.node].count("DepthToSpace") == 2  # up4's and the tail's
    assert_served_as_torch_draws(man.path, dec, denoiser_from_folder(man))
