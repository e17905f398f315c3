"""Each weight stored once: the ONNX graphs read their fp16 weights from the safetensors files beside them.

A safetensors file is an 8-byte little-endian header length, a JSON header and the raw little-endian
tensors. An fp16 initializer whose bytes equal a tensor's bytes there becomes ONNX external data
(location, offset, length) into that file, so the graph file keeps only its structure and the weights
whose layout the export changed (none, for today's graphs). onnxruntime reads external data at any
offset and from a file several graphs share (checked by tests/engines/test_external_data.py).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from avatarcast.engines.tiny.weights import WeightsError


class ExternalDataError(WeightsError):
    """A safetensors header that cannot be read, or a graph whose external data does not resolve."""


def safetensors_spans(path: Path) -> dict[str, tuple[int, int]]:
    """Tensor name -> (offset from the start of the file, length in bytes), from the file's header."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ExternalDataError(f"{path} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ExternalDataError(f"{path}: unreadable safetensors header: {e}") from e
    base = 8 + n
    spans = {}
    for name, info in header.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            spans[name] = (base + int(start), int(end) - int(start))
    return spans


def link_initializers(model, data: Path) -> dict:
    """Point every fp16 initializer whose bytes equal a tensor of `data` at that tensor (in place).

    `data` must sit beside the graph file: the reference is its file name. Initializers with no
    byte-equal tensor (other dtypes, or a layout the export changed) stay inline. Returns counts.
    """
    from onnx import TensorProto  # onnx: ~1 s to import, only for exports and TensorRT builds

    blob = data.read_bytes()
    by_digest: dict[bytes, tuple[int, int]] = {}
    for offset, length in safetensors_spans(data).values():
        by_digest.setdefault(hashlib.blake2b(blob[offset : offset + length]).digest(), (offset, length))
    linked = linked_bytes = inline_bytes = 0
    for init in model.graph.initializer:
        raw = init.raw_data
        hit = by_digest.get(hashlib.blake2b(raw).digest()) if init.data_type == TensorProto.FLOAT16 and raw else None
        if hit is None or blob[hit[0] : hit[0] + hit[1]] != raw:
            inline_bytes += len(raw) or init.ByteSize()
            continue
        # raw_data is cleared before the tensor is marked external: onnx.save would otherwise write it
        # into `data` at that offset
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        for key, value in (("location", data.name), ("offset", str(hit[0])), ("length", str(hit[1]))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        linked += 1
        linked_bytes += hit[1]
    return {"external_initializers": linked, "external_bytes": linked_bytes, "inline_bytes": inline_bytes}


def external_locations(model) -> set[str]:
    """The files a graph's initializers read their data from."""
    return {e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"}


def inline_graph(path: Path) -> bytes:
    """The graph with its external data read back in: the self-contained model (as exported before
    linking, byte for byte), for consumers that take bytes (TensorRT's graph rewrite)."""
    import onnx  # onnx, as above
    from onnx import TensorProto  # onnx, as above

    try:
        model = onnx.load(str(path), load_external_data=True)
    except (OSError, ValueError, onnx.checker.ValidationError) as e:  # a data file missing or outside the folder
        raise ExternalDataError(f"{path}: its external data does not resolve: {e}") from e
    for init in model.graph.initializer:
        if init.HasField("data_location") and init.data_location == TensorProto.DEFAULT:
            init.ClearField("data_location")  # unset in the exported file: keeps the bytes identical
    return model.SerializeToString()
