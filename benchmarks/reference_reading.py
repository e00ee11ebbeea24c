"""Does the detector read its references? Where the target ranks among each frame's candidates, on training
videos (instances it trained on) and on tuning videos (instances it never saw).

For every frame with a target, the checkpoint's candidates (06's: the top boxes after NMS) are ranked by the
detector's score and by the re-ID similarity; the table gives the share of frames whose first candidate is the
target (IoU >= 0.5), the share where the target is among the candidates at all, and the same with another
video's references (the swap: what the ranking owes to the references). A gap between training and tuning
videos is memorisation; a target among the candidates but not first is a matching failure, not a detection
failure. ``--score`` ranks by one of the score's two terms (the head's, the reference match's) to see which of
them reads the references. No validation video is read.

Run:  .venv/bin/python benchmarks/reference_reading.py --ckpt outputs/demo/05_train_stage2/checkpoint
      [--data data/demo] [--train-videos 8] [--score both|head|match] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

HIT_IOU = 0.5


def target_ranks(result, gt_frames: dict[int, list], field: str) -> list[int]:
    """Per frame with a target: the 0-based rank of the first candidate on a target by ``field``, or -1."""
    cand = result.candidates
    ranks = []
    for row, frame in enumerate(result.key_frames if result.key_frames is not None else result.frames):
        boxes = gt_frames.get(int(frame))
        if not boxes:
            continue
        valid = cand.valid[row]
        order = np.argsort(-np.where(valid, getattr(cand, field)[row], -np.inf))
        order = order[valid[order]]
        hit = box_iou(torch.as_tensor(cand.boxes[row][order]), torch.as_tensor(boxes, dtype=torch.float32))
        on_target = np.nonzero(hit.amax(dim=1).numpy() >= HIT_IOU)[0]
        ranks.append(int(on_target[0]) if len(on_target) else -1)
    return ranks


def score_by(model, part: str) -> None:
    """Make ``model``'s score (what ranks and picks the candidates) the head's term only or the match term only
    (``models/refdet.py``: the score is their sum); ``both`` leaves it as trained."""
    if part == "both":
        return

    def detect(fused, feats, protos):
        out = model.head(fused, None if protos is None else protos.per_scale)
        if part == "match":
            out.scores = model.match.scores(feats, protos.templates)
        return out

    model.detect = detect


def summary(ranks: list[int]) -> dict[str, float]:
    r = np.asarray(ranks)
    if not len(r):
        return {"frames": 0, "first": 0.0, "among": 0.0}
    return {"frames": len(r), "first": float(np.mean(r == 0)), "among": float(np.mean(r >= 0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--train-videos", type=int, default=8, help="training videos with a target, the first n")
    ap.add_argument("--score", choices=("both", "head", "match"), default="both",
                    help="the score's terms that rank the candidates (default: both, as trained)")  # fmt: skip
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from refdet_core.data.layout import read_layout, read_tune_ids
    from refdet_core.eval.predict import load_backends
    from refdet_core.eval.validate import swap_pairs
    from refdet_core.eval.video import layout_ground_truth, predict_layout

    layout = read_layout(args.data)
    tune = read_tune_ids(args.data, layout.labelled_ids)
    splits = json.loads(Path(args.data, "splits.json").read_text())
    gt = layout_ground_truth(layout, layout.labelled_ids)
    train = [v for v in splits["train"] if gt.get(v)][: args.train_videos]
    groups = {"training videos": train, "tuning videos": [v for v in tune if gt.get(v)]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="refdet-reading-") as work:
        predictor = load_backends(Path(args.ckpt), ["torch"], work=Path(work))["torch"]
        predictor.all_cues = True
        score_by(predictor.model, args.score)
        for name, ids in groups.items():
            results = predict_layout(args.data, predictor, video_ids=ids, progress=False)
            swapped = {  # the same video with another video's references
                vid: predictor.predict_video(
                    layout.videos[vid].video_path, layout.videos[other].reference_paths, video_id=vid
                )  # fmt: skip
                for vid, other in swap_pairs(ids).items()
            }
            for field in ("scores", "reid"):
                own = [r for v in ids for r in target_ranks(results[v], gt[v], field)]
                swap = [r for v in ids for r in target_ranks(swapped[v], gt[v], field)]
                rows.append({"videos": name, "ranked by": field, **summary(own),
                             "first, swapped references": summary(swap)["first"]})  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| videos | ranked by | frames | target first | target among candidates | first, swapped references |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['videos']} | {r['ranked by']} | {r['frames']} | {r['first']:.2f} | {r['among']:.2f} | "
              f"{r['first, swapped references']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
