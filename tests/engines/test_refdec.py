"""The reference-conditioned decoder (engines/tiny/refdec.py): shapes, a fresh one equals its base decoder,
crops decode like the whole grid, training's box encode equals the cached window, one encode per avatar."""

from __future__ import annotations

import pytest
import torch

from avatarcast.engines.tiny.crop import CellBox
from avatarcast.engines.tiny.model import Decoder, TinyConfig
from avatarcast.engines.tiny.refdec import RefCache, RefDecConfig, RefDecoder, RefEncoder, RefFeatures, encode_box

H, W = 16, 20  # a small latent grid: 128 x 160 px window


def _models(seed: int = 0) -> tuple[TinyConfig, RefDecConfig, RefDecoder, RefEncoder]:
    torch.manual_seed(seed)
    cfg, rcfg = TinyConfig(), RefDecConfig()
    return cfg, rcfg, RefDecoder(cfg, rcfg).eval(), RefEncoder(rcfg).eval()


def _trained_like(dec: RefDecoder, enc: RefEncoder) -> None:
    """Give the zero-initialized layers weights (fusion, residual blocks), so every branch changes the output."""
    torch.manual_seed(1)
    for m in [dec, enc]:
        for name, p in m.named_parameters():
            if name.endswith("weight") and p.abs().sum() == 0:
                torch.nn.init.normal_(p, std=0.05)


def _ref(h: int = H, w: int = W) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.rand(1, 4, 8 * h, 8 * w) * 2 - 1


@torch.no_grad()
def test_shapes_and_a_fresh_decoder_decodes_as_its_base() -> None:
    cfg, rcfg, dec, enc = _models()
    feats = RefFeatures.encode(enc, _ref(), rcfg.radius)
    r = rcfg.radius
    assert [tuple(m.shape) for m in feats.maps] == [
        (1, c, (H + 2 * r) * s, (W + 2 * r) * s) for c, s in zip(rcfg.level_channels, (1, 2, 4))
    ]
    z = torch.randn(2, cfg.latent_channels, H, W)
    win = tuple(m.expand(2, -1, -1, -1) for m in feats.window(CellBox(0, H, 0, W)))
    y = dec(z, win)
    assert y.shape == (2, 4, 8 * H, 8 * W)
    base = Decoder(cfg)
    base.load_state_dict(dec.base.state_dict())
    assert torch.allclose(y, base(z), atol=1e-6)  # the zero-initialized fusion adds nothing yet


@torch.no_grad()
def test_a_crop_decodes_as_the_whole_grid_inside_its_margin() -> None:
    cfg, rcfg, dec, enc = _models()
    _trained_like(dec, enc)
    h, w = 32, 36
    feats = RefFeatures.encode(enc, _ref(h, w), rcfg.radius)
    z = torch.randn(1, cfg.latent_channels, h, w)
    full = dec(z, feats.window(CellBox(0, h, 0, w)))
    base_only = dec.base(z)
    assert (full - base_only).abs().mean() > 1e-3  # the reference does change the picture
    box = CellBox(4, 28, 4, 32)
    crop = dec(z[..., box.top : box.bottom, box.left : box.right], feats.window(box))
    m = 8 * 8  # the crop's own border (8 cells: the convolutions' reach) sees zero padding, as in the plain decoder
    part = full[..., box.top * 8 : box.bottom * 8, box.left * 8 : box.right * 8]
    assert torch.allclose(crop[..., m:-m, m:-m], part[..., m:-m, m:-m], atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("box", [CellBox(5, 11, 6, 14), CellBox(0, 8, 0, 8), CellBox(10, 16, 12, 20)])
def test_training_box_encode_equals_the_cached_window(box: CellBox) -> None:
    _, rcfg, dec, enc = _models()
    _trained_like(dec, enc)
    ref = _ref()
    cached = RefFeatures.encode(enc, ref, rcfg.radius).window(box)
    local = encode_box(enc, ref, box, rcfg.radius, rcfg.encode_margin)
    for a, b in zip(cached, local):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5)


def test_reference_features_are_encoded_once_per_avatar() -> None:
    _, rcfg, _, enc = _models()
    seen = []

    def to_window(avatar):
        seen.append(avatar)
        return _ref()

    cache = RefCache(enc, rcfg.radius, to_window)
    a1 = cache.get("avatar-1", "avatar-1")
    for _ in range(3):
        assert cache.get("avatar-1", "avatar-1") is a1
    cache.get("avatar-2", "avatar-2")
    assert cache.encodes == 2 and seen == ["avatar-1", "avatar-2"]
