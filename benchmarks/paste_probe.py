"""Where a checkpoint's detector fires on training frames: on its own target, on a pasted patch of another
episode video's target, on a pasted patch of that video's bare ground (the same size, no object in it), and
anywhere else.

Each training query of the episode gets one patch (``augment.paste_object``, as ``data.paste_share`` pastes
them: the box and a margin that fades into the host), half of them the other episode video's target, half a
square of its ground away from the target. The figure per row is each query's best score (sigmoid) within the
region, over the episode's reference sets (the own target: for its own set only); "elsewhere" is the best score
outside the patch and the target. A detector that learnt the pasted patch's edge as a cue scores the bare
ground patch high. No validation video is read.

Run:  .venv/bin/python benchmarks/paste_probe.py --ckpt outputs/demo/05_train_stage2/checkpoint
      [--params outputs/demo/05_train_stage2/params.yaml] [--episodes 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

KINDS = ("own target", "pasted target", "pasted ground", "elsewhere")


def inside(anchors: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """(A, 2) anchor centres, (4,) xyxy -> (A,) bool."""
    x, y = anchors[:, 0], anchors[:, 1]
    return (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])


def ground_box(box: torch.Tensor, targets: torch.Tensor, side: int, rng: np.random.Generator) -> torch.Tensor | None:
    """A box of ``box``'s size in a ``side`` px frame, a box's width or height clear of every target box."""
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    for _ in range(50):
        x0, y0 = rng.uniform(w, side - 2 * w), rng.uniform(h, side - 2 * h)
        clear = all(
            float(t[0]) > x0 + 2 * w or float(t[2]) < x0 - w or float(t[1]) > y0 + 2 * h or float(t[3]) < y0 - h
            for t in targets
        )
        if clear:
            return torch.tensor([x0, y0, x0 + w, y0 + h])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--params", default="outputs/demo/05_train_stage2/params.yaml", help="the training run's params")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from refdet_core.config import params_file_config
    from refdet_core.data.augment import paste_object
    from refdet_core.data.episodes import make_loader, make_source
    from refdet_core.data.layout import read_layout
    from refdet_core.eval.predict import load_backends
    from refdet_core.train.run import base_classes_of

    cfg = params_file_config(args.params)
    cfg.data.num_workers, cfg.data.paste_share = 0, 0.0  # the probe pastes its own patches
    layout = read_layout(cfg.data.data_root)
    train_ids, _ = layout.split(cfg.data)
    source = make_source(layout, cfg)
    loader = make_loader(layout, source, train_ids, cfg, train=True, base_classes=base_classes_of(layout, train_ids))
    dataset, rng = loader.dataset, np.random.default_rng(0)
    best: dict[str, list[float]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="refdet-paste-") as work, torch.no_grad():
        model = load_backends(Path(args.ckpt), ["torch"], work=Path(work))["torch"].model.eval()
        for _, batch in zip(range(args.episodes), loader):
            queries, regions = [], []
            for i in range(batch.query.shape[0]):
                c = int(batch.class_ids[i])
                o = int(rng.choice([k for k in range(len(batch.support_video_ids)) if k != c]))
                vid = batch.support_video_ids[o]
                kind = "pasted target" if i % 2 else "pasted ground"
                if not layout.videos[vid].annotated_frames:
                    queries.append(batch.query[i])
                    regions.append((kind, None, batch.boxes[i], c))
                    continue
                donor, donor_boxes, _, _ = dataset._query(vid, int(rng.choice(layout.videos[vid].annotated_frames)), o)
                box = (
                    donor_boxes[0]
                    if kind == "pasted target"
                    else ground_box(donor_boxes[0], donor_boxes, donor.shape[-1], rng)
                )
                pasted = None
                if box is not None:
                    img, boxes, _ = paste_object(
                        batch.query[i], batch.boxes[i], batch.labels[i], donor, box, torch.tensor(o), rng
                    )
                    if len(boxes) > len(batch.boxes[i]):
                        pasted = boxes[-1]
                queries.append(img if pasted is not None else batch.query[i])
                regions.append((kind, pasted, batch.boxes[i], c))
            out = model(torch.stack(queries), batch.support)
            scores = out.scores.float().sigmoid()  # (B, A, N)
            for i, (kind, patch, targets, c) in enumerate(regions):
                none = torch.zeros(len(out.anchors), dtype=torch.bool)
                in_patch = inside(out.anchors, patch) if patch is not None else none
                in_target = none.clone()
                for t in targets:
                    in_target |= inside(out.anchors, t)
                if in_patch.any():
                    best[kind].append(float(scores[i][in_patch].max()))
                if in_target.any():
                    best["own target"].append(float(scores[i][in_target][:, c].max()))
                best["elsewhere"].append(float(scores[i][~(in_patch | in_target)].max()))
    rows = [
        {
            "region": k,
            "queries": len(v),
            "median": float(np.median(v)) if v else 0.0,
            "mean": float(np.mean(v)) if v else 0.0,
        }
        for k, v in best.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| region | queries | median best score | mean best score |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['region']} | {r['queries']} | {r['median']:.3f} | {r['mean']:.3f} |")


if __name__ == "__main__":
    main()
