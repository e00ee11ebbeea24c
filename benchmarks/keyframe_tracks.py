"""Tracks on key frames: how much ST-IoU each way of linking keeps when the model runs on every k-th frame only.

The predictor runs once per video on every frame (onnxruntime) and keeps every frame's candidates; every k-th
row of those candidates is then what `VideoPredictor(detect_every=k)` would have seen (the model's output on a
frame does not depend on the others), so each k and each linking variant is scored from the same run:
selection by track on the key frames with the checkpoint's saved settings (`inference.json`), the frames between
filled (`eval/keyframes.py`), post-processing, ST-IoU. Variants: the track's motion on or off, boxes grown by
`buffer` before the IoU or not. Run it on the tuning videos, which the settings are chosen on (the default).

Run:  .venv/bin/python benchmarks/keyframe_tracks.py [--ckpt CKPT] [--data ROOT] [--videos tune|val|ID,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from refdet_core.data.layout import read_layout, read_tune_ids
from refdet_core.eval.candidates import Candidates
from refdet_core.eval.keyframes import fill_between
from refdet_core.eval.predict import load_backends
from refdet_core.eval.tracks import TrackConfig, select_by_track
from refdet_core.eval.video import evaluate, layout_ground_truth, predict_layout

VARIANTS = {
    "IoU only": TrackConfig(enabled=True, buffer=0.0, motion=False),
    "+ motion": TrackConfig(enabled=True, buffer=0.0),
    "+ buffer": TrackConfig(enabled=True, motion=False),
    "motion + buffer (default)": TrackConfig(enabled=True),
}


def key_rows(cands: Candidates, keys: np.ndarray) -> Candidates:
    return Candidates(*(getattr(cands, f)[keys] for f in Candidates.FIELDS))


def score(results: dict, gt: dict, predictor, cfg: TrackConfig, k: int) -> float:
    """Mean ST-IoU with the model on every k-th frame and tracks linked under ``cfg``."""
    out = {}
    for vid, r in results.items():
        total = len(r.frames)
        keys = np.arange(0, total, k)
        rows = key_rows(r.candidates, keys)
        s, b, ok = select_by_track(rows.boxes, rows.combined(predictor.check), rows.valid, cfg, keys)
        if k > 1:
            s, b, ok = fill_between(keys, s, b, ok, total)
        out[vid] = replace(r, scores=s, boxes=b, valid=ok).retrack(predictor.post)
    return evaluate(out, gt)["mean_st_iou"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="outputs/demo/05_train_stage2/checkpoint")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--videos", default="tune", help="tune, val or comma-separated video ids")
    ap.add_argument("--every", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    layout = read_layout(args.data)
    if args.videos == "tune":
        ids = read_tune_ids(args.data, layout.labelled_ids)
    elif args.videos == "val":
        ids = json.loads((Path(args.data) / "splits.json").read_text())["val"]
    else:
        ids = args.videos.split(",")
    gt = layout_ground_truth(layout, ids)
    with tempfile.TemporaryDirectory(prefix="refdet-keyframes-") as work:
        predictor = load_backends(args.ckpt, ["onnxruntime"], work=Path(work))["onnxruntime"]
        assert predictor.check.tracks, "the checkpoint's saved selection does not use tracks"
        results = predict_layout(args.data, predictor, video_ids=ids, progress=True)
    table = {name: {k: score(results, gt, predictor, cfg, k) for k in args.every} for name, cfg in VARIANTS.items()}
    if args.json:
        print(json.dumps({"videos": ids, "mean_st_iou": table}))
        return
    print(f"mean ST-IoU over {len(ids)} videos ({', '.join(ids)}), model on every k-th frame")
    print(f"{'linking':<28}" + "".join(f"{'k=' + str(k):>9}" for k in args.every))
    for name, row in table.items():
        print(f"{name:<28}" + "".join(f"{v:>9.4f}" for v in row.values()))


if __name__ == "__main__":
    main()
