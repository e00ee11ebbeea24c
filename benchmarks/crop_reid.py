"""The crop re-ID network (``models/reid.py``) trained on a detector's proposals: does it read the references on
instances it never saw?

Crops are mined with the checkpoint's detector from the training videos (every ``--every``-th frame, with the
annotated boxes) and from the tuning videos (every frame's proposals only); the network trains on the first and is
measured on the second: the share of frames (with a proposal on the target) whose best proposal is the target,
ranked by the detector's score, by the model's own re-ID (``models/match.py``) and by the crop re-ID network, and
the last with another video's references. No validation video is read.

Run:  .venv/bin/python benchmarks/crop_reid.py --ckpt outputs/demo/05_train_stage2/checkpoint [--data data/demo]
      [--steps 1500] [--every 4] [--cache outputs/bench/crop_reid] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def mined(predictor, layout, ids, *, size, every, with_gt, negatives, path: Path | None):
    from refdet_core.train.reid import CropSet, mine_crops

    if path is not None and path.exists():
        return CropSet(**torch.load(path, weights_only=False))
    cs = mine_crops(predictor, layout, ids, size=size, every=every, with_gt=with_gt, negatives=negatives)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(vars(cs), path)
    return cs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--every", type=int, default=4, help="every n-th training frame is mined")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="", help="folder keeping the mined crops between runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from refdet_core.data.layout import read_layout, read_tune_ids
    from refdet_core.eval.predict import load_backends
    from refdet_core.eval.validate import swap_pairs
    from refdet_core.models.reid import CropReid
    from refdet_core.train.reid import crop_similarities, rank_share, train_reid

    torch.manual_seed(args.seed)
    layout = read_layout(args.data)
    splits = json.loads(Path(args.data, "splits.json").read_text())
    tune = [v for v in read_tune_ids(args.data, layout.labelled_ids) if layout.videos[v].boxes_by_frame]
    train = [v for v in splits["train"] if layout.videos[v].boxes_by_frame]
    cache = Path(args.cache) if args.cache else None
    with tempfile.TemporaryDirectory(prefix="refdet-reid-") as work:
        predictor = load_backends(Path(args.ckpt), ["torch"], work=Path(work))["torch"]
        t0 = time.perf_counter()
        tr = mined(predictor, layout, train, size=args.size, every=args.every, with_gt=True, negatives=6,
                   path=cache / f"train_every{args.every}_s{args.size}.pt" if cache else None)  # fmt: skip
        te = mined(predictor, layout, tune, size=args.size, every=1, with_gt=False,
                   negatives=predictor.check.candidates,
                   path=cache / f"tune_s{args.size}.pt" if cache else None)  # fmt: skip
        t_mine = time.perf_counter() - t0
        model_reid = None
        if predictor.match is not None:  # the model's own re-ID on the same crops, for comparison
            model_reid = model_similarities(predictor, te)
    net = CropReid(size=args.size, width=args.width)
    t0 = time.perf_counter()
    losses = train_reid(net, tr, steps=args.steps, seed=args.seed)
    t_train = time.perf_counter() - t0
    swap = dict(swap_pairs(list(range(len(tune)))))
    swap_rows = np.asarray([swap[i] for i in range(len(tune))])
    rows = {
        "detector score": rank_share(te, te.score),
        "crop re-ID network": rank_share(te, crop_similarities(net, te)),
        "crop re-ID network, swapped references": rank_share(te, crop_similarities(net, te, swap_rows)),
    }
    if model_reid is not None:
        rows["model's re-ID (match.py)"] = rank_share(te, model_reid)
    report = {"rows": rows, "train_crops": len(tr), "tune_crops": len(te), "mine_s": round(t_mine, 1),
              "train_s": round(t_train, 1), "loss_first": float(np.mean(losses[:50])),
              "loss_last": float(np.mean(losses[-50:])), "steps": args.steps}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{len(tr)} training crops, {len(te)} tuning crops; mined in {t_mine:.0f} s, trained in {t_train:.0f} s; "
          f"loss {report['loss_first']:.2f} -> {report['loss_last']:.2f}")  # fmt: skip
    print("| tuning videos, ranked by | frames | target first |")
    print("|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['frames']} | {r['first']:.2f} |")


@torch.inference_mode()
def model_similarities(predictor, cs) -> torch.Tensor:
    """The model's own crop re-ID (``ReferenceMatch``) of each crop against its video's references."""
    model, match, out = predictor.model, predictor.match, torch.empty(len(cs))
    for v in range(len(cs.references)):
        rows = torch.nonzero(cs.video == v).flatten()
        templates = match.templates(model.backbone, cs.references[v][None].float() / 255.0)
        emb = match.embed(model.backbone(match.resize(cs.crops[rows].float() / 255.0)))
        out[rows] = match.similarity(emb, templates)[:, 0]
    return out


if __name__ == "__main__":
    main()
